//! Kubelet-style cgroups: kubepods / burstable / besteffort / pod<uid> /
//! container, on cgroup v1 or v2 (detected), rooted at a path argument.
//!
//! Pure part: [`qos_class`], [`container_resources`] and [`pod_resources`]
//! (no I/O; quantities and QoS classes are `keelson_rules`'). I/O part:
//! [`CgroupManager`].

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::RuntimeError;

pub use keelson_rules::qos::QosClass;

/// The QoS level's directory under the root (`None` for Guaranteed, whose
/// pods sit directly under the root, as the kubelet does).
pub fn qos_dir(qos: QosClass) -> Option<&'static str> {
    match qos {
        QosClass::Guaranteed => None,
        QosClass::Burstable => Some("burstable"),
        QosClass::BestEffort => Some("besteffort"),
    }
}

/// Limits written to a cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// cpu.shares (v1) / cpu.weight derived from it (v2).
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs per period (`None`: unlimited).
    pub cpu_quota_us: Option<i64>,
    /// CFS period in µs (default 100000).
    pub cpu_period_us: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// Max number of PIDs.
    pub pids_limit: Option<i64>,
}

/// The kubelet's minimum cpu.shares.
pub const MIN_SHARES: u64 = 2;
/// The kubelet's maximum cpu.shares.
pub const MAX_SHARES: u64 = 262_144;
/// The CFS period the kubelet uses (µs).
pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
/// The kubelet's minimum CFS quota (µs).
pub const MIN_QUOTA_US: i64 = 1_000;

fn quantity(
    map: Option<&std::collections::BTreeMap<String, Quantity>>,
    key: &str,
    scale: u64,
) -> Option<i128> {
    let q = &map?.get(key)?.0;
    let v = if scale == 1000 {
        keelson_rules::quantity::milli_value(q)
    } else {
        keelson_rules::quantity::value(q)
    };
    v.ok().map(i128::from)
}

/// A container's effective (request, limit) for one resource, with the API
/// server's defaulting applied (a missing request defaults to the limit).
fn req_lim(
    r: Option<&ResourceRequirements>,
    key: &str,
    scale: u64,
) -> (Option<i128>, Option<i128>) {
    let limit = quantity(r.and_then(|r| r.limits.as_ref()), key, scale).filter(|v| *v > 0);
    let request = quantity(r.and_then(|r| r.requests.as_ref()), key, scale)
        .filter(|v| *v > 0)
        .or(limit);
    (request, limit)
}

/// The pod's QoS class (`keelson_rules::qos`).
pub fn qos_class(pod: &Pod) -> QosClass {
    pod.spec
        .as_ref()
        .map_or(QosClass::BestEffort, keelson_rules::qos::pod_qos)
}

/// cpu.shares for a cpu request in millicores (the kubelet's MilliCPUToShares).
pub fn milli_cpu_to_shares(milli: i128) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    let shares = (milli * 1024 / 1000) as u64;
    shares.clamp(MIN_SHARES, MAX_SHARES)
}

/// CFS quota for a cpu limit in millicores (the kubelet's MilliCPUToQuota).
pub fn milli_cpu_to_quota(milli: i128, period_us: u64) -> i64 {
    let quota = (milli * period_us as i128 / 1000) as i64;
    quota.max(MIN_QUOTA_US)
}

/// A container's cgroup limits, as the kubelet computes them.
pub fn container_resources(c: &Container) -> Resources {
    let r = c.resources.as_ref();
    let (cpu_req, cpu_lim) = req_lim(r, "cpu", 1000);
    let (_, mem_lim) = req_lim(r, "memory", 1);
    Resources {
        cpu_shares: Some(milli_cpu_to_shares(cpu_req.unwrap_or(0))),
        cpu_quota_us: cpu_lim.map(|m| milli_cpu_to_quota(m, DEFAULT_CPU_PERIOD_US)),
        cpu_period_us: Some(DEFAULT_CPU_PERIOD_US),
        memory_limit: mem_lim.map(|b| b as i64),
        pids_limit: None,
    }
}

