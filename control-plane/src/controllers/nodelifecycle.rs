//! Node lifecycle: notices nodes that stopped heartbeating, marks them
//! Unknown and taints them, and evicts their pods once the pods' tolerations
//! run out (kube-controller-manager's node lifecycle controller and its
//! NoExecute taint manager, plus pod GC's force deletion of pods stuck
//! terminating on unreachable nodes).
//!
//! - A node shows a sign of life when its Lease (`kube-node-lease/<node>`)
//!   gets a new `renewTime` or its Ready condition a new
//!   `lastHeartbeatTime`. As upstream, the time of a sign of life is when
//!   *we* observed it on our injected [`Clock`] (first sight counts), so
//!   clocks of other machines never enter. A node without one for longer
//!   than `node_monitor_grace_period` gets Ready, MemoryPressure,
//!   DiskPressure and PIDPressure (those present) set to Unknown
//!   ("NodeStatusUnknown"), its ready pods marked not ready, and the taint
//!   `node.kubernetes.io/unreachable:NoExecute`. Ready=False from the kubelet
//!   gives `node.kubernetes.io/not-ready:NoExecute` instead, Ready=True none.
//!   An Unknown condition stays until the kubelet posts again.
//! - A pod bound to a node with NoExecute taints is deleted when a taint is
//!   not tolerated, or `tolerationSeconds` after the taint's `timeAdded`;
//!   a toleration without seconds keeps it forever. A pod with no toleration
//!   for the not-ready / unreachable keys gets one of
//!   `default_toleration_seconds` (upstream's DefaultTolerationSeconds
//!   admission plugin does this at creation; we do it here).
//! - A terminating pod on an unreachable node whose deletion grace has run
//!   out is force-deleted (grace 0): its kubelet is not there to finish it.
//!
//! [`Tracker::tick`] (observations + the pure [`plan`]) runs every [`TICK`]
//! over the shared informers' caches of Nodes, Leases (those in
//! `kube-node-lease`) and Pods; the executor applies the actions, each
//! pinned to the resourceVersion or uid it was planned against, so a race
//! costs one tick. The work queue has one key, the whole cluster: a pass
//! looks at every node (as upstream's `monitorNodeHealth` does), and its
//! reconcile asks to run again after a tick.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
pub use keelson_rules::taints::{TAINT_NOT_READY, TAINT_UNREACHABLE};
use keelson_rules::{readiness, taints};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;

use super::runtime::{Controller, Key};
use crate::informers::{Cache, Informers};

pub const NO_EXECUTE: &str = "NoExecute";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// How often the controller looks: eviction timing is this accurate.
pub const TICK: Duration = Duration::from_secs(1);

/// Conditions the kubelet owns, set to Unknown when it goes silent.
const KUBELET_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Wall-clock time, injected.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to (tests, simulations).
pub struct ManualClock(std::sync::Mutex<Timestamp>);

impl ManualClock {
    pub fn starting_at(t: Timestamp) -> ManualClock {
        ManualClock(std::sync::Mutex::new(t))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let d = SignedDuration::try_from(by).unwrap_or(SignedDuration::MAX);
        *t = t.saturating_add(d).unwrap_or(*t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub grace: Duration,
    pub default_toleration_seconds: i64,
}

impl Settings {
    pub fn from_config(c: &super::ControllerConfig) -> Settings {
        Settings {
            grace: c.node_monitor_grace_period,
            default_toleration_seconds: c.default_toleration_seconds,
        }
    }
}

/// What the controller observed of a node beyond the object itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// When (our clock) the node last showed a sign of life.
    pub heartbeat_at: Timestamp,
    /// When we first saw each NoExecute taint that lacks `timeAdded`.
    pub taints_seen: BTreeMap<String, Timestamp>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Replace the node's status conditions.
    SetConditions {
        node: String,
        resource_version: String,
        conditions: Vec<NodeCondition>,
    },
    /// Replace the node's taints.
    SetTaints {
        node: String,
        resource_version: String,
        taints: Vec<Taint>,
    },
    /// Replace a pod's status conditions (Ready turned False).
    MarkPodNotReady {
        namespace: String,
        name: String,
        resource_version: String,
        conditions: Vec<PodCondition>,
    },
    /// Delete a pod (the taint manager's eviction).
    Evict {
        namespace: String,
        name: String,
        uid: String,
        node: String,
    },
    /// Delete a terminating pod at once, with grace period 0.
    ForceDelete {
        namespace: String,
        name: String,
        uid: String,
        node: String,
    },
}

// ---------------------------------------------------------------------------
// Tolerations (pure).

/// The pod's tolerations plus the defaults for the not-ready and
/// unreachable NoExecute taints when it has none for them.
pub fn with_default_tolerations(
    tolerations: &[Toleration],
    default_seconds: i64,
) -> Vec<Toleration> {
    let mut out = tolerations.to_vec();
    for key in [TAINT_NOT_READY, TAINT_UNREACHABLE] {
        let has = tolerations.iter().any(|t| {
            let k = t.key.as_deref().unwrap_or("");
            (k.is_empty() || k == key)
                && matches!(t.effect.as_deref().unwrap_or(""), "" | NO_EXECUTE)
        });
        if !has {
            out.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(NO_EXECUTE.into()),
                toleration_seconds: Some(default_seconds),
                value: None,
            });
        }
    }
    out
}

