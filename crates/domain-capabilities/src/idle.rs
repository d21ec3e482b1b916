//! The idle timeout of every task stream (docs/design.md §9): a peer that sends or accepts
//! no byte for the idle period loses its stream.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The error inside the [`io::Error`] (kind [`io::ErrorKind::TimedOut`]) that an
/// [`IdleTimeout`] stream returns when its peer stalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer moved no byte for {idle:?}")]
pub struct IdleElapsed {
    /// The idle limit that passed.
    pub idle: Duration,
    /// Which way the stalled bytes were going.
    pub direction: Direction,
}

/// A direction of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bytes coming from the peer.
    Read,
    /// Bytes going to the peer.
    Write,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
        })
    }
}

/// One direction's timer. The clock starts when a poll finds the peer not ready and
/// stops at the next byte, so time this side spends on its own work never counts.
struct Timer {
    idle: Duration,
    /// Made on the first wait, so a stream that never waits never allocates one.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Wait without limit until the next byte (a keep-alive wait between messages).
    patient: bool,
    direction: Direction,
}

impl Timer {
    fn new(idle: Duration, direction: Direction) -> Self {
        Self {
            idle,
            sleep: None,
            armed: false,
            patient: false,
            direction,
        }
    }

    fn progress(&mut self) {
        self.armed = false;
        self.patient = false;
    }

    /// Called when the inner stream is not ready: `Err` once the idle period has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.patient {
            return Ok(());
        }
        if !self.armed {
            let deadline = Instant::now() + self.idle;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let Some(sleep) = self.sleep.as_mut() else {
            return Ok(());
        };
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                IdleElapsed {
                    idle: self.idle,
                    direction: self.direction,
                },
            )),
            Poll::Pending => Ok(()),
        }
    }
}

pin_project! {
    /// A stream that fails a read or write with [`io::ErrorKind::TimedOut`] (carrying
    /// [`IdleElapsed`]) when the peer has moved no byte for the idle period.
    ///
    /// Each direction has its own clock. [`wait_patiently`](Self::wait_patiently)
    /// lifts the limit until the next byte arrives, for waits that may legitimately
    /// last (a keep-alive subscription between items); the limit applies again from
    /// that byte on, so a peer cannot stall inside a message.
    pub struct IdleTimeout<S> {
        #[pin]
        inner: S,
        read: Timer,
        write: Timer,
    }
}

impl<S> IdleTimeout<S> {
    /// Wraps `inner` with an idle limit of `idle` in each direction.
    pub fn new(inner: S, idle: Duration) -> Self {
        Self {
            inner,
            read: Timer::new(idle, Direction::Read),
            write: Timer::new(idle, Direction::Write),
        }
    }

    /// Lets the next read wait without limit until a byte arrives.
    pub fn wait_patiently(&mut self) {
        self.read.patient = true;
    }

    /// The idle limit.
    pub fn idle(&self) -> Duration {
        self.read.idle
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> fmt::Debug for IdleTimeout<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleTimeout")
            .field("idle", &self.read.idle)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.read.progress();
                Poll::Ready(result)
            }
            Poll::Pending => this
                .read
                .poll_expired(cx)
                .map_or_else(|e| Poll::Ready(Err(e)), |()| Poll::Pending),
        }
    }
}

impl<S: AsyncWrite> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.write.progress();
                Poll::Ready(result)
            }
            Poll::Pending => this
                .write
                .poll_expired(cx)
                .map_or_else(|e| Poll::Ready(Err(e)), |()| Poll::Pending),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.write.progress();
                Poll::Ready(result)
            }
            Poll::Pending => this
                .write
                .poll_expired(cx)
                .map_or_else(|e| Poll::Ready(Err(e)), |()| Poll::Pending),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.inner.poll_flush(cx) {
            Poll::Ready(result) => {
                this.write.progress();
                Poll::Ready(result)
            }
            Poll::Pending => this
                .write
                .poll_expired(cx)
                .map_or_else(|e| Poll::Ready(Err(e)), |()| Poll::Pending),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.inner.poll_shutdown(cx) {
            Poll::Ready(result) => {
                this.write.progress();
                Poll::Ready(result)
            }
            Poll::Pending => this
                .write
                .poll_expired(cx)
                .map_or_else(|e| Poll::Ready(Err(e)), |()| Poll::Pending),
        }
    }
}

/// The [`IdleElapsed`] inside `err`, if it is an idle timeout.
pub(crate) fn idle_elapsed(err: &io::Error) -> Option<IdleElapsed> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<IdleElapsed>())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_the_read_after_the_idle_period() {
        let (_peer, local) = tokio::io::duplex(64);
        let mut stream = IdleTimeout::new(local, Duration::from_secs(30));
        let started = Instant::now();
        let err = stream.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            idle_elapsed(&err),
            Some(IdleElapsed {
                idle: Duration::from_secs(30),
                direction: Direction::Read
            })
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn each_byte_restarts_the_clock() {
        let (mut peer, local) = tokio::io::duplex(64);
        let mut stream = IdleTimeout::new(local, Duration::from_secs(30));
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                peer.write_all(b"x").await.unwrap();
            }
            // Then stall, keeping the stream open.
            std::future::pending::<()>().await;
        });
        let started = Instant::now();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        let err = loop {
            match stream.read(&mut byte).await {
                Ok(n) => got.extend_from_slice(&byte[..n]),
                Err(err) => break err,
            }
        };
        assert_eq!(got, b"xxxxx");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(100 + 30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_patient_wait_lasts_until_the_next_byte_then_the_limit_applies_again() {
        let (mut peer, local) = tokio::io::duplex(64);
        let mut stream = IdleTimeout::new(local, Duration::from_secs(30));
        stream.wait_patiently();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            peer.write_all(b"late").await.unwrap();
            std::future::pending::<()>().await;
        });
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"late");
        let started = Instant::now();
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_times_out_the_write() {
        let (_peer, local) = tokio::io::duplex(16);
        let mut stream = IdleTimeout::new(local, Duration::from_secs(5));
        let err = stream.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            idle_elapsed(&err).map(|e| e.direction),
            Some(Direction::Write)
        );
    }
}
