//! Scheduler benchmark: how fast pods get bound.
//!
//! `cargo build --release -p keelson && cargo bench -p keelson-e2e --bench scheduler`
//!
//! 1. The pure core alone: schedule `PODS` pods one after another onto
//!    `NODES` nodes in memory (filters, scores, assume), in pods/s.
//! 2. End to end: a real `keelson server` process (release build, next to
//!    this benchmark's binary or `$KEELSON_BIN`) started normally, so its
//!    own scheduler and controllers run as they do in production. The
//!    benchmark creates `NODES` Node objects (Ready, generous allocatable,
//!    with Leases) and then `PODS` pods as fast as it can (`CONCURRENCY`
//!    creates in flight), and measures the time from the first create until
//!    a watch has seen every pod bound. It also reports the server's CPU
//!    time over the run (from /proc), to show where the time goes.
//! 3. Standalone: as 2, but the server runs with `--disable-controllers`
//!    and the same scheduler code runs in this process, talking to the
//!    server over HTTPS as kube-scheduler would: the scheduler without the
//!    other controllers' load on the server.
//! 4. Baseline: the same pod creates against a server started with
//!    `--disable-controllers` (no scheduler, no controllers): the API
//!    server's create throughput alone, an upper bound for part 2.
//!
//! Parts run in that order; an argument (`core`, `end-to-end`,
//! `standalone`, `baseline`) runs only the parts whose name contains it.
//!
//! Environment (defaults are the targets): `KEELSON_BENCH_NODES` (500),
//! `KEELSON_BENCH_PODS` (5000), `KEELSON_BENCH_CONCURRENCY` (32),
//! `KEELSON_BENCH_CORE_ROUNDS` (3).
//!
//! Two binaries side by side: with `KEELSON_BENCH_COMPARE=OLD` (the path of
//! another `keelson` binary), part 2 runs `KEELSON_BENCH_REPEAT` (5) times
//! for each binary, alternating (old, new, old, new, ...), each run in a
//! fresh process of this benchmark with `KEELSON_BIN` set; then the medians
//! of throughput and server CPU per pod of each, and their ratio (new/old),
//! are printed. "New" is `$KEELSON_BIN` or the `keelson` next to this
//! benchmark. For example:
//!
//! ```sh
//! cargo build --release -p keelson
//! KEELSON_BENCH_COMPARE=/path/to/old/release/keelson \
//!   cargo bench -p keelson-e2e --bench scheduler -- end-to-end
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use keelson_control_plane::scheduler::cache::Cache;
use keelson_control_plane::scheduler::core::{self, NodeSpec, PodInfo, Scratch};
use keelson_e2e::ServerProcess;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

const NAMESPACE: &str = "bench";
const BIND_TIMEOUT: Duration = Duration::from_secs(300);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Settings {
    nodes: usize,
    pods: usize,
    concurrency: usize,
    core_rounds: usize,
}

fn node_json(i: usize) -> Value {
    let name = format!("node-{i:04}");
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
        }},
        "spec": {"podCIDR": format!("10.{}.{}.0/24", 64 + i / 256, i % 256)},
    })
}

fn node_status() -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    json!({"status": {
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
    }})
}

/// Pods of 50 "owners" with a few request sizes.
fn pod_json(i: usize) -> Value {
    let sizes = [
        ("50m", "64Mi"),
        ("100m", "128Mi"),
        ("250m", "256Mi"),
        ("500m", "512Mi"),
    ];
    let (cpu, mem) = sizes[i % sizes.len()];
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p-{i:05}"), "namespace": NAMESPACE, "labels": {"app": format!("app-{}", i % 50)}},
        "spec": {"containers": [{"name": "c", "image": "busybox",
                                 "resources": {"requests": {"cpu": cpu, "memory": mem}}}]},
    })
}

// ---------------------------------------------------------------------------
// Pure core

