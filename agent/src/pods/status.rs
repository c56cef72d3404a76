//! Pure pod status computation: phase, conditions, containerStatuses.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keelson_runtime::ContainerState;

use super::plan::{self, History, Instance, Observed, RestartPolicy, Waiting};

/// Inputs beyond the planner's.
#[derive(Debug, Clone, Default)]
pub struct StatusInputs {
    /// Pod IPs (CNI result).
    pub pod_ips: Vec<IpAddr>,
    /// The node's IP.
    pub host_ip: Option<IpAddr>,
    /// When the agent first acted on the pod.
    pub start_time: Option<SystemTime>,
    /// QoS class name.
    pub qos_class: String,
    /// Runtime name for containerID (`runc`).
    pub runtime_name: String,
}

/// A SystemTime as a k8s Time (whole seconds, as the kubelet reports).
pub fn k8s_time(t: SystemTime) -> Time {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
}

fn terminated(inst: &Instance, runtime: &str) -> Option<ContainerStateTerminated> {
    let ContainerState::Exited {
        exit_code,
        oom_killed,
        started_at,
        finished_at,
    } = inst.state
    else {
        return None;
    };
    let reason = if oom_killed {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    Some(ContainerStateTerminated {
        exit_code,
        reason: Some(reason.into()),
        started_at: Some(k8s_time(started_at)),
        finished_at: Some(k8s_time(finished_at)),
        container_id: Some(format!("{runtime}://{}", inst.id)),
        message: inst.message.clone().filter(|m| !m.is_empty()),
        ..Default::default()
    })
}

fn waiting(reason: &str, message: Option<String>) -> K8sState {
    K8sState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

fn container_status(
    name: &str,
    image: &str,
    h: Option<&History>,
    wait: Option<&Waiting>,
    default_wait: &str,
    runtime: &str,
) -> ContainerStatus {
    let cur = h.and_then(History::current);
    let prev = h.and_then(History::previous);
    let mut cs = ContainerStatus {
        name: name.into(),
        image: image.into(),
        image_id: cur.map(|c| c.image_id.clone()).unwrap_or_default(),
        container_id: cur.map(|c| format!("{runtime}://{}", c.id)),
        restart_count: cur.map(|c| c.attempt as i32).unwrap_or(0),
        ready: false,
        started: Some(false),
        ..Default::default()
    };
    let failure_wait = h.and_then(|h| h.failure.as_ref()).map(|f| Waiting {
        reason: f.kind.reason().into(),
        message: f.message.clone(),
    });
    match (cur, wait) {
        (Some(c), Some(w)) => {
            // Held back after an exit (CrashLoopBackOff): the exit is lastState.
            cs.state = Some(waiting(&w.reason, Some(w.message.clone())));
            cs.last_state = terminated(c, runtime).map(|t| K8sState {
                terminated: Some(t),
                ..Default::default()
            });
        }
        (Some(c), None) => {
            match c.state {
                ContainerState::Running { started_at, .. } => {
                    cs.state = Some(K8sState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(k8s_time(started_at)),
                        }),
                        ..Default::default()
                    });
                    let probes = h.and_then(|h| h.probes.as_ref());
                    cs.ready = probes.is_none_or(|p| p.ready);
                    cs.started = Some(probes.is_none_or(|p| p.started));
                }
                ContainerState::Created => {
                    cs.state = Some(waiting("ContainerCreating", None));
                }
                ContainerState::Exited { .. } => {
                    cs.state = terminated(c, runtime).map(|t| K8sState {
                        terminated: Some(t),
                        ..Default::default()
                    });
                }
            }
            if cs.last_state.is_none() {
                cs.last_state = prev.and_then(|p| terminated(p, runtime)).map(|t| K8sState {
                    terminated: Some(t),
                    ..Default::default()
                });
            }
        }
        (None, Some(w)) => cs.state = Some(waiting(&w.reason, Some(w.message.clone()))),
        (None, None) => {
            cs.state = Some(match failure_wait {
                Some(w) => waiting(&w.reason, Some(w.message)),
                None => waiting(default_wait, None),
            })
        }
    }
    if cs.last_state.is_none() {
        cs.last_state = Some(K8sState::default());
    }
    cs
}

