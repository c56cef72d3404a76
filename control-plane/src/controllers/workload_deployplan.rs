//! The Deployment controller's pure half. Given a Deployment and the
//! ReplicaSets it owns, one sync plans: which ReplicaSet is the current
//! revision (creating it if needed), the revision annotations that
//! `kubectl rollout history/undo` read, one step of the rollout (Rolling:
//! scale the new ReplicaSet up within maxSurge, then old ones down while at
//! least replicas - maxUnavailable pods stay available; Recreate: old ones
//! to zero, wait for their pods to go, then the new one up), proportional
//! scaling when replicas change mid-rollout, revision-history cleanup, and
//! the status with the Available and Progressing conditions `kubectl
//! rollout status` waits on. Mirrors upstream's deployment controller
//! (sync.go, rolling.go, recreate.go, progress.go).
//!
//! Availability used for decisions is `min(status.availableReplicas,
//! spec.replicas)` per ReplicaSet: a ReplicaSet just scaled down still
//! reports its old count until its controller catches up, and trusting that
//! count would scale old ReplicaSets down twice.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use keelson_rules::owners;

use super::workload_util as wu;

/// Revision-history annotation values are kept under this many characters.
const MAX_REV_HISTORY_CHARS: usize = 2000;

pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";

pub struct DeployInput<'a> {
    pub d: &'a Deployment,
    /// The ReplicaSets the Deployment controls (after adoption).
    pub rss: &'a [ReplicaSet],
    /// Pods not yet finished (terminating included) per ReplicaSet uid: a
    /// Recreate rollout waits until old ReplicaSets have none.
    pub pods_per_rs: &'a HashMap<String, usize>,
    pub now: Timestamp,
}

/// A change to an existing ReplicaSet (a merge patch, pinned to the
/// resourceVersion it was planned against).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RsPatch {
    pub name: String,
    pub resource_version: String,
    pub replicas: Option<i32>,
    pub annotations: BTreeMap<String, String>,
    pub min_ready_seconds: Option<i32>,
}

#[derive(Debug, Default)]
pub struct DeployPlan {
    /// A ReplicaSet for the current template, to create first.
    pub create: Option<ReplicaSet>,
    /// The Deployment's new `deployment.kubernetes.io/revision`.
    pub revision: Option<String>,
    /// Scale and annotate existing ReplicaSets (the new one first).
    pub patches: Vec<RsPatch>,
    /// Old ReplicaSets beyond revisionHistoryLimit: (name, uid).
    pub deletes: Vec<(String, String)>,
    /// The status to write, when it changed.
    pub status: Option<DeploymentStatus>,
    pub requeue_after: Option<Duration>,
}

pub fn replicas(d: &Deployment) -> i32 {
    d.spec.replicas.unwrap_or(1)
}

pub fn is_rolling(d: &Deployment) -> bool {
    d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("Recreate")
}

fn fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    wu::resolve_fenceposts(
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas(d),
    )
}

/// Pods a rolling update may run above `replicas` (0 for Recreate).
pub fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling(d) {
        return 0;
    }
    fenceposts(d).0
}

/// Pods a rolling update may have unavailable (0 for Recreate).
pub fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling(d) || replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas(d))
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// Available pods a decision may count on (see the module docs).
fn safe_available(rs: &ReplicaSet) -> i32 {
    status_of(rs).2.min(rs_replicas(rs)).max(0)
}

fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    wu::annotation(&rs.metadata, key).and_then(|v| v.parse().ok())
}

fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .progress_deadline_seconds
        .is_some_and(|s| s != i32::MAX)
}

fn condition<'a>(conds: &'a [DeploymentCondition], type_: &str) -> Option<&'a DeploymentCondition> {
    conds.iter().find(|c| c.type_.as_deref() == Some(type_))
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: Some(type_.into()),
        status: Some(status.into()),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Upstream's SetDeploymentCondition: same status and reason leaves the
/// condition alone; same status keeps its transition time.
fn set_condition(conds: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition) {
    if let Some(cur) = condition(conds, c.type_.as_deref().unwrap_or_default()) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conds.retain(|x| x.type_ != c.type_);
    conds.push(c);
}

fn remove_condition(conds: &mut Vec<DeploymentCondition>, type_: &str) {
    conds.retain(|c| c.type_.as_deref() != Some(type_));
}

/// All pods updated, all available, and the controller has seen this spec.
pub fn deployment_complete(d: &Deployment, st: &DeploymentStatus) -> bool {
    let r = replicas(d);
    st.updated_replicas.unwrap_or(0) == r
        && st.replicas.unwrap_or(0) == r
        && st.available_replicas.unwrap_or(0) == r
        && st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Some count moved the right way since the last status.
fn deployment_progressing(d: &Deployment, st: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = st.replicas.unwrap_or(0) - st.updated_replicas.unwrap_or(0);
    st.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new_old < old_old
        || st.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || st.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

fn deadline(d: &Deployment) -> SignedDuration {
    SignedDuration::from_secs(i64::from(d.spec.progress_deadline_seconds.unwrap_or(0)))
}

fn timed_out(d: &Deployment, st: &DeploymentStatus, now: Timestamp) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let conds = st.conditions.as_deref().unwrap_or_default();
    let Some(c) = condition(conds, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => c
            .last_update_time
            .as_ref()
            .and_then(|t| t.0.checked_add(deadline(d)).ok())
            .is_some_and(|until| until < now),
    }
}

/// Annotations a Deployment keeps to itself.
fn skip_copy(key: &str) -> bool {
    matches!(
        key,
        wu::LAST_APPLIED
            | wu::REVISION
            | wu::REVISION_HISTORY
            | wu::DESIRED_REPLICAS
            | wu::MAX_REPLICAS
            | wu::ROLLBACK_TO
    )
}

/// Copy the Deployment's annotations to its new ReplicaSet and give that
/// ReplicaSet `new_revision` if its own is older (remembering the old one
/// in revision-history: it is being rolled back to). A ReplicaSet about to
/// be created also gets the replica annotations.
fn set_new_rs_annotations(d: &Deployment, rs: &mut ReplicaSet, new_revision: i64, exists: bool) {
    let anns = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if let Some(da) = &d.metadata.annotations {
        for (k, v) in da {
            if !skip_copy(k) && anns.get(k) != Some(v) {
                anns.insert(k.clone(), v.clone());
            }
        }
    }
    let old = anns.get(wu::REVISION).cloned();
    let old_num = match &old {
        None => 0,
        Some(s) => match s.parse::<i64>() {
            Ok(n) => n,
            // Not ours to interpret: leave the revision alone.
            Err(_) => return,
        },
    };
    if old_num < new_revision {
        anns.insert(wu::REVISION.into(), new_revision.to_string());
        if let Some(old) = old {
            let history = anns.get(wu::REVISION_HISTORY).cloned().unwrap_or_default();
            let mut revs: Vec<String> = history
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            revs.push(old);
            while revs.join(",").len() > MAX_REV_HISTORY_CHARS && revs.len() > 1 {
                revs.remove(0);
            }
            anns.insert(wu::REVISION_HISTORY.into(), revs.join(","));
        }
    }
    if !exists {
        set_replica_annotations(rs, replicas(d), replicas(d) + max_surge(d));
    }
}

fn set_replica_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let anns = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (k, v) in [(wu::DESIRED_REPLICAS, desired), (wu::MAX_REPLICAS, max)] {
        let v = v.to_string();
        if anns.get(k) != Some(&v) {
            anns.insert(k.into(), v);
            changed = true;
        }
    }
    changed
}

