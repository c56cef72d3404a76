//! `/exec/{namespace}/{pod}/{container}`: a command in a running container,
//! its standard streams carried over a WebSocket in the Kubernetes channel
//! protocols, as the kubelet serves them (the API server passes
//! `pods/exec` through to here).
//!
//! Query: `command` (repeated, the argv), `stdin`, `stdout`, `stderr`,
//! `tty` (`true`/`1`). Each binary message starts with its channel: 0 stdin
//! (client to node), 1 stdout, 2 stderr, 3 the final status, 4 terminal
//! size (`{"Width":80,"Height":24}`). `v5.channel.k8s.io` adds `[255, c]`:
//! the client closed channel c (stdin: the command reads EOF). From
//! `v4.channel.k8s.io` on, channel 3 carries a `metav1.Status` (reason
//! `NonZeroExitCode` with an `ExitCode` cause); before that, a text error.
//!
//! Over SPDY/3.1 (kubectl before 1.30; `X-Stream-Protocol-Version`
//! v4.channel.k8s.io down to channel.k8s.io) the client opens one stream
//! per channel (`streamType` error, stdin, stdout, stderr, resize) and the
//! same bytes flow on them, resize as a sequence of JSON sizes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use keelson_runtime::{ContainerState, ExecIo, ExecReader, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{App, spdy, text};
use crate::pods::host::{attempt_of, labels};

/// The channel protocols served, newest first.
pub const PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

const STDIN: u8 = 0;
pub(super) const STDOUT: u8 = 1;
pub(super) const STDERR: u8 = 2;
pub(super) const STATUS: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` closes a channel.
const CLOSE: u8 = 255;

/// How long a terminal session waits for the client's first size before
/// starting the command (the size then applies from the first byte).
const FIRST_SIZE_WAIT: Duration = Duration::from_millis(300);

/// What to run and which streams the client wants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecQuery {
    /// The argv.
    pub command: Vec<String>,
    /// Streams and terminal.
    pub io: ExecIo,
}

/// Parses the query of an exec request (pure).
pub fn parse_query(raw: &str) -> Result<ExecQuery, String> {
    parse_streams(raw, true)
}

/// The streams (and, for exec, the command) a query asks for (pure).
pub fn parse_streams(raw: &str, command: bool) -> Result<ExecQuery, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw).map_err(|e| format!("invalid query: {e}"))?;
    let mut q = ExecQuery::default();
    let on = |v: &str| matches!(v, "true" | "1" | "True" | "TRUE");
    for (k, v) in pairs {
        match k.as_str() {
            "command" => q.command.push(v),
            "input" | "stdin" => q.io.stdin = on(&v),
            "output" | "stdout" => q.io.stdout = on(&v),
            "error" | "stderr" => q.io.stderr = on(&v),
            "tty" => q.io.tty = on(&v),
            _ => {}
        }
    }
    if command && q.command.is_empty() {
        return Err("you must specify at least 1 command".into());
    }
    if !(q.io.stdin || q.io.stdout || q.io.stderr) {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    if q.io.tty && q.io.stderr {
        // kubectl asks for a terminal without stderr; the kubelet folds
        // stderr into the terminal all the same.
        q.io.stderr = false;
    }
    Ok(q)
}

/// The protocol generations that differ on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io`, `v2.channel.k8s.io`: text errors, no resize.
    V1,
    /// `v3.channel.k8s.io`: resize.
    V3,
    /// `v4.channel.k8s.io`: a Status on channel 3.
    V4,
    /// `v5.channel.k8s.io`: close signals.
    V5,
}

impl Version {
    /// The generation of a negotiated protocol (an unknown or empty one
    /// is the oldest).
    pub fn of(protocol: &str) -> Version {
        match protocol {
            "v5.channel.k8s.io" => Version::V5,
            "v4.channel.k8s.io" => Version::V4,
            "v3.channel.k8s.io" => Version::V3,
            _ => Version::V1,
        }
    }
}

