//! The default roles and bindings every cluster has (kube-apiserver's
//! bootstrap policy): cluster-admin for system:masters; discovery, basic
//! user and public info for everyone; admin/edit/view aggregated from the
//! `system:aggregate-to-*` roles; the identities of the scheduler, the
//! controller manager, the proxy and nodes.
//!
//! At every start the server creates those that are missing and, for those
//! still annotated `rbac.authorization.kubernetes.io/autoupdate: "true"`,
//! adds the permissions and subjects a newer release gives them (extra ones
//! are kept), as kube-apiserver reconciles its policy.

use serde_json::{Value, json};

use crate::api::registry::{Registry, WriteOptions};
use crate::api::resources;
use crate::controllers::{CONTROLLER_MANAGER_USER, SCHEDULER_USER};

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";

/// A resource rule: comma-separated verbs, API groups ("" is the core
/// group) and resources.
fn r(verbs: &str, groups: &str, resources: &str) -> Value {
    json!({
        "verbs": verbs.split(',').collect::<Vec<_>>(),
        "apiGroups": groups.split(',').collect::<Vec<_>>(),
        "resources": resources.split(',').collect::<Vec<_>>(),
    })
}

/// A resource rule limited to some object names.
fn named(verbs: &str, groups: &str, resources: &str, names: &str) -> Value {
    let mut v = r(verbs, groups, resources);
    v["resourceNames"] = json!(names.split(',').collect::<Vec<_>>());
    v
}

/// A non-resource rule.
fn urls(verbs: &str, paths: &str) -> Value {
    json!({
        "verbs": verbs.split(',').collect::<Vec<_>>(),
        "nonResourceURLs": paths.split(',').collect::<Vec<_>>(),
    })
}

const READ: &str = "get,list,watch";
const WRITE: &str = "create,delete,deletecollection,patch,update";
const ALL: &str = "create,delete,deletecollection,get,list,patch,update,watch";
const EVENTS: &str = "create,patch,update";

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("kubernetes.io/bootstrapping".into(), "rbac-defaults".into());
    for (k, v) in labels {
        l.insert(k.to_string(), json!(v));
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": l, "annotations": {AUTOUPDATE: "true"}},
        "rules": rules,
    })
}

fn aggregated(name: &str, labels: &[(&str, &str)], to: &str) -> Value {
    let mut v = role(name, labels, Vec::new());
    v["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"}}
    ]});
    v
}

