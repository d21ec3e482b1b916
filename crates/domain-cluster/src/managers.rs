//! The managers a node or client knows, and which of them leads.
//!
//! Several managers share one state in etcd and elect a leader; only the leader serves
//! `/join/v1`, `/jobs/v1` and the other manager protocols, and every manager answers
//! `/leader/v1` with who leads (docs/protocol.md). [`Managers`] remembers the leader last
//! found and runs each request against it through [`Managers::call`]: when the request
//! fails in a way another manager could cure (the leader is gone, or the peer asked is a
//! standby), it asks the managers who leads now, waiting out an election, and tries once
//! more there. With one manager nobody is asked who leads: a request that fails that way
//! fails, or is run again on it for a client's patience (it may be restarting).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use crate::addr::peer_of;
use crate::error::ClusterError;
use crate::handle::ClusterHandle;

/// How long [`Managers::find_leader`] waits for a manager to lead by default: longer than
/// an election after the leader's lease ran out.
pub const DEFAULT_LEADER_PATIENCE: Duration = Duration::from_secs(15);

/// The pause between two rounds of asking every manager who leads, and the first before
/// asking the only manager again.
const ASK_AGAIN: Duration = Duration::from_millis(200);

/// The longest pause before asking the only manager again.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// The managers of a cluster and the one believed to lead. Cheap to clone; clones share
/// what they learn.
#[derive(Debug, Clone)]
pub struct Managers {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cluster: ClusterHandle,
    /// The managers given, in order.
    known: Vec<(PeerId, Multiaddr)>,
    /// The one believed to lead.
    leader: Mutex<(PeerId, Multiaddr)>,
    /// One search at a time: a burst of failed requests makes one round of questions.
    finding: tokio::sync::Mutex<()>,
    patience: Duration,
    /// How long a request to the only manager is repeated (zero: not at all).
    lone_patience: Duration,
}

impl Managers {
    /// The managers at `addrs` (each ending with `/p2p/<its peer id>`), reached through
    /// `cluster`; the first is believed to lead until one says otherwise.
    ///
    /// # Errors
    /// [`ClusterError::MissingPeerId`] for an address that does not name its manager,
    /// [`ClusterError::NoManager`] when `addrs` is empty.
    pub fn new(
        cluster: ClusterHandle,
        addrs: impl IntoIterator<Item = Multiaddr>,
    ) -> Result<Self, ClusterError> {
        let mut known: Vec<(PeerId, Multiaddr)> = Vec::new();
        for addr in addrs {
            let peer =
                peer_of(&addr).ok_or_else(|| ClusterError::MissingPeerId { addr: addr.clone() })?;
            if !known.iter().any(|(known, _)| *known == peer) {
                known.push((peer, addr));
            }
        }
        let first = known.first().cloned().ok_or(ClusterError::NoManager)?;
        Ok(Self {
            inner: Arc::new(Inner {
                cluster,
                known,
                leader: Mutex::new(first),
                finding: tokio::sync::Mutex::new(()),
                patience: DEFAULT_LEADER_PATIENCE,
                lone_patience: Duration::ZERO,
            }),
        })
    }

