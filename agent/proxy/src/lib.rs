//! Service load balancing: Services and EndpointSlices -> pure plan ->
//! backend (nftables now; eBPF slots in behind [`backend::ProxyBackend`]).
//! See README.md for the nftables layout and the sync model.

#![forbid(unsafe_code)]

pub mod backend;
pub mod conntrack;
pub mod ebpf;
pub mod guard;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod plan;
mod sync;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use ipnet::Ipv4Net;

pub use keelson_ebpf::DEFAULT_PIN_DIR;
pub use sync::{run_proxy, run_proxy_reporting};

/// Removes what either backend programmed on this host: the nftables table
/// of `nft`, the eBPF programs, links and maps pinned under `pin_dir`, and
/// the Service CIDR guard's route and drop link (what `--proxy-mode none`
/// does; `keelson down` calls it). Idempotent.
pub fn remove_all_state(
    nft: &nft::render::NftConfig,
    pin_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use backend::ProxyBackend as _;
    let cli = nft::NftCli {
        nft: keelson_host::tools::NFT.find()?.display().to_string(),
        ..Default::default()
    };
    nft::NftBackend::new(cli.clone(), nft.clone())
        .cleanup()
        .with_context(|| format!("remove the nftables table {}", nft.table))?;
    ebpf::remove_all(pin_dir, &cli)?;
    guard::remove(None).context("remove the Service CIDR route")?;
    Ok(())
}

/// What the proxy says about itself while it runs ([`run_proxy_reporting`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyHealth {
    /// Starting: finding its programs, opening its backend, listing
    /// Services and EndpointSlices.
    Starting,
    /// The last sync programmed the dataplane.
    Synced {
        /// `nftables` or `ebpf`.
        backend: &'static str,
    },
    /// The last sync failed; the next one is a full sync, a second later.
    SyncFailing {
        /// `nftables` or `ebpf`.
        backend: &'static str,
        /// Why.
        error: String,
    },
}

/// `ip netns exec NAME` with `ip` at `ip`.
pub fn netns_prefix(ip: &str, netns: &str) -> Vec<String> {
    vec![ip.into(), "netns".into(), "exec".into(), netns.into()]
}

/// The programs the proxy runs, found once when it starts.
#[derive(Clone, Debug)]
pub struct ProxyTools {
    /// `nft` (behind `ip netns exec` with `--netns`).
    pub nft: nft::NftCli,
    /// `conntrack` (likewise).
    pub conntrack: conntrack::ConntrackCli,
}

impl ProxyTools {
    /// Finds `nft`, `conntrack` and, with `--netns`, `ip` in `PATH`. Both
    /// modes need `nft` (the nftables table; eBPF mode's masquerade table
    /// and the removal of the other mode's table). A missing one is an
    /// error naming the Debian package.
    pub fn find(config: &ProxyConfig) -> Result<ProxyTools, keelson_host::tools::MissingTool> {
        use keelson_host::tools::{CONNTRACK, IP, NFT};
        let nft = NFT.find()?.display().to_string();
        let conntrack = CONNTRACK.find()?.display().to_string();
        let prefix = match &config.netns {
            Some(n) => netns_prefix(&IP.find()?.display().to_string(), n),
            None => Vec::new(),
        };
        Ok(ProxyTools {
            nft: nft::NftCli {
                prefix: prefix.clone(),
                nft,
            },
            conntrack: conntrack::ConntrackCli { prefix, conntrack },
        })
    }
}

/// Which dataplane programs Services.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    Nftables,
    Ebpf,
    /// No Service load balancing; removes what a backend left behind.
    None,
}

