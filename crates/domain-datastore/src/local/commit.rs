//! The commit worker: the one thread that changes metadata and blob files.
//!
//! Puts and deletes queue here once their bytes are written. The worker takes every
//! request waiting (up to [`MAX_BATCH`]), makes the bytes of small items durable with one
//! `syncfs` for all of them, renames their blobs into place, fsyncs each touched folder
//! once, applies them all in one catalog transaction (one fsync), then removes the blob
//! files no item uses any more. Concurrent writers thus share the fixed cost of a durable commit,
//! and because only this thread touches the blob folders and the reference counts, "the
//! file exists" always means "some committed item uses it, or is about to".

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use domain_proto::domain_data::{Metadata, UpsertMetadata};
use tokio::sync::{mpsc, oneshot};

use super::metrics::StoreMetrics;
use super::{TempFile, fsync_dir, io_error};
use crate::catalog::{BlobKey, Catalog, ItemKey, Planner};
use crate::store::{DatastoreError, is_replica};
use crate::subscription::Subscribers;
use domain_merkle::Root;
use domain_proto::DomainId;

/// Most requests committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Unsynced files from which a batch syncs its file system once instead of each file.
const SYNC_TOGETHER_MIN: usize = 2;

/// Requests waiting for the worker; senders wait when it is full.
pub(super) const QUEUE: usize = 1024;

/// How long, and how many, deletes the worker remembers to refuse a copy of the item that
/// arrives after them (a copy streamed while a client deleted the item everywhere).
const RECENT_DELETES_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 60);
const MAX_RECENT_DELETES: usize = 100_000;

/// The items deleted here lately, oldest first.
#[derive(Default)]
pub(super) struct RecentDeletes {
    ids: std::collections::HashSet<(DomainId, String)>,
    order: std::collections::VecDeque<(std::time::Instant, (DomainId, String))>,
}

impl RecentDeletes {
    fn record(&mut self, domain: &DomainId, id: &str) {
        let now = std::time::Instant::now();
        let key = (domain.clone(), id.to_owned());
        if self.ids.insert(key.clone()) {
            self.order.push_back((now, key));
        }
        while self.order.len() > MAX_RECENT_DELETES
            || self
                .order
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > RECENT_DELETES_TTL)
        {
            if let Some((_, key)) = self.order.pop_front() {
                self.ids.remove(&key);
            }
        }
    }

    fn contains(&self, domain: &DomainId, id: &str) -> bool {
        self.ids.contains(&(domain.clone(), id.to_owned()))
    }
}

/// A stored blob waiting to become an item.
pub(super) struct PutRequest {
    pub(super) domain: DomainId,
    pub(super) item: UpsertMetadata,
    pub(super) root: Root,
    pub(super) content: Content,
    /// Taken when answered.
    pub(super) reply: Option<oneshot::Sender<Result<Metadata, DatastoreError>>>,
}

/// Where a put's bytes are.
pub(super) enum Content {
    /// In a temporary file, fsynced or not: a small item's file is synced by the worker
    /// with the others of its batch; a large one's is not when its blob already existed.
    File { temp: TempFile, synced: bool },
    /// In memory: a small item whose blob existed when it arrived, so no file was written.
    Inline(Vec<u8>),
}

/// An item to remove.
pub(super) struct DeleteRequest {
    pub(super) domain: DomainId,
    pub(super) id: String,
    pub(super) reply: oneshot::Sender<Result<(), DatastoreError>>,
}

/// Work for the commit worker.
pub(super) enum Request {
    Put(PutRequest),
    Delete(DeleteRequest),
}

/// What the worker needs; it shares nothing else with the store.
pub(super) struct Worker {
    pub(super) catalog: Arc<dyn Catalog>,
    pub(super) blobs_dir: PathBuf,
    pub(super) tmp_dir: PathBuf,
    pub(super) subscribers: Arc<Subscribers>,
    pub(super) metrics: StoreMetrics,
    /// Deletes a late copy must not undo.
    pub(super) recent_deletes: RecentDeletes,
}

impl Worker {
    /// Serves requests until every sender is gone.
    pub(super) fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        while let Some(first) = requests.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    fn blob_dir(&self, domain: &DomainId) -> PathBuf {
        self.blobs_dir.join(domain.as_str())
    }

