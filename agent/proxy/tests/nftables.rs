//! Real-kernel tests of the nftables backend (root). Each test builds its own
//! topology of network namespaces: a "node" netns that gets the proxy's
//! table, a client netns and three backend netns, each joined to the node by
//! a veth with routed /32s. Backends run `keelson-proxy-testsrv serve`,
//! which answers TCP and UDP with its name and the peer address it sees.
//! The proxy is the real `keelson proxy` process (talking to a real
//! `keelson server` on loopback, programming the node netns via --netns).
//!
//! Skips when not root or a binary is missing, unless KEELSON_REQUIRE_ALL=1.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use keelson_e2e::{ServerProcess, wait_for};
use kube::Api;
use kube::api::DeleteParams;

mod common;
use common::*;

const NODE_IP: &str = "192.168.200.1";

macro_rules! skip_unless_ready {
    ($need_keelson:expr) => {
        if !needs(module_path!(), &["ip", "nft", "conntrack"], $need_keelson).ok() {
            return;
        }
    };
}

struct Topology {
    // Processes first: they die before their netns go.
    procs: Vec<Proc>,
    node: Netns,
    client: Netns,
    _backends: Vec<Netns>,
}

impl Topology {
    fn new(tag: &str) -> Topology {
        let base = unique("kp", tag);
        let node = Netns::named(format!("{base}n"));
        let client = Netns::named(format!("{base}c"));
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // The default route (below) leaves by the client's veth: no ICMP
        // redirects, they would eat the per-host ICMP budget of the rejects.
        node.exec(&["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"]);
        node.exec(&["sysctl", "-qw", "net.ipv4.conf.default.send_redirects=0"]);
        // (No dummy interfaces in this kernel: the node address sits on lo.)
        let addr = format!("{NODE_IP}/32");
        sh(&["ip", "-n", &node.name, "addr", "add", &addr, "dev", "lo"]);
        link(&node, &client, "vc", CLIENT_IP);
        // The node's uplink faces the client (the outside world): without a
        // route to Service VIPs the node would answer "network unreachable"
        // before any hook that can reject.
        sh(&[
            "ip", "-n", &node.name, "route", "add", "default", "dev", "vc",
        ]);
        let (procs, backends) = start_backends(&node, &base);
        Topology {
            procs,
            node,
            client,
            _backends: backends,
        }
    }

    /// `keelson proxy` programming the node netns.
    fn start_proxy(&self, server: &ServerProcess, mode: &str) -> Child {
        self.start_proxy_with(server, mode, &[], None)
    }

