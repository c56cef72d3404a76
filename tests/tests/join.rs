//! Joining without admin credentials: an agent in its own network namespace
//! joins with only `--server`, `--token` and `--ca-cert-hash` (from `keelson
//! token create --print-join-command`), gets a `system:node:NAME`
//! certificate through a CertificateSigningRequest, runs a pod that mounts
//! a Secret (read through the node authorizer), and renews its certificate
//! (a 60 s one here) while it keeps working. A wrong CA hash or token is
//! refused before anything is written.

use std::process::Command;
use std::time::{Duration, SystemTime};

use keelson_e2e::multinode::{Cluster, ClusterOptions, ProxyMode, can_run, join_command};

fn cert_subject_and_start(pem: &str) -> (String, Vec<String>, i64) {
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            pem.lines()
                .skip_while(|l| !l.starts_with("-----BEGIN"))
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect::<String>(),
        )
        .expect("PEM");
    let user = keelson_control_plane::server::auth::user_from_cert(&der).expect("a certificate");
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    (user.name, user.groups, c.validity().not_before.timestamp())
}

#[test]
fn an_agent_joins_with_a_token_and_renews_its_certificate() {
    if !can_run("an_agent_joins_with_a_token_and_renews_its_certificate") {
        return;
    }
    let c = Cluster::start_opts(&ClusterOptions {
        nodes: 1,
        server_extra: &[],
        proxy_mode: ProxyMode::Nftables,
        agent_path: None,
        registry_login: None,
        join: Some(&["--node-cert-ttl", "60s"]),
    });
    let node = &c.nodes[0];
    // Its credentials are its own: system:node:NAME, not the admin's.
    let cert_file = node.root_dir.join("pki/node-client.crt");
    let pem = std::fs::read_to_string(&cert_file).expect("the node's certificate");
    let (name, groups, first_start) = cert_subject_and_start(&pem);
    assert_eq!(name, format!("system:node:{}", node.name));
    assert_eq!(groups, vec!["system:nodes"]);
    assert!(
        !node.root_dir.join("pki").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("admin")),
        "no admin credentials on the node"
    );
    let csrs = c.kubectl_ok(&[
        "get",
        "csr",
        "-o",
        "jsonpath={range .items[*]}{.spec.username} {.status.conditions[0].reason}{\"\\n\"}{end}",
    ]);
    assert!(
        csrs.lines()
            .any(|l| l.starts_with("system:bootstrap:") && l.ends_with("AutoApproved")),
        "{csrs}"
    );

    // A pod with a Secret volume runs on it (the node reads the Secret
    // through the node authorizer).
    c.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: pass}}
