//! A pod's QoS class (k8s.io/kubernetes pkg/apis/core/v1/helper/qos
//! `ComputePodQOS`, v1.37 with its default feature gates).
//!
//! Per set of resource requirements, on cpu and memory only: a resource
//! whose request differs from its limit is Burstable, one with both zero
//! (or unset) BestEffort, one with both equal and non-zero Guaranteed; the
//! set is what all its resources agree on, else Burstable. A set with no
//! requests and no limits at all is BestEffort. With pod-level resources
//! (`spec.resources` naming cpu, memory or hugepages) the pod's class is
//! that set's; otherwise the containers' (init and regular) classes must
//! agree, else the pod is Burstable. A pod without containers is BestEffort.
//!
//! Upstream computes the class after API defaulting, which gives a
//! container a request equal to its limit where it set only the limit; the
//! functions here apply that defaulting themselves, so they give the same
//! answer for a defaulted and an undefaulted pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

use crate::quantity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    #[default]
    BestEffort,
}

impl QosClass {
    /// The name the API uses (`status.qosClass`).
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// From the API's name; anything else is BestEffort.
    pub fn parse(s: &str) -> QosClass {
        match s {
            "Guaranteed" => QosClass::Guaranteed,
            "Burstable" => QosClass::Burstable,
            _ => QosClass::BestEffort,
        }
    }
}

/// One set of requirements, borrowed: (resource name, quantity) pairs.
#[derive(Default)]
struct Requirements<'a> {
    requests: Vec<(&'a str, &'a str)>,
    limits: Vec<(&'a str, &'a str)>,
}

impl<'a> Requirements<'a> {
    fn from_api(r: Option<&'a ResourceRequirements>) -> Requirements<'a> {
        let pairs = |m: Option<&'a BTreeMap<String, Quantity>>| -> Vec<(&'a str, &'a str)> {
            m.into_iter()
                .flatten()
                .map(|(k, q)| (k.as_str(), q.0.as_str()))
                .collect()
        };
        Requirements {
            requests: pairs(r.and_then(|r| r.requests.as_ref())),
            limits: pairs(r.and_then(|r| r.limits.as_ref())),
        }
    }

    fn from_json(r: Option<&'a Value>) -> Requirements<'a> {
        let pairs = |key: &str| -> Vec<(&'a str, &'a str)> {
            r.and_then(|r| r.get(key))
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                .collect()
        };
        Requirements {
            requests: pairs("requests"),
            limits: pairs("limits"),
        }
    }

    fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }

    /// Pod-level resources count when they name a resource pods may set
    /// there (`IsPodLevelResourcesSet`).
    fn names_pod_level_resource(&self) -> bool {
        self.requests
            .iter()
            .chain(&self.limits)
            .any(|(k, _)| matches!(*k, "cpu" | "memory") || k.starts_with("hugepages-"))
    }

    fn get(list: &[(&str, &str)], name: &str) -> i128 {
        list.iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, q)| quantity::nano_value(q).ok())
            .unwrap_or(0)
    }

    /// `requirementsQOS`.
    fn class(&self) -> QosClass {
        if self.is_empty() {
            return QosClass::BestEffort;
        }
        agree(["cpu", "memory"].into_iter().map(|res| {
            let limit = Self::get(&self.limits, res);
            // API defaulting: a request left unset takes the limit.
            let has_request = self.requests.iter().any(|(k, _)| *k == res);
            let request = if has_request {
                Self::get(&self.requests, res)
            } else {
                limit
            };
            if request != limit {
                QosClass::Burstable
            } else if request == 0 {
                QosClass::BestEffort
            } else {
                QosClass::Guaranteed
            }
        }))
    }
}

/// The pod's class from its pod-level and containers' requirements.
fn pod_class<'a>(
    pod_level: Requirements<'a>,
    containers: impl Iterator<Item = Requirements<'a>>,
) -> QosClass {
    if pod_level.names_pod_level_resource() {
        return pod_level.class();
    }
    agree(containers.map(|c| c.class()))
}

