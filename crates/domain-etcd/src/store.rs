//! [`EtcdStore`]: the scheduler's state in etcd, written by the leader alone.
//!
//! Records are the scheduler's protobuf records, one key each, under `<prefix>state/`:
//! `jobs/<job>`, `tasks/<job>/<position>`, `nodes/<node>`, `holders/<domain>\0<node>`.
//! A [`Batch`] that fits one etcd transaction (etcd refuses more than 128 operations or
//! 1.5 MiB per request by default) is that transaction, guarded by the leadership. A larger
//! one goes through a log: its operations are written as chunks under `<prefix>wal/<seq>/`,
//! then the header `<prefix>wal/<seq>` commits it, then it is applied in as many
//! transactions as it takes and the log entry removed. A leader that dies part-way leaves
//! either no header (the chunks are dropped by the next leader: the batch never happened)
//! or a header (the next leader applies the batch before it reads the state).
//!
//! A record larger than [`MAX_PART`] (a job of many tasks, a task with large data) is kept
//! in parts under `<prefix>parts/<its state key>/<i>`, its own key holding only a marker
//! with the count, so that no single value nears etcd's request limit; the parts go in the
//! same batch as the marker, and a job's removal removes its records' parts.

use std::collections::BTreeMap;
use std::time::Duration;

use domain_scheduler::{Batch, SchedulerStore, Snapshot, StoreError};
use prost::Message;

use crate::api::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, request_op,
};
use crate::client::{Etcd, EtcdError, prefix_end};
use crate::election::Leadership;

/// Operations per transaction: etcd's default `--max-txn-ops` is 128, and one place goes
/// to the guard.
pub const MAX_TXN_OPS: usize = 100;

/// Bytes of keys and values per transaction: etcd's default `--max-request-bytes` is
/// 1.5 MiB. A single record larger than this cannot be stored in such an etcd.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;

/// Bytes per chunk of a logged batch.
const WAL_CHUNK: usize = 512 * 1024;

/// The largest record kept in one value; a larger one is kept in parts of this size.
pub const MAX_PART: usize = 256 * 1024;

/// How a value in parts starts: 0xff is no protobuf record's first byte (its low bits
/// would be wire type 7, which does not exist).
const PARTS_MARKER: &[u8] = b"\xffparts";

/// How long a write is retried while etcd does not answer, before the scheduler is told.
/// Below the lease times the managers use, so that a leader gives up its writes no later
/// than its leadership.
const RETRY_FOR: Duration = Duration::from_secs(3);

/// One operation of a batch, as it goes to etcd (and into the log).
#[derive(Clone, PartialEq, Message)]
struct LoggedOp {
    /// The full key.
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    /// The value to put; absent for a deletion.
    #[prost(bytes = "vec", optional, tag = "2")]
    value: Option<Vec<u8>>,
    /// Delete every key starting with `key` (the tasks of a removed job).
    #[prost(bool, tag = "3")]
    whole_prefix: bool,
}

/// A batch too large for one transaction, as logged.
#[derive(Clone, PartialEq, Message)]
struct LoggedBatch {
    #[prost(message, repeated, tag = "1")]
    ops: Vec<LoggedOp>,
}

/// The scheduler's [`SchedulerStore`] in etcd, for the manager that holds a
/// [`Leadership`]; every write fails with [`StoreError::NotLeader`] once that leadership is
/// gone. Its calls block: the scheduler runs on a thread of its own, and this store waits
/// for etcd on the `runtime` it was opened with.
#[derive(Debug)]
pub struct EtcdStore {
    etcd: Etcd,
    guard: Compare,
    runtime: tokio::runtime::Handle,
    leader_revision: i64,
    next_log: u64,
}

impl EtcdStore {
    /// Opens the state for the holder of `leadership`: applies the batches a previous leader
    /// committed to the log but did not finish, and drops those it did not commit.
    ///
    /// # Errors
    /// [`StoreError::NotLeader`] when the leadership is gone; [`StoreError::Backend`] when
    /// etcd fails; [`StoreError::Inconsistent`] for a committed log entry with chunks
    /// missing.
    pub async fn open(etcd: Etcd, leadership: &Leadership) -> Result<Self, StoreError> {
        let mut store = Self {
            etcd,
            guard: leadership.guard(),
            runtime: tokio::runtime::Handle::current(),
            leader_revision: leadership.revision(),
            next_log: 0,
        };
        store.recover().await?;
        Ok(store)
    }

