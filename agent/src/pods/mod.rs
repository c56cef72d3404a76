//! Pod lifecycle: a pure planner (desired vs observed -> actions) and the
//! workers that carry the actions out, one task per pod, concurrent across
//! pods, fed by a watch on pods bound to this node.

pub mod atomic;
pub mod host;
pub mod plan;
pub mod probe;
pub mod prober;
pub mod spec;
pub mod status;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use keelson_informers::{Event, Informers};
use keelson_runtime::{ContainerInfo, ContainerState};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::events::{EventType, Recorder};
use crate::health::NodeHealth;
use host::{Host, PodState, labels};
use plan::{Action, FailureKind, History, Instance, Observed, StartFailure};
use probe::{ContainerProbes, Kind, Outcome};

/// How often a worker looks at its running containers for exits.
pub const POLL: Duration = Duration::from_secs(1);
/// Grace for tearing down what belongs to pods deleted while the agent was down.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(2);
/// What is left of a grace period after a preStop hook, at least (the
/// kubelet's minimumGracePeriodInSeconds).
pub const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);
/// How long a postStart hook may run (the kubelet has no bound; a hung
/// hook would hold the pod's worker).
pub const POST_START_TIMEOUT: Duration = Duration::from_secs(120);
/// A probe failing with the same message posts its Unhealthy Event again
/// after this long (the kubelet posts each, aggregated by its recorder).
pub const UNHEALTHY_REPEAT: Duration = Duration::from_secs(60);

/// Runs the pod watch and the workers.
pub struct Manager {
    store: Store<Pod>,
    tasks: Vec<JoinHandle<()>>,
}

enum Msg {
    Pod(Arc<Pod>),
    Gone,
}

