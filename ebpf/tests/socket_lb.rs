//! Socket-level load balancing against the real kernel: cgroup2 hooks,
//! netns, veth, busybox httpd and a UDP responder. Needs root.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use common::*;
use keelson_ebpf::{Backend, EbpfLb, Frontend, LbConfig, LbService, LbTable, Proto};

/// Client netns, three backends, a client cgroup and a pin dir, all
/// named after test number `t` (10.200.t.0/24; VIP 10.201.t.1).
struct Topo {
    client: RoutedNetns,
    backends: Vec<BackendNs>,
    cg: Cgroup,
    pins: Pins,
    vip: Ipv4Addr,
}

impl Topo {
    fn new(t: u8) -> Topo {
        let pid = std::process::id() % 10000;
        let reach = format!("10.200.{t}.0/24");
        let client = RoutedNetns::new(
            format!("keelson-ebpf-{t}-c-{pid}"),
            format!("kx{t}c{pid}"),
            Ipv4Addr::new(10, 200, t, 10),
            &reach,
        );
        let backends = (1..=3u8)
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
        Topo {
            client,
            backends,
            cg: Cgroup::new(&format!("keelson-ebpf-test-{t}-{pid}")),
            pins: Pins(PathBuf::from(format!("/sys/fs/bpf/keelson-test-{t}-{pid}"))),
            vip: Ipv4Addr::new(10, 201, t, 1),
        }
    }

    fn config(&self) -> LbConfig {
        LbConfig {
            pin_dir: self.pins.0.clone(),
            cgroup: Some(self.cg.path.clone()),
            tc_interfaces: Vec::new(),
        }
    }

    fn service(
        &self,
        proto: Proto,
        port: u16,
        backends: &[usize],
        affinity: Option<u32>,
    ) -> LbService {
        LbService {
            frontend: Frontend {
                proto,
                addr: self.vip,
                port,
            },
            flags: 0,
            affinity_timeout: affinity,
            backends: backends
                .iter()
                .map(|i| Backend {
                    addr: self.backends[*i].ns.addr,
                    port: if proto == Proto::Udp { UDP_PORT } else { 80 },
                })
                .collect(),
        }
    }

    fn http(&self, port: u16, n: usize) -> BTreeMap<String, usize> {
        let out = self
            .cg
            .run_in(&self.client, &http_loop(self.vip, port, "/", n));
        count_lines(&stdout(&out))
    }
}

