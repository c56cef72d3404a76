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
//! SPDY (what kubectl before 1.30 speaks) is not served: such a request
//! gets 400 saying so.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use keelson_runtime::{ContainerState, ExecIo, ExecReader, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{App, text};
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
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
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
    if q.command.is_empty() {
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
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u16,
        #[serde(rename = "Height")]
        height: u16,
    }
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
async fn running_container(runtime: &dyn Runtime, uid: &str, container: &str) -> Option<String> {
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

/// `GET /exec/{ns}/{pod}/{container}` with a WebSocket upgrade.
pub(super) async fn exec(
    State(app): State<App>,
    UrlPath((ns, pod_name, container)): UrlPath<(String, String, String)>,
    RawQuery(raw): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let q = match parse_query(raw.as_deref().unwrap_or_default()) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
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
    let Some(id) = running_container(app.host.runtime.as_ref(), &uid, &container).await else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} of pod {ns}/{pod_name} is not running"),
        );
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "exec is served over WebSocket ({}), not SPDY: {e}",
                    PROTOCOLS.join(", ")
                ),
            );
        }
    };
    let runtime = app.host.runtime.clone();
    ws.protocols(PROTOCOLS.iter().copied())
        .on_upgrade(move |socket| {
            let version = Version::of(
                socket
                    .protocol()
                    .and_then(|p| p.to_str().ok())
                    .unwrap_or_default(),
            );
            session(socket, version, q, runtime, id)
        })
        .into_response()
}

/// How a session's input loop ended.
enum End {
    /// The command exited (or could not be waited for).
    Exited(Result<i32, String>),
    /// The client went away first.
    ClientGone,
}

/// Sends a reader's bytes as messages on `channel` until its end.
async fn pump(mut r: ExecReader, channel: u8, tx: tokio::sync::mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf[0] = channel;
                let msg = Message::Binary(buf[..=n].to_vec().into());
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn session(
    socket: WebSocket,
    version: Version,
    q: ExecQuery,
    runtime: Arc<dyn Runtime>,
    id: String,
) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // A normal closure: the client reads it as the end of every
        // channel (a close without a code is an error to client-go).
        let close = axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
    });

    // A terminal starts at the client's size, which it sends first.
    let mut pending = Vec::new();
    let mut size = None;
    if q.io.tty {
        let deadline = tokio::time::sleep(FIRST_SIZE_WAIT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                m = stream.next() => match m {
                    Some(Ok(Message::Binary(d))) => match parse_inbound(version, &d) {
                        Inbound::Resize { width, height } => {
                            size = Some((width, height));
                            break;
                        }
                        other => pending.push(other),
                    },
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        drop(tx);
                        let _ = writer.await;
                        return;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    let mut p = match runtime.exec_interactive(&id, &q.command, q.io).await {
        Ok(p) => p,
        Err(e) => {
            if let Some(m) = status_message(version, &q.command, &Err(e.to_string())) {
                let _ = tx
                    .send(Message::Binary(with_channel(STATUS, &m).into()))
                    .await;
            }
            drop(tx);
            let _ = writer.await;
            return;
        }
    };
    let terminal = p.terminal.take();
    if let (Some(t), Some((w, h))) = (&terminal, size) {
        let _ = t.resize(w, h);
    }
    let outputs: Vec<_> = [(p.stdout.take(), STDOUT), (p.stderr.take(), STDERR)]
        .into_iter()
        .filter_map(|(r, ch)| r.map(|r| tokio::spawn(pump(r, ch, tx.clone()))))
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
        let mut inbound = pending.into_iter();
        loop {
            let msg = match inbound.next() {
                Some(m) => m,
                None => tokio::select! {
                    end = &mut done => break End::Exited(end),
                    m = stream.next() => match m {
                        Some(Ok(Message::Binary(d))) => parse_inbound(version, &d),
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::ClientGone,
                        Some(Ok(_)) => Inbound::Ignored,
                    },
                },
            };
            match msg {
                Inbound::Stdin(d) => {
                    if let Some(w) = stdin.as_mut()
                        && (w.write_all(&d).await.is_err() || w.flush().await.is_err())
                    {
                        stdin = None;
                    }
                }
                Inbound::Resize { width, height } => {
                    if let Some(t) = &terminal {
                        let _ = t.resize(width, height);
                    }
                }
                Inbound::Close(STDIN) => {
                    if let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                Inbound::Close(_) | Inbound::Ignored => {}
            }
        }
    };
    drop(stdin);
    match end {
        End::Exited(end) => {
            if let Some(m) = status_message(version, &q.command, &end) {
                let _ = tx
                    .send(Message::Binary(with_channel(STATUS, &m).into()))
                    .await;
            }
        }
        End::ClientGone => p.kill().await,
    }
    drop(tx);
    let _ = writer.await;
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
                tty: true
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
