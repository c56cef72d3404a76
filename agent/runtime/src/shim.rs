//! `keelson shim`: the per-container process that owns a container's stdio
//! and exit status (the conmon pattern).
//!
//! Protocol (files in the container's state directory `D`, see README.md):
//! the agent writes `D/shim.json` and runs `keelson shim --dir D`, which
//! re-executes itself detached (`--foreground`, new session, parent exits at
//! once, so the agent reaps it immediately and the shim outlives the agent).
//! The detached shim writes `D/shim.pid`, runs `RUNTIME create` + `start`
//! with the container's stdout/stderr on pipes it reads, writes
//! `D/started`, copies output to the CRI log, waits for the container's init
//! (it is the shim's child through the child-subreaper flag) and writes
//! `D/exit`. Every file is written atomically and durably (temp file,
//! fsync, rename, fsync of the directory: `keelson_host::fs`).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use keelson_host::fs::write_atomic;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Flags of the hidden `keelson shim` subcommand.
#[derive(clap::Args, Debug)]
pub struct ShimArgs {
    /// The container's state directory.
    #[arg(long)]
    pub dir: std::path::PathBuf,
    /// Internal: already detached (the second stage).
    #[arg(long, hide = true)]
    pub foreground: bool,
}

/// `D/shim.json`, written by the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimConfig {
    /// OCI runtime binary.
    pub runtime: PathBuf,
    /// The runtime's `--root` state directory.
    pub runtime_root: PathBuf,
    /// Container ID.
    pub id: String,
    /// Bundle directory (holds config.json).
    pub bundle: PathBuf,
    /// CRI log file.
    pub log_path: PathBuf,
    /// Rotate the log when it would grow past this many bytes (keeps one
    /// rotated file, `<log>.1`).
    #[serde(default = "default_log_max")]
    pub log_max_bytes: u64,
    /// Give the container a standard input that `attach` can write to
    /// ([`STDIN_FIFO`] in the state dir).
    #[serde(default)]
    pub stdin: bool,
}

/// The FIFO in a container's state dir that is its standard input.
pub const STDIN_FIFO: &str = "stdin";

fn default_log_max() -> u64 {
    10 << 20
}

/// `D/started`, written by the shim once the container runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    /// Host PID of the container's init.
    pub pid: u32,
    /// RFC 3339 UTC, nanoseconds.
    pub started_at: String,
    /// The init's start time in clock ticks since boot (/proc/PID/stat
    /// field 22), to tell a live container from a reused PID.
    pub start_ticks: u64,
}

/// `D/exit`, written by the shim when the container exited or failed to
/// start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exit {
    /// Exit code (128 + signal when killed by a signal; 128 when the
    /// container never started).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// The memory cgroup's OOM kill counter was non-zero.
    #[serde(default)]
    pub oom_killed: bool,
    /// RFC 3339 UTC, nanoseconds.
    pub finished_at: String,
    /// Set when create/start failed: the runtime's message.
    #[serde(default)]
    pub error: Option<String>,
}

/// Largest CRI log line payload before it is split with the P tag.
pub const MAX_LINE: usize = 16 * 1024;

/// The current time as RFC 3339 with nanoseconds, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Runs the shim (synchronous: no tokio runtime in this process).
pub fn main(args: ShimArgs) -> anyhow::Result<()> {
    if !args.foreground {
        // First stage: start the detached second stage and return at once,
        // so whoever spawned us reaps us now and the shim is re-parented
        // away from the agent.
        let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        argv.push("--foreground".into());
        Command::new("/proc/self/exe")
            .args(argv)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn detached shim for {}", args.dir.display()))?;
        return Ok(());
    }
    let dir = args.dir;
    let cfg_path = dir.join("shim.json");
    let cfg: ShimConfig = serde_json::from_slice(
        &std::fs::read(&cfg_path).with_context(|| format!("read {}", cfg_path.display()))?,
    )
    .with_context(|| format!("parse {}", cfg_path.display()))?;
    nix::unistd::setsid().context("setsid")?;
    nix::sys::prctl::set_child_subreaper(true).context("prctl(PR_SET_CHILD_SUBREAPER)")?;
    write_atomic(
        &dir.join("shim.pid"),
        std::process::id().to_string().as_bytes(),
    )?;
    match run(&dir, &cfg) {
        Ok(exit) => {
            write_exit(&dir, &exit)?;
            Ok(())
        }
        Err(reason) => {
            let exit = Exit {
                exit_code: 128,
                signal: None,
                oom_killed: false,
                finished_at: now_rfc3339(),
                error: Some(reason.clone()),
            };
            write_exit(&dir, &exit)?;
            anyhow::bail!("container {}: {reason}", cfg.id)
        }
    }
}

fn write_exit(dir: &Path, exit: &Exit) -> anyhow::Result<()> {
    let data = serde_json::to_vec(exit)?;
    Ok(write_atomic(&dir.join("exit"), &data)?)
}

