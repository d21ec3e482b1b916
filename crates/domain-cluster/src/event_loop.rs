//! The one owner of the swarm (docs/design.md §6): it polls swarm events and takes
//! [`Command`]s from handles over a bounded channel, answering on oneshot
//! channels, in the manner of rust-libp2p's file-sharing example.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use domain_telemetry::prometheus_client::metrics::family::Family;
use domain_telemetry::prometheus_client::metrics::gauge::Gauge;
use domain_telemetry::prometheus_client::registry::Registry;
use futures::StreamExt as _;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, dcutr, gossipsub, identify, kad, relay};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::addr::{is_circuit, peer_of, with_peer_id, without_peer_id};
use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::config::Role;
use crate::error::ClusterError;
use crate::gossip::GossipEvent;
use crate::peers::PeerEvent;
use crate::stream_behaviour::OpenStreamError;

/// What a dial aims at.
#[derive(Debug, Clone)]
pub(crate) enum DialTarget {
    /// An address, possibly ending with `/p2p/<peer>`.
    Addr(Multiaddr),
    /// A peer, at the addresses the behaviours know for it (Kademlia, identify).
    Peer(PeerId),
}

impl std::fmt::Display for DialTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(addr) => addr.fmt(f),
            Self::Peer(peer) => peer.fmt(f),
        }
    }
}

/// A request from a handle to the event loop.
#[derive(Debug)]
pub(crate) enum Command {
    /// Connect unless already connected; answers with the remote peer id.
    Dial {
        target: DialTarget,
        reply: oneshot::Sender<Result<PeerId, ClusterError>>,
    },
    /// Open a stream over an existing connection to the peer.
    OpenStream {
        peer: PeerId,
        protocol: libp2p::StreamProtocol,
        reply: oneshot::Sender<Result<crate::stream::PeerStream, OpenStreamError>>,
    },
    /// Subscribe to a gossip topic; `true` if newly subscribed.
    Subscribe {
        topic: String,
        reply: oneshot::Sender<Result<bool, ClusterError>>,
    },
    /// Unsubscribe from a gossip topic; `true` if it was subscribed.
    Unsubscribe {
        topic: String,
        reply: oneshot::Sender<bool>,
    },
    /// Publish on a gossip topic.
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), ClusterError>>,
    },
    /// The remote addresses of the open connections to a peer.
    PeerAddrs {
        peer: PeerId,
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    /// Every connected peer.
    ConnectedPeers { reply: oneshot::Sender<Vec<PeerId>> },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    /// Close every connection to the peer and refuse its connections for a while.
    Ban {
        peer: PeerId,
        duration: Duration,
        reply: oneshot::Sender<()>,
    },
    /// Stop the event loop, closing every connection.
    Shutdown { reply: oneshot::Sender<()> },
}

/// The state of a node's reservation on the manager's relay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum RelayStatus {
    /// This peer does not reserve a relay slot (manager, client, or no bootstrap).
    #[default]
    NotRequested,
    /// Waiting for the manager's answer (or for the connection to it).
    Pending,
    /// The reservation holds; the circuit address is among the listen addresses.
    Reserved,
    /// The reservation was refused or lost.
    Failed(String),
}

/// What the swarm listens on, as handles see it through a `watch` channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListenState {
    /// Every listen address, with `/p2p/<local id>`.
    pub(crate) addrs: Vec<Multiaddr>,
    /// Configured listeners that have reported neither an address nor a failure.
    pub(crate) pending_listeners: usize,
    /// Failures of configured listeners before their first address.
    pub(crate) failures: Vec<String>,
    /// The relay reservation.
    pub(crate) relay: RelayStatus,
}

