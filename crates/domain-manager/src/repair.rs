//! Replication that repairs itself: the leader keeps every item of a domain at exactly the
//! copies the domain asks for, whatever happened to the copies the upload made.
//!
//! The ordinary path (`replication.rs`) makes an upload's copies once. A copy can still go
//! missing: a node killed while it streamed them, a holder gone for good, a domain whose
//! `replication` grew; and one too many can appear: a holder that was away while its item
//! got copied elsewhere, a `replication` that shrank. So the leader *audits* a domain when
//! something may have changed its copies:
//! - a holder has stayed away (not registered) past the grace period ([`RepairConfig::grace`]);
//! - a holder that was away is back, or a node restarted (its first join says so: what it
//!   was copying is lost);
//! - this manager starts leading (its `replication` settings may be new);
//! - every [`RepairConfig::interval`], as a safety net;
//! - after an audit that changed something (until one finds nothing to do), or failed.
//!
//! While a holder of the domain is away but within its grace, the audit waits: the node
//! may be restarting, and copies made now would be one too many once it is back.
//!
//! An audit lists every registered node's items of the domain (a metadata-only `/load/v1`
//! query under a token the manager signs for itself: it holds the domain's key), decides
//! with [`plan::plan`] what to copy and what to remove, and does it: it streams each copy
//! from a holder to its new node itself (load from one, `/store/v1` with a copy token to
//! the other, the root checked at both ends), and removes over `/delete/v1`. Items clients
//! deleted are remembered for a day ([`Tombstones`]; a new leader learns them from the delete
//! jobs the scheduler keeps), so that a holder that was away during the delete loses its
//! copy instead of spreading it again.

mod audit;
pub(crate) mod plan;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain_proto::discovery::{Holder, Node};
use domain_proto::protocols::{DELETE_V1, LOAD_V1};
use domain_proto::task::{DeleteDataInputV1, JobRequest};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::domains::DomainPolicy;
use crate::metrics::ManagerMetrics;
use crate::scheduler_thread::Request;

pub(crate) use audit::{Auditor, RepairError};

/// How often the leader looks at the registry and the holder index.
const CHECK: Duration = Duration::from_secs(1);

/// How long after a node comes back (or restarts) its domains are audited: its joins,
/// holdings and relay slot settle first.
const SETTLE: Duration = Duration::from_secs(3);

/// How long a node a copy failed to (its disk full, say) is given no other copy.
const AVOID: Duration = Duration::from_secs(60);

/// The longest pause between attempts of an audit that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How many times a removal of deleted items is asked again of a node that did not
/// answer (1 + 2 + 4 + 8 s of pauses): long enough for a passing fault, short enough not
/// to hold one of the few removals that run at once for long.
const PURGE_RETRIES: u32 = 4;

/// How long a client's delete is remembered, and how many at most: a holder away longer
/// than this may bring a deleted item back.
const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_TOMBSTONES: usize = 200_000;

/// When domains are audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairConfig {
    /// How long a holder may stay away before its copies are made again elsewhere.
    pub grace: Duration,
    /// How often every domain is audited, whatever happened.
    pub interval: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(5 * 60),
            interval: Duration::from_secs(3600),
        }
    }
}

/// The ids clients deleted, per domain, for [`TOMBSTONE_TTL`] (at most [`MAX_TOMBSTONES`],
/// the oldest forgotten first). In memory: a leader starts with the deletes of the jobs the
/// scheduler keeps ([`Request::Deletes`]), and records each delete job it accepts.
#[derive(Debug, Default)]
pub(crate) struct Tombstones {
    inner: Mutex<TombstoneSet>,
}

#[derive(Debug, Default)]
struct TombstoneSet {
    /// How many (domain, id) were ever recorded: a count that moves with each new one.
    recorded: u64,
    /// Domain → its deleted ids.
    ids: HashMap<String, HashSet<String>>,
    /// Every (domain, id) of `ids` once, oldest first.
    order: VecDeque<(Instant, String, String)>,
}

