//! The node HTTP API (TLS on 10250): healthz, pods, containerLogs.