/// The manager's address and peer id, for nodes and clients.
#[derive(Debug, Clone)]
pub(crate) struct Bootstrap {
    pub(crate) peer: PeerId,
    pub(crate) addr: Multiaddr,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    /// The swarm's metrics, when they are kept.
    metrics: Option<SwarmMetrics>,
    role: Role,
    commands: mpsc::Receiver<Command>,
    gossip: broadcast::Sender<GossipEvent>,
    peer_events: broadcast::Sender<PeerEvent>,
    listen: watch::Sender<ListenState>,
    /// Configured listeners yet to report.
    pending_listeners: HashSet<libp2p::core::transport::ListenerId>,
    /// The addresses of each listener, with `/p2p/<local id>`, in the order
    /// listeners first reported one.
    listener_addrs: Vec<(libp2p::core::transport::ListenerId, Vec<Multiaddr>)>,
    /// The listener that holds the relay reservation, once requested.
    relay_listener: Option<libp2p::core::transport::ListenerId>,
    bootstrap: Option<Bootstrap>,
    /// The other managers, known to Kademlia from the start.
    more_bootstrap: Vec<Bootstrap>,
    /// Whether a node should reserve a relay slot once connected to the manager.
    wants_relay: bool,
    /// Whether the first connection to the manager has been used to bootstrap.
    bootstrapped: bool,
    /// When to dial the manager again, after losing it (nodes only).
    redial: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The wait before the next redial; doubles up to [`MAX_REDIAL_BACKOFF`].
    redial_backoff: Duration,
    /// When to ask the relay again for a reservation it refused (a node the manager
    /// admits only once its operator allows it, or from its first join on).
    rereserve: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The wait before the next reservation request; doubles up to
    /// [`MAX_REDIAL_BACKOFF`].
    rereserve_backoff: Duration,
    /// Dials handles wait for, by the id of their connection.
    pending_dials: HashMap<ConnectionId, PendingDial>,
    /// The pending dial of each peer: a handle that asks for a peer already being
    /// dialled waits on that dial rather than opening a connection of its own (many
    /// requests at once to one peer would otherwise open one connection each).
    dialing: HashMap<PeerId, ConnectionId>,
    /// The open connections, by peer, with their remote address and whether they are
    /// relayed.
    connections: HashMap<PeerId, HashMap<ConnectionId, (Multiaddr, bool)>>,
    /// How long a stream to a peer reached only through a relay waits for DCUtR to
    /// open a direct connection (zero: not at all).
    hole_punch_wait: Duration,
    /// The peers whose relayed connection DCUtR may still upgrade, with the streams
    /// held back until it has (see [`EventLoop::start_hole_punch`]).
    hole_punches: HashMap<PeerId, HolePunch>,
    /// When the earliest of `hole_punches` stops waiting.
    hole_punch_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A hole punch under way: until when streams wait for it, and those waiting.
struct HolePunch {
    until: tokio::time::Instant,
    held: Vec<HeldStream>,
}

/// A stream asked for while its peer's hole punch was under way.
struct HeldStream {
    protocol: libp2p::StreamProtocol,
    reply: oneshot::Sender<Result<crate::stream::PeerStream, OpenStreamError>>,
}

/// A dial in flight and the handles waiting on it.
struct PendingDial {
    /// The address or peer dialled, for errors.
    target: String,
    /// The peer, when the dial names one.
    peer: Option<PeerId>,
    replies: Vec<oneshot::Sender<Result<PeerId, ClusterError>>>,
}

pub(crate) struct EventLoopParts {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) role: Role,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) gossip: broadcast::Sender<GossipEvent>,
    pub(crate) peer_events: broadcast::Sender<PeerEvent>,
    pub(crate) listen: watch::Sender<ListenState>,
    pub(crate) pending_listeners: HashSet<libp2p::core::transport::ListenerId>,
    pub(crate) bootstrap: Option<Bootstrap>,
    pub(crate) more_bootstrap: Vec<Bootstrap>,
    pub(crate) wants_relay: bool,
    pub(crate) metrics: Option<SwarmMetrics>,
    pub(crate) hole_punch_wait: Duration,
}

