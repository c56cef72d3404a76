//! What the agent writes into a pod's volumes: configMap, secret,
//! downwardAPI and projected (configMap, secret, downwardAPI,
//! serviceAccountToken sources) volumes, with `items`, `defaultMode`/`mode`
//! and `optional` as the kubelet reads them. Pure: a volume and the objects
//! it refers to in, the files it holds out. The writing (atomically, the
//! kubelet's way) is in [`super::atomic`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, Volume,
};

use super::spec::{self, FieldValues};

/// The kubelet's default file mode for these volumes.
pub const DEFAULT_MODE: i32 = 0o644;
/// serviceAccountToken `expirationSeconds` when unset (and the minimum the
/// API server accepts is 600).
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// A volume the agent fills could not be filled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// A referenced object or key is missing and the reference is not optional.
    #[error("volume {volume}: {what}")]
    Missing {
        /// The volume.
        volume: String,
        /// What is missing, e.g. `configmap "web" key "index.html" not found`.
        what: String,
    },
    /// A path or field the spec names cannot be used.
    #[error("volume {volume}: {what}")]
    Invalid {
        /// The volume.
        volume: String,
        /// What is wrong.
        what: String,
    },
}

/// One file of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Its bytes.
    pub data: Vec<u8>,
    /// Its permission bits.
    pub mode: u32,
}

/// A volume's files by path relative to the volume's root.
pub type Files = BTreeMap<String, File>;

/// A service account token a projected volume asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokenSpec {
    /// The audience (empty: the API server's).
    pub audience: String,
    /// Requested lifetime.
    pub expiration_seconds: i64,
}

/// The objects the pod's volumes and environment read, fetched for one pass.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// ConfigMaps by name (None: not found).
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    /// Secrets by name (None: not found).
    pub secrets: BTreeMap<String, Option<Secret>>,
    /// Tokens by what was asked for.
    pub tokens: BTreeMap<TokenSpec, String>,
    /// Field values the pod object does not hold (IPs, node).
    pub fields: FieldValues,
}

/// What a pod refers to: ConfigMaps, Secrets (volumes, env, envFrom) and
/// service account tokens (projected volumes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    /// ConfigMap names.
    pub config_maps: BTreeSet<String>,
    /// Secret names.
    pub secrets: BTreeSet<String>,
    /// Tokens.
    pub tokens: BTreeSet<TokenSpec>,
}

impl Refs {
    /// Whether a periodic refresh has anything to follow.
    pub fn is_empty(&self) -> bool {
        self.config_maps.is_empty() && self.secrets.is_empty() && self.tokens.is_empty()
    }
}

fn containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.map(|s| s.containers.iter())
        .into_iter()
        .flatten()
        .chain(
            spec.and_then(|s| s.init_containers.as_ref())
                .into_iter()
                .flatten(),
        )
}

/// Everything `pod` refers to.
pub fn references(pod: &Pod) -> Refs {
    let mut r = Refs::default();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        if let Some(cm) = &v.config_map {
            r.config_maps.insert(cm.name.clone());
        }
        if let Some(s) = &v.secret
            && let Some(n) = &s.secret_name
        {
            r.secrets.insert(n.clone());
        }
        for src in v
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(cm) = &src.config_map {
                r.config_maps.insert(cm.name.clone());
            }
            if let Some(s) = &src.secret {
                r.secrets.insert(s.name.clone());
            }
            if let Some(t) = &src.service_account_token {
                r.tokens.insert(TokenSpec {
                    audience: t.audience.clone().unwrap_or_default(),
                    expiration_seconds: t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
                });
            }
        }
    }
    for c in containers(pod) {
        for e in c.env.iter().flatten() {
            if let Some(src) = &e.value_from {
                if let Some(k) = &src.config_map_key_ref {
                    r.config_maps.insert(k.name.clone());
                }
                if let Some(k) = &src.secret_key_ref {
                    r.secrets.insert(k.name.clone());
                }
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(cm) = &f.config_map_ref {
                r.config_maps.insert(cm.name.clone());
            }
            if let Some(s) = &f.secret_ref {
                r.secrets.insert(s.name.clone());
            }
        }
    }
    r
}

