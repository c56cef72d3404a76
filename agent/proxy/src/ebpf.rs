//! The eBPF backend: [`lb_services`] turns a [`DesiredState`] into the
//! frontends of `keelson-ebpf` (pure), and [`EbpfBackend`] programs them
//! through [`keelson_ebpf::LbTable`] into the pinned BPF maps.
//!
//! Frontends per Service port:
//! - each ClusterIP: `addr:port`, internal endpoints (socket hooks);
//! - each external IP (externalIPs, LoadBalancer ingress): `addr:port` with
//!   `F_EXTERNAL` (+ `F_EXT_LOCAL`), external endpoints;
//! - the NodePort: `0.0.0.0:nodePort` with `F_NODEPORT` (+ `F_EXT_LOCAL`),
//!   external endpoints.
//!
//! The programs do not enforce `F_EXT_LOCAL`: the model already reduced the
//! external endpoints to this node's for externalTrafficPolicy: Local (the
//! node name is applied there, in [`DesiredState::from_objects`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keelson_ebpf::layout::{F_EXT_LOCAL, F_EXTERNAL, F_NODEPORT};
use keelson_ebpf::{AyaMaps, Backend, EbpfLb, Frontend, LbConfig, LbService, LbTable, Proto};

use crate::backend::{BackendError, ProxyBackend};
use crate::model::{DesiredState, Endpoint, Protocol, ServicePort};
use crate::nft::{NftCli, NftRunner};
use crate::plan::Changes;
use crate::{ProxyConfig, ProxyMode};

/// Errors of the eBPF backend, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("open the eBPF load balancer (pin dir {pin_dir}): {source}")]
    Open {
        pin_dir: PathBuf,
        #[source]
        source: keelson_ebpf::LoadError,
    },
    #[error("remove the eBPF load balancer pinned in {pin_dir}: {source}")]
    Remove {
        pin_dir: PathBuf,
        #[source]
        source: keelson_ebpf::LoadError,
    },
    #[error("attach the TC programs in network namespace {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: keelson_host::netns::NetnsError,
    },
    #[error("program BPF maps: {0}")]
    Maps(#[from] keelson_ebpf::MapsError),
    #[error("the eBPF backend's masquerade table: {0}")]
    Masquerade(#[from] crate::nft::NftError),
}

/// The one nftables table of the eBPF backend: masquerading for NodePort and
/// external-IP connections with externalTrafficPolicy: Cluster, which the
/// TC program marks with [`MASQ_MARK`] (it rewrites destinations only; the
/// host's conntrack then SNATs to the node's address, so replies come back
/// through this node whichever node the backend is on, and reverses it).
pub const MASQ_TABLE: &str = "keelson_ebpf";

/// The packet mark the TC program sets (`KLB_MASQ_MARK` in ebpf/lb.h).
pub use keelson_ebpf::layout::MASQ_MARK;

/// The masquerade table, replacing any earlier one (one transaction).
pub fn masquerade_script() -> String {
    let t = MASQ_TABLE;
    let keep = !MASQ_MARK;
    format!(
        "add table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tmeta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark & {keep:#x} masquerade fully-random\n\t}}\n}}\n"
    )
}

/// Removes all the eBPF backend ever made: its pins under `pin_dir` and its
/// masquerade table (through `nft`). Idempotent.
pub fn remove_all(pin_dir: &Path, nft: &impl NftRunner) -> Result<(), EbpfError> {
    remove_state(pin_dir)?;
    remove_masquerade(nft)
}

/// Removes the masquerade table (idempotent).
pub fn remove_masquerade(nft: &impl NftRunner) -> Result<(), EbpfError> {
    let t = MASQ_TABLE;
    nft.apply(&format!("add table ip {t}\ndelete table ip {t}\n"))?;
    Ok(())
}

/// Where the eBPF load balancer lives and attaches.
#[derive(Clone, Debug)]
pub struct EbpfConfig {
    /// bpffs directory for the pinned maps and links.
    pub pin_dir: PathBuf,
    /// cgroup2 directory the socket programs attach to; `None`: the cgroup2
    /// root found under /sys/fs/cgroup.
    pub cgroup2: Option<PathBuf>,
    /// Node interfaces for the NodePort / external TC programs.
    pub tc_interfaces: Vec<String>,
}

impl Default for EbpfConfig {
    fn default() -> EbpfConfig {
        EbpfConfig {
            pin_dir: PathBuf::from(keelson_ebpf::DEFAULT_PIN_DIR),
            cgroup2: None,
            tc_interfaces: Vec::new(),
        }
    }
}

impl EbpfConfig {
    /// The cgroup2 directory to attach to, and whether this kernel and
    /// process can run the load balancer; `Err` is one line saying why not.
    pub fn probe(&self) -> Result<PathBuf, String> {
        let cg = match &self.cgroup2 {
            Some(p) => p.clone(),
            None => keelson_ebpf::find_cgroup2(Path::new("/sys/fs/cgroup")).ok_or_else(|| {
                "eBPF load balancing unavailable: no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"
                    .to_string()
            })?,
        };
        keelson_ebpf::probe(Some(&cg)).map_err(|e| e.to_string())?;
        Ok(cg)
    }
}

/// The mode to run: for `ebpf`, probes the kernel and returns the cgroup2
/// directory to attach to, or logs one line and falls back to nftables.
pub fn select_mode(mut config: ProxyConfig) -> (ProxyConfig, Option<PathBuf>) {
    if config.mode != ProxyMode::Ebpf {
        return (config, None);
    }
    match config.ebpf.probe() {
        Ok(cg) => (config, Some(cg)),
        Err(why) => {
            tracing::warn!("{why}: falling back to --proxy-mode nftables");
            config.mode = ProxyMode::Nftables;
            (config, None)
        }
    }
}

/// Removes everything the eBPF backend pinned under `pin_dir` (idempotent).
pub fn remove_state(pin_dir: &Path) -> Result<(), EbpfError> {
    keelson_ebpf::remove_all(pin_dir).map_err(|source| EbpfError::Remove {
        pin_dir: pin_dir.to_path_buf(),
        source,
    })
}

fn proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
        Protocol::Sctp => Proto::Sctp,
    }
}

