//! The scheduler core: jobs as DAGs of tasks, assignment, the task state machine, retries,
//! timeouts, liveness and persistence. No threads, no clock: every call takes `now`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use domain_proto::discovery::{Holder, Holdings, Node};
use domain_proto::task::{Any, Job, JobRequest, Status, Task, TaskHandler};
use tokio::sync::broadcast;

use crate::events::{Event, JobStatus};
use crate::holders::{HolderIndex, HoldersChange};
use crate::registry::Registry;
use crate::store::{Batch, JobRecord, NodeRecord, SchedulerStore, TaskRecord};
use crate::token::TokenIssuer;
use crate::validate::{JobRejected, TaskSpec, job_id, validate};

mod config;
mod restore;
mod transitions;

pub use config::{SchedulerConfig, SchedulerError};

/// Tokens of one scheduling pass are signed in parallel in chunks of at least this many: below
/// it, handing work to other threads costs more than signing.
const PARALLEL_SIGNING_CHUNK: usize = 64;

/// Capacity kept by the per-operation buffers between operations.
const RETAINED_BUFFER: usize = 1024;

/// A finished job is kept at least this long, whatever [`SchedulerConfig::finished_ttl`] and
/// [`SchedulerConfig::max_finished_jobs`] say: what follows a job's end still refers to it. A
/// node's `replicate` job names the store job that just finished, and a client that lost its
/// stream resumes its job by submitting the same request again, which only finds the job (and
/// does not run it a second time) while it is kept.
pub const FINISHED_GRACE: Duration = Duration::from_secs(60);

/// Where a task is in its life; [`Phase::status`] is what the wire shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not assigned yet: waiting for its needs, or about to be assigned. PENDING, no receiver.
    Queued,
    /// Ready, but no node fits. WAITING_FOR_RESOURCE.
    Waiting,
    /// An attempt failed; about to be assigned again. RETRY.
    Retry,
    /// Assigned: has a receiver, a token and a deadline. PENDING.
    Pending,
    /// STARTED.
    Started,
    /// PROCESSING.
    Processing,
    /// DONE.
    Done,
    /// FAILED.
    Failed,
}

impl Phase {
    fn status(self) -> Status {
        match self {
            Phase::Queued | Phase::Pending => Status::Pending,
            Phase::Waiting => Status::WaitingForResource,
            Phase::Retry => Status::Retry,
            Phase::Started => Status::Started,
            Phase::Processing => Status::Processing,
            Phase::Done => Status::Done,
            Phase::Failed => Status::Failed,
        }
    }

    fn is_running(self) -> bool {
        matches!(self, Phase::Pending | Phase::Started | Phase::Processing)
    }

    fn is_finished(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed)
    }
}

/// Counts of what a [`Scheduler`] holds ([`Scheduler::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Jobs with a task not finished.
    pub jobs_running: usize,
    /// Finished jobs kept, every task DONE.
    pub jobs_done: usize,
    /// Finished jobs kept, some task FAILED.
    pub jobs_failed: usize,
    /// The running jobs' tasks, indexed by their `task.Status` number.
    pub tasks: [usize; 7],
    /// Tasks ready for the next scheduling pass.
    pub ready_tasks: usize,
    /// Tasks no node fits now.
    pub waiting_tasks: usize,
    /// Tasks assigned and not finished (each has a deadline).
    pub running_tasks: usize,
    /// Registered nodes.
    pub nodes: usize,
    /// Entries of the holder index (one per domain and node).
    pub holder_entries: usize,
}

#[derive(Debug, Clone)]
struct TaskState {
    phase: Phase,
    /// Needs not DONE yet.
    remaining_needs: u32,
    receiver: Option<Arc<str>>,
    last_receiver: Option<Arc<str>>,
    retries: u32,
    deadline: Option<u64>,
    err_msg: String,
    output: Option<Any>,
    created_at: u64,
    updated_at: u64,
    /// Changed in the current operation (and listed in `Scheduler::dirty_tasks`).
    dirty: bool,
}

#[derive(Debug)]
struct JobState {
    id: Arc<str>,
    request: JobRequest,
    submitter: String,
    created_at: u64,
    specs: Vec<TaskSpec>,
    /// For each task, the tasks that need it.
    dependents: Vec<Vec<u32>>,
    index: HashMap<String, u32>,
    tasks: Vec<TaskState>,
    unfinished: usize,
    failed: usize,
    /// [`Event::JobFinished`] was published (or the job was finished when restored).
    finish_announced: bool,
    /// When the job finished (its key in `Scheduler::finished`): the latest `updated_at` of its
    /// tasks. None while it runs.
    finished_at: Option<u64>,
}

