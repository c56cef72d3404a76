//! The cluster's certificates: a CA, the API server's serving certificate,
//! the admin client certificate and the API server's client certificate
//! towards node APIs (kube-apiserver's `--kubelet-client-certificate`),
//! created on first start under `DIR/pki` and reused afterwards. Also
//! writes `DIR/admin.kubeconfig`.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{operation}: {source}")]
    Cert {
        operation: &'static str,
        source: rcgen::Error,
    },
    #[error("{0}")]
    Key(String),
}

/// The file name (without extension) of [`Pki::node_client`].
const NODE_CLIENT: &str = "apiserver-kubelet-client";

/// PEM-encoded certificate and key.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything the server needs from the PKI.
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: CertPair,
    pub serving: CertPair,
    pub admin: CertPair,
    /// What the API server presents to node APIs (in system:masters).
    pub node_client: CertPair,
}

fn read_pair(dir: &Path, name: &str) -> Option<CertPair> {
    let cert_pem = fs::read_to_string(dir.join(format!("{name}.crt"))).ok()?;
    let key_pem = fs::read_to_string(dir.join(format!("{name}.key"))).ok()?;
    Some(CertPair { cert_pem, key_pem })
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    keelson_host::fs::write_atomic_mode(path, contents.as_bytes(), mode).map_err(|e| PkiError::Io {
        operation: e.step,
        path: e.path,
        source: e.source,
    })
}

fn write_pair(dir: &Path, name: &str, pair: &CertPair) -> Result<(), PkiError> {
    write_file(&dir.join(format!("{name}.crt")), &pair.cert_pem, 0o644)?;
    write_file(&dir.join(format!("{name}.key")), &pair.key_pem, 0o600)
}

fn cert_err(operation: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Cert { operation, source }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn new_ca() -> Result<CertPair, PkiError> {
    let key = KeyPair::generate().map_err(cert_err("generate CA key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("CA params"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "keelson-ca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 3650);
    let cert = params.self_signed(&key).map_err(cert_err("self-sign CA"))?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issue a leaf certificate signed by `ca`.
pub fn issue(
    ca: &CertPair,
    common_name: &str,
    organizations: &[&str],
    sans: &[String],
    server: bool,
) -> Result<CertPair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(cert_err("parse CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(cert_err("parse CA cert"))?;
    let key = KeyPair::generate().map_err(cert_err("generate key"))?;
    let mut params = CertificateParams::default();
    for san in sans {
        params.subject_alt_names.push(match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(san.clone().try_into().map_err(cert_err("DNS SAN"))?),
        });
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, 365);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_err("sign certificate"))?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The subject of a certificate signing request, after its signature has
/// been checked: (common name, organizations).
pub fn csr_subject(csr_pem: &str) -> Result<(String, Vec<String>), PkiError> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(cert_err("parse the certificate signing request"))?;
    let mut cn = String::new();
    let mut orgs = Vec::new();
    for (ty, value) in csr.params.distinguished_name.iter() {
        let value = dn_text(value);
        match ty {
            DnType::CommonName => cn = value,
            DnType::OrganizationName => orgs.push(value),
            _ => {}
        }
    }
    Ok((cn, orgs))
}

/// The names a certificate signing request asks for: (DNS names, IP
/// addresses, whether it asks for anything else: emails, URIs, other
/// names).
pub fn csr_names(csr_pem: &str) -> Result<(Vec<String>, Vec<IpAddr>, bool), PkiError> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(cert_err("parse the certificate signing request"))?;
    let (mut dns, mut ips, mut other) = (Vec::new(), Vec::new(), false);
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::DnsName(n) => dns.push(n.as_str().to_string()),
            SanType::IpAddress(ip) => ips.push(*ip),
            _ => other = true,
        }
    }
    Ok((dns, ips, other))
}

fn dn_text(v: &rcgen::DnValue) -> String {
    match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_string(),
        rcgen::DnValue::BmpString(_) | rcgen::DnValue::UniversalString(_) => String::new(),
        _ => String::new(),
    }
}

