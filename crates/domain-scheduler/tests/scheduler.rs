//! The scheduler's rules, on a controlled clock: validation, DAG order, assignment, capacity,
//! recruitment policies, retries, timeouts, node loss, reporters, tokens and events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::*;
use domain_proto::task::{Code, Status, TaskRequest, resource_recruitment::RecruitmentPolicy};
use domain_scheduler::{
    Event, JobRejected, JobStatus, SchedulerConfig, SchedulerError, TimeoutError, submit_response,
};
use tokio::sync::broadcast::error::TryRecvError;

fn rejection(request: domain_proto::task::JobRequest) -> JobRejected {
    let mut h = Harness::new();
    match h.scheduler.submit(request, CLIENT, 0) {
        Err(SchedulerError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_job_without_tasks_is_refused() {
    assert_eq!(
        rejection(job("empty", vec![])),
        JobRejected::NoTasks {
            job: "empty".into()
        }
    );
}

#[test]
fn a_duplicate_task_name_is_refused_naming_it() {
    let request = job("j", vec![task("a", STORE, &[]), task("a", STORE, &[])]);
    let rejected = rejection(request);
    assert_eq!(rejected, JobRejected::DuplicateTask { task: "a".into() });
    assert!(rejected.to_string().contains("\"a\""));
}

#[test]
fn an_unknown_dependency_is_refused_naming_both_tasks() {
    let rejected = rejection(job("j", vec![task("a", STORE, &["ghost"])]));
    assert_eq!(
        rejected,
        JobRejected::UnknownDependency {
            task: "a".into(),
            needs: "ghost".into()
        }
    );
}

#[test]
fn a_cycle_is_refused_with_its_path() {
    let request = job(
        "j",
        vec![
            task("root", STORE, &[]),
            task("a", STORE, &["root", "c"]),
            task("b", STORE, &["a"]),
            task("c", STORE, &["b"]),
        ],
    );
    let JobRejected::Cycle { path } = rejection(request) else {
        panic!("expected a cycle")
    };
    assert_eq!(path.first(), path.last());
    let mut members: Vec<&str> = path[1..].iter().map(String::as_str).collect();
    members.sort_unstable();
    assert_eq!(members, ["a", "b", "c"]);
}

#[test]
fn a_task_needing_itself_is_a_cycle() {
    let rejected = rejection(job("j", vec![task("a", STORE, &["a"])]));
    assert_eq!(
        rejected,
        JobRejected::Cycle {
            path: vec!["a".into(), "a".into()]
        }
    );
}

#[test]
fn a_malformed_timeout_is_refused_naming_the_task() {
    let mut bad = task("slow", STORE, &[]);
    bad.timeout = "5 fortnights".into();
    let rejected = rejection(job("j", vec![task("ok", STORE, &[]), bad]));
    assert_eq!(
        rejected,
        JobRejected::BadTimeout {
            task: "slow".into(),
            source: TimeoutError::UnknownUnit {
                input: "5 fortnights".into(),
                unit: "fortnights".into()
            },
        }
    );
    assert!(rejected.to_string().starts_with("task \"slow\""));
}

#[test]
fn other_malformed_fields_are_refused_naming_the_task() {
    let mut policy = task("p", STORE, &[]);
    policy.resource_recruitment.recruitment_policy = 42;
    assert_eq!(
        rejection(job("j", vec![policy])),
        JobRejected::UnknownPolicy {
            task: "p".into(),
            value: 42
        }
    );

    let mut cpu = task("c", STORE, &[]);
    cpu.capability_filters.min_cpu = Some(-1);
    assert_eq!(
        rejection(job("j", vec![cpu])),
        JobRejected::NegativeMinimum {
            task: "c".into(),
            resource: "min_cpu",
            value: -1
        }
    );

    let mut sender = task("s", STORE, &[]);
    sender.sender.clear();
    assert_eq!(
        rejection(job("j", vec![sender])),
        JobRejected::NoSender { task: "s".into() }
    );

    assert_eq!(
        rejection(job("j", vec![task("e", "", &[])])),
        JobRejected::NoEndpoint { task: "e".into() }
    );
    assert_eq!(
        rejection(job("j", vec![task("", STORE, &[])])),
        JobRejected::EmptyTaskName { index: 0 }
    );

    let mut no_domain = job("j", vec![task("a", STORE, &[])]);
    no_domain.domain_id.clear();
    assert_eq!(
        rejection(no_domain),
        JobRejected::NoDomain { job: "j".into() }
    );
}

#[test]
fn a_job_larger_than_the_limit_is_refused() {
    let mut h = Harness::with_config(SchedulerConfig {
        max_tasks_per_job: 2,
        ..config()
    });
    let tasks = (0..3).map(|i| task(&format!("t{i}"), STORE, &[])).collect();
    let err = h
        .scheduler
        .submit(job("big", tasks), CLIENT, 0)
        .unwrap_err();
    assert!(matches!(
        err,
        SchedulerError::Rejected(JobRejected::TooManyTasks {
            count: 3,
            max: 2,
            ..
        })
    ));
}

#[test]
fn the_same_request_twice_is_refused_and_a_new_nonce_makes_a_new_job() {
    let mut h = Harness::new();
    let request = job("j", vec![task("a", STORE, &[])]);
    let first = h.scheduler.submit(request.clone(), CLIENT, 0).unwrap();
    assert_eq!(first, domain_scheduler::job_id(&request));
    assert_eq!(first.len(), 64);
    let again = h.scheduler.submit(request.clone(), CLIENT, 0);
    assert!(matches!(
        again,
        Err(SchedulerError::Rejected(
            JobRejected::AlreadySubmitted { .. }
        ))
    ));
    let second = h.scheduler.submit(
        domain_proto::task::JobRequest {
            nonce: "other".into(),
            ..request
        },
        CLIENT,
        0,
    );
    assert_ne!(second.unwrap(), first);
}

#[test]
fn submit_response_is_accepted_with_the_id_or_bad_request_with_the_reason() {
    let mut h = Harness::new();
    let ok = h
        .scheduler
        .submit(job("j", vec![task("a", STORE, &[])]), CLIENT, 0);
    let response = submit_response(&ok);
    assert_eq!(response.code(), Code::Accepted);
    assert_eq!(response.job_id, ok.unwrap());

    let bad = h
        .scheduler
        .submit(job("j", vec![task("a", STORE, &["zz"])]), CLIENT, 0);
    let response = submit_response(&bad);
    assert_eq!(response.code(), Code::BadRequest);
    assert_eq!(response.err_msg, "task \"a\" needs unknown task \"zz\"");
}

#[test]
fn a_chain_runs_one_task_at_a_time_in_order() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let id = h
        .scheduler
        .submit(
            job(
                "chain",
                vec![
                    task("c", STORE, &["b"]),
                    task("b", STORE, &["a"]),
                    task("a", STORE, &[]),
                ],
            ),
            CLIENT,
            1,
        )
        .unwrap();
    for (step, expected) in ["a", "b", "c"].into_iter().enumerate() {
        let assigned = h.assigned();
        assert_eq!(names(&assigned), [expected], "step {step}");
        assert_eq!(h.scheduler.job_status(&id), Some(JobStatus::Running));
        h.finish(&assigned[0], 10 + step as u64);
    }
    assert_eq!(h.scheduler.job_status(&id), Some(JobStatus::Done));
    let events = h.drain();
    assert!(events.contains(&Event::JobFinished {
        job_id: id.clone(),
        status: JobStatus::Done
    }));
}

#[test]
fn a_diamond_joins_only_after_both_branches_are_done() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let id = h
        .scheduler
        .submit(
            job(
                "diamond",
                vec![
                    task("top", STORE, &[]),
                    task("left", STORE, &["top"]),
                    task("right", STORE, &["top"]),
                    task("bottom", STORE, &["left", "right"]),
                ],
            ),
            CLIENT,
            0,
        )
        .unwrap();
    let top = h.assigned();
    assert_eq!(names(&top), ["top"]);
    h.finish(&top[0], 1);
    let branches = h.assigned();
    assert_eq!(names(&branches), ["left", "right"]);
    h.finish(&branches[0], 2);
    assert!(h.assigned().is_empty(), "bottom must wait for right");
    assert_eq!(h.status(&id, "bottom"), Status::Pending);
    assert_eq!(h.scheduler.task(&id, "bottom").unwrap().task.receiver, None);
    let deps = h.scheduler.task(&id, "bottom").unwrap().dependencies;
    assert_eq!(
        deps.into_iter().collect::<Vec<_>>(),
        [("left".into(), true), ("right".into(), false)]
    );
    h.finish(&branches[1], 3);
    let bottom = h.assigned();
    assert_eq!(names(&bottom), ["bottom"]);
    h.finish(&bottom[0], 4);
    assert_eq!(h.scheduler.job_status(&id), Some(JobStatus::Done));
}

#[test]
fn a_fan_in_of_100_starts_the_sink_after_the_last_source() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let sources: Vec<String> = (0..100).map(|i| format!("source-{i:03}")).collect();
    let mut tasks: Vec<_> = sources.iter().map(|s| task(s, STORE, &[])).collect();
    let needs: Vec<&str> = sources.iter().map(String::as_str).collect();
    tasks.push(task("sink", STORE, &needs));
    let id = h.scheduler.submit(job("fan-in", tasks), CLIENT, 0).unwrap();
    let assigned = h.assigned();
    assert_eq!(assigned.len(), 100);
    for (i, t) in assigned.iter().enumerate() {
        assert!(h.assigned().is_empty(), "sink assigned after {i} sources");
        h.finish(t, 1 + i as u64);
    }
    let sink = h.assigned();
    assert_eq!(names(&sink), ["sink"]);
    h.finish(&sink[0], 200);
    assert_eq!(h.scheduler.job_status(&id), Some(JobStatus::Done));
}