    /// [`Topology::start_proxy`] with extra flags and, if given, `PATH`.
    fn start_proxy_with(
        &self,
        server: &ServerProcess,
        mode: &str,
        extra: &[&str],
        path: Option<&str>,
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                server
                    .data_dir
                    .join(format!("proxy-{}.log", self.node.name)),
            )
            .unwrap();
        Command::new(keelson_bin())
            .args(["proxy", "--kubeconfig"])
            .arg(&server.kubeconfig)
            .args([
                "--node-name",
                NODE_NAME,
                "--proxy-mode",
                mode,
                "--netns",
                &self.node.name,
            ])
            .args([
                "--metrics-listen",
                &format!("127.0.0.1:{}", keelson_e2e::free_port()),
            ])
            .args(["--sync-period", "1s"])
            .args(extra)
            .env("KEELSON_LOG", "info")
            .env(
                "PATH",
                path.map(str::to_string)
                    .unwrap_or_else(|| std::env::var("PATH").unwrap_or_default()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keelson proxy")
    }

    /// The node's routes to `cidr` (`ip route show exact`).
    fn route(&self, cidr: &str) -> String {
        self.node
            .exec(&["ip", "route", "show", "exact", cidr])
            .trim()
            .to_string()
    }

    /// The test client, run in the node netns itself.
    fn node_client(&self, args: &[&str]) -> Vec<String> {
        let mut a = vec![TESTSRV];
        a.extend(args);
        self.node.exec(&a).lines().map(str::to_string).collect()
    }

    fn proxy_log(&self, server: &ServerProcess) -> String {
        std::fs::read_to_string(
            server
                .data_dir
                .join(format!("proxy-{}.log", self.node.name)),
        )
        .unwrap_or_default()
    }

    /// Runs the test client in the client netns: one output line per attempt.
    fn client(&self, args: &[&str]) -> Vec<String> {
        let mut a = vec![TESTSRV];
        a.extend(args);
        self.client.exec(&a).lines().map(str::to_string).collect()
    }

    fn table(&self) -> Option<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node.name,
                "nft",
                "list",
                "table",
                "ip",
                "keelson",
            ])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the node's table contains `needle`.
    fn wait_table(&self, needle: &str, server: &ServerProcess) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if self.table().is_some_and(|t| t.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "table never contained {needle:?}: {:?}\nproxy log:\n{}",
            self.table(),
            self.proxy_log(server)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusterip_tcp_udp_removal_and_reject() {
    skip_unless_ready!(true);
    let topo = Topology::new("a");
    let server = ServerProcess::start(None);
    let kc = server.client().await;
    let web = create_service(
        &kc,
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                               {"name": "echo", "port": 53, "protocol": "UDP"}]}}),
    )
    .await;
    let empty = create_service(
        &kc,
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "empty"},
            "spec": {"ports": [{"name": "t", "port": 80, "protocol": "TCP"}, {"name": "u", "port": 53, "protocol": "UDP"}]}}),
    )
    .await;
    let vip = cluster_ip(&web);
    let empty_vip = cluster_ip(&empty);
    put_slice(
        &kc,
        slice_json(
            "web",
            "web-1",
            &[("http", 80, "TCP"), ("echo", 80, "UDP")],
            &BACKEND_IPS,
        ),
    )
    .await;
    let mut proxy = Proc(topo.start_proxy(&server, "nftables"));
    topo.wait_table(&format!("{vip} . tcp . 80 : goto lb_3"), &server);
    topo.wait_table(&format!("{vip} . udp . 53 : goto lb_3"), &server);

    // TCP and UDP reach all three backends; the client address is kept.
    let tcp = topo.client(&["tcp", &format!("{vip}:80"), "60"]);
    let seen = names(&tcp);
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["b0".into(), "b1".into(), "b2".into()]),
        "TCP: {seen:?}"
    );
    assert!(tcp.iter().all(|l| l.ends_with(CLIENT_IP)), "{tcp:?}");
    let udp = topo.client(&["udp", &format!("{vip}:53"), "60"]);
    let seen = names(&udp);
    assert_eq!(seen.len(), 3, "UDP: {seen:?}");
    assert!(!seen.keys().any(|k| k.starts_with("ERR")), "UDP: {seen:?}");

    // A UDP flow pinned to one source port sticks to its backend...
    let first = topo.client(&["udp", &format!("{vip}:53"), "1", "41000"]);
    let pinned = first[0].split_whitespace().next().unwrap().to_string();
    let again = topo.client(&["udp", &format!("{vip}:53"), "3", "41000"]);
    assert!(again.iter().all(|l| l.starts_with(&pinned)), "{again:?}");

    // ...until that backend leaves the slice: once the table no longer
    // holds it (waited for, not guessed), new TCP connections go elsewhere,
    // and so does the same UDP flow once its stale conntrack entry is
    // flushed (polled: the flush follows the table change).
    let idx: usize = pinned[1..].parse().unwrap();
    let remaining: Vec<&str> = BACKEND_IPS
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, ip)| *ip)
        .collect();
    put_slice(
        &kc,
        slice_json(
            "web",
            "web-1",
            &[("http", 80, "TCP"), ("echo", 80, "UDP")],
            &remaining,
        ),
    )
    .await;
    let removed_ip = BACKEND_IPS[idx];
    let removed = Instant::now();
    wait_for(
        &format!("{pinned} ({removed_ip}) to leave the table"),
        Duration::from_secs(20),
        || {
            topo.table()
                .filter(|t| t.contains(&format!(": {}", remaining[0])))
                .filter(|t| !t.contains(&format!(": {removed_ip} . 80")))
                .map(|_| ())
        },
    );
    eprintln!(
        "{pinned} out of the table {:?} after the slice update",
        removed.elapsed()
    );
    let tcp = topo.client(&["tcp", &format!("{vip}:80"), "30"]);
    let seen = names(&tcp);
    assert!(
        !seen.contains_key(&pinned),
        "{pinned} still chosen after its removal was programmed: {seen:?}\n{}\n{}",
        topo.proxy_log(&server),
        topo.table().unwrap_or_default()
    );
    assert_eq!(seen.values().sum::<usize>(), 30);
    assert!(!seen.keys().any(|k| k.starts_with("ERR")), "{seen:?}");
    let mut after = Vec::new();
    let moved = |after: &[String]| {
        after
            .iter()
            .all(|l| !l.starts_with(&pinned) && !l.starts_with("ERR"))
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        after = topo.client(&["udp", &format!("{vip}:53"), "3", "41000"]);
        if moved(&after) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        moved(&after),
        "UDP flow still on removed {pinned} 10 s after the table changed: {after:?}\n{}",
        topo.proxy_log(&server)
    );

    // No endpoints: refused (TCP reset, ICMP port unreachable), not a timeout.
    topo.wait_table(&format!("{empty_vip} . tcp . 80"), &server);
    let start = Instant::now();
    let r = topo.client(&["tcp", &format!("{empty_vip}:80"), "1"]);
    assert_eq!(r, vec!["ERR connect ConnectionRefused".to_string()]);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "refusal took {:?}",
        start.elapsed()
    );
    let r = topo.client(&["udp", &format!("{empty_vip}:53"), "2"]);
    assert!(
        r.iter().all(|l| l == "ERR recv ConnectionRefused"),
        "{r:?}\n{}\n{}",
        topo.node.exec(&["nstat", "-az"]),
        topo.table().unwrap_or_default()
    );

    // A Service deleted: its elements go; the table stays.
    Api::<Service>::namespaced(kc.clone(), "default")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let start = Instant::now();
    while topo.table().unwrap().contains(&vip) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{vip} never removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(proxy.0.try_wait().unwrap().is_none(), "proxy exited");
    drop(topo);
}

