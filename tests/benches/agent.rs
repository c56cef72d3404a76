//! Agent benchmark: pod startup latency and agent memory.
//!
//! `cargo build --release -p keelson && cargo bench -p keelson-e2e --bench agent`
//!
//! A real `keelson server` and `keelson agent` (release build, next to this
//! benchmark's binary or `$KEELSON_BIN`), a local registry, Debian's bridge and
//! host-local CNI plugins, runc. After one warm-up pod (the image pull),
//! `KEELSON_BENCH_PODS` (50) pods already bound to the node are created one
//! every `KEELSON_BENCH_INTERVAL_MS` (100) ms; the latency of each is the
//! time from its create call returning until a watch sees the agent report
//! it Running. Reports p50/p99 and the agent's VmRSS idle (after the
//! warm-up pod) and with all pods running. Targets: p50 < 150 ms,
//! p99 < 500 ms, RSS < 40 MB.
//!
//! Then the cost of volumes: `KEELSON_BENCH_VOLUME_PODS` (20) pairs of
//! pods, one after the other and alternating, one with three projected
//! volumes (a ConfigMap and a Secret; the downward API; a service account
//! token with the cluster CA, as the token volume every pod gets) and one
//! with none (no token volume either); each measured from create to
//! Running. Reports both medians and their difference (target: under
//! 10 ms).
//!
//! Then the cost of probes: `KEELSON_BENCH_PROBE_PODS` (200) pods serving
//! HTTP (busybox httpd) without probes, then (those deleted) as many with
//! an httpGet readiness probe every second, all Running (and Ready). For
//! each, the agent's CPU (utime+stime from /proc) over
//! `KEELSON_BENCH_PROBE_WINDOWS` (5) windows of 10 s and its VmRSS after
//! each: medians side by side and their difference (targets: under 2 % of
//! a core and under 5 MB extra).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use keelson_e2e::ServerProcess;
use keelson_e2e::agent::{AgentProcess, needs_agent};
use keelson_e2e::registry::{BUSYBOX, Registry};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;

fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After the command: state is field 3; utime 14, stime 15.
    n(11) + n(12)
}

/// The agent's CPU (% of one core) in each of `windows` windows of
/// `window`, and its VmRSS (kB) after each.
async fn sample(pid: u32, windows: usize, window: Duration) -> (Vec<f64>, Vec<u64>) {
    let hz = USER_HZ;
    let (mut cpu, mut rss) = (Vec::new(), Vec::new());
    for _ in 0..windows {
        let (t0, c0) = (Instant::now(), cpu_ticks(pid));
        tokio::time::sleep(window).await;
        let ticks = cpu_ticks(pid).saturating_sub(c0) as f64;
        cpu.push(ticks / hz / t0.elapsed().as_secs_f64() * 100.0);
        rss.push(rss_kb(pid));
    }
    (cpu, rss)
}

/// Clock ticks per second in /proc (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn median<T: PartialOrd + Copy>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A pod serving HTTP on port 80, with or without an httpGet readiness
/// probe every second.
fn probe_pod(name: &str, node: &str, image: &str, probe: bool) -> Pod {
    let mut c = serde_json::json!({
        "name": "web", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", "echo ok > /tmp/index.html && exec httpd -f -p 80 -h /tmp"],
        "ports": [{"name": "http", "containerPort": 80}],
    });
    if probe {
        c["readinessProbe"] = serde_json::json!({
            "httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1,
        });
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"bench": "probes"}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                 "automountServiceAccountToken": false, "containers": [c]},
    }))
    .unwrap()
}

fn pod(name: &str, node: &str, image: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", "while true; do sleep 5; done"],
        }]},
    }))
    .unwrap()
}

/// A pod with three projected volumes mounted, or with no volume at all.
fn volume_pod(name: &str, node: &str, image: &str, volumes: bool) -> Pod {
    let mut p = pod(name, node, image);
    let spec = p.spec.as_mut().unwrap();
    spec.automount_service_account_token = Some(false);
    if volumes {
        *spec = serde_json::from_value(serde_json::json!({
            "nodeName": node, "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "while true; do sleep 5; done"],
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/config"},
                    {"name": "info", "mountPath": "/etc/info"},
                    {"name": "token", "mountPath": "/var/run/secrets/tokens"},
                ],
            }],
            "volumes": [
                {"name": "config", "projected": {"sources": [
                    {"configMap": {"name": "bench-config"}},
                    {"secret": {"name": "bench-secret"}},
                ]}},
                {"name": "info", "projected": {"sources": [
                    {"downwardAPI": {"items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    ]}},
                ]}},
                {"name": "token", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                ]}},
            ],
        }))
        .unwrap();
    }
    p
}