const TO_ADMIN: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-admin", "true");
const TO_EDIT: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-edit", "true");
const TO_VIEW: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-view", "true");

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let controllers = controller_roles()
        .into_iter()
        .map(|(id, rules)| role(&controller_role_name(id), &[], rules));
    let mut roles = vec![
        role("cluster-admin", &[], vec![r("*", "*", "*"), urls("*", "*")]),
        role(
            "system:discovery",
            &[],
            vec![urls(
                "get",
                "/api,/api/*,/apis,/apis/*,/healthz,/livez,/openapi,/openapi/*,/readyz,/version,/version/",
            )],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![urls("get", "/healthz,/livez,/readyz,/version,/version/")],
        ),
        role(
            "system:basic-user",
            &[],
            vec![
                r(
                    "create",
                    "authorization.k8s.io",
                    "selfsubjectaccessreviews,selfsubjectrulesreviews",
                ),
                r("create", "authentication.k8s.io", "selfsubjectreviews"),
            ],
        ),
        role(
            "system:monitoring",
            &[],
            vec![urls(
                "get",
                "/healthz,/healthz/*,/livez,/livez/*,/metrics,/metrics/slis,/readyz,/readyz/*",
            )],
        ),
        role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(
                "get",
                "/.well-known/openid-configuration,/openid/v1/jwks",
            )],
        ),
        aggregated("admin", &[], "admin"),
        aggregated("edit", &[TO_ADMIN], "edit"),
        aggregated("view", &[TO_EDIT], "view"),
        role(
            "system:aggregate-to-admin",
            &[TO_ADMIN],
            vec![
                r(
                    "create",
                    "authorization.k8s.io",
                    "localsubjectaccessreviews",
                ),
                r(ALL, "rbac.authorization.k8s.io", "rolebindings,roles"),
            ],
        ),
        role(
            "system:aggregate-to-edit",
            &[TO_EDIT],
            vec![
                r(
                    READ,
                    "",
                    "pods/attach,pods/exec,pods/portforward,pods/proxy,secrets,services/proxy",
                ),
                r("impersonate", "", "serviceaccounts"),
                r(
                    WRITE,
                    "",
                    "pods,pods/attach,pods/exec,pods/portforward,pods/proxy",
                ),
                r("create", "", "pods/eviction"),
                r(
                    WRITE,
                    "",
                    "configmaps,events,persistentvolumeclaims,replicationcontrollers,replicationcontrollers/scale,secrets,serviceaccounts,services,services/proxy",
                ),
                r("create", "", "serviceaccounts/token"),
                r(
                    WRITE,
                    "apps",
                    "daemonsets,deployments,deployments/rollback,deployments/scale,replicasets,replicasets/scale,statefulsets,statefulsets/scale",
                ),
                r(WRITE, "autoscaling", "horizontalpodautoscalers"),
                r(WRITE, "batch", "cronjobs,jobs"),
                r(WRITE, "policy", "poddisruptionbudgets"),
                r(WRITE, "networking.k8s.io", "ingresses,networkpolicies"),
                r(ALL, "coordination.k8s.io", "leases"),
            ],
        ),
        role(
            "system:aggregate-to-view",
            &[TO_VIEW],
            vec![
                r(
                    READ,
                    "",
                    "configmaps,endpoints,persistentvolumeclaims,persistentvolumeclaims/status,pods,replicationcontrollers,replicationcontrollers/scale,serviceaccounts,services,services/status",
                ),
                r(
                    READ,
                    "",
                    "bindings,events,limitranges,namespaces/status,pods/log,pods/status,replicationcontrollers/status,resourcequotas,resourcequotas/status",
                ),
                r(READ, "", "namespaces"),
                r(READ, "discovery.k8s.io", "endpointslices"),
                r(
                    READ,
                    "apps",
                    "controllerrevisions,daemonsets,daemonsets/status,deployments,deployments/scale,deployments/status,replicasets,replicasets/scale,replicasets/status,statefulsets,statefulsets/scale,statefulsets/status",
                ),
                r(
                    READ,
                    "autoscaling",
                    "horizontalpodautoscalers,horizontalpodautoscalers/status",
                ),
                r(READ, "batch", "cronjobs,cronjobs/status,jobs,jobs/status"),
                r(
                    READ,
                    "policy",
                    "poddisruptionbudgets,poddisruptionbudgets/status",
                ),
                r(
                    READ,
                    "networking.k8s.io",
                    "ingresses,ingresses/status,networkpolicies",
                ),
            ],
        ),
        role(
            "system:auth-delegator",
            &[],
            vec![
                r("create", "authentication.k8s.io", "tokenreviews"),
                r("create", "authorization.k8s.io", "subjectaccessreviews"),
            ],
        ),
        role(
            "system:kube-scheduler",
            &[],
            vec![
                r(EVENTS, ",events.k8s.io", "events"),
                r("create", "coordination.k8s.io", "leases"),
                named(
                    "get,update",
                    "coordination.k8s.io",
                    "leases",
                    "kube-scheduler",
                ),
                r(READ, "", "nodes"),
                r("delete,get,list,watch", "", "pods"),
                r("create", "", "bindings,pods/binding"),
                r("patch,update", "", "pods/status"),
                r(READ, "", "replicationcontrollers,services"),
                r(READ, "apps,extensions", "replicasets"),
                r(READ, "apps", "statefulsets"),
                r(READ, "policy", "poddisruptionbudgets"),
                r(READ, "", "persistentvolumeclaims,persistentvolumes"),
                r("create", "authentication.k8s.io", "tokenreviews"),
                r("create", "authorization.k8s.io", "subjectaccessreviews"),
                r(
                    READ,
                    "storage.k8s.io",
                    "csinodes,csidrivers,csistoragecapacities",
                ),
                r(READ, "", "namespaces"),
            ],
        ),
        role(
            "system:volume-scheduler",
            &[],
            vec![
                r(
                    "get,list,patch,update,watch",
                    "",
                    "persistentvolumes,persistentvolumeclaims",
                ),
                r(READ, "storage.k8s.io", "storageclasses"),
            ],
        ),
        role(
            "system:kube-controller-manager",
            &[],
            vec![
                r(EVENTS, ",events.k8s.io", "events"),
                r("create", "coordination.k8s.io", "leases"),
                named(
                    "get,update",
                    "coordination.k8s.io",
                    "leases",
                    "kube-controller-manager",
                ),
                r("create", "", "secrets,serviceaccounts"),
                r("delete", "", "secrets"),
                r("get", "", "configmaps,namespaces,secrets,serviceaccounts"),
                r("update", "", "secrets,serviceaccounts"),
                r("create", "authentication.k8s.io", "tokenreviews"),
                r("create", "authorization.k8s.io", "subjectaccessreviews"),
                r("list,watch", "*", "*"),
                r("create", "", "serviceaccounts/token"),
            ],
        ),
        role(
            "system:kube-dns",
            &[],
            vec![r("list,watch", "", "endpoints,services")],
        ),
        role(
            "system:node-proxier",
            &[],
            vec![
                r("list,watch", "", "endpoints,services"),
                r(READ, "", "nodes"),
                r(EVENTS, ",events.k8s.io", "events"),
                r("list,watch", "discovery.k8s.io", "endpointslices"),
            ],
        ),
        role("system:node", &[], node_rules()),
        role(
            "system:node-bootstrapper",
            &[],
            vec![r(
                "create,get,list,watch",
                "certificates.k8s.io",
                "certificatesigningrequests",
            )],
        ),
        role(
            "system:kubelet-api-admin",
            &[],
            vec![
                r(READ, "", "nodes"),
                r("proxy", "", "nodes"),
                r("*", "", "nodes/log,nodes/metrics,nodes/proxy,nodes/stats"),
            ],
        ),
        role(
            "system:node-problem-detector",
            &[],
            vec![
                r("get", "", "nodes"),
                r("patch", "", "nodes/status"),
                r(EVENTS, ",events.k8s.io", "events"),
            ],
        ),
        role(
            "system:persistent-volume-provisioner",
            &[],
            vec![
                r("create,delete,get,list,watch", "", "persistentvolumes"),
                r("get,list,update,watch", "", "persistentvolumeclaims"),
                r(READ, "storage.k8s.io", "storageclasses"),
                r("watch", "", "events"),
                r(EVENTS, ",events.k8s.io", "events"),
            ],
        ),
        role(
            "system:kube-aggregator",
            &[],
            vec![r(READ, "", "endpoints,services")],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[],
            vec![r(
                "create",
                "certificates.k8s.io",
                "certificatesigningrequests/nodeclient",
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[],
            vec![r(
                "create",
                "certificates.k8s.io",
                "certificatesigningrequests/selfnodeclient",
            )],
        ),
    ];
    roles.extend(controllers);
    roles
}

