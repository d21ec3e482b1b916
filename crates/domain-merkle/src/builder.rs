//! [`MerkleBuilder`]: the streaming tree, sequential and parallel.

use std::fmt;
use std::io;
use std::sync::LazyLock;

use blake3::hazmat::{ContextKey, HasherExt};
use rayon::prelude::*;

use super::Root;
use super::leaves::{LEAF_BATCH, for_each_leaf, hash_leaves};

/// Size of a leaf's chunk in bytes (7 KiB). Only the last chunk of a blob may be shorter.
pub const CHUNK_SIZE: usize = 7168;

/// The BLAKE3 derive-key context of inner nodes.
///
/// Leaves are plain BLAKE3 hashes and nodes are derived keys under this context,
/// so no inner node can pass for a leaf.
pub const NODE_CONTEXT: &str = "posemesh domain merkle node v1";

/// Below this many whole chunks in one call, [`MerkleBuilder::update_parallel`] stays on the
/// calling thread: handing work to the rayon pool and waiting for it costs tens of
/// microseconds, the time of several leaves (one takes 2 to 6 µs here).
const PARALLEL_MIN_LEAVES: usize = 32;

/// Bytes of one batch of leaves hashed side by side (112 KiB).
const BATCH_BYTES: usize = LEAF_BATCH * CHUNK_SIZE;

/// Subtrees at most this large are hashed by one rayon task; larger ones split in two.
/// One batch of leaves side by side (20 to 40 µs of hashing) keeps the cost of a steal out
/// of sight.
const SEQUENTIAL_SUBTREE_BYTES: usize = BATCH_BYTES;

pub(super) type Digest = [u8; 32];

/// The context string hashed once, so a node costs one BLAKE3 compression, not two.
static NODE_KEY: LazyLock<ContextKey> =
    LazyLock::new(|| blake3::hazmat::hash_derive_key_context(NODE_CONTEXT));

/// `leaf = BLAKE3(chunk)` of one leaf alone; runs of whole leaves go through
/// [`for_each_leaf`], which hashes many side by side.
fn leaf_hash(chunk: &[u8]) -> Digest {
    *blake3::hash(chunk).as_bytes()
}

/// `node = BLAKE3-derive-key(NODE_CONTEXT, left || right)`.
fn node_hash(left: &Digest, right: &Digest) -> Digest {
    let mut children = [0_u8; 64];
    children[..32].copy_from_slice(left);
    children[32..].copy_from_slice(right);
    *blake3::Hasher::new_from_context_key(&NODE_KEY)
        .update(&children)
        .finalize()
        .as_bytes()
}

/// Root of the perfect subtree over `chunks`, which holds a power of two of whole chunks.
fn subtree_root(chunks: &[u8]) -> Digest {
    if chunks.len() <= SEQUENTIAL_SUBTREE_BYTES {
        return sequential_subtree_root(chunks);
    }
    let (left, right) = chunks.split_at(chunks.len() / 2);
    let (left, right) = rayon::join(|| subtree_root(left), || subtree_root(right));
    node_hash(&left, &right)
}

/// [`subtree_root`] on the calling thread: the leaves side by side, then the levels above.
fn sequential_subtree_root(chunks: &[u8]) -> Digest {
    let mut level = [[0_u8; 32]; LEAF_BATCH];
    let mut width = 0;
    for_each_leaf(chunks, |leaf| {
        level[width] = leaf;
        width += 1;
    });
    while width > 1 {
        for k in 0..width / 2 {
            level[k] = node_hash(&level[2 * k], &level[2 * k + 1]);
        }
        width /= 2;
    }
    level[0]
}