fn uid_of(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

impl Manager {
    /// Cleans up after pods deleted while the agent was down, then watches
    /// this node's pods and runs a worker per pod (adopting running containers).
    pub async fn start(
        informers: &Informers,
        host: Arc<Host>,
        events: Recorder,
        health: NodeHealth,
    ) -> anyhow::Result<Self> {
        let client = informers.client().clone();
        use anyhow::Context;
        let node = host.cfg.node_name.clone();
        let selector = format!("spec.nodeName={node}");
        let api: Api<Pod> = Api::all(client.clone());
        let live: HashSet<String> = api
            .list(&ListParams::default().fields(&selector))
            .await
            .with_context(|| format!("list pods of node {node}"))?
            .items
            .iter()
            .map(uid_of)
            .collect();
        let all = host
            .runtime
            .list()
            .await
            .context("list containers of the runtime")?;
        let mut by_pod: HashMap<String, Vec<ContainerInfo>> = HashMap::new();
        for c in all {
            if let Some(u) = c.labels.get(labels::POD_UID) {
                by_pod.entry(u.clone()).or_default().push(c);
            }
        }
        let mut known: HashSet<String> = by_pod.keys().cloned().collect();
        known.extend(keelson_runtime::sandbox::list(&host.sandbox_dir()).unwrap_or_default());
        known.extend(
            host.cgroups
                .list_pods()
                .unwrap_or_default()
                .into_iter()
                .map(|(u, _)| u),
        );
        known.extend(host.pod_dirs());
        for uid in known.iter().filter(|u| !live.contains(*u)) {
            tracing::info!(pod = %uid, "tearing down a pod that no longer exists");
            let cs = by_pod.remove(uid).unwrap_or_default();
            if let Err(e) = host.teardown(uid, cs, ORPHAN_GRACE).await {
                tracing::warn!(pod = %uid, "tear down: {e}");
            }
        }
        // CNI GC (spec 1.1): plugins release what no live pod holds.
        let valid: Vec<crate::network::ValidAttachment> = live
            .iter()
            .filter_map(|u| host.load_state(u)?.attachment)
            .map(|a| crate::network::ValidAttachment {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect();
        match host.cfg.cni.load().await {
            Ok(list) => {
                if let Err(e) = host.cfg.cni.gc(&list, &valid).await {
                    tracing::warn!("{e}");
                }
            }
            Err(e) => tracing::warn!("CNI GC skipped: {e}"),
        }
        let pods = informers.with_fields::<Pod>(&selector);
        let reader = pods.store();
        let stream = pods.subscribe();
        let prober =
            Arc::new(prober::Prober::new(host.runtime.clone()).map_err(anyhow::Error::msg)?);
        let ctx = Arc::new(Ctx {
            client,
            prober,
            host,
            events,
            health,
            services: informers
                .all::<k8s_openapi::api::core::v1::Service>()
                .store(),
        });
        let dispatcher = tokio::spawn(dispatch(ctx, stream.boxed(), reader.clone(), by_pod));
        Ok(Self {
            store: reader,
            tasks: vec![dispatcher],
        })
    }

    /// The pods of this node as the watch sees them.
    pub fn store(&self) -> Store<Pod> {
        self.store.clone()
    }

    /// Stops watching and the workers; containers keep running.
    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

struct Ctx {
    client: kube::Client,
    host: Arc<Host>,
    /// Runs probes and lifecycle hooks.
    prober: Arc<prober::Prober>,
    events: Recorder,
    health: NodeHealth,
    /// Services, for the containers' Service link variables.
    services: Store<k8s_openapi::api::core::v1::Service>,
}

type PodStream = futures::stream::BoxStream<'static, Event<Pod>>;

async fn dispatch(
    ctx: Arc<Ctx>,
    mut stream: PodStream,
    store: Store<Pod>,
    mut adopted: HashMap<String, Vec<ContainerInfo>>,
) {
    let mut workers: HashMap<String, (watch::Sender<Msg>, JoinHandle<()>)> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
            }
            ev = stream.next() => {
                let Some(ev) = ev else { break };
                match ev {
                    Event::Apply(p) | Event::InitApply(p) => {
                        let uid = uid_of(&p);
                        if let Some((tx, _)) = workers.get(&uid) {
                            let _ = tx.send(Msg::Pod(p));
                        } else {
                            let (tx, rx) = watch::channel(Msg::Pod(p));
                            let w = Worker::new(ctx.clone(), uid.clone(), adopted.remove(&uid).unwrap_or_default());
                            let done = done_tx.clone();
                            let u = uid.clone();
                            let h = tokio::spawn(async move {
                                w.run(rx).await;
                                let _ = done.send(u);
                            });
                            workers.insert(uid, (tx, h));
                        }
                    }
                    Event::Delete(p) => {
                        if let Some((tx, _)) = workers.get(&uid_of(&p)) {
                            let _ = tx.send(Msg::Gone);
                        }
                    }
                    Event::InitDone => {
                        let present: HashSet<String> = store.state().iter().map(|p| uid_of(p)).collect();
                        for (uid, (tx, _)) in &workers {
                            if !present.contains(uid) {
                                let _ = tx.send(Msg::Gone);
                            }
                        }
                    }
                    Event::Init => {}
                }
            }
        }
    }
    for (_, (_, h)) in workers {
        h.abort();
    }
}

struct Worker {
    ctx: Arc<Ctx>,
    uid: String,
    st: Option<PodState>,
    /// Container name -> instances known (by id), in attempt order.
    known: BTreeMap<String, Vec<ContainerInfo>>,
    failures: BTreeMap<String, StartFailure>,
    sandbox_failure: Option<StartFailure>,
    last_status: Option<serde_json::Value>,
    last_waiting: BTreeMap<String, String>,
    start_time: SystemTime,
    /// A NetworkNotReady Event was posted for the current wait.
    network_event_sent: bool,
    /// Service account tokens of the pod's projected volumes.
    tokens: BTreeMap<volumes::TokenSpec, Token>,
    /// When the pod's written volumes were last brought up to date.
    volumes_synced: Option<std::time::Instant>,
    /// The probe task of each running container that has probes.
    probes: BTreeMap<String, ProbeRunner>,
    /// Probe tasks wake the worker when a result changes.
    wake: Arc<tokio::sync::Notify>,
    /// Termination messages of exited instances, read once (by ID).
    messages: BTreeMap<String, Option<String>>,
}

/// The probes of one running container instance and the task running them.
struct ProbeRunner {
    /// The instance (runtime container ID).
    id: String,
    state: Arc<std::sync::Mutex<ContainerProbes>>,
    task: JoinHandle<()>,
}

impl Drop for ProbeRunner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl Worker {
    fn new(ctx: Arc<Ctx>, uid: String, adopted: Vec<ContainerInfo>) -> Self {
        let st = ctx.host.load_state(&uid);
        let mut known: BTreeMap<String, Vec<ContainerInfo>> = BTreeMap::new();
        for c in adopted {
            if let Some(n) = c.labels.get(labels::CONTAINER) {
                known.entry(n.clone()).or_default().push(c);
            }
        }
        for v in known.values_mut() {
            v.sort_by_key(|c| host::attempt_of(c).0);
        }
        if !known.is_empty() {
            tracing::info!(pod = %uid, containers = known.len(), "adopted running pod");
        }
        Self {
            ctx,
            uid,
            st,
            known,
            failures: BTreeMap::new(),
            sandbox_failure: None,
            last_status: None,
            last_waiting: BTreeMap::new(),
            start_time: now(),
            network_event_sent: false,
            tokens: BTreeMap::new(),
            volumes_synced: None,
            probes: BTreeMap::new(),
            messages: BTreeMap::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    async fn run(mut self, mut rx: watch::Receiver<Msg>) {
        loop {
            let msg = match &*rx.borrow_and_update() {
                Msg::Pod(p) => Some(p.clone()),
                Msg::Gone => None,
            };
            let wait = match msg {
                None => {
                    let cs = self.all_containers();
                    if let Err(e) = self.ctx.host.teardown(&self.uid, cs, ORPHAN_GRACE).await {
                        tracing::warn!(pod = %self.uid, "tear down: {e}");
                    }
                    return;
                }
                Some(pod) => match self.reconcile(&pod).await {
                    Step::Done => return,
                    Step::Wait(d) => d,
                },
            };
            let wake = self.wake.clone();
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
            }
        }
    }

    fn all_containers(&self) -> Vec<ContainerInfo> {
        self.known.values().flatten().cloned().collect()
    }

    async fn observe(&mut self, pod: Option<&Pod>) -> Observed {
        let rt = self.ctx.host.runtime.clone();
        for list in self.known.values_mut() {
            let mut keep = Vec::new();
            for c in list.drain(..) {
                let fresh = if matches!(c.state, ContainerState::Exited { .. }) {
                    Some(c)
                } else {
                    match rt.state(&c.id).await {
                        Ok(Some(i)) => Some(i),
                        Ok(None) => None,
                        Err(e) => {
                            tracing::warn!(container = %c.id, "state: {e}");
                            Some(c)
                        }
                    }
                };
                if let Some(mut i) = fresh {
                    if let (
                        ContainerState::Exited {
                            oom_killed: oom @ false,
                            exit_code: 137,
                            ..
                        },
                        Some(st),
                    ) = (&mut i.state, &self.st)
                        && self.ctx.host.oom_killed(st, &i.id)
                    {
                        *oom = true;
                    }
                    keep.push(i);
                }
            }
            *list = keep;
        }
        // Ready: every namespace the pod holds of its own is there (a
        // host-network pod has no network namespace file).
        let sandbox_ready = self.st.as_ref().is_some_and(|s| {
            [&s.netns, &s.ipcns, &s.utsns]
                .iter()
                .all(|f| f.as_os_str().is_empty() || f.exists())
        });
        let mut containers = BTreeMap::new();
        for (name, list) in &self.known {
            let spec = pod.and_then(|p| container_spec(p, name));
            containers.insert(
                name.clone(),
                History {
                    instances: list
                        .iter()
                        .map(|c| {
                            let (attempt, streak) = host::attempt_of(c);
                            let message = match (&c.state, pod, spec) {
                                (ContainerState::Exited { exit_code, .. }, Some(p), Some(s)) => {
                                    self.messages
                                        .entry(c.id.clone())
                                        .or_insert_with(|| {
                                            self.ctx
                                                .host
                                                .termination_message(p, s, attempt, *exit_code)
                                        })
                                        .clone()
                                }
                                _ => None,
                            };
                            Instance {
                                id: c.id.clone(),
                                attempt,
                                streak,
                                state: c.state.clone(),
                                image_id: c
                                    .labels
                                    .get(labels::IMAGE_ID)
                                    .cloned()
                                    .unwrap_or_default(),
                                message,
                            }
                        })
                        .collect(),
                    failure: None,
                    probes: None,
                },
            );
        }
        for (name, f) in &self.failures {
            containers.entry(name.clone()).or_default().failure = Some(f.clone());
        }
        Observed {
            sandbox_ready,
            sandbox_failure: self.sandbox_failure.clone(),
            containers,
        }
    }

    async fn reconcile(&mut self, pod: &Pod) -> Step {
        for _round in 0..8 {
            let mut obs = self.observe(Some(pod)).await;
            self.sync_probes(pod, &mut obs);
            let p = plan::plan(pod, &obs, now());
            if p.actions.is_empty() {
                self.refresh_volumes(pod).await;
                self.report(pod, &obs, &p).await;
                let running = obs.containers.values().any(|h| {
                    matches!(
                        h.current().map(|i| &i.state),
                        Some(ContainerState::Running { .. } | ContainerState::Created)
                    )
                });
                let poll = if running {
                    POLL
                } else {
                    Duration::from_secs(60)
                };
                return Step::Wait(p.requeue_after.map_or(poll, |r| r.min(poll)));
            }
            let mut starts = Vec::new();
            for a in p.actions {
                match a {
                    Action::Teardown { grace } => return self.teardown(pod, grace).await,
                    Action::CreateSandbox => {
                        if let Err(why) = self.network_ready(pod) {
                            if !self.network_event_sent {
                                self.ctx.events.pod(
                                    pod,
                                    EventType::Warning,
                                    "NetworkNotReady",
                                    &format!("network is not ready: {why}"),
                                );
                                self.network_event_sent = true;
                            }
                            let obs = self.observe(Some(pod)).await;
                            self.report(pod, &obs, &plan::plan(pod, &obs, now())).await;
                            return Step::Wait(crate::network::ready::RECHECK_NOT_READY);
                        }
                        self.network_event_sent = false;
                        self.create_sandbox(pod).await
                    }
                    Action::KillContainer {
                        name,
                        id,
                        why,
                        grace,
                    } => {
                        self.ctx
                            .events
                            .pod(pod, EventType::Normal, "Killing", &why.message(&name));
                        self.probes.remove(&name);
                        stop_container(&self.ctx, pod, self.st.as_ref(), &name, &id, grace).await;
                    }
                    Action::RemoveContainer { id } => {
                        let info = self.known.values().flatten().find(|c| c.id == id).cloned();
                        if let Some(info) = info {
                            self.ctx.host.remove_container(&info).await;
                            for l in self.known.values_mut() {
                                l.retain(|c| c.id != id);
                            }
                        }
                    }
                    Action::StartContainer {
                        name,
                        init,
                        attempt,
                        streak,
                    } => starts.push((name, init, attempt, streak)),
                }
            }
            if !starts.is_empty() {
                self.start_all(pod, starts).await;
            }
        }
        Step::Wait(Duration::from_millis(200))
    }

    /// Brings the pod's written volumes (ConfigMap, Secret, downward API,
    /// projected) up to date every [`VOLUME_RESYNC`] while its sandbox is
    /// up: updates reach running containers (not subPath mounts), tokens are
    /// renewed before they expire. A failure keeps the old files.
    async fn refresh_volumes(&mut self, pod: &Pod) {
        let Some(st) = self.st.clone() else { return };
        let written = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|vs| vs.iter().any(volumes::is_written));
        if !written
            || self
                .volumes_synced
                .is_none_or(|t| t.elapsed() < VOLUME_RESYNC)
        {
            return;
        }
        self.volumes_synced = Some(std::time::Instant::now());
        let fields = self.ctx.host.field_values(&st);
        let sources = fetch_sources(&self.ctx.client, pod, fields, &mut self.tokens).await;
        if let Err(e) = self.ctx.host.setup_volumes(pod, &st, &sources).await {
            tracing::warn!(pod = %self.uid, "refresh volumes: {}", e.message);
        }
    }

    /// Starts a probe task for each running container instance with probes
    /// (and drops those of instances no longer running), and puts what
    /// their probes say into `obs`.
    fn sync_probes(&mut self, pod: &Pod, obs: &mut Observed) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let mut keep = HashSet::new();
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| keelson_rules::containers::is_sidecar(c));
        for c in sidecars.chain(&spec.containers) {
            let Some(h) = obs.containers.get_mut(&c.name) else {
                continue;
            };
            let Some(Instance {
                id,
                state: ContainerState::Running { started_at, .. },
                ..
            }) = h.current()
            else {
                continue;
            };
            if self.probes.get(&c.name).is_none_or(|r| &r.id != id) {
                self.probes.remove(&c.name);
                let age = now().duration_since(*started_at).unwrap_or_default();
                let t0 = std::time::Instant::now();
                let started = t0.checked_sub(age).unwrap_or(t0);
                let (cp, errors) = ContainerProbes::new(c, started);
                for e in errors {
                    tracing::warn!(pod = %self.uid, container = %c.name, "probe not run: {e}");
                }
                if let (Some(cp), Some(st)) = (cp, self.st.as_ref()) {
                    let state = Arc::new(std::sync::Mutex::new(cp));
                    let target = prober::Target {
                        netns: st.netns.clone(),
                        pod_ip: st.pod_ips.first().copied(),
                        container_id: id.clone(),
                    };
                    // The task keeps what its Events name, not the pod.
                    let about = Pod {
                        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                            name: pod.metadata.name.clone(),
                            namespace: pod.metadata.namespace.clone(),
                            uid: pod.metadata.uid.clone(),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    let task = tokio::spawn(probe_loop(
                        self.ctx.clone(),
                        about,
                        target,
                        state.clone(),
                        self.wake.clone(),
                    ));
                    self.probes.insert(
                        c.name.clone(),
                        ProbeRunner {
                            id: id.clone(),
                            state,
                            task,
                        },
                    );
                }
            }
            if let Some(r) = self.probes.get(&c.name) {
                h.probes = Some(r.state.lock().unwrap_or_else(|e| e.into_inner()).view());
                keep.insert(c.name.clone());
            }
        }
        self.probes.retain(|n, _| keep.contains(n));
    }

    /// Pods on the host network need no pod network; others wait for it.
    fn network_ready(&self, pod: &Pod) -> Result<(), String> {
        if spec::host_network(pod) {
            return Ok(());
        }
        self.ctx.health.network()
    }

    async fn create_sandbox(&mut self, pod: &Pod) {
        match self.ctx.host.create_sandbox(pod).await {
            Ok(st) => {
                self.st = Some(st);
                self.sandbox_failure = None;
            }
            Err(e) => {
                let count = self.sandbox_failure.as_ref().map_or(1, |f| f.count + 1);
                let message = format!("create pod sandbox: {e}");
                self.ctx
                    .events
                    .pod(pod, EventType::Warning, "FailedCreatePodSandBox", &message);
                tracing::warn!(pod = %self.uid, "{message}");
                self.sandbox_failure = Some(StartFailure {
                    kind: FailureKind::Create,
                    message,
                    at: now(),
                    count,
                });
            }
        }
    }

    async fn start_all(&mut self, pod: &Pod, starts: Vec<(String, bool, u32, u32)>) {
        let Some(st) = self.st.clone() else { return };
        let spec = pod.spec.clone().unwrap_or_default();
        let fields = self.ctx.host.field_values(&st);
        let sources = fetch_sources(&self.ctx.client, pod, fields, &mut self.tokens).await;
        // The pod's volumes first: every container sees the same files.
        if let Err(e) = self.ctx.host.setup_volumes(pod, &st, &sources).await {
            for (name, ..) in &starts {
                self.failures.insert(
                    name.clone(),
                    StartFailure {
                        kind: e.kind,
                        message: e.message.clone(),
                        at: now(),
                        count: self.failures.get(name).map_or(1, |f| f.count + 1),
                    },
                );
            }
            self.ctx
                .events
                .pod(pod, EventType::Warning, "FailedMount", &e.message);
            return;
        }
        self.volumes_synced = Some(std::time::Instant::now());
        let services: Vec<k8s_openapi::api::core::v1::Service> = self
            .ctx
            .services
            .state()
            .iter()
            .map(|s| (**s).clone())
            .collect();
        let env_src = spec::EnvSources {
            objects: &sources,
            services: &services,
        };
        let creds = pull_credentials(&self.ctx.client, &self.ctx.events, pod).await;
        let creds = &creds;
        let host = self.ctx.host.clone();
        let futs = starts.iter().map(|(name, init, attempt, streak)| {
            let c = if *init {
                spec.init_containers
                    .iter()
                    .flatten()
                    .find(|c| &c.name == name)
            } else {
                spec.containers.iter().find(|c| &c.name == name)
            };
            let host = host.clone();
            let st = &st;
            let events = &self.ctx.events;
            let ctx = &self.ctx;
            async move {
                let c = c?;
                let image = c.image.clone().unwrap_or_default();
                let pulled = pull_with_events(&host, events, pod, c, creds).await;
                let r = match pulled {
                    Ok(img) => {
                        host.start_container(pod, st, c, img, *attempt, *streak, env_src)
                            .await
                    }
                    Err(e) => Err(e),
                };
                if r.is_ok() {
                    events.pod(
                        pod,
                        EventType::Normal,
                        "Created",
                        &format!("Created container {}", c.name),
                    );
                    events.pod(
                        pod,
                        EventType::Normal,
                        "Started",
                        &format!("Started container {}", c.name),
                    );
                }
                if let (Ok((id, _)), Some(h)) =
                    (&r, c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()))
                {
                    // The kubelet's order: Started, then the hook; a
                    // failed hook kills the container (its preStop too)
                    // and the restart policy takes over.
                    if let Err(e) = run_hook(ctx, Some(st), c, h, id, POST_START_TIMEOUT).await {
                        tracing::warn!(container = %id, "postStart hook: {e}");
                        events.pod(
                            pod,
                            EventType::Warning,
                            "FailedPostStartHook",
                            "PostStartHook failed",
                        );
                        let grace = probe::kill_grace(pod, None);
                        stop_container(ctx, pod, Some(st), &c.name, id, grace).await;
                    }
                }
                {
                    if let Err(e) = &r {
                        // The kubelet's pair: what failed, then the
                        // container's waiting reason.
                        let what = match e.kind {
                            FailureKind::Pull => {
                                format!("Failed to pull image \"{image}\": {}", e.message)
                            }
                            _ => e.message.clone(),
                        };
                        events.pod(pod, EventType::Warning, "Failed", &what);
                        events.pod(
                            pod,
                            EventType::Warning,
                            "Failed",
                            &format!("Error: {}", e.kind.reason()),
                        );
                    }
                }
                Some((c.name.clone(), r))
            }
        });
        let results = futures::future::join_all(futs).await;
        for (name, r) in results.into_iter().flatten() {
            match r {
                Ok((id, _image)) => {
                    self.failures.remove(&name);
                    match self.ctx.host.runtime.state(&id).await {
                        Ok(Some(info)) => self.known.entry(name).or_default().push(info),
                        Ok(None) => tracing::warn!(container = %id, "started container vanished"),
                        Err(e) => tracing::warn!(container = %id, "state: {e}"),
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = %self.uid, container = %name, "{}", e.message);
                    let count = self.failures.get(&name).map_or(1, |f| f.count + 1);
                    self.failures.insert(
                        name,
                        StartFailure {
                            kind: e.kind,
                            message: e.message,
                            at: now(),
                            count,
                        },
                    );
                }
            }
        }
    }

    async fn teardown(&mut self, pod: &Pod, grace: Duration) -> Step {
        let running: Vec<&ContainerInfo> = self
            .known
            .values()
            .flatten()
            .filter(|c| !matches!(c.state, ContainerState::Exited { .. }))
            .collect();
        for c in &running {
            let name = c.labels.get(labels::CONTAINER).cloned().unwrap_or_default();
            self.ctx.events.pod(
                pod,
                EventType::Normal,
                "Killing",
                &format!("Stopping container {name}"),
            );
        }
        // preStop hooks, all at once, within the grace; the rest of it
        // goes to the containers.
        self.probes.clear();
        let hooks = running.iter().map(|c| {
            let name = c.labels.get(labels::CONTAINER).cloned().unwrap_or_default();
            let (ctx, st) = (&self.ctx, self.st.as_ref());
            async move { pre_stop(ctx, pod, st, &name, &c.id, grace).await }
        });
        let took = futures::future::join_all(hooks)
            .await
            .into_iter()
            .max()
            .unwrap_or_default();
        let grace = if took.is_zero() {
            grace
        } else {
            grace.saturating_sub(took).max(MIN_GRACE_AFTER_HOOK)
        };
        // Main containers stop first, then sidecars one by one in reverse
        // order (the kubelet's order), each within what is left of the grace.
        let sidecars: Vec<&str> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| keelson_rules::containers::is_sidecar(c))
            .map(|c| c.name.as_str())
            .rev()
            .collect();
        if !sidecars.is_empty() {
            let t0 = std::time::Instant::now();
            let name_of =
                |c: &ContainerInfo| c.labels.get(labels::CONTAINER).cloned().unwrap_or_default();
            let mains = running
                .iter()
                .filter(|c| !sidecars.contains(&name_of(c).as_str()))
                .map(|c| self.ctx.host.runtime.stop(&c.id, grace));
            futures::future::join_all(mains).await;
            for s in &sidecars {
                for c in running.iter().filter(|c| name_of(c) == *s) {
                    let left = grace.saturating_sub(t0.elapsed()).max(MIN_GRACE_AFTER_HOOK);
                    let _ = self.ctx.host.runtime.stop(&c.id, left).await;
                }
            }
        }
        let cs = self.all_containers();
        if let Err(e) = self.ctx.host.teardown(&self.uid, cs, grace).await {
            tracing::warn!(pod = %self.uid, "tear down: {e}");
            return Step::Wait(Duration::from_secs(2));
        }
        self.known.clear();
        self.st = None;
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api
            .delete(pod.metadata.name.as_deref().unwrap_or(""), &dp)
            .await
        {
            Ok(_) => Step::Done,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Step::Done,
            Err(e) => {
                tracing::warn!(pod = %self.uid, "final delete: {e}");
                Step::Wait(Duration::from_secs(1))
            }
        }
    }

    async fn report(&mut self, pod: &Pod, obs: &Observed, p: &plan::Plan) {
        let inputs = status::StatusInputs {
            pod_ips: self
                .st
                .as_ref()
                .map(|s| s.pod_ips.clone())
                .unwrap_or_default(),
            host_ip: Some(self.ctx.host.cfg.node_ip),
            start_time: Some(self.start_time),
            qos_class: keelson_runtime::cgroups::qos_class(pod).as_str().into(),
            runtime_name: self.ctx.host.cfg.runtime_name.clone(),
        };
        let st = status::compute(pod, obs, p, &inputs, now());
        let waiting = status::waiting_reasons(&st);
        for (name, reason) in &waiting {
            if self.last_waiting.get(name) != Some(reason) {
                match reason.as_str() {
                    "CrashLoopBackOff" => self.ctx.events.pod(
                        pod,
                        EventType::Warning,
                        "BackOff",
                        &format!("Back-off restarting failed container {name}"),
                    ),
                    "ImagePullBackOff" => {
                        let image = pod
                            .spec
                            .iter()
                            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
                            .find(|c| &c.name == name)
                            .and_then(|c| c.image.clone())
                            .unwrap_or_default();
                        self.ctx.events.pod(
                            pod,
                            EventType::Normal,
                            "BackOff",
                            &format!("Back-off pulling image \"{image}\""),
                        );
                        self.ctx.events.pod(
                            pod,
                            EventType::Warning,
                            "Failed",
                            "Error: ImagePullBackOff",
                        );
                    }
                    _ => {}
                }
            }
        }
        self.last_waiting = waiting;
        let Ok(v) = serde_json::to_value(&st) else {
            return;
        };
        if self.last_status.as_ref() == Some(&v) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let body = serde_json::json!({"status": v});
        match api
            .patch_status(
                pod.metadata.name.as_deref().unwrap_or(""),
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            Ok(_) => self.last_status = Some(v),
            Err(e) => tracing::warn!(pod = %self.uid, "patch status: {e}"),
        }
    }
}

