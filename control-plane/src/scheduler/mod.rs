//! The scheduler: assigns pods that have no node to one, as
//! kube-scheduler's default profile does, through `pods/binding`.
//!
//! Shape (plan, then act):
//!
//! - [`core`] (pure): what a pod asks for and a node offers, the filters,
//!   the scores, and `schedule(pod, nodes) -> node | FitError`.
//! - [`cache`] (pure): nodes plus every pod assigned to one, including pods
//!   we assumed onto a node while their Binding is in flight.
//! - [`queue`] (pure): pods waiting for a node; backoff 1 s doubling to
//!   10 s, cut short when nodes or pods change.
//! - this module: one task owns the cache and the queue. It feeds them from
//!   two subscriptions to the shared informers (all Nodes, all Pods; see
//!   [`crate::informers`]), takes pods from the queue one at a time through
//!   `core::schedule`, assumes the result and binds
//!   asynchronously ([`MAX_BINDS_IN_FLIGHT`] at once). A pod that fits
//!   nowhere gets PodScheduled=False (reason Unschedulable) and a
//!   `FailedScheduling` Warning event; a bound pod gets a `Scheduled` event.
//!   Status patches and events go through a bounded reporter queue
//!   ([`REPORT_QUEUE`]) worked by a few concurrent tasks, so they never slow
//!   binding down; when the queue is full, reports are dropped (as client-go's
//!   event broadcaster drops events) and the next failed attempt writes them.
//!
//! Pods handled: `spec.nodeName` empty, `spec.schedulerName`
//! `default-scheduler` (or empty), no deletionTimestamp, not finished.
//! Every pod with a node counts against that node until it finishes or is
//! deleted, whichever scheduler placed it.

pub mod cache;
pub mod core;
pub mod queue;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keelson_rules::readiness::is_pod_terminal;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use self::cache::{Cache, NodeChange};
use self::core::{NodeSpec, PodInfo, Scratch};
use self::queue::{Observed, Queue};
use crate::controllers::Context;
use crate::informers::{Event, Informers, Subscription};

pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Binding requests in flight at once.
pub const MAX_BINDS_IN_FLIGHT: usize = 64;
/// Pending status patches and events.
pub const REPORT_QUEUE: usize = 4096;
/// Status patches and events written at once.
pub const REPORT_CONCURRENCY: usize = 8;
/// Pods scheduled between two looks at the watches.
const BATCH: usize = 128;

/// Run the scheduler on informers of its own (a scheduler in a process of
/// its own, as kube-scheduler runs), restarted if it stops, until the task
/// is aborted.
pub async fn run(ctx: Arc<Context>) {
    let informers = Informers::new(ctx.client.clone());
    crate::controllers::runtime::supervise("scheduler", || run_with(ctx.clone(), informers.clone()))
        .await
}

/// Run the scheduler over the process's shared informers until its
/// subscriptions end or the task is aborted.
pub async fn run_with(ctx: Arc<Context>, informers: Arc<Informers>) {
    let nodes = informers.get::<Node>().subscribe();
    let pods = informers.get::<Pod>().subscribe();
    Scheduler::new(&ctx).run(nodes, pods).await;
}

/// Whether the default scheduler should place this unassigned pod.
pub fn wants_scheduling(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let ours = matches!(
        spec.scheduler_name.as_deref(),
        None | Some("" | SCHEDULER_NAME)
    );
    spec.node_name.as_deref().unwrap_or("").is_empty()
        && ours
        && pod.metadata.deletion_timestamp.is_none()
        && !is_pod_terminal(pod)
}

fn scheduled_false_message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| c.message.clone().unwrap_or_default())
}

/// A pod named for a report.
#[derive(Clone, Debug)]
struct PodRef {
    namespace: String,
    name: String,
    uid: String,
}

impl PodRef {
    fn of(p: &PodInfo) -> PodRef {
        PodRef {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            uid: p.uid.clone(),
        }
    }

    fn object_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            uid: Some(self.uid.clone()),
            ..ObjectReference::default()
        }
    }
}

/// Writes the scheduler makes besides bindings.
#[derive(Debug)]
enum Report {
    Scheduled {
        pod: PodRef,
        node: String,
    },
    Unschedulable {
        pod: PodRef,
        message: String,
        patch: Option<Option<String>>,
    },
    BindFailed {
        pod: PodRef,
        message: String,
    },
}

struct BindResult {
    pod: Arc<PodInfo>,
    node: String,
    result: Result<(), kube::Error>,
}

struct Scheduler {
    client: kube::Client,
    cache: Cache,
    queue: Queue,
    scratch: Scratch,
    rotation: usize,
    binds: JoinSet<BindResult>,
    reports: mpsc::Sender<Report>,
    nodes_synced: bool,
    pods_synced: bool,
}

