//! Authorization, as kube-apiserver's `--authorization-mode=Node,RBAC` with
//! its privileged group: system:masters may do anything; a node's requests
//! go to the node authorizer ([`node`]); then RBAC ([`rbac`]) over the
//! roles and bindings in the store, kept in memory by watching them
//! ([`Authorizer::run`]). What nothing allows is denied.
//!
//! The same decision answers `SubjectAccessReview`,
//! `SelfSubjectAccessReview`, `LocalSubjectAccessReview` and
//! `SelfSubjectRulesReview`, and guards role and binding writes against
//! escalation.

pub mod attributes;
pub mod impersonation;
pub mod node;
pub mod policy;
pub mod rbac;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use self::attributes::Attributes;
use self::rbac::{Kind, Policy, Rule};
use super::auth::UserInfo;
use crate::api::errors::ApiError;
use crate::api::registry::{ListOptions, Registry, WatchEvent, WatchOptions, WriteCheck};
use crate::api::resources::{self, ResourceType};

/// The group whose members may do anything.
pub const MASTERS: &str = "system:masters";

/// An authorizer's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    Deny(String),
    NoOpinion,
}

#[derive(Default)]
struct State {
    policy: Policy,
    graph: node::Graph,
    /// Kinds (and pods) listed at least once.
    synced: usize,
}

/// The server's authorizer.
pub struct Authorizer {
    state: RwLock<State>,
    node_rules: Vec<Rule>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl Default for Authorizer {
    fn default() -> Self {
        Authorizer {
            state: RwLock::new(State::default()),
            node_rules: policy::node_rules().iter().map(Rule::from_json).collect(),
            synced: tokio::sync::watch::channel(false).0,
        }
    }
}

/// What one watch keeps current.
#[derive(Clone, Copy)]
enum Watched {
    Rbac(Kind),
    Pods,
}

impl Authorizer {
    pub fn new() -> Arc<Authorizer> {
        Arc::new(Authorizer::default())
    }

    /// Decide a request.
    pub fn authorize(&self, a: &Attributes) -> Decision {
        if a.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow(format!("{MASTERS} may do anything"));
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = node::node_name(&a.user, &a.groups) {
            match node::authorize(&n, a, &state.graph, &self.node_rules) {
                Decision::NoOpinion => {}
                d => return d,
            }
        }
        match state.policy.allows(a) {
            Some(why) => Decision::Allow(why),
            None => Decision::NoOpinion,
        }
    }

    /// Whether the request is allowed.
    pub fn allows(&self, a: &Attributes) -> bool {
        matches!(self.authorize(a), Decision::Allow(_))
    }

    /// The 403 for a request nothing allows (None when allowed).
    pub fn check(&self, a: &Attributes) -> Option<ApiError> {
        self.forbidden(a, &self.authorize(a))
    }

    /// The 403 for a decision that is not an allow (None when it is).
    pub fn forbidden(&self, a: &Attributes, decision: &Decision) -> Option<ApiError> {
        let reason = match decision {
            Decision::Allow(_) => return None,
            Decision::Deny(r) => r.clone(),
            Decision::NoOpinion => String::new(),
        };
        let mut msg = a.forbidden_message();
        if !reason.is_empty() {
            msg = format!("{msg}: {reason}");
        }
        let message = if !a.resource_request {
            format!("forbidden: {msg}")
        } else {
            let group_resource = if a.api_group.is_empty() {
                a.resource.clone()
            } else {
                format!("{}.{}", a.resource, a.api_group)
            };
            if a.name.is_empty() {
                format!("{group_resource} is forbidden: {msg}")
            } else {
                format!("{group_resource} {:?} is forbidden: {msg}", a.name)
            }
        };
        Some(ApiError::forbidden(message).with_object(&a.api_group, &a.resource, &a.name))
    }

