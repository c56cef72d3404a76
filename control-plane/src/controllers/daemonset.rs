//! The DaemonSet controller: one daemon pod on every eligible node, as
//! upstream's daemon controller does it.
//!
//! A node is eligible when the pod template's node selector and required
//! node affinity match it and the pod (with the standard daemon
//! tolerations added) tolerates its NoSchedule and NoExecute taints. A pod
//! already on a node that only gained an untolerated NoSchedule taint keeps
//! running; an untolerated NoExecute taint removes it. Daemon pods are
//! created bound (`spec.nodeName`), and also carry the required node
//! affinity `metadata.name In [node]` that upstream gives them, so a
//! scheduler has nothing to do for them.
//!
//! Updates: pods carry the `controller-revision-hash` label (the hash of the
//! pod template). With `RollingUpdate`, old pods are replaced so that at most
//! `maxUnavailable` (default 1) nodes are without an available daemon pod,
//! or, with `maxSurge`, a new pod starts next to the old one, which goes once
//! the new one is available. `OnDelete` replaces nothing.
//!
//! Plan, then act: [`plan`] is pure (nodes, the DaemonSet's pods and the
//! time in; pods to create and delete and the status out); the executor
//! lists the DaemonSet's pods from the API at each sync (so its own recent
//! creations are never missed and no node gets two pods) and writes status
//! only when it changed.
//!
//! Not done: ControllerRevision objects (so no `kubectl rollout undo`),
//! adopting orphaned pods that match the selector, backoff for pods that
//! keep failing, and slow-start batches for creations.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use keelson_rules::taints::{
    self, TAINT_DISK_PRESSURE, TAINT_MEMORY_PRESSURE, TAINT_NETWORK_UNAVAILABLE, TAINT_NOT_READY,
    TAINT_PID_PRESSURE, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE,
};
use keelson_rules::{affinity, owners, readiness};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::runtime::{Controller, Key, SyncError};
use crate::informers::{Cache, Event, Informers};

pub const LABEL_REVISION_HASH: &str = "controller-revision-hash";

// ---------------------------------------------------------------------------
// Pure: hashing, eligibility, the plan.

fn fnv32a(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for b in *part {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// Upstream's `rand.SafeEncodeString`: no vowels, no look-alikes.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// The `controller-revision-hash` of a DaemonSet's pod template.
pub fn template_hash(ds: &DaemonSet) -> String {
    let template = serde_json::to_vec(&ds.spec.template).unwrap_or_default();
    let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
    let cc = collisions.map(|c| (c as u32).to_le_bytes());
    let h = match &cc {
        Some(cc) => fnv32a(&[&template, cc]),
        None => fnv32a(&[&template]),
    };
    safe_encode(&h.to_string())
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

/// Add the tolerations every daemon pod gets (upstream's
/// `AddOrUpdateDaemonPodTolerations`): NoExecute for not-ready and
/// unreachable (without seconds), NoSchedule for disk, memory and PID
/// pressure and unschedulable, and network-unavailable for host-network pods.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        toleration(TAINT_NOT_READY, "NoExecute"),
        toleration(TAINT_UNREACHABLE, "NoExecute"),
        toleration(TAINT_DISK_PRESSURE, "NoSchedule"),
        toleration(TAINT_MEMORY_PRESSURE, "NoSchedule"),
        toleration(TAINT_PID_PRESSURE, "NoSchedule"),
        toleration(TAINT_UNSCHEDULABLE, "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(toleration(TAINT_NETWORK_UNAVAILABLE, "NoSchedule"));
    }
    let list = spec.tolerations.get_or_insert_with(Vec::new);
    for t in wanted {
        // Same key, operator, value and effect: replace (drops any seconds).
        match list.iter_mut().find(|x| {
            x.key == t.key
                && x.operator.as_deref().unwrap_or("Equal") == "Exists"
                && x.value.as_deref().unwrap_or_default().is_empty()
                && x.effect == t.effect
        }) {
            Some(x) => *x = t,
            None => list.push(t),
        }
    }
}

/// The template's pod spec as daemon pods get it (tolerations added).
fn daemon_spec(ds: &DaemonSet) -> PodSpec {
    let mut spec = ds.spec.template.spec.clone().unwrap_or_default();
    add_daemon_tolerations(&mut spec);
    spec
}

/// Whether a daemon pod should run on `node`, and whether one already there
/// may keep running (upstream's `NodeShouldRunDaemonPod`).
pub fn node_should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty())
        && n != name
    {
        return (false, false);
    }
    if !affinity::pod_matches_node(spec, node) {
        return (false, false);
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let untolerated = |effects: &[&str]| {
        taints::find_untolerated(taints, tolerations, |t| {
            effects.contains(&t.effect.as_str())
        })
        .is_some()
    };
    if untolerated(&["NoSchedule", "NoExecute"]) {
        return (false, !untolerated(&["NoExecute"]));
    }
    (true, true)
}

/// The daemon pod for `node`: the template, the revision hash label, the
/// daemon tolerations, required affinity to exactly this node, and bound.
pub fn new_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds.spec.template.clone();
    let tmeta = template.metadata.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(LABEL_REVISION_HASH.into(), hash.into());
    let mut spec = daemon_spec(ds);
    let only_this_node = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            ..Default::default()
        }],
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution = Some(only_this_node);
    spec.node_name = Some(node.into());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                ds.metadata.name.as_deref().unwrap_or_default()
            )),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![owners::controller_owner_ref(
                "apps/v1",
                "DaemonSet",
                &ds.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The node a daemon pod is for: its `spec.nodeName`, else the node its
/// required affinity names.
fn target_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find_map(
            |r| match (r.key.as_str(), r.operator.as_str(), r.values.as_deref()) {
                ("metadata.name", "In", Some([v])) => Some(v.as_str()),
                _ => None,
            },
        )
}

fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn updated(pod: &Pod, hash: &str) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_REVISION_HASH))
        .map(String::as_str)
        == Some(hash)
}

