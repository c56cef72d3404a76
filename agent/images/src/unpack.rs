//! Layer unpacking: a (gzip or plain) tar stream into an empty directory, in
//! the form overlayfs stacks: OCI whiteouts become overlay whiteouts (`.wh.x`
//! -> character device 0:0 named `x`; `.wh..wh..opq` -> xattr
//! `trusted.overlay.opaque=y` on its directory).
//!
//! Modes, ownership, mtimes, symlinks, hard links, devices, fifos and
//! `SCHILY.xattr.*` extended attributes are kept. Entries whose path leaves the
//! destination (`..`), or whose parent inside this layer is a symlink (which
//! could point anywhere, e.g. `/etc`), are refused: the whole layer fails.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::digest::{Digest, HashingReader};
use crate::manifest::{Compression, layer_compression};

/// The xattr overlayfs reads to make a directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct UnpackError {
    /// The tar entry (or file) concerned.
    pub path: String,
    /// What went wrong.
    pub detail: String,
}

fn uerr(path: impl std::fmt::Display, detail: impl std::fmt::Display) -> UnpackError {
    UnpackError {
        path: path.to_string(),
        detail: detail.to_string(),
    }
}

/// What a tar entry name means once cleaned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryPath {
    /// The root of the layer (`./`).
    Root,
    /// An ordinary path, relative, without `.` or `..`.
    Path(PathBuf),
    /// `dir/.wh.name`: `dir/name` is deleted.
    Whiteout(PathBuf),
    /// `dir/.wh..wh..opq`: `dir` hides what lower layers have in it.
    Opaque(PathBuf),
    /// Other `.wh..wh.*` metadata (aufs hard-link dirs): ignored.
    Ignored,
}

/// Cleans a tar entry name: leading `/` and `.` components dropped, `..`
/// refused, whiteouts recognised.
pub fn classify(name: &[u8]) -> Result<EntryPath, String> {
    let rel = clean_relative(name)?;
    let Some(rel) = rel else {
        return Ok(EntryPath::Root);
    };
    let base = rel
        .file_name()
        .and_then(|b| b.to_str())
        .unwrap_or_default()
        .to_string();
    let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    if base == OPAQUE_MARKER {
        return Ok(EntryPath::Opaque(parent));
    }
    if base.starts_with(".wh..wh.") {
        return Ok(EntryPath::Ignored);
    }
    if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(format!("bad whiteout name {base:?}"));
        }
        return Ok(EntryPath::Whiteout(parent.join(hidden)));
    }
    Ok(EntryPath::Path(rel))
}

