//! Uploads: through the manager (a `/store/v1` job, retried on other nodes, resumed on
//! the same node when cut), straight to a node, or from a reader.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use domain_capabilities::{CapabilityError, StoreSender};
use domain_cluster::PeerId;
use domain_proto::DomainId;
use domain_proto::domain_data::{Metadata, UpsertMetadata};
use domain_proto::protocols::STORE_V1;
use domain_proto::task::Status;
use futures::StreamExt as _;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite};

use super::attempts::resumes_on_same_node;
use super::{Assignment, Client, ClientError, Counted, Direct};

/// Replayable item content: read again when a transfer is retried on another node.
#[derive(Debug, Clone)]
pub enum Content {
    /// The content of a file.
    File(PathBuf),
    /// Bytes in memory.
    Bytes(Arc<[u8]>),
}

/// One item to upload: its metadata (`size` is set from the content) and its content.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Name, data type and properties; `is_new` and `id` as in `UpsertMetadata`.
    pub metadata: UpsertMetadata,
    /// The content.
    pub content: Content,
}

impl Upload {
    /// A new item named `name` of type `data_type` holding the file at `path`.
    pub fn file(path: impl Into<PathBuf>, name: &str, data_type: &str) -> Self {
        Self {
            metadata: new_item(name, data_type),
            content: Content::File(path.into()),
        }
    }

    /// A new item named `name` of type `data_type` holding `bytes`.
    pub fn bytes(bytes: impl Into<Arc<[u8]>>, name: &str, data_type: &str) -> Self {
        Self {
            metadata: new_item(name, data_type),
            content: Content::Bytes(bytes.into()),
        }
    }
}

pub(super) fn new_item(name: &str, data_type: &str) -> UpsertMetadata {
    UpsertMetadata {
        name: name.to_owned(),
        data_type: data_type.to_owned(),
        is_new: true,
        ..UpsertMetadata::default()
    }
}

impl Client {
    /// Uploads `items` to `domain` through the manager, all on one `/store/v1` task, and
    /// returns each item's metadata as the node stored it (its root compared with the
    /// one computed here), in order.
    ///
    /// # Errors
    /// [`ClientError::NoManager`]; a refused job or failed exchange with the manager
    /// ([`ClientError::Manager`], [`ClientError::NoAssignment`],
    /// [`ClientError::JobEnded`]); the last transfer error when every attempt failed; a
    /// local file error. An attempt that failed part-way may have stored the items
    /// before the failure on its node.
    pub async fn upload(
        &self,
        domain: &DomainId,
        items: &[Upload],
    ) -> Result<Vec<Metadata>, ClientError> {
        let plan = UploadPlan::new(items).await?;
        let mut run = self
            .submit(domain, "upload", STORE_V1, &[None], None)
            .await?;
        let mut resumed = false;
        loop {
            let assignment = run.next_assignment().await?;
            let node = assignment.node;
            let mut stored = Vec::with_capacity(items.len());
            let error = match self
                .store_on(assignment, domain, items, &plan, &mut stored)
                .await
            {
                Ok(()) => {
                    run.recorded().await;
                    return Ok(stored);
                }
                Err(error) => error,
            };
            // A cut stream leaves the node holding what got through: continue there once,
            // before the manager's retry starts again from nothing on another node.
            if resumes_on_same_node(&error, resumed) {
                resumed = true;
                tracing::warn!(%node, error = %domain_proto::ErrorChain(&error), "upload cut; resuming on the same node");
                match self.resume_on(node, domain, items, &plan, stored).await {
                    Ok(stored) => {
                        run.report(Status::Failed).await;
                        return Ok(stored);
                    }
                    Err(resume_error) => {
                        tracing::warn!(%node, error = %domain_proto::ErrorChain(&resume_error), "could not resume the upload");
                    }
                }
            }
            run.failed(error).await?;
        }
    }

