//! Registry credentials in Docker's config formats, as the kubelet reads
//! them from `imagePullSecrets` (`kubernetes.io/dockerconfigjson`: a
//! `.dockerconfigjson` key holding `{"auths": {...}}`;
//! `kubernetes.io/dockercfg`: a `.dockercfg` key holding the map itself) and
//! from a node-level `config.json`. Pure: bytes in, credentials out.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The registry it is for, normalised: `host[:port]` (Docker Hub is
    /// `docker.io`), optionally with a path prefix (`host/project`).
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Credential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

/// A registry key of a Docker config as `host[:port][/path]`: the scheme,
/// a trailing slash and Docker Hub's legacy `/v1/` URL are dropped.
pub fn normalize_registry(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let k = k.strip_suffix("/v1").or(k.strip_suffix("/v2")).unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        other => other.to_string(),
    }
}

fn entries(map: BTreeMap<String, Entry>) -> Result<Vec<Credential>, String> {
    let mut out = Vec::new();
    for (key, e) in map {
        let (username, password) = match (e.username, e.password, e.auth) {
            (Some(u), Some(p), _) if !u.is_empty() => (u, p),
            (_, _, Some(a)) if !a.is_empty() => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .map_err(|_| format!("registry {key}: \"auth\" is not base64"))?;
                let text = String::from_utf8(raw)
                    .map_err(|_| format!("registry {key}: \"auth\" is not UTF-8"))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| format!("registry {key}: \"auth\" is not user:password"))?;
                (u.to_string(), p.to_string())
            }
            _ => continue, // e.g. a credential helper entry: nothing to use
        };
        out.push(Credential {
            registry: normalize_registry(&key),
            username,
            password,
        });
    }
    Ok(out)
}

/// Credentials of a `config.json` / `.dockerconfigjson` (`{"auths": ...}`).
pub fn parse_config_json(bytes: &[u8]) -> Result<Vec<Credential>, String> {
    let c: ConfigJson =
        serde_json::from_slice(bytes).map_err(|e| format!("not a Docker config.json: {e}"))?;
    entries(c.auths)
}

/// Credentials of a legacy `.dockercfg` (the `auths` map alone).
pub fn parse_dockercfg(bytes: &[u8]) -> Result<Vec<Credential>, String> {
    let m: BTreeMap<String, Entry> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a .dockercfg: {e}"))?;
    entries(m)
}

/// The credentials that apply to `registry/repository`, most specific
/// first (a `host/path` entry before a `host` one), as the kubelet's
/// keyring orders them.
pub fn matching<'a>(
    creds: &'a [Credential],
    registry: &str,
    repository: &str,
) -> Vec<&'a Credential> {
    let full = format!("{registry}/{repository}");
    let mut out: Vec<&Credential> = creds
        .iter()
        .filter(|c| {
            c.registry == registry
                || (full.starts_with(&c.registry) && full[c.registry.len()..].starts_with('/'))
        })
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.registry.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn config_json_with_auth_or_username_password() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "10.0.0.5:5000": {{"username": "u", "password": "p"}},
                "registry.example/team": {{"auth": "{}"}},
                "helper.example": {{"identitytoken": "x"}}
            }}}}"#,
            b64("hub:pw"),
            b64("team:pw:with:colons")
        );
        let c = parse_config_json(json.as_bytes()).unwrap();
        let mut regs: Vec<&str> = c.iter().map(|c| c.registry.as_str()).collect();
        regs.sort();
        assert_eq!(
            regs,
            ["10.0.0.5:5000", "docker.io", "registry.example/team"]
        );
        let by = |r: &str| c.iter().find(|c| c.registry == r).unwrap();
        let hub = by("docker.io");
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("hub", "pw")
        );
        assert_eq!(by("registry.example/team").password, "pw:with:colons");
        assert!(
            !format!("{hub:?}").contains("pw"),
            "Debug shows no password"
        );
    }

    #[test]
    fn legacy_dockercfg() {
        let c =
            parse_dockercfg(format!(r#"{{"r.example": {{"auth": "{}"}}}}"#, b64("a:b")).as_bytes())
                .unwrap();
        assert_eq!(c[0].registry, "r.example");
    }

    #[test]
    fn malformed_configs_say_why() {
        assert!(
            parse_config_json(b"not json")
                .unwrap_err()
                .contains("config.json")
        );
        let bad = br#"{"auths": {"r": {"auth": "%%%"}}}"#;
        assert!(parse_config_json(bad).unwrap_err().contains("not base64"));
        let bad = format!(r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#, b64("nocolon"));
        assert!(
            parse_config_json(bad.as_bytes())
                .unwrap_err()
                .contains("user:password")
        );
    }

    #[test]
    fn the_most_specific_entry_comes_first() {
        let c = |r: &str| Credential {
            registry: r.into(),
            username: r.into(),
            password: String::new(),
        };
        let all = [
            c("registry.example"),
            c("registry.example/team"),
            c("other"),
        ];
        let m = matching(&all, "registry.example", "team/app");
        assert_eq!(
            m.iter().map(|c| c.registry.as_str()).collect::<Vec<_>>(),
            ["registry.example/team", "registry.example"]
        );
        assert_eq!(matching(&all, "registry.example", "teamx/app").len(), 1);
        assert!(matching(&all, "nope", "x").is_empty());
    }
}
