//! Node affinity: a pod's `nodeSelector` and required node affinity against
//! a node (component-helpers' `nodeaffinity.GetRequiredNodeAffinity(pod).Match`),
//! and the weight of its preferred terms a node matches
//! (`PreferredSchedulingTerms.Score`).
//!
//! Upstream's rules, kept here:
//! - a term's `matchExpressions` are label requirements
//!   ([`crate::selectors::Requirement`]): `In`/`NotIn` need values,
//!   `Exists`/`DoesNotExist` none, `Gt`/`Lt` exactly one integer;
//! - its `matchFields` allow only `In`/`NotIn` with exactly one value, on
//!   the node's fields (`metadata.name`; any other field reads as empty);
//! - a term that breaks these rules matches no node (the other terms still
//!   count); an empty term matches no node; terms are ORed, and a required
//!   affinity without a usable term matches nothing;
//! - `nodeSelector` is a label set, ANDed with the required terms;
//! - preferred terms with weight 0 or no requirements are skipped.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

use crate::selectors::{Op, Requirement};

/// One `matchFields` requirement: the field equals (or differs from) `value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    pub key: String,
    pub value: String,
    pub equal: bool,
}

/// A node selector term, compiled. `None` parts were not given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    labels: Option<Vec<Requirement>>,
    fields: Option<Vec<FieldRequirement>>,
    /// A requirement broke the rules: the term matches nothing.
    invalid: bool,
}

fn label_requirement(r: &NodeSelectorRequirement) -> Option<Requirement> {
    let values = r.values.clone().unwrap_or_default();
    let single_int = || match values.as_slice() {
        [v] => v.parse::<i64>().ok(),
        _ => None,
    };
    let op = match r.operator.as_str() {
        "In" if !values.is_empty() => Op::In(values),
        "NotIn" if !values.is_empty() => Op::NotIn(values),
        "Exists" if values.is_empty() => Op::Exists,
        "DoesNotExist" if values.is_empty() => Op::DoesNotExist,
        "Gt" => Op::Gt(single_int()?),
        "Lt" => Op::Lt(single_int()?),
        _ => return None,
    };
    Some(Requirement {
        key: r.key.clone(),
        op,
    })
}

fn field_requirement(r: &NodeSelectorRequirement) -> Option<FieldRequirement> {
    let [value] = r.values.as_deref()? else {
        return None;
    };
    let equal = match r.operator.as_str() {
        "In" => true,
        "NotIn" => false,
        _ => return None,
    };
    Some(FieldRequirement {
        key: r.key.clone(),
        value: value.clone(),
        equal,
    })
}

impl Term {
    /// `None` for an empty term (which matches no node).
    pub fn from_api(t: &NodeSelectorTerm) -> Option<Term> {
        let exprs = t.match_expressions.as_deref().unwrap_or_default();
        let fields = t.match_fields.as_deref().unwrap_or_default();
        if exprs.is_empty() && fields.is_empty() {
            return None;
        }
        let labels: Option<Vec<Requirement>> = exprs.iter().map(label_requirement).collect();
        let fields_c: Option<Vec<FieldRequirement>> =
            fields.iter().map(field_requirement).collect();
        let invalid = labels.is_none() || fields_c.is_none();
        Some(Term {
            labels: labels.filter(|l| !l.is_empty()),
            fields: fields_c.filter(|f| !f.is_empty()),
            invalid,
        })
    }

    /// Whether a node with these labels and this name satisfies the term.
    pub fn matches(&self, labels: &BTreeMap<String, String>, name: &str) -> bool {
        if self.invalid {
            return false;
        }
        let labels_ok = self.labels.as_ref().is_none_or(|reqs| {
            reqs.iter()
                .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
        });
        // Upstream skips the field requirements of a node without a name.
        let fields_ok = name.is_empty()
            || self.fields.as_ref().is_none_or(|reqs| {
                reqs.iter().all(|r| {
                    let v = if r.key == "metadata.name" { name } else { "" };
                    (v == r.value) == r.equal
                })
            });
        labels_ok && fields_ok
    }
}

