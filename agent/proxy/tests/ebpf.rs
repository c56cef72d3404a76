//! Real-kernel tests of the eBPF backend (root): the real `keelson proxy
//! --proxy-mode ebpf` process, talking to a real `keelson server` on
//! loopback, loads the socket programs into a test cgroup2 and pins them in
//! a test bpffs directory. Clients join that cgroup before entering their
//! netns (`ip netns exec` remounts /sys). Topology as in tests/nftables.rs:
//! a "node" netns routing between a client netns and three backend netns
//! that run `keelson-proxy-testsrv serve`.
//!
//! Skips when not root or a tool, the keelson binary or kernel support is
//! missing, unless KEELSON_REQUIRE_ALL=1.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_e2e::ServerProcess;

mod common;
use common::*;

/// The node's address for outside clients (on the node netns' lo, as in
/// tests/nftables.rs); the client's default route goes through the node.
const NODE_IP: &str = "192.168.200.1";

/// The cgroup2 hierarchy, detected (pure v2 or hybrid).
fn cgroup2() -> PathBuf {
    keelson_e2e::cgroup2().expect("a cgroup2 hierarchy (checked by skip_unless_ready)")
}

/// Whether this test can run here (the kit's rule), with the kernel
/// probed for what the programs need.
fn can_run(test: &str) -> bool {
    let n = needs(test, &["ip", "nft", "bpftool"], true).cgroup2();
    let probe = match keelson_e2e::cgroup2() {
        Some(cg) => keelson_ebpf::probe(Some(&cg)).map_err(|e| e.to_string()),
        None => Ok(()),
    };
    n.also(probe.is_ok(), &probe.err().unwrap_or_default()).ok()
}

macro_rules! skip_unless_ready {
    () => {
        if !can_run(module_path!()) {
            return;
        }
    };
}

/// A cgroup2 directory, removed on drop after killing what is left in it.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(name: &str) -> Cgroup {
        let path = cgroup2().join(name);
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        Cgroup(path)
    }

    /// Ids of the programs attached to it (bpftool's view).
    fn prog_ids(&self) -> Vec<u64> {
        let out = sh(&["bpftool", "-j", "cgroup", "show", &self.0.to_string_lossy()]);
        let mut ids: Vec<u64> = out
            .split("\"id\":")
            .skip(1)
            .filter_map(|p| {
                p.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort();
        ids
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A bpffs pin directory, everything under it removed on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = keelson_ebpf::remove_all(&self.0);
    }
}

/// Declaration order is drop order: processes die first, then the netns,
/// then the cgroup, then the pins.
struct Topology {
    _procs: Vec<Proc>,
    node: Netns,
    client: Netns,
    _backends: Vec<Netns>,
    cg: Cgroup,
    pins: Pins,
    log: PathBuf,
}

impl Topology {
    fn new(tag: &str, server: &ServerProcess) -> Topology {
        let base = unique("ke", tag);
        let cg = Cgroup::new(&format!("{base}cg"));
        let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/keelson-test-{base}")));
        let node = Netns::named(format!("{base}n"));
        let client = Netns::named(format!("{base}c"));
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        node.exec(&["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"]);
        link(&node, &client, "vc", CLIENT_IP);
        let (procs, backends) = start_backends(&node, &base);
        let log = server.data_dir.join(format!("proxy-{base}.log"));
        Topology {
            _procs: procs,
            node,
            client,
            _backends: backends,
            cg,
            pins,
            log,
        }
    }

    /// `keelson proxy` with the socket programs on the test cgroup, pins in
    /// the test directory and nftables (for the other mode) in the node netns.
    fn start_proxy(&self, server: &ServerProcess, mode: &str) -> Proc {
        self.start_proxy_with(server, mode, &[])
    }

    /// [`Topology::start_proxy`] with `extra` flags.
    fn start_proxy_with(&self, server: &ServerProcess, mode: &str, extra: &[&str]) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        Proc(
            Command::new(keelson_bin())
                .args(["proxy", "--kubeconfig"])
                .arg(&server.kubeconfig)
                .args(["--node-name", NODE_NAME, "--proxy-mode", mode])
                .args(["--netns", &self.node.name])
                .arg("--bpf-pin-dir")
                .arg(&self.pins.0)
                .arg("--cgroup2-path")
                .arg(&self.cg.0)
                .args([
                    "--metrics-listen",
                    &format!("127.0.0.1:{}", keelson_e2e::free_port()),
                ])
                .args(["--sync-period", "1s"])
                .args(extra)
                .env("KEELSON_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn keelson proxy"),
        )
    }

    fn proxy_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The text dump of the pinned maps; `None` when there are none.
    fn dump(&self) -> Option<String> {
        let maps = keelson_ebpf::AyaMaps::open_pinned(&self.pins.0).ok()?;
        keelson_ebpf::dump_maps(&maps).ok()
    }

    /// Waits until the pinned maps' dump satisfies `f`.
    fn wait_dump(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(d) = self.dump().filter(|d| f(d)) {
                return d;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "maps never showed {what}: {:?}\nproxy log:\n{}",
            self.dump(),
            self.proxy_log()
        );
    }

    fn wait_log_count(&self, needle: &str, n: usize) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if self.proxy_log().matches(needle).count() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("proxy log never had {n}x {needle:?}:\n{}", self.proxy_log());
    }

    /// The test client, in the test cgroup, then in the client netns.
    fn client_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "echo $$ > {}/cgroup.procs && exec ip netns exec {} {TESTSRV} {}",
            self.cg.0.display(),
            self.client.name,
            args.join(" ")
        ));
        c
    }

    /// One output line per attempt.
    fn client(&self, args: &[&str]) -> Vec<String> {
        let out = self.client_cmd(args).output().expect("run client");
        assert!(
            out.status.success(),
            "client {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The test client in the client netns but outside the test cgroup (no
    /// socket programs): a client outside the cluster. One line per attempt.
    fn outside_client(&self, args: &[&str]) -> Vec<String> {
        let mut a = vec![TESTSRV];
        a.extend(args);
        self.client.exec(&a).lines().map(str::to_string).collect()
    }

    fn link_pins(&self) -> usize {
        std::fs::read_dir(self.pins.0.join("links")).map_or(0, |d| d.count())
    }

    fn nft_table(&self) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.node.name])
            .args(["nft", "list", "table", "ip", "keelson"])
            .output()
            .unwrap()
            .status
            .success()
    }
}

