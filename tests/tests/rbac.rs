//! Authorization against a real `keelson server`, through curl and kubectl:
//! who gets 401 and who 403 (anonymous, a service account with and without
//! a Role, a node, the admin), the node authorizer's limits, escalation
//! prevention, `kubectl auth can-i`, and ClusterRole aggregation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keelson_e2e::{API_ONLY, ServerProcess, curl_k, kubectl_path, wait_for};
use serde_json::{Value, json};

const KUBECTL: u32 = 33;

/// How a request authenticates.
#[derive(Clone)]
enum Who {
    Anonymous,
    Token(String),
    Cert { cert: PathBuf, key: PathBuf },
}

struct Api {
    base: String,
}

impl Api {
    fn call(&self, who: &Who, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut args: Vec<String> = vec!["-X".into(), method.into()];
        match who {
            Who::Anonymous => {}
            Who::Token(t) => args.extend(["-H".into(), format!("Authorization: Bearer {t}")]),
            Who::Cert { cert, key } => args.extend([
                "--cert".into(),
                cert.display().to_string(),
                "--key".into(),
                key.display().to_string(),
            ]),
        }
        if let Some(b) = body {
            let ct = if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            args.extend([
                "-H".into(),
                format!("Content-Type: {ct}"),
                "--data-binary".into(),
                b.to_string(),
            ]);
        }
        args.push(url);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, text, _) = curl_k(&refs);
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Assert the status code; on a 403, also kube-apiserver's wording.
    fn expect(
        &self,
        who: &Who,
        method: &str,
        path: &str,
        body: Option<&Value>,
        code: u16,
    ) -> Value {
        let (got, v) = self.call(who, method, path, body);
        assert_eq!(got, code, "{method} {path}: {v}");
        if code == 403 {
            assert_eq!(v["reason"], "Forbidden", "{method} {path}: {v}");
            assert!(
                v["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(" is forbidden: "),
                "{method} {path}: {v}"
            );
        }
        v
    }
}

fn write_pair(dir: &Path, name: &str, pair: &keelson_control_plane::server::pki::CertPair) -> Who {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, &pair.cert_pem).unwrap();
    std::fs::write(&key, &pair.key_pem).unwrap();
    Who::Cert { cert, key }
}

fn ca(data_dir: &Path) -> keelson_control_plane::server::pki::CertPair {
    keelson_control_plane::server::pki::CertPair {
        cert_pem: std::fs::read_to_string(data_dir.join("pki/ca.crt")).unwrap(),
        key_pem: std::fs::read_to_string(data_dir.join("pki/ca.key")).unwrap(),
    }
}

/// kubectl as a bearer token (no kubeconfig).
fn kubectl_as(server: &ServerProcess, token: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(kubectl_path(KUBECTL))
        .args([
            "--kubeconfig=/dev/null",
            &format!("--server=https://127.0.0.1:{}", server.port),
            &format!(
                "--certificate-authority={}",
                server.data_dir.join("pki/ca.crt").display()
            ),
            &format!("--token={token}"),
        ])
        .args(args)
        .env("HOME", &server.data_dir)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn apply(server: &ServerProcess, yaml: &str) {
    let mut child = server
        .kubectl_cmd(KUBECTL, &["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pod(name: &str, node: &str, secret: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: team}}
spec:
  nodeName: {node}
  containers: [{{name: c, image: busybox}}]
  volumes: [{{name: s, secret: {{secretName: {secret}}}}}]
"#
    )
}

#[test]
fn who_may_do_what() {
    if !keelson_e2e::needs("who_may_do_what")
        .keelson()
        .path(kubectl_path(KUBECTL), "kubectl")
        .ok()
    {
        return;
    }
    let server = ServerProcess::start_with(None, API_ONLY);
    let api = Api {
        base: format!("https://127.0.0.1:{}", server.port),
    };
    let tmp = tempfile::tempdir().unwrap();
    let admin = write_pair(
        tmp.path(),
        "admin",
        &keelson_control_plane::server::pki::CertPair {
            cert_pem: std::fs::read_to_string(server.data_dir.join("pki/admin.crt")).unwrap(),
            key_pem: std::fs::read_to_string(server.data_dir.join("pki/admin.key")).unwrap(),
        },
    );
    apply(
        &server,
        &format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: team}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: other}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: idle, namespace: team}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: robot, namespace: team}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader, namespace: team}}