/// The role of each controller's service account (kube-controller-manager's
/// `system:controller:*` roles, each bound to `kube-system/NAME`). Where
/// ours patches what upstream's updates (a status, a Deployment's
/// annotations), the role allows both.
pub fn controller_roles() -> Vec<(&'static str, Vec<Value>)> {
    use crate::controllers::identity as id;
    let events = || r(EVENTS, ",events.k8s.io", "events");
    vec![
        (
            id::DEPLOYMENT,
            vec![
                r(
                    "get,list,watch,update,patch",
                    "extensions,apps",
                    "deployments",
                ),
                r("update,patch", "extensions,apps", "deployments/status"),
                r("update", "extensions,apps", "deployments/finalizers"),
                r(
                    "get,list,watch,create,update,patch,delete",
                    "apps,extensions",
                    "replicasets",
                ),
                r("get,list,watch,update", "", "pods"),
                events(),
            ],
        ),
        (
            id::REPLICASET,
            vec![
                r("get,list,watch,update", "apps,extensions", "replicasets"),
                r("update,patch", "apps,extensions", "replicasets/status"),
                r("update", "apps,extensions", "replicasets/finalizers"),
                r("list,watch,patch,create,delete", "", "pods"),
                events(),
            ],
        ),
        (
            id::DAEMONSET,
            vec![
                r(READ, "extensions,apps", "daemonsets"),
                r("update,patch", "extensions,apps", "daemonsets/status"),
                r("update", "extensions,apps", "daemonsets/finalizers"),
                r("list,watch", "", "nodes"),
                r("list,watch,create,delete,patch", "", "pods"),
                r("create", "", "pods/binding"),
                r(
                    "get,list,watch,create,delete,update,patch",
                    "apps",
                    "controllerrevisions",
                ),
                events(),
            ],
        ),
        (
            id::JOB,
            vec![
                r("get,list,watch,update,patch", "batch", "jobs"),
                r("update,patch", "batch", "jobs/status"),
                r("update", "batch", "jobs/finalizers"),
                r("list,watch,create,delete,patch", "", "pods"),
                events(),
            ],
        ),
        (
            id::ENDPOINTSLICE,
            vec![
                r(READ, "", "services,pods,nodes"),
                r("update", "", "services/finalizers"),
                r(
                    "get,list,watch,create,update,delete",
                    "discovery.k8s.io",
                    "endpointslices",
                ),
                events(),
            ],
        ),
        (
            id::ENDPOINT,
            vec![
                r(READ, "", "services,pods"),
                r("get,list,watch,create,update,delete", "", "endpoints"),
                r("create", "", "endpoints/restricted"),
                events(),
            ],
        ),
        (
            id::SERVICE_ACCOUNT,
            vec![r("create", "", "serviceaccounts"), events()],
        ),
        (
            id::ROOT_CA,
            vec![r("create,update", "", "configmaps"), events()],
        ),
        (
            id::GARBAGE_COLLECTOR,
            vec![r("get,list,watch,patch,update,delete", "*", "*"), events()],
        ),
        (
            id::NODE,
            vec![
                r("get,list,watch,update,delete,patch", "", "nodes"),
                r("patch,update", "", "nodes/status"),
                r("patch,update", "", "pods/status"),
                r("list,watch,get,delete", "", "pods"),
                events(),
            ],
        ),
    ]
}

