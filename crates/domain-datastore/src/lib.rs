//! Domain data storage: where the items of a domain live.
//!
//! [`store`], [`local`], [`catalog`], [`subscription`]: the [`Datastore`] trait that every
//! backend implements ([`LocalDatastore`] here; `domain-client`'s `RemoteDatastore` over a
//! cluster) — `put` an item from an `AsyncRead` and get back its
//! [`Metadata`](domain_proto::domain_data::Metadata) whose `hash` is the Merkle root
//! (`domain-merkle`) computed while the bytes were written; `get` metadata and an
//! `AsyncRead` of the content; `query` with the semantics of `domain_data.Query` (compiled
//! into a [`QueryFilter`]); `delete`; `subscribe` to a bounded stream of new items.
//! Every call names a [`DomainId`](domain_proto::DomainId), validated so that it is safe as a folder name.
//! [`LocalDatastore`] keeps content in files named by their root and metadata in a
//! [`Catalog`]: [`RedbCatalog`] (one table set per domain, indexed by name and data type)
//! unless it is opened with another (`domain-postgres` keeps it in PostgreSQL); a put is durable before it
//! returns, a crash leaves nothing partial, and opening repairs what a crash left
//! ([`RepairReport`]). A put can be resumable ([`Datastore::put_resumable`]): when its
//! content is cut short, the local store keeps the whole chunks received, and a later put
//! under the same key continues after them ([`Datastore::resume_point`]).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
//! use domain_datastore::{Datastore, LocalDatastore};
//! use domain_merkle::root_of;
//! use domain_proto::DomainId;
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

pub mod catalog;
pub mod local;
pub mod read_ahead;
pub mod store;
pub mod subscription;

pub use catalog::{Catalog, DomainUsage, Plan};
pub use local::{
    DEFAULT_PARTIAL_BYTES, DEFAULT_PARTIAL_TTL, LocalContent, LocalDatastore, LocalOptions,
    RedbCatalog, RepairReport, stream_into_file,
};
pub use read_ahead::ReadAhead;

pub use store::{
    Datastore, DatastoreError, InvalidQuery, MAX_ITEM_ID_LEN, MAX_REGEX_LEN, QueryFilter,
    RegexField, ResumePoint, check_replica_id, is_replica,
};
pub use subscription::{
    DEFAULT_SUBSCRIPTION_CAPACITY, Subscribers, Subscription, SubscriptionError,
};
