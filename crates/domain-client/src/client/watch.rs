//! Live subscriptions: [`Client::subscribe`] and the [`Subscription`] it returns.
//!
//! An upload may land on any node, so a subscription follows every node that holds
//! data of the cluster, not one: it opens a keep-alive `/load/v1` stream on the node
//! the manager picks, and one more on each node that the manager's `/monitor/v1` stream
//! shows storing data later. Each stream first sends the items that already match, then
//! each new one; an id seen before with the same root is not shown again.

use std::collections::{BTreeSet, HashMap};

use domain_capabilities::open_load;
use domain_cluster::PeerId;
use domain_datastore::DomainId;
use domain_proto::domain_data::{Metadata, Query};
use domain_proto::protocols::LOAD_V1;
use domain_proto::task::ConsumeDataInputV1;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::{Client, ClientError, MAX_LISTED_ITEMS, storing_nodes};

/// Items waiting for [`Subscription::next`] before the node streams wait for it.
const QUEUED_ITEMS: usize = 256;

/// A subscription's task timeout, which also bounds its token's life (at most an hour):
/// the streams themselves last until [`Subscription::unsubscribe`].
const SUBSCRIPTION_TASK_TIMEOUT: &str = "1h";

/// The metadata of the items of a domain that match a query: those stored already, then
/// each new one as it is stored, on any node. Made by [`Client::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    items: mpsc::Receiver<Result<Metadata, ClientError>>,
    /// The root last shown for each id, so that an item sent by two nodes (or again)
    /// shows once, and a replaced item shows again.
    shown: HashMap<String, Option<String>>,
    stop: watch::Sender<bool>,
    driver: JoinHandle<()>,
}

impl Subscription {
    /// The next matching item; waits as long as it takes.
    ///
    /// An `Err` reports one node's stream failing or ending
    /// ([`ClientError::SubscriptionEnded`]); the others go on, and nodes that store data
    /// later are still followed. `None` once the subscription's driver has stopped.
    pub async fn next(&mut self) -> Option<Result<Metadata, ClientError>> {
        loop {
            let item = match self.items.recv().await? {
                Ok(item) => item,
                Err(error) => return Some(Err(error)),
            };
            if self.shown.get(&item.id) == Some(&item.hash) {
                continue;
            }
            if self.shown.len() == MAX_LISTED_ITEMS {
                // Forgetting may show an item twice; remembering forever grows without end.
                self.shown.clear();
            }
            self.shown.insert(item.id.clone(), item.hash.clone());
            return Some(Ok(item));
        }
    }

    /// Ends the subscription: each node is sent `UnsubscribeDataQueryV1`, and this returns
    /// once every stream has closed.
    pub async fn unsubscribe(self) {
        let _ = self.stop.send(true);
        // The node streams end when told to or when their node goes; nothing to report.
        let _ = self.driver.await;
    }
}

impl Client {
    /// Subscribes to the metadata of the items of `domain` that match `query` (its
    /// `metadata_only` is forced on): first those stored already, then each one stored
    /// later, on any node, until [`Subscription::unsubscribe`].
    ///
    /// Download an item's content with [`download_to`](Self::download_to) or
    /// [`download`](Self::download).
    ///
    /// # Errors
    /// As [`upload`](Self::upload), for the first node's stream.
    pub async fn subscribe(
        &self,
        domain: &DomainId,
        query: &Query,
    ) -> Result<Subscription, ClientError> {
        let mut client = self.clone();
        client.config.task_timeout = SUBSCRIPTION_TASK_TIMEOUT.to_owned();
        let query = Query {
            metadata_only: true,
            ..query.clone()
        };
        let (items, receiver) = mpsc::channel(QUEUED_ITEMS);
        let (stop, stopped) = watch::channel(false);
        let mut streams = JoinSet::new();
        let first = client
            .follow_node(domain, &query, None, &items, &stopped, &mut streams)
            .await?;
        let domain = domain.clone();
        let driver = tokio::spawn(async move {
            client
                .follow_new_nodes(&domain, &query, first, &items, stopped, &mut streams)
                .await;
            drop(items);
            while streams.join_next().await.is_some() {}
        });
        Ok(Subscription {
            items: receiver,
            shown: HashMap::new(),
            stop,
            driver,
        })
    }

