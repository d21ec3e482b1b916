//! The network side of an audit: the manager as a client of its own nodes, under tokens
//! it signs for itself (sender: the manager; one fresh job id per audit step, which no
//! scheduler job has, so the nodes' status reports about them are ignored).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use domain_capabilities::{CapabilityError, Limits, StoreSender, delete_items, open_load};
use domain_cluster::{ClusterError, ClusterHandle, ClusterStream, PeerId};
use domain_proto::domain_data::{Query, UpsertMetadata};
use domain_proto::protocols::{DELETE_V1, LOAD_V1, STORE_V1};
use domain_proto::task::ConsumeDataInputV1;
use domain_scheduler::{DomainKeyIssuer, TokenError, TokenGrant, TokenIssuer as _};

use super::plan::Plan;
use crate::scheduler_thread::now_ms;

/// How long a node may stay unreachable before a step of the audit fails.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);

/// The life of the manager's own tokens: a copy of a large item takes a while.
const TOKEN_LIFETIME: Duration = domain_auth::MAX_TOKEN_LIFETIME;

/// Items one node may list for an audit: beyond, the audit fails rather than hold an
/// unbounded listing in memory.
const MAX_LISTED: usize = 2_000_000;

/// Ids per copy or removal stream, so that no request frame nears its limit.
pub(super) const IDS_PER_STREAM: usize = 256;

/// Why a step of an audit failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RepairError {
    /// The node's peer id does not parse.
    #[error("node {0:?} is not a peer id")]
    PeerId(String),
    /// The manager could not sign its own token (no key for the domain).
    #[error("signing the manager's own token")]
    Token(#[source] TokenError),
    /// The node could not be reached.
    #[error("opening {protocol} to {node}")]
    Open {
        node: PeerId,
        protocol: &'static str,
        #[source]
        source: Box<ClusterError>,
    },
    /// The stream with the node failed.
    #[error("{protocol} with {node} failed")]
    Transfer {
        node: PeerId,
        protocol: &'static str,
        #[source]
        source: Box<CapabilityError>,
    },
    /// A node lists more items than an audit holds.
    #[error("{node} lists more than {MAX_LISTED} items of the domain: too many to audit")]
    TooMany { node: PeerId },
    /// A copy came back with another root than the item's.
    #[error("the copy of {id} on {node} has root {got:?}, not the item's {expected}")]
    Differs {
        node: PeerId,
        id: String,
        expected: String,
        got: Option<String>,
    },
}

/// What carrying out a plan did.
#[derive(Debug, Default)]
pub(super) struct Done {
    pub copied: usize,
    pub removed: usize,
    /// The first step that failed (the others were still tried).
    pub error: Option<RepairError>,
    /// Nodes a copy to failed (a full disk, a node going away).
    pub refused: BTreeSet<String>,
}

/// Lists, copies and removes items on nodes, as the manager.
pub(crate) struct Auditor {
    cluster: ClusterHandle,
    issuer: Arc<DomainKeyIssuer>,
    limits: Limits,
}

impl Auditor {
    pub(crate) fn new(cluster: ClusterHandle, issuer: Arc<DomainKeyIssuer>) -> Self {
        Self {
            cluster,
            issuer,
            limits: Limits::default(),
        }
    }

    /// Opens `protocol` to `node` with a token of the manager's for `domain`.
    async fn open(
        &self,
        domain: &str,
        node: &str,
        protocol: &'static str,
    ) -> Result<(PeerId, String, ClusterStream), RepairError> {
        let peer: PeerId = node
            .parse()
            .map_err(|_| RepairError::PeerId(node.chars().take(80).collect()))?;
        let job_id = format!("repair-{}", uuid::Uuid::new_v4());
        let me = self.cluster.local_peer_id().to_string();
        let token = self
            .issuer
            .issue(&TokenGrant {
                domain_id: domain,
                job_id: &job_id,
                task_name: protocol.trim_matches('/'),
                sender: &me,
                receiver: node,
                endpoint: protocol,
                issued_at: now_ms(),
                lifetime: TOKEN_LIFETIME,
                copy: protocol == STORE_V1,
            })
            .map_err(RepairError::Token)?;
        let stream = self
            .cluster
            .open_stream_within(peer, protocol, CONNECT_PATIENCE)
            .await
            .map_err(|source| RepairError::Open {
                node: peer,
                protocol,
                source: Box::new(source),
            })?;
        Ok((peer, token, stream))
    }

    /// The items of `domain` on `node`: id → root.
    pub(super) async fn list(
        &self,
        domain: &str,
        node: &str,
    ) -> Result<BTreeMap<String, String>, RepairError> {
        let (peer, token, stream) = self.open(domain, node, LOAD_V1).await?;
        let failed = transfer(peer, LOAD_V1);
        let request = ConsumeDataInputV1 {
            query: Query {
                metadata_only: true,
                ..Query::default()
            },
            ..ConsumeDataInputV1::default()
        };
        let (mut items, _) = open_load(stream, &token, domain, request, self.limits)
            .await
            .map_err(&failed)?;
        let mut listed = BTreeMap::new();
        while let Some(item) = items.next().await.map_err(&failed)? {
            if listed.len() == MAX_LISTED {
                return Err(RepairError::TooMany { node: peer });
            }
            let metadata = item.metadata();
            listed.insert(
                metadata.id.clone(),
                metadata.hash.clone().unwrap_or_default(),
            );
        }
        Ok(listed)
    }