/// The Service CIDR of `keelson server`'s default configuration.
const SERVICE_CIDR: &str = "10.96.0.0/12";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_cidr_is_refused_until_the_table_balances_it() {
    skip_unless_ready!(true);
    let topo = Topology::new("g");
    let server = ServerProcess::start(None);
    let kc = server.client().await;
    let web = create_service(
        &kc,
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
    )
    .await;
    let vip = cluster_ip(&web);
    put_slice(
        &kc,
        slice_json("web", "web-1", &[("http", 80, "TCP")], &BACKEND_IPS),
    )
    .await;
    // No address of the CIDR is allocated but the VIP (and 10.96.0.1).
    let unallocated = "10.111.222.111";
    assert_ne!(vip, unallocated);

    // nft is not on the proxy's PATH (Debian has it in /usr/sbin): the proxy
    // stops at once, naming the package, and the Service CIDR is refused on
    // the node, not sent out of its default route (which leads to the client).
    let mut failed = Proc(topo.start_proxy_with(
        &server,
        "nftables",
        &["--service-cidr", SERVICE_CIDR],
        Some("/usr/bin:/bin"),
    ));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = failed.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "proxy kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = topo.proxy_log(&server);
    assert!(
        log.contains("nft not found in PATH=/usr/bin:/bin (install the Debian package nftables"),
        "{log}"
    );
    assert!(
        topo.route(SERVICE_CIDR)
            .starts_with("unreachable 10.96.0.0/12"),
        "{}",
        topo.route(SERVICE_CIDR)
    );
    assert!(topo.table().is_none());
    for target in [&vip, unallocated] {
        let addr = format!("{target}:80");
        assert_eq!(
            topo.node_client(&["tcp", &addr, "1"]),
            ["ERR connect HostUnreachable"],
            "from the node to {addr}"
        );
        assert_eq!(
            topo.client(&["tcp", &addr, "1"]),
            ["ERR connect HostUnreachable"],
            "from the client to {addr}"
        );
    }

    // With nft: the Service is balanced, the rest of the CIDR rejected by
    // the table (reset), from the node and from outside.
    let _proxy =
        Proc(topo.start_proxy_with(&server, "nftables", &["--service-cidr", SERVICE_CIDR], None));
    topo.wait_table(&format!("{vip} . tcp . 80 : goto lb_3"), &server);
    let start = Instant::now();
    while !topo.route(SERVICE_CIDR).contains("dev keelson-svc") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "route never forwarded: {}
{}",
            topo.route(SERVICE_CIDR),
            topo.proxy_log(&server)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = names(&topo.client(&["tcp", &format!("{vip}:80"), "30"]));
    assert_eq!(seen.len(), 3, "{seen:?}");
    let seen = names(&topo.node_client(&["tcp", &format!("{vip}:80"), "10"]));
    assert!(
        seen.keys().all(|k| k.starts_with('b')),
        "from the node: {seen:?}"
    );
    let addr = format!("{unallocated}:80");
    assert_eq!(
        topo.node_client(&["tcp", &addr, "1"]),
        ["ERR connect ConnectionRefused"]
    );
    assert_eq!(
        topo.client(&["tcp", &addr, "1"]),
        ["ERR connect ConnectionRefused"]
    );
    drop(topo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodeport_from_outside_cluster_and_local_policy() {
    skip_unless_ready!(true);
    let topo = Topology::new("b");
    let server = ServerProcess::start(None);
    let kc = server.client().await;
    let svc = |name: &str, policy: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name},
            "spec": {"type": "NodePort", "externalTrafficPolicy": policy,
                     "ports": [{"port": 80, "protocol": "TCP"}]}})
    };
    let cluster = create_service(&kc, svc("np-cluster", "Cluster")).await;
    let local = create_service(&kc, svc("np-local", "Local")).await;
    let np = |s: &Service| {
        s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .node_port
            .unwrap()
    };
    let (np_cluster, np_local) = (np(&cluster), np(&local));
    put_slice(
        &kc,
        slice_json("np-cluster", "npc-1", &[("", 80, "TCP")], &BACKEND_IPS),
    )
    .await;
    put_slice(
        &kc,
        slice_json("np-local", "npl-1", &[("", 80, "TCP")], &BACKEND_IPS[..2]),
    )
    .await;
    let _proxy = Proc(topo.start_proxy(&server, "nftables"));
    topo.wait_table(&format!("tcp . {np_cluster} : goto npm_3"), &server);
    topo.wait_table(&format!("tcp . {np_local} : goto np_2"), &server);

    // Cluster policy: masqueraded, the backend sees the node's address.
    let r = topo.client(&["tcp", &format!("{NODE_IP}:{np_cluster}"), "30"]);
    assert_eq!(names(&r).len(), 3, "{r:?}");
    assert!(r.iter().all(|l| l.ends_with(" 169.254.1.1")), "{r:?}");
    // Local policy: the client's own address reaches the backend.
    let r = topo.client(&["tcp", &format!("{NODE_IP}:{np_local}"), "20"]);
    assert_eq!(names(&r).len(), 2, "{r:?}");
    assert!(
        r.iter().all(|l| l.ends_with(&format!(" {CLIENT_IP}"))),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_client_ip() {
    skip_unless_ready!(true);
    let topo = Topology::new("c");
    let server = ServerProcess::start(None);
    let kc = server.client().await;
    let sticky = create_service(
        &kc,
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "sticky"},
            "spec": {"sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                     "ports": [{"port": 80, "protocol": "TCP"}]}}),
    )
    .await;
    let plain = create_service(
        &kc,
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "plain"},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}),
    )
    .await;
    put_slice(
        &kc,
        slice_json("sticky", "sticky-1", &[("", 80, "TCP")], &BACKEND_IPS),
    )
    .await;
    put_slice(
        &kc,
        slice_json("plain", "plain-1", &[("", 80, "TCP")], &BACKEND_IPS),
    )
    .await;
    let _proxy = Proc(topo.start_proxy(&server, "nftables"));
    let (vs, vp) = (cluster_ip(&sticky), cluster_ip(&plain));
    topo.wait_table(&format!("{vs} . tcp . 80 : goto aff_"), &server);
    topo.wait_table(&format!("{vp} . tcp . 80 : goto lb_3"), &server);
    let r = topo.client(&["tcp", &format!("{vs}:80"), "30"]);
    assert_eq!(names(&r).len(), 1, "affinity broke: {r:?}");
    assert!(!r[0].starts_with("ERR"), "{r:?}");
    // The same client without affinity spreads (control: the test can fail).
    let r = topo.client(&["tcp", &format!("{vp}:80"), "30"]);
    assert!(names(&r).len() > 1, "{r:?}");
}

