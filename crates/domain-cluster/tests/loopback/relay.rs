//! Reaching a node that cannot be dialled directly, through the manager's relay.

use domain_cluster::ClusterError;
use domain_cluster::config::{ClusterConfig, PeerGate, Role};
use domain_cluster::identity::Identity;
use domain_cluster::peers::PeerEvent;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::common::{Peer, echo, joined, loopback, manager, serve_echo, start, tcp_addr, within};

const ECHO: &str = "/test/echo/1";

fn relayed(addrs: &[libp2p::Multiaddr]) -> bool {
    addrs
        .iter()
        .any(|a| a.iter().any(|p| p == Protocol::P2pCircuit))
}

/// A node with no listen address of its own (as behind NAT) that reserved a
/// slot on the manager's relay.
async fn hidden_node(manager: &crate::common::Peer) -> crate::common::Peer {
    let config = loopback(Role::Node)
        .with_listen_addrs([])
        .with_bootstrap(tcp_addr(&manager.addrs));
    start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reserves_a_relay_slot_on_the_manager() {
    let manager = manager().await;
    let node = hidden_node(&manager).await;
    let circuits = within("relay reservation", node.handle.relay_addrs())
        .await
        .unwrap();
    assert!(!circuits.is_empty());
    // Each is one of the manager's addresses, then the circuit to this node.
    let node_id = node.handle.local_peer_id();
    for circuit in &circuits {
        assert!(
            manager.addrs.iter().any(|m| *circuit
                == m.clone()
                    .with(Protocol::P2pCircuit)
                    .with(Protocol::P2p(node_id))),
            "{circuit} is not a circuit through the manager"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_stream_falls_back_to_the_relay_when_the_peer_has_no_direct_address() {
    let manager = manager().await;
    let node = hidden_node(&manager).await;
    within("relay reservation", node.handle.relay_addrs())
        .await
        .unwrap();
    let _server = serve_echo(&node.handle, ECHO);

    let client = joined(Role::Client, &manager).await;
    let node_id = node.handle.local_peer_id();
    let back = echo(&client.handle, node_id, ECHO, b"through the relay").await;
    assert_eq!(back, b"through the relay");
    let conns = client.handle.peer_addrs(node_id).await.unwrap();
    assert!(
        relayed(&conns),
        "expected a relayed connection, got {conns:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_circuit_address_dials_through_the_manager() {
    let manager = manager().await;
    let node = hidden_node(&manager).await;
    let circuit = within("relay reservation", node.handle.relay_addrs())
        .await
        .unwrap()
        .remove(0);
    let _server = serve_echo(&node.handle, ECHO);

    let client = joined(Role::Client, &manager).await;
    let peer = within("circuit dial", client.handle.dial(circuit))
        .await
        .unwrap();
    assert_eq!(peer, node.handle.local_peer_id());
    assert!(relayed(&client.handle.peer_addrs(peer).await.unwrap()));
    assert_eq!(
        echo(&client.handle, peer, ECHO, b"circuit").await,
        b"circuit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_address_is_dialled_even_when_a_circuit_to_the_peer_is_open() {
    let manager = manager().await;
    // A node with an address of its own, and a relay slot besides.
    let node = joined(Role::Node, &manager).await;
    let circuit = within("relay reservation", node.handle.relay_addrs())
        .await
        .unwrap()
        .remove(0);
    let client = joined(Role::Client, &manager).await;
    let peer = within("circuit dial", client.handle.dial(circuit))
        .await
        .unwrap();
    let direct = tcp_addr(&node.addrs).with(Protocol::P2p(peer));
    within("direct dial", client.handle.dial(direct))
        .await
        .unwrap();
    let conns = client.handle.peer_addrs(peer).await.unwrap();
    assert!(
        conns
            .iter()
            .any(|a| !a.iter().any(|p| p == Protocol::P2pCircuit)),
        "no direct connection among {conns:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_unreachable_directly_and_through_the_relay_is_reported_with_both_reasons() {
    let manager = manager().await;
    let client = joined(Role::Client, &manager).await;
    // A peer nobody knows and that holds no reservation.
    let stranger = libp2p::PeerId::random();
    let err = within("open_stream", client.handle.open_stream(stranger, ECHO))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::Unreachable { peer, .. } if peer == stranger),
        "unexpected error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_and_clients_hold_no_relay_reservation() {
    let manager = manager().await;
    let client = joined(Role::Client, &manager).await;
    for peer in [&manager, &client] {
        let err = within("relay_addrs", peer.handle.relay_addrs())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClusterError::NoRelayReservation { .. }),
            "unexpected error: {err}"
        );
    }
}

/// Waits for `event` among `events`.
async fn await_peer_event(
    events: &mut domain_cluster::peers::PeerEvents,
    wanted: impl Fn(&PeerEvent) -> bool,
) {
    within("peer event", async {
        while !wanted(&events.recv().await.unwrap()) {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reconnects_and_reserves_again_after_the_manager_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::load_or_create(dir.path().join("manager.key")).unwrap();
    let tcp_only = |addr: Multiaddr| {
        ClusterConfig::new(identity.clone(), Role::Manager).with_listen_addrs([addr])
    };
    let first = start(tcp_only("/ip4/127.0.0.1/tcp/0".parse().unwrap())).await;
    let manager_addr = first.addrs[0].clone();
    let manager_id = first.handle.local_peer_id();

    let node = start(
        loopback(Role::Node)
            .with_listen_addrs([])
            .with_bootstrap(manager_addr.clone()),
    )
    .await;
    within("first reservation", node.handle.relay_addrs())
        .await
        .unwrap();
    let mut events = node.handle.peer_events().unwrap();

    first.handle.shutdown().await.unwrap();
    within("first manager stopping", first.task).await.unwrap();
    await_peer_event(&mut events, |e| {
        *e == PeerEvent::Disconnected { peer: manager_id }
    })
    .await;

    // The same manager again, at the same address.
    let mut transport_addr = manager_addr.clone();
    transport_addr.pop();
    let second = start(tcp_only(transport_addr)).await;
    await_peer_event(
        &mut events,
        |e| matches!(e, PeerEvent::Connected { peer, .. } if *peer == manager_id),
    )
    .await;
    let circuit = within("second reservation", node.handle.relay_addrs())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        circuit,
        manager_addr
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(node.handle.local_peer_id()))
    );

    let _server = serve_echo(&node.handle, ECHO);
    let client = joined(Role::Client, &second).await;
    assert_eq!(
        echo(&client.handle, node.handle.local_peer_id(), ECHO, b"again").await,
        b"again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_events_report_the_first_connection_and_the_last_disconnection() {
    let manager = manager().await;
    let mut events = manager.handle.peer_events().unwrap();
    let client = joined(Role::Client, &manager).await;
    let client_id = client.handle.local_peer_id();
    await_peer_event(
        &mut events,
        |e| matches!(e, PeerEvent::Connected { peer, .. } if *peer == client_id),
    )
    .await;
    client.handle.shutdown().await.unwrap();
    await_peer_event(&mut events, |e| {
        *e == PeerEvent::Disconnected { peer: client_id }
    })
    .await;
}

/// The loopback configuration of `role` for `identity`.
fn loopback_as(identity: Identity, role: Role) -> ClusterConfig {
    ClusterConfig {
        identity,
        ..loopback(role)
    }
}

/// A manager whose relay serves `known` only, its TCP address, and a node of
/// `node_identity` that listens nowhere (reached through the relay alone) and echoes on
/// [`ECHO`].
async fn gated_relay_and_hidden_node(
    known: Vec<PeerId>,
    node_identity: Identity,
) -> (Peer, Multiaddr, Peer) {
    let mut config = loopback(Role::Manager);
    config.relay_limits.serves = Some(PeerGate::new(move |peer| known.contains(peer)));
    let manager = start(config).await;
    let bootstrap = tcp_addr(&manager.addrs);
    let node = start(
        loopback_as(node_identity, Role::Node)
            .with_listen_addrs([])
            .with_bootstrap(bootstrap.clone()),
    )
    .await;
    within("the node's reservation", node.handle.relay_addrs())
        .await
        .unwrap();
    // Detached: it serves until the node stops.
    drop(serve_echo(&node.handle, ECHO));
    (manager, bootstrap, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_relay_serves_only_the_peers_its_gate_lets_through() {
    let (node_identity, client_identity) = (Identity::generate(), Identity::generate());
    let known = vec![node_identity.peer_id(), client_identity.peer_id()];
    // A known node reserves a slot and a known client reaches it through the relay.
    let (manager, bootstrap, node) = gated_relay_and_hidden_node(known, node_identity).await;
    let client =
        start(loopback_as(client_identity, Role::Client).with_bootstrap(bootstrap.clone())).await;
    let node_id = node.handle.local_peer_id();
    let back = echo(&client.handle, node_id, ECHO, b"known").await;
    assert_eq!(back, b"known");

    // A stranger can neither reach the node through the relay nor reserve a slot.
    let stranger = joined(Role::Client, &manager).await;
    let refused = within(
        "the stranger's stream",
        stranger.handle.open_stream(node_id, ECHO),
    )
    .await;
    assert!(
        matches!(refused, Err(ClusterError::Unreachable { .. })),
        "{refused:?}"
    );
    let hidden_stranger = hidden_node(&manager).await;
    let reserved = within(
        "the stranger's reservation",
        hidden_stranger.handle.relay_addrs(),
    )
    .await;
    assert!(
        matches!(
            reserved,
            Err(ClusterError::NoRelayReservation { .. } | ClusterError::Timeout { .. })
        ),
        "{reserved:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_peers_behind_one_address_are_not_held_to_a_stranger_s_circuit_budget() {
    // libp2p's defaults refuse an address's 61st circuit (then allow one a minute): a
    // busy cluster's clients behind one NAT, or on one loopback, would be cut off.
    const CLIENTS: usize = 70;
    let node_identity = Identity::generate();
    let clients: Vec<Identity> = (0..CLIENTS).map(|_| Identity::generate()).collect();
    let mut known: Vec<PeerId> = clients.iter().map(Identity::peer_id).collect();
    known.push(node_identity.peer_id());
    let (_manager, bootstrap, node) = gated_relay_and_hidden_node(known, node_identity).await;
    let node_id = node.handle.local_peer_id();
    for (number, identity) in clients.into_iter().enumerate() {
        // Listening nowhere either: the circuit is the only way between the two.
        let mut config = loopback_as(identity, Role::Client)
            .with_listen_addrs([])
            .with_bootstrap(bootstrap.clone());
        config.hole_punch_wait = std::time::Duration::ZERO;
        let client = start(config).await;
        let message = format!("client {number}");
        let back = echo(&client.handle, node_id, ECHO, message.as_bytes()).await;
        assert_eq!(back, message.as_bytes());
        client.handle.shutdown().await.unwrap();
    }
}
