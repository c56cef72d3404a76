//! The one TLS serving loop, for the API server and the node API: rustls
//! (ring provider only), ALPN h2 and http/1.1, hyper-util's automatic
//! HTTP/1.1-or-HTTP/2 connections with upgrades, a handshake timeout, and
//! an optional stop signal that ends the loop and every open connection.
//!
//! [`server_config`] builds the rustls configuration from PEM (with
//! optional client certificates verified against a CA); [`serve`] accepts
//! until stopped and hands each connection's [`Peer`] to a function that
//! makes its hyper service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long a client gets to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
    /// The certificate chain the client presented (verified against the
    /// CA of [`ClientAuth::Optional`]); empty when it presented none.
    pub certificates: Vec<CertificateDer<'static>>,
}

/// Whether clients may authenticate with certificates.
#[derive(Debug, Clone, Copy)]
pub enum ClientAuth<'a> {
    /// No client certificates are asked for.
    None,
    /// Clients may present a certificate signed by this CA (PEM); clients
    /// without one are let through (they authenticate otherwise).
    Optional {
        /// The CA bundle, PEM.
        ca_pem: &'a str,
    },
}

/// A TLS configuration that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS server configuration: {what}: {reason}")]
pub struct TlsConfigError {
    /// What was being read or built ("serving certificate", "CA", ...).
    pub what: &'static str,
    /// Why.
    pub reason: String,
}

/// A rustls server configuration (ring provider, safe default protocol
/// versions, ALPN h2 then http/1.1) serving `cert_pem` with `key_pem`.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client: ClientAuth<'_>,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| config_error("parse serving certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| config_error("parse serving key", &e))?;
    let cfg = builder(client)?
        .with_single_cert(certs, key)
        .map_err(|e| config_error("serving certificate", &e))?;
    Ok(with_alpn(cfg))
}

/// [`server_config`] serving whatever certificate `resolver` gives at each
/// handshake (a certificate that is renewed while the server runs:
/// [`crate::certfile::FileCert`]).
pub fn server_config_resolving(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    client: ClientAuth<'_>,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    Ok(with_alpn(builder(client)?.with_cert_resolver(resolver)))
}

fn config_error(what: &'static str, e: &dyn std::fmt::Display) -> TlsConfigError {
    TlsConfigError {
        what,
        reason: e.to_string(),
    }
}

fn with_alpn(mut cfg: rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The configuration up to its certificate: protocols and client auth.
fn builder(
    client: ClientAuth<'_>,
) -> Result<
    rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>,
    TlsConfigError,
> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("protocol versions", &e))?;
    Ok(match client {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional { ca_pem } => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
                let ca = ca.map_err(|e| config_error("parse CA certificate", &e))?;
                roots.add(ca).map_err(|e| config_error("add CA", &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| config_error("client verifier", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    })
}

/// Resolves when `stop` changes (or its sender is gone); never without one.
async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            let _ = rx.changed().await;
        }
        None => std::future::pending().await,
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Accepts TLS connections on `listener` until `stop` changes (with
/// `None`, until the task is dropped), each served by the service
/// `new_service` makes for its [`Peer`]. `name` goes into the logs. A
/// connection whose handshake fails or takes longer than
/// [`HANDSHAKE_TIMEOUT`] is dropped; when `stop` changes, open
/// connections are closed too.
pub async fn serve<F, S, B>(
    name: &'static str,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    new_service: F,
    mut stop: Option<watch::Receiver<bool>>,
) where
    F: Fn(Peer) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let new_service = Arc::new(new_service);
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(server = name, error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let new_service = new_service.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(server = name, %remote, error = %e, "TLS handshake");
                    return;
                }
                Err(_) => {
                    tracing::debug!(server = name, %remote, "TLS handshake timed out");
                    return;
                }
            };
            let peer = Peer {
                remote,
                certificates: stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(<[_]>::to_vec)
                    .unwrap_or_default(),
            };
            let svc = new_service(peer);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(server = name, %remote, error = %e, "connection");
                },
                _ = stopped(&mut stop) => {}
            }
        });
    }
}

/// A TLS client's verifier that accepts any server certificate (signatures
/// are still checked): probes check liveness, not identity (the kubelet's
/// `InsecureSkipVerify`); the API server reaches node APIs whose serving
/// certificates their agents signed themselves, and pods over
/// `pods/https:NAME:PORT/proxy`.
#[derive(Debug)]
pub struct UnverifiedServer;

impl rustls::client::danger::ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// kubeadm's CA pin: `sha256:` and the hex SHA-256 of the first
/// certificate's SubjectPublicKeyInfo in a PEM bundle (what
/// `--discovery-token-ca-cert-hash` / `--ca-cert-hash` name).
pub fn ca_cert_hash(ca_pem: &str) -> Result<String, String> {
    use sha2::Digest;
    let der = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()
        .ok_or("no certificate in the PEM")?
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    Ok(format!(
        "sha256:{:x}",
        sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw)
    ))
}

/// The user and groups a client certificate names (its subject's CN and
/// O values), as Kubernetes reads them.
pub fn cert_subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some((name, groups))
}
