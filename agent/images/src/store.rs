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
    /// When this digest was indexed under this reference (Unix seconds);
    /// absent in entries older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
}

/// An indexed image, as `keelson images ls` and image garbage collection
/// see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The canonical reference.
    pub reference: String,
    /// What the reference resolved to: the manifest (or index) digest.
    pub digest: String,
    /// The config digest (None if the image is not complete).
    pub image_id: Option<String>,
    /// Its unpacked layers, lowest first: digest hex and bytes on disk.
    pub layers: Vec<(String, u64)>,
    /// When it was indexed (None for entries from before that was kept).
    pub created: Option<std::time::SystemTime>,
}

impl ImageInfo {
    /// Bytes on disk of its unpacked layers (layers it shares with other
    /// images count for each, as `crictl images` counts them).
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|(_, n)| n).sum()
    }
}

/// Bytes on disk under `dir` (blocks allocated, links not followed, each
/// hard-linked inode once).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            total += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

impl crate::PulledImage {
    /// Bytes on disk of its unpacked layers (walks them: blocking I/O).
    pub fn size_on_disk(&self) -> u64 {
        self.layers.iter().map(|l| disk_usage(l)).sum()
    }
}

/// Why an operation waits for another process (see [`ImageStore`]'s
/// locking).
const STORE_LOCK: &str = "store.lock";
const INDEX_LOCK: &str = "index.lock";

/// Takes `flock(kind)` on `path` without blocking a thread: tries, then
/// sleeps and tries again while another process holds it.
async fn flock_async(
    path: &Path,
    exclusive: bool,
) -> Result<nix::fcntl::Flock<fs::File>, ImageError> {
    use nix::fcntl::{Flock, FlockArg};
    let mut file = open_lock_file(path)?;
    let arg = if exclusive {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    let mut wait = std::time::Duration::from_millis(5);
    let mut logged = false;
    loop {
        match Flock::lock(file, arg) {
            Ok(l) => return Ok(l),
            Err((f, nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EINTR)) => {
                if !logged {
                    tracing::info!(lock = %path.display(), "waiting for another process using the image store");
                    logged = true;
                }
                file = f;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_millis(200));
            }
            Err((_, e)) => return Err(io_err("lock", path)(e.into())),
        }
    }
}

fn open_lock_file(path: &Path) -> Result<fs::File, ImageError> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("open", path))
}

