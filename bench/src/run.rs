//! `keelson bench services --local`: the cluster, the backends, the
//! Services, the load generators, the rounds, and the teardown (also on
//! SIGINT/SIGTERM).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use keelson_localcluster::{EBPF_FALLBACK, EBPF_LOADED, LocalCluster, ProxyMode};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::load::{BACKEND_PORT, Job, Outcome, mono_ns};
use crate::results::{self, Machine, Percentiles, Results, Round, RunConfig};
use crate::{Mode, ServicesConfig};

const NS: &str = "default";
const APP: &str = "keelson-bench-backend";
const SERVICE_PORT: u16 = 80;

/// What the async side needs to know of one node (the cluster itself stays
/// behind a lock, to be dropped on the way out).
#[derive(Clone, Debug)]
struct NodeInfo {
    name: String,
    netns: String,
    pid: Option<u32>,
    cgroup2: Option<PathBuf>,
    import_dir: PathBuf,
    root_dir: PathBuf,
}

type Shared = Arc<Mutex<Option<LocalCluster>>>;

/// Runs the whole benchmark; the cluster is torn down whatever happens,
/// also when SIGINT or SIGTERM arrives first (an error saying so then).
pub async fn services(cfg: ServicesConfig) -> anyhow::Result<()> {
    validate(&cfg)?;
    let shared: Shared = Arc::new(Mutex::new(None));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listen for SIGTERM")?;
    let mut work = Box::pin(bench(cfg, shared.clone()));
    let result = tokio::select! {
        r = &mut work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (SIGINT)")),
        _ = term.recv() => Err(anyhow!("interrupted (SIGTERM)")),
    };
    // Dropping the work drops the load generators (killed on drop) and any
    // cluster start still running on its blocking thread finishes into
    // `shared` first.
    drop(work);
    teardown(&shared).await;
    result
}

async fn teardown(shared: &Shared) {
    // A cluster start under way on a blocking thread puts its cluster in
    // `shared` when done: wait for it a little.
    let start = Instant::now();
    loop {
        let taken = shared.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(c) = taken {
            eprintln!("keelson bench: removing the local cluster");
            let _ = tokio::task::spawn_blocking(move || drop(c)).await;
            return;
        }
        if STARTING.load(std::sync::atomic::Ordering::SeqCst) == 0
            || start.elapsed() > Duration::from_secs(120)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cluster starts under way (blocking threads that will fill `shared`).
static STARTING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn validate(cfg: &ServicesConfig) -> anyhow::Result<()> {
    if cfg.services.is_empty() || cfg.services.contains(&0) {
        bail!("--services: want one or more Service counts above 0");
    }
    if let Some(n) = cfg.services.iter().find(|n| **n > 50_000) {
        bail!(
            "--services {n}: at most 50000 (the node's conntrack and the Service range are sized for that)"
        );
    }
    if cfg.endpoints == 0 || cfg.endpoints > 100 {
        bail!("--endpoints {}: want 1 to 100", cfg.endpoints);
    }
    if cfg.modes.is_empty() {
        bail!("--modes: want at least one of direct, ebpf, nftables");
    }
    if cfg.rounds == 0 {
        bail!("--rounds: want at least 1");
    }
    if cfg.concurrency.is_empty() || cfg.concurrency.contains(&0) {
        bail!("--concurrency: want counts above 0");
    }
    let phases = 1 + 2 * cfg.concurrency.len() as u32;
    if cfg.duration / phases < Duration::from_millis(100) {
        bail!(
            "--duration {:?}: too short for {phases} phases of at least 100 ms",
            cfg.duration
        );
    }
    if !cfg.local {
        // Against an existing cluster: check what can be checked, then say
        // what is missing.
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("--local needs root (network namespaces, cgroups, nftables, BPF)");
    }
    for t in keelson_localcluster::TOOLS.iter().chain(&["/usr/bin/ldd"]) {
        if !Path::new(t).exists() {
            bail!("--local needs {t}, which is missing");
        }
    }
    let cni = cfg
        .keelson
        .parent()
        .map(|d| d.join("keelson-cni"))
        .filter(|p| p.exists());
    if cni.is_none() {
        bail!(
            "--local needs keelson-cni beside {} (cargo build --bins)",
            cfg.keelson.display()
        );
    }
    if cfg.modes.contains(&Mode::Ebpf) {
        if keelson_localcluster::cgroup2_mount().is_none() {
            bail!("mode ebpf needs a cgroup2 hierarchy; none is mounted");
        }
        if !Path::new("/sys/fs/bpf").is_dir() {
            bail!("mode ebpf needs /sys/fs/bpf");
        }
    }
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("create the output dir {}", cfg.out.display()))?;
    Ok(())
}

fn proxy_mode(m: Mode) -> ProxyMode {
    match m {
        Mode::Direct => ProxyMode::None,
        Mode::Ebpf => ProxyMode::Ebpf,
        Mode::Nftables => ProxyMode::Nftables,
    }
}

async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read kubeconfig {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("load kubeconfig {}", kubeconfig.display()))?;
    kube::Client::try_from(cfg).context("build API client")
}

