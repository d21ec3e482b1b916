//! How a peer joins the swarm: its role, addresses, limits and timeouts.

use crate::addr::{loopback_quic, loopback_tcp};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::identity::Identity;

/// What a peer is in the cluster (docs/design.md §1); it decides which behaviours run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The domain manager: Kademlia server, relay server, always reachable.
    Manager,
    /// A node: registers capabilities, reserves a slot on the manager's relay so
    /// that peers can reach it from behind NAT.
    Node,
    /// A client: submits jobs and moves data, offers nothing.
    Client,
}

/// Caps on connections, enforced by libp2p's `connection_limits` behaviour.
/// `None` means no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Inbound connections still in their handshake.
    pub max_pending_incoming: Option<u32>,
    /// Outbound connections still in their handshake.
    pub max_pending_outgoing: Option<u32>,
    /// Established inbound connections.
    pub max_established_incoming: Option<u32>,
    /// Established outbound connections.
    pub max_established_outgoing: Option<u32>,
    /// Established connections with any one peer.
    pub max_established_per_peer: Option<u32>,
    /// Established connections in all.
    pub max_established_total: Option<u32>,
    /// Inbound connections, pending and established, from one IP address (an IPv6
    /// address counts by its /64): fresh peer ids cost nothing, addresses do. Relayed
    /// connections are not counted.
    pub max_incoming_per_ip: Option<u32>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_pending_incoming: Some(128),
            max_pending_outgoing: Some(128),
            max_established_incoming: Some(1024),
            max_established_outgoing: Some(1024),
            // A direct, a relayed and a hole-punched connection can coexist
            // briefly, over more than one transport.
            max_established_per_peer: Some(8),
            max_established_total: Some(2048),
            // A loopback cluster's peers all come from one address; so may an office
            // behind one NAT.
            max_incoming_per_ip: Some(256),
        }
    }
}

/// Who a peer serves with something only some peers may use (the manager's relay): a
/// test of a remote peer id, asked again each time, so that it follows changes.
#[derive(Clone)]
pub struct PeerGate(Arc<dyn Fn(&PeerId) -> bool + Send + Sync>);

impl PeerGate {
    /// A gate that lets through the peers for which `admits` is true.
    pub fn new(admits: impl Fn(&PeerId) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(admits))
    }

    /// Whether `peer` may pass.
    #[must_use]
    pub fn admits(&self, peer: &PeerId) -> bool {
        (self.0)(peer)
    }
}

impl fmt::Debug for PeerGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerGate")
    }
}

/// Limits of the relay server that the manager runs.
#[derive(Debug, Clone)]
pub struct RelayLimits {
    /// Peers that may hold a reservation at once.
    pub max_reservations: usize,
    /// Circuits relayed at once.
    pub max_circuits: usize,
    /// Circuits relayed at once for one peer.
    pub max_circuits_per_peer: usize,
    /// How long one circuit may live.
    pub max_circuit_duration: Duration,
    /// How many bytes one circuit may carry; 0 means no cap.
    pub max_circuit_bytes: u64,
    /// Who may reserve a slot and open circuits (as their source); `None` serves any
    /// peer within the limits. The manager lets through its admitted nodes and the peers
    /// on its allow-lists.
    pub serves: Option<PeerGate>,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 1024,
            max_circuits: 256,
            max_circuits_per_peer: 16,
            // Task streams carry domain data: libp2p's defaults (2 minutes,
            // 128 KiB) suit hole punching only, not a fallback data path.
            max_circuit_duration: Duration::from_secs(60 * 60),
            // A relay is a fallback path: an upload through it may be large, not endless.
            max_circuit_bytes: 16 << 30,
            serves: None,
        }
    }
}

