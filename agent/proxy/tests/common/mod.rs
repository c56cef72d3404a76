//! Helpers shared by the proxy's real-kernel tests (nftables.rs, ebpf.rs):
//! routed veths between the test kit's network namespaces, the test
//! backends, and Service / EndpointSlice objects for the API server. The
//! skip rule, namespaces, processes and binaries come from the kit
//! (keelson-e2e).

#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;

pub const TESTSRV: &str = env!("CARGO_BIN_EXE_keelson-proxy-testsrv");
pub const NODE_NAME: &str = "node-a";
pub const CLIENT_IP: &str = "10.250.0.2";
pub const BACKEND_IPS: [&str; 3] = ["10.244.0.11", "10.244.0.12", "10.244.0.13"];

pub use keelson_e2e::{Netns, Proc, keelson_bin, sh};

/// What a proxy test needs: root, `tools` and (with `need_keelson`) the
/// keelson binary of this clone. The verdict is [`keelson_e2e::Needs::ok`].
pub fn needs(test: &str, tools: &[&str], need_keelson: bool) -> keelson_e2e::Needs {
    let n = keelson_e2e::needs(test).root().tools(tools);
    if need_keelson { n.keelson() } else { n }
}

/// A name unique to this process and call: `prefix`, `tag`, pid, counter.
pub fn unique(prefix: &str, tag: &str) -> String {
    keelson_e2e::unique(&format!("{prefix}{tag}"))
}

/// Joins `peer` (address `ip`) to the node netns with a veth `dev` on the
/// node side; routed /32s through 169.254.1.1.
pub fn link(node: &Netns, peer: &Netns, dev: &str, ip: &str) {
    sh(&[
        "ip", "-n", &node.name, "link", "add", dev, "type", "veth", "peer", "name", "eth0",
        "netns", &peer.name,
    ]);
    sh(&[
        "ip",
        "-n",
        &node.name,
        "addr",
        "add",
        "169.254.1.1/32",
        "dev",
        dev,
    ]);
    sh(&["ip", "-n", &node.name, "link", "set", dev, "up"]);
    sh(&[
        "ip",
        "-n",
        &node.name,
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        dev,
    ]);
    sh(&[
        "ip",
        "-n",
        &peer.name,
        "addr",
        "add",
        &format!("{ip}/32"),
        "dev",
        "eth0",
    ]);
    sh(&["ip", "-n", &peer.name, "link", "set", "eth0", "up"]);
    sh(&[
        "ip",
        "-n",
        &peer.name,
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &peer.name,
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
        let b = Netns::named(format!("{base}b{i}"));
        link(node, &b, &format!("vb{i}"), ip);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &b.name, TESTSRV, "serve"])
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
