//! Label selectors (apimachinery's `labels.Selector` and
//! `metav1.LabelSelector`): the requirement model, its matching, the
//! query-string form (`app=web,tier in (a,b),!legacy`, `n>3`) and the
//! object form (`matchLabels`, `matchExpressions`).
//!
//! A selector's requirements all have to hold; an empty selector matches
//! everything (a caller that must not select everything, as a workload
//! controller, checks [`LabelSelector::is_empty`]). A Service's selector
//! and a pod's `nodeSelector` are plain label sets: [`set_matches`].

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde_json::Value;

/// A selector that does not parse, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError(pub String);

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unable to parse requirement: {}", self.0)
    }
}

impl std::error::Error for SelectorError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

impl Requirement {
    /// Whether a label's value (`None`: no such label) satisfies this.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Eq(v), Some(x)) => v == x,
            (Op::Eq(_), None) => false,
            (Op::NotEq(v), x) => x != Some(v.as_str()),
            (Op::In(vs), Some(x)) => vs.iter().any(|v| v == x),
            (Op::In(_), None) => false,
            (Op::NotIn(vs), x) => x.is_none_or(|x| !vs.iter().any(|v| v == x)),
            (Op::Exists, x) => x.is_some(),
            (Op::DoesNotExist, x) => x.is_none(),
            (Op::Gt(n), Some(x)) => x.parse::<i64>().is_ok_and(|x| x > *n),
            (Op::Lt(n), Some(x)) => x.parse::<i64>().is_ok_and(|x| x < *n),
            (Op::Gt(_) | Op::Lt(_), None) => false,
        }
    }
}

/// A label selector: all requirements must hold. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
    }

    /// Match against an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.0
            .iter()
            .all(|r| r.matches(labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str)))
    }

    /// Parse the string form used in `?labelSelector=`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_top_level(s)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(reqs))
    }

    /// From a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    /// `None` (absent selector) matches nothing, as Kubernetes treats it.
    pub fn from_object(sel: &Value) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in ml {
                let v = v
                    .as_str()
                    .ok_or_else(|| SelectorError(format!("matchLabels {k}: not a string")))?;
                reqs.push(Requirement {
                    key: k.clone(),
                    op: Op::Eq(v.to_string()),
                });
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let op = expression_op(
                    e.get("operator")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    values,
                )?;
                reqs.push(Requirement { key, op });
            }
        }
        Ok(LabelSelector(reqs))
    }
}

/// The operator of a `matchExpressions` entry.
fn expression_op(operator: &str, values: Vec<String>) -> Result<Op, SelectorError> {
    Ok(match operator {
        "In" => Op::In(values),
        "NotIn" => Op::NotIn(values),
        "Exists" => Op::Exists,
        "DoesNotExist" => Op::DoesNotExist,
        other => {
            return Err(SelectorError(format!(
                "{other:?} is not a valid label selector operator"
            )));
        }
    })
}

fn split_top_level(s: &str) -> Result<Vec<&str>, SelectorError> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(SelectorError(format!("unbalanced ')' in {s:?}")));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(SelectorError(format!("unbalanced '(' in {s:?}")));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("{whole}: expected a parenthesised set of values")))?;
    let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if let Some(bad) = vals.iter().find(|v| !valid_value(v)) {
        return Err(SelectorError(format!(
            "{whole}: invalid label value {bad:?}"
        )));
    }
    Ok(vals)
}

fn parse_requirement(part: &str) -> Result<Requirement, SelectorError> {
    let err = |m: &str| SelectorError(format!("{part}: {m}"));
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        if !valid_key(key) {
            return Err(err("invalid label key"));
        }
        return Ok(Requirement {
            key: key.into(),
            op: Op::DoesNotExist,
        });
    }
    for (sym, mk) in [
        ("!=", Op::NotEq as fn(String) -> Op),
        ("==", Op::Eq as fn(String) -> Op),
        ("=", Op::Eq as fn(String) -> Op),
    ] {
        if let Some((k, v)) = part.split_once(sym) {
            let (k, v) = (k.trim(), v.trim());
            if !valid_key(k) {
                return Err(err("invalid label key"));
            }
            if !valid_value(v) {
                return Err(err("invalid label value"));
            }
            return Ok(Requirement {
                key: k.into(),
                op: mk(v.into()),
            });
        }
    }
    for (sym, is_gt) in [(">", true), ("<", false)] {
        if let Some((k, v)) = part.split_once(sym) {
            let k = k.trim();
            let n: i64 = v
                .trim()
                .parse()
                .map_err(|_| err("value must be an integer"))?;
            if !valid_key(k) {
                return Err(err("invalid label key"));
            }
            return Ok(Requirement {
                key: k.into(),
                op: if is_gt { Op::Gt(n) } else { Op::Lt(n) },
            });
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = words[0].trim();
        let rest = words[1].trim_start();
        if !valid_key(key) {
            return Err(err("invalid label key"));
        }
        if let Some(set) = rest.strip_prefix("notin") {
            return Ok(Requirement {
                key: key.into(),
                op: Op::NotIn(parse_set(set, part)?),
            });
        }
        if let Some(set) = rest.strip_prefix("in") {
            return Ok(Requirement {
                key: key.into(),
                op: Op::In(parse_set(set, part)?),
            });
        }
        return Err(err("expected one of =, ==, !=, in, notin"));
    }
    if !valid_key(part) {
        return Err(err("invalid label key"));
    }
    Ok(Requirement {
        key: part.into(),
        op: Op::Exists,
    })
}

