//! `CgroupManager` on a real cgroup2 hierarchy: the unified root on a pure
//! v2 host, `/sys/fs/cgroup/unified` on a hybrid one (detected, never
//! assumed). Root only; skips (or fails under KEELSON_REQUIRE_ALL=1)
//! without root or a cgroup2 hierarchy. What this proves, and what only the
//! fake-tree unit tests cover, is written down in the crate README
//! ("Cgroups: what is proven where").

use std::process::Command;

use keelson_runtime::cgroups::{CgroupManager, CgroupMode, QosClass, Resources};

/// The pod's line of /proc/PID/cgroup for the v2 hierarchy (`0::/path`).
fn v2_cgroup_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

#[test]
fn pods_on_a_real_cgroup2_hierarchy() {
    if !keelson_e2e::needs("pods_on_a_real_cgroup2_hierarchy")
        .root()
        .cgroup2()
        .tool("sleep")
        .ok()
    {
        return;
    }
    let root = keelson_e2e::cgroup2().unwrap();
    let name = format!("keelson-test-v2-{}", std::process::id());
    let cg = CgroupManager::new(&root, &name).unwrap();
    assert_eq!(cg.mode(), &CgroupMode::V2, "{}", root.display());
    // Whatever happens below, the test's cgroups go.
    struct Cleanup<'a>(&'a CgroupManager);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = self.0.remove_root();
        }
    }
    let _cleanup = Cleanup(&cg);

    // The levels and the pod, on cgroupfs (no limits asked for).
    let uid = "v2pod";
    let rel = cg
        .ensure_pod(uid, QosClass::Burstable, &Resources::default())
        .unwrap();
    assert_eq!(rel, format!("/{name}/burstable/pod{uid}"));
    let dir = root.join(rel.trim_start_matches('/'));
    assert!(dir.join("cgroup.procs").is_file(), "{}", dir.display());
    // Idempotent.
    cg.ensure_pod(uid, QosClass::Burstable, &Resources::default())
        .unwrap();
    assert_eq!(
        cg.list_pods().unwrap(),
        vec![(uid.to_string(), QosClass::Burstable)]
    );

    // A process moved in is in the pod cgroup, as the kernel reports it.
    let mut child = keelson_e2e::Proc(Command::new("sleep").arg("1000").spawn().unwrap());
    let pid = child.0.id();
    std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs:?}");
    let seen = v2_cgroup_of(pid).expect("a 0:: line in /proc/PID/cgroup");
    assert!(seen.ends_with(&rel), "{seen} vs {rel}");
    assert!(!cg.oom_killed(&rel));

    // A limit is written when the controller is there, and refused with the
    // file's name when it is not: never dropped silently.
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let with_memory = Resources {
        memory_limit: Some(64 << 20),
        ..Default::default()
    };
    let limited = cg.ensure_pod(uid, QosClass::Burstable, &with_memory);
    if controllers.split_whitespace().any(|c| c == "memory") {
        limited.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max"))
                .unwrap()
                .trim(),
            (64u64 << 20).to_string()
        );
    } else {
        let e = limited.unwrap_err().to_string();
        assert!(e.contains("memory.max"), "{e}");
        eprintln!(
            "no memory controller on {}: limit refused ({e})",
            root.display()
        );
    }

    // Removal kills what runs there and removes leaf first; twice is fine.
    cg.remove_pod(uid, QosClass::Burstable).unwrap();
    assert!(!dir.exists(), "{} left", dir.display());
    let status = child.0.wait().unwrap();
    assert!(
        !status.success(),
        "the pod's process was not killed: {status}"
    );
    cg.remove_pod(uid, QosClass::Burstable).unwrap();
    assert!(cg.list_pods().unwrap().is_empty());
    cg.remove_root().unwrap();
    assert!(!root.join(&name).exists());
    // Only what the test made went: the hierarchy's root is untouched.
    assert!(root.join("cgroup.procs").is_file());
}
