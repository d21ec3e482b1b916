//! The client side of the manager's protocols (docs/protocol.md), built on streams
//! and domain-proto's framing: `/join/v1`, `/jobs/v1`, `/monitor/v1`,
//! `/holders/v1`, `/leader/v1`, and `/public-key/v1` towards any peer.

use std::marker::PhantomData;

use domain_proto::DomainId;
use domain_proto::discovery::{
    Holder, HoldersRequest, HoldersResponse, JoinClusterRequest, JoinClusterResponse,
    LeaderRequest, LeaderResponse,
};
use domain_proto::protocols::{
    HOLDERS_V1, JOBS_V1, JOIN_V1, LEADER_V1, MAX_STATUS_REPORTS, MONITOR_ACK, MONITOR_V1,
    PUBLIC_KEY_V1, TASK_STATUS_V1,
};
use domain_proto::task::{Code, Job, JobRequest, SubmitJobResponse, Task};
use domain_proto::{DEFAULT_MAX_FRAME, read_message, read_message_or_eof, write_message};
use libp2p::PeerId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::error::ClusterError;
use crate::handle::ClusterHandle;
use crate::stream::ClusterStream;

/// Length of an Ed25519 public key, the whole `/public-key/v1` response.
pub const PUBLIC_KEY_LEN: usize = 32;

/// The largest `/leader/v1` answer read: a few addresses, never more.
const LEADER_FRAME: usize = 16 * 1024;

/// Frames of one message type arriving on a stream, until the peer closes it.
///
/// The wait for the next frame has no time limit: jobs and tasks change when
/// they change. Dropping the stream tells the manager this client is done.
pub struct FrameStream<M> {
    stream: ClusterStream,
    protocol: &'static str,
    peer: PeerId,
    message: PhantomData<fn() -> M>,
}

/// The tasks of a submitted job, each as it becomes PENDING, with its token.
pub type TaskStream = FrameStream<Task>;

/// Every job's changes, as the manager reports them on `/monitor/v1`.
pub type JobStream = FrameStream<Job>;

impl<M: prost::Message + Default> FrameStream<M> {
    fn new(stream: ClusterStream, protocol: &'static str, peer: PeerId) -> Self {
        Self {
            stream,
            protocol,
            peer,
            message: PhantomData,
        }
    }

    /// The next message, or `None` when the peer has closed the stream.
    ///
    /// # Errors
    /// [`ClusterError::Frame`] when the stream fails or carries a malformed frame.
    pub async fn next(&mut self) -> Result<Option<M>, ClusterError> {
        read_message_or_eof(&mut self.stream, DEFAULT_MAX_FRAME)
            .await
            .map_err(|source| ClusterError::Frame {
                protocol: self.protocol,
                peer: self.peer,
                source: Box::new(source),
            })
    }

    /// The peer on the other end.
    #[must_use]
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

impl<M> std::fmt::Debug for FrameStream<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameStream")
            .field("protocol", &self.protocol)
            .field("peer", &self.peer)
            .finish()
    }
}

/// The holders of a domain as the manager names them on `/holders/v1`: the first answer,
/// then (when following) each later one.
#[derive(Debug)]
pub struct HolderStream {
    frames: FrameStream<HoldersResponse>,
    domain: String,
}

impl HolderStream {
    /// The holders as they are after the next change, or `None` when the manager closed the
    /// stream (it is stopping, or the request did not ask to follow).
    ///
    /// # Errors
    /// [`ClusterError::HoldersRefused`] with the manager's reason; [`ClusterError::Frame`].
    pub async fn next(&mut self) -> Result<Option<Vec<Holder>>, ClusterError> {
        let Some(answer) = self.frames.next().await? else {
            return Ok(None);
        };
        if !answer.err_msg.is_empty() {
            return Err(ClusterError::HoldersRefused {
                domain: self.domain.clone(),
                message: answer.err_msg,
            });
        }
        Ok(Some(answer.holders))
    }
}

/// A job the manager accepted.
#[derive(Debug)]
pub struct SubmittedJob {
    /// The id the manager gave the job (also its task-update topic).
    pub job_id: String,
    /// Its tasks, as they become PENDING.
    pub tasks: TaskStream,
}