impl JobState {
    fn new(
        id: Arc<str>,
        request: JobRequest,
        specs: Vec<TaskSpec>,
        submitter: String,
        now: u64,
    ) -> Self {
        let mut dependents = vec![Vec::new(); specs.len()];
        for (position, spec) in specs.iter().enumerate() {
            for &need in &spec.needs {
                // Positions fit in u32: `validate` checked.
                dependents[need as usize].push(position as u32);
            }
        }
        let index = request
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i as u32))
            .collect();
        let tasks = specs
            .iter()
            .map(|spec| TaskState {
                phase: Phase::Queued,
                remaining_needs: spec.needs.len() as u32,
                receiver: None,
                last_receiver: None,
                retries: 0,
                deadline: None,
                err_msg: String::new(),
                output: None,
                created_at: now,
                updated_at: now,
                dirty: false,
            })
            .collect();
        Self {
            id,
            unfinished: specs.len(),
            failed: 0,
            finish_announced: false,
            finished_at: None,
            request,
            submitter,
            created_at: now,
            specs,
            dependents,
            index,
            tasks,
        }
    }

    /// When the last of its tasks changed: for a finished job, when it finished. Derived from the
    /// stored tasks, so a restart finds the same time without storing it.
    fn last_update(&self) -> u64 {
        self.tasks
            .iter()
            .map(|t| t.updated_at)
            .max()
            .unwrap_or(self.created_at)
    }

    fn status(&self) -> JobStatus {
        if self.unfinished > 0 {
            JobStatus::Running
        } else if self.failed > 0 {
            JobStatus::Failed
        } else {
            JobStatus::Done
        }
    }

    /// The task as the wire shows it: never with a token.
    fn message(&self, position: usize) -> Task {
        let request = &self.request.tasks[position];
        let state = &self.tasks[position];
        Task {
            name: request.name.clone(),
            receiver: state.receiver.as_deref().map(str::to_owned),
            endpoint: request.capability_filters.endpoint.clone(),
            access_token: None,
            job_id: self.id.to_string(),
            sender: request.sender.clone(),
            status: state.phase.status() as i32,
            output: state.output.clone(),
        }
    }

    fn handler(&self, position: usize) -> TaskHandler {
        let state = &self.tasks[position];
        let dependencies = self.specs[position]
            .needs
            .iter()
            .map(|&n| {
                let n = n as usize;
                (
                    self.request.tasks[n].name.clone(),
                    self.tasks[n].phase == Phase::Done,
                )
            })
            .collect::<BTreeMap<_, _>>();
        TaskHandler {
            task: self.message(position),
            dependencies,
            job_id: self.id.to_string(),
            err_msg: state.err_msg.clone(),
            retries: state.retries,
            updated_at: state.updated_at,
            created_at: state.created_at,
        }
    }

    fn record(&self, position: usize) -> TaskRecord {
        let state = &self.tasks[position];
        TaskRecord {
            position: position as u32,
            handler: self.handler(position),
            deadline: state.deadline,
            last_receiver: state.last_receiver.as_deref().map(str::to_owned),
        }
    }
}

/// One task of one job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TaskRef {
    job: Arc<str>,
    position: u32,
}

