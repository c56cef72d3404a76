//! Probes and lifecycle hooks as data, and the probe state machine (the
//! kubelet's prober worker, pkg/kubelet/prober/worker.go), pure: no I/O, the
//! clock passed in. `prober.rs` runs the handlers; the pod worker runs one
//! task per running container that asks [`ContainerProbes`] what is due,
//! runs it and records the outcome.
//!
//! Semantics kept from the kubelet:
//! - a probe first runs `initialDelaySeconds` after the container started,
//!   then every `periodSeconds`; each attempt is bounded by
//!   `timeoutSeconds`;
//! - the reported result changes only after `successThreshold`
//!   consecutive successes or `failureThreshold` consecutive failures;
//! - readiness is false until its first reported success; liveness starts
//!   out successful; a container with a startup probe is not started (and
//!   neither liveness nor readiness runs) until the startup probe succeeds,
//!   after which it no longer runs;
//! - a liveness or startup failure kills the container (the grace period is
//!   the probe's `terminationGracePeriodSeconds`, else the pod's) and the
//!   probe holds until the next container instance;
//! - an error running a probe (not the probed thing failing) changes
//!   nothing.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// startupProbe.
    Startup,
    /// livenessProbe.
    Liveness,
    /// readinessProbe.
    Readiness,
}

impl Kind {
    /// The kubelet's word in Events ("Liveness probe failed: ...").
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// http or https.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS, the certificate not verified (as the kubelet does).
    Https,
}

/// What a probe or hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// Run a command in the container; exit 0 is success.
    Exec {
        /// The command.
        command: Vec<String>,
    },
    /// HTTP GET; 200–399 is success.
    Http {
        /// Scheme.
        scheme: Scheme,
        /// Host to connect to and send; `None`: the pod's IP.
        host: Option<String>,
        /// Port.
        port: u16,
        /// Path (with query), starting with `/`.
        path: String,
        /// Extra headers, in order.
        headers: Vec<(String, String)>,
    },
    /// A TCP connection that opens is success.
    Tcp {
        /// Host; `None`: the pod's IP.
        host: Option<String>,
        /// Port.
        port: u16,
    },
    /// grpc.health.v1.Health/Check; SERVING is success.
    Grpc {
        /// Port (on the pod's IP).
        port: u16,
        /// The service name asked about ("" = the server).
        service: String,
    },
    /// Lifecycle hooks only: wait this long.
    Sleep {
        /// How long.
        duration: Duration,
    },
}

/// A probe with its timings, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// What it runs.
    pub handler: Handler,
    /// initialDelaySeconds (default 0).
    pub initial_delay: Duration,
    /// periodSeconds (default 10, at least 1).
    pub period: Duration,
    /// timeoutSeconds (default 1, at least 1).
    pub timeout: Duration,
    /// successThreshold (default 1; always 1 for liveness and startup).
    pub success_threshold: u32,
    /// failureThreshold (default 3).
    pub failure_threshold: u32,
    /// terminationGracePeriodSeconds of the probe (liveness, startup).
    pub termination_grace: Option<Duration>,
}

fn secs(v: Option<i32>, default: i32, min: i32) -> Duration {
    let v = v.filter(|v| *v >= min).unwrap_or(default);
    Duration::from_secs(v.max(0) as u64)
}

/// The container port a probe or hook names: a number, or a name from the
/// container's `ports`.
pub fn resolve_port(c: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port {name:?} in container {}", c.name))
        }
    }
}

fn http_handler(
    c: &Container,
    h: &k8s_openapi::api::core::v1::HTTPGetAction,
) -> Result<Handler, String> {
    let scheme = match h.scheme.as_deref() {
        None | Some("HTTP") | Some("http") => Scheme::Http,
        Some("HTTPS") | Some("https") => Scheme::Https,
        Some(other) => return Err(format!("unsupported HTTP scheme {other:?}")),
    };
    let path = h.path.clone().unwrap_or_default();
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    Ok(Handler::Http {
        scheme,
        host: h.host.clone().filter(|h| !h.is_empty()),
        port: resolve_port(c, &h.port)?,
        path,
        headers: h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
    })
}

