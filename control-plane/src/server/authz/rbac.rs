//! Role-based access control, as kube-apiserver's RBAC authorizer decides
//! it: a request is allowed when a rule of a role bound to its user (by a
//! ClusterRoleBinding, or a RoleBinding in the request's namespace) matches
//! it. There are no deny rules. Also the checks that keep a user from
//! granting, through a role or a binding, more than they hold themselves.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::attributes::Attributes;

/// One rule of a Role or ClusterRole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

/// The strings of a JSON array (none when it is not one).
pub(crate) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(&v["verbs"]),
            api_groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            resource_names: strings(&v["resourceNames"]),
            non_resource_urls: strings(&v["nonResourceURLs"]),
        }
    }

    /// The rules of a role object (`rules: null` is none).
    pub fn all_of(role: &Value) -> Vec<Rule> {
        role["rules"]
            .as_array()
            .map(|rs| rs.iter().map(Rule::from_json).collect())
            .unwrap_or_default()
    }

    fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    fn resource_matches(&self, a: &Attributes) -> bool {
        let combined = a.qualified_resource();
        self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty()
                    && r.strip_prefix("*/").is_some_and(|s| s == a.subresource))
        })
    }

    /// Whether this rule allows the request.
    pub fn allows(&self, a: &Attributes) -> bool {
        if !self.verb_matches(&a.verb) {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            });
        }
        self.api_groups
            .iter()
            .any(|g| g == "*" || *g == a.api_group)
            && self.resource_matches(a)
            && (self.resource_names.is_empty() || self.resource_names.contains(&a.name))
    }
}

/// What a binding grants and to whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    /// Empty for a ClusterRoleBinding.
    pub namespace: String,
    /// `Role` or `ClusterRole`.
    pub role_kind: String,
    pub role_name: String,
    /// (kind, name, namespace) of each subject.
    pub subjects: Vec<(String, String, String)>,
}

impl Binding {
    pub fn from_json(v: &Value) -> Binding {
        let md = &v["metadata"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Binding {
            name: s(&md["name"]),
            namespace: s(&md["namespace"]),
            role_kind: s(&v["roleRef"]["kind"]),
            role_name: s(&v["roleRef"]["name"]),
            subjects: v["subjects"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| (s(&x["kind"]), s(&x["name"]), s(&x["namespace"])))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Whether the binding names this user (directly, by a group, or as a
    /// service account).
    pub fn applies_to(&self, user: &str, groups: &[String]) -> bool {
        self.subjects
            .iter()
            .any(|(kind, name, ns)| match kind.as_str() {
                "User" => name == user,
                "Group" => groups.contains(name),
                "ServiceAccount" => {
                    let ns = if ns.is_empty() { &self.namespace } else { ns };
                    user.strip_prefix("system:serviceaccount:")
                        .and_then(|r| r.split_once(':'))
                        .is_some_and(|(n, s)| n == ns && s == name)
                }
                _ => false,
            })
    }

    fn describe(&self, user: &str, groups: &[String]) -> String {
        let subject = self
            .subjects
            .iter()
            .find(|(kind, name, _)| match kind.as_str() {
                "User" => name == user,
                "Group" => groups.contains(name),
                _ => true,
            })
            .map(|(k, n, _)| format!("{k} {n:?}"))
            .unwrap_or_default();
        if self.namespace.is_empty() {
            format!(
                "ClusterRoleBinding {:?} of ClusterRole {:?} to {subject}",
                self.name, self.role_name
            )
        } else {
            format!(
                "RoleBinding {:?} of {} {:?} to {subject}",
                format!("{}/{}", self.namespace, self.name),
                self.role_kind,
                self.role_name
            )
        }
    }
}

/// The cluster's RBAC objects.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    cluster_roles: HashMap<String, Vec<Rule>>,
    /// By (namespace, name).
    roles: HashMap<(String, String), Vec<Rule>>,
    cluster_bindings: BTreeMap<String, Binding>,
    /// By namespace, then name.
    bindings: HashMap<String, BTreeMap<String, Binding>>,
}

/// The RBAC kinds a [`Policy`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ClusterRole,
    Role,
    ClusterRoleBinding,
    RoleBinding,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::ClusterRole,
        Kind::Role,
        Kind::ClusterRoleBinding,
        Kind::RoleBinding,
    ];

    pub fn plural(self) -> &'static str {
        match self {
            Kind::ClusterRole => "clusterroles",
            Kind::Role => "roles",
            Kind::ClusterRoleBinding => "clusterrolebindings",
            Kind::RoleBinding => "rolebindings",
        }
    }
}

