//! Property: with reliable nodes, every valid DAG finishes with every task DONE, each assigned
//! once, and no task assigned before every task it needs is DONE.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use domain_proto::task::{Status, Task};
use domain_scheduler::{Event, JobStatus};
use proptest::prelude::*;

/// A DAG of `n` tasks: task i may need any task j < i (so there is no cycle), and the request
/// lists the tasks in a shuffled order so that position says nothing about dependencies.
fn dags() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<usize>)> {
    (1usize..=24).prop_flat_map(|n| {
        let needs = (0..n)
            .map(|i| proptest::collection::vec(any::<bool>(), i))
            .collect::<Vec<_>>()
            .prop_map(|masks| {
                masks
                    .into_iter()
                    .map(|mask| {
                        mask.iter()
                            .enumerate()
                            .filter(|(_, b)| **b)
                            .map(|(j, _)| j)
                            .collect()
                    })
                    .collect::<Vec<Vec<usize>>>()
            });
        let order = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
        (needs, order)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_dags_finish_with_every_task_done_in_needs_order(
        (needs, order) in dags(),
        capacities in proptest::collection::vec(prop_oneof![Just(-1), 1..4i32], 1..4),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 64),
    ) {
        let mut h = Harness::new();
        for (i, capacity) in capacities.iter().enumerate() {
            h.scheduler.join(node(&format!("node-{i}"), &[(STORE, *capacity)]), 0).unwrap();
        }
        let name = |i: usize| format!("t{i}");
        let tasks = order
            .iter()
            .map(|&i| {
                let names: Vec<String> = needs[i].iter().map(|&j| name(j)).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                task(&name(i), STORE, &refs)
            })
            .collect();
        let id = h.scheduler.submit(job("dag", tasks), CLIENT, 0).unwrap();
        let index: HashMap<String, usize> = (0..needs.len()).map(|i| (name(i), i)).collect();

        let mut done: HashSet<usize> = HashSet::new();
        let mut assigned_once: HashSet<usize> = HashSet::new();
        let mut running: Vec<Task> = Vec::new();
        let mut now = 1;
        let mut step = 0;
        loop {
            for event in h.drain() {
                if let Some(t) = event.task_for_submitter() {
                    let i = index[&t.name];
                    prop_assert!(assigned_once.insert(i), "{} assigned twice", t.name);
                    for need in &needs[i] {
                        prop_assert!(done.contains(need), "{} assigned before its need t{need} was done", t.name);
                    }
                    running.push(t);
                }
                if let Event::TaskChanged { task, .. } = &event {
                    prop_assert_ne!(task.status(), Status::Failed);
                    prop_assert_ne!(task.status(), Status::Retry);
                }
            }
            if running.is_empty() {
                break;
            }
            let pick = picks[step % picks.len()].index(running.len());
            step += 1;
            let t = running.swap_remove(pick);
            now += 1;
            h.finish(&t, now);
            done.insert(index[&t.name]);
        }
        prop_assert_eq!(done.len(), needs.len());
        prop_assert_eq!(h.scheduler.job_status(&id), Some(JobStatus::Done));
        let job = h.scheduler.job(&id).unwrap();
        prop_assert!(job.tasks.iter().all(|t| t.status() == Status::Done));
        for i in 0..capacities.len() {
            prop_assert_eq!(h.scheduler.node_load(&format!("node-{i}")), Some(0));
        }
    }
}
