//! What the swarm does about NATs that loopback can show: a stream over a new circuit
//! waits for DCUtR's direct connection, and AutoNAT answers at private addresses. Behind
//! real NATs: `domain-e2e/tests/nat.rs`.

use std::time::Duration;

use domain_cluster::Cluster;
use domain_cluster::config::Role;
use domain_cluster::peers::PeerEvent;
use libp2p::multiaddr::Protocol;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{joined, loopback, serve_echo, start, tcp_addr, within};

const ECHO: &str = "/test/echo/1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_a_new_circuit_waits_for_the_hole_punch_and_goes_direct() {
    let manager = crate::common::manager().await;
    // A node that listens on loopback and holds a relay slot; the client is given only its
    // circuit. DCUtR then dials the node's observed address, which loopback does not hide,
    // once the node knows it: from the manager's identify, which may come after the
    // reservation.
    let (handle, _task) =
        Cluster::start(loopback(Role::Node).with_bootstrap(tcp_addr(&manager.addrs))).unwrap();
    let mut events = handle.peer_events().unwrap();
    let manager_id = manager.handle.local_peer_id();
    within("the manager's identify", async {
        while !matches!(events.recv().await.unwrap(), PeerEvent::Identified { peer, .. } if peer == manager_id)
        {}
    })
    .await;
    let circuit = within("relay reservation", handle.relay_addrs())
        .await
        .unwrap()
        .remove(0);
    let _server = serve_echo(&handle, ECHO);
    let client = joined(Role::Client, &manager).await;
    let peer = within("circuit dial", client.handle.dial(circuit))
        .await
        .unwrap();

    // Asked for at once, the stream opens once the direct connection is there (on it: a
    // stream prefers a direct connection): the relay carries no task's bytes when a hole
    // punch can spare it.
    let mut stream = within("opening the stream", client.handle.open_stream(peer, ECHO))
        .await
        .unwrap();
    let conns = client.handle.peer_addrs(peer).await.unwrap();
    assert!(
        conns
            .iter()
            .any(|a| !a.iter().any(|p| p == Protocol::P2pCircuit)),
        "the stream opened before the hole punch: {conns:?}"
    );
    stream.write_all(b"direct").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("the echo", stream.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"direct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autonat_finds_a_manager_at_a_private_address_public() {
    // Loopback, like a LAN or a container network, is no global address: with libp2p's
    // default AutoNAT settings no peer probed or answered there, and every status stayed
    // unknown.
    let metrics = domain_telemetry::Metrics::new("test");
    let mut config = loopback(Role::Manager);
    config.metrics = Some(metrics.clone());
    let manager = start(config).await;
    let _node = start(loopback(Role::Node).with_bootstrap(tcp_addr(&manager.addrs))).await;

    // The first probe goes 15 s after the start (AutoNAT's boot delay).
    let public = "domain_cluster_reachability{status=\"public\"} 1";
    within("AutoNAT's first probe", async {
        while !metrics.encode().contains(public) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        metrics
            .encode()
            .contains("domain_cluster_reachability{status=\"unknown\"} 0")
    );
}
