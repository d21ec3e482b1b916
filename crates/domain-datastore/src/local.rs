//! The local backend: content as files named by their Merkle root, metadata in a
//! [`Catalog`] (redb by default).
//!
//! Layout of a store folder:
//!
//! ```text
//! catalog                 the kind of catalog the store was made with (`redb`,
//!                         `postgres schema …`): another is refused
//! meta.redb               metadata, one table set per domain (see `tables`), unless the
//!                         store was opened with another catalog
//! tmp/<uuid>.part         uploads in progress; removed at open
//! blobs/<domain>/<root>   content, one file per distinct Merkle root per domain
//! partials/<id>           the first whole chunks of resumable uploads cut short (see
//!                         `partial`), bounded in total size and age
//! ```
//!
//! A put streams the content into a temporary file in large batches, hashing each batch
//! into the Merkle tree while it is written (one pass, nothing read back), fsyncs it, and
//! hands it to the commit worker, which renames it into place, fsyncs the folder, commits
//! the metadata and only then answers. Identical content is stored once per domain and
//! reference-counted; the file goes when the last item using it goes.

mod blob;
mod commit;
mod meta;
mod metrics;
mod partial;
mod redb_catalog;
mod repair;
mod tables;
mod write;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use domain_proto::domain_data::{Metadata, Query, UpsertMetadata};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};

pub use redb_catalog::RedbCatalog;
pub use repair::RepairReport;
pub use write::stream_into_file;

use crate::catalog::{Catalog, DomainUsage};
use crate::read_ahead::ReadAhead;
use crate::store::{
    Datastore, DatastoreError, QueryFilter, ResumePoint, check_replica_id, is_replica,
};
use crate::subscription::{DEFAULT_SUBSCRIPTION_CAPACITY, Subscribers, Subscription};
use commit::{Content, DeleteRequest, PutRequest, Request, Worker};
use domain_merkle::{CHUNK_SIZE, Root, root_of};
use domain_proto::DomainId;
use metrics::StoreMetrics;
use partial::Partials;
use write::{Cut, Start, write_content};

/// Bytes read from the caller and written to disk per batch.
const IO_BATCH: usize = 1 << 20;

/// Batch writes under way at once: the disk idles between writes when there is one.
const WRITES_IN_FLIGHT: usize = 4;

/// Batches that may wait for the hasher: enough that a hasher slowed down for a moment
/// (its cores taken by the sender, on one machine) does not hold the disk's writes up.
const HASH_QUEUE: usize = 8;

/// How long an offer waits for the put that holds its key to end: the put of a stream
/// just cut is still keeping its bytes when the sender comes back.
const RELEASE_PATIENCE: Duration = Duration::from_secs(2);

/// Items up to this size are read into memory and hashed at once; larger ones stream.
const INLINE_MAX: u32 = 64 << 10;

/// Settings of a [`LocalDatastore`].
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Items each subscriber may have waiting before it is dropped.
    pub subscription_capacity: usize,
    /// Bytes of cut resumable puts kept at most, all keys together; the oldest go first.
    pub partial_bytes: u64,
    /// How long the bytes of a cut resumable put are kept.
    pub partial_ttl: Duration,
}

/// Default of [`LocalOptions::partial_bytes`]: 4 GiB.
pub const DEFAULT_PARTIAL_BYTES: u64 = 4 << 30;

/// Default of [`LocalOptions::partial_ttl`]: a day.
pub const DEFAULT_PARTIAL_TTL: Duration = Duration::from_secs(24 * 60 * 60);

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            subscription_capacity: DEFAULT_SUBSCRIPTION_CAPACITY,
            partial_bytes: DEFAULT_PARTIAL_BYTES,
            partial_ttl: DEFAULT_PARTIAL_TTL,
        }
    }
}

