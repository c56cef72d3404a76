//! Must-show 5: pods on two "nodes" (two network namespaces standing for
//! hosts, joined by a link) reach each other through the cross-node routes
//! that `routes::reconcile` installs.

mod common;

use std::net::SocketAddr;

use common::*;
use keelson_cni::routes::{Node, reconcile};
use keelson_host::rtnetlink::Socket;

#[test]
fn pods_on_two_nodes_reach_each_other() {
    if !can_run("two_nodes", &["/usr/bin/ping", "/usr/sbin/ip"]) {
        return;
    }
    let (ha, hb) = (Netns::new("kc-na"), Netns::new("kc-nb"));
    let (pa, pb) = (Netns::new("kc-npa"), Netns::new("kc-npb"));
    // The shared link between the two nodes.
    let (la, lb) = (unique("kn").replace('-', ""), unique("kn").replace('-', ""));
    let (la, lb) = (
        &la[la.len().saturating_sub(12)..],
        &lb[lb.len().saturating_sub(12)..],
    );
    ha.ip(&[
        "link", "add", la, "type", "veth", "peer", "name", lb, "netns", &hb.name,
    ]);
    ha.ip(&["addr", "add", "198.18.100.1/24", "dev", la]);
    hb.ip(&["addr", "add", "198.18.100.2/24", "dev", lb]);
    ha.ip(&["link", "set", la, "up"]);
    hb.ip(&["link", "set", lb, "up"]);

    let data = tempfile::tempdir().unwrap();
    let ca = conf("nodes", "198.19.10.0/24", &data.path().join("a"));
    let cb = conf("nodes", "198.19.11.0/24", &data.path().join("b"));
    let ra = cni(&ha, "ADD", "na-pod", Some(&pa), &ca);
    assert!(ra.ok, "{ra:?}");
    let rb = cni(&hb, "ADD", "nb-pod", Some(&pb), &cb);
    assert!(rb.ok, "{rb:?}");
    let (ia, ib) = (result_ip(&ra.stdout), result_ip(&rb.stdout));
    // Without the cross-node routes there is no way across.
    assert!(!pa.ping(ib));

    let nodes = vec![
        Node {
            name: "a".into(),
            internal_ip: "198.18.100.1".parse().unwrap(),
            pod_cidr: "198.19.10.0/24".parse().unwrap(),
        },
        Node {
            name: "b".into(),
            internal_ip: "198.18.100.2".parse().unwrap(),
            pod_cidr: "198.19.11.0/24".parse().unwrap(),
        },
        // A node on no shared link is skipped, not routed.
        Node {
            name: "c".into(),
            internal_ip: "203.0.113.3".parse().unwrap(),
            pod_cidr: "198.19.12.0/24".parse().unwrap(),
        },
    ];
    for (me, ns) in [("a", &ha), ("b", &hb)] {
        let sock = Socket::in_netns(&ns.path).unwrap();
        let plan = reconcile(&sock, me, &nodes).unwrap();
        assert_eq!(plan.routes.len(), 1, "{plan:?}");
        assert_eq!(plan.skipped.len(), 1, "{plan:?}");
        // Idempotent: a second pass changes nothing.
        let before = ns.ip(&["route", "show"]);
        reconcile(&sock, me, &nodes).unwrap();
        assert_eq!(ns.ip(&["route", "show"]), before);
    }
    assert!(
        ha.ip(&["route", "show"])
            .contains("198.19.11.0/24 via 198.18.100.2")
    );

    assert!(pa.ping(ib), "ping pod a -> pod b");
    assert!(pb.ping(ia), "ping pod b -> pod a");
    let _srv = tcp_server(&pb, 9090);
    assert_eq!(
        tcp_get(&pa, SocketAddr::from((ib, 9090))).unwrap(),
        format!("hello from {}", pb.name)
    );

    // Node b leaves: its route goes, ours stays untouched otherwise.
    let sock = Socket::in_netns(&ha.path).unwrap();
    reconcile(&sock, "a", &nodes[..1]).unwrap();
    assert!(!ha.ip(&["route", "show"]).contains("198.19.11.0/24"));
    assert!(!pa.ping(ib));
}
