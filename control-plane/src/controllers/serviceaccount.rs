//! The ServiceAccount controller: every namespace has a `default`
//! ServiceAccount, created when the namespace appears and recreated when it
//! is deleted, as upstream's serviceaccounts controller does. Namespaces
//! that are terminating are skipped (creating in them would fail anyway).
//!
//! [`plan`] is pure; namespaces come from the shared informers, and so do
//! the ServiceAccounts (a stale cache only costs a create answered with
//! 409). The work queue is keyed by namespace.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use super::runtime::{Controller, Key, SyncError};
use crate::informers::{Cache, Event, Informers};

/// The ServiceAccounts every namespace gets.
pub const DEFAULT_SERVICE_ACCOUNTS: &[&str] = &["default"];

/// Whether a namespace is being deleted.
pub fn terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// The ServiceAccounts to create in `ns`, given which names exist there.
pub fn plan(ns: &Namespace, exists: impl Fn(&str) -> bool) -> Vec<ServiceAccount> {
    if terminating(ns) {
        return Vec::new();
    }
    DEFAULT_SERVICE_ACCOUNTS
        .iter()
        .filter(|name| !exists(name))
        .map(|name| ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: ns.metadata.name.clone(),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error("create service account {namespace}/{name}: {err}")]
pub struct Error {
    namespace: String,
    name: String,
    err: kube::Error,
}

impl SyncError for Error {}

struct Ctx {
    client: kube::Client,
    namespaces: Cache<Namespace>,
    accounts: Cache<ServiceAccount>,
}

async fn reconcile(key: &Key, ctx: &Ctx) -> Result<Option<Duration>, Error> {
    let Some(ns) = ctx.namespaces.get(key) else {
        return Ok(None);
    };
    let namespace = key.name.clone();
    let exists = |name: &str| ctx.accounts.get(&Key::new(&namespace, name)).is_some();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
    for sa in plan(&ns, exists) {
        let name = sa.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => {
                tracing::debug!(namespace = %namespace, name = %name, "created service account")
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            // The namespace went away or started terminating meanwhile.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {}
            Err(err) => {
                return Err(Error {
                    namespace,
                    name,
                    err,
                });
            }
        }
    }
    Ok(None)
}

/// Run the controller until the task is aborted.
pub async fn run(ctx: Arc<super::Context>, informers: Arc<Informers>) {
    let mut c: Controller<Key> = Controller::new("serviceaccount");
    let namespaces = c.watch(&informers.get::<Namespace>(), |ev, q| {
        if let Some(n) = ev.object() {
            q.add(Key::of(n.as_ref()));
        }
    });
    let accounts = c.watch(&informers.get::<ServiceAccount>(), |ev, q| {
        if let Event::Deleted(sa) = ev
            && DEFAULT_SERVICE_ACCOUNTS.contains(&sa.metadata.name.as_deref().unwrap_or_default())
            && let Some(ns) = sa.metadata.namespace.as_deref()
        {
            q.add(Key::cluster(ns));
        }
    });
    let ctx = Arc::new(Ctx {
        client: ctx.client_as(super::identity::SERVICE_ACCOUNT),
        namespaces,
        accounts,
    });
    c.run(2, move |key: Key| {
        let ctx = ctx.clone();
        async move { reconcile(&key, &ctx).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(v: serde_json::Value) -> Namespace {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn plan_table() {
        let active = ns(json!({"metadata": {"name": "a"}, "status": {"phase": "Active"}}));
        let fresh = ns(json!({"metadata": {"name": "b"}}));
        let phase_terminating =
            ns(json!({"metadata": {"name": "c"}, "status": {"phase": "Terminating"}}));
        let deleting =
            ns(json!({"metadata": {"name": "d", "deletionTimestamp": "2024-01-01T00:00:00Z"}}));
        let cases: Vec<(&str, &Namespace, bool, Vec<&str>)> = vec![
            (
                "active namespace without default",
                &active,
                false,
                vec!["default"],
            ),
            ("active namespace with default", &active, true, vec![]),
            (
                "namespace without status yet",
                &fresh,
                false,
                vec!["default"],
            ),
            ("terminating phase", &phase_terminating, false, vec![]),
            ("deletion timestamp", &deleting, false, vec![]),
        ];
        for (name, n, has, want) in cases {
            let got = plan(n, |_| has);
            let got: Vec<(&str, &str)> = got
                .iter()
                .map(|s| {
                    (
                        s.metadata.name.as_deref().unwrap(),
                        s.metadata.namespace.as_deref().unwrap(),
                    )
                })
                .collect();
            let want: Vec<(&str, &str)> = want
                .iter()
                .map(|w| (*w, n.metadata.name.as_deref().unwrap()))
                .collect();
            assert_eq!(got, want, "case: {name}");
        }
    }
}
