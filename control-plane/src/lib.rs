//! Keelson's control-plane companion: a Kubernetes API server over an
//! embedded (SQLite) or etcd store.

#![forbid(unsafe_code)]

pub mod api;
pub mod controllers;
pub mod scheduler;
pub mod server;
pub mod store;
