//! The control plane as a whole, on fake nodes: a node that stops renewing
//! its Lease has its pods evicted after their toleration, and the
//! Deployment's replacements land on the other nodes.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use keelson_e2e::ServerProcess;
use keelson_e2e::fake::{FakeNodes, NodeShape};
use kube::api::{Api, ListParams, PostParams};

fn deployment(replicas: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "busybox:1.36"}]}}
        }
    }))
    .unwrap()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Live (not terminating) pods of the deployment: (node, ready).
async fn placement(pods: &Api<Pod>) -> Vec<(String, bool)> {
    pods.list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            (
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                ready(p),
            )
        })
        .collect()
}

async fn wait_for<F: Fn(&[(String, bool)]) -> bool>(
    pods: &Api<Pod>,
    what: &str,
    within: Duration,
    f: F,
) -> Duration {
    let start = Instant::now();
    loop {
        let p = placement(pods).await;
        if f(&p) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{what} not reached within {within:?}: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_node_pods_are_replaced_elsewhere() {
    let server = ServerProcess::start_with(
        None,
        &[
            "--node-monitor-grace-period",
            "5",
            "--default-toleration-seconds",
            "5",
        ],
    );
    let client = server.client().await;
    let nodes = FakeNodes::start(client.clone(), "cl", 3, NodeShape::default()).await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    deploys
        .create(&PostParams::default(), &deployment(6))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_for(&pods, "6 ready pods", Duration::from_secs(60), |p| {
        p.len() == 6 && p.iter().all(|(n, r)| !n.is_empty() && *r)
    })
    .await;
    let on_lost = placement(&pods)
        .await
        .iter()
        .filter(|(n, _)| n == "cl-0")
        .count();
    assert!(on_lost > 0, "the scheduler spreads pods: some land on cl-0");

    nodes.cut_off("cl-0");
    let took = wait_for(
        &pods,
        "6 ready pods off cl-0",
        Duration::from_secs(60),
        |p| p.len() == 6 && p.iter().all(|(n, r)| n != "cl-0" && !n.is_empty() && *r),
    )
    .await;
    eprintln!(
        "{on_lost} pods on the lost node replaced elsewhere {took:?} after its Lease stopped"
    );
    // Grace 5 s + toleration 5 s: not before ~10 s.
    assert!(
        took >= Duration::from_secs(8),
        "evicted too early: {took:?}"
    );
}
