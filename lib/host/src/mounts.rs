//! Mounts the agent makes outside container root filesystems: tmpfs for
//! volumes that must never reach the disk, and the unmounting of what is
//! left under a directory before it is removed.

use std::path::{Path, PathBuf};

/// A mount operation that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct MountError {
    /// The operation.
    pub op: &'static str,
    /// The path it was about.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MountError + 'a {
    move |source| MountError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Mount points in `/proc/self/mountinfo` text, unescaped (`\040` is a space).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            let mut out = String::new();
            let mut rest = m;
            while let Some(i) = rest.find('\\') {
                out.push_str(&rest[..i]);
                let code = rest
                    .get(i + 1..i + 4)
                    .and_then(|o| u8::from_str_radix(o, 8).ok());
                match code {
                    Some(c) => {
                        out.push(c as char);
                        rest = &rest[i + 4..];
                    }
                    None => {
                        out.push('\\');
                        rest = &rest[i + 1..];
                    }
                }
            }
            out.push_str(rest);
            PathBuf::from(out)
        })
        .collect()
}

fn current_mounts() -> Result<Vec<PathBuf>, MountError> {
    let p = Path::new("/proc/self/mountinfo");
    let info = std::fs::read_to_string(p).map_err(err("read", p))?;
    Ok(mount_points(&info))
}

/// Whether something is mounted at `dir`.
pub fn is_mounted(dir: &Path) -> Result<bool, MountError> {
    Ok(current_mounts()?.iter().any(|m| m == dir))
}

/// Mounts a tmpfs (nosuid, nodev, mode 0755) at `dir`, of `size` bytes if
/// given, unless one is mounted there already.
pub fn mount_tmpfs(dir: &Path, size: Option<u64>) -> Result<(), MountError> {
    if is_mounted(dir)? {
        return Ok(());
    }
    let mut opts = "mode=0755".to_string();
    if let Some(s) = size {
        opts.push_str(&format!(",size={s}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| err("mount tmpfs on", dir)(e.into()))
}

/// Unmounts (lazily) every mount point at or below `dir`, deepest first.
/// Nothing mounted is success.
pub fn unmount_under(dir: &Path) -> Result<(), MountError> {
    let mut points: Vec<PathBuf> = current_mounts()?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        match nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(err("unmount", &p)(e.into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_unescaped() {
        let info = "36 35 98:0 / /mnt/a\\040b rw - tmpfs t rw\n37 35 98:0 / /run rw - tmpfs t rw\n";
        assert_eq!(
            mount_points(info),
            [PathBuf::from("/mnt/a b"), PathBuf::from("/run")]
        );
    }

    #[test]
    fn tmpfs_mounts_once_and_unmounts_under_a_dir() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        std::fs::create_dir(&dir).unwrap();
        mount_tmpfs(&dir, Some(1 << 20)).unwrap();
        mount_tmpfs(&dir, Some(1 << 20)).unwrap(); // already: no second mount
        assert_eq!(
            current_mounts()
                .unwrap()
                .iter()
                .filter(|m| **m == dir)
                .count(),
            1
        );
        // Bounded: 2 MiB does not fit in 1 MiB.
        assert!(std::fs::write(dir.join("big"), vec![0u8; 2 << 20]).is_err());
        unmount_under(tmp.path()).unwrap();
        assert!(!is_mounted(&dir).unwrap());
        unmount_under(tmp.path()).unwrap(); // nothing left: still fine
    }
}
