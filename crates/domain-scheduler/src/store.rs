//! Persistence of jobs, tasks and the node registry behind [`SchedulerStore`], with
//! [`RedbStore`] as the embedded default.
//!
//! The scheduler keeps its state in memory and writes every change of one operation (a submit,
//! a report, a tick, …) as one [`Batch`], committed before the operation's events are published:
//! what the cluster has been told is always on disk. Records are protobuf, so a store written by
//! one version reads in the next (fields are only ever added).

use std::path::Path;

use domain_proto::discovery::Node;
use domain_proto::task::{JobRequest, TaskHandler};
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// A submitted job: its request, as validated, and who submitted it.
#[derive(Clone, PartialEq, Message)]
pub struct JobRecord {
    /// The job id (hex BLAKE3 of the encoded request).
    #[prost(string, required, tag = "1")]
    pub job_id: String,
    /// The request the job was made from.
    #[prost(message, required, tag = "2")]
    pub request: JobRequest,
    /// Peer id of the submitter (the one that receives the task tokens).
    #[prost(string, required, tag = "3")]
    pub submitter: String,
    /// When the job was accepted, in milliseconds.
    #[prost(uint64, required, tag = "4")]
    pub created_at: u64,
}

/// The state of one task: posemesh's `TaskHandler` plus what the scheduler needs to resume it.
#[derive(Clone, PartialEq, Message)]
pub struct TaskRecord {
    /// Position of the task in its job request.
    #[prost(uint32, required, tag = "1")]
    pub position: u32,
    /// Status, receiver, retries, error and times of the task; `handler.task` never holds a
    /// token (tokens are secrets handed to the submitter, not state).
    #[prost(message, required, tag = "2")]
    pub handler: TaskHandler,
    /// Execution deadline of the running attempt, in milliseconds.
    #[prost(uint64, optional, tag = "3")]
    pub deadline: Option<u64>,
    /// The node of the previous failed attempt, avoided by the next one when possible.
    #[prost(string, optional, tag = "4")]
    pub last_receiver: Option<String>,
}

/// A registered node.
#[derive(Clone, PartialEq, Message)]
pub struct NodeRecord {
    /// The node as it joined.
    #[prost(message, required, tag = "1")]
    pub node: Node,
}

/// One entry of the holder index: `node_id` holds data of `domain_id` (an empty domain id:
/// the node is a gateway, a holder of every domain).
#[derive(Clone, PartialEq, Message)]
pub struct HolderRecord {
    /// The domain, or empty for a gateway.
    #[prost(string, required, tag = "1")]
    pub domain_id: String,
    /// The node's peer id.
    #[prost(string, required, tag = "2")]
    pub node_id: String,
    /// Items, as last reported.
    #[prost(uint64, required, tag = "3")]
    pub items: u64,
    /// Content bytes of those items.
    #[prost(uint64, required, tag = "4")]
    pub bytes: u64,
    /// When the manager learned of them, in milliseconds.
    #[prost(uint64, required, tag = "5")]
    pub updated_at: u64,
}

/// Everything a store holds, as [`SchedulerStore::load`] returns it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Every job.
    pub jobs: Vec<JobRecord>,
    /// Every task of every job.
    pub tasks: Vec<TaskRecord>,
    /// Every registered node.
    pub nodes: Vec<NodeRecord>,
    /// Every entry of the holder index.
    pub holders: Vec<HolderRecord>,
}

/// The changes of one scheduler operation, to be committed atomically.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Jobs to insert or replace.
    pub jobs: Vec<JobRecord>,
    /// Tasks to insert or replace (keyed by `handler.job_id` and `position`).
    pub tasks: Vec<TaskRecord>,
    /// Nodes to insert or replace.
    pub nodes: Vec<NodeRecord>,
    /// Ids of nodes to delete.
    pub removed_nodes: Vec<String>,
    /// Ids of jobs to delete, with all their tasks.
    pub removed_jobs: Vec<String>,
    /// Holder-index entries to insert or replace (keyed by domain and node).
    pub holders: Vec<HolderRecord>,
    /// Holder-index entries to delete, as (domain, node).
    pub removed_holders: Vec<(String, String)>,
}

impl Batch {
    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.tasks.is_empty()
            && self.nodes.is_empty()
            && self.removed_nodes.is_empty()
            && self.removed_jobs.is_empty()
            && self.holders.is_empty()
            && self.removed_holders.is_empty()
    }
}

/// Why the store could not load or commit.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption detected by its checksums, lock held by another
    /// process, …).
    #[error("scheduler database")]
    Database(#[from] redb::Error),
    /// A record does not decode.
    #[error("scheduler database: record {key} in table {table} does not decode")]
    Decode {
        /// The table.
        table: &'static str,
        /// The record's key.
        key: String,
        /// The protobuf error.
        source: prost::DecodeError,
    },
    /// The records are inconsistent with each other.
    #[error("scheduler database is inconsistent: {0}")]
    Inconsistent(String),
    /// A store other than redb failed (etcd unreachable, a request refused, ...).
    #[error("scheduler store")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A store shared by several managers refused a write because this manager no longer
    /// leads them: another one writes the state now.
    #[error("scheduler store: this manager is no longer the leader")]
    NotLeader,
}

/// Where the scheduler keeps its state.
///
/// redb is the embedded default ([`RedbStore`]); a store shared by several managers (etcd) fits
/// the same two calls.
pub trait SchedulerStore: Send {
    /// Reads every record.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Applies `batch` atomically: after a crash, either all of it or none of it is visible.
    fn commit(&mut self, batch: Batch) -> Result<(), StoreError>;
}

