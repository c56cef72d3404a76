//! OCI bundle (config.json) from a [`ContainerConfig`]: a pure function
//! ([`spec`]) plus a writer ([`write_bundle`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use crate::{ContainerConfig, RuntimeError};

/// The capabilities a container gets by default (containerd's default set).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability Linux defines (a privileged container gets them all).
pub const ALL_CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Paths masked in a non-privileged container (containerd's defaults).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in a non-privileged container.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// PATH when the config gives none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn normalize_cap(name: &str) -> String {
    let n = name.trim().to_ascii_uppercase();
    n.strip_prefix("CAP_").map(str::to_string).unwrap_or(n)
}

/// The capability names (without CAP_) a container gets: all when
/// privileged, else the default set plus `add` minus `drop` ("ALL" works
/// in both, as in Kubernetes).
pub fn effective_caps(privileged: bool, add: &[String], drop: &[String]) -> Vec<String> {
    if privileged {
        return ALL_CAPS.iter().map(|s| s.to_string()).collect();
    }
    let add: Vec<String> = add.iter().map(|c| normalize_cap(c)).collect();
    let drop: Vec<String> = drop.iter().map(|c| normalize_cap(c)).collect();
    let all = |v: &[String]| v.iter().any(|c| c == "ALL");
    let mut caps: Vec<String> = if all(&add) {
        ALL_CAPS.iter().map(|s| s.to_string()).collect()
    } else if all(&drop) {
        // Kubernetes: drop ALL, then add back what `add` lists.
        Vec::new()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    for c in add.iter().filter(|c| *c != "ALL") {
        if !caps.contains(c) {
            caps.push(c.clone());
        }
    }
    caps.retain(|c| !drop.contains(c));
    caps
}

fn caps_set(names: &[String]) -> Result<HashSet<Capability>, RuntimeError> {
    names
        .iter()
        .map(|n| {
            Capability::from_str(&format!("CAP_{n}"))
                .or_else(|_| Capability::from_str(n))
                .map_err(|_| RuntimeError::Failed(format!("unknown capability {n:?}")))
        })
        .collect()
}

fn spec_err(id: &str) -> impl Fn(oci_spec::OciSpecError) -> RuntimeError + '_ {
    move |e| RuntimeError::Failed(format!("build OCI spec for container {id}: {e}"))
}

fn mount(
    dest: &str,
    typ: &str,
    src: &str,
    opts: &[&str],
) -> Result<oci_spec::runtime::Mount, oci_spec::OciSpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(src)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
}

