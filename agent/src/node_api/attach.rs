//! `/attach/{namespace}/{pod}/{container}`: a running container's output
//! from now on, and its standard input when the container was started with
//! `stdin: true`, over the same transports and channels as exec (WebSocket
//! channel protocols, or SPDY streams).
//!
//! The output is the container's log as the shim writes it (stdout and
//! stderr lines kept apart); input goes to the FIFO the container reads.
//! The session ends (Success) when the container exits. Containers with
//! `tty: true` get no terminal here (the agent starts none): their output
//! comes as plain lines.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequest, Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keelson_runtime::{ContainerState, ExecIo, Runtime};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::exec::{self, Event, Output, STATUS, STDERR, STDOUT, Version};
use super::{App, logs, text};

/// `GET` (WebSocket) or `POST` (SPDY) `/attach/{ns}/{pod}/{container}`.
pub(super) async fn attach(
    State(app): State<App>,
    UrlPath((ns, pod_name, container)): UrlPath<(String, String, String)>,
    req: Request,
) -> Response {
    let mut q = match exec::parse_streams(req.uri().query().unwrap_or_default(), false) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Some(pod) = exec::find_pod(&app, &ns, &pod_name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod_name} not found on this node"),
        );
    };
    let spec = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == container)
        .cloned();
    let Some(spec) = spec else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not valid for pod {pod_name}"),
        );
    };
    // Input only where the container has one; never a terminal.
    q.io.stdin &= spec.stdin == Some(true);
    if q.io.tty {
        q.io.tty = false;
        q.io.stderr = true;
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let runtime = app.host.runtime.clone();
    let Some(id) = exec::running_container(runtime.as_ref(), &uid, &container).await else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} of pod {ns}/{pod_name} is not running"),
        );
    };
    let attempt = id
        .rsplit('-')
        .next()
        .and_then(|a| a.parse::<u32>().ok())
        .unwrap_or(0);
    let log = app
        .host
        .log_dir(&ns, &pod_name, &uid)
        .join(&container)
        .join(format!("{attempt}.log"));
    let io = q.io;
    if !super::upgrade::is_websocket(&req) {
        return match super::upgrade::spdy(req, exec::SPDY_PROTOCOLS) {
            Ok((resp, protocol, session)) => {
                let version = Version::of(&protocol);
                tokio::spawn(async move {
                    if let Some(session) = session.await {
                        exec::spdy_session(session, version, io, move |ev, out| {
                            follow(ev, out, version, io, runtime, id, log)
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
    ws.protocols(exec::PROTOCOLS.iter().copied())
        .on_upgrade(move |socket| {
            let version = Version::of(
                socket
                    .protocol()
                    .and_then(|p| p.to_str().ok())
                    .unwrap_or_default(),
            );
            exec::ws_session(socket, version, move |ev, out| {
                follow(ev, out, version, io, runtime, id, log)
            })
        })
        .into_response()
}

/// Sends the container's new log lines and passes input on, until the
/// container exits (then the final status) or the client goes.
async fn follow(
    mut events: mpsc::Receiver<Event>,
    out: mpsc::Sender<Output>,
    version: Version,
    io: ExecIo,
    runtime: Arc<dyn Runtime>,
    id: String,
    log: PathBuf,
) {
    let mut stdin = match io.stdin {
        true => runtime.attach_stdin(&id).await.ok().flatten(),
        false => None,
    };
    let mut pos = tokio::fs::metadata(&log).await.map_or(0, |m| m.len());
    let mut pending: Vec<u8> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(Event::Stdin(d)) => {
                    if let Some(w) = stdin.as_mut()
                        && (w.write_all(&d).await.is_err() || w.flush().await.is_err())
                    {
                        stdin = None;
                    }
                }
                Some(Event::StdinEof) => stdin = None,
                Some(Event::Resize(..)) => {}
                Some(Event::Gone) | None => return,
            },
            _ = tick.tick() => {
                let exited = !matches!(
                    runtime.state(&id).await,
                    Ok(Some(keelson_runtime::ContainerInfo { state: ContainerState::Running { .. }, .. }))
                );
                let chunk = read_from(&log, &mut pos).await;
                pending.extend_from_slice(&chunk);
                let (lines, consumed) = logs::parse(&pending);
                pending.drain(..consumed);
                for l in lines {
                    let channel = if l.stream == "stderr" { STDERR } else { STDOUT };
                    let wanted = if channel == STDERR { io.stderr } else { io.stdout };
                    if !wanted {
                        continue;
                    }
                    let mut data = l.content;
                    if l.complete {
                        data.push(b'\n');
                    }
                    if out.send((channel, data)).await.is_err() {
                        return;
                    }
                }
                if exited && chunk.is_empty() {
                    if let Some(m) = exec::status_message(version, &[], &Ok(0)) {
                        let _ = out.send((STATUS, m)).await;
                    }
                    return;
                }
            }
        }
    }
}

/// The bytes of `log` past `pos` (from the start again when it was
/// rotated), moving `pos` on.
async fn read_from(log: &PathBuf, pos: &mut u64) -> Vec<u8> {
    let Ok(mut f) = tokio::fs::File::open(log).await else {
        return Vec::new();
    };
    let len = f.metadata().await.map_or(0, |m| m.len());
    if len < *pos {
        *pos = 0;
    }
    if len == *pos || f.seek(std::io::SeekFrom::Start(*pos)).await.is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).await.is_ok() {
        *pos += buf.len() as u64;
    }
    buf
}
