//! Pod sandboxes without a pause container: network, IPC and UTS namespaces
//! created on a short-lived thread and held by bind mounts.
//!
//! Layout: `<run_dir>/<pod uid>/{net,ipc,uts}`, each an nsfs bind mount.
//! `run_dir` itself is made a shared mount point (bind-mounted onto itself
//! if it is not one), as `ip netns` does with /run/netns, so that unmounting
//! a namespace file also unmounts the copies other mount namespaces (runc's
//! containers, made rslave) got when they were created.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use crate::RuntimeError;

/// The namespaces a pod's containers join.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Bind-mounted network namespace (e.g. /run/keelson/netns/<pod uid>).
    pub netns: PathBuf,
    /// Bind-mounted IPC namespace.
    pub ipcns: PathBuf,
    /// Bind-mounted UTS namespace.
    pub utsns: PathBuf,
    /// The node's namespaces the pod shares instead of its own.
    pub host: HostNamespaces,
}

/// The node's namespaces a pod shares (`hostNetwork`, `hostIPC`,
/// `hostPID`): its containers get none of their own for these. A
/// host-network pod shares the node's UTS namespace (its hostname) too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostNamespaces {
    /// The node's network (and UTS) namespace.
    #[serde(default)]
    pub network: bool,
    /// The node's IPC namespace.
    #[serde(default)]
    pub ipc: bool,
    /// The node's PID namespace.
    #[serde(default)]
    pub pid: bool,
}

const KINDS: [&str; 3] = ["net", "ipc", "uts"];

/// The sandbox files of a pod (whether or not they exist).
pub fn paths(run_dir: &Path, pod_uid: &str) -> Sandbox {
    let d = run_dir.join(pod_uid);
    Sandbox {
        netns: d.join("net"),
        ipcns: d.join("ipc"),
        utsns: d.join("uts"),
        host: HostNamespaces::default(),
    }
}

fn failed(msg: String) -> RuntimeError {
    RuntimeError::Failed(msg)
}

/// Whether `file` has something mounted on it (its device differs from its
/// directory's: an nsfs bind mount).
fn is_mounted(file: &Path) -> bool {
    let (Ok(f), Some(Ok(d))) = (
        std::fs::metadata(file),
        file.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    f.dev() != d.dev()
}

fn is_mount_point(dir: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(dir) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy().into_owned();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|mp| unescape(mp) == want))
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Makes `run_dir` a shared mount point (idempotent).
pub fn prepare_run_dir(run_dir: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(run_dir).map_err(|err| RuntimeError::Io {
        op: format!("create sandbox dir {}", run_dir.display()),
        err,
    })?;
    if !is_mount_point(run_dir) {
        mount(
            Some(run_dir),
            run_dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| {
            failed(format!(
                "bind mount sandbox dir {} onto itself: {e}",
                run_dir.display()
            ))
        })?;
    }
    mount(
        None::<&str>,
        run_dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        failed(format!(
            "make sandbox dir {} shared: {e}",
            run_dir.display()
        ))
    })?;
    Ok(())
}

/// Unmounts the `run_dir` mount point made by [`prepare_run_dir`] (for
/// tests and uninstall; sandboxes inside must be removed first).
pub fn release_run_dir(run_dir: &Path) -> Result<(), RuntimeError> {
    if is_mount_point(run_dir) {
        umount2(run_dir, MntFlags::MNT_DETACH)
            .map_err(|e| failed(format!("unmount sandbox dir {}: {e}", run_dir.display())))?;
    }
    Ok(())
}

/// Creates the pod's network, IPC and UTS namespaces (hostname set, `lo`
/// up) and holds them under `run_dir/<uid>/`. Idempotent: an existing
/// sandbox is returned as is.
pub fn create(run_dir: &Path, pod_uid: &str, hostname: &str) -> Result<Sandbox, RuntimeError> {
    create_with(run_dir, pod_uid, hostname, HostNamespaces::default())
}