#[test]
fn tasks_go_to_the_least_loaded_node_and_ties_to_the_smallest_id() {
    let mut h = Harness::new();
    for id in ["n3", "n1", "n2"] {
        h.scheduler.join(node(id, &[(STORE, -1)]), 0).unwrap();
    }
    let tasks = (0..5).map(|i| task(&format!("t{i}"), STORE, &[])).collect();
    h.scheduler.submit(job("spread", tasks), CLIENT, 0).unwrap();
    let receivers: Vec<String> = h
        .assigned()
        .into_iter()
        .map(|t| t.receiver.unwrap())
        .collect();
    assert_eq!(receivers, ["n1", "n2", "n3", "n1", "n2"]);
    assert_eq!(h.scheduler.node_load("n1"), Some(2));
    assert_eq!(h.scheduler.node_load("n3"), Some(1));
}

#[test]
fn copies_are_placed_on_distinct_nodes_with_the_endpoint_the_least_loaded_first() {
    let mut h = Harness::new();
    for id in ["n4", "n1", "n2", "n3"] {
        h.scheduler.join(node(id, &[(STORE, -1)]), 0).unwrap();
    }
    // Without the endpoint, or no longer offering it: never a place for a copy.
    h.scheduler.join(node("loader", &[(LOAD, -1)]), 0).unwrap();
    h.scheduler.join(node("retired", &[(STORE, 0)]), 0).unwrap();
    h.scheduler
        .submit(job("busy", vec![task("t", STORE, &[])]), CLIENT, 0)
        .unwrap();
    assert_eq!(h.assigned()[0].receiver.as_deref(), Some("n1"));

    // n1 runs a task; n4 holds the item already.
    assert_eq!(h.scheduler.place(STORE, 2, &["n4"]), ["n2", "n3"]);
    assert_eq!(h.scheduler.place(STORE, 9, &["n4"]), ["n2", "n3", "n1"]);
    assert!(h.scheduler.place(STORE, 0, &[]).is_empty());
    assert!(
        h.scheduler
            .place(STORE, 3, &["n1", "n2", "n3", "n4"])
            .is_empty()
    );
}