fn cmp_created(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    let t = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    t(a).cmp(&t(b))
        .then_with(|| wu::name(&a.metadata).cmp(wu::name(&b.metadata)))
}

/// The ReplicaSet running `d`'s current template: the oldest whose template
/// equals it apart from the hash label (how kubectl finds it too).
pub fn find_new_rs<'a>(d: &Deployment, rss: &'a [ReplicaSet]) -> Option<&'a ReplicaSet> {
    let mut sorted: Vec<&ReplicaSet> = rss.iter().collect();
    sorted.sort_by(|a, b| cmp_created(a, b));
    sorted.into_iter().find(|rs| {
        rs.spec
            .template
            .as_ref()
            .is_some_and(|t| wu::templates_equal_ignoring_hash(t, &d.spec.template))
    })
}

/// The ReplicaSet `kubectl rollout undo --to-revision=N` restores: revision
/// `to`, or for 0 the second-highest revision. (kubectl does this itself;
/// kept here to pin the annotations it relies on.)
pub fn rollback_target(rss: &[ReplicaSet], to: i64) -> Option<&ReplicaSet> {
    if to > 0 {
        return rss.iter().find(|rs| wu::revision(&rs.metadata) == to);
    }
    let mut by_rev: Vec<&ReplicaSet> = rss
        .iter()
        .filter(|rs| wu::annotation(&rs.metadata, wu::REVISION).is_some())
        .collect();
    by_rev.sort_by_key(|rs| std::cmp::Reverse(wu::revision(&rs.metadata)));
    by_rev.get(1).copied()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// Status counts and Available only (scaling, paused, deleting).
    Sync,
    /// Also the Progressing condition (rollouts).
    Rollout,
}

struct Planner<'a> {
    d: &'a Deployment,
    now: Timestamp,
    /// Owned ReplicaSets, oldest first, changed in place as the plan goes.
    view: Vec<ReplicaSet>,
    /// Index of the current revision's ReplicaSet in `view`.
    new: Option<usize>,
    created: bool,
    revision: Option<String>,
    conditions: Vec<DeploymentCondition>,
    collision_count: Option<i32>,
    deletes: Vec<(String, String)>,
    pods_per_rs: &'a HashMap<String, usize>,
}

