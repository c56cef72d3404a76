//! Probes and lifecycle hooks on a real cluster (one `keelson server`, an
//! agent in its own network namespace, the nftables Service proxy):
//! readiness gating a Service's endpoint, a failing liveness probe
//! restarting its container with the kubelet's Events, a startup probe
//! holding liveness back, postStart and preStop hooks, a readiness gate,
//! a native sidecar's order.
//!
//! Needs root; skips (or fails under KEELSON_REQUIRE_ALL=1) otherwise.

use std::time::{Duration, Instant};

use keelson_e2e::multinode::{Cluster, can_run, httpd_command};

/// `.status` fields of a pod through jsonpath.
fn pod_field(c: &Cluster, pod: &str, path: &str) -> String {
    c.kubectl_ok(&["get", "pod", pod, "-o", &format!("jsonpath={{{path}}}")])
        .trim()
        .to_string()
}

/// The pod's Ready condition status.
fn ready_condition(c: &Cluster, pod: &str) -> String {
    pod_field(c, pod, ".status.conditions[?(@.type==\"Ready\")].status")
}

/// `ready` of the first endpoint of Service `svc`'s EndpointSlices (None
/// while there is none).
fn endpoint_ready(c: &Cluster, svc: &str) -> Option<bool> {
    let out = c.kubectl_ok(&[
        "get",
        "endpointslices",
        "-l",
        &format!("kubernetes.io/service-name={svc}"),
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("endpointslices json");
    v["items"]
        .as_array()?
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .next()?["conditions"]["ready"]
        .as_bool()
}

/// (reason, message) of every Event about `pod`.
fn events_of(c: &Cluster, pod: &str) -> Vec<(String, String)> {
    let out = c.kubectl_ok(&["get", "events", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("events json");
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_readiness_probe_keeps_the_pod_out_of_its_service_until_it_passes() {
    if !can_run("a_readiness_probe_keeps_the_pod_out_of_its_service_until_it_passes") {
        return;
    }
    let c = Cluster::start(1, &[]);
    let node = &c.nodes[0];
    // httpd serves /srv/<pod>/; the probe asks for /ready, absent at first
    // (404), through the port's name.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: gated, labels: {{app: gated}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {image}
    command: {command}
    ports: [{{name: http, containerPort: 80}}]
    readinessProbe:
      httpGet:
        path: /ready
        port: http
        httpHeaders: [{{name: X-Probe, value: keelson}}]
      periodSeconds: 1
      failureThreshold: 2
    # Connects from the agent inside the pod's namespace; three failures
    # in a row (a connect that never works) would restart it within ~3 s
    # (restartCount stays 0 below). One slow connect on a loaded machine
    # must not.
    livenessProbe:
      tcpSocket: {{port: http}}
      periodSeconds: 1
      timeoutSeconds: 5
      failureThreshold: 3
---
apiVersion: v1
kind: Service
metadata: {{name: gated}}
spec:
  selector: {{app: gated}}
  ports: [{{port: 80}}]
"#,
        image = c.busybox(),
        command = httpd_command(),
    ));
    c.wait_until("the pod Running", Duration::from_secs(90), || {
        pod_field(&c, "gated", ".status.phase") == "Running"
    });
    c.wait_until(
        "its endpoint published, not ready",
        Duration::from_secs(30),
        || endpoint_ready(&c, "gated") == Some(false),
    );
    // Several probe periods later it is still not ready: no traffic.
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        assert_eq!(ready_condition(&c, "gated"), "False");
        assert_eq!(
            pod_field(&c, "gated", ".status.containerStatuses[0].ready"),
            "false"
        );
        assert_eq!(endpoint_ready(&c, "gated"), Some(false));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        events_of(&c, "gated").iter().any(|(r, m)| r == "Unhealthy"
            && m == "Readiness probe failed: HTTP probe failed with statuscode: 404"),
        "{:?}",
        events_of(&c, "gated")
    );
    // The probe's path appears (kubectl exec, through the API server to
    // the node): ready, the endpoint too, traffic flows.
    c.kubectl_ok(&["exec", "gated", "--", "touch", "/srv/gated/ready"]);
    let t0 = Instant::now();
    c.wait_until("the pod Ready", Duration::from_secs(20), || {
        ready_condition(&c, "gated") == "True"
    });
    println!("Ready {:?} after the file appeared", t0.elapsed());
    assert_eq!(
        pod_field(&c, "gated", ".status.containerStatuses[0].ready"),
        "true"
    );
    assert_eq!(
        pod_field(
            &c,
            "gated",
            ".status.conditions[?(@.type==\"ContainersReady\")].status"
        ),
        "True"
    );
    c.wait_until("the endpoint ready", Duration::from_secs(20), || {
        endpoint_ready(&c, "gated") == Some(true)
    });
    let vip = c
        .kubectl_ok(&["get", "svc", "gated", "-o", "jsonpath={.spec.clusterIP}"])
        .trim()
        .to_string();
    c.wait_until(
        "traffic through the Service",
        Duration::from_secs(20),
        || {
            let out = node.exec(&["curl", "-s", "--max-time", "3", &format!("http://{vip}/")]);
            String::from_utf8_lossy(&out.stdout).trim() == "hello from gated"
        },
    );
    // Gone again: two failures later it is out again, not restarted.
    let gone = c.exec_in_pod("gated", &["rm", "/srv/gated/ready"]);
    assert!(gone.status.success(), "{gone:?}");
    c.wait_until("the pod unready again", Duration::from_secs(20), || {
        ready_condition(&c, "gated") == "False" && endpoint_ready(&c, "gated") == Some(false)
    });
    assert_eq!(
        pod_field(&c, "gated", ".status.containerStatuses[0].restartCount"),
        "0"
    );

    // A readiness gate: Ready waits for its condition, set by someone else
    // (the agent keeps it when it writes the pod's status).
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: gate}}
spec:
  terminationGracePeriodSeconds: 1
  readinessGates: [{{conditionType: example.com/in-lb}}]
  containers:
  - name: main
    image: {image}
    command: ["sleep", "3600"]
"#,
        image = c.busybox(),
    ));
    let cond = |ty: &str, field: &str| {
        pod_field(
            &c,
            "gate",
            &format!(".status.conditions[?(@.type==\"{ty}\")].{field}"),
        )
    };
    c.wait_until("gate's containers ready", Duration::from_secs(60), || {
        cond("ContainersReady", "status") == "True"
    });
    assert_eq!(cond("Ready", "status"), "False");
    assert_eq!(cond("Ready", "reason"), "ReadinessGatesNotReady");
    c.kubectl_ok(&[
        "patch",
        "pod",
        "gate",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"example.com/in-lb","status":"True"}]}}"#,
    ]);
    c.wait_until("gate Ready", Duration::from_secs(20), || {
        cond("Ready", "status") == "True"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cond("example.com/in-lb", "status"), "True");
    assert_eq!(cond("Ready", "status"), "True");
}

