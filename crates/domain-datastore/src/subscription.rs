//! Subscriptions to newly stored items: a bounded queue per subscriber, and the
//! [`Subscribers`] registry a backend publishes to.
//!
//! Writers never wait for a subscriber: publishing is a `try_send`, and a subscriber whose
//! queue is full is dropped. Its [`Subscription`] then yields what it had queued, one
//! [`SubscriptionError::Lagged`], and ends, so the reader learns it missed items instead of
//! silently skipping them.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use domain_proto::domain_data::Metadata;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::store::QueryFilter;
use domain_proto::DomainId;

/// Queue length of each subscriber unless a backend picks another.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 1024;

/// Why a [`Subscription`] stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// The subscriber did not keep up: more than `capacity` items were waiting, so it was
    /// dropped and later items were not delivered.
    #[error("subscriber fell more than {capacity} items behind and was dropped")]
    Lagged {
        /// The queue length that was exceeded.
        capacity: usize,
    },
}

/// A stream of the metadata of items stored after it was created that match its query.
///
/// Implements [`Stream`]; [`recv`](Self::recv) is the same without `StreamExt`. The stream
/// ends when the store is dropped, or after a [`SubscriptionError::Lagged`].
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Metadata>,
    state: Arc<SharedState>,
    lag_reported: bool,
}

#[derive(Debug)]
struct SharedState {
    lagged: AtomicBool,
    capacity: usize,
}