/// NoExecute taints, each with the time it was added.
pub type TimedTaints<'a> = Vec<(&'a Taint, Timestamp)>;

/// When a pod must leave a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    Now,
    At(Timestamp),
    Never,
}

/// When a pod with `tolerations` (defaults included) must leave a node
/// with these NoExecute taints, each with the time it was added.
pub fn eviction(tolerations: &[Toleration], taints: &[(&Taint, Timestamp)]) -> Eviction {
    let mut at: Option<Timestamp> = None;
    for (taint, added) in taints {
        match tolerations.iter().find(|t| taints::tolerates(t, taint)) {
            None => return Eviction::Now,
            Some(t) => {
                if let Some(secs) = t.toleration_seconds {
                    let when = added
                        .saturating_add(SignedDuration::from_secs(secs.max(0)))
                        .unwrap_or(Timestamp::MAX);
                    at = Some(at.map_or(when, |a| a.min(when)));
                }
            }
        }
    }
    at.map_or(Eviction::Never, Eviction::At)
}

// ---------------------------------------------------------------------------
// The planner (pure).

fn taint_id(t: &Taint) -> String {
    format!(
        "{}={}:{}",
        t.key,
        t.value.as_deref().unwrap_or(""),
        t.effect
    )
}

fn is_managed(t: &Taint) -> bool {
    t.effect == NO_EXECUTE && (t.key == TAINT_UNREACHABLE || t.key == TAINT_NOT_READY)
}

fn condition_status<'a>(conds: &'a [NodeCondition], type_: &str) -> Option<&'a str> {
    conds
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// Everything to do now. `observed` has an entry for every node (a node
/// without one counts as just seen).
pub fn plan(
    nodes: &[&Node],
    observed: &HashMap<String, Observed>,
    pods: &[&Pod],
    now: Timestamp,
    settings: &Settings,
) -> Vec<Action> {
    let grace = SignedDuration::try_from(settings.grace).unwrap_or(SignedDuration::MAX);
    let mut actions = Vec::new();
    // Per node: stale, and its NoExecute taints with the time each was added.
    let mut state: HashMap<&str, (bool, TimedTaints<'_>)> = HashMap::new();
    for node in nodes {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        let rv = node.metadata.resource_version.clone().unwrap_or_default();
        let obs = observed.get(name);
        let stale = obs.is_some_and(|o| now.duration_since(o.heartbeat_at) > grace);
        let conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let ready = if stale {
            let mut changed = false;
            let mut conds = conditions.clone();
            for c in conds.iter_mut() {
                if KUBELET_CONDITIONS.contains(&c.type_.as_str()) && c.status != "Unknown" {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(Time(now));
                    changed = true;
                }
            }
            if condition_status(&conds, "Ready").is_none() {
                conds.push(NodeCondition {
                    type_: "Ready".into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_transition_time: Some(Time(now)),
                    last_heartbeat_time: None,
                });
                changed = true;
            }
            if changed {
                actions.push(Action::SetConditions {
                    node: name.to_string(),
                    resource_version: rv.clone(),
                    conditions: conds,
                });
            }
            "Unknown"
        } else {
            condition_status(&conditions, "Ready").unwrap_or("")
        };
        let want = match ready {
            "Unknown" => Some(TAINT_UNREACHABLE),
            "False" => Some(TAINT_NOT_READY),
            _ => None,
        };
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let mut new_taints: Vec<Taint> = taints
            .iter()
            .filter(|t| !is_managed(t) || Some(t.key.as_str()) == want)
            .cloned()
            .collect();
        if let Some(key) = want
            && !new_taints.iter().any(|t| is_managed(t) && t.key == key)
        {
            new_taints.push(Taint {
                key: key.into(),
                effect: NO_EXECUTE.into(),
                time_added: Some(Time(now)),
                value: None,
            });
        }
        if new_taints != taints {
            actions.push(Action::SetTaints {
                node: name.to_string(),
                resource_version: rv,
                taints: new_taints,
            });
        }
        // Evictions follow the taints the node has now, not the planned ones.
        let no_execute: TimedTaints<'_> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.effect == NO_EXECUTE)
            .map(|t| {
                let added = t
                    .time_added
                    .as_ref()
                    .map(|t| t.0)
                    .or_else(|| obs.and_then(|o| o.taints_seen.get(&taint_id(t)).copied()))
                    .unwrap_or(now);
                (t, added)
            })
            .collect();
        state.insert(name, (stale, no_execute));
    }
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        let Some((stale, taints)) = state.get(node) else {
            continue;
        };
        let (Some(ns), Some(name), Some(uid)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
            pod.metadata.uid.as_deref(),
        ) else {
            continue;
        };
        if let Some(deleting) = &pod.metadata.deletion_timestamp {
            let unreachable = taints.iter().any(|(t, _)| t.key == TAINT_UNREACHABLE);
            if unreachable && deleting.0 <= now {
                actions.push(Action::ForceDelete {
                    namespace: ns.into(),
                    name: name.into(),
                    uid: uid.into(),
                    node: node.into(),
                });
            }
            continue;
        }
        if taints.is_empty() && !*stale {
            continue;
        }
        let tolerations = with_default_tolerations(
            pod.spec
                .as_ref()
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or(&[]),
            settings.default_toleration_seconds,
        );
        let due = match eviction(&tolerations, taints) {
            Eviction::Now => true,
            Eviction::At(t) => t <= now,
            Eviction::Never => false,
        };
        if due {
            actions.push(Action::Evict {
                namespace: ns.into(),
                name: name.into(),
                uid: uid.into(),
                node: node.into(),
            });
        } else if *stale && readiness::is_pod_ready(pod) {
            let conditions = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|mut c| {
                    if c.type_ == "Ready" && c.status != "False" {
                        c.status = "False".into();
                        c.last_transition_time = Some(Time(now));
                    }
                    c
                })
                .collect();
            actions.push(Action::MarkPodNotReady {
                namespace: ns.into(),
                name: name.into(),
                resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
                conditions,
            });
        }
    }
    actions
}

