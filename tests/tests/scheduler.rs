//! The scheduler end to end: a real `keelson server` (which runs the
//! scheduler in-process) with fake nodes (Node objects with fresh Leases and
//! a fake kubelet). Pods get bound and spread, land where their node
//! selector, tolerations, resources and host ports allow, and a pod that
//! fits nowhere is reported (PodScheduled=False, FailedScheduling event)
//! and scheduled as soon as a node that fits appears.
//!
//! Needs the `keelson` binary: `cargo build -p keelson` first.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod};
use keelson_e2e::ServerProcess;
use keelson_e2e::fake::{FakeNodes, NodeShape};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "default";
const TIMEOUT: Duration = Duration::from_secs(60);

fn shape(cpu: &str, memory: &str, labels: &[(&str, &str)]) -> NodeShape {
    NodeShape {
        cpu: cpu.into(),
        memory: memory.into(),
        pods: 110,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

async fn create_pod(pods: &Api<Pod>, name: &str, extra_spec: Value, extra_meta: Value) {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    merge(&mut spec, extra_spec);
    let mut meta = json!({"name": name, "namespace": NS});
    merge(&mut meta, extra_meta);
    let pod: Pod = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}),
    )
    .expect("pod json");
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
}

fn merge(base: &mut Value, over: Value) {
    if let (Value::Object(b), Value::Object(o)) = (&mut *base, &over) {
        for (k, v) in o {
            merge(b.entry(k.clone()).or_insert(Value::Null), v.clone());
        }
    } else if !over.is_null() {
        *base = over;
    }
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone().filter(|n| !n.is_empty())
}

