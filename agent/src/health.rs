//! The agent's own health, part by part (pod network, Service proxy,
//! cluster DNS), shown where operators look: Node conditions, Node Events
//! and the node API's `/healthz` — never only in a log.
//!
//! Parts report through [`NodeHealth`]; everything that shows the health is
//! computed by the pure functions here ([`conditions`], [`transitions`],
//! [`healthz`]) from a [`Snapshot`].

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

/// A part of the agent whose failure an operator must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The pod network (a usable CNI configuration).
    Network,
    /// The Service proxy.
    ServiceProxy,
    /// Cluster DNS served by the agent.
    ClusterDns,
}

impl Part {
    /// The name on `/healthz` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Part::Network => "network",
            Part::ServiceProxy => "service-proxy",
            Part::ClusterDns => "cluster-dns",
        }
    }

    /// The Node condition of this part (the network's is `Ready` itself).
    fn condition(self) -> &'static str {
        match self {
            Part::Network => "Ready",
            Part::ServiceProxy => "ServiceProxyReady",
            Part::ClusterDns => "ClusterDNSReady",
        }
    }

    /// Reason stems of this part's conditions and Events.
    fn stem(self) -> &'static str {
        match self {
            Part::Network => "NetworkPlugin",
            Part::ServiceProxy => "ServiceProxy",
            Part::ClusterDns => "ClusterDNS",
        }
    }
}

/// How a part is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not ready yet, nothing wrong known.
    Starting,
    /// Doing its job.
    Ready,
    /// Not doing its job: `reason` is one CamelCase word, `message` says why.
    Failed {
        /// e.g. `NetworkPluginNotReady`, `ServiceProxyFailed`.
        reason: String,
        /// The error, for operators.
        message: String,
    },
}

/// Every part's state.
pub type Snapshot = BTreeMap<Part, State>;

/// The agent's health: parts report, the node status, Events and `/healthz`
/// read. Cheap to clone.
#[derive(Clone)]
pub struct NodeHealth {
    tx: Arc<watch::Sender<Snapshot>>,
}

impl Default for NodeHealth {
    fn default() -> Self {
        NodeHealth {
            tx: Arc::new(watch::channel(Snapshot::new()).0),
        }
    }
}

impl NodeHealth {
    /// Records `state` for `part` (a part appears when it first reports).
    pub fn set(&self, part: Part, state: State) {
        self.tx.send_if_modified(|s| {
            if s.get(&part) == Some(&state) {
                return false;
            }
            s.insert(part, state);
            true
        });
    }

    /// The current states.
    pub fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    /// Changes, as they happen.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }

    /// Whether the pod network is ready; `Err` says why not (the message the
    /// kubelet puts after `NetworkReady=false`).
    pub fn network(&self) -> Result<(), String> {
        match self.tx.borrow().get(&Part::Network) {
            None | Some(State::Ready) => Ok(()),
            Some(State::Starting) => Err(network_message("NetworkPluginNotReady", "starting")),
            Some(State::Failed { reason, message }) => Err(network_message(reason, message)),
        }
    }
}

/// The kubelet's words for a pod network that is not ready.
pub fn network_message(reason: &str, message: &str) -> String {
    format!(
        "container runtime network not ready: NetworkReady=false reason:{reason} message:{message}"
    )
}

/// One Node condition, without times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// e.g. `Ready`.
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// For operators.
    pub message: String,
}

/// The Node conditions the health calls for: `Ready` (False while the pod
/// network is not ready, as the kubelet reports it), and one condition per
/// other part that has reported, in part order.
pub fn conditions(s: &Snapshot) -> Vec<Condition> {
    let mut out = Vec::new();
    let ready = match s.get(&Part::Network) {
        None | Some(State::Ready) => Condition {
            type_: "Ready",
            status: "True",
            reason: "KeelsonReady".into(),
            message: "keelson agent is posting ready status".into(),
        },
        Some(State::Starting) => Condition {
            type_: "Ready",
            status: "False",
            reason: "KubeletNotReady".into(),
            message: network_message("NetworkPluginNotReady", "starting"),
        },
        Some(State::Failed { reason, message }) => Condition {
            type_: "Ready",
            status: "False",
            reason: "KubeletNotReady".into(),
            message: network_message(reason, message),
        },
    };
    out.push(ready);
    for (part, state) in s {
        if *part == Part::Network {
            continue;
        }
        let stem = part.stem();
        out.push(match state {
            State::Ready => Condition {
                type_: part.condition(),
                status: "True",
                reason: format!("{stem}Ready"),
                message: format!("{} is working", part.name()),
            },
            State::Starting => Condition {
                type_: part.condition(),
                status: "False",
                reason: format!("{stem}Starting"),
                message: format!("{} is starting", part.name()),
            },
            State::Failed { reason, message } => Condition {
                type_: part.condition(),
                status: "False",
                reason: reason.clone(),
                message: message.clone(),
            },
        });
    }
    out
}

