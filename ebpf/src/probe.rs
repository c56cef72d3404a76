//! Can this kernel and process run the eBPF load balancer? The answer says
//! why not, in one line, so the proxy can fall back to nftables.

use std::fmt;
use std::path::Path;

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported};
use aya::util::KernelVersion;

/// Why the eBPF load balancer cannot be used here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub reasons: Vec<String>,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "eBPF load balancing unavailable: {}",
            self.reasons.join("; ")
        )
    }
}

impl std::error::Error for Unsupported {}

/// Checks what the load balancer needs: privileges, program and map types,
/// helpers, bpf_link-based tcx attachment (kernel 6.6) and, when given,
/// that `cgroup2` is a cgroup2 directory.
pub fn probe(cgroup2: Option<&Path>) -> Result<(), Unsupported> {
    let mut reasons = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        reasons
            .push("not running as root (needs CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)".to_string());
    }
    for (ty, name) in [
        (ProgramType::CgroupSockAddr, "cgroup_sock_addr programs"),
        (ProgramType::SchedClassifier, "sched_cls (TC) programs"),
    ] {
        match is_program_supported(ty) {
            Ok(true) => {}
            Ok(false) => reasons.push(format!("kernel lacks {name}")),
            Err(e) => reasons.push(format!("probe {name}: {e}")),
        }
    }
    match is_map_supported(MapType::LruHash) {
        Ok(true) => {}
        Ok(false) => reasons.push("kernel lacks LRU hash maps".to_string()),
        Err(e) => reasons.push(format!("probe LRU hash maps: {e}")),
    }
    for (helper, name) in [
        (BpfHelper::BPF_FUNC_set_retval, "bpf_set_retval"),
        (BpfHelper::BPF_FUNC_get_netns_cookie, "bpf_get_netns_cookie"),
        (
            BpfHelper::BPF_FUNC_get_socket_cookie,
            "bpf_get_socket_cookie",
        ),
    ] {
        match is_helper_supported(ProgramType::CgroupSockAddr, helper) {
            Ok(true) => {}
            Ok(false) => reasons.push(format!("kernel lacks {name} for socket hooks")),
            Err(e) => reasons.push(format!("probe {name}: {e}")),
        }
    }
    match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(6, 6, 0) => {}
        Ok(v) => reasons.push(format!(
            "kernel {v:?} older than 6.6 (tcx links for pinned TC programs)"
        )),
        Err(e) => reasons.push(format!("read kernel version: {e}")),
    }
    if let Some(cg) = cgroup2 {
        match nix::sys::statfs::statfs(cg) {
            Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => {}
            Ok(_) => reasons.push(format!("{} is not a cgroup2 directory", cg.display())),
            Err(e) => reasons.push(format!("statfs {}: {e}", cg.display())),
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Unsupported { reasons })
    }
}

/// The cgroup2 mount for the socket hooks: /sys/fs/cgroup on a pure v2
/// host, /sys/fs/cgroup/unified on a hybrid one.
pub fn find_cgroup2(sys_fs_cgroup: &Path) -> Option<std::path::PathBuf> {
    keelson_host::cgroup::cgroup2_dir(sys_fs_cgroup)
}
