//! Running containers: the `Runtime` trait and its OCI runtime CLI backend
//! (runc, crun, youki), the per-container shim that owns stdio (CRI log
//! format) and exit status, pod sandboxes (network, IPC and UTS namespaces
//! held without a pause container), and kubelet-style cgroups (v1 and v2).
//!
//! Contract used by the agent's pod workers (keep these names; add freely).

#![forbid(unsafe_code)]

pub mod bundle;
pub mod cgroups;
mod oci;
pub use oci::Terminal;
pub mod sandbox;
pub mod shim;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Errors of this crate; each names the operation and the container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A filesystem or system call failed; `op` names the operation and the
    /// object.
    #[error("{op}: {err}")]
    Io {
        /// Operation and object, e.g. "write /x/config.json".
        op: String,
        /// The underlying error.
        err: std::io::Error,
    },
    /// A runtime command (runc ...) failed: operation, object, exit status
    /// and the runtime's stderr.
    #[error("{0}")]
    Command(String),
    /// The container could not be created or started (bad command, missing
    /// binary in the image, bad mount...): the runtime's reason.
    #[error("start container {id}: {reason}")]
    StartFailed {
        /// Container ID.
        id: String,
        /// The runtime's message (e.g. `exec: "foo": executable file not found in $PATH`).
        reason: String,
    },
    /// Anything else, already phrased with operation and object.
    #[error("{0}")]
    Failed(String),
}

/// Everything needed to create and start one container.
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    /// Unique container ID (also the runtime's ID and state dir name).
    pub id: String,
    /// Labels kept with the container's state so a restarted agent can adopt
    /// it (pod uid, namespace, name, container name, restart count...).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Mounted root filesystem.
    pub rootfs: PathBuf,
    /// Process arguments (entrypoint + cmd already resolved).
    pub args: Vec<String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// User and group IDs.
    pub uid: u32,
    /// Group ID.
    pub gid: u32,
    /// Hostname (set in the sandbox's UTS namespace).
    pub hostname: String,
    /// Namespaces to join: the pod sandbox's.
    pub sandbox: sandbox::Sandbox,
    /// Cgroup for the container (inside the pod cgroup), as the runtime's
    /// cgroupsPath.
    pub cgroups_path: String,
    /// Resource limits for the container cgroup.
    pub resources: cgroups::Resources,
    /// readOnlyRootFilesystem.
    pub readonly_rootfs: bool,
    /// Capabilities to add and drop (names without CAP_), on top of the
    /// runtime default set.
    pub cap_add: Vec<String>,
    /// Capabilities to drop.
    pub cap_drop: Vec<String>,
    /// Privileged.
    pub privileged: bool,
    /// Extra bind mounts (volumes, /etc/hosts, /etc/resolv.conf...).
    pub mounts: Vec<Mount>,
    /// CRI-format log file for stdout and stderr.
    pub log_path: PathBuf,
    /// Keep the container's standard input open for `attach` (the pod's
    /// `stdin: true`): a FIFO in its state dir, never at EOF.
    pub stdin: bool,
}

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container.
    pub destination: String,
    /// Read-only.
    pub readonly: bool,
}

/// A container's state as the runtime and its shim report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running {
        /// Host PID of the container's init process.
        pid: u32,
        /// When it started.
        started_at: SystemTime,
    },
    /// Exited.
    Exited {
        /// Exit code (128 + signal when killed by a signal).
        exit_code: i32,
        /// Killed by the kernel's OOM killer.
        oom_killed: bool,
        /// When it started.
        started_at: SystemTime,
        /// When it exited.
        finished_at: SystemTime,
    },
}

/// A container the runtime knows of (for adoption after an agent restart).
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    /// Container ID.
    pub id: String,
    /// Labels given at creation.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Current state.
    pub state: ContainerState,
}

