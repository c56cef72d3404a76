//! Fake nodes for control-plane tests: Node objects whose Leases the test
//! keeps fresh, and a fake kubelet that marks pods bound to them Running and
//! Ready and finishes their graceful deletion. A node can be "cut off":
//! its Lease stops being renewed and its kubelet stops acting.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

/// Capacity of each fake node.
#[derive(Clone, Debug)]
pub struct NodeShape {
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub labels: BTreeMap<String, String>,
}

impl Default for NodeShape {
    fn default() -> Self {
        NodeShape {
            cpu: "4".into(),
            memory: "8Gi".into(),
            pods: 110,
            labels: BTreeMap::new(),
        }
    }
}

pub struct FakeNodes {
    pub names: Vec<String>,
    cut_off: Arc<Mutex<HashSet<String>>>,
    /// Pods the fake kubelet reports as not ready.
    unready: Arc<Mutex<HashSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeNodes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn micro_now() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl FakeNodes {
    /// Create `count` nodes named `{prefix}-{i}` and start heartbeats and
    /// the fake kubelet.
    pub async fn start(
        client: kube::Client,
        prefix: &str,
        count: usize,
        shape: NodeShape,
    ) -> FakeNodes {
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
        let nodes: Api<Node> = Api::all(client.clone());
        for (i, name) in names.iter().enumerate() {
            let mut labels = shape.labels.clone();
            labels.insert("kubernetes.io/hostname".into(), name.clone());
            labels.insert("kubernetes.io/os".into(), "linux".into());
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": {"podCIDR": format!("10.244.{i}.0/24")},
            }))
            .expect("node");
            nodes
                .create(&PostParams::default(), &node)
                .await
                .expect("create node");
            let status = json!({"status": {
                "capacity": {"cpu": shape.cpu, "memory": shape.memory, "pods": shape.pods.to_string()},
                "allocatable": {"cpu": shape.cpu, "memory": shape.memory, "pods": shape.pods.to_string()},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake kubelet is ready",
                                "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
                "addresses": [{"type": "InternalIP", "address": format!("192.0.2.{}", i + 1)}, {"type": "Hostname", "address": name}],
                "nodeInfo": {"kubeletVersion": "v1.33.0-fake", "osImage": "fake", "kernelVersion": "fake", "containerRuntimeVersion": "fake://1",
                             "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
            }});
            nodes
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .expect("node status");
        }
        let cut_off = Arc::new(Mutex::new(HashSet::new()));
        let unready = Arc::new(Mutex::new(HashSet::new()));
        let mut tasks = Vec::new();
        // Heartbeats: renew each node's Lease every 2 s.
        {
            let client = client.clone();
            let names = names.clone();
            let cut_off = cut_off.clone();
            tasks.push(tokio::spawn(async move {
                let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
                loop {
                    for name in &names {
                        if cut_off.lock().unwrap().contains(name) {
                            continue;
                        }
                        let lease = json!({
                            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                            "metadata": {"name": name, "namespace": "kube-node-lease"},
                            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": micro_now()},
                        });
                        let res = leases.patch(name, &PatchParams::default(), &Patch::Merge(&lease)).await;
                        if let Err(kube::Error::Api(e)) = &res
                            && e.code == 404
                        {
                            let l: Lease = serde_json::from_value(lease).unwrap();
                            let _ = leases.create(&PostParams::default(), &l).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }));
        }
        // The fake kubelet.
        {
            let names: HashSet<String> = names.iter().cloned().collect();
            let cut_off = cut_off.clone();
            let unready = unready.clone();
            tasks.push(tokio::spawn(async move {
                let pods: Api<Pod> = Api::all(client.clone());
                let mut stream = watcher(pods.clone(), watcher::Config::default()).boxed();
                while let Some(ev) = stream.next().await {
                    let list = match ev {
                        Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => vec![p],
                        _ => continue,
                    };
                    for pod in list {
                        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                        if !names.contains(&node) || cut_off.lock().unwrap().contains(&node) {
                            continue;
                        }
                        let ns = pod.metadata.namespace.clone().unwrap_or_default();
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                        if pod.metadata.deletion_timestamp.is_some() {
                            let _ = api.delete(&name, &DeleteParams::default().grace_period(0)).await;
                            continue;
                        }
                        let want_ready = !unready.lock().unwrap().contains(&format!("{ns}/{name}"));
                        let status = pod.status.clone().unwrap_or_default();
                        let is_ready = status
                            .conditions
                            .as_ref()
                            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                        if status.phase.as_deref() == Some("Running") && is_ready == want_ready {
                            continue;
                        }
                        let r = if want_ready { "True" } else { "False" };
                        let containers: Vec<_> = pod
                            .spec
                            .as_ref()
                            .map(|s| s.containers.iter().map(|c| json!({
                                "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "", "ready": want_ready,
                                "restartCount": 0, "started": true, "state": {"running": {"startedAt": now()}},
                            })).collect())
                            .unwrap_or_default();
                        let ip = format!("10.244.{}.{}", name.len() % 200, (name.bytes().map(u32::from).sum::<u32>() % 250) + 2);
                        let patch = json!({"status": {
                            "phase": "Running",
                            "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.1",
                            "startTime": status.start_time.as_ref().map(|t| t.0.to_string()).unwrap_or_else(now),
                            "conditions": [
                                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()},
                                {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
                                {"type": "ContainersReady", "status": r, "lastTransitionTime": now()},
                                {"type": "Ready", "status": r, "lastTransitionTime": now()},
                            ],
                            "containerStatuses": containers,
                        }});
                        let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await;
                    }
                }
            }));
        }
        FakeNodes {
            names,
            cut_off,
            unready,
            tasks,
        }
    }

    /// Stop renewing `node`'s Lease and stop its kubelet (the node is down).
    pub fn cut_off(&self, node: &str) {
        self.cut_off.lock().unwrap().insert(node.to_string());
    }

    /// Make the fake kubelet report `namespace/name` ready or not (it acts on
    /// the pod's next change; touch the pod to apply at once).
    pub fn set_ready(&self, namespace: &str, name: &str, ready: bool) {
        let key = format!("{namespace}/{name}");
        let mut u = self.unready.lock().unwrap();
        if ready {
            u.remove(&key);
        } else {
            u.insert(key);
        }
    }
}
