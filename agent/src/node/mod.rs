//! Node registration, Lease heartbeats and node status.

pub mod routes;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::events::{EventType, Recorder};
use crate::health::{NodeHealth, Snapshot, remember_failures, transitions};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often node status (conditions, capacity) is refreshed.
pub const STATUS_REFRESH: Duration = Duration::from_secs(30);
/// Max pods per node.
pub const MAX_PODS: u32 = 110;

/// Errors registering or heartbeating; each names the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An API call failed.
    #[error("{op} node {node}: {source}")]
    Api {
        /// Operation.
        op: &'static str,
        /// Node name.
        node: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// What the node reports about itself.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// InternalIP.
    pub node_ip: IpAddr,
    /// spec.podCIDR, when set.
    pub pod_cidr: Option<String>,
    /// Node API port (daemonEndpoints.kubeletEndpoint.Port).
    pub api_port: u16,
    /// containerRuntimeVersion, e.g. `runc://1.1.5`.
    pub runtime_version: String,
}

/// Facts read from the host (rooted at /proc and /etc for the real node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Online CPUs.
    pub cpus: usize,
    /// MemTotal in bytes.
    pub memory_bytes: u64,
    /// Kernel release.
    pub kernel: String,
    /// PRETTY_NAME from os-release.
    pub os_image: String,
    /// Hostname.
    pub hostname: String,
    /// machine-id.
    pub machine_id: String,
    /// boot_id.
    pub boot_id: String,
}

/// MemTotal from /proc/meminfo text, in bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// PRETTY_NAME from os-release text.
pub fn parse_os_release(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix("PRETTY_NAME=")
            .map(|v| v.trim().trim_matches('"').to_string())
    })
}

fn read_trim(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl HostFacts {
    /// Reads the facts under `proc_dir` (/proc) and `etc_dir` (/etc).
    pub fn read(proc_dir: &Path, etc_dir: &Path) -> Self {
        let meminfo = std::fs::read_to_string(proc_dir.join("meminfo")).unwrap_or_default();
        let os = std::fs::read_to_string(etc_dir.join("os-release"))
            .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_bytes: parse_meminfo_total(&meminfo).unwrap_or(0),
            kernel: read_trim(proc_dir.join("sys/kernel/osrelease")),
            os_image: parse_os_release(&os).unwrap_or_else(|| "Linux".into()),
            hostname: read_trim(proc_dir.join("sys/kernel/hostname")),
            machine_id: read_trim(etc_dir.join("machine-id")),
            boot_id: read_trim(proc_dir.join("sys/kernel/random/boot_id")),
        }
    }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn micro_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Each Node condition's `lastTransitionTime`: the time its status last
/// changed, as this agent saw it.
#[derive(Debug, Default, Clone)]
pub struct ConditionClock {
    since: BTreeMap<&'static str, (&'static str, String)>,
}

impl ConditionClock {
    /// The conditions as status JSON: `health`'s, then the pressure
    /// conditions the agent does not measure yet (always False), stamped
    /// with `now` and their transition times.
    pub fn render(&mut self, health: &[crate::health::Condition], now: &str) -> Vec<Value> {
        let fixed = [
            (
                "MemoryPressure",
                "KeelsonHasSufficientMemory",
                "keelson agent has sufficient memory available",
            ),
            (
                "DiskPressure",
                "KeelsonHasNoDiskPressure",
                "keelson agent has no disk pressure",
            ),
            (
                "PIDPressure",
                "KeelsonHasSufficientPID",
                "keelson agent has sufficient PID available",
            ),
        ]
        .map(|(type_, reason, message)| crate::health::Condition {
            type_,
            status: "False",
            reason: reason.into(),
            message: message.into(),
        });
        health
            .iter()
            .chain(fixed.iter())
            .map(|c| {
                let since = match self.since.get(c.type_) {
                    Some((status, t)) if *status == c.status => t.clone(),
                    _ => {
                        self.since.insert(c.type_, (c.status, now.to_string()));
                        now.to_string()
                    }
                };
                json!({"type": c.type_, "status": c.status, "reason": c.reason,
                       "message": c.message, "lastHeartbeatTime": now,
                       "lastTransitionTime": since})
            })
            .collect()
    }
}

/// The Node's status as a merge-patch body (pure); `conditions` from
/// [`ConditionClock::render`].
pub fn status_body(cfg: &NodeConfig, facts: &HostFacts, conditions: Vec<Value>) -> Value {
    let mem_ki = facts.memory_bytes / 1024;
    let capacity = json!({
        "cpu": facts.cpus.to_string(),
        "memory": format!("{mem_ki}Ki"),
        "pods": MAX_PODS.to_string(),
        "ephemeral-storage": "0",
    });
    json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": cfg.node_ip.to_string()},
            {"type": "Hostname", "address": cfg.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.api_port}},
        "nodeInfo": {
            "machineID": facts.machine_id,
            "systemUUID": facts.machine_id,
            "bootID": facts.boot_id,
            "kernelVersion": facts.kernel,
            "osImage": facts.os_image,
            "containerRuntimeVersion": cfg.runtime_version,
            "kubeletVersion": format!("keelson-{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
        "conditions": conditions,
    }})
}

