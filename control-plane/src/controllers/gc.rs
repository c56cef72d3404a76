//! Garbage collector: deletes objects whose owners are gone and carries out
//! foreground and orphan deletion, through `metadata.ownerReferences`.
//!
//! As kube-controller-manager's garbagecollector, in two halves:
//!
//! - [`plan`] (pure) looks at every object the collector knows (uid, owner
//!   references, finalizers, deletion state) and returns [`Action`]s:
//!   - a dependent whose every owner is gone is deleted (Background); one
//!     whose remaining owners are all waiting for a foreground deletion is
//!     deleted in the foreground; one that still has a live owner only loses
//!     its references to gone and foreground-deleting owners;
//!   - an owner being deleted with the `orphan` finalizer has its references
//!     removed from every dependent, then the finalizer removed;
//!   - an owner being deleted with the `foregroundDeletion` finalizer keeps
//!     it until no dependent is left, then the finalizer is removed (the API
//!     then removes the owner).
//! - [`run`] (the executor) discovers every resource type that can be
//!   listed, watched and deleted, subscribes to the metadata of each through
//!   the shared informers (types other consumers watch share their watch),
//!   feeding an in-memory graph, and after each burst of events (and every
//!   [`RESYNC`]) plans and applies the actions. Its work queue has one key,
//!   the whole graph: a change queues a pass [`BATCH`] later, so a burst of
//!   changes makes one pass. Watches lag one another (a Pod's watch may show
//!   it before its ReplicaSet's watch shows the ReplicaSet), so an owner the
//!   graph lacks is confirmed gone by a live read before anything is
//!   deleted or unlinked because of it. Every write carries the uid and
//!   resourceVersion it was planned against; a conflict or a 404 just waits
//!   for the next pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::discovery::{Discovery, Scope, verbs};
use serde_json::json;

use super::runtime::{Controller, Key, WorkQueue};
use crate::informers::{Informers, MetaEvent};

/// Finalizer of an owner deleted with propagationPolicy=Foreground.
pub const FOREGROUND: &str = "foregroundDeletion";
/// Finalizer of an owner deleted with propagationPolicy=Orphan.
pub const ORPHAN: &str = "orphan";

/// A full pass runs at least this often, to retry what failed.
pub const RESYNC: Duration = Duration::from_secs(15);
/// Discovery runs again this often to pick up new resource types.
const REDISCOVER: Duration = Duration::from_secs(60);
/// A live read that found an owner present is trusted this long.
const PRESENT_TTL: Duration = Duration::from_secs(10);
/// A successful write is not repeated for the same object version this long.
const DONE_TTL: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The planner (pure).

