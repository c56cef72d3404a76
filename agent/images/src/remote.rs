//! The registry seam: a narrow [`Remote`] trait (fetch a manifest, stream a
//! blob) and its oci-client implementation. Loopback registries and those
//! listed as insecure are spoken to over plain HTTP.

use std::fmt;

use futures::StreamExt;
use futures::stream::BoxStream;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use crate::manifest::Descriptor;
use crate::reference::ImageRef;

/// A registry failure, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// 404 / MANIFEST_UNKNOWN / NAME_UNKNOWN / BLOB_UNKNOWN.
    #[error("not found: {0}")]
    NotFound(String),
    /// The registry's bytes do not match the digest they were asked for.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Digest { expected: String, actual: String },
    /// Anything else (network, auth, server errors).
    #[error("{0}")]
    Other(String),
}

/// A stream of blob bytes.
pub type BlobStream = BoxStream<'static, Result<bytes::Bytes, RemoteError>>;

/// What the store needs from a registry.
#[async_trait::async_trait]
pub trait Remote: Send + Sync + fmt::Debug {
    /// The manifest `r` names (by digest if it has one, else by tag).
    async fn manifest(&self, r: &ImageRef, accept: &[&str]) -> Result<Vec<u8>, RemoteError>;
    /// The bytes of the blob `desc` in `r`'s repository.
    async fn blob(&self, r: &ImageRef, desc: &Descriptor) -> Result<BlobStream, RemoteError>;
    /// This remote speaking with `cred` (None: it has no use for
    /// credentials, e.g. a layout on disk or a fake).
    fn with_credential(&self, _cred: &crate::auth::Credential) -> Option<Box<dyn Remote + '_>> {
        None
    }
}

/// [`Remote`] through oci-client: anonymous, or with one credential
/// ([`Remote::with_credential`]).
pub struct OciRemote {
    http: oci_client::Client,
    https: oci_client::Client,
    insecure: Vec<String>,
    auth: RegistryAuth,
}

impl fmt::Debug for OciRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OciRemote")
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl OciRemote {
    /// Clients for HTTPS and for plain HTTP (loopback and `insecure`).
    pub fn new(insecure: Vec<String>) -> Self {
        // reqwest is built without a bundled crypto provider: use ring, the
        // workspace's only one. Fails harmlessly if one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = |protocol| ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        Self {
            http: oci_client::Client::new(config(ClientProtocol::Http)),
            https: oci_client::Client::new(config(ClientProtocol::Https)),
            insecure,
            auth: RegistryAuth::Anonymous,
        }
    }

    fn client(&self, r: &ImageRef) -> &oci_client::Client {
        if r.is_insecure(&self.insecure) {
            &self.http
        } else {
            &self.https
        }
    }
}

fn oci_reference(r: &ImageRef) -> oci_client::Reference {
    match (&r.digest, &r.tag) {
        (Some(d), _) => oci_client::Reference::with_digest(
            r.registry.clone(),
            r.repository.clone(),
            d.to_string(),
        ),
        (None, t) => oci_client::Reference::with_tag(
            r.registry.clone(),
            r.repository.clone(),
            t.clone().unwrap_or_else(|| "latest".to_string()),
        ),
    }
}

fn classify(e: OciDistributionError) -> RemoteError {
    use OciDistributionError as E;
    match e {
        E::ImageManifestNotFoundError(m) => RemoteError::NotFound(m),
        E::RegistryError { envelope, url } => {
            let not_found = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            });
            let msg = format!("{url}: {envelope}");
            if not_found {
                RemoteError::NotFound(msg)
            } else {
                RemoteError::Other(msg)
            }
        }
        E::ServerError { code: 404, url, .. } => RemoteError::NotFound(format!("{url}: HTTP 404")),
        E::DigestError(oci_client::errors::DigestError::VerificationError { expected, actual }) => {
            RemoteError::Digest { expected, actual }
        }
        other => RemoteError::Other(other.to_string()),
    }
}

fn classify_io(e: std::io::Error) -> RemoteError {
    if let Some(inner) = e.get_ref()
        && let Some(oci_client::errors::DigestError::VerificationError { expected, actual }) =
            inner.downcast_ref::<oci_client::errors::DigestError>()
    {
        return RemoteError::Digest {
            expected: expected.clone(),
            actual: actual.clone(),
        };
    }
    RemoteError::Other(format!("read blob: {e}"))
}

impl OciRemote {
    async fn manifest_with(
        &self,
        r: &ImageRef,
        accept: &[&str],
        auth: &RegistryAuth,
    ) -> Result<Vec<u8>, RemoteError> {
        let (body, _digest) = self
            .client(r)
            .pull_manifest_raw(&oci_reference(r), auth, accept)
            .await
            .map_err(classify)?;
        Ok(body.to_vec())
    }

    async fn blob_with(
        &self,
        r: &ImageRef,
        desc: &Descriptor,
        auth: &RegistryAuth,
    ) -> Result<BlobStream, RemoteError> {
        let reference = oci_reference(r);
        let client = self.client(r);
        // Blob requests reuse the token from the manifest request; make sure
        // there is one even when the manifest came from the local store.
        client
            .store_auth_if_needed(reference.resolve_registry(), auth)
            .await;
        let stream = client
            .pull_blob_stream(&reference, desc.digest.as_str())
            .await
            .map_err(classify)?;
        Ok(stream.map(|c| c.map_err(classify_io)).boxed())
    }
}

#[async_trait::async_trait]
impl Remote for OciRemote {
    async fn manifest(&self, r: &ImageRef, accept: &[&str]) -> Result<Vec<u8>, RemoteError> {
        self.manifest_with(r, accept, &self.auth).await
    }

    async fn blob(&self, r: &ImageRef, desc: &Descriptor) -> Result<BlobStream, RemoteError> {
        self.blob_with(r, desc, &self.auth).await
    }

    /// A remote of its own (new clients, so its own token cache): oci-client
    /// caches credentials per registry, and a pull without credentials must
    /// never ride on another pod's.
    fn with_credential(&self, cred: &crate::auth::Credential) -> Option<Box<dyn Remote + '_>> {
        let mut r = OciRemote::new(self.insecure.clone());
        r.auth = RegistryAuth::Basic(cred.username.clone(), cred.password.clone());
        Some(Box::new(r))
    }
}
