//! Live subscriptions: [`Client::subscribe`] and the [`Subscription`] it returns.
//!
//! An upload may land on any node, so a subscription follows every node that holds data
//! of the domain, not one: it follows the manager's holder index (`/holders/v1`) and
//! opens a keep-alive `/load/v1` stream on each holder that is up, then on each holder
//! that appears (or comes back) later. Each stream first sends the items that already
//! match, then each new one; an id seen before with the same root is not shown again.
//! [`Client::subscribe_new`] passes over the items already there, up to each node's
//! caught-up marker, before it returns.

use std::collections::{BTreeSet, HashMap};

use domain_capabilities::{CapabilityError, open_load};
use domain_cluster::{HolderStream, PeerId};
use domain_datastore::DomainId;
use domain_proto::discovery::Holder;
use domain_proto::domain_data::{Metadata, Query};
use domain_proto::protocols::LOAD_V1;
use domain_proto::task::ConsumeDataInputV1;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::{Client, ClientError, MAX_LISTED_ITEMS, not_answered};

/// Items waiting for [`Subscription::next`] before the node streams wait for it.
const QUEUED_ITEMS: usize = 256;

/// A subscription's task timeout, which also bounds its token's life (at most an hour):
/// the streams themselves last until [`Subscription::unsubscribe`].
const SUBSCRIPTION_TASK_TIMEOUT: &str = "1h";

/// What the node streams of one subscription share.
#[derive(Clone, Copy)]
struct Follow<'a> {
    domain: &'a DomainId,
    query: &'a Query,
    items: &'a mpsc::Sender<Result<Metadata, ClientError>>,
    stopped: &'a watch::Receiver<bool>,
}

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

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// With the items that match already.
    Existing,
    /// With the first item stored after the subscription is established.
    New,
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
        self.start_subscription(domain, query, Start::Existing)
            .await
    }

    /// As [`subscribe`](Self::subscribe), without the items stored already: once this
    /// returns, every item stored later that matches `query` is delivered.
    ///
    /// Before it returns, every holder of the domain that is up sent the items it holds
    /// and then its caught-up marker (an extension of `/load/v1`), and those items were
    /// passed over. A holder that appears after that sends all it holds that matches, as
    /// it is new to the subscription.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe), and [`ClientError::Transfer`] when a node sends
    /// no marker within [`ClientConfig::request_timeout`](super::ClientConfig::request_timeout)
    /// (a receiver that does not know the extension).
    pub async fn subscribe_new(
        &self,
        domain: &DomainId,
        query: &Query,
    ) -> Result<Subscription, ClientError> {
        self.start_subscription(domain, query, Start::New).await
    }

    async fn start_subscription(
        &self,
        domain: &DomainId,
        query: &Query,
        start: Start,
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
        let follow = Follow {
            domain,
            query: &query,
            items: &items,
            stopped: &stopped,
        };
        let manager = client.manager.ok_or(ClientError::NoManager)?;
        let (holders, changes) = client
            .cluster
            .holders(manager, domain.as_str(), true)
            .await
            .map_err(|source| ClientError::Manager {
                job: "watch".to_owned(),
                source: Box::new(source),
            })?;
        let mut followed = BTreeSet::new();
        client
            .follow_holders(&follow, &holders, start, &mut followed, &mut streams)
            .await;
        let domain = domain.clone();
        let driver = tokio::spawn(async move {
            let follow = Follow {
                domain: &domain,
                query: &query,
                items: &items,
                stopped: &stopped,
            };
            client
                .follow_new_holders(&follow, changes, followed, &mut streams)
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

    /// Follows each registered holder of `holders` not followed yet; a holder that is
    /// down, or cannot be followed, is reported and left to a later change.
    async fn follow_holders(
        &self,
        follow: &Follow<'_>,
        holders: &[Holder],
        start: Start,
        followed: &mut BTreeSet<PeerId>,
        streams: &mut JoinSet<()>,
    ) {
        for holder in holders {
            let Ok(node) = holder.node_id.parse::<PeerId>() else {
                continue;
            };
            if !holder.registered {
                // Followed again once it is back.
                if followed.remove(&node) || start == Start::New {
                    tracing::warn!(
                        "node {node} did not answer: it is not registered with the manager"
                    );
                }
                continue;
            }
            if followed.contains(&node) {
                continue;
            }
            match self.follow_node(follow, node, start, streams).await {
                Ok(()) => {
                    followed.insert(node);
                }
                Err(error) => not_answered(node, &error),
            }
        }
    }

    /// Follows each holder that appears or comes back, from what it holds, until told to
    /// stop.
    async fn follow_new_holders(
        &self,
        follow: &Follow<'_>,
        mut changes: HolderStream,
        mut followed: BTreeSet<PeerId>,
        streams: &mut JoinSet<()>,
    ) {
        let mut stopped = follow.stopped.clone();
        loop {
            let holders = tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return,
                holders = changes.next() => holders,
            };
            match holders {
                Ok(Some(holders)) => {
                    self.follow_holders(follow, &holders, Start::Existing, &mut followed, streams)
                        .await;
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        "the manager's holder stream ended; no new nodes will be followed"
                    );
                    let _ = stopped.wait_for(|stop| *stop).await;
                    return;
                }
            }
        }
    }

    /// Opens a keep-alive `/load/v1` stream on `node` and spawns its reader into
    /// `streams`. With [`Start::New`] the items the node holds already are passed over
    /// first.
    async fn follow_node(
        &self,
        follow: &Follow<'_>,
        node: PeerId,
        start: Start,
        streams: &mut JoinSet<()>,
    ) -> Result<(), ClientError> {
        let Follow {
            domain,
            query,
            items,
            stopped,
        } = *follow;
        let mut run = self.submit(domain, "watch", LOAD_V1, &[Some(node)]).await?;
        let (node, mut consumer, unsubscriber) = loop {
            let assignment = run.next_assignment().await?;
            let node = assignment.node;
            let transfer = |source| ClientError::Transfer {
                protocol: LOAD_V1,
                node,
                source: Box::new(source),
            };
            let opened = async {
                let stream = self.open(node, LOAD_V1).await?;
                let request = ConsumeDataInputV1 {
                    query: query.clone(),
                    keep_alive: true,
                    mark_caught_up: (start == Start::New).then_some(true),
                    ..Default::default()
                };
                let (mut consumer, unsubscriber) = open_load(
                    stream,
                    &assignment.token,
                    domain.as_str(),
                    request,
                    self.config.limits,
                )
                .await
                .map_err(transfer)?;
                if start == Start::New {
                    tokio::time::timeout(self.config.request_timeout, consumer.skip_to_caught_up())
                        .await
                        .map_err(|_| {
                            transfer(CapabilityError::Unexpected {
                                during: "waiting for the subscription to catch up",
                                what: "no caught-up marker in time",
                            })
                        })?
                        .map_err(transfer)?;
                }
                Ok::<_, ClientError>((consumer, unsubscriber))
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
        Ok(())
    }
}
