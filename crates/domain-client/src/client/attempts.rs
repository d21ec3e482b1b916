//! The attempts of a submitted job's tasks: the manager assigns a task (a node and a
//! token), the client tries it, and on failure either reports it FAILED so that the
//! manager assigns it again, or gives up.
//!
//! The decisions are plain functions over explicit state ([`Attempts`], a [`Task`]
//! frame, [`OtherFrames`]), tested here without a network; [`TaskRun`] only feeds them
//! what the job's stream and the transfers bring.

use std::collections::{HashMap, VecDeque};

use domain_cluster::managers::leads_elsewhere;
use domain_cluster::{ClusterError, PeerId, SubmittedJob};
use domain_proto::task::{JobRequest, Status, Task};

use super::{Assignment, Client, ClientError};

/// The most frames of other tasks a [`TaskRun`] keeps while it waits for the selected
/// task's: the manager sends at most a few per task (a token per attempt, a FAILED).
pub(super) const MAX_BUFFERED_FRAMES: usize = 4096;

/// How many times a job whose stream broke is submitted again (to the manager that leads
/// now): each is a manager lost while the job ran.
const MAX_RESUBMITS: u32 = 3;

/// Where the selected task's attempts stand when one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Attempts {
    /// Assignments tried so far, the failed one included.
    pub(super) tried: u32,
    /// The most assignments to try ([`ClientConfig::max_attempts`](super::ClientConfig::max_attempts)).
    pub(super) max: u32,
    /// Whether the task is one of several, each pinned to a holder (a fan-out).
    pub(super) fan_out: bool,
    /// Whether the failed attempt had an assignment (not: getting one failed).
    pub(super) assigned: bool,
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterFailure {
    /// Report the attempt FAILED, so that the manager assigns the task again now rather
    /// than at its deadline, and try the next assignment.
    ReportAndRetry,
    /// Report the attempt FAILED and give the error back: the holder is passed over.
    ReportAndGiveUp,
    /// Give the error back.
    GiveUp,
}

/// Decides what follows the failure `error` of an attempt.
pub(super) fn after_failure(error: &ClientError, attempts: Attempts) -> AfterFailure {
    if !error.is_retryable() || attempts.tried >= attempts.max {
        return AfterFailure::GiveUp;
    }
    // A holder that could not be reached for a task pinned to it would be assigned
    // again to the same holder: it is reported and passed over. The manager still hears
    // of the failure, and fails the task once it drops the node.
    if attempts.fan_out && matches!(error, ClientError::Connect { .. }) {
        return AfterFailure::ReportAndGiveUp;
    }
    if !attempts.assigned {
        return AfterFailure::GiveUp;
    }
    AfterFailure::ReportAndRetry
}

/// Whether an upload whose attempt failed with `error` continues on the same node,
/// after the whole chunks it kept: once, when the stream was cut (not refused, not
/// proven wrong), before the manager's retry starts again from nothing elsewhere.
pub(super) fn resumes_on_same_node(error: &ClientError, resumed_before: bool) -> bool {
    !resumed_before && error.is_cut()
}

/// What one frame of the job's stream means for the task it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Frame {
    /// A node and a token to try.
    Assigned(Assignment),
    /// The manager gave the task up for good.
    GaveUp,
    /// Anything else (running, done elsewhere): news, not work.
    News,
}

/// Reads a frame of the task; an assignment the client cannot use is an error, with
/// the reason.
pub(super) fn read_frame(task: &Task) -> Result<Frame, String> {
    match task.status() {
        Status::Failed => Ok(Frame::GaveUp),
        // Only assignments carry tokens.
        Status::Pending => parse_assignment(task).map(Frame::Assigned),
        _ => Ok(Frame::News),
    }
}

/// The assignment in a PENDING frame: the receiver's peer id and the token.
pub(super) fn parse_assignment(task: &Task) -> Result<Assignment, String> {
    let receiver = task
        .receiver
        .as_deref()
        .ok_or_else(|| "no receiver".to_owned())?;
    let node = receiver
        .parse::<PeerId>()
        .map_err(|e| format!("receiver {receiver:?} is not a peer id: {e}"))?;
    let token = task
        .access_token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "no access token".to_owned())?;
    Ok(Assignment { node, token })
}