// ---------------------------------------------------------------------------
// Observations over time.

/// The signs of life last seen of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Signs {
    lease_renew: Option<Timestamp>,
    ready_heartbeat: Option<Timestamp>,
}

/// Keeps [`Observed`] up to date from successive looks at the caches.
#[derive(Default)]
pub struct Tracker {
    signs: HashMap<String, Signs>,
    observed: HashMap<String, Observed>,
}

impl Tracker {
    /// Record what `nodes` and their `leases` show at `now`.
    pub fn observe(&mut self, nodes: &[&Node], leases: &[&Lease], now: Timestamp) {
        let renew: HashMap<&str, Option<Timestamp>> = leases
            .iter()
            .filter_map(|l| {
                let name = l.metadata.name.as_deref()?;
                Some((
                    name,
                    l.spec
                        .as_ref()
                        .and_then(|s| s.renew_time.as_ref())
                        .map(|t| t.0),
                ))
            })
            .collect();
        let mut seen = Vec::new();
        for node in nodes {
            let Some(name) = node.metadata.name.as_deref() else {
                continue;
            };
            seen.push(name);
            let signs = Signs {
                lease_renew: renew.get(name).copied().flatten(),
                ready_heartbeat: node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .and_then(|c| c.last_heartbeat_time.as_ref())
                    .map(|t| t.0),
            };
            let obs = self
                .observed
                .entry(name.to_string())
                .or_insert_with(|| Observed {
                    heartbeat_at: now,
                    taints_seen: BTreeMap::new(),
                });
            let alive = match self.signs.get(name) {
                None => true,
                Some(old) => {
                    (signs.lease_renew.is_some() && signs.lease_renew != old.lease_renew)
                        || (signs.ready_heartbeat.is_some()
                            && signs.ready_heartbeat != old.ready_heartbeat)
                }
            };
            if alive {
                obs.heartbeat_at = now;
            }
            self.signs.insert(name.to_string(), signs);
            let ids: Vec<String> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .filter(|t| t.effect == NO_EXECUTE && t.time_added.is_none())
                .map(taint_id)
                .collect();
            obs.taints_seen.retain(|id, _| ids.contains(id));
            for id in ids {
                obs.taints_seen.entry(id).or_insert(now);
            }
        }
        self.observed.retain(|n, _| seen.contains(&n.as_str()));
        self.signs.retain(|n, _| seen.contains(&n.as_str()));
    }

    /// Observe, then plan.
    pub fn tick(
        &mut self,
        nodes: &[&Node],
        leases: &[&Lease],
        pods: &[&Pod],
        now: Timestamp,
        settings: &Settings,
    ) -> Vec<Action> {
        self.observe(nodes, leases, now);
        plan(nodes, &self.observed, pods, now, settings)
    }
}

