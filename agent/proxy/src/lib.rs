//! Service load balancing: Services and EndpointSlices -> pure plan ->
//! backend (nftables | ebpf).

#![forbid(unsafe_code)]

/// Flags of `keelson proxy` (the Service load balancer on its own; `keelson
/// agent` runs the same with its own flags).
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Kubeconfig for the API server.
    #[arg(long)]
    pub kubeconfig: std::path::PathBuf,
    /// This node's name.
    #[arg(long)]
    pub node_name: String,
}

/// Runs the proxy until SIGTERM or Ctrl-C.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    anyhow::bail!("keelson proxy for node {}: not built yet", args.node_name)
}
