//! What the API server does by itself: bootstrap objects, namespace
//! deletion, store compaction, the Service allocation repair, and the
//! CustomResourceDefinitions' controller.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::api::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use crate::api::resources::{self, RESOURCES};

/// Namespaces every cluster has.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Create the system namespaces and the `kubernetes` Service, and repair
/// Service allocations. Failures are logged; the server still starts.
pub async fn bootstrap(registry: &Registry, port: u16, advertise: Option<std::net::IpAddr>) {
    let services = resources::find("", "v1", "services").expect("services registered");
    match registry
        .allocator()
        .repair(&Registry::prefix(services, None))
        .await
    {
        Ok((0, 0)) => {}
        Ok((released, reclaimed)) => tracing::info!(
            released,
            reclaimed,
            "repaired service IP and node port allocations"
        ),
        Err(e) => tracing::warn!(error = %e, "repair service allocations"),
    }
    let ns_rt = resources::find("", "v1", "namespaces").expect("namespaces registered");
    let opts = WriteOptions::default();
    for ns in SYSTEM_NAMESPACES {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match registry.create(ns_rt, None, obj, &opts).await {
            Ok(_) => tracing::info!(namespace = ns, "created"),
            Err(e) if e.code == 409 => {}
            Err(e) => tracing::warn!(namespace = ns, error = %e, "create system namespace"),
        }
    }
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "clusterIP": registry.allocator().first_ip().to_string(),
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
            "sessionAffinity": "None",
            "type": "ClusterIP",
        },
    });
    match registry.create(services, Some("default"), svc, &opts).await {
        Ok(_) => tracing::info!("created the kubernetes service"),
        Err(e) if e.code == 409 => {}
        Err(e) => tracing::warn!(error = %e, "create the kubernetes service"),
    }
    match advertise {
        Some(ip) => publish_endpoints(registry, ip, port).await,
        None => tracing::warn!(
            "no address to advertise (listening on loopback or on every address): \
             pods cannot reach the API through the kubernetes Service; listen on the \
             node's address or set the advertise address"
        ),
    }
}

/// The `kubernetes` Endpoints and EndpointSlice: this server's address, as
/// kube-apiserver's endpoint reconciler publishes it (written at every
/// start, so a new address replaces the old).
async fn publish_endpoints(registry: &Registry, ip: std::net::IpAddr, port: u16) {
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    let objects = [
        (
            resources::find("", "v1", "endpoints").expect("endpoints registered"),
            json!({
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": [{"addresses": [{"ip": ip.to_string()}],
                             "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
            }),
        ),
        (
            resources::find("discovery.k8s.io", "v1", "endpointslices")
                .expect("endpointslices registered"),
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": family,
                "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }),
        ),
    ];
    let opts = WriteOptions::default();
    for (rt, obj) in objects {
        let written = match registry
            .create(rt, Some("default"), obj.clone(), &opts)
            .await
        {
            Err(e) if e.code == 409 => {
                match registry.get(rt, Some("default"), "kubernetes").await {
                    Ok(cur) => {
                        let mut next = obj;
                        next["metadata"]["resourceVersion"] =
                            cur["metadata"]["resourceVersion"].clone();
                        registry
                            .update(rt, Some("default"), "kubernetes", next, None, &opts)
                            .await
                            .map(drop)
                    }
                    Err(e) => Err(e),
                }
            }
            other => other.map(drop),
        };
        match written {
            Ok(()) => {
                tracing::info!(kind = rt.kind, %ip, port, "published the kubernetes endpoints")
            }
            Err(e) => {
                tracing::warn!(kind = rt.kind, error = %e, "publish the kubernetes endpoints")
            }
        }
    }
}

