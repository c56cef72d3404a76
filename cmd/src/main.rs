//! The `keelson` command: the composition root. Each subcommand turns its
//! flags into the typed config of a library entry point (`ServerConfig`,
//! `AgentConfig`, `ProxyConfig`) and calls it; every default comes from
//! those configs' `Default`, and no part parses another part's flags.

#![forbid(unsafe_code)]

mod agent;
mod bench;
mod down;
mod images;
mod install;
mod proxy;
mod server;
mod systemd;
mod token;
mod up;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    Server(server::ServerArgs),
    /// Run the node agent: pods, CNI, Service load balancing, node API.
    Agent(Box<agent::AgentArgs>),
    /// A single-node cluster on this machine: API server, scheduler and
    /// controllers, and a node agent (runc, keelson-cni, Service proxy,
    /// cluster DNS) in one process.
    Up(up::UpArgs),
    /// Remove everything `keelson up` made on this host: pods and their
    /// containers, mounts, namespaces, cgroups and addresses, the Service
    /// proxy's state, the DNS address, and (unless --keep-data) the data
    /// dir. Stop `keelson up` first.
    Down(down::DownArgs),
    /// Put the binaries, systemd units, CNI plugin and conflist, and default
    /// configuration in the standard places (under --root, default /).
    Install(install::InstallArgs),
    /// Run only the Service load balancer (what kube-proxy does).
    Proxy(proxy::ProxyArgs),
    /// The node's image store: `import` archives (`docker save`, OCI),
    /// `ls`, `rm`. Safe while the agent runs.
    Images(images::ImagesArgs),
    /// Benchmarks: `keelson bench services` (Service routing through each
    /// dataplane side by side), `keelson bench compare OLD NEW`.
    Bench(bench::BenchArgs),
    /// Bootstrap tokens for joining nodes: `keelson token create
    /// [--print-join-command]`.
    Token(token::TokenArgs),
    /// Per-container shim (started by the agent, not by hand).
    #[command(hide = true)]
    Shim(keelson_runtime::shim::ShimArgs),
    /// Print the version.
    Version,
}

/// Returns at SIGTERM or Ctrl-C.
pub async fn until_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listen for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    keelson_agent::agent::client_from(kubeconfig).await
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
        Command::Server(args) => tokio_main(server::run(args)),
        Command::Up(args) => tokio_main(up::run(args)),
        Command::Down(args) => tokio_main(down::run(args)),
        Command::Install(args) => install::run(args),
        Command::Agent(args) => tokio_main(agent::run(*args)),
        Command::Proxy(args) => tokio_main(proxy::run(args)),
        Command::Images(args) => tokio_main(images::run(args)),
        Command::Bench(args) => bench::run(args),
        Command::Token(args) => tokio_main(token::run(args)),
        // No tokio runtime here: the shim forks and execs.
        Command::Shim(args) => keelson_runtime::shim::main(args),
    };
    if let Err(e) = result {
        eprintln!("keelson: {e:#}");
        std::process::exit(1);
    }
}
