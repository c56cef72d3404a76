//! The one TLS serving loop, for the API server and the node API: rustls
//! (ring provider only), ALPN h2 and http/1.1, hyper-util's automatic
//! HTTP/1.1-or-HTTP/2 connections with upgrades, and an optional stop
//! signal that ends the loop and every open connection.
//!
//! [`server_config`] builds the rustls configuration from PEM (with
//! optional client certificates verified against a CA); [`serve`] accepts
//! until stopped and hands each connection's [`Peer`] to a function that
//! makes its hyper service.
//!
//! What a slow or greedy client may hold is bounded by [`Limits`], whose
//! defaults are kube-apiserver's (its `SecureServingInfo.Serve`): a TLS
//! handshake timeout, an HTTP/1 header read timeout, an idle timeout,
//! HTTP/2 pings that drop dead peers, HTTP/2 streams per connection, TCP
//! keep-alive, and open connections per client address ([`PerKeyLimit`],
//! also what the API server counts watches per user with).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a client gets to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one connection, and one client address, may hold of a server.
/// [`Limits::default`] is kube-apiserver's serving (Go's `http.Server` as
/// `SecureServingInfo.Serve` sets it up) where it has a value, and says
/// why where it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a client gets to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long an HTTP/1 client gets to send a request's headers
    /// (kube-apiserver's `ReadHeaderTimeout`: 32 s). hyper starts this
    /// clock again when a kept-alive connection waits for its next
    /// request, so it also closes HTTP/1 connections idle that long.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 with a GOAWAY); kube-apiserver's `IdleTimeout`, 90 s, which
    /// matches Go clients' keep-alive.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection is pinged; a peer that does not
    /// answer within [`Limits::http2_keep_alive_timeout`] is dropped.
    /// kube-apiserver relies on TCP keep-alive alone; client-go pings its
    /// side every 30 s and gives up after 15 s, the same here.
    pub http2_keep_alive_interval: Duration,
    /// See [`Limits::http2_keep_alive_interval`].
    pub http2_keep_alive_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once:
    /// kube-apiserver's `--http2-max-streams-per-connection` default, 100
    /// (Go's client default; lowered from 250 after the HTTP/2 rapid
    /// reset attacks, CVE-2023-44487).
    pub http2_max_concurrent_streams: u32,
    /// TCP keep-alive idle time and probe interval, so that peers gone
    /// without a FIN (an HTTP/1 watch has nothing else to notice it) are
    /// dropped: kube-apiserver's `tcpKeepAliveListener`, 3 minutes.
    pub tcp_keepalive: Duration,
    /// Connections one client IP address may have open at once; more are
    /// closed as soon as they are accepted (0: no limit). kube-apiserver
    /// has no such limit. 4096: an address is one host, or every client
    /// behind a NAT or a load balancer that does not keep source
    /// addresses (HAProxy in TCP mode, as kubeadm's HA guide sets up);
    /// kube-rs clients speak HTTP/1 only, one connection per open watch,
    /// so a hundred agents behind one address hold a thousand or more.
    /// A single address cannot take more than a small share of the
    /// server's descriptors (`LimitNOFILE=1048576` in its unit).
    pub max_connections_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_read_timeout: Duration::from_secs(32),
            idle_timeout: Duration::from_secs(90),
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(15),
            http2_max_concurrent_streams: 100,
            tcp_keepalive: Duration::from_secs(180),
            max_connections_per_address: 4096,
        }
    }
}

/// At most `max` things held at once per key (client address, user
/// name); each [`Slot`] counts until it is dropped. `max` 0: no limit
/// (nothing is counted).
#[derive(Debug)]
pub struct PerKeyLimit<K: Eq + Hash> {
    max: usize,
    open: Counts<K>,
}

/// How many places each key holds.
type Counts<K> = Arc<Mutex<HashMap<K, usize>>>;

/// One held place of a [`PerKeyLimit`], given back on drop.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash> {
    held: Option<(K, Counts<K>)>,
}

impl<K: Eq + Hash + Clone> PerKeyLimit<K> {
    /// A limit of `max` per key; 0: none.
    pub fn new(max: usize) -> PerKeyLimit<K> {
        PerKeyLimit {
            max,
            open: Arc::default(),
        }
    }

