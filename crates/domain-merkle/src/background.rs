//! [`BackgroundBuilder`]: the tree built on a thread of its own while the caller moves
//! the bytes.

use std::fmt;
use std::ops::Deref;

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

use super::MerkleBuilder;

/// A [`MerkleBuilder`] fed from async code and run on a blocking thread, so that hashing
/// a batch overlaps with whatever the caller does with it next: writing it to a stream or
/// a file, reading the next one.
///
/// Hashing on the caller's task instead puts the hash and the copy of every batch one
/// after the other on one core; a sender that does both is then half as fast as BLAKE3.
/// Each [`push`](Self::push)ed batch is hashed in order and then handed to the `done`
/// callback given at [`spawn`](Self::spawn), which typically returns its buffer to a pool.
/// A batch is anything that derefs to bytes: a `Vec<u8>`, an `Arc` of a buffer shared with
/// a writer, a `bytes::Bytes`. At most `queue` batches wait for the thread; `push` waits
/// while they do.
///
/// With [`Cores::All`], the thread hashes batches that queue up (content from memory or a
/// fast disk) on all cores ([`MerkleBuilder::update_parallel`]); otherwise, and always
/// with [`Cores::One`], on its own core.
///
/// Must be used within a Tokio runtime.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # tokio::runtime::Builder::new_multi_thread().build()?.block_on(async {
/// use domain_merkle::{BackgroundBuilder, Cores, MerkleBuilder, root_of};
///
/// let data = vec![9_u8; 3_000_000];
/// let hasher = BackgroundBuilder::spawn(MerkleBuilder::new(), 2, Cores::One, drop::<Vec<u8>>);
/// for batch in data.chunks(1 << 20) {
///     hasher.push(batch.to_vec()).await?;
/// }
/// assert_eq!(hasher.finish().await?.finalize(), root_of(&data));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok(())
/// # }
/// ```
pub struct BackgroundBuilder<B> {
    batches: mpsc::Sender<B>,
    worker: JoinHandle<MerkleBuilder>,
}

impl<B> BackgroundBuilder<B>
where
    B: Deref<Target: AsRef<[u8]>> + Send + 'static,
{
    /// Starts the thread on `tree` (the tree of the bytes before the first batch), with
    /// room for `queue` waiting batches (at least one), hashing on `cores`.
    pub fn spawn(
        tree: MerkleBuilder,
        queue: usize,
        cores: Cores,
        mut done: impl FnMut(B) + Send + 'static,
    ) -> Self {
        let (batches, mut waiting) = mpsc::channel::<B>(queue.max(1));
        let worker = tokio::task::spawn_blocking(move || {
            let mut tree = tree;
            while let Some(batch) = waiting.blocking_recv() {
                let bytes = (*batch).as_ref();
                if cores == Cores::One || waiting.is_empty() {
                    tree.update(bytes);
                } else {
                    tree.update_parallel(bytes);
                }
                done(batch);
            }
            tree
        });
        Self { batches, worker }
    }

    /// Hands the next bytes of the stream to the thread, waiting while `queue` batches
    /// wait already.
    ///
    /// # Errors
    /// [`HasherStopped`] when the thread has stopped (it panicked):
    /// [`finish`](Self::finish) then says why.
    pub async fn push(&self, batch: B) -> Result<(), HasherStopped> {
        self.batches.send(batch).await.map_err(|_| HasherStopped)
    }

    /// Waits until every pushed batch is hashed and returns the tree.
    ///
    /// # Errors
    /// The thread's [`JoinError`] when it panicked.
    pub async fn finish(self) -> Result<MerkleBuilder, JoinError> {
        let Self { batches, worker } = self;
        drop(batches);
        worker.await
    }
}

impl<B> fmt::Debug for BackgroundBuilder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundBuilder")
            .field(
                "queued",
                &(self.batches.max_capacity() - self.batches.capacity()),
            )
            .finish_non_exhaustive()
    }
}

/// The cores a [`BackgroundBuilder`] hashes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cores {
    /// Its own thread only. For a sender: one core hashes faster than a network moves
    /// bytes, and the transport's encryption needs the other cores.
    One,
    /// All cores (the rayon global pool) when batches queue up, else its own thread.
    /// For a receiver that writes to disk what may come from memory.
    All,
}

/// [`BackgroundBuilder::push`] found the hashing thread stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Merkle hashing thread has stopped")]
pub struct HasherStopped;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{CHUNK_SIZE, root_of};

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_root_is_that_of_the_bytes_whatever_the_batches() {
        let data = data(40 * CHUNK_SIZE + 123);
        // One byte, a chunk and a bit, enough for the parallel path, all of it at once.
        for (batch, cores) in [1, CHUNK_SIZE + 1, 32 * CHUNK_SIZE, data.len()]
            .into_iter()
            .flat_map(|batch| [(batch, Cores::One), (batch, Cores::All)])
        {
            let hasher = BackgroundBuilder::spawn(MerkleBuilder::new(), 3, cores, drop::<Vec<u8>>);
            for piece in data.chunks(batch) {
                hasher.push(piece.to_vec()).await.unwrap();
            }
            let tree = hasher.finish().await.unwrap();
            assert_eq!(
                tree.len(),
                data.len() as u64,
                "batches of {batch} on {cores:?}"
            );
            assert_eq!(
                tree.finalize(),
                root_of(&data),
                "batches of {batch} on {cores:?}"
            );
        }
    }

    #[tokio::test]
    async fn it_goes_on_from_the_tree_it_is_given() {
        let data = data(5 * CHUNK_SIZE);
        let mut start = MerkleBuilder::new();
        start.update(&data[..2 * CHUNK_SIZE]);
        let hasher = BackgroundBuilder::spawn(start, 1, Cores::All, drop::<Vec<u8>>);
        hasher.push(data[2 * CHUNK_SIZE..].to_vec()).await.unwrap();
        assert_eq!(hasher.finish().await.unwrap().finalize(), root_of(&data));
    }

    #[tokio::test]
    async fn every_batch_comes_back_in_order_once_hashed() {
        let back = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&back);
        let hasher = BackgroundBuilder::spawn(
            MerkleBuilder::new(),
            2,
            Cores::One,
            move |batch: Vec<u8>| {
                seen.lock().unwrap().push(batch[0]);
            },
        );
        for i in 0..10 {
            hasher.push(vec![i; 100]).await.unwrap();
        }
        hasher.finish().await.unwrap();
        assert_eq!(*back.lock().unwrap(), (0..10).collect::<Vec<u8>>());
    }

    #[tokio::test]
    async fn a_stopped_thread_refuses_batches_and_finish_says_why() {
        let hasher = BackgroundBuilder::spawn(MerkleBuilder::new(), 1, Cores::One, |_: Vec<u8>| {
            panic!("a done callback that fails");
        });
        hasher.push(vec![1]).await.unwrap();
        // The thread dies on that first batch; pushes fail from then on.
        let mut refused = false;
        for _ in 0..100_000 {
            if hasher.push(vec![2]).await.is_err() {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "pushes to a dead thread must fail");
        assert!(hasher.finish().await.unwrap_err().is_panic());
    }
}
