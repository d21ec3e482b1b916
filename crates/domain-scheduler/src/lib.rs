//! The domain manager's job scheduler: jobs as DAGs of tasks, the node registry, assignment,
//! task tokens, retries, timeouts and persistence (docs/design.md §7). Pure logic plus storage: no
//! libp2p, no threads, no clock. Every call takes `now` (milliseconds since the Unix epoch), and
//! the manager drives [`Scheduler::tick`] from a timer.
//!
//! # Main types
//! - [`Scheduler`]: [`submit`](Scheduler::submit) a `JobRequest`, [`join`](Scheduler::join) /
//!   [`heartbeat`](Scheduler::heartbeat) / [`leave`](Scheduler::leave) nodes,
//!   [`report`](Scheduler::report) task status, [`tick`](Scheduler::tick), and read
//!   [`job`](Scheduler::job) snapshots. Changes are announced on a bounded
//!   [`subscribe`](Scheduler::subscribe) stream of [`Event`]s.
//! - [`SchedulerStore`] with [`RedbStore`]: every operation's changes are committed as one
//!   transaction *before* its events are published, and [`Scheduler::open`] resumes every job.
//! - [`TokenIssuer`] with [`DomainKeyIssuer`]: one EdDSA token per assignment, bound to the
//!   task's domain, job, name, sender, receiver and endpoint, valid for the task's timeout (at most
//!   one hour).
//!
//! # Rules
//! - **Validation.** A job is refused ([`JobRejected`], its message names the task) for: no
//!   tasks, more than `max_tasks_per_job`, an empty domain, an empty or duplicate task name, an
//!   empty endpoint or sender, a malformed timeout ([`parse_timeout`]), an unknown need, a cycle
//!   in `needs`, an unknown recruitment policy, a negative `min_cpu`/`min_gpu`, or a job id
//!   already submitted. The job id is hex(BLAKE3(encoded request)) ([`job_id`]).
//! - **Assignment.** A task is assigned once every task it needs is DONE, to a node that offers
//!   its endpoint with free capacity (capacity −1: unlimited) and meets its minimums, the least
//!   loaded first (load: tasks running on the node over all its endpoints); ties go to the
//!   smallest node id, so the outcome is deterministic. A task that names a `receiver` goes to that
//!   node only. A retried task avoids the node of its failed attempt when another fits.
//! - **`min_cpu` / `min_gpu`.** Nodes advertise CPU and GPU counts in the optional `cpu` and
//!   `gpu` fields of `discovery.Node` (an additive extension of posemesh's message). A task with
//!   `min_cpu = n > 0` only goes to nodes advertising `cpu >= n`; a node that advertises nothing
//!   counts as 0, so it never meets a positive minimum. Absent or 0 asks for nothing; negative is
//!   refused. The same holds for GPUs.
//! - **States.** A task not yet assigned is PENDING without receiver. Assigned, it is PENDING
//!   with a receiver and a token ([`Event::TaskAssigned`], whose token goes to the submitter
//!   only), then STARTED / PROCESSING, then DONE. While no node fits it is WAITING_FOR_RESOURCE;
//!   under policy FAIL it is FAILED at once instead. A node lost (left, or unseen for
//!   `node_timeout`), a passed deadline (assignment time + the task's timeout) or a reported
//!   FAILED/RETRY puts it in RETRY and assigns it again, at most `max_retries` (3) times; then it
//!   is FAILED. A FAILED task fails every task that needs it. A job ends when every task is DONE
//!   or FAILED ([`Event::JobFinished`]).
//! - **Reports.** Only the manager, the task's sender and its current receiver may change a
//!   task's status ([`SchedulerError::NotAllowed`]); nothing changes a DONE task (it keeps the
//!   receiver it ran on), so a task that reported DONE never runs again, not even after a
//!   restart. A report from a registered node also counts as its heartbeat.
//!   [`Scheduler::report_many`] applies a queue of reports in one transaction.
//! - **Persistence.** Each call is one store transaction, committed before its events are
//!   published; a failed commit poisons the scheduler ([`SchedulerError::Poisoned`]: reopen it).
//!   Deadlines are absolute times, so one that passed while the manager was down is enforced at
//!   the first tick; node liveness is not stored, and restored nodes get one `node_timeout` to
//!   heartbeat again.
//! - **Retention.** A finished job is kept, with its tasks, for `finished_ttl` (24 h) after it
//!   finished, and `max_finished_jobs` (10 000) at most; [`Scheduler::tick`] (and
//!   [`Scheduler::open`], for what came due while the manager was down) removes the others from
//!   memory and from the store, in the operation's one transaction, oldest finished first. A job
//!   finished less than [`FINISHED_GRACE`] (60 s) ago is kept whatever the limits: a node's
//!   `replicate` job and a client resuming a job (by submitting its request again) refer to a job
//!   that just finished. A job's finish time is the last change of its tasks, so a restart
//!   finds it again. Running jobs are never removed. [`Scheduler::recent_job_ids`] gives the
//!   running jobs and the latest finished ones, what a monitor starts with.
//! - **Not acted on yet.** `max_budget` and the termination policy are kept with the job but
//!   change nothing; recruitment policies other than FAIL all wait for a node.
//!
//! # Example
//! ```
//! use domain_proto::discovery::{Capability, Node};
//! use domain_proto::task::{CapabilityFilters, JobRequest, ResourceRecruitment, Status, Task, TaskRequest};
//! use domain_scheduler::{DomainKeyIssuer, Event, JobStatus, RedbStore, Scheduler, SchedulerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = tempfile::tempdir()?;
//! let issuer = DomainKeyIssuer::new(domain_auth::DomainKeyStore::open(keys.path().join("keys"))?);
//! let config = SchedulerConfig::new("manager");
//! let mut scheduler =
//!     Scheduler::open(config, Box::new(RedbStore::in_memory()?), Box::new(issuer), 0)?;
//! let mut events = scheduler.subscribe();
//!
//! let node = Node {
//!     id: "node-1".into(),
//!     name: "storage".into(),
//!     capabilities: vec![Capability { endpoint: "/store/v1".into(), capacity: -1 }],
//!     ..Default::default()
//! };
//! scheduler.join(node, 0)?;
//!
//! let store = TaskRequest {
//!     name: "store".into(),
//!     capability_filters: CapabilityFilters { endpoint: "/store/v1".into(), ..Default::default() },
//!     timeout: "30s".into(),
//!     resource_recruitment: ResourceRecruitment::default(),
//!     sender: "client".into(),
//!     ..Default::default()
//! };
//! let request = JobRequest {
//!     name: "upload".into(),
//!     tasks: vec![store],
//!     nonce: "1".into(),
//!     domain_id: "my-domain".into(),
//! };
//! let job_id = scheduler.submit(request, "client", 10)?;
//!
//! // The job was accepted, and its only task assigned to node-1 with a token.
//! assert!(matches!(events.try_recv()?, Event::JobSubmitted { .. }));
//! let assigned = events.try_recv()?;
//! let task = assigned.task_for_submitter().ok_or("expected an assignment")?;
//! assert_eq!(task.receiver.as_deref(), Some("node-1"));
//! assert!(task.access_token.is_some());
//!
//! // The receiver reports DONE: the job is finished.
//! let done = Task { status: Status::Done as i32, access_token: None, ..task };
//! scheduler.report(&done, "node-1", 20)?;
//! assert_eq!(scheduler.job_status(&job_id), Some(JobStatus::Done));
//! # Ok(())
//! # }
//! ```

