//! `keelson bench`: flags to [`keelson_bench::ServicesConfig`], and the
//! programs the bench runs in pods and nodes (hidden subcommands).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use keelson_bench::{Mode, ServicesConfig};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Service routing through each dataplane side by side: connect
    /// latency, connections/s, requests/s, programming latency, the agent's
    /// CPU and memory; a table, results.json, report.md and SVG plots.
    Services(ServicesArgs),
    /// Compare two results.json files; exits 1 on a regression beyond the
    /// threshold.
    Compare(CompareArgs),
    /// Render the table, report.md and plots again from a results.json.
    Report {
        results: PathBuf,
        /// Output directory (default: the results file's).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The backend the bench's pods run (not by hand).
    #[command(hide = true)]
    Backend {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
    },
    /// The load generator the bench runs in a client node (not by hand).
    #[command(hide = true)]
    Client {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServicesArgs {
    /// Start a throwaway cluster on this machine (API server and one agent
    /// per mode plus one for the backends, each in a network namespace).
    #[arg(long)]
    local: bool,
    /// Run against the cluster this kubeconfig reaches.
    #[arg(long, conflicts_with = "local")]
    kubeconfig: Option<PathBuf>,
    /// Service counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    services: Vec<usize>,
    /// Backend pods behind every Service.
    #[arg(long, default_value_t = 2)]
    endpoints: usize,
    /// Modes, comma-separated: direct, ebpf, nftables.
    #[arg(long, value_delimiter = ',', default_value = "direct,ebpf,nftables")]
    modes: Vec<Mode>,
    /// Load time per mode, Service count and round (split among the phases).
    #[arg(long, default_value = "5s", value_parser = keelson_bench::parse_duration)]
    duration: Duration,
    /// Rounds; modes alternate within each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrencies for connections/s and requests/s, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    concurrency: Vec<usize>,
    /// Services created per round and Service count to time programming.
    #[arg(long, default_value_t = 5)]
    programming_samples: usize,
    /// Output directory (results.json, report.md, *.svg).
    #[arg(long, default_value = "keelson-bench")]
    out: PathBuf,
}

#[derive(Args)]
struct CompareArgs {
    old: PathBuf,
    new: PathBuf,
    /// Worse by more than this is a regression.
    #[arg(long, default_value = "5%", value_parser = keelson_bench::compare::parse_threshold)]
    threshold: f64,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Services(a) => {
            if !a.local && a.kubeconfig.is_none() {
                anyhow::bail!(
                    "give --local (a throwaway cluster on this machine) or --kubeconfig FILE"
                );
            }
            let cfg = ServicesConfig {
                local: a.local,
                kubeconfig: a.kubeconfig,
                services: a.services,
                endpoints: a.endpoints,
                modes: a.modes,
                duration: a.duration,
                rounds: a.rounds,
                concurrency: a.concurrency,
                programming_samples: a.programming_samples,
                out: a.out,
                command: std::env::args().collect::<Vec<_>>().join(" "),
                keelson: std::env::current_exe().context("find the keelson binary")?,
            };
            crate::tokio_main(keelson_bench::services(cfg))
        }
        BenchCommand::Compare(a) => {
            if keelson_bench::compare_files(&a.old, &a.new, a.threshold)? {
                Ok(())
            } else {
                eprintln!("keelson: regression beyond {}%", a.threshold);
                std::process::exit(1);
            }
        }
        BenchCommand::Report { results, out } => {
            let out = out.unwrap_or_else(|| {
                results
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default()
            });
            keelson_bench::report_file(&results, &out)
        }
        BenchCommand::Backend { listen } => crate::tokio_main(keelson_bench::load::backend(listen)),
        BenchCommand::Client { netns, cgroup } => {
            keelson_bench::load::client_main(&netns, cgroup.as_ref())
        }
    }
}
