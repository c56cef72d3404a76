//! Helpers shared by the proxy's real-kernel tests (nftables.rs, ebpf.rs):
//! tools, network namespaces with routed veths, background processes, the
//! test backends, and Service / EndpointSlice objects for the API server.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;

pub const TESTSRV: &str = env!("CARGO_BIN_EXE_keelson-proxy-testsrv");
pub const NODE_NAME: &str = "node-a";
pub const CLIENT_IP: &str = "10.250.0.2";
pub const BACKEND_IPS: [&str; 3] = ["10.244.0.11", "10.244.0.12", "10.244.0.13"];

pub fn require_all() -> bool {
    std::env::var("KEELSON_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `$KEELSON_BIN`, else target/<profile>/keelson next to the test binary.
pub fn keelson_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KEELSON_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("keelson");
    bin.is_file().then_some(bin)
}

/// What of root, `tools` and (with `need_keelson`) the keelson binary is
/// missing, as phrases for a skip reason.
pub fn missing(tools: &[&str], need_keelson: bool) -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_string());
    }
    for tool in tools {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            missing.push(format!("the `{tool}` tool"));
        }
    }
    if need_keelson && keelson_bin().is_none() {
        missing.push("the keelson binary (cargo build -p keelson)".into());
    }
    missing
}

/// The skip reason for `missing` (None: run); panics when everything is
/// required (KEELSON_REQUIRE_ALL=1) and something is missing.
pub fn skip_verdict(missing: Vec<String>) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let reason = format!("needs {}", missing.join(", "));
    assert!(
        !require_all(),
        "KEELSON_REQUIRE_ALL=1 but this test {reason}"
    );
    Some(reason)
}

pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A name unique to this process and call: `prefix`, `tag`, pid, counter.
pub fn unique(prefix: &str, tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{tag}{}x{}",
        std::process::id() % 100000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A named network namespace, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Netns {
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    pub fn exec(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "netns", "exec", &self.0];
        a.extend(args);
        sh(&a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A background process, killed by PID on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Joins `peer` (address `ip`) to the node netns with a veth `dev` on the
/// node side; routed /32s through 169.254.1.1.
pub fn link(node: &Netns, peer: &Netns, dev: &str, ip: &str) {
    sh(&[
        "ip", "-n", &node.0, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns",
        &peer.0,
    ]);
    sh(&[
        "ip",
        "-n",
        &node.0,
        "addr",
        "add",
        "169.254.1.1/32",
        "dev",
        dev,
    ]);
    sh(&["ip", "-n", &node.0, "link", "set", dev, "up"]);
    sh(&[
        "ip",
        "-n",
        &node.0,
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        dev,
    ]);
    sh(&[
        "ip",
        "-n",
        &peer.0,
        "addr",
        "add",
        &format!("{ip}/32"),
        "dev",
        "eth0",
    ]);
    sh(&["ip", "-n", &peer.0, "link", "set", "eth0", "up"]);
    sh(&[
        "ip",
        "-n",
        &peer.0,
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &peer.0,
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
}

/// The three backends: a netns each (`{base}b{i}`), linked to `node`, each
/// running `keelson-proxy-testsrv serve b{i} 0.0.0.0:80` (answers with its
/// name and the peer address it sees). Returns them once all are ready.
pub fn start_backends(node: &Netns, base: &str) -> (Vec<Proc>, Vec<Netns>) {
    let mut backends = Vec::new();
    let mut procs = Vec::new();
    for (i, ip) in BACKEND_IPS.iter().enumerate() {
        let b = Netns::new(format!("{base}b{i}"));
        link(node, &b, &format!("vb{i}"), ip);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &b.0, TESTSRV, "serve"])
            .args([format!("b{i}"), "0.0.0.0:80".into()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn backend");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "backend b{i} did not start");
        procs.push(Proc(child));
        backends.push(b);
    }
    (procs, backends)
}

/// Backend name per reply line ("b1 10.250.0.2" -> "b1").
pub fn names(lines: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        let n = if l.starts_with("ERR") {
            l.clone()
        } else {
            l.split_whitespace().next().unwrap_or("").to_string()
        };
        *m.entry(n).or_default() += 1;
    }
    m
}

pub async fn create_service(client: &kube::Client, svc: serde_json::Value) -> Service {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(svc).unwrap();
    api.create(&PostParams::default(), &svc)
        .await
        .expect("create Service")
}

pub fn slice_json(
    service: &str,
    name: &str,
    ports: &[(&str, u16, &str)],
    ips: &[&str],
) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| {
            serde_json::json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": NODE_NAME})
        })
        .collect();
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|(n, p, proto)| serde_json::json!({"name": n, "port": p, "protocol": proto}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    }))
    .unwrap()
}

pub async fn put_slice(client: &kube::Client, slice: EndpointSlice) {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let name = slice.metadata.name.clone().unwrap();
    match api.get_opt(&name).await.expect("get EndpointSlice") {
        Some(cur) => {
            let mut s = slice;
            s.metadata.resource_version = cur.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &s)
                .await
                .expect("replace EndpointSlice");
        }
        None => {
            api.create(&PostParams::default(), &slice)
                .await
                .expect("create EndpointSlice");
        }
    }
}

pub fn cluster_ip(svc: &Service) -> String {
    svc.spec
        .as_ref()
        .unwrap()
        .cluster_ip
        .clone()
        .expect("clusterIP allocated")
}
