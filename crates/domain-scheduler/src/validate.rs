//! Checks a `JobRequest` before it becomes a job: every reason to refuse one names the task at
//! fault, so the client's `BadRequest` message says what to fix.

use std::collections::HashMap;
use std::time::Duration;

use domain_proto::task::{JobRequest, resource_recruitment::RecruitmentPolicy};
use prost::Message;

use crate::timeout::{TimeoutError, parse_timeout};

/// Why a job was refused; its `Display` is the `err_msg` of the `BadRequest` answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobRejected {
    /// The request holds no task.
    #[error("job {job:?} has no tasks")]
    NoTasks {
        /// The job's name.
        job: String,
    },
    /// The request holds more tasks than the scheduler accepts in one job.
    #[error("job {job:?} has {count} tasks, more than the limit of {max}")]
    TooManyTasks {
        /// The job's name.
        job: String,
        /// Tasks in the request.
        count: usize,
        /// The configured limit.
        max: usize,
    },
    /// The request names no domain, so no token could be issued for it.
    #[error("job {job:?} has an empty domain_id")]
    NoDomain {
        /// The job's name.
        job: String,
    },
    /// A task has an empty name.
    #[error("task #{index} has an empty name")]
    EmptyTaskName {
        /// Position of the task in the request.
        index: usize,
    },
    /// Two tasks share a name.
    #[error("task name {task:?} appears more than once")]
    DuplicateTask {
        /// The repeated name.
        task: String,
    },
    /// A task names no capability endpoint.
    #[error("task {task:?} has an empty capability endpoint")]
    NoEndpoint {
        /// The task.
        task: String,
    },
    /// A task names no sender, so no token could be bound to one.
    #[error("task {task:?} has an empty sender")]
    NoSender {
        /// The task.
        task: String,
    },
    /// A task's timeout does not parse.
    #[error("task {task:?}")]
    BadTimeout {
        /// The task.
        task: String,
        /// What is wrong with the timeout.
        source: TimeoutError,
    },
    /// A task needs a task that is not in the job.
    #[error("task {task:?} needs unknown task {needs:?}")]
    UnknownDependency {
        /// The task.
        task: String,
        /// The missing name.
        needs: String,
    },
    /// The `needs` relation has a cycle; the path starts and ends with the same task.
    #[error("tasks form a cycle: {}", path.join(" -> "))]
    Cycle {
        /// The tasks of the cycle, in `needs` order, first repeated at the end.
        path: Vec<String>,
    },
    /// A task's recruitment policy is not a known enum value.
    #[error("task {task:?} has unknown recruitment policy {value}")]
    UnknownPolicy {
        /// The task.
        task: String,
        /// The raw enum value.
        value: i32,
    },
    /// A task asks for a negative number of CPUs or GPUs.
    #[error("task {task:?} has negative {resource} minimum {value}")]
    NegativeMinimum {
        /// The task.
        task: String,
        /// `"min_cpu"` or `"min_gpu"`.
        resource: &'static str,
        /// The value given.
        value: i32,
    },
    /// A job with the same id (same request, same nonce) was already submitted.
    #[error("job {job_id} was already submitted (change the nonce to run it again)")]
    AlreadySubmitted {
        /// The job id.
        job_id: String,
    },
}

/// What the scheduler keeps of one valid task request, beyond the request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskSpec {
    pub(crate) timeout: Duration,
    /// Positions of the needed tasks, without repeats.
    pub(crate) needs: Vec<u32>,
    pub(crate) policy: RecruitmentPolicy,
    pub(crate) min_cpu: u32,
    pub(crate) min_gpu: u32,
}

/// The id of the job a request creates: hex(BLAKE3(the encoded request)).
///
/// prost encodes fields in field-number order and maps in key order, so equal requests have equal
/// ids; the request's nonce makes otherwise identical jobs distinct.
pub fn job_id(request: &JobRequest) -> String {
    blake3::hash(&request.encode_to_vec()).to_hex().to_string()
}

