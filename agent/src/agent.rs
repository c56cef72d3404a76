//! `keelson agent`: the node agent's entry point (flags and wiring).

/// Flags of `keelson agent` (see DESIGN.md "Interfaces").
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Kubeconfig for the API server.
    #[arg(long)]
    pub kubeconfig: std::path::PathBuf,
    /// This node's name.
    #[arg(long)]
    pub node_name: String,
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("keelson agent for node {}: not built yet", args.node_name)
}