impl LabelSelector {
    /// From a typed `metav1.LabelSelector`.
    pub fn from_api(sel: &meta::LabelSelector) -> Result<Self, SelectorError> {
        let mut reqs: Vec<Requirement> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Op::Eq(v.clone()),
            })
            .collect();
        for e in sel.match_expressions.iter().flatten() {
            let op = expression_op(&e.operator, e.values.clone().unwrap_or_default())?;
            reqs.push(Requirement {
                key: e.key.clone(),
                op,
            });
        }
        Ok(LabelSelector(reqs))
    }
}

/// The query-string form, as `?labelSelector=` takes it.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let k = &r.key;
            match &r.op {
                Op::Eq(v) => write!(f, "{k}={v}")?,
                Op::NotEq(v) => write!(f, "{k}!={v}")?,
                Op::In(vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Op::NotIn(vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Op::Exists => f.write_str(k)?,
                Op::DoesNotExist => write!(f, "!{k}")?,
                Op::Gt(n) => write!(f, "{k}>{n}")?,
                Op::Lt(n) => write!(f, "{k}<{n}")?,
            }
        }
        Ok(())
    }
}

/// Whether `labels` carry every pair of `set` (`labels.SelectorFromSet`:
/// a Service's selector, a pod's `nodeSelector`). An empty set matches.
pub fn set_matches<'a>(
    set: impl IntoIterator<Item = (&'a String, &'a String)>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    set.into_iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// A label map from pairs, for tests.
#[cfg(test)]
pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    type Case = (&'static str, &'static [(&'static str, &'static str)], bool);

    #[test]
    fn label_selector_table() {
        let cases: &[Case] = &[
            ("", &[], true),
            ("app=web", &[("app", "web")], true),
            ("app=web", &[("app", "db")], false),
            ("app==web", &[("app", "web")], true),
            ("app!=web", &[], true),
            ("app!=web", &[("app", "web")], false),
            ("app", &[("app", "")], true),
            ("!app", &[("app", "x")], false),
            ("!app", &[], true),
            ("tier in (a, b)", &[("tier", "b")], true),
            ("tier in (a,b)", &[("tier", "c")], false),
            ("tier notin (a,b)", &[], true),
            ("tier notin (a,b)", &[("tier", "a")], false),
            (
                "app=web,tier in (a,b),!legacy",
                &[("app", "web"), ("tier", "a")],
                true,
            ),
            (
                "app=web,tier in (a,b),!legacy",
                &[("app", "web"), ("tier", "a"), ("legacy", "1")],
                false,
            ),
            ("n>3", &[("n", "4")], true),
            ("n<3", &[("n", "4")], false),
            ("example.com/app=x", &[("example.com/app", "x")], true),
        ];
        for (sel, l, want) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&labels(l)), *want, "{sel} on {l:?}");
        }
    }

    #[test]
    fn bad_label_selectors() {
        for bad in ["a in (b", "a=b c", "a in b", "=x", "a=(", "a in (b))"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn from_object() {
        let s = LabelSelector::from_object(&json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]})).unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(
            LabelSelector::from_object(
                &json!({"matchExpressions": [{"key": "a", "operator": "Bogus"}]})
            )
            .is_err()
        );
    }

    #[test]
    fn typed_objects_and_query_form() {
        let sel: meta::LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "x"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "old", "operator": "NotIn", "values": ["1"]},
            {"key": "legacy", "operator": "DoesNotExist"}]}))
            .unwrap();
        let s = LabelSelector::from_api(&sel).unwrap();
        assert_eq!(s.to_string(), "app=x,tier in (a,b),old notin (1),!legacy");
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
        assert_eq!(
            LabelSelector::from_object(&serde_json::to_value(&sel).unwrap()).unwrap(),
            s
        );
        let bad: meta::LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}),
        )
        .unwrap();
        assert!(LabelSelector::from_api(&bad).is_err());
        assert_eq!(
            LabelSelector::parse("n>3,m<2").unwrap().to_string(),
            "n>3,m<2"
        );
    }

    #[test]
    fn label_sets() {
        let set = labels(&[("app", "web")]);
        assert!(set_matches(
            &set,
            Some(&labels(&[("app", "web"), ("x", "y")]))
        ));
        assert!(!set_matches(&set, Some(&labels(&[("app", "db")]))));
        assert!(!set_matches(&set, None));
        assert!(set_matches(&BTreeMap::new(), None));
    }
}
