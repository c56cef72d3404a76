//! Multi-node, end to end: one `keelson server` and three `keelson agent`s,
//! each agent in its own network namespace on a shared link (see
//! `keelson_e2e::multinode`). Real everything: runc, keelson-cni, the
//! agents' cross-node routes, the Service proxy (nftables; eBPF for the
//! `_ebpf` test), cluster DNS, the scheduler and the node lifecycle
//! controller.
//!
//! Needs root; skips (or fails under KEELSON_REQUIRE_ALL=1) otherwise. Each
//! test prints its wall time (`--nocapture` to see it).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keelson_e2e::multinode::{
    Cluster, EBPF_FALLBACK, EBPF_LOADED, ProxyMode, can_run, can_run_with, httpd_command,
};

/// Node lifecycle on a test scale: a node is NotReady 15 s after its last
/// Lease renewal (agents renew every 10 s) and its pods are evicted 5 s later.
const SERVER_FLAGS: &[&str] = &[
    "--node-monitor-grace-period",
    "15",
    "--default-toleration-seconds",
    "5",
];

/// Prints the test's wall time when it ends (pass or fail).
struct WallTime(&'static str, Instant);

impl Drop for WallTime {
    fn drop(&mut self) {
        println!(
            "wall time {}: {:.1} s",
            self.0,
            self.1.elapsed().as_secs_f64()
        );
    }
}

fn deployment(name: &str, image: &str, service_type: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {image}
        command: {cmd}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  type: {service_type}
  selector: {{app: {name}}}
  ports: [{{port: 80}}]
"#,
        cmd = httpd_command()
    )
}

/// Waits for 3 Running replicas of `app`, on 3 different nodes.
fn three_spread(c: &Cluster, app: &str) -> Vec<(String, String, String)> {
    let mut pods = Vec::new();
    c.wait_until(
        &format!("3 {app} pods Running"),
        Duration::from_secs(90),
        || {
            pods = c.running_pods(app);
            pods.len() == 3
        },
    );
    let nodes: BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(
        nodes.len(),
        3,
        "the scheduler did not spread {app} over the 3 nodes: {pods:?}"
    );
    pods
}

#[test]
fn pods_on_different_nodes_reach_each_other() {
    if !can_run("pods_on_different_nodes_reach_each_other") {
        return;
    }
    let _t = WallTime("pods_on_different_nodes_reach_each_other", Instant::now());
    let c = Cluster::start(3, SERVER_FLAGS);
    for (i, node) in c.nodes.iter().enumerate() {
        c.apply(&format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: pa-{i}, labels: {{app: pa}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {image}
    command: {cmd}
"#,
            node = node.name,
            image = c.busybox(),
            cmd = httpd_command()
        ));
    }
    let mut pods = Vec::new();
    c.wait_until("3 pods Running", Duration::from_secs(90), || {
        pods = c.running_pods("pa");
        pods.len() == 3
    });
    pods.sort();
    println!("pods: {pods:?}");
    // Each pod got its address from its own node's pod CIDR.
    for (i, (name, node, ip)) in pods.iter().enumerate() {
        assert_eq!(node, &c.nodes[i].name, "{name}");
        let prefix = c.nodes[i].pod_cidr.trim_end_matches("0/24");
        assert!(
            ip.starts_with(prefix),
            "{name} has {ip}, not in {prefix}0/24"
        );
    }
    // Every pod reaches every other pod, across nodes, by pod IP.
    for (from, from_node, _) in &pods {
        for (to, to_node, to_ip) in &pods {
            if from == to {
                continue;
            }
            let mut last = None;
            c.wait_until(
                &format!("{from} ({from_node}) -> {to} ({to_node}, {to_ip}): last answer {last:?}"),
                Duration::from_secs(20),
                || {
                    last = c.wget_from_pod(from, &format!("http://{to_ip}/"));
                    last.as_deref() == Some(&format!("hello from {to}"))
                },
            );
        }
    }
}