/// The pod cgroup's limits, as the kubelet computes them: shares from the
/// sum of cpu requests; quota and memory limit only when every container
/// has a limit (init containers count by their maximum).
pub fn pod_resources(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources {
            cpu_shares: Some(MIN_SHARES),
            ..Default::default()
        };
    };
    let sum = |key: &str, scale: u64, want_limit: bool| -> Option<i128> {
        let mut total = 0i128;
        for c in &spec.containers {
            let (req, lim) = req_lim(c.resources.as_ref(), key, scale);
            match (want_limit, req, lim) {
                (true, _, Some(l)) => total += l,
                (true, _, None) => return None,
                (false, Some(r), _) => total += r,
                (false, None, _) => {}
            }
        }
        for c in spec.init_containers.iter().flatten() {
            let (req, lim) = req_lim(c.resources.as_ref(), key, scale);
            let v = if want_limit { lim? } else { req.unwrap_or(0) };
            total = total.max(v);
        }
        Some(total)
    };
    let cpu_req = sum("cpu", 1000, false).unwrap_or(0);
    Resources {
        cpu_shares: Some(milli_cpu_to_shares(cpu_req)),
        cpu_quota_us: sum("cpu", 1000, true).map(|m| milli_cpu_to_quota(m, DEFAULT_CPU_PERIOD_US)),
        cpu_period_us: Some(DEFAULT_CPU_PERIOD_US),
        memory_limit: sum("memory", 1, true).map(|b| b as i64),
        pids_limit: None,
    }
}

/// cgroup v2 cpu.weight from v1 cpu.shares (the runc/kubelet conversion).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + ((shares.clamp(MIN_SHARES, MAX_SHARES) - 2) * 9999) / 262_142
}

/// The pod cgroup path relative to every hierarchy's root, with a leading
/// slash (as an OCI `cgroupsPath`): `/<root>[/<qos>]/pod<uid>`.
pub fn pod_path(root_name: &str, uid: &str, qos: QosClass) -> String {
    match qos_dir(qos) {
        Some(d) => format!("/{root_name}/{d}/pod{uid}"),
        None => format!("/{root_name}/pod{uid}"),
    }
}

/// The container cgroup (OCI `cgroupsPath`, cgroupfs driver) inside a pod
/// cgroup.
pub fn container_cgroups_path(pod_path: &str, container_id: &str) -> String {
    format!("{}/{container_id}", pod_path.trim_end_matches('/'))
}

/// Which cgroup layout the machine has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMode {
    /// Unified hierarchy at the root.
    V2,
    /// One hierarchy per controller (or co-mounted set), plus possibly a
    /// `unified` cgroup2 (hybrid mode). Absolute paths, deduplicated.
    V1 {
        /// Every hierarchy's root directory.
        hierarchies: Vec<PathBuf>,
    },
}

/// Creates, limits, lists and removes pod cgroups under a cgroupfs root.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    root: PathBuf,
    root_name: String,
    mode: CgroupMode,
}

fn io_err(op: String) -> impl FnOnce(io::Error) -> RuntimeError {
    move |err| RuntimeError::Io { op, err }
}

impl CgroupManager {
    /// Detects the layout under `root` (normally /sys/fs/cgroup); pods go
    /// under `root_name` (normally "kubepods").
    pub fn new(root: impl Into<PathBuf>, root_name: &str) -> Result<Self, RuntimeError> {
        let root = root.into();
        let mode = detect(&root)?;
        Ok(Self {
            root,
            root_name: root_name.to_string(),
            mode,
        })
    }

    /// The default manager: /sys/fs/cgroup, "kubepods".
    pub fn system() -> Result<Self, RuntimeError> {
        Self::new("/sys/fs/cgroup", "kubepods")
    }

    /// The detected layout.
    pub fn mode(&self) -> &CgroupMode {
        &self.mode
    }

    /// The root name ("kubepods").
    pub fn root_name(&self) -> &str {
        &self.root_name
    }

    fn hierarchies(&self) -> Vec<PathBuf> {
        match &self.mode {
            CgroupMode::V2 => vec![self.root.clone()],
            CgroupMode::V1 { hierarchies } => hierarchies.clone(),
        }
    }