enum Step {
    Done,
    Wait(Duration),
}

/// Runs one container instance's probes until it is killed or the task is
/// aborted (its instance stopped running): Unhealthy Events on failures,
/// the worker woken when what the probes say changes.
async fn probe_loop(
    ctx: Arc<Ctx>,
    pod: Pod,
    target: prober::Target,
    state: Arc<std::sync::Mutex<ContainerProbes>>,
    wake: Arc<tokio::sync::Notify>,
) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let mut last_event: BTreeMap<Kind, (String, std::time::Instant)> = BTreeMap::new();
    loop {
        let Some((kind, at)) = lock().next_due() else {
            return;
        };
        tokio::time::sleep_until(at.into()).await;
        let Some((handler, timeout)) = lock()
            .get(kind)
            .map(|p| (p.spec.handler.clone(), p.spec.timeout))
        else {
            return;
        };
        // Boxed: the handler's future (hyper, rustls) is large and exists
        // only while a probe runs, not for the life of every container.
        let outcome = Box::pin(ctx.prober.run(&target, &handler, timeout)).await;
        let t = std::time::Instant::now();
        // The kubelet's Unhealthy Warnings: "<Kind> probe failed: ..." and
        // "<Kind> probe errored: ..." (an error changes no result).
        let message = match &outcome {
            Outcome::Failure(msg) => Some(format!("{} probe failed: {msg}", kind.as_str())),
            Outcome::Error(e) => Some(format!("{} probe errored: {e}", kind.as_str())),
            Outcome::Success => None,
        };
        match message {
            Some(m) => {
                let post = last_event.get(&kind).is_none_or(|(last, at)| {
                    *last != m || t.duration_since(*at) >= UNHEALTHY_REPEAT
                });
                if post {
                    ctx.events.pod(&pod, EventType::Warning, "Unhealthy", &m);
                    last_event.insert(kind, (m, t));
                }
            }
            None => {
                last_event.remove(&kind);
            }
        }
        if lock().record(kind, &outcome, t).is_some() {
            wake.notify_one();
        }
    }
}