/// Builds the OCI runtime spec of a container (no I/O).
pub fn spec(c: &ContainerConfig) -> Result<Spec, RuntimeError> {
    let id = c.id.as_str();
    let e = spec_err(id);
    if c.args.is_empty() {
        return Err(RuntimeError::Failed(format!(
            "build OCI spec for container {id}: no command"
        )));
    }
    let caps = caps_set(&effective_caps(c.privileged, &c.cap_add, &c.cap_drop))?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(&e)?;
    let mut env = c.env.clone();
    if !env.iter().any(|v| v.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if !c.hostname.is_empty() && !env.iter().any(|v| v.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", c.hostname));
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(c.uid)
                .gid(c.gid)
                .build()
                .map_err(&e)?,
        )
        .args(c.args.clone())
        .env(env)
        .cwd(if c.cwd.is_empty() {
            "/".to_string()
        } else {
            c.cwd.clone()
        })
        .capabilities(capabilities)
        .no_new_privileges(!c.privileged)
        .build()
        .map_err(&e)?;

    let sys_opts: &[&str] = if c.privileged {
        &["nosuid", "noexec", "nodev"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]).map_err(&e)?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )
        .map_err(&e)?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )
        .map_err(&e)?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )
        .map_err(&e)?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )
        .map_err(&e)?,
        mount("/sys", "sysfs", "sysfs", sys_opts).map_err(&e)?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )
        .map_err(&e)?,
    ];
    for m in &c.mounts {
        let mut opts = vec!["rbind", "rprivate"];
        if m.readonly {
            opts.push("ro");
        }
        mounts.push(mount(&m.destination, "bind", &m.source.to_string_lossy(), &opts).map_err(&e)?);
    }

    let ns = |typ: LinuxNamespaceType, path: &Path| {
        let mut b = LinuxNamespaceBuilder::default().typ(typ);
        if !path.as_os_str().is_empty() {
            b = b.path(path.to_path_buf());
        }
        b.build()
    };
    // A namespace the pod shares with the node gets no entry: the container
    // stays in the runtime's (the node's) namespace of that kind.
    let host = c.sandbox.host;
    let mut namespaces = Vec::new();
    if !host.pid {
        namespaces.push(ns(LinuxNamespaceType::Pid, Path::new("")).map_err(&e)?);
    }
    if !host.network {
        namespaces.push(ns(LinuxNamespaceType::Network, &c.sandbox.netns).map_err(&e)?);
    }
    if !host.ipc {
        namespaces.push(ns(LinuxNamespaceType::Ipc, &c.sandbox.ipcns).map_err(&e)?);
    }
    if !host.network {
        namespaces.push(ns(LinuxNamespaceType::Uts, &c.sandbox.utsns).map_err(&e)?);
    }
    namespaces.push(ns(LinuxNamespaceType::Mount, Path::new("")).map_err(&e)?);

    let r = &c.resources;
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(s) = r.cpu_shares {
        cpu = cpu.shares(s);
    }
    if let Some(q) = r.cpu_quota_us {
        cpu = cpu.quota(q);
    }
    if let Some(p) = r.cpu_period_us {
        cpu = cpu.period(p);
    }
    let mut memory = LinuxMemoryBuilder::default();
    if let Some(m) = r.memory_limit {
        memory = memory.limit(m);
    }
    let devices = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(c.privileged)
            .access("rwm")
            .build()
            .map_err(&e)?,
    ];
    let mut resources = LinuxResourcesBuilder::default()
        .devices(devices)
        .cpu(cpu.build().map_err(&e)?)
        .memory(memory.build().map_err(&e)?);
    if let Some(p) = r.pids_limit {
        resources = resources.pids(LinuxPidsBuilder::default().limit(p).build().map_err(&e)?);
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(&e)?);
    if !c.cgroups_path.is_empty() {
        linux = linux.cgroups_path(PathBuf::from(&c.cgroups_path));
    }
    let (masked, readonly): (Vec<String>, Vec<String>) = if c.privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
        )
    };
    linux = linux.masked_paths(masked).readonly_paths(readonly);

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(
            RootBuilder::default()
                .path(c.rootfs.clone())
                .readonly(c.readonly_rootfs)
                .build()
                .map_err(&e)?,
        )
        .mounts(mounts)
        .linux(linux.build().map_err(&e)?);
    // In the node's UTS namespace the hostname is the node's: none to set.
    if !c.hostname.is_empty() && !c.sandbox.host.network {
        spec = spec.hostname(c.hostname.clone());
    }
    let mut spec = spec.build().map_err(&e)?;
    // oci-spec's defaults are youki's example config: no hostname (the
    // runtime would overwrite the sandbox's), no rlimits (inherit, like
    // containerd), no empty annotations.
    if c.hostname.is_empty() || c.sandbox.host.network {
        spec.set_hostname(None);
    }
    spec.set_annotations(None);
    if let Some(p) = spec.process_mut().as_mut() {
        p.set_rlimits(None);
    }
    Ok(spec)
}

