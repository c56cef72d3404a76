//! The ReplicaSet controller: keeps `spec.replicas` active pods that match
//! a ReplicaSet's selector and name it as their controller, and reports how
//! many are ready and available.
//!
//! ReplicaSets and pods come from the shared informers; a pod change
//! queues its controlling ReplicaSet before and after the change (or, for
//! an orphan, every ReplicaSet that selects it). Each sync plans purely ([`workload_rsplan::plan`]) and then acts:
//! adopt/release, create (in slow-start batches), delete, write status.
//!
//! Expectations: pods this controller created or deleted may not be in its
//! cache yet. Until they are (or 30 s pass), the ReplicaSet creates and
//! deletes nothing more, so a lagging watch cannot cause double creation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use keelson_rules::owners;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use super::runtime::{Controller, Key, SyncError, brief, is_status};
use super::workload_rsplan::{self as rsplan, PodRef, RsInput};
use super::workload_util as wu;
use crate::informers::{Cache, Informers};

const CONTROLLER: &str = "replicaset";
const WORKERS: usize = 4;
const EXPECTATIONS_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} for replicaset {key}: {}", brief(.error))]
    Api {
        op: String,
        key: Key,
        error: kube::Error,
    },
}

/// Creations and deletions a ReplicaSet waits to see in the cache.
#[derive(Debug, Default)]
struct Pending {
    /// Names (and uids) of pods created.
    created: Vec<(String, String)>,
    /// Names and uids of pods deleted.
    deleted: Vec<(String, String)>,
    since: Option<Instant>,
}

/// What the pod cache says about a pod name: its uid and whether it is
/// terminating, or nothing.
type Lookup<'a> = &'a dyn Fn(&str) -> Option<(String, bool)>;

impl Pending {
    /// Whether the cache has caught up: every created pod is in it, every
    /// deleted pod is gone or terminating; or the wait expired.
    fn satisfied(&self, lookup: Lookup<'_>, now: Instant) -> bool {
        if self
            .since
            .is_some_and(|s| now.duration_since(s) > EXPECTATIONS_TTL)
        {
            return true;
        }
        let created = self
            .created
            .iter()
            .all(|(n, u)| lookup(n).is_some_and(|(uid, _)| &uid == u));
        let deleted = self
            .deleted
            .iter()
            .all(|(n, u)| lookup(n).is_none_or(|(uid, term)| &uid != u || term));
        created && deleted
    }
}

#[derive(Default)]
struct Expectations(Mutex<HashMap<Key, Pending>>);

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Pending>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn satisfied(&self, key: &Key, lookup: Lookup<'_>) -> bool {
        let mut m = self.lock();
        let ok = m
            .get(key)
            .is_none_or(|p| p.satisfied(lookup, Instant::now()));
        if ok {
            m.remove(key);
        }
        ok
    }

    fn created(&self, key: &Key, name: String, uid: String) {
        let mut m = self.lock();
        let p = m.entry(key.clone()).or_default();
        p.since.get_or_insert_with(Instant::now);
        p.created.push((name, uid));
    }

    fn deleted(&self, key: &Key, pod: &PodRef) {
        let mut m = self.lock();
        let p = m.entry(key.clone()).or_default();
        p.since.get_or_insert_with(Instant::now);
        p.deleted.push((pod.name.clone(), pod.uid.clone()));
    }

    fn forget(&self, key: &Key) {
        self.lock().remove(key);
    }
}

struct Rsc {
    client: kube::Client,
    rs_store: Cache<ReplicaSet>,
    pod_store: Cache<Pod>,
    expectations: Expectations,
}

/// ReplicaSets that should look at `pod`: its controller, or for an orphan
/// every ReplicaSet in its namespace that selects it.
fn replicasets_for_pod(pod: &Pod, rs_store: &Cache<ReplicaSet>) -> Vec<Key> {
    let ns = wu::namespace(&pod.metadata);
    if let Some(r) = owners::controller_ref(&pod.metadata) {
        if r.kind == "ReplicaSet" && r.api_version.starts_with("apps/") {
            return vec![Key::new(ns, &r.name)];
        }
        return vec![];
    }
    rs_store
        .filter(|rs| wu::namespace(&rs.metadata) == ns)
        .iter()
        .filter(|rs| {
            let sel = wu::selector(&rs.spec.selector);
            wu::selects(sel.as_ref(), &pod.metadata)
        })
        .map(|rs| Key::of(rs.as_ref()))
        .collect()
}

