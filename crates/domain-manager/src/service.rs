//! [`Manager`]: starts the swarm and the scheduler thread, serves the manager's protocols, and
//! stops them all.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use domain_auth::{DomainKeyStore, PublicKey};
use domain_capabilities::{Limits, PublicKeySource, serve_public_key};
use domain_cluster::addr::{is_loopback, is_plain_tcp};
use domain_cluster::config::{ClusterConfig, PeerGate, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{
    Cluster, ClusterError, ClusterHandle, ClusterStream, IncomingStreams, Multiaddr, PeerId,
};
use domain_proto::discovery::{
    HoldersRequest, HoldersResponse, JoinClusterRequest, JoinClusterResponse, Node,
};
use domain_proto::protocols::{
    HOLDERS_V1, JOBS_V1, JOIN_V1, MAX_STATUS_FRAME, MAX_STATUS_REPORTS, MONITOR_ACK, MONITOR_V1,
    PUBLIC_KEY_V1, TASK_STATUS_V1,
};
use domain_proto::task::{Code, Job, JobRequest, Status, SubmitJobResponse, Task};
use domain_proto::{
    DEFAULT_MAX_FRAME, read_frame, read_message, read_message_or_eof, wire, write_message,
};
use domain_scheduler::{
    DomainKeyIssuer, Event, HoldersChange, MAX_CAPABILITIES, MAX_REPORTED_DOMAINS, RedbStore,
    Scheduler, SchedulerConfig, SchedulerError, TokenError, TokenGrant, TokenIssuer,
    submit_response,
};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::admission::{Admission, NodesFile};
use crate::config::ManagerConfig;
use crate::core::{Core, HoldersNow, JobView, Outbound, Request, Submission, Watch};
use crate::domains::{DomainPolicy, DomainsFile, Refusal};
use crate::error::ManagerError;
use crate::replication;

/// Requests queued for the scheduler thread before their senders wait.
const REQUEST_QUEUE: usize = 1024;

/// Scheduler events queued for the dispatcher before the scheduler thread waits.
const OUTBOUND_QUEUE: usize = 4096;

/// Job changes kept for each monitor before it lags (and is sent every job again).
const VIEW_QUEUE: usize = 1024;

/// Holder changes kept for each `/holders/v1` follower before it lags (and is sent its
/// domain's holders again).
const HOLDER_CHANGE_QUEUE: usize = 256;

/// The largest `/holders/v1` request: a domain id of at most 256 bytes and a flag.
const MAX_HOLDERS_REQUEST: usize = 1024;

/// Events of one scheduler operation kept before the oldest are lost (see `Core::dispatch`).
const EVENT_QUEUE: usize = 16 * 1024;

/// Streams of one protocol served at once; more are dropped as they arrive.
pub const MAX_STREAMS_PER_PROTOCOL: usize = 1024;

/// Streams of one protocol served at once for one peer, so that no peer holds every slot
/// of [`MAX_STREAMS_PER_PROTOCOL`] (a gateway node runs many jobs at once; a client, a few).
pub const MAX_STREAMS_PER_PEER: usize = 64;

/// Streams of one protocol served at once for peers the manager does not know (on no
/// allow-list, not admitted): besides the known peers' [`MAX_STREAMS_PER_PROTOCOL`], never
/// from them. A stream past this many ends the oldest.
pub const MAX_STRANGER_STREAMS: usize = 128;

/// Streams of one protocol served at once for one peer the manager does not know: a node
/// joining with an invite, a peer asking a public key, needs one.
pub const MAX_STRANGER_STREAMS_PER_PEER: usize = 4;

/// Streams an unknown peer may open past its share of a protocol before it is banned.
pub const STRANGER_REFUSALS_BEFORE_BAN: u32 = 16;

/// How long an unknown peer that floods a protocol is refused.
pub const STRANGER_BAN: Duration = Duration::from_secs(10 * 60);

/// The longest a stream's request may take to arrive (or the manager's request timeout,
/// when shorter): every request is one small frame.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A `/monitor/v1` frame carries tasks up to about this many encoded bytes, well under the
/// 4 MiB frame limit; a larger job is sent as several frames of the same job.
const MONITOR_FRAME_BUDGET: usize = 1024 * 1024;

/// A running domain manager.
///
/// [`start`](Self::start) opens the state in the data folder, starts the swarm
/// ([`Role::Manager`](domain_cluster::config::Role::Manager): Kademlia server, relay server, gossip) and serves `/join/v1`,
/// `/jobs/v1`, `/monitor/v1` and `/public-key/v1`; [`shutdown`](Self::shutdown) stops it.
/// Dropping it without `shutdown` stops serving but leaves the swarm to end with the runtime.
pub struct Manager {
    cluster: ClusterHandle,
    cluster_task: Option<JoinHandle<()>>,
    requests: Option<mpsc::Sender<Request>>,
    tasks: Vec<JoinHandle<()>>,
    core_done: Option<oneshot::Receiver<Result<(), SchedulerError>>>,
    addrs: Vec<Multiaddr>,
    policy: Arc<DomainPolicy>,
    data_dir: PathBuf,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("peer_id", &self.cluster.local_peer_id())
            .field("addrs", &self.addrs)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What every stream handler shares.
struct Shared {
    requests: mpsc::Sender<Request>,
    policy: Arc<DomainPolicy>,
    /// Who may join; its file is read and written under its own lock, off the async workers.
    admission: Arc<std::sync::Mutex<Admission>>,
    request_timeout: Duration,
    tokens_per_task: usize,
    max_tokens_per_job: usize,
    max_tasks_per_job: usize,
}

/// Whether `peer` is an admitted node or on an allow-list (everyone, when open).
fn knows(policy: &DomainPolicy, admission: &std::sync::Mutex<Admission>, peer: &PeerId) -> bool {
    policy.knows(peer) || lock(admission).admits(peer)
}

/// The admissions, read or changed in place: a holder that panicked left them whole
/// (they change only by whole-file reloads and single inserts).
fn lock(admission: &std::sync::Mutex<Admission>) -> std::sync::MutexGuard<'_, Admission> {
    admission.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Whether `peer` is an admitted node or on an allow-list (everyone, when open).
    fn knows(&self, peer: &PeerId) -> bool {
        knows(&self.policy, &self.admission, peer)
    }

    /// The deadline of a stream's first request.
    fn first_request_timeout(&self) -> Duration {
        self.request_timeout.min(FIRST_REQUEST_TIMEOUT)
    }
}

impl Manager {
    /// Opens the manager's state in `config.data_dir` (created if missing), starts listening,
    /// and serves until [`shutdown`](Self::shutdown).
    ///
    /// Declared domains get their key now, so `/public-key/v1` serves them from the start.
    ///
    /// # Errors
    /// [`ManagerError::DataDir`], [`ManagerError::Config`] for a bad domain list or key folder,
    /// [`ManagerError::Identity`], [`ManagerError::Scheduler`] when the scheduler database
    /// cannot be opened (locked by another manager, corrupt), [`ManagerError::Cluster`] when an
    /// address cannot be listened on.
    pub async fn start(config: ManagerConfig) -> Result<Self, ManagerError> {
        domain_auth::open_private_dir(&config.data_dir).map_err(ManagerError::DataDir)?;
        let stored = DomainsFile::load(&config.data_dir)?;
        let policy = Arc::new(DomainPolicy::from_specs(
            stored.domain.iter().chain(&config.domains),
        )?);
        let admission = Admission::load(&config.data_dir, config.nodes.clone(), policy.is_open())?;
        if admission.is_open() {
            if let Some(addr) = config.listen.iter().find(|addr| !is_loopback(addr)) {
                if !config.open {
                    return Err(ManagerError::OpenBeyondLoopback { addr: addr.clone() });
                }
                tracing::warn!(
                    %addr,
                    "OPEN MODE (--open) beyond loopback: any peer that reaches this address may \
                     join as a node and submit jobs for any domain"
                );
            }
            tracing::warn!(
                "no domain is declared and no node admitted: any node may join and any peer \
                 submit jobs for any domain (declare domains with `domain-manager domain create` \
                 and admit nodes with `domain-manager node allow` or `node invite`)"
            );
        } else if config.nodes.is_empty() && NodesFile::load(&config.data_dir)?.admitted.is_empty()
        {
            tracing::warn!(
                "no node is admitted: every node is refused until you run \
                 `domain-manager node allow PEER_ID` or give it an invite (`domain-manager node invite`)"
            );
        }
        let identity = Identity::load_or_create(config.identity_path())?;
        let keys = DomainKeyStore::open(config.keys_dir()).map_err(crate::ConfigError::from)?;
        for domain in policy.domains() {
            keys.key(domain).map_err(crate::ConfigError::from)?;
        }
        let issuer = Arc::new(DomainKeyIssuer::new(keys));

        let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let (outbound_tx, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (views, _) = broadcast::channel(VIEW_QUEUE);
        let core_done = start_core(
            &config,
            identity.peer_id(),
            Arc::clone(&issuer),
            outbound_tx,
            views,
            requests_rx,
        )
        .await?;

        let admission = Arc::new(std::sync::Mutex::new(admission));
        let mut cluster_config = ClusterConfig::new(identity, Role::Manager)
            .with_listen_addrs(config.listen.iter().cloned());
        cluster_config.request_timeout = config.request_timeout;
        // The relay carries the known peers' traffic only: nodes reserve, known peers reach
        // them through it.
        cluster_config.relay_limits.serves = Some(PeerGate::new({
            let (policy, admission) = (Arc::clone(&policy), Arc::clone(&admission));
            move |peer| knows(&policy, &admission, peer)
        }));
        let (cluster, cluster_task) = Cluster::start(cluster_config)?;

        // A registry from an earlier run may name nodes that are no longer admitted.
        let (reply, registered) = oneshot::channel();
        let _ = requests_tx.send(Request::Nodes { reply }).await;
        let expelled: Vec<String> = registered
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|node| node.id)
            .filter(|id| id.parse().is_ok_and(|peer| !lock(&admission).admits(&peer)))
            .collect();
        if !expelled.is_empty() {
            let _ = requests_tx.send(Request::Expel { nodes: expelled }).await;
        }
        let shared = Arc::new(Shared {
            requests: requests_tx.clone(),
            policy: Arc::clone(&policy),
            admission,
            request_timeout: config.request_timeout,
            tokens_per_task: config.max_retries.saturating_add(1) as usize,
            max_tasks_per_job: config.max_tasks_per_job,
            max_tokens_per_job: config
                .max_tasks_per_job
                .saturating_mul(config.max_retries.saturating_add(1) as usize)
                .max(1),
        });
        let keys = Arc::new(ServedKeys {
            issuer,
            policy: Arc::clone(&policy),
        });
        let mut tasks = vec![
            tokio::spawn(dispatch(outbound_rx)),
            tokio::spawn(tick(requests_tx.clone(), config.tick_interval)),
        ];
        let accepted = (|| -> Result<_, ClusterError> {
            Ok([
                (cluster.accept(JOIN_V1)?, JOIN_V1),
                (cluster.accept(JOBS_V1)?, JOBS_V1),
                (cluster.accept(MONITOR_V1)?, MONITOR_V1),
                (cluster.accept(HOLDERS_V1)?, HOLDERS_V1),
                (cluster.accept(TASK_STATUS_V1)?, TASK_STATUS_V1),
                (cluster.accept(PUBLIC_KEY_V1)?, PUBLIC_KEY_V1),
            ])
        })();
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tasks.iter().for_each(JoinHandle::abort);
                let _ = cluster.shutdown().await;
                return Err(e.into());
            }
        };
        for (incoming, protocol) in accepted {
            let shared = Arc::clone(&shared);
            let keys = Arc::clone(&keys);
            let knows = Arc::clone(&shared);
            tasks.push(tokio::spawn(serve_protocol(
                incoming,
                protocol,
                move |peer| knows.knows(peer),
                cluster.clone(),
                move |peer, stream| {
                    let shared = Arc::clone(&shared);
                    let keys = Arc::clone(&keys);
                    async move {
                        match protocol {
                            JOIN_V1 => serve_join(&shared, peer, stream).await,
                            JOBS_V1 => serve_jobs(&shared, peer, stream).await,
                            MONITOR_V1 => serve_monitor(&shared, peer, stream).await,
                            HOLDERS_V1 => serve_holders(&shared, peer, stream).await,
                            TASK_STATUS_V1 => serve_status(&shared, peer, stream).await,
                            _ => serve_key(&shared, &keys, peer, stream).await,
                        }
                    }
                },
            )));
        }
        let addrs = match cluster.listen_addrs().await {
            Ok(addrs) => addrs,
            Err(e) => {
                tasks.iter().for_each(JoinHandle::abort);
                let _ = cluster.shutdown().await;
                return Err(e.into());
            }
        };
        tracing::info!(peer = %cluster.local_peer_id(), "manager started");
        Ok(Self {
            cluster,
            cluster_task: Some(cluster_task),
            requests: Some(requests_tx),
            tasks,
            core_done: Some(core_done),
            addrs,
            policy,
            data_dir: config.data_dir.clone(),
        })
    }

    /// The manager's data folder (where `domain-manager node allow` and `domain create`
    /// write: see [`admit_node`](crate::admit_node)).
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The manager's peer id.
    #[must_use]
    pub fn peer_id(&self) -> PeerId {
        self.cluster.local_peer_id()
    }

    /// The manager's swarm.
    #[must_use]
    pub fn cluster(&self) -> &ClusterHandle {
        &self.cluster
    }

    /// Every address the manager listens on, each ending with `/p2p/<its peer id>`.
    #[must_use]
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.addrs
    }

    /// The first plain TCP address (not WebSocket, not relayed): the one to give nodes and
    /// clients, printed on the `ready` line.
    #[must_use]
    pub fn tcp_addr(&self) -> Option<&Multiaddr> {
        self.addrs.iter().find(|a| is_plain_tcp(a))
    }

    /// The domains served and who may submit to them.
    #[must_use]
    pub fn policy(&self) -> &DomainPolicy {
        &self.policy
    }

    /// A job's state (no tokens), or `None` for an unknown job.
    ///
    /// # Errors
    /// [`ManagerError::Stopped`].
    pub async fn job(&self, job_id: &str) -> Result<Option<Job>, ManagerError> {
        let job_id = job_id.to_owned();
        self.ask(|reply| Request::Job { job_id, reply }).await
    }

    /// The registered nodes, in id order.
    ///
    /// # Errors
    /// [`ManagerError::Stopped`].
    pub async fn nodes(&self) -> Result<Vec<Node>, ManagerError> {
        self.ask(|reply| Request::Nodes { reply }).await
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ManagerError> {
        let requests = self.requests.as_ref().ok_or(ManagerError::Stopped)?;
        ask(requests, request).await.ok_or(ManagerError::Stopped)
    }

    /// Resolves when the manager stops by itself: its scheduler failed (a store error) or its
    /// swarm ended. Never resolves while it runs well; call it at most once.
    ///
    /// # Errors
    /// The failure: [`ManagerError::Scheduler`], or [`ManagerError::Stopped`].
    pub async fn stopped(&mut self) -> Result<(), ManagerError> {
        let core = async {
            match self.core_done.as_mut() {
                Some(done) => done.await,
                None => std::future::pending().await,
            }
        };
        let swarm = async {
            match self.cluster_task.as_mut() {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            outcome = core => {
                self.core_done = None;
                match outcome {
                    Ok(Ok(())) => Err(ManagerError::Stopped),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(ManagerError::Stopped),
                }
            }
            _ = swarm => {
                self.cluster_task = None;
                Err(ManagerError::Stopped)
            }
        }
    }

    /// Stops gracefully: stops accepting streams and gossip, lets the scheduler finish the
    /// operation in progress (every operation is committed before it is announced), then closes
    /// the swarm.
    ///
    /// # Errors
    /// [`ManagerError::Scheduler`] when the scheduler had failed.
    pub async fn shutdown(mut self) -> Result<(), ManagerError> {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        // The thread ends once the last request sender is gone.
        self.requests = None;
        let outcome = match self.core_done.take() {
            Some(done) => done.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        let _ = self.cluster.shutdown().await;
        if let Some(task) = self.cluster_task.take() {
            let _ = task.await;
        }
        tracing::info!("manager stopped");
        outcome.map_err(ManagerError::from)
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the scheduler thread and waits for the scheduler to open.
async fn start_core(
    config: &ManagerConfig,
    peer: PeerId,
    issuer: Arc<DomainKeyIssuer>,
    outbound: mpsc::Sender<Outbound>,
    views: broadcast::Sender<Arc<JobView>>,
    requests: mpsc::Receiver<Request>,
) -> Result<oneshot::Receiver<Result<(), SchedulerError>>, ManagerError> {
    let mut scheduler_config = SchedulerConfig::new(peer.to_string());
    scheduler_config.node_timeout = config.node_timeout;
    scheduler_config.max_retries = config.max_retries;
    scheduler_config.max_tasks_per_job = config.max_tasks_per_job;
    scheduler_config.event_capacity = EVENT_QUEUE;
    scheduler_config.finished_ttl = config.keep_finished;
    scheduler_config.max_finished_jobs = config.max_finished_jobs;
    let path = config.scheduler_path();
    let (opened_tx, opened) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || {
            let open = || -> Result<Scheduler, SchedulerError> {
                let store = RedbStore::open(&path)?;
                Scheduler::open(
                    scheduler_config,
                    Box::new(store),
                    Box::new(SharedIssuer(Arc::clone(&issuer))),
                    crate::core::now_ms(),
                )
            };
            let scheduler = match open() {
                Ok(scheduler) => scheduler,
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            let _ = opened_tx.send(Ok(()));
            let core = Core {
                events: scheduler.subscribe(),
                scheduler,
                issuer,
                outbound,
                views,
                holder_changes: broadcast::channel(HOLDER_CHANGE_QUEUE).0,
            };
            let _ = done_tx.send(core.run(requests));
        })
        .map_err(ManagerError::Thread)?;
    match opened.await {
        Ok(Ok(())) => Ok(done),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ManagerError::Stopped),
    }
}

/// Lets the scheduler and the manager share one [`DomainKeyIssuer`].
struct SharedIssuer(Arc<DomainKeyIssuer>);

impl TokenIssuer for SharedIssuer {
    fn issue(&self, grant: &TokenGrant<'_>) -> Result<String, TokenError> {
        self.0.issue(grant)
    }
}

/// Sends a request to the scheduler thread and waits for its answer; `None` once it has stopped.
async fn ask<T>(
    requests: &mpsc::Sender<Request>,
    request: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    requests.send(request(reply)).await.ok()?;
    answer.await.ok()
}

/// Drives the scheduler's clock. A tick that finds the queue full is skipped: the scheduler is
/// busy, and the next one does the same work.
async fn tick(requests: mpsc::Sender<Request>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(mpsc::error::TrySendError::Closed(_)) = requests.try_send(Request::Tick) {
            return;
        }
    }
}

/// Routes each token to its submitter's stream, and each task that failed for good too, in
/// the order the scheduler made them. Nothing of a job goes on gossip: a job's topic and
/// its updates would reach every peer that asks (see `/task-status/v1`).
async fn dispatch(mut outbound: mpsc::Receiver<Outbound>) {
    let mut submitters: HashMap<String, mpsc::Sender<Task>> = HashMap::new();
    while let Some(item) = outbound.recv().await {
        match item {
            Outbound::Attach { job_id, tokens } => {
                submitters.insert(job_id, tokens);
            }
            Outbound::Event(event) => match event.as_ref() {
                Event::TaskAssigned { task, .. } => {
                    if let (Some(with_token), Some(submitter)) =
                        (event.task_for_submitter(), submitters.get(&task.job_id))
                    {
                        match submitter.try_send(with_token) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                tracing::warn!(job = %task.job_id, "submitter does not read its tokens; closing its stream");
                                submitters.remove(&task.job_id);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                submitters.remove(&task.job_id);
                            }
                        }
                    }
                }
                Event::TaskChanged { task, reason } => {
                    if let Some(reason) = reason {
                        tracing::info!(job = %task.job_id, task = %task.name, status = task.status, "{reason}");
                    }
                    // A task that failed for good reaches its submitter too, so that a
                    // client waiting for its assignment (a task pinned to a node that is
                    // gone) learns at once rather than when the job ends.
                    if task.status() == Status::Failed {
                        if let Some(submitter) = submitters.get(&task.job_id) {
                            if submitter.try_send(task.clone()).is_err() {
                                submitters.remove(&task.job_id);
                            }
                        }
                    }
                }
                Event::JobFinished { job_id, status } => {
                    tracing::info!(job = %job_id, ?status, "job finished");
                    // Dropping the sender ends the submitter's stream.
                    submitters.remove(job_id);
                }
                _ => {}
            },
        }
    }
}

