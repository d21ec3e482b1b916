//! Live subscriptions: [`Client::subscribe`] and the [`Subscription`] it returns.
//!
//! An upload may land on any node, so a subscription follows every node that holds data
//! of the domain, not one: it follows the manager's holder index (`/holders/v1`) and
//! opens a keep-alive `/load/v1` stream on each holder that is up, then on each holder
//! that appears (or comes back) later. Each stream first sends the items that already
//! match, then each new one; an id seen before with the same root is not shown again.
//! [`Client::subscribe_new`] passes over the items already there, up to each node's
//! caught-up marker, before it returns.
//!
//! A node ends a stream when the token that opened it expires (an hour at most). Each
//! node's follower renews its stream on a fresh token before then: it opens the new
//! stream first, then closes the old one, and passes over the new stream's first items
//! where that node sent them already.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domain_auth::TaskClaims;
use domain_capabilities::{CapabilityError, LoadConsumer, Unsubscriber, open_load};
use domain_cluster::{ClusterStream, HolderStream, PeerId};
use domain_proto::DomainId;
use domain_proto::discovery::Holder;
use domain_proto::domain_data::{Metadata, Query};
use domain_proto::protocols::LOAD_V1;
use domain_proto::task::ConsumeDataInputV1;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::holders::not_answered;
use super::{Client, ClientError, MAX_LISTED_ITEMS};

/// Items waiting for [`Subscription::next`] before the node streams wait for it.
const QUEUED_ITEMS: usize = 256;

/// Pause before trying again to renew a node stream whose renewal failed.
const RENEW_RETRY: Duration = Duration::from_secs(15);