#[test]
fn load_counts_tasks_of_every_endpoint_of_a_node() {
    let mut h = Harness::new();
    h.scheduler
        .join(node("a", &[(STORE, -1), (LOAD, -1)]), 0)
        .unwrap();
    h.scheduler.join(node("b", &[(LOAD, -1)]), 0).unwrap();
    h.scheduler
        .submit(
            job("j", vec![task("s", STORE, &[]), task("l", LOAD, &[])]),
            CLIENT,
            0,
        )
        .unwrap();
    let receivers: Vec<String> = h
        .assigned()
        .into_iter()
        .map(|t| t.receiver.unwrap())
        .collect();
    assert_eq!(
        receivers,
        ["a", "b"],
        "a already runs a /store/v1 task, so /load/v1 goes to b"
    );
}

#[test]
fn capacity_limits_concurrent_tasks_and_the_rest_wait_for_room() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(STORE, 2)]), 0).unwrap();
    let tasks = (0..3).map(|i| task(&format!("t{i}"), STORE, &[])).collect();
    let id = h.scheduler.submit(job("cap", tasks), CLIENT, 0).unwrap();
    let first = h.assigned();
    assert_eq!(names(&first), ["t0", "t1"]);
    assert_eq!(h.status(&id, "t2"), Status::WaitingForResource);
    h.finish(&first[0], 5);
    let next = h.assigned();
    assert_eq!(names(&next), ["t2"]);
    assert_eq!(next[0].receiver.as_deref(), Some("n1"));
    assert_eq!(h.scheduler.node_load("n1"), Some(2));
}

#[test]
fn a_zero_capacity_or_missing_endpoint_never_takes_tasks() {
    let mut h = Harness::new();
    h.scheduler.join(node("full", &[(STORE, 0)]), 0).unwrap();
    h.scheduler.join(node("other", &[(LOAD, -1)]), 0).unwrap();
    let id = h
        .scheduler
        .submit(job("j", vec![task("a", STORE, &[])]), CLIENT, 0)
        .unwrap();
    assert!(h.assigned().is_empty());
    assert_eq!(h.status(&id, "a"), Status::WaitingForResource);
}

#[test]
fn policy_fail_fails_at_once_and_fails_its_dependents() {
    let mut h = Harness::new();
    let mut eager = task("eager", STORE, &[]);
    eager.resource_recruitment.recruitment_policy = RecruitmentPolicy::Fail as i32;
    let id = h
        .scheduler
        .submit(
            job(
                "j",
                vec![
                    eager,
                    task("after", STORE, &["eager"]),
                    task("last", STORE, &["after"]),
                ],
            ),
            CLIENT,
            0,
        )
        .unwrap();
    assert_eq!(h.status(&id, "eager"), Status::Failed);
    assert_eq!(h.status(&id, "after"), Status::Failed);
    assert_eq!(h.status(&id, "last"), Status::Failed);
    assert_eq!(
        h.scheduler.task(&id, "eager").unwrap().err_msg,
        "no node has free capacity for /store/v1"
    );
    assert_eq!(
        h.scheduler.task(&id, "last").unwrap().err_msg,
        "needed task \"after\" failed"
    );
    assert_eq!(h.scheduler.job_status(&id), Some(JobStatus::Failed));
    let finished: Vec<Event> = h
        .drain()
        .into_iter()
        .filter(|e| matches!(e, Event::JobFinished { .. }))
        .collect();
    assert_eq!(
        finished,
        [Event::JobFinished {
            job_id: id.clone(),
            status: JobStatus::Failed
        }],
        "announced once"
    );
}

