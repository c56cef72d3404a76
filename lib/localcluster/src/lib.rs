//! A throwaway cluster on one machine: one `keelson server` and several
//! `keelson agent`s, each agent in its own network namespace standing for a
//! node. `keelson bench services --local` runs on it, and the test kit's
//! multi-node harness (`keelson_e2e::multinode`) is built on it.
//!
//! Layout (S is picked per cluster so that clusters can run side by side):
//!
//! ```text
//!  host: bridge kmb<tag> 10.250.S.1/24 ── server (10.250.S.1:PORT)
//!    ├─ veth ── netns kmn<tag>-c: eth0 10.250.S.100/24, an outside client (no agent; optional)
//!    ├─ veth ── netns kmn<tag>-1: eth0 10.250.S.11/24, agent node 1, pods 10.244.1.0/24
//!    ├─ veth ── netns kmn<tag>-2: eth0 10.250.S.12/24, agent node 2, pods 10.244.2.0/24
//!    └─ ...
//! ```
//!
//! Each agent runs `unshare --mount` (its own mount namespace) and `nsenter
//! --net` into its node's namespace, with its own root, run, log, CNI config
//! and IPAM dirs and cgroup root; keelson-cni gives each node a pod CIDR and
//! the agents' route watchers route between them over the shared link.
//! Cluster DNS answers on the node IP. No namespace has a default route: a
//! packet for an address nothing routes (a ClusterIP no proxy translated)
//! fails in the namespace instead of leaving the machine.
//!
//! Each node runs the Service proxy in its own [`ProxyMode`]:
//! - [`ProxyMode::Nftables`]: its table lives in the node's netns; a tmpfs
//!   over /sys/fs/bpf in the agent's mount namespace keeps the proxy's eBPF
//!   cleanup away from the host's pins.
//! - [`ProxyMode::Ebpf`]: a fresh bpffs over /sys/fs/bpf in the agent's
//!   mount namespace (each bpffs mount is its own instance) holds the node's
//!   pins under `--proxy-bpf-pin-dir /sys/fs/bpf/<cgroup root>`, and the
//!   socket programs attach to the node's own cgroup2 subtree
//!   (`--proxy-cgroup2-path`, the `--cgroup-root` directory in the cgroup2
//!   hierarchy, created here), so only processes in that subtree (the
//!   node's pods, or a client put there) get that node's load balancer. The
//!   pins (and with them the links) go when the agent's mount namespace
//!   does. The TC program sits on the node's eth0 (`--proxy-tc-interfaces`).
//! - [`ProxyMode::None`]: no Service proxy.
//!
//! Server and agents run in process groups of their own, so a Ctrl-C at the
//! terminal reaches only the program that started them, which then tears
//! down. Drop tears everything down: agents, their containers and shims,
//! cgroups, network namespaces (with every veth and nftables table in
//! them), the bridge and the server. Every operation that can fail returns
//! an [`Error`] naming what it did.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod host;

/// What went wrong, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{what}: {err}")]
    Io {
        /// The operation and its object.
        what: String,
        /// Why.
        err: std::io::Error,
    },
    /// A command ran and failed, or a part did not come up.
    #[error("{0}")]
    Failed(String),
}

/// The result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |err| Error::Io { what, err }
}

/// Runs `cmd`; it must succeed.
fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().map_err(io(format!("run {cmd:?}")))?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// The programs a local cluster runs (besides `keelson` and `keelson-cni`).
pub const TOOLS: &[&str] = &[
    "/usr/sbin/runc",
    "/usr/sbin/ip",
    "/usr/sbin/nft",
    "/usr/bin/nsenter",
    "/usr/bin/unshare",
];

/// How a node runs the Service proxy (`keelson agent --proxy-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// nftables in the node's netns.
    Nftables,
    /// eBPF socket programs on the node's cgroup2 subtree, pins in a bpffs
    /// of the agent's own.
    Ebpf,
    /// No Service proxy.
    None,
}