/// A message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Bytes for the command's input.
    Stdin(Vec<u8>),
    /// The terminal's new size.
    Resize {
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// The client closed one of its channels (stdin: EOF).
    Close(u8),
    /// Nothing to act on (an empty message, an unknown channel, a bad size).
    Ignored,
}

/// Reads a client's binary message (pure).
pub fn parse_inbound(version: Version, data: &[u8]) -> Inbound {
    match data {
        [CLOSE, ch] if version >= Version::V5 => Inbound::Close(*ch),
        [STDIN, rest @ ..] if !rest.is_empty() => Inbound::Stdin(rest.to_vec()),
        [RESIZE, rest @ ..] if version >= Version::V3 => match serde_json::from_slice::<Size>(rest)
        {
            Ok(s) => Inbound::Resize {
                width: s.width,
                height: s.height,
            },
            Err(_) => Inbound::Ignored,
        },
        _ => Inbound::Ignored,
    }
}

/// How the command ended, for channel 3: `None` when nothing is to be said
/// (success before v4).
pub fn status_message(
    version: Version,
    command: &[String],
    end: &Result<i32, String>,
) -> Option<Vec<u8>> {
    let message = match end {
        Ok(0) if version >= Version::V4 => {
            return Some(br#"{"metadata":{},"status":"Success"}"#.to_vec());
        }
        Ok(0) => return None,
        Ok(code) => format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        Err(e) => e.clone(),
    };
    if version < Version::V4 {
        return Some(message.into_bytes());
    }
    let status = match end {
        Ok(code) => serde_json::json!({
            "metadata": {}, "status": "Failure", "message": message,
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(_) => serde_json::json!({
            "metadata": {}, "status": "Failure", "message": message,
            "reason": "InternalError", "code": 500,
        }),
    };
    Some(serde_json::to_vec(&status).unwrap_or_default())
}

/// The runtime ID of the running attempt of `container` in pod `uid`.
pub(super) async fn running_container(
    runtime: &dyn Runtime,
    uid: &str,
    container: &str,
) -> Option<String> {
    runtime
        .list()
        .await
        .ok()?
        .into_iter()
        .filter(|c| {
            c.labels.get(labels::POD_UID).map(String::as_str) == Some(uid)
                && c.labels.get(labels::CONTAINER).map(String::as_str) == Some(container)
                && matches!(c.state, ContainerState::Running { .. })
        })
        .max_by_key(|c| attempt_of(c).0)
        .map(|c| c.id)
}

/// A pod of this node by namespace and name.
pub(super) fn find_pod(app: &App, ns: &str, name: &str) -> Option<std::sync::Arc<Pod>> {
    app.pods.state().into_iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
    })
}

/// `GET /exec/{ns}/{pod}/{container}` with a WebSocket upgrade, or `POST`
/// with a SPDY/3.1 one.
pub(super) async fn exec(
    State(app): State<App>,
    UrlPath((ns, pod_name, container)): UrlPath<(String, String, String)>,
    req: Request,
) -> Response {
    let q = match parse_query(req.uri().query().unwrap_or_default()) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Some(pod) = find_pod(&app, &ns, &pod_name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod_name} not found on this node"),
        );
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let Some(id) = running_container(app.host.runtime.as_ref(), &uid, &container).await else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} of pod {ns}/{pod_name} is not running"),
        );
    };
    let runtime = app.host.runtime.clone();
    if !super::upgrade::is_websocket(&req) {
        return match super::upgrade::spdy(req, SPDY_PROTOCOLS) {
            Ok((resp, protocol, session)) => {
                let version = Version::of(&protocol);
                tokio::spawn(async move {
                    let session = session.await;
                    if let Some(session) = session {
                        let io = q.io;
                        spdy_session(session, version, io, move |ev, out| {
                            run(ev, out, version, q, runtime, id)
                        })
                        .await;
                    }
                });
                resp
            }
            Err(resp) => *resp,
        };
    }
    let ws = match WebSocketUpgrade::from_request(req, &()).await {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    ws.protocols(PROTOCOLS.iter().copied())
        .on_upgrade(move |socket| {
            let version = Version::of(
                socket
                    .protocol()
                    .and_then(|p| p.to_str().ok())
                    .unwrap_or_default(),
            );
            ws_session(socket, version, move |ev, out| {
                run(ev, out, version, q, runtime, id)
            })
        })
        .into_response()
}

