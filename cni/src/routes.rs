//! Cross-node routes: every other node's pod CIDR via that node's InternalIP,
//! for nodes that share a link (an L2 segment) with this one. The agent calls
//! [`reconcile`] when the Node list changes; [`plan`] and [`diff`] are pure.
//!
//! Routes carry the protocol tag [`RTPROT_KEELSON_NODES`], so a reconcile
//! removes exactly the routes it made earlier and nothing else.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use keelson_host::rtnetlink::{NlError, RTPROT_KEELSON_NODES, Route, Socket, c};

/// What the agent knows of a node (from Node.status.addresses and Node.spec.podCIDR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// metadata.name.
    pub name: String,
    /// The InternalIP address.
    pub internal_ip: Ipv4Addr,
    /// spec.podCIDR.
    pub pod_cidr: Ipv4Net,
}

/// One wanted route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wanted {
    /// The other node's pod CIDR.
    pub dst: Ipv4Net,
    /// Its InternalIP.
    pub via: Ipv4Addr,
}

/// The routes to install, and the nodes no direct route can reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Routes, sorted by destination.
    pub routes: Vec<Wanted>,
    /// (node name, why) for nodes left out.
    pub skipped: Vec<(String, String)>,
}

/// Plans routes from `me` to every other node in `nodes`. `connected` are
/// the subnets of this node's links (its addresses with their prefixes).
pub fn plan(me: &str, nodes: &[Node], connected: &[Ipv4Net]) -> Plan {
    let mut p = Plan::default();
    let mine: Vec<Ipv4Net> = nodes
        .iter()
        .filter(|n| n.name == me)
        .map(|n| n.pod_cidr)
        .collect();
    for n in nodes.iter().filter(|n| n.name != me) {
        if mine
            .iter()
            .any(|m| m.contains(&n.pod_cidr) || n.pod_cidr.contains(m))
        {
            p.skipped.push((
                n.name.clone(),
                format!("pod CIDR {} overlaps this node's", n.pod_cidr),
            ));
        } else if !connected
            .iter()
            .any(|s| s.prefix_len() < 32 && s.contains(&n.internal_ip))
        {
            p.skipped.push((
                n.name.clone(),
                format!(
                    "InternalIP {} is not on a link this node shares: it needs an overlay or BGP",
                    n.internal_ip
                ),
            ));
        } else if let Some(w) = p.routes.iter().find(|w| w.dst == n.pod_cidr) {
            p.skipped.push((
                n.name.clone(),
                format!("pod CIDR {} is already routed via {}", n.pod_cidr, w.via),
            ));
        } else {
            p.routes.push(Wanted {
                dst: n.pod_cidr,
                via: n.internal_ip,
            });
        }
    }
    p.routes.sort();
    p
}

/// Splits `observed` (routes carrying our protocol tag) against `wanted`:
/// routes to replace (new or changed) and routes to delete.
pub fn diff(wanted: &[Wanted], observed: &[Route]) -> (Vec<Wanted>, Vec<Route>) {
    let same = |w: &Wanted, r: &Route| {
        r.dst == w.dst.network() && r.dst_len == w.dst.prefix_len() && r.gateway == Some(w.via)
    };
    let replace = wanted
        .iter()
        .filter(|w| !observed.iter().any(|r| same(w, r)))
        .copied()
        .collect();
    let delete = observed
        .iter()
        .filter(|r| !wanted.iter().any(|w| same(w, r)))
        .copied()
        .collect();
    (replace, delete)
}

fn to_route(w: &Wanted) -> Route {
    Route {
        dst: w.dst.network(),
        dst_len: w.dst.prefix_len(),
        gateway: Some(w.via),
        oif: None,
        protocol: RTPROT_KEELSON_NODES,
        scope: c::RT_SCOPE_UNIVERSE,
        ..Default::default()
    }
}

/// Makes the kernel's cross-node routes (in `sock`'s namespace) match
/// `nodes`; returns the plan it applied.
pub fn reconcile(sock: &Socket, me: &str, nodes: &[Node]) -> Result<Plan, NlError> {
    let connected: Vec<Ipv4Net> = sock
        .addrs()?
        .iter()
        .filter_map(|a| Ipv4Net::new(a.addr, a.prefix).ok())
        .map(|n| n.trunc())
        .collect();
    let p = plan(me, nodes, &connected);
    let observed: Vec<Route> = sock
        .routes()?
        .into_iter()
        .filter(|r| r.protocol == RTPROT_KEELSON_NODES)
        .collect();
    let (replace, delete) = diff(&p.routes, &observed);
    for r in &delete {
        sock.delete_route(r)?;
    }
    for w in &replace {
        sock.replace_route(&to_route(w))?;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, cidr: &str) -> Node {
        Node {
            name: name.into(),
            internal_ip: ip.parse().unwrap(),
            pod_cidr: cidr.parse().unwrap(),
        }
    }

    #[test]
    fn plan_table() {
        let nodes = [
            node("a", "192.0.2.1", "10.244.0.0/24"),
            node("b", "192.0.2.2", "10.244.1.0/24"),
            node("c", "198.51.100.3", "10.244.2.0/24"),
            node("d", "192.0.2.4", "10.244.0.0/25"),
            node("e", "192.0.2.5", "10.244.1.0/24"),
        ];
        let p = plan("a", &nodes, &["192.0.2.0/24".parse().unwrap()]);
        assert_eq!(
            p.routes,
            vec![Wanted {
                dst: "10.244.1.0/24".parse().unwrap(),
                via: "192.0.2.2".parse().unwrap()
            }]
        );
        let skipped: Vec<&str> = p.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["c", "d", "e"]);
        assert!(p.skipped[0].1.contains("overlay or BGP"));
        // a /32 address says nothing about a shared link
        let p = plan("a", &nodes[..2], &["192.0.2.9/32".parse().unwrap()]);
        assert!(p.routes.is_empty());
    }

    #[test]
    fn diff_replaces_changed_and_deletes_stale() {
        let wanted = [
            Wanted {
                dst: "10.244.1.0/24".parse().unwrap(),
                via: "192.0.2.2".parse().unwrap(),
            },
            Wanted {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: "192.0.2.3".parse().unwrap(),
            },
        ];
        let mut kept = to_route(&wanted[0]);
        kept.oif = Some(2);
        let moved = to_route(&Wanted {
            dst: "10.244.2.0/24".parse().unwrap(),
            via: "192.0.2.9".parse().unwrap(),
        });
        let stale = to_route(&Wanted {
            dst: "10.244.9.0/24".parse().unwrap(),
            via: "192.0.2.9".parse().unwrap(),
        });
        let (replace, delete) = diff(&wanted, &[kept, moved, stale]);
        assert_eq!(replace, vec![wanted[1]]);
        assert_eq!(delete, vec![moved, stale]);
        // twice: nothing to do
        let (replace, delete) = diff(&wanted, &[kept, to_route(&wanted[1])]);
        assert!(replace.is_empty() && delete.is_empty());
    }
}