fn backends(eps: &[Endpoint]) -> Vec<Backend> {
    eps.iter()
        .map(|e| Backend {
            addr: e.ip,
            port: e.port,
        })
        .collect()
}

/// The frontends of one Service port. Pure.
pub fn port_services(sp: &ServicePort) -> Vec<LbService> {
    let proto = proto(sp.protocol);
    let local = if sp.external_local { F_EXT_LOCAL } else { 0 };
    let internal = backends(&sp.internal_endpoints);
    let external = backends(&sp.external_endpoints);
    let mut out = Vec::new();
    for ip in &sp.cluster_ips {
        out.push(LbService {
            frontend: Frontend {
                proto,
                addr: *ip,
                port: sp.port,
            },
            flags: 0,
            affinity_timeout: sp.affinity_timeout,
            backends: internal.clone(),
        });
    }
    for ip in &sp.external_ips {
        out.push(LbService {
            frontend: Frontend {
                proto,
                addr: *ip,
                port: sp.port,
            },
            flags: F_EXTERNAL | local,
            affinity_timeout: sp.affinity_timeout,
            backends: external.clone(),
        });
    }
    if let Some(np) = sp.node_port {
        out.push(LbService {
            frontend: Frontend {
                proto,
                addr: std::net::Ipv4Addr::UNSPECIFIED,
                port: np,
            },
            flags: F_NODEPORT | local,
            affinity_timeout: sp.affinity_timeout,
            backends: external,
        });
    }
    out
}

/// Every frontend of `desired`, sorted by frontend; when two Service ports
/// claim the same frontend the first (by Service port name) wins. Pure.
pub fn lb_services(desired: &DesiredState) -> Vec<LbService> {
    let mut by_fe: BTreeMap<Frontend, LbService> = BTreeMap::new();
    for sp in desired.services.values() {
        for s in port_services(sp) {
            by_fe.entry(s.frontend).or_insert(s);
        }
    }
    by_fe.into_values().collect()
}

