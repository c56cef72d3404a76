//! `GET /metrics`: the API server's Prometheus metrics (text format).
//!
//! - `apiserver_watch_requests_total{group, version, resource, scope,
//!   selector}`: watch requests received, by resource; `scope` is
//!   `cluster`, `namespace` or `object` (a watch of one name); `selector`
//!   says which selectors the watch carried (`none`, `label`, `field`,
//!   `label+field`). One per informer per (re)connection: a process with
//!   shared informers adds one per resource type.
//! - `apiserver_rejected_requests_total{reason}`: requests refused by a
//!   limit of [`super::limits`]: `max_requests_inflight`,
//!   `max_mutating_requests_inflight` (429), `max_watches_per_user` (429),
//!   `request_timeout` (504).
//! - `apiserver_rejected_connections_total{reason}`: connections closed as
//!   soon as accepted: `max_connections_per_address`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub scope: String,
    pub selector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    watches: Family<WatchLabels, Counter>,
    rejected_requests: Family<ReasonLabels, Counter>,
    rejected_connections: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("apiserver");
        let watches = Family::<WatchLabels, Counter>::default();
        registry.register(
            "watch_requests",
            "Watch requests received, by resource",
            watches.clone(),
        );
        let rejected_requests = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected_requests",
            "Requests refused by a limit (in flight, watches per user, request timeout), by reason",
            rejected_requests.clone(),
        );
        let rejected_connections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "rejected_connections",
            "Connections closed as soon as accepted, by reason",
            rejected_connections.clone(),
        );
        Metrics {
            registry,
            watches,
            rejected_requests,
            rejected_connections,
        }
    }

    /// Count one request refused for `reason`.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected_requests
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Count one connection refused because its address had as many
    /// open as it may.
    pub fn connection_refused(&self) {
        self.rejected_connections
            .get_or_create(&ReasonLabels {
                reason: "max_connections_per_address",
            })
            .inc();
    }

    /// Count one watch request.
    pub fn watch_started(&self, labels: WatchLabels) {
        tracing::debug!(group = %labels.group, version = %labels.version, resource = %labels.resource, scope = %labels.scope, selector = %labels.selector, "watch request");
        self.watches.get_or_create(&labels).inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_watches_by_resource() {
        let m = Metrics::new();
        let pods = WatchLabels {
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
            scope: "cluster".into(),
            selector: "none".into(),
        };
        m.watch_started(pods.clone());
        m.watch_started(pods);
        let text = m.render();
        assert!(
            text.contains(
                r#"apiserver_watch_requests_total{group="",version="v1",resource="pods",scope="cluster",selector="none"} 2"#
            ),
            "{text}"
        );
    }
}
