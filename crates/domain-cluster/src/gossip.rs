//! Gossipsub events and posemesh task updates (docs/protocol.md: posemesh peers publish
//! task updates on gossip; ours report on `/task-status/v1`).
//!
//! The event loop hands every gossip event to a bounded broadcast channel: it
//! never waits for a subscriber, and a subscriber that falls more than the
//! buffer behind is told how many events it lost ([`ClusterError::GossipLagged`]).

use domain_proto::task::Task;
use libp2p::PeerId;
use prost::Message as _;
use tokio::sync::broadcast;

use crate::error::ClusterError;

/// Something that happened on gossipsub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipEvent {
    /// A message arrived on a topic this peer subscribes to.
    Message {
        /// The topic.
        topic: String,
        /// The peer that signed (published) the message. Strict validation
        /// makes it always known; it is an `Option` because gossipsub's type is.
        source: Option<PeerId>,
        /// The peer that forwarded it to us.
        propagation_source: PeerId,
        /// The payload.
        data: Vec<u8>,
    },
    /// A peer subscribed to a topic.
    Subscribed {
        /// The peer.
        peer: PeerId,
        /// The topic.
        topic: String,
    },
    /// A peer unsubscribed from a topic.
    Unsubscribed {
        /// The peer.
        peer: PeerId,
        /// The topic.
        topic: String,
    },
}

/// A subscriber's view of gossip events, from the moment it was created.
#[derive(Debug)]
pub struct GossipEvents {
    receiver: broadcast::Receiver<GossipEvent>,
}

impl GossipEvents {
    pub(crate) fn new(receiver: broadcast::Receiver<GossipEvent>) -> Self {
        Self { receiver }
    }

    /// The next gossip event.
    ///
    /// # Errors
    /// [`ClusterError::GossipLagged`] when events were dropped because this
    /// subscriber fell behind (the next call returns the oldest event kept);
    /// [`ClusterError::Shutdown`] once the cluster has stopped.
    pub async fn recv(&mut self) -> Result<GossipEvent, ClusterError> {
        self.receiver.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(missed) => ClusterError::GossipLagged { missed },
            broadcast::error::RecvError::Closed => ClusterError::Shutdown,
        })
    }
}

/// A task's new state, received on its job's topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskUpdate {
    /// The peer that published it. Only the manager, the task's sender and its
    /// receiver may change a task; deciding whom to believe is the caller's job.
    pub publisher: Option<PeerId>,
    /// The task, without access token.
    pub task: Task,
}

/// The task updates of one job, from the moment of subscribing.
#[derive(Debug)]
pub struct TaskUpdates {
    topic: String,
    events: GossipEvents,
}

impl TaskUpdates {
    pub(crate) fn new(topic: String, events: GossipEvents) -> Self {
        Self { topic, events }
    }

    /// The job id whose updates these are.
    #[must_use]
    pub fn job_id(&self) -> &str {
        &self.topic
    }

    /// The next task update of the job.
    ///
    /// A malformed update is reported and skipped: calling again returns the
    /// next one.
    ///
    /// # Errors
    /// [`ClusterError::BadTaskUpdate`] for a payload that is not a task;
    /// [`ClusterError::GossipLagged`] when updates were lost;
    /// [`ClusterError::Shutdown`] once the cluster has stopped.
    pub async fn recv(&mut self) -> Result<TaskUpdate, ClusterError> {
        loop {
            if let GossipEvent::Message {
                topic,
                source,
                data,
                ..
            } = self.events.recv().await?
                && topic == self.topic
            {
                return match decode_task_update(&data) {
                    Ok(task) => Ok(TaskUpdate {
                        publisher: source,
                        task,
                    }),
                    Err(error) => Err(ClusterError::BadTaskUpdate {
                        topic,
                        source_peer: source,
                        error: Box::new(error),
                    }),
                };
            }
        }
    }
}

