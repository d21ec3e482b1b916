//! [`Etcd`]: the few calls of etcd's v3 API the managers make, each bounded in time.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::api::etcdserverpb::kv_client::KvClient;
use crate::api::etcdserverpb::lease_client::LeaseClient;
use crate::api::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, TxnResponse, compare, request_op,
};
use crate::api::mvccpb::KeyValue;
use crate::api::v3electionpb::election_client::ElectionClient;

/// Keys read per request when scanning a prefix: pages stay far below etcd's default
/// limit of 1.5 MiB per request for records of a few hundred bytes.
pub const SCAN_PAGE: i64 = 1_000;

/// Where etcd is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members (`http://127.0.0.1:2379`); requests go to any that
    /// answers.
    pub endpoints: Vec<String>,
    /// Every key the cluster writes starts with this (`/domain-cluster/`), so that one
    /// etcd can hold several clusters, or other tenants besides.
    pub prefix: String,
    /// The limit on each request (not on waiting to be elected).
    pub request_timeout: Duration,
}

impl EtcdConfig {
    /// The prefix of a cluster that names none.
    pub const DEFAULT_PREFIX: &'static str = "/domain-cluster/";

    /// `endpoints` with the default prefix and a 5 s request timeout.
    #[must_use]
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a call to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint was given.
    #[error("no etcd endpoint given")]
    NoEndpoint,
    /// An endpoint is not a URL tonic can dial.
    #[error("invalid etcd endpoint {endpoint:?}")]
    Endpoint {
        /// The endpoint given.
        endpoint: String,
        /// Why it is refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// etcd answered with an error, or could not be reached.
    #[error("etcd {call} failed")]
    Rpc {
        /// The call (`range`, `txn`, `campaign`, ...).
        call: &'static str,
        /// What gRPC said.
        #[source]
        source: Box<tonic::Status>,
    },
    /// etcd did not answer in time.
    #[error("etcd {call} took longer than {timeout:?}")]
    Timeout {
        /// The call.
        call: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// A record is larger than one etcd request may carry.
    #[error("a record of {bytes} bytes is over the {limit} bytes of an etcd request")]
    TooLarge {
        /// The record's size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A lease ended: its holder stopped refreshing it in time, or it was revoked.
    #[error("etcd lease {lease:x} expired")]
    LeaseExpired {
        /// The lease id.
        lease: i64,
    },
}

/// A client of etcd's v3 API, cheap to clone. The channel connects lazily and reconnects
/// on its own, so an etcd restart costs the calls made while it is down, not the client.
#[derive(Clone)]
pub struct Etcd {
    pub(crate) kv: KvClient<Channel>,
    pub(crate) lease: LeaseClient<Channel>,
    pub(crate) election: ElectionClient<Channel>,
    prefix: Arc<[u8]>,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// A client of the etcd at `config.endpoints`. Nothing is dialled yet: the first call
    /// connects. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`EtcdError::NoEndpoint`], or [`EtcdError::Endpoint`] for one that is no URL.
    pub fn connect(config: &EtcdConfig) -> Result<Self, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoint);
        }
        let endpoints = config
            .endpoints
            .iter()
            .map(|endpoint| {
                Endpoint::from_shared(endpoint.clone())
                    .map(|e| {
                        e.connect_timeout(config.request_timeout)
                            // A dead peer is noticed by the keep-alive, not by the next call.
                            .http2_keep_alive_interval(Duration::from_secs(1))
                            .keep_alive_timeout(config.request_timeout)
                    })
                    .map_err(|source| EtcdError::Endpoint {
                        endpoint: endpoint.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let channel = Channel::balance_list(endpoints.into_iter());
        Ok(Self {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            election: ElectionClient::new(channel),
            prefix: config.prefix.as_bytes().into(),
            timeout: config.request_timeout,
        })
    }

    /// The full key of `suffix`: the cluster's prefix, then `suffix`.
    #[must_use]
    pub fn key(&self, suffix: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + suffix.len());
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(suffix);
        key
    }

    /// Runs `call` within the request timeout.
    pub(crate) async fn bounded<T>(
        &self,
        call: &'static str,
        future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.timeout, future).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(EtcdError::Rpc {
                call,
                source: Box::new(status),
            }),
            Err(_) => Err(EtcdError::Timeout {
                call,
                timeout: self.timeout,
            }),
        }
    }

    /// The value at `key` (a full key), if any.
    ///
    /// # Errors
    /// [`EtcdError::Rpc`] or [`EtcdError::Timeout`].
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let request = RangeRequest {
            key: key.to_vec(),
            ..RangeRequest::default()
        };
        let mut kv = self.kv.clone();
        let response = self.bounded("range", kv.range(request)).await?;
        Ok(response.kvs.into_iter().next())
    }

