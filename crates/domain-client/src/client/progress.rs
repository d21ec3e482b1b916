//! Watching transfers as they run: the [`Progress`] trait and the byte counter that
//! feeds it.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Told about each item a [`Client`](super::Client) sends or receives, as it goes (the
/// `domain` command draws progress bars with it).
///
/// Calls come from the task doing the transfer, between its reads and writes: keep
/// them quick. An item retried on another node starts again.
pub trait Progress: Send + Sync + fmt::Debug {
    /// An item of `size` bytes starts.
    fn started(&self, name: &str, size: u64);
    /// `bytes` more bytes of the current item have passed.
    fn advanced(&self, bytes: u64);
    /// The current item is done, its root checked.
    fn finished(&self, name: &str);

    /// The upload of the current item continued after the first `offset` bytes, which
    /// the node had kept from an earlier attempt that was cut. (Those bytes were read
    /// here, and counted by [`advanced`](Self::advanced), to check them against the
    /// node's.)
    fn resumed(&self, name: &str, offset: u64) {
        let _ = (name, offset);
    }

    /// The current item's bytes go again from byte `offset` of its content: the node's
    /// kept bytes turned out not to be this content's, so it is sent whole.
    fn rewound(&self, offset: u64) {
        let _ = offset;
    }
}

/// A reader or writer that tells a [`Progress`] of the bytes passing through it.
#[derive(Debug)]
pub struct Counted<'p, T> {
    inner: T,
    progress: Option<&'p dyn Progress>,
    count: u64,
}

impl<'p, T> Counted<'p, T> {
    /// Counts what passes through `inner`, telling `progress` (when given) of each step.
    pub fn new(inner: T, progress: Option<&'p dyn Progress>) -> Self {
        Self {
            inner,
            progress,
            count: 0,
        }
    }

    /// Bytes passed so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    fn add(&mut self, bytes: usize) {
        self.count += bytes as u64;
        if let Some(progress) = self.progress.filter(|_| bytes > 0) {
            progress.advanced(bytes as u64);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.add(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncSeek + Unpin> AsyncSeek for Counted<'_, T> {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.get_mut().inner).start_seek(position)
    }

    /// A seek moves the count to the new position: the bytes from there pass again.
    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        let position = ready!(Pin::new(&mut this.inner).poll_complete(cx))?;
        if position != this.count {
            this.count = position;
            if let Some(progress) = this.progress {
                progress.rewound(position);
            }
        }
        Poll::Ready(Ok(position))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.add(written);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[derive(Debug, Default)]
    struct Tally(Mutex<u64>);

    impl Progress for Tally {
        fn started(&self, _: &str, _: u64) {}
        fn advanced(&self, bytes: u64) {
            *self.0.lock().unwrap() += bytes;
        }
        fn finished(&self, _: &str) {}
    }

    #[tokio::test]
    async fn every_byte_read_or_written_is_counted_once() {
        let tally = Tally::default();
        let data = vec![5_u8; 100_000];
        let mut reader = Counted::new(&data[..], Some(&tally));
        let mut copy = Vec::new();
        reader.read_to_end(&mut copy).await.unwrap();
        assert_eq!(reader.count(), 100_000);

        let mut writer = Counted::new(Vec::new(), Some(&tally));
        writer.write_all(&copy).await.unwrap();
        assert_eq!(writer.count(), 100_000);
        assert_eq!(*tally.0.lock().unwrap(), 200_000);
    }
}