/// Builds the Merkle root of a byte stream incrementally (docs/design.md §4).
///
/// Feed bytes with [`update`](Self::update) (or [`update_parallel`](Self::update_parallel)
/// for large batches) in writes of any size; the root depends only on the bytes, never on
/// how they were split. [`finalize`](Self::finalize) returns the root of what was fed so far
/// and leaves the builder usable.
///
/// Memory is O(log n): one hash per completed perfect subtree (one per set bit of the
/// number of whole chunks seen) plus a buffer of at most one batch of leaves (16 chunks,
/// 112 KiB). Leaves are hashed sixteen side by side, one per SIMD lane: runs of sixteen
/// whole chunks in the caller's buffer are hashed from there without a copy, and the
/// chunks of smaller writes are gathered until sixteen are there, so that writes of any
/// size (one chunk, 64 KiB, 1 MiB) run at about the same speed. A bounded copy costs far
/// less than fifteen idle lanes.
///
/// ```
/// use domain_merkle::{MerkleBuilder, root_of, CHUNK_SIZE};
///
/// let data = vec![7_u8; 3 * CHUNK_SIZE + 10];
/// let mut builder = MerkleBuilder::new();
/// for piece in data.chunks(1000) {
///     builder.update(piece);
/// }
/// assert_eq!(builder.len(), data.len() as u64);
/// assert_eq!(builder.leaf_count(), 4);
/// assert_eq!(builder.finalize(), root_of(&data));
/// ```
#[derive(Clone)]
pub struct MerkleBuilder {
    /// Roots of the completed perfect subtrees, leftmost (largest) first: one per set bit
    /// of `leaves`, the subtree of 2^k leaves for bit k.
    subtrees: Vec<Digest>,
    /// Whole chunks folded into `subtrees`.
    leaves: u64,
    /// Bytes not hashed yet: fewer whole chunks than a batch ([`LEAF_BATCH`]), then the
    /// start of a chunk whose end has not arrived yet. Always shorter than a batch.
    pending: Vec<u8>,
    /// Bytes fed so far.
    len: u64,
}

impl MerkleBuilder {
    /// An empty builder; finalized at once it gives the root of empty data.
    #[must_use]
    pub fn new() -> Self {
        Self {
            subtrees: Vec::new(),
            leaves: 0,
            // Grown on demand: a builder per small item must not cost a batch's memory.
            pending: Vec::new(),
            len: 0,
        }
    }

    /// Feeds the next bytes of the stream, hashing on the calling thread.
    pub fn update(&mut self, data: &[u8]) -> &mut Self {
        self.len += data.len() as u64;
        let mut data = data;
        let partial = self.pending.len() % CHUNK_SIZE;
        if partial != 0 {
            let (head, rest) = data.split_at((CHUNK_SIZE - partial).min(data.len()));
            self.pending.extend_from_slice(head);
            if self.pending.len() % CHUNK_SIZE != 0 {
                return self;
            }
            data = rest;
        }
        // The gathered leaves, completed from the caller's buffer without a copy.
        let gathered = self.pending.len() / CHUNK_SIZE;
        if gathered > 0 && gathered + data.len() / CHUNK_SIZE >= LEAF_BATCH {
            let (head, rest) = data.split_at((LEAF_BATCH - gathered) * CHUNK_SIZE);
            let leaves = self
                .pending
                .chunks_exact(CHUNK_SIZE)
                .chain(head.chunks_exact(CHUNK_SIZE));
            let (subtrees, count) = (&mut self.subtrees, &mut self.leaves);
            hash_leaves(leaves, |leaf| push_subtree(subtrees, count, leaf, 0));
            self.pending.clear();
            data = rest;
        }
        if self.pending.is_empty() {
            let (batches, rest) = data.split_at(data.len() - data.len() % BATCH_BYTES);
            self.push_leaves(batches);
            data = rest;
        }
        // What is left would leave lanes idle: kept for the next batch.
        self.pending.extend_from_slice(data);
        self
    }