/// Where a container's hooks and probes run.
fn target(st: Option<&PodState>, id: &str) -> prober::Target {
    prober::Target {
        netns: st.map(|s| s.netns.clone()).unwrap_or_default(),
        pod_ip: st.and_then(|s| s.pod_ips.first().copied()),
        container_id: id.to_string(),
    }
}

fn container_spec<'a>(
    pod: &'a Pod,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::Container> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .chain(pod.spec.as_ref()?.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// Runs a lifecycle hook of container `name` (instance `id`); the failure
/// message when it failed.
async fn run_hook(
    ctx: &Ctx,
    st: Option<&PodState>,
    c: &k8s_openapi::api::core::v1::Container,
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    id: &str,
    timeout: Duration,
) -> Result<(), String> {
    let handler = probe::hook_handler(c, h)?;
    match ctx.prober.run(&target(st, id), &handler, timeout).await {
        Outcome::Success => Ok(()),
        Outcome::Failure(m) | Outcome::Error(m) => Err(m),
    }
}

/// The preStop hook of container `name`, if it has one, bounded by `grace`
/// (FailedPreStopHook Event on failure); returns how long it took.
async fn pre_stop(
    ctx: &Ctx,
    pod: &Pod,
    st: Option<&PodState>,
    name: &str,
    id: &str,
    grace: Duration,
) -> Duration {
    let t0 = std::time::Instant::now();
    let Some(c) = container_spec(pod, name) else {
        return Duration::ZERO;
    };
    let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
        return Duration::ZERO;
    };
    let run = run_hook(ctx, st, c, h, id, grace);
    match tokio::time::timeout(grace, run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(container = %id, "preStop hook: {e}");
            // The kubelet keeps the hook's output out of the Event.
            ctx.events.pod(
                pod,
                EventType::Warning,
                "FailedPreStopHook",
                "PreStopHook failed",
            );
        }
        Err(_) => tracing::warn!(container = %id, "preStop hook: still running after {grace:?}"),
    }
    t0.elapsed()
}