/// The node a selected task is tried against, for reports and logs: the holder it is
/// pinned to; the manager, which picks, otherwise (or this client, without a manager).
pub(super) fn target_node(pinned: Option<PeerId>, manager: Option<PeerId>, own: PeerId) -> PeerId {
    pinned.or(manager).unwrap_or(own)
}

/// Frames of the other tasks of a job, read while waiting for the selected task's, in
/// the order they came; at most [`MAX_BUFFERED_FRAMES`] in all.
#[derive(Debug, Default)]
pub(super) struct OtherFrames {
    by_task: HashMap<String, VecDeque<Task>>,
    len: usize,
}

impl OtherFrames {
    /// The oldest frame kept for `task`.
    pub(super) fn take(&mut self, task: &str) -> Option<Task> {
        let frame = self.by_task.get_mut(task)?.pop_front()?;
        self.len -= 1;
        Some(frame)
    }

    /// Keeps `frame` for when its task is selected; drops it when the buffer is full.
    pub(super) fn keep(&mut self, frame: Task) {
        if self.len < MAX_BUFFERED_FRAMES {
            self.len += 1;
            self.by_task
                .entry(frame.name.clone())
                .or_default()
                .push_back(frame);
        }
    }
}

/// A submitted job, as its assignments arrive on the job's stream, worked one task at a
/// time: the selected one.
pub(super) struct TaskRun<'a> {
    client: &'a Client,
    job: SubmittedJob,
    /// The request submitted, to submit again when the job's stream breaks.
    request: JobRequest,
    /// How many times it was.
    resubmits: u32,
    /// Each task's name and the node it is pinned to, in the order submitted.
    pub(super) targets: Vec<(String, Option<PeerId>)>,
    task_name: String,
    attempts: u32,
    /// The assignment being tried, as the manager sent it (without its token once used).
    pub(super) current: Option<Task>,
    others: OtherFrames,
}

impl<'a> TaskRun<'a> {
    /// The run of `job`, submitted by `client` with `targets`, its first task selected.
    pub(super) fn new(
        client: &'a Client,
        job: SubmittedJob,
        request: JobRequest,
        targets: Vec<(String, Option<PeerId>)>,
    ) -> Self {
        Self {
            client,
            job,
            request,
            resubmits: 0,
            task_name: targets
                .first()
                .map(|(name, _)| name.clone())
                .unwrap_or_default(),
            targets,
            attempts: 0,
            current: None,
            others: OtherFrames::default(),
        }
    }
}

