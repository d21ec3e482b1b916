//! The running node: datastore, swarm, join loop, task-stream acceptors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use domain_auth::{PrivateDirError, open_private_dir};
use domain_capabilities::{
    AcceptedStream, CapabilityError, Limits, Served, StreamInfo, TokenLedger, accept_task_stream,
};
use domain_client::client::{Client, ClientConfig, ClientError};
use domain_client::datastore::RemoteDatastore;
use domain_cluster::addr::first_plain_tcp;
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{
    Cluster, ClusterError, ClusterHandle, ClusterStream, IdentityError, IncomingStreams, Managers,
    Multiaddr, PeerId,
};
use domain_datastore::{DatastoreError, LocalDatastore};
use domain_postgres::PostgresCatalog;
use domain_proto::discovery::{Capability, Holdings, JoinClusterRequest, Node as NodeInfo};
use domain_proto::protocols::{DELETE_V1, LOAD_V1, STORE_V1};
use domain_proto::task::Status;
use domain_telemetry::{Endpoint, Metrics, Readiness};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{ConfigError, NodeConfig};
use crate::handshakes::{
    HANDSHAKE_BAN, HANDSHAKE_TIMEOUT, HandshakeSlot, Handshakes, MAX_PENDING_HANDSHAKES,
};
use crate::keys::ManagerKeys;
use crate::metrics::{NodeMetrics, Outcome};
use crate::replicate::Replicator;
use crate::status::StatusReporter;
use crate::store::NodeDatastore;

/// The first retry of a failed join; later ones double up to the join interval.
const FIRST_JOIN_RETRY: Duration = Duration::from_millis(250);

/// How long shutdown waits for the status worker to send what is queued.
const REPORT_DRAIN: Duration = Duration::from_secs(5);

/// Why a node cannot start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data folder cannot be created, or others may access it.
    #[error("data folder")]
    DataDir(#[source] PrivateDirError),
    /// The identity file is not usable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The datastore cannot be opened.
    #[error("cannot open the datastore in {path}")]
    Datastore {
        /// The store's folder.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: DatastoreError,
    },
    /// A gateway's client of its upstream cluster cannot start.
    #[error("cannot reach the upstream cluster at {addr}")]
    Upstream {
        /// The upstream manager's address.
        addr: Multiaddr,
        /// The error.
        #[source]
        source: Box<ClientError>,
    },
    /// The swarm failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The operator's metrics endpoint cannot listen.
    #[error(transparent)]
    Metrics(domain_telemetry::EndpointError),
    /// The node stopped before the awaited event.
    #[error("the node stopped")]
    Stopped,
    /// None of the listen addresses is plain TCP, which the `ready` line shows.
    #[error("the node listens on no plain TCP address (listening on {addrs:?})")]
    NoTcpAddress {
        /// The addresses it listens on.
        addrs: Vec<Multiaddr>,
    },
}

/// What [`Node::shutdown`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Task streams still running when the grace period ended, cut short.
    pub streams_cut: usize,
}

/// A running node.
///
/// ```no_run
/// # async fn demo(manager: domain_cluster::Multiaddr) -> Result<(), domain_node::NodeError> {
/// use domain_node::{Node, NodeConfig};
///
/// let node = Node::start(NodeConfig::new(manager, "/var/lib/domain-node")?).await?;
/// node.joined().await?;
/// println!("ready {}", node.ready_addr().await?);
/// node.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Node {
    cluster: ClusterHandle,
    cluster_task: JoinHandle<()>,
    datastore: NodeDatastore,
    keys: ManagerKeys,
    joins: watch::Receiver<u64>,
    /// Stops the join loop and the acceptors.
    stop: CancellationToken,
    /// Cuts the task streams still running after the grace period.
    cut: CancellationToken,
    permits: Arc<Semaphore>,
    max_streams: usize,
    handshakes: Arc<Handshakes>,
    background: Vec<JoinHandle<()>>,
    reporter_task: JoinHandle<()>,
    grace: Duration,
    /// The operator's `/metrics`, `/healthz`, `/readyz`, when asked for.
    endpoint: Option<Endpoint>,
}

