//! Image archives for nodes without a registry, as k3s's agent takes them:
//! an OCI layout or a `docker save` archive (a directory, or a tar of one,
//! gzip-compressed or not; keelson-images tells them apart) put in
//! `<root-dir>/images/import/` is imported into the node's image store at
//! start and whenever a new or changed one appears (checked every
//! [`POLL`]). Pods then run it with `imagePullPolicy: IfNotPresent` (the
//! default for a tag other than `latest`). Each import, good or bad, is a
//! Node Event. `keelson images import` imports the same archives by hand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keelson_images::ImageStore;

use crate::events::{EventType, Recorder};

/// Where archives are dropped: `import/` in the image store's directory.
pub fn import_dir(root_dir: &Path) -> PathBuf {
    crate::agent::image_store_dir(root_dir).join("import")
}
/// How often the directory is looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// What identifies a version of an entry: size and modification time.
type Stamp = (u64, Option<SystemTime>);

fn stamp(p: &Path) -> Option<Stamp> {
    let md = std::fs::metadata(p).ok()?;
    let (len, modified) = if md.is_dir() {
        let idx = std::fs::metadata(p.join("index.json"))
            .or_else(|_| std::fs::metadata(p.join(keelson_images::docker::MANIFEST)))
            .ok()?;
        (idx.len(), idx.modified().ok())
    } else {
        (md.len(), md.modified().ok())
    };
    Some((len, modified))
}

/// The entries of `dir` that look like image archives or layouts
/// ([`keelson_images::archive::looks_importable`]).
fn candidates(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| keelson_images::archive::looks_importable(p))
        .collect();
    out.sort();
    out
}

/// Imports what is new in `dir` for ever.
pub async fn watch(store: Arc<ImageStore>, dir: PathBuf, events: Recorder) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!("create {}: {e}", dir.display());
    }
    let mut seen: BTreeMap<PathBuf, Stamp> = BTreeMap::new();
    loop {
        for path in candidates(&dir) {
            let Some(st) = stamp(&path) else { continue };
            if seen.get(&path) == Some(&st) {
                continue;
            }
            // A file still being written changes between two looks: wait
            // until it holds still for one poll.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stamp(&path) != Some(st) {
                continue;
            }
            match store.import_path(&path).await {
                Ok(names) => {
                    tracing::info!(archive = %path.display(), images = ?names, "imported");
                    events.node(
                        EventType::Normal,
                        "ImageImported",
                        &format!("imported {} from {}", names.join(", "), path.display()),
                    );
                }
                Err(e) => {
                    tracing::warn!("import {}: {e}", path.display());
                    events.node(
                        EventType::Warning,
                        "ImageImportFailed",
                        &format!("import {}: {e}", path.display()),
                    );
                }
            }
            seen.insert(path, st);
        }
        tokio::time::sleep(POLL).await;
    }
}