fn ns_name(v: &Value) -> (String, String) {
    let md = &v["metadata"];
    (
        md["namespace"].as_str().unwrap_or_default().to_string(),
        md["name"].as_str().unwrap_or_default().to_string(),
    )
}

impl Policy {
    /// Add or replace an object of `kind`.
    pub fn upsert(&mut self, kind: Kind, v: &Value) {
        let (ns, name) = ns_name(v);
        match kind {
            Kind::ClusterRole => {
                self.cluster_roles.insert(name, Rule::all_of(v));
            }
            Kind::Role => {
                self.roles.insert((ns, name), Rule::all_of(v));
            }
            Kind::ClusterRoleBinding => {
                self.cluster_bindings.insert(name, Binding::from_json(v));
            }
            Kind::RoleBinding => {
                self.bindings
                    .entry(ns)
                    .or_default()
                    .insert(name, Binding::from_json(v));
            }
        }
    }

    /// Remove an object of `kind`.
    pub fn remove(&mut self, kind: Kind, v: &Value) {
        let (ns, name) = ns_name(v);
        match kind {
            Kind::ClusterRole => {
                self.cluster_roles.remove(&name);
            }
            Kind::Role => {
                self.roles.remove(&(ns, name));
            }
            Kind::ClusterRoleBinding => {
                self.cluster_bindings.remove(&name);
            }
            Kind::RoleBinding => {
                if let Some(b) = self.bindings.get_mut(&ns) {
                    b.remove(&name);
                }
            }
        }
    }

    /// Forget every object of `kind` (before a relist).
    pub fn clear(&mut self, kind: Kind) {
        match kind {
            Kind::ClusterRole => self.cluster_roles.clear(),
            Kind::Role => self.roles.clear(),
            Kind::ClusterRoleBinding => self.cluster_bindings.clear(),
            Kind::RoleBinding => self.bindings.clear(),
        }
    }

    /// The rules a binding grants (none when its role does not exist).
    pub fn rules_of(&self, b: &Binding) -> &[Rule] {
        let rules = match b.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_name),
            "Role" if !b.namespace.is_empty() => {
                self.roles.get(&(b.namespace.clone(), b.role_name.clone()))
            }
            _ => None,
        };
        rules.map(Vec::as_slice).unwrap_or_default()
    }

    /// The rules of the role a role reference names, if it exists.
    pub fn role_rules(&self, kind: &str, namespace: &str, name: &str) -> Option<&[Rule]> {
        match kind {
            "ClusterRole" => self.cluster_roles.get(name),
            "Role" => self.roles.get(&(namespace.to_string(), name.to_string())),
            _ => None,
        }
        .map(Vec::as_slice)
    }

    /// The bindings that apply to a user in a namespace ("" is the
    /// cluster scope: ClusterRoleBindings only).
    fn bindings_for<'a>(
        &'a self,
        user: &'a str,
        groups: &'a [String],
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Binding> + 'a {
        let namespaced = (!namespace.is_empty())
            .then(|| self.bindings.get(namespace))
            .flatten()
            .into_iter()
            .flat_map(|m| m.values());
        self.cluster_bindings
            .values()
            .chain(namespaced)
            .filter(move |b| b.applies_to(user, groups))
    }

    /// Every rule that applies to a user in a namespace.
    pub fn rules_for(&self, user: &str, groups: &[String], namespace: &str) -> Vec<Rule> {
        self.bindings_for(user, groups, namespace)
            .flat_map(|b| self.rules_of(b).iter().cloned())
            .collect()
    }

    /// Why the request is allowed, if it is.
    pub fn allows(&self, a: &Attributes) -> Option<String> {
        self.bindings_for(&a.user, &a.groups, &a.namespace)
            .find(|b| self.rules_of(b).iter().any(|r| r.allows(a)))
            .map(|b| format!("RBAC: allowed by {}", b.describe(&a.user, &a.groups)))
    }
}