    /// The limit (0: none).
    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for `key`, or None when it already holds `max`.
    pub fn try_acquire(&self, key: &K) -> Option<Slot<K>> {
        if self.max == 0 {
            return Some(Slot { held: None });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            held: Some((key.clone(), self.open.clone())),
        })
    }

    /// How many places `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(key).copied().unwrap_or(0)
    }

    /// How many keys hold a place now.
    pub fn keys(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Some((key, open)) = self.held.take() {
            let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
    /// The certificate chain the client presented (verified against the
    /// CA of [`ClientAuth::Optional`]); empty when it presented none.
    pub certificates: Vec<CertificateDer<'static>>,
}

/// Whether clients may authenticate with certificates.
#[derive(Debug, Clone, Copy)]
pub enum ClientAuth<'a> {
    /// No client certificates are asked for.
    None,
    /// Clients may present a certificate signed by this CA (PEM); clients
    /// without one are let through (they authenticate otherwise).
    Optional {
        /// The CA bundle, PEM.
        ca_pem: &'a str,
    },
}

/// A TLS configuration that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS server configuration: {what}: {reason}")]
pub struct TlsConfigError {
    /// What was being read or built ("serving certificate", "CA", ...).
    pub what: &'static str,
    /// Why.
    pub reason: String,
}

/// A rustls server configuration (ring provider, safe default protocol
/// versions, ALPN h2 then http/1.1) serving `cert_pem` with `key_pem`.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client: ClientAuth<'_>,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| config_error("parse serving certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| config_error("parse serving key", &e))?;
    let cfg = builder(client)?
        .with_single_cert(certs, key)
        .map_err(|e| config_error("serving certificate", &e))?;
    Ok(with_alpn(cfg))
}

/// [`server_config`] serving whatever certificate `resolver` gives at each
/// handshake (a certificate that is renewed while the server runs:
/// [`crate::certfile::FileCert`]).
pub fn server_config_resolving(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    client: ClientAuth<'_>,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    Ok(with_alpn(builder(client)?.with_cert_resolver(resolver)))
}

fn config_error(what: &'static str, e: &dyn std::fmt::Display) -> TlsConfigError {
    TlsConfigError {
        what,
        reason: e.to_string(),
    }
}