/// Bound pods first, then oldest first, then by name
/// (upstream's `podByCreationTimestampAndPhase`).
fn sort_pods(pods: &mut [&Pod]) {
    pods.sort_by(|a, b| {
        let bound = |p: &Pod| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty())
        };
        bound(b)
            .cmp(&bound(a))
            .then_with(|| {
                let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                t(a).cmp(&t(b))
            })
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
}

/// The one new and one old pod on a node, skipping terminating ones;
/// `None` when there is more than one of either.
fn new_and_old<'a>(pods: &[&'a Pod], hash: &str) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let (mut new, mut old) = (None, None);
    for p in pods.iter().filter(|p| !deleting(p)) {
        let slot = if updated(p, hash) { &mut new } else { &mut old };
        if slot.is_some() {
            return None;
        }
        *slot = Some(*p);
    }
    Some((new, old))
}

/// `IntOrString` scaled against `total`, percentages rounded up.
fn scaled(v: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match v {
        None => default,
        Some(IntOrString::Int(n)) => (*n).max(0),
        Some(IntOrString::String(s)) => match s.strip_suffix('%').map(str::parse::<i64>) {
            Some(Ok(p)) => ((p.max(0) * i64::from(total) + 99) / 100) as i32,
            _ => s.parse::<i32>().map(|n| n.max(0)).unwrap_or(default),
        },
    }
}

/// What a sync does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Nodes to create a daemon pod on (bound, see [`new_pod`]).
    pub create_on: Vec<String>,
    /// Daemon pods to delete, by name.
    pub delete: Vec<String>,
    /// The status the DaemonSet should report (of the pods seen, before the actions).
    pub status: DaemonSetStatus,
    /// Sync again after this long (a pod becomes available through minReadySeconds).
    pub requeue_after: Option<Duration>,
}

