//! What the fuzz targets share: splitting one input into several fields,
//! and the API server's handling of a decoded object body.
//!
//! An input that carries several fields separates them with NUL bytes
//! (which JSON, YAML and selectors never contain); a leading byte, where a
//! target has one, chooses among its modes. The corpora are written in that
//! form (see README.md).

#![forbid(unsafe_code)]

use keelson_control_plane::api::resources::{self, ResourceType};
use keelson_control_plane::api::{defaults, validation};
use serde_json::Value;

/// The first `n - 1` NUL-separated fields of `data` and the rest (which may
/// hold NULs); `None` if there are fewer than `n` fields.
pub fn fields(data: &[u8], n: usize) -> Option<Vec<&[u8]>> {
    let out: Vec<&[u8]> = data.splitn(n, |&b| b == 0).collect();
    (out.len() == n).then_some(out)
}

/// `data` as UTF-8, lossily: selectors and names arrive as strings.
pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// The built-in resource type an object names by `apiVersion` and `kind`,
/// else Pod (so that bodies without type metadata still reach the Pod
/// checks, the richest).
pub fn resource_type(obj: &Value) -> &'static ResourceType {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let group = api_version
        .rsplit_once('/')
        .map_or("", |(group, _version)| group);
    resources::find_kind(group, kind)
        .filter(|rt| !rt.custom)
        .or_else(|| resources::find_kind("", "Pod"))
        .expect("Pod is a built-in type")
}

/// What the API server does with a decoded create body of a built-in type
/// before it touches the store (`Registry::create` and `Registry::admit`):
/// type metadata, name checks, defaults, the typed round trip that finds
/// unknown fields, validation and update validation. Returns the admitted
/// object, or `None` where the server answers with an error.
pub fn admit(rt: &ResourceType, mut obj: Value) -> Option<Value> {
    let m = obj.as_object_mut()?;
    m.insert("apiVersion".into(), rt.api_version().into());
    m.insert("kind".into(), rt.kind.into());
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let _ = validation::name_causes(rt, &name);
    defaults::apply(rt, &mut obj);
    let typed = (rt.typed)(&obj).ok()?;
    let _ = resources::unknown_fields(&obj, &typed);
    let causes = validation::validate(rt, &typed);
    // An object compared with itself has changed nothing that is immutable.
    assert!(
        validation::validate_update(rt, &typed, &typed).is_empty(),
        "an unchanged {} fails update validation",
        rt.kind
    );
    causes.is_empty().then_some(typed)
}
