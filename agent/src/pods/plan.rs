//! The pure planner: desired pod + observed state (+ a clock value) ->
//! actions, like the kubelet's computePodActions. No I/O here.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use keelson_rules::containers::is_sidecar;
use keelson_runtime::ContainerState;

/// First restart delay after the first quick crash.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Max restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long resets its crash streak.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// One container instance (attempt) the runtime knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Runtime container ID.
    pub id: String,
    /// Attempt number = restartCount when it was started.
    pub attempt: u32,
    /// Consecutive quick crashes before this attempt.
    pub streak: u32,
    /// Its state.
    pub state: ContainerState,
    /// containerStatuses[].imageID it ran with.
    pub image_id: String,
    /// Once exited: its termination message (the file at
    /// terminationMessagePath, or its last log lines under
    /// FallbackToLogsOnError).
    pub message: Option<String>,
}

/// How long a failed start shows its own reason (ErrImagePull) before the
/// back-off's (ImagePullBackOff): less than the shortest back-off.
pub const FAILURE_SHOWN: Duration = Duration::from_secs(3);

/// Why the last start attempt failed before a container existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The image could not be pulled (ErrImagePull / ImagePullBackOff).
    Pull,
    /// The image reference does not parse (InvalidImageName).
    InvalidImageName,
    /// Pull policy Never and the image is not on the node (ErrImageNeverPull).
    NeverPull,
    /// The container's configuration cannot be built: a missing ConfigMap or
    /// Secret key, a bad `$(VAR)` (CreateContainerConfigError).
    Config,
    /// The container could not be created (CreateContainerError).
    Create,
}

impl FailureKind {
    /// The kind of a failed image pull, from the image store's typed error.
    pub fn of_image_error(e: &keelson_images::ImageError) -> FailureKind {
        match e.reason() {
            "InvalidImageName" => FailureKind::InvalidImageName,
            "ErrImageNeverPull" => FailureKind::NeverPull,
            _ => FailureKind::Pull,
        }
    }

    /// The waiting reason right after the failure (the kubelet's words).
    pub fn reason(self) -> &'static str {
        match self {
            FailureKind::Pull => "ErrImagePull",
            FailureKind::InvalidImageName => "InvalidImageName",
            FailureKind::NeverPull => "ErrImageNeverPull",
            FailureKind::Config => "CreateContainerConfigError",
            FailureKind::Create => "CreateContainerError",
        }
    }

    /// The waiting reason while the next attempt is held back.
    pub fn backoff_reason(self) -> &'static str {
        match self {
            FailureKind::Pull => "ImagePullBackOff",
            other => other.reason(),
        }
    }
}

/// A failed start attempt, kept by the worker for backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// Kind.
    pub kind: FailureKind,
    /// Error text.
    pub message: String,
    /// When it failed.
    pub at: SystemTime,
    /// Consecutive failures.
    pub count: u32,
}

/// Everything known about one container name of the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Instances, oldest first.
    pub instances: Vec<Instance>,
    /// Last start failure (cleared by a successful start).
    pub failure: Option<StartFailure>,
    /// What the current (running) instance's probes say; `None`: it has
    /// none, so it is started and ready while it runs.
    pub probes: Option<super::probe::ProbeView>,
}

impl History {
    /// The latest instance.
    pub fn current(&self) -> Option<&Instance> {
        self.instances.last()
    }
    /// The instance before the latest one.
    pub fn previous(&self) -> Option<&Instance> {
        let n = self.instances.len();
        if n >= 2 {
            self.instances.get(n - 2)
        } else {
            None
        }
    }
}

/// The pod's observed state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The sandbox (cgroup, namespaces, network) exists.
    pub sandbox_ready: bool,
    /// Last sandbox failure, for backoff.
    pub sandbox_failure: Option<StartFailure>,
    /// By container name (init and regular).
    pub containers: BTreeMap<String, History>,
}

