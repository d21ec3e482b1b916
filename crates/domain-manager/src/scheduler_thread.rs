//! The scheduler's thread: the one owner of the [`Scheduler`], fed by a bounded queue of
//! [`Request`]s.
//!
//! Every scheduler operation commits to redb (an fsync) before it returns, so it runs on a
//! thread of its own rather than on the async workers. After each operation the thread drains
//! the scheduler's events in order and hands them to the dispatcher (submitters' streams, nodes)
//! through a bounded queue, and publishes a [`JobView`] of each job that changed to the monitors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domain_auth::{MAX_TOKEN_LIFETIME, lifetime_for_timeout};
use domain_proto::discovery::{Holder, Holdings, Node};
use domain_proto::task::{Job, JobRequest, ReplicateDataInputV1, Status, Task};
use domain_scheduler::{
    DomainKeyIssuer, Event, HoldersChange, JobStatus, Scheduler, SchedulerError, TokenGrant,
    TokenIssuer, is_copy, job_id, parse_timeout,
};
use tokio::sync::broadcast::error::TryRecvError;

use crate::repair::Tombstones;
use crate::replication::{self, ReplicationRefusal};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Gossiped reports applied in one scheduler transaction, at most.
const MAX_REPORT_BATCH: usize = 1024;

/// Finished jobs a monitor is sent when it starts (the most recently finished; every running
/// job is sent too). The scheduler may keep many thousands (`max-finished-jobs`); a client
/// watching needs the recent ones, and what finished after it started comes as updates.
const MONITOR_FINISHED_TAIL: usize = 256;

/// What the async side asks of the scheduler thread.
pub(crate) enum Request {
    /// A job from `/jobs/v1`; its tokens go to `tokens`. `copies` is how many copies of
    /// each item its domain keeps (what a replicate job is expanded to).
    Submit {
        request: JobRequest,
        submitter: String,
        copies: u32,
        tokens: mpsc::Sender<Task>,
        reply: oneshot::Sender<Result<Submission, SubmitError>>,
    },
    /// A node joined (or joined again: the heartbeat), with what it holds if it says;
    /// `started`: its first join since its process started.
    Join {
        node: Node,
        holdings: Option<Holdings>,
        started: bool,
        reply: oneshot::Sender<Result<(), SchedulerError>>,
    },
    /// The holders of a domain now, and (to follow them) the changes from then on.
    Holders {
        domain: String,
        follow: bool,
        reply: oneshot::Sender<HoldersNow>,
    },
    /// A task update from gossip, signed by `reporter`.
    Report { task: Task, reporter: String },
    /// Time passed: enforce timeouts and liveness, retry assignments.
    Tick,
    /// A monitor starts: every running job and the [`MONITOR_FINISHED_TAIL`] last finished,
    /// and the changes from then on.
    Watch { reply: oneshot::Sender<Watch> },
    /// One job's state.
    Job {
        job_id: String,
        reply: oneshot::Sender<Option<Job>>,
    },
    /// The registered nodes.
    Nodes { reply: oneshot::Sender<Vec<Node>> },
    /// Nodes no longer admitted: dropped from the registry, their tasks given to others.
    Expel { nodes: Vec<String> },
    /// Whether a node is registered now.
    Registered {
        node: String,
        reply: oneshot::Sender<bool>,
    },
    /// The ids the kept delete jobs removed, per domain, oldest job first.
    Deletes {
        reply: oneshot::Sender<Vec<(String, Vec<String>)>>,
    },
    /// The stream on which `submitter` received job `job_id`'s tokens closed.
    Left { job_id: String, submitter: String },
    /// Answered once every request queued before it is done: the reports of a
    /// `/task-status/v1` stream are then applied and stored, and the stream may say so.
    Applied { reply: oneshot::Sender<()> },
}

/// How long a submitter has to come back for its job (send its request again) after its
/// stream for the job's tokens closed, or after the manager started leading, before the
/// tasks nobody started fail ([`Scheduler::submitter_left`]): longer than a client's
/// patience with a restarting manager.
const SUBMITTER_GRACE: Duration = Duration::from_secs(30);

