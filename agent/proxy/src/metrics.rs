//! Prometheus metrics of the proxy.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// "full" or "partial".
    pub kind: String,
}

/// The proxy's metrics, registered in [`Metrics::registry`].
pub struct Metrics {
    pub registry: Registry,
    pub sync_duration: Family<SyncLabels, Histogram>,
    pub services: Gauge,
    pub endpoints: Gauge,
    pub sync_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("keelson_proxy");
        let sync_duration = Family::<SyncLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
        });
        let services = Gauge::default();
        let endpoints = Gauge::default();
        let sync_errors = Counter::default();
        registry.register(
            "sync_duration_seconds",
            "Time to program one sync into the dataplane",
            sync_duration.clone(),
        );
        registry.register(
            "programmed_services",
            "Service ports programmed in the dataplane",
            services.clone(),
        );
        registry.register(
            "programmed_endpoints",
            "Endpoints (per Service port) programmed in the dataplane",
            endpoints.clone(),
        );
        registry.register("sync_errors", "Failed syncs", sync_errors.clone());
        Metrics {
            registry,
            sync_duration,
            services,
            endpoints,
            sync_errors,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
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
    fn exposition_names_every_metric() {
        let m = Metrics::new();
        m.sync_duration
            .get_or_create(&SyncLabels {
                kind: "full".into(),
            })
            .observe(0.2);
        m.services.set(3);
        m.sync_errors.inc();
        let text = m.encode();
        assert!(
            text.contains("keelson_proxy_sync_duration_seconds_count{kind=\"full\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keelson_proxy_programmed_services 3"),
            "{text}"
        );
        assert!(
            text.contains("keelson_proxy_programmed_endpoints 0"),
            "{text}"
        );
        assert!(text.contains("keelson_proxy_sync_errors_total 1"), "{text}");
    }
}