/// The table without the per-run generation marker.
fn normalized(table: &str) -> String {
    let mut out = Vec::new();
    let mut skip = false;
    for l in table.lines() {
        if l.trim_start().starts_with("set generation") {
            skip = true;
        }
        if !skip {
            out.push(l);
        }
        if skip && l.trim() == "}" {
            skip = false;
        }
    }
    out.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_restart_reconciles_and_mode_switch_removes_table() {
    skip_unless_ready!(true);
    let topo = Topology::new("d");
    let server = ServerProcess::start(None);
    let kc = server.client().await;
    let web = create_service(
        &kc,
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}}),
    )
    .await;
    put_slice(
        &kc,
        slice_json("web", "web-1", &[("", 80, "TCP")], &BACKEND_IPS),
    )
    .await;
    let vip = cluster_ip(&web);
    let mut proxy = Proc(topo.start_proxy(&server, "nftables"));
    topo.wait_table(&format!("{vip} . tcp . 80 : goto lb_3"), &server);
    let before = topo.table().unwrap();

    // A stream of connections through kill -9 and restart.
    // (It ends by itself after ~2 s: no guard needed.)
    let stream = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.client.name,
            TESTSRV,
            "tcp",
            &format!("{vip}:80"),
            "60",
            "25",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.0.kill().unwrap(); // SIGKILL
    proxy.0.wait().unwrap();
    let mut proxy = Proc(topo.start_proxy(&server, "nftables"));
    // The restart does a full sync (a new generation marker).
    let gen_of = |t: &str| {
        t.lines()
            .skip_while(|l| !l.contains("set generation"))
            .find(|l| l.contains("elements"))
            .map(str::to_string)
    };
    let start = Instant::now();
    while gen_of(&topo.table().unwrap()) == gen_of(&before) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            topo.proxy_log(&server)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = stream.wait_with_output().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 60);
    // The table stays in place while the proxy is down: nothing fails.
    assert!(lines.iter().all(|l| !l.starts_with("ERR")), "{lines:?}");
    let after = topo.table().unwrap();
    assert_eq!(
        normalized(&before),
        normalized(&after),
        "reconciled table differs"
    );
    let listing = topo.node.exec(&["nft", "list", "tables"]);
    assert_eq!(listing.matches("keelson").count(), 1, "{listing}");

    // Drift: someone deletes the table; the next drift check restores it.
    topo.node.exec(&["nft", "delete", "table", "ip", "keelson"]);
    topo.wait_table(&format!("{vip} . tcp . 80 : goto lb_3"), &server);

    // Switching to another mode removes the nftables state.
    proxy.0.kill().unwrap();
    proxy.0.wait().unwrap();
    let status = topo.start_proxy(&server, "none").wait().unwrap();
    assert!(status.success(), "{}", topo.proxy_log(&server));
    assert!(
        topo.table().is_none(),
        "table left behind by --proxy-mode none"
    );
    let mut p = Proc(topo.start_proxy(&server, "nftables"));
    topo.wait_table(&vip, &server);
    p.0.kill().unwrap();
    p.0.wait().unwrap();
    // ebpf after nftables removing the table: tests/ebpf.rs
    // (switching_modes_removes_the_other_backend), with a test cgroup and
    // pin dir instead of the host's.
    assert_eq!(topo.procs.len(), 3);
}

