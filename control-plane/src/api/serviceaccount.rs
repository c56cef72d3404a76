//! ServiceAccount admission, as kube-apiserver's ServiceAccount plugin does
//! it for every new pod: the service account defaults to `default` and must
//! exist (the `default` one is waited for briefly, since its controller
//! creates it with the namespace); its `imagePullSecrets` become the pod's
//! when the pod names none; and unless `automountServiceAccountToken` is
//! false (on the pod, else on the account) every container gets the
//! `kube-api-access-*` projected volume — a bound token, the cluster CA from
//! the `kube-root-ca.crt` ConfigMap and the namespace — at
//! [`TOKEN_MOUNT_PATH`]. Mirror pods are left alone.
//!
//! [`inject`] is pure; [`Registry::admit_service_account`] looks the
//! account up.

use std::time::Duration;

use serde_json::{Value, json};

use super::errors::{ApiError, ApiResult};
use super::registry::Registry;
use super::resources;

/// Where the token, `ca.crt` and `namespace` appear in containers.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap with the cluster CA published in every namespace.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// The injected volume's name prefix.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The injected token's lifetime: kube-apiserver's 3607 s (an hour and a
/// few seconds, which marks it as an injected token).
pub const TOKEN_EXPIRATION: i64 = 3607;
/// The annotation of a static pod's mirror.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The injected projected volume.
pub fn volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]
        }
    })
}

/// Whether `pod` is a static pod's mirror (never admitted here).
pub fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(MIRROR_ANNOTATION))
        .is_some()
}

/// The service account `pod` runs as, after defaulting.
pub fn account_name(pod: &Value) -> &str {
    pod.pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            pod.pointer("/spec/serviceAccount")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default")
}

/// Applies the account `sa` to `pod` (pure): the names, the pull secrets,
/// and the token volume (named `kube-api-access-<suffix>`) mounted
/// read-only in every container that mounts nothing at
/// [`TOKEN_MOUNT_PATH`] yet.
pub fn inject(pod: &mut Value, sa: &Value, suffix: &str) {
    let name = account_name(pod).to_string();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.insert("serviceAccountName".into(), json!(name));
    spec.insert("serviceAccount".into(), json!(name));
    let no_pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    if no_pull_secrets
        && let Some(secrets) = sa.get("imagePullSecrets").and_then(Value::as_array)
        && !secrets.is_empty()
    {
        spec.insert("imagePullSecrets".into(), json!(secrets));
    }
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if !automount {
        return;
    }
    let mounts_token = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH))
    };
    let needs: Vec<(&str, usize)> = ["initContainers", "containers"]
        .into_iter()
        .flat_map(|list| {
            spec.get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .filter(|(_, c)| !mounts_token(c))
                .map(move |(i, _)| (list, i))
        })
        .collect();
    if needs.is_empty() {
        return;
    }
    let volume_name = format!("{VOLUME_PREFIX}{suffix}");
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
    for (list, i) in needs {
        if let Some(c) = spec
            .get_mut(list)
            .and_then(|l| l.get_mut(i))
            .and_then(Value::as_object_mut)
        {
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            if let Some(m) = mounts.as_array_mut() {
                m.push(mount.clone());
            }
        }
    }
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if let Some(v) = volumes.as_array_mut() {
        v.push(volume(&volume_name));
    }
}

impl Registry {
    /// Looks up the pod's service account (retrying `default` for about two
    /// seconds, as kube-apiserver does) and [`inject`]s it. A missing
    /// account is 403, kube-apiserver's answer.
    pub(crate) async fn admit_service_account(
        &self,
        ns: &str,
        pod: &mut Value,
        suffix: &str,
    ) -> ApiResult<()> {
        if is_mirror(pod) {
            return Ok(());
        }
        let name = account_name(pod).to_string();
        let rt = resources::find_kind("", "ServiceAccount").expect("core kind");
        let attempts = if name == "default" { 10 } else { 1 };
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match self.get(rt, Some(ns), &name).await {
                Ok(sa) => {
                    inject(pod, &sa, suffix);
                    return Ok(());
                }
                Err(e) if e.code == 404 => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        let e = last.expect("tried");
        Err(ApiError::forbidden(format!(
            "pods \"{}\" is forbidden: error looking up service account {ns}/{name}: {}",
            pod.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            e.message
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a"},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]}
            ]
        }})
    }

    #[test]
    fn defaults_the_account_and_mounts_the_token_where_nothing_is_mounted() {
        let mut p = pod();
        inject(&mut p, &json!({}), "abcde");
        let spec = &p["spec"];
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["serviceAccount"], "default");
        let vols = spec["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 1);
        assert_eq!(vols[0], volume("kube-api-access-abcde"));
        let mount = json!({"name": "kube-api-access-abcde", "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
        assert_eq!(spec["initContainers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(spec["containers"][0]["volumeMounts"], json!([mount]));
        // b mounts its own at the path: left alone.
        assert_eq!(
            spec["containers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(spec["containers"][1]["volumeMounts"][0]["name"], "own");
    }

    #[test]
    fn automount_false_on_the_pod_wins_over_the_account() {
        let mut p = pod();
        p["spec"]["automountServiceAccountToken"] = json!(false);
        inject(&mut p, &json!({"automountServiceAccountToken": true}), "x");
        assert!(p["spec"].get("volumes").is_none());
        let mut p = pod();
        inject(&mut p, &json!({"automountServiceAccountToken": false}), "x");
        assert!(p["spec"].get("volumes").is_none());
        let mut p = pod();
        p["spec"]["automountServiceAccountToken"] = json!(true);
        inject(&mut p, &json!({"automountServiceAccountToken": false}), "x");
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn the_accounts_pull_secrets_only_when_the_pod_names_none() {
        let sa = json!({"imagePullSecrets": [{"name": "regcred"}]});
        let mut p = pod();
        inject(&mut p, &sa, "x");
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]));
        let mut p = pod();
        p["spec"]["imagePullSecrets"] = json!([{"name": "mine"}]);
        inject(&mut p, &sa, "x");
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "mine"}]));
    }

    #[test]
    fn a_named_account_is_kept_and_mirrors_are_skipped() {
        let mut p = pod();
        p["spec"]["serviceAccountName"] = json!("builder");
        inject(&mut p, &json!({}), "x");
        assert_eq!(p["spec"]["serviceAccount"], "builder");
        let mut m = pod();
        m["metadata"]["annotations"] = json!({MIRROR_ANNOTATION: "x"});
        assert!(is_mirror(&m));
    }
}
