//! The manager's memory at scale: 1 000 000 tasks run to DONE through one scheduler on a redb
//! file, with the retention of finished jobs on (its defaults: 24 h, 10 000 jobs). Each task is
//! its own job (so the retention really drops jobs), submitted with `submit` and assigned at once
//! to one node of unlimited capacity (a real EdDSA token per assignment); after each batch of
//! jobs their tasks are reported DONE in one `report_many`, then `tick` runs the retention. The process's resident memory
//! (VmRSS from /proc/self/status) is printed after 10 000 finished tasks and after all of them,
//! and their ratio; the target is RSS(1M) <= 1.25 x RSS(10k): the state of a manager that ran a
//! million tasks is the state of one that ran ten thousand.
//!
//! `cargo bench -p domain-benches --bench scheduler_memory`
//! (options: `--tasks N` (1 000 000), `--tasks-per-job N` (1), `--max-finished-jobs N`
//! (10 000), `--batch N` (100 jobs per `report_many` and `tick`), `--durable-every N` (100);
//! e.g. `-- --tasks-per-job 100 --max-finished-jobs 100` runs jobs of 100 tasks, 10 000
//! finished tasks kept). It prints the RSS every 100 000 tasks too, to show the plateau.
//!
//! As in the manager, the event stream has a subscriber (16 384 events buffered) that is drained
//! after every operation. The clock advances 100 ms per task, so a batch of 100 one-task jobs is
//! 10 s of a busy cluster between two ticks, and the 60 s grace period of the retention holds
//! 600 tasks, well under the count limit.
//!
//! The store is a [`RedbStore`] on a file in a temp dir. Every operation is one redb write
//! transaction, as in the manager, but only every `--durable-every`th commits with
//! `redb::Durability::Immediate` (an fsync), the others with `Durability::None`: a million
//! submits with an fsync each take over six minutes here and measure the disk, not the memory.
//! Not all of them None: until a durable commit, redb keeps the bookkeeping of the non-durable
//! ones in memory (measured here: about 37 bytes more RSS per task, without end, with None
//! alone), which is not the state of a manager (it commits with `Immediate`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::time::Instant;

use domain_auth::DomainKeyStore;
use domain_proto::discovery::{Capability, Node};
use domain_proto::task::{
    CapabilityFilters, JobRequest, ResourceRecruitment, Status, Task, TaskRequest,
};
use domain_scheduler::{
    Batch, DomainKeyIssuer, Event, RedbStore, Scheduler, SchedulerConfig, SchedulerStore, Snapshot,
    StoreError,
};
use tokio::sync::broadcast::{self, error::TryRecvError};

const NAME: &str = "scheduler_memory";
const ENDPOINT: &str = "/store/v1";
const DOMAIN: &str = "bench-domain";
const NODE: &str = "12D3KooWnode";
const CLIENT: &str = "12D3KooWclient";
/// The manager's scheduler event queue (`EVENT_QUEUE` in domain-manager's service).
const EVENT_QUEUE: usize = 16 * 1024;
/// Simulated time per task submitted.
const MS_PER_TASK: u64 = 100;
/// Where the first figure is taken.
const EARLY: usize = 10_000;
const TARGET: f64 = 1.25;
/// A progress line every this many tasks.
const PROGRESS: usize = 100_000;

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{NAME}: {message}");
            return ExitCode::FAILURE;
        }
    };
    if !options.selected() {
        return ExitCode::SUCCESS;
    }
    run(&options);
    ExitCode::SUCCESS
}

/// The command line: the options of the header, filters, and the `--bench` cargo passes.
struct Options {
    tasks: usize,
    tasks_per_job: usize,
    max_finished_jobs: usize,
    batch: usize,
    durable_every: usize,
    filters: Vec<String>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Self {
            tasks: 1_000_000,
            tasks_per_job: 1,
            max_finished_jobs: SchedulerConfig::new("").max_finished_jobs,
            batch: 100,
            durable_every: 100,
            filters: Vec::new(),
        };
        while let Some(arg) = args.next() {
            let mut number = |min: usize| -> Result<usize, String> {
                let value = args.next().ok_or(format!("{arg} needs a number"))?;
                value
                    .replace('_', "")
                    .parse()
                    .ok()
                    .filter(|&n| n >= min)
                    .ok_or(format!("{arg} {value:?}: not a number of at least {min}"))
            };
            match arg.as_str() {
                "--bench" => {}
                "--tasks" => options.tasks = number(1)?,
                "--tasks-per-job" => options.tasks_per_job = number(1)?,
                "--max-finished-jobs" => options.max_finished_jobs = number(0)?,
                "--batch" => options.batch = number(1)?,
                "--durable-every" => options.durable_every = number(1)?,
                flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
                filter => options.filters.push(filter.to_owned()),
            }
        }
        Ok(options)
    }

    fn selected(&self) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| NAME.contains(f.as_str()))
    }
}

fn request(nonce: usize, tasks: usize) -> JobRequest {
    let tasks = (0..tasks)
        .map(|i| TaskRequest {
            name: format!("store-{i}"),
            capability_filters: CapabilityFilters {
                endpoint: ENDPOINT.into(),
                min_cpu: None,
                min_gpu: None,
            },
            max_budget: None,
            timeout: "10m".into(),
            needs: Vec::new(),
            resource_recruitment: ResourceRecruitment::default(),
            sender: CLIENT.into(),
            receiver: None,
            data: None,
        })
        .collect();
    JobRequest {
        name: "upload".into(),
        tasks,
        nonce: nonce.to_string(),
        domain_id: DOMAIN.into(),
    }
}