stringData: {{word: swordfish}}
---
apiVersion: v1
kind: Pod
metadata: {{name: joined}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: {command}
    volumeMounts: [{{name: s, mountPath: /secret}}]
  volumes: [{{name: s, secret: {{secretName: pass}}}}]
"#,
        node = node.name,
        image = c.busybox(),
        command = keelson_e2e::multinode::httpd_command(),
    ));
    c.wait_until("the pod Running", Duration::from_secs(90), || {
        c.kubectl_ok(&["get", "pod", "joined", "-o", "jsonpath={.status.phase}"]) == "Running"
    });
    let out = c.exec_in_pod("joined", &["cat", "/secret/word"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "swordfish");

    // The node API asks the API server who may do what
    // (SubjectAccessReview on nodes/proxy), with the node's own identity.
    let pki_dir = c.server.kubeconfig.parent().unwrap().join("pki");
    let ca = keelson_control_plane::server::pki::CertPair {
        cert_pem: std::fs::read_to_string(pki_dir.join("ca.crt")).unwrap(),
        key_pem: std::fs::read_to_string(pki_dir.join("ca.key")).unwrap(),
    };
    let certs = tempfile::tempdir().unwrap();
    let pair = |name: &str| {
        let p = keelson_control_plane::server::pki::issue(&ca, name, &[], &[], false).unwrap();
        let (crt, key) = (
            certs.path().join(format!("{name}.crt")),
            certs.path().join(format!("{name}.key")),
        );
        std::fs::write(&crt, p.cert_pem).unwrap();
        std::fs::write(&key, p.key_pem).unwrap();
        (crt.display().to_string(), key.display().to_string())
    };
    c.apply(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-proxy-reader}
rules: [{apiGroups: [""], resources: [nodes/proxy], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: alice-reads-nodes}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-proxy-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
"#,
    );
    let node_api = |who: Option<&(String, String)>, method: &str, path: &str| {
        let url = format!("https://{}:10250{path}", node.ip);
        let mut args = vec!["-X", method];
        if let Some((crt, key)) = who {
            args.extend(["--cert", crt, "--key", key]);
        }
        args.push(&url);
        let (code, body, _) = keelson_e2e::curl_k(&args);
        (code, body)
    };
    let admin = (
        pki_dir.join("admin.crt").display().to_string(),
        pki_dir.join("admin.key").display().to_string(),
    );
    let (alice, bob) = (pair("alice"), pair("bob"));
    assert_eq!(node_api(None, "GET", "/pods").0, 401);
    let (code, body) = node_api(Some(&admin), "GET", "/pods");
    assert!(
        code == 200 && body.contains("joined"),
        "admin: {code} {body}"
    );
    let (code, body) = node_api(Some(&bob), "GET", "/pods");
    assert_eq!(
        (code, body.as_str()),
        (
            403,
            "Forbidden (user=bob, verb=get, resource=nodes, subresource=proxy)"
        )
    );
    assert_eq!(node_api(Some(&alice), "GET", "/pods").0, 200);
    let (code, body) = node_api(
        Some(&alice),
        "POST",
        "/exec/default/joined/main?command=true",
    );
    assert_eq!(code, 403, "alice may read, not exec: {body}");

    // The node API serves a certificate the cluster CA signed for the
    // node's address (a verifying client accepts it).
    let serving_file = node.root_dir.join("pki/node-serving.crt");
    let serving_pem = std::fs::read_to_string(&serving_file).expect("the serving certificate");
    let (serving_name, _, first_serving_start) = cert_subject_and_start(&serving_pem);
    assert_eq!(serving_name, format!("system:node:{}", node.name));
    let verified = |what: &str| {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-w", " %{http_code}", "--cacert"])
            .arg(pki_dir.join("ca.crt"))
            .arg(format!("https://{}:10250/healthz", node.ip))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ok 200",
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    verified("the first serving certificate");

    // Renewal: new certificates before the first ones' 60 s are over.
    let deadline = SystemTime::now() + Duration::from_secs(90);
    loop {
        let pem = std::fs::read_to_string(&cert_file).unwrap_or_default();
        let (name, _, start) = cert_subject_and_start(&pem);
        let serving = std::fs::read_to_string(&serving_file).unwrap_or_default();
        let (_, _, serving_start) = cert_subject_and_start(&serving);
        if start > first_start && serving_start > first_serving_start {
            assert_eq!(name, format!("system:node:{}", node.name));
            break;
        }
        assert!(
            SystemTime::now() < deadline,
            "no renewal within 90 s:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let renewals = c.kubectl_ok(&[
        "get",
        "csr",
        "-o",
        "jsonpath={range .items[*]}{.spec.username} {.status.conditions[0].reason} {.spec.signerName}{\"\\n\"}{end}",
    ]);
    for signer in [
        "kubernetes.io/kube-apiserver-client-kubelet",
        "kubernetes.io/kubelet-serving",
    ] {
        let own = format!("system:node:{} AutoApproved {signer}", node.name);
        let renewed = renewals.lines().filter(|l| *l == own).count();
        assert!(renewed >= 1, "the node asked as itself: {renewals}");
        assert!(
            renewed <= 3,
            "renewed at 80 % of the life, not in a loop: {renewals}"
        );
    }
    verified("the renewed serving certificate");
    // After the first certificate has expired, the agent still works: a
    // second pod starts and its status is reported.
    std::thread::sleep(Duration::from_secs(
        (first_start + 65 - SystemTime::UNIX_EPOCH.elapsed().unwrap().as_secs() as i64).max(0)
            as u64,
    ));
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: after-renewal}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers: [{{name: main, image: {image}, command: {command}}}]
"#,
        node = node.name,
        image = c.busybox(),
        command = keelson_e2e::multinode::httpd_command(),
    ));
    c.wait_until("the second pod Running", Duration::from_secs(90), || {
        c.kubectl_ok(&[
            "get",
            "pod",
            "after-renewal",
            "-o",
            "jsonpath={.status.phase}",
        ]) == "Running"
    });

    // Bad joins are refused before anything is written.
    let bin = keelson_e2e::keelson_bin();
    let mut flags = join_command(&bin, &c.server.kubeconfig);
    let tmp = tempfile::tempdir().unwrap();
    let try_join = |flags: &[String]| {
        Command::new(&bin)
            .args(["agent", "--node-name", "intruder", "--root-dir"])
            .arg(tmp.path().join("root"))
            .args(["--run-dir"])
            .arg(tmp.path().join("run"))
            .args(flags)
            .output()
            .unwrap()
    };
    let hash_at = flags.iter().position(|f| f == "--ca-cert-hash").unwrap() + 1;
    let good_hash = flags[hash_at].clone();
    flags[hash_at] = format!("sha256:{}", "0".repeat(64));
    let out = try_join(&flags);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("refusing to join"),
        "{err}"
    );
    flags[hash_at] = good_hash;
    let token_at = flags.iter().position(|f| f == "--token").unwrap() + 1;
    flags[token_at] = "abcdef.0000000000000000".into();
    let out = try_join(&flags);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Unauthorized"),
        "{err}"
    );
    assert!(
        !tmp.path().join("root/pki/node.kubeconfig").exists(),
        "nothing written by a refused join"
    );
}