    fn state_key(&self, suffix: &[u8]) -> Vec<u8> {
        let mut key = self.etcd.key(b"state/");
        key.extend_from_slice(suffix);
        key
    }

    /// Where the parts of the record at state key `suffix` are.
    fn parts_prefix(&self, suffix: &[u8]) -> Vec<u8> {
        let mut key = self.etcd.key(b"parts/");
        key.extend_from_slice(suffix);
        key.push(b'/');
        key
    }

    fn log_key(&self, suffix: &str) -> Vec<u8> {
        self.etcd.key(format!("wal/{suffix}").as_bytes())
    }

    async fn recover(&mut self) -> Result<(), StoreError> {
        let prefix = self.log_key("");
        let (entries, _) = self.etcd.scan(&prefix).await.map_err(backend)?;
        let mut headers = BTreeMap::new();
        let mut chunks: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
        for kv in entries {
            let name = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            match name.split_once('/') {
                Some((seq, part)) => {
                    chunks
                        .entry(seq.to_owned())
                        .or_default()
                        .insert(part.to_owned(), kv.value);
                }
                None => {
                    headers.insert(name, kv.value);
                }
            }
        }
        for (seq, header) in headers {
            let count = header
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Inconsistent(format!("log entry {seq}: bad header")))?;
            let parts = chunks.remove(&seq).unwrap_or_default();
            if parts.len() != count as usize {
                return Err(StoreError::Inconsistent(format!(
                    "log entry {seq}: {} of {count} chunks",
                    parts.len()
                )));
            }
            let bytes: Vec<u8> = parts.into_values().flatten().collect();
            let logged =
                LoggedBatch::decode(bytes.as_slice()).map_err(|source| StoreError::Decode {
                    table: "wal",
                    key: seq.clone(),
                    source,
                })?;
            tracing::info!(entry = %seq, ops = logged.ops.len(), "finishing a logged batch");
            self.apply(&logged.ops).await?;
            self.drop_log_entry(&seq).await?;
        }
        for seq in chunks.into_keys() {
            tracing::info!(entry = %seq, "dropping a batch that was never committed");
            self.drop_log_entry(&seq).await?;
        }
        Ok(())
    }

    /// One guarded transaction of `ops`, retried while etcd does not answer.
    async fn guarded(&self, ops: Vec<RequestOp>) -> Result<(), StoreError> {
        let request = TxnRequest {
            compare: vec![self.guard.clone()],
            success: ops,
            failure: Vec::new(),
        };
        let give_up = tokio::time::Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.etcd.txn(request.clone()).await {
                Ok(response) if response.succeeded => return Ok(()),
                Ok(_) => return Err(StoreError::NotLeader),
                Err(error) if is_transient(&error) && tokio::time::Instant::now() < give_up => {
                    tracing::debug!(error = %domain_proto::ErrorChain(&error), "etcd write retried");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(error) => return Err(backend(error)),
            }
        }
    }

    /// Applies `ops` in as few guarded transactions as etcd's limits allow.
    async fn apply(&self, ops: &[LoggedOp]) -> Result<(), StoreError> {
        for group in groups(ops)? {
            self.guarded(group.iter().map(request_op).collect()).await?;
        }
        Ok(())
    }

    async fn drop_log_entry(&self, seq: &str) -> Result<(), StoreError> {
        let chunks = self.log_key(&format!("{seq}/"));
        self.guarded(vec![
            request_op(&LoggedOp {
                key: self.log_key(seq),
                value: None,
                whole_prefix: false,
            }),
            request_op(&LoggedOp {
                key: chunks,
                value: None,
                whole_prefix: true,
            }),
        ])
        .await
    }

    async fn commit_ops(&mut self, ops: Vec<LoggedOp>) -> Result<(), StoreError> {
        let groups = groups(&ops)?;
        match groups.as_slice() {
            [] => return Ok(()),
            [group] => return self.guarded(group.iter().map(request_op).collect()).await,
            _ => {}
        }
        // Too large for one transaction: log, commit, apply, forget.
        let seq = self.log(&ops).await?;
        self.apply(&ops).await?;
        self.drop_log_entry(&seq).await
    }

    /// Writes `ops` to the log and commits them there (the header last); returns the entry.
    async fn log(&mut self, ops: &[LoggedOp]) -> Result<String, StoreError> {
        let seq = format!("{:016x}{:016x}", self.leader_revision, self.next_log);
        self.next_log += 1;
        let bytes = LoggedBatch { ops: ops.to_vec() }.encode_to_vec();
        let chunks: Vec<&[u8]> = bytes.chunks(WAL_CHUNK).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let put = LoggedOp {
                key: self.log_key(&format!("{seq}/{i:08x}")),
                value: Some(chunk.to_vec()),
                whole_prefix: false,
            };
            self.guarded(vec![request_op(&put)]).await?;
        }
        let count = u32::try_from(chunks.len())
            .map_err(|_| StoreError::Inconsistent("a batch of over 2^32 chunks".to_owned()))?;
        let header = LoggedOp {
            key: self.log_key(&seq),
            value: Some(count.to_be_bytes().to_vec()),
            whole_prefix: false,
        };
        self.guarded(vec![request_op(&header)]).await?;
        Ok(seq)
    }

    /// The operations of `batch`, in the order [`domain_scheduler::RedbStore`] applies
    /// them (puts, then removals), with no key twice: etcd refuses a transaction that names
    /// a key twice, or puts a key inside a range it deletes.
    fn ops(&self, batch: &Batch) -> Vec<LoggedOp> {
        let mut keys: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for job in &batch.jobs {
            keys.insert(self.job_key(&job.job_id), Some(job.encode_to_vec()));
        }
        for task in &batch.tasks {
            let key = self.task_key(&task.handler.job_id, task.position);
            keys.insert(key, Some(task.encode_to_vec()));
        }
        for node in &batch.nodes {
            keys.insert(self.node_key(&node.node.id), Some(node.encode_to_vec()));
        }
        for id in &batch.removed_nodes {
            keys.insert(self.node_key(id), None);
        }
        let mut removed_tasks = Vec::new();
        for id in &batch.removed_jobs {
            keys.insert(self.job_key(id), None);
            let tasks = self.tasks_prefix(id);
            keys.retain(|key, _| !key.starts_with(&tasks));
            removed_tasks.push(tasks);
        }
        for holder in &batch.holders {
            let key = self.holder_key(&holder.domain_id, &holder.node_id);
            keys.insert(key, Some(holder.encode_to_vec()));
        }
        for (domain, node) in &batch.removed_holders {
            keys.insert(self.holder_key(domain, node), None);
        }
        let state = self.state_key(b"");
        let mut parts = Vec::new();
        for (key, value) in &mut keys {
            let Some(record) = value.take_if(|record| record.len() > MAX_PART) else {
                continue;
            };
            let prefix = self.parts_prefix(&key[state.len()..]);
            let count = record.chunks(MAX_PART).len();
            for (i, part) in record.chunks(MAX_PART).enumerate() {
                let mut part_key = prefix.clone();
                part_key.extend_from_slice(format!("{i:08x}").as_bytes());
                parts.push((part_key, Some(part.to_vec())));
            }
            let mut marker = PARTS_MARKER.to_vec();
            marker.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
            *value = Some(marker);
        }
        // A removed job's records take their parts with them.
        let removed_parts: Vec<Vec<u8>> = batch
            .removed_jobs
            .iter()
            .flat_map(|id| {
                [
                    self.parts_prefix(format!("jobs/{id}").as_bytes()),
                    self.parts_prefix(format!("tasks/{id}").as_bytes()),
                ]
            })
            .collect();
        keys.into_iter()
            .chain(parts)
            .map(|(key, value)| LoggedOp {
                key,
                value,
                whole_prefix: false,
            })
            .chain(
                removed_tasks
                    .into_iter()
                    .chain(removed_parts)
                    .map(|key| LoggedOp {
                        key,
                        value: None,
                        whole_prefix: true,
                    }),
            )
            .collect()
    }

    fn job_key(&self, job: &str) -> Vec<u8> {
        self.state_key(format!("jobs/{job}").as_bytes())
    }

    fn tasks_prefix(&self, job: &str) -> Vec<u8> {
        self.state_key(format!("tasks/{job}/").as_bytes())
    }

    fn task_key(&self, job: &str, position: u32) -> Vec<u8> {
        // Zero-padded, so that a job's tasks scan in order.
        self.state_key(format!("tasks/{job}/{position:010}").as_bytes())
    }

    fn node_key(&self, node: &str) -> Vec<u8> {
        self.state_key(format!("nodes/{node}").as_bytes())
    }

    fn holder_key(&self, domain: &str, node: &str) -> Vec<u8> {
        // NUL is in neither a domain id nor a peer id.
        self.state_key(format!("holders/{domain}\0{node}").as_bytes())
    }

    async fn load_state(&self) -> Result<Snapshot, StoreError> {
        let prefix = self.state_key(b"");
        let (entries, _) = self.etcd.scan(&prefix).await.map_err(backend)?;
        let parts_root = self.etcd.key(b"parts/");
        let (parts, _) = self.etcd.scan(&parts_root).await.map_err(backend)?;
        let parts: BTreeMap<Vec<u8>, Vec<u8>> =
            parts.into_iter().map(|kv| (kv.key, kv.value)).collect();
        let mut snapshot = Snapshot::default();
        for kv in entries {
            let name = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            let whole;
            let value = match kv.value.strip_prefix(PARTS_MARKER) {
                Some(count) => {
                    whole = self.join_parts(&parts, &kv.key[prefix.len()..], count, &name)?;
                    whole.as_slice()
                }
                None => kv.value.as_slice(),
            };
            match name.split_once('/') {
                Some(("jobs", _)) => snapshot.jobs.push(decode("jobs", &name, value)?),
                Some(("tasks", _)) => snapshot.tasks.push(decode("tasks", &name, value)?),
                Some(("nodes", _)) => snapshot.nodes.push(decode("nodes", &name, value)?),
                Some(("holders", _)) => {
                    snapshot.holders.push(decode("holders", &name, value)?);
                }
                _ => {
                    return Err(StoreError::Inconsistent(format!(
                        "unknown key {name:?} in the state"
                    )));
                }
            }
        }
        Ok(snapshot)
    }
}

