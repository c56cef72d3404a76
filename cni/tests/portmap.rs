//! Must-show 4: chained with Debian's reference `portmap` plugin, a hostPort
//! reaches the pod.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{Value, json};

const PORTMAP: &str = "/usr/lib/cni/portmap";

/// Runs the conflist's plugins for `command` like libcni does: each gets the
/// list's name and cniVersion, runtimeConfig for its capabilities, and the
/// previous result.
fn chain(
    host: &Netns,
    list: &Value,
    command: &str,
    cid: &str,
    pod: &Netns,
    runtime: &Value,
    prev: Option<&Value>,
) -> Value {
    let mut plugins: Vec<Value> = list["plugins"].as_array().unwrap().clone();
    if command == "DEL" {
        plugins.reverse();
    }
    let mut result = prev.cloned();
    for p in plugins {
        let mut conf = p.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if p.get("capabilities").is_some() {
            conf["runtimeConfig"] = runtime.clone();
        }
        if let Some(r) = &result {
            conf["prevResult"] = r.clone();
        }
        let binary = match p["type"].as_str().unwrap() {
            "keelson-cni" => PLUGIN.to_string(),
            other => format!("/usr/lib/cni/{other}"),
        };
        let cmd = plugin_cmd(&binary, command, cid, Some(&pod.path), "eth0");
        let r = run_in(host, cmd, conf.to_string().as_bytes());
        assert!(r.ok, "{command} {}: {r:?}", p["type"]);
        if command == "ADD" {
            result = Some(r.stdout);
        }
    }
    result.unwrap_or(Value::Null)
}

#[test]
fn host_port_reaches_the_pod_through_portmap() {
    if !can_run("portmap", &[PORTMAP, "/usr/sbin/iptables", "/usr/sbin/ip"]) {
        return;
    }
    let host = Netns::new("kc-pmh");
    host.ip(&["addr", "add", "198.18.0.1/32", "dev", "lo"]);
    let pod = Netns::new("kc-pmp");
    let data = tempfile::tempdir().unwrap();
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "pm",
        "plugins": [
            {"type": "keelson-cni", "subnet": "198.19.7.0/24", "dataDir": data.path(), "mtu": 1400},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    let runtime =
        json!({"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]});
    let result = chain(&host, &list, "ADD", "pm-1", &pod, &runtime, None);
    // portmap passes our result through
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1", "{result}");
    let _server = tcp_server(&pod, 8080);
    let got = tcp_get(&host, SocketAddr::from(([198, 18, 0, 1], 18080))).unwrap();
    assert_eq!(got, format!("hello from {}", pod.name));
    // CHECK of our plugin with the chain's result (Debian's portmap 1.1.1
    // fails its own CHECK on hosts without ip6tables NAT chains: "could not
    // check ipv6 dnat"), then DEL of the whole chain in reverse order.
    let mut chk = list["plugins"][0].clone();
    chk["name"] = list["name"].clone();
    chk["cniVersion"] = list["cniVersion"].clone();
    chk["prevResult"] = result.clone();
    let ck = run_in(
        &host,
        plugin_cmd(PLUGIN, "CHECK", "pm-1", Some(&pod.path), "eth0"),
        chk.to_string().as_bytes(),
    );
    assert!(ck.ok, "CHECK: {ck:?}");
    chain(&host, &list, "DEL", "pm-1", &pod, &runtime, Some(&result));
    assert!(host.kc_links().is_empty());
    assert!(tcp_get(&host, SocketAddr::from(([198, 18, 0, 1], 18080))).is_err());
}