impl<'a> Planner<'a> {
    fn new(input: &DeployInput<'a>) -> Planner<'a> {
        let mut view: Vec<ReplicaSet> = input.rss.to_vec();
        view.sort_by(cmp_created);
        let status = input.d.status.clone().unwrap_or_default();
        Planner {
            d: input.d,
            now: wu::whole_seconds(input.now),
            view,
            new: None,
            created: false,
            revision: None,
            conditions: status.conditions.unwrap_or_default(),
            collision_count: status.collision_count,
            deletes: Vec::new(),
            pods_per_rs: input.pods_per_rs,
        }
    }

    fn spec(&self, i: usize) -> i32 {
        rs_replicas(&self.view[i])
    }

    fn old(&self) -> Vec<usize> {
        (0..self.view.len())
            .filter(|i| Some(*i) != self.new)
            .collect()
    }

    fn active(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter().copied().filter(|i| self.spec(*i) > 0).collect()
    }

    fn all(&self) -> Vec<usize> {
        (0..self.view.len()).collect()
    }

    fn sum_spec(&self, idx: &[usize]) -> i32 {
        idx.iter().map(|i| self.spec(*i)).sum()
    }

    /// Set a ReplicaSet's size and replica annotations. Without `force`, an
    /// unchanged size changes nothing. Returns whether the size changed.
    fn scale(&mut self, i: usize, to: i32, force: bool) -> bool {
        let changed = self.spec(i) != to;
        if !changed && !force {
            return false;
        }
        let (desired, max) = (replicas(self.d), replicas(self.d) + max_surge(self.d));
        let rs = &mut self.view[i];
        rs.spec.replicas = Some(to);
        set_replica_annotations(rs, desired, max);
        changed
    }

    fn max_old_revision(&self) -> i64 {
        self.old()
            .iter()
            .map(|i| wu::revision(&self.view[*i].metadata))
            .max()
            .unwrap_or(0)
    }

    fn progressing(&mut self, reason: &str, message: String) {
        if has_progress_deadline(self.d) {
            let c = new_condition("Progressing", "True", reason, message, self.now);
            set_condition(&mut self.conditions, c);
        }
    }

    /// Upstream's getAllReplicaSetsAndSyncRevision without creation.
    fn sync_revision(&mut self) {
        let Some(i) = self.new else { return };
        let new_revision = self.max_old_revision() + 1;
        let d = self.d;
        set_new_rs_annotations(d, &mut self.view[i], new_revision, true);
        let min_ready = d.spec.min_ready_seconds.unwrap_or(0);
        if self.view[i].spec.min_ready_seconds.unwrap_or(0) != min_ready {
            self.view[i].spec.min_ready_seconds = Some(min_ready);
        }
        let rev = wu::annotation(&self.view[i].metadata, wu::REVISION).map(String::from);
        if rev.is_some() && rev.as_deref() != wu::annotation(&d.metadata, wu::REVISION) {
            self.revision = rev;
        }
        if condition(&self.conditions, "Progressing").is_none() {
            let name = wu::name(&self.view[i].metadata).to_string();
            self.progressing(FOUND_NEW_RS, format!("Found new replica set {name:?}"));
        }
    }

    /// Replicas the new ReplicaSet may have now (upstream's NewRSNewReplicas).
    fn new_rs_new_replicas(&self) -> i32 {
        let r = replicas(self.d);
        if !is_rolling(self.d) {
            return r;
        }
        let ru = self
            .d
            .spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let surge = wu::scaled_value(ru.and_then(|r| r.max_surge.as_ref()), r, true);
        let current = self.sum_spec(&self.all());
        let new_now = self.new.map_or(0, |i| self.spec(i));
        let max_total = r + surge;
        if current >= max_total {
            return new_now;
        }
        new_now + (max_total - current).min(r - new_now)
    }

    /// Create the ReplicaSet for the current template. `false` when its
    /// name is taken by one of ours with another template (a hash
    /// collision: collisionCount goes up and the next sync tries again).
    fn create_new_rs(&mut self) -> bool {
        let d = self.d;
        let hash = wu::template_hash(&d.spec.template, self.collision_count);
        let name = format!("{}-{}", wu::name(&d.metadata), hash);
        if self.view.iter().any(|rs| wu::name(&rs.metadata) == name) {
            self.collision_count = Some(self.collision_count.unwrap_or(0) + 1);
            return false;
        }
        let mut template = d.spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(wu::POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = d.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(wu::POD_TEMPLATE_HASH.into(), hash);
        let labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
        let new_revision = self.max_old_revision() + 1;
        let replicas_now = self.new_rs_new_replicas();
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: d.metadata.namespace.clone(),
                labels,
                owner_references: Some(vec![owners::controller_owner_ref(
                    "apps/v1",
                    "Deployment",
                    &d.metadata,
                )]),
                ..Default::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas_now),
                min_ready_seconds: d.spec.min_ready_seconds,
                selector,
                template: Some(template),
            },
            status: None,
        };
        set_new_rs_annotations(d, &mut rs, new_revision, false);
        self.view.push(rs);
        self.new = Some(self.view.len() - 1);
        self.created = true;
        self.revision = Some(new_revision.to_string());
        self.progressing(NEW_RS_CREATED, format!("Created new replica set {name:?}"));
        true
    }

    /// Whether `replicas` changed since the active ReplicaSets were last scaled.
    fn is_scaling_event(&self) -> bool {
        let r = replicas(self.d);
        self.active(&self.all())
            .into_iter()
            .any(|i| annotation_i32(&self.view[i], wu::DESIRED_REPLICAS).is_some_and(|v| v != r))
    }

    fn find_active_or_latest(&self) -> Option<usize> {
        let active = self.active(&self.all());
        match active.len() {
            0 => self.new.or_else(|| self.old().last().copied()),
            1 => Some(active[0]),
            _ => None,
        }
    }

    fn is_saturated(&self, i: usize) -> bool {
        let r = replicas(self.d);
        self.spec(i) == r
            && annotation_i32(&self.view[i], wu::DESIRED_REPLICAS) == Some(r)
            && status_of(&self.view[i]).2 >= r
    }

    fn fraction(&self, i: usize) -> i32 {
        let r = replicas(self.d);
        if r == 0 {
            return -self.spec(i);
        }
        let deployment_replicas = r + max_surge(self.d);
        let annotated = annotation_i32(&self.view[i], wu::MAX_REPLICAS)
            .unwrap_or_else(|| self.d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
        if annotated <= 0 {
            return 0;
        }
        let size = f64::from(self.spec(i)) * f64::from(deployment_replicas) / f64::from(annotated);
        size.round() as i32 - self.spec(i)
    }

    fn proportion(&self, i: usize, to_add: i32, added: i32) -> i32 {
        if self.spec(i) == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let f = self.fraction(i);
        let allowed = to_add - added;
        if to_add > 0 {
            f.min(allowed)
        } else {
            f.max(allowed)
        }
    }

    /// Scale to a new `replicas` (upstream's scale): a lone active
    /// ReplicaSet takes all of it; a saturated new one means old ones go to
    /// zero; mid-rollout, the difference is spread over the active
    /// ReplicaSets in proportion to their size.
    fn scale_to_replicas(&mut self) {
        let r = replicas(self.d);
        if let Some(i) = self.find_active_or_latest() {
            self.scale(i, r, true);
            return;
        }
        if let Some(n) = self.new
            && self.is_saturated(n)
        {
            for i in self.active(&self.old()) {
                self.scale(i, 0, false);
            }
            return;
        }
        if !is_rolling(self.d) {
            return;
        }
        let mut active = self.active(&self.all());
        let allowed = if r > 0 { r + max_surge(self.d) } else { 0 };
        let to_add = allowed - self.sum_spec(&active);
        let newer_first = |a: &usize, b: &usize| cmp_created(&self.view[*b], &self.view[*a]);
        match to_add.cmp(&0) {
            Ordering::Greater => active.sort_by(|a, b| {
                self.spec(*b)
                    .cmp(&self.spec(*a))
                    .then_with(|| newer_first(a, b))
            }),
            Ordering::Less => active.sort_by(|a, b| {
                self.spec(*b)
                    .cmp(&self.spec(*a))
                    .then_with(|| newer_first(b, a))
            }),
            Ordering::Equal => {}
        }
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::with_capacity(active.len());
        for &i in &active {
            let p = self.proportion(i, to_add, added);
            sizes.push(self.spec(i) + p);
            added += p;
        }
        if to_add != 0
            && let Some(first) = sizes.first_mut()
        {
            *first = (*first + to_add - added).max(0);
        }
        for (k, &i) in active.iter().enumerate() {
            self.scale(i, sizes[k], true);
        }
    }

    /// Scale old ReplicaSets down as far as availability allows (upstream's
    /// reconcileOldReplicaSets): first their unavailable pods, then
    /// available ones down to replicas - maxUnavailable in total.
    fn reconcile_old(&mut self, n: usize) -> bool {
        let old = self.active(&self.old());
        if self.sum_spec(&old) == 0 {
            return false;
        }
        let all = self.all();
        let min_available = replicas(self.d) - max_unavailable(self.d);
        let new_unavailable = (self.spec(n) - safe_available(&self.view[n])).max(0);
        let max_scaled_down = self.sum_spec(&all) - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let mut cleaned = 0;
        for &i in &old {
            if cleaned >= max_scaled_down {
                break;
            }
            let unhealthy = self.spec(i) - safe_available(&self.view[i]);
            if self.spec(i) == 0 || unhealthy == 0 {
                continue;
            }
            let k = (max_scaled_down - cleaned).min(unhealthy);
            let to = self.spec(i) - k;
            self.scale(i, to, false);
            cleaned += k;
        }
        let available: i32 = all.iter().map(|i| safe_available(&self.view[*i])).sum();
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for &i in &old {
                if scaled >= total {
                    break;
                }
                if self.spec(i) == 0 {
                    continue;
                }
                let k = self.spec(i).min(total - scaled);
                let to = self.spec(i) - k;
                self.scale(i, to, false);
                scaled += k;
            }
        }
        cleaned + scaled > 0
    }

    fn rolling(&mut self) -> Finish {
        if self.new.is_none() && !self.create_new_rs() {
            return Finish::Rollout;
        }
        let Some(n) = self.new else {
            return Finish::Rollout;
        };
        let r = replicas(self.d);
        let scaled_up = match self.spec(n).cmp(&r) {
            Ordering::Equal => false,
            Ordering::Greater => self.scale(n, r, false),
            Ordering::Less => {
                let to = self.new_rs_new_replicas();
                self.scale(n, to, false)
            }
        };
        if scaled_up {
            return Finish::Rollout;
        }
        if self.reconcile_old(n) {
            return Finish::Rollout;
        }
        if self.original_complete() {
            self.cleanup();
        }
        Finish::Rollout
    }

    fn recreate(&mut self) -> Finish {
        let mut scaled_down = false;
        for i in self.active(&self.old()) {
            scaled_down |= self.scale(i, 0, false);
        }
        if scaled_down {
            return Finish::Rollout;
        }
        let old_running = self.old().iter().any(|i| {
            let rs = &self.view[*i];
            status_of(rs).0 > 0
                || self
                    .pods_per_rs
                    .get(wu::uid(&rs.metadata))
                    .is_some_and(|n| *n > 0)
        });
        if old_running {
            return Finish::Rollout;
        }
        if self.new.is_none() && !self.create_new_rs() {
            return Finish::Rollout;
        }
        if let Some(n) = self.new {
            self.scale(n, replicas(self.d), false);
        }
        if self.original_complete() {
            self.cleanup();
        }
        Finish::Rollout
    }

    fn original_complete(&self) -> bool {
        deployment_complete(self.d, &self.d.status.clone().unwrap_or_default())
    }

    /// Delete the oldest idle old ReplicaSets beyond revisionHistoryLimit.
    fn cleanup(&mut self) {
        let Some(limit) = self
            .d
            .spec
            .revision_history_limit
            .filter(|l| *l != i32::MAX)
        else {
            return;
        };
        let mut cleanable: Vec<usize> = self
            .old()
            .into_iter()
            .filter(|i| !wu::is_terminating(&self.view[*i].metadata))
            .collect();
        let diff = i64::try_from(cleanable.len()).unwrap_or(0) - i64::from(limit);
        if diff <= 0 {
            return;
        }
        cleanable.sort_by(|a, b| {
            let (x, y) = (&self.view[*a], &self.view[*b]);
            wu::revision(&x.metadata)
                .cmp(&wu::revision(&y.metadata))
                .then_with(|| cmp_created(x, y))
        });
        for &i in cleanable.iter().take(usize::try_from(diff).unwrap_or(0)) {
            let rs = &self.view[i];
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if status_of(rs).0 != 0
                || self.spec(i) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            self.deletes
                .push((wu::name(&rs.metadata).into(), wu::uid(&rs.metadata).into()));
        }
    }

    fn calculate_status(&self) -> DeploymentStatus {
        let all = self.all();
        let sum =
            |f: &dyn Fn(&ReplicaSet) -> i32| -> i32 { all.iter().map(|i| f(&self.view[*i])).sum() };
        let available = sum(&|rs| status_of(rs).2);
        let total = self.sum_spec(&all);
        let mut conditions = self.conditions.clone();
        let r = replicas(self.d);
        let c = if available >= r - max_unavailable(self.d) {
            new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                self.now,
            )
        } else {
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                self.now,
            )
        };
        set_condition(&mut conditions, c);
        let old = self.d.status.clone().unwrap_or_default();
        DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: Some(sum(&|rs| status_of(rs).0)),
            updated_replicas: Some(self.new.map_or(0, |n| status_of(&self.view[n]).0)),
            ready_replicas: Some(sum(&|rs| status_of(rs).1)),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            collision_count: self.collision_count,
            conditions: Some(conditions),
            terminating_replicas: old.terminating_replicas,
        }
    }

    /// Upstream's syncRolloutStatus: the Progressing condition, replica
    /// failures, and when to look again for a stuck rollout.
    fn rollout_status(&self, st: &mut DeploymentStatus) -> Option<Duration> {
        let d = self.d;
        let mut conds = st.conditions.take().unwrap_or_default();
        if !has_progress_deadline(d) {
            remove_condition(&mut conds, "Progressing");
        }
        let current = condition(&conds, "Progressing").cloned();
        let rs_name = self
            .new
            .map(|n| wu::name(&self.view[n].metadata).to_string());
        let complete_before = st.replicas == st.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(NEW_RS_AVAILABLE);
        if has_progress_deadline(d) && !complete_before {
            st.conditions = Some(conds.clone());
            if deployment_complete(d, st) {
                let msg = match &rs_name {
                    Some(n) => format!("ReplicaSet {n:?} has successfully progressed."),
                    None => format!(
                        "Deployment {:?} has successfully progressed.",
                        wu::name(&d.metadata)
                    ),
                };
                set_condition(
                    &mut conds,
                    new_condition("Progressing", "True", NEW_RS_AVAILABLE, msg, self.now),
                );
            } else if deployment_progressing(d, st) {
                let msg = match &rs_name {
                    Some(n) => format!("ReplicaSet {n:?} is progressing."),
                    None => format!("Deployment {:?} is progressing.", wu::name(&d.metadata)),
                };
                let mut c = new_condition("Progressing", "True", RS_UPDATED, msg, self.now);
                if let Some(cur) = &current
                    && cur.status.as_deref() == Some("True")
                {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                remove_condition(&mut conds, "Progressing");
                conds.push(c);
            } else if timed_out(d, st, self.now) {
                let msg = match &rs_name {
                    Some(n) => format!("ReplicaSet {n:?} has timed out progressing."),
                    None => format!(
                        "Deployment {:?} has timed out progressing.",
                        wu::name(&d.metadata)
                    ),
                };
                set_condition(
                    &mut conds,
                    new_condition("Progressing", "False", TIMED_OUT, msg, self.now),
                );
            }
        }
        match self.replica_failure() {
            Some(c) => set_condition(&mut conds, c),
            None => remove_condition(&mut conds, "ReplicaFailure"),
        }
        st.conditions = Some(conds);
        // A rollout that stops moving must be looked at when its deadline passes.
        let cur = condition(
            d.status
                .as_ref()
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or_default(),
            "Progressing",
        );
        let cur = cur.or(current.as_ref())?;
        if !has_progress_deadline(d)
            || deployment_complete(d, st)
            || cur.reason.as_deref() == Some(TIMED_OUT)
        {
            return None;
        }
        let from = cur.last_update_time.as_ref()?.0;
        let until = from.checked_add(deadline(d)).ok()?;
        let after = until.duration_since(self.now);
        Some(Duration::from_secs(
            u64::try_from(after.as_secs()).unwrap_or(0).max(1),
        ))
    }

    fn replica_failure(&self) -> Option<DeploymentCondition> {
        let order = self.new.into_iter().chain(self.old());
        for i in order {
            let conds = self.view[i]
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref());
            if let Some(c) = conds.and_then(|c| {
                c.iter()
                    .find(|c| c.type_.as_deref() == Some("ReplicaFailure"))
            }) {
                return Some(DeploymentCondition {
                    type_: Some("ReplicaFailure".into()),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    last_update_time: c.last_transition_time.clone(),
                    last_transition_time: c.last_transition_time.clone(),
                });
            }
        }
        None
    }

    fn finish(mut self, how: Finish, inputs: &[ReplicaSet]) -> DeployPlan {
        let mut st = self.calculate_status();
        let requeue_after = match how {
            Finish::Rollout => self.rollout_status(&mut st),
            Finish::Sync => None,
        };
        let status = (self.d.status.as_ref() != Some(&st)).then_some(st);
        let mut create = None;
        let mut patches = Vec::new();
        let mut order: Vec<usize> = self.new.into_iter().collect();
        order.extend(self.old());
        for i in order {
            let rs = &self.view[i];
            if self.created && Some(i) == self.new {
                create = Some(rs.clone());
                continue;
            }
            let Some(orig) = inputs.iter().find(|o| o.metadata.uid == rs.metadata.uid) else {
                continue;
            };
            if let Some(p) = diff_rs(orig, rs) {
                patches.push(p);
            }
        }
        self.deletes.sort();
        DeployPlan {
            create,
            revision: self.revision,
            patches,
            deletes: self.deletes,
            status,
            requeue_after,
        }
    }
}

