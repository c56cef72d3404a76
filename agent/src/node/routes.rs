//! Cross-node pod routes: watches Nodes and keeps a route to every other
//! node's pod CIDR via its InternalIP (for nodes on a shared link), through
//! [`keelson_cni::routes::reconcile`] in the agent's own network namespace.
//!
//! [`nodes_from`] (Node objects -> route inputs) is pure; [`run`] is the thin
//! loop that reflects Nodes and reconciles on every change, plus a periodic
//! resync so a route removed by hand comes back.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use keelson_cni::routes::{Node as RouteNode, Plan};
use keelson_informers::{Event, Informers};
use kube::runtime::reflector::Store;

/// How often routes are reconciled even when no Node changed.
pub const RESYNC: Duration = Duration::from_secs(30);

/// Errors reconciling routes; each names the node.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The netlink reconcile failed.
    #[error("reconcile cross-node routes on node {node}: {source}")]
    Netlink {
        /// This node's name.
        node: String,
        /// The netlink error.
        #[source]
        source: keelson_host::rtnetlink::NlError,
    },
    /// The reconcile thread could not be started or died.
    #[error("reconcile cross-node routes on node {node}: worker thread {what}")]
    Thread {
        /// This node's name.
        node: String,
        /// What went wrong.
        what: String,
    },
}

/// The route input of one Node: its InternalIP (IPv4) and spec.podCIDR.
/// None when either is missing or not IPv4.
pub fn route_node(n: &Node) -> Option<RouteNode> {
    let name = n.metadata.name.clone()?;
    let cidr = n.spec.as_ref()?.pod_cidr.as_deref()?;
    let pod_cidr = cidr.parse().ok()?;
    let internal_ip: Ipv4Addr = n
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| match a.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        })?;
    Some(RouteNode {
        name,
        internal_ip,
        pod_cidr,
    })
}