    /// The directory of a relative cgroup path in the hierarchy holding
    /// `controller` (v2: the unified root).
    pub fn controller_dir(&self, controller: &str, rel: &str) -> Option<PathBuf> {
        let base = match &self.mode {
            CgroupMode::V2 => self.root.clone(),
            CgroupMode::V1 { hierarchies } => hierarchies
                .iter()
                .find(|h| has_controller(h, controller))?
                .clone(),
        };
        Some(base.join(rel.trim_start_matches('/')))
    }

    /// Creates the pod cgroup (and the root and QoS levels) in every
    /// hierarchy and writes its limits. Idempotent. Returns the pod path
    /// relative to the hierarchy root (e.g. `/kubepods/burstable/pod<uid>`).
    pub fn ensure_pod(
        &self,
        uid: &str,
        qos: QosClass,
        res: &Resources,
    ) -> Result<String, RuntimeError> {
        let rel = pod_path(&self.root_name, uid, qos);
        let mut levels = vec![format!("/{}", self.root_name)];
        if let Some(d) = qos_dir(qos) {
            levels.push(format!("/{}/{d}", self.root_name));
        }
        levels.push(rel.clone());
        for h in self.hierarchies() {
            let is_cpuset = self.mode != CgroupMode::V2 && has_controller(&h, "cpuset");
            for (i, level) in levels.iter().enumerate() {
                let dir = h.join(level.trim_start_matches('/'));
                if self.mode == CgroupMode::V2 {
                    // Enable the controllers for the children of the parent.
                    let parent = dir.parent().unwrap_or(&h);
                    enable_subtree(parent);
                }
                match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        if is_cpuset {
                            copy_cpuset(&dir)?;
                        }
                        if i == 1 && qos == QosClass::BestEffort && has_controller(&h, "cpu") {
                            write(&dir, "cpu.shares", "2", &self.mode)?;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(format!("create cgroup {}", dir.display()))(e)),
                }
            }
            self.write_resources(&h, &rel, res)?;
        }
        Ok(rel)
    }

    fn write_resources(&self, h: &Path, rel: &str, res: &Resources) -> Result<(), RuntimeError> {
        let dir = h.join(rel.trim_start_matches('/'));
        let period = res.cpu_period_us.unwrap_or(DEFAULT_CPU_PERIOD_US);
        match self.mode {
            CgroupMode::V2 => {
                if let Some(s) = res.cpu_shares {
                    write(
                        &dir,
                        "cpu.weight",
                        &shares_to_weight(s).to_string(),
                        &self.mode,
                    )?;
                }
                let quota = res
                    .cpu_quota_us
                    .map_or("max".to_string(), |q| q.to_string());
                let cpu = format!("{quota} {period}");
                reset_or_write(&dir, "cpu.max", &cpu, res.cpu_quota_us.is_some())?;
                let mem = res
                    .memory_limit
                    .map_or("max".to_string(), |m| m.to_string());
                reset_or_write(&dir, "memory.max", &mem, res.memory_limit.is_some())?;
                let pids = res.pids_limit.map_or("max".to_string(), |m| m.to_string());
                reset_or_write(&dir, "pids.max", &pids, res.pids_limit.is_some())?;
            }
            CgroupMode::V1 { .. } => {
                if has_controller(h, "cpu") {
                    if let Some(s) = res.cpu_shares {
                        write(&dir, "cpu.shares", &s.to_string(), &self.mode)?;
                    }
                    write(&dir, "cpu.cfs_period_us", &period.to_string(), &self.mode)?;
                    let quota = res.cpu_quota_us.unwrap_or(-1);
                    write(&dir, "cpu.cfs_quota_us", &quota.to_string(), &self.mode)?;
                }
                if has_controller(h, "memory") {
                    let mem = res.memory_limit.unwrap_or(-1);
                    write(&dir, "memory.limit_in_bytes", &mem.to_string(), &self.mode)?;
                }
                if has_controller(h, "pids") {
                    let pids = res.pids_limit.map_or("max".to_string(), |m| m.to_string());
                    write(&dir, "pids.max", &pids, &self.mode)?;
                }
            }
        }
        Ok(())
    }

    /// Kills whatever still runs in the pod cgroup and removes it (leaf
    /// first) from every hierarchy. Success if already absent.
    pub fn remove_pod(&self, uid: &str, qos: QosClass) -> Result<(), RuntimeError> {
        let rel = pod_path(&self.root_name, uid, qos);
        for h in self.hierarchies() {
            let dir = h.join(rel.trim_start_matches('/'));
            if !dir.exists() {
                continue;
            }
            remove_tree(&dir)?;
        }
        Ok(())
    }

    /// Removes the whole root (every pod, QoS level and the root itself)
    /// from every hierarchy, killing what runs there. For tests and
    /// uninstall. Success if absent.
    pub fn remove_root(&self) -> Result<(), RuntimeError> {
        for h in self.hierarchies() {
            let dir = h.join(&self.root_name);
            if dir.exists() {
                remove_tree(&dir)?;
            }
        }
        Ok(())
    }

    /// Every pod cgroup under the root, in any hierarchy: (uid, qos).
    pub fn list_pods(&self) -> Result<Vec<(String, QosClass)>, RuntimeError> {
        let mut out = BTreeSet::new();
        for h in self.hierarchies() {
            let base = h.join(&self.root_name);
            for qos in [
                QosClass::Guaranteed,
                QosClass::Burstable,
                QosClass::BestEffort,
            ] {
                let dir = match qos_dir(qos) {
                    Some(d) => base.join(d),
                    None => base.clone(),
                };
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(format!("list cgroup {}", dir.display()))(e)),
                };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some(uid) = name.strip_prefix("pod")
                        && e.file_type().is_ok_and(|t| t.is_dir())
                    {
                        out.insert((uid.to_string(), qos));
                    }
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Whether the kernel's OOM killer killed a process in this cgroup
    /// (path relative to the hierarchy root, e.g. a container's cgroupsPath).
    pub fn oom_killed(&self, cgroup: &str) -> bool {
        self.controller_dir("memory", cgroup)
            .is_some_and(|d| oom_killed_in(&d))
    }
}

