//! Real workloads on a real cluster (one `keelson server`, agents in their
//! own network namespaces, the nftables Service proxy): ConfigMap and Secret
//! volumes, updates reaching running pods, the environment the kubelet
//! builds.
//!
//! Needs root; skips (or fails under KEELSON_REQUIRE_ALL=1) otherwise.

use std::time::{Duration, Instant};

use keelson_e2e::multinode::{Cluster, can_run};

#[test]
fn configmap_and_secret_volumes_serve_and_follow_updates_without_a_restart() {
    if !can_run("configmap_and_secret_volumes_serve_and_follow_updates_without_a_restart") {
        return;
    }
    let started = Instant::now();
    let c = Cluster::start(1, &[]);
    let node = &c.nodes[0];
    c.apply(&format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: site}}
data:
  index.html: "version one"
  greeting: "hello"
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData:
  password: "s3cret"
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {image}
        command: ["sh", "-c", "exec httpd -f -p 80 -h /www"]
        env:
        - name: PASSWORD
          valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}
        envFrom:
        - configMapRef: {{name: site}}
          prefix: SITE_
        volumeMounts:
        - {{name: site, mountPath: /www}}
        - {{name: creds, mountPath: /etc/creds}}
        - {{name: scratch, mountPath: /scratch}}
      volumes:
      - name: site
        configMap: {{name: site}}
      - name: creds
        secret: {{secretName: creds, defaultMode: 0400}}
      - name: scratch
        emptyDir: {{medium: Memory, sizeLimit: 1Mi}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80}}]
"#,
        image = c.busybox()
    ));
    let mut pods = Vec::new();
    c.wait_until("the web pod Running", Duration::from_secs(90), || {
        pods = c.running_pods("web");
        pods.len() == 1
    });
    let pod = pods[0].0.clone();
    let vip = c
        .kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .trim()
        .to_string();
    let get = || {
        let out = node.exec(&["curl", "-s", "--max-time", "5", &format!("http://{vip}/")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    c.wait_until(
        "the page from the ConfigMap",
        Duration::from_secs(30),
        || get() == "version one",
    );
    let pid = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "^httpd -f -p 80 -h /www$"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let pid_before = pid();
    assert!(!pid_before.is_empty());
    let in_pod = |args: &[&str]| {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid_before, "-m", "-r", "-w"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The Secret's file, with its mode, on a tmpfs; the env from both.
    assert_eq!(in_pod(&["cat", "/etc/creds/password"]).1, "s3cret");
    let (_, mode) = in_pod(&["stat", "-L", "-c", "%a", "/etc/creds/password"]);
    assert_eq!(mode.trim(), "400");
    let mounts = std::fs::read_to_string(format!("/proc/{pid_before}/mounts")).unwrap();
    let fs_of = |path: &str| {
        mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(path))
            .and_then(|l| l.split(' ').nth(2))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(fs_of("/etc/creds"), "tmpfs", "{mounts}");
    assert_eq!(fs_of("/scratch"), "tmpfs", "{mounts}");
    // Every emptyDir is world-writable, as the kubelet makes it.
    assert_eq!(in_pod(&["stat", "-c", "%a", "/scratch"]).1.trim(), "777");
    let environ = std::fs::read(format!("/proc/{pid_before}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(environ.contains("PASSWORD=s3cret"), "{environ}");
    // (The shell that starts httpd drops names like SITE_index.html.)
    assert!(environ.contains("SITE_greeting=hello"), "{environ}");
    assert!(environ.contains("WEB_SERVICE_HOST="), "{environ}");
    assert!(environ.contains("KUBERNETES_SERVICE_HOST="), "{environ}");
    // Read-only, as the kubelet mounts API data.
    assert!(!in_pod(&["touch", "/www/x"]).0);
    // The Memory emptyDir is bounded by its sizeLimit.
    assert!(
        !in_pod(&[
            "dd",
            "if=/dev/zero",
            "of=/scratch/big",
            "bs=1024",
            "count=2048"
        ])
        .0
    );

    // Edit the ConfigMap: the page changes within 60 s, same process.
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "site",
        "--type=merge",
        "-p",
        r#"{"data":{"index.html":"version two"}}"#,
    ]);
    let edited = Instant::now();
    c.wait_until("the edited page", Duration::from_secs(60), || {
        get() == "version two"
    });
    println!("ConfigMap edit reached the pod in {:?}", edited.elapsed());
    assert_eq!(pid(), pid_before, "the container was restarted");
    let restarts = c.kubectl_ok(&[
        "get",
        "pod",
        &pod,
        "-o",
        "jsonpath={.status.containerStatuses[0].restartCount}",
    ]);
    assert_eq!(restarts.trim(), "0");
    println!("wall time: {:?}", started.elapsed());
}

#[test]
fn a_host_network_pod_listens_on_the_nodes_address() {
    if !can_run("a_host_network_pod_listens_on_the_nodes_address") {
        return;
    }
    let c = Cluster::start(1, &[]);
    let node = &c.nodes[0];
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hostnet}}
spec:
  nodeName: {node}
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  hostAliases:
  - ip: 10.9.9.9
    hostnames: [db.example]
  containers:
  - name: httpd
    image: {image}
    command: ["sh", "-c", "mkdir -p /srv/hostnet && hostname > /srv/hostnet/index.html && exec httpd -f -p 18080 -h /srv/hostnet"]
"#,
        node = node.name,
        image = c.busybox()
    ));
    c.wait_until(
        "the hostNetwork pod Running",
        Duration::from_secs(60),
        || c.kubectl_ok(&["get", "pod", "hostnet", "-o", "jsonpath={.status.phase}"]) == "Running",
    );
    let pod_ip = c.kubectl_ok(&["get", "pod", "hostnet", "-o", "jsonpath={.status.podIP}"]);
    assert_eq!(pod_ip.trim(), node.ip.to_string());
    // Reached from outside the node, on the node's address.
    let url = format!("http://{}:18080/", node.ip);
    let mut body = None;
    c.wait_until(
        "the pod answers on the node's address",
        Duration::from_secs(20),
        || {
            body = c.curl_from_client(&url);
            body.is_some()
        },
    );
    // Its hostname is the node's (the node's UTS namespace too).
    let node_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(body.unwrap().trim(), node_hostname.trim());
    // hostAliases reach its /etc/hosts.
    let pid = std::process::Command::new("pgrep")
        .args(["-f", "^httpd -f -p 18080 -h /srv/hostnet$"])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-m", "-r", "-w", "cat", "/etc/hosts"])
        .output()
        .unwrap();
    let hosts = String::from_utf8_lossy(&out.stdout);
    assert!(hosts.contains("10.9.9.9\tdb.example"), "{hosts}");
}

