//! Raw libp2p streams, adapted to Tokio's I/O traits.
//!
//! libp2p streams implement the `futures` I/O traits; the capability handlers
//! and the framing of domain-proto are written against Tokio's, so every stream
//! handed out here is wrapped in [`tokio_util::compat::Compat`]. Shutting down
//! its write half closes the libp2p stream for writing, which is how a
//! `/public-key/v1` requester signals the end of its request.

use std::pin::Pin;
use std::task::{Context, Poll};

use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt as _};

/// A stream to a peer, readable and writable with Tokio's `AsyncRead`/`AsyncWrite`.
pub type ClusterStream = Compat<libp2p::Stream>;

/// Wraps a libp2p stream for Tokio I/O.
pub(crate) fn compat(stream: libp2p::Stream) -> ClusterStream {
    stream.compat()
}

/// Inbound streams of one protocol, as `(remote peer, stream)` pairs.
///
/// Up to [`accept_backlog`](crate::config::ClusterConfig::accept_backlog)
/// streams wait here for the consumer; past that, new ones are refused (the
/// opener sees its stream reset), so the consumer should hand each stream to
/// a task of its own. Dropping it stops accepting the protocol.
#[must_use = "inbound streams are refused unless this is polled"]
pub struct IncomingStreams {
    inner: mpsc::Receiver<(PeerId, libp2p::Stream)>,
}

impl IncomingStreams {
    pub(crate) fn new(inner: mpsc::Receiver<(PeerId, libp2p::Stream)>) -> Self {
        Self { inner }
    }

    /// The next inbound stream, or `None` once the cluster has shut down.
    pub async fn next(&mut self) -> Option<(PeerId, ClusterStream)> {
        self.inner
            .recv()
            .await
            .map(|(peer, stream)| (peer, compat(stream)))
    }
}

impl futures::Stream for IncomingStreams {
    type Item = (PeerId, ClusterStream);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner
            .poll_recv(cx)
            .map(|next| next.map(|(peer, stream)| (peer, compat(stream))))
    }
}

impl std::fmt::Debug for IncomingStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStreams").finish_non_exhaustive()
    }
}
