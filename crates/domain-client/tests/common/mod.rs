//! A cluster in this process for the client's tests: a manager and one node on loopback,
//! and a client of them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use domain_client::client::{Client, ClientConfig, Progress};
use domain_cluster::Multiaddr;
use domain_cluster::identity::Identity;

/// What a test keeps running: the manager, the node and the folder of their data.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub manager: domain_manager::Manager,
    pub node: domain_node::Node,
}

impl Cluster {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let loopback: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        let mut manager_config = domain_manager::ManagerConfig::new(dir.path().join("manager"));
        manager_config.listen = vec![loopback.clone()];
        let manager = domain_manager::Manager::start(manager_config)
            .await
            .unwrap();
        let mut node_config = domain_node::NodeConfig::new(
            manager.tcp_addr().unwrap().clone(),
            dir.path().join("node"),
        )
        .unwrap();
        node_config.listen = vec![loopback];
        let node = domain_node::Node::start(node_config).await.unwrap();
        node.joined().await.unwrap();
        Self { dir, manager, node }
    }

    /// A client of this cluster, telling `progress` of its transfers when given.
    pub async fn client(&self, progress: Option<Arc<dyn Progress>>) -> Client {
        let config = ClientConfig::default();
        let manager = self.manager.tcp_addr().unwrap().clone();
        let client = Client::start(Identity::generate(), Some(manager), config)
            .await
            .unwrap();
        match progress {
            Some(progress) => client.with_progress(progress),
            None => client,
        }
    }
}
