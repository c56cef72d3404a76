//! The desired load-balancing state, computed from Services and
//! EndpointSlices. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling; absent means TCP.
    pub fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The nftables `inet_proto` name.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Identifies one port of one Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The Service port's name ("" when unnamed).
    pub port: String,
    pub protocol: Protocol,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace,
            self.name,
            self.port,
            self.protocol.nft()
        )
    }
}

/// One backend address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node (endpoint.nodeName == our node name).
    pub local: bool,
}

/// Everything needed to program one Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub protocol: Protocol,
    pub port: u16,
    /// IPv4 ClusterIPs (internal traffic policy applies).
    pub cluster_ips: Vec<Ipv4Addr>,
    /// externalIPs and LoadBalancer ingress IPs (external traffic policy applies).
    pub external_ips: Vec<Ipv4Addr>,
    pub node_port: Option<u16>,
    /// sessionAffinity ClientIP timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// externalTrafficPolicy: Local (client address preserved, local endpoints only).
    pub external_local: bool,
    /// Endpoints for ClusterIP traffic, after internalTrafficPolicy; sorted.
    pub internal_endpoints: Vec<Endpoint>,
    /// Endpoints for NodePort / external IP traffic, after
    /// externalTrafficPolicy; sorted.
    pub external_endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Distinct endpoints this port may send to.
    pub fn endpoint_count(&self) -> usize {
        let all: BTreeSet<&Endpoint> = self
            .internal_endpoints
            .iter()
            .chain(&self.external_endpoints)
            .collect();
        all.len()
    }
}

/// The whole desired state: every Service port this node load-balances.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub services: BTreeMap<ServicePortName, ServicePort>,
}

/// One endpoint as read from a slice, with its conditions.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    ep: Endpoint,
    ready: bool,
    serving: bool,
    terminating: bool,
}

impl DesiredState {
    /// Computes the state for node `node_name` from API objects.
    pub fn from_objects<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
        node_name: &str,
    ) -> DesiredState {
        let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in slices {
            if let Some(key) = slice_service(slice) {
                by_service.entry(key).or_default().push(slice);
            }
        }
        let mut out = DesiredState::default();
        for svc in services {
            let key = service_key(svc);
            let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            out.services
                .extend(service_ports(svc, slices.iter().copied(), node_name));
        }
        out
    }

    /// The Service ports of Service `namespace`/`name` in this state.
    pub fn ports_of(&self, namespace: &str, name: &str) -> Vec<ServicePortName> {
        let from = ServicePortName {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port: String::new(),
            protocol: Protocol::Tcp,
        };
        self.services
            .range(from..)
            .take_while(|(k, _)| k.namespace == namespace && k.name == name)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Replaces everything of Service `namespace`/`name` with `ports` (empty:
    /// the Service is gone, or has nothing to load-balance).
    pub fn set_service(
        &mut self,
        namespace: &str,
        name: &str,
        ports: impl IntoIterator<Item = (ServicePortName, ServicePort)>,
    ) {
        for k in self.ports_of(namespace, name) {
            self.services.remove(&k);
        }
        self.services.extend(ports);
    }

    /// Total endpoints over all Service ports (for metrics).
    pub fn endpoint_count(&self) -> usize {
        self.services
            .values()
            .map(ServicePort::endpoint_count)
            .sum()
    }
}

/// (namespace, name) of a Service.
pub fn service_key(svc: &Service) -> (String, String) {
    (
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// (namespace, Service name) an EndpointSlice belongs to, from its
/// `kubernetes.io/service-name` label.
pub fn slice_service(slice: &EndpointSlice) -> Option<(String, String)> {
    let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        slice.metadata.namespace.clone().unwrap_or_default(),
        svc.clone(),
    ))
}

/// The Service ports of one Service, from the Service and its
/// EndpointSlices (those labelled with its name). Empty for ExternalName and
/// headless Services.
pub fn service_ports<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_name: &str,
) -> Vec<(ServicePortName, ServicePort)> {
    let mut out = Vec::new();
    let Some(spec) = &svc.spec else {
        return out;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return out;
    }
    let (ns, name) = service_key(svc);
    let mut cluster_ips: Vec<Ipv4Addr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|s| s.parse().ok())
        .collect();
    cluster_ips.sort();
    cluster_ips.dedup();
    if cluster_ips.is_empty() {
        // Headless (or IPv6-only): nothing to load-balance.
        return out;
    }
    let mut external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect();
    if let Some(lb) = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
        external_ips.extend(
            lb.ingress
                .iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok()),
        );
    }
    external_ips.sort();
    external_ips.dedup();
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(10800)
    });
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let candidates = candidates(slices, node_name);
    for p in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            continue;
        };
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let port_name = p.name.clone().unwrap_or_default();
        let cands: &[Candidate] = candidates
            .get(&(port_name.clone(), protocol))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let node_port = p
            .node_port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0);
        out.push((
            ServicePortName {
                namespace: ns.clone(),
                name: name.clone(),
                port: port_name,
                protocol,
            },
            ServicePort {
                protocol,
                port,
                cluster_ips: cluster_ips.clone(),
                external_ips: external_ips.clone(),
                node_port,
                affinity_timeout,
                external_local,
                internal_endpoints: choose(cands, internal_local),
                external_endpoints: choose(cands, external_local),
            },
        ));
    }
    out
}

/// One Service's endpoints from its slices, per (port name, protocol).
fn candidates<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node_name: &str,
) -> BTreeMap<(String, Protocol), Vec<Candidate>> {
    let mut ports: BTreeMap<(String, Protocol), Vec<Candidate>> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        for sp in slice.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
                continue;
            };
            let Some(port) = sp.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            let list = ports
                .entry((sp.name.clone().unwrap_or_default(), protocol))
                .or_default();
            for e in slice.endpoints.iter().flatten() {
                let cond = e.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                let local = e.node_name.as_deref() == Some(node_name);
                for a in &e.addresses {
                    if let Ok(ip) = a.parse::<Ipv4Addr>() {
                        list.push(Candidate {
                            ep: Endpoint { ip, port, local },
                            ready,
                            serving,
                            terminating,
                        });
                    }
                }
            }
        }
    }
    ports
}

/// Ready endpoints; when none are ready, serving terminating ones. With
/// `local_only`, the same among this node's endpoints.
fn choose(candidates: &[Candidate], local_only: bool) -> Vec<Endpoint> {
    let pool = candidates.iter().filter(|c| !local_only || c.ep.local);
    let mut ready: Vec<Endpoint> = pool.clone().filter(|c| c.ready).map(|c| c.ep).collect();
    if ready.is_empty() {
        ready = pool
            .filter(|c| c.serving && c.terminating)
            .map(|c| c.ep)
            .collect();
    }
    ready.sort();
    ready.dedup();
    ready
}