fn api_err(op: &'static str, node: &str) -> impl FnOnce(kube::Error) -> NodeError {
    let node = node.to_string();
    move |source| NodeError::Api { op, node, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Creates the Node (or updates an existing one) and posts its status.
pub async fn register(
    client: &kube::Client,
    cfg: &NodeConfig,
    health: &NodeHealth,
    clock: &mut ConditionClock,
) -> Result<(), NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = json!({
        "kubernetes.io/hostname": cfg.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch(),
    });
    let mut meta = json!({"name": cfg.name, "labels": labels});
    let mut spec = json!({});
    if let Some(c) = &cfg.pod_cidr {
        spec = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": meta.clone(), "spec": spec.clone(),
    }))
    .expect("node object");
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 409) => {
            // Keep an existing podCIDR: only set it when we have one.
            meta.as_object_mut().map(|m| m.remove("name"));
            let mut body = json!({"metadata": meta});
            if cfg.pod_cidr.is_some() {
                body["spec"] = spec;
            }
            nodes
                .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map_err(api_err("update", &cfg.name))?;
        }
        Err(e) => return Err(api_err("create", &cfg.name)(e)),
    }
    post_status(client, cfg, &health.snapshot(), clock).await?;
    renew_lease(client, cfg).await
}

async fn post_status(
    client: &kube::Client,
    cfg: &NodeConfig,
    health: &Snapshot,
    clock: &mut ConditionClock,
) -> Result<(), NodeError> {
    let facts = HostFacts::read(Path::new("/proc"), Path::new("/etc"));
    let conditions = clock.render(&crate::health::conditions(health), &now_rfc3339());
    let body = status_body(cfg, &facts, conditions);
    Api::<Node>::all(client.clone())
        .patch_status(&cfg.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map_err(api_err("update status of", &cfg.name))?;
    Ok(())
}

/// Renews (creating if absent) the node's Lease in kube-node-lease.
pub async fn renew_lease(client: &kube::Client, cfg: &NodeConfig) -> Result<(), NodeError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": cfg.name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": cfg.name, "leaseDurationSeconds": 40, "renewTime": micro_now()},
    });
    match leases
        .patch(&cfg.name, &PatchParams::default(), &Patch::Merge(&lease))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => {
            let l: Lease = serde_json::from_value(lease).expect("lease object");
            match leases.create(&PostParams::default(), &l).await {
                Ok(_) => Ok(()),
                Err(e) if is_status(&e, 409) => Ok(()),
                Err(e) => Err(api_err("create lease of", &cfg.name)(e)),
            }
        }
        Err(e) => Err(api_err("renew lease of", &cfg.name)(e)),
    }
}

/// Renews the Lease every 10 s and refreshes node status every 30 s, until
/// aborted; a change of the agent's health is posted at once, with a Node
/// Event for each failure and recovery. Failures are logged and retried on
/// the next tick.
pub async fn heartbeat(
    client: kube::Client,
    cfg: NodeConfig,
    health: NodeHealth,
    events: Recorder,
    mut clock: ConditionClock,
) {
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_REFRESH);
    lease_tick.tick().await;
    status_tick.tick().await;
    let mut changes = health.subscribe();
    // What the conditions show: a part restarting after a failure keeps
    // showing the failure until it is ready.
    let mut shown = changes.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&client, &cfg).await {
                    tracing::warn!("{e}");
                }
                continue;
            }
            _ = status_tick.tick() => {}
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                let now = remember_failures(&shown, &changes.borrow_and_update());
                for ev in transitions(&shown, &now) {
                    let type_ = if ev.warning { EventType::Warning } else { EventType::Normal };
                    events.node(type_, &ev.reason, &ev.message);
                }
                shown = now;
            }
        }
        if let Err(e) = post_status(&client, &cfg, &shown, &mut clock).await {
            tracing::warn!("{e}");
        }
    }
}

/// The first non-loopback IPv4 (else IPv6) address of the host, from the
/// routing table's view of interfaces (/proc/net/fib_trie and if_inet6).
pub fn first_non_loopback_ip() -> Option<IpAddr> {
    // Connecting a UDP socket sends nothing; it makes the kernel pick the
    // source address it would route from.
    for target in ["192.0.2.1:9", "[2001:db8::1]:9"] {
        let bind = if target.starts_with('[') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        if let Ok(s) = std::net::UdpSocket::bind(bind)
            && s.connect(target).is_ok()
            && let Ok(a) = s.local_addr()
            && !a.ip().is_loopback()
            && !a.ip().is_unspecified()
        {
            return Some(a.ip());
        }
    }
    None
}