#[test]
fn a_failing_liveness_probe_restarts_the_container_and_a_startup_probe_holds_it_back() {
    if !can_run("a_failing_liveness_probe_restarts_the_container_and_a_startup_probe_holds_it_back")
    {
        return;
    }
    let c = Cluster::start(1, &[]);
    // `sick` is healthy for 4 s, then its liveness file goes. `slow` takes
    // 6 s to start; its liveness probe (one failure kills) would kill it
    // long before that if the startup probe did not hold it back.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: sick}}
spec:
  terminationGracePeriodSeconds: 30
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "touch /tmp/healthy; sleep 4; rm /tmp/healthy; sleep 3600"]
    livenessProbe:
      exec: {{command: ["test", "-f", "/tmp/healthy"]}}
      periodSeconds: 1
      failureThreshold: 2
      terminationGracePeriodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: slow}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 6; touch /tmp/started; exec sleep 3600"]
    startupProbe:
      exec: {{command: ["test", "-f", "/tmp/started"]}}
      periodSeconds: 1
      failureThreshold: 30
    livenessProbe:
      exec: {{command: ["test", "-f", "/tmp/started"]}}
      periodSeconds: 1
      failureThreshold: 1
    readinessProbe:
      exec: {{command: ["test", "-f", "/tmp/started"]}}
      periodSeconds: 1