/// What the collector knows of one object.
#[derive(Clone, Debug, PartialEq)]
pub struct Obj {
    /// Index of the object's resource type in the executor's table.
    pub resource: usize,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub owners: Vec<OwnerReference>,
    pub finalizers: Vec<String>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.deletionGracePeriodSeconds`: a pod in graceful deletion
    /// has more than 0 and waits for its kubelet.
    pub deletion_grace_seconds: Option<i64>,
}

impl Obj {
    /// The collector's view of an object's metadata; `None` without a uid.
    pub fn from_meta(resource: usize, m: &ObjectMeta) -> Option<Obj> {
        Some(Obj {
            resource,
            namespace: m.namespace.clone().filter(|n| !n.is_empty()),
            name: m.name.clone()?,
            uid: m.uid.clone().filter(|u| !u.is_empty())?,
            resource_version: m.resource_version.clone().unwrap_or_default(),
            owners: m.owner_references.clone().unwrap_or_default(),
            finalizers: m.finalizers.clone().unwrap_or_default(),
            deleting: m.deletion_timestamp.is_some(),
            deletion_grace_seconds: m.deletion_grace_period_seconds,
        })
    }

    fn target(&self) -> Target {
        Target {
            resource: self.resource,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            resource_version: self.resource_version.clone(),
        }
    }

    fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }
}

/// The object an action writes, and the version it was planned against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub resource: usize,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Delete the target (preconditions: uid and resourceVersion), once
    /// every owner in `confirm_absent` is confirmed gone by a live read.
    Delete {
        target: Target,
        propagation: Propagation,
        confirm_absent: Vec<OwnerReference>,
    },
    /// Replace the target's ownerReferences with `keep`, once every owner
    /// in `confirm_absent` is confirmed gone.
    SetOwners {
        target: Target,
        keep: Vec<OwnerReference>,
        confirm_absent: Vec<OwnerReference>,
    },
    /// Replace the target's finalizers with `keep` (the API removes a
    /// deleting object whose last finalizer goes).
    SetFinalizers { target: Target, keep: Vec<String> },
}

impl Action {
    pub fn target(&self) -> &Target {
        match self {
            Action::Delete { target, .. }
            | Action::SetOwners { target, .. }
            | Action::SetFinalizers { target, .. } => target,
        }
    }
}

/// How a dependent sees one of its owners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OwnerState {
    /// Not in the graph (or in another namespace: an invalid reference).
    Absent,
    /// Exists and keeps the dependent.
    Solid,
    /// Being deleted in the foreground: waits for its dependents to go.
    Waiting,
    /// Being deleted with the orphan finalizer: lets its dependents go free.
    Orphaning,
}

fn owner_state(objects: &BTreeMap<String, Obj>, dependent: &Obj, r: &OwnerReference) -> OwnerState {
    if r.uid == dependent.uid {
        return OwnerState::Solid;
    }
    match objects.get(&r.uid) {
        None => OwnerState::Absent,
        // A namespaced owner must live in its dependent's namespace.
        Some(o) if o.namespace.is_some() && o.namespace != dependent.namespace => {
            OwnerState::Absent
        }
        Some(o) if o.deleting && o.has_finalizer(ORPHAN) => OwnerState::Orphaning,
        Some(o) if o.deleting && o.has_finalizer(FOREGROUND) => OwnerState::Waiting,
        Some(_) => OwnerState::Solid,
    }
}

/// Everything the collector should do now, given every object it knows
/// (keyed by uid). Objects come out in uid order, dependents before owners.
pub fn plan(objects: &BTreeMap<String, Obj>) -> Vec<Action> {
    let mut actions = Vec::new();
    // Owners (by uid) that still have at least one dependent.
    let mut has_dependents: HashSet<&str> = HashSet::new();
    for d in objects.values() {
        if d.owners.is_empty() {
            continue;
        }
        let states: Vec<(&OwnerReference, OwnerState)> = d
            .owners
            .iter()
            .map(|r| (r, owner_state(objects, d, r)))
            .collect();
        for (r, s) in &states {
            if *s != OwnerState::Absent && r.uid != d.uid {
                has_dependents.insert(r.uid.as_str());
            }
        }
        let of = |want: OwnerState| -> Vec<OwnerReference> {
            states
                .iter()
                .filter(|(_, s)| *s == want)
                .map(|(r, _)| (*r).clone())
                .collect()
        };
        let (solid, absent, waiting, orphaning) = (
            of(OwnerState::Solid),
            of(OwnerState::Absent),
            of(OwnerState::Waiting),
            of(OwnerState::Orphaning),
        );
        // Orphaning owners let go first, whatever else holds the dependent.
        if !orphaning.is_empty() {
            let keep = d
                .owners
                .iter()
                .filter(|r| !orphaning.iter().any(|o| o.uid == r.uid))
                .cloned()
                .collect();
            actions.push(Action::SetOwners {
                target: d.target(),
                keep,
                confirm_absent: vec![],
            });
            continue;
        }
        if d.deleting {
            // On its way out already.
            continue;
        }
        if !solid.is_empty() {
            // A live owner keeps it: drop dangling references and those to
            // foreground-deleting owners, which must not wait for it.
            if !absent.is_empty() || !waiting.is_empty() {
                actions.push(Action::SetOwners {
                    target: d.target(),
                    keep: solid,
                    confirm_absent: absent,
                });
            }
        } else if !waiting.is_empty() {
            actions.push(Action::Delete {
                target: d.target(),
                propagation: Propagation::Foreground,
                confirm_absent: absent,
            });
        } else {
            actions.push(Action::Delete {
                target: d.target(),
                propagation: Propagation::Background,
                confirm_absent: absent,
            });
        }
    }
    for o in objects.values() {
        if !o.deleting || !(o.has_finalizer(ORPHAN) || o.has_finalizer(FOREGROUND)) {
            continue;
        }
        if has_dependents.contains(o.uid.as_str()) {
            continue;
        }
        // A pod in graceful deletion waits for its kubelet: dropping its
        // last finalizer now would cut its grace period short.
        if o.deletion_grace_seconds.unwrap_or(0) > 0 {
            continue;
        }
        let keep = o
            .finalizers
            .iter()
            .filter(|f| *f != ORPHAN && *f != FOREGROUND)
            .cloned()
            .collect();
        actions.push(Action::SetFinalizers {
            target: o.target(),
            keep,
        });
    }
    actions
}

// ---------------------------------------------------------------------------
// The graph the watches keep.

#[derive(Default)]
struct Source {
    objects: HashMap<String, Obj>,
    synced: bool,
}

/// One change from an informer, already reduced to the collector's view.
/// (A relist arrives as the changes it implies: the informer works them out.)
enum Change {
    Apply(Obj),
    Delete(String),
    Synced,
}

#[derive(Default)]
struct Graph {
    sources: Vec<Source>,
}

impl Graph {
    /// Record a change; false when it cannot change the plan (only the
    /// resourceVersion moved, as with every Lease renewal).
    fn apply(&mut self, source: usize, change: Change) -> bool {
        let s = &mut self.sources[source];
        match change {
            Change::Apply(o) => {
                let relevant = s.objects.get(&o.uid).is_none_or(|old| {
                    Obj {
                        resource_version: o.resource_version.clone(),
                        ..old.clone()
                    } != o
                });
                s.objects.insert(o.uid.clone(), o);
                relevant
            }
            Change::Delete(uid) => s.objects.remove(&uid).is_some(),
            Change::Synced => {
                let first = !s.synced;
                s.synced = true;
                first
            }
        }
    }

    fn synced(&self) -> bool {
        self.sources.iter().all(|s| s.synced)
    }

    fn snapshot(&self) -> BTreeMap<String, Obj> {
        self.sources
            .iter()
            .flat_map(|s| s.objects.values())
            .map(|o| (o.uid.clone(), o.clone()))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The executor.

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("discover resource types: {0}")]
    Discovery(#[source] kube::Error),
    #[error("{op} {resource} {name}: {source}")]
    Write {
        op: &'static str,
        resource: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// A resource type the API serves.
#[derive(Clone, Debug)]
struct Resource {
    ar: ApiResource,
    namespaced: bool,
}

/// Types we would never find owners' dependents in, or that alias another:
/// Events (as upstream's collector ignores them) appear twice, once per group.
fn ignored(ar: &ApiResource) -> bool {
    ar.group == "events.k8s.io" && ar.plural == "events"
}

struct Discovered {
    /// Types to watch: list, watch and delete supported.
    watchable: Vec<Resource>,
    /// Every type by (group, kind), to read owners back.
    by_kind: HashMap<(String, String), Resource>,
}

async fn discover(client: &kube::Client) -> Result<Discovered, GcError> {
    let d = Discovery::new(client.clone())
        .run()
        .await
        .map_err(GcError::Discovery)?;
    let mut watchable = Vec::new();
    let mut by_kind = HashMap::new();
    for g in d.groups() {
        for (ar, caps) in g.recommended_resources() {
            let r = Resource {
                namespaced: caps.scope == Scope::Namespaced,
                ar: ar.clone(),
            };
            by_kind.insert((ar.group.clone(), ar.kind.clone()), r.clone());
            if [verbs::LIST, verbs::WATCH, verbs::DELETE]
                .iter()
                .all(|v| caps.supports_operation(v))
                && !ignored(&ar)
            {
                watchable.push(r);
            }
        }
    }
    Ok(Discovered { watchable, by_kind })
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

/// The change a metadata event makes to source `index`.
fn change_of(index: usize, ev: MetaEvent<'_>) -> Option<Change> {
    match ev {
        MetaEvent::Added(m) | MetaEvent::Updated { new: m, .. } => {
            Obj::from_meta(index, m).map(Change::Apply)
        }
        MetaEvent::Deleted(m) => m.uid.clone().map(Change::Delete),
        MetaEvent::Synced => Some(Change::Synced),
    }
}

/// Whether a live read found an owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Absent,
    Present,
    Unknown,
}

struct Executor {
    client: kube::Client,
    resources: Vec<Resource>,
    by_kind: HashMap<(String, String), Resource>,
    /// Owners a live read found present, until when to trust that.
    present: HashMap<String, Instant>,
    /// Writes done, by target, kind of write and version, until when.
    done: HashMap<(Target, u8), Instant>,
}

impl Executor {
    fn api(&self, t: &Target) -> Api<DynamicObject> {
        let r = &self.resources[t.resource];
        match (&t.namespace, r.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &r.ar),
            _ => Api::all_with(self.client.clone(), &r.ar),
        }
    }

    /// Read an owner back: is it really gone?
    async fn owner_found(&mut self, dependent: &Target, r: &OwnerReference) -> Found {
        if self
            .present
            .get(&r.uid)
            .is_some_and(|t| *t > Instant::now())
        {
            return Found::Present;
        }
        let Some(res) = self
            .by_kind
            .get(&(group_of(&r.api_version).to_string(), r.kind.clone()))
        else {
            tracing::debug!(kind = %r.kind, api_version = %r.api_version, "garbage collector: owner kind not served");
            return Found::Unknown;
        };
        let api: Api<DynamicObject> = match (&dependent.namespace, res.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &res.ar),
            // A cluster-scoped dependent cannot have a namespaced owner.
            (None, true) => return Found::Absent,
            (_, false) => Api::all_with(self.client.clone(), &res.ar),
        };
        match api.get_opt(&r.name).await {
            Ok(Some(o)) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                self.present
                    .insert(r.uid.clone(), Instant::now() + PRESENT_TTL);
                Found::Present
            }
            Ok(_) => Found::Absent,
            Err(e) => {
                tracing::warn!(owner = %r.name, kind = %r.kind, error = %e, "garbage collector: read owner");
                Found::Unknown
            }
        }
    }

    async fn all_absent(&mut self, dependent: &Target, owners: &[OwnerReference]) -> bool {
        for r in owners {
            if self.owner_found(dependent, r).await != Found::Absent {
                return false;
            }
        }
        true
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        let now = Instant::now();
        self.done.retain(|_, until| *until > now);
        self.present.retain(|_, until| *until > now);
        for a in actions {
            let key = (
                a.target().clone(),
                match a {
                    Action::Delete { .. } => 0,
                    Action::SetOwners { .. } => 1,
                    Action::SetFinalizers { .. } => 2,
                },
            );
            if self.done.contains_key(&key) {
                continue;
            }
            match self.apply(&a).await {
                Ok(true) => {
                    self.done.insert(key, Instant::now() + DONE_TTL);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "garbage collector"),
            }
        }
    }

    /// Apply one action; `Ok(false)` when it was skipped or lost a race.
    async fn apply(&mut self, a: &Action) -> Result<bool, GcError> {
        let t = a.target();
        let resource = self.resources[t.resource].ar.plural.clone();
        let err = |op, source| GcError::Write {
            op,
            resource: resource.clone(),
            name: t.name.clone(),
            source,
        };
        match a {
            Action::Delete {
                target,
                propagation,
                confirm_absent,
            } => {
                if !self.all_absent(target, confirm_absent).await {
                    return Ok(false);
                }
                let mut dp = match propagation {
                    Propagation::Background => DeleteParams::background(),
                    Propagation::Foreground => DeleteParams::foreground(),
                };
                dp.preconditions = Some(Preconditions {
                    uid: Some(target.uid.clone()),
                    resource_version: Some(target.resource_version.clone()),
                });
                tracing::info!(resource = %resource, namespace = ?target.namespace, name = %target.name, ?propagation, "garbage collector: deleting dependent whose owners are gone");
                ok_unless_raced(self.api(target).delete(&target.name, &dp).await.map(|_| ()))
                    .map_err(|e| err("delete", e))
            }
            Action::SetOwners {
                target,
                keep,
                confirm_absent,
            } => {
                if !self.all_absent(target, confirm_absent).await {
                    return Ok(false);
                }
                let owners = if keep.is_empty() {
                    json!(null)
                } else {
                    json!(keep)
                };
                let patch = json!({"metadata": {
                    "resourceVersion": target.resource_version,
                    "ownerReferences": owners,
                }});
                tracing::info!(resource = %resource, namespace = ?target.namespace, name = %target.name, "garbage collector: removing owner references");
                ok_unless_raced(
                    self.api(target)
                        .patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ()),
                )
                .map_err(|e| err("remove owner references from", e))
            }
            Action::SetFinalizers { target, keep } => {
                let fins = if keep.is_empty() {
                    json!(null)
                } else {
                    json!(keep)
                };
                let patch = json!({"metadata": {
                    "resourceVersion": target.resource_version,
                    "finalizers": fins,
                }});
                tracing::info!(resource = %resource, namespace = ?target.namespace, name = %target.name, "garbage collector: dependents handled, removing finalizer");
                ok_unless_raced(
                    self.api(target)
                        .patch(&target.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ()),
                )
                .map_err(|e| err("remove finalizers from", e))
            }
        }
    }
}

/// A 404 (already gone) or 409 (changed since planned) is no failure: the
/// next pass sees the new state.
fn ok_unless_raced(r: Result<(), kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// How long changes are gathered before a pass.
pub const BATCH: Duration = Duration::from_millis(250);

/// The one key of the collector's work queue: the whole graph.
fn graph_key() -> Key {
    Key::cluster("graph")
}

struct Collector {
    client: kube::Client,
    informers: Arc<Informers>,
    queue: std::sync::Weak<WorkQueue<Key>>,
    graph: Arc<Mutex<Graph>>,
    started: Instant,
    /// Discovery, the executor and warnings: one pass at a time.
    state: tokio::sync::Mutex<PassState>,
}

struct PassState {
    exec: Executor,
    last_discovery: Option<Instant>,
    warned_unsynced: bool,
}

impl Collector {
    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribe to the metadata of types not seen before.
    fn watch_new(&self, exec: &mut Executor, watchable: Vec<Resource>) {
        for r in watchable {
            let known = exec
                .resources
                .iter()
                .any(|k| k.ar.group == r.ar.group && k.ar.plural == r.ar.plural);
            if known {
                continue;
            }
            let index = exec.resources.len();
            tracing::debug!(resource = %r.ar.plural, group = %r.ar.group, "garbage collector: watching");
            self.graph().sources.push(Source::default());
            let (graph, queue) = (self.graph.clone(), self.queue.clone());
            self.informers.metadata(&r.ar, move |ev| {
                let Some(q) = queue.upgrade() else {
                    return false;
                };
                if let Some(c) = change_of(index, ev) {
                    let relevant = graph
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .apply(index, c);
                    if relevant {
                        q.add_after(graph_key(), BATCH);
                    }
                }
                true
            });
            exec.resources.push(r);
        }
    }

    /// Discover new types when due, then plan over the whole graph and act.
    async fn pass(&self) -> Result<Option<Duration>, GcError> {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        if state
            .last_discovery
            .is_none_or(|t| t.elapsed() >= REDISCOVER)
        {
            let d = discover(&self.client).await?;
            state.last_discovery = Some(Instant::now());
            state.exec.by_kind = d.by_kind;
            self.watch_new(&mut state.exec, d.watchable);
        }
        let snapshot = {
            let g = self.graph();
            g.synced().then(|| g.snapshot())
        };
        let Some(snapshot) = snapshot else {
            if !state.warned_unsynced && self.started.elapsed() > Duration::from_secs(60) {
                state.warned_unsynced = true;
                tracing::warn!("garbage collector: some watches have not synced yet; waiting");
            }
            // The informers' Synced events queue the next pass.
            return Ok(Some(RESYNC));
        };
        let actions = plan(&snapshot);
        if !actions.is_empty() {
            state.exec.execute(actions).await;
        }
        Ok(Some(RESYNC))
    }
}

impl super::runtime::SyncError for GcError {}

pub async fn run(ctx: Arc<super::Context>, informers: Arc<Informers>) {
    let c: Controller<Key> = Controller::new("garbage-collector");
    let collector = Arc::new(Collector {
        client: ctx.client_as(super::identity::GARBAGE_COLLECTOR),
        informers,
        queue: Arc::downgrade(c.queue()),
        graph: Arc::default(),
        started: Instant::now(),
        state: tokio::sync::Mutex::new(PassState {
            exec: Executor {
                client: ctx.client_as(super::identity::GARBAGE_COLLECTOR),
                resources: Vec::new(),
                by_kind: HashMap::new(),
                present: HashMap::new(),
                done: HashMap::new(),
            },
            last_discovery: None,
            warned_unsynced: false,
        }),
    });
    c.queue().add(graph_key());
    c.run(1, move |_key: Key| {
        let collector = collector.clone();
        async move { collector.pass().await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const CM: usize = 0;
    const POD: usize = 1;

    fn obj(uid: &str, owners: &[&str]) -> Obj {
        Obj {
            resource: CM,
            namespace: Some("ns".into()),
            name: format!("name-{uid}"),
            uid: uid.into(),
            resource_version: "1".into(),
            owners: owners.iter().map(|o| oref(o)).collect(),
            finalizers: vec![],
            deleting: false,
            deletion_grace_seconds: None,
        }
    }

    fn oref(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: format!("name-{uid}"),
            uid: uid.into(),
            ..Default::default()
        }
    }

    fn deleting(mut o: Obj, finalizers: &[&str]) -> Obj {
        o.deleting = true;
        o.finalizers = finalizers.iter().map(|s| s.to_string()).collect();
        o
    }

    fn graph(objs: Vec<Obj>) -> BTreeMap<String, Obj> {
        objs.into_iter().map(|o| (o.uid.clone(), o)).collect()
    }

    fn delete(o: &Obj, p: Propagation, absent: &[&str]) -> Action {
        Action::Delete {
            target: o.target(),
            propagation: p,
            confirm_absent: absent.iter().map(|u| oref(u)).collect(),
        }
    }

    fn set_owners(o: &Obj, keep: &[&str], absent: &[&str]) -> Action {
        Action::SetOwners {
            target: o.target(),
            keep: keep.iter().map(|u| oref(u)).collect(),
            confirm_absent: absent.iter().map(|u| oref(u)).collect(),
        }
    }

    fn set_fins(o: &Obj, keep: &[&str]) -> Action {
        Action::SetFinalizers {
            target: o.target(),
            keep: keep.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn table() {
        let owner = obj("o", &[]);
        let dep = obj("d", &["o"]);
        let dangling = obj("d", &["gone"]);
        let two = obj("d", &["o", "gone"]);
        let fg = deleting(obj("o", &[]), &[FOREGROUND]);
        let orphan = deleting(obj("o", &[]), &[ORPHAN]);
        let mut other_ns = obj("o", &[]);
        other_ns.namespace = Some("elsewhere".into());
        let mut cluster_owner = obj("o", &[]);
        cluster_owner.namespace = None;
        let mut pod_in_grace = deleting(obj("o", &[]), &[FOREGROUND]);
        pod_in_grace.resource = POD;
        pod_in_grace.deletion_grace_seconds = Some(30);
        let mut pod_done = pod_in_grace.clone();
        pod_done.deletion_grace_seconds = Some(0);
        let dep_deleting = deleting(obj("d", &["o"]), &[]);
        let dep_held = deleting(obj("d", &["o"]), &["example.com/hold"]);
        let grandchild = obj("g", &["d"]);
        let fg_dep = deleting(obj("d", &["o"]), &[FOREGROUND]);
        let both = deleting(obj("o", &[]), &[ORPHAN, FOREGROUND, "example.com/keep"]);
        let fg_and_solid = obj("d", &["o", "s"]);
        let solid = obj("s", &[]);
        let self_owned = obj("d", &["d"]);

        let cases: Vec<(&str, Vec<Obj>, Vec<Action>)> = vec![
            ("no owners: nothing", vec![owner.clone()], vec![]),
            (
                "owner present: nothing",
                vec![owner.clone(), dep.clone()],
                vec![],
            ),
            (
                "owner gone: background delete, confirmed first",
                vec![dangling.clone()],
                vec![delete(&dangling, Propagation::Background, &["gone"])],
            ),
            (
                "one of two owners gone: drop the dangling reference",
                vec![owner.clone(), two.clone()],
                vec![set_owners(&two, &["o"], &["gone"])],
            ),
            (
                "owner in another namespace is no owner",
                vec![other_ns.clone(), dep.clone()],
                vec![delete(&dep, Propagation::Background, &["o"])],
            ),
            (
                "cluster-scoped owner holds a namespaced dependent",
                vec![cluster_owner, dep.clone()],
                vec![],
            ),
            (
                "deleting dependent of a gone owner: left alone",
                vec![dep_deleting.clone()],
                vec![],
            ),
            (
                "foreground owner: dependent deleted in the foreground, owner waits",
                vec![fg.clone(), dep.clone()],
                vec![delete(&dep, Propagation::Foreground, &[])],
            ),
            (
                "foreground owner waits while its dependent is held",
                vec![fg.clone(), dep_held.clone()],
                vec![],
            ),
            (
                "foreground owner without dependents: finalizer removed",
                vec![fg.clone()],
                vec![set_fins(&fg, &[])],
            ),
            (
                "foreground chain: the middle waits for the grandchild",
                vec![fg.clone(), fg_dep.clone(), grandchild.clone()],
                vec![delete(&grandchild, Propagation::Foreground, &[])],
            ),
            (
                "foreground owner and a solid owner: only the reference to the first goes",
                vec![fg.clone(), solid.clone(), fg_and_solid.clone()],
                vec![set_owners(&fg_and_solid, &["s"], &[])],
            ),
            (
                "orphan owner: reference removed from the dependent",
                vec![orphan.clone(), dep.clone()],
                vec![set_owners(&dep, &[], &[])],
            ),
            (
                "orphan owner: reference removed even from a deleting dependent",
                vec![orphan.clone(), dep_held.clone()],
                vec![set_owners(&dep_held, &[], &[])],
            ),
            (
                "orphan owner keeps the other references",
                vec![orphan.clone(), two.clone()],
                vec![set_owners(&two, &["gone"], &[])],
            ),
            (
                "orphan owner without dependents: finalizer removed",
                vec![orphan.clone()],
                vec![set_fins(&orphan, &[])],
            ),
            (
                "orphan and foreground: orphan wins, other finalizers stay",
                vec![both.clone()],
                vec![set_fins(&both, &["example.com/keep"])],
            ),
            (
                "pod in graceful deletion keeps its finalizer",
                vec![pod_in_grace],
                vec![],
            ),
            (
                "pod done with its grace loses it",
                vec![pod_done.clone()],
                vec![set_fins(&pod_done, &[])],
            ),
            ("self reference is ignored", vec![self_owned], vec![]),
        ];
        for (name, objs, want) in cases {
            assert_eq!(plan(&graph(objs)), want, "{name}");
        }
    }

    #[test]
    fn idempotent_after_applying() {
        // Orphaning: once the reference is gone, the only thing left is the finalizer.
        let orphan = deleting(obj("o", &[]), &[ORPHAN]);
        let freed = obj("d", &[]);
        assert_eq!(
            plan(&graph(vec![orphan.clone(), freed.clone()])),
            vec![set_fins(&orphan, &[])]
        );
        assert_eq!(plan(&graph(vec![freed])), vec![]);
    }

    /// (Relists, which this graph handled itself before, are the shared
    /// informer's now: `informers::tests::relist_becomes_the_changes_it_implies`.)
    #[test]
    fn graph_tracks_its_sources() {
        let mut g = Graph {
            sources: vec![Source::default(), Source::default()],
        };
        assert!(!g.synced());
        g.apply(0, Change::Apply(obj("a", &[])));
        g.apply(0, Change::Synced);
        assert!(!g.synced());
        g.apply(1, Change::Synced);
        assert!(g.synced());
        assert!(g.apply(0, Change::Apply(obj("b", &["a"]))));
        assert_eq!(g.snapshot().len(), 2);
        // A new resourceVersion alone changes no plan.
        let mut b2 = obj("b", &["a"]);
        b2.resource_version = "2".into();
        assert!(!g.apply(0, Change::Apply(b2.clone())));
        assert_eq!(g.snapshot()["b"].resource_version, "2");
        b2.finalizers = vec!["x".into()];
        assert!(g.apply(0, Change::Apply(b2)));
        assert!(g.apply(0, Change::Delete("a".into())));
        assert_eq!(
            g.snapshot().keys().cloned().collect::<Vec<_>>(),
            vec!["b".to_string()]
        );
        assert!(g.apply(0, Change::Delete("b".into())));
        assert!(!g.apply(0, Change::Delete("b".into())));
        assert!(g.snapshot().is_empty());
    }

    #[test]
    fn metadata_events_become_changes() {
        let m: ObjectMeta = serde_json::from_value(
            json!({"name": "p", "namespace": "ns", "uid": "u1", "resourceVersion": "3"}),
        )
        .unwrap();
        assert!(
            matches!(change_of(2, MetaEvent::Added(&m)), Some(Change::Apply(o)) if o.uid == "u1" && o.resource == 2)
        );
        assert!(
            matches!(change_of(2, MetaEvent::Deleted(&m)), Some(Change::Delete(u)) if u == "u1")
        );
        assert!(matches!(
            change_of(2, MetaEvent::Synced),
            Some(Change::Synced)
        ));
        let no_uid = ObjectMeta {
            name: Some("x".into()),
            ..Default::default()
        };
        assert!(change_of(0, MetaEvent::Added(&no_uid)).is_none());
    }

    #[test]
    fn owner_groups() {
        assert_eq!(group_of("v1"), "");
        assert_eq!(group_of("apps/v1"), "apps");
        assert_eq!(group_of("coordination.k8s.io/v1"), "coordination.k8s.io");
    }
}
