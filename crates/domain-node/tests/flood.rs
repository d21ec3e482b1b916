//! Many fresh identities against a real node on loopback, each within its own limits:
//! together they open more silent task streams than the node has places for
//! handshakes, while a good client moves data with real tokens. A full pool of
//! handshakes ends its oldest, so the good client's handshakes (done in milliseconds)
//! get through, and every silent stream ends within the handshake deadline.
//! (A test binary of its own: `hostile.rs` counts the process's log lines.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use domain_cluster::{ClusterHandle, PeerId};
use domain_node::config::DEFAULT_MAX_HANDSHAKES_PER_PEER;
use domain_proto::protocols::{LOAD_V1, STORE_V1};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinSet;

mod common;

use common::setup::{Setup, client};
use common::within;

/// Fresh identities of the flood: 16 × 32 silent streams, four times the node's 128
/// places for handshakes.
const FLOOD_IDENTITIES: usize = 16;

/// Opens a stream on `node` that sends half a frame header and then waits until the
/// node ends it.
async fn silent_stream(cluster: &ClusterHandle, node: PeerId, index: usize) {
    let protocol = [STORE_V1, LOAD_V1][index % 2];
    let Ok(mut stream) = cluster.open_stream(node, protocol).await else {
        return;
    };
    if stream.write_all(&[0, 0]).await.is_ok() {
        let _ = stream.flush().await;
    }
    let mut buf = [0; 64];
    if let Ok(n) = stream.read(&mut buf).await {
        assert_eq!(
            n, 0,
            "the node wrote to a stream that never sent its handshake"
        );
    }
}

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_client_moves_data_while_sixteen_identities_hold_silent_streams() {
    let setup = Setup::start(|c| c.join_interval = Duration::from_secs(60)).await;
    let node = setup.node.peer_id();
    let node_addr = setup.node.ready_addr().await.unwrap();
    let mut flooders = Vec::new();
    for _ in 0..FLOOD_IDENTITIES {
        let cluster = client(&setup.manager.addr);
        cluster.dial(node_addr.clone()).await.unwrap();
        flooders.push(cluster);
    }
    let mut silent = JoinSet::new();
    for cluster in &flooders {
        for index in 0..DEFAULT_MAX_HANDSHAKES_PER_PEER {
            let cluster = cluster.clone();
            silent.spawn(async move { silent_stream(&cluster, node, index).await });
        }
    }
    within("the flood to fill the handshakes", async {
        while setup.node.streams_in_handshake() < 128 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // The good client's handshakes each take the place of the oldest silent stream.
    let store = setup.token("job-good", "upload", STORE_V1).await;
    let load = setup.token("job-good", "download", LOAD_V1).await;
    let big = content(2 << 20);
    let ids = within(
        "the good upload among the flood",
        setup.store(&store, &[("big", &big)]),
    )
    .await
    .unwrap();
    let loaded = within("the good download among the flood", setup.load(&load, &ids)).await;
    assert_eq!(loaded, [("big".to_owned(), big)]);
    assert!(setup.node.streams_in_handshake() <= 128);
    assert_eq!(
        setup.node.running_streams(),
        0,
        "no silent stream is served"
    );

    // Every silent stream ends within the handshake deadline (or was pushed out).
    within("the silent streams to end", silent.join_all()).await;
    assert_eq!(setup.node.streams_in_handshake(), 0);
    for cluster in flooders {
        cluster.shutdown().await.unwrap();
    }
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_handshakes_keep_failing_is_banned() {
    let setup = Setup::start(|c| c.join_interval = Duration::from_secs(60)).await;
    let node = setup.node.peer_id();
    let node_addr = setup.node.ready_addr().await.unwrap();
    let flooder = client(&setup.manager.addr);
    flooder.dial(node_addr.clone()).await.unwrap();
    // Garbage handshakes one after another, each refused at once; the node bans the peer
    // at the 64th, and then it cannot even open a stream.
    let mut refused = 0;
    let banned = within("the ban", async {
        loop {
            let Ok(mut stream) = flooder.open_stream(node, STORE_V1).await else {
                return refused;
            };
            let _ = stream.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
            let _ = stream.shutdown().await;
            let mut buf = Vec::new();
            let _ = stream.read_to_end(&mut buf).await;
            refused += 1;
        }
    })
    .await;
    assert!(
        (64..=80).contains(&banned),
        "banned after {banned} failed handshakes"
    );
    // The good client is not touched.
    let store = setup.token("job-good", "upload", STORE_V1).await;
    setup.store(&store, &[("after", b"fine")]).await.unwrap();
    flooder.shutdown().await.unwrap();
    setup.stop().await;
}