#[test]
fn a_private_registry_is_pulled_from_with_an_image_pull_secret_and_refused_without() {
    if !can_run("a_private_registry_is_pulled_from_with_an_image_pull_secret_and_refused_without") {
        return;
    }
    use base64::Engine;
    use keelson_e2e::registry::LOGIN;
    let c = Cluster::start_opts(&keelson_e2e::multinode::ClusterOptions {
        nodes: 1,
        server_extra: &[],
        proxy_mode: keelson_e2e::multinode::ProxyMode::Nftables,
        agent_path: None,
        registry_login: Some(LOGIN),
        join: None,
    });
    let b64 = base64::engine::general_purpose::STANDARD;
    let config = serde_json::json!({"auths": {c.registry.addr(): {
        "username": LOGIN.user,
        "password": LOGIN.password,
    }}});
    let pod = |name: &str, secret: Option<&str>| {
        let secrets = secret
            .map(|s| format!("  imagePullSecrets: [{{name: {s}}}]\n"))
            .unwrap_or_default();
        format!(
            r#"---
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
{secrets}  containers:
  - name: main
    image: {image}
    imagePullPolicy: Always
    command: ["sleep", "3600"]
"#,
            image = c.busybox()
        )
    };
    // Every status change of the pod without a secret, from before it exists.
    let watched = tempfile::NamedTempFile::new().unwrap();
    let mut watch = c
        .kubectl_command(&[
            "get",
            "pods",
            "--field-selector=metadata.name=without-secret",
            "--watch",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}{\"\\n\"}",
        ])
        .stdout(watched.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    c.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: regcred}}
type: kubernetes.io/dockerconfigjson
data:
  .dockerconfigjson: {good}