    fn commit(&mut self, mut batch: Vec<Request>) {
        self.sync_together(&mut batch);
        // Blobs placed by this batch, and blobs whose last user may be gone: after the
        // transaction, each of these that no committed item uses is removed.
        let mut maybe_unused: BTreeSet<(DomainId, String)> = BTreeSet::new();
        let mut pending = Vec::with_capacity(batch.len());
        let mut dirty_dirs = BTreeSet::new();
        for request in batch {
            match request {
                Request::Put(mut put) => match self.place_blob(&mut put, &mut dirty_dirs) {
                    Ok(placed) => {
                        if placed {
                            maybe_unused.insert((put.domain.clone(), put.root.to_string()));
                        }
                        pending.push(Request::Put(put));
                    }
                    Err(e) => {
                        if let Some(reply) = put.reply.take() {
                            let _ = reply.send(Err(e));
                        }
                    }
                },
                delete @ Request::Delete(_) => pending.push(delete),
            }
        }
        // The renames must be durable before any metadata names them; if a folder cannot
        // be synced, this batch's puts fail (their placed blobs are removed below).
        let sync_failure = dirty_dirs.iter().find_map(|dir| {
            self.metrics
                .fsync(|| fsync_dir(dir))
                .err()
                .map(|e| (dir.clone(), e))
        });
        if let Some((dir, e)) = sync_failure {
            pending.retain_mut(|request| match request {
                Request::Put(put) => {
                    if let Some(reply) = put.reply.take() {
                        let copy = std::io::Error::new(e.kind(), e.to_string());
                        let _ = reply.send(Err(io_error("fsync", &dir, copy)));
                    }
                    false
                }
                Request::Delete(_) => true,
            });
        }

        let outcome = self.apply(&pending);
        if let Ok((_, unused)) = &outcome {
            maybe_unused.extend(unused.iter().cloned());
        }
        self.remove_unused(&maybe_unused);
        match outcome {
            Ok((results, _)) => {
                for (request, result) in pending.into_iter().zip(results) {
                    match request {
                        Request::Put(mut put) => {
                            if let Ok(item) = &result {
                                self.subscribers.publish(&put.domain, item);
                            }
                            if let Some(reply) = put.reply.take() {
                                let _ = reply.send(result);
                            }
                        }
                        Request::Delete(delete) => {
                            let _ = delete.reply.send(result.map(drop));
                        }
                    }
                }
            }
            Err(e) => {
                // A full disk is the operator's to free, and the store carries on once it
                // is: a warning. Anything else is an error.
                if is_full(&e) {
                    tracing::warn!(error = %domain_proto::ErrorChain(&e), "metadata commit failed");
                } else {
                    tracing::error!(error = %domain_proto::ErrorChain(&e), "metadata commit failed");
                }
                let cause: Arc<dyn std::error::Error + Send + Sync> = match e {
                    DatastoreError::Db(cause) => cause,
                    other => Arc::new(other),
                };
                let failed = || DatastoreError::Db(Arc::clone(&cause));
                for request in pending {
                    match request {
                        Request::Put(mut put) => {
                            if let Some(reply) = put.reply.take() {
                                let _ = reply.send(Err(failed()));
                            }
                        }
                        Request::Delete(delete) => {
                            let _ = delete.reply.send(Err(failed()));
                        }
                    }
                }
            }
        }
    }

    /// Makes the written bytes of the batch's puts durable at once when there are several:
    /// one `syncfs` of the store's file system costs about what one fsync does, where a
    /// fsync per small file would cost one journal commit each (2,000 items of 4 KiB: 7k
    /// fsyncs/s one after another, 46k files/s with one `syncfs`, on this project's test
    /// machine). `syncfs` also flushes other files' dirty pages on that file system; the
    /// store's large puts write past the page cache and leave few. When it fails, each put
    /// is synced on its own in [`place_blob`](Self::place_blob), which reports its error.
    fn sync_together(&self, batch: &mut [Request]) {
        let mut unsynced: Vec<&mut bool> = batch
            .iter_mut()
            .filter_map(|request| match request {
                Request::Put(PutRequest {
                    content: Content::File { synced, .. },
                    ..
                }) if !*synced => Some(synced),
                _ => None,
            })
            .collect();
        if unsynced.len() < SYNC_TOGETHER_MIN {
            return;
        }
        let synced = std::fs::File::open(&self.tmp_dir).and_then(|dir| {
            self.metrics
                .fsync(|| rustix::fs::syncfs(&dir))
                .map_err(std::io::Error::from)
        });
        match synced {
            Ok(()) => unsynced.iter_mut().for_each(|synced| **synced = true),
            Err(e) => {
                tracing::warn!(error = %domain_proto::ErrorChain(&e), "syncfs failed; syncing each file");
            }
        }
    }

