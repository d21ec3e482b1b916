//! Writing a blob's content: large batches, each hashed on a thread of its own while the
//! batches before it are written, past the page cache where the file system allows.

use std::path::Path;
use std::sync::Arc;

use domain_merkle::{BackgroundBuilder, Cores, MerkleBuilder, Root};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::blob::{Batch, BlobWriter};
use super::{HASH_QUEUE, IO_BATCH, WRITES_IN_FLIGHT, io_error};
use crate::store::DatastoreError;

/// Where a put's content starts in its file: after `offset` bytes already there (a
/// resumed put), whose tree is `tree`.
pub(super) struct Start {
    pub(super) offset: u64,
    pub(super) tree: MerkleBuilder,
}

impl Start {
    /// An empty file: the content is the whole item.
    pub(super) fn empty() -> Self {
        Self {
            offset: 0,
            tree: MerkleBuilder::new(),
        }
    }
}

/// A put whose content failed or ended early.
pub(super) struct Cut {
    pub(super) error: DatastoreError,
    /// The tree of the bytes in the file, from its start, when every byte received is
    /// there (the writes all succeeded and the content only stopped early); `None` when
    /// the file cannot be trusted.
    pub(super) kept: Option<MerkleBuilder>,
}

impl From<DatastoreError> for Cut {
    fn from(error: DatastoreError) -> Self {
        Self { error, kept: None }
    }
}

/// Streams the content of an item of `size` bytes into `file` at disk speed, as the local
/// datastore writes its blobs: in large batches, each hashed on a thread of its own while
/// the batches before it are written, past the page cache where the file system allows.
/// Returns the root of the whole content and the file, not yet synced.
///
/// `tree` is the tree of the bytes `file` holds already (a prefix of whole chunks when a
/// cut transfer resumes; empty otherwise): writing goes on at its length. `content` is
/// read to its end, which must come with the content's last byte.
///
/// # Errors
/// [`DatastoreError::ReadContent`] when `content` fails: the file then holds exactly the
/// bytes that arrived, which a later transfer can resume from.
/// [`DatastoreError::SizeMismatch`] when `content` ends early (the file holds what
/// arrived, as before) or goes on past `size`. Any other error (a write that failed, a
/// hashing thread that panicked) leaves the file's content undefined.
pub async fn stream_into_file<R: AsyncRead + Unpin>(
    file: std::fs::File,
    path: &Path,
    name: &str,
    size: u32,
    content: R,
    tree: MerkleBuilder,
) -> Result<(Root, std::fs::File), DatastoreError> {
    // The writer sets the file's length up front; a cut file is cut back to what arrived.
    let handle = file.try_clone().map_err(|e| io_error("dup", path, e))?;
    let start = Start {
        offset: tree.len(),
        tree,
    };
    match write_content(file, path, name, size, content, start).await {
        Ok(written) => Ok(written),
        Err(Cut {
            error,
            kept: Some(kept),
        }) => {
            handle
                .set_len(kept.len())
                .map_err(|e| io_error("truncate", path, e))?;
            Err(error)
        }
        Err(Cut { error, kept: None }) => Err(error),
    }
}

