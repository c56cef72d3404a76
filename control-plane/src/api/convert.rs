//! Conversion between the events.k8s.io/v1 and core/v1 forms of Event, which
//! share one storage (stored in the core/v1 form, as Kubernetes does).

use serde_json::{Map, Value};

use super::resources::ResourceType;

const PAIRS: &[(&str, &str)] = &[
    ("note", "message"),
    ("regarding", "involvedObject"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(v: Value, api_version: &str, to_core: bool) -> Value {
    let Value::Object(m) = v else { return v };
    let mut out = Map::new();
    for (k, val) in m {
        let key = PAIRS
            .iter()
            .find_map(|(new, old)| {
                if to_core && k == *new {
                    Some(*old)
                } else if !to_core && k == *old {
                    Some(*new)
                } else {
                    None
                }
            })
            .unwrap_or(k.as_str())
            .to_string();
        out.insert(key, val);
    }
    out.insert("apiVersion".into(), api_version.into());
    Value::Object(out)
}

/// Convert a request object of type `rt` to its stored form.
pub fn to_storage(rt: &ResourceType, v: Value) -> Value {
    if rt.group == "events.k8s.io" {
        rename(v, "v1", true)
    } else {
        v
    }
}

/// Convert a stored object to the form of `rt`.
pub fn from_storage(rt: &ResourceType, v: Value) -> Value {
    if rt.group == "events.k8s.io" {
        rename(v, "events.k8s.io/v1", false)
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::find;
    use serde_json::json;

    #[test]
    fn round_trip_events() {
        let rt = find("events.k8s.io", "v1", "events").unwrap();
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "note": "hi", "regarding": {"kind": "Pod", "name": "p"}, "reason": "R", "reportingController": "c"});
        let stored = to_storage(rt, ev.clone());
        assert_eq!(stored["message"], "hi");
        assert_eq!(stored["involvedObject"]["name"], "p");
        assert_eq!(stored["apiVersion"], "v1");
        // The stored form decodes as a core/v1 Event.
        let core = find("", "v1", "events").unwrap();
        assert!((core.typed)(&stored).is_ok());
        assert_eq!(from_storage(rt, stored), ev);
    }
}