impl ProxyMode {
    /// The `--proxy-mode` value.
    pub fn flag(self) -> &'static str {
        match self {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Ebpf => "ebpf",
            ProxyMode::None => "none",
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
    keelson_host::cgroup::cgroup2_dir(Path::new("/sys/fs/cgroup"))
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
    /// Creates bridge `kmb<tag>` on a free 10.250.S.0/24.
    pub fn create(tag: &str) -> Result<Link> {
        let seed = std::process::id()
            .wrapping_mul(7919)
            .wrapping_add(tag.bytes().map(u32::from).sum::<u32>());
        let subnet = (0..250u32)
            .map(|i| ((seed.wrapping_add(i * 37)) % 250 + 1) as u8)
            .find(|s| {
                Command::new("ip")
                    .args(["-4", "route", "show", "to", "match"])
                    .arg(format!("10.250.{s}.0/24"))
                    .output()
                    .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).contains("10.250."))
            })
            .ok_or_else(|| Error::Failed("no free 10.250.S.0/24 for the link".into()))?;
        let link = Link {
            tag: tag.to_string(),
            bridge: format!("kmb{tag}"),
            subnet,
            netns: Vec::new(),
        };
        ip(&["link", "add", &link.bridge, "type", "bridge"])?;
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
        ])?;
        ip(&["link", "set", &link.bridge, "up"])?;
        Ok(link)
    }

    /// 10.250.S.1: the host's address on the link.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.subnet, 1)
    }

    /// Adds a netns `kmn<tag>-<suffix>` plugged into the bridge with `addr`/24.
    pub fn add_endpoint(&mut self, suffix: &str, addr: Ipv4Addr) -> Result<String> {
        let ns = format!("kmn{}-{suffix}", self.tag);
        ip(&["netns", "add", &ns])?;
        self.netns.push(ns.clone());
        let host_end = format!("kmv{}{suffix}", self.tag);
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &host_end, "master", &self.bridge, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
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
    /// Starts `keelson server` (binary `bin`) on `host`, with `extra` flags,
    /// and waits until it listens and has written its kubeconfig.
    pub fn start(bin: &Path, host: Ipv4Addr, extra: &[String]) -> Result<Server> {
        let tmp = tempfile::Builder::new()
            .prefix("keelson-mn-server-")
            .tempdir()
            .map_err(io("create the server's temp dir"))?;
        let data_dir = tmp.path().to_path_buf();
        let kubeconfig = data_dir.join("admin.kubeconfig");
        let log = data_dir.join("server.log");
        for _ in 0..3 {
            let port = TcpListener::bind((host, 0))
                .and_then(|l| l.local_addr())
                .map_err(io(format!("bind a free port on {host}")))?
                .port();
            let url = format!("https://{host}:{port}");
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(io(format!("open {}", log.display())))?;
            let mut child = Command::new(bin)
                .args(["server", "--data-dir"])
                .arg(&data_dir)
                .args(["--listen", &format!("{host}:{port}")])
                .args(["--tls-san", &host.to_string()])
                .args(extra)
                .env("KEELSON_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(out)
                .process_group(0)
                .spawn()
                .map_err(io(format!("spawn {} server", bin.display())))?;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect((host, port)).is_ok()
                    && std::fs::read_to_string(&kubeconfig).is_ok_and(|k| k.contains(&url))
                {
                    return Ok(Server {
                        kubeconfig,
                        url,
                        child: Some(child),
                        log,
                        _tmp: tmp,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(Error::Failed(format!(
            "keelson server on {host} did not become ready; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

/// How to start one node's agent.
#[derive(Clone, Debug)]
pub struct NodeSpec<'a> {
    /// The cluster's tag (in every name).
    pub tag: &'a str,
    /// 1-based: names, the pod CIDR 10.244.<index>.0/24.
    pub index: u8,
    /// The node's netns (under /run/netns).
    pub netns: &'a str,
    /// The node's address on the link.
    pub ip: Ipv4Addr,
    /// The server's kubeconfig (None: `extra` says how the agent joins).
    pub kubeconfig: Option<&'a Path>,
    /// The `keelson` binary (keelson-cni is looked for beside it).
    pub bin: &'a Path,
    /// The agent's Service proxy.
    pub proxy_mode: ProxyMode,
    /// The agent's `PATH` (None: ours).
    pub path: Option<&'a str>,
    /// More `keelson agent` flags.
    pub extra: &'a [String],
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
    /// --root-dir.
    pub root_dir: PathBuf,
    /// --run-dir.
    pub run_dir: PathBuf,
    /// --proxy-mode.
    pub proxy_mode: ProxyMode,
    /// eBPF mode: --proxy-bpf-pin-dir (in the agent's own bpffs).
    pub bpf_pin_dir: Option<PathBuf>,
    /// eBPF mode: --proxy-cgroup2-path (the node's cgroup2 subtree).
    pub proxy_cgroup2: Option<PathBuf>,
    cmd: Vec<String>,
    path: Option<String>,
    child: Option<Child>,
    log: PathBuf,
    base: tempfile::TempDir,
}

impl Node {
    /// Starts the agent `spec` describes and waits until its node API
    /// listens.
    pub fn start(spec: &NodeSpec<'_>) -> Result<Node> {
        let (tag, index, ip, proxy_mode) = (spec.tag, spec.index, spec.ip, spec.proxy_mode);
        let base = tempfile::Builder::new()
            .prefix("keelson-mn-node-")
            .tempdir()
            .map_err(io("create the node's temp dir"))?;
        let b = base.path();
        let pod_cidr = format!("10.244.{index}.0/24");
        let cni_conf_dir = b.join("cni");
        std::fs::create_dir_all(&cni_conf_dir)
            .map_err(io(format!("create {}", cni_conf_dir.display())))?;
        let conf = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "keelson",
            "plugins": [{"type": "keelson-cni", "subnet": pod_cidr, "dataDir": b.join("cni-data")}],
        });
        let conflist = cni_conf_dir.join("10-keelson.conflist");
        std::fs::write(&conflist, conf.to_string())
            .map_err(io(format!("write {}", conflist.display())))?;
        let name = format!("mn{tag}-node{index}");
        let cgroup_root = format!("keelson-mn-{tag}-{index}");
        let s = |p: &Path| p.display().to_string();
        // Own mount namespace, then the node's netns. nftables (and none): a
        // tmpfs over /sys/fs/bpf (the nftables proxy removes the eBPF pin
        // dir it finds). eBPF: a bpffs of this node's own there (a new
        // instance, gone with the mount namespace, and the pinned links
        // with it).
        let script = match proxy_mode {
            ProxyMode::Nftables | ProxyMode::None => {
                "mount -t tmpfs keelson-mn-bpf /sys/fs/bpf && exec nsenter --net=\"$0\" \"$@\""
            }
            ProxyMode::Ebpf => {
                "mount -t bpf keelson-mn-bpf /sys/fs/bpf && exec nsenter --net=\"$0\" \"$@\""
            }
        };
        let (bpf_pin_dir, proxy_cgroup2) = match proxy_mode {
            ProxyMode::Nftables | ProxyMode::None => (None, None),
            ProxyMode::Ebpf => (
                Some(Path::new("/sys/fs/bpf").join(&cgroup_root)),
                Some(
                    cgroup2_mount()
                        .ok_or_else(|| {
                            Error::Failed("eBPF proxy mode needs a cgroup2 hierarchy".into())
                        })?
                        .join(&cgroup_root),
                ),
            ),
        };
        let cni_bin_dir = spec
            .bin
            .parent()
            .ok_or_else(|| Error::Failed(format!("{} has no parent", spec.bin.display())))?;
        let mut cmd: Vec<String> = vec![
            "--mount".into(),
            "--propagation".into(),
            "slave".into(),
            "sh".into(),
            "-c".into(),
            script.into(),
            format!("/run/netns/{}", spec.netns),
            s(spec.bin),
            "agent".into(),
        ];
        let dns = ip.to_string();
        if let Some(k) = spec.kubeconfig {
            cmd.extend(["--kubeconfig".to_string(), s(k)]);
        }
        cmd.extend(
            [
                "--node-name",
                &name,
                "--root-dir",
                &s(&b.join("root")),
                "--run-dir",
                &s(&b.join("run")),
                "--pod-log-dir",
                &s(&b.join("logs")),
                "--cni-conf-dir",
                &s(&cni_conf_dir),
                "--cni-bin-dir",
                &s(cni_bin_dir),
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
            ]
            .map(str::to_string),
        );
        cmd.extend(spec.extra.iter().cloned());
        if let (Some(pins), Some(cg)) = (&bpf_pin_dir, &proxy_cgroup2) {
            cmd.extend([
                "--proxy-bpf-pin-dir".into(),
                s(pins),
                "--proxy-cgroup2-path".into(),
                s(cg),
                // NodePorts for outside clients: the TC program on the
                // node's link.
                "--proxy-tc-interfaces".into(),
                "eth0".into(),
            ]);
        }
        let mut n = Node {
            name,
            netns: spec.netns.to_string(),
            ip,
            pod_cidr,
            cgroup_root,
            root_dir: b.join("root"),
            run_dir: b.join("run"),
            proxy_mode,
            bpf_pin_dir,
            proxy_cgroup2,
            cmd,
            path: spec.path.map(str::to_string),
            child: None,
            log: b.join("agent.log"),
            base,
        };
        // The proxy checks and attaches to its cgroup when it starts, before
        // the agent creates the root for its first pod. Removed by cleanup
        // (the root in every hierarchy), also when the start fails.
        if let Some(cg) = &n.proxy_cgroup2 {
            std::fs::create_dir_all(cg).map_err(io(format!("create cgroup {}", cg.display())))?;
        }
        n.spawn()?;
        Ok(n)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(format!("open {}", self.log.display())))?;
        let mut cmd = Command::new("unshare");
        cmd.args(&self.cmd)
            .env(
                "KEELSON_LOG",
                std::env::var("KEELSON_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        if let Some(p) = &self.path {
            cmd.env("PATH", p);
        }
        let child = cmd
            .spawn()
            .map_err(io(format!("spawn keelson agent {}", self.name)))?;
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                return Err(Error::Failed(format!(
                    "keelson agent {} exited ({st}); log:\n{}",
                    self.name,
                    self.log()
                )));
            }
            let addr = (IpAddr::V4(self.ip), 10250).into();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Error::Failed(format!(
            "keelson agent {} did not start; log:\n{}",
            self.name,
            self.log()
        )))
    }

    /// The agent's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's process ID (the `unshare` it was started as execs
    /// `sh`, which execs `nsenter`, which execs `keelson agent`), while it
    /// runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's image import dir: OCI layouts put there are imported
    /// (`<root-dir>/images/import`).
    pub fn image_import_dir(&self) -> PathBuf {
        self.root_dir.join("images/import")
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
            .unwrap_or_else(|e| Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("run nsenter: {e}").into_bytes(),
            })
    }

    fn runc_root(&self) -> PathBuf {
        self.run_dir.join("runc-root")
    }

    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in host::cgroup_hierarchies() {
            host::walk_dirs(&h.join(&self.cgroup_root), &mut out);
        }
        out
    }

    /// Kills the agent and everything its pods run, removes its cgroups.
    /// Its mounts live in its own mount namespace, gone with its last process.
    pub fn cleanup(&mut self) {
        self.kill();
        host::remove_runc_containers(&self.runc_root());
        host::kill_processes_mentioning(&self.base.path().to_string_lossy());
        host::kill_cgroup_procs(&self.cgroup_dirs());
        host::remove_cgroup_dirs(self.cgroup_dirs(), Duration::from_secs(5));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// What [`LocalCluster::create`] makes.
#[derive(Clone, Debug)]
pub struct Options {
    /// Tag in every name (a few hex digits: interface names are short).
    pub tag: String,
    /// The `keelson` binary.
    pub bin: PathBuf,
    /// Extra `keelson server` flags.
    pub server_extra: Vec<String>,
    /// An outside client netns (10.250.S.100, no agent).
    pub client: bool,
}

/// A server, nodes on one link, and optionally an outside client netns.
/// Fields drop in order: nodes, server, link.
pub struct LocalCluster {
    /// The agents, in start order.
    pub nodes: Vec<Node>,
    /// The server.
    pub server: Server,
    /// The outside client's netns (10.250.S.100), when asked for.
    pub client_netns: Option<String>,
    /// The link.
    pub link: Link,
}

impl LocalCluster {
    /// The link, the client netns (when asked for) and the server; no
    /// nodes yet ([`LocalCluster::add_node`]).
    pub fn create(o: &Options) -> Result<LocalCluster> {
        let mut link = Link::create(&o.tag)?;
        let client_netns = if o.client {
            Some(link.add_endpoint("c", Ipv4Addr::new(10, 250, link.subnet, 100))?)
        } else {
            None
        };
        let server = Server::start(&o.bin, link.host_ip(), &o.server_extra)?;
        Ok(LocalCluster {
            nodes: Vec::new(),
            server,
            client_netns,
            link,
        })
    }

    /// Adds node `nodes.len() + 1` (netns, agent in `mode`, more agent
    /// flags `extra`), waiting until its node API listens.
    pub fn add_node(
        &mut self,
        bin: &Path,
        mode: ProxyMode,
        path: Option<&str>,
        extra: &[String],
    ) -> Result<&Node> {
        self.add_node_as(bin, mode, path, extra, true)
    }

    /// [`LocalCluster::add_node`], the agent given the admin kubeconfig
    /// only when `admin` (else `extra` says how it joins).
    pub fn add_node_as(
        &mut self,
        bin: &Path,
        mode: ProxyMode,
        path: Option<&str>,
        extra: &[String],
        admin: bool,
    ) -> Result<&Node> {
        let index = u8::try_from(self.nodes.len() + 1)
            .ok()
            .filter(|i| *i <= 80)
            .ok_or_else(|| Error::Failed("at most 80 nodes on one link".into()))?;
        let addr = Ipv4Addr::new(10, 250, self.link.subnet, 10 + index);
        let netns = self.link.add_endpoint(&index.to_string(), addr)?;
        let tag = self.link.tag.clone();
        let node = Node::start(&NodeSpec {
            tag: &tag,
            index,
            netns: &netns,
            ip: addr,
            kubeconfig: admin.then_some(self.server.kubeconfig.as_path()),
            bin,
            proxy_mode: mode,
            path,
            extra,
        })?;
        self.nodes.push(node);
        Ok(self.nodes.last().expect("just pushed"))
    }

    /// Whether every node routes to every other node's pod CIDR (the
    /// agents registered and their route watchers ran).
    pub fn routed(&self) -> bool {
        self.nodes.iter().all(|node| {
            let out = node.exec(&["ip", "-4", "route", "show"]);
            let routes = String::from_utf8_lossy(&out.stdout).into_owned();
            self.nodes
                .iter()
                .filter(|o| o.name != node.name)
                .all(|o| routes.contains(&format!("{} via {}", o.pod_cidr, o.ip)))
        })
    }

    /// Waits (polling every 250 ms) until [`LocalCluster::routed`].
    pub fn wait_routed(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.routed() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(Error::Failed(format!(
            "cross-node routes: not within {timeout:?}"
        )))
    }
}
