//! The Deployment controller: one ReplicaSet per pod-template revision,
//! rolled from old to new by the Deployment's strategy.
//!
//! Deployments, ReplicaSets and pods come from the shared informers. A
//! ReplicaSet change queues its controlling Deployment, before and after
//! the change (for an orphan, every Deployment that selects it); a pod
//! change queues the Deployment above it only for Recreate, which waits for
//! old pods to be gone. Each sync adopts
//! and releases ReplicaSets, plans purely ([`workload_deployplan::plan`]),
//! then acts: create the new ReplicaSet, record the revision on the
//! Deployment, scale (merge patches pinned to the planned resourceVersion,
//! so a stale cache makes a conflict rather than a wrong scale), delete
//! history beyond revisionHistoryLimit, write status.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use keelson_rules::{owners, readiness};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};

use super::runtime::{Controller, Key, SyncError, brief, is_status};
use super::workload_deployplan::{self as dplan, DeployInput, RsPatch};
use super::workload_util as wu;
use crate::informers::{Cache, Event, Informers};

const CONTROLLER: &str = "deployment";
const WORKERS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} for deployment {key}: {}", brief(.error))]
    Api {
        op: String,
        key: Key,
        error: kube::Error,
    },
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

struct Dc {
    client: kube::Client,
    deployments: Cache<Deployment>,
    replicasets: Cache<ReplicaSet>,
    pods: Cache<Pod>,
}

/// Deployments that should look at `rs`: its controller, or for an orphan
/// every Deployment in its namespace that selects it.
fn deployments_for_rs(rs: &ReplicaSet, deployments: &Cache<Deployment>) -> Vec<Key> {
    let ns = wu::namespace(&rs.metadata);
    if let Some(r) = owners::controller_ref(&rs.metadata) {
        if r.kind == "Deployment" && r.api_version.starts_with("apps/") {
            return vec![Key::new(ns, &r.name)];
        }
        return vec![];
    }
    deployments
        .filter(|d| wu::namespace(&d.metadata) == ns)
        .iter()
        .filter(|d| wu::selects(wu::selector(&d.spec.selector).as_ref(), &rs.metadata))
        .map(|d| Key::of(d.as_ref()))
        .collect()
}

/// The Recreate Deployment above `pod`, if any.
fn recreate_deployment_for_pod(
    pod: &Pod,
    replicasets: &Cache<ReplicaSet>,
    deployments: &Cache<Deployment>,
) -> Option<Key> {
    let ns = wu::namespace(&pod.metadata);
    let r = owners::controller_ref(&pod.metadata).filter(|r| r.kind == "ReplicaSet")?;
    let rs = replicasets.get(&Key::new(ns, &r.name))?;
    let dr = owners::controller_ref(&rs.metadata).filter(|r| r.kind == "Deployment")?;
    let key = Key::new(ns, &dr.name);
    let d = deployments.get(&key)?;
    (!dplan::is_rolling(&d)).then_some(key)
}

/// Objects an event concerns: the one before the change and the one after.
fn both<T>(ev: &Event<T>) -> impl Iterator<Item = &T> {
    ev.old().into_iter().chain(ev.object()).map(|o| o.as_ref())
}

pub async fn run(ctx: Arc<super::Context>, informers: Arc<Informers>) {
    let mut c: Controller<Key> = Controller::new(CONTROLLER);
    let deployments = c.watch(&informers.get::<Deployment>(), |ev, q| {
        if let Some(d) = ev.object() {
            q.add(Key::of(d.as_ref()));
        }
    });
    let replicasets = {
        let ds = deployments.clone();
        c.watch(&informers.get::<ReplicaSet>(), move |ev, q| {
            for rs in both(ev) {
                for k in deployments_for_rs(rs, &ds) {
                    q.add(k);
                }
            }
        })
    };
    let pods = {
        let (ds, rss) = (deployments.clone(), replicasets.clone());
        c.watch(&informers.get::<Pod>(), move |ev, q| {
            if let Some(k) = ev
                .object()
                .and_then(|p| recreate_deployment_for_pod(p, &rss, &ds))
            {
                q.add(k);
            }
        })
    };
    let dc = Arc::new(Dc {
        client: ctx.client_as(super::identity::DEPLOYMENT),
        deployments,
        replicasets,
        pods,
    });
    c.run(WORKERS, move |key: Key| {
        let dc = dc.clone();
        async move { sync(&dc, &key).await }
    })
    .await;
}

/// Adopt matching orphan ReplicaSets, release ones no longer selected, and
/// return the ReplicaSets the Deployment controls.
async fn claim(dc: &Dc, d: &Deployment, key: &Key) -> Result<Vec<ReplicaSet>, Error> {
    let d_uid = wu::uid(&d.metadata).to_string();
    let sel = wu::selector(&d.spec.selector);
    let deleting = wu::is_terminating(&d.metadata);
    let api: Api<ReplicaSet> = Api::namespaced(dc.client.clone(), &key.namespace);
    let owner = owners::controller_owner_ref("apps/v1", "Deployment", &d.metadata);
    let mut owned = Vec::new();
    for rs in dc
        .replicasets
        .filter(|rs| wu::namespace(&rs.metadata) == key.namespace)
    {
        let matches = wu::selects(sel.as_ref(), &rs.metadata);
        let name = wu::name(&rs.metadata).to_string();
        let rv = rs.metadata.resource_version.clone();
        match owners::controller_ref(&rs.metadata) {
            Some(r) if r.uid == d_uid => {
                if matches {
                    owned.push((*rs).clone());
                } else if !deleting && !wu::is_terminating(&rs.metadata) {
                    let refs = owners::without_owner(rs.metadata.owner_references.as_ref(), &d_uid);
                    let patch =
                        json!({"metadata": {"ownerReferences": refs, "resourceVersion": rv}});
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_status(&e, 404) => {}
                        Err(e) => {
                            return Err(api_err(format!("release replicaset {name}"), key)(e));
                        }
                    }
                }
            }
            Some(_) => {}
            None if matches && !deleting && !wu::is_terminating(&rs.metadata) => {
                let refs = owners::with_owner(rs.metadata.owner_references.as_ref(), owner.clone());
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rv}});
                let adopted = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api_err(format!("adopt replicaset {name}"), key))?;
                owned.push(adopted);
            }
            None => {}
        }
    }
    Ok(owned)
}

