//! Pure helpers shared by the workload controllers (ReplicaSet and
//! Deployment): metadata accessors, their selectors, int-or-percent
//! scaling, the pod-template hash and the annotations that `kubectl
//! rollout` reads. No I/O here. Owner references, readiness and label
//! selectors themselves are Kubernetes rules: `keelson_rules`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as MetaSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use keelson_rules::selectors::LabelSelector;
use serde_json::Value;

/// Label a Deployment puts on its ReplicaSets, their selectors and their pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The revision of a ReplicaSet, and of the Deployment's newest one.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet had before a rollback made it new again.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when it last scaled this ReplicaSet.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The Deployment's replicas + maxSurge when it last scaled this ReplicaSet.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Deprecated rollback request annotation; never copied.
pub const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
/// kubectl apply's record of the last applied object; never copied.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Cost of deleting a pod when a ReplicaSet scales down (lower goes first).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// An object's labels (empty when it has none).
pub fn labels(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    meta.labels.as_ref().unwrap_or(&NO_LABELS)
}

/// An object's annotation `key`.
pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

pub fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

pub fn uid(meta: &ObjectMeta) -> &str {
    meta.uid.as_deref().unwrap_or_default()
}

pub fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

/// A workload's selector. An empty or invalid selector selects nothing
/// (apps/v1 validation forbids both; a controller must not grab every pod).
pub fn selector(sel: &MetaSelector) -> Option<LabelSelector> {
    let s = LabelSelector::from_api(sel).ok()?;
    (!s.is_empty()).then_some(s)
}

pub fn selects(sel: Option<&LabelSelector>, meta: &ObjectMeta) -> bool {
    sel.is_some_and(|s| s.matches(labels(meta)))
}

pub fn is_terminating(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// `value` scaled against `total`: an int as is, "N%" as N% of `total`,
/// rounded up or down. Invalid values (which validation rejects) count as 0.
pub fn scaled_value(value: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match value {
        None => 0,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let Some(p) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return s.parse::<i32>().unwrap_or(0);
            };
            let prod = p * i64::from(total);
            let v = if round_up {
                (prod + 99).div_euclid(100)
            } else {
                prod.div_euclid(100)
            };
            i32::try_from(v).unwrap_or(i32::MAX)
        }
    }
}

/// maxSurge (rounded up) and maxUnavailable (rounded down) against
/// `desired`; when both come out 0, maxUnavailable becomes 1 so a rollout
/// can make progress (upstream's ResolveFenceposts).
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let surge = scaled_value(max_surge, desired, true).max(0);
    let unavailable = scaled_value(max_unavailable, desired, false).max(0);
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

/// 32-bit FNV-1a.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Letters without vowels (no words) or look-alikes, as upstream's
/// SafeEncodeString uses.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// The stable hash of a pod template (without any pod-template-hash label)
/// and the Deployment's collisionCount: the suffix of the ReplicaSet's name
/// and the value of its pod-template-hash label. The template's JSON is
/// canonical: fields in declaration order, maps sorted.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut t = template.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(POD_TEMPLATE_HASH);
    }
    let mut bytes = serde_json::to_vec(&t).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&(c as u32).to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// Drop nulls, empty objects and empty arrays, recursively: the differences
/// between a Go client's serialization and ours that carry no meaning.
fn prune(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for x in m.values_mut() {
                prune(x);
            }
            m.retain(|_, x| !is_empty(x));
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                prune(x);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn comparable(t: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    if let Some(l) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove(POD_TEMPLATE_HASH);
    }
    prune(&mut v);
    v
}

/// Whether two templates are the same apart from the pod-template-hash
/// label (and empty-vs-absent fields): how a Deployment finds the
/// ReplicaSet of its current template, and how kubectl does.
pub fn templates_equal_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    comparable(a) == comparable(b)
}

/// The merge patch that turns status `old` into `new` (`{"status": ...}`),
/// or `None` when they mean the same. Fields `new` lacks are set to null:
/// a merge patch leaves out fields alone, and a condition list that became
/// empty would otherwise never go away (and the status never match).
pub fn status_patch<T: serde::Serialize>(old: Option<&T>, new: &T) -> Option<Value> {
    let mut old = old
        .and_then(|o| serde_json::to_value(o).ok())
        .unwrap_or_default();
    let mut new = serde_json::to_value(new).ok()?;
    prune(&mut old);
    prune(&mut new);
    if old == new || (is_empty(&old) && is_empty(&new)) {
        return None;
    }
    let mut patch = new.as_object().cloned().unwrap_or_default();
    if let Some(o) = old.as_object() {
        for k in o.keys() {
            patch.entry(k.clone()).or_insert(Value::Null);
        }
    }
    Some(serde_json::json!({ "status": patch }))
}

