//! `keelson agent` end to end: real runc, real cgroups, real netns, our API
//! server, a local registry. Each test has its own agent dirs, cgroup root,
//! bridge and subnet; AgentProcess cleans up on drop.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use keelson_e2e::ServerProcess;
use keelson_e2e::agent::{AgentProcess, can_run};
use keelson_e2e::registry::{BUSYBOX, Registry};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

struct Env {
    agent: AgentProcess,
    reg: Registry,
    server: ServerProcess,
    client: kube::Client,
}

async fn env(test: &str) -> Option<Env> {
    if !can_run(test) {
        return None;
    }
    let reg = Registry::with_test_images_or_skip()?;
    let server = ServerProcess::start(None);
    let client = server.client().await;
    let agent = AgentProcess::start(&server, test, &[]);
    Some(Env {
        agent,
        reg,
        server,
        client,
    })
}

fn pod_json(
    name: &str,
    node: &str,
    image: &str,
    script: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
                "env": [{"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            }],
        },
    });
    if let (Some(spec), Some(extra)) = (p["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    p
}

async fn create(client: &kube::Client, p: serde_json::Value) -> Pod {
    let pod: Pod = serde_json::from_value(p).unwrap();
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod")
}

/// Polls the pod until `pred` holds; panics with the agent log on timeout.
async fn wait_pod(
    e: &Env,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Pod) -> bool,
) -> Pod {
    let api: Api<Pod> = Api::namespaced(e.client.clone(), "default");
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < timeout {
        if let Ok(p) = api.get(name).await {
            if pred(&p) {
                return p;
            }
            last = Some(p);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "pod {name}: {what} not reached in {timeout:?}; last status: {}\nagent log:\n{}",
        serde_json::to_string_pretty(&last.and_then(|p| p.status)).unwrap(),
        e.agent.log()
    );
}

/// (reason, message) of the Events about pod `name`, oldest first.
async fn pod_events(e: &Env, name: &str) -> Vec<(String, String)> {
    // Events are posted fire and forget: give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut evs: Vec<k8s_openapi::api::core::v1::Event> =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(e.client.clone(), "default")
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|ev| {
                ev.involved_object.kind.as_deref() == Some("Pod")
                    && ev.involved_object.name.as_deref() == Some(name)
            })
            .collect();
    evs.sort_by_key(|ev| ev.event_time.as_ref().map(|t| t.0));
    evs.into_iter()
        .map(|ev| {
            (
                ev.reason.unwrap_or_default(),
                ev.message.unwrap_or_default(),
            )
        })
        .collect()
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            })
}

fn main_status(p: &Pod) -> k8s_openapi::api::core::v1::ContainerStatus {
    p.status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .clone()
}