#[test]
fn policy_always_waits_for_resource_until_a_node_joins() {
    let mut h = Harness::new();
    let id = h
        .scheduler
        .submit(job("j", vec![task("patient", STORE, &[])]), CLIENT, 0)
        .unwrap();
    assert_eq!(h.status(&id, "patient"), Status::WaitingForResource);
    let events = h.drain();
    assert!(
        matches!(&events[1], Event::TaskChanged { task, .. } if task.status() == Status::WaitingForResource)
    );
    h.scheduler.tick(1_000).unwrap();
    assert!(h.drain().is_empty(), "a waiting task is not re-announced");
    h.scheduler
        .join(node("late", &[(STORE, 1)]), 2_000)
        .unwrap();
    let assigned = h.assigned();
    assert_eq!(names(&assigned), ["patient"]);
    assert_eq!(assigned[0].receiver.as_deref(), Some("late"));
}

#[test]
fn min_cpu_and_min_gpu_need_nodes_that_advertise_enough() {
    let mut h = Harness::new();
    h.scheduler.join(node("silent", &[(STORE, -1)]), 0).unwrap();
    let mut small = node("small", &[(STORE, -1)]);
    small.cpu = Some(2);
    small.gpu = Some(0);
    h.scheduler.join(small, 0).unwrap();
    let mut big = node("big", &[(STORE, -1)]);
    big.cpu = Some(16);
    big.gpu = Some(1);
    h.scheduler.join(big, 0).unwrap();

    let mut cpu4 = task("cpu4", STORE, &[]);
    cpu4.capability_filters.min_cpu = Some(4);
    let mut cpu2 = task("cpu2", STORE, &[]);
    cpu2.capability_filters.min_cpu = Some(2);
    let mut gpu = task("gpu", STORE, &[]);
    gpu.capability_filters.min_gpu = Some(1);
    let mut zero = task("zero", STORE, &[]);
    zero.capability_filters.min_cpu = Some(0);
    let mut huge = task("huge", STORE, &[]);
    huge.capability_filters.min_gpu = Some(8);
    let id = h
        .scheduler
        .submit(job("j", vec![cpu4, cpu2, gpu, zero, huge]), CLIENT, 0)
        .unwrap();
    let receivers: Vec<(String, String)> = h
        .assigned()
        .into_iter()
        .map(|t| (t.name, t.receiver.unwrap()))
        .collect();
    let expected = [
        ("cpu4", "big"),
        ("cpu2", "small"),
        ("gpu", "big"),
        ("zero", "silent"),
    ];
    assert_eq!(
        receivers,
        expected.map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(h.status(&id, "huge"), Status::WaitingForResource);
    assert_eq!(
        h.scheduler.task(&id, "huge").unwrap().err_msg,
        "no node has free capacity for /store/v1 with at least 8 gpu"
    );
}

#[test]
fn a_task_that_names_its_receiver_goes_only_there() {
    let mut h = Harness::new();
    h.scheduler.join(node("idle", &[(STORE, -1)]), 0).unwrap();
    let mut pinned = task("pinned", STORE, &[]);
    pinned.receiver = Some("chosen".into());
    let id = h
        .scheduler
        .submit(job("j", vec![pinned]), CLIENT, 0)
        .unwrap();
    assert!(h.assigned().is_empty());
    assert_eq!(h.status(&id, "pinned"), Status::WaitingForResource);
    h.scheduler.join(node("chosen", &[(STORE, 1)]), 1).unwrap();
    let assigned = h.assigned();
    assert_eq!(assigned[0].receiver.as_deref(), Some("chosen"));
}

#[test]
fn a_reported_failure_is_retried_on_another_node() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    h.scheduler.join(node("n2", &[(STORE, -1)]), 0).unwrap();
    let id = h
        .scheduler
        .submit(job("j", vec![task("flaky", STORE, &[])]), CLIENT, 0)
        .unwrap();
    let first = h.assigned();
    assert_eq!(first[0].receiver.as_deref(), Some("n1"));
    h.report(&first[0], Status::Failed, "n1", 5);
    let events = h.drain();
    let statuses: Vec<Status> = events
        .iter()
        .filter_map(Event::task)
        .map(|t| t.status())
        .collect();
    assert_eq!(statuses, [Status::Retry, Status::Pending]);
    let second = events.iter().find_map(Event::task_for_submitter).unwrap();
    assert_eq!(
        second.receiver.as_deref(),
        Some("n2"),
        "the retry avoids the node that failed"
    );
    assert_eq!(h.scheduler.task(&id, "flaky").unwrap().retries, 1);
    assert_eq!(h.scheduler.node_load("n1"), Some(0));
    h.finish(&second, 6);
    assert_eq!(h.scheduler.job_status(&id), Some(JobStatus::Done));
}