/// Streams `content` into `file` after `start.offset` bytes already there, in large
/// batches. Each batch goes at once to a [`BackgroundBuilder`] and to one of
/// [`WRITES_IN_FLIGHT`] writing threads, so hashing and writing overlap across batches;
/// writes go past the page cache where they can (see [`blob`]). Reads at most
/// `size - start.offset + 1` bytes; any other count than the rest of `size` is
/// [`DatastoreError::SizeMismatch`]. Bytes received before the content fails or ends
/// early are written too, so that a resumable put keeps them.
pub(super) async fn write_content<R: AsyncRead + Unpin>(
    file: std::fs::File,
    path: &Path,
    name: &str,
    size: u32,
    content: R,
    start: Start,
) -> Result<(Root, std::fs::File), Cut> {
    // Batches are shared by the hasher and a writer and come back for reuse once both are
    // done, so a put holds at most 18 MiB of them: one being read, HASH_QUEUE queued and
    // one at the hasher, and twice WRITES_IN_FLIGHT queued and under way. The free list
    // takes them all: a batch freed and allocated again would cost an munmap and page
    // faults, which contend with the page pinning of direct writes for the process's
    // memory map lock.
    let (write_tx, write_rx) = async_channel::bounded::<(u64, Arc<Batch>)>(WRITES_IN_FLIGHT);
    let (free_tx, mut free_rx) = mpsc::channel::<Batch>(HASH_QUEUE + 2 + 2 * WRITES_IN_FLIGHT);
    let hash_free = free_tx.clone();
    let Start {
        offset: start,
        tree,
    } = start;
    // All cores when batches queue up: content from memory or a fast disk. Content from
    // the network comes slower than one core hashes, so it stays on one.
    let hasher = BackgroundBuilder::spawn(tree, HASH_QUEUE, Cores::All, move |batch| {
        recycle(batch, &hash_free);
    });
    let blob = Arc::new(BlobWriter::new(file, path, size.into()));
    let writers: Vec<_> = (0..WRITES_IN_FLIGHT)
        .map(|_| {
            let (blob, write_rx, free_tx) = (Arc::clone(&blob), write_rx.clone(), free_tx.clone());
            tokio::task::spawn_blocking(move || {
                while let Ok((offset, batch)) = write_rx.recv_blocking() {
                    if let Err(e) = blob.write_at(offset, batch.bytes()) {
                        // The put has failed: the reader stops at its next send.
                        write_rx.close();
                        return Err(e);
                    }
                    recycle(batch, &free_tx);
                }
                Ok::<_, DatastoreError>(())
            })
        })
        .collect();
    drop((write_rx, free_tx));

    let expected = size;
    let size = u64::from(size);
    let limit = size.saturating_sub(start) + 1;
    let capacity = usize::try_from(limit.min(IO_BATCH as u64)).unwrap_or(IO_BATCH);
    // Not `content.take(limit)`: every read below is bounded by `limit - total` already,
    // and tokio's `Take` hands the reader an uninitialised view of the batch, which a
    // reader that must zero it first (tokio-util's `Compat`, under every libp2p stream)
    // then clears on each read: several times the content in memset.
    let mut content = content;
    let mut total = 0_u64;
    let reading = async {
        loop {
            let want = usize::try_from((limit - total).min(IO_BATCH as u64)).unwrap_or(IO_BATCH);
            let mut batch = free_rx
                .try_recv()
                .unwrap_or_else(|_| Batch::with_capacity(capacity));
            let window = batch.fill(want);
            let mut filled = 0;
            let mut failed = None;
            while filled < want {
                match content.read(&mut window[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(source) => {
                        failed = Some(DatastoreError::ReadContent {
                            name: name.to_owned(),
                            source,
                        });
                        break;
                    }
                }
            }
            total += filled as u64;
            if start + total > size {
                return Err(DatastoreError::SizeMismatch {
                    expected,
                    got: start + total,
                });
            }
            if filled > 0 {
                batch.truncate(filled);
                let batch = Arc::new(batch);
                let offset = start + total - filled as u64;
                blob.reserve_to(start + total);
                let sent = hasher.push(Arc::clone(&batch)).await.is_ok()
                    && write_tx.send((offset, batch)).await.is_ok();
                if !sent {
                    // A closed thread has failed; its error is the one to report.
                    return Ok(());
                }
            }
            if let Some(error) = failed {
                return Err(error);
            }
            if filled < want {
                return Ok(());
            }
        }
    }
    .await;
    drop(write_tx);
    let tree = hasher.finish().await.map_err(DatastoreError::from)?;
    for writer in writers {
        writer.await.map_err(DatastoreError::from)??;
    }
    let file = blob.finish()?;
    let cut = |error| Cut {
        error,
        kept: Some(tree.clone()),
    };
    match reading {
        Err(error @ DatastoreError::ReadContent { .. }) => Err(cut(error)),
        Err(error) => Err(error.into()),
        Ok(()) if start + total != size => Err(cut(DatastoreError::SizeMismatch {
            expected,
            got: start + total,
        })),
        Ok(()) => Ok((tree.finalize(), file)),
    }
}

/// Hands a batch back for reuse once the last of its users is done with it.
fn recycle(batch: Arc<Batch>, free: &mpsc::Sender<Batch>) {
    if let Some(batch) = Arc::into_inner(batch) {
        let _ = free.try_send(batch);
    }
}
