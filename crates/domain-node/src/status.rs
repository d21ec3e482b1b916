//! Task status reports, sent to the manager over `/task-status/v1`.
//!
//! A stream handler hands each report to a bounded queue; one worker sends them in
//! order, in batches, to the manager, which believes a report only from the task's
//! sender or receiver. (posemesh gossips them on the job's topic instead, where any peer
//! that subscribes reads them: see docs/design.md, "Task status on its own stream".)
//! Reports the manager did not take (it was restarting) are kept, bounded, and sent again
//! after a pause that doubles up to [`MAX_RETRY`].

use std::collections::VecDeque;
use std::time::Duration;

use domain_auth::TaskClaims;
use domain_cluster::{ClusterError, ClusterHandle, Managers};
use domain_proto::protocols::MAX_STATUS_REPORTS;
use domain_proto::task::{Status, Task};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Reports waiting for the worker before handlers wait.
pub const REPORT_QUEUE: usize = 1024;

/// Unsent reports kept for a manager that comes back; past this many the oldest go.
pub const MAX_UNSENT_REPORTS: usize = 4096;

/// The first pause before a batch the manager did not take is sent again.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest pause between tries to reach the manager.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// Sends task status reports to the worker. Cheap to clone; the worker ends once every
/// clone is dropped and what is queued was sent (or could not be).
#[derive(Debug, Clone)]
pub struct StatusReporter {
    queue: mpsc::Sender<Task>,
}

impl StatusReporter {
    /// Starts the worker that sends through `cluster` to the leader of `managers`; returns
    /// the reporter and the worker's task, which ends once the reports are out.
    #[must_use]
    pub fn start(cluster: ClusterHandle, managers: Managers) -> (Self, JoinHandle<()>) {
        let (queue, reports) = mpsc::channel(REPORT_QUEUE);
        let worker = tokio::spawn(send_reports(cluster, managers, reports));
        (Self { queue }, worker)
    }

    /// Reports that the task that `claims` name is now in `status`.
    pub async fn report(&self, claims: &TaskClaims, status: Status) {
        let task = task_update(claims, status);
        if self.queue.send(task).await.is_err() {
            tracing::warn!(
                job = claims.job_id,
                task = claims.task_name,
                ?status,
                "status not reported: the node is shutting down"
            );
        }
    }
}

/// The reported form of a task's new status: what the verified claims say of it, and no
/// token.
#[must_use]
pub fn task_update(claims: &TaskClaims, status: Status) -> Task {
    Task {
        name: claims.task_name.clone(),
        receiver: Some(claims.receiver.clone()),
        endpoint: claims.endpoint.clone(),
        access_token: None,
        job_id: claims.job_id.clone(),
        sender: claims.sender.clone(),
        status: status as i32,
        output: None,
    }
}

async fn send_reports(
    cluster: ClusterHandle,
    managers: Managers,
    mut reports: mpsc::Receiver<Task>,
) {
    let mut pending: VecDeque<Task> = VecDeque::new();
    let mut pause = FIRST_RETRY;
    let mut open = true;
    while open || !pending.is_empty() {
        if pending.is_empty() {
            match reports.recv().await {
                Some(task) => pending.push_back(task),
                None => open = false,
            }
        }
        // What else is queued goes in the same batch.
        while pending.len() < MAX_STATUS_REPORTS {
            match reports.try_recv() {
                Ok(task) => pending.push_back(task),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if pending.is_empty() {
            continue;
        }
        let batch = pending.len().min(MAX_STATUS_REPORTS);
        let sent = send(
            &cluster,
            &managers,
            pending.make_contiguous()[..batch].as_ref(),
        )
        .await;
        match sent {
            Ok(()) => {
                pending.drain(..batch);
                pause = FIRST_RETRY;
            }
            Err(error) if open => {
                tracing::warn!(
                    reports = pending.len(),
                    error = %domain_proto::ErrorChain(&error),
                    "task status not reported; trying again"
                );
                // Keep reading reports meanwhile, so that handlers never wait on a manager
                // that is away; the oldest go past the bound.
                let wait = tokio::time::sleep(pause);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        () = &mut wait => break,
                        report = reports.recv() => match report {
                            Some(task) => keep(&mut pending, task),
                            None => {
                                open = false;
                                break;
                            }
                        },
                    }
                }
                pause = (pause * 2).min(MAX_RETRY);
            }
            // Shutting down: one try was all there is time for.
            Err(error) => {
                tracing::warn!(reports = pending.len(), error = %domain_proto::ErrorChain(&error), "task status not reported at shutdown");
                return;
            }
        }
    }
}

/// Keeps `task` among the unsent reports, at most [`MAX_UNSENT_REPORTS`].
fn keep(pending: &mut VecDeque<Task>, task: Task) {
    if pending.len() >= MAX_UNSENT_REPORTS {
        if let Some(dropped) = pending.pop_front() {
            tracing::warn!(
                job = dropped.job_id,
                task = dropped.name,
                "too many unsent reports; dropping the oldest"
            );
        }
    }
    pending.push_back(task);
}

async fn send(
    cluster: &ClusterHandle,
    managers: &Managers,
    batch: &[Task],
) -> Result<(), ClusterError> {
    // A report repeated to a new leader changes nothing the first one did not.
    managers
        .call(|manager| cluster.report_tasks(manager, batch))
        .await?;
    tracing::debug!(reports = batch.len(), "task status reported");
    Ok(())
}