    /// Sets how long a search for the leader waits for one to be elected (default
    /// [`DEFAULT_LEADER_PATIENCE`]). Call it before cloning.
    #[must_use]
    pub fn with_patience(mut self, patience: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.patience = patience;
        }
        self
    }

    /// Sets how long a request to the only manager (one address given) is repeated when it
    /// fails in a way a restarting manager would ([`leads_elsewhere`]); zero, the default,
    /// fails at once. For a client, which has no better thing to do than wait; a node's
    /// joins and reports keep their own retries and must not stall on one. Call it before
    /// cloning.
    #[must_use]
    pub fn with_lone_patience(mut self, patience: Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.lone_patience = patience;
        }
        self
    }

    /// The manager believed to lead.
    #[must_use]
    pub fn leader(&self) -> PeerId {
        self.current().0
    }

    /// The addresses given, in order.
    pub fn addrs(&self) -> impl Iterator<Item = &Multiaddr> {
        self.inner.known.iter().map(|(_, addr)| addr)
    }

    /// Whether `peer` is one of the managers given, or the leader one of them named.
    #[must_use]
    pub fn is_manager(&self, peer: &PeerId) -> bool {
        self.inner.known.iter().any(|(known, _)| known == peer) || self.leader() == *peer
    }

    fn current(&self) -> (PeerId, Multiaddr) {
        // A plain pair, whole after every store: usable even if a holder panicked.
        self.inner
            .leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_leader(&self, leader: (PeerId, Multiaddr)) {
        *self
            .inner
            .leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = leader;
    }

    /// Runs `request` against the leader, its address dialled first (the swarm may have
    /// forgotten it after a restart). When the request fails in a way another manager
    /// could cure ([`leads_elsewhere`]) and several managers are known, finds the leader
    /// and runs `request` once more there; with one manager, which may be restarting or
    /// not serving yet, runs it again there, pausing longer each time, until the
    /// [lone patience](Self::with_lone_patience) runs out. `request` must therefore be
    /// safe to repeat.
    ///
    /// # Errors
    /// What `request` returned last; those of [`find_leader`](Self::find_leader).
    pub async fn call<T, F, Fut>(&self, mut request: F) -> Result<T, ClusterError>
    where
        F: FnMut(PeerId) -> Fut,
        Fut: Future<Output = Result<T, ClusterError>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.lone_patience;
        let mut pause = ASK_AGAIN;
        loop {
            let (leader, addr) = self.current();
            let result = match self.inner.cluster.dial(addr).await {
                Ok(_) => request(leader).await,
                Err(error) => Err(error),
            };
            match result {
                Err(error) if leads_elsewhere(&error) && self.inner.known.len() > 1 => {
                    tracing::info!(manager = %leader, error = %domain_proto::ErrorChain(&error), "the manager does not serve; finding the leader");
                    let leader = self.find_leader(leader).await?;
                    return request(leader).await;
                }
                Err(error)
                    if leads_elsewhere(&error)
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!(manager = %leader, error = %domain_proto::ErrorChain(&error), retry_in = ?pause, "the manager does not serve; asking it again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                result => return result,
            }
        }
    }

    /// Asks the managers who leads, until one does or the patience runs out; `failed` is
    /// the manager that just failed a request (found again only if it says it leads).
    /// Returns the leader, remembered for the next requests.
    ///
    /// # Errors
    /// [`ClusterError::NoLeader`] when no manager leads within the patience;
    /// [`ClusterError::Shutdown`].
    pub async fn find_leader(&self, failed: PeerId) -> Result<PeerId, ClusterError> {
        let _one_search = self.inner.finding.lock().await;
        let believed = self.leader();
        if believed != failed {
            // Found by another request while this one waited.
            return Ok(believed);
        }
        let deadline = tokio::time::Instant::now() + self.inner.patience;
        loop {
            for (peer, addr) in &self.inner.known {
                match self.ask(*peer, addr.clone()).await {
                    Ok(Some(leader)) => {
                        tracing::info!(leader = %leader.0, "found the leading manager");
                        let peer = leader.0;
                        self.set_leader(leader);
                        return Ok(peer);
                    }
                    Ok(None) => {}
                    Err(ClusterError::Shutdown) => return Err(ClusterError::Shutdown),
                    Err(error) => {
                        tracing::debug!(manager = %peer, error = %domain_proto::ErrorChain(&error), "cannot ask the manager who leads");
                    }
                }
            }
            if tokio::time::Instant::now() + ASK_AGAIN >= deadline {
                return Err(ClusterError::NoLeader {
                    managers: self.inner.known.len(),
                    waited: self.inner.patience,
                });
            }
            tokio::time::sleep(ASK_AGAIN).await;
        }
    }

    /// Asks `peer` who leads: itself, or the leader it names (asked in turn to confirm).
    async fn ask(
        &self,
        peer: PeerId,
        addr: Multiaddr,
    ) -> Result<Option<(PeerId, Multiaddr)>, ClusterError> {
        let cluster = &self.inner.cluster;
        cluster.dial(addr.clone()).await?;
        let answer = cluster.leader(peer).await?;
        if answer.leading {
            return Ok(Some((peer, addr)));
        }
        // A standby names the leader; it is believed once the leader says so itself.
        for named in &answer.leader_addrs {
            let Ok(named) = named.parse::<Multiaddr>() else {
                continue;
            };
            let Some(leader) = peer_of(&named) else {
                continue;
            };
            if leader == peer || cluster.dial(named.clone()).await.is_err() {
                continue;
            }
            if cluster
                .leader(leader)
                .await
                .is_ok_and(|answer| answer.leading)
            {
                return Ok(Some((leader, named)));
            }
        }
        Ok(None)
    }
}

/// Whether another manager might serve a request that failed with `error`: the peer
/// could not be reached, dropped the exchange, took too long, or does not serve the
/// protocol (a standby). Refusals (a job refused, a node not admitted) are answers: the
/// leader would give the same.
#[must_use]
pub fn leads_elsewhere(error: &ClusterError) -> bool {
    matches!(
        error,
        ClusterError::Dial { .. }
            | ClusterError::Unreachable { .. }
            | ClusterError::OpenStream { .. }
            | ClusterError::Timeout { .. }
            | ClusterError::Frame { .. }
            | ClusterError::StreamIo { .. }
    )
}
