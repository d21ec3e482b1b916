//! Async adapters that build the Merkle root of the bytes passing through them.
//!
//! Both hash on the task's own thread with [`MerkleBuilder::update`]: the bytes are hot in
//! cache right after the read or write, and a poll must not block on a thread pool.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{MerkleBuilder, Root};

pin_project! {
    /// An [`AsyncRead`] that builds the Merkle root of the bytes read through it: the
    /// receiving side of a transfer.
    ///
    /// Every byte the inner reader delivers is hashed once, straight from the caller's
    /// buffer. Writes, when the inner type is also an [`AsyncWrite`], pass through unhashed.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// use domain_merkle::{HashingReader, root_of};
    /// use tokio::io::AsyncReadExt;
    ///
    /// let data = vec![42_u8; 20_000];
    /// let mut reader = HashingReader::new(&data[..]);
    /// let mut received = Vec::new();
    /// reader.read_to_end(&mut received).await?;
    /// assert_eq!(reader.bytes_read(), 20_000);
    /// assert_eq!(reader.root(), root_of(&data));
    /// # Ok::<(), std::io::Error>(())
    /// # })?;
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct HashingReader<R> {
        #[pin]
        inner: R,
        builder: MerkleBuilder,
    }
}

impl<R> HashingReader<R> {
    /// Wraps `inner`; nothing has been read yet.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            builder: MerkleBuilder::new(),
        }
    }

    /// The root of the bytes read so far.
    #[must_use]
    pub fn root(&self) -> Root {
        self.builder.finalize()
    }

    /// The number of bytes read so far.
    #[must_use]
    pub fn bytes_read(&self) -> u64 {
        self.builder.len()
    }

    /// The inner reader. Reading from it directly bypasses the hash.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Unwraps the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead> AsyncRead for HashingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.inner.poll_read(cx, buf))?;
        this.builder.update(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncWrite> AsyncWrite for HashingReader<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

pin_project! {
    /// An [`AsyncWrite`] that builds the Merkle root of the bytes written through it: the
    /// sending side of a transfer.
    ///
    /// Only the bytes the inner writer accepted are hashed, so after a short write the
    /// root still matches what went out. Reads, when the inner type is also an
    /// [`AsyncRead`], pass through unhashed.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
    /// use domain_merkle::{HashingWriter, root_of};
    /// use tokio::io::AsyncWriteExt;
    ///
    /// let data = vec![42_u8; 20_000];
    /// let mut writer = HashingWriter::new(Vec::new());
    /// writer.write_all(&data).await?;
    /// assert_eq!(writer.bytes_written(), 20_000);
    /// assert_eq!(writer.root(), root_of(&data));
    /// assert_eq!(writer.into_inner(), data);
    /// # Ok::<(), std::io::Error>(())
    /// # })?;
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct HashingWriter<W> {
        #[pin]
        inner: W,
        builder: MerkleBuilder,
    }
}

impl<W> HashingWriter<W> {
    /// Wraps `inner`; nothing has been written yet.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            builder: MerkleBuilder::new(),
        }
    }

    /// The root of the bytes written so far.
    #[must_use]
    pub fn root(&self) -> Root {
        self.builder.finalize()
    }

    /// The number of bytes the inner writer has accepted so far.
    #[must_use]
    pub fn bytes_written(&self) -> u64 {
        self.builder.len()
    }

    /// The inner writer. Writing to it directly bypasses the hash.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Unwraps the inner writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: AsyncWrite> AsyncWrite for HashingWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let written = ready!(this.inner.poll_write(cx, buf))?;
        // A writer that claims more than it was given is broken; hash what it was given.
        this.builder.update(&buf[..written.min(buf.len())]);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let written = ready!(this.inner.poll_write_vectored(cx, bufs))?;
        let mut unhashed = written;
        for buf in bufs {
            if unhashed == 0 {
                break;
            }
            let accepted = unhashed.min(buf.len());
            this.builder.update(&buf[..accepted]);
            unhashed -= accepted;
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

impl<W: AsyncRead> AsyncRead for HashingWriter<W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}
