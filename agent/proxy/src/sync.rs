//! The Kubernetes side and the sync loop: reflectors for Services and
//! EndpointSlices, a debounced loop that plans and hands changes to the
//! backend, drift checks on a timer, metrics.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use tokio::sync::Notify;

use crate::backend::ProxyBackend;
use crate::conntrack::{Conntrack, ConntrackCli};
use crate::metrics::{Metrics, SyncLabels};
use crate::model::DesiredState;
use crate::nft::netlink::NetlinkSocket;
use crate::nft::{NftBackend, NftCli};
use crate::plan::plan;
use crate::{ProxyConfig, ProxyMode};

/// Runs the proxy against `client` until the future is dropped or a fatal
/// error occurs. Sync errors are counted and retried; they are not fatal.
pub async fn run_proxy(client: kube::Client, config: ProxyConfig) -> anyhow::Result<()> {
    // ebpf falls back to nftables (one log line) where the kernel lacks it.
    let (config, ebpf_cgroup) = crate::ebpf::select_mode(config);
    let mut nft = NftBackend::new(
        NftCli {
            prefix: config.exec_prefix.clone(),
            ..Default::default()
        },
        config.nft.clone(),
    );
    if config.mode == ProxyMode::Nftables {
        let netns = config.netns.clone();
        match tokio::task::spawn_blocking(move || NetlinkSocket::open(netns.as_deref()))
            .await
            .context("join netlink open")?
        {
            Ok(sock) => nft = nft.with_element_writer(Box::new(sock)),
            Err(e) => tracing::warn!("{e}: element updates go through the nft CLI"),
        }
    }
    let mut backend: Box<dyn ProxyBackend> = match config.mode {
        ProxyMode::Nftables => {
            // Leave nothing of the eBPF backend behind.
            let pin_dir = config.ebpf.pin_dir.clone();
            tokio::task::spawn_blocking(move || crate::ebpf::remove_state(&pin_dir))
                .await
                .context("join eBPF cleanup")??;
            Box::new(nft)
        }
        ProxyMode::Ebpf | ProxyMode::None => {
            // Leave nothing of the nftables backend behind.
            tokio::task::spawn_blocking(move || nft.cleanup())
                .await
                .context("join cleanup")?
                .context("remove the nftables table of a previous run")?;
            tracing::info!(table = %config.nft.table, "removed nftables state (if any)");
            if let Some(cg) = ebpf_cgroup {
                let cfg = config.ebpf.clone();
                Box::new(
                    tokio::task::spawn_blocking(move || crate::ebpf::EbpfBackend::open(&cfg, cg))
                        .await
                        .context("join eBPF open")??,
                )
            } else {
                let pin_dir = config.ebpf.pin_dir.clone();
                tokio::task::spawn_blocking(move || crate::ebpf::remove_state(&pin_dir))
                    .await
                    .context("join eBPF cleanup")??;
                tracing::info!("--proxy-mode none: not load-balancing Services");
                return Ok(());
            }
        }
    };

    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen for metrics on {addr}"))?;
        let m = metrics.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("metrics server on {addr}: {e}");
            }
        });
    }

    let notify = Arc::new(Notify::new());
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (slice_store, slice_writer) = reflector::store::<EndpointSlice>();
    let svc_stream = reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let slice_stream = reflector(
        slice_writer,
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    );
    let n1 = notify.clone();
    let watch_svc = tokio::spawn(async move {
        let mut s = std::pin::pin!(svc_stream);
        while let Some(ev) = s.next().await {
            match ev {
                Ok(_) => n1.notify_one(),
                Err(e) => tracing::warn!("watch Services: {e}"),
            }
        }
    });
    let n2 = notify.clone();
    let watch_slices = tokio::spawn(async move {
        let mut s = std::pin::pin!(slice_stream);
        while let Some(ev) = s.next().await {
            match ev {
                Ok(_) => n2.notify_one(),
                Err(e) => tracing::warn!("watch EndpointSlices: {e}"),
            }
        }
    });
    let _abort = AbortOnDrop(vec![watch_svc, watch_slices]);
    svc_store
        .wait_until_ready()
        .await
        .context("wait for the initial Service list")?;
    slice_store
        .wait_until_ready()
        .await
        .context("wait for the initial EndpointSlice list")?;
    tracing::info!(backend = backend.name(), node = %config.node_name, "proxy started");

    let conntrack: Arc<dyn Conntrack> = Arc::new(ConntrackCli {
        prefix: config.exec_prefix.clone(),
    });
    let mut programmed = DesiredState::default();
    let mut need_full = true;
    let mut ticker = tokio::time::interval(config.sync_period);
    ticker.tick().await;
    loop {
        let mut check_drift = false;
        if !need_full {
            tokio::select! {
                _ = notify.notified() => {}
                _ = ticker.tick() => check_drift = true,
            }
        }
        // Batch whatever else arrives shortly after.
        tokio::time::sleep(config.min_sync_interval).await;

        let services: Vec<Arc<Service>> = svc_store.state();
        let slices: Vec<Arc<EndpointSlice>> = slice_store.state();
        let desired = DesiredState::from_objects(
            services.iter().map(|s| s.as_ref()),
            slices.iter().map(|s| s.as_ref()),
            &config.node_name,
        );
        let full = need_full;
        let changes = plan(&programmed, &desired);
        if !full && !check_drift && changes.is_empty() {
            continue;
        }
        let start = Instant::now();
        let d = desired.clone();
        let ch = changes.clone();
        let (b, result) = tokio::task::spawn_blocking(move || {
            let mut b = backend;
            let mut r = Ok(false);
            if !full && check_drift {
                r = b.drifted();
            }
            let r = match r {
                Ok(true) => {
                    tracing::warn!("dataplane drifted from what was programmed: full resync");
                    b.full_sync(&d).map(|()| true)
                }
                Ok(false) if full => b.full_sync(&d).map(|()| true),
                Ok(false) => b.apply(&ch, &d).map(|()| false),
                Err(e) => Err(e),
            };
            (b, r)
        })
        .await
        .context("join sync")?;
        backend = b;
        match result {
            Ok(was_full) => {
                let kind = if was_full { "full" } else { "partial" };
                let took = start.elapsed();
                metrics
                    .sync_duration
                    .get_or_create(&SyncLabels { kind: kind.into() })
                    .observe(took.as_secs_f64());
                if was_full || !changes.is_empty() {
                    tracing::info!(
                        kind,
                        services = desired.services.len(),
                        changed = changes.services.len(),
                        ms = took.as_millis() as u64,
                        "synced"
                    );
                }
                let stale = changes.stale_udp_flows();
                need_full = false;
                programmed = desired;
                metrics.services.set(programmed.services.len() as i64);
                metrics.endpoints.set(programmed.endpoint_count() as i64);
                if !stale.is_empty() {
                    let ct = conntrack.clone();
                    let errs = tokio::task::spawn_blocking(move || {
                        stale
                            .iter()
                            .filter_map(|f| ct.delete_udp(f).err())
                            .collect::<Vec<_>>()
                    })
                    .await
                    .context("join conntrack")?;
                    for e in errs {
                        tracing::warn!("flush stale UDP conntrack entries: {e}");
                    }
                }
            }
            Err(e) => {
                metrics.sync_errors.inc();
                tracing::error!("sync Services ({}): {e}", backend.name());
                need_full = true;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}
