//! Authentication: a client certificate signed by the cluster CA (CN is the
//! user, O the groups), a bearer token from `DIR/tokens.csv`
//! (`token,user,uid,"group1,group2"`, as kube-apiserver's --token-auth-file)
//! a bootstrap token ([`super::nodejoin`]) or a service account token
//! ([`super::satoken`]). Anything else is 401.
//! Every authenticated user is also in `system:authenticated`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use rand::Rng;

use super::ServerError;

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// Extra attributes (a service account token's pod and node).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";

impl UserInfo {
    /// Who a request without credentials is (only for the public paths).
    pub fn anonymous() -> UserInfo {
        UserInfo {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
            extra: BTreeMap::new(),
        }
    }
}

/// The verified client certificate's identity for one connection, if any.
#[derive(Clone, Debug, Default)]
pub struct PeerIdentity(pub Option<UserInfo>);

pub struct Tokens {
    by_token: HashMap<String, UserInfo>,
}

impl Tokens {
    /// Parse a token file.
    pub fn parse(text: &str) -> Tokens {
        let mut by_token = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, groups) = match line.split_once(",\"") {
                Some((h, g)) => (h, g.trim_end_matches('"')),
                None => (line, ""),
            };
            let mut parts = head.splitn(4, ',');
            let (Some(token), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let uid = parts.next().unwrap_or_default();
            let mut groups: Vec<String> = groups
                .split(',')
                .filter(|g| !g.is_empty())
                .map(String::from)
                .collect();
            if let Some(g) = parts.next() {
                groups.extend(g.split(',').filter(|g| !g.is_empty()).map(String::from));
            }
            by_token.insert(
                token.to_string(),
                UserInfo {
                    name: name.to_string(),
                    uid: uid.to_string(),
                    groups,
                    extra: BTreeMap::new(),
                },
            );
        }
        Tokens { by_token }
    }

    /// Load `DIR/tokens.csv`, creating it with an admin token on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Tokens, ServerError> {
        let path = data_dir.join("tokens.csv");
        if !path.exists() {
            let token: String = rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(40)
                .map(char::from)
                .collect();
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| ServerError::Io {
                    operation: format!("create {}", path.display()),
                    source,
                })?;
            writeln!(f, "{token},keelson-admin,keelson-admin,\"system:masters\"").map_err(
                |source| ServerError::Io {
                    operation: format!("write {}", path.display()),
                    source,
                },
            )?;
            std::fs::write(data_dir.join("admin.token"), &token).map_err(|source| {
                ServerError::Io {
                    operation: "write admin.token".into(),
                    source,
                }
            })?;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ServerError::Io {
            operation: format!("read {}", path.display()),
            source,
        })?;
        Ok(Tokens::parse(&text))
    }
}

/// Service account tokens: the key they are checked with and where their
/// bound objects are looked up.
pub struct ServiceAccounts {
    pub issuer: Arc<super::satoken::TokenIssuer>,
    pub registry: Arc<crate::api::registry::Registry>,
}

pub struct Authenticator {
    tokens: Tokens,
    service_accounts: Option<ServiceAccounts>,
}

impl Authenticator {
    pub fn new(tokens: Tokens, service_accounts: Option<ServiceAccounts>) -> Self {
        Authenticator {
            tokens,
            service_accounts,
        }
    }

    /// The user of a request, from its connection's certificate or its
    /// `Authorization: Bearer` header.
    pub async fn authenticate(
        &self,
        peer: &PeerIdentity,
        authorization: Option<&str>,
    ) -> Option<UserInfo> {
        let mut user = self.user(peer, authorization).await?;
        if !user.groups.iter().any(|g| g == AUTHENTICATED) {
            user.groups.push(AUTHENTICATED.to_string());
        }
        Some(user)
    }

    async fn user(&self, peer: &PeerIdentity, authorization: Option<&str>) -> Option<UserInfo> {
        if let Some(user) = &peer.0 {
            return Some(user.clone());
        }
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if let Some(u) = self.tokens.by_token.get(token) {
            return Some(u.clone());
        }
        let sa = self.service_accounts.as_ref()?;
        if super::nodejoin::parse_token(token).is_some() {
            return super::nodejoin::authenticate(&sa.registry, token).await;
        }
        match super::satoken::authenticate(&sa.registry, &sa.issuer, token).await {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::info!("service account token refused: {e}");
                None
            }
        }
    }
}

/// The user a verified client certificate names.
pub fn user_from_cert(der: &[u8]) -> Option<UserInfo> {
    let (name, groups) = keelson_host::serve::cert_subject(der)?;
    Some(UserInfo {
        name,
        uid: String::new(),
        groups,
        extra: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_file() {
        let t = Tokens::parse("# comment\nabc,alice,1,\"a,b\"\ndef,bob,2\n");
        let a = Authenticator::new(t, None);
        let none = PeerIdentity::default();
        assert_eq!(
            a.authenticate(&none, Some("Bearer abc"))
                .await
                .unwrap()
                .groups,
            vec!["a", "b", AUTHENTICATED]
        );
        assert_eq!(
            a.authenticate(&none, Some("Bearer def"))
                .await
                .unwrap()
                .name,
            "bob"
        );
        assert!(a.authenticate(&none, Some("Bearer nope")).await.is_none());
        assert!(a.authenticate(&none, Some("Basic abc")).await.is_none());
        assert!(a.authenticate(&none, None).await.is_none());
    }

    #[test]
    fn cert_subject() {
        let ca = crate::server::pki::Pki::load_or_create(tempfile::tempdir().unwrap().path(), &[])
            .unwrap();
        let pem = ca.admin.cert_pem;
        let der = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
        let u = user_from_cert(&der).unwrap();
        assert_eq!(u.name, "keelson-admin");
        assert_eq!(u.groups, vec!["system:masters"]);
    }
}