/// What holds the store for an operation: the in-process lock and the
/// cross-process file lock, released together.
struct Held<G> {
    _file: nix::fcntl::Flock<fs::File>,
    _guard: G,
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
///
/// Several processes may use one store (the agent, and `keelson images`
/// beside it): `index.json` is read from disk at each lookup and updated
/// read-modify-write under `index.lock` (flock, exclusive); pulls and
/// imports hold `store.lock` shared and `gc`/`remove` exclusively, so no
/// process collects what another has written but not yet indexed. Within
/// a process an async lock does the same, so a waiting `gc` parks a task,
/// not a thread.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    remote: Arc<dyn Remote>,
    /// Serialises this process's index updates (the file lock serialises
    /// processes).
    index_lock: Mutex<()>,
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
        for l in [STORE_LOCK, INDEX_LOCK] {
            open_lock_file(&root.join(l))?;
        }
        read_index(&root)?;
        Ok(Self {
            root,
            remote,
            index_lock: Mutex::new(()),
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
        self.index().images.keys().cloned().collect()
    }

    /// The indexed images with their layers and sizes on disk (walks the
    /// layer directories: blocking I/O).
    pub fn images(&self) -> Vec<ImageInfo> {
        let mut sizes: HashMap<String, u64> = HashMap::new();
        let mut out = Vec::new();
        for (reference, e) in self.index().images {
            let (image_id, layers) = Digest::parse(&e.digest)
                .ok()
                .and_then(|top| self.resolve_local(&top))
                .map(|(cfg, ls)| (Some(cfg.to_string()), ls))
                .unwrap_or((None, Vec::new()));
            let layers = layers
                .into_iter()
                .filter(|d| self.layer_path(d).is_dir())
                .map(|d| {
                    let hex = d.hex().to_string();
                    let n = *sizes
                        .entry(hex.clone())
                        .or_insert_with(|| disk_usage(&self.layer_path(&d)));
                    (hex, n)
                })
                .collect();
            out.push(ImageInfo {
                reference,
                digest: e.digest,
                image_id,
                layers,
                created: e
                    .created
                    .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)),
            });
        }
        out
    }

    /// The size and free space of the filesystem the store is on (statvfs
    /// of its root: the kubelet's image filesystem).
    pub fn disk_usage(&self) -> Result<crate::gc::DiskUsage, ImageError> {
        let st = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| io_err("statvfs", &self.root)(e.into()))?;
        let frsize = st.fragment_size();
        Ok(crate::gc::DiskUsage {
            capacity: st.blocks() * frsize,
            available: st.blocks_available() * frsize,
        })
    }

    /// The config digest and layer digests (lowest first) of the image
    /// `top` resolves to, from local blobs only.
    fn resolve_local(&self, top: &Digest) -> Option<(Digest, Vec<Digest>)> {
        let bytes = self.read_blob(top).ok()??;
        let mut m = Manifest::parse(&bytes).ok()?;
        if let Manifest::Index { manifests } = &m {
            let d = manifest::select_platform(manifests, "linux", manifest::host_arch())?;
            m = Manifest::parse(&self.read_blob(&d.digest).ok()??).ok()?;
        }
        match m {
            Manifest::Image { config, layers } => Some((
                config.digest,
                layers.into_iter().map(|l| l.digest).collect(),
            )),
            Manifest::Index { .. } => None,
        }
    }

    /// The root filesystems (overlay mount points, in this mount namespace)
    /// made of exactly `reference`'s layers: the containers that use it,
    /// running or stopped but not yet removed.
    pub fn users(&self, reference: &str) -> Result<Vec<PathBuf>, ImageError> {
        let r = parse(reference)?;
        Ok(self.all_users()?.remove(&r.to_string()).unwrap_or_default())
    }

    /// [`ImageStore::users`] of every indexed image that has any, by
    /// canonical reference (one read of mountinfo).
    pub fn all_users(&self) -> Result<BTreeMap<String, Vec<PathBuf>>, ImageError> {
        let mounts = crate::mount::current_overlay_mounts()?;
        let mut out = BTreeMap::new();
        if mounts.is_empty() {
            return Ok(out);
        }
        let mounted: Vec<(HashSet<&PathBuf>, &PathBuf)> = mounts
            .iter()
            .map(|m| (m.lower_dirs.iter().collect(), &m.mount_point))
            .collect();
        for (reference, e) in self.index().images {
            let Some((_, layers)) = Digest::parse(&e.digest)
                .ok()
                .and_then(|top| self.resolve_local(&top))
            else {
                continue;
            };
            if layers.is_empty() {
                continue;
            }
            let want: Vec<PathBuf> = layers.iter().map(|d| self.layer_path(d)).collect();
            let want: HashSet<&PathBuf> = want.iter().collect();
            let users: Vec<PathBuf> = mounted
                .iter()
                .filter(|(lower, _)| *lower == want)
                .map(|(_, mp)| (*mp).clone())
                .collect();
            if !users.is_empty() {
                out.insert(reference, users);
            }
        }
        Ok(out)
    }

    /// Forgets `reference` (its content stays until [`ImageStore::gc`]).
    /// Returns whether it was there.
    pub async fn remove(&self, reference: &str) -> Result<bool, ImageError> {
        let r = parse(reference)?;
        let _held = self.exclusive().await?;
        self.update_index(|index| index.images.remove(&r.to_string()).is_some())
    }

    /// [`ImageStore::remove`], refused with [`ImageError::InUse`] while a
    /// container's root filesystem is made of the image
    /// ([`ImageStore::users`]).
    pub async fn remove_unused(&self, reference: &str) -> Result<bool, ImageError> {
        let r = parse(reference)?;
        let _held = self.exclusive().await?;
        let users = self.users(reference)?;
        if !users.is_empty() {
            return Err(ImageError::InUse {
                reference: r.to_string(),
                users,
            });
        }
        self.update_index(|index| index.images.remove(&r.to_string()).is_some())
    }

    /// Holds the store against other pulls, imports and collections (this
    /// process's and other processes').
    async fn exclusive(&self) -> Result<Held<tokio::sync::RwLockWriteGuard<'_, ()>>, ImageError> {
        let guard = self.gc_lock.write().await;
        let file = flock_async(&self.root.join(STORE_LOCK), true).await?;
        Ok(Held {
            _file: file,
            _guard: guard,
        })
    }

    /// Removes blobs and layers no indexed image refers to. Layers that a
    /// mounted overlay (a container's root filesystem) has as a lower dir
    /// are kept even then, so a forced `remove` never pulls a layer from
    /// under a container.
    pub async fn gc(&self) -> Result<GcStats, ImageError> {
        let _held = self.exclusive().await?;
        let tops: Vec<String> = self
            .index()
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
        let layers_dir = self.root.join("layers/sha256");
        for m in crate::mount::current_overlay_mounts()? {
            for l in m.lower_dirs {
                if let Ok(hex) = l.strip_prefix(&layers_dir) {
                    keep_layers.insert(hex.to_string_lossy().into_owned());
                }
            }
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

    /// The index as it is on disk now (another process may have changed
    /// it); an unreadable one reads as empty, with a log line.
    fn index(&self) -> IndexFile {
        read_index(&self.root).unwrap_or_else(|e| {
            tracing::warn!("{e}");
            IndexFile::default()
        })
    }

    /// Applies `change` to the index as it is on disk, holding it against
    /// other writers (threads and processes); writes it back if `change`
    /// says it changed anything, and returns that.
    fn update_index(
        &self,
        change: impl FnOnce(&mut IndexFile) -> bool,
    ) -> Result<bool, ImageError> {
        let _in_process = self.index_lock.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.root.join(INDEX_LOCK);
        // Held for a read and an atomic write: blocking is brief.
        let _file =
            nix::fcntl::Flock::lock(open_lock_file(&path)?, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| io_err("lock", &path)(e.into()))?;
        let mut index = read_index(&self.root)?;
        let changed = change(&mut index);
        if changed {
            self.write_index(&index)?;
        }
        Ok(changed)
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
        let top = match read_index(&self.root)?.images.get(&r.to_string()) {
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

    /// Imports every named image of an image archive: an OCI layout or a
    /// `docker save` archive, as a directory or a tar of one (gzip or not;
    /// `archive.rs` tells them apart). Returns their references. Each image
    /// is imported as a pull is: all of it, verified, or nothing.
    pub async fn import_path(&self, path: &Path) -> Result<Vec<String>, ImageError> {
        use crate::archive::Format;
        let bad = |detail: String| ImageError::Import {
            path: path.to_path_buf(),
            detail,
        };
        let unpacked = if path.is_dir() {
            None
        } else {
            let dir = TmpGuard(Some(self.tmp_path("import")));
            let (src, dst) = (path.to_path_buf(), dir.path().to_path_buf());
            tokio::task::spawn_blocking(move || crate::archive::unpack_archive(&src, &dst))
                .await
                .map_err(|e| bad(format!("unpack task: {e}")))?
                .map_err(bad)?;
            Some(dir)
        };
        let dir = unpacked.as_ref().map_or(path, |d| d.path()).to_path_buf();
        let (source, names, unnamed): (Box<dyn Remote>, Vec<String>, String) =
            match crate::archive::detect(&dir).map_err(bad)? {
                Format::OciLayout => {
                    let layout = crate::layout::OciLayout::open(&dir).map_err(bad)?;
                    let names = layout.names();
                    let why = format!(
                        "index annotation {} or a full {}",
                        crate::layout::CONTAINERD_NAME,
                        crate::layout::OCI_REF_NAME
                    );
                    (Box::new(layout), names, why)
                }
                Format::DockerArchive => {
                    // Hashes every file: off the async threads.
                    let archive = tokio::task::spawn_blocking(move || {
                        crate::docker::DockerArchive::open(&dir)
                    })
                    .await
                    .map_err(|e| bad(format!("read task: {e}")))?
                    .map_err(bad)?;
                    let names = archive.names();
                    (
                        Box::new(archive),
                        names,
                        "RepoTags in manifest.json".to_string(),
                    )
                }
            };
        if names.is_empty() {
            return Err(bad(format!("no image in it is named ({unnamed})")));
        }
        for name in &names {
            self.import(source.as_ref(), name).await?;
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
        // The caller holds the in-process lock shared; this holds other
        // processes' `gc` and `remove` off until the entry is written.
        let _shared = flock_async(&self.root.join(STORE_LOCK), false).await?;
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
        let key = r.to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.update_index(|index| {
            if index
                .images
                .get(&key)
                .is_some_and(|e| e.digest == top.as_str())
            {
                return false;
            }
            index.images.insert(
                key,
                IndexEntry {
                    digest: top.to_string(),
                    created: Some(now),
                },
            );
            true
        })?;
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

/// The index file under `root` as it is now.
fn read_index(root: &Path) -> Result<IndexFile, ImageError> {
    let path = root.join("index.json");
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| ImageError::Corrupt {
            path,
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile::default()),
        Err(e) => Err(io_err("read", &path)(e)),
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
