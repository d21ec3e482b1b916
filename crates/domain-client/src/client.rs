//! Moving data through a domain cluster: upload and download as jobs.
//!
//! A [`Client`] is a peer with no capability. To upload, it submits a job of one
//! `/store/v1` task to the manager, waits on the job's `/jobs/v1` stream for the task's
//! assignment (the receiving node and a token bound to this client), opens the task
//! stream to that node and sends every item on it, comparing the node's Merkle root
//! with its own for each. A download is the same with a `/load/v1` task that asks for
//! the items by id; each item's bytes are checked against its root before the file
//! appears. The `*_direct` forms skip the manager and use a node address and a token
//! obtained elsewhere (scripts, tests, other tools).
//!
//! When a transfer fails, the client reports the task FAILED on the job's gossip topic
//! (it is the task's sender, so the manager accepts the report), the manager assigns the
//! task again, and the client tries the new assignment, up to
//! [`ClientConfig::max_attempts`] in all. Content is therefore always replayable: a
//! file path or bytes in memory ([`Content`]), never a one-shot reader.
//!
//! Items of [`RESUMABLE_MIN`] bytes or more are sent resumable: when the stream is cut
//! (reset, closed, idle) rather than refused, the client first continues on the same
//! node, with a job pinned to it, after the whole chunks that node kept; only if that
//! fails does the retry on another node start again from nothing. Downloads resume from
//! the partial file they left ([`Client::download`]).
//!
//! Listing, downloading, deleting and watching ask exactly the nodes that hold data of
//! the domain: the manager names them (`/holders/v1`, its holder index), and the client
//! submits one job with a task pinned to each that is registered, then asks them one
//! after the other. A download stops fetching once it has every id asked for, and the
//! remaining holders only answer a metadata query, so that every task ends DONE. A holder
//! that is down is reported in one line (`node X did not answer`, also in
//! [`Downloads::unanswered`]) and the others still answer. Ids found nowhere come back in
//! [`Downloads::missing`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod delete;
mod partial;
mod progress;
mod watch;

pub use progress::{Counted, Progress};
pub use watch::Subscription;

use domain_capabilities::{
    CapabilityError, Limits, LoadedItem, Prefixes, StoreSender, open_load_resuming,
};
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{
    Cluster, ClusterError, ClusterHandle, JobStream, Multiaddr, PeerId, SubmittedJob,
};
use domain_datastore::{DatastoreError, DomainId};
use domain_proto::domain_data::{Metadata, Query, UpsertMetadata};
use domain_proto::protocols::{LOAD_V1, STORE_V1};
use domain_proto::task::{
    CapabilityFilters, ConsumeDataInputV1, JobRequest, ResourceRecruitment, Status, Task,
    TaskRequest, resource_recruitment::RecruitmentPolicy,
};
use libp2p::multiaddr::Protocol;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite};
use tokio::sync::oneshot;

/// Most items a listing collects, so that a node cannot grow the client's memory
/// without bound.
pub const MAX_LISTED_ITEMS: usize = 1_000_000;

/// The first pause before trying an unreachable node again; it doubles up to
/// [`MAX_CONNECT_PAUSE`].
const FIRST_CONNECT_PAUSE: Duration = Duration::from_millis(100);

/// The longest pause between tries to reach a node.
const MAX_CONNECT_PAUSE: Duration = Duration::from_secs(2);

/// How a [`Client`] runs its jobs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The timeout of each task, in the scheduler's syntax ("30s", "10m"): the manager
    /// assigns the task again when it has not finished by then, and the token expires.
    pub task_timeout: String,
    /// How long to wait for the manager to assign a task (a node with free capacity).
    pub assignment_timeout: Duration,
    /// Attempts per task, each on the node the manager assigns; the scheduler allows
    /// one attempt and three retries.
    pub max_attempts: u32,
    /// Limits of the task streams (frame size, idle timeout, I/O batch).
    pub limits: Limits,
    /// The limit on each remote wait of the swarm (dials, opening streams).
    pub request_timeout: Duration,
    /// How long to keep trying to reach an assigned node before the attempt fails.
    pub connect_patience: Duration,
    /// Let a download replace a file that already exists in its folder; otherwise such an
    /// item fails with [`ClientError::WouldReplace`] and the file is left as it was.
    pub overwrite: bool,
    /// The timeout of a subscription's tasks, which bounds the life of each node
    /// stream's token (at most an hour). A node ends a stream when its token expires; the
    /// subscription renews each one on a fresh token before then, so it lasts until
    /// [`Subscription::unsubscribe`](Subscription::unsubscribe).
    pub subscription_timeout: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            task_timeout: "10m".to_owned(),
            assignment_timeout: Duration::from_secs(60),
            max_attempts: 4,
            limits: Limits::default(),
            request_timeout: Duration::from_secs(30),
            connect_patience: Duration::from_secs(15),
            overwrite: false,
            subscription_timeout: "1h".to_owned(),
        }
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The swarm could not be started or stopped.
    #[error("cannot run the client's peer: {0}")]
    Cluster(#[source] Box<ClusterError>),
    /// The manager's address does not end with `/p2p/<peer id>`.
    #[error("the manager address {addr} does not end with /p2p/<peer id>")]
    ManagerAddress {
        /// The address given.
        addr: Multiaddr,
    },
    /// The operation needs a manager and the client was started without one.
    #[error("this client has no manager address; pass one, or a node address and a token")]
    NoManager,
    /// The manager refused the job, or an exchange with it failed.
    #[error("job {job}: {source}")]
    Manager {
        /// The job's name.
        job: String,
        /// What went wrong.
        #[source]
        source: Box<ClusterError>,
    },
    /// No assignment came for the task in time (no node with the capability and free
    /// capacity).
    #[error("job {job_id}: no node was assigned to task {task} within {waited:?}")]
    NoAssignment {
        /// The job.
        job_id: String,
        /// The task.
        task: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The manager closed the job's stream before the task ran to completion here.
    #[error("job {job_id}: the manager ended the job before task {task} could run")]
    JobEnded {
        /// The job.
        job_id: String,
        /// The task.
        task: String,
    },
    /// The manager gave the task up for good (FAILED): its node is gone, or its attempts
    /// are spent.
    #[error("job {job_id}: the manager gave up task {task}")]
    TaskFailed {
        /// The job.
        job_id: String,
        /// The task.
        task: String,
    },
    /// The manager sent an assignment this client cannot use.
    #[error("job {job_id}: unusable assignment of task {task}: {reason}")]
    BadAssignment {
        /// The job.
        job_id: String,
        /// The task.
        task: String,
        /// What was wrong.
        reason: String,
    },
    /// The node could not be reached.
    #[error("cannot reach node {node}: {source}")]
    Connect {
        /// The node, as an address or a peer id.
        node: String,
        /// Why.
        #[source]
        source: Box<ClusterError>,
    },
    /// A task stream with the node failed (refused token, root mismatch, broken stream).
    #[error("{protocol} with node {node}: {source}")]
    Transfer {
        /// The protocol.
        protocol: &'static str,
        /// The node.
        node: PeerId,
        /// What went wrong.
        #[source]
        source: Box<CapabilityError>,
    },
    /// The node sent an item that was not asked for.
    #[error("node {node} sent item {id:?}, which was not asked for")]
    UnexpectedItem {
        /// The node.
        node: PeerId,
        /// The item's id (untrusted).
        id: String,
    },
    /// A download into a writer failed after bytes had reached the writer, which cannot
    /// be rewound, so it was not retried; discard what the writer received.
    #[error("item {id}: the download failed after {written} bytes were written: {source}")]
    WriterInterrupted {
        /// The item.
        id: String,
        /// Bytes the writer received.
        written: u64,
        /// What went wrong.
        #[source]
        source: Box<CapabilityError>,
    },
    /// An upload from a reader failed; a reader cannot be read again, so it was not
    /// retried on another node.
    #[error("uploading {name} from a reader: {source}")]
    ReaderUpload {
        /// The item's name.
        name: String,
        /// What went wrong.
        #[source]
        source: Box<ClientError>,
    },
    /// A node closed a subscription's stream (it is shutting down); the other nodes'
    /// streams go on.
    #[error("node {node} ended its subscription stream")]
    SubscriptionEnded {
        /// The node.
        node: PeerId,
    },
    /// The node's listing holds more items than [`MAX_LISTED_ITEMS`].
    #[error("node {node} lists more than {MAX_LISTED_ITEMS} items")]
    TooManyItems {
        /// The node.
        node: PeerId,
    },
    /// A download would replace a file that was there before it.
    #[error("{} exists and is not replaced (pass --overwrite to replace it)", path.display())]
    WouldReplace {
        /// The file.
        path: PathBuf,
    },
    /// An item id cannot name a file: empty, with a path separator, or starting with a dot.
    #[error("item id {id:?} cannot be a file name")]
    InvalidId {
        /// The id.
        id: String,
    },
    /// A file to upload is larger than an item can be (4 GiB - 1).
    #[error("{} is {len} bytes; an item holds at most {} bytes", path.display(), u32::MAX)]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// A local file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What the client was doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another download of the same item into the same folder is under way.
    #[error("{} is being written by another download", path.display())]
    PartialInUse {
        /// The partial file.
        path: PathBuf,
    },
}

impl ClientError {
    /// Whether a transfer stream broke (reset, closed early, idle) rather than being
    /// refused or proven wrong: the node may hold what got through.
    fn is_cut(&self) -> bool {
        matches!(
            self,
            Self::Transfer { source, .. } if matches!(
                **source,
                CapabilityError::Io { .. } | CapabilityError::Closed { .. } | CapabilityError::Idle { .. }
            )
        )
    }

    /// Whether another node (a new assignment) might succeed where this failed.
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Transfer { .. })
    }

    /// Whether asking the holders must stop here rather than go on with the next one
    /// (a local failure, which the next holder would meet too).
    fn ends_search(&self) -> bool {
        matches!(
            self,
            Self::Io { .. }
                | Self::PartialInUse { .. }
                | Self::WouldReplace { .. }
                | Self::WriterInterrupted { .. }
                | Self::TooManyItems { .. }
        )
    }

    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

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

