//! What a manager tells its operator (`domain_manager_*`): its jobs and their tasks by
//! state, the scheduler's queues, how long its scheduling passes take, its registry of
//! nodes and its holder index, and what its repair of the domains' copies did. The
//! scheduler thread refreshes the counts after each pass; a scrape reads the last ones and
//! the depth of the scheduler's request queue.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use domain_proto::task::Status;
use domain_scheduler::SchedulerStats;
use domain_telemetry::metrics::latency_buckets;
use domain_telemetry::prometheus_client::collector::Collector;
use domain_telemetry::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use domain_telemetry::prometheus_client::metrics::counter::Counter;
use domain_telemetry::prometheus_client::metrics::family::Family;
use domain_telemetry::prometheus_client::metrics::gauge::ConstGauge;
use domain_telemetry::prometheus_client::metrics::histogram::Histogram;
use domain_telemetry::prometheus_client::registry::{Registry, Unit};
use tokio::sync::mpsc;

use crate::scheduler_thread::Request;

/// The manager's metrics; clones share them.
#[derive(Debug, Clone)]
pub(crate) struct ManagerMetrics {
    tick_seconds: Histogram,
    stats: Arc<Mutex<SchedulerStats>>,
    /// Audits of a domain's copies, by outcome.
    audits: Family<[(&'static str, &'static str); 1], Counter>,
    /// Copies the repair made, and copies it removed.
    repair_copies: Counter,
    repair_removals: Counter,
}

impl Default for ManagerMetrics {
    fn default() -> Self {
        Self {
            tick_seconds: Histogram::new(latency_buckets()),
            stats: Arc::default(),
            audits: Family::default(),
            repair_copies: Counter::default(),
            repair_removals: Counter::default(),
        }
    }
}

impl ManagerMetrics {
    /// Registers the metrics; `requests` is the scheduler's request queue, whose depth a
    /// scrape reads (held weakly: the queue still closes when the manager stops).
    pub(crate) fn register(&self, registry: &mut Registry, requests: &mpsc::Sender<Request>) {
        registry.register_with_unit(
            "scheduler_tick",
            "Time of one scheduling pass (timeouts, retries, assignments)",
            Unit::Seconds,
            self.tick_seconds.clone(),
        );
        registry.register(
            "repair_audits",
            "Audits of a domain's copies, by outcome (clean: nothing to do; repaired; failed)",
            self.audits.clone(),
        );
        for outcome in AUDIT_OUTCOMES {
            drop(self.audits.get_or_create(&[("outcome", outcome)]));
        }
        registry.register(
            "repair_copies",
            "Copies of items the repair made on another node",
            self.repair_copies.clone(),
        );
        registry.register(
            "repair_removals",
            "Copies of items the repair removed (one too many, stale, or deleted)",
            self.repair_removals.clone(),
        );
        registry.register_collector(Box::new(SchedulerGauges {
            stats: Arc::clone(&self.stats),
            requests: requests.downgrade(),
        }));
    }

    /// Counts an audit that ended with `outcome` (one of [`AUDIT_OUTCOMES`]), and the
    /// copies it made and removed.
    pub(crate) fn audited(&self, outcome: &'static str, copied: usize, removed: usize) {
        self.audits.get_or_create(&[("outcome", outcome)]).inc();
        self.repair_copies.inc_by(copied as u64);
        self.repair_removals.inc_by(removed as u64);
    }

    /// Records a scheduling pass that began at `start`, and the scheduler's counts after it.
    pub(crate) fn ticked(&self, start: Instant, stats: SchedulerStats) {
        self.tick_seconds.observe(start.elapsed().as_secs_f64());
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner) = stats;
    }
}

/// How an audit of a domain's copies ends.
pub(crate) const AUDIT_OUTCOMES: [&str; 3] = ["clean", "repaired", "failed"];

/// The scheduler's last counts and its queue depth, read when scraped.
#[derive(Debug)]
struct SchedulerGauges {
    stats: Arc<Mutex<SchedulerStats>>,
    requests: mpsc::WeakSender<Request>,
}

fn gauge(value: usize) -> ConstGauge {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

impl Collector for SchedulerGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = self
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let kind = gauge(0).metric_type();
        let mut jobs = encoder.encode_descriptor("jobs", "Jobs kept, by state", None, kind)?;
        for (state, count) in [
            ("running", stats.jobs_running),
            ("done", stats.jobs_done),
            ("failed", stats.jobs_failed),
        ] {
            gauge(count).encode(jobs.encode_family(&[("state", state)])?)?;
        }
        let mut tasks = encoder.encode_descriptor(
            "tasks",
            "Tasks of the running jobs, by state",
            None,
            kind,
        )?;
        for (number, count) in stats.tasks.iter().enumerate() {
            let state = i32::try_from(number)
                .ok()
                .and_then(|n| Status::try_from(n).ok())
                .map_or("unknown", |status| status.as_str_name())
                .to_ascii_lowercase();
            gauge(*count).encode(tasks.encode_family(&[("state", state.as_str())])?)?;
        }
        let queued = self
            .requests
            .upgrade()
            .map_or(0, |queue| queue.max_capacity() - queue.capacity());
        for (name, help, value) in [
            (
                "scheduler_ready_tasks",
                "Tasks ready for the next scheduling pass",
                stats.ready_tasks,
            ),
            (
                "scheduler_waiting_tasks",
                "Tasks no registered node fits now",
                stats.waiting_tasks,
            ),
            (
                "scheduler_running_tasks",
                "Tasks assigned to a node and not finished",
                stats.running_tasks,
            ),
            (
                "scheduler_requests_queued",
                "Requests waiting for the scheduler thread",
                queued,
            ),
            ("nodes", "Nodes registered", stats.nodes),
            (
                "holder_index_entries",
                "Entries of the holder index (one per domain and node holding it)",
                stats.holder_entries,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, kind)?;
            gauge(value).encode(metric)?;
        }
        Ok(())
    }
}