/// `/task-status/v1`: hands each `Task` frame to the scheduler as a report of `peer`, which
/// it believes only from the task's sender or receiver; closes the stream once all are in
/// its queue.
async fn serve_status(shared: &Shared, peer: PeerId, stream: ClusterStream) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    for _ in 0..MAX_STATUS_REPORTS {
        let next = tokio::time::timeout(
            shared.first_request_timeout(),
            read_message_or_eof::<Task, _>(&mut reader, MAX_STATUS_FRAME),
        )
        .await;
        let task = match next {
            Ok(Ok(Some(task))) => task,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "bad {TASK_STATUS_V1} report: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "no {TASK_STATUS_V1} report in time");
                return;
            }
        };
        let report = Request::Report {
            task,
            reporter: peer.to_string(),
        };
        if shared.requests.send(report).await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(shared.request_timeout, writer.shutdown()).await;
}

/// Accepts the streams of one protocol, each served by a task of its own. A peer the
/// manager knows (`known`: an admitted node, a peer on an allow-list) has a share of
/// [`MAX_STREAMS_PER_PEER`] among [`MAX_STREAMS_PER_PROTOCOL`]; a stranger (a node
/// presenting an invite, a peer asking a public key, anyone else) one of
/// [`MAX_STRANGER_STREAMS_PER_PEER`] among [`MAX_STRANGER_STREAMS`], where a new stream
/// ends the oldest when all are taken: many fresh identities together can neither take the
/// known peers' streams nor keep a newcomer out for long. Aborting it aborts every stream
/// it serves.
async fn serve_protocol<F, Fut, K>(
    mut incoming: IncomingStreams,
    protocol: &'static str,
    known: K,
    cluster: ClusterHandle,
    serve: F,
) where
    F: Fn(PeerId, ClusterStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    K: Fn(&PeerId) -> bool,
{
    // Streams of each stranger dropped for being past its share: a peer that keeps
    // opening them is flooding, and is banned.
    let mut refused: HashMap<PeerId, u32> = HashMap::new();
    let mut running = JoinSet::new();
    let mut peer_of = HashMap::new();
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    let mut known_running = 0_usize;
    // The strangers' streams, oldest first.
    let mut strangers: VecDeque<(tokio::task::Id, AbortHandle)> = VecDeque::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { return };
                let is_known = known(&peer);
                let held = per_peer.get(&peer).copied().unwrap_or(0);
                if is_known {
                    if known_running >= MAX_STREAMS_PER_PROTOCOL {
                        tracing::warn!(%peer, protocol, "too many streams; dropping one");
                        continue;
                    }
                    if held >= MAX_STREAMS_PER_PEER {
                        tracing::warn!(%peer, protocol, "too many streams from one peer; dropping one");
                        continue;
                    }
                } else {
                    if held >= MAX_STRANGER_STREAMS_PER_PEER {
                        tracing::debug!(%peer, protocol, "too many streams from one unknown peer; dropping one");
                        if refused.len() >= MAX_STRANGER_STREAMS * 32 {
                            refused.clear();
                        }
                        let count = refused.entry(peer).or_default();
                        *count += 1;
                        if *count == STRANGER_REFUSALS_BEFORE_BAN {
                            refused.remove(&peer);
                            tracing::warn!(%peer, protocol, ?STRANGER_BAN, "an unknown peer keeps opening streams past its share; banning it");
                            let cluster = cluster.clone();
                            tokio::spawn(async move { cluster.ban(peer, STRANGER_BAN).await });
                        }
                        continue;
                    }
                    if strangers.len() >= MAX_STRANGER_STREAMS {
                        if let Some((_, oldest)) = strangers.pop_front() {
                            tracing::debug!(protocol, "streams of unknown peers at their limit; ending the oldest");
                            oldest.abort();
                        }
                    }
                }
                *per_peer.entry(peer).or_default() += 1;
                let task = running.spawn(serve(peer, stream));
                peer_of.insert(task.id(), (peer, is_known));
                match is_known {
                    true => known_running += 1,
                    false => strangers.push_back((task.id(), task)),
                }
            }
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(error) => error.id(),
                };
                let Some((peer, is_known)) = peer_of.remove(&id) else { continue };
                if let Some(held) = per_peer.get_mut(&peer) {
                    *held -= 1;
                    if *held == 0 {
                        per_peer.remove(&peer);
                    }
                }
                if is_known {
                    known_running -= 1;
                } else if let Some(at) = strangers.iter().position(|(task, _)| *task == id) {
                    strangers.remove(at);
                }
            }
        }
    }
}

