//! Joining a cluster with a bootstrap token, as `kubeadm join` does: no
//! admin credentials on the node, only `--server`, `--token` and
//! `--ca-cert-hash`.
//!
//! 1. Read `kube-public/cluster-info` anonymously without trusting the
//!    server, and accept the CA it names only if its public key's SHA-256
//!    is the hash given.
//! 2. With the token, over TLS checked against that CA, ask for a client
//!    certificate for `system:node:NAME` in `system:nodes` (a
//!    CertificateSigningRequest to `kubernetes.io/kube-apiserver-client-kubelet`;
//!    the control plane approves and signs it).
//! 3. Write `<root-dir>/pki/node.{crt,key}` and `node.kubeconfig`; the
//!    agent runs with that. A later start reuses them while they are valid.
//!
//! [`rotate`] renews the certificate (as the node itself) when 80 % of its
//! life has passed and replaces the files; [`client`] builds API clients
//! that present whatever certificate the files hold at each new
//! connection, so a rotation needs no restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

/// What `keelson agent --server --token --ca-cert-hash` gives.
#[derive(Clone, Debug)]
pub struct JoinConfig {
    pub server: String,
    pub token: String,
    pub ca_cert_hash: String,
    /// Asked-for lifetime of the node's certificate (None: the signer's).
    pub cert_ttl: Option<Duration>,
}

const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Where the node's credentials live.
pub fn paths(root_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = root_dir.join("pki");
    (
        dir.join("node-client.crt"),
        dir.join("node-client.key"),
        dir.join("node.kubeconfig"),
    )
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, user: serde_json::Value) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {
            "server": server,
            "certificate-authority-data": b64().encode(ca_pem),
        }}],
        "users": [{"name": "node", "user": user}],
        "contexts": [{"name": "node", "context": {"cluster": "cluster", "user": "node"}}],
        "current-context": "node",
    })
    .to_string()
}

async fn client_of(kubeconfig_text: &str) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig_text).context("kubeconfig")?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    kube::Client::try_from(cfg).context("build API client")
}

/// The certificate's notBefore and notAfter.
fn validity(cert_pem: &str) -> Option<(SystemTime, SystemTime)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Some((
        at(c.validity().not_before.timestamp()),
        at(c.validity().not_after.timestamp()),
    ))
}

/// When a certificate should be renewed: at 80 % of its life.
pub fn renew_at(cert_pem: &str) -> Option<SystemTime> {
    let (from, to) = validity(cert_pem)?;
    let life = to.duration_since(from).ok()?;
    Some(from + life.mul_f64(0.8))
}

/// A node client certificate for `node_name`, through a
/// CertificateSigningRequest made with `client`: (certificate, key) PEM.
async fn request_certificate(
    client: &kube::Client,
    node_name: &str,
    ttl: Option<Duration>,
) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generate a key")?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name = dn;
    let request = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .context("make the certificate request")?;
    let mut spec = serde_json::json!({
        "request": b64().encode(&request),
        "signerName": SIGNER,
        "usages": ["digital signature", "key encipherment", "client auth"],
    });
    if let Some(t) = ttl {
        spec["expirationSeconds"] = serde_json::json!(t.as_secs().max(60));
    }
    let csr: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": format!("node-csr-{node_name}-")},
        "spec": spec,
    }))?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .context("create the certificate signing request")?;
    let name = created.metadata.name.clone().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let csr = api
            .get(&name)
            .await
            .context("read the certificate signing request")?;
        let status = csr.status.unwrap_or_default();
        if let Some(c) = status.certificate.filter(|c| !c.0.is_empty()) {
            let cert = String::from_utf8(c.0).context("the issued certificate is not PEM")?;
            return Ok((cert, key.serialize_pem()));
        }
        if let Some(c) = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status != "False")
        {
            bail!(
                "certificate signing request {name} {}: {}",
                c.type_.to_lowercase(),
                c.message.unwrap_or_default()
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "certificate signing request {name} was not signed within 2 minutes (is it approved?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn write_credentials(
    root_dir: &Path,
    cert: &str,
    key: &str,
    kubeconfig: &str,
) -> anyhow::Result<()> {
    let (cert_path, key_path, kc_path) = paths(root_dir);
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    keelson_host::fs::write_atomic_mode(&key_path, key.as_bytes(), 0o600)?;
    keelson_host::fs::write_atomic_mode(&cert_path, cert.as_bytes(), 0o644)?;
    keelson_host::fs::write_atomic_mode(&kc_path, kubeconfig.as_bytes(), 0o600)?;
    Ok(())
}

/// The node's kubeconfig: the one written before while its certificate is
/// valid, else a new one through the join steps.
pub async fn join(
    config: &JoinConfig,
    node_name: &str,
    root_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let (cert_path, key_path, kc_path) = paths(root_dir);
    if let Ok(cert) = std::fs::read_to_string(&cert_path)
        && kc_path.is_file()
        && key_path.is_file()
        && validity(&cert).is_some_and(|(_, to)| to > SystemTime::now())
    {
        tracing::info!(kubeconfig = %kc_path.display(), "using the node credentials from an earlier join");
        return Ok(kc_path);
    }
    // 1. The CA, from cluster-info, trusted only by its hash.
    let insecure = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": config.server, "insecure-skip-tls-verify": true}}],
        "users": [{"name": "anonymous", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "anonymous"}}],
        "current-context": "c",
    })
    .to_string();
    let anonymous = client_of(&insecure).await?;
    let info = Api::<ConfigMap>::namespaced(anonymous, "kube-public")
        .get("cluster-info")
        .await
        .with_context(|| format!("read kube-public/cluster-info from {}", config.server))?;
    let kubeconfig = info
        .data
        .as_ref()
        .and_then(|d| d.get("kubeconfig"))
        .context("cluster-info has no kubeconfig")?;
    let kc: serde_json::Value =
        serde_json::from_str(kubeconfig).context("cluster-info's kubeconfig is not JSON")?;
    let ca_pem = kc["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .and_then(|d| b64().decode(d).ok())
        .and_then(|d| String::from_utf8(d).ok())
        .context("cluster-info names no CA")?;
    let hash = keelson_host::serve::ca_cert_hash(&ca_pem).map_err(anyhow::Error::msg)?;
    if hash != config.ca_cert_hash {
        bail!(
            "the cluster's CA hash is {hash}, not the --ca-cert-hash given ({}): refusing to join",
            config.ca_cert_hash
        );
    }
    // 2. A node certificate, asked for with the token.
    let bootstrap = client_of(&kubeconfig_yaml(
        &config.server,
        &ca_pem,
        serde_json::json!({"token": config.token}),
    ))
    .await?;
    let (cert, key) = request_certificate(&bootstrap, node_name, config.cert_ttl).await?;
    // 3. The node's own kubeconfig.
    let (cert_path, key_path, _) = paths(root_dir);
    let node_kc = kubeconfig_yaml(
        &config.server,
        &ca_pem,
        serde_json::json!({
            "client-certificate": cert_path.display().to_string(),
            "client-key": key_path.display().to_string(),
        }),
    );
    write_credentials(root_dir, &cert, &key, &node_kc)?;
    tracing::info!(node = node_name, kubeconfig = %kc_path.display(), "joined the cluster");
    Ok(kc_path)
}

