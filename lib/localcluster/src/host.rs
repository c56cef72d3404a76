//! Taking down what agents leave on the host: runc containers, shims,
//! cgroups. Best effort and idempotent: what is already gone is success.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Kills and deletes every container runc knows under `root` (its --root).
pub fn remove_runc_containers(root: &Path) {
    let ids = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["kill", id, "KILL"])
            .output();
        std::thread::sleep(Duration::from_millis(20));
        let _ = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["delete", "-f", id])
            .output();
    }
}

/// kill -9 of every process but this one whose command line mentions `text`
/// (shims and agents started with a cluster's directories).
pub fn kill_processes_mentioning(text: &str) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(text) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// kill -9 of every process in these cgroup directories.
pub fn kill_cgroup_procs(dirs: &[PathBuf]) {
    for d in dirs {
        for pid in std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}

/// Removes cgroup directories, deepest first, retrying until `patience`
/// is spent (a cgroup empties a moment after its last process is reaped).
pub fn remove_cgroup_dirs(mut dirs: Vec<PathBuf>, patience: Duration) {
    dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
    let deadline = Instant::now() + patience;
    for d in dirs {
        while std::fs::remove_dir(&d).is_err() && d.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every cgroup hierarchy root (v1 controllers, or the v2 root).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    std::fs::read_dir(base)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// `dir` and every directory below it, appended to `out`.
pub fn walk_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk_dirs(&e.path(), out);
            }
        }
    }
}
