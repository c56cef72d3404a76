//! Deployments end to end: a real `keelson server` (its ReplicaSet and
//! Deployment controllers, and its scheduler, which binds every pod), three
//! fake nodes whose fake kubelet runs bound pods, and real kubectl 1.33 and
//! 1.27: apply a 10-replica Deployment, scale it down and up, roll out a new
//! image while a watch checks that maxUnavailable holds at every step,
//! `rollout status`, `rollout undo`, `rollout history`, delete.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use keelson_e2e::ServerProcess;
use keelson_e2e::fake::{FakeNodes, NodeShape};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const NS: &str = "rollout";
const REPLICAS: usize = 10;
/// 25% of 10, rounded down: the default maxUnavailable.
const MAX_UNAVAILABLE: usize = 2;
/// 25% of 10, rounded up: the default maxSurge. Not asserted: pods of a
/// ReplicaSet just scaled down stay active until its controller deletes
/// them, so upstream too can briefly run more than replicas + maxSurge.
const MAX_SURGE: usize = 3;

fn manifest(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {NS}
  annotations:
    kubernetes.io/change-cause: "first apply"
spec:
  replicas: {REPLICAS}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: {image}
"#
    )
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && phase != Some("Succeeded") && phase != Some("Failed")
}

fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers[0].image.clone())
        .unwrap_or_default()
}

/// Watches the Deployment's pods and, while armed, records the fewest
/// available (Ready, not terminating) and the most active pods seen after
/// any single event. The watch delivers events in resourceVersion order, so
/// every state it computes is one the cluster was really in.
#[derive(Default)]
struct Tracker {
    /// name -> (active, available)
    pods: HashMap<String, (bool, bool)>,
    staging: HashMap<String, (bool, bool)>,
    synced: bool,
    armed: bool,
    min_available: Option<usize>,
    max_active: usize,
    events: usize,
}

impl Tracker {
    fn counts(&self) -> (usize, usize) {
        let active = self.pods.values().filter(|p| p.0).count();
        let available = self.pods.values().filter(|p| p.1).count();
        (active, available)
    }

    fn observe(&mut self) {
        if !self.synced || !self.armed {
            return;
        }
        let (active, available) = self.counts();
        self.events += 1;
        self.min_available = Some(self.min_available.map_or(available, |m| m.min(available)));
        self.max_active = self.max_active.max(active);
    }

    fn arm(&mut self) {
        self.armed = true;
        self.min_available = None;
        self.max_active = 0;
        self.events = 0;
        self.observe();
    }

    /// (fewest available, most active, events seen) since `arm`.
    fn disarm(&mut self) -> (Option<usize>, usize, usize) {
        self.armed = false;
        (self.min_available, self.max_active, self.events)
    }
}

fn spawn_tracker(
    client: kube::Client,
    tracker: Arc<Mutex<Tracker>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, NS);
        let mut stream = watcher(pods, watcher::Config::default().labels("app=web"))
            .default_backoff()
            .boxed();
        while let Some(ev) = stream.next().await {
            let mut t = tracker.lock().unwrap();
            let state = |p: &Pod| (is_active(p), is_active(p) && is_ready(p));
            match ev {
                Ok(watcher::Event::Init) => t.staging.clear(),
                Ok(watcher::Event::InitApply(p)) => {
                    let s = state(&p);
                    t.staging
                        .insert(p.metadata.name.clone().unwrap_or_default(), s);
                }
                Ok(watcher::Event::InitDone) => {
                    t.pods = std::mem::take(&mut t.staging);
                    t.synced = true;
                    t.observe();
                }
                Ok(watcher::Event::Apply(p)) => {
                    let s = state(&p);
                    t.pods
                        .insert(p.metadata.name.clone().unwrap_or_default(), s);
                    t.observe();
                }
                Ok(watcher::Event::Delete(p)) => {
                    t.pods
                        .remove(p.metadata.name.as_deref().unwrap_or_default());
                    t.observe();
                }
                Err(_) => {}
            }
        }
    })
}

struct Cluster {
    server: ServerProcess,
    client: kube::Client,
}