fn condition(
    ty: &str,
    ok: bool,
    reason: Option<&str>,
    old: Option<&PodStatus>,
    now: &Time,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let prev = old
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == ty));
    let since = match prev {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    PodCondition {
        type_: ty.into(),
        status: status.into(),
        reason: if ok { None } else { reason.map(str::to_string) },
        last_transition_time: since,
        ..Default::default()
    }
}

/// The pod conditions the agent sets; any other is someone else's.
pub const OWN_CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
];

/// Whether every `readinessGates` condition is True in the pod's status;
/// else the kubelet's message for the first that is not.
pub fn readiness_gates(pod: &Pod) -> Result<(), String> {
    let conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    for g in pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
    {
        match conditions.iter().find(|c| c.type_ == g.condition_type) {
            None => {
                return Err(format!(
                    "corresponding condition of pod readiness gate \"{}\" does not exist.",
                    g.condition_type
                ));
            }
            Some(c) if c.status != "True" => {
                return Err(format!(
                    "the status of pod readiness gate \"{}\" is not \"True\", but {}",
                    g.condition_type, c.status
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The phase from the containers' states.
pub fn phase(pod: &Pod, obs: &Observed) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "Pending";
    };
    let policy = plan::restart_policy(pod);
    // A failed init container under Never fails the pod; a sidecar counts
    // once it has run (whatever it does later, the main containers decide).
    for c in spec.init_containers.iter().flatten() {
        if keelson_rules::containers::is_sidecar(c) {
            match obs.containers.get(&c.name) {
                Some(h) if !h.instances.is_empty() => continue,
                _ => return "Pending",
            }
        }
        match obs
            .containers
            .get(&c.name)
            .and_then(History::current)
            .map(|i| &i.state)
        {
            Some(ContainerState::Exited { exit_code: 0, .. }) => continue,
            Some(ContainerState::Exited { .. }) if policy == RestartPolicy::Never => {
                return "Failed";
            }
            _ => return "Pending",
        }
    }
    let (mut running, mut unstarted, mut succeeded, mut failed, mut restarting) = (0, 0, 0, 0, 0);
    for c in &spec.containers {
        match obs
            .containers
            .get(&c.name)
            .and_then(History::current)
            .map(|i| &i.state)
        {
            Some(ContainerState::Running { .. }) => running += 1,
            Some(ContainerState::Exited { exit_code, .. }) => {
                if plan::should_restart(policy, *exit_code) {
                    restarting += 1;
                } else if *exit_code == 0 {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
            }
            Some(ContainerState::Created) | None => unstarted += 1,
        }
    }
    if unstarted > 0 {
        return "Pending";
    }
    if running > 0 || restarting > 0 {
        return "Running";
    }
    if failed > 0 {
        return "Failed";
    }
    if succeeded > 0 {
        "Succeeded"
    } else {
        "Pending"
    }
}

/// The pod's status (pure). `old` keeps condition transition times stable.
pub fn compute(
    pod: &Pod,
    obs: &Observed,
    plan: &plan::Plan,
    inputs: &StatusInputs,
    now: SystemTime,
) -> PodStatus {
    let now_t = k8s_time(now);
    let old = pod.status.as_ref();
    let spec = pod.spec.clone().unwrap_or_default();
    let rt = inputs.runtime_name.as_str();
    let init_done = plan::init_done(pod, obs);
    let inits: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            container_status(
                &c.name,
                c.image.as_deref().unwrap_or(""),
                obs.containers.get(&c.name),
                plan.waiting.get(&c.name),
                "PodInitializing",
                rt,
            )
        })
        .map(|mut cs| {
            // A completed init container is not "ready" in the running sense,
            // but the kubelet reports ready=true once it succeeded.
            if cs
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0)
            {
                cs.ready = true;
            }
            cs
        })
        .collect();
    let default_wait = if init_done {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let containers: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| {
            container_status(
                &c.name,
                c.image.as_deref().unwrap_or(""),
                obs.containers.get(&c.name),
                plan.waiting.get(&c.name),
                default_wait,
                rt,
            )
        })
        .collect();
    // Sidecars' readiness counts as the main containers' does.
    let sidecars: Vec<&ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .zip(&inits)
        .filter(|(c, _)| keelson_rules::containers::is_sidecar(c))
        .map(|(_, cs)| cs)
        .collect();
    let all_ready = !containers.is_empty()
        && containers
            .iter()
            .chain(sidecars.iter().copied())
            .all(|c| c.ready);
    let phase = phase(pod, obs);
    let gates = readiness_gates(pod);
    let ready = condition(
        "Ready",
        all_ready && gates.is_ok(),
        Some(if all_ready {
            "ReadinessGatesNotReady"
        } else {
            "ContainersNotReady"
        }),
        old,
        &now_t,
    );
    let unready: Vec<&str> = containers
        .iter()
        .chain(sidecars.iter().copied())
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let unready = (!unready.is_empty())
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let ready = PodCondition {
        message: if ready.status == "True" {
            None
        } else if !all_ready {
            unready.clone()
        } else {
            gates.err()
        },
        ..ready
    };
    let containers_ready = condition(
        "ContainersReady",
        all_ready,
        Some("ContainersNotReady"),
        old,
        &now_t,
    );
    let containers_ready = PodCondition {
        message: unready,
        ..containers_ready
    };
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            obs.sandbox_ready,
            None,
            old,
            &now_t,
        ),
        condition(
            "Initialized",
            init_done,
            Some("ContainersNotInitialized"),
            old,
            &now_t,
        ),
        ready,
        containers_ready,
        condition("PodScheduled", true, None, old, &now_t),
    ];
    // Conditions others own (readiness gates' among them) are kept: the
    // status patch replaces the whole list.
    conditions.extend(
        old.and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| !OWN_CONDITIONS.contains(&c.type_.as_str()))
            .cloned(),
    );
    let mut st = PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        container_statuses: Some(containers),
        init_container_statuses: if inits.is_empty() { None } else { Some(inits) },
        qos_class: Some(inputs.qos_class.clone()),
        start_time: old
            .and_then(|s| s.start_time.clone())
            .or_else(|| inputs.start_time.map(k8s_time)),
        ..Default::default()
    };
    if let Some(h) = inputs.host_ip {
        st.host_ip = Some(h.to_string());
        st.host_ips = Some(vec![HostIP { ip: h.to_string() }]);
    }
    if let Some(first) = inputs.pod_ips.first() {
        st.pod_ip = Some(first.to_string());
        st.pod_ips = Some(
            inputs
                .pod_ips
                .iter()
                .map(|ip| PodIP { ip: ip.to_string() })
                .collect(),
        );
    }
    st
}

