//! Pod egress: traffic from this node's pods to anything outside the
//! cluster's pod network leaves with the node's address (masquerade), as the
//! CNI `ipMasq` option or ip-masq-agent gives a kubelet node. Without it a
//! pod's packets reach the API server's host (the `kubernetes` Service's
//! endpoint) or a registry with a pod source address the far side has no
//! route back to. Traffic between pods, on this node or another, keeps its
//! source address.
//!
//! One nftables table, `ip keelson-egress`, replaced atomically.

use ipnet::Ipv4Net;
use keelson_proxy::nft::{NftError, NftRunner};

/// The table's name.
pub const TABLE: &str = "keelson-egress";

/// The table for pods in `pod_cidr`, the cluster's pod network being
/// `cluster_cidr` (pure).
pub fn script(pod_cidr: Ipv4Net, cluster_cidr: Ipv4Net) -> String {
    format!(
        "add table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat + 10; policy accept;\n\
         \t\tip saddr {pod_cidr} ip daddr != {cluster_cidr} fib daddr type != local masquerade\n\
         \t}}\n}}\n"
    )
}

/// Installs the table (idempotent). `cluster_cidr` None: this node's pod
/// CIDR stands for it.
pub fn apply(
    nft: &impl NftRunner,
    pod_cidr: Ipv4Net,
    cluster_cidr: Option<Ipv4Net>,
) -> Result<(), NftError> {
    nft.apply(&script(pod_cidr, cluster_cidr.unwrap_or(pod_cidr)))
}

/// [`apply`] with the real nft; a failure is a Warning Event on the Node
/// (`EgressMasqueradeFailed`). Whether the table is in place.
pub fn masquerade(
    pod_cidr: Ipv4Net,
    cluster_cidr: Option<Ipv4Net>,
    events: &crate::events::Recorder,
) -> bool {
    match apply(
        &keelson_proxy::nft::NftCli::default(),
        pod_cidr,
        cluster_cidr,
    ) {
        Ok(()) => {
            tracing::info!(%pod_cidr, ?cluster_cidr, "pod egress masqueraded");
            true
        }
        Err(e) => {
            events.node(
                crate::events::EventType::Warning,
                "EgressMasqueradeFailed",
                &e.to_string(),
            );
            tracing::warn!("pod egress masquerade: {e}");
            false
        }
    }
}

/// Removes the table (idempotent).
pub fn remove(nft: &impl NftRunner) -> Result<(), NftError> {
    nft.apply(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerades_only_leaving_the_pod_network() {
        let s = script(
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        );
        assert!(s.contains(
            "ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 fib daddr type != local masquerade"
        ));
        assert!(s.starts_with("add table ip keelson-egress\ndelete table ip keelson-egress\n"));
    }
}
