//! The node HTTP API (TLS on 10250): healthz, pods, containerLogs, exec
//! ([`exec`]), portForward ([`portforward`]).
//!
//! Every request but `/healthz` must come with a client certificate the
//! cluster CA signed (the API server's, an admin's): others get 401. What
//! the certificate's user may do the API server decides
//! (SubjectAccessReview on `nodes/proxy`, `nodes/stats`, …; [`authz`]):
//! others get 403.
//!
//! `GET /containerLogs/{namespace}/{pod}/{container}` with the kubelet's
//! query parameters `follow`, `previous`, `tailLines`, `timestamps`,
//! `limitBytes` returns the container's output as plain text (CRI prefix
//! stripped); with `follow=true` the body streams until the container exits.

pub mod attach;
pub mod authz;
pub mod exec;
pub mod logs;
pub mod portforward;
pub mod spdy;
pub mod upgrade;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Pod;
use keelson_host::serve::{ClientAuth, Peer};
use keelson_runtime::ContainerState;
use kube::runtime::reflector::Store;
use tower::ServiceExt;

use crate::pods::host::{self, Host};

/// Errors starting the node API.
#[derive(Debug, thiserror::Error)]
pub enum NodeApiError {
    /// Certificate handling failed.
    #[error("node API certificate in {dir}: {reason}")]
    Pki {
        /// The pki dir.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// Binding the listener failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What the node API serves.
pub struct NodeApiConfig {
    /// --node-api-listen.
    pub listen: SocketAddr,
    /// The CA (PEM) whose client certificates authenticate requests; with
    /// none, only `/healthz` is served.
    pub client_ca_pem: Option<String>,
    /// Where the serving certificate lives (generated if absent).
    pub pki_dir: PathBuf,
    /// A serving certificate and key from the cluster CA (files renewed
    /// while the API serves, read at each handshake); None: the
    /// self-signed pair in `pki_dir`.
    pub serving: Option<(PathBuf, PathBuf)>,
    /// Node name (a SAN of the certificate).
    pub node_name: String,
    /// Node IP (a SAN of the certificate).
    pub node_ip: IpAddr,
    /// Pods of this node.
    pub pods: Store<Pod>,
    /// The node side (log dir, runtime state).
    pub host: Arc<Host>,
    /// The agent's health (`/healthz`).
    pub health: crate::health::NodeHealth,
    /// Who may do what (None: every authenticated client may do anything).
    pub authorizer: Option<Arc<authz::Authorizer>>,
}

#[derive(Clone)]
struct App {
    pods: Store<Pod>,
    host: Arc<Host>,
    health: crate::health::NodeHealth,
    /// Connects inside pods' network namespaces (port forwarding).
    netns: Option<keelson_host::netns::NetnsWorker>,
}

/// Loads `pki_dir/node.{crt,key}`, generating a self-signed pair if absent.
pub fn load_or_create_cert(
    pki_dir: &Path,
    node_name: &str,
    node_ip: IpAddr,
) -> Result<(String, String), NodeApiError> {
    let err = |reason: String| NodeApiError::Pki {
        dir: pki_dir.to_path_buf(),
        reason,
    };
    let (crt, key) = (pki_dir.join("node.crt"), pki_dir.join("node.key"));
    if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
        return Ok((c, k));
    }
    std::fs::create_dir_all(pki_dir).map_err(|e| err(format!("create: {e}")))?;
    let sans = vec![
        node_name.to_string(),
        node_ip.to_string(),
        "localhost".into(),
        "127.0.0.1".into(),
    ];
    let ck = rcgen::generate_simple_self_signed(sans).map_err(|e| err(format!("generate: {e}")))?;
    let (c, k) = (ck.cert.pem(), ck.signing_key.serialize_pem());
    keelson_host::fs::write_atomic_mode(&key, k.as_bytes(), 0o600)
        .and_then(|()| keelson_host::fs::write_atomic(&crt, c.as_bytes()))
        .map_err(|e| err(e.to_string()))?;
    Ok((c, k))
}

/// The router (no TLS; for tests and for the TLS loop).
fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/pods", get(pods))
        .route("/pods/", get(pods))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route(
            "/exec/{ns}/{pod}/{container}",
            get(exec::exec).post(exec::exec),
        )
        .route(
            "/attach/{ns}/{pod}/{container}",
            get(attach::attach).post(attach::attach),
        )
        .route(
            "/portForward/{ns}/{pod}",
            get(portforward::port_forward).post(portforward::port_forward),
        )
        .with_state(app)
}

