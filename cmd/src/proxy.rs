//! `keelson proxy`: flags -> [`ProxyConfig`] -> `keelson_proxy::run_proxy`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use keelson_proxy::{ProxyConfig, ProxyMode};

fn d() -> ProxyConfig {
    ProxyConfig::default()
}

/// Flags of `keelson proxy` (the Service load balancer on its own; `keelson
/// agent` runs the same from its own flags). Defaults are
/// [`ProxyConfig::default`]'s.
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
    /// This node's primary address (source of its own Service traffic;
    /// NodePorts answer on every local address unless --nodeport-addresses
    /// is given).
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
    #[arg(long, default_value_t = d().metrics_listen.expect("a default metrics address"))]
    pub metrics_listen: SocketAddr,
    /// How often to check the dataplane for drift (e.g. 30s, 500ms).
    #[arg(long, default_value_t = Dur(d().sync_period))]
    pub sync_period: Dur,
    /// Minimum time between two syncs (changes arriving meanwhile are batched).
    #[arg(long, default_value_t = Dur(d().min_sync_interval))]
    pub min_sync_interval: Dur,
    /// Program the dataplane of this named network namespace (runs nft and
    /// conntrack under `ip netns exec NAME`, attaches the eBPF TC programs to
    /// its --tc-interfaces) while talking to the API server from the current
    /// one. For tests and for nodes whose host network is a named netns.
    #[arg(long)]
    pub netns: Option<String>,
    /// bpffs directory for the eBPF backend's pinned maps and links (also
    /// removed by the other modes).
    #[arg(long, default_value_os_t = d().ebpf.pin_dir)]
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

/// A duration on the command line: `500ms`, `30s`, `5m`, `1h` or seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Dur, String> {
        parse_duration(s).map(Dur)
    }
}

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
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

impl ProxyArgs {
    /// The typed config these flags describe.
    pub fn config(&self) -> ProxyConfig {
        let base = ProxyConfig::default();
        ProxyConfig {
            node_name: self.node_name.clone(),
            mode: self.proxy_mode,
            nft: keelson_proxy::nft::render::NftConfig {
                cluster_cidr: self.cluster_cidr,
                service_cidr: self.service_cidr,
                nodeport_addresses: self.nodeport_addresses.clone(),
                ..base.nft
            },
            netns: self.netns.clone(),
            metrics_listen: Some(self.metrics_listen),
            sync_period: self.sync_period.0,
            min_sync_interval: self.min_sync_interval.0,
            ebpf: keelson_proxy::ebpf::EbpfConfig {
                pin_dir: self.bpf_pin_dir.clone(),
                cgroup2: self.cgroup2_path.clone(),
                tc_interfaces: self.tc_interfaces.clone(),
            },
            node_ip: self.node_ip,
        }
    }
}

/// Runs the proxy until SIGTERM or Ctrl-C (its rules stay in place for the
/// next start).
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let config = args.config();
    let informers = keelson_informers::Informers::new(crate::client_from(&args.kubeconfig).await?);
    tokio::select! {
        r = keelson_proxy::run_proxy(&informers, config) => r,
        r = crate::until_signal() => {
            tracing::info!("proxy stopping (rules stay in place for the next start)");
            r
        }
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
        for d in ["30s", "50ms", "1500ms"] {
            assert_eq!(d.parse::<Dur>().unwrap().to_string(), d);
        }
    }

    #[test]
    fn the_duration_defaults_are_the_configs() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            p: ProxyArgs,
        }
        let c = Wrap::parse_from(["x", "--kubeconfig", "k", "--node-name", "n"])
            .p
            .config();
        let d = ProxyConfig::default();
        assert_eq!(c.sync_period, d.sync_period);
        assert_eq!(c.min_sync_interval, d.min_sync_interval);
        assert_eq!(c.metrics_listen, d.metrics_listen);
        assert_eq!(c.ebpf.pin_dir, d.ebpf.pin_dir);
    }
}