/// What every task-stream handler shares.
#[derive(Debug)]
struct Context {
    local_peer: String,
    datastore: NodeDatastore,
    keys: ManagerKeys,
    reporter: StatusReporter,
    limits: Limits,
    cut: CancellationToken,
    /// Copies stored items to other nodes, for the domains that keep several; `None` on
    /// a gateway, whose upstream cluster keeps its own copies.
    replicator: Option<Arc<Replicator>>,
    /// Told after each store or delete: the join loop then joins at once if the domains
    /// the node holds changed, so the manager's holder index follows.
    stored: Arc<Notify>,
    /// The tokens this node served: one stream per token at a time, none once its task
    /// is done here.
    tokens: TokenLedger,
    metrics: NodeMetrics,
}

impl Node {
    /// Opens the datastore under `DIR/store`, loads (or creates) the identity at
    /// `DIR/identity.key`, starts the swarm with the manager as bootstrap peer,
    /// accepts `/store/v1` and `/load/v1` streams and starts joining the manager.
    ///
    /// # Errors
    /// A [`NodeError`] naming what could not be set up.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let Some(first_manager) = config.managers.first().cloned() else {
            return Err(ConfigError::Missing { key: "manager" }.into());
        };
        let identity = node_identity(&config.data_dir)?;
        let datastore = open_datastore(&config).await?;

        let metrics = Metrics::new("domain-node");
        let mut cluster_config = ClusterConfig::new(identity, Role::Node)
            .with_listen_addrs(config.listen.clone())
            .with_bootstrap(first_manager)
            .with_more_bootstrap(config.managers.iter().skip(1).cloned());
        cluster_config.request_timeout = config.request_timeout;
        cluster_config.metrics = Some(metrics.clone());
        if !config.announce.is_empty() {
            cluster_config.external_addrs = config.announce.clone();
            cluster_config.hide_listen_addrs = true;
        }
        let (cluster, cluster_task) = Cluster::start(cluster_config)?;
        let local_peer = cluster.local_peer_id();

        // Accept before joining: once the manager knows the node it may assign it tasks.
        let acceptors = [STORE_V1, LOAD_V1, DELETE_V1].map(|protocol| {
            cluster
                .accept(protocol)
                .map(|incoming| (protocol, incoming))
        });
        let acceptors = acceptors.into_iter().collect::<Result<Vec<_>, _>>()?;

        let managers = Managers::new(cluster.clone(), config.managers.iter().cloned())?;
        let keys = ManagerKeys::new(cluster.clone(), managers.clone());
        let (reporter, reporter_task) = StatusReporter::start(cluster.clone(), managers.clone());
        let stop = CancellationToken::new();
        let cut = CancellationToken::new();
        let max_streams = config.max_task_streams.clamp(1, Semaphore::MAX_PERMITS);
        let permits = Arc::new(Semaphore::new(max_streams));
        let handshakes = Arc::new(Handshakes::new(
            config.max_handshakes_per_peer,
            MAX_PENDING_HANDSHAKES,
        ));
        let (copies_tx, copies) = watch::channel(BTreeMap::new());
        let replicator = datastore.local().map(|local| {
            Arc::new(Replicator::new(
                cluster.clone(),
                managers.clone(),
                local.clone(),
                config.limits,
                copies,
                stop.clone(),
            ))
        });
        let stored = Arc::new(Notify::new());
        let node_metrics = NodeMetrics::default();
        metrics.register("domain_node", |registry| {
            node_metrics.register(
                registry,
                Arc::clone(&permits),
                max_streams,
                Arc::clone(&handshakes),
            );
        });
        if let Some(local) = datastore.local() {
            metrics.register("domain_datastore", |registry| {
                local.register_metrics(registry);
            });
        }
        let readiness = Readiness::default();
        let endpoint = match config.metrics {
            Some(addr) => Some(
                Endpoint::start(addr, metrics.clone(), readiness.clone())
                    .await
                    .map_err(NodeError::Metrics)?,
            ),
            None => None,
        };
        let context = Arc::new(Context {
            metrics: node_metrics,
            stored: Arc::clone(&stored),
            local_peer: local_peer.to_string(),
            datastore: datastore.clone(),
            keys: keys.clone(),
            reporter,
            limits: config.limits,
            cut: cut.clone(),
            replicator,
            tokens: TokenLedger::default(),
        });

        let mut background: Vec<JoinHandle<()>> = acceptors
            .into_iter()
            .map(|(protocol, incoming)| {
                tokio::spawn(accept_streams(
                    protocol,
                    incoming,
                    Arc::clone(&context),
                    Limiters {
                        permits: Arc::clone(&permits),
                        max_streams,
                        handshakes: Arc::clone(&handshakes),
                        cluster: cluster.clone(),
                    },
                    stop.clone(),
                ))
            })
            .collect();

        let info = NodeInfo {
            id: local_peer.to_string(),
            name: config.name.unwrap_or_else(|| local_peer.to_string()),
            // Store and load need no GPU; the CPU count lets tasks with a
            // `min_cpu` find the node.
            cpu: std::thread::available_parallelism()
                .ok()
                .and_then(|n| i32::try_from(n.get()).ok()),
            gpu: None,
            capabilities: vec![
                Capability {
                    endpoint: STORE_V1.to_owned(),
                    capacity: config.store_capacity,
                },
                Capability {
                    endpoint: LOAD_V1.to_owned(),
                    capacity: config.load_capacity,
                },
                // A delete is a few metadata commits, over in moments: it needs no
                // share of its own, and the stream permits bound it all the same.
                Capability {
                    endpoint: DELETE_V1.to_owned(),
                    capacity: -1,
                },
            ],
        };
        let (joins_tx, joins) = watch::channel(0);
        background.push(tokio::spawn(join_loop(
            JoinLoop {
                cluster: cluster.clone(),
                managers,
                info,
                interval: config.join_interval,
                joins: joins_tx,
                copies: copies_tx,
                datastore: datastore.clone(),
                stored,
                invite: config.invite,
                readiness,
            },
            stop.clone(),
        )));

        Ok(Self {
            cluster,
            cluster_task,
            datastore,
            keys,
            joins,
            stop,
            cut,
            permits,
            max_streams,
            handshakes,
            background,
            reporter_task,
            grace: config.shutdown_grace,
            endpoint,
        })
    }

    /// The address of the operator's endpoint (`/metrics`, `/healthz`, `/readyz`), when
    /// [`NodeConfig::metrics`] asked for one.
    #[must_use]
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.as_ref().map(Endpoint::local_addr)
    }

    /// This node's peer id.
    #[must_use]
    pub fn peer_id(&self) -> PeerId {
        self.cluster.local_peer_id()
    }

    /// The node's swarm.
    #[must_use]
    pub fn cluster(&self) -> &ClusterHandle {
        &self.cluster
    }

    /// The node's datastore.
    #[must_use]
    pub fn datastore(&self) -> &NodeDatastore {
        &self.datastore
    }

    /// The domain keys fetched from the manager so far.
    #[must_use]
    pub fn keys(&self) -> &ManagerKeys {
        &self.keys
    }

    /// The addresses the node listens on, each ending with `/p2p/<node id>`.
    ///
    /// # Errors
    /// [`NodeError::Cluster`] when the listeners do not report in time.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NodeError> {
        Ok(self.cluster.listen_addrs().await?)
    }

    /// The first plain TCP address the node listens on, with `/p2p/<node id>`:
    /// the address its `ready` line shows.
    ///
    /// # Errors
    /// [`NodeError::Cluster`] as [`listen_addrs`](Self::listen_addrs);
    /// [`NodeError::NoTcpAddress`] when the node listens on no TCP address.
    pub async fn ready_addr(&self) -> Result<Multiaddr, NodeError> {
        let addrs = self.listen_addrs().await?;
        first_plain_tcp(&addrs)
            .cloned()
            .ok_or(NodeError::NoTcpAddress { addrs })
    }

    /// Successful joins so far; it changes at each one (the heartbeat).
    #[must_use]
    pub fn joins(&self) -> watch::Receiver<u64> {
        self.joins.clone()
    }

    /// Waits for the first successful join. Joins are retried without end; put
    /// a timeout around this to give up.
    ///
    /// # Errors
    /// [`NodeError::Stopped`] when the node stops first.
    pub async fn joined(&self) -> Result<(), NodeError> {
        let mut joins = self.joins.clone();
        joins
            .wait_for(|n| *n > 0)
            .await
            .map(drop)
            .map_err(|_| NodeError::Stopped)
    }

    /// Task streams running now: those whose token was accepted and that are not over.
    #[must_use]
    pub fn running_streams(&self) -> usize {
        self.max_streams - self.permits.available_permits()
    }

    /// Task streams in their handshake now: opened, their token not yet accepted.
    #[must_use]
    pub fn streams_in_handshake(&self) -> usize {
        self.handshakes.pending()
    }

    /// Stops gracefully: stops accepting streams and joining, lets running task
    /// streams finish for up to the grace period and cuts the rest (reported
    /// FAILED), publishes the queued status reports, stops the swarm and closes
    /// the datastore.
    ///
    /// # Errors
    /// [`NodeError::Cluster`] when the swarm had already stopped.
    pub async fn shutdown(self) -> Result<ShutdownReport, NodeError> {
        let Self {
            cluster,
            cluster_task,
            datastore,
            keys,
            joins,
            stop,
            cut,
            permits,
            max_streams,
            handshakes: _,
            background,
            reporter_task,
            grace,
            endpoint,
        } = self;
        stop.cancel();
        if let Some(endpoint) = endpoint {
            endpoint.shutdown().await;
        }
        for task in background {
            // The acceptors and the join loop end at the cancellation; a panic
            // in one has been logged by the runtime already.
            let _ = task.await;
        }
        let all = u32::try_from(max_streams).unwrap_or(u32::MAX);
        let mut streams_cut = 0;
        if tokio::time::timeout(grace, permits.acquire_many(all))
            .await
            .is_err()
        {
            streams_cut = max_streams - permits.available_permits();
            tracing::warn!(
                streams = streams_cut,
                ?grace,
                "cutting the task streams still running after the grace period"
            );
            cut.cancel();
            // Cut handlers report and return at once.
            let _ = permits.acquire_many(all).await;
        }
        drop((keys, joins));
        // The last reporter clone went with the handlers' context: the worker
        // sends what is queued, then ends.
        if tokio::time::timeout(REPORT_DRAIN, reporter_task)
            .await
            .is_err()
        {
            tracing::warn!("status reports still unsent at shutdown");
        }
        cluster.shutdown().await?;
        let _ = cluster_task.await;
        match datastore {
            // The last clone of the store closes its database (and waits for its commits).
            NodeDatastore::Local(store) => drop(store),
            NodeDatastore::Remote(store) => {
                if let Err(error) = store.client().clone().shutdown().await {
                    tracing::debug!(error = %domain_proto::ErrorChain(&error), "the upstream client had stopped already");
                }
            }
        }
        Ok(ShutdownReport { streams_cut })
    }
}