    /// Feeds the next bytes of the stream like [`update`](Self::update), hashing the whole
    /// chunks of a large `data` on all cores (the rayon global pool).
    ///
    /// The root is the same as with [`update`](Self::update). Worth it from a few hundred
    /// KiB per call (batches of 1 MiB are a good size); smaller calls stay on the calling
    /// thread. The call blocks until the hashing is done, so in async code run it where
    /// blocking is allowed (`tokio::task::spawn_blocking`, `block_in_place`).
    pub fn update_parallel(&mut self, data: &[u8]) -> &mut Self {
        if data.len() / CHUNK_SIZE < PARALLEL_MIN_LEAVES {
            return self.update(data);
        }
        self.len += data.len() as u64;
        let data = self.flush_pending(data);
        let (body, rest) = data.split_at(data.len() - data.len() % CHUNK_SIZE);

        // Cut the body into perfect subtrees that line up with those already built: each
        // one starts at a leaf index that is a multiple of its size, as large as fits.
        // Sizes rise while they align to the leaves already built, then fall while they fit
        // the rest: at most two per bit of the leaf count.
        let mut pieces = Vec::new();
        let mut leaves = self.leaves;
        let mut remaining = body;
        while !remaining.is_empty() {
            let fits = (remaining.len() / CHUNK_SIZE).ilog2();
            let level = leaves.trailing_zeros().min(fits);
            let (piece, tail) = remaining.split_at(CHUNK_SIZE << level);
            pieces.push((piece, level));
            leaves += 1 << level;
            remaining = tail;
        }
        let roots: Vec<Digest> = pieces
            .par_iter()
            .map(|&(piece, _)| subtree_root(piece))
            .collect();
        for (root, &(_, level)) in roots.into_iter().zip(&pieces) {
            self.push_subtree(root, level);
        }

        self.pending.extend_from_slice(rest);
        self
    }

    /// Bytes [`update_from_reader`](Self::update_from_reader) reads before each hashing
    /// step: large enough to keep every core busy, small enough to stay in cache.
    pub const READ_BATCH: usize = 1 << 20;

    /// Feeds everything `reader` yields, in batches of [`READ_BATCH`](Self::READ_BATCH)
    /// hashed on all cores as [`update_parallel`](Self::update_parallel) does; returns the
    /// bytes read. Memory stays one batch whatever the length. Blocking: see
    /// `update_parallel`.
    ///
    /// # Errors
    /// The first read error other than [`io::ErrorKind::Interrupted`]; what was read
    /// before it is fed.
    pub fn update_from_reader(&mut self, mut reader: impl io::Read) -> io::Result<u64> {
        let mut batch = vec![0_u8; Self::READ_BATCH];
        let mut total = 0;
        loop {
            let filled = fill(&mut reader, &mut batch);
            let (filled, error) = match filled {
                Ok(filled) => (filled, None),
                Err((filled, error)) => (filled, Some(error)),
            };
            self.update_parallel(&batch[..filled]);
            total += filled as u64;
            if let Some(error) = error {
                return Err(error);
            }
            if filled < batch.len() {
                return Ok(total);
            }
        }
    }

    /// The root of the bytes fed so far. The builder stays usable: feeding more and
    /// finalizing again gives the root of the longer stream.
    #[must_use]
    pub fn finalize(&self) -> Root {
        let (whole, partial) = self.pending_split();
        // The gathered leaves are folded into a copy of the subtrees (a few hashes), so
        // that finalizing leaves the builder as it was.
        let mut subtrees = self.subtrees.clone();
        let mut leaves = self.leaves;
        for_each_leaf(whole, |leaf| {
            push_subtree(&mut subtrees, &mut leaves, leaf, 0)
        });
        let last_leaf = (!partial.is_empty()).then(|| leaf_hash(partial));
        // RFC 9162's shape: the completed subtrees, largest first, then the partial leaf,
        // joined from the right.
        let (mut right, lefts) = match (last_leaf, subtrees.split_last()) {
            (Some(leaf), _) => (leaf, &subtrees[..]),
            (None, Some((last, lefts))) => (*last, lefts),
            // Empty data has exactly one leaf: the empty chunk.
            (None, None) => (leaf_hash(&[]), &[][..]),
        };
        for left in lefts.iter().rev() {
            right = node_hash(left, &right);
        }
        Root::from_bytes(right)
    }

