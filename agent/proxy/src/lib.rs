//! Service load balancing: Services and EndpointSlices -> pure model and
//! plan -> a backend behind [`backend::ProxyBackend`]: nftables
//! ([`nft`]) or eBPF ([`ebpf`], the keelson-ebpf programs). [`run_proxy`]
//! takes a [`ProxyConfig`]; `keelson proxy` and `keelson agent` build one.
//! See README.md for the nftables layout, the Service CIDR guard and the
//! sync model.

#![forbid(unsafe_code)]

pub mod backend;
pub mod conntrack;
pub mod ebpf;
pub mod guard;
pub mod metrics;
pub mod model;
pub mod nft;
pub mod plan;
mod sync;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;

pub use keelson_ebpf::DEFAULT_PIN_DIR;
pub use sync::{run_proxy, run_proxy_reporting};

/// Removes what either backend programmed on this host: the nftables table
/// of `nft`, the eBPF programs, links and maps pinned under `pin_dir`, and
/// the Service CIDR guard's route and drop link (what `--proxy-mode none`
/// does; `keelson down` calls it). Idempotent.
pub fn remove_all_state(
    nft: &nft::render::NftConfig,
    pin_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use backend::ProxyBackend as _;
    let cli = nft::NftCli {
        nft: keelson_host::tools::NFT.find()?.display().to_string(),
        ..Default::default()
    };
    nft::NftBackend::new(cli.clone(), nft.clone())
        .cleanup()
        .with_context(|| format!("remove the nftables table {}", nft.table))?;
    ebpf::remove_all(pin_dir, &cli)?;
    guard::remove(None).context("remove the Service CIDR route")?;
    Ok(())
}

/// What the proxy says about itself while it runs ([`run_proxy_reporting`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyHealth {
    /// Starting: finding its programs, opening its backend, listing
    /// Services and EndpointSlices.
    Starting,
    /// The last sync programmed the dataplane.
    Synced {
        /// `nftables` or `ebpf`.
        backend: &'static str,
    },
    /// The last sync failed; the next one is a full sync, a second later.
    SyncFailing {
        /// `nftables` or `ebpf`.
        backend: &'static str,
        /// Why.
        error: String,
    },
}

/// `ip netns exec NAME` with `ip` at `ip`.
pub fn netns_prefix(ip: &str, netns: &str) -> Vec<String> {
    vec![ip.into(), "netns".into(), "exec".into(), netns.into()]
}

/// The programs the proxy runs, found once when it starts.
#[derive(Clone, Debug)]
pub struct ProxyTools {
    /// `nft` (behind `ip netns exec` with `--netns`).
    pub nft: nft::NftCli,
    /// `conntrack` (likewise).
    pub conntrack: conntrack::ConntrackCli,
}

impl ProxyTools {
    /// Finds `nft`, `conntrack` and, with `--netns`, `ip` in `PATH`. Both
    /// modes need `nft` (the nftables table; eBPF mode's masquerade table
    /// and the removal of the other mode's table). A missing one is an
    /// error naming the Debian package.
    pub fn find(config: &ProxyConfig) -> Result<ProxyTools, keelson_host::tools::MissingTool> {
        use keelson_host::tools::{CONNTRACK, IP, NFT};
        let nft = NFT.find()?.display().to_string();
        let conntrack = CONNTRACK.find()?.display().to_string();
        let prefix = match &config.netns {
            Some(n) => netns_prefix(&IP.find()?.display().to_string(), n),
            None => Vec::new(),
        };
        Ok(ProxyTools {
            nft: nft::NftCli {
                prefix: prefix.clone(),
                nft,
            },
            conntrack: conntrack::ConntrackCli { prefix, conntrack },
        })
    }
}

/// Which dataplane programs Services.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProxyMode {
    #[default]
    Nftables,
    Ebpf,
    /// No Service load balancing; removes what a backend left behind.
    None,
}

/// Settings of [`run_proxy`]; `Default` holds `keelson proxy`'s defaults.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub node_name: String,
    pub mode: ProxyMode,
    pub nft: nft::render::NftConfig,
    /// Named network namespace to program (its netlink sockets are opened
    /// there, `nft` and `conntrack` run under `ip netns exec`); `None`: the
    /// current one.
    pub netns: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub sync_period: Duration,
    pub min_sync_interval: Duration,
    pub ebpf: ebpf::EbpfConfig,
    /// The node's address: the source of locally sent Service traffic.
    pub node_ip: Option<Ipv4Addr>,
}

impl Default for ProxyConfig {
    /// `keelson proxy`'s defaults: nftables, metrics on 127.0.0.1:10249, a
    /// drift check every 30 s, changes batched for 50 ms.
    fn default() -> Self {
        ProxyConfig {
            node_name: String::new(),
            mode: ProxyMode::Nftables,
            nft: nft::render::NftConfig::default(),
            netns: None,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 10249))),
            sync_period: Duration::from_secs(30),
            min_sync_interval: Duration::from_millis(50),
            ebpf: ebpf::EbpfConfig::default(),
            node_ip: None,
        }
    }
}