/// An exec handler, `$(VAR)` expanded against the container's static
/// `env` values only (the kubelet's ExpandContainerCommandOnlyStatic).
fn exec_handler(
    c: &Container,
    e: &k8s_openapi::api::core::v1::ExecAction,
) -> Result<Handler, String> {
    let command = e.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err("exec handler without a command".into());
    }
    let env: std::collections::BTreeMap<String, String> = c
        .env
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone(), v.value.clone()?)))
        .collect();
    Ok(Handler::Exec {
        command: command
            .iter()
            .map(|a| super::spec::expand(a, &env))
            .collect(),
    })
}

/// A probe's handler and timings, from the container spec.
pub fn probe_spec(c: &Container, kind: Kind, p: &Probe) -> Result<ProbeSpec, String> {
    let handler = if let Some(e) = &p.exec {
        exec_handler(c, e)?
    } else if let Some(h) = &p.http_get {
        http_handler(c, h)?
    } else if let Some(t) = &p.tcp_socket {
        Handler::Tcp {
            host: t.host.clone().filter(|h| !h.is_empty()),
            port: resolve_port(c, &t.port)?,
        }
    } else if let Some(g) = &p.grpc {
        Handler::Grpc {
            port: u16::try_from(g.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("invalid port {}", g.port))?,
            service: g.service.clone().unwrap_or_default(),
        }
    } else {
        return Err(format!(
            "{} probe of container {} has no handler",
            kind.as_str(),
            c.name
        ));
    };
    let success_threshold = match kind {
        Kind::Readiness => p.success_threshold.filter(|v| *v >= 1).unwrap_or(1) as u32,
        Kind::Liveness | Kind::Startup => 1,
    };
    Ok(ProbeSpec {
        handler,
        initial_delay: secs(p.initial_delay_seconds, 0, 0),
        period: secs(p.period_seconds, 10, 1),
        timeout: secs(p.timeout_seconds, 1, 1),
        success_threshold,
        failure_threshold: p.failure_threshold.filter(|v| *v >= 1).unwrap_or(3) as u32,
        termination_grace: match kind {
            Kind::Readiness => None,
            _ => p
                .termination_grace_period_seconds
                .map(|s| Duration::from_secs(s.max(1) as u64)),
        },
    })
}

/// A postStart or preStop handler.
pub fn hook_handler(c: &Container, h: &LifecycleHandler) -> Result<Handler, String> {
    if let Some(e) = &h.exec {
        exec_handler(c, e)
    } else if let Some(g) = &h.http_get {
        http_handler(c, g)
    } else if let Some(s) = &h.sleep {
        Ok(Handler::Sleep {
            duration: Duration::from_secs(s.seconds.max(0) as u64),
        })
    } else if let Some(t) = &h.tcp_socket {
        // Deprecated and never run by the kubelet; kept as a no-op there too.
        let _ = t;
        Ok(Handler::Sleep {
            duration: Duration::ZERO,
        })
    } else {
        Err(format!(
            "lifecycle hook of container {} has no handler",
            c.name
        ))
    }
}

/// One probe attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Success,
    /// It failed, with the kubelet's kind of message ("HTTP probe failed
    /// with statuscode: 500").
    Failure(String),
    /// The probe could not be run (not the container's fault): ignored.
    Error(String),
}

/// One probe's state (the kubelet's worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    /// Its spec.
    pub spec: ProbeSpec,
    /// The reported result; `None` before the first report.
    pub result: Option<bool>,
    last: Option<bool>,
    run: u32,
    /// A liveness or startup failure was reported: nothing more runs
    /// for this container instance.
    pub on_hold: bool,
    next: Option<Instant>,
}