/// The swarm's metrics: libp2p's recorder of swarm and protocol events, the
/// connections open now (`domain_cluster_connections{kind="direct"|"relayed"}`) and
/// what AutoNAT says of this peer (`domain_cluster_reachability{status}`, 1 for the
/// status it holds now, 0 for the others).
pub(crate) struct SwarmMetrics {
    recorder: libp2p::metrics::Metrics,
    open: Family<[(&'static str, &'static str); 1], Gauge>,
    reachability: Family<[(&'static str, &'static str); 1], Gauge>,
}

impl SwarmMetrics {
    /// Registers both in `registry` (libp2p's under `libp2p_`).
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let recorder = libp2p::metrics::Metrics::new(registry);
        let open = Family::default();
        let reachability = Family::default();
        let cluster = registry.sub_registry_with_prefix("domain_cluster");
        cluster.register(
            "connections",
            "Connections open now, direct or through a relay",
            open.clone(),
        );
        cluster.register(
            "reachability",
            "Whether others can dial this peer, as AutoNAT last found: 1 for the status now",
            reachability.clone(),
        );
        let metrics = Self {
            recorder,
            open,
            reachability,
        };
        metrics.set_reachability(&autonat::NatStatus::Unknown);
        metrics
    }

    /// Sets the gauge of `status` to 1, the others to 0.
    fn set_reachability(&self, status: &autonat::NatStatus) {
        let now = reachability(status);
        for label in ["public", "private", "unknown"] {
            self.reachability
                .get_or_create(&[("status", label)])
                .set(i64::from(label == now));
        }
    }

    fn connections(&self, relayed: bool) -> Gauge {
        let kind = if relayed { "relayed" } else { "direct" };
        self.open.get_or_create(&[("kind", kind)]).clone()
    }
}

impl EventLoop {
    pub(crate) fn new(parts: EventLoopParts) -> Self {
        let EventLoopParts {
            swarm,
            role,
            commands,
            gossip,
            peer_events,
            listen,
            pending_listeners,
            bootstrap,
            more_bootstrap,
            wants_relay,
            metrics,
            hole_punch_wait,
        } = parts;
        Self {
            swarm,
            metrics,
            role,
            commands,
            gossip,
            peer_events,
            listen,
            pending_listeners,
            listener_addrs: Vec::new(),
            relay_listener: None,
            bootstrap,
            more_bootstrap,
            wants_relay,
            bootstrapped: false,
            redial: None,
            redial_backoff: MIN_REDIAL_BACKOFF,
            rereserve: None,
            rereserve_backoff: MIN_REDIAL_BACKOFF,
            pending_dials: HashMap::new(),
            dialing: HashMap::new(),
            connections: HashMap::new(),
            hole_punch_wait,
            hole_punches: HashMap::new(),
            hole_punch_timer: None,
        }
    }

