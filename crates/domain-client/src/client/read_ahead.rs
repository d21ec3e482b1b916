//! Reading a file to upload ahead of the stream that sends it.
//!
//! `tokio::fs::File` reads one buffer at a time and only when asked, so a file that is
//! not in the page cache makes the upload wait for the disk between network writes. A
//! [`ReadAhead`] keeps a thread reading the next batches while the current one is sent:
//! the disk and the network work at once, with at most [`AHEAD`] batches in memory.

use std::io::{self, Read as _};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// Bytes the reading thread reads at a time.
const BATCH: usize = 1 << 20;

/// Batches read and not yet sent, at most.
const AHEAD: usize = 2;

/// A file's bytes, read by a thread of its own up to [`AHEAD`] batches ahead.
#[derive(Debug)]
pub(crate) struct ReadAhead {
    batches: mpsc::Receiver<io::Result<Vec<u8>>>,
    /// Sent batches go back to the thread, which reads into them again.
    spent: std::sync::mpsc::SyncSender<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl ReadAhead {
    /// Opens the file at `path` and starts reading it.
    ///
    /// # Errors
    /// The open's.
    pub(crate) async fn open(path: &Path) -> io::Result<Self> {
        let path = path.to_owned();
        let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .map_err(io::Error::other)??;
        let (tx, batches) = mpsc::channel(AHEAD);
        let (spent, reuse) = std::sync::mpsc::sync_channel::<Vec<u8>>(AHEAD + 1);
        tokio::task::spawn_blocking(move || {
            let mut file = file;
            loop {
                let mut batch = reuse
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(BATCH));
                batch.clear();
                let read = (&mut file)
                    .take(BATCH as u64)
                    .read_to_end(&mut batch)
                    .map(|_| batch);
                let end = matches!(&read, Ok(batch) if batch.is_empty()) || read.is_err();
                // A closed channel: the upload stopped reading, so the thread stops too.
                if tx.blocking_send(read).is_err() || end {
                    return;
                }
            }
        });
        Ok(Self {
            batches,
            spent,
            current: Vec::new(),
            at: 0,
        })
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at == this.current.len() {
            match ready!(this.batches.poll_recv(cx)) {
                Some(Ok(batch)) => {
                    let spent = std::mem::replace(&mut this.current, batch);
                    let _ = this.spent.try_send(spent);
                    this.at = 0;
                }
                Some(Err(error)) => return Poll::Ready(Err(error)),
                // The file ended (an empty batch came first, then the thread left).
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = buf.remaining().min(this.current.len() - this.at);
        buf.put_slice(&this.current[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
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
