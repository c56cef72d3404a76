//! Cluster DNS served by the node agent: `<svc>.<ns>.svc.<domain>` and
//! friends from the Services and EndpointSlices the agent watches (see
//! [`records`]), every other name forwarded to the node's resolvers.
//!
//! [`records`] is pure; [`server`] holds the sockets; [`run`] wires the zone to
//! the API with kube-runtime reflectors.

#![forbid(unsafe_code)]

pub mod records;
pub mod server;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_informers::Informers;

pub use records::Zone;
pub use server::{DnsServer, ZoneHandle};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("bind DNS {proto} socket {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("read resolver config {path}: {source}")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
}

/// Where and how the cluster DNS serves.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Address to answer on (UDP and TCP).
    pub listen: SocketAddr,
    /// Cluster domain, e.g. `cluster.local`.
    pub domain: String,
    /// Resolvers for names outside the cluster domain.
    pub upstreams: Vec<SocketAddr>,
}

/// The nameservers of a resolv.conf, on port 53, without `skip` (our own
/// address, so a node whose resolv.conf points at us does not loop).
pub fn upstreams_from_resolv_conf(
    path: &Path,
    skip: &[std::net::IpAddr],
) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ResolvConf {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_resolv_conf(&text)
        .into_iter()
        .filter(|ip| !skip.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect())
}

/// `nameserver` lines of a resolv.conf (pure).
pub fn parse_resolv_conf(text: &str) -> Vec<std::net::IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse().ok())
        })
        .collect()
}

/// Serves cluster DNS until the future is dropped: binds, then keeps the zone
/// current from Services and EndpointSlices watched through `client`.
pub async fn run(informers: &Informers, config: DnsConfig) -> Result<(), DnsError> {
    run_with(informers, config, |_| {}).await
}

/// [`run`], calling `serving` with the bound address once it listens.
pub async fn run_with(
    informers: &Informers,
    config: DnsConfig,
    serving: impl FnOnce(std::net::SocketAddr),
) -> Result<(), DnsError> {
    let zone = ZoneHandle::new(Zone::build(&config.domain, [], []));
    let server = DnsServer::bind(config.listen, zone.clone(), config.upstreams.clone()).await?;
    tracing::info!(listen = %server.local_addr(), domain = %config.domain, "cluster DNS serving");
    serving(server.local_addr());
    let serving = server.serve();
    let watching = keep_zone_current(informers, config.domain.clone(), zone);
    tokio::select! {
        () = serving => {}
        () = watching => {}
    }
    Ok(())
}

/// Rebuilds the zone whenever a Service or EndpointSlice changes (changes
/// within 20 ms are folded into one rebuild), from the shared informers.
pub async fn keep_zone_current(informers: &Informers, domain: String, zone: ZoneHandle) {
    let services = informers.all::<Service>();
    let slices = informers.all::<EndpointSlice>();
    let changed = tokio::sync::Notify::new();
    let drive_svc = services.subscribe().for_each(|_| {
        changed.notify_one();
        futures::future::ready(())
    });
    let drive_slices = slices.subscribe().for_each(|_| {
        changed.notify_one();
        futures::future::ready(())
    });
    let rebuild = async {
        loop {
            changed.notified().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let svcs = services.store().state();
            let eps = slices.store().state();
            zone.set(Zone::build(
                &domain,
                svcs.iter().map(|s| s.as_ref()),
                eps.iter().map(|s| s.as_ref()),
            ));
        }
    };
    tokio::join!(drive_svc, drive_slices, rebuild);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# generated\nsearch example.org\nnameserver 10.0.0.2\nnameserver  fd00::1 \nnameserver bogus\noptions ndots:2\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.2".parse::<std::net::IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
    }
}