impl Scheduler {
    fn new(ctx: &Context) -> Scheduler {
        let (tx, rx) = mpsc::channel(REPORT_QUEUE);
        let client = ctx.client_as(crate::controllers::SCHEDULER_USER);
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: SCHEDULER_NAME.into(),
                instance: Some(ctx.config.identity.clone()),
            },
        );
        tokio::spawn(report_loop(client.clone(), recorder, rx));
        Scheduler {
            client,
            cache: Cache::default(),
            queue: Queue::default(),
            scratch: Scratch::default(),
            rotation: 0,
            binds: JoinSet::new(),
            reports: tx,
            nodes_synced: false,
            pods_synced: false,
        }
    }

    async fn run(&mut self, mut nodes: Subscription<Node>, mut pods: Subscription<Pod>) {
        let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        let timer = tokio::time::sleep_until(far);
        tokio::pin!(timer);
        loop {
            let now = Instant::now();
            let synced = self.nodes_synced && self.pods_synced;
            if synced {
                for _ in 0..BATCH {
                    if self.binds.len() >= MAX_BINDS_IN_FLIGHT {
                        break;
                    }
                    let Some(pod) = self.queue.pop(now) else {
                        break;
                    };
                    self.schedule_one(pod, now);
                }
            }
            let deadline = self.queue.next_deadline();
            if let Some(d) = deadline {
                timer.as_mut().reset(tokio::time::Instant::from_std(d));
            }
            let can_schedule =
                synced && self.binds.len() < MAX_BINDS_IN_FLIGHT && self.queue.has_ready(now);
            tokio::select! {
                biased;
                Some(done) = self.binds.join_next(), if !self.binds.is_empty() => match done {
                    Ok(r) => self.on_bind_result(r),
                    Err(e) => tracing::error!(error = %e, "bind task failed"),
                },
                ev = nodes.recv() => match ev {
                    Some(ev) => self.on_node_event(ev),
                    None => return,
                },
                ev = pods.recv() => match ev {
                    Some(ev) => self.on_pod_event(ev),
                    None => return,
                },
                () = &mut timer, if deadline.is_some() => {}
                () = std::future::ready(()), if can_schedule => {}
            }
        }
    }

    fn schedule_one(&mut self, pod: Arc<PodInfo>, now: Instant) {
        let result = core::schedule(&pod, self.cache.nodes(), self.rotation, &mut self.scratch);
        match result {
            Ok(i) => {
                self.rotation = self.rotation.wrapping_add(1);
                let node = self.cache.nodes()[i].name.clone();
                self.queue.scheduled(&pod.uid);
                self.cache.assume(pod.clone(), &node);
                let client = self.client.clone();
                self.binds.spawn(async move {
                    let result = bind(client, &pod, &node).await;
                    BindResult { pod, node, result }
                });
            }
            Err(fit) => {
                let message = fit.to_string();
                let observed = self.queue.observed(&pod.uid).cloned().unwrap_or_default();
                let patch = (observed.condition.as_deref() != Some(message.as_str()))
                    .then_some(observed.resource_version);
                let backoff = self.queue.failed(&pod.uid, now);
                tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), %message, ?backoff, "unschedulable");
                if patch.is_some() {
                    self.queue.set_condition(&pod.uid, Some(message.clone()));
                }
                self.report(Report::Unschedulable {
                    pod: PodRef::of(&pod),
                    message,
                    patch,
                });
            }
        }
    }

    fn report(&self, r: Report) {
        if let Err(mpsc::error::TrySendError::Full(r)) = self.reports.try_send(r) {
            tracing::debug!(report = ?r, "scheduler report queue full; dropped");
        }
    }

    fn on_bind_result(&mut self, r: BindResult) {
        let uid = &r.pod.uid;
        match r.result {
            Ok(()) => {
                self.cache.bound(uid);
                self.report(Report::Scheduled {
                    pod: PodRef::of(&r.pod),
                    node: r.node,
                });
            }
            // Already bound (by us earlier or by someone else), being
            // deleted, or gone: the watch tells the rest.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                tracing::debug!(pod = %r.pod.name, code = e.code, message = %e.message, "binding not needed");
                self.cache.forget(uid);
            }
            Err(e) => {
                let message = format!(
                    "Binding rejected: bind pod {}/{} to node {}: {e}",
                    r.pod.namespace, r.pod.name, r.node
                );
                tracing::warn!("{message}");
                if self.cache.forget(uid) {
                    self.queue.requeue_failed(r.pod.clone(), Instant::now());
                    self.report(Report::BindFailed {
                        pod: PodRef::of(&r.pod),
                        message,
                    });
                }
            }
        }
    }

    fn on_node_event(&mut self, ev: Event<Node>) {
        let now = Instant::now();
        match ev {
            Event::Added(node) | Event::Updated { new: node, .. } => {
                if self.cache.upsert_node(NodeSpec::from_node(&node)) != NodeChange::Unchanged {
                    self.queue.cluster_changed(now);
                }
            }
            Event::Deleted(node) => {
                self.cache
                    .remove_node(node.metadata.name.as_deref().unwrap_or_default());
            }
            Event::Synced => {
                self.nodes_synced = true;
                tracing::debug!(nodes = self.cache.nodes().len(), "scheduler: nodes synced");
            }
        }
    }

    fn on_pod_event(&mut self, ev: Event<Pod>) {
        let now = Instant::now();
        match ev {
            Event::Added(pod) | Event::Updated { new: pod, .. } => self.on_pod(&pod, now),
            Event::Deleted(pod) => {
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                self.queue.remove(uid);
                if self.cache.remove_pod(uid).is_some() {
                    self.queue.cluster_changed(now);
                }
            }
            Event::Synced => {
                self.pods_synced = true;
                tracing::debug!(
                    assigned = self.cache.pod_count(),
                    pending = self.queue.len(),
                    "scheduler: pods synced"
                );
            }
        }
    }

    fn on_pod(&mut self, pod: &Pod, now: Instant) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        if !node.is_empty() {
            self.queue.remove(&uid);
            let changed = if is_pod_terminal(pod) {
                self.cache.remove_pod(&uid).is_some()
            } else {
                self.cache.confirm(Arc::new(PodInfo::from_pod(pod)), node)
            };
            if changed {
                self.queue.cluster_changed(now);
            }
            return;
        }
        if self.cache.is_assumed(&uid) {
            // Our binding is on its way; this event predates it.
            return;
        }
        if !wants_scheduling(pod) {
            self.queue.remove(&uid);
            return;
        }
        let observed = Observed {
            condition: scheduled_false_message(pod),
            resource_version: pod.metadata.resource_version.clone(),
        };
        self.queue
            .upsert(Arc::new(PodInfo::from_pod(pod)), observed, now);
    }
}

