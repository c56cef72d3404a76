//! Sync cost into the real BPF maps: full sync of 1,000 / 10,000 / 30,000
//! Services (2 backends each) into empty maps, a no-op full resync (agent
//! restart over pinned maps), and one Service change. Prints medians.
//! Needs root (creates maps under /sys/fs/bpf/keelson-bench-<pid>).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keelson_ebpf::{Backend, EbpfLb, Frontend, LbConfig, LbService, LbTable, Proto};

fn services(n: usize, generation: u8) -> Vec<LbService> {
    (0..n)
        .map(|i| {
            let i = u32::try_from(i).unwrap();
            let vip = Ipv4Addr::from(0x0a60_0000 + i); // 10.96.0.0 + i
            LbService {
                frontend: Frontend {
                    proto: Proto::Tcp,
                    addr: vip,
                    port: 80,
                },
                flags: 0,
                affinity_timeout: None,
                backends: (0..2u32)
                    .map(|b| Backend {
                        addr: Ipv4Addr::from(0x0af4_0000 + i * 2 + b),
                        port: 8080 + u16::from(generation),
                    })
                    .collect(),
            }
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // Root for BPF maps; skipping fails under KEELSON_REQUIRE_ALL=1.
    if !keelson_e2e::needs("keelson-ebpf sync bench").root().ok() {
        return;
    }
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/keelson-bench-{}", std::process::id()));
    let lb = EbpfLb::open(&LbConfig::new(&pin_dir)).expect("open maps");
    let mut table = LbTable::new(lb.into_maps());
    println!("eBPF map sync (medians)");
    for n in [1_000usize, 10_000, 30_000] {
        let desired = services(n, 0);
        let mut full = Vec::new();
        for _ in 0..5 {
            table.full_sync(&[]).expect("clear");
            let t = Instant::now();
            table.full_sync(&desired).expect("full sync");
            full.push(t.elapsed());
        }
        let mut resync = Vec::new();
        for _ in 0..3 {
            // A restarted agent: a fresh table over the pinned maps.
            let maps = table.into_maps();
            table = LbTable::new(maps);
            let t = Instant::now();
            let stats = table.full_sync(&desired).expect("resync");
            resync.push(t.elapsed());
            assert_eq!(stats.services_written + stats.backends_written, 0);
        }
        let changed = services(n, 1);
        let mut one = Vec::new();
        for k in 0..51 {
            let svc = if k % 2 == 0 {
                &changed[n / 2]
            } else {
                &desired[n / 2]
            };
            let t = Instant::now();
            table.upsert(svc).expect("upsert");
            one.push(t.elapsed());
        }
        println!(
            "  {n:>6} services: full sync {:>9.2?}  restart resync {:>9.2?}  one change {:>9.2?}",
            median(full),
            median(resync),
            median(one)
        );
    }
    table.full_sync(&[]).expect("clear");
    drop(table);
    keelson_ebpf::remove_all(&pin_dir).expect("remove pins");
}
