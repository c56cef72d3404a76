//! `keelson agent`: the node agent's entry point (flags and wiring).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::health::{NodeHealth, Part, State};
use crate::supervise::supervise;

/// Flags of `keelson agent` (see DESIGN.md "Interfaces").
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Kubeconfig for the API server.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// This node's name.
    #[arg(long)]
    pub node_name: String,
    /// Agent state: images, per-pod state, container state, certificates.
    #[arg(long, default_value = "/var/lib/keelson")]
    pub root_dir: PathBuf,
    /// OCI runtime: runc, crun, youki, or a path to any OCI runtime CLI.
    #[arg(long, default_value = "runc")]
    pub runtime: String,
    /// CNI configuration dir (the first config file in lexical order is used).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// CNI plugin dir (/usr/lib/cni is searched after it).
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Name of the top cgroup for pods (kubelet's kubepods).
    #[arg(long, default_value = "kubepods")]
    pub cgroup_root: String,
    /// The node's InternalIP (default: the first non-loopback address).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Address of the node API (TLS).
    #[arg(long, default_value = "0.0.0.0:10250")]
    pub node_api_listen: SocketAddr,
    /// The node's pod CIDR (written to spec.podCIDR when set). Where the
    /// CNI config dir holds no configuration, the agent networks pods in it
    /// with keelson-cni (else in the Node's spec.podCIDR).
    #[arg(long)]
    pub pod_cidr: Option<ipnet::Ipv4Net>,
    /// The cluster's Service CIDR: traffic to an address in it that no
    /// Service rule load-balances is refused on the node, never routed out
    /// (the Service proxy's --service-cidr).
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: ipnet::Ipv4Net,
    /// Service load balancing: ebpf (falls back to nftables with a log line
    /// where the kernel lacks what it needs), nftables or none.
    #[arg(long, default_value = "none", value_parser = ["ebpf", "nftables", "none"])]
    pub proxy_mode: String,
    /// The proxy's metrics address (none when absent).
    #[arg(long)]
    pub proxy_metrics_listen: Option<SocketAddr>,
    /// bpffs directory for the eBPF proxy's pinned maps and links (the
    /// proxy's --bpf-pin-dir; absent: /sys/fs/bpf/keelson). The other proxy
    /// modes remove what is pinned there.
    #[arg(long, value_name = "PATH")]
    pub proxy_bpf_pin_dir: Option<PathBuf>,
    /// cgroup2 directory the eBPF proxy's socket programs attach to; only
    /// processes in it or below it get Service load balancing (the proxy's
    /// --cgroup2-path; absent: the cgroup2 root).
    #[arg(long, value_name = "PATH")]
    pub proxy_cgroup2_path: Option<PathBuf>,
    /// Node interfaces (comma separated) for the eBPF proxy's TC program,
    /// which serves NodePorts and external IPs to clients outside the node
    /// (the proxy's --tc-interfaces; absent: none, and only this node's own
    /// processes reach NodePorts in eBPF mode). With externalTrafficPolicy:
    /// Cluster the node masquerades those connections (nftables table
    /// keelson_ebpf); with Local the client's address is kept.
    #[arg(long, value_delimiter = ',', value_name = "IFACES")]
    pub proxy_tc_interfaces: Vec<String>,
    /// Cluster DNS server for pods with dnsPolicy ClusterFirst (kubelet's
    /// --cluster-dns). Absent: pods get the node's resolv.conf.
    #[arg(long)]
    pub cluster_dns: Option<IpAddr>,
    /// Cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Serve cluster DNS (UDP and TCP) on this address from the Services
    /// the agent watches, forwarding other names to the node's resolvers.
    #[arg(long)]
    pub dns_listen: Option<SocketAddr>,
    /// Runtime dir: pod namespaces and sockets.
    #[arg(long, default_value = "/run/keelson")]
    pub run_dir: PathBuf,
    /// Root of the container log files (<ns>_<name>_<uid>/<container>/<n>.log).
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_log_dir: PathBuf,
    /// Registries reached over plain HTTP (host or host:port; loopback always is).
    #[arg(long, value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
}

/// Resolves `--runtime` to a binary path: a path as it is; runc and crun
/// through the tool registry (a missing one names its Debian package); any
/// other name in `PATH`.
pub fn resolve_runtime(name: &str) -> anyhow::Result<PathBuf> {
    use keelson_host::tools::{self, Tool, Use};
    if name.contains('/') {
        let p = PathBuf::from(name);
        if !p.is_file() {
            bail!("--runtime {name}: no such file");
        }
        return Ok(p);
    }
    if name == "containerd" {
        bail!("--runtime containerd: the containerd backend is not available in this build");
    }
    let tool = match name {
        "runc" => tools::RUNC,
        "crun" => tools::CRUN,
        other => Tool {
            name: other.to_string().leak(),
            package: "(none: install it by hand)",
            used_by: Use::Product,
            why: "--runtime",
        },
    };
    tool.find().with_context(|| format!("--runtime {name}"))
}

