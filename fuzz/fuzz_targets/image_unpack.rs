//! Layer tars unpacked into a directory (`unpack::unpack_tar`, what a pull
//! does with every layer) and image archives unpacked for import
//! (`archive::unpack_archive`, the agent's drop box). Whatever the tar
//! holds, nothing outside the destination may change: a sandbox directory
//! next to it (reachable as `../../outside` from the destination) is
//! compared before and after every run.
//!
//! Input: one byte (even: a layer, odd: an image archive), then the tar.
//! Header checksums are recomputed before unpacking ([`fix_checksums`]), so
//! that a mutated name, type or link still reaches the unpacking code
//! rather than failing the tar reader's checksum test.

#![no_main]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use keelson_images::{archive, unpack};
use libfuzzer_sys::fuzz_target;

/// The sandbox: `outside/` (what must not change) and `work/` (where each
/// run gets a fresh destination).
struct Sandbox {
    dir: tempfile::TempDir,
    before: Snapshot,
}

/// Every entry below `outside/`, and the sandbox's own top level.
type Snapshot = BTreeMap<PathBuf, String>;

fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("keelson-fuzz-unpack.")
            .tempdir()
            .expect("create the sandbox");
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::write(outside.join("file"), b"sentinel\n").unwrap();
        fs::write(outside.join("dir/inner"), b"inner\n").unwrap();
        std::os::unix::fs::symlink("file", outside.join("link")).unwrap();
        fs::create_dir(dir.path().join("work")).unwrap();
        let before = snapshot(dir.path());
        Sandbox { dir, before }
    })
}

fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    for e in fs::read_dir(root).expect("list the sandbox").flatten() {
        out.insert(PathBuf::from(e.file_name()), String::new());
    }
    walk(&root.join("outside"), Path::new("outside"), &mut out);
    out
}

fn walk(path: &Path, rel: &Path, out: &mut Snapshot) {
    let md = fs::symlink_metadata(path).expect("stat in the sandbox");
    let mut xattrs: Vec<String> = xattr_names(path);
    xattrs.sort();
    let mut desc = format!(
        "type={:?} mode={:o} uid={} gid={} len={} mtime={}.{} xattrs={xattrs:?}",
        md.file_type(),
        md.mode(),
        md.uid(),
        md.gid(),
        md.len(),
        md.mtime(),
        md.mtime_nsec(),
    );
    if md.is_file() {
        desc.push_str(&format!(" data={:?}", fs::read(path).unwrap_or_default()));
    } else if md.file_type().is_symlink() {
        desc.push_str(&format!(" target={:?}", fs::read_link(path).ok()));
    }
    out.insert(rel.to_path_buf(), desc);
    if md.is_dir() {
        for e in fs::read_dir(path).expect("list in the sandbox").flatten() {
            walk(&e.path(), &rel.join(e.file_name()), out);
        }
    }
}

/// The extended attributes of `path` itself (a link's own, not its target's).
fn xattr_names(path: &Path) -> Vec<String> {
    xattr::list(path)
        .map(|names| {
            names
                .map(|n| {
                    let value = xattr::get(path, &n).ok().flatten();
                    format!("{}={value:?}", n.to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn fresh_dest(root: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    root.join("work").join(format!("dest{n}"))
}

fn remove(dest: &Path) {
    if fs::remove_dir_all(dest).is_err() {
        // Not root: a layer may have left directories without write
        // permission. Open them up and try again; a leftover is harmless.
        open_up(dest);
        let _ = fs::remove_dir_all(dest);
    }
}

fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            open_up(&e.path());
        }
    }
}

/// Walks the tar's headers (each followed by its data, rounded up to 512
/// bytes) and writes each header's correct checksum into it.
fn fix_checksums(tar: &mut [u8]) {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let h = &mut tar[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            at += 512;
            continue;
        }
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = std::str::from_utf8(&h[124..136])
            .ok()
            .and_then(|s| {
                u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok()
            })
            .unwrap_or(0);
        let data = usize::try_from(size.div_ceil(512) * 512).unwrap_or(usize::MAX);
        at = at.saturating_add(512).saturating_add(data);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, tar)) = data.split_first() else {
        return;
    };
    let mut tar = tar.to_vec();
    fix_checksums(&mut tar);
    let tar = &tar[..];
    let s = sandbox();
    let root = s.dir.path();
    let dest = fresh_dest(root);
    if which & 1 == 0 {
        fs::create_dir(&dest).expect("create the destination");
        let _ = unpack::unpack_tar(tar, &dest);
    } else {
        let file = root.join("work/input.tar");
        fs::write(&file, tar).expect("write the archive");
        let _ = archive::unpack_archive(&file, &dest);
        let _ = fs::remove_file(&file);
    }
    remove(&dest);
    let after = snapshot(root);
    if after != s.before {
        let mut diff = String::new();
        for (k, v) in &s.before {
            if after.get(k) != Some(v) {
                diff.push_str(&format!("\n  {}: {v} -> {:?}", k.display(), after.get(k)));
            }
        }
        for (k, v) in &after {
            if !s.before.contains_key(k) {
                diff.push_str(&format!("\n  {}: new: {v}", k.display()));
            }
        }
        panic!("unpacking changed what is outside its destination:{diff}");
    }
});