/// Whether the agent writes this volume's files (and so refreshes them).
pub fn is_written(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

/// Whether the volume may hold secrets (it then lives on tmpfs, never on
/// disk): secret and projected volumes.
pub fn is_sensitive(v: &Volume) -> bool {
    v.secret.is_some() || v.projected.is_some()
}

fn mode_of(mode: Option<i32>, default: Option<i32>) -> u32 {
    (mode.or(default).unwrap_or(DEFAULT_MODE) & 0o777) as u32
}

/// A relative path inside a volume: no absolute path, no `..` element.
fn check_path(volume: &str, path: &str) -> Result<(), VolumeError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.split('/').any(|p| p == ".." || p.starts_with(".."));
    if bad {
        return Err(VolumeError::Invalid {
            volume: volume.into(),
            what: format!("path {path:?} must be relative, without '..'"),
        });
    }
    Ok(())
}

/// The keys of an object (`data` and `binaryData` of a ConfigMap, `data`
/// of a Secret) as bytes.
fn object_data(cm: Option<&ConfigMap>, secret: Option<&Secret>) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Some(cm) = cm {
        for (k, v) in cm.data.iter().flatten() {
            out.insert(k.clone(), v.clone().into_bytes());
        }
        for (k, v) in cm.binary_data.iter().flatten() {
            out.insert(k.clone(), v.0.clone());
        }
    }
    if let Some(s) = secret {
        for (k, v) in s.data.iter().flatten() {
            out.insert(k.clone(), v.0.clone());
        }
        for (k, v) in s.string_data.iter().flatten() {
            out.insert(k.clone(), v.clone().into_bytes());
        }
    }
    out
}

