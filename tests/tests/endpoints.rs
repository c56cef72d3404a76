//! EndpointSlices, Endpoints and the `default` ServiceAccount, end to end
//! against a real `keelson server` running its controllers, with fake nodes
//! whose fake kubelet marks pods Running and Ready. Pods are created bound
//! (`spec.nodeName`), so no scheduler is involved.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_e2e::ServerProcess;
use keelson_e2e::fake::{FakeNodes, NodeShape};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

/// Poll `f` every 50 ms until it yields `Some`, or panic after `timeout`.
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

async fn create_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

/// A pod labelled app=web on `node`, with container ports http:8080 and,
/// when `metrics`, metrics:9100.
fn web_pod(name: &str, node: &str, metrics: bool) -> Pod {
    let mut ports = vec![json!({"name": "http", "containerPort": 8080})];
    if metrics {
        ports.push(json!({"name": "metrics", "containerPort": 9100}));
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox", "ports": ports}]},
    }))
    .unwrap()
}

/// (pod name -> (ready, serving, terminating, addresses, node)) over all slices.
type Eps = BTreeMap<String, (bool, bool, bool, Vec<String>, String)>;

fn endpoints_of(slices: &[EndpointSlice]) -> Eps {
    let mut out = BTreeMap::new();
    for s in slices {
        for e in s.endpoints.iter().flatten() {
            let c = e.conditions.clone().unwrap_or_default();
            out.insert(
                e.target_ref
                    .as_ref()
                    .and_then(|r| r.name.clone())
                    .unwrap_or_default(),
                (
                    c.ready.unwrap_or(false),
                    c.serving.unwrap_or(false),
                    c.terminating.unwrap_or(false),
                    e.addresses.clone(),
                    e.node_name.clone().unwrap_or_default(),
                ),
            );
        }
    }
    out
}

async fn slices_of(api: &Api<EndpointSlice>, svc: &str) -> Vec<EndpointSlice> {
    api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .expect("list endpoint slices")
        .items
}

fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref().and_then(|s| s.pod_ip.clone())
}

