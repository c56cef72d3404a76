//! What lets a node join with only a token and the CA's hash, as kubeadm
//! and k3s do:
//!
//! - **Bootstrap tokens** (`ID.SECRET`, Secrets `kube-system/bootstrap-token-ID`
//!   of type `bootstrap.kubernetes.io/token`): a valid, unexpired token with
//!   `usage-bearer-authentication` authenticates as `system:bootstrap:ID` in
//!   `system:bootstrappers` (and its `auth-extra-groups`).
//! - **cluster-info**: the ConfigMap `kube-public/cluster-info` holds a
//!   kubeconfig with the cluster CA; anyone may read it, and a joining node
//!   trusts it only if the CA's public key matches the hash it was given.
//! - **CertificateSigningRequests**: requests for the
//!   `kubernetes.io/kube-apiserver-client-kubelet` signer are approved when
//!   they ask for `system:node:NAME` in `system:nodes`, client usages only,
//!   and the requester may create `certificatesigningrequests/nodeclient`
//!   (a bootstrap token) or `…/selfnodeclient` (the node itself, renewing);
//!   approved requests for that signer and `kubernetes.io/kube-apiserver-client`
//!   are signed with the cluster CA (kube-controller-manager's csrapproving
//!   and csrsigning controllers).
//! - **Node serving certificates** (`kubernetes.io/kubelet-serving`): a
//!   node's own request for `system:node:NAME` in `system:nodes`, serving
//!   usages only, naming only the Node's own addresses (its IPs and host
//!   names in `status.addresses`), is approved and signed, so the node API
//!   serves a certificate the cluster CA vouches for. kube-controller-manager
//!   leaves these to an operator or a third-party approver; the checks here
//!   are what such approvers make.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use serde_json::{Value, json};

use super::auth::UserInfo;
use super::authz::Authorizer;
use super::authz::attributes::Attributes;
use super::pki::{self, CertPair};
use crate::api::errors::ApiError;
use crate::api::registry::{ListOptions, Registry, WatchEvent, WatchOptions, WriteOptions};
use crate::api::resources;

/// The group of every bootstrap token.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The signer of node client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of node serving certificates (the node API's).
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The signer of other client certificates (approved by hand).
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// The Secret type of bootstrap tokens.
pub const TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// `ID.SECRET` (6 and 16 characters of [a-z0-9]) split, if it is one.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The Secret that holds a bootstrap token, as `keelson token create`
/// writes it.
pub fn token_secret(id: &str, secret: &str, expires: Option<&str>, description: &str) -> Value {
    let mut data = json!({
        "token-id": id,
        "token-secret": secret,
        "usage-bearer-authentication": "true",
        "usage-bootstrap-signing": "true",
        "auth-extra-groups": "system:bootstrappers:keelson:default-node-token",
        "description": description,
    });
    if let Some(e) = expires {
        data["expiration"] = json!(e);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": TOKEN_SECRET_TYPE,
        "stringData": data,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who a bootstrap token is, if it is a valid one.
pub async fn authenticate(registry: &Registry, token: &str) -> Option<UserInfo> {
    let (id, secret) = parse_token(token)?;
    let rt = resources::find("", "v1", "secrets")?;
    let s = registry
        .get(rt, Some("kube-system"), &format!("bootstrap-token-{id}"))
        .await
        .ok()?;
    if s["type"] != TOKEN_SECRET_TYPE {
        return None;
    }
    let field = |k: &str| -> String {
        s["data"][k]
            .as_str()
            .and_then(|v| b64().decode(v).ok())
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_default()
    };
    if field("token-id") != id
        || !constant_time_eq(field("token-secret").as_bytes(), secret.as_bytes())
        || field("usage-bearer-authentication") != "true"
    {
        return None;
    }
    let expiration = field("expiration");
    if !expiration.is_empty() {
        let at = chrono::DateTime::parse_from_rfc3339(&expiration).ok()?;
        if at <= chrono::Utc::now() {
            tracing::info!(token = id, "bootstrap token expired");
            return None;
        }
    }
    let mut groups = vec![BOOTSTRAPPERS.to_string()];
    groups.extend(
        field("auth-extra-groups")
            .split(',')
            .map(str::trim)
            .filter(|g| g.starts_with("system:bootstrappers:"))
            .map(String::from),
    );
    Some(UserInfo {
        name: format!("system:bootstrap:{id}"),
        uid: String::new(),
        groups,
        extra: Default::default(),
    })
}

/// Publish `kube-public/cluster-info` (the CA and the server's URL), and
/// let anyone read it.
pub async fn publish_cluster_info(registry: &Registry, ca_pem: &str, server_url: &str) {
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "", "cluster": {
            "certificate-authority-data": b64().encode(ca_pem),
            "server": server_url,
        }}],
        "contexts": [],
        "users": [],
    });
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig.to_string()},
    });
    let rbac = |kind: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": {"name": "keelson:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
        })
    };
    let mut role = rbac("Role");
    role["rules"] = json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"], "verbs": ["get"]}]);
    let mut binding = rbac("RoleBinding");
    binding["roleRef"] = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "keelson:bootstrap-signer-clusterinfo"});
    binding["subjects"] = json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}]);
    let opts = WriteOptions::default();
    for (group, plural, obj) in [
        ("", "configmaps", cm),
        ("rbac.authorization.k8s.io", "roles", role),
        ("rbac.authorization.k8s.io", "rolebindings", binding),
    ] {
        let Some(rt) = resources::find(group, "v1", plural) else {
            continue;
        };
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let result = match registry
            .create(rt, Some("kube-public"), obj.clone(), &opts)
            .await
        {
            Err(e) if e.code == 409 => registry
                .update(rt, Some("kube-public"), &name, obj, None, &opts)
                .await
                .map(|_| ()),
            other => other.map(|_| ()),
        };
        if let Err(e) = result {
            tracing::warn!(%plural, %name, error = %e, "publish cluster-info");
        }
    }
}