/// Binds and serves the node API over TLS in a background task.
pub async fn serve(cfg: NodeApiConfig) -> Result<tokio::task::JoinHandle<()>, NodeApiError> {
    let client_auth = match cfg.client_ca_pem.as_deref() {
        Some(ca_pem) => ClientAuth::Optional { ca_pem },
        None => ClientAuth::None,
    };
    let tls = match &cfg.serving {
        Some((cert, key)) => keelson_host::serve::server_config_resolving(
            Arc::new(keelson_host::certfile::FileCert::new(
                cert.clone(),
                key.clone(),
            )),
            client_auth,
        ),
        None => {
            let (cert, key) = load_or_create_cert(&cfg.pki_dir, &cfg.node_name, cfg.node_ip)?;
            keelson_host::serve::server_config(&cert, &key, client_auth)
        }
    }
    .map_err(|e| NodeApiError::Pki {
        dir: cfg.pki_dir.clone(),
        reason: e.to_string(),
    })?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| NodeApiError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let netns = keelson_host::netns::NetnsWorker::spawn()
        .inspect_err(|e| tracing::warn!("node API: no port forwarding: {e}"))
        .ok();
    let app = router(App {
        pods: cfg.pods,
        host: cfg.host,
        health: cfg.health,
        netns,
    });
    let authorizer = cfg.authorizer;
    let new_service = move |peer: Peer| {
        let app = app.clone();
        let authorizer = authorizer.clone();
        // A certificate the cluster CA signed (checked in the handshake).
        let authenticated = !peer.certificates.is_empty();
        let user = peer.certificates.first().and_then(|c| authz::user_of(c));
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let authorizer = authorizer.clone();
            let user = user.clone();
            async move {
                let path = req.uri().path().to_string();
                if unauthenticated_path(&path) {
                    return app.oneshot(req.map(Body::new)).await;
                }
                if !authenticated {
                    return Ok(text(StatusCode::UNAUTHORIZED, "Unauthorized".into()));
                }
                if let Some(a) = &authorizer {
                    let (name, groups) = user.unwrap_or_default();
                    let (verb, sub) = authz::attributes(req.method().as_str(), &path);
                    let what =
                        format!("user={name}, verb={verb}, resource=nodes, subresource={sub}");
                    match a.check(&name, &groups, verb, sub).await {
                        authz::Answer::Allowed => {}
                        authz::Answer::Denied => {
                            return Ok(text(StatusCode::FORBIDDEN, format!("Forbidden ({what})")));
                        }
                        authz::Answer::Error(e) => {
                            tracing::warn!(error = %e, "node API authorization");
                            return Ok(text(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                format!("Authorization error ({what})"),
                            ));
                        }
                    }
                }
                app.oneshot(req.map(Body::new)).await
            }
        })
    };
    Ok(tokio::spawn(keelson_host::serve::serve(
        "node API",
        listener,
        tls,
        keelson_host::serve::Limits::default(),
        None,
        new_service,
        None,
    )))
}

/// A WebSocket close with the normal code: clients read it as the end of
/// every stream (client-go takes a close without a code for an error).
pub(crate) fn normal_close() -> axum::extract::ws::Message {
    axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

/// What the node API serves without a client certificate: its health
/// (the kubelet's healthz port), nothing about pods.
fn unauthenticated_path(path: &str) -> bool {
    path == "/healthz"
}

#[derive(serde::Deserialize, Default)]
struct HealthzQuery {
    verbose: Option<String>,
}

/// 200 `ok`, or 500 naming each failed part (see `health::healthz`).
async fn healthz(State(app): State<App>, Query(q): Query<HealthzQuery>) -> Response {
    let verbose = truthy(&q.verbose);
    let (healthy, body) = crate::health::healthz(&app.health.snapshot(), verbose);
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    text(code, body)
}

async fn pods(State(app): State<App>) -> Response {
    let items: Vec<Pod> = app.pods.state().iter().map(|p| (**p).clone()).collect();
    let list = serde_json::json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items,
    });
    axum::Json(list).into_response()
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    follow: Option<String>,
    previous: Option<String>,
    tail_lines: Option<i64>,
    timestamps: Option<String>,
    limit_bytes: Option<usize>,
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | ""))
}

