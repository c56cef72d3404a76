//! The cluster zone: Services and EndpointSlices in, answers out. Pure: no
//! sockets, no API calls.
//!
//! Names served (as kube-dns and CoreDNS's kubernetes plugin do):
//! - `<svc>.<ns>.svc.<domain>`: A/AAAA of the ClusterIP(s); for a headless
//!   Service one record per ready endpoint; CNAME for an ExternalName Service.
//! - `<host>.<svc>.<ns>.svc.<domain>`: a headless Service's endpoint by its
//!   hostname (or its address with dashes when it has none).
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV for each named port.
//! - `<a-b-c-d>.<ns>.pod.<domain>`: A of that address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// TTL of every answer, seconds (short: Services change).
pub const TTL: u32 = 5;

/// What a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    A,
    Aaaa,
    Srv,
    Cname,
    /// Any other type: the name may exist, with no data of this type.
    Other,
}

/// One answer record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rec {
    A(String, Ipv4Addr),
    Aaaa(String, Ipv6Addr),
    Cname(String, String),
    Srv {
        name: String,
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name exists; these are its records of the asked type (may be
    /// empty: NOERROR with no data). `additional` carries A/AAAA records of
    /// SRV targets.
    Records {
        answers: Vec<Rec>,
        additional: Vec<Rec>,
    },
    /// The name is in the cluster domain and does not exist.
    NxDomain,
    /// Not in the cluster domain: forward it.
    NotOurs,
}

#[derive(Debug, Clone, Default)]
struct Endpoint {
    addresses: Vec<IpAddr>,
    hostname: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Svc {
    cluster_ips: Vec<IpAddr>,
    headless: bool,
    external_name: Option<String>,
    /// (port name, protocol lowercased, port): ports of the Service for a
    /// ClusterIP Service, of the endpoints for a headless one.
    ports: BTreeSet<(String, String, u16)>,
    endpoints: Vec<Endpoint>,
}

/// The cluster zone, built from every Service and EndpointSlice.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    domain: String,
    /// (namespace, name) -> Service.
    services: BTreeMap<(String, String), Svc>,
    namespaces: BTreeSet<String>,
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    /// Builds the zone for `domain` (e.g. `cluster.local`).
    pub fn build<'a>(
        domain: &str,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> Zone {
        let mut zone = Zone {
            domain: norm(domain),
            ..Default::default()
        };
        for s in services {
            let (Some(ns), Some(name)) = (&s.metadata.namespace, &s.metadata.name) else {
                continue;
            };
            let Some(spec) = &s.spec else { continue };
            let mut svc = Svc::default();
            if spec.type_.as_deref() == Some("ExternalName") {
                svc.external_name = spec.external_name.as_deref().map(norm);
            } else {
                let ips: Vec<String> = match &spec.cluster_ips {
                    Some(ips) if !ips.is_empty() => ips.clone(),
                    _ => spec.cluster_ip.iter().cloned().collect(),
                };
                svc.headless = ips.iter().any(|ip| ip == "None");
                svc.cluster_ips = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
                for p in spec.ports.iter().flatten() {
                    if let Some(n) = &p.name {
                        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                        let port = u16::try_from(p.port).unwrap_or(0);
                        if !svc.headless {
                            svc.ports.insert((n.clone(), proto, port));
                        }
                    }
                }
            }
            zone.namespaces.insert(ns.clone());
            zone.services.insert((ns.clone(), name.clone()), svc);
        }
        for slice in slices {
            let Some(ns) = &slice.metadata.namespace else {
                continue;
            };
            let Some(owner) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
            else {
                continue;
            };
            let Some(svc) = zone.services.get_mut(&(ns.clone(), owner.clone())) else {
                continue;
            };
            if !svc.headless {
                continue;
            }
            for p in slice.ports.iter().flatten() {
                if let (Some(n), Some(port)) = (&p.name, p.port) {
                    let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                    svc.ports
                        .insert((n.clone(), proto, u16::try_from(port).unwrap_or(0)));
                }
            }
            for ep in slice.endpoints.iter().flatten() {
                // Ready, or unknown (nil means ready), as kube-dns publishes.
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                svc.endpoints.push(Endpoint {
                    addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    hostname: ep.hostname.as_deref().map(norm),
                });
            }
        }
        zone
    }

    /// The cluster domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Answers a query for `qname` (any case, with or without the final dot).
    pub fn lookup(&self, qname: &str, qtype: QType) -> Answer {
        let name = norm(qname);
        let Some(rel) = name.strip_suffix(&self.domain).and_then(|r| {
            if r.is_empty() {
                Some("")
            } else {
                r.strip_suffix('.')
            }
        }) else {
            return Answer::NotOurs;
        };
        let labels: Vec<&str> = if rel.is_empty() {
            Vec::new()
        } else {
            rel.split('.').collect()
        };
        let exists = || Answer::Records {
            answers: Vec::new(),
            additional: Vec::new(),
        };
        match labels.as_slice() {
            // The domain itself, `svc.<domain>`, `pod.<domain>`.
            [] | ["svc"] | ["pod"] => exists(),
            [ns, "svc"] | [ns, "pod"] if self.namespaces.contains(*ns) => exists(),
            [ip, _ns, "pod"] => match parse_dashed(ip) {
                Some(IpAddr::V4(a)) => records(qtype, vec![Rec::A(name.clone(), a)]),
                Some(IpAddr::V6(a)) => records(qtype, vec![Rec::Aaaa(name.clone(), a)]),
                None => Answer::NxDomain,
            },
            [svc, ns, "svc"] => match self.services.get(&(ns.to_string(), svc.to_string())) {
                Some(s) => self.service_records(&name, s, qtype),
                None => Answer::NxDomain,
            },
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                match self.services.get(&(ns.to_string(), svc.to_string())) {
                    Some(s) => self.srv_records(&name, s, &port[1..], &proto[1..], svc, ns, qtype),
                    None => Answer::NxDomain,
                }
            }
            [host, svc, ns, "svc"] => match self.services.get(&(ns.to_string(), svc.to_string())) {
                Some(s) if s.headless => {
                    let found: Vec<IpAddr> = s
                        .endpoints
                        .iter()
                        .filter(|e| endpoint_label(e).as_deref() == Some(*host))
                        .flat_map(|e| e.addresses.iter().copied())
                        .collect();
                    if found.is_empty() {
                        Answer::NxDomain
                    } else {
                        records(qtype, addr_recs(&name, &found))
                    }
                }
                _ => Answer::NxDomain,
            },
            _ => Answer::NxDomain,
        }
    }

    fn service_records(&self, name: &str, s: &Svc, qtype: QType) -> Answer {
        if let Some(target) = &s.external_name {
            return Answer::Records {
                answers: vec![Rec::Cname(name.to_string(), target.clone())],
                additional: Vec::new(),
            };
        }
        let ips: Vec<IpAddr> = if s.headless {
            s.endpoints
                .iter()
                .flat_map(|e| e.addresses.iter().copied())
                .collect()
        } else {
            s.cluster_ips.clone()
        };
        records(qtype, addr_recs(name, &ips))
    }

    #[allow(clippy::too_many_arguments)]
    fn srv_records(
        &self,
        name: &str,
        s: &Svc,
        port_name: &str,
        proto: &str,
        svc: &str,
        ns: &str,
        qtype: QType,
    ) -> Answer {
        let ports: Vec<u16> = s
            .ports
            .iter()
            .filter(|(n, p, _)| n == port_name && p == proto)
            .map(|(_, _, port)| *port)
            .collect();
        if ports.is_empty() {
            return Answer::NxDomain;
        }
        if qtype != QType::Srv {
            return records(qtype, Vec::new());
        }
        let svc_name = format!("{svc}.{ns}.svc.{}", self.domain);
        let mut answers = Vec::new();
        let mut additional = Vec::new();
        for port in ports {
            if s.headless {
                for e in &s.endpoints {
                    let Some(label) = endpoint_label(e) else {
                        continue;
                    };
                    let target = format!("{label}.{svc_name}");
                    answers.push(Rec::Srv {
                        name: name.to_string(),
                        priority: 0,
                        weight: 100,
                        port,
                        target: target.clone(),
                    });
                    additional.extend(addr_recs(&target, &e.addresses));
                }
            } else {
                answers.push(Rec::Srv {
                    name: name.to_string(),
                    priority: 0,
                    weight: 100,
                    port,
                    target: svc_name.clone(),
                });
                additional.extend(addr_recs(&svc_name, &s.cluster_ips));
            }
        }
        answers.sort();
        answers.dedup();
        additional.sort();
        additional.dedup();
        Answer::Records {
            answers,
            additional,
        }
    }
}