    /// Opens one more node stream each time the manager's monitor shows a node storing
    /// data that is not followed yet, until told to stop.
    async fn follow_new_nodes(
        &self,
        domain: &DomainId,
        query: &Query,
        first: PeerId,
        items: &mpsc::Sender<Result<Metadata, ClientError>>,
        mut stopped: watch::Receiver<bool>,
        streams: &mut JoinSet<()>,
    ) {
        let mut jobs = match self.jobs().await {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(%error, "cannot follow the manager's jobs; watching one node only");
                let _ = stopped.wait_for(|stop| *stop).await;
                return;
            }
        };
        let mut followed = BTreeSet::from([first]);
        loop {
            let job = tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return,
                job = jobs.next() => job,
            };
            let job = match job {
                Ok(Some(job)) => job,
                Ok(None) | Err(_) => {
                    tracing::warn!("the manager's job stream ended; no new nodes will be followed");
                    let _ = stopped.wait_for(|stop| *stop).await;
                    return;
                }
            };
            for node in storing_nodes(&job) {
                if !followed.insert(node) {
                    continue;
                }
                let followed = self
                    .follow_node(domain, query, Some(node), items, &stopped, streams)
                    .await;
                if let Err(error) = followed {
                    tracing::debug!(%node, %error, "node not followed");
                }
            }
        }
    }

    /// Opens a keep-alive `/load/v1` stream on `receiver` (or the manager's pick) and
    /// spawns its reader into `streams`; answers with the node.
    async fn follow_node(
        &self,
        domain: &DomainId,
        query: &Query,
        receiver: Option<PeerId>,
        items: &mpsc::Sender<Result<Metadata, ClientError>>,
        stopped: &watch::Receiver<bool>,
        streams: &mut JoinSet<()>,
    ) -> Result<PeerId, ClientError> {
        let mut run = self.submit(domain, "watch", LOAD_V1, receiver).await?;
        let (node, mut consumer, unsubscriber) = loop {
            let assignment = run.next_assignment().await?;
            let node = assignment.node;
            let opened = async {
                let stream = self.open(node, LOAD_V1).await?;
                let request = ConsumeDataInputV1 {
                    query: query.clone(),
                    keep_alive: true,
                    ..Default::default()
                };
                open_load(
                    stream,
                    &assignment.token,
                    domain.as_str(),
                    request,
                    self.config.limits,
                )
                .await
                .map_err(|source| ClientError::Transfer {
                    protocol: LOAD_V1,
                    node,
                    source: Box::new(source),
                })
            };
            match opened.await {
                Ok((consumer, unsubscriber)) => break (node, consumer, unsubscriber),
                Err(error) => run.failed(error).await?,
            }
        };
        let items = items.clone();
        let mut stopped = stopped.clone();
        streams.spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stopped.wait_for(|stop| *stop) => break,
                    next = consumer.next() => next,
                };
                let item = match next {
                    Ok(Some(item)) => Ok(item.metadata().clone()),
                    Ok(None) => Err(ClientError::SubscriptionEnded { node }),
                    Err(source) => Err(ClientError::Transfer {
                        protocol: LOAD_V1,
                        node,
                        source: Box::new(source),
                    }),
                };
                let failed = item.is_err();
                if items.send(item).await.is_err() || failed {
                    return;
                }
            }
            if let Err(error) = unsubscriber.unsubscribe().await {
                tracing::debug!(%node, %error, "unsubscribing failed");
            }
        });
        Ok(node)
    }
}