/// A [`RedbStore`] whose every `durable_every`th commit is durable, the others not (see the
/// header).
struct MostlyNonDurable {
    store: Option<RedbStore>,
    durable_every: usize,
    commits: usize,
}

impl SchedulerStore for MostlyNonDurable {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.store
            .as_ref()
            .map_or(Ok(Snapshot::default()), |s| s.load())
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        self.commits += 1;
        let durability = if self.commits % self.durable_every == 0 {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        let mut store = self.store.take().unwrap().with_durability(durability);
        let result = store.commit(batch);
        self.store = Some(store);
        result
    }
}

/// A field of /proc/self/status, in KiB.
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The tasks assigned by the last operation, as their receiver reports them DONE.
fn drain(events: &mut broadcast::Receiver<Event>, done: &mut Vec<Task>) {
    loop {
        match events.try_recv() {
            Ok(Event::TaskAssigned { task, .. }) => done.push(Task {
                status: Status::Done as i32,
                ..task
            }),
            Ok(_) => {}
            Err(TryRecvError::Empty) => return,
            Err(e) => panic!("event stream: {e}"),
        }
    }
}

fn run(options: &Options) {
    let dir = tempfile::tempdir().unwrap();
    let keys = DomainKeyStore::open(dir.path().join("keys")).unwrap();
    keys.key(DOMAIN).unwrap();
    let db = dir.path().join("scheduler.redb");
    let store = MostlyNonDurable {
        store: Some(RedbStore::open(&db).unwrap()),
        durable_every: options.durable_every,
        commits: 0,
    };
    let config = SchedulerConfig {
        event_capacity: EVENT_QUEUE,
        max_finished_jobs: options.max_finished_jobs,
        ..SchedulerConfig::new("12D3KooWmanager")
    };
    let (ttl, max) = (config.finished_ttl, config.max_finished_jobs);
    let mut scheduler = Scheduler::open(
        config,
        Box::new(store),
        Box::new(DomainKeyIssuer::new(keys)),
        0,
    )
    .unwrap();
    let mut events = scheduler.subscribe();
    let node = Node {
        id: NODE.into(),
        name: "storage".into(),
        capabilities: vec![Capability {
            endpoint: ENDPOINT.into(),
            capacity: -1,
        }],
        cpu: None,
        gpu: None,
    };
    scheduler.join(node, 0).unwrap();
    println!(
        "{NAME}: {} tasks in jobs of {}, {} jobs per report_many and tick, retention {} h and \
         {max} finished jobs, one redb commit in {} durable",
        options.tasks,
        options.tasks_per_job,
        options.batch,
        ttl.as_secs() / 3600,
        options.durable_every,
    );
    let start_rss = proc_status_kib("VmRSS:");

    let jobs = options.tasks.div_ceil(options.tasks_per_job);
    let mut now = 1;
    let mut finished = 0usize;
    let mut early: Option<u64> = None;
    let mut done = Vec::with_capacity(options.batch * options.tasks_per_job);
    let started = Instant::now();
    let mut job = 0;
    while job < jobs {
        let batch = options.batch.min(jobs - job);
        for _ in 0..batch {
            let tasks = options
                .tasks_per_job
                .min(options.tasks - job * options.tasks_per_job);
            scheduler.submit(request(job, tasks), CLIENT, now).unwrap();
            drain(&mut events, &mut done);
            job += 1;
            now += MS_PER_TASK * tasks as u64;
        }
        let reports = done.iter().map(|task| (task, NODE));
        let results = scheduler.report_many(reports, now).unwrap();
        assert!(results.iter().all(Result::is_ok), "every DONE applies");
        let batch_tasks = done.len();
        finished += batch_tasks;
        done.clear();
        drain(&mut events, &mut done);
        scheduler.tick(now).unwrap();
        drain(&mut events, &mut done);
        assert!(done.is_empty(), "nothing is assigned twice");
        if finished / PROGRESS != (finished - batch_tasks) / PROGRESS {
            println!(
                "{finished:>9} finished tasks: VmRSS {:7.1} MiB",
                mib(proc_status_kib("VmRSS:"))
            );
        }
        if early.is_none() && finished >= EARLY {
            early = Some(proc_status_kib("VmRSS:"));
            println!(
                "after {finished:>9} finished tasks: VmRSS {:7.1} MiB, {} finished jobs kept, \
                 {:.1} s",
                mib(early.unwrap_or(0)),
                scheduler.finished_job_count(),
                started.elapsed().as_secs_f64(),
            );
        }
    }
    let late = proc_status_kib("VmRSS:");
    let peak = proc_status_kib("VmHWM:");
    let file = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let took = started.elapsed().as_secs_f64();
    println!(
        "after {finished:>9} finished tasks: VmRSS {:7.1} MiB, {} finished jobs kept, {took:.1} s \
         ({:.0} tasks/s)",
        mib(late),
        scheduler.finished_job_count(),
        finished as f64 / took,
    );
    println!(
        "process RSS before the first job {:.1} MiB, peak (VmHWM) {:.1} MiB; scheduler.redb {:.1} MiB",
        mib(start_rss),
        mib(peak),
        file as f64 / (1024.0 * 1024.0),
    );
    match early {
        Some(early) => {
            let ratio = late as f64 / early.max(1) as f64;
            let verdict = if ratio <= TARGET { "met" } else { "not met" };
            println!("RSS({finished}) / RSS({EARLY}) = {ratio:.3}; target <= {TARGET}: {verdict}");
        }
        None => println!("fewer than {EARLY} tasks: no ratio"),
    }
}
