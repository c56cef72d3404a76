//! The Keelson node agent: pods through OCI runtimes and cgroups, the CNI
//! runtime side, Service load balancing, the node API.
//!
//! `unsafe` is denied crate-wide (workspace lint) and allowed only in the
//! modules that make syscalls, each block with a `// SAFETY:` comment.

pub mod agent;
pub mod cgroups;
pub mod images;
pub mod network;
pub mod node;
pub mod pods;
pub mod proxy;
pub mod runtime;
pub mod server;