/// Stops one container as the kubelet's killContainer does: its preStop
/// hook within `grace`, then SIGTERM, the rest of the grace (at least
/// [`MIN_GRACE_AFTER_HOOK`] after a hook), SIGKILL.
async fn stop_container(
    ctx: &Ctx,
    pod: &Pod,
    st: Option<&PodState>,
    name: &str,
    id: &str,
    grace: Duration,
) {
    let took = pre_stop(ctx, pod, st, name, id, grace).await;
    let left = if took.is_zero() {
        grace
    } else {
        grace.saturating_sub(took).max(MIN_GRACE_AFTER_HOOK)
    };
    if let Err(e) = ctx.host.runtime.stop(id, left).await {
        tracing::warn!(container = %id, "stop: {e}");
    }
}

/// How often a running pod's ConfigMap, Secret, downward API and token
/// volumes are refreshed (the kubelet's sync period is a minute).
pub const VOLUME_RESYNC: Duration = Duration::from_secs(10);

/// A service account token a worker holds.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    issued: SystemTime,
    expires: SystemTime,
}

impl Token {
    /// Due for a new one (the kubelet's rule): 80 % of its life, or a day, gone.
    fn due(&self, now: SystemTime) -> bool {
        let life = self.expires.duration_since(self.issued).unwrap_or_default();
        let age = now.duration_since(self.issued).unwrap_or_default();
        age >= life.mul_f64(0.8) || age >= Duration::from_secs(24 * 3600)
    }
}