fn text(code: StatusCode, msg: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

/// The log files of one container, by attempt.
fn attempts(dir: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The log protocols over WebSocket: the bytes as binary messages, or as
/// base64 text messages.
const LOG_PROTOCOLS: [&str; 2] = ["binary.k8s.io", "base64.binary.k8s.io"];

/// `GET /containerLogs/...`: the log as the response body, or over a
/// WebSocket when asked (`binary.k8s.io`, `base64.binary.k8s.io`).
async fn container_logs(
    State(app): State<App>,
    path: UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
    req: axum::extract::Request,
) -> Response {
    let websocket = upgrade::is_websocket(&req);
    let resp = log_response(app, path, q).await;
    if !websocket || resp.status() != StatusCode::OK {
        return resp;
    }
    use axum::extract::FromRequest;
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use futures::{SinkExt, StreamExt};
    let ws = match WebSocketUpgrade::from_request(req, &()).await {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    ws.protocols(LOG_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            let base64 = socket.protocol().and_then(|p| p.to_str().ok()) == Some(LOG_PROTOCOLS[1]);
            let (mut sink, mut incoming) = socket.split();
            // The client sends nothing; its close ends the stream early.
            let mut body = resp.into_body().into_data_stream();
            loop {
                let chunk = tokio::select! {
                    c = body.next() => c,
                    m = incoming.next() => match m {
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    },
                };
                let Some(Ok(chunk)) = chunk else { break };
                let msg = if base64 {
                    use base64::Engine;
                    Message::Text(
                        base64::engine::general_purpose::STANDARD
                            .encode(&chunk)
                            .into(),
                    )
                } else {
                    Message::Binary(chunk)
                };
                if sink.send(msg).await.is_err() {
                    return;
                }
            }
            let _ = sink.send(normal_close()).await;
        })
        .into_response()
}

async fn log_response(
    app: App,
    UrlPath((ns, pod_name, container)): UrlPath<(String, String, String)>,
    q: LogQuery,
) -> Response {
    let pod = app.pods.state().into_iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(&ns)
            && p.metadata.name.as_deref() == Some(&pod_name)
    });
    let Some(pod) = pod else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod_name} not found on this node"),
        );
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let known = pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == container)
    });
    if !known {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not valid for pod {pod_name}"),
        );
    }
    let dir = app.host.log_dir(&ns, &pod_name, &uid).join(&container);
    let all = attempts(&dir);
    let attempt = if truthy(&q.previous) {
        match all.len() {
            n if n >= 2 => all[n - 2],
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
                    ),
                );
            }
        }
    } else {
        match all.last() {
            Some(a) => *a,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("container \"{container}\" in pod \"{pod_name}\" is waiting to start"),
                );
            }
        }
    };
    let file = dir.join(format!("{attempt}.log"));
    let rotated = dir.join(format!("{attempt}.log.1"));
    let mut data = tokio::fs::read(&rotated).await.unwrap_or_default();
    data.extend(tokio::fs::read(&file).await.unwrap_or_default());
    let (lines, consumed) = logs::parse(&data);
    let tail_n = q.tail_lines.filter(|n| *n >= 0).map(|n| n as usize);
    let timestamps = truthy(&q.timestamps);
    let mut first = logs::render(&logs::tail(lines, tail_n), timestamps);
    if let Some(l) = q.limit_bytes {
        first.truncate(l);
    }
    let follow = truthy(&q.follow) && !truthy(&q.previous);
    let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !follow {
        return (StatusCode::OK, headers, first).into_response();
    }
    // Follow: poll the file from where the first read stopped until the
    // container has exited and everything it wrote has been sent.
    let offset = (data.len() - consumed) as u64; // pending bytes of the current file
    let file_len = tokio::fs::metadata(&file)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let state = Follow {
        file,
        pos: file_len.saturating_sub(offset),
        pending: Vec::new(),
        id: host::container_id(&uid, &container, attempt),
        host: app.host.clone(),
        timestamps,
        first: Some(first),
        finished: false,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        if let Some(f) = s.first.take() {
            return Some((Ok::<_, std::io::Error>(bytes_of(f)), s));
        }
        loop {
            if s.finished {
                return None;
            }
            let exited = match s.host.runtime.state(&s.id).await {
                Ok(Some(i)) => matches!(i.state, ContainerState::Exited { .. }),
                _ => true,
            };
            let chunk = s.read_more().await;
            if !chunk.is_empty() {
                return Some((Ok(bytes_of(chunk)), s));
            }
            if exited {
                s.finished = true;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (StatusCode::OK, headers, Body::from_stream(stream)).into_response()
}

fn bytes_of(v: Vec<u8>) -> axum::body::Bytes {
    axum::body::Bytes::from(v)
}

struct Follow {
    file: PathBuf,
    pos: u64,
    pending: Vec<u8>,
    id: String,
    host: Arc<Host>,
    timestamps: bool,
    first: Option<Vec<u8>>,
    finished: bool,
}

impl Follow {
    async fn read_more(&mut self) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let Ok(mut f) = tokio::fs::File::open(&self.file).await else {
            return Vec::new();
        };
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        if len < self.pos {
            // Rotated: start over on the new file.
            self.pos = 0;
            self.pending.clear();
        }
        if len == self.pos || f.seek(std::io::SeekFrom::Start(self.pos)).await.is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).await.is_err() {
            return Vec::new();
        }
        self.pos += buf.len() as u64;
        self.pending.extend(buf);
        let (lines, consumed) = logs::parse(&self.pending);
        self.pending.drain(..consumed);
        logs::render(&lines, self.timestamps)
    }
}
