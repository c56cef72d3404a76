//! The ServiceAccount controller: every namespace has a `default`
//! ServiceAccount, created when the namespace appears and recreated when it
//! is deleted, as upstream's serviceaccounts controller does. Namespaces
//! that are terminating are skipped (creating in them would fail anyway).
//!
//! [`plan`] is pure; namespaces come from a watch cache, and so do the
//! ServiceAccounts (a stale cache only costs a create answered with 409).

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, trigger_with};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, applier, reflector as reflect, watcher};

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

struct Ctx {
    client: kube::Client,
    accounts: Store<ServiceAccount>,
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let _ = ctx.accounts.wait_until_ready().await;
    let namespace = ns.metadata.name.clone().unwrap_or_default();
    let exists = |name: &str| {
        ctx.accounts
            .get(&ObjectRef::new(name).within(&namespace))
            .is_some()
    };
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
    Ok(Action::await_change())
}

fn error_policy(_ns: Arc<Namespace>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(error = %err, "service account sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

type Refs = Vec<ObjectRef<Namespace>>;

/// Run the controller until the task is aborted.
pub async fn run(ctx: Arc<super::Context>) {
    loop {
        run_once(ctx.client.clone()).await;
        tracing::warn!("service account controller stream ended; restarting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn run_once(client: kube::Client) {
    let (ns_store, ns_writer) = reflector::store::<Namespace>();
    let (sa_store, sa_writer) = reflector::store::<ServiceAccount>();
    let namespaces: BoxStream<'static, Result<Refs, watcher::Error>> = {
        let store = ns_store.clone();
        reflect(
            ns_writer,
            watcher(
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map_ok(move |ev| match ev {
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                vec![ObjectRef::from_obj(&n)]
            }
            watcher::Event::InitDone => store
                .state()
                .iter()
                .map(|n| ObjectRef::from_obj(n.as_ref()))
                .collect(),
            _ => Vec::new(),
        })
        .boxed()
    };
    let accounts: BoxStream<'static, Result<Refs, watcher::Error>> = {
        let store = ns_store.clone();
        reflect(
            sa_writer,
            watcher(
                Api::<ServiceAccount>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map_ok(move |ev| match ev {
            watcher::Event::Delete(sa)
                if DEFAULT_SERVICE_ACCOUNTS
                    .contains(&sa.metadata.name.as_deref().unwrap_or_default()) =>
            {
                sa.metadata
                    .namespace
                    .iter()
                    .map(|n| ObjectRef::new(n))
                    .collect()
            }
            // A relist may have missed deletions.
            watcher::Event::InitDone => store
                .state()
                .iter()
                .map(|n| ObjectRef::from_obj(n.as_ref()))
                .collect(),
            _ => Vec::new(),
        })
        .boxed()
    };
    let queue = trigger_with(stream::select_all([namespaces, accounts]), |refs: Refs| {
        refs
    });
    let ctx = Arc::new(Ctx {
        client,
        accounts: sa_store,
    });
    super::drive(
        applier(
            |ns, ctx| Box::pin(reconcile(ns, ctx)),
            error_policy,
            ctx,
            ns_store,
            queue,
            kube::runtime::Config::default(),
        ),
        "service account controller",
    )
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
