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
//! Built on [`keelson_localcluster`] (the same cluster `keelson bench
//! --local` starts), plus a local registry with the test images on the
//! link's host address and kubectl helpers.
//!
//! Drop tears everything down: agents, their containers and shims, cgroups,
//! network namespaces (with every veth in them), the bridge, the registry
//! and the server.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use keelson_localcluster::{
    EBPF_FALLBACK, EBPF_LOADED, Link, LocalCluster, Node, ProxyMode, Server,
};

use crate::registry::{Registry, missing_image_tools};
use crate::{Needs, keelson_bin, kubectl_path};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The kubectl minor version the harness uses.
pub const KUBECTL: u32 = 33;

/// What a multi-node test whose proxies run in `mode` needs.
pub fn needs_for(test: &str, mode: ProxyMode) -> Needs {
    let mut n = crate::needs(test)
        .root()
        .tools(keelson_localcluster::TOOLS)
        .tools(&["/usr/bin/curl", "/usr/bin/pgrep", "/usr/bin/timeout"])
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

/// The cgroup2 hierarchy: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified
/// (hybrid); None on a v1-only host.
pub fn cgroup2_mount() -> Option<PathBuf> {
    keelson_localcluster::cgroup2_mount()
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

/// `--server`, `--token` and `--ca-cert-hash` from `keelson token create
/// --print-join-command` with the admin kubeconfig.
pub fn join_command(bin: &std::path::Path, kubeconfig: &std::path::Path) -> Vec<String> {
    let out = Command::new(bin)
        .args([
            "token",
            "create",
            "--ttl",
            "10m",
            "--print-join-command",
            "--kubeconfig",
        ])
        .arg(kubeconfig)
        .output()
        .expect("run keelson token create");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "keelson token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut flags = Vec::new();
    for flag in ["--server", "--token", "--ca-cert-hash"] {
        let i = words
            .iter()
            .position(|w| *w == flag)
            .unwrap_or_else(|| panic!("no {flag} in {line:?}"));
        flags.extend([flag.to_string(), words[i + 1].to_string()]);
    }
    flags
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
    /// Nodes join with a bootstrap token (`keelson token create`) and
    /// these extra agent flags, instead of the admin kubeconfig.
    pub join: Option<&'a [&'a str]>,
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
            join: None,
        })
    }

    /// A cluster as `o` says.
    pub fn start_opts(o: &ClusterOptions<'_>) -> Cluster {
        let (nodes, server_extra, proxy_mode) = (o.nodes, o.server_extra, o.proxy_mode);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{:x}{:x}", std::process::id() & 0xfff, n & 0xf);
        let bin = keelson_bin();
        let mut lc = LocalCluster::create(&keelson_localcluster::Options {
            tag,
            bin: bin.clone(),
            server_extra: server_extra.iter().map(|s| s.to_string()).collect(),
            client: true,
        })
        .unwrap_or_else(|e| panic!("start the link and server: {e}"));
        let host = lc.link.host_ip();
        let registry = match o.registry_login {
            Some(login) => Registry::start_with_login(host.into(), login),
            None => Registry::start_on(host.into()),
        }
        .expect("start docker-registry on the link");
        registry.push_test_images().expect("push test images");
        let mut extra = vec!["--insecure-registry".to_string(), registry.addr()];
        if let Some(join_extra) = o.join {
            extra.extend(join_command(&bin, &lc.server.kubeconfig));
            extra.extend(join_extra.iter().map(|s| s.to_string()));
        }
        for _ in 0..nodes {
            let admin = o.join.is_none();
            if let Err(e) = lc.add_node_as(&bin, proxy_mode, o.agent_path.as_deref(), &extra, admin)
            {
                panic!("start a node: {e}");
            }
        }
        let LocalCluster {
            nodes: started,
            server,
            client_netns,
            link,
        } = lc;
        let c = Cluster {
            nodes: started,
            registry,
            server,
            client_netns: client_netns.expect("asked for a client netns"),
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
            ProxyMode::Nftables | ProxyMode::None => Command::new("timeout")
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