    /// Runs until [`Command::Shutdown`] or until every handle is dropped.
    pub(crate) async fn run(mut self) {
        for manager in &self.more_bootstrap {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&manager.peer, without_peer_id(&manager.addr));
        }
        if let Some(bootstrap) = self.bootstrap.clone() {
            self.start_bootstrap(&bootstrap);
        }
        let shutdown_reply = loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                () = until(&mut self.redial) => {
                    self.redial = None;
                    self.dial_manager();
                }
                () = until(&mut self.rereserve) => {
                    self.rereserve = None;
                    self.reserve_relay_slot();
                }
                () = until(&mut self.hole_punch_timer) => {
                    self.hole_punch_timer = None;
                    self.end_late_hole_punches();
                }
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => break Some(reply),
                    Some(command) => self.on_command(command),
                    None => break None,
                },
            }
        };
        tracing::debug!(peer = %self.swarm.local_peer_id(), "cluster event loop stopping");
        // Dropping the swarm closes every connection and listener; handles
        // waiting on the watch or gossip channels see them close.
        drop(self);
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    fn start_bootstrap(&mut self, bootstrap: &Bootstrap) {
        let transport_addr = without_peer_id(&bootstrap.addr);
        self.swarm
            .behaviour_mut()
            .kad
            .add_address(&bootstrap.peer, transport_addr.clone());
        self.swarm
            .behaviour_mut()
            .autonat
            .add_server(bootstrap.peer, Some(transport_addr));
        self.dial_manager();
    }

    /// Dials the manager unless connected or dialling already.
    fn dial_manager(&mut self) {
        let Some(bootstrap) = &self.bootstrap else {
            return;
        };
        let opts = DialOpts::peer_id(bootstrap.peer)
            .addresses(vec![bootstrap.addr.clone()])
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(error) => {
                tracing::warn!(manager = %bootstrap.addr, error = %domain_proto::ErrorChain(&error), "cannot dial the manager");
                self.schedule_redial();
            }
        }
    }

    /// A node keeps its connection to the manager, which holds its relay
    /// reservation: when it is lost, dial again after a growing pause.
    fn schedule_redial(&mut self) {
        let Some(bootstrap) = &self.bootstrap else {
            return;
        };
        if self.role != Role::Node
            || self.redial.is_some()
            || self.swarm.is_connected(&bootstrap.peer)
        {
            return;
        }
        tracing::info!(manager = %bootstrap.addr, after = ?self.redial_backoff, "dialling the manager again");
        self.redial = Some(Box::pin(tokio::time::sleep(self.redial_backoff)));
        self.redial_backoff = (self.redial_backoff * 2).min(MAX_REDIAL_BACKOFF);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial { target, reply } => self.dial(target, reply),
            Command::OpenStream {
                peer,
                protocol,
                reply,
            } => match self.hole_punches.get_mut(&peer) {
                Some(punch) => punch.held.push(HeldStream { protocol, reply }),
                None => self
                    .swarm
                    .behaviour_mut()
                    .stream
                    .open_stream(peer, protocol, reply),
            },
            Command::Subscribe { topic, reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&gossipsub::IdentTopic::new(topic.clone()))
                    .map_err(|source| ClusterError::Subscribe { topic, source });
                let _ = reply.send(result);
            }
            Command::Unsubscribe { topic, reply } => {
                let was = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .unsubscribe(&gossipsub::IdentTopic::new(topic));
                let _ = reply.send(was);
            }
            Command::Publish { topic, data, reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(gossipsub::IdentTopic::new(topic.clone()), data)
                    .map(drop)
                    .map_err(|source| ClusterError::Publish { topic, source });
                let _ = reply.send(result);
            }
            Command::PeerAddrs { peer, reply } => {
                let addrs = self
                    .connections
                    .get(&peer)
                    .map(|c| c.values().map(|(addr, _)| addr.clone()).collect())
                    .unwrap_or_default();
                let _ = reply.send(addrs);
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Disconnect { peer, reply } => {
                let _ = reply.send(self.swarm.disconnect_peer_id(peer).is_ok());
            }
            Command::Ban {
                peer,
                duration,
                reply,
            } => {
                tracing::info!(%peer, ?duration, "banning a peer");
                self.swarm.behaviour_mut().bans.ban(peer, duration);
                let _ = self.swarm.disconnect_peer_id(peer);
                let _ = reply.send(());
            }
            // Handled by `run`, which owns the loop.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn dial(&mut self, target: DialTarget, reply: oneshot::Sender<Result<PeerId, ClusterError>>) {
        let peer = match &target {
            DialTarget::Peer(peer) => Some(*peer),
            DialTarget::Addr(addr) => peer_of(addr),
        };
        // A direct address asked for is dialled even when the peer is reached through a
        // relay already (a DHT query may have connected that way first): streams go
        // over a direct connection when there is one, and a circuit dies with its relay.
        let direct = matches!(&target, DialTarget::Addr(addr) if !is_circuit(addr));
        if let Some(peer) = peer {
            let connected = if direct {
                self.has_direct_connection(peer)
            } else {
                self.swarm.is_connected(&peer)
            };
            if connected {
                let _ = reply.send(Ok(peer));
                return;
            }
            if let Some(pending) = self
                .dialing
                .get(&peer)
                .and_then(|id| self.pending_dials.get_mut(id))
            {
                pending.replies.push(reply);
                return;
            }
        }
        let opts = match (&target, peer) {
            (DialTarget::Addr(addr), Some(peer)) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .condition(if direct {
                    PeerCondition::Always
                } else {
                    PeerCondition::Disconnected
                })
                .build(),
            (DialTarget::Addr(addr), None) => {
                DialOpts::unknown_peer_id().address(addr.clone()).build()
            }
            (DialTarget::Peer(peer), _) => DialOpts::peer_id(*peer)
                .condition(PeerCondition::Disconnected)
                .build(),
        };
        let connection_id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                if let Some(peer) = peer {
                    self.dialing.insert(peer, connection_id);
                }
                self.pending_dials.insert(
                    connection_id,
                    PendingDial {
                        target: target.to_string(),
                        peer,
                        replies: vec![reply],
                    },
                );
            }
            Err(source) => {
                let _ = reply.send(Err(ClusterError::Dial {
                    target: target.to_string(),
                    source: Arc::new(source),
                }));
            }
        }
    }

    /// Whether one of the open connections to `peer` is not relayed.
    fn has_direct_connection(&self, peer: PeerId) -> bool {
        self.connections
            .get(&peer)
            .is_some_and(|connections| connections.values().any(|&(_, relayed)| !relayed))
    }

    /// On a relayed connection to `peer` and none direct: DCUtR now tries to open a direct
    /// one (the peer that accepted the circuit starts it), so streams to `peer` wait for
    /// it, up to `hole_punch_wait`. A task stream opened at once would carry its bytes
    /// through the manager's relay to its end, though a direct connection comes a moment
    /// later: the relay is a fallback path, shared and capped (`RelayLimits`).
    fn start_hole_punch(&mut self, peer: PeerId) {
        if self.hole_punch_wait.is_zero()
            || self.role == Role::Manager
            || self.has_direct_connection(peer)
            || self.hole_punches.contains_key(&peer)
        {
            return;
        }
        let until = tokio::time::Instant::now() + self.hole_punch_wait;
        tracing::debug!(%peer, wait = ?self.hole_punch_wait, "relayed connection: streams wait for the hole punch");
        self.hole_punches.insert(
            peer,
            HolePunch {
                until,
                held: Vec::new(),
            },
        );
        if self.hole_punch_timer.is_none() {
            self.hole_punch_timer = Some(Box::pin(tokio::time::sleep_until(until)));
        }
    }

    /// The hole punch to `peer` is over (a direct connection, DCUtR's answer, no
    /// connection left, or the wait ran out): the held streams are opened, over the
    /// direct connection when there is one.
    fn end_hole_punch(&mut self, peer: PeerId) {
        let Some(punch) = self.hole_punches.remove(&peer) else {
            return;
        };
        if !punch.held.is_empty() {
            tracing::debug!(%peer, streams = punch.held.len(), direct = self.has_direct_connection(peer), "opening the streams held for the hole punch");
        }
        for HeldStream { protocol, reply } in punch.held {
            self.swarm
                .behaviour_mut()
                .stream
                .open_stream(peer, protocol, reply);
        }
    }

    /// Ends the hole punches that waited their time, and sets the timer for the next.
    fn end_late_hole_punches(&mut self) {
        let now = tokio::time::Instant::now();
        let late: Vec<PeerId> = self
            .hole_punches
            .iter()
            .filter(|(_, punch)| punch.until <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in late {
            tracing::debug!(%peer, "no direct connection in time: streams go through the relay");
            self.end_hole_punch(peer);
        }
        self.hole_punch_timer = self
            .hole_punches
            .values()
            .map(|punch| punch.until)
            .min()
            .map(|until| Box::pin(tokio::time::sleep_until(until)));
    }

    /// Forgets the pending dial of `connection_id`, if any, and hands it over.
    fn end_dial(&mut self, connection_id: ConnectionId) -> Option<PendingDial> {
        let pending = self.pending_dials.remove(&connection_id)?;
        if let Some(peer) = pending.peer {
            if self.dialing.get(&peer) == Some(&connection_id) {
                self.dialing.remove(&peer);
            }
        }
        Some(pending)
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(metrics) = &self.metrics {
            record(&metrics.recorder, &event);
        }
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %remote_addr(&endpoint), "connection established");
                if let Some(metrics) = &self.metrics {
                    metrics.connections(endpoint.is_relayed()).inc();
                }
                self.connections.entry(peer_id).or_default().insert(
                    connection_id,
                    (remote_addr(&endpoint).clone(), endpoint.is_relayed()),
                );
                if endpoint.is_relayed() {
                    self.start_hole_punch(peer_id);
                } else {
                    self.end_hole_punch(peer_id);
                }
                if let Some(pending) = self.end_dial(connection_id) {
                    for reply in pending.replies {
                        let _ = reply.send(Ok(peer_id));
                    }
                }
                if self.bootstrap.as_ref().is_some_and(|b| b.peer == peer_id) {
                    self.on_manager_connected();
                } else if !self.bootstrapped
                    && self.more_bootstrap.iter().any(|b| b.peer == peer_id)
                {
                    self.join_dht();
                }
                if num_established.get() == 1 {
                    let addr = remote_addr(&endpoint).clone();
                    let _ = self.peer_events.send(PeerEvent::Connected {
                        peer: peer_id,
                        addr,
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                num_established,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    if let (Some((_, relayed)), Some(metrics)) =
                        (conns.remove(&connection_id), &self.metrics)
                    {
                        metrics.connections(relayed).dec();
                    }
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    // Held streams fail at once: there is no connection left to open them on.
                    self.end_hole_punch(peer_id);
                    if self.bootstrap.as_ref().is_some_and(|b| b.peer == peer_id) {
                        if self.wants_relay {
                            // The reservation went with the connection.
                            self.update_listen(|state| state.relay = RelayStatus::Pending);
                        }
                        self.schedule_redial();
                    }
                    let _ = self
                        .peer_events
                        .send(PeerEvent::Disconnected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(?peer_id, error = %domain_proto::ErrorChain(&error), "outgoing connection failed");
                if let Some(pending) = self.end_dial(connection_id) {
                    let source = Arc::new(error);
                    for reply in pending.replies {
                        let _ = reply.send(Err(ClusterError::Dial {
                            target: pending.target.clone(),
                            source: Arc::clone(&source),
                        }));
                    }
                }
                if peer_id.is_some() && peer_id == self.bootstrap.as_ref().map(|b| b.peer) {
                    self.schedule_redial();
                }
            }
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!(%address, "listening");
                if self.role == Role::Manager && !is_circuit(&address) {
                    // The manager is reachable by definition, and its relay
                    // server serves only while it has a confirmed address.
                    self.swarm.add_external_address(address.clone());
                }
                let full = with_peer_id(address, *self.swarm.local_peer_id());
                match self
                    .listener_addrs
                    .iter_mut()
                    .find(|(id, _)| *id == listener_id)
                {
                    Some((_, addrs)) if !addrs.contains(&full) => addrs.push(full),
                    Some(_) => {}
                    None => self.listener_addrs.push((listener_id, vec![full])),
                }
                let addrs = self.all_listen_addrs();
                let is_relay = self.relay_listener == Some(listener_id);
                let first = self.pending_listeners.remove(&listener_id);
                self.update_listen(|state| {
                    state.addrs = addrs;
                    if first {
                        state.pending_listeners = state.pending_listeners.saturating_sub(1);
                    }
                    if is_relay {
                        state.relay = RelayStatus::Reserved;
                    }
                });
            }
            SwarmEvent::ExpiredListenAddr {
                listener_id,
                address,
            } => {
                let full = with_peer_id(address, *self.swarm.local_peer_id());
                if let Some((_, addrs)) = self
                    .listener_addrs
                    .iter_mut()
                    .find(|(id, _)| *id == listener_id)
                {
                    addrs.retain(|a| *a != full);
                }
                let addrs = self.all_listen_addrs();
                self.update_listen(|state| state.addrs = addrs);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                self.listener_addrs.retain(|(id, _)| *id != listener_id);
                let addrs = self.all_listen_addrs();
                // A relay listener closes cleanly when the connection holding
                // its reservation goes; it closes with an error when the
                // relay refuses the reservation.
                let lost = reason.is_ok();
                let reason = match reason {
                    Ok(()) => "closed".to_owned(),
                    Err(error) => domain_proto::ErrorChain(&error).to_string(),
                };
                tracing::warn!(?listener_id, %reason, "listener closed");
                let first = self.pending_listeners.remove(&listener_id);
                let is_relay = self.relay_listener == Some(listener_id);
                if is_relay {
                    self.relay_listener = None;
                }
                self.update_listen(|state| {
                    state.addrs = addrs;
                    if first {
                        state.pending_listeners = state.pending_listeners.saturating_sub(1);
                        state.failures.push(reason.clone());
                    }
                    if is_relay && !lost {
                        state.relay = RelayStatus::Failed(reason);
                    }
                });
                if is_relay && lost {
                    self.reserve_relay_slot();
                } else if is_relay && self.rereserve.is_none() {
                    tracing::info!(after = ?self.rereserve_backoff, "asking the relay again later");
                    self.rereserve = Some(Box::pin(tokio::time::sleep(self.rereserve_backoff)));
                    self.rereserve_backoff = (self.rereserve_backoff * 2).min(MAX_REDIAL_BACKOFF);
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                tracing::warn!(?listener_id, error = %domain_proto::ErrorChain(&error), "listener error");
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(%send_back_addr, error = %domain_proto::ErrorChain(&error), "incoming connection failed");
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
            }
            _ => {}
        }
    }

    /// On a connection to the manager: the first time, join the DHT; on a
    /// node without a reservation, reserve a relay slot so that peers that
    /// cannot dial it directly reach it through the manager.
    fn on_manager_connected(&mut self) {
        self.redial = None;
        self.redial_backoff = MIN_REDIAL_BACKOFF;
        if !self.bootstrapped {
            self.join_dht();
        }
        self.reserve_relay_slot();
    }

    /// Joins the DHT through the managers Kademlia knows, once.
    fn join_dht(&mut self) {
        self.bootstrapped = true;
        if let Err(error) = self.swarm.behaviour_mut().kad.bootstrap() {
            tracing::warn!(error = %domain_proto::ErrorChain(&error), "cannot bootstrap Kademlia");
        }
    }

    /// Listens through the manager's relay, once connected to it, unless a
    /// reservation is held or under way.
    fn reserve_relay_slot(&mut self) {
        let Some(bootstrap) = self.bootstrap.clone() else {
            return;
        };
        if !self.wants_relay || self.relay_listener.is_some() {
            return;
        }
        self.update_listen(|state| state.relay = RelayStatus::Pending);
        if !self.swarm.is_connected(&bootstrap.peer) {
            // Reserved again once the redial connects.
            self.schedule_redial();
            return;
        }
        let circuit = bootstrap.addr.with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(listener) => self.relay_listener = Some(listener),
            Err(error) => {
                tracing::warn!(%circuit, error = %domain_proto::ErrorChain(&error), "cannot listen through the relay");
                self.update_listen(|state| {
                    state.relay = RelayStatus::Failed(domain_proto::ErrorChain(&error).to_string())
                });
            }
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(event) => self.on_gossip_event(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let _ = self.peer_events.send(PeerEvent::Identified {
                    peer: peer_id,
                    protocol_version: info.protocol_version.clone(),
                    agent_version: info.agent_version.clone(),
                });
                // Peers that speak our Kademlia protocol go into the routing
                // table with the addresses they listen on (relayed ones included).
                let kad_protocol = libp2p::StreamProtocol::new(domain_proto::protocols::KADEMLIA);
                if info.protocols.contains(&kad_protocol) {
                    for addr in info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { result, .. }) => {
                tracing::debug!(?result, "kademlia query progressed");
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, renewal, "relay reservation accepted");
                self.rereserve_backoff = MIN_REDIAL_BACKOFF;
            }
            BehaviourEvent::RelayServer(event) => tracing::debug!(?event, "relay server"),
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => {
                // Operators see whether hole punching works where they run (it needs NATs
                // that keep a mapping per local port); the counts are in `libp2p_dcutr_*`.
                match result {
                    Ok(connection) => {
                        tracing::info!(peer = %remote_peer_id, ?connection, "direct connection upgrade succeeded");
                    }
                    Err(error) => {
                        tracing::info!(peer = %remote_peer_id, error = %domain_proto::ErrorChain(&error), "direct connection upgrade failed");
                    }
                }
                self.end_hole_punch(remote_peer_id);
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                let address = match &new {
                    autonat::NatStatus::Public(address) => Some(address.to_string()),
                    _ => None,
                };
                tracing::info!(
                    reachability = reachability(&new),
                    previous = reachability(&old),
                    address,
                    "reachability changed"
                );
                if let Some(metrics) = &self.metrics {
                    metrics.set_reachability(&new);
                }
            }
            _ => {}
        }
    }

    fn on_gossip_event(&mut self, event: gossipsub::Event) {
        let event = match event {
            gossipsub::Event::Message {
                propagation_source,
                message,
                ..
            } => GossipEvent::Message {
                topic: message.topic.into_string(),
                source: message.source,
                propagation_source,
                data: message.data,
            },
            gossipsub::Event::Subscribed { peer_id, topic, .. } => GossipEvent::Subscribed {
                peer: peer_id,
                topic: topic.into_string(),
            },
            gossipsub::Event::Unsubscribed { peer_id, topic } => GossipEvent::Unsubscribed {
                peer: peer_id,
                topic: topic.into_string(),
            },
            _ => return,
        };
        // No subscriber is not an error: nobody listens to gossip right now.
        let _ = self.gossip.send(event);
    }

    /// Every listener's addresses, each once, in the order listeners reported.
    fn all_listen_addrs(&self) -> Vec<Multiaddr> {
        let mut all = Vec::new();
        for addr in self.listener_addrs.iter().flat_map(|(_, addrs)| addrs) {
            if !all.contains(addr) {
                all.push(addr.clone());
            }
        }
        all
    }

    fn update_listen(&self, change: impl FnOnce(&mut ListenState)) {
        self.listen.send_modify(change);
    }
}