/// Start the background loops; they stop when `stop` turns true.
pub fn spawn(
    registry: Arc<Registry>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = Vec::new();
    {
        let registry = registry.clone();
        let mut stop = stop.clone();
        out.push(tokio::spawn(async move {
            loop {
                if let Err(e) = finalize_namespaces(&registry).await {
                    tracing::warn!(error = %e, "namespace deletion");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
        }));
    }
    out.push(tokio::spawn(custom_resource_definitions(
        registry.clone(),
        stop.clone(),
    )));
    {
        let mut stop = stop;
        out.push(tokio::spawn(async move {
            // Compact to the revision seen one interval ago, as kube-apiserver does.
            let interval = Duration::from_secs(300);
            let mut previous = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => return,
                }
                let store = registry.store();
                if let Some(rev) = previous
                    && let Err(e) = store.compact(rev).await
                {
                    tracing::warn!(revision = rev, error = %e, "compact store");
                }
                previous = store.current_revision().await.ok();
            }
        }));
    }
    out
}

/// The CustomResourceDefinitions' controller
/// ([`Registry::reconcile_custom_resources`]): a pass at start, at every
/// change to a definition in the store (made through this server or
/// another one on the same store), every second while custom resources
/// of a deleting definition remain, and every 30 s regardless.
async fn custom_resource_definitions(
    registry: Arc<Registry>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use futures::StreamExt;
    let crds = resources::find(crate::api::crd::GROUP, "v1", "customresourcedefinitions")
        .expect("customresourcedefinitions registered");
    let prefix = Registry::prefix(crds, None);
    let mut events: Option<crate::store::WatchStream> = None;
    loop {
        if events.is_none() {
            let store = registry.store();
            events = match store.current_revision().await {
                Ok(rev) => store.watch(&prefix, rev).await.ok(),
                Err(_) => None,
            };
        }
        let pending = match registry.reconcile_custom_resources().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "custom resource definitions");
                true
            }
        };
        let wait = if pending || events.is_none() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(30)
        };
        let next = async {
            match events.as_mut() {
                Some(ev) => ev.next().await.map(|e| e.is_ok()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = next => {
                if ev != Some(true) {
                    // Ended or failed (compacted): watch again from now.
                    events = None;
                }
            }
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One pass of the namespace lifecycle: for each namespace being deleted,
/// delete its objects; once none remain, drop its finalizer and delete it.
pub async fn finalize_namespaces(registry: &Registry) -> Result<(), crate::api::errors::ApiError> {
    let ns_rt = resources::find("", "v1", "namespaces").expect("namespaces registered");
    let list = registry.list(ns_rt, None, &ListOptions::default()).await?;
    for ns in list["items"].as_array().into_iter().flatten() {
        if ns
            .pointer("/metadata/deletionTimestamp")
            .is_none_or(Value::is_null)
        {
            continue;
        }
        let name = ns
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut remaining = 0;
        let mut seen = Vec::new();
        let custom = registry.custom_types().snapshot();
        let types = RESOURCES.iter().chain(custom.iter().map(|c| c.rt));
        for rt in types.filter(|r| r.namespaced) {
            if seen.contains(&rt.storage) {
                continue;
            }
            seen.push(rt.storage);
            let objs = registry
                .list(rt, Some(&name), &ListOptions::default())
                .await?;
            for obj in objs["items"].as_array().into_iter().flatten() {
                remaining += 1;
                if obj
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|d| !d.is_null())
                {
                    continue;
                }
                let obj_name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match registry
                    .delete(rt, Some(&name), obj_name, &DeleteOptions::default())
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(namespace = %name, object = obj_name, error = %e, "delete namespace content")
                    }
                }
            }
        }
        if remaining > 0 {
            continue;
        }
        // Nothing left: remove the "kubernetes" finalizer; the registry
        // deletes the namespace once no finalizer remains.
        let mut updated = ns.clone();
        if let Some(fins) = updated
            .pointer_mut("/spec/finalizers")
            .and_then(Value::as_array_mut)
        {
            fins.retain(|f| f != "kubernetes");
        }
        match registry
            .update(
                ns_rt,
                None,
                &name,
                updated,
                Some("finalize"),
                &WriteOptions::default(),
            )
            .await
        {
            Ok(_) => tracing::info!(namespace = %name, "namespace deleted"),
            Err(e) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(namespace = %name, error = %e, "finalize namespace"),
        }
    }
    Ok(())
}