/// Reads the OOM kill counter of one memory cgroup directory (v1
/// memory.oom_control, v2 memory.events).
pub fn oom_killed_in(dir: &Path) -> bool {
    for file in ["memory.events", "memory.oom_control"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            return text.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            });
        }
    }
    false
}

/// The memory cgroup directory of a live process, from `<proc>/<pid>/cgroup`
/// and `<proc>/self/mountinfo` (v1 memory hierarchy, else the v2 one).
pub fn memory_cgroup_dir(proc_root: &Path, pid: u32) -> Option<PathBuf> {
    let cgroup = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    let mountinfo = std::fs::read_to_string(proc_root.join("self/mountinfo")).ok()?;
    memory_dir_from(&cgroup, &mountinfo)
}

/// Pure part of [`memory_cgroup_dir`].
pub fn memory_dir_from(cgroup: &str, mountinfo: &str) -> Option<PathBuf> {
    let mut v1 = None;
    let mut v2 = None;
    for l in cgroup.lines() {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrls.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        } else if ctrls.is_empty() {
            v2 = Some(path.to_string());
        }
    }
    let mounts: Vec<(String, String, String, String)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let g: Vec<&str> = post.split(' ').collect();
            Some((
                f.get(3)?.to_string(),
                f.get(4)?.to_string(),
                g.first()?.to_string(),
                g.get(2)?.to_string(),
            ))
        })
        .collect();
    let join = |root: &str, mp: &str, path: &str| {
        let rel = path
            .strip_prefix(root)
            .unwrap_or(path)
            .trim_start_matches('/');
        Path::new(mp).join(rel)
    };
    if let Some(path) = v1
        && let Some((root, mp, _, _)) = mounts
            .iter()
            .find(|(_, _, fs, opts)| fs == "cgroup" && opts.split(',').any(|o| o == "memory"))
    {
        return Some(join(root, mp, &path));
    }
    let path = v2?;
    let (root, mp, _, _) = mounts.iter().find(|(_, _, fs, _)| fs == "cgroup2")?;
    Some(join(root, mp, &path))
}

