//! The audit log, as kube-apiserver's log backend writes it
//! (`--audit-log-path`, `--audit-policy-file`): one `audit.k8s.io/v1`
//! `Event` per request, a JSON line each, at the level the policy's first
//! matching rule gives (`None`, `Metadata`, `Request`, `RequestResponse`).
//! Long-running requests (watches, exec, proxies) are logged when their
//! response starts (`ResponseStarted`), others when it is complete
//! (`ResponseComplete`). Without a policy file every request is logged at
//! `Metadata`.
//!
//! Lines are written by one task; when the disk cannot keep up and 10,000
//! lines wait, further events are dropped and counted in the log
//! (`audit events dropped`), so the API never waits on the audit file.

use std::path::Path;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::authz::Decision;
use super::authz::attributes::Attributes;
use super::authz::rbac::strings;

/// How much of a request is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    fn parse(s: &str) -> Result<Level, String> {
        Ok(match s {
            "None" => Level::None,
            "Metadata" => Level::Metadata,
            "Request" => Level::Request,
            "RequestResponse" => Level::RequestResponse,
            other => return Err(format!("unknown audit level {other:?}")),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Level::None => "None",
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

#[derive(Clone, Debug, Default)]
struct GroupResources {
    group: String,
    resources: Vec<String>,
    resource_names: Vec<String>,
}

#[derive(Clone, Debug)]
struct Rule {
    level: Level,
    users: Vec<String>,
    user_groups: Vec<String>,
    verbs: Vec<String>,
    resources: Vec<GroupResources>,
    namespaces: Vec<String>,
    non_resource_urls: Vec<String>,
}

impl Rule {
    fn matches(&self, a: &Attributes) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        if !any(&self.users, &a.user) || !any(&self.verbs, &a.verb) {
            return false;
        }
        if !self.user_groups.is_empty() && !a.groups.iter().any(|g| self.user_groups.contains(g)) {
            return false;
        }
        if !a.resource_request {
            // A rule naming resources or namespaces is for resource requests.
            return self.resources.is_empty()
                && self.namespaces.is_empty()
                && (self.non_resource_urls.is_empty()
                    || self.non_resource_urls.iter().any(|u| {
                        *u == a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
                    }));
        }
        if !self.non_resource_urls.is_empty() {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&a.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = a.qualified_resource();
        self.resources.iter().any(|gr| {
            gr.group == a.api_group
                && (gr.resources.is_empty()
                    || gr.resources.iter().any(|r| {
                        *r == combined
                            || *r == "*"
                            || r.strip_prefix("*/").is_some_and(|s| s == a.subresource)
                            || r.strip_suffix("/*").is_some_and(|p| p == a.resource)
                    }))
                && (gr.resource_names.is_empty() || gr.resource_names.contains(&a.name))
        })
    }
}

/// An audit policy (`audit.k8s.io/v1` `Policy`).
#[derive(Clone, Debug)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Default for Policy {
    /// Everything at `Metadata`.
    fn default() -> Self {
        Policy {
            rules: vec![Rule {
                level: Level::Metadata,
                users: vec![],
                user_groups: vec![],
                verbs: vec![],
                resources: vec![],
                namespaces: vec![],
                non_resource_urls: vec![],
            }],
        }
    }
}

impl Policy {
    /// Parse a policy file (YAML or JSON).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let v: Value = serde_saphyr::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
        if v["kind"] != "Policy" {
            return Err(format!("kind must be Policy, not {}", v["kind"]));
        }
        let mut rules = Vec::new();
        for (i, r) in v["rules"].as_array().into_iter().flatten().enumerate() {
            let level = Level::parse(r["level"].as_str().unwrap_or_default())
                .map_err(|e| format!("rules[{i}].level: {e}"))?;
            let resources = r["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| GroupResources {
                    group: g["group"].as_str().unwrap_or_default().to_string(),
                    resources: strings(&g["resources"]),
                    resource_names: strings(&g["resourceNames"]),
                })
                .collect();
            rules.push(Rule {
                level,
                users: strings(&r["users"]),
                user_groups: strings(&r["userGroups"]),
                verbs: strings(&r["verbs"]),
                resources,
                namespaces: strings(&r["namespaces"]),
                non_resource_urls: strings(&r["nonResourceURLs"]),
            });
        }
        // Only ResponseStarted/ResponseComplete are written, so
        // `omitStages` has nothing to take away.
        Ok(Policy { rules })
    }

    /// The level of a request: its first matching rule's, else None.
    pub fn level(&self, a: &Attributes) -> Level {
        self.rules
            .iter()
            .find(|r| r.matches(a))
            .map_or(Level::None, |r| r.level)
    }
}

/// The log writer.
pub struct Auditor {
    policy: Policy,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    dropped: std::sync::atomic::AtomicU64,
}

/// One request, as the audit event describes it.
pub struct Record<'a> {
    pub attrs: &'a Attributes,
    /// The authenticated user when the request impersonated `attrs`'s.
    pub impersonator: Option<&'a super::auth::UserInfo>,
    pub uid: &'a str,
    pub uri: &'a str,
    pub source: Option<std::net::IpAddr>,
    pub user_agent: &'a str,
    pub decision: &'a Decision,
    pub received: chrono::DateTime<chrono::Utc>,
    pub code: u16,
    pub long_running: bool,
    pub request: Option<&'a Value>,
    pub response: Option<&'a [u8]>,
}

