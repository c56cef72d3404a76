//! The `keelson` command.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use keelson::health::Part;
use keelson_control_plane::api::registry::ApiConfig;
use keelson_control_plane::controllers::ControllerConfig;
use keelson_control_plane::server::{self, ServerConfig};

#[derive(Parser)]
#[command(
    name = "keelson",
    version,
    about = "Keelson: a Kubernetes node agent and its control-plane companion"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Kubernetes API over TLS (embedded store, or etcd).
    Server(ServerArgs),
    /// Run the node agent: pods, CNI, Service load balancing, node API.
    Agent(Box<keelson::agent::AgentArgs>),
    /// A single-node cluster on this machine: API server, scheduler and
    /// controllers, and a node agent (runc, keelson-cni, Service proxy,
    /// cluster DNS) in one process.
    Up(UpArgs),
    /// Remove everything `keelson up` made on this host: pods and their
    /// containers, mounts, namespaces, cgroups and addresses, the Service
    /// proxy's nftables table, the DNS address, and (unless --keep-data) the
    /// data dir. Stop `keelson up` first.
    Down(DownArgs),
    /// Put the binaries, systemd units, CNI plugin and conflist, and default
    /// configuration in the standard places (under --root, default /).
    Install(InstallArgs),
    /// Run only the Service load balancer (what kube-proxy does).
    Proxy(keelson_proxy::ProxyArgs),
    /// Per-container shim (started by the agent, not by hand).
    #[command(hide = true)]
    Shim(keelson_runtime::shim::ShimArgs),
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Directory for certificates, credentials and the embedded store.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// etcd endpoints (comma-separated); absent: the embedded store in --data-dir.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// CIDR that Service ClusterIPs come from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// Range (A-B) that Service NodePorts come from.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Extra DNS names or IPs for the serving certificate (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Do not run the scheduler and controllers.
    #[arg(long)]
    disable_controllers: bool,
    /// Seconds without a Lease renewal before a node is marked Ready=Unknown.
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// Toleration seconds for the not-ready/unreachable NoExecute taints when a pod sets none.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: i64,
    /// Identity for leader election (default: hostname and PID).
    #[arg(long)]
    identity: Option<String>,
}

#[derive(clap::Args)]
struct UpArgs {
    /// Everything the cluster keeps: server/ (store, certificates,
    /// admin.kubeconfig), agent/ (images, pod state), cni/.
    #[arg(long, default_value = "/var/lib/keelson")]
    data_dir: PathBuf,
    /// API server address.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Node name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// This node's pod CIDR.
    #[arg(long, default_value = "10.244.0.0/24")]
    pod_cidr: ipnet::Ipv4Net,
    /// Service load balancing: ebpf (falls back to nftables), nftables, none.
    #[arg(long, default_value = "ebpf", value_parser = ["ebpf", "nftables", "none"])]
    proxy_mode: String,
    /// eBPF mode: interfaces (comma separated) whose outside clients reach
    /// NodePorts (the agent's --proxy-tc-interfaces). Absent: NodePorts
    /// answer this machine's own clients only in eBPF mode.
    #[arg(long, value_delimiter = ',', value_name = "IFACES")]
    proxy_tc_interfaces: Vec<String>,
    /// Node-local address the cluster DNS answers on (added to `lo`).
    #[arg(long, default_value = "169.254.20.10")]
    dns_address: std::net::Ipv4Addr,
}

/// Pod cgroups of `keelson up` live under this name in every hierarchy (not
/// kubepods: a kubelet on the same host keeps its own).
const UP_CGROUP_ROOT: &str = "keelson";
/// Namespaces and container state of `keelson up`.
const UP_RUN_DIR: &str = "/run/keelson";

#[derive(clap::Args)]
struct DownArgs {
    /// The data dir `keelson up` used.
    #[arg(long, default_value = "/var/lib/keelson")]
    data_dir: PathBuf,
    /// The cluster DNS address `keelson up` added to `lo`.
    #[arg(long, default_value = "169.254.20.10")]
    dns_address: std::net::Ipv4Addr,
    /// Keep the data dir (cluster state, images, certificates).
    #[arg(long)]
    keep_data: bool,
}

#[derive(clap::Args)]
struct InstallArgs {
    /// Root to install under (a staging dir for packaging; / on a node).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Pod CIDR written into the CNI conflist (the node's podCIDR).
    #[arg(long, default_value = "10.244.0.0/24")]
    pod_cidr: ipnet::Ipv4Net,
}