fn rs_patch_body(p: &RsPatch) -> Value {
    let mut body = json!({"metadata": {"resourceVersion": p.resource_version}});
    if !p.annotations.is_empty() {
        body["metadata"]["annotations"] = json!(p.annotations);
    }
    if let Some(r) = p.replicas {
        body["spec"]["replicas"] = json!(r);
    }
    if let Some(m) = p.min_ready_seconds {
        body["spec"]["minReadySeconds"] = json!(m);
    }
    body
}

async fn sync(dc: &Dc, key: &Key) -> Result<Option<Duration>, Error> {
    let Some(d) = dc.deployments.get(key) else {
        return Ok(None);
    };
    let rss = claim(dc, &d, key).await?;
    let uids: HashSet<&str> = rss.iter().map(|rs| wu::uid(&rs.metadata)).collect();
    let mut pods_per_rs: HashMap<String, usize> = HashMap::new();
    if !dplan::is_rolling(&d) {
        for p in dc
            .pods
            .filter(|p| wu::namespace(&p.metadata) == key.namespace)
        {
            if readiness::is_pod_terminal(&p) {
                continue;
            }
            if let Some(r) =
                owners::controller_ref(&p.metadata).filter(|r| uids.contains(r.uid.as_str()))
            {
                *pods_per_rs.entry(r.uid.clone()).or_default() += 1;
            }
        }
    }
    let plan = dplan::plan(&DeployInput {
        d: &d,
        rss: &rss,
        pods_per_rs: &pods_per_rs,
        now: k8s_openapi::jiff::Timestamp::now(),
    });

    let rs_api: Api<ReplicaSet> = Api::namespaced(dc.client.clone(), &key.namespace);
    let d_api: Api<Deployment> = Api::namespaced(dc.client.clone(), &key.namespace);
    if let Some(rs) = &plan.create {
        let name = wu::name(&rs.metadata).to_string();
        match rs_api.create(&PostParams::default(), rs).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => {
                // Ours and the same template: the cache is behind; else a
                // hash collision, which collisionCount resolves.
                let existing = rs_api
                    .get_opt(&name)
                    .await
                    .map_err(api_err(format!("get replicaset {name}"), key))?;
                let ours = existing.as_ref().is_some_and(|x| {
                    owners::controlled_by(&x.metadata, wu::uid(&d.metadata))
                        && x.spec
                            .template
                            .as_ref()
                            .is_some_and(|t| wu::templates_equal_ignoring_hash(t, &d.spec.template))
                });
                if ours || existing.is_none() {
                    return Ok(Some(Duration::from_millis(500)));
                }
                let count = d
                    .status
                    .as_ref()
                    .and_then(|s| s.collision_count)
                    .unwrap_or(0)
                    + 1;
                let patch = json!({"status": {"collisionCount": count}});
                d_api
                    .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api_err("update collisionCount", key))?;
                return Ok(None);
            }
            Err(e) => return Err(api_err(format!("create replicaset {name}"), key)(e)),
        }
    }
    if let Some(rev) = &plan.revision {
        let patch = json!({"metadata": {"annotations": {wu::REVISION: rev}}});
        d_api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("set revision annotation", key))?;
    }
    for p in &plan.patches {
        rs_api
            .patch(
                &p.name,
                &PatchParams::default(),
                &Patch::Merge(&rs_patch_body(p)),
            )
            .await
            .map_err(api_err(format!("scale replicaset {}", p.name), key))?;
    }
    for (name, uid) in &plan.deletes {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match rs_api.delete(name, &dp).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
            Err(e) => return Err(api_err(format!("delete old replicaset {name}"), key)(e)),
        }
    }
    if let Some(patch) = plan
        .status
        .as_ref()
        .and_then(|st| wu::status_patch(d.status.as_ref(), st))
    {
        match d_api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(None),
            Err(e) => return Err(api_err("update status", key)(e)),
        }
    }
    Ok(plan.requeue_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn replicaset_patches_are_pinned_and_minimal() {
        let p = RsPatch {
            name: "web-abc".into(),
            resource_version: "42".into(),
            replicas: Some(3),
            annotations: BTreeMap::from([(wu::DESIRED_REPLICAS.to_string(), "3".to_string())]),
            min_ready_seconds: None,
        };
        assert_eq!(
            rs_patch_body(&p),
            json!({"metadata": {"resourceVersion": "42", "annotations": {wu::DESIRED_REPLICAS: "3"}},
                   "spec": {"replicas": 3}})
        );
        let only_meta = RsPatch {
            replicas: None,
            annotations: BTreeMap::new(),
            min_ready_seconds: Some(5),
            ..p
        };
        assert_eq!(
            rs_patch_body(&only_meta),
            json!({"metadata": {"resourceVersion": "42"}, "spec": {"minReadySeconds": 5}})
        );
    }
}
