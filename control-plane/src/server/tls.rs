//! The HTTPS listener: keelson-host's TLS serving loop
//! (`keelson_host::serve`) with optional client certificates verified
//! against the cluster CA; each request is authenticated (client
//! certificate, else bearer token) before it reaches the router.

use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse;
use keelson_host::serve::{ClientAuth, Peer};
use tower::ServiceExt;

use super::auth::{Authenticator, PeerIdentity, user_from_cert};
use super::pki::Pki;

pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, String> {
    keelson_host::serve::server_config(
        &pki.serving.cert_pem,
        &pki.serving.key_pem,
        ClientAuth::Optional {
            ca_pem: &pki.ca.cert_pem,
        },
    )
    .map_err(|e| e.to_string())
}

/// Accept connections until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    authn: Arc<Authenticator>,
    app: Router,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let new_service = move |peer: Peer| {
        let peer = PeerIdentity(peer.certificates.first().and_then(|c| user_from_cert(c)));
        let app = app.clone();
        let authn = authn.clone();
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let peer = peer.clone();
            let authn = authn.clone();
            async move {
                let auth = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let user = match authn.authenticate(&peer, auth.as_deref()).await {
                    Some(u) => Some(u),
                    // No credentials at all: what kube-apiserver gives
                    // system:anonymous (system:public-info-viewer).
                    None if auth.is_none() && peer.0.is_none() && public_info(req.uri().path()) => {
                        Some(super::auth::UserInfo::anonymous())
                    }
                    None => None,
                };
                let Some(user) = user else {
                    return Ok::<_, std::convert::Infallible>(
                        super::http::error_response(&crate::api::errors::ApiError::unauthorized())
                            .into_response(),
                    );
                };
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(user);
                app.oneshot(req).await
            }
        })
    };
    keelson_host::serve::serve("API server", listener, tls, new_service, Some(stop)).await
}

/// The paths anyone may read without credentials (kube-apiserver's
/// system:public-info-viewer role): health and version.
fn public_info(path: &str) -> bool {
    ["/healthz", "/livez", "/readyz", "/version"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_health_and_version_are_public() {
        for p in ["/healthz", "/livez", "/readyz/ping", "/version"] {
            assert!(super::public_info(p), "{p}");
        }
        for p in ["/api", "/healthzz", "/apis/apps/v1", "/", "/versions"] {
            assert!(!super::public_info(p), "{p}");
        }
    }
}
