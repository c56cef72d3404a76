//! The custom resource types a server serves, from the plan over its
//! stored CustomResourceDefinitions ([`super::crd::plan`]), and how a custom
//! resource is read from and written to storage.
//!
//! Each served version is a [`ResourceType`] like the built-in ones, so the
//! REST semantics, selectors, watches and discovery treat both alike. A
//! `ResourceType` has `&'static` fields: the ones made here are leaked,
//! once per distinct shape ([`intern`]), so re-creating or re-planning a
//! definition does not leak again. What changes without changing the
//! shape — the schema, the storage version, printer columns — lives in the
//! [`CustomVersion`] beside it, replaced at every plan.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;

use super::crd::{PrinterColumn, ScalePaths, ServedVersion, version_priority};
use super::resources::ResourceType;
use super::schema;

/// One served version of a custom resource.
#[derive(Debug)]
pub struct CustomVersion {
    pub rt: &'static ResourceType,
    /// The definition's name.
    pub crd: String,
    pub storage_version: String,
    pub schema: Option<Value>,
    pub scale: Option<ScalePaths>,
    pub printer_columns: Vec<PrinterColumn>,
    pub terminating: bool,
}

impl CustomVersion {
    fn api_version_of(&self, version: &str) -> String {
        format!("{}/{version}", self.rt.group)
    }

    /// A stored object as this version shows it: its apiVersion (conversion
    /// `None` changes nothing else), pruned to this version's schema and
    /// with its defaults.
    pub fn from_storage(&self, mut v: Value) -> Value {
        if let Some(m) = v.as_object_mut() {
            m.insert("apiVersion".into(), self.rt.api_version().into());
        }
        self.prune_and_default(&mut v);
        v
    }

    /// An object of this version as stored: in the storage version.
    pub fn to_storage(&self, mut v: Value) -> Value {
        if let Some(m) = v.as_object_mut() {
            m.insert(
                "apiVersion".into(),
                self.api_version_of(&self.storage_version).into(),
            );
        }
        v
    }

    /// Prune unknown fields (their paths returned) and apply defaults.
    pub fn prune_and_default(&self, v: &mut Value) -> Vec<String> {
        let Some(s) = &self.schema else {
            return Vec::new();
        };
        let pruned = schema::prune(v, s, true);
        schema::apply_defaults(v, s);
        pruned
    }

    /// Schema validation causes of an object of this version.
    pub fn validate(&self, v: &Value) -> Vec<super::errors::Cause> {
        match &self.schema {
            Some(s) => schema::validate(v, s, ""),
            None => Vec::new(),
        }
    }
}

/// The served custom resource versions of one server.
#[derive(Debug, Default)]
pub struct CustomTypes {
    current: RwLock<Arc<Vec<Arc<CustomVersion>>>>,
}

impl CustomTypes {
    /// Serve exactly these versions from now on.
    pub fn replace(&self, served: &[ServedVersion]) {
        let next: Vec<Arc<CustomVersion>> = served
            .iter()
            .map(|s| {
                Arc::new(CustomVersion {
                    rt: intern(s),
                    crd: s.crd.clone(),
                    storage_version: s.storage_version.clone(),
                    schema: s.schema.clone(),
                    scale: s.scale.clone(),
                    printer_columns: s.printer_columns.clone(),
                    terminating: s.terminating,
                })
            })
            .collect();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    /// Everything served now.
    pub fn snapshot(&self) -> Arc<Vec<Arc<CustomVersion>>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<CustomVersion>> {
        self.snapshot()
            .iter()
            .find(|c| c.rt.group == group && c.rt.version == version && c.rt.plural == plural)
            .cloned()
    }

    /// The version serving `rt`, if `rt` is a custom resource type.
    pub fn of(&self, rt: &ResourceType) -> Option<Arc<CustomVersion>> {
        if !rt.custom {
            return None;
        }
        self.find(rt.group, rt.version, rt.plural)
    }
}

/// The groups and versions in `served`, each group's versions in
/// Kubernetes' priority order (the first is the preferred one).
pub fn group_versions(served: &[Arc<CustomVersion>]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for c in served {
        let (g, v) = (c.rt.group.to_string(), c.rt.version.to_string());
        match out.iter_mut().find(|(x, _)| *x == g) {
            Some((_, vs)) => {
                if !vs.contains(&v) {
                    vs.push(v);
                }
            }
            None => out.push((g, vec![v])),
        }
    }
    for (_, vs) in &mut out {
        vs.sort_by(|a, b| version_priority(a, b));
    }
    out
}

/// What makes two served versions the same `ResourceType`.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Shape {
    group: String,
    version: String,
    kind: String,
    plural: String,
    singular: String,
    namespaced: bool,
    short_names: Vec<String>,
    categories: Vec<String>,
    status: bool,
    scale: bool,
    field_labels: Vec<String>,
}

