//! The resource types the API serves: names, scope, subresources, field
//! labels, and the typed (k8s-openapi) round trip that checks an object's
//! shape and finds unknown fields.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Checks `value` against the Kubernetes type and returns it as the type
/// serializes it (unknown fields dropped), or the decoding error.
pub type TypedRoundTrip = fn(&Value) -> Result<Value, String>;

fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

#[derive(Debug)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources: "status", "scale", "binding", "log", "finalize".
    pub subresources: &'static [&'static str],
    /// Field selector labels beyond metadata.name and metadata.namespace.
    pub field_labels: &'static [&'static str],
    /// Storage prefix segment; two resource types that share storage
    /// (core and events.k8s.io events) share it.
    pub storage: &'static str,
    pub typed: TypedRoundTrip,
    /// Names must be DNS-1123 labels rather than subdomains.
    pub label_names: bool,
    /// Defined by a CustomResourceDefinition ([`super::custom`]): its
    /// schema, storage version and printer columns are the server's to
    /// look up, and stored objects are read through them (no raw fast path).
    pub custom: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }
    pub fn has_status(&self) -> bool {
        self.has_subresource("status")
    }
    /// "pods" or "deployments.apps": how errors name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    pub fn verbs(&self) -> &'static [&'static str] {
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.group == group && self.kind == kind
    }
}

use k8s_openapi::api::autoscaling::v2 as autoscaling;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::certificates::v1 as certificates;
use k8s_openapi::api::{apps::v1 as apps, coordination::v1 as coordination, core::v1 as core};
use k8s_openapi::api::{discovery::v1 as discovery, events::v1 as events};
use k8s_openapi::api::{networking::v1 as networking, node::v1 as node, policy::v1 as policy};
use k8s_openapi::api::{rbac::v1 as rbac, scheduling::v1 as scheduling, storage::v1 as storage};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;

const META: &[&str] = &[];

macro_rules! rt {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, $ns:expr, $short:expr, $cats:expr, $subs:expr, $fields:expr, $storage:expr, $ty:ty) => {
        ResourceType {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cats,
            subresources: $subs,
            field_labels: $fields,
            storage: $storage,
            typed: round_trip::<$ty>,
            label_names: false,
            custom: false,
        }
    };
}

