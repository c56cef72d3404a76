//! Sync cost of the nftables backend at 1k / 10k / 30k Services (2 endpoints
//! each), in a scratch network namespace. Full sync three ways (see
//! `NftBackend::full_sync`): with no table (structure by `nft -f`, elements
//! by one netlink transaction), with the table present (one netlink
//! transaction replacing every element), and a whole-table rebuild (one
//! `nft -f` transaction); then one-Service changes (plan of the named
//! Service + render + one element-only transaction). Prints medians. Needs
//! root.
//!
//! cargo bench -p keelson-proxy --bench sync

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use keelson_proxy::backend::ProxyBackend;
use keelson_proxy::model::{DesiredState, Endpoint, Protocol, ServicePort, ServicePortName};
use keelson_proxy::nft::netlink::NetlinkSocket;
use keelson_proxy::nft::render::{self, NftConfig};
use keelson_proxy::nft::{FullSyncKind, NftBackend, NftCli};
use keelson_proxy::plan::{plan, plan_services};

fn state(n: u32) -> DesiredState {
    let mut s = DesiredState::default();
    for i in 0..n {
        let ip = |a: u8| Ipv4Addr::new(a, (i >> 16) as u8, (i >> 8) as u8, i as u8);
        s.services.insert(
            ServicePortName {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
                port: "http".into(),
                protocol: Protocol::Tcp,
            },
            ServicePort {
                protocol: Protocol::Tcp,
                port: 80,
                cluster_ips: vec![ip(10)],
                external_ips: vec![],
                node_port: None,
                affinity_timeout: None,
                external_local: false,
                internal_endpoints: vec![
                    Endpoint {
                        ip: ip(11),
                        port: 8080,
                        local: false,
                    },
                    Endpoint {
                        ip: ip(12),
                        port: 8080,
                        local: false,
                    },
                ],
                external_endpoints: vec![],
            },
        );
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // Root, a scratch netns and nft; skipping fails under KEELSON_REQUIRE_ALL=1.
    if !keelson_e2e::needs("proxy sync bench")
        .root()
        .tools(&["ip", "nft"])
        .ok()
    {
        return;
    }
    let ns = keelson_e2e::Netns::new("kpbench");
    let cfg = NftConfig::default();
    // KEELSON_BENCH_CLI=1: element changes through the nft CLI too (the old path).
    let netlink = std::env::var_os("KEELSON_BENCH_CLI").is_none();
    println!(
        "nftables backend (one transaction per sync; element changes via {}), medians:",
        if netlink { "netlink" } else { "the nft CLI" }
    );
    println!(
        "{:>8}  {:>10}  {:>14}  {:>14}  {:>14}  {:>16}  {:>16}  {:>16}  {:>10}",
        "services",
        "render",
        "full: no table",
        "full: present",
        "full: rebuild",
        "change endpoint",
        "add service",
        "remove service",
        "(of which plan)"
    );
    for n in [1_000u32, 10_000, 30_000] {
        let base = state(n);
        let mut backend = NftBackend::new(NftCli::in_netns(&ns.name), cfg.clone());
        if netlink {
            let sock = NetlinkSocket::open(Some(&ns.name)).expect("open netlink socket");
            backend = backend.with_element_writer(Box::new(sock));
        }
        let runs = if n >= 30_000 { 3 } else { 5 };
        let mut render_t = Vec::new();
        let (mut created, mut present, mut rebuilt) = (Vec::new(), Vec::new(), Vec::new());
        let mut cli_only = NftBackend::new(NftCli::in_netns(&ns.name), cfg.clone());
        for _ in 0..runs {
            let t = Instant::now();
            let o = render::state_objects(&base, &cfg);
            let _ = render::render_full(&o, &cfg, 1);
            render_t.push(t.elapsed());

            // Whole-table rebuild: one `nft -f` (also the path without netlink).
            let t = Instant::now();
            cli_only.full_sync(&base).expect("full sync (rebuild)");
            rebuilt.push(t.elapsed());
            assert_eq!(cli_only.last_full_sync(), FullSyncKind::Rebuilt);
            if !netlink {
                continue;
            }
            // First start: no table.
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", &ns.name, "nft", "delete", "table", "ip", &cfg.table,
                ])
                .status();
            let t = Instant::now();
            backend.full_sync(&base).expect("full sync (no table)");
            created.push(t.elapsed());
            assert_eq!(backend.last_full_sync(), FullSyncKind::Created);
            // Restart or resync: the table is there with this structure.
            let t = Instant::now();
            backend.full_sync(&base).expect("full sync (table present)");
            present.push(t.elapsed());
            assert_eq!(backend.last_full_sync(), FullSyncKind::Elements);
        }
        let ms = |v: Vec<Duration>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.1}ms", median(v).as_secs_f64() * 1e3)
            }
        };
        let full = (ms(created), ms(present), ms(rebuilt));
        // One Service's endpoint replaced, then back: element updates only.
        let key = base.services.keys().nth(n as usize / 2).unwrap().clone();
        let mut changed = base.clone();
        changed.services.get_mut(&key).unwrap().internal_endpoints[1].ip =
            Ipv4Addr::new(9, 9, 9, 9);
        let mut added = base.clone();
        let mut new_key = key.clone();
        new_key.name = "brand-new".into();
        let mut sp = base.services[&key].clone();
        sp.cluster_ips = vec![Ipv4Addr::new(10, 250, 0, 1)];
        added.services.insert(new_key.clone(), sp);
        let mut removed = base.clone();
        removed.services.remove(&key);
        // The sync loop plans only the Services its watch events named.
        let dirty: BTreeSet<(String, String)> = [
            (key.namespace.clone(), key.name.clone()),
            (new_key.namespace.clone(), new_key.name.clone()),
        ]
        .into();
        let mut results = Vec::new();
        let mut plan_t = Vec::new();
        for other in [&changed, &added, &removed] {
            let mut times = Vec::new();
            for _ in 0..10 {
                for (from, to) in [(&base, other), (other, &base)] {
                    let t = Instant::now();
                    let changes = plan_services(from, to, &dirty);
                    let planned = t.elapsed();
                    // Untimed: the narrow plan is the full plan.
                    assert_eq!(changes, plan(from, to)); // one change: same order
                    assert_eq!(changes.services.len(), 1);
                    let t = Instant::now();
                    backend.apply(&changes, to).expect("incremental sync");
                    times.push(planned + t.elapsed());
                    plan_t.push(planned);
                }
            }
            results.push(median(times));
        }
        println!(
            "{:>8}  {:>8.1}ms  {:>14}  {:>14}  {:>14}  {:>14.2}ms  {:>14.2}ms  {:>14.2}ms  {:>10.3}ms",
            n,
            median(render_t).as_secs_f64() * 1e3,
            full.0,
            full.1,
            full.2,
            results[0].as_secs_f64() * 1e3,
            results[1].as_secs_f64() * 1e3,
            results[2].as_secs_f64() * 1e3,
            median(plan_t).as_secs_f64() * 1e3,
        );
    }
}
