//! Pod sandboxes without a pause container: network, IPC and UTS namespaces
//! created on a short-lived thread and held by bind mounts.

use std::path::PathBuf;

/// The namespaces a pod's containers join.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Bind-mounted network namespace (e.g. /run/keelson/netns/<pod uid>).
    pub netns: PathBuf,
    /// Bind-mounted IPC namespace.
    pub ipcns: PathBuf,
    /// Bind-mounted UTS namespace.
    pub utsns: PathBuf,
}
