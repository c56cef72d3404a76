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
use std::sync::Arc;
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

/// What a certificate the node asks for is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Its API client certificate (signer
    /// `kubernetes.io/kube-apiserver-client-kubelet`).
    Client,
    /// The node API's serving certificate (signer
    /// `kubernetes.io/kubelet-serving`), naming the node and its IP, as a
    /// kubelet with `serverTLSBootstrap` asks for it.
    Serving(std::net::IpAddr),
}

impl Purpose {
    fn signer(self) -> &'static str {
        match self {
            Purpose::Client => "kubernetes.io/kube-apiserver-client-kubelet",
            Purpose::Serving(_) => "kubernetes.io/kubelet-serving",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Purpose::Client => "client auth",
            Purpose::Serving(_) => "server auth",
        }
    }

    /// Where the certificate and key live.
    fn files(self, root_dir: &Path) -> (PathBuf, PathBuf) {
        match self {
            Purpose::Client => {
                let (c, k, _) = paths(root_dir);
                (c, k)
            }
            Purpose::Serving(_) => serving_paths(root_dir),
        }
    }
}

/// Where the node API's serving certificate from the cluster CA lives.
pub fn serving_paths(root_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = root_dir.join("pki");
    (dir.join("node-serving.crt"), dir.join("node-serving.key"))
}

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

/// A certificate of the node `node_name` for `purpose`, through a
/// CertificateSigningRequest made with `client`: (certificate, key) PEM.
async fn request_certificate(
    client: &kube::Client,
    node_name: &str,
    ttl: Option<Duration>,
    purpose: Purpose,
) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generate a key")?;
    let mut params = rcgen::CertificateParams::default();
    if let Purpose::Serving(ip) = purpose {
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName(
                node_name
                    .to_string()
                    .try_into()
                    .context("the node name as a DNS name")?,
            ),
            rcgen::SanType::IpAddress(ip),
        ];
    }
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
        "signerName": purpose.signer(),
        "usages": ["digital signature", "key encipherment", purpose.usage()],
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
    write_pair(&cert_path, &key_path, cert, key)?;
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
    let (cert, key) =
        request_certificate(&bootstrap, node_name, config.cert_ttl, Purpose::Client).await?;
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

/// Whether `cert_pem` was issued by someone else (a CA), not by itself.
fn ca_issued(cert_pem: &str) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .and_then(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(&der).ok()?;
            Some(c.issuer() != c.subject())
        })
        .unwrap_or(false)
}

/// The node API's serving certificate files: a valid one from the cluster
/// CA when there is one; else one asked for now (as the node, with
/// `client`); else, when the control plane does not sign it, a
/// self-signed pair for now, which [`rotate`] replaces once it can.
pub async fn serving_certificate(
    client: &kube::Client,
    node_name: &str,
    node_ip: std::net::IpAddr,
    root_dir: &Path,
    ttl: Option<Duration>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let purpose = Purpose::Serving(node_ip);
    let (cert_path, key_path) = purpose.files(root_dir);
    if let Ok(cert) = std::fs::read_to_string(&cert_path)
        && key_path.is_file()
        && ca_issued(&cert)
        && validity(&cert).is_some_and(|(_, to)| to > SystemTime::now())
    {
        return Ok((cert_path, key_path));
    }
    let (cert, key) = match tokio::time::timeout(
        Duration::from_secs(30),
        request_certificate(client, node_name, ttl, purpose),
    )
    .await
    {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the node API serves a self-signed certificate until the cluster CA signs one");
            self_signed(node_name, node_ip)?
        }
        Err(_) => {
            tracing::warn!(
                "no serving certificate signed within 30 s: the node API serves a self-signed one until then"
            );
            self_signed(node_name, node_ip)?
        }
    };
    write_pair(&cert_path, &key_path, &cert, &key)?;
    Ok((cert_path, key_path))
}

fn self_signed(node_name: &str, ip: std::net::IpAddr) -> anyhow::Result<(String, String)> {
    let ck = rcgen::generate_simple_self_signed(vec![node_name.to_string(), ip.to_string()])
        .context("make a self-signed serving certificate")?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

fn write_pair(cert_path: &Path, key_path: &Path, cert: &str, key: &str) -> anyhow::Result<()> {
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    // The key first: a reader that sees the new certificate finds its key.
    keelson_host::fs::write_atomic_mode(key_path, key.as_bytes(), 0o600)?;
    keelson_host::fs::write_atomic_mode(cert_path, cert.as_bytes(), 0o644)?;
    Ok(())
}

/// Renew the node's certificate for `purpose` at 80 % of its life (a
/// self-signed serving one at once), as the node, for as long as the agent
/// runs.
pub async fn rotate(
    kubeconfig: PathBuf,
    node_name: String,
    root_dir: PathBuf,
    ttl: Option<Duration>,
    purpose: Purpose,
) {
    let (cert_path, key_path) = purpose.files(&root_dir);
    let what = match purpose {
        Purpose::Client => "client",
        Purpose::Serving(_) => "serving",
    };
    loop {
        let due = std::fs::read_to_string(&cert_path)
            .ok()
            .and_then(|c| match purpose {
                Purpose::Serving(_) if !ca_issued(&c) => Some(SystemTime::now()),
                _ => renew_at(&c),
            })
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(60));
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        let renewed = async {
            let kc = std::fs::read_to_string(&kubeconfig)?;
            let client = client_of(&kc).await?;
            let (cert, key) = request_certificate(&client, &node_name, ttl, purpose).await?;
            match purpose {
                Purpose::Client => write_credentials(&root_dir, &cert, &key, &kc)?,
                Purpose::Serving(_) => write_pair(&cert_path, &key_path, &cert, &key)?,
            }
            anyhow::Ok(())
        }
        .await;
        match renewed {
            Ok(()) => tracing::info!(node = %node_name, "renewed the node's {what} certificate"),
            Err(e) => {
                tracing::warn!(error = %e, "renew the node's {what} certificate; trying again in 30 s");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
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
    let resolver = Arc::new(keelson_host::certfile::FileCert::new(cert, key));
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
