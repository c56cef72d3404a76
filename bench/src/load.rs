//! Traffic: the backend server the pods run (`keelson bench backend`) and
//! the load generator (`keelson bench client`), a process the bench starts
//! inside a node's network namespace (and, for eBPF, inside the node's
//! cgroup2 subtree, where the socket programs see it). It reads one
//! [`Job`] per line on stdin and answers one [`Outcome`] per line on
//! stdout.
//!
//! The protocol is a minimal HTTP/1.1 exchange of fixed size: the client
//! sends [`REQUEST`], the backend answers [`RESPONSE`] for every request it
//! reads, on the same connection until the client closes it. Clients close
//! with SO_LINGER 0 (a reset, no TIME_WAIT), so that hundreds of thousands
//! of short connections to a few backends do not run out of ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// What the client sends per request.
pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: keelson-bench\r\n\r\n";
/// What the backend answers per request.
pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The backend's port in the pod.
pub const BACKEND_PORT: u16 = 8080;

/// Per-operation timeout: a connect or exchange slower than this counts as
/// an error.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// CLOCK_MONOTONIC in ns: the same clock in every process of the machine,
/// so one process can time from an instant another one took.
pub fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// `keelson bench backend`: answers [`RESPONSE`] to every request on
/// every connection, for ever.
pub async fn backend(listen: SocketAddr) -> anyhow::Result<()> {
    // A backlog of 4096 (the namespace's somaxconn default), not the 1024
    // TcpListener::bind gives: a backend starved of CPU for a moment must
    // not drop SYNs (ListenOverflows), which the clients would see as 1 s
    // SYN retransmissions.
    let sock = if listen.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("create the listening socket")?;
    sock.set_reuseaddr(true).context("SO_REUSEADDR")?;
    sock.bind(listen)
        .with_context(|| format!("bind {listen}"))?;
    let l: TcpListener = sock
        .listen(4096)
        .with_context(|| format!("listen on {listen}"))?;
    tracing::info!(%listen, "keelson bench backend listening");
    loop {
        let (mut s, _) = l.accept().await.context("accept")?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                let n = match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut answers = 0;
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    answers += 1;
                }
                for _ in 0..answers {
                    if s.write_all(RESPONSE).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// One piece of work for the load generator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Job {
    /// Every target answers a request, retried until `timeout_ms`.
    Check {
        /// Addresses.
        targets: Vec<SocketAddr>,
        /// Overall patience.
        timeout_ms: u64,
    },
    /// Sequential connects to targets chosen at random, each timed.
    Connect {
        /// Addresses.
        targets: Vec<SocketAddr>,
        /// How long.
        duration_ms: u64,
    },
    /// Connect, request, response, close, by `concurrency` workers.
    Crr {
        /// Addresses.
        targets: Vec<SocketAddr>,
        /// Workers.
        concurrency: usize,
        /// How long.
        duration_ms: u64,
    },
    /// Requests over one keep-alive connection per worker.
    Rr {
        /// Addresses.
        targets: Vec<SocketAddr>,
        /// Workers.
        concurrency: usize,
        /// How long.
        duration_ms: u64,
    },
    /// Tries `target` every 2 ms until it answers; the latency is from the
    /// [`mono_ns`] instant `since_ns`.
    Probe {
        /// Address.
        target: SocketAddr,
        /// The start instant (CLOCK_MONOTONIC ns).
        since_ns: u64,
        /// Patience.
        timeout_ms: u64,
    },
}

/// What a job did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Connects (Connect), exchanges (Crr, Rr) or targets (Check) that worked.
    pub ok: u64,
    /// Those that failed.
    pub errors: u64,
    /// Wall time of the job, ns.
    pub elapsed_ns: u64,
    /// Connect: each connect's latency, ns.
    pub samples_ns: Vec<u64>,
    /// Probe: the latency, when it answered in time.
    pub latency_ns: Option<u64>,
    /// Check: targets that never answered.
    pub failing: Vec<SocketAddr>,
    /// The first error seen.
    pub first_error: Option<String>,
    /// SYN retransmissions in the client's network namespace during the
    /// job (TcpExt TCPSynRetrans): each is a connect that waited 1 s or more.
    #[serde(default)]
    pub syn_retransmits: u64,
}

/// TcpExt TCPSynRetrans of this process's network namespace.
fn syn_retransmits() -> u64 {
    let text = std::fs::read_to_string("/proc/self/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPSynRetrans")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn exchange(s: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; RESPONSE.len()];
    tokio::time::timeout(OP_TIMEOUT, async {
        s.write_all(REQUEST).await?;
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    if buf != RESPONSE {
        return Err(std::io::Error::other("unexpected response"));
    }
    Ok(())
}

/// Closes with a reset (SO_LINGER 0): no TIME_WAIT.
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

fn pick(targets: &[SocketAddr]) -> SocketAddr {
    targets[rand::rng().random_range(0..targets.len())]
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e.to_string());
        }
    }

    fn outcome(&self, start: Instant) -> Outcome {
        Outcome {
            ok: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            elapsed_ns: start.elapsed().as_nanos() as u64,
            first_error: self
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ..Outcome::default()
        }
    }
}