pub async fn run(ctx: Arc<super::Context>, informers: Arc<Informers>) {
    let mut c: Controller<Key> = Controller::new(CONTROLLER);
    let rs_store = c.watch(&informers.get::<ReplicaSet>(), |ev, q| {
        if let Some(rs) = ev.object() {
            q.add(Key::of(rs.as_ref()));
        }
    });
    let pod_store = {
        let rs_store = rs_store.clone();
        c.watch(&informers.get::<Pod>(), move |ev, q| {
            // Before and after: a pod whose controller changed concerns both.
            for pod in ev.old().into_iter().chain(ev.object()) {
                for k in replicasets_for_pod(pod, &rs_store) {
                    q.add(k);
                }
            }
        })
    };
    let rsc = Arc::new(Rsc {
        client: ctx.client_as(super::identity::REPLICASET),
        rs_store,
        pod_store,
        expectations: Expectations::default(),
    });
    c.run(WORKERS, move |key: Key| {
        let rsc = rsc.clone();
        async move { sync(&rsc, &key).await }
    })
    .await;
}

fn api_err(op: impl Into<String>, key: &Key) -> impl FnOnce(kube::Error) -> Error + '_ {
    let op = op.into();
    move |error| Error::Api {
        op,
        key: key.clone(),
        error,
    }
}

impl SyncError for Error {
    fn quiet(&self) -> bool {
        matches!(self, Error::Api { error, .. } if is_status(error, 409))
    }
}

