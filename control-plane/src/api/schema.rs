//! Structural schemas of custom resources (a CustomResourceDefinition
//! version's `schema.openAPIV3Schema`, kept as its JSON): defaulting,
//! pruning of unknown fields and validation, as kube-apiserver's
//! apiextensions-apiserver applies them to a custom resource. Pure: no I/O.
//!
//! Supported: `type` (with `nullable` and `x-kubernetes-int-or-string`),
//! `properties`, `additionalProperties`, `items`, `required`, `enum`,
//! `minimum`/`maximum` (and their exclusive forms), `minLength`/`maxLength`,
//! `minItems`/`maxItems`, `pattern`, `default`,
//! `x-kubernetes-preserve-unknown-fields` and
//! `x-kubernetes-embedded-resource`. Not supported: CEL rules
//! (`x-kubernetes-validations`), `allOf`/`anyOf`/`oneOf`/`not`, `format`,
//! list-type uniqueness.

use serde_json::{Map, Value};

use super::errors::Cause;

/// The fields every object keeps at its root (and an embedded resource at
/// its own): they are not the schema's to prune.
const TYPE_META: &[&str] = &["apiVersion", "kind", "metadata"];

fn flag(s: &Value, key: &str) -> bool {
    s.get(key).and_then(Value::as_bool) == Some(true)
}

fn properties(s: &Value) -> Option<&Map<String, Value>> {
    s.get("properties").and_then(Value::as_object)
}

/// `additionalProperties` as a schema (`true` counts as "anything").
enum Additional<'a> {
    None,
    Any,
    Schema(&'a Value),
}

fn additional(s: &Value) -> Additional<'_> {
    match s.get("additionalProperties") {
        Some(Value::Bool(true)) => Additional::Any,
        Some(v @ Value::Object(_)) => Additional::Schema(v),
        _ => Additional::None,
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Apply the schema's `default`s to `v`: a missing property (or a null one
/// that is not `nullable`) with a default gets it, in objects that exist,
/// recursively (a defaulted object is defaulted in turn).
pub fn apply_defaults(v: &mut Value, s: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = properties(s) {
                for (k, ps) in props {
                    let missing = match m.get(k) {
                        None => true,
                        Some(Value::Null) => !flag(ps, "nullable"),
                        Some(_) => false,
                    };
                    if missing && let Some(d) = ps.get("default") {
                        m.insert(k.clone(), d.clone());
                    }
                    if let Some(cv) = m.get_mut(k) {
                        apply_defaults(cv, ps);
                    }
                }
            }
            if let Additional::Schema(a) = additional(s) {
                for (k, cv) in m.iter_mut() {
                    if properties(s).is_some_and(|p| p.contains_key(k)) {
                        continue;
                    }
                    apply_defaults(cv, a);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items").filter(|i| i.is_object()) {
                for item in items {
                    apply_defaults(item, is);
                }
            }
        }
        _ => {}
    }
}

/// Remove the fields the schema does not specify (unless
/// `x-kubernetes-preserve-unknown-fields` keeps them), returning their
/// paths. `root`: `v` is a whole object, whose type metadata stays.
pub fn prune(v: &mut Value, s: &Value, root: bool) -> Vec<String> {
    let mut out = Vec::new();
    prune_at(v, s, root, "", &mut out);
    out
}