/// Route inputs of all nodes, sorted by name (stable, so equal sets compare
/// equal). Other nodes whose InternalIP is a loopback address or this node's
/// own (agents sharing one host's network, as in tests) are left out: no
/// route can go via them.
pub fn nodes_from<'a>(me: &str, nodes: impl IntoIterator<Item = &'a Node>) -> Vec<RouteNode> {
    let mut v: Vec<RouteNode> = nodes.into_iter().filter_map(route_node).collect();
    let my_ip = v.iter().find(|n| n.name == me).map(|n| n.internal_ip);
    v.retain(|n| n.name == me || !(n.internal_ip.is_loopback() || Some(n.internal_ip) == my_ip));
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Reconciles once, on a short-lived OS thread (netlink sockets are
/// synchronous and stay off the tokio workers).
pub async fn reconcile_once(me: &str, nodes: Vec<RouteNode>) -> Result<Plan, RoutesError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let me_owned = me.to_string();
    std::thread::Builder::new()
        .name("keelson-routes".into())
        .spawn(move || {
            let r = keelson_host::rtnetlink::Socket::new()
                .and_then(|s| keelson_cni::routes::reconcile(&s, &me_owned, &nodes));
            let _ = tx.send(r);
        })
        .map_err(|e| RoutesError::Thread {
            node: me.to_string(),
            what: format!("spawn: {e}"),
        })?;
    let r = rx.await.map_err(|_| RoutesError::Thread {
        node: me.to_string(),
        what: "exited without an answer".into(),
    })?;
    r.map_err(|source| RoutesError::Netlink {
        node: me.to_string(),
        source,
    })
}

/// Follows the Nodes (the shared informer) and keeps the cross-node routes
/// in sync until aborted. Failures are logged and retried on the next change
/// or resync.
pub async fn run(informers: Informers, me: String) {
    let nodes = informers.cluster::<Node>();
    let reader = nodes.store();
    let mut stream = nodes.subscribe();
    let mut resync = tokio::time::interval(RESYNC);
    let mut last: Option<Vec<RouteNode>> = None;
    let mut last_skipped: Vec<(String, String)> = Vec::new();
    // The store is complete once the initial list is done (InitDone).
    let mut listed = false;
    loop {
        let forced = tokio::select! {
            ev = stream.next() => match ev {
                Some(Event::Init | Event::InitApply(_)) => continue,
                Some(Event::InitDone) => {
                    listed = true;
                    false
                }
                Some(Event::Apply(_) | Event::Delete(_)) => false,
                None => return,
            },
            _ = resync.tick() => true,
        };
        if !listed {
            continue;
        }
        let nodes = current(&me, &reader);
        if !forced && last.as_ref() == Some(&nodes) {
            continue;
        }
        match reconcile_once(&me, nodes.clone()).await {
            Ok(plan) => {
                if last.as_ref() != Some(&nodes) {
                    tracing::info!(node = %me, routes = ?plan.routes, "cross-node routes reconciled");
                }
                if plan.skipped != last_skipped {
                    for (n, why) in &plan.skipped {
                        tracing::warn!(node = %me, "no route to pods of node {n}: {why}");
                    }
                    last_skipped = plan.skipped;
                }
                last = Some(nodes);
            }
            Err(e) => {
                tracing::warn!("{e}");
                last = None;
            }
        }
    }
}

fn current(me: &str, reader: &Store<Node>) -> Vec<RouteNode> {
    let all = reader.state();
    nodes_from(me, all.iter().map(|n| n.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn nodes_from_keeps_nodes_with_ipv4_internal_ip_and_pod_cidr() {
        let nodes = [
            node(json!({
                "metadata": {"name": "b"},
                "spec": {"podCIDR": "10.244.2.0/24"},
                "status": {"addresses": [
                    {"type": "Hostname", "address": "b"},
                    {"type": "InternalIP", "address": "fd00::2"},
                    {"type": "InternalIP", "address": "192.0.2.2"},
                ]},
            })),
            node(json!({
                "metadata": {"name": "a"},
                "spec": {"podCIDR": "10.244.1.0/24"},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]},
            })),
            // no podCIDR
            node(json!({
                "metadata": {"name": "c"},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.3"}]},
            })),
            // no IPv4 InternalIP
            node(json!({
                "metadata": {"name": "d"},
                "spec": {"podCIDR": "10.244.4.0/24"},
                "status": {"addresses": [{"type": "ExternalIP", "address": "192.0.2.4"}]},
            })),
            // unparsable CIDR
            node(json!({
                "metadata": {"name": "e"},
                "spec": {"podCIDR": "nonsense"},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.5"}]},
            })),
        ];
        let got = nodes_from("a", &nodes);
        assert_eq!(
            got,
            vec![
                RouteNode {
                    name: "a".into(),
                    internal_ip: "192.0.2.1".parse().unwrap(),
                    pod_cidr: "10.244.1.0/24".parse().unwrap(),
                },
                RouteNode {
                    name: "b".into(),
                    internal_ip: "192.0.2.2".parse().unwrap(),
                    pod_cidr: "10.244.2.0/24".parse().unwrap(),
                },
            ]
        );
        // and the plan from "a" over a shared /24 routes b's pods via b
        let plan = keelson_cni::routes::plan("a", &got, &["192.0.2.0/24".parse().unwrap()]);
        assert_eq!(plan.routes.len(), 1);
        assert_eq!(plan.routes[0].via, "192.0.2.2".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn nodes_from_leaves_out_others_on_loopback_or_on_my_address() {
        let n = |name: &str, ip: &str, cidr: &str| {
            node(json!({
                "metadata": {"name": name},
                "spec": {"podCIDR": cidr},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
            }))
        };
        let nodes = [
            n("me", "127.0.0.1", "10.244.1.0/24"),
            n("lo", "127.0.0.2", "10.244.2.0/24"),
            n("same", "127.0.0.1", "10.244.3.0/24"),
        ];
        let names: Vec<String> = nodes_from("me", &nodes)
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["me"]);
        let nodes = [
            n("me", "192.0.2.1", "10.244.1.0/24"),
            n("twin", "192.0.2.1", "10.244.2.0/24"),
            n("other", "192.0.2.2", "10.244.3.0/24"),
        ];
        let names: Vec<String> = nodes_from("me", &nodes)
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["me", "other"]);
    }
}
