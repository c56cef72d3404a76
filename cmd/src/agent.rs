//! `keelson agent`: flags -> [`AgentConfig`] -> `keelson_agent::agent::start`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use keelson_agent::agent::AgentConfig;
use keelson_proxy::ProxyMode;

use crate::proxy::Dur;

fn d() -> AgentConfig {
    AgentConfig::default()
}

/// The Service CIDR the API server allocates from by default (one default
/// for both sides).
pub fn default_service_cidr() -> ipnet::Ipv4Net {
    match keelson_control_plane::api::registry::ApiConfig::default().service_cidr {
        ipnet::IpNet::V4(n) => n,
        ipnet::IpNet::V6(_) => unreachable!("the default Service CIDR is IPv4"),
    }
}

/// Flags of `keelson agent` (DESIGN.md "Interfaces"); defaults are
/// [`AgentConfig::default`]'s.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Kubeconfig for the API server (or join with --server, --token and
    /// --ca-cert-hash).
    #[arg(long, required_unless_present = "token")]
    pub kubeconfig: Option<PathBuf>,
    /// Join: the API server's URL.
    #[arg(long, requires_all = ["token", "ca_cert_hash"], conflicts_with = "kubeconfig")]
    pub server: Option<String>,
    /// Join: a bootstrap token (`keelson token create`).
    #[arg(long, requires_all = ["server", "ca_cert_hash"], conflicts_with = "kubeconfig")]
    pub token: Option<String>,
    /// Join: `sha256:` and the hash of the cluster CA's public key (what
    /// `keelson token create --print-join-command` prints).
    #[arg(long, requires_all = ["server", "token"])]
    pub ca_cert_hash: Option<String>,
    /// Join: how long the node's client certificates are asked to last
    /// (renewed at 80 %; default: the signer's, a year).
    #[arg(long, requires = "token")]
    pub node_cert_ttl: Option<Dur>,
    /// This node's name.
    #[arg(long)]
    pub node_name: String,
    /// Agent state: images, per-pod state, container state, certificates.
    #[arg(long, default_value_os_t = d().root_dir)]
    pub root_dir: PathBuf,
    /// OCI runtime: runc, crun, youki, or a path to any OCI runtime CLI.
    #[arg(long, default_value_t = d().runtime)]
    pub runtime: String,
    /// CNI configuration dir (the first config file in lexical order is
    /// used). When it holds none, the agent writes keelson-cni's own for
    /// its pod CIDR in <root-dir>/cni/net.d.
    #[arg(long, default_value_os_t = d().cni_conf_dir)]
    pub cni_conf_dir: PathBuf,
    /// CNI plugin dir (/usr/lib/cni and the keelson binary's dir are
    /// searched after it).
    #[arg(long, default_value_os_t = d().cni_bin_dir)]
    pub cni_bin_dir: PathBuf,
    /// Name of the top cgroup for pods (kubelet's kubepods).
    #[arg(long, default_value_t = d().cgroup_root)]
    pub cgroup_root: String,
    /// The node's InternalIP (default: the first non-loopback address).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Address of the node API (TLS) [default: the node IP, port 10250].
    #[arg(long)]
    pub node_api_listen: Option<SocketAddr>,
    /// CA bundle (PEM) whose client certificates the node API accepts
    /// (default: the CA of --kubeconfig, the cluster's).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// The node's pod CIDR (written to spec.podCIDR when set). Where the
    /// CNI config dir holds no configuration, the agent networks pods in it
    /// with keelson-cni (else in the Node's spec.podCIDR).
    #[arg(long)]
    pub pod_cidr: Option<ipnet::Ipv4Net>,
    /// The cluster's Service CIDR: traffic to an address in it that no
    /// Service rule load-balances is refused on the node, never routed out.
    #[arg(long, default_value_t = default_service_cidr())]
    pub service_cluster_ip_range: ipnet::Ipv4Net,
    /// The cluster's pod CIDR: ClusterIP traffic from outside it is
    /// masqueraded (nftables mode).
    #[arg(long)]
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// CIDRs whose local addresses serve NodePorts (comma separated;
    /// default: every local address but 127/8).
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<ipnet::Ipv4Net>,
    /// Service load balancing: ebpf (falls back to nftables with a log line
    /// where the kernel lacks what it needs), nftables or none.
    #[arg(long, value_enum, default_value = "none")]
    pub proxy_mode: ProxyMode,
    /// The proxy's metrics address (none when absent).
    #[arg(long)]
    pub proxy_metrics_listen: Option<SocketAddr>,
    /// bpffs directory for the eBPF proxy's pinned maps and links. The other
    /// proxy modes remove what is pinned there.
    #[arg(long, value_name = "PATH", default_value_os_t = d().proxy.ebpf.pin_dir)]
    pub proxy_bpf_pin_dir: PathBuf,
    /// cgroup2 directory the eBPF proxy's socket programs attach to; only
    /// processes in it or below it get Service load balancing (absent: the
    /// cgroup2 root).
    #[arg(long, value_name = "PATH")]
    pub proxy_cgroup2_path: Option<PathBuf>,
    /// Node interfaces (comma separated) for the eBPF proxy's TC program,
    /// which serves NodePorts and external IPs to clients outside the node
    /// (absent: none, and only this node's own processes reach NodePorts in
    /// eBPF mode). With externalTrafficPolicy: Cluster the node masquerades
    /// those connections (nftables table keelson_ebpf); with Local the
    /// client's address is kept.
    #[arg(long, value_delimiter = ',', value_name = "IFACES")]
    pub proxy_tc_interfaces: Vec<String>,
    /// Cluster DNS server for pods with dnsPolicy ClusterFirst (kubelet's
    /// --cluster-dns). Absent: pods get the node's resolv.conf.
    #[arg(long)]
    pub cluster_dns: Option<IpAddr>,
    /// Cluster domain.
    #[arg(long, default_value_t = d().cluster_domain)]
    pub cluster_domain: String,
    /// Serve cluster DNS (UDP and TCP) on this address from the Services
    /// the agent watches, forwarding other names to the node's resolvers.
    #[arg(long)]
    pub dns_listen: Option<SocketAddr>,
    /// Runtime dir: pod namespaces and sockets.
    #[arg(long, default_value_os_t = d().run_dir)]
    pub run_dir: PathBuf,
    /// Root of the container log files (<ns>_<name>_<uid>/<container>/<n>.log).
    #[arg(long, default_value_os_t = d().pod_log_dir)]
    pub pod_log_dir: PathBuf,
    /// Registries reached over plain HTTP (host or host:port; loopback always is).
    #[arg(long, value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    /// Percent of the image filesystem (the one holding <root-dir>/images)
    /// in use at or above which unused images are removed, least recently
    /// used first; 100 disables image garbage collection.
    #[arg(long, value_name = "PERCENT", default_value_t = d().image_gc.high_threshold_percent,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_high_threshold: u8,
    /// Percent image garbage collection brings usage down to (below the
    /// high threshold).
    #[arg(long, value_name = "PERCENT", default_value_t = d().image_gc.low_threshold_percent,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_threshold: u8,
    /// Images the node has had for less than this are never garbage
    /// collected (500ms, 30s, 2m, 1h).
    #[arg(long, value_name = "DURATION", default_value_t = Dur(d().image_gc.minimum_age))]
    pub image_minimum_gc_age: Dur,
    /// How often image garbage collection looks at disk usage (the
    /// kubelet's is fixed at 5m).
    #[arg(long, value_name = "DURATION", default_value_t = Dur(d().image_gc_period), hide = true)]
    pub image_gc_period: Dur,
}