impl EtcdStore {
    /// The record at state key `suffix` (`name` in errors), from its `count` parts.
    fn join_parts(
        &self,
        parts: &BTreeMap<Vec<u8>, Vec<u8>>,
        suffix: &[u8],
        count: &[u8],
        name: &str,
    ) -> Result<Vec<u8>, StoreError> {
        let count = <[u8; 4]>::try_from(count)
            .map(u32::from_be_bytes)
            .map_err(|_| StoreError::Inconsistent(format!("{name}: bad parts marker")))?;
        let prefix = self.parts_prefix(suffix);
        let mut whole = Vec::new();
        for i in 0..count {
            let mut key = prefix.clone();
            key.extend_from_slice(format!("{i:08x}").as_bytes());
            let part = parts.get(&key).ok_or_else(|| {
                StoreError::Inconsistent(format!("{name}: part {i} of {count} missing"))
            })?;
            whole.extend_from_slice(part);
        }
        Ok(whole)
    }
}

impl SchedulerStore for EtcdStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.runtime.block_on(self.load_state())
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let ops = self.ops(&batch);
        let runtime = self.runtime.clone();
        runtime.block_on(self.commit_ops(ops))
    }
}

fn decode<M: Message + Default>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|source| StoreError::Decode {
        table,
        key: key.to_owned(),
        source,
    })
}