async fn sync(rsc: &Rsc, key: &Key) -> Result<Option<Duration>, Error> {
    let Some(rs) = rsc.rs_store.get(key) else {
        rsc.expectations.forget(key);
        return Ok(None);
    };
    let rs_uid = wu::uid(&rs.metadata).to_string();
    let pods: Vec<Arc<Pod>> = rsc
        .pod_store
        .filter(|p| wu::namespace(&p.metadata) == key.namespace);
    // Siblings: ReplicaSets with the same controller (a Deployment's revisions).
    let mut related_uids: HashSet<String> = HashSet::from([rs_uid.clone()]);
    if let Some(owner) = owners::controller_ref(&rs.metadata) {
        for s in rsc.rs_store.state() {
            if wu::namespace(&s.metadata) == key.namespace
                && owners::controlled_by(&s.metadata, &owner.uid)
            {
                related_uids.insert(wu::uid(&s.metadata).to_string());
            }
        }
    }
    let related: Vec<Arc<Pod>> = pods
        .iter()
        .filter(|p| {
            owners::controller_ref(&p.metadata).is_some_and(|r| related_uids.contains(&r.uid))
        })
        .cloned()
        .collect();
    let by_name: HashMap<&str, &Pod> = pods
        .iter()
        .map(|p| (wu::name(&p.metadata), p.as_ref()))
        .collect();
    let lookup = |name: &str| {
        by_name.get(name).map(|p| {
            (
                wu::uid(&p.metadata).to_string(),
                wu::is_terminating(&p.metadata),
            )
        })
    };
    let satisfied = rsc.expectations.satisfied(key, &lookup);
    let now = k8s_openapi::jiff::Timestamp::now();
    let plan = rsplan::plan(&RsInput {
        rs: &rs,
        pods: &pods,
        related: &related,
        expectations_satisfied: satisfied,
        now,
    });

    let pods_api: Api<Pod> = Api::namespaced(rsc.client.clone(), &key.namespace);
    let owner = owners::controller_owner_ref("apps/v1", "ReplicaSet", &rs.metadata);
    for p in &plan.adopt {
        let refs = owners::with_owner(
            by_name
                .get(p.name.as_str())
                .and_then(|x| x.metadata.owner_references.as_ref()),
            owner.clone(),
        );
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": p.resource_version, "uid": p.uid}});
        pods_api
            .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!("adopt pod {}", p.name), key))?;
    }
    for p in &plan.release {
        let refs = owners::without_owner(
            by_name
                .get(p.name.as_str())
                .and_then(|x| x.metadata.owner_references.as_ref()),
            &rs_uid,
        );
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": p.resource_version, "uid": p.uid}});
        match pods_api
            .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(api_err(format!("release pod {}", p.name), key)(e)),
        }
    }

    let mut failure: Option<(&str, String)> = None;
    let mut first_error: Option<Error> = None;
    if plan.create > 0
        && let Some(template) = rsplan::pod_from_template(&rs)
    {
        // Slow start: 1, 2, 4, ... pods at once; stop at the first failing batch.
        let mut left = plan.create;
        let mut batch = 1usize;
        while left > 0 {
            let n = batch.min(left);
            let pp = PostParams::default();
            let results = join_all((0..n).map(|_| pods_api.create(&pp, &template))).await;
            let mut failed = false;
            for r in results {
                match r {
                    Ok(p) => rsc.expectations.created(
                        key,
                        wu::name(&p.metadata).to_string(),
                        wu::uid(&p.metadata).to_string(),
                    ),
                    Err(e) => {
                        failed = true;
                        if failure.is_none() {
                            failure = Some(("FailedCreate", brief(&e)));
                            first_error = Some(api_err("create pod", key)(e));
                        }
                    }
                }
            }
            if failed {
                break;
            }
            left -= n;
            batch *= 2;
        }
    }
    if !plan.delete.is_empty() {
        for p in &plan.delete {
            rsc.expectations.deleted(key, p);
        }
        let results = join_all(plan.delete.iter().map(|p| {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(p.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            let api = pods_api.clone();
            async move { (p, api.delete(&p.name, &dp).await) }
        }))
        .await;
        for (p, r) in results {
            match r {
                Ok(_) => {}
                // Gone already, or replaced by a namesake: nothing to delete.
                Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
                Err(e) => {
                    if failure.is_none() {
                        failure = Some(("FailedDelete", brief(&e)));
                        first_error = Some(api_err(format!("delete pod {}", p.name), key)(e));
                    }
                }
            }
        }
    }

    let status = rsplan::status(
        &rs,
        &plan.claimed,
        now,
        failure.as_ref().map(|(r, m)| (*r, m.as_str())),
    );
    if let Some(patch) = wu::status_patch(rs.status.as_ref(), &status) {
        let api: Api<ReplicaSet> = Api::namespaced(rsc.client.clone(), &key.namespace);
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(None),
            Err(e) => return Err(api_err("update status", key)(e)),
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(plan.requeue_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_wait_for_the_cache() {
        let created = Pending {
            created: vec![("a".into(), "u1".into())],
            deleted: vec![("b".into(), "u2".into())],
            since: Some(Instant::now()),
        };
        let now = Instant::now();
        // (cache contents: name -> (uid, terminating), satisfied)
        type Cache = Vec<(&'static str, &'static str, bool)>;
        let cases: Vec<(Cache, bool)> = vec![
            (vec![("b", "u2", false)], false),
            (vec![("a", "u1", false), ("b", "u2", false)], false),
            (vec![("a", "u1", false), ("b", "u2", true)], true),
            (vec![("a", "u1", false)], true),
            (vec![("a", "u1", false), ("b", "u3", false)], true),
            (vec![("a", "other", false)], false),
        ];
        for (cache, want) in cases {
            let lookup = |n: &str| {
                cache
                    .iter()
                    .find(|(name, _, _)| *name == n)
                    .map(|(_, u, t)| (u.to_string(), *t))
            };
            assert_eq!(created.satisfied(&lookup, now), want, "{cache:?}");
        }
        // Expired expectations no longer block.
        let lookup = |_: &str| None;
        assert!(created.satisfied(&lookup, now + EXPECTATIONS_TTL + Duration::from_secs(1)));
    }
}
