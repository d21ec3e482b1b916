//! Domain public keys fetched from the leading manager over `/public-key/v1`, cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use domain_auth::PublicKey;
use domain_capabilities::PublicKeySource;
use domain_cluster::{ClusterHandle, Managers};
use tokio::time::Instant;

/// Domains whose keys (or whose absence) the cache holds at most; past that,
/// answers are used without being kept.
pub const MAX_CACHED_DOMAINS: usize = 4096;

/// How long a domain the manager has no key for stays unknown before it is
/// asked again, so that handshakes naming made-up domains cost the manager
/// one request per domain and period, not one each.
pub const UNKNOWN_DOMAIN_TTL: Duration = Duration::from_secs(10);

/// The shortest time between two fetches of one domain's key on signature
/// failures: a forged token must not turn into a request to the manager.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// A [`PublicKeySource`] that asks the manager for each domain's key once and
/// remembers it; a token whose signature does not verify makes it ask again
/// (at most once per [`MIN_REFRESH_INTERVAL`] by default), in case the key was rotated.
#[derive(Debug, Clone)]
pub struct ManagerKeys {
    inner: Arc<Inner>,
    min_refresh: Duration,
}

#[derive(Debug)]
struct Inner {
    cluster: ClusterHandle,
    managers: Managers,
    cache: Mutex<HashMap<String, Entry>>,
    /// One fetch at a time, so that a burst of streams for a new domain makes
    /// one request, not one per stream.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
enum Entry {
    Known { key: PublicKey, fetched: Instant },
    Unknown { reason: String, until: Instant },
}

impl ManagerKeys {
    /// Keys of the leader of `managers`, fetched through `cluster`.
    #[must_use]
    pub fn new(cluster: ClusterHandle, managers: Managers) -> Self {
        Self {
            inner: Arc::new(Inner {
                cluster,
                managers,
                cache: Mutex::new(HashMap::new()),
                fetching: tokio::sync::Mutex::new(()),
            }),
            min_refresh: MIN_REFRESH_INTERVAL,
        }
    }

    /// Sets the shortest time between two fetches of one domain's key on
    /// signature failures (default [`MIN_REFRESH_INTERVAL`]).
    #[must_use]
    pub fn with_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh = interval;
        self
    }

    /// The cached key of `domain_id`, if any.
    #[must_use]
    pub fn cached(&self, domain_id: &str) -> Option<PublicKey> {
        match self.lookup(domain_id) {
            Some(Entry::Known { key, .. }) => Some(key),
            _ => None,
        }
    }

    fn lookup(&self, domain_id: &str) -> Option<Entry> {
        self.cache().get(domain_id).cloned()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map holds plain values, whole after every insert: usable even if
        // a holder panicked.
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, domain_id: &str, entry: Entry) {
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED_DOMAINS && !cache.contains_key(domain_id) {
            let now = Instant::now();
            cache.retain(|_, e| !matches!(e, Entry::Unknown { until, .. } if *until <= now));
            if cache.len() >= MAX_CACHED_DOMAINS {
                return;
            }
        }
        cache.insert(domain_id.to_owned(), entry);
    }

    /// Asks the manager, and caches the answer (a key, or that it has none).
    async fn fetch(&self, domain_id: &str) -> Result<PublicKey, String> {
        let inner = &self.inner;
        let answer = inner
            .managers
            .call(|manager| inner.cluster.public_key(manager, domain_id))
            .await;
        match answer {
            Ok(bytes) => {
                let key = PublicKey::from_bytes(bytes);
                tracing::debug!(domain = domain_id, %key, "fetched a domain key");
                self.remember(
                    domain_id,
                    Entry::Known {
                        key,
                        fetched: Instant::now(),
                    },
                );
                Ok(key)
            }
            Err(error) => {
                let reason = format!(
                    "the manager gave no key: {}",
                    domain_proto::ErrorChain(&error)
                );
                // A failed refresh keeps the key that was known.
                if self.cached(domain_id).is_none() {
                    self.remember(
                        domain_id,
                        Entry::Unknown {
                            reason: reason.clone(),
                            until: Instant::now() + UNKNOWN_DOMAIN_TTL,
                        },
                    );
                }
                Err(reason)
            }
        }
    }
}

impl PublicKeySource for ManagerKeys {
    async fn public_key(&self, domain_id: &str) -> Result<PublicKey, String> {
        let fresh_enough = |entry: Option<Entry>| match entry {
            Some(Entry::Known { key, .. }) => Some(Ok(key)),
            Some(Entry::Unknown { reason, until }) if Instant::now() < until => Some(Err(reason)),
            _ => None,
        };
        if let Some(answer) = fresh_enough(self.lookup(domain_id)) {
            return answer;
        }
        let _one_fetch = self.inner.fetching.lock().await;
        // Another stream may have fetched it while this one waited.
        if let Some(answer) = fresh_enough(self.lookup(domain_id)) {
            return answer;
        }
        self.fetch(domain_id).await
    }

    async fn refreshed_key(&self, domain_id: &str) -> Option<PublicKey> {
        let min_refresh = self.min_refresh;
        let recent = |entry: Option<Entry>| matches!(entry, Some(Entry::Known { fetched, .. }) if fetched.elapsed() < min_refresh);
        if recent(self.lookup(domain_id)) {
            return None;
        }
        let _one_fetch = self.inner.fetching.lock().await;
        if recent(self.lookup(domain_id)) {
            // Refreshed while this stream waited: that key is the freshest there is.
            return self.cached(domain_id);
        }
        tracing::info!(
            domain = domain_id,
            "a token did not verify with the cached domain key; asking the manager again"
        );
        self.fetch(domain_id).await.ok()
    }
}
