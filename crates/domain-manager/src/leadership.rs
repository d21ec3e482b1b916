//! Where the scheduler's state lives: `scheduler.redb` for a manager alone, or etcd for
//! managers that share it, one leading at a time (docs/design.md, "Several managers").

use std::path::PathBuf;
use std::time::Duration;

use domain_cluster::Multiaddr;
use domain_etcd::{Etcd, EtcdError, EtcdStore, Leadership};
use domain_scheduler::{RedbStore, SchedulerError, SchedulerStore};

use crate::config::ManagerConfig;
use crate::error::ManagerError;

/// The name of the managers' election in etcd, under the cluster's prefix.
pub const LEADER_ELECTION: &str = "leader";

/// How long a candidate waits before trying again when etcd cannot be reached.
const CAMPAIGN_RETRY: Duration = Duration::from_millis(500);

/// The scheduler's store, as the scheduler thread will open it.
pub(crate) enum StoreChoice {
    /// `scheduler.redb` at this path, opened on the scheduler thread.
    Redb(PathBuf),
    /// etcd, opened for the leadership this manager holds.
    Etcd(Box<EtcdStore>),
}

impl StoreChoice {
    /// The store, opened.
    pub(crate) fn open(self) -> Result<Box<dyn SchedulerStore>, SchedulerError> {
        Ok(match self {
            Self::Redb(path) => Box::new(RedbStore::open(path)?),
            Self::Etcd(store) => store,
        })
    }
}

/// The store of `config`: with etcd, once this manager leads, which may take as long as
/// another manager does. `addrs` (each with `/p2p/<id>`) is what the leader announces, for
/// the others to name.
pub(crate) async fn store_for(
    config: &ManagerConfig,
    addrs: &[Multiaddr],
) -> Result<(StoreChoice, Option<Leadership>), ManagerError> {
    let Some(etcd_config) = &config.etcd else {
        return Ok((StoreChoice::Redb(config.scheduler_path()), None));
    };
    let etcd = Etcd::connect(etcd_config)?;
    let announced = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let leadership = loop {
        match etcd.leader(LEADER_ELECTION).await {
            Ok(Some(leader)) => tracing::info!(
                leader = %String::from_utf8_lossy(&leader).replace('\n', " "),
                "standing by while another manager leads"
            ),
            Ok(None) => {}
            Err(error) => tracing::warn!(
                error = %domain_proto::ErrorChain(&error),
                "cannot ask etcd who leads"
            ),
        }
        match etcd
            .campaign(LEADER_ELECTION, announced.as_bytes(), config.leader_lease)
            .await
        {
            Ok(leadership) => break leadership,
            // etcd down or restarting: a standby waits for it rather than exit.
            Err(
                error @ (EtcdError::Rpc { .. }
                | EtcdError::Timeout { .. }
                | EtcdError::LeaseExpired { .. }),
            ) => {
                tracing::warn!(error = %domain_proto::ErrorChain(&error), "campaign failed; trying again");
                tokio::time::sleep(CAMPAIGN_RETRY).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    tracing::info!(
        revision = leadership.revision(),
        "leading the managers on etcd"
    );
    let store = EtcdStore::open(etcd, &leadership)
        .await
        .map_err(SchedulerError::from)?;
    Ok((StoreChoice::Etcd(Box::new(store)), Some(leadership)))
}