/// A [`Datastore`] in a folder of the local filesystem.
///
/// Cheap to clone (clones share the store). Only one process may open a folder at a time:
/// the metadata database is locked while open.
#[derive(Debug, Clone)]
pub struct LocalDatastore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    tmp_dir: PathBuf,
    blobs_dir: PathBuf,
    catalog: Arc<dyn Catalog>,
    subscribers: Arc<Subscribers>,
    partials: Arc<Partials>,
    commits: CommitQueue,
    repair: RepairReport,
    metrics: StoreMetrics,
}

/// The sending side of the commit worker; dropping it stops the worker and waits for it,
/// so the database is closed when the last clone of the store is dropped.
struct CommitQueue {
    sender: Option<mpsc::Sender<Request>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for CommitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitQueue").finish_non_exhaustive()
    }
}

impl Drop for CommitQueue {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("the datastore commit worker panicked");
            }
        }
    }
}

impl LocalDatastore {
    /// Opens the store in `dir` (created if missing) with default options.
    /// See [`open_with`](Self::open_with).
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self, DatastoreError> {
        Self::open_with(dir, LocalOptions::default()).await
    }

    /// Opens the store in `dir` (created if missing), with its metadata in `dir/meta.redb`;
    /// removes what an interrupted process left and repairs disagreements between metadata
    /// and blob files; what was repaired is in [`repair_report`](Self::repair_report).
    pub async fn open_with(
        dir: impl AsRef<Path>,
        options: LocalOptions,
    ) -> Result<Self, DatastoreError> {
        let dir = dir.as_ref().to_owned();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
            // Before the file is made: a folder of another catalog gets none.
            check_catalog_kind(&dir, redb_catalog::REDB_KIND)?;
            // Opening takes the file's lock, so the repair cannot race another process.
            let catalog = RedbCatalog::open(&dir.join("meta.redb"))?;
            Self::open_blocking(dir, options, Arc::new(catalog))
        })
        .await?
    }

    /// As [`open_with`](Self::open_with), with the metadata in `catalog` (a server
    /// database, say) instead of `dir/meta.redb`. The catalog must be this store's alone:
    /// its rows name blob files in `dir`.
    pub async fn open_with_catalog(
        dir: impl AsRef<Path>,
        options: LocalOptions,
        catalog: Arc<dyn Catalog>,
    ) -> Result<Self, DatastoreError> {
        let dir = dir.as_ref().to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(dir, options, catalog)).await?
    }

    fn open_blocking(
        dir: PathBuf,
        options: LocalOptions,
        catalog: Arc<dyn Catalog>,
    ) -> Result<Self, DatastoreError> {
        let tmp_dir = dir.join("tmp");
        let blobs_dir = dir.join("blobs");
        for d in [&dir, &tmp_dir, &blobs_dir] {
            std::fs::create_dir_all(d).map_err(|e| io_error("create", d, e))?;
        }
        check_catalog_kind(&dir, &catalog.kind())?;
        let repair = repair::repair(catalog.as_ref(), &tmp_dir, &blobs_dir)?;
        let partials = Arc::new(Partials::open(
            dir.join("partials"),
            options.partial_bytes,
            options.partial_ttl,
        )?);
        for d in [&dir, &blobs_dir] {
            fsync_dir(d).map_err(|e| io_error("fsync", d, e))?;
        }

        let subscribers = Arc::new(Subscribers::new(options.subscription_capacity));
        let (sender, receiver) = mpsc::channel(commit::QUEUE);
        let metrics = StoreMetrics::default();
        let worker = Worker {
            catalog: Arc::clone(&catalog),
            blobs_dir: blobs_dir.clone(),
            tmp_dir: tmp_dir.clone(),
            subscribers: Arc::clone(&subscribers),
            metrics: metrics.clone(),
            recent_deletes: commit::RecentDeletes::default(),
        };
        let worker = std::thread::Builder::new()
            .name("datastore-commit".into())
            .spawn(move || worker.run(receiver))
            .map_err(|e| io_error("start the commit worker for", &dir, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                tmp_dir,
                blobs_dir,
                catalog,
                subscribers,
                partials,
                commits: CommitQueue {
                    sender: Some(sender),
                    worker: Some(worker),
                },
                repair,
                metrics,
            }),
        })
    }

    /// Registers the store's metrics in `registry`, under the caller's prefix (a node uses
    /// `domain_datastore`): `put_seconds` and `fsync_seconds` (histograms), and, read at
    /// each scrape, `items{domain}`, `stored_bytes{domain}` and `partial_bytes` (the bytes
    /// kept of cut resumable puts).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        metrics::register(
            registry,
            &self.inner.metrics,
            Arc::clone(&self.inner.catalog),
            self.inner.dir.join("partials"),
        );
    }

    /// The store's folder.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// What opening the store found and repaired.
    pub fn repair_report(&self) -> &RepairReport {
        &self.inner.repair
    }

    /// The metadata of item `id`, without opening its content.
    pub async fn metadata(&self, domain: &DomainId, id: &str) -> Result<Metadata, DatastoreError> {
        let inner = Arc::clone(&self.inner);
        let (domain, id) = (domain.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || inner.read_item(&domain, &id)).await?
    }

    /// Items and content bytes of every domain with at least one item, in domain order:
    /// what a node tells its manager it holds. It reads counters, never the items.
    ///
    /// # Errors
    /// [`DatastoreError::Db`].
    pub async fn usage(&self) -> Result<Vec<DomainUsage>, DatastoreError> {
        let catalog = Arc::clone(&self.inner.catalog);
        tokio::task::spawn_blocking(move || catalog.usage()).await?
    }

    /// The path of the blob file with `root` in `domain` (it may not exist).
    pub fn blob_path(&self, domain: &DomainId, root: &Root) -> PathBuf {
        self.inner
            .blobs_dir
            .join(domain.as_str())
            .join(root.to_string())
    }

    async fn send(&self, request: Request) -> Result<(), DatastoreError> {
        let sender = self
            .inner
            .commits
            .sender
            .as_ref()
            .ok_or(DatastoreError::ShutDown)?;
        sender
            .send(request)
            .await
            .map_err(|_| DatastoreError::ShutDown)
    }

    async fn put_impl<R: AsyncRead + Send + Unpin>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        content: R,
    ) -> Result<Metadata, DatastoreError> {
        self.check_target(domain, &item).await?;
        let temp_path = self.temp_path();
        let (root, content) = if item.size <= INLINE_MAX {
            let bytes = read_small(&item, content).await?;
            let root = root_of(&bytes);
            // Identical content is stored once: when it is there, no file is written at all.
            let content = if self.blob_exists(domain, &root).await {
                Content::Inline(bytes)
            } else {
                let temp =
                    tokio::task::spawn_blocking(move || write_small(temp_path, &bytes)).await??;
                // Synced by the commit worker, together with the other small items it takes.
                Content::File {
                    temp,
                    synced: false,
                }
            };
            (root, content)
        } else {
            // The guard is made with the file, so a cancelled put cannot leave it behind.
            let (file, temp) = tokio::task::spawn_blocking(move || {
                let file = std::fs::File::create_new(&temp_path)
                    .map_err(|e| io_error("create", &temp_path, e))?;
                Ok::<_, DatastoreError>((file, TempFile::new(temp_path)))
            })
            .await??;
            let (root, file) = write_content(
                file,
                temp.path(),
                &item.name,
                item.size,
                content,
                Start::empty(),
            )
            .await
            .map_err(|cut| cut.error)?;
            (root, self.written(domain, root, temp, file).await?)
        };
        self.commit(domain, item, root, content).await
    }

    /// A put that keeps what it received when `content` is cut short: see
    /// [`Datastore::put_resumable`].
    async fn put_resumable_impl<R: AsyncRead + Send + Unpin>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        key: &str,
        from: u64,
        content: R,
    ) -> Result<Metadata, DatastoreError> {
        let id = Partials::id(domain, key, item.size);
        // Under a chunk there is nothing to keep; a key in use by another put is not
        // shared: this put keeps nothing.
        let claim = (u64::from(item.size) > CHUNK_SIZE as u64)
            .then(|| self.inner.partials.claim(id))
            .flatten();
        let Some(mut claim) = claim else {
            return if from == 0 {
                self.put_impl(domain, item, content).await
            } else {
                Err(DatastoreError::resume_lost(key, from))
            };
        };
        self.check_target(domain, &item).await?;
        let temp_path = self.temp_path();
        let key_text = key.to_owned();
        let (file, tree, temp, claim) = tokio::task::spawn_blocking(move || {
            let temp = TempFile::new(temp_path);
            let (file, tree) = claim.take(temp.path(), from, &key_text)?;
            Ok::<_, DatastoreError>((file, tree, temp, claim))
        })
        .await??;
        let start = Start { offset: from, tree };
        match write_content(file, temp.path(), &item.name, item.size, content, start).await {
            Ok((root, file)) => {
                drop(claim);
                let content = self.written(domain, root, temp, file).await?;
                self.commit(domain, item, root, content).await
            }
            Err(Cut {
                error,
                kept: Some(tree),
            }) => {
                let mut temp = temp;
                let kept = tokio::task::spawn_blocking(move || {
                    let kept = claim.keep(temp.path(), tree);
                    if matches!(kept, Ok(true)) {
                        temp.disarm();
                    }
                    kept
                })
                .await?;
                if let Err(keeping) = kept {
                    tracing::warn!(error = %domain_proto::ErrorChain(&keeping), "cannot keep the bytes of a cut upload");
                }
                Err(error)
            }
            Err(Cut { error, kept: None }) => Err(error),
        }
    }

    /// Fails before any byte is taken when `item` cannot be stored: an upsert of an item
    /// that does not exist, a replica without a usable id. The commit checks again.
    async fn check_target(
        &self,
        domain: &DomainId,
        item: &UpsertMetadata,
    ) -> Result<(), DatastoreError> {
        if is_replica(item) {
            check_replica_id(&item.id)?;
        } else if !item.is_new {
            self.metadata(domain, &item.id).await?;
        }
        Ok(())
    }

    fn temp_path(&self) -> PathBuf {
        self.inner
            .tmp_dir
            .join(format!("{}.part", uuid::Uuid::new_v4()))
    }

    async fn blob_exists(&self, domain: &DomainId, root: &Root) -> bool {
        let blob = self.blob_path(domain, root);
        tokio::fs::try_exists(&blob).await.unwrap_or(false)
    }

    /// The content of a streamed put, fsynced unless this content is already stored (the
    /// copy will be dropped then).
    async fn written(
        &self,
        domain: &DomainId,
        root: Root,
        temp: TempFile,
        file: std::fs::File,
    ) -> Result<Content, DatastoreError> {
        let synced = if self.blob_exists(domain, &root).await {
            false
        } else {
            let sync_path = temp.path().to_owned();
            let metrics = self.inner.metrics.clone();
            tokio::task::spawn_blocking(move || {
                metrics
                    .fsync(|| file.sync_all())
                    .map_err(|e| io_error("fsync", &sync_path, e))
            })
            .await??;
            true
        };
        Ok(Content::File { temp, synced })
    }

    /// Hands a received item to the commit worker and waits for its answer.
    async fn commit(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        root: Root,
        content: Content,
    ) -> Result<Metadata, DatastoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Put(PutRequest {
            domain: domain.clone(),
            item,
            root,
            content,
            reply: Some(reply),
        }))
        .await?;
        answer.await.map_err(|_| DatastoreError::ShutDown)?
    }
}

