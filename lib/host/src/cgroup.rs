//! Which cgroup layout a machine has, found the one way: by what is mounted
//! under the cgroupfs root (normally /sys/fs/cgroup).

use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};

/// The cgroup layout under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Pure cgroup v2: the root is the unified hierarchy (most production
    /// nodes today).
    V2,
    /// cgroup v1 controllers under the root, and a cgroup2 hierarchy (no
    /// or few controllers; BPF socket hooks attach there) at `unified`.
    Hybrid {
        /// The cgroup2 mount, `<root>/unified`.
        unified: PathBuf,
    },
    /// cgroup v1 only.
    V1,
}

/// The layout under `root`; `None` when neither is mounted there.
pub fn layout(root: &Path) -> Option<Layout> {
    let magic = |p: &Path| statfs(p).ok().map(|s| s.filesystem_type());
    if magic(root) == Some(CGROUP2_SUPER_MAGIC) {
        return Some(Layout::V2);
    }
    let unified = root.join("unified");
    if magic(&unified) == Some(CGROUP2_SUPER_MAGIC) {
        return Some(Layout::Hybrid { unified });
    }
    let v1 = std::fs::read_dir(root)
        .ok()?
        .flatten()
        .any(|e| magic(&e.path()) == Some(CGROUP_SUPER_MAGIC));
    v1.then_some(Layout::V1)
}

/// The cgroup2 hierarchy under `root`: `root` itself on a pure v2 host,
/// `root/unified` on a hybrid one.
pub fn cgroup2_dir(root: &Path) -> Option<PathBuf> {
    match layout(root)? {
        Layout::V2 => Some(root.to_path_buf()),
        Layout::Hybrid { unified } => Some(unified),
        Layout::V1 => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_has_no_layout() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("unified")).unwrap();
        assert_eq!(layout(t.path()), None);
        assert_eq!(cgroup2_dir(t.path()), None);
    }

    #[test]
    fn this_machine_has_a_cgroup2_hierarchy() {
        let root = Path::new("/sys/fs/cgroup");
        // Pure v2 or hybrid: either way one cgroup2 directory, detected.
        match layout(root) {
            Some(Layout::V2) => assert_eq!(cgroup2_dir(root).unwrap(), root),
            Some(Layout::Hybrid { unified }) => {
                assert_eq!(cgroup2_dir(root).unwrap(), unified);
                assert!(unified.join("cgroup.procs").exists());
            }
            other => eprintln!("no cgroup2 here ({other:?}): nothing to check"),
        }
    }
}
