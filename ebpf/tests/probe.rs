//! The capability probe and the bpffs check against this machine.

mod common;

use std::path::Path;

#[test]
fn probe_accepts_this_kernel_and_names_a_wrong_cgroup() {
    if !common::can_run("probe_accepts_this_kernel_and_names_a_wrong_cgroup") {
        return;
    }
    let cg2 = keelson_ebpf::find_cgroup2(Path::new("/sys/fs/cgroup")).expect("a cgroup2 mount");
    keelson_ebpf::probe(Some(&cg2)).expect("this kernel runs the load balancer");
    let err = keelson_ebpf::probe(Some(Path::new("/tmp"))).unwrap_err();
    let line = err.to_string();
    assert!(
        line.starts_with("eBPF load balancing unavailable: ")
            && line.contains("/tmp is not a cgroup2 directory"),
        "{line}"
    );
    assert_eq!(err.reasons.len(), 1, "{line}");
}

#[test]
fn pin_dir_outside_bpffs_is_refused() {
    let dir = std::env::temp_dir().join(format!("keelson-ebpf-nobpffs-{}", std::process::id()));
    let err = keelson_ebpf::ensure_bpffs(&dir).unwrap_err().to_string();
    assert!(err.contains("is not on a bpffs"), "{err}");
    // remove_all of something that never existed is success.
    keelson_ebpf::remove_all(&dir).expect("idempotent");
}
