//! Golden tests (no root): Service/EndpointSlice YAML in tests/golden/*.yaml
//! -> the full nftables ruleset and the eBPF backend's map contents (a text
//! dump of the maps after a full sync into the in-memory maps), compared with
//! the checked-in *.nft and *.bpf next to it. `KEELSON_UPDATE_GOLDEN=1 cargo test -p keelson-proxy --test golden`
//! rewrites the files that differ and fails (review, then run again without
//! it); another value of it is an error. Also table tests of the planner and
//! incremental rendering.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_proxy::model::{
    DesiredState, Endpoint, Protocol, ServicePort, ServicePortName, service_key, service_ports,
    slice_service,
};
use keelson_proxy::nft::render::{self, NftConfig, Programmed};
use keelson_proxy::plan::{Changes, StaleFlow, plan, plan_services};

const NODE: &str = "node-a";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn cfg() -> NftConfig {
    NftConfig {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        // Only the family chains in use: readable golden files.
        prealloc_families: 0,
        ..Default::default()
    }
}

fn load(path: &Path) -> DesiredState {
    let (services, slices) = load_objects(path);
    DesiredState::from_objects(&services, &slices, NODE)
}

fn load_objects(path: &Path) -> (Vec<Service>, Vec<EndpointSlice>) {
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for d in docs {
        match d["kind"].as_str() {
            Some("Service") => services.push(serde_json::from_value::<Service>(d).unwrap()),
            Some("EndpointSlice") => {
                slices.push(serde_json::from_value::<EndpointSlice>(d).unwrap())
            }
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        }
    }
    (services, slices)
}

fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

/// The event-driven path (one Service at a time: `set_service` from the
/// Service and its own slices, `plan_services` over the named Services)
/// gives exactly what the whole-state path gives, for every fixture, and
/// from every fixture to every other.
#[test]
fn per_service_updates_match_the_whole_state() {
    let paths = fixtures();
    assert!(paths.len() >= 4, "{paths:?}");
    let states: Vec<DesiredState> = paths.iter().map(|p| load(p)).collect();
    for (path, whole) in paths.iter().zip(&states) {
        let (services, slices) = load_objects(path);
        let mut built = DesiredState::default();
        let mut keys = BTreeSet::new();
        for svc in &services {
            let key = service_key(svc);
            let own = slices
                .iter()
                .filter(|s| slice_service(s).as_ref() == Some(&key));
            built.set_service(&key.0, &key.1, service_ports(svc, own, NODE));
            keys.insert(key);
        }
        assert_eq!(&built, whole, "{}", path.display());
        assert!(!whole.services.is_empty(), "{}", path.display());
        // Removing every Service one by one empties the state.
        let mut emptied = built.clone();
        for (ns, name) in &keys {
            emptied.set_service(ns, name, Vec::new());
        }
        assert!(emptied.services.is_empty());
    }
    for (a, pa) in states.iter().zip(&paths) {
        for b in &states {
            let keys: BTreeSet<(String, String)> = a
                .services
                .keys()
                .chain(b.services.keys())
                .map(|k| (k.namespace.clone(), k.name.clone()))
                .collect();
            let narrow = plan_services(a, b, &keys);
            let by_name = |c: &Changes| {
                let mut v = c.services.clone();
                v.sort_by(|x, y| x.name.cmp(&y.name));
                v
            };
            assert_eq!(by_name(&narrow), by_name(&plan(a, b)), "{}", pa.display());
            let mut applied = a.clone();
            applied.apply_changes(&narrow);
            assert_eq!(&applied, b);
            // Naming no Service plans nothing, whatever differs.
            assert!(plan_services(a, b, &BTreeSet::new()).is_empty());
        }
    }
}

/// Rendered full ruleset of a fixture (generation 0).
pub fn render_fixture(path: &Path) -> String {
    let state = load(path);
    render::render_full(&render::state_objects(&state, &cfg()), &cfg(), 0)
}

/// The eBPF maps of a fixture: a full sync into the in-memory maps, dumped.
pub fn bpf_dump_fixture(path: &Path) -> String {
    let state = load(path);
    let mut table = keelson_ebpf::LbTable::new(keelson_ebpf::FakeMaps::default());
    table
        .full_sync(&keelson_proxy::ebpf::lb_services(&state))
        .unwrap_or_else(|e| panic!("sync {}: {e}", path.display()));
    keelson_ebpf::dump_maps(table.maps()).unwrap()
}