rules:
- {{apiGroups: [""], resources: [pods], verbs: [get, list, watch]}}
- {{apiGroups: [rbac.authorization.k8s.io], resources: [roles], verbs: [create]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: robot-reads-pods, namespace: team}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{kind: ServiceAccount, name: robot, namespace: team}}]
---
apiVersion: v1
kind: Node
metadata: {{name: n1}}
---
apiVersion: v1
kind: Node
metadata: {{name: n2}}
---
apiVersion: v1
kind: Secret
metadata: {{name: s1, namespace: team}}
stringData: {{k: one}}
---
apiVersion: v1
kind: Secret
metadata: {{name: s2, namespace: team}}
stringData: {{k: two}}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {{name: n2, namespace: kube-node-lease}}
spec: {{holderIdentity: n2}}
---
{}---
{}"#,
            pod("p1", "n1", "s1"),
            pod("p2", "n2", "s2")
        ),
    );
    let token = |sa: &str| {
        server
            .kubectl_ok(KUBECTL, &["create", "token", sa, "-n", "team"])
            .trim()
            .to_string()
    };
    let idle = Who::Token(token("idle"));
    let robot_token = token("robot");
    let robot = Who::Token(robot_token.clone());
    let node = write_pair(
        tmp.path(),
        "n1",
        &keelson_control_plane::server::pki::issue(
            &ca(&server.data_dir),
            "system:node:n1",
            &["system:nodes"],
            &[],
            false,
        )
        .unwrap(),
    );
    let anon = Who::Anonymous;

    // Credentials that do not check out are 401, whatever the path.
    api.expect(&Who::Token("forged".into()), "GET", "/healthz", None, 401);
    api.expect(
        &Who::Token("forged".into()),
        "GET",
        "/api/v1/pods",
        None,
        401,
    );

    // The matrix: (path, [anonymous, idle SA, robot SA, node n1, admin]).
    let matrix: &[(&str, [u16; 5])] = &[
        ("/healthz", [200, 200, 200, 200, 200]),
        ("/version", [200, 200, 200, 200, 200]),
        ("/api", [403, 200, 200, 200, 200]),
        ("/apis/apps/v1", [403, 200, 200, 200, 200]),
        ("/metrics", [403, 403, 403, 403, 200]),
        ("/api/v1/namespaces/team/pods", [403, 403, 200, 200, 200]),
        ("/api/v1/namespaces/team/pods/p1", [403, 403, 200, 200, 200]),
        ("/api/v1/namespaces/other/pods", [403, 403, 403, 200, 200]),
        ("/api/v1/namespaces/team/secrets", [403, 403, 403, 403, 200]),
        (
            "/api/v1/namespaces/team/secrets/s1",
            [403, 403, 403, 200, 200],
        ),
        (
            "/api/v1/namespaces/team/secrets/s2",
            [403, 403, 403, 403, 200],
        ),
        ("/api/v1/nodes", [403, 403, 403, 200, 200]),
        (
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n2",
            [403, 403, 403, 200, 200],
        ),
    ];
    let who = [&anon, &idle, &robot, &node, &admin];
    let names = ["anonymous", "idle", "robot", "node", "admin"];
    for (path, codes) in matrix {
        for i in 0..5 {
            let (got, body) = api.call(who[i], "GET", path, None);
            assert_eq!(got, codes[i], "{} GET {path}: {body}", names[i]);
        }
    }
    // The wording is kube-apiserver's.
    let v = api.expect(&idle, "GET", "/api/v1/namespaces/team/pods", None, 403);
    assert_eq!(
        v["message"],
        "pods is forbidden: User \"system:serviceaccount:team:idle\" cannot list resource \"pods\" in API group \"\" in the namespace \"team\""
    );
    let v = api.expect(
        &node,
        "GET",
        "/api/v1/namespaces/team/secrets/s2",
        None,
        403,
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .ends_with("no relationship found between node 'n1' and this object"),
        "{v}"
    );

    // Writes: the robot may not delete pods; the node writes only its own.
    api.expect(
        &robot,
        "DELETE",
        "/api/v1/namespaces/team/pods/p1",
        None,
        403,
    );
    let label = |k: &str| json!({"metadata": {"labels": {k: "x"}}});
    api.expect(
        &node,
        "PATCH",
        "/api/v1/nodes/n1",
        Some(&label("team")),
        200,
    );
    api.expect(
        &node,
        "PATCH",
        "/api/v1/nodes/n2",
        Some(&label("team")),
        403,
    );
    let v = api.expect(
        &node,
        "PATCH",
        "/api/v1/nodes/n1",
        Some(&label("node-restriction.kubernetes.io/trusted")),
        403,
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("not allowed to modify labels"),
        "{v}"
    );
    let status = json!({"status": {"message": "hello"}});
    api.expect(
        &node,
        "PATCH",
        "/api/v1/namespaces/team/pods/p1/status",
        Some(&status),
        200,
    );
    api.expect(
        &node,
        "PATCH",
        "/api/v1/namespaces/team/pods/p2/status",
        Some(&status),
        403,
    );
    let lease = json!({"spec": {"holderIdentity": "n1"}});
    api.expect(
        &node,
        "PATCH",
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n2",
        Some(&lease),
        403,
    );
    // Once p1 is gone, n1 may no longer read s1.
    api.expect(
        &admin,
        "DELETE",
        "/api/v1/namespaces/team/pods/p1?gracePeriodSeconds=0",
        None,
        200,
    );
    wait_for("s1 refused to n1", Duration::from_secs(10), || {
        (api.call(&node, "GET", "/api/v1/namespaces/team/secrets/s1", None)
            .0
            == 403)
            .then_some(())
    });

    // Escalation: the robot may create Roles, but only with what it holds.
    let role = |name: &str, resource: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": "team"},
            "rules": [{"apiGroups": [""], "resources": [resource], "verbs": ["get"]}]})
    };
    let path = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles";
    api.expect(&robot, "POST", path, Some(&role("pods-too", "pods")), 201);
    let v = api.expect(
        &robot,
        "POST",
        path,
        Some(&role("secrets-too", "secrets")),
        403,
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("is attempting to grant RBAC permissions not currently held"),
        "{v}"
    );
    api.expect(
        &admin,
        "POST",
        path,
        Some(&role("secrets-too", "secrets")),
        201,
    );

    // kubectl auth can-i, as the robot.
    let (yes, out) = kubectl_as(
        &server,
        &robot_token,
        &["auth", "can-i", "list", "pods", "-n", "team"],
    );
    assert!(yes && out.trim() == "yes", "{out}");
    let (yes, out) = kubectl_as(
        &server,
        &robot_token,
        &["auth", "can-i", "delete", "pods", "-n", "team"],
    );
    assert!(!yes && out.trim().starts_with("no"), "{out}");
    let (ok, list) = kubectl_as(
        &server,
        &robot_token,
        &["auth", "can-i", "--list", "-n", "team"],
    );
    assert!(ok, "{list}");
    let pods_line = list
        .lines()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_else(|| panic!("no pods line in:\n{list}"));
    for verb in ["get", "list", "watch"] {
        assert!(pods_line.contains(verb), "{pods_line}");
    }
    assert!(!list.lines().any(|l| l.starts_with("secrets ")), "{list}");
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );
    // The admin asks on the robot's behalf (SubjectAccessReview).
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:team:robot", "groups": ["system:serviceaccounts", "system:authenticated"],
            "resourceAttributes": {"namespace": "team", "verb": "watch", "resource": "pods"}}});
    let v = api.expect(
        &admin,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        Some(&sar),
        201,
    );
    assert_eq!(v["status"]["allowed"], true, "{v}");
    let v = api.expect(
        &robot,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        Some(&sar),
        403,
    );
    assert_eq!(v["details"]["kind"], "subjectaccessreviews", "{v}");

    // Aggregation: a role labelled aggregate-to-view widens view.
    apply(
        &server,
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: widget-viewer
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules: [{apiGroups: [example.com], resources: [widgets], verbs: [get]}]
"#,
    );
    wait_for("view aggregates widgets", Duration::from_secs(10), || {
        server
            .kubectl_ok(KUBECTL, &["get", "clusterrole", "view", "-o", "json"])
            .contains("widgets")
            .then_some(())
    });
    // And edit and admin, which aggregate view, follow.
    wait_for("admin aggregates widgets", Duration::from_secs(10), || {
        server
            .kubectl_ok(KUBECTL, &["get", "clusterrole", "admin", "-o", "json"])
            .contains("widgets")
            .then_some(())
    });
}

