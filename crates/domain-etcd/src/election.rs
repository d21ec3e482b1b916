//! One leader among the managers: etcd's election service, over a lease that a background
//! task keeps alive.
//!
//! A candidate's key (`<prefix><name>/<lease>`) lives as long as its lease; the oldest key
//! leads. A leader whose process dies stops refreshing its lease, etcd deletes its key when
//! the lease's time-to-live runs out, and the next oldest candidate leads. Being elected
//! is not enough to write: every write of the leader compares its key's creation
//! revision ([`Leadership::guard`]), so one that was deposed without noticing (paused,
//! cut off from etcd) writes nothing.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::api::etcdserverpb::{Compare, LeaseKeepAliveRequest, RangeRequest, compare};
use crate::api::v3electionpb::{CampaignRequest, LeaderKey};
use crate::client::{Etcd, EtcdError, prefix_end};

/// Leadership of an election, held until it is [resigned](Self::resign), dropped, or lost
/// with its lease.
#[derive(Debug)]
pub struct Leadership {
    key: LeaderKey,
    lost: watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
    etcd: Etcd,
}

impl Leadership {
    /// The comparison that holds while this leadership does: the leader's key still exists
    /// with the creation revision it was elected with. Every write of the leader carries it.
    #[must_use]
    pub fn guard(&self) -> Compare {
        Compare {
            result: compare::CompareResult::Equal.into(),
            target: compare::CompareTarget::Create.into(),
            key: self.key.key.clone(),
            target_union: Some(compare::TargetUnion::CreateRevision(self.key.rev)),
            range_end: Vec::new(),
        }
    }

    /// The revision at which this leadership began; later leaderships have higher ones.
    #[must_use]
    pub fn revision(&self) -> i64 {
        self.key.rev
    }

    /// The lease the leadership hangs on.
    #[must_use]
    pub fn lease(&self) -> i64 {
        self.key.lease
    }

    /// Whether the lease is known to be gone (not refreshed within its time-to-live).
    #[must_use]
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the lease is known to be gone. Its writes fail from then on anyway;
    /// this is for the leader to stop acting as one.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the keepalive task is gone, which only happens once it gave up.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Gives the leadership up now: the lease is revoked, which deletes the key, so that
    /// the next candidate leads without waiting for the time-to-live.
    ///
    /// # Errors
    /// When etcd cannot be told; the lease then runs out on its own.
    pub async fn resign(self) -> Result<(), EtcdError> {
        self.keepalive.abort();
        self.etcd.revoke(self.key.lease).await
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

impl Etcd {
    /// Waits until this candidate leads the election `name`, announcing `value` (what
    /// others need to reach the leader) meanwhile and after. The candidacy hangs on a new
    /// lease of `ttl` (whole seconds), refreshed every third of it until the leadership is
    /// dropped; a failure to refresh for a whole `ttl` loses it.
    ///
    /// # Errors
    /// [`EtcdError::LeaseExpired`] when the lease ran out while waiting; an error of etcd.
    pub async fn campaign(
        &self,
        name: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Leadership, EtcdError> {
        let ttl = Duration::from_secs(ttl.as_secs().max(1));
        let lease = self.grant(ttl).await?;
        let (lost_tx, lost) = watch::channel(false);
        let keepalive = tokio::spawn(keep_alive(self.clone(), lease, ttl, lost_tx));
        let request = CampaignRequest {
            name: self.key(name.as_bytes()),
            lease,
            value: value.to_vec(),
        };
        let mut election = self.election.clone();
        let mut watch_lost = lost.clone();
        // No timeout: waiting for the current leader to go is the point.
        let elected = tokio::select! {
            response = election.campaign(request) => response,
            _ = watch_lost.wait_for(|lost| *lost) => {
                keepalive.abort();
                return Err(EtcdError::LeaseExpired { lease });
            }
        };
        let key = match elected.map(|r| r.into_inner().leader) {
            Ok(Some(key)) => key,
            Ok(None) => {
                keepalive.abort();
                let _ = self.revoke(lease).await;
                return Err(EtcdError::Rpc {
                    call: "campaign",
                    source: Box::new(tonic::Status::internal("no leader key in the answer")),
                });
            }
            Err(status) => {
                keepalive.abort();
                let _ = self.revoke(lease).await;
                return Err(EtcdError::Rpc {
                    call: "campaign",
                    source: Box::new(status),
                });
            }
        };
        Ok(Leadership {
            key,
            lost,
            keepalive,
            etcd: self.clone(),
        })
    }

    /// The value the current leader of `name` announced, if there is a leader.
    ///
    /// # Errors
    /// [`EtcdError::Rpc`] or [`EtcdError::Timeout`].
    pub async fn leader(&self, name: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        // The election service keys each candidate under `name/`; the oldest leads.
        let mut prefix = self.key(name.as_bytes());
        prefix.push(b'/');
        let request = RangeRequest {
            range_end: prefix_end(&prefix),
            key: prefix,
            limit: 1,
            sort_order: SortOrder::Ascend.into(),
            sort_target: SortTarget::Create.into(),
            ..RangeRequest::default()
        };
        let mut kv = self.kv.clone();
        let response = self.bounded("range", kv.range(request)).await?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }
}

/// Refreshes `lease` every third of `ttl` until aborted; sets `lost` and ends once a whole
/// `ttl` passed since the last refresh etcd confirmed, or etcd says the lease is gone.
async fn keep_alive(etcd: Etcd, lease: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let period = ttl / 3;
    let mut expires = Instant::now() + ttl;
    while Instant::now() < expires {
        let (requests, stream) = mpsc::channel(1);
        // The first refresh goes with the call: etcd answers it (and so the call completes)
        // only once it has a request to answer.
        let mut sent = Instant::now();
        if requests
            .try_send(LeaseKeepAliveRequest { id: lease })
            .is_err()
        {
            break;
        }
        let mut client = etcd.lease.clone();
        let left = expires.saturating_duration_since(sent);
        let opened =
            tokio::time::timeout(left, client.lease_keep_alive(ReceiverStream::new(stream))).await;
        let mut responses = match opened {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(error)) => {
                tracing::debug!(%error, lease, "cannot open the lease keep-alive stream");
                tokio::time::sleep(period.min(Duration::from_millis(250))).await;
                continue;
            }
            Err(_) => continue,
        };
        loop {
            let left = expires.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, responses.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl > 0 => {
                    // Counted from the sending: etcd refreshed it no earlier.
                    expires = sent + Duration::from_secs(answer.ttl.unsigned_abs());
                }
                Ok(Ok(Some(_))) => {
                    tracing::warn!(lease, "etcd says the lease is gone");
                    let _ = lost.send(true);
                    return;
                }
                Ok(Ok(None) | Err(_)) | Err(_) => break,
            }
            tokio::time::sleep(period).await;
            sent = Instant::now();
            if requests
                .send(LeaseKeepAliveRequest { id: lease })
                .await
                .is_err()
            {
                break;
            }
        }
    }
    tracing::warn!(lease, "the lease ran out before etcd confirmed a refresh");
    let _ = lost.send(true);
}