impl ProbeState {
    /// A probe for a container that started at `started`.
    pub fn new(spec: ProbeSpec, started: Instant) -> Self {
        let next = Some(started + spec.initial_delay);
        ProbeState {
            spec,
            result: None,
            last: None,
            run: 0,
            on_hold: false,
            next,
        }
    }

    /// Records one attempt at `now`; returns the newly reported result when
    /// it changed (thresholds reached).
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<bool> {
        self.next = Some(now + self.spec.period);
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.spec.success_threshold
        } else {
            self.spec.failure_threshold
        };
        if self.run < threshold || self.result == Some(ok) {
            return None;
        }
        self.result = Some(ok);
        Some(ok)
    }
}

/// What the pod worker needs from a container's probes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeView {
    /// The startup probe passed (or there is none).
    pub started: bool,
    /// Ready: started, and the readiness probe's reported result is success
    /// (or there is none).
    pub ready: bool,
    /// A liveness or startup failure: the container is to be killed, with
    /// this grace and this Event message.
    pub kill: Option<Kill>,
}

/// A container to be killed for a failed probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    /// Which probe failed.
    pub kind: Kind,
    /// The probe's grace, when it has one (else the pod's).
    pub grace: Option<Duration>,
}

/// A change worth telling the pod worker about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Readiness or started changed.
    Status,
    /// The container is to be killed.
    Kill(Kind),
}

/// The probes of one container instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerProbes {
    /// startupProbe.
    pub startup: Option<ProbeState>,
    /// livenessProbe.
    pub liveness: Option<ProbeState>,
    /// readinessProbe.
    pub readiness: Option<ProbeState>,
    started_at: Instant,
}

impl ContainerProbes {
    /// The probes of container `c` whose instance started at `started`;
    /// `None` when it has none. A probe that cannot be parsed is skipped
    /// with its error returned.
    pub fn new(c: &Container, started: Instant) -> (Option<Self>, Vec<String>) {
        let mut errors = Vec::new();
        let mut one = |kind: Kind, p: Option<&Probe>| {
            let p = p?;
            match probe_spec(c, kind, p) {
                Ok(s) => Some(ProbeState::new(s, started)),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        };
        let cp = ContainerProbes {
            startup: one(Kind::Startup, c.startup_probe.as_ref()),
            liveness: one(Kind::Liveness, c.liveness_probe.as_ref()),
            readiness: one(Kind::Readiness, c.readiness_probe.as_ref()),
            started_at: started,
        };
        let any = cp.startup.is_some() || cp.liveness.is_some() || cp.readiness.is_some();
        (any.then_some(cp), errors)
    }

    /// One of its probes.
    pub fn get(&self, kind: Kind) -> Option<&ProbeState> {
        match kind {
            Kind::Startup => self.startup.as_ref(),
            Kind::Liveness => self.liveness.as_ref(),
            Kind::Readiness => self.readiness.as_ref(),
        }
    }

    fn get_mut(&mut self, kind: Kind) -> Option<&mut ProbeState> {
        match kind {
            Kind::Startup => self.startup.as_mut(),
            Kind::Liveness => self.liveness.as_mut(),
            Kind::Readiness => self.readiness.as_mut(),
        }
    }

    /// Whether the startup probe has passed (or there is none).
    pub fn started(&self) -> bool {
        self.startup.as_ref().is_none_or(|s| s.result == Some(true))
    }

    /// The next probe to run and when; `None` when nothing will run again.
    pub fn next_due(&self) -> Option<(Kind, Instant)> {
        let killed = [&self.startup, &self.liveness]
            .into_iter()
            .flatten()
            .any(|p| p.on_hold);
        if killed {
            return None;
        }
        if !self.started() {
            let s = self.startup.as_ref()?;
            return Some((Kind::Startup, s.next?));
        }
        [Kind::Liveness, Kind::Readiness]
            .into_iter()
            .filter_map(|k| Some((k, self.get(k)?.next?)))
            .min_by_key(|(_, t)| *t)
    }

    /// Records an attempt of `kind` at `now`.
    pub fn record(&mut self, kind: Kind, outcome: &Outcome, now: Instant) -> Option<Change> {
        let was = self.view();
        let p = self.get_mut(kind)?;
        let ok = match outcome {
            Outcome::Success => true,
            Outcome::Failure(_) => false,
            Outcome::Error(_) => {
                p.next = Some(now + p.spec.period);
                return None;
            }
        };
        let changed = p.record(ok, now);
        if kind == Kind::Startup && changed == Some(true) {
            // Started: liveness and readiness begin (their initial delays
            // count from the container's start, as the kubelet's do).
            let from = self.started_at;
            for k in [Kind::Liveness, Kind::Readiness] {
                if let Some(p) = self.get_mut(k) {
                    p.next = Some((from + p.spec.initial_delay).max(now));
                }
            }
        }
        if changed == Some(false) && kind != Kind::Readiness {
            if let Some(p) = self.get_mut(kind) {
                p.on_hold = true;
            }
            return Some(Change::Kill(kind));
        }
        (self.view() != was).then_some(Change::Status)
    }

    /// What the pod worker shows and does.
    pub fn view(&self) -> ProbeView {
        let started = self.started();
        let ready = started
            && self
                .readiness
                .as_ref()
                .is_none_or(|r| r.result == Some(true));
        let kill = [Kind::Startup, Kind::Liveness]
            .into_iter()
            .find_map(|k| self.get(k).filter(|p| p.on_hold).map(|p| (k, p)))
            .map(|(kind, p)| Kill {
                kind,
                grace: p.spec.termination_grace,
            });
        ProbeView {
            started,
            ready,
            kill,
        }
    }
}

/// The grace for killing a container: the probe's, else the pod's
/// `terminationGracePeriodSeconds` (default 30 s).
pub fn kill_grace(pod: &Pod, probe_grace: Option<Duration>) -> Duration {
    probe_grace.unwrap_or_else(|| {
        let s = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0);
        Duration::from_secs(s as u64)
    })
}