/// Whether this run rewrites the golden files: only for
/// `KEELSON_UPDATE_GOLDEN=1`; any other value is a mistake, not a wish.
fn update_golden() -> bool {
    match std::env::var("KEELSON_UPDATE_GOLDEN") {
        Err(_) => false,
        Ok(v) if v == "1" => true,
        Ok(v) => panic!(
            "KEELSON_UPDATE_GOLDEN={v:?}: set it to 1 to rewrite the golden files, or unset it"
        ),
    }
}

#[test]
fn golden_rulesets() {
    let update = update_golden();
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 7, "fixtures missing: {fixtures:?}");
    let mut failures = Vec::new();
    let mut rewritten = Vec::new();
    for f in &fixtures {
        for (ext, got) in [("nft", render_fixture(f)), ("bpf", bpf_dump_fixture(f))] {
            let want_path = f.with_extension(ext);
            let want = std::fs::read_to_string(&want_path).unwrap_or_default();
            if got == want {
                continue;
            }
            if update {
                std::fs::write(&want_path, &got).unwrap();
                rewritten.push(want_path.display().to_string());
                continue;
            }
            failures.push(format!(
                "{} differs from {} (KEELSON_UPDATE_GOLDEN=1 rewrites):\n{got}",
                f.display(),
                want_path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A rewrite is never a pass: the new files are for review, and the next
    // run without KEELSON_UPDATE_GOLDEN is the test.
    assert!(
        rewritten.is_empty(),
        "rewrote {} golden file(s); review them (git diff), then run again without KEELSON_UPDATE_GOLDEN:\n{}",
        rewritten.len(),
        rewritten.join("\n")
    );
}

fn fixture(name: &str) -> DesiredState {
    load(&golden_dir().join(name))
}

fn find<'a>(s: &'a DesiredState, name: &str, port: &str) -> &'a ServicePort {
    s.services
        .iter()
        .find(|(k, _)| k.name == name && k.port == port)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name}:{port} not in state"))
}

#[test]
fn model_choices() {
    let s = fixture("terminating.yaml");
    let sp = find(&s, "draining", "");
    assert_eq!(
        sp.internal_endpoints
            .iter()
            .map(|e| e.ip)
            .collect::<Vec<_>>(),
        vec![Ipv4Addr::new(10, 244, 1, 60)],
        "only the serving terminating endpoint"
    );
    let s = fixture("local-policies.yaml");
    let ing = find(&s, "ingress", "http");
    assert_eq!(ing.external_endpoints.len(), 1);
    assert!(ing.external_endpoints[0].local);
    assert_eq!(
        ing.internal_endpoints.len(),
        2,
        "eTP does not filter ClusterIP"
    );
    assert!(find(&s, "internal", "grpc").internal_endpoints.is_empty());
    let s = fixture("named-target-port.yaml");
    let https = find(&s, "api", "https");
    let ports: BTreeSet<u16> = https.internal_endpoints.iter().map(|e| e.port).collect();
    assert_eq!(ports, BTreeSet::from([8443, 9443]));
    assert_eq!(find(&s, "api", "metrics").internal_endpoints.len(), 1);
    let s = fixture("nodeport.yaml");
    let shop = find(&s, "shop", "web");
    assert_eq!(
        shop.external_ips,
        vec![Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(198, 51, 100, 7)]
    );
    assert_eq!(shop.node_port, Some(30443));
    let s = fixture("affinity.yaml");
    assert_eq!(find(&s, "sticky", "").affinity_timeout, Some(600));
}