#[test]
fn golden_rulesets_load_into_the_kernel() {
    skip_unless_ready!(false);
    let ns = Netns::new("kpg");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "nft") {
            ns.exec(&["nft", "-f", p.to_str().unwrap()]);
            // Loading twice replaces, it does not duplicate.
            let once = ns.exec(&["nft", "list", "table", "ip", "keelson"]);
            ns.exec(&["nft", "-f", p.to_str().unwrap()]);
            assert_eq!(
                once,
                ns.exec(&["nft", "list", "table", "ip", "keelson"]),
                "{}",
                p.display()
            );
            n += 1;
        }
    }
    assert!(n >= 7);
}

/// `nft list table` with the generation marker dropped and every element
/// list sorted (the kernel lists hash sets in its own order).
fn canonical(listing: &str) -> String {
    let text = normalized(listing);
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("elements = {") {
        out.push_str(&rest[..i + "elements = {".len()]);
        rest = &rest[i + "elements = {".len()..];
        let end = rest.find('}').expect("closing brace of elements");
        let mut items: Vec<String> = rest[..end]
            .split(',')
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty())
            .collect();
        items.sort();
        out.push_str(&items.join(",\n"));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn bench_like_service(i: u8, local: bool, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        protocol: if i.is_multiple_of(2) {
            Protocol::Tcp
        } else {
            Protocol::Udp
        },
        port: 80 + u16::from(i),
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, i)],
        external_ips: if i == 3 {
            vec![Ipv4Addr::new(192, 0, 2, 3)]
        } else {
            vec![]
        },
        node_port,
        affinity_timeout: None,
        external_local: false,
        internal_endpoints: (0..2)
            .map(|k| Endpoint {
                ip: Ipv4Addr::new(10, 244, k, i),
                port: 8080,
                local: local && k == 0,
            })
            .collect(),
        external_endpoints: (0..2)
            .map(|k| Endpoint {
                ip: Ipv4Addr::new(10, 244, k, i),
                port: 8080,
                local: local && k == 0,
            })
            .collect(),
    }
}

