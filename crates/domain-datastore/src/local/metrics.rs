//! What the local store tells an operator: how long puts and fsyncs take, and (read at each
//! scrape) the items and bytes of every domain and the bytes kept for resumable puts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::catalog::Catalog;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The store's latency histograms; clones share them.
#[derive(Debug, Clone)]
pub(crate) struct StoreMetrics {
    /// From a put's first byte to its item being durable and visible.
    pub(crate) put_seconds: Histogram,
    /// One fsync (a file, a folder, or one `syncfs` for a group of small puts).
    pub(crate) fsync_seconds: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        // 100 µs to about 13 s.
        let buckets = || exponential_buckets(0.000_1, 2.0, 18);
        Self {
            put_seconds: Histogram::new(buckets()),
            fsync_seconds: Histogram::new(buckets()),
        }
    }
}

impl StoreMetrics {
    /// Runs `sync` and records how long it took.
    pub(crate) fn fsync<T>(&self, sync: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let result = sync();
        self.fsync_seconds.observe(start.elapsed().as_secs_f64());
        result
    }
}

/// Registers the store's metrics in `registry` (names as they appear under the caller's
/// prefix): `put_seconds`, `fsync_seconds`, and at each scrape `items{domain}`,
/// `bytes{domain}` and `partial_bytes`.
pub(crate) fn register(
    registry: &mut Registry,
    metrics: &StoreMetrics,
    catalog: Arc<dyn Catalog>,
    partials_dir: PathBuf,
) {
    registry.register_with_unit(
        "put",
        "Time from a put's first byte to its item being durable and visible",
        Unit::Seconds,
        metrics.put_seconds.clone(),
    );
    registry.register_with_unit(
        "fsync",
        "Time of one fsync (a file, a folder, or one syncfs for a group of small puts)",
        Unit::Seconds,
        metrics.fsync_seconds.clone(),
    );
    registry.register_collector(Box::new(UsageCollector {
        catalog,
        partials_dir,
    }));
}

/// Reads the domains' counts (one count per table, no scan of the items) and the partial
/// files' sizes when scraped.
#[derive(Debug)]
struct UsageCollector {
    catalog: Arc<dyn Catalog>,
    partials_dir: PathBuf,
}

impl Collector for UsageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // A store that cannot be read now shows no usage rather than failing the scrape.
        let usage = self.catalog.usage().unwrap_or_default();
        let gauge = ConstGauge::new(0_i64);
        let mut items = encoder.encode_descriptor(
            "items",
            "Items stored, per domain",
            None,
            gauge.metric_type(),
        )?;
        for domain in &usage {
            let labels = [("domain", domain.domain.as_str())];
            ConstGauge::new(domain.items).encode(items.encode_family(&labels)?)?;
        }
        let mut bytes = encoder.encode_descriptor(
            "stored",
            "Content bytes of the items stored, per domain",
            Some(&Unit::Bytes),
            gauge.metric_type(),
        )?;
        for domain in &usage {
            let labels = [("domain", domain.domain.as_str())];
            ConstGauge::new(domain.bytes).encode(bytes.encode_family(&labels)?)?;
        }
        let partial = encoder.encode_descriptor(
            "partial",
            "Bytes kept of cut resumable puts, waiting to be resumed",
            Some(&Unit::Bytes),
            gauge.metric_type(),
        )?;
        ConstGauge::new(folder_bytes(&self.partials_dir)).encode(partial)?;
        Ok(())
    }
}

/// The sizes of the files in `dir` (not below), 0 when it cannot be read.
fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|meta| meta.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use domain_proto::DomainId;
    use domain_proto::domain_data::UpsertMetadata;
    use prometheus_client::encoding::text::encode;

    use crate::{Datastore as _, LocalDatastore};

    use super::*;

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap_or_default();
        text
    }

    #[tokio::test]
    async fn a_scrape_counts_each_domains_items_and_bytes_and_each_put() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalDatastore::open(dir.path())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut registry = Registry::default();
        store.register_metrics(registry.sub_registry_with_prefix("domain_datastore"));
        let empty = scrape(&registry);
        assert!(!empty.contains("domain_datastore_items{"), "{empty}");
        assert!(
            empty.contains("domain_datastore_partial_bytes 0"),
            "{empty}"
        );

        let domain = DomainId::new("scans").unwrap_or_else(|e| panic!("{e}"));
        // One small put (synced with its group) and one streamed past the small-item size.
        for (name, size) in [("small", 100_u32), ("large", 200_000)] {
            let item = UpsertMetadata {
                name: name.into(),
                data_type: "bin".into(),
                size,
                is_new: true,
                ..Default::default()
            };
            let content = vec![7_u8; size as usize];
            store
                .put(&domain, item, &content[..])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let text = scrape(&registry);
        assert!(
            text.contains("domain_datastore_items{domain=\"scans\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("domain_datastore_stored_bytes{domain=\"scans\"} 200100"),
            "{text}"
        );
        assert!(
            text.contains("domain_datastore_put_seconds_count 2"),
            "{text}"
        );
        assert!(
            !text.contains("domain_datastore_fsync_seconds_count 0"),
            "{text}"
        );
    }
}
