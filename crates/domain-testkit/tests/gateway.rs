//! A gateway node: it stores nothing itself and serves its cluster's tasks from an
//! upstream cluster. Two real clusters in this process, each a manager and a node; the
//! client only ever talks to the gateway's cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use domain_client::client::{Client, ClientConfig, Upload};
use domain_cluster::Multiaddr;
use domain_cluster::identity::Identity;
use domain_datastore::Datastore as _;
use domain_manager::{Manager, ManagerConfig};
use domain_merkle::root_of;
use domain_node::{Node, NodeConfig};
use domain_proto::DomainId;
use domain_proto::domain_data::Query;
use domain_testkit::{manager_addr, start_client, start_manager, start_node};

async fn manager(dir: &std::path::Path) -> (Manager, Multiaddr) {
    let manager = start_manager(ManagerConfig::new(dir)).await.unwrap();
    let addr = manager_addr(&manager).unwrap();
    (manager, addr)
}

async fn node(config: NodeConfig) -> Node {
    start_node(config).await.unwrap()
}

async fn client(manager: Multiaddr) -> Client {
    start_client(Identity::generate(), &manager, ClientConfig::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_its_clusters_tasks_from_the_upstream_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (_upstream_manager, upstream_addr) = manager(&dir.path().join("upstream-manager")).await;
    let holder =
        node(NodeConfig::new(upstream_addr.clone(), dir.path().join("holder")).unwrap()).await;
    let (_gateway_manager, gateway_addr) = manager(&dir.path().join("gateway-manager")).await;
    let gateway_dir = dir.path().join("gateway");
    let gateway = node(
        NodeConfig::new(gateway_addr.clone(), &gateway_dir)
            .unwrap()
            .with_upstream(upstream_addr.clone())
            .unwrap(),
    )
    .await;
    assert!(gateway.datastore().local().is_none());

    let domain = DomainId::new("lab").unwrap();
    let through_gateway = client(gateway_addr).await;
    let scan: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let stored = through_gateway
        .upload(&domain, &[Upload::bytes(scan.clone(), "scan", "ply")])
        .await
        .unwrap();
    let root = root_of(&scan).to_string();
    assert_eq!(stored[0].hash.as_deref(), Some(root.as_str()));

    // The bytes are on the upstream node, and nowhere on the gateway.
    let held = holder
        .datastore()
        .query(&domain, &Query::default())
        .await
        .unwrap();
    assert_eq!(held, stored);
    assert!(!gateway_dir.join("store").exists());

    // Listing, downloading and removing go through the gateway too.
    assert_eq!(
        through_gateway
            .list(&domain, &Query::default())
            .await
            .unwrap(),
        stored
    );
    let mut copy = Vec::new();
    let found = through_gateway
        .download_to(&domain, &stored[0].id, &mut copy)
        .await
        .unwrap();
    assert_eq!(found.as_ref(), Some(&stored[0]));
    assert!(copy == scan);
    let removed = through_gateway
        .delete(&domain, &[stored[0].id.clone()])
        .await
        .unwrap();
    assert_eq!(removed.deleted, [stored[0].id.clone()]);
    assert!(
        holder
            .datastore()
            .query(&domain, &Query::default())
            .await
            .unwrap()
            .is_empty()
    );

    through_gateway.shutdown().await.unwrap();
    gateway.shutdown().await.unwrap();
    holder.shutdown().await.unwrap();
}
