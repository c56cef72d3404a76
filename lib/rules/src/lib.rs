//! Kubernetes rules as pure functions, one home for each: taints and
//! tolerations, pod readiness and availability, node affinity and label
//! selectors, resource quantities, QoS classes and owner references. Used
//! by the scheduler, the controllers, the API server's defaulting and the
//! node agent alike, and tested once against upstream's tables.
//!
//! No I/O, no async, no clock: every function is a function of its
//! arguments (a caller passes the time in).

#![forbid(unsafe_code)]

pub mod affinity;
pub mod containers;
pub mod owners;
pub mod qos;
pub mod quantity;
pub mod readiness;
pub mod selectors;
pub mod taints;