/// Checks `request` and returns the facts the scheduler needs for each task, in request order.
pub(crate) fn validate(
    request: &JobRequest,
    max_tasks: usize,
) -> Result<Vec<TaskSpec>, JobRejected> {
    let job = || request.name.clone();
    if request.tasks.is_empty() {
        return Err(JobRejected::NoTasks { job: job() });
    }
    if request.tasks.len() > max_tasks {
        return Err(JobRejected::TooManyTasks {
            job: job(),
            count: request.tasks.len(),
            max: max_tasks,
        });
    }
    if request.domain_id.is_empty() {
        return Err(JobRejected::NoDomain { job: job() });
    }

    let mut index_of: HashMap<&str, u32> = HashMap::with_capacity(request.tasks.len());
    for (index, task) in request.tasks.iter().enumerate() {
        if task.name.is_empty() {
            return Err(JobRejected::EmptyTaskName { index });
        }
        // `max_tasks` is far below u32::MAX in any sane configuration; the cast is checked anyway.
        let position = u32::try_from(index).map_err(|_| JobRejected::TooManyTasks {
            job: job(),
            count: request.tasks.len(),
            max: max_tasks,
        })?;
        if index_of.insert(task.name.as_str(), position).is_some() {
            return Err(JobRejected::DuplicateTask {
                task: task.name.clone(),
            });
        }
    }

    let mut specs = Vec::with_capacity(request.tasks.len());
    for task in &request.tasks {
        let name = || task.name.clone();
        if task.capability_filters.endpoint.is_empty() {
            return Err(JobRejected::NoEndpoint { task: name() });
        }
        if task.sender.is_empty() {
            return Err(JobRejected::NoSender { task: name() });
        }
        let timeout = parse_timeout(&task.timeout).map_err(|source| JobRejected::BadTimeout {
            task: name(),
            source,
        })?;
        let raw_policy = task.resource_recruitment.recruitment_policy;
        let policy =
            RecruitmentPolicy::try_from(raw_policy).map_err(|_| JobRejected::UnknownPolicy {
                task: name(),
                value: raw_policy,
            })?;
        let minimum = |value: Option<i32>, resource| match value {
            None => Ok(0),
            Some(v) => u32::try_from(v).map_err(|_| JobRejected::NegativeMinimum {
                task: name(),
                resource,
                value: v,
            }),
        };
        let min_cpu = minimum(task.capability_filters.min_cpu, "min_cpu")?;
        let min_gpu = minimum(task.capability_filters.min_gpu, "min_gpu")?;
        let mut needs = Vec::with_capacity(task.needs.len());
        for needed in &task.needs {
            let Some(&position) = index_of.get(needed.as_str()) else {
                return Err(JobRejected::UnknownDependency {
                    task: name(),
                    needs: needed.clone(),
                });
            };
            if !needs.contains(&position) {
                needs.push(position);
            }
        }
        specs.push(TaskSpec {
            timeout,
            needs,
            policy,
            min_cpu,
            min_gpu,
        });
    }

    if let Some(cycle) = find_cycle(&specs) {
        let path = cycle
            .into_iter()
            .map(|i| request.tasks[i as usize].name.clone())
            .collect();
        return Err(JobRejected::Cycle { path });
    }
    Ok(specs)
}

