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
    drop(agent);
    drop(server);
}