impl Inner {
    fn read_item(&self, domain: &DomainId, id: &str) -> Result<Metadata, DatastoreError> {
        self.catalog
            .item(domain, id)?
            .ok_or_else(|| DatastoreError::NotFound {
                domain: domain.clone(),
                id: id.to_owned(),
            })
    }

    /// Item `id` and its blob file, to be read from `offset`, which is checked against the
    /// item's size.
    fn open_content(
        &self,
        domain: &DomainId,
        id: &str,
        offset: u64,
    ) -> Result<(Metadata, std::fs::File), DatastoreError> {
        let item = self.read_item(domain, id)?;
        if offset > u64::from(item.size) {
            return Err(DatastoreError::OffsetPastEnd {
                id: item.id,
                offset,
                size: item.size,
            });
        }
        let path = self
            .blobs_dir
            .join(domain.as_str())
            .join(item.hash.as_deref().unwrap_or_default());
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            // Deleted between the metadata read and the open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DatastoreError::NotFound {
                    domain: domain.clone(),
                    id: id.to_owned(),
                });
            }
            Err(e) => return Err(io_error("open", &path, e)),
        };
        Ok((item, file))
    }
}

impl Datastore for LocalDatastore {
    type Content = LocalContent;

    async fn put<R: AsyncRead + Send + Unpin>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        content: R,
    ) -> Result<Metadata, DatastoreError> {
        let start = std::time::Instant::now();
        let stored = self.put_impl(domain, item, content).await?;
        self.inner
            .metrics
            .put_seconds
            .observe(start.elapsed().as_secs_f64());
        Ok(stored)
    }

    /// The whole chunks kept of a cut [`put_resumable`](Datastore::put_resumable) under
    /// `key`, read back from their file (and hashed) unless the put that kept them is
    /// remembered. While another put holds the key, waits up to 2 s for it to end (it
    /// may be the one whose stream was just cut, still keeping its bytes) before
    /// answering `None`.
    async fn resume_point(
        &self,
        domain: &DomainId,
        key: &str,
        size: u32,
    ) -> Result<Option<ResumePoint>, DatastoreError> {
        let partials = Arc::clone(&self.inner.partials);
        let id = Partials::id(domain, key, size);
        partials.wait_released(&id, RELEASE_PATIENCE).await;
        tokio::task::spawn_blocking(move || partials.point(&id, size)).await?
    }

    /// Keeps the whole chunks received when `content` fails or ends early, in
    /// `partials/` (see [`LocalOptions::partial_bytes`] and
    /// [`LocalOptions::partial_ttl`]). A resumed put writes through the page cache.
    async fn put_resumable<R: AsyncRead + Send + Unpin>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        key: &str,
        from: u64,
        content: R,
    ) -> Result<Metadata, DatastoreError> {
        let start = std::time::Instant::now();
        let stored = self
            .put_resumable_impl(domain, item, key, from, content)
            .await?;
        self.inner
            .metrics
            .put_seconds
            .observe(start.elapsed().as_secs_f64());
        Ok(stored)
    }

    async fn get(
        &self,
        domain: &DomainId,
        id: &str,
    ) -> Result<(Metadata, LocalContent), DatastoreError> {
        self.get_from(domain, id, 0).await
    }

    /// Seeks the blob file to `offset`: nothing before it is read.
    async fn get_from(
        &self,
        domain: &DomainId,
        id: &str,
        offset: u64,
    ) -> Result<(Metadata, LocalContent), DatastoreError> {
        let inner = Arc::clone(&self.inner);
        let (domain, id) = (domain.clone(), id.to_owned());
        let (item, file) =
            tokio::task::spawn_blocking(move || inner.open_content(&domain, &id, offset)).await??;
        let len = u64::from(item.size) - offset;
        Ok((
            item,
            LocalContent {
                inner: ReadAhead::new(file, offset, len),
            },
        ))
    }

    async fn query(
        &self,
        domain: &DomainId,
        query: &Query,
    ) -> Result<Vec<Metadata>, DatastoreError> {
        let filter = QueryFilter::new(query)?;
        let inner = Arc::clone(&self.inner);
        let domain = domain.clone();
        tokio::task::spawn_blocking(move || inner.catalog.query(&domain, &filter)).await?
    }

    async fn delete(&self, domain: &DomainId, id: &str) -> Result<(), DatastoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Delete(DeleteRequest {
            domain: domain.clone(),
            id: id.to_owned(),
            reply,
        }))
        .await?;
        answer.await.map_err(|_| DatastoreError::ShutDown)?
    }

    fn subscribe(&self, domain: &DomainId, query: &Query) -> Result<Subscription, DatastoreError> {
        Ok(self
            .inner
            .subscribers
            .subscribe(domain, QueryFilter::new(query)?))
    }
}

