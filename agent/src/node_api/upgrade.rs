//! The HTTP upgrades of the streaming endpoints: WebSocket (told apart
//! here, served by axum) and SPDY/3.1 with the Kubernetes protocol
//! negotiation (`X-Stream-Protocol-Version`).

use std::future::Future;
use std::pin::Pin;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{spdy, text};

/// The header a client lists its stream protocols in.
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// Whether `req` asks for a WebSocket.
pub fn is_websocket(req: &Request) -> bool {
    has_token(req.headers(), header::UPGRADE, "websocket")
}

fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The first of the client's protocols the server speaks (pure).
pub fn negotiate<'a>(client: &[&str], server: &[&'a str]) -> Option<&'a str> {
    client
        .iter()
        .find_map(|c| server.iter().find(|s| **s == *c).copied())
}

/// The session a SPDY upgrade gives once the client has switched.
pub type PendingSession = Pin<Box<dyn Future<Output = Option<spdy::Session>> + Send>>;

/// Answers a SPDY/3.1 upgrade that negotiates one of `protocols`: the
/// 101 response, the chosen protocol and the session to come; or the
/// refusal to send instead.
pub fn spdy(
    mut req: Request,
    protocols: &[&str],
) -> Result<(Response, String, PendingSession), Box<Response>> {
    if !has_token(req.headers(), header::UPGRADE, "SPDY/3.1") {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: this endpoint speaks WebSocket or SPDY/3.1".into(),
        )));
    }
    let client: Vec<String> = req
        .headers()
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if client.is_empty() {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required".into(),
        )));
    }
    let client_refs: Vec<&str> = client.iter().map(String::as_str).collect();
    let Some(chosen) = negotiate(&client_refs, protocols) else {
        let mut r = text(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server supports {protocols:?}"
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&protocols.join(", ")) {
            r.headers_mut()
                .insert("x-accepted-stream-protocol-versions", v);
        }
        return Err(Box::new(r));
    };
    let upgraded = hyper::upgrade::on(&mut req);
    let session: PendingSession = Box::pin(async move {
        match upgraded.await {
            Ok(up) => Some(spdy::serve(hyper_util::rt::TokioIo::new(up))),
            Err(e) => {
                tracing::debug!("spdy upgrade: {e}");
                None
            }
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(
        PROTOCOL_HEADER,
        HeaderValue::from_str(chosen).expect("protocol names are header values"),
    );
    Ok((resp, chosen.to_string(), session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_first_choice_the_server_speaks() {
        let server = ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"];
        assert_eq!(
            negotiate(
                &[
                    "v5.channel.k8s.io",
                    "v3.channel.k8s.io",
                    "v4.channel.k8s.io"
                ],
                &server
            ),
            Some("v3.channel.k8s.io")
        );
        assert_eq!(negotiate(&["portforward.k8s.io"], &server), None);
    }

    #[test]
    fn refusals_say_why() {
        let req = |headers: &[(&str, &str)]| {
            let mut b = axum::http::Request::post("/exec/a/b/c");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        let e = spdy(req(&[("upgrade", "h2c")]), &["v4.channel.k8s.io"])
            .err()
            .unwrap();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = spdy(req(&[("upgrade", "SPDY/3.1")]), &["v4.channel.k8s.io"])
            .err()
            .unwrap();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = spdy(
            req(&[
                ("upgrade", "SPDY/3.1"),
                (PROTOCOL_HEADER, "v9.channel.k8s.io"),
            ]),
            &["v4.channel.k8s.io"],
        )
        .err()
        .unwrap();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(
            e.headers()
                .contains_key("x-accepted-stream-protocol-versions")
        );
        let (ok, chosen, _) = spdy(
            req(&[
                ("upgrade", "SPDY/3.1"),
                (PROTOCOL_HEADER, "v4.channel.k8s.io"),
                (PROTOCOL_HEADER, "v3.channel.k8s.io"),
            ]),
            &["v4.channel.k8s.io", "v3.channel.k8s.io"],
        )
        .ok()
        .unwrap();
        assert_eq!(ok.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(chosen, "v4.channel.k8s.io");
    }
}