/// `<runtime> --version`'s version number ("1.1.5+ds1" from runc).
pub async fn runtime_version(bin: &Path) -> String {
    let out = tokio::process::Command::new(bin)
        .arg("--version")
        .output()
        .await;
    match out {
        Ok(o) => parse_runtime_version(&String::from_utf8_lossy(&o.stdout)),
        Err(_) => "unknown".into(),
    }
}

/// The version from the first line of `--version` output.
pub fn parse_runtime_version(text: &str) -> String {
    text.lines()
        .next()
        .and_then(|l| {
            l.split_whitespace()
                .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        })
        .unwrap_or("unknown")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_facts() {
        assert_eq!(
            parse_meminfo_total("MemTotal:       24684040 kB\nMemFree: 1 kB\n"),
            Some(24684040 * 1024)
        );
        assert_eq!(parse_meminfo_total("nothing"), None);
        assert_eq!(
            parse_os_release("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            parse_runtime_version("runc version 1.1.5+ds1\ncommit: x"),
            "1.1.5+ds1"
        );
        assert_eq!(parse_runtime_version("crun version 1.8.1\n"), "1.8.1");
        assert_eq!(parse_runtime_version(""), "unknown");
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        use crate::health::{Part, Snapshot, State, conditions};
        let mut clock = ConditionClock::default();
        let mut s = Snapshot::new();
        s.insert(Part::ServiceProxy, State::Starting);
        let c = clock.render(&conditions(&s), "t0");
        assert_eq!(c[1]["type"], "ServiceProxyReady");
        assert_eq!(c[1]["lastTransitionTime"], "t0");
        s.insert(
            Part::ServiceProxy,
            State::Failed {
                reason: "ServiceProxyFailed".into(),
                message: "m".into(),
            },
        );
        // Still False: the time stays.
        let c = clock.render(&conditions(&s), "t1");
        assert_eq!(c[1]["reason"], "ServiceProxyFailed");
        assert_eq!(c[1]["lastTransitionTime"], "t0");
        assert_eq!(c[1]["lastHeartbeatTime"], "t1");
        s.insert(Part::ServiceProxy, State::Ready);
        let c = clock.render(&conditions(&s), "t2");
        assert_eq!(c[1]["status"], "True");
        assert_eq!(c[1]["lastTransitionTime"], "t2");
        assert_eq!(c[0]["lastTransitionTime"], "t0");
    }

    #[test]
    fn status_body_has_what_the_scheduler_and_kubectl_read() {
        let cfg = NodeConfig {
            name: "n1".into(),
            node_ip: "10.0.0.5".parse().unwrap(),
            pod_cidr: None,
            api_port: 10250,
            runtime_version: "runc://1.1.5".into(),
        };
        let facts = HostFacts {
            cpus: 2,
            memory_bytes: 2048 * 1024,
            kernel: "6.1".into(),
            os_image: "Debian".into(),
            hostname: "h".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
        };
        let mut clock = ConditionClock::default();
        let health = crate::health::conditions(&Default::default());
        clock.render(&health, "2024-01-01T00:00:00Z");
        let conditions = clock.render(&health, "2024-01-01T00:00:01Z");
        let b = status_body(&cfg, &facts, conditions);
        let s = &b["status"];
        assert_eq!(s["capacity"]["cpu"], "2");
        assert_eq!(s["capacity"]["memory"], "2048Ki");
        assert_eq!(s["allocatable"]["pods"], "110");
        assert_eq!(s["addresses"][0]["address"], "10.0.0.5");
        assert_eq!(s["addresses"][1]["type"], "Hostname");
        assert_eq!(s["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(s["conditions"][0]["reason"], "KeelsonReady");
        assert_eq!(
            s["conditions"][0]["lastTransitionTime"],
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(
            s["conditions"][0]["lastHeartbeatTime"],
            "2024-01-01T00:00:01Z"
        );
        assert_eq!(s["conditions"][3]["type"], "PIDPressure");
        assert!(
            s["nodeInfo"]["kubeletVersion"]
                .as_str()
                .unwrap()
                .starts_with("keelson-")
        );
        // Round-trips into the typed Node.
        let n: Node =
            serde_json::from_value(json!({"metadata": {"name": "n1"}, "status": s})).unwrap();
        assert_eq!(
            n.status
                .unwrap()
                .node_info
                .unwrap()
                .container_runtime_version,
            "runc://1.1.5"
        );
    }
}
