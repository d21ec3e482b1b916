//! A manager restart in the middle of a job: the scheduler is dropped and reopened on the same
//! redb file, and resumes every task where it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use domain_proto::task::{Status, Task, TaskRequest};
use domain_scheduler::{
    Batch, Event, JobStatus, RedbStore, Scheduler, SchedulerConfig, SchedulerError, SchedulerStore,
    Snapshot, StoreError,
};

fn open(dir: &Path, config: SchedulerConfig, now: u64) -> Scheduler {
    let store = RedbStore::open(dir.join("scheduler.redb")).unwrap();
    Scheduler::open(config, Box::new(store), issuer(dir), now).unwrap()
}

/// Counts assignments per task name and returns the assigned tasks.
fn assignments(events: Vec<Event>, counts: &mut HashMap<String, usize>) -> Vec<Task> {
    let assigned: Vec<Task> = events
        .iter()
        .filter_map(Event::task_for_submitter)
        .collect();
    for t in &assigned {
        *counts.entry(t.name.clone()).or_default() += 1;
    }
    assigned
}

fn report(s: &mut Scheduler, t: &Task, status: Status, now: u64) {
    s.report(&update(t, status), t.receiver.as_deref().unwrap(), now)
        .unwrap();
}

#[test]
fn a_restarted_scheduler_resumes_the_job_and_reruns_nothing_that_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut counts = HashMap::new();
    let request = job(
        "resume",
        vec![
            task("a", STORE, &[]),
            task("b", STORE, &["a"]),
            task("c", STORE, &["a"]),
            task("d", STORE, &["b", "c"]),
            task("e", LOAD, &[]),
        ],
    );

    let (id, b, c) = {
        let mut s = open(dir.path(), config(), 0);
        let mut events = s.subscribe();
        s.join(node("n1", &[(STORE, -1), (LOAD, -1)]), 0).unwrap();
        s.join(node("n2", &[(STORE, -1)]), 0).unwrap();
        let id = s.submit(request, CLIENT, 1).unwrap();
        let first = assignments(drain(&mut events), &mut counts);
        assert_eq!(names(&first), ["a", "e"]);
        report(&mut s, &first[0], Status::Started, 2);
        report(&mut s, &first[0], Status::Done, 3);
        report(&mut s, &first[1], Status::Done, 3);
        let second = assignments(drain(&mut events), &mut counts);
        assert_eq!(names(&second), ["b", "c"]);
        report(&mut s, &second[0], Status::Started, 4);
        (id, second[0].clone(), second[1].clone())
        // The scheduler drops here, as if the manager stopped.
    };

    let mut s = open(dir.path(), config(), 10_000);
    let mut events = s.subscribe();
    assert_eq!(s.job_ids(), std::slice::from_ref(&id));
    assert_eq!(status(&s, &id, "a"), Status::Done);
    assert_eq!(status(&s, &id, "e"), Status::Done);
    assert_eq!(status(&s, &id, "b"), Status::Started);
    assert_eq!(status(&s, &id, "c"), Status::Pending);
    assert_eq!(s.task(&id, "b").unwrap().task.receiver, b.receiver);
    assert_eq!(s.task(&id, "c").unwrap().task.receiver, c.receiver);
    assert_eq!(s.task(&id, "d").unwrap().task.receiver, None);
    assert_eq!(
        s.task(&id, "a").unwrap().task.receiver.as_deref(),
        Some("n1")
    );
    let d_needs = s.task(&id, "d").unwrap().dependencies;
    assert_eq!(
        d_needs.values().copied().collect::<Vec<_>>(),
        [false, false]
    );
    // Loads are rebuilt from the running tasks: b and c, one on each node.
    assert_eq!(s.node_load("n1").unwrap() + s.node_load("n2").unwrap(), 2);
    assert!(
        drain(&mut events).is_empty(),
        "reopening assigns nothing again"
    );

    // The finished task stays finished.
    let a = Task {
        status: Status::Done as i32,
        ..s.job(&id).unwrap().tasks[0].clone()
    };
    s.report(&a, "n1", 10_001).unwrap();
    let restart = s.report(&update(&a, Status::Started), "n1", 10_002);
    assert!(matches!(
        restart,
        Err(SchedulerError::InvalidTransition {
            from: Status::Done,
            ..
        })
    ));

    report(&mut s, &b, Status::Done, 10_003);
    report(&mut s, &c, Status::Done, 10_004);
    let last = assignments(drain(&mut events), &mut counts);
    assert_eq!(names(&last), ["d"]);
    report(&mut s, &last[0], Status::Done, 10_005);
    assert_eq!(s.job_status(&id), Some(JobStatus::Done));
    let expected: HashMap<String, usize> = ["a", "b", "c", "d", "e"]
        .into_iter()
        .map(|n| (n.to_owned(), 1))
        .collect();
    assert_eq!(
        counts, expected,
        "every task was assigned exactly once across the restart"
    );
}