/// The CA a cluster-info kubeconfig carries (PEM) and its server URL.
pub fn cluster_info_ca(configmap: &Value) -> Result<(String, String), String> {
    let text = configmap["data"]["kubeconfig"]
        .as_str()
        .ok_or("cluster-info has no kubeconfig")?;
    let kc: Value =
        serde_saphyr::from_str(text).map_err(|e| format!("cluster-info kubeconfig: {e}"))?;
    let cluster = &kc["clusters"][0]["cluster"];
    let ca = cluster["certificate-authority-data"]
        .as_str()
        .and_then(|d| b64().decode(d).ok())
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or("cluster-info has no CA")?;
    Ok((
        ca,
        cluster["server"].as_str().unwrap_or_default().to_string(),
    ))
}

/// Fill in who asks for a certificate (the API server sets these, never
/// the client) and check the request is one.
pub fn admit_csr(obj: &mut Value, user: &UserInfo) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let invalid = |field: &str, why: &str| {
        ApiError::invalid(
            "certificates.k8s.io",
            "CertificateSigningRequest",
            &name,
            vec![crate::api::errors::Cause::invalid(field, "", why)],
        )
    };
    if !obj["spec"].is_object() {
        return Err(invalid("spec", "required"));
    }
    let pem = obj["spec"]["request"]
        .as_str()
        .and_then(|r| b64().decode(r).ok())
        .and_then(|r| String::from_utf8(r).ok())
        .ok_or_else(|| invalid("spec.request", "must be a base64 PEM CERTIFICATE REQUEST"))?;
    pki::csr_subject(&pem).map_err(|e| invalid("spec.request", &e.to_string()))?;
    if obj["spec"]["signerName"].as_str().is_none_or(str::is_empty) {
        return Err(invalid("spec.signerName", "required"));
    }
    if obj["spec"]["usages"].as_array().is_none_or(Vec::is_empty) {
        return Err(invalid("spec.usages", "required"));
    }
    let spec = &mut obj["spec"];
    spec["username"] = json!(user.name);
    spec["groups"] = json!(user.groups);
    if user.uid.is_empty() {
        if let Some(m) = spec.as_object_mut() {
            m.remove("uid");
        }
    } else {
        spec["uid"] = json!(user.uid);
    }
    if !user.extra.is_empty() {
        spec["extra"] = json!(user.extra);
    }
    Ok(())
}

fn condition(csr: &Value, ty: &str) -> bool {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == ty && c["status"] != "False")
}