/// The nodes of the cluster `kubeconfig` reaches, checked for a
/// cross-node run; then the honest answer that only --local runs yet.
async fn existing_cluster(kubeconfig: &Path) -> anyhow::Result<()> {
    let client = client_from(kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client);
    let list = tokio::time::timeout(Duration::from_secs(10), nodes.list(&ListParams::default()))
        .await
        .map_err(|_| {
            anyhow!(
                "cluster of {} unreachable: no answer in 10 s",
                kubeconfig.display()
            )
        })?
        .with_context(|| format!("cluster of {} unreachable", kubeconfig.display()))?;
    if list.items.len() < 2 {
        bail!(
            "too few nodes: {} (backends and the client must be on different nodes: want at least 2)",
            list.items.len()
        );
    }
    bail!("benchmarking an existing cluster is not implemented yet: use --local")
}

async fn bench(cfg: ServicesConfig, shared: Shared) -> anyhow::Result<()> {
    if !cfg.local {
        let kc = cfg
            .kubeconfig
            .clone()
            .ok_or_else(|| anyhow!("give --local or --kubeconfig FILE"))?;
        return existing_cluster(&kc).await;
    }
    let started = chrono::Utc::now();
    let load_before = loadavg();
    // One node for the backends, one client node per mode.
    let tag = format!("b{:x}", std::process::id() & 0xffff);
    let (kubeconfig, backend_node, clients) = {
        let (cfg2, shared2, tag2) = (cfg.clone(), shared.clone(), tag.clone());
        // Counted down by the thread itself: this future may be dropped
        // (SIGINT) while the thread still runs.
        STARTING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            let r = start_cluster(&cfg2, &tag2, &shared2);
            STARTING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            r
        })
        .await
        .context("cluster start thread")??
    };
    let client = client_from(&kubeconfig).await?;
    wait_ready(&client, &shared, &cfg).await?;

    // The backend image, imported by the backends' node.
    eprintln!(
        "keelson bench: building the backend image and importing it on {}",
        backend_node.name
    );
    {
        let (bin, import) = (cfg.keelson.clone(), backend_node.import_dir.clone());
        tokio::task::spawn_blocking(move || crate::image::import_into(&bin, &import))
            .await
            .context("image thread")??;
    }
    let index = backend_node.root_dir.join("images/index.json");
    wait_for("the backend image import (see the agent log)", Duration::from_secs(120), || {
        let index = index.clone();
        async move {
            std::fs::read_to_string(&index).is_ok_and(|t| t.contains(crate::image::IMAGE))
        }
    })
    .await?;

    // The backends.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..cfg.endpoints {
        pods.create(&PostParams::default(), &backend_pod(i, &backend_node.name))
            .await
            .with_context(|| format!("create pod {APP}-{i}"))?;
    }
    let mut pod_ips: Vec<IpAddr> = Vec::new();
    let want = cfg.endpoints;
    let deadline = Instant::now() + Duration::from_secs(180);
    while pod_ips.len() < want {
        if Instant::now() > deadline {
            bail!(
                "{want} backend pods Running with an IP: not within 180 s ({} are)",
                pod_ips.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let list = pods
            .list(&ListParams::default().labels(&format!("app={APP}")))
            .await
            .context("list backend pods")?;
        pod_ips = list
            .items
            .iter()
            .filter_map(|p| {
                let st = p.status.as_ref()?;
                (st.phase.as_deref() == Some("Running")).then_some(())?;
                st.pod_ip.as_ref()?.parse().ok()
            })
            .collect();
    }
    let direct_targets: Vec<SocketAddr> = pod_ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, BACKEND_PORT))
        .collect();

    // The load generators, one per mode on its own node.
    let mut gens: BTreeMap<Mode, Generator> = BTreeMap::new();
    for (mode, node) in &clients {
        let g = Generator::spawn(&cfg.keelson, node).await?;
        gens.insert(*mode, g);
    }
    for (mode, g) in gens.iter_mut() {
        let o = g
            .run(&Job::Check {
                targets: direct_targets.clone(),
                timeout_ms: 60_000,
            })
            .await?;
        if !o.failing.is_empty() {
            bail!(
                "backends {:?} do not answer from the {} client node: {}",
                o.failing,
                mode.name(),
                o.first_error.unwrap_or_default()
            );
        }
    }

    // Service counts, ascending: Services are added, never removed, between them.
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let mut vips: Vec<IpAddr> = Vec::new();
    let mut cells = Vec::new();
    let mut ns_sorted = cfg.services.clone();
    ns_sorted.sort_unstable();
    ns_sorted.dedup();
    for &n in &ns_sorted {
        eprintln!("keelson bench: {n} Services");
        create_services(&services, &mut vips, n).await?;
        let vip_targets: Vec<SocketAddr> = vips
            .iter()
            .map(|ip| SocketAddr::new(*ip, SERVICE_PORT))
            .collect();
        for (mode, g) in gens.iter_mut().filter(|(m, _)| **m != Mode::Direct) {
            let o = g
                .run(&Job::Check {
                    targets: vip_targets.clone(),
                    timeout_ms: 120_000 + n as u64 * 20,
                })
                .await?;
            if !o.failing.is_empty() {
                bail!(
                    "{} of {n} Services do not answer through {} (first: {})",
                    o.failing.len(),
                    mode.name(),
                    o.first_error.unwrap_or_default()
                );
            }
        }
        let mut rounds: BTreeMap<Mode, Vec<Round>> = BTreeMap::new();
        let mut programming: BTreeMap<Mode, Vec<Option<f64>>> = BTreeMap::new();
        for r in 0..cfg.rounds {
            let mut order = cfg.modes.clone();
            order.rotate_left(r % cfg.modes.len());
            for mode in order {
                let targets = if mode == Mode::Direct {
                    &direct_targets
                } else {
                    &vip_targets
                };
                let node = &clients
                    .iter()
                    .find(|(m, _)| *m == mode)
                    .expect("a node per mode")
                    .1;
                let g = gens.get_mut(&mode).expect("a generator per mode");
                let round = measure(g, targets, node.pid, &cfg).await?;
                eprintln!(
                    "  round {}/{} {:>8}: connect p50 {:.1} µs p99 {:.1} µs, {} conn/s, {} req/s, {} errors, {} SYN retransmits",
                    r + 1,
                    cfg.rounds,
                    mode.name(),
                    round.connect_us.p50,
                    round.connect_us.p99,
                    round.cps.values().last().map_or(0.0, |v| *v).round(),
                    round.rps.values().last().map_or(0.0, |v| *v).round(),
                    round.errors,
                    round.syn_retransmits
                );
                rounds.entry(mode).or_default().push(round);
            }
            let prog_modes: Vec<Mode> = cfg
                .modes
                .iter()
                .copied()
                .filter(|m| *m != Mode::Direct)
                .collect();
            if !prog_modes.is_empty() {
                for k in 0..cfg.programming_samples {
                    let name = format!("keelson-bench-prog-{n}-{r}-{k}");
                    let got = program_once(&services, &name, &mut gens, &prog_modes).await?;
                    for (m, v) in got {
                        programming.entry(m).or_default().push(v);
                    }
                }
            }
        }
        for mode in &cfg.modes {
            cells.push(results::cell(
                mode.name(),
                n,
                rounds.remove(mode).unwrap_or_default(),
                programming.get(mode).map_or(&[][..], |v| &v[..]),
            ));
        }
    }
    results::relate_to_direct(&mut cells);
    drop(gens);
    let results = Results {
        schema: results::SCHEMA.into(),
        command: cfg.command.clone(),
        keelson_version: env!("CARGO_PKG_VERSION").into(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        started: started.to_rfc3339(),
        finished: chrono::Utc::now().to_rfc3339(),
        machine: machine(load_before),
        config: RunConfig {
            services: ns_sorted,
            endpoints: cfg.endpoints,
            modes: cfg.modes.iter().map(|m| m.name().to_string()).collect(),
            duration_ms: cfg.duration.as_millis() as u64,
            rounds: cfg.rounds,
            concurrency: cfg.concurrency.clone(),
            programming_samples: cfg.programming_samples,
            local: cfg.local,
        },
        cells,
    };
    crate::write_outputs(&results, &cfg.out)?;
    print!("{}", crate::report::table(&results));
    println!("results: {}", cfg.out.join("results.json").display());
    Ok(())
}

