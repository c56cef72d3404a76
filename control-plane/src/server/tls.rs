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

/// Accept connections until `stop` turns true, within `limits`;
/// connections refused for their address are counted in `metrics`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: keelson_host::serve::Limits,
    metrics: Arc<super::metrics::Metrics>,
    authn: Arc<Authenticator>,
    app: Router,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let new_service = move |peer: Peer| {
        let remote = super::http::PeerAddr(peer.remote);
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
                // No credentials at all: system:anonymous, whom the
                // authorizer gives what kube-apiserver gives it (health and
                // version); a credential that does not check out is 401.
                let user = match authn.authenticate(&peer, auth.as_deref()).await {
                    Some(u) => u,
                    None if auth.is_none() && peer.0.is_none() => {
                        super::auth::UserInfo::anonymous()
                    }
                    None => {
                        return Ok::<_, std::convert::Infallible>(
                            super::http::error_response(
                                &crate::api::errors::ApiError::unauthorized(),
                            )
                            .into_response(),
                        );
                    }
                };
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(user);
                req.extensions_mut().insert(remote);
                app.oneshot(req).await
            }
        })
    };
    let on_refused: keelson_host::serve::OnRefused =
        Arc::new(move |_| metrics.connection_refused());
    keelson_host::serve::serve(
        "API server",
        listener,
        tls,
        limits,
        Some(on_refused),
        new_service,
        Some(stop),
    )
    .await
}
