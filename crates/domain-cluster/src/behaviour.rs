//! The swarm of docs/design.md §6: transports and the composed network behaviour.

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, OptionalTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport, autonat, connection_limits, dcutr,
    gossipsub, identify, kad, noise, ping, quic, relay, tcp, yamux,
};

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ClusterConfig, Role};
use crate::error::ClusterError;
use crate::stream_behaviour::Registry;

/// Every protocol the swarm speaks, one field per libp2p behaviour.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// First, so that a connection over the limits is refused before any other
    /// behaviour sets up state for it.
    pub(crate) limits: connection_limits::Behaviour,
    /// Next, so that one address cannot take every place `limits` leaves.
    pub(crate) per_ip: crate::ip_limits::Behaviour,
    /// Peers refused for a while (see [`ClusterHandle::ban`](crate::ClusterHandle::ban)).
    pub(crate) bans: crate::bans::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) relay_server: Toggle<relay::Behaviour>,
    pub(crate) relay_client: Toggle<relay::client::Behaviour>,
    pub(crate) dcutr: Toggle<dcutr::Behaviour>,
    pub(crate) autonat: autonat::Behaviour,
    pub(crate) stream: crate::stream_behaviour::Behaviour,
}

/// Builds the swarm: transports, behaviours and swarm settings for `config`;
/// inbound streams go to acceptors registered in `registry`.
pub(crate) fn build_swarm(
    config: &ClusterConfig,
    registry: Arc<Registry>,
) -> Result<Swarm<Behaviour>, ClusterError> {
    let keypair = config.identity.keypair();
    let peer_id = keypair.public().to_peer_id();
    let relay_parts = match config.role {
        Role::Manager => None,
        Role::Node | Role::Client => Some(relay::client::new(peer_id)),
    };
    let (relay_transport, relay_client) = match relay_parts {
        Some((transport, behaviour)) => (Some(transport), Some(behaviour)),
        None => (None, None),
    };
    let transport = build_transport(keypair, relay_transport)?;
    // Bytes in and out per transport stack (`/ip4/tcp`, `/ip4/udp/quic-v1`, …).
    let transport = match &config.metrics {
        Some(metrics) => metrics.register("", |registry| {
            libp2p::metrics::BandwidthTransport::new(transport, registry)
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                .boxed()
        }),
        None => transport,
    };
    let behaviour = build_behaviour(config, keypair, peer_id, relay_client, registry)?;
    let swarm_config = libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(config.idle_connection_timeout);
    Ok(Swarm::new(transport, behaviour, peer_id, swarm_config))
}

/// TCP + Noise + Yamux, WebSocket (over TCP) + Noise + Yamux, QUIC, and on
/// nodes and clients relayed circuits + Noise + Yamux.
fn build_transport(
    keypair: &Keypair,
    relay_transport: Option<relay::client::Transport>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, ClusterError> {
    let noise = noise::Config::new(keypair)?;
    let tcp_config = tcp::Config::default().nodelay(true);

    let tcp = tcp::tokio::Transport::new(tcp_config.clone())
        .upgrade(Version::V1Lazy)
        .authenticate(noise.clone())
        .multiplex(yamux::Config::default());

    // WebSocket is for browsers; no DNS resolver is wired in (docs/design.md §6: no
    // public DNS), so `/dns/...` WebSocket addresses are not dialled.
    let ws = libp2p_websocket::Config::new(tcp::tokio::Transport::new(tcp_config))
        .upgrade(Version::V1Lazy)
        .authenticate(noise.clone())
        .multiplex(browser_yamux());

    let relayed = match relay_transport {
        Some(relay) => OptionalTransport::some(
            relay
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default()),
        ),
        None => OptionalTransport::none(),
    };

    let quic = quic::tokio::Transport::new(quic::Config::new(keypair))
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));

    // Each transport's muxer is boxed before they are joined: their stream
    // types differ. WebSocket comes first: plain TCP refuses `/tcp/<port>/ws`
    // anyway, but the order states the intent.
    let transport = ws
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .or_transport(relayed.map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
        .map(|either, _| either.into_inner())
        .or_transport(tcp.map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
        .map(|either, _| either.into_inner())
        .or_transport(quic)
        .map(|either, _| either.into_inner())
        .boxed();
    Ok(transport)
}

/// Streams a WebSocket connection may hold at once; see [`browser_yamux`].
const BROWSER_MAX_STREAMS: usize = 4093;

/// Reservations and circuits a peer the relay knows may ask for at once, before it is held
/// to [`KNOWN_PEER_REFILL`].
const KNOWN_PEER_BURST: NonZeroU32 = NonZeroU32::MIN.saturating_add(119);

/// How often a known peer's relay budget gains one reservation or circuit: a client
/// opening streams to many nodes, each through a new circuit, keeps up.
const KNOWN_PEER_REFILL: Duration = Duration::from_millis(500);

/// Yamux for WebSocket connections, the ones browsers open.
///
/// js-libp2p's yamux sends a DATA frame as large as its whole send window, and rust-yamux
/// refuses a frame body over 1 MiB by resetting the connection: a browser upload past about
/// 2 MB died. So no stream's receive window (the peer's send window) may grow past 1 MiB.
/// rust-yamux grows a stream's window beyond its first 256 KiB out of a connection budget:
/// `max_connection_receive_window` (1 GiB; libp2p-yamux does not expose it) less 256 KiB for
/// each of `max_num_streams`. Allowing 4093 streams leaves 768 KiB to grow into, shared by
/// the connection's streams: a window reaches at most 256 KiB + 768 KiB = 1 MiB. The memory
/// bound of a connection stays the default's 1 GiB, and a stream's 1 MiB is still many times
/// the bandwidth-delay product of a browser's path.
fn browser_yamux() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(BROWSER_MAX_STREAMS);
    config
}

