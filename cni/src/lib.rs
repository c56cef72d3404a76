//! `keelson-cni`: Keelson's CNI 1.1 plugin — a routed veth per pod with
//! built-in, crash-safe, garbage-collected IPAM.
//!
//! - [`config`], [`result`], [`error`]: pure parsing and rendering of what the
//!   spec exchanges (environment, stdin, stdout).
//! - [`ipam`]: the address store under `dataDir/NAME`.
//! - netlink: keelson-host's rtnetlink client (`keelson_host::rtnetlink`).
//! - [`plugin`]: the six verbs, executed.
//! - [`routes`]: cross-node routes to other nodes' pod CIDRs (called by the agent).

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod ipam;
pub mod plugin;
pub mod result;
pub mod routes;
