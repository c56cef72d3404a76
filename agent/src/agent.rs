//! `keelson agent`: the node agent's entry point (flags and wiring).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

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
    /// The node's pod CIDR (written to spec.podCIDR when set).
    #[arg(long)]
    pub pod_cidr: Option<String>,
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

/// Resolves `--runtime` to a binary path.
pub fn resolve_runtime(name: &str) -> anyhow::Result<PathBuf> {
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
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("--runtime {name}: not found in /usr/local/sbin, /usr/local/bin, /usr/sbin, /usr/bin")
}

async fn client_from(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read kubeconfig {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("load kubeconfig {}", kubeconfig.display()))?;
    kube::Client::try_from(cfg).context("build API client")
}

/// Starts the Service proxy in this process for `--proxy-mode`.
fn start_proxy(
    client: &kube::Client,
    args: &AgentArgs,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
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
    let client = client.clone();
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = keelson_proxy::run_proxy(client, config).await {
            tracing::error!("service proxy: {e:#}");
        }
    })))
}

/// Runs the agent until SIGTERM or Ctrl-C. Containers keep running in their
/// shims when the agent stops; a restarted agent adopts them.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime_bin = resolve_runtime(&args.runtime)?;
    if args.node_name.is_empty() {
        bail!("--node-name must not be empty");
    }
    for d in [&args.root_dir, &args.run_dir, &args.pod_log_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
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

    let node_cfg = crate::node::NodeConfig {
        name: args.node_name.clone(),
        node_ip,
        pod_cidr: args.pod_cidr.clone(),
        api_port: args.node_api_listen.port(),
        runtime_version: format!("{runtime_name}://{runtime_version}"),
    };
    crate::node::register(&client, &node_cfg)
        .await
        .with_context(|| format!("register node {}", args.node_name))?;
    let node_task = tokio::spawn(crate::node::heartbeat(client.clone(), node_cfg.clone()));
    let routes_task = tokio::spawn(crate::node::routes::run(
        client.clone(),
        args.node_name.clone(),
    ));

    let env = crate::pods::host::Host::new(crate::pods::host::HostConfig {
        root_dir: args.root_dir.clone(),
        run_dir: args.run_dir.clone(),
        pod_log_dir: args.pod_log_dir.clone(),
        runtime_bin: runtime_bin.clone(),
        runtime_name,
        cgroup_root: args.cgroup_root.clone(),
        cni: crate::network::Cni::new(
            args.cni_conf_dir.clone(),
            crate::network::default_bin_dirs(&args.cni_bin_dir),
        ),
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
    let manager = crate::pods::Manager::start(client.clone(), env.clone())
        .await
        .context("start pod manager")?;

    let server = crate::server::serve(crate::server::ServerConfig {
        listen: args.node_api_listen,
        pki_dir: args.root_dir.join("pki"),
        node_name: args.node_name.clone(),
        node_ip,
        pods: manager.store(),
        host: env.clone(),
    })
    .await
    .context("start node API")?;

    let proxy_task = start_proxy(&client, &args)?;
    let dns_task = match args.dns_listen {
        Some(listen) => {
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
            let client = client.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = keelson_dns::run(client, config).await {
                    tracing::error!("cluster DNS: {e}");
                }
            }))
        }
        None => None,
    };

    tracing::info!(node = %args.node_name, %node_ip, api = %args.node_api_listen,
        proxy_mode = %args.proxy_mode, "agent running");
    crate::systemd::ready();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping (containers keep running)");
    crate::systemd::stopping();
    if let Some(t) = proxy_task {
        t.abort();
    }
    if let Some(t) = dns_task {
        t.abort();
    }
    manager.shutdown();
    server.abort();
    node_task.abort();
    routes_task.abort();
    Ok(())
}
