//! Raw libp2p streams, adapted to Tokio's I/O traits.
//!
//! libp2p streams implement the `futures` I/O traits; the capability handlers
//! and the framing of domain-proto are written against Tokio's, so every stream
//! handed out here is wrapped in [`tokio_util::compat::Compat`]. Shutting down
//! its write half closes the libp2p stream for writing, which is how a
//! `/public-key/v1` requester signals the end of its request.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use libp2p::PeerId;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt as _};

/// A stream to a peer, readable and writable with Tokio's `AsyncRead`/`AsyncWrite`.
pub type ClusterStream = Compat<libp2p::Stream>;

/// Wraps a libp2p stream for Tokio I/O.
pub(crate) fn compat(stream: libp2p::Stream) -> ClusterStream {
    stream.compat()
}

/// Inbound streams of one protocol, as `(remote peer, stream)` pairs.
///
/// Dropping it stops accepting: later streams of the protocol are refused.
/// libp2p-stream keeps at most one inbound stream waiting per protocol and
/// drops the ones that arrive while it is taken, so the consumer should hand
/// each stream to a task of its own and come back for the next at once.
#[must_use = "inbound streams are refused unless this is polled"]
pub struct IncomingStreams {
    inner: libp2p_stream::IncomingStreams,
}

impl IncomingStreams {
    pub(crate) fn new(inner: libp2p_stream::IncomingStreams) -> Self {
        Self { inner }
    }

    /// The next inbound stream, or `None` once the cluster has shut down.
    pub async fn next(&mut self) -> Option<(PeerId, ClusterStream)> {
        StreamExt::next(self).await
    }
}

impl futures::Stream for IncomingStreams {
    type Item = (PeerId, ClusterStream);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner
            .poll_next_unpin(cx)
            .map(|next| next.map(|(peer, stream)| (peer, compat(stream))))
    }
}

impl std::fmt::Debug for IncomingStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStreams").finish_non_exhaustive()
    }
}