/// A Node Event to post.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEvent {
    /// `Warning` for a failure, else `Normal`.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// For operators.
    pub message: String,
}

/// The Events a change from `old` to `new` calls for: a Warning when a part
/// fails (or fails differently), a Normal one when a part that had failed
/// is ready again. Starting after a failure (a restart) says nothing.
pub fn transitions(old: &Snapshot, new: &Snapshot) -> Vec<NodeEvent> {
    let mut out = Vec::new();
    for (part, state) in new {
        let before = old.get(part);
        match state {
            State::Failed { reason, message } => {
                if before != Some(state) {
                    out.push(NodeEvent {
                        warning: true,
                        reason: reason.clone(),
                        message: format!("{}: {message}", part.name()),
                    });
                }
            }
            State::Ready => {
                if matches!(before, Some(State::Failed { .. })) {
                    out.push(NodeEvent {
                        warning: false,
                        reason: format!("{}Ready", part.stem()),
                        message: format!("{} is working again", part.name()),
                    });
                }
            }
            State::Starting => {}
        }
    }
    out
}

/// Keeps the last failure of each part across restarts (`Starting`), so
/// that [`transitions`] sees a restart that fails the same way as no news
/// and a recovery as one.
pub fn remember_failures(last: &Snapshot, new: &Snapshot) -> Snapshot {
    let mut out = new.clone();
    for (part, state) in new {
        if *state == State::Starting
            && let Some(f @ State::Failed { .. }) = last.get(part)
        {
            out.insert(*part, f.clone());
        }
    }
    out
}

/// `/healthz`: (healthy, body). Healthy is 200 `ok`; otherwise each part on
/// a line the way the kubelet's checks print (`[+]name ok`, `[-]name failed:
/// why`) and `healthz check failed`. `verbose` prints the lines when healthy
/// too. A part that is starting is not a failure.
pub fn healthz(s: &Snapshot, verbose: bool) -> (bool, String) {
    let mut lines = vec!["[+]ping ok".to_string()];
    let mut healthy = true;
    for (part, state) in s {
        match state {
            State::Failed { reason, message } => {
                healthy = false;
                lines.push(format!("[-]{} failed: {reason}: {message}", part.name()));
            }
            State::Starting => lines.push(format!("[+]{} starting", part.name())),
            State::Ready => lines.push(format!("[+]{} ok", part.name())),
        }
    }
    if healthy && !verbose {
        return (true, "ok".into());
    }
    lines.push(if healthy {
        "healthz check passed".into()
    } else {
        "healthz check failed".into()
    });
    (healthy, lines.join("\n") + "\n")
}