impl AgentArgs {
    /// The typed config these flags describe.
    pub fn config(self) -> AgentConfig {
        let base = AgentConfig::default();
        let mut proxy = base.proxy.clone();
        proxy.mode = self.proxy_mode;
        proxy.metrics_listen = self.proxy_metrics_listen;
        proxy.nft.service_cidr = Some(self.service_cluster_ip_range);
        proxy.nft.cluster_cidr = self.cluster_cidr;
        proxy.nft.nodeport_addresses = self.nodeport_addresses;
        proxy.ebpf.pin_dir = self.proxy_bpf_pin_dir;
        proxy.ebpf.cgroup2 = self.proxy_cgroup2_path;
        proxy.ebpf.tc_interfaces = self.proxy_tc_interfaces;
        if let Some(IpAddr::V4(ip)) = self.node_ip {
            proxy.node_ip = Some(ip);
        }
        let join = match (self.server, self.token, self.ca_cert_hash) {
            (Some(server), Some(token), Some(ca_cert_hash)) => {
                Some(keelson_agent::join::JoinConfig {
                    server,
                    token,
                    ca_cert_hash,
                    cert_ttl: self.node_cert_ttl.map(|d| d.0),
                })
            }
            _ => None,
        };
        AgentConfig {
            kubeconfig: self.kubeconfig.unwrap_or_default(),
            join,
            node_name: self.node_name,
            root_dir: self.root_dir,
            runtime: self.runtime,
            cni_conf_dir: self.cni_conf_dir,
            cni_bin_dir: self.cni_bin_dir,
            cgroup_root: self.cgroup_root,
            node_ip: self.node_ip,
            node_api_listen: self.node_api_listen,
            client_ca_file: self.client_ca_file,
            pod_cidr: self.pod_cidr,
            proxy,
            cluster_dns: self.cluster_dns,
            cluster_domain: self.cluster_domain,
            dns_listen: self.dns_listen,
            run_dir: self.run_dir,
            pod_log_dir: self.pod_log_dir,
            insecure_registries: self.insecure_registry,
            image_gc: keelson_images::gc::GcPolicy {
                high_threshold_percent: self.image_gc_high_threshold,
                low_threshold_percent: self.image_gc_low_threshold,
                minimum_age: self.image_minimum_gc_age.0,
            },
            image_gc_period: self.image_gc_period.0,
        }
    }
}