fn prune_at(v: &mut Value, s: &Value, keep_type_meta: bool, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
            let embedded = keep_type_meta || flag(s, "x-kubernetes-embedded-resource");
            let props = properties(s);
            let extra = additional(s);
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let p = child(path, &k);
                if embedded && TYPE_META.contains(&k.as_str()) {
                    continue;
                }
                if let Some(ps) = props.and_then(|p| p.get(&k)) {
                    if let Some(cv) = m.get_mut(&k) {
                        prune_at(cv, ps, false, &p, out);
                    }
                    continue;
                }
                match extra {
                    Additional::Schema(a) => {
                        if let Some(cv) = m.get_mut(&k) {
                            prune_at(cv, a, false, &p, out);
                        }
                    }
                    Additional::Any => {}
                    Additional::None if preserve => {}
                    Additional::None => {
                        m.remove(&k);
                        out.push(p);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(item, is, false, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The JSON type name of a value, as kube-openapi names it.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn has_type(v: &Value, ty: &str) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        _ => true,
    }
}

/// Validate `v` against the schema; `path` is the field path of `v`
/// ("" at the root). Causes are phrased as kube-apiserver phrases them.
pub fn validate(v: &Value, s: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    validate_at(v, s, path, &mut out);
    out
}

/// The name kube-openapi gives a field in its messages.
fn display_name(path: &str) -> &str {
    if path.is_empty() { "." } else { path }
}

fn validate_at(v: &Value, s: &Value, path: &str, out: &mut Vec<Cause>) {
    let name = display_name(path);
    let int_or_string = flag(s, "x-kubernetes-int-or-string");
    let ty = s.get("type").and_then(Value::as_str).unwrap_or_default();
    if v.is_null() {
        if flag(s, "nullable") || (ty.is_empty() && !int_or_string) {
            return;
        }
        let want = if int_or_string { "integer,string" } else { ty };
        out.push(Cause::type_invalid(
            path,
            &Value::String("null".into()),
            format!("{name} in body must be of type {want}: \"null\""),
        ));
        return;
    }
    if int_or_string {
        if !(is_integer(v) || v.is_string()) {
            out.push(Cause::type_invalid(
                path,
                &Value::String(type_name(v).into()),
                format!(
                    "{name} in body must be of type integer,string: \"{}\"",
                    type_name(v)
                ),
            ));
            return;
        }
    } else if !ty.is_empty() && !has_type(v, ty) {
        out.push(Cause::type_invalid(
            path,
            &Value::String(type_name(v).into()),
            format!("{name} in body must be of type {ty}: \"{}\"", type_name(v)),
        ));
        return;
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let names: Vec<String> = allowed
            .iter()
            .map(|a| match a {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        out.push(Cause::not_supported(path, v, &names));
    }
    match v {
        Value::Number(n) => number_causes(n, s, path, out),
        Value::String(text) => string_causes(v, text, s, path, out),
        Value::Array(items) => {
            let len = items.len();
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && len as u64 > max
            {
                out.push(Cause::too_many(path, len, max));
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && (len as u64) < min
            {
                out.push(Cause::invalid_value(
                    path,
                    &Value::from(len),
                    format!("{name} in body should have at least {min} items"),
                ));
            }
            if let Some(is) = s.get("items").filter(|i| i.is_object()) {
                for (i, item) in items.iter().enumerate() {
                    validate_at(item, is, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(m) => {
            let embedded = path.is_empty() || flag(s, "x-kubernetes-embedded-resource");
            for r in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !m.contains_key(r) {
                    out.push(Cause::required(child(path, r)));
                }
            }
            let props = properties(s);
            for (k, cv) in m {
                if embedded && k == "metadata" {
                    // ObjectMeta is checked by the generic validation.
                    continue;
                }
                match (props.and_then(|p| p.get(k)), additional(s)) {
                    (Some(ps), _) => validate_at(cv, ps, &child(path, k), out),
                    (None, Additional::Schema(a)) => validate_at(cv, a, &child(path, k), out),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn number_causes(n: &serde_json::Number, s: &Value, path: &str, out: &mut Vec<Cause>) {
    let name = display_name(path);
    let Some(x) = n.as_f64() else { return };
    let value = Value::Number(n.clone());
    if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
        let exclusive = flag(s, "exclusiveMaximum");
        if x > max || (exclusive && x == max) {
            let rel = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            out.push(Cause::invalid_value(
                path,
                &value,
                format!("{name} in body should be {rel} {}", go_number(max)),
            ));
        }
    }
    if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
        let exclusive = flag(s, "exclusiveMinimum");
        if x < min || (exclusive && x == min) {
            let rel = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            out.push(Cause::invalid_value(
                path,
                &value,
                format!("{name} in body should be {rel} {}", go_number(min)),
            ));
        }
    }
}

/// A bound as Go's `%v` prints a float64: no ".0" on whole numbers.
fn go_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn string_causes(v: &Value, text: &str, s: &Value, path: &str, out: &mut Vec<Cause>) {
    let name = display_name(path);
    let chars = text.chars().count() as u64;
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
        && chars > max
    {
        out.push(Cause::too_long(path, max));
    }
    if let Some(min) = s.get("minLength").and_then(Value::as_u64)
        && chars < min
    {
        out.push(Cause::invalid_value(
            path,
            v,
            format!("{name} in body should be at least {min} chars long"),
        ));
    }
    if let Some(pattern) = s.get("pattern").and_then(Value::as_str)
        && let Ok(re) = regex::Regex::new(pattern)
        && !re.is_match(text)
    {
        out.push(Cause::invalid_value(
            path,
            v,
            format!("{name} in body should match '{pattern}'"),
        ));
    }
}

/// Checks of a schema itself, for the CustomResourceDefinition that
/// carries it (`path` is where the schema sits): the shapes this module
/// relies on, and patterns that compile.
pub fn schema_causes(s: &Value, path: &str) -> Vec<Cause> {
    let mut out = Vec::new();
    schema_causes_at(s, path, &mut out);
    out
}

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

fn schema_causes_at(s: &Value, path: &str, out: &mut Vec<Cause>) {
    let Some(m) = s.as_object() else {
        out.push(Cause::invalid_value(path, s, "must be a schema object"));
        return;
    };
    if let Some(t) = m.get("type") {
        match t.as_str() {
            Some(ty) if TYPES.contains(&ty) => {}
            _ => {
                let allowed: Vec<String> = TYPES.iter().map(|t| t.to_string()).collect();
                out.push(Cause::not_supported(child(path, "type"), t, &allowed));
            }
        }
    } else if !flag(s, "x-kubernetes-int-or-string")
        && !flag(s, "x-kubernetes-preserve-unknown-fields")
    {
        out.push(Cause::new(
            "FieldValueRequired",
            child(path, "type"),
            "Required value: must not be empty for specified object fields",
        ));
    }
    if let Some(p) = m.get("pattern").and_then(Value::as_str)
        && let Err(e) = regex::Regex::new(p)
    {
        out.push(Cause::invalid(
            child(path, "pattern"),
            p,
            format!("must be a valid regular expression, but isn't: {e}"),
        ));
    }
    if m.get("properties").is_some()
        && m.get("additionalProperties")
            .is_some_and(|a| a != &Value::Bool(false))
    {
        out.push(Cause::forbidden(
            child(path, "additionalProperties"),
            "additionalProperties and properties are mutual exclusive",
        ));
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (k, ps) in props {
            schema_causes_at(ps, &format!("{path}.properties[{k}]"), out);
        }
    }
    if let Some(is) = m.get("items") {
        schema_causes_at(is, &child(path, "items"), out);
    } else if m.get("type").and_then(Value::as_str) == Some("array") {
        out.push(Cause::new(
            "FieldValueRequired",
            child(path, "items"),
            "Required value: must be specified",
        ));
    }
    if let Some(a @ Value::Object(_)) = m.get("additionalProperties") {
        schema_causes_at(a, &child(path, "additionalProperties"), out);
    }
    if let Some(d) = m.get("default") {
        // A default must itself be valid where it applies.
        let mut d = d.clone();
        let mut dschema = s.clone();
        if let Some(o) = dschema.as_object_mut() {
            o.remove("default");
        }
        prune(&mut d, &dschema, false);
        for c in validate(&d, &dschema, "") {
            out.push(Cause::invalid_value(child(path, "default"), &d, c.message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "string", "enum": ["small", "large"]},
                        "replicas": {"type": "integer", "minimum": 0.0, "maximum": 10, "default": 1},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                        "ports": {"type": "array", "maxItems": 2, "items": {
                            "type": "object",
                            "properties": {"port": {"type": "integer"}, "protocol": {"type": "string", "default": "TCP"}}
                        }},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                                 "properties": {"known": {"type": "object", "properties": {"a": {"type": "string"}}}}},
                        "port": {"x-kubernetes-int-or-string": true},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                                     "properties": {"spec": {"type": "object"}}},
                        "nested": {"type": "object", "default": {}, "properties": {"mode": {"type": "string", "default": "auto"}}},
                        "maybe": {"type": "string", "nullable": true, "default": "x"}
                    }
                },
                "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}
            }
        })
    }

    #[test]
    fn defaults_fill_missing_fields_recursively() {
        let mut v = json!({"spec": {"size": "small", "ports": [{"port": 80}, {"port": 81, "protocol": "UDP"}], "maybe": null}});
        apply_defaults(&mut v, &schema());
        assert_eq!(v["spec"]["replicas"], 1);
        assert_eq!(v["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(v["spec"]["ports"][1]["protocol"], "UDP");
        // A defaulted object is defaulted in turn.
        assert_eq!(v["spec"]["nested"], json!({"mode": "auto"}));
        // A nullable field keeps its null.
        assert_eq!(v["spec"]["maybe"], Value::Null);
        // An absent parent is not created.
        assert!(v.get("status").is_none());
        let mut empty = json!({});
        apply_defaults(&mut empty, &schema());
        assert_eq!(empty, json!({}));
    }

    #[test]
    fn prunes_unknown_fields_except_where_preserved() {
        let mut v = json!({
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "bogus": 1,
            "spec": {
                "size": "small", "colour": "blue",
                "labels": {"a": "b"},
                "free": {"anything": {"goes": true}, "known": {"a": "x", "b": "dropped"}},
                "ports": [{"port": 1, "extra": 2}],
                "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}, "other": 3}
            }
        });
        let pruned = prune(&mut v, &schema(), true);
        assert_eq!(
            pruned,
            vec![
                "bogus",
                "spec.colour",
                "spec.free.known.b",
                "spec.ports[0].extra",
                "spec.template.spec.x",
                "spec.template.other"
            ]
        );
        assert_eq!(v["metadata"]["name"], "w");
        assert_eq!(v["spec"]["free"]["anything"]["goes"], true);
        assert_eq!(v["spec"]["labels"]["a"], "b");
        assert_eq!(v["spec"]["template"]["kind"], "Pod");
        assert!(v["spec"]["ports"][0].get("extra").is_none());
    }

    #[test]
    fn validation_phrases_causes_as_kube_apiserver() {
        let v = json!({"spec": {
            "size": "medium", "replicas": 11, "name": "Abc",
            "ports": [{"port": "eighty"}, {}, {}], "labels": {"a": 1}, "port": true
        }});
        let causes = validate(&v, &schema(), "");
        let got: Vec<(String, &str, String)> = causes
            .iter()
            .map(|c| (c.field.clone(), c.reason, c.message.clone()))
            .collect();
        let want = [
            (
                "spec.size",
                "FieldValueNotSupported",
                "Unsupported value: \"medium\": supported values: \"small\", \"large\"",
            ),
            (
                "spec.replicas",
                "FieldValueInvalid",
                "Invalid value: 11: spec.replicas in body should be less than or equal to 10",
            ),
            (
                "spec.name",
                "FieldValueInvalid",
                "Invalid value: \"Abc\": spec.name in body should match '^[a-z]+$'",
            ),
            (
                "spec.ports",
                "FieldValueTooMany",
                "Too many: 3: must have at most 2 items",
            ),
            (
                "spec.ports[0].port",
                "FieldValueTypeInvalid",
                "Invalid value: \"string\": spec.ports[0].port in body must be of type integer: \"string\"",
            ),
            (
                "spec.labels.a",
                "FieldValueTypeInvalid",
                "Invalid value: \"integer\": spec.labels.a in body must be of type string: \"integer\"",
            ),
            (
                "spec.port",
                "FieldValueTypeInvalid",
                "Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\"",
            ),
        ];
        let want: Vec<(String, &str, String)> = want
            .iter()
            .map(|(f, r, m)| (f.to_string(), *r, m.to_string()))
            .collect();
        assert_eq!(got, want);
        let missing = validate(&json!({"spec": {}}), &schema(), "");
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].field, "spec.size");
        assert_eq!(missing[0].message, "Required value");
        let ok = json!({"spec": {"size": "large", "replicas": 0, "name": "abc", "port": "http", "maybe": null}});
        assert!(validate(&ok, &schema(), "").is_empty());
        let low = validate(
            &json!({"spec": {"size": "large", "replicas": -1}}),
            &schema(),
            "",
        );
        assert_eq!(
            low[0].message,
            "Invalid value: -1: spec.replicas in body should be greater than or equal to 0"
        );
        let null = validate(&json!({"spec": null}), &schema(), "");
        assert_eq!(null[0].reason, "FieldValueTypeInvalid");
    }

    #[test]
    fn schemas_are_checked() {
        assert!(schema_causes(&schema(), "spec.versions[0].schema.openAPIV3Schema").is_empty());
        let bad = json!({"type": "object", "properties": {
            "a": {"type": "strin"},
            "b": {"type": "string", "pattern": "("},
            "c": {"type": "array"},
            "d": {"type": "integer", "minimum": 3, "default": 1},
            "e": {"properties": {}}
        }});
        let fields: Vec<String> = schema_causes(&bad, "s")
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "s.properties[a].type",
                "s.properties[b].pattern",
                "s.properties[c].items",
                "s.properties[d].default",
                "s.properties[e].type"
            ]
        );
    }
}
