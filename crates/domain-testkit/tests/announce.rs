//! A node reached through something in front of it (a port forward, a proxy): with
//! `announce`, clients dial the announced address, never the one the node listens on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use domain_client::client::Upload;
use domain_manager::ManagerConfig;
use domain_node::{Node, NodeConfig};
use domain_proto::DomainId;
use domain_testkit::{Forwarder, JOIN_WAIT, manager_addr, start_client, start_manager};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_a_node_at_the_address_it_announces() {
    let dir = tempfile::tempdir().unwrap();
    let manager = start_manager(ManagerConfig::new(dir.path().join("manager")))
        .await
        .unwrap();
    let addr = manager_addr(&manager).unwrap();

    // The node listens on one port; a forwarder on another stands in front of it.
    let node_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let front = Forwarder::start(node_port).await.unwrap();

    let mut config = NodeConfig::new(addr.clone(), dir.path().join("node")).unwrap();
    config.listen = vec![domain_cluster::addr::tcp(node_port)];
    config.announce = vec![front.multiaddr()];
    let node = Node::start(config).await.unwrap();
    tokio::time::timeout(JOIN_WAIT, node.joined())
        .await
        .unwrap()
        .unwrap();

    let client = start_client(
        domain_cluster::identity::Identity::generate(),
        &addr,
        domain_client::client::ClientConfig {
            connect_patience: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let domain = DomainId::new("announced").unwrap();
    let content = vec![7u8; 1 << 20];
    client
        .upload(&domain, &[Upload::bytes(content.clone(), "blob", "bin")])
        .await
        .unwrap();
    assert!(
        front.forwarded() >= content.len() as u64,
        "the upload went around the announced address: {} bytes through it",
        front.forwarded()
    );
    client.shutdown().await.unwrap();
    node.shutdown().await.unwrap();
    manager.shutdown().await.unwrap();
}
