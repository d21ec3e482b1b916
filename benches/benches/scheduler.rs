//! The scheduler's assignment rate: one job of 100 000 independent tasks submitted to a
//! scheduler that knows 10 000 nodes (capacity 16 each, 8 CPUs advertised, every task asking
//! `min_cpu = 4`). One iteration is one `submit`: validation, the job id, least-loaded
//! assignment of every task, one EdDSA token per assignment (real domain key), and one redb
//! commit (immediate durability, a file in a temp dir) of the job and its 100 000 task records.
//! Target: 50 000 assignments/s or more.
//!
//! - `submit_assign_100k_tasks_10k_nodes`: the above, throughput in tasks;
//! - `issue_one_token`: one token alone, the part of each assignment spent signing;
//! - `report_done_one_commit_each` / `report_many_1000_done`: DONE reports on running tasks,
//!   one transaction (one fsync) per report, or 1000 per transaction with `report_many`.
//!
//! Before the measurements the bench prints the resident memory of a scheduler holding the
//! 10 000 nodes and the 100 000 assigned tasks (VmRSS and peak VmHWM from /proc/self/status).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use domain_auth::DomainKeyStore;
use domain_proto::discovery::{Capability, Node};
use domain_proto::task::{
    CapabilityFilters, JobRequest, ResourceRecruitment, Status, Task, TaskRequest,
};
use domain_scheduler::{
    Batch, DomainKeyIssuer, NodeRecord, RedbStore, Scheduler, SchedulerConfig, SchedulerStore,
    TokenGrant, TokenIssuer,
};

const NODES: usize = 10_000;
const TASKS: usize = 100_000;
const ENDPOINT: &str = "/compute/v1";
const DOMAIN: &str = "bench-domain";

fn nodes() -> Vec<NodeRecord> {
    (0..NODES)
        .map(|i| NodeRecord {
            node: Node {
                id: format!("12D3KooWnode{i:06}"),
                name: format!("node-{i}"),
                capabilities: vec![Capability {
                    endpoint: ENDPOINT.into(),
                    capacity: 16,
                }],
                cpu: Some(8),
                gpu: None,
            },
        })
        .collect()
}

fn request(nonce: u64) -> JobRequest {
    let tasks = (0..TASKS)
        .map(|i| TaskRequest {
            name: format!("task-{i:06}"),
            capability_filters: CapabilityFilters {
                endpoint: ENDPOINT.into(),
                min_cpu: Some(4),
                min_gpu: None,
            },
            max_budget: None,
            timeout: "10m".into(),
            needs: Vec::new(),
            resource_recruitment: ResourceRecruitment::default(),
            sender: "12D3KooWclient".into(),
            receiver: None,
            data: None,
        })
        .collect();
    JobRequest {
        name: "bench".into(),
        tasks,
        nonce: nonce.to_string(),
        domain_id: DOMAIN.into(),
    }
}

/// A scheduler on a fresh redb file whose registry already holds the nodes (written as one
/// batch and loaded by `open`, the restart path, so setup costs no 10 000 separate commits).
fn scheduler(dir: &Path, nodes: &[NodeRecord]) -> Scheduler {
    let mut store = RedbStore::open(dir.join("scheduler.redb")).unwrap();
    store
        .commit(Batch {
            nodes: nodes.to_vec(),
            ..Batch::default()
        })
        .unwrap();
    let keys = DomainKeyStore::open(dir.join("keys")).unwrap();
    // Create the domain key now: its file I/O is not part of an assignment.
    keys.key(DOMAIN).unwrap();
    let config = SchedulerConfig::new("12D3KooWmanager");
    Scheduler::open(
        config,
        Box::new(store),
        Box::new(DomainKeyIssuer::new(keys)),
        0,
    )
    .unwrap()
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn report_memory(nodes: &[NodeRecord]) {
    let dir = tempfile::tempdir().unwrap();
    let job = request(0);
    let before = proc_status_kib("VmRSS:").unwrap_or(0);
    let mut scheduler = scheduler(dir.path(), nodes);
    let with_nodes = proc_status_kib("VmRSS:").unwrap_or(0);
    let id = scheduler.submit(job, "12D3KooWclient", 1).unwrap();
    let after = proc_status_kib("VmRSS:").unwrap_or(0);
    let peak = proc_status_kib("VmHWM:").unwrap_or(0);
    let running = scheduler
        .job(&id)
        .unwrap()
        .tasks
        .iter()
        .filter(|t| t.receiver.is_some())
        .count();
    assert_eq!(running, TASKS);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "scheduler memory: {NODES} nodes {:.1} MiB; + {TASKS} assigned tasks {:.1} MiB \
         ({:.0} bytes/task); process RSS {:.1} MiB, peak (VmHWM) {:.1} MiB",
        mib(with_nodes.saturating_sub(before)),
        mib(after.saturating_sub(with_nodes)),
        after.saturating_sub(with_nodes) as f64 * 1024.0 / TASKS as f64,
        mib(after),
        mib(peak),
    );
}