    /// Every key under `prefix` (a full key), in key order, as of one revision: the
    /// revision of the first page, which every later page reads at too. Returns the pairs
    /// and that revision.
    ///
    /// # Errors
    /// [`EtcdError::Rpc`] (also when the revision was compacted between pages) or
    /// [`EtcdError::Timeout`].
    pub async fn scan(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut revision = 0;
        let mut all = Vec::new();
        loop {
            let request = RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: SCAN_PAGE,
                revision,
                ..RangeRequest::default()
            };
            let mut kv = self.kv.clone();
            let page = self.bounded("range", kv.range(request)).await?;
            if revision == 0 {
                revision = page.header.map_or(0, |h| h.revision);
            }
            let last = page.kvs.last().map(|kv| kv.key.clone());
            all.extend(page.kvs);
            match last {
                Some(last) if page.more => {
                    // The next key after `last`.
                    from = last;
                    from.push(0);
                }
                _ => return Ok((all, revision)),
            }
        }
    }

    /// Writes `value` at `key` (a full key), unconditionally.
    ///
    /// # Errors
    /// [`EtcdError::Rpc`] or [`EtcdError::Timeout`].
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EtcdError> {
        let request = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..PutRequest::default()
        };
        let mut kv = self.kv.clone();
        self.bounded("put", kv.put(request)).await?;
        Ok(())
    }

    /// Changes the value at `key` (a full key) with `change`, atomically: `change` gets the
    /// value as it is (`None` when absent) and answers the new one (`None`: leave it), which
    /// is written only if nobody wrote the key since it was read; otherwise it is read again
    /// and `change` called again. Returns whether a value was written.
    ///
    /// # Errors
    /// [`EtcdError::Rpc`] or [`EtcdError::Timeout`]; what `change` returns.
    pub async fn update<E: From<EtcdError>>(
        &self,
        key: &[u8],
        mut change: impl FnMut(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<bool, E> {
        loop {
            let current = self.get(key).await?;
            let Some(value) = change(current.as_ref().map(|kv| kv.value.as_slice()))? else {
                return Ok(false);
            };
            // Unwritten since read: the same modification (0 when it was absent).
            let unchanged = Compare {
                result: compare::CompareResult::Equal.into(),
                target: compare::CompareTarget::Mod.into(),
                key: key.to_vec(),
                target_union: Some(compare::TargetUnion::ModRevision(
                    current.as_ref().map_or(0, |kv| kv.mod_revision),
                )),
                range_end: Vec::new(),
            };
            let put = RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.to_vec(),
                    value,
                    ..PutRequest::default()
                })),
            };
            let request = TxnRequest {
                compare: vec![unchanged],
                success: vec![put],
                failure: Vec::new(),
            };
            if self.txn(request).await?.succeeded {
                return Ok(true);
            }
        }
    }

    /// Runs a transaction: its comparisons, then its success or failure operations.
    ///
    /// # Errors
    /// [`EtcdError::Rpc`] or [`EtcdError::Timeout`]. A transaction whose comparisons fail
    /// is no error: `succeeded` is false.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        let mut kv = self.kv.clone();
        self.bounded("txn", kv.txn(request)).await
    }

    /// A new lease of `ttl` (whole seconds, at least one).
    ///
    /// # Errors
    /// [`EtcdError::Rpc`] or [`EtcdError::Timeout`].
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let request = LeaseGrantRequest {
            ttl: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
            id: 0,
        };
        let mut lease = self.lease.clone();
        Ok(self
            .bounded("lease grant", lease.lease_grant(request))
            .await?
            .id)
    }

    /// Ends `lease` now, deleting every key attached to it.
    ///
    /// # Errors
    /// [`EtcdError::Rpc`] or [`EtcdError::Timeout`].
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        let mut client = self.lease.clone();
        self.bounded(
            "lease revoke",
            client.lease_revoke(LeaseRevokeRequest { id: lease }),
        )
        .await?;
        Ok(())
    }
}

/// The end of the range of every key starting with `prefix`: the prefix with its last byte
/// below 0xff incremented (and what follows dropped); `\0` (to the end of the keyspace) when
/// every byte is 0xff.
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_prefix_range_is_the_prefix_with_its_last_byte_incremented() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