/// Wait until every named pod has a node; returns name -> node.
async fn wait_bound(
    pods: &Api<Pod>,
    names: &[String],
    server: &ServerProcess,
) -> HashMap<String, String> {
    let start = Instant::now();
    loop {
        let list = pods.list(&ListParams::default()).await.expect("list pods");
        let placed: HashMap<String, String> = list
            .items
            .iter()
            .filter_map(|p| Some((p.metadata.name.clone()?, node_of(p)?)))
            .filter(|(n, _)| names.contains(n))
            .collect();
        if placed.len() == names.len() {
            return placed;
        }
        if start.elapsed() > TIMEOUT {
            let missing: Vec<_> = names.iter().filter(|n| !placed.contains_key(*n)).collect();
            panic!(
                "pods not bound within {TIMEOUT:?}: {missing:?}\nserver log:\n{}",
                tail(&server.log())
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_bound_spread_and_placed_by_constraints() {
    let server = ServerProcess::start(None);
    let client = server.client().await;
    let _small = FakeNodes::start(client.clone(), "small", 3, shape("4", "8Gi", &[])).await;
    let _ssd = FakeNodes::start(
        client.clone(),
        "ssd",
        1,
        shape("4", "8Gi", &[("disk", "ssd")]),
    )
    .await;
    let _big = FakeNodes::start(client.clone(), "big", 1, shape("32", "64Gi", &[])).await;
    let _gpu = FakeNodes::start(client.clone(), "gpu", 1, shape("8", "16Gi", &[])).await;
    let _cordoned = FakeNodes::start(client.clone(), "cordoned", 1, shape("8", "16Gi", &[])).await;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "gpu-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}})),
        )
        .await
        .expect("taint gpu-0");
    nodes
        .patch(
            "cordoned-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .expect("cordon");
    let eligible = ["small-0", "small-1", "small-2", "ssd-0", "big-0"];

    // Twelve pods of one owner spread over the five eligible nodes.
    let owners: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let owner: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "web"}})).unwrap();
    let owner = owners
        .create(&PostParams::default(), &owner)
        .await
        .expect("owner");
    let owner_ref = json!({"ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "web",
        "uid": owner.metadata.uid.clone().unwrap(), "controller": true,
    }]});
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let web: Vec<String> = (0..12).map(|i| format!("web-{i}")).collect();
    for name in &web {
        create_pod(&pods, name, json!({}), owner_ref.clone()).await;
    }
    let placed = wait_bound(&pods, &web, &server).await;
    let mut per_node: BTreeMap<&str, usize> = eligible.iter().map(|n| (*n, 0)).collect();
    for node in placed.values() {
        *per_node.get_mut(node.as_str()).unwrap_or_else(|| {
            panic!("a web pod landed on {node}, which it may not use: {placed:?}")
        }) += 1;
    }
    for (node, n) in &per_node {
        assert!(
            (2..=3).contains(n),
            "uneven spread, {node} has {n}: {per_node:?}"
        );
    }

    // Constraints.
    create_pod(
        &pods,
        "wants-ssd",
        json!({"nodeSelector": {"disk": "ssd"}}),
        json!({}),
    )
    .await;
    create_pod(
        &pods,
        "tolerates-gpu",
        json!({
            "nodeSelector": {"kubernetes.io/hostname": "gpu-0"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
        }),
        json!({}),
    )
    .await;
    create_pod(
        &pods,
        "needs-8-cpu",
        json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "8", "memory": "1Gi"}}}]}),
        json!({}),
    )
    .await;
    let small_only = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["small-0", "small-1"]},
        ]}],
    }}}});
    for name in ["port-a", "port-b"] {
        let mut spec = small_only.clone();
        spec["containers"] = json!([{"name": "c", "image": "busybox", "ports": [{"containerPort": 80, "hostPort": 9000}]}]);
        create_pod(&pods, name, spec, json!({})).await;
    }
    let names: Vec<String> = [
        "wants-ssd",
        "tolerates-gpu",
        "needs-8-cpu",
        "port-a",
        "port-b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let placed = wait_bound(&pods, &names, &server).await;
    assert_eq!(placed["wants-ssd"], "ssd-0");
    assert_eq!(placed["tolerates-gpu"], "gpu-0");
    assert_eq!(placed["needs-8-cpu"], "big-0");
    let mut ports = vec![placed["port-a"].clone(), placed["port-b"].clone()];
    ports.sort();
    assert_eq!(
        ports,
        ["small-0", "small-1"],
        "host port 9000 twice on one node"
    );

    // Bound pods carry PodScheduled=True and a Scheduled event.
    let p = pods.get("wants-ssd").await.unwrap();
    let conds = p.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True"),
        "PodScheduled=True: {conds:?}"
    );
    let start = Instant::now();
    loop {
        let events: Api<Event> = Api::namespaced(client.clone(), NS);
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list events");
        if list.items.iter().any(|e| {
            e.reason.as_deref() == Some("Scheduled")
                && e.involved_object.name.as_deref() == Some("wants-ssd")
                && e.message.as_deref() == Some("Successfully assigned default/wants-ssd to ssd-0")
        }) {
            break;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "no Scheduled event for wants-ssd"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_that_fits_nowhere_is_reported_then_scheduled_when_a_node_appears() {
    let server = ServerProcess::start(None);
    let client = server.client().await;
    let _nodes = FakeNodes::start(client.clone(), "n", 2, shape("4", "8Gi", &[])).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    create_pod(
        &pods,
        "huge",
        json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "16"}}}]}),
        json!({}),
    )
    .await;
    let want = "0/2 nodes are available: 2 Insufficient cpu.";

    // PodScheduled=False, reason Unschedulable, with the explanation.
    let start = Instant::now();
    loop {
        let p = pods.get("huge").await.expect("get huge");
        assert!(node_of(&p).is_none(), "huge was bound to {:?}", node_of(&p));
        let cond = p
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled");
        // The scheduler may first have seen one of the two nodes; a node
        // it learns of later makes it try again and say so.
        if let Some(c) = cond
            && c.status == "False"
        {
            assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
            if c.message.as_deref() == Some(want) {
                break;
            }
            assert!(
                c.message
                    .as_deref()
                    .is_some_and(|m| m.ends_with("Insufficient cpu.")),
                "{:?}",
                c.message
            );
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "no PodScheduled=False on huge\n{}",
            tail(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A FailedScheduling Warning event, through core/v1 and through kubectl.
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let start = Instant::now();
    loop {
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list events");
        let found = list.items.iter().find(|e| {
            e.reason.as_deref() == Some("FailedScheduling")
                && e.involved_object.name.as_deref() == Some("huge")
        });
        if let Some(e) = found {
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            assert_eq!(e.message.as_deref(), Some(want));
            assert_eq!(e.involved_object.kind.as_deref(), Some("Pod"));
            break;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "no FailedScheduling event for huge"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for minor in keelson_e2e::kubectl_versions() {
        let out = server.kubectl_ok(
            minor,
            &[
                "get",
                "events",
                "-n",
                NS,
                "--field-selector",
                "involvedObject.name=huge",
            ],
        );
        assert!(
            out.contains("FailedScheduling"),
            "kubectl 1.{minor} get events:\n{out}"
        );
        assert!(
            out.contains("Insufficient cpu"),
            "kubectl 1.{minor} get events:\n{out}"
        );
    }

    // Still unschedulable after several backoff rounds; then a node that
    // fits appears and the pod lands on it promptly.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(node_of(&pods.get("huge").await.unwrap()).is_none());
    let appeared = Instant::now();
    let _big = FakeNodes::start(client.clone(), "big", 1, shape("32", "64Gi", &[])).await;
    let placed = wait_bound(&pods, &["huge".to_string()], &server).await;
    assert_eq!(placed["huge"], "big-0");
    assert!(
        appeared.elapsed() < Duration::from_secs(10),
        "scheduled {:?} after the node appeared",
        appeared.elapsed()
    );
    let p = pods.get("huge").await.unwrap();
    let conds = p.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True"),
        "PodScheduled=True after binding: {conds:?}"
    );
}