impl Subscription {
    /// The next matching item, `Some(Err(..))` once if the subscriber was dropped for
    /// lagging, `None` when the stream is over.
    pub async fn recv(&mut self) -> Option<Result<Metadata, SubscriptionError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Subscription {
    type Item = Result<Metadata, SubscriptionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(Ok(item))),
            Poll::Ready(None)
                if !this.lag_reported && this.state.lagged.load(Ordering::Acquire) =>
            {
                this.lag_reported = true;
                Poll::Ready(Some(Err(SubscriptionError::Lagged {
                    capacity: this.state.capacity,
                })))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[derive(Debug)]
struct Subscriber {
    filter: QueryFilter,
    tx: mpsc::Sender<Metadata>,
    state: Arc<SharedState>,
}

/// The subscribers of a store, per domain. A backend calls [`publish`](Self::publish) after
/// each successful put.
#[derive(Debug)]
pub struct Subscribers {
    capacity: usize,
    by_domain: Mutex<HashMap<DomainId, Vec<Subscriber>>>,
}

impl Subscribers {
    /// A registry whose subscribers each queue at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            by_domain: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a subscriber to the items of `domain` that match `filter`.
    pub fn subscribe(&self, domain: &DomainId, filter: QueryFilter) -> Subscription {
        let (tx, rx) = mpsc::channel(self.capacity);
        let state = Arc::new(SharedState {
            lagged: AtomicBool::new(false),
            capacity: self.capacity,
        });
        let mut by_domain = self.lock();
        let subscribers = by_domain.entry(domain.clone()).or_default();
        // Forget subscribers that went away, even in a domain nobody writes to.
        subscribers.retain(|s| !s.tx.is_closed());
        subscribers.push(Subscriber {
            filter,
            tx,
            state: Arc::clone(&state),
        });
        Subscription {
            rx,
            state,
            lag_reported: false,
        }
    }

    /// Offers `item` to every subscriber of `domain` whose query it matches, without
    /// waiting: subscribers that are full are dropped (they see
    /// [`SubscriptionError::Lagged`]), subscribers that went away are forgotten.
    pub fn publish(&self, domain: &DomainId, item: &Metadata) {
        let mut by_domain = self.lock();
        let Some(subscribers) = by_domain.get_mut(domain) else {
            return;
        };
        subscribers.retain(|s| {
            if s.tx.is_closed() {
                return false;
            }
            if !s.filter.matches(item) {
                return true;
            }
            match s.tx.try_send(item.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.state.lagged.store(true, Ordering::Release);
                    tracing::warn!(%domain, capacity = self.capacity, "dropping a subscriber that fell behind");
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
        if subscribers.is_empty() {
            by_domain.remove(domain);
        }
    }

    /// How many subscribers of `domain` are still listening; forgets those that went away.
    pub fn count(&self, domain: &DomainId) -> usize {
        let mut by_domain = self.lock();
        let Some(subscribers) = by_domain.get_mut(domain) else {
            return 0;
        };
        subscribers.retain(|s| !s.tx.is_closed());
        let count = subscribers.len();
        if count == 0 {
            by_domain.remove(domain);
        }
        count
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DomainId, Vec<Subscriber>>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters: at worst a subscriber is kept or dropped one publish late.
        self.by_domain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Subscribers {
    fn default() -> Self {
        Self::new(DEFAULT_SUBSCRIPTION_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain_proto::domain_data::Query;

    fn item(name: &str) -> Metadata {
        Metadata {
            name: name.into(),
            data_type: "t".into(),
            id: name.into(),
            ..Default::default()
        }
    }

    fn domain() -> DomainId {
        DomainId::new("d").unwrap()
    }

    #[tokio::test]
    async fn subscriber_receives_only_matching_items_in_order() {
        let subs = Subscribers::new(8);
        let query = Query {
            name_regexp: Some("^a".into()),
            ..Default::default()
        };
        let mut sub = subs.subscribe(&domain(), QueryFilter::new(&query).unwrap());
        for name in ["a1", "b1", "a2"] {
            subs.publish(&domain(), &item(name));
        }
        assert_eq!(sub.recv().await.unwrap().unwrap().name, "a1");
        assert_eq!(sub.recv().await.unwrap().unwrap().name, "a2");
    }

    #[tokio::test]
    async fn other_domains_are_not_delivered() {
        let subs = Subscribers::new(8);
        let mut sub = subs.subscribe(&domain(), QueryFilter::new(&Query::default()).unwrap());
        subs.publish(&DomainId::new("other").unwrap(), &item("x"));
        drop(subs);
        assert!(sub.recv().await.is_none());
    }

    #[tokio::test]
    async fn slow_subscriber_is_dropped_with_lagged_after_its_queue() {
        let subs = Subscribers::new(2);
        let mut slow = subs.subscribe(&domain(), QueryFilter::new(&Query::default()).unwrap());
        for name in ["1", "2", "3", "4"] {
            subs.publish(&domain(), &item(name));
        }
        assert_eq!(subs.count(&domain()), 0);
        assert_eq!(slow.recv().await.unwrap().unwrap().name, "1");
        assert_eq!(slow.recv().await.unwrap().unwrap().name, "2");
        assert_eq!(
            slow.recv().await,
            Some(Err(SubscriptionError::Lagged { capacity: 2 }))
        );
        assert_eq!(slow.recv().await, None);
    }

    #[tokio::test]
    async fn dropped_subscription_is_forgotten_on_next_subscribe() {
        let subs = Subscribers::new(2);
        drop(subs.subscribe(&domain(), QueryFilter::new(&Query::default()).unwrap()));
        let _kept = subs.subscribe(&domain(), QueryFilter::new(&Query::default()).unwrap());
        assert_eq!(subs.count(&domain()), 1);
    }

    #[tokio::test]
    async fn dropped_subscription_is_not_counted() {
        let subs = Subscribers::new(2);
        let sub = subs.subscribe(&domain(), QueryFilter::new(&Query::default()).unwrap());
        assert_eq!(subs.count(&domain()), 1);
        drop(sub);
        assert_eq!(subs.count(&domain()), 0);
    }

    #[tokio::test]
    async fn dropped_subscription_is_forgotten_on_next_publish() {
        let subs = Subscribers::new(2);
        let sub = subs.subscribe(&domain(), QueryFilter::new(&Query::default()).unwrap());
        assert_eq!(subs.count(&domain()), 1);
        drop(sub);
        subs.publish(&domain(), &item("x"));
        assert_eq!(subs.count(&domain()), 0);
    }
}
