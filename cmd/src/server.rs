//! `keelson server`: flags -> [`ServerConfig`] -> `keelson_control_plane::server::start`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use keelson_control_plane::controllers::nodeipam::{Allocation, DEFAULT_MASK_SIZE};
use keelson_control_plane::server::limits::RequestLimits;
use keelson_control_plane::server::{self, ServerConfig};

use crate::proxy::Dur;

fn d() -> ServerConfig {
    ServerConfig::default()
}

/// A NodePort range on the command line: `A-B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<PortRange, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected A-B"))?;
        let a: u16 = a.trim().parse().map_err(|_| format!("{s:?}: bad start"))?;
        let b: u16 = b.trim().parse().map_err(|_| format!("{s:?}: bad end"))?;
        if a == 0 || a > b {
            return Err(format!("{s:?}: start must be between 1 and the end"));
        }
        Ok(PortRange(a, b))
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// Flags of `keelson server`; defaults are [`ServerConfig::default`]'s.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// Directory for certificates, credentials and the embedded store.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value_t = d().listen)]
    pub listen: SocketAddr,
    /// etcd endpoints (comma-separated); absent: the embedded store in --data-dir.
    #[arg(long, value_delimiter = ',')]
    pub etcd_servers: Vec<String>,
    /// CA bundle that etcd's serving certificate is checked against
    /// (https:// endpoints).
    #[arg(long, requires = "etcd_servers")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate presented to etcd.
    #[arg(long, requires_all = ["etcd_cafile", "etcd_keyfile"])]
    pub etcd_certfile: Option<PathBuf>,
    /// Key of --etcd-certfile.
    #[arg(long, requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,
    /// CIDR that Service ClusterIPs come from.
    #[arg(long, default_value_t = d().api.service_cidr)]
    pub service_cluster_ip_range: ipnet::IpNet,
    /// Range (A-B) that Service NodePorts come from.
    #[arg(long, default_value_t = PortRange(d().api.node_port_range.0, d().api.node_port_range.1))]
    pub service_node_port_range: PortRange,
    /// Extra DNS names or IPs for the serving certificate (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Do not run the scheduler and controllers.
    #[arg(long)]
    pub disable_controllers: bool,
    /// Seconds without a Lease renewal before a node is marked Ready=Unknown.
    #[arg(long, default_value_t = d().controller_config.node_monitor_grace_period.as_secs())]
    pub node_monitor_grace_period: u64,
    /// Toleration seconds for the not-ready/unreachable NoExecute taints when a pod sets none.
    #[arg(long, default_value_t = d().controller_config.default_toleration_seconds)]
    pub default_toleration_seconds: i64,
    /// Allocate each Node a pod CIDR (spec.podCIDR) from this range, as
    /// kube-controller-manager's --allocate-node-cidrs --cluster-cidr
    /// (default: none, agents bring their own with --pod-cidr).
    #[arg(long)]
    pub cluster_cidr: Option<ipnet::Ipv4Net>,
    /// The prefix length of each Node's pod CIDR (with --cluster-cidr).
    #[arg(long, default_value_t = DEFAULT_MASK_SIZE)]
    pub node_cidr_mask_size: u8,
    /// Identity for leader election (default: hostname and PID).
    #[arg(long)]
    pub identity: Option<String>,
    /// Admission plugins to turn off (comma-separated), as kube-apiserver's
    /// flag: `ServiceAccount` (no default account, no token volume).
    #[arg(long, value_delimiter = ',')]
    pub disable_admission_plugins: Vec<String>,
    /// The address pods reach this server at (the `kubernetes` Service's
    /// endpoint); default: --listen's, unless loopback or unspecified.
    #[arg(long)]
    pub advertise_address: Option<std::net::IpAddr>,
    /// Append an audit event (audit.k8s.io/v1, one JSON line) per request
    /// to this file.
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
    /// The audit policy (audit.k8s.io/v1 Policy); default: every request
    /// at Metadata.
    #[arg(long, requires = "audit_log_path")]
    pub audit_policy_file: Option<PathBuf>,
    /// The issuer (`iss`) of service account tokens, also their default audience.
    #[arg(long, default_value_t = d().service_account_issuer)]
    pub service_account_issuer: String,
    /// Longest a request that is not long-running (watch, exec, attach,
    /// port-forward, proxy, logs) may take before it is answered 504; a
    /// client's `?timeout=` may shorten it. As kube-apiserver's (`1m0s`)
    /// or `500ms`, `30s`, `5m`, seconds.
    #[arg(long, default_value_t = Dur(d().requests.request_timeout), value_parser = request_timeout)]
    pub request_timeout: Dur,
    /// Read-only requests (get, list) served at once; more are answered
    /// 429 (0: no limit). Long-running requests are not counted.
    #[arg(long, default_value_t = d().requests.max_requests_inflight)]
    pub max_requests_inflight: usize,
    /// Other requests served at once; more are answered 429 (0: no limit).
    #[arg(long, default_value_t = d().requests.max_mutating_requests_inflight)]
    pub max_mutating_requests_inflight: usize,
    /// Watches one user may have open; more are answered 429 (0: no limit).
    #[arg(long, default_value_t = d().requests.max_watches_per_user)]
    pub max_watches_per_user: usize,
    /// Connections one client IP address may have open; more are closed
    /// as soon as they are accepted (0: no limit). Behind a load balancer
    /// that does not keep client addresses, every client shares one.
    #[arg(long, default_value_t = d().serving.max_connections_per_address)]
    pub max_connections_per_address: usize,
}