"#,
        image = c.busybox(),
    ));
    c.wait_until("both pods Running", Duration::from_secs(90), || {
        c.kubectl_ok(&["get", "pods", "-o", "jsonpath={.items[*].status.phase}"])
            == "Running Running"
    });
    // The slow one: not started, not ready, while its startup probe fails.
    let running = Instant::now();
    assert_eq!(
        pod_field(&c, "slow", ".status.containerStatuses[0].started"),
        "false"
    );
    assert_eq!(
        pod_field(&c, "slow", ".status.containerStatuses[0].ready"),
        "false"
    );
    // The sick one: restarted by its liveness probe, with the Events.
    c.wait_until("sick restarted", Duration::from_secs(40), || {
        pod_field(&c, "sick", ".status.containerStatuses[0].restartCount")
            .parse::<u32>()
            .is_ok_and(|n| n >= 1)
    });
    println!("sick restarted {:?} after Running", running.elapsed());
    // 4 s healthy, two 1 s periods failing, the probe's 1 s grace: well
    // before the pod's 30 s grace would have run out.
    assert!(
        running.elapsed() < Duration::from_secs(20),
        "restarted after {:?}",
        running.elapsed()
    );
    let ev = events_of(&c, "sick");
    assert!(
        ev.iter()
            .any(|(r, m)| r == "Unhealthy" && m.starts_with("Liveness probe failed:")),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|(r, m)| r == "Killing"
            && m == "Container main failed liveness probe, will be restarted"),
        "{ev:?}"
    );
    // Killed after the probe's 1 s grace (sh as PID 1 ignores SIGTERM),
    // not the pod's 30 s: SIGKILL's exit code.
    assert_eq!(
        pod_field(
            &c,
            "sick",
            ".status.containerStatuses[0].lastState.terminated.exitCode"
        ),
        "137"
    );
    // Killed again: the kubelet's back-off holds the next restart.
    c.wait_until(
        "sick in CrashLoopBackOff after its second kill",
        Duration::from_secs(40),
        || {
            pod_field(
                &c,
                "sick",
                ".status.containerStatuses[0].state.waiting.reason",
            ) == "CrashLoopBackOff"
        },
    );
    assert_eq!(
        pod_field(&c, "sick", ".status.containerStatuses[0].restartCount"),
        "1"
    );
    assert!(
        events_of(&c, "sick")
            .iter()
            .any(|(r, m)| r == "BackOff" && m == "Back-off restarting failed container main"),
        "{:?}",
        events_of(&c, "sick")
    );
    // The slow one: started after ~6 s, then ready, and never killed
    // (its liveness probe, one failure kills, would have failed at once
    // had it not waited for the startup probe).
    c.wait_until("slow started", Duration::from_secs(30), || {
        pod_field(&c, "slow", ".status.containerStatuses[0].started") == "true"
    });
    c.wait_until("slow Ready", Duration::from_secs(10), || {
        ready_condition(&c, "slow") == "True"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        pod_field(&c, "slow", ".status.containerStatuses[0].restartCount"),
        "0"
    );
    let ev = events_of(&c, "slow");
    assert!(
        ev.iter()
            .any(|(r, m)| r == "Unhealthy" && m.starts_with("Startup probe failed")),
        "{ev:?}"
    );
    assert!(
        !ev.iter()
            .any(|(r, m)| r == "Killing" || m.starts_with("Liveness")),
        "liveness ran before the startup probe passed: {ev:?}"
    );
}

#[test]
fn post_start_and_pre_stop_hooks_run_and_a_failing_post_start_kills() {
    if !can_run("post_start_and_pre_stop_hooks_run_and_a_failing_post_start_kills") {
        return;
    }
    let c = Cluster::start(1, &[]);
    // The hooks write into a host directory the test owns (removed with it).
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    // `hooked` records its hooks with their time; it stops on SIGTERM
    // (within a second). `broken`'s postStart fails.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "trap 'echo $(date +%s) > /hooks/term; exit 0' TERM; while true; do sleep 1; done"]
    volumeMounts: [{{name: hooks, mountPath: /hooks}}]
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "echo $(date +%s) > /hooks/post-start"]}}
      preStop:
        exec: {{command: ["sh", "-c", "echo $(date +%s) > /hooks/pre-stop; sleep 2"]}}
  volumes:
  - name: hooks
    hostPath: {{path: {d}, type: Directory}}