/// Running jobs whose submitter is away: job id → (submitter, when its tasks that nobody
/// started fail, in scheduler milliseconds). An entry lasts until the submitter comes back
/// or the job ends, so that a retry after the grace fails too.
#[derive(Debug, Default)]
pub(crate) struct AwaySubmitters {
    jobs: BTreeMap<String, (String, u64)>,
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    /// The scheduler refused it, or failed.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// A replicate job that cannot be placed.
    #[error(transparent)]
    Replication(#[from] ReplicationRefusal),
}

/// An accepted submission.
#[derive(Debug)]
pub(crate) struct Submission {
    /// The job id.
    pub job_id: String,
    /// The submitter sent again the request of a job it had submitted before (after losing its
    /// stream, or the manager restarting): no new job, the stream follows the existing one.
    pub resumed: bool,
}

/// What the dispatcher does, in the order the scheduler thread decides.
pub(crate) enum Outbound {
    /// Send the job's next tokens to this submitter stream.
    Attach {
        job_id: String,
        tokens: mpsc::Sender<Task>,
    },
    /// A scheduler event to route (boxed: events are large, the others small).
    Event(Box<Event>),
    /// Remove `ids` of `domain` from `node`: a copy of items a client deleted landed there.
    Purge {
        domain: String,
        node: String,
        ids: Vec<String>,
    },
}

/// A job and the tasks of it that a monitor is told about: all of them when it starts following
/// or when the job is new, the ones that changed otherwise. Tasks carry no token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobView {
    /// The job's domain (who may watch it).
    pub domain: Arc<str>,
    /// The job id and name, and the tasks reported.
    pub job: Job,
}

/// A monitor's start: the running jobs and the last finished ones as they are (oldest submitted
/// first), and the changes after that, consistent with them.
pub(crate) struct Watch {
    pub jobs: Vec<Arc<JobView>>,
    pub updates: broadcast::Receiver<Arc<JobView>>,
}

/// The holders of a domain, and the holder changes after them when asked to follow.
pub(crate) struct HoldersNow {
    pub holders: Vec<Holder>,
    pub changes: Option<broadcast::Receiver<HoldersChange>>,
}

/// Milliseconds since the Unix epoch, the scheduler's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The dispatcher is gone: the manager is stopping.
struct Stopping;

/// The scheduler and the channels around it, owned by the scheduler thread.
pub(crate) struct Core {
    pub scheduler: Scheduler,
    pub events: broadcast::Receiver<Event>,
    pub issuer: Arc<DomainKeyIssuer>,
    pub outbound: mpsc::Sender<Outbound>,
    pub views: broadcast::Sender<Arc<JobView>>,
    /// Which domains' holders changed, for `/holders/v1` followers.
    pub holder_changes: broadcast::Sender<HoldersChange>,
    pub metrics: crate::metrics::ManagerMetrics,
    /// The ids clients deleted (a copy of one of them that lands is removed).
    pub tombstones: Arc<Tombstones>,
    /// Running jobs whose submitter's stream closed.
    pub away: AwaySubmitters,
}

