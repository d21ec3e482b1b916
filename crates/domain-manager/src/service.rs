//! [`Manager`]: starts the swarm and the scheduler thread, serves the manager's protocols, and
//! stops them all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use domain_auth::DomainKeyStore;
use domain_cluster::addr::{is_loopback, is_plain_tcp, with_peer_id};
use domain_cluster::config::{ClusterConfig, PeerGate, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterError, ClusterHandle, Multiaddr, PeerId};
use domain_etcd::{Etcd, Leadership};
use domain_proto::discovery::Node;
use domain_proto::protocols::{
    HOLDERS_V1, JOBS_V1, JOIN_V1, LEADER_V1, MONITOR_V1, PUBLIC_KEY_V1, TASK_STATUS_V1,
};
use domain_proto::task::{Job, Status, Task};
use domain_scheduler::{
    DomainKeyIssuer, Event, Scheduler, SchedulerConfig, SchedulerError, TokenError, TokenGrant,
    TokenIssuer,
};
use domain_telemetry::{Endpoint, Metrics, Readiness};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::admission::Admission;
use crate::config::ManagerConfig;
use crate::control::ControlStore;
use crate::domains::DomainPolicy;
use crate::error::ManagerError;
use crate::leadership::{LeaderAnswers, StoreChoice, serve_leader, store_for};
use crate::repair::{Auditor, Repairer, Tombstones};
use crate::scheduler_thread::{AwaySubmitters, Core, JobView, Outbound, Request};

mod protocols;

use protocols::{
    ServedKeys, serve_holders, serve_jobs, serve_join, serve_key, serve_monitor, serve_protocol,
    serve_status,
};

/// Requests queued for the scheduler thread before their senders wait.
const REQUEST_QUEUE: usize = 1024;

/// Scheduler events queued for the dispatcher before the scheduler thread waits.
const OUTBOUND_QUEUE: usize = 4096;

/// Job changes kept for each monitor before it lags (and is sent every job again).
const VIEW_QUEUE: usize = 1024;

/// Holder changes kept for each `/holders/v1` follower before it lags (and is sent its
/// domain's holders again).
const HOLDER_CHANGE_QUEUE: usize = 256;

/// Removals at once of copies that landed after their items were deleted.
const MAX_PURGES: usize = 16;

/// Restarted nodes waiting for the repair loop to take note.
const STARTED_QUEUE: usize = 64;

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
    /// With etcd: the leadership this manager serves under.
    leadership: Option<Leadership>,
    /// The operator's `/metrics`, `/healthz`, `/readyz`, when asked for.
    endpoint: Option<Endpoint>,
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
    /// Who may join.
    admission: Arc<Admission>,
    request_timeout: Duration,
    tokens_per_task: usize,
    max_tokens_per_job: usize,
    max_tasks_per_job: usize,
    /// The ids clients delete, which the repair must not copy again.
    tombstones: Arc<Tombstones>,
    /// Removes from a node that joins again what clients deleted while it was away.
    purger: Arc<Auditor>,
    /// Nodes whose first join since they started just arrived, for the repair loop (a
    /// full queue drops one: the next hourly audit covers it).
    started: mpsc::Sender<String>,
}

/// The peers a leading manager knows: those on an allow-list and the admitted nodes
/// (everyone, when open).
struct Known {
    policy: Arc<DomainPolicy>,
    admission: Arc<Admission>,
}

impl Known {
    fn knows(&self, peer: &PeerId) -> bool {
        knows(&self.policy, &self.admission, peer)
    }
}