fn slice(service: &str, ports: &[(&str, u16, &str)], ips: &[&str]) -> EndpointSlice {
    slice_json(service, &format!("{service}-1"), ports, ips)
}

/// Service "web" (TCP 80 and UDP 53 -> port 80 of the three backends).
async fn web_service(kc: &kube::Client, affinity: bool) -> String {
    let mut spec = serde_json::json!({"ports": [
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "echo", "port": 53, "protocol": "UDP"}]});
    if affinity {
        spec["sessionAffinity"] = "ClientIP".into();
    }
    let web = create_service(
        kc,
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"}, "spec": spec}),
    )
    .await;
    put_slice(
        kc,
        slice(
            "web",
            &[("http", 80, "TCP"), ("echo", 80, "UDP")],
            &BACKEND_IPS,
        ),
    )
    .await;
    cluster_ip(&web)
}

fn all_three(seen: &BTreeMap<String, usize>) -> bool {
    seen.keys().cloned().collect::<BTreeSet<_>>()
        == BTreeSet::from(["b0".into(), "b1".into(), "b2".into()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusterip_tcp_udp_removal_and_reject() {
    skip_unless_ready!();
    let server = ServerProcess::start(None);
    let topo = Topology::new("a", &server);
    let kc = server.client().await;
    let vip = web_service(&kc, false).await;
    let empty = create_service(
        &kc,
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "empty"},
            "spec": {"ports": [{"name": "t", "port": 80, "protocol": "TCP"},
                               {"name": "u", "port": 53, "protocol": "UDP"}]}}),
    )
    .await;
    let empty_vip = cluster_ip(&empty);
    let _proxy = topo.start_proxy(&server, "ebpf");
    topo.wait_dump("web and empty", |d| {
        d.contains(&format!("tcp {vip}:80 flags=- count=3"))
            && d.contains(&format!("udp {vip}:53 flags=- count=3"))
            && d.contains(&format!("tcp {empty_vip}:80 flags=- count=0"))
    });
    assert!(
        !topo.nft_table(),
        "ebpf mode left an nftables table in the node netns"
    );

    // TCP and UDP reach all three backends; the client address is kept.
    let tcp = topo.client(&["tcp", &format!("{vip}:80"), "60"]);
    let seen = names(&tcp);
    assert!(all_three(&seen), "TCP: {seen:?}\n{}", topo.proxy_log());
    assert!(tcp.iter().all(|l| l.ends_with(CLIENT_IP)), "{tcp:?}");
    let udp = topo.client(&["udp", &format!("{vip}:53"), "60"]);
    let seen = names(&udp);
    assert!(all_three(&seen), "UDP: {seen:?}");

    // Removing an endpoint: once the maps hold two backends (waited for,
    // not guessed), no new connection reaches it.
    let removed = Instant::now();
    put_slice(
        &kc,
        slice(
            "web",
            &[("http", 80, "TCP"), ("echo", 80, "UDP")],
            &BACKEND_IPS[1..],
        ),
    )
    .await;
    topo.wait_dump("web without b0", |d| {
        d.contains(&format!("tcp {vip}:80 flags=- count=2"))
            && d.contains(&format!("udp {vip}:53 flags=- count=2"))
    });
    eprintln!(
        "b0 out of the maps {:?} after the slice update",
        removed.elapsed()
    );
    let tcp = topo.client(&["tcp", &format!("{vip}:80"), "40"]);
    let seen = names(&tcp);
    assert!(
        !seen.contains_key("b0") && seen.len() == 2,
        "TCP after removing b0: {seen:?}\n{:?}\n{}",
        topo.dump(),
        topo.proxy_log()
    );
    let udp = topo.client(&["udp", &format!("{vip}:53"), "40"]);
    let seen = names(&udp);
    assert!(
        !seen.contains_key("b0") && seen.len() == 2,
        "UDP after removing b0: {seen:?}"
    );

    // No endpoints: refused at once, not a timeout.
    let start = Instant::now();
    let tcp = topo.client(&["tcp", &format!("{empty_vip}:80"), "3"]);
    let udp = topo.client(&["udp", &format!("{empty_vip}:53"), "3"]);
    assert!(
        tcp.iter().all(|l| l == "ERR connect ConnectionRefused"),
        "{tcp:?}"
    );
    assert!(
        udp.iter().all(|l| l.contains("ConnectionRefused")),
        "{udp:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "rejects were slow"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_keeps_a_client_on_one_backend() {
    skip_unless_ready!();
    let server = ServerProcess::start(None);
    let topo = Topology::new("s", &server);
    let kc = server.client().await;
    let vip = web_service(&kc, true).await;
    let _proxy = topo.start_proxy(&server, "ebpf");
    topo.wait_dump("affinity", |d| {
        d.contains(&format!(
            "tcp {vip}:80 flags=affinity count=3 affinity=10800s"
        ))
    });
    for proto in ["tcp", "udp"] {
        let port = if proto == "tcp" { 80 } else { 53 };
        let lines = topo.client(&[proto, &format!("{vip}:{port}"), "30"]);
        let seen = names(&lines);
        assert_eq!(seen.len(), 1, "{proto} with ClientIP affinity: {seen:?}");
        assert!(seen.keys().all(|k| k.starts_with('b')), "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keeps_traffic_and_reconciles() {
    skip_unless_ready!();
    let server = ServerProcess::start(None);
    let topo = Topology::new("k", &server);
    let kc = server.client().await;
    let vip = web_service(&kc, false).await;
    let mut proxy = topo.start_proxy(&server, "ebpf");
    let before = topo.wait_dump("web", |d| {
        d.contains(&format!("tcp {vip}:80 flags=- count=3"))
            && d.contains(&format!("udp {vip}:53 flags=- count=3"))
    });
    topo.wait_log_count("synced", 1);
    let progs = topo.cg.prog_ids();
    let links = topo.link_pins();
    assert_eq!(progs.len(), 4, "socket programs on the cgroup: {progs:?}");
    assert_eq!(links, 4, "pinned links");

    // A stream of connections (~4 s) across the kill and the restart.
    let stream = topo
        .client_cmd(&["tcp", &format!("{vip}:80"), "400", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn client stream");
    let stream = Proc(stream);
    tokio::time::sleep(Duration::from_millis(800)).await;
    sh(&["kill", "-9", &proxy.0.id().to_string()]);
    let _ = proxy.0.wait();
    // Dead for a while: the pinned programs keep balancing.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut p2 = topo.start_proxy(&server, "ebpf");
    topo.wait_log_count("synced", 2);
    let mut stream = stream;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stream.0.stdout.take().unwrap(), &mut out).unwrap();
    let _ = stream.0.wait();
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    let seen = names(&lines);
    assert_eq!(lines.len(), 400, "stream lines: {seen:?}");
    assert!(
        !seen.keys().any(|k| k.starts_with("ERR")),
        "attempts failed across kill -9 and restart: {seen:?}\n{}",
        topo.proxy_log()
    );
    assert!(all_three(&seen), "{seen:?}");

    // Reconciled, not duplicated: same programs, links and maps.
    assert_eq!(topo.cg.prog_ids(), progs, "cgroup programs after restart");
    assert_eq!(topo.link_pins(), links, "pinned links after restart");
    assert_eq!(topo.dump().as_deref(), Some(before.as_str()), "map dump");
    assert!(topo.proxy_log().contains("adopted"), "{}", topo.proxy_log());
    // And it keeps programming changes.
    put_slice(
        &kc,
        slice(
            "web",
            &[("http", 80, "TCP"), ("echo", 80, "UDP")],
            &BACKEND_IPS[..1],
        ),
    )
    .await;
    topo.wait_dump("one backend", |d| {
        d.contains(&format!("tcp {vip}:80 flags=- count=1"))
    });
    assert!(!topo.dump().unwrap().contains("orphan"));
    let _ = p2.0.kill();
    let _ = p2.0.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_modes_removes_the_other_backend() {
    skip_unless_ready!();
    let server = ServerProcess::start(None);
    let topo = Topology::new("m", &server);
    let kc = server.client().await;
    let vip = web_service(&kc, false).await;

    // ebpf: programs attached and pinned.
    let mut p = topo.start_proxy(&server, "ebpf");
    topo.wait_dump("web", |d| {
        d.contains(&format!("tcp {vip}:80 flags=- count=3"))
    });
    assert_eq!(topo.cg.prog_ids().len(), 4);
    let _ = p.0.kill();
    let _ = p.0.wait();
    drop(p);

    // nftables after ebpf: pins and links gone, traffic through nftables.
    let mut p = topo.start_proxy(&server, "nftables");
    let start = Instant::now();
    while !topo.nft_table() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(topo.nft_table(), "no nft table:\n{}", topo.proxy_log());
    assert!(
        !topo.pins.0.exists(),
        "pin dir {} left by nftables mode",
        topo.pins.0.display()
    );
    assert!(
        topo.cg.prog_ids().is_empty(),
        "socket programs still attached: {:?}",
        topo.cg.prog_ids()
    );
    let _ = p.0.kill();
    let _ = p.0.wait();
    drop(p);

    // ebpf after nftables: the table goes.
    let _p = topo.start_proxy(&server, "ebpf");
    topo.wait_dump("web again", |d| {
        d.contains(&format!("tcp {vip}:80 flags=- count=3"))
    });
    assert!(!topo.nft_table(), "nft table left by ebpf mode");
    let tcp = topo.client(&["tcp", &format!("{vip}:80"), "30"]);
    assert!(all_three(&names(&tcp)), "{tcp:?}");
}

/// NodePorts through the TC programs on the node's client-facing veth
/// (`--tc-interfaces vc`, looked up in the `--netns` node netns), reached
/// by a client outside the cluster (not in the test cgroup, so no socket
/// programs) at the node's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodeport_from_outside_cluster_and_local_policy() {
    skip_unless_ready!();
    let server = ServerProcess::start(None);
    let topo = Topology::new("n", &server);
    let addr = format!("{NODE_IP}/32");
    sh(&[
        "ip",
        "-n",
        &topo.node.name,
        "addr",
        "add",
        &addr,
        "dev",
        "lo",
    ]);
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
    // Local policy: b0 and b1 are on this node (nodeName = --node-name),
    // b2 on another one; outside clients must reach only b0 and b1.
    let mut local_slice = slice_json("np-local", "npl-1", &[("", 80, "TCP")], &BACKEND_IPS);
    local_slice.endpoints.as_mut().unwrap()[2].node_name = Some("node-b".into());
    put_slice(&kc, local_slice).await;

    // Control: without the proxy the node port is closed.
    let r = topo.outside_client(&["tcp", &format!("{NODE_IP}:{np_local}"), "1"]);
    assert_eq!(r, ["ERR connect ConnectionRefused"], "before the proxy");

    let _proxy = topo.start_proxy_with(&server, "ebpf", &["--tc-interfaces", "vc"]);
    topo.wait_dump("the node ports", |d| {
        d.contains(&format!("tcp 0.0.0.0:{np_cluster} flags=nodeport count=3"))
            && d.contains(&format!(
                "tcp 0.0.0.0:{np_local} flags=nodeport,ext-local count=2"
            ))
    });
    for pin in ["tc-ingress-vc", "tc-egress-vc"] {
        assert!(
            topo.pins.0.join("links").join(pin).exists(),
            "no {pin} link pinned:\n{}",
            topo.proxy_log()
        );
    }

    // Local policy: the local backends only, and they see the client's own
    // address.
    let r = topo.outside_client(&["tcp", &format!("{NODE_IP}:{np_local}"), "30"]);
    let seen = names(&r);
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["b0", "b1"],
        "Local policy: {r:?}\n{:?}\n{}",
        topo.dump(),
        topo.proxy_log()
    );
    assert!(
        r.iter().all(|l| l.ends_with(&format!(" {CLIENT_IP}"))),
        "Local policy must keep the client address: {r:?}"
    );
    // Cluster policy: all three, masqueraded to the node's address toward
    // the backends (169.254.1.1 on their veths).
    let r = topo.outside_client(&["tcp", &format!("{NODE_IP}:{np_cluster}"), "30"]);
    assert!(
        all_three(&names(&r)),
        "Cluster policy: {r:?}\n{}",
        topo.proxy_log()
    );
    assert!(r.iter().all(|l| l.ends_with(" 169.254.1.1")), "{r:?}");
}