/// The eBPF dataplane behind [`ProxyBackend`].
pub struct EbpfBackend {
    pin_dir: PathBuf,
    table: Option<LbTable<AyaMaps>>,
    synced: bool,
    nft: NftCli,
}

impl EbpfBackend {
    /// Loads the programs (or adopts the pinned ones of a previous run) and
    /// attaches the socket hooks to `cgroup2`. Programs nothing yet.
    /// With TC interfaces, also installs the masquerade table through `nft`
    /// (removes it without). The TC interfaces are those of the named
    /// network namespace `netns` (`--netns`, like `nft`'s prefix), else of
    /// the current one.
    pub fn open(
        cfg: &EbpfConfig,
        cgroup2: PathBuf,
        netns: Option<&str>,
        nft: NftCli,
    ) -> Result<EbpfBackend, EbpfError> {
        if cfg.tc_interfaces.is_empty() {
            remove_masquerade(&nft)?;
        } else {
            nft.apply(&masquerade_script())?;
        }
        let lb_cfg = LbConfig {
            pin_dir: cfg.pin_dir.clone(),
            cgroup: Some(cgroup2),
            tc_interfaces: cfg.tc_interfaces.clone(),
        };
        let open = || {
            EbpfLb::open(&lb_cfg).map_err(|source| EbpfError::Open {
                pin_dir: cfg.pin_dir.clone(),
                source,
            })
        };
        let lb = match netns.filter(|_| !cfg.tc_interfaces.is_empty()) {
            None => open()?,
            // Interface names resolve, and tcx links attach, in the calling
            // thread's network namespace: attach from a short-lived thread
            // that entered `/run/netns/NAME` (pins and cgroups do not depend
            // on it).
            Some(name) => keelson_host::netns::in_netns(&keelson_host::netns::named(name), open)
                .map_err(|e| EbpfError::Netns {
                netns: name.to_string(),
                source: e,
            })??,
        };
        tracing::info!(
            pin_dir = %cfg.pin_dir.display(),
            attached = ?lb.attached(),
            adopted = ?lb.adopted(),
            "eBPF load balancer loaded"
        );
        Ok(EbpfBackend {
            pin_dir: cfg.pin_dir.clone(),
            table: Some(LbTable::new(lb.into_maps())),
            synced: false,
            nft,
        })
    }

    fn table(&mut self) -> Result<&mut LbTable<AyaMaps>, BackendError> {
        self.table.as_mut().ok_or(BackendError::NotSynced)
    }
}

impl ProxyBackend for EbpfBackend {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn full_sync(&mut self, desired: &DesiredState) -> Result<(), BackendError> {
        let want = lb_services(desired);
        let stats = self.table()?.full_sync(&want).map_err(EbpfError::from)?;
        tracing::debug!(?stats, "eBPF full sync");
        self.synced = true;
        Ok(())
    }

    fn apply(&mut self, changes: &Changes, desired: &DesiredState) -> Result<(), BackendError> {
        if !self.synced {
            return Err(BackendError::NotSynced);
        }
        // Only the changed Service ports are converted and written; a
        // frontend another (unchanged) port also claims is left to it.
        let owner = |fe: &Frontend| {
            desired
                .services
                .values()
                .flat_map(port_services)
                .find(|s| s.frontend == *fe)
        };
        let table = self.table()?;
        for c in &changes.services {
            let new = c.new.as_ref().map(port_services).unwrap_or_default();
            let old = c.old.as_ref().map(port_services).unwrap_or_default();
            for o in &old {
                if !new.iter().any(|n| n.frontend == o.frontend) {
                    match owner(&o.frontend) {
                        Some(other) => table.upsert(&other),
                        None => table.remove(&o.frontend),
                    }
                    .map_err(EbpfError::from)?;
                }
            }
            for n in &new {
                table.upsert(n).map_err(EbpfError::from)?;
            }
        }
        Ok(())
    }

