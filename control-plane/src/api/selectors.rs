//! Label and field selectors, parsed from their query-string forms
//! (`labelSelector=app=web,tier in (a,b),!legacy`, `fieldSelector=spec.nodeName=n1`)
//! and from `LabelSelector` objects. Label selectors are a Kubernetes rule
//! and live in `keelson_rules::selectors`; field selectors, which name
//! fields of the API's objects, live here.

use serde_json::Value;

pub use keelson_rules::selectors::{LabelSelector, Op, Requirement, SelectorError};

/// A field selector: `field=value`, `field==value`, `field!=value`, comma-joined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError(format!("invalid field selector: {part:?}")));
            };
            out.push((field.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields named, to check them against what a resource supports.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(f, _, _)| f.as_str())
    }

    /// The value the selector requires for `field` with `=`, if any.
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, eq, _)| f == field && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(field, eq, value)| (field_value(obj, field) == *value) == *eq)
    }
}

/// The string value of a field selector label on an object ("" when absent).
pub fn field_value(obj: &Value, field: &str) -> String {
    if field == "source" {
        // core/v1 Event: "source" selects on source.component.
        return obj
            .pointer("/source/component")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
    }
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if field == "spec.unschedulable" || field == "spec.hostNetwork" => "false".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let unbound = json!({"metadata": {"name": "q"}, "spec": {}});
        let f = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").unwrap();
        assert!(f.matches_object(&pod));
        assert!(!f.matches_object(&unbound));
        let f = FieldSelector::parse("spec.nodeName=").unwrap();
        assert!(f.matches_object(&unbound));
        assert!(!f.matches_object(&pod));
        assert_eq!(
            FieldSelector::parse("metadata.name==p")
                .unwrap()
                .required_value("metadata.name"),
            Some("p")
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