/// Encodes a task update for gossip: the length-delimited protobuf `Task`,
/// with its access token removed (tokens go only to the submitter).
///
/// # Errors
/// [`prost::EncodeError`] never in practice: the buffer grows as needed.
pub fn encode_task_update(task: &Task) -> Result<Vec<u8>, prost::EncodeError> {
    let mut task = task.clone();
    task.access_token = None;
    let mut buf =
        Vec::with_capacity(task.encoded_len() + prost::length_delimiter_len(task.encoded_len()));
    task.encode_length_delimited(&mut buf)?;
    Ok(buf)
}

/// Why a gossip payload is not a task update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskUpdateError {
    /// The payload does not start with a valid varint length, or its body is
    /// not a `Task`.
    #[error("not a length-delimited task")]
    Decode(#[from] prost::DecodeError),
    /// The varint length and the payload disagree.
    #[error("length prefix says {declared} bytes, but {actual} follow it")]
    LengthMismatch {
        /// The length the prefix declares.
        declared: usize,
        /// The bytes after the prefix.
        actual: usize,
    },
}

/// Decodes a gossiped task update; an access token that a careless peer put in
/// is dropped rather than passed on.
///
/// # Errors
/// [`TaskUpdateError`] when the payload is not exactly one length-delimited `Task`.
pub fn decode_task_update(payload: &[u8]) -> Result<Task, TaskUpdateError> {
    let mut rest = payload;
    let declared = prost::decode_length_delimiter(&mut rest)?;
    if declared != rest.len() {
        return Err(TaskUpdateError::LengthMismatch {
            declared,
            actual: rest.len(),
        });
    }
    let mut task = Task::decode(rest)?;
    task.access_token = None;
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_with_token() -> Task {
        Task {
            name: "store".into(),
            receiver: Some("12D3KooWReceiver".into()),
            endpoint: domain_proto::protocols::STORE_V1.into(),
            access_token: Some("secret".into()),
            job_id: "job-1".into(),
            sender: "12D3KooWSender".into(),
            status: domain_proto::task::Status::Done as i32,
            output: None,
        }
    }

    #[test]
    fn task_updates_travel_without_their_access_token() {
        let task = task_with_token();
        let payload = encode_task_update(&task).unwrap();
        let decoded = decode_task_update(&payload).unwrap();
        assert_eq!(
            decoded,
            Task {
                access_token: None,
                ..task
            }
        );
        let body = Task::decode_length_delimited(payload.as_slice()).unwrap();
        assert_eq!(body.access_token, None);
    }

    #[test]
    fn a_gossiped_token_is_dropped_on_receipt() {
        let task = task_with_token();
        let mut payload = Vec::new();
        task.encode_length_delimited(&mut payload).unwrap();
        assert_eq!(decode_task_update(&payload).unwrap().access_token, None);
    }

    proptest::proptest! {
        #[test]
        fn any_task_update_round_trips_without_its_token(
            name in ".{0,40}",
            receiver in proptest::option::of(".{0,60}"),
            token in proptest::option::of(".{0,200}"),
            job_id in "[0-9a-f]{0,64}",
            status in 0i32..7,
        ) {
            let task = Task {
                name,
                receiver,
                endpoint: domain_proto::protocols::LOAD_V1.into(),
                access_token: token,
                job_id,
                sender: "12D3KooWSender".into(),
                status,
                output: None,
            };
            let decoded = decode_task_update(&encode_task_update(&task).unwrap()).unwrap();
            proptest::prop_assert_eq!(decoded, Task { access_token: None, ..task });
        }

        #[test]
        fn arbitrary_payloads_decode_or_fail_without_panicking(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_task_update(&payload);
        }
    }

    #[test]
    fn a_payload_without_its_length_prefix_is_refused() {
        let task = task_with_token();
        assert!(decode_task_update(&task.encode_to_vec()).is_err());
        let mut payload = encode_task_update(&task).unwrap();
        payload.push(0);
        assert!(decode_task_update(&payload).is_err());
        assert!(decode_task_update(&[]).is_err());
    }
}