/// POST pods/{name}/binding.
async fn bind(client: kube::Client, pod: &PodInfo, node: &str) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..ObjectReference::default()
        },
    };
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        &pod.name,
        &PostParams::default(),
        &binding,
    )
    .await
    .map(|_| ())
}

async fn report_loop(client: kube::Client, recorder: Recorder, rx: mpsc::Receiver<Report>) {
    tokio_stream::wrappers::ReceiverStream::new(rx)
        .for_each_concurrent(REPORT_CONCURRENCY, |r| {
            let client = client.clone();
            let recorder = recorder.clone();
            async move { write_report(client, &recorder, r).await }
        })
        .await;
}

async fn write_report(client: kube::Client, recorder: &Recorder, r: Report) {
    let (pod, event) = match r {
        Report::Scheduled { pod, node } => {
            let note = format!(
                "Successfully assigned {}/{} to {node}",
                pod.namespace, pod.name
            );
            (
                pod,
                KubeEvent {
                    type_: EventType::Normal,
                    reason: "Scheduled".into(),
                    note: Some(note),
                    action: "Binding".into(),
                    secondary: None,
                },
            )
        }
        Report::Unschedulable {
            pod,
            message,
            patch,
        } => {
            if let Some(resource_version) = patch {
                patch_unschedulable(&client, &pod, &message, resource_version).await;
            }
            (
                pod,
                KubeEvent {
                    type_: EventType::Warning,
                    reason: "FailedScheduling".into(),
                    note: Some(message),
                    action: "Scheduling".into(),
                    secondary: None,
                },
            )
        }
        Report::BindFailed { pod, message } => (
            pod,
            KubeEvent {
                type_: EventType::Warning,
                reason: "FailedScheduling".into(),
                note: Some(message),
                action: "Binding".into(),
                secondary: None,
            },
        ),
    };
    if let Err(e) = recorder.publish(&event, &pod.object_ref()).await {
        tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), error = %e, reason = %event.reason, "publish scheduler event");
    }
}

/// Set PodScheduled=False (reason Unschedulable) on the pod, provided it has
/// not changed since we saw it (so that a late write cannot mark a pod that
/// has been bound meanwhile).
async fn patch_unschedulable(
    client: &kube::Client,
    pod: &PodRef,
    message: &str,
    resource_version: Option<String>,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut body = json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": message, "lastProbeTime": null, "lastTransitionTime": now,
    }]}});
    if let Some(rv) = resource_version {
        body["metadata"] = json!({"resourceVersion": rv});
    }
    match api
        .patch_status(&pod.name, &PatchParams::default(), &Patch::Strategic(&body))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), code = e.code, "pod changed; PodScheduled condition not written");
        }
        Err(e) => {
            tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), error = %e, "set PodScheduled=False");
        }
    }
}
