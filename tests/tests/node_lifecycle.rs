//! Node lifecycle end to end against a real `keelson server` (grace period
//! and default toleration cut to 5 s): a node that stops heartbeating goes
//! Ready=Unknown and gets the unreachable NoExecute taint, its pods are
//! evicted once their toleration runs out, a pod that tolerates the taint
//! for an hour stays, and the healthy node's pods are left alone.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use keelson_e2e::ServerProcess;
use keelson_e2e::fake::{FakeNodes, NodeShape};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const NS: &str = "default";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

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

fn pod(name: &str, node: &str, tolerations: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "tolerations": tolerations,
            "containers": [{"name": "c", "image": "busybox:1.36"}],
        },
    }))
    .unwrap()
}

fn ready_status(n: &Node) -> Option<(String, Option<String>)> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn has_unreachable_taint(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| {
            t.iter()
                .any(|t| t.key == UNREACHABLE && t.effect == "NoExecute")
        })
}

fn pod_ready(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_node_is_tainted_and_its_pods_evicted() {
    let server = ServerProcess::start_with(
        None,
        &[
            "--node-monitor-grace-period",
            "5",
            "--default-toleration-seconds",
            "5",
        ],
    );
    let c = server.client().await;
    let fake = FakeNodes::start(c.clone(), "nl", 2, NodeShape::default()).await;
    let (down, up) = (fake.names[0].clone(), fake.names[1].clone());
    let nodes: Api<Node> = Api::all(c.clone());
    let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
    let pp = PostParams::default();
    let hour = json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 3600}]);
    let evicted = ["down-a", "down-b"];
    let stay_up = ["up-a", "up-b"];
    for name in evicted {
        pods.create(&pp, &pod(name, &down, json!(null)))
            .await
            .unwrap();
    }
    pods.create(&pp, &pod("down-tolerant", &down, hour))
        .await
        .unwrap();
    for name in stay_up {
        pods.create(&pp, &pod(name, &up, json!(null)))
            .await
            .unwrap();
    }
    wait_for(
        "the fake kubelets run every pod",
        Duration::from_secs(20),
        || async {
            let list = pods.list(&Default::default()).await.unwrap();
            list.items.len() == 5
                && list
                    .items
                    .iter()
                    .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        },
    )
    .await;

    fake.cut_off(&down);
    let cut = Instant::now();
    wait_for(
        "the cut-off node is Unknown and tainted unreachable",
        Duration::from_secs(15),
        || async {
            let n = nodes.get(&down).await.unwrap();
            ready_status(&n).is_some_and(|(s, _)| s == "Unknown") && has_unreachable_taint(&n)
        },
    )
    .await;
    let tainted = cut.elapsed();
    let n = nodes.get(&down).await.unwrap();
    assert_eq!(
        ready_status(&n).unwrap().1.as_deref(),
        Some("NodeStatusUnknown")
    );
    // The default toleration (5 s) holds the pods for now.
    for name in evicted {
        let p = pods.get(name).await.unwrap();
        assert!(
            p.metadata.deletion_timestamp.is_none(),
            "{name} evicted before its toleration ran out"
        );
    }

    wait_for(
        "the cut-off node's pods are evicted and gone",
        Duration::from_secs(20),
        || async {
            let mut all_gone = true;
            for name in evicted {
                all_gone &= pods.get_opt(name).await.unwrap().is_none();
            }
            all_gone
        },
    )
    .await;
    let gone = cut.elapsed();
    eprintln!(
        "node lifecycle: Unknown and tainted {tainted:?} after the cut-off, pods gone {gone:?} after it"
    );
    assert!(
        tainted <= Duration::from_secs(12),
        "tainted only {tainted:?} after the cut-off"
    );
    assert!(
        gone - tainted >= Duration::from_secs(3),
        "pods went {:?} after the taint: before their 5 s toleration",
        gone - tainted
    );

    // The tolerant pod stays, marked not ready.
    let t = pods
        .get("down-tolerant")
        .await
        .expect("the tolerant pod stays");
    assert!(t.metadata.deletion_timestamp.is_none());
    assert_eq!(pod_ready(&t).as_deref(), Some("False"));
    // The healthy node and its pods are untouched.
    let u = nodes.get(&up).await.unwrap();
    assert_eq!(ready_status(&u).map(|r| r.0).as_deref(), Some("True"));
    assert!(
        u.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_none_or(|t| t.is_empty())
    );
    for name in stay_up {
        let p = pods.get(name).await.unwrap();
        assert!(
            p.metadata.deletion_timestamp.is_none(),
            "{name} on the healthy node was evicted"
        );
        assert_eq!(pod_ready(&p).as_deref(), Some("True"));
    }
}
