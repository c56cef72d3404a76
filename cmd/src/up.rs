//! `keelson up`: a single-node cluster in one process. Builds a
//! [`ServerConfig`] and an [`AgentConfig`] from their defaults and a few
//! flags, and runs both.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use keelson_agent::agent::AgentConfig;
use keelson_agent::health::{NodeHealth, Part};
use keelson_control_plane::server::{self, ServerConfig};
use keelson_proxy::ProxyMode;

/// Where `keelson up` keeps everything by default (`keelson down` too).
pub const DATA_DIR: &str = "/var/lib/keelson";
/// Pod cgroups of `keelson up` live under this name in every hierarchy (not
/// kubepods: a kubelet on the same host keeps its own).
pub const CGROUP_ROOT: &str = "keelson";
/// Namespaces and container state of `keelson up`.
pub const RUN_DIR: &str = "/run/keelson";
/// The node-local address cluster DNS answers on.
pub const DNS_ADDRESS: &str = "169.254.20.10";
/// The agent's kubeconfig under the data dir: the node's own identity
/// (`system:node:NAME`), written by the server at every start.
pub const NODE_KUBECONFIG: &str = "agent/node.kubeconfig";
/// The pod CIDR of a single node (`keelson up`, `keelson install`).
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/24";
/// The cluster's pod range, from which the control plane gives joining
/// Nodes their pod CIDRs (`keelson up`, `keelson install`).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Flags of `keelson up`.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Everything the cluster keeps: server/ (store, certificates,
    /// admin.kubeconfig), agent/ (images, pod state), cni/.
    #[arg(long, default_value = DATA_DIR)]
    pub data_dir: PathBuf,
    /// API server address.
    #[arg(long, default_value_t = ServerConfig::default().listen)]
    pub listen: SocketAddr,
    /// Node name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// This node's pod CIDR.
    #[arg(long, default_value = DEFAULT_POD_CIDR)]
    pub pod_cidr: ipnet::Ipv4Net,
    /// The cluster's pod range: Nodes that join get their pod CIDRs from
    /// it (node IPAM, /24 each); it holds --pod-cidr.
    #[arg(long, default_value = DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// Service load balancing: ebpf (falls back to nftables), nftables, none.
    #[arg(long, value_enum, default_value = "ebpf")]
    pub proxy_mode: ProxyMode,
    /// eBPF mode: interfaces (comma separated) whose outside clients reach
    /// NodePorts (the agent's --proxy-tc-interfaces). Absent: NodePorts
    /// answer this machine's own clients only in eBPF mode.
    #[arg(long, value_delimiter = ',', value_name = "IFACES")]
    pub proxy_tc_interfaces: Vec<String>,
    /// Node-local address the cluster DNS answers on (added to `lo`).
    #[arg(long, default_value = DNS_ADDRESS)]
    pub dns_address: std::net::Ipv4Addr,
}