/// `/join/v1`: registers the node (or counts its heartbeat) and answers; a node that claims
/// another peer's id, or that the registry refuses, loses its stream without an answer.
async fn serve_join(shared: &Shared, peer: PeerId, mut stream: ClusterStream) {
    let frame = tokio::time::timeout(
        shared.first_request_timeout(),
        read_frame(&mut stream, DEFAULT_MAX_FRAME),
    )
    .await;
    let frame = match frame {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "bad {JOIN_V1} request: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no {JOIN_V1} request in time");
            return;
        }
    };
    // Too large to build: refused from its encoding, and the node hears why.
    if let Err(reason) = check_join_shape(frame.body()) {
        tracing::warn!(%peer, "refused a join: {reason}");
        let answer = JoinClusterResponse {
            replication: Default::default(),
            err_msg: Some(reason),
        };
        let _ =
            tokio::time::timeout(shared.request_timeout, write_message(&mut stream, &answer)).await;
        return;
    }
    let (node, holdings, invite) = match frame.decode::<JoinClusterRequest>() {
        Ok(request) => (request.node, request.holdings, request.invite),
        Err(e) => {
            tracing::debug!(%peer, "bad {JOIN_V1} request: {e}");
            return;
        }
    };
    if node.id != peer.to_string() {
        tracing::warn!(%peer, claimed = %node.id, "refused a join: the node id is not the peer's");
        return;
    }
    let admission = Arc::clone(&shared.admission);
    let checked =
        tokio::task::spawn_blocking(move || lock(&admission).check_join(&peer, invite.as_deref()))
            .await;
    let answer = match checked {
        Ok(Ok(())) => {
            let join = |reply| Request::Join {
                node,
                holdings,
                reply,
            };
            match ask(&shared.requests, join).await {
                Some(Ok(())) => JoinClusterResponse {
                    replication: shared.policy.replicated().clone().into_iter().collect(),
                    err_msg: None,
                },
                Some(Err(e)) => {
                    tracing::warn!(%peer, "refused a join: {e}");
                    return;
                }
                None => return,
            }
        }
        Ok(Err(refusal)) => {
            tracing::warn!(%peer, "refused a join: {refusal}");
            // A node revoked since it registered leaves now, not at its timeout.
            let expel = Request::Expel {
                nodes: vec![peer.to_string()],
            };
            if shared.requests.send(expel).await.is_err() {
                return;
            }
            JoinClusterResponse {
                replication: Default::default(),
                err_msg: Some(refusal.to_string()),
            }
        }
        Err(e) => {
            tracing::warn!(%peer, "the admission check failed: {e}");
            return;
        }
    };
    let answered = tokio::time::timeout(shared.request_timeout, async {
        write_message(&mut stream, &answer).await?;
        stream
            .shutdown()
            .await
            .map_err(domain_proto::FrameError::from)
    })
    .await;
    if !matches!(answered, Ok(Ok(()))) {
        tracing::debug!(%peer, "could not answer a join");
    }
}