/// The node's own store, or, with an upstream, the upstream cluster's.
async fn open_datastore(config: &NodeConfig) -> Result<NodeDatastore, NodeError> {
    let Some(upstream) = &config.upstream else {
        let path = config.store_dir();
        let opened = match &config.metadata {
            None => LocalDatastore::open_with(&path, config.store_options.clone()).await,
            Some(metadata) => {
                let catalog_config = metadata.catalog_config()?;
                let catalog =
                    tokio::task::spawn_blocking(move || PostgresCatalog::connect(catalog_config))
                        .await
                        .map_err(DatastoreError::from)
                        .and_then(|connected| connected);
                match catalog {
                    Ok(catalog) => {
                        tracing::info!(schema = metadata.schema, "item metadata in PostgreSQL");
                        LocalDatastore::open_with_catalog(
                            &path,
                            config.store_options.clone(),
                            Arc::new(catalog),
                        )
                        .await
                    }
                    Err(source) => Err(source),
                }
            }
        };
        return match opened {
            Ok(store) => Ok(NodeDatastore::Local(store)),
            Err(source) => Err(NodeError::Datastore { path, source }),
        };
    };
    let identity = Identity::load_or_create(config.upstream_identity_path())?;
    let client_config = ClientConfig {
        request_timeout: config.request_timeout,
        limits: config.limits,
        ..ClientConfig::default()
    };
    let client = Client::start(identity, Some(upstream.clone()), client_config)
        .await
        .map_err(|source| NodeError::Upstream {
            addr: upstream.clone(),
            source: Box::new(source),
        })?;
    tracing::info!(%upstream, peer = %client.peer_id(), "a gateway: tasks are served from the upstream cluster, as this peer (allow it in the upstream domains)");
    Ok(NodeDatastore::Remote(Box::new(RemoteDatastore::new(
        client,
    ))))
}

