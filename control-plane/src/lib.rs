//! Keelson's control-plane companion: a Kubernetes API server over an
//! embedded (SQLite) or etcd store, and the scheduler and controllers that
//! run against it (or any Kubernetes API server) over shared informers.

#![forbid(unsafe_code)]

pub mod api;
pub mod controllers;
pub mod informers;
pub mod scheduler;
pub mod server;
pub mod store;
