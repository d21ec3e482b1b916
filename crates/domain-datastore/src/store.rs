//! The [`Datastore`] trait and the types every backend shares: validated domain ids,
//! compiled queries, the error enum.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;

use domain_proto::domain_data::{Metadata, Query, UpsertMetadata};
use regex::{Regex, RegexBuilder};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt as _};

use crate::subscription::Subscription;
use domain_merkle::Root;
use domain_proto::DomainId;

/// Longest regular expression accepted in a [`Query`], in bytes (docs/design.md §9).
pub const MAX_REGEX_LEN: usize = 4096;

/// The `regex` crate's message (which points at the error on a second line) on one line.
fn regex_message(error: &regex::Error) -> String {
    error
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Memory a compiled query regex may use; larger programs are refused rather than built.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Which regular expression of a [`Query`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegexField {
    /// `Query.name_regexp`.
    Name,
    /// `Query.data_type_regexp`.
    DataType,
}

impl fmt::Display for RegexField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Name => "name_regexp",
            Self::DataType => "data_type_regexp",
        })
    }
}

/// Why a [`Query`] cannot be run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvalidQuery {
    /// A regular expression is longer than [`MAX_REGEX_LEN`].
    #[error("{field} is {len} bytes long, the limit is {max}")]
    RegexTooLong {
        /// The offending field.
        field: RegexField,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A regular expression does not parse, or compiles to a program over the size limit.
    #[error(
        "{field} {pattern:?} is not a usable regular expression: {}",
        regex_message(error)
    )]
    Regex {
        /// The offending field.
        field: RegexField,
        /// The pattern as given.
        pattern: String,
        /// What the `regex` crate reported.
        error: regex::Error,
    },
}

/// A [`Query`] compiled once and matched against many items.
///
/// Every non-empty criterion must hold (they combine with AND): `ids`, `names` and
/// `data_types` match exactly (an item matches a list when it equals any element);
/// `name_regexp` and `data_type_regexp` match anywhere in the text unless anchored;
/// `properties` (an extension) match when the item has every pair.
/// An empty query matches every item.
///
/// ```
/// use domain_datastore::QueryFilter;
/// use domain_proto::domain_data::{Metadata, Query};
///
/// let query = Query { name_regexp: Some("^scan-".into()), ..Default::default() };
/// let filter = QueryFilter::new(&query)?;
/// let item = Metadata { name: "scan-1".into(), data_type: "ply".into(), ..Default::default() };
/// assert!(filter.matches(&item));
/// # Ok::<_, domain_datastore::InvalidQuery>(())
/// ```
#[derive(Debug, Clone)]
pub struct QueryFilter {
    ids: Vec<String>,
    names: Vec<String>,
    data_types: Vec<String>,
    name_regex: Option<Regex>,
    data_type_regex: Option<Regex>,
    properties: Vec<(String, String)>,
    metadata_only: bool,
}

impl QueryFilter {
    /// Compiles `query`, refusing regular expressions over [`MAX_REGEX_LEN`] bytes or whose
    /// compiled form would be too large.
    pub fn new(query: &Query) -> Result<Self, InvalidQuery> {
        Ok(Self {
            ids: query.ids.clone(),
            names: query.names.clone(),
            data_types: query.data_types.clone(),
            name_regex: compile(RegexField::Name, query.name_regexp.as_deref())?,
            data_type_regex: compile(RegexField::DataType, query.data_type_regexp.as_deref())?,
            properties: {
                let mut pairs: Vec<(String, String)> = query
                    .properties
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                pairs.sort();
                pairs
            },
            metadata_only: query.metadata_only,
        })
    }

    /// Whether `item` satisfies every criterion of the query.
    pub fn matches(&self, item: &Metadata) -> bool {
        (self.ids.is_empty() || self.ids.contains(&item.id))
            && (self.names.is_empty() || self.names.contains(&item.name))
            && (self.data_types.is_empty() || self.data_types.contains(&item.data_type))
            && self
                .name_regex
                .as_ref()
                .is_none_or(|r| r.is_match(&item.name))
            && self
                .data_type_regex
                .as_ref()
                .is_none_or(|r| r.is_match(&item.data_type))
            && self
                .properties
                .iter()
                .all(|(key, value)| item.properties.get(key) == Some(value))
    }

    /// The exact ids asked for; empty means "any id".
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The exact names asked for; empty means "any name".
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The exact data types asked for; empty means "any data type".
    pub fn data_types(&self) -> &[String] {
        &self.data_types
    }

    /// The property pairs every match must have, sorted by key; empty means "any".
    pub fn properties(&self) -> &[(String, String)] {
        &self.properties
    }

    /// Whether the asker wants metadata without content.
    pub fn metadata_only(&self) -> bool {
        self.metadata_only
    }
}