/// The two configs `keelson up` runs (pure): the API server's and the
/// agent's, under `args.data_dir`; `bin_dir` holds keelson-cni.
pub fn configs(
    args: &UpArgs,
    node_name: &str,
    bin_dir: PathBuf,
) -> anyhow::Result<(ServerConfig, AgentConfig)> {
    use keelson_control_plane::controllers::nodeipam::{Allocation, DEFAULT_MASK_SIZE};
    if !args.cluster_cidr.contains(&args.pod_cidr) {
        bail!(
            "--pod-cidr {} is not inside --cluster-cidr {}",
            args.pod_cidr,
            args.cluster_cidr
        );
    }
    let server = ServerConfig {
        data_dir: args.data_dir.join("server"),
        listen: args.listen,
        controller_config: keelson_control_plane::controllers::ControllerConfig {
            identity: format!("{node_name}-{}", std::process::id()),
            node_ipam: Some(
                Allocation::new(args.cluster_cidr, DEFAULT_MASK_SIZE)
                    .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?,
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    let service_cidr = match server.api.service_cidr {
        ipnet::IpNet::V4(n) => Some(n),
        ipnet::IpNet::V6(_) => None,
    };
    let dns = std::net::IpAddr::V4(args.dns_address);
    let base = AgentConfig::default();
    let mut proxy = base.proxy.clone();
    proxy.mode = args.proxy_mode;
    proxy.nft.service_cidr = service_cidr;
    proxy.nft.cluster_cidr = Some(args.cluster_cidr);
    proxy.ebpf.tc_interfaces = args.proxy_tc_interfaces.clone();
    let agent = AgentConfig {
        kubeconfig: args.data_dir.join(NODE_KUBECONFIG),
        node_name: node_name.to_string(),
        root_dir: args.data_dir.join("agent"),
        cni_conf_dir: args.data_dir.join("cni/net.d"),
        cni_bin_dir: bin_dir,
        cgroup_root: CGROUP_ROOT.into(),
        run_dir: PathBuf::from(RUN_DIR),
        pod_cidr: Some(args.pod_cidr),
        proxy,
        cluster_dns: Some(dns),
        dns_listen: Some(SocketAddr::new(dns, 53)),
        ..base
    };
    Ok((server, agent))
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find the keelson binary")?;
    let bin_dir = exe
        .parent()
        .context("the keelson binary's directory")?
        .to_path_buf();
    if !bin_dir.join("keelson-cni").is_file() {
        bail!(
            "keelson-cni not found next to {} (build it: cargo build --release -p keelson-cni)",
            exe.display()
        );
    }
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("read the host name (or pass --node-name)")?
            .trim()
            .to_lowercase(),
    };
    let (server_config, agent_config) = configs(&args, &node_name, bin_dir)?;
    let cni_conf_dir = &agent_config.cni_conf_dir;
    std::fs::create_dir_all(cni_conf_dir)
        .with_context(|| format!("create {}", cni_conf_dir.display()))?;
    let conflist = cni_conf_dir.join("10-keelson.conflist");
    std::fs::write(
        &conflist,
        keelson_agent::network::conf::keelson_conflist(
            args.pod_cidr,
            Some(&args.data_dir.join("cni/ipam")),
        ),
    )
    .with_context(|| format!("write {}", conflist.display()))?;
    // The cluster DNS listens on a node-local address that pods reach
    // through their gateway (the host).
    let dns = args.dns_address;
    keelson_host::rtnetlink::Socket::new()
        .and_then(|nl| nl.add_addr(nl.link_index("lo")?, "lo", dns, 32))
        .with_context(|| format!("add the cluster DNS address {dns} to lo"))?;

    let handle = server::start(server_config)
        .await
        .context("start API server")?;
    if let Err(e) = handle.write_node_kubeconfig(&node_name, &agent_config.kubeconfig) {
        handle.shutdown().await;
        return Err(e).context("write the node's kubeconfig");
    }
    let kubeconfig = handle.kubeconfig.clone();
    println!("kubeconfig: {}", kubeconfig.display());
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get nodes,pods -A -o wide");

    let agent = match keelson_agent::agent::start(agent_config).await {
        Ok(a) => a,
        Err(e) => {
            handle.shutdown().await;
            return Err(e);
        }
    };
    let mut expected = vec![Part::Network, Part::ClusterDns];
    if args.proxy_mode != ProxyMode::None {
        expected.push(Part::ServiceProxy);
    }
    let status = tokio::spawn(report_status(
        agent.health.clone(),
        expected,
        format!(
            "node {} (proxy {:?}, cluster DNS {dns}); export KUBECONFIG={}",
            agent.node_name,
            args.proxy_mode,
            kubeconfig.display()
        ),
    ));
    crate::systemd::ready();
    // Returns on SIGTERM or Ctrl-C; pods keep running.
    crate::until_signal().await?;
    tracing::info!("stopping (containers keep running)");
    crate::systemd::stopping();
    status.abort();
    agent.stop();
    handle.shutdown().await;
    Ok(())
}

/// How long `keelson up` waits before it says a part is not ready.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// Prints one line when the cluster is ready, and one naming each part
/// that is not (a failure at once; a part still starting after
/// [`PATIENCE`]); again whenever that changes.
async fn report_status(health: NodeHealth, expected: Vec<Part>, what: String) {
    let mut rx = health.subscribe();
    let patience = tokio::time::sleep(PATIENCE);
    tokio::pin!(patience);
    let mut impatient = false;
    let mut last: Option<Result<(), Vec<String>>> = None;
    loop {
        let now = keelson_agent::health::summary(&rx.borrow_and_update(), &expected);
        let say = match &now {
            Ok(()) => true,
            Err(lines) => impatient || lines.iter().any(|l| !l.ends_with(": starting")),
        };
        if say && last.as_ref() != Some(&now) {
            match &now {
                Ok(()) => println!("keelson up: cluster ready: {what}"),
                Err(lines) => println!("keelson up: not ready: {}", lines.join("; ")),
            }
            last = Some(now);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            () = &mut patience, if !impatient => impatient = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        up: UpArgs,
    }

    #[test]
    fn up_runs_the_default_server_and_an_agent_under_the_data_dir() {
        let args = Wrap::parse_from(["x", "--data-dir", "/d"]).up;
        let (server, agent) = configs(&args, "n1", PathBuf::from("/bin-dir")).unwrap();
        let sd = ServerConfig::default();
        assert_eq!(server.data_dir, PathBuf::from("/d/server"));
        assert_eq!(server.listen, sd.listen);
        assert_eq!(server.api.service_cidr, sd.api.service_cidr);
        // The node acts as itself, never as the admin.
        assert_eq!(agent.kubeconfig, PathBuf::from("/d/agent/node.kubeconfig"));
        assert_eq!(agent.root_dir, PathBuf::from("/d/agent"));
        assert_eq!(agent.cni_bin_dir, PathBuf::from("/bin-dir"));
        assert_eq!(agent.proxy.mode, ProxyMode::Ebpf);
        assert_eq!(
            agent.proxy.nft.service_cidr.map(ipnet::IpNet::V4),
            Some(sd.api.service_cidr)
        );
        assert_eq!(agent.dns_listen, Some("169.254.20.10:53".parse().unwrap()));
        assert_eq!(agent.cgroup_root, CGROUP_ROOT);
        // Joining nodes get pod CIDRs from the cluster range holding ours.
        let ipam = server.controller_config.node_ipam.unwrap();
        assert_eq!(ipam.cluster_cidr.to_string(), DEFAULT_CLUSTER_CIDR);
        assert_eq!(ipam.mask_size, 24);
        assert_eq!(
            agent.pod_cidr.map(|c| c.to_string()).as_deref(),
            Some(DEFAULT_POD_CIDR)
        );
        assert_eq!(agent.proxy.nft.cluster_cidr, Some(ipam.cluster_cidr));
        let outside = Wrap::parse_from(["x", "--pod-cidr", "10.9.0.0/24"]).up;
        assert!(configs(&outside, "n1", PathBuf::from("/b")).is_err());
        // What up does not set is the agent's default.
        assert_eq!(agent.cluster_domain, AgentConfig::default().cluster_domain);
    }
}