/// [`create`], sharing the node's namespaces `host` names: those get no
/// file (an empty path) and no namespace of their own.
pub fn create_with(
    run_dir: &Path,
    pod_uid: &str,
    hostname: &str,
    host_ns: HostNamespaces,
) -> Result<Sandbox, RuntimeError> {
    if pod_uid.is_empty() || pod_uid.contains('/') || pod_uid.starts_with('.') {
        return Err(failed(format!(
            "create sandbox {pod_uid:?}: invalid pod uid"
        )));
    }
    let mut sb = paths(run_dir, pod_uid);
    sb.host = host_ns;
    // (kind, file, clone flag) of the namespaces the pod gets of its own.
    let own: Vec<(&str, PathBuf, CloneFlags)> = [
        (
            "net",
            sb.netns.clone(),
            CloneFlags::CLONE_NEWNET,
            host_ns.network,
        ),
        (
            "ipc",
            sb.ipcns.clone(),
            CloneFlags::CLONE_NEWIPC,
            host_ns.ipc,
        ),
        (
            "uts",
            sb.utsns.clone(),
            CloneFlags::CLONE_NEWUTS,
            host_ns.network,
        ),
    ]
    .into_iter()
    .filter(|(.., shared)| !shared)
    .map(|(k, f, c, _)| (k, f, c))
    .collect();
    if host_ns.network {
        sb.netns = PathBuf::new();
        sb.utsns = PathBuf::new();
    }
    if host_ns.ipc {
        sb.ipcns = PathBuf::new();
    }
    if own.iter().all(|(_, f, _)| is_mounted(f)) {
        return Ok(sb);
    }
    prepare_run_dir(run_dir)?;
    let dir = run_dir.join(pod_uid);
    std::fs::create_dir_all(&dir).map_err(|err| RuntimeError::Io {
        op: format!("create sandbox dir {}", dir.display()),
        err,
    })?;
    // A half-made sandbox from an earlier crash: start over.
    for (_, f, _) in &own {
        if is_mounted(f) {
            let _ = umount2(f, MntFlags::MNT_DETACH);
        }
        std::fs::write(f, b"").map_err(|err| RuntimeError::Io {
            op: format!("create {}", f.display()),
            err,
        })?;
    }
    if own.is_empty() {
        return Ok(sb);
    }
    let host = if host_ns.network {
        String::new()
    } else {
        hostname.to_string()
    };
    let flags = own.iter().fold(CloneFlags::empty(), |a, (_, _, c)| a | *c);
    let new_net = !host_ns.network;
    let uid = pod_uid.to_string();
    // The namespaces are created on a thread of their own, which exits
    // afterwards: never on a tokio worker or the caller's thread.
    let res = std::thread::Builder::new()
        .name("keelson-sandbox".into())
        .spawn(move || -> Result<(), RuntimeError> {
            unshare(flags)
                .map_err(|e| failed(format!("unshare namespaces for sandbox {uid}: {e}")))?;
            if !host.is_empty() {
                nix::unistd::sethostname(&host)
                    .map_err(|e| failed(format!("set hostname {host:?} in sandbox {uid}: {e}")))?;
            }
            for (kind, target, _) in &own {
                let src = format!("/proc/thread-self/ns/{kind}");
                mount(
                    Some(src.as_str()),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| failed(format!("bind mount {src} onto {}: {e}", target.display())))?;
            }
            if new_net {
                // A netlink socket opened on this thread lives in the new netns.
                let nl = keelson_host::rtnetlink::Socket::new()
                    .map_err(|e| failed(format!("sandbox {uid}: {e}")))?;
                nl.link_index("lo")
                    .and_then(|lo| nl.set_up(lo, "lo", None))
                    .map_err(|e| failed(format!("sandbox {uid}: {e}")))?;
            }
            Ok(())
        })
        .map_err(|err| RuntimeError::Io {
            op: format!("spawn sandbox thread for {pod_uid}"),
            err,
        })?
        .join()
        .map_err(|_| failed(format!("create sandbox {pod_uid}: thread panicked")))?;
    if let Err(e) = res {
        let _ = remove(run_dir, pod_uid);
        return Err(e);
    }
    Ok(sb)
}

/// Unmounts and deletes the pod's namespace files. Success if absent.
pub fn remove(run_dir: &Path, pod_uid: &str) -> Result<(), RuntimeError> {
    let dir = run_dir.join(pod_uid);
    if !dir.exists() {
        return Ok(());
    }
    for kind in KINDS {
        let f = dir.join(kind);
        while is_mounted(&f) {
            umount2(&f, MntFlags::MNT_DETACH)
                .map_err(|e| failed(format!("unmount sandbox namespace {}: {e}", f.display())))?;
        }
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(RuntimeError::Io {
                    op: format!("remove {}", f.display()),
                    err,
                });
            }
        }
    }
    match std::fs::remove_dir(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(RuntimeError::Io {
            op: format!("remove sandbox dir {}", dir.display()),
            err,
        }),
    }
}

/// The pod uids that have a sandbox directory under `run_dir`.
pub fn list(run_dir: &Path) -> Result<Vec<String>, RuntimeError> {
    let entries = match std::fs::read_dir(run_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(RuntimeError::Io {
                op: format!("list sandboxes in {}", run_dir.display()),
                err,
            });
        }
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_list_on_plain_dirs() {
        let t = tempfile::tempdir().unwrap();
        let sb = paths(t.path(), "u1");
        assert_eq!(sb.netns, t.path().join("u1/net"));
        assert_eq!(sb.utsns, t.path().join("u1/uts"));
        assert_eq!(list(t.path()).unwrap(), Vec::<String>::new());
        std::fs::create_dir(t.path().join("u2")).unwrap();
        std::fs::create_dir(t.path().join("u1")).unwrap();
        std::fs::write(t.path().join("stray"), "").unwrap();
        assert_eq!(list(t.path()).unwrap(), vec!["u1", "u2"]);
        // Unmounted files are removed; absent is success.
        std::fs::write(t.path().join("u1/net"), "").unwrap();
        remove(t.path(), "u1").unwrap();
        remove(t.path(), "u1").unwrap();
        assert_eq!(list(t.path()).unwrap(), vec!["u2"]);
        assert!(list(&t.path().join("missing")).unwrap().is_empty());
        assert!(create(t.path(), "../x", "h").is_err());
    }
}