/// The name of a controller's role and binding.
pub fn controller_role_name(identity: &str) -> String {
    format!("system:controller:{identity}")
}

/// What a node may do (the `system:node` role; the node authorizer narrows
/// the object-specific parts to the node's own objects).
pub fn node_rules() -> Vec<Value> {
    vec![
        r("create", "authentication.k8s.io", "tokenreviews"),
        r(
            "create",
            "authorization.k8s.io",
            "localsubjectaccessreviews,subjectaccessreviews",
        ),
        r(READ, "", "services"),
        r("create,get,list,watch", "", "nodes"),
        r("patch,update", "", "nodes/status"),
        r("patch,update", "", "nodes"),
        r(EVENTS, ",events.k8s.io", "events"),
        r(READ, "", "pods"),
        r("create,delete", "", "pods"),
        r("patch,update", "", "pods/status"),
        r("create", "", "pods/eviction"),
        r(READ, "", "configmaps,secrets"),
        r("get", "", "persistentvolumeclaims,persistentvolumes"),
        r("get", "", "endpoints"),
        r(
            "create,get,list,watch",
            "certificates.k8s.io",
            "certificatesigningrequests",
        ),
        r(
            "create,delete,get,patch,update",
            "coordination.k8s.io",
            "leases",
        ),
        r("get", "storage.k8s.io", "volumeattachments"),
        r("create", "", "serviceaccounts/token"),
        r("get,patch,update", "", "persistentvolumeclaims/status"),
        r(READ, "storage.k8s.io", "csidrivers"),
        r(
            "create,delete,get,patch,update",
            "storage.k8s.io",
            "csinodes",
        ),
        r(READ, "node.k8s.io", "runtimeclasses"),
    ]
}

