//! NodePort through the TC program (tcx on a node interface): a client in
//! an "outside" netns reaches backends through DNAT, replies are reverse
//! NATed, and the backends see the client's own address. Needs root.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use common::*;
use keelson_ebpf::layout::F_NODEPORT;
use keelson_ebpf::{Backend, EbpfLb, Frontend, LbConfig, LbService, LbTable, Proto};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

fn nodeport(proto: Proto, port: u16, backends: &[&BackendNs], backend_port: u16) -> LbService {
    LbService {
        frontend: Frontend {
            proto,
            addr: Ipv4Addr::UNSPECIFIED,
            port,
        },
        flags: F_NODEPORT,
        affinity_timeout: None,
        backends: backends
            .iter()
            .map(|b| Backend {
                addr: b.ns.addr,
                port: backend_port,
            })
            .collect(),
    }
}

#[test]
fn nodeport_from_outside_keeps_the_client_address() {
    if !can_run("nodeport_from_outside_keeps_the_client_address") {
        return;
    }
    let t = 5u8;
    let pid = std::process::id() % 10000;
    let reach = format!("10.200.{t}.0/24");
    let outside = RoutedNetns::new(
        format!("keelson-ebpf-{t}-o-{pid}"),
        format!("kx{t}o{pid}"),
        Ipv4Addr::new(10, 200, t, 200),
        "10.200.255.255/32", // only the node address (169.254.1.1) is reachable
    );
    let backends: Vec<BackendNs> = (1..=3u8)
        .map(|i| {
            let ns = RoutedNetns::new(
                format!("keelson-ebpf-{t}-b{i}-{pid}"),
                format!("kx{t}b{i}{pid}"),
                Ipv4Addr::new(10, 200, t, i),
                &reach,
            );
            BackendNs::start(&format!("backend{i}"), ns)
        })
        .collect();
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/keelson-test-{t}-{pid}")));
    let cfg = LbConfig {
        pin_dir: pins.0.clone(),
        cgroup: None,
        tc_interfaces: vec![outside.host_if.clone()],
    };
    let lb = EbpfLb::open(&cfg).expect("open");
    assert_eq!(lb.attached().len(), 2, "{:?}", lb.attached());
    let all: Vec<&BackendNs> = backends.iter().collect();
    let mut table = LbTable::new(lb.into_maps());
    table
        .full_sync(&[
            nodeport(Proto::Tcp, 30080, &all, 80),
            nodeport(Proto::Udp, 30053, &all, UDP_PORT),
            nodeport(Proto::Tcp, 30081, &[], 80),
        ])
        .expect("sync");

    // TCP: the backend's CGI answers with the address it sees.
    let out = run(outside
        .exec()
        .args(["sh", "-c", &http_loop(NODE_IP, 30080, "/cgi-bin/ip", 5)]));
    let text = stdout(&out);
    for line in text.lines() {
        assert_eq!(line.trim(), outside.addr.to_string(), "backend saw: {text}");
    }
    assert_eq!(text.lines().count(), 5, "{text}");
    let out = run(outside
        .exec()
        .args(["sh", "-c", &http_loop(NODE_IP, 30080, "/", 30)]));
    let mut seen = BTreeMap::new();
    for l in stdout(&out).lines() {
        *seen.entry(l.trim().to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["backend1", "backend2", "backend3"],
        "{seen:?}"
    );

    // UDP: replies come back from the node address and port (reverse NAT),
    // and the backend saw the client's address.
    let out = run(outside
        .exec()
        .args(["sh", "-c", &udp_loop(NODE_IP, 30053, 5)]));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 5, "{text}");
    for line in text.lines() {
        let (payload, from) = line.split_once('|').unwrap();
        assert_eq!(from, format!("{NODE_IP}:30053"), "{line}");
        assert!(payload.ends_with(&format!(" {}", outside.addr)), "{line}");
    }

    // No endpoints: the host itself refuses (nothing listens there).
    let out = run(outside
        .exec()
        .args(["sh", "-c", &tcp_probe(NODE_IP, 30081)]));
    assert!(stdout(&out).starts_with("error ECONNREFUSED"), "{out:?}");

    // Removing the links restores the plain path: the node port is closed.
    drop(table);
    keelson_ebpf::remove_all(&pins.0).expect("remove_all");
    let out = run(outside
        .exec()
        .args(["sh", "-c", &tcp_probe(NODE_IP, 30080)]));
    assert!(stdout(&out).starts_with("error ECONNREFUSED"), "{out:?}");
}