impl Cluster {
    fn fail(&self, msg: String) -> ! {
        let log = self.server.log();
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!("{msg}\n--- server log (tail) ---\n{}", tail.join("\n"));
    }

    async fn pods(&self) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        api.list(&ListParams::default().labels("app=web"))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    async fn deployment(&self) -> Deployment {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), NS);
        api.get("web").await.expect("get deployment")
    }

    async fn replicasets(&self) -> Vec<ReplicaSet> {
        let api: Api<ReplicaSet> = Api::namespaced(self.client.clone(), NS);
        api.list(&ListParams::default().labels("app=web"))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// Wait until the Deployment has `n` replicas, all updated, bound, ready
    /// and available, with no other active pods, and its status says so.
    async fn wait_settled(&self, n: usize, image: &str, within: Duration) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < within {
            let pods = self.pods().await;
            let active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
            let bound_ready = active
                .iter()
                .filter(|p| {
                    is_ready(p) && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                })
                .count();
            let right_image = active.iter().all(|p| image_of(p) == image);
            let d = self.deployment().await;
            let st = d.status.clone().unwrap_or_default();
            let n32 = i32::try_from(n).unwrap();
            let status_ok = st.observed_generation >= d.metadata.generation
                && st.replicas == Some(n32)
                && st.updated_replicas == Some(n32)
                && st.ready_replicas == Some(n32)
                && st.available_replicas == Some(n32);
            if active.len() == n && bound_ready == n && right_image && status_ok {
                return;
            }
            last = format!(
                "active {} (bound+ready {bound_ready}, images right: {right_image}), status {:?}",
                active.len(),
                (
                    st.observed_generation,
                    d.metadata.generation,
                    st.replicas,
                    st.updated_replicas,
                    st.ready_replicas,
                    st.available_replicas
                )
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.fail(format!(
            "deployment did not settle at {n} x {image} within {within:?}: {last}"
        ));
    }

    /// Poll `check` until it passes; fail with its last complaint.
    async fn wait_for<T, F, Fut>(&self, what: &str, within: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < within {
            match check().await {
                Ok(v) => return v,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.fail(format!("{what}: not within {within:?}: {last}"));
    }

    fn kubectl_ok(&self, minor: u32, args: &[&str]) -> String {
        let out = self.server.kubectl(minor, args);
        if !out.status.success() {
            self.fail(format!(
                "kubectl 1.{minor} {args:?} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Roll out with `change` (a kubectl command), wait with `rollout
    /// status`, and check the watch saw maxUnavailable honoured throughout.
    async fn rollout(
        &self,
        tracker: &Arc<Mutex<Tracker>>,
        minor: u32,
        change: &[&str],
        image: &str,
    ) -> String {
        tracker.lock().unwrap().arm();
        let changed = self.kubectl_ok(minor, change);
        let status = self.kubectl_ok(
            minor,
            &[
                "rollout",
                "status",
                "deployment/web",
                "-n",
                NS,
                "--timeout=120s",
            ],
        );
        assert!(status.contains("successfully rolled out"), "{status}");
        self.wait_settled(REPLICAS, image, Duration::from_secs(30))
            .await;
        let (min_available, max_active, events) = tracker.lock().unwrap().disarm();
        eprintln!(
            "rollout to {image}: {events} pod events, min available {min_available:?} (floor {}), max active {max_active} (replicas + maxSurge = {})",
            REPLICAS - MAX_UNAVAILABLE,
            REPLICAS + MAX_SURGE
        );
        let min_available = min_available.unwrap_or(0);
        if min_available < REPLICAS - MAX_UNAVAILABLE {
            self.fail(format!(
                "maxUnavailable violated: {min_available} available pods at one point, want >= {}",
                REPLICAS - MAX_UNAVAILABLE
            ));
        }
        assert!(
            events >= REPLICAS,
            "the watch saw only {events} events during the rollout"
        );
        changed
    }
}

fn revisions(rss: &[ReplicaSet]) -> BTreeMap<String, (String, i32)> {
    rss.iter()
        .map(|rs| {
            let rev = rs
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("deployment.kubernetes.io/revision").cloned())
                .unwrap_or_default();
            let image = rs
                .spec
                .template
                .as_ref()
                .and_then(|t| t.spec.as_ref())
                .and_then(|s| s.containers[0].image.clone())
                .unwrap_or_default();
            (rev, (image, rs.spec.replicas.unwrap_or(0)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_apply_scale_rollout_undo() {
    let started = Instant::now();
    let server = ServerProcess::start(None);
    let client = server.client().await;
    let c = Cluster {
        server,
        client: client.clone(),
    };
    let nodes = FakeNodes::start(client.clone(), "dn", 3, NodeShape::default()).await;
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let watch = spawn_tracker(client.clone(), tracker.clone());

    c.kubectl_ok(33, &["create", "namespace", NS]);
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("web.yaml");
    std::fs::write(&v1, manifest("busybox:v1")).unwrap();
    let out = c.kubectl_ok(33, &["apply", "-f", v1.to_str().unwrap()]);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    c.wait_settled(REPLICAS, "busybox:v1", Duration::from_secs(60))
        .await;
    let pods = c.pods().await;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &pods {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(
            nodes.names.contains(&node),
            "pod bound to unknown node {node:?}"
        );
        *per_node.entry(node).or_default() += 1;
        let owner = p
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .expect("pod has an owner");
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ReplicaSet", Some(true))
        );
        assert_eq!(owner.block_owner_deletion, Some(true));
    }
    eprintln!("pods per node: {per_node:?} after {:?}", started.elapsed());
    let rss = c.replicasets().await;
    assert_eq!(rss.len(), 1, "one ReplicaSet per revision");
    let hash = rss[0]
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .cloned()
        .expect("hash label");
    assert_eq!(
        rss[0].metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert!(pods.iter().all(|p| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
            == Some(&hash)
    }));
    let d = c.deployment().await;
    let anns = d.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        anns.get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    let conds = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let cond = |t: &str| {
        conds
            .iter()
            .find(|c| c.type_.as_deref() == Some(t))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(cond("Available").status.as_deref(), Some("True"));
    assert_eq!(
        cond("Progressing").reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );

    // Scale down and back up.
    c.kubectl_ok(33, &["scale", "deployment/web", "-n", NS, "--replicas=3"]);
    c.wait_settled(3, "busybox:v1", Duration::from_secs(30))
        .await;
    c.kubectl_ok(33, &["scale", "deployment/web", "-n", NS, "--replicas=10"]);
    c.wait_settled(REPLICAS, "busybox:v1", Duration::from_secs(45))
        .await;
    assert_eq!(
        c.replicasets().await.len(),
        1,
        "scaling makes no new revision"
    );
    eprintln!("scaled down and up after {:?}", started.elapsed());

    // Rolling update to a new image.
    c.rollout(
        &tracker,
        33,
        &["set", "image", "deployment/web", "-n", NS, "web=busybox:v2"],
        "busybox:v2",
    )
    .await;
    let revs = revisions(&c.replicasets().await);
    assert_eq!(
        revs,
        BTreeMap::from([
            ("1".to_string(), ("busybox:v1".to_string(), 0)),
            ("2".to_string(), ("busybox:v2".to_string(), 10)),
        ])
    );
    eprintln!("rolled out v2 after {:?}", started.elapsed());

    // Undo with kubectl 1.27 (client-side rollback from the ReplicaSets).
    let out = c
        .rollout(
            &tracker,
            27,
            &["rollout", "undo", "deployment/web", "-n", NS],
            "busybox:v1",
        )
        .await;
    assert!(out.contains("rolled back"), "{out}");
    let d = c.deployment().await;
    let image = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].image.clone());
    assert_eq!(image.as_deref(), Some("busybox:v1"));
    let anns = d.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        anns.get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3")
    );
    let rss = c.replicasets().await;
    assert_eq!(rss.len(), 2, "undo reuses the old ReplicaSet");
    let revs = revisions(&rss);
    assert_eq!(
        revs,
        BTreeMap::from([
            ("2".to_string(), ("busybox:v2".to_string(), 0)),
            ("3".to_string(), ("busybox:v1".to_string(), 10)),
        ])
    );
    let reused = rss.iter().find(|rs| rs.spec.replicas == Some(10)).unwrap();
    let history = reused
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("deployment.kubernetes.io/revision-history"));
    assert_eq!(history.map(String::as_str), Some("1"));
    eprintln!("undone after {:?}", started.elapsed());

    let history = c.kubectl_ok(33, &["rollout", "history", "deployment/web", "-n", NS]);
    let rows: Vec<Vec<&str>> = history
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.first().map(|r| r[0]), Some("2"), "{history}");
    assert_eq!(rows.get(1).map(|r| r[0]), Some("3"), "{history}");
    assert!(
        history.contains("first apply"),
        "change-cause is carried to the ReplicaSets: {history}"
    );
    let rev3 = c.kubectl_ok(
        33,
        &[
            "rollout",
            "history",
            "deployment/web",
            "-n",
            NS,
            "--revision=3",
        ],
    );
    assert!(rev3.contains("busybox:v1"), "{rev3}");

    // Undo to an explicit revision with kubectl 1.33: back to v2 as revision 4.
    c.rollout(
        &tracker,
        33,
        &[
            "rollout",
            "undo",
            "deployment/web",
            "-n",
            NS,
            "--to-revision=2",
        ],
        "busybox:v2",
    )
    .await;
    let revs = revisions(&c.replicasets().await);
    assert_eq!(
        revs,
        BTreeMap::from([
            ("3".to_string(), ("busybox:v1".to_string(), 0)),
            ("4".to_string(), ("busybox:v2".to_string(), 10)),
        ])
    );
    eprintln!("undone to revision 2 after {:?}", started.elapsed());

    // Settled means quiet: no controller keeps rewriting what it owns.
    let versions = |d: &Deployment, rss: &[ReplicaSet], pods: &[Pod]| {
        let mut v: Vec<String> = vec![d.metadata.resource_version.clone().unwrap_or_default()];
        v.extend(
            rss.iter()
                .map(|r| r.metadata.resource_version.clone().unwrap_or_default()),
        );
        v.extend(
            pods.iter()
                .map(|p| p.metadata.resource_version.clone().unwrap_or_default()),
        );
        v
    };
    let before = versions(
        &c.deployment().await,
        &c.replicasets().await,
        &c.pods().await,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = versions(
        &c.deployment().await,
        &c.replicasets().await,
        &c.pods().await,
    );
    assert_eq!(
        before, after,
        "objects kept changing after the rollout settled"
    );

    // Deletion (removing ReplicaSets and pods is the garbage collector's job).
    let out = c.kubectl_ok(
        33,
        &["delete", "deployment", "web", "-n", NS, "--wait=false"],
    );
    assert!(out.contains("deleted"), "{out}");

    // Controllers log failed syncs (other than conflicts with a lagging
    // cache, which are retried quietly); show any.
    let log = c.server.log();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("sync failed")).collect();
    eprintln!("{} failed syncs; first: {:?}", failed.len(), failed.first());

    watch.abort();
    drop(nodes);
    eprintln!("done in {:?}", started.elapsed());
}

/// The ReplicaSet controller on its own: it adopts a matching orphan,
/// replaces a deleted pod, and scales down the not-ready pod first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicaset_adopts_replaces_and_scales_down_unready_first() {
    let server = ServerProcess::start(None);
    let client = server.client().await;
    let c = Cluster {
        server,
        client: client.clone(),
    };
    let nodes = FakeNodes::start(client.clone(), "rn", 3, NodeShape::default()).await;
    c.kubectl_ok(33, &["create", "namespace", NS]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    // An orphan that matches, already running.
    let orphan: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "orphan", "labels": {"app": "web"}},
        "spec": {"nodeName": nodes.names[0], "containers": [{"name": "web", "image": "busybox:v1"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &orphan)
        .await
        .expect("create orphan");
    c.wait_for("orphan ready", Duration::from_secs(20), || async {
        let p = pods.get("orphan").await.map_err(|e| e.to_string())?;
        is_ready(&p)
            .then_some(())
            .ok_or_else(|| "not ready".to_string())
    })
    .await;

    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "bare"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}},
                         "spec": {"containers": [{"name": "web", "image": "busybox:v1"}]}},
        },
    }))
    .unwrap();
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), NS);
    let rs = rs_api
        .create(&PostParams::default(), &rs)
        .await
        .expect("create replicaset");
    let rs_uid = rs.metadata.uid.clone().unwrap();

    // Owned, active pods and the ReplicaSet's status, once `n` are ready.
    let settled = |n: usize| {
        let pods = pods.clone();
        let rs_api = rs_api.clone();
        let rs_uid = rs_uid.clone();
        async move {
            let list = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let active: Vec<Pod> = list.items.into_iter().filter(is_active).collect();
            let owned = active
                .iter()
                .filter(|p| {
                    p.metadata.owner_references.as_ref().is_some_and(|o| {
                        o.iter()
                            .any(|o| o.uid == rs_uid && o.controller == Some(true))
                    })
                })
                .count();
            let ready = active.iter().filter(|p| is_ready(p)).count();
            let rs = rs_api.get("bare").await.map_err(|e| e.to_string())?;
            let st = rs.status.clone().unwrap_or_default();
            let n32 = i32::try_from(n).unwrap();
            let status_ok = st.replicas == n32
                && st.ready_replicas == Some(n32)
                && st.available_replicas == Some(n32)
                && st.observed_generation == rs.metadata.generation;
            if active.len() == n && owned == n && ready == n && status_ok {
                Ok(active)
            } else {
                Err(format!(
                    "active {}, owned {owned}, ready {ready}, status {st:?}",
                    active.len()
                ))
            }
        }
    };
    let current = c
        .wait_for(
            "3 pods with the orphan adopted",
            Duration::from_secs(30),
            || settled(3),
        )
        .await;
    assert!(
        current
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some("orphan")),
        "the orphan was adopted rather than replaced"
    );
    let st = rs_api.get("bare").await.unwrap().status.unwrap();
    // The orphan lacks the template's tier label.
    assert_eq!(st.fully_labeled_replicas, Some(2));

    // A deleted pod is replaced.
    let victim = current
        .iter()
        .find(|p| p.metadata.name.as_deref() != Some("orphan"))
        .and_then(|p| p.metadata.name.clone())
        .unwrap();
    c.kubectl_ok(33, &["delete", "pod", &victim, "-n", NS, "--wait=false"]);
    let current = c
        .wait_for("replacement pod", Duration::from_secs(30), || {
            let pods = settled(3);
            let victim = victim.clone();
            async move {
                let pods = pods.await?;
                if pods
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(victim.as_str()))
                {
                    return Err(format!("{victim} still active"));
                }
                Ok(pods)
            }
        })
        .await;

    // Scale down: the not-ready pod goes first.
    let unready = current
        .iter()
        .find(|p| p.metadata.name.as_deref() != Some("orphan"))
        .and_then(|p| p.metadata.name.clone())
        .unwrap();
    nodes.set_ready(NS, &unready, false);
    let touch = json!({"metadata": {"annotations": {"touched": "yes"}}});
    pods.patch(
        &unready,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&touch),
    )
    .await
    .expect("touch pod");
    c.wait_for(
        "pod reported not ready",
        Duration::from_secs(20),
        || async {
            let p = pods.get(&unready).await.map_err(|e| e.to_string())?;
            (!is_ready(&p))
                .then_some(())
                .ok_or_else(|| "still ready".to_string())
        },
    )
    .await;
    c.kubectl_ok(33, &["scale", "rs/bare", "-n", NS, "--replicas=2"]);
    let current = c
        .wait_for(
            "scaled to 2 without the unready pod",
            Duration::from_secs(30),
            || settled(2),
        )
        .await;
    assert!(
        !current
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(unready.as_str())),
        "the not-ready pod should have been deleted first"
    );

    drop(nodes);
}