/// Whether a request is for a node client certificate: `system:node:NAME`
/// in `system:nodes` and nothing but client usages.
fn node_client_request(csr: &Value, pem: &str) -> Option<String> {
    let (cn, orgs) = pki::csr_subject(pem).ok()?;
    let node = cn.strip_prefix("system:node:")?;
    let usages: Vec<&str> = csr["spec"]["usages"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let allowed = ["digital signature", "key encipherment", "client auth"];
    (!node.is_empty()
        && orgs == ["system:nodes"]
        && usages.contains(&"client auth")
        && usages.iter().all(|u| allowed.contains(u)))
    .then(|| cn.clone())
}

/// Why a request for a node serving certificate may not be approved
/// automatically (None: it may): the requester is the node `system:node:NAME`
/// itself, the subject is that node in `system:nodes`, the usages are
/// serving ones, and every name is one of the Node's addresses.
fn node_serving_refusal(csr: &Value, pem: &str, node: Option<&Value>) -> Option<String> {
    let (cn, orgs) = match pki::csr_subject(pem) {
        Ok(s) => s,
        Err(e) => return Some(e.to_string()),
    };
    let Some(name) = cn.strip_prefix("system:node:").filter(|n| !n.is_empty()) else {
        return Some(format!("subject {cn:?} is not a node"));
    };
    if csr["spec"]["username"] != cn.as_str() {
        return Some("not asked for by the node itself".into());
    }
    if orgs != ["system:nodes"] {
        return Some(format!("organizations {orgs:?} are not [system:nodes]"));
    }
    let usages: Vec<&str> = csr["spec"]["usages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let allowed = ["digital signature", "key encipherment", "server auth"];
    if !usages.contains(&"server auth") || !usages.iter().all(|u| allowed.contains(u)) {
        return Some(format!("usages {usages:?} are not serving ones"));
    }
    let Some(node) = node else {
        return Some(format!("no Node {name}"));
    };
    let (dns, ips, other) = match pki::csr_names(pem) {
        Ok(n) => n,
        Err(e) => return Some(e.to_string()),
    };
    if other || (dns.is_empty() && ips.is_empty()) {
        return Some("it must name DNS names or IP addresses, and nothing else".into());
    }
    let addresses: Vec<(&str, &str)> = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["type"].as_str()?, a["address"].as_str()?)))
        .collect();
    let has = |types: &[&str], value: &str| {
        addresses
            .iter()
            .any(|(t, a)| types.contains(t) && a.eq_ignore_ascii_case(value))
    };
    for d in &dns {
        if !has(&["Hostname", "InternalDNS", "ExternalDNS"], d) {
            return Some(format!("{d} is not one of the Node's host names"));
        }
    }
    for ip in &ips {
        if !has(&["InternalIP", "ExternalIP"], &ip.to_string()) {
            return Some(format!("{ip} is not one of the Node's addresses"));
        }
    }
    None
}

/// Mark a request approved (`AutoApproved`, with `message`).
async fn approve(registry: &Registry, csr: &Value, message: &str) -> Result<(), ApiError> {
    let rt = resources::find("certificates.k8s.io", "v1", "certificatesigningrequests")
        .expect("registered type");
    let name = csr["metadata"]["name"].as_str().unwrap_or_default();
    let mut v = csr.clone();
    let now = crate::api::registry::now_rfc3339();
    v["status"]["conditions"] = json!([{
        "type": "Approved", "status": "True", "reason": "AutoApproved",
        "message": message, "lastUpdateTime": now, "lastTransitionTime": now,
    }]);
    registry
        .update(
            rt,
            None,
            name,
            v,
            Some("approval"),
            &WriteOptions::default(),
        )
        .await
        .map(drop)
}