/// Flags of `keelson proxy` (the Service load balancer on its own; `keelson
/// agent` runs the same through [`run_proxy`]).
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Kubeconfig for the API server.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// This node's name (endpoints with this nodeName are local).
    #[arg(long)]
    pub node_name: String,
    /// Dataplane.
    #[arg(long, value_enum, default_value = "nftables")]
    pub proxy_mode: ProxyMode,
    /// This node's primary address (informational; NodePorts answer on
    /// every local address unless --nodeport-addresses is given).
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// Pod CIDR of the cluster: ClusterIP traffic from outside it is masqueraded.
    #[arg(long)]
    pub cluster_cidr: Option<Ipv4Net>,
    /// The cluster's Service CIDR: traffic to an address in it that no
    /// Service rule matches is refused on the node, never routed out
    /// (absent: not guarded).
    #[arg(long)]
    pub service_cidr: Option<Ipv4Net>,
    /// CIDRs whose local addresses serve NodePorts (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<Ipv4Net>,
    /// Address of the Prometheus metrics endpoint (/metrics).
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_listen: SocketAddr,
    /// How often to check the dataplane for drift (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub sync_period: Duration,
    /// Minimum time between two syncs (changes arriving meanwhile are batched).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub min_sync_interval: Duration,
    /// Program the dataplane of this named network namespace (runs nft and
    /// conntrack under `ip netns exec NAME`, attaches the eBPF TC programs to
    /// its --tc-interfaces) while talking to the API server from the current
    /// one. For tests and for nodes whose host network is a named netns.
    #[arg(long)]
    pub netns: Option<String>,
    /// bpffs directory for the eBPF backend's pinned maps and links (also
    /// removed by the other modes).
    #[arg(long, default_value = keelson_ebpf::DEFAULT_PIN_DIR)]
    pub bpf_pin_dir: PathBuf,
    /// cgroup2 directory the eBPF socket programs attach to (default: the
    /// cgroup2 root, /sys/fs/cgroup or /sys/fs/cgroup/unified).
    #[arg(long)]
    pub cgroup2_path: Option<PathBuf>,
    /// Node interfaces for the eBPF NodePort / external TC programs (comma
    /// separated).
    #[arg(long, value_delimiter = ',')]
    pub tc_interfaces: Vec<String>,
}

/// Parses `500ms`, `30s`, `5m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 30s, 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Settings of [`run_proxy`].
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub node_name: String,
    pub mode: ProxyMode,
    pub nft: nft::render::NftConfig,
    /// Put before `nft` and `conntrack` (e.g. `ip netns exec X`); empty normally.
    pub exec_prefix: Vec<String>,
    /// Named network namespace to program (its netlink sockets are opened
    /// there); `None`: the current one. Goes with `exec_prefix`.
    pub netns: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub sync_period: Duration,
    pub min_sync_interval: Duration,
    pub ebpf: ebpf::EbpfConfig,
    /// The node's address: the source of locally sent Service traffic.
    pub node_ip: Option<Ipv4Addr>,
}

impl ProxyConfig {
    pub fn from_args(args: &ProxyArgs) -> ProxyConfig {
        ProxyConfig {
            node_name: args.node_name.clone(),
            mode: args.proxy_mode,
            nft: nft::render::NftConfig {
                cluster_cidr: args.cluster_cidr,
                service_cidr: args.service_cidr,
                nodeport_addresses: args.nodeport_addresses.clone(),
                ..Default::default()
            },
            exec_prefix: match &args.netns {
                Some(n) => netns_prefix(keelson_host::tools::IP.name, n),
                None => Vec::new(),
            },
            netns: args.netns.clone(),
            metrics_listen: Some(args.metrics_listen),
            sync_period: args.sync_period,
            min_sync_interval: args.min_sync_interval,
            ebpf: ebpf::EbpfConfig {
                pin_dir: args.bpf_pin_dir.clone(),
                cgroup2: args.cgroup2_path.clone(),
                tc_interfaces: args.tc_interfaces.clone(),
            },
            node_ip: args.node_ip,
        }
    }
}

/// Runs the proxy until SIGTERM or Ctrl-C.
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let config = ProxyConfig::from_args(&args);
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("read kubeconfig {}", args.kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("load kubeconfig {}", args.kubeconfig.display()))?;
    let client = kube::Client::try_from(cfg).context("create API client")?;
    let proxy = run_proxy(client, config);
    tokio::select! {
        r = proxy => r,
        _ = shutdown_signal() => {
            tracing::info!("proxy stopping (rules stay in place for the next start)");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("7d").is_err());
        assert!(parse_duration("x").is_err());
    }
}
