//! Host plumbing shared by the node agent, the CNI plugin, the Service proxy
//! and the control plane: one implementation of each.
//!
//! - [`tools`]: every external program Keelson runs, the Debian package that
//!   provides it, and one lookup that fails with that package's name.
//! - [`netlink`]: a small synchronous rtnetlink client (links, addresses,
//!   routes).
//! - [`mounts`]: tmpfs mounts and unmounting what is left under a directory.
//!
//! `unsafe` is denied (workspace lint); nothing here needs it.

#![forbid(unsafe_code)]

pub mod mounts;
pub mod netlink;
pub mod tools;
