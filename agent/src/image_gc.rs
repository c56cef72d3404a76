//! Image garbage collection by disk usage, as the kubelet's image GC
//! manager does it: every period, the image filesystem's usage (statvfs of
//! the store's root) is compared with the high threshold; above it, unused
//! images go, least recently used first, until the low threshold
//! ([`keelson_images::gc::plan`] decides, purely; this carries it out).
//!
//! In use, never removed: an image a pod on this node names (any container,
//! init or ephemeral, whatever the pod's phase), and one a container's root
//! filesystem is made of. "Last used" is the last pass that saw it in use
//! (kept in memory, as the kubelet does; after a restart an image counts as
//! last used when it was indexed). "First seen" is when it was indexed.
//!
//! Each collection that removes something is a Node Event
//! (`ImageGarbageCollected`); one that cannot free enough is
//! `FreeDiskSpaceFailed`, and one that fails `ImageGCFailed` (the kubelet's
//! reasons and messages).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use keelson_images::ImageStore;
use keelson_images::gc::{Candidate, GcPlan, GcPolicy};
use kube::runtime::reflector::Store;

use crate::events::{EventType, Recorder};

/// The canonical references of the images `pods` name (pure). References
/// that do not parse name no image in the store and are left out.
pub fn pod_images<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in pods {
        let Some(spec) = &p.spec else { continue };
        let images = spec
            .containers
            .iter()
            .map(|c| c.image.as_deref())
            .chain(
                spec.init_containers
                    .iter()
                    .flatten()
                    .map(|c| c.image.as_deref()),
            )
            .chain(
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .map(|c| c.image.as_deref()),
            );
        for image in images.flatten() {
            if let Ok(r) = keelson_images::ImageRef::parse(image) {
                out.insert(r.to_string());
            }
        }
    }
    out
}

/// What a collection did.
#[derive(Debug)]
pub struct Collected {
    /// The plan it carried out.
    pub plan: GcPlan,
    /// Usage afterwards, percent.
    pub used_percent_after: u64,
}

/// The collector's memory between passes.
pub struct ImageGc {
    store: Arc<ImageStore>,
    pods: Store<Pod>,
    policy: GcPolicy,
    /// Reference -> the last pass that saw it in use.
    last_used: HashMap<String, SystemTime>,
    /// Reference -> first seen, for entries that do not say when they
    /// were indexed.
    first_seen: HashMap<String, SystemTime>,
}

impl ImageGc {
    /// A collector for `store`, the images of `pods` in use.
    pub fn new(store: Arc<ImageStore>, pods: Store<Pod>, policy: GcPolicy) -> Self {
        ImageGc {
            store,
            pods,
            policy,
            last_used: HashMap::new(),
            first_seen: HashMap::new(),
        }
    }