fn new_item(name: &str, data_type: &str) -> UpsertMetadata {
    UpsertMetadata {
        name: name.to_owned(),
        data_type: data_type.to_owned(),
        is_new: true,
        ..UpsertMetadata::default()
    }
}

/// One downloaded item: its metadata (root checked) and the file holding its content.
#[derive(Debug, Clone, PartialEq)]
pub struct Downloaded {
    /// The item's metadata as the node sent it.
    pub metadata: Metadata,
    /// `<out dir>/<id>`.
    pub path: PathBuf,
}

/// What a download brought back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Downloads {
    /// The items written, in the order they arrived.
    pub items: Vec<Downloaded>,
    /// The ids asked for that no node answering holds.
    pub missing: Vec<String>,
    /// The holders that did not answer (down, or unreachable): what they hold may be
    /// among `missing`.
    pub unanswered: Vec<PeerId>,
}

/// A node to talk to without the manager, with a token obtained elsewhere.
#[derive(Debug, Clone)]
pub struct Direct {
    /// The node's address, ending with `/p2p/<peer id>`.
    pub node: Multiaddr,
    /// The task token (issued for this client as sender, that node as receiver, and the
    /// protocol used).
    pub token: String,
}

/// A node and a token to open one task stream with.
#[derive(Debug, Clone)]
struct Assignment {
    node: PeerId,
    token: String,
}

/// A peer that uploads and downloads domain data.
///
/// Cloning is cheap: clones share the peer (its swarm) and stop with it.
#[derive(Debug, Clone)]
pub struct Client {
    cluster: ClusterHandle,
    manager: Option<PeerId>,
    config: ClientConfig,
    progress: Option<Arc<dyn Progress>>,
}

impl Client {
    /// Starts the client's peer, bootstrapped from the manager at `manager` (an address
    /// ending with `/p2p/<id>`), or alone when `None` (for the direct forms).
    ///
    /// # Errors
    /// [`ClientError::ManagerAddress`], [`ClientError::Cluster`].
    pub async fn start(
        identity: Identity,
        manager: Option<Multiaddr>,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let mut cluster_config = ClusterConfig::new(identity, Role::Client);
        cluster_config.request_timeout = config.request_timeout;
        let manager_id = match manager {
            Some(addr) => {
                let Some(peer) = peer_of(&addr) else {
                    return Err(ClientError::ManagerAddress { addr });
                };
                cluster_config = cluster_config.with_bootstrap(addr);
                Some(peer)
            }
            None => None,
        };
        let (cluster, _event_loop) =
            Cluster::start(cluster_config).map_err(|e| ClientError::Cluster(Box::new(e)))?;
        Ok(Self {
            cluster,
            manager: manager_id,
            config,
            progress: None,
        })
    }