/// The single permissions a rule grants: (verb, group, resource, name) or
/// (verb, non-resource URL).
fn atoms(rule: &Rule) -> Vec<Attributes> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            out.push(Attributes {
                verb: verb.clone(),
                path: url.clone(),
                ..Attributes::default()
            });
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                let names: Vec<&str> = if rule.resource_names.is_empty() {
                    vec![""]
                } else {
                    rule.resource_names.iter().map(String::as_str).collect()
                };
                for name in names {
                    let (resource, subresource) =
                        resource.split_once('/').unwrap_or((resource, ""));
                    out.push(Attributes {
                        verb: verb.clone(),
                        resource_request: true,
                        api_group: group.clone(),
                        resource: resource.to_string(),
                        subresource: subresource.to_string(),
                        name: name.to_string(),
                        ..Attributes::default()
                    });
                }
            }
        }
    }
    out
}

/// Whether one owned rule grants at least the single permission `a`
/// (wildcards only by wildcards; an unnamed permission only by a rule
/// without resourceNames).
fn covers_atom(owner: &Rule, a: &Attributes) -> bool {
    if !owner.verbs.iter().any(|v| v == "*" || *v == a.verb) {
        return false;
    }
    if !a.resource_request {
        return owner.non_resource_urls.iter().any(|u| {
            u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
        });
    }
    let combined = a.qualified_resource();
    owner
        .api_groups
        .iter()
        .any(|g| g == "*" || *g == a.api_group)
        && owner.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty()
                    && r.strip_prefix("*/").is_some_and(|s| s == a.subresource))
        })
        && (owner.resource_names.is_empty()
            || (!a.name.is_empty() && owner.resource_names.contains(&a.name)))
}

/// The rules among `wanted` that `owned` does not grant in full.
pub fn uncovered(owned: &[Rule], wanted: &[Rule]) -> Vec<Rule> {
    wanted
        .iter()
        .filter(|w| {
            atoms(w)
                .iter()
                .any(|a| !owned.iter().any(|o| covers_atom(o, a)))
        })
        .cloned()
        .collect()
}

