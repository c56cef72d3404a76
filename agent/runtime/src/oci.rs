//! [`OciRuntime`]: the `Runtime` trait over an OCI runtime CLI (runc by
//! default) with one `keelson shim` per container. See README.md for the
//! state directory layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::shim::{Exit, ShimConfig, Started};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{
    ContainerConfig, ContainerInfo, ContainerState, EXEC_OUTPUT_MAX, ExecIo, ExecProcess,
    ExecReader, ExecResult, ExecWriter, OciRuntime, Runtime, RuntimeError,
};

/// Numbers the pid files of concurrent execs.
static EXEC_SEQ: AtomicU64 = AtomicU64::new(0);

/// How long `start` waits for the shim to report.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop` waits after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// [`keelson_host::fs::write_atomic`], its error as a [`RuntimeError`].
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), RuntimeError> {
    keelson_host::fs::write_atomic(path, data).map_err(|e| RuntimeError::Io {
        op: format!("write {} atomically ({})", path.display(), e.step),
        err: e.source,
    })
}

/// Start time of a process in clock ticks since boot (field 22 of
/// `<proc>/<pid>/stat`); `None` if it does not exist.
pub(crate) fn proc_start_ticks(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    parse_stat(&stat).map(|(_, t)| t)
}

/// (state char, start ticks) from a /proc/PID/stat line.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name may hold spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state); field 22 is index 19.
    Some((f.first()?.chars().next()?, f.get(19)?.parse().ok()?))
}

