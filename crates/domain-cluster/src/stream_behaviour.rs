//! Raw streams per protocol id: a small network behaviour in the manner of
//! libp2p-stream, with a bounded accept backlog.
//!
//! libp2p-stream 0.5.0-alpha hands inbound streams over a channel that holds
//! one stream per protocol: when a connection negotiates two streams of the
//! same protocol before the acceptor takes the first, it drops the second.
//! Our loopback test of rust-libp2p #5410 (eight concurrent streams) hit that
//! under load. Here each accepted protocol has a queue of `accept_backlog`
//! streams; only past that is a stream refused, and the refusal is logged.
//!
//! Outbound streams are opened by the event loop on request
//! ([`Behaviour::open_stream`]) over an existing connection, preferring a
//! direct one to a relayed one; connecting first is the handle's job.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, InboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    FromSwarm, NetworkBehaviour, NotifyHandler, StreamUpgradeError, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, behaviour::ConnectionEstablished,
};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::stream::PeerStream;

/// Why an outbound stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenStreamError {
    /// There is no connection to the peer (it closed, or was never made).
    #[error("not connected")]
    NotConnected,
    /// The peer does not accept the protocol.
    #[error("the peer does not accept the protocol")]
    UnsupportedProtocol,
    /// Protocol negotiation took longer than allowed.
    #[error("protocol negotiation timed out")]
    Timeout,
    /// The connection failed while the stream was being opened.
    #[error("i/o error while opening the stream")]
    Io(#[from] std::io::Error),
}

/// The protocols accepted on this peer and the queues their streams go to.
/// Shared by the behaviour, every connection handler and every cluster handle.
#[derive(Debug)]
pub(crate) struct Registry {
    acceptors: Mutex<HashMap<StreamProtocol, mpsc::Sender<(PeerId, PeerStream)>>>,
    backlog: usize,
}

/// The protocol already has an acceptor.
#[derive(Debug)]
pub(crate) struct AlreadyAccepting;

impl Registry {
    pub(crate) fn new(backlog: usize) -> Arc<Self> {
        Arc::new(Self {
            acceptors: Mutex::new(HashMap::new()),
            backlog: backlog.max(1),
        })
    }

    /// The map, even if a thread panicked while holding it: every update
    /// leaves it consistent.
    fn acceptors(
        &self,
    ) -> MutexGuard<'_, HashMap<StreamProtocol, mpsc::Sender<(PeerId, PeerStream)>>> {
        self.acceptors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts accepting `protocol`; its streams queue on the returned receiver.
    pub(crate) fn accept(
        &self,
        protocol: StreamProtocol,
    ) -> Result<mpsc::Receiver<(PeerId, PeerStream)>, AlreadyAccepting> {
        let mut acceptors = self.acceptors();
        acceptors.retain(|_, sender| !sender.is_closed());
        if acceptors.contains_key(&protocol) {
            return Err(AlreadyAccepting);
        }
        let (sender, receiver) = mpsc::channel(self.backlog);
        acceptors.insert(protocol, sender);
        Ok(receiver)
    }

    /// The protocols that currently have an acceptor.
    fn protocols(&self) -> Vec<StreamProtocol> {
        let mut acceptors = self.acceptors();
        acceptors.retain(|_, sender| !sender.is_closed());
        acceptors.keys().cloned().collect()
    }

    /// Queues an inbound stream for its acceptor, or drops it (resetting it)
    /// when the acceptor is gone or its backlog is full.
    fn deliver(&self, peer: PeerId, stream: PeerStream, protocol: StreamProtocol) {
        let mut acceptors = self.acceptors();
        let Some(sender) = acceptors.get(&protocol) else {
            tracing::debug!(%peer, %protocol, "no acceptor, dropping inbound stream");
            return;
        };
        match sender.try_send((peer, stream)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%peer, %protocol, backlog = self.backlog, "accept backlog full, refusing inbound stream");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                acceptors.remove(&protocol);
                tracing::debug!(%peer, %protocol, "acceptor gone, dropping inbound stream");
            }
        }
    }
}