/// The kubelet's Killing message for a probe kill.
pub fn kill_message(container: &str, kind: Kind) -> String {
    format!(
        "Container {container} failed {} probe, will be restarted",
        kind.as_str().to_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        let mut base = json!({"name": "web", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]});
        base.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn specs_take_defaults_named_ports_and_handlers() {
        let c = container(json!({
            "readinessProbe": {"httpGet": {"path": "healthz", "port": "http", "scheme": "HTTPS",
                                "httpHeaders": [{"name": "X-A", "value": "1"}]}},
            "livenessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 2, "timeoutSeconds": 3,
                               "failureThreshold": 5, "successThreshold": 4, "initialDelaySeconds": 7,
                               "terminationGracePeriodSeconds": 4},
            "startupProbe": {"exec": {"command": ["test", "-f", "$(DIR)/up", "$(NOPE)", "$$(DIR)"]}},
            "env": [{"name": "DIR", "value": "/run"},
                    {"name": "NOPE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        }));
        let r = probe_spec(&c, Kind::Readiness, c.readiness_probe.as_ref().unwrap()).unwrap();
        assert_eq!(
            r,
            ProbeSpec {
                handler: Handler::Http {
                    scheme: Scheme::Https,
                    host: None,
                    port: 8080,
                    path: "/healthz".into(),
                    headers: vec![("X-A".into(), "1".into())],
                },
                initial_delay: s(0),
                period: s(10),
                timeout: s(1),
                success_threshold: 1,
                failure_threshold: 3,
                termination_grace: None,
            }
        );
        let l = probe_spec(&c, Kind::Liveness, c.liveness_probe.as_ref().unwrap()).unwrap();
        assert_eq!(
            l.handler,
            Handler::Tcp {
                host: None,
                port: 9000
            }
        );
        assert_eq!(
            (l.initial_delay, l.period, l.timeout, l.failure_threshold),
            (s(7), s(2), s(3), 5)
        );
        // Liveness success threshold is always 1.
        assert_eq!(l.success_threshold, 1);
        assert_eq!(l.termination_grace, Some(s(4)));

        let st = probe_spec(&c, Kind::Startup, c.startup_probe.as_ref().unwrap()).unwrap();
        assert_eq!(
            st.handler,
            Handler::Exec {
                command: ["test", "-f", "/run/up", "$(NOPE)", "$(DIR)"]
                    .map(String::from)
                    .to_vec()
            }
        );

        let bad = container(json!({"readinessProbe": {"tcpSocket": {"port": "nope"}}}));
        let e =
            probe_spec(&bad, Kind::Readiness, bad.readiness_probe.as_ref().unwrap()).unwrap_err();
        assert!(e.contains("\"nope\""), "{e}");
        let (cp, errors) = ContainerProbes::new(&bad, Instant::now());
        assert!(cp.is_none());
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn readiness_waits_for_the_initial_delay_and_the_success_threshold() {
        let c = container(json!({"readinessProbe": {"exec": {"command": ["true"]},
            "initialDelaySeconds": 5, "periodSeconds": 2, "successThreshold": 2, "failureThreshold": 2}}));
        let t0 = Instant::now();
        let (cp, _) = ContainerProbes::new(&c, t0);
        let mut cp = cp.unwrap();
        // Not ready before the first success; first run at the delay.
        assert!(!cp.view().ready);
        assert!(cp.view().started);
        assert_eq!(cp.next_due(), Some((Kind::Readiness, t0 + s(5))));
        let fail = Outcome::Failure("no".into());
        assert_eq!(
            cp.record(Kind::Readiness, &Outcome::Success, t0 + s(5)),
            None
        );
        assert!(!cp.view().ready, "one success of two");
        assert_eq!(cp.next_due(), Some((Kind::Readiness, t0 + s(7))));
        assert_eq!(
            cp.record(Kind::Readiness, &Outcome::Success, t0 + s(7)),
            Some(Change::Status)
        );
        assert!(cp.view().ready);
        // One failure of two keeps it ready; an error changes nothing;
        // the second consecutive failure makes it unready, never a kill.
        assert_eq!(cp.record(Kind::Readiness, &fail, t0 + s(9)), None);
        assert_eq!(
            cp.record(Kind::Readiness, &Outcome::Error("x".into()), t0 + s(11)),
            None
        );
        assert!(cp.view().ready);
        assert_eq!(
            cp.record(Kind::Readiness, &fail, t0 + s(13)),
            Some(Change::Status)
        );
        assert!(!cp.view().ready);
        assert_eq!(cp.view().kill, None);
        // A success in between restarts the count.
        assert_eq!(
            cp.record(Kind::Readiness, &Outcome::Success, t0 + s(15)),
            None
        );
        assert_eq!(cp.record(Kind::Readiness, &fail, t0 + s(17)), None);
        assert_eq!(
            cp.record(Kind::Readiness, &Outcome::Success, t0 + s(19)),
            None
        );
        assert!(!cp.view().ready);
        assert_eq!(
            cp.record(Kind::Readiness, &Outcome::Success, t0 + s(21)),
            Some(Change::Status)
        );
        assert!(cp.view().ready);
    }

    #[test]
    fn liveness_kills_after_the_failure_threshold_and_then_holds() {
        let c = container(json!({"livenessProbe": {"exec": {"command": ["true"]},
            "periodSeconds": 1, "failureThreshold": 3, "terminationGracePeriodSeconds": 2}}));
        let t0 = Instant::now();
        let mut cp = ContainerProbes::new(&c, t0).0.unwrap();
        // Live (and ready: no readiness probe) from the start.
        assert!(cp.view().ready);
        let fail = Outcome::Failure("exit 1".into());
        assert_eq!(cp.record(Kind::Liveness, &fail, t0), None);
        assert_eq!(cp.record(Kind::Liveness, &fail, t0 + s(1)), None);
        assert_eq!(cp.view().kill, None);
        assert_eq!(
            cp.record(Kind::Liveness, &fail, t0 + s(2)),
            Some(Change::Kill(Kind::Liveness))
        );
        assert_eq!(
            cp.view().kill,
            Some(Kill {
                kind: Kind::Liveness,
                grace: Some(s(2))
            })
        );
        assert_eq!(cp.next_due(), None, "held until the next instance");
    }

    #[test]
    fn startup_gates_liveness_and_readiness() {
        let c = container(json!({
            "startupProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1, "failureThreshold": 4},
            "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 3, "initialDelaySeconds": 1},
            "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 5},
        }));
        let t0 = Instant::now();
        let mut cp = cp_of(&c, t0);
        assert_eq!(cp.next_due(), Some((Kind::Startup, t0)));
        assert!(!cp.view().started);
        let fail = Outcome::Failure("no".into());
        for i in 0..3 {
            assert_eq!(cp.record(Kind::Startup, &fail, t0 + s(i)), None);
            // Only the startup probe runs meanwhile.
            assert_eq!(cp.next_due(), Some((Kind::Startup, t0 + s(i + 1))));
        }
        assert_eq!(
            cp.record(Kind::Startup, &Outcome::Success, t0 + s(3)),
            Some(Change::Status)
        );
        let v = cp.view();
        assert!(v.started);
        assert!(!v.ready, "readiness has not passed yet");
        // Both begin at once (their delays have passed); startup no longer runs.
        assert_eq!(cp.next_due(), Some((Kind::Liveness, t0 + s(3))));
        cp.record(Kind::Liveness, &Outcome::Success, t0 + s(3));
        assert_eq!(cp.next_due(), Some((Kind::Readiness, t0 + s(3))));
        cp.record(Kind::Readiness, &Outcome::Success, t0 + s(3));
        assert!(cp.view().ready);
        assert_eq!(cp.next_due(), Some((Kind::Liveness, t0 + s(6))));

        // Startup failing its threshold kills, as liveness does.
        let mut cp = cp_of(&c, t0);
        for i in 0..3 {
            assert_eq!(cp.record(Kind::Startup, &fail, t0 + s(i)), None);
        }
        assert_eq!(
            cp.record(Kind::Startup, &fail, t0 + s(3)),
            Some(Change::Kill(Kind::Startup))
        );
        assert_eq!(cp.view().kill.map(|k| k.kind), Some(Kind::Startup));
        assert_eq!(
            kill_message("web", Kind::Startup),
            "Container web failed startup probe, will be restarted"
        );
    }

    fn cp_of(c: &Container, t0: Instant) -> ContainerProbes {
        ContainerProbes::new(c, t0).0.unwrap()
    }

    #[test]
    fn hooks_and_grace() {
        let c = container(json!({"lifecycle": {
            "postStart": {"httpGet": {"port": "http", "path": "/up", "host": "127.0.0.1"}},
            "preStop": {"sleep": {"seconds": 3}},
        }}));
        let l = c.lifecycle.clone().unwrap();
        assert_eq!(
            hook_handler(&c, l.post_start.as_ref().unwrap()).unwrap(),
            Handler::Http {
                scheme: Scheme::Http,
                host: Some("127.0.0.1".into()),
                port: 8080,
                path: "/up".into(),
                headers: vec![]
            }
        );
        assert_eq!(
            hook_handler(&c, l.pre_stop.as_ref().unwrap()).unwrap(),
            Handler::Sleep { duration: s(3) }
        );
        let pod: Pod = serde_json::from_value(
            json!({"spec": {"terminationGracePeriodSeconds": 7, "containers": []}}),
        )
        .unwrap();
        assert_eq!(kill_grace(&pod, None), s(7));
        assert_eq!(kill_grace(&pod, Some(s(2))), s(2));
    }
}
