//! Authorization of node API requests, as the kubelet's webhook mode: the
//! client certificate's user and groups, and what the request does (a verb
//! from the method, `nodes/<subresource>` from the path, the node's name),
//! go to the API server as a SubjectAccessReview. Answers are cached: 5
//! minutes when allowed, 30 seconds when not (the kubelet's defaults).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

pub use keelson_host::serve::cert_subject as user_of;

/// The kubelet's request attributes: (verb, subresource of `nodes`).
pub fn attributes(method: &str, path: &str) -> (&'static str, &'static str) {
    let verb = match method {
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "get",
    };
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    let sub = match first {
        "stats" => "stats",
        "metrics" => "metrics",
        "logs" => "log",
        "spec" => "spec",
        "checkpoint" => "checkpoint",
        "configz" => "configz",
        _ => "proxy",
    };
    (verb, sub)
}

type Key = (String, Vec<String>, &'static str, &'static str);

/// SubjectAccessReviews through the agent's API client, cached.
pub struct Authorizer {
    client: kube::Client,
    node: String,
    cache: Mutex<HashMap<Key, (bool, Instant)>>,
}

/// The answer to one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Allowed,
    Denied,
    /// The API server could not be asked.
    Error(String),
}

impl Authorizer {
    pub fn new(client: kube::Client, node: String) -> Authorizer {
        Authorizer {
            client,
            node,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn check(
        &self,
        user: &str,
        groups: &[String],
        verb: &'static str,
        sub: &'static str,
    ) -> Answer {
        let key: Key = (user.to_string(), groups.to_vec(), verb, sub);
        if let Some((allowed, until)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && Instant::now() < *until
        {
            return if *allowed {
                Answer::Allowed
            } else {
                Answer::Denied
            };
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.to_string()),
                groups: Some(groups.to_vec()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    resource: Some("nodes".into()),
                    subresource: Some(sub.into()),
                    name: Some(self.node.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &review).await {
            Ok(r) => {
                let allowed = r.status.is_some_and(|s| s.allowed);
                let ttl = if allowed { 300 } else { 30 };
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() > 10_000 {
                    cache.clear();
                }
                cache.insert(key, (allowed, Instant::now() + Duration::from_secs(ttl)));
                if allowed {
                    Answer::Allowed
                } else {
                    Answer::Denied
                }
            }
            Err(e) => Answer::Error(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_the_kubelets_subresources() {
        assert_eq!(attributes("GET", "/pods"), ("get", "proxy"));
        assert_eq!(attributes("POST", "/exec/ns/p/c"), ("create", "proxy"));
        assert_eq!(attributes("GET", "/containerLogs/ns/p/c"), ("get", "proxy"));
        assert_eq!(attributes("GET", "/stats/summary"), ("get", "stats"));
        assert_eq!(attributes("GET", "/metrics/cadvisor"), ("get", "metrics"));
        assert_eq!(attributes("GET", "/logs/syslog"), ("get", "log"));
    }
}