/// One narrow trait over a container runtime.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Creates and starts a container (through its shim); returns its state.
    async fn start(&self, config: &ContainerConfig) -> Result<ContainerState, RuntimeError>;
    /// The container's state; `None` if it does not exist.
    async fn state(&self, id: &str) -> Result<Option<ContainerInfo>, RuntimeError>;
    /// SIGTERM, then SIGKILL after `grace`; returns when it has exited.
    /// Success if it already exited or does not exist.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Removes a stopped container and its state. Success if absent.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every container this runtime has state for.
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError>;
    /// Runs `args` in the running container `id` (its namespaces, cgroup,
    /// environment, user and working directory), stdin closed; stdout and
    /// stderr together, at most [`EXEC_OUTPUT_MAX`] bytes. Past `timeout` the
    /// process is killed and the result says so.
    async fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError>;
    /// A writer to the standard input of container `id`, when it was
    /// started with [`ContainerConfig::stdin`]; `None` otherwise.
    async fn attach_stdin(&self, id: &str) -> Result<Option<ExecWriter>, RuntimeError> {
        let _ = id;
        Ok(None)
    }
    /// Starts `args` in the running container `id` (as [`Runtime::exec`]
    /// does) with its standard streams handed to the caller: pipes, or
    /// one terminal when `io.tty`. The command's exit code is the exit
    /// status of [`ExecProcess::child`].
    async fn exec_interactive(
        &self,
        id: &str,
        args: &[String],
        io: ExecIo,
    ) -> Result<ExecProcess, RuntimeError> {
        let _ = (args, io);
        Err(RuntimeError::Failed(format!(
            "exec in container {id}: this runtime does not stream"
        )))
    }
}

/// Which standard streams an interactive exec gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecIo {
    /// Input from the caller (else /dev/null).
    pub stdin: bool,
    /// Output to the caller (else discarded).
    pub stdout: bool,
    /// Errors to the caller (else discarded; with a terminal they go
    /// where the output goes).
    pub stderr: bool,
    /// One terminal for all three.
    pub tty: bool,
    /// The terminal's size from the start, (columns, rows): set before the
    /// command runs, so that it never sees a 0x0 terminal.
    pub size: Option<(u16, u16)>,
}

/// A byte source of an interactive exec.
pub type ExecReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// A byte sink of an interactive exec.
pub type ExecWriter = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// A process started by [`Runtime::exec_interactive`].
pub struct ExecProcess {
    /// The runtime's process (`runc exec`), whose exit status is the
    /// command's; killed when dropped.
    pub child: tokio::process::Child,
    /// The command's input, when asked for (dropping it closes it).
    pub stdin: Option<ExecWriter>,
    /// The command's output (the terminal's, with a terminal).
    pub stdout: Option<ExecReader>,
    /// The command's errors (none with a terminal).
    pub stderr: Option<ExecReader>,
    /// The terminal, to resize.
    pub terminal: Option<oci::Terminal>,
    /// Where the runtime wrote the command's PID ([`ExecProcess::kill`]).
    pub pid_file: Option<PathBuf>,
}

impl ExecProcess {
    /// Waits for the command: its exit code (128 + N when killed by
    /// signal N, as the runtime reports it).
    pub async fn wait(&mut self) -> Result<i32, RuntimeError> {
        let status = self.child.wait().await.map_err(|err| RuntimeError::Io {
            op: "wait for an exec".into(),
            err,
        });
        if let Some(p) = self.pid_file.take() {
            let _ = std::fs::remove_file(p);
        }
        let status = status?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1))
    }

    /// Kills the command (the caller went away) and the runtime's process.
    pub async fn kill(&mut self) {
        if let Some(p) = self.pid_file.take() {
            kill_by_pid_file(&p);
            let _ = std::fs::remove_file(p);
        }
        let _ = self.child.kill().await;
    }
}

impl std::fmt::Debug for ExecProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecProcess")
            .field("child", &self.child.id())
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("terminal", &self.terminal.is_some())
            .finish()
    }
}

/// SIGKILLs the process whose PID the runtime wrote to `pid_file` (an
/// exec's: killing the runtime's own process would leave it running in
/// the container).
fn kill_by_pid_file(pid_file: &std::path::Path) {
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// How much of an exec's output is kept (the kubelet reads 10 KiB).
pub const EXEC_OUTPUT_MAX: usize = 10 * 1024;

/// What an exec in a container did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Its exit code; `None` when it was killed at the timeout.
    pub exit_code: Option<i32>,
    /// stdout then stderr, cut at [`EXEC_OUTPUT_MAX`].
    pub output: Vec<u8>,
}

/// The OCI runtime CLI backend (runc by default; crun, youki by path).
#[derive(Debug, Clone)]
pub struct OciRuntime {
    /// Runtime binary (e.g. /usr/sbin/runc).
    pub runtime: PathBuf,
    /// Per-container state directories live here.
    pub state_dir: PathBuf,
    /// The `keelson` binary (runs `keelson shim`).
    pub shim_exe: PathBuf,
}
