//! The garbage collector end to end against a real `keelson server`:
//! background, foreground and orphan deletion through ownerReferences, and
//! a ReplicaSet's pods going with it on a plain `kubectl delete`.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keelson_e2e::fake::{FakeNodes, NodeShape};
use keelson_e2e::{ServerProcess, kubectl_versions};
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const NS: &str = "default";

async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap(),
        uid: owner.meta().uid.clone().unwrap(),
        block_owner_deletion: Some(true),
        controller: None,
    }
}

fn cm(name: &str, owners: Vec<OwnerReference>) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "ownerReferences": owners},
        "data": {"k": "v"},
    }))
    .unwrap()
}

async fn gone(api: &Api<ConfigMap>, name: &str) -> bool {
    matches!(api.get_opt(name).await, Ok(None))
}

#[tokio::test(flavor = "multi_thread")]
async fn background_deletion_removes_dependents_of_a_deleted_owner() {
    let server = ServerProcess::start(None);
    let c = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(c, NS);
    let pp = PostParams::default();
    let owner = cms.create(&pp, &cm("owner", vec![])).await.unwrap();
    cms.create(&pp, &cm("dependent", vec![owner_ref(&owner)]))
        .await
        .unwrap();
    // A reference to "owner" by a uid that never existed is dangling: the
    // collector reads the owner back, sees another uid, and deletes it.
    let mut ghost = owner_ref(&owner);
    ghost.uid = "00000000-0000-0000-0000-00000000dead".into();
    cms.create(&pp, &cm("dangling", vec![ghost])).await.unwrap();
    wait_for(
        "the dependent of a ghost owner is deleted",
        Duration::from_secs(20),
        || gone(&cms, "dangling"),
    )
    .await;
    // The collector has made passes by now: the live owner's dependent stays.
    assert!(cms.get_opt("dependent").await.unwrap().is_some());

    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    let took = wait_for(
        "the dependent is deleted after its owner",
        Duration::from_secs(20),
        || gone(&cms, "dependent"),
    )
    .await;
    eprintln!("background: dependent deleted {took:?} after its owner");
}

#[tokio::test(flavor = "multi_thread")]
async fn foreground_deletion_removes_the_dependent_before_the_owner() {
    let server = ServerProcess::start(None);
    let c = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(c, NS);
    let pp = PostParams::default();
    let owner = cms.create(&pp, &cm("owner", vec![])).await.unwrap();
    // A finalizer of the test's holds the dependent while it is being deleted,
    // so that the owner can be seen waiting for it.
    let mut dep = cm("dependent", vec![owner_ref(&owner)]);
    dep.metadata.finalizers = Some(vec!["keelson.test/hold".into()]);
    cms.create(&pp, &dep).await.unwrap();

    cms.delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    wait_for(
        "the collector deletes the dependent",
        Duration::from_secs(20),
        || async {
            cms.get("dependent")
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
                .is_some()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let o = cms
        .get("owner")
        .await
        .expect("the owner waits for its dependent");
    assert!(o.metadata.deletion_timestamp.is_some());
    assert_eq!(
        o.metadata.finalizers,
        Some(vec!["foregroundDeletion".to_string()])
    );

    let release = json!({"metadata": {"finalizers": null}});
    cms.patch(
        "dependent",
        &PatchParams::default(),
        &Patch::Merge(&release),
    )
    .await
    .unwrap();
    wait_for("the dependent is gone", Duration::from_secs(10), || {
        gone(&cms, "dependent")
    })
    .await;
    let took = wait_for("then the owner is gone", Duration::from_secs(20), || {
        gone(&cms, "owner")
    })
    .await;
    eprintln!("foreground: owner deleted {took:?} after its last dependent");
}

#[tokio::test(flavor = "multi_thread")]
async fn orphan_deletion_keeps_dependents_and_removes_the_reference() {
    let server = ServerProcess::start(None);
    let c = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(c, NS);
    let pp = PostParams::default();
    let a = cms.create(&pp, &cm("owner-a", vec![])).await.unwrap();
    let b = cms.create(&pp, &cm("owner-b", vec![])).await.unwrap();
    cms.create(&pp, &cm("only-a", vec![owner_ref(&a)]))
        .await
        .unwrap();
    cms.create(&pp, &cm("a-and-b", vec![owner_ref(&a), owner_ref(&b)]))
        .await
        .unwrap();

    cms.delete("owner-a", &DeleteParams::orphan())
        .await
        .unwrap();
    let took = wait_for(
        "the orphaning owner is gone",
        Duration::from_secs(20),
        || gone(&cms, "owner-a"),
    )
    .await;
    eprintln!("orphan: owner deleted {took:?} after the request");
    let only_a = cms.get("only-a").await.expect("orphaned dependent stays");
    assert!(only_a.metadata.deletion_timestamp.is_none());
    assert!(
        only_a
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    let both = cms.get("a-and-b").await.expect("orphaned dependent stays");
    assert_eq!(both.metadata.owner_references, Some(vec![owner_ref(&b)]));
    // And nothing deletes them afterwards.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(cms.get_opt("only-a").await.unwrap().is_some());
    assert!(cms.get_opt("a-and-b").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_delete_replicaset_takes_its_pods() {
    let server = ServerProcess::start(None);
    let c = server.client().await;
    let nodes = FakeNodes::start(c.clone(), "gcn", 1, NodeShape::default()).await;
    let node = nodes.names[0].clone();
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
    let pp = PostParams::default();
    // Zero replicas, and pods that do not match its selector and name it as a
    // plain (non-controller) owner: the ReplicaSet controller leaves them be,
    // only the garbage collector acts on them.
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
            },
        },
    }))
    .unwrap();
    let rs = rss.create(&pp, &rs).await.unwrap();
    let names: Vec<String> = (0..3).map(|i| format!("web-{i}")).collect();
    for name in &names {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"gc-test": "web"}, "ownerReferences": [owner_ref(&rs)]},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "busybox:1.36"}],
            },
        }))
        .unwrap();
        pods.create(&pp, &pod).await.unwrap();
    }
    wait_for(
        "the fake kubelet runs the pods",
        Duration::from_secs(20),
        || async {
            let list = pods.list(&Default::default()).await.unwrap();
            list.items
                .iter()
                .filter(|p| names.contains(p.metadata.name.as_ref().unwrap()))
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        },
    )
    .await;

    match kubectl_versions().last() {
        Some(&minor) => {
            server.kubectl_ok(
                minor,
                &[
                    "delete",
                    "replicaset",
                    "web",
                    "-n",
                    NS,
                    "--cascade=background",
                ],
            );
        }
        None => {
            rss.delete("web", &DeleteParams::background())
                .await
                .unwrap();
        }
    }
    assert!(rss.get_opt("web").await.unwrap().is_none());
    let took = wait_for(
        "the ReplicaSet's pods are gone",
        Duration::from_secs(30),
        || async {
            let list = pods.list(&Default::default()).await.unwrap();
            !list
                .items
                .iter()
                .any(|p| names.contains(p.metadata.name.as_ref().unwrap()))
        },
    )
    .await;
    eprintln!("replicaset: pods gone {took:?} after kubectl delete");
}