/// The rules of an aggregated ClusterRole: those of every ClusterRole its
/// `aggregationRule.clusterRoleSelectors` select (itself excluded), in
/// name order, without repeats.
pub fn aggregate(target: &Value, all: &[Value]) -> Option<Vec<Value>> {
    let selectors = target["aggregationRule"]["clusterRoleSelectors"].as_array()?;
    let selectors: Vec<_> = selectors
        .iter()
        .filter_map(|s| keelson_rules::selectors::LabelSelector::from_object(s).ok())
        .collect();
    let own = &target["metadata"]["name"];
    let mut sorted: Vec<&Value> = all
        .iter()
        .filter(|r| r["metadata"]["name"] != *own)
        .collect();
    sorted.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    let mut rules: Vec<Value> = Vec::new();
    for role in sorted {
        if selectors
            .iter()
            .any(|s| !s.is_empty() && s.matches_object(role))
        {
            for r in role["rules"].as_array().into_iter().flatten() {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
    }
    Some(rules)
}

/// Every ClusterRole with its aggregated rules, followed to a fixed point
/// (an aggregated role may select another: admin ← edit ← view).
pub fn aggregate_all(all: &[Value]) -> Vec<Value> {
    let mut roles = all.to_vec();
    for _ in 0..8 {
        let mut changed = false;
        for i in 0..roles.len() {
            if let Some(rules) = aggregate(&roles[i], &roles) {
                let rules = Value::Array(rules);
                let current = if roles[i]["rules"].is_null() {
                    Value::Array(Vec::new())
                } else {
                    roles[i]["rules"].clone()
                };
                if current != rules {
                    roles[i]["rules"] = rules;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    roles
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A resource request (`res` may be `resource/subresource`).
    pub(crate) fn attrs(
        user: &str,
        groups: &[&str],
        verb: &str,
        group: &str,
        ns: &str,
        res: &str,
    ) -> Attributes {
        let (resource, subresource) = res.split_once('/').unwrap_or((res, ""));
        Attributes {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            namespace: ns.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            ..Attributes::default()
        }
    }

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
        json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
    }

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.upsert(
            Kind::ClusterRole,
            &json!({"metadata": {"name": "view"}, "rules": [rule(&["get", "list", "watch"], &[""], &["pods", "pods/log"])]}),
        );
        p.upsert(
            Kind::Role,
            &json!({"metadata": {"name": "editor", "namespace": "a"}, "rules": [
                rule(&["*"], &["apps"], &["deployments"]),
                {"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"]},
                rule(&["get"], &[""], &["*/status"]),
            ]}),
        );
        p.upsert(
            Kind::RoleBinding,
            &json!({"metadata": {"name": "sa-edits", "namespace": "a"},
                "roleRef": {"kind": "Role", "name": "editor"},
                "subjects": [{"kind": "ServiceAccount", "name": "robot"}]}),
        );
        p.upsert(
            Kind::RoleBinding,
            &json!({"metadata": {"name": "viewers", "namespace": "a"},
                "roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "Group", "name": "team"}]}),
        );
        p.upsert(
            Kind::ClusterRoleBinding,
            &json!({"metadata": {"name": "alice-views"},
                "roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": "alice"}]}),
        );
        p
    }

    const ROBOT: &str = "system:serviceaccount:a:robot";

    #[test]
    fn bindings_grant_their_roles_rules_in_their_scope() {
        let p = policy();
        // A ClusterRoleBinding: everywhere, and at the cluster scope.
        assert!(
            p.allows(&attrs("alice", &[], "list", "", "b", "pods"))
                .is_some()
        );
        assert!(
            p.allows(&attrs("alice", &[], "list", "", "", "pods"))
                .is_some()
        );
        assert!(
            p.allows(&attrs("alice", &[], "delete", "", "b", "pods"))
                .is_none()
        );
        // pods does not grant pods/exec; pods/log is named.
        assert!(
            p.allows(&attrs("alice", &[], "get", "", "b", "pods/exec"))
                .is_none()
        );
        assert!(
            p.allows(&attrs("alice", &[], "get", "", "b", "pods/log"))
                .is_some()
        );
        // A RoleBinding of a ClusterRole: only in its namespace.
        assert!(
            p.allows(&attrs("bob", &["team"], "get", "", "a", "pods"))
                .is_some()
        );
        assert!(
            p.allows(&attrs("bob", &["team"], "get", "", "b", "pods"))
                .is_none()
        );
        assert!(
            p.allows(&attrs("bob", &[], "get", "", "a", "pods"))
                .is_none()
        );
        // A service account subject, its namespace from the binding.
        assert!(
            p.allows(&attrs(ROBOT, &[], "patch", "apps", "a", "deployments"))
                .is_some()
        );
        assert!(
            p.allows(&attrs(ROBOT, &[], "patch", "", "a", "deployments"))
                .is_none()
        );
        assert!(
            p.allows(&attrs(
                "system:serviceaccount:b:robot",
                &[],
                "patch",
                "apps",
                "a",
                "deployments"
            ))
            .is_none()
        );
        // resourceNames, and */status.
        let mut s = attrs(ROBOT, &[], "get", "", "a", "secrets");
        assert!(
            p.allows(&s).is_none(),
            "unnamed get is not granted by resourceNames"
        );
        s.name = "s1".into();
        assert!(p.allows(&s).is_some());
        s.name = "s2".into();
        assert!(p.allows(&s).is_none());
        assert!(
            p.allows(&attrs(ROBOT, &[], "get", "", "a", "nodes/status"))
                .is_some()
        );
        assert!(
            p.allows(&attrs(ROBOT, &[], "get", "", "a", "nodes"))
                .is_none()
        );
        let why = p
            .allows(&attrs("bob", &["team"], "get", "", "a", "pods"))
            .unwrap();
        assert_eq!(
            why,
            "RBAC: allowed by RoleBinding \"a/viewers\" of ClusterRole \"view\" to Group \"team\""
        );
    }

    #[test]
    fn a_binding_to_a_missing_role_grants_nothing_and_deletes_take_effect() {
        let mut p = policy();
        let gone = json!({"metadata": {"name": "view"}});
        p.remove(Kind::ClusterRole, &gone);
        assert!(
            p.allows(&attrs("alice", &[], "list", "", "b", "pods"))
                .is_none()
        );
        p.upsert(
            Kind::ClusterRole,
            &json!({"metadata": {"name": "view"}, "rules": [rule(&["list"], &[""], &["pods"])]}),
        );
        assert!(
            p.allows(&attrs("alice", &[], "list", "", "b", "pods"))
                .is_some()
        );
        p.remove(
            Kind::ClusterRoleBinding,
            &json!({"metadata": {"name": "alice-views"}}),
        );
        assert!(
            p.allows(&attrs("alice", &[], "list", "", "b", "pods"))
                .is_none()
        );
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_a_trailing_star() {
        let r =
            Rule::from_json(&json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}));
        let get = |path: &str| Attributes {
            verb: "get".into(),
            path: path.into(),
            ..Attributes::default()
        };
        assert!(r.allows(&get("/healthz")));
        assert!(!r.allows(&get("/healthz/etcd")));
        assert!(r.allows(&get("/apis/apps")));
        assert!(!r.allows(&get("/apis")));
        let mut post = get("/healthz");
        post.verb = "post".into();
        assert!(!r.allows(&post));
        // A resource rule never grants a path.
        let res = Rule::from_json(&rule(&["*"], &["*"], &["*"]));
        assert!(!res.allows(&get("/healthz")));
    }

    #[test]
    fn escalation_is_whatever_the_owner_does_not_hold() {
        let owned: Vec<Rule> = [
            rule(&["get", "list"], &[""], &["pods", "configmaps"]),
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"]}),
            rule(&["get"], &[""], &["*/status"]),
        ]
        .iter()
        .map(Rule::from_json)
        .collect();
        let want = |v: Value| vec![Rule::from_json(&v)];
        assert!(uncovered(&owned, &want(rule(&["get"], &[""], &["pods"]))).is_empty());
        assert!(
            uncovered(
                &owned,
                &want(rule(&["list", "get"], &[""], &["pods", "configmaps"]))
            )
            .is_empty()
        );
        assert_eq!(
            uncovered(&owned, &want(rule(&["delete"], &[""], &["pods"]))).len(),
            1
        );
        // A wildcard is held only by a wildcard.
        assert_eq!(
            uncovered(&owned, &want(rule(&["*"], &[""], &["pods"]))).len(),
            1
        );
        assert_eq!(
            uncovered(&owned, &want(rule(&["get"], &["*"], &["pods"]))).len(),
            1
        );
        // Named secrets: s1 yes, every secret no.
        assert!(uncovered(&owned, &want(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["s1"]}))).is_empty());
        assert_eq!(
            uncovered(&owned, &want(rule(&["get"], &[""], &["secrets"]))).len(),
            1
        );
        assert!(uncovered(&owned, &want(rule(&["get"], &[""], &["pods/status"]))).is_empty());
        let admin = vec![Rule::from_json(&rule(&["*"], &["*"], &["*"]))];
        assert!(uncovered(&admin, &want(rule(&["*"], &["*"], &["*"]))).is_empty());
        assert_eq!(
            uncovered(
                &admin,
                &want(json!({"verbs": ["get"], "nonResourceURLs": ["/metrics"]}))
            )
            .len(),
            1,
            "resource rules do not grant paths"
        );
    }

    #[test]
    fn aggregation_collects_the_selected_roles_rules() {
        let all = vec![
            json!({"metadata": {"name": "agg"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "true"}}]}, "rules": [rule(&["stale"], &[""], &["old"])]}),
            json!({"metadata": {"name": "b", "labels": {"x": "true"}}, "rules": [rule(&["get"], &[""], &["pods"]), rule(&["list"], &[""], &["pods"])]}),
            json!({"metadata": {"name": "a", "labels": {"x": "true"}}, "rules": [rule(&["get"], &[""], &["pods"])]}),
            json!({"metadata": {"name": "c", "labels": {"x": "false"}}, "rules": [rule(&["*"], &["*"], &["*"])]}),
        ];
        let rules = aggregate(&all[0], &all).unwrap();
        assert_eq!(
            rules,
            vec![
                rule(&["get"], &[""], &["pods"]),
                rule(&["list"], &[""], &["pods"])
            ]
        );
        assert!(aggregate(&all[1], &all).is_none(), "not an aggregated role");
    }
}
