//! Built-in IPAM: addresses from the node's pod CIDR, state on disk.
//!
//! Layout of one network's directory (`dataDir/NAME`):
//!
//! ```text
//! lock                  flock(2) target; every operation holds it
//! att/CID:IFNAME  -> IP   symlink: the attachment's address
//! ips/IP          -> CID:IFNAME   symlink: the allocation itself
//! last            -> IP   symlink: round-robin cursor (replaced by rename)
//! ```
//!
//! Every step is one atomic `symlink(2)`, `unlink(2)` or `rename(2)`, so a
//! kill -9 at any point leaves each entry either whole or absent. ADD writes
//! `att` before `ips`, and DEL removes `ips` before `att`, which keeps one
//! invariant through any crash: **an `ips` entry owned by X implies `att/X`
//! points back to it.** An address is taken only by its `ips` entry, so the
//! only crash debris is an `att` entry whose `ips` is missing or owned by
//! someone else: it takes no address, the next operation on that attachment
//! repairs it, and GC removes it.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

use crate::config::Attachment;

/// IPAM failures.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the subnet is allocated.
    #[error("no free address in {subnet}: all {size} usable addresses are allocated")]
    Exhausted {
        /// The pod CIDR.
        subnet: Ipv4Net,
        /// How many addresses it has.
        size: u32,
    },
    /// Another plugin instance held the lock for too long.
    #[error("IPAM state {} is locked by another plugin instance (waited {waited:?})", dir.display())]
    Locked {
        /// State directory.
        dir: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IpamError + 'a {
    move |source| IpamError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The usable addresses of `subnet` (network and broadcast excluded) as a
/// half-open u32 range.
pub fn usable(subnet: Ipv4Net) -> (u32, u32) {
    let net = u32::from(subnet.network());
    let bcast = u32::from(subnet.broadcast());
    (net + 1, bcast)
}

/// Picks a free address: the first one after `cursor` (round robin, so a just
/// released address is not handed out again at once), wrapping around.
pub fn pick(
    subnet: Ipv4Net,
    used: &HashSet<Ipv4Addr>,
    cursor: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let (lo, hi) = usable(subnet);
    let n = hi - lo;
    let start = match cursor.map(u32::from) {
        Some(c) if c >= lo && c < hi => c - lo + 1,
        _ => 0,
    };
    (0..n)
        .map(|i| Ipv4Addr::from(lo + (start + i) % n))
        .find(|ip| !used.contains(ip))
}

/// One network's IPAM state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    subnet: Ipv4Net,
}

/// The store with its lock held; dropping it unlocks.
#[derive(Debug)]
pub struct Locked<'a> {
    store: &'a Store,
    _lock: Flock<File>,
}

impl Store {
    /// The store at `dir` for `subnet` (nothing is touched yet).
    pub fn new(dir: impl Into<PathBuf>, subnet: Ipv4Net) -> Self {
        Self {
            dir: dir.into(),
            subnet,
        }
    }

    /// State directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directories if needed and takes the lock, waiting up to
    /// `timeout`.
    pub fn lock(&self, timeout: Duration) -> Result<Locked<'_>, IpamError> {
        for sub in ["ips", "att"] {
            let p = self.dir.join(sub);
            if !p.is_dir() {
                fs::create_dir_all(&p).map_err(io_err("create IPAM directory", &p))?;
            }
        }
        let lock_path = self.dir.join("lock");
        let start = Instant::now();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open IPAM lock", &lock_path))?;
        let mut sleep = Duration::from_micros(100);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    return Ok(Locked {
                        store: self,
                        _lock: lock,
                    });
                }
                Err((f, nix::errno::Errno::EWOULDBLOCK)) | Err((f, nix::errno::Errno::EINTR)) => {
                    file = f;
                    if start.elapsed() > timeout {
                        return Err(IpamError::Locked {
                            dir: self.dir.clone(),
                            waited: start.elapsed(),
                        });
                    }
                    std::thread::sleep(sleep);
                    sleep = (sleep * 2).min(Duration::from_millis(4));
                }
                Err((_, e)) => {
                    return Err(IpamError::Io {
                        op: "flock IPAM lock",
                        path: lock_path,
                        source: e.into(),
                    });
                }
            }
        }
    }
}