/// Answers a job request with BadRequest and `reason`, then closes the stream; a submitter
/// that cannot take the answer loses nothing it was owed.
async fn refuse_job<W: AsyncWrite + Unpin>(shared: &Shared, writer: &mut W, reason: String) {
    let response = SubmitJobResponse {
        code: Code::BadRequest as i32,
        job_id: String::new(),
        err_msg: reason,
    };
    let _ = send_frame(shared, writer, &response).await;
    let _ = writer.shutdown().await;
}

/// Dependencies (`needs`) one task of a job may name.
const MAX_NEEDS_PER_TASK: usize = 256;

/// Refuses, from its encoding, a `JobRequest` with more tasks than a job may hold or a task
/// with more dependencies than [`MAX_NEEDS_PER_TASK`], before any of it is built.
fn check_job_shape(body: &[u8], max_tasks: usize) -> Result<(), String> {
    let shape = wire::job_shape(body).map_err(|e| format!("bad job request: {e}"))?;
    if shape.most_needs > MAX_NEEDS_PER_TASK {
        return Err(format!(
            "a task of the job needs {} others; at most {MAX_NEEDS_PER_TASK}",
            shape.most_needs
        ));
    }
    if shape.tasks > max_tasks {
        return Err(format!(
            "the job holds {} tasks; a job holds at most {max_tasks}",
            shape.tasks
        ));
    }
    Ok(())
}

