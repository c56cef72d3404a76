//! Discovery documents: /version, /api, /apis, /api/v1, /apis/<group>[/<version>],
//! for the built-in resources and the custom ones served now.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::api::custom::{self, CustomVersion};
use crate::api::resources::{self, ResourceType};

/// The custom resource versions served now ([`crate::api::custom::CustomTypes::snapshot`]).
pub type Custom = [Arc<CustomVersion>];

/// The Kubernetes version whose API this server speaks.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+keelson-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Every group with its versions, the preferred one first: the built-in
/// groups in discovery order, then the custom ones.
fn group_versions(custom: &Custom) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = resources::groups()
        .into_iter()
        .map(|g| {
            // Each built-in group is served at one version (autoscaling
            // at v2, the rest v1).
            let version = resources::RESOURCES
                .iter()
                .find(|r| r.group == g)
                .map_or("v1", |r| r.version);
            (g.to_string(), vec![version.to_string()])
        })
        .collect();
    for (g, vs) in custom::group_versions(custom) {
        match out.iter_mut().find(|(x, _)| *x == g) {
            Some((_, have)) => {
                let new: Vec<String> = vs.into_iter().filter(|v| !have.contains(v)).collect();
                have.extend(new);
            }
            None => out.push((g, vs)),
        }
    }
    out
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs.first().cloned().unwrap_or(Value::Null)})
}

pub fn api_group_list(custom: &Custom) -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": group_versions(custom).iter().map(|(g, vs)| group_doc(g, vs)).collect::<Vec<_>>(),
    })
}

pub fn api_group(custom: &Custom, group: &str) -> Option<Value> {
    let (g, vs) = group_versions(custom)
        .into_iter()
        .find(|(g, _)| g == group)?;
    let mut doc = group_doc(&g, &vs);
    doc["kind"] = "APIGroup".into();
    doc["apiVersion"] = "v1".into();
    Some(doc)
}

fn resource_entry(r: &ResourceType) -> Value {
    let mut e = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    e
}

fn subresource_entries(r: &ResourceType) -> Vec<Value> {
    r.subresources
        .iter()
        .map(|sub| {
            let name = format!("{}/{sub}", r.plural);
            match *sub {
                "status" => json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}),
                "scale" => json!({"name": name, "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}),
                "binding" => json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": "Binding", "verbs": ["create"]}),
                "log" => json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": "Pod", "verbs": ["get"]}),
                "token" => json!({"name": name, "singularName": "", "namespaced": r.namespaced, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}),
                "exec" => json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": "PodExecOptions", "verbs": ["create", "get"]}),
                "attach" => json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": "PodAttachOptions", "verbs": ["create", "get"]}),
                "portforward" => json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": "PodPortForwardOptions", "verbs": ["create", "get"]}),
                "proxy" => json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": if r.plural == "pods" { "PodProxyOptions" } else { "ServiceProxyOptions" }, "verbs": ["create", "delete", "get", "patch", "update"]}),
                "finalize" => json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["update"]}),
                _ => json!({"name": name, "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get"]}),
            }
        })
        .collect()
}

/// The aggregated discovery document (`apidiscovery.k8s.io/<version>`
/// `APIGroupDiscoveryList`): of the legacy group for `/api` (`legacy`), of
/// every named group for `/apis`. The same resources, verbs and
/// subresources as the per-group documents.
pub fn aggregated(custom: &Custom, legacy: bool, api_version: &str) -> Value {
    let groups: Vec<(String, Vec<String>)> = if legacy {
        vec![(String::new(), vec!["v1".to_string()])]
    } else {
        group_versions(custom)
    };
    let items: Vec<Value> = groups
        .iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"version": v, "resources": aggregated_resources(custom, group, v), "freshness": "Current"}))
                .collect();
            let mut metadata = json!({"creationTimestamp": null});
            if !group.is_empty() {
                metadata["name"] = json!(group);
            }
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": items,
    })
}

fn aggregated_resources(custom: &Custom, group: &str, version: &str) -> Vec<Value> {
    let custom_types = custom
        .iter()
        .map(|c| c.rt)
        .filter(|r| r.group == group && r.version == version);
    resources::in_group_version(group, version)
        .chain(custom_types)
        .map(|r| {
            let subresources: Vec<Value> = subresource_entries(r)
                .into_iter()
                .map(|e| {
                    let name = e["name"].as_str().unwrap_or_default();
                    json!({
                        "subresource": name.split_once('/').map_or(name, |(_, s)| s),
                        "responseKind": {
                            "group": e.get("group").cloned().unwrap_or_else(|| json!(r.group)),
                            "version": e.get("version").cloned().unwrap_or_else(|| json!(r.version)),
                            "kind": e["kind"],
                        },
                        "verbs": e["verbs"],
                    })
                })
                .collect();
            let mut d = json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs(),
            });
            if !r.short_names.is_empty() {
                d["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                d["categories"] = json!(r.categories);
            }
            if !subresources.is_empty() {
                d["subresources"] = json!(subresources);
            }
            d
        })
        .collect()
}

/// kube-apiserver's `storageVersionHash`: the first 8 bytes of the SHA-256
/// of "group/version/kind" of the stored form, in base64.
pub fn storage_version_hash(group: &str, version: &str, kind: &str) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{group}/{version}/{kind}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(&digest.as_ref()[..8])
}

pub fn api_resource_list(custom: &Custom, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in resources::in_group_version(group, version) {
        resources.push(resource_entry(r));
        resources.extend(subresource_entries(r));
    }
    for c in custom
        .iter()
        .filter(|c| c.rt.group == group && c.rt.version == version)
    {
        let mut e = resource_entry(c.rt);
        e["storageVersionHash"] = storage_version_hash(group, &c.storage_version, c.rt.kind).into();
        resources.push(e);
        resources.extend(subresource_entries(c.rt));
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_resources_listed_with_subresources() {
        let doc = api_resource_list(&[], "", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for want in [
            "pods",
            "pods/status",
            "pods/binding",
            "services",
            "namespaces",
            "nodes/status",
            "events",
        ] {
            assert!(names.contains(&want), "missing {want}");
        }
        let apps = api_resource_list(&[], "apps", "v1").unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert!(api_resource_list(&[], "nope", "v1").is_none());
        // apiserver's discovery.StorageVersionHash("apps", "v1", "Deployment").
        assert_eq!(
            storage_version_hash("apps", "v1", "Deployment"),
            "8aSe+NMegvE="
        );
        let agg = aggregated(&[], false, "apidiscovery.k8s.io/v2");
        let apps = agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .unwrap();
        assert_eq!(apps["versions"][0]["version"], "v1");
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["responseKind"]["kind"], "Deployment");
        let scale = deploy["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "scale")
            .unwrap();
        assert_eq!(
            scale["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        let core = aggregated(&[], true, "apidiscovery.k8s.io/v2");
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert!(core["items"][0]["metadata"].get("name").is_none());
        assert!(api_group(&[], "apps").is_some());
    }
}
