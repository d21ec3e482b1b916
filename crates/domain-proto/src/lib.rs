//! Wire messages, framing and protocol ids of the posemesh domain protocol v1.
//!
//! Everything that crosses a stream between domain-cluster peers is defined here,
//! and nothing here knows of libp2p: the framing works over any
//! [`AsyncRead`](tokio::io::AsyncRead) / [`AsyncWrite`](tokio::io::AsyncWrite).
//!
//! - [`discovery`], [`domain_data`] and [`task`]: the protobuf messages, generated
//!   at build time from `proto/*.proto` (proto2, the field numbers of posemesh).
//! - [`framing`]: one message per frame, a 4-byte big-endian length then the message
//!   in length-delimited form; [`read_message`] checks every length before it
//!   allocates and names each way a frame can be malformed in [`FrameError`].
//! - [`protocols`]: the stream protocol ids (`/store/v1`, …) and libp2p protocol names.
//! - [`DomainId`]: a domain id, validated once by the one rule every part applies.
//! - [`ErrorChain`]: an error and its causes on one line, for logs and answers to peers.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! use domain_proto::{read_message, write_message, task, DEFAULT_MAX_FRAME};
//!
//! let (mut a, mut b) = tokio::io::duplex(1024);
//! let hello = task::DomainClusterHandshakeRequest {
//!     access_token: "token".into(),
//!     domain_id: "my-domain".into(),
//! };
//! write_message(&mut a, &hello).await?;
//! let got: task::DomainClusterHandshakeRequest = read_message(&mut b, DEFAULT_MAX_FRAME).await?;
//! assert_eq!(got, hello);
//! # Ok::<_, domain_proto::FrameError>(())
//! # })?;
//! # Ok(())
//! # }
//! ```

mod any;
mod domain_id;
mod error_chain;
pub use any::{DELETE_INPUT, REPLICATE_INPUT};
pub use domain_id::{DomainId, InvalidDomainId, MAX_DOMAIN_ID_LEN};
pub use error_chain::ErrorChain;
pub mod framing;
pub mod protocols;
pub mod wire;

pub use framing::{
    DEFAULT_MAX_FRAME, Frame, FrameError, encode_frame, read_frame, read_message,
    read_message_or_eof, write_message,
};

/// Messages of package `discovery`: how a node joins a cluster.
#[allow(missing_docs, clippy::all)]
pub mod discovery {
    include!(concat!(env!("OUT_DIR"), "/discovery.rs"));
}

/// Messages of package `domain_data`: items, their metadata and queries.
#[allow(missing_docs, clippy::all)]
pub mod domain_data {
    include!(concat!(env!("OUT_DIR"), "/domain_data.rs"));
}

/// Messages of package `task`: jobs, tasks, the task-stream handshake.
#[allow(missing_docs, clippy::all)]
pub mod task {
    include!(concat!(env!("OUT_DIR"), "/task.rs"));
}