/// Refuses, from its encoding, a `JoinClusterRequest` advertising more capabilities than
/// the registry takes or reporting more domains than a report may hold.
fn check_join_shape(body: &[u8]) -> Result<(), String> {
    let shape = wire::join_shape(body).map_err(|e| format!("bad join request: {e}"))?;
    if shape.capabilities > MAX_CAPABILITIES {
        return Err(format!(
            "the node advertises {} capabilities; at most {MAX_CAPABILITIES}",
            shape.capabilities
        ));
    }
    if shape.domains > MAX_REPORTED_DOMAINS {
        return Err(format!(
            "the node reports {} domains; at most {MAX_REPORTED_DOMAINS}",
            shape.domains
        ));
    }
    Ok(())
}

/// `/jobs/v1`: checks the domain and the submitter, submits, answers, then writes each task
/// with its token as it becomes PENDING, until the job ends or the submitter goes away.
async fn serve_jobs(shared: &Shared, peer: PeerId, stream: ClusterStream) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let frame = tokio::time::timeout(
        shared.first_request_timeout(),
        read_frame(&mut reader, DEFAULT_MAX_FRAME),
    )
    .await;
    let frame = match frame {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "bad {JOBS_V1} request: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no {JOBS_V1} request in time");
            return;
        }
    };
    // Counted on the wire first: decoding builds a struct per task, and an empty one is
    // two bytes.
    let request = check_job_shape(frame.body(), shared.max_tasks_per_job)
        .and_then(|()| frame.decode::<JobRequest>().map_err(|e| e.to_string()));
    let request = match request {
        Ok(request) => request,
        Err(reason) => {
            tracing::warn!(%peer, "refused a job: {reason}");
            refuse_job(shared, &mut writer, reason).await;
            return;
        }
    };
    // A replicate job comes from a node, not from a client on the allow-list: the scheduler
    // checks that the node stored what it asks to copy.
    let allowed = match replication::is_replication(&request) {
        true if shared.policy.serves(&request.domain_id) => Ok(()),
        true => Err(Refusal::UnknownDomain {
            domain: request.domain_id.chars().take(80).collect(),
        }),
        // Replicate data marks the copies the manager places (their tokens let the sender
        // choose item ids): never on a job it did not expand itself.
        false
            if request.tasks.iter().any(|task| {
                task.data
                    .as_ref()
                    .is_some_and(|d| d.type_url == domain_proto::REPLICATE_INPUT)
            }) =>
        {
            Err(Refusal::CopyData)
        }
        false => shared.policy.check_submitter(&request.domain_id, &peer),
    };
    if let Err(refusal) = allowed {
        tracing::warn!(%peer, job = %request.name, "refused a job: {refusal}");
        refuse_job(shared, &mut writer, refusal.to_string()).await;
        return;
    }
    // Room for every token the job can get (each task, each retry) and each task's FAILED
    // notice: the dispatcher never waits.
    let room = request
        .tasks
        .len()
        .saturating_mul(shared.tokens_per_task.saturating_add(1))
        .clamp(1, shared.max_tokens_per_job);
    let (tokens_tx, mut tokens) = mpsc::channel(room.max(1));
    let name = request.name.clone();
    let copies = shared.policy.replication(&request.domain_id);
    let submitted = ask(&shared.requests, |reply| Request::Submit {
        request,
        submitter: peer.to_string(),
        copies,
        tokens: tokens_tx,
        reply,
    })
    .await;
    let Some(result) = submitted else { return };
    let response = match &result {
        Ok(Submission { job_id, resumed }) => {
            tracing::info!(%peer, job = %job_id, name = %name, resumed, "job accepted");
            submit_response(&Ok(job_id.clone()))
        }
        Err(e) => {
            tracing::warn!(%peer, job = %name, "refused a job: {e}");
            SubmitJobResponse {
                code: Code::BadRequest as i32,
                job_id: String::new(),
                err_msg: e.to_string(),
            }
        }
    };
    if send_frame(shared, &mut writer, &response).await.is_err() || result.is_err() {
        let _ = writer.shutdown().await;
        return;
    }
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            task = tokens.recv() => {
                let Some(task) = task else { break };
                if send_frame(shared, &mut writer, &task).await.is_err() {
                    break;
                }
            }
            // The submitter writes nothing more: any byte, its close or an error ends the stream.
            _ = reader.read(&mut probe) => break,
        }
    }
    let _ = writer.shutdown().await;
}