/// Sign a certificate signing request with `ca`: the requester's subject
/// and key, for `seconds`, as a client (or serving) certificate.
pub fn sign_csr(
    ca: &CertPair,
    csr_pem: &str,
    server: bool,
    seconds: i64,
) -> Result<String, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(cert_err("parse CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(cert_err("parse CA cert"))?;
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(cert_err("parse the certificate signing request"))?;
    let p = &mut csr.params;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    if !server {
        p.subject_alt_names.clear();
    }
    p.use_authority_key_identifier_extension = true;
    // Backdated for clocks a little behind, by 5 minutes or a tenth of a
    // short life (kube-controller-manager's signer does the same).
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::seconds((seconds / 10).min(300));
    p.not_after = now + time::Duration::seconds(seconds);
    let cert = csr
        .signed_by(&issuer)
        .map_err(cert_err("sign the request"))?;
    Ok(cert.pem())
}

/// kubeadm's CA pin of a CA certificate (`sha256:` and the hex SHA-256
/// of its SubjectPublicKeyInfo).
pub use keelson_host::serve::ca_cert_hash;

impl Pki {
    /// Load the PKI under `data_dir/pki`, creating what is missing. The serving
    /// certificate is reissued when `sans` names something it lacks.
    pub fn load_or_create(data_dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
        let dir = data_dir.join("pki");
        fs::create_dir_all(&dir).map_err(|source| PkiError::Io {
            operation: "create directory",
            path: dir.clone(),
            source,
        })?;
        let ca = match read_pair(&dir, "ca") {
            Some(ca) => ca,
            None => {
                let ca = new_ca()?;
                write_pair(&dir, "ca", &ca)?;
                // A new CA invalidates everything it did not sign.
                for name in ["apiserver", "admin", NODE_CLIENT] {
                    let _ = fs::remove_file(dir.join(format!("{name}.crt")));
                }
                ca
            }
        };
        let sans_file = dir.join("apiserver.sans");
        let wanted = sans.join(",");
        let serving = match (read_pair(&dir, "apiserver"), fs::read_to_string(&sans_file)) {
            (Some(pair), Ok(old)) if old == wanted => pair,
            _ => {
                let pair = issue(&ca, "kube-apiserver", &[], sans, true)?;
                write_pair(&dir, "apiserver", &pair)?;
                write_file(&sans_file, &wanted, 0o644)?;
                pair
            }
        };
        let admin = match read_pair(&dir, "admin") {
            Some(pair) => pair,
            None => {
                let pair = issue(&ca, "keelson-admin", &["system:masters"], &[], false)?;
                write_pair(&dir, "admin", &pair)?;
                pair
            }
        };
        let node_client = match read_pair(&dir, NODE_CLIENT) {
            Some(pair) => pair,
            None => {
                let pair = issue(
                    &ca,
                    "kube-apiserver-kubelet-client",
                    &["system:masters"],
                    &[],
                    false,
                )?;
                write_pair(&dir, NODE_CLIENT, &pair)?;
                pair
            }
        };
        Ok(Pki {
            dir,
            ca,
            serving,
            admin,
            node_client,
        })
    }

    /// Write a kubeconfig for `client` that trusts this CA and talks to `server_url`.
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        server_url: &str,
        user: &str,
        client: &CertPair,
    ) -> Result<(), PkiError> {
        write_file(
            path,
            &kubeconfig(&self.ca.cert_pem, server_url, user, client),
            0o600,
        )
    }
}

/// Render a kubeconfig (YAML) with embedded certificates.
pub fn kubeconfig(ca_pem: &str, server_url: &str, user: &str, client: &CertPair) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keelson\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: keelson\n  context:\n    cluster: keelson\n    user: {user}\ncurrent-context: keelson\n",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let a = Pki::load_or_create(dir.path(), &sans).unwrap();
        let b = Pki::load_or_create(dir.path(), &sans).unwrap();
        assert_eq!(a.ca.cert_pem, b.ca.cert_pem);
        assert_eq!(a.serving.cert_pem, b.serving.cert_pem);
        // A new SAN reissues the serving certificate but keeps the CA.
        let mut more = sans.clone();
        more.push("10.96.0.1".into());
        let c = Pki::load_or_create(dir.path(), &more).unwrap();
        assert_eq!(a.ca.cert_pem, c.ca.cert_pem);
        assert_ne!(a.serving.cert_pem, c.serving.cert_pem);
        assert_eq!(a.admin.cert_pem, c.admin.cert_pem);
        assert_eq!(a.node_client.cert_pem, c.node_client.cert_pem);
        assert_ne!(a.node_client.cert_pem, a.admin.cert_pem);
    }
}