/// `log` without its ANSI colour sequences (ESC [ ... letter).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Every agent runs the eBPF proxy, not the nftables fallback: the programs
/// loaded into the node's own pin dir with the socket hooks attached to the
/// node's cgroup2 subtree, no fallback line, no nftables table in the node.
fn assert_ebpf_proxies(c: &Cluster) {
    for node in &c.nodes {
        let pins = node.bpf_pin_dir.as_ref().expect("eBPF pin dir");
        let cgroup = node.proxy_cgroup2.as_ref().expect("eBPF cgroup2 path");
        let want = format!("pin_dir={}", pins.display());
        let mut loaded = String::new();
        c.wait_until(
            &format!("{EBPF_LOADED} ({want}) in the log of {}", node.name),
            Duration::from_secs(30),
            || {
                let log = plain(&node.log());
                assert!(
                    !log.contains(EBPF_FALLBACK),
                    "the proxy of {} fell back to nftables:\n{log}",
                    node.name
                );
                match log
                    .lines()
                    .find(|l| l.contains(EBPF_LOADED) && l.contains(&want))
                {
                    Some(l) => {
                        loaded = l.to_string();
                        true
                    }
                    None => false,
                }
            },
        );
        // A first start attaches all four socket hooks (none adopted).
        for hook in ["connect4", "sendmsg4", "recvmsg4", "getpeer4"] {
            assert!(
                loaded.contains(&format!("\"{hook}\"")) && loaded.contains("adopted=[]"),
                "{} did not attach {hook} itself: {loaded}",
                node.name
            );
        }
        // Where bpftool is installed: the programs sit on the node's cgroup.
        if std::path::Path::new("/usr/sbin/bpftool").is_file() {
            let out = std::process::Command::new("/usr/sbin/bpftool")
                .args(["cgroup", "show"])
                .arg(cgroup)
                .output()
                .expect("run bpftool");
            let shown = String::from_utf8_lossy(&out.stdout);
            for prog in [
                "klb_connect4",
                "klb_sendmsg4",
                "klb_recvmsg4",
                "klb_getpeer4",
            ] {
                assert!(
                    shown.contains(prog),
                    "{prog} not attached to {} ({}):\n{shown}",
                    cgroup.display(),
                    node.name
                );
            }
        }
        let tables = node.exec(&["nft", "list", "tables"]);
        let tables = String::from_utf8_lossy(&tables.stdout);
        let has = |t: &str| tables.lines().any(|l| l.trim() == t);
        assert!(
            !has("table ip keelson"),
            "{} has the nftables proxy's table in eBPF mode:\n{tables}",
            node.name
        );
        // With TC interfaces: the masquerade table for Cluster-policy NodePorts.
        assert!(
            has("table ip keelson_ebpf"),
            "{} lacks the eBPF proxy's masquerade table:\n{tables}",
            node.name
        );
    }
}

#[test]
fn deployment_behind_a_service_answers_on_every_node_by_cluster_ip_and_dns_name() {
    service_answers_on_every_node_by_cluster_ip_and_dns_name(
        "deployment_behind_a_service_answers_on_every_node_by_cluster_ip_and_dns_name",
        ProxyMode::Nftables,
    );
}

#[test]
fn deployment_behind_a_service_answers_on_every_node_by_cluster_ip_and_dns_name_ebpf() {
    service_answers_on_every_node_by_cluster_ip_and_dns_name(
        "deployment_behind_a_service_answers_on_every_node_by_cluster_ip_and_dns_name_ebpf",
        ProxyMode::Ebpf,
    );
}

/// A 3-node cluster with the proxy in `mode` (its eBPF programs checked),
/// timed; `None` when the test cannot run here.
fn cluster(name: &'static str, mode: ProxyMode) -> Option<(WallTime, Cluster)> {
    if !can_run_with(name, mode) {
        return None;
    }
    let t = WallTime(name, Instant::now());
    let c = Cluster::start_with(3, SERVER_FLAGS, mode);
    if mode == ProxyMode::Ebpf {
        assert_ebpf_proxies(&c);
    }
    Some((t, c))
}