/// The scheduler and the controllers act as themselves, each with only its
/// own role (kube-controller-manager with service-account credentials): the
/// audit log names who wrote what, none of them was refused, and none of
/// them may do another's work.
#[test]
fn controllers_act_as_their_own_identities() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.log");
    let log_arg = format!("--audit-log-path={}", log.display());
    let server = ServerProcess::start_with(None, &[log_arg.as_str()]);
    server.kubectl_ok(KUBECTL, &["create", "namespace", "team"]);
    apply(
        &server,
        r#"apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: team}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: team}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"#,
    );
    // A Ready node with room, so the scheduler binds the pod.
    server.kubectl_ok(
        KUBECTL,
        &[
            "patch",
            "node",
            "n1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"True"}],
                "allocatable":{"cpu":"4","memory":"8Gi","pods":"110"},
                "capacity":{"cpu":"4","memory":"8Gi","pods":"110"}}}"#,
        ],
    );
    let events = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let writer = |ev: &[Value], verb: &str, resource: &str, sub: &str| -> Option<String> {
        ev.iter()
            .find(|e| {
                e["verb"] == verb
                    && e["objectRef"]["resource"] == resource
                    && e["objectRef"]["subresource"].as_str().unwrap_or("") == sub
                    && e["responseStatus"]["code"]
                        .as_u64()
                        .is_some_and(|c| c < 300)
            })
            .map(|e| e["user"]["username"].as_str().unwrap_or("").to_string())
    };
    let sa = |name: &str| format!("system:serviceaccount:kube-system:{name}");
    let wanted = [
        ("create", "replicasets", "", sa("deployment-controller")),
        ("create", "pods", "", sa("replicaset-controller")),
        (
            "create",
            "endpointslices",
            "",
            sa("endpointslice-controller"),
        ),
        ("create", "endpoints", "", sa("endpoint-controller")),
        ("create", "configmaps", "", sa("root-ca-cert-publisher")),
        (
            "create",
            "serviceaccounts",
            "",
            sa("service-account-controller"),
        ),
        (
            "create",
            "pods",
            "binding",
            "system:kube-scheduler".to_string(),
        ),
        (
            "update",
            "leases",
            "",
            "system:kube-controller-manager".into(),
        ),
    ];
    wait_for(
        "every controller's first write",
        Duration::from_secs(60),
        || {
            let ev = events();
            wanted
                .iter()
                .all(|(v, r, s, _)| writer(&ev, v, r, s).is_some())
                .then_some(())
        },
    );
    let ev = events();
    for (verb, resource, sub, who) in &wanted {
        assert_eq!(
            writer(&ev, verb, resource, sub).as_deref(),
            Some(who.as_str()),
            "{verb} {resource}/{sub}"
        );
    }
    let ours = |u: &str| {
        u.starts_with("system:serviceaccount:kube-system:") || u.starts_with("system:kube-")
    };
    let refused: Vec<&Value> = ev
        .iter()
        .filter(|e| {
            ours(e["user"]["username"].as_str().unwrap_or("")) && e["responseStatus"]["code"] == 403
        })
        .collect();
    assert!(refused.is_empty(), "controllers refused: {refused:?}");
    // Least privilege: none may do another's work.
    for (who, verb, what) in [
        (sa("deployment-controller"), "create", "pods"),
        (sa("replicaset-controller"), "create", "replicasets.apps"),
        (
            sa("endpoint-controller"),
            "create",
            "endpointslices.discovery.k8s.io",
        ),
        ("system:kube-scheduler".into(), "create", "pods"),
        ("system:kube-controller-manager".into(), "create", "pods"),
        ("system:kube-controller-manager".into(), "delete", "pods"),
    ] {
        let out = server.kubectl(
            KUBECTL,
            &[
                "auth",
                "can-i",
                verb,
                what,
                "-n",
                "team",
                &format!("--as={who}"),
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "{who} {verb} {what}"
        );
    }
    // Impersonation is itself authorized: the admin may (and the audit
    // log names both), a service account without the verb may not.
    let listed = server.kubectl_ok(
        KUBECTL,
        &[
            "get",
            "endpointslices",
            "-n",
            "team",
            "--as=system:serviceaccount:kube-system:endpointslice-controller",
        ],
    );
    assert!(listed.contains("web-"), "{listed}");
    server.kubectl_ok(KUBECTL, &["create", "serviceaccount", "idle", "-n", "team"]);
    let idle = server
        .kubectl_ok(KUBECTL, &["create", "token", "idle", "-n", "team"])
        .trim()
        .to_string();
    let (ok, out) = kubectl_as(
        &server,
        &idle,
        &["get", "pods", "-n", "team", "--as=keelson-admin"],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains(r#"users "keelson-admin" is forbidden"#)
            && out.contains(r#"cannot impersonate resource "users""#),
        "{out}"
    );
    wait_for(
        "the impersonated list in the audit log",
        Duration::from_secs(10),
        || {
            events().into_iter().find(|e| {
                e["verb"] == "list"
                    && e["objectRef"]["resource"] == "endpointslices"
                    && e["impersonatedUser"]["username"]
                        == "system:serviceaccount:kube-system:endpointslice-controller"
                    && e["user"]["username"] == "keelson-admin"
            })
        },
    );
}