/// A relative path without `.`/`..`/root components; `None` for the root.
pub fn clean_relative(name: &[u8]) -> Result<Option<PathBuf>, String> {
    use std::os::unix::ffi::OsStrExt;
    if name.contains(&0) {
        return Err("path contains NUL".to_string());
    }
    let p = Path::new(std::ffi::OsStr::from_bytes(name));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("path {:?} contains '..'", p.display().to_string()));
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return Err("path has a prefix".to_string()),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// Unpacks the layer blob at `blob` (media type `media_type`) into `dest`
/// (an existing, empty directory) and returns the digest of the uncompressed
/// tar stream (the config's diff_id).
pub fn unpack_layer_file(
    blob: &Path,
    media_type: &str,
    dest: &Path,
) -> Result<Digest, UnpackError> {
    let mut f = File::open(blob).map_err(|e| uerr(blob.display(), format!("open: {e}")))?;
    let mut head = [0u8; 4];
    let n =
        read_up_to(&mut f, &mut head).map_err(|e| uerr(blob.display(), format!("read: {e}")))?;
    let compression =
        layer_compression(media_type, &head[..n]).map_err(|e| uerr(blob.display(), e))?;
    let f = File::open(blob).map_err(|e| uerr(blob.display(), format!("open: {e}")))?;
    let buffered = BufReader::with_capacity(256 * 1024, f);
    match compression {
        Compression::None => unpack_tar(buffered, dest),
        Compression::Gzip => unpack_tar(flate2::read::MultiGzDecoder::new(buffered), dest),
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Unpacks an uncompressed tar stream into `dest`; returns its digest.
pub fn unpack_tar<R: Read>(reader: R, dest: &Path) -> Result<Digest, UnpackError> {
    let root = running_as_root();
    let mut archive = tar::Archive::new(HashingReader::new(reader));
    // Directories by path relative to `dest` (empty: `dest` itself).
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| uerr(dest.display(), format!("read tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| uerr(dest.display(), format!("read tar: {e}")))?;
        let name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&name).into_owned();
        unpack_entry(&mut entry, &name, dest, root, &mut dir_times).map_err(|e| uerr(&shown, e))?;
    }
    // Directory mtimes last: creating their children changed them. A later
    // entry may have replaced a directory (or one of its parents) with a
    // link, a fifo or a device: only what is still a real directory, reached
    // through real directories, is opened.
    for (rel, mtime) in dir_times.iter().rev() {
        if let (Some(d), Some(t)) = (open_dir_inside(dest, rel), system_time(*mtime)) {
            let _ = d.set_modified(t);
        }
    }
    // The diff_id covers the whole stream, padding after the end marker too.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())
        .map_err(|e| uerr(dest.display(), format!("read tar: {e}")))?;
    Ok(rest.finish().0)
}

/// An entry's mtime (Unix seconds) as a time, `None` past what the system
/// can hold (a tar's base-256 or PAX mtime can say up to 2^64 - 1 s): such a
/// file keeps the time it was written.
fn system_time(secs: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// `dest/rel` opened if it is a directory and no component of `rel` is a
/// symbolic link (so nothing outside `dest` is opened, and a fifo or device
/// never is: opening a fifo would block for good).
fn open_dir_inside(dest: &Path, rel: &Path) -> Option<File> {
    if !rel.as_os_str().is_empty() {
        prepare_parents(dest, rel, false).ok()?;
    }
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(dest.join(rel))
        .ok()
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Owner, mode, mtime and xattrs of an entry (PAX records override the header).
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, String> {
    let h = entry.header();
    let mut m = Meta {
        uid: h.uid().map_err(|e| format!("uid: {e}"))? as u32,
        gid: h.gid().map_err(|e| format!("gid: {e}"))? as u32,
        mode: h.mode().map_err(|e| format!("mode: {e}"))? & 0o7777,
        mtime: h.mtime().unwrap_or(0),
        xattrs: Vec::new(),
    };
    if let Ok(Some(pax)) = entry.pax_extensions() {
        for ext in pax {
            let ext = ext.map_err(|e| format!("pax header: {e}"))?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let num = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.split('.').next()?.parse::<u64>().ok())
            };
            match key {
                "uid" => m.uid = num().ok_or("bad pax uid")? as u32,
                "gid" => m.gid = num().ok_or("bad pax gid")? as u32,
                "mtime" => m.mtime = num().unwrap_or(m.mtime),
                k => {
                    if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                        m.xattrs.push((x.to_string(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok(m)
}

/// Makes the parents of `rel` exist as real directories inside `dest`,
/// refusing symlinks and non-directories on the way.
fn prepare_parents(dest: &Path, rel: &Path, create: bool) -> Result<(), String> {
    let mut cur = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(format!(
                    "parent {} is a symlink: refusing to write through it",
                    cur.strip_prefix(dest).unwrap_or(&cur).display()
                ));
            }
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "parent {} is not a directory",
                    cur.strip_prefix(dest).unwrap_or(&cur).display()
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&cur)
                    .map_err(|e| format!("create parent {}: {e}", cur.display()))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("chmod {}: {e}", cur.display()))?;
            }
            Err(e) => return Err(format!("stat {}: {e}", cur.display())),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (unless it is a directory and `keep_dir`).
/// Returns true if a directory was kept.
fn clear(path: &Path, keep_dir: bool) -> Result<bool, String> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => {
            if keep_dir {
                return Ok(true);
            }
            fs::remove_dir_all(path).map_err(|e| format!("remove {}: {e}", path.display()))?;
        }
        Ok(_) => fs::remove_file(path).map_err(|e| format!("remove {}: {e}", path.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("stat {}: {e}", path.display())),
    }
    Ok(false)
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    name: &[u8],
    dest: &Path,
    root: bool,
    dir_times: &mut Vec<(PathBuf, u64)>,
) -> Result<(), String> {
    use tar::EntryType as T;
    let kind = entry.header().entry_type();
    let rel = match classify(name)? {
        EntryPath::Ignored => return Ok(()),
        EntryPath::Root => {
            if kind == T::Directory {
                let m = meta(entry)?;
                apply_meta(dest, &m, root, false)?;
                dir_times.push((PathBuf::new(), m.mtime));
            }
            return Ok(());
        }
        EntryPath::Whiteout(rel) => {
            prepare_parents(dest, &rel, true)?;
            let full = dest.join(&rel);
            clear(&full, false)?;
            mknod(&full, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| format!("create whiteout {}: {e}", full.display()))?;
            return Ok(());
        }
        EntryPath::Opaque(rel) => {
            let full = if rel.as_os_str().is_empty() {
                dest.to_path_buf()
            } else {
                prepare_parents(dest, &rel, true)?;
                let full = dest.join(&rel);
                if !clear(&full, true)? {
                    fs::create_dir(&full).map_err(|e| format!("create {}: {e}", full.display()))?;
                }
                full
            };
            xattr::set(&full, OPAQUE_XATTR, b"y")
                .map_err(|e| format!("set {OPAQUE_XATTR} on {}: {e}", full.display()))?;
            return Ok(());
        }
        EntryPath::Path(rel) => rel,
    };
    prepare_parents(dest, &rel, true)?;
    let full = dest.join(&rel);
    let m = meta(entry)?;
    match kind {
        T::Directory => {
            if !clear(&full, true)? {
                fs::create_dir(&full).map_err(|e| format!("create dir: {e}"))?;
            }
            apply_meta(&full, &m, root, false)?;
            dir_times.push((rel, m.mtime));
        }
        T::Regular | T::Continuous => {
            clear(&full, false)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&full)
                .map_err(|e| format!("create file: {e}"))?;
            io::copy(entry, &mut f).map_err(|e| format!("write file: {e}"))?;
            apply_meta(&full, &m, root, false)?;
            if let Some(t) = system_time(m.mtime) {
                let _ = f.set_modified(t);
            }
        }
        T::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or("symlink without a target")?
                .into_owned();
            clear(&full, false)?;
            use std::os::unix::ffi::OsStrExt;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &full)
                .map_err(|e| format!("create symlink: {e}"))?;
            apply_meta(&full, &m, root, true)?;
        }
        T::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or("hard link without a target")?
                .into_owned();
            let target_rel = clean_relative(&target)?.ok_or("hard link to the layer root")?;
            prepare_parents(dest, &target_rel, false)
                .map_err(|e| format!("hard link target: {e}"))?;
            let target_full = dest.join(&target_rel);
            let md = fs::symlink_metadata(&target_full).map_err(|e| {
                format!(
                    "hard link target {} (must be earlier in this layer): {e}",
                    target_rel.display()
                )
            })?;
            if md.is_dir() {
                return Err(format!("hard link to directory {}", target_rel.display()));
            }
            if target_full != full {
                clear(&full, false)?;
                fs::hard_link(&target_full, &full).map_err(|e| format!("create hard link: {e}"))?;
            }
        }
        T::Char | T::Block | T::Fifo => {
            let h = entry.header();
            let major = h.device_major().ok().flatten().unwrap_or(0);
            let minor = h.device_minor().ok().flatten().unwrap_or(0);
            let sflag = match kind {
                T::Char => SFlag::S_IFCHR,
                T::Block => SFlag::S_IFBLK,
                _ => SFlag::S_IFIFO,
            };
            clear(&full, false)?;
            mknod(
                &full,
                sflag,
                Mode::from_bits_truncate(m.mode),
                makedev(major.into(), minor.into()),
            )
            .map_err(|e| format!("mknod: {e}"))?;
            apply_meta(&full, &m, root, false)?;
        }
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => {}
        other => return Err(format!("unsupported tar entry type {other:?}")),
    }
    Ok(())
}

fn apply_meta(path: &Path, m: &Meta, root: bool, symlink: bool) -> Result<(), String> {
    // chown first: it clears set-id bits, which chmod then restores.
    match std::os::unix::fs::lchown(path, Some(m.uid), Some(m.gid)) {
        Ok(()) => {}
        Err(e) if !root && e.kind() == io::ErrorKind::PermissionDenied => {}
        Err(e) => return Err(format!("chown {}:{}: {e}", m.uid, m.gid)),
    }
    if !symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(m.mode))
            .map_err(|e| format!("chmod {:o}: {e}", m.mode))?;
    }
    for (name, value) in &m.xattrs {
        match xattr::set(path, name, value) {
            Ok(()) => {}
            // Filesystems without xattrs, or an unprivileged test run.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => {}
            Err(e) if !root && e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(format!("set xattr {name}: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_entry_names() {
        let p = |s: &str| PathBuf::from(s);
        let cases: &[(&str, Result<EntryPath, ()>)] = &[
            ("./", Ok(EntryPath::Root)),
            ("/", Ok(EntryPath::Root)),
            (".", Ok(EntryPath::Root)),
            ("bin/busybox", Ok(EntryPath::Path(p("bin/busybox")))),
            ("./bin/./sh", Ok(EntryPath::Path(p("bin/sh")))),
            ("/etc/passwd", Ok(EntryPath::Path(p("etc/passwd")))),
            ("etc//hosts/", Ok(EntryPath::Path(p("etc/hosts")))),
            (
                "data/.wh.old.txt",
                Ok(EntryPath::Whiteout(p("data/old.txt"))),
            ),
            (".wh.top", Ok(EntryPath::Whiteout(p("top")))),
            ("etc/app/.wh..wh..opq", Ok(EntryPath::Opaque(p("etc/app")))),
            (".wh..wh..opq", Ok(EntryPath::Opaque(p("")))),
            (
                ".wh..wh.plnk/123",
                Ok(EntryPath::Path(p(".wh..wh.plnk/123"))),
            ),
            (".wh..wh.plnk", Ok(EntryPath::Ignored)),
            ("../etc/passwd", Err(())),
            ("a/../../b", Err(())),
            ("a/..", Err(())),
            ("a/.wh...", Err(())),
            ("a/.wh.", Err(())),
        ];
        for (name, want) in cases {
            let got = classify(name.as_bytes()).map_err(|_| ());
            assert_eq!(&got, want, "{name}");
        }
        assert!(classify(b"a\0b").is_err());
    }
}