    /// Lets downloads replace files that already exist in their folder (see
    /// [`ClientConfig::overwrite`]).
    #[must_use]
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.config.overwrite = overwrite;
        self
    }

    /// Tells `progress` about every item this client sends or receives from now on.
    #[must_use]
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// This client's peer id: the sender named in its tasks and tokens.
    #[must_use]
    pub fn peer_id(&self) -> PeerId {
        self.cluster.local_peer_id()
    }

    /// Stops the client's peer.
    ///
    /// # Errors
    /// [`ClientError::Cluster`] when the event loop has already stopped.
    pub async fn shutdown(self) -> Result<(), ClientError> {
        self.cluster
            .shutdown()
            .await
            .map_err(|e| ClientError::Cluster(Box::new(e)))
    }

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
        let mut run = self.submit(domain, "upload", STORE_V1, &[None]).await?;
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
            if !resumed && error.is_cut() {
                resumed = true;
                tracing::warn!(%node, %error, "upload cut; resuming on the same node");
                match self.resume_on(node, domain, items, &plan, stored).await {
                    Ok(stored) => {
                        run.report(Status::Failed).await;
                        return Ok(stored);
                    }
                    Err(resume_error) => {
                        tracing::warn!(%node, error = %resume_error, "could not resume the upload");
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
                tracing::warn!(node = %assignment.node, %error, "upload cut; resuming");
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
            .submit(domain, "upload", STORE_V1, &[Some(node)])
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
        let mut run = self.submit(domain, "upload", STORE_V1, &[receiver]).await?;
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

    /// Downloads the items `ids` of `domain` through the manager into `out_dir` (created
    /// if missing), each as `out_dir/<id>`, which appears only once its content matches
    /// its root.
    ///
    /// The holders of the domain are asked one after the other until every id has come;
    /// ids found nowhere come back in [`Downloads::missing`], holders that did not answer
    /// in [`Downloads::unanswered`].
    ///
    /// # Errors
    /// [`ClientError::InvalidId`] before anything is asked; as [`upload`](Self::upload).
    pub async fn download(
        &self,
        domain: &DomainId,
        ids: &[String],
        out_dir: &Path,
    ) -> Result<Downloads, ClientError> {
        let query = Query {
            ids: ids.to_vec(),
            ..Query::default()
        };
        self.download_matching(domain, &query, out_dir).await
    }

    /// Downloads every item of `domain` that matches `query`, on every node that holds
    /// one, into `out_dir` as [`download`](Self::download) does. Each id is written once.
    ///
    /// # Errors
    /// As [`download`](Self::download).
    pub async fn download_matching(
        &self,
        domain: &DomainId,
        query: &Query,
        out_dir: &Path,
    ) -> Result<Downloads, ClientError> {
        prepare_download(&query.ids, out_dir).await?;
        let mut downloads = Downloads::default();
        let mut gather = Gather::new(
            query,
            Sink::Folder {
                dir: out_dir,
                downloads: &mut downloads,
            },
        );
        self.gather(domain, "download", &mut gather).await?;
        let missing = gather.missing();
        let unanswered = std::mem::take(&mut gather.unanswered);
        drop(gather);
        downloads.missing = missing;
        downloads.unanswered = unanswered;
        Ok(downloads)
    }

    /// Downloads the item `id` of `domain` into `writer`, and returns its metadata, or
    /// `None` when no node holds it.
    ///
    /// The content is checked against the item's root as it passes, and the check ends
    /// with the last byte: on an error, discard what `writer` received. A transfer that
    /// fails after bytes reached `writer` is not retried
    /// ([`ClientError::WriterInterrupted`]), since the writer cannot be rewound.
    ///
    /// # Errors
    /// As [`download`](Self::download), and [`ClientError::WriterInterrupted`].
    pub async fn download_to<W>(
        &self,
        domain: &DomainId,
        id: &str,
        writer: &mut W,
    ) -> Result<Option<Metadata>, ClientError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        self.download_announced(domain, id, writer, None).await
    }

    /// As [`download_to`](Self::download_to), sending the item's metadata to `started`
    /// before its first byte reaches `writer`.
    pub(crate) async fn download_announced(
        &self,
        domain: &DomainId,
        id: &str,
        writer: &mut (dyn AsyncWrite + Unpin + Send),
        started: Option<oneshot::Sender<Metadata>>,
    ) -> Result<Option<Metadata>, ClientError> {
        let query = Query {
            ids: vec![id.to_owned()],
            ..Query::default()
        };
        let mut found = None;
        let mut gather = Gather::new(
            &query,
            Sink::Writer {
                writer,
                found: &mut found,
                started,
            },
        );
        self.gather(domain, "download", &mut gather).await?;
        drop(gather);
        Ok(found)
    }

    /// The metadata of item `id` of `domain` and a node that holds it, or `None` when no
    /// node does.
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub async fn locate(
        &self,
        domain: &DomainId,
        id: &str,
    ) -> Result<Option<(Metadata, PeerId)>, ClientError> {
        let query = Query {
            ids: vec![id.to_owned()],
            ..Query::default()
        };
        let mut holder = None;
        let mut gather = Gather::new(&query, Sink::Holder(&mut holder));
        self.gather(domain, "locate", &mut gather).await?;
        drop(gather);
        Ok(holder)
    }

    /// Runs `gather`'s query on every holder of `domain` that is up (see
    /// [`fan_out`](Self::fan_out)); a holder that does not answer is reported and passed
    /// over. A listing asks every holder anyway, so its first attempts go side by side;
    /// a download asks one holder after the other, and stops fetching once it has every
    /// id.
    async fn gather(
        &self,
        domain: &DomainId,
        job_name: &str,
        gather: &mut Gather<'_>,
    ) -> Result<(), ClientError> {
        let (run, unanswered) = self.fan_out(domain, job_name, LOAD_V1).await?;
        gather.unanswered.extend(unanswered);
        let Some(mut run) = run else {
            return Ok(());
        };
        let mut failed_first = Vec::new();
        if matches!(gather.sink, Sink::Listing(_)) && run.targets.len() > 1 {
            failed_first = self.list_side_by_side(&mut run, domain, gather).await?;
        } else {
            failed_first.extend((0..run.targets.len()).map(|index| (index, None)));
        }
        for (index, failure) in failed_first {
            let node = run.select(index);
            let loaded = async {
                if let Some((current, error)) = failure {
                    // The first attempt went side by side; the retries go here.
                    run.resume_after(current, error).await?;
                }
                loop {
                    let assignment = run.next_assignment().await?;
                    match self.load_from(assignment, domain, gather).await {
                        Ok(()) => return Ok::<(), ClientError>(()),
                        Err(error) => run.failed(error).await?,
                    }
                }
            };
            match loaded.await {
                Ok(()) => {}
                Err(error) if error.ends_search() => return Err(error),
                Err(error) => {
                    not_answered(node, &error);
                    gather.unanswered.push(node);
                }
            }
        }
        Ok(())
    }

    /// The first attempt of every task of `run` at once, each holder's listing into
    /// `gather` (each id once); answers the tasks whose attempt failed, with the
    /// assignment tried and the error, for the caller to go on with.
    async fn list_side_by_side(
        &self,
        run: &mut TaskRun<'_>,
        domain: &DomainId,
        gather: &mut Gather<'_>,
    ) -> Result<FailedFirst, ClientError> {
        let mut firsts = Vec::with_capacity(run.targets.len());
        for index in 0..run.targets.len() {
            let node = run.select(index);
            let assignment = run.next_assignment().await;
            firsts.push((index, node, assignment, run.current.take()));
        }
        let query = gather.query.clone();
        let listings = firsts
            .into_iter()
            .map(|(index, node, assignment, current)| {
                let query = &query;
                async move {
                    let mut listed = Vec::new();
                    let result = match assignment {
                        Ok(assignment) => {
                            let mut one = Gather::new(query, Sink::Listing(&mut listed));
                            self.load_from(assignment, domain, &mut one).await
                        }
                        Err(error) => Err(error),
                    };
                    (index, node, current, result.map(|()| listed))
                }
            });
        let mut failed = Vec::new();
        for (index, node, current, result) in futures::future::join_all(listings).await {
            match result {
                Ok(listed) => gather.add_listed(node, listed)?,
                Err(error) => failed.push((index, Some((current, error)))),
            }
        }
        Ok(failed)
    }

    /// One job of one `endpoint` task pinned to each registered holder of `domain`, as
    /// the manager's holder index names them, the registered with most items first; the
    /// holders that are not registered come back apart, each reported as not answering.
    /// No job (`None`) when no holder is up.
    ///
    /// # Errors
    /// [`ClientError::NoManager`], [`ClientError::Manager`].
    async fn fan_out(
        &self,
        domain: &DomainId,
        job_name: &str,
        endpoint: &str,
    ) -> Result<(Option<TaskRun<'_>>, Vec<PeerId>), ClientError> {
        let manager = self.manager.ok_or(ClientError::NoManager)?;
        let (holders, _) = self
            .cluster
            .holders(manager, domain.as_str(), false)
            .await
            .map_err(|source| ClientError::Manager {
                job: job_name.to_owned(),
                source: Box::new(source),
            })?;
        let mut live = Vec::new();
        let mut down = Vec::new();
        for holder in holders {
            let Ok(node) = holder.node_id.parse::<PeerId>() else {
                tracing::debug!(node = %holder.node_id, "a holder that is not a peer id");
                continue;
            };
            if holder.registered {
                live.push(Some(node));
            } else {
                tracing::warn!("node {node} did not answer: it is not registered with the manager");
                down.push(node);
            }
        }
        if live.is_empty() {
            return Ok((None, down));
        }
        let run = self.submit(domain, job_name, endpoint, &live).await?;
        Ok((Some(run), down))
    }

    /// Downloads straight from a node with a token obtained elsewhere; as
    /// [`download`](Self::download).
    ///
    /// # Errors
    /// [`ClientError::InvalidId`], [`ClientError::Connect`], [`ClientError::Transfer`],
    /// local file errors.
    pub async fn download_direct(
        &self,
        direct: &Direct,
        domain: &DomainId,
        ids: &[String],
        out_dir: &Path,
    ) -> Result<Downloads, ClientError> {
        let query = Query {
            ids: ids.to_vec(),
            ..Query::default()
        };
        self.download_matching_direct(direct, domain, &query, out_dir)
            .await
    }

    /// Downloads the items matching `query` straight from a node with a token obtained
    /// elsewhere; as [`download_matching`](Self::download_matching) on that node alone.
    ///
    /// # Errors
    /// As [`download_direct`](Self::download_direct).
    pub async fn download_matching_direct(
        &self,
        direct: &Direct,
        domain: &DomainId,
        query: &Query,
        out_dir: &Path,
    ) -> Result<Downloads, ClientError> {
        prepare_download(&query.ids, out_dir).await?;
        let assignment = self.dial(direct).await?;
        let mut downloads = Downloads::default();
        let mut gather = Gather::new(
            query,
            Sink::Folder {
                dir: out_dir,
                downloads: &mut downloads,
            },
        );
        self.load_from(assignment, domain, &mut gather).await?;
        let missing = gather.missing();
        drop(gather);
        downloads.missing = missing;
        Ok(downloads)
    }

    /// Lists the metadata of the items of `domain` that match `query` (its
    /// `metadata_only` is forced on), on every node that holds one, each id once.
    ///
    /// # Errors
    /// As [`upload`](Self::upload), and [`ClientError::TooManyItems`].
    pub async fn list(
        &self,
        domain: &DomainId,
        query: &Query,
    ) -> Result<Vec<Metadata>, ClientError> {
        let mut listed = Vec::new();
        let mut gather = Gather::new(query, Sink::Listing(&mut listed));
        self.gather(domain, "list", &mut gather).await?;
        drop(gather);
        Ok(listed)
    }

    /// Lists straight from a node with a token obtained elsewhere; as
    /// [`list`](Self::list) on that node alone.
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::Transfer`], [`ClientError::TooManyItems`].
    pub async fn list_direct(
        &self,
        direct: &Direct,
        domain: &DomainId,
        query: &Query,
    ) -> Result<Vec<Metadata>, ClientError> {
        let assignment = self.dial(direct).await?;
        let mut listed = Vec::new();
        let mut gather = Gather::new(query, Sink::Listing(&mut listed));
        self.load_from(assignment, domain, &mut gather).await?;
        drop(gather);
        Ok(listed)
    }

    /// The domain's Ed25519 public key, as the manager serves it on `/public-key/v1`:
    /// the key that verifies the domain's task tokens.
    ///
    /// # Errors
    /// [`ClientError::NoManager`], [`ClientError::Manager`].
    pub async fn public_key(&self, domain: &DomainId) -> Result<[u8; 32], ClientError> {
        let manager = self.manager.ok_or(ClientError::NoManager)?;
        self.cluster
            .public_key(manager, domain.as_str())
            .await
            .map_err(|source| ClientError::Manager {
                job: "public-key".to_owned(),
                source: Box::new(source),
            })
    }

    /// The manager's `/monitor/v1` stream: every running job this client may watch and the
    /// last finished ones (the manager sends its 256 most recently finished), then each
    /// change as it happens.
    ///
    /// # Errors
    /// [`ClientError::NoManager`], [`ClientError::Manager`].
    pub async fn jobs(&self) -> Result<JobStream, ClientError> {
        let manager = self.manager.ok_or(ClientError::NoManager)?;
        self.cluster
            .monitor(manager)
            .await
            .map_err(|source| ClientError::Manager {
                job: "monitor".to_owned(),
                source: Box::new(source),
            })
    }

    /// Submits a job of one task on `endpoint` for each of `receivers` (a node, or the
    /// manager's pick); the assignments come from the returned [`TaskRun`], which starts
    /// with the first task selected. A job of one task names it after the job; tasks of a
    /// job of several are `job@node`.
    async fn submit(
        &self,
        domain: &DomainId,
        job_name: &str,
        endpoint: &str,
        receivers: &[Option<PeerId>],
    ) -> Result<TaskRun<'_>, ClientError> {
        let manager = self.manager.ok_or(ClientError::NoManager)?;
        let targets: Vec<(String, Option<PeerId>)> = match receivers {
            [receiver] => vec![(job_name.to_owned(), *receiver)],
            _ => receivers
                .iter()
                .map(|receiver| {
                    let node = receiver.map_or_else(String::new, |node| node.to_string());
                    (format!("{job_name}@{node}"), *receiver)
                })
                .collect(),
        };
        let tasks = targets
            .iter()
            .map(|(name, receiver)| {
                // A task pinned to a node fails at once when that node is gone, instead
                // of waiting for it.
                let policy = if receiver.is_some() {
                    RecruitmentPolicy::Fail
                } else {
                    RecruitmentPolicy::Always
                };
                TaskRequest {
                    name: name.clone(),
                    capability_filters: CapabilityFilters {
                        endpoint: endpoint.to_owned(),
                        ..CapabilityFilters::default()
                    },
                    timeout: self.config.task_timeout.clone(),
                    resource_recruitment: ResourceRecruitment {
                        recruitment_policy: policy as i32,
                        ..ResourceRecruitment::default()
                    },
                    sender: self.peer_id().to_string(),
                    receiver: receiver.map(|peer| peer.to_string()),
                    ..TaskRequest::default()
                }
            })
            .collect();
        let request = JobRequest {
            name: job_name.to_owned(),
            tasks,
            nonce: uuid::Uuid::new_v4().to_string(),
            domain_id: domain.as_str().to_owned(),
        };
        let job = self
            .cluster
            .submit_job(manager, request)
            .await
            .map_err(|source| ClientError::Manager {
                job: job_name.to_owned(),
                source: Box::new(source),
            })?;
        tracing::debug!(job_id = %job.job_id, job = job_name, "job accepted");
        Ok(TaskRun {
            client: self,
            job,
            task_name: targets[0].0.clone(),
            targets,
            attempts: 0,
            current: None,
            others: HashMap::new(),
            others_len: 0,
        })
    }

    /// Connects to a node given directly.
    async fn dial(&self, direct: &Direct) -> Result<Assignment, ClientError> {
        let node = self
            .cluster
            .dial(direct.node.clone())
            .await
            .map_err(|source| ClientError::Connect {
                node: direct.node.to_string(),
                source: Box::new(source),
            })?;
        Ok(Assignment {
            node,
            token: direct.token.clone(),
        })
    }

    /// Opens a task stream to `node`. A node that cannot be reached yet (its relay slot
    /// not reserved again after a manager restart, its address not yet learned) is tried
    /// again after growing pauses, for up to [`ClientConfig::connect_patience`].
    async fn open(
        &self,
        node: PeerId,
        protocol: &'static str,
    ) -> Result<domain_cluster::ClusterStream, ClientError> {
        let deadline = tokio::time::Instant::now() + self.config.connect_patience;
        let mut pause = FIRST_CONNECT_PAUSE;
        loop {
            match self.cluster.open_stream(node, protocol).await {
                Ok(stream) => return Ok(stream),
                Err(error @ ClusterError::Unreachable { .. })
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!(%node, %error, ?pause, "node unreachable, trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_CONNECT_PAUSE);
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        node: node.to_string(),
                        source: Box::new(source),
                    });
                }
            }
        }
    }

    /// Sends the items of `items` after those in `stored` on one `/store/v1` stream to
    /// the assigned node, adding each one's metadata to `stored` as the node answers.
    async fn store_on(
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
        let planned = items.iter().zip(&plan.sizes).zip(&plan.keys);
        for ((upload, &size), key) in planned.skip(stored.len()) {
            let item = UpsertMetadata {
                size,
                ..upload.metadata.clone()
            };
            let key = key.as_deref();
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
        sender.finish().await.map_err(transfer)?;
        Ok(())
    }

    /// Opens a `/store/v1` stream on the assigned node and sends one item from `content`.
    async fn store_one<R: AsyncRead + Unpin + Send>(
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
    async fn send_item<S, R>(
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

    /// Runs `gather`'s query on one node, handing each item not seen before to its sink.
    ///
    /// An item resumed from a partial file that then fails its root check proves the
    /// partial wrong, not the node (the node's own bytes are not checked apart from the
    /// prefix): the partial is discarded and the node asked again at once, with the same
    /// token, for what is still missing, that item from byte 0. Each round discards a
    /// partial for good, so the rounds are bounded by the partials there were.
    async fn load_from(
        &self,
        assignment: Assignment,
        domain: &DomainId,
        gather: &mut Gather<'_>,
    ) -> Result<(), ClientError> {
        loop {
            let discarded = gather.discarded_partials.len();
            match self.load_once(&assignment, domain, gather).await {
                Err(error) if gather.discarded_partials.len() > discarded => {
                    tracing::warn!(node = %assignment.node, %error, "a partial download did not match its item; downloading the item again whole");
                }
                result => return result,
            }
        }
    }

    /// One `/load/v1` stream of [`load_from`](Self::load_from).
    async fn load_once(
        &self,
        assignment: &Assignment,
        domain: &DomainId,
        gather: &mut Gather<'_>,
    ) -> Result<(), ClientError> {
        let node = assignment.node;
        let transfer = |source| ClientError::Transfer {
            protocol: LOAD_V1,
            node,
            source: Box::new(source),
        };
        let request = ConsumeDataInputV1 {
            query: gather.request(),
            keep_alive: false,
            ..Default::default()
        };
        // Items cut short by an earlier download into the same folder continue where
        // their partial files end.
        let prefixes = match &gather.sink {
            Sink::Folder { dir, .. } => {
                partial::held_prefixes(dir, &request.query.ids, &gather.discarded_partials).await
            }
            _ => Prefixes::new(),
        };
        let stream = self.open(node, LOAD_V1).await?;
        let (mut items, _unsubscriber) = open_load_resuming(
            stream,
            &assignment.token,
            domain.as_str(),
            request,
            prefixes,
            self.config.limits,
        )
        .await
        .map_err(transfer)?;
        while let Some(item) = items.next().await.map_err(transfer)? {
            let metadata = item.metadata().clone();
            // A copy already received (from another node, or an earlier attempt):
            // its content is skipped with the next item.
            if gather.seen.contains(&metadata.id) {
                continue;
            }
            if !gather.query.ids.is_empty() && !gather.query.ids.contains(&metadata.id) {
                return Err(ClientError::UnexpectedItem {
                    node,
                    id: metadata.id.chars().take(300).collect(),
                });
            }
            let progress = self.progress.as_deref();
            match &mut gather.sink {
                Sink::Listing(listed) => {
                    if listed.len() == MAX_LISTED_ITEMS {
                        return Err(ClientError::TooManyItems { node });
                    }
                    listed.push(metadata.clone());
                }
                Sink::Folder { dir, downloads } => {
                    let resumed = item.offset() > 0;
                    let overwrite = self.config.overwrite;
                    let path =
                        match write_item_file(item, &metadata, dir, overwrite, progress).await {
                            Ok(path) => path,
                            Err(error) => {
                                if resumed && error.is_root_mismatch() {
                                    gather.discarded_partials.insert(metadata.id.clone());
                                }
                                return Err(error.into_client_error(node));
                            }
                        };
                    downloads.items.push(Downloaded {
                        metadata: metadata.clone(),
                        path,
                    });
                }
                Sink::Holder(holder) => {
                    **holder = Some((metadata.clone(), node));
                }
                Sink::Writer {
                    writer,
                    found,
                    started,
                } => {
                    if let Some(started) = started.take() {
                        // The reader may be gone: the write below then fails and says so.
                        let _ = started.send(metadata.clone());
                    }
                    let mut counted = Counted::new(&mut **writer, progress);
                    if let Some(progress) = progress {
                        progress.started(&metadata.name, metadata.size.into());
                    }
                    let copied = item.copy_to(&mut counted).await;
                    let written = counted.count();
                    let copied = copied.and_then(|copied| {
                        check_length(&metadata, copied)?;
                        Ok(copied)
                    });
                    if let Err(source) = copied {
                        return Err(if written == 0 {
                            transfer(source)
                        } else {
                            ClientError::WriterInterrupted {
                                id: metadata.id.clone(),
                                written,
                                source: Box::new(source),
                            }
                        });
                    }
                    if let Some(progress) = progress {
                        progress.finished(&metadata.name);
                    }
                    **found = Some(metadata.clone());
                }
            }
            gather.seen.insert(metadata.id);
        }
        Ok(())
    }
}

/// Where the items of a load stream go.
enum Sink<'a> {
    /// Metadata only.
    Listing(&'a mut Vec<Metadata>),
    /// The metadata of the item asked for and the node that holds it.
    Holder(&'a mut Option<(Metadata, PeerId)>),
    /// Each item's content into `dir/<id>`, recorded in `downloads`.
    Folder {
        dir: &'a Path,
        downloads: &'a mut Downloads,
    },
    /// One item's content into a writer; its metadata to `started` before the content.
    Writer {
        writer: &'a mut (dyn AsyncWrite + Unpin + Send),
        found: &'a mut Option<Metadata>,
        started: Option<oneshot::Sender<Metadata>>,
    },
}

/// A query run on one node after another: what it asks for, which ids have arrived, and
/// where they go.
struct Gather<'a> {
    query: Query,
    seen: BTreeSet<String>,
    /// Holders that did not answer.
    unanswered: Vec<PeerId>,
    /// Items whose partial files failed the root check: never resumed again.
    discarded_partials: BTreeSet<String>,
    sink: Sink<'a>,
}

impl<'a> Gather<'a> {
    fn new(query: &Query, sink: Sink<'a>) -> Self {
        let metadata_only = matches!(sink, Sink::Listing(_) | Sink::Holder(_));
        Self {
            query: Query {
                metadata_only,
                ..query.clone()
            },
            seen: BTreeSet::new(),
            unanswered: Vec::new(),
            discarded_partials: BTreeSet::new(),
            sink,
        }
    }

    /// Adds one holder's listing to this one's, each id once.
    fn add_listed(&mut self, node: PeerId, listed: Vec<Metadata>) -> Result<(), ClientError> {
        let Sink::Listing(all) = &mut self.sink else {
            return Ok(());
        };
        for item in listed {
            if self.seen.insert(item.id.clone()) {
                if all.len() == MAX_LISTED_ITEMS {
                    return Err(ClientError::TooManyItems { node });
                }
                all.push(item);
            }
        }
        Ok(())
    }

    /// The ids asked for that have not arrived.
    fn missing(&self) -> Vec<String> {
        let wanted: BTreeSet<&String> = self.query.ids.iter().collect();
        wanted
            .into_iter()
            .filter(|id| !self.seen.contains(*id))
            .cloned()
            .collect()
    }

    /// The query to send next: for a query by ids, only the ids still missing, so that a
    /// retry fetches only the rest.
    fn request(&self) -> Query {
        if self.query.ids.is_empty() {
            return self.query.clone();
        }
        let missing = self.missing();
        if missing.is_empty() {
            // The task still runs, as a cheap metadata-only query, so that it ends DONE
            // rather than at its deadline.
            return Query {
                metadata_only: true,
                ..self.query.clone()
            };
        }
        Query {
            ids: missing,
            ..self.query.clone()
        }
    }
}

/// Why writing a downloaded item to its file failed.
enum ItemFileError {
    Transfer(CapabilityError),
    Local(ClientError),
}

impl ItemFileError {
    /// Whether the bytes written so far are worth resuming from: the transfer was cut,
    /// but nothing proved them wrong.
    fn leaves_a_resumable_partial(&self) -> bool {
        matches!(self, Self::Transfer(CapabilityError::Io { .. }))
    }

    /// Whether the content arrived whole and failed its root check.
    fn is_root_mismatch(&self) -> bool {
        matches!(self, Self::Transfer(CapabilityError::RootMismatch { .. }))
    }

    fn into_client_error(self, node: PeerId) -> ClientError {
        match self {
            Self::Transfer(source) => ClientError::Transfer {
                protocol: LOAD_V1,
                node,
                source: Box::new(source),
            },
            Self::Local(error) => error,
        }
    }
}

/// Writes one item's content to `dir/<id>`, which appears only once the content matched
/// its root and was synced; returns its path. The content goes to its partial file first
/// (from the item's offset when the node resumed it), which a cut transfer leaves for
/// the next download to resume; content that fails its root check removes it.
async fn write_item_file<S>(
    item: LoadedItem<'_, S>,
    metadata: &Metadata,
    dir: &Path,
    overwrite: bool,
    progress: Option<&dyn Progress>,
) -> Result<PathBuf, ItemFileError>
where
    S: tokio::io::AsyncRead + Unpin + Send,
{
    check_id(&metadata.id).map_err(ItemFileError::Local)?;
    let path = dir.join(&metadata.id);
    // Checked before any byte comes, and again, atomically, by the rename at the end.
    if !overwrite && tokio::fs::symlink_metadata(&path).await.is_ok() {
        return Err(ItemFileError::Local(ClientError::WouldReplace { path }));
    }
    let partial = partial::partial_path(dir, &metadata.id);
    if let Some(progress) = progress {
        progress.started(&metadata.name, metadata.size.into());
    }
    let offset = item.offset();
    let file = partial::open_partial(&partial, offset)
        .await
        .map_err(ItemFileError::Local)?;
    if let Some(progress) = progress.filter(|_| offset > 0) {
        // The prefix came in an earlier download: the bar starts where it ended.
        progress.advanced(offset);
    }
    let written = async {
        let advanced = |bytes| {
            if let Some(progress) = progress {
                progress.advanced(bytes);
            }
        };
        // The write checks the content against the item's root as it ends.
        let file =
            item.write_to_file(file, &partial, advanced)
                .await
                .map_err(|error| match error {
                    CapabilityError::Datastore(DatastoreError::Io { source, .. }) => {
                        ItemFileError::Local(ClientError::io("writing", &partial, source))
                    }
                    other => ItemFileError::Transfer(other),
                })?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| ItemFileError::Local(ClientError::io("syncing", &partial, e.into())))?
            .map_err(|e| ItemFileError::Local(ClientError::io("syncing", &partial, e)))?;
        partial::publish(&partial, &path, overwrite)
            .await
            .map_err(ItemFileError::Local)
    }
    .await;
    if let Err(error) = written {
        if !error.leaves_a_resumable_partial() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        return Err(error);
    }
    if let Some(progress) = progress {
        progress.finished(&metadata.name);
    }
    Ok(path)
}

/// A load stream that ended an item early would have failed the copy; this guards the
/// length of what was copied all the same.
fn check_length(metadata: &Metadata, copied: u64) -> Result<(), CapabilityError> {
    if copied == u64::from(metadata.size) {
        return Ok(());
    }
    Err(CapabilityError::Truncated {
        name: metadata.name.clone(),
        expected: metadata.size.into(),
        got: copied,
    })
}

/// Tasks of a fan-out whose first attempt failed: the index, and the assignment tried
/// with the error (none when it was not tried).
type FailedFirst = Vec<(usize, Option<(Option<Task>, ClientError)>)>;

/// Logs that `node`, a holder, did not answer: one line, the others still do.
fn not_answered(node: PeerId, error: &ClientError) {
    tracing::warn!("node {node} did not answer: {error}");
}

/// The most frames of other tasks a [`TaskRun`] keeps while it waits for the selected
/// task's: the manager sends at most a few per task (a token per attempt, a FAILED).
const MAX_BUFFERED_FRAMES: usize = 4096;

/// A submitted job, as its assignments arrive on the job's stream, worked one task at a
/// time: the selected one.
struct TaskRun<'a> {
    client: &'a Client,
    job: SubmittedJob,
    /// Each task's name and the node it is pinned to, in the order submitted.
    targets: Vec<(String, Option<PeerId>)>,
    task_name: String,
    attempts: u32,
    /// The assignment being tried, as the manager sent it (without its token once used).
    current: Option<Task>,
    /// Frames of the other tasks, read while waiting for the selected task's.
    others: HashMap<String, VecDeque<Task>>,
    others_len: usize,
}

impl TaskRun<'_> {
    /// Selects the task at `index` of the job, and answers the node it is pinned to.
    fn select(&mut self, index: usize) -> PeerId {
        let (name, node) = self.targets[index].clone();
        self.task_name = name;
        self.attempts = 0;
        self.current = None;
        // Fan-out tasks are always pinned; the manager's own id stands in otherwise.
        node.or(self.client.manager)
            .unwrap_or_else(|| self.client.peer_id())
    }

    /// Takes back the selected task's first attempt, made elsewhere (the assignment
    /// tried, or none when the assignment itself failed), and handles its failure as
    /// [`failed`](Self::failed) does.
    async fn resume_after(
        &mut self,
        current: Option<Task>,
        error: ClientError,
    ) -> Result<(), ClientError> {
        self.attempts = u32::from(current.is_some());
        self.current = current;
        self.failed(error).await
    }

    /// The next frame of the selected task: kept from earlier reads, or read now,
    /// keeping the other tasks' frames for when they are selected.
    async fn next_frame(&mut self) -> Result<Option<Task>, ClusterError> {
        if let Some(frame) = self
            .others
            .get_mut(&self.task_name)
            .and_then(VecDeque::pop_front)
        {
            self.others_len -= 1;
            return Ok(Some(frame));
        }
        loop {
            let Some(task) = self.job.tasks.next().await? else {
                return Ok(None);
            };
            if task.name == self.task_name {
                return Ok(Some(task));
            }
            if self.others_len < MAX_BUFFERED_FRAMES
                && self.targets.iter().any(|(name, _)| *name == task.name)
            {
                self.others_len += 1;
                self.others
                    .entry(task.name.clone())
                    .or_default()
                    .push_back(task);
            }
        }
    }

    /// The next assignment of the task: a node and a token.
    async fn next_assignment(&mut self) -> Result<Assignment, ClientError> {
        let assignment_timeout = self.client.config.assignment_timeout;
        loop {
            let frame = tokio::time::timeout(assignment_timeout, self.next_frame())
                .await
                .map_err(|_| ClientError::NoAssignment {
                    job_id: self.job.job_id.clone(),
                    task: self.task_name.clone(),
                    waited: assignment_timeout,
                })?
                .map_err(|source| ClientError::Manager {
                    job: self.task_name.clone(),
                    source: Box::new(source),
                })?;
            let Some(task) = frame else {
                return Err(ClientError::JobEnded {
                    job_id: self.job.job_id.clone(),
                    task: self.task_name.clone(),
                });
            };
            match task.status() {
                Status::Failed => {
                    return Err(ClientError::TaskFailed {
                        job_id: self.job.job_id.clone(),
                        task: self.task_name.clone(),
                    });
                }
                // Only assignments carry tokens; anything else is news, not work.
                Status::Pending => {}
                _ => continue,
            }
            let assignment =
                parse_assignment(&task).map_err(|reason| ClientError::BadAssignment {
                    job_id: self.job.job_id.clone(),
                    task: self.task_name.clone(),
                    reason,
                })?;
            self.attempts += 1;
            self.current = Some(Task {
                access_token: None,
                ..task
            });
            return Ok(assignment);
        }
    }

    /// Handles a failed attempt: gives `error` back when no other node may do better or
    /// the attempts are spent; otherwise tells the manager, on the job's topic, so that it
    /// assigns the task again now rather than at the task's deadline.
    async fn failed(&mut self, error: ClientError) -> Result<(), ClientError> {
        if !error.is_retryable() || self.attempts >= self.client.config.max_attempts {
            return Err(error);
        }
        // A node that could not be reached for a task of several pinned to their nodes
        // would be assigned again to the same node: it is reported and passed over. The
        // manager still hears of the failure, and fails the task once it drops the node.
        if self.targets.len() > 1 && matches!(error, ClientError::Connect { .. }) {
            self.report(Status::Failed).await;
            return Err(error);
        }
        tracing::warn!(job_id = %self.job.job_id, %error, attempt = self.attempts, "task failed, waiting for another node");
        if self.current.is_none() {
            return Err(error);
        }
        self.report(Status::Failed).await;
        Ok(())
    }

    /// Waits, within [`ClientConfig::request_timeout`], until the manager ends the job's
    /// stream, which it does once the node's DONE report reached it: from then on the
    /// manager has recorded where the data went, so that a listing right after finds
    /// it. The node, not this client, reports DONE: it alone knows the items are
    /// durable, and the manager leaves the job's topic once the job ends. A manager that
    /// does not end the stream in time costs the wait, not the upload, which is stored.
    async fn recorded(mut self) {
        let job_id = self.job.job_id.clone();
        let ended = async { while let Ok(Some(_)) = self.job.tasks.next().await {} };
        if tokio::time::timeout(self.client.config.request_timeout, ended)
            .await
            .is_err()
        {
            tracing::debug!(%job_id, "the manager did not end the finished job's stream in time");
        }
    }

    /// Reports the current attempt `status` (DONE or FAILED) to the manager, so that it
    /// acts now rather than at the task's deadline.
    async fn report(&mut self, status: Status) {
        let job_id = self.job.job_id.as_str();
        let Some(task) = self.current.take() else {
            return;
        };
        let update = Task {
            status: status as i32,
            ..task
        };
        // Best effort: the node reports its side too, and the deadline remains.
        let reported = match self.client.manager {
            Some(manager) => self.client.cluster.report_tasks(manager, &[update]).await,
            None => return,
        };
        if let Err(report_error) = reported {
            tracing::debug!(%job_id, error = %report_error, ?status, "could not report the attempt");
        }
    }
}

/// Items of at least this many bytes are sent resumable: when the stream is cut while
/// one is sent, the upload continues on the same node after the bytes it kept. Smaller
/// items are not worth the round trip the node's offer costs.
pub const RESUMABLE_MIN: u32 = 1 << 20;

/// What an upload call fixes about its items before any job is submitted.
#[derive(Debug)]
struct UploadPlan {
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
            let (len, path, key) = match &item.content {
                Content::File(path) => {
                    let metadata = tokio::fs::metadata(path)
                        .await
                        .map_err(|e| ClientError::io("reading the length of", path, e))?;
                    let key = file_key(path, &metadata, &item.metadata).await;
                    (metadata.len(), path.clone(), key)
                }
                Content::Bytes(bytes) => (
                    bytes.len() as u64,
                    PathBuf::from("<bytes>"),
                    format!("bytes {call} {index}"),
                ),
            };
            let size = u32::try_from(len).map_err(|_| ClientError::TooLarge { path, len })?;
            sizes.push(size);
            keys.push((size >= RESUMABLE_MIN).then_some(key));
        }
        Ok(Self { sizes, keys })
    }
}

/// The resume key of a file: the same for the same file unchanged (its absolute path,
/// length and modification time) uploaded as the same item, so that a later run of the
/// same upload continues what a cut one left on the node. The node checks the kept bytes
/// against the file's own before skipping them, so a key that names other content costs
/// only the check.
async fn file_key(path: &Path, metadata: &std::fs::Metadata, item: &UpsertMetadata) -> String {
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

/// Checks that every id can name a file, and creates the output folder.
async fn prepare_download(ids: &[String], out_dir: &Path) -> Result<(), ClientError> {
    for id in ids {
        check_id(id)?;
    }
    tokio::fs::create_dir_all(out_dir)
        .await
        .map_err(|e| ClientError::io("creating", out_dir, e))
}

/// An item id becomes a file name: nothing that could leave the output folder or hide.
fn check_id(id: &str) -> Result<(), ClientError> {
    if is_plain_file_name(id) {
        Ok(())
    } else {
        Err(ClientError::InvalidId { id: id.to_owned() })
    }
}

/// Whether `name` is a file name on every platform, and one a download may write: not
/// empty, at most 255 bytes, no dot first (hidden files, `.`, `..`, and our `.<id>.part`),
/// no path separator, no character Windows refuses (`<>:"|?*`, controls), no dot or space
/// last, and not a name Windows reserves for a device (`CON`, `NUL`, `COM1`, …, with any
/// extension).
fn is_plain_file_name(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
        "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    ];
    let stem = name.split('.').next().unwrap_or_default().trim_end();
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.ends_with(['.', ' '])
        && !name.chars().any(|c| {
            matches!(c, '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*') || c.is_control()
        })
        && !RESERVED.iter().any(|r| stem.eq_ignore_ascii_case(r))
}

fn parse_assignment(task: &Task) -> Result<Assignment, String> {
    let receiver = task
        .receiver
        .as_deref()
        .ok_or_else(|| "no receiver".to_owned())?;
    let node = receiver
        .parse::<PeerId>()
        .map_err(|e| format!("receiver {receiver:?} is not a peer id: {e}"))?;
    let token = task
        .access_token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "no access token".to_owned())?;
    Ok(Assignment { node, token })
}

/// The peer id at the end of `addr` (`/p2p/<id>`).
#[must_use]
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// Where the `domain` command keeps its identity by default:
/// `$XDG_CONFIG_HOME/domain/identity.key`, or `~/.config/domain/identity.key`.
#[must_use]
pub fn default_identity_path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|home| home.join(".config"))
        })?;
    Some(config.join("domain").join("identity.key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_are_not_plain_file_names_on_every_platform_are_refused() {
        let long = "x".repeat(256);
        for bad in [
            // Leaving the folder, hidden files and our partial files.
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            ".hidden",
            ".x.part",
            // Characters and endings Windows refuses, device names with any extension.
            "a:b",
            "c:",
            "a<b",
            "a>b",
            "a\"b",
            "a|b",
            "a?b",
            "a*b",
            "x.",
            "x ",
            "CON",
            "nul",
            "Com1.txt",
            "LPT9.tar.gz",
            "aux ",
            "a\0b",
            "a\nb",
            &long,
        ] {
            assert!(
                matches!(check_id(bad), Err(ClientError::InvalidId { .. })),
                "{bad:?} was accepted"
            );
        }
        for good in [
            "0f3c",
            "7b6e1c5a-9d2e-4e8b-a1f0-3c2d1e0f9a8b",
            "scan.ply",
            "console",
            "COM10",
            &"x".repeat(255),
        ] {
            assert!(check_id(good).is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn an_assignment_needs_a_receiver_peer_id_and_a_token() {
        let peer = PeerId::random();
        let task = Task {
            receiver: Some(peer.to_string()),
            access_token: Some("t".into()),
            ..Task::default()
        };
        let assignment = parse_assignment(&task).unwrap();
        assert_eq!(assignment.node, peer);
        assert_eq!(assignment.token, "t");
        assert!(
            parse_assignment(&Task {
                receiver: None,
                ..task.clone()
            })
            .is_err()
        );
        assert!(
            parse_assignment(&Task {
                access_token: None,
                ..task.clone()
            })
            .is_err()
        );
        assert!(
            parse_assignment(&Task {
                receiver: Some("node-1".into()),
                ..task
            })
            .is_err()
        );
    }

    #[test]
    fn a_query_by_ids_asks_again_only_for_what_is_missing() {
        let mut listed = Vec::new();
        let query = Query {
            ids: ["a", "b", "c"].map(String::from).to_vec(),
            ..Query::default()
        };
        let mut gather = Gather::new(&query, Sink::Listing(&mut listed));
        assert!(
            gather.request().metadata_only,
            "a listing never asks for content"
        );
        gather.seen.insert("b".into());
        assert_eq!(gather.missing(), ["a", "c"]);
        assert_eq!(gather.request().ids, ["a", "c"]);
        gather.seen.extend(["a".into(), "c".into()]);
        assert!(gather.missing().is_empty());
        assert_eq!(
            gather.request().ids,
            ["a", "b", "c"],
            "ends DONE, as a cheap query"
        );
    }

    #[test]
    fn a_query_by_name_asks_every_holder_the_same() {
        let mut listed = Vec::new();
        let query = Query {
            names: vec!["scan".into()],
            ..Query::default()
        };
        let mut gather = Gather::new(&query, Sink::Listing(&mut listed));
        gather.seen.insert("a".into());
        assert!(gather.missing().is_empty());
        assert_eq!(gather.request(), gather.query);
    }

    #[test]
    fn the_manager_address_must_name_its_peer() {
        let peer = PeerId::random();
        let with: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        let without: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(peer_of(&with), Some(peer));
        assert_eq!(peer_of(&without), None);
    }
}
