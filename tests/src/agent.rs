//! `AgentProcess`: a real `keelson agent` for tests, with its own root dir,
//! run dir, log dir, cgroup root, CNI config (Debian's bridge + host-local
//! with a unique bridge and subnet) and node name. Drop kills the agent and
//! cleans up every container, mount, cgroup, netns and bridge it made.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{Needs, ServerProcess, free_port, keelson_bin};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// What an agent test (or bench) needs.
pub fn needs_agent(test: &str) -> Needs {
    crate::needs(test)
        .root()
        .tools(&[
            "/usr/sbin/runc",
            "/usr/lib/cni/bridge",
            "/usr/lib/cni/host-local",
            "/usr/sbin/ip",
        ])
        .keelson()
}

/// `true` when the test should go on; prints why not (or panics under
/// `KEELSON_REQUIRE_ALL=1`).
pub fn can_run(test: &str) -> bool {
    needs_agent(test).ok()
}

/// A running `keelson agent`.
pub struct AgentProcess {
    /// Node name.
    pub node_name: String,
    /// --root-dir.
    pub root_dir: PathBuf,
    /// --run-dir.
    pub run_dir: PathBuf,
    /// --pod-log-dir.
    pub log_dir: PathBuf,
    /// --cni-conf-dir.
    pub cni_conf_dir: PathBuf,
    /// host-local's dataDir (IP allocations).
    pub ipam_dir: PathBuf,
    /// --cgroup-root.
    pub cgroup_root: String,
    /// CNI bridge name.
    pub bridge: String,
    /// Pod subnet.
    pub subnet: String,
    /// Node API port (127.0.0.1).
    pub api_port: u16,
    kubeconfig: PathBuf,
    /// The client certificate and key the node API accepts (the cluster
    /// admin's).
    pub client_cert: (PathBuf, PathBuf),
    extra: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

/// How a test agent's pods are networked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// A conflist in `--cni-conf-dir`: Debian's bridge + host-local, with
    /// the agent's own bridge and subnet.
    Bridge,
    /// No CNI configuration at all; `--pod-cidr` is the agent's subnet (the
    /// agent writes keelson-cni's conflist into its own dir).
    Own,
    /// No CNI configuration and no pod CIDR: the network is not ready.
    Nothing,
}

impl AgentProcess {
    /// Starts an agent for `server`, named after `test`; images from
    /// `registry` (host:port) are pulled over plain HTTP.
    pub fn start(server: &ServerProcess, test: &str, extra: &[&str]) -> AgentProcess {
        Self::start_with(server, test, extra, Network::Bridge)
    }

