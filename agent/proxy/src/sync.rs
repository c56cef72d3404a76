//! The Kubernetes side and the sync loop: reflectors for Services and
//! EndpointSlices, a debounced loop that plans and hands changes to the
//! backend, drift checks on a timer, metrics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_informers::{Event, Informers};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;

use crate::backend::ProxyBackend;
use crate::conntrack::Conntrack;
use crate::guard::{GuardState, ServiceCidrGuard};
use crate::metrics::{Metrics, SyncLabels};
use crate::model::{DesiredState, ServicePort, service_key, service_ports, slice_service};
use crate::nft::NftBackend;
use crate::nft::netlink::NetlinkSocket;
use crate::plan::{plan, plan_services};
use crate::{ProxyConfig, ProxyHealth, ProxyMode, ProxyTools};

/// Runs the proxy on the Services and EndpointSlices of `informers` until
/// the future is dropped or a fatal error occurs. Sync errors are counted and
/// retried; they are not fatal.
pub async fn run_proxy(informers: &Informers, config: ProxyConfig) -> anyhow::Result<()> {
    let (health, _) = tokio::sync::watch::channel(ProxyHealth::Starting);
    run_proxy_reporting(informers, config, &health).await
}

/// [`run_proxy`], telling `health` how it goes: `Starting`, then after each
/// sync whether the dataplane is programmed.
pub async fn run_proxy_reporting(
    informers: &Informers,
    config: ProxyConfig,
    health: &tokio::sync::watch::Sender<ProxyHealth>,
) -> anyhow::Result<()> {
    health.send_replace(ProxyHealth::Starting);
    // First, before anything that can fail: traffic to the Service CIDR
    // is refused on the node until a backend load-balances it.
    let guard = config.nft.service_cidr.map(|cidr| ServiceCidrGuard {
        cidr,
        netns: config
            .netns
            .as_ref()
            .map(|n| std::path::PathBuf::from("/run/netns").join(n)),
        prefsrc: config.node_ip,
    });
    if let Some(g) = guard.clone() {
        tokio::task::spawn_blocking(move || g.refuse_unless_present())
            .await
            .context("join Service CIDR guard")?
            .context("route the Service CIDR")?;
    }
    // ebpf falls back to nftables (one log line) where the kernel lacks it.
    let (config, ebpf_cgroup) = crate::ebpf::select_mode(config);
    let tools = ProxyTools::find(&config)?;
    let mut nft = NftBackend::new(tools.nft.clone(), config.nft.clone());
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
            let cli = tools.nft.clone();
            tokio::task::spawn_blocking(move || crate::ebpf::remove_all(&pin_dir, &cli))
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
                let netns = config.netns.clone();
                let cli = tools.nft.clone();
                Box::new(
                    tokio::task::spawn_blocking(move || {
                        crate::ebpf::EbpfBackend::open(&cfg, cg, netns.as_deref(), cli)
                    })
                    .await
                    .context("join eBPF open")??,
                )
            } else {
                let pin_dir = config.ebpf.pin_dir.clone();
                let cli = tools.nft.clone();
                tokio::task::spawn_blocking(move || {
                    crate::ebpf::remove_all(&pin_dir, &cli)?;
                    crate::guard::remove(
                        config
                            .netns
                            .as_ref()
                            .map(|n| std::path::PathBuf::from("/run/netns").join(n))
                            .as_deref(),
                    )
                    .context("remove the Service CIDR route")
                })
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
    // What changed since the last sync: Services named by watch events (a
    // Service, or one of its EndpointSlices), or everything after a
    // (re)list.
    let dirty = Arc::new(Mutex::new(Dirty::default()));
    let slices = Arc::new(Mutex::new(SliceIndex::default()));
    let services = informers.all::<Service>();
    let svc_store = services.store();
    let mut svc_events = services.subscribe();
    let mut slice_events = informers.all::<EndpointSlice>().subscribe();
    let (n1, d1) = (notify.clone(), dirty.clone());
    let watch_svc = tokio::spawn(async move {
        while let Some(ev) = svc_events.next().await {
            {
                let mut d = d1.lock().expect("dirty lock");
                match &ev {
                    Event::Apply(svc) | Event::Delete(svc) => {
                        d.keys.insert(service_key(svc));
                    }
                    Event::InitDone => d.all = true,
                    Event::Init | Event::InitApply(_) => {}
                }
            }
            n1.notify_one();
        }
    });
    let (n2, d2, idx) = (notify.clone(), dirty.clone(), slices.clone());
    let (slices_ready_tx, mut slices_ready) = tokio::sync::watch::channel(false);
    let watch_slices = tokio::spawn(async move {
        while let Some(ev) = slice_events.next().await {
            let done = matches!(ev, Event::InitDone);
            let touched = idx.lock().expect("slice index lock").apply(ev);
            {
                let mut d = d2.lock().expect("dirty lock");
                match touched {
                    Touched::All => d.all = true,
                    Touched::Services(keys) => d.keys.extend(keys),
                }
            }
            if done {
                let _ = slices_ready_tx.send(true);
            }
            n2.notify_one();
        }
    });
    let _abort = AbortOnDrop(vec![watch_svc, watch_slices]);
    services.wait_until_ready().await;
    slices_ready
        .wait_for(|r| *r)
        .await
        .context("wait for the initial EndpointSlice list")?;
    tracing::info!(backend = backend.name(), node = %config.node_name, "proxy started");

    let conntrack: Arc<dyn Conntrack> = Arc::new(tools.conntrack.clone());
    // The guard's route follows the backend: forward once the nftables
    // table rejects what it does not DNAT; refuse with eBPF.
    let guard_state = match backend.name() {
        "nftables" => GuardState::Forward,
        _ => GuardState::Refuse,
    };
    let mut guard = guard.map(|g| (g, false));
    // `desired` follows the API objects (recomputed per changed Service);
    // `programmed` is what the backend was last told.
    let mut desired = DesiredState::default();
    let mut programmed = DesiredState::default();
    let mut endpoints: i64 = 0;
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

        let Dirty { all, keys } = std::mem::take(&mut *dirty.lock().expect("dirty lock"));
        let full = need_full;
        let changes = if full || all {
            let services: Vec<Arc<Service>> = svc_store.state();
            let all_slices = slices.lock().expect("slice index lock").all();
            desired = DesiredState::from_objects(
                services.iter().map(|s| s.as_ref()),
                all_slices.iter().map(|s| s.as_ref()),
                &config.node_name,
            );
            plan(&programmed, &desired)
        } else {
            for (ns, name) in &keys {
                let ports = match svc_store.get(&ObjectRef::new(name).within(ns)) {
                    Some(svc) => {
                        let of = slices.lock().expect("slice index lock").of(ns, name);
                        service_ports(&svc, of.iter().map(|s| s.as_ref()), &config.node_name)
                    }
                    None => Vec::new(),
                };
                desired.set_service(ns, name, ports);
            }
            plan_services(&programmed, &desired, &keys)
        };
        if !full && !check_drift && changes.is_empty() {
            continue;
        }
        let start = Instant::now();
        // Moved to the blocking thread and back, not copied.
        let d = std::mem::take(&mut desired);
        let ch = changes.clone();
        let (b, d, result) = tokio::task::spawn_blocking(move || {
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
            (b, d, r)
        })
        .await
        .context("join sync")?;
        backend = b;
        desired = d;
        match result {
            Ok(was_full) => {
                if let Some((g, done @ false)) = &mut guard {
                    let g = g.clone();
                    tokio::task::spawn_blocking(move || g.set(guard_state))
                        .await
                        .context("join Service CIDR guard")?
                        .context("route the Service CIDR")?;
                    *done = true;
                }
                health.send_if_modified(|h| {
                    let now = ProxyHealth::Synced {
                        backend: backend.name(),
                    };
                    let changed = *h != now;
                    *h = now;
                    changed
                });
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
                if was_full {
                    programmed = desired.clone();
                    endpoints = programmed.endpoint_count() as i64;
                } else {
                    programmed.apply_changes(&changes);
                    for c in &changes.services {
                        let count = |sp: &Option<ServicePort>| {
                            sp.as_ref().map_or(0, |s| s.endpoint_count() as i64)
                        };
                        endpoints += count(&c.new) - count(&c.old);
                    }
                }
                metrics.services.set(programmed.services.len() as i64);
                metrics.endpoints.set(endpoints);
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
                health.send_replace(ProxyHealth::SyncFailing {
                    backend: backend.name(),
                    error: e.to_string(),
                });
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

/// Services to recompute at the next sync.
#[derive(Default)]
struct Dirty {
    /// Everything (after a list or relist).
    all: bool,
    /// (namespace, name) of Services whose object or slices changed.
    keys: BTreeSet<(String, String)>,
}

/// What a slice event touched.
enum Touched {
    All,
    Services(Vec<(String, String)>),
}

/// EndpointSlices by the Service they belong to, kept from watch events, so
/// that one Service's slices are found without scanning all of them.
#[derive(Default)]
struct SliceIndex {
    by_service: HashMap<(String, String), BTreeMap<String, Arc<EndpointSlice>>>,
    /// (namespace, slice name) -> its Service, to follow a relabelled slice.
    owner: HashMap<(String, String), (String, String)>,
    /// Slices of a list in progress (between Init and InitDone).
    relist: Option<Vec<Arc<EndpointSlice>>>,
}

impl SliceIndex {
    fn slice_id(slice: &EndpointSlice) -> (String, String) {
        (
            slice.metadata.namespace.clone().unwrap_or_default(),
            slice.metadata.name.clone().unwrap_or_default(),
        )
    }

    fn remove(&mut self, id: &(String, String)) -> Option<(String, String)> {
        let svc = self.owner.remove(id)?;
        if let Some(m) = self.by_service.get_mut(&svc) {
            m.remove(&id.1);
            if m.is_empty() {
                self.by_service.remove(&svc);
            }
        }
        Some(svc)
    }

    fn insert(&mut self, slice: Arc<EndpointSlice>) -> Vec<(String, String)> {
        let id = Self::slice_id(&slice);
        let mut touched: Vec<(String, String)> = self.remove(&id).into_iter().collect();
        if let Some(svc) = slice_service(&slice) {
            self.by_service
                .entry(svc.clone())
                .or_default()
                .insert(id.1.clone(), slice);
            self.owner.insert(id, svc.clone());
            if !touched.contains(&svc) {
                touched.push(svc);
            }
        }
        touched
    }

    fn apply(&mut self, ev: Event<EndpointSlice>) -> Touched {
        match ev {
            Event::Apply(s) => Touched::Services(self.insert(s)),
            Event::Delete(s) => {
                Touched::Services(self.remove(&Self::slice_id(&s)).into_iter().collect())
            }
            Event::Init => {
                self.relist = Some(Vec::new());
                Touched::Services(Vec::new())
            }
            Event::InitApply(s) => {
                self.relist.get_or_insert_with(Vec::new).push(s);
                Touched::Services(Vec::new())
            }
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                self.by_service.clear();
                self.owner.clear();
                for s in listed {
                    self.insert(s);
                }
                Touched::All
            }
        }
    }

    fn of(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        self.by_service
            .get(&(namespace.to_string(), service.to_string()))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn all(&self) -> Vec<Arc<EndpointSlice>> {
        self.by_service
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(ns: &str, name: &str, svc: Option<&str>) -> Arc<EndpointSlice> {
        let mut s = EndpointSlice {
            address_type: "IPv4".into(),
            ..Default::default()
        };
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        if let Some(svc) = svc {
            s.metadata.labels = Some(
                [(
                    crate::model::SERVICE_NAME_LABEL.to_string(),
                    svc.to_string(),
                )]
                .into(),
            );
        }
        Arc::new(s)
    }

    fn key(ns: &str, name: &str) -> (String, String) {
        (ns.into(), name.into())
    }

    fn names(v: &[Arc<EndpointSlice>]) -> Vec<String> {
        v.iter()
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    fn touched(t: Touched) -> Vec<(String, String)> {
        match t {
            Touched::All => panic!("expected named Services"),
            Touched::Services(v) => v,
        }
    }

    #[test]
    fn slice_index_follows_events() {
        let mut idx = SliceIndex::default();
        let t = idx.apply(Event::Apply(slice("a", "web-1", Some("web"))));
        assert_eq!(touched(t), [key("a", "web")]);
        idx.apply(Event::Apply(slice("a", "web-2", Some("web"))));
        idx.apply(Event::Apply(slice("b", "web-1", Some("web"))));
        assert_eq!(names(&idx.of("a", "web")), ["web-1", "web-2"]);
        assert_eq!(names(&idx.of("b", "web")), ["web-1"]);
        // Relabelled to another Service: both are touched, it moves.
        let t = idx.apply(Event::Apply(slice("a", "web-2", Some("api"))));
        assert_eq!(touched(t), [key("a", "web"), key("a", "api")]);
        assert_eq!(names(&idx.of("a", "web")), ["web-1"]);
        assert_eq!(names(&idx.of("a", "api")), ["web-2"]);
        // Label removed: it belongs to nothing.
        let t = idx.apply(Event::Apply(slice("a", "web-2", None)));
        assert_eq!(touched(t), [key("a", "api")]);
        assert!(idx.of("a", "api").is_empty());
        let t = idx.apply(Event::Delete(slice("a", "web-1", Some("web"))));
        assert_eq!(touched(t), [key("a", "web")]);
        assert!(idx.of("a", "web").is_empty());
        // Deleting an unknown slice touches nothing.
        let t = idx.apply(Event::Delete(slice("a", "nope", Some("web"))));
        assert!(touched(t).is_empty());
        assert_eq!(idx.all().len(), 1);
    }

    #[test]
    fn relist_replaces_the_index_when_done() {
        let mut idx = SliceIndex::default();
        idx.apply(Event::Apply(slice("a", "old", Some("web"))));
        assert!(touched(idx.apply(Event::Init)).is_empty());
        idx.apply(Event::InitApply(slice("a", "new", Some("web"))));
        // Until the list is complete the old view stays.
        assert_eq!(names(&idx.of("a", "web")), ["old"]);
        assert!(matches!(idx.apply(Event::InitDone), Touched::All));
        assert_eq!(names(&idx.of("a", "web")), ["new"]);
        assert_eq!(idx.all().len(), 1);
    }
}