/// What the controller does with one request, if anything.
async fn reconcile(
    registry: &Registry,
    authz: &Authorizer,
    ca: &CertPair,
    csr: &Value,
) -> Result<(), ApiError> {
    let rt = resources::find("certificates.k8s.io", "v1", "certificatesigningrequests")
        .expect("registered type");
    let name = csr["metadata"]["name"].as_str().unwrap_or_default();
    let signer = csr["spec"]["signerName"].as_str().unwrap_or_default();
    let Some(pem) = csr["spec"]["request"]
        .as_str()
        .and_then(|r| b64().decode(r).ok())
        .and_then(|r| String::from_utf8(r).ok())
    else {
        return Ok(());
    };
    let approved = condition(csr, "Approved");
    if !approved && !condition(csr, "Denied") && signer == KUBELET_SERVING_SIGNER {
        let node_name = csr["spec"]["username"]
            .as_str()
            .and_then(|u| u.strip_prefix("system:node:"))
            .unwrap_or_default();
        let nodes = resources::find("", "v1", "nodes").expect("registered type");
        let node = match node_name {
            "" => None,
            n => registry.get(nodes, None, n).await.ok(),
        };
        if let Some(why) = node_serving_refusal(csr, &pem, node.as_ref()) {
            tracing::info!(csr = name, reason = %why, "node serving certificate left for an operator to approve");
            return Ok(());
        }
        approve(
            registry,
            csr,
            "Auto approving kubelet serving certificate: its names are the Node's own addresses.",
        )
        .await?;
        tracing::info!(
            csr = name,
            node = node_name,
            "approved node serving certificate"
        );
        return Ok(());
    }
    if !approved && !condition(csr, "Denied") && signer == KUBELET_CLIENT_SIGNER {
        let Some(cn) = node_client_request(csr, &pem) else {
            return Ok(());
        };
        let user = UserInfo {
            name: csr["spec"]["username"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            uid: String::new(),
            groups: csr["spec"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(String::from))
                .collect(),
            extra: Default::default(),
        };
        let may = |sub: &str| {
            authz.allows(&Attributes::resource(
                &user,
                "create",
                "certificates.k8s.io",
                "",
                "certificatesigningrequests",
                sub,
                "",
            ))
        };
        let message = if user.name == cn && may("selfnodeclient") {
            "Auto approving self kubelet client certificate after SubjectAccessReview."
        } else if may("nodeclient") {
            "Auto approving kubelet client certificate after SubjectAccessReview."
        } else {
            return Ok(());
        };
        approve(registry, csr, message).await?;
        tracing::info!(csr = name, node = %cn, "approved node client certificate");
        return Ok(());
    }
    let signs = [KUBELET_CLIENT_SIGNER, CLIENT_SIGNER, KUBELET_SERVING_SIGNER].contains(&signer);
    let issued = csr["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty());
    if !approved || !signs || issued || condition(csr, "Failed") {
        return Ok(());
    }
    let seconds = csr["spec"]["expirationSeconds"]
        .as_i64()
        .unwrap_or(365 * 24 * 3600)
        .clamp(60, 365 * 24 * 3600);
    let mut v = csr.clone();
    match pki::sign_csr(ca, &pem, signer == KUBELET_SERVING_SIGNER, seconds) {
        Ok(cert) => v["status"]["certificate"] = json!(b64().encode(cert)),
        Err(e) => {
            let now = crate::api::registry::now_rfc3339();
            let mut conditions = v["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            conditions.push(
                json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure",
                "message": e.to_string(), "lastUpdateTime": now, "lastTransitionTime": now}),
            );
            v["status"]["conditions"] = Value::Array(conditions);
        }
    }
    registry
        .update(rt, None, name, v, Some("status"), &WriteOptions::default())
        .await?;
    Ok(())
}