    /// Forgets the bytes fed after the last whole chunk: the builder is then as if it had
    /// been fed only the whole chunks so far. What a receiver keeps of a transfer cut
    /// inside a chunk.
    ///
    /// ```
    /// use domain_merkle::{CHUNK_SIZE, MerkleBuilder, root_of};
    ///
    /// let data = vec![3_u8; 2 * CHUNK_SIZE + 10];
    /// let mut builder = MerkleBuilder::new();
    /// builder.update(&data).truncate_to_chunks();
    /// assert_eq!(builder.len(), 2 * CHUNK_SIZE as u64);
    /// assert_eq!(builder.finalize(), root_of(&data[..2 * CHUNK_SIZE]));
    /// ```
    pub fn truncate_to_chunks(&mut self) -> &mut Self {
        let partial = self.pending.len() % CHUNK_SIZE;
        self.len -= partial as u64;
        self.pending.truncate(self.pending.len() - partial);
        self
    }

    /// Bytes fed so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no byte has been fed yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Leaves of the tree [`finalize`](Self::finalize) would return now: the number of
    /// chunks, and 1 for empty data.
    #[must_use]
    pub fn leaf_count(&self) -> u64 {
        let whole = (self.pending.len() / CHUNK_SIZE) as u64;
        let partial = self.pending.len() % CHUNK_SIZE != 0;
        let leaves = self.leaves + whole;
        leaves + u64::from(partial || leaves == 0)
    }

    /// The pending bytes as (whole chunks, the start of the next chunk).
    fn pending_split(&self) -> (&[u8], &[u8]) {
        self.pending
            .split_at(self.pending.len() - self.pending.len() % CHUNK_SIZE)
    }

    /// Completes the pending partial chunk from `data` and hashes every pending chunk;
    /// returns the bytes of `data` left over, which start on a chunk boundary (or are
    /// empty, with the pending bytes still short of a chunk).
    fn flush_pending<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        if self.pending.is_empty() {
            return data;
        }
        let wanted = (CHUNK_SIZE - self.pending.len() % CHUNK_SIZE) % CHUNK_SIZE;
        let (head, rest) = data.split_at(wanted.min(data.len()));
        self.pending.extend_from_slice(head);
        let whole = self.pending.len() - self.pending.len() % CHUNK_SIZE;
        let (subtrees, leaves) = (&mut self.subtrees, &mut self.leaves);
        for_each_leaf(&self.pending[..whole], |leaf| {
            push_subtree(subtrees, leaves, leaf, 0);
        });
        self.pending.drain(..whole);
        rest
    }

    /// Hashes whole chunks (a multiple of [`CHUNK_SIZE`] bytes) as the next leaves.
    fn push_leaves(&mut self, chunks: &[u8]) {
        let (subtrees, leaves) = (&mut self.subtrees, &mut self.leaves);
        for_each_leaf(chunks, |leaf| push_subtree(subtrees, leaves, leaf, 0));
    }

    /// Appends the root of a perfect subtree of 2^`level` leaves (see [`push_subtree`]).
    fn push_subtree(&mut self, root: Digest, level: u32) {
        push_subtree(&mut self.subtrees, &mut self.leaves, root, level);
    }
}

