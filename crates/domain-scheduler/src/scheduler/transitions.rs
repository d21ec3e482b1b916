//! The task state machine: how a task moves between phases (assigned, running, done,
//! failed, retried), and how ready tasks are matched to nodes and given their tokens.

use std::collections::HashSet;
use std::sync::Arc;

use domain_proto::protocols::STORE_V1;
use domain_proto::task::{Any, resource_recruitment::RecruitmentPolicy};
use rayon::prelude::*;

use crate::events::{Event, JobStatus};
use crate::registry::Needs;
use crate::token::{TokenError, TokenGrant, is_copy};

use super::{PARALLEL_SIGNING_CHUNK, Phase, Scheduler, TaskRef, TaskState, millis, no_node_reason};

impl Scheduler {
    /// Marks a task changed in this operation; returns its state.
    pub(super) fn touch(&mut self, task: &TaskRef, now: u64) -> Option<&mut TaskState> {
        let state = self
            .jobs
            .get_mut(&task.job)?
            .tasks
            .get_mut(task.position as usize)?;
        if !state.dirty {
            state.dirty = true;
            self.dirty_tasks.push(task.clone());
        }
        state.updated_at = now;
        Some(state)
    }

    pub(super) fn emit_task(&mut self, task: &TaskRef, reason: Option<String>) {
        if let Some(job) = self.jobs.get(&task.job) {
            let message = job.message(task.position as usize);
            self.outbox.push(Event::TaskChanged {
                task: message,
                reason,
            });
        }
    }

    pub(super) fn endpoint(&self, task: &TaskRef) -> Option<&str> {
        let job = self.jobs.get(&task.job)?;
        Some(
            job.request.tasks[task.position as usize]
                .capability_filters
                .endpoint
                .as_str(),
        )
    }

    /// Ends the running attempt of a task: frees its node's capacity and forgets its deadline.
    /// Returns the node it ran on.
    pub(super) fn end_attempt(&mut self, task: &TaskRef, now: u64) -> Option<Arc<str>> {
        let endpoint = self.endpoint(task)?.to_owned();
        let state = self.touch(task, now)?;
        let receiver = state.receiver.take();
        let deadline = state.deadline.take();
        if let Some(deadline) = deadline {
            self.deadlines.remove(&(deadline, task.clone()));
        }
        if let Some(node) = &receiver {
            self.registry.release(node, &endpoint);
        }
        receiver
    }

    pub(super) fn set_running_phase(
        &mut self,
        task: &TaskRef,
        phase: Phase,
        output: Option<Any>,
        now: u64,
    ) {
        if let Some(state) = self.touch(task, now) {
            state.phase = phase;
            if output.is_some() {
                state.output = output;
            }
            self.emit_task(task, None);
        }
    }

    pub(super) fn complete(&mut self, task: &TaskRef, output: Option<Any>, now: u64) {
        let node = self.end_attempt(task, now);
        let Some(state) = self.touch(task, now) else {
            return;
        };
        state.phase = Phase::Done;
        state.receiver = node.clone();
        state.err_msg.clear();
        if output.is_some() {
            state.output = output;
        }
        self.emit_task(task, None);
        let Some(job) = self.jobs.get_mut(&task.job) else {
            return;
        };
        if let Some(node) = &node {
            if job.request.tasks[task.position as usize]
                .capability_filters
                .endpoint
                == STORE_V1
            {
                self.holders.stored(&job.request.domain_id, node, now);
            }
        }
        job.unfinished -= 1;
        for &dependent in &job.dependents[task.position as usize] {
            let state = &mut job.tasks[dependent as usize];
            state.remaining_needs -= 1;
            if state.remaining_needs == 0 && state.phase == Phase::Queued {
                self.ready.push_back(TaskRef {
                    job: task.job.clone(),
                    position: dependent,
                });
            }
        }
        // A dependent's needs map changed: store it, so its record says which needs are DONE.
        let dependents = job.dependents[task.position as usize].clone();
        for dependent in dependents {
            self.touch(
                &TaskRef {
                    job: task.job.clone(),
                    position: dependent,
                },
                now,
            );
        }
        self.finish_job_if_done(&task.job);
    }