fn with_alpn(mut cfg: rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The configuration up to its certificate: protocols and client auth.
fn builder(
    client: ClientAuth<'_>,
) -> Result<
    rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>,
    TlsConfigError,
> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("protocol versions", &e))?;
    Ok(match client {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional { ca_pem } => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                let ca = ca.map_err(|e| config_error("parse CA certificate", &e))?;
                roots.add(ca).map_err(|e| config_error("add CA", &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| config_error("client verifier", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    })
}

/// Resolves when `stop` changes (or its sender is gone); never without one.
async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            let _ = rx.changed().await;
        }
        None => std::future::pending().await,
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Called with the address of each connection closed at accept because
/// its address already had [`Limits::max_connections_per_address`] open.
pub type OnRefused = Arc<dyn Fn(SocketAddr) + Send + Sync>;

/// How often, at most, refused connections are logged (each log line
/// says how many were refused since the last).
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts TLS connections on `listener` until `stop` changes (with
/// `None`, until the task is dropped), each served by the service
/// `new_service` makes for its [`Peer`], within `limits`. `name` goes
/// into the logs. A connection whose address already has its share open
/// is closed at once (and `on_refused` told); one whose handshake fails
/// or takes too long is dropped; when `stop` changes, open connections
/// are closed too.
pub async fn serve<F, S, B>(
    name: &'static str,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    on_refused: Option<OnRefused>,
    new_service: F,
    mut stop: Option<watch::Receiver<bool>>,
) where
    F: Fn(Peer) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let new_service = Arc::new(new_service);
    let per_address = PerKeyLimit::<IpAddr>::new(limits.max_connections_per_address);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout)
        .max_concurrent_streams(limits.http2_max_concurrent_streams);
    let mut refused_since_log = 0u64;
    let mut last_refused_log: Option<Instant> = None;
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(server = name, error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let Some(slot) = per_address.try_acquire(&remote.ip().to_canonical()) else {
            drop(tcp);
            if let Some(f) = &on_refused {
                f(remote);
            }
            refused_since_log += 1;
            if last_refused_log.is_none_or(|t| t.elapsed() >= REFUSED_LOG_INTERVAL) {
                tracing::warn!(
                    server = name,
                    %remote,
                    limit = limits.max_connections_per_address,
                    refused = refused_since_log,
                    "connections refused: the client address has as many open as it may"
                );
                refused_since_log = 0;
                last_refused_log = Some(Instant::now());
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        keepalive(&tcp, limits.tcp_keepalive);
        let tcp = Counted { tcp, _slot: slot };
        let acceptor = acceptor.clone();
        let new_service = new_service.clone();
        let builder = builder.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(server = name, %remote, error = %e, "TLS handshake");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(server = name, %remote, "TLS handshake timed out");
                        return;
                    }
                };
            let peer = Peer {
                remote,
                certificates: stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(<[_]>::to_vec)
                    .unwrap_or_default(),
            };
            let activity = Arc::new(Activity::new());
            let svc = Tracked {
                inner: new_service(peer),
                activity: activity.clone(),
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            loop {
                let check = tokio::time::sleep(activity.until_idle(limits.idle_timeout));
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(server = name, %remote, error = %e, "connection");
                        }
                        return;
                    }
                    _ = stopped(&mut stop) => return,
                    _ = check => {
                        if activity.until_idle(limits.idle_timeout).is_zero() {
                            tracing::debug!(server = name, %remote, "idle connection closed");
                            conn.as_mut().graceful_shutdown();
                            // HTTP/1 closes at once; HTTP/2 says GOAWAY
                            // and closes when the peer has read it.
                            let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// TCP keep-alive on `tcp`: probes after `idle` without traffic, then
/// every `idle` (Go's `SetKeepAlivePeriod`).
fn keepalive(tcp: &TcpStream, idle: Duration) {
    use nix::sys::socket::{setsockopt, sockopt};
    let secs = u32::try_from(idle.as_secs().max(1)).unwrap_or(u32::MAX);
    let _ = setsockopt(tcp, sockopt::KeepAlive, &true);
    let _ = setsockopt(tcp, sockopt::TcpKeepIdle, &secs);
    let _ = setsockopt(tcp, sockopt::TcpKeepInterval, &secs);
}

/// An accepted socket that holds its address's [`Slot`] for as long as
/// it is open, upgraded (exec, attach, port-forward) or not.
struct Counted {
    tcp: TcpStream,
    _slot: Slot<IpAddr>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Requests in flight on one connection (from the request until its
/// response body is sent or dropped), and since when there are none.
#[derive(Debug)]
struct Activity {
    state: Mutex<(usize, Instant)>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new((0, Instant::now())),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 += 1;
        Busy(self.clone())
    }

    /// How long until the connection has been idle for `limit`: `limit`
    /// while a request is in flight, zero once it has been idle that long.
    fn until_idle(&self, limit: Duration) -> Duration {
        let (busy, since) = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        if busy > 0 {
            limit
        } else {
            limit.saturating_sub(since.elapsed())
        }
    }
}

/// One request in flight, until dropped.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 -= 1;
        if s.0 == 0 {
            s.1 = Instant::now();
        }
    }
}

/// A service that marks its connection busy from each request until the
/// response's body is done.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

type TrackedFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody<B>>, E>> + Send + 'static>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<B, S::Error>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = self.activity.begin();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| TrackedBody {
                inner: Box::pin(inner),
                _busy: busy,
            }))
        })
    }
}

/// A response body that keeps its connection busy until dropped.
struct TrackedBody<B> {
    inner: Pin<Box<B>>,
    _busy: Busy,
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.get_mut().inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A TLS client's verifier that accepts any server certificate (signatures
/// are still checked): probes check liveness, not identity (the kubelet's
/// `InsecureSkipVerify`); the API server reaches node APIs whose serving
/// certificates their agents signed themselves, and pods over
/// `pods/https:NAME:PORT/proxy`.
#[derive(Debug)]
pub struct UnverifiedServer;

impl rustls::client::danger::ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// kubeadm's CA pin: `sha256:` and the hex SHA-256 of the first
/// certificate's SubjectPublicKeyInfo in a PEM bundle (what
/// `--discovery-token-ca-cert-hash` / `--ca-cert-hash` name).
pub fn ca_cert_hash(ca_pem: &str) -> Result<String, String> {
    use sha2::Digest;
    let der = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()
        .ok_or("no certificate in the PEM")?
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    Ok(format!(
        "sha256:{:x}",
        sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw)
    ))
}

/// The user and groups a client certificate names (its subject's CN and
/// O values), as Kubernetes reads them.
pub fn cert_subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some((name, groups))
}

