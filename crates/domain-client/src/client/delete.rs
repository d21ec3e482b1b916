//! Removing items: [`Client::delete`] and [`Client::delete_direct`], over `/delete/v1`.
//!
//! A domain may keep copies on several nodes, so a delete asks every holder of the domain
//! that the manager names, not the first that had the item: one job, a task pinned to
//! each (see [`Client::gather`](super::Client)).

use std::collections::BTreeSet;

use domain_capabilities::{Deleted, delete_items};
use domain_proto::DELETE_INPUT;
use domain_proto::DomainId;
use domain_proto::protocols::DELETE_V1;
use domain_proto::task::{Any, DeleteDataInputV1};

use domain_cluster::PeerId;

use super::holders::not_answered;
use super::{Assignment, Client, ClientError, Direct};

/// How many times a delete asks the manager again for holders registered since it began
/// (one round is the usual case; each further one needs a holder to join meanwhile).
const MAX_DELETE_ROUNDS: usize = 3;

impl Client {
    /// Removes the items `ids` of `domain` from every node that holds them, and returns
    /// which ids were removed (from at least one node) and which no node held.
    ///
    /// A holder that is not registered now is passed over: the manager removes what it
    /// deletes before that node is registered again. A registered holder that does not
    /// answer makes the delete incomplete, since it still lists the items; the manager,
    /// which remembers the delete, removes them there as soon as it reaches it.
    ///
    /// # Errors
    /// [`ClientError::NoManager`], [`ClientError::Manager`], and
    /// [`ClientError::DeleteIncomplete`] with what the others answered.
    pub async fn delete(&self, domain: &DomainId, ids: &[String]) -> Result<Deleted, ClientError> {
        let mut deleted = BTreeSet::new();
        let mut unanswered = Vec::new();
        if ids.is_empty() {
            return Ok(Deleted::default());
        }
        // The ids in the job too: the manager remembers them, so that a holder away now
        // loses its copies when it is back instead of spreading them again.
        let data = Any::pack(DELETE_INPUT, &DeleteDataInputV1 { ids: ids.to_vec() });
        let (mut run, _) = self
            .fan_out(domain, "delete", DELETE_V1, Some(&data))
            .await?;
        let mut asked = BTreeSet::new();
        for _ in 0..MAX_DELETE_ROUNDS {
            let Some(mut current) = run.take() else {
                break;
            };
            for index in 0..current.targets.len() {
                let node = current.select(index);
                asked.insert(node);
                let removed = async {
                    loop {
                        let assignment = current.next_assignment().await?;
                        match self.delete_on(&assignment, domain, ids).await {
                            Ok(removed) => return Ok::<_, ClientError>(removed),
                            Err(error) => current.failed(error).await?,
                        }
                    }
                };
                match removed.await {
                    Ok(removed) => deleted.extend(removed.deleted),
                    Err(error) => {
                        not_answered(node, &error);
                        unanswered.push(node);
                    }
                }
            }
            drop(current);
            // A holder that was away when the holders were asked may have registered since,
            // before the manager remembered this delete: it is asked too.
            let late = self.registered_holders(domain, "delete").await?;
            let late: Vec<Option<PeerId>> = late
                .into_iter()
                .filter(|node| !asked.contains(node))
                .map(Some)
                .collect();
            if !late.is_empty() {
                run = Some(
                    self.submit(domain, "delete", DELETE_V1, &late, Some(&data))
                        .await?,
                );
            }
        }
        let answered = answer(ids, &deleted);
        if unanswered.is_empty() {
            Ok(answered)
        } else {
            Err(ClientError::DeleteIncomplete {
                answered,
                unanswered,
            })
        }
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