fn bench_scheduler(c: &mut Criterion) {
    let nodes = nodes();
    report_memory(&nodes);

    let mut group = c.benchmark_group("scheduler");
    group
        .throughput(Throughput::Elements(TASKS as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10));
    let mut nonce = 0;
    group.bench_function("submit_assign_100k_tasks_10k_nodes", |b| {
        b.iter_batched(
            || {
                nonce += 1;
                let dir = tempfile::tempdir().unwrap();
                let scheduler = scheduler(dir.path(), &nodes);
                (dir, scheduler, request(nonce))
            },
            |(dir, mut scheduler, job)| {
                black_box(scheduler.submit(job, "12D3KooWclient", 1).unwrap());
                // Dropped outside the measurement by `iter_batched`.
                (dir, scheduler)
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();

    bench_reports(c, &nodes);

    let dir = tempfile::tempdir().unwrap();
    let issuer = DomainKeyIssuer::new(DomainKeyStore::open(dir.path().join("keys")).unwrap());
    let grant = TokenGrant {
        domain_id: DOMAIN,
        job_id: "5f0c2ab8e7d1f3a9c4b6d8e0f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0",
        task_name: "task-000001",
        sender: "12D3KooWclient",
        receiver: "12D3KooWnode000001",
        endpoint: ENDPOINT,
        issued_at: 1_700_000_000_000,
        lifetime: Duration::from_secs(600),
        copy: false,
    };
    issuer.issue(&grant).unwrap();
    let mut group = c.benchmark_group("scheduler");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    group.bench_function("issue_one_token", |b| {
        b.iter(|| issuer.issue(black_box(&grant)).unwrap())
    });
    group.finish();
}

/// Running tasks to report on, refilled with a new job (outside the measurement) when used up.
struct Running {
    scheduler: Scheduler,
    tasks: Vec<Task>,
    nonce: u64,
}

impl Running {
    fn next(&mut self, count: usize) -> Vec<Task> {
        if self.tasks.len() < count {
            self.nonce += 1;
            let id = self
                .scheduler
                .submit(request(self.nonce), "12D3KooWclient", 2)
                .unwrap();
            let job = self.scheduler.job(&id).unwrap();
            self.tasks
                .extend(job.tasks.into_iter().filter(|t| t.receiver.is_some()));
        }
        let rest = self.tasks.len() - count;
        self.tasks
            .split_off(rest)
            .into_iter()
            .map(|t| Task {
                status: Status::Done as i32,
                ..t
            })
            .collect()
    }
}

/// The cost of a report: each in its own transaction (one fsync each), or 1000 in one.
fn bench_reports(c: &mut Criterion, nodes: &[NodeRecord]) {
    let dir = tempfile::tempdir().unwrap();
    let mut running = Running {
        scheduler: scheduler(dir.path(), nodes),
        tasks: Vec::new(),
        nonce: 0,
    };
    let mut group = c.benchmark_group("scheduler");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for batch in [1, 1000] {
        group.throughput(Throughput::Elements(batch as u64));
        let name = if batch == 1 {
            "report_done_one_commit_each".to_owned()
        } else {
            format!("report_many_{batch}_done")
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let updates = running.next(batch);
                    let reports: Vec<(&Task, &str)> = updates
                        .iter()
                        .map(|t| (t, t.receiver.as_deref().unwrap()))
                        .collect();
                    let start = Instant::now();
                    if batch == 1 {
                        running
                            .scheduler
                            .report(reports[0].0, reports[0].1, 3)
                            .unwrap();
                    } else {
                        let results = running.scheduler.report_many(reports, 3).unwrap();
                        assert!(results.iter().all(Result::is_ok));
                    }
                    total += start.elapsed();
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_scheduler);
criterion_main!(benches);
