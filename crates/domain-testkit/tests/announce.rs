//! A node reached through something in front of it (a port forward, a proxy): with
//! `announce`, clients dial the announced address, never the one the node listens on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use domain_client::client::Upload;
use domain_cluster::Multiaddr;
use domain_manager::ManagerConfig;
use domain_node::{Node, NodeConfig};
use domain_proto::DomainId;
use domain_testkit::{JOIN_WAIT, manager_addr, start_client, start_manager};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Forwards every connection to `listener` on to `target`, counting the bytes that go
/// towards it as they pass.
async fn forward(listener: TcpListener, target: std::net::SocketAddr, counted: Arc<AtomicU64>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        let counted = Arc::clone(&counted);
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let (mut from_client, mut to_client) = inbound.split();
            let (mut from_node, mut to_node) = outbound.split();
            let towards = async {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let n = match from_client.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if to_node.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                    counted.fetch_add(n as u64, Ordering::Relaxed);
                }
            };
            let back = tokio::io::copy(&mut from_node, &mut to_client);
            let _ = tokio::join!(towards, back);
        });
    }
}

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
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let counted = Arc::new(AtomicU64::new(0));
    tokio::spawn(forward(front, node_port, Arc::clone(&counted)));

    let mut config = NodeConfig::new(addr.clone(), dir.path().join("node")).unwrap();
    config.listen = vec![
        format!("/ip4/127.0.0.1/tcp/{}", node_port.port())
            .parse::<Multiaddr>()
            .unwrap(),
    ];
    config.announce = vec![
        format!("/ip4/127.0.0.1/tcp/{}", front_addr.port())
            .parse()
            .unwrap(),
    ];
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
        counted.load(Ordering::Relaxed) >= content.len() as u64,
        "the upload went around the announced address: {} bytes through it",
        counted.load(Ordering::Relaxed)
    );
    client.shutdown().await.unwrap();
    node.shutdown().await.unwrap();
    manager.shutdown().await.unwrap();
}