/// Requests a bound token for the pod's service account.
async fn request_token(
    client: &kube::Client,
    pod: &Pod,
    spec: &volumes::TokenSpec,
) -> Result<Token, String> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::core::v1::ServiceAccount;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: (!spec.audience.is_empty()).then(|| vec![spec.audience.clone()]),
            expiration_seconds: Some(spec.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = SystemTime::now();
    let out = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(&sa, &Default::default(), &req)
        .await
        .map_err(|e| format!("request a token for service account {ns}/{sa}: {e}"))?;
    let status = out
        .status
        .ok_or_else(|| format!("token for service account {ns}/{sa}: no status"))?;
    let token = status
        .token
        .ok_or_else(|| format!("token for service account {ns}/{sa}: none in the answer"))?;
    let expires = match status.expiration_timestamp {
        Some(t) => SystemTime::UNIX_EPOCH + Duration::from_secs(t.0.as_second().max(0) as u64),
        None => issued + Duration::from_secs(spec.expiration_seconds.max(0) as u64),
    };
    Ok(Token {
        value: token,
        issued,
        expires,
    })
}

/// The container's image, with the kubelet's Events: `Pulled` "Container
/// image X already present on machine" when the store's copy does, else
/// `Pulling` "Pulling image X", the pull, and `Pulled` "Successfully pulled
/// image X in 1.2s (1.2s including waiting). Image size: N bytes." A
/// failure is the caller's to report.
async fn pull_with_events(
    host: &Host,
    events: &Recorder,
    pod: &Pod,
    c: &k8s_openapi::api::core::v1::Container,
    creds: &[keelson_images::auth::Credential],
) -> Result<keelson_images::PulledImage, host::StartError> {
    let image = c.image.clone().unwrap_or_default();
    if let Some(img) = host.present_image(c)? {
        events.pod(
            pod,
            EventType::Normal,
            "Pulled",
            &already_present_message(&image),
        );
        return Ok(img);
    }
    events.pod(
        pod,
        EventType::Normal,
        "Pulling",
        &format!("Pulling image {image:?}"),
    );
    let t0 = std::time::Instant::now();
    let img = host.pull_image(c, creds).await?;
    // The store serialises pulls of one reference: the time includes
    // waiting for another pod's pull of it; it is not told apart.
    let took = t0.elapsed();
    let size = host.image_size(&img).await;
    events.pod(
        pod,
        EventType::Normal,
        "Pulled",
        &pulled_message(&image, took, took, size),
    );
    Ok(img)
}