    fn drifted(&mut self) -> Result<bool, BackendError> {
        Ok(self.table()?.drifted().map_err(EbpfError::from)?)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        // Close our map fds before the pins go.
        self.table = None;
        self.synced = false;
        remove_all(&self.pin_dir, &self.nft)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::ServicePortName;

    fn ep(ip: &str, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            local,
        }
    }

    fn be(ip: &str) -> Backend {
        Backend {
            addr: ip.parse().unwrap(),
            port: 8080,
        }
    }

    fn fe(proto: Proto, ip: &str, port: u16) -> Frontend {
        Frontend {
            proto,
            addr: ip.parse().unwrap(),
            port,
        }
    }

    fn base() -> ServicePort {
        ServicePort {
            protocol: Protocol::Tcp,
            port: 80,
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            external_ips: Vec::new(),
            node_port: None,
            affinity_timeout: None,
            external_local: false,
            internal_endpoints: vec![ep("10.244.0.1", true), ep("10.244.1.1", false)],
            external_endpoints: vec![ep("10.244.0.1", true), ep("10.244.1.1", false)],
        }
    }

    fn state(ports: Vec<(&str, ServicePort)>) -> DesiredState {
        DesiredState {
            services: ports
                .into_iter()
                .map(|(name, sp)| {
                    (
                        ServicePortName {
                            namespace: "default".into(),
                            name: name.into(),
                            port: String::new(),
                            protocol: sp.protocol,
                        },
                        sp,
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn conversion_table() {
        let both = vec![be("10.244.0.1"), be("10.244.1.1")];
        let cases: Vec<(&str, ServicePort, Vec<LbService>)> = vec![
            (
                "clusterip",
                base(),
                vec![LbService {
                    frontend: fe(Proto::Tcp, "10.96.0.10", 80),
                    flags: 0,
                    affinity_timeout: None,
                    backends: both.clone(),
                }],
            ),
            (
                "udp, no endpoints rejects",
                ServicePort {
                    protocol: Protocol::Udp,
                    port: 53,
                    internal_endpoints: Vec::new(),
                    external_endpoints: Vec::new(),
                    ..base()
                },
                vec![LbService {
                    frontend: fe(Proto::Udp, "10.96.0.10", 53),
                    flags: 0,
                    affinity_timeout: None,
                    backends: Vec::new(),
                }],
            ),
            (
                "sctp and affinity",
                ServicePort {
                    protocol: Protocol::Sctp,
                    affinity_timeout: Some(30),
                    ..base()
                },
                vec![LbService {
                    frontend: fe(Proto::Sctp, "10.96.0.10", 80),
                    flags: 0,
                    affinity_timeout: Some(30),
                    backends: both.clone(),
                }],
            ),
            (
                "nodeport and external ip, cluster policy",
                ServicePort {
                    external_ips: vec!["192.0.2.7".parse().unwrap()],
                    node_port: Some(30080),
                    ..base()
                },
                vec![
                    LbService {
                        frontend: fe(Proto::Tcp, "10.96.0.10", 80),
                        flags: 0,
                        affinity_timeout: None,
                        backends: both.clone(),
                    },
                    LbService {
                        frontend: fe(Proto::Tcp, "192.0.2.7", 80),
                        flags: F_EXTERNAL,
                        affinity_timeout: None,
                        backends: both.clone(),
                    },
                    LbService {
                        frontend: fe(Proto::Tcp, "0.0.0.0", 30080),
                        flags: F_NODEPORT,
                        affinity_timeout: None,
                        backends: both.clone(),
                    },
                ],
            ),
            (
                "external local: only local endpoints outside, all inside",
                ServicePort {
                    external_ips: vec!["192.0.2.7".parse().unwrap()],
                    node_port: Some(30080),
                    external_local: true,
                    external_endpoints: vec![ep("10.244.0.1", true)],
                    affinity_timeout: Some(10800),
                    ..base()
                },
                vec![
                    LbService {
                        frontend: fe(Proto::Tcp, "10.96.0.10", 80),
                        flags: 0,
                        affinity_timeout: Some(10800),
                        backends: both.clone(),
                    },
                    LbService {
                        frontend: fe(Proto::Tcp, "192.0.2.7", 80),
                        flags: F_EXTERNAL | F_EXT_LOCAL,
                        affinity_timeout: Some(10800),
                        backends: vec![be("10.244.0.1")],
                    },
                    LbService {
                        frontend: fe(Proto::Tcp, "0.0.0.0", 30080),
                        flags: F_NODEPORT | F_EXT_LOCAL,
                        affinity_timeout: Some(10800),
                        backends: vec![be("10.244.0.1")],
                    },
                ],
            ),
            (
                "internal local with no local endpoint rejects inside only",
                ServicePort {
                    internal_endpoints: Vec::new(),
                    node_port: Some(30081),
                    ..base()
                },
                vec![
                    LbService {
                        frontend: fe(Proto::Tcp, "10.96.0.10", 80),
                        flags: 0,
                        affinity_timeout: None,
                        backends: Vec::new(),
                    },
                    LbService {
                        frontend: fe(Proto::Tcp, "0.0.0.0", 30081),
                        flags: F_NODEPORT,
                        affinity_timeout: None,
                        backends: both.clone(),
                    },
                ],
            ),
            (
                "two cluster ips",
                ServicePort {
                    cluster_ips: vec!["10.96.0.10".parse().unwrap(), "10.96.0.11".parse().unwrap()],
                    ..base()
                },
                vec![
                    LbService {
                        frontend: fe(Proto::Tcp, "10.96.0.10", 80),
                        flags: 0,
                        affinity_timeout: None,
                        backends: both.clone(),
                    },
                    LbService {
                        frontend: fe(Proto::Tcp, "10.96.0.11", 80),
                        flags: 0,
                        affinity_timeout: None,
                        backends: both.clone(),
                    },
                ],
            ),
        ];
        for (name, sp, want) in cases {
            assert_eq!(port_services(&sp), want, "{name}");
            let mut sorted = want.clone();
            sorted.sort_by_key(|s| s.frontend);
            assert_eq!(lb_services(&state(vec![("s", sp)])), sorted, "{name}");
        }
    }

    #[test]
    fn ebpf_falls_back_to_nftables_where_the_probe_fails() {
        let mut config = ProxyConfig {
            node_name: "n".into(),
            mode: ProxyMode::Ebpf,
            ebpf: EbpfConfig {
                // Not a cgroup2 directory: the probe always fails.
                cgroup2: Some(PathBuf::from("/nonexistent/keelson-cgroup")),
                ..Default::default()
            },
            ..Default::default()
        };
        let (c, cg) = select_mode(config.clone());
        assert_eq!(c.mode, ProxyMode::Nftables);
        assert_eq!(cg, None);
        config.mode = ProxyMode::None;
        let (c, cg) = select_mode(config);
        assert_eq!((c.mode, cg), (ProxyMode::None, None));
    }

    #[test]
    fn lb_services_sorted_and_deduplicated() {
        let a = base();
        let b = ServicePort {
            cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 1)],
            internal_endpoints: vec![ep("10.244.2.2", false)],
            ..base()
        };
        // "c" claims a's frontend: "a" (first by name) keeps it.
        let c = ServicePort {
            internal_endpoints: vec![ep("10.244.9.9", false)],
            ..base()
        };
        let got = lb_services(&state(vec![("a", a), ("b", b), ("c", c)]));
        let fes: Vec<Frontend> = got.iter().map(|s| s.frontend).collect();
        assert_eq!(
            fes,
            vec![
                fe(Proto::Tcp, "10.96.0.1", 80),
                fe(Proto::Tcp, "10.96.0.10", 80)
            ]
        );
        assert_eq!(got[1].backends, vec![be("10.244.0.1"), be("10.244.1.1")]);
        assert!(lb_services(&DesiredState::default()).is_empty());
    }
}
