//! The etcd client, the election and the scheduler's store against a real etcd
//! (Debian's `etcd-server`, started by [`LocalEtcd`] on loopback); every store behaviour
//! runs on the embedded redb store too, the reference.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use domain_etcd::api::etcdserverpb::{PutRequest, RequestOp, TxnRequest, request_op};
use domain_etcd::{Etcd, EtcdStore, LocalEtcd, SCAN_PAGE};
use domain_proto::discovery::Node;
use domain_proto::task::{JobRequest, TaskHandler};
use domain_scheduler::{
    Batch, HolderRecord, JobRecord, NodeRecord, RedbStore, SchedulerStore, Snapshot, StoreError,
    TaskRecord,
};

/// The lease time of the test candidates: etcd's shortest is about 1.5 s.
const TTL: Duration = Duration::from_secs(2);

async fn etcd() -> (LocalEtcd, Etcd) {
    let server = LocalEtcd::start().await.unwrap();
    let client = Etcd::connect(&server.config("/test/")).unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scan_reads_every_key_of_a_prefix_in_order_across_pages() {
    let (_server, etcd) = etcd().await;
    let count = usize::try_from(SCAN_PAGE).unwrap() * 2 + 7;
    let keys: Vec<Vec<u8>> = (0..count)
        .map(|i| etcd.key(format!("many/{i:05}").as_bytes()))
        .collect();
    for group in keys.chunks(100) {
        let success = group
            .iter()
            .map(|key| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: key.clone(),
                    ..PutRequest::default()
                })),
            })
            .collect();
        etcd.txn(TxnRequest {
            success,
            ..TxnRequest::default()
        })
        .await
        .unwrap();
    }
    etcd.put(&etcd.key(b"other"), b"x").await.unwrap();
    let (read, revision) = etcd.scan(&etcd.key(b"many/")).await.unwrap();
    assert!(revision > 0);
    let read: Vec<Vec<u8>> = read.into_iter().map(|kv| kv.key).collect();
    assert_eq!(read, keys);
    assert_eq!(
        etcd.get(&etcd.key(b"other")).await.unwrap().unwrap().value,
        b"x"
    );
    assert!(etcd.get(&etcd.key(b"absent")).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_candidate_leads_and_the_next_leads_once_it_resigns() {
    let (_server, etcd) = etcd().await;
    assert_eq!(etcd.leader("managers").await.unwrap(), None);
    let first = etcd.campaign("managers", b"first", TTL).await.unwrap();
    assert_eq!(
        etcd.leader("managers").await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
    let second = tokio::spawn({
        let etcd = etcd.clone();
        async move { etcd.campaign("managers", b"second", TTL).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "two leaders at once");
    first.resign().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second candidate is elected once the first resigns")
        .unwrap()
        .unwrap();
    assert_eq!(
        etcd.leader("managers").await.unwrap().as_deref(),
        Some(&b"second"[..])
    );
    assert!(!second.is_lost());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leadership_outlives_many_times_its_lease_while_refreshed() {
    let (_server, etcd) = etcd().await;
    let leader = etcd.campaign("managers", b"first", TTL).await.unwrap();
    let mut store = EtcdStore::open(etcd.clone(), &leader).await.unwrap();
    tokio::time::sleep(TTL * 3).await;
    assert!(!leader.is_lost());
    tokio::task::spawn_blocking(move || store.commit(job_batch("still-leading", 1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        etcd.leader("managers").await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_stops_refreshing_its_lease_is_followed_after_its_time_to_live() {
    let (_server, etcd) = etcd().await;
    let first = etcd.campaign("managers", b"first", TTL).await.unwrap();
    let started = tokio::time::Instant::now();
    // Dropping stops the refreshes without revoking the lease: as a crash would.
    drop(first);
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        etcd.campaign("managers", b"second", TTL),
    )
    .await
    .expect("elected once the dead leader's lease ran out")
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!second.is_lost());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposed_leader_writes_nothing() {
    let (_server, etcd) = etcd().await;
    let first = etcd.campaign("managers", b"first", TTL).await.unwrap();
    let mut deposed = EtcdStore::open(etcd.clone(), &first).await.unwrap();
    // Its lease ends (revoked here; expiry does the same) and another leads.
    etcd.revoke(first.lease()).await.unwrap();
    let second = etcd.campaign("managers", b"second", TTL).await.unwrap();
    let mut leader = EtcdStore::open(etcd.clone(), &second).await.unwrap();
    let (deposed_result, leader_result) = tokio::task::spawn_blocking(move || {
        (deposed.commit(job_batch("from-deposed", 1)), {
            leader.commit(job_batch("from-leader", 1))
        })
    })
    .await
    .unwrap();
    assert!(
        matches!(deposed_result, Err(StoreError::NotLeader)),
        "{deposed_result:?}"
    );
    leader_result.unwrap();
    let snapshot = EtcdStore::open(etcd.clone(), &second).await.unwrap();
    let snapshot = tokio::task::spawn_blocking(move || snapshot.load())
        .await
        .unwrap()
        .unwrap();
    let jobs: Vec<&str> = snapshot.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(jobs, ["from-leader"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_never_committed_is_dropped_by_the_next_leader() {
    let (_server, etcd) = etcd().await;
    let leadership = etcd.campaign("managers", b"first", TTL).await.unwrap();
    // A chunk of a logged batch without its header: its leader died before committing.
    let chunk = etcd.key(b"wal/00000000000000010000000000000000/00000000");
    etcd.put(&chunk, b"half a batch").await.unwrap();
    let store = EtcdStore::open(etcd.clone(), &leadership).await.unwrap();
    assert!(etcd.get(&chunk).await.unwrap().is_none());
    let snapshot = tokio::task::spawn_blocking(move || store.load())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snapshot, Snapshot::default());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_survives_an_etcd_restart() {
    let (mut server, etcd) = etcd().await;
    let leadership = etcd.campaign("managers", b"first", TTL).await.unwrap();
    let mut store = EtcdStore::open(etcd.clone(), &leadership).await.unwrap();
    store = tokio::task::spawn_blocking(move || {
        store.commit(job_batch("before", 3)).unwrap();
        store
    })
    .await
    .unwrap();
    server.restart().await.unwrap();
    let snapshot = tokio::task::spawn_blocking(move || {
        // The first calls after the restart may find the channel reconnecting.
        store.commit(job_batch("after", 2)).unwrap();
        store.load().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(snapshot.jobs.len(), 2);
    assert_eq!(snapshot.tasks.len(), 5);
}

// The behaviour every SchedulerStore shares, run on etcd and on redb.

/// Runs `check` on a fresh etcd store and on a fresh in-memory redb store.
async fn on_every_store(check: fn(&mut dyn SchedulerStore)) {
    let mut redb = RedbStore::in_memory().unwrap();
    check(&mut redb);
    let (_server, etcd) = etcd().await;
    let leadership = etcd.campaign("managers", b"me", TTL).await.unwrap();
    let mut store = EtcdStore::open(etcd.clone(), &leadership).await.unwrap();
    tokio::task::spawn_blocking(move || check(&mut store))
        .await
        .unwrap();
}

fn job(id: &str) -> JobRecord {
    JobRecord {
        job_id: id.to_owned(),
        request: JobRequest::default(),
        submitter: "client".to_owned(),
        created_at: 1,
    }
}

fn task(job: &str, position: u32, mark: &str) -> TaskRecord {
    TaskRecord {
        position,
        handler: TaskHandler {
            job_id: job.to_owned(),
            err_msg: mark.to_owned(),
            ..TaskHandler::default()
        },
        deadline: None,
        last_receiver: None,
    }
}

fn job_batch(id: &str, tasks: u32) -> Batch {
    Batch {
        jobs: vec![job(id)],
        tasks: (0..tasks).map(|p| task(id, p, "node")).collect(),
        ..Batch::default()
    }
}

fn node(id: &str) -> NodeRecord {
    NodeRecord {
        node: Node {
            id: id.to_owned(),
            ..Node::default()
        },
    }
}

fn holder(domain: &str, node: &str, items: u64) -> HolderRecord {
    HolderRecord {
        domain_id: domain.to_owned(),
        node_id: node.to_owned(),
        items,
        bytes: items * 10,
        updated_at: 5,
    }
}

fn sorted(mut snapshot: Snapshot) -> Snapshot {
    snapshot.jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    snapshot
        .tasks
        .sort_by(|a, b| (&a.handler.job_id, a.position).cmp(&(&b.handler.job_id, b.position)));
    snapshot.nodes.sort_by(|a, b| a.node.id.cmp(&b.node.id));
    snapshot
        .holders
        .sort_by(|a, b| (&a.domain_id, &a.node_id).cmp(&(&b.domain_id, &b.node_id)));
    snapshot
}

#[tokio::test(flavor = "multi_thread")]
async fn every_store_reads_back_what_it_committed_with_later_writes_winning() {
    on_every_store(|store| {
        assert_eq!(store.load().unwrap(), Snapshot::default());
        store.commit(job_batch("a", 2)).unwrap();
        store
            .commit(Batch {
                // The same task twice in one batch: the later wins.
                tasks: vec![task("a", 1, "first"), task("a", 1, "second")],
                nodes: vec![node("n1"), node("n2")],
                holders: vec![holder("d", "n1", 3), holder("", "n2", 0)],
                ..Batch::default()
            })
            .unwrap();
        store.commit(Batch::default()).unwrap();
        let snapshot = sorted(store.load().unwrap());
        assert_eq!(snapshot.jobs, [job("a")]);
        assert_eq!(
            snapshot.tasks,
            [task("a", 0, "node"), task("a", 1, "second")]
        );
        assert_eq!(snapshot.nodes, [node("n1"), node("n2")]);
        assert_eq!(
            snapshot.holders,
            [holder("", "n2", 0), holder("d", "n1", 3)]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_store_removes_a_job_with_its_tasks_even_those_written_in_the_same_batch() {
    on_every_store(|store| {
        store.commit(job_batch("gone", 3)).unwrap();
        store.commit(job_batch("kept", 1)).unwrap();
        store
            .commit(Batch {
                tasks: vec![task("gone", 7, "late")],
                nodes: vec![node("n1")],
                removed_nodes: vec!["n1".to_owned()],
                removed_jobs: vec!["gone".to_owned()],
                holders: vec![holder("d", "n1", 1)],
                removed_holders: vec![("d".to_owned(), "n1".to_owned())],
                ..Batch::default()
            })
            .unwrap();
        let snapshot = sorted(store.load().unwrap());
        assert_eq!(snapshot.jobs, [job("kept")]);
        assert_eq!(snapshot.tasks, [task("kept", 0, "node")]);
        assert!(snapshot.nodes.is_empty());
        assert!(snapshot.holders.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_store_commits_a_batch_larger_than_one_etcd_transaction_whole() {
    on_every_store(|store| {
        // 5 000 tasks of ~1 KiB: fifty transactions' worth of operations, 5 MiB of records.
        let mut batch = job_batch("big", 5_000);
        for task in &mut batch.tasks {
            task.handler.err_msg = "e".repeat(1000);
        }
        store.commit(batch.clone()).unwrap();
        let snapshot = sorted(store.load().unwrap());
        assert_eq!(snapshot.tasks.len(), 5_000);
        assert_eq!(
            snapshot.tasks,
            sorted(Snapshot {
                tasks: batch.tasks,
                ..Snapshot::default()
            })
            .tasks
        );
        store
            .commit(Batch {
                removed_jobs: vec!["big".to_owned()],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(store.load().unwrap(), Snapshot::default());
    })
    .await;
}