/// The page cache of [`RedbStore::open`]. The scheduler reads its tables once, at start, so the
/// cache only serves the write path; redb's default (1 GiB) would mostly hold pages of past
/// commits. 64 MiB holds the B-tree pages that even a 100 000-task submit touches.
pub const REDB_CACHE_SIZE: usize = 64 * 1024 * 1024;

const JOBS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("jobs");
const TASKS: TableDefinition<'_, (&str, u32), &[u8]> = TableDefinition::new("tasks");
const NODES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("nodes");
const HOLDERS: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("holders");

/// A [`SchedulerStore`] in a redb database file.
///
/// Each [`Batch`] is one write transaction. With [`Durability::Immediate`] (the default of
/// [`RedbStore::open`]) it is on disk when `commit` returns, at the cost of an fsync per scheduler
/// operation: a DONE that a crash forgot would make a finished task run again, which is exactly
/// what persistence is for. [`RedbStore::with_durability`] can trade that for speed where losing
/// the last operations is acceptable; redb stays consistent either way.
pub struct RedbStore {
    db: Database,
    durability: Durability,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`, with immediate durability and a
    /// [`REDB_CACHE_SIZE`] page cache.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(REDB_CACHE_SIZE)
            .create(path)
            .map_err(redb::Error::from)?;
        Self::init(db)
    }

    /// A database that lives in memory only: for tests and tools that need no restart.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(redb::Error::from)?;
        Self::init(db)
    }

    /// Sets the durability of later commits (see the type's docs).
    ///
    /// With [`Durability::None`], redb keeps the bookkeeping of the non-durable commits in memory
    /// and defers freeing their pages until a durable commit: a store that never commits durably
    /// again grows in memory and on disk without end (the `scheduler_memory` bench measured some
    /// 37 bytes of RSS per task). Commit durably now and then.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    fn init(db: Database) -> Result<Self, StoreError> {
        // Create the tables up front so that `load` on a fresh database finds them.
        let txn = db.begin_write().map_err(redb::Error::from)?;
        {
            txn.open_table(JOBS).map_err(redb::Error::from)?;
            txn.open_table(TASKS).map_err(redb::Error::from)?;
            txn.open_table(NODES).map_err(redb::Error::from)?;
            txn.open_table(HOLDERS).map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(Self {
            db,
            durability: Durability::Immediate,
        })
    }
}

fn decode<M: Message + Default>(
    table: &'static str,
    key: String,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|source| StoreError::Decode { table, key, source })
}

impl SchedulerStore for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let mut snapshot = Snapshot::default();
        let jobs = txn.open_table(JOBS).map_err(redb::Error::from)?;
        for row in jobs.iter().map_err(redb::Error::from)? {
            let (key, value) = row.map_err(redb::Error::from)?;
            snapshot
                .jobs
                .push(decode("jobs", key.value().to_owned(), value.value())?);
        }
        let tasks = txn.open_table(TASKS).map_err(redb::Error::from)?;
        for row in tasks.iter().map_err(redb::Error::from)? {
            let (key, value) = row.map_err(redb::Error::from)?;
            let (job, position) = key.value();
            snapshot
                .tasks
                .push(decode("tasks", format!("{job}/{position}"), value.value())?);
        }
        let nodes = txn.open_table(NODES).map_err(redb::Error::from)?;
        for row in nodes.iter().map_err(redb::Error::from)? {
            let (key, value) = row.map_err(redb::Error::from)?;
            snapshot
                .nodes
                .push(decode("nodes", key.value().to_owned(), value.value())?);
        }
        let holders = txn.open_table(HOLDERS).map_err(redb::Error::from)?;
        for row in holders.iter().map_err(redb::Error::from)? {
            let (key, value) = row.map_err(redb::Error::from)?;
            let (domain, node) = key.value();
            snapshot.holders.push(decode(
                "holders",
                format!("{domain}/{node}"),
                value.value(),
            )?);
        }
        Ok(snapshot)
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(redb::Error::from)?;
        txn.set_durability(self.durability)
            .map_err(redb::Error::from)?;
        {
            let mut jobs = txn.open_table(JOBS).map_err(redb::Error::from)?;
            let mut tasks = txn.open_table(TASKS).map_err(redb::Error::from)?;
            let mut nodes = txn.open_table(NODES).map_err(redb::Error::from)?;
            let mut holders = txn.open_table(HOLDERS).map_err(redb::Error::from)?;
            for job in &batch.jobs {
                jobs.insert(job.job_id.as_str(), job.encode_to_vec().as_slice())
                    .map_err(redb::Error::from)?;
            }
            for task in &batch.tasks {
                let key = (task.handler.job_id.as_str(), task.position);
                tasks
                    .insert(key, task.encode_to_vec().as_slice())
                    .map_err(redb::Error::from)?;
            }
            for node in &batch.nodes {
                nodes
                    .insert(node.node.id.as_str(), node.encode_to_vec().as_slice())
                    .map_err(redb::Error::from)?;
            }
            for id in &batch.removed_nodes {
                nodes.remove(id.as_str()).map_err(redb::Error::from)?;
            }
            for id in &batch.removed_jobs {
                jobs.remove(id.as_str()).map_err(redb::Error::from)?;
                tasks
                    .retain_in((id.as_str(), 0)..=(id.as_str(), u32::MAX), |_, _| false)
                    .map_err(redb::Error::from)?;
            }
            for holder in &batch.holders {
                let key = (holder.domain_id.as_str(), holder.node_id.as_str());
                holders
                    .insert(key, holder.encode_to_vec().as_slice())
                    .map_err(redb::Error::from)?;
            }
            for (domain, node) in &batch.removed_holders {
                holders
                    .remove((domain.as_str(), node.as_str()))
                    .map_err(redb::Error::from)?;
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }
}
