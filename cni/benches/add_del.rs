//! Must-show 6: ADD+DEL latency of keelson-cni against Debian's reference
//! `ptp` + `host-local`, side by side in one run (the two alternate, so both
//! see the same machine noise). Each plugin is exec'd as a runtime would, in
//! a host namespace of its own, with a pod namespace it attaches to.
//!
//! `cargo bench -p keelson-cni` (root). `KEELSON_CNI_BENCH_ITERS` sets the
//! number of ADD+DEL pairs per plugin (default 200). Prints p50/p99 of ADD,
//! DEL and ADD+DEL for both, and the ratios (target: ≥ 2× faster).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

const PLUGIN: &str = env!("CARGO_BIN_EXE_keelson-cni");
const PTP: &str = "/usr/lib/cni/ptp";

fn run(plugin: &str, command: &str, cid: &str, netns: &str, conf: &[u8]) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child.stdin.take().unwrap().write_all(conf).unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{plugin} {command} failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
    both: Vec<Duration>,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !keelson_e2e::needs("add_del bench").root().tool(PTP).ok() {
        return;
    }
    let iters: usize = std::env::var("KEELSON_CNI_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let host = keelson_e2e::Netns::new("kcbh");
    let pod = keelson_e2e::Netns::new("kcbp");
    let data = tempfile::tempdir().unwrap();
    // Measured on a thread in the host namespace: every plugin it execs
    // starts there.
    host.run(|| measure(iters, &pod.path.display().to_string(), data.path()));
}

fn measure(iters: usize, pod_path: &str, data: &std::path::Path) {
    let keelson = json!({
        "cniVersion": "1.0.0", "name": "bench-k", "type": "keelson-cni",
        "subnet": "198.19.20.0/24", "dataDir": data.join("k"), "mtu": 1400,
    })
    .to_string();
    let ptp = json!({
        "cniVersion": "1.0.0", "name": "bench-p", "type": "ptp", "mtu": 1400,
        "ipam": {"type": "host-local", "subnet": "198.19.21.0/24", "dataDir": data.join("p")},
    })
    .to_string();
    let mut k = Samples::default();
    let mut p = Samples::default();
    let warmup = 5;
    for i in 0..iters + warmup {
        let cid = format!("bench-{i}");
        for (plugin, conf, s) in [(PLUGIN, &keelson, &mut k), (PTP, &ptp, &mut p)] {
            let a = run(plugin, "ADD", &cid, pod_path, conf.as_bytes());
            let d = run(plugin, "DEL", &cid, pod_path, conf.as_bytes());
            if i >= warmup {
                s.add.push(a);
                s.del.push(d);
                s.both.push(a + d);
            }
        }
    }
    println!("ADD+DEL latency, {iters} pairs each, alternating, same host and pod namespaces");
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "ADD+DEL p50", "ADD+DEL p99"
    );
    let mut rows = Vec::new();
    for (name, s) in [("keelson-cni", &mut k), ("ptp + host-local", &mut p)] {
        let row = (
            pct(&mut s.add, 0.5),
            pct(&mut s.add, 0.99),
            pct(&mut s.del, 0.5),
            pct(&mut s.del, 0.99),
            pct(&mut s.both, 0.5),
            pct(&mut s.both, 0.99),
        );
        println!(
            "{:<22} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
            name,
            ms(row.0),
            ms(row.1),
            ms(row.2),
            ms(row.3),
            ms(row.4),
            ms(row.5)
        );
        rows.push(row);
    }
    let r = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    println!(
        "speedup (ptp+host-local / keelson-cni): ADD p50 {:.2}x, DEL p50 {:.2}x, ADD+DEL p50 {:.2}x, ADD+DEL p99 {:.2}x (target >= 2x)",
        r(rows[0].0, rows[1].0),
        r(rows[0].2, rows[1].2),
        r(rows[0].4, rows[1].4),
        r(rows[0].5, rows[1].5)
    );
}
