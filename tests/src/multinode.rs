//! A cluster of one `keelson server` and several `keelson agent`s on one
//! machine, each agent in its own network namespace standing for a node.
//!
//! Layout (S is picked per cluster so that clusters can run side by side):
//!
//! ```text
//!  host: bridge kmb<tag> 10.250.S.1/24 ── server (10.250.S.1:PORT), registry (10.250.S.1:PORT)
//!    ├─ veth ── netns kmn<tag>-1: eth0 10.250.S.11/24, agent node 1, pods 10.244.1.0/24
//!    ├─ veth ── netns kmn<tag>-2: eth0 10.250.S.12/24, agent node 2, pods 10.244.2.0/24
//!    ├─ ...
//!    └─ veth ── netns kmn<tag>-c: eth0 10.250.S.100/24, an outside client (no agent)
//! ```
//!
//! Each agent runs `unshare --mount` (its own mount namespace) and `nsenter
//! --net` into its node's namespace, with its own root, run, log, CNI config
//! and IPAM dirs and cgroup root; keelson-cni gives each node a pod CIDR and
//! the agents' route watchers route between them over the shared link.
//! Cluster DNS answers on the node IP.
//!
//! The Service proxy runs in the [`ProxyMode`] the cluster was started with:
//! - [`ProxyMode::Nftables`] ([`Cluster::start`]): its table lives in the
//!   node's netns; a tmpfs over /sys/fs/bpf in the agent's mount namespace
//!   keeps the proxy's eBPF cleanup away from the host's pins.
//! - [`ProxyMode::Ebpf`] (`Cluster::start_with(.., ProxyMode::Ebpf)`): a
//!   fresh bpffs over /sys/fs/bpf in the agent's mount namespace (each bpffs
//!   mount is its own instance) holds the node's pins under
//!   `--proxy-bpf-pin-dir /sys/fs/bpf/<cgroup root>`, and the socket programs
//!   attach to the node's own cgroup2 subtree (`--proxy-cgroup2-path`, the
//!   `--cgroup-root` directory in the cgroup2 hierarchy, created by the
//!   harness), so a node's pods get that node's load balancer only. The
//!   pins (and with them the links) go when the agent's mount namespace
//!   does; the cgroups are removed by the harness like in nftables mode.
//!   [`Cluster::exec_in_pod`] then also joins the pod's cgroup2 cgroup, the
//!   socket programs' scope. The TC program (NodePorts for outside clients)
//!   sits on the node's eth0 (`--proxy-tc-interfaces`).
//!
//! Drop tears everything down: agents, their containers and shims, cgroups,
//! network namespaces (with every veth in them), the bridge, the registry
//! and the server.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::registry::{Registry, missing_image_tools};
use crate::{Needs, free_port, keelson_bin, kubectl_path, run};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The kubectl minor version the harness uses.
pub const KUBECTL: u32 = 33;

/// What a multi-node test whose proxies run in `mode` needs.
pub fn needs_for(test: &str, mode: ProxyMode) -> Needs {
    let mut n = crate::needs(test)
        .root()
        .tools(&[
            "/usr/sbin/runc",
            "/usr/sbin/ip",
            "/usr/sbin/nft",
            "/usr/bin/nsenter",
            "/usr/bin/unshare",
            "/usr/bin/curl",
            "/usr/bin/pgrep",
            "/usr/bin/timeout",
        ])
        .path(kubectl_path(KUBECTL), "kubectl");
    for t in missing_image_tools() {
        n = n.also(false, &format!("test image tool {t}"));
    }
    n = n
        .path(crate::registry::registry_binary(), "docker-registry")
        .keelson()
        .workspace_bin("keelson-cni");
    if mode == ProxyMode::Ebpf {
        n = n
            .cgroup2()
            .path("/sys/fs/bpf", "/sys/fs/bpf (eBPF proxy mode)");
    }
    n
}

/// `true` when the test should go on; prints why not (or panics under
/// `KEELSON_REQUIRE_ALL=1`).
pub fn can_run(test: &str) -> bool {
    can_run_with(test, ProxyMode::Nftables)
}

/// [`can_run`] for a cluster whose proxy runs in `mode`.
pub fn can_run_with(test: &str, mode: ProxyMode) -> bool {
    needs_for(test, mode).ok()
}