/// What the classes agree on: Burstable if any is, or if two differ;
/// BestEffort for none.
fn agree(classes: impl Iterator<Item = QosClass>) -> QosClass {
    let mut class = None;
    for this in classes {
        match class {
            _ if this == QosClass::Burstable => return QosClass::Burstable,
            None => class = Some(this),
            Some(x) if x != this => return QosClass::Burstable,
            Some(_) => {}
        }
    }
    class.unwrap_or(QosClass::BestEffort)
}

/// The QoS class of a pod with this spec.
pub fn pod_qos(spec: &PodSpec) -> QosClass {
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| Requirements::from_api(c.resources.as_ref()));
    pod_class(Requirements::from_api(spec.resources.as_ref()), containers)
}

/// [`pod_qos`] of a pod spec in its JSON form (the API server's defaulting
/// works on JSON).
pub fn pod_qos_json(spec: &Value) -> QosClass {
    let containers = ["initContainers", "containers"]
        .into_iter()
        .filter_map(|k| spec.get(k).and_then(Value::as_array))
        .flatten()
        .map(|c| Requirements::from_json(c.get("resources")));
    pod_class(Requirements::from_json(spec.get("resources")), containers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Value {
        let m = |v: &[(&str, &str)]| -> Value {
            v.iter()
                .map(|(k, q)| (k.to_string(), Value::from(*q)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let mut r = json!({});
        if !req.is_empty() {
            r["requests"] = m(req);
        }
        if !lim.is_empty() {
            r["limits"] = m(lim);
        }
        r
    }

    fn container(r: Option<Value>) -> Value {
        let mut c = json!({"name": "c"});
        if let Some(r) = r {
            c["resources"] = r;
        }
        c
    }

    fn check(name: &str, spec: Value, want: QosClass) {
        assert_eq!(pod_qos_json(&spec), want, "{name} (JSON)");
        let typed: PodSpec = serde_json::from_value(spec).unwrap();
        assert_eq!(pod_qos(&typed), want, "{name}");
    }

    /// qos_test.go's TestComputePodQOS container tables: one container of
    /// each, two of each, every mix of two (as containers and as a
    /// container plus an init container).
    #[test]
    fn upstream_container_tables() {
        let guaranteed = json!({"requests": {"cpu": "100m", "memory": "100Mi", "ephemeral-storage": "10Gi"},
                                "limits": {"cpu": "100m", "memory": "100Mi"}});
        let best_effort = [
            json!({}),
            json!({"requests": {"cpu": "0", "memory": "0"}}),
            json!({"requests": {"cpu": "0", "memory": "0"}, "limits": {"cpu": "0", "memory": "0"}}),
            json!({"requests": {"ephemeral-storage": "10Gi"}}),
            json!({"requests": {"ephemeral-storage": "10Gi"}, "limits": {"ephemeral-storage": "10Gi"}}),
        ];
        let burstable = [
            json!({"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"cpu": "200m", "memory": "200Mi"}}),
            json!({"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"cpu": "100m", "memory": "200Mi"}}),
            json!({"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"cpu": "200m", "memory": "100Mi"}}),
            json!({"requests": {"cpu": "100m", "memory": "100Mi"}}),
            json!({"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"cpu": "100m"}}),
        ];
        let one = |r: &Value| json!({"containers": [container(Some(r.clone()))]});
        check("guaranteed", one(&guaranteed), QosClass::Guaranteed);
        for (i, r) in best_effort.iter().enumerate() {
            check(&format!("best-effort-{i}"), one(r), QosClass::BestEffort);
        }
        for (i, r) in burstable.iter().enumerate() {
            check(&format!("burstable-{i}"), one(r), QosClass::Burstable);
        }
        let mut two = vec![
            (
                "2c-guaranteed",
                guaranteed.clone(),
                guaranteed.clone(),
                QosClass::Guaranteed,
            ),
            (
                "2c-best-effort",
                best_effort[0].clone(),
                best_effort[1].clone(),
                QosClass::BestEffort,
            ),
            (
                "2c-burstable",
                burstable[0].clone(),
                burstable[1].clone(),
                QosClass::Burstable,
            ),
        ];
        let firsts = [&guaranteed, &best_effort[0], &burstable[0]];
        let seconds = [&guaranteed, &best_effort[1], &burstable[1]];
        for (i, a) in firsts.iter().enumerate() {
            for (j, b) in seconds.iter().enumerate() {
                if i != j {
                    two.push(("2c-mixed", (*a).clone(), (*b).clone(), QosClass::Burstable));
                }
            }
        }
        for (name, a, b, want) in two {
            check(
                name,
                json!({"containers": [container(Some(a.clone())), container(Some(b.clone()))]}),
                want,
            );
            check(
                &format!("{name}-init"),
                json!({"containers": [container(Some(a))], "initContainers": [container(Some(b))]}),
                want,
            );
        }
    }

    /// Cases the agent's cgroup code and the API defaulting tested with
    /// their former copies, and pod-level resources.
    #[test]
    fn classes() {
        let g = res(
            &[("cpu", "1"), ("memory", "1Gi")],
            &[("cpu", "1000m"), ("memory", "1Gi")],
        );
        let g_limits_only = res(&[], &[("cpu", "1"), ("memory", "64Mi")]);
        let cases: Vec<(&str, Value, QosClass)> = vec![
            (
                "no resources",
                json!({"containers": [container(None)]}),
                QosClass::BestEffort,
            ),
            (
                "empty resources",
                json!({"containers": [container(Some(res(&[], &[])))]}),
                QosClass::BestEffort,
            ),
            (
                "equal requests and limits, 1 and 1000m",
                json!({"containers": [container(Some(g.clone()))]}),
                QosClass::Guaranteed,
            ),
            (
                "limits only (requests default to them)",
                json!({"containers": [container(Some(g_limits_only.clone()))]}),
                QosClass::Guaranteed,
            ),
            (
                "cpu request only",
                json!({"containers": [container(Some(res(&[("cpu", "100m")], &[])))]}),
                QosClass::Burstable,
            ),
            (
                "requests below limits",
                json!({"containers": [container(Some(res(&[("cpu", "100m"), ("memory", "1Gi")], &[("cpu", "200m"), ("memory", "1Gi")])))]}),
                QosClass::Burstable,
            ),
            (
                "cpu guaranteed, memory unset",
                json!({"containers": [container(Some(res(&[("cpu", "1")], &[("cpu", "1")])))]}),
                QosClass::Burstable,
            ),
            (
                "guaranteed and best-effort containers",
                json!({"containers": [container(Some(g.clone())), container(None)]}),
                QosClass::Burstable,
            ),
            (
                "guaranteed container, best-effort init container",
                json!({"containers": [container(Some(g.clone()))], "initContainers": [container(None)]}),
                QosClass::Burstable,
            ),
            (
                "best-effort container, guaranteed init container",
                json!({"containers": [container(None)], "initContainers": [container(Some(g.clone()))]}),
                QosClass::Burstable,
            ),
            (
                "two guaranteed containers",
                json!({"containers": [container(Some(g.clone())), container(Some(g_limits_only))]}),
                QosClass::Guaranteed,
            ),
            (
                "only other resources",
                json!({"containers": [container(Some(res(&[("ephemeral-storage", "1Gi")], &[("nvidia.com/gpu", "1")])))]}),
                QosClass::BestEffort,
            ),
            (
                "zero requests and limits",
                json!({"containers": [container(Some(res(&[("cpu", "0")], &[("cpu", "0m")])))]}),
                QosClass::BestEffort,
            ),
            (
                "no containers",
                json!({"containers": []}),
                QosClass::BestEffort,
            ),
            (
                "pod-level resources decide",
                json!({"resources": g, "containers": [container(None)]}),
                QosClass::Guaranteed,
            ),
            (
                "pod-level requests only",
                json!({"resources": res(&[("cpu", "1")], &[]), "containers": [container(Some(res(&[("cpu", "1"), ("memory", "1")], &[("cpu", "1"), ("memory", "1")])))]}),
                QosClass::Burstable,
            ),
            (
                "pod-level resources without a pod-level resource are ignored",
                json!({"resources": res(&[("ephemeral-storage", "1")], &[]), "containers": [container(Some(res(&[], &[("cpu", "1"), ("memory", "1")])))]}),
                QosClass::Guaranteed,
            ),
        ];
        for (name, spec, want) in cases {
            check(name, spec, want);
        }
        assert_eq!(pod_qos(&PodSpec::default()), QosClass::BestEffort);
        for c in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            assert_eq!(QosClass::parse(c.as_str()), c);
        }
    }
}
