//! Reference: upstream kube-proxy (nftables mode) against Keelson's Service
//! proxy (nftables mode), side by side in one run, against the same
//! `keelson server`, with the same Services, in one scratch network
//! namespace, one proxy at a time, alternating.
//!
//! ```text
//! cargo xtask upstream                      # kube-proxy, once
//! cargo build --release -p keelson
//! cargo bench -p keelson-e2e --bench proxy_reference
//! ```
//!
//! For each size N (`KEELSON_BENCH_SERVICES`, default `1000,10000`):
//! Services with two endpoints each (selector-less, with an EndpointSlice);
//! then `KEELSON_BENCH_REPEAT` (3) rounds in which each proxy, in turn:
//! - starts with the N Services there: **full sync** is the time from its
//!   start until the last Service's ClusterIP is in its nftables Service map
//!   (both program the whole map in one transaction);
//! - gets `KEELSON_BENCH_CHANGES` (10) new Services, 1.2 s apart (above
//!   kube-proxy's default 1 s minimum sync interval): **one change** is the
//!   time from the EndpointSlice create returning until the Service's
//!   ClusterIP is in the map;
//! - its CPU seconds over the round and its RSS at the end.
//!
//! Reports medians (and the worst change) per proxy and the ratios
//! Keelson / kube-proxy. Each proxy runs with its defaults otherwise.
//! Needs root, nft and the upstream kube-proxy (`cargo xtask upstream`);
//! skips with the reason otherwise, or fails under
//! `KEELSON_REQUIRE_UPSTREAM=1`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use keelson_e2e::process::{cpu_seconds, rss_kb};
use keelson_e2e::{API_ONLY, Netns, ServerProcess, keelson_bin};
use kube::api::{Api, DeleteParams, PostParams};

const KUBE_PROXY: &str = "/var/cache/keelson/upstream/bin/kube-proxy";
const NODE: &str = "bench-node";
const NODE_IP: &str = "10.255.0.1";

fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proxy {
    Keelson,
    KubeProxy,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Keelson => "keelson",
            Proxy::KubeProxy => "kube-proxy",
        }
    }

    /// The table and map holding ClusterIP . proto . port → verdict.
    fn map(self) -> (&'static str, &'static str) {
        match self {
            Proxy::Keelson => ("keelson", "services"),
            Proxy::KubeProxy => ("kube-proxy", "service-ips"),
        }
    }

    fn start(self, kubeconfig: &std::path::Path, log: &std::path::Path) -> Child {
        let log = std::fs::File::create(log).expect("proxy log");
        let mut cmd = match self {
            Proxy::Keelson => {
                let mut c = Command::new(keelson_bin());
                c.args(["proxy", "--kubeconfig"])
                    .arg(kubeconfig)
                    .args(["--node-name", NODE, "--proxy-mode", "nftables"])
                    .args(["--node-ip", NODE_IP, "--cluster-cidr", "10.244.0.0/16"])
                    .args(["--service-cidr", "10.96.0.0/12"])
                    .args(["--metrics-listen", "127.0.0.1:10249"])
                    .env("KEELSON_LOG", "warn");
                c
            }
            Proxy::KubeProxy => {
                let mut c = Command::new(KUBE_PROXY);
                c.arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .args([
                        "--proxy-mode=nftables",
                        &format!("--hostname-override={NODE}"),
                    ])
                    .args(["--cluster-cidr=10.244.0.0/16", "--conntrack-max-per-core=0"])
                    .args(["--metrics-bind-address=127.0.0.1:10249"])
                    .args(["--healthz-bind-address=127.0.0.1:10256", "--v=0"]);
                c
            }
        };
        cmd.stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name()))
    }
}

