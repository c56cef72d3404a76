//! Writes a volume's files the kubelet's way (its AtomicWriter), so that a
//! reader never sees a half-written set:
//!
//! ```text
//! dir/..2026_12_07_05_10_01.123456789/   the files of this version
//! dir/..data -> ..2026_12_07_...           swapped in one rename
//! dir/<top-level name> -> ..data/<name>    one symlink per top-level entry
//! ```
//!
//! A new version is written beside the old one, `..data` is replaced by a
//! rename, the top-level symlinks follow, then the old version goes.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::volumes::{File, Files};

/// The symlink to the current version.
pub const DATA: &str = "..data";

fn version_name() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    format!("..{}", now.strftime("%Y_%m_%d_%H_%M_%S.%f"))
}

/// The files of the current version, read back.
fn current(dir: &Path) -> Option<Files> {
    let target = std::fs::read_link(dir.join(DATA)).ok()?;
    let root = dir.join(target);
    let mut out = Files::new();
    fn walk(root: &Path, rel: &Path, out: &mut Files) -> io::Result<()> {
        for e in std::fs::read_dir(root.join(rel))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            let md = e.metadata()?;
            if md.is_dir() {
                walk(root, &rel, out)?;
            } else {
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    File {
                        data: std::fs::read(root.join(&rel))?,
                        mode: md.permissions().mode() & 0o777,
                    },
                );
            }
        }
        Ok(())
    }
    walk(&root, Path::new(""), &mut out).ok()?;
    Some(out)
}

fn top_level(files: &Files) -> BTreeSet<String> {
    files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect()
}

/// Makes `dir` hold exactly `files` (see the module docs). Returns whether
/// anything changed; an unchanged set writes nothing.
pub fn write(dir: &Path, files: &Files) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let old = std::fs::read_link(dir.join(DATA)).ok();
    if current(dir).as_ref() == Some(files) {
        return Ok(false);
    }
    // The new version, complete before anything points at it.
    let name = version_name();
    let version = dir.join(&name);
    std::fs::create_dir(&version)?;
    for (rel, f) in files {
        let path = version.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &f.data)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))?;
    }
    // Swap `..data` in one rename.
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    // Top-level entries: a symlink into `..data` each; stale ones go.
    let wanted = top_level(files);
    for n in &wanted {
        let link = dir.join(n);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(PathBuf::from(DATA).join(n), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("..") || wanted.contains(&n) {
            continue;
        }
        if e.file_type()?.is_symlink() {
            std::fs::remove_file(e.path())?;
        }
    }
    if let Some(old) = old
        && old.as_os_str() != name.as_str()
    {
        let p = dir.join(old);
        if p.starts_with(dir) && p != dir {
            std::fs::remove_dir_all(p)?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str, u32)]) -> Files {
        pairs
            .iter()
            .map(|(p, d, m)| {
                (
                    p.to_string(),
                    File {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn versions_swap_atomically_and_stale_entries_go() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        let v1 = files(&[("index.html", "one", 0o644), ("conf/a.yaml", "a", 0o600)]);
        assert!(write(&dir, &v1).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.join("index.html")).unwrap(),
            "one"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("conf/a.yaml")).unwrap(),
            "a"
        );
        let mode = std::fs::metadata(dir.join("conf/a.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            std::fs::symlink_metadata(dir.join("index.html"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let first = std::fs::read_link(dir.join(DATA)).unwrap();
        // The same set again: nothing written.
        assert!(!write(&dir, &v1).unwrap());
        assert_eq!(std::fs::read_link(dir.join(DATA)).unwrap(), first);
        // A new set: one new version, the old one and the stale entry gone.
        let v2 = files(&[("index.html", "two", 0o644)]);
        assert!(write(&dir, &v2).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.join("index.html")).unwrap(),
            "two"
        );
        assert!(!dir.join("conf").exists());
        let versions: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != DATA)
            .collect();
        assert_eq!(versions.len(), 1, "{versions:?}");
        assert!(!dir.join(&first).exists());
    }

    #[test]
    fn a_reader_holding_the_old_version_keeps_reading_it_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        write(&dir, &files(&[("a", "1", 0o644), ("b", "1", 0o644)])).unwrap();
        // A reader resolves ..data once, then reads both files.
        let resolved = dir.join(std::fs::read_link(dir.join(DATA)).unwrap());
        let a = std::fs::File::open(resolved.join("a")).unwrap();
        write(&dir, &files(&[("a", "2", 0o644), ("b", "2", 0o644)])).unwrap();
        // Its open file still reads the old, consistent version.
        assert_eq!(io::read_to_string(a).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "2");
        assert_eq!(std::fs::read_to_string(dir.join("b")).unwrap(), "2");
    }
}