impl ClusterHandle {
    /// Registers this node and its capabilities with the manager (`/join/v1`): `request`
    /// names the node, what it holds (the holder index's source of truth), for a node the
    /// manager has not admitted yet the operator's one-use `invite`, and whether this is
    /// the first join since the node started; returns the manager's answer (which domains
    /// keep more than one copy of each item). The manager requires `request.node.id` to be
    /// this peer's id.
    ///
    /// # Errors
    /// [`ClusterError::JoinRefused`] with the manager's reason when it refuses the node;
    /// those of [`open_stream`](Self::open_stream); [`ClusterError::Frame`]
    /// when the exchange fails; [`ClusterError::Timeout`].
    pub async fn join(
        &self,
        manager: PeerId,
        request: JoinClusterRequest,
    ) -> Result<JoinClusterResponse, ClusterError> {
        let mut stream = self.open_stream(manager, JOIN_V1).await?;
        let frame_err = |source: domain_proto::FrameError| ClusterError::Frame {
            protocol: JOIN_V1,
            peer: manager,
            source: Box::new(source),
        };
        let answer = self
            .timed(format!("{JOIN_V1} with {manager}"), async {
                write_message(&mut stream, &request).await?;
                read_message::<JoinClusterResponse, _>(&mut stream, DEFAULT_MAX_FRAME).await
            })
            .await?
            .map_err(frame_err)?;
        match answer.err_msg.as_deref() {
            Some(message) if !message.is_empty() => Err(ClusterError::JoinRefused {
                message: message.to_owned(),
            }),
            _ => Ok(answer),
        }
    }

    /// Asks `manager` which manager leads (`/leader/v1`): itself, another (whose addresses
    /// it names), or none while an election is under way.
    ///
    /// # Errors
    /// Those of [`open_stream`](Self::open_stream) (a manager that predates `/leader/v1`
    /// does not support it); [`ClusterError::Frame`]; [`ClusterError::Timeout`].
    pub async fn leader(&self, manager: PeerId) -> Result<LeaderResponse, ClusterError> {
        let mut stream = self.open_stream(manager, LEADER_V1).await?;
        self.timed(format!("{LEADER_V1} with {manager}"), async {
            write_message(&mut stream, &LeaderRequest {}).await?;
            read_message::<LeaderResponse, _>(&mut stream, LEADER_FRAME).await
        })
        .await?
        .map_err(|source| ClusterError::Frame {
            protocol: LEADER_V1,
            peer: manager,
            source: Box::new(source),
        })
    }

    /// Submits a job to the manager (`/jobs/v1`) and returns its id and the
    /// stream on which its tasks arrive.
    ///
    /// # Errors
    /// [`ClusterError::JobRejected`] with the manager's reason;
    /// [`ClusterError::UnexpectedJobResponse`]; those of
    /// [`open_stream`](Self::open_stream); [`ClusterError::Frame`];
    /// [`ClusterError::Timeout`].
    pub async fn submit_job(
        &self,
        manager: PeerId,
        request: JobRequest,
    ) -> Result<SubmittedJob, ClusterError> {
        let name = request.name.clone();
        let mut stream = self.open_stream(manager, JOBS_V1).await?;
        let response = self
            .timed(format!("{JOBS_V1} with {manager}"), async {
                write_message(&mut stream, &request).await?;
                read_message::<SubmitJobResponse, _>(&mut stream, DEFAULT_MAX_FRAME).await
            })
            .await?
            .map_err(|source| ClusterError::Frame {
                protocol: JOBS_V1,
                peer: manager,
                source: Box::new(source),
            })?;
        match Code::try_from(response.code) {
            Ok(Code::Accepted | Code::Ok | Code::Created) => Ok(SubmittedJob {
                job_id: response.job_id,
                tasks: FrameStream::new(stream, JOBS_V1, manager),
            }),
            Ok(Code::BadRequest) => Err(ClusterError::JobRejected {
                name,
                message: response.err_msg,
            }),
            Err(_) => Err(ClusterError::UnexpectedJobResponse {
                name,
                code: response.code,
            }),
        }
    }

    /// Follows every job's changes on the manager (`/monitor/v1`).
    ///
    /// # Errors
    /// Those of [`open_stream`](Self::open_stream); [`ClusterError::StreamIo`]
    /// when the request cannot be sent; [`ClusterError::Timeout`].
    pub async fn monitor(&self, manager: PeerId) -> Result<JobStream, ClusterError> {
        let mut stream = self.open_stream(manager, MONITOR_V1).await?;
        self.timed(format!("{MONITOR_V1} with {manager}"), async {
            stream.write_all(MONITOR_ACK).await?;
            stream.flush().await
        })
        .await?
        .map_err(|source| ClusterError::StreamIo {
            protocol: MONITOR_V1,
            peer: manager,
            source,
        })?;
        Ok(FrameStream::new(stream, MONITOR_V1, manager))
    }

