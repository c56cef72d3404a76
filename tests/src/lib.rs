//! The test kit: one set of helpers for every crate's tests and benches,
//! and for the end-to-end tests in `tests/tests` that start real `keelson`
//! processes, etcd, kubectl and the Python client.
//!
//! - whether a test can run here: [`needs`] / [`require_or_skip`] /
//!   [`require_all`] (one rule, honouring `KEELSON_REQUIRE_ALL=1`);
//! - the workspace's binaries, checked to be built from this clone:
//!   [`keelson_bin`], [`keelson_cni_bin`];
//! - network namespaces ([`Netns`]), background processes ([`Proc`]),
//!   commands that must succeed ([`sh`], [`run`]), waiting for a condition
//!   ([`wait_for`]);
//! - launchers that clean up even when a test fails: [`EtcdProcess`],
//!   [`ServerProcess`], [`agent::AgentProcess`], [`multinode::Cluster`],
//!   [`registry::Registry`];
//! - `docker save` archives made in the test ([`docker_archive`]).
//!
//! Nothing here is compiled into a product binary.

#![forbid(unsafe_code)]

pub mod agent;
pub mod bin;
pub mod docker_archive;
pub mod etcd;
pub mod fake;
pub mod multinode;
pub mod netns;
pub mod process;
pub mod registry;
pub mod require;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use bin::{keelson_bin, keelson_cni_bin, workspace_root};
pub use etcd::EtcdProcess;
pub use netns::{Netns, unique};
pub use process::{Proc, run, sh, wait_for, wait_for_async};
pub use require::{Needs, find_tool, is_root, needs, require_all, require_or_skip};

/// The cgroup2 hierarchy under /sys/fs/cgroup: the root on a pure v2
/// host, `unified` on a hybrid one (detected, never assumed).
pub fn cgroup2() -> Option<PathBuf> {
    keelson_host::cgroup::cgroup2_dir(Path::new("/sys/fs/cgroup"))
}

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// Which store a server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Etcd,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Embedded, Backend::Etcd];
}

/// `keelson server` flags for the API server alone, as a kube-apiserver
/// with no controller manager beside it: no scheduler or controllers (they
/// would write to the objects under test), and so no `default`
/// ServiceAccount, hence no ServiceAccount admission either (it would
/// refuse every pod, as kube-apiserver's does without the account).
pub const API_ONLY: &[&str] = &[
    "--disable-controllers",
    "--disable-admission-plugins=ServiceAccount",
];

/// A running `keelson server`, killed by PID on drop.
pub struct ServerProcess {
    pub data_dir: PathBuf,
    pub port: u16,
    pub kubeconfig: PathBuf,
    child: Option<Child>,
    etcd_servers: Option<String>,
    extra_args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
    log: PathBuf,
}

impl ServerProcess {
    /// Start a server on `backend` in a fresh temporary directory. For
    /// [`Backend::Etcd`], `etcd` is the endpoint to use.
    pub fn start(etcd: Option<&EtcdProcess>) -> ServerProcess {
        Self::start_with(etcd, &[])
    }

    /// Like [`ServerProcess::start`], with extra `keelson server` flags.
    pub fn start_with(etcd: Option<&EtcdProcess>, extra_args: &[&str]) -> ServerProcess {
        Self::start_prepared(etcd, extra_args, |_| {})
    }

    /// Like [`ServerProcess::start_with`], after `prepare` has put what it
    /// wants into the data directory (a shared CA and signing key, …).
    pub fn start_prepared(
        etcd: Option<&EtcdProcess>,
        extra_args: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> ServerProcess {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().to_path_buf();
        prepare(&data_dir);
        let mut s = ServerProcess {
            kubeconfig: data_dir.join("admin.kubeconfig"),
            log: data_dir.join("server.log"),
            data_dir,
            port: 0,
            child: None,
            etcd_servers: etcd.map(|e| e.endpoint.clone()),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            _tmp: Some(tmp),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        for attempt in 0..3 {
            if self.port == 0 || attempt > 0 {
                self.port = free_port();
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("server log");
            let mut cmd = Command::new(keelson_bin());
            cmd.args(["server", "--data-dir"])
                .arg(&self.data_dir)
                .args(["--listen", &format!("127.0.0.1:{}", self.port)])
                .env("KEELSON_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log);
            if let Some(e) = &self.etcd_servers {
                cmd.args(["--etcd-servers", e]);
            }
            cmd.args(&self.extra_args);
            let child = cmd.spawn().expect("spawn keelson server");
            self.child = Some(child);
            if self.wait_ready(Duration::from_secs(30)) {
                return;
            }
            self.kill();
        }
        panic!(
            "keelson server did not become ready; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if self.kubeconfig.exists()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// kill -9 and start again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// kill -9 the server.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A kube-rs client for this server, from its admin kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kubeconfig");
        kube::Client::try_from(cfg).expect("kube client")
    }

    /// Run kubectl 1.`minor` with this server's kubeconfig.
    pub fn kubectl(&self, minor: u32, args: &[&str]) -> Output {
        self.kubectl_cmd(minor, args).output().expect("run kubectl")
    }

    pub fn kubectl_cmd(&self, minor: u32, args: &[&str]) -> Command {
        let mut c = Command::new(kubectl_path(minor));
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.data_dir);
        c
    }

    /// Run kubectl and return stdout, panicking with stderr on failure.
    pub fn kubectl_ok(&self, minor: u32, args: &[&str]) -> String {
        let out = self.kubectl(minor, args);
        assert!(
            out.status.success(),
            "kubectl 1.{minor} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn kubectl_json(&self, minor: u32, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(minor, &a)).expect("kubectl -o json output")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `curl -s -k` (10 s at most) with `args`: (HTTP status, 0 if none; body;
/// curl's exit code).
pub fn curl_k(args: &[&str]) -> (u16, String, i32) {
    let out = Command::new("/usr/bin/curl")
        .args(["-s", "-k", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        out.status.code().unwrap_or(-1),
    )
}

/// Path of an installed kubectl 1.`minor`.
pub fn kubectl_path(minor: u32) -> PathBuf {
    PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}"))
}

/// kubectl versions the scenario runs with, those installed; panics under
/// `KEELSON_REQUIRE_ALL=1` when one is missing.
pub fn kubectl_versions() -> Vec<u32> {
    let mut out = Vec::new();
    for m in [27, 33] {
        if kubectl_path(m).is_file() {
            out.push(m);
        } else if require_all() {
            panic!(
                "kubectl 1.{m} not installed at {}",
                kubectl_path(m).display()
            );
        } else {
            eprintln!("skipping kubectl 1.{m}: not installed");
        }
    }
    out
}

/// Start etcd for a backend that needs it (`None` for the embedded store);
/// `Err(())` means skip (etcd missing and not required).
#[allow(clippy::result_unit_err)] // `Err` carries nothing: the reason was printed.
pub fn etcd_for(backend: Backend) -> Result<Option<EtcdProcess>, ()> {
    match backend {
        Backend::Embedded => Ok(None),
        Backend::Etcd => EtcdProcess::start_or_skip().map(Some).ok_or(()),
    }
}
