//! Runs probe and lifecycle hook handlers ([`probe::Handler`]): `exec`
//! through the runtime (`runc exec`, bounded by the timeout), `httpGet`
//! (http, or https without certificate verification, as the kubelet),
//! `tcpSocket` and `grpc` (grpc.health.v1.Health/Check) from the agent
//! itself: the socket is made inside the pod's network namespace by the
//! one [`NetnsWorker`] thread, then connected and spoken over from tokio.
//! No process per probe, no thread per probe.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use keelson_host::netns::NetnsWorker;
use keelson_runtime::Runtime;
use tokio::net::TcpStream;

use super::probe::{Handler, Outcome, Scheme};

/// The User-Agent of HTTP probes (the kubelet sends `kube-probe/<minor>`).
pub const USER_AGENT: &str = "kube-probe/1.37";

/// Where a probe runs.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod's network namespace file; empty: the node's (hostNetwork).
    pub netns: PathBuf,
    /// The pod's IP (the default host of httpGet, tcpSocket, grpc).
    pub pod_ip: Option<IpAddr>,
    /// The runtime's container ID (for exec).
    pub container_id: String,
}

/// Runs handlers. One per agent.
pub struct Prober {
    runtime: Arc<dyn Runtime>,
    netns: NetnsWorker,
    tls: Arc<rustls::ClientConfig>,
}