/// A pod's `nodeSelector` and required node affinity, compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequiredNodeAffinity {
    pub node_selector: Vec<(String, String)>,
    /// The required terms (ORed), empty ones dropped; `None`: no required
    /// affinity at all.
    pub terms: Option<Vec<Term>>,
}

impl RequiredNodeAffinity {
    pub fn from_spec(spec: &PodSpec) -> RequiredNodeAffinity {
        RequiredNodeAffinity {
            node_selector: spec
                .node_selector
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            terms: spec
                .affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .map(|s| {
                    s.node_selector_terms
                        .iter()
                        .filter_map(Term::from_api)
                        .collect()
                }),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>, name: &str) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .terms
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(labels, name)))
    }
}

/// A pod's preferred node affinity terms with their weights, compiled.
pub fn preferred_terms(spec: &PodSpec) -> Vec<(i64, Term)> {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| p.weight != 0)
        .filter_map(|p| Some((i64::from(p.weight), Term::from_api(&p.preference)?)))
        .collect()
}

/// The sum of the weights of the terms a node matches.
pub fn preferred_score(
    terms: &[(i64, Term)],
    labels: &BTreeMap<String, String>,
    name: &str,
) -> i64 {
    terms
        .iter()
        .filter(|(_, t)| t.matches(labels, name))
        .map(|(w, _)| *w)
        .sum()
}

