//! Task status reports on gossip (DESIGN §3, "Task updates").
//!
//! A stream handler hands each report to a bounded queue; one worker publishes
//! them in order on each job's topic, subscribing to it first (gossipsub forms
//! its mesh from subscribers) and leaving it once no task of the job runs here.
//! Jobs are published side by side: a report that waits for a topic's peers
//! (a job nobody follows, such as a task of a token signed elsewhere) never
//! holds back the reports of other jobs, which the manager needs to free the
//! node's capacity. Reports that no peer took (the manager was restarting) are
//! kept, bounded, and published again when a peer subscribes to their job's
//! topic.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use domain_auth::TaskClaims;
use domain_cluster::gossip::{GossipEvent, GossipEvents};
use domain_cluster::{ClusterError, ClusterHandle};
use domain_proto::task::{Status, Task};
use libp2p::gossipsub::PublishError;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Reports waiting for the worker before handlers wait.
pub const REPORT_QUEUE: usize = 1024;

/// Publishing attempts per report: the first right away, then after 100 ms,
/// 200 ms and 400 ms while no peer of the topic is known yet (the manager
/// subscribes before it hands out the token, so its subscription is usually
/// known) or their queues are full.
pub const PUBLISH_ATTEMPTS: u32 = 4;

/// Unpublished reports kept for a manager that comes back.
pub const MAX_UNSENT_REPORTS: usize = 1024;

const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Sends task status reports to the publishing worker. Cheap to clone; the
/// worker ends once every clone is dropped and the queue is drained.
#[derive(Debug, Clone)]
pub struct StatusReporter {
    queue: mpsc::Sender<Report>,
}

#[derive(Debug)]
struct Report {
    task: Task,
}

impl StatusReporter {
    /// Starts the worker that publishes through `cluster`; returns the reporter
    /// and the worker's task, which ends with the time of its last publication.
    #[must_use]
    pub fn start(cluster: ClusterHandle) -> (Self, JoinHandle<Option<Instant>>) {
        let (queue, reports) = mpsc::channel(REPORT_QUEUE);
        let worker = tokio::spawn(publish_reports(cluster, reports));
        (Self { queue }, worker)
    }

    /// Reports that the task that `claims` name is now in `status`.
    pub async fn report(&self, claims: &TaskClaims, status: Status) {
        let task = task_update(claims, status);
        if self.queue.send(Report { task }).await.is_err() {
            tracing::warn!(
                job = claims.job_id,
                task = claims.task_name,
                ?status,
                "status not reported: the node is shutting down"
            );
        }
    }
}

/// The gossiped form of a task's new status: what the verified claims say of
/// it, and no token.
#[must_use]
pub fn task_update(claims: &TaskClaims, status: Status) -> Task {
    Task {
        name: claims.task_name.clone(),
        receiver: Some(claims.receiver.clone()),
        endpoint: claims.endpoint.clone(),
        access_token: None,
        job_id: claims.job_id.clone(),
        sender: claims.sender.clone(),
        status: status as i32,
        output: None,
    }
}

fn is_final(status: i32) -> bool {
    matches!(Status::try_from(status), Ok(Status::Done | Status::Failed))
}

async fn publish_reports(
    cluster: ClusterHandle,
    mut reports: mpsc::Receiver<Report>,
) -> Option<Instant> {
    let mut events = cluster.gossip_events().ok();
    let mut worker = Worker {
        cluster,
        running: HashMap::new(),
        unsent: HashMap::new(),
        unsent_count: 0,
        last_published: None,
        in_flight: HashMap::new(),
        queued: 0,
        publishing: JoinSet::new(),
    };
    loop {
        tokio::select! {
            report = reports.recv() => match report {
                Some(Report { task }) => worker.report(task),
                None => break,
            },
            topic = next_subscription(&mut events) => worker.resend(&topic),
            Some(published) = worker.publishing.join_next(), if !worker.publishing.is_empty() => {
                worker.published(published).await;
            }
        }
    }
    // What is queued still goes out before the worker ends.
    while let Some(published) = worker.publishing.join_next().await {
        worker.published(published).await;
    }
    worker.last_published
}

/// The topic of the next remote subscription; never, once the swarm has stopped.
async fn next_subscription(events: &mut Option<GossipEvents>) -> String {
    loop {
        let Some(subscriber) = events.as_mut() else {
            return std::future::pending().await;
        };
        match subscriber.recv().await {
            Ok(GossipEvent::Subscribed { topic, .. }) => return topic,
            Ok(_) | Err(ClusterError::GossipLagged { .. }) => {}
            Err(_) => *events = None,
        }
    }
}