async fn client_from(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read kubeconfig {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("load kubeconfig {}", kubeconfig.display()))?;
    kube::Client::try_from(cfg).context("build API client")
}

/// The Service proxy's settings for `--proxy-mode` (None: no proxy).
fn proxy_config(args: &AgentArgs) -> anyhow::Result<Option<keelson_proxy::ProxyConfig>> {
    // ebpf: the proxy probes the kernel and falls back to nftables with a
    // log line when it cannot load its programs.
    let mode = match args.proxy_mode.as_str() {
        "none" => return Ok(None),
        other => other,
    };
    // Parsed like `keelson proxy` flags, so the proxy's defaults apply.
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        proxy: keelson_proxy::ProxyArgs,
    }
    let mut flags = vec![
        "proxy".to_string(),
        "--kubeconfig".into(),
        args.kubeconfig.display().to_string(),
        "--node-name".into(),
        args.node_name.clone(),
        "--proxy-mode".into(),
        mode.into(),
        "--service-cidr".into(),
        args.service_cluster_ip_range.to_string(),
    ];
    if let Some(IpAddr::V4(ip)) = args.node_ip {
        flags.extend(["--node-ip".into(), ip.to_string()]);
    }
    if let Some(m) = args.proxy_metrics_listen {
        flags.extend(["--metrics-listen".into(), m.to_string()]);
    }
    if let Some(dir) = &args.proxy_bpf_pin_dir {
        flags.extend(["--bpf-pin-dir".into(), dir.display().to_string()]);
    }
    if let Some(cg) = &args.proxy_cgroup2_path {
        flags.extend(["--cgroup2-path".into(), cg.display().to_string()]);
    }
    if !args.proxy_tc_interfaces.is_empty() {
        flags.extend(["--tc-interfaces".into(), args.proxy_tc_interfaces.join(",")]);
    }
    let wrap = <Wrap as clap::Parser>::try_parse_from(&flags).context("proxy flags")?;
    let mut config = keelson_proxy::ProxyConfig::from_args(&wrap.proxy);
    if args.proxy_metrics_listen.is_none() {
        config.metrics_listen = None;
    }
    Ok(Some(config))
}

