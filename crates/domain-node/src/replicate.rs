//! The node's side of replication: after a `/store/v1` task stored items of a domain that
//! keeps more than one copy of each (the manager says which in its join answers), the
//! node submits a `replicate` job naming that task and the ids; the manager answers with
//! one `/store/v1` task per other copy, pinned to its own node, with this node as sender,
//! and this node streams the items to each, marked `replica` so that they keep their ids.
//! Each copy's root is checked as any upload's is. A copy that fails is reported FAILED,
//! and the manager hands out a new attempt on the same job stream.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use domain_capabilities::{CapabilityError, Limits, StoreSender, delete_items};
use domain_cluster::{ClusterError, ClusterHandle, ClusterStream, Managers, PeerId};
use domain_datastore::{Datastore, DatastoreError, LocalDatastore};
use domain_proto::DomainId;
use domain_proto::domain_data::{Metadata, UpsertMetadata};
use domain_proto::protocols::{DELETE_V1, STORE_V1};
use domain_proto::task::{
    Any, CapabilityFilters, JobRequest, ReplicateDataInputV1, Status, Task, TaskRequest,
};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// The `type_url` of a replicate job's task data (the manager's name for it).
use domain_proto::REPLICATE_INPUT;

/// The timeout of each copy task.
const COPY_TIMEOUT: &str = "10m";

/// Replications a node runs at once; more wait their turn.
const MAX_REPLICATIONS: usize = 4;

/// How long a copy's receiver may stay unreachable before the attempt fails.
const CONNECT_PATIENCE: Duration = Duration::from_secs(15);

/// How long a replication waits for the next assignment of its job before giving up (a
/// copy task waits while its node is busy, and is retried at its timeout).
const ASSIGNMENT_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// Submissions of a replicate job before its refusal stands, and the pauses between them.
const SUBMIT_ATTEMPTS: u32 = 8;
const FIRST_SUBMIT_PAUSE: Duration = Duration::from_millis(200);
const MAX_SUBMIT_PAUSE: Duration = Duration::from_secs(5);

/// How many copies of each item the domains keep, as the last join answer said (domains
/// not named keep one).
pub(crate) type Copies = watch::Receiver<BTreeMap<String, u32>>;

