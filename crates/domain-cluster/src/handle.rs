//! [`Cluster::start`] and the cloneable [`ClusterHandle`] that drives the event loop.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use domain_proto::task::Task;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::addr::peer_of;
use crate::behaviour::build_swarm;
use crate::config::{ClusterConfig, Role};
use crate::error::ClusterError;
use crate::event_loop::{
    Bootstrap, Command, DialTarget, EventLoop, EventLoopParts, ListenState, RelayStatus,
};
use crate::gossip::{self, GossipEvents, TaskUpdates};
use crate::peers::{PeerEvent, PeerEvents};
use crate::stream::{ClusterStream, IncomingStreams, compat};
use crate::stream_behaviour::{OpenStreamError, Registry};

/// Starts a peer's swarm.
#[derive(Debug)]
pub struct Cluster;

impl Cluster {
    /// Builds the swarm for `config`, starts listening and spawns the event loop
    /// on the current Tokio runtime.
    ///
    /// Returns the handle and the event loop's task, which ends after
    /// [`ClusterHandle::shutdown`] or once every handle is dropped.
    ///
    /// # Errors
    /// [`ClusterError::NoRuntime`] outside a Tokio runtime;
    /// [`ClusterError::MissingPeerId`] when the bootstrap address does not name
    /// the manager; [`ClusterError::Listen`] when an address cannot be listened
    /// on; setup errors of Noise or gossipsub.
    pub fn start(config: ClusterConfig) -> Result<(ClusterHandle, JoinHandle<()>), ClusterError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClusterError::NoRuntime)?;
        let bootstrap = match &config.bootstrap {
            Some(addr) => Some(Bootstrap {
                peer: peer_of(addr)
                    .ok_or_else(|| ClusterError::MissingPeerId { addr: addr.clone() })?,
                addr: addr.clone(),
            }),
            None => None,
        };
        let more_bootstrap = config
            .more_bootstrap
            .iter()
            .map(|addr| {
                Ok(Bootstrap {
                    peer: peer_of(addr)
                        .ok_or_else(|| ClusterError::MissingPeerId { addr: addr.clone() })?,
                    addr: addr.clone(),
                })
            })
            .collect::<Result<Vec<_>, ClusterError>>()?;
        let registry = Registry::new(config.accept_backlog);
        let mut swarm = build_swarm(&config, Arc::clone(&registry))?;
        let local_peer_id = *swarm.local_peer_id();

        let mut pending_listeners = HashSet::new();
        for addr in &config.listen_addrs {
            // QUIC binds its UDP socket here, inside the runtime found above.
            let listener =
                swarm
                    .listen_on(addr.clone())
                    .map_err(|source| ClusterError::Listen {
                        addr: addr.clone(),
                        source,
                    })?;
            pending_listeners.insert(listener);
        }
        for addr in &config.external_addrs {
            swarm.add_external_address(addr.clone());
        }

        let wants_relay =
            config.role == Role::Node && config.relay_reservation && bootstrap.is_some();
        let (command_tx, command_rx) = mpsc::channel(config.command_buffer.max(1));
        let (gossip_tx, _) = broadcast::channel(config.gossip_buffer.max(1));
        let (peer_events_tx, _) = broadcast::channel(config.gossip_buffer.max(1));
        let (listen_tx, listen_rx) = watch::channel(ListenState {
            pending_listeners: pending_listeners.len(),
            relay: if wants_relay {
                RelayStatus::Pending
            } else {
                RelayStatus::NotRequested
            },
            ..ListenState::default()
        });
        let relay = match (config.role, &bootstrap) {
            (Role::Node | Role::Client, Some(b)) => Some(b.clone()),
            _ => None,
        };
        let handle = ClusterHandle {
            commands: command_tx,
            registry,
            local_peer_id,
            listen: listen_rx,
            gossip: gossip_tx.downgrade(),
            peer_events: peer_events_tx.downgrade(),
            relay,
            request_timeout: config.request_timeout,
        };
        let event_loop = EventLoop::new(EventLoopParts {
            swarm,
            role: config.role,
            commands: command_rx,
            gossip: gossip_tx,
            peer_events: peer_events_tx,
            listen: listen_tx,
            pending_listeners,
            bootstrap,
            more_bootstrap,
            wants_relay,
            metrics: config
                .metrics
                .as_ref()
                .map(|metrics| metrics.register("", crate::event_loop::SwarmMetrics::new)),
            hole_punch_wait: config.hole_punch_wait,
        });
        let task = runtime.spawn(event_loop.run());
        Ok((handle, task))
    }
}

