//! `keelson down`: removes everything `keelson up` made on this host.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// Flags of `keelson down`.
#[derive(clap::Args)]
pub struct DownArgs {
    /// The data dir `keelson up` used.
    #[arg(long, default_value = crate::up::DATA_DIR)]
    pub data_dir: PathBuf,
    /// The cluster DNS address `keelson up` added to `lo`.
    #[arg(long, default_value = crate::up::DNS_ADDRESS)]
    pub dns_address: std::net::Ipv4Addr,
    /// Keep the data dir (cluster state, images, certificates).
    #[arg(long)]
    pub keep_data: bool,
}

pub async fn run(args: DownArgs) -> anyhow::Result<()> {
    use keelson_agent::pods::host::{Host, HostConfig};
    let exe = std::env::current_exe().context("find the keelson binary")?;
    let bin_dir = exe
        .parent()
        .context("the keelson binary's directory")?
        .to_path_buf();
    let run_dir = PathBuf::from(crate::up::RUN_DIR);
    let host = Host::new(HostConfig {
        root_dir: args.data_dir.join("agent"),
        run_dir: run_dir.clone(),
        pod_log_dir: PathBuf::from("/var/log/pods"),
        runtime_bin: keelson_agent::agent::resolve_runtime("runc")?,
        runtime_name: "runc".into(),
        cgroup_root: crate::up::CGROUP_ROOT.into(),
        cni: keelson_agent::network::Cni::new(
            args.data_dir.join("cni/net.d"),
            keelson_agent::network::default_bin_dirs(&bin_dir),
        ),
        insecure_registries: Vec::new(),
        node_name: String::new(),
        node_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        cluster_dns: None,
    })
    .context("open the agent's state")?;
    let pods = host
        .teardown_all(std::time::Duration::from_secs(2))
        .await
        .map_err(|e| anyhow::anyhow!("tear down pods: {e}"))?;
    println!("removed {pods} pods (containers, mounts, namespaces, cgroups, pod addresses)");
    // The Service proxy's nftables table and eBPF pins (absent is fine).
    keelson_proxy::remove_all_state(
        &keelson_proxy::nft::render::NftConfig::default(),
        std::path::Path::new(keelson_proxy::DEFAULT_PIN_DIR),
    )
    .context("remove the Service proxy's state")?;
    println!("removed the Service proxy's nftables table and eBPF pins");
    keelson_agent::network::egress::remove(&keelson_proxy::nft::NftCli::default())
        .context("remove the pod egress table")?;
    println!("removed the pod egress nftables table");
    let nl = keelson_host::rtnetlink::Socket::new().context("open a netlink socket")?;
    if nl
        .delete_addr(nl.link_index("lo")?, "lo", args.dns_address, 32)
        .context("remove the cluster DNS address")?
    {
        println!("removed {}/32 from lo", args.dns_address);
    }
    for dir in [run_dir.clone()] {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("remove {}: {e}", dir.display()),
        }
    }
    if !args.keep_data {
        match std::fs::remove_dir_all(&args.data_dir) {
            Ok(()) => println!("removed {}", args.data_dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("remove {}: {e}", args.data_dir.display()),
        }
    }
    Ok(())
}
