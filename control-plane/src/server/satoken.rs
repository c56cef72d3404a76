//! Service account tokens, as kube-apiserver issues and checks them: bound,
//! expiring JWTs (ES256, signed by `sa.key` in the server's PKI directory)
//! from the `serviceaccounts/token` subresource (TokenRequest), and their
//! authentication: signature, issuer, audience and time, then the bound
//! objects — the ServiceAccount and the Pod, Secret or Node a token names
//! must still exist with the same UID, so a pod's token stops working when
//! the pod is deleted.
//!
//! The JWT framing is three base64url parts; the signing and verification
//! are ring's (already the TLS provider of the whole workspace).

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::UserInfo;
use super::pki::PkiError;
use crate::api::errors::{ApiError, ApiResult, Cause};
use crate::api::registry::{Registry, now_rfc3339};
use crate::api::resources;

/// The issuer (`iss`) and default audience, kube-apiserver's usual
/// `--service-account-issuer`.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A TokenRequest's `expirationSeconds` when it names none (one hour), and
/// the bounds kube-apiserver enforces.
pub const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;
/// Clock skew allowed on `nbf`/`iat` (kube-apiserver's leeway).
const LEEWAY: i64 = 60;

/// One bound object in the claims.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` private claims.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
}

/// `aud` is a string or a list in JWTs; always a list here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// A service account token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    #[serde(with = "audience")]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

mod audience {
    use super::Audience;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match Audience::deserialize(d)? {
            Audience::One(a) => vec![a],
            Audience::Many(a) => a,
        })
    }
}

/// Why a token was refused (logged; the client only sees 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a JWT")]
    Malformed,
    #[error("algorithm {0:?} is not ES256")]
    Algorithm(String),
    #[error("invalid signature")]
    Signature,
    #[error("issuer {0:?} is not this server's")]
    Issuer(String),
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("audiences {0:?} do not include this server's")]
    Audience(Vec<String>),
    #[error("{0}")]
    Bound(String),
}

/// The signing key and what tokens are checked against.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    kid: String,
    issuer: String,
    audiences: Vec<String>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

fn key_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Key(format!("service account key: {e}"))
}