/// The kubelet's `Pulled` message for an image already on the node.
fn already_present_message(image: &str) -> String {
    format!("Container image {image:?} already present on machine")
}

/// The kubelet's `Pulled` message after a pull.
fn pulled_message(image: &str, pull: Duration, with_waiting: Duration, size: u64) -> String {
    format!(
        "Successfully pulled image {image:?} in {} ({} including waiting). Image size: {size} bytes.",
        go_duration(pull),
        go_duration(with_waiting)
    )
}

/// A duration as Go prints a `time.Duration` truncated to milliseconds
/// (`523ms`, `1.2s`, `2m3.456s`, `0s`).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = |ms: u128| -> String {
        let (s, frac) = (ms / 1000, ms % 1000);
        if frac == 0 {
            format!("{s}s")
        } else {
            format!("{s}.{}s", format!("{frac:03}").trim_end_matches('0'))
        }
    };
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    match (h, m) {
        (0, 0) => secs(rest),
        (0, m) => format!("{m}m{}", secs(rest)),
        (h, m) => format!("{h}h{m}m{}", secs(rest)),
    }
}

/// The registry credentials of the pod's `imagePullSecrets`, in order
/// (`kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg`
/// Secrets). A secret that is missing or malformed is a Warning Event on
/// the pod (the kubelet's `FailedToRetrieveImagePullSecret`) and is
/// skipped: the pull is still tried, with the rest.
async fn pull_credentials(
    client: &kube::Client,
    events: &Recorder,
    pod: &Pod,
) -> Vec<keelson_images::auth::Credential> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let names = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
        .map(|r| r.name.clone())
        .filter(|n| !n.is_empty());
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let mut out = Vec::new();
    for name in names {
        let parsed = match secrets.get_opt(&name).await {
            Ok(Some(s)) => pull_secret_credentials(&s),
            Ok(None) => Err("not found".to_string()),
            Err(e) => Err(e.to_string()),
        };
        match parsed {
            Ok(c) => out.extend(c),
            Err(e) => events.pod(
                pod,
                EventType::Warning,
                "FailedToRetrieveImagePullSecret",
                &format!(
                    "Unable to retrieve image pull secret {ns}/{name} ({e}); \
                     attempting to pull the image may not succeed."
                ),
            ),
        }
    }
    out
}

