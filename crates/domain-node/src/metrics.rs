//! What a node tells its operator about its task streams (`domain_node_*`): how many
//! ended how, per protocol; the bytes they moved; the tokens refused and why; the bytes a
//! resumed upload did not send again; and, read at each scrape, the stream permits and
//! handshakes in use. Labels take fixed values only: a protocol id, an outcome, a
//! direction, a reason.

use std::sync::Arc;

use domain_auth::Rejection;
use domain_telemetry::prometheus_client::collector::Collector;
use domain_telemetry::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use domain_telemetry::prometheus_client::metrics::counter::Counter;
use domain_telemetry::prometheus_client::metrics::family::Family;
use domain_telemetry::prometheus_client::metrics::gauge::ConstGauge;
use domain_telemetry::prometheus_client::registry::{Registry, Unit};
use tokio::sync::Semaphore;

use crate::handshakes::Handshakes;

type Labels<const N: usize> = [(&'static str, &'static str); N];

/// How a task stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Served to its end.
    Done,
    /// Served, and failed on the way.
    Failed,
    /// Cut by the node's shutdown.
    Cut,
    /// Its handshake was refused (a bad token among other things).
    Refused,
    /// No handshake in time, or pushed out by newer ones.
    TimedOut,
    /// Dropped for want of a permit or a handshake place.
    Busy,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cut => "cut",
            Self::Refused => "refused",
            Self::TimedOut => "timed_out",
            Self::Busy => "busy",
        }
    }
}

/// The node's counters; clones share them.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeMetrics {
    streams: Family<Labels<2>, Counter>,
    bytes: Family<Labels<2>, Counter>,
    refusals: Family<Labels<1>, Counter>,
    resumed: Counter,
}

impl NodeMetrics {
    /// Registers the counters, and the permits' and handshakes' gauges read at each scrape.
    pub(crate) fn register(
        &self,
        registry: &mut Registry,
        permits: Arc<Semaphore>,
        max_streams: usize,
        handshakes: Arc<Handshakes>,
    ) {
        registry.register(
            "task_streams",
            "Task streams that ended, by protocol and outcome",
            self.streams.clone(),
        );
        registry.register_with_unit(
            "task_stream",
            "Content bytes moved by task streams, by protocol and direction (in: stored here)",
            Unit::Bytes,
            self.bytes.clone(),
        );
        registry.register(
            "token_refusals",
            "Task tokens refused, by the check that failed",
            self.refusals.clone(),
        );
        registry.register_with_unit(
            "resumed",
            "Bytes of uploads not sent again because the upload resumed from what this node kept",
            Unit::Bytes,
            self.resumed.clone(),
        );
        // Every reason shows, at 0 until it happens: a rate over a missing series is no rate.
        for reason in Rejection::REASONS {
            drop(self.refusals.get_or_create(&[("reason", reason)]));
        }
        registry.register_collector(Box::new(StreamGauges {
            permits,
            max_streams,
            handshakes,
        }));
    }

    /// Counts a task stream of `protocol` that ended with `outcome`.
    pub(crate) fn stream_ended(&self, protocol: &'static str, outcome: Outcome) {
        self.streams
            .get_or_create(&[("protocol", protocol), ("outcome", outcome.label())])
            .inc();
    }

    /// Counts `bytes` moved by a stream of `protocol`, in (stored) or out (loaded).
    pub(crate) fn moved(&self, protocol: &'static str, inbound: bool, bytes: u64) {
        let direction = if inbound { "in" } else { "out" };
        self.bytes
            .get_or_create(&[("protocol", protocol), ("direction", direction)])
            .inc_by(bytes);
    }

    /// Counts a refused token.
    pub(crate) fn refused(&self, rejection: &Rejection) {
        self.refusals
            .get_or_create(&[("reason", rejection.reason())])
            .inc();
    }

    /// Counts bytes an upload did not send again.
    pub(crate) fn resumed(&self, bytes: u64) {
        self.resumed.inc_by(bytes);
    }
}

/// The permits and handshakes in use, read when scraped.
#[derive(Debug)]
struct StreamGauges {
    permits: Arc<Semaphore>,
    max_streams: usize,
    handshakes: Arc<Handshakes>,
}

impl Collector for StreamGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let in_use = self
            .max_streams
            .saturating_sub(self.permits.available_permits());
        let gauges = [
            (
                "task_stream_permits_used",
                "Task-stream permits in use: streams being served",
                in_use,
            ),
            (
                "task_stream_permits",
                "Task streams the node serves at once",
                self.max_streams,
            ),
            (
                "handshakes_pending",
                "Task streams in their handshake (token not yet accepted)",
                self.handshakes.pending(),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}