    /// Makes the copies and removals of `plan`; a copy of an item a client deleted
    /// meanwhile (`deleted`) is removed again.
    pub(super) async fn carry_out(
        &self,
        domain: &str,
        plan: &Plan,
        deleted: impl Fn(&str) -> bool,
    ) -> Done {
        let mut done = Done::default();
        let fail = |done: &mut Done, error: RepairError| {
            tracing::debug!(%domain, error = %domain_proto::ErrorChain(&error), "a repair step failed");
            done.error.get_or_insert(error);
        };
        let mut copies: BTreeMap<(&str, &str), BTreeMap<&str, &str>> = BTreeMap::new();
        for copy in &plan.copies {
            copies
                .entry((&copy.from, &copy.to))
                .or_default()
                .insert(&copy.id, &copy.root);
        }
        let mut removals: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for removal in &plan.removals {
            removals
                .entry(&removal.node)
                .or_default()
                .push(removal.id.clone());
        }
        for ((from, to), items) in copies {
            let items: Vec<(&str, &str)> = items.into_iter().collect();
            for batch in items.chunks(IDS_PER_STREAM) {
                let batch: HashMap<&str, &str> = batch.iter().copied().collect();
                match self.copy(domain, from, to, &batch).await {
                    Ok(copied) => {
                        done.copied += copied.len();
                        let undone: Vec<String> =
                            copied.into_iter().filter(|id| deleted(id)).collect();
                        if !undone.is_empty() {
                            removals.entry(to).or_default().extend(undone);
                        }
                    }
                    Err(error) => {
                        done.refused.insert(to.to_owned());
                        fail(&mut done, error);
                    }
                }
            }
        }
        for (node, ids) in removals {
            for batch in ids.chunks(IDS_PER_STREAM) {
                match self.remove(domain, node, batch).await {
                    Ok(removed) => done.removed += removed,
                    Err(error) => fail(&mut done, error),
                }
            }
        }
        done
    }

    /// Streams `items` (id → the root the plan expects) from `from` to `to`, as copies
    /// under their ids. An item `from` no longer has, or has in another version, is left
    /// for the next audit. Returns the ids copied.
    async fn copy(
        &self,
        domain: &str,
        from: &str,
        to: &str,
        items: &HashMap<&str, &str>,
    ) -> Result<Vec<String>, RepairError> {
        let (source, load_token, load_stream) = self.open(domain, from, LOAD_V1).await?;
        let request = ConsumeDataInputV1 {
            query: Query {
                ids: items.keys().map(|id| (*id).to_owned()).collect(),
                metadata_only: false,
                ..Query::default()
            },
            ..ConsumeDataInputV1::default()
        };
        let (mut loaded, _) = open_load(load_stream, &load_token, domain, request, self.limits)
            .await
            .map_err(transfer(source, LOAD_V1))?;
        let (target, store_token, store_stream) = self.open(domain, to, STORE_V1).await?;
        let stored = transfer(target, STORE_V1);
        let mut sender = StoreSender::open(store_stream, &store_token, domain, self.limits)
            .await
            .map_err(&stored)?;
        let mut copied = Vec::new();
        while let Some(item) = loaded.next().await.map_err(transfer(source, LOAD_V1))? {
            let metadata = item.metadata().clone();
            let expected = items.get(metadata.id.as_str()).copied();
            if expected.is_none() || metadata.hash.as_deref() != expected {
                // Changed since it was listed (or never asked for): the next audit sees it.
                continue;
            }
            let upsert = UpsertMetadata {
                name: metadata.name,
                data_type: metadata.data_type,
                size: metadata.size,
                is_new: false,
                id: metadata.id.clone(),
                properties: metadata.properties,
                replica: Some(true),
                resume_key: None,
            };
            let receipt = sender.send(upsert, item).await.map_err(&stored)?;
            if receipt.hash != metadata.hash {
                return Err(RepairError::Differs {
                    node: target,
                    id: metadata.id,
                    expected: expected.unwrap_or_default().to_owned(),
                    got: receipt.hash,
                });
            }
            copied.push(metadata.id);
        }
        sender.finish().await.map_err(&stored)?;
        Ok(copied)
    }

    /// Removes `ids` of `domain` from `node`; how many it held.
    pub(super) async fn remove(
        &self,
        domain: &str,
        node: &str,
        ids: &[String],
    ) -> Result<usize, RepairError> {
        let (peer, token, stream) = self.open(domain, node, DELETE_V1).await?;
        let deleted = delete_items(stream, &token, domain, ids, self.limits)
            .await
            .map_err(transfer(peer, DELETE_V1))?;
        Ok(deleted.deleted.len())
    }
}

/// The error of a stream with `node` on `protocol`.
fn transfer(node: PeerId, protocol: &'static str) -> impl Fn(CapabilityError) -> RepairError {
    move |source| RepairError::Transfer {
        node,
        protocol,
        source: Box::new(source),
    }
}