/// Files from a ConfigMap or Secret (`what` names it for errors): every
/// key, or the `items` (each key must exist unless `optional`).
#[allow(clippy::too_many_arguments)]
fn keyed_files(
    volume: &str,
    what: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    default_mode: Option<i32>,
    out: &mut Files,
) -> Result<(), VolumeError> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(VolumeError::Missing {
            volume: volume.into(),
            what: format!("{what} not found"),
        });
    };
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                check_path(volume, &k)?;
                out.insert(
                    k,
                    File {
                        data: v,
                        mode: mode_of(None, default_mode),
                    },
                );
            }
        }
        Some(items) => {
            for it in items {
                check_path(volume, &it.path)?;
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(
                            it.path.clone(),
                            File {
                                data: v.clone(),
                                mode: mode_of(it.mode, default_mode),
                            },
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(VolumeError::Missing {
                            volume: volume.into(),
                            what: format!("{what} key {:?} not found", it.key),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// `labels`/`annotations` as the downward API writes them: `key="value"`
/// lines, sorted, values escaped as Go's %q does for common characters.
fn map_file(m: Option<&BTreeMap<String, String>>) -> String {
    let mut out = String::new();
    for (k, v) in m.into_iter().flatten() {
        let esc = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .replace('\t', "\\t");
        out.push_str(&format!("{k}=\"{esc}\"\n"));
    }
    out.trim_end_matches('\n').to_string()
}

fn downward_files(
    pod: &Pod,
    volume: &str,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    fields: &FieldValues,
    out: &mut Files,
) -> Result<(), VolumeError> {
    let invalid = |what: String| VolumeError::Invalid {
        volume: volume.into(),
        what,
    };
    for it in items {
        check_path(volume, &it.path)?;
        let value = if let Some(fr) = &it.field_ref {
            match fr.field_path.as_str() {
                "metadata.labels" => map_file(pod.metadata.labels.as_ref()),
                "metadata.annotations" => map_file(pod.metadata.annotations.as_ref()),
                p => spec::field_ref(pod, p, fields)
                    .ok_or_else(|| invalid(format!("unsupported fieldPath {p}")))?,
            }
        } else if let Some(rf) = &it.resource_field_ref {
            let c = rf.container_name.as_deref().unwrap_or_default();
            let container = containers(pod)
                .find(|x| x.name == c)
                .ok_or_else(|| invalid(format!("resourceFieldRef: no container {c:?}")))?;
            spec::resource_field(container, rf, fields).map_err(invalid)?
        } else {
            return Err(invalid(format!(
                "item {}: no fieldRef or resourceFieldRef",
                it.path
            )));
        };
        out.insert(
            it.path.clone(),
            File {
                data: value.into_bytes(),
                mode: mode_of(it.mode, default_mode),
            },
        );
    }
    Ok(())
}

/// The files of `v` (a volume the agent writes, see [`is_written`]), from
/// `src`. `None` for other kinds of volume.
pub fn render(pod: &Pod, v: &Volume, src: &Sources) -> Result<Option<Files>, VolumeError> {
    let name = v.name.as_str();
    let mut out = Files::new();
    let cm_data = |n: &str| {
        src.config_maps
            .get(n)
            .and_then(|o| o.as_ref())
            .map(|cm| object_data(Some(cm), None))
    };
    let secret_data = |n: &str| {
        src.secrets
            .get(n)
            .and_then(|o| o.as_ref())
            .map(|s| object_data(None, Some(s)))
    };
    if let Some(cm) = &v.config_map {
        keyed_files(
            name,
            &format!("configmap {:?}", cm.name),
            cm_data(&cm.name),
            cm.items.as_ref(),
            cm.optional.unwrap_or(false),
            cm.default_mode,
            &mut out,
        )?;
    } else if let Some(s) = &v.secret {
        let sn = s.secret_name.clone().unwrap_or_default();
        keyed_files(
            name,
            &format!("secret {sn:?}"),
            secret_data(&sn),
            s.items.as_ref(),
            s.optional.unwrap_or(false),
            s.default_mode,
            &mut out,
        )?;
    } else if let Some(d) = &v.downward_api {
        downward_files(
            pod,
            name,
            d.items.as_deref().unwrap_or_default(),
            d.default_mode,
            &src.fields,
            &mut out,
        )?;
    } else if let Some(p) = &v.projected {
        for s in p.sources.iter().flatten() {
            if let Some(cm) = &s.config_map {
                keyed_files(
                    name,
                    &format!("configmap {:?}", cm.name),
                    cm_data(&cm.name),
                    cm.items.as_ref(),
                    cm.optional.unwrap_or(false),
                    p.default_mode,
                    &mut out,
                )?;
            }
            if let Some(sec) = &s.secret {
                keyed_files(
                    name,
                    &format!("secret {:?}", sec.name),
                    secret_data(&sec.name),
                    sec.items.as_ref(),
                    sec.optional.unwrap_or(false),
                    p.default_mode,
                    &mut out,
                )?;
            }
            if let Some(d) = &s.downward_api {
                downward_files(
                    pod,
                    name,
                    d.items.as_deref().unwrap_or_default(),
                    p.default_mode,
                    &src.fields,
                    &mut out,
                )?;
            }
            if let Some(t) = &s.service_account_token {
                check_path(name, &t.path)?;
                let spec = TokenSpec {
                    audience: t.audience.clone().unwrap_or_default(),
                    expiration_seconds: t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
                };
                let token = src.tokens.get(&spec).ok_or_else(|| VolumeError::Missing {
                    volume: name.into(),
                    what: format!(
                        "no service account token (audience {:?}) yet",
                        spec.audience
                    ),
                })?;
                // The kubelet writes tokens 0600 unless a mode says otherwise.
                out.insert(
                    t.path.clone(),
                    File {
                        data: token.clone().into_bytes(),
                        mode: mode_of(None, p.default_mode.or(Some(0o600))),
                    },
                );
            }
        }
    } else {
        return Ok(None);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn pod(volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1",
                          "labels": {"app": "web", "tier": "a\"b"}},
            "spec": {"volumes": volumes, "serviceAccountName": "sa",
                     "containers": [{"name": "c", "image": "i",
                        "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}},
                        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "envsec", "key": "k"}}}],
                        "envFrom": [{"configMapRef": {"name": "envcm"}}]}]},
        }))
        .unwrap()
    }

    fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        c
    }

    fn secret(name: &str, data: &[(&str, &[u8])]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        );
        s
    }

    fn vol(p: &Pod, i: usize) -> &Volume {
        &p.spec.as_ref().unwrap().volumes.as_ref().unwrap()[i]
    }

    fn text(f: &Files, path: &str) -> (String, u32) {
        let file = &f[path];
        (String::from_utf8(file.data.clone()).unwrap(), file.mode)
    }

    #[test]
    fn config_map_every_key_or_items_with_modes() {
        let p = pod(json!([
            {"name": "all", "configMap": {"name": "web"}},
            {"name": "some", "configMap": {"name": "web", "defaultMode": 0o400,
                "items": [{"key": "index.html", "path": "site/index.html", "mode": 0o600},
                          {"key": "other", "path": "o"}]}},
        ]));
        let mut src = Sources::default();
        src.config_maps.insert(
            "web".into(),
            Some(cm("web", &[("index.html", "<h1>hi</h1>"), ("other", "x")])),
        );
        let all = render(&p, vol(&p, 0), &src).unwrap().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(text(&all, "index.html"), ("<h1>hi</h1>".into(), 0o644));
        let some = render(&p, vol(&p, 1), &src).unwrap().unwrap();
        assert_eq!(
            text(&some, "site/index.html"),
            ("<h1>hi</h1>".into(), 0o600)
        );
        assert_eq!(text(&some, "o"), ("x".into(), 0o400));
    }

    #[test]
    fn missing_objects_and_keys_name_what_is_missing_unless_optional() {
        let p = pod(json!([
            {"name": "a", "configMap": {"name": "gone"}},
            {"name": "b", "configMap": {"name": "gone", "optional": true}},
            {"name": "c", "configMap": {"name": "web", "items": [{"key": "nokey", "path": "x"}]}},
            {"name": "d", "secret": {"secretName": "s", "items": [{"key": "nokey", "path": "x"}], "optional": true}},
        ]));
        let mut src = Sources::default();
        src.config_maps.insert("gone".into(), None);
        src.config_maps
            .insert("web".into(), Some(cm("web", &[("k", "v")])));
        src.secrets
            .insert("s".into(), Some(secret("s", &[("k", b"v")])));
        assert_eq!(
            render(&p, vol(&p, 0), &src).unwrap_err().to_string(),
            "volume a: configmap \"gone\" not found"
        );
        assert!(render(&p, vol(&p, 1), &src).unwrap().unwrap().is_empty());
        assert_eq!(
            render(&p, vol(&p, 2), &src).unwrap_err().to_string(),
            "volume c: configmap \"web\" key \"nokey\" not found"
        );
        assert!(render(&p, vol(&p, 3), &src).unwrap().unwrap().is_empty());
    }

    #[test]
    fn paths_may_not_leave_the_volume() {
        let p = pod(json!([
            {"name": "a", "configMap": {"name": "web", "items": [{"key": "k", "path": "../etc/passwd"}]}},
            {"name": "b", "configMap": {"name": "web", "items": [{"key": "k", "path": "/abs"}]}},
        ]));
        let mut src = Sources::default();
        src.config_maps
            .insert("web".into(), Some(cm("web", &[("k", "v")])));
        for i in 0..2 {
            assert!(matches!(
                render(&p, vol(&p, i), &src),
                Err(VolumeError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn secrets_downward_api_and_projected_sources() {
        let p = pod(json!([
            {"name": "s", "secret": {"secretName": "tls"}},
            {"name": "d", "downwardAPI": {"items": [
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}},
                {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}}]}},
            {"name": "token", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
        ]));
        let mut src = Sources::default();
        src.secrets.insert(
            "tls".into(),
            Some(secret("tls", &[("tls.key", b"\x00\x01key")])),
        );
        src.config_maps.insert(
            "kube-root-ca.crt".into(),
            Some(cm("kube-root-ca.crt", &[("ca.crt", "PEM")])),
        );
        src.tokens.insert(
            TokenSpec {
                audience: String::new(),
                expiration_seconds: 3607,
            },
            "jwt".into(),
        );
        let s = render(&p, vol(&p, 0), &src).unwrap().unwrap();
        assert_eq!(s["tls.key"].data, b"\x00\x01key");
        let d = render(&p, vol(&p, 1), &src).unwrap().unwrap();
        assert_eq!(text(&d, "name").0, "p");
        assert_eq!(text(&d, "labels").0, "app=\"web\"\ntier=\"a\\\"b\"");
        assert_eq!(text(&d, "mem").0, "64");
        assert_eq!(text(&d, "cpu").0, "250");
        let t = render(&p, vol(&p, 2), &src).unwrap().unwrap();
        assert_eq!(text(&t, "token"), ("jwt".into(), 0o600));
        assert_eq!(text(&t, "ca.crt").0, "PEM");
        assert_eq!(text(&t, "namespace").0, "ns");
        // Without the token yet: an error, not an empty file.
        src.tokens.clear();
        assert!(matches!(
            render(&p, vol(&p, 2), &src),
            Err(VolumeError::Missing { .. })
        ));
    }

    #[test]
    fn references_cover_volumes_env_and_env_from() {
        let p = pod(json!([
            {"name": "a", "configMap": {"name": "web"}},
            {"name": "t", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "audience": "vault"}},
                {"secret": {"name": "ps"}}]}},
        ]));
        let r = references(&p);
        assert_eq!(
            r.config_maps.into_iter().collect::<Vec<_>>(),
            ["envcm", "web"]
        );
        assert_eq!(r.secrets.into_iter().collect::<Vec<_>>(), ["envsec", "ps"]);
        assert_eq!(
            r.tokens.into_iter().collect::<Vec<_>>(),
            [TokenSpec {
                audience: "vault".into(),
                expiration_seconds: DEFAULT_TOKEN_SECONDS
            }]
        );
    }
}