/// Kubelet-compatible summary of container waiting reasons (for events).
pub fn waiting_reasons(st: &PodStatus) -> BTreeMap<String, String> {
    st.container_statuses
        .iter()
        .flatten()
        .chain(st.init_container_statuses.iter().flatten())
        .filter_map(|c| {
            let r = c.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
            Some((c.name.clone(), r))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::plan::{FailureKind, StartFailure};
    use serde_json::json;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "a", "image": "img"}]}
        }))
        .unwrap()
    }

    fn inst(attempt: u32, state: ContainerState) -> Instance {
        Instance {
            id: format!("c{attempt}"),
            attempt,
            streak: 0,
            state,
            image_id: "img@sha256:1".into(),
            message: None,
        }
    }

    fn obs(instances: Vec<Instance>) -> Observed {
        let mut o = Observed {
            sandbox_ready: true,
            ..Default::default()
        };
        o.containers.insert(
            "a".into(),
            History {
                instances,
                failure: None,
                probes: None,
            },
        );
        o
    }

    fn inputs() -> StatusInputs {
        StatusInputs {
            pod_ips: vec!["10.1.0.2".parse().unwrap()],
            host_ip: Some("192.0.2.1".parse().unwrap()),
            start_time: Some(t(0)),
            qos_class: "BestEffort".into(),
            runtime_name: "runc".into(),
        }
    }

    #[test]
    fn readiness_and_started_follow_the_probes() {
        use crate::pods::probe::ProbeView;
        let p = pod("Always");
        let mut o = obs(vec![inst(
            0,
            ContainerState::Running {
                pid: 1,
                started_at: t(0),
            },
        )]);
        let view = |started, ready| {
            Some(ProbeView {
                started,
                ready,
                kill: None,
            })
        };
        for (probes, started, ready) in [
            (None, true, true),
            (view(false, false), false, false),
            (view(true, false), true, false),
            (view(true, true), true, true),
        ] {
            o.containers.get_mut("a").unwrap().probes = probes;
            let st = compute(&p, &o, &Default::default(), &inputs(), t(1));
            let cs = &st.container_statuses.as_ref().unwrap()[0];
            assert_eq!((cs.started, cs.ready), (Some(started), ready));
            let cond = |ty: &str| {
                st.conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == ty)
                    .map(|c| c.status.clone())
                    .unwrap()
            };
            let want = if ready { "True" } else { "False" };
            assert_eq!(cond("Ready"), want);
            let message = st
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "ContainersReady")
                .and_then(|c| c.message.clone());
            let unready = (!ready).then(|| "containers with unready status: [a]".to_string());
            assert_eq!(message, unready);
            assert_eq!(cond("ContainersReady"), want);
            assert_eq!(st.phase.as_deref(), Some("Running"));
        }
    }

    #[test]
    fn readiness_gates_hold_ready_and_foreign_conditions_are_kept() {
        let mut p = pod("Always");
        p.spec.as_mut().unwrap().readiness_gates = Some(vec![
            serde_json::from_value(json!({"conditionType": "example.com/lb"})).unwrap(),
        ]);
        let o = obs(vec![inst(
            0,
            ContainerState::Running {
                pid: 1,
                started_at: t(0),
            },
        )]);
        let cond = |st: &PodStatus, ty: &str| {
            st.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == ty)
                .cloned()
                .unwrap_or_else(|| panic!("no {ty}"))
        };
        let st = compute(&p, &o, &Default::default(), &inputs(), t(1));
        let ready = cond(&st, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some(
                "corresponding condition of pod readiness gate \"example.com/lb\" does not exist."
            )
        );
        assert_eq!(cond(&st, "ContainersReady").status, "True");
        // Someone sets the gate's condition False, then True.
        for (gate, want) in [("False", "False"), ("True", "True")] {
            let mut p = p.clone();
            let mut old = st.clone();
            old.conditions.as_mut().unwrap().push(PodCondition {
                type_: "example.com/lb".into(),
                status: gate.into(),
                ..Default::default()
            });
            p.status = Some(old);
            let st = compute(&p, &o, &Default::default(), &inputs(), t(2));
            assert_eq!(cond(&st, "Ready").status, want);
            // The gate's condition is kept as it was.
            assert_eq!(cond(&st, "example.com/lb").status, gate);
        }
    }

    #[test]
    fn running_pod() {
        let p = pod("Always");
        let o = obs(vec![inst(
            0,
            ContainerState::Running {
                pid: 5,
                started_at: t(1),
            },
        )]);
        let st = compute(&p, &o, &Default::default(), &inputs(), t(2));
        assert_eq!(st.phase.as_deref(), Some("Running"));
        assert_eq!(st.pod_ip.as_deref(), Some("10.1.0.2"));
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.container_id.as_deref(), Some("runc://c0"));
        assert_eq!(cs.image_id, "img@sha256:1");
        assert!(cs.state.as_ref().unwrap().running.is_some());
        let ready = st
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
    }

    #[test]
    fn crash_loop_and_oom() {
        let p = pod("Always");
        let o = obs(vec![
            inst(
                0,
                ContainerState::Exited {
                    exit_code: 1,
                    oom_killed: false,
                    started_at: t(0),
                    finished_at: t(1),
                },
            ),
            inst(
                1,
                ContainerState::Exited {
                    exit_code: 137,
                    oom_killed: true,
                    started_at: t(1),
                    finished_at: t(2),
                },
            ),
        ]);
        let mut pl = plan::Plan::default();
        pl.waiting.insert(
            "a".into(),
            Waiting {
                reason: "CrashLoopBackOff".into(),
                message: "back-off".into(),
            },
        );
        let st = compute(&p, &o, &pl, &inputs(), t(3));
        assert_eq!(st.phase.as_deref(), Some("Running"));
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 1);
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.reason.as_deref(), Some("OOMKilled"));
        assert_eq!(last.exit_code, 137);
    }

    #[test]
    fn phases() {
        let done = |code| {
            inst(
                0,
                ContainerState::Exited {
                    exit_code: code,
                    oom_killed: false,
                    started_at: t(0),
                    finished_at: t(1),
                },
            )
        };
        for (policy, code, want) in [
            ("Never", 0, "Succeeded"),
            ("Never", 1, "Failed"),
            ("OnFailure", 0, "Succeeded"),
            ("OnFailure", 1, "Running"),
            ("Always", 0, "Running"),
        ] {
            assert_eq!(
                phase(&pod(policy), &obs(vec![done(code)])),
                want,
                "{policy} {code}"
            );
        }
        assert_eq!(phase(&pod("Always"), &Observed::default()), "Pending");
    }

    #[test]
    fn pull_failure_shows_err_image_pull() {
        let p = pod("Always");
        let mut o = Observed {
            sandbox_ready: true,
            ..Default::default()
        };
        o.containers.insert(
            "a".into(),
            History {
                instances: vec![],
                failure: Some(StartFailure {
                    kind: FailureKind::Pull,
                    message: "not found".into(),
                    at: t(0),
                    count: 1,
                }),
                probes: None,
            },
        );
        let st = compute(&p, &o, &Default::default(), &inputs(), t(0));
        let w = st.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ErrImagePull"));
        assert_eq!(st.phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn image_errors_keep_the_kubelets_reason_through_status_and_backoff() {
        use keelson_images::ImageError;
        let cases = [
            (
                ImageError::InvalidReference {
                    reference: "Bad::name".into(),
                    reason: "x".into(),
                },
                "InvalidImageName",
                "InvalidImageName",
            ),
            (
                ImageError::NeverPull {
                    reference: "r".into(),
                },
                "ErrImageNeverPull",
                "ErrImageNeverPull",
            ),
            (
                ImageError::Pull {
                    reference: "r".into(),
                    detail: "401".into(),
                },
                "ErrImagePull",
                "ImagePullBackOff",
            ),
        ];
        for (err, now, later) in cases {
            let kind = FailureKind::of_image_error(&err);
            let p = pod("Always");
            let mut o = Observed {
                sandbox_ready: true,
                ..Default::default()
            };
            o.containers.insert(
                "a".into(),
                History {
                    instances: vec![],
                    failure: Some(StartFailure {
                        kind,
                        message: err.to_string(),
                        at: t(0),
                        count: 1,
                    }),
                    probes: None,
                },
            );
            let st = compute(&p, &o, &Default::default(), &inputs(), t(0));
            let w = st.container_statuses.unwrap()[0]
                .state
                .clone()
                .unwrap()
                .waiting
                .unwrap();
            assert_eq!(w.reason.as_deref(), Some(now), "{err}");
            // While the next attempt is held back (the planner's reason):
            // the failure's own reason for a moment, then the back-off's.
            let reason_at = |s: u64| {
                let plan = crate::pods::plan::plan(&p, &o, t(s));
                let st = compute(&p, &o, &plan, &inputs(), t(s));
                st.container_statuses.unwrap()[0]
                    .state
                    .clone()
                    .unwrap()
                    .waiting
                    .unwrap()
                    .reason
            };
            assert_eq!(reason_at(1).as_deref(), Some(now), "{err}");
            assert_eq!(reason_at(5).as_deref(), Some(later), "{err}");
        }
    }
}