pub static RESOURCES: &[ResourceType] = &[
    ResourceType {
        label_names: true,
        ..rt!(
            "",
            "v1",
            "Namespace",
            "namespaces",
            "namespace",
            false,
            &["ns"],
            META,
            &["status", "finalize"],
            &["status.phase"],
            "core/namespaces",
            core::Namespace
        )
    },
    rt!(
        "",
        "v1",
        "Node",
        "nodes",
        "node",
        false,
        &["no"],
        META,
        &["status"],
        &["spec.unschedulable"],
        "core/nodes",
        core::Node
    ),
    rt!(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        &["all"],
        &[
            "status",
            "binding",
            "log",
            "exec",
            "attach",
            "portforward",
            "proxy"
        ],
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName"
        ],
        "core/pods",
        core::Pod
    ),
    ResourceType {
        label_names: true,
        ..rt!(
            "",
            "v1",
            "Service",
            "services",
            "service",
            true,
            &["svc"],
            &["all"],
            &["status", "proxy"],
            &["spec.clusterIP", "spec.type"],
            "core/services",
            core::Service
        )
    },
    rt!(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        META,
        &[],
        META,
        "core/endpoints",
        core::Endpoints
    ),
    rt!(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        META,
        &[],
        META,
        "core/configmaps",
        core::ConfigMap
    ),
    rt!(
        "",
        "v1",
        "Secret",
        "secrets",
        "secret",
        true,
        META,
        META,
        &[],
        &["type"],
        "core/secrets",
        core::Secret
    ),
    rt!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        META,
        &["token"],
        META,
        "core/serviceaccounts",
        core::ServiceAccount
    ),
    rt!(
        "",
        "v1",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        META,
        &[],
        &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type"
        ],
        "core/events",
        core::Event
    ),
    rt!(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        META,
        &[],
        &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "reason",
            "reportingController",
            "type"
        ],
        "core/events",
        events::Event
    ),
    rt!(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        true,
        META,
        META,
        &[],
        META,
        "coordination.k8s.io/leases",
        coordination::Lease
    ),
    rt!(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        META,
        META,
        &[],
        &["addressType"],
        "discovery.k8s.io/endpointslices",
        discovery::EndpointSlice
    ),
    rt!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        &["all"],
        &["status", "scale"],
        META,
        "apps/deployments",
        apps::Deployment
    ),
    rt!(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        &["all"],
        &["status", "scale"],
        &["status.replicas"],
        "apps/replicasets",
        apps::ReplicaSet
    ),
    rt!(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
        &["all"],
        &["status"],
        META,
        "apps/daemonsets",
        apps::DaemonSet
    ),
    rt!(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        &["sts"],
        &["all"],
        &["status", "scale"],
        META,
        "apps/statefulsets",
        apps::StatefulSet
    ),
    rt!(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        false,
        &["crd", "crds"],
        &["api-extensions"],
        &["status"],
        META,
        "apiextensions.k8s.io/customresourcedefinitions",
        apiextensions::CustomResourceDefinition
    ),
    rt!(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
        META,
        META,
        &[],
        META,
        "apps/controllerrevisions",
        apps::ControllerRevision
    ),
    rt!(
        "batch",
        "v1",
        "Job",
        "jobs",
        "job",
        true,
        META,
        &["all"],
        &["status"],
        &["status.successful"],
        "batch/jobs",
        batch::Job
    ),
    rt!(
        "",
        "v1",
        "PodTemplate",
        "podtemplates",
        "podtemplate",
        true,
        META,
        META,
        &[],
        META,
        "core/podtemplates",
        core::PodTemplate
    ),
    rt!(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        false,
        &["pv"],
        META,
        &["status"],
        META,
        "core/persistentvolumes",
        core::PersistentVolume
    ),
    rt!(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        true,
        &["pvc"],
        META,
        &["status"],
        META,
        "core/persistentvolumeclaims",
        core::PersistentVolumeClaim
    ),
    rt!(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
        false,
        &["csr"],
        META,
        &["status", "approval"],
        &["spec.signerName"],
        "certificates/certificatesigningrequests",
        certificates::CertificateSigningRequest
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        "role",
        true,
        META,
        META,
        &[],
        META,
        "rbac/roles",
        rbac::Role
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        META,
        META,
        &[],
        META,
        "rbac/rolebindings",
        rbac::RoleBinding
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        META,
        META,
        &[],
        META,
        "rbac/clusterroles",
        rbac::ClusterRole
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        META,
        META,
        &[],
        META,
        "rbac/clusterrolebindings",
        rbac::ClusterRoleBinding
    ),
    rt!(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        true,
        &["pdb"],
        META,
        &["status"],
        META,
        "policy/poddisruptionbudgets",
        policy::PodDisruptionBudget
    ),
    rt!(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        true,
        &["netpol"],
        META,
        &[],
        META,
        "networking/networkpolicies",
        networking::NetworkPolicy
    ),
    rt!(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        "ingress",
        true,
        &["ing"],
        META,
        &["status"],
        META,
        "networking/ingresses",
        networking::Ingress
    ),
    rt!(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
        false,
        META,
        META,
        &[],
        META,
        "networking/ingressclasses",
        networking::IngressClass
    ),
    rt!(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        &["hpa"],
        &["all"],
        &["status"],
        META,
        "autoscaling/horizontalpodautoscalers",
        autoscaling::HorizontalPodAutoscaler
    ),
    rt!(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        "priorityclass",
        false,
        &["pc"],
        META,
        &[],
        META,
        "scheduling/priorityclasses",
        scheduling::PriorityClass
    ),
    rt!(
        "node.k8s.io",
        "v1",
        "RuntimeClass",
        "runtimeclasses",
        "runtimeclass",
        false,
        META,
        META,
        &[],
        META,
        "node/runtimeclasses",
        node::RuntimeClass
    ),
    rt!(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        "storageclass",
        false,
        &["sc"],
        META,
        &[],
        META,
        "storage/storageclasses",
        storage::StorageClass
    ),
    rt!(
        "storage.k8s.io",
        "v1",
        "CSIDriver",
        "csidrivers",
        "csidriver",
        false,
        META,
        META,
        &[],
        META,
        "storage/csidrivers",
        storage::CSIDriver
    ),
    rt!(
        "storage.k8s.io",
        "v1",
        "CSINode",
        "csinodes",
        "csinode",
        false,
        META,
        META,
        &[],
        META,
        "storage/csinodes",
        storage::CSINode
    ),
    rt!(
        "storage.k8s.io",
        "v1",
        "VolumeAttachment",
        "volumeattachments",
        "volumeattachment",
        false,
        META,
        META,
        &["status"],
        META,
        "storage/volumeattachments",
        storage::VolumeAttachment
    ),
];

/// The API groups we serve, in discovery order, with their one version.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn find_kind(group: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

pub fn in_group_version(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceType> {
    let (group, version) = (group.to_string(), version.to_string());
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// Paths of fields present in `input` that the typed round trip dropped:
/// fields the Kubernetes type does not know.
pub fn unknown_fields(input: &Value, typed: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_unknown(input, typed, String::new(), &mut out);
    out
}

fn walk_unknown(input: &Value, typed: &Value, path: String, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(tv) => walk_unknown(v, tv, p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, tv)) in a.iter().zip(b.iter()).enumerate() {
                walk_unknown(v, tv, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_at_depth() {
        let rt = find("apps", "v1", "deployments").unwrap();
        let input = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "bogus": 1},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": [
                {"name": "c", "image": "i", "imagePullPolicy": "Always", "colour": "blue"}
            ]}}}
        });
        let typed = (rt.typed)(&input).unwrap();
        assert_eq!(
            unknown_fields(&input, &typed),
            vec!["metadata.bogus", "spec.template.spec.containers[0].colour"]
        );
    }

    #[test]
    fn wrong_types_fail_decoding() {
        let rt = find("apps", "v1", "deployments").unwrap();
        let input = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "three", "selector": {}, "template": {}}});
        assert!((rt.typed)(&input).unwrap_err().contains("invalid type"));
    }

    #[test]
    fn lookups() {
        assert_eq!(find("", "v1", "pods").unwrap().kind, "Pod");
        assert_eq!(
            find_kind("apps", "Deployment").unwrap().plural,
            "deployments"
        );
        assert!(find("apps", "v1", "pods").is_none());
        assert_eq!(groups()[0], "events.k8s.io");
    }
}