/// Approve and sign requests as they come, until `stop`.
pub fn run(
    registry: Arc<Registry>,
    authz: Arc<Authorizer>,
    ca: CertPair,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let rt = resources::find("certificates.k8s.io", "v1", "certificatesigningrequests")
            .expect("registered type");
        loop {
            let pass = async {
                let list = registry.list(rt, None, &ListOptions::default()).await?;
                for csr in list["items"].as_array().into_iter().flatten() {
                    if let Err(e) = reconcile(&registry, &authz, &ca, csr).await {
                        tracing::warn!(error = %e, "certificate signing request");
                    }
                }
                let rv = list["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok());
                let opts = WatchOptions {
                    resource_version: rv,
                    ..WatchOptions::default()
                };
                let mut events = registry.watch(rt, None, opts).await?;
                while let Some(ev) = events.next().await {
                    match ev {
                        WatchEvent::Added(csr) | WatchEvent::Modified(csr) => {
                            if let Err(e) = reconcile(&registry, &authz, &ca, &csr).await
                                && e.code != 409
                            {
                                tracing::warn!(error = %e, "certificate signing request");
                            }
                        }
                        WatchEvent::Error(s) => {
                            return Err(ApiError::internal(format!("watch: {s}")));
                        }
                        _ => {}
                    }
                }
                Ok::<(), ApiError>(())
            };
            tokio::select! {
                r = pass => if let Err(e) = r {
                    tracing::warn!(error = %e, "certificate signing requests; watching again");
                },
                _ = stop.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_kubeadms_shape() {
        assert_eq!(
            parse_token("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "",
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    fn csr_for(cn: &str, orgs: &[&str], usages: &[&str]) -> (Value, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            dn.push(rcgen::DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let v = json!({"metadata": {"name": "x"}, "spec": {
            "request": b64().encode(&pem), "signerName": KUBELET_CLIENT_SIGNER, "usages": usages}});
        (v, pem)
    }

    #[test]
    fn serving_requests_qualify_only_for_the_nodes_own_addresses() {
        let serving = |user: &str, cn: &str, sans: &[&str], usages: &[&str]| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(
                sans.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::CommonName, cn);
            dn.push(rcgen::DnType::OrganizationName, "system:nodes");
            params.distinguished_name = dn;
            let pem = params.serialize_request(&key).unwrap().pem().unwrap();
            let v = json!({"spec": {"username": user, "signerName": KUBELET_SERVING_SIGNER,
                "usages": usages, "request": b64().encode(&pem)}});
            (v, pem)
        };
        let node = json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "10.0.0.5"},
            {"type": "Hostname", "address": "n1"},
        ]}});
        let ok = ["digital signature", "key encipherment", "server auth"];
        let n1 = "system:node:n1";
        let (v, pem) = serving(n1, n1, &["n1", "10.0.0.5"], &ok);
        assert_eq!(node_serving_refusal(&v, &pem, Some(&node)), None);
        let cases = [
            (
                serving(n1, n1, &["n1", "10.0.0.6"], &ok),
                "an address not the Node's",
            ),
            (
                serving(n1, n1, &["evil.example"], &ok),
                "a name not the Node's",
            ),
            (
                serving("system:node:n2", n1, &["n1"], &ok),
                "another node asks",
            ),
            (
                serving(n1, n1, &["n1"], &["server auth", "client auth"]),
                "a client usage",
            ),
            (serving(n1, n1, &[], &ok), "no names"),
        ];
        for ((v, pem), what) in cases {
            assert!(
                node_serving_refusal(&v, &pem, Some(&node)).is_some(),
                "{what}"
            );
        }
        let (v, pem) = serving(n1, n1, &["n1"], &ok);
        assert!(node_serving_refusal(&v, &pem, None).is_some(), "no Node");
        // Signed as a serving certificate, with its names.
        let ca = crate::server::pki::Pki::load_or_create(tempfile::tempdir().unwrap().path(), &[])
            .unwrap()
            .ca;
        let (_, pem) = serving(n1, n1, &["n1", "10.0.0.5"], &ok);
        let cert = pki::sign_csr(&ca, &pem, true, 3600).unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let sans = c.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 2);
    }

    #[test]
    fn only_node_client_requests_qualify() {
        let ok = ["digital signature", "key encipherment", "client auth"];
        let (v, pem) = csr_for("system:node:n1", &["system:nodes"], &ok);
        assert_eq!(
            node_client_request(&v, &pem).as_deref(),
            Some("system:node:n1")
        );
        let (v, pem) = csr_for("system:node:n1", &["system:masters"], &ok);
        assert_eq!(node_client_request(&v, &pem), None, "another group");
        let (v, pem) = csr_for("system:node:n1", &["system:nodes", "system:masters"], &ok);
        assert_eq!(node_client_request(&v, &pem), None, "an extra group");
        let (v, pem) = csr_for("admin", &["system:nodes"], &ok);
        assert_eq!(node_client_request(&v, &pem), None, "not a node name");
        let (v, pem) = csr_for(
            "system:node:n1",
            &["system:nodes"],
            &["server auth", "client auth"],
        );
        assert_eq!(node_client_request(&v, &pem), None, "a serving usage");
    }

    #[test]
    fn the_server_says_who_asked() {
        let (mut v, _) = csr_for("system:node:n1", &["system:nodes"], &["client auth"]);
        v["spec"]["username"] = json!("someone-else");
        v["spec"]["groups"] = json!(["system:masters"]);
        let user = UserInfo {
            name: "system:bootstrap:abcdef".into(),
            uid: String::new(),
            groups: vec![BOOTSTRAPPERS.into()],
            extra: Default::default(),
        };
        admit_csr(&mut v, &user).unwrap();
        assert_eq!(v["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(v["spec"]["groups"], json!([BOOTSTRAPPERS]));
        let mut bad = v.clone();
        bad["spec"]["request"] = json!(b64().encode("not a request"));
        assert_eq!(admit_csr(&mut bad, &user).unwrap_err().code, 422);
    }

    #[test]
    fn a_signed_request_carries_the_requested_subject() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki::Pki::load_or_create(dir.path(), &[]).unwrap();
        let (_, pem) = csr_for("system:node:n1", &["system:nodes"], &["client auth"]);
        let cert = pki::sign_csr(&p.ca, &pem, false, 3600).unwrap();
        let der = b64()
            .decode(
                cert.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        let user = super::super::auth::user_from_cert(&der).unwrap();
        assert_eq!(user.name, "system:node:n1");
        assert_eq!(user.groups, vec!["system:nodes"]);
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        let life = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
        assert!((3600..=3600 + 310).contains(&life), "{life}");
        assert!(
            pki::ca_cert_hash(&p.ca.cert_pem)
                .unwrap()
                .starts_with("sha256:")
        );
        assert_eq!(pki::ca_cert_hash(&p.ca.cert_pem).unwrap().len(), 7 + 64);
    }
}