fn backend(error: EtcdError) -> StoreError {
    StoreError::Backend(Box::new(error))
}

/// Whether a failed call may succeed when made again: etcd unreachable, restarting, or slow.
fn is_transient(error: &EtcdError) -> bool {
    match error {
        EtcdError::Timeout { .. } => true,
        EtcdError::Rpc { source, .. } => matches!(
            source.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        _ => false,
    }
}

fn request_op(op: &LoggedOp) -> RequestOp {
    let request = match &op.value {
        Some(value) => request_op::Request::RequestPut(PutRequest {
            key: op.key.clone(),
            value: value.clone(),
            ..PutRequest::default()
        }),
        None => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: op.key.clone(),
            range_end: if op.whole_prefix {
                prefix_end(&op.key)
            } else {
                Vec::new()
            },
            ..DeleteRangeRequest::default()
        }),
    };
    RequestOp {
        request: Some(request),
    }
}

/// `ops` cut into runs that each fit one transaction.
fn groups(ops: &[LoggedOp]) -> Result<Vec<&[LoggedOp]>, StoreError> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, op) in ops.iter().enumerate() {
        let size = op.key.len() + op.value.as_ref().map_or(0, Vec::len) + 16;
        if size > MAX_TXN_BYTES {
            return Err(backend(EtcdError::TooLarge {
                bytes: size,
                limit: MAX_TXN_BYTES,
            }));
        }
        if i - start == MAX_TXN_OPS || bytes + size > MAX_TXN_BYTES {
            groups.push(&ops[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < ops.len() {
        groups.push(&ops[start..]);
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalEtcd;
    use domain_scheduler::{JobRecord, TaskRecord};

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_committed_to_the_log_but_not_applied_is_applied_by_the_next_leader() {
        let server = LocalEtcd::start().await.unwrap();
        let etcd = Etcd::connect(&server.config("/test/")).unwrap();
        let ttl = Duration::from_secs(2);
        let first = etcd.campaign("managers", b"first", ttl).await.unwrap();
        let mut dying = EtcdStore::open(etcd.clone(), &first).await.unwrap();
        let batch = Batch {
            jobs: vec![JobRecord {
                job_id: "logged".into(),
                submitter: "client".into(),
                ..JobRecord::default()
            }],
            tasks: (0..250)
                .map(|position| TaskRecord {
                    position,
                    handler: domain_proto::task::TaskHandler {
                        job_id: "logged".into(),
                        ..Default::default()
                    },
                    ..TaskRecord::default()
                })
                .collect(),
            ..Batch::default()
        };
        let ops = dying.ops(&batch);
        assert!(
            groups(&ops).unwrap().len() > 1,
            "the batch must need the log"
        );
        // The leader dies between committing to the log and applying.
        dying.log(&ops).await.unwrap();
        first.resign().await.unwrap();

        let second = etcd.campaign("managers", b"second", ttl).await.unwrap();
        let store = EtcdStore::open(etcd.clone(), &second).await.unwrap();
        let (log, _) = etcd.scan(&etcd.key(b"wal/")).await.unwrap();
        assert!(log.is_empty(), "the entry is applied and forgotten");
        let snapshot = tokio::task::spawn_blocking(move || store.load())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(snapshot.jobs, batch.jobs);
        assert_eq!(snapshot.tasks, batch.tasks);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn records_larger_than_a_request_are_kept_in_parts_and_go_with_their_job() {
        let server = LocalEtcd::start().await.unwrap();
        let etcd = Etcd::connect(&server.config("/parts/")).unwrap();
        let leadership = etcd
            .campaign("managers", b"only", Duration::from_secs(2))
            .await
            .unwrap();
        let mut store = EtcdStore::open(etcd.clone(), &leadership).await.unwrap();
        // A job of many tasks: its record holds the whole request, several requests' worth.
        let request = domain_proto::task::JobRequest {
            name: "big".into(),
            tasks: (0..20_000)
                .map(|i| domain_proto::task::TaskRequest {
                    name: format!("task-{i:06}-{}", "x".repeat(100)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let job = JobRecord {
            job_id: "big".into(),
            request,
            submitter: "client".into(),
            ..JobRecord::default()
        };
        // A task whose data is just past one part.
        let task = TaskRecord {
            position: 0,
            handler: domain_proto::task::TaskHandler {
                job_id: "big".into(),
                ..Default::default()
            },
            last_receiver: Some("r".repeat(MAX_PART)),
            ..TaskRecord::default()
        };
        assert!(job.encoded_len() > 2 * MAX_TXN_BYTES);
        let batch = Batch {
            jobs: vec![job],
            tasks: vec![task],
            ..Batch::default()
        };
        let expected = batch.clone();
        let snapshot = tokio::task::spawn_blocking(move || {
            store.commit(batch).unwrap();
            let snapshot = store.load().unwrap();
            store
                .commit(Batch {
                    removed_jobs: vec!["big".into()],
                    ..Batch::default()
                })
                .unwrap();
            snapshot
        })
        .await
        .unwrap();
        assert_eq!(snapshot.jobs, expected.jobs);
        assert_eq!(snapshot.tasks, expected.tasks);
        let (left, _) = etcd.scan(&etcd.key(b"")).await.unwrap();
        let left: Vec<String> = left
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .filter(|key| !key.contains("/managers/"))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    fn op(size: usize) -> LoggedOp {
        LoggedOp {
            key: b"k".to_vec(),
            value: Some(vec![0; size]),
            whole_prefix: false,
        }
    }

    #[test]
    fn operations_are_cut_at_the_count_and_the_bytes_etcd_takes() {
        let many: Vec<LoggedOp> = (0..250).map(|_| op(10)).collect();
        let sizes: Vec<usize> = groups(&many).unwrap().iter().map(|g| g.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let big: Vec<LoggedOp> = (0..5).map(|_| op(400 * 1024)).collect();
        let sizes: Vec<usize> = groups(&big).unwrap().iter().map(|g| g.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(groups(&[]).unwrap().is_empty());
        assert!(groups(&[op(MAX_TXN_BYTES)]).is_err());
    }
}
