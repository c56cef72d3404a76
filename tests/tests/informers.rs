//! One watch per resource type: a real `keelson server` running its
//! scheduler and every controller in-process opens exactly one Pod watch
//! (and one watch of every other type it looks at), counted by the server
//! itself (`apiserver_watch_requests_total` on `/metrics`).
//!
//! The test makes every controller do something first (the scheduler binds
//! a pod, the Deployment and ReplicaSet controllers create one, the
//! EndpointSlice controller writes a slice, the ServiceAccount controller
//! fills a namespace, the garbage collector removes an orphan), and opens
//! no watch of its own: it polls.
//!
//! Needs the `keelson` binary: `cargo build --bins` first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_e2e::ServerProcess;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Poll `check` until it returns `Some`, or fail with `what` and the log.
async fn eventually<T, F, Fut>(server: &ServerProcess, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "{what}: not within {TIMEOUT:?}; server log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `apiserver_watch_requests_total` by resource (summed over the other labels).
async fn watch_counts(client: &kube::Client) -> BTreeMap<String, (u64, Vec<String>)> {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.expect("GET /metrics");
    let mut out: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_watch_requests_total{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").expect("metric line");
        let resource = labels
            .split(',')
            .find_map(|l| l.strip_prefix("resource="))
            .expect("resource label")
            .trim_matches('"')
            .to_string();
        let group = labels
            .split(',')
            .find_map(|l| l.strip_prefix("group="))
            .unwrap_or("\"\"")
            .trim_matches('"');
        let key = if group.is_empty() {
            resource
        } else {
            format!("{resource}.{group}")
        };
        let e = out.entry(key).or_default();
        e.0 += value.trim().parse::<u64>().expect("counter value");
        e.1.push(labels.to_string());
    }
    out
}

#[tokio::test]
async fn scheduler_and_controllers_share_one_watch_per_resource() {
    let server = ServerProcess::start(None);
    let client = server.client().await;

    // A Ready node for the scheduler (no fake kubelet: it would watch pods).
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            }})),
        )
        .await
        .unwrap();

    // Scheduler.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "solo", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually(&server, "the scheduler binds a pod", || async {
        let p = pods.get("solo").await.ok()?;
        p.spec?.node_name
    })
    .await;

    // Deployment and ReplicaSet controllers.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
                 "template": {"metadata": {"labels": {"app": "d"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    eventually(&server, "the Deployment's pod is created", || async {
        let list = pods
            .list(&ListParams::default().labels("app=d"))
            .await
            .ok()?;
        (!list.items.is_empty()
            && !rss
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty())
        .then_some(())
    })
    .await;

    // EndpointSlice controller.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    eventually(&server, "the Service gets a slice", || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?;
        (!list.items.is_empty()).then_some(())
    })
    .await;

    // ServiceAccount controller.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "extra"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "extra");
    eventually(
        &server,
        "the new namespace gets its default account",
        || async { accounts.get_opt("default").await.ok()?.map(|_| ()) },
    )
    .await;

    // Garbage collector: a ConfigMap whose owner never existed goes.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": "no-such-uid"}]},
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    eventually(
        &server,
        "the garbage collector deletes the orphan",
        || async { cms.get_opt("orphan").await.ok()?.is_none().then_some(()) },
    )
    .await;

    let counts = watch_counts(&client).await;
    println!("watch requests by resource: {counts:#?}");
    let pods_watched = counts.get("pods").map(|c| c.0);
    assert_eq!(
        pods_watched,
        Some(1),
        "Pod watches opened by the scheduler and controllers: {:?}",
        counts.get("pods")
    );
    // Every other type is watched once too (the garbage collector watches
    // them all, sharing the typed watches of the others).
    for (resource, (n, labels)) in &counts {
        assert_eq!(*n, 1, "{resource} watched {n} times: {labels:?}");
    }
    for shared in [
        "nodes",
        "services",
        "endpoints",
        "namespaces",
        "serviceaccounts",
        "deployments.apps",
        "replicasets.apps",
        "daemonsets.apps",
        "endpointslices.discovery.k8s.io",
        "leases.coordination.k8s.io",
        "configmaps",
    ] {
        assert!(
            counts.contains_key(shared),
            "{shared} not watched: {counts:?}"
        );
    }
}
