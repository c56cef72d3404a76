//! The content store: pulls through a [`Remote`], keeps manifests and configs
//! by digest, unpacked layers by digest, and an index from reference to
//! manifest digest. See the crate README for the layout and the crash-safety
//! contract.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher};
use crate::manifest::{self, Descriptor, Manifest};
use crate::reference::ImageRef;
use crate::remote::{OciRemote, Remote, RemoteError};
use crate::{ImageError, PullPolicy, PulledImage};

/// Largest manifest or config accepted (they are held in memory).
const MAX_JSON_BLOB: u64 = 16 << 20;
/// Layers downloaded and unpacked at once for one image.
const LAYER_CONCURRENCY: usize = 3;

/// Counters of network and unpack work, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Manifest requests sent (an index and its platform manifest count 2).
    pub manifests_fetched: u64,
    /// Blob downloads (configs and layers).
    pub blobs_fetched: u64,
    /// Bytes of blobs downloaded.
    pub bytes_fetched: u64,
    /// Layers unpacked.
    pub layers_unpacked: u64,
}

#[derive(Default, Debug)]
struct Counters {
    manifests: AtomicU64,
    blobs: AtomicU64,
    bytes: AtomicU64,
    layers: AtomicU64,
}

/// What `gc` removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub blobs_removed: u64,
    pub layers_removed: u64,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
struct IndexFile {
    /// Canonical reference -> the digest it resolved to (manifest or index).
    images: BTreeMap<String, IndexEntry>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct IndexEntry {
    digest: String,
}

/// Named async locks, created on demand and dropped when unused.
#[derive(Default, Debug)]
struct KeyedLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl KeyedLocks {
    fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = map.get(key).and_then(Weak::upgrade) {
            return l;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key.to_string(), Arc::downgrade(&l));
        l
    }
}

/// A path under `tmp/` removed on drop unless kept.
struct TmpGuard(Option<PathBuf>);

impl TmpGuard {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("guard still armed")
    }
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = remove_any(&p);
        }
    }
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |error| ImageError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// The content store under a root directory.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    remote: Arc<dyn Remote>,
    index: Mutex<IndexFile>,
    locks: KeyedLocks,
    /// Pulls hold it shared; `gc` and `remove` exclusively, so that nothing a
    /// pull has written but not yet indexed is collected.
    gc_lock: tokio::sync::RwLock<()>,
    counters: Counters,
    tmp_seq: AtomicU64,
}

impl ImageStore {
    /// Opens (creating) the store at `root`. Registries in `insecure` (host
    /// or host:port) are reached over plain HTTP; loopback ones always are.
    pub fn open(root: &Path, insecure: Vec<String>) -> Result<Self, ImageError> {
        Self::open_with_remote(root, Arc::new(OciRemote::new(insecure)))
    }