    /// One pass: notes what is in use, and collects if usage is at or above
    /// the high threshold. `Ok(None)`: nothing to do.
    pub async fn collect_once(&mut self) -> Result<Option<Collected>, String> {
        let now = SystemTime::now();
        let pods = self.pods.state();
        let mut in_use = pod_images(pods.iter().map(|p| p.as_ref()));
        for r in &in_use {
            self.last_used.insert(r.clone(), now);
        }
        // Cheap bookkeeping every pass (the index only) ...
        let present: BTreeSet<String> = self.store.list().into_iter().collect();
        self.last_used.retain(|r, _| present.contains(r));
        self.first_seen.retain(|r, _| present.contains(r));
        for r in &present {
            self.first_seen.entry(r.clone()).or_insert(now);
        }
        // ... and the walk of the layers only when over the threshold.
        let usage = self.store.disk_usage().map_err(|e| e.to_string())?;
        if !self.policy.enabled()
            || usage.used_percent() < u64::from(self.policy.high_threshold_percent)
        {
            return Ok(None);
        }
        let store = self.store.clone();
        let (images, mounted) = tokio::task::spawn_blocking(move || {
            let images = store.images();
            let mounted = store.all_users().map_err(|e| e.to_string())?;
            Ok::<_, String>((images, mounted))
        })
        .await
        .map_err(|e| format!("image GC task: {e}"))??;
        for r in mounted.into_keys() {
            self.last_used.insert(r.clone(), now);
            in_use.insert(r);
        }
        let candidates: Vec<Candidate> = images
            .iter()
            .map(|i| {
                let first_seen = i
                    .created
                    .unwrap_or_else(|| *self.first_seen.entry(i.reference.clone()).or_insert(now));
                Candidate {
                    reference: i.reference.clone(),
                    layers: i.layers.clone(),
                    first_seen,
                    last_used: self
                        .last_used
                        .get(&i.reference)
                        .copied()
                        .unwrap_or(first_seen),
                    in_use: in_use.contains(&i.reference),
                }
            })
            .collect();
        let Some(plan) = keelson_images::gc::plan(&self.policy, usage, &candidates, now) else {
            return Ok(None);
        };
        let mut errors = Vec::new();
        for r in &plan.remove {
            match self.store.remove(r).await {
                Ok(_) => tracing::info!(image = %r, "image GC: removed"),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if let Err(e) = self.store.gc().await {
            errors.push(e.to_string());
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let after = self.store.disk_usage().map_err(|e| e.to_string())?;
        Ok(Some(Collected {
            plan,
            used_percent_after: after.used_percent(),
        }))
    }
}

/// The Events a pass posts: (type, reason, message) (pure).
pub fn events_of(
    policy: &GcPolicy,
    result: &Result<Option<Collected>, String>,
) -> Vec<(EventType, &'static str, String)> {
    let mut out = Vec::new();
    match result {
        Ok(None) => {}
        Ok(Some(c)) => {
            let p = &c.plan;
            if !p.remove.is_empty() {
                out.push((
                    EventType::Normal,
                    "ImageGarbageCollected",
                    format!(
                        "Removed {} unused image(s) to free disk space ({}): {} bytes freed, image filesystem {}% -> {}% used (high threshold {}%, low {}%)",
                        p.remove.len(),
                        p.remove.join(", "),
                        p.freed,
                        p.used_percent,
                        c.used_percent_after,
                        policy.high_threshold_percent,
                        policy.low_threshold_percent
                    ),
                ));
            }
            if !p.enough() {
                out.push((
                    EventType::Warning,
                    "FreeDiskSpaceFailed",
                    format!(
                        "Failed to garbage collect required amount of images. Attempted to free {} bytes, but only found {} bytes eligible to free.",
                        p.to_free, p.freed
                    ),
                ));
            }
        }
        Err(e) => out.push((
            EventType::Warning,
            "ImageGCFailed",
            format!("Image garbage collection failed: {e}"),
        )),
    }
    out
}

/// Collects every `period` for ever (the first pass one period after the
/// pod watch has synced, so that no image a pod needs looks unused).
pub async fn run(mut gc: ImageGc, period: Duration, events: Recorder) {
    if !gc.policy.enabled() {
        tracing::info!("image GC disabled (high threshold 100%)");
        return;
    }
    let _ = gc.pods.wait_until_ready().await;
    loop {
        tokio::time::sleep(period).await;
        let result = gc.collect_once().await;
        if let Err(e) = &result {
            tracing::warn!("image GC: {e}");
        }
        for (type_, reason, message) in events_of(&gc.policy, &result) {
            tracing::info!(reason, "{message}");
            events.node(type_, reason, &message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_images_are_canonical_and_include_every_container_kind() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [{"name": "i", "image": "busybox:1.36"}],
                "containers": [
                    {"name": "a", "image": "keelson.local/app:v1"},
                    {"name": "b", "image": "Not A::Name"},
                    {"name": "c"}
                ],
                "ephemeralContainers": [{"name": "e", "image": "127.0.0.1:5000/debug"}]
            }
        }))
        .unwrap();
        let got = pod_images([&pod]);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [
                "127.0.0.1:5000/debug:latest",
                "docker.io/library/busybox:1.36",
                "keelson.local/app:v1"
            ]
        );
    }

    fn policy() -> GcPolicy {
        GcPolicy {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            minimum_age: Duration::from_secs(120),
        }
    }

    #[test]
    fn events_say_what_happened_in_the_kubelets_words() {
        assert!(events_of(&policy(), &Ok(None)).is_empty());
        let e = events_of(&policy(), &Err("statvfs /x: EIO".into()));
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0, e[0].1), (EventType::Warning, "ImageGCFailed"));
        assert!(e[0].2.contains("statvfs /x: EIO"));
        let plan = GcPlan {
            used_percent: 90,
            to_free: 100,
            remove: vec!["docker.io/library/a:1".into()],
            freed: 40,
        };
        let e = events_of(
            &policy(),
            &Ok(Some(Collected {
                plan,
                used_percent_after: 88,
            })),
        );
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].1, "ImageGarbageCollected");
        assert!(e[0].2.contains("docker.io/library/a:1") && e[0].2.contains("90% -> 88%"));
        assert_eq!(
            (e[1].0, e[1].1),
            (EventType::Warning, "FreeDiskSpaceFailed")
        );
        assert_eq!(
            e[1].2,
            "Failed to garbage collect required amount of images. Attempted to free 100 bytes, but only found 40 bytes eligible to free."
        );
    }
}