impl TaskRun<'_> {
    /// Selects the task at `index` of the job, and answers the node it is pinned to.
    pub(super) fn select(&mut self, index: usize) -> PeerId {
        let (name, node) = self.targets[index].clone();
        self.task_name = name;
        self.attempts = 0;
        self.current = None;
        target_node(node, self.client.manager(), self.client.peer_id())
    }

    /// Takes back the selected task's first attempt, made elsewhere (the assignment
    /// tried, or none when the assignment itself failed), and handles its failure as
    /// [`failed`](Self::failed) does.
    pub(super) async fn resume_after(
        &mut self,
        current: Option<Task>,
        error: ClientError,
    ) -> Result<(), ClientError> {
        self.attempts = u32::from(current.is_some());
        self.current = current;
        self.failed(error).await
    }

    /// The next frame of the selected task: kept from earlier reads, or read now,
    /// keeping the other tasks' frames for when they are selected.
    async fn next_frame(&mut self) -> Result<Option<Task>, ClusterError> {
        if let Some(frame) = self.others.take(&self.task_name) {
            return Ok(Some(frame));
        }
        loop {
            let task = match self.job.tasks.next().await {
                Ok(Some(task)) => task,
                Ok(None) => return Ok(None),
                Err(error) if leads_elsewhere(&error) && self.resubmits < MAX_RESUBMITS => {
                    self.resubmit(error).await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if task.name == self.task_name {
                return Ok(Some(task));
            }
            if self.targets.iter().any(|(name, _)| *name == task.name) {
                self.others.keep(task);
            }
        }
    }

    /// Carries on after the job's stream broke with `error` (its manager died or stepped
    /// down): the job lives on in the managers' shared state, and the same request
    /// submitted to the manager that leads now is the same job, answered with fresh tokens
    /// for the tasks already assigned and a stream that goes on.
    async fn resubmit(&mut self, error: ClusterError) -> Result<(), ClusterError> {
        self.resubmits += 1;
        let peer = self
            .current
            .as_ref()
            .and_then(|task| task.receiver.as_deref());
        tracing::info!(job = %self.job.job_id, task = %self.task_name, peer = peer.unwrap_or_default(), error = %domain_proto::ErrorChain(&error), "the job's stream broke; submitting it again");
        let Some(managers) = &self.client.managers else {
            return Err(error);
        };
        let request = &self.request;
        let cluster = &self.client.cluster;
        self.job = managers
            .call(|manager| cluster.submit_job(manager, request.clone()))
            .await?;
        Ok(())
    }

    /// The next assignment of the task: a node and a token.
    pub(super) async fn next_assignment(&mut self) -> Result<Assignment, ClientError> {
        let assignment_timeout = self.client.config.assignment_timeout;
        loop {
            let frame = tokio::time::timeout(assignment_timeout, self.next_frame())
                .await
                .map_err(|_| ClientError::NoAssignment {
                    job_id: self.job.job_id.clone(),
                    task: self.task_name.clone(),
                    waited: assignment_timeout,
                })?
                .map_err(|source| ClientError::Manager {
                    job: self.task_name.clone(),
                    source: Box::new(source),
                })?;
            let Some(task) = frame else {
                return Err(ClientError::JobEnded {
                    job_id: self.job.job_id.clone(),
                    task: self.task_name.clone(),
                });
            };
            let frame = read_frame(&task).map_err(|reason| ClientError::BadAssignment {
                job_id: self.job.job_id.clone(),
                task: self.task_name.clone(),
                reason,
            })?;
            let assignment = match frame {
                Frame::Assigned(assignment) => assignment,
                Frame::GaveUp => {
                    return Err(ClientError::TaskFailed {
                        job_id: self.job.job_id.clone(),
                        task: self.task_name.clone(),
                    });
                }
                Frame::News => continue,
            };
            self.attempts += 1;
            self.current = Some(Task {
                access_token: None,
                ..task
            });
            return Ok(assignment);
        }
    }

    /// Handles a failed attempt as [`after_failure`] decides: gives `error` back, or
    /// reports the attempt FAILED to the manager (`/task-status/v1`) so that it assigns
    /// the task again now rather than at the task's deadline.
    pub(super) async fn failed(&mut self, error: ClientError) -> Result<(), ClientError> {
        let attempts = Attempts {
            tried: self.attempts,
            max: self.client.config.max_attempts,
            fan_out: self.targets.len() > 1,
            assigned: self.current.is_some(),
        };
        match after_failure(&error, attempts) {
            AfterFailure::GiveUp => Err(error),
            AfterFailure::ReportAndGiveUp => {
                self.report(Status::Failed).await;
                Err(error)
            }
            AfterFailure::ReportAndRetry => {
                let peer = self
                    .current
                    .as_ref()
                    .and_then(|task| task.receiver.as_deref());
                tracing::warn!(job = %self.job.job_id, task = %self.task_name, peer = peer.unwrap_or_default(), error = %domain_proto::ErrorChain(&error), attempt = self.attempts, "task failed, waiting for another node");
                self.report(Status::Failed).await;
                Ok(())
            }
        }
    }

    /// Waits, within [`ClientConfig::request_timeout`], until the manager ends the job's
    /// stream, which it does once the node's DONE report reached it: from then on the
    /// manager has recorded where the data went, so that a listing right after finds
    /// it. The node, not this client, reports DONE: it alone knows the items are
    /// durable, and the manager leaves the job's topic once the job ends. A manager that
    /// does not end the stream in time costs the wait, not the upload, which is stored.
    pub(super) async fn recorded(mut self) {
        let job_id = self.job.job_id.clone();
        let ended = async { while let Ok(Some(_)) = self.job.tasks.next().await {} };
        if tokio::time::timeout(self.client.config.request_timeout, ended)
            .await
            .is_err()
        {
            tracing::debug!(%job_id, "the manager did not end the finished job's stream in time");
        }
    }

    /// Reports the current attempt `status` (DONE or FAILED) to the manager, so that it
    /// acts now rather than at the task's deadline.
    pub(super) async fn report(&mut self, status: Status) {
        let job_id = self.job.job_id.as_str();
        let Some(task) = self.current.take() else {
            return;
        };
        let update = Task {
            status: status as i32,
            ..task
        };
        // Best effort: the node reports its side too, and the deadline remains.
        let Some(managers) = &self.client.managers else {
            return;
        };
        let cluster = &self.client.cluster;
        let reported = managers
            .call(|manager| cluster.report_tasks(manager, std::slice::from_ref(&update)))
            .await;
        if let Err(report_error) = reported {
            tracing::debug!(%job_id, error = %domain_proto::ErrorChain(&report_error), ?status, "could not report the attempt");
        }
    }
}

#[cfg(test)]
mod tests {
    use domain_capabilities::{CapabilityError, Direction};

    use super::*;

    /// An attempt of a task the manager places, the first of four.
    const FIRST: Attempts = Attempts {
        tried: 1,
        max: 4,
        fan_out: false,
        assigned: true,
    };

    fn transfer(source: CapabilityError) -> ClientError {
        ClientError::Transfer {
            protocol: "/store/v1",
            node: PeerId::random(),
            source: Box::new(source),
        }
    }

    fn cut() -> ClientError {
        transfer(CapabilityError::Closed {
            during: "sending content",
        })
    }

    fn refused() -> ClientError {
        transfer(CapabilityError::Refused {
            message: "token expired".into(),
        })
    }

    fn unreachable() -> ClientError {
        ClientError::Connect {
            node: PeerId::random().to_string(),
            source: Box::new(ClusterError::NoRuntime),
        }
    }

    fn local() -> ClientError {
        ClientError::InvalidId { id: "..".into() }
    }

    #[test]
    fn a_failed_transfer_is_reported_and_tried_again_until_the_attempts_are_spent() {
        for error in [cut(), refused(), unreachable()] {
            for tried in 1..4 {
                let attempts = Attempts { tried, ..FIRST };
                assert_eq!(
                    after_failure(&error, attempts),
                    AfterFailure::ReportAndRetry,
                    "{error} at attempt {tried}"
                );
            }
            let last = Attempts { tried: 4, ..FIRST };
            assert_eq!(after_failure(&error, last), AfterFailure::GiveUp, "{error}");
        }
    }

    #[test]
    fn an_error_another_node_would_meet_too_is_never_tried_again() {
        let errors = [
            local(),
            ClientError::NoManager,
            ClientError::TaskFailed {
                job_id: "j".into(),
                task: "t".into(),
            },
            ClientError::BadAssignment {
                job_id: "j".into(),
                task: "t".into(),
                reason: "no access token".into(),
            },
        ];
        for error in errors {
            assert_eq!(
                after_failure(&error, FIRST),
                AfterFailure::GiveUp,
                "{error}"
            );
        }
    }

    #[test]
    fn a_holder_that_cannot_be_reached_is_reported_and_passed_over() {
        let holder = Attempts {
            fan_out: true,
            ..FIRST
        };
        assert_eq!(
            after_failure(&unreachable(), holder),
            AfterFailure::ReportAndGiveUp
        );
        // A holder that was reached and failed the transfer gets its retries.
        assert_eq!(after_failure(&cut(), holder), AfterFailure::ReportAndRetry);
    }

    #[test]
    fn a_failure_without_an_assignment_gives_up_with_nothing_to_report() {
        let unassigned = Attempts {
            tried: 0,
            assigned: false,
            ..FIRST
        };
        assert_eq!(after_failure(&cut(), unassigned), AfterFailure::GiveUp);
    }

    #[test]
    fn a_cut_upload_resumes_on_the_same_node_once_and_nothing_else_does() {
        assert!(resumes_on_same_node(&cut(), false));
        assert!(!resumes_on_same_node(&cut(), true));
        let idle = transfer(CapabilityError::Idle {
            idle: std::time::Duration::from_secs(30),
            direction: Direction::Read,
            during: "waiting for the receiver's root",
        });
        assert!(resumes_on_same_node(&idle, false));
        for error in [refused(), unreachable(), local()] {
            assert!(!resumes_on_same_node(&error, false), "{error}");
        }
    }

    fn pending(receiver: Option<String>, token: Option<&str>) -> Task {
        Task {
            name: "upload".into(),
            status: Status::Pending as i32,
            receiver,
            access_token: token.map(str::to_owned),
            ..Task::default()
        }
    }

    #[test]
    fn a_pending_frame_with_a_receiver_and_a_token_is_an_assignment() {
        let peer = PeerId::random();
        let frame = read_frame(&pending(Some(peer.to_string()), Some("t"))).unwrap();
        assert_eq!(
            frame,
            Frame::Assigned(Assignment {
                node: peer,
                token: "t".into()
            })
        );
    }

    #[test]
    fn an_assignment_without_a_peer_id_or_a_token_is_unusable() {
        let peer = PeerId::random().to_string();
        for (receiver, token) in [
            (None, Some("t")),
            (Some(peer.clone()), None),
            (Some(peer), Some("")),
            (Some("node-1".to_owned()), Some("t")),
        ] {
            assert!(read_frame(&pending(receiver, token)).is_err());
        }
    }

    #[test]
    fn a_failed_frame_ends_the_task_and_other_frames_are_news() {
        let with = |status: Status| Task {
            status: status as i32,
            ..Task::default()
        };
        assert_eq!(read_frame(&with(Status::Failed)), Ok(Frame::GaveUp));
        for status in [
            Status::Started,
            Status::Processing,
            Status::Done,
            Status::WaitingForResource,
            Status::Retry,
        ] {
            assert_eq!(read_frame(&with(status)), Ok(Frame::News), "{status:?}");
        }
    }

    #[test]
    fn frames_of_other_tasks_wait_in_order_for_their_task() {
        let frame = |task: &str, receiver: &str| Task {
            name: task.into(),
            receiver: Some(receiver.into()),
            ..Task::default()
        };
        let mut others = OtherFrames::default();
        others.keep(frame("a", "1"));
        others.keep(frame("b", "1"));
        others.keep(frame("a", "2"));
        assert_eq!(others.take("a").unwrap().receiver.as_deref(), Some("1"));
        assert_eq!(others.take("a").unwrap().receiver.as_deref(), Some("2"));
        assert!(others.take("a").is_none());
        assert_eq!(others.take("b").unwrap().receiver.as_deref(), Some("1"));
        assert!(others.take("c").is_none());
    }

    #[test]
    fn at_most_max_buffered_frames_wait_and_taking_them_frees_their_places() {
        let mut others = OtherFrames::default();
        for i in 0..=MAX_BUFFERED_FRAMES {
            others.keep(Task {
                name: format!("task-{}", i % 3),
                ..Task::default()
            });
        }
        let mut kept = 0;
        while ["task-0", "task-1", "task-2"]
            .iter()
            .any(|task| others.take(task).is_some())
        {
            kept += 1;
        }
        assert_eq!(
            kept, MAX_BUFFERED_FRAMES,
            "the frame past the limit is dropped"
        );
        others.keep(Task::default());
        assert!(others.take("").is_some());
    }

    #[test]
    fn a_pinned_task_is_tried_against_its_holder_and_another_against_the_manager() {
        let (holder, manager, own) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(target_node(Some(holder), Some(manager), own), holder);
        assert_eq!(target_node(None, Some(manager), own), manager);
        assert_eq!(target_node(None, None, own), own);
    }

    #[test]
    fn an_assignment_needs_a_receiver_peer_id_and_a_token() {
        let peer = PeerId::random();
        let task = Task {
            receiver: Some(peer.to_string()),
            access_token: Some("t".into()),
            ..Task::default()
        };
        let assignment = parse_assignment(&task).unwrap();
        assert_eq!(assignment.node, peer);
        assert_eq!(assignment.token, "t");
        assert!(
            parse_assignment(&Task {
                receiver: None,
                ..task.clone()
            })
            .is_err()
        );
        assert!(
            parse_assignment(&Task {
                access_token: None,
                ..task.clone()
            })
            .is_err()
        );
        assert!(
            parse_assignment(&Task {
                receiver: Some("node-1".into()),
                ..task
            })
            .is_err()
        );
    }
}