    /// Opens the store with another [`Remote`] (tests use fakes).
    pub fn open_with_remote(root: &Path, remote: Arc<dyn Remote>) -> Result<Self, ImageError> {
        for d in ["blobs/sha256", "layers/sha256", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        let root = fs::canonicalize(root).map_err(io_err("resolve", root))?;
        clean_stale_tmp(&root.join("tmp"))?;
        let index_path = root.join("index.json");
        let index = match fs::read(&index_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ImageError::Corrupt {
                path: index_path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => IndexFile::default(),
            Err(e) => return Err(io_err("read", &index_path)(e)),
        };
        Ok(Self {
            root,
            remote,
            index: Mutex::new(index),
            locks: KeyedLocks::default(),
            gc_lock: tokio::sync::RwLock::new(()),
            counters: Counters::default(),
            tmp_seq: AtomicU64::new(0),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Network and unpack counters since `open`.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            manifests_fetched: self.counters.manifests.load(Ordering::Relaxed),
            blobs_fetched: self.counters.blobs.load(Ordering::Relaxed),
            bytes_fetched: self.counters.bytes.load(Ordering::Relaxed),
            layers_unpacked: self.counters.layers.load(Ordering::Relaxed),
        }
    }

    /// Makes `reference` present according to `policy` and returns it.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
    ) -> Result<PulledImage, ImageError> {
        self.ensure_with(reference, policy, &[]).await
    }

    /// [`ImageStore::ensure`], pulling with the first of `creds` that
    /// applies and works (most specific first; anonymously when none
    /// applies), as the kubelet tries a pod's pull secrets.
    pub async fn ensure_with(
        &self,
        reference: &str,
        policy: PullPolicy,
        creds: &[crate::auth::Credential],
    ) -> Result<PulledImage, ImageError> {
        let r = parse(reference)?;
        let _gc = self.gc_lock.read().await;
        let lock = self.locks.get(&format!("ref {r}"));
        let _held = lock.lock().await;
        match policy {
            PullPolicy::Never => {
                self.get_parsed(reference, &r)?
                    .ok_or_else(|| ImageError::NeverPull {
                        reference: reference.to_string(),
                    })
            }
            PullPolicy::IfNotPresent => match self.get_parsed(reference, &r)? {
                Some(img) => Ok(img),
                None => self.pull_authed(reference, &r, creds).await,
            },
            PullPolicy::Always => self.pull_authed(reference, &r, creds).await,
        }
    }

    async fn pull_authed(
        &self,
        reference: &str,
        r: &ImageRef,
        creds: &[crate::auth::Credential],
    ) -> Result<PulledImage, ImageError> {
        let mut last = None;
        for cred in crate::auth::matching(creds, &r.registry, &r.repository) {
            let Some(remote) = self.remote.with_credential(cred) else {
                break;
            };
            match self.pull_from(remote.as_ref(), reference, r).await {
                Ok(img) => return Ok(img),
                // Not this one: the next credential, as the kubelet does.
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => self.pull(reference, r).await,
        }
    }

    /// The image `reference` names if it is completely in the store; no
    /// network.
    pub fn get(&self, reference: &str) -> Result<Option<PulledImage>, ImageError> {
        let r = parse(reference)?;
        self.get_parsed(reference, &r)
    }

    /// The canonical references in the index.
    pub fn list(&self) -> Vec<String> {
        self.lock_index().images.keys().cloned().collect()
    }

    /// Forgets `reference` (its content stays until [`ImageStore::gc`]).
    /// Returns whether it was there.
    pub async fn remove(&self, reference: &str) -> Result<bool, ImageError> {
        let r = parse(reference)?;
        let _gc = self.gc_lock.write().await;
        let mut index = self.lock_index();
        let was = index.images.remove(&r.to_string()).is_some();
        if was {
            self.write_index(&index)?;
        }
        Ok(was)
    }

    /// Removes blobs and layers no indexed image refers to. The caller makes
    /// sure no container still uses a removed image's layers.
    pub async fn gc(&self) -> Result<GcStats, ImageError> {
        let _gc = self.gc_lock.write().await;
        let tops: Vec<String> = self
            .lock_index()
            .images
            .values()
            .map(|e| e.digest.clone())
            .collect();
        let mut keep_blobs = HashSet::new();
        let mut keep_layers = HashSet::new();
        for top in tops {
            let Ok(top) = Digest::parse(&top) else {
                continue;
            };
            self.mark(&top, &mut keep_blobs, &mut keep_layers, 0);
        }
        let mut stats = GcStats::default();
        for (dir, keep, count) in [
            ("blobs/sha256", &keep_blobs, &mut stats.blobs_removed),
            ("layers/sha256", &keep_layers, &mut stats.layers_removed),
        ] {
            let dir = self.root.join(dir);
            for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
                let e = e.map_err(io_err("list", &dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                // Out of sight first (atomic), then deleted.
                let doomed = self.tmp_path("gc");
                fs::rename(e.path(), &doomed).map_err(io_err("move", &e.path()))?;
                remove_any(&doomed).map_err(io_err("remove", &doomed))?;
                *count += 1;
            }
        }
        Ok(stats)
    }

    fn mark(
        &self,
        d: &Digest,
        blobs: &mut HashSet<String>,
        layers: &mut HashSet<String>,
        depth: u8,
    ) {
        blobs.insert(d.hex().to_string());
        let Ok(bytes) = fs::read(self.blob_path(d)) else {
            return;
        };
        match Manifest::parse(&bytes) {
            Ok(Manifest::Index { manifests }) if depth < 2 => {
                for (m, _) in manifests {
                    self.mark(&m.digest, blobs, layers, depth + 1);
                }
            }
            Ok(Manifest::Image { config, layers: ls }) => {
                blobs.insert(config.digest.hex().to_string());
                for l in ls {
                    layers.insert(l.digest.hex().to_string());
                }
            }
            _ => {}
        }
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, IndexFile> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn layer_path(&self, d: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(d.hex())
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}-{what}", std::process::id()))
    }

    /// Reads a blob from the store, checking its digest.
    fn read_blob(&self, d: &Digest) -> Result<Option<Vec<u8>>, ImageError> {
        let p = self.blob_path(d);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &p)(e)),
        };
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(ImageError::Corrupt {
                path: p,
                detail: format!("content has digest {actual}"),
            });
        }
        Ok(Some(bytes))
    }