    /// Moves the put's temporary file to its blob path, unless that blob exists. True when
    /// this call created the blob file.
    fn place_blob(
        &self,
        put: &mut PutRequest,
        dirty_dirs: &mut BTreeSet<PathBuf>,
    ) -> Result<bool, DatastoreError> {
        let dir = self.blob_dir(&put.domain);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
            dirty_dirs.insert(self.blobs_dir.clone());
        }
        let blob = dir.join(put.root.to_string());
        if blob.exists() {
            // Identical content is stored once; a temporary file goes when `put` drops.
            return Ok(false);
        }
        match &mut put.content {
            Content::File { temp, synced } => {
                if !*synced {
                    let file = std::fs::File::open(temp.path())
                        .map_err(|e| io_error("open", temp.path(), e))?;
                    self.metrics
                        .fsync(|| file.sync_all())
                        .map_err(|e| io_error("fsync", temp.path(), e))?;
                }
                std::fs::rename(temp.path(), &blob).map_err(|e| io_error("rename", &blob, e))?;
                temp.disarm();
            }
            // The blob went between the put's check and this commit: write it here.
            Content::Inline(bytes) => {
                let mut temp =
                    TempFile::new(self.tmp_dir.join(format!("{}.part", uuid::Uuid::new_v4())));
                let mut file = std::fs::File::create_new(temp.path())
                    .map_err(|e| io_error("create", temp.path(), e))?;
                file.write_all(bytes)
                    .map_err(|e| io_error("write", temp.path(), e))?;
                self.metrics
                    .fsync(|| file.sync_all())
                    .map_err(|e| io_error("fsync", temp.path(), e))?;
                std::fs::rename(temp.path(), &blob).map_err(|e| io_error("rename", &blob, e))?;
                temp.disarm();
            }
        }
        dirty_dirs.insert(dir);
        Ok(true)
    }

    /// Decides every request against the rows they touch and applies the outcome in one
    /// catalog transaction: per request, the stored (put) or removed (delete) item, or why
    /// not; and the blobs no item uses any more. The outer error fails all of them.
    #[allow(clippy::type_complexity)]
    fn apply(
        &mut self,
        requests: &[Request],
    ) -> Result<(Vec<Result<Metadata, DatastoreError>>, Vec<BlobKey>), DatastoreError> {
        if requests.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let touched: BTreeSet<ItemKey> = requests
            .iter()
            .filter_map(|request| match request {
                Request::Put(put) if !put.item.is_new => {
                    Some((put.domain.clone(), put.item.id.clone()))
                }
                Request::Put(_) => None,
                Request::Delete(delete) => Some((delete.domain.clone(), delete.id.clone())),
            })
            .collect();
        let mut planner = Planner::new(self.catalog.fetch(&touched)?);
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            outcomes.push(match request {
                Request::Put(put)
                    if is_replica(&put.item)
                        && self.recent_deletes.contains(&put.domain, &put.item.id) =>
                {
                    Err(DatastoreError::DeletedHere {
                        domain: put.domain.clone(),
                        id: put.item.id.clone(),
                    })
                }
                Request::Put(put) => planner.put(&put.domain, &put.item, &put.root),
                Request::Delete(delete) => {
                    // Remembered whether or not it was here: its copy may be on the way.
                    self.recent_deletes.record(&delete.domain, &delete.id);
                    planner.delete(&delete.domain, &delete.id)
                }
            });
        }
        let unused = self.catalog.apply(&planner.finish())?;
        Ok((outcomes, unused))
    }

    /// Removes the blob files among `candidates` that no committed item uses.
    fn remove_unused(&self, candidates: &BTreeSet<BlobKey>) {
        if candidates.is_empty() {
            return;
        }
        let used = match self.catalog.blobs_used(candidates) {
            Ok(used) => used,
            // Unsure whether they are used: keeping them is safe, the next open repairs.
            Err(e) => {
                tracing::warn!(error = %domain_proto::ErrorChain(&e), "cannot check blob use");
                return;
            }
        };
        for (domain, root) in candidates.difference(&used) {
            let path = self.blob_dir(domain).join(root);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    // Left for the repair at the next open.
                    tracing::warn!(path = %path.display(), error = %domain_proto::ErrorChain(&e), "cannot remove unused blob");
                }
            }
        }
    }
}

