//! `/portForward/{namespace}/{pod}`: TCP connections to a pod's ports, as
//! the kubelet serves them (the API server passes `pods/portforward`
//! through to here).
//!
//! The client speaks SPDY/3.1 (`portforward.k8s.io`), over an HTTP upgrade
//! (kubectl before 1.31) or tunnelled in a WebSocket whose binary messages
//! carry the SPDY bytes (subprotocol `SPDY/3.1+portforward.k8s.io`,
//! kubectl 1.31 and later). For each connection it opens two streams with
//! headers `streamType` (`error`, `data`), `port` and `requestID`; the
//! agent connects to `localhost:port` inside the pod's network namespace
//! and copies bytes between that connection and the data stream. A
//! connection that fails is reported on the error stream.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use keelson_host::netns::NetnsWorker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::spdy::{self, Sender, Stream};
use super::{App, text};

/// The SPDY protocol of port forwarding.
const PROTOCOL: &str = "portforward.k8s.io";
/// The same, tunnelled in a WebSocket.
const TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// `GET|POST /portForward/{ns}/{pod}`.
pub(super) async fn port_forward(
    State(app): State<App>,
    UrlPath((ns, pod_name)): UrlPath<(String, String)>,
    req: Request,
) -> Response {
    let Some(pod) = super::exec::find_pod(&app, &ns, &pod_name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod_name} not found on this node"),
        );
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let Some(state) = app.host.load_state(&uid) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("pod {ns}/{pod_name} has no sandbox on this node yet"),
        );
    };
    let netns = if state.host_namespaces.network {
        PathBuf::new()
    } else {
        state.netns.clone()
    };
    let Some(worker) = app.netns.clone() else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "port forwarding is unavailable: the agent could not start its network namespace thread".into(),
        );
    };
    let target = Target {
        netns,
        worker,
        pod: format!("{ns}/{pod_name}"),
    };
    if super::upgrade::is_websocket(&req) {
        let ws = match WebSocketUpgrade::from_request(req, &()).await {
            Ok(ws) => ws,
            Err(e) => return e.into_response(),
        };
        return ws
            .protocols([TUNNEL])
            .on_upgrade(move |socket| async move {
                if socket.protocol().and_then(|p| p.to_str().ok()) != Some(TUNNEL) {
                    return;
                }
                let (ours, theirs) = tokio::io::duplex(64 * 1024);
                let bridge = tokio::spawn(tunnel(socket, theirs));
                serve(spdy::serve(ours), target).await;
                let _ = bridge.await;
            })
            .into_response();
    }
    match super::upgrade::spdy(req, &[PROTOCOL]) {
        Ok((resp, _, session)) => {
            tokio::spawn(async move {
                if let Some(s) = session.await {
                    serve(s, target).await;
                }
            });
            resp
        }
        Err(resp) => *resp,
    }
}

/// Where connections go.
#[derive(Clone)]
struct Target {
    /// The pod's network namespace (empty: the node's).
    netns: PathBuf,
    worker: NetnsWorker,
    /// namespace/name, for messages.
    pod: String,
}

/// Carries a WebSocket's binary messages to and from `io` as a byte stream.
async fn tunnel(socket: WebSocket, io: tokio::io::DuplexStream) {
    let (mut sink, mut stream) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let up = async move {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(d) if wr.write_all(&d).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(super::normal_close()).await;
    };
    // The session's end (its write side closed) ends the tunnel.
    let up = tokio::spawn(up);
    down.await;
    up.abort();
}

/// The request a stream belongs to: its `requestID`, or as old clients
/// number them (an error stream, then its data stream two IDs on).
fn request_of(s: &Stream) -> String {
    match s.header("requestid") {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => match s.header("streamtype") {
            Some("data") => s.id.saturating_sub(2).to_string(),
            _ => s.id.to_string(),
        },
    }
}

/// Serves one session: pairs each request's two streams and forwards.
async fn serve(mut session: spdy::Session, target: Target) {
    let mut pairs: HashMap<String, (Option<Stream>, Option<Stream>)> = HashMap::new();
    let mut forwards = Vec::new();
    while let Some(s) = session.incoming.recv().await {
        let port = s
            .header("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0);
        let kind = s.header("streamtype").map(str::to_string);
        let (Some(port), Some(kind @ ("data" | "error"))) = (port, kind.as_deref()) else {
            session.sender.reset(s.id).await;
            continue;
        };
        session.sender.reply(s.id).await;
        let request = request_of(&s);
        let pair = pairs.entry(request.clone()).or_default();
        match kind {
            "data" => pair.0 = Some(s),
            _ => pair.1 = Some(s),
        }
        if let (Some(_), Some(_)) = pair {
            let (Some(data), Some(error)) = pairs.remove(&request).unwrap_or_default() else {
                continue;
            };
            forwards.push(tokio::spawn(forward(
                data,
                error,
                port,
                session.sender.clone(),
                target.clone(),
            )));
        }
    }
    for f in forwards {
        f.abort();
    }
}

/// One forwarded connection.
async fn forward(mut data: Stream, error: Stream, port: u16, sender: Sender, target: Target) {
    let mut last = None;
    let mut conn = None;
    for ip in [
        std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        match target
            .worker
            .connect(&target.netns, SocketAddr::new(ip, port))
            .await
        {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(e) => last = Some(e.to_string()),
        }
    }
    let Some(conn) = conn else {
        let msg = format!(
            "error forwarding port {port} to pod {}: failed to connect to localhost:{port} inside the pod's network namespace: {}",
            target.pod,
            last.unwrap_or_default()
        );
        sender.data(error.id, msg.into_bytes()).await;
        sender.fin(error.id).await;
        sender.fin(data.id).await;
        return;
    };
    let (mut rd, mut wr) = conn.into_split();
    let data_id = data.id;
    let up = tokio::spawn(async move {
        while let Some(d) = data.data.recv().await {
            if wr.write_all(&d).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !sender.data(data_id, buf[..n].to_vec()).await {
                    break;
                }
            }
        }
    }
    up.abort();
    sender.fin(data_id).await;
    sender.fin(error.id).await;
}