fn compile(field: RegexField, pattern: Option<&str>) -> Result<Option<Regex>, InvalidQuery> {
    let Some(pattern) = pattern else {
        return Ok(None);
    };
    if pattern.len() > MAX_REGEX_LEN {
        return Err(InvalidQuery::RegexTooLong {
            field,
            len: pattern.len(),
            max: MAX_REGEX_LEN,
        });
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(Some)
        .map_err(|error| InvalidQuery::Regex {
            field,
            pattern: pattern.to_owned(),
            error,
        })
}

/// Longest item id a replica may be stored under, in bytes (ids this store makes are
/// 36-byte UUIDs).
pub const MAX_ITEM_ID_LEN: usize = 256;

/// Whether `item` is a copy to store under its own id (`UpsertMetadata.replica`, with
/// `is_new` false), created if no item has that id.
#[must_use]
pub fn is_replica(item: &UpsertMetadata) -> bool {
    !item.is_new && item.replica == Some(true)
}

/// Refuses an id a replica cannot be stored under: empty (the `/load/v1` caught-up
/// marker has an empty id) or longer than [`MAX_ITEM_ID_LEN`].
///
/// # Errors
/// [`DatastoreError::InvalidItemId`].
pub fn check_replica_id(id: &str) -> Result<(), DatastoreError> {
    if id.is_empty() || id.len() > MAX_ITEM_ID_LEN {
        return Err(DatastoreError::InvalidItemId {
            id: id.chars().take(80).collect(),
        });
    }
    Ok(())
}

/// Why a [`Datastore`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// A replica (an item under an id of its own) was given to a store that cannot keep
    /// one: a remote store reaches its cluster as a client, and only the copy tasks its
    /// manager places may choose ids there.
    #[error("this store takes no replicas: only its cluster's manager places copies")]
    ReplicasUnsupported,
    /// The content had fewer or more bytes than the announced `size`; nothing was stored.
    #[error("content size mismatch: announced {expected} bytes, got {got}{}", if *got > u64::from(*expected) { " or more" } else { "" })]
    SizeMismatch {
        /// `UpsertMetadata.size`.
        expected: u32,
        /// Bytes received; reading stops at `expected + 1`.
        got: u64,
    },
    /// A read was asked to start past the end of the item's content.
    #[error("offset {offset} is past the end of item {id:?} ({size} bytes)")]
    OffsetPastEnd {
        /// The item.
        id: String,
        /// The offset asked for.
        offset: u64,
        /// The content's size.
        size: u32,
    },
    /// A resumed put was to continue kept bytes that are no longer there (taken by another
    /// put under the same key, expired, evicted, or never kept by this store).
    #[error("no bytes are kept to resume upload {key:?} at offset {offset}")]
    ResumeLost {
        /// The resume key (at most its first 80 characters).
        key: String,
        /// The offset the put was to continue from.
        offset: u64,
    },
    /// A replica's id is empty or longer than [`MAX_ITEM_ID_LEN`].
    #[error("item id {id:?} cannot name a replica: it must be 1 to {MAX_ITEM_ID_LEN} bytes")]
    InvalidItemId {
        /// The id (at most its first 80 characters).
        id: String,
    },
    /// A copy of an item arrived after the item was deleted here: stored, it would bring
    /// the deleted item back.
    #[error("item {id:?} of domain {domain} was deleted here moments ago: its copy is refused")]
    DeletedHere {
        /// The domain.
        domain: DomainId,
        /// The item.
        id: String,
    },
    /// No item has this id in the domain.
    #[error("no item with id {id:?} in domain {domain}")]
    NotFound {
        /// The domain searched.
        domain: DomainId,
        /// The id asked for.
        id: String,
    },
    /// The query cannot be run.
    #[error("invalid query")]
    InvalidQuery(#[from] InvalidQuery),
    /// Reading the content to store failed (the caller's stream, not the store).
    #[error("reading the content of {name:?} failed")]
    ReadContent {
        /// `UpsertMetadata.name` of the item being stored.
        name: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// A file or folder of the store could not be used.
    #[error("{op} {path}", path = path.display())]
    Io {
        /// What was being done ("create", "fsync", "rename", ...).
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata catalog failed: its file, or its database server (the cause says
    /// which). Shared by the requests of a commit that failed together.
    #[error("metadata database failed")]
    Db(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
    /// Stored metadata does not decode or contradicts itself.
    #[error("corrupt metadata for item {id:?} in domain {domain}: {reason}")]
    Corrupt {
        /// The domain.
        domain: DomainId,
        /// The item.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// A remote backend could not do what was asked: the cluster refused, a node went
    /// away, a transfer failed.
    #[error("remote datastore, {during}")]
    Remote {
        /// What the backend was doing.
        during: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store folder was made with another kind of catalog: its blobs are named by
    /// rows this catalog does not hold.
    #[error("store {path} keeps its metadata in {recorded}, not in {given}", path = path.display())]
    OtherCatalog {
        /// The store folder.
        path: PathBuf,
        /// The catalog the folder records.
        recorded: String,
        /// The catalog it was opened with.
        given: String,
    },
    /// The store is shutting down: its commit worker no longer takes work.
    #[error("the datastore is shut down")]
    ShutDown,
    /// A blocking worker of the store panicked or was cancelled.
    #[error("datastore worker failed")]
    Worker(#[from] tokio::task::JoinError),
}

impl DatastoreError {
    /// [`DatastoreError::ResumeLost`] for `key` (its first 80 characters) at `offset`.
    pub(crate) fn resume_lost(key: &str, offset: u64) -> Self {
        Self::ResumeLost {
            key: key.chars().take(80).collect(),
            offset,
        }
    }
}

/// Where a put cut short under a resume key can continue: see
/// [`Datastore::resume_point`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// Content bytes kept, a whole number of [`CHUNK_SIZE`](domain_merkle::CHUNK_SIZE) chunks.
    pub offset: u64,
    /// The Merkle root of those bytes taken as content of their own.
    pub prefix_root: Root,
}

/// A store of domain data items: metadata plus a content blob whose Merkle root is
/// [`Metadata::hash`].
///
/// Shaped for streaming and for both backends (local files now, a remote peer later):
/// content goes in as [`AsyncRead`] and out as [`AsyncBufRead`]; nothing is buffered whole in memory.
/// Every operation names its domain; items never cross domains.
pub trait Datastore: Send + Sync + 'static {
    /// The content reader [`get`](Self::get) returns. Buffered, so that a sender can
    /// write straight from the store's own buffers.
    type Content: AsyncBufRead + Send + Unpin + 'static;

    /// Stores one item and returns its metadata, whose `hash` is the Merkle root computed
    /// while the bytes were written (one pass, nothing read back).
    ///
    /// `content` must end after exactly `item.size` bytes: the store reads at most
    /// `size + 1` bytes and answers [`DatastoreError::SizeMismatch`] for fewer or more,
    /// storing nothing. When the bytes come from a stream that carries more after them,
    /// pass `stream.take(size)`.
    ///
    /// With `item.is_new` the item gets a new id (a UUID v4; `item.id` is ignored);
    /// otherwise the item with id `item.id` is replaced ([`DatastoreError::NotFound`] if
    /// there is none) and its old content released once no item uses it. A replica
    /// ([`is_replica`]: a copy of an item held elsewhere) is stored under `item.id`
    /// whether or not an item has it ([`DatastoreError::InvalidItemId`] for an empty or
    /// over-long id).
    /// The item is visible to readers and subscribers only once the call succeeds.
    fn put<R: AsyncRead + Send + Unpin>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        content: R,
    ) -> impl Future<Output = Result<Metadata, DatastoreError>> + Send;

    /// What this store kept of an earlier [`put_resumable`](Self::put_resumable) of an
    /// item of `size` bytes under `key` in `domain` that was cut short: `None` when it kept
    /// nothing (the default: a store that does not keep cut puts), or when another put
    /// under that key is under way.
    fn resume_point(
        &self,
        domain: &DomainId,
        key: &str,
        size: u32,
    ) -> impl Future<Output = Result<Option<ResumePoint>, DatastoreError>> + Send {
        let _ = (domain, key, size);
        std::future::ready(Ok(None))
    }

    /// As [`put`](Self::put), for content that starts at byte `from` of the item: 0, or
    /// the offset of the [`resume_point`](Self::resume_point) this store gave for `key`,
    /// whose bytes stand for the first `from` bytes. When `content` fails or ends early,
    /// the store may keep the whole chunks received, for a later put under the same key
    /// and size to continue; nothing is visible to readers until a put succeeds.
    ///
    /// The default keeps nothing.
    ///
    /// # Errors
    /// As [`put`](Self::put), and [`DatastoreError::ResumeLost`] when the bytes before
    /// `from` are no longer kept.
    fn put_resumable<R: AsyncRead + Send + Unpin>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        key: &str,
        from: u64,
        content: R,
    ) -> impl Future<Output = Result<Metadata, DatastoreError>> + Send {
        async move {
            if from > 0 {
                return Err(DatastoreError::resume_lost(key, from));
            }
            self.put(domain, item, content).await
        }
    }

    /// The metadata of item `id` and a reader of exactly `metadata.size` content bytes.
    fn get(
        &self,
        domain: &DomainId,
        id: &str,
    ) -> impl Future<Output = Result<(Metadata, Self::Content), DatastoreError>> + Send;

    /// As [`get`](Self::get), with a reader of the content from byte `offset` on
    /// (`metadata.size - offset` bytes): what a resumed download sends.
    ///
    /// The default reads past the first `offset` bytes; a backend that can seek should.
    ///
    /// # Errors
    /// As [`get`](Self::get), and [`DatastoreError::OffsetPastEnd`] beyond the content.
    fn get_from(
        &self,
        domain: &DomainId,
        id: &str,
        offset: u64,
    ) -> impl Future<Output = Result<(Metadata, Self::Content), DatastoreError>> + Send {
        async move {
            let (metadata, mut content) = self.get(domain, id).await?;
            if offset > u64::from(metadata.size) {
                return Err(DatastoreError::OffsetPastEnd {
                    id: metadata.id,
                    offset,
                    size: metadata.size,
                });
            }
            let skipped = tokio::io::copy(&mut (&mut content).take(offset), &mut tokio::io::sink())
                .await
                .map_err(|source| DatastoreError::ReadContent {
                    name: metadata.name.clone(),
                    source,
                })?;
            if skipped < offset {
                return Err(DatastoreError::Corrupt {
                    domain: domain.clone(),
                    id: metadata.id,
                    reason: format!("content ends after {skipped} of {} bytes", metadata.size),
                });
            }
            Ok((metadata, content))
        }
    }

    /// The metadata of every item matching `query` (see [`QueryFilter`] for the semantics),
    /// ordered by id. `query.metadata_only` does not change the answer; it tells the
    /// caller whether to fetch content with [`get`](Self::get).
    fn query(
        &self,
        domain: &DomainId,
        query: &Query,
    ) -> impl Future<Output = Result<Vec<Metadata>, DatastoreError>> + Send;

    /// Removes item `id`; its content is released once no item uses it.
    fn delete(
        &self,
        domain: &DomainId,
        id: &str,
    ) -> impl Future<Output = Result<(), DatastoreError>> + Send;

    /// A bounded stream of the metadata of items stored (new or replaced) in `domain`
    /// after this call, that match `query`.
    ///
    /// A subscriber that falls behind by more than the store's subscription capacity is
    /// dropped: its stream yields what it had queued, then
    /// [`SubscriptionError::Lagged`](crate::SubscriptionError::Lagged), then ends. Writers
    /// never wait for subscribers. To see existing items and new ones without a gap,
    /// subscribe first, then [`query`](Self::query), and skip ids seen twice.
    fn subscribe(&self, domain: &DomainId, query: &Query) -> Result<Subscription, DatastoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, name: &str, data_type: &str) -> Metadata {
        Metadata {
            id: id.into(),
            name: name.into(),
            data_type: data_type.into(),
            ..Default::default()
        }
    }

    #[test]
    fn empty_query_matches_everything() {
        let filter = QueryFilter::new(&Query::default()).unwrap();
        assert!(filter.matches(&item("1", "a", "b")));
    }

    #[test]
    fn query_criteria_combine_with_and() {
        let query = Query {
            names: vec!["scan".into(), "mesh".into()],
            data_type_regexp: Some("^ply$".into()),
            ..Default::default()
        };
        let filter = QueryFilter::new(&query).unwrap();
        assert!(filter.matches(&item("1", "scan", "ply")));
        assert!(filter.matches(&item("2", "mesh", "ply")));
        assert!(!filter.matches(&item("3", "scan", "ply2")));
        assert!(!filter.matches(&item("4", "scans", "ply")));
    }

    #[test]
    fn regex_matches_anywhere_unless_anchored() {
        let filter = QueryFilter::new(&Query {
            name_regexp: Some("can".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(filter.matches(&item("1", "scan-1", "t")));
        let anchored = QueryFilter::new(&Query {
            name_regexp: Some("^can".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(!anchored.matches(&item("1", "scan-1", "t")));
    }

    #[test]
    fn oversized_or_broken_regex_is_refused() {
        let long = Query {
            name_regexp: Some("a".repeat(MAX_REGEX_LEN + 1)),
            ..Default::default()
        };
        assert!(matches!(
            QueryFilter::new(&long),
            Err(InvalidQuery::RegexTooLong {
                field: RegexField::Name,
                ..
            })
        ));
        let broken = Query {
            data_type_regexp: Some("(".into()),
            ..Default::default()
        };
        assert!(matches!(
            QueryFilter::new(&broken),
            Err(InvalidQuery::Regex {
                field: RegexField::DataType,
                ..
            })
        ));
        // Short to write, huge to compile: the size limit refuses it.
        let blowup = Query {
            name_regexp: Some(r"\w{1000}\w{1000}\w{1000}".into()),
            ..Default::default()
        };
        assert!(matches!(
            QueryFilter::new(&blowup),
            Err(InvalidQuery::Regex { .. })
        ));
    }
}