/// Starts the cluster into `shared` (so that teardown finds it whatever
/// happens next) and returns its kubeconfig, the backends' node and one
/// client node per mode.
#[allow(clippy::type_complexity)]
fn start_cluster(
    cfg: &ServicesConfig,
    tag: &str,
    shared: &Shared,
) -> anyhow::Result<(PathBuf, NodeInfo, Vec<(Mode, NodeInfo)>)> {
    let lc = LocalCluster::create(&keelson_localcluster::Options {
        tag: tag.to_string(),
        bin: cfg.keelson.clone(),
        server_extra: Vec::new(),
        client: false,
    })
    .context("start the local cluster's link and API server")?;
    let server_dir = lc
        .server
        .kubeconfig
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    eprintln!(
        "keelson bench: local cluster {tag}: API server {} (data {server_dir}), namespaces kmn{tag}-*",
        lc.server.url
    );
    let kubeconfig = lc.server.kubeconfig.clone();
    *shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(lc);
    let add = |mode: ProxyMode| -> anyhow::Result<NodeInfo> {
        let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
        let lc = g.as_mut().ok_or_else(|| anyhow!("cluster gone"))?;
        let n = lc
            .add_node(&cfg.keelson, mode, None, &[])
            .with_context(|| format!("start a node with --proxy-mode {}", mode.flag()))?;
        eprintln!(
            "keelson bench: node {} ({}) in netns {}, root {}",
            n.name,
            mode.flag(),
            n.netns,
            n.root_dir.parent().unwrap_or(&n.root_dir).display()
        );
        Ok(NodeInfo {
            name: n.name.clone(),
            netns: n.netns.clone(),
            pid: n.pid(),
            cgroup2: n.proxy_cgroup2.clone(),
            import_dir: n.image_import_dir(),
            root_dir: n.root_dir.clone(),
        })
    };
    let backend = add(ProxyMode::None)?;
    let mut clients = Vec::new();
    for m in &cfg.modes {
        clients.push((*m, add(proxy_mode(*m))?));
    }
    Ok((kubeconfig, backend, clients))
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("{what}: not within {timeout:?}")
}