    /// Uploads `items` straight to a node with a token obtained elsewhere. A stream cut
    /// while sending is opened again once, and continues from what the node kept.
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::Transfer`], local file errors.
    pub async fn upload_direct(
        &self,
        direct: &Direct,
        domain: &DomainId,
        items: &[Upload],
    ) -> Result<Vec<Metadata>, ClientError> {
        let plan = UploadPlan::new(items).await?;
        let mut stored = Vec::with_capacity(items.len());
        let assignment = self.dial(direct).await?;
        match self
            .store_on(assignment.clone(), domain, items, &plan, &mut stored)
            .await
        {
            Err(error) if error.is_cut() => {
                tracing::warn!(node = %assignment.node, error = %domain_proto::ErrorChain(&error), "upload cut; resuming");
                self.store_on(assignment, domain, items, &plan, &mut stored)
                    .await?;
                Ok(stored)
            }
            sent => sent.map(|()| stored),
        }
    }

    /// Continues an upload cut on `node` with a job pinned to it, from the first item of
    /// `items` not in `stored` (those are on the node already).
    async fn resume_on(
        &self,
        node: PeerId,
        domain: &DomainId,
        items: &[Upload],
        plan: &UploadPlan,
        mut stored: Vec<Metadata>,
    ) -> Result<Vec<Metadata>, ClientError> {
        let mut run = self
            .submit(domain, "upload", STORE_V1, &[Some(node)], None)
            .await?;
        let assignment = run.next_assignment().await?;
        match self
            .store_on(assignment, domain, items, plan, &mut stored)
            .await
        {
            Ok(()) => {
                run.recorded().await;
                Ok(stored)
            }
            Err(error) => {
                run.report(Status::Failed).await;
                Err(error)
            }
        }
    }

    /// Uploads one item of exactly `item.size` bytes read from `content` through the
    /// manager, and returns its metadata as the node stored it (roots compared).
    ///
    /// A reader cannot be read twice, so a failed transfer is not retried on another
    /// node (use [`upload`](Self::upload) with a file or bytes for that).
    ///
    /// # Errors
    /// As [`upload`](Self::upload); a failed transfer as [`ClientError::ReaderUpload`].
    pub async fn upload_reader<R>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        content: R,
    ) -> Result<Metadata, ClientError>
    where
        R: AsyncRead + Unpin + Send,
    {
        self.upload_reader_on(domain, item, content, None).await
    }

    /// As [`upload_reader`](Self::upload_reader), on `receiver` when given (the node that
    /// holds the item an upsert replaces), otherwise on the node the manager picks.
    pub(crate) async fn upload_reader_on<R>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        content: R,
        receiver: Option<PeerId>,
    ) -> Result<Metadata, ClientError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let mut run = self
            .submit(domain, "upload", STORE_V1, &[receiver], None)
            .await?;
        let assignment = run.next_assignment().await?;
        let name = item.name.clone();
        let stored = self.store_one(assignment, domain, item, content).await;
        match stored {
            Ok(stored) => {
                run.recorded().await;
                Ok(stored)
            }
            Err(error) => {
                // Tell the manager now, rather than at the task's deadline; no retry follows.
                let source = Box::new(error);
                run.report(Status::Failed).await;
                Err(ClientError::ReaderUpload { name, source })
            }
        }
    }
}

impl Client {
    /// Sends the items of `items` after those in `stored` on one `/store/v1` stream to
    /// the assigned node, adding each one's metadata to `stored` as the node answers.
    pub(super) async fn store_on(
        &self,
        assignment: Assignment,
        domain: &DomainId,
        items: &[Upload],
        plan: &UploadPlan,
        stored: &mut Vec<Metadata>,
    ) -> Result<(), ClientError> {
        let node = assignment.node;
        let transfer = |source| ClientError::Transfer {
            protocol: STORE_V1,
            node,
            source: Box::new(source),
        };
        let stream = self.open(node, STORE_V1).await?;
        let mut sender = StoreSender::open(
            stream,
            &assignment.token,
            domain.as_str(),
            self.config.limits,
        )
        .await
        .map_err(transfer)?;
        let progress = self.progress.as_deref();
        // Answers to pipelined items arrive later: each goes into `stored` as it comes.
        let take_receipts = |sender: &mut StoreSender<_>, stored: &mut Vec<Metadata>| {
            for receipt in sender.take_receipts() {
                if let Some(progress) = progress {
                    progress.finished(&receipt.name);
                }
                stored.push(receipt);
            }
        };
        // The files of small items are read a few items ahead, so that the stream never
        // waits for the disk between two of them; large ones stream when their turn comes.
        // (Indices, not an iterator over the items: the upload's future must be `Send`
        // for any lifetime, which rustc cannot prove through iterator adapters.)
        let mut prepared = futures::stream::iter(stored.len()..items.len())
            .map(|i| read_small_file(&items[i], plan.sizes[i], plan.keys[i].as_ref()))
            .buffered(READ_AHEAD_FILES);
        while let Some(next) = prepared.next().await {
            let (upload, size, key, small) = next?;
            let item = UpsertMetadata {
                size,
                ..upload.metadata.clone()
            };
            if let Some(content) = small {
                // Not resumable: small, sent without waiting for each answer.
                if let Some(progress) = progress {
                    progress.started(&item.name, item.size.into());
                }
                // Bytes past the size planned are not sent; fewer fail the item.
                let content = &content[..content.len().min(size as usize)];
                sender
                    .send_pipelined(item, Counted::new(content, progress))
                    .await
                    .map_err(transfer)?;
                take_receipts(&mut sender, stored);
                continue;
            }
            sender.flush_receipts().await.map_err(transfer)?;
            take_receipts(&mut sender, stored);
            let key = key.map(String::as_str);
            let metadata = match &upload.content {
                Content::File(path) => {
                    let file = domain_datastore::ReadAhead::open(path)
                        .await
                        .map_err(|e| ClientError::io("opening", path, e))?;
                    self.send_item(&mut sender, item, key, file).await
                }
                Content::Bytes(bytes) => {
                    let content = std::io::Cursor::new(&bytes[..]);
                    self.send_item(&mut sender, item, key, content).await
                }
            }
            .map_err(transfer)?;
            stored.push(metadata);
        }
        sender.flush_receipts().await.map_err(transfer)?;
        take_receipts(&mut sender, stored);
        sender.finish().await.map_err(transfer)?;
        Ok(())
    }

    /// Opens a `/store/v1` stream on the assigned node and sends one item from `content`.
    pub(super) async fn store_one<R: AsyncRead + Unpin + Send>(
        &self,
        assignment: Assignment,
        domain: &DomainId,
        item: UpsertMetadata,
        content: R,
    ) -> Result<Metadata, ClientError> {
        let node = assignment.node;
        let transfer = |source| ClientError::Transfer {
            protocol: STORE_V1,
            node,
            source: Box::new(source),
        };
        let stream = self.open(node, STORE_V1).await?;
        let mut sender = StoreSender::open(
            stream,
            &assignment.token,
            domain.as_str(),
            self.config.limits,
        )
        .await
        .map_err(transfer)?;
        let progress = self.progress.as_deref();
        if let Some(progress) = progress {
            progress.started(&item.name, item.size.into());
        }
        let name = item.name.clone();
        let stored = sender
            .send(item, Counted::new(content, progress))
            .await
            .map_err(transfer)?;
        if let Some(progress) = progress {
            progress.finished(&name);
        }
        sender.finish().await.map_err(transfer)?;
        Ok(stored)
    }

    /// Sends one item on an open `/store/v1` stream, resumable under `key` when there is
    /// one, telling the progress observer.
    pub(super) async fn send_item<S, R>(
        &self,
        sender: &mut StoreSender<S>,
        item: UpsertMetadata,
        key: Option<&str>,
        content: R,
    ) -> Result<Metadata, CapabilityError>
    where
        S: tokio::io::AsyncRead + AsyncWrite + Unpin + Send,
        R: AsyncRead + AsyncSeek + Unpin,
    {
        let progress = self.progress.as_deref();
        if let Some(progress) = progress {
            progress.started(&item.name, item.size.into());
        }
        let name = item.name.clone();
        let content = Counted::new(content, progress);
        let stored = match key {
            Some(key) => {
                let sent = sender.send_resumable(item, key, content).await?;
                if let Some(progress) = progress.filter(|_| sent.resumed_from > 0) {
                    progress.resumed(&name, sent.resumed_from);
                }
                sent.metadata
            }
            None => sender.send(item, content).await?,
        };
        if let Some(progress) = progress {
            progress.finished(&name);
        }
        Ok(stored)
    }
}

/// A planned item with, unless it is sent resumable (it has a `key`), its whole content:
/// a small file is read here, ahead of the stream, by [`Client::store_on`].
async fn read_small_file<'a>(
    upload: &'a Upload,
    size: u32,
    key: Option<&'a String>,
) -> Result<(&'a Upload, u32, Option<&'a String>, Option<Cow<'a, [u8]>>), ClientError> {
    let small = match (&upload.content, key) {
        (_, Some(_)) => None,
        (Content::Bytes(bytes), None) => Some(Cow::Borrowed(&bytes[..])),
        (Content::File(path), None) => Some(Cow::Owned(
            tokio::fs::read(path)
                .await
                .map_err(|e| ClientError::io("reading", path, e))?,
        )),
    };
    Ok((upload, size, key, small))
}

/// Files of small items read ahead of the one being sent.
const READ_AHEAD_FILES: usize = 16;

/// Items of at least this many bytes are sent resumable: when the stream is cut while
/// one is sent, the upload continues on the same node after the bytes it kept. Smaller
/// items are not worth the round trip the node's offer costs.
pub const RESUMABLE_MIN: u32 = 1 << 20;

/// What an upload call fixes about its items before any job is submitted.
#[derive(Debug)]
pub(super) struct UploadPlan {
    /// The `size` field of each item, from its content.
    sizes: Vec<u32>,
    /// The resume key of each item sent resumable.
    keys: Vec<Option<String>>,
}

impl UploadPlan {
    async fn new(items: &[Upload]) -> Result<Self, ClientError> {
        let mut sizes = Vec::with_capacity(items.len());
        let mut keys = Vec::with_capacity(items.len());
        // Bytes in memory cannot be named across runs: their keys hold within this call.
        let call = uuid::Uuid::new_v4();
        for (index, item) in items.iter().enumerate() {
            let (len, path, file) = match &item.content {
                Content::File(path) => {
                    let metadata = tokio::fs::metadata(path)
                        .await
                        .map_err(|e| ClientError::io("reading the length of", path, e))?;
                    (metadata.len(), path.clone(), Some(metadata))
                }
                Content::Bytes(bytes) => (bytes.len() as u64, PathBuf::from("<bytes>"), None),
            };
            let size = u32::try_from(len).map_err(|_| ClientError::TooLarge {
                path: path.clone(),
                len,
            })?;
            sizes.push(size);
            let key = if size < RESUMABLE_MIN {
                None
            } else if let Some(metadata) = file {
                Some(file_key(&path, &metadata, &item.metadata).await)
            } else {
                Some(format!("bytes {call} {index}"))
            };
            keys.push(key);
        }
        Ok(Self { sizes, keys })
    }
}

/// The resume key of a file: the same for the same file unchanged (its absolute path,
/// length and modification time) uploaded as the same item, so that a later run of the
/// same upload continues what a cut one left on the node. The node checks the kept bytes
/// against the file's own before skipping them, so a key that names other content costs
/// only the check.
pub(super) async fn file_key(
    path: &Path,
    metadata: &std::fs::Metadata,
    item: &UpsertMetadata,
) -> String {
    let absolute = tokio::fs::canonicalize(path)
        .await
        .unwrap_or_else(|_| path.to_owned());
    let modified = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut hasher = blake3::Hasher::new();
    for part in [
        absolute.as_os_str().as_encoded_bytes(),
        item.name.as_bytes(),
        item.data_type.as_bytes(),
        item.id.as_bytes(),
    ] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(&metadata.len().to_le_bytes());
    hasher.update(&modified.to_le_bytes());
    format!("file {}", hasher.finalize().to_hex())
}