#[test]
fn a_retry_may_reuse_the_failed_node_when_it_is_the_only_one() {
    let mut h = Harness::new();
    h.scheduler.join(node("only", &[(STORE, 1)]), 0).unwrap();
    h.scheduler
        .submit(job("j", vec![task("t", STORE, &[])]), CLIENT, 0)
        .unwrap();
    let first = h.assigned();
    h.report(&first[0], Status::Failed, "only", 1);
    let second = h.assigned();
    assert_eq!(second[0].receiver.as_deref(), Some("only"));
}

#[test]
fn a_passed_deadline_retries_three_times_then_fails_the_task_and_its_dependents() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let mut slow = task("slow", STORE, &[]);
    slow.timeout = "1s".into();
    let id = h
        .scheduler
        .submit(
            job("j", vec![slow, task("next", STORE, &["slow"])]),
            CLIENT,
            0,
        )
        .unwrap();
    let mut now = 0;
    for attempt in 0..4 {
        let assigned = h.assigned();
        assert_eq!(names(&assigned), ["slow"], "attempt {attempt}");
        assert_eq!(h.scheduler.next_deadline(), Some(now + 1_000));
        h.scheduler.tick(now + 999).unwrap();
        assert_eq!(
            h.status(&id, "slow"),
            Status::Pending,
            "not yet timed out at attempt {attempt}"
        );
        now += 1_000;
        h.scheduler.tick(now).unwrap();
    }
    assert_eq!(h.status(&id, "slow"), Status::Failed);
    let handler = h.scheduler.task(&id, "slow").unwrap();
    assert_eq!(handler.retries, 3);
    assert!(
        handler.err_msg.contains("timed out (timeout 1s)"),
        "{}",
        handler.err_msg
    );
    assert!(
        handler.err_msg.ends_with("no retries left after 3"),
        "{}",
        handler.err_msg
    );
    assert_eq!(h.status(&id, "next"), Status::Failed);
    assert_eq!(h.scheduler.job_status(&id), Some(JobStatus::Failed));
    assert_eq!(h.scheduler.node_load("n1"), Some(0));
    assert_eq!(h.scheduler.next_deadline(), None);
}

#[test]
fn the_retry_limit_is_configurable() {
    let mut h = Harness::with_config(SchedulerConfig {
        max_retries: 0,
        ..config()
    });
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let id = h
        .scheduler
        .submit(job("j", vec![task("once", STORE, &[])]), CLIENT, 0)
        .unwrap();
    let assigned = h.assigned();
    h.report(&assigned[0], Status::Failed, CLIENT, 1);
    assert_eq!(h.status(&id, "once"), Status::Failed);
}

#[test]
fn a_node_unseen_for_the_timeout_is_dropped_and_its_tasks_move() {
    let mut h = Harness::with_config(SchedulerConfig {
        node_timeout: Duration::from_secs(5),
        ..config()
    });
    h.scheduler.join(node("quiet", &[(STORE, -1)]), 0).unwrap();
    h.scheduler.join(node("alive", &[(STORE, -1)]), 1).unwrap();
    let mut long = task("long", STORE, &[]);
    long.timeout = "1h".into();
    let id = h.scheduler.submit(job("j", vec![long]), CLIENT, 2).unwrap();
    let first = h.assigned();
    assert_eq!(first[0].receiver.as_deref(), Some("alive"));
    h.report(&first[0], Status::Started, "alive", 3);

    // "alive" keeps beating; "quiet" is dropped first, which moves nothing.
    h.scheduler.heartbeat("alive", 4_000).unwrap();
    h.scheduler.tick(5_000).unwrap();
    assert!(h.scheduler.node("quiet").is_none());
    assert_eq!(h.status(&id, "long"), Status::Started);

    h.scheduler
        .join(node("spare", &[(STORE, -1)]), 6_000)
        .unwrap();
    h.scheduler.tick(8_999).unwrap();
    assert_eq!(
        h.status(&id, "long"),
        Status::Started,
        "alive was seen at 4000: still within 5 s"
    );
    h.drain();
    h.scheduler.tick(9_000).unwrap();
    assert!(h.scheduler.node("alive").is_none());
    let moved = h.assigned();
    assert_eq!(moved[0].receiver.as_deref(), Some("spare"));
    let handler = h.scheduler.task(&id, "long").unwrap();
    assert_eq!(handler.retries, 1);
    assert!(matches!(
        h.scheduler.heartbeat("alive", 9_001),
        Err(SchedulerError::UnknownNode { .. })
    ));
}

#[test]
fn a_node_that_leaves_has_its_tasks_retried_elsewhere() {
    let mut h = Harness::new();
    h.scheduler.join(node("a", &[(STORE, 1)]), 0).unwrap();
    h.scheduler.join(node("b", &[(STORE, 1)]), 0).unwrap();
    let id = h
        .scheduler
        .submit(
            job("j", vec![task("t0", STORE, &[]), task("t1", STORE, &[])]),
            CLIENT,
            0,
        )
        .unwrap();
    assert_eq!(h.assigned().len(), 2);
    h.scheduler.leave("a", 1).unwrap();
    // b is full: the task waits, and goes to b once b has room.
    assert_eq!(h.status(&id, "t0"), Status::WaitingForResource);
    let t1 = h.scheduler.job(&id).unwrap().tasks[1].clone();
    h.drain();
    h.finish(&t1, 2);
    let moved = h.assigned();
    assert_eq!(names(&moved), ["t0"]);
    assert_eq!(moved[0].receiver.as_deref(), Some("b"));
    assert!(matches!(
        h.scheduler.leave("a", 3),
        Err(SchedulerError::UnknownNode { .. })
    ));
}