/// Runs the agent until SIGTERM or Ctrl-C. Containers keep running in their
/// shims when it stops; a restarted agent adopts them.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let agent = keelson_agent::agent::start(args.config()).await?;
    crate::systemd::ready();
    crate::until_signal().await?;
    tracing::info!("stopping (containers keep running)");
    crate::systemd::stopping();
    agent.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        a: AgentArgs,
    }

    #[test]
    fn defaults_come_from_the_config_and_proxy_flags_reach_the_proxy() {
        let c = Wrap::parse_from(["x", "--kubeconfig", "k", "--node-name", "n"])
            .a
            .config();
        let d = AgentConfig::default();
        assert_eq!(c.root_dir, d.root_dir);
        assert_eq!(c.node_api_listen, d.node_api_listen);
        assert_eq!(c.cgroup_root, d.cgroup_root);
        assert_eq!(c.proxy.mode, ProxyMode::None);
        assert_eq!(c.proxy.ebpf.pin_dir, d.proxy.ebpf.pin_dir);
        assert_eq!(c.proxy.nft.service_cidr, Some(default_service_cidr()));
        assert_eq!(c.image_gc, d.image_gc);
        assert_eq!(c.image_gc_period, d.image_gc_period);
        let c = Wrap::parse_from([
            "x",
            "--kubeconfig",
            "k",
            "--node-name",
            "n",
            "--proxy-mode",
            "nftables",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--nodeport-addresses",
            "192.0.2.0/24,198.51.100.0/24",
        ])
        .a
        .config();
        assert_eq!(c.proxy.mode, ProxyMode::Nftables);
        assert_eq!(
            c.proxy.nft.cluster_cidr,
            Some("10.244.0.0/16".parse().unwrap())
        );
        assert_eq!(c.proxy.nft.nodeport_addresses.len(), 2);
        let c = Wrap::parse_from([
            "x",
            "--kubeconfig",
            "k",
            "--node-name",
            "n",
            "--image-gc-high-threshold",
            "90",
            "--image-gc-low-threshold",
            "70",
            "--image-minimum-gc-age",
            "30s",
        ])
        .a
        .config();
        assert_eq!(c.image_gc.high_threshold_percent, 90);
        assert_eq!(c.image_gc.low_threshold_percent, 70);
        assert_eq!(c.image_gc.minimum_age, std::time::Duration::from_secs(30));
        assert!(
            Wrap::try_parse_from([
                "x",
                "--kubeconfig",
                "k",
                "--node-name",
                "n",
                "--image-gc-high-threshold",
                "101"
            ])
            .is_err()
        );
    }
}