fn build_behaviour(
    config: &ClusterConfig,
    keypair: &Keypair,
    peer_id: PeerId,
    relay_client: Option<relay::client::Behaviour>,
    registry: Arc<Registry>,
) -> Result<Behaviour, ClusterError> {
    let limits = &config.connection_limits;
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(limits.max_pending_incoming)
        .with_max_pending_outgoing(limits.max_pending_outgoing)
        .with_max_established_incoming(limits.max_established_incoming)
        .with_max_established_outgoing(limits.max_established_outgoing)
        .with_max_established_per_peer(limits.max_established_per_peer)
        .with_max_established(limits.max_established_total);

    // Identify's stream protocol is libp2p's fixed `/ipfs/id/1.0.0`;
    // `/posemesh/id/1.0.0` is the protocol version it announces, as posemesh
    // peers do.
    let identify = identify::Behaviour::new(
        identify::Config::new(
            domain_proto::protocols::IDENTIFY.to_owned(),
            keypair.public(),
        )
        .with_agent_version(format!("domain-cluster/{}", env!("CARGO_PKG_VERSION")))
        .with_hide_listen_addrs(config.hide_listen_addrs),
    );

    let mut kad = kad::Behaviour::with_config(
        peer_id,
        kad::store::MemoryStore::new(peer_id),
        kad::Config::new(StreamProtocol::new(domain_proto::protocols::KADEMLIA)),
    );
    kad.set_mode(match config.role {
        Role::Manager => Some(kad::Mode::Server),
        Role::Client => Some(kad::Mode::Client),
        // A node serves the DHT once it has a confirmed external address.
        Role::Node => None,
    });

    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .heartbeat_interval(config.gossip_heartbeat)
        .build()?;
    let gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(keypair.clone()),
        gossip_config,
    )
    .map_err(ClusterError::GossipsubSetup)?;

    let relay_server = (config.role == Role::Manager).then(|| {
        let l = &config.relay_limits;
        let mut relay_config = relay::Config {
            max_reservations: l.max_reservations,
            max_circuits: l.max_circuits,
            max_circuits_per_peer: l.max_circuits_per_peer,
            max_circuit_duration: l.max_circuit_duration,
            max_circuit_bytes: l.max_circuit_bytes,
            ..relay::Config::default()
        };
        if let Some(gate) = &l.serves {
            // libp2p's default rate limits are for a relay open to strangers: per address,
            // a burst of 60 circuits then one a minute, shared by every peer behind one
            // NAT (or on one loopback), so a busy cluster's clients were refused circuits
            // for minutes (the chaos run's watch lost whole nodes that way). Peers past the
            // gate are known: each gets a budget of its own, and none per address.
            relay_config.reservation_rate_limiters.clear();
            relay_config.circuit_src_rate_limiters.clear();
            relay_config = relay_config
                .reservation_rate_per_peer(KNOWN_PEER_BURST, KNOWN_PEER_REFILL)
                .circuit_src_per_peer(KNOWN_PEER_BURST, KNOWN_PEER_REFILL);
            // libp2p's rate limiters are its hook for refusing a peer: one that says no to
            // a peer outside the gate refuses its reservations and its circuits.
            let (reserving, sourcing) = (gate.clone(), gate.clone());
            relay_config.reservation_rate_limiters.push(Box::new(
                move |peer: PeerId, _: &Multiaddr, _: std::time::Instant| reserving.admits(&peer),
            ));
            relay_config.circuit_src_rate_limiters.push(Box::new(
                move |peer: PeerId, _: &Multiaddr, _: std::time::Instant| sourcing.admits(&peer),
            ));
        }
        relay::Behaviour::new(peer_id, relay_config)
    });
    let dcutr = relay_client
        .is_some()
        .then(|| dcutr::Behaviour::new(peer_id));

    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        per_ip: crate::ip_limits::Behaviour::new(config.connection_limits.max_incoming_per_ip),
        bans: crate::bans::Behaviour::default(),
        identify,
        ping: ping::Behaviour::default(),
        kad,
        gossipsub,
        relay_server: relay_server.into(),
        relay_client: relay_client.into(),
        dcutr: dcutr.into(),
        autonat: autonat::Behaviour::new(peer_id, autonat_config()),
        stream: crate::stream_behaviour::Behaviour::new(registry, config.request_timeout),
    })
}

/// AutoNAT (v1) as the cluster runs it: libp2p's defaults, but serving and trusting peers
/// at private addresses.
///
/// With libp2p's default `only_global_ips`, a peer neither asks a peer it reaches at a
/// private address to dial it back, nor dials back a peer it sees at one. A cluster runs
/// in private networks (an office LAN, a VPC, a container network, the NATs of
/// `domain-e2e/tests/nat.rs`) where every address is private: no probe was ever answered,
/// and every peer, the manager too, stayed `Unknown` for good. Dialling back a private
/// address is no new reach for a peer: the server dials only the IP address it sees the
/// asking peer at (AutoNAT replaces any other), from a port of its own.
fn autonat_config() -> autonat::Config {
    autonat::Config {
        only_global_ips: false,
        ..autonat::Config::default()
    }
}
