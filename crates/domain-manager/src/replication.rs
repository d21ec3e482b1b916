//! Where the copies of an item go, in a domain that keeps more than one.
//!
//! The client streams an upload once. The node that stored it (it learns from its join
//! answers which domains keep copies) submits a `replicate` job: one task whose data is a
//! `ReplicateDataInputV1` naming the `/store/v1` task it served and the ids it stored.
//! [`expand`] checks that the submitter is that task's receiver and the task is DONE, then
//! turns the job into one `/store/v1` task per other copy, each pinned to a distinct node
//! with the capability (the least loaded first, [`Scheduler::place`]) and with the submitter
//! as sender. The scheduler runs them like any task: it issues their tokens to the
//! submitter, which streams the items to each node, and retries a copy that fails.

use domain_proto::protocols::{DELETE_V1, STORE_V1};
use domain_proto::task::{
    CapabilityFilters, JobRequest, ReplicateDataInputV1, Status, TaskRequest,
};
use domain_scheduler::Scheduler;

pub(crate) use domain_proto::REPLICATE_INPUT;

/// The task timeout of a copy when the request names none.
const COPY_TIMEOUT: &str = "10m";

/// Why a replicate job is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReplicationRefusal {
    /// The request is not one task with a `ReplicateDataInputV1` that decodes.
    #[error("a replicate job is one task whose data is a ReplicateDataInputV1")]
    Malformed,
    /// The domain keeps one copy of each item.
    #[error("domain {domain:?} keeps one copy of each item")]
    OneCopy {
        /// The domain.
        domain: String,
    },
    /// The submitter did not store what it asks to copy.
    #[error(
        "{submitter} did not store task {task:?} of job {job_id} in this domain (it must be its receiver, and the task DONE)"
    )]
    NotTheHolder {
        /// The submitter.
        submitter: String,
        /// The store job named.
        job_id: String,
        /// The store task named.
        task: String,
    },
    /// No node other than the submitter can hold a copy.
    #[error("no node other than {submitter} offers {STORE_V1} to hold a copy")]
    NoNode {
        /// The submitter.
        submitter: String,
    },
}

/// Whether `request` is a replicate job (its first task carries a `ReplicateDataInputV1`).
pub(crate) fn is_replication(request: &JobRequest) -> bool {
    request
        .tasks
        .first()
        .and_then(|task| task.data.as_ref())
        .is_some_and(|data| data.type_url == REPLICATE_INPUT)
}

/// The copy tasks of the replicate job `request` from `submitter`, in a domain that keeps
/// `copies` copies of each item: the job the scheduler runs instead.
pub(crate) fn expand(
    scheduler: &Scheduler,
    request: JobRequest,
    submitter: &str,
    copies: u32,
) -> Result<JobRequest, ReplicationRefusal> {
    let [task] = request.tasks.as_slice() else {
        return Err(ReplicationRefusal::Malformed);
    };
    let Some(data) = task.data.clone() else {
        return Err(ReplicationRefusal::Malformed);
    };
    let input: ReplicateDataInputV1 = match data.unpack(REPLICATE_INPUT) {
        Some(Ok(input)) => input,
        _ => return Err(ReplicationRefusal::Malformed),
    };
    if copies <= 1 {
        return Err(ReplicationRefusal::OneCopy {
            domain: request.domain_id,
        });
    }
    let not_the_holder = || ReplicationRefusal::NotTheHolder {
        submitter: submitter.to_owned(),
        job_id: input.job_id.chars().take(80).collect(),
        task: input.task_name.chars().take(80).collect(),
    };
    let stored = scheduler
        .task(&input.job_id, &input.task_name)
        .map(|handler| handler.task)
        .ok_or_else(not_the_holder)?;
    // A copy is not copied again: the replicate job that made it placed every copy.
    let same_domain = scheduler
        .job_request(&input.job_id)
        .is_some_and(|job| job.domain_id == request.domain_id && !is_replication(job));
    let held = stored.endpoint == STORE_V1
        && stored.status() == Status::Done
        && stored.receiver.as_deref() == Some(submitter);
    if !same_domain || !held {
        return Err(not_the_holder());
    }
    let others = usize::try_from(copies - 1).unwrap_or(usize::MAX);
    let holders = scheduler.place(STORE_V1, others, &[submitter]);
    if holders.is_empty() {
        return Err(ReplicationRefusal::NoNode {
            submitter: submitter.to_owned(),
        });
    }
    if holders.len() < others {
        tracing::warn!(domain = %request.domain_id, copies, placed = holders.len() + 1, "fewer nodes than copies: some items keep fewer copies");
    }
    let timeout = match task.timeout.as_str() {
        "" => COPY_TIMEOUT.to_owned(),
        timeout => timeout.to_owned(),
    };
    let mut tasks: Vec<TaskRequest> = holders
        .iter()
        .enumerate()
        .map(|(i, holder)| TaskRequest {
            name: format!("copy-{}", i + 1),
            capability_filters: CapabilityFilters {
                endpoint: STORE_V1.to_owned(),
                ..CapabilityFilters::default()
            },
            timeout: timeout.clone(),
            sender: submitter.to_owned(),
            receiver: Some(holder.clone()),
            data: Some(data.clone()),
            ..TaskRequest::default()
        })
        .collect();
    if input.replaces == Some(true) {
        // Older versions may have copies anywhere else: removed once the new copies stand.
        let copies: Vec<String> = tasks.iter().map(|task| task.name.clone()).collect();
        let mut keep: Vec<&str> = holders.iter().map(String::as_str).collect();
        keep.push(submitter);
        let elsewhere = scheduler.place(DELETE_V1, usize::MAX, &keep);
        tasks.extend(
            elsewhere
                .into_iter()
                .enumerate()
                .map(|(i, node)| TaskRequest {
                    name: format!("remove-{}", i + 1),
                    capability_filters: CapabilityFilters {
                        endpoint: DELETE_V1.to_owned(),
                        ..CapabilityFilters::default()
                    },
                    timeout: timeout.clone(),
                    needs: copies.clone(),
                    sender: submitter.to_owned(),
                    receiver: Some(node),
                    data: Some(data.clone()),
                    ..TaskRequest::default()
                }),
        );
    }
    Ok(JobRequest { tasks, ..request })
}