/// Whether `peer` is an admitted node or on an allow-list (everyone, when open).
fn knows(policy: &DomainPolicy, admission: &Admission, peer: &PeerId) -> bool {
    policy.knows(peer) || admission.admits(peer)
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
        let identity = manager_identity(&config.data_dir)?;
        let keys = DomainKeyStore::open(config.keys_dir()).map_err(crate::ConfigError::from)?;
        let peer = identity.peer_id();
        // Who the manager knows: set once it leads and has read the operator's state.
        let known: Arc<OnceLock<Known>> = Arc::new(OnceLock::new());
        let mut cluster_config = ClusterConfig::new(identity, Role::Manager)
            .with_listen_addrs(config.listen.iter().cloned());
        cluster_config.request_timeout = config.request_timeout;
        // The relay carries the known peers' traffic only: nodes reserve, known peers reach
        // them through it. A standby knows nobody yet.
        cluster_config.relay_limits.serves = Some(PeerGate::new({
            let known = Arc::clone(&known);
            move |peer| known.get().is_some_and(|known| known.knows(peer))
        }));
        let metrics = Metrics::new("domain-manager");
        cluster_config.metrics = Some(metrics.clone());
        let (cluster, cluster_task) = Cluster::start(cluster_config)?;
        // Served from the start: a standby waiting for the leadership answers "not ready".
        let readiness = Readiness::default();
        let endpoint = match config.metrics {
            Some(addr) => match Endpoint::start(addr, metrics.clone(), readiness.clone()).await {
                Ok(endpoint) => Some(endpoint),
                Err(e) => {
                    let _ = cluster.shutdown().await;
                    return Err(ManagerError::Metrics(e));
                }
            },
            None => None,
        };

        // Listening first: with etcd, the leader announces its addresses, and a standby is
        // reachable while it waits, answering `/leader/v1` with who leads.
        let (requests_tx, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let (outbound_tx, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (views, _) = broadcast::channel(VIEW_QUEUE);
        let manager_metrics = crate::metrics::ManagerMetrics::default();
        metrics.register("domain_manager", |registry| {
            manager_metrics.register(registry, &requests_tx);
        });
        let mut leader_task = None;
        let opened = async {
            let addrs: Vec<Multiaddr> = cluster
                .listen_addrs()
                .await?
                .into_iter()
                .map(|addr| with_peer_id(addr, peer))
                .collect();
            let etcd = config.etcd.as_ref().map(Etcd::connect).transpose()?;
            let answers = LeaderAnswers::new(etcd.clone(), &addrs);
            let incoming = cluster.accept(LEADER_V1)?;
            let timeout = config.request_timeout.min(FIRST_REQUEST_TIMEOUT);
            leader_task = Some(tokio::spawn(serve_protocol(
                incoming,
                LEADER_V1,
                // Who leads is no secret, and a standby knows nobody: every asker has the
                // strangers' share.
                |_| false,
                cluster.clone(),
                {
                    let answers = answers.clone();
                    move |peer, stream| {
                        let answers = answers.clone();
                        async move { serve_leader(&answers, peer, stream, timeout).await }
                    }
                },
            )));
            let (store, leadership) = store_for(&config, &answers).await?;
            // Read once leading: a standby that waited sees what changed meanwhile.
            let control = match etcd {
                Some(etcd) => ControlStore::Etcd(Box::new(etcd)),
                None => ControlStore::Folder(config.data_dir.clone()),
            };
            let (policy, admission) = read_control(&config, &control, &keys).await?;
            let policy = Arc::new(policy);
            let admission = Arc::new(admission);
            let _ = known.set(Known {
                policy: Arc::clone(&policy),
                admission: Arc::clone(&admission),
            });
            let issuer = Arc::new(DomainKeyIssuer::new(keys));
            let tombstones = Arc::new(Tombstones::default());
            let core_done = start_core(
                &config,
                peer,
                Arc::clone(&issuer),
                CoreWiring {
                    requests: requests_rx,
                    outbound: outbound_tx,
                    views,
                    metrics: manager_metrics.clone(),
                    tombstones: Arc::clone(&tombstones),
                },
                store,
            )
            .await?;
            Ok::<_, ManagerError>((
                core_done, leadership, answers, policy, admission, issuer, tombstones,
            ))
        };
        let (core_done, leadership, answers, policy, admission, issuer, tombstones) =
            match opened.await {
                Ok(opened) => opened,
                Err(e) => {
                    leader_task.iter().for_each(JoinHandle::abort);
                    let _ = cluster.shutdown().await;
                    return Err(e);
                }
            };

        // A registry from an earlier run may name nodes that are no longer admitted.
        let (reply, registered) = oneshot::channel();
        let _ = requests_tx.send(Request::Nodes { reply }).await;
        let expelled: Vec<String> = registered
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|node| node.id)
            .filter(|id| id.parse().is_ok_and(|peer| !admission.admits(&peer)))
            .collect();
        if !expelled.is_empty() {
            let _ = requests_tx.send(Request::Expel { nodes: expelled }).await;
        }
        let (started_tx, started_rx) = mpsc::channel(STARTED_QUEUE);
        let purger = Arc::new(Auditor::new(cluster.clone(), Arc::clone(&issuer)));
        let shared = Arc::new(Shared {
            tombstones: Arc::clone(&tombstones),
            purger: Arc::clone(&purger),
            started: started_tx,
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
        let repairer = Repairer::new(
            requests_tx.clone(),
            Arc::clone(&policy),
            tombstones,
            config.repair,
            Auditor::new(cluster.clone(), Arc::clone(&issuer)),
            started_rx,
            manager_metrics.clone(),
        );
        let keys = Arc::new(ServedKeys {
            issuer,
            policy: Arc::clone(&policy),
        });
        let mut tasks = vec![
            tokio::spawn(dispatch(outbound_rx, purger)),
            tokio::spawn(tick(requests_tx.clone(), config.tick_interval)),
            tokio::spawn(repairer.run()),
        ];
        tasks.extend(leader_task);
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
        answers.serving();
        readiness.set(true);
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
            leadership,
            endpoint,
        })
    }

    /// The address of the operator's endpoint (`/metrics`, `/healthz`, `/readyz`: ready
    /// while this manager leads), when [`ManagerConfig::metrics`] asked for one.
    #[must_use]
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.as_ref().map(Endpoint::local_addr)
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
        let deposed = async {
            match self.leadership.as_ref() {
                Some(leadership) => leadership.lost().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = deposed => Err(ManagerError::LeadershipLost),
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
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.shutdown().await;
        }
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
        // The scheduler has stopped writing: a standby may lead now rather than after the
        // lease runs out.
        if let Some(leadership) = self.leadership.take()
            && let Err(error) = leadership.resign().await
        {
            tracing::warn!(error = %domain_proto::ErrorChain(&error), "cannot resign the leadership; it ends with its lease");
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

/// The operator's state as `control` holds it, with the domains and nodes of `config`:
/// who may submit where, and who may join. Refuses an open manager beyond loopback
/// without `--open`, and a domain whose key this manager lacks; makes (and, with etcd,
/// publishes) the key of a domain no manager has one of yet.
async fn read_control(
    config: &ManagerConfig,
    control: &ControlStore,
    keys: &DomainKeyStore,
) -> Result<(DomainPolicy, Admission), ManagerError> {
    let stored = control.domains().await?;
    let policy = DomainPolicy::from_specs(stored.domain.iter().chain(&config.domains))?;
    let admission =
        Admission::load(control.clone(), config.nodes.clone(), policy.is_open()).await?;
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
    } else if admission.admits_nobody() {
        tracing::warn!(
            "no node is admitted: every node is refused until you run \
             `domain-manager node allow PEER_ID` or give it an invite (`domain-manager node invite`)"
        );
    }
    // Declared domains get their key now, so `/public-key/v1` serves them from the start.
    for domain in policy.domains() {
        control.domain_key(keys, domain).await?;
    }
    Ok((policy, admission))
}

/// What the scheduler thread is wired to: its requests in, its events and job views out,
/// and the metrics it keeps.
struct CoreWiring {
    requests: mpsc::Receiver<Request>,
    outbound: mpsc::Sender<Outbound>,
    views: broadcast::Sender<Arc<JobView>>,
    metrics: crate::metrics::ManagerMetrics,
    tombstones: Arc<Tombstones>,
}

/// The identity of the manager with data folder `data_dir`, created (and the folder, mode
/// 0700) if it has none yet: its peer id ends the address nodes and clients are given.
///
/// # Errors
/// [`ManagerError::DataDir`] when the folder cannot be created or others may enter it;
/// [`ManagerError::Identity`] for an identity file that cannot be used.
pub fn manager_identity(data_dir: &Path) -> Result<Identity, ManagerError> {
    domain_auth::open_private_dir(data_dir).map_err(ManagerError::DataDir)?;
    Ok(Identity::load_or_create(
        ManagerConfig::new(data_dir).identity_path(),
    )?)
}

/// Starts the scheduler thread and waits for the scheduler to open.
async fn start_core(
    config: &ManagerConfig,
    peer: PeerId,
    issuer: Arc<DomainKeyIssuer>,
    wiring: CoreWiring,
    store: StoreChoice,
) -> Result<oneshot::Receiver<Result<(), SchedulerError>>, ManagerError> {
    let mut scheduler_config = SchedulerConfig::new(peer.to_string());
    scheduler_config.node_timeout = config.node_timeout;
    scheduler_config.max_retries = config.max_retries;
    scheduler_config.max_tasks_per_job = config.max_tasks_per_job;
    scheduler_config.event_capacity = EVENT_QUEUE;
    scheduler_config.finished_ttl = config.keep_finished;
    scheduler_config.max_finished_jobs = config.max_finished_jobs;
    let (opened_tx, opened) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || {
            let open = || -> Result<Scheduler, SchedulerError> {
                Scheduler::open(
                    scheduler_config,
                    store.open()?,
                    Box::new(SharedIssuer(Arc::clone(&issuer))),
                    crate::scheduler_thread::now_ms(),
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
            let CoreWiring {
                requests,
                outbound,
                views,
                metrics,
                tombstones,
            } = wiring;
            let core = Core {
                events: scheduler.subscribe(),
                scheduler,
                issuer,
                outbound,
                views,
                holder_changes: broadcast::channel(HOLDER_CHANGE_QUEUE).0,
                metrics,
                tombstones,
                away: AwaySubmitters::default(),
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
async fn dispatch(mut outbound: mpsc::Receiver<Outbound>, purger: Arc<Auditor>) {
    let mut submitters: HashMap<String, mpsc::Sender<Task>> = HashMap::new();
    // Removals of copies that landed after their delete: rare, a few at a time.
    let purges = Arc::new(tokio::sync::Semaphore::new(MAX_PURGES));
    while let Some(item) = outbound.recv().await {
        match item {
            Outbound::Purge { domain, node, ids } => {
                let Ok(permit) = Arc::clone(&purges).try_acquire_owned() else {
                    tracing::debug!(%domain, %node, "too many removals at once; the next audit removes these");
                    continue;
                };
                let purger = Arc::clone(&purger);
                tokio::spawn(async move {
                    let _permit = permit;
                    crate::repair::remove_deleted(&purger, &domain, &node, &ids).await;
                });
            }
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
                        tracing::info!(job = %task.job_id, task = %task.name, peer = task.receiver.as_deref().unwrap_or_default(), status = task.status().as_str_name(), "{reason}");
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