/// What a worker does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pod cgroup, namespaces, CNI ADD, /etc files.
    CreateSandbox,
    /// Pull the image and create and start the container as `attempt`.
    StartContainer {
        /// Container name.
        name: String,
        /// Init container.
        init: bool,
        /// Attempt number (restartCount).
        attempt: u32,
        /// Crash streak to record.
        streak: u32,
    },
    /// Kill a running container whose liveness or startup probe failed
    /// (preStop hook, SIGTERM, the grace, SIGKILL); the restart policy
    /// then decides, as after any exit.
    KillContainer {
        /// Container name.
        name: String,
        /// Runtime container ID.
        id: String,
        /// Why.
        why: KillReason,
        /// Grace period.
        grace: Duration,
    },
    /// Remove an old exited instance.
    RemoveContainer {
        /// Runtime container ID.
        id: String,
    },
    /// Stop everything with the grace period, release the sandbox, then
    /// delete the pod object.
    Teardown {
        /// Grace period.
        grace: Duration,
    },
}

/// Why a running container is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// Its liveness or startup probe failed.
    Probe(super::probe::Kind),
    /// A sidecar whose main containers have all finished for good.
    MainContainersDone,
}

impl KillReason {
    /// The Event message (reason `Killing`).
    pub fn message(self, container: &str) -> String {
        match self {
            KillReason::Probe(kind) => super::probe::kill_message(container, kind),
            KillReason::MainContainersDone => format!("Stopping container {container}"),
        }
    }
}

/// A waiting reason to show in containerStatuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Reason (CrashLoopBackOff, ImagePullBackOff, ...).
    pub reason: String,
    /// Message.
    pub message: String,
}

/// The planner's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Actions, in order (starts of regular containers may run concurrently).
    pub actions: Vec<Action>,
    /// Plan again after this long (backoff expiry).
    pub requeue_after: Option<Duration>,
    /// Containers held back, with why.
    pub waiting: BTreeMap<String, Waiting>,
}

/// Restart delay after `streak` consecutive quick crashes: 0, 10 s, 20 s, ... 5 min.
pub fn backoff(streak: u32) -> Duration {
    if streak == 0 {
        return Duration::ZERO;
    }
    let shift = (streak - 1).min(16);
    BACKOFF_INITIAL
        .saturating_mul(1u32 << shift)
        .min(BACKOFF_MAX)
}

/// The restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always.
    Always,
    /// OnFailure.
    OnFailure,
    /// Never.
    Never,
}

/// The pod's restart policy (default Always).
pub fn restart_policy(pod: &Pod) -> RestartPolicy {
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => RestartPolicy::Never,
        Some("OnFailure") => RestartPolicy::OnFailure,
        _ => RestartPolicy::Always,
    }
}

/// Whether an exited container with `exit_code` is restarted under `policy`.
pub fn should_restart(policy: RestartPolicy, exit_code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

fn since(now: SystemTime, t: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or(Duration::ZERO)
}

fn pod_ref(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

/// Deletion grace of a pod being deleted (None: not being deleted).
pub fn deletion_grace(pod: &Pod) -> Option<Duration> {
    pod.metadata.deletion_timestamp.as_ref()?;
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0);
    Some(Duration::from_secs(secs as u64))
}

enum Gate {
    Go { attempt: u32, streak: u32 },
    Wait(Duration, Waiting),
    Done,
}

/// Decides whether one container should be (re)started now.
fn gate(
    pod: &Pod,
    name: &str,
    h: Option<&History>,
    policy: RestartPolicy,
    now: SystemTime,
) -> Gate {
    let empty = History::default();
    let h = h.unwrap_or(&empty);
    match h.current() {
        Some(Instance {
            state: ContainerState::Running { .. } | ContainerState::Created,
            ..
        }) => Gate::Done,
        Some(cur) => {
            let ContainerState::Exited {
                exit_code,
                started_at,
                finished_at,
                ..
            } = cur.state
            else {
                return Gate::Done;
            };
            if !should_restart(policy, exit_code) {
                return Gate::Done;
            }
            let streak = if since(finished_at, started_at) >= BACKOFF_RESET {
                0
            } else {
                cur.streak
            };
            let delay = backoff(streak);
            let elapsed = since(now, finished_at);
            if elapsed >= delay {
                Gate::Go {
                    attempt: cur.attempt + 1,
                    streak: streak + 1,
                }
            } else {
                Gate::Wait(
                    delay - elapsed,
                    Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: format!(
                            "back-off {}s restarting failed container={name} pod={}",
                            delay.as_secs(),
                            pod_ref(pod)
                        ),
                    },
                )
            }
        }
        None => match &h.failure {
            None => Gate::Go {
                attempt: 0,
                streak: 0,
            },
            Some(f) => {
                let delay = backoff(f.count);
                let elapsed = since(now, f.at);
                if elapsed >= delay {
                    Gate::Go {
                        attempt: 0,
                        streak: 0,
                    }
                } else if elapsed < FAILURE_SHOWN && f.kind.backoff_reason() != f.kind.reason() {
                    // The failure itself first (ErrImagePull), as the
                    // kubelet's sync that failed reports it; the back-off
                    // reason from the next look on.
                    Gate::Wait(
                        FAILURE_SHOWN - elapsed,
                        Waiting {
                            reason: f.kind.reason().into(),
                            message: f.message.clone(),
                        },
                    )
                } else {
                    Gate::Wait(
                        delay - elapsed,
                        Waiting {
                            reason: f.kind.backoff_reason().into(),
                            message: f.message.clone(),
                        },
                    )
                }
            }
        },
    }
}

