//! Removing items: [`Client::delete`] and [`Client::delete_direct`], over `/delete/v1`.
//!
//! The manager keeps no index of which node holds an item, and a domain may keep copies
//! on several nodes, so a delete asks every node that stored data, not the first that
//! had the item: the node the manager assigns to the job's task, then, with tasks pinned
//! to each, the other receivers of finished `/store/v1` tasks.

use std::collections::BTreeSet;

use domain_capabilities::{Deleted, delete_items};
use domain_cluster::PeerId;
use domain_datastore::DomainId;
use domain_proto::protocols::DELETE_V1;

use super::{Assignment, Client, ClientError, Direct};

impl Client {
    /// Removes the items `ids` of `domain` from every node that holds them, and returns
    /// which ids were removed (from at least one node) and which no node held.
    ///
    /// # Errors
    /// As [`upload`](Self::upload), for the first node; a node asked after it that fails
    /// is passed over (its copies stay).
    pub async fn delete(&self, domain: &DomainId, ids: &[String]) -> Result<Deleted, ClientError> {
        if ids.is_empty() {
            return Ok(Deleted::default());
        }
        let mut deleted = BTreeSet::new();
        let first = self.delete_job(domain, None, ids, &mut deleted).await?;
        let mut nodes = self.other_nodes(first).await?;
        while let Some(node) = nodes.next().await {
            if let Err(error) = self.delete_job(domain, Some(node), ids, &mut deleted).await {
                tracing::warn!(%node, %error, "items not removed from this node");
            }
        }
        Ok(answer(ids, &deleted))
    }

    /// Removes the items `ids` of `domain` from one node, with a token obtained elsewhere.
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::Transfer`].
    pub async fn delete_direct(
        &self,
        direct: &Direct,
        domain: &DomainId,
        ids: &[String],
    ) -> Result<Deleted, ClientError> {
        let assignment = self.dial(direct).await?;
        let removed = self.delete_on(&assignment, domain, ids).await?;
        let deleted = removed.deleted.into_iter().collect();
        Ok(answer(ids, &deleted))
    }

    /// Runs one `/delete/v1` job on `receiver` or the node the manager picks, adding
    /// what it removed to `deleted`; answers with the node that served it.
    async fn delete_job(
        &self,
        domain: &DomainId,
        receiver: Option<PeerId>,
        ids: &[String],
        deleted: &mut BTreeSet<String>,
    ) -> Result<PeerId, ClientError> {
        let mut run = self.submit(domain, "delete", DELETE_V1, receiver).await?;
        loop {
            let assignment = run.next_assignment().await?;
            match self.delete_on(&assignment, domain, ids).await {
                Ok(removed) => {
                    deleted.extend(removed.deleted);
                    return Ok(assignment.node);
                }
                Err(error) => run.failed(error).await?,
            }
        }
    }

    async fn delete_on(
        &self,
        assignment: &Assignment,
        domain: &DomainId,
        ids: &[String],
    ) -> Result<Deleted, ClientError> {
        let node = assignment.node;
        let stream = self.open(node, DELETE_V1).await?;
        delete_items(
            stream,
            &assignment.token,
            domain.as_str(),
            ids,
            self.config.limits,
        )
        .await
        .map_err(|source| ClientError::Transfer {
            protocol: DELETE_V1,
            node,
            source: Box::new(source),
        })
    }
}

/// `ids` split into those in `deleted` and the others, each once, in the order asked.
fn answer(ids: &[String], deleted: &BTreeSet<String>) -> Deleted {
    let mut answer = Deleted::default();
    let mut named = BTreeSet::new();
    for id in ids.iter().filter(|id| named.insert(*id)) {
        match deleted.contains(id) {
            true => answer.deleted.push(id.clone()),
            false => answer.missing.push(id.clone()),
        }
    }
    answer
}
