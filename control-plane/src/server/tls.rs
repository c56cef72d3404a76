//! The HTTPS listener: rustls (ring provider) with optional client
//! certificates verified against the cluster CA, HTTP/1.1 and HTTP/2.

use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tower::ServiceExt;

use super::auth::{Authenticator, PeerIdentity, user_from_cert};
use super::pki::Pki;

pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
        roots
            .add(ca.map_err(|e| format!("parse CA certificate: {e}"))?)
            .map_err(|e| format!("add CA: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("parse serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving.key_pem.as_bytes())
        .map_err(|e| format!("parse serving key: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("protocol versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("serving certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accept connections until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    authn: Arc<Authenticator>,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let authn = authn.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake");
                    return;
                }
                Err(_) => return,
            };
            let peer = PeerIdentity(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| user_from_cert(c)),
            );
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    let peer = peer.clone();
                    let authn = authn.clone();
                    async move {
                        let auth = req
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok());
                        let Some(user) = authn.authenticate(&peer, auth) else {
                            return Ok::<_, std::convert::Infallible>(
                                super::http::error_response(
                                    &crate::api::errors::ApiError::unauthorized(),
                                )
                                .into_response(),
                            );
                        };
                        let mut req = req.map(axum::body::Body::new);
                        req.extensions_mut().insert(user);
                        app.oneshot(req).await
                    }
                });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "connection");
                },
                _ = stop.changed() => {}
            }
        });
    }
}
