//! Raw libp2p streams, adapted to Tokio's I/O traits.
//!
//! libp2p streams implement the `futures` I/O traits; the capability handlers
//! and the framing of domain-proto are written against Tokio's, so every stream
//! handed out here is wrapped in [`tokio_util::compat::Compat`]. Shutting down
//! its write half closes the libp2p stream for writing, which is how a
//! `/public-key/v1` requester signals the end of its request.
//!
//! Every stream also fails as soon as its connection is gone ([`PeerStream`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt as _};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A stream to a peer, readable and writable with Tokio's `AsyncRead`/`AsyncWrite`.
pub type ClusterStream = Compat<PeerStream>;

/// Wraps a libp2p stream for Tokio I/O.
pub(crate) fn compat(stream: PeerStream) -> ClusterStream {
    stream.compat()
}

/// A libp2p stream that fails once its connection is gone.
///
/// yamux 0.14 wakes the pending reads and writes of a connection's streams when the
/// remote ends it, but not when this side closes it (`ClusterHandle::disconnect`, a
/// connection limit, shutting down): they would sleep until the idle timeout, holding a
/// stream permit and, on `/store/v1`, the upload's resume key. The connection's handler
/// cancels `gone` when it is dropped, which happens once the connection is closed
/// either way; a read or write waiting then fails with `ConnectionReset`.
pub struct PeerStream {
    inner: libp2p::Stream,
    gone: CancellationToken,
    waiting: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl PeerStream {
    pub(crate) fn new(inner: libp2p::Stream, gone: CancellationToken) -> Self {
        let waiting = Box::pin(gone.clone().cancelled_owned());
        Self {
            inner,
            gone,
            waiting,
        }
    }

    /// What a pending operation gives: the connection's end, if it came.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.gone.is_cancelled() || self.waiting.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the connection is closed",
            )));
        }
        Poll::Pending
    }
}

impl std::fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStream")
            .field("inner", &self.inner)
            .field("gone", &self.gone.is_cancelled())
            .finish()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => this.pending(cx),
            ready => ready,
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => this.pending(cx),
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.pending(cx),
            ready => ready,
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_close(cx) {
            Poll::Pending => this.pending(cx),
            ready => ready,
        }
    }
}

/// Inbound streams of one protocol, as `(remote peer, stream)` pairs.
///
/// Up to [`accept_backlog`](crate::config::ClusterConfig::accept_backlog)
/// streams wait here for the consumer; past that, new ones are refused (the
/// opener sees its stream reset), so the consumer should hand each stream to
/// a task of its own. Dropping it stops accepting the protocol.
#[must_use = "inbound streams are refused unless this is polled"]
pub struct IncomingStreams {
    inner: mpsc::Receiver<(PeerId, PeerStream)>,
}

impl IncomingStreams {
    pub(crate) fn new(inner: mpsc::Receiver<(PeerId, PeerStream)>) -> Self {
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