/// The first pause before dialling a lost manager again.
const MIN_REDIAL_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause between dials of a lost manager.
const MAX_REDIAL_BACKOFF: Duration = Duration::from_secs(30);

/// Waits for `deadline`, or forever when there is none.
async fn until(deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match deadline {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The label of an AutoNAT status, in logs and in `domain_cluster_reachability`.
fn reachability(status: &autonat::NatStatus) -> &'static str {
    match status {
        autonat::NatStatus::Public(_) => "public",
        autonat::NatStatus::Private => "private",
        autonat::NatStatus::Unknown => "unknown",
    }
}

fn remote_addr(endpoint: &ConnectedPoint) -> &Multiaddr {
    match endpoint {
        ConnectedPoint::Dialer { address, .. } => address,
        ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
    }
}

/// Hands `event` to libp2p's recorder: the swarm's own, and those of the protocols it
/// has a recorder for.
fn record(metrics: &libp2p::metrics::Metrics, event: &SwarmEvent<BehaviourEvent>) {
    use libp2p::metrics::Recorder as _;
    metrics.record(event);
    if let SwarmEvent::Behaviour(event) = event {
        match event {
            BehaviourEvent::Identify(event) => metrics.record(event),
            BehaviourEvent::Ping(event) => metrics.record(event),
            BehaviourEvent::Kad(event) => metrics.record(event),
            BehaviourEvent::Gossipsub(event) => metrics.record(event),
            BehaviourEvent::RelayServer(event) => metrics.record(event),
            BehaviourEvent::Dcutr(event) => metrics.record(event),
            _ => {}
        }
    }
}