/// Runs one job, counting the SYN retransmissions it caused.
pub async fn run_job(job: Job) -> Outcome {
    let before = syn_retransmits();
    let mut o = run_job_inner(job).await;
    o.syn_retransmits = syn_retransmits().saturating_sub(before);
    o
}

async fn run_job_inner(job: Job) -> Outcome {
    let start = Instant::now();
    let tally = Arc::new(Tally::default());
    let keep_alive = matches!(job, Job::Rr { .. });
    match job {
        Job::Check {
            targets,
            timeout_ms,
        } => {
            let deadline = start + Duration::from_millis(timeout_ms);
            let mut failing = Vec::new();
            for t in targets {
                loop {
                    let r = async {
                        let mut s = connect(t).await?;
                        exchange(&mut s).await?;
                        reset(s);
                        Ok::<_, std::io::Error>(())
                    }
                    .await;
                    match r {
                        Ok(()) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) if Instant::now() >= deadline => {
                            tally.error(format!("{t}: {e}"));
                            failing.push(t);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
            Outcome {
                failing,
                ..tally.outcome(start)
            }
        }
        Job::Connect {
            targets,
            duration_ms,
        } => {
            let deadline = start + Duration::from_millis(duration_ms);
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let t = pick(&targets);
                let t0 = Instant::now();
                match connect(t).await {
                    Ok(s) => {
                        samples.push(t0.elapsed().as_nanos() as u64);
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        reset(s);
                    }
                    Err(e) => tally.error(format!("connect {t}: {e}")),
                }
            }
            Outcome {
                samples_ns: samples,
                ..tally.outcome(start)
            }
        }
        Job::Crr {
            targets,
            concurrency,
            duration_ms,
        }
        | Job::Rr {
            targets,
            concurrency,
            duration_ms,
        } if concurrency > 0 => {
            let deadline = start + Duration::from_millis(duration_ms);
            let targets = Arc::new(targets);
            let workers: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (targets, tally) = (targets.clone(), tally.clone());
                    tokio::spawn(async move {
                        let mut conn: Option<TcpStream> = None;
                        while Instant::now() < deadline {
                            let t = pick(&targets);
                            let mut s = match conn.take() {
                                Some(s) => s,
                                None => match connect(t).await {
                                    Ok(s) => s,
                                    Err(e) => {
                                        tally.error(format!("connect {t}: {e}"));
                                        continue;
                                    }
                                },
                            };
                            match exchange(&mut s).await {
                                Ok(()) => {
                                    tally.ok.fetch_add(1, Ordering::Relaxed);
                                    if keep_alive {
                                        conn = Some(s);
                                    } else {
                                        reset(s);
                                    }
                                }
                                Err(e) => tally.error(format!("request to {t}: {e}")),
                            }
                        }
                        if let Some(s) = conn {
                            reset(s);
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.await;
            }
            tally.outcome(start)
        }
        Job::Crr { .. } | Job::Rr { .. } => Outcome {
            first_error: Some("concurrency 0".into()),
            errors: 1,
            ..Outcome::default()
        },
        Job::Probe {
            target,
            since_ns,
            timeout_ms,
        } => {
            let deadline = start + Duration::from_millis(timeout_ms);
            let mut latency = None;
            while Instant::now() < deadline {
                let r = async {
                    let mut s = tokio::time::timeout(
                        Duration::from_millis(100),
                        TcpStream::connect(target),
                    )
                    .await
                    .map_err(|_| std::io::Error::other("connect timed out"))??;
                    exchange(&mut s).await?;
                    reset(s);
                    Ok::<_, std::io::Error>(())
                }
                .await;
                match r {
                    Ok(()) => {
                        latency = Some(mono_ns().saturating_sub(since_ns));
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        tally.error(format!("{target}: {e}"));
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            Outcome {
                latency_ns: latency,
                ..tally.outcome(start)
            }
        }
    }
}

/// `keelson bench client`: joins `cgroup` (its cgroup.procs), enters the
/// network namespace `netns`, then runs jobs from stdin until it closes.
pub fn client_main(netns: &Path, cgroup: Option<&PathBuf>) -> anyhow::Result<()> {
    if let Some(cg) = cgroup {
        let procs = cg.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .with_context(|| format!("join cgroup {}", cg.display()))?;
    }
    let ns = keelson_host::netns::open(netns)?;
    // Single-threaded until here: the runtime's threads are created inside
    // the namespace and stay there.
    keelson_host::netns::in_netns_here(&ns, netns, || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("start tokio runtime")?
            .block_on(serve_jobs())
    })?
}

async fn serve_jobs() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await.context("read a job")? {
        let job: Job = serde_json::from_str(&line).with_context(|| format!("parse job {line}"))?;
        let outcome = run_job(job).await;
        let mut text = serde_json::to_string(&outcome).context("encode outcome")?;
        text.push('\n');
        out.write_all(text.as_bytes())
            .await
            .context("write outcome")?;
        out.flush().await.context("flush outcome")?;
    }
    Ok(())
}