/// The content of an item of a [`LocalDatastore`]: exactly `size` bytes of its blob file.
#[derive(Debug)]
pub struct LocalContent {
    inner: ReadAhead,
}

impl AsyncRead for LocalContent {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncBufRead for LocalContent {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.inner).consume(amt);
    }
}

/// Reads the whole content of a small item (at most `size + 1` bytes).
async fn read_small<R: AsyncRead + Unpin>(
    item: &UpsertMetadata,
    content: R,
) -> Result<Vec<u8>, DatastoreError> {
    let limit = u64::from(item.size) + 1;
    let mut bytes = Vec::with_capacity(item.size as usize + 1);
    content
        .take(limit)
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| DatastoreError::ReadContent {
            name: item.name.clone(),
            source,
        })?;
    if bytes.len() as u64 != u64::from(item.size) {
        return Err(DatastoreError::SizeMismatch {
            expected: item.size,
            got: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Writes a small item's temporary file, unsynced: the commit worker syncs it.
fn write_small(path: PathBuf, bytes: &[u8]) -> Result<TempFile, DatastoreError> {
    let mut file = std::fs::File::create_new(&path).map_err(|e| io_error("create", &path, e))?;
    let temp = TempFile::new(path);
    file.write_all(bytes)
        .map_err(|e| io_error("write", temp.path(), e))?;
    Ok(temp)
}

/// A temporary file that is removed when dropped, unless it was moved into place.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// The file was renamed away: nothing to remove.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = std::fs::remove_file(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    // The next open removes it.
                    tracing::warn!(path = %self.path.display(), error = %domain_proto::ErrorChain(&e), "cannot remove temporary file");
                }
            }
        }
    }
}