/// Plan a DaemonSet sync from all nodes and the DaemonSet's own pods.
/// Pods on nodes that do not exist are left alone (upstream leaves them to
/// pod garbage collection).
pub fn plan(ds: &DaemonSet, nodes: &[&Node], pods: &[&Pod], now: Timestamp) -> Plan {
    let hash = template_hash(ds);
    let min_ready = ds.spec.min_ready_seconds.unwrap_or(0);
    let strategy = ds.spec.update_strategy.as_ref();
    let rolling = strategy
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let ru = strategy.and_then(|s| s.rolling_update.as_ref());
    let pod_spec = daemon_spec(ds);
    let available = |p: &Pod| readiness::is_pod_available(p, min_ready, now);

    let mut nodes: Vec<&Node> = nodes.to_vec();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        if let Some(n) = target_node(p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    for list in by_node.values_mut() {
        sort_pods(list);
    }
    let runs: Vec<(&str, bool, bool)> = nodes
        .iter()
        .map(|n| {
            let (run, cont) = node_should_run(&pod_spec, n);
            (n.metadata.name.as_deref().unwrap_or_default(), run, cont)
        })
        .collect();
    let want: Vec<&str> = runs.iter().filter(|r| r.1).map(|r| r.0).collect();
    let desired = want.len() as i32;
    let max_surge = if rolling {
        scaled(ru.and_then(|r| r.max_surge.as_ref()), desired, 0)
    } else {
        0
    };
    let mut max_unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), desired, 1);
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    let surge = rolling && max_surge > 0;
    let empty = Vec::new();
    let on = |n: &str| by_node.get(n).unwrap_or(&empty);

    // Manage: create where missing, delete failed, extra and misplaced pods.
    let mut create_on = Vec::new();
    let mut delete: Vec<String> = Vec::new();
    for (node, run, cont) in &runs {
        let pods = on(node);
        if *run && pods.is_empty() {
            create_on.push(node.to_string());
        } else if *cont {
            let mut running = Vec::new();
            for p in pods.iter().filter(|p| !deleting(p)) {
                if matches!(phase(p), "Failed" | "Succeeded") {
                    delete.push(name_of(p));
                } else {
                    running.push(*p);
                }
            }
            if !surge {
                delete.extend(running.iter().skip(1).map(|p| name_of(p)));
            } else {
                // Keep the oldest new pod, and the oldest old one only while
                // it is ready and the new one is not yet available.
                let (mut oldest_new, mut oldest_old) = (None, None);
                for p in running {
                    let slot = if updated(p, &hash) {
                        &mut oldest_new
                    } else {
                        &mut oldest_old
                    };
                    if slot.is_none() {
                        *slot = Some(p);
                    } else {
                        delete.push(name_of(p));
                    }
                }
                if let (Some(new), Some(old)) = (oldest_new, oldest_old)
                    && (!readiness::is_pod_ready(old) || available(new))
                {
                    delete.push(name_of(old));
                }
            }
        } else {
            delete.extend(pods.iter().filter(|p| !deleting(p)).map(|p| name_of(p)));
        }
    }

    // Rolling update.
    if rolling && !surge {
        let mut unavailable = 0;
        let (mut replace, mut candidates) = (Vec::new(), Vec::new());
        for node in &want {
            match new_and_old(on(node), &hash) {
                None | Some((None, None)) | Some((Some(_), Some(_))) => unavailable += 1,
                Some((Some(new), None)) => {
                    if !available(new) {
                        unavailable += 1;
                    }
                }
                Some((None, Some(old))) => {
                    if !available(old) {
                        replace.push(name_of(old));
                        unavailable += 1;
                    } else if unavailable < max_unavailable {
                        candidates.push(name_of(old));
                    }
                }
            }
        }
        let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
        delete.extend(replace);
        delete.extend(candidates.into_iter().take(room));
    } else if surge {
        let mut surging = 0;
        let (mut allowed, mut candidates) = (Vec::new(), Vec::new());
        for node in &want {
            match new_and_old(on(node), &hash) {
                None => surging += 1,
                Some((_, None)) => {}
                Some((None, Some(old))) => {
                    if !available(old) {
                        allowed.push(node.to_string());
                    } else if surging < max_surge {
                        candidates.push(node.to_string());
                    }
                }
                Some((Some(new), Some(old))) => {
                    if available(new) {
                        delete.push(name_of(old));
                    } else {
                        surging += 1;
                    }
                }
            }
        }
        let room = (max_surge - surging).clamp(0, candidates.len() as i32) as usize;
        create_on.extend(allowed);
        create_on.extend(candidates.into_iter().take(room));
    }
    let mut seen = std::collections::HashSet::new();
    delete.retain(|d| seen.insert(d.clone()));

    // Status, from the oldest pod on each node.
    let (mut current, mut misscheduled, mut ready, mut avail, mut updated_n) = (0, 0, 0, 0, 0);
    let mut requeue_after: Option<Duration> = None;
    for (node, run, _) in &runs {
        let pods = on(node);
        if !*run {
            if !pods.is_empty() {
                misscheduled += 1;
            }
            continue;
        }
        let Some(first) = pods.first() else { continue };
        current += 1;
        if readiness::is_pod_ready(first) {
            ready += 1;
            if available(first) {
                avail += 1;
            } else if let Some(Some(since)) = readiness::ready_since(first) {
                let due = since.as_second() + i64::from(min_ready) - now.as_second();
                let due = Duration::from_secs(due.max(0) as u64 + 1);
                requeue_after = Some(requeue_after.map_or(due, |d| d.min(due)));
            }
        }
        if updated(first, &hash) {
            updated_n += 1;
        }
    }
    let old = ds.status.clone().unwrap_or_default();
    let nonzero = |n: i32| (n != 0).then_some(n);
    let status = DaemonSetStatus {
        collision_count: old.collision_count,
        conditions: old.conditions,
        current_number_scheduled: current,
        desired_number_scheduled: desired,
        number_available: nonzero(avail),
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_unavailable: nonzero(desired - avail),
        observed_generation: ds.metadata.generation,
        updated_number_scheduled: nonzero(updated_n),
    };
    Plan {
        create_on,
        delete,
        status,
        requeue_after,
    }
}