fn runtime_cmd(cfg: &ShimConfig, dir: &Path) -> Command {
    let mut c = Command::new(&cfg.runtime);
    c.arg("--root").arg(&cfg.runtime_root);
    c.arg("--log")
        .arg(dir.join("runtime.log"))
        .args(["--log-format", "json"]);
    c
}

/// The last error the runtime logged in its JSON log (fallback when its
/// stderr said nothing).
fn last_logged_error(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("runtime.log")).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["level"] == "error")
            .then(|| v["msg"].as_str().map(str::to_string))
            .flatten()
    })
}

fn kill_container(cfg: &ShimConfig, dir: &Path) {
    let _ = runtime_cmd(cfg, dir)
        .args(["delete", "--force", &cfg.id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Creates and starts the container, copies its output, waits for it.
/// `Err` is the reason it could not be started.
fn run(dir: &Path, cfg: &ShimConfig) -> Result<Exit, String> {
    let (out_r, out_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let pid_file = dir.join("pid");
    let status = {
        // The command (holding our copies of the write ends) is dropped
        // right after runc create returns, so the pipes reach EOF when the
        // container's processes are gone.
        let mut c = runtime_cmd(cfg, dir);
        // A FIFO the container holds open for reading and writing, so it
        // never reads EOF while attach clients come and go.
        let stdin = if cfg.stdin {
            let fifo = dir.join(STDIN_FIFO);
            let _ = std::fs::remove_file(&fifo);
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| format!("mkfifo {}: {e}", fifo.display()))?;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)
                .map_err(|e| format!("open {}: {e}", fifo.display()))?;
            Stdio::from(f)
        } else {
            Stdio::null()
        };
        c.arg("create")
            .arg("--bundle")
            .arg(&cfg.bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&cfg.id)
            .stdin(stdin)
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        c.status()
            .map_err(|e| format!("run {} create: {e}", cfg.runtime.display()))?
    };
    if !status.success() {
        let mut msg = String::new();
        let _ = std::fs::File::from(err_r).read_to_string(&mut msg);
        let mut msg = msg.trim().to_string();
        if msg.is_empty() {
            msg = last_logged_error(dir).unwrap_or_default();
        }
        kill_container(cfg, dir);
        return Err(format!("{} create: {status}: {msg}", cfg.runtime.display()));
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("read pid file {}", pid_file.display()))?;
    let start = runtime_cmd(cfg, dir)
        .args(["start", &cfg.id])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {} start: {e}", cfg.runtime.display()))?;
    if !start.status.success() {
        let msg = String::from_utf8_lossy(&start.stderr).trim().to_string();
        let msg = if msg.is_empty() {
            last_logged_error(dir).unwrap_or_default()
        } else {
            msg
        };
        kill_container(cfg, dir);
        reap_all();
        return Err(format!(
            "{} start: {}: {msg}",
            cfg.runtime.display(),
            start.status
        ));
    }
    let mem_dir = crate::cgroups::memory_cgroup_dir(Path::new("/proc"), pid as u32);
    let started = Started {
        pid: pid as u32,
        started_at: now_rfc3339(),
        start_ticks: crate::oci::proc_start_ticks(Path::new("/proc"), pid as u32).unwrap_or(0),
    };
    let data = serde_json::to_vec(&started).map_err(|e| e.to_string())?;
    write_atomic(&dir.join("started"), &data).map_err(|e| e.to_string())?;

    let log = Arc::new(Mutex::new(CriLog::new(
        cfg.log_path.clone(),
        cfg.log_max_bytes,
    )));
    let readers = [(out_r, "stdout"), (err_r, "stderr")].map(|(fd, stream)| {
        let log = log.clone();
        std::thread::spawn(move || copy_stream(fd, stream, &log))
    });

    // Reap children until the container's init is among them.
    let status = loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => break (code, None),
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => {
                break (128 + sig as i32, Some(sig as i32));
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                // ECHILD: it was never ours (should not happen).
                return Ok(Exit {
                    exit_code: 255,
                    signal: None,
                    oom_killed: false,
                    finished_at: now_rfc3339(),
                    error: Some(format!("wait for container init {pid}: {e}")),
                });
            }
        }
    };
    let finished_at = now_rfc3339();
    let oom_killed = mem_dir
        .as_deref()
        .is_some_and(crate::cgroups::oom_killed_in);
    // Output still in the pipes: give the readers a moment to drain.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for r in readers {
        while !r.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if r.is_finished() {
            let _ = r.join();
        }
    }
    reap_all();
    if let Ok(mut l) = log.lock() {
        l.flush();
    }
    Ok(Exit {
        exit_code: status.0,
        signal: status.1,
        oom_killed,
        finished_at,
        error: None,
    })
}

fn reap_all() {
    while let Ok(s) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if s == WaitStatus::StillAlive {
            break;
        }
    }
}