#[test]
fn a_restarted_node_has_its_tasks_tried_again_and_the_tasks_it_sends_failed() {
    let mut h = Harness::new();
    h.scheduler.join(node("a", &[(STORE, 1)]), 0).unwrap();
    h.scheduler.join(node("b", &[(STORE, 1)]), 0).unwrap();
    // A client's task on a; a job of a's own whose task a sends to b (a node's copy).
    let client_job = h
        .scheduler
        .submit(job("upload", vec![task("t", STORE, &[])]), CLIENT, 0)
        .unwrap();
    let mut copy = task("copy", STORE, &[]);
    copy.sender = "a".into();
    copy.receiver = Some("b".into());
    let own_job = h
        .scheduler
        .submit(job("copies", vec![copy]), "a", 0)
        .unwrap();
    let assigned = h.assigned();
    assert_eq!(assigned.len(), 2);
    assert_eq!(
        h.scheduler
            .task(&client_job, "t")
            .unwrap()
            .task
            .receiver
            .as_deref(),
        Some("a")
    );

    h.scheduler.restarted("a", 1).unwrap();
    // Tried again (on a, still registered and now free); the copy's stream died with a.
    let handler = h.scheduler.task(&client_job, "t").unwrap();
    assert_eq!(handler.retries, 1);
    assert_eq!(h.status(&own_job, "copy"), Status::Failed);
    assert_eq!(h.scheduler.job_status(&own_job), Some(JobStatus::Failed));
    assert!(h.scheduler.node("a").is_some(), "it stays registered");
}

#[test]
fn when_a_submitter_leaves_its_unstarted_tasks_fail_and_started_ones_run_on() {
    let mut h = Harness::new();
    // Room for one task at a time: `started` runs, `assigned` is PENDING on b, `waiting`
    // has no node yet.
    h.scheduler.join(node("a", &[(STORE, 1)]), 0).unwrap();
    h.scheduler.join(node("b", &[(STORE, 1)]), 0).unwrap();
    let job_id = h
        .scheduler
        .submit(
            job(
                "uploads",
                vec![
                    task("started", STORE, &[]),
                    task("assigned", STORE, &[]),
                    task("waiting", STORE, &[]),
                ],
            ),
            CLIENT,
            0,
        )
        .unwrap();
    let assigned = h.assigned();
    assert_eq!(assigned.len(), 2);
    let first = assigned.iter().find(|t| t.name == "started").unwrap();
    let receiver = first.receiver.clone().unwrap();
    h.report(first, Status::Started, &receiver, 1);

    // Someone else's word changes nothing.
    h.scheduler.submitter_left(&job_id, "stranger", 2).unwrap();
    assert_eq!(h.status(&job_id, "assigned"), Status::Pending);

    h.scheduler.submitter_left(&job_id, CLIENT, 2).unwrap();
    assert_eq!(h.status(&job_id, "started"), Status::Started);
    assert_eq!(h.status(&job_id, "assigned"), Status::Failed);
    assert_eq!(h.status(&job_id, "waiting"), Status::Failed);
    assert_eq!(h.scheduler.job_status(&job_id), Some(JobStatus::Running));
    assert!(
        h.scheduler
            .task(&job_id, "assigned")
            .unwrap()
            .err_msg
            .contains("submitter"),
        "the reason names the submitter"
    );

    // The node ends the started one; the job is over.
    h.report(first, Status::Done, &receiver, 3);
    assert_eq!(h.scheduler.job_status(&job_id), Some(JobStatus::Failed));
}

#[test]
fn a_rejoin_updates_capabilities_and_keeps_running_tasks() {
    let mut h = Harness::new();
    h.scheduler.join(node("n", &[(STORE, 1)]), 0).unwrap();
    let id = h
        .scheduler
        .submit(
            job("j", vec![task("a", STORE, &[]), task("b", STORE, &[])]),
            CLIENT,
            0,
        )
        .unwrap();
    assert_eq!(names(&h.assigned()), ["a"]);
    h.scheduler.join(node("n", &[(STORE, 2)]), 1).unwrap();
    assert_eq!(names(&h.assigned()), ["b"]);
    assert_eq!(h.scheduler.node_load("n"), Some(2));
    assert_eq!(h.status(&id, "a"), Status::Pending);
}

#[test]
fn malformed_nodes_are_refused() {
    let mut h = Harness::new();
    let join = |h: &mut Harness, n| h.scheduler.join(n, 0).unwrap_err();
    assert!(matches!(
        join(&mut h, node("", &[])),
        SchedulerError::Join(_)
    ));
    assert!(matches!(
        join(&mut h, node("n", &[(STORE, -2)])),
        SchedulerError::Join(_)
    ));
    assert!(matches!(
        join(&mut h, node("n", &[(STORE, 1), (STORE, 2)])),
        SchedulerError::Join(_)
    ));
    let mut negative = node("n", &[]);
    negative.cpu = Some(-4);
    assert!(matches!(join(&mut h, negative), SchedulerError::Join(_)));
    assert!(h.scheduler.nodes().is_empty());
}