/// How often a subscription looks again for registered holders it does not follow (a
/// node whose stream ended, a manager whose holder stream ended): the only wait between
/// losing a node's stream and following it again.
const REFOLLOW: Duration = Duration::from_secs(2);

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
        client.config.task_timeout = client.config.subscription_timeout;
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
        let (holders, changes) = client
            .managers()?
            .call(|manager| client.cluster.holders(manager, domain.as_str(), true))
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
                .follow_new_holders(&follow, changes, followed, &mut streams, holders)
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
        streams: &mut JoinSet<PeerId>,
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
    /// stop. A node whose stream ends, and the manager's holder stream when it ends (a
    /// manager restarting), are followed again every [`REFOLLOW`]: the items each node
    /// holds come again from the start, and the [`Subscription`] shows only those it has
    /// not shown, so what was stored meanwhile is not lost.
    async fn follow_new_holders(
        &self,
        follow: &Follow<'_>,
        changes: HolderStream,
        mut followed: BTreeSet<PeerId>,
        streams: &mut JoinSet<PeerId>,
        mut holders: Vec<Holder>,
    ) {
        let mut stopped = follow.stopped.clone();
        let mut changes = Some(changes);
        // Nodes whose stream just ended, and when to follow them again.
        let mut not_before: HashMap<PeerId, Instant> = HashMap::new();
        let mut refollow = tokio::time::interval(REFOLLOW);
        refollow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_change = async {
                match changes.as_mut() {
                    Some(changes) => changes.next().await,
                    None => std::future::pending().await,
                }
            };
            let ended = async {
                match streams.is_empty() {
                    true => std::future::pending().await,
                    false => streams.join_next().await,
                }
            };
            // Decided first, handled after: the select's guards are not held across awaits.
            let step = tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return,
                change = next_change => Step::Change(change),
                ended = ended => Step::Ended(ended),
                _ = refollow.tick() => Step::Look,
            };
            match step {
                Step::Change(Ok(Some(now))) => {
                    holders = now;
                    self.refollow(follow, &holders, &mut followed, streams, &not_before);
                }
                Step::Change(Ok(None) | Err(_)) => {
                    tracing::warn!("the manager's holder stream ended; following it again");
                    changes = None;
                }
                // Followed again at a later look, from what it holds.
                Step::Ended(Some(Ok(node))) => {
                    followed.remove(&node);
                    not_before.insert(node, Instant::now() + REFOLLOW);
                }
                Step::Ended(_) => {}
                Step::Look => {
                    if changes.is_none() {
                        let domain = follow.domain.as_str();
                        let again = match self.managers() {
                            Ok(managers) => managers
                                .call(|manager| self.cluster.holders(manager, domain, true))
                                .await
                                .ok(),
                            Err(_) => None,
                        };
                        if let Some((now, stream)) = again {
                            holders = now;
                            changes = Some(stream);
                        }
                    }
                    self.refollow(follow, &holders, &mut followed, streams, &not_before);
                }
            }
        }
    }

    /// Follows again, each in a task of its own (a node that does not answer must not hold
    /// up the others), every registered holder of `holders` not followed, whose stream did
    /// not end moments ago. Each sends every item it holds again; the [`Subscription`]
    /// shows only those not shown.
    fn refollow(
        &self,
        follow: &Follow<'_>,
        holders: &[Holder],
        followed: &mut BTreeSet<PeerId>,
        streams: &mut JoinSet<PeerId>,
        not_before: &HashMap<PeerId, Instant>,
    ) {
        let now = Instant::now();
        for holder in holders.iter().filter(|holder| holder.registered) {
            let Ok(node) = holder.node_id.parse::<PeerId>() else {
                continue;
            };
            if followed.contains(&node) || not_before.get(&node).is_some_and(|at| *at > now) {
                continue;
            }
            followed.insert(node);
            let follower = NodeFollower {
                client: self.clone(),
                domain: follow.domain.clone(),
                query: follow.query.clone(),
                node,
                items: follow.items.clone(),
                stopped: follow.stopped.clone(),
                seen: Seen::default(),
            };
            streams.spawn(async move {
                let mut stopped = follower.stopped.clone();
                let opened = tokio::select! {
                    _ = stopped.wait_for(|stop| *stop) => return node,
                    opened = follower.client.open_subscription(
                        &follower.domain,
                        &follower.query,
                        node,
                        false,
                    ) => opened,
                };
                match opened {
                    Ok((_, stream)) => follower.run(stream).await,
                    Err(error) => {
                        not_answered(node, &error);
                        node
                    }
                }
            });
        }
    }

    /// Opens a keep-alive `/load/v1` stream on `node` and spawns its follower into
    /// `streams`. With [`Start::New`] the items the node holds already are passed over
    /// first.
    async fn follow_node(
        &self,
        follow: &Follow<'_>,
        node: PeerId,
        start: Start,
        streams: &mut JoinSet<PeerId>,
    ) -> Result<(), ClientError> {
        let Follow {
            domain,
            query,
            items,
            stopped,
        } = *follow;
        let (node, mut stream) = self
            .open_subscription(domain, query, node, start == Start::New)
            .await?;
        let mut seen = Seen::default();
        if start == Start::New {
            let transfer = |source| ClientError::Transfer {
                protocol: LOAD_V1,
                node,
                source: Box::new(source),
            };
            let passed = async {
                while let Some(item) = stream.consumer.next_before_caught_up().await? {
                    seen.insert(item.metadata());
                }
                Ok(())
            };
            tokio::time::timeout(self.config.request_timeout, passed)
                .await
                .map_err(|_| {
                    transfer(CapabilityError::Unexpected {
                        during: "waiting for the subscription to catch up",
                        what: "no caught-up marker in time",
                    })
                })?
                .map_err(transfer)?;
        }
        let follower = NodeFollower {
            client: self.clone(),
            domain: domain.clone(),
            query: query.clone(),
            node,
            items: items.clone(),
            stopped: stopped.clone(),
            seen,
        };
        streams.spawn(follower.run(stream));
        Ok(())
    }

    /// Submits a job for a keep-alive `/load/v1` task on `node` and opens its stream,
    /// asking for the caught-up marker when `mark_caught_up`.
    async fn open_subscription(
        &self,
        domain: &DomainId,
        query: &Query,
        node: PeerId,
        mark_caught_up: bool,
    ) -> Result<(PeerId, NodeStream), ClientError> {
        let mut run = self
            .submit(domain, "watch", LOAD_V1, &[Some(node)], None)
            .await?;
        loop {
            let assignment = run.next_assignment().await?;
            let node = assignment.node;
            let opened = async {
                let stream = self.open(node, LOAD_V1).await?;
                let request = ConsumeDataInputV1 {
                    query: query.clone(),
                    keep_alive: true,
                    mark_caught_up: mark_caught_up.then_some(true),
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
                Ok((consumer, unsubscriber)) => {
                    let stream = NodeStream {
                        consumer,
                        unsubscriber,
                        renew_at: renewal_time(&assignment.token),
                    };
                    return Ok((node, stream));
                }
                Err(error) => run.failed(error).await?,
            }
        }
    }
}

/// A subscription's stream on one node, and when to renew it.
struct NodeStream {
    consumer: LoadConsumer<ClusterStream>,
    unsubscriber: Unsubscriber<ClusterStream>,
    /// When to open the next stream on a fresh token; `None` for a token whose expiry
    /// cannot be read, whose stream then ends with it.
    renew_at: Option<Instant>,
}

/// When to renew a stream opened on `token`: once three quarters of its life have
/// passed, which leaves a quarter (15 minutes of an hour's token) for the renewal and
/// its retries, and for clocks that disagree.
fn renewal_time(token: &str) -> Option<Instant> {
    match TaskClaims::read_unverified(token) {
        Ok(claims) => {
            let expires = UNIX_EPOCH + Duration::from_secs(claims.exp);
            let left = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            Some(Instant::now() + left * 3 / 4)
        }
        Err(error) => {
            tracing::warn!(error = %domain_proto::ErrorChain(&error), "the manager's token is unreadable; its stream will not be renewed");
            None
        }
    }
}

