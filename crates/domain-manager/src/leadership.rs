//! Where the scheduler's state lives: `scheduler.redb` for a manager alone, or etcd for
//! managers that share it, one leading at a time (docs/design.md, "Several managers"); and
//! `/leader/v1`, by which every manager, a standby too, says who leads.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use domain_cluster::{Multiaddr, PeerId};
use domain_etcd::{Etcd, EtcdError, EtcdStore, Leadership};
use domain_proto::discovery::{LeaderRequest, LeaderResponse};
use domain_proto::protocols::LEADER_V1;
use domain_proto::{read_message, write_message};
use domain_scheduler::{RedbStore, SchedulerError, SchedulerStore};
use tokio::io::{AsyncRead, AsyncWrite};

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

/// The largest `/leader/v1` request read: it is empty.
const LEADER_REQUEST_FRAME: usize = 64;

/// What `/leader/v1` answers, from before this manager leads until it stops.
#[derive(Debug, Clone)]
pub(crate) struct LeaderAnswers {
    /// The managers' etcd, which names the leader; `None` for a manager alone.
    etcd: Option<Etcd>,
    /// This manager's addresses, as it announces them when it leads.
    own: Vec<String>,
    /// Set once this manager serves the other protocols: until then it does not say it
    /// leads, so that no peer is sent to protocols not served yet.
    serving: Arc<AtomicBool>,
}

impl LeaderAnswers {
    /// The answers of a manager with addresses `addrs` (each with `/p2p/<id>`), on `etcd`
    /// or alone.
    pub(crate) fn new(etcd: Option<Etcd>, addrs: &[Multiaddr]) -> Self {
        Self {
            etcd,
            own: addrs.iter().map(ToString::to_string).collect(),
            serving: Arc::new(AtomicBool::new(false)),
        }
    }

    /// What the leader announces in the election: its addresses, one per line.
    fn announced(&self) -> String {
        self.own.join("\n")
    }

    /// This manager now serves every protocol.
    pub(crate) fn serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// Who leads, as etcd says now: this manager (once it serves), another, or nobody (an
    /// election under way, or etcd out of reach).
    pub(crate) async fn answer(&self) -> LeaderResponse {
        let serving = self.serving.load(Ordering::Acquire);
        let Some(etcd) = &self.etcd else {
            return LeaderResponse {
                leading: serving,
                leader_addrs: self.own.clone(),
            };
        };
        let leader_addrs: Vec<String> = match etcd.leader(LEADER_ELECTION).await {
            Ok(Some(value)) => String::from_utf8_lossy(&value)
                .lines()
                .map(str::to_owned)
                .collect(),
            Ok(None) => Vec::new(),
            Err(error) => {
                tracing::debug!(error = %domain_proto::ErrorChain(&error), "cannot ask etcd who leads");
                Vec::new()
            }
        };
        LeaderResponse {
            leading: serving && leader_addrs == self.own,
            leader_addrs,
        }
    }
}

/// Answers one `/leader/v1` request of `peer` on `stream` within `timeout`.
pub(crate) async fn serve_leader<S: AsyncRead + AsyncWrite + Unpin + Send>(
    answers: &LeaderAnswers,
    peer: PeerId,
    mut stream: S,
    timeout: Duration,
) {
    let exchange = async {
        read_message::<LeaderRequest, _>(&mut stream, LEADER_REQUEST_FRAME).await?;
        write_message(&mut stream, &answers.answer().await).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(())) => tracing::debug!(%peer, "said who leads"),
        Ok(Err(error)) => {
            tracing::debug!(%peer, "{LEADER_V1}: {}", domain_proto::ErrorChain(&error));
        }
        Err(_) => tracing::debug!(%peer, "{LEADER_V1}: no request in time"),
    }
}

/// The store of `config`: with etcd, once this manager leads, which may take as long as
/// another manager does. The leader announces the addresses of `answers`, for the others
/// to name.
pub(crate) async fn store_for(
    config: &ManagerConfig,
    answers: &LeaderAnswers,
) -> Result<(StoreChoice, Option<Leadership>), ManagerError> {
    let Some(etcd) = answers.etcd.clone() else {
        return Ok((StoreChoice::Redb(config.scheduler_path()), None));
    };
    let announced = answers.announced();
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