/// Writes `dir/config.json` for the container (creating `dir`).
pub fn write_bundle(dir: &Path, c: &ContainerConfig) -> Result<(), RuntimeError> {
    let spec = spec(c)?;
    std::fs::create_dir_all(dir).map_err(|err| RuntimeError::Io {
        op: format!("create bundle dir {}", dir.display()),
        err,
    })?;
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| {
        RuntimeError::Failed(format!("serialize OCI spec of container {}: {e}", c.id))
    })?;
    crate::oci::write_atomic(&dir.join("config.json"), &json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mount, cgroups::Resources, sandbox::Sandbox};
    use serde_json::Value;

    fn base() -> ContainerConfig {
        ContainerConfig {
            id: "c1".into(),
            rootfs: "/r/rootfs".into(),
            args: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["A=1".into()],
            cwd: "/work".into(),
            uid: 1000,
            gid: 1001,
            hostname: "pod-a".into(),
            sandbox: Sandbox {
                netns: "/run/sb/u/net".into(),
                ipcns: "/run/sb/u/ipc".into(),
                utsns: "/run/sb/u/uts".into(),
                host: Default::default(),
            },
            cgroups_path: "/kubepods/burstable/podu/c1".into(),
            resources: Resources {
                cpu_shares: Some(256),
                cpu_quota_us: Some(50_000),
                cpu_period_us: Some(100_000),
                memory_limit: Some(20 << 20),
                pids_limit: Some(100),
            },
            mounts: vec![Mount {
                source: "/host/v".into(),
                destination: "/data".into(),
                readonly: true,
            }],
            ..Default::default()
        }
    }

    fn json(c: &ContainerConfig) -> Value {
        serde_json::to_value(spec(c).unwrap()).unwrap()
    }

    fn strs(v: &Value) -> Vec<String> {
        let mut out: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        out.sort();
        out
    }

    #[test]
    fn golden_fields() {
        let j = json(&base());
        assert_eq!(j["ociVersion"], "1.0.2");
        assert_eq!(j["hostname"], "pod-a");
        assert_eq!(j["root"]["path"], "/r/rootfs");
        assert_eq!(j["root"]["readonly"], false);
        let p = &j["process"];
        assert_eq!(p["args"], serde_json::json!(["sh", "-c", "echo hi"]));
        assert_eq!(p["cwd"], "/work");
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["user"]["gid"], 1001);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["terminal"], false);
        assert_eq!(
            p["env"],
            serde_json::json!([DEFAULT_PATH, "A=1", "HOSTNAME=pod-a"])
        );
        let mut want: Vec<String> = DEFAULT_CAPS.iter().map(|c| format!("CAP_{c}")).collect();
        want.sort();
        assert_eq!(strs(&p["capabilities"]["bounding"]), want);
        assert_eq!(strs(&p["capabilities"]["effective"]), want);
        let dests: Vec<&str> = j["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/data"
            ]
        );
        let data = &j["mounts"][7];
        assert_eq!(data["type"], "bind");
        assert_eq!(data["source"], "/host/v");
        assert_eq!(
            data["options"],
            serde_json::json!(["rbind", "rprivate", "ro"])
        );
        assert!(
            j["mounts"][5]["options"]
                .as_array()
                .unwrap()
                .contains(&Value::from("ro"))
        );
        let l = &j["linux"];
        assert_eq!(l["cgroupsPath"], "/kubepods/burstable/podu/c1");
        let ns: Vec<(String, Option<String>)> = l["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["type"].as_str().unwrap().to_string(),
                    n["path"].as_str().map(str::to_string),
                )
            })
            .collect();
        assert_eq!(
            ns,
            vec![
                ("pid".into(), None),
                ("network".into(), Some("/run/sb/u/net".into())),
                ("ipc".into(), Some("/run/sb/u/ipc".into())),
                ("uts".into(), Some("/run/sb/u/uts".into())),
                ("mount".into(), None),
            ]
        );
        assert_eq!(l["resources"]["cpu"]["shares"], 256);
        assert_eq!(l["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(l["resources"]["cpu"]["period"], 100_000);
        assert_eq!(l["resources"]["memory"]["limit"], 20 << 20);
        assert_eq!(l["resources"]["pids"]["limit"], 100);
        assert_eq!(
            l["resources"]["devices"],
            serde_json::json!([{"allow": false, "access": "rwm"}])
        );
        assert_eq!(strs(&l["maskedPaths"]).len(), MASKED_PATHS.len());
        assert!(strs(&l["readonlyPaths"]).contains(&"/proc/sys".to_string()));
    }

    #[test]
    fn privileged_and_caps() {
        let mut c = base();
        c.privileged = true;
        c.readonly_rootfs = true;
        let j = json(&c);
        assert_eq!(j["process"]["noNewPrivileges"], false);
        assert_eq!(
            j["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            ALL_CAPS.len()
        );
        assert_eq!(j["root"]["readonly"], true);
        assert_eq!(j["linux"]["maskedPaths"], serde_json::json!([]));
        assert_eq!(j["linux"]["readonlyPaths"], serde_json::json!([]));
        assert_eq!(j["linux"]["resources"]["devices"][0]["allow"], true);

        let mut c = base();
        c.cap_add = vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()];
        c.cap_drop = vec!["net_raw".into(), "KILL".into()];
        let caps = strs(&json(&c)["process"]["capabilities"]["effective"]);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(caps.contains(&"CAP_SYS_TIME".to_string()));
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        assert!(!caps.contains(&"CAP_KILL".to_string()));
        assert_eq!(caps.len(), DEFAULT_CAPS.len());

        c.cap_drop = vec!["ALL".into()];
        c.cap_add = vec!["NET_BIND_SERVICE".into()];
        assert_eq!(
            strs(&json(&c)["process"]["capabilities"]["effective"]),
            vec!["CAP_NET_BIND_SERVICE"]
        );

        c.cap_add = vec!["NOPE".into()];
        c.cap_drop = vec![];
        assert!(spec(&c).is_err());
    }

    #[test]
    fn host_namespaces_get_no_entry() {
        let mut c = base();
        c.sandbox.host = crate::sandbox::HostNamespaces {
            network: true,
            ipc: false,
            pid: true,
        };
        let j = json(&c);
        let kinds: Vec<&str> = j["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        // No network, UTS or PID namespace of its own: the node's.
        assert_eq!(kinds, ["ipc", "mount"]);
        // The hostname is the node's too: none set, though one is given.
        assert!(!c.hostname.is_empty());
        assert!(json(&c).get("hostname").is_none());
    }

    #[test]
    fn no_sandbox_means_new_namespaces_and_no_command_fails() {
        let mut c = base();
        c.sandbox = Sandbox::default();
        c.cgroups_path.clear();
        let j = json(&c);
        assert!(
            j["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n.get("path").is_none())
        );
        c.hostname.clear();
        let j = json(&c);
        assert!(j.get("hostname").is_none(), "{j}");
        assert!(j["process"].get("rlimits").is_none());
        assert!(j["linux"].get("cgroupsPath").is_none());
        c.args.clear();
        assert!(spec(&c).unwrap_err().to_string().contains("no command"));
    }
}