/// The credentials one pull Secret holds.
fn pull_secret_credentials(s: &Secret) -> Result<Vec<keelson_images::auth::Credential>, String> {
    let data = s.data.clone().unwrap_or_default();
    let ty = s.type_.as_deref().unwrap_or("Opaque");
    let key = match ty {
        "kubernetes.io/dockerconfigjson" => ".dockerconfigjson",
        "kubernetes.io/dockercfg" => ".dockercfg",
        other => {
            return Err(format!(
                "type {other:?} is not kubernetes.io/dockerconfigjson or kubernetes.io/dockercfg"
            ));
        }
    };
    let bytes = data.get(key).ok_or_else(|| format!("no {key} key"))?;
    if key == ".dockercfg" {
        keelson_images::auth::parse_dockercfg(&bytes.0)
    } else {
        keelson_images::auth::parse_config_json(&bytes.0)
    }
}

/// Fetches what the pod refers to (ConfigMaps, Secrets: one GET each, a
/// missing one as None) and keeps its tokens fresh in `tokens`.
async fn fetch_sources(
    client: &kube::Client,
    pod: &Pod,
    fields: spec::FieldValues,
    tokens: &mut BTreeMap<volumes::TokenSpec, Token>,
) -> volumes::Sources {
    let refs = volumes::references(pod);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut src = volumes::Sources {
        fields,
        ..Default::default()
    };
    let cms = Api::<ConfigMap>::namespaced(client.clone(), ns);
    for name in &refs.config_maps {
        let got = cms.get_opt(name).await.unwrap_or_else(|e| {
            tracing::warn!(pod = ?pod.metadata.name, "get configmap {ns}/{name}: {e}");
            None
        });
        src.config_maps.insert(name.clone(), got);
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    for name in &refs.secrets {
        let got = secrets.get_opt(name).await.unwrap_or_else(|e| {
            tracing::warn!(pod = ?pod.metadata.name, "get secret {ns}/{name}: {e}");
            None
        });
        src.secrets.insert(name.clone(), got);
    }
    let now = SystemTime::now();
    tokens.retain(|k, _| refs.tokens.contains(k));
    for spec in &refs.tokens {
        if tokens.get(spec).is_none_or(|t| t.due(now)) {
            match request_token(client, pod, spec).await {
                Ok(t) => {
                    tokens.insert(spec.clone(), t);
                }
                Err(e) => tracing::warn!(pod = ?pod.metadata.name, "{e}"),
            }
        }
        if let Some(t) = tokens.get(spec).filter(|t| t.expires > now) {
            src.tokens.insert(spec.clone(), t.value.clone());
        }
    }
    src
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_messages_are_the_kubelets() {
        assert_eq!(
            already_present_message("busybox:1.36"),
            "Container image \"busybox:1.36\" already present on machine"
        );
        assert_eq!(
            pulled_message(
                "busybox:1.36",
                Duration::from_millis(1234),
                Duration::from_millis(1500),
                4_270_000
            ),
            "Successfully pulled image \"busybox:1.36\" in 1.234s (1.5s including waiting). Image size: 4270000 bytes."
        );
    }

    #[test]
    fn durations_print_as_gos() {
        for (ms, want) in [
            (0, "0s"),
            (523, "523ms"),
            (1000, "1s"),
            (1200, "1.2s"),
            (1234, "1.234s"),
            (61_500, "1m1.5s"),
            (120_000, "2m0s"),
            (3_723_000, "1h2m3s"),
        ] {
            assert_eq!(go_duration(Duration::from_millis(ms)), want, "{ms}");
        }
        // Truncated, not rounded.
        assert_eq!(go_duration(Duration::from_micros(1_999)), "1ms");
    }
}