/// What bounds the task streams: the node's permits, and the handshakes per peer.
#[derive(Debug, Clone)]
struct Limiters {
    permits: Arc<Semaphore>,
    max_streams: usize,
    handshakes: Arc<Handshakes>,
    /// Bans a peer whose handshakes keep failing.
    cluster: ClusterHandle,
}

impl Limiters {
    /// Counts a failed handshake of `peer`, and bans it when they keep failing.
    fn count_failure(&self, peer: PeerId) {
        if self.handshakes.failed(peer) {
            tracing::warn!(%peer, ban = ?HANDSHAKE_BAN, "the handshakes of this peer keep failing; banning it");
            let cluster = self.cluster.clone();
            tokio::spawn(async move { cluster.ban(peer, HANDSHAKE_BAN).await });
        }
    }
}

/// How a stream's handshake ended.
enum Handshake {
    /// Its token was accepted and it holds a permit (boxed: the others are empty).
    Accepted(Box<AcceptedStream<ClusterStream>>),
    /// It failed by its opener's doing: refused, silent, pushed out.
    Failed,
    /// It was dropped by this node's doing: no permit free, or a shutdown.
    Dropped,
}

async fn accept_streams(
    protocol: &'static str,
    mut incoming: IncomingStreams,
    context: Arc<Context>,
    limiters: Limiters,
    stop: CancellationToken,
) {
    loop {
        let (peer, stream) = tokio::select! {
            () = stop.cancelled() => break,
            next = incoming.next() => match next {
                Some(next) => next,
                None => break,
            },
        };
        // Over its peer's limit, a stream is dropped at once: queueing it would hold the
        // sender's token until it expires, and the scheduler will retry the task.
        let Some(slot) = limiters.handshakes.try_start(peer) else {
            tracing::warn!(%peer, protocol, limit = limiters.handshakes.per_peer(), "too many task streams of this peer in their handshake; dropping one");
            drop(stream);
            limiters.count_failure(peer);
            continue;
        };
        let context = Arc::clone(&context);
        let limiters = limiters.clone();
        tokio::spawn(async move {
            let outcome = context
                .handshake(
                    peer,
                    protocol,
                    stream,
                    slot,
                    &limiters.permits,
                    limiters.max_streams,
                )
                .await;
            // Out of its handshake, the stream no longer counts against its peer; an
            // accepted one holds its permit until it ends.
            match outcome {
                Handshake::Accepted(accepted) => {
                    limiters.handshakes.succeeded(peer);
                    context.serve(peer, protocol, *accepted).await;
                }
                Handshake::Failed => limiters.count_failure(peer),
                Handshake::Dropped => {}
            }
        });
    }
    // Dropping `incoming` frees the protocol: new streams are refused from now on.
}