/// The id and root of each item a node's streams sent, so that a renewed stream, which
/// sends again every item that matches, shows only those stored while it was renewed.
#[derive(Default)]
struct Seen(HashMap<String, Option<String>>);

impl Seen {
    fn insert(&mut self, item: &Metadata) {
        if self.0.len() == MAX_LISTED_ITEMS {
            // Forgetting may show an item twice; remembering forever grows without end.
            self.0.clear();
        }
        self.0.insert(item.id.clone(), item.hash.clone());
    }

    fn contains(&self, item: &Metadata) -> bool {
        self.0.get(&item.id) == Some(&item.hash)
    }
}

/// What the driver of a subscription does next.
enum Step {
    /// The manager's holders changed, or its holder stream ended.
    Change(Result<Option<Vec<Holder>>, domain_cluster::ClusterError>),
    /// A node's follower ended.
    Ended(Option<Result<PeerId, tokio::task::JoinError>>),
    /// Time to look for holders not followed.
    Look,
}

/// What happened on a node's subscription.
enum Event {
    Stop,
    Renew,
    Read(Result<Read, CapabilityError>),
}

/// What a node stream gave.
enum Read {
    /// An item; `renewed` when it came from a renewed stream before its caught-up marker,
    /// so it may be one seen already.
    Item { item: Metadata, renewed: bool },
    /// A renewed stream's caught-up marker.
    CaughtUp,
    /// The end of the stream.
    End,
}

/// Follows one node for a subscription: forwards its items and renews its stream on a
/// fresh token before the token expires (the node ends the stream then). The renewed
/// stream is subscribed before the old one is closed, and sends first every item that
/// matches: those seen already are passed over, so nothing is lost or shown twice.
struct NodeFollower {
    client: Client,
    domain: DomainId,
    query: Query,
    node: PeerId,
    items: mpsc::Sender<Result<Metadata, ClientError>>,
    stopped: watch::Receiver<bool>,
    seen: Seen,
}

impl NodeFollower {
    /// Runs until the stream ends or fails, or the subscription stops; answers the node.
    async fn run(mut self, mut stream: NodeStream) -> PeerId {
        let node = self.node;
        // Whether `stream` is a renewal that has not sent its caught-up marker yet.
        let mut renewed = false;
        let mut stopped = self.stopped.clone();
        loop {
            let renew_at = stream.renew_at;
            let event = tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => Event::Stop,
                () = async {
                    match renew_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => Event::Renew,
                read = read(&mut stream.consumer, renewed) => Event::Read(read),
            };
            let item = match event {
                Event::Stop => break,
                Event::Renew => {
                    match self
                        .client
                        .open_subscription(&self.domain, &self.query, node, true)
                        .await
                    {
                        Ok((_, new)) => {
                            let old = std::mem::replace(&mut stream, new);
                            close(node, old).await;
                            renewed = true;
                        }
                        Err(error) => {
                            tracing::warn!(
                                %node, error = %domain_proto::ErrorChain(&error),
                                "renewing a subscription's stream failed; trying again"
                            );
                            stream.renew_at = Some(Instant::now() + RENEW_RETRY);
                        }
                    }
                    continue;
                }
                Event::Read(Ok(Read::CaughtUp)) => {
                    renewed = false;
                    continue;
                }
                Event::Read(Ok(Read::Item { item, renewed })) => {
                    if renewed && self.seen.contains(&item) {
                        continue;
                    }
                    self.seen.insert(&item);
                    Ok(item)
                }
                Event::Read(Ok(Read::End)) => Err(ClientError::SubscriptionEnded { node }),
                Event::Read(Err(source)) => Err(ClientError::Transfer {
                    protocol: LOAD_V1,
                    node,
                    source: Box::new(source),
                }),
            };
            let failed = item.is_err();
            if self.items.send(item).await.is_err() || failed {
                return node;
            }
        }
        close(node, stream).await;
        node
    }
}

/// The next item of a node stream; with `renewed`, of those it matched when it began.
async fn read(
    consumer: &mut LoadConsumer<ClusterStream>,
    renewed: bool,
) -> Result<Read, CapabilityError> {
    let next = match renewed {
        true => match consumer.next_before_caught_up().await? {
            Some(item) => Some(item),
            None => return Ok(Read::CaughtUp),
        },
        false => consumer.next().await?,
    };
    Ok(match next {
        Some(item) => Read::Item {
            item: item.metadata().clone(),
            renewed,
        },
        None => Read::End,
    })
}

/// Ends a node stream: the node is sent `UnsubscribeDataQueryV1`.
async fn close(node: PeerId, stream: NodeStream) {
    if let Err(error) = stream.unsubscriber.unsubscribe().await {
        tracing::debug!(%node, error = %domain_proto::ErrorChain(&error), "unsubscribing failed");
    }
}
