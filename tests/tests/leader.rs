//! Two `keelson server` processes on one etcd run one controller set: kill -9
//! the leader and the other takes over (and schedules) within 15 s.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use keelson_e2e::fake::{FakeNodes, NodeShape};
use keelson_e2e::{Backend, ServerProcess, etcd_for};
use kube::api::{Api, PostParams};

async fn holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    leases
        .get_opt("kube-controller-manager")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

async fn wait_holder(client: &kube::Client, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if holder(client).await.as_deref() == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{want} did not become leader within {within:?} (holder {:?})",
            holder(client).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_bound(pods: &Api<Pod>, name: &str, within: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(p) = pods.get(name).await
            && let Some(n) = p.spec.and_then(|s| s.node_name)
        {
            return n;
        }
        assert!(
            start.elapsed() < within,
            "pod {name} not bound within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_failover_on_etcd() {
    let Ok(Some(etcd)) = etcd_for(Backend::Etcd) else {
        return;
    };
    let mut a = ServerProcess::start_with(Some(&etcd), &["--identity", "server-a"]);
    let ca = a.client().await;
    wait_holder(&ca, "server-a", Duration::from_secs(20)).await;
    let b = ServerProcess::start_with(Some(&etcd), &["--identity", "server-b"]);
    let cb = b.client().await;
    let _nodes = FakeNodes::start(cb.clone(), "lf", 2, NodeShape::default()).await;

    // The leader schedules.
    let pods: Api<Pod> = Api::namespaced(cb.clone(), "default");
    pods.create(&PostParams::default(), &pod("before"))
        .await
        .unwrap();
    wait_bound(&pods, "before", Duration::from_secs(15)).await;
    // The standby does not take over while the leader lives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(&cb).await.as_deref(), Some("server-a"));

    a.kill();
    let killed = Instant::now();
    let took = wait_holder(&cb, "server-b", Duration::from_secs(15)).await;
    pods.create(&PostParams::default(), &pod("after"))
        .await
        .unwrap();
    wait_bound(
        &pods,
        "after",
        Duration::from_secs(15)
            .saturating_sub(killed.elapsed())
            .max(Duration::from_secs(5)),
    )
    .await;
    eprintln!(
        "leader failover: lease taken {took:?} after kill -9, pod bound {:?} after kill -9",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "scheduling resumed {:?} after the leader died",
        killed.elapsed()
    );
}