fn spn(name: &str) -> ServicePortName {
    ServicePortName {
        namespace: "ns".into(),
        name: name.into(),
        port: "p".into(),
        protocol: Protocol::Tcp,
    }
}

use keelson_proxy::backend::ProxyBackend as _;
use keelson_proxy::model::{DesiredState, Endpoint, Protocol, ServicePort, ServicePortName};
use keelson_proxy::nft::netlink::NetlinkSocket;
use keelson_proxy::nft::render::NftConfig;
use keelson_proxy::nft::{FullSyncKind, NftBackend, NftCli};
use keelson_proxy::plan::plan;
use std::net::Ipv4Addr;

/// Four Services (one with a local endpoint, two NodePorts) and one with
/// affinity (per-Service chains, dynamic sets, an anonymous verdict map).
fn mixed_state() -> DesiredState {
    let mut s = DesiredState::default();
    for i in 1..=4u8 {
        s.services.insert(
            spn(&format!("s{i}")),
            bench_like_service(i, i == 2, (i >= 3).then_some(30000 + u16::from(i))),
        );
    }
    let mut aff = bench_like_service(6, false, Some(30006));
    aff.affinity_timeout = Some(300);
    s.services.insert(spn("s6"), aff);
    s
}

/// Element changes sent over netlink leave the kernel table exactly as a
/// full `nft -f` render of the new state would: endpoint swaps, added and
/// removed Services, NodePorts, hairpin elements, a Service losing all its
/// endpoints (noep sets) and getting them back.
#[test]
fn netlink_element_changes_match_a_full_render() {
    skip_unless_ready!(false);
    let ns = Netns::new("kpnl");
    let cfg = NftConfig {
        prealloc_families: 3,
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        nodeport_addresses: vec!["192.168.200.0/24".parse().unwrap()],
        ..Default::default()
    };
    let sock = NetlinkSocket::open(Some(&ns.name)).expect("open netlink socket in the netns");
    let mut backend = NftBackend::new(NftCli::in_netns(&ns.name), cfg.clone())
        .with_element_writer(Box::new(sock));
    let mut reference = NftBackend::new(NftCli::in_netns(&ns.name), cfg.clone());

    let s0 = mixed_state();
    let mut states = vec![s0.clone()];
    let mut s = s0.clone();
    // One endpoint replaced.
    s.services.get_mut(&spn("s1")).unwrap().internal_endpoints[1].ip = Ipv4Addr::new(9, 9, 9, 9);
    states.push(s.clone());
    // A Service added (with a local endpoint: a hairpin element), one removed.
    s.services
        .insert(spn("s5"), bench_like_service(5, true, Some(30005)));
    s.services.remove(&spn("s2"));
    states.push(s.clone());
    // A NodePort Service loses every endpoint, then gets them back.
    let sp = s.services.get_mut(&spn("s3")).unwrap();
    sp.internal_endpoints.clear();
    sp.external_endpoints.clear();
    states.push(s.clone());
    states.push(s0.clone());

    backend.full_sync(&states[0]).expect("full sync");
    for pair in states.windows(2) {
        let (from, to) = (&pair[0], &pair[1]);
        let changes = plan(from, to);
        assert!(!changes.is_empty());
        backend.apply(&changes, to).expect("netlink change");
        let after_change = ns.exec(&["nft", "list", "table", "ip", "keelson"]);
        reference.full_sync(to).expect("reference full sync");
        let full = ns.exec(&["nft", "list", "table", "ip", "keelson"]);
        assert_eq!(
            canonical(&after_change),
            canonical(&full),
            "after a netlink change vs a full render"
        );
        // Put the netlink-programmed state back for the next step (the
        // backend's own full sync: same content, its own generation).
        backend.full_sync(to).expect("full sync");
        let tables = ns.exec(&["nft", "list", "tables"]);
        assert_eq!(tables.trim(), "table ip keelson");
    }
    // A change the kernel rejects (deleting an element that is not there)
    // is an error naming the table, not silently ignored.
    let mut ghost = states.last().unwrap().clone();
    ghost
        .services
        .insert(spn("ghost"), bench_like_service(77, false, None));
    let changes = plan(&ghost, states.last().unwrap());
    let err = backend
        .apply(&changes, states.last().unwrap())
        .expect_err("deleting missing elements must fail");
    assert!(err.to_string().contains("keelson"), "{err}");
}

