//! The pure planner: what changed between the programmed state and the
//! desired one, per Service port.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::model::{DesiredState, Protocol, ServicePort, ServicePortName};

/// One Service port that was added, removed or changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceChange {
    pub name: ServicePortName,
    pub old: Option<ServicePort>,
    pub new: Option<ServicePort>,
}

/// The difference between two states. Unchanged Service ports do not appear.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub services: Vec<ServiceChange>,
}

/// Conntrack entries to delete: UDP flows to `dst`:`port` that were
/// translated to `endpoint`, which is no longer a backend there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlow {
    /// The Service address; `None` for a NodePort (any local address).
    pub dst: Option<Ipv4Addr>,
    pub port: u16,
    pub endpoint: Ipv4Addr,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// UDP flows whose endpoint went away (kube-proxy flushes these too: a
    /// UDP conntrack entry would otherwise keep sending to a dead backend).
    pub fn stale_udp_flows(&self) -> Vec<StaleFlow> {
        let mut out = BTreeSet::new();
        for c in &self.services {
            let Some(old) = &c.old else { continue };
            if old.protocol != Protocol::Udp {
                continue;
            }
            let gone = |old_eps: &[crate::model::Endpoint],
                        new_eps: Option<&[crate::model::Endpoint]>| {
                old_eps
                    .iter()
                    .filter(|e| {
                        !new_eps.is_some_and(|n| n.iter().any(|x| x.ip == e.ip && x.port == e.port))
                    })
                    .map(|e| e.ip)
                    .collect::<Vec<_>>()
            };
            let new = c.new.as_ref();
            for ep in gone(
                &old.internal_endpoints,
                new.map(|n| n.internal_endpoints.as_slice()),
            ) {
                for ip in &old.cluster_ips {
                    out.insert(StaleFlow {
                        dst: Some(*ip),
                        port: old.port,
                        endpoint: ep,
                    });
                }
            }
            for ep in gone(
                &old.external_endpoints,
                new.map(|n| n.external_endpoints.as_slice()),
            ) {
                for ip in &old.external_ips {
                    out.insert(StaleFlow {
                        dst: Some(*ip),
                        port: old.port,
                        endpoint: ep,
                    });
                }
                if let Some(np) = old.node_port {
                    out.insert(StaleFlow {
                        dst: None,
                        port: np,
                        endpoint: ep,
                    });
                }
            }
        }
        out.into_iter().collect()
    }
}

/// Lists the Service ports whose desired state differs from `previous`.
pub fn plan(previous: &DesiredState, desired: &DesiredState) -> Changes {
    let mut services = Vec::new();
    for (name, new) in &desired.services {
        match previous.services.get(name) {
            Some(old) if old == new => {}
            old => services.push(ServiceChange {
                name: name.clone(),
                old: old.cloned(),
                new: Some(new.clone()),
            }),
        }
    }
    for (name, old) in &previous.services {
        if !desired.services.contains_key(name) {
            services.push(ServiceChange {
                name: name.clone(),
                old: Some(old.clone()),
                new: None,
            });
        }
    }
    Changes { services }
}

/// [`plan`] restricted to the Services `services` ((namespace, name) pairs):
/// what an event-driven sync compares when only those Services or their
/// EndpointSlices changed. Costs O(changed ports · log n), not O(n).
pub fn plan_services(
    previous: &DesiredState,
    desired: &DesiredState,
    services: &BTreeSet<(String, String)>,
) -> Changes {
    let mut out = Vec::new();
    for (ns, name) in services {
        let old = previous.ports_of(ns, name);
        let new = desired.ports_of(ns, name);
        for k in &new {
            let n = &desired.services[k];
            match previous.services.get(k) {
                Some(o) if o == n => {}
                o => out.push(ServiceChange {
                    name: k.clone(),
                    old: o.cloned(),
                    new: Some(n.clone()),
                }),
            }
        }
        for k in old.iter().filter(|k| !desired.services.contains_key(*k)) {
            out.push(ServiceChange {
                name: k.clone(),
                old: Some(previous.services[k].clone()),
                new: None,
            });
        }
    }
    Changes { services: out }
}

impl DesiredState {
    /// Records `changes` as programmed: this state becomes the one they were
    /// planned towards (for the Services they name).
    pub fn apply_changes(&mut self, changes: &Changes) {
        for c in &changes.services {
            match &c.new {
                Some(n) => {
                    self.services.insert(c.name.clone(), n.clone());
                }
                None => {
                    self.services.remove(&c.name);
                }
            }
        }
    }
}