    /// Asks the manager which nodes hold data of `domain_id` (`/holders/v1`) and waits
    /// for its first answer; with `follow`, the stream goes on with each change.
    ///
    /// # Errors
    /// [`ClusterError::InvalidDomainId`] before anything is sent;
    /// [`ClusterError::HoldersRefused`] (a domain this peer may not use); those of
    /// [`open_stream`](Self::open_stream); [`ClusterError::Frame`];
    /// [`ClusterError::Timeout`].
    pub async fn holders(
        &self,
        manager: PeerId,
        domain_id: &str,
        follow: bool,
    ) -> Result<(Vec<Holder>, HolderStream), ClusterError> {
        DomainId::new(domain_id).map_err(ClusterError::InvalidDomainId)?;
        let mut stream = self.open_stream(manager, HOLDERS_V1).await?;
        let request = HoldersRequest {
            domain_id: domain_id.to_owned(),
            follow: follow.then_some(true),
        };
        self.timed(format!("{HOLDERS_V1} with {manager}"), async {
            write_message(&mut stream, &request).await
        })
        .await?
        .map_err(|source| ClusterError::Frame {
            protocol: HOLDERS_V1,
            peer: manager,
            source: Box::new(source),
        })?;
        let mut holders = HolderStream {
            frames: FrameStream::new(stream, HOLDERS_V1, manager),
            domain: domain_id.to_owned(),
        };
        let first = self
            .timed(format!("{HOLDERS_V1} with {manager}"), holders.next())
            .await??;
        let Some(first) = first else {
            return Err(ClusterError::HoldersRefused {
                domain: domain_id.to_owned(),
                message: "the manager closed the stream without an answer".to_owned(),
            });
        };
        Ok((first, holders))
    }

    /// Reports the status of tasks this peer sends or receives to the manager
    /// (`/task-status/v1`): a `Task` frame each (no token), at most
    /// [`MAX_STATUS_REPORTS`] per stream, the write half closed, then the manager's own
    /// close once it has taken them. The manager believes a report only from the task's
    /// sender or receiver.
    ///
    /// # Errors
    /// Those of [`open_stream`](Self::open_stream); [`ClusterError::Frame`];
    /// [`ClusterError::StreamIo`]; [`ClusterError::Timeout`].
    pub async fn report_tasks(&self, manager: PeerId, tasks: &[Task]) -> Result<(), ClusterError> {
        for batch in tasks.chunks(MAX_STATUS_REPORTS) {
            let mut stream = self.open_stream(manager, TASK_STATUS_V1).await?;
            let frame_err = |source: domain_proto::FrameError| ClusterError::Frame {
                protocol: TASK_STATUS_V1,
                peer: manager,
                source: Box::new(source),
            };
            self.timed(format!("{TASK_STATUS_V1} with {manager}"), async {
                for task in batch {
                    // A report never carries a token, whatever the caller holds.
                    let report = Task {
                        access_token: None,
                        ..task.clone()
                    };
                    write_message(&mut stream, &report)
                        .await
                        .map_err(frame_err)?;
                }
                let io = |source| ClusterError::StreamIo {
                    protocol: TASK_STATUS_V1,
                    peer: manager,
                    source,
                };
                stream.shutdown().await.map_err(io)?;
                // The manager closes its side once every report is applied and stored,
                // and writes a byte first when they were not.
                let mut answer = [0u8; 1];
                let mut not_applied = false;
                while stream.read(&mut answer).await.map_err(io)? > 0 {
                    not_applied = true;
                }
                if not_applied {
                    return Err(ClusterError::ReportsNotApplied { peer: manager });
                }
                Ok::<_, ClusterError>(())
            })
            .await??;
        }
        Ok(())
    }

    /// Asks `peer` for a domain's Ed25519 public key (`/public-key/v1`): the
    /// domain id as raw UTF-8, the write half closed, then exactly 32 bytes back.
    ///
    /// # Errors
    /// [`ClusterError::InvalidDomainId`] before anything is sent;
    /// [`ClusterError::StreamIo`] when the exchange fails or the answer is
    /// shorter than a key; those of [`open_stream`](Self::open_stream);
    /// [`ClusterError::Timeout`].
    pub async fn public_key(
        &self,
        peer: PeerId,
        domain_id: &str,
    ) -> Result<[u8; PUBLIC_KEY_LEN], ClusterError> {
        DomainId::new(domain_id).map_err(ClusterError::InvalidDomainId)?;
        let mut stream = self.open_stream(peer, PUBLIC_KEY_V1).await?;
        let mut key = [0u8; PUBLIC_KEY_LEN];
        self.timed(format!("{PUBLIC_KEY_V1} with {peer}"), async {
            stream.write_all(domain_id.as_bytes()).await?;
            stream.shutdown().await?;
            stream.read_exact(&mut key).await.map(drop)
        })
        .await?
        .map_err(|source| ClusterError::StreamIo {
            protocol: PUBLIC_KEY_V1,
            peer,
            source,
        })?;
        Ok(key)
    }
}
