//! [`ReadAhead`]: a file read by a thread of its own ahead of the stream that sends it.
//!
//! `tokio::fs::File` reads one buffer at a time and only when asked, so a sender waits
//! for the disk (or the page cache's copy) between network writes. A [`ReadAhead`] keeps
//! a thread reading the next batches while the current one is sent: the disk and the
//! network work at once, with at most [`AHEAD`] batches in memory. Read as an
//! [`AsyncBufRead`], it lends its batches: a sender writes from them, copying nothing.
//! The client reads the files it uploads this way, and the local datastore the blobs it
//! serves.

use std::io::{self, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncSeek, ReadBuf};
use tokio::sync::mpsc;

/// Bytes the reading thread reads at a time.
const BATCH: usize = 1 << 20;

/// Batches read and not yet sent, at most.
pub const AHEAD: usize = 2;

/// A file's bytes (or the first `len` of them from an offset), read by a thread of its
/// own up to [`AHEAD`] batches of 1 MiB ahead; a short read needs no more memory than
/// it reads.
///
/// Seeking (what a resumed upload does when the receiver's kept bytes turn out not to be
/// this file's) starts a new thread at the new position; the old one stops at its next
/// batch.
///
/// Must be used within a Tokio runtime.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # tokio::runtime::Builder::new_multi_thread().build()?.block_on(async {
/// use tokio::io::AsyncReadExt as _;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("scan.ply");
/// std::fs::write(&path, b"ply, then the rest")?;
/// let mut read = String::new();
/// domain_datastore::ReadAhead::open(&path).await?.read_to_string(&mut read).await?;
/// assert_eq!(read, "ply, then the rest");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ReadAhead {
    file: Arc<std::fs::File>,
    batches: mpsc::Receiver<io::Result<Vec<u8>>>,
    /// Sent batches go back to the thread, which reads into them again.
    spent: std::sync::mpsc::SyncSender<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
    /// The file offset of the next byte read.
    position: u64,
    /// Where the bytes to read end: the end of the file, or sooner.
    end: u64,
    /// Where a seek started and not yet completed goes.
    seeking: Option<u64>,
}

impl ReadAhead {
    /// Opens the file at `path` and starts reading it, to its end.
    ///
    /// # Errors
    /// The open's.
    pub async fn open(path: &Path) -> io::Result<Self> {
        let path = path.to_owned();
        let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .map_err(io::Error::other)??;
        Ok(Self::new(file, 0, u64::MAX))
    }

    /// Starts reading `len` bytes of `file` from `offset` (fewer if the file ends first).
    pub fn new(file: std::fs::File, offset: u64, len: u64) -> Self {
        let file = Arc::new(file);
        let end = offset.saturating_add(len);
        let (batches, spent) = read_from(Arc::clone(&file), offset, end);
        Self {
            file,
            batches,
            spent,
            current: Vec::new(),
            at: 0,
            position: offset,
            end,
            seeking: None,
        }
    }
}

/// Starts a thread reading `file` from `offset` up to `end`, [`AHEAD`] batches ahead at
/// most.
fn read_from(
    file: Arc<std::fs::File>,
    offset: u64,
    end: u64,
) -> (
    mpsc::Receiver<io::Result<Vec<u8>>>,
    std::sync::mpsc::SyncSender<Vec<u8>>,
) {
    let (tx, batches) = mpsc::channel(AHEAD);
    let (spent, reuse) = std::sync::mpsc::sync_channel::<Vec<u8>>(AHEAD + 1);
    tokio::task::spawn_blocking(move || {
        let mut offset = offset;
        loop {
            let want =
                usize::try_from(end.saturating_sub(offset)).map_or(BATCH, |left| left.min(BATCH));
            let mut batch = reuse.try_recv().unwrap_or_default();
            batch.resize(want, 0);
            let read = read_full_at(&file, &mut batch, offset).map(|n| {
                batch.truncate(n);
                batch
            });
            let end = matches!(&read, Ok(batch) if batch.is_empty()) || read.is_err();
            if let Ok(batch) = &read {
                offset += batch.len() as u64;
            }
            // A closed channel: the reader was dropped (or sought), so the thread stops.
            if tx.blocking_send(read).is_err() || end {
                return;
            }
        }
    });
    (batches, spent)
}