/// A `LabelSelector` in the `?labelSelector=` form (an invalid one selects
/// nothing here: the API rejects such DaemonSets).
pub fn selector_query(sel: &LabelSelector) -> String {
    keelson_rules::selectors::LabelSelector::from_api(sel)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn status_patch(s: &DaemonSetStatus) -> Value {
    json!({"status": {
        "currentNumberScheduled": s.current_number_scheduled,
        "desiredNumberScheduled": s.desired_number_scheduled,
        "numberMisscheduled": s.number_misscheduled,
        "numberReady": s.number_ready,
        "numberAvailable": s.number_available,
        "numberUnavailable": s.number_unavailable,
        "updatedNumberScheduled": s.updated_number_scheduled,
        "observedGeneration": s.observed_generation,
    }})
}

// ---------------------------------------------------------------------------
// Executor.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {err}")]
    Api { op: String, err: kube::Error },
}

impl SyncError for Error {
    fn quiet(&self) -> bool {
        matches!(self, Error::Api { err: kube::Error::Api(s), .. } if s.code == 409)
    }
}

struct Ctx {
    client: kube::Client,
    daemonsets: Cache<DaemonSet>,
    nodes: Cache<Node>,
}

/// A DaemonSet is looked at again at least this often.
const RESYNC: Duration = Duration::from_secs(300);