/// How the agents run the Service proxy (`keelson agent --proxy-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// nftables in each node's netns.
    Nftables,
    /// eBPF socket programs on each node's cgroup2 subtree, pins in a
    /// bpffs of the agent's own.
    Ebpf,
}

impl ProxyMode {
    /// The `--proxy-mode` value.
    pub fn flag(self) -> &'static str {
        match self {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Ebpf => "ebpf",
        }
    }
}

/// The line the proxy logs when it runs eBPF (with `pin_dir=` and
/// `attached=`).
pub const EBPF_LOADED: &str = "eBPF load balancer loaded";
/// The start of what the proxy logs when `--proxy-mode ebpf` cannot load
/// its programs and it runs nftables instead.
pub const EBPF_FALLBACK: &str = "falling back to --proxy-mode nftables";

/// The cgroup2 hierarchy: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified
/// (hybrid); None on a v1-only host.
pub fn cgroup2_mount() -> Option<PathBuf> {
    crate::cgroup2()
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

/// Waits until `f` holds, polling every 250 ms; panics naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what}: not within {timeout:?}");
}

/// The shared link: the bridge in the host and one netns per endpoint.
/// Drop deletes the namespaces (and so every veth in them) and the bridge.
pub struct Link {
    /// Tag in every name.
    pub tag: String,
    /// The bridge.
    pub bridge: String,
    /// The third octet: the link is 10.250.S.0/24.
    pub subnet: u8,
    /// Namespaces created (names under /run/netns).
    pub netns: Vec<String>,
}