const SERVER_UNIT: &str = include_str!("../../systemd/keelson-server.service");
const AGENT_UNIT: &str = include_str!("../../systemd/keelson-agent.service");

/// What `keelson install` writes: (path under the root, mode, contents).
/// Configuration files already present are kept.
fn install_files(pod_cidr: ipnet::Ipv4Net) -> Vec<(&'static str, u32, String, bool)> {
    vec![
        (
            "etc/systemd/system/keelson-server.service",
            0o644,
            SERVER_UNIT.into(),
            false,
        ),
        (
            "etc/systemd/system/keelson-agent.service",
            0o644,
            AGENT_UNIT.into(),
            false,
        ),
        (
            "etc/cni/net.d/10-keelson.conflist",
            0o644,
            keelson::network::conf::keelson_conflist(pod_cidr, None),
            true,
        ),
        (
            "etc/keelson/agent.env",
            0o600,
            format!(
                "# keelson agent configuration (read by keelson-agent.service)\n\
                 KEELSON_KUBECONFIG=/etc/keelson/agent.kubeconfig\n\
                 KEELSON_AGENT_FLAGS=--proxy-mode ebpf --pod-cidr {pod_cidr} --cluster-dns 169.254.20.10 --dns-listen 169.254.20.10:53\n"
            ),
            true,
        ),
        (
            "etc/keelson/server.env",
            0o600,
            "# keelson server configuration (read by keelson-server.service)\n\
             KEELSON_SERVER_FLAGS=--listen 0.0.0.0:6443\n"
                .into(),
            true,
        ),
    ]
}

fn install(args: InstallArgs) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().context("find the keelson binary")?;
    let cni = exe.with_file_name("keelson-cni");
    if !cni.is_file() {
        bail!("keelson-cni not found next to {}", exe.display());
    }
    let put = |rel: &str, mode: u32, write: &dyn Fn(&std::path::Path) -> std::io::Result<()>| {
        let path = args.root.join(rel);
        let dir = path.parent().context("install path has a parent")?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        // Write beside, then rename: a running binary is replaced, not overwritten.
        let tmp = path.with_extension("keelson-new");
        write(&tmp).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("install {}", path.display()))?;
        println!("installed {}", path.display());
        anyhow::Ok(())
    };
    for (rel, src) in [
        ("usr/local/bin/keelson", &exe),
        ("usr/local/bin/keelson-cni", &cni),
        ("opt/cni/bin/keelson-cni", &cni),
    ] {
        put(rel, 0o755, &|p| std::fs::copy(src, p).map(|_| ()))?;
    }
    for (rel, mode, text, keep) in install_files(args.pod_cidr) {
        if keep && args.root.join(rel).exists() {
            println!("kept {}", args.root.join(rel).display());
            continue;
        }
        put(rel, mode, &|p| std::fs::write(p, &text))?;
    }
    Ok(())
}

async fn run_down(args: DownArgs) -> anyhow::Result<()> {
    use keelson::pods::host::{Host, HostConfig};
    let exe = std::env::current_exe().context("find the keelson binary")?;
    let bin_dir = exe
        .parent()
        .context("the keelson binary's directory")?
        .to_path_buf();
    let run_dir = PathBuf::from(UP_RUN_DIR);
    let host = Host::new(HostConfig {
        root_dir: args.data_dir.join("agent"),
        run_dir: run_dir.clone(),
        pod_log_dir: PathBuf::from("/var/log/pods"),
        runtime_bin: keelson::agent::resolve_runtime("runc")?,
        runtime_name: "runc".into(),
        cgroup_root: UP_CGROUP_ROOT.into(),
        cni: keelson::network::Cni::new(
            args.data_dir.join("cni/net.d"),
            keelson::network::default_bin_dirs(&bin_dir),
        ),
        insecure_registries: Vec::new(),
        node_name: String::new(),
        node_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        cluster_dns: None,
    })
    .context("open the agent's state")?;
    let pods = host
        .teardown_all(std::time::Duration::from_secs(2))
        .await
        .map_err(|e| anyhow::anyhow!("tear down pods: {e}"))?;
    println!("removed {pods} pods (containers, mounts, namespaces, cgroups, pod addresses)");
    // The Service proxy's nftables table and eBPF pins (absent is fine).
    keelson_proxy::remove_all_state(
        &keelson_proxy::nft::render::NftConfig::default(),
        std::path::Path::new(keelson_proxy::DEFAULT_PIN_DIR),
    )
    .context("remove the Service proxy's state")?;
    println!("removed the Service proxy's nftables table and eBPF pins");
    let nl = keelson_host::netlink::Socket::new().context("open a netlink socket")?;
    if nl
        .delete_addr(nl.link_index("lo")?, "lo", args.dns_address, 32)
        .context("remove the cluster DNS address")?
    {
        println!("removed {}/32 from lo", args.dns_address);
    }
    for dir in [run_dir.clone()] {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("remove {}: {e}", dir.display()),
        }
    }
    if !args.keep_data {
        match std::fs::remove_dir_all(&args.data_dir) {
            Ok(()) => println!("removed {}", args.data_dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("remove {}: {e}", args.data_dir.display()),
        }
    }
    Ok(())
}