fn is_running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !needs_agent("agent bench").ok() {
        return;
    }
    let Some(reg) = Registry::with_test_images_or_skip() else {
        return;
    };
    let pods = env_num("KEELSON_BENCH_PODS", 50) as usize;
    let interval = Duration::from_millis(env_num("KEELSON_BENCH_INTERVAL_MS", 100));
    let server = ServerProcess::start(None);
    let client = server.client().await;
    let agent = AgentProcess::start(&server, "bench-agent", &[]);
    let node = agent.node_name.clone();
    let image = reg.image(BUSYBOX);
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Running times seen by a watch.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    {
        let seen = seen.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let mut s = watcher(api, watcher::Config::default()).boxed();
            while let Some(ev) = s.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev
                    && is_running(&p)
                {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    seen.lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        });
    }
    let wait_for = |names: Vec<String>, timeout: Duration| {
        let seen = seen.clone();
        async move {
            let start = Instant::now();
            while start.elapsed() < timeout {
                if names.iter().all(|n| seen.lock().unwrap().contains_key(n)) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    api.create(&PostParams::default(), &pod("warmup", &node, &image))
        .await
        .unwrap();
    assert!(
        wait_for(vec!["warmup".into()], Duration::from_secs(60)).await,
        "warm-up pod not Running:\n{}",
        agent.log()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = agent.pid().unwrap();
    let rss_idle = rss_kb(pid);

    let mut created = Vec::new();
    for i in 0..pods {
        let name = format!("bench-{i}");
        api.create(&PostParams::default(), &pod(&name, &node, &image))
            .await
            .unwrap();
        created.push((name, Instant::now()));
        tokio::time::sleep(interval).await;
    }
    let names: Vec<String> = created.iter().map(|(n, _)| n.clone()).collect();
    assert!(
        wait_for(names, Duration::from_secs(180)).await,
        "pods not Running:\n{}",
        agent.log()
    );
    let mut lat: Vec<Duration> = {
        let seen = seen.lock().unwrap();
        created
            .iter()
            .map(|(n, t)| seen[n].saturating_duration_since(*t))
            .collect()
    };
    lat.sort();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_busy = rss_kb(pid);
    println!("agent bench: {pods} pods, one every {interval:?}, image present");
    println!(
        "  startup latency (create -> Running): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (targets: p50 < 150 ms, p99 < 500 ms)",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  agent RSS: idle {:.1} MB, with {} pods {:.1} MB (target < 40 MB)",
        rss_idle as f64 / 1024.0,
        pods + 1,
        rss_busy as f64 / 1024.0
    );

    // Volumes: pairs, one after the other, alternating.
    let pairs = env_num("KEELSON_BENCH_VOLUME_PODS", 20) as usize;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bench-config"},
            "data": {"a.conf": "x = 1\n", "b.conf": "y = 2\n"},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "bench-secret"},
                "stringData": {"password": "s3cret"},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..pairs * 2 {
        let volumes = i % 2 == 1;
        let name = format!("vol-{}-{i}", if volumes { "three" } else { "none" });
        api.create(
            &PostParams::default(),
            &volume_pod(&name, &node, &image, volumes),
        )
        .await
        .unwrap();
        let t = Instant::now();
        assert!(
            wait_for(vec![name.clone()], Duration::from_secs(60)).await,
            "{name} not Running:\n{}",
            agent.log()
        );
        let d = seen.lock().unwrap()[&name].saturating_duration_since(t);
        if volumes {
            with.push(d);
        } else {
            without.push(d);
        }
    }
    with.sort();
    without.sort();
    let (w, n) = (pct(&with, 0.5), pct(&without, 0.5));
    println!(
        "  pod start (create -> Running), {pairs} pods each, alternating: three projected volumes p50 {:.1} ms, none p50 {:.1} ms: volumes add {:+.1} ms (target < 10 ms)",
        w.as_secs_f64() * 1e3,
        n.as_secs_f64() * 1e3,
        (w.as_secs_f64() - n.as_secs_f64()) * 1e3
    );

    // Probes: N pods without, then N with an http readiness probe every second.
    let n = env_num("KEELSON_BENCH_PROBE_PODS", 200) as usize;
    let windows = env_num("KEELSON_BENCH_PROBE_WINDOWS", 5) as usize;
    let window = Duration::from_secs(10);
    let lp = kube::api::ListParams::default().labels("bench=probes");
    // The earlier phases' pods go first: the same idle agent for both
    // runs, and the node's /24 holds 200 more pods.
    api.delete_collection(
        &kube::api::DeleteParams::default(),
        &kube::api::ListParams::default(),
    )
    .await
    .unwrap();
    let start = Instant::now();
    while !api
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "earlier pods not deleted:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut results = Vec::new();
    for probe in [false, true] {
        let kind = if probe { "probed" } else { "plain" };
        for i in 0..n {
            api.create(
                &PostParams::default(),
                &probe_pod(&format!("{kind}-{i}"), &node, &image, probe),
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let start = Instant::now();
        loop {
            let list = api.list(&lp).await.unwrap();
            let ready = list.items.iter().filter(|p| is_ready(p)).count();
            if ready == n {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "{ready} of {n} {kind} pods Ready:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        results.push(sample(pid, windows, window).await);
        api.delete_collection(&kube::api::DeleteParams::default(), &lp)
            .await
            .unwrap();
        let start = Instant::now();
        while !api.list(&lp).await.unwrap().items.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "{kind} pods not deleted:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let (cpu0, rss0) = (median(&results[0].0), median(&results[0].1));
    let (cpu1, rss1) = (median(&results[1].0), median(&results[1].1));
    println!(
        "  probes: {n} pods, httpGet readiness every 1 s vs none, agent medians over {windows} x {window:?}: CPU {cpu1:.2} % vs {cpu0:.2} % of a core ({:+.2} %), RSS {:.1} MB vs {:.1} MB ({:+.1} MB) (targets: < 2 % of a core, < 5 MB extra)",
        cpu1 - cpu0,
        rss1 as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        (rss1 as f64 - rss0 as f64) / 1024.0
    );
    println!(
        "    CPU windows: none {:?}, probes {:?}",
        results[0]
            .0
            .iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>(),
        results[1]
            .0
            .iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
    );
    let mb = |v: &[u64]| {
        v.iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
    };
    println!(
        "    RSS windows (MB): none {:?}, probes {:?}",
        mb(&results[0].1),
        mb(&results[1].1)
    );
    drop(agent);
    drop(server);
}
