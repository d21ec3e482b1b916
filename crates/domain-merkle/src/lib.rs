//! The verified-streaming core of domain cluster: the BLAKE3 Merkle tree both ends of a
//! transfer build while the bytes stream, whose [`Root`] proves the transfer.
//!
//! The tree of docs/design.md §4:
//!
//! - leaves are the data cut into [`CHUNK_SIZE`] (7168-byte) chunks, the last one possibly
//!   shorter; empty data has exactly one leaf, the empty chunk;
//! - `leaf = BLAKE3(chunk)`, so a blob of one chunk has the root `b3sum` prints;
//! - `node = BLAKE3-derive-key(NODE_CONTEXT, left || right)` over the two 32-byte children;
//! - the shape of RFC 9162: for n > 1 leaves the left subtree holds the largest power of two
//!   smaller than n.
//!
//! [`MerkleBuilder`] builds the root incrementally in O(log n) memory, from writes of any
//! size, on one thread or (for large batches) on all cores; [`root_of`] is the one-shot form.
//! [`HashingReader`] and [`HashingWriter`] build it for the bytes that pass through an
//! async stream; [`BackgroundBuilder`] builds it on a thread of its own from batches that
//! async code hands it, so hashing overlaps with moving the bytes. [`Root`] is the result
//! and its canonical text form, 64 lowercase hex digits.
//!
//! ```
//! use domain_merkle::{MerkleBuilder, Root, root_of};
//!
//! let mut builder = MerkleBuilder::new();
//! builder.update(b"hello ").update(b"world");
//! let root: Root = builder.finalize();
//! assert_eq!(root, root_of(b"hello world"));
//! assert_eq!(root.to_string().parse::<Root>()?, root);
//! # Ok::<(), domain_merkle::ParseRootError>(())
//! ```
//!
//! The crate depends on `blake3` and `rayon`; its default feature `tokio` adds the async
//! [`HashingReader`], [`HashingWriter`] and [`BackgroundBuilder`]. Without it
//! (`default-features = false`) it is the tree alone.

#[cfg(feature = "tokio")]
mod background;
mod builder;
#[cfg(feature = "tokio")]
mod io;
mod leaves;
mod root;

#[cfg(feature = "tokio")]
pub use background::{BackgroundBuilder, Cores, HasherStopped};
pub use builder::{CHUNK_SIZE, MerkleBuilder, NODE_CONTEXT, root_of};
#[cfg(feature = "tokio")]
pub use io::{HashingReader, HashingWriter};
pub use root::{ParseRootError, ROOT_HEX_LEN, ROOT_LEN, Root};