// ---------------------------------------------------------------------------
// The executor.

#[derive(Debug, thiserror::Error)]
#[error("{op} {name}: {source}")]
pub struct WriteError {
    op: &'static str,
    name: String,
    #[source]
    source: kube::Error,
}

/// 404 and 409 mean the world moved since the plan: the next tick sees it.
fn raced(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}

struct Executor {
    client: kube::Client,
    /// Node resourceVersions after our own writes in this pass.
    node_rv: HashMap<String, String>,
}

impl Executor {
    async fn execute(&mut self, actions: Vec<Action>) {
        self.node_rv.clear();
        for a in actions {
            if let Err(e) = self.apply(a).await {
                if raced(&e.source) {
                    tracing::debug!(error = %e, "node lifecycle");
                } else {
                    tracing::warn!(error = %e, "node lifecycle");
                }
            }
        }
    }

    fn node_rv(&self, node: &str, planned: String) -> String {
        self.node_rv.get(node).cloned().unwrap_or(planned)
    }

    async fn apply(&mut self, a: Action) -> Result<(), WriteError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let pp = PatchParams::default();
        match a {
            Action::SetConditions {
                node,
                resource_version,
                conditions,
            } => {
                let patch = json!({
                    "metadata": {"resourceVersion": self.node_rv(&node, resource_version)},
                    "status": {"conditions": conditions},
                });
                tracing::info!(node = %node, "node lifecycle: node stopped posting status, marking it Unknown");
                let n = nodes
                    .patch_status(&node, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(|source| WriteError {
                        op: "set conditions of node",
                        name: node.clone(),
                        source,
                    })?;
                if let Some(rv) = n.metadata.resource_version {
                    self.node_rv.insert(node, rv);
                }
            }
            Action::SetTaints {
                node,
                resource_version,
                taints,
            } => {
                let value = if taints.is_empty() {
                    json!(null)
                } else {
                    json!(taints)
                };
                let patch = json!({
                    "metadata": {"resourceVersion": self.node_rv(&node, resource_version)},
                    "spec": {"taints": value},
                });
                let keys: Vec<&str> = taints.iter().map(|t| t.key.as_str()).collect();
                tracing::info!(node = %node, taints = ?keys, "node lifecycle: updating taints");
                let n = nodes
                    .patch(&node, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(|source| WriteError {
                        op: "set taints of node",
                        name: node.clone(),
                        source,
                    })?;
                if let Some(rv) = n.metadata.resource_version {
                    self.node_rv.insert(node, rv);
                }
            }
            Action::MarkPodNotReady {
                namespace,
                name,
                resource_version,
                conditions,
            } => {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                let patch = json!({
                    "metadata": {"resourceVersion": resource_version},
                    "status": {"conditions": conditions},
                });
                pods.patch_status(&name, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(|source| WriteError {
                        op: "mark not ready pod",
                        name: format!("{namespace}/{name}"),
                        source,
                    })?;
            }
            Action::Evict {
                namespace,
                name,
                uid,
                node,
            } => {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                tracing::info!(pod = %format!("{namespace}/{name}"), node = %node, "node lifecycle: evicting pod from tainted node");
                pods.delete(&name, &dp).await.map_err(|source| WriteError {
                    op: "evict pod",
                    name: format!("{namespace}/{name}"),
                    source,
                })?;
            }
            Action::ForceDelete {
                namespace,
                name,
                uid,
                node,
            } => {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                tracing::info!(pod = %format!("{namespace}/{name}"), node = %node, "node lifecycle: force-deleting pod terminating on unreachable node");
                pods.delete(&name, &dp).await.map_err(|source| WriteError {
                    op: "force-delete pod",
                    name: format!("{namespace}/{name}"),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

/// The one key of the node lifecycle's work queue: the whole cluster.
fn cluster_key() -> Key {
    Key::cluster("nodes")
}

struct Ctx {
    nodes: Cache<Node>,
    leases: Cache<Lease>,
    pods: Cache<Pod>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    /// One pass at a time (the queue never runs a key twice at once).
    state: tokio::sync::Mutex<(Tracker, Executor)>,
}

/// One pass: observe, plan, act. Write failures are logged; the next tick
/// retries them from the state it sees then.
async fn pass(ctx: &Ctx) -> Result<Option<Duration>, String> {
    let (n, l, p) = (
        ctx.nodes.state(),
        ctx.leases
            .filter(|l| l.metadata.namespace.as_deref() == Some(LEASE_NAMESPACE)),
        ctx.pods.state(),
    );
    let n: Vec<&Node> = n.iter().map(|x| x.as_ref()).collect();
    let l: Vec<&Lease> = l.iter().map(|x| x.as_ref()).collect();
    let p: Vec<&Pod> = p.iter().map(|x| x.as_ref()).collect();
    let mut state = ctx.state.lock().await;
    let (tracker, exec) = &mut *state;
    let actions = tracker.tick(&n, &l, &p, ctx.clock.now(), &ctx.settings);
    if !actions.is_empty() {
        exec.execute(actions).await;
    }
    Ok(Some(TICK))
}

pub async fn run(ctx: Arc<super::Context>, informers: Arc<Informers>) {
    run_with_clock(ctx, informers, Arc::new(SystemClock)).await
}

pub async fn run_with_clock(
    ctx: Arc<super::Context>,
    informers: Arc<Informers>,
    clock: Arc<dyn Clock>,
) {
    let mut c: Controller<Key> = Controller::new("node-lifecycle");
    let nodes = informers.get::<Node>();
    let leases = informers.get::<Lease>();
    let pods = informers.get::<Pod>();
    let ctx = Arc::new(Ctx {
        nodes: c.wait_for(nodes.what().into(), nodes.cache()),
        leases: c.wait_for(leases.what().into(), leases.cache()),
        pods: c.wait_for(pods.what().into(), pods.cache()),
        clock,
        settings: Settings::from_config(&ctx.config),
        state: tokio::sync::Mutex::new((
            Tracker::default(),
            Executor {
                client: ctx.client_as(super::identity::NODE),
                node_rv: HashMap::new(),
            },
        )),
    });
    c.queue().add(cluster_key());
    c.run(1, move |_key: Key| {
        let ctx = ctx.clone();
        async move { pass(&ctx).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn settings() -> Settings {
        Settings {
            grace: Duration::from_secs(40),
            default_toleration_seconds: 300,
        }
    }

    fn node(name: &str, ready: Option<&str>, taints: Value) -> Node {
        let conditions = match ready {
            Some(r) => json!([
                {"type": "Ready", "status": r, "reason": "KubeletReady", "lastHeartbeatTime": "2023-11-14T22:13:20Z"},
                {"type": "MemoryPressure", "status": "False"},
                {"type": "NetworkUnavailable", "status": "False"},
            ]),
            None => json!([]),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "resourceVersion": "7"},
            "spec": {"taints": taints},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    fn taint(key: &str, at: i64) -> Value {
        json!({"key": key, "effect": "NoExecute", "timeAdded": Time(ts(at))})
    }

    fn pod(name: &str, node: &str, tolerations: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": "3"},
            "spec": {"nodeName": node, "containers": [], "tolerations": tolerations},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    fn deleting(mut p: Pod, at: i64) -> Pod {
        p.metadata.deletion_timestamp = Some(Time(ts(at)));
        p
    }

    fn tol(key: &str, op: &str, effect: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.to_string()),
            operator: Some(op.into()),
            effect: (!effect.is_empty()).then(|| effect.to_string()),
            toleration_seconds: secs,
            value: None,
        }
    }

    fn observed(heartbeat: i64) -> HashMap<String, Observed> {
        ["a", "b"]
            .into_iter()
            .map(|n| {
                (
                    n.to_string(),
                    Observed {
                        heartbeat_at: ts(heartbeat),
                        taints_seen: BTreeMap::new(),
                    },
                )
            })
            .collect()
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::SetConditions {
                    node, conditions, ..
                } => format!(
                    "conditions {node} {}",
                    conditions
                        .iter()
                        .map(|c| format!("{}={}", c.type_, c.status))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Action::SetTaints { node, taints, .. } => format!(
                    "taints {node} [{}]",
                    taints
                        .iter()
                        .map(|t| t.key.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Action::MarkPodNotReady { name, .. } => format!("notready {name}"),
                Action::Evict { name, .. } => format!("evict {name}"),
                Action::ForceDelete { name, .. } => format!("force {name}"),
            })
            .collect()
    }

    #[test]
    fn default_tolerations() {
        let keys = |ts: Vec<Toleration>| -> Vec<(String, Option<i64>)> {
            ts.into_iter()
                .map(|t| (t.key.unwrap_or_default(), t.toleration_seconds))
                .collect()
        };
        assert_eq!(
            keys(with_default_tolerations(&[], 300)),
            vec![
                (TAINT_NOT_READY.into(), Some(300)),
                (TAINT_UNREACHABLE.into(), Some(300))
            ]
        );
        let own = tol(TAINT_UNREACHABLE, "Exists", "NoExecute", Some(3600));
        assert_eq!(
            keys(with_default_tolerations(std::slice::from_ref(&own), 300)),
            vec![
                (TAINT_UNREACHABLE.into(), Some(3600)),
                (TAINT_NOT_READY.into(), Some(300))
            ]
        );
        // A toleration of everything, or of the key for any effect, counts.
        assert_eq!(
            with_default_tolerations(&[tol("", "Exists", "", None)], 300).len(),
            1
        );
        assert_eq!(
            with_default_tolerations(&[tol(TAINT_NOT_READY, "Exists", "", None)], 300).len(),
            2
        );
        // One for NoSchedule only does not.
        assert_eq!(
            with_default_tolerations(&[tol(TAINT_NOT_READY, "Exists", "NoSchedule", None)], 300)
                .len(),
            3
        );
    }

    #[test]
    fn eviction_times() {
        let t = |key: &str| Taint {
            key: key.into(),
            effect: NO_EXECUTE.into(),
            value: None,
            time_added: None,
        };
        let (u, n, x) = (t(TAINT_UNREACHABLE), t(TAINT_NOT_READY), t("example.com/x"));
        let defaults = with_default_tolerations(&[], 300);
        let cases: Vec<(&str, Vec<Toleration>, TimedTaints<'_>, Eviction)> = vec![
            ("no taints", defaults.clone(), vec![], Eviction::Never),
            (
                "default toleration",
                defaults.clone(),
                vec![(&u, ts(10))],
                Eviction::At(ts(310)),
            ),
            (
                "untolerated taint",
                defaults.clone(),
                vec![(&u, ts(10)), (&x, ts(20))],
                Eviction::Now,
            ),
            (
                "earliest of two",
                defaults.clone(),
                vec![(&u, ts(10)), (&n, ts(0))],
                Eviction::At(ts(300)),
            ),
            (
                "toleration without seconds",
                vec![tol(TAINT_UNREACHABLE, "Exists", "NoExecute", None)],
                vec![(&u, ts(10))],
                Eviction::Never,
            ),
            (
                "negative seconds is now",
                vec![tol(TAINT_UNREACHABLE, "Exists", "NoExecute", Some(-5))],
                vec![(&u, ts(10))],
                Eviction::At(ts(10)),
            ),
            (
                "forever for one, seconds for the other",
                vec![
                    tol(TAINT_UNREACHABLE, "Exists", "", None),
                    tol("example.com/x", "Exists", "", Some(60)),
                ],
                vec![(&u, ts(10)), (&x, ts(20))],
                Eviction::At(ts(80)),
            ),
        ];
        for (name, tols, taints, want) in cases {
            assert_eq!(eviction(&tols, &taints), want, "{name}");
        }
    }

    #[test]
    fn node_table() {
        let s = settings();
        let cases: Vec<(&str, Node, i64, Vec<&str>)> = vec![
            (
                "fresh and ready",
                node("a", Some("True"), json!(null)),
                10,
                vec![],
            ),
            (
                "stale: kubelet conditions Unknown, unreachable taint",
                node("a", Some("True"), json!(null)),
                50,
                vec![
                    "conditions a Ready=Unknown,MemoryPressure=Unknown,NetworkUnavailable=False",
                    "taints a [node.kubernetes.io/unreachable]",
                ],
            ),
            (
                "stale, already handled",
                node("a", Some("Unknown"), json!([taint(TAINT_UNREACHABLE, 45)])),
                50,
                vec!["conditions a Ready=Unknown,MemoryPressure=Unknown,NetworkUnavailable=False"],
            ),
            (
                "stale, never posted status",
                node("a", None, json!(null)),
                50,
                vec![
                    "conditions a Ready=Unknown",
                    "taints a [node.kubernetes.io/unreachable]",
                ],
            ),
            (
                "fresh lease but still Unknown: left alone",
                node("a", Some("Unknown"), json!([taint(TAINT_UNREACHABLE, 45)])),
                10,
                vec![],
            ),
            (
                "ready again: our taint goes, others stay",
                node(
                    "a",
                    Some("True"),
                    json!([taint(TAINT_UNREACHABLE, 45), taint("example.com/x", 0)]),
                ),
                10,
                vec!["taints a [example.com/x]"],
            ),
            (
                "not ready: not-ready taint replaces unreachable",
                node("a", Some("False"), json!([taint(TAINT_UNREACHABLE, 45)])),
                10,
                vec!["taints a [node.kubernetes.io/not-ready]"],
            ),
        ];
        for (name, n, now, want) in cases {
            let got = plan(&[&n], &observed(0), &[], ts(now), &s);
            assert_eq!(kinds(&got), want, "{name}");
        }
        // The "already handled" case only had MemoryPressure left to do.
        let mut done = node("a", Some("Unknown"), json!([taint(TAINT_UNREACHABLE, 45)]));
        done.status.as_mut().unwrap().conditions.as_mut().unwrap()[1].status = "Unknown".into();
        assert_eq!(plan(&[&done], &observed(0), &[], ts(50), &s), vec![]);
    }

    #[test]
    fn stale_condition_details() {
        let n = node("a", Some("True"), json!(null));
        let got = plan(&[&n], &observed(0), &[], ts(50), &settings());
        let Action::SetConditions {
            conditions,
            resource_version,
            ..
        } = &got[0]
        else {
            panic!("{got:?}")
        };
        assert_eq!(resource_version, "7");
        let ready = &conditions[0];
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(
            ready.message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );
        assert_eq!(ready.last_transition_time, Some(Time(ts(50))));
        // The heartbeat stays what the kubelet last posted.
        assert_eq!(
            ready.last_heartbeat_time,
            n.status.as_ref().unwrap().conditions.as_ref().unwrap()[0].last_heartbeat_time
        );
        let Action::SetTaints { taints, .. } = &got[1] else {
            panic!("{got:?}")
        };
        assert_eq!(taints[0].time_added, Some(Time(ts(50))));
    }

    #[test]
    fn pod_table() {
        let s = Settings {
            grace: Duration::from_secs(5),
            default_toleration_seconds: 5,
        };
        // Node "a" tainted unreachable at 100 (stale), "b" healthy, "c" not ready since 100.
        let a = node("a", Some("Unknown"), json!([taint(TAINT_UNREACHABLE, 100)]));
        let b = node("b", Some("True"), json!(null));
        let c = node("c", Some("False"), json!([taint(TAINT_NOT_READY, 100)]));
        let mut obs = observed(94);
        obs.insert(
            "c".into(),
            Observed {
                heartbeat_at: ts(103),
                taints_seen: BTreeMap::new(),
            },
        );
        obs.get_mut("b").unwrap().heartbeat_at = ts(103);
        let long = json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3600}]);
        let forever = json!([{"operator": "Exists"}]);
        let cases: Vec<(&str, Pod, i64, Vec<&str>)> = vec![
            (
                "default toleration not yet up: marked not ready",
                pod("p", "a", json!(null)),
                103,
                vec!["notready p"],
            ),
            (
                "default toleration up",
                pod("p", "a", json!(null)),
                105,
                vec!["evict p"],
            ),
            (
                "long toleration",
                pod("p", "a", long.clone()),
                105,
                vec!["notready p"],
            ),
            (
                "long toleration, up",
                pod("p", "a", long),
                3700,
                vec!["evict p"],
            ),
            (
                "tolerates everything forever",
                pod("p", "a", forever),
                100_000,
                vec!["notready p"],
            ),
            ("healthy node", pod("p", "b", json!(null)), 105, vec![]),
            (
                "not-ready node: evicted, not marked",
                pod("p", "c", json!(null)),
                105,
                vec!["evict p"],
            ),
            (
                "not-ready node: waits",
                pod("p", "c", json!(null)),
                104,
                vec![],
            ),
            ("unknown node", pod("p", "zz", json!(null)), 105, vec![]),
            (
                "terminating within grace",
                deleting(pod("p", "a", json!(null)), 110),
                105,
                vec![],
            ),
            (
                "terminating past grace on unreachable node",
                deleting(pod("p", "a", json!(null)), 104),
                105,
                vec!["force p"],
            ),
            (
                "terminating on not-ready node: kubelet finishes it",
                deleting(pod("p", "c", json!(null)), 100),
                105,
                vec![],
            ),
        ];
        for (name, p, now, want) in cases {
            let got = plan(&[&a, &b, &c], &obs, &[&p], ts(now), &s);
            let pod_actions: Vec<String> = kinds(&got)
                .into_iter()
                .filter(|k| !k.starts_with("conditions") && !k.starts_with("taints"))
                .collect();
            assert_eq!(pod_actions, want, "{name}");
        }
    }

    #[test]
    fn untolerated_user_taint_evicts_now_and_untimed_taints_count_from_first_sight() {
        let s = settings();
        let n = node(
            "a",
            Some("True"),
            json!([{"key": "example.com/drain", "effect": "NoExecute"}]),
        );
        let p = pod("p", "a", json!(null));
        assert_eq!(
            kinds(&plan(&[&n], &observed(0), &[&p], ts(1), &s)),
            vec!["evict p"]
        );
        let tolerant = pod(
            "p",
            "a",
            json!([{"key": "example.com/drain", "operator": "Exists", "tolerationSeconds": 30}]),
        );
        let mut t = Tracker::default();
        assert!(t.tick(&[&n], &[], &[&tolerant], ts(0), &s).is_empty());
        assert!(t.tick(&[&n], &[], &[&tolerant], ts(29), &s).is_empty());
        assert_eq!(
            kinds(&t.tick(&[&n], &[], &[&tolerant], ts(30), &s)),
            vec!["evict p"]
        );
    }

    fn lease(name: &str, renew: Timestamp) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
            "spec": {"holderIdentity": name, "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(renew)},
        }))
        .unwrap()
    }

    /// Applies actions the way the API server would, for the timeline test.
    fn apply(nodes: &mut [Node], pods: &mut Vec<Pod>, actions: &[Action], now: Timestamp) {
        for a in actions {
            match a {
                Action::SetConditions {
                    node, conditions, ..
                } => {
                    let n = nodes
                        .iter_mut()
                        .find(|n| n.metadata.name.as_deref() == Some(node))
                        .unwrap();
                    n.status.as_mut().unwrap().conditions = Some(conditions.clone());
                }
                Action::SetTaints { node, taints, .. } => {
                    let n = nodes
                        .iter_mut()
                        .find(|n| n.metadata.name.as_deref() == Some(node))
                        .unwrap();
                    n.spec.as_mut().unwrap().taints = Some(taints.clone());
                }
                Action::MarkPodNotReady {
                    name, conditions, ..
                } => {
                    let p = pods
                        .iter_mut()
                        .find(|p| p.metadata.name.as_deref() == Some(name))
                        .unwrap();
                    p.status.as_mut().unwrap().conditions = Some(conditions.clone());
                }
                Action::Evict { name, .. } => {
                    // Bound and running: graceful deletion, 2 s.
                    let p = pods
                        .iter_mut()
                        .find(|p| p.metadata.name.as_deref() == Some(name))
                        .unwrap();
                    p.metadata.deletion_timestamp = Some(Time(
                        now.saturating_add(SignedDuration::from_secs(2)).unwrap(),
                    ));
                }
                Action::ForceDelete { name, .. } => {
                    pods.retain(|p| p.metadata.name.as_deref() != Some(name))
                }
            }
        }
    }

    /// The whole timeline, one tick per second on a manual clock:
    /// heartbeats stop, the node goes Unknown after the grace period, is
    /// tainted, its pods are evicted after their toleration and
    /// force-deleted after their grace.
    #[test]
    fn timeline() {
        let s = Settings {
            grace: Duration::from_secs(5),
            default_toleration_seconds: 5,
        };
        let clock = ManualClock::starting_at(ts(0));
        let mut nodes = vec![
            node("a", Some("True"), json!(null)),
            node("b", Some("True"), json!(null)),
        ];
        let long = json!([{"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3600}]);
        let mut pods = vec![
            pod("a1", "a", json!(null)),
            pod("a2", "a", long),
            pod("b1", "b", json!(null)),
        ];
        let mut tracker = Tracker::default();
        let mut renew_a = clock.now();
        let mut events: Vec<(u64, String)> = Vec::new();
        for second in 0..30u64 {
            let now = clock.now();
            // Node b heartbeats every 2 s throughout; a stops after 4 s.
            if second % 2 == 0 && second <= 4 {
                renew_a = now;
            }
            let leases = [
                lease("a", renew_a),
                lease(
                    "b",
                    if second % 2 == 0 {
                        now
                    } else {
                        now - SignedDuration::from_secs(1)
                    },
                ),
            ];
            let actions = {
                let n: Vec<&Node> = nodes.iter().collect();
                let l: Vec<&Lease> = leases.iter().collect();
                let p: Vec<&Pod> = pods.iter().collect();
                tracker.tick(&n, &l, &p, now, &s)
            };
            for k in kinds(&actions) {
                events.push((second, k));
            }
            apply(&mut nodes, &mut pods, &actions, now);
            clock.advance(TICK);
        }
        let first = |prefix: &str| {
            events
                .iter()
                .find(|(_, k)| k.starts_with(prefix))
                .map(|(t, _)| *t)
        };
        // Last sign of life at 4 s: Unknown and tainted once more than 5 s passed.
        assert_eq!(first("conditions a"), Some(10), "{events:?}");
        assert_eq!(
            first("taints a [node.kubernetes.io/unreachable]"),
            Some(10),
            "{events:?}"
        );
        assert_eq!(first("notready a1"), Some(10), "{events:?}");
        // Default toleration of 5 s from the taint's timeAdded.
        assert_eq!(first("evict a1"), Some(15), "{events:?}");
        // Grace of 2 s, then force deletion.
        assert_eq!(first("force a1"), Some(17), "{events:?}");
        assert_eq!(first("evict a2"), None, "{events:?}");
        assert!(events.iter().all(|(_, k)| !k.contains(" b")), "{events:?}");
        let names: Vec<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        assert_eq!(names, vec!["a2", "b1"]);
        // Every action was done once: the plan is idempotent.
        let mut ks: Vec<&String> = events.iter().map(|(_, k)| k).collect();
        ks.sort();
        ks.dedup();
        assert_eq!(ks.len(), events.len(), "{events:?}");
    }
}