    /// An attempt failed (reported, timed out, node lost): RETRY while retries remain, else
    /// FAILED.
    pub(super) fn attempt_failed(&mut self, task: &TaskRef, now: u64, reason: String) {
        let node = self.end_attempt(task, now);
        let max_retries = self.config.max_retries;
        let Some(state) = self.touch(task, now) else {
            return;
        };
        let reason = match &node {
            Some(node) => format!("attempt on {node} failed: {reason}"),
            None => reason,
        };
        state.last_receiver = node.or(state.last_receiver.take());
        if state.retries >= max_retries {
            let reason = format!("{reason}; no retries left after {max_retries}");
            self.fail(task, now, reason);
        } else {
            state.retries += 1;
            state.phase = Phase::Retry;
            state.err_msg = reason.clone();
            self.emit_task(task, Some(reason));
            self.ready.push_back(task.clone());
        }
    }

    /// FAILED, and every task that needs it, directly or not.
    pub(super) fn fail(&mut self, task: &TaskRef, now: u64, reason: String) {
        let mut stack = vec![(task.position, reason)];
        while let Some((position, reason)) = stack.pop() {
            let current = TaskRef {
                job: task.job.clone(),
                position,
            };
            let Some(state) = self.touch(&current, now) else {
                return;
            };
            if state.phase.is_finished() {
                continue;
            }
            state.phase = Phase::Failed;
            state.err_msg = reason.clone();
            self.emit_task(&current, Some(reason));
            let Some(job) = self.jobs.get_mut(&task.job) else {
                return;
            };
            job.unfinished -= 1;
            job.failed += 1;
            let name = &job.request.tasks[position as usize].name;
            for &dependent in &job.dependents[position as usize] {
                stack.push((dependent, format!("needed task {name:?} failed")));
            }
        }
        self.finish_job_if_done(&task.job);
    }

    pub(super) fn finish_job_if_done(&mut self, job_id: &Arc<str>) {
        if let Some(job) = self.jobs.get_mut(job_id) {
            let status = job.status();
            if status != JobStatus::Running && !job.finish_announced {
                job.finish_announced = true;
                // The task that finished the job was just touched: its `updated_at` is now. One
                // pass over the job's tasks, once in its life.
                let finished_at = job.last_update();
                job.finished_at = Some(finished_at);
                self.running.remove(&(job.created_at, job_id.clone()));
                self.finished.insert((finished_at, job_id.clone()));
                self.outbox.push(Event::JobFinished {
                    job_id: job_id.to_string(),
                    status,
                });
            }
        }
    }

    /// Removes nodes from the registry and retries their running tasks elsewhere.
    ///
    /// One pass over the running tasks for all the nodes: a partition can take thousands of
    /// nodes away in one tick.
    pub(super) fn drop_nodes(
        &mut self,
        nodes: &[Arc<str>],
        now: u64,
        reason: impl Fn(&str) -> String,
    ) {
        let gone: HashSet<&str> = nodes.iter().map(|n| &**n).collect();
        let running: Vec<(TaskRef, String)> = self
            .deadlines
            .iter()
            .filter_map(|(_, task)| {
                let job = self.jobs.get(&task.job)?;
                let node = job.tasks[task.position as usize].receiver.as_deref()?;
                gone.contains(node).then(|| (task.clone(), reason(node)))
            })
            .collect();
        for (task, reason) in running {
            self.attempt_failed(&task, now, reason);
        }
        for node in nodes {
            self.registry.leave(node);
            self.holders.registration_changed(node);
            self.removed_nodes.push(node.to_string());
        }
    }