impl Context {
    /// Runs the handshake of one task stream, within [`HANDSHAKE_TIMEOUT`], while `slot`
    /// holds its place among the [`Handshakes`]; an accepted stream takes one of
    /// `permits` before it is answered. Any other stream is dropped, its token unspent,
    /// and the scheduler tries again.
    async fn handshake(
        &self,
        peer: PeerId,
        protocol: &'static str,
        stream: ClusterStream,
        slot: HandshakeSlot,
        permits: &Arc<Semaphore>,
        max_streams: usize,
    ) -> Handshake {
        let remote_peer = peer.to_string();
        let info = StreamInfo {
            local_peer: &self.local_peer,
            remote_peer: &remote_peer,
            protocol,
            tokens: Some(&self.tokens),
            permits: Some(permits),
        };
        // The handshake gets one deadline in all, not one per byte.
        let handshake = tokio::time::timeout(
            self.limits.idle_timeout.min(HANDSHAKE_TIMEOUT),
            accept_task_stream(stream, &info, &self.keys, &self.limits),
        );
        let accepted = tokio::select! {
            () = self.cut.cancelled() => return Handshake::Dropped,
            () = slot.evicted() => {
                tracing::warn!(%peer, protocol, "task stream dropped in its handshake: newer streams needed the place");
                self.metrics.stream_ended(protocol, Outcome::TimedOut);
                return Handshake::Failed;
            }
            accepted = handshake => accepted,
        };
        match accepted {
            Ok(Ok(accepted)) => Handshake::Accepted(Box::new(accepted)),
            Ok(Err(CapabilityError::Busy)) => {
                tracing::warn!(%peer, protocol, limit = max_streams, "too many task streams; dropping one");
                self.metrics.stream_ended(protocol, Outcome::Busy);
                Handshake::Dropped
            }
            Ok(Err(error)) => {
                tracing::warn!(%peer, protocol, error = %domain_proto::ErrorChain(&error), "task stream refused");
                if let CapabilityError::Rejected(rejection) = &error {
                    self.metrics.refused(rejection);
                }
                self.metrics.stream_ended(protocol, Outcome::Refused);
                Handshake::Failed
            }
            Err(_) => {
                tracing::warn!(%peer, protocol, "task stream refused: no handshake in time");
                self.metrics.stream_ended(protocol, Outcome::TimedOut);
                Handshake::Failed
            }
        }
    }

