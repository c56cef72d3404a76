//! Taints and tolerations: k8s.io/api/core/v1's `Toleration.ToleratesTaint`
//! and component-helpers' `TolerationsTolerateTaint` /
//! `FindMatchingUntoleratedTaint`.
//!
//! The rule, in upstream's order: a toleration with an effect matches only
//! taints of that effect; one with a key only taints with that key (an empty
//! key with `Exists` matches every taint); `Exists` matches any value,
//! `Equal` (or no operator) the same value. Any other operator matches
//! nothing — including `Lt`/`Gt`, which upstream matches only behind the
//! alpha gate `TaintTolerationComparisonOperators` (off by default).
//!
//! Two forms of the same rule: on the API types ([`tolerates`]) for code
//! that looks at a pod once, and compiled ([`Toleration`], [`Taint`]) for
//! the scheduler, which matches one pod against every node.

use k8s_openapi::api::core::v1 as api;

/// Taint of a node whose Ready condition is False.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint of a node whose Ready condition is Unknown (or absent).
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint of a node with `spec.unschedulable`.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
pub const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
pub const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
pub const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
    /// Anything else (validation admits only the three above).
    Other,
}

impl Effect {
    pub fn parse(s: &str) -> Effect {
        match s {
            "NoSchedule" => Effect::NoSchedule,
            "PreferNoSchedule" => Effect::PreferNoSchedule,
            "NoExecute" => Effect::NoExecute,
            _ => Effect::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TolerationOp {
    /// `Equal` or unset.
    Equal,
    Exists,
    /// Any other operator: tolerates nothing.
    Invalid,
}

impl TolerationOp {
    pub fn parse(op: Option<&str>) -> TolerationOp {
        match op {
            None | Some("" | "Equal") => TolerationOp::Equal,
            Some("Exists") => TolerationOp::Exists,
            Some(_) => TolerationOp::Invalid,
        }
    }
}

/// The rule, once effects have been compared: key, then operator and value.
fn key_and_value_match(
    key: &str,
    op: TolerationOp,
    value: &str,
    taint_key: &str,
    taint_value: &str,
) -> bool {
    if !key.is_empty() && key != taint_key {
        return false;
    }
    match op {
        TolerationOp::Equal => value == taint_value,
        TolerationOp::Exists => true,
        TolerationOp::Invalid => false,
    }
}

/// Whether `t` tolerates `taint` (upstream's `ToleratesTaint`).
pub fn tolerates(t: &api::Toleration, taint: &api::Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    key_and_value_match(
        t.key.as_deref().unwrap_or_default(),
        TolerationOp::parse(t.operator.as_deref()),
        t.value.as_deref().unwrap_or_default(),
        &taint.key,
        taint.value.as_deref().unwrap_or_default(),
    )
}

/// Whether any of `tolerations` tolerates `taint` (`TolerationsTolerateTaint`).
pub fn tolerated(tolerations: &[api::Toleration], taint: &api::Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

/// The first of `taints` that `include` selects and no toleration
/// tolerates (`FindMatchingUntoleratedTaint`).
pub fn find_untolerated<'a>(
    taints: &'a [api::Taint],
    tolerations: &[api::Toleration],
    include: impl Fn(&api::Taint) -> bool,
) -> Option<&'a api::Taint> {
    taints
        .iter()
        .filter(|t| include(t))
        .find(|t| !tolerated(tolerations, t))
}

/// A taint, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: Effect,
}

impl Taint {
    pub fn new(key: &str, value: &str, effect: Effect) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect,
        }
    }

    pub fn from_api(t: &api::Taint) -> Taint {
        Taint {
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
            effect: Effect::parse(&t.effect),
        }
    }
}

/// A toleration, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    /// Empty with `Exists`: tolerates every key.
    pub key: String,
    pub operator: TolerationOp,
    pub value: String,
    /// `None`: every effect.
    pub effect: Option<Effect>,
}

impl Toleration {
    pub fn from_api(t: &api::Toleration) -> Toleration {
        Toleration {
            key: t.key.clone().unwrap_or_default(),
            operator: TolerationOp::parse(t.operator.as_deref()),
            value: t.value.clone().unwrap_or_default(),
            effect: t
                .effect
                .as_deref()
                .filter(|e| !e.is_empty())
                .map(Effect::parse),
        }
    }

    /// [`tolerates`], compiled.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        key_and_value_match(
            &self.key,
            self.operator,
            &self.value,
            &taint.key,
            &taint.value,
        )
    }
}

