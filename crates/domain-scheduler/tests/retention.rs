//! Bounded state: finished jobs are kept for `finished_ttl` and `max_finished_jobs` at most
//! (never less than `FINISHED_GRACE`), then removed from memory and from the redb file; running
//! jobs are never touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use domain_proto::task::{JobRequest, Status, Task};
use domain_scheduler::{
    FINISHED_GRACE, JobStatus, RedbStore, Scheduler, SchedulerConfig, SchedulerStore,
};

const HOUR: u64 = 3600 * 1000;
const GRACE: u64 = FINISHED_GRACE.as_millis() as u64;

fn open(dir: &Path, config: SchedulerConfig, now: u64) -> Scheduler {
    let store = RedbStore::open(dir.join("scheduler.redb")).unwrap();
    Scheduler::open(config, Box::new(store), issuer(dir), now).unwrap()
}

/// The job ids the redb file holds, and the job ids of the task records it holds.
fn stored(dir: &Path) -> (Vec<String>, Vec<String>) {
    let snapshot = RedbStore::open(dir.join("scheduler.redb"))
        .unwrap()
        .load()
        .unwrap();
    let mut jobs: Vec<String> = snapshot.jobs.into_iter().map(|j| j.job_id).collect();
    let mut tasks: Vec<String> = snapshot
        .tasks
        .into_iter()
        .map(|t| t.handler.job_id)
        .collect();
    jobs.sort();
    tasks.sort();
    tasks.dedup();
    (jobs, tasks)
}

fn retention(ttl: Duration, max_finished_jobs: usize) -> SchedulerConfig {
    SchedulerConfig {
        finished_ttl: ttl,
        max_finished_jobs,
        // Liveness is not what these tests are about: the node stays registered for days.
        node_timeout: Duration::from_secs(30 * 24 * 3600),
        ..config()
    }
}

/// A one-task job whose task runs for up to a week.
fn one_task(nonce: &str) -> JobRequest {
    let mut t = task("t", STORE, &[]);
    t.timeout = "168h".into();
    JobRequest {
        nonce: nonce.into(),
        ..job(nonce, vec![t])
    }
}

/// Submits a one-task job at `now` and returns its id and its assigned task.
fn submit(s: &mut Scheduler, nonce: &str, now: u64) -> (String, Task) {
    let id = s.submit(one_task(nonce), CLIENT, now).unwrap();
    let task = s.job(&id).unwrap().tasks.remove(0);
    assert!(task.receiver.is_some(), "the task was assigned");
    (id, task)
}

fn done(s: &mut Scheduler, task: &Task, now: u64) {
    s.report(
        &update(task, Status::Done),
        task.receiver.as_deref().unwrap(),
        now,
    )
    .unwrap();
}

#[test]
fn a_job_finished_longer_ago_than_the_retention_is_removed_from_memory_and_store_and_a_running_job_as_old_is_not()
 {
    let dir = tempfile::tempdir().unwrap();
    let config = retention(Duration::from_secs(3600), 10_000);
    let mut s = open(dir.path(), config.clone(), 0);
    s.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let (finished, t) = submit(&mut s, "finished", 0);
    let (running, r) = submit(&mut s, "running", 0);
    s.report(&update(&r, Status::Started), "n1", 5).unwrap();
    done(&mut s, &t, 10);

    s.tick(10 + HOUR - 1).unwrap();
    assert_eq!(s.job_status(&finished), Some(JobStatus::Done));
    s.tick(10 + HOUR).unwrap();
    assert!(s.job(&finished).is_none());
    assert!(s.task(&finished, "t").is_none());
    assert_eq!(s.job_ids(), std::slice::from_ref(&running));
    assert_eq!(status(&s, &running, "t"), Status::Started);
    assert_eq!(s.node_load("n1"), Some(1));
    drop(s);

    assert_eq!(
        stored(dir.path()),
        (vec![running.clone()], vec![running.clone()])
    );
    let mut s = open(dir.path(), config, 10 + HOUR);
    assert!(s.job(&finished).is_none());
    assert_eq!(status(&s, &running, "t"), Status::Started);
    // The running job still ends normally, and is then kept like any finished job.
    done(&mut s, &r, 20 + HOUR);
    assert_eq!(s.job_status(&running), Some(JobStatus::Done));
}