/// Whether `error` comes from a file system running out of space, or from redb refusing
/// work after such an error.
fn is_full(error: &DatastoreError) -> bool {
    // The catalog's own error, not the `Arc` around it: a downcast sees concrete types.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match error {
        DatastoreError::Db(inner) => Some(&**inner),
        other => Some(other),
    };
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull {
                return true;
            }
        }
        if let Some(redb) = error.downcast_ref::<redb::Error>() {
            if super::meta::is_full(redb) || matches!(redb, redb::Error::PreviousIo) {
                return true;
            }
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain_merkle::root_of;

    fn worker(dir: &std::path::Path) -> Worker {
        let (blobs_dir, tmp_dir) = (dir.join("blobs"), dir.join("tmp"));
        std::fs::create_dir_all(&blobs_dir).unwrap();
        std::fs::create_dir_all(&tmp_dir).unwrap();
        Worker {
            catalog: Arc::new(super::super::RedbCatalog::open(&dir.join("meta.redb")).unwrap()),
            blobs_dir,
            tmp_dir,
            subscribers: Arc::new(Subscribers::default()),
            metrics: StoreMetrics::default(),
            recent_deletes: RecentDeletes::default(),
        }
    }

    fn put(
        domain: &DomainId,
        bytes: &[u8],
    ) -> (
        PutRequest,
        oneshot::Receiver<Result<Metadata, DatastoreError>>,
    ) {
        let (reply, answer) = oneshot::channel();
        let item = UpsertMetadata {
            name: "n".into(),
            data_type: "t".into(),
            size: u32::try_from(bytes.len()).unwrap(),
            is_new: true,
            ..Default::default()
        };
        let request = PutRequest {
            domain: domain.clone(),
            item,
            root: root_of(bytes),
            content: Content::Inline(bytes.to_vec()),
            reply: Some(reply),
        };
        (request, answer)
    }

    #[test]
    fn a_full_disk_under_the_catalog_is_told_apart_from_other_failures() {
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space");
        let redb_full = DatastoreError::Db(Arc::new(redb::Error::Io(full)));
        assert!(is_full(&redb_full), "logged as a warning, not an error");
        assert!(is_full(&DatastoreError::Db(Arc::new(
            redb::Error::PreviousIo
        ))));
        let other = std::io::Error::other("bad sector");
        assert!(!is_full(&DatastoreError::Db(Arc::new(redb::Error::Io(
            other
        )))));
        assert!(!is_full(&DatastoreError::ShutDown));
    }

    #[test]
    fn inline_content_whose_blob_vanished_is_written_by_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut worker = worker(dir.path());
        let domain = DomainId::new("d").unwrap();
        // The put saw the blob, then a delete removed it before this commit.
        let (request, mut answer) = put(&domain, b"small content");
        worker.commit(vec![Request::Put(request)]);
        let stored = answer.try_recv().unwrap().unwrap();
        let blob = dir
            .path()
            .join("blobs/d")
            .join(root_of(b"small content").to_string());
        assert_eq!(std::fs::read(blob).unwrap(), b"small content");
        assert_eq!(stored.hash, Some(root_of(b"small content").to_string()));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn one_batch_dedupes_within_itself_and_counts_every_user() {
        let dir = tempfile::tempdir().unwrap();
        let mut worker = worker(dir.path());
        let domain = DomainId::new("d").unwrap();
        let (first, mut first_answer) = put(&domain, b"same");
        let (second, mut second_answer) = put(&domain, b"same");
        worker.commit(vec![Request::Put(first), Request::Put(second)]);
        let first = first_answer.try_recv().unwrap().unwrap();
        second_answer.try_recv().unwrap().unwrap();

        let (reply, mut deleted) = oneshot::channel();
        worker.commit(vec![Request::Delete(DeleteRequest {
            domain: domain.clone(),
            id: first.id,
            reply,
        })]);
        deleted.try_recv().unwrap().unwrap();
        let blob = dir
            .path()
            .join("blobs/d")
            .join(root_of(b"same").to_string());
        assert!(blob.exists(), "the second item still uses the blob");
    }

    #[test]
    fn a_copy_that_arrives_after_its_item_was_deleted_here_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut worker = worker(dir.path());
        let domain = DomainId::new("d").unwrap();
        // A client deletes the item here before its copy lands (it is not here yet).
        let (reply, mut deleted) = oneshot::channel();
        worker.commit(vec![Request::Delete(DeleteRequest {
            domain: domain.clone(),
            id: "copied".into(),
            reply,
        })]);
        assert!(matches!(
            deleted.try_recv().unwrap(),
            Err(DatastoreError::NotFound { .. })
        ));
        let (mut copy, mut copied) = put(&domain, b"late copy");
        copy.item.is_new = false;
        copy.item.replica = Some(true);
        copy.item.id = "copied".into();
        let (other, mut other_answer) = put(&domain, b"another item");
        worker.commit(vec![Request::Put(copy), Request::Put(other)]);
        assert!(matches!(
            copied.try_recv().unwrap(),
            Err(DatastoreError::DeletedHere { .. })
        ));
        other_answer.try_recv().unwrap().unwrap();
        let blob = dir
            .path()
            .join("blobs/d")
            .join(root_of(b"late copy").to_string());
        assert!(!blob.exists(), "the refused copy leaves no blob");
    }
}
