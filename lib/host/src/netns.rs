//! Entering a network namespace: the one way Keelson does it.
//!
//! [`in_netns`] runs a closure on a short-lived OS thread that entered the
//! namespace and exits afterwards, so the caller's thread (a tokio worker,
//! a test thread) never changes namespace. What the closure opens there
//! (netlink sockets, listening sockets, spawned processes) stays bound to the
//! namespace after the thread is gone.
//!
//! [`NetnsWorker`] is for work that is frequent and tiny (a probe's socket
//! every second in each of hundreds of pods): one long-lived thread that
//! enters the namespace, runs the job and returns home, instead of a
//! thread per job.
//!
//! [`in_netns_here`] is for single-threaded processes that cannot afford a
//! thread (the CNI plugin: a thread that entered a namespace costs ~4 ms to
//! exit, more than the rest of an ADD): it enters on the calling thread and
//! returns to the original namespace, aborting the process if it cannot.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Entering a namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("open network namespace {path}: {source}")]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `setns(2)` refused.
    #[error("enter network namespace {path}: {source}")]
    Enter {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The thread could not be started.
    #[error("start a thread for network namespace {path}: {source}")]
    Thread {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl NetnsError {
    /// The underlying I/O error.
    pub fn io(&self) -> &std::io::Error {
        match self {
            NetnsError::Open { source, .. }
            | NetnsError::Enter { source, .. }
            | NetnsError::Thread { source, .. } => source,
        }
    }
}

/// The file of a named namespace (`ip netns add NAME`): `/run/netns/NAME`.
pub fn named(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Opens a namespace file.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

fn enter(file: &File, path: &Path) -> Result<(), NetnsError> {
    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Runs `f` on a short-lived OS thread inside the network namespace at
/// `path` (a /run/netns file or /proc/PID/ns/net) and returns its result.
/// The calling thread's namespace never changes. A panic in `f` is
/// resumed on the caller.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let file = open(path)?;
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("keelson-netns".into())
            .spawn_scoped(s, || {
                enter(&file, path)?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Thread {
                path: path.to_path_buf(),
                source,
            })?;
        handle
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Runs `f` on the calling thread inside the namespace `ns` (opened from
/// `path`), then returns the thread to the namespace it was in. Only for
/// single-threaded processes (nothing else may run on this thread while it
/// is elsewhere); everything else uses [`in_netns`]. If the thread cannot
/// return, every later step would act in the wrong namespace: the process
/// aborts.
pub fn in_netns_here<T>(ns: &File, path: &Path, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
    let own = Path::new("/proc/thread-self/ns/net");
    let home = open(own)?;
    enter(ns, path)?;
    let out = f();
    if let Err(e) = enter(&home, own) {
        eprintln!("return to the original network namespace: {e}");
        std::process::abort();
    }
    Ok(out)
}

/// A job for a [`NetnsWorker`].
type Job = Box<dyn FnOnce(Result<(), NetnsError>) + Send>;

/// One long-lived OS thread that runs short jobs inside network
/// namespaces: for each job it enters the namespace, runs it, and returns
/// to the namespace it started in (so it never pins a pod's namespace).
/// Jobs must not block: what they open (a socket) stays bound to the
/// namespace and is used elsewhere. Cheaper than [`in_netns`] for frequent
/// work (two `setns` calls instead of a thread's start and exit).
#[derive(Debug, Clone)]
pub struct NetnsWorker {
    tx: std::sync::mpsc::Sender<(PathBuf, Job)>,
}

impl NetnsWorker {
    /// Starts the thread. It ends when every handle is dropped.
    pub fn spawn() -> Result<Self, NetnsError> {
        let own = Path::new("/proc/thread-self/ns/net");
        let home_path = PathBuf::from("/proc/self/ns/net");
        let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, Job)>();
        let thread = |source| NetnsError::Thread {
            path: own.to_path_buf(),
            source,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("keelson-netns-worker".into())
            .spawn(move || {
                let home = match open(Path::new("/proc/thread-self/ns/net")) {
                    Ok(f) => {
                        let _ = ready_tx.send(Ok(()));
                        f
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for (path, job) in rx {
                    let entered = open(&path).and_then(|f| enter(&f, &path));
                    let went = entered.is_ok();
                    job(entered);
                    if went && let Err(e) = enter(&home, &home_path) {
                        // Every later job would run in the wrong namespace.
                        eprintln!("netns worker: return to the original network namespace: {e}");
                        std::process::abort();
                    }
                }
            })
            .map_err(thread)?;
        ready_rx
            .recv()
            .map_err(|_| thread(std::io::Error::other("the worker thread ended at start")))??;
        Ok(NetnsWorker { tx })
    }

    /// Runs `job` on the worker thread inside the namespace at `path`; it
    /// gets the error instead when the namespace cannot be entered (or the
    /// worker is gone). Returns at once; the job runs soon after, in order.
    pub fn run(&self, path: &Path, job: impl FnOnce(Result<(), NetnsError>) + Send + 'static) {
        if let Err(std::sync::mpsc::SendError((path, job))) =
            self.tx.send((path.to_path_buf(), Box::new(job)))
        {
            job(Err(NetnsError::Thread {
                path,
                source: std::io::Error::other("the netns worker thread is gone"),
            }));
        }
    }
}

/// Why [`NetnsWorker::connect`] failed.
#[cfg(feature = "serve")]
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No socket could be made in the namespace (it is gone, the worker
    /// is gone, no descriptors left): the caller's trouble.
    #[error("{0}")]
    Setup(String),
    /// The connection itself failed (refused, unreachable, reset).
    #[error("connect: {0}")]
    Connect(std::io::Error),
}

#[cfg(feature = "serve")]
impl NetnsWorker {
    /// Connects to `addr` from inside the network namespace at `netns` (the
    /// process's own when empty): the socket is made on the worker thread,
    /// so it belongs to the namespace, and connected from tokio.
    pub async fn connect(
        &self,
        netns: &Path,
        addr: std::net::SocketAddr,
    ) -> Result<tokio::net::TcpStream, ConnectError> {
        use tokio::net::TcpSocket;
        let new = move || {
            if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
        };
        let socket = if netns.as_os_str().is_empty() {
            new().map_err(|e| ConnectError::Setup(format!("create a socket: {e}")))?
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.run(netns, move |entered| {
                let _ = tx.send(entered.map_err(|e| e.to_string()).and_then(|()| {
                    new().map_err(|e| format!("create a socket in {addr}'s namespace: {e}"))
                }));
            });
            rx.await
                .map_err(|_| ConnectError::Setup("the netns worker thread is gone".into()))?
                .map_err(ConnectError::Setup)?
        };
        let stream = socket.connect(addr).await.map_err(ConnectError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_an_error_naming_it() {
        let e = in_netns(Path::new("/run/netns/keelson-no-such-ns"), || ()).unwrap_err();
        assert!(matches!(e, NetnsError::Open { .. }), "{e}");
        assert!(e.to_string().contains("keelson-no-such-ns"), "{e}");
    }

    #[test]
    fn the_worker_reports_a_missing_namespace_and_runs_jobs_in_order() {
        let w = NetnsWorker::spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = tx.clone();
        w.run(Path::new("/run/netns/keelson-no-such-ns"), move |r| {
            t.send(r.map(|()| String::new()).map_err(|e| e.to_string()))
                .unwrap()
        });
        let e = rx.recv().unwrap().unwrap_err();
        assert!(e.contains("keelson-no-such-ns"), "{e}");
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        for _ in 0..3 {
            let t = tx.clone();
            w.run(Path::new("/proc/self/ns/net"), move |r| {
                r.unwrap();
                let seen = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
                t.send(Ok(seen.display().to_string())).unwrap();
            });
            assert_eq!(rx.recv().unwrap().unwrap(), own.display().to_string());
        }
    }

    #[test]
    fn the_own_namespace_can_be_entered_and_values_come_back() {
        // Entering one's own namespace needs CAP_SYS_ADMIN too.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let seen = in_netns(Path::new("/proc/self/ns/net"), || {
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        })
        .unwrap();
        assert_eq!(seen, own);
    }
}