/// Whether a pod with `spec` may run on `node` by its node selector and
/// required node affinity.
pub fn pod_matches_node(spec: &PodSpec, node: &Node) -> bool {
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&NONE);
    RequiredNodeAffinity::from_spec(spec)
        .matches(labels, node.metadata.name.as_deref().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selectors::labels;
    use serde_json::{Value, json};

    fn spec(v: Value) -> PodSpec {
        let mut v = v;
        v["containers"] = json!([]);
        serde_json::from_value(v).unwrap()
    }

    fn required(terms: Value) -> PodSpec {
        spec(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}),
        )
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> Value {
        json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]})
    }

    /// component-helpers nodeaffinity_test.go's TestNodeSelectorMatch and
    /// TestRequiredNodeAffinityMatch, plus the cases the scheduler and the
    /// daemon set controller tested with their former copies.
    #[test]
    fn required_table() {
        let node = labels(&[("foo", "bar"), ("cpus", "8"), ("zone", "a")]);
        let cases: Vec<(&str, PodSpec, bool)> = vec![
            ("nothing required", spec(json!({})), true),
            (
                "node selector matches",
                spec(json!({"nodeSelector": {"foo": "bar"}})),
                true,
            ),
            (
                "node selector differs",
                spec(json!({"nodeSelector": {"foo": "baz"}})),
                false,
            ),
            (
                "node selector key missing",
                spec(json!({"nodeSelector": {"gpu": "yes"}})),
                false,
            ),
            (
                "In",
                required(json!([expr("foo", "In", &["bar", "x"])])),
                true,
            ),
            (
                "In, other value",
                required(json!([expr("foo", "In", &["x"])])),
                false,
            ),
            (
                "NotIn",
                required(json!([expr("foo", "NotIn", &["x"])])),
                true,
            ),
            (
                "NotIn, missing key",
                required(json!([expr("gpu", "NotIn", &["x"])])),
                true,
            ),
            (
                "Exists",
                required(json!([expr("foo", "Exists", &[])])),
                true,
            ),
            (
                "DoesNotExist",
                required(json!([expr("foo", "DoesNotExist", &[])])),
                false,
            ),
            ("Gt", required(json!([expr("cpus", "Gt", &["4"])])), true),
            ("Lt", required(json!([expr("cpus", "Lt", &["4"])])), false),
            (
                "Gt on a non-number label",
                required(json!([expr("foo", "Gt", &["4"])])),
                false,
            ),
            (
                "In without values is invalid",
                required(json!([expr("foo", "In", &[])])),
                false,
            ),
            (
                "NotIn without values is invalid",
                required(json!([expr("gpu", "NotIn", &[])])),
                false,
            ),
            (
                "Exists with values is invalid",
                required(json!([expr("foo", "Exists", &["bar"])])),
                false,
            ),
            (
                "Gt with two values is invalid",
                required(json!([expr("cpus", "Gt", &["1", "2"])])),
                false,
            ),
            (
                "Gt with a non-integer is invalid",
                required(json!([expr("cpus", "Gt", &["x"])])),
                false,
            ),
            (
                "unknown operator is invalid",
                required(json!([expr("foo", "Bogus", &["bar"])])),
                false,
            ),
            (
                "an invalid term does not hide a valid one",
                required(json!([expr("foo", "In", &[]), expr("zone", "In", &["a"])])),
                true,
            ),
            ("empty term matches nothing", required(json!([{}])), false),
            ("no terms match nothing", required(json!([])), false),
            (
                "terms are ORed",
                required(json!([
                    expr("foo", "In", &["x"]),
                    expr("zone", "In", &["a"])
                ])),
                true,
            ),
            (
                "expressions in a term are ANDed",
                required(json!([{"matchExpressions": [
                    {"key": "foo", "operator": "In", "values": ["bar"]},
                    {"key": "zone", "operator": "In", "values": ["b"]}]}])),
                false,
            ),
            (
                "matchFields metadata.name In",
                required(
                    json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
                ),
                true,
            ),
            (
                "matchFields metadata.name In, other node",
                required(
                    json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]),
                ),
                false,
            ),
            (
                "matchFields NotIn",
                required(
                    json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n2"]}]}]),
                ),
                true,
            ),
            (
                "matchFields with two values is invalid",
                required(
                    json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1", "n2"]}]}]),
                ),
                false,
            ),
            (
                "matchFields Exists is invalid",
                required(
                    json!([{"matchFields": [{"key": "metadata.name", "operator": "Exists"}]}]),
                ),
                false,
            ),
            (
                "labels and fields in one term are ANDed",
                required(
                    json!([{"matchExpressions": [{"key": "foo", "operator": "In", "values": ["bar"]}],
                                 "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]),
                ),
                false,
            ),
            (
                "selector and affinity are ANDed",
                {
                    let mut s = required(json!([expr("foo", "In", &["bar"])]));
                    s.node_selector = Some(BTreeMap::from([("zone".to_string(), "b".to_string())]));
                    s
                },
                false,
            ),
        ];
        for (name, s, want) in cases {
            let r = RequiredNodeAffinity::from_spec(&s);
            assert_eq!(r.matches(&node, "n1"), want, "{name}");
            let n: Node = serde_json::from_value(
                json!({"metadata": {"name": "n1", "labels": {"foo": "bar", "cpus": "8", "zone": "a"}}}),
            )
            .unwrap();
            assert_eq!(pod_matches_node(&s, &n), want, "{name} (API types)");
        }
    }

    #[test]
    fn preferred_weights() {
        let s = spec(
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 5, "preference": expr("zone", "In", &["a"])},
                {"weight": 3, "preference": expr("disk", "Exists", &[])},
                {"weight": 0, "preference": expr("zone", "In", &["a"])},
                {"weight": 7, "preference": {}},
                {"weight": 2, "preference": expr("zone", "Bogus", &[])},
            ]}}}),
        );
        let terms = preferred_terms(&s);
        assert_eq!(terms.len(), 3);
        assert_eq!(preferred_score(&terms, &labels(&[("zone", "a")]), "n"), 5);
        assert_eq!(
            preferred_score(&terms, &labels(&[("zone", "a"), ("disk", "ssd")]), "n"),
            8
        );
        assert_eq!(preferred_score(&terms, &labels(&[]), "n"), 0);
    }
}