/// A cloneable handle on a running peer: dials, streams, gossip.
///
/// Every method that waits on a remote peer gives up after the configured
/// [`request_timeout`](ClusterConfig::request_timeout).
#[derive(Clone)]
pub struct ClusterHandle {
    commands: mpsc::Sender<Command>,
    registry: Arc<Registry>,
    local_peer_id: PeerId,
    listen: watch::Receiver<ListenState>,
    /// Weak, so that the channel closes (and subscribers see it) when the
    /// event loop stops, however many handles remain.
    gossip: broadcast::WeakSender<gossip::GossipEvent>,
    peer_events: broadcast::WeakSender<PeerEvent>,
    relay: Option<Bootstrap>,
    request_timeout: Duration,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("local_peer_id", &self.local_peer_id)
            .field("relay", &self.relay.as_ref().map(|r| &r.addr))
            .finish_non_exhaustive()
    }
}

impl ClusterHandle {
    /// This peer's id.
    #[must_use]
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The limit on remote waits.
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The addresses this peer listens on, each ending with `/p2p/<local id>`,
    /// once every configured listener has reported its first address.
    ///
    /// # Errors
    /// [`ClusterError::ListenerFailed`] when a configured listener closed
    /// before reporting an address (its port taken, say);
    /// [`ClusterError::Timeout`] when the listeners do not report in time;
    /// [`ClusterError::Shutdown`] when the event loop has stopped.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, ClusterError> {
        let mut listen = self.listen.clone();
        let state = self
            .timed("waiting for listen addresses", async {
                listen
                    .wait_for(|s| s.pending_listeners == 0)
                    .await
                    .map(|s| s.clone())
            })
            .await?
            .map_err(|_| ClusterError::Shutdown)?;
        if !state.failures.is_empty() {
            return Err(ClusterError::ListenerFailed {
                reasons: state.failures,
            });
        }
        Ok(state.addrs)
    }

    /// The relayed addresses of this node (`<manager>/p2p-circuit/p2p/<local id>`),
    /// once the manager has accepted its relay reservation.
    ///
    /// # Errors
    /// [`ClusterError::NoRelayReservation`] when this peer does not reserve a
    /// relay slot or the manager refused it; [`ClusterError::Timeout`],
    /// [`ClusterError::Shutdown`].
    pub async fn relay_addrs(&self) -> Result<Vec<Multiaddr>, ClusterError> {
        let mut listen = self.listen.clone();
        let state = self
            .timed("waiting for the relay reservation", async {
                listen
                    .wait_for(|s| !matches!(s.relay, RelayStatus::Pending))
                    .await
                    .map(|s| s.clone())
            })
            .await?
            .map_err(|_| ClusterError::Shutdown)?;
        match state.relay {
            RelayStatus::Reserved => Ok(state
                .addrs
                .into_iter()
                .filter(crate::addr::is_circuit)
                .collect()),
            RelayStatus::NotRequested => Err(ClusterError::NoRelayReservation {
                reason: "this peer does not reserve a relay slot".into(),
            }),
            RelayStatus::Failed(reason) => Err(ClusterError::NoRelayReservation { reason }),
            // `wait_for` returned, so the status is no longer pending.
            RelayStatus::Pending => Err(ClusterError::Shutdown),
        }
    }

    /// Connects to `addr` unless a connection to the peer it names exists;
    /// answers with the remote peer id.
    ///
    /// # Errors
    /// [`ClusterError::Dial`] naming the address and the reason;
    /// [`ClusterError::Timeout`]; [`ClusterError::Shutdown`].
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, ClusterError> {
        // libp2p's relay client opens a circuit only over a connection to the
        // relay that is already up; it drops the request when its own dial of
        // the relay collides with one in flight. So connect to the relay first.
        if let Some(relay) = relay_part(&addr) {
            self.dial_target(DialTarget::Addr(relay)).await?;
        }
        self.dial_target(DialTarget::Addr(addr)).await
    }

    async fn dial_target(&self, target: DialTarget) -> Result<PeerId, ClusterError> {
        let operation = format!("dialling {target}");
        self.timed(
            operation,
            self.request(|reply| Command::Dial { target, reply }),
        )
        .await??
    }

    /// Opens a stream of `protocol` to `peer`, connecting first when needed:
    /// directly at the addresses known for the peer, and when that fails,
    /// through the manager's relay (`<manager>/p2p-circuit/p2p/<peer>`).
    ///
    /// # Errors
    /// [`ClusterError::Unreachable`] when neither way connects;
    /// [`ClusterError::OpenStream`] when the peer refuses the protocol;
    /// [`ClusterError::InvalidProtocol`], [`ClusterError::Timeout`],
    /// [`ClusterError::Shutdown`].
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: &str,
    ) -> Result<ClusterStream, ClusterError> {
        let protocol_id = parse_protocol(protocol)?;
        self.connect(peer).await?;
        let (reply, answer) = oneshot::channel();
        let command = Command::OpenStream {
            peer,
            protocol: protocol_id,
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| ClusterError::Shutdown)?;
        let outcome = self
            .timed(format!("opening a {protocol} stream to {peer}"), answer)
            .await?;
        let stream = match outcome {
            Ok(result) => result,
            // The request is dropped with its connection when that closes
            // before the stream is negotiated.
            Err(_) if !self.commands.is_closed() => Err(OpenStreamError::NotConnected),
            Err(_) => return Err(ClusterError::Shutdown),
        }
        .map_err(|source| ClusterError::OpenStream {
            peer,
            protocol: protocol.to_owned(),
            source: Box::new(source),
        })?;
        Ok(compat(stream))
    }

    /// [`open_stream`](Self::open_stream), tried again after growing pauses (0.1 s, doubling
    /// to 2 s) while `peer` cannot be reached, for up to `patience`: a peer whose relay slot
    /// is not reserved yet, or whose address this one has not learned yet, is reachable a
    /// moment later.
    ///
    /// # Errors
    /// Those of [`open_stream`](Self::open_stream); [`ClusterError::Unreachable`] once the
    /// patience is spent.
    pub async fn open_stream_within(
        &self,
        peer: PeerId,
        protocol: &str,
        patience: Duration,
    ) -> Result<ClusterStream, ClusterError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.open_stream(peer, protocol).await {
                Err(error @ ClusterError::Unreachable { .. })
                    if tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!(%peer, error = %domain_proto::ErrorChain(&error), ?pause, "peer unreachable, trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                opened => return opened,
            }
        }
    }

    /// Makes sure a connection to `peer` exists, falling back to the relay.
    async fn connect(&self, peer: PeerId) -> Result<(), ClusterError> {
        let direct = match self.dial_target(DialTarget::Peer(peer)).await {
            Ok(_) => return Ok(()),
            Err(ClusterError::Shutdown) => return Err(ClusterError::Shutdown),
            Err(direct) => direct,
        };
        let Some(relay) = self.relay.as_ref().filter(|r| r.peer != peer) else {
            return Err(direct);
        };
        let circuit = relay
            .addr
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(peer));
        tracing::debug!(%peer, %direct, %circuit, "direct dial failed, dialling through the relay");
        match self.dial(circuit).await {
            Ok(_) => Ok(()),
            Err(relayed) => Err(ClusterError::Unreachable {
                peer,
                direct: Box::new(direct),
                relayed: Box::new(relayed),
            }),
        }
    }

    /// Accepts inbound streams of `protocol`. Only one acceptor per protocol
    /// may exist at a time; dropping it frees the protocol.
    ///
    /// # Errors
    /// [`ClusterError::AlreadyAccepting`], [`ClusterError::InvalidProtocol`].
    pub fn accept(&self, protocol: &str) -> Result<IncomingStreams, ClusterError> {
        let protocol_id = parse_protocol(protocol)?;
        self.registry
            .accept(protocol_id)
            .map(IncomingStreams::new)
            .map_err(|_| ClusterError::AlreadyAccepting {
                protocol: protocol.to_owned(),
            })
    }

    /// The remote addresses of the open connections to `peer` (empty when not
    /// connected); a relayed connection's address contains `/p2p-circuit`.
    ///
    /// # Errors
    /// [`ClusterError::Shutdown`].
    pub async fn peer_addrs(&self, peer: PeerId) -> Result<Vec<Multiaddr>, ClusterError> {
        self.request(|reply| Command::PeerAddrs { peer, reply })
            .await
    }

    /// Every peer with an open connection.
    ///
    /// # Errors
    /// [`ClusterError::Shutdown`].
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, ClusterError> {
        self.request(|reply| Command::ConnectedPeers { reply })
            .await
    }

    /// Closes every connection to `peer` (its streams fail at once); `false` when there
    /// was none. The peer may connect again.
    ///
    /// # Errors
    /// [`ClusterError::Shutdown`].
    pub async fn disconnect(&self, peer: PeerId) -> Result<bool, ClusterError> {
        self.request(|reply| Command::Disconnect { peer, reply })
            .await
    }

    /// Closes every connection to `peer` and refuses its connections, both ways, for
    /// `duration` (a longer ban already in force stays). For a peer that misbehaves.
    ///
    /// # Errors
    /// [`ClusterError::Shutdown`].
    pub async fn ban(&self, peer: PeerId, duration: Duration) -> Result<(), ClusterError> {
        self.request(|reply| Command::Ban {
            peer,
            duration,
            reply,
        })
        .await
    }

    /// Peers connecting and disconnecting, from now on.
    ///
    /// # Errors
    /// [`ClusterError::Shutdown`].
    pub fn peer_events(&self) -> Result<PeerEvents, ClusterError> {
        self.peer_events
            .upgrade()
            .map(|sender| PeerEvents::new(sender.subscribe()))
            .ok_or(ClusterError::Shutdown)
    }

    /// Subscribes to a gossip topic; `true` when newly subscribed. Messages
    /// arrive on [`gossip_events`](Self::gossip_events).
    ///
    /// # Errors
    /// [`ClusterError::Subscribe`], [`ClusterError::Shutdown`].
    pub async fn subscribe(&self, topic: &str) -> Result<bool, ClusterError> {
        let topic = topic.to_owned();
        self.request(|reply| Command::Subscribe { topic, reply })
            .await?
    }

    /// Unsubscribes from a gossip topic; `true` when it was subscribed.
    ///
    /// # Errors
    /// [`ClusterError::Shutdown`].
    pub async fn unsubscribe(&self, topic: &str) -> Result<bool, ClusterError> {
        let topic = topic.to_owned();
        self.request(|reply| Command::Unsubscribe { topic, reply })
            .await
    }

    /// Publishes a signed message on a gossip topic.
    ///
    /// # Errors
    /// [`ClusterError::Publish`] (for instance when no peer subscribes to the
    /// topic yet), [`ClusterError::Shutdown`].
    pub async fn publish(&self, topic: &str, data: impl Into<Vec<u8>>) -> Result<(), ClusterError> {
        let topic = topic.to_owned();
        let data = data.into();
        self.request(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// Gossip events from now on, for every subscribed topic.
    ///
    /// # Errors
    /// [`ClusterError::Shutdown`].
    pub fn gossip_events(&self) -> Result<GossipEvents, ClusterError> {
        self.gossip
            .upgrade()
            .map(|sender| GossipEvents::new(sender.subscribe()))
            .ok_or(ClusterError::Shutdown)
    }

    /// Publishes a task's new state on its job's topic, without its access token.
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    pub async fn publish_task_update(&self, job_id: &str, task: &Task) -> Result<(), ClusterError> {
        let payload = gossip::encode_task_update(task)?;
        self.publish(job_id, payload).await
    }

    /// Subscribes to a job's topic and returns its task updates.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    pub async fn follow_task_updates(&self, job_id: &str) -> Result<TaskUpdates, ClusterError> {
        // Listen before subscribing, so that no update is missed in between.
        let events = self.gossip_events()?;
        self.subscribe(job_id).await?;
        Ok(TaskUpdates::new(job_id.to_owned(), events))
    }

    /// Stops the event loop and closes every connection; waits until it has.
    ///
    /// # Errors
    /// [`ClusterError::Shutdown`] when it had already stopped.
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        self.request(|reply| Command::Shutdown { reply }).await
    }

    /// Sends a command and waits for its answer.
    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| ClusterError::Shutdown)?;
        answer.await.map_err(|_| ClusterError::Shutdown)
    }

    /// Runs `future` within the request timeout.
    pub(crate) async fn timed<T>(
        &self,
        operation: impl Into<String>,
        future: impl Future<Output = T>,
    ) -> Result<T, ClusterError> {
        tokio::time::timeout(self.request_timeout, future)
            .await
            .map_err(|_| ClusterError::Timeout {
                operation: operation.into(),
                after: self.request_timeout,
            })
    }
}

/// The relay's address (`<addr>/p2p/<relay>`) in a circuit address
/// `<addr>/p2p/<relay>/p2p-circuit/p2p/<peer>`, or `None` for a direct address.
fn relay_part(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut relay = Multiaddr::empty();
    for protocol in addr.iter() {
        if protocol == Protocol::P2pCircuit {
            return matches!(relay.iter().last(), Some(Protocol::P2p(_))).then_some(relay);
        }
        relay.push(protocol);
    }
    None
}

fn parse_protocol(protocol: &str) -> Result<StreamProtocol, ClusterError> {
    StreamProtocol::try_from_owned(protocol.to_owned()).map_err(|_| ClusterError::InvalidProtocol {
        protocol: protocol.to_owned(),
    })
}
