//! Test-only entry point for the shim (the `keelson` binary embeds it as the
//! hidden `keelson shim` subcommand); integration tests point
//! `OciRuntime::shim_exe` at this binary.
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Same flags as `keelson shim`.
    Shim(keelson_runtime::shim::ShimArgs),
}

fn main() -> anyhow::Result<()> {
    let Cmd::Shim(args) = Cli::parse().cmd;
    keelson_runtime::shim::main(args)
}