/// The revision annotation as a number (0 when absent or invalid).
pub fn revision(meta: &ObjectMeta) -> i64 {
    annotation(meta, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// `t` with sub-second precision dropped, as the API stores times.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scaled_values_round_like_upstream() {
        let pct = |s: &str| IntOrString::String(s.into());
        // (value, total, round_up, want)
        let cases: &[(IntOrString, i32, bool, i32)] = &[
            (IntOrString::Int(3), 10, true, 3),
            (pct("25%"), 10, true, 3),
            (pct("25%"), 10, false, 2),
            (pct("25%"), 4, false, 1),
            (pct("25%"), 3, false, 0),
            (pct("25%"), 3, true, 1),
            (pct("100%"), 7, false, 7),
            (pct("0%"), 7, true, 0),
            (pct("33%"), 100, true, 33),
            (pct("1%"), 1, true, 1),
            (pct("bogus"), 10, true, 0),
            (pct("5"), 10, true, 5),
        ];
        for (v, total, up, want) in cases {
            assert_eq!(
                scaled_value(Some(v), *total, *up),
                *want,
                "{v:?} of {total} up={up}"
            );
        }
        assert_eq!(scaled_value(None, 10, true), 0);
    }

    #[test]
    fn fenceposts() {
        let pct = |s: &str| IntOrString::String(s.into());
        // (surge, unavailable, desired, want)
        let cases = [
            (pct("25%"), pct("25%"), 10, (3, 2)),
            (pct("25%"), pct("25%"), 1, (1, 0)),
            (IntOrString::Int(0), pct("25%"), 3, (0, 1)),
            (IntOrString::Int(0), IntOrString::Int(0), 3, (0, 1)),
            (IntOrString::Int(1), IntOrString::Int(0), 3, (1, 0)),
            (pct("0%"), pct("10%"), 5, (0, 1)),
        ];
        for (s, u, d, want) in cases {
            assert_eq!(
                resolve_fenceposts(Some(&s), Some(&u), d),
                want,
                "{s:?} {u:?} {d}"
            );
        }
    }

    #[test]
    fn template_hash_is_stable_and_ignores_hash_label() {
        let t: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "busybox:1"}]}
        }))
        .unwrap();
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert!(h.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{h}");
        let mut labelled = t.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), h.clone());
        assert_eq!(template_hash(&labelled, None), h);
        assert_ne!(template_hash(&t, Some(1)), h);
        let mut other = t.clone();
        other.spec.as_mut().unwrap().containers[0].image = Some("busybox:2".into());
        assert_ne!(template_hash(&other, None), h);
    }

    #[test]
    fn template_equality_ignores_hash_and_empty_fields() {
        let a: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}},
            "spec": {"containers": [{"name": "web", "image": "busybox:1", "resources": {}}]}
        }))
        .unwrap();
        let b: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}, "annotations": {}},
            "spec": {"containers": [{"name": "web", "image": "busybox:1"}]}
        }))
        .unwrap();
        assert!(templates_equal_ignoring_hash(&a, &b));
        let c: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "busybox:2"}]}
        }))
        .unwrap();
        assert!(!templates_equal_ignoring_hash(&a, &c));
    }

    #[test]
    fn status_patches_clear_removed_fields() {
        use k8s_openapi::api::apps::v1::{ReplicaSetCondition, ReplicaSetStatus};
        let failed = ReplicaSetStatus {
            replicas: 2,
            ready_replicas: Some(2),
            conditions: Some(vec![ReplicaSetCondition {
                type_: Some("ReplicaFailure".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let healed = ReplicaSetStatus {
            replicas: 2,
            ready_replicas: Some(2),
            conditions: None,
            ..Default::default()
        };
        assert_eq!(
            status_patch(Some(&failed), &healed),
            Some(json!({"status": {"replicas": 2, "readyReplicas": 2, "conditions": null}}))
        );
        assert_eq!(status_patch(Some(&healed), &healed), None);
        // An empty list and none mean the same.
        let empty = ReplicaSetStatus {
            conditions: Some(vec![]),
            ..healed.clone()
        };
        assert_eq!(status_patch(Some(&empty), &healed), None);
        assert!(status_patch(None, &healed).is_some());
    }

    #[test]
    fn empty_selector_selects_nothing() {
        let meta = ObjectMeta {
            labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        };
        let empty = selector(&MetaSelector::default());
        assert!(!selects(empty.as_ref(), &meta));
        let web = selector(&MetaSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        });
        assert!(selects(web.as_ref(), &meta));
    }
}