/// The three ways a full sync writes the table (no table: structure by
/// `nft -f` then elements by netlink; same structure: one netlink
/// transaction; otherwise one `nft -f` rebuild) leave exactly what a
/// whole-table `nft -f` of the same state leaves, and the element-only way
/// is taken only when the kernel's table has this structure.
#[test]
fn full_sync_paths_leave_the_same_table() {
    skip_unless_ready!(false);
    let ns = Netns::new("kpfs");
    let cfg = NftConfig {
        prealloc_families: 3,
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..Default::default()
    };
    let netlink_backend = |cfg: &NftConfig| {
        let sock = NetlinkSocket::open(Some(&ns.name)).expect("open netlink socket in the netns");
        NftBackend::new(NftCli::in_netns(&ns.name), cfg.clone()).with_element_writer(Box::new(sock))
    };
    let mut backend = netlink_backend(&cfg);
    let mut reference = NftBackend::new(NftCli::in_netns(&ns.name), cfg.clone());
    let list = || ns.exec(&["nft", "list", "table", "ip", "keelson"]);

    let s0 = mixed_state();
    // Same structure, other elements: endpoints swapped, a Service gone,
    // one added (with a local endpoint: hairpin).
    let mut s1 = s0.clone();
    s1.services.get_mut(&spn("s1")).unwrap().internal_endpoints[1].ip = Ipv4Addr::new(9, 9, 9, 9);
    s1.services.remove(&spn("s2"));
    s1.services
        .insert(spn("s5"), bench_like_service(5, true, Some(30005)));

    backend.full_sync(&s0).expect("full sync, no table");
    assert_eq!(backend.last_full_sync(), FullSyncKind::Created);
    let created = list();
    reference.full_sync(&s0).expect("reference full sync");
    assert_eq!(reference.last_full_sync(), FullSyncKind::Rebuilt);
    assert_eq!(
        canonical(&created),
        canonical(&list()),
        "created vs rebuilt"
    );

    backend.full_sync(&s1).expect("full sync, table present");
    assert_eq!(backend.last_full_sync(), FullSyncKind::Elements);
    let replaced = list();
    assert!(!backend.drifted().expect("drift check"), "{replaced}");
    reference.full_sync(&s1).expect("reference full sync");
    assert_eq!(
        canonical(&replaced),
        canonical(&list()),
        "elements vs rebuilt"
    );
    assert!(
        canonical(&replaced) != canonical(&created),
        "the states differ"
    );

    // Another structure (a NodePort address range) in the kernel: rebuilt.
    let other = NftConfig {
        nodeport_addresses: vec!["192.168.200.0/24".parse().unwrap()],
        ..cfg.clone()
    };
    let mut b2 = netlink_backend(&other);
    b2.full_sync(&s1).expect("full sync, other structure");
    assert_eq!(b2.last_full_sync(), FullSyncKind::Rebuilt);
    assert!(list().contains("192.168.200.0/24"));

    // Drift (the table replaced behind the backend's back): the next full
    // sync rebuilds even though the structure fingerprint matches.
    backend.full_sync(&s1).expect("full sync");
    assert_eq!(
        backend.last_full_sync(),
        FullSyncKind::Rebuilt,
        "b2 changed the structure"
    );
    reference
        .full_sync(&s1)
        .expect("someone else writes the table");
    assert!(backend.drifted().expect("drift check"));
    backend.full_sync(&s1).expect("full sync after drift");
    assert_eq!(backend.last_full_sync(), FullSyncKind::Rebuilt);
    assert!(!backend.drifted().expect("drift check"));
    backend.full_sync(&s0).expect("full sync");
    assert_eq!(backend.last_full_sync(), FullSyncKind::Elements);
    assert_eq!(canonical(&list()), canonical(&created));
    // Drift by deletion: nothing left to keep consistent, so the fast
    // creation path, and the same table again.
    ns.exec(&["nft", "delete", "table", "ip", "keelson"]);
    assert!(backend.drifted().expect("drift check"));
    backend.full_sync(&s0).expect("full sync after deletion");
    assert_eq!(backend.last_full_sync(), FullSyncKind::Created);
    assert_eq!(canonical(&list()), canonical(&created));
}