fn diff_rs(orig: &ReplicaSet, now: &ReplicaSet) -> Option<RsPatch> {
    let replicas = (orig.spec.replicas != now.spec.replicas).then_some(rs_replicas(now));
    let min_ready_seconds = (orig.spec.min_ready_seconds != now.spec.min_ready_seconds)
        .then_some(now.spec.min_ready_seconds.unwrap_or(0));
    let before = orig.metadata.annotations.clone().unwrap_or_default();
    let annotations: BTreeMap<String, String> = now
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| before.get(k) != Some(v))
        .collect();
    if replicas.is_none() && min_ready_seconds.is_none() && annotations.is_empty() {
        return None;
    }
    Some(RsPatch {
        name: wu::name(&now.metadata).to_string(),
        resource_version: now.metadata.resource_version.clone().unwrap_or_default(),
        replicas,
        annotations,
        min_ready_seconds,
    })
}

/// Plan one sync of a Deployment.
pub fn plan(input: &DeployInput<'_>) -> DeployPlan {
    let d = input.d;
    let mut p = Planner::new(input);
    if let Some(rs) = find_new_rs(d, &p.view) {
        let uid = rs.metadata.uid.clone();
        p.new = p.view.iter().position(|x| x.metadata.uid == uid);
    }
    if wu::is_terminating(&d.metadata) || wu::selector(&d.spec.selector).is_none() {
        return p.finish(Finish::Sync, input.rss);
    }
    // Paused or resumed: say so in Progressing (unless it already timed out).
    if has_progress_deadline(d) {
        let reason = condition(&p.conditions, "Progressing").and_then(|c| c.reason.clone());
        let paused = d.spec.paused == Some(true);
        if reason.as_deref() != Some(TIMED_OUT) {
            if paused && reason.as_deref() != Some(PAUSED) {
                let c = new_condition(
                    "Progressing",
                    "Unknown",
                    PAUSED,
                    "Deployment is paused".into(),
                    p.now,
                );
                set_condition(&mut p.conditions, c);
            } else if !paused && reason.as_deref() == Some(PAUSED) {
                let c = new_condition(
                    "Progressing",
                    "Unknown",
                    RESUMED,
                    "Deployment is resumed".into(),
                    p.now,
                );
                set_condition(&mut p.conditions, c);
            }
        }
    }
    p.sync_revision();
    if d.spec.paused == Some(true) {
        p.scale_to_replicas();
        p.cleanup();
        return p.finish(Finish::Sync, input.rss);
    }
    if p.is_scaling_event() {
        p.scale_to_replicas();
        return p.finish(Finish::Sync, input.rss);
    }
    let how = if is_rolling(d) {
        p.rolling()
    } else {
        p.recreate()
    };
    p.finish(how, input.rss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 2_000_000;

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    fn deployment(
        replicas: i32,
        surge: serde_json::Value,
        unavailable: serde_json::Value,
        image: &str,
    ) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "d-uid", "generation": 2,
                         "annotations": {"team": "a", "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": image}]}}
            },
            "status": {"observedGeneration": 1}
        }))
        .unwrap()
    }

    /// An owned ReplicaSet for `image` with `spec` replicas and `avail`
    /// available (all of them ready and existing), revision `rev`,
    /// created at `created`.
    fn rs(
        d: &Deployment,
        image: &str,
        rev: i64,
        spec: i32,
        avail: i32,
        created: i64,
    ) -> ReplicaSet {
        let mut t = d.spec.template.clone();
        t.spec.as_mut().unwrap().containers[0].image = Some(image.into());
        let hash = wu::template_hash(&t, None);
        t.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(wu::POD_TEMPLATE_HASH.into(), hash.clone());
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{hash}"), "namespace": "ns", "uid": format!("uid-{image}"),
                         "resourceVersion": "5", "generation": 1,
                         "creationTimestamp": Timestamp::from_second(created).unwrap().to_string(),
                         "annotations": {wu::REVISION: rev.to_string(), wu::DESIRED_REPLICAS: replicas(d).to_string(),
                                         wu::MAX_REPLICAS: (replicas(d) + max_surge(d)).to_string()},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-uid", "controller": true}]},
            "spec": {"replicas": spec, "selector": {"matchLabels": {"app": "web", "pod-template-hash": hash}}, "template": t},
            "status": {"replicas": spec.max(avail), "readyReplicas": avail, "availableReplicas": avail, "observedGeneration": 1}
        }))
        .unwrap()
    }

    fn run(d: &Deployment, rss: &[ReplicaSet]) -> DeployPlan {
        plan(&DeployInput {
            d,
            rss,
            pods_per_rs: &HashMap::new(),
            now: now(),
        })
    }

    /// (RS name suffix image, new replicas) of the plan's scaling.
    fn scaled(p: &DeployPlan, rss: &[ReplicaSet]) -> Vec<(String, i32)> {
        p.patches
            .iter()
            .filter_map(|x| {
                let rs = rss.iter().find(|r| wu::name(&r.metadata) == x.name)?;
                let img = rs.spec.template.as_ref()?.spec.as_ref()?.containers[0]
                    .image
                    .clone()?;
                Some((img, x.replicas?))
            })
            .collect()
    }

    #[test]
    fn surge_and_unavailable_round_like_upstream() {
        // (replicas, maxSurge, maxUnavailable, want surge, want unavailable)
        let cases = [
            (10, json!("25%"), json!("25%"), 3, 2),
            (3, json!("25%"), json!("25%"), 1, 0),
            (1, json!(0), json!(0), 0, 1),
            (4, json!(2), json!("50%"), 2, 2),
            (0, json!("25%"), json!("25%"), 0, 0),
            (2, json!(0), json!(5), 0, 2),
        ];
        for (r, s, u, ws, wu_) in cases {
            let d = deployment(r, s.clone(), u.clone(), "v1");
            assert_eq!(
                (max_surge(&d), max_unavailable(&d)),
                (ws, wu_),
                "{r} {s} {u}"
            );
        }
        let mut recreate = deployment(10, json!("25%"), json!("25%"), "v1");
        recreate.spec.strategy.as_mut().unwrap().type_ = Some("Recreate".into());
        assert_eq!((max_surge(&recreate), max_unavailable(&recreate)), (0, 0));
    }

    #[test]
    fn first_sync_creates_revision_one_at_full_size() {
        let d = deployment(10, json!("25%"), json!("25%"), "v1");
        let p = run(&d, &[]);
        let rs = p.create.expect("creates a ReplicaSet");
        let hash = wu::template_hash(&d.spec.template, None);
        assert_eq!(wu::name(&rs.metadata), format!("web-{hash}"));
        assert_eq!(rs.spec.replicas, Some(10));
        assert_eq!(
            wu::labels(&rs.metadata).get(wu::POD_TEMPLATE_HASH),
            Some(&hash)
        );
        assert_eq!(
            rs.spec
                .selector
                .match_labels
                .as_ref()
                .unwrap()
                .get(wu::POD_TEMPLATE_HASH),
            Some(&hash)
        );
        let tl = rs
            .spec
            .template
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(tl.get(wu::POD_TEMPLATE_HASH), Some(&hash));
        assert_eq!(wu::annotation(&rs.metadata, wu::REVISION), Some("1"));
        assert_eq!(
            wu::annotation(&rs.metadata, wu::DESIRED_REPLICAS),
            Some("10")
        );
        assert_eq!(wu::annotation(&rs.metadata, wu::MAX_REPLICAS), Some("13"));
        assert_eq!(wu::annotation(&rs.metadata, "team"), Some("a"));
        assert_eq!(wu::annotation(&rs.metadata, wu::LAST_APPLIED), None);
        assert!(owners::controlled_by(&rs.metadata, "d-uid"));
        assert_eq!(p.revision.as_deref(), Some("1"));
        let st = p.status.unwrap();
        let prog = condition(st.conditions.as_deref().unwrap(), "Progressing").unwrap();
        assert_eq!(prog.reason.as_deref(), Some(NEW_RS_CREATED));
        assert_eq!(st.observed_generation, Some(2));
    }

    /// One rolling-update step at a time, from 10 x v1 to 10 x v2 with
    /// 25%/25% (surge 3, unavailable 2): never more than 13 pods, never
    /// fewer than 8 available.
    #[test]
    fn rolling_update_steps() {
        let d = deployment(10, json!("25%"), json!("25%"), "v2");
        struct Step {
            /// (image, rev, spec, available, created)
            rss: Vec<(&'static str, i64, i32, i32, i64)>,
            /// Want: a created RS's size, and (image, replicas) patches.
            create: Option<i32>,
            scaled: Vec<(&'static str, i32)>,
        }
        let steps = [
            // Template changed: new RS created with the surge, old scaled to min available.
            Step {
                rss: vec![("v1", 1, 10, 10, 1)],
                create: Some(3),
                scaled: vec![("v1", 8)],
            },
            // Old pods gone: room under the surge limit for new ones.
            Step {
                rss: vec![("v1", 1, 8, 8, 1), ("v2", 2, 3, 0, 2)],
                create: None,
                scaled: vec![("v2", 5)],
            },
            // At the surge limit with new pods not ready yet: nothing to do.
            Step {
                rss: vec![("v1", 1, 8, 8, 1), ("v2", 2, 5, 0, 2)],
                create: None,
                scaled: vec![],
            },
            // 3 new available: 11 available, 8 needed, 2 new unavailable -> old down 3.
            Step {
                rss: vec![("v1", 1, 8, 8, 1), ("v2", 2, 5, 3, 2)],
                create: None,
                scaled: vec![("v1", 5)],
            },
            // Old pods gone: new up to the surge limit.
            Step {
                rss: vec![("v1", 1, 5, 5, 1), ("v2", 2, 5, 3, 2)],
                create: None,
                scaled: vec![("v2", 8)],
            },
            // Old RS with unavailable pods: those go first.
            Step {
                rss: vec![("v1", 1, 5, 3, 1), ("v2", 2, 8, 5, 2)],
                create: None,
                scaled: vec![("v1", 3)],
            },
            // Stale old status (available > spec): counted as spec only.
            Step {
                rss: vec![("v1", 1, 5, 8, 1), ("v2", 2, 8, 3, 2)],
                create: None,
                scaled: vec![],
            },
            // Finishing: new at 10, all available: old to 0.
            Step {
                rss: vec![("v1", 1, 2, 2, 1), ("v2", 2, 10, 10, 2)],
                create: None,
                scaled: vec![("v1", 0)],
            },
            // Done.
            Step {
                rss: vec![("v1", 1, 0, 0, 1), ("v2", 2, 10, 10, 2)],
                create: None,
                scaled: vec![],
            },
        ];
        for (k, s) in steps.iter().enumerate() {
            let rss: Vec<ReplicaSet> = s
                .rss
                .iter()
                .map(|(img, rev, spec, av, c)| rs(&d, img, *rev, *spec, *av, *c))
                .collect();
            let p = run(&d, &rss);
            assert_eq!(
                p.create.as_ref().and_then(|r| r.spec.replicas),
                s.create,
                "step {k}: create"
            );
            let want: Vec<(String, i32)> =
                s.scaled.iter().map(|(i, n)| (i.to_string(), *n)).collect();
            assert_eq!(scaled(&p, &rss), want, "step {k}: scaled");
            // The invariant, from the plan's own numbers.
            let mut after: Vec<(i32, i32)> = rss
                .iter()
                .map(|r| (rs_replicas(r), safe_available(r)))
                .collect();
            for x in &p.patches {
                let i = rss
                    .iter()
                    .position(|r| wu::name(&r.metadata) == x.name)
                    .unwrap();
                if let Some(n) = x.replicas {
                    after[i].0 = n;
                    after[i].1 = after[i].1.min(n);
                }
            }
            let created = p.create.as_ref().and_then(|r| r.spec.replicas).unwrap_or(0);
            let total: i32 = after.iter().map(|a| a.0).sum::<i32>() + created;
            let avail: i32 = after.iter().map(|a| a.1).sum();
            assert!(total <= 13, "step {k}: {total} pods");
            let before: i32 = rss.iter().map(safe_available).sum();
            assert!(avail >= 8 || avail >= before, "step {k}: {avail} available");
        }
    }

    #[test]
    fn max_unavailable_zero_waits_for_new_pods() {
        let d = deployment(3, json!(1), json!(0), "v2");
        let rss = vec![rs(&d, "v1", 1, 3, 3, 1)];
        let p = run(&d, &rss);
        assert_eq!(p.create.as_ref().and_then(|r| r.spec.replicas), Some(1));
        assert!(p.patches.is_empty(), "{:?}", p.patches);
        // Once the new pod is available, one old pod may go.
        let rss = vec![rs(&d, "v1", 1, 3, 3, 1), rs(&d, "v2", 2, 1, 1, 2)];
        assert_eq!(scaled(&run(&d, &rss), &rss), vec![("v1".to_string(), 2)]);
    }

    #[test]
    fn scaling_a_settled_deployment() {
        // Steady at 10, user scales to 3: the lone active RS follows, no rollout.
        let mut d = deployment(3, json!("25%"), json!("25%"), "v1");
        let mut r = rs(&d, "v1", 1, 10, 10, 1);
        r.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(wu::DESIRED_REPLICAS.into(), "10".into());
        let p = run(&d, std::slice::from_ref(&r));
        assert!(p.create.is_none());
        assert_eq!(p.patches.len(), 1);
        assert_eq!(p.patches[0].replicas, Some(3));
        assert_eq!(
            p.patches[0]
                .annotations
                .get(wu::DESIRED_REPLICAS)
                .map(String::as_str),
            Some("3")
        );
        assert_eq!(p.patches[0].resource_version, "5");
        // And back up.
        d.spec.replicas = Some(10);
        let mut r = rs(&d, "v1", 1, 3, 3, 1);
        r.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(wu::DESIRED_REPLICAS.into(), "3".into());
        let p = run(&d, &[r]);
        assert_eq!(p.patches[0].replicas, Some(10));
    }

    #[test]
    fn proportional_scaling_mid_rollout() {
        // Mid-rollout at 10 (old 8, new 5 = 13 = 10 + surge 3), scaled to 20:
        // allowed 20 + 5 = 25, 12 more spread 8:5 -> about 7 and 5.
        let d10 = deployment(10, json!("25%"), json!("25%"), "v2");
        let d = deployment(20, json!("25%"), json!("25%"), "v2");
        let rss = vec![rs(&d10, "v1", 1, 8, 8, 1), rs(&d10, "v2", 2, 5, 3, 2)];
        let p = run(&d, &rss);
        let mut got = scaled(&p, &rss);
        got.sort();
        assert_eq!(got, vec![("v1".to_string(), 15), ("v2".to_string(), 10)]);
        let total: i32 = got.iter().map(|g| g.1).sum();
        assert_eq!(total, 25);
        assert!(
            p.patches
                .iter()
                .all(|x| x.annotations.get(wu::DESIRED_REPLICAS).map(String::as_str) == Some("20"))
        );
    }

    #[test]
    fn rollback_reuses_the_old_replicaset_with_a_new_revision() {
        // Template back to v1 while revisions 1 (v1, scaled to 0) and 2 (v2) exist.
        let d = deployment(10, json!("25%"), json!("25%"), "v1");
        let rss = vec![rs(&d, "v1", 1, 0, 0, 1), rs(&d, "v2", 2, 10, 10, 2)];
        let p = run(&d, &rss);
        assert!(p.create.is_none());
        assert_eq!(p.revision.as_deref(), Some("3"));
        let v1 = p
            .patches
            .iter()
            .find(|x| x.name == wu::name(&rss[0].metadata))
            .unwrap();
        assert_eq!(
            v1.annotations.get(wu::REVISION).map(String::as_str),
            Some("3")
        );
        assert_eq!(
            v1.annotations.get(wu::REVISION_HISTORY).map(String::as_str),
            Some("1")
        );
        assert_eq!(v1.replicas, Some(3));
    }

    #[test]
    fn rollback_target_selection() {
        let d = deployment(1, json!(1), json!(0), "v1");
        let rss = vec![
            rs(&d, "v1", 4, 0, 0, 1),
            rs(&d, "v2", 7, 1, 1, 2),
            rs(&d, "v3", 5, 0, 0, 3),
        ];
        let img = |rs: Option<&ReplicaSet>| {
            rs.and_then(|r| {
                r.spec.template.as_ref()?.spec.as_ref()?.containers[0]
                    .image
                    .clone()
            })
        };
        // (to revision, want image)
        let cases = [(0, Some("v3")), (4, Some("v1")), (7, Some("v2")), (9, None)];
        for (to, want) in cases {
            assert_eq!(img(rollback_target(&rss, to)).as_deref(), want, "to {to}");
        }
        assert!(rollback_target(&rss[..1], 0).is_none());
    }

    #[test]
    fn finds_the_new_replicaset_ignoring_the_hash_label() {
        let d = deployment(1, json!(1), json!(0), "v2");
        let rss = vec![rs(&d, "v1", 1, 0, 0, 1), rs(&d, "v2", 2, 1, 1, 2)];
        assert_eq!(
            find_new_rs(&d, &rss).map(|r| wu::revision(&r.metadata)),
            Some(2)
        );
        let d3 = deployment(1, json!(1), json!(0), "v3");
        assert!(find_new_rs(&d3, &rss).is_none());
    }

    #[test]
    fn history_limit_deletes_oldest_idle_revisions() {
        let mut d = deployment(1, json!(1), json!(0), "v4");
        d.spec.revision_history_limit = Some(1);
        let mut rss = vec![
            rs(&d, "v1", 1, 0, 0, 1),
            rs(&d, "v2", 2, 0, 0, 2),
            rs(&d, "v3", 3, 0, 0, 3),
            rs(&d, "v4", 4, 1, 1, 4),
        ];
        // Complete (as the status says): cleanup runs.
        d.status = Some(DeploymentStatus {
            replicas: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            observed_generation: Some(2),
            ..Default::default()
        });
        // v2 still has a pod: kept.
        rss[1].status.as_mut().unwrap().replicas = 1;
        let p = run(&d, &rss);
        let names: Vec<&str> = p.deletes.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, vec![wu::name(&rss[0].metadata)]);
    }

    #[test]
    fn status_and_conditions() {
        // Complete rollout: NewReplicaSetAvailable, Available True.
        let d = deployment(2, json!(1), json!(0), "v1");
        let rss = vec![rs(&d, "v1", 1, 2, 2, 1)];
        let st = run(&d, &rss).status.unwrap();
        assert_eq!(
            (
                st.replicas,
                st.updated_replicas,
                st.ready_replicas,
                st.available_replicas,
                st.unavailable_replicas
            ),
            (Some(2), Some(2), Some(2), Some(2), Some(0))
        );
        let conds = st.conditions.as_deref().unwrap();
        let prog = condition(conds, "Progressing").unwrap();
        assert_eq!(prog.reason.as_deref(), Some(NEW_RS_AVAILABLE));
        assert_eq!(prog.status.as_deref(), Some("True"));
        let av = condition(conds, "Available").unwrap();
        assert_eq!(
            (av.status.as_deref(), av.reason.as_deref()),
            (Some("True"), Some("MinimumReplicasAvailable"))
        );
        // The same status again: nothing to write.
        let mut settled = d.clone();
        settled.status = Some(st);
        assert!(run(&settled, &rss).status.is_none());

        // Mid-rollout progress: ReplicaSetUpdated; too few available: Available False.
        let d = deployment(4, json!(1), json!(0), "v2");
        let rss = vec![rs(&d, "v1", 1, 2, 2, 1), rs(&d, "v2", 2, 3, 1, 2)];
        let st = run(&d, &rss).status.unwrap();
        let conds = st.conditions.as_deref().unwrap();
        assert_eq!(
            condition(conds, "Progressing").unwrap().reason.as_deref(),
            Some(RS_UPDATED)
        );
        assert_eq!(
            condition(conds, "Available").unwrap().status.as_deref(),
            Some("False")
        );
        assert_eq!(st.unavailable_replicas, Some(2));
    }

    #[test]
    fn progress_deadline_times_out() {
        let mut d = deployment(2, json!(1), json!(0), "v2");
        let stale = Time(Timestamp::from_second(NOW - 601).unwrap());
        let rss = vec![rs(&d, "v1", 1, 2, 2, 1), rs(&d, "v2", 2, 1, 0, 2)];
        d.status = Some(DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(3),
            updated_replicas: Some(1),
            ready_replicas: Some(2),
            available_replicas: Some(2),
            unavailable_replicas: Some(1),
            conditions: Some(vec![DeploymentCondition {
                type_: Some("Progressing".into()),
                status: Some("True".into()),
                reason: Some(RS_UPDATED.into()),
                message: Some("x".into()),
                last_update_time: Some(stale.clone()),
                last_transition_time: Some(stale),
            }]),
            ..Default::default()
        });
        let st = run(&d, &rss).status.unwrap();
        let prog = condition(st.conditions.as_deref().unwrap(), "Progressing").unwrap();
        assert_eq!(
            (prog.status.as_deref(), prog.reason.as_deref()),
            (Some("False"), Some(TIMED_OUT))
        );
    }

    #[test]
    fn recreate_waits_for_old_pods() {
        let mut d = deployment(3, json!(1), json!(0), "v2");
        d.spec.strategy = Some(k8s_openapi::api::apps::v1::DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let old = rs(&d, "v1", 1, 3, 3, 1);
        // Old scaled to zero first; no new RS yet.
        let p = run(&d, std::slice::from_ref(&old));
        assert!(p.create.is_none());
        assert_eq!(p.patches[0].replicas, Some(0));
        // Old at zero but a pod still terminating: wait.
        let mut zero = rs(&d, "v1", 1, 0, 0, 1);
        zero.status.as_mut().unwrap().replicas = 0;
        let pods = HashMap::from([("uid-v1".to_string(), 1usize)]);
        let p = plan(&DeployInput {
            d: &d,
            rss: std::slice::from_ref(&zero),
            pods_per_rs: &pods,
            now: now(),
        });
        assert!(p.create.is_none());
        // All gone: the new RS comes up at full size.
        let p = run(&d, std::slice::from_ref(&zero));
        assert_eq!(p.create.and_then(|r| r.spec.replicas), Some(3));
    }

    #[test]
    fn hash_collision_bumps_collision_count() {
        let d = deployment(1, json!(1), json!(0), "v2");
        // One of ours has the new RS's name but another template.
        let mut squatter = rs(&d, "v1", 1, 1, 1, 1);
        squatter.metadata.name = Some(format!("web-{}", wu::template_hash(&d.spec.template, None)));
        let p = run(&d, &[squatter]);
        assert!(p.create.is_none());
        assert_eq!(p.status.unwrap().collision_count, Some(1));
    }

    #[test]
    fn paused_deployments_do_not_roll_out() {
        let mut d = deployment(2, json!(1), json!(0), "v2");
        d.spec.paused = Some(true);
        let rss = vec![rs(&d, "v1", 1, 2, 2, 1)];
        let p = run(&d, &rss);
        assert!(p.create.is_none());
        assert!(p.patches.is_empty());
        let prog = condition(
            p.status.as_ref().unwrap().conditions.as_deref().unwrap(),
            "Progressing",
        )
        .unwrap();
        assert_eq!(prog.reason.as_deref(), Some(PAUSED));
    }
}