/// The scheduler: validates jobs, keeps the node registry, assigns tasks, follows them to the
/// end, and persists every change before announcing it. See the crate docs for the rules.
pub struct Scheduler {
    config: SchedulerConfig,
    store: Box<dyn SchedulerStore>,
    issuer: Box<dyn TokenIssuer>,
    registry: Registry,
    holders: HolderIndex,
    /// Boxed: under the churn of the retention (a job in, a job out) the map's tombstones make it
    /// double its buckets once even at a steady size, and a bucket is then a pointer, not a
    /// whole `JobState`.
    jobs: HashMap<Arc<str>, Box<JobState>>,
    /// Tasks to assign at the next scheduling pass, in arrival order.
    ready: VecDeque<TaskRef>,
    /// Tasks no node fits, in arrival order.
    waiting: VecDeque<TaskRef>,
    /// The registry generation `waiting` was last tried against.
    waiting_generation: u64,
    /// Running tasks by deadline: the timeouts to enforce, and the tasks of a node.
    deadlines: BTreeSet<(u64, TaskRef)>,
    /// Running jobs by (creation time, id): what a monitor is shown first.
    running: BTreeSet<(u64, Arc<str>)>,
    /// Finished jobs by (finish time, id): the retention removes from the front, and a monitor
    /// is shown the back.
    finished: BTreeSet<(u64, Arc<str>)>,
    events: broadcast::Sender<Event>,
    // The current operation's changes, stored then published by `flush`.
    dirty_tasks: Vec<TaskRef>,
    new_jobs: Vec<Arc<str>>,
    dirty_nodes: Vec<String>,
    removed_nodes: Vec<String>,
    removed_jobs: Vec<String>,
    outbox: Vec<Event>,
    poisoned: bool,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("config", &self.config)
            .field("jobs", &self.jobs.len())
            .field("nodes", &self.registry.len())
            .field("running", &self.deadlines.len())
            .field("waiting", &self.waiting.len())
            .field("finished_jobs", &self.finished.len())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Opens a scheduler on `store`, resuming every job where the store left it.
    ///
    /// Restored nodes count as seen at `now`: they get one `node_timeout` to heartbeat again
    /// before their tasks are retried elsewhere, so a manager restart does not rerun the tasks
    /// of healthy nodes. Tasks whose receiver is no longer registered are retried at once.
    pub fn open(
        config: SchedulerConfig,
        store: Box<dyn SchedulerStore>,
        issuer: Box<dyn TokenIssuer>,
        now: u64,
    ) -> Result<Self, SchedulerError> {
        let snapshot = store.load()?;
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let mut scheduler = Self {
            config,
            store,
            issuer,
            registry: Registry::default(),
            holders: HolderIndex::default(),
            jobs: HashMap::new(),
            ready: VecDeque::new(),
            waiting: VecDeque::new(),
            waiting_generation: 0,
            deadlines: BTreeSet::new(),
            running: BTreeSet::new(),
            finished: BTreeSet::new(),
            events,
            dirty_tasks: Vec::new(),
            new_jobs: Vec::new(),
            dirty_nodes: Vec::new(),
            removed_nodes: Vec::new(),
            removed_jobs: Vec::new(),
            outbox: Vec::new(),
            poisoned: false,
        };
        scheduler.restore(snapshot, now)?;
        scheduler.schedule(now);
        // What came due while the manager was down goes now, in the same first commit.
        scheduler.prune_finished(now);
        scheduler.flush()?;
        Ok(scheduler)
    }

    /// A receiver of the event stream. It sees events published after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The settings in use.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Validates `request`, stores it as a job of `submitter`, and assigns the tasks that need
    /// nothing. Returns the job id.
    pub fn submit(
        &mut self,
        request: JobRequest,
        submitter: &str,
        now: u64,
    ) -> Result<String, SchedulerError> {
        self.operation(|s| {
            let specs = validate(&request, s.config.max_tasks_per_job)?;
            let id = job_id(&request);
            if s.jobs.contains_key(id.as_str()) {
                return Err(JobRejected::AlreadySubmitted { job_id: id }.into());
            }
            let id: Arc<str> = Arc::from(id);
            let mut job = JobState::new(id.clone(), request, specs, submitter.to_owned(), now);
            // Every task is stored with its job, in the same transaction.
            for (position, state) in job.tasks.iter_mut().enumerate() {
                let task = TaskRef {
                    job: id.clone(),
                    position: position as u32,
                };
                state.dirty = true;
                s.dirty_tasks.push(task.clone());
                if state.remaining_needs == 0 {
                    s.ready.push_back(task);
                }
            }
            s.outbox.push(Event::JobSubmitted {
                job_id: id.to_string(),
                name: job.request.name.clone(),
                submitter: submitter.to_owned(),
            });
            s.running.insert((job.created_at, id.clone()));
            s.jobs.insert(id.clone(), Box::new(job));
            s.new_jobs.push(id.clone());
            s.schedule(now);
            Ok(id.to_string())
        })
    }

