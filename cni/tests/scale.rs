//! Must-show 2: 64 ADDs in parallel yield 64 distinct addresses; 2,000
//! ADD/DEL cycles leak nothing (`KEELSON_CNI_CYCLES` changes the count).

mod common;

use std::collections::HashSet;
use std::time::Instant;

use common::*;

#[test]
fn parallel_adds_get_distinct_addresses() {
    if !can_run("parallel_adds", &["/usr/sbin/ip"]) {
        return;
    }
    let host = Netns::new("kc-par");
    let data = tempfile::tempdir().unwrap();
    let c = conf("par", "198.19.4.0/24", data.path());
    let pods: Vec<Netns> = (0..64).map(|_| Netns::new("kc-pp")).collect();
    let started = Instant::now();
    let ips: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (host, c) = (&host, &c);
                s.spawn(move || {
                    let r = cni(host, "ADD", &format!("par-{i}"), Some(p), c);
                    assert!(r.ok, "ADD {i}: {r:?}");
                    result_ip(&r.stdout)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("64 parallel ADDs took {:?}", started.elapsed());
    let distinct: HashSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 64, "{ips:?}");
    assert_eq!(entries(&data.path().join("par/ips")).len(), 64);
    assert_eq!(host.kc_links().len(), 64);
    for (i, p) in pods.iter().enumerate() {
        assert!(cni(&host, "DEL", &format!("par-{i}"), Some(p), &c).ok);
    }
    assert!(host.kc_links().is_empty());
    assert!(entries(&data.path().join("par/ips")).is_empty());
    assert!(entries(&data.path().join("par/att")).is_empty());
}

#[test]
fn add_del_cycles_leak_nothing() {
    if !can_run("add_del_cycles", &["/usr/sbin/ip"]) {
        return;
    }
    let cycles: usize = std::env::var("KEELSON_CNI_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let host = Netns::new("kc-cyc");
    let pod = Netns::new("kc-cycp");
    let data = tempfile::tempdir().unwrap();
    // A /28 (14 addresses): the cycles wrap around the range many times.
    let c = conf("cyc", "198.19.5.0/28", data.path());
    let routes_before = host.ip(&["route", "show"]);
    let addrs_before = host.ip(&["addr", "show"]);
    let started = Instant::now();
    let mut seen = HashSet::new();
    for i in 0..cycles {
        let cid = format!("cyc-{i}");
        let r = cni(&host, "ADD", &cid, Some(&pod), &c);
        assert!(r.ok, "ADD {i}: {r:?}");
        seen.insert(result_ip(&r.stdout));
        let d = cni(&host, "DEL", &cid, Some(&pod), &c);
        assert!(d.ok, "DEL {i}: {d:?}");
    }
    eprintln!(
        "{cycles} ADD/DEL cycles took {:?} ({:?} per cycle)",
        started.elapsed(),
        started.elapsed() / cycles.max(1) as u32
    );
    if cycles >= 14 {
        assert_eq!(seen.len(), 14, "round robin covers the range");
    }
    assert!(host.kc_links().is_empty());
    assert_eq!(pod.links(), ["lo"]);
    assert_eq!(host.ip(&["route", "show"]), routes_before);
    assert_eq!(host.ip(&["addr", "show"]), addrs_before);
    assert!(entries(&data.path().join("cyc/ips")).is_empty());
    assert!(entries(&data.path().join("cyc/att")).is_empty());
    assert_eq!(
        entries(&data.path().join("cyc")),
        ["att", "ips", "last", "lock"]
    );
    // DEL leaves the kernel's last step of a veth deletion to a helper
    // process: every one of them finishes and is reaped, none piles up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !delete_link_helpers().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        delete_link_helpers(),
        Vec::<u32>::new(),
        "helpers left running"
    );
}

/// PIDs of running (not zombie) `keelson-cni --delete-link` helpers.
fn delete_link_helpers() -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && cmdline.split(|b| *b == 0).any(|a| a == b"--delete-link") {
            out.push(pid);
        }
    }
    out
}