    /// The rules a user has in a namespace ("" for cluster scope), as
    /// `SelfSubjectRulesReview` reports them.
    pub fn rules_for(&self, user: &str, groups: &[String], namespace: &str) -> Vec<Rule> {
        if groups.iter().any(|g| g == MASTERS) {
            return vec![
                Rule {
                    verbs: vec!["*".into()],
                    api_groups: vec!["*".into()],
                    resources: vec!["*".into()],
                    ..Rule::default()
                },
                Rule {
                    verbs: vec!["*".into()],
                    non_resource_urls: vec!["*".into()],
                    ..Rule::default()
                },
            ];
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut rules = state.policy.rules_for(user, groups, namespace);
        if node::node_name(user, groups).is_some() {
            rules.extend(self.node_rules.iter().cloned());
        }
        rules
    }

    /// The write check for a user: RBAC escalation prevention on roles
    /// and bindings, and node restriction on a node's writes of Nodes.
    pub fn write_check(self: &Arc<Self>, user: &UserInfo) -> WriteCheck {
        let me = self.clone();
        let user = user.clone();
        WriteCheck(Arc::new(move |rt: &ResourceType, old, new| {
            me.admit(&user, rt, old, new)
        }))
    }

    fn admit(
        &self,
        user: &UserInfo,
        rt: &ResourceType,
        old: Option<&Value>,
        new: &Value,
    ) -> Result<(), ApiError> {
        if rt.group.is_empty()
            && rt.plural == "nodes"
            && let Some(n) = node::node_name(&user.name, &user.groups)
        {
            return node::admit_node_write(&n, old, new);
        }
        if rt.group != "rbac.authorization.k8s.io" || user.groups.iter().any(|g| g == MASTERS) {
            return Ok(());
        }
        let md = &new["metadata"];
        let ns = md["namespace"].as_str().unwrap_or_default();
        let name = md["name"].as_str().unwrap_or_default();
        let may = |verb: &str, resource: &str, target: &str| {
            self.allows(&Attributes::resource(
                user,
                verb,
                "rbac.authorization.k8s.io",
                ns,
                resource,
                "",
                target,
            ))
        };
        let owned = self.rules_for(&user.name, &user.groups, ns);
        let (wanted, what) = match rt.plural {
            "roles" | "clusterroles" => {
                if may("escalate", rt.plural, name) {
                    return Ok(());
                }
                // An aggregated ClusterRole's rules are the controller's.
                if rt.plural == "clusterroles" && new["aggregationRule"].is_object() {
                    return Ok(());
                }
                (Rule::all_of(new), format!("{} {name:?}", rt.kind))
            }
            "rolebindings" | "clusterrolebindings" => {
                let kind = new["roleRef"]["kind"].as_str().unwrap_or_default();
                let role = new["roleRef"]["name"].as_str().unwrap_or_default();
                let plural = if kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if may("bind", plural, role) {
                    return Ok(());
                }
                let state = self.state.read().unwrap_or_else(|e| e.into_inner());
                let rules = state
                    .policy
                    .role_rules(kind, ns, role)
                    .map(<[Rule]>::to_vec)
                    .unwrap_or_default();
                (rules, format!("{kind} {role:?}"))
            }
            _ => return Ok(()),
        };
        let missing = rbac::uncovered(&owned, &wanted);
        if missing.is_empty() {
            return Ok(());
        }
        let missing: Vec<String> = missing.iter().map(describe_rule).collect();
        Err(ApiError::forbidden(format!(
            "{} {name:?} is forbidden: user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held (through {what}):\n{}",
            if rt.group.is_empty() { rt.plural.to_string() } else { format!("{}.{}", rt.plural, rt.group) },
            user.name,
            user.groups,
            missing.join("\n")
        ))
        .with_object(rt.group, rt.plural, name))
    }

    /// Resolves once every watched kind has been listed.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Keep the policy and the pod graph current from the store, and the
    /// aggregated ClusterRoles' rules current, until `stop`.
    pub fn run(
        self: &Arc<Self>,
        registry: Arc<Registry>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let watched = Kind::ALL
            .iter()
            .map(|k| Watched::Rbac(*k))
            .chain([Watched::Pods]);
        watched
            .map(|w| {
                let me = self.clone();
                let registry = registry.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = me.keep_current(&registry, w) => {}
                        _ = stop.changed() => {}
                    }
                })
            })
            .collect()
    }

    fn apply(&self, w: Watched, ev: &WatchEvent) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        match (w, ev) {
            (Watched::Rbac(k), WatchEvent::Added(v) | WatchEvent::Modified(v)) => {
                s.policy.upsert(k, v)
            }
            (Watched::Rbac(k), WatchEvent::Deleted(v)) => s.policy.remove(k, v),
            (Watched::Pods, WatchEvent::Added(v) | WatchEvent::Modified(v)) => s.graph.upsert(v),
            (Watched::Pods, WatchEvent::Deleted(v)) => s.graph.remove(v),
            _ => {}
        }
    }

    async fn keep_current(&self, registry: &Registry, w: Watched) {
        let rt = match w {
            Watched::Rbac(k) => resources::find("rbac.authorization.k8s.io", "v1", k.plural()),
            Watched::Pods => resources::find("", "v1", "pods"),
        }
        .expect("registered type");
        let mut first = true;
        loop {
            if let Err(e) = self.list_and_watch(registry, rt, w, &mut first).await {
                tracing::warn!(resource = rt.plural, error = %e, "authorizer watch; relisting");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn list_and_watch(
        &self,
        registry: &Registry,
        rt: &'static ResourceType,
        w: Watched,
        first: &mut bool,
    ) -> Result<(), ApiError> {
        let list = registry.list(rt, None, &ListOptions::default()).await?;
        let rv: i64 = list["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            match w {
                Watched::Rbac(k) => s.policy.clear(k),
                Watched::Pods => s.graph.clear(),
            }
            for item in list["items"].as_array().into_iter().flatten() {
                match w {
                    Watched::Rbac(k) => s.policy.upsert(k, item),
                    Watched::Pods => s.graph.upsert(item),
                }
            }
            if *first {
                *first = false;
                s.synced += 1;
                if s.synced == Kind::ALL.len() + 1 {
                    self.synced.send_replace(true);
                }
            }
        }
        if matches!(w, Watched::Rbac(Kind::ClusterRole)) {
            aggregate_cluster_roles(registry, &list).await;
        }
        let opts = WatchOptions {
            resource_version: Some(rv),
            ..WatchOptions::default()
        };
        let mut events = registry.watch(rt, None, opts).await?;
        while let Some(ev) = events.next().await {
            if let WatchEvent::Error(status) = &ev {
                return Err(ApiError::internal(format!("watch: {status}")));
            }
            self.apply(w, &ev);
            if matches!(w, Watched::Rbac(Kind::ClusterRole))
                && matches!(
                    ev,
                    WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_)
                )
            {
                let all = registry.list(rt, None, &ListOptions::default()).await?;
                aggregate_cluster_roles(registry, &all).await;
            }
        }
        Err(ApiError::internal("watch ended"))
    }
}