/// Renew the node's certificate at 80 % of its life, as the node, for as
/// long as the agent runs.
pub async fn rotate(
    kubeconfig: PathBuf,
    node_name: String,
    root_dir: PathBuf,
    ttl: Option<Duration>,
) {
    let (cert_path, _, _) = paths(&root_dir);
    loop {
        let due = std::fs::read_to_string(&cert_path)
            .ok()
            .and_then(|c| renew_at(&c))
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(60));
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        let renewed = async {
            let kc = std::fs::read_to_string(&kubeconfig)?;
            let client = client_of(&kc).await?;
            let (cert, key) = request_certificate(&client, &node_name, ttl).await?;
            write_credentials(&root_dir, &cert, &key, &kc)?;
            anyhow::Ok(())
        }
        .await;
        match renewed {
            Ok(()) => tracing::info!(node = %node_name, "renewed the node's client certificate"),
            Err(e) => {
                tracing::warn!(error = %e, "renew the node's client certificate; trying again in 30 s");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

/// A client certificate read from files, re-read when they change.
#[derive(Debug)]
struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Option<(SystemTime, Arc<rustls::sign::CertifiedKey>)>>,
}

impl FileCert {
    fn load(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let modified = std::fs::metadata(&self.cert)
            .and_then(|m| m.modified())
            .ok()?;
        if let Some((at, k)) = &*self.current.read().unwrap_or_else(|e| e.into_inner())
            && *at == modified
        {
            return Some(k.clone());
        }
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .ok()?
            .collect::<Result<_, _>>()
            .ok()?;
        let key = PrivateKeyDer::from_pem_file(&self.key).ok()?;
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let signing = provider.key_provider.load_private_key(key).ok()?;
        let k = Arc::new(rustls::sign::CertifiedKey::new(certs, signing));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((modified, k.clone()));
        Some(k)
    }
}

impl rustls::client::ResolvesClientCert for FileCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.load()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// An API client for a node kubeconfig whose client certificate files may
/// be replaced while it runs: each new connection presents the files'
/// current certificate.
pub async fn client(kubeconfig: &Path, root_dir: &Path) -> anyhow::Result<kube::Client> {
    use kube::client::ConfigExt;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read kubeconfig {}", kubeconfig.display()))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    // The identity comes from the resolver, not from the config.
    cfg.auth_info.client_certificate = None;
    cfg.auth_info.client_key = None;
    let (cert, key, _) = paths(root_dir);
    let resolver = Arc::new(FileCert {
        cert,
        key,
        current: RwLock::new(None),
    });
    let mut roots = rustls::RootCertStore::empty();
    for der in cfg.root_cert.clone().unwrap_or_default() {
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .context("the kubeconfig's CA")?;
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_cert_resolver(resolver);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(https);
    let service = tower::ServiceBuilder::new()
        .layer(cfg.base_uri_layer())
        .option_layer(cfg.auth_layer()?)
        .map_err(tower::BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, cfg.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_four_fifths_of_the_life() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now;
        p.not_after = now + time::Duration::seconds(1000);
        let cert = p.self_signed(&key).unwrap().pem();
        let due = renew_at(&cert).unwrap();
        let from = SystemTime::UNIX_EPOCH + Duration::from_secs(now.unix_timestamp() as u64);
        assert_eq!(due.duration_since(from).unwrap().as_secs(), 800);
    }
}
