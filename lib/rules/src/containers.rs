//! Container kinds.

use k8s_openapi::api::core::v1::Container;

/// A native sidecar: an init container with `restartPolicy: Always`. It
/// starts in the init sequence, keeps running beside the main containers,
/// is restarted whatever the pod's policy, and stops after them.
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_restart_policy_always_makes_a_sidecar() {
        let mut c = Container::default();
        assert!(!is_sidecar(&c));
        c.restart_policy = Some("Always".into());
        assert!(is_sidecar(&c));
        c.restart_policy = Some("Never".into());
        assert!(!is_sidecar(&c));
    }
}
