//! Opening a scheduler on what its store kept: jobs, tasks, the registry and the holder
//! index as they were at the last commit.

use std::collections::HashSet;
use std::sync::Arc;

use domain_proto::task::Status;

use crate::events::JobStatus;
use crate::store::StoreError;
use crate::validate::validate;

use super::{JobState, Phase, Scheduler, TaskRef, millis};

impl Scheduler {
    pub(super) fn restore(
        &mut self,
        snapshot: crate::store::Snapshot,
        now: u64,
    ) -> Result<(), StoreError> {
        let inconsistent = StoreError::Inconsistent;
        for record in snapshot.holders {
            self.holders.restore(record);
        }
        for record in snapshot.nodes {
            let id = record.node.id.clone();
            self.registry
                .join(record.node, now)
                .map_err(|e| inconsistent(format!("stored node {id}: {e}")))?;
        }
        let mut records = snapshot.jobs;
        records.sort_by(|a, b| (a.created_at, &a.job_id).cmp(&(b.created_at, &b.job_id)));
        let mut order = Vec::with_capacity(records.len());
        for record in records {
            let specs = validate(&record.request, usize::MAX).map_err(|e| {
                inconsistent(format!(
                    "stored job {}: {}",
                    record.job_id,
                    domain_proto::ErrorChain(&e)
                ))
            })?;
            let id: Arc<str> = Arc::from(record.job_id.as_str());
            let job = JobState::new(
                id.clone(),
                record.request,
                specs,
                record.submitter,
                record.created_at,
            );
            order.push(id.clone());
            self.jobs.insert(id, Box::new(job));
        }
        let mut seen: HashSet<(Arc<str>, u32)> = HashSet::new();
        for record in snapshot.tasks {
            let handler = record.handler;
            let Some(job) = self.jobs.get_mut(handler.job_id.as_str()) else {
                return Err(inconsistent(format!(
                    "task of unknown job {}",
                    handler.job_id
                )));
            };
            let id = job.id.clone();
            let Some(state) = job.tasks.get_mut(record.position as usize) else {
                return Err(inconsistent(format!(
                    "job {} has no task at position {}",
                    handler.job_id, record.position
                )));
            };
            let receiver = handler.task.receiver.as_deref().map(Arc::<str>::from);
            let status = Status::try_from(handler.task.status).map_err(|_| {
                inconsistent(format!(
                    "task {:?} has status {}",
                    handler.task.name, handler.task.status
                ))
            })?;
            state.phase = match (status, &receiver) {
                (Status::Pending, None) => Phase::Queued,
                (Status::Pending, Some(_)) => Phase::Pending,
                (Status::Started, Some(_)) => Phase::Started,
                (Status::Processing, Some(_)) => Phase::Processing,
                (Status::Started | Status::Processing, None) => Phase::Retry,
                (Status::WaitingForResource, _) => Phase::Waiting,
                (Status::Retry, _) => Phase::Retry,
                (Status::Done, _) => Phase::Done,
                (Status::Failed, _) => Phase::Failed,
            };
            // A DONE task keeps the node it ran on, for the record and for repeated reports.
            state.receiver = if state.phase.is_running() || state.phase == Phase::Done {
                receiver
            } else {
                None
            };
            state.last_receiver = record.last_receiver.map(Arc::from);
            state.retries = handler.retries;
            state.deadline = record.deadline;
            state.err_msg = handler.err_msg;
            state.output = handler.task.output;
            state.created_at = handler.created_at;
            state.updated_at = handler.updated_at;
            seen.insert((id, record.position));
        }
        let mut lost = Vec::new();
        for id in &order {
            let Some(job) = self.jobs.get_mut(id) else {
                continue;
            };
            for position in 0..job.tasks.len() {
                if !seen.contains(&(id.clone(), position as u32)) {
                    return Err(inconsistent(format!("job {id} lost its task #{position}")));
                }
                let remaining = job.specs[position]
                    .needs
                    .iter()
                    .filter(|&&n| job.tasks[n as usize].phase != Phase::Done)
                    .count();
                let spec_timeout = job.specs[position].timeout;
                let endpoint = &job.request.tasks[position].capability_filters.endpoint;
                let state = &mut job.tasks[position];
                state.remaining_needs = remaining as u32;
                let task = TaskRef {
                    job: id.clone(),
                    position: position as u32,
                };
                match state.phase {
                    Phase::Done => job.unfinished -= 1,
                    Phase::Failed => {
                        job.unfinished -= 1;
                        job.failed += 1;
                    }
                    Phase::Queued if remaining > 0 => {}
                    Phase::Queued | Phase::Waiting | Phase::Retry => self.ready.push_back(task),
                    Phase::Pending | Phase::Started | Phase::Processing => {
                        let deadline = *state
                            .deadline
                            .get_or_insert_with(|| now.saturating_add(millis(spec_timeout)));
                        match &state.receiver {
                            Some(node) if self.registry.contains(node) => {
                                self.registry.acquire(node, endpoint);
                                self.deadlines.insert((deadline, task));
                            }
                            _ => {
                                self.deadlines.insert((deadline, task.clone()));
                                lost.push(task);
                            }
                        }
                    }
                }
            }
        }
        for job in self.jobs.values_mut() {
            if job.status() == JobStatus::Running {
                self.running.insert((job.created_at, job.id.clone()));
            } else {
                job.finish_announced = true;
                let finished_at = job.last_update();
                job.finished_at = Some(finished_at);
                self.finished.insert((finished_at, job.id.clone()));
            }
        }
        for task in lost {
            self.attempt_failed(&task, now, "its node is no longer registered".to_owned());
        }
        Ok(())
    }
}
