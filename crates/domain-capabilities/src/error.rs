//! The error of every capability handler and client.

use std::io;
use std::time::Duration;

use domain_auth::Rejection;
use domain_datastore::{DatastoreError, SubscriptionError};
use domain_merkle::Root;
use domain_proto::FrameError;
use domain_proto::InvalidDomainId;

use crate::idle::{Direction, idle_elapsed};

/// Why a capability stream failed. The stream is lost; nothing else is.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// The receiver accepted the token but serves as many task streams as it may: the
    /// stream is dropped unanswered and the token left for another try.
    #[error("the receiver serves as many task streams as it may")]
    Busy,
    /// The peer moved no byte for the idle period.
    #[error("peer idle for {idle:?} while {during} ({direction})")]
    Idle {
        /// The idle limit.
        idle: Duration,
        /// Which way the stalled bytes were going.
        direction: Direction,
        /// What this side was doing.
        during: &'static str,
    },
    /// The stream failed.
    #[error("stream failed while {during}")]
    Io {
        /// What this side was doing.
        during: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A frame was malformed, oversized or cut short.
    #[error("bad frame while {during}")]
    Frame {
        /// What this side was doing.
        during: &'static str,
        /// What was wrong with the frame.
        #[source]
        source: FrameError,
    },
    /// The peer closed the stream before the exchange was over.
    #[error("the peer closed the stream while {during}")]
    Closed {
        /// What this side was doing.
        during: &'static str,
    },
    /// The peer sent something the protocol does not allow at this point.
    #[error("unexpected {what} while {during}")]
    Unexpected {
        /// What this side was doing.
        during: &'static str,
        /// What arrived.
        what: &'static str,
    },
    /// The receiver refused the handshake (its message, or that it closed the stream).
    #[error("the receiver refused the handshake: {message}")]
    Refused {
        /// The receiver's reason.
        message: String,
    },
    /// The opener's token was refused (this side is the receiver).
    #[error("task token refused")]
    Rejected(#[from] Rejection),
    /// The opener's token is valid but opened a stream already (this side is the
    /// receiver): one is open, or one ended well.
    #[error("task token refused")]
    Replayed(#[from] crate::ledger::Replay),
    /// The handshake names a domain id that cannot be a domain.
    #[error("handshake names an invalid domain")]
    InvalidDomain(#[from] InvalidDomainId),
    /// The domain's public key could not be had, so no token can be checked.
    #[error("no public key for domain {domain_id}: {reason}")]
    NoPublicKey {
        /// The domain.
        domain_id: String,
        /// Why the key source failed.
        reason: String,
    },
    /// The task stream was opened on a protocol with no handler here.
    #[error("no task handler for protocol {protocol:?}")]
    UnsupportedProtocol {
        /// The protocol id.
        protocol: String,
    },
    /// A resume prefix that is not a whole number of chunks: a receiver can only
    /// continue a transfer at a chunk boundary.
    #[error("a resume prefix of {len} bytes is not a whole number of 7168-byte chunks")]
    PartialChunk {
        /// The prefix's length.
        len: u64,
    },
    /// Content announced `expected` bytes and the stream ended after `got`.
    #[error("content of {name:?} cut short: {got} of {expected} bytes arrived")]
    Truncated {
        /// The item's name.
        name: String,
        /// The announced size.
        expected: u64,
        /// The bytes that arrived.
        got: u64,
    },
    /// The content given to send ended before `size` bytes.
    #[error("content of {name:?} has {got} bytes, but its size says {expected}")]
    ContentTooShort {
        /// The item's name.
        name: String,
        /// The announced size.
        expected: u64,
        /// The bytes the content had.
        got: u64,
    },
    /// Content larger than the `u32` size field can announce (a `/v2` matter).
    #[error("{len} bytes is larger than an item can be (4 GiB - 1)")]
    ItemTooLarge {
        /// The content length.
        len: u64,
    },
    /// The receiver's Merkle root differs from the sender's: the transfer is not proven.
    #[error("Merkle root mismatch for {name:?}: sent {local}, receiver has {remote}")]
    RootMismatch {
        /// The item's name.
        name: String,
        /// The root this side computed.
        local: Root,
        /// The root the peer announced.
        remote: String,
    },
    /// The peer's metadata has no Merkle root where one is required.
    #[error("metadata of {name:?} carries no Merkle root")]
    MissingRoot {
        /// The item's name.
        name: String,
    },
    /// The peer's metadata contradicts the item sent.
    #[error("metadata of {name:?} says {got} bytes, {expected} were sent")]
    SizeMismatch {
        /// The item's name.
        name: String,
        /// The bytes sent.
        expected: u64,
        /// The size the peer announced.
        got: u64,
    },
    /// A resume key that is empty or longer than [`MAX_RESUME_KEY_LEN`](crate::MAX_RESUME_KEY_LEN).
    #[error(
        "a resume key of {len} bytes: it must be 1 to {} bytes",
        crate::MAX_RESUME_KEY_LEN
    )]
    BadResumeKey {
        /// The key's length.
        len: usize,
    },
    /// A `/public-key/v1` answer that is not 32 bytes.
    #[error("public key answer of {len} bytes (expected 32)")]
    BadPublicKey {
        /// Bytes received.
        len: usize,
    },
    /// A `/public-key/v1` request that is not a domain id of at most 256 UTF-8 bytes.
    #[error("bad public key request: {reason}")]
    BadKeyRequest {
        /// What was wrong.
        reason: String,
    },
    /// This side's Merkle hashing thread failed (it panicked, a bug).
    #[error("the Merkle hashing thread failed")]
    Hashing(#[source] tokio::task::JoinError),
    /// The local datastore failed.
    #[error("datastore")]
    Datastore(#[source] DatastoreError),
    /// A keep-alive subscription fell behind and lost items; the consumer must reload.
    #[error("subscription dropped")]
    Lagged(#[from] SubscriptionError),
}

impl CapabilityError {
    /// Classifies a stream error: idle timeouts become [`CapabilityError::Idle`].
    pub(crate) fn io(during: &'static str, source: io::Error) -> Self {
        match idle_elapsed(&source) {
            Some(elapsed) => Self::Idle {
                idle: elapsed.idle,
                direction: elapsed.direction,
                during,
            },
            None if source.kind() == io::ErrorKind::UnexpectedEof => Self::Closed { during },
            None => Self::Io { during, source },
        }
    }

    /// Classifies a frame error: stream failures inside it are classified as [`io`](Self::io).
    pub(crate) fn frame(during: &'static str, source: FrameError) -> Self {
        match source {
            FrameError::Io(err) => Self::io(during, err),
            FrameError::Truncated { got: 0, .. } => Self::Closed { during },
            source => Self::Frame { during, source },
        }
    }

    /// Classifies a datastore error: failures reading the stream are stream failures.
    pub(crate) fn datastore(during: &'static str, name: &str, source: DatastoreError) -> Self {
        match source {
            DatastoreError::ReadContent { source, .. } => Self::io(during, source),
            DatastoreError::SizeMismatch { expected, got } if got < u64::from(expected) => {
                Self::Truncated {
                    name: name.to_owned(),
                    expected: expected.into(),
                    got,
                }
            }
            source => Self::Datastore(source),
        }
    }
}