fn leak_str(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_strs(v: &[String]) -> &'static [&'static str] {
    Box::leak(
        v.iter()
            .map(|s| leak_str(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// Custom resources are kept as they come: the schema, not a Rust type,
/// says what they hold.
fn as_is(v: &Value) -> Result<Value, String> {
    if v.is_object() {
        Ok(v.clone())
    } else {
        Err("the object must be a JSON object".into())
    }
}

/// The `ResourceType` of a served version: one leaked value per distinct
/// shape for the life of the process (a cache of immutable values, shared
/// by every server in it).
fn intern(s: &ServedVersion) -> &'static ResourceType {
    static CACHE: Mutex<Option<HashMap<Shape, &'static ResourceType>>> = Mutex::new(None);
    let shape = Shape {
        group: s.group.clone(),
        version: s.version.clone(),
        kind: s.names.kind.clone(),
        plural: s.names.plural.clone(),
        singular: s.names.singular.clone().unwrap_or_default(),
        namespaced: s.namespaced,
        short_names: s.names.short_names.clone().unwrap_or_default(),
        categories: s.names.categories.clone().unwrap_or_default(),
        status: s.status,
        scale: s.scale.is_some(),
        field_labels: s.selectable_fields.clone(),
    };
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(rt) = cache.get(&shape) {
        return rt;
    }
    let subresources: &'static [&'static str] = match (shape.status, shape.scale) {
        (true, true) => &["status", "scale"],
        (true, false) => &["status"],
        (false, true) => &["scale"],
        (false, false) => &[],
    };
    let rt: &'static ResourceType = Box::leak(Box::new(ResourceType {
        group: leak_str(&shape.group),
        version: leak_str(&shape.version),
        kind: leak_str(&shape.kind),
        plural: leak_str(&shape.plural),
        singular: leak_str(&shape.singular),
        namespaced: shape.namespaced,
        short_names: leak_strs(&shape.short_names),
        categories: leak_strs(&shape.categories),
        subresources,
        field_labels: leak_strs(&shape.field_labels),
        storage: leak_str(&format!("{}/{}", shape.group, shape.plural)),
        typed: as_is,
        label_names: false,
        custom: true,
    }));
    cache.insert(shape, rt);
    rt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::{self, TakenNames};
    use serde_json::json;

    fn served(kind: &str) -> Vec<ServedVersion> {
        let mut v = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "things.intern.example.com", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"group": "intern.example.com", "scope": "Namespaced",
                "names": {"plural": "things", "kind": kind},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "selectableFields": [{"jsonPath": ".spec.size"}],
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                         "spec": {"type": "object", "properties": {"size": {"type": "string", "default": "m"}}}}}}},
                    {"name": "v2", "served": true, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
                ]}
        });
        crd::set_defaults(&mut v);
        crd::plan(&[v], &|_| TakenNames::default(), "now").served
    }

    #[test]
    fn the_same_shape_is_leaked_once() {
        let types = CustomTypes::default();
        types.replace(&served("Thing"));
        let a = types.find("intern.example.com", "v1", "things").unwrap().rt;
        types.replace(&served("Thing"));
        let b = types.find("intern.example.com", "v1", "things").unwrap().rt;
        assert!(std::ptr::eq(a, b));
        types.replace(&served("Other"));
        let c = types.find("intern.example.com", "v1", "things").unwrap().rt;
        assert!(!std::ptr::eq(a, c));
        assert_eq!(c.kind, "Other");
        assert_eq!(c.storage, "intern.example.com/things");
        assert!(c.custom && c.namespaced);
        types.replace(&[]);
        assert!(types.find("intern.example.com", "v1", "things").is_none());
    }

    #[test]
    fn versions_share_storage_and_show_their_own_api_version() {
        let types = CustomTypes::default();
        types.replace(&served("Thing"));
        let v1 = types.find("intern.example.com", "v1", "things").unwrap();
        let v2 = types.find("intern.example.com", "v2", "things").unwrap();
        let obj = json!({"apiVersion": "intern.example.com/v2", "kind": "Thing", "metadata": {"name": "a"}, "spec": {}});
        let stored = v2.to_storage(obj);
        assert_eq!(stored["apiVersion"], "intern.example.com/v1");
        let read = v2.from_storage(stored.clone());
        assert_eq!(read["apiVersion"], "intern.example.com/v2");
        // Defaults of the version read apply on the way out, and what its
        // schema does not know is pruned.
        let mut stored = stored;
        stored["spec"]["only_in_v2"] = "x".into();
        let read = v1.from_storage(stored.clone());
        assert_eq!(read["spec"]["size"], "m");
        assert!(read["spec"].get("only_in_v2").is_none(), "{read}");
        assert_eq!(v2.from_storage(stored)["spec"]["only_in_v2"], "x");
        assert_eq!(v1.rt.field_labels, &["spec.size"]);
        assert_eq!(
            group_versions(&types.snapshot()),
            vec![(
                "intern.example.com".to_string(),
                vec!["v2".to_string(), "v1".to_string()]
            )]
        );
    }
}