fn copy_stream(fd: OwnedFd, stream: &'static str, log: &Mutex<CriLog>) {
    let mut f = std::fs::File::from(fd);
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        let lines = split_lines(&mut pending, false);
        if !lines.is_empty()
            && let Ok(mut l) = log.lock()
        {
            for (tag, line) in lines {
                l.write_line(stream, tag, &line);
            }
        }
    }
    let lines = split_lines(&mut pending, true);
    if let Ok(mut l) = log.lock() {
        for (tag, line) in lines {
            l.write_line(stream, tag, &line);
        }
    }
}

/// Takes the complete lines (tag F) and over-long partial chunks (tag P,
/// at most [`MAX_LINE`] bytes each) out of `pending`; at EOF the rest is a
/// final F line.
pub fn split_lines(pending: &mut Vec<u8>, eof: bool) -> Vec<(char, Vec<u8>)> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) if i <= MAX_LINE => {
                out.push(('F', rest[..i].to_vec()));
                start += i + 1;
            }
            _ if rest.len() > MAX_LINE => {
                out.push(('P', rest[..MAX_LINE].to_vec()));
                start += MAX_LINE;
            }
            _ => break,
        }
    }
    pending.drain(..start);
    if eof && !pending.is_empty() {
        out.push(('F', std::mem::take(pending)));
    }
    out
}

/// Formats one CRI log line.
pub fn cri_line(ts: &str, stream: &str, tag: char, line: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(line.len() + ts.len() + 12);
    v.extend_from_slice(ts.as_bytes());
    v.push(b' ');
    v.extend_from_slice(stream.as_bytes());
    v.push(b' ');
    v.push(tag as u8);
    v.push(b' ');
    v.extend_from_slice(line);
    v.push(b'\n');
    v
}

/// The CRI log file with size-based rotation (one rotated file kept).
struct CriLog {
    path: PathBuf,
    max: u64,
    file: Option<std::fs::File>,
    size: u64,
}

impl CriLog {
    fn new(path: PathBuf, max: u64) -> Self {
        Self {
            path,
            max,
            file: None,
            size: 0,
        }
    }

    fn open(&mut self) -> Option<&mut std::fs::File> {
        if self.file.is_none() {
            if let Some(parent) = self.path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok()?;
            self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(f);
        }
        self.file.as_mut()
    }

    fn write_line(&mut self, stream: &str, tag: char, line: &[u8]) {
        let data = cri_line(&now_rfc3339(), stream, tag, line);
        if self.max > 0 && self.size > 0 && self.size + data.len() as u64 > self.max {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let _ = std::fs::rename(&self.path, rotated);
            self.file = None;
        }
        if let Some(f) = self.open()
            && f.write_all(&data).is_ok()
        {
            self.size += data.len() as u64;
        }
    }

    fn flush(&mut self) {
        if let Some(f) = self.file.as_mut() {
            let _ = f.sync_data();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_splitting() {
        let mut p = b"a\nbc\npart".to_vec();
        assert_eq!(
            split_lines(&mut p, false),
            vec![('F', b"a".to_vec()), ('F', b"bc".to_vec())]
        );
        assert_eq!(p, b"part");
        assert_eq!(split_lines(&mut p, true), vec![('F', b"part".to_vec())]);
        assert!(p.is_empty());
        let mut long = vec![b'x'; MAX_LINE * 2 + 10];
        long.push(b'\n');
        long.extend_from_slice(b"y");
        let out = split_lines(&mut long, false);
        assert_eq!(
            out.iter().map(|(t, l)| (*t, l.len())).collect::<Vec<_>>(),
            vec![('P', MAX_LINE), ('P', MAX_LINE), ('F', 10)]
        );
        assert_eq!(long, b"y");
        let mut empty_line = b"\n".to_vec();
        assert_eq!(split_lines(&mut empty_line, false), vec![('F', vec![])]);
    }

    #[test]
    fn cri_format_and_rotation() {
        assert_eq!(cri_line("T", "stdout", 'F', b"hi"), b"T stdout F hi\n");
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("sub/c.log");
        let mut log = CriLog::new(path.clone(), 200);
        for i in 0..10 {
            log.write_line("stderr", 'F', format!("line {i}").as_bytes());
        }
        let cur = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(t.path().join("sub/c.log.1")).unwrap();
        assert!(cur.len() <= 200 && old.len() <= 200, "{cur:?} {old:?}");
        assert!(cur.ends_with("stderr F line 9\n"), "{cur}");
        let first = cur.lines().next().unwrap();
        let ts = first.split(' ').next().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
        assert!(ts.ends_with('Z') && ts.len() == 30, "{ts}");
    }

    #[test]
    fn files_roundtrip() {
        let t = tempfile::tempdir().unwrap();
        let e = Exit {
            exit_code: 137,
            signal: Some(9),
            oom_killed: true,
            finished_at: now_rfc3339(),
            error: None,
        };
        write_atomic(&t.path().join("exit"), &serde_json::to_vec(&e).unwrap()).unwrap();
        let back: Exit =
            serde_json::from_slice(&std::fs::read(t.path().join("exit")).unwrap()).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