#[test]
fn restored_nodes_get_one_node_timeout_to_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = SchedulerConfig {
        node_timeout: Duration::from_secs(30),
        ..config()
    };
    let id = {
        let mut s = open(dir.path(), config.clone(), 0);
        s.join(node("steady", &[(STORE, -1)]), 0).unwrap();
        s.join(node("gone", &[(STORE, -1)]), 0).unwrap();
        // Deadlines are absolute: these outlive the downtime, so only liveness is at play.
        let tasks = ["t0", "t1"].map(|name| TaskRequest {
            timeout: "2h".into(),
            ..task(name, STORE, &[])
        });
        s.submit(job("j", tasks.to_vec()), CLIENT, 0).unwrap()
    };
    // The manager was down for an hour: far longer than the node timeout.
    let start = 3_600_000;
    let mut s = open(dir.path(), config, start);
    s.tick(start).unwrap();
    assert_eq!(
        s.nodes().len(),
        2,
        "no node is dropped for the manager's own downtime"
    );
    s.heartbeat("steady", start + 20_000).unwrap();
    s.tick(start + 30_000).unwrap();
    let nodes: Vec<String> = s.nodes().into_iter().map(|n| n.id).collect();
    assert_eq!(nodes, ["steady"]);
    let job = s.job(&id).unwrap();
    assert!(
        job.tasks
            .iter()
            .all(|t| t.receiver.as_deref() == Some("steady"))
    );
    let retries: Vec<u32> = ["t0", "t1"]
        .iter()
        .map(|t| s.task(&id, t).unwrap().retries)
        .collect();
    assert_eq!(
        retries,
        [1, 0],
        "only the task of the lost node was retried"
    );
}

#[test]
fn a_reopened_scheduler_keeps_waiting_and_blocked_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let mut s = open(dir.path(), config(), 0);
        s.submit(
            job(
                "j",
                vec![task("first", STORE, &[]), task("then", STORE, &["first"])],
            ),
            CLIENT,
            0,
        )
        .unwrap()
    };
    let mut s = open(dir.path(), config(), 5);
    let mut events = s.subscribe();
    assert_eq!(status(&s, &id, "first"), Status::WaitingForResource);
    assert_eq!(status(&s, &id, "then"), Status::Pending);
    s.join(node("n", &[(STORE, -1)]), 6).unwrap();
    let assigned: Vec<Task> = drain(&mut events)
        .iter()
        .filter_map(Event::task_for_submitter)
        .collect();
    assert_eq!(names(&assigned), ["first"]);
}

/// The real redb store, with a disk that fails on the n-th commit (the fault cannot be caused
/// from outside on a healthy file system).
struct FailingDisk {
    inner: RedbStore,
    commits_left: usize,
}

impl SchedulerStore for FailingDisk {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        if self.commits_left == 0 {
            return Err(redb::Error::from(std::io::Error::other("no space left on device")).into());
        }
        self.commits_left -= 1;
        self.inner.commit(batch)
    }
}

#[test]
fn a_failed_commit_announces_nothing_and_poisons_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler.redb");
    let id = {
        let inner = RedbStore::open(&path).unwrap();
        // Commits for the open, the join and the submit succeed; the report's fails.
        let store = FailingDisk {
            inner,
            commits_left: 3,
        };
        let mut s = Scheduler::open(config(), Box::new(store), issuer(dir.path()), 0).unwrap();
        let mut events = s.subscribe();
        s.join(node("n1", &[(STORE, -1)]), 0).unwrap();
        let id = s
            .submit(job("j", vec![task("t", STORE, &[])]), CLIENT, 1)
            .unwrap();
        let t = drain(&mut events)
            .iter()
            .find_map(Event::task_for_submitter)
            .unwrap();
        let err = s.report(&update(&t, Status::Done), "n1", 2).unwrap_err();
        assert!(matches!(err, SchedulerError::Store(_)), "{err}");
        assert!(
            drain(&mut events).is_empty(),
            "an unstored change is never announced"
        );
        assert!(matches!(s.tick(3), Err(SchedulerError::Poisoned)));
        assert!(matches!(
            s.heartbeat("n1", 3),
            Err(SchedulerError::Poisoned)
        ));
        id
    };
    let s = open(dir.path(), config(), 10);
    assert_eq!(
        status(&s, &id, "t"),
        Status::Pending,
        "the store holds the last committed state"
    );
    assert_eq!(s.node_load("n1"), Some(1));
}

#[test]
fn the_scheduler_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Scheduler>();
}