#[cfg(test)]
mod tests {
    //! The serving loop against real loopback connections, with limits
    //! small enough to see them act within a second.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Server {
        addr: SocketAddr,
        refused: Arc<AtomicUsize>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn shutdown(self) {
            let _ = self.stop.send(true);
            let _ = self.task.await;
        }
    }

    /// Serves `GET /` at once and `GET /slow` after 800 ms.
    async fn start(limits: Limits) -> Server {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let tls = server_config(
            &key.cert.pem(),
            &key.signing_key.serialize_pem(),
            ClientAuth::None,
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(AtomicUsize::new(0));
        let counter = refused.clone();
        let on_refused: OnRefused = Arc::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let (stop, rx) = watch::channel(false);
        let new_service = |_peer: Peer| {
            hyper::service::service_fn(|req: Request<Incoming>| async move {
                if req.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                }
                Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
            })
        };
        let task = tokio::spawn(serve(
            "test",
            listener,
            tls,
            limits,
            Some(on_refused),
            new_service,
            Some(rx),
        ));
        Server {
            addr,
            refused,
            stop,
            task,
        }
    }

    type Tls = tokio_rustls::client::TlsStream<TcpStream>;

    /// A TLS connection to `addr` offering `alpn`.
    async fn connect(addr: SocketAddr, alpn: &[u8]) -> std::io::Result<Tls> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnverifiedServer))
        .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
    }

    /// Reads until the server closes; how long that took, or None when it
    /// kept the connection open for `within`.
    async fn closed_within(tls: &mut Tls, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(within, async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return started.elapsed(),
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
    }

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_mid_headers_is_dropped_after_the_header_timeout() {
        let server = start(limits()).await;
        let mut tls = connect(server.addr, b"http/1.1").await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: slo")
            .await
            .unwrap();
        let took = closed_within(&mut tls, Duration::from_secs(5))
            .await
            .expect("the server kept a half-sent request open");
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");

        // A whole request is served; the kept-alive connection is then
        // closed once it has waited that long for the next one.
        let mut tls = connect(server.addr, b"http/1.1").await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tls.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            closed_within(&mut tls, Duration::from_secs(5))
                .await
                .is_some(),
            "an idle HTTP/1 connection stayed open"
        );
        server.shutdown().await;
    }

    #[tokio::test]
    async fn connections_over_the_per_address_limit_are_closed_at_once() {
        let server = start(Limits {
            max_connections_per_address: 2,
            ..Limits::default()
        })
        .await;
        let first = connect(server.addr, b"http/1.1").await.unwrap();
        let _second = connect(server.addr, b"http/1.1").await.unwrap();
        // The third is accepted by the kernel and closed by the server
        // before its handshake.
        assert!(connect(server.addr, b"http/1.1").await.is_err());
        assert_eq!(server.refused.load(Ordering::SeqCst), 1);
        // Closing one gives its place back.
        drop(first);
        let started = Instant::now();
        let mut third = loop {
            match connect(server.addr, b"http/1.1").await {
                Ok(c) => break c,
                Err(e) if started.elapsed() > Duration::from_secs(3) => {
                    panic!("no place came back after a connection closed: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = third.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        server.shutdown().await;
    }

    #[tokio::test]
    async fn http2_connections_are_closed_when_idle_but_not_while_busy() {
        let server = start(limits()).await;
        let tls = connect(server.addr, b"h2").await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        // A request that takes longer than the idle timeout is answered.
        let req = Request::get("https://localhost/slow")
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        drop(resp);
        // Then, with nothing in flight, the server says GOAWAY and closes.
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("an idle HTTP/2 connection stayed open")
            .unwrap()
            .ok();
        assert!(started.elapsed() >= Duration::from_millis(200));
        server.shutdown().await;
    }

    #[test]
    fn per_key_limits_count_until_slots_drop() {
        let l = PerKeyLimit::<&str>::new(2);
        let a1 = l.try_acquire(&"a").unwrap();
        let a2 = l.try_acquire(&"a").unwrap();
        assert!(l.try_acquire(&"a").is_none());
        let b = l.try_acquire(&"b").unwrap();
        assert_eq!((l.held(&"a"), l.held(&"b"), l.keys()), (2, 1, 2));
        drop(a1);
        assert_eq!(l.held(&"a"), 1);
        let _a3 = l.try_acquire(&"a").unwrap();
        drop(a2);
        drop(b);
        // Keys with nothing held are forgotten.
        assert_eq!((l.held(&"b"), l.keys()), (0, 1));
        let unlimited = PerKeyLimit::<&str>::new(0);
        let held: Vec<_> = (0..10_000)
            .map(|_| unlimited.try_acquire(&"a").unwrap())
            .collect();
        assert_eq!((held.len(), unlimited.keys()), (10_000, 0));
    }
}