    /// Assigns every ready task a node, or parks it as WAITING_FOR_RESOURCE (policy FAIL: fails
    /// it). Waiting tasks are looked at again only when the registry gained room since.
    pub(super) fn schedule(&mut self, now: u64) {
        let mut candidates: Vec<TaskRef> = Vec::with_capacity(self.ready.len());
        if self.registry.generation() != self.waiting_generation && !self.waiting.is_empty() {
            candidates.extend(self.waiting.drain(..));
        }
        self.waiting_generation = self.registry.generation();
        candidates.extend(self.ready.drain(..));
        if candidates.is_empty() {
            return;
        }

        // Pick nodes, one task at a time (each pick changes the loads the next one sees).
        let mut plans: Vec<(TaskRef, Arc<str>)> = Vec::new();
        let mut unplaced: Vec<TaskRef> = Vec::new();
        // Endpoints with no node left with room, for tasks with no other condition.
        let mut exhausted: HashSet<&str> = HashSet::new();
        for task in candidates {
            let Some(job) = self.jobs.get(&task.job) else {
                continue;
            };
            let position = task.position as usize;
            let state = &job.tasks[position];
            let assignable = match state.phase {
                Phase::Queued => state.remaining_needs == 0,
                Phase::Waiting | Phase::Retry => true,
                _ => false,
            };
            if !assignable {
                continue;
            }
            let request = &job.request.tasks[position];
            let spec = &job.specs[position];
            let needs = Needs {
                endpoint: &request.capability_filters.endpoint,
                min_cpu: spec.min_cpu,
                min_gpu: spec.min_gpu,
                only: request.receiver.as_deref(),
                avoid: state.last_receiver.as_deref(),
            };
            let unconditional = needs.only.is_none() && needs.min_cpu == 0 && needs.min_gpu == 0;
            let node = if unconditional && exhausted.contains(needs.endpoint) {
                None
            } else {
                self.registry.pick(&needs)
            };
            match node {
                Some(node) => {
                    self.registry.acquire(&node, needs.endpoint);
                    plans.push((task, node));
                }
                None => {
                    if unconditional {
                        exhausted.insert(needs.endpoint);
                    }
                    unplaced.push(task);
                }
            }
        }
        drop(exhausted);

        let tokens = self.issue_tokens(&plans, now);
        for ((task, node), token) in plans.into_iter().zip(tokens) {
            match token {
                Ok(token) => self.assign(&task, node, token, now),
                // No retry: a domain whose key cannot be loaded or used fails every token the
                // same way, and the error names the cause for the submitter.
                Err(e) => {
                    if let Some(endpoint) = self.endpoint(&task).map(str::to_owned) {
                        self.registry.release(&node, &endpoint);
                    }
                    self.fail(&task, now, domain_proto::ErrorChain(&e).to_string());
                }
            }
        }

        for task in unplaced {
            let Some(job) = self.jobs.get(&task.job) else {
                continue;
            };
            let position = task.position as usize;
            let reason = no_node_reason(&job.request.tasks[position], &job.specs[position]);
            if job.specs[position].policy == RecruitmentPolicy::Fail {
                self.fail(&task, now, reason);
                continue;
            }
            if job.tasks[position].phase != Phase::Waiting {
                if let Some(state) = self.touch(&task, now) {
                    state.phase = Phase::Waiting;
                    state.err_msg = reason.clone();
                }
                self.emit_task(&task, Some(reason));
            }
            self.waiting.push_back(task);
        }
    }

    /// Signs the tokens of a pass, in parallel when there are many.
    pub(super) fn issue_tokens(
        &self,
        plans: &[(TaskRef, Arc<str>)],
        now: u64,
    ) -> Vec<Result<String, TokenError>> {
        let jobs = &self.jobs;
        let issuer = &*self.issuer;
        let issue = |(task, node): &(TaskRef, Arc<str>)| -> Option<Result<String, TokenError>> {
            let job = jobs.get(&task.job)?;
            let position = task.position as usize;
            let request = &job.request.tasks[position];
            let grant = TokenGrant {
                domain_id: &job.request.domain_id,
                job_id: &job.id,
                task_name: &request.name,
                sender: &request.sender,
                receiver: node,
                endpoint: &request.capability_filters.endpoint,
                issued_at: now,
                lifetime: domain_auth::lifetime_for_timeout(job.specs[position].timeout),
                copy: is_copy(request),
            };
            Some(issuer.issue(&grant))
        };
        let missing = |(task, _): &(TaskRef, Arc<str>)| {
            Err(TokenError {
                domain_id: String::new(),
                job_id: task.job.to_string(),
                task: format!("#{}", task.position),
                source: "the job vanished during scheduling".into(),
            })
        };
        if plans.len() < 2 * PARALLEL_SIGNING_CHUNK {
            plans
                .iter()
                .map(|p| issue(p).unwrap_or_else(|| missing(p)))
                .collect()
        } else {
            plans
                .par_iter()
                .with_min_len(PARALLEL_SIGNING_CHUNK)
                .map(|p| issue(p).unwrap_or_else(|| missing(p)))
                .collect()
        }
    }

    pub(super) fn assign(&mut self, task: &TaskRef, node: Arc<str>, token: String, now: u64) {
        let Some(timeout) = self
            .jobs
            .get(&task.job)
            .map(|j| j.specs[task.position as usize].timeout)
        else {
            return;
        };
        let deadline = now.saturating_add(millis(timeout));
        let Some(state) = self.touch(task, now) else {
            return;
        };
        state.phase = Phase::Pending;
        state.receiver = Some(node);
        state.deadline = Some(deadline);
        state.err_msg.clear();
        self.deadlines.insert((deadline, task.clone()));
        if let Some(job) = self.jobs.get(&task.job) {
            self.outbox.push(Event::TaskAssigned {
                submitter: job.submitter.clone(),
                task: job.message(task.position as usize),
                access_token: token,
            });
        }
    }
}
