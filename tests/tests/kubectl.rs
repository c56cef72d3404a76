//! The kubectl scenario, with kubectl 1.27 and 1.33, on both storage
//! backends: api-resources, create namespace, apply and re-apply, get -o yaml,
//! get -w, label, annotate, the three patch types, delete.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use keelson_e2e::{Backend, ServerProcess, etcd_for, kubectl_versions};
use serde_json::Value;

fn manifests(ns: &str, image: &str, extra_env: bool) -> String {
    let env_b = if extra_env {
        "\n        - {name: B, value: \"2\"}"
    } else {
        ""
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: {image}
        env:
        - {{name: A, value: "1"}}{env_b}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {ns}
spec:
  selector: {{app: web}}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: {ns}
data:
  key: value
"#
    )
}

fn env_names(deploy: &Value) -> Vec<String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    format!(
                        "{}={}",
                        e["name"].as_str().unwrap(),
                        e["value"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn scenario(server: &ServerProcess, m: u32) {
    let ns = format!("kc{m}");
    let dir = tempfile::tempdir().unwrap();

    let resources = server.kubectl_ok(m, &["api-resources"]);
    for want in [
        "deployments",
        "endpointslices",
        "configmaps",
        "leases",
        "namespaces",
    ] {
        assert!(
            resources.contains(want),
            "api-resources lacks {want}:\n{resources}"
        );
    }

    server.kubectl_ok(m, &["create", "namespace", &ns]);
    let v1 = dir.path().join("v1.yaml");
    std::fs::write(&v1, manifests(&ns, "busybox:1.36", false)).unwrap();
    let out = server.kubectl_ok(m, &["apply", "-f", v1.to_str().unwrap()]);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let svc_before = server.kubectl_json(m, &["get", "service", "web", "-n", &ns]);
    let cluster_ip = svc_before["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(cluster_ip.starts_with("10."), "{cluster_ip}");

    // Something another writer sets must survive the next apply.
    server.kubectl_ok(
        m,
        &["label", "deployment", "web", "-n", &ns, "owner=team-a"],
    );

    let v2 = dir.path().join("v2.yaml");
    std::fs::write(&v2, manifests(&ns, "busybox:1.37", true)).unwrap();
    let out = server.kubectl_ok(m, &["apply", "-f", v2.to_str().unwrap()]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("service/web unchanged"), "{out}");
    let d = server.kubectl_json(m, &["get", "deployment", "web", "-n", &ns]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.37"
    );
    assert_eq!(env_names(&d), vec!["A=1", "B=2"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["metadata"]["labels"]["owner"], "team-a");
    assert_eq!(d["metadata"]["generation"], 2);
    let svc = server.kubectl_json(m, &["get", "service", "web", "-n", &ns]);
    assert_eq!(svc["spec"]["clusterIP"], cluster_ip.as_str());
    assert_eq!(
        svc["metadata"]["resourceVersion"],
        svc_before["metadata"]["resourceVersion"]
    );

    let yaml = server.kubectl_ok(m, &["get", "deployment", "web", "-n", &ns, "-o", "yaml"]);
    assert!(yaml.contains("image: busybox:1.37"), "{yaml}");
    assert!(yaml.contains("kind: Deployment"), "{yaml}");

    // get -w prints a later change.
    let mut watch = server
        .kubectl_cmd(
            m,
            &[
                "get",
                "configmap",
                "web-config",
                "-n",
                &ns,
                "-w",
                "-o",
                "jsonpath={.metadata.annotations.step}{\"\\n\"}",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The first line is the current state (no annotation yet).
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("kubectl get -w printed the object");
    assert_eq!(first, "");
    server.kubectl_ok(
        m,
        &["annotate", "configmap", "web-config", "-n", &ns, "step=two"],
    );
    let later = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("kubectl get -w printed the change");
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(later, "two");

    // label and annotate
    server.kubectl_ok(
        m,
        &[
            "label",
            "configmap",
            "web-config",
            "-n",
            &ns,
            "tier=backend",
        ],
    );
    server.kubectl_ok(
        m,
        &[
            "annotate",
            "configmap",
            "web-config",
            "-n",
            &ns,
            "note=hello",
            "--overwrite",
        ],
    );
    let cm = server.kubectl_json(m, &["get", "configmap", "web-config", "-n", &ns]);
    assert_eq!(cm["metadata"]["labels"]["tier"], "backend");
    assert_eq!(cm["metadata"]["annotations"]["note"], "hello");
    server.kubectl_ok(m, &["label", "configmap", "web-config", "-n", &ns, "tier-"]);
    let cm = server.kubectl_json(m, &["get", "configmap", "web-config", "-n", &ns]);
    assert!(cm["metadata"]["labels"].get("tier").is_none(), "{cm}");

    // The three patch types.
    server.kubectl_ok(
        m,
        &[
            "patch",
            "configmap",
            "web-config",
            "-n",
            &ns,
            "--type",
            "merge",
            "-p",
            r#"{"data":{"merged":"1"}}"#,
        ],
    );
    server.kubectl_ok(m, &["patch", "configmap", "web-config", "-n", &ns, "--type", "json", "-p", r#"[{"op":"add","path":"/data/jsonpatched","value":"2"},{"op":"remove","path":"/data/merged"}]"#]);
    let cm = server.kubectl_json(m, &["get", "configmap", "web-config", "-n", &ns]);
    assert_eq!(
        cm["data"],
        serde_json::json!({"key": "value", "jsonpatched": "2"})
    );
    server.kubectl_ok(m, &["patch", "deployment", "web", "-n", &ns, "--type", "strategic", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"C","value":"3"}]}]}}}}"#]);
    let d = server.kubectl_json(m, &["get", "deployment", "web", "-n", &ns]);
    // Merged by name, not replaced (a new entry goes first, as upstream orders it).
    let mut env = env_names(&d);
    env.sort();
    assert_eq!(
        env,
        vec!["A=1", "B=2", "C=3"],
        "strategic merge keeps env entries by name"
    );
    // A failing JSON patch test op changes nothing.
    let bad = server.kubectl(m, &["patch", "configmap", "web-config", "-n", &ns, "--type", "json", "-p", r#"[{"op":"test","path":"/data/key","value":"nope"},{"op":"add","path":"/data/x","value":"y"}]"#]);
    assert!(!bad.status.success());
    let cm2 = server.kubectl_json(m, &["get", "configmap", "web-config", "-n", &ns]);
    assert_eq!(
        cm2["metadata"]["resourceVersion"],
        cm["metadata"]["resourceVersion"]
    );

    // delete
    server.kubectl_ok(m, &["delete", "-f", v2.to_str().unwrap()]);
    for (kind, name) in [
        ("deployment", "web"),
        ("service", "web"),
        ("configmap", "web-config"),
    ] {
        let out = server.kubectl(m, &["get", kind, name, "-n", &ns]);
        assert!(!out.status.success(), "{kind}/{name} still there");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("NotFound"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Deleting the namespace removes what is left in it.
    server.kubectl_ok(
        m,
        &[
            "create",
            "configmap",
            "left-over",
            "-n",
            &ns,
            "--from-literal=a=b",
        ],
    );
    server.kubectl_ok(m, &["delete", "namespace", &ns, "--timeout=30s"]);
    let out = server.kubectl(m, &["get", "namespace", &ns]);
    assert!(!out.status.success(), "namespace {ns} still there");
    let cms = server.kubectl_json(
        m,
        &[
            "get",
            "configmaps",
            "-A",
            "--field-selector",
            &format!("metadata.namespace={ns}"),
        ],
    );
    assert_eq!(cms["items"].as_array().unwrap().len(), 0, "{cms}");
}

fn run(backend: Backend) {
    let Ok(etcd) = etcd_for(backend) else { return };
    let server = ServerProcess::start(etcd.as_ref());
    for m in kubectl_versions() {
        scenario(&server, m);
    }
}

#[test]
fn kubectl_scenario_embedded_store() {
    run(Backend::Embedded);
}

#[test]
fn kubectl_scenario_etcd() {
    run(Backend::Etcd);
}
