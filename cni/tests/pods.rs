//! Must-show 1 and the bad-input contract, in real network namespaces:
//! two pods on one node get distinct addresses, reach each other and the host
//! (TCP and ping), CHECK passes, and after DEL nothing of them is left.
//! Bad input gets the spec's error JSON and leaves nothing behind.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::*;
use serde_json::json;

const NODE_IP: &str = "198.18.0.1";

/// A host namespace standing for the node, with a "node IP" on its loopback
/// (this kernel has no dummy links).
fn node() -> Netns {
    let host = Netns::new("kc-host");
    host.ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
    host
}

#[test]
fn two_pods_reach_each_other_and_the_host_then_leave_nothing() {
    if !can_run("two_pods", &["/usr/bin/ping", "/usr/sbin/ip"]) {
        return;
    }
    let host = node();
    let (pa, pb) = (Netns::new("kc-pa"), Netns::new("kc-pb"));
    let data = tempfile::tempdir().unwrap();
    let c = conf("pods", "198.19.1.0/24", data.path());
    let routes_before = host.ip(&["route", "show"]);

    let ra = cni(&host, "ADD", "pod-a", Some(&pa), &c);
    assert!(ra.ok, "ADD a: {:?}", ra);
    let rb = cni(&host, "ADD", "pod-b", Some(&pb), &c);
    assert!(rb.ok, "ADD b: {:?}", rb);
    let (ia, ib) = (result_ip(&ra.stdout), result_ip(&rb.stdout));
    assert_ne!(ia, ib);
    assert_eq!(ra.stdout["cniVersion"], "1.1.0");
    assert_eq!(
        ra.stdout["interfaces"][1]["sandbox"],
        pa.path.to_str().unwrap()
    );
    assert_eq!(ra.stdout["interfaces"][1]["mtu"], 1400);
    assert_eq!(ra.stdout["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(ra.stdout["ips"][0]["interface"], 1);

    // ADD again for the same attachment: the same address.
    let again = cni(&host, "ADD", "pod-a", Some(&pa), &c);
    assert!(again.ok, "re-ADD: {again:?}");
    assert_eq!(result_ip(&again.stdout), ia);

    // ping: pod to pod, pod to host, host to pod
    assert!(pa.ping(ib), "ping a -> b");
    assert!(pb.ping(ia), "ping b -> a");
    assert!(pa.ping(NODE_IP.parse().unwrap()), "ping a -> host");
    assert!(host.ping(ia), "ping host -> a");
    // TCP: pod to pod and pod to host
    let _sb = tcp_server(&pb, 8080);
    let _sh = tcp_server(&host, 8081);
    assert_eq!(
        tcp_get(&pa, SocketAddr::from((ib, 8080))).unwrap(),
        format!("hello from {}", pb.name)
    );
    assert_eq!(
        tcp_get(
            &pa,
            SocketAddr::from((NODE_IP.parse::<Ipv4Addr>().unwrap(), 8081))
        )
        .unwrap(),
        format!("hello from {}", host.name)
    );

    // CHECK with the chain's result as prevResult passes...
    let mut chk = c.clone();
    chk["prevResult"] = again.stdout.clone();
    let ck = cni(&host, "CHECK", "pod-a", Some(&pa), &chk);
    assert!(ck.ok, "CHECK: {ck:?}");
    // ...and fails (code 102) once the pod's address is gone.
    pb.ip(&["addr", "flush", "dev", "eth0"]);
    let mut chk_b = c.clone();
    chk_b["prevResult"] = rb.stdout.clone();
    let bad = cni(&host, "CHECK", "pod-b", Some(&pb), &chk_b);
    assert!(!bad.ok);
    assert_eq!(bad.stdout["code"], 102, "{bad:?}");

    // DEL: nothing left (links, routes, allocations, files); DEL twice is fine.
    for (cid, pod) in [("pod-a", &pa), ("pod-b", &pb)] {
        let d = cni(&host, "DEL", cid, Some(pod), &c);
        assert!(d.ok, "DEL {cid}: {d:?}");
        let d = cni(&host, "DEL", cid, Some(pod), &c);
        assert!(d.ok, "second DEL {cid}: {d:?}");
        assert!(!pod.links().contains(&"eth0".to_string()));
    }
    assert!(host.kc_links().is_empty(), "{:?}", host.kc_links());
    assert_eq!(host.ip(&["route", "show"]), routes_before);
    let state = data.path().join("pods");
    assert!(entries(&state.join("ips")).is_empty());
    assert!(entries(&state.join("att")).is_empty());
    assert_eq!(entries(&state), ["att", "ips", "last", "lock"]);
}

#[test]
fn del_of_unknown_attachment_and_missing_netns_succeeds() {
    if !can_run("del_idempotent", &["/usr/sbin/ip"]) {
        return;
    }
    let host = node();
    let data = tempfile::tempdir().unwrap();
    let c = conf("del", "198.19.2.0/24", data.path());
    let r = cni(&host, "DEL", "never-added", None, &c);
    assert!(r.ok, "{r:?}");
    let pod = Netns::new("kc-gone");
    let add = cni(&host, "ADD", "gone", Some(&pod), &c);
    assert!(add.ok, "{add:?}");
    let path = pod.path.clone();
    drop(pod); // the runtime deleted the netns before DEL
    let mut cmd = plugin_cmd(PLUGIN, "DEL", "gone", Some(&path), "eth0");
    cmd.env("CNI_NETNS", &path);
    let r = run_in(&host, cmd, c.to_string().as_bytes());
    assert!(r.ok, "{r:?}");
    assert!(host.kc_links().is_empty());
    assert!(entries(&data.path().join("del/ips")).is_empty());
}

#[test]
fn bad_input_gets_spec_errors_and_leaves_nothing() {
    if !can_run("bad_input", &["/usr/sbin/ip"]) {
        return;
    }
    let host = node();
    let pod = Netns::new("kc-bad");
    let data = tempfile::tempdir().unwrap();
    let good = conf("bad", "198.19.3.0/30", data.path());
    let not_ns = data.path().join("plain-file");
    std::fs::write(&not_ns, "x").unwrap();

    let run_raw = |command: &str, netns: Option<&std::path::Path>, stdin: &[u8]| {
        run_in(
            &host,
            plugin_cmd(PLUGIN, command, "bad-1", netns, "eth0"),
            stdin,
        )
    };
    let cases: Vec<(&str, Ran, u64)> = vec![
        (
            "malformed JSON",
            run_raw("ADD", Some(&pod.path), b"{\"cniVersion\":"),
            6,
        ),
        (
            "unknown cniVersion",
            run_raw(
                "ADD",
                Some(&pod.path),
                json!({"cniVersion":"7.0.0","name":"bad","subnet":"198.19.3.0/30"})
                    .to_string()
                    .as_bytes(),
            ),
            1,
        ),
        (
            "missing subnet",
            run_raw(
                "ADD",
                Some(&pod.path),
                json!({"cniVersion":"1.1.0","name":"bad"})
                    .to_string()
                    .as_bytes(),
            ),
            7,
        ),
        (
            "netns that is not a netns",
            run_raw("ADD", Some(&not_ns), good.to_string().as_bytes()),
            4,
        ),
        (
            "netns that does not exist",
            run_raw(
                "ADD",
                Some(std::path::Path::new("/run/netns/keelson-no-such")),
                good.to_string().as_bytes(),
            ),
            3,
        ),
        (
            "missing CNI_NETNS",
            run_raw("ADD", None, good.to_string().as_bytes()),
            4,
        ),
    ];
    for (what, r, code) in &cases {
        assert!(!r.ok, "{what}: expected failure");
        assert_eq!(r.stdout["code"], *code, "{what}: {r:?}");
        assert!(
            r.stdout["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {r:?}"
        );
        assert!(r.stdout.get("cniVersion").is_some(), "{what}");
    }

    // An exhausted range: a /30 has two addresses.
    let p2 = Netns::new("kc-bad2");
    let p3 = Netns::new("kc-bad3");
    assert!(cni(&host, "ADD", "fill-1", Some(&pod), &good).ok);
    assert!(cni(&host, "ADD", "fill-2", Some(&p2), &good).ok);
    let r = cni(&host, "ADD", "fill-3", Some(&p3), &good);
    assert!(!r.ok);
    assert_eq!(r.stdout["code"], 101, "{r:?}");
    assert!(
        r.stdout["msg"]
            .as_str()
            .unwrap()
            .contains("no free address")
    );
    let status = cni(&host, "STATUS", "", None, &good);
    assert_eq!(status.stdout["code"], 50, "{status:?}");
    assert!(!p3.links().contains(&"eth0".to_string()));

    // A failure after allocation (eth0 already taken in the pod) rolls back
    // both the address and the host veth.
    assert!(cni(&host, "DEL", "fill-2", Some(&p2), &good).ok);
    p3.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let r = cni(&host, "ADD", "fill-3", Some(&p3), &good);
    assert!(!r.ok);
    assert_eq!(r.stdout["code"], 100, "{r:?}");
    assert!(
        r.stdout["msg"].as_str().unwrap().contains("already exists"),
        "{r:?}"
    );
    assert_eq!(
        host.kc_links().len(),
        1,
        "only fill-1's veth: {:?}",
        host.kc_links()
    );
    assert_eq!(entries(&data.path().join("bad/att")), ["fill-1:eth0"]);
    assert!(cni(&host, "STATUS", "", None, &good).ok);
}

#[test]
fn version_lists_supported_versions() {
    let out = std::process::Command::new(PLUGIN)
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}
