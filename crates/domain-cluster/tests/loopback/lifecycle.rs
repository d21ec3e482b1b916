//! Starting, identity, acceptors, shutdown, and misuse.

use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterError, PeerId};
use libp2p::Multiaddr;

use crate::common::{loopback, manager, start, tcp_addr, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_keeps_its_peer_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let first = start(ClusterConfig::loopback(
        Identity::load_or_create(&path).unwrap(),
        Role::Node,
    ))
    .await;
    let id = first.handle.local_peer_id();
    first.handle.shutdown().await.unwrap();
    first.task.await.unwrap();

    let second = start(ClusterConfig::loopback(
        Identity::load_or_create(&path).unwrap(),
        Role::Node,
    ))
    .await;
    assert_eq!(second.handle.local_peer_id(), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addresses_name_the_peer_and_cover_every_transport() {
    let peer = manager().await;
    let id = peer.handle.local_peer_id();
    assert_eq!(peer.addrs.len(), 3, "{:?}", peer.addrs);
    for addr in &peer.addrs {
        assert!(addr.to_string().starts_with("/ip4/127.0.0.1/"), "{addr}");
        assert!(addr.to_string().ends_with(&format!("/p2p/{id}")), "{addr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_the_event_loop_ends_and_calls_fail() {
    let peer = manager().await;
    peer.handle.shutdown().await.unwrap();
    within("event loop end", peer.task).await.unwrap();
    assert!(matches!(
        peer.handle.subscribe("t").await,
        Err(ClusterError::Shutdown)
    ));
    assert!(matches!(
        peer.handle.gossip_events(),
        Err(ClusterError::Shutdown)
    ));
    assert!(matches!(
        peer.handle.shutdown().await,
        Err(ClusterError::Shutdown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_acceptor_for_one_protocol_is_refused_until_the_first_is_dropped() {
    let peer = manager().await;
    let first = peer.handle.accept("/test/one/1").unwrap();
    let err = peer.handle.accept("/test/one/1").unwrap_err();
    assert!(
        matches!(err, ClusterError::AlreadyAccepting { .. }),
        "unexpected error: {err}"
    );
    drop(first);
    let _second = peer.handle.accept("/test/one/1").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_id_without_leading_slash_is_refused() {
    let peer = manager().await;
    assert!(matches!(
        peer.handle.accept("echo"),
        Err(ClusterError::InvalidProtocol { .. })
    ));
    let err = peer
        .handle
        .open_stream(PeerId::random(), "echo")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::InvalidProtocol { .. }),
        "unexpected error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_protocol_the_peer_does_not_serve_fails() {
    let a = manager().await;
    let b = start(loopback(Role::Client)).await;
    let peer = within("dial", b.handle.dial(tcp_addr(&a.addrs)))
        .await
        .unwrap();
    let err = within(
        "open_stream",
        b.handle.open_stream(peer, "/test/unserved/1"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClusterError::OpenStream { .. }),
        "unexpected error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialling_a_closed_port_fails_with_a_dial_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let peer = start(loopback(Role::Client)).await;
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", PeerId::random())
        .parse()
        .unwrap();
    let err = within("dial", peer.handle.dial(addr)).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::Dial { .. }),
        "unexpected error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_address_without_peer_id_is_refused() {
    let config = ClusterConfig::new(Identity::generate(), Role::Node)
        .with_bootstrap("/ip4/127.0.0.1/tcp/4001".parse().unwrap());
    assert!(matches!(
        Cluster::start(config),
        Err(ClusterError::MissingPeerId { .. })
    ));
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    let config = ClusterConfig::new(Identity::generate(), Role::Client);
    assert!(matches!(
        Cluster::start(config),
        Err(ClusterError::NoRuntime)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_on_an_unsupported_address_is_an_error_naming_it() {
    let config = ClusterConfig::new(Identity::generate(), Role::Node)
        .with_listen_addrs(["/ip4/127.0.0.1/udp/0".parse().unwrap()]);
    match Cluster::start(config) {
        Err(ClusterError::Listen { addr, .. }) => {
            assert_eq!(addr.to_string(), "/ip4/127.0.0.1/udp/0")
        }
        other => panic!("unexpected result: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_on_a_taken_port_is_an_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", taken.local_addr().unwrap().port())
        .parse()
        .unwrap();
    let config =
        ClusterConfig::new(Identity::generate(), Role::Node).with_listen_addrs([addr.clone()]);
    match Cluster::start(config) {
        Err(ClusterError::Listen { addr: refused, .. }) => assert_eq!(refused, addr),
        other => panic!("unexpected result: {other:?}"),
    }
}

/// Posemesh peers find ours by protocol name: Kademlia runs under
/// `/posemesh/kad/1.0.0`, and identify announces `/posemesh/id/1.0.0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_speaks_posemesh_kademlia_and_announces_the_posemesh_identify_version() {
    use domain_cluster::peers::PeerEvent;
    use domain_proto::protocols::{IDENTIFY, KADEMLIA};
    let manager = manager().await;
    let mut events = manager.handle.peer_events().unwrap();
    let client = crate::common::joined(Role::Client, &manager).await;
    let (manager_id, client_id) = (
        manager.handle.local_peer_id(),
        client.handle.local_peer_id(),
    );

    within(KADEMLIA, client.handle.open_stream(manager_id, KADEMLIA))
        .await
        .unwrap();
    let err = within(
        "/ipfs/kad/1.0.0",
        client.handle.open_stream(manager_id, "/ipfs/kad/1.0.0"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClusterError::OpenStream { .. }),
        "unexpected error: {err}"
    );

    let version = within("identify", async {
        loop {
            if let PeerEvent::Identified {
                peer,
                protocol_version,
                ..
            } = events.recv().await.unwrap()
                && peer == client_id
            {
                return protocol_version;
            }
        }
    })
    .await;
    assert_eq!(version, IDENTIFY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_dials_at_once_to_one_peer_share_one_connection() {
    let target = manager().await;
    let addr = tcp_addr(&target.addrs);
    let peer = start(loopback(Role::Client)).await;
    // More than the connection limit per peer: one connection each would be refused.
    let dials = (0..16).map(|_| peer.handle.dial(addr.clone()));
    let dialled = within("dials", futures::future::join_all(dials)).await;
    let target_id = dialled[0].as_ref().unwrap().to_owned();
    assert!(dialled.iter().all(|d| d.as_ref().ok() == Some(&target_id)));
    let connections = peer.handle.peer_addrs(target_id).await.unwrap();
    assert_eq!(connections.len(), 1, "{connections:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_past_its_inbound_connections_is_refused_until_one_goes() {
    let mut config = loopback(Role::Manager);
    config.connection_limits.max_incoming_per_ip = Some(2);
    let manager = start(config).await;
    let addr = tcp_addr(&manager.addrs);
    // Three fresh identities on one address: the third is one too many.
    let peers = [
        start(loopback(Role::Client)).await,
        start(loopback(Role::Client)).await,
        start(loopback(Role::Client)).await,
    ];
    for peer in &peers[..2] {
        within("dial", peer.handle.dial(addr.clone()))
            .await
            .unwrap();
    }
    let refused = within("dial", peers[2].handle.dial(addr.clone())).await;
    assert!(
        matches!(&refused, Err(ClusterError::Dial { .. })),
        "{refused:?}"
    );
    // One leaves, and its place is free again.
    let [first, _second, third] = peers;
    within("shutdown", first.handle.shutdown()).await.unwrap();
    within("the freed place", async {
        while third.handle.dial(addr.clone()).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}
