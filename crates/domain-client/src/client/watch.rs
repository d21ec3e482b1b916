//! Live subscriptions: [`Client::subscribe`] and the [`Subscription`] it returns.
//!
//! An upload may land on any node, so a subscription follows every node that holds
//! data of the cluster, not one: it opens a keep-alive `/load/v1` stream on the node
//! the manager picks, and one more on each node that the manager's `/monitor/v1` stream
//! shows storing data later. Each stream first sends the items that already match, then
//! each new one; an id seen before with the same root is not shown again.
//! [`Client::subscribe_new`] passes over the items already there, up to each node's
//! caught-up marker, before it returns.

use std::collections::{BTreeSet, HashMap};

use domain_capabilities::{CapabilityError, open_load};
use domain_cluster::{JobStream, PeerId};
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
    /// Before it returns, the node the manager picks and every node the manager's
    /// monitor shows storing data (until it stays quiet for
    /// [`ClientConfig::search_quiet`](super::ClientConfig::search_quiet)) each sent the
    /// items they hold and then their caught-up marker (an extension of `/load/v1`), and
    /// those items were passed over. A node first seen storing data after that sends all
    /// it holds that matches, as it is new to the subscription.
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
        let first = client
            .follow_node(&follow, None, start, &mut streams)
            .await?;
        let mut followed = BTreeSet::from([first]);
        let jobs = match client.jobs().await {
            Ok(jobs) => Some(jobs),
            Err(error) => {
                tracing::warn!(%error, "cannot follow the manager's jobs; watching one node only");
                None
            }
        };
        let jobs = match (jobs, start) {
            (Some(mut jobs), Start::New) => {
                // The nodes that hold data already: caught up before this returns.
                let ended = client
                    .follow_quiet_start(&follow, &mut jobs, &mut followed, &mut streams)
                    .await;
                (!ended).then_some(jobs)
            }
            (jobs, _) => jobs,
        };
        let domain = domain.clone();
        let driver = tokio::spawn(async move {
            if let Some(jobs) = jobs {
                let follow = Follow {
                    domain: &domain,
                    query: &query,
                    items: &items,
                    stopped: &stopped,
                };
                client
                    .follow_new_nodes(&follow, jobs, followed, &mut streams)
                    .await;
            } else {
                let _ = stopped.clone().wait_for(|stop| *stop).await;
            }
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

    /// Follows, each from its caught-up marker, the nodes of the jobs the monitor sends
    /// until it stays quiet for [`ClientConfig::search_quiet`](super::ClientConfig::search_quiet):
    /// the jobs there were when it opened. Answers whether the monitor's stream ended.
    async fn follow_quiet_start(
        &self,
        follow: &Follow<'_>,
        jobs: &mut JobStream,
        followed: &mut BTreeSet<PeerId>,
        streams: &mut JoinSet<()>,
    ) -> bool {
        loop {
            let Ok(job) = tokio::time::timeout(self.config.search_quiet, jobs.next()).await else {
                return false;
            };
            let Ok(Some(job)) = job else {
                tracing::warn!("the manager's job stream ended; no new nodes will be followed");
                return true;
            };
            for node in storing_nodes(&job) {
                if followed.insert(node) {
                    if let Err(error) = self
                        .follow_node(follow, Some(node), Start::New, streams)
                        .await
                    {
                        tracing::debug!(%node, %error, "node not followed");
                    }
                }
            }
        }
    }

    /// Opens one more node stream each time the manager's monitor shows a node storing
    /// data that is not followed yet, until told to stop.
    async fn follow_new_nodes(
        &self,
        follow: &Follow<'_>,
        mut jobs: JobStream,
        mut followed: BTreeSet<PeerId>,
        streams: &mut JoinSet<()>,
    ) {
        let mut stopped = follow.stopped.clone();
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
                    .follow_node(follow, Some(node), Start::Existing, streams)
                    .await;
                if let Err(error) = followed {
                    tracing::debug!(%node, %error, "node not followed");
                }
            }
        }
    }

    /// Opens a keep-alive `/load/v1` stream on `receiver` (or the manager's pick) and
    /// spawns its reader into `streams`; answers with the node. With [`Start::New`] the
    /// items the node holds already are passed over first.
    async fn follow_node(
        &self,
        follow: &Follow<'_>,
        receiver: Option<PeerId>,
        start: Start,
        streams: &mut JoinSet<()>,
    ) -> Result<PeerId, ClientError> {
        let Follow {
            domain,
            query,
            items,
            stopped,
        } = *follow;
        let mut run = self.submit(domain, "watch", LOAD_V1, receiver).await?;
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
        Ok(node)
    }
}