fn read_link(path: &Path) -> Result<Option<String>, IpamError> {
    match fs::read_link(path) {
        Ok(t) => Ok(Some(t.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IpamError::Io {
            op: "read IPAM entry",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn remove(path: &Path) -> Result<(), IpamError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IpamError::Io {
            op: "remove IPAM entry",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn list_dir(dir: &Path) -> Result<Vec<String>, IpamError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("list IPAM directory", dir))? {
        let e = e.map_err(io_err("list IPAM directory", dir))?;
        if let Some(n) = e.file_name().to_str() {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

impl Locked<'_> {
    fn ips(&self, ip: Ipv4Addr) -> PathBuf {
        self.store.dir.join("ips").join(ip.to_string())
    }

    fn att(&self, a: &Attachment) -> PathBuf {
        self.store.dir.join("att").join(a.key())
    }

    /// The attachment's committed address, if it has one.
    pub fn get(&self, a: &Attachment) -> Result<Option<Ipv4Addr>, IpamError> {
        let Some(target) = read_link(&self.att(a))? else {
            return Ok(None);
        };
        let Ok(ip) = target.parse::<Ipv4Addr>() else {
            return Ok(None);
        };
        Ok((read_link(&self.ips(ip))?.as_deref() == Some(a.key().as_str())).then_some(ip))
    }

    /// Every committed allocation, by address.
    pub fn list(&self) -> Result<Vec<(Ipv4Addr, Attachment)>, IpamError> {
        let mut out = Vec::new();
        for name in list_dir(&self.store.dir.join("ips"))? {
            let Ok(ip) = name.parse::<Ipv4Addr>() else {
                continue;
            };
            if let Some(a) = read_link(&self.ips(ip))?
                .as_deref()
                .and_then(Attachment::from_key)
            {
                out.push((ip, a));
            }
        }
        out.sort();
        Ok(out)
    }

    fn used(&self) -> Result<HashSet<Ipv4Addr>, IpamError> {
        Ok(list_dir(&self.store.dir.join("ips"))?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect())
    }

    /// How many usable addresses are free.
    pub fn free(&self) -> Result<u32, IpamError> {
        let (lo, hi) = usable(self.store.subnet);
        let used = self
            .used()?
            .into_iter()
            .filter(|ip| (lo..hi).contains(&u32::from(*ip)))
            .count() as u32;
        Ok((hi - lo).saturating_sub(used))
    }

    /// The attachment's address: the one it already has, or a new one.
    /// Returns whether it was newly allocated (the caller's rollback releases
    /// only those).
    pub fn allocate(&self, a: &Attachment) -> Result<(Ipv4Addr, bool), IpamError> {
        let key = a.key();
        let att = self.att(a);
        if let Some(target) = read_link(&att)? {
            if let Ok(ip) = target.parse::<Ipv4Addr>() {
                let ips = self.ips(ip);
                match read_link(&ips)? {
                    Some(owner) if owner == key => return Ok((ip, false)),
                    // Debris of a crash between the two symlinks: finish it.
                    None if self.store.subnet.contains(&ip)
                        && u32::from(ip) != u32::from(self.store.subnet.network())
                        && ip != self.store.subnet.broadcast() =>
                    {
                        match symlink(&key, &ips) {
                            Ok(()) => return Ok((ip, true)),
                            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                            Err(e) => return Err(io_err("create IPAM allocation", &ips)(e)),
                        }
                    }
                    _ => {}
                }
            }
            remove(&att)?;
        }
        let used = self.used()?;
        let last = self.store.dir.join("last");
        let cursor = read_link(&last)?.and_then(|t| t.parse().ok());
        let mut used = used;
        loop {
            let ip = pick(self.store.subnet, &used, cursor).ok_or_else(|| {
                let (lo, hi) = usable(self.store.subnet);
                IpamError::Exhausted {
                    subnet: self.store.subnet,
                    size: hi - lo,
                }
            })?;
            symlink(ip.to_string(), &att).map_err(io_err("create IPAM attachment", &att))?;
            let ips = self.ips(ip);
            match symlink(&key, &ips) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Not possible under the lock unless someone edits the
                    // directory by hand; skip the address.
                    remove(&att)?;
                    used.insert(ip);
                    continue;
                }
                Err(e) => {
                    let err = io_err("create IPAM allocation", &ips)(e);
                    let _ = remove(&att);
                    return Err(err);
                }
            }
            // The cursor is advisory: a crash here only changes which
            // address comes next.
            let tmp = self.store.dir.join("last.tmp");
            let _ = remove(&tmp);
            if symlink(ip.to_string(), &tmp).is_ok() {
                let _ = fs::rename(&tmp, &last);
            }
            return Ok((ip, true));
        }
    }

    /// Releases the attachment's address; `Ok(None)` when it had none.
    pub fn release(&self, a: &Attachment) -> Result<Option<Ipv4Addr>, IpamError> {
        let att = self.att(a);
        let Some(target) = read_link(&att)? else {
            return Ok(None);
        };
        let mut released = None;
        if let Ok(ip) = target.parse::<Ipv4Addr>() {
            let ips = self.ips(ip);
            if read_link(&ips)?.as_deref() == Some(a.key().as_str()) {
                remove(&ips)?;
                released = Some(ip);
            }
        }
        remove(&att)?;
        Ok(released)
    }

    /// What [`Locked::gc`] would remove: entry paths, and the attachments
    /// that had any state (their interfaces should go too).
    pub fn gc_plan(&self, valid: &HashSet<Attachment>) -> Result<GcPlan, IpamError> {
        let mut plan = GcPlan::default();
        for sub in ["ips", "att"] {
            for name in list_dir(&self.store.dir.join(sub))? {
                let path = self.store.dir.join(sub).join(&name);
                let owner = if sub == "ips" {
                    read_link(&path)?.as_deref().and_then(Attachment::from_key)
                } else {
                    Attachment::from_key(&name)
                };
                match owner {
                    Some(a) if valid.contains(&a) => {}
                    Some(a) => {
                        plan.remove.push(path);
                        plan.gone.insert(a);
                    }
                    None => plan.remove.push(path),
                }
            }
        }
        // ips before att: the invariant of the module doc holds at every step.
        plan.remove.push(self.store.dir.join("last.tmp"));
        Ok(plan)
    }

    /// Attachments whose state [`Locked::gc`] would remove.
    pub fn gc_preview(
        &self,
        valid: &HashSet<Attachment>,
    ) -> Result<BTreeSet<Attachment>, IpamError> {
        Ok(self.gc_plan(valid)?.gone)
    }

    /// Releases every allocation, and removes every attachment entry, whose
    /// attachment is not in `valid`, plus crash debris. Returns the
    /// attachments that had any state.
    pub fn gc(&self, valid: &HashSet<Attachment>) -> Result<BTreeSet<Attachment>, IpamError> {
        let plan = self.gc_plan(valid)?;
        for p in &plan.remove {
            remove(p)?;
        }
        Ok(plan.gone)
    }
}

/// The result of [`Locked::gc_plan`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcPlan {
    /// Entries to unlink, in order.
    pub remove: Vec<PathBuf>,
    /// Attachments that lose state.
    pub gone: BTreeSet<Attachment>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(c: &str) -> Attachment {
        Attachment::new(c, "eth0").unwrap()
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn pick_round_robin_and_exhaustion() {
        let net: Ipv4Net = "10.0.0.0/30".parse().unwrap();
        let mut used = HashSet::new();
        assert_eq!(pick(net, &used, None), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            pick(net, &used, Some("10.0.0.1".parse().unwrap())),
            Some("10.0.0.2".parse().unwrap())
        );
        // wraps after the last usable address
        assert_eq!(
            pick(net, &used, Some("10.0.0.2".parse().unwrap())),
            Some("10.0.0.1".parse().unwrap())
        );
        used.insert("10.0.0.1".parse().unwrap());
        used.insert("10.0.0.2".parse().unwrap());
        assert_eq!(pick(net, &used, None), None);
    }

    #[test]
    fn allocate_is_idempotent_and_release_frees() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path().join("net"), "10.1.0.0/29".parse().unwrap());
        let l = s.lock(T).unwrap();
        let (a1, new1) = l.allocate(&att("a")).unwrap();
        assert!(new1);
        assert_eq!(l.allocate(&att("a")).unwrap(), (a1, false));
        let (b1, _) = l.allocate(&att("b")).unwrap();
        assert_ne!(a1, b1);
        assert_eq!(l.get(&att("a")).unwrap(), Some(a1));
        assert_eq!(l.free().unwrap(), 4);
        assert_eq!(l.release(&att("a")).unwrap(), Some(a1));
        assert_eq!(l.release(&att("a")).unwrap(), None);
        assert_eq!(l.get(&att("a")).unwrap(), None);
        // round robin: the next address is not the one just freed
        let (c1, _) = l.allocate(&att("c")).unwrap();
        assert_ne!(c1, a1);
        assert_eq!(l.list().unwrap().len(), 2);
    }

    #[test]
    fn exhaustion_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path().join("net"), "10.1.0.0/30".parse().unwrap());
        let l = s.lock(T).unwrap();
        l.allocate(&att("a")).unwrap();
        l.allocate(&att("b")).unwrap();
        let err = l.allocate(&att("c")).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { size: 2, .. }), "{err}");
        assert_eq!(l.get(&att("c")).unwrap(), None);
        assert_eq!(fs::read_dir(dir.path().join("net/att")).unwrap().count(), 2);
    }

    #[test]
    fn crash_debris_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path().join("net"), "10.1.0.0/29".parse().unwrap());
        let l = s.lock(T).unwrap();
        // kill -9 between the att and ips symlinks of an ADD for "a"
        symlink("10.1.0.3", dir.path().join("net/att/a:eth0")).unwrap();
        assert_eq!(l.get(&att("a")).unwrap(), None);
        assert_eq!(l.free().unwrap(), 6, "debris takes no address");
        // the retried ADD finishes the allocation
        assert_eq!(
            l.allocate(&att("a")).unwrap(),
            ("10.1.0.3".parse().unwrap(), true)
        );
        // debris whose address another attachment took meanwhile
        symlink("10.1.0.3", dir.path().join("net/att/b:eth0")).unwrap();
        let (b, _) = l.allocate(&att("b")).unwrap();
        assert_ne!(b, "10.1.0.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(l.get(&att("a")).unwrap(), Some("10.1.0.3".parse().unwrap()));
        // half a DEL (ips removed, att left) is finished by the next DEL
        fs::remove_file(dir.path().join("net/ips").join(b.to_string())).unwrap();
        assert_eq!(l.release(&att("b")).unwrap(), None);
        assert!(!dir.path().join("net/att/b:eth0").exists());
        assert!(fs::symlink_metadata(dir.path().join("net/att/b:eth0")).is_err());
    }

    #[test]
    fn gc_keeps_only_valid() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path().join("net"), "10.1.0.0/28".parse().unwrap());
        let l = s.lock(T).unwrap();
        for c in ["a", "b", "c"] {
            l.allocate(&att(c)).unwrap();
        }
        symlink("10.1.0.9", dir.path().join("net/att/d:eth0")).unwrap();
        symlink("garbage", dir.path().join("net/ips/10.1.0.10")).unwrap();
        let valid: HashSet<_> = [att("b")].into_iter().collect();
        let gone = l.gc(&valid).unwrap();
        assert_eq!(
            gone.into_iter().map(|a| a.container_id).collect::<Vec<_>>(),
            ["a", "c", "d"]
        );
        let left = l.list().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1, att("b"));
        assert_eq!(fs::read_dir(dir.path().join("net/ips")).unwrap().count(), 1);
        assert_eq!(fs::read_dir(dir.path().join("net/att")).unwrap().count(), 1);
    }

    #[test]
    fn lock_times_out_with_locked_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path().join("net"), "10.1.0.0/28".parse().unwrap());
        let _held = s.lock(T).unwrap();
        // flock locks belong to the open file description: a second open conflicts
        let err = s.lock(Duration::from_millis(30)).unwrap_err();
        assert!(matches!(err, IpamError::Locked { .. }), "{err}");
    }
}