    /// Serves one accepted task stream and reports how it went, in a `task` span that
    /// gives every log line on its way the job, the task and the peer.
    async fn serve(
        &self,
        peer: PeerId,
        protocol: &'static str,
        accepted: AcceptedStream<ClusterStream>,
    ) {
        let claims = &accepted.accepted().claims;
        let span = tracing::info_span!(
            "task",
            job = claims.job_id,
            task = claims.task_name,
            %peer,
            protocol,
            domain = claims.domain_id,
        );
        self.serve_task(protocol, accepted).instrument(span).await;
    }

    async fn serve_task(&self, protocol: &'static str, accepted: AcceptedStream<ClusterStream>) {
        let claims = accepted.accepted().claims.clone();
        tracing::info!("task stream accepted");
        self.reporter.report(&claims, Status::Processing).await;
        let outcome = tokio::select! {
            () = self.cut.cancelled() => None,
            served = accepted.serve(&self.datastore) => Some(served),
        };
        let (mut stored, mut replaced) = (Vec::new(), false);
        let status = match outcome {
            Some(Ok(served)) => {
                // Bytes not sent again because an upload resumed from what was kept.
                let (items, bytes, resumed) = match served {
                    Served::Store(s) => {
                        (stored, replaced) = (s.ids, s.replaced);
                        (s.items, s.bytes, s.resumed_bytes)
                    }
                    Served::Load(s) => (s.items, s.bytes, 0),
                    Served::Delete(s) => (s.deleted, 0, 0),
                };
                tracing::info!(items, bytes, resumed, "task stream done");
                self.metrics.moved(protocol, protocol == STORE_V1, bytes);
                self.metrics.resumed(resumed);
                self.metrics.stream_ended(protocol, Outcome::Done);
                Status::Done
            }
            Some(Err(error)) => {
                tracing::warn!(error = %domain_proto::ErrorChain(&error), "task stream failed");
                self.metrics.stream_ended(protocol, Outcome::Failed);
                Status::Failed
            }
            None => {
                tracing::warn!("task stream cut by shutdown");
                self.metrics.stream_ended(protocol, Outcome::Cut);
                Status::Failed
            }
        };
        self.reporter.report(&claims, status).await;
        if protocol != LOAD_V1 {
            self.stored.notify_one();
        }
        if let Some(replicator) = &self.replicator {
            replicator.stored(
                &claims.domain_id,
                &claims.job_id,
                &claims.task_name,
                stored,
                replaced,
            );
        }
    }
}

/// The identity of the node with data folder `data_dir`, created (and the folder, mode
/// 0700) if it has none yet: its peer id is what the manager's operator admits
/// (`domain-manager node allow`) before the node first joins.
///
/// # Errors
/// [`NodeError::DataDir`] when the folder cannot be created or others may enter it;
/// [`NodeError::Identity`] for an identity file that cannot be used.
pub fn node_identity(data_dir: &std::path::Path) -> Result<Identity, NodeError> {
    open_private_dir(data_dir).map_err(NodeError::DataDir)?;
    Ok(Identity::load_or_create(crate::config::identity_path(
        data_dir,
    ))?)
}