/// `/holders/v1`: the nodes that hold data of a domain the peer may use, and with `follow`
/// the holders again after each change, until the peer goes away.
async fn serve_holders(shared: &Shared, peer: PeerId, stream: ClusterStream) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let request = tokio::time::timeout(
        shared.first_request_timeout(),
        read_message::<HoldersRequest, _>(&mut reader, MAX_HOLDERS_REQUEST),
    )
    .await;
    let HoldersRequest { domain_id, follow } = match request {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "bad {HOLDERS_V1} request: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no {HOLDERS_V1} request in time");
            return;
        }
    };
    if let Err(refusal) = shared.policy.check_submitter(&domain_id, &peer) {
        tracing::warn!(%peer, "refused a holders request: {refusal}");
        let answer = HoldersResponse {
            err_msg: refusal.to_string(),
            holders: Vec::new(),
        };
        let _ = send_frame(shared, &mut writer, &answer).await;
        let _ = writer.shutdown().await;
        return;
    }
    let follow = follow == Some(true);
    let mut probe = [0u8; 1];
    'follow: loop {
        let holders = |reply| Request::Holders {
            domain: domain_id.clone(),
            follow,
            reply,
        };
        let Some(HoldersNow { holders, changes }) = ask(&shared.requests, holders).await else {
            break;
        };
        let answer = HoldersResponse {
            err_msg: String::new(),
            holders,
        };
        if send_frame(shared, &mut writer, &answer).await.is_err() {
            break;
        }
        let Some(mut changes) = changes else { break };
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(HoldersChange::Domain(domain)) if domain != domain_id => {}
                    // This domain's holders changed, or those of every domain, or changes
                    // were missed: the holders are sent again whole.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue 'follow,
                    Err(broadcast::error::RecvError::Closed) => break 'follow,
                },
                // The peer writes nothing more: any byte, its close or an error ends it.
                _ = reader.read(&mut probe) => break 'follow,
            }
        }
    }
    let _ = writer.shutdown().await;
}

