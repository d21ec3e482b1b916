//! What the examples share: the cluster they work on, from their arguments.

use anyhow::bail;
use domain_cluster::Multiaddr;
use domain_proto::DomainId;
use domain_testkit::LocalCluster;

/// The cluster an example works on, from its arguments: none, a cluster of its own in
/// this process (domain `example`), so that it runs anywhere as it is;
/// `MANAGER_ADDR DOMAIN`, a running one. The cluster comes back too, to keep it running.
pub async fn cluster_from_args(
    usage: &str,
) -> anyhow::Result<(Option<LocalCluster>, Multiaddr, DomainId)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    Ok(match args.as_slice() {
        [] => {
            let cluster = LocalCluster::start().await?;
            let manager = cluster.manager_addr().clone();
            (Some(cluster), manager, DomainId::new("example")?)
        }
        [manager, domain] => (None, manager.parse()?, DomainId::new(domain.as_str())?),
        _ => bail!("usage: {usage} [MANAGER_ADDR DOMAIN]"),
    })
}
