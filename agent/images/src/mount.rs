//! Container root filesystems: an overlay of the image's unpacked layers
//! (read-only lower dirs, topmost first) with the container's upper and work
//! dirs, mounted at `container_dir/rootfs`.
//!
//! Layout under `container_dir`: `rootfs/` (the mount point), `upper/` (the
//! container's writes), `work/` (overlayfs scratch), `lower-empty/` (only for
//! an image without layers).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::ImageError;

/// Mount point name under the container dir.
pub const ROOTFS: &str = "rootfs";
const UPPER: &str = "upper";
const WORK: &str = "work";
const EMPTY_LOWER: &str = "lower-empty";

fn io_err(op: &'static str, path: &Path, error: io::Error) -> ImageError {
    ImageError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// The overlay mount data for `layers` (lowest first): `lowerdir` lists them
/// topmost first. Pure.
pub fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> Result<String, String> {
    for p in layers.iter().map(|p| p.as_path()).chain([upper, work]) {
        let s = p
            .to_str()
            .ok_or_else(|| format!("{}: not UTF-8", p.display()))?;
        if s.contains([',', ':', '\n']) || !p.is_absolute() {
            return Err(format!(
                "{s}: overlay paths must be absolute and free of ',' and ':'"
            ));
        }
    }
    let lower: Vec<&str> = layers.iter().rev().filter_map(|p| p.to_str()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    // The kernel takes one page of mount data.
    if opts.len() >= 4096 {
        return Err(format!(
            "overlay options for {} layers are {} bytes; the kernel's limit is 4095",
            layers.len(),
            opts.len()
        ));
    }
    Ok(opts)
}

/// Unescapes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points (field 5) of a /proc/PID/mountinfo text, unescaped. Pure.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// An overlay mount seen in mountinfo: where it is and its lower dirs
/// (topmost first, as mounted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// The mount point.
    pub mount_point: PathBuf,
    /// `lowerdir`'s entries, unescaped.
    pub lower_dirs: Vec<PathBuf>,
}

/// The overlay mounts of a /proc/PID/mountinfo text. Pure.
pub fn overlay_mounts(mountinfo: &str) -> Vec<OverlayMount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let mut t = tail.split(' ');
        if t.next() != Some("overlay") {
            continue;
        }
        let (Some(_source), Some(opts)) = (t.next(), t.next()) else {
            continue;
        };
        let Some(mount_point) = head.split(' ').nth(4) else {
            continue;
        };
        let mut lower_dirs = Vec::new();
        for opt in opts.split(',') {
            // `lowerdir=a:b` (mount(2)), `lowerdir+=a` (fsconfig, one each);
            // `::` separates data-only layers.
            let list = opt
                .strip_prefix("lowerdir=")
                .or_else(|| opt.strip_prefix("lowerdir+="));
            if let Some(list) = list {
                lower_dirs.extend(
                    list.split(':')
                        .filter(|d| !d.is_empty())
                        .map(|d| PathBuf::from(unescape(d))),
                );
            }
        }
        out.push(OverlayMount {
            mount_point: PathBuf::from(unescape(mount_point)),
            lower_dirs,
        });
    }
    out
}

/// The overlay mounts in this process's mount namespace.
pub fn current_overlay_mounts() -> Result<Vec<OverlayMount>, ImageError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| io_err("read", Path::new("/proc/self/mountinfo"), e))?;
    Ok(overlay_mounts(&info))
}

/// True if `path` is a mount point in this process's mount namespace.
pub fn is_mounted(path: &Path) -> Result<bool, ImageError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| io_err("read", Path::new("/proc/self/mountinfo"), e))?;
    let want = path.to_string_lossy();
    Ok(mount_points(&info).iter().any(|m| *m == want))
}

/// An absolute, symlink-free form of `dir` (which must exist).
fn canonical(dir: &Path) -> Result<PathBuf, ImageError> {
    fs::canonicalize(dir).map_err(|e| io_err("resolve", dir, e))
}

fn mkdir(p: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(p).map_err(|e| io_err("create", p, e))
}