/// Finds one cycle of the `needs` graph, as task positions with the first repeated at the end.
///
/// Iterative depth-first search (a job may hold a chain of 100 000 tasks, too deep to recurse).
fn find_cycle(specs: &[TaskSpec]) -> Option<Vec<u32>> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mark {
        Unvisited,
        OnPath,
        Finished,
    }
    let mut marks = vec![Mark::Unvisited; specs.len()];
    // (task, next edge to follow)
    let mut stack: Vec<(u32, usize)> = Vec::new();
    for root in 0..specs.len() {
        if marks[root] != Mark::Unvisited {
            continue;
        }
        // Positions were checked to fit in u32 by `validate`.
        let root = root as u32;
        marks[root as usize] = Mark::OnPath;
        stack.push((root, 0));
        while let Some(&mut (task, ref mut edge)) = stack.last_mut() {
            let needs = &specs[task as usize].needs;
            if let Some(&next) = needs.get(*edge) {
                *edge += 1;
                match marks[next as usize] {
                    Mark::Unvisited => {
                        marks[next as usize] = Mark::OnPath;
                        stack.push((next, 0));
                    }
                    Mark::OnPath => {
                        let start = stack.iter().position(|&(t, _)| t == next).unwrap_or(0);
                        let mut path: Vec<u32> = stack[start..].iter().map(|&(t, _)| t).collect();
                        path.push(next);
                        return Some(path);
                    }
                    Mark::Finished => {}
                }
            } else {
                marks[task as usize] = Mark::Finished;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain_proto::task::{CapabilityFilters, ResourceRecruitment, TaskRequest};
    use proptest::prelude::*;

    fn request(needs: &[Vec<usize>]) -> JobRequest {
        let tasks = needs
            .iter()
            .enumerate()
            .map(|(i, needs)| TaskRequest {
                name: format!("t{i}"),
                capability_filters: CapabilityFilters {
                    endpoint: "/store/v1".into(),
                    ..Default::default()
                },
                timeout: "1s".into(),
                needs: needs.iter().map(|j| format!("t{j}")).collect(),
                resource_recruitment: ResourceRecruitment::default(),
                sender: "s".into(),
                ..Default::default()
            })
            .collect();
        JobRequest {
            name: "j".into(),
            tasks,
            nonce: "n".into(),
            domain_id: "d".into(),
        }
    }

    /// Kahn's algorithm: the reference answer to "is there a cycle?".
    fn has_cycle(needs: &[Vec<usize>]) -> bool {
        let mut missing: Vec<usize> = needs
            .iter()
            .map(|n| n.iter().collect::<std::collections::HashSet<_>>().len())
            .collect();
        let mut ready: Vec<usize> = (0..needs.len()).filter(|&i| missing[i] == 0).collect();
        let mut finished = 0;
        while let Some(done) = ready.pop() {
            finished += 1;
            for (i, n) in needs.iter().enumerate() {
                if n.contains(&done) {
                    missing[i] -= 1;
                    if missing[i] == 0 {
                        ready.push(i);
                    }
                }
            }
        }
        finished < needs.len()
    }

    fn graphs() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..=10)
            .prop_flat_map(|n| proptest::collection::vec(proptest::collection::vec(0..n, 0..3), n))
    }

    proptest! {
        #[test]
        fn a_cycle_is_reported_exactly_when_the_needs_graph_has_one(needs in graphs()) {
            match validate(&request(&needs), usize::MAX) {
                Ok(specs) => {
                    prop_assert!(!has_cycle(&needs));
                    prop_assert_eq!(specs.len(), needs.len());
                }
                Err(JobRejected::Cycle { path }) => {
                    prop_assert!(has_cycle(&needs));
                    prop_assert!(path.len() >= 2);
                    prop_assert_eq!(path.first(), path.last());
                    for pair in path.windows(2) {
                        let from: usize = pair[0][1..].parse().unwrap();
                        let to = format!("t{}", &pair[1][1..]);
                        prop_assert!(request(&needs).tasks[from].needs.contains(&to));
                    }
                }
                Err(other) => prop_assert!(false, "unexpected rejection {other}"),
            }
        }
    }

    #[test]
    fn a_chain_of_100_000_tasks_validates_without_deep_recursion() {
        let needs: Vec<Vec<usize>> = (0..100_000)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        let specs = validate(&request(&needs), usize::MAX).unwrap();
        assert_eq!(specs[99_999].needs, [99_998]);
    }

    #[test]
    fn repeated_needs_count_once() {
        let specs = validate(&request(&[vec![], vec![0, 0, 0]]), usize::MAX).unwrap();
        assert_eq!(specs[1].needs, [0]);
    }

    #[test]
    fn the_job_id_is_the_blake3_of_the_encoded_request_and_depends_on_the_nonce() {
        let a = request(&[vec![]]);
        let id = job_id(&a);
        assert_eq!(id, blake3::hash(&a.encode_to_vec()).to_hex().to_string());
        assert_eq!(id, job_id(&a.clone()));
        assert_ne!(
            id,
            job_id(&JobRequest {
                nonce: "other".into(),
                ..a
            })
        );
    }
}
