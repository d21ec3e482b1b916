//! Changes the scheduler announces: what `/jobs/v1`, `/monitor/v1` and gossip carry.

use domain_proto::task::Task;

/// How a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Some task is not finished yet.
    Running,
    /// Every task is DONE.
    Done,
    /// Every task is finished and at least one FAILED.
    Failed,
}

/// One change, published on the scheduler's bounded event stream after it is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A job was accepted.
    JobSubmitted {
        /// The job id.
        job_id: String,
        /// The job's name.
        name: String,
        /// Peer id of the submitter.
        submitter: String,
    },
    /// A task was given a receiver and became PENDING. `task` carries no token (fit for
    /// gossip); the token goes to the submitter only, see [`Event::task_for_submitter`].
    TaskAssigned {
        /// Peer id of the job's submitter.
        submitter: String,
        /// The task, PENDING, with its receiver.
        task: Task,
        /// The token for this assignment.
        access_token: String,
    },
    /// A task changed status in any other way. `task` carries no token.
    TaskChanged {
        /// The task as it is now.
        task: Task,
        /// Why, for RETRY and FAILED (a timeout, a lost node, a failed need, …).
        reason: Option<String>,
    },
    /// Every task of a job is finished.
    JobFinished {
        /// The job id.
        job_id: String,
        /// [`JobStatus::Done`] or [`JobStatus::Failed`].
        status: JobStatus,
    },
}

impl Event {
    /// The task this event is about, without token: what gossip publishes.
    pub fn task(&self) -> Option<&Task> {
        match self {
            Event::TaskAssigned { task, .. } | Event::TaskChanged { task, .. } => Some(task),
            Event::JobSubmitted { .. } | Event::JobFinished { .. } => None,
        }
    }

    /// The job this event is about.
    pub fn job_id(&self) -> &str {
        match self {
            Event::TaskAssigned { task, .. } | Event::TaskChanged { task, .. } => &task.job_id,
            Event::JobSubmitted { job_id, .. } | Event::JobFinished { job_id, .. } => job_id,
        }
    }

    /// For an assignment, the task with its access token: the frame the submitter's `/jobs/v1`
    /// stream carries.
    pub fn task_for_submitter(&self) -> Option<Task> {
        match self {
            Event::TaskAssigned {
                task, access_token, ..
            } => Some(Task {
                access_token: Some(access_token.clone()),
                ..task.clone()
            }),
            _ => None,
        }
    }
}