/// The protocols of exec over SPDY (`X-Stream-Protocol-Version`), newest
/// first.
pub(super) const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// What the client side of a session did.
#[derive(Debug)]
pub(super) enum Event {
    Stdin(Vec<u8>),
    StdinEof,
    Resize(u16, u16),
    Gone,
}

/// What a session sends: channel (STDOUT, STDERR, STATUS) and bytes.
pub(super) type Output = (u8, Vec<u8>);

/// How a session's input loop ended.
enum End {
    /// The command exited (or could not be waited for).
    Exited(Result<i32, String>),
    /// The client went away first.
    ClientGone,
}

/// Sends a reader's bytes on `channel` until its end.
async fn pump(mut r: ExecReader, channel: u8, tx: mpsc::Sender<Output>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((channel, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs the command for a client whatever its transport: `events` from
/// it, `out` to it (closed when the session is over).
async fn run(
    mut events: mpsc::Receiver<Event>,
    out: mpsc::Sender<Output>,
    version: Version,
    q: ExecQuery,
    runtime: Arc<dyn Runtime>,
    id: String,
) {
    // A terminal starts at the client's size, which it sends first.
    let mut pending = Vec::new();
    let mut size = None;
    if q.io.tty {
        let deadline = tokio::time::sleep(FIRST_SIZE_WAIT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                e = events.recv() => match e {
                    Some(Event::Resize(w, h)) => {
                        size = Some((w, h));
                        break;
                    }
                    Some(Event::Gone) | None => return,
                    Some(other) => pending.push(other),
                },
            }
        }
    }
    let io = ExecIo { size, ..q.io };
    let mut p = match runtime.exec_interactive(&id, &q.command, io).await {
        Ok(p) => p,
        Err(e) => {
            if let Some(m) = status_message(version, &q.command, &Err(e.to_string())) {
                let _ = out.send((STATUS, m)).await;
            }
            return;
        }
    };
    let terminal = p.terminal.take();
    let outputs: Vec<_> = [(p.stdout.take(), STDOUT), (p.stderr.take(), STDERR)]
        .into_iter()
        .filter_map(|(r, ch)| r.map(|r| tokio::spawn(pump(r, ch, out.clone()))))
        .collect();
    let mut stdin = p.stdin.take();
    let end = {
        let done = async {
            for o in outputs {
                let _ = o.await;
            }
            p.wait().await.map_err(|e| e.to_string())
        };
        tokio::pin!(done);
        let mut pending = pending.into_iter();
        loop {
            let event = match pending.next() {
                Some(e) => e,
                None => tokio::select! {
                    end = &mut done => break End::Exited(end),
                    e = events.recv() => e.unwrap_or(Event::Gone),
                },
            };
            match event {
                Event::Stdin(d) => {
                    if let Some(w) = stdin.as_mut()
                        && (w.write_all(&d).await.is_err() || w.flush().await.is_err())
                    {
                        stdin = None;
                    }
                }
                Event::Resize(w, h) => {
                    if let Some(t) = &terminal {
                        let _ = t.resize(w, h);
                    }
                }
                Event::StdinEof => {
                    if let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                Event::Gone => break End::ClientGone,
            }
        }
    };
    drop(stdin);
    match end {
        End::Exited(end) => {
            if let Some(m) = status_message(version, &q.command, &end) {
                let _ = out.send((STATUS, m)).await;
            }
        }
        End::ClientGone => p.kill().await,
    }
}

/// A session over a WebSocket: channel-prefixed binary messages.
pub(super) async fn ws_session<R, F>(socket: WebSocket, version: Version, runner: R)
where
    R: FnOnce(mpsc::Receiver<Event>, mpsc::Sender<Output>) -> F,
    F: std::future::Future<Output = ()>,
{
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let writer = tokio::spawn(async move {
        while let Some((ch, data)) = out_rx.recv().await {
            if sink
                .send(Message::Binary(with_channel(ch, &data).into()))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = sink.send(super::normal_close()).await;
        let _ = sink.close().await;
    });
    let (ev_tx, ev_rx) = mpsc::channel(16);
    let reader = tokio::spawn(async move {
        loop {
            let event = match stream.next().await {
                Some(Ok(Message::Binary(d))) => match parse_inbound(version, &d) {
                    Inbound::Stdin(d) => Event::Stdin(d),
                    Inbound::Resize { width, height } => Event::Resize(width, height),
                    Inbound::Close(STDIN) => Event::StdinEof,
                    Inbound::Close(_) | Inbound::Ignored => continue,
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => Event::Gone,
                Some(Ok(_)) => continue,
            };
            let gone = matches!(event, Event::Gone);
            if ev_tx.send(event).await.is_err() || gone {
                return;
            }
        }
    });
    runner(ev_rx, out_tx).await;
    reader.abort();
    let _ = writer.await;
}

/// A session over SPDY: one stream per channel, opened by the client
/// (`streamType`: error, stdin, stdout, stderr, resize).
pub(super) async fn spdy_session<R, F>(
    mut session: spdy::Session,
    version: Version,
    io: ExecIo,
    runner: R,
) where
    R: FnOnce(mpsc::Receiver<Event>, mpsc::Sender<Output>) -> F,
    F: std::future::Future<Output = ()>,
{
    let expected = 1
        + usize::from(io.stdin)
        + usize::from(io.stdout)
        + usize::from(io.stderr)
        + usize::from(io.tty && version >= Version::V3);
    let mut ids: BTreeMap<u8, u32> = BTreeMap::new();
    let mut stdin = None;
    let mut resize = None;
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    while ids.len() + usize::from(stdin.is_some()) + usize::from(resize.is_some()) < expected {
        let s = tokio::select! {
            _ = &mut deadline => return,
            s = session.incoming.recv() => match s {
                Some(s) => s,
                None => return,
            },
        };
        session.sender.reply(s.id).await;
        match s.header("streamtype") {
            Some("error") => {
                ids.insert(STATUS, s.id);
            }
            Some("stdout") => {
                ids.insert(STDOUT, s.id);
            }
            Some("stderr") => {
                ids.insert(STDERR, s.id);
            }
            Some("stdin") => stdin = Some(s),
            Some("resize") => resize = Some(s),
            _ => session.sender.reset(s.id).await,
        }
    }
    let (ev_tx, ev_rx) = mpsc::channel(16);
    let mut inputs = Vec::new();
    if let Some(mut s) = stdin {
        let tx = ev_tx.clone();
        inputs.push(tokio::spawn(async move {
            while let Some(d) = s.data.recv().await {
                if tx.send(Event::Stdin(d)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Event::StdinEof).await;
        }));
    }
    if let Some(mut s) = resize {
        let tx = ev_tx.clone();
        inputs.push(tokio::spawn(async move {
            // A sequence of JSON objects.
            let mut buf = Vec::new();
            while let Some(d) = s.data.recv().await {
                buf.extend_from_slice(&d);
                let mut sizes = serde_json::Deserializer::from_slice(&buf).into_iter::<Size>();
                let mut got = Vec::new();
                let mut used = 0;
                while let Some(Ok(size)) = sizes.next() {
                    used = sizes.byte_offset();
                    got.push(Event::Resize(size.width, size.height));
                }
                buf.drain(..used);
                for e in got {
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    // The connection's end is the client's going.
    let mut incoming = std::mem::replace(&mut session.incoming, mpsc::channel(1).1);
    inputs.push(tokio::spawn(async move {
        while incoming.recv().await.is_some() {}
        let _ = ev_tx.send(Event::Gone).await;
    }));
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let sender = session.sender.clone();
    let writer = tokio::spawn(async move {
        while let Some((ch, data)) = out_rx.recv().await {
            if let Some(id) = ids.get(&ch)
                && !sender.data(*id, data).await
            {
                return;
            }
        }
        for id in ids.values() {
            sender.fin(*id).await;
        }
        sender.goaway().await;
    });
    runner(ev_rx, out_tx).await;
    let _ = writer.await;
    for t in inputs {
        t.abort();
    }
}

/// A terminal size as clients send it.
#[derive(serde::Deserialize)]
struct Size {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

fn with_channel(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = parse_query(
            "command=sh&command=-c&command=echo+a%26b&stdin=true&stdout=1&tty=true&stderr=true",
        )
        .unwrap();
        assert_eq!(q.command, ["sh", "-c", "echo a&b"]);
        assert_eq!(
            q.io,
            ExecIo {
                stdin: true,
                stdout: true,
                stderr: false,
                tty: true,
                size: None,
            }
        );
        let q = parse_query("command=date&output=1&error=1").unwrap();
        assert!(q.io.stdout && q.io.stderr && !q.io.stdin && !q.io.tty);
        assert_eq!(
            parse_query("stdout=true").unwrap_err(),
            "you must specify at least 1 command"
        );
        assert!(
            parse_query("command=ls")
                .unwrap_err()
                .contains("at least 1 of")
        );
    }

    #[test]
    fn inbound_messages_by_version() {
        assert_eq!(
            parse_inbound(Version::V5, &[0, b'h', b'i']),
            Inbound::Stdin(b"hi".to_vec())
        );
        assert_eq!(parse_inbound(Version::V5, &[0]), Inbound::Ignored);
        assert_eq!(parse_inbound(Version::V5, &[255, 0]), Inbound::Close(0));
        // Before v5 255 is just an unknown channel.
        assert_eq!(parse_inbound(Version::V4, &[255, 0]), Inbound::Ignored);
        let resize = br#"{"Width":120,"Height":40}"#;
        let mut m = vec![4];
        m.extend_from_slice(resize);
        assert_eq!(
            parse_inbound(Version::V4, &m),
            Inbound::Resize {
                width: 120,
                height: 40
            }
        );
        assert_eq!(parse_inbound(Version::V1, &m), Inbound::Ignored);
        assert_eq!(parse_inbound(Version::V5, &[4, b'{']), Inbound::Ignored);
        assert_eq!(Version::of("v5.channel.k8s.io"), Version::V5);
        assert_eq!(Version::of(""), Version::V1);
    }

    #[test]
    fn final_status_by_version() {
        let cmd = ["sh".to_string(), "-c".into(), "exit 3".into()];
        let ok = status_message(Version::V5, &cmd, &Ok(0)).unwrap();
        assert_eq!(ok, br#"{"metadata":{},"status":"Success"}"#);
        assert_eq!(status_message(Version::V1, &cmd, &Ok(0)), None);
        let failed: serde_json::Value =
            serde_json::from_slice(&status_message(Version::V4, &cmd, &Ok(3)).unwrap()).unwrap();
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        assert_eq!(
            failed["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        let text = status_message(Version::V1, &cmd, &Ok(3)).unwrap();
        assert!(String::from_utf8(text).unwrap().ends_with("exit code 3"));
        let err: serde_json::Value = serde_json::from_slice(
            &status_message(Version::V5, &cmd, &Err("no such container".into())).unwrap(),
        )
        .unwrap();
        assert_eq!(err["status"], "Failure");
        assert_eq!(err["message"], "no such container");
    }
}
