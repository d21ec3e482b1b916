//! The remote backend: the behaviour suite every `Datastore` passes, run against
//! `RemoteDatastore` on a cluster in this process (a manager and a node on loopback).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../domain-datastore/tests/suite/mod.rs"]
mod suite;

use std::time::Duration;

use domain_client::client::{Client, ClientConfig};
use domain_client::datastore::RemoteDatastore;
use domain_cluster::Multiaddr;
use domain_cluster::identity::Identity;

/// What a fresh store keeps running: its cluster and the folder of its data.
struct Cluster {
    _dir: tempfile::TempDir,
    _manager: domain_manager::Manager,
    _node: domain_node::Node,
}

async fn fresh() -> (RemoteDatastore, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let loopback: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let mut manager_config = domain_manager::ManagerConfig::new(dir.path().join("manager"));
    manager_config.listen = vec![loopback.clone()];
    let manager = domain_manager::Manager::start(manager_config)
        .await
        .unwrap();
    let manager_addr = manager.tcp_addr().unwrap().clone();
    let mut node_config =
        domain_node::NodeConfig::new(manager_addr.clone(), dir.path().join("node")).unwrap();
    node_config.listen = vec![loopback];
    let node = domain_node::Node::start(node_config).await.unwrap();
    node.joined().await.unwrap();
    let config = ClientConfig {
        // One node: the monitor's list of jobs comes at once, nothing to wait for.
        search_quiet: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    let client = Client::start(Identity::generate(), Some(manager_addr), config)
        .await
        .unwrap();
    let cluster = Cluster {
        _dir: dir,
        _manager: manager,
        _node: node,
    };
    (RemoteDatastore::new(client), cluster)
}

datastore_suite!(fresh);