impl Auditor {
    /// Open (append to) the log file and start its writer.
    pub async fn open(path: &Path, policy: Policy) -> std::io::Result<Auditor> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(10_000);
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut batch = line;
                while let Ok(more) = rx.try_recv() {
                    batch.extend_from_slice(&more);
                }
                if let Err(e) = file.write_all(&batch).await {
                    tracing::error!(error = %e, "write the audit log");
                }
            }
            let _ = file.flush().await;
        });
        Ok(Auditor {
            policy,
            tx,
            dropped: Default::default(),
        })
    }

    pub fn level(&self, a: &Attributes) -> Level {
        self.policy.level(a)
    }

    /// Write the event of a request logged at `level`.
    pub fn record(&self, level: Level, r: &Record<'_>) {
        if level == Level::None {
            return;
        }
        let a = r.attrs;
        let now = chrono::Utc::now();
        let ts = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        let mut e = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level.name(),
            "auditID": r.uid,
            "stage": if r.long_running { "ResponseStarted" } else { "ResponseComplete" },
            "requestURI": r.uri,
            "verb": a.verb,
            "user": {"username": a.user, "groups": a.groups},
            "sourceIPs": r.source.map(|ip| vec![ip.to_string()]).unwrap_or_default(),
            "userAgent": r.user_agent,
            "responseStatus": {"metadata": {}, "code": r.code},
            "requestReceivedTimestamp": ts(r.received),
            "stageTimestamp": ts(now),
        });
        if let Some(real) = r.impersonator {
            e["impersonatedUser"] = e["user"].take();
            e["user"] = json!({"username": real.name, "groups": real.groups});
        }
        if a.resource_request {
            let mut o = json!({"resource": a.resource});
            for (k, v) in [
                ("namespace", &a.namespace),
                ("name", &a.name),
                ("apiGroup", &a.api_group),
                ("subresource", &a.subresource),
            ] {
                if !v.is_empty() {
                    o[k] = json!(v);
                }
            }
            e["objectRef"] = o;
        }
        let (decision, reason) = match r.decision {
            Decision::Allow(why) => ("allow", why.as_str()),
            Decision::Deny(why) => ("forbid", why.as_str()),
            Decision::NoOpinion => ("forbid", ""),
        };
        e["annotations"] = json!({
            "authorization.k8s.io/decision": decision,
            "authorization.k8s.io/reason": reason,
        });
        let as_json = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
        if level >= Level::Request
            && let Some(v) = r.request
        {
            e["requestObject"] = v.clone();
        }
        if level >= Level::RequestResponse
            && let Some(v) = r.response.and_then(as_json)
        {
            e["responseObject"] = v;
        }
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        if self.tx.try_send(line).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "audit events dropped: the log cannot keep up");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An authenticated user's request for `resource` (`res/sub`) named `name`.
    fn attrs(
        user: &str,
        verb: &str,
        group: &str,
        ns: &str,
        resource: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            name: name.into(),
            ..crate::server::authz::rbac::tests::attrs(
                user,
                &["system:authenticated"],
                verb,
                group,
                ns,
                resource,
            )
        }
    }

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  nonResourceURLs: ["/healthz*", "/version"]
- level: None
  users: ["system:kube-proxy"]
  verbs: ["watch"]
- level: Metadata
  resources: [{group: "", resources: ["secrets", "*/status"]}]
- level: RequestResponse
  resources: [{group: "", resources: ["configmaps"]}]
  namespaces: ["audited"]
- level: Request
  resources: [{group: "apps"}]
- level: Metadata
"#;

    #[test]
    fn the_first_matching_rule_decides() {
        let p = Policy::parse(POLICY).unwrap();
        let path = |p: &str| Attributes {
            verb: "get".into(),
            path: p.into(),
            ..Attributes::default()
        };
        assert_eq!(p.level(&path("/healthz")), Level::None);
        assert_eq!(p.level(&path("/healthz/etcd")), Level::None);
        assert_eq!(p.level(&path("/metrics")), Level::Metadata);
        assert_eq!(
            p.level(&attrs("system:kube-proxy", "watch", "", "", "services", "")),
            Level::None
        );
        assert_eq!(
            p.level(&attrs("system:kube-proxy", "list", "", "", "services", "")),
            Level::Metadata
        );
        assert_eq!(
            p.level(&attrs("u", "get", "", "a", "secrets", "s")),
            Level::Metadata
        );
        assert_eq!(
            p.level(&attrs(
                "u",
                "update",
                "",
                "audited",
                "configmaps/status",
                "c"
            )),
            Level::Metadata
        );
        assert_eq!(
            p.level(&attrs("u", "create", "", "audited", "configmaps", "")),
            Level::RequestResponse
        );
        assert_eq!(
            p.level(&attrs("u", "create", "", "other", "configmaps", "")),
            Level::Metadata
        );
        assert_eq!(
            p.level(&attrs("u", "patch", "apps", "a", "deployments/scale", "d")),
            Level::Request
        );
        let none = Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules: []\n").unwrap();
        assert_eq!(
            none.level(&path("/metrics")),
            Level::None,
            "no rule, no event"
        );
        assert!(Policy::parse("kind: Policy\nrules: [{level: Loud}]").is_err());
        assert!(Policy::parse("kind: ConfigMap").is_err());
        assert_eq!(Policy::default().level(&path("/api")), Level::Metadata);
    }
}