    /// Writes verified bytes as a blob: temp file, fsync, rename.
    fn write_blob(&self, d: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
        let dest = self.blob_path(d);
        if dest.exists() {
            return Ok(());
        }
        let tmp = TmpGuard(Some(self.tmp_path("blob")));
        let mut f = fs::File::create(tmp.path()).map_err(io_err("create", tmp.path()))?;
        f.write_all(bytes).map_err(io_err("write", tmp.path()))?;
        f.sync_all().map_err(io_err("sync", tmp.path()))?;
        fs::rename(tmp.path(), &dest).map_err(io_err("rename", &dest))?;
        tmp.disarm();
        Ok(())
    }

    fn write_index(&self, index: &IndexFile) -> Result<(), ImageError> {
        let dest = self.root.join("index.json");
        let tmp = TmpGuard(Some(self.tmp_path("index")));
        let bytes = serde_json::to_vec_pretty(index).expect("index serialises");
        let mut f = fs::File::create(tmp.path()).map_err(io_err("create", tmp.path()))?;
        f.write_all(&bytes).map_err(io_err("write", tmp.path()))?;
        f.sync_all().map_err(io_err("sync", tmp.path()))?;
        fs::rename(tmp.path(), &dest).map_err(io_err("rename", &dest))?;
        tmp.disarm();
        Ok(())
    }

    fn get_parsed(&self, reference: &str, r: &ImageRef) -> Result<Option<PulledImage>, ImageError> {
        let top = match self.lock_index().images.get(&r.to_string()) {
            Some(e) => e.digest.clone(),
            None => return Ok(None),
        };
        let top = Digest::parse(&top).map_err(|detail| ImageError::Corrupt {
            path: self.root.join("index.json"),
            detail,
        })?;
        self.load(reference, r, &top)
    }

    /// Builds the image from local content; `None` if anything is missing.
    fn load(
        &self,
        reference: &str,
        r: &ImageRef,
        top: &Digest,
    ) -> Result<Option<PulledImage>, ImageError> {
        let corrupt = |d: &Digest, detail: String| ImageError::Corrupt {
            path: self.blob_path(d),
            detail,
        };
        let Some(bytes) = self.read_blob(top)? else {
            return Ok(None);
        };
        let mut m = Manifest::parse(&bytes).map_err(|e| corrupt(top, e))?;
        let mut digest = top.clone();
        if let Manifest::Index { manifests } = &m {
            let Some(d) = manifest::select_platform(manifests, "linux", manifest::host_arch())
            else {
                return Ok(None);
            };
            digest = d.digest.clone();
            let Some(bytes) = self.read_blob(&digest)? else {
                return Ok(None);
            };
            m = Manifest::parse(&bytes).map_err(|e| corrupt(&digest, e))?;
        }
        let Manifest::Image { config, layers } = m else {
            return Err(corrupt(&digest, "index inside an index".to_string()));
        };
        let Some(cfg) = self.read_blob(&config.digest)? else {
            return Ok(None);
        };
        let parsed = manifest::parse_config(&cfg).map_err(|e| corrupt(&config.digest, e))?;
        let mut dirs = Vec::with_capacity(layers.len());
        for l in &layers {
            let p = self.layer_path(&l.digest);
            if !p.is_dir() {
                return Ok(None);
            }
            dirs.push(p);
        }
        Ok(Some(PulledImage {
            reference: reference.to_string(),
            image_id: config.digest.to_string(),
            repo_digest: r.repo_digest(top),
            config: parsed.config,
            layers: dirs,
        }))
    }

