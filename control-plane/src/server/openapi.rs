//! OpenAPI v3 documents, enough for clients to see which operations exist
//! and that the server validates fields itself (`fieldValidation`), so
//! kubectl leaves strict validation to the server.

use serde_json::{Map, Value, json};

use crate::api::resources::{self, ResourceType};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in resources::RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

fn hash(doc: &Value) -> String {
    // FNV-1a over the document: stable for one build, changes with the document.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in doc.to_string().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

/// `/openapi/v3`: the index of group-version documents.
pub fn index() -> Value {
    let mut paths = Map::new();
    for (g, v) in group_versions() {
        let doc = document(g, v).unwrap_or_default();
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&doc))}),
        );
    }
    json!({"paths": paths})
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn op(r: &ResourceType, action: &str, id: String, extra_params: &[&str]) -> Value {
    let mut params: Vec<Value> = extra_params.iter().map(|p| param(p)).collect();
    params.push(param("pretty"));
    let mut o = json!({
        "operationId": id,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}},
    });
    if action == "patch" {
        let body = json!({"schema": {"type": "object"}});
        o["requestBody"] = json!({"content": {
            "application/json-patch+json": body,
            "application/merge-patch+json": body,
        }, "required": true});
    }
    if action == "post" || action == "put" {
        o["requestBody"] =
            json!({"content": {"*/*": {"schema": {"type": "object"}}}, "required": true});
    }
    o
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>`.
pub fn document(group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let write = ["dryRun", "fieldManager", "fieldValidation"];
    let mut any = false;
    for r in resources::in_group_version(group, version) {
        any = true;
        let base = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{prefix}/{}", r.plural)
        };
        let id = |verb: &str| format!("{verb}{}{}", r.group.replace('.', ""), r.kind);
        paths.insert(base.clone(), json!({
            "get": op(r, "list", id("list"), &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch"]),
            "post": op(r, "post", id("create"), &write),
            "delete": op(r, "deletecollection", id("deleteCollection"), &["labelSelector", "fieldSelector"]),
        }));
        paths.insert(format!("{base}/{{name}}"), json!({
            "get": op(r, "get", id("read"), &[]),
            "put": op(r, "put", id("replace"), &write),
            "patch": op(r, "patch", id("patch"), &["dryRun", "fieldManager", "fieldValidation", "force"]),
            "delete": op(r, "delete", id("delete"), &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
        }));
    }
    if !any {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", super::discovery::KUBE_MAJOR, super::discovery::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// `/openapi/v2` as JSON: a document with no definitions. Clients that
/// validate on their own (kubectl before 1.28 loads it eagerly) then skip
/// validation for our types, which the server validates itself.
pub fn v2_json() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", super::discovery::KUBE_MAJOR, super::discovery::KUBE_MINOR)},
        "paths": {},
        "definitions": {},
    })
}

fn pb_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    let mut len = bytes.len();
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(bytes);
}

/// The same document in gnostic's `openapi_v2.Document` protobuf encoding
/// (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`): swagger (1),
/// info (2: title 1, version 2), paths (8), definitions (9).
pub fn v2_protobuf() -> Vec<u8> {
    let mut info = Vec::new();
    pb_field(&mut info, 1, b"Kubernetes");
    let version = format!(
        "v{}.{}.0",
        super::discovery::KUBE_MAJOR,
        super::discovery::KUBE_MINOR
    );
    pb_field(&mut info, 2, version.as_bytes());
    let mut doc = Vec::new();
    pb_field(&mut doc, 1, b"2.0");
    pb_field(&mut doc, 2, &info);
    pb_field(&mut doc, 8, &[]);
    pb_field(&mut doc, 9, &[]);
    doc
}

#[cfg(test)]
mod tests {
    #[test]
    fn v2_protobuf_bytes() {
        let pb = super::v2_protobuf();
        // swagger = "2.0"
        assert_eq!(&pb[..5], &[0x0a, 3, b'2', b'.', b'0']);
        // ends with empty paths and definitions
        assert_eq!(&pb[pb.len() - 4..], &[0x42, 0, 0x4a, 0]);
    }

    use super::*;

    #[test]
    fn patch_operations_declare_field_validation() {
        let doc = document("apps", "v1").unwrap();
        let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(
            p["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == "fieldValidation")
        );
        let idx = index();
        assert!(
            idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        assert!(document("nope", "v1").is_none());
    }
}