#[test]
fn over_the_count_limit_the_oldest_finished_jobs_go_first_but_none_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), retention(Duration::from_secs(24 * 3600), 2), 0);
    s.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let mut ids = Vec::new();
    for (i, at) in [1000, 2000, 3000, 4000].into_iter().enumerate() {
        let (id, t) = submit(&mut s, &format!("job-{i}"), at);
        done(&mut s, &t, at);
        ids.push(id);
    }
    // Running jobs do not count against the limit, and are never removed.
    let (running, _) = submit(&mut s, "running", 5000);

    // Four finished, two allowed, but all of them finished less than the grace period ago.
    s.tick(5000).unwrap();
    assert_eq!(s.finished_job_count(), 4);
    // The oldest is past the grace period; the next one not yet.
    s.tick(1000 + GRACE + 500).unwrap();
    assert!(s.job(&ids[0]).is_none());
    assert!(s.job(&ids[1]).is_some());
    s.tick(2000 + GRACE).unwrap();
    assert!(s.job(&ids[1]).is_none());
    assert_eq!(s.finished_job_count(), 2);
    let mut kept = vec![ids[2].clone(), ids[3].clone(), running.clone()];
    kept.sort();
    let mut in_memory = s.job_ids();
    in_memory.sort();
    assert_eq!(in_memory, kept);
    // Within the limits now: later ticks keep the rest.
    s.tick(10 * HOUR).unwrap();
    assert_eq!(s.finished_job_count(), 2);
    drop(s);
    assert_eq!(stored(dir.path()), (kept.clone(), kept));
}

#[test]
fn a_restart_removes_what_came_due_while_the_manager_was_down() {
    let dir = tempfile::tempdir().unwrap();
    let config = retention(Duration::from_secs(3600), 10_000);
    let (old, recent) = {
        let mut s = open(dir.path(), config.clone(), 0);
        s.join(node("n1", &[(STORE, -1)]), 0).unwrap();
        let (old, t) = submit(&mut s, "old", 0);
        done(&mut s, &t, 10);
        let (recent, t) = submit(&mut s, "recent", 0);
        done(&mut s, &t, 1000);
        (old, recent)
    };

    // The finish time comes back from the stored tasks: one millisecond early, both stay.
    let s = open(dir.path(), config.clone(), 10 + HOUR - 1);
    assert!(s.job(&old).is_some());
    drop(s);
    let s = open(dir.path(), config.clone(), 10 + HOUR);
    assert!(s.job(&old).is_none());
    assert_eq!(s.job_status(&recent), Some(JobStatus::Done));
    drop(s);
    assert_eq!(
        stored(dir.path()),
        (vec![recent.clone()], vec![recent.clone()])
    );

    // A lower count limit applies at start too (the job is past the grace period).
    let s = open(
        dir.path(),
        retention(Duration::from_secs(3600), 0),
        1000 + GRACE,
    );
    assert!(s.job(&recent).is_none());
    drop(s);
    assert_eq!(stored(dir.path()), (vec![], vec![]));
}

#[test]
fn a_monitor_starts_with_every_running_job_and_only_the_latest_finished_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), retention(Duration::from_secs(3600), 10_000), 0);
    s.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    // Submitted in this order; finished in another.
    let (a, ta) = submit(&mut s, "a", 1);
    let (b, _) = submit(&mut s, "b", 2);
    let (c, tc) = submit(&mut s, "c", 3);
    let (d, td) = submit(&mut s, "d", 4);
    let (e, _) = submit(&mut s, "e", 5);
    done(&mut s, &tc, 10);
    done(&mut s, &ta, 11);
    done(&mut s, &td, 12);

    // The two finished last (a, d) and both running (b, e), oldest submitted first.
    assert_eq!(
        s.recent_job_ids(2),
        [a.clone(), b.clone(), d.clone(), e.clone()]
    );
    assert_eq!(s.recent_job_ids(0), [b.clone(), e.clone()]);
    assert_eq!(
        s.recent_job_ids(100),
        [a.clone(), b.clone(), c.clone(), d.clone(), e.clone()]
    );
    // A job removed by hand leaves the tail too.
    s.remove_job(&a).unwrap();
    assert_eq!(s.finished_job_count(), 2);
    assert_eq!(s.recent_job_ids(2), [b, c, d, e]);
}

#[test]
fn a_failed_job_is_kept_and_removed_like_a_done_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), retention(Duration::from_secs(3600), 10_000), 0);
    s.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let mut request = one_task("failing");
    request.tasks.push(task("after", STORE, &["t"]));
    let id = s.submit(request, CLIENT, 0).unwrap();
    let t = s.job(&id).unwrap().tasks.remove(0);
    s.report(&update(&t, Status::Failed), MANAGER, 100).unwrap();
    // Retried, then failed for good after the last retry.
    for now in 101..=103 {
        let t = s.job(&id).unwrap().tasks.remove(0);
        s.report(&update(&t, Status::Failed), MANAGER, now).unwrap();
    }
    assert_eq!(s.job_status(&id), Some(JobStatus::Failed));
    s.tick(103 + HOUR - 1).unwrap();
    assert!(s.job(&id).is_some());
    s.tick(103 + HOUR).unwrap();
    assert!(s.job(&id).is_none());
    assert_eq!(s.node_load("n1"), Some(0));
}