/// What the join loop needs.
struct JoinLoop {
    cluster: ClusterHandle,
    managers: Managers,
    info: NodeInfo,
    interval: Duration,
    joins: watch::Sender<u64>,
    /// What the manager's answers say of the domains' copies.
    copies: watch::Sender<BTreeMap<String, u32>>,
    /// What the joins report the node holds.
    datastore: NodeDatastore,
    /// Told after each store or delete.
    stored: Arc<Notify>,
    /// The operator's invite, sent until a join is accepted.
    invite: Option<String>,
    /// Ready while the last join was accepted.
    readiness: Readiness,
}

/// What the node holds now, for its next join; `None` (the manager keeps what it knew)
/// when the store cannot say.
async fn current_holdings(datastore: &NodeDatastore) -> Option<Holdings> {
    match datastore.holdings().await {
        Ok(holdings) => Some(holdings),
        Err(error) => {
            tracing::warn!(error = %domain_proto::ErrorChain(&error), "cannot count what the datastore holds; the join reports nothing");
            None
        }
    }
}

/// The domains a report names: a change of this set is reported at once.
fn held_domains(holdings: Option<&Holdings>) -> Option<BTreeSet<String>> {
    holdings.map(|h| h.domains.iter().map(|d| d.domain_id.clone()).collect())
}

/// Joins the manager every interval (the join is the node's heartbeat), with what
/// the node holds; at once when the domains it holds change; after a failure retries
/// sooner, doubling the wait up to the interval.
async fn join_loop(mut state: JoinLoop, stop: CancellationToken) {
    let mut failures: u32 = 0;
    let mut reported: Option<BTreeSet<String>> = None;
    let mut refused: Option<String> = None;
    // Until the first join succeeds: the manager then audits the copies of this node's
    // domains (what it was copying to others died with its last run).
    let mut started = true;
    loop {
        let holdings = current_holdings(&state.datastore).await;
        let domains = held_domains(holdings.as_ref());
        // The leader's address is dialled each time (after a manager restart the swarm may
        // have dropped the addresses it knew for it); a new leader is found and joined.
        let attempt = state.managers.call(|manager| {
            state.cluster.join(
                manager,
                JoinClusterRequest {
                    node: state.info.clone(),
                    holdings: holdings.clone(),
                    invite: state.invite.clone(),
                    started: started.then_some(true),
                },
            )
        });
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = attempt => result,
        };
        let wait = match result {
            Ok(answer) => {
                let copies: BTreeMap<String, u32> = answer.replication.into_iter().collect();
                state.copies.send_if_modified(|known| {
                    let changed = *known != copies;
                    *known = copies;
                    changed
                });
                if failures > 0 || *state.joins.borrow() == 0 {
                    tracing::info!(manager = %state.managers.leader(), "joined the manager");
                }
                failures = 0;
                refused = None;
                started = false;
                // Admitted for good: the invite is spent.
                state.invite = None;
                state.readiness.set(true);
                reported = domains;
                state.joins.send_modify(|n| *n += 1);
                state.interval
            }
            Err(ClusterError::Shutdown) => return,
            // Not a failure to retry soon: the operator has to act. Said once per reason.
            Err(ClusterError::JoinRefused { message }) => {
                state.readiness.set(false);
                if refused.as_ref() != Some(&message) {
                    tracing::error!(manager = %state.managers.leader(), "the manager refused this node: {message}");
                    refused = Some(message);
                }
                state.interval
            }
            Err(error) => {
                state.readiness.set(false);
                if failures == 0 {
                    tracing::warn!(manager = %state.managers.leader(), error = %domain_proto::ErrorChain(&error), "cannot join the manager; retrying");
                } else {
                    tracing::debug!(error = %domain_proto::ErrorChain(&error), failures, "join failed again");
                }
                failures = failures.saturating_add(1);
                FIRST_JOIN_RETRY
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(state.interval)
            }
        };
        let next = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => break,
                () = state.stored.notified(), if failures == 0 => {
                    let now = held_domains(current_holdings(&state.datastore).await.as_ref());
                    if now.is_some() && now != reported {
                        break;
                    }
                }
            }
        }
    }
}