async fn gone(e: &Env, name: &str, timeout: Duration) -> bool {
    let api: Api<Pod> = Api::namespaced(e.client.clone(), "default");
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(None) = api.get_opt(name).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registers_node_and_renews_lease() {
    let Some(mut e) = env("agent-node").await else {
        return;
    };
    let nodes: Api<Node> = Api::all(e.client.clone());
    let n = nodes
        .get(&e.agent.node_name)
        .await
        .expect("node registered");
    let st = n.status.unwrap();
    let ready = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    assert_eq!(ready.reason.as_deref(), Some("KeelsonReady"));
    let info = st.node_info.unwrap();
    assert!(
        info.kubelet_version.starts_with("keelson-"),
        "{}",
        info.kubelet_version
    );
    assert!(
        info.container_runtime_version.starts_with("runc://"),
        "{}",
        info.container_runtime_version
    );
    assert_eq!(st.capacity.unwrap()["pods"].0, "110");
    assert_eq!(
        st.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port,
        e.agent.api_port as i32
    );
    let addrs = st.addresses.unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
    );
    let leases: Api<Lease> = Api::namespaced(e.client.clone(), "kube-node-lease");
    let l = leases.get(&e.agent.node_name).await.expect("lease");
    assert_eq!(
        l.spec.unwrap().holder_identity.as_deref(),
        Some(e.agent.node_name.as_str())
    );
    let (code, body) = e.agent.node_api("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok"));
    // kubectl sees the node Ready.
    let out = e
        .server
        .kubectl_ok(33, &["get", "node", &e.agent.node_name]);
    assert!(out.contains("Ready"), "{out}");
    let st = e.agent.terminate().expect("agent exit status");
    assert!(st.success(), "agent exit on SIGTERM: {st}");
    let _ = &e.reg;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_with_ip_logs_and_exec() {
    let Some(e) = env("agent-logs").await else {
        return;
    };
    let image = e.reg.image(BUSYBOX);
    let script =
        "echo hello from $MY_POD; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done";
    let file = e.agent.root_dir.parent().unwrap().join("pod.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&pod_json(
            "web",
            &e.agent.node_name,
            &image,
            script,
            json!({}),
        ))
        .unwrap(),
    )
    .unwrap();
    e.server
        .kubectl_ok(33, &["apply", "-f", file.to_str().unwrap()]);
    let p = wait_pod(&e, "web", "Running", Duration::from_secs(60), running).await;
    let st = p.status.clone().unwrap();
    let ip: std::net::Ipv4Addr = st.pod_ip.clone().expect("pod IP").parse().unwrap();
    let net: ipnet_check::Net = e.agent.subnet.parse().unwrap();
    assert!(net.contains(ip), "pod IP {ip} not in {}", e.agent.subnet);
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    let cs = main_status(&p);
    assert!(cs.ready);
    assert!(cs.container_id.unwrap().starts_with("runc://"));
    assert!(cs.image_id.contains("@sha256:"), "imageID {}", cs.image_id);
    assert_eq!(st.qos_class.as_deref(), Some("BestEffort"));
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        let c = st
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("{t}"));
        assert_eq!(c.status, "True", "{t}");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (code, body) = e.agent.node_api("/containerLogs/default/web/main");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("hello from web\n"), "logs: {body:?}");
    assert!(body.contains("tick 1\n"), "logs: {body:?}");
    let (_, body) = e
        .agent
        .node_api("/containerLogs/default/web/main?tailLines=1&timestamps=true");
    assert_eq!(body.lines().count(), 1, "{body:?}");
    assert!(body.contains("Z tick "), "{body:?}");
    let (code, body) = e.agent.node_api("/pods");
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["metadata"]["name"] == "web")
    );
    // Without a client certificate only /healthz answers; with one from
    // another CA (the node's own self-signed serving pair) the handshake fails.
    let curl = |path: &str, cert: Option<(&std::path::Path, &std::path::Path)>| {
        let mut c = std::process::Command::new("curl");
        c.args([
            "-sk",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ]);
        if let Some((crt, key)) = cert {
            c.arg("--cert").arg(crt).arg("--key").arg(key);
        }
        let out = c
            .arg(format!("https://127.0.0.1:{}{path}", e.agent.api_port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("/pods", None), "401");
    assert_eq!(curl("/containerLogs/default/web/main", None), "401");
    assert_eq!(
        curl("/exec/default/web/main?command=id&stdout=1", None),
        "401"
    );
    assert_eq!(curl("/healthz", None), "200");
    let pki = e.agent.root_dir.join("pki");
    let other = (pki.join("node.crt"), pki.join("node.key"));
    assert_eq!(
        curl("/pods", Some((other.0.as_path(), other.1.as_path()))),
        "000"
    );
    // kubectl logs goes through the API server's pods/log proxy to the node API.
    let out = e.server.kubectl_ok(33, &["logs", "web"]);
    assert!(out.starts_with("hello from web\n"), "kubectl logs: {out:?}");
    let out = e
        .server
        .kubectl_ok(33, &["logs", "web", "--tail=1", "--timestamps"]);
    assert_eq!(out.lines().count(), 1, "{out:?}");
    assert!(out.contains("Z tick "), "{out:?}");
    let tick = |line: &str| {
        line.split_whitespace()
            .last()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let before = tick(out.trim_end());
    // -f: the output keeps growing while the container runs; stopped after 2 s.
    let mut follow = e
        .server
        .kubectl_cmd(33, &["logs", "-f", "web"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = follow.kill();
    let followed = follow.wait_with_output().unwrap();
    let followed = String::from_utf8_lossy(&followed.stdout).into_owned();
    assert!(followed.starts_with("hello from web\n"), "{followed:?}");
    let last = tick(followed.lines().last().unwrap_or_default());
    assert!(
        last >= before + 3,
        "kubectl logs -f did not stream new lines: last {last}, before {before}: {followed:?}"
    );
    exec_through_the_api_server(&e);
    exec_with_kube_rs(&e).await;
    attach_with_kubectl(&e).await;
    termination_messages(&e).await;
}

/// An exited container's termination message: what it wrote to
/// /dev/termination-log, or under FallbackToLogsOnError its last log lines.
async fn termination_messages(e: &Env) {
    let image = e.reg.image(BUSYBOX);
    let never = json!({"restartPolicy": "Never"});
    create(
        &e.client,
        pod_json(
            "farewell",
            &e.agent.node_name,
            &image,
            "echo -n bye from the file > /dev/termination-log; echo not this; exit 3",
            never.clone(),
        ),
    )
    .await;
    let mut fallback = pod_json(
        "fallback",
        &e.agent.node_name,
        &image,
        "echo first words; echo last words; exit 4",
        never,
    );
    fallback["spec"]["containers"][0]["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    create(&e.client, fallback).await;
    let failed = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
    for (name, want) in [
        ("farewell", "bye from the file"),
        ("fallback", "first words\nlast words\n"),
    ] {
        let p = wait_pod(e, name, "Failed", Duration::from_secs(60), failed).await;
        let t = main_status(&p)
            .state
            .and_then(|s| s.terminated)
            .expect("terminated");
        assert_eq!(t.message.as_deref(), Some(want), "{name}");
    }
}

/// A client library's exec (kube-rs, WebSocket): output and the exit code
/// in the final Status.
async fn exec_with_kube_rs(e: &Env) {
    use tokio::io::AsyncReadExt;
    let pods: Api<Pod> = Api::namespaced(e.client.clone(), "default");
    let mut attached = pods
        .exec(
            "web",
            ["sh", "-c", "echo from kube-rs; exit 5"],
            &kube::api::AttachParams::default().stderr(false),
        )
        .await
        .expect("kube-rs exec");
    let mut out = String::new();
    attached
        .stdout()
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .unwrap();
    let status = attached
        .take_status()
        .expect("status")
        .await
        .expect("a status");
    assert_eq!(out, "from kube-rs\n");
    assert_eq!(
        status.reason.as_deref(),
        Some("NonZeroExitCode"),
        "{status:?}"
    );
    let causes = status.details.and_then(|d| d.causes).unwrap_or_default();
    assert_eq!(causes[0].message.as_deref(), Some("5"), "{causes:?}");
}

/// `kubectl exec` into the running pod `web`, through the API server's
/// pods/exec passage to the node API: kubectl 1.33 over WebSocket
/// (v5.channel.k8s.io), 1.27 over SPDY (v4.channel.k8s.io).
fn exec_through_the_api_server(e: &Env) {
    for minor in keelson_e2e::kubectl_versions() {
        exec_with_kubectl(e, minor);
    }
    // A server on the pod's loopback only, for port-forward.
    e.server.kubectl_ok(
        33,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo forwarded > /tmp/index.html && httpd -p 127.0.0.1:8080 -h /tmp",
        ],
    );
    for minor in keelson_e2e::kubectl_versions() {
        port_forward_with_kubectl(e, minor);
    }
    proxy_through_the_api_server(e);
}

/// `kubectl attach -i` to a pod started with `stdin: true`: what kubectl
/// sends reaches the container's input, its new output (stdout and stderr)
/// comes back; kubectl 1.33 over WebSocket, 1.27 over SPDY.
async fn attach_with_kubectl(e: &Env) {
    let image = e.reg.image(BUSYBOX);
    let mut p = pod_json(
        "talker",
        &e.agent.node_name,
        &image,
        "while read l; do echo \"heard $l\"; echo \"err $l\" >&2; done",
        json!({}),
    );
    p["spec"]["containers"][0]["stdin"] = json!(true);
    create(&e.client, p).await;
    wait_pod(e, "talker", "Running", Duration::from_secs(60), running).await;
    for minor in keelson_e2e::kubectl_versions() {
        let mut child = e
            .server
            .kubectl_cmd(minor, &["attach", "-i", "talker"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // Attached once kubectl is connected: say something until heard.
        let word = format!("hello-{minor}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut heard = false;
        while !heard && Instant::now() < deadline {
            use std::io::Write;
            let _ = writeln!(stdin, "{word}");
            while let Ok(l) = rx.recv_timeout(Duration::from_millis(700)) {
                if l == format!("heard {word}") {
                    heard = true;
                    break;
                }
            }
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(
            heard,
            "kubectl 1.{minor} attach: nothing heard; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `pods/{name}:{port}/proxy/...` and `services/{name}:{port}/proxy/...`:
/// the API server asks the pod (or a ready endpoint of the Service).
fn proxy_through_the_api_server(e: &Env) {
    e.server.kubectl_ok(
        33,
        &["exec", "web", "--", "sh", "-c", "httpd -p 8081 -h /tmp"],
    );
    let body = e.server.kubectl_ok(
        33,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/web:8081/proxy/index.html",
        ],
    );
    assert_eq!(body, "forwarded\n");
    e.server
        .kubectl_ok(33, &["label", "pod", "web", "app=proxied"]);
    e.server.kubectl_ok(
        33,
        &["create", "service", "clusterip", "proxied", "--tcp=80:8081"],
    );
    e.server.kubectl_ok(
        33,
        &["set", "selector", "service", "proxied", "app=proxied"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = e.server.kubectl(
            33,
            &[
                "get",
                "--raw",
                "/api/v1/namespaces/default/services/proxied:80/proxy/index.html",
            ],
        );
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "forwarded\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service proxy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A port nothing listens on: the API server says why.
    let out = e.server.kubectl(
        33,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/web:9/proxy/",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error trying to reach pod"),
        "{out:?}"
    );
}

/// `kubectl port-forward` to the pod's loopback-only HTTP server (kubectl
/// 1.33 tunnels SPDY in a WebSocket, 1.27 upgrades to SPDY), and to a
/// port nothing listens on (the error comes back on the error stream).
fn port_forward_with_kubectl(e: &Env, minor: u32) {
    use std::io::{BufRead, Read, Write};
    let mut child = e
        .server
        .kubectl_cmd(minor, &["port-forward", "pod/web", "0:8080", "0:9999"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // "Forwarding from 127.0.0.1:PORT -> 8080"
    let mut local = std::collections::BTreeMap::new();
    while local.len() < 2 {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:")
            && let Some((port, remote)) = rest.split_once(" -> ")
        {
            local.insert(remote.trim().to_string(), port.parse::<u16>().unwrap());
        }
    }
    let get = |port: u16| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"GET /index.html HTTP/1.0\r\nHost: web\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        let _ = c.read_to_string(&mut body);
        body
    };
    let ok = get(local["8080"]);
    let refused = get(local["9999"]);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        ok.starts_with("HTTP/1.") && ok.ends_with("forwarded\n"),
        "kubectl 1.{minor} port-forward: {ok:?} {stderr}"
    );
    assert_eq!(refused, "", "kubectl 1.{minor}");
    assert!(
        stderr.contains("error forwarding port 9999"),
        "kubectl 1.{minor}: {stderr}"
    );
}

fn exec_with_kubectl(e: &Env, minor: u32) {
    // Output and errors apart, the exit code propagated.
    let out = e.server.kubectl(
        minor,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "kubectl 1.{minor}: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("err\n"),
        "{out:?}"
    );
    // Input to the end: the command sees EOF when kubectl's stdin ends.
    let mut child = e
        .server
        .kubectl_cmd(
            minor,
            &["exec", "-i", "web", "--", "busybox", "tr", "a-z", "A-Z"],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello from stdin\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO FROM STDIN\n");
    // A terminal (kubectl under `script`, which gives it one, sized
    // 91x27): the command has a tty of that size; its exit code comes back.
    let kubectl = keelson_e2e::kubectl_path(minor);
    let line = format!(
        "stty cols 91 rows 27; {} exec -it web -- sh -c 'busybox tty; busybox stty size; exit 4'",
        kubectl.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("KUBECONFIG", &e.server.kubeconfig)
        .env("HOME", &e.server.data_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{out:?} {text}");
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("27 91"), "{text:?}");
    // kubectl cp (tar through exec) into the pod and back out.
    let dir = e.agent.root_dir.parent().unwrap();
    let local = dir.join(format!("cp-in-{minor}.txt"));
    let back = dir.join(format!("cp-out-{minor}.txt"));
    let content = format!("copied by kubectl 1.{minor}\n");
    std::fs::write(&local, &content).unwrap();
    let remote = format!("web:/tmp/cp-{minor}.txt");
    e.server
        .kubectl_ok(minor, &["cp", local.to_str().unwrap(), &remote]);
    let inside = e.server.kubectl_ok(
        minor,
        &["exec", "web", "--", "cat", &format!("/tmp/cp-{minor}.txt")],
    );
    assert_eq!(inside, content, "kubectl 1.{minor} cp into the pod");
    e.server
        .kubectl_ok(minor, &["cp", &remote, back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        content,
        "kubectl 1.{minor} cp out of the pod"
    );
    // A container that does not exist, a pod that does not: kubectl's errors.
    let out = e
        .server
        .kubectl(minor, &["exec", "web", "-c", "nope", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container nope is not valid"),
        "{out:?}"
    );
}

mod ipnet_check {
    /// A tiny IPv4 CIDR (the tests crate has no ipnet dependency).
    pub struct Net(u32, u32);
    impl std::str::FromStr for Net {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let (a, l) = s.split_once('/').ok_or("no /")?;
            let a: std::net::Ipv4Addr = a.parse().map_err(|e| format!("{e}"))?;
            let l: u32 = l.parse().map_err(|e| format!("{e}"))?;
            let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
            Ok(Net(u32::from(a) & mask, mask))
        }
    }
    impl Net {
        pub fn contains(&self, ip: std::net::Ipv4Addr) -> bool {
            u32::from(ip) & self.1 == self.0
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backoff_and_oom_killed() {
    let Some(e) = env("agent-crash").await else {
        return;
    };
    let image = e.reg.image(BUSYBOX);
    create(
        &e.client,
        pod_json(
            "crash",
            &e.agent.node_name,
            &image,
            "echo crashing; exit 3",
            json!({}),
        ),
    )
    .await;
    let oom = pod_json(
        "oom",
        &e.agent.node_name,
        &image,
        "exec dd if=/dev/zero of=/dev/null bs=200M count=1",
        json!({"restartPolicy": "Never"}),
    );
    let mut oom = oom;
    oom["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "32Mi"}});
    create(&e.client, oom).await;
    let p = wait_pod(&e, "oom", "OOMKilled", Duration::from_secs(60), |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| {
                cs[0]
                    .state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some()
            })
    })
    .await;
    let t = main_status(&p).state.unwrap().terminated.unwrap();
    assert_eq!(t.reason.as_deref(), Some("OOMKilled"), "{t:?}");
    assert_eq!(t.exit_code, 137);
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Failed"));
    assert_eq!(
        p.status.as_ref().unwrap().qos_class.as_deref(),
        Some("Burstable")
    );
    // First restart is immediate; the second exit waits 10 s: CrashLoopBackOff.
    let p = wait_pod(
        &e,
        "crash",
        "CrashLoopBackOff",
        Duration::from_secs(40),
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| {
                    cs[0].restart_count >= 1
                        && cs[0]
                            .state
                            .as_ref()
                            .and_then(|s| s.waiting.as_ref())
                            .and_then(|w| w.reason.as_deref())
                            == Some("CrashLoopBackOff")
                })
        },
    )
    .await;
    let cs = main_status(&p);
    let last = cs
        .last_state
        .unwrap()
        .terminated
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 3);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert!(
        cs.state
            .unwrap()
            .waiting
            .unwrap()
            .message
            .unwrap()
            .contains("back-off 10s")
    );
    // Held back: the next attempt starts 10 s after the last exit, by the
    // pod's own clock (the agent's timestamps), whenever this test happens
    // to look. Waits for that restart instead of sleeping for a guess.
    let n = cs.restart_count;
    let exited = last.finished_at.expect("lastState.terminated.finishedAt").0;
    let p = wait_pod(
        &e,
        "crash",
        "the restart after the back-off",
        Duration::from_secs(40),
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| {
                    cs[0].restart_count > n
                        && cs[0]
                            .last_state
                            .as_ref()
                            .and_then(|s| s.terminated.as_ref())
                            .and_then(|t| t.started_at.as_ref())
                            .is_some_and(|t| t.0 > exited)
                })
        },
    )
    .await;
    let restarted = main_status(&p)
        .last_state
        .and_then(|s| s.terminated)
        .and_then(|t| t.started_at)
        .expect("startedAt of the restarted attempt")
        .0;
    // Timestamps have whole seconds: 10 s apart can read as 9.
    let waited = restarted.as_second() - exited.as_second();
    assert!(
        waited >= 9,
        "restarted {waited} s after the exit, during the 10 s back-off"
    );
    // --previous serves the earlier attempt's log (node API and kubectl).
    let (code, body) = e
        .agent
        .node_api("/containerLogs/default/crash/main?previous=true");
    assert_eq!((code, body.as_str()), (200, "crashing\n"));
    let out = e.server.kubectl_ok(33, &["logs", "crash", "--previous"]);
    assert_eq!(out, "crashing\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_honours_grace_and_leaves_nothing() {
    let Some(e) = env("agent-delete").await else {
        return;
    };
    let image = e.reg.image(BUSYBOX);
    // Ignores SIGTERM: only SIGKILL after the grace period stops it.
    create(
        &e.client,
        pod_json(
            "stubborn",
            &e.agent.node_name,
            &image,
            "trap '' TERM; while true; do sleep 0.2; done",
            json!({}),
        ),
    )
    .await;
    let p = wait_pod(&e, "stubborn", "Running", Duration::from_secs(60), running).await;
    let uid = p.metadata.uid.clone().unwrap();
    assert_eq!(e.agent.ip_allocations().len(), 1);
    assert_eq!(e.agent.bridge_ports().len(), 1, "one veth on the bridge");
    assert!(
        e.agent
            .cgroup_dirs()
            .iter()
            .any(|d| d.to_string_lossy().contains(&uid))
    );
    let api: Api<Pod> = Api::namespaced(e.client.clone(), "default");
    let t0 = Instant::now();
    api.delete(
        "stubborn",
        &DeleteParams {
            grace_period_seconds: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        gone(&e, "stubborn", Duration::from_secs(30)).await,
        "pod not finalized; log:\n{}",
        e.agent.log()
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "deleted before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(15), "deletion took {took:?}");
    assert!(
        e.agent.runc_containers().is_empty(),
        "containers left: {:?}",
        e.agent.runc_containers()
    );
    let mounts: Vec<String> = e
        .agent
        .mounts()
        .into_iter()
        .filter(|m| m.contains(&uid) || m.contains("/containers/"))
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    let cg: Vec<_> = e
        .agent
        .cgroup_dirs()
        .into_iter()
        .filter(|d| d.to_string_lossy().contains(&uid))
        .collect();
    assert!(cg.is_empty(), "cgroups left: {cg:?}");
    assert!(
        !e.agent.run_dir.join("sandboxes").join(&uid).exists(),
        "netns files left"
    );
    assert!(
        e.agent.ip_allocations().is_empty(),
        "IPs left: {:?}",
        e.agent.ip_allocations()
    );
    assert!(
        e.agent.bridge_ports().is_empty(),
        "veths left: {:?}",
        e.agent.bridge_ports()
    );
    assert!(
        !e.agent.root_dir.join("pods").join(&uid).exists(),
        "pod dir left"
    );
}

fn runc_pid(agent: &AgentProcess, id: &str) -> u32 {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(agent.runc_root())
        .args(["state", id])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["pid"].as_u64().unwrap_or(0) as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_running_containers() {
    let Some(mut e) = env("agent-adopt").await else {
        return;
    };
    let image = e.reg.image(BUSYBOX);
    let names: Vec<String> = (0..5).map(|i| format!("keep-{i}")).collect();
    for n in &names {
        create(
            &e.client,
            pod_json(
                n,
                &e.agent.node_name,
                &image,
                "while true; do sleep 0.5; done",
                json!({}),
            ),
        )
        .await;
    }
    let mut before = Vec::new();
    for n in &names {
        let p = wait_pod(&e, n, "Running", Duration::from_secs(90), running).await;
        let id = main_status(&p)
            .container_id
            .unwrap()
            .trim_start_matches("runc://")
            .to_string();
        let pid = runc_pid(&e.agent, &id);
        assert!(pid > 0, "pid of {id}");
        before.push((n.clone(), id, pid, p.status.unwrap().pod_ip));
    }
    e.agent.kill9();
    // While the agent is down: one pod deleted gracefully, one force-deleted.
    let api: Api<Pod> = Api::namespaced(e.client.clone(), "default");
    api.delete("keep-3", &DeleteParams::default())
        .await
        .unwrap();
    api.delete(
        "keep-4",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    e.agent.restart();
    for (n, id, pid, ip) in before.iter().take(3) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let p = wait_pod(&e, n, "Running", Duration::from_secs(30), running).await;
        let cs = main_status(&p);
        assert_eq!(
            cs.container_id.as_deref(),
            Some(format!("runc://{id}").as_str()),
            "{n}"
        );
        assert_eq!(cs.restart_count, 0, "{n} restarted");
        assert_eq!(&p.status.unwrap().pod_ip, ip, "{n} IP changed");
        assert_eq!(
            runc_pid(&e.agent, id),
            *pid,
            "{n}: container process changed"
        );
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{n}: pid {pid} gone"
        );
    }
    assert!(
        gone(&e, "keep-3", Duration::from_secs(30)).await,
        "keep-3 not finalized after restart"
    );
    let start = Instant::now();
    loop {
        let left = e.agent.runc_containers();
        if left.len() == 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "containers after restart: {left:?}\n{}",
            e.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !before[4].1.is_empty() && !e.agent.runc_containers().contains(&before[4].1),
        "force-deleted pod's container still there"
    );
    assert_eq!(
        e.agent.ip_allocations().len(),
        3,
        "IPs: {:?}",
        e.agent.ip_allocations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_reports_err_image_pull_and_others_run() {
    let Some(e) = env("agent-badimg").await else {
        return;
    };
    let good = e.reg.image(BUSYBOX);
    let bad = e.reg.image("keelson-test/does-not-exist:latest");
    create(
        &e.client,
        pod_json("bad", &e.agent.node_name, &bad, "true", json!({})),
    )
    .await;
    create(
        &e.client,
        pod_json(
            "good",
            &e.agent.node_name,
            &good,
            "while true; do sleep 1; done",
            json!({}),
        ),
    )
    .await;
    let p = wait_pod(&e, "bad", "ErrImagePull", Duration::from_secs(60), |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| {
                matches!(
                    cs[0]
                        .state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref()),
                    Some("ErrImagePull" | "ImagePullBackOff")
                )
            })
    })
    .await;
    let w = main_status(&p).state.unwrap().waiting.unwrap();
    assert!(w.message.unwrap_or_default().contains("does-not-exist"));
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
    wait_pod(&e, "good", "Running", Duration::from_secs(60), running).await;
    // The pull, in the kubelet's Events.
    let events = pod_events(&e, "good").await;
    assert!(
        events.contains(&("Pulling".to_string(), format!("Pulling image \"{good}\""))),
        "{events:?}"
    );
    let pulled: Vec<&String> = events
        .iter()
        .filter(|(r, _)| r == "Pulled")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(pulled.len(), 1, "{events:?}");
    let prefix = format!("Successfully pulled image \"{good}\" in ");
    assert!(pulled[0].starts_with(&prefix), "{pulled:?}");
    assert!(
        pulled[0].contains(" including waiting). Image size: "),
        "{pulled:?}"
    );
    let size: u64 = pulled[0]
        .rsplit("Image size: ")
        .next()
        .and_then(|s| s.strip_suffix(" bytes."))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(size > 1_000_000, "busybox is about 2 MB: {pulled:?}");
    // The image store's typed errors reach the status as the kubelet's
    // reasons: a reference that does not parse, and Never with no image.
    let waiting_reason = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs[0].state.as_ref()?.waiting.as_ref()?.reason.clone())
    };
    create(
        &e.client,
        pod_json(
            "invalid",
            &e.agent.node_name,
            "Not A::Valid//Name",
            "true",
            json!({}),
        ),
    )
    .await;
    let mut never = pod_json("never", &e.agent.node_name, &bad, "true", json!({}));
    never["spec"]["containers"][0]["imagePullPolicy"] = json!("Never");
    create(&e.client, never).await;
    for (name, reason) in [
        ("invalid", "InvalidImageName"),
        ("never", "ErrImageNeverPull"),
    ] {
        let p = wait_pod(&e, name, reason, Duration::from_secs(60), |p| {
            waiting_reason(p).as_deref() == Some(reason)
        })
        .await;
        assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
    }
    // A bad command: CreateContainerError or a crash, with a reason.
    let mut cmd = pod_json(
        "badcmd",
        &e.agent.node_name,
        &good,
        "",
        json!({"restartPolicy": "Never"}),
    );
    cmd["spec"]["containers"][0]["command"] = json!(["/no/such/binary"]);
    create(&e.client, cmd).await;
    let p = wait_pod(
        &e,
        "badcmd",
        "a failure reason",
        Duration::from_secs(60),
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| {
                    let s = cs[0].state.as_ref();
                    s.and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        == Some("CreateContainerError")
                        || s.and_then(|s| s.terminated.as_ref())
                            .is_some_and(|t| t.exit_code != 0)
                })
        },
    )
    .await;
    eprintln!("bad command status: {:?}", main_status(&p).state);
    wait_pod(&e, "good", "still Running", Duration::from_secs(5), running).await;
}

/// An [`Env`] whose agent networks its pods as `network` says (None: skip).
async fn env_with(test: &str, network: keelson_e2e::agent::Network) -> Option<Env> {
    env_full(test, network, &[]).await
}

/// [`env_with`] with flags for the server.
async fn env_full(
    test: &str,
    network: keelson_e2e::agent::Network,
    server_args: &[&str],
) -> Option<Env> {
    if !can_run(test) {
        return None;
    }
    if !keelson_e2e::needs(test).workspace_bin("keelson-cni").ok() {
        return None;
    }
    let reg = Registry::with_test_images_or_skip()?;
    let server = ServerProcess::start_with(None, server_args);
    let client = server.client().await;
    let agent = AgentProcess::start_with(&server, test, &[], network);
    Some(Env {
        agent,
        reg,
        server,
        client,
    })
}

/// A pod serving "hello from <name>" on port 8080 of its address.
fn web_pod(e: &Env, name: &str) -> serde_json::Value {
    pod_json(
        name,
        &e.agent.node_name,
        &e.reg.image(BUSYBOX),
        "mkdir -p /www && echo hello from $MY_POD > /www/index.html && exec httpd -f -p 8080 -h /www",
        json!({}),
    )
}

fn curl(url: &str) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5", url])
        .output()
        .expect("run curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn ready_condition(node: &Node) -> (String, String, String) {
    let c = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .cloned()
        .expect("a Ready condition");
    (
        c.status,
        c.reason.unwrap_or_default(),
        c.message.unwrap_or_default(),
    )
}

#[tokio::test]
async fn without_cni_configuration_the_agent_networks_pods_itself() {
    let Some(e) = env_with("agent-own-cni", keelson_e2e::agent::Network::Own).await else {
        return;
    };
    create(&e.client, web_pod(&e, "web")).await;
    let p = wait_pod(&e, "web", "Running", Duration::from_secs(60), running).await;
    let ip: std::net::Ipv4Addr = p.status.unwrap().pod_ip.expect("pod IP").parse().unwrap();
    let net: ipnet_check::Net = e.agent.subnet.parse().unwrap();
    assert!(net.contains(ip), "pod IP {ip} not in {}", e.agent.subnet);
    // It answers on that address, from the host (keelson-cni's routed veth).
    let start = Instant::now();
    let mut body = None;
    while body.is_none() && start.elapsed() < Duration::from_secs(20) {
        body = curl(&format!("http://{ip}:8080/"));
    }
    assert_eq!(body.as_deref(), Some("hello from web"), "{}", e.agent.log());
    // The configuration it made for itself, in its own dir.
    let own = std::fs::read_to_string(e.agent.root_dir.join("cni/net.d/10-keelson.conflist"))
        .expect("the agent's own conflist");
    assert!(own.contains("\"keelson-cni\""), "{own}");
    assert!(own.contains(&e.agent.subnet), "{own}");
    let node = Api::<Node>::all(e.client.clone())
        .get(&e.agent.node_name)
        .await
        .unwrap();
    assert_eq!(ready_condition(&node).0, "True");
}

#[tokio::test]
async fn without_a_pod_network_the_node_is_not_ready_until_it_has_a_pod_cidr() {
    let Some(e) = env_with("agent-no-cni", keelson_e2e::agent::Network::Nothing).await else {
        return;
    };
    let nodes: Api<Node> = Api::all(e.client.clone());
    let name = e.agent.node_name.clone();
    let (status, reason, message) = ready_condition(&nodes.get(&name).await.unwrap());
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "KubeletNotReady"),
        "{message}"
    );
    assert!(
        message.starts_with(
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady"
        ),
        "{message}"
    );
    assert!(message.contains("no pod CIDR"), "{message}");
    // The node API's health check says the same.
    let (code, body) = e.agent.node_api("/healthz");
    assert_eq!(code, 500, "{body}");
    assert!(
        body.contains("[-]network failed: NetworkPluginNotReady"),
        "{body}"
    );

    // A pod bound to it waits, with the kubelet's Event.
    create(&e.client, web_pod(&e, "waiting")).await;
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(e.client.clone(), "default");
    let start = Instant::now();
    loop {
        let list = events
            .list(&kube::api::ListParams::default().fields("involvedObject.name=waiting"))
            .await
            .unwrap();
        if let Some(ev) = list
            .items
            .iter()
            .find(|ev| ev.reason.as_deref() == Some("NetworkNotReady"))
        {
            assert_eq!(ev.type_.as_deref(), Some("Warning"));
            assert!(
                ev.message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("NetworkPluginNotReady"),
                "{ev:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no NetworkNotReady event: {:?}\n{}",
            list.items.iter().map(|e| &e.reason).collect::<Vec<_>>(),
            e.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let p = Api::<Pod>::namespaced(e.client.clone(), "default")
        .get("waiting")
        .await
        .unwrap();
    assert!(p.status.and_then(|s| s.pod_ip).is_none());

    // The control plane gives the Node a pod CIDR: the agent networks pods
    // in it, the Node turns Ready and the pod runs.
    e.server.kubectl_ok(
        33,
        &[
            "patch",
            "node",
            &name,
            "--type=merge",
            "-p",
            &json!({"spec": {"podCIDR": e.agent.subnet, "podCIDRs": [e.agent.subnet]}}).to_string(),
        ],
    );
    let p = wait_pod(&e, "waiting", "Running", Duration::from_secs(60), running).await;
    let ip: std::net::Ipv4Addr = p.status.unwrap().pod_ip.expect("pod IP").parse().unwrap();
    let net: ipnet_check::Net = e.agent.subnet.parse().unwrap();
    assert!(net.contains(ip), "pod IP {ip} not in {}", e.agent.subnet);
    assert_eq!(ready_condition(&nodes.get(&name).await.unwrap()).0, "True");
    let (code, body) = e.agent.node_api("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok"));
}

/// Node IPAM: with --cluster-cidr the control plane gives each Node the
/// first free block (around one a Node brought itself), the agent networks
/// pods in it, a Node left without gets CIDRNotAvailable, and a deleted
/// Node's block goes to the next.
#[tokio::test]
async fn the_control_plane_gives_each_node_a_pod_cidr() {
    // Two /24 blocks.
    let nodes_yaml = |name: &str, cidr: Option<&str>| {
        let mut n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
        if let Some(c) = cidr {
            n["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
        }
        n
    };
    let Some(e) = env_full(
        "agent-node-ipam",
        keelson_e2e::agent::Network::Nothing,
        &[
            "--cluster-cidr",
            "10.99.0.0/23",
            "--node-cidr-mask-size",
            "24",
        ],
    )
    .await
    else {
        return;
    };
    let nodes: Api<Node> = Api::all(e.client.clone());
    let cidr_of = |n: &Node| n.spec.as_ref().and_then(|s| s.pod_cidr.clone());
    // A Node that brought its own block (the second): whenever the agent
    // registers, the first is the one free.
    let other = "10.99.1.0/24".to_string();
    nodes
        .create(
            &Default::default(),
            &serde_json::from_value(nodes_yaml("ipam-other", Some(&other))).unwrap(),
        )
        .await
        .unwrap();
    let name = e.agent.node_name.clone();
    let start = Instant::now();
    let mine = loop {
        if let Some(c) = cidr_of(&nodes.get(&name).await.unwrap()) {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no pod CIDR given to {name}\n{}",
            e.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(mine, "10.99.0.0/24");
    let n = nodes.get(&name).await.unwrap();
    assert_eq!(n.spec.unwrap().pod_cidrs, Some(vec![mine.clone()]));

    // Its pods run in it.
    create(&e.client, web_pod(&e, "web")).await;
    let p = wait_pod(&e, "web", "Running", Duration::from_secs(60), running).await;
    let ip: std::net::Ipv4Addr = p.status.unwrap().pod_ip.expect("pod IP").parse().unwrap();
    let net: ipnet_check::Net = mine.parse().unwrap();
    assert!(net.contains(ip), "pod IP {ip} not in {mine}");
    let start = Instant::now();
    let mut body = None;
    while body.is_none() && start.elapsed() < Duration::from_secs(20) {
        body = curl(&format!("http://{ip}:8080/"));
    }
    assert_eq!(body.as_deref(), Some("hello from web"), "{}", e.agent.log());

    // A third Node finds the range full, and says so.
    nodes
        .create(
            &Default::default(),
            &serde_json::from_value(nodes_yaml("ipam-late", None)).unwrap(),
        )
        .await
        .unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(e.client.clone());
    let start = Instant::now();
    loop {
        let list = events
            .list(&kube::api::ListParams::default().fields("regarding.name=ipam-late"))
            .await
            .unwrap();
        if list
            .items
            .iter()
            .any(|ev| ev.reason.as_deref() == Some("CIDRNotAvailable"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no CIDRNotAvailable event: {:?}",
            list.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cidr_of(&nodes.get("ipam-late").await.unwrap()), None);
    // The other Node goes: its block is the late one's.
    nodes
        .delete("ipam-other", &Default::default())
        .await
        .unwrap();
    let start = Instant::now();
    while cidr_of(&nodes.get("ipam-late").await.unwrap()).as_deref() != Some(other.as_str()) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the freed block {other} was not given to ipam-late"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nodes
        .delete("ipam-late", &Default::default())
        .await
        .unwrap();
}