fn condition(n: &Node, kind: &str) -> Option<String> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

/// Every node Ready and routed; every client node's proxy up in its mode
/// (eBPF loaded, not fallen back); no default route in any node: a
/// ClusterIP a proxy did not translate fails inside the namespace.
async fn wait_ready(
    client: &kube::Client,
    shared: &Shared,
    cfg: &ServicesConfig,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let want = 1 + cfg.modes.len();
    wait_for("all nodes Ready", Duration::from_secs(90), || {
        let nodes = nodes.clone();
        async move {
            nodes.list(&ListParams::default()).await.is_ok_and(|l| {
                l.items
                    .iter()
                    .filter(|n| condition(n, "Ready").as_deref() == Some("True"))
                    .count()
                    == want
            })
        }
    })
    .await?;
    {
        let s = shared.clone();
        tokio::task::spawn_blocking(move || {
            let g = s.lock().unwrap_or_else(|p| p.into_inner());
            g.as_ref()
                .ok_or_else(|| anyhow!("cluster gone"))?
                .wait_routed(Duration::from_secs(60))
                .map_err(anyhow::Error::from)
        })
        .await
        .context("route wait thread")??;
    }
    let proxied: Vec<(String, ProxyMode)> = {
        let g = shared.lock().unwrap_or_else(|p| p.into_inner());
        let lc = g.as_ref().ok_or_else(|| anyhow!("cluster gone"))?;
        for n in &lc.nodes {
            let out = n.exec(&["ip", "-4", "route", "show", "default"]);
            if !out.stdout.is_empty() {
                bail!(
                    "node {} has a default route ({}): a ClusterIP no proxy translated could leave the machine",
                    n.name,
                    String::from_utf8_lossy(&out.stdout).trim()
                );
            }
        }
        lc.nodes
            .iter()
            .filter(|n| n.proxy_mode != ProxyMode::None)
            .map(|n| (n.name.clone(), n.proxy_mode))
            .collect()
    };
    for (name, mode) in proxied {
        let nodes = nodes.clone();
        wait_for(
            &format!("ServiceProxyReady on {name}"),
            Duration::from_secs(60),
            || {
                let (nodes, name) = (nodes.clone(), name.clone());
                async move {
                    nodes.get(&name).await.is_ok_and(|n| {
                        condition(&n, "ServiceProxyReady").as_deref() == Some("True")
                    })
                }
            },
        )
        .await?;
        if mode == ProxyMode::Ebpf {
            let g = shared.lock().unwrap_or_else(|p| p.into_inner());
            let lc = g.as_ref().ok_or_else(|| anyhow!("cluster gone"))?;
            let n = lc.nodes.iter().find(|n| n.name == name).expect("listed");
            let log = n.log();
            if log.contains(EBPF_FALLBACK) || !log.contains(EBPF_LOADED) {
                bail!(
                    "mode ebpf: the proxy on {name} did not load its eBPF programs (it fell back or failed); see its log"
                );
            }
        }
    }
    Ok(())
}