    /// Registers `node` (or updates a registration), counts it as seen at `now`, and assigns
    /// tasks that were waiting for such a node.
    pub fn join(&mut self, node: Node, now: u64) -> Result<(), SchedulerError> {
        self.operation(|s| {
            let record = NodeRecord { node: node.clone() };
            let new = !s.registry.contains(&node.id);
            s.registry.join(node, now)?;
            if new {
                s.holders.registration_changed(&record.node.id);
            }
            s.dirty_nodes.push(record.node.id.clone());
            s.schedule(now);
            Ok(())
        })
    }

    /// Records that `node_id` is alive at `now`. Liveness is not persisted: a restarted scheduler
    /// counts every node as seen at its start.
    pub fn heartbeat(&mut self, node_id: &str, now: u64) -> Result<(), SchedulerError> {
        if self.poisoned {
            return Err(SchedulerError::Poisoned);
        }
        if self.registry.heartbeat(node_id, now) {
            Ok(())
        } else {
            Err(SchedulerError::UnknownNode {
                node: node_id.to_owned(),
            })
        }
    }

    /// Removes `node_id` from the registry; its running tasks are retried on other nodes.
    pub fn leave(&mut self, node_id: &str, now: u64) -> Result<(), SchedulerError> {
        self.operation(|s| {
            if !s.registry.contains(node_id) {
                return Err(SchedulerError::UnknownNode {
                    node: node_id.to_owned(),
                });
            }
            s.drop_nodes(&[Arc::from(node_id)], now, |node| {
                format!("node {node} left")
            });
            s.schedule(now);
            Ok(())
        })
    }

    /// `node_id` restarted (its first join since it started says so): whatever it was doing
    /// died with its last run. Its running tasks end their attempt, as if it had left (they
    /// are retried, on it too); the tasks of the jobs it submitted that it sends itself (a
    /// node's copies) fail, since no one else holds their stream; and it stays registered.
    pub fn restarted(&mut self, node_id: &str, now: u64) -> Result<(), SchedulerError> {
        self.operation(|s| {
            let received: Vec<TaskRef> = s
                .deadlines
                .iter()
                .filter(|(_, task)| {
                    s.jobs.get(&task.job).is_some_and(|job| {
                        job.tasks[task.position as usize].receiver.as_deref() == Some(node_id)
                    })
                })
                .map(|(_, task)| task.clone())
                .collect();
            for task in received {
                s.attempt_failed(&task, now, format!("node {node_id} restarted"));
            }
            let sent: Vec<TaskRef> = s
                .running
                .iter()
                .filter_map(|(_, id)| Some((id, s.jobs.get(id)?)))
                .filter(|(_, job)| job.submitter == node_id)
                .flat_map(|(id, job)| {
                    job.tasks
                        .iter()
                        .zip(&job.request.tasks)
                        .enumerate()
                        .filter(|(_, (state, spec))| {
                            !state.phase.is_finished() && spec.sender == node_id
                        })
                        .map(|(position, _)| TaskRef {
                            job: id.clone(),
                            position: u32::try_from(position).unwrap_or(u32::MAX),
                        })
                })
                .collect();
            for task in sent {
                s.end_attempt(&task, now);
                s.fail(&task, now, format!("its sender {node_id} restarted"));
            }
            s.schedule(now);
            Ok(())
        })
    }

    /// The submitter of job `job_id` left it: its stream for the job's tokens closed and
    /// it did not come back for them. The tasks whose sender it is and that no node has
    /// started fail, since nobody will open their streams; a task a node started runs on
    /// (the node ends it). Another submitter's job, an unknown or a finished one, is left
    /// alone. Call it again after a retry: the retry is not started either.
    pub fn submitter_left(
        &mut self,
        job_id: &str,
        submitter: &str,
        now: u64,
    ) -> Result<(), SchedulerError> {
        self.operation(|s| {
            let Some(job) = s.jobs.get(job_id).filter(|job| job.submitter == submitter) else {
                return Ok(());
            };
            let abandoned: Vec<TaskRef> = job
                .tasks
                .iter()
                .zip(&job.request.tasks)
                .enumerate()
                .filter(|(_, (state, spec))| {
                    spec.sender == submitter
                        && matches!(
                            state.phase,
                            Phase::Queued | Phase::Waiting | Phase::Retry | Phase::Pending
                        )
                })
                .map(|(position, _)| TaskRef {
                    job: job.id.clone(),
                    position: u32::try_from(position).unwrap_or(u32::MAX),
                })
                .collect();
            for task in abandoned {
                s.end_attempt(&task, now);
                s.fail(&task, now, format!("its submitter {submitter} left"));
            }
            s.schedule(now);
            Ok(())
        })
    }