async fn run_up(args: UpArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find the keelson binary")?;
    let bin_dir = exe
        .parent()
        .context("the keelson binary's directory")?
        .to_path_buf();
    if !bin_dir.join("keelson-cni").is_file() {
        bail!(
            "keelson-cni not found next to {} (build it: cargo build --release -p keelson-cni)",
            exe.display()
        );
    }
    let node_name = match args.node_name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("read the host name (or pass --node-name)")?
            .trim()
            .to_lowercase(),
    };
    let server_dir = args.data_dir.join("server");
    let cni_conf_dir = args.data_dir.join("cni/net.d");
    std::fs::create_dir_all(&cni_conf_dir)
        .with_context(|| format!("create {}", cni_conf_dir.display()))?;
    let conflist = cni_conf_dir.join("10-keelson.conflist");
    std::fs::write(
        &conflist,
        keelson::network::conf::keelson_conflist(
            args.pod_cidr,
            Some(&args.data_dir.join("cni/ipam")),
        ),
    )
    .with_context(|| format!("write {}", conflist.display()))?;
    // The cluster DNS listens on a node-local address that pods reach
    // through their gateway (the host).
    let dns = args.dns_address.to_string();
    keelson_host::netlink::Socket::new()
        .and_then(|nl| nl.add_addr(nl.link_index("lo")?, "lo", args.dns_address, 32))
        .with_context(|| format!("add the cluster DNS address {dns} to lo"))?;

    let service_cidr: ipnet::IpNet = "10.96.0.0/12".parse().expect("valid CIDR");
    let proxy_mode = args.proxy_mode.clone();
    let config = ServerConfig {
        data_dir: server_dir.clone(),
        listen: args.listen,
        etcd_servers: Vec::new(),
        api: ApiConfig {
            service_cidr,
            node_port_range: (30000, 32767),
        },
        extra_sans: Vec::new(),
        controllers: true,
        controller_config: ControllerConfig {
            node_monitor_grace_period: std::time::Duration::from_secs(40),
            default_toleration_seconds: 300,
            identity: format!("{node_name}-{}", std::process::id()),
        },
    };
    let handle = server::start(config).await.context("start API server")?;
    let kubeconfig = handle.kubeconfig.clone();
    println!("kubeconfig: {}", kubeconfig.display());
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get nodes,pods -A -o wide");

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        agent: keelson::agent::AgentArgs,
    }
    let mut flags: Vec<String> = vec![
        "agent".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--node-name".into(),
        node_name,
        "--root-dir".into(),
        args.data_dir.join("agent").display().to_string(),
        "--cni-conf-dir".into(),
        cni_conf_dir.display().to_string(),
        "--cni-bin-dir".into(),
        bin_dir.display().to_string(),
        "--cgroup-root".into(),
        UP_CGROUP_ROOT.into(),
        "--run-dir".into(),
        UP_RUN_DIR.into(),
        "--pod-cidr".into(),
        args.pod_cidr.to_string(),
        "--proxy-mode".into(),
        proxy_mode.clone(),
        "--cluster-dns".into(),
        dns.clone(),
        "--dns-listen".into(),
        format!("{dns}:53"),
    ];
    if !args.proxy_tc_interfaces.is_empty() {
        flags.extend([
            "--proxy-tc-interfaces".into(),
            args.proxy_tc_interfaces.join(","),
        ]);
    }
    let agent_args = Wrap::try_parse_from(&flags).context("agent flags")?.agent;
    let agent = match keelson::agent::start(agent_args).await {
        Ok(a) => a,
        Err(e) => {
            handle.shutdown().await;
            return Err(e);
        }
    };
    let mut expected = vec![Part::Network, Part::ClusterDns];
    if proxy_mode != "none" {
        expected.push(Part::ServiceProxy);
    }
    let status = tokio::spawn(report_up_status(
        agent.health.clone(),
        expected,
        format!(
            "node {} (proxy {proxy_mode}, cluster DNS {dns}); export KUBECONFIG={}",
            agent.node_name,
            kubeconfig.display()
        ),
    ));
    keelson::systemd::ready();
    // Returns on SIGTERM or Ctrl-C; pods keep running.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping (containers keep running)");
    keelson::systemd::stopping();
    status.abort();
    agent.stop();
    handle.shutdown().await;
    Ok(())
}

