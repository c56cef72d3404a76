//! Kubelet-style cgroups: kubepods / burstable / besteffort / pod<uid> /
//! container, on cgroup v1 or v2 (detected), rooted at a path argument.

/// A pod's QoS class, from its containers' requests and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QosClass {
    /// Every container has equal cpu and memory requests and limits.
    Guaranteed,
    /// Anything between.
    Burstable,
    /// No requests or limits at all.
    #[default]
    BestEffort,
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