fn detect(root: &Path) -> Result<CgroupMode, RuntimeError> {
    if root.join("cgroup.controllers").exists() {
        return Ok(CgroupMode::V2);
    }
    let entries = std::fs::read_dir(root)
        .map_err(io_err(format!("detect cgroups under {}", root.display())))?;
    let mut seen = BTreeSet::new();
    for e in entries.flatten() {
        let path = e.path();
        let Ok(canon) = std::fs::canonicalize(&path) else {
            continue;
        };
        if !canon.is_dir() {
            continue;
        }
        seen.insert(canon);
    }
    if seen.is_empty() {
        return Err(RuntimeError::Failed(format!(
            "detect cgroups under {}: neither cgroup v2 nor v1 hierarchies found",
            root.display()
        )));
    }
    Ok(CgroupMode::V1 {
        hierarchies: seen.into_iter().collect(),
    })
}

/// Whether a v1 hierarchy directory holds a controller ("cpu,cpuacct" has
/// both "cpu" and "cpuacct").
fn has_controller(h: &Path, controller: &str) -> bool {
    h.file_name()
        .map(|n| n.to_string_lossy().split(',').any(|c| c == controller))
        .unwrap_or(false)
}

fn write(dir: &Path, file: &str, value: &str, _mode: &CgroupMode) -> Result<(), RuntimeError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io_err(format!("write {value:?} to {}", path.display())))
}

/// Writes a v2 limit file. A limit that is not `requested` (the value is
/// the default, "max") is skipped where the kernel has no such file: the
/// controller is not enabled for this cgroup, so there is nothing to reset.
/// A requested limit is always written, so a missing controller is an
/// error naming the file, never a limit silently dropped.
fn reset_or_write(
    dir: &Path,
    file: &str,
    value: &str,
    requested: bool,
) -> Result<(), RuntimeError> {
    if !requested && is_cgroupfs(dir) && !dir.join(file).exists() {
        return Ok(());
    }
    write(dir, file, value, &CgroupMode::V2)
}

fn enable_subtree(dir: &Path) {
    // Best effort: a controller the parent lacks is simply not enabled.
    for c in ["cpu", "memory", "pids", "cpuset", "io"] {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
    }
}

fn copy_cpuset(dir: &Path) -> Result<(), RuntimeError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let cur = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if cur.trim().is_empty() {
            let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
            if !v.trim().is_empty() {
                std::fs::write(dir.join(f), v.trim()).map_err(io_err(format!(
                    "write {} in {}",
                    f,
                    dir.display()
                )))?;
            }
        }
    }
    Ok(())
}