fn min_opt(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Whether every init container has completed successfully.
pub fn init_done(pod: &Pod, obs: &Observed) -> bool {
    let inits = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    inits.iter().all(|c| {
        let h = obs.containers.get(&c.name);
        if is_sidecar(c) {
            return h.is_some_and(started);
        }
        matches!(
            h.and_then(History::current),
            Some(Instance {
                state: ContainerState::Exited { exit_code: 0, .. },
                ..
            })
        )
    })
}

/// Whether the current instance runs and its startup probe (if any) passed.
fn started(h: &History) -> bool {
    matches!(
        h.current(),
        Some(Instance {
            state: ContainerState::Running { .. },
            ..
        })
    ) && h.probes.as_ref().is_none_or(|p| p.started)
}

/// Whether every main container has finished and will not be restarted.
pub fn main_containers_done(pod: &Pod, obs: &Observed) -> bool {
    let policy = restart_policy(pod);
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    !spec.containers.is_empty()
        && spec.containers.iter().all(|c| {
            matches!(
                obs.containers.get(&c.name).and_then(History::current),
                Some(Instance {
                    state: ContainerState::Exited { exit_code, .. },
                    ..
                }) if !should_restart(policy, *exit_code)
            )
        })
}

/// Computes the actions that bring `obs` towards `pod` at time `now`.
pub fn plan(pod: &Pod, obs: &Observed, now: SystemTime) -> Plan {
    let mut p = Plan::default();
    if let Some(grace) = deletion_grace(pod) {
        p.actions.push(Action::Teardown { grace });
        return p;
    }
    let Some(spec) = pod.spec.as_ref() else {
        return p;
    };
    let policy = restart_policy(pod);
    // Old instances beyond the previous one are removed.
    for h in obs.containers.values() {
        let n = h.instances.len();
        for old in h.instances.iter().take(n.saturating_sub(2)) {
            if matches!(old.state, ContainerState::Exited { .. }) {
                p.actions
                    .push(Action::RemoveContainer { id: old.id.clone() });
            }
        }
    }
    if !obs.sandbox_ready {
        if let Some(f) = &obs.sandbox_failure {
            let delay = backoff(f.count);
            let elapsed = since(now, f.at);
            if elapsed < delay {
                p.requeue_after = Some(delay - elapsed);
                for c in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                {
                    p.waiting.insert(
                        c.name.clone(),
                        Waiting {
                            reason: "ContainerCreating".into(),
                            message: f.message.clone(),
                        },
                    );
                }
                return p;
            }
        }
        p.actions.push(Action::CreateSandbox);
        return p;
    }
    // Init containers, in order: one at a time. A sidecar (restartPolicy
    // Always) lets the next one start once it runs and has started; it is
    // restarted whatever the pod's policy, without holding the main
    // containers back once the pod has been initialized; once the main
    // containers have finished for good, sidecars are stopped.
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    let mains_done = main_containers_done(pod, obs);
    let initialized = inits.iter().all(|c| {
        let h = obs.containers.get(&c.name);
        if is_sidecar(c) {
            h.is_some_and(|h| !h.instances.is_empty())
        } else {
            matches!(
                h.and_then(History::current),
                Some(Instance {
                    state: ContainerState::Exited { exit_code: 0, .. },
                    ..
                })
            )
        }
    });
    for c in inits {
        let h = obs.containers.get(&c.name);
        if is_sidecar(c) {
            let running = h
                .and_then(History::current)
                .filter(|i| matches!(i.state, ContainerState::Running { .. }));
            if mains_done {
                if let Some(cur) = running {
                    p.actions.push(Action::KillContainer {
                        name: c.name.clone(),
                        id: cur.id.clone(),
                        why: KillReason::MainContainersDone,
                        grace: super::probe::kill_grace(pod, None),
                    });
                }
                continue;
            }
            if let (Some(cur), Some(kill)) = (
                running,
                h.and_then(|h| h.probes.as_ref())
                    .and_then(|p| p.kill.as_ref()),
            ) {
                p.actions.push(Action::KillContainer {
                    name: c.name.clone(),
                    id: cur.id.clone(),
                    why: KillReason::Probe(kill.kind),
                    grace: super::probe::kill_grace(pod, kill.grace),
                });
                continue;
            }
            match gate(pod, &c.name, h, RestartPolicy::Always, now) {
                Gate::Go { attempt, streak } => p.actions.push(Action::StartContainer {
                    name: c.name.clone(),
                    init: true,
                    attempt,
                    streak,
                }),
                Gate::Wait(d, w) => {
                    p.requeue_after = min_opt(p.requeue_after, d);
                    p.waiting.insert(c.name.clone(), w);
                }
                Gate::Done if h.is_some_and(started) => continue,
                Gate::Done => {}
            }
            if initialized {
                continue;
            }
            return p;
        }
        if let Some(Instance {
            state: ContainerState::Exited { exit_code: 0, .. },
            ..
        }) = h.and_then(History::current)
        {
            continue;
        }
        // Init containers restart on failure unless the policy is Never.
        let init_policy = if policy == RestartPolicy::Never {
            RestartPolicy::Never
        } else {
            RestartPolicy::OnFailure
        };
        match gate(pod, &c.name, h, init_policy, now) {
            Gate::Go { attempt, streak } => p.actions.push(Action::StartContainer {
                name: c.name.clone(),
                init: true,
                attempt,
                streak,
            }),
            Gate::Wait(d, w) => {
                p.requeue_after = min_opt(p.requeue_after, d);
                p.waiting.insert(c.name.clone(), w);
            }
            Gate::Done => {}
        }
        return p;
    }
    for c in &spec.containers {
        let h = obs.containers.get(&c.name);
        if let Some(h) = h
            && let Some(kill) = h.probes.as_ref().and_then(|p| p.kill.as_ref())
            && let Some(
                cur @ Instance {
                    state: ContainerState::Running { .. },
                    ..
                },
            ) = h.current()
        {
            p.actions.push(Action::KillContainer {
                name: c.name.clone(),
                id: cur.id.clone(),
                why: KillReason::Probe(kill.kind),
                grace: super::probe::kill_grace(pod, kill.grace),
            });
            continue;
        }
        match gate(pod, &c.name, h, policy, now) {
            Gate::Go { attempt, streak } => p.actions.push(Action::StartContainer {
                name: c.name.clone(),
                init: false,
                attempt,
                streak,
            }),
            Gate::Wait(d, w) => {
                p.requeue_after = min_opt(p.requeue_after, d);
                p.waiting.insert(c.name.clone(), w);
            }
            Gate::Done => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn pod(policy: &str, inits: &[&str], containers: &[&str]) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {
                "restartPolicy": policy,
                "initContainers": inits.iter().map(|n| json!({"name": n, "image": "i"})).collect::<Vec<_>>(),
                "containers": containers.iter().map(|n| json!({"name": n, "image": "i"})).collect::<Vec<_>>(),
            }
        }))
        .unwrap()
    }

    fn running(id: &str, attempt: u32) -> Instance {
        Instance {
            id: id.into(),
            attempt,
            streak: 0,
            state: ContainerState::Running {
                pid: 1,
                started_at: t(0),
            },
            image_id: String::new(),
            message: None,
        }
    }

    fn exited(id: &str, attempt: u32, streak: u32, code: i32, start: u64, end: u64) -> Instance {
        Instance {
            id: id.into(),
            attempt,
            streak,
            state: ContainerState::Exited {
                exit_code: code,
                oom_killed: false,
                started_at: t(start),
                finished_at: t(end),
            },
            image_id: String::new(),
            message: None,
        }
    }

    fn obs(entries: &[(&str, Vec<Instance>)]) -> Observed {
        Observed {
            sandbox_ready: true,
            sandbox_failure: None,
            containers: entries
                .iter()
                .map(|(n, i)| {
                    (
                        n.to_string(),
                        History {
                            instances: i.clone(),
                            failure: None,
                            probes: None,
                        },
                    )
                })
                .collect(),
        }
    }

    fn start(name: &str, init: bool, attempt: u32, streak: u32) -> Action {
        Action::StartContainer {
            name: name.into(),
            init,
            attempt,
            streak,
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let got: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(got, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(100), BACKOFF_MAX);
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            pod: Pod,
            obs: Observed,
            now: u64,
            actions: Vec<Action>,
            requeue: Option<u64>,
            waiting: Option<(&'static str, &'static str)>,
        }
        let cases = vec![
            Case {
                name: "new pod: sandbox first",
                pod: pod("Always", &[], &["a"]),
                obs: Observed::default(),
                now: 0,
                actions: vec![Action::CreateSandbox],
                requeue: None,
                waiting: None,
            },
            Case {
                name: "sandbox ready: start all containers",
                pod: pod("Always", &[], &["a", "b"]),
                obs: obs(&[]),
                now: 0,
                actions: vec![start("a", false, 0, 0), start("b", false, 0, 0)],
                requeue: None,
                waiting: None,
            },
            Case {
                name: "init containers one at a time",
                pod: pod("Always", &["i1", "i2"], &["a"]),
                obs: obs(&[("i1", vec![exited("x", 0, 0, 0, 0, 1)])]),
                now: 2,
                actions: vec![start("i2", true, 0, 0)],
                requeue: None,
                waiting: None,
            },
            Case {
                name: "running init blocks containers",
                pod: pod("Always", &["i1"], &["a"]),
                obs: obs(&[("i1", vec![running("x", 0)])]),
                now: 2,
                actions: vec![],
                requeue: None,
                waiting: None,
            },
            Case {
                name: "failed init with Never: nothing more",
                pod: pod("Never", &["i1"], &["a"]),
                obs: obs(&[("i1", vec![exited("x", 0, 0, 1, 0, 1)])]),
                now: 100,
                actions: vec![],
                requeue: None,
                waiting: None,
            },
            Case {
                name: "first crash restarts at once",
                pod: pod("Always", &[], &["a"]),
                obs: obs(&[("a", vec![exited("x", 0, 0, 1, 0, 1)])]),
                now: 1,
                actions: vec![start("a", false, 1, 1)],
                requeue: None,
                waiting: None,
            },
            Case {
                name: "second crash waits 10 s: CrashLoopBackOff",
                pod: pod("Always", &[], &["a"]),
                obs: obs(&[(
                    "a",
                    vec![exited("x", 0, 0, 1, 0, 1), exited("y", 1, 1, 1, 1, 2)],
                )]),
                now: 5,
                actions: vec![],
                requeue: Some(7),
                waiting: Some((
                    "CrashLoopBackOff",
                    "back-off 10s restarting failed container=a pod=p_ns(u1)",
                )),
            },
            Case {
                name: "after the backoff it restarts",
                pod: pod("Always", &[], &["a"]),
                obs: obs(&[("a", vec![exited("y", 1, 1, 1, 1, 2)])]),
                now: 12,
                actions: vec![start("a", false, 2, 2)],
                requeue: None,
                waiting: None,
            },
            Case {
                name: "third crash waits 20 s",
                pod: pod("Always", &[], &["a"]),
                obs: obs(&[("a", vec![exited("z", 2, 2, 1, 12, 13)])]),
                now: 23,
                actions: vec![],
                requeue: Some(10),
                waiting: Some((
                    "CrashLoopBackOff",
                    "back-off 20s restarting failed container=a pod=p_ns(u1)",
                )),
            },
            Case {
                name: "a 10 minute run resets the streak",
                pod: pod("Always", &[], &["a"]),
                obs: obs(&[("a", vec![exited("z", 5, 5, 1, 0, 700)])]),
                now: 700,
                actions: vec![start("a", false, 6, 1)],
                requeue: None,
                waiting: None,
            },
            Case {
                name: "OnFailure does not restart success",
                pod: pod("OnFailure", &[], &["a"]),
                obs: obs(&[("a", vec![exited("x", 0, 0, 0, 0, 1)])]),
                now: 100,
                actions: vec![],
                requeue: None,
                waiting: None,
            },
            Case {
                name: "Never does not restart failure",
                pod: pod("Never", &[], &["a"]),
                obs: obs(&[("a", vec![exited("x", 0, 0, 2, 0, 1)])]),
                now: 100,
                actions: vec![],
                requeue: None,
                waiting: None,
            },
            Case {
                name: "old instances removed, two kept",
                pod: pod("Always", &[], &["a"]),
                obs: obs(&[(
                    "a",
                    vec![
                        exited("x0", 0, 0, 1, 0, 1),
                        exited("x1", 1, 1, 1, 1, 2),
                        running("x2", 2),
                    ],
                )]),
                now: 100,
                actions: vec![Action::RemoveContainer { id: "x0".into() }],
                requeue: None,
                waiting: None,
            },
        ];
        for c in cases {
            let p = plan(&c.pod, &c.obs, t(c.now));
            assert_eq!(p.actions, c.actions, "{}", c.name);
            assert_eq!(
                p.requeue_after.map(|d| d.as_secs()),
                c.requeue,
                "{}",
                c.name
            );
            let w = p
                .waiting
                .values()
                .next()
                .map(|w| (w.reason.as_str(), w.message.as_str()));
            assert_eq!(w, c.waiting, "{}", c.name);
        }
    }

    #[test]
    fn pull_failures_back_off() {
        let p = pod("Always", &[], &["a"]);
        let mut o = obs(&[]);
        o.containers.insert(
            "a".into(),
            History {
                instances: vec![],
                failure: Some(StartFailure {
                    kind: FailureKind::Pull,
                    message: "pull x: not found".into(),
                    at: t(0),
                    count: 2,
                }),
                probes: None,
            },
        );
        let got = plan(&p, &o, t(5));
        assert!(got.actions.is_empty());
        assert_eq!(got.requeue_after, Some(Duration::from_secs(15)));
        assert_eq!(got.waiting["a"].reason, "ImagePullBackOff");
        let got = plan(&p, &o, t(21));
        assert_eq!(got.actions, vec![start("a", false, 0, 0)]);
    }

    #[test]
    fn a_failed_liveness_probe_kills_the_running_instance_once() {
        use crate::pods::probe::{Kill, Kind, ProbeView};
        let mut p = pod("Always", &[], &["a", "b"]);
        p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(9);
        let mut o = obs(&[("a", vec![running("x", 0)]), ("b", vec![running("y", 0)])]);
        let kill = |grace| ProbeView {
            started: true,
            ready: true,
            kill: Some(Kill {
                kind: Kind::Liveness,
                grace,
            }),
        };
        o.containers.get_mut("a").unwrap().probes = Some(kill(None));
        o.containers.get_mut("b").unwrap().probes = Some(ProbeView {
            started: true,
            ready: false,
            kill: None,
        });
        assert_eq!(
            plan(&p, &o, t(5)).actions,
            vec![Action::KillContainer {
                name: "a".into(),
                id: "x".into(),
                why: KillReason::Probe(Kind::Liveness),
                grace: Duration::from_secs(9),
            }]
        );
        // The probe's own grace wins.
        o.containers.get_mut("a").unwrap().probes = Some(kill(Some(Duration::from_secs(2))));
        assert!(matches!(
            &plan(&p, &o, t(5)).actions[0],
            Action::KillContainer { grace, .. } if *grace == Duration::from_secs(2)
        ));
        // Once it exited, the restart policy decides: a restart, no kill.
        o.containers.get_mut("a").unwrap().instances = vec![exited("x", 0, 0, 137, 0, 5)];
        assert_eq!(plan(&p, &o, t(5)).actions, vec![start("a", false, 1, 1)]);
        let mut never = p.clone();
        never.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        assert!(plan(&never, &o, t(5)).actions.is_empty());
    }

    #[test]
    fn sandbox_failure_backs_off_and_deletion_tears_down() {
        let p = pod("Always", &[], &["a"]);
        let o = Observed {
            sandbox_ready: false,
            sandbox_failure: Some(StartFailure {
                kind: FailureKind::Create,
                message: "CNI ADD failed".into(),
                at: t(0),
                count: 1,
            }),
            containers: BTreeMap::new(),
        };
        let got = plan(&p, &o, t(3));
        assert!(got.actions.is_empty());
        assert_eq!(got.waiting["a"].message, "CNI ADD failed");
        assert_eq!(plan(&p, &o, t(11)).actions, vec![Action::CreateSandbox]);

        let mut d = pod("Always", &[], &["a"]);
        d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        d.metadata.deletion_grace_period_seconds = Some(7);
        assert_eq!(
            plan(&d, &obs(&[("a", vec![running("x", 0)])]), t(0)).actions,
            vec![Action::Teardown {
                grace: Duration::from_secs(7)
            }]
        );
    }

    /// A pod whose init containers are a sidecar then a regular one.
    fn sidecar_pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {
                "restartPolicy": policy,
                "initContainers": [
                    {"name": "side", "image": "i", "restartPolicy": "Always"},
                    {"name": "setup", "image": "i"},
                ],
                "containers": [{"name": "app", "image": "i"}],
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_sidecar_starts_first_keeps_running_and_stops_after_the_main_container() {
        let pod = sidecar_pod("Never");
        // Nothing ran: the sidecar alone starts.
        assert_eq!(
            plan(&pod, &obs(&[]), t(0)).actions,
            [start("side", true, 0, 0)]
        );
        // It runs: the regular init container is next; the main waits.
        let o = obs(&[("side", vec![running("s0", 0)])]);
        assert_eq!(plan(&pod, &o, t(1)).actions, [start("setup", true, 0, 0)]);
        assert!(!init_done(&pod, &o));
        // Initialized: the main container starts beside the sidecar.
        let o = obs(&[
            ("side", vec![running("s0", 0)]),
            ("setup", vec![exited("i0", 0, 0, 0, 1, 2)]),
        ]);
        assert!(init_done(&pod, &o));
        assert_eq!(plan(&pod, &o, t(3)).actions, [start("app", false, 0, 0)]);
        // The sidecar crashes later: restarted although the pod's policy is
        // Never, without holding anything back.
        let o = obs(&[
            ("side", vec![exited("s0", 0, 0, 1, 0, 100)]),
            ("setup", vec![exited("i0", 0, 0, 0, 1, 2)]),
            ("app", vec![running("a0", 0)]),
        ]);
        assert_eq!(plan(&pod, &o, t(100)).actions, [start("side", true, 1, 1)]);
        // The main container finished for good: the sidecar is stopped and
        // not restarted.
        let o = obs(&[
            ("side", vec![running("s1", 1)]),
            ("setup", vec![exited("i0", 0, 0, 0, 1, 2)]),
            ("app", vec![exited("a0", 0, 0, 0, 3, 200)]),
        ]);
        assert!(main_containers_done(&pod, &o));
        let p = plan(&pod, &o, t(201));
        assert_eq!(
            p.actions,
            [Action::KillContainer {
                name: "side".into(),
                id: "s1".into(),
                why: KillReason::MainContainersDone,
                grace: Duration::from_secs(30),
            }]
        );
        let o = obs(&[
            ("side", vec![exited("s1", 1, 0, 137, 100, 202)]),
            ("setup", vec![exited("i0", 0, 0, 0, 1, 2)]),
            ("app", vec![exited("a0", 0, 0, 0, 3, 200)]),
        ]);
        assert!(plan(&pod, &o, t(300)).actions.is_empty());
        assert_eq!(super::super::status::phase(&pod, &o), "Succeeded");
    }

    #[test]
    fn a_sidecar_that_has_not_started_holds_the_init_sequence() {
        let pod = sidecar_pod("Always");
        // Running but its startup probe has not passed.
        let mut o = obs(&[("side", vec![running("s0", 0)])]);
        o.containers.get_mut("side").unwrap().probes = Some(super::super::probe::ProbeView {
            started: false,
            ready: false,
            kill: None,
        });
        assert!(plan(&pod, &o, t(1)).actions.is_empty());
        assert_eq!(super::super::status::phase(&pod, &o), "Pending");
    }
}
