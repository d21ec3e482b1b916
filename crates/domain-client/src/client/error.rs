//! Why a client operation failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use domain_capabilities::{CapabilityError, Deleted};
use domain_cluster::{ClusterError, Multiaddr, PeerId};

use super::MAX_LISTED_ITEMS;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The swarm could not be started or stopped.
    #[error("cannot run the client's peer")]
    Cluster(#[source] Box<ClusterError>),
    /// The manager's address does not end with `/p2p/<peer id>`.
    #[error("the manager address {addr} does not end with /p2p/<peer id>")]
    ManagerAddress {
        /// The address given.
        addr: Multiaddr,
    },
    /// The operation needs a manager and the client was started without one.
    #[error("this client has no manager address; pass one, or a node address and a token")]
    NoManager,
    /// The manager refused the job, or an exchange with it failed.
    #[error("job {job}")]
    Manager {
        /// The job's name.
        job: String,
        /// What went wrong.
        #[source]
        source: Box<ClusterError>,
    },
    /// No assignment came for the task in time (no node with the capability and free
    /// capacity).
    #[error("job {job_id}: no node was assigned to task {task} within {waited:?}")]
    NoAssignment {
        /// The job.
        job_id: String,
        /// The task.
        task: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The manager closed the job's stream before the task ran to completion here.
    #[error("job {job_id}: the manager ended the job before task {task} could run")]
    JobEnded {
        /// The job.
        job_id: String,
        /// The task.
        task: String,
    },
    /// The manager gave the task up for good (FAILED): its node is gone, or its attempts
    /// are spent.
    #[error("job {job_id}: the manager gave up task {task}")]
    TaskFailed {
        /// The job.
        job_id: String,
        /// The task.
        task: String,
    },
    /// The manager sent an assignment this client cannot use.
    #[error("job {job_id}: unusable assignment of task {task}: {reason}")]
    BadAssignment {
        /// The job.
        job_id: String,
        /// The task.
        task: String,
        /// What was wrong.
        reason: String,
    },
    /// The node could not be reached.
    #[error("cannot reach node {node}")]
    Connect {
        /// The node, as an address or a peer id.
        node: String,
        /// Why.
        #[source]
        source: Box<ClusterError>,
    },
    /// A task stream with the node failed (refused token, root mismatch, broken stream).
    #[error("{protocol} with node {node}")]
    Transfer {
        /// The protocol.
        protocol: &'static str,
        /// The node.
        node: PeerId,
        /// What went wrong.
        #[source]
        source: Box<CapabilityError>,
    },
    /// The node sent an item that was not asked for.
    #[error("node {node} sent item {id:?}, which was not asked for")]
    UnexpectedItem {
        /// The node.
        node: PeerId,
        /// The item's id (untrusted).
        id: String,
    },
    /// A download into a writer failed after bytes had reached the writer, which cannot
    /// be rewound, so it was not retried; discard what the writer received.
    #[error("item {id}: the download failed after {written} bytes were written")]
    WriterInterrupted {
        /// The item.
        id: String,
        /// Bytes the writer received.
        written: u64,
        /// What went wrong.
        #[source]
        source: Box<CapabilityError>,
    },
    /// An upload from a reader failed; a reader cannot be read again, so it was not
    /// retried on another node.
    #[error("uploading {name} from a reader")]
    ReaderUpload {
        /// The item's name.
        name: String,
        /// What went wrong.
        #[source]
        source: Box<ClientError>,
    },
    /// A node closed a subscription's stream (it is shutting down); the other nodes'
    /// streams go on.
    #[error("node {node} ended its subscription stream")]
    SubscriptionEnded {
        /// The node.
        node: PeerId,
    },
    /// The node's listing holds more items than [`MAX_LISTED_ITEMS`].
    #[error("node {node} lists more than {MAX_LISTED_ITEMS} items")]
    TooManyItems {
        /// The node.
        node: PeerId,
    },
    /// A download would replace a file that was there before it.
    #[error("{} exists and is not replaced (pass --overwrite to replace it)", path.display())]
    WouldReplace {
        /// The file.
        path: PathBuf,
    },
    /// An item id cannot name a file: empty, with a path separator, or starting with a dot.
    #[error("item id {id:?} cannot be a file name")]
    InvalidId {
        /// The id.
        id: String,
    },
    /// A file to upload is larger than an item can be (4 GiB - 1).
    #[error("{} is {len} bytes; an item holds at most {} bytes", path.display(), u32::MAX)]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// A local file could not be read or written.
    #[error("{action} {}", path.display())]
    Io {
        /// What the client was doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another download of the same item into the same folder is under way.
    #[error("{} is being written by another download", path.display())]
    PartialInUse {
        /// The partial file.
        path: PathBuf,
    },
    /// A delete reached some holders but not all: the others keep their copies (and
    /// list them) until the manager, which remembers the delete, removes them.
    #[error(
        "the delete did not reach {} of the domain's holders ({}); they keep their copies until the manager removes them",
        unanswered.len(),
        peer_list(unanswered)
    )]
    DeleteIncomplete {
        /// What the holders that answered removed, and what none of them held.
        answered: Deleted,
        /// The holders that did not answer.
        unanswered: Vec<PeerId>,
    },
}

/// `peers` for a message: comma-separated.
fn peer_list(peers: &[PeerId]) -> String {
    peers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl ClientError {
    /// Whether a transfer stream broke (reset, closed early, idle) rather than being
    /// refused or proven wrong: the node may hold what got through.
    pub(super) fn is_cut(&self) -> bool {
        matches!(
            self,
            Self::Transfer { source, .. } if matches!(
                **source,
                CapabilityError::Io { .. } | CapabilityError::Closed { .. } | CapabilityError::Idle { .. }
            )
        )
    }

    /// Whether another node (a new assignment) might succeed where this failed.
    pub(super) fn is_retryable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Transfer { .. })
    }

    /// Whether asking the holders must stop here rather than go on with the next one
    /// (a local failure, which the next holder would meet too).
    pub(super) fn ends_search(&self) -> bool {
        matches!(
            self,
            Self::Io { .. }
                | Self::PartialInUse { .. }
                | Self::WouldReplace { .. }
                | Self::WriterInterrupted { .. }
                | Self::TooManyItems { .. }
        )
    }

    pub(super) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