fn backend_pod(i: usize, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("{APP}-{i}"), "labels": {"app": APP}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "backend",
                "image": crate::image::IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/keelson", "bench", "backend", "--listen", format!("0.0.0.0:{BACKEND_PORT}")],
                "ports": [{"containerPort": BACKEND_PORT}],
            }],
        },
    }))
    .expect("a valid Pod")
}

fn service(name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "keelson-bench"}},
        "spec": {
            "selector": {"app": APP},
            "ports": [{"port": SERVICE_PORT, "targetPort": BACKEND_PORT, "protocol": "TCP"}],
        },
    }))
    .expect("a valid Service")
}

fn cluster_ip(s: &Service) -> anyhow::Result<IpAddr> {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_ref())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| anyhow!("Service {:?} has no ClusterIP", s.metadata.name))
}

/// Creates Services until there are `n` (16 requests in flight).
async fn create_services(
    api: &Api<Service>,
    vips: &mut Vec<IpAddr>,
    n: usize,
) -> anyhow::Result<()> {
    let mut next = vips.len();
    while next < n {
        let batch: Vec<usize> = (next..n.min(next + 16)).collect();
        let made = futures::future::join_all(batch.iter().map(|i| {
            let api = api.clone();
            async move {
                let name = format!("keelson-bench-{i}");
                api.create(&PostParams::default(), &service(&name))
                    .await
                    .with_context(|| format!("create Service {name}"))
            }
        }))
        .await;
        for s in made {
            vips.push(cluster_ip(&s?)?);
        }
        next += batch.len();
    }
    Ok(())
}

/// One Service created and timed to its first answer through each mode.
async fn program_once(
    api: &Api<Service>,
    name: &str,
    gens: &mut BTreeMap<Mode, Generator>,
    modes: &[Mode],
) -> anyhow::Result<Vec<(Mode, Option<f64>)>> {
    let since_ns = mono_ns();
    let s = api
        .create(&PostParams::default(), &service(name))
        .await
        .with_context(|| format!("create Service {name}"))?;
    let target = SocketAddr::new(cluster_ip(&s)?, SERVICE_PORT);
    let job = Job::Probe {
        target,
        since_ns,
        timeout_ms: 30_000,
    };
    let mut sent = Vec::new();
    for (m, g) in gens.iter_mut().filter(|(m, _)| modes.contains(m)) {
        g.send(&job).await?;
        sent.push(*m);
    }
    let mut out = Vec::new();
    for m in sent {
        let g = gens.get_mut(&m).expect("sent to it");
        let o = g.recv().await?;
        out.push((m, o.latency_ns.map(|ns| ns as f64 / 1e6)));
    }
    let _ = api.delete(name, &DeleteParams::default()).await;
    Ok(out)
}