fn count_lines(s: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *m.entry(l.to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn tcp_and_udp_reach_all_backends_and_removal_is_immediate() {
    if !can_run("tcp_and_udp_reach_all_backends_and_removal_is_immediate") {
        return;
    }
    let topo = Topo::new(1);
    let lb = EbpfLb::open(&topo.config()).expect("open");
    assert_eq!(lb.attached().len(), 4, "{:?}", lb.attached());
    let mut table = LbTable::new(lb.into_maps());
    table
        .full_sync(&[
            topo.service(Proto::Tcp, 80, &[0, 1, 2], None),
            topo.service(Proto::Udp, 53, &[0, 1, 2], None),
        ])
        .expect("sync");

    let seen = topo.http(80, 30);
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["backend1", "backend2", "backend3"],
        "TCP via the VIP: {seen:?}"
    );

    // Unconnected UDP: sendto the VIP, recvfrom reports the VIP (recvmsg4).
    let out = topo.cg.run_in(&topo.client, &udp_loop(topo.vip, 53, 30));
    let text = stdout(&out);
    let mut names = BTreeMap::new();
    for line in text.lines() {
        let (payload, from) = line.split_once('|').expect("reply line");
        assert_eq!(
            from,
            format!("{}:53", topo.vip),
            "reply source must be the VIP: {line}"
        );
        let name = payload.split_whitespace().next().unwrap().to_string();
        // The backend sees the client's own address.
        assert!(payload.ends_with(&topo.client.addr.to_string()), "{line}");
        *names.entry(name).or_insert(0) += 1;
    }
    assert_eq!(
        names.len(),
        3,
        "UDP via the VIP: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Connected UDP: goes through connect4; the peer is the VIP.
    let out = topo.cg.run_in(&topo.client, &udp_connected(topo.vip, 53));
    let text = stdout(&out);
    assert!(
        text.starts_with("backend") && text.trim().ends_with(&format!("|{}", topo.vip)),
        "connected UDP: {out:?}"
    );

    // getpeername shows the VIP, not the backend.
    let out = topo.cg.run_in(&topo.client, &tcp_probe(topo.vip, 80));
    assert_eq!(
        stdout(&out).trim(),
        format!("peer {} 80", topo.vip),
        "{out:?}"
    );

    // Remove backend3: no new connection reaches it.
    table
        .upsert(&topo.service(Proto::Tcp, 80, &[0, 1], None))
        .expect("upsert");
    let seen = topo.http(80, 30);
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["backend1", "backend2"],
        "after removing backend3: {seen:?}"
    );
}

#[test]
fn service_without_backends_refuses_fast() {
    if !can_run("service_without_backends_refuses_fast") {
        return;
    }
    let topo = Topo::new(2);
    let lb = EbpfLb::open(&topo.config()).expect("open");
    let mut table = LbTable::new(lb.into_maps());
    table
        .full_sync(&[
            topo.service(Proto::Tcp, 80, &[], None),
            topo.service(Proto::Udp, 53, &[], None),
        ])
        .expect("sync");
    let out = topo.cg.run_in(&topo.client, &tcp_probe(topo.vip, 80));
    let text = stdout(&out);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        fields.get(..2),
        Some(&["error", "ECONNREFUSED"][..]),
        "{out:?}"
    );
    let secs: f64 = fields[2].parse().unwrap();
    assert!(secs < 0.5, "refusal took {secs}s");
    // Unconnected UDP to it fails at sendto.
    let out = topo.cg.run_in(&topo.client, &udp_loop(topo.vip, 53, 1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ConnectionRefusedError"),
        "UDP sendto: {out:?}"
    );
    // Giving it a backend makes it work.
    table
        .upsert(&topo.service(Proto::Tcp, 80, &[1], None))
        .unwrap();
    assert_eq!(
        topo.http(80, 1).keys().cloned().collect::<Vec<_>>(),
        vec!["backend2"]
    );
}

#[test]
fn session_affinity_keeps_one_client_on_one_backend() {
    if !can_run("session_affinity_keeps_one_client_on_one_backend") {
        return;
    }
    let topo = Topo::new(3);
    let lb = EbpfLb::open(&topo.config()).expect("open");
    let mut table = LbTable::new(lb.into_maps());
    table
        .full_sync(&[
            topo.service(Proto::Tcp, 80, &[0, 1, 2], Some(10800)),
            topo.service(Proto::Tcp, 8080, &[0, 1, 2], None),
        ])
        .expect("sync");
    let seen = topo.http(80, 20);
    assert_eq!(seen.len(), 1, "affinity: {seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 20, "{seen:?}");
    // Control: without affinity the same client spreads.
    let _ = &topo.backends;
    let seen = topo.http(8080, 20);
    assert!(seen.len() > 1, "no affinity: {seen:?}");
    // Removing the remembered backend moves the client, then it sticks again.
    let stuck = topo.http(80, 1).into_keys().next().unwrap();
    let idx: usize = stuck
        .trim_start_matches("backend")
        .parse::<usize>()
        .unwrap()
        - 1;
    let rest: Vec<usize> = (0..3).filter(|i| *i != idx).collect();
    table
        .upsert(&topo.service(Proto::Tcp, 80, &rest, Some(10800)))
        .unwrap();
    let seen = topo.http(80, 10);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(!seen.contains_key(&stuck), "{seen:?}");
}

#[test]
fn pins_survive_the_process_and_remove_all_clears_them() {
    if !can_run("pins_survive_the_process_and_remove_all_clears_them") {
        return;
    }
    let topo = Topo::new(4);
    let desired = [topo.service(Proto::Tcp, 80, &[0, 1, 2], None)];
    let lb = EbpfLb::open(&topo.config()).expect("open");
    let mut table = LbTable::new(lb.into_maps());
    table.full_sync(&desired).expect("sync");
    let ids = cgroup_prog_ids(&topo.cg.path);
    assert_eq!(ids.len(), 4, "programs on the cgroup: {ids:?}");
    // "Process exit": every fd of ours closes.
    drop(table);
    let seen = topo.http(80, 12);
    assert!(
        !seen.keys().any(|k| k.starts_with("FAIL")) && seen.len() >= 2,
        "with no process: {seen:?}"
    );
    assert_eq!(cgroup_prog_ids(&topo.cg.path), ids);

    // Restart: adopt, do not attach again; the maps keep their contents.
    let lb = EbpfLb::open(&topo.config()).expect("reopen");
    assert_eq!(
        lb.attached().len(),
        0,
        "attached again: {:?}",
        lb.attached()
    );
    assert_eq!(lb.adopted().len(), 4, "{:?}", lb.adopted());
    assert_eq!(cgroup_prog_ids(&topo.cg.path), ids, "links duplicated");
    let mut table = LbTable::new(lb.into_maps());
    let stats = table.full_sync(&desired).expect("resync");
    assert_eq!(
        stats,
        keelson_ebpf::SyncStats::default(),
        "resync rewrote state"
    );
    assert!(!topo.http(80, 3).keys().any(|k| k.starts_with("FAIL")));
    drop(table);

    keelson_ebpf::remove_all(&topo.pins.0).expect("remove_all");
    keelson_ebpf::remove_all(&topo.pins.0).expect("remove_all again");
    assert!(!topo.pins.0.exists(), "pin dir left");
    assert!(
        cgroup_prog_ids(&topo.cg.path).is_empty(),
        "programs left on the cgroup"
    );
    // Program release is asynchronous (RCU): give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while ids.iter().any(|id| prog_exists(*id)) {
        assert!(
            std::time::Instant::now() < deadline,
            "programs {ids:?} still loaded"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Without the hooks the VIP is not balanced any more: 10.201.t.0/24
    // has no route in the client netns.
    let out = topo.cg.run_in(&topo.client, &tcp_probe(topo.vip, 80));
    assert!(stdout(&out).starts_with("error"), "{out:?}");
}