/// Runs the Service proxy under [`supervise`]: restarted with back-off when
/// it stops, its state in `health` (Ready once it has synced, Failed with
/// the error while a sync fails or it is down).
async fn supervised_proxy(
    client: kube::Client,
    config: keelson_proxy::ProxyConfig,
    health: NodeHealth,
) {
    use keelson_proxy::ProxyHealth;
    let h = health.clone();
    supervise(
        health,
        Part::ServiceProxy,
        "ServiceProxyFailed",
        move || {
            let (client, config, health) = (client.clone(), config.clone(), h.clone());
            async move {
                let (tx, mut rx) = tokio::sync::watch::channel(ProxyHealth::Starting);
                let forward = async {
                    while rx.changed().await.is_ok() {
                        let state = match &*rx.borrow_and_update() {
                            ProxyHealth::Starting => State::Starting,
                            ProxyHealth::Synced { .. } => State::Ready,
                            ProxyHealth::SyncFailing { backend, error } => State::Failed {
                                reason: "ServiceProxySyncFailed".into(),
                                message: format!("{backend}: {error}"),
                            },
                        };
                        health.set(Part::ServiceProxy, state);
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    r = keelson_proxy::run_proxy_reporting(client, config, &tx) => r,
                    () = forward => Ok(()),
                }
            }
        },
    )
    .await;
}

/// Runs cluster DNS under [`supervise`]: Ready once it listens.
async fn supervised_dns(client: kube::Client, config: keelson_dns::DnsConfig, health: NodeHealth) {
    let h = health.clone();
    supervise(health, Part::ClusterDns, "ClusterDNSFailed", move || {
        let (client, config, health) = (client.clone(), config.clone(), h.clone());
        async move {
            keelson_dns::run_with(client, config, |_| {
                health.set(Part::ClusterDns, State::Ready)
            })
            .await?;
            Ok(())
        }
    })
    .await;
}

/// A running agent: its health, and what [`Agent::stop`] stops.
pub struct Agent {
    /// The agent's health (what the Node conditions and /healthz show).
    pub health: NodeHealth,
    /// The node's name.
    pub node_name: String,
    manager: crate::pods::Manager,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// Stops the agent's tasks; containers keep running in their shims.
    pub fn stop(self) {
        self.manager.shutdown();
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Runs the agent until SIGTERM or Ctrl-C. Containers keep running in their
/// shims when the agent stops; a restarted agent adopts them.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let agent = start(args).await?;
    crate::systemd::ready();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping (containers keep running)");
    crate::systemd::stopping();
    agent.stop();
    Ok(())
}

/// Starts the agent: registers the Node, then runs its parts in the
/// background (pods, node API, network check, Service proxy, cluster DNS).
pub async fn start(args: AgentArgs) -> anyhow::Result<Agent> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime_bin = resolve_runtime(&args.runtime)?;
    if args.node_name.is_empty() {
        bail!("--node-name must not be empty");
    }
    for d in [&args.root_dir, &args.run_dir, &args.pod_log_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let proxy = proxy_config(&args)?;
    let client = client_from(&args.kubeconfig).await?;
    let node_ip = match args.node_ip {
        Some(ip) => ip,
        None => crate::node::first_non_loopback_ip().context("find the node IP (set --node-ip)")?,
    };
    let runtime_version = crate::node::runtime_version(&runtime_bin).await;
    let runtime_name = runtime_bin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "oci".into());

    let health = NodeHealth::default();
    let events = crate::events::Recorder::new(client.clone(), &args.node_name);
    // The pod network: the operator's config dir, then the agent's own.
    let own_cni = crate::network::ready::OwnConfig::under(&args.root_dir);
    let cni = crate::network::Cni {
        conf_dirs: vec![args.cni_conf_dir.clone(), own_cni.conf_dir.clone()],
        bin_dirs: crate::network::default_bin_dirs(&args.cni_bin_dir),
    };
    // Known before the Node is registered, so that its first status says it.
    let cidr = args.pod_cidr;
    health.set(
        Part::Network,
        crate::network::ready::check(&cni, &own_cni, cidr).await,
    );

    let node_cfg = crate::node::NodeConfig {
        name: args.node_name.clone(),
        node_ip,
        pod_cidr: args.pod_cidr.map(|c| c.to_string()),
        api_port: args.node_api_listen.port(),
        runtime_version: format!("{runtime_name}://{runtime_version}"),
    };
    let mut clock = crate::node::ConditionClock::default();
    crate::node::register(&client, &node_cfg, &health, &mut clock)
        .await
        .with_context(|| format!("register node {}", args.node_name))?;
    let mut tasks = vec![
        tokio::spawn(crate::node::heartbeat(
            client.clone(),
            node_cfg.clone(),
            health.clone(),
            events.clone(),
            clock,
        )),
        tokio::spawn(crate::node::routes::run(
            client.clone(),
            args.node_name.clone(),
        )),
        tokio::spawn(crate::network::ready::monitor(
            health.clone(),
            client.clone(),
            args.node_name.clone(),
            cni.clone(),
            own_cni,
            cidr,
        )),
    ];

    let env = crate::pods::host::Host::new(crate::pods::host::HostConfig {
        root_dir: args.root_dir.clone(),
        run_dir: args.run_dir.clone(),
        pod_log_dir: args.pod_log_dir.clone(),
        runtime_bin: runtime_bin.clone(),
        runtime_name,
        cgroup_root: args.cgroup_root.clone(),
        cni,
        insecure_registries: args.insecure_registry.clone(),
        node_name: args.node_name.clone(),
        node_ip,
        cluster_dns: args
            .cluster_dns
            .map(|server| crate::pods::spec::ClusterDns {
                server,
                domain: args.cluster_domain.clone(),
            }),
    })
    .context("set up the pod host (images, runtime, cgroups)")?;
    let env = Arc::new(env);
    tasks.push(tokio::spawn(crate::imports::watch(
        env.images.clone(),
        args.root_dir.join(crate::imports::IMPORT_DIR),
        events.clone(),
    )));
    let manager =
        crate::pods::Manager::start(client.clone(), env.clone(), events.clone(), health.clone())
            .await
            .context("start pod manager")?;

    tasks.push(
        crate::server::serve(crate::server::ServerConfig {
            listen: args.node_api_listen,
            pki_dir: args.root_dir.join("pki"),
            node_name: args.node_name.clone(),
            node_ip,
            pods: manager.store(),
            host: env.clone(),
            health: health.clone(),
        })
        .await
        .context("start node API")?,
    );

    if let Some(config) = proxy {
        tasks.push(tokio::spawn(supervised_proxy(
            client.clone(),
            config,
            health.clone(),
        )));
    }
    if let Some(listen) = args.dns_listen {
        let upstreams = keelson_dns::upstreams_from_resolv_conf(
            std::path::Path::new("/etc/resolv.conf"),
            &[listen.ip()],
        )
        .unwrap_or_default();
        let config = keelson_dns::DnsConfig {
            listen,
            domain: args.cluster_domain.clone(),
            upstreams,
        };
        tasks.push(tokio::spawn(supervised_dns(
            client.clone(),
            config,
            health.clone(),
        )));
    }

    tracing::info!(node = %args.node_name, %node_ip, api = %args.node_api_listen,
        proxy_mode = %args.proxy_mode, "agent running");
    Ok(Agent {
        health,
        node_name: args.node_name.clone(),
        manager,
        tasks,
    })
}