fn endpoint_label(e: &Endpoint) -> Option<String> {
    e.hostname
        .clone()
        .or_else(|| e.addresses.first().map(|a| dashed(*a)))
}

fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn parse_dashed(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 {
        label.replace('-', ".").parse().ok()
    } else {
        label.replace('-', ":").parse().ok()
    }
}

fn addr_recs(name: &str, ips: &[IpAddr]) -> Vec<Rec> {
    let mut out: Vec<Rec> = ips
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(a) => Rec::A(name.to_string(), *a),
            IpAddr::V6(a) => Rec::Aaaa(name.to_string(), *a),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Keeps the records of the asked type (the name exists either way).
fn records(qtype: QType, all: Vec<Rec>) -> Answer {
    let answers = all
        .into_iter()
        .filter(|r| {
            matches!(
                (qtype, r),
                (QType::A, Rec::A(..))
                    | (QType::Aaaa, Rec::Aaaa(..))
                    | (QType::Srv, Rec::Srv { .. })
            )
        })
        .collect();
    Answer::Records {
        answers,
        additional: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint as Ep, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(ns: &str, name: &str, ip: &str, ports: &[(&str, &str, i32)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                cluster_ips: Some(vec![ip.into()]),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, proto, p)| ServicePort {
                            name: Some(n.to_string()),
                            protocol: Some(proto.to_string()),
                            port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(
        ns: &str,
        svc: &str,
        eps: &[(&str, Option<&str>, bool)],
        port: (&str, i32),
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{svc}-abc")),
                labels: Some([("kubernetes.io/service-name".to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                eps.iter()
                    .map(|(ip, host, ready)| Ep {
                        addresses: vec![ip.to_string()],
                        hostname: host.map(str::to_string),
                        conditions: Some(EndpointConditions {
                            ready: Some(*ready),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some(port.0.into()),
                port: Some(port.1),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        }
    }

    fn a(name: &str, ip: &str) -> Rec {
        Rec::A(name.into(), ip.parse().unwrap())
    }

    fn zone() -> Zone {
        let mut ext = svc("default", "ext", "", &[]);
        ext.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        ext.spec.as_mut().unwrap().external_name = Some("example.org".into());
        let services = vec![
            svc(
                "default",
                "web",
                "10.96.0.20",
                &[("http", "TCP", 80), ("dns", "UDP", 53)],
            ),
            svc("db", "pg", "None", &[("sql", "TCP", 5432)]),
            ext,
        ];
        let slices = vec![
            slice(
                "db",
                "pg",
                &[
                    ("10.1.0.5", Some("pg-0"), true),
                    ("10.1.0.6", None, true),
                    ("10.1.0.7", Some("pg-2"), false),
                ],
                ("sql", 5432),
            ),
            slice(
                "default",
                "web",
                &[("10.1.0.9", None, true)],
                ("http", 8080),
            ),
        ];
        Zone::build("cluster.local", &services, &slices)
    }

    fn answers(a: Answer) -> Vec<Rec> {
        match a {
            Answer::Records { answers, .. } => answers,
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn lookups() {
        let z = zone();
        let web = "web.default.svc.cluster.local";
        let cases: Vec<(&str, QType, Answer)> = vec![
            (
                "WEB.default.svc.cluster.local.",
                QType::A,
                Answer::Records {
                    answers: vec![a(web, "10.96.0.20")],
                    additional: vec![],
                },
            ),
            // The name exists; no AAAA: NOERROR with no data.
            (
                web,
                QType::Aaaa,
                Answer::Records {
                    answers: vec![],
                    additional: vec![],
                },
            ),
            ("nope.default.svc.cluster.local", QType::A, Answer::NxDomain),
            ("web.other.svc.cluster.local", QType::A, Answer::NxDomain),
            (
                "default.svc.cluster.local",
                QType::A,
                Answer::Records {
                    answers: vec![],
                    additional: vec![],
                },
            ),
            ("example.org", QType::A, Answer::NotOurs),
            ("cluster.local.example.org", QType::A, Answer::NotOurs),
            ("mycluster.local", QType::A, Answer::NotOurs),
            (
                "10-1-2-3.default.pod.cluster.local",
                QType::A,
                Answer::Records {
                    answers: vec![a("10-1-2-3.default.pod.cluster.local", "10.1.2.3")],
                    additional: vec![],
                },
            ),
            (
                "ext.default.svc.cluster.local",
                QType::A,
                Answer::Records {
                    answers: vec![Rec::Cname(
                        "ext.default.svc.cluster.local".into(),
                        "example.org".into(),
                    )],
                    additional: vec![],
                },
            ),
            (
                "_http._udp.web.default.svc.cluster.local",
                QType::Srv,
                Answer::NxDomain,
            ),
        ];
        for (name, qtype, want) in cases {
            assert_eq!(z.lookup(name, qtype), want, "{name} {qtype:?}");
        }
    }

    #[test]
    fn headless_services_answer_with_ready_endpoints() {
        let z = zone();
        let pg = "pg.db.svc.cluster.local";
        assert_eq!(
            answers(z.lookup(pg, QType::A)),
            vec![a(pg, "10.1.0.5"), a(pg, "10.1.0.6")]
        );
        assert_eq!(
            answers(z.lookup("pg-0.pg.db.svc.cluster.local", QType::A)),
            vec![a("pg-0.pg.db.svc.cluster.local", "10.1.0.5")]
        );
        // An endpoint without a hostname is named by its address.
        assert_eq!(
            answers(z.lookup("10-1-0-6.pg.db.svc.cluster.local", QType::A)).len(),
            1
        );
        // Not ready: not published.
        assert_eq!(
            z.lookup("pg-2.pg.db.svc.cluster.local", QType::A),
            Answer::NxDomain
        );
        let Answer::Records {
            answers,
            additional,
        } = z.lookup("_sql._tcp.pg.db.svc.cluster.local", QType::Srv)
        else {
            panic!("no SRV")
        };
        let targets: Vec<(&str, u16)> = answers
            .iter()
            .map(|r| match r {
                Rec::Srv { target, port, .. } => (target.as_str(), *port),
                _ => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(
            targets,
            vec![
                ("10-1-0-6.pg.db.svc.cluster.local", 5432),
                ("pg-0.pg.db.svc.cluster.local", 5432)
            ]
        );
        assert_eq!(additional.len(), 2);
    }

    #[test]
    fn srv_of_a_cluster_ip_service_points_at_the_service() {
        let z = zone();
        let name = "_dns._udp.web.default.svc.cluster.local";
        let Answer::Records {
            answers,
            additional,
        } = z.lookup(name, QType::Srv)
        else {
            panic!()
        };
        assert_eq!(
            answers,
            vec![Rec::Srv {
                name: name.into(),
                priority: 0,
                weight: 100,
                port: 53,
                target: "web.default.svc.cluster.local".into()
            }]
        );
        assert_eq!(
            additional,
            vec![a("web.default.svc.cluster.local", "10.96.0.20")]
        );
    }
}
