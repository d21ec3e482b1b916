//! In-process clusters for tests and examples.
//!
//! A manager, nodes and clients that run in the calling process on loopback, their data
//! in a temporary folder: what the cross-crate tests in `tests/` and the runnable
//! examples in `examples/` build on, so that no library crate needs a dev-dependency on
//! the manager or the node (which sit above it). The tests of whole binaries, as
//! processes, are in `domain-e2e`.
//!
//! - [`LocalCluster`]: a manager and one node, open to any client (loopback only).
//! - [`start_manager`], [`start_node`], [`admit`], [`start_client`]: the steps, for
//!   tests that need a cluster of another shape (several nodes, a domain with an
//!   allow-list, two clusters).
//! - [`Forwarder`]: a port forward in front of a node, which a test can cut;
//!   [`free_loopback_tcp`]: an address a restarted manager comes back at.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let cluster = domain_testkit::LocalCluster::start().await?;
//! let client = cluster.client().await?;
//! println!("client {} of {}", client.peer_id(), cluster.manager_addr());
//! # Ok(())
//! # }
//! ```

mod forward;

pub use forward::Forwarder;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use domain_client::client::{Client, ClientConfig};
use domain_cluster::Multiaddr;
use domain_cluster::addr::loopback_tcp;
use domain_cluster::identity::Identity;
use domain_manager::{Manager, ManagerConfig};
use domain_node::{Node, NodeConfig};

/// How long [`start_node`] waits for a node's first join: generous, since tests run in
/// parallel on small machines.
pub const JOIN_WAIT: Duration = Duration::from_secs(90);

/// A TCP address on the IPv4 loopback at a port free now: for a manager that must come
/// back at the same address after a restart, where its nodes and clients look for it.
///
/// # Errors
/// When no loopback port can be bound.
pub fn free_loopback_tcp() -> std::io::Result<Multiaddr> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    Ok(domain_cluster::addr::tcp(addr))
}

/// Starts a manager of `config` listening on [`loopback_tcp`] only.
///
/// # Errors
/// When the manager does not start.
pub async fn start_manager(config: ManagerConfig) -> anyhow::Result<Manager> {
    let config = ManagerConfig {
        listen: vec![loopback_tcp()],
        ..config
    };
    Manager::start(config).await.context("starting a manager")
}

/// Starts a node of `config` listening on [`loopback_tcp`] only, and waits (at most
/// [`JOIN_WAIT`]) until it joined its manager.
///
/// # Errors
/// When the node does not start or does not join in time.
pub async fn start_node(config: NodeConfig) -> anyhow::Result<Node> {
    let node = Node::start(NodeConfig {
        listen: vec![loopback_tcp()],
        ..config
    })
    .await
    .context("starting a node")?;
    tokio::time::timeout(JOIN_WAIT, node.joined())
        .await
        .context("waiting for the node to join")?
        .context("joining the manager")?;
    Ok(node)
}

/// Admits the node whose data folder is `node_dir` to `manager`, as its operator would
/// before the node first joins (`domain-manager node allow`).
///
/// # Errors
/// When the node's identity or the manager's admissions cannot be written.
pub fn admit(manager: &Manager, node_dir: &Path) -> anyhow::Result<()> {
    let peer = domain_node::node_identity(node_dir)
        .context("creating the node's identity")?
        .peer_id();
    domain_manager::admit_node(manager.data_dir(), &peer).context("admitting the node")?;
    Ok(())
}

/// The TCP address of `manager`, as clients and nodes dial it.
///
/// # Errors
/// When the manager listens on no TCP address.
pub fn manager_addr(manager: &Manager) -> anyhow::Result<Multiaddr> {
    manager
        .tcp_addr()
        .cloned()
        .context("the manager listens on no TCP address")
}

/// Starts a client of `identity` and `config` that bootstraps from `manager`.
///
/// # Errors
/// When the client does not start.
pub async fn start_client(
    identity: Identity,
    manager: &Multiaddr,
    config: ClientConfig,
) -> anyhow::Result<Client> {
    Client::start(identity, Some(manager.clone()), config)
        .await
        .context("starting a client")
}

/// A manager and one node on loopback, open to any client, with their data in a
/// temporary folder that goes with it.
pub struct LocalCluster {
    // Dropped last: the manager and the node keep files in it.
    manager: Manager,
    node: Node,
    manager_addr: Multiaddr,
    dir: tempfile::TempDir,
}

impl LocalCluster {
    /// Starts the manager, then the node, and returns once the node joined.
    ///
    /// # Errors
    /// When either does not start, or the node does not join.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating the cluster's folder")?;
        let manager = start_manager(ManagerConfig::new(dir.path().join("manager"))).await?;
        let manager_addr = manager_addr(&manager)?;
        let node_config = NodeConfig::new(manager_addr.clone(), dir.path().join("node"))
            .context("configuring the node")?;
        let node = start_node(node_config).await?;
        Ok(Self {
            manager,
            node,
            manager_addr,
            dir,
        })
    }

    /// The manager's TCP address.
    #[must_use]
    pub fn manager_addr(&self) -> &Multiaddr {
        &self.manager_addr
    }

    /// The manager.
    #[must_use]
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// The node.
    #[must_use]
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The folder that holds the manager's (`manager/`) and the node's (`node/`) data.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client of this cluster, with a fresh identity and the default configuration.
    ///
    /// # Errors
    /// When the client does not start.
    pub async fn client(&self) -> anyhow::Result<Client> {
        start_client(
            Identity::generate(),
            &self.manager_addr,
            ClientConfig::default(),
        )
        .await
    }
}
