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
//! **The store** ([`store`], [`local`], [`subscription`]): the [`Datastore`] trait that
//! every backend implements (local files now, a remote peer later) — `put` an item from
//! an `AsyncRead` and get back its [`Metadata`](domain_proto::domain_data::Metadata) whose
//! `hash` is the Merkle root computed while the bytes were written; `get` metadata and an
//! `AsyncRead` of the content; `query` with the semantics of `domain_data.Query` (compiled
//! into a [`QueryFilter`]); `delete`; `subscribe` to a bounded stream of new items.
//! Every call names a [`DomainId`], validated so that it is safe as a folder name.
//! [`LocalDatastore`] keeps metadata in redb (one table set per domain, indexed by name
//! and data type) and content in files named by their root; a put is durable before it
//! returns, a crash leaves nothing partial, and opening repairs what a crash left
//! ([`RepairReport`]). A put can be resumable ([`Datastore::put_resumable`]): when its
//! content is cut short, the local store keeps the whole chunks received, and a later put
//! under the same key continues after them ([`Datastore::resume_point`]).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
//! use domain_datastore::{Datastore, DomainId, LocalDatastore, root_of};
//! use domain_proto::domain_data::{Query, UpsertMetadata};
//! use tokio::io::AsyncReadExt;
//!
//! let dir = tempfile::tempdir()?;
//! let store = LocalDatastore::open(dir.path()).await?;
//! let domain = DomainId::new("my-domain")?;
//! let item = UpsertMetadata {
//!     name: "scan".into(),
//!     data_type: "ply".into(),
//!     size: 5,
//!     is_new: true,
//!     ..Default::default()
//! };
//! let stored = store.put(&domain, item, &b"hello"[..]).await?;
//! assert_eq!(stored.hash, Some(root_of(b"hello").to_string()));
//!
//! let query = Query { names: vec!["scan".into()], ..Default::default() };
//! assert_eq!(store.query(&domain, &query).await?, vec![stored.clone()]);
//!
//! let (_, mut content) = store.get(&domain, &stored.id).await?;
//! let mut bytes = Vec::new();
//! content.read_to_end(&mut bytes).await?;
//! assert_eq!(bytes, b"hello");
//! store.delete(&domain, &stored.id).await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(())
//! # }
//! ```

pub mod merkle;
pub use merkle::{
    BackgroundBuilder, CHUNK_SIZE, Cores, HasherStopped, HashingReader, HashingWriter,
    MerkleBuilder, ParseRootError, Root, root_of,
};

pub mod local;
pub mod read_ahead;
pub mod store;
pub mod subscription;

pub use local::{
    DEFAULT_PARTIAL_BYTES, DEFAULT_PARTIAL_TTL, DomainUsage, LocalContent, LocalDatastore,
    LocalOptions, RepairReport, stream_into_file,
};
pub use read_ahead::ReadAhead;

pub use store::{
    Datastore, DatastoreError, DomainId, InvalidDomainId, InvalidQuery, MAX_DOMAIN_ID_LEN,
    MAX_ITEM_ID_LEN, MAX_REGEX_LEN, QueryFilter, RegexField, ResumePoint, check_replica_id,
    is_replica,
};
pub use subscription::{
    DEFAULT_SUBSCRIPTION_CAPACITY, Subscribers, Subscription, SubscriptionError,
};