/// Whether `ip` is in the proxy's Service map (the calling thread's netns).
fn programmed(p: Proxy, ip: &str) -> bool {
    let (table, map) = p.map();
    Command::new("nft")
        .args(["get", "element", "ip", table, map])
        .arg(format!("{{ {ip} . tcp . 80 }}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_programmed(p: Proxy, ip: &str, since: Instant, child: &mut Child) -> Duration {
    loop {
        if programmed(p, ip) {
            return since.elapsed();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{} exited ({status}) before programming {ip}", p.name());
        }
        assert!(
            since.elapsed() < Duration::from_secs(600),
            "{} did not program {ip} within 10 minutes",
            p.name()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stop(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn flush_ruleset() {
    let _ = Command::new("nft").args(["flush", "ruleset"]).status();
}

fn service(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]},
    })
}

fn slice(name: &str, i: u32) -> serde_json::Value {
    let ip = |a: u32| format!("10.{}.{}.{}", a, (i >> 8) & 0xff, i & 0xff);
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-a"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": name,
                                "endpointslice.kubernetes.io/managed-by": "bench"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [ip(240 + (i >> 16) * 2)], "conditions": {"ready": true}},
            {"addresses": [ip(241 + (i >> 16) * 2)], "conditions": {"ready": true}},
        ],
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
    })
}

/// Creates Service `name` and its slice; its ClusterIP.
async fn create(client: &kube::Client, name: &str, i: u32) -> String {
    let svcs: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
    );
    let slices: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::discovery::ApiResource::erase::<k8s_openapi::api::discovery::v1::EndpointSlice>(&()),
    );
    let pp = PostParams::default();
    let svc = svcs
        .create(&pp, &serde_json::from_value(service(name)).unwrap())
        .await
        .unwrap_or_else(|e| panic!("create service {name}: {e}"));
    slices
        .create(&pp, &serde_json::from_value(slice(name, i)).unwrap())
        .await
        .unwrap_or_else(|e| panic!("create slice {name}: {e}"));
    svc.data["spec"]["clusterIP"]
        .as_str()
        .expect("a ClusterIP")
        .to_string()
}

async fn delete(client: &kube::Client, name: &str) {
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(client.clone(), "default");
    let dp = DeleteParams::default();
    let _ = svcs.delete(name, &dp).await;
    let _ = slices.delete(&format!("{name}-a"), &dp).await;
}

#[derive(Default)]
struct Samples {
    full: Vec<Duration>,
    change: Vec<Duration>,
    cpu: Vec<f64>,
    rss_kb: Vec<u64>,
}

