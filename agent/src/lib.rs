//! The Keelson node agent: pods through OCI runtimes and cgroups, the CNI
//! runtime side, Service load balancing, the node API.
//!
//! Its parts with their own crates: `keelson_images` (pulls, content store,
//! rootfs), `keelson_runtime` (OCI runtime, shim, sandboxes, cgroups),
//! `keelson_proxy` (Service load balancing); this crate wires them to the API
//! (pods, node, CNI runtime side, node API). See README.md.

#![forbid(unsafe_code)]

pub mod agent;
pub mod events;
pub mod health;
pub mod image_gc;
pub mod imports;
pub mod join;
pub mod network;
pub mod node;
pub mod node_api;
pub mod pods;
pub mod supervise;