#[test]
fn only_the_manager_the_sender_and_the_receiver_may_report() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let id = h
        .scheduler
        .submit(job("j", vec![task("t", STORE, &[])]), CLIENT, 0)
        .unwrap();
    let t = h.assigned().remove(0);
    let err = h
        .scheduler
        .report(&update(&t, Status::Done), "mallory", 1)
        .unwrap_err();
    assert!(
        matches!(err, SchedulerError::NotAllowed { ref reporter, .. } if reporter == "mallory")
    );
    assert_eq!(h.status(&id, "t"), Status::Pending);
    h.report(&t, Status::Started, "n1", 1);
    h.report(&t, Status::Processing, CLIENT, 2);
    h.report(&t, Status::Done, MANAGER, 3);
    assert_eq!(h.status(&id, "t"), Status::Done);
}

#[test]
fn a_done_task_never_changes_again() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let id = h
        .scheduler
        .submit(job("j", vec![task("t", STORE, &[])]), CLIENT, 0)
        .unwrap();
    let t = h.assigned().remove(0);
    h.finish(&t, 1);
    h.drain();
    // A duplicate DONE (gossip delivers twice) is accepted and changes nothing.
    h.report(&t, Status::Done, "n1", 2);
    assert!(h.drain().is_empty());
    for status in [
        Status::Failed,
        Status::Started,
        Status::Retry,
        Status::Pending,
    ] {
        let err = h
            .scheduler
            .report(&update(&t, status), "n1", 3)
            .unwrap_err();
        assert!(
            matches!(
                err,
                SchedulerError::InvalidTransition {
                    from: Status::Done,
                    ..
                }
            ),
            "{status:?}"
        );
    }
    h.scheduler.tick(1_000_000).unwrap();
    assert_eq!(h.status(&id, "t"), Status::Done);
    assert!(h.drain().is_empty());
}

#[test]
fn reports_on_unknown_or_unassigned_tasks_are_refused() {
    let mut h = Harness::new();
    let id = h
        .scheduler
        .submit(job("j", vec![task("t", STORE, &[])]), CLIENT, 0)
        .unwrap();
    let mut t = h.scheduler.job(&id).unwrap().tasks.remove(0);
    let err = h
        .scheduler
        .report(&update(&t, Status::Done), CLIENT, 1)
        .unwrap_err();
    assert!(matches!(
        err,
        SchedulerError::InvalidTransition {
            from: Status::WaitingForResource,
            to: Status::Done,
            ..
        }
    ));
    t.status = 99;
    assert!(matches!(
        h.scheduler.report(&t, CLIENT, 1),
        Err(SchedulerError::InvalidStatus { value: 99, .. })
    ));
    t.name = "nope".into();
    assert!(matches!(
        h.scheduler.report(&t, CLIENT, 1),
        Err(SchedulerError::UnknownTask { .. })
    ));
    t.job_id = "nope".into();
    assert!(matches!(
        h.scheduler.report(&t, CLIENT, 1),
        Err(SchedulerError::UnknownJob { .. })
    ));
}

#[test]
fn every_assignment_carries_a_token_bound_to_the_task() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(LOAD, -1)]), 0).unwrap();
    let mut quick = task("quick", LOAD, &[]);
    quick.timeout = "90s".into();
    let mut long = task("long", LOAD, &[]);
    long.timeout = "3h".into();
    let now_ms = 1_700_000_000_000;
    let id = h
        .scheduler
        .submit(job("j", vec![quick, long]), CLIENT, now_ms)
        .unwrap();
    let keys = domain_auth::DomainKeyStore::open(h.dir.path().join("keys")).unwrap();
    let public = keys.key(DOMAIN).unwrap().public_key();
    let now = UNIX_EPOCH + Duration::from_millis(now_ms);
    for (t, lifetime) in h.assigned().into_iter().zip([90, 3600]) {
        let token = t.access_token.as_deref().unwrap();
        let expected = domain_auth::Expected {
            domain_id: DOMAIN,
            receiver: "n1",
            sender: CLIENT,
            endpoint: LOAD,
        };
        let claims = domain_auth::verify(token, &public, &expected, now).unwrap();
        assert_eq!(
            (claims.job_id.as_str(), claims.task_name.as_str()),
            (id.as_str(), t.name.as_str())
        );
        assert_eq!(claims.exp - claims.iat, lifetime, "lifetime of {}", t.name);
        let wrong_endpoint = domain_auth::Expected {
            endpoint: STORE,
            ..expected
        };
        assert!(domain_auth::verify(token, &public, &wrong_endpoint, now).is_err());
    }
}