/// `/monitor/v1`: after the client's `ack`, every running job it may watch and the last finished
/// ones (`MONITOR_FINISHED_TAIL` in `core`), then each change.
async fn serve_monitor(shared: &Shared, peer: PeerId, stream: ClusterStream) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut ack = [0u8; MONITOR_ACK.len()];
    match tokio::time::timeout(shared.first_request_timeout(), reader.read_exact(&mut ack)).await {
        Ok(Ok(_)) if &ack == MONITOR_ACK => {}
        _ => {
            tracing::debug!(%peer, "no {MONITOR_V1} ack");
            return;
        }
    }
    let mut probe = [0u8; 1];
    'watch: loop {
        let Some(Watch { jobs, mut updates }) =
            ask(&shared.requests, |reply| Request::Watch { reply }).await
        else {
            break;
        };
        for view in jobs {
            if send_view(shared, peer, &mut writer, &view).await.is_err() {
                break 'watch;
            }
        }
        loop {
            tokio::select! {
                update = updates.recv() => match update {
                    Ok(view) => {
                        if send_view(shared, peer, &mut writer, &view).await.is_err() {
                            break 'watch;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(%peer, missed, "monitor fell behind; sending every job again");
                        continue 'watch;
                    }
                    Err(broadcast::error::RecvError::Closed) => break 'watch,
                },
                _ = reader.read(&mut probe) => break 'watch,
            }
        }
    }
    let _ = writer.shutdown().await;
}

