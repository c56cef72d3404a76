//! The `Runtime` trait and its OCI runtime CLI backend (runc, crun, youki),
//! the per-container shim that owns stdio and exit status, and pod sandboxes
//! (network, IPC and UTS namespaces held without a pause container).

pub mod shim;
