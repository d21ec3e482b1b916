//! Domain data storage.
//!
//! **Merkle core** ([`merkle`]): the BLAKE3 Merkle tree over 7168-byte chunks that both
//! ends of a transfer build while the bytes stream, and whose [`Root`] proves the
//! transfer. [`MerkleBuilder`] takes writes of any size in O(log n) memory (with a
//! parallel path for large batches), [`root_of`] hashes a buffer in one call, and
//! [`HashingReader`] / [`HashingWriter`] hash what passes through an async stream.
//!
//! ```
//! use domain_datastore::{MerkleBuilder, Root, root_of};
//!
//! let mut builder = MerkleBuilder::new();
//! builder.update(b"hello ").update(b"world");
//! let root: Root = builder.finalize();
//! assert_eq!(root, root_of(b"hello world"));
//! assert_eq!(root.to_string().parse::<Root>()?, root);
//! # Ok::<(), domain_datastore::ParseRootError>(())
//! ```
//!
//! (crate docs are written with the crate's content)

pub mod merkle;
pub use merkle::{
    CHUNK_SIZE, HashingReader, HashingWriter, MerkleBuilder, ParseRootError, Root, root_of,
};

pub mod local;
pub mod store;
pub mod subscription;

pub use local::{LocalContent, LocalDatastore, LocalOptions, RepairReport};

pub use store::{
    Datastore, DatastoreError, DomainId, InvalidDomainId, InvalidQuery, MAX_DOMAIN_ID_LEN,
    MAX_REGEX_LEN, QueryFilter, RegexField,
};
pub use subscription::{
    DEFAULT_SUBSCRIPTION_CAPACITY, Subscribers, Subscription, SubscriptionError,
};