/// Writes a job view as one or more `Job` frames, if `peer` may watch its domain.
async fn send_view<W: AsyncWrite + Unpin>(
    shared: &Shared,
    peer: PeerId,
    writer: &mut W,
    view: &JobView,
) -> Result<(), ()> {
    if !shared.policy.may_watch(&view.domain, &peer) {
        return Ok(());
    }
    for job in split_job(&view.job, MONITOR_FRAME_BUDGET) {
        send_frame(shared, writer, &job).await?;
    }
    Ok(())
}

/// Splits a job into jobs of the same id and name whose tasks take about `budget` encoded bytes
/// each (at least one task each).
fn split_job(job: &Job, budget: usize) -> Vec<Job> {
    let empty = || Job {
        id: job.id.clone(),
        name: job.name.clone(),
        tasks: Vec::new(),
    };
    let mut frames = vec![empty()];
    let mut used = 0;
    for task in &job.tasks {
        let len = task.encoded_len();
        if used + len > budget && frames.last().is_some_and(|f| !f.tasks.is_empty()) {
            frames.push(empty());
            used = 0;
        }
        used += len;
        if let Some(frame) = frames.last_mut() {
            frame.tasks.push(task.clone());
        }
    }
    frames
}

/// Writes one frame within the request timeout.
async fn send_frame<W: AsyncWrite + Unpin, M: prost::Message>(
    shared: &Shared,
    writer: &mut W,
    message: &M,
) -> Result<(), ()> {
    match tokio::time::timeout(shared.request_timeout, write_message(writer, message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// The public keys `/public-key/v1` serves: those of the domains served that have a key. Keys
/// are never created on request, so a peer cannot make the manager write files.
struct ServedKeys {
    issuer: Arc<DomainKeyIssuer>,
    policy: Arc<DomainPolicy>,
}

impl ServedKeys {
    fn lookup(&self, domain: &str) -> Result<PublicKey, String> {
        if !self.policy.serves(domain) {
            return Err("unknown domain".into());
        }
        let keys = self.issuer.keys();
        if !keys.key_path(domain).exists() {
            return Err("the domain has no key yet".into());
        }
        keys.key(domain)
            .map(|key| key.public_key())
            .map_err(|e| e.to_string())
    }
}

impl PublicKeySource for ServedKeys {
    fn public_key(
        &self,
        domain_id: &str,
    ) -> impl Future<Output = Result<PublicKey, String>> + Send {
        std::future::ready(self.lookup(domain_id))
    }
}

async fn serve_key<S: AsyncRead + AsyncWrite + Unpin + Send>(
    shared: &Shared,
    keys: &ServedKeys,
    peer: PeerId,
    stream: S,
) {
    // One small request and its answer: the first request's deadline is the stream's.
    let limits = Limits {
        idle_timeout: shared.first_request_timeout(),
        ..Limits::default()
    };
    match serve_public_key(stream, keys, &limits).await {
        Ok(domain) => tracing::debug!(%peer, %domain, "served a public key"),
        Err(e) => tracing::debug!(%peer, "{PUBLIC_KEY_V1}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_job_is_split_into_frames_under_the_budget_keeping_every_task() {
        let task = |i: usize| Task {
            name: format!("task-{i}"),
            endpoint: "/store/v1".into(),
            job_id: "j".into(),
            sender: "s".repeat(50),
            ..Default::default()
        };
        let job = Job {
            id: "j".into(),
            name: "n".into(),
            tasks: (0..1000).map(task).collect(),
        };
        let frames = split_job(&job, 4096);
        assert!(frames.len() > 1);
        assert!(frames.iter().all(|f| f.encoded_len() <= 4096 + 200));
        let names: Vec<_> = frames.iter().flat_map(|f| &f.tasks).cloned().collect();
        assert_eq!(names, job.tasks);
        assert!(frames.iter().all(|f| f.id == "j" && f.name == "n"));
    }

    #[test]
    fn only_direct_tcp_addresses_are_plain_tcp() {
        let yes: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let ws: Multiaddr = "/ip4/127.0.0.1/tcp/1/ws".parse().unwrap();
        let quic: Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap();
        assert!(is_plain_tcp(&yes));
        assert!(!is_plain_tcp(&ws) && !is_plain_tcp(&quic));
    }
}
