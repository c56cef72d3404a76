//! `keelson install`: binaries, systemd units, CNI plugin and conflist, and
//! default configuration in the standard places.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// Flags of `keelson install`.
#[derive(clap::Args)]
pub struct InstallArgs {
    /// Root to install under (a staging dir for packaging; / on a node).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Pod CIDR written into the CNI conflist (the node's podCIDR)
    /// [default: 10.244.0.0/24; a joining node's comes from the control
    /// plane].
    #[arg(long)]
    pub pod_cidr: Option<ipnet::Ipv4Net>,
    /// Join with a bootstrap token: the API server's URL (with --token and
    /// --ca-cert-hash, from `keelson token create --print-join-command`).
    #[arg(long, requires_all = ["token", "ca_cert_hash"])]
    pub server: Option<String>,
    /// Join: the bootstrap token.
    #[arg(long, requires = "server")]
    pub token: Option<String>,
    /// Join: the cluster CA's hash.
    #[arg(long, requires = "server")]
    pub ca_cert_hash: Option<String>,
}

/// The agent's credentials line of agent.env.
fn credentials(args: &InstallArgs) -> String {
    match (&args.server, &args.token, &args.ca_cert_hash) {
        (Some(s), Some(t), Some(h)) => format!("--server {s} --token {t} --ca-cert-hash {h}"),
        _ => "--kubeconfig /etc/keelson/agent.kubeconfig".into(),
    }
}

/// The pod CIDR to configure: the flag's; else, unless joining (the
/// control plane gives it), the single node's default.
fn pod_cidr(args: &InstallArgs) -> Option<ipnet::Ipv4Net> {
    args.pod_cidr.or_else(|| {
        args.server
            .is_none()
            .then(|| crate::up::DEFAULT_POD_CIDR.parse().expect("a CIDR"))
    })
}

const SERVER_UNIT: &str = include_str!("../../systemd/keelson-server.service");
const AGENT_UNIT: &str = include_str!("../../systemd/keelson-agent.service");

/// What `keelson install` writes: (path under the root, mode, contents).
/// Configuration files already present are kept.
fn install_files(
    pod_cidr: Option<ipnet::Ipv4Net>,
    credentials: &str,
) -> Vec<(&'static str, u32, String, bool)> {
    let cluster_cidr = crate::up::DEFAULT_CLUSTER_CIDR;
    let own_cidr = pod_cidr
        .map(|c| format!(" --pod-cidr {c}"))
        .unwrap_or_default();
    let mut files = vec![
        (
            "etc/systemd/system/keelson-server.service",
            0o644,
            SERVER_UNIT.into(),
            false,
        ),
        (
            "etc/systemd/system/keelson-agent.service",
            0o644,
            AGENT_UNIT.into(),
            false,
        ),
        (
            "etc/keelson/agent.env",
            0o600,
            format!(
                "# keelson agent configuration (read by keelson-agent.service)\n\
                 KEELSON_AGENT_CREDENTIALS={credentials}\n\
                 KEELSON_AGENT_FLAGS=--proxy-mode ebpf{own_cidr} --cluster-cidr {cluster_cidr} --cluster-dns 169.254.20.10 --dns-listen 169.254.20.10:53\n"
            ),
            true,
        ),
        (
            "etc/keelson/server.env",
            0o600,
            format!(
                "# keelson server configuration (read by keelson-server.service)\n\
                 KEELSON_SERVER_FLAGS=--listen 0.0.0.0:6443 --cluster-cidr {cluster_cidr}\n"
            ),
            true,
        ),
    ];
    // A joining node's pod CIDR comes from the control plane (node IPAM):
    // the agent writes keelson-cni's configuration for it then.
    if let Some(c) = pod_cidr {
        files.push((
            "etc/cni/net.d/10-keelson.conflist",
            0o644,
            keelson_agent::network::conf::keelson_conflist(c, None),
            true,
        ));
    }
    files
}

pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().context("find the keelson binary")?;
    let cni = exe.with_file_name("keelson-cni");
    if !cni.is_file() {
        bail!("keelson-cni not found next to {}", exe.display());
    }
    let put = |rel: &str, mode: u32, write: &dyn Fn(&std::path::Path) -> std::io::Result<()>| {
        let path = args.root.join(rel);
        let dir = path.parent().context("install path has a parent")?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        // Write beside, then rename: a running binary is replaced, not overwritten.
        let tmp = path.with_extension("keelson-new");
        write(&tmp).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("install {}", path.display()))?;
        println!("installed {}", path.display());
        anyhow::Ok(())
    };
    for (rel, src) in [
        ("usr/local/bin/keelson", &exe),
        ("usr/local/bin/keelson-cni", &cni),
        ("opt/cni/bin/keelson-cni", &cni),
    ] {
        put(rel, 0o755, &|p| std::fs::copy(src, p).map(|_| ()))?;
    }
    for (rel, mode, text, keep) in install_files(pod_cidr(&args), &credentials(&args)) {
        if keep && args.root.join(rel).exists() {
            println!("kept {}", args.root.join(rel).display());
            continue;
        }
        put(rel, mode, &|p| std::fs::write(p, &text))?;
    }
    Ok(())
}