/// A synthetic state of `n` Services, 2 endpoints each.
fn synthetic(n: u32) -> DesiredState {
    let mut s = DesiredState::default();
    for i in 0..n {
        let ip = |a: u8| Ipv4Addr::new(a, (i >> 16) as u8, (i >> 8) as u8, i as u8);
        s.services.insert(
            ServicePortName {
                namespace: "ns".into(),
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

fn element_lines(script: &str) -> Vec<&str> {
    script
        .lines()
        .filter(|l| l.starts_with('\t'))
        .map(str::trim)
        .collect()
}

#[test]
fn planner_no_change_is_empty() {
    let s = synthetic(100);
    assert!(plan(&s, &s).is_empty());
    let p = Programmed::from_objects(&render::state_objects(&s, &cfg()));
    let (script, _) = render::render_changes(&plan(&s, &s), &s, &p, &cfg()).unwrap();
    assert_eq!(script, "");
}

#[test]
fn planner_one_service_change_touches_only_its_elements() {
    let before = synthetic(1000);
    // As the proxy runs: family chains for up to 4 endpoints preallocated.
    let cfg4 = NftConfig {
        prealloc_families: 4,
        ..cfg()
    };
    let p = Programmed::from_objects(&render::state_objects(&before, &cfg4));
    // Cases: endpoint replaced, endpoint added, Service removed, Service added.
    let key = before.services.keys().nth(500).unwrap().clone();
    let vip = before.services[&key].cluster_ips[0].to_string();

    let mut replaced = before.clone();
    replaced.services.get_mut(&key).unwrap().internal_endpoints[1].ip = Ipv4Addr::new(9, 9, 9, 9);
    let mut grown = before.clone();
    grown
        .services
        .get_mut(&key)
        .unwrap()
        .internal_endpoints
        .push(Endpoint {
            ip: Ipv4Addr::new(9, 9, 9, 8),
            port: 8080,
            local: false,
        });
    let mut removed = before.clone();
    removed.services.remove(&key);
    let mut added = before.clone();
    let mut new_key = key.clone();
    new_key.name = "brand-new".into();
    let mut new_sp = before.services[&key].clone();
    new_sp.cluster_ips = vec![Ipv4Addr::new(10, 200, 0, 1)];
    added.services.insert(new_key.clone(), new_sp);

    for (case, after, vip, want_add, want_del) in [
        ("replaced", &replaced, vip.as_str(), 1, 1),
        // lb_3 is a preallocated shared family chain.
        ("grown", &grown, vip.as_str(), 2, 1),
        ("removed", &removed, vip.as_str(), 0, 2),
        ("added", &added, "10.200.0.1", 2, 0),
    ] {
        let changes = plan(&before, after);
        assert_eq!(changes.services.len(), 1, "{case}: {changes:?}");
        let (script, _) = render::render_changes(&changes, after, &p, &cfg4).unwrap();
        for l in element_lines(&script) {
            assert!(
                l.starts_with(vip),
                "{case}: element of another Service: {l}\n{script}"
            );
        }
        let adds = script.matches("add element").count();
        let dels = script.matches("delete element").count();
        assert_eq!((adds, dels), (want_add, want_del), "{case}:\n{script}");
        assert!(
            !script.contains("chain"),
            "{case}: no chain changes:\n{script}"
        );
        if case == "grown" {
            // Without lb_3 in the table, only a full sync can add it.
            let bare = Programmed::from_objects(&render::state_objects(&before, &cfg()));
            assert!(render::render_changes(&changes, after, &bare, &cfg()).is_none());
        }
        // The element lines are few: one Service's worth.
        assert!(element_lines(&script).len() <= 6, "{case}:\n{script}");
    }
}

#[test]
fn affinity_change_keeps_sets_of_remaining_endpoints() {
    let before = fixture("affinity.yaml");
    let p = Programmed::from_objects(&render::state_objects(&before, &cfg()));
    let mut after = before.clone();
    let sp = after.services.values_mut().next().unwrap();
    sp.internal_endpoints.truncate(1);
    let changes = plan(&before, &after);
    let (script, next) = render::render_changes(&changes, &after, &p, &cfg()).unwrap();
    // The internal dispatch chain is rewritten; one endpoint chain and set go.
    assert_eq!(script.matches("delete chain").count(), 1, "{script}");
    assert_eq!(script.matches("delete set").count(), 1, "{script}");
    assert_eq!(
        script.matches("add set").count(),
        0,
        "kept sets keep their clients: {script}"
    );
    assert!(script.contains("numgen random mod 1 vmap"), "{script}");
    assert_eq!(next.chains.len(), p.chains.len() - 1);
}

#[test]
fn stale_udp_flows_for_removed_endpoints() {
    let before = fixture("clusterip.yaml");
    let mut after = before.clone();
    for sp in after.services.values_mut() {
        sp.internal_endpoints
            .retain(|e| e.ip != Ipv4Addr::new(10, 244, 2, 2));
    }
    let flows = plan(&before, &after).stale_udp_flows();
    assert_eq!(
        flows,
        vec![StaleFlow {
            dst: Some(Ipv4Addr::new(10, 96, 0, 10)),
            port: 53,
            endpoint: Ipv4Addr::new(10, 244, 2, 2),
        }],
        "only the UDP port's flows"
    );
}

#[test]
fn hairpin_only_for_local_endpoints() {
    let s = fixture("clusterip.yaml");
    let h = render::hairpin_elements(&s);
    let keys: Vec<&str> = h.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, vec!["10.244.1.2 . 10.244.1.2"]);
}