/// A 3-replica Deployment spread over the 3 nodes behind a ClusterIP
/// Service answers a pod on every node by ClusterIP and by DNS name, and all
/// three backends answer, with every agent's proxy in `mode`.
fn service_answers_on_every_node_by_cluster_ip_and_dns_name(name: &'static str, mode: ProxyMode) {
    let Some((_t, c)) = cluster(name, mode) else {
        return;
    };
    c.apply(&deployment("web", &c.busybox(), "ClusterIP"));
    let pods = three_spread(&c, "web");
    if mode == ProxyMode::Ebpf {
        // Each pod lives in its node's cgroup2 subtree, under that node's
        // socket programs.
        for (pod, node, _) in &pods {
            let n = c.nodes.iter().find(|n| &n.name == node).expect("node");
            let cg = c.pod_cgroup2(pod);
            assert!(
                cg.as_ref()
                    .is_some_and(|cg| cg.starts_with(n.proxy_cgroup2.as_ref().expect("cgroup"))),
                "pod {pod} on {node} is in cgroup2 {cg:?}, not under {:?}",
                n.proxy_cgroup2
            );
        }
    }
    let cluster_ip = c.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(!cluster_ip.is_empty(), "Service web has no ClusterIP");
    let mut backends = BTreeSet::new();
    for (pod, node, _) in &pods {
        for url in [
            format!("http://{cluster_ip}/"),
            "http://web.default.svc.cluster.local/".to_string(),
        ] {
            c.wait_until(
                &format!("{url} from pod {pod} on {node}"),
                Duration::from_secs(30),
                || match c.wget_from_pod(pod, &url) {
                    Some(body) if body.starts_with("hello from web-") => {
                        backends.insert(body);
                        true
                    }
                    _ => false,
                },
            );
        }
    }
    // Load balancing crosses nodes: keep asking until all three answered.
    let (pod, _, _) = &pods[0];
    c.wait_until(
        &format!("all 3 backends answer through {cluster_ip} (so far {backends:?})"),
        Duration::from_secs(30),
        || {
            if let Some(body) = c.wget_from_pod(pod, &format!("http://{cluster_ip}/")) {
                backends.insert(body);
            }
            backends.len() == 3
        },
    );
    if mode == ProxyMode::Ebpf {
        for node in &c.nodes {
            assert!(
                !plain(&node.log()).contains(EBPF_FALLBACK),
                "the proxy of {} fell back to nftables",
                node.name
            );
        }
    }
}

#[test]
fn node_port_answers_an_outside_client_on_every_node() {
    node_port_answers_on_every_node(
        "node_port_answers_an_outside_client_on_every_node",
        ProxyMode::Nftables,
    );
}

/// eBPF mode, externalTrafficPolicy: Cluster: the TC program DNATs and marks,
/// the node masquerades, so backends on the other nodes answer through any
/// node's NodePort too.
#[test]
fn node_port_answers_an_outside_client_on_every_node_ebpf() {
    node_port_answers_on_every_node(
        "node_port_answers_an_outside_client_on_every_node_ebpf",
        ProxyMode::Ebpf,
    );
}

/// The address in httpd's REMOTE_ADDR ("[::ffff:10.0.0.1]" or "10.0.0.1").
fn peer_ip(remote_addr: &str) -> &str {
    remote_addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_start_matches("::ffff:")
}

