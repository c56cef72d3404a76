//! Node registration, Lease heartbeats and node status.