---
apiVersion: v1
kind: Secret
metadata: {{name: garbled}}
type: kubernetes.io/dockerconfigjson
data:
  .dockerconfigjson: {bad}
{with}{without}{garbled}"#,
        good = b64.encode(config.to_string()),
        bad = b64.encode("{not json"),
        with = pod("with-secret", Some("regcred")),
        without = pod("without-secret", None),
        garbled = pod("garbled-secret", Some("garbled")),
    ));
    let field = |pod: &str, path: &str| {
        c.kubectl_ok(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
    };
    c.wait_until(
        "the pod with the pull secret Running",
        Duration::from_secs(90),
        || field("with-secret", "{.status.phase}") == "Running",
    );
    // Without credentials the registry's refusal is the pod's reason:
    // ErrImagePull first, then the back-off (every change the watch saw).
    let waiting = "{.status.containerStatuses[0].state.waiting.reason}";
    c.wait_until(
        "ImagePullBackOff without the secret",
        Duration::from_secs(90),
        || field("without-secret", waiting) == "ImagePullBackOff",
    );
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = std::fs::read_to_string(watched.path()).unwrap();
    let reasons: Vec<&str> = seen.lines().filter(|l| !l.is_empty()).collect();
    let at = |r: &str| reasons.iter().position(|x| *x == r);
    assert!(
        at("ErrImagePull").is_some() && at("ErrImagePull") < at("ImagePullBackOff"),
        "ErrImagePull, then ImagePullBackOff: {reasons:?}"
    );
    let events = |pod: &str| -> Vec<String> {
        let out = c.kubectl_ok(&[
            "get",
            "events",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.name}|{.reason}|{.message}{\"\\n\"}{end}",
        ]);
        out.lines()
            .filter_map(|l| l.strip_prefix(&format!("{pod}|")).map(String::from))
            .collect()
    };
    let seen = events("without-secret");
    assert!(
        seen.iter()
            .any(|e| e.starts_with("Failed|Failed to pull image")
                && (e.to_lowercase().contains("not authorized")
                    || e.to_lowercase().contains("unauthorized"))),
        "the registry's refusal in an Event: {seen:#?}"
    );
    let message = field(
        "without-secret",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(
        message.to_lowercase().contains("not authorized")
            || message.to_lowercase().contains("unauthorized"),
        "the registry's reason in the message: {message}"
    );
    assert_ne!(field("without-secret", "{.status.phase}"), "Running");
    // A secret that is not a docker config is an Event; the pull goes on
    // without it (and is refused), and the agent keeps running pods.
    c.wait_until(
        "a FailedToRetrieveImagePullSecret Event",
        Duration::from_secs(60),
        || {
            events("garbled-secret").iter().any(|e| {
                e.starts_with("FailedToRetrieveImagePullSecret|") && e.contains("default/garbled")
            })
        },
    );
    c.wait_until(
        "the garbled-secret pod backs off",
        Duration::from_secs(60),
        || field("garbled-secret", waiting) == "ImagePullBackOff",
    );
    assert_eq!(field("with-secret", "{.status.phase}"), "Running");
    assert_eq!(
        field("with-secret", "{.status.containerStatuses[0].restartCount}"),
        "0"
    );
}

#[test]
fn a_pod_lists_pods_with_its_service_account_token_until_it_is_deleted() {
    if !can_run("a_pod_lists_pods_with_its_service_account_token_until_it_is_deleted") {
        return;
    }
    let c = Cluster::start(1, &[]);
    let kubectl = keelson_e2e::kubectl_path(keelson_e2e::multinode::KUBECTL);
    // A static client (kubectl, built with no libc dependency) mounted into
    // the busybox image; it is handed only the pod's own token and CA.
    c.apply(&format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: lister}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [get, list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: lister-reads-pods}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{kind: ServiceAccount, name: lister}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  serviceAccountName: lister
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: {command}
    volumeMounts: [{{name: kubectl, mountPath: /opt/kubectl, readOnly: true}}]
  volumes:
  - name: kubectl
    hostPath: {{path: {kubectl}, type: File}}
---
apiVersion: v1
kind: Pod
metadata: {{name: no-token}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: {command}
"#,
        image = c.busybox(),
        command = keelson_e2e::multinode::httpd_command(),
        kubectl = kubectl.display(),
    ));
    c.wait_until("both pods Running", Duration::from_secs(90), || {
        c.kubectl_ok(&["get", "pods", "-o", "jsonpath={.items[*].status.phase}"])
            == "Running Running"
    });
    // Admission: the account's token volume in the one pod, none in the other.
    let vols = c.kubectl_ok(&[
        "get",
        "pod",
        "client",
        "-o",
        "jsonpath={.spec.volumes[*].name}",
    ]);
    assert!(
        vols.contains("kube-api-access-"),
        "token volume injected: {vols}"
    );
    let mounts = c.kubectl_ok(&[
        "get",
        "pod",
        "client",
        "-o",
        "jsonpath={.spec.containers[0].volumeMounts[*].mountPath}",
    ]);
    assert!(
        mounts.contains("/var/run/secrets/kubernetes.io/serviceaccount"),
        "{mounts}"
    );
    let none = c.kubectl_ok(&["get", "pod", "no-token", "-o", "jsonpath={.spec.volumes}"]);
    assert!(!none.contains("kube-api-access"), "automount false: {none}");
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "pod",
            "no-token",
            "-o",
            "jsonpath={.spec.serviceAccountName}"
        ]),
        "default"
    );
    // The published CA is the server's.
    let published = c.kubectl_ok(&[
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    let data_dir = c.server.kubeconfig.parent().unwrap().to_path_buf();
    let ca = std::fs::read_to_string(data_dir.join("pki/ca.crt")).unwrap();
    assert_eq!(published.trim(), ca.trim());

    // Inside the pod: the token and CA, through the cluster DNS name.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let in_pod = |verb: &str| {
        let script = format!(
            "HOME=/tmp /opt/kubectl --kubeconfig=/dev/null --server=https://kubernetes.default.svc \
             --token=$(cat {sa}/token) --certificate-authority={sa}/ca.crt --request-timeout=4s {verb}"
        );
        let out = c.exec_in_pod("client", &["sh", "-c", &script]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, listed) = in_pod("get pods -o name");
    assert!(
        ok && listed.contains("pod/client"),
        "listed with its token: {listed}"
    );
    let (ok, me) = in_pod("auth whoami -o jsonpath={.status.userInfo.username}");
    assert!(ok, "{me}");
    assert_eq!(me.trim(), "system:serviceaccount:default:lister");
    let ns = c.exec_in_pod("client", &["cat", &format!("{sa}/namespace")]);
    assert_eq!(String::from_utf8_lossy(&ns.stdout), "default");

    // From outside: the same token works until the pod is deleted.
    let token = String::from_utf8(
        c.exec_in_pod("client", &["cat", &format!("{sa}/token")])
            .stdout,
    )
    .unwrap();
    let with_token = |token: &str| {
        let out = c
            .kubectl_command(&[
                "--kubeconfig=/dev/null",
                &format!("--server={}", c.server.url),
                &format!("--token={token}"),
                &format!(
                    "--certificate-authority={}",
                    data_dir.join("pki/ca.crt").display()
                ),
                "get",
                "pods",
                "-o",
                "name",
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = with_token(&token);
    assert!(ok && out.contains("pod/client"), "{out}");
    // A forged token (another payload under the same signature) is refused.
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = String::from_utf8(b.decode(&parts[1]).unwrap()).unwrap();
        parts[1] = b.encode(claims.replace("lister", "default"));
    }
    let (ok, out) = with_token(&parts.join("."));
    assert!(!ok && out.contains("Unauthorized"), "forged: {out}");
    c.kubectl_ok(&["delete", "pod", "client", "--wait=true"]);
    let (ok, out) = with_token(&token);
    assert!(
        !ok && out.contains("Unauthorized"),
        "after the pod is gone: {out}"
    );
}

/// A Job runs its pods until three succeed, two at a time, and is then
/// Complete (`kubectl wait --for=condition=complete`); a Job whose pods fail
/// stops at its backoff limit, Failed; deleting a Job deletes its pods.
#[test]
fn jobs_run_to_completion_or_fail_at_their_backoff_limit() {
    if !can_run("jobs_run_to_completion_or_fail_at_their_backoff_limit") {
        return;
    }
    let c = Cluster::start(1, &[]);
    c.apply(&format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: counted}}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: {image}
        command: ["sh", "-c", "echo working; sleep 1"]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: doomed}}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: {image}
        command: ["sh", "-c", "exit 2"]
"#,
        image = c.busybox(),
    ));
    c.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/counted",
        "--timeout=120s",
    ]);
    let job = json_of(&c, &["get", "job", "counted"]);
    assert_eq!(job["status"]["succeeded"], 3, "{job}");
    assert!(job["status"]["completionTime"].is_string(), "{job}");
    let pods = json_of(&c, &["get", "pods", "-l", "job-name=counted"]);
    let pods = pods["items"].as_array().unwrap();
    assert_eq!(pods.len(), 3, "one pod per completion");
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Succeeded"));
    let logs = c.kubectl_ok(&["logs", "job/counted"]);
    assert_eq!(logs, "working\n");

    c.kubectl_ok(&[
        "wait",
        "--for=condition=failed",
        "job/doomed",
        "--timeout=120s",
    ]);
    let job = json_of(&c, &["get", "job", "doomed"]);
    assert_eq!(job["status"]["failed"], 2, "{job}");
    let failed = job["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap();
    assert_eq!(failed["reason"], "BackoffLimitExceeded");

    // A Job without a valid restart policy is refused, saying why.
    let out = c.kubectl(&[
        "create",
        "job",
        "bad",
        "--image=busybox",
        "--dry-run=client",
        "-o",
        "json",
    ]);
    let mut bad: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    bad["spec"]["template"]["spec"]["restartPolicy"] = "Always".into();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bad.to_string()).unwrap();
    let out = c.kubectl(&["create", "-f", file.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.template.spec.restartPolicy"),
        "{out:?}"
    );

    c.kubectl_ok(&["delete", "job", "counted", "--wait=true"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = json_of(&c, &["get", "pods", "-l", "job-name=counted"]);
        if left["items"].as_array().is_some_and(|a| a.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the Job's pods outlived it");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `kubectl ARGS -o json`, parsed.
fn json_of(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.kubectl_ok(&a)).expect("kubectl -o json")
}
