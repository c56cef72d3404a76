//! The node authorizer and node restriction (kube-apiserver's `Node`
//! authorization mode and `NodeRestriction` admission): a node
//! (`system:node:NAME` in `system:nodes`) may read only the Secrets,
//! ConfigMaps, PersistentVolumeClaims and service account tokens of pods
//! bound to it, write only its own Node and Lease and the status of its own
//! pods, and may not give itself restricted labels. Everything else it may
//! do is the `system:node` role's.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::Decision;
use super::attributes::Attributes;
use super::rbac::Rule;
use crate::api::errors::ApiError;

/// The group every node is in.
pub const NODES_GROUP: &str = "system:nodes";

/// The node a user is, if it is one.
pub fn node_name(user: &str, groups: &[String]) -> Option<String> {
    let name = user.strip_prefix("system:node:")?;
    (!name.is_empty() && groups.iter().any(|g| g == NODES_GROUP)).then(|| name.to_string())
}

/// The objects a pod needs from the API (what its node may read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRefs {
    pub node: String,
    pub secrets: BTreeSet<String>,
    pub configmaps: BTreeSet<String>,
    pub claims: BTreeSet<String>,
    pub service_account: String,
}

fn push(set: &mut BTreeSet<String>, v: &Value) {
    if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
        set.insert(s.to_string());
    }
}

impl PodRefs {
    pub fn of(pod: &Value) -> PodRefs {
        let spec = &pod["spec"];
        let mut r = PodRefs {
            node: spec["nodeName"].as_str().unwrap_or_default().to_string(),
            service_account: spec["serviceAccountName"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string(),
            ..PodRefs::default()
        };
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
        for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
            push(&mut r.secrets, &s["name"]);
        }
        for v in spec["volumes"].as_array().into_iter().flatten() {
            push(&mut r.secrets, &v["secret"]["secretName"]);
            push(&mut r.configmaps, &v["configMap"]["name"]);
            push(&mut r.claims, &v["persistentVolumeClaim"]["claimName"]);
            push(&mut r.secrets, &v["csi"]["nodePublishSecretRef"]["name"]);
            if v["ephemeral"].is_object()
                && let Some(n) = v["name"].as_str()
            {
                r.claims.insert(format!("{pod_name}-{n}"));
            }
            for src in v["projected"]["sources"].as_array().into_iter().flatten() {
                push(&mut r.secrets, &src["secret"]["name"]);
                push(&mut r.configmaps, &src["configMap"]["name"]);
            }
        }
        for key in ["initContainers", "containers", "ephemeralContainers"] {
            for c in spec[key].as_array().into_iter().flatten() {
                for e in c["env"].as_array().into_iter().flatten() {
                    push(&mut r.secrets, &e["valueFrom"]["secretKeyRef"]["name"]);
                    push(
                        &mut r.configmaps,
                        &e["valueFrom"]["configMapKeyRef"]["name"],
                    );
                }
                for e in c["envFrom"].as_array().into_iter().flatten() {
                    push(&mut r.secrets, &e["secretRef"]["name"]);
                    push(&mut r.configmaps, &e["configMapRef"]["name"]);
                }
            }
        }
        r
    }
}

/// Pods by node, for the node authorizer.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// node → (namespace, pod name) → what the pod needs.
    by_node: HashMap<String, HashMap<(String, String), PodRefs>>,
    /// (namespace, pod name) → node.
    node_of: HashMap<(String, String), String>,
}

fn key(pod: &Value) -> (String, String) {
    let md = &pod["metadata"];
    (
        md["namespace"].as_str().unwrap_or_default().to_string(),
        md["name"].as_str().unwrap_or_default().to_string(),
    )
}

impl Graph {
    pub fn upsert(&mut self, pod: &Value) {
        self.remove(pod);
        let refs = PodRefs::of(pod);
        if refs.node.is_empty() {
            return;
        }
        let k = key(pod);
        self.node_of.insert(k.clone(), refs.node.clone());
        self.by_node
            .entry(refs.node.clone())
            .or_default()
            .insert(k, refs);
    }