#[test]
fn events_never_carry_tokens_except_to_the_submitter() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    h.scheduler
        .submit(
            job("j", vec![task("a", STORE, &[]), task("b", STORE, &["a"])]),
            "submitter",
            0,
        )
        .unwrap();
    let first = h.drain();
    let a = first.iter().find_map(Event::task_for_submitter).unwrap();
    h.finish(&a, 1);
    let all: Vec<Event> = first.into_iter().chain(h.drain()).collect();
    assert!(
        all.iter()
            .filter_map(Event::task)
            .all(|t| t.access_token.is_none())
    );
    let assignments: Vec<&str> = all
        .iter()
        .filter_map(|e| match e {
            Event::TaskAssigned { submitter, .. } => Some(submitter.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(assignments, ["submitter", "submitter"]);
    let job = h.scheduler.job(&a.job_id).unwrap();
    assert!(job.tasks.iter().all(|t| t.access_token.is_none()));
}

#[test]
fn the_event_stream_is_bounded_and_a_slow_subscriber_learns_it_lagged() {
    let mut h = Harness::with_config(SchedulerConfig {
        event_capacity: 4,
        ..config()
    });
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let tasks = (0..10)
        .map(|i| task(&format!("t{i}"), STORE, &[]))
        .collect();
    h.scheduler.submit(job("j", tasks), CLIENT, 0).unwrap();
    assert!(matches!(h.events.try_recv(), Err(TryRecvError::Lagged(7))));
    assert_eq!(common::drain(&mut h.events).len(), 4);
}

#[test]
fn finished_jobs_can_be_removed_and_running_ones_cannot() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let id = h
        .scheduler
        .submit(job("j", vec![task("t", STORE, &[])]), CLIENT, 0)
        .unwrap();
    assert!(matches!(
        h.scheduler.remove_job(&id),
        Err(SchedulerError::JobRunning { .. })
    ));
    let t = h.assigned().remove(0);
    h.finish(&t, 1);
    h.scheduler.remove_job(&id).unwrap();
    assert!(h.scheduler.job(&id).is_none());
    assert!(h.scheduler.job_ids().is_empty());
}

#[test]
fn a_report_from_the_receiver_counts_as_a_heartbeat() {
    let mut h = Harness::with_config(SchedulerConfig {
        node_timeout: Duration::from_secs(5),
        ..config()
    });
    h.scheduler.join(node("worker", &[(STORE, -1)]), 0).unwrap();
    let mut long = task("long", STORE, &[]);
    long.timeout = "1h".into();
    let id = h.scheduler.submit(job("j", vec![long]), CLIENT, 0).unwrap();
    let t = h.assigned().remove(0);
    h.report(&t, Status::Processing, "worker", 4_000);
    h.scheduler.tick(8_000).unwrap();
    assert_eq!(h.status(&id, "long"), Status::Processing);
    assert!(h.scheduler.node("worker").is_some());
    h.scheduler.tick(9_000).unwrap();
    assert!(h.scheduler.node("worker").is_none());
}

#[test]
fn losing_many_nodes_at_once_moves_all_their_tasks_in_one_tick() {
    let mut h = Harness::with_config(SchedulerConfig {
        node_timeout: Duration::from_secs(5),
        ..config()
    });
    for i in 0..50 {
        h.scheduler
            .join(node(&format!("lost-{i:02}"), &[(STORE, 2)]), 0)
            .unwrap();
    }
    let tasks = (0..100)
        .map(|i| TaskRequest {
            timeout: "1h".into(),
            ..task(&format!("t{i:03}"), STORE, &[])
        })
        .collect();
    let id = h.scheduler.submit(job("j", tasks), CLIENT, 0).unwrap();
    assert_eq!(h.assigned().len(), 100);
    h.scheduler
        .join(node("survivor", &[(STORE, -1)]), 4_000)
        .unwrap();
    h.scheduler.tick(5_000).unwrap();
    assert_eq!(h.scheduler.nodes().len(), 1);
    let moved = h.assigned();
    assert_eq!(moved.len(), 100);
    assert!(
        moved
            .iter()
            .all(|t| t.receiver.as_deref() == Some("survivor"))
    );
    assert_eq!(h.scheduler.node_load("survivor"), Some(100));
    assert!(
        h.scheduler
            .job(&id)
            .unwrap()
            .tasks
            .iter()
            .all(|t| t.status() == Status::Pending)
    );
}

#[test]
fn many_reports_apply_in_one_operation_each_with_its_own_result() {
    let mut h = Harness::new();
    h.scheduler.join(node("n1", &[(STORE, -1)]), 0).unwrap();
    let id = h
        .scheduler
        .submit(
            job(
                "j",
                vec![
                    task("a", STORE, &[]),
                    task("b", STORE, &[]),
                    task("c", STORE, &["a", "b"]),
                ],
            ),
            CLIENT,
            0,
        )
        .unwrap();
    let assigned = h.assigned();
    let (a, b) = (
        update(&assigned[0], Status::Done),
        update(&assigned[1], Status::Done),
    );
    let results = h
        .scheduler
        .report_many([(&a, "n1"), (&b, "mallory"), (&b, "n1")], 1)
        .unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(SchedulerError::NotAllowed { .. })));
    assert!(results[2].is_ok());
    assert_eq!(names(&h.assigned()), ["c"]);
    assert_eq!(h.status(&id, "c"), Status::Pending);
}