/// Everything [`Cluster::start`](crate::Cluster::start) needs.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The peer's identity (see [`Identity::load_or_create`]).
    pub identity: Identity,
    /// What the peer is.
    pub role: Role,
    /// Addresses to listen on, e.g. `/ip4/127.0.0.1/tcp/0`,
    /// `/ip4/127.0.0.1/udp/0/quic-v1`, `/ip4/127.0.0.1/tcp/0/ws`.
    pub listen_addrs: Vec<Multiaddr>,
    /// Addresses others reach this peer at, announced as confirmed. The manager
    /// also announces every address it listens on, since it is reachable by
    /// definition (its relay server serves only while it has one).
    pub external_addrs: Vec<Multiaddr>,
    /// Announce only [`external_addrs`](Self::external_addrs) to other peers (identify,
    /// hence Kademlia), not the addresses this peer listens on: for a node reached through
    /// a port forward, a load balancer or a proxy, where its own addresses are of no use to
    /// others (and dialling them would go around what stands in front of it).
    pub hide_listen_addrs: bool,
    /// The manager's address, ending with `/p2p/<manager id>`: Kademlia
    /// bootstrap, AutoNAT server and relay for nodes and clients.
    pub bootstrap: Option<Multiaddr>,
    /// The other managers (several on one etcd), each ending with `/p2p/<id>`: Kademlia
    /// knows them from the start, and the first connection to any manager joins the DHT,
    /// so that a peer whose first manager is down still finds the nodes. The relay and
    /// the redial stay with `bootstrap`.
    pub more_bootstrap: Vec<Multiaddr>,
    /// Whether a node reserves a slot on the manager's relay and listens through
    /// it (ignored for other roles).
    pub relay_reservation: bool,
    /// Connection caps.
    pub connection_limits: ConnectionLimits,
    /// Relay server limits (manager only).
    pub relay_limits: RelayLimits,
    /// How long a connection with no open stream stays up.
    pub idle_connection_timeout: Duration,
    /// The limit on every remote wait of the handle: dials, stream opening,
    /// request/response exchanges, listen readiness.
    pub request_timeout: Duration,
    /// Gossipsub heartbeat period (mesh upkeep).
    pub gossip_heartbeat: Duration,
    /// Commands queued for the event loop before senders wait.
    pub command_buffer: usize,
    /// Inbound streams of one protocol queued for its acceptor; past that,
    /// new ones are refused until the acceptor takes some.
    pub accept_backlog: usize,
    /// Gossip events kept for each slow subscriber before it lags and loses some.
    pub gossip_buffer: usize,
    /// How long a stream to a peer reached only through the relay waits for DCUtR to
    /// upgrade the connection to a direct one (hole punching), so that its bytes do not
    /// cross the manager; the stream goes through the relay after that. Zero: no wait.
    pub hole_punch_wait: Duration,
    /// Where the swarm's metrics go (libp2p's own: `libp2p_*`, connections, bandwidth per
    /// transport, identify, Kademlia, ping, relay, gossipsub); `None` keeps none.
    pub metrics: Option<domain_telemetry::Metrics>,
}

impl ClusterConfig {
    /// A configuration with the defaults and no listen address.
    #[must_use]
    pub fn new(identity: Identity, role: Role) -> Self {
        Self {
            identity,
            role,
            listen_addrs: Vec::new(),
            external_addrs: Vec::new(),
            hide_listen_addrs: false,
            bootstrap: None,
            more_bootstrap: Vec::new(),
            relay_reservation: true,
            connection_limits: ConnectionLimits::default(),
            relay_limits: RelayLimits::default(),
            idle_connection_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            gossip_heartbeat: Duration::from_secs(1),
            command_buffer: 64,
            accept_backlog: 64,
            gossip_buffer: 1024,
            // A punch takes a round trip through the relay and one between the peers; a
            // first QUIC packet that reaches a NAT before that side's own went out is lost,
            // and resent after about a second (the e2e NATs upgrade in 10 ms to 1 s). Past
            // a few seconds it is not coming.
            hole_punch_wait: Duration::from_secs(5),
            metrics: None,
        }
    }

    /// A configuration listening on loopback over TCP, QUIC and WebSocket, on
    /// ports the system picks (tests, the demo).
    #[must_use]
    pub fn loopback(identity: Identity, role: Role) -> Self {
        Self::new(identity, role).with_listen_addrs(loopback_listen_addrs())
    }

    /// Replaces the listen addresses.
    #[must_use]
    pub fn with_listen_addrs(mut self, addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.listen_addrs = addrs.into_iter().collect();
        self
    }

    /// Sets the manager's address (ending with `/p2p/<manager id>`).
    #[must_use]
    pub fn with_bootstrap(mut self, manager: Multiaddr) -> Self {
        self.bootstrap = Some(manager);
        self
    }

    /// Sets the other managers' addresses (each ending with `/p2p/<manager id>`).
    #[must_use]
    pub fn with_more_bootstrap(mut self, managers: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.more_bootstrap = managers.into_iter().collect();
        self
    }
}

/// `/ip4/127.0.0.1/tcp/0`, `/ip4/127.0.0.1/udp/0/quic-v1` and `/ip4/127.0.0.1/tcp/0/ws`.
#[must_use]
pub fn loopback_listen_addrs() -> Vec<Multiaddr> {
    vec![
        loopback_tcp(),
        loopback_quic(),
        loopback_tcp().with(Protocol::Ws("/".into())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_the_three_transports_on_127_0_0_1() {
        let addrs: Vec<String> = loopback_listen_addrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            addrs,
            [
                "/ip4/127.0.0.1/tcp/0",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "/ip4/127.0.0.1/tcp/0/ws"
            ]
        );
    }
}
