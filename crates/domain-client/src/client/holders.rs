//! Asking the holders of a domain: the manager names them, one job pins a task to each
//! that is up, and a query runs on one after the other (a listing on all at once).

use std::collections::BTreeSet;
use std::path::Path;

use domain_cluster::PeerId;
use domain_proto::DomainId;
use domain_proto::discovery::Holder;
use domain_proto::domain_data::{Metadata, Query};
use domain_proto::protocols::LOAD_V1;
use domain_proto::task::{Any, Task};
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use super::attempts::TaskRun;
use super::{Client, ClientError, Direct, Downloads, MAX_LISTED_ITEMS};

impl Client {
    /// The metadata of item `id` of `domain` and a node that holds it, or `None` when no
    /// node does.
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub async fn locate(
        &self,
        domain: &DomainId,
        id: &str,
    ) -> Result<Option<(Metadata, PeerId)>, ClientError> {
        let query = Query {
            ids: vec![id.to_owned()],
            ..Query::default()
        };
        let mut holder = None;
        let mut gather = Gather::new(&query, Sink::Holder(&mut holder));
        self.gather(domain, "locate", &mut gather).await?;
        drop(gather);
        Ok(holder)
    }

    /// Lists the metadata of the items of `domain` that match `query` (its
    /// `metadata_only` is forced on), on every node that holds one, each id once.
    ///
    /// # Errors
    /// As [`upload`](Self::upload), and [`ClientError::TooManyItems`].
    pub async fn list(
        &self,
        domain: &DomainId,
        query: &Query,
    ) -> Result<Vec<Metadata>, ClientError> {
        let mut listed = Vec::new();
        let mut gather = Gather::new(query, Sink::Listing(&mut listed));
        self.gather(domain, "list", &mut gather).await?;
        drop(gather);
        Ok(with_properties(listed, query))
    }