    async fn fetch_manifest(
        &self,
        remote: &dyn Remote,
        reference: &str,
        r: &ImageRef,
    ) -> Result<(Digest, Vec<u8>), ImageError> {
        self.counters.manifests.fetch_add(1, Ordering::Relaxed);
        let bytes = remote
            .manifest(r, manifest::ACCEPTED)
            .await
            .map_err(|e| remote_err(reference, "manifest", e))?;
        if bytes.len() as u64 > MAX_JSON_BLOB {
            return Err(ImageError::Pull {
                reference: reference.to_string(),
                detail: format!("manifest of {} bytes is too large", bytes.len()),
            });
        }
        let actual = Digest::of(&bytes);
        if let Some(want) = &r.digest
            && want != &actual
        {
            return Err(ImageError::DigestMismatch {
                reference: reference.to_string(),
                what: "manifest".to_string(),
                expected: want.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok((actual, bytes))
    }

    async fn pull(&self, reference: &str, r: &ImageRef) -> Result<PulledImage, ImageError> {
        self.pull_from(self.remote.as_ref(), reference, r).await
    }

    /// Makes `reference` present from `source` (an image layout on disk, a
    /// registry) exactly as a pull does: digests verified, then indexed.
    pub async fn import(
        &self,
        source: &dyn Remote,
        reference: &str,
    ) -> Result<PulledImage, ImageError> {
        let r = parse(reference)?;
        let _gc = self.gc_lock.read().await;
        let lock = self.locks.get(&format!("ref {r}"));
        let _held = lock.lock().await;
        self.pull_from(source, reference, &r).await
    }

    /// Imports every named image of an OCI layout directory or of a tar
    /// archive of one; returns their references.
    pub async fn import_path(&self, path: &Path) -> Result<Vec<String>, ImageError> {
        let bad = |detail: String| ImageError::Unsupported {
            reference: path.display().to_string(),
            detail,
        };
        let unpacked = if path.is_dir() {
            None
        } else {
            let dir = TmpGuard(Some(self.tmp_path("import")));
            let (src, dst) = (path.to_path_buf(), dir.path().to_path_buf());
            tokio::task::spawn_blocking(move || crate::layout::unpack_archive(&src, &dst))
                .await
                .map_err(|e| bad(format!("unpack task: {e}")))?
                .map_err(bad)?;
            Some(dir)
        };
        let dir = unpacked.as_ref().map_or(path, |d| d.path());
        let layout = crate::layout::OciLayout::open(dir).map_err(bad)?;
        let names = layout.names();
        if names.is_empty() {
            return Err(bad(format!(
                "no image in it is named (index annotation {} or a full {})",
                crate::layout::CONTAINERD_NAME,
                crate::layout::OCI_REF_NAME
            )));
        }
        for name in &names {
            self.import(&layout, name).await?;
        }
        Ok(names)
    }

    async fn pull_from(
        &self,
        remote: &dyn Remote,
        reference: &str,
        r: &ImageRef,
    ) -> Result<PulledImage, ImageError> {
        let unsupported = |detail: String| ImageError::Unsupported {
            reference: reference.to_string(),
            detail,
        };
        let (top, top_bytes) = self.fetch_manifest(remote, reference, r).await?;
        // Already complete under this digest (Always on an unchanged tag).
        if let Some(img) = self.load(reference, r, &top)? {
            self.set_index(r, &top)?;
            return Ok(img);
        }
        let mut new_blobs: Vec<(Digest, Vec<u8>)> = vec![(top.clone(), top_bytes.clone())];
        let mut m = Manifest::parse(&top_bytes).map_err(unsupported)?;
        if let Manifest::Index { manifests } = &m {
            let arch = manifest::host_arch();
            let d = manifest::select_platform(manifests, "linux", arch)
                .ok_or_else(|| unsupported(format!("no linux/{arch} image in the index")))?;
            let mut child = r.clone();
            child.digest = Some(d.digest.clone());
            let (digest, bytes) = match self.read_blob(&d.digest)? {
                Some(b) => (d.digest.clone(), b),
                None => self.fetch_manifest(remote, reference, &child).await?,
            };
            m = Manifest::parse(&bytes).map_err(unsupported)?;
            new_blobs.push((digest, bytes));
        }
        let Manifest::Image { config, layers } = m else {
            return Err(unsupported("an index inside an index".to_string()));
        };
        let cfg = match self.read_blob(&config.digest)? {
            Some(b) => b,
            None => self.fetch_small_blob(remote, reference, r, &config).await?,
        };
        let parsed = manifest::parse_config(&cfg).map_err(unsupported)?;
        if parsed.diff_ids.len() != layers.len() {
            return Err(unsupported(format!(
                "config lists {} diff_ids for {} layers",
                parsed.diff_ids.len(),
                layers.len()
            )));
        }
        new_blobs.push((config.digest.clone(), cfg));
        // Futures built up front: a closure inside the stream would make the
        // pull future not `Send` (higher-ranked lifetimes), and pod workers
        // spawn it.
        let jobs: Vec<_> = layers
            .iter()
            .zip(&parsed.diff_ids)
            .map(|(l, diff_id)| self.ensure_layer(remote, reference, r, l, diff_id))
            .collect();
        futures::stream::iter(jobs)
            .buffer_unordered(LAYER_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        // Everything the index entry will point at is in place: write the
        // small blobs, then the entry.
        for (d, b) in &new_blobs {
            self.write_blob(d, b)?;
        }
        self.set_index(r, &top)?;
        self.load(reference, r, &top)?
            .ok_or_else(|| ImageError::Corrupt {
                path: self.root.clone(),
                detail: format!("{reference}: content vanished right after the pull"),
            })
    }

    fn set_index(&self, r: &ImageRef, top: &Digest) -> Result<(), ImageError> {
        let mut index = self.lock_index();
        let key = r.to_string();
        if index
            .images
            .get(&key)
            .is_some_and(|e| e.digest == top.as_str())
        {
            return Ok(());
        }
        let mut next = index.clone();
        next.images.insert(
            key,
            IndexEntry {
                digest: top.to_string(),
            },
        );
        self.write_index(&next)?;
        *index = next;
        Ok(())
    }

    /// Downloads a manifest-sized blob into memory and verifies it.
    async fn fetch_small_blob(
        &self,
        remote: &dyn Remote,
        reference: &str,
        r: &ImageRef,
        d: &Descriptor,
    ) -> Result<Vec<u8>, ImageError> {
        if d.size > MAX_JSON_BLOB {
            return Err(ImageError::Unsupported {
                reference: reference.to_string(),
                detail: format!("config {} of {} bytes is too large", d.digest, d.size),
            });
        }
        self.counters.blobs.fetch_add(1, Ordering::Relaxed);
        let mut stream = remote
            .blob(r, d)
            .await
            .map_err(|e| remote_err(reference, "config", e))?;
        let mut out = Vec::with_capacity(d.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| remote_err(reference, "config", e))?;
            out.extend_from_slice(&chunk);
            if out.len() as u64 > d.size {
                break;
            }
        }
        self.counters
            .bytes
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        let actual = Digest::of(&out);
        if actual != d.digest || out.len() as u64 != d.size {
            return Err(ImageError::DigestMismatch {
                reference: reference.to_string(),
                what: "config".to_string(),
                expected: d.digest.to_string(),
                actual: format!("{actual} ({} bytes, expected {})", out.len(), d.size),
            });
        }
        Ok(out)
    }

    /// Makes the layer `d` unpacked in the store: download to a temp file
    /// (verified), unpack to a temp dir (diff_id verified), rename into place.
    async fn ensure_layer(
        &self,
        remote: &dyn Remote,
        reference: &str,
        r: &ImageRef,
        d: &Descriptor,
        diff_id: &Digest,
    ) -> Result<(), ImageError> {
        let dest = self.layer_path(&d.digest);
        let lock = self.locks.get(&format!("layer {}", d.digest));
        let _held = lock.lock().await;
        if dest.is_dir() {
            return Ok(());
        }
        let what = format!("layer {}", d.digest);
        self.counters.blobs.fetch_add(1, Ordering::Relaxed);
        let blob = TmpGuard(Some(self.tmp_path("layer.blob")));
        let mut stream = remote
            .blob(r, d)
            .await
            .map_err(|e| remote_err(reference, &what, e))?;
        let mut file = tokio::fs::File::create(blob.path())
            .await
            .map_err(io_err("create", blob.path()))?;
        let mut hasher = Hasher::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| remote_err(reference, &what, e))?;
            hasher.update(&chunk);
            self.counters
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(io_err("write", blob.path()))?;
        }
        // A tokio File hands writes to a background task: without flush the
        // last one may still be in flight when the unpacker opens the blob.
        tokio::io::AsyncWriteExt::flush(&mut file)
            .await
            .map_err(io_err("write", blob.path()))?;
        drop(file);
        let n = hasher.len();
        let actual = hasher.finish();
        if actual != d.digest || n != d.size {
            return Err(ImageError::DigestMismatch {
                reference: reference.to_string(),
                what,
                expected: d.digest.to_string(),
                actual: format!("{actual} ({n} bytes, expected {})", d.size),
            });
        }
        let unpacked = TmpGuard(Some(self.tmp_path("layer.dir")));
        fs::create_dir(unpacked.path()).map_err(io_err("create", unpacked.path()))?;
        let (src, dir, mt) = (
            blob.path().to_path_buf(),
            unpacked.path().to_path_buf(),
            d.media_type.clone(),
        );
        let got = tokio::task::spawn_blocking(move || -> Result<Digest, String> {
            let diff =
                crate::unpack::unpack_layer_file(&src, &mt, &dir).map_err(|e| e.to_string())?;
            // Make the files durable before the rename publishes them.
            if let Ok(f) = fs::File::open(&dir) {
                let _ = nix::unistd::syncfs(&f);
            }
            Ok(diff)
        })
        .await
        .map_err(|e| ImageError::Unpack {
            reference: reference.to_string(),
            layer: d.digest.to_string(),
            detail: format!("unpack task: {e}"),
        })?
        .map_err(|detail| ImageError::Unpack {
            reference: reference.to_string(),
            layer: d.digest.to_string(),
            detail,
        })?;
        if &got != diff_id {
            return Err(ImageError::DigestMismatch {
                reference: reference.to_string(),
                what: format!("uncompressed layer {} (diff_id)", d.digest),
                expected: diff_id.to_string(),
                actual: got.to_string(),
            });
        }
        match fs::rename(unpacked.path(), &dest) {
            Ok(()) => unpacked.disarm(),
            // Another process got there first: theirs is as good.
            Err(_) if dest.is_dir() => {}
            Err(e) => return Err(io_err("rename", &dest)(e)),
        }
        self.counters.layers.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn parse(reference: &str) -> Result<ImageRef, ImageError> {
    ImageRef::parse(reference).map_err(|e| ImageError::InvalidReference {
        reference: reference.to_string(),
        reason: e.0,
    })
}

fn remote_err(reference: &str, what: &str, e: RemoteError) -> ImageError {
    match e {
        RemoteError::NotFound(detail) => ImageError::NotFound {
            reference: reference.to_string(),
            detail: format!("{what}: {detail}"),
        },
        RemoteError::Digest { expected, actual } => ImageError::DigestMismatch {
            reference: reference.to_string(),
            what: what.to_string(),
            expected,
            actual,
        },
        RemoteError::Other(detail) => ImageError::Pull {
            reference: reference.to_string(),
            detail: format!("{what}: {detail}"),
        },
    }
}

/// Removes what dead processes left in `tmp/` (names start with their pid).
fn clean_stale_tmp(tmp: &Path) -> Result<(), ImageError> {
    for e in fs::read_dir(tmp).map_err(io_err("list", tmp))? {
        let e = e.map_err(io_err("list", tmp))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            remove_any(&e.path()).map_err(io_err("remove", &e.path()))?;
        }
    }
    Ok(())
}