impl Core {
    /// Serves requests until every sender is gone, the dispatcher stops, or the store fails.
    pub(crate) fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
    ) -> Result<(), SchedulerError> {
        let mut deferred = None;
        // The jobs it starts with lost their submitters' streams with the last leader.
        let grace_ends = now_ms().saturating_add(millis(SUBMITTER_GRACE));
        for job_id in self.scheduler.job_ids() {
            if self.scheduler.job_status(&job_id) != Some(JobStatus::Running) {
                continue;
            }
            if let Some(submitter) = self.scheduler.job_submitter(&job_id) {
                let away = (submitter.to_owned(), grace_ends);
                self.away.jobs.insert(job_id, away);
            }
        }
        loop {
            let request = match deferred.take() {
                Some(request) => request,
                None => match requests.blocking_recv() {
                    Some(request) => request,
                    None => return Ok(()),
                },
            };
            let outcome = match request {
                Request::Report { task, reporter } => {
                    let mut batch = vec![(task, reporter)];
                    while batch.len() < MAX_REPORT_BATCH {
                        match requests.try_recv() {
                            Ok(Request::Report { task, reporter }) => batch.push((task, reporter)),
                            Ok(other) => {
                                deferred = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.report(&batch)
                }
                Request::Submit {
                    request,
                    submitter,
                    copies,
                    tokens,
                    reply,
                } => {
                    let result = self.submit(request, &submitter, copies, tokens);
                    let fatal = match &result {
                        Err(SubmitError::Scheduler(e)) if is_fatal(e) => {
                            tracing::error!("{}", domain_proto::ErrorChain(e));
                            Err(SchedulerError::Poisoned)
                        }
                        _ => Ok(()),
                    };
                    let _ = reply.send(result);
                    fatal
                }
                Request::Join {
                    node,
                    holdings,
                    started,
                    reply,
                } => {
                    let result = self.join(node, holdings, started);
                    let fatal = fatal(&result);
                    let _ = reply.send(result);
                    fatal
                }
                Request::Left { job_id, submitter } => {
                    if self.scheduler.job_status(&job_id) == Some(JobStatus::Running) {
                        let due = now_ms().saturating_add(millis(SUBMITTER_GRACE));
                        self.away.jobs.insert(job_id, (submitter, due));
                    }
                    Ok(())
                }
                Request::Applied { reply } => {
                    let _ = reply.send(());
                    Ok(())
                }
                Request::Tick => {
                    let start = std::time::Instant::now();
                    let left = self.fail_left_jobs();
                    let ticked = self.scheduler.tick(now_ms());
                    self.metrics.ticked(start, self.scheduler.stats());
                    fatal(&left).and(fatal(&ticked))
                }
                Request::Watch { reply } => {
                    let jobs = self
                        .scheduler
                        .recent_job_ids(MONITOR_FINISHED_TAIL)
                        .iter()
                        .filter_map(|id| self.full_view(id))
                        .collect();
                    let _ = reply.send(Watch {
                        jobs,
                        updates: self.views.subscribe(),
                    });
                    Ok(())
                }
                Request::Job { job_id, reply } => {
                    let _ = reply.send(self.scheduler.job(&job_id));
                    Ok(())
                }
                Request::Expel { nodes } => {
                    let result = self.expel(&nodes);
                    fatal(&result)
                }
                Request::Nodes { reply } => {
                    let _ = reply.send(self.scheduler.nodes());
                    Ok(())
                }
                Request::Registered { node, reply } => {
                    let _ = reply.send(self.scheduler.node(&node).is_some());
                    Ok(())
                }
                Request::Deletes { reply } => {
                    let deletes = self
                        .scheduler
                        .job_ids()
                        .iter()
                        .filter_map(|id| self.scheduler.job_request(id))
                        .filter_map(|request| {
                            Some((
                                request.domain_id.clone(),
                                crate::repair::deleted_ids(request)?,
                            ))
                        })
                        .collect();
                    let _ = reply.send(deletes);
                    Ok(())
                }
                Request::Holders {
                    domain,
                    follow,
                    reply,
                } => {
                    let _ = reply.send(HoldersNow {
                        holders: self.scheduler.holders(&domain),
                        changes: follow.then(|| self.holder_changes.subscribe()),
                    });
                    Ok(())
                }
            };
            // Announce what the operation changed, also when it failed after a change.
            let dispatched = self.dispatch();
            outcome?;
            if dispatched.is_err() {
                return Ok(());
            }
        }
    }

    fn submit(
        &mut self,
        request: JobRequest,
        submitter: &str,
        copies: u32,
        tokens: mpsc::Sender<Task>,
    ) -> Result<Submission, SubmitError> {
        let request = match replication::is_replication(&request) {
            true => replication::expand(&self.scheduler, request, submitter, copies)?,
            false => request,
        };
        let id = job_id(&request);
        if self.scheduler.job_submitter(&id) == Some(submitter) {
            return Ok(self.resume(id, tokens));
        }
        let job_id = self.scheduler.submit(request, submitter, now_ms())?;
        // Queued before the job's events, which are still in `self.events`.
        let _ = self.send(Outbound::Attach {
            job_id: job_id.clone(),
            tokens,
        });
        Ok(Submission {
            job_id,
            resumed: false,
        })
    }

    /// Fails the tasks nobody started of the jobs whose submitter stayed away past its
    /// grace, and forgets the jobs that ended.
    fn fail_left_jobs(&mut self) -> Result<(), SchedulerError> {
        let now = now_ms();
        let due: Vec<(String, String)> = self
            .away
            .jobs
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(job_id, (submitter, _))| (job_id.clone(), submitter.clone()))
            .collect();
        for (job_id, submitter) in due {
            if self.scheduler.job_status(&job_id) != Some(JobStatus::Running) {
                self.away.jobs.remove(&job_id);
                continue;
            }
            self.scheduler.submitter_left(&job_id, &submitter, now)?;
        }
        Ok(())
    }

    /// Hands a submitter that sent a job's request again fresh tokens for the job's tasks that
    /// are assigned now, and the job's next ones. Nothing is scheduled anew.
    fn resume(&mut self, job_id: String, tokens: mpsc::Sender<Task>) -> Submission {
        self.away.jobs.remove(&job_id);
        if self.scheduler.job_status(&job_id) == Some(JobStatus::Running) {
            for task in self.current_tokens(&job_id) {
                // The queue holds every token of the job, so it has room for these.
                let _ = tokens.try_send(task);
            }
            let _ = self.send(Outbound::Attach {
                job_id: job_id.clone(),
                tokens,
            });
        }
        // A finished job gets no tokens: dropping `tokens` ends the stream after its answer.
        tracing::info!(job = %job_id, "submitter resumed its job");
        Submission {
            job_id,
            resumed: true,
        }
    }

    /// A new token for each task of the job that is assigned and not finished, bound as the
    /// scheduler's own: same domain, job, task, sender, receiver and endpoint.
    fn current_tokens(&self, job_id: &str) -> Vec<Task> {
        let Some(request) = self.scheduler.job_request(job_id) else {
            return Vec::new();
        };
        let now = now_ms();
        let mut out = Vec::new();
        for spec in &request.tasks {
            let Some(handler) = self.scheduler.task(job_id, &spec.name) else {
                continue;
            };
            let task = handler.task;
            let running = matches!(
                Status::try_from(task.status),
                Ok(Status::Pending | Status::Started | Status::Processing)
            );
            let Some(receiver) = task.receiver.as_deref().filter(|_| running) else {
                continue;
            };
            let lifetime = token_lifetime(&spec.timeout);
            let grant = TokenGrant {
                domain_id: &request.domain_id,
                job_id,
                task_name: &task.name,
                sender: &task.sender,
                receiver,
                endpoint: &task.endpoint,
                issued_at: now,
                lifetime,
                copy: is_copy(spec),
            };
            match self.issuer.issue(&grant) {
                Ok(token) => out.push(Task {
                    access_token: Some(token),
                    ..task
                }),
                Err(e) => {
                    tracing::warn!(job = %job_id, task = %task.name, peer = %task.sender, receiver = task.receiver.as_deref().unwrap_or_default(), "{}", domain_proto::ErrorChain(&e))
                }
            }
        }
        out
    }

    fn join(
        &mut self,
        node: Node,
        holdings: Option<Holdings>,
        started: bool,
    ) -> Result<(), SchedulerError> {
        let now = now_ms();
        let id = node.id.clone();
        if started {
            tracing::info!(node = %node.id, "node restarted: its running tasks are tried again, the copies it was sending fail");
            self.scheduler.restarted(&id, now)?;
        }
        // A join with nothing new is the node's heartbeat: no write.
        if self.scheduler.node(&node.id) == Some(&node) {
            self.scheduler.heartbeat(&node.id, now)?;
        } else {
            tracing::info!(node = %node.id, name = %node.name, "node joined");
            self.scheduler.join(node, now)?;
        }
        match holdings {
            // Writes only what changed since the node's last report.
            Some(holdings) => self.scheduler.report_holdings(&id, &holdings, now),
            None => Ok(()),
        }
    }

    /// Drops the registered ones of `nodes`; the others are not registered, which is what
    /// is wanted.
    fn expel(&mut self, nodes: &[String]) -> Result<(), SchedulerError> {
        let now = now_ms();
        for node in nodes {
            if self.scheduler.node(node).is_none() {
                continue;
            }
            tracing::warn!(%node, "node no longer admitted: dropped, its tasks go to others");
            self.scheduler.leave(node, now)?;
        }
        Ok(())
    }

    fn report(&mut self, batch: &[(Task, String)]) -> Result<(), SchedulerError> {
        let reports = batch
            .iter()
            .map(|(task, reporter)| (task, reporter.as_str()));
        let results = self.scheduler.report_many(reports, now_ms())?;
        for ((task, reporter), result) in batch.iter().zip(results) {
            match result {
                Ok(()) => {
                    tracing::debug!(
                        job = %task.job_id, task = %task.name, peer = %reporter,
                        status = task.status, "task update applied"
                    );
                    match task.status() {
                        Status::Done => self.undo_deleted_copies(task),
                        // Retried or not, the holder has not removed the items yet.
                        Status::Failed | Status::Retry => {
                            let _ = self.purge_missed_delete(task);
                        }
                        _ => {}
                    }
                }
                Err(e @ SchedulerError::NotAllowed { .. }) => {
                    tracing::warn!(job = %task.job_id, task = %task.name, peer = %reporter, "ignored a task update: {}", domain_proto::ErrorChain(&e));
                }
                Err(e) => {
                    tracing::debug!(job = %task.job_id, task = %task.name, peer = %reporter, "ignored a task update: {}", domain_proto::ErrorChain(&e))
                }
            }
        }
        Ok(())
    }

    /// A copy that landed after a client deleted some of its items (the delete reached that
    /// node before the copy did): those items are removed from it at once.
    fn undo_deleted_copies(&self, done: &Task) {
        let Some(request) = self.scheduler.job_request(&done.job_id) else {
            return;
        };
        let Some(spec) = request.tasks.iter().find(|spec| spec.name == done.name) else {
            return;
        };
        if !is_copy(spec) {
            return;
        }
        let Some(input) = spec
            .data
            .as_ref()
            .and_then(|data| data.unpack::<ReplicateDataInputV1>(domain_proto::REPLICATE_INPUT))
            .and_then(Result::ok)
        else {
            return;
        };
        let domain = &request.domain_id;
        let ids: Vec<String> = input
            .ids
            .into_iter()
            .filter(|id| self.tombstones.contains(domain, id))
            .collect();
        let Some(node) = done.receiver.clone().filter(|_| !ids.is_empty()) else {
            return;
        };
        let _ = self.send(Outbound::Purge {
            domain: domain.clone(),
            node,
            ids,
        });
    }

    /// A holder that a client's delete did not reach (an attempt there failed, or the
    /// task ran out of time) still lists the items: they are removed from it now, not at
    /// the next audit.
    fn purge_missed_delete(&self, failed: &Task) -> Result<(), Stopping> {
        let Some(request) = self.scheduler.job_request(&failed.job_id) else {
            return Ok(());
        };
        let Some(ids) = crate::repair::deleted_ids(request) else {
            return Ok(());
        };
        // The node the task is pinned to, from the job itself: a report names a receiver
        // too, but the reporter chose what it says.
        let node = request
            .tasks
            .iter()
            .find(|spec| spec.name == failed.name)
            .and_then(|spec| spec.receiver.clone());
        let Some(node) = node.filter(|_| !ids.is_empty()) else {
            return Ok(());
        };
        self.send(Outbound::Purge {
            domain: request.domain_id.clone(),
            node,
            ids,
        })
    }

    fn send(&self, item: Outbound) -> Result<(), Stopping> {
        self.outbound.blocking_send(item).map_err(|_| Stopping)
    }

    /// Hands the events of the last operation to the dispatcher and the monitors.
    fn dispatch(&mut self) -> Result<(), Stopping> {
        let mut new_jobs = BTreeSet::new();
        let mut changed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        loop {
            match self.events.try_recv() {
                Ok(event) => {
                    match &event {
                        Event::JobSubmitted { job_id, .. } => {
                            new_jobs.insert(job_id.clone());
                        }
                        Event::TaskAssigned { task, .. } | Event::TaskChanged { task, .. } => {
                            if task.status() == Status::Failed {
                                self.purge_missed_delete(task)?;
                            }
                            changed
                                .entry(task.job_id.clone())
                                .or_default()
                                .insert(task.name.clone());
                        }
                        Event::JobFinished { .. } => {}
                    }
                    self.send(Outbound::Event(Box::new(event)))?;
                }
                Err(TryRecvError::Lagged(missed)) => {
                    // Only one operation's events are ever queued, so this takes an operation
                    // on more tasks than the queue holds. Monitors get every job they started
                    // with whole; tokens of lost assignments are gone, and those tasks retry at
                    // their timeout.
                    tracing::error!(missed, "scheduler events lost; resending every job");
                    new_jobs.extend(self.scheduler.recent_job_ids(MONITOR_FINISHED_TAIL));
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        for change in self.scheduler.take_holder_changes() {
            // No follower is not an error.
            let _ = self.holder_changes.send(change);
        }
        if self.views.receiver_count() == 0 {
            return Ok(());
        }
        for job_id in &new_jobs {
            if let Some(view) = self.full_view(job_id) {
                let _ = self.views.send(view);
            }
        }
        for (job_id, names) in changed {
            if new_jobs.contains(&job_id) {
                continue;
            }
            if let Some(view) = self.partial_view(&job_id, &names) {
                let _ = self.views.send(view);
            }
        }
        Ok(())
    }

    fn full_view(&self, job_id: &str) -> Option<Arc<JobView>> {
        let domain = self.scheduler.job_request(job_id)?.domain_id.as_str();
        let job = self.scheduler.job(job_id)?;
        Some(Arc::new(JobView {
            domain: Arc::from(domain),
            job,
        }))
    }

    fn partial_view(&self, job_id: &str, names: &BTreeSet<String>) -> Option<Arc<JobView>> {
        let request = self.scheduler.job_request(job_id)?;
        let tasks = request
            .tasks
            .iter()
            .filter(|t| names.contains(&t.name))
            .filter_map(|t| self.scheduler.task(job_id, &t.name))
            .map(|handler| handler.task)
            .collect();
        Some(Arc::new(JobView {
            domain: Arc::from(request.domain_id.as_str()),
            job: Job {
                id: job_id.to_owned(),
                name: request.name.clone(),
                tasks,
            },
        }))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Store failures poison the scheduler: the thread stops and the manager with it.
fn is_fatal(e: &SchedulerError) -> bool {
    matches!(e, SchedulerError::Store(_) | SchedulerError::Poisoned)
}

fn fatal<T>(result: &Result<T, SchedulerError>) -> Result<(), SchedulerError> {
    match result {
        Err(e) if is_fatal(e) => {
            tracing::error!("{}", domain_proto::ErrorChain(e));
            Err(SchedulerError::Poisoned)
        }
        _ => Ok(()),
    }
}

/// The token lifetime the scheduler gives a task with this timeout (a timeout that does
/// not parse, which the scheduler refused already, gets the longest).
fn token_lifetime(timeout: &str) -> Duration {
    parse_timeout(timeout).map_or(MAX_TOKEN_LIFETIME, lifetime_for_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumed_tokens_live_as_long_as_the_task_timeout_but_at_most_an_hour() {
        assert_eq!(token_lifetime("30s"), Duration::from_secs(30));
        assert_eq!(token_lifetime("2h"), MAX_TOKEN_LIFETIME);
    }
}