/// Reads at `offset` until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl AsyncBufRead for ReadAhead {
    /// The rest of the batch at hand: a sender writes from it without copying it first.
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.at == this.current.len() {
            match ready!(this.batches.poll_recv(cx)) {
                Some(Ok(batch)) => {
                    let spent = std::mem::replace(&mut this.current, batch);
                    let _ = this.spent.try_send(spent);
                    this.at = 0;
                }
                Some(Err(error)) => return Poll::Ready(Err(error)),
                // The file ended (an empty batch came first, then the thread left).
                None => return Poll::Ready(Ok(&[])),
            }
        }
        Poll::Ready(Ok(&this.current[this.at..]))
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        let amt = amt.min(self.current.len() - self.at);
        self.at += amt;
        self.position += amt as u64;
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = buf.remaining().min(available.len());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for ReadAhead {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let target = match position {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
            SeekFrom::End(delta) => self.file.metadata()?.len().checked_add_signed(delta),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        self.seeking = Some(target);
        Ok(())
    }

    fn poll_complete(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = &mut *self;
        if let Some(target) = this.seeking.take() {
            if target != this.position {
                // Dropping the old channels stops the old thread at its next batch.
                (this.batches, this.spent) = read_from(Arc::clone(&this.file), target, this.end);
                this.current.clear();
                this.at = 0;
                this.position = target;
            }
        }
        Poll::Ready(Ok(this.position))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// Empty, one byte, one batch exactly, and batches with a tail.
    const SIZES: &[usize] = &[0, 1, BATCH, 3 * BATCH + 17];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_byte_of_the_file_comes_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for &size in SIZES {
            let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &bytes).unwrap();
            let mut read = Vec::new();
            ReadAhead::open(&path)
                .await
                .unwrap()
                .read_to_end(&mut read)
                .await
                .unwrap();
            assert!(read == bytes, "{size} bytes");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_seek_goes_on_from_the_new_position() {
        use tokio::io::AsyncSeekExt as _;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..3 * BATCH + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mut reader = ReadAhead::open(&path).await.unwrap();
        let mut head = vec![0; BATCH + 3];
        reader.read_exact(&mut head).await.unwrap();
        assert_eq!(reader.stream_position().await.unwrap(), BATCH as u64 + 3);
        // Back to the start, as a resumed upload does when its prefix differs.
        reader.seek(SeekFrom::Start(0)).await.unwrap();
        let mut all = Vec::new();
        reader.read_to_end(&mut all).await.unwrap();
        assert!(all == bytes);
        reader.seek(SeekFrom::End(-5)).await.unwrap();
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, bytes[bytes.len() - 5..]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_ends_after_its_bytes_or_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..2 * BATCH + 9).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        // Inside one batch, across a batch boundary, past the end of the file.
        for (offset, len) in [(3, 10), (BATCH - 2, BATCH + 4), (BATCH, 5 * BATCH)] {
            let file = std::fs::File::open(&path).unwrap();
            let mut read = Vec::new();
            ReadAhead::new(file, offset as u64, len as u64)
                .read_to_end(&mut read)
                .await
                .unwrap();
            let end = (offset + len).min(bytes.len());
            assert!(read == bytes[offset..end], "{len} bytes from {offset}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lent_batches_carry_every_byte_and_mix_with_reads() {
        use tokio::io::AsyncBufReadExt as _;

        let dir = tempfile::tempdir().unwrap();
        for &size in SIZES {
            let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &bytes).unwrap();
            let mut reader = ReadAhead::open(&path).await.unwrap();
            let mut read = Vec::new();
            loop {
                let lent = reader.fill_buf().await.unwrap();
                if lent.is_empty() {
                    break;
                }
                assert!(lent.len() <= BATCH, "a lent slice is at most one batch");
                // Half of each lent slice, then a plain read of a few bytes: the two ways
                // of reading share one position.
                let half = lent.len().div_ceil(2);
                read.extend_from_slice(&lent[..half]);
                reader.consume(half);
                let mut few = [0; 7];
                let n = reader.read(&mut few).await.unwrap();
                read.extend_from_slice(&few[..n]);
            }
            assert!(read == bytes, "{size} bytes");
        }
    }

    #[tokio::test]
    async fn a_missing_file_fails_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let error = ReadAhead::open(&dir.path().join("none")).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_dropped_early_stops_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![1; 8 * BATCH]).unwrap();
        let mut reader = ReadAhead::open(&path).await.unwrap();
        let mut first = [0; 10];
        reader.read_exact(&mut first).await.unwrap();
        drop(reader);
        // The thread's next send fails and it returns: the runtime's shutdown at the end
        // of this test waits for its blocking threads, and would hang on one that stayed.
    }
}