/// A request to open a stream, carried from the behaviour to a handler.
#[derive(Debug)]
pub(crate) struct OpenRequest {
    protocol: StreamProtocol,
    reply: oneshot::Sender<Result<PeerStream, OpenStreamError>>,
}

/// Raw streams per protocol id.
pub(crate) struct Behaviour {
    registry: Arc<Registry>,
    negotiation_timeout: Duration,
    /// Open connections by peer, each with whether it is relayed.
    connections: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    requests: VecDeque<(PeerId, ConnectionId, OpenRequest)>,
    waker: Option<Waker>,
}

impl Behaviour {
    pub(crate) fn new(registry: Arc<Registry>, negotiation_timeout: Duration) -> Self {
        Self {
            registry,
            negotiation_timeout,
            connections: HashMap::new(),
            requests: VecDeque::new(),
            waker: None,
        }
    }

    /// Opens a stream of `protocol` to `peer` over an existing connection,
    /// a direct one if there is one; answers on `reply`.
    pub(crate) fn open_stream(
        &mut self,
        peer: PeerId,
        protocol: StreamProtocol,
        reply: oneshot::Sender<Result<PeerStream, OpenStreamError>>,
    ) {
        let connection = self.connections.get(&peer).and_then(|conns| {
            conns
                .iter()
                .find(|(_, relayed)| !relayed)
                .or_else(|| conns.first())
                .map(|(id, _)| *id)
        });
        let Some(connection) = connection else {
            let _ = reply.send(Err(OpenStreamError::NotConnected));
            return;
        };
        self.requests
            .push_back((peer, connection, OpenRequest { protocol, reply }));
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            remote: peer,
            gone: CancellationToken::new(),
            registry: Arc::clone(&self.registry),
            negotiation_timeout: self.negotiation_timeout,
            requests: VecDeque::new(),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => {
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push((connection_id, endpoint.is_relayed()));
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|(id, _)| *id != connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some((peer_id, connection, event)) = self.requests.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                event,
            });
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// One connection's share of the streams.
pub(crate) struct Handler {
    remote: PeerId,
    /// Cancelled when the connection is gone (this handler dropped): its streams fail.
    gone: CancellationToken,
    registry: Arc<Registry>,
    negotiation_timeout: Duration,
    requests: VecDeque<OpenRequest>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = OpenRequest;
    type ToBehaviour = Infallible;
    type InboundProtocol = Protocols;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = OpenRequest;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        SubstreamProtocol::new(Protocols(self.registry.protocols()), ())
            .with_timeout(self.negotiation_timeout)
    }

    fn connection_keep_alive(&self) -> bool {
        // Open streams keep the connection up by themselves; a request still
        // waiting for its stream must too.
        !self.requests.is_empty()
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        match self.requests.pop_front() {
            Some(request) => Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(
                    ReadyUpgrade::new(request.protocol.clone()),
                    request,
                )
                .with_timeout(self.negotiation_timeout),
            }),
            None => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, request: Self::FromBehaviour) {
        self.requests.push_back(request);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            '_,
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => {
                let stream = PeerStream::new(stream, self.gone.clone());
                self.registry.deliver(self.remote, stream, protocol);
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info,
            }) => {
                let _ = info
                    .reply
                    .send(Ok(PeerStream::new(stream, self.gone.clone())));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                let error = match error {
                    StreamUpgradeError::Timeout => OpenStreamError::Timeout,
                    StreamUpgradeError::NegotiationFailed => OpenStreamError::UnsupportedProtocol,
                    StreamUpgradeError::Io(error) => OpenStreamError::Io(error),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = info.reply.send(Err(error));
            }
            _ => {}
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.gone.cancel();
    }
}

/// Inbound negotiation over every protocol that has an acceptor; the output
/// names the protocol chosen.
#[derive(Debug, Clone)]
pub(crate) struct Protocols(Vec<StreamProtocol>);

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, stream: Stream, protocol: Self::Info) -> Self::Future {
        std::future::ready(Ok((stream, protocol)))
    }
}