struct Worker {
    cluster: ClusterHandle,
    /// Tasks reported started and not yet ended, per job: the node stays on a
    /// job's topic while any runs. Bounded by the streams a node serves at once.
    running: HashMap<String, usize>,
    /// Reports nobody took (the manager was restarting), per job, latest per
    /// task: published again when a peer subscribes to the job's topic, as a
    /// restarted manager does for every active job.
    unsent: HashMap<String, Vec<Task>>,
    unsent_count: usize,
    last_published: Option<Instant>,
    /// Jobs with a report being published, and the reports of each waiting
    /// behind it: a job's reports go out in order, jobs side by side.
    in_flight: HashMap<String, VecDeque<Task>>,
    /// Reports waiting in `in_flight`, at most [`REPORT_QUEUE`].
    queued: usize,
    publishing: JoinSet<(Task, Result<(), ClusterError>)>,
}

impl Worker {
    fn report(&mut self, task: Task) {
        let job_id = task.job_id.clone();
        if is_final(task.status) {
            let left = self.running.get_mut(&job_id).map(|n| {
                *n = n.saturating_sub(1);
                *n
            });
            if left == Some(0) {
                // The topic is left once this job's last report is out.
                self.running.remove(&job_id);
            }
        } else {
            *self.running.entry(job_id).or_default() += 1;
        }
        self.send(task);
    }

    /// Publishes `task` after the reports of its job already queued.
    fn send(&mut self, task: Task) {
        match self.in_flight.get_mut(&task.job_id) {
            Some(waiting) if self.queued < REPORT_QUEUE => {
                waiting.push_back(task);
                self.queued += 1;
            }
            Some(_) => self.keep_unsent(task),
            None => {
                self.in_flight.insert(task.job_id.clone(), VecDeque::new());
                self.spawn(task);
            }
        }
    }

    fn spawn(&mut self, task: Task) {
        let cluster = self.cluster.clone();
        self.publishing.spawn(async move {
            let result = publish(&cluster, &task).await;
            (task, result)
        });
    }

    /// One publication ended: the next report of its job goes, or, with none
    /// left and no task of the job running here, the node leaves its topic.
    async fn published(
        &mut self,
        published: Result<(Task, Result<(), ClusterError>), tokio::task::JoinError>,
    ) {
        let Ok((task, result)) = published else {
            return;
        };
        match result {
            Ok(()) => self.last_published = Some(Instant::now()),
            Err(error) => {
                tracing::warn!(
                    job = task.job_id,
                    task = task.name,
                    status = ?task.status(),
                    %error,
                    "task status not published; kept for when the manager follows the job again"
                );
                self.keep_unsent(task.clone());
            }
        }
        let job_id = task.job_id;
        let next = self
            .in_flight
            .get_mut(&job_id)
            .and_then(VecDeque::pop_front);
        match next {
            Some(next) => {
                self.queued -= 1;
                self.spawn(next);
            }
            None => {
                self.in_flight.remove(&job_id);
                if !self.running.contains_key(&job_id) {
                    self.leave(&job_id).await;
                }
            }
        }
    }

    fn resend(&mut self, topic: &str) {
        let Some(tasks) = self.unsent.remove(topic) else {
            return;
        };
        self.unsent_count -= tasks.len();
        tracing::info!(
            job = topic,
            reports = tasks.len(),
            "a peer joined the job's topic; publishing the reports it missed"
        );
        // The topic is left once they are out, unless a task of the job runs.
        for task in tasks {
            self.send(task);
        }
    }

    fn keep_unsent(&mut self, task: Task) {
        let tasks = self.unsent.entry(task.job_id.clone()).or_default();
        if let Some(earlier) = tasks.iter_mut().find(|t| t.name == task.name) {
            *earlier = task;
        } else if self.unsent_count < MAX_UNSENT_REPORTS {
            tasks.push(task);
            self.unsent_count += 1;
        } else {
            tracing::warn!(
                job = task.job_id,
                task = task.name,
                "too many unpublished reports; dropping this one"
            );
        }
    }

    async fn leave(&self, job_id: &str) {
        if let Err(error) = self.cluster.unsubscribe(job_id).await {
            tracing::debug!(job = job_id, %error, "cannot leave the job's topic");
        }
    }
}

async fn publish(cluster: &ClusterHandle, task: &Task) -> Result<(), ClusterError> {
    cluster.subscribe(&task.job_id).await?;
    let mut delay = FIRST_RETRY;
    let mut attempt = 1;
    loop {
        match cluster.publish_task_update(&task.job_id, task).await {
            Ok(()) => {
                tracing::debug!(job = task.job_id, task = task.name, status = ?task.status(), "task status published");
                return Ok(());
            }
            // Right after subscribing, the topic's other peers may not be known yet.
            Err(ClusterError::Publish {
                source: PublishError::NoPeersSubscribedToTopic | PublishError::AllQueuesFull(_),
                ..
            }) if attempt < PUBLISH_ATTEMPTS => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}