/// Whether any of `tolerations` tolerates `taint`, compiled.
pub fn tolerated_compiled(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn tol(v: Value) -> api::Toleration {
        serde_json::from_value(v).unwrap()
    }

    fn taint(v: Value) -> api::Taint {
        serde_json::from_value(v).unwrap()
    }

    /// k8s.io/api/core/v1 toleration_test.go's TestTolerationToleratesTaint
    /// (comparison operators with the gate off), plus the cases each of the
    /// three former copies (scheduler, daemon set, node lifecycle) tested.
    #[test]
    fn tolerates_table() {
        let cases: Vec<(&str, Value, Value, bool)> = vec![
            (
                "same key, value and effect",
                json!({"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoSchedule"}),
                json!({"key": "foo", "value": "bar", "effect": "NoSchedule"}),
                true,
            ),
            (
                "empty effect tolerates every effect",
                json!({"key": "foo", "operator": "Equal", "value": "bar"}),
                json!({"key": "foo", "value": "bar", "effect": "NoExecute"}),
                true,
            ),
            (
                "different effect",
                json!({"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoExecute"}),
                json!({"key": "foo", "value": "bar", "effect": "NoSchedule"}),
                false,
            ),
            (
                "different key",
                json!({"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoSchedule"}),
                json!({"key": "baz", "value": "bar", "effect": "NoSchedule"}),
                false,
            ),
            (
                "different value",
                json!({"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoSchedule"}),
                json!({"key": "foo", "value": "baz", "effect": "NoSchedule"}),
                false,
            ),
            (
                "no operator means Equal",
                json!({"key": "foo", "value": "bar"}),
                json!({"key": "foo", "value": "bar", "effect": "NoSchedule"}),
                true,
            ),
            (
                "Equal with no value matches a taint without one",
                json!({"key": "foo"}),
                json!({"key": "foo", "effect": "NoSchedule"}),
                true,
            ),
            (
                "Exists ignores the value",
                json!({"key": "foo", "operator": "Exists", "effect": "NoSchedule"}),
                json!({"key": "foo", "value": "bar", "effect": "NoSchedule"}),
                true,
            ),
            (
                "empty key with Exists tolerates everything",
                json!({"operator": "Exists"}),
                json!({"key": "foo", "value": "bar", "effect": "NoExecute"}),
                true,
            ),
            (
                "empty key with Exists and an effect",
                json!({"operator": "Exists", "effect": "NoSchedule"}),
                json!({"key": "foo", "effect": "PreferNoSchedule"}),
                false,
            ),
            (
                "Lt without the comparison gate tolerates nothing",
                json!({"key": "foo", "operator": "Lt", "value": "10", "effect": "NoSchedule"}),
                json!({"key": "foo", "value": "5", "effect": "NoSchedule"}),
                false,
            ),
            (
                "unknown operator",
                json!({"key": "foo", "operator": "Bogus", "value": "bar"}),
                json!({"key": "foo", "value": "bar", "effect": "NoSchedule"}),
                false,
            ),
            (
                "Exists with a key, other key",
                json!({"key": "k", "operator": "Exists"}),
                json!({"key": "other", "effect": "NoSchedule"}),
                false,
            ),
        ];
        for (name, t, x, want) in cases {
            let (t, x) = (tol(t), taint(x));
            assert_eq!(tolerates(&t, &x), want, "{name}");
            assert_eq!(
                Toleration::from_api(&t).tolerates(&Taint::from_api(&x)),
                want,
                "{name} (compiled)"
            );
        }
    }

    #[test]
    fn find_untolerated_filters_and_picks_the_first() {
        let taints: Vec<api::Taint> = serde_json::from_value(json!([
            {"key": "soft", "effect": "PreferNoSchedule"},
            {"key": "a", "effect": "NoSchedule"},
            {"key": "b", "effect": "NoExecute"},
        ]))
        .unwrap();
        let hard = |t: &api::Taint| t.effect == "NoSchedule" || t.effect == "NoExecute";
        let none: Vec<api::Toleration> = vec![];
        assert_eq!(
            find_untolerated(&taints, &none, hard).map(|t| t.key.as_str()),
            Some("a")
        );
        let a = vec![tol(json!({"key": "a", "operator": "Exists"}))];
        assert_eq!(
            find_untolerated(&taints, &a, hard).map(|t| t.key.as_str()),
            Some("b")
        );
        let all = vec![tol(json!({"operator": "Exists"}))];
        assert_eq!(find_untolerated(&taints, &all, hard), None);
        let only_no_execute = |t: &api::Taint| t.effect == "NoExecute";
        assert_eq!(
            find_untolerated(&taints, &a, only_no_execute).map(|t| t.key.as_str()),
            Some("b")
        );
    }
}