/// Kills every process in a cgroup subtree, then removes it leaf first.
fn remove_tree(dir: &Path) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut dirs = Vec::new();
        collect_dirs(dir, &mut dirs);
        let mut pids = Vec::new();
        for d in &dirs {
            if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        for pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Leaf first: collect_dirs lists parents before children.
        let mut last_err = None;
        let plain = !is_cgroupfs(dir);
        for d in dirs.iter().rev() {
            if plain {
                remove_plain_files(d);
            }
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => last_err = Some((d.clone(), e)),
            }
        }
        match last_err {
            None => return Ok(()),
            Some((d, e)) if Instant::now() >= deadline => {
                return Err(io_err(format!("remove cgroup {}", d.display()))(e));
            }
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Whether a directory is on cgroupfs (v1 or v2), where `rmdir` removes the
/// control files with it. A plain directory tree (the tests' fake cgroupfs)
/// needs its files removed first.
fn is_cgroupfs(dir: &Path) -> bool {
    use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
    statfs(dir).is_ok_and(|s| {
        s.filesystem_type() == CGROUP_SUPER_MAGIC || s.filesystem_type() == CGROUP2_SUPER_MAGIC
    })
}

fn remove_plain_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use std::collections::BTreeMap;

    fn rr(req: &[(&str, &str)], lim: &[(&str, &str)]) -> Option<ResourceRequirements> {
        let m = |v: &[(&str, &str)]| -> Option<BTreeMap<String, Quantity>> {
            (!v.is_empty()).then(|| {
                v.iter()
                    .map(|(k, q)| (k.to_string(), Quantity(q.to_string())))
                    .collect()
            })
        };
        Some(ResourceRequirements {
            requests: m(req),
            limits: m(lim),
            ..Default::default()
        })
    }

    fn container(r: Option<ResourceRequirements>) -> Container {
        Container {
            name: "c".into(),
            resources: r,
            ..Default::default()
        }
    }

    fn pod(cs: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: cs,
                init_containers: (!init.is_empty()).then_some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn container_limits() {
        let cases = vec![
            (
                None,
                Resources {
                    cpu_shares: Some(2),
                    cpu_period_us: Some(100_000),
                    ..Default::default()
                },
            ),
            (
                rr(
                    &[("cpu", "250m"), ("memory", "64Mi")],
                    &[("cpu", "500m"), ("memory", "128Mi")],
                ),
                Resources {
                    cpu_shares: Some(256),
                    cpu_quota_us: Some(50_000),
                    cpu_period_us: Some(100_000),
                    memory_limit: Some(128 << 20),
                    pids_limit: None,
                },
            ),
            (
                rr(&[], &[("cpu", "1m")]),
                Resources {
                    cpu_shares: Some(2),
                    cpu_quota_us: Some(1000),
                    cpu_period_us: Some(100_000),
                    ..Default::default()
                },
            ),
            (
                rr(&[("cpu", "2")], &[("memory", "1G")]),
                Resources {
                    cpu_shares: Some(2048),
                    cpu_period_us: Some(100_000),
                    memory_limit: Some(1_000_000_000),
                    ..Default::default()
                },
            ),
        ];
        for (i, (r, want)) in cases.into_iter().enumerate() {
            assert_eq!(container_resources(&container(r)), want, "case {i}");
        }
    }

    #[test]
    fn pod_limits() {
        let a = rr(&[("cpu", "100m")], &[("cpu", "200m"), ("memory", "64Mi")]);
        let b = rr(&[("cpu", "300m")], &[("cpu", "300m"), ("memory", "64Mi")]);
        let p = pod(vec![container(a.clone()), container(b)], vec![]);
        let r = pod_resources(&p);
        assert_eq!(r.cpu_shares, Some(409));
        assert_eq!(r.cpu_quota_us, Some(50_000));
        assert_eq!(r.memory_limit, Some(128 << 20));
        let p = pod(vec![container(a), container(None)], vec![]);
        let r = pod_resources(&p);
        assert_eq!(
            (r.cpu_shares, r.cpu_quota_us, r.memory_limit),
            (Some(102), None, None)
        );
    }

    #[test]
    fn weights_and_paths() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(
            pod_path("kubepods", "u1", QosClass::Guaranteed),
            "/kubepods/podu1"
        );
        assert_eq!(
            pod_path("kubepods", "u1", QosClass::Burstable),
            "/kubepods/burstable/podu1"
        );
        assert_eq!(
            pod_path("k", "u1", QosClass::BestEffort),
            "/k/besteffort/podu1"
        );
        assert_eq!(container_cgroups_path("/k/podu1", "c1"), "/k/podu1/c1");
        assert_eq!(container_cgroups_path("/k/podu1/", "c1"), "/k/podu1/c1");
    }

    #[test]
    fn memory_dir_discovery() {
        let mi = "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                  35 25 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n";
        let cg = "4:memory:/kp/podu/c1\n1:cpu:/kp/podu/c1\n0::/x\n";
        assert_eq!(
            memory_dir_from(cg, mi),
            Some(PathBuf::from("/sys/fs/cgroup/memory/kp/podu/c1"))
        );
        assert_eq!(
            memory_dir_from("0::/a/b\n", mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified/a/b"))
        );
        assert_eq!(memory_dir_from("0::/a\n", ""), None);
    }

    fn fake_v1() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for c in [
            "cpu,cpuacct",
            "memory",
            "pids",
            "cpuset",
            "devices",
            "freezer",
        ] {
            std::fs::create_dir(t.path().join(c)).unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", t.path().join("cpu")).unwrap();
        std::fs::write(t.path().join("cpuset/cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(t.path().join("cpuset/cpuset.mems"), "0\n").unwrap();
        t
    }

    #[test]
    fn v1_fake_tree() {
        let t = fake_v1();
        let m = CgroupManager::new(t.path(), "kp").unwrap();
        let CgroupMode::V1 { hierarchies } = m.mode() else {
            panic!("not v1")
        };
        assert_eq!(
            hierarchies.len(),
            6,
            "symlinked co-mount counted once: {hierarchies:?}"
        );
        let res = Resources {
            cpu_shares: Some(256),
            cpu_quota_us: Some(50_000),
            memory_limit: Some(1 << 20),
            ..Default::default()
        };
        let p = m.ensure_pod("u1", QosClass::Burstable, &res).unwrap();
        assert_eq!(p, "/kp/burstable/podu1");
        // Idempotent.
        assert_eq!(m.ensure_pod("u1", QosClass::Burstable, &res).unwrap(), p);
        m.ensure_pod("u2", QosClass::Guaranteed, &Resources::default())
            .unwrap();
        m.ensure_pod("u3", QosClass::BestEffort, &Resources::default())
            .unwrap();
        for c in [
            "cpu,cpuacct",
            "memory",
            "pids",
            "cpuset",
            "devices",
            "freezer",
        ] {
            assert!(t.path().join(c).join("kp/burstable/podu1").is_dir(), "{c}");
        }
        let rd = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap();
        assert_eq!(rd("cpu/kp/burstable/podu1/cpu.shares"), "256");
        assert_eq!(rd("cpu/kp/burstable/podu1/cpu.cfs_quota_us"), "50000");
        assert_eq!(
            rd("memory/kp/burstable/podu1/memory.limit_in_bytes"),
            "1048576"
        );
        assert_eq!(rd("pids/kp/burstable/podu1/pids.max"), "max");
        assert_eq!(rd("cpuset/kp/burstable/podu1/cpuset.cpus"), "0-1");
        assert_eq!(rd("cpu/kp/besteffort/cpu.shares"), "2");
        assert!(
            !t.path()
                .join("memory/kp/burstable/podu1/cpu.shares")
                .exists()
        );
        assert_eq!(
            m.list_pods().unwrap(),
            vec![
                ("u1".to_string(), QosClass::Burstable),
                ("u2".to_string(), QosClass::Guaranteed),
                ("u3".to_string(), QosClass::BestEffort),
            ]
        );
        assert_eq!(
            m.controller_dir("memory", "/kp/podu2/c"),
            Some(t.path().join("memory/kp/podu2/c"))
        );
        m.remove_pod("u2", QosClass::Guaranteed).unwrap();
        m.remove_pod("u2", QosClass::Guaranteed).unwrap();
        assert!(!t.path().join("memory/kp/podu2").exists());
        assert_eq!(m.list_pods().unwrap().len(), 2);
    }

    #[test]
    fn v2_fake_tree_and_oom() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let m = CgroupManager::new(t.path(), "kubepods").unwrap();
        assert_eq!(m.mode(), &CgroupMode::V2);
        let res = Resources {
            cpu_shares: Some(1024),
            cpu_quota_us: Some(20_000),
            ..Default::default()
        };
        let p = m.ensure_pod("x", QosClass::Guaranteed, &res).unwrap();
        let dir = t.path().join("kubepods/podx");
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "20000 100000"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.weight")).unwrap(),
            "39"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            "max"
        );
        assert!(std::fs::read_to_string(t.path().join("kubepods/cgroup.subtree_control")).is_ok());
        let c = container_cgroups_path(&p, "c1");
        std::fs::create_dir(t.path().join("kubepods/podx/c1")).unwrap();
        std::fs::write(
            t.path().join("kubepods/podx/c1/memory.events"),
            "low 0\noom 1\noom_kill 0\n",
        )
        .unwrap();
        assert!(!m.oom_killed(&c));
        std::fs::write(
            t.path().join("kubepods/podx/c1/memory.events"),
            "low 0\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(m.oom_killed(&c));
        assert!(!m.oom_killed("/nope"));
    }
}