impl TokenIssuer {
    /// The key in `DIR/sa.key` (PKCS#8 PEM, P-256), created on first start.
    pub fn load_or_create(dir: &Path, issuer: &str) -> Result<TokenIssuer, PkiError> {
        let path = dir.join("sa.key");
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(key_err)?;
                let pem = kp.serialize_pem();
                keelson_host::fs::write_atomic_mode(&path, pem.as_bytes(), 0o600)
                    .map_err(key_err)?;
                pem
            }
            Err(e) => return Err(key_err(format!("read {}: {e}", path.display()))),
        };
        let der = rcgen::KeyPair::from_pem(&pem)
            .map_err(key_err)?
            .serialize_der();
        Self::from_pkcs8(&der, issuer)
    }

    /// An issuer with the PKCS#8 P-256 key `der`.
    pub fn from_pkcs8(der: &[u8], issuer: &str) -> Result<TokenIssuer, PkiError> {
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
            &SystemRandom::new(),
        )
        .map_err(key_err)?;
        // As kube-apiserver: the key ID is a hash of the public key.
        let kid = B64.encode(ring::digest::digest(
            &ring::digest::SHA256,
            key.public_key().as_ref(),
        ));
        Ok(TokenIssuer {
            key,
            kid,
            issuer: issuer.to_string(),
            audiences: vec![issuer.to_string()],
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The signed token of `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let signed = format!("{}.{}", B64.encode(header.to_string()), B64.encode(payload));
        let sig = self
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .expect("ECDSA signing");
        format!("{signed}.{}", B64.encode(sig.as_ref()))
    }

    /// The claims of `token` if this server signed it and it is valid at
    /// `now` (seconds since the epoch) for one of the server's audiences.
    /// Bound objects are not looked at here: see [`authenticate`].
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        let alg = header["alg"].as_str().unwrap_or_default();
        if alg != "ES256" {
            return Err(TokenError::Algorithm(alg.to_string()));
        }
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| TokenError::Signature)?;
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer(claims.iss));
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if now + LEEWAY < claims.nbf || now + LEEWAY < claims.iat {
            return Err(TokenError::NotYetValid);
        }
        if !claims.aud.iter().any(|a| self.audiences.contains(a)) {
            return Err(TokenError::Audience(claims.aud));
        }
        Ok(claims)
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn uid_of(v: &Value) -> String {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn deleted_before(v: &Value, now: &str) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .is_some_and(|t| t <= now)
}

async fn get(reg: &Registry, kind: &str, ns: Option<&str>, name: &str) -> ApiResult<Value> {
    let rt = resources::find_kind("", kind).expect("core kind");
    reg.get(rt, ns, name).await
}

/// `POST .../serviceaccounts/NAME/token`: a TokenRequest answered with a
/// signed token, as kube-apiserver does (201 with `status.token` and
/// `status.expirationTimestamp`).
pub async fn token_request(
    reg: &Registry,
    issuer: &TokenIssuer,
    ns: &str,
    sa_name: &str,
    body: &Value,
) -> ApiResult<Value> {
    let invalid = |field: &str, value: String, detail: &str| {
        ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            sa_name,
            vec![Cause::invalid(field, &value, detail)],
        )
    };
    let sa = get(reg, "ServiceAccount", Some(ns), sa_name).await?;
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let expiration = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION);
    if expiration < MIN_EXPIRATION {
        return Err(invalid(
            "spec.expirationSeconds",
            expiration.to_string(),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > MAX_EXPIRATION {
        return Err(invalid(
            "spec.expirationSeconds",
            expiration.to_string(),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    if audiences.is_empty() {
        audiences = issuer.audiences.clone();
    }
    let mut k8s = KubernetesClaims {
        namespace: ns.to_string(),
        serviceaccount: Ref {
            name: sa_name.to_string(),
            uid: uid_of(&sa),
        },
        ..Default::default()
    };
    if let Some(bound) = spec.get("boundObjectRef").filter(|b| !b.is_null()) {
        let kind = bound["kind"].as_str().unwrap_or_default();
        let name = bound["name"].as_str().unwrap_or_default();
        let want_uid = bound["uid"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(invalid(
                "spec.boundObjectRef.name",
                String::new(),
                "a bound object needs a name",
            ));
        }
        let obj = match kind {
            "Pod" | "Secret" => get(reg, kind, Some(ns), name).await?,
            "Node" => get(reg, kind, None, name).await?,
            other => {
                return Err(invalid(
                    "spec.boundObjectRef.kind",
                    other.to_string(),
                    "supported values: \"Pod\", \"Secret\", \"Node\"",
                ));
            }
        };
        let uid = uid_of(&obj);
        if !want_uid.is_empty() && want_uid != uid {
            return Err(ApiError::conflict(
                &format!("{}s", kind.to_lowercase()),
                name,
                format!(
                    "the UID in the bound object reference ({want_uid}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
                ),
            ));
        }
        let r = Ref {
            name: name.to_string(),
            uid,
        };
        match kind {
            "Pod" => {
                // A pod-bound token also names the pod's node.
                if let Some(node) = obj.pointer("/spec/nodeName").and_then(Value::as_str)
                    && let Ok(n) = get(reg, "Node", None, node).await
                {
                    k8s.node = Some(Ref {
                        name: node.to_string(),
                        uid: uid_of(&n),
                    });
                }
                k8s.pod = Some(r);
            }
            "Secret" => k8s.secret = Some(r),
            _ => k8s.node = Some(r),
        }
    }
    let now = now_secs();
    let claims = Claims {
        iss: issuer.issuer.clone(),
        sub: format!("system:serviceaccount:{ns}:{sa_name}"),
        aud: audiences.clone(),
        exp: now + expiration,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: k8s,
    };
    let token = issuer.sign(&claims);
    let expires = chrono_rfc3339(claims.exp);
    let mut spec = spec;
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(expiration);
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {
            "name": sa_name,
            "namespace": ns,
            "creationTimestamp": now_rfc3339(),
        },
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires},
    }))
}

/// `secs` since the epoch as RFC 3339 (UTC, seconds).
fn chrono_rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The user a service account token names, if it is valid now and every
/// object it is bound to still exists with the same UID (and is not
/// being deleted): kube-apiserver's service account authenticator.
pub async fn authenticate(
    reg: &Registry,
    issuer: &TokenIssuer,
    token: &str,
) -> Result<UserInfo, TokenError> {
    let claims = issuer.verify(token, now_secs())?;
    let k = &claims.kubernetes;
    let ns = k.namespace.as_str();
    let now = now_rfc3339();
    let check = |kind: &'static str, r: &Ref, got: ApiResult<Value>| -> Result<(), TokenError> {
        let obj = got.map_err(|e| {
            TokenError::Bound(format!(
                "{kind} {ns}/{} of the token: {}",
                r.name, e.message
            ))
        })?;
        if uid_of(&obj) != r.uid {
            return Err(TokenError::Bound(format!(
                "{kind} {}: UID {} is not the token's {}",
                r.name,
                uid_of(&obj),
                r.uid
            )));
        }
        if deleted_before(&obj, &now) {
            return Err(TokenError::Bound(format!(
                "{kind} {} of the token is being deleted",
                r.name
            )));
        }
        Ok(())
    };
    let sa = &k.serviceaccount;
    check(
        "ServiceAccount",
        sa,
        get(reg, "ServiceAccount", Some(ns), &sa.name).await,
    )?;
    if let Some(p) = &k.pod {
        check("Pod", p, get(reg, "Pod", Some(ns), &p.name).await)?;
    }
    if let Some(s) = &k.secret {
        check("Secret", s, get(reg, "Secret", Some(ns), &s.name).await)?;
    }
    let mut extra = BTreeMap::new();
    if let Some(p) = &k.pod {
        extra.insert(
            "authentication.kubernetes.io/pod-name".to_string(),
            vec![p.name.clone()],
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid".to_string(),
            vec![p.uid.clone()],
        );
    }
    if let Some(n) = &k.node {
        extra.insert(
            "authentication.kubernetes.io/node-name".to_string(),
            vec![n.name.clone()],
        );
        extra.insert(
            "authentication.kubernetes.io/node-uid".to_string(),
            vec![n.uid.clone()],
        );
    }
    extra.insert(
        "authentication.kubernetes.io/credential-id".to_string(),
        vec![format!("JTI={}", claims.jti)],
    );
    Ok(UserInfo {
        name: claims.sub.clone(),
        uid: sa.uid.clone(),
        groups: vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".to_string(),
        ],
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> TokenIssuer {
        let dir = tempfile::tempdir().unwrap();
        TokenIssuer::load_or_create(dir.path(), DEFAULT_ISSUER).unwrap()
    }

    fn claims(now: i64) -> Claims {
        Claims {
            iss: DEFAULT_ISSUER.into(),
            sub: "system:serviceaccount:default:default".into(),
            aud: vec![DEFAULT_ISSUER.into()],
            exp: now + 600,
            iat: now,
            nbf: now,
            jti: "j".into(),
            kubernetes: KubernetesClaims {
                namespace: "default".into(),
                serviceaccount: Ref {
                    name: "default".into(),
                    uid: "u".into(),
                },
                ..Default::default()
            },
        }
    }

    #[test]
    fn signed_tokens_verify_and_tampering_does_not() {
        let i = issuer();
        let now = 1_800_000_000;
        let t = i.sign(&claims(now));
        assert_eq!(i.verify(&t, now + 1).unwrap(), claims(now));
        // Another key's signature.
        let other = issuer();
        assert_eq!(other.verify(&t, now), Err(TokenError::Signature));
        // A changed payload.
        let mut forged = claims(now);
        forged.sub = "system:serviceaccount:kube-system:admin".into();
        let body = B64.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let f = format!("{}.{body}.{}", parts[0], parts[2]);
        assert_eq!(i.verify(&f, now), Err(TokenError::Signature));
        // alg none.
        let none = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), parts[1]);
        assert_eq!(
            i.verify(&none, now),
            Err(TokenError::Algorithm("none".into()))
        );
        assert_eq!(i.verify("abc", now), Err(TokenError::Malformed));
    }

    #[test]
    fn time_issuer_and_audience_are_checked() {
        let i = issuer();
        let now = 1_800_000_000;
        let t = i.sign(&claims(now));
        assert_eq!(i.verify(&t, now + 600), Err(TokenError::Expired));
        assert_eq!(i.verify(&t, now - 3600), Err(TokenError::NotYetValid));
        let mut c = claims(now);
        c.aud = vec!["vault".into()];
        assert!(matches!(
            i.verify(&i.sign(&c), now),
            Err(TokenError::Audience(_))
        ));
        let mut c = claims(now);
        c.iss = "https://elsewhere".into();
        assert!(matches!(
            i.verify(&i.sign(&c), now),
            Err(TokenError::Issuer(_))
        ));
    }

    #[test]
    fn a_string_audience_parses_as_a_list() {
        let c: Claims = serde_json::from_value(json!({
            "iss": "i", "sub": "s", "aud": "one", "exp": 2, "iat": 1, "nbf": 1, "jti": "j",
            "kubernetes.io": {"namespace": "n", "serviceaccount": {"name": "a", "uid": "u"}}
        }))
        .unwrap();
        assert_eq!(c.aud, vec!["one"]);
    }

    #[test]
    fn the_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = TokenIssuer::load_or_create(dir.path(), DEFAULT_ISSUER).unwrap();
        let b = TokenIssuer::load_or_create(dir.path(), DEFAULT_ISSUER).unwrap();
        let now = 1_800_000_000;
        assert!(b.verify(&a.sign(&claims(now)), now).is_ok());
    }
}