fn parse_time(s: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(SystemTime::from)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, RuntimeError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| RuntimeError::Failed(format!("parse {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(RuntimeError::Io {
            op: format!("read {}", path.display()),
            err,
        }),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Raw view of a container's state directory.
struct Files {
    started: Option<Started>,
    exit: Option<Exit>,
    shim_pid: Option<u32>,
}

impl OciRuntime {
    /// runc at its Debian path, state under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>, shim_exe: impl Into<PathBuf>) -> Self {
        Self {
            runtime: PathBuf::from("/usr/sbin/runc"),
            state_dir: state_dir.into(),
            shim_exe: shim_exe.into(),
        }
    }

    /// The runtime's own `--root`: `runc-root` next to `state_dir`.
    pub fn runtime_root(&self) -> PathBuf {
        match self.state_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.join("runc-root"),
            _ => self.state_dir.join(".runc-root"),
        }
    }

    /// A container's state directory.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join(id)
    }

    /// The reason a container failed to start (the runtime's message), if it
    /// did.
    pub fn start_error(&self, id: &str) -> Option<String> {
        read_json::<Exit>(&self.container_dir(id).join("exit"))
            .ok()
            .flatten()
            .and_then(|e| e.error)
    }

    fn files(&self, dir: &Path) -> Result<Files, RuntimeError> {
        Ok(Files {
            started: read_json(&dir.join("started"))?,
            exit: read_json(&dir.join("exit"))?,
            shim_pid: std::fs::read_to_string(dir.join("shim.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        })
    }

    fn runtime_cmd(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.runtime);
        c.arg("--root").arg(self.runtime_root());
        c.stdin(std::process::Stdio::null()).kill_on_drop(true);
        c
    }

    async fn run_runtime(&self, args: &[&str]) -> Result<(), String> {
        let out = self
            .runtime_cmd()
            .args(args)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn state_from(&self, id: &str, f: &Files) -> ContainerState {
        let started_at = f.started.as_ref().map(|s| parse_time(&s.started_at));
        if let Some(e) = &f.exit {
            let finished_at = parse_time(&e.finished_at);
            return ContainerState::Exited {
                exit_code: e.exit_code,
                oom_killed: e.oom_killed,
                started_at: started_at.unwrap_or(finished_at),
                finished_at,
            };
        }
        let Some(s) = &f.started else {
            if f.shim_pid.is_some_and(|p| !alive(p, None)) {
                // The shim died before the container started.
                let now = SystemTime::now();
                return exited_unknown(now, now);
            }
            return ContainerState::Created;
        };
        if alive(s.pid, Some(s.start_ticks)) {
            return ContainerState::Running {
                pid: s.pid,
                started_at: started_at.unwrap_or(SystemTime::UNIX_EPOCH),
            };
        }
        tracing::debug!(container = id, "init gone and no exit file");
        exited_unknown(
            started_at.unwrap_or(SystemTime::UNIX_EPOCH),
            SystemTime::now(),
        )
    }

    /// Reads the state; when the init is gone (or a zombie) but the shim is
    /// still alive, waits for the shim's exit file: the status is on its way
    /// (a loaded machine can take seconds), and reporting it unknown would
    /// lose the exit code. Bounded, in case the shim hangs.
    async fn read_state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        let dir = self.container_dir(id);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if !dir.join("shim.json").exists() {
                return Ok(None);
            }
            let f = self.files(&dir)?;
            let st = self.state_from(id, &f);
            let settling = f.exit.is_none()
                && f.started
                    .as_ref()
                    .is_some_and(|s| !alive(s.pid, Some(s.start_ticks)))
                && f.shim_pid.is_some_and(|p| alive(p, None));
            if !settling || Instant::now() >= deadline {
                return Ok(Some(st));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn wait_exit(&self, dir: &Path, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if dir.join("exit").exists() || !dir.join("shim.json").exists() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn exited_unknown(started_at: SystemTime, finished_at: SystemTime) -> ContainerState {
    // The exit status was lost (the shim was killed): report 255 like
    // containerd does for an unknown exit.
    ContainerState::Exited {
        exit_code: 255,
        oom_killed: false,
        started_at,
        finished_at,
    }
}

/// Whether a process exists and is not a zombie; with `ticks`, also that it
/// is the same process (not a reused PID).
fn alive(pid: u32, ticks: Option<u64>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match parse_stat(&stat) {
        Some((state, t)) => {
            state != 'Z' && state != 'X' && ticks.is_none_or(|want| want == 0 || want == t)
        }
        None => false,
    }
}

#[async_trait::async_trait]
impl Runtime for OciRuntime {
    async fn start(&self, config: &ContainerConfig) -> Result<ContainerState, RuntimeError> {
        let id = config.id.as_str();
        if !valid_id(id) {
            return Err(RuntimeError::Failed(format!(
                "start container {id:?}: invalid id"
            )));
        }
        let dir = self.container_dir(id);
        if dir.join("shim.json").exists() {
            // Already started (e.g. a retried call): report, don't restart.
            if let Some(st) = self.read_state(id).await? {
                return Ok(st);
            }
        }
        crate::bundle::write_bundle(&dir, config)?;
        let labels =
            serde_json::to_vec(&config.labels).map_err(|e| RuntimeError::Failed(e.to_string()))?;
        write_atomic(&dir.join("labels.json"), &labels)?;
        let runtime_root = self.runtime_root();
        std::fs::create_dir_all(&runtime_root).map_err(|err| RuntimeError::Io {
            op: format!("create {}", runtime_root.display()),
            err,
        })?;
        if let Some(p) = config.log_path.parent() {
            std::fs::create_dir_all(p).map_err(|err| RuntimeError::Io {
                op: format!("create log dir {}", p.display()),
                err,
            })?;
        }
        let shim_cfg = ShimConfig {
            runtime: self.runtime.clone(),
            runtime_root,
            id: id.to_string(),
            bundle: dir.clone(),
            log_path: config.log_path.clone(),
            log_max_bytes: 10 << 20,
            stdin: config.stdin,
        };
        let data = serde_json::to_vec_pretty(&shim_cfg)
            .map_err(|e| RuntimeError::Failed(e.to_string()))?;
        write_atomic(&dir.join("shim.json"), &data)?;

        // The first stage re-executes itself detached and exits at once; we
        // reap it here so no zombie is left in the agent.
        let status = tokio::process::Command::new(&self.shim_exe)
            .arg("shim")
            .arg("--dir")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .await
            .map_err(|err| RuntimeError::Io {
                op: format!("spawn shim {} for container {id}", self.shim_exe.display()),
                err,
            })?;
        if !status.status.success() {
            return Err(RuntimeError::Failed(format!(
                "shim for container {id}: {}: {}",
                status.status,
                String::from_utf8_lossy(&status.stderr).trim()
            )));
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let f = self.files(&dir)?;
            if let Some(e) = &f.exit
                && let Some(reason) = &e.error
            {
                return Err(RuntimeError::StartFailed {
                    id: id.to_string(),
                    reason: reason.clone(),
                });
            }
            if f.exit.is_some() || f.started.is_some() {
                return Ok(self.state_from(id, &f));
            }
            if let ContainerState::Exited { .. } = self.state_from(id, &f) {
                return Err(RuntimeError::StartFailed {
                    id: id.to_string(),
                    reason: "shim exited before starting the container".into(),
                });
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::StartFailed {
                    id: id.to_string(),
                    reason: format!("no report from the shim within {START_TIMEOUT:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn state(&self, id: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        if !valid_id(id) {
            return Ok(None);
        }
        let Some(state) = self.read_state(id).await? else {
            return Ok(None);
        };
        let labels: BTreeMap<String, String> =
            read_json(&self.container_dir(id).join("labels.json"))?.unwrap_or_default();
        Ok(Some(ContainerInfo {
            id: id.to_string(),
            labels,
            state,
        }))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        if !valid_id(id) {
            return Ok(());
        }
        let dir = self.container_dir(id);
        match self.read_state(id).await? {
            None | Some(ContainerState::Exited { .. }) => return Ok(()),
            Some(ContainerState::Created) => {
                // Never started (or the shim is mid-start): force it down.
                let _ = self.run_runtime(&["delete", "--force", id]).await;
            }
            Some(ContainerState::Running { .. }) => {}
        }
        if let Err(e) = self.run_runtime(&["kill", id, "TERM"]).await {
            tracing::debug!(container = id, error = %e, "runtime kill TERM");
        }
        if self.wait_exit(&dir, grace).await {
            return Ok(());
        }
        if let Err(e) = self.run_runtime(&["kill", "--all", id, "KILL"]).await {
            tracing::debug!(container = id, error = %e, "runtime kill --all KILL");
        }
        if self.wait_exit(&dir, KILL_TIMEOUT).await {
            return Ok(());
        }
        // The shim may be gone (killed): then the init was its child and
        // nobody writes the exit file; check the process itself.
        match self.read_state(id).await? {
            None | Some(ContainerState::Exited { .. }) => Ok(()),
            _ => Err(RuntimeError::Failed(format!(
                "stop container {id}: still running {KILL_TIMEOUT:?} after SIGKILL"
            ))),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        if !valid_id(id) {
            return Ok(());
        }
        let dir = self.container_dir(id);
        if let Err(e) = self.run_runtime(&["delete", "--force", id]).await
            && !e.contains("does not exist")
            && !e.contains("not exist")
        {
            return Err(RuntimeError::Command(format!(
                "{} delete --force {id}: {e}",
                self.runtime.display()
            )));
        }
        // Let a live shim notice the exit, so it does not write into a
        // removed directory (it tolerates that anyway).
        let f = self.files(&dir)?;
        if let Some(p) = f.shim_pid {
            let deadline = Instant::now() + Duration::from_secs(2);
            while alive(p, None) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(RuntimeError::Io {
                op: format!("remove container state {}", dir.display()),
                err,
            }),
        }
    }

    async fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        if !valid_id(id) || args.is_empty() {
            return Err(RuntimeError::Failed(format!(
                "exec {args:?} in container {id:?}: invalid id or empty command"
            )));
        }
        // `runc exec` takes the container's process spec (env, cwd, user,
        // capabilities) and replaces the arguments. Its pid file names the
        // process to kill at the timeout: killing runc alone would leave it
        // running in the container.
        let pid_file = self.container_dir(id).join(format!(
            "exec-{}.pid",
            EXEC_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = self.runtime_cmd();
        cmd.arg("exec")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().map_err(|err| RuntimeError::Io {
            op: format!("run {} exec in container {id}", self.runtime.display()),
            err,
        })?;
        let out = tokio::time::timeout(timeout, child.wait_with_output()).await;
        let result = match out {
            Ok(Ok(out)) => {
                let mut output = out.stdout;
                output.extend_from_slice(&out.stderr);
                output.truncate(EXEC_OUTPUT_MAX);
                let stderr = String::from_utf8_lossy(&out.stderr);
                // runc's own failure (no such container, no such binary in
                // the image) is not the command's exit code.
                if !out.status.success() && stderr.contains("level=error") {
                    Err(RuntimeError::Command(format!(
                        "{} exec {args:?} in container {id}: {}",
                        self.runtime.display(),
                        stderr.trim()
                    )))
                } else {
                    Ok(ExecResult {
                        exit_code: Some(out.status.code().unwrap_or(-1)),
                        output,
                    })
                }
            }
            Ok(Err(err)) => Err(RuntimeError::Io {
                op: format!("wait for {} exec in container {id}", self.runtime.display()),
                err,
            }),
            Err(_) => {
                // The child (runc) was dropped and killed; now its process.
                crate::kill_by_pid_file(&pid_file);
                Ok(ExecResult {
                    exit_code: None,
                    output: Vec::new(),
                })
            }
        };
        let _ = std::fs::remove_file(&pid_file);
        result
    }

    async fn attach_stdin(&self, id: &str) -> Result<Option<ExecWriter>, RuntimeError> {
        if !valid_id(id) {
            return Ok(None);
        }
        let fifo = self.container_dir(id).join(crate::shim::STDIN_FIFO);
        if !fifo.exists() {
            return Ok(None);
        }
        // The container holds the FIFO open for reading: this open does
        // not wait.
        let w = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .await
            .map_err(|err| RuntimeError::Io {
                op: format!("open {}", fifo.display()),
                err,
            })?;
        Ok(Some(Box::new(w)))
    }

    async fn exec_interactive(
        &self,
        id: &str,
        args: &[String],
        io: ExecIo,
    ) -> Result<ExecProcess, RuntimeError> {
        use std::process::Stdio;
        if !valid_id(id) || args.is_empty() {
            return Err(RuntimeError::Failed(format!(
                "exec {args:?} in container {id:?}: invalid id or empty command"
            )));
        }
        let io_err = |op: &str, err: std::io::Error| RuntimeError::Io {
            op: format!("{op} for exec in container {id}"),
            err,
        };
        let pid_file = self.container_dir(id).join(format!(
            "exec-{}.pid",
            EXEC_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = self.runtime_cmd();
        cmd.arg("exec").arg("--pid-file").arg(&pid_file);
        let mut terminal = None;
        if io.tty {
            // In the foreground `runc exec --tty` relays the container's
            // terminal to its own, which must be one: it gets the slave
            // side of ours (and resizes the container's from it on
            // SIGWINCH); the caller talks to the master side.
            // At the client's size from the start: runc copies it to the
            // container's terminal before the command runs (a SIGWINCH
            // sent after the start can come before runc listens for it).
            let size = io.size.map(|(cols, rows)| nix::pty::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            });
            let pty = nix::pty::openpty(size.as_ref(), None)
                .map_err(|e| io_err("open a terminal", e.into()))?;
            let slave = std::fs::File::from(pty.slave);
            let dup = |f: &std::fs::File| f.try_clone().map_err(|e| io_err("dup the terminal", e));
            cmd.arg("--tty")
                .stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            terminal = Some(pty.master);
        } else {
            let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
            cmd.stdin(pipe(io.stdin))
                .stdout(pipe(io.stdout))
                .stderr(pipe(io.stderr));
        }
        cmd.arg(id).args(args);
        let mut child = cmd.spawn().map_err(|err| RuntimeError::Io {
            op: format!("run {} exec in container {id}", self.runtime.display()),
            err,
        })?;
        // The slave's copies held by `cmd` close with it: the master then
        // reads EOF (EIO) once runc and the command are gone.
        drop(cmd);
        let (stdin, stdout, stderr, terminal) = match terminal {
            Some(master) => {
                let master = std::fs::File::from(master);
                let reader = master
                    .try_clone()
                    .map_err(|e| io_err("dup the terminal", e))?;
                let stdin = match io.stdin {
                    true => {
                        let w = master
                            .try_clone()
                            .map_err(|e| io_err("dup the terminal", e))?;
                        Some(Box::new(tokio::fs::File::from_std(w)) as ExecWriter)
                    }
                    false => None,
                };
                let out = Box::new(TerminalReader(tokio::fs::File::from_std(reader))) as ExecReader;
                let runtime_pid = child.id().unwrap_or_default();
                (
                    stdin,
                    Some(out),
                    None,
                    Some(Terminal {
                        master,
                        runtime_pid,
                    }),
                )
            }
            None => (
                child.stdin.take().map(|w| Box::new(w) as ExecWriter),
                child.stdout.take().map(|r| Box::new(r) as ExecReader),
                child.stderr.take().map(|r| Box::new(r) as ExecReader),
                None,
            ),
        };
        Ok(ExecProcess {
            child,
            stdin,
            stdout,
            stderr,
            terminal,
            pid_file: Some(pid_file),
        })
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let entries = match std::fs::read_dir(&self.state_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => {
                return Err(RuntimeError::Io {
                    op: format!("list containers in {}", self.state_dir.display()),
                    err,
                });
            }
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            if let Some(info) = self.state(&id).await? {
                out.push(info);
            }
        }
        Ok(out)
    }
}

/// The caller's side of an interactive exec's terminal.
#[derive(Debug)]
pub struct Terminal {
    master: std::fs::File,
    /// The runtime's process, which copies the size to the container's
    /// terminal when told (SIGWINCH).
    runtime_pid: u32,
}

impl Terminal {
    /// Resizes the terminal to `cols` x `rows`.
    pub fn resize(&self, cols: u16, rows: u16) -> std::io::Result<()> {
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.master, size)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.runtime_pid as i32),
            nix::sys::signal::Signal::SIGWINCH,
        )
        .map_err(std::io::Error::from)
    }
}

/// A terminal's master side as a reader: EIO (no process holds the
/// slave side any more) is the end of the output.
struct TerminalReader(tokio::fs::File);

impl tokio::io::AsyncRead for TerminalReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e))
                if e.raw_os_error() == Some(nix::errno::Errno::EIO as i32) =>
            {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        let s = "1234 (we ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        assert_eq!(parse_stat(s), Some(('S', 98765)));
        assert_eq!(parse_stat("garbage"), None);
        let me = std::process::id();
        assert!(alive(me, None));
        let t = proc_start_ticks(Path::new("/proc"), me).unwrap();
        assert!(alive(me, Some(t)));
        assert!(!alive(me, Some(t + 1)));
        assert!(!alive(u32::MAX - 1, None));
    }

    #[test]
    fn ids_and_state_from_files() {
        assert!(valid_id("abc-1_2.x"));
        assert!(!valid_id("../x") && !valid_id("") && !valid_id(".x") && !valid_id("a/b"));
        let rt = OciRuntime::new("/tmp/k/state", "/bin/true");
        assert_eq!(rt.runtime_root(), PathBuf::from("/tmp/k/runc-root"));
        let me = std::process::id();
        let running = Files {
            started: Some(Started {
                pid: me,
                started_at: "2024-01-02T03:04:05.000000001Z".into(),
                start_ticks: 0,
            }),
            exit: None,
            shim_pid: None,
        };
        assert!(
            matches!(rt.state_from("c", &running), ContainerState::Running { pid, .. } if pid == me)
        );
        let exited = Files {
            exit: Some(Exit {
                exit_code: 3,
                signal: None,
                oom_killed: false,
                finished_at: "2024-01-02T03:04:06Z".into(),
                error: None,
            }),
            ..running
        };
        match rt.state_from("c", &exited) {
            ContainerState::Exited {
                exit_code,
                started_at,
                finished_at,
                ..
            } => {
                assert_eq!(exit_code, 3);
                assert_eq!(
                    finished_at.duration_since(started_at).unwrap(),
                    Duration::from_nanos(999_999_999)
                );
            }
            s => panic!("{s:?}"),
        }
        let created = Files {
            started: None,
            exit: None,
            shim_pid: Some(me),
        };
        assert_eq!(rt.state_from("c", &created), ContainerState::Created);
    }
}