fn binding(role: &str, subjects: &[(&str, &str)]) -> Value {
    named_binding(role, role, subjects)
}

fn named_binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, name)| match *kind {
            "ServiceAccount" => {
                let (ns, n) = name.split_once('/').unwrap_or(("default", name));
                json!({"kind": kind, "name": n, "namespace": ns})
            }
            _ => json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": name}),
        })
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {AUTOUPDATE: "true"},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    const AUTHENTICATED: &str = super::super::auth::AUTHENTICATED;
    let mut bindings = vec![
        binding("cluster-admin", &[("Group", "system:masters")]),
        binding("system:discovery", &[("Group", AUTHENTICATED)]),
        binding("system:basic-user", &[("Group", AUTHENTICATED)]),
        binding(
            "system:public-info-viewer",
            &[
                ("Group", AUTHENTICATED),
                ("Group", "system:unauthenticated"),
            ],
        ),
        binding("system:monitoring", &[("Group", "system:monitoring")]),
        binding(
            "system:service-account-issuer-discovery",
            &[("Group", "system:serviceaccounts")],
        ),
        binding("system:kube-scheduler", &[("User", SCHEDULER_USER)]),
        binding("system:volume-scheduler", &[("User", SCHEDULER_USER)]),
        binding(
            "system:kube-controller-manager",
            &[("User", CONTROLLER_MANAGER_USER)],
        ),
        binding(
            "system:kube-dns",
            &[("ServiceAccount", "kube-system/kube-dns")],
        ),
        binding("system:node-proxier", &[("User", "system:kube-proxy")]),
        // Joining nodes (kubeadm's bindings): a bootstrap token may ask for
        // a node client certificate, which is approved; a node may renew
        // its own. A Keelson node also does kube-proxy's and the cluster
        // DNS's work, so nodes get system:node-proxier.
        named_binding(
            "keelson:node-bootstrapper",
            "system:node-bootstrapper",
            &[("Group", "system:bootstrappers")],
        ),
        named_binding(
            "keelson:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[("Group", "system:bootstrappers")],
        ),
        named_binding(
            "keelson:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[("Group", "system:nodes")],
        ),
        named_binding(
            "keelson:node-proxier",
            "system:node-proxier",
            &[("Group", "system:nodes")],
        ),
    ];
    for (id, _) in controller_roles() {
        let subject = format!("{}/{id}", crate::controllers::CONTROLLER_NAMESPACE);
        bindings.push(binding(
            &controller_role_name(id),
            &[("ServiceAccount", &subject)],
        ));
    }
    bindings
}

/// `existing` with whatever of `wanted[key]` (an array) it lacks appended;
/// None when it lacks nothing.
fn union(existing: &Value, wanted: &Value, key: &str) -> Option<Value> {
    let have = existing[key].as_array().cloned().unwrap_or_default();
    let missing: Vec<Value> = wanted[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| !have.contains(w))
        .cloned()
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut v = existing.clone();
    v[key] = Value::Array(have.into_iter().chain(missing).collect());
    Some(v)
}