/// Appends to `subtrees`, the perfect subtrees over the first `leaves` leaves, the root of
/// one of 2^`level` leaves, which must start at a leaf index that is a multiple of its
/// size, and merges equal-sized neighbours.
fn push_subtree(subtrees: &mut Vec<Digest>, leaves: &mut u64, root: Digest, level: u32) {
    debug_assert_eq!(*leaves % (1 << level), 0, "unaligned subtree");
    // Each trailing one bit of the leaf count (counted in 2^level units) is a subtree of
    // the same size as the one arriving: they join, smallest first.
    let merges = (*leaves >> level).trailing_ones() as usize;
    let keep = subtrees.len().saturating_sub(merges);
    let mut root = root;
    for left in subtrees.drain(keep..).rev() {
        root = node_hash(&left, &root);
    }
    subtrees.push(root);
    *leaves += 1 << level;
}

impl Default for MerkleBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// Feeds the builder from synchronous code, e.g. with [`std::io::copy`]; writes never fail.
///
/// ```
/// use domain_merkle::{MerkleBuilder, root_of};
///
/// let data = vec![9_u8; 50_000];
/// let mut builder = MerkleBuilder::new();
/// std::io::copy(&mut &data[..], &mut builder)?;
/// assert_eq!(builder.finalize(), root_of(&data));
/// # Ok::<(), std::io::Error>(())
/// ```
impl io::Write for MerkleBuilder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for MerkleBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pending bytes are user data: show only the shape.
        f.debug_struct("MerkleBuilder")
            .field("len", &self.len)
            .field("leaf_count", &self.leaf_count())
            .finish_non_exhaustive()
    }
}

/// The Merkle root of `data` in one call; large inputs are hashed on all cores.
///
/// ```
/// use domain_merkle::root_of;
///
/// // A blob of one chunk has the root `b3sum` prints: its plain BLAKE3 hash.
/// assert_eq!(root_of(b"abc").as_bytes(), blake3::hash(b"abc").as_bytes());
/// ```
#[must_use]
pub fn root_of(data: &[u8]) -> Root {
    MerkleBuilder::new().update_parallel(data).finalize()
}

/// Reads until `buf` is full or the reader is at its end; returns the bytes read, and
/// with an error the bytes read before it. Short reads (a pipe) are joined, so that every
/// hashing step but the last gets a whole batch.
fn fill(reader: &mut impl io::Read, buf: &mut [u8]) -> Result<usize, (usize, io::Error)> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err((filled, error)),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_stops_at_the_end_of_a_short_reader() {
        let mut reader = &b"abc"[..];
        let mut buf = [0_u8; 8];
        assert_eq!(fill(&mut reader, &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
    }

    #[test]
    fn a_reader_fed_in_short_reads_gives_the_root_of_its_bytes() {
        /// Hands out at most 1000 bytes per read, as a pipe does.
        struct Trickle<'a>(&'a [u8]);
        impl io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(1000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        // Empty, one chunk, and more than one batch ending mid-chunk.
        for len in [
            0,
            CHUNK_SIZE,
            MerkleBuilder::READ_BATCH + 3 * CHUNK_SIZE + 5,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut builder = MerkleBuilder::new();
            assert_eq!(
                builder.update_from_reader(Trickle(&data)).unwrap(),
                len as u64
            );
            assert_eq!(builder.finalize(), root_of(&data), "{len} bytes");
        }
    }

    #[test]
    fn node_key_is_the_derive_key_context_of_the_design() {
        let left = [1_u8; 32];
        let right = [2_u8; 32];
        let mut children = [1_u8; 64];
        children[32..].fill(2);
        assert_eq!(
            node_hash(&left, &right),
            blake3::derive_key(NODE_CONTEXT, &children)
        );
    }

    #[test]
    fn parallel_pieces_align_after_an_odd_number_of_leaves() {
        let data: Vec<u8> = (0..(3 + 100) * CHUNK_SIZE + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        let (head, tail) = data.split_at(3 * CHUNK_SIZE);
        let mut parallel = MerkleBuilder::new();
        parallel.update(head).update_parallel(tail);
        let mut sequential = MerkleBuilder::new();
        sequential.update(&data);
        assert_eq!(parallel.finalize(), sequential.finalize());
        assert_eq!(parallel.leaf_count(), 104);
    }
}