/// How long `keelson up` waits before it says a part is not ready.
const UP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// Prints one line when the cluster is ready, and one naming each part
/// that is not (a failure at once; a part still starting after
/// [`UP_PATIENCE`]); again whenever that changes.
async fn report_up_status(health: keelson::health::NodeHealth, expected: Vec<Part>, what: String) {
    let mut rx = health.subscribe();
    let patience = tokio::time::sleep(UP_PATIENCE);
    tokio::pin!(patience);
    let mut impatient = false;
    let mut last: Option<Result<(), Vec<String>>> = None;
    loop {
        let now = keelson::health::summary(&rx.borrow_and_update(), &expected);
        let say = match &now {
            Ok(()) => true,
            Err(lines) => impatient || lines.iter().any(|l| !l.ends_with(": starting")),
        };
        if say && last.as_ref() != Some(&now) {
            match &now {
                Ok(()) => println!("keelson up: cluster ready: {what}"),
                Err(lines) => println!("keelson up: not ready: {}", lines.join("; ")),
            }
            last = Some(now);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            () = &mut patience, if !impatient => impatient = true,
        }
    }
}

fn parse_port_range(s: &str) -> anyhow::Result<(u16, u16)> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("--service-node-port-range {s:?}: expected A-B"))?;
    let a: u16 = a
        .trim()
        .parse()
        .with_context(|| format!("--service-node-port-range {s:?}: bad start"))?;
    let b: u16 = b
        .trim()
        .parse()
        .with_context(|| format!("--service-node-port-range {s:?}: bad end"))?;
    if a == 0 || a > b {
        bail!("--service-node-port-range {s:?}: start must be between 1 and the end");
    }
    Ok((a, b))
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let service_cidr: ipnet::IpNet = args.service_cluster_ip_range.parse().with_context(|| {
        format!(
            "--service-cluster-ip-range {:?}: not a CIDR",
            args.service_cluster_ip_range
        )
    })?;
    if service_cidr.max_prefix_len() - service_cidr.prefix_len() < 2 {
        bail!("--service-cluster-ip-range {service_cidr}: too small");
    }
    let config = ServerConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        etcd_servers: args.etcd_servers,
        api: ApiConfig {
            service_cidr,
            node_port_range: parse_port_range(&args.service_node_port_range)?,
        },
        extra_sans: args.tls_san,
        controllers: !args.disable_controllers,
        controller_config: ControllerConfig {
            node_monitor_grace_period: std::time::Duration::from_secs(
                args.node_monitor_grace_period,
            ),
            default_toleration_seconds: args.default_toleration_seconds,
            identity: args.identity.unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            }),
        },
    };
    let handle = server::start(config).await.context("start API server")?;
    println!("kubeconfig: {}", handle.kubeconfig.display());
    keelson::systemd::ready();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    keelson::systemd::stopping();
    handle.shutdown().await;
    Ok(())
}

fn tokio_main(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?
        .block_on(f)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEELSON_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("keelson {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Server(args) => tokio_main(run_server(args)),
        Command::Up(args) => tokio_main(run_up(args)),
        Command::Down(args) => tokio_main(run_down(args)),
        Command::Install(args) => install(args),
        Command::Agent(args) => tokio_main(keelson::agent::run(*args)),
        Command::Proxy(args) => tokio_main(keelson_proxy::run(args)),
        // No tokio runtime here: the shim forks and execs.
        Command::Shim(args) => keelson_runtime::shim::main(args),
    };
    if let Err(e) = result {
        eprintln!("keelson: {e:#}");
        std::process::exit(1);
    }
}