async fn reconcile(key: &Key, ctx: &Ctx) -> Result<Option<Duration>, Error> {
    let Some(ds) = ctx.daemonsets.get(key) else {
        return Ok(None);
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let ns = key.namespace.clone();
    let name = key.name.clone();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let spec = &ds.spec;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&selector_query(&spec.selector));
    let pods = api
        .list(&lp)
        .await
        .map_err(|err| Error::Api {
            op: format!("list pods of daemon set {ns}/{name}"),
            err,
        })?
        .items;
    let pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| owners::controlled_by(&p.metadata, &uid))
        .collect();
    let nodes = ctx.nodes.state();
    let nodes: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let plan = plan(&ds, &nodes, &pods, Timestamp::now());
    let hash = template_hash(&ds);

    let mut first_err = None;
    let created: Vec<Result<(), Error>> = stream::iter(plan.create_on.clone())
        .map(|node| {
            let api = api.clone();
            let pod = new_pod(&ds, &node, &hash);
            let op = format!("create pod of daemon set {ns}/{name} on node {node}");
            async move {
                api.create(&PostParams::default(), &pod)
                    .await
                    .map(|_| ())
                    .map_err(|err| Error::Api { op, err })
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in created {
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    for pod in &plan.delete {
        match api.delete(pod, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::debug!(daemonset = %key, pod = %pod, "deleted daemon pod")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(err) => {
                first_err.get_or_insert(Error::Api {
                    op: format!("delete pod {ns}/{pod} of daemon set {name}"),
                    err,
                });
            }
        }
    }
    if ds.status.as_ref() != Some(&plan.status) {
        let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        if let Err(err) = dss
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(status_patch(&plan.status)),
            )
            .await
        {
            first_err.get_or_insert(Error::Api {
                op: format!("update status of daemon set {ns}/{name}"),
                err,
            });
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(Some(plan.requeue_after.unwrap_or(RESYNC)))
}

/// Whether a node change can change where daemon pods run: it came, went,
/// or changed its labels or taints.
fn node_changed(ev: &Event<Node>) -> bool {
    match ev {
        Event::Added(_) | Event::Deleted(_) => true,
        Event::Updated { old, new } => {
            old.metadata.labels != new.metadata.labels
                || old.spec.as_ref().map(|s| &s.taints) != new.spec.as_ref().map(|s| &s.taints)
        }
        Event::Synced => false,
    }
}

/// Run the controller until the task is aborted.
pub async fn run(ctx: Arc<super::Context>, informers: Arc<Informers>) {
    let mut c: Controller<Key> = Controller::new("daemonset");
    let daemonsets = c.watch(&informers.get::<DaemonSet>(), |ev, q| {
        if let Some(d) = ev.object() {
            q.add(Key::of(d.as_ref()));
        }
    });
    // Pods: their controlling DaemonSet.
    c.watch(&informers.get::<Pod>(), |ev, q| {
        for p in ev.old().into_iter().chain(ev.object()) {
            if let Some(o) = owners::controller_ref(&p.metadata).filter(|o| o.kind == "DaemonSet") {
                q.add(Key::new(
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    &o.name,
                ));
            }
        }
    });
    // Nodes: every DaemonSet, when a node comes, goes, or changes labels or taints.
    let nodes = {
        let daemonsets = daemonsets.clone();
        c.watch(&informers.get::<Node>(), move |ev, q| {
            if node_changed(ev) {
                for d in daemonsets.state() {
                    q.add(Key::of(d.as_ref()));
                }
            }
        })
    };
    let ctx = Arc::new(Ctx {
        client: ctx.client_as(super::identity::DAEMONSET),
        daemonsets,
        nodes,
    });
    c.run(4, move |key: Key| {
        let ctx = ctx.clone();
        async move { reconcile(&key, &ctx).await }
    })
    .await;
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(extra: Value) -> DaemonSet {
        let mut v = json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "ns", "uid": "ds-uid", "generation": 3},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                "template": {"metadata": {"labels": {"app": "agent"}},
                             "spec": {"containers": [{"name": "c", "image": "img:1"}]}},
            },
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        merge(a.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b,
        }
    }

    fn node(name: &str, extra: Value) -> Node {
        let mut v = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn now() -> Timestamp {
        "2024-01-01T00:10:00Z".parse().unwrap()
    }

    /// A daemon pod of `d` on `node`: `state` is "ready", "unready",
    /// "failed" or "deleting"; created at minute `minute`.
    fn pod_of(d: &DaemonSet, name: &str, node: &str, state: &str, minute: u32) -> Pod {
        let mut p = new_pod(d, node, &template_hash(d));
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            format!("2024-01-01T00:{minute:02}:00Z").parse().unwrap(),
        ));
        let ready = if state == "ready" { "True" } else { "False" };
        let phase = if state == "failed" {
            "Failed"
        } else {
            "Running"
        };
        p.status = Some(
            serde_json::from_value(json!({"phase": phase, "conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": "2024-01-01T00:05:00Z"}]}))
            .unwrap(),
        );
        if state == "deleting" {
            p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
        }
        p
    }

    struct Case {
        name: &'static str,
        ds: DaemonSet,
        nodes: Vec<Node>,
        /// Pods as (name, node, state, minute, of-template: old or new).
        pods: Vec<(&'static str, &'static str, &'static str, u32, bool)>,
        create: Vec<&'static str>,
        delete: Vec<&'static str>,
    }

    fn run_case(c: &Case) -> Plan {
        let old = ds(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "img:0"}]}}}}),
        );
        let pods: Vec<Pod> = c
            .pods
            .iter()
            .map(|(name, n, state, minute, new)| {
                pod_of(if *new { &c.ds } else { &old }, name, n, state, *minute)
            })
            .collect();
        let pods: Vec<&Pod> = pods.iter().collect();
        let nodes: Vec<&Node> = c.nodes.iter().collect();
        let p = plan(&c.ds, &nodes, &pods, now());
        assert_eq!(p.create_on, c.create, "case {}: create", c.name);
        assert_eq!(p.delete, c.delete, "case {}: delete", c.name);
        p
    }

    fn three() -> Vec<Node> {
        vec![
            node("n1", json!({})),
            node("n2", json!({})),
            node("n3", json!({})),
        ]
    }

    fn taint(key: &str, effect: &str) -> Value {
        json!({"spec": {"taints": [{"key": key, "effect": effect}]}})
    }

    #[test]
    fn plan_table() {
        let cases = vec![
            Case {
                name: "empty cluster",
                ds: ds(json!({})),
                nodes: vec![],
                pods: vec![],
                create: vec![],
                delete: vec![],
            },
            Case {
                name: "one pod per node",
                ds: ds(json!({})),
                nodes: three(),
                pods: vec![],
                create: vec!["n1", "n2", "n3"],
                delete: vec![],
            },
            Case {
                name: "settled: nothing to do",
                ds: ds(json!({})),
                nodes: three(),
                pods: vec![
                    ("a", "n1", "ready", 1, true),
                    ("b", "n2", "ready", 1, true),
                    ("c", "n3", "unready", 1, true),
                ],
                create: vec![],
                delete: vec![],
            },
            Case {
                name: "untolerated NoSchedule taint: no pod",
                ds: ds(json!({})),
                nodes: vec![
                    node("n1", json!({})),
                    node("n2", taint("dedicated", "NoSchedule")),
                ],
                pods: vec![],
                create: vec!["n1"],
                delete: vec![],
            },
            Case {
                name: "untolerated NoSchedule taint added later: the pod stays",
                ds: ds(json!({})),
                nodes: vec![node("n2", taint("dedicated", "NoSchedule"))],
                pods: vec![("a", "n2", "ready", 1, true)],
                create: vec![],
                delete: vec![],
            },
            Case {
                name: "untolerated NoExecute taint: the pod goes",
                ds: ds(json!({})),
                nodes: vec![node("n2", taint("dedicated", "NoExecute"))],
                pods: vec![("a", "n2", "ready", 1, true)],
                create: vec![],
                delete: vec!["a"],
            },
            Case {
                name: "tolerated taint and standard daemon tolerations",
                ds: ds(
                    json!({"spec": {"template": {"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}]}}}}),
                ),
                nodes: vec![
                    node(
                        "n1",
                        json!({"spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}}),
                    ),
                    node(
                        "n2",
                        json!({"spec": {"taints": [{"key": "dedicated", "value": "y", "effect": "NoSchedule"}]}}),
                    ),
                    node(
                        "n3",
                        json!({"spec": {"unschedulable": true, "taints": [
                        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                        {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}}),
                    ),
                ],
                pods: vec![],
                create: vec!["n1", "n3"],
                delete: vec![],
            },
            Case {
                name: "node selector and required affinity",
                ds: ds(json!({"spec": {"template": {"spec": {
                    "nodeSelector": {"disk": "ssd"},
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]},
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n4"]}]}]}}}}}}})),
                nodes: vec![
                    node(
                        "n1",
                        json!({"metadata": {"labels": {"disk": "ssd", "zone": "a"}}}),
                    ),
                    node(
                        "n2",
                        json!({"metadata": {"labels": {"disk": "hdd", "zone": "a"}}}),
                    ),
                    node(
                        "n3",
                        json!({"metadata": {"labels": {"disk": "ssd", "zone": "c"}}}),
                    ),
                    node("n4", json!({"metadata": {"labels": {"disk": "ssd"}}})),
                ],
                pods: vec![("x", "n2", "ready", 1, true)],
                create: vec!["n1", "n4"],
                delete: vec!["x"],
            },
            Case {
                name: "failed pod deleted, extra pods beyond the oldest deleted, terminating ones ignored",
                ds: ds(json!({})),
                nodes: three(),
                pods: vec![
                    ("f", "n1", "failed", 1, true),
                    ("b2", "n2", "ready", 2, true),
                    ("b1", "n2", "ready", 1, true),
                    ("c", "n3", "deleting", 1, true),
                ],
                create: vec![],
                delete: vec!["f", "b2"],
            },
            Case {
                name: "rolling update: one old pod at a time",
                ds: ds(json!({})),
                nodes: three(),
                pods: vec![
                    ("a", "n1", "ready", 1, false),
                    ("b", "n2", "ready", 1, false),
                    ("c", "n3", "ready", 1, false),
                ],
                create: vec![],
                delete: vec!["a"],
            },
            Case {
                name: "rolling update: waits while a node has no available pod",
                ds: ds(json!({})),
                nodes: three(),
                pods: vec![
                    ("a", "n1", "unready", 2, true),
                    ("b", "n2", "ready", 1, false),
                    ("c", "n3", "ready", 1, false),
                ],
                create: vec![],
                delete: vec![],
            },
            Case {
                name: "rolling update: waits for the old pod to finish terminating",
                ds: ds(json!({})),
                nodes: three(),
                pods: vec![
                    ("a", "n1", "deleting", 1, false),
                    ("b", "n2", "ready", 1, false),
                    ("c", "n3", "ready", 1, false),
                ],
                create: vec![],
                delete: vec![],
            },
            Case {
                name: "rolling update: unavailable old pods are replaced at once",
                ds: ds(json!({})),
                nodes: three(),
                pods: vec![
                    ("a", "n1", "unready", 1, false),
                    ("b", "n2", "unready", 1, false),
                    ("c", "n3", "ready", 1, false),
                ],
                create: vec![],
                delete: vec!["a", "b"],
            },
            Case {
                name: "rolling update: maxUnavailable 2 of 3 (67% rounds up)",
                ds: ds(
                    json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "67%"}}}}),
                ),
                nodes: three(),
                pods: vec![
                    ("a", "n1", "ready", 1, false),
                    ("b", "n2", "ready", 1, false),
                    ("c", "n3", "ready", 1, false),
                ],
                create: vec![],
                delete: vec!["a", "b", "c"],
            },
            Case {
                name: "OnDelete: nothing replaced",
                ds: ds(
                    json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}}),
                ),
                nodes: three(),
                pods: vec![
                    ("a", "n1", "ready", 1, false),
                    ("b", "n2", "ready", 1, false),
                    ("c", "n3", "ready", 1, false),
                ],
                create: vec![],
                delete: vec![],
            },
            Case {
                name: "surge: new pod next to the old one",
                ds: ds(
                    json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}}),
                ),
                nodes: three(),
                pods: vec![
                    ("a", "n1", "ready", 1, false),
                    ("b", "n2", "ready", 1, false),
                    ("c", "n3", "ready", 1, false),
                ],
                create: vec!["n1"],
                delete: vec![],
            },
            Case {
                name: "surge: old pod goes once the new one is available, next node surges",
                ds: ds(
                    json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}}),
                ),
                nodes: three(),
                pods: vec![
                    ("a", "n1", "ready", 1, false),
                    ("a2", "n1", "ready", 2, true),
                    ("b", "n2", "ready", 1, false),
                    ("c", "n3", "ready", 1, false),
                ],
                create: vec!["n2"],
                delete: vec!["a"],
            },
            Case {
                name: "surge: new pod not yet available holds the surge",
                ds: ds(
                    json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}}),
                ),
                nodes: three(),
                pods: vec![
                    ("a", "n1", "ready", 1, false),
                    ("a2", "n1", "unready", 2, true),
                    ("b", "n2", "ready", 1, false),
                    ("c", "n3", "ready", 1, false),
                ],
                create: vec![],
                delete: vec![],
            },
            Case {
                name: "pods on unknown nodes are left alone",
                ds: ds(json!({})),
                nodes: vec![node("n1", json!({}))],
                pods: vec![
                    ("a", "n1", "ready", 1, true),
                    ("z", "gone", "ready", 1, true),
                ],
                create: vec![],
                delete: vec![],
            },
        ];
        for c in &cases {
            run_case(c);
        }
    }

    #[test]
    fn status_counts() {
        let d = ds(json!({"spec": {"minReadySeconds": 600}}));
        let nodes = [
            node("n1", json!({})),
            node("n2", json!({})),
            node("n3", json!({})),
            node("n4", taint("dedicated", "NoExecute")),
            node("n5", json!({})),
        ];
        let old = ds(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "img:0"}]}}}}),
        );
        let mut early = pod_of(&d, "a", "n1", "ready", 1);
        // Ready since 00:05, needs 600 s: available at 00:15 (now is 00:10) -> not yet.
        early
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        let mut long_ready = pod_of(&d, "b", "n2", "ready", 1);
        long_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .last_transition_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2023-12-31T00:00:00Z".parse().unwrap(),
        ));
        let stale = pod_of(&old, "c", "n3", "unready", 1);
        let mis = pod_of(&d, "d", "n4", "ready", 1);
        let pods = [&early, &long_ready, &stale, &mis];
        let node_refs: Vec<&Node> = nodes.iter().collect();
        let p = plan(&d, &node_refs, &pods, now());
        let s = &p.status;
        assert_eq!(s.desired_number_scheduled, 4);
        assert_eq!(s.current_number_scheduled, 3);
        assert_eq!(s.number_ready, 2);
        assert_eq!(s.number_available, Some(1));
        assert_eq!(s.number_unavailable, Some(3));
        assert_eq!(s.updated_number_scheduled, Some(2));
        assert_eq!(s.number_misscheduled, 1);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(p.requeue_after, Some(Duration::from_secs(301)));
        assert_eq!(p.create_on, vec!["n5"]);
        // d is misscheduled; c is old and unavailable, so the rolling update replaces it.
        assert_eq!(p.delete, vec!["d", "c"]);
    }

    #[test]
    fn daemon_pod_shape() {
        let d = ds(
            json!({"spec": {"template": {"metadata": {"annotations": {"a": "b"}}, "spec": {
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}}}}}),
        );
        let p = new_pod(&d, "n7", "h1");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["metadata"]["generateName"], "agent-");
        assert_eq!(
            v["metadata"]["labels"],
            json!({"app": "agent", "controller-revision-hash": "h1"})
        );
        assert_eq!(v["metadata"]["annotations"], json!({"a": "b"}));
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "DaemonSet");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "ds-uid");
        assert_eq!(v["spec"]["nodeName"], "n7");
        assert_eq!(
            v["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
            json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n7"]}]}]})
        );
        let tols = &v["spec"]["tolerations"];
        assert_eq!(tols.as_array().unwrap().len(), 6, "{tols}");
        assert_eq!(
            tols[0],
            json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"})
        );
        assert!(tols.as_array().unwrap().contains(&json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"})));
        assert_eq!(target_node(&p), Some("n7"));
    }

    #[test]
    fn hash_follows_template_only() {
        let a = ds(json!({}));
        let b = ds(
            json!({"metadata": {"generation": 9}, "status": {"numberReady": 3, "currentNumberScheduled": 0, "desiredNumberScheduled": 0, "numberMisscheduled": 0}}),
        );
        let c = ds(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "img:2"}]}}}}),
        );
        assert_eq!(template_hash(&a), template_hash(&b));
        assert_ne!(template_hash(&a), template_hash(&c));
        assert!(template_hash(&a).chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn selector_query_form() {
        let sel: LabelSelector = serde_json::from_value(json!({"matchLabels": {"app": "x"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]}, {"key": "legacy", "operator": "DoesNotExist"}]})).unwrap();
        assert_eq!(selector_query(&sel), "app=x,tier in (a,b),!legacy");
    }
}
