//! What the examples share: a cluster of their own, so that they run anywhere as they are.

use anyhow::{Context as _, bail};
use domain_cluster::Multiaddr;
use domain_datastore::DomainId;

/// The cluster an example works on, from its arguments: none, a cluster of its own in
/// this process (domain `example`); `MANAGER_ADDR DOMAIN`, a running one. The cluster
/// comes back too, to keep it running.
pub async fn cluster_from_args(
    usage: &str,
) -> anyhow::Result<(Option<LocalCluster>, Multiaddr, DomainId)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    Ok(match args.as_slice() {
        [] => {
            let cluster = LocalCluster::start().await?;
            let manager = cluster.manager_addr.clone();
            (Some(cluster), manager, DomainId::new("example")?)
        }
        [manager, domain] => (None, manager.parse()?, DomainId::new(domain.as_str())?),
        _ => bail!("usage: {usage} [MANAGER_ADDR DOMAIN]"),
    })
}

/// A manager and a node on loopback, with their data in a temporary folder.
pub struct LocalCluster {
    _dir: tempfile::TempDir,
    pub manager_addr: Multiaddr,
    _manager: domain_manager::Manager,
    _node: domain_node::Node,
}

impl LocalCluster {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let loopback: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
        let mut manager_config = domain_manager::ManagerConfig::new(dir.path().join("manager"));
        manager_config.listen = vec![loopback.clone()];
        let manager = domain_manager::Manager::start(manager_config).await?;
        let manager_addr = manager
            .tcp_addr()
            .context("the manager has no TCP address")?
            .clone();
        let mut node_config =
            domain_node::NodeConfig::new(manager_addr.clone(), dir.path().join("node"))?;
        node_config.listen = vec![loopback];
        let node = domain_node::Node::start(node_config).await?;
        node.joined().await?;
        Ok(Self {
            _dir: dir,
            manager_addr,
            _manager: manager,
            _node: node,
        })
    }
}