impl Prober {
    /// A prober using `runtime` for exec; starts the namespace thread.
    pub fn new(runtime: Arc<dyn Runtime>) -> Result<Self, String> {
        let netns = NetnsWorker::spawn().map_err(|e| format!("start the probe thread: {e}"))?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("probe TLS config: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(keelson_host::serve::UnverifiedServer))
        .with_no_client_auth();
        Ok(Prober {
            runtime,
            netns,
            tls: Arc::new(tls),
        })
    }

    /// Runs `h` against `t`, bounded by `timeout`.
    pub async fn run(&self, t: &Target, h: &Handler, timeout: Duration) -> Outcome {
        match h {
            Handler::Exec { command } => {
                match self.runtime.exec(&t.container_id, command, timeout).await {
                    Ok(r) => match r.exit_code {
                        Some(0) => Outcome::Success,
                        Some(code) => {
                            let out = String::from_utf8_lossy(&r.output).trim().to_string();
                            Outcome::Failure(if out.is_empty() {
                                format!("command {command:?} exited with {code}")
                            } else {
                                out
                            })
                        }
                        None => Outcome::Failure(format!(
                            "command {command:?} timed out after {}s",
                            timeout.as_secs()
                        )),
                    },
                    Err(e) => Outcome::Error(e.to_string()),
                }
            }
            Handler::Sleep { duration } => {
                tokio::time::sleep((*duration).min(timeout)).await;
                Outcome::Success
            }
            Handler::Tcp { host, port } => {
                let addr = match self.addr(t, host.as_deref(), *port).await {
                    Ok(a) => a,
                    Err(e) => return Outcome::Error(e),
                };
                match tokio::time::timeout(timeout, self.connect(t, addr)).await {
                    Ok(Ok(_)) => Outcome::Success,
                    Ok(Err(ConnectError::Probe(e))) => {
                        Outcome::Failure(format!("dial tcp {addr}: {e}"))
                    }
                    Ok(Err(ConnectError::Setup(e))) => Outcome::Error(e),
                    Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
                }
            }
            Handler::Http {
                scheme,
                host,
                port,
                path,
                headers,
            } => {
                let addr = match self.addr(t, host.as_deref(), *port).await {
                    Ok(a) => a,
                    Err(e) => return Outcome::Error(e),
                };
                let url = format!(
                    "{}://{}{path}",
                    if *scheme == Scheme::Https {
                        "https"
                    } else {
                        "http"
                    },
                    host_port(host.as_deref(), addr)
                );
                let get = self.http_get(t, addr, *scheme, host.as_deref(), path, headers);
                match tokio::time::timeout(timeout, get).await {
                    Ok(Ok(code)) if (200..400).contains(&code) => Outcome::Success,
                    Ok(Ok(code)) => {
                        Outcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
                    }
                    Ok(Err(ConnectError::Probe(e))) => {
                        Outcome::Failure(format!("Get \"{url}\": {e}"))
                    }
                    Ok(Err(ConnectError::Setup(e))) => Outcome::Error(e),
                    Err(_) => Outcome::Failure(format!(
                        "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                    )),
                }
            }
            Handler::Grpc { port, service } => {
                let addr = match self.addr(t, None, *port).await {
                    Ok(a) => a,
                    Err(e) => return Outcome::Error(e),
                };
                match tokio::time::timeout(timeout, self.grpc_check(t, addr, service)).await {
                    Ok(Ok(1)) => Outcome::Success,
                    Ok(Ok(status)) => Outcome::Failure(format!(
                        "service unhealthy (responded with \"{}\")",
                        match status {
                            0 => "UNKNOWN",
                            2 => "NOT_SERVING",
                            3 => "SERVICE_UNKNOWN",
                            _ => "?",
                        }
                    )),
                    Ok(Err(ConnectError::Probe(e))) => Outcome::Failure(format!(
                        "failed to connect service {addr:?} within {}s: {e}",
                        timeout.as_secs()
                    )),
                    Ok(Err(ConnectError::Setup(e))) => Outcome::Error(e),
                    Err(_) => Outcome::Failure(format!(
                        "timeout: health rpc did not complete within {}s",
                        timeout.as_secs()
                    )),
                }
            }
        }
    }

    async fn addr(&self, t: &Target, host: Option<&str>, port: u16) -> Result<SocketAddr, String> {
        let ip = match host {
            None => t
                .pod_ip
                .ok_or_else(|| "the pod has no IP yet".to_string())?,
            Some(h) => match h.parse::<IpAddr>() {
                Ok(ip) => ip,
                // Names resolve on the node, as the kubelet's do.
                Err(_) => tokio::net::lookup_host((h, port))
                    .await
                    .map_err(|e| format!("resolve {h}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("resolve {h}: no address"))?
                    .ip(),
            },
        };
        Ok(SocketAddr::new(ip, port))
    }

    /// A TCP connection to `addr` from inside the pod's network namespace.
    async fn connect(&self, t: &Target, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        self.netns
            .connect(&t.netns, addr)
            .await
            .map_err(|e| match e {
                keelson_host::netns::ConnectError::Setup(e) => ConnectError::Setup(e),
                keelson_host::netns::ConnectError::Connect(e) => {
                    ConnectError::Probe(format!("connect: {e}"))
                }
            })
    }

    async fn http_get(
        &self,
        t: &Target,
        addr: SocketAddr,
        scheme: Scheme,
        host: Option<&str>,
        path: &str,
        headers: &[(String, String)],
    ) -> Result<u16, ConnectError> {
        let tcp = self.connect(t, addr).await?;
        let authority = host_port(host, addr);
        let mut req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::USER_AGENT, USER_AGENT)
            .header(hyper::header::ACCEPT, "*/*")
            .header(hyper::header::CONNECTION, "close");
        for (name, value) in headers {
            // The probe's own headers replace the defaults (Host included).
            if let Some(h) = req.headers_mut() {
                h.remove(name.as_str());
            }
            req = req.header(name.as_str(), value.as_str());
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| ConnectError::Setup(format!("build request: {e}")))?;
        let probe = |e: hyper::Error| ConnectError::Probe(e.to_string());
        let status = match scheme {
            Scheme::Http => {
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await
                        .map_err(probe)?;
                drive(conn, send.send_request(req))
                    .await
                    .map_err(probe)?
                    .status()
            }
            Scheme::Https => {
                let name = rustls::pki_types::ServerName::try_from(
                    host.map(str::to_string)
                        .unwrap_or_else(|| addr.ip().to_string()),
                )
                .map_err(|e| ConnectError::Setup(format!("TLS server name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ConnectError::Probe(format!("TLS handshake: {e}")))?;
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                        .await
                        .map_err(probe)?;
                drive(conn, send.send_request(req))
                    .await
                    .map_err(probe)?
                    .status()
            }
        };
        Ok(status.as_u16())
    }

    /// grpc.health.v1.Health/Check over HTTP/2 (h2c): the status enum
    /// (1 = SERVING).
    async fn grpc_check(
        &self,
        t: &Target,
        addr: SocketAddr,
        service: &str,
    ) -> Result<u64, ConnectError> {
        let tcp = self.connect(t, addr).await?;
        let probe = |e: hyper::Error| ConnectError::Probe(e.to_string());
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .map_err(probe)?;
        let req = hyper::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
            .header(hyper::header::CONTENT_TYPE, "application/grpc")
            .header(hyper::header::TE, "trailers")
            .header(hyper::header::USER_AGENT, USER_AGENT)
            .body(Full::new(Bytes::from(grpc_health_request(service))))
            .map_err(|e| ConnectError::Setup(format!("build request: {e}")))?;
        let (head_status, body) = drive(conn, async {
            let resp = send.send_request(req).await.map_err(probe)?;
            let head_status = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp.into_body().collect().await.map_err(probe)?;
            Ok::<_, ConnectError>((head_status, body))
        })
        .await?;
        let grpc_status = body
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or(head_status);
        if grpc_status.as_deref() != Some("0") {
            return Err(ConnectError::Probe(format!(
                "rpc error: grpc-status {}",
                grpc_status.as_deref().unwrap_or("missing")
            )));
        }
        grpc_health_status(&body.to_bytes())
            .ok_or_else(|| ConnectError::Probe("malformed HealthCheckResponse".into()))
    }
}

/// Runs `work` (a request and its answer) while driving its connection,
/// which ends with it: no task outlives the probe, and a server that keeps
/// the connection open holds nothing once the answer (or the timeout) is
/// in.
async fn drive<T>(conn: impl Future, work: impl Future<Output = T>) -> T {
    tokio::pin!(conn, work);
    tokio::select! {
        biased;
        r = &mut work => r,
        // The connection ended (the server closed it): the answer, if it
        // came, is already with the request.
        _ = &mut conn => work.await,
    }
}

/// Why a connection-based probe did not get an answer.
enum ConnectError {
    /// The probed thing failed (refused, reset, bad answer): a failure.
    Probe(String),
    /// The agent could not run the probe: an error, ignored.
    Setup(String),
}

fn host_port(host: Option<&str>, addr: SocketAddr) -> String {
    match host {
        Some(h) if h.contains(':') => format!("[{h}]:{}", addr.port()),
        Some(h) => format!("{h}:{}", addr.port()),
        None => addr.to_string(),
    }
}

/// A gRPC frame of HealthCheckRequest { service = 1 }.
fn grpc_health_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame
}

/// The status of a gRPC frame of HealthCheckResponse { status = 1 (enum) };
/// an absent field is 0 (UNKNOWN).
fn grpc_health_status(frame: &[u8]) -> Option<u64> {
    if frame.len() < 5 || frame[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes(frame[1..5].try_into().ok()?) as usize;
    let mut msg = frame.get(5..5 + len)?;
    let varint = |b: &mut &[u8]| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&x, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(x & 0x7f) << shift;
            if x & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    let mut status = 0;
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg)?,
            (_, 0) => {
                varint(&mut msg)?;
            }
            (_, 2) => {
                let n = varint(&mut msg)? as usize;
                msg = msg.get(n..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_health_frames() {
        assert_eq!(grpc_health_request(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(
            grpc_health_request("ab"),
            vec![0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
        );
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(grpc_health_status(&[0, 0, 0, 0, 3, 0x08]), None);
    }

    struct NoExec;

    #[async_trait::async_trait]
    impl Runtime for NoExec {
        async fn start(
            &self,
            _: &keelson_runtime::ContainerConfig,
        ) -> Result<keelson_runtime::ContainerState, keelson_runtime::RuntimeError> {
            Err(keelson_runtime::RuntimeError::Failed(
                "no starts here".into(),
            ))
        }
        async fn state(
            &self,
            _: &str,
        ) -> Result<Option<keelson_runtime::ContainerInfo>, keelson_runtime::RuntimeError> {
            Ok(None)
        }
        async fn stop(&self, _: &str, _: Duration) -> Result<(), keelson_runtime::RuntimeError> {
            Ok(())
        }
        async fn remove(&self, _: &str) -> Result<(), keelson_runtime::RuntimeError> {
            Ok(())
        }
        async fn list(
            &self,
        ) -> Result<Vec<keelson_runtime::ContainerInfo>, keelson_runtime::RuntimeError> {
            Ok(vec![])
        }
        async fn exec(
            &self,
            _: &str,
            args: &[String],
            _: Duration,
        ) -> Result<keelson_runtime::ExecResult, keelson_runtime::RuntimeError> {
            Ok(keelson_runtime::ExecResult {
                exit_code: Some(if args[0] == "true" { 0 } else { 3 }),
                output: b"out\n".to_vec(),
            })
        }
    }

    #[tokio::test]
    async fn http_tcp_and_exec_on_the_nodes_network() {
        // A one-shot HTTP server on loopback answering 503, then 200.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut seen = Vec::new();
            for code in ["503 Service Unavailable", "200 OK"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
                let resp = format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
            }
            seen
        });
        let p = Prober::new(Arc::new(NoExec)).unwrap();
        let t = Target {
            netns: PathBuf::new(),
            pod_ip: Some("127.0.0.1".parse().unwrap()),
            container_id: "c".into(),
        };
        let get = Handler::Http {
            scheme: Scheme::Http,
            host: None,
            port,
            path: "/healthz?x=1".into(),
            headers: vec![("X-Probe".into(), "yes".into())],
        };
        let s = Duration::from_secs(2);
        assert_eq!(
            p.run(&t, &get, s).await,
            Outcome::Failure("HTTP probe failed with statuscode: 503".into())
        );
        assert_eq!(p.run(&t, &get, s).await, Outcome::Success);
        let seen = server.await.unwrap();
        assert!(
            seen[0].starts_with("GET /healthz?x=1 HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(
            seen[0].contains("user-agent: kube-probe/1.37"),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains("x-probe: yes"), "{}", seen[0]);
        // Nothing listens there now: refused, a failure.
        let tcp = Handler::Tcp { host: None, port };
        match p.run(&t, &tcp, s).await {
            Outcome::Failure(m) => assert!(m.contains("refused"), "{m}"),
            o => panic!("{o:?}"),
        }
        let exec = |c: &str| Handler::Exec {
            command: vec![c.into()],
        };
        assert_eq!(p.run(&t, &exec("true"), s).await, Outcome::Success);
        assert_eq!(
            p.run(&t, &exec("false"), s).await,
            Outcome::Failure("out".into())
        );
    }

    fn loopback() -> Target {
        Target {
            netns: PathBuf::new(),
            pod_ip: Some("127.0.0.1".parse().unwrap()),
            container_id: "c".into(),
        }
    }

    #[tokio::test]
    async fn https_without_verification() {
        let ck = rcgen::generate_simple_self_signed(vec!["example.invalid".into()]).unwrap();
        let cfg = keelson_host::serve::server_config(
            &ck.cert.pem(),
            &ck.signing_key.serialize_pem(),
            keelson_host::serve::ClientAuth::None,
        )
        .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (s, _) = l.accept().await.unwrap();
            let mut s = tokio_rustls::TlsAcceptor::from(cfg)
                .accept(s)
                .await
                .unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 302 Found\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            s.shutdown().await.unwrap();
        });
        let p = Prober::new(Arc::new(NoExec)).unwrap();
        let get = Handler::Http {
            scheme: Scheme::Https,
            host: None,
            port,
            path: "/".into(),
            headers: vec![],
        };
        // A self-signed certificate for another name, and a redirect: passes.
        assert_eq!(
            p.run(&loopback(), &get, Duration::from_secs(2)).await,
            Outcome::Success
        );
    }

    #[tokio::test]
    async fn grpc_health_check_over_h2c() {
        use hyper::body::Frame;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            // SERVING for "", NOT_SERVING for anything else.
            loop {
                let (s, _) = l.accept().await.unwrap();
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let status = if body.len() == 5 { 1u8 } else { 2 };
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![
                                0, 0, 0, 0, 2, 0x08, status,
                            ]))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc),
                );
            }
        });
        let p = Prober::new(Arc::new(NoExec)).unwrap();
        let check = |service: &str| Handler::Grpc {
            port,
            service: service.into(),
        };
        let s = Duration::from_secs(2);
        assert_eq!(p.run(&loopback(), &check(""), s).await, Outcome::Success);
        assert_eq!(
            p.run(&loopback(), &check("db"), s).await,
            Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
    }
}