    /// [`AgentProcess::start`] with its pods networked as `network` says.
    pub fn start_with(
        server: &ServerProcess,
        test: &str,
        extra: &[&str],
        network: Network,
    ) -> AgentProcess {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{:x}{:02x}", pid & 0xffff, n & 0xff);
        let tmp = tempfile::Builder::new()
            .prefix("keelson-agent-")
            .tempdir()
            .expect("temp dir");
        let base = tmp.path().to_path_buf();
        let subnet = format!("10.{}.{}.0/24", 100 + (pid % 100), n % 250);
        let mut a = AgentProcess {
            node_name: format!("{test}-{tag}").replace('_', "-"),
            root_dir: base.join("root"),
            run_dir: base.join("run"),
            log_dir: base.join("logs"),
            cni_conf_dir: base.join("cni"),
            ipam_dir: base.join("ipam"),
            cgroup_root: format!("keelson-test-{tag}"),
            bridge: format!("kb{tag}"),
            subnet,
            api_port: free_port(),
            kubeconfig: server.kubeconfig.clone(),
            client_cert: (
                server.data_dir.join("pki/admin.crt"),
                server.data_dir.join("pki/admin.key"),
            ),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            log: base.join("agent.log"),
            _tmp: tmp,
        };
        std::fs::create_dir_all(&a.cni_conf_dir).expect("cni dir");
        match network {
            Network::Bridge => {}
            Network::Own => {
                a.extra.extend(["--pod-cidr".to_string(), a.subnet.clone()]);
                a.spawn();
                return a;
            }
            Network::Nothing => {
                a.spawn();
                return a;
            }
        }
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("keelson-{tag}"),
            "plugins": [{
                "type": "bridge", "bridge": a.bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "subnet": a.subnet, "dataDir": a.ipam_dir,
                         "routes": [{"dst": "0.0.0.0/0"}]},
            }],
        });
        std::fs::write(
            a.cni_conf_dir.join("10-test.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .expect("write conflist");
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let mut cmd = Command::new(keelson_bin());
        cmd.arg("agent")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--node-name", &self.node_name])
            .arg("--root-dir")
            .arg(&self.root_dir)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .arg("--pod-log-dir")
            .arg(&self.log_dir)
            .arg("--cni-conf-dir")
            .arg(&self.cni_conf_dir)
            .args(["--cni-bin-dir", "/usr/lib/cni"])
            .args(["--cgroup-root", &self.cgroup_root])
            .args(["--node-ip", "127.0.0.1"])
            .args(["--node-api-listen", &format!("127.0.0.1:{}", self.api_port)])
            .args(&self.extra)
            .env(
                "KEELSON_LOG",
                std::env::var("KEELSON_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn keelson agent"));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("keelson agent exited ({st}); log:\n{}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.api_port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("keelson agent did not start; log:\n{}", self.log());
    }

    /// The agent's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9 the agent (containers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Starts the agent again on the same dirs and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// The agent's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET https://127.0.0.1:PORT<path> on the node API (curl -k), with
    /// [`AgentProcess::client_cert`].
    pub fn node_api(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "60", "-w", "\n%{http_code}"])
            .arg("--cert")
            .arg(&self.client_cert.0)
            .arg("--key")
            .arg(&self.client_cert.1)
            .arg(format!("https://127.0.0.1:{}{path}", self.api_port))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The runtime's `--root` (runc state).
    pub fn runc_root(&self) -> PathBuf {
        self.run_dir.join("runc-root")
    }

    /// Container IDs runc knows of.
    pub fn runc_containers(&self) -> Vec<String> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.runc_root())
            .args(["list", "-q"])
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Mount points under this agent's dirs.
    pub fn mounts(&self) -> Vec<String> {
        let base = self._tmp.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&base))
            .collect()
    }

    /// Cgroup dirs below this agent's cgroup root (any hierarchy).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in cgroup_hierarchies() {
            let root = h.join(&self.cgroup_root);
            walk_dirs(&root, &mut out);
        }
        out
    }

    /// Host-local IP allocation files (one per allocated IP).
    pub fn ip_allocations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.ipam_dir) {
            for net in rd.flatten() {
                if let Ok(files) = std::fs::read_dir(net.path()) {
                    for f in files.flatten() {
                        let n = f.file_name().to_string_lossy().into_owned();
                        if n.parse::<std::net::IpAddr>().is_ok() {
                            out.push(n);
                        }
                    }
                }
            }
        }
        out
    }

    /// Host veth interfaces attached to this agent's bridge.
    pub fn bridge_ports(&self) -> Vec<String> {
        let dir = PathBuf::from(format!("/sys/class/net/{}/brif", self.bridge));
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills everything this agent's pods run and removes what they made.
    pub fn cleanup(&mut self) {
        self.kill9();
        remove_runc_containers(&self.runc_root());
        // Shims and anything else started with our dirs on the command line.
        kill_processes_mentioning(&self._tmp.path().to_string_lossy());
        // Processes left in our cgroups.
        kill_cgroup_procs(&self.cgroup_dirs());
        std::thread::sleep(Duration::from_millis(100));
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).output();
        }
        let mut dirs = self.cgroup_dirs();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.cleanup();
    }
}

// One home for taking down what agents leave behind: the local cluster
// crate (also used by `keelson bench --local`).
pub use keelson_localcluster::host::{
    cgroup_hierarchies, kill_cgroup_procs, kill_processes_mentioning, remove_runc_containers,
    walk_dirs,
};