    /// Applies a status change of a task reported by `reporter` (a peer id): `update.job_id`,
    /// `update.name` and `update.status` say which task and what it became; `update.output`, if
    /// present, is kept.
    ///
    /// Only the manager, the task's sender and its current receiver may report. STARTED and
    /// PROCESSING follow an assignment; DONE ends the task and releases its dependents; FAILED
    /// or RETRY ends the attempt (retried while retries remain). A repeated report of the current
    /// status is accepted and changes nothing (gossip may deliver twice); any other report on a
    /// finished task, or of PENDING or WAITING_FOR_RESOURCE, is an invalid transition.
    pub fn report(
        &mut self,
        update: &Task,
        reporter: &str,
        now: u64,
    ) -> Result<(), SchedulerError> {
        self.operation(|s| {
            s.apply_report(update, reporter, now)?;
            s.schedule(now);
            Ok(())
        })
    }

    /// Applies many reports as one operation: one store transaction (one fsync) for all of
    /// them, where [`Scheduler::report`] pays one each. The cluster can drain its queue of
    /// gossiped updates into one call.
    ///
    /// The outer error is a store failure (nothing of the batch is announced); each report has
    /// its own result otherwise, with the same rules as [`Scheduler::report`].
    pub fn report_many<'a>(
        &mut self,
        reports: impl IntoIterator<Item = (&'a Task, &'a str)>,
        now: u64,
    ) -> Result<Vec<Result<(), SchedulerError>>, SchedulerError> {
        self.operation(|s| {
            let results = reports
                .into_iter()
                .map(|(update, reporter)| s.apply_report(update, reporter, now))
                .collect();
            s.schedule(now);
            Ok(results)
        })
    }

    /// Checks and applies one report (see [`Scheduler::report`]); leaves assignment to the
    /// caller.
    fn apply_report(
        &mut self,
        update: &Task,
        reporter: &str,
        now: u64,
    ) -> Result<(), SchedulerError> {
        let job_id = update.job_id.as_str();
        let Some(job) = self.jobs.get(job_id) else {
            return Err(SchedulerError::UnknownJob {
                job_id: job_id.to_owned(),
            });
        };
        let Some(&position) = job.index.get(&update.name) else {
            return Err(SchedulerError::UnknownTask {
                job_id: job_id.to_owned(),
                task: update.name.clone(),
            });
        };
        let to = Status::try_from(update.status).map_err(|_| SchedulerError::InvalidStatus {
            job_id: job_id.to_owned(),
            task: update.name.clone(),
            value: update.status,
        })?;
        let state = &job.tasks[position as usize];
        let allowed = reporter == self.config.manager_id
            || reporter == job.request.tasks[position as usize].sender
            || state.receiver.as_deref() == Some(reporter);
        if !allowed {
            return Err(SchedulerError::NotAllowed {
                reporter: reporter.to_owned(),
                job_id: job_id.to_owned(),
                task: update.name.clone(),
            });
        }
        let from = state.phase;
        let invalid = || SchedulerError::InvalidTransition {
            job_id: job_id.to_owned(),
            task: update.name.clone(),
            from: from.status(),
            to,
        };
        let task = TaskRef {
            job: job.id.clone(),
            position,
        };
        match (from, to) {
            (Phase::Done, Status::Done) | (Phase::Failed, Status::Failed) => {}
            // A late STARTED after PROCESSING (gossip reorders) changes nothing.
            (Phase::Started | Phase::Processing, Status::Started) => {}
            (Phase::Pending, Status::Started) => {
                self.set_running_phase(&task, Phase::Started, update.output.clone(), now)
            }
            (Phase::Pending | Phase::Started | Phase::Processing, Status::Processing) => {
                self.set_running_phase(&task, Phase::Processing, update.output.clone(), now)
            }
            (Phase::Pending | Phase::Started | Phase::Processing, Status::Done) => {
                self.complete(&task, update.output.clone(), now)
            }
            (
                Phase::Pending | Phase::Started | Phase::Processing,
                Status::Failed | Status::Retry,
            ) => self.attempt_failed(
                &task,
                now,
                format!("{reporter} reported {}", to.as_str_name()),
            ),
            _ => return Err(invalid()),
        }
        // A node that reports is alive.
        self.registry.heartbeat(reporter, now);
        Ok(())
    }

    /// Drops nodes unseen for `node_timeout` (retrying their tasks), retries tasks whose
    /// deadline passed, and assigns what can be assigned. Call it periodically; it is cheap
    /// when nothing is due (see [`Scheduler::next_deadline`]).
    pub fn tick(&mut self, now: u64) -> Result<(), SchedulerError> {
        self.operation(|s| {
            let timeout = millis(s.config.node_timeout);
            let unseen = s.registry.unseen_for(timeout, now);
            s.drop_nodes(&unseen, now, |node| {
                format!("node {node} was not seen for {timeout} ms")
            });
            loop {
                let due = match s.deadlines.first() {
                    Some((deadline, task)) if *deadline <= now => task.clone(),
                    _ => break,
                };
                let timeout = s
                    .jobs
                    .get(&due.job)
                    .map(|job| job.request.tasks[due.position as usize].timeout.clone())
                    .unwrap_or_default();
                s.attempt_failed(&due, now, format!("timed out (timeout {timeout})"));
            }
            s.schedule(now);
            s.prune_finished(now);
            Ok(())
        })
    }

    /// Removes the finished jobs that the retention says are due (see
    /// [`SchedulerConfig::finished_ttl`], [`SchedulerConfig::max_finished_jobs`],
    /// [`FINISHED_GRACE`]), oldest finished first: O(log n) per job removed, nothing when none is
    /// due.
    fn prune_finished(&mut self, now: u64) {
        let ttl = millis(self.config.finished_ttl);
        let grace = millis(FINISHED_GRACE);
        let mut removed = 0usize;
        while let Some((finished_at, id)) = self.finished.first() {
            let age = now.saturating_sub(*finished_at);
            let expired = age >= ttl;
            let over_count = self.finished.len() > self.config.max_finished_jobs;
            // The index is in finish order: once its oldest is not due, no other is.
            if age < grace || !(expired || over_count) {
                break;
            }
            let id = id.clone();
            self.forget_job(&id);
            removed += 1;
        }
        if removed > 0 {
            self.shrink_job_map();
        }
    }

    /// Forgets a finished job, in memory and (with this operation's batch) in the store.
    ///
    /// A finished job holds nothing else: its tasks left `deadlines` when their attempts ended,
    /// and `ready` and `waiting` only ever hold assignable tasks, whose jobs are running.
    fn forget_job(&mut self, id: &str) {
        let Some(job) = self.jobs.remove(id) else {
            return;
        };
        if let Some(finished_at) = job.finished_at {
            self.finished.remove(&(finished_at, job.id.clone()));
        }
        self.running.remove(&(job.created_at, job.id.clone()));
        self.removed_jobs.push(id.to_owned());
    }

    /// Gives memory back once the job map is far below its capacity: a burst of jobs would
    /// otherwise keep its peak allocation for the life of the process. A quarter, so the rehash
    /// this costs is paid once per many removals.
    fn shrink_job_map(&mut self) {
        if self.jobs.capacity() > 4 * self.jobs.len().max(RETAINED_BUFFER) {
            self.jobs.shrink_to_fit();
        }
    }

    /// Forgets a finished job and its tasks, in memory and in the store.
    pub fn remove_job(&mut self, job_id: &str) -> Result<(), SchedulerError> {
        self.operation(|s| {
            let Some(job) = s.jobs.get(job_id) else {
                return Err(SchedulerError::UnknownJob {
                    job_id: job_id.to_owned(),
                });
            };
            if job.status() == JobStatus::Running {
                return Err(SchedulerError::JobRunning {
                    job_id: job_id.to_owned(),
                });
            }
            s.forget_job(job_id);
            s.shrink_job_map();
            Ok(())
        })
    }

    /// The job with the current state of its tasks (no tokens): what `/monitor/v1` sends.
    pub fn job(&self, job_id: &str) -> Option<Job> {
        let job = self.jobs.get(job_id)?;
        Some(Job {
            id: job.id.to_string(),
            name: job.request.name.clone(),
            tasks: (0..job.tasks.len()).map(|i| job.message(i)).collect(),
        })
    }

    /// The request a job was made from, as submitted (its domain, tasks, senders, timeouts).
    pub fn job_request(&self, job_id: &str) -> Option<&JobRequest> {
        self.jobs.get(job_id).map(|job| &job.request)
    }

    /// Peer id of the job's submitter: the one its task tokens go to.
    pub fn job_submitter(&self, job_id: &str) -> Option<&str> {
        self.jobs.get(job_id).map(|job| job.submitter.as_str())
    }

    /// How the job stands.
    pub fn job_status(&self, job_id: &str) -> Option<JobStatus> {
        self.jobs.get(job_id).map(|job| job.status())
    }

    /// Ids of all jobs, oldest first.
    pub fn job_ids(&self) -> Vec<String> {
        let mut jobs: Vec<&JobState> = self.jobs.values().map(|job| &**job).collect();
        jobs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        jobs.into_iter().map(|j| j.id.to_string()).collect()
    }

    /// Ids of every running job and of the `finished_tail` most recently finished ones, oldest
    /// (submitted) first: what a monitor is shown when it starts. It costs the running jobs and
    /// the tail, not the finished jobs kept.
    pub fn recent_job_ids(&self, finished_tail: usize) -> Vec<String> {
        let tail = self.finished.iter().rev().take(finished_tail);
        let mut jobs: Vec<(u64, &Arc<str>)> = tail
            .filter_map(|(_, id)| self.jobs.get(id).map(|job| (job.created_at, id)))
            .chain(
                self.running
                    .iter()
                    .map(|(created_at, id)| (*created_at, id)),
            )
            .collect();
        jobs.sort_unstable();
        jobs.into_iter().map(|(_, id)| id.to_string()).collect()
    }

    /// How many finished jobs are kept (see [`SchedulerConfig::max_finished_jobs`]).
    pub fn finished_job_count(&self) -> usize {
        self.finished.len()
    }

    /// A task's full bookkeeping: the task (no token), the state of its needs, retries, error.
    pub fn task(&self, job_id: &str, task: &str) -> Option<TaskHandler> {
        let job = self.jobs.get(job_id)?;
        let &position = job.index.get(task)?;
        Some(job.handler(position as usize))
    }

    /// Counts of what the scheduler holds, for metrics: the running jobs' tasks by status
    /// (a pass over them), the jobs by status, the queues and the registry.
    #[must_use]
    pub fn stats(&self) -> SchedulerStats {
        let mut stats = SchedulerStats {
            ready_tasks: self.ready.len(),
            waiting_tasks: self.waiting.len(),
            running_tasks: self.deadlines.len(),
            nodes: self.registry.len(),
            holder_entries: self.holders.len(),
            ..SchedulerStats::default()
        };
        for (_, id) in &self.running {
            let Some(job) = self.jobs.get(id) else {
                continue;
            };
            stats.jobs_running += 1;
            for task in &job.tasks {
                stats.tasks[task.phase.status() as usize] += 1;
            }
        }
        for (_, id) in &self.finished {
            match self.jobs.get(id).map(|job| job.status()) {
                Some(JobStatus::Failed) => stats.jobs_failed += 1,
                Some(_) => stats.jobs_done += 1,
                None => {}
            }
        }
        stats
    }

    /// The registered nodes, in id order.
    pub fn nodes(&self) -> Vec<Node> {
        self.registry.nodes().into_iter().cloned().collect()
    }

    /// A registered node.
    pub fn node(&self, node_id: &str) -> Option<&Node> {
        self.registry.get(node_id)
    }

    /// Tasks running on a node (assigned and not finished), over all its endpoints.
    pub fn node_load(&self, node_id: &str) -> Option<u32> {
        self.registry.load(node_id)
    }

    /// Replaces what the holder index knows of registered node `node_id` by its report:
    /// the domains it holds items of, with their counts, and whether it is a gateway (a
    /// holder of every domain). A report equal to the last one writes nothing.
    ///
    /// # Errors
    /// [`SchedulerError::UnknownNode`]; [`SchedulerError::Holdings`] for a report too large
    /// or malformed (nothing of it is applied).
    pub fn report_holdings(
        &mut self,
        node_id: &str,
        holdings: &Holdings,
        now: u64,
    ) -> Result<(), SchedulerError> {
        self.operation(|s| {
            if !s.registry.contains(node_id) {
                return Err(SchedulerError::UnknownNode {
                    node: node_id.to_owned(),
                });
            }
            s.holders.report(node_id, holdings, now)?;
            Ok(())
        })
    }

    /// The nodes that hold data of `domain` (see the holder index in the crate docs): the
    /// registered ones first, then the most items first.
    pub fn holders(&self, domain: &str) -> Vec<Holder> {
        self.holders
            .holders(domain, |node| self.registry.contains(node))
    }

    /// Entries in the holder index (a node holding data of a domain, or a gateway).
    pub fn holder_entries(&self) -> usize {
        self.holders.len()
    }

    /// Which domains' holders changed (came, went, registered, dropped) since the last call:
    /// what followers of the holders are told. Changes are committed before they show here.
    pub fn take_holder_changes(&mut self) -> Vec<HoldersChange> {
        self.holders.take_changes()
    }

    /// Up to `count` distinct registered nodes that offer `endpoint` (a capacity other than
    /// 0), none of them in `exclude`, the least loaded first and ties to the smaller id:
    /// where the copies of an item go. Fewer when fewer nodes qualify.
    pub fn place(&self, endpoint: &str, count: usize, exclude: &[&str]) -> Vec<String> {
        let mut candidates: Vec<(u32, &str)> = self
            .registry
            .nodes()
            .into_iter()
            .filter(|node| !exclude.contains(&node.id.as_str()))
            .filter(|node| {
                node.capabilities
                    .iter()
                    .any(|c| c.endpoint == endpoint && c.capacity != 0)
            })
            .map(|node| (self.registry.load(&node.id).unwrap_or(0), node.id.as_str()))
            .collect();
        candidates.sort_unstable();
        candidates
            .into_iter()
            .take(count)
            .map(|(_, id)| id.to_owned())
            .collect()
    }

    /// The earliest deadline of a running task: the next time [`Scheduler::tick`] has a timeout
    /// to enforce.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// Runs one operation: refuses if poisoned, then stores and publishes whatever it changed
    /// (also when it fails after a change, so memory and store never drift apart).
    fn operation<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, SchedulerError>,
    ) -> Result<T, SchedulerError> {
        if self.poisoned {
            return Err(SchedulerError::Poisoned);
        }
        let result = f(self);
        self.flush()?;
        result
    }

    fn flush(&mut self) -> Result<(), SchedulerError> {
        let mut batch = Batch::default();
        for id in self.new_jobs.drain(..) {
            if let Some(job) = self.jobs.get(&id) {
                batch.jobs.push(JobRecord {
                    job_id: id.to_string(),
                    request: job.request.clone(),
                    submitter: job.submitter.clone(),
                    created_at: job.created_at,
                });
            }
        }
        for task in self.dirty_tasks.drain(..) {
            if let Some(job) = self.jobs.get_mut(&task.job) {
                job.tasks[task.position as usize].dirty = false;
                batch.tasks.push(job.record(task.position as usize));
            }
        }
        for id in self.dirty_nodes.drain(..) {
            if let Some(node) = self.registry.get(&id) {
                batch.nodes.push(NodeRecord { node: node.clone() });
            }
        }
        batch.removed_nodes.append(&mut self.removed_nodes);
        batch.removed_jobs.append(&mut self.removed_jobs);
        (batch.holders, batch.removed_holders) = self.holders.take_dirty();
        if let Err(e) = self.store.commit(batch) {
            self.poisoned = true;
            self.outbox.clear();
            self.holders.clear_changes();
            return Err(e.into());
        }
        for event in self.outbox.drain(..) {
            // No subscriber is not an error: events are announcements, the state is stored.
            let _ = self.events.send(event);
        }
        // A large submit leaves large buffers behind; keep what a usual operation needs.
        self.outbox.shrink_to(RETAINED_BUFFER);
        self.dirty_tasks.shrink_to(RETAINED_BUFFER);
        Ok(())
    }
}

fn no_node_reason(request: &domain_proto::task::TaskRequest, spec: &TaskSpec) -> String {
    let mut reason = match &request.receiver {
        Some(receiver) => format!(
            "receiver {receiver} is not registered with free capacity for {}",
            request.capability_filters.endpoint
        ),
        None => format!(
            "no node has free capacity for {}",
            request.capability_filters.endpoint
        ),
    };
    if spec.min_cpu > 0 {
        reason.push_str(&format!(" with at least {} cpu", spec.min_cpu));
    }
    if spec.min_gpu > 0 {
        reason.push_str(&format!(" with at least {} gpu", spec.min_gpu));
    }
    reason
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
