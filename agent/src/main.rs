//! The `keelson` command.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
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