mod events;
mod holders;
mod registry;
mod scheduler;
mod store;
mod timeout;
mod token;
mod validate;

pub use events::{Event, JobStatus};
pub use holders::{HoldersChange, HoldingsError, MAX_REPORTED_DOMAINS};
pub use registry::{JoinError, MAX_CAPABILITIES};
pub use scheduler::{FINISHED_GRACE, Scheduler, SchedulerConfig, SchedulerError, SchedulerStats};
pub use store::{
    Batch, HolderRecord, JobRecord, NodeRecord, REDB_CACHE_SIZE, RedbStore, SchedulerStore,
    Snapshot, StoreError, TaskRecord,
};
pub use timeout::{MAX_TIMEOUT, TimeoutError, parse_timeout};
pub use token::{DomainKeyIssuer, TokenError, TokenGrant, TokenIssuer, is_copy};
pub use validate::{JobRejected, job_id};

use domain_proto::task::{Code, SubmitJobResponse};

/// The `/jobs/v1` answer to a submission: Accepted with the job id, or BadRequest with the
/// reason.
pub fn submit_response(result: &Result<String, SchedulerError>) -> SubmitJobResponse {
    match result {
        Ok(job_id) => SubmitJobResponse {
            code: Code::Accepted as i32,
            job_id: job_id.clone(),
            err_msg: String::new(),
        },
        Err(e) => SubmitJobResponse {
            code: Code::BadRequest as i32,
            job_id: String::new(),
            err_msg: domain_proto::ErrorChain(e).to_string(),
        },
    }
}