fn bench_core(s: &Settings) -> Result<()> {
    let mut nodes = Vec::with_capacity(s.nodes);
    for i in 0..s.nodes {
        let mut n = node_json(i);
        n["status"] = node_status()["status"].clone();
        let n: Node = serde_json::from_value(n)?;
        nodes.push(NodeSpec::from_node(&n));
    }
    let pods: Vec<Arc<PodInfo>> = (0..s.pods)
        .map(|i| {
            let mut p = pod_json(i);
            p["metadata"]["uid"] = format!("uid-{i}").into();
            // Half the pods have a controller owner (spreading applies).
            if i % 2 == 0 {
                p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("rs-{}", i % 50), "uid": format!("rs-{}", i % 50), "controller": true}]);
            }
            let p: Pod = serde_json::from_value(p)?;
            Ok(Arc::new(PodInfo::from_pod(&p)))
        })
        .collect::<Result<_>>()?;
    println!(
        "== pure core: {} pods onto {} nodes (filters, scores, assume), in memory",
        s.pods, s.nodes
    );
    let mut rates = Vec::new();
    for round in 0..s.core_rounds {
        let mut cache = Cache::default();
        for n in &nodes {
            cache.upsert_node(n.clone());
        }
        let mut scratch = Scratch::default();
        let start = Instant::now();
        for (k, p) in pods.iter().enumerate() {
            let i = core::schedule(p, cache.nodes(), k, &mut scratch)
                .map_err(|e| anyhow::anyhow!("pod {k} did not fit: {e}"))?;
            let node = cache.nodes()[i].name.clone();
            cache.assume(p.clone(), &node);
        }
        let took = start.elapsed();
        let rate = s.pods as f64 / took.as_secs_f64();
        rates.push(rate);
        let per_node: Vec<i64> = cache.nodes().iter().map(|n| n.usage.pods).collect();
        println!(
            "   round {round}: {took:>10.3?}  {rate:>10.0} pods/s  ({:.1} µs/pod; pods per node min {} max {})",
            took.as_secs_f64() * 1e6 / s.pods as f64,
            per_node.iter().min().unwrap_or(&0),
            per_node.iter().max().unwrap_or(&0),
        );
    }
    rates.sort_by(f64::total_cmp);
    println!("   median: {:.0} pods/s", rates[rates.len() / 2]);
    Ok(())
}

// ---------------------------------------------------------------------------
// End to end

/// CPU seconds (user + system) used so far by the process whose command
/// line mentions `needle`.
fn cpu_seconds_of(needle: &str) -> Option<f64> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains("server") || !cmd.contains(needle) {
            continue;
        }
        return keelson_e2e::process::cpu_seconds(pid);
    }
    None
}

fn self_cpu_seconds() -> f64 {
    keelson_e2e::process::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

async fn create_nodes(client: &kube::Client, s: &Settings) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    futures::stream::iter(0..s.nodes)
        .map(|i| {
            let nodes = nodes.clone();
            let leases = leases.clone();
            async move {
                let n: Node = serde_json::from_value(node_json(i))?;
                let name = n.metadata.name.clone().unwrap_or_default();
                nodes
                    .create(&PostParams::default(), &n)
                    .await
                    .with_context(|| format!("create node {name}"))?;
                nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(node_status()))
                    .await
                    .with_context(|| format!("node {name} status"))?;
                renew_lease(&leases, &name).await
            }
        })
        .buffer_unordered(s.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn renew_lease(leases: &Api<Lease>, name: &str) -> Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now},
    });
    match leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&lease))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let l: Lease = serde_json::from_value(lease)?;
            leases
                .create(&PostParams::default(), &l)
                .await
                .with_context(|| format!("create lease {name}"))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("renew lease {name}")),
    }
}

/// Keep the nodes' Leases fresh (every 10 s) so that node lifecycle keeps
/// them Ready however long the run takes.
fn spawn_lease_renewer(client: kube::Client, nodes: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            for i in 0..nodes {
                let _ = renew_lease(&leases, &format!("node-{i:04}")).await;
            }
        }
    })
}

