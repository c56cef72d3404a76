//! Label and field selectors, parsed from their query-string forms
//! (`labelSelector=app=web,tier in (a,b),!legacy`, `fieldSelector=spec.nodeName=n1`)
//! and from `LabelSelector` objects.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

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
    fn matches(&self, value: Option<&str>) -> bool {
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
                let op = match e
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                {
                    "In" => Op::In(values),
                    "NotIn" => Op::NotIn(values),
                    "Exists" => Op::Exists,
                    "DoesNotExist" => Op::DoesNotExist,
                    other => {
                        return Err(SelectorError(format!(
                            "{other:?} is not a valid label selector operator"
                        )));
                    }
                };
                reqs.push(Requirement { key, op });
            }
        }
        Ok(LabelSelector(reqs))
    }
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

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

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
