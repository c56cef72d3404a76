//! The root CA publisher: every namespace has the `kube-root-ca.crt`
//! ConfigMap with the cluster CA (`ca.crt`), recreated when deleted and put
//! back when edited, as upstream's root-ca-cert-publisher does. Pods read it
//! through their service account volume to trust the API server.
//!
//! [`desired`] and [`plan`] are pure; namespaces and ConfigMaps come from
//! the shared informers. The work queue is keyed by namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use super::runtime::{Controller, Key, SyncError};
use super::serviceaccount::terminating;
use crate::api::serviceaccount::ROOT_CA_CONFIG_MAP;
use crate::informers::{Cache, Event, Informers};

/// The ConfigMap's description annotation (upstream's words).
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// The ConfigMap `namespace` should have.
pub fn desired(namespace: &str, ca_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CA_CONFIG_MAP.into()),
            namespace: Some(namespace.into()),
            annotations: Some(BTreeMap::from([(
                "kubernetes.io/description".to_string(),
                DESCRIPTION.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("ca.crt".to_string(), ca_pem.to_string())])),
        ..Default::default()
    }
}

/// What to do in one namespace.
#[derive(Debug, PartialEq)]
pub enum Plan {
    Nothing,
    Create(ConfigMap),
    /// Replace data and the annotation, keeping the rest of the object.
    Update(ConfigMap),
}

/// The change that makes `current` (None: absent) the published CA.
pub fn plan(ns: &Namespace, current: Option<&ConfigMap>, ca_pem: &str) -> Plan {
    if terminating(ns) {
        return Plan::Nothing;
    }
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    let want = desired(name, ca_pem);
    let Some(cur) = current else {
        return Plan::Create(want);
    };
    let annotated = cur
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/description"))
        == Some(&DESCRIPTION.to_string());
    if cur.data == want.data && cur.binary_data.is_none() && annotated {
        return Plan::Nothing;
    }
    let mut next = cur.clone();
    next.data = want.data;
    next.binary_data = None;
    next.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("kubernetes.io/description".into(), DESCRIPTION.into());
    Plan::Update(next)
}

#[derive(Debug, thiserror::Error)]
#[error("publish {ROOT_CA_CONFIG_MAP} in {namespace}: {err}")]
pub struct Error {
    namespace: String,
    err: kube::Error,
}

impl SyncError for Error {}

struct Ctx {
    client: kube::Client,
    ca_pem: String,
    namespaces: Cache<Namespace>,
    config_maps: Cache<ConfigMap>,
}

async fn reconcile(key: &Key, ctx: &Ctx) -> Result<Option<Duration>, Error> {
    let Some(ns) = ctx.namespaces.get(key) else {
        return Ok(None);
    };
    let namespace = key.name.clone();
    let current = ctx
        .config_maps
        .get(&Key::new(&namespace, ROOT_CA_CONFIG_MAP));
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = match plan(&ns, current.as_deref(), &ctx.ca_pem) {
        Plan::Nothing => return Ok(None),
        Plan::Create(cm) => api.create(&PostParams::default(), &cm).await.map(drop),
        Plan::Update(cm) => api
            .replace(ROOT_CA_CONFIG_MAP, &PostParams::default(), &cm)
            .await
            .map(drop),
    };
    match result {
        Ok(()) => Ok(None),
        // A stale cache (409) or a namespace going away (404, 403): the
        // informers bring the next event.
        Err(kube::Error::Api(s)) if matches!(s.code, 409 | 404 | 403) => Ok(None),
        Err(err) => Err(Error { namespace, err }),
    }
}

/// Run the controller until the task is aborted.
pub async fn run(ctx: Arc<super::Context>, informers: Arc<Informers>) {
    let mut c: Controller<Key> = Controller::new("root-ca-cert-publisher");
    let namespaces = c.watch(&informers.get::<Namespace>(), |ev, q| {
        if let Some(n) = ev.object() {
            q.add(Key::of(n.as_ref()));
        }
    });
    let config_maps = c.watch(&informers.get::<ConfigMap>(), |ev, q| {
        let cm = match ev {
            Event::Updated { new, .. } => new,
            Event::Deleted(cm) => cm,
            _ => return,
        };
        if cm.metadata.name.as_deref() == Some(ROOT_CA_CONFIG_MAP)
            && let Some(ns) = cm.metadata.namespace.as_deref()
        {
            q.add(Key::cluster(ns));
        }
    });
    let ctx = Arc::new(Ctx {
        client: ctx.client_as(super::identity::ROOT_CA),
        ca_pem: ctx.root_ca_pem.clone(),
        namespaces,
        config_maps,
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
    fn created_kept_and_put_back() {
        let a = ns(json!({"metadata": {"name": "a"}}));
        let Plan::Create(cm) = plan(&a, None, "PEM") else {
            panic!("absent: create")
        };
        assert_eq!(cm.data.as_ref().unwrap()["ca.crt"], "PEM");
        assert_eq!(cm.metadata.namespace.as_deref(), Some("a"));
        assert_eq!(plan(&a, Some(&cm), "PEM"), Plan::Nothing);
        // Edited data, or an extra label kept while data is put back.
        let mut edited = cm.clone();
        edited.data = Some(BTreeMap::from([("ca.crt".into(), "evil".into())]));
        edited.metadata.labels = Some(BTreeMap::from([("x".into(), "y".into())]));
        let Plan::Update(fixed) = plan(&a, Some(&edited), "PEM") else {
            panic!("edited: update")
        };
        assert_eq!(fixed.data, cm.data);
        assert_eq!(fixed.metadata.labels, edited.metadata.labels);
        // A new CA replaces the old.
        assert!(matches!(plan(&a, Some(&cm), "NEW"), Plan::Update(_)));
        let gone =
            ns(json!({"metadata": {"name": "a", "deletionTimestamp": "2024-01-01T00:00:00Z"}}));
        assert_eq!(plan(&gone, None, "PEM"), Plan::Nothing);
    }
}