#[cfg(test)]
mod tests {
    use domain_auth::DomainKeyStore;
    use domain_proto::discovery::{Capability, Node};
    use domain_proto::task::{Any, Task};
    use domain_scheduler::{DomainKeyIssuer, Event, RedbStore, SchedulerConfig};

    use super::*;

    const DOMAIN: &str = "lab";

    struct Cluster {
        _dir: tempfile::TempDir,
        scheduler: Scheduler,
        /// The `/store/v1` task an upload ran on node `a`, DONE.
        stored: Task,
    }

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            name: id.into(),
            capabilities: vec![Capability {
                endpoint: STORE_V1.into(),
                capacity: -1,
            }],
            ..Node::default()
        }
    }

    /// Nodes a, b, c; an upload stored on a.
    fn cluster() -> Cluster {
        let dir = crate::tests_support::private_tempdir();
        let issuer = DomainKeyIssuer::new(DomainKeyStore::open(dir.path().join("keys")).unwrap());
        let store = RedbStore::in_memory().unwrap();
        let mut scheduler = Scheduler::open(
            SchedulerConfig::new("manager"),
            Box::new(store),
            Box::new(issuer),
            0,
        )
        .unwrap();
        let mut events = scheduler.subscribe();
        for id in ["a", "b", "c"] {
            scheduler.join(node(id), 0).unwrap();
        }
        let upload = JobRequest {
            name: "upload".into(),
            tasks: vec![TaskRequest {
                name: "upload".into(),
                capability_filters: CapabilityFilters {
                    endpoint: STORE_V1.into(),
                    ..CapabilityFilters::default()
                },
                timeout: "1m".into(),
                sender: "client".into(),
                ..TaskRequest::default()
            }],
            nonce: "1".into(),
            domain_id: DOMAIN.into(),
        };
        scheduler.submit(upload, "client", 0).unwrap();
        let mut stored = std::iter::from_fn(|| events.try_recv().ok())
            .find_map(|event| Event::task_for_submitter(&event))
            .unwrap();
        assert_eq!(stored.receiver.as_deref(), Some("a"));
        for status in [Status::Started, Status::Done] {
            stored.status = status as i32;
            stored.access_token = None;
            scheduler.report(&stored, "a", 0).unwrap();
        }
        Cluster {
            _dir: dir,
            scheduler,
            stored,
        }
    }

    fn replicate(stored: &Task, submitter: &str) -> JobRequest {
        let input = ReplicateDataInputV1 {
            job_id: stored.job_id.clone(),
            task_name: stored.name.clone(),
            ids: vec!["item-1".into()],
            replaces: None,
        };
        JobRequest {
            name: "replicate".into(),
            tasks: vec![TaskRequest {
                name: "replicate".into(),
                sender: submitter.into(),
                data: Some(Any::pack(REPLICATE_INPUT, &input)),
                ..TaskRequest::default()
            }],
            nonce: "r".into(),
            domain_id: DOMAIN.into(),
        }
    }

    #[test]
    fn the_holder_gets_one_pinned_copy_task_per_other_copy_on_distinct_nodes() {
        let cluster = cluster();
        let request = replicate(&cluster.stored, "a");
        assert!(is_replication(&request));
        let job = expand(&cluster.scheduler, request, "a", 3).unwrap();
        let placed: Vec<(&str, Option<&str>, &str)> = job
            .tasks
            .iter()
            .map(|t| (t.name.as_str(), t.receiver.as_deref(), t.sender.as_str()))
            .collect();
        assert_eq!(
            placed,
            [("copy-1", Some("b"), "a"), ("copy-2", Some("c"), "a")]
        );
        assert!(
            job.tasks
                .iter()
                .all(|t| t.capability_filters.endpoint == STORE_V1)
        );

        // More copies than nodes: every other node gets one.
        let job = expand(&cluster.scheduler, replicate(&cluster.stored, "a"), "a", 9).unwrap();
        assert_eq!(job.tasks.len(), 2);
    }

    #[test]
    fn an_upsert_also_removes_older_copies_from_every_other_node_once_the_copies_stand() {
        let mut cluster = cluster();
        for id in ["a", "b", "c"] {
            let mut both = node(id);
            both.capabilities.push(Capability {
                endpoint: DELETE_V1.into(),
                capacity: -1,
            });
            cluster.scheduler.join(both, 0).unwrap();
        }
        let mut request = replicate(&cluster.stored, "a");
        let mut input: ReplicateDataInputV1 = request.tasks[0]
            .data
            .as_ref()
            .unwrap()
            .unpack(REPLICATE_INPUT)
            .unwrap()
            .unwrap();
        input.replaces = Some(true);
        request.tasks[0].data = Some(Any::pack(REPLICATE_INPUT, &input));
        let job = expand(&cluster.scheduler, request, "a", 2).unwrap();
        let placed: Vec<(&str, &str, Option<&str>, &[String])> = job
            .tasks
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.capability_filters.endpoint.as_str(),
                    t.receiver.as_deref(),
                    t.needs.as_slice(),
                )
            })
            .collect();
        let copy_1 = ["copy-1".to_owned()];
        assert_eq!(
            placed,
            [
                ("copy-1", STORE_V1, Some("b"), &[][..]),
                ("remove-1", DELETE_V1, Some("c"), &copy_1[..]),
            ]
        );
    }

    #[test]
    fn only_the_node_that_stored_the_task_may_have_it_copied() {
        let cluster = cluster();
        for (submitter, stored) in [
            ("b", cluster.stored.clone()),
            (
                "a",
                Task {
                    name: "no-such-task".into(),
                    ..cluster.stored.clone()
                },
            ),
        ] {
            let refused = expand(
                &cluster.scheduler,
                replicate(&stored, submitter),
                submitter,
                2,
            );
            assert!(
                matches!(refused, Err(ReplicationRefusal::NotTheHolder { .. })),
                "{refused:?}"
            );
        }
        let mut elsewhere = replicate(&cluster.stored, "a");
        elsewhere.domain_id = "other".into();
        assert!(matches!(
            expand(&cluster.scheduler, elsewhere, "a", 2),
            Err(ReplicationRefusal::NotTheHolder { .. })
        ));
    }

    #[test]
    fn a_domain_of_one_copy_or_a_malformed_request_is_refused() {
        let cluster = cluster();
        assert!(matches!(
            expand(&cluster.scheduler, replicate(&cluster.stored, "a"), "a", 1),
            Err(ReplicationRefusal::OneCopy { .. })
        ));
        let mut garbage = replicate(&cluster.stored, "a");
        garbage.tasks[0].data = Some(Any {
            type_url: REPLICATE_INPUT.into(),
            value: vec![0xff; 4],
        });
        assert!(matches!(
            expand(&cluster.scheduler, garbage, "a", 2),
            Err(ReplicationRefusal::Malformed)
        ));
    }
}