/// Where the agent is, in one line per part for people: `Ok(())` when every
/// part in `expected` is ready; `Err` lists the failed parts
/// (`name: reason: message`), or the parts still starting if none failed.
pub fn summary(s: &Snapshot, expected: &[Part]) -> Result<(), Vec<String>> {
    let failed: Vec<String> = s
        .iter()
        .filter_map(|(part, state)| match state {
            State::Failed { reason, message } => {
                Some(format!("{}: {reason}: {message}", part.name()))
            }
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        return Err(failed);
    }
    let waiting: Vec<String> = expected
        .iter()
        .filter(|p| s.get(p) != Some(&State::Ready))
        .map(|p| format!("{}: starting", p.name()))
        .collect();
    if waiting.is_empty() {
        Ok(())
    } else {
        Err(waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(reason: &str, message: &str) -> State {
        State::Failed {
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn ready_follows_the_network_and_other_parts_get_their_own_condition() {
        let mut s = Snapshot::new();
        let c = conditions(&s);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].type_, c[0].status), ("Ready", "True"));

        s.insert(
            Part::Network,
            failed(
                "NetworkPluginNotReady",
                "no CNI configuration in /etc/cni/net.d",
            ),
        );
        s.insert(
            Part::ServiceProxy,
            failed(
                "ServiceProxyFailed",
                "nft not found (install the Debian package nftables)",
            ),
        );
        let c = conditions(&s);
        assert_eq!((c[0].type_, c[0].status), ("Ready", "False"));
        assert_eq!(c[0].reason, "KubeletNotReady");
        assert_eq!(
            c[0].message,
            "container runtime network not ready: NetworkReady=false \
             reason:NetworkPluginNotReady message:no CNI configuration in /etc/cni/net.d"
        );
        assert_eq!(
            (c[1].type_, c[1].status, c[1].reason.as_str()),
            ("ServiceProxyReady", "False", "ServiceProxyFailed")
        );
        assert!(c[1].message.contains("nftables"));

        s.insert(Part::Network, State::Ready);
        s.insert(Part::ServiceProxy, State::Ready);
        let c = conditions(&s);
        assert_eq!(c[0].status, "True");
        assert_eq!(
            (c[1].status, c[1].reason.as_str()),
            ("True", "ServiceProxyReady")
        );
    }

    #[test]
    fn events_on_failure_and_on_recovery_only() {
        let mut a = Snapshot::new();
        a.insert(Part::ServiceProxy, State::Starting);
        let mut b = a.clone();
        b.insert(
            Part::ServiceProxy,
            failed("ServiceProxyFailed", "nft missing"),
        );
        let ev = transitions(&a, &b);
        assert_eq!(ev.len(), 1);
        assert!(ev[0].warning);
        assert_eq!(ev[0].reason, "ServiceProxyFailed");
        assert_eq!(ev[0].message, "service-proxy: nft missing");
        // A restart (Starting), then the same failure: no new Event.
        let mut c = b.clone();
        c.insert(Part::ServiceProxy, State::Starting);
        let c = remember_failures(&b, &c);
        assert!(transitions(&b, &c).is_empty());
        assert!(transitions(&c, &b).is_empty());
        // Recovery: one Normal Event.
        let mut d = c.clone();
        d.insert(Part::ServiceProxy, State::Ready);
        let ev = transitions(&c, &d);
        assert_eq!(ev.len(), 1);
        assert!(!ev[0].warning);
        assert_eq!(ev[0].reason, "ServiceProxyReady");
        // Ready from the start: nothing.
        assert!(transitions(&a, &d).is_empty());
        // A different failure: a new Warning.
        let mut e = b.clone();
        e.insert(Part::ServiceProxy, failed("ServiceProxyFailed", "other"));
        assert_eq!(transitions(&b, &e).len(), 1);
    }

    #[test]
    fn healthz_fails_on_a_failed_part_only() {
        let mut s = Snapshot::new();
        s.insert(Part::ServiceProxy, State::Starting);
        assert_eq!(healthz(&s, false), (true, "ok".into()));
        let (ok, body) = healthz(&s, true);
        assert!(ok);
        assert!(body.contains("[+]service-proxy starting"), "{body}");
        s.insert(
            Part::ServiceProxy,
            failed("ServiceProxyFailed", "nft missing"),
        );
        let (ok, body) = healthz(&s, false);
        assert!(!ok);
        assert!(
            body.contains("[-]service-proxy failed: ServiceProxyFailed: nft missing"),
            "{body}"
        );
        assert!(body.ends_with("healthz check failed\n"), "{body}");
    }

    #[test]
    fn summary_names_failed_parts_first() {
        let all = [Part::Network, Part::ServiceProxy];
        let mut s = Snapshot::new();
        s.insert(Part::Network, State::Ready);
        assert_eq!(
            summary(&s, &all),
            Err(vec!["service-proxy: starting".to_string()])
        );
        s.insert(
            Part::ServiceProxy,
            failed("ServiceProxyFailed", "nft missing"),
        );
        assert_eq!(
            summary(&s, &all),
            Err(vec![
                "service-proxy: ServiceProxyFailed: nft missing".to_string()
            ])
        );
        s.insert(Part::ServiceProxy, State::Ready);
        assert_eq!(summary(&s, &all), Ok(()));
    }

    #[test]
    fn network_readiness_reads_the_network_part() {
        let h = NodeHealth::default();
        assert_eq!(h.network(), Ok(()));
        h.set(
            Part::Network,
            failed("NetworkPluginNotReady", "no pod CIDR"),
        );
        let e = h.network().unwrap_err();
        assert!(
            e.ends_with("reason:NetworkPluginNotReady message:no pod CIDR"),
            "{e}"
        );
        h.set(Part::Network, State::Ready);
        assert_eq!(h.network(), Ok(()));
    }
}