impl Tombstones {
    /// Records that a client deletes `ids` of `domain`.
    pub(crate) fn record(&self, domain: &str, ids: impl IntoIterator<Item = String>) {
        let now = Instant::now();
        let mut set = self.lock();
        for id in ids {
            if set
                .ids
                .entry(domain.to_owned())
                .or_default()
                .insert(id.clone())
            {
                set.order.push_back((now, domain.to_owned(), id));
                set.recorded += 1;
            }
        }
        while set.order.len() > MAX_TOMBSTONES
            || set
                .order
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) > TOMBSTONE_TTL)
        {
            let Some((_, domain, id)) = set.order.pop_front() else {
                break;
            };
            if let Some(ids) = set.ids.get_mut(&domain) {
                ids.remove(&id);
                if ids.is_empty() {
                    set.ids.remove(&domain);
                }
            }
        }
    }

    /// A count that grows with each delete recorded: compared before and after a purge,
    /// it tells whether deletes arrived meanwhile.
    pub(crate) fn recorded(&self) -> u64 {
        self.lock().recorded
    }

    /// Whether a client deleted `id` of `domain` (within the last day).
    pub(crate) fn contains(&self, domain: &str, id: &str) -> bool {
        self.lock()
            .ids
            .get(domain)
            .is_some_and(|ids| ids.contains(id))
    }

    /// Whether a client deleted anything of `domain` (within the last day).
    pub(crate) fn any_in(&self, domain: &str) -> bool {
        self.lock().ids.contains_key(domain)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TombstoneSet> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Removes `ids`, which a client deleted, from `node`, which still holds them: a copy
/// landed there after the delete, or the delete did not reach it. A node that does not
/// answer is asked again a few times ([`PURGE_RETRIES`], the pause doubling from a
/// second), then left to the next audit, or to the purge at its next join if it is
/// dropped meanwhile.
pub(crate) async fn remove_deleted(auditor: &Auditor, domain: &str, node: &str, ids: &[String]) {
    let mut pause = Duration::from_secs(1);
    for batch in ids.chunks(audit::IDS_PER_STREAM) {
        let mut attempt = 0;
        loop {
            match auditor.remove(domain, node, batch).await {
                Ok(removed) => {
                    tracing::info!(%domain, %node, removed, "removed copies of deleted items");
                    break;
                }
                Err(error) if attempt < PURGE_RETRIES => {
                    tracing::debug!(%domain, %node, error = %domain_proto::ErrorChain(&error), retry_in = ?pause, "could not remove copies of deleted items");
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(error) => {
                    tracing::warn!(%domain, %node, error = %domain_proto::ErrorChain(&error), "could not remove copies of deleted items; the next audit will");
                    return;
                }
            }
        }
    }
}

/// Removes from `node`, which joins again after being away (or restarted), the items of
/// `domains` that clients deleted meanwhile, before it is registered: a listing must not
/// show them in the moments before an audit would remove them. A failure is logged and
/// left to the audit its return triggers. How many were removed.
pub(crate) async fn purge_deleted(
    auditor: &Auditor,
    tombstones: &Tombstones,
    node: &str,
    domains: Vec<String>,
) -> usize {
    let mut removed = 0;
    for domain in domains.iter().filter(|d| tombstones.any_in(d)) {
        let domain = domain.as_str();
        let purged = async {
            let held = auditor.list(domain, node).await?;
            let deleted: Vec<String> = held
                .into_keys()
                .filter(|id| tombstones.contains(domain, id))
                .collect();
            let mut removed = 0;
            for batch in deleted.chunks(audit::IDS_PER_STREAM) {
                removed += auditor.remove(domain, node, batch).await?;
            }
            Ok::<_, RepairError>(removed)
        };
        match purged.await {
            Ok(0) => {}
            Ok(count) => {
                tracing::info!(%domain, %node, removed = count, "removed what clients deleted while the node was away");
                removed += count;
            }
            Err(error) => {
                tracing::warn!(%domain, %node, error = %domain_proto::ErrorChain(&error), "could not remove what clients deleted while the node was away; its audit will");
            }
        }
    }
    removed
}

/// The leader's repair loop: see the module's documentation.
pub(crate) struct Repairer {
    requests: mpsc::Sender<Request>,
    policy: Arc<DomainPolicy>,
    tombstones: Arc<Tombstones>,
    config: RepairConfig,
    auditor: Auditor,
    metrics: ManagerMetrics,
    /// Peer ids of nodes whose first join since they started just arrived.
    started: mpsc::Receiver<String>,
    state: State,
}

/// What the loop remembers between checks.
#[derive(Debug)]
struct State {
    /// Registered nodes, and since when without a break: the longer, the more trusted
    /// their copies are when versions disagree.
    since: HashMap<String, Instant>,
    /// Holders of a domain not registered now, and since when: (domain, node).
    away: HashMap<(String, String), Instant>,
    /// Away holders already past their grace (audited for once).
    gone: HashSet<(String, String)>,
    /// Domains to audit, and from when.
    due: BTreeMap<String, Instant>,
    /// Failed audits in a row, per domain.
    failures: HashMap<String, u32>,
    /// The last audit of every domain.
    last_sweep: Option<Instant>,
    /// Nodes a copy failed to, and until when they get none.
    avoid: HashMap<String, Instant>,
}

impl Repairer {
    pub(crate) fn new(
        requests: mpsc::Sender<Request>,
        policy: Arc<DomainPolicy>,
        tombstones: Arc<Tombstones>,
        config: RepairConfig,
        auditor: Auditor,
        started: mpsc::Receiver<String>,
        metrics: ManagerMetrics,
    ) -> Self {
        Self {
            requests,
            policy,
            tombstones,
            config,
            auditor,
            metrics,
            started,
            state: State {
                since: HashMap::new(),
                away: HashMap::new(),
                gone: HashSet::new(),
                due: BTreeMap::new(),
                failures: HashMap::new(),
                last_sweep: None,
                avoid: HashMap::new(),
            },
        }
    }

    /// Runs until the scheduler thread stops.
    pub(crate) async fn run(mut self) {
        // The deletes of the jobs the scheduler keeps (a day by default, with the state a
        // new leader takes over): remembered across restarts and leader changes.
        let (reply, kept) = oneshot::channel();
        if self
            .requests
            .send(Request::Deletes { reply })
            .await
            .is_err()
        {
            return;
        }
        let Ok(kept) = kept.await else { return };
        for (domain, ids) in kept {
            self.tombstones.record(&domain, ids);
        }
        let mut ticker = tokio::time::interval(CHECK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                started = self.started.recv() => {
                    if let Some(node) = started {
                        tracing::debug!(%node, "node restarted: its domains will be audited");
                        self.state.since.insert(node, Instant::now());
                        self.sweep(Instant::now() + SETTLE);
                    }
                    continue;
                }
            }
            if self.check().await.is_err() {
                return;
            }
        }
    }

    /// Marks every domain that may need copies made or removed.
    fn sweep(&mut self, at: Instant) {
        for domain in self.policy.domains() {
            let due = self.state.due.entry(domain.to_owned()).or_insert(at);
            *due = (*due).min(at);
        }
    }

    /// One look at the registry and the holder index, then the audits that are due.
    async fn check(&mut self) -> Result<(), Stopped> {
        let now = Instant::now();
        let nodes = self.nodes().await?;
        self.state
            .since
            .retain(|id, _| nodes.iter().any(|node| &node.id == id));
        for node in &nodes {
            self.state.since.entry(node.id.clone()).or_insert(now);
        }
        let domains: Vec<String> = self.policy.domains().map(str::to_owned).collect();
        let mut holders = BTreeMap::new();
        for domain in domains {
            let of_domain = self.holders(&domain).await?;
            self.watch_holders(&domain, &of_domain, now);
            holders.insert(domain, of_domain);
        }
        let sweep_due = self
            .state
            .last_sweep
            .is_none_or(|last| now.duration_since(last) >= self.config.interval);
        if sweep_due {
            // At the start, after the nodes had time to join again.
            let at = match self.state.last_sweep {
                None => now + SETTLE,
                Some(_) => now,
            };
            self.state.last_sweep = Some(now);
            self.sweep(at);
        }
        let due: Vec<String> = self
            .state
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(domain, _)| domain.clone())
            .collect();
        for domain in due {
            let waiting = self.state.away.iter().any(|((d, _), since)| {
                *d == domain && now.duration_since(*since) < self.config.grace
            });
            if waiting {
                continue;
            }
            let of_domain = holders.get(&domain).map_or(&[][..], Vec::as_slice);
            let copies = self.policy.replication(&domain);
            let audited = self.audit(&domain, copies, &nodes, of_domain).await;
            match audited {
                Ok(true) => {
                    // Until an audit finds nothing to do: copies made meanwhile count.
                    self.state.failures.remove(&domain);
                    self.state.due.insert(domain, Instant::now() + SETTLE);
                }
                Ok(false) => {
                    self.state.failures.remove(&domain);
                    self.state.due.remove(&domain);
                }
                Err(error) => {
                    let failures = self.state.failures.entry(domain.clone()).or_default();
                    *failures = failures.saturating_add(1);
                    let pause = (SETTLE * 2u32.saturating_pow((*failures).min(8))).min(MAX_BACKOFF);
                    tracing::warn!(%domain, error = %domain_proto::ErrorChain(&error), retry_in = ?pause, "audit of the domain's copies failed");
                    self.state.due.insert(domain, Instant::now() + pause);
                }
            }
        }
        Ok(())
    }

    /// Follows the holders of `domain`: who is away, who is gone past the grace, who
    /// came back.
    fn watch_holders(&mut self, domain: &str, holders: &[Holder], now: Instant) {
        for holder in holders {
            let key = (domain.to_owned(), holder.node_id.clone());
            if holder.registered {
                if self.state.away.remove(&key).is_some() {
                    tracing::info!(%domain, node = %holder.node_id, "a holder is back: the domain will be audited");
                    self.state.gone.remove(&key);
                    self.mark(domain, now + SETTLE);
                }
                continue;
            }
            let since = *self.state.away.entry(key.clone()).or_insert(now);
            if now.duration_since(since) >= self.config.grace && self.state.gone.insert(key) {
                tracing::info!(%domain, node = %holder.node_id, away = ?now.duration_since(since), "a holder stayed away past its grace: its copies will be made elsewhere");
                self.mark(domain, now);
            }
        }
    }

    fn mark(&mut self, domain: &str, at: Instant) {
        let due = self.state.due.entry(domain.to_owned()).or_insert(at);
        *due = (*due).min(at);
    }

    /// Lists the domain on every registered node that serves it, plans, and carries out
    /// the plan. `Ok(true)` when something was copied or removed.
    async fn audit(
        &mut self,
        domain: &str,
        copies: u32,
        nodes: &[Node],
        holders: &[Holder],
    ) -> Result<bool, RepairError> {
        let gateways: HashSet<&str> = holders
            .iter()
            .filter(|holder| holder.gateway == Some(true))
            .map(|holder| holder.node_id.as_str())
            .collect();
        let mut listed: Vec<(&Node, Instant)> = nodes
            .iter()
            .filter(|node| !gateways.contains(node.id.as_str()))
            .filter(|node| serves(node, LOAD_V1))
            .filter_map(|node| Some((node, *self.state.since.get(&node.id)?)))
            .collect();
        listed.sort_by(|(a, a_since), (b, b_since)| a_since.cmp(b_since).then(a.id.cmp(&b.id)));
        let mut listings = Vec::with_capacity(listed.len());
        for (node, _) in listed {
            let items = match self.auditor.list(domain, &node.id).await {
                Ok(items) => items,
                Err(error) => {
                    self.metrics.audited("failed", 0, 0);
                    return Err(error);
                }
            };
            let avoided = self
                .state
                .avoid
                .get(&node.id)
                .is_some_and(|until| *until > Instant::now());
            listings.push(plan::Listing {
                node: node.id.clone(),
                takes_copies: serves(node, domain_proto::protocols::STORE_V1) && !avoided,
                items,
            });
        }
        let plan = plan::plan(copies, &listings, |id| self.tombstones.contains(domain, id));
        if plan.short > 0 {
            tracing::warn!(%domain, copies, items = plan.short, nodes = listings.len(), "too few nodes: some items keep fewer copies than the domain asks for");
        }
        if plan.is_empty() {
            tracing::debug!(%domain, nodes = listings.len(), "every item has its copies");
            self.metrics.audited("clean", 0, 0);
            return Ok(false);
        }
        tracing::info!(%domain, copies = plan.copies.len(), removals = plan.removals.len(), "repairing the domain's copies");
        let done = self
            .auditor
            .carry_out(domain, &plan, |id| self.tombstones.contains(domain, id))
            .await;
        tracing::info!(%domain, copied = done.copied, removed = done.removed, "the domain's copies repaired");
        let outcome = match done.error {
            Some(_) => "failed",
            None => "repaired",
        };
        self.metrics.audited(outcome, done.copied, done.removed);
        let until = Instant::now() + AVOID;
        for node in done.refused {
            tracing::info!(%domain, %node, "a copy to this node failed: it gets no other for a minute");
            self.state.avoid.insert(node, until);
        }
        self.state.avoid.retain(|_, until| *until > Instant::now());
        done.error.map_or(Ok(true), Err)
    }

    async fn nodes(&self) -> Result<Vec<Node>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Nodes { reply })
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    async fn holders(&self, domain: &str) -> Result<Vec<Holder>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Holders {
                domain: domain.to_owned(),
                follow: false,
                reply,
            })
            .await
            .map_err(|_| Stopped)?;
        Ok(answer.await.map_err(|_| Stopped)?.holders)
    }
}