    /// Lists straight from a node with a token obtained elsewhere; as
    /// [`list`](Self::list) on that node alone.
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::Transfer`], [`ClientError::TooManyItems`].
    pub async fn list_direct(
        &self,
        direct: &Direct,
        domain: &DomainId,
        query: &Query,
    ) -> Result<Vec<Metadata>, ClientError> {
        let assignment = self.dial(direct).await?;
        let mut listed = Vec::new();
        let mut gather = Gather::new(query, Sink::Listing(&mut listed));
        self.load_from(assignment, domain, &mut gather).await?;
        drop(gather);
        Ok(with_properties(listed, query))
    }
}

/// The `listed` items that have every property `query` asks for: a node from before
/// property queries ignores them and answers more.
fn with_properties(mut listed: Vec<Metadata>, query: &Query) -> Vec<Metadata> {
    listed.retain(|item| {
        query
            .properties
            .iter()
            .all(|(key, value)| item.properties.get(key) == Some(value))
    });
    listed
}

impl Client {
    /// Runs `gather`'s query on every holder of `domain` that is up (see
    /// [`fan_out`](Self::fan_out)); a holder that does not answer is reported and passed
    /// over. A listing asks every holder anyway, so its first attempts go side by side;
    /// a download asks one holder after the other, and stops fetching once it has every
    /// id.
    pub(super) async fn gather(
        &self,
        domain: &DomainId,
        job_name: &str,
        gather: &mut Gather<'_>,
    ) -> Result<(), ClientError> {
        let (run, unanswered) = self.fan_out(domain, job_name, LOAD_V1, None).await?;
        gather.unanswered.extend(unanswered);
        let Some(mut run) = run else {
            return Ok(());
        };
        let mut failed_first = Vec::new();
        if matches!(gather.sink, Sink::Listing(_)) && run.targets.len() > 1 {
            failed_first = self.list_side_by_side(&mut run, domain, gather).await?;
        } else {
            failed_first.extend((0..run.targets.len()).map(|index| (index, None)));
        }
        for (index, failure) in failed_first {
            let node = run.select(index);
            let loaded = async {
                if let Some((current, error)) = failure {
                    // The first attempt went side by side; the retries go here.
                    run.resume_after(current, error).await?;
                }
                loop {
                    let assignment = run.next_assignment().await?;
                    match self.load_from(assignment, domain, gather).await {
                        Ok(()) => return Ok::<(), ClientError>(()),
                        Err(error) => run.failed(error).await?,
                    }
                }
            };
            match loaded.await {
                Ok(()) => {}
                Err(error) if error.ends_search() => return Err(error),
                Err(error) => {
                    not_answered(node, &error);
                    gather.unanswered.push(node);
                }
            }
        }
        Ok(())
    }

    /// The first attempt of every task of `run` at once, each holder's listing into
    /// `gather` (each id once); answers the tasks whose attempt failed, with the
    /// assignment tried and the error, for the caller to go on with.
    pub(super) async fn list_side_by_side(
        &self,
        run: &mut TaskRun<'_>,
        domain: &DomainId,
        gather: &mut Gather<'_>,
    ) -> Result<FailedFirst, ClientError> {
        let mut firsts = Vec::with_capacity(run.targets.len());
        for index in 0..run.targets.len() {
            let node = run.select(index);
            let assignment = run.next_assignment().await;
            firsts.push((index, node, assignment, run.current.take()));
        }
        let query = gather.query.clone();
        let listings = firsts
            .into_iter()
            .map(|(index, node, assignment, current)| {
                let query = &query;
                async move {
                    let mut listed = Vec::new();
                    let result = match assignment {
                        Ok(assignment) => {
                            let mut one = Gather::new(query, Sink::Listing(&mut listed));
                            self.load_from(assignment, domain, &mut one).await
                        }
                        Err(error) => Err(error),
                    };
                    (index, node, current, result.map(|()| listed))
                }
            });
        let mut failed = Vec::new();
        for (index, node, current, result) in futures::future::join_all(listings).await {
            match result {
                Ok(listed) => gather.add_listed(node, listed)?,
                Err(error) => failed.push((index, Some((current, error)))),
            }
        }
        Ok(failed)
    }

    /// Every holder of `domain` the manager's index names, registered or not.
    async fn holders(&self, domain: &DomainId, job_name: &str) -> Result<Vec<Holder>, ClientError> {
        let (holders, _) = self
            .managers()?
            .call(|manager| self.cluster.holders(manager, domain.as_str(), false))
            .await
            .map_err(|source| ClientError::Manager {
                job: job_name.to_owned(),
                source: Box::new(source),
            })?;
        Ok(holders)
    }

    /// The holders of `domain` registered now.
    ///
    /// # Errors
    /// [`ClientError::NoManager`], [`ClientError::Manager`].
    pub(super) async fn registered_holders(
        &self,
        domain: &DomainId,
        job_name: &str,
    ) -> Result<Vec<PeerId>, ClientError> {
        Ok(self
            .holders(domain, job_name)
            .await?
            .into_iter()
            .filter(|holder| holder.registered)
            .filter_map(|holder| holder.node_id.parse().ok())
            .collect())
    }

    /// One job of one `endpoint` task pinned to each registered holder of `domain`, as
    /// the manager's holder index names them, the registered with most items first; the
    /// holders that are not registered come back apart, each reported as not answering.
    /// No job (`None`) when no holder is up.
    ///
    /// # Errors
    /// [`ClientError::NoManager`], [`ClientError::Manager`].
    pub(super) async fn fan_out(
        &self,
        domain: &DomainId,
        job_name: &str,
        endpoint: &str,
        data: Option<&Any>,
    ) -> Result<(Option<TaskRun<'_>>, Vec<PeerId>), ClientError> {
        let holders = self.holders(domain, job_name).await?;
        let mut live = Vec::new();
        let mut down = Vec::new();
        for holder in holders {
            let Ok(node) = holder.node_id.parse::<PeerId>() else {
                tracing::debug!(node = %holder.node_id, "a holder that is not a peer id");
                continue;
            };
            if holder.registered {
                live.push(Some(node));
            } else {
                tracing::warn!("node {node} did not answer: it is not registered with the manager");
                down.push(node);
            }
        }
        if live.is_empty() {
            return Ok((None, down));
        }
        let run = self.submit(domain, job_name, endpoint, &live, data).await?;
        Ok((Some(run), down))
    }
}

/// Where the items of a load stream go.
pub(super) enum Sink<'a> {
    /// Metadata only.
    Listing(&'a mut Vec<Metadata>),
    /// The metadata of the item asked for and the node that holds it.
    Holder(&'a mut Option<(Metadata, PeerId)>),
    /// Each item's content into `dir/<id>`, recorded in `downloads`.
    Folder {
        dir: &'a Path,
        downloads: &'a mut Downloads,
    },
    /// One item's content into a writer; its metadata to `started` before the content.
    Writer {
        writer: &'a mut (dyn AsyncWrite + Unpin + Send),
        found: &'a mut Option<Metadata>,
        started: Option<oneshot::Sender<Metadata>>,
    },
}

/// A query run on one node after another: what it asks for, which ids have arrived, and
/// where they go.
pub(super) struct Gather<'a> {
    pub(super) query: Query,
    pub(super) seen: BTreeSet<String>,
    /// Holders that did not answer.
    pub(super) unanswered: Vec<PeerId>,
    /// Items whose partial files failed the root check: never resumed again.
    pub(super) discarded_partials: BTreeSet<String>,
    pub(super) sink: Sink<'a>,
}

impl<'a> Gather<'a> {
    pub(super) fn new(query: &Query, sink: Sink<'a>) -> Self {
        let metadata_only = matches!(sink, Sink::Listing(_) | Sink::Holder(_));
        Self {
            query: Query {
                metadata_only,
                ..query.clone()
            },
            seen: BTreeSet::new(),
            unanswered: Vec::new(),
            discarded_partials: BTreeSet::new(),
            sink,
        }
    }

    /// Adds one holder's listing to this one's, each id once.
    pub(super) fn add_listed(
        &mut self,
        node: PeerId,
        listed: Vec<Metadata>,
    ) -> Result<(), ClientError> {
        let Sink::Listing(all) = &mut self.sink else {
            return Ok(());
        };
        for item in listed {
            if self.seen.insert(item.id.clone()) {
                if all.len() == MAX_LISTED_ITEMS {
                    return Err(ClientError::TooManyItems { node });
                }
                all.push(item);
            }
        }
        Ok(())
    }

    /// The ids asked for that have not arrived.
    pub(super) fn missing(&self) -> Vec<String> {
        let wanted: BTreeSet<&String> = self.query.ids.iter().collect();
        wanted
            .into_iter()
            .filter(|id| !self.seen.contains(*id))
            .cloned()
            .collect()
    }

    /// The query to send next: for a query by ids, only the ids still missing, so that a
    /// retry fetches only the rest.
    pub(super) fn request(&self) -> Query {
        if self.query.ids.is_empty() {
            return self.query.clone();
        }
        let missing = self.missing();
        if missing.is_empty() {
            // The task still runs, as a cheap metadata-only query, so that it ends DONE
            // rather than at its deadline.
            return Query {
                metadata_only: true,
                ..self.query.clone()
            };
        }
        Query {
            ids: missing,
            ..self.query.clone()
        }
    }
}

/// Tasks of a fan-out whose first attempt failed: the index, and the assignment tried
/// with the error (none when it was not tried).
pub(super) type FailedFirst = Vec<(usize, Option<(Option<Task>, ClientError)>)>;

/// Logs that `node`, a holder, did not answer: one line, the others still do.
pub(super) fn not_answered(node: PeerId, error: &ClientError) {
    tracing::warn!(
        "node {node} did not answer: {}",
        domain_proto::ErrorChain(error)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_query_by_ids_asks_again_only_for_what_is_missing() {
        let mut listed = Vec::new();
        let query = Query {
            ids: ["a", "b", "c"].map(String::from).to_vec(),
            ..Query::default()
        };
        let mut gather = Gather::new(&query, Sink::Listing(&mut listed));
        assert!(
            gather.request().metadata_only,
            "a listing never asks for content"
        );
        gather.seen.insert("b".into());
        assert_eq!(gather.missing(), ["a", "c"]);
        assert_eq!(gather.request().ids, ["a", "c"]);
        gather.seen.extend(["a".into(), "c".into()]);
        assert!(gather.missing().is_empty());
        assert_eq!(
            gather.request().ids,
            ["a", "b", "c"],
            "ends DONE, as a cheap query"
        );
    }

    #[test]
    pub(super) fn a_query_by_name_asks_every_holder_the_same() {
        let mut listed = Vec::new();
        let query = Query {
            names: vec!["scan".into()],
            ..Query::default()
        };
        let mut gather = Gather::new(&query, Sink::Listing(&mut listed));
        gather.seen.insert("a".into());
        assert!(gather.missing().is_empty());
        assert_eq!(gather.request(), gather.query);
    }
}