/// Mounts an overlay of `layers` (lowest first) at `container_dir/rootfs`.
/// Idempotent: an existing mount there is kept.
pub fn mount_rootfs(layers: &[PathBuf], container_dir: &Path) -> Result<PathBuf, ImageError> {
    mkdir(container_dir)?;
    let dir = canonical(container_dir)?;
    let target = dir.join(ROOTFS);
    let upper = dir.join(UPPER);
    let work = dir.join(WORK);
    mkdir(&target)?;
    if is_mounted(&target)? {
        return Ok(target);
    }
    mkdir(&upper)?;
    mkdir(&work)?;
    let mut lowers = Vec::with_capacity(layers.len().max(1));
    for l in layers {
        if !l.is_dir() {
            return Err(ImageError::Mount {
                op: "overlay mount",
                path: target,
                detail: format!("layer {} is missing", l.display()),
            });
        }
        lowers.push(canonical(l)?);
    }
    if lowers.is_empty() {
        // overlayfs needs a lower dir; an image without layers gets an empty one.
        let empty = dir.join(EMPTY_LOWER);
        mkdir(&empty)?;
        lowers.push(empty);
    }
    let opts = overlay_options(&lowers, &upper, &work).map_err(|detail| ImageError::Mount {
        op: "overlay mount",
        path: target.clone(),
        detail,
    })?;
    nix::mount::mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| ImageError::Mount {
        op: "overlay mount",
        path: target.clone(),
        detail: format!("{e} (options {opts})"),
    })?;
    Ok(target)
}

/// Unmounts `container_dir/rootfs` (lazily if it is busy) and removes the
/// rootfs, upper, work and empty-lower dirs. Idempotent; the container dir
/// itself and anything else in it stay.
pub fn unmount_rootfs(container_dir: &Path) -> Result<(), ImageError> {
    let dir = match fs::canonicalize(container_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("resolve", container_dir, e)),
    };
    let target = dir.join(ROOTFS);
    // A rootfs can be stacked (mounted twice): unmount until nothing is left.
    for _ in 0..16 {
        if !is_mounted(&target)? {
            break;
        }
        match nix::mount::umount2(&target, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY) => {
                tracing::warn!(path = %target.display(), "rootfs busy: lazy unmount");
                nix::mount::umount2(&target, MntFlags::MNT_DETACH).map_err(|e| {
                    ImageError::Mount {
                        op: "lazy unmount",
                        path: target.clone(),
                        detail: e.to_string(),
                    }
                })?;
            }
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                return Err(ImageError::Mount {
                    op: "unmount",
                    path: target.clone(),
                    detail: e.to_string(),
                });
            }
        }
    }
    if is_mounted(&target)? {
        // Never remove_dir_all through a live mount: that would delete
        // the image's layers.
        return Err(ImageError::Mount {
            op: "unmount",
            path: target,
            detail: "still mounted".to_string(),
        });
    }
    for name in [ROOTFS, UPPER, WORK, EMPTY_LOWER] {
        let p = dir.join(name);
        match fs::remove_dir_all(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &p, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_list_topmost_first() {
        let layers = vec![
            PathBuf::from("/s/l/a"),
            PathBuf::from("/s/l/b"),
            PathBuf::from("/s/l/c"),
        ];
        assert_eq!(
            overlay_options(&layers, Path::new("/c/upper"), Path::new("/c/work")).unwrap(),
            "lowerdir=/s/l/c:/s/l/b:/s/l/a,upperdir=/c/upper,workdir=/c/work"
        );
        for bad in ["relative", "/has,comma", "/has:colon"] {
            assert!(
                overlay_options(&[PathBuf::from(bad)], Path::new("/u"), Path::new("/w")).is_err(),
                "{bad}"
            );
        }
        let many: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/{}/{i}", "x".repeat(60))))
            .collect();
        assert!(overlay_options(&many, Path::new("/u"), Path::new("/w")).is_err());
    }

    #[test]
    fn parses_mountinfo() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:50 / /var/lib/k/c1/rootfs rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b,workdir=/c
91 22 0:51 / /tmp/with\\040space/rootfs rw - overlay overlay rw
";
        assert_eq!(
            mount_points(info),
            ["/", "/var/lib/k/c1/rootfs", "/tmp/with space/rootfs"]
        );
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn finds_overlay_lower_dirs() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:50 / /var/lib/k/c1/rootfs rw,relatime - overlay overlay rw,lowerdir=/s/l/b:/s/l/a,upperdir=/c/u,workdir=/c/w,uuid=on
91 22 0:51 / /tmp/with\\040space/rootfs rw - overlay overlay rw,lowerdir+=/s/l/c,lowerdir+=/s/l/d,upperdir=/u,workdir=/w
92 22 0:52 / /x rw - tmpfs tmpfs rw,lowerdir=/not/overlay
";
        let m = overlay_mounts(info);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, Path::new("/var/lib/k/c1/rootfs"));
        assert_eq!(m[0].lower_dirs, [Path::new("/s/l/b"), Path::new("/s/l/a")]);
        assert_eq!(m[1].mount_point, Path::new("/tmp/with space/rootfs"));
        assert_eq!(m[1].lower_dirs, [Path::new("/s/l/c"), Path::new("/s/l/d")]);
    }
}
