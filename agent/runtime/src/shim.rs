//! `keelson shim`: the per-container process that owns a container's stdio
//! and exit status (being built).

/// Flags of the hidden `keelson shim` subcommand.
#[derive(clap::Args, Debug)]
pub struct ShimArgs {
    /// The container's state directory.
    #[arg(long)]
    pub dir: std::path::PathBuf,
}

/// Runs the shim (synchronous: no tokio runtime in this process).
pub fn main(args: ShimArgs) -> anyhow::Result<()> {
    anyhow::bail!("keelson shim {}: not built yet", args.dir.display())
}
