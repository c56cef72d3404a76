//! A real etcd for tests: [`EtcdProcess`] starts a single-member etcd on
//! loopback with its own data directory and kills it when dropped. (It was
//! `keelson_control_plane::store::testing`, compiled into the product; the
//! control plane's tests now take it from this kit.)
//!
//! The binary is `$KEELSON_ETCD_BIN`, else `etcd` on `PATH` (Debian package
//! `etcd-server`). Tests call [`EtcdProcess::start_or_skip`]: without the binary
//! it returns `None` after saying so, unless `KEELSON_REQUIRE_ALL=1` (set by
//! CI), where it panics.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::require_all;

/// How long etcd gets to elect itself and answer `/health`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// etcd serving its clients over TLS: its certificate and key, and the CA
/// that client certificates must be signed by (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct EtcdServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// A running etcd, killed (and its data directory removed) on drop.
#[derive(Debug)]
pub struct EtcdProcess {
    /// The client URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub endpoint: String,
    child: Child,
    dir: PathBuf,
}

/// Where the etcd binary is, if it is installed.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("KEELSON_ETCD_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

impl EtcdProcess {
    /// Starts etcd and waits until it is healthy. Fails with
    /// [`io::ErrorKind::NotFound`] if the binary is missing.
    pub fn start() -> io::Result<EtcdProcess> {
        Self::start_with(None)
    }

    /// Like [`EtcdProcess::start`], serving clients over TLS only.
    pub fn start_tls(tls: &EtcdServerTls) -> io::Result<EtcdProcess> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&EtcdServerTls>) -> io::Result<EtcdProcess> {
        let bin = etcd_binary().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "etcd not installed (apt-get install etcd-server)",
            )
        })?;
        // The ports are picked by binding port 0 and releasing it, so another
        // process may take one in between: retry a few times.
        let mut last_error = None;
        for _ in 0..3 {
            match Self::start_once(&bin, tls) {
                Ok(etcd) => return Ok(etcd),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    /// For tests: a running etcd, or `None` (after printing why) when etcd is
    /// not installed and `KEELSON_REQUIRE_ALL` is not `1`.
    ///
    /// # Panics
    ///
    /// If etcd is installed but does not start, or is missing while required.
    pub fn start_or_skip() -> Option<EtcdProcess> {
        match Self::start() {
            Ok(etcd) => Some(etcd),
            Err(err) if err.kind() == io::ErrorKind::NotFound && !require_all() => {
                eprintln!("skipping: etcd not installed (apt-get install etcd-server)");
                None
            }
            Err(err) => panic!("start etcd: {err}"),
        }
    }

    fn start_once(bin: &Path, tls: Option<&EtcdServerTls>) -> io::Result<EtcdProcess> {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "keelson-etcd-{}-{}-{nanos}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
        let result = Self::spawn(bin, &dir, tls);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    fn spawn(bin: &Path, dir: &Path, tls: Option<&EtcdServerTls>) -> io::Result<EtcdProcess> {
        let client = free_port()?;
        let peer = free_port()?;
        // /health over plain HTTP whatever the client port speaks.
        let metrics = free_port()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log_path = dir.join("etcd.log");
        let log = File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        if let Some(t) = tls {
            cmd.arg(format!("--cert-file={}", t.cert.display()))
                .arg(format!("--key-file={}", t.key.display()))
                .arg(format!("--trusted-ca-file={}", t.client_ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name=default")
            .arg(format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"))
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawn {}: {e}", bin.display())))?;
        // From here on, the guard kills etcd if waiting fails.
        let mut etcd = EtcdProcess {
            endpoint: client_url,
            child,
            dir: dir.to_path_buf(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], metrics));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = etcd.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "etcd exited with {status} before it was ready; its log:\n{}",
                    log_tail(&log_path)
                )));
            }
            if healthy(addr) {
                return Ok(etcd);
            }
            if Instant::now() > deadline {
                let log = log_tail(&log_path);
                etcd.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("etcd not healthy after {READY_TIMEOUT:?}; its log:\n{log}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The process id of etcd.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory (etcd's data is in `data/` below it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn kill(&mut self) {
        // SIGKILL by pid; an error means it has already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Asks etcd's `/health` endpoint (served on the metrics port) whether the
/// member has a leader.
fn healthy(addr: SocketAddr) -> bool {
    let check = || -> io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(
            format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response.starts_with("HTTP/1.1 200") && response.contains("\"health\":\"true\""))
    };
    check().unwrap_or(false)
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