/// The clusterrole-aggregation controller: an aggregated ClusterRole's
/// rules are those of the ClusterRoles its selectors pick.
async fn aggregate_cluster_roles(registry: &Registry, list: &Value) {
    let Some(rt) = resources::find("rbac.authorization.k8s.io", "v1", "clusterroles") else {
        return;
    };
    let all: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
    for (before, after) in all.iter().zip(rbac::aggregate_all(&all)) {
        if before["rules"] == after["rules"] {
            continue;
        }
        let name = after["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Err(e) = registry
            .update(rt, None, &name, after, None, &Default::default())
            .await
            && e.code != 409
        {
            tracing::warn!(%name, error = %e, "aggregate ClusterRole rules");
        }
    }
}

/// A rule as kube-apiserver prints it in an escalation error.
fn describe_rule(r: &Rule) -> String {
    if !r.non_resource_urls.is_empty() {
        return format!(
            "{{NonResourceURLs:{:?}, Verbs:{:?}}}",
            r.non_resource_urls, r.verbs
        );
    }
    let mut s = format!(
        "{{APIGroups:{:?}, Resources:{:?}",
        r.api_groups, r.resources
    );
    if !r.resource_names.is_empty() {
        s.push_str(&format!(", ResourceNames:{:?}", r.resource_names));
    }
    s.push_str(&format!(", Verbs:{:?}}}", r.verbs));
    s
}

/// The status of an access review: (allowed, denied, reason).
pub fn review_status(d: &Decision) -> Value {
    match d {
        Decision::Allow(r) => json!({"allowed": true, "reason": r}),
        Decision::Deny(r) => json!({"allowed": false, "denied": true, "reason": r}),
        Decision::NoOpinion => json!({"allowed": false}),
    }
}

/// `SelfSubjectRulesReview` status for a user's rules.
pub fn rules_review_status(rules: &[Rule]) -> Value {
    let mut resource = Vec::new();
    let mut non_resource = Vec::new();
    for r in rules {
        if !r.non_resource_urls.is_empty() {
            non_resource.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
        if !r.resources.is_empty() {
            let mut v =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            resource.push(v);
        }
    }
    json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false})
}
