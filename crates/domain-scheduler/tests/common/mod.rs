//! Helpers shared by the scheduler's integration tests: real redb stores and real domain keys
//! in temp dirs, and builders for nodes and jobs.

#![allow(dead_code)]

use std::path::Path;

use domain_auth::DomainKeyStore;
use domain_proto::discovery::{Capability, Node};
use domain_proto::task::{
    CapabilityFilters, JobRequest, ResourceRecruitment, Status, Task, TaskRequest,
    resource_recruitment::RecruitmentPolicy,
};
use domain_scheduler::{
    DomainKeyIssuer, Event, RedbStore, Scheduler, SchedulerConfig, SchedulerStore,
};
use tokio::sync::broadcast::{self, error::TryRecvError};

pub const DOMAIN: &str = "test-domain";
pub const MANAGER: &str = "manager";
pub const CLIENT: &str = "client";
pub const STORE: &str = "/store/v1";
pub const LOAD: &str = "/load/v1";

pub fn config() -> SchedulerConfig {
    SchedulerConfig {
        event_capacity: 100_000,
        ..SchedulerConfig::new(MANAGER)
    }
}

pub fn issuer(dir: &Path) -> Box<DomainKeyIssuer> {
    Box::new(DomainKeyIssuer::new(
        DomainKeyStore::open(dir.join("keys")).unwrap(),
    ))
}

/// A scheduler over an in-memory redb and real domain keys, with an event subscription.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub scheduler: Scheduler,
    pub events: broadcast::Receiver<Event>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(config())
    }

    pub fn with_config(config: SchedulerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Box<dyn SchedulerStore> = Box::new(RedbStore::in_memory().unwrap());
        let scheduler = Scheduler::open(config, store, issuer(dir.path()), 0).unwrap();
        let events = scheduler.subscribe();
        Self {
            dir,
            scheduler,
            events,
        }
    }

    /// Every event published since the last call.
    pub fn drain(&mut self) -> Vec<Event> {
        drain(&mut self.events)
    }

    /// The tasks assigned since the last drain, in order, as the submitter receives them.
    pub fn assigned(&mut self) -> Vec<Task> {
        self.drain()
            .iter()
            .filter_map(Event::task_for_submitter)
            .collect()
    }

    pub fn status(&self, job_id: &str, task: &str) -> Status {
        status(&self.scheduler, job_id, task)
    }

    /// `reporter` reports `status` for a task.
    pub fn report(&mut self, task: &Task, status: Status, reporter: &str, now: u64) {
        self.scheduler
            .report(&update(task, status), reporter, now)
            .unwrap();
    }

    /// The receiver runs the task to DONE.
    pub fn finish(&mut self, task: &Task, now: u64) {
        let receiver = task.receiver.clone().unwrap();
        self.report(task, Status::Started, &receiver, now);
        self.report(task, Status::Done, &receiver, now);
    }
}

pub fn drain(events: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => out.push(event),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("event stream: {e}"),
        }
    }
}

pub fn status(scheduler: &Scheduler, job_id: &str, task: &str) -> Status {
    let handler = scheduler.task(job_id, task).unwrap();
    Status::try_from(handler.task.status).unwrap()
}

/// A status report for `task`, as gossip carries it (no token).
pub fn update(task: &Task, status: Status) -> Task {
    Task {
        status: status as i32,
        access_token: None,
        ..task.clone()
    }
}

pub fn node(id: &str, endpoints: &[(&str, i32)]) -> Node {
    Node {
        id: id.into(),
        name: format!("{id}-name"),
        capabilities: endpoints
            .iter()
            .map(|(endpoint, capacity)| Capability {
                endpoint: (*endpoint).into(),
                capacity: *capacity,
            })
            .collect(),
        cpu: None,
        gpu: None,
    }
}

pub fn task(name: &str, endpoint: &str, needs: &[&str]) -> TaskRequest {
    TaskRequest {
        name: name.into(),
        capability_filters: CapabilityFilters {
            endpoint: endpoint.into(),
            min_gpu: None,
            min_cpu: None,
        },
        max_budget: None,
        timeout: "10s".into(),
        needs: needs.iter().map(|n| (*n).to_owned()).collect(),
        resource_recruitment: ResourceRecruitment {
            recruitment_policy: RecruitmentPolicy::Always as i32,
            termination_policy: 0,
        },
        sender: CLIENT.into(),
        receiver: None,
        data: None,
    }
}

pub fn job(name: &str, tasks: Vec<TaskRequest>) -> JobRequest {
    JobRequest {
        name: name.into(),
        tasks,
        nonce: "nonce".into(),
        domain_id: DOMAIN.into(),
    }
}

pub fn names(tasks: &[Task]) -> Vec<&str> {
    tasks.iter().map(|t| t.name.as_str()).collect()
}