/// `--request-timeout`: a Go duration, as kube-apiserver takes it, or
/// one of ours.
fn request_timeout(s: &str) -> Result<Dur, String> {
    keelson_control_plane::server::limits::parse_go_duration(s)
        .or_else(|_| crate::proxy::parse_duration(s))
        .map(Dur)
}

/// This machine's name and our PID: a leader-election identity.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

impl ServerArgs {
    /// The typed config these flags describe.
    pub fn config(self) -> anyhow::Result<ServerConfig> {
        let cidr = self.service_cluster_ip_range;
        if self.request_timeout.0.is_zero() {
            bail!("--request-timeout must be more than zero");
        }
        if cidr.max_prefix_len() - cidr.prefix_len() < 2 {
            bail!("--service-cluster-ip-range {cidr}: too small");
        }
        use keelson_control_plane::api::registry::ADMISSION_PLUGINS;
        if let Some(p) = self
            .disable_admission_plugins
            .iter()
            .find(|p| !ADMISSION_PLUGINS.contains(&p.as_str()))
        {
            bail!(
                "--disable-admission-plugins: unknown plugin {p:?} (known: {ADMISSION_PLUGINS:?})"
            );
        }
        Ok(ServerConfig {
            data_dir: self.data_dir,
            listen: self.listen,
            etcd_servers: self.etcd_servers,
            audit_log_path: self.audit_log_path,
            audit_policy_file: self.audit_policy_file,
            etcd_tls: self
                .etcd_cafile
                .map(|ca_file| keelson_control_plane::server::EtcdTlsFiles {
                    ca_file,
                    cert_file: self.etcd_certfile,
                    key_file: self.etcd_keyfile,
                }),
            api: keelson_control_plane::api::registry::ApiConfig {
                service_cidr: cidr,
                node_port_range: (
                    self.service_node_port_range.0,
                    self.service_node_port_range.1,
                ),
                disabled_admission: self.disable_admission_plugins,
            },
            extra_sans: self.tls_san,
            controllers: !self.disable_controllers,
            controller_config: keelson_control_plane::controllers::ControllerConfig {
                node_monitor_grace_period: std::time::Duration::from_secs(
                    self.node_monitor_grace_period,
                ),
                default_toleration_seconds: self.default_toleration_seconds,
                identity: self.identity.unwrap_or_else(default_identity),
                node_ipam: self
                    .cluster_cidr
                    .map(|c| Allocation::new(c, self.node_cidr_mask_size))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--node-cidr-mask-size: {e}"))?,
            },
            service_account_issuer: self.service_account_issuer,
            advertise_address: self.advertise_address,
            serving: keelson_host::serve::Limits {
                max_connections_per_address: self.max_connections_per_address,
                ..d().serving
            },
            requests: RequestLimits {
                request_timeout: self.request_timeout.0,
                max_requests_inflight: self.max_requests_inflight,
                max_mutating_requests_inflight: self.max_mutating_requests_inflight,
                max_watches_per_user: self.max_watches_per_user,
            },
        })
    }
}

/// Serves until SIGTERM or Ctrl-C.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let handle = server::start(args.config()?)
        .await
        .context("start API server")?;
    println!("kubeconfig: {}", handle.kubeconfig.display());
    crate::systemd::ready();
    crate::until_signal().await?;
    tracing::info!("shutting down");
    crate::systemd::stopping();
    handle.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_print() {
        assert_eq!("30000-32767".parse(), Ok(PortRange(30000, 32767)));
        assert_eq!(PortRange(1, 2).to_string(), "1-2");
        assert!("0-5".parse::<PortRange>().is_err());
        assert!("9-5".parse::<PortRange>().is_err());
        assert!("x".parse::<PortRange>().is_err());
    }

    #[test]
    fn defaults_are_the_configs() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            s: ServerArgs,
        }
        let c = Wrap::parse_from(["x", "--data-dir", "/tmp/x"])
            .s
            .config()
            .unwrap();
        let d = ServerConfig::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.api.service_cidr, d.api.service_cidr);
        assert_eq!(c.api.node_port_range, d.api.node_port_range);
        assert_eq!(
            c.controller_config.node_monitor_grace_period,
            d.controller_config.node_monitor_grace_period
        );
        assert!(c.controllers);
        assert_eq!(c.requests, d.requests);
        assert_eq!(c.serving, d.serving);
        let c = Wrap::parse_from([
            "x",
            "--data-dir",
            "/tmp/x",
            "--request-timeout",
            "1m30s",
            "--max-requests-inflight",
            "0",
            "--max-mutating-requests-inflight",
            "7",
            "--max-watches-per-user",
            "3",
            "--max-connections-per-address",
            "9",
        ])
        .s
        .config()
        .unwrap();
        assert_eq!(
            c.requests,
            RequestLimits {
                request_timeout: std::time::Duration::from_secs(90),
                max_requests_inflight: 0,
                max_mutating_requests_inflight: 7,
                max_watches_per_user: 3,
            }
        );
        assert_eq!(c.serving.max_connections_per_address, 9);
    }
}