/// The ids a client's delete job removes, as its tasks' data names them
/// ([`domain_proto::DELETE_INPUT`]; a posemesh client sends none).
pub(crate) fn deleted_ids(request: &JobRequest) -> Option<Vec<String>> {
    let task = request
        .tasks
        .iter()
        .find(|task| task.capability_filters.endpoint == DELETE_V1)?;
    let input: DeleteDataInputV1 = task
        .data
        .as_ref()?
        .unpack(domain_proto::DELETE_INPUT)?
        .ok()?;
    Some(input.ids)
}

/// The scheduler thread stopped: so does the repair loop.
struct Stopped;

/// Whether `node` offers `endpoint`.
fn serves(node: &Node, endpoint: &str) -> bool {
    node.capabilities
        .iter()
        .any(|capability| capability.endpoint == endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_names_its_domain_and_id_only() {
        let tombstones = Tombstones::default();
        tombstones.record("lab", ["a".to_owned(), "b".to_owned()]);
        assert!(tombstones.contains("lab", "a"));
        assert!(tombstones.contains("lab", "b"));
        assert!(!tombstones.contains("lab", "c"));
        assert!(!tombstones.contains("other", "a"));
    }

    #[test]
    fn tombstones_beyond_the_bound_forget_the_oldest_first() {
        let tombstones = Tombstones::default();
        tombstones.record("lab", (0..MAX_TOMBSTONES + 2).map(|i| i.to_string()));
        assert!(!tombstones.contains("lab", "0"));
        assert!(!tombstones.contains("lab", "1"));
        assert!(tombstones.contains("lab", "2"));
        assert!(tombstones.contains("lab", &(MAX_TOMBSTONES + 1).to_string()));
    }

    #[test]
    fn a_delete_job_names_its_ids_in_its_tasks_data_and_other_jobs_name_none() {
        use domain_proto::task::{Any, CapabilityFilters, TaskRequest};
        let task = |endpoint: &str, data: Option<Any>| TaskRequest {
            capability_filters: CapabilityFilters {
                endpoint: endpoint.into(),
                ..CapabilityFilters::default()
            },
            data,
            ..TaskRequest::default()
        };
        let ids = vec!["a".to_owned(), "b".to_owned()];
        let data = Any::pack(
            domain_proto::DELETE_INPUT,
            &DeleteDataInputV1 { ids: ids.clone() },
        );
        let job = |tasks| JobRequest {
            tasks,
            ..JobRequest::default()
        };
        assert_eq!(
            deleted_ids(&job(vec![task(DELETE_V1, Some(data.clone()))])),
            Some(ids)
        );
        // A posemesh client's delete, an upload, garbage: nothing remembered.
        assert_eq!(deleted_ids(&job(vec![task(DELETE_V1, None)])), None);
        assert_eq!(deleted_ids(&job(vec![task("/store/v1", Some(data))])), None);
        let garbage = Any {
            type_url: domain_proto::DELETE_INPUT.into(),
            value: vec![0xff; 3],
        };
        assert_eq!(
            deleted_ids(&job(vec![task(DELETE_V1, Some(garbage))])),
            None
        );
    }
}