    pub fn remove(&mut self, pod: &Value) {
        let k = key(pod);
        if let Some(node) = self.node_of.remove(&k)
            && let Some(pods) = self.by_node.get_mut(&node)
        {
            pods.remove(&k);
            if pods.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }

    pub fn clear(&mut self) {
        self.by_node.clear();
        self.node_of.clear();
    }

    /// Whether a pod on `node` in `namespace` needs the object.
    fn related(&self, node: &str, namespace: &str, f: impl Fn(&PodRefs) -> bool) -> bool {
        self.by_node.get(node).is_some_and(|pods| {
            pods.iter()
                .any(|((ns, _), refs)| ns == namespace && f(refs))
        })
    }

    fn pod_on(&self, node: &str, namespace: &str, name: &str) -> bool {
        self.node_of
            .get(&(namespace.to_string(), name.to_string()))
            .is_some_and(|n| n == node)
    }
}

fn no_relationship(node: &str) -> Decision {
    Decision::Deny(format!(
        "no relationship found between node '{node}' and this object"
    ))
}

/// The node authorizer's decision, for a node's request.
pub fn authorize(node: &str, a: &Attributes, graph: &Graph, node_rules: &[Rule]) -> Decision {
    if !a.resource_request {
        return Decision::NoOpinion;
    }
    let read = matches!(a.verb.as_str(), "get" | "list" | "watch");
    match (
        a.api_group.as_str(),
        a.resource.as_str(),
        a.subresource.as_str(),
    ) {
        ("", kind @ ("secrets" | "configmaps" | "persistentvolumeclaims"), "") => {
            // Only one named object at a time, and only read.
            if !read || a.name.is_empty() {
                return Decision::Deny(format!(
                    "can only read individual {kind} bound to node '{node}'"
                ));
            }
            let found = graph.related(node, &a.namespace, |r| match kind {
                "secrets" => r.secrets.contains(&a.name),
                "configmaps" => r.configmaps.contains(&a.name),
                _ => r.claims.contains(&a.name),
            });
            if found {
                Decision::Allow(format!("node '{node}' runs a pod that uses it"))
            } else {
                no_relationship(node)
            }
        }
        ("", "serviceaccounts", "token") => {
            if a.verb != "create" {
                return Decision::Deny("can only create tokens".into());
            }
            if graph.related(node, &a.namespace, |r| r.service_account == a.name) {
                Decision::Allow(format!("node '{node}' runs a pod of this service account"))
            } else {
                no_relationship(node)
            }
        }
        ("", "nodes", _) if !read && !a.name.is_empty() && a.name != node => {
            Decision::Deny(format!("node '{node}' cannot modify node '{}'", a.name))
        }
        ("coordination.k8s.io", "leases", "") if !read && a.verb != "create" && a.name != node => {
            Decision::Deny(format!("node '{node}' cannot modify lease '{}'", a.name))
        }
        ("", "pods", "status") if !read => {
            if graph.pod_on(node, &a.namespace, &a.name) {
                Decision::Allow(format!("the pod is bound to node '{node}'"))
            } else {
                Decision::Deny(format!(
                    "node '{node}' can only update the status of its own pods"
                ))
            }
        }
        ("", "pods", "") if a.verb == "delete" => {
            if graph.pod_on(node, &a.namespace, &a.name) {
                Decision::Allow(format!("the pod is bound to node '{node}'"))
            } else {
                Decision::Deny(format!("node '{node}' can only delete its own pods"))
            }
        }
        ("", "pods", "") if a.verb == "create" => {
            Decision::Deny("nodes may not create pods (no mirror pods here)".into())
        }
        _ => {
            if node_rules.iter().any(|r| r.allows(a)) {
                Decision::Allow("allowed by the system:node rules".into())
            } else {
                Decision::NoOpinion
            }
        }
    }
}

/// Labels a node may not set or change on itself (NodeRestriction):
/// `node-restriction.kubernetes.io/` ones, and any other in the
/// kubernetes.io and k8s.io namespaces that the kubelet does not set.
fn restricted_label(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    if prefix == "node-restriction.kubernetes.io"
        || prefix.ends_with(".node-restriction.kubernetes.io")
    {
        return true;
    }
    let kube = |d: &str| prefix == d || prefix.ends_with(&format!(".{d}"));
    if !(kube("kubernetes.io") || kube("k8s.io")) {
        return false;
    }
    let allowed_keys = [
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    !(allowed_keys.contains(&key)
        || prefix == "kubelet.kubernetes.io"
        || prefix.ends_with(".kubelet.kubernetes.io")
        || prefix == "node.kubernetes.io"
        || prefix.ends_with(".node.kubernetes.io"))
}

/// NodeRestriction on a node's write of a Node: its own only, and no
/// restricted label added, changed or removed.
pub fn admit_node_write(node: &str, old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
    let name = new["metadata"]["name"].as_str().unwrap_or_default();
    if name != node {
        return Err(ApiError::forbidden(format!(
            "nodes \"{name}\" is forbidden: node \"{node}\" is not allowed to modify node \"{name}\""
        )));
    }
    let labels = |v: Option<&Value>| -> Vec<(String, String)> {
        v.and_then(|v| v["metadata"]["labels"].as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (before, after) = (labels(old), labels(Some(new)));
    let mut modified: BTreeSet<&str> = BTreeSet::new();
    for (k, v) in &after {
        if !before.iter().any(|(bk, bv)| bk == k && bv == v) {
            modified.insert(k);
        }
    }
    for (k, _) in &before {
        if !after.iter().any(|(ak, _)| ak == k) {
            modified.insert(k);
        }
    }
    let bad: Vec<&str> = modified
        .into_iter()
        .filter(|k| restricted_label(k))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "nodes \"{node}\" is forbidden: is not allowed to modify labels: {}",
            bad.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, node: &str) -> Value {
        json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {
                "nodeName": node,
                "serviceAccountName": "robot",
                "imagePullSecrets": [{"name": "pull"}],
                "volumes": [
                    {"name": "v1", "secret": {"secretName": "vol-secret"}},
                    {"name": "v2", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}},
                    {"name": "v3", "persistentVolumeClaim": {"claimName": "data"}},
                ],
                "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}],
                    "envFrom": [{"configMapRef": {"name": "settings"}}]}],
            },
        })
    }

    fn get(ns: &str, resource: &str, name: &str) -> Attributes {
        Attributes {
            user: "system:node:n1".into(),
            groups: vec![NODES_GROUP.into()],
            verb: "get".into(),
            resource_request: true,
            namespace: ns.into(),
            resource: resource.into(),
            name: name.into(),
            ..Attributes::default()
        }
    }

    fn rules() -> Vec<Rule> {
        super::super::policy::node_rules()
            .iter()
            .map(Rule::from_json)
            .collect()
    }

    fn allowed(d: &Decision) -> bool {
        matches!(d, Decision::Allow(_))
    }

    #[test]
    fn a_node_reads_only_what_its_pods_use() {
        let mut g = Graph::default();
        g.upsert(&pod("a", "p1", "n1"));
        g.upsert(&pod("a", "p2", "n2"));
        let r = rules();
        for (res, name) in [
            ("secrets", "vol-secret"),
            ("secrets", "env-secret"),
            ("secrets", "pull"),
            ("configmaps", "kube-root-ca.crt"),
            ("configmaps", "settings"),
            ("persistentvolumeclaims", "data"),
        ] {
            assert!(
                allowed(&authorize("n1", &get("a", res, name), &g, &r)),
                "{res}/{name}"
            );
            assert!(
                !allowed(&authorize("n1", &get("b", res, name), &g, &r)),
                "{res}/{name} in b"
            );
        }
        assert!(!allowed(&authorize(
            "n1",
            &get("a", "secrets", "other"),
            &g,
            &r
        )));
        let mut list = get("a", "secrets", "");
        list.verb = "list".into();
        assert!(
            !allowed(&authorize("n1", &list, &g, &r)),
            "no listing secrets"
        );
        let mut token = get("a", "serviceaccounts", "robot");
        token.verb = "create".into();
        token.subresource = "token".into();
        assert!(allowed(&authorize("n1", &token, &g, &r)));
        token.name = "default".into();
        assert!(!allowed(&authorize("n1", &token, &g, &r)));
        // Once the pod is gone, so is the relationship.
        g.remove(&pod("a", "p1", "n1"));
        assert!(!allowed(&authorize(
            "n1",
            &get("a", "secrets", "vol-secret"),
            &g,
            &r
        )));
        // n2's pod still gives n2 access.
        assert!(allowed(&authorize(
            "n2",
            &get("a", "secrets", "vol-secret"),
            &g,
            &r
        )));
    }

    #[test]
    fn a_node_writes_only_its_own_node_lease_and_pods() {
        let mut g = Graph::default();
        g.upsert(&pod("a", "p1", "n1"));
        g.upsert(&pod("a", "p2", "n2"));
        let r = rules();
        let mut a = get("", "nodes", "n1");
        a.verb = "patch".into();
        a.subresource = "status".into();
        assert!(allowed(&authorize("n1", &a, &g, &r)));
        a.name = "n2".into();
        assert!(!allowed(&authorize("n1", &a, &g, &r)));
        let mut read = get("", "nodes", "n2");
        assert!(allowed(&authorize("n1", &read, &g, &r)));
        read.verb = "delete".into();
        assert!(!allowed(&authorize("n1", &read, &g, &r)));
        let mut lease = get("kube-node-lease", "leases", "n2");
        lease.api_group = "coordination.k8s.io".into();
        lease.verb = "update".into();
        assert!(!allowed(&authorize("n1", &lease, &g, &r)));
        lease.name = "n1".into();
        assert!(allowed(&authorize("n1", &lease, &g, &r)));
        let mut status = get("a", "pods", "p1");
        status.verb = "patch".into();
        status.subresource = "status".into();
        assert!(allowed(&authorize("n1", &status, &g, &r)));
        status.name = "p2".into();
        assert!(!allowed(&authorize("n1", &status, &g, &r)));
        // What the system:node role does not give, the node authorizer has
        // no opinion on (RBAC decides).
        let mut deploy = get("a", "deployments", "d");
        deploy.api_group = "apps".into();
        assert_eq!(authorize("n1", &deploy, &g, &r), Decision::NoOpinion);
    }

    #[test]
    fn a_node_may_not_label_itself_into_restricted_labels() {
        let node = |labels: Value| json!({"metadata": {"name": "n1", "labels": labels}});
        let old = node(json!({"kubernetes.io/hostname": "n1"}));
        assert!(admit_node_write("n1", Some(&old), &node(json!({"kubernetes.io/hostname": "n1", "team": "x", "topology.kubernetes.io/zone": "z"}))).is_ok());
        let e = admit_node_write(
            "n1",
            Some(&old),
            &node(json!({"node-restriction.kubernetes.io/trusted": "yes"})),
        )
        .unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message.contains("node-restriction.kubernetes.io/trusted"),
            "{}",
            e.message
        );
        assert!(
            admit_node_write(
                "n1",
                None,
                &node(json!({"node-role.kubernetes.io/control-plane": ""}))
            )
            .is_err()
        );
        assert!(
            admit_node_write(
                "n1",
                None,
                &node(json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""}))
            )
            .is_ok()
        );
        let e = admit_node_write("n1", None, &json!({"metadata": {"name": "n2"}})).unwrap_err();
        assert!(e.message.contains("n2"));
        // Unchanged restricted labels (set by an admin) are no modification.
        let admin_set = node(json!({"node-restriction.kubernetes.io/trusted": "yes"}));
        assert!(admit_node_write("n1", Some(&admin_set), &admin_set).is_ok());
    }
}
