//! DaemonSets end to end against a real `keelson server` running its
//! controllers, with fake nodes whose fake kubelet marks pods Running and
//! Ready: one pod per eligible node, taints, new nodes, and a rolling update
//! that never leaves more than `maxUnavailable` nodes without an available pod.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use keelson_e2e::ServerProcess;
use keelson_e2e::fake::{FakeNodes, NodeShape};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn hash_of(p: &Pod) -> String {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("controller-revision-hash").cloned())
        .unwrap_or_default()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Live (not terminating) daemon pods by node.
async fn pods_by_node(pods: &Api<Pod>) -> BTreeMap<String, Vec<Pod>> {
    let mut out: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for p in pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items
    {
        if p.metadata.deletion_timestamp.is_none() {
            out.entry(node_of(&p)).or_default().push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_pods_follow_nodes_and_roll() {
    let server = ServerProcess::start(None);
    let client = server.client().await;
    let nodes = FakeNodes::start(client.clone(), "dsn", 4, NodeShape::default()).await;
    let ns = "infra";
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await
        .unwrap();

    // dsn-3 carries a taint the DaemonSet does not tolerate.
    let node_api: Api<Node> = Api::all(client.clone());
    node_api
        .patch(
            "dsn-3",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}})),
        )
        .await
        .unwrap();

    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"containers": [{"name": "agent", "image": "agent:1"}]}},
        },
    }))
    .unwrap();
    dss.create(&PostParams::default(), &ds).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let expected: BTreeSet<String> = ["dsn-0", "dsn-1", "dsn-2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let by_node = eventually(
        "one ready pod on each untainted node",
        Duration::from_secs(20),
        || async {
            let m = pods_by_node(&pods).await;
            let ok = m.keys().cloned().collect::<BTreeSet<_>>() == expected
                && m.values().all(|v| v.len() == 1 && ready(&v[0]));
            ok.then_some(m)
        },
    )
    .await;
    let first_hash = hash_of(&by_node["dsn-0"][0]);
    assert!(!first_hash.is_empty());
    for (node, list) in &by_node {
        let p = &list[0];
        assert_eq!(hash_of(p), first_hash);
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("DaemonSet", "agent", Some(true))
        );
        let spec = p.spec.as_ref().unwrap();
        let terms = serde_json::to_value(&spec.affinity).unwrap();
        assert_eq!(
            terms["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                [0]["matchFields"][0],
            json!({"key": "metadata.name", "operator": "In", "values": [node]})
        );
        let tols: Vec<String> = spec
            .tolerations
            .iter()
            .flatten()
            .map(|t| {
                format!(
                    "{}:{}",
                    t.key.clone().unwrap_or_default(),
                    t.effect.clone().unwrap_or_default()
                )
            })
            .collect();
        assert!(
            tols.contains(&"node.kubernetes.io/not-ready:NoExecute".to_string()),
            "{tols:?}"
        );
        assert!(
            tols.contains(&"node.kubernetes.io/unschedulable:NoSchedule".to_string()),
            "{tols:?}"
        );
    }
    let status = eventually(
        "status: 3 desired, 3 ready",
        Duration::from_secs(10),
        || async {
            let d = dss.get("agent").await.unwrap();
            let s = d.status.clone()?;
            (s.desired_number_scheduled == 3
                && s.number_ready == 3
                && s.number_available == Some(3))
            .then_some((d, s))
        },
    )
    .await;
    let (d, s) = status;
    assert_eq!(s.current_number_scheduled, 3);
    assert_eq!(s.updated_number_scheduled, Some(3));
    assert_eq!(s.number_misscheduled, 0);
    assert_eq!(s.observed_generation, d.metadata.generation);

    // A new node gets a pod.
    let more = FakeNodes::start(client.clone(), "dsx", 1, NodeShape::default()).await;
    let mut expected = expected;
    expected.insert("dsx-0".into());
    eventually("a pod on the new node", Duration::from_secs(10), || async {
        let m = pods_by_node(&pods).await;
        let ok = m.keys().cloned().collect::<BTreeSet<_>>() == expected
            && m.values().all(|v| v.len() == 1 && ready(&v[0]));
        ok.then_some(())
    })
    .await;
    eventually(
        "status: 4 desired, 4 available",
        Duration::from_secs(10),
        || async {
            let s = dss.get("agent").await.unwrap().status?;
            (s.desired_number_scheduled == 4 && s.number_available == Some(4)).then_some(())
        },
    )
    .await;

    // Template change: pods roll one node at a time (maxUnavailable defaults to 1).
    let mut watch = watcher(pods.clone(), watcher::Config::default().labels("app=agent")).boxed();
    let mut live: BTreeMap<String, Pod> = BTreeMap::new();
    loop {
        match watch.next().await {
            Some(Ok(watcher::Event::InitApply(p))) => {
                live.insert(p.metadata.name.clone().unwrap(), p);
            }
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(_)) => {}
            other => panic!("pod watch: {other:?}"),
        }
    }
    dss.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "agent:2"}]}}}})),
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    let mut worst = 0;
    let mut replaced = BTreeSet::new();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(ev) = watch.next().await {
            match ev {
                Ok(watcher::Event::Apply(p)) => {
                    live.insert(p.metadata.name.clone().unwrap(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    live.remove(p.metadata.name.as_deref().unwrap());
                }
                _ => continue,
            }
            // Nodes with an available pod: ready and not terminating.
            let available: BTreeSet<String> = live
                .values()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && ready(p))
                .map(node_of)
                .collect();
            let unavailable = expected.difference(&available).count();
            worst = worst.max(unavailable);
            assert!(
                unavailable <= 1,
                "{unavailable} nodes without an available pod during the rollout"
            );
            for p in live.values().filter(|p| hash_of(p) != first_hash) {
                replaced.insert(node_of(p));
            }
            let settled = live.len() == 4
                && live.values().all(|p| {
                    hash_of(p) != first_hash && ready(p) && p.metadata.deletion_timestamp.is_none()
                })
                && live.values().map(node_of).collect::<BTreeSet<_>>() == expected;
            if settled {
                return;
            }
        }
        panic!("pod watch ended");
    })
    .await;
    assert!(
        done.is_ok(),
        "rollout did not finish in 60 s; pods: {:?}",
        live.values()
            .map(|p| (p.metadata.name.clone(), node_of(p), hash_of(p), ready(p)))
            .collect::<Vec<_>>()
    );
    println!(
        "rollout over 4 nodes took {:?}; at most {worst} node(s) unavailable at a time",
        t0.elapsed()
    );
    assert_eq!(worst, 1, "the rollout should take one node down at a time");
    assert_eq!(replaced, expected);
    for p in live.values() {
        let image = p.spec.as_ref().unwrap().containers[0].image.clone();
        assert_eq!(image.as_deref(), Some("agent:2"));
    }
    eventually(
        "status after the rollout",
        Duration::from_secs(10),
        || async {
            let d = dss.get("agent").await.unwrap();
            let s = d.status.clone()?;
            (s.updated_number_scheduled == Some(4)
                && s.number_available == Some(4)
                && s.observed_generation == d.metadata.generation)
                .then_some(())
        },
    )
    .await;

    // The taint goes: dsn-3 gets its pod too.
    node_api
        .patch(
            "dsn-3",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await
        .unwrap();
    expected.insert("dsn-3".into());
    eventually(
        "a pod on the untainted node",
        Duration::from_secs(10),
        || async {
            let m = pods_by_node(&pods).await;
            (m.keys().cloned().collect::<BTreeSet<_>>() == expected
                && m.values().all(|v| v.len() == 1))
            .then_some(())
        },
    )
    .await;
    drop(more);
    drop(nodes);
}
