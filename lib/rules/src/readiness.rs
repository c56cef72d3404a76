//! Pod state: readiness and availability (k8s.io/kubernetes
//! pkg/api/v1/pod's `IsPodReady`, `IsPodAvailable`, `IsPodTerminal`) and
//! activity (pkg/controller's `IsPodActive`).
//!
//! A pod is ready when its first `Ready` condition has status `True`. It is
//! available when ready and, for `minReadySeconds` > 0, its Ready
//! condition's `lastTransitionTime` plus `minReadySeconds` is at or before
//! now (v1.37 compares with `<=`; earlier releases used `<`). A Ready
//! condition without a transition time is never available with
//! `minReadySeconds` > 0.

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// The pod's first condition of `type_` (`GetPodCondition`).
pub fn condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// `IsPodReady`: the Ready condition is True.
pub fn is_pod_ready(pod: &Pod) -> bool {
    condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

/// When a ready pod became ready: `Some(lastTransitionTime)` (`Some(None)`
/// when the condition has no time); `None` when it is not ready.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let c = condition(pod, "Ready").filter(|c| c.status == "True")?;
    Some(c.last_transition_time.as_ref().map(|t| t.0))
}

/// When a ready pod counts as available: at once for `minReadySeconds` 0,
/// else `minReadySeconds` after it became ready. `None` when it is not
/// ready, or has no transition time to count from.
pub fn available_at(pod: &Pod, min_ready_seconds: i32) -> Option<Timestamp> {
    let since = ready_since(pod)?;
    if min_ready_seconds == 0 {
        return Some(since.unwrap_or(Timestamp::UNIX_EPOCH));
    }
    let since = since?;
    Some(
        since
            .saturating_add(SignedDuration::from_secs(i64::from(min_ready_seconds)))
            .unwrap_or(since),
    )
}

/// `IsPodAvailable`: ready for at least `min_ready_seconds` at `now`.
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    available_at(pod, min_ready_seconds).is_some_and(|at| min_ready_seconds == 0 || at <= now)
}

/// `IsPodTerminal`: phase Succeeded or Failed.
pub fn is_pod_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// `IsPodActive`: not terminal and not being deleted.
pub fn is_pod_active(pod: &Pod) -> bool {
    !is_pod_terminal(pod) && pod.metadata.deletion_timestamp.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn at(s: i64) -> String {
        ts(s).to_string()
    }

    #[test]
    fn readiness_table() {
        let cases: Vec<(&str, Value, bool)> = vec![
            ("no status", json!(null), false),
            ("no conditions", json!({"phase": "Running"}), false),
            (
                "Ready True",
                json!({"conditions": [{"type": "Ready", "status": "True"}]}),
                true,
            ),
            (
                "Ready False",
                json!({"conditions": [{"type": "Ready", "status": "False"}]}),
                false,
            ),
            (
                "Ready Unknown",
                json!({"conditions": [{"type": "Ready", "status": "Unknown"}]}),
                false,
            ),
            (
                "only ContainersReady",
                json!({"conditions": [{"type": "ContainersReady", "status": "True"}]}),
                false,
            ),
            (
                "the first Ready condition counts",
                json!({"conditions": [{"type": "Ready", "status": "False"}, {"type": "Ready", "status": "True"}]}),
                false,
            ),
        ];
        for (name, status, want) in cases {
            assert_eq!(is_pod_ready(&pod(status)), want, "{name}");
        }
    }

    /// pkg/api/v1/pod util_test.go's TestIsPodAvailable, at v1.37.
    #[test]
    fn availability_table() {
        let now = ts(1000);
        let ready = |t: Option<i64>| {
            let mut c = json!({"type": "Ready", "status": "True"});
            if let Some(t) = t {
                c["lastTransitionTime"] = at(t).into();
            }
            pod(json!({"conditions": [c]}))
        };
        // (pod, minReadySeconds, available)
        let cases: Vec<(&str, Pod, i32, bool)> = vec![
            ("not ready", pod(json!({"conditions": []})), 0, false),
            ("ready, minReadySeconds 0", ready(Some(1000)), 0, true),
            (
                "ready just now, minReadySeconds 1",
                ready(Some(1000)),
                1,
                false,
            ),
            ("ready 51 s of 50", ready(Some(949)), 50, true),
            ("ready 51 s of 51", ready(Some(949)), 51, true),
            ("ready 5 s of 10", ready(Some(995)), 10, false),
            ("ready 11 s of 10", ready(Some(989)), 10, true),
            ("ready exactly 10 s of 10", ready(Some(990)), 10, true),
            (
                "ready, no transition time, minReadySeconds 0",
                ready(None),
                0,
                true,
            ),
            (
                "ready, no transition time, minReadySeconds 10",
                ready(None),
                10,
                false,
            ),
            (
                "unready with an old transition",
                pod(
                    json!({"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": at(0)}]}),
                ),
                10,
                false,
            ),
        ];
        for (name, p, min, want) in cases {
            assert_eq!(is_pod_available(&p, min, now), want, "{name}");
        }
        assert_eq!(available_at(&ready(Some(990)), 10), Some(ts(1000)));
        assert_eq!(ready_since(&ready(None)), Some(None));
        assert_eq!(ready_since(&pod(json!({}))), None);
    }

    #[test]
    fn activity() {
        let deleting: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "deletionTimestamp": at(1)}, "status": {"phase": "Running"}})).unwrap();
        let cases: Vec<(&str, Pod, bool, bool)> = vec![
            ("running", pod(json!({"phase": "Running"})), false, true),
            ("pending", pod(json!({"phase": "Pending"})), false, true),
            ("no phase", pod(json!({})), false, true),
            ("succeeded", pod(json!({"phase": "Succeeded"})), true, false),
            ("failed", pod(json!({"phase": "Failed"})), true, false),
            ("being deleted", deleting, false, false),
        ];
        for (name, p, terminal, active) in cases {
            assert_eq!(is_pod_terminal(&p), terminal, "{name} terminal");
            assert_eq!(is_pod_active(&p), active, "{name} active");
        }
    }
}