/// What a stored default object should become, if anything.
fn reconciled(existing: &Value, wanted: &Value) -> Option<Value> {
    if existing["metadata"]["annotations"][AUTOUPDATE] != "true" {
        return None;
    }
    if wanted["aggregationRule"].is_object() {
        let sel = &wanted["aggregationRule"]["clusterRoleSelectors"];
        let mut v = existing.clone();
        let changed = union(
            &existing["aggregationRule"],
            &wanted["aggregationRule"],
            "clusterRoleSelectors",
        )
        .map(|agg| v["aggregationRule"] = agg)
        .is_some()
            || (!existing["aggregationRule"].is_object() && sel.is_array());
        return changed.then_some(v);
    }
    let key = if wanted.get("subjects").is_some() {
        "subjects"
    } else {
        "rules"
    };
    union(existing, wanted, key)
}

/// Create the default roles and bindings, or bring those still marked
/// for auto-update up to date. Failures are logged.
pub async fn reconcile(registry: &Registry) {
    let opts = WriteOptions::default();
    for (plural, objects) in [
        ("clusterroles", cluster_roles()),
        ("clusterrolebindings", cluster_role_bindings()),
    ] {
        let Some(rt) = resources::find("rbac.authorization.k8s.io", "v1", plural) else {
            continue;
        };
        for wanted in objects {
            let name = wanted["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let result = match registry.get(rt, None, &name).await {
                Err(e) if e.code == 404 => {
                    registry.create(rt, None, wanted, &opts).await.map(|_| ())
                }
                Err(e) => Err(e),
                Ok(existing) => match reconciled(&existing, &wanted) {
                    Some(v) => registry
                        .update(rt, None, &name, v, None, &opts)
                        .await
                        .map(|_| ()),
                    None => Ok(()),
                },
            };
            if let Err(e) = result
                && e.code != 409
            {
                tracing::warn!(%plural, %name, error = %e, "reconcile default RBAC policy");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::authz::attributes::Attributes;
    use crate::server::authz::rbac::{Kind, Policy};

    fn defaults() -> Policy {
        let mut p = Policy::default();
        for role in super::super::rbac::aggregate_all(&cluster_roles()) {
            p.upsert(Kind::ClusterRole, &role);
        }
        for b in cluster_role_bindings() {
            p.upsert(Kind::ClusterRoleBinding, &b);
        }
        p
    }

    fn path(user: &str, groups: &[&str], p: &str) -> Attributes {
        Attributes {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            verb: "get".into(),
            path: p.into(),
            ..Attributes::default()
        }
    }

    #[test]
    fn the_defaults_give_what_kube_apiservers_give() {
        let p = defaults();
        let anon = ["system:unauthenticated"];
        assert!(
            p.allows(&path("system:anonymous", &anon, "/healthz"))
                .is_some()
        );
        assert!(
            p.allows(&path("system:anonymous", &anon, "/version"))
                .is_some()
        );
        assert!(p.allows(&path("system:anonymous", &anon, "/api")).is_none());
        assert!(
            p.allows(&path("system:anonymous", &anon, "/metrics"))
                .is_none()
        );
        let authn = ["system:authenticated"];
        assert!(p.allows(&path("bob", &authn, "/apis/apps/v1")).is_some());
        assert!(p.allows(&path("bob", &authn, "/metrics")).is_none());
        let mut a = path("bob", &authn, "");
        a.resource_request = true;
        a.verb = "create".into();
        a.api_group = "authorization.k8s.io".into();
        a.resource = "selfsubjectaccessreviews".into();
        assert!(p.allows(&a).is_some());
        a.verb = "list".into();
        a.api_group = String::new();
        a.resource = "pods".into();
        a.namespace = "default".into();
        assert!(
            p.allows(&a).is_none(),
            "an authenticated user reads no pods"
        );
        a.groups.push("system:masters".into());
        assert!(p.allows(&a).is_some());
        // view and edit are aggregated from the aggregate-to roles.
        let rules = |name: &str| {
            p.role_rules("ClusterRole", "", name)
                .map(<[_]>::len)
                .unwrap_or(0)
        };
        assert!(rules("view") >= 9, "view: {}", rules("view"));
        assert!(rules("edit") > rules("view"));
        assert!(rules("admin") > rules("edit"));
    }

    #[test]
    fn each_controller_may_do_its_own_work_and_nothing_else() {
        use crate::controllers::identity;
        let p = defaults();
        let sa = [
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
        ];
        let can = |who: &str, verb: &str, group: &str, resource: &str| {
            let user = if who.starts_with("system:") {
                who.to_string()
            } else {
                identity::user(who)
            };
            p.allows(&crate::server::authz::rbac::tests::attrs(
                &user, &sa, verb, group, "team", resource,
            ))
            .is_some()
        };
        // Every identity the controllers act as has its role and binding.
        for id in identity::ALL {
            assert!(
                p.role_rules("ClusterRole", "", &controller_role_name(id))
                    .is_some(),
                "{id} has no role"
            );
        }
        let cases = [
            (identity::DEPLOYMENT, "create", "apps", "replicasets", true),
            (
                identity::DEPLOYMENT,
                "patch",
                "apps",
                "deployments/status",
                true,
            ),
            (identity::DEPLOYMENT, "create", "", "pods", false),
            (identity::REPLICASET, "create", "", "pods", true),
            (identity::REPLICASET, "create", "apps", "replicasets", false),
            (
                identity::DAEMONSET,
                "patch",
                "apps",
                "daemonsets/status",
                true,
            ),
            (identity::JOB, "delete", "", "pods", true),
            (
                identity::ENDPOINTSLICE,
                "create",
                "discovery.k8s.io",
                "endpointslices",
                true,
            ),
            (identity::ENDPOINTSLICE, "create", "", "endpoints", false),
            (identity::ENDPOINT, "update", "", "endpoints", true),
            (
                identity::SERVICE_ACCOUNT,
                "create",
                "",
                "serviceaccounts",
                true,
            ),
            (identity::SERVICE_ACCOUNT, "get", "", "secrets", false),
            (identity::ROOT_CA, "update", "", "configmaps", true),
            (identity::ROOT_CA, "delete", "", "configmaps", false),
            (
                identity::GARBAGE_COLLECTOR,
                "delete",
                "example.com",
                "widgets",
                true,
            ),
            (identity::GARBAGE_COLLECTOR, "create", "", "pods", false),
            (identity::NODE, "patch", "", "nodes/status", true),
            (identity::NODE, "create", "", "pods", false),
            (SCHEDULER_USER, "create", "", "pods/binding", true),
            (SCHEDULER_USER, "create", "", "pods", false),
            (
                CONTROLLER_MANAGER_USER,
                "watch",
                "apps",
                "deployments",
                true,
            ),
            (
                CONTROLLER_MANAGER_USER,
                "create",
                "apps",
                "replicasets",
                false,
            ),
            (CONTROLLER_MANAGER_USER, "create", "", "secrets", true),
        ];
        for (who, verb, group, resource, want) in cases {
            assert_eq!(
                can(who, verb, group, resource),
                want,
                "{who} {verb} {group}/{resource}"
            );
        }
    }

    #[test]
    fn reconciling_adds_what_is_missing_and_keeps_extras() {
        let wanted = binding("system:discovery", &[("Group", "system:authenticated")]);
        let mut existing = wanted.clone();
        existing["subjects"] = json!([{"kind": "User", "name": "extra"}]);
        let v = reconciled(&existing, &wanted).expect("a missing subject");
        assert_eq!(v["subjects"].as_array().unwrap().len(), 2);
        assert!(reconciled(&v, &wanted).is_none(), "nothing left to add");
        existing["metadata"]["annotations"][AUTOUPDATE] = json!("false");
        assert!(reconciled(&existing, &wanted).is_none(), "opted out");
        let role = cluster_roles().remove(0);
        let mut cut = role.clone();
        cut["rules"] = json!([]);
        assert_eq!(reconciled(&cut, &role).unwrap()["rules"], role["rules"]);
    }
}
