//! The metrics of one process, in one registry its parts register into as they start,
//! encoded in the OpenMetrics text format at each scrape.
//!
//! Names follow Prometheus conventions: `domain_<part>_<what>`, counters end in `_total`,
//! sizes in `_bytes`, durations in `_seconds`, and labels take only a bounded set of
//! values (a protocol, an outcome, a reason, a state, a domain), never an item or a peer
//! id. Every process also exports `domain_build_info{binary, version}`.
//!
//! ```
//! use domain_telemetry::Metrics;
//! use prometheus_client::metrics::counter::Counter;
//!
//! let metrics = Metrics::new("domain-node");
//! let puts = Counter::<u64>::default();
//! metrics.register("domain_datastore", |registry| {
//!     registry.register("puts", "Items stored", puts.clone());
//! });
//! puts.inc();
//! let text = metrics.encode();
//! assert!(text.contains("domain_datastore_puts_total 1"));
//! assert!(text.contains("domain_build_info{binary=\"domain-node\""));
//! ```

use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The metrics registry of a process; clones share it.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry holding `domain_build_info` for `binary` at this crate's version.
    #[must_use]
    pub fn new(binary: &'static str) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "domain_build",
            "The running binary and its version",
            Info::new(vec![
                ("binary", binary),
                ("version", env!("CARGO_PKG_VERSION")),
            ]),
        );
        Self {
            registry: Arc::new(RwLock::new(registry)),
        }
    }

    /// Registers metrics with `register`, their names prefixed with `prefix`
    /// (`domain_node`, `domain_manager`, …; empty for none); returns what it returns.
    pub fn register<T>(&self, prefix: &str, register: impl FnOnce(&mut Registry) -> T) -> T {
        // A panic while registering leaves the registry as it was before that metric.
        let mut registry = self
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if prefix.is_empty() {
            register(&mut registry)
        } else {
            register(registry.sub_registry_with_prefix(prefix))
        }
    }

    /// Every metric, in the OpenMetrics text format.
    #[must_use]
    pub fn encode(&self) -> String {
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        let mut text = String::new();
        // Writing to a String cannot fail, and every metric here encodes.
        let _ = encode(&mut text, &registry);
        text
    }
}

/// Buckets of a latency histogram, in seconds: 100 µs to about 13 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 18)
}