fn median<T: PartialOrd + Copy>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn bench(tmp: PathBuf) {
    let server = ServerProcess::start_with(None, API_ONLY);
    let client = server.client().await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
                "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
                "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
            }))
            .unwrap(),
        )
        .await
        .expect("create the node");
    let sizes: Vec<u32> = std::env::var("KEELSON_BENCH_SERVICES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let repeat = env_num("KEELSON_BENCH_REPEAT", 3);
    let changes = env_num("KEELSON_BENCH_CHANGES", 10) as u32;
    let mut made = 0u32;
    let mut last_ip = String::new();
    println!(
        "{:>6}  {:<10} {:>12} {:>12} {:>12} {:>9} {:>8}",
        "N", "proxy", "full sync", "change p50", "change max", "CPU s", "RSS MB"
    );
    for n in sizes {
        let t = Instant::now();
        let ips: Vec<String> = futures::stream::iter(made..n)
            .map(|i| {
                let client = client.clone();
                async move { create(&client, &format!("svc-{i}"), i).await }
            })
            .buffered(16)
            .collect()
            .await;
        if let Some(ip) = ips.last() {
            last_ip = ip.clone();
        }
        made = made.max(n);
        eprintln!(
            "{n} Services with EndpointSlices in place ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
        let mut results = [
            (Proxy::Keelson, Samples::default()),
            (Proxy::KubeProxy, Samples::default()),
        ];
        for round in 0..repeat {
            for k in 0..2 {
                // Alternate which proxy goes first.
                let idx = (k + round as usize) % 2;
                let p = results[idx].0;
                flush_ruleset();
                let log = tmp.join(format!("{}-{n}-{round}.log", p.name()));
                let start = Instant::now();
                let mut child = p.start(&server.kubeconfig, &log);
                let full = wait_programmed(p, &last_ip, start, &mut child);
                let mut lat = Vec::new();
                for c in 0..changes {
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    let name = format!("chg-{round}-{c}");
                    let i = 60_000 + c;
                    let svcs: Api<k8s_openapi::api::core::v1::Service> =
                        Api::namespaced(client.clone(), "default");
                    let svc = svcs
                        .create(
                            &PostParams::default(),
                            &serde_json::from_value(service(&name)).unwrap(),
                        )
                        .await
                        .expect("create change service");
                    let ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
                    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
                        Api::namespaced(client.clone(), "default");
                    slices
                        .create(
                            &PostParams::default(),
                            &serde_json::from_value(slice(&name, i)).unwrap(),
                        )
                        .await
                        .expect("create change slice");
                    let since = Instant::now();
                    lat.push(wait_programmed(p, &ip, since, &mut child));
                }
                let pid = child.id();
                let cpu = cpu_seconds(pid).unwrap_or(0.0);
                let rss = rss_kb(pid);
                stop(child);
                for c in 0..changes {
                    delete(&client, &format!("chg-{round}-{c}")).await;
                }
                let s = &mut results[idx].1;
                s.full.push(full);
                s.change.extend(lat);
                s.cpu.push(cpu);
                s.rss_kb.push(rss);
            }
        }
        flush_ruleset();
        for (p, s) in &results {
            println!(
                "{n:>6}  {:<10} {:>9.0} ms {:>9.1} ms {:>9.1} ms {:>9.2} {:>8.1}",
                p.name(),
                ms(median(&s.full)),
                ms(median(&s.change)),
                ms(*s.change.iter().max().expect("changes")),
                median(&s.cpu),
                median(&s.rss_kb) as f64 / 1024.0
            );
        }
        let (k, u) = (&results[0].1, &results[1].1);
        println!(
            "{n:>6}  keelson/kube-proxy: full sync {:.2}x, change p50 {:.2}x, CPU {:.2}x, RSS {:.2}x",
            ms(median(&k.full)) / ms(median(&u.full)),
            ms(median(&k.change)) / ms(median(&u.change)),
            median(&k.cpu) / median(&u.cpu).max(0.001),
            median(&k.rss_kb) as f64 / median(&u.rss_kb).max(1) as f64
        );
    }
    drop(server);
}

fn main() {
    if !std::path::Path::new(KUBE_PROXY).is_file() {
        let why = format!("{KUBE_PROXY} missing: run `cargo xtask upstream`");
        assert!(
            std::env::var("KEELSON_REQUIRE_UPSTREAM").as_deref() != Ok("1"),
            "KEELSON_REQUIRE_UPSTREAM=1: {why}"
        );
        eprintln!("skipping: {why}");
        return;
    }
    if !keelson_e2e::needs("proxy reference bench")
        .root()
        .tools(&["ip", "nft"])
        .ok()
    {
        return;
    }
    let ns = Netns::new("kpref");
    keelson_e2e::sh(&[
        "ip", "-n", &ns.name, "link", "add", "bench0", "type", "veth", "peer", "name", "bench1",
    ]);
    keelson_e2e::sh(&[
        "ip",
        "-n",
        &ns.name,
        "addr",
        "add",
        &format!("{NODE_IP}/24"),
        "dev",
        "bench0",
    ]);
    keelson_e2e::sh(&["ip", "-n", &ns.name, "link", "set", "bench0", "up"]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    // Everything (the server, both proxies, the client, nft) runs in the
    // scratch namespace: threads and processes started from this thread
    // stay there.
    keelson_host::netns::in_netns(&ns.path, move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(bench(dir))
    })
    .expect("enter the scratch namespace");
}