/// One round of one mode: connect latency, then connections/s and
/// requests/s at each concurrency, the agent's CPU over all of it.
async fn measure(
    g: &mut Generator,
    targets: &[SocketAddr],
    agent: Option<u32>,
    cfg: &ServicesConfig,
) -> anyhow::Result<Round> {
    let phases = 1 + 2 * cfg.concurrency.len() as u32;
    let phase_ms = (cfg.duration / phases).as_millis() as u64;
    let cpu0 = agent.and_then(cpu_ticks);
    let t0 = Instant::now();
    let mut round = Round::default();
    let mut c = g
        .run(&Job::Connect {
            targets: targets.to_vec(),
            duration_ms: phase_ms,
        })
        .await?;
    round.connects = c.samples_ns.len() as u64;
    round.connect_us = Percentiles::of_ns(&mut c.samples_ns).unwrap_or_default();
    round.errors += c.errors;
    round.syn_retransmits += c.syn_retransmits;
    let mut first_error = c.first_error.take();
    for &conc in &cfg.concurrency {
        for keep_alive in [false, true] {
            let job = if keep_alive {
                Job::Rr {
                    targets: targets.to_vec(),
                    concurrency: conc,
                    duration_ms: phase_ms,
                }
            } else {
                Job::Crr {
                    targets: targets.to_vec(),
                    concurrency: conc,
                    duration_ms: phase_ms,
                }
            };
            let o = g.run(&job).await?;
            let rate = o.ok as f64 / (o.elapsed_ns.max(1) as f64 / 1e9);
            if keep_alive {
                round.rps.insert(conc, rate);
            } else {
                round.cps.insert(conc, rate);
            }
            round.requests += o.ok;
            round.errors += o.errors;
            round.syn_retransmits += o.syn_retransmits;
            first_error = first_error.or(o.first_error);
        }
    }
    if let Some(e) = first_error {
        tracing::warn!("errors in this round, the first: {e}");
    }
    let wall = t0.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (cpu0, agent.and_then(cpu_ticks)) {
        // /proc/PID/stat counts in USER_HZ, 100 on Linux.
        round.agent_cpu_percent = (b - a) as f64 / 100.0 / wall * 100.0;
    }
    round.agent_rss_kib = agent.and_then(rss_kib).unwrap_or(0);
    Ok(round)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after "pid (comm) ".
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = s
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    [0, 1, 2].map(|i| v.get(i).copied().unwrap_or(f64::NAN))
}

fn machine(load_before: [f64; 3]) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("")
            .trim()
            .to_string(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        memory_kib: meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        load_before,
        load_after: loadavg(),
    }
}

/// A load generator process in a client node (killed on drop).
struct Generator {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    node: String,
    cgroup: Option<PathBuf>,
}

impl Generator {
    async fn spawn(bin: &Path, node: &NodeInfo) -> anyhow::Result<Generator> {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["bench", "client", "--netns"])
            .arg(keelson_host::netns::named(&node.netns));
        // eBPF: inside the node's cgroup2 subtree, where its socket
        // programs are attached (a leaf of its own).
        let cgroup = node
            .cgroup2
            .as_ref()
            .map(|c| c.join("keelson-bench-client"));
        if let Some(cg) = &cgroup {
            std::fs::create_dir_all(cg)
                .with_context(|| format!("create cgroup {}", cg.display()))?;
            cmd.arg("--cgroup").arg(cg);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start the load generator on {}", node.name))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Generator {
            _child: child,
            stdin,
            stdout,
            node: node.name.clone(),
            cgroup,
        })
    }

    async fn send(&mut self, job: &Job) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(job).context("encode job")?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .with_context(|| format!("send a job to the load generator on {}", self.node))
    }

    async fn recv(&mut self) -> anyhow::Result<Outcome> {
        let line = self
            .stdout
            .next_line()
            .await
            .with_context(|| format!("read the load generator on {}", self.node))?
            .ok_or_else(|| anyhow!("the load generator on {} exited", self.node))?;
        serde_json::from_str(&line).context("parse an outcome")
    }

    async fn run(&mut self, job: &Job) -> anyhow::Result<Outcome> {
        self.send(job).await?;
        self.recv().await
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        // The child is killed on drop (after this); its cgroup goes with
        // the node's cleanup, which kills and removes whatever is left.
        if let Some(cg) = &self.cgroup {
            let _ = std::fs::remove_dir(cg);
        }
    }
}