/// Why copying a task's items to other nodes failed.
#[derive(Debug, thiserror::Error)]
enum ReplicationError {
    #[error("submitting the replicate job")]
    Submit(#[source] Box<ClusterError>),
    #[error("the manager's assignment of {task:?} is unusable: {reason}")]
    Assignment { task: String, reason: &'static str },
    #[error("opening a task stream to {node}")]
    Open {
        node: PeerId,
        #[source]
        source: Box<ClusterError>,
    },
    #[error("the task stream with {node} failed")]
    Transfer {
        node: PeerId,
        #[source]
        source: Box<CapabilityError>,
    },
    #[error("reading item {id} to copy")]
    Read {
        id: String,
        #[source]
        source: Box<DatastoreError>,
    },
    #[error("the copy of {id} was stored under root {got:?}, not the item's {expected:?}")]
    Differs {
        id: String,
        expected: Option<String>,
        got: Option<String>,
    },
}

/// Copies items to the nodes the manager places them on.
#[derive(Debug)]
pub(crate) struct Replicator {
    pub cluster: ClusterHandle,
    pub managers: Managers,
    pub datastore: LocalDatastore,
    pub limits: Limits,
    pub copies: Copies,
    pub permits: Semaphore,
    pub stop: CancellationToken,
}

impl Replicator {
    pub(crate) fn new(
        cluster: ClusterHandle,
        managers: Managers,
        datastore: LocalDatastore,
        limits: Limits,
        copies: Copies,
        stop: CancellationToken,
    ) -> Self {
        Self {
            cluster,
            managers,
            datastore,
            limits,
            copies,
            permits: Semaphore::new(MAX_REPLICATIONS),
            stop,
        }
    }

    /// Task `task_name` of job `job_id` stored `ids` in `domain` here: when the domain keeps
    /// more copies, has them made, in the background.
    pub(crate) fn stored(
        self: &Arc<Self>,
        domain: &str,
        job_id: &str,
        task_name: &str,
        ids: Vec<String>,
        replaces: bool,
    ) {
        let copies = self.copies.borrow().get(domain).copied().unwrap_or(1);
        if copies <= 1 || ids.is_empty() {
            return;
        }
        let Ok(domain) = DomainId::new(domain) else {
            return;
        };
        let input = ReplicateDataInputV1 {
            job_id: job_id.to_owned(),
            task_name: task_name.to_owned(),
            ids,
            replaces: replaces.then_some(true),
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(_permit) = this.permits.acquire().await else {
                return;
            };
            let job = input.job_id.clone();
            let replicated = tokio::select! {
                () = this.stop.cancelled() => return,
                replicated = this.replicate(&domain, input) => replicated,
            };
            match replicated {
                Ok(()) => tracing::info!(%domain, job, copies, "items copied to the other nodes"),
                Err(error) => {
                    tracing::warn!(%domain, job, error = %domain_proto::ErrorChain(&error), "items not copied")
                }
            }
        });
    }

    /// Submits the replicate job and sends the items on each assignment, until the job
    /// is over.
    async fn replicate(
        &self,
        domain: &DomainId,
        input: ReplicateDataInputV1,
    ) -> Result<(), ReplicationError> {
        let request = JobRequest {
            name: "replicate".to_owned(),
            tasks: vec![TaskRequest {
                name: "replicate".to_owned(),
                capability_filters: CapabilityFilters {
                    endpoint: STORE_V1.to_owned(),
                    ..CapabilityFilters::default()
                },
                timeout: COPY_TIMEOUT.to_owned(),
                sender: self.cluster.local_peer_id().to_string(),
                data: Some(Any::pack(REPLICATE_INPUT, &input)),
                ..TaskRequest::default()
            }],
            nonce: uuid::Uuid::new_v4().to_string(),
            domain_id: domain.as_str().to_owned(),
        };
        let mut job = self.submit(request).await?;
        loop {
            let next = tokio::time::timeout(ASSIGNMENT_PATIENCE, job.tasks.next()).await;
            let task = match next {
                Ok(Ok(Some(task))) => task,
                // The stream ends with the job: every copy is DONE, or FAILED for good.
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return Ok(()),
            };
            let done = match task.endpoint.as_str() {
                DELETE_V1 => self.remove(domain, &task, &input.ids).await,
                _ => self.copy(domain, &task, &input.ids).await,
            };
            if let Err(error) = done {
                tracing::warn!(job = %job.job_id, task = %task.name, peer = task.receiver.as_deref().unwrap_or_default(), error = %domain_proto::ErrorChain(&error), "a copy failed; the manager will try again");
                self.report_failed(&job.job_id, task).await;
            }
        }
    }

    /// Submits `request`, again while the manager refuses it: the store task's DONE,
    /// which it checks, travels on a stream of its own and may arrive after the job.
    async fn submit(
        &self,
        request: JobRequest,
    ) -> Result<domain_cluster::SubmittedJob, ReplicationError> {
        let mut pause = FIRST_SUBMIT_PAUSE;
        let mut attempts = 1;
        loop {
            let submitted = self
                .managers
                .call(|manager| self.cluster.submit_job(manager, request.clone()))
                .await;
            match submitted {
                Err(ClusterError::JobRejected { message, .. }) if attempts < SUBMIT_ATTEMPTS => {
                    tracing::debug!(%message, attempts, "replicate job refused; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_SUBMIT_PAUSE);
                    attempts += 1;
                }
                submitted => {
                    return submitted.map_err(|e| ReplicationError::Submit(Box::new(e)));
                }
            }
        }
    }

    /// Opens a `protocol` stream to the receiver of `task`: the receiver, the task's
    /// token, and the stream.
    async fn open<'t>(
        &self,
        task: &'t Task,
        protocol: &'static str,
    ) -> Result<(PeerId, &'t str, ClusterStream), ReplicationError> {
        let (node, token) = assignment(task)?;
        // The receiver may not be reachable yet (its relay slot, its address): a failure
        // now would spend the copy's attempts in moments.
        let stream = self
            .cluster
            .open_stream_within(node, protocol, CONNECT_PATIENCE)
            .await
            .map_err(|source| ReplicationError::Open {
                node,
                source: Box::new(source),
            })?;
        Ok((node, token, stream))
    }

    /// Removes the older versions of `ids` from the receiver of the remove task `task`.
    async fn remove(
        &self,
        domain: &DomainId,
        task: &Task,
        ids: &[String],
    ) -> Result<(), ReplicationError> {
        let (node, token, stream) = self.open(task, DELETE_V1).await?;
        delete_items(stream, token, domain.as_str(), ids, self.limits)
            .await
            .map(drop)
            .map_err(|source| ReplicationError::Transfer {
                node,
                source: Box::new(source),
            })
    }

    /// Streams the items `ids` to the receiver of the copy task `task`.
    async fn copy(
        &self,
        domain: &DomainId,
        task: &Task,
        ids: &[String],
    ) -> Result<(), ReplicationError> {
        let (node, token, stream) = self.open(task, STORE_V1).await?;
        let transfer = |source| ReplicationError::Transfer {
            node,
            source: Box::new(source),
        };
        let mut sender = StoreSender::open(stream, token, domain.as_str(), self.limits)
            .await
            .map_err(transfer)?;
        // The hashes the copies must come back with, oldest first: copies are pipelined.
        let mut expected = VecDeque::new();
        for id in ids {
            let (metadata, content) = match self.datastore.get(domain, id).await {
                Ok(found) => found,
                // Removed since it was stored: nothing to copy.
                Err(DatastoreError::NotFound { .. }) => continue,
                Err(source) => {
                    return Err(ReplicationError::Read {
                        id: id.clone(),
                        source: Box::new(source),
                    });
                }
            };
            let item = UpsertMetadata {
                name: metadata.name.clone(),
                data_type: metadata.data_type.clone(),
                size: metadata.size,
                is_new: false,
                id: metadata.id.clone(),
                properties: metadata.properties.clone(),
                replica: Some(true),
                resume_key: None,
            };
            sender
                .send_pipelined(item, content)
                .await
                .map_err(transfer)?;
            expected.push_back((id.clone(), metadata.hash));
            check_copies(&mut expected, sender.take_receipts())?;
        }
        sender.flush_receipts().await.map_err(transfer)?;
        check_copies(&mut expected, sender.take_receipts())?;
        sender.finish().await.map_err(transfer)
    }

    /// Reports an attempt FAILED to the manager, so that it retries it now rather than at
    /// its deadline.
    async fn report_failed(&self, job_id: &str, task: Task) {
        let update = Task {
            status: Status::Failed as i32,
            access_token: None,
            ..task
        };
        let reported = self
            .managers
            .call(|manager| {
                self.cluster
                    .report_tasks(manager, std::slice::from_ref(&update))
            })
            .await;
        if let Err(error) = reported {
            tracing::debug!(job_id, error = %domain_proto::ErrorChain(&error), "could not report the failed copy");
        }
    }
}

/// The receiver and the token of an assignment, or why it has none.
fn assignment(task: &Task) -> Result<(PeerId, &str), ReplicationError> {
    let receiver = task
        .receiver
        .as_deref()
        .and_then(|receiver| receiver.parse().ok());
    match (receiver, task.access_token.as_deref()) {
        (Some(node), Some(token)) => Ok((node, token)),
        (None, _) => Err(unusable(task, "no receiver peer id")),
        (_, None) => Err(unusable(task, "no token")),
    }
}

fn unusable(task: &Task, reason: &'static str) -> ReplicationError {
    ReplicationError::Assignment {
        task: task.name.clone(),
        reason,
    }
}

/// Checks each copy's answer against the hash of the item it copies, in order. Both ends
/// hashed what was read here; the item's own root says it was right.
fn check_copies(
    expected: &mut VecDeque<(String, Option<String>)>,
    copies: impl Iterator<Item = Metadata>,
) -> Result<(), ReplicationError> {
    for copied in copies {
        let Some((id, hash)) = expected.pop_front() else {
            break;
        };
        if copied.hash != hash {
            return Err(ReplicationError::Differs {
                id,
                expected: hash,
                got: copied.hash,
            });
        }
    }
    Ok(())
}