fn ready_of(s: &EndpointSlice, pod: &str) -> Option<bool> {
    s.endpoints
        .iter()
        .flatten()
        .find(|e| e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(pod))
        .and_then(|e| e.conditions.as_ref().and_then(|c| c.ready))
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_slices_follow_pods() {
    let server = ServerProcess::start(None);
    let client = server.client().await;
    let nodes = FakeNodes::start(client.clone(), "epn", 2, NodeShape::default()).await;
    let ns = "shop";
    create_namespace(&client, ns).await;

    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "labels": {"team": "shop"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    let svc = services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for (i, name) in ["web-0", "web-1", "web-2"].iter().enumerate() {
        let node = &nodes.names[i % 2];
        pods.create(&PostParams::default(), &web_pod(name, node, i != 2))
            .await
            .expect("create pod");
    }

    // Three ready endpoints, ports resolved from the named targetPort.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let all = eventually("3 ready endpoints", Duration::from_secs(20), || async {
        let s = slices_of(&slices, "web").await;
        let eps = endpoints_of(&s);
        (eps.len() == 3 && eps.values().all(|e| e.0 && e.1 && !e.2)).then_some(s)
    })
    .await;
    assert_eq!(all.len(), 1, "one slice: {all:?}");
    let slice = &all[0];
    assert_eq!(slice.address_type, "IPv4");
    assert!(
        slice.metadata.name.as_deref().unwrap().starts_with("web-"),
        "{:?}",
        slice.metadata.name
    );
    let labels = slice.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/service-name"], "web");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(labels["team"], "shop");
    let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "web")
    );
    assert_eq!(owner.uid, svc.metadata.uid.clone().unwrap());
    let ports = slice.ports.clone().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        (
            ports[0].name.as_deref(),
            ports[0].port,
            ports[0].protocol.as_deref()
        ),
        (Some("http"), Some(8080), Some("TCP"))
    );
    let eps = endpoints_of(&all);
    for (i, name) in ["web-0", "web-1", "web-2"].iter().enumerate() {
        let p = pods.get(name).await.unwrap();
        let e = &eps[*name];
        assert_eq!(e.3, vec![pod_ip(&p).unwrap()], "{name} address");
        assert_eq!(e.4, nodes.names[i % 2], "{name} nodeName");
    }
    for e in slice.endpoints.iter().flatten() {
        let r = e.target_ref.as_ref().unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.namespace.as_deref()),
            (Some("Pod"), Some(ns))
        );
        assert!(r.uid.is_some());
    }

    // Nothing changed: a sync writes nothing.
    let rv = slice.metadata.resource_version.clone();
    pods.patch(
        "web-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let again = slices
        .get(slice.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version, rv,
        "an unchanged slice was rewritten"
    );

    // Readiness flips: the slice follows within 1 s.
    let mut watch = watcher(
        slices.clone(),
        watcher::Config::default().labels("kubernetes.io/service-name=web"),
    )
    .boxed();
    // Drain the initial listing.
    loop {
        match watch.next().await {
            Some(Ok(watcher::Event::InitDone)) => break,
            Some(Ok(_)) => {}
            other => panic!("slice watch: {other:?}"),
        }
    }
    let (watching_tx, watching) = tokio::sync::oneshot::channel::<()>();
    let pod_seen = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut w = watcher(
                pods,
                watcher::Config::default().fields("metadata.name=web-1"),
            )
            .boxed();
            let mut watching_tx = Some(watching_tx);
            while let Some(ev) = w.next().await {
                // The initial list is done: the watch sees what comes next.
                if let Ok(watcher::Event::InitDone) = ev
                    && let Some(tx) = watching_tx.take()
                {
                    let _ = tx.send(());
                }
                if let Ok(watcher::Event::Apply(p)) = ev
                    && !p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                {
                    return Instant::now();
                }
            }
            panic!("pod watch ended");
        })
    };
    tokio::time::timeout(Duration::from_secs(10), watching)
        .await
        .expect("the pod watch did not start within 10 s")
        .expect("pod watch task");
    nodes.set_ready(ns, "web-1", false);
    let t0 = Instant::now();
    pods.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"poke": "2"}}})),
    )
    .await
    .unwrap();
    let seen_slice = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = watch.next().await {
            if let Ok(watcher::Event::Apply(s)) = ev
                && ready_of(&s, "web-1") == Some(false)
            {
                return (Instant::now(), s);
            }
        }
        panic!("slice watch ended");
    })
    .await
    .expect("the slice did not show web-1 unready within 5 s");
    let (t_slice, unready_slice) = seen_slice;
    let t_pod = tokio::time::timeout(Duration::from_secs(1), pod_seen)
        .await
        .expect("pod watch")
        .unwrap();
    let total = t_slice - t0;
    let from_status = t_slice.saturating_duration_since(t_pod);
    println!(
        "readiness -> EndpointSlice latency: {:.1} ms after the pod's status turned unready \
         ({:.1} ms after the touch that made the fake kubelet flip it)",
        from_status.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    );
    assert!(
        total < Duration::from_secs(1),
        "slice followed readiness after {total:?}"
    );
    let eps = endpoints_of(&[unready_slice]);
    let (ready, serving, terminating, ..) = eps["web-1"].clone();
    assert_eq!(
        (ready, serving, terminating),
        (false, false, false),
        "web-1 conditions"
    );
    assert!(eps["web-0"].0 && eps["web-2"].0);

    // The Endpoints object mirrors it.
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    let ep = eventually(
        "Endpoints with web-1 not ready",
        Duration::from_secs(5),
        || async {
            let e = endpoints.get_opt("web").await.unwrap()?;
            let s = e.subsets.clone()?;
            let nr: Vec<_> = s
                .iter()
                .flat_map(|s| s.not_ready_addresses.iter().flatten())
                .collect();
            (nr.len() == 1).then_some(e)
        },
    )
    .await;
    assert_eq!(
        ep.metadata.labels.as_ref().unwrap()["endpointslice.kubernetes.io/skip-mirror"],
        "true"
    );
    let subsets = ep.subsets.unwrap();
    assert_eq!(subsets.len(), 1, "{subsets:?}");
    let ready: Vec<String> = subsets[0]
        .addresses
        .iter()
        .flatten()
        .map(|a| a.target_ref.as_ref().unwrap().name.clone().unwrap())
        .collect();
    assert_eq!(ready, {
        let mut v = vec!["web-0".to_string(), "web-2".to_string()];
        v.sort_by_key(|n| endpoints_of(&all)[n].3[0].clone());
        v
    });
    let nr = &subsets[0].not_ready_addresses.as_ref().unwrap()[0];
    assert_eq!(
        nr.target_ref.as_ref().unwrap().name.as_deref(),
        Some("web-1")
    );
    let ports = subsets[0].ports.clone().unwrap();
    assert_eq!(
        (ports[0].name.as_deref(), ports[0].port),
        (Some("http"), 8080)
    );

    // Readiness back.
    nodes.set_ready(ns, "web-1", true);
    pods.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"poke": "3"}}})),
    )
    .await
    .unwrap();
    eventually("web-1 ready again", Duration::from_secs(5), || async {
        let eps = endpoints_of(&slices_of(&slices, "web").await);
        eps["web-1"].0.then_some(())
    })
    .await;

    // A second Service whose named targetPort only two pods have: the third
    // lands in a slice without that port.
    let metrics: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web-metrics"},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "metrics", "port": 9100, "targetPort": "metrics"}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &metrics)
        .await
        .unwrap();
    let ms = eventually("web-metrics slices", Duration::from_secs(10), || async {
        let s = slices_of(&slices, "web-metrics").await;
        (endpoints_of(&s).len() == 3 && s.len() == 2).then_some(s)
    })
    .await;
    for s in &ms {
        let names: Vec<String> = endpoints_of(std::slice::from_ref(s)).into_keys().collect();
        let ports: Vec<(Option<String>, Option<i32>)> = s
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port))
            .collect();
        if names == ["web-2"] {
            assert_eq!(ports, vec![(Some("http".into()), Some(8080))]);
        } else {
            assert_eq!(names, ["web-0", "web-1"]);
            assert_eq!(
                ports,
                vec![
                    (Some("http".into()), Some(8080)),
                    (Some("metrics".into()), Some(9100))
                ]
            );
        }
    }

    // A deleted pod leaves the slice.
    pods.delete("web-2", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "web-2 gone from the slices",
        Duration::from_secs(10),
        || async {
            let eps = endpoints_of(&slices_of(&slices, "web").await);
            (eps.len() == 2 && !eps.contains_key("web-2")).then_some(())
        },
    )
    .await;
    eventually(
        "web-2 gone from Endpoints",
        Duration::from_secs(5),
        || async {
            let e = endpoints.get("web").await.unwrap();
            let n: usize = e
                .subsets
                .iter()
                .flatten()
                .map(|s| s.addresses.iter().flatten().count())
                .sum();
            (n == 2).then_some(())
        },
    )
    .await;

    // A pod that stops matching the selector leaves too.
    pods.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    eventually("relabelled web-1 gone", Duration::from_secs(5), || async {
        let eps = endpoints_of(&slices_of(&slices, "web").await);
        (eps.keys().collect::<Vec<_>>() == ["web-0"]).then_some(())
    })
    .await;

    // A Service without a selector gets no slices from the controller.
    let manual: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "manual"},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &manual)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(slices_of(&slices, "manual").await.is_empty());
    assert!(endpoints.get_opt("manual").await.unwrap().is_none());

    // Deleting the Service removes its Endpoints object and slices.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "web's Endpoints and slices gone",
        Duration::from_secs(10),
        || async {
            let e = endpoints.get_opt("web").await.unwrap();
            (e.is_none() && slices_of(&slices, "web").await.is_empty()).then_some(())
        },
    )
    .await;
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn default_service_account_in_every_namespace() {
    let server = ServerProcess::start(None);
    let client = server.client().await;
    let t0 = Instant::now();
    create_namespace(&client, "team-a").await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "team-a");
    eventually(
        "default service account",
        Duration::from_secs(5),
        || async { sas.get_opt("default").await.unwrap() },
    )
    .await;
    println!(
        "default ServiceAccount appeared {:?} after the namespace",
        t0.elapsed()
    );

    // Deleted: it comes back.
    let old = sas.get("default").await.unwrap();
    sas.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "default service account recreated",
        Duration::from_secs(5),
        || async {
            sas.get_opt("default")
                .await
                .unwrap()
                .filter(|s| s.metadata.uid != old.metadata.uid)
        },
    )
    .await;

    // Namespaces that existed before (default, kube-system) have one too.
    for ns in ["default", "kube-system"] {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        eventually(
            &format!("default service account in {ns}"),
            Duration::from_secs(5),
            || async { api.get_opt("default").await.unwrap() },
        )
        .await;
    }
}