---
apiVersion: v1
kind: Pod
metadata: {{name: broken}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sleep", "3600"]
    lifecycle:
      postStart:
        exec: {{command: ["sh", "-c", "exit 3"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sleepy}}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    lifecycle:
      preStop:
        sleep: {{seconds: 3}}
"#,
        image = c.busybox(),
    ));
    let post = dir.path().join("post-start");
    c.wait_until("hooked Running", Duration::from_secs(90), || {
        pod_field(&c, "hooked", ".status.phase") == "Running"
    });
    c.wait_until("the postStart hook ran", Duration::from_secs(10), || {
        post.exists()
    });
    assert!(!dir.path().join("pre-stop").exists());
    assert!(!dir.path().join("term").exists());

    // A failing postStart: the Event, the container killed and restarted.
    c.wait_until("broken restarted", Duration::from_secs(60), || {
        pod_field(&c, "broken", ".status.containerStatuses[0].restartCount")
            .parse::<u32>()
            .is_ok_and(|n| n >= 1)
    });
    let ev = events_of(&c, "broken");
    assert!(
        ev.iter()
            .any(|(r, m)| r == "FailedPostStartHook" && m == "PostStartHook failed"),
        "{ev:?}"
    );

    // Deleting runs preStop first, then SIGTERM: pre-stop's time, then
    // term's at least the hook's 2 s later; the pod is gone well within
    // its 20 s grace.
    c.wait_until("sleepy Running", Duration::from_secs(60), || {
        pod_field(&c, "sleepy", ".status.phase") == "Running"
    });
    let t0 = Instant::now();
    c.kubectl_ok(&["delete", "pod", "hooked", "sleepy", "--wait=true"]);
    let took = t0.elapsed();
    let read = |f: &str| -> u64 {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (pre, term) = (read("pre-stop"), read("term"));
    assert!(term >= pre + 2, "preStop at {pre}, SIGTERM at {term}");
    // sleepy's preStop sleep holds its deletion at least 3 s.
    assert!(took >= Duration::from_secs(3), "deleted in {took:?}");
    assert!(took < Duration::from_secs(15), "deleted in {took:?}");
}

/// A native sidecar (an init container with `restartPolicy: Always`) that
/// tails a file the main container writes in a shared emptyDir: it starts
/// before the main container, keeps running beside it, and is stopped
/// after it finishes, so that the pod completes.
#[test]
fn a_native_sidecar_starts_before_and_stops_after_the_main_container() {
    if !can_run("a_native_sidecar_starts_before_and_stops_after_the_main_container") {
        return;
    }
    let c = Cluster::start(1, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: tailed}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 10
  initContainers:
  - name: tail
    image: {image}
    restartPolicy: Always
    command: ["sh", "-c", "trap 'if [ -f /hooks/main-end ]; then echo after; else echo before; fi > /hooks/side-stop; exit 0' TERM; touch /shared/log; echo up > /hooks/side-start; tail -f /shared/log & wait"]
    volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: hooks, mountPath: /hooks}}]
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "if [ -f /hooks/side-start ]; then echo yes > /hooks/main-saw-side; fi; for i in 1 2 3; do echo line $i >> /shared/log; sleep 1; done; echo done > /hooks/main-end"]
    volumeMounts: [{{name: shared, mountPath: /shared}}, {{name: hooks, mountPath: /hooks}}]
  volumes:
  - name: shared
    emptyDir: {{}}
  - name: hooks
    hostPath: {{path: {d}, type: Directory}}
"#,
        image = c.busybox(),
    ));
    c.wait_until("tailed Succeeded", Duration::from_secs(120), || {
        pod_field(&c, "tailed", ".status.phase") == "Succeeded"
    });
    let read = |f: &str| {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(read("main-saw-side"), "yes", "the sidecar started first");
    assert_eq!(
        read("side-stop"),
        "after",
        "the sidecar stopped after the main container"
    );
    let logs = c.kubectl_ok(&["logs", "tailed", "-c", "tail"]);
    assert!(
        logs.contains("line 3"),
        "the sidecar tailed the shared file: {logs:?}"
    );
    // Its status is an init container's that ran beside the main one.
    assert_eq!(
        pod_field(&c, "tailed", ".status.initContainerStatuses[0].name"),
        "tail"
    );
    let ev = events_of(&c, "tailed");
    assert!(
        ev.iter()
            .any(|(r, m)| r == "Killing" && m == "Stopping container tail"),
        "{ev:?}"
    );
}