/// Wait until a pod is bound (the scheduler runs and has synced).
async fn warm_up(client: &kube::Client) -> Result<Duration> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut p = pod_json(0);
    p["metadata"]["name"] = "warm-up".into();
    let p: Pod = serde_json::from_value(p)?;
    let start = Instant::now();
    pods.create(&PostParams::default(), &p)
        .await
        .context("create warm-up pod")?;
    loop {
        let p = pods.get("warm-up").await?;
        if p.spec.and_then(|s| s.node_name).is_some() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("warm-up pod not bound within 60 s: is the scheduler running?");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where the scheduler runs in an end-to-end run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `keelson server` as in production: scheduler and every controller
    /// in the server process.
    InServer,
    /// `keelson server --disable-controllers`, and the same scheduler code
    /// in this process as a separate client (as kube-scheduler runs): the
    /// scheduler's cost without the other controllers' load on the server.
    Standalone,
}

async fn bench_end_to_end(s: &Settings, mode: Mode) -> Result<()> {
    let what = match mode {
        Mode::InServer => "`keelson server` process running scheduler and controllers",
        Mode::Standalone => {
            "`keelson server --disable-controllers`, scheduler in the benchmark process"
        }
    };
    println!(
        "== end to end: {} pods onto {} nodes, {what} ({} creates in flight)",
        s.pods, s.nodes, s.concurrency
    );
    let server = match mode {
        Mode::InServer => ServerProcess::start(None),
        Mode::Standalone => ServerProcess::start_with(None, keelson_e2e::API_ONLY),
    };
    let data_dir = server.data_dir.display().to_string();
    let client = server.client().await;
    let scheduler = (mode == Mode::Standalone).then(|| {
        let ctx = keelson_control_plane::controllers::Context {
            client: client.clone(),
            config: keelson_control_plane::controllers::ControllerConfig::default(),
            root_ca_pem: String::new(),
            clients: Default::default(),
        };
        tokio::spawn(keelson_control_plane::scheduler::run(Arc::new(ctx)))
    });
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .context("create namespace")?;

    let t = Instant::now();
    create_nodes(&client, s).await?;
    println!("   created {} nodes in {:.2?}", s.nodes, t.elapsed());
    let renewer = spawn_lease_renewer(client.clone(), s.nodes);
    let warm = warm_up(&client).await?;
    println!("   warm-up pod bound after {warm:.2?}");

    // Watch the bench namespace for bindings.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let (bound_tx, mut bound_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let watch = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut stream = watcher(pods, watcher::Config::default()).boxed();
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))
                        if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() =>
                    {
                        let _ =
                            bound_tx.send((p.metadata.name.unwrap_or_default(), Instant::now()));
                    }
                    _ => {}
                }
            }
        })
    };
    ready_rx.await.context("pod watch did not start")?;

    let server_cpu0 = cpu_seconds_of(&data_dir);
    let self_cpu0 = self_cpu_seconds();
    let start = Instant::now();
    let created = futures::stream::iter(0..s.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let p: Pod = serde_json::from_value(pod_json(i))?;
                pods.create(&PostParams::default(), &p)
                    .await
                    .with_context(|| format!("create pod {i}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(s.concurrency)
        .try_collect::<Vec<()>>();
    let mut seen = HashSet::new();
    let mut created_at = None;
    let mut last_bound = start;
    let mut marks = BTreeMap::new();
    tokio::pin!(created);
    let deadline = tokio::time::sleep(BIND_TIMEOUT);
    tokio::pin!(deadline);
    while seen.len() < s.pods {
        tokio::select! {
            r = &mut created, if created_at.is_none() => {
                r?;
                created_at = Some(start.elapsed());
            }
            Some((name, at)) = bound_rx.recv() => {
                if name.starts_with("p-") && seen.insert(name) {
                    last_bound = at;
                    for q in [1, 2, 4] {
                        if seen.len() == s.pods * q / 4 {
                            marks.insert(q * 25, at - start);
                        }
                    }
                }
            }
            () = &mut deadline => bail!("only {} of {} pods bound after {BIND_TIMEOUT:?}", seen.len(), s.pods),
        }
    }
    let total = last_bound - start;
    let created_at = match created_at {
        Some(c) => c,
        None => {
            created.await?;
            start.elapsed()
        }
    };
    let server_cpu = cpu_seconds_of(&data_dir)
        .zip(server_cpu0)
        .map(|(b, a)| b - a);
    let self_cpu = self_cpu_seconds() - self_cpu0;
    renewer.abort();
    watch.abort();
    if let Some(s) = scheduler {
        s.abort();
    }

    println!(
        "   created {} pods in {created_at:.2?} ({:.0} creates/s)",
        s.pods,
        s.pods as f64 / created_at.as_secs_f64()
    );
    for (pct, at) in &marks {
        println!("   {pct:>3}% bound after {at:.2?}");
    }
    println!(
        "   all {} bound after {total:.2?}: {:.0} pods/s bound (first create to last binding seen)",
        s.pods,
        s.pods as f64 / total.as_secs_f64()
    );
    if let Some(c) = server_cpu {
        println!(
            "   server CPU {c:.1} s over the run ({:.0}% of one core; {:.0} µs per pod for create + bind + watches + controllers)",
            100.0 * c / total.as_secs_f64(),
            c * 1e6 / s.pods as f64
        );
    }
    // For comparisons (see the module documentation): one line to parse.
    println!(
        "RESULT pods_per_s={:.1} server_cpu_us_per_pod={:.1}",
        s.pods as f64 / total.as_secs_f64(),
        server_cpu.map_or(f64::NAN, |c| c * 1e6 / s.pods as f64)
    );
    println!(
        "   benchmark process CPU {self_cpu:.1} s (creates, watch{}; shares the machine's {} cores)",
        if mode == Mode::Standalone {
            ", the scheduler"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Spread check.
    let list = pods.list(&ListParams::default()).await?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &list.items {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let counts: Vec<usize> = per_node.values().copied().collect();
    println!(
        "   pods per node: {} nodes used, min {} max {}",
        per_node.len(),
        counts.iter().min().unwrap_or(&0),
        counts.iter().max().unwrap_or(&0)
    );
    drop(server);
    Ok(())
}

/// Creates only, against a server without scheduler and controllers.
async fn bench_create_baseline(s: &Settings) -> Result<()> {
    println!(
        "== baseline: {} pod creates, server with --disable-controllers ({} in flight)",
        s.pods, s.concurrency
    );
    let server = ServerProcess::start_with(None, keelson_e2e::API_ONLY);
    let data_dir = server.data_dir.display().to_string();
    let client = server.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .context("create namespace")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let server_cpu0 = cpu_seconds_of(&data_dir);
    let start = Instant::now();
    futures::stream::iter(0..s.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let p: Pod = serde_json::from_value(pod_json(i))?;
                pods.create(&PostParams::default(), &p)
                    .await
                    .with_context(|| format!("create pod {i}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(s.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let took = start.elapsed();
    let server_cpu = cpu_seconds_of(&data_dir)
        .zip(server_cpu0)
        .map(|(b, a)| b - a);
    println!(
        "   created {} pods in {took:.2?} ({:.0} creates/s)",
        s.pods,
        s.pods as f64 / took.as_secs_f64()
    );
    if let Some(c) = server_cpu {
        println!(
            "   server CPU {c:.1} s ({:.0} µs per create)",
            c * 1e6 / s.pods as f64
        );
    }
    Ok(())
}

/// Time from creating a Deployment of `KEELSON_BENCH_REPLICAS` (1,000) to all
/// its pods bound, with the server's own controllers and scheduler.
async fn bench_deployment(s: &Settings) -> Result<()> {
    let replicas = env("KEELSON_BENCH_REPLICAS", 1000);
    println!(
        "== deployment: {replicas} replicas onto {} nodes, `keelson server` running scheduler and controllers",
        s.nodes
    );
    let server = ServerProcess::start(None);
    let client = server.client().await;
    create_nodes(&client, s).await?;
    let renewer = spawn_lease_renewer(client.clone(), s.nodes);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    warm_up(&client).await?;
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    let d = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "bench"}},
                 "template": {"metadata": {"labels": {"app": "bench"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    deploys.create(&PostParams::default(), &d).await?;
    let mut created_at = None;
    loop {
        let list = pods
            .list(&ListParams::default().labels("app=bench"))
            .await?;
        let total = list.items.len();
        let bound = list
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        if created_at.is_none() && total >= replicas {
            created_at = Some(start.elapsed());
        }
        if bound >= replicas {
            break;
        }
        if start.elapsed() > BIND_TIMEOUT {
            anyhow::bail!(
                "only {bound}/{replicas} pods bound after {:?}",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = start.elapsed();
    println!(
        "deployment of {replicas}: all pods created after {:.2} s, all bound after {:.2} s ({:.0} pods/s)",
        created_at.unwrap_or(all).as_secs_f64(),
        all.as_secs_f64(),
        replicas as f64 / all.as_secs_f64()
    );
    renewer.abort();
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Part 2 for two binaries, alternating, each run in a child process of
/// this benchmark (see the module documentation).
fn compare(old: &str) -> Result<()> {
    let new = keelson_e2e::keelson_bin();
    let repeat = env("KEELSON_BENCH_REPEAT", 5).max(1);
    let exe = std::env::current_exe()?;
    println!(
        "== in-server scheduler, old against new, {repeat} runs each, alternating\n   old: {old}\n   new: {}",
        new.display()
    );
    let mut results: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for round in 0..repeat {
        for (label, bin) in [("old", std::path::PathBuf::from(old)), ("new", new.clone())] {
            let out = std::process::Command::new(&exe)
                .args(["end-to-end", "--bench"])
                .env("KEELSON_BIN", &bin)
                .env_remove("KEELSON_BENCH_COMPARE")
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(|| format!("run {label} round {round}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!("{label} round {round} failed:\n{text}");
            }
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .with_context(|| format!("{label} round {round}: no RESULT line in\n{text}"))?;
            let field = |name: &str| -> f64 {
                line.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            };
            let (rate, cpu) = (field("pods_per_s"), field("server_cpu_us_per_pod"));
            println!(
                "   round {round} {label}: {rate:>7.0} pods/s  {cpu:>6.0} µs server CPU per pod"
            );
            let e = results.entry(label).or_default();
            e.0.push(rate);
            e.1.push(cpu);
        }
    }
    let mut med = BTreeMap::new();
    for (label, (mut rates, mut cpus)) in results {
        let m = (median(&mut rates), median(&mut cpus));
        println!(
            "   median {label}: {:.0} pods/s, {:.0} µs server CPU per pod",
            m.0, m.1
        );
        med.insert(label, m);
    }
    if let (Some(o), Some(n)) = (med.get("old"), med.get("new")) {
        println!(
            "   new/old: throughput {:.3}x, server CPU per pod {:.3}x",
            n.0 / o.0,
            n.1 / o.1
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a filter argument selects a part.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |part: &str| filter.is_empty() || filter.iter().any(|f| part.contains(f.as_str()));
    let s = Settings {
        nodes: env("KEELSON_BENCH_NODES", 500),
        pods: env("KEELSON_BENCH_PODS", 5000),
        concurrency: env("KEELSON_BENCH_CONCURRENCY", 32),
        core_rounds: env("KEELSON_BENCH_CORE_ROUNDS", 3).max(1),
    };
    if want("core") {
        bench_core(&s)?;
    }
    if want("end-to-end")
        && let Ok(old) = std::env::var("KEELSON_BENCH_COMPARE")
    {
        compare(&old)?;
    } else if want("end-to-end") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(bench_end_to_end(&s, Mode::InServer))?;
    }
    if want("standalone") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(bench_end_to_end(&s, Mode::Standalone))?;
    }
    if want("deployment") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(bench_deployment(&s))?;
    }
    if want("baseline") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(bench_create_baseline(&s))?;
    }
    Ok(())
}
