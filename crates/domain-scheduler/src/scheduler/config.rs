//! A scheduler's settings, and the ways its operations fail.

use std::time::Duration;

use domain_proto::task::Status;

use crate::holders::HoldingsError;
use crate::registry::JoinError;
use crate::store::StoreError;
use crate::validate::JobRejected;
// Named in the documentation only.
#[cfg(doc)]
use super::{FINISHED_GRACE, Scheduler};

/// Settings of a [`Scheduler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// The manager's own peer id: besides a task's sender and receiver, the only peer allowed to
    /// change a task's status.
    pub manager_id: String,
    /// A node not seen (joined or heartbeat) for this long is dropped at the next
    /// [`Scheduler::tick`], and its running tasks are retried elsewhere.
    pub node_timeout: Duration,
    /// Failed attempts retried before a task is FAILED (a node loss, a timeout and a reported
    /// failure each count as one).
    pub max_retries: u32,
    /// The most tasks one job may hold.
    pub max_tasks_per_job: usize,
    /// Events buffered for each subscriber; a subscriber that falls further behind gets
    /// `RecvError::Lagged` and should resynchronise from [`Scheduler::job`].
    pub event_capacity: usize,
    /// A finished job (every task DONE or FAILED) is removed, from memory and from the store, at
    /// the first [`Scheduler::tick`] (or [`Scheduler::open`]) this long after it finished; then
    /// [`Scheduler::job`] no longer knows it. Never sooner than [`FINISHED_GRACE`].
    pub finished_ttl: Duration,
    /// At most this many finished jobs are kept: beyond it, [`Scheduler::tick`] removes the
    /// oldest finished first, except those finished less than [`FINISHED_GRACE`] ago. Running
    /// jobs do not count and are never removed.
    pub max_finished_jobs: usize,
}

impl SchedulerConfig {
    /// The defaults: nodes time out after 30 s, 3 retries, 100 000 tasks per job, 4096 buffered
    /// events, finished jobs kept for 24 h and 10 000 at most.
    pub fn new(manager_id: impl Into<String>) -> Self {
        Self {
            manager_id: manager_id.into(),
            node_timeout: Duration::from_secs(30),
            max_retries: 3,
            max_tasks_per_job: 100_000,
            event_capacity: 4096,
            finished_ttl: Duration::from_secs(24 * 3600),
            max_finished_jobs: 10_000,
        }
    }
}

/// Why a scheduler call failed. Calls that fail change nothing, except [`SchedulerError::Store`],
/// after which the scheduler is poisoned.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The job request was refused (answer `BadRequest` with this message).
    #[error(transparent)]
    Rejected(#[from] JobRejected),
    /// A node's registration was refused.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// A node's report of what it holds was refused.
    #[error(transparent)]
    Holdings(#[from] HoldingsError),
    /// No node with this id is registered.
    #[error("node {node} is not registered")]
    UnknownNode {
        /// The node id.
        node: String,
    },
    /// No job with this id.
    #[error("job {job_id} is unknown")]
    UnknownJob {
        /// The job id.
        job_id: String,
    },
    /// The job has no task of this name.
    #[error("job {job_id} has no task {task:?}")]
    UnknownTask {
        /// The job id.
        job_id: String,
        /// The task name.
        task: String,
    },
    /// The reporter is neither the manager nor the task's sender or receiver.
    #[error("{reporter} may not change task {task:?} of job {job_id}")]
    NotAllowed {
        /// Peer id of the reporter.
        reporter: String,
        /// The job id.
        job_id: String,
        /// The task name.
        task: String,
    },
    /// A report carries a status value outside the enum.
    #[error("report for task {task:?} of job {job_id} has unknown status {value}")]
    InvalidStatus {
        /// The job id.
        job_id: String,
        /// The task name.
        task: String,
        /// The raw value.
        value: i32,
    },
    /// The reported status cannot follow the task's current one.
    #[error("task {task:?} of job {job_id} cannot go from {from:?} to {to:?}")]
    InvalidTransition {
        /// The job id.
        job_id: String,
        /// The task name.
        task: String,
        /// Its status now.
        from: Status,
        /// The status reported.
        to: Status,
    },
    /// Only finished jobs can be removed.
    #[error("job {job_id} is still running")]
    JobRunning {
        /// The job id.
        job_id: String,
    },
    /// The store failed; the scheduler is poisoned (its memory may be ahead of the store).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An earlier store failure poisoned the scheduler: reopen it from the store.
    #[error("the scheduler is poisoned by an earlier store failure; reopen it from its store")]
    Poisoned,
}