impl Link {
    fn create(tag: &str) -> Link {
        let seed = std::process::id().wrapping_mul(7919) ^ COUNTER.load(Ordering::SeqCst);
        let subnet = (0..250u32)
            .map(|i| ((seed + i * 37) % 250 + 1) as u8)
            .find(|s| {
                let r = Command::new("ip")
                    .args([
                        "-4",
                        "route",
                        "show",
                        "to",
                        "match",
                        &format!("10.250.{s}.0/24"),
                    ])
                    .output();
                r.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).contains("10.250."))
            })
            .expect("a free 10.250.S.0/24 for the test link");
        let link = Link {
            tag: tag.to_string(),
            bridge: format!("kmb{tag}"),
            subnet,
            netns: Vec::new(),
        };
        ip(&["link", "add", &link.bridge, "type", "bridge"]);
        // Bridged frames must not meet the host's iptables (br_netfilter).
        let _ = Command::new("ip")
            .args(["link", "set", &link.bridge, "type", "bridge"])
            .args(["nf_call_iptables", "0", "nf_call_arptables", "0"])
            .output();
        ip(&[
            "addr",
            "add",
            &format!("{}/24", link.host_ip()),
            "dev",
            &link.bridge,
        ]);
        ip(&["link", "set", &link.bridge, "up"]);
        link
    }

    /// 10.250.S.1: the host's address on the link.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.subnet, 1)
    }

    /// Adds a netns `kmn<tag>-<suffix>` plugged into the bridge with `addr`/24.
    fn add_endpoint(&mut self, suffix: &str, addr: Ipv4Addr) -> String {
        let ns = format!("kmn{}-{suffix}", self.tag);
        ip(&["netns", "add", &ns]);
        self.netns.push(ns.clone());
        let host_end = format!("kmv{}{suffix}", self.tag);
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["link", "set", &host_end, "master", &self.bridge, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// A `keelson server` listening on the link's host address.
pub struct Server {
    /// Its admin kubeconfig (server URL on the link).
    pub kubeconfig: PathBuf,
    /// https://10.250.S.1:PORT.
    pub url: String,
    child: Option<Child>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Server {
    fn start(host: Ipv4Addr, extra: &[&str]) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("keelson-mn-server-")
            .tempdir()
            .expect("server temp dir");
        let data_dir = tmp.path().to_path_buf();
        let kubeconfig = data_dir.join("admin.kubeconfig");
        let log = data_dir.join("server.log");
        for _ in 0..3 {
            let port = free_port();
            let url = format!("https://{host}:{port}");
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("server log");
            let mut child = Command::new(keelson_bin())
                .args(["server", "--data-dir"])
                .arg(&data_dir)
                .args(["--listen", &format!("{host}:{port}")])
                .args(["--tls-san", &host.to_string()])
                .args(extra)
                .env("KEELSON_LOG", "info")
                .stdout(Stdio::null())
                .stderr(out)
                .spawn()
                .expect("spawn keelson server");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect((host, port)).is_ok()
                    && std::fs::read_to_string(&kubeconfig).is_ok_and(|k| k.contains(&url))
                {
                    return Server {
                        kubeconfig,
                        url,
                        child: Some(child),
                        log,
                        _tmp: tmp,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "keelson server on {host} did not become ready; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One node: a `keelson agent` in its own netns. Drop kills it and removes
/// its containers, shims, cgroups and state.
pub struct Node {
    /// Node name.
    pub name: String,
    /// Its netns (under /run/netns).
    pub netns: String,
    /// InternalIP on the link.
    pub ip: Ipv4Addr,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// --cgroup-root.
    pub cgroup_root: String,
    /// --run-dir.
    pub run_dir: PathBuf,
    /// --proxy-mode.
    pub proxy_mode: ProxyMode,
    /// eBPF mode: --proxy-bpf-pin-dir (in the agent's own bpffs).
    pub bpf_pin_dir: Option<PathBuf>,
    /// eBPF mode: --proxy-cgroup2-path (the node's cgroup2 subtree).
    pub proxy_cgroup2: Option<PathBuf>,
    cmd: Vec<String>,
    /// `PATH` of the agent (None: the test's).
    path: Option<String>,
    child: Option<Child>,
    log: PathBuf,
    base: tempfile::TempDir,
}

impl Node {
    fn start(
        tag: &str,
        index: u8,
        netns: &str,
        ip: Ipv4Addr,
        kubeconfig: &Path,
        registry: &str,
        o: &ClusterOptions<'_>,
    ) -> Node {
        let (proxy_mode, path) = (o.proxy_mode, o.agent_path.as_deref());
        let base = tempfile::Builder::new()
            .prefix("keelson-mn-node-")
            .tempdir()
            .expect("node temp dir");
        let b = base.path();
        let pod_cidr = format!("10.244.{index}.0/24");
        let cni_conf_dir = b.join("cni");
        std::fs::create_dir_all(&cni_conf_dir).expect("create node cni dir");
        let conf = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "keelson",
            "plugins": [{"type": "keelson-cni", "subnet": pod_cidr, "dataDir": b.join("cni-data")}],
        });
        std::fs::write(
            cni_conf_dir.join("10-keelson.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .expect("write node conflist");
        let bin = keelson_bin();
        let name = format!("mn{tag}-node{index}");
        let cgroup_root = format!("keelson-mn-{tag}-{index}");
        let s = |p: PathBuf| p.display().to_string();
        // Own mount namespace, then the node's netns. nftables: a tmpfs over
        // /sys/fs/bpf (the nftables proxy removes the eBPF pin dir it finds).
        // eBPF: a bpffs of this node's own there (a new instance, gone with
        // the mount namespace, and the pinned links with it).
        let script = match proxy_mode {
            ProxyMode::Nftables => {
                "mount -t tmpfs keelson-mn-bpf /sys/fs/bpf && exec nsenter --net=\"$0\" \"$@\""
            }
            ProxyMode::Ebpf => {
                "mount -t bpf keelson-mn-bpf /sys/fs/bpf && exec nsenter --net=\"$0\" \"$@\""
            }
        };
        let (bpf_pin_dir, proxy_cgroup2) = match proxy_mode {
            ProxyMode::Nftables => (None, None),
            ProxyMode::Ebpf => (
                Some(Path::new("/sys/fs/bpf").join(&cgroup_root)),
                Some(
                    cgroup2_mount()
                        .expect("a cgroup2 hierarchy (eBPF proxy mode)")
                        .join(&cgroup_root),
                ),
            ),
        };
        let mut cmd: Vec<String> = vec![
            "--mount".into(),
            "--propagation".into(),
            "slave".into(),
            "sh".into(),
            "-c".into(),
            script.into(),
            format!("/run/netns/{netns}"),
            s(bin.clone()),
            "agent".into(),
        ];
        let dns = ip.to_string();
        cmd.extend(
            [
                "--kubeconfig",
                &s(kubeconfig.to_path_buf()),
                "--node-name",
                &name,
                "--root-dir",
                &s(b.join("root")),
                "--run-dir",
                &s(b.join("run")),
                "--pod-log-dir",
                &s(b.join("logs")),
                "--cni-conf-dir",
                &s(cni_conf_dir),
                "--cni-bin-dir",
                &s(bin.parent().expect("bin dir").to_path_buf()),
                "--cgroup-root",
                &cgroup_root,
                "--node-ip",
                &dns,
                "--node-api-listen",
                &format!("{ip}:10250"),
                "--pod-cidr",
                &pod_cidr,
                "--cluster-cidr",
                "10.244.0.0/16",
                "--proxy-mode",
                proxy_mode.flag(),
                "--cluster-dns",
                &dns,
                "--dns-listen",
                &format!("{ip}:53"),
                "--insecure-registry",
                registry,
            ]
            .map(str::to_string),
        );
        if let (Some(pins), Some(cg)) = (&bpf_pin_dir, &proxy_cgroup2) {
            cmd.extend([
                "--proxy-bpf-pin-dir".into(),
                s(pins.clone()),
                "--proxy-cgroup2-path".into(),
                s(cg.clone()),
                // NodePorts for the outside client: the TC program on the
                // node's link.
                "--proxy-tc-interfaces".into(),
                "eth0".into(),
            ]);
        }
        let mut n = Node {
            name,
            netns: netns.to_string(),
            ip,
            pod_cidr,
            cgroup_root,
            run_dir: b.join("run"),
            proxy_mode,
            bpf_pin_dir,
            proxy_cgroup2,
            cmd,
            path: path.map(str::to_string),
            child: None,
            log: b.join("agent.log"),
            base,
        };
        // The proxy checks and attaches to its cgroup when it starts, before
        // the agent creates the root for its first pod. Removed by cleanup
        // (the root in every hierarchy), also when the start fails.
        if let Some(cg) = &n.proxy_cgroup2 {
            std::fs::create_dir_all(cg)
                .unwrap_or_else(|e| panic!("create cgroup {}: {e}", cg.display()));
        }
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut cmd = Command::new("unshare");
        cmd.args(&self.cmd)
            .env(
                "KEELSON_LOG",
                std::env::var("KEELSON_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(p) = &self.path {
            cmd.env("PATH", p);
        }
        let child = cmd.spawn().expect("spawn keelson agent");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "keelson agent {} exited ({st}); log:\n{}",
                    self.name,
                    self.log()
                );
            }
            let addr = (IpAddr::V4(self.ip), 10250).into();
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "keelson agent {} did not start; log:\n{}",
            self.name,
            self.log()
        );
    }

    /// The agent's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9 the agent (its containers keep running, its Lease stops).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `args` in this node's netns (not in a pod).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(args)
            .output()
            .expect("run nsenter")
    }

    fn runc_root(&self) -> PathBuf {
        self.run_dir.join("runc-root")
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in crate::agent::cgroup_hierarchies() {
            walk_dirs(&h.join(&self.cgroup_root), &mut out);
        }
        out
    }

    /// Kills the agent and everything its pods run, removes its cgroups.
    /// Its mounts live in its own mount namespace, gone with its last process.
    pub fn cleanup(&mut self) {
        self.kill();
        crate::agent::remove_runc_containers(&self.runc_root());
        crate::agent::kill_processes_mentioning(&self.base.path().to_string_lossy());
        crate::agent::kill_cgroup_procs(&self.cgroup_dirs());
        let mut dirs = self.cgroup_dirs();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        let deadline = Instant::now() + Duration::from_secs(5);
        for d in dirs {
            // A cgroup empties a moment after its last process is reaped.
            while std::fs::remove_dir(&d).is_err() && d.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn walk_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk_dirs(&e.path(), out);
            }
        }
    }
}

/// What [`Cluster::start_opts`] starts.
#[derive(Clone, Debug)]
pub struct ClusterOptions<'a> {
    /// How many agent nodes.
    pub nodes: u8,
    /// Extra `keelson server` flags.
    pub server_extra: &'a [&'a str],
    /// The agents' Service proxy mode.
    pub proxy_mode: ProxyMode,
    /// The agents' `PATH` (None: the test's), to take programs away.
    pub agent_path: Option<String>,
    /// A login the registry requires (None: it answers anyone).
    pub registry_login: Option<crate::registry::Login>,
}

/// A server, a registry with the test images and `n` nodes on one link,
/// plus an outside client netns. Fields drop in order: nodes, registry,
/// server, link.
pub struct Cluster {
    /// The agents.
    pub nodes: Vec<Node>,
    /// The local registry (on the link's host address).
    pub registry: Registry,
    /// The server.
    pub server: Server,
    /// The outside client's netns (10.250.S.100).
    pub client_netns: String,
    /// The link.
    pub link: Link,
    /// How the agents run the Service proxy.
    pub proxy_mode: ProxyMode,
}

impl Cluster {
    /// Starts everything, the Service proxy in nftables mode, and waits
    /// until all nodes are Ready and routed. `server_extra` goes to
    /// `keelson server`.
    pub fn start(nodes: u8, server_extra: &[&str]) -> Cluster {
        Cluster::start_with(nodes, server_extra, ProxyMode::Nftables)
    }

    /// The outside client's address.
    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.link.subnet, 100)
    }

    /// [`Cluster::start`] with the agents' Service proxy in `proxy_mode`.
    pub fn start_with(nodes: u8, server_extra: &[&str], proxy_mode: ProxyMode) -> Cluster {
        Cluster::start_opts(&ClusterOptions {
            nodes,
            server_extra,
            proxy_mode,
            agent_path: None,
            registry_login: None,
        })
    }

    /// A cluster as `o` says.
    pub fn start_opts(o: &ClusterOptions<'_>) -> Cluster {
        let (nodes, server_extra, proxy_mode) = (o.nodes, o.server_extra, o.proxy_mode);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{:x}{:x}", std::process::id() & 0xfff, n & 0xf);
        let mut link = Link::create(&tag);
        let host = link.host_ip();
        let client_netns = link.add_endpoint("c", Ipv4Addr::new(10, 250, link.subnet, 100));
        let node_ns: Vec<(String, Ipv4Addr)> = (1..=nodes)
            .map(|i| {
                let addr = Ipv4Addr::new(10, 250, link.subnet, 10 + i);
                (link.add_endpoint(&i.to_string(), addr), addr)
            })
            .collect();
        let server = Server::start(host, server_extra);
        let registry = match o.registry_login {
            Some(login) => Registry::start_with_login(host.into(), login),
            None => Registry::start_on(host.into()),
        }
        .expect("start docker-registry on the link");
        registry.push_test_images().expect("push test images");
        let mut started = Vec::new();
        for (i, (ns, addr)) in node_ns.iter().enumerate() {
            started.push(Node::start(
                &tag,
                i as u8 + 1,
                ns,
                *addr,
                &server.kubeconfig,
                &registry.addr(),
                o,
            ));
        }
        let c = Cluster {
            nodes: started,
            registry,
            server,
            client_netns,
            link,
            proxy_mode,
        };
        let want = nodes as usize;
        c.wait_until("all nodes Ready", Duration::from_secs(60), || {
            let ready = c.kubectl_ok(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            ready.split_whitespace().filter(|s| *s == "True").count() == want
        });
        // Every node routes to every other node's pod CIDR.
        for node in &c.nodes {
            c.wait_until(
                &format!("cross-node routes on {}", node.name),
                Duration::from_secs(30),
                || {
                    let out = node.exec(&["ip", "-4", "route", "show"]);
                    let routes = String::from_utf8_lossy(&out.stdout).into_owned();
                    c.nodes
                        .iter()
                        .filter(|o| o.name != node.name)
                        .all(|o| routes.contains(&format!("{} via {}", o.pod_cidr, o.ip)))
                },
            );
        }
        c
    }

    /// A kubectl command with this cluster's kubeconfig, to spawn (e.g. a
    /// `--watch` that records every change while the test goes on).
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(kubectl_path(KUBECTL));
        cmd.args(args)
            .env("KUBECONFIG", &self.server.kubeconfig)
            .env("HOME", self.server.kubeconfig.parent().expect("data dir"));
        cmd
    }

    /// kubectl with this cluster's kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).output().expect("run kubectl")
    }

    /// kubectl's stdout; panics with stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        use std::io::Write;
        let mut child = Command::new(kubectl_path(KUBECTL))
            .args(["apply", "-f", "-"])
            .env("KUBECONFIG", &self.server.kubeconfig)
            .env("HOME", self.server.kubeconfig.parent().expect("data dir"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write manifest");
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The test busybox image in the link's registry.
    pub fn busybox(&self) -> String {
        self.registry.image(crate::registry::BUSYBOX)
    }

    /// [`wait_until`], with the cluster's state and logs in the panic.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("{what}: not within {timeout:?}\n{}", self.diagnostics());
    }

    /// Pods, nodes and the tail of every log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        let pods = self.kubectl(&["get", "pods", "-A", "-o", "wide"]);
        s += &format!("pods:\n{}\n", String::from_utf8_lossy(&pods.stdout));
        let nodes = self.kubectl(&["get", "nodes", "-o", "wide"]);
        s += &format!("nodes:\n{}\n", String::from_utf8_lossy(&nodes.stdout));
        let tail = |t: String| {
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        for n in &self.nodes {
            s += &format!("--- agent {} log (tail):\n{}\n", n.name, tail(n.log()));
        }
        s += &format!("--- server log (tail):\n{}\n", tail(self.server.log()));
        s
    }

    /// Pods with label `app=<app>` that are Running and not being deleted,
    /// as (name, node, IP).
    pub fn running_pods(&self, app: &str) -> Vec<(String, String, String)> {
        let out = self.kubectl_ok(&["get", "pods", "-l", &format!("app={app}"), "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("pods json");
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_string(),
                    p["spec"]["nodeName"].as_str()?.to_string(),
                    p["status"]["podIP"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// The PID of the httpd a pod made by [`httpd_command`] runs.
    pub fn pod_pid(&self, pod: &str) -> Option<String> {
        let out = Command::new("pgrep")
            .args(["-f", &format!("^httpd -f -p 80 -h /srv/{pod}$")])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_string)
    }

    /// The cgroup2 directory the httpd of `pod` runs in.
    pub fn pod_cgroup2(&self, pod: &str) -> Option<PathBuf> {
        cgroup2_of(&self.pod_pid(pod)?)
    }

    /// Runs `args` inside `pod` (its mount, net, UTS namespaces, root and
    /// cwd; in eBPF proxy mode also its cgroup2 cgroup, where the socket
    /// programs see it), bounded to 5 s.
    pub fn exec_in_pod(&self, pod: &str, args: &[&str]) -> Output {
        let pid = self
            .pod_pid(pod)
            .unwrap_or_else(|| panic!("no httpd process of pod {pod}"));
        let nsenter = ["nsenter", "-t", &pid, "-m", "-n", "-u", "-r", "-w"];
        match self.proxy_mode {
            ProxyMode::Nftables => Command::new("timeout")
                .arg("5")
                .args(nsenter)
                .args(args)
                .output()
                .expect("run nsenter"),
            ProxyMode::Ebpf => {
                let procs = cgroup2_of(&pid)
                    .unwrap_or_else(|| panic!("no cgroup2 cgroup of pod {pod} (pid {pid})"))
                    .join("cgroup.procs");
                // The shell moves itself into the pod's cgroup, then becomes
                // nsenter (and that the command).
                Command::new("timeout")
                    .args(["5", "sh", "-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(procs)
                    .args(nsenter)
                    .args(args)
                    .output()
                    .expect("run nsenter")
            }
        }
    }

    /// `wget -qO- url` from inside `pod`: the body, when it answered.
    pub fn wget_from_pod(&self, pod: &str, url: &str) -> Option<String> {
        let out = self.exec_in_pod(pod, &["/bin/wget", "-qO-", url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `curl url` from the outside client's netns: the body, when it answered.
    pub fn curl_from_client(&self, url: &str) -> Option<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.client_netns))
            .args(["curl", "-s", "--max-time", "5", url])
            .output()
            .expect("run curl");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// The cgroup2 directory of process `pid` (from the `0::` line of
/// /proc/PID/cgroup); None for the root.
fn cgroup2_of(pid: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return None; // the root: not a pod's
    }
    let dir = cgroup2_mount()?.join(rel);
    dir.is_dir().then_some(dir)
}

/// The container command of test pods: busybox httpd serving
/// "hello from <pod name>" from /srv/<pod name>, and at /cgi-bin/ip the
/// address the request came from (the command line names the pod, so
/// [`Cluster::pod_pid`] finds it).
pub fn httpd_command() -> &'static str {
    r#"["sh", "-c", "d=/srv/$(hostname) && mkdir -p $d/cgi-bin && echo hello from $(hostname) > $d/index.html && printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n' > $d/cgi-bin/ip && chmod 755 $d/cgi-bin/ip && exec httpd -f -p 80 -h $d"]"#
}