/// The file in a store folder naming the kind of catalog it was made with.
const CATALOG_FILE: &str = "catalog";

/// Refuses a store folder made with another kind of catalog, and records `kind` in one
/// that records none. A folder from before the record, with a `meta.redb`, is a redb one.
fn check_catalog_kind(dir: &Path, kind: &str) -> Result<(), DatastoreError> {
    let path = dir.join(CATALOG_FILE);
    let recorded = match std::fs::read_to_string(&path) {
        Ok(recorded) => Some(recorded.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir
            .join("meta.redb")
            .exists()
            .then(|| redb_catalog::REDB_KIND.to_owned()),
        Err(e) => return Err(io_error("read", &path, e)),
    };
    match recorded {
        Some(recorded) if recorded == kind => {}
        Some(recorded) => {
            return Err(DatastoreError::OtherCatalog {
                path: dir.to_owned(),
                recorded,
                given: kind.to_owned(),
            });
        }
        None => {}
    }
    if !path.exists() {
        let temp = dir.join(format!("{CATALOG_FILE}.part"));
        std::fs::write(&temp, format!("{kind}\n")).map_err(|e| io_error("write", &temp, e))?;
        std::fs::File::open(&temp)
            .and_then(|file| file.sync_all())
            .map_err(|e| io_error("fsync", &temp, e))?;
        std::fs::rename(&temp, &path).map_err(|e| io_error("rename", &path, e))?;
        fsync_dir(dir).map_err(|e| io_error("fsync", dir, e))?;
    }
    Ok(())
}

/// Makes the entries of `dir` (creations, renames) durable.
fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn io_error(op: &'static str, path: &Path, source: std::io::Error) -> DatastoreError {
    DatastoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}