fn node_port_answers_on_every_node(name: &'static str, mode: ProxyMode) {
    let Some((_t, c)) = cluster(name, mode) else {
        return;
    };
    c.apply(&deployment("np", &c.busybox(), "NodePort"));
    three_spread(&c, "np");
    let port = c.kubectl_ok(&[
        "get",
        "svc",
        "np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    assert!(port.parse::<u16>().is_ok(), "nodePort {port:?}");
    let mut backends = BTreeSet::new();
    for node in &c.nodes {
        let url = format!("http://{}:{port}/", node.ip);
        c.wait_until(
            &format!("NodePort {url} from the outside client"),
            Duration::from_secs(30),
            || match c.curl_from_client(&url) {
                Some(body) if body.starts_with("hello from np-") => {
                    backends.insert(body);
                    true
                }
                _ => false,
            },
        );
    }
    // Through one node's NodePort, backends on the other nodes answer too.
    let url = format!("http://{}:{port}/", c.nodes[0].ip);
    c.wait_until(
        &format!("all 3 backends answer through {url} (so far {backends:?})"),
        Duration::from_secs(30),
        || {
            if let Some(b) = c.curl_from_client(&url) {
                backends.insert(b);
            }
            backends.len() == 3
        },
    );
    // Cluster policy: the backends see the node, not the client (masquerade).
    for _ in 0..3 {
        let seen = c.curl_from_client(&format!("{url}cgi-bin/ip"));
        let seen = seen.as_deref().map(peer_ip).unwrap_or_default().to_string();
        assert!(
            !seen.is_empty() && seen != c.client_ip().to_string(),
            "a backend saw {seen:?} through {url}"
        );
    }
}

/// eBPF mode: the TC program on each node's link serves a NodePort with
/// externalTrafficPolicy: Local to the outside client; each node answers
/// with its own backend, and only that one (no masquerade: the client's
/// address is kept).
#[test]
fn node_port_with_local_policy_answers_an_outside_client_ebpf() {
    let name = "node_port_with_local_policy_answers_an_outside_client_ebpf";
    let Some((_t, c)) = cluster(name, ProxyMode::Ebpf) else {
        return;
    };
    let manifest = deployment("npl", &c.busybox(), "NodePort").replace(
        "  type: NodePort\n",
        "  type: NodePort\n  externalTrafficPolicy: Local\n",
    );
    assert!(manifest.contains("externalTrafficPolicy: Local"));
    c.apply(&manifest);
    let pods = three_spread(&c, "npl");
    let port = c.kubectl_ok(&[
        "get",
        "svc",
        "npl",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    assert!(port.parse::<u16>().is_ok(), "nodePort {port:?}");
    for node in &c.nodes {
        let local = pods
            .iter()
            .find(|p| p.1 == node.name)
            .map(|p| format!("hello from {}", p.0))
            .expect("a pod on every node");
        let url = format!("http://{}:{port}/", node.ip);
        c.wait_until(
            &format!("NodePort {url} from the outside client answered by {local}"),
            Duration::from_secs(30),
            || c.curl_from_client(&url).as_deref() == Some(local.as_str()),
        );
        // Local policy: only that node's backend, every time.
        for _ in 0..5 {
            assert_eq!(
                c.curl_from_client(&url).as_deref(),
                Some(local.as_str()),
                "{url}"
            );
        }
        // ... and it sees the client's own address (no masquerade).
        let seen = c.curl_from_client(&format!("{url}cgi-bin/ip"));
        assert_eq!(
            seen.as_deref().map(peer_ip),
            Some(c.client_ip().to_string().as_str()),
            "{url}cgi-bin/ip"
        );
    }
    // No nftables table in eBPF mode: the TC program did this.
    assert_ebpf_proxies(&c);
}

#[test]
fn stopped_agent_gets_its_pods_rescheduled() {
    let name = "stopped_agent_gets_its_pods_rescheduled";
    if !can_run(name) {
        return;
    }
    let _t = WallTime(name, Instant::now());
    let mut c = Cluster::start(3, SERVER_FLAGS);
    c.apply(&deployment("web", &c.busybox(), "ClusterIP"));
    let before = three_spread(&c, "web");
    let dead = c.nodes[2].name.clone();
    let lost: Vec<String> = before
        .iter()
        .filter(|p| p.1 == dead)
        .map(|p| p.0.clone())
        .collect();
    assert_eq!(lost.len(), 1, "{before:?}");
    // Stop the agent: its Lease is no longer renewed.
    let stopped = Instant::now();
    c.nodes[2].kill();
    let mut after = Vec::new();
    c.wait_until(
        &format!("pods of {dead} rescheduled on the other nodes"),
        Duration::from_secs(60),
        || {
            after = c.running_pods("web");
            after.len() == 3 && after.iter().all(|p| p.1 != dead)
        },
    );
    println!(
        "rescheduled {} s after the agent stopped: {after:?}",
        stopped.elapsed().as_secs()
    );
    assert!(
        after.iter().all(|p| !lost.contains(&p.0)),
        "a replacement pod was expected: {after:?}"
    );
    let ready = c.kubectl_ok(&[
        "get",
        "node",
        &dead,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_ne!(
        ready, "True",
        "node {dead} still Ready after its agent stopped"
    );
    // The replacement serves: reach it from a pod on another node.
    let replacement = after
        .iter()
        .find(|p| !before.iter().any(|b| b.0 == p.0))
        .expect("a new pod");
    let from = after
        .iter()
        .find(|p| p.1 != replacement.1)
        .expect("a pod on another node");
    c.wait_until(
        &format!(
            "{} ({}) -> replacement {} ({}, {})",
            from.0, from.1, replacement.0, replacement.1, replacement.2
        ),
        Duration::from_secs(20),
        || {
            c.wget_from_pod(&from.0, &format!("http://{}/", replacement.2))
                .is_some_and(|b| b == format!("hello from {}", replacement.0))
        },
    );
}

/// The condition `type_` of node `name`: (status, reason, message).
fn node_condition(c: &Cluster, name: &str, type_: &str) -> Option<(String, String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "node", name, "-o", "json"])).ok()?;
    let cond = v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    let s = |k: &str| cond[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// The reasons of the Events about node `name`.
fn node_event_reasons(c: &Cluster, name: &str) -> Vec<String> {
    let out = c.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        &format!("involvedObject.kind=Node,involvedObject.name={name}"),
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    out.split_whitespace().map(str::to_string).collect()
}

#[test]
fn a_failed_proxy_is_visible_refuses_cluster_ips_and_recovers() {
    if !can_run("a_failed_proxy_is_visible_refuses_cluster_ips_and_recovers") {
        return;
    }
    let _t = WallTime(
        "a_failed_proxy_is_visible_refuses_cluster_ips_and_recovers",
        Instant::now(),
    );
    // The agent's PATH lacks nft and conntrack (Debian has them in
    // /usr/sbin; runc from there is linked in); `bin` is where the fault is
    // removed later.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/usr/sbin/runc", bin.path().join("runc")).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.path().display());
    let c = Cluster::start_opts(&keelson_e2e::multinode::ClusterOptions {
        nodes: 1,
        server_extra: SERVER_FLAGS,
        proxy_mode: ProxyMode::Nftables,
        agent_path: Some(path),
        registry_login: None,
        join: None,
    });
    let node = &c.nodes[0];
    c.apply(&deployment("web", &c.busybox(), "ClusterIP"));
    c.wait_until("3 web pods Running", Duration::from_secs(90), || {
        c.running_pods("web").len() == 3
    });
    let vip = c
        .kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .trim()
        .to_string();

    // The Node says the proxy is down, and why; an Event says so too.
    c.wait_until("ServiceProxyReady=False", Duration::from_secs(30), || {
        node_condition(&c, &node.name, "ServiceProxyReady")
            .is_some_and(|(s, r, _)| s == "False" && r == "ServiceProxyFailed")
    });
    let (_, _, message) = node_condition(&c, &node.name, "ServiceProxyReady").unwrap();
    assert!(
        message.contains("nft not found") && message.contains("Debian package nftables"),
        "{message}"
    );
    c.wait_until(
        "a ServiceProxyFailed Event",
        Duration::from_secs(20),
        || node_event_reasons(&c, &node.name).contains(&"ServiceProxyFailed".to_string()),
    );
    // So does the node API's health check.
    let healthz = |verbose: bool| {
        let q = if verbose { "?verbose" } else { "" };
        let out = std::process::Command::new("curl")
            .args(["-sk", "--max-time", "5", "-w", "\n%{http_code}"])
            .arg(format!("https://{}:10250/healthz{q}", node.ip))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let h = healthz(false);
    assert!(h.ends_with("\n500"), "{h}");
    assert!(
        h.contains("[-]service-proxy failed: ServiceProxyFailed"),
        "{h}"
    );

    // The ClusterIP is refused on the node at once, not routed out of it.
    let curl_vip = || node.exec(&["curl", "-s", "--max-time", "5", &format!("http://{vip}/")]);
    let start = Instant::now();
    let out = curl_vip();
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl {vip}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let routes = node.exec(&["ip", "route", "show", "exact", "10.96.0.0/12"]);
    assert!(
        String::from_utf8_lossy(&routes.stdout).starts_with("unreachable 10.96.0.0/12"),
        "{}",
        String::from_utf8_lossy(&routes.stdout)
    );

    // The fault removed, the agent's restart of the proxy finds nft: the
    // Service answers from the node and the Node says the proxy is ready.
    for tool in ["nft", "conntrack"] {
        std::os::unix::fs::symlink(format!("/usr/sbin/{tool}"), bin.path().join(tool)).unwrap();
    }
    c.wait_until("ServiceProxyReady=True", Duration::from_secs(90), || {
        node_condition(&c, &node.name, "ServiceProxyReady").is_some_and(|(s, _, _)| s == "True")
    });
    c.wait_until(
        "the Service answers on the node",
        Duration::from_secs(20),
        || String::from_utf8_lossy(&curl_vip().stdout).starts_with("hello from web-"),
    );
    c.wait_until("a ServiceProxyReady Event", Duration::from_secs(20), || {
        node_event_reasons(&c, &node.name).contains(&"ServiceProxyReady".to_string())
    });
    let h = healthz(false);
    assert_eq!(h, "ok\n200");
    assert!(healthz(true).contains("[+]service-proxy ok"));
}
