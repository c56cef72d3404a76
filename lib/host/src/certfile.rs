//! A certificate and key read from PEM files and read again when the
//! certificate file changes, so that a certificate renewed on disk is
//! presented from the next TLS handshake on, with no restart: as a client
//! certificate (rustls `ResolvesClientCert`) or a serving one
//! (`ResolvesServerCert`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The pair in `cert` and `key` (PEM).
#[derive(Debug)]
pub struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Option<(SystemTime, Arc<CertifiedKey>)>>,
}

impl FileCert {
    pub fn new(cert: PathBuf, key: PathBuf) -> FileCert {
        FileCert {
            cert,
            key,
            current: RwLock::new(None),
        }
    }

    /// The pair as the files hold it now (None when they do not parse).
    pub fn load(&self) -> Option<Arc<CertifiedKey>> {
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
        let k = Arc::new(CertifiedKey::new(certs, signing));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((modified, k.clone()));
        Some(k)
    }
}

impl rustls::client::ResolvesClientCert for FileCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.load()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let k = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (k.cert.pem(), k.signing_key.serialize_pem())
    }

    #[test]
    fn a_replaced_pair_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("a.crt"), dir.path().join("a.key"));
        let f = FileCert::new(c.clone(), k.clone());
        assert!(f.load().is_none(), "no files yet");
        let (cert1, key1) = self_signed("one");
        std::fs::write(&c, &cert1).unwrap();
        std::fs::write(&k, &key1).unwrap();
        let first = f.load().unwrap();
        assert!(Arc::ptr_eq(&first, &f.load().unwrap()), "cached");
        let (cert2, key2) = self_signed("two");
        std::fs::write(&k, &key2).unwrap();
        std::fs::write(&c, &cert2).unwrap();
        // A later modification time (some file systems keep whole seconds).
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&c)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let second = f.load().unwrap();
        assert_ne!(first.cert[0], second.cert[0]);
    }
}
