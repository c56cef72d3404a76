//! Kubelet-style pod and QoS cgroups (v1 and v2): kubepods / burstable /
//! besteffort / pod<uid> / container, resource limits, OOM detection.
