//! The holder index: for each domain, the nodes that hold some of its data.
//!
//! Listing, downloading, deleting and watching a domain ask exactly these nodes, so the
//! index must know every node that may hold an item. It is fed from two sides:
//! - the scheduler itself: the receiver of every `/store/v1` task that ends DONE (uploads,
//!   copies of replicated items, gateways storing upstream) becomes a holder of the job's
//!   domain at once, before the node reports anything;
//! - the nodes: each join (the heartbeat) carries the node's [`Holdings`], which replace
//!   what the index knew of that node, so items stored without a manager-placed task
//!   (direct uploads), deletes that emptied a domain, and a manager that lost its state
//!   are all covered once the node joins again.
//!
//! A node that is down stays a holder (its data is still there); the answer says whether
//! it is registered now. The index is bounded by the domains a node may report
//! ([`MAX_REPORTED_DOMAINS`]) times the registered nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use domain_proto::discovery::{Holder, Holdings};
use domain_proto::{DomainId, InvalidDomainId};

use crate::store::HolderRecord;

/// The most domains one node may report holding; a larger report is refused.
pub const MAX_REPORTED_DOMAINS: usize = 65_536;

/// What the manager knows of one node's data in one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct HolderStats {
    /// Items, as last reported (0 when only a finished store task is known).
    pub items: u64,
    /// Content bytes of those items.
    pub bytes: u64,
    /// When the manager last learned of them, in ms.
    pub updated_at: u64,
}

/// A node's report that does not fit the index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldingsError {
    /// More domains than [`MAX_REPORTED_DOMAINS`].
    #[error("node {node} reports {count} domains, more than {MAX_REPORTED_DOMAINS}")]
    TooManyDomains {
        /// The node.
        node: String,
        /// Domains reported.
        count: usize,
    },
    /// A domain id that is not one.
    #[error("node {node} reports an invalid domain id")]
    BadDomain {
        /// The node.
        node: String,
        /// What is wrong with it.
        #[source]
        source: InvalidDomainId,
    },
    /// The same domain twice.
    #[error("node {node} reports domain {domain:?} twice")]
    Duplicate {
        /// The node.
        node: String,
        /// The domain.
        domain: String,
    },
}

/// Which holders changed: one domain's, or (a gateway came or went) every domain's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HoldersChange {
    /// The holders of this domain.
    Domain(String),
    /// The holders of every domain.
    Every,
}

/// The stored key of a gateway's record: no domain id is empty.
const GATEWAY_DOMAIN: &str = "";

/// The index, and its changes since the last [`HolderIndex::take_dirty`].
#[derive(Debug, Default)]
pub(crate) struct HolderIndex {
    /// Domain → node → stats.
    domains: HashMap<Arc<str>, BTreeMap<Arc<str>, HolderStats>>,
    /// Node → the domains it holds, so that a report replaces the node's entries.
    by_node: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    /// Gateways, with when they last said so.
    gateways: BTreeMap<Arc<str>, u64>,
    /// (domain, node) records to store or delete (`GATEWAY_DOMAIN` for a gateway).
    dirty: BTreeSet<(Arc<str>, Arc<str>)>,
    /// What followers are told.
    changes: BTreeSet<HoldersChange>,
}

impl HolderIndex {
    /// Restores one stored record.
    pub(crate) fn restore(&mut self, record: HolderRecord) {
        let node: Arc<str> = Arc::from(record.node_id.as_str());
        if record.domain_id == GATEWAY_DOMAIN {
            self.gateways.insert(node, record.updated_at);
            return;
        }
        let domain: Arc<str> = Arc::from(record.domain_id.as_str());
        let stats = HolderStats {
            items: record.items,
            bytes: record.bytes,
            updated_at: record.updated_at,
        };
        self.insert(domain, node, stats);
    }

    fn insert(&mut self, domain: Arc<str>, node: Arc<str>, stats: HolderStats) {
        self.by_node
            .entry(node.clone())
            .or_default()
            .insert(domain.clone());
        self.domains.entry(domain).or_default().insert(node, stats);
    }

    fn remove(&mut self, domain: &Arc<str>, node: &Arc<str>) {
        if let Some(nodes) = self.domains.get_mut(domain) {
            nodes.remove(node);
            if nodes.is_empty() {
                self.domains.remove(domain);
            }
        }
        if let Some(domains) = self.by_node.get_mut(node) {
            domains.remove(domain);
            if domains.is_empty() {
                self.by_node.remove(node);
            }
        }
        self.dirty.insert((domain.clone(), node.clone()));
        self.changes
            .insert(HoldersChange::Domain(domain.to_string()));
    }

    /// `node` finished a `/store/v1` task of `domain` at `now`: it holds data there.
    pub(crate) fn stored(&mut self, domain: &str, node: &Arc<str>, now: u64) {
        let known = self
            .domains
            .get(domain)
            .and_then(|nodes| nodes.get(node))
            .copied();
        let domain: Arc<str> = Arc::from(domain);
        if known.is_none() {
            self.changes
                .insert(HoldersChange::Domain(domain.to_string()));
        }
        let stats = HolderStats {
            updated_at: now,
            ..known.unwrap_or_default()
        };
        self.dirty.insert((domain.clone(), node.clone()));
        self.insert(domain, node.clone(), stats);
    }

    /// Replaces what the index knows of `node` by its report.
    pub(crate) fn report(
        &mut self,
        node: &str,
        holdings: &Holdings,
        now: u64,
    ) -> Result<(), HoldingsError> {
        if holdings.domains.len() > MAX_REPORTED_DOMAINS {
            return Err(HoldingsError::TooManyDomains {
                node: node.to_owned(),
                count: holdings.domains.len(),
            });
        }
        let mut reported: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for entry in &holdings.domains {
            if let Err(source) = DomainId::new(entry.domain_id.as_str()) {
                return Err(HoldingsError::BadDomain {
                    node: node.to_owned(),
                    source,
                });
            }
            if entry.items == 0 {
                continue;
            }
            if reported
                .insert(&entry.domain_id, (entry.items, entry.bytes))
                .is_some()
            {
                return Err(HoldingsError::Duplicate {
                    node: node.to_owned(),
                    domain: entry.domain_id.clone(),
                });
            }
        }
        let node: Arc<str> = Arc::from(node);
        let before = self.by_node.get(&node).cloned().unwrap_or_default();
        for domain in &before {
            if !reported.contains_key(&**domain) {
                self.remove(domain, &node);
            }
        }
        for (domain, (items, bytes)) in reported {
            let known = self
                .domains
                .get(domain)
                .and_then(|nodes| nodes.get(&node))
                .copied();
            let domain: Arc<str> = Arc::from(domain);
            let stats = HolderStats {
                items,
                bytes,
                updated_at: now,
            };
            match known {
                // Only what changed is written: a heartbeat that reports the same counts
                // costs no store write (its time is kept in memory).
                Some(old) if (old.items, old.bytes) == (items, bytes) => {}
                Some(_) => {
                    self.dirty.insert((domain.clone(), node.clone()));
                }
                None => {
                    self.dirty.insert((domain.clone(), node.clone()));
                    self.changes
                        .insert(HoldersChange::Domain(domain.to_string()));
                }
            }
            self.insert(domain, node.clone(), stats);
        }
        let gateway = holdings.gateway == Some(true);
        let was_gateway = self.gateways.contains_key(&node);
        if gateway {
            self.gateways.insert(node.clone(), now);
        } else {
            self.gateways.remove(&node);
        }
        if gateway != was_gateway {
            self.dirty.insert((Arc::from(GATEWAY_DOMAIN), node));
            self.changes.insert(HoldersChange::Every);
        }
        Ok(())
    }

    /// `node` was registered or dropped: followers of its domains see it come or go.
    pub(crate) fn registration_changed(&mut self, node: &str) {
        if self.gateways.contains_key(node) {
            self.changes.insert(HoldersChange::Every);
        }
        if let Some(domains) = self.by_node.get(node) {
            for domain in domains {
                self.changes
                    .insert(HoldersChange::Domain(domain.to_string()));
            }
        }
    }

    /// The holders of `domain` (its own, then the gateways), with `registered` filled in
    /// by the caller's registry: the registered first, the most items first, then by id.
    pub(crate) fn holders(&self, domain: &str, registered: impl Fn(&str) -> bool) -> Vec<Holder> {
        let own = self
            .domains
            .get(domain)
            .into_iter()
            .flatten()
            .map(|(node, stats)| Holder {
                node_id: node.to_string(),
                items: stats.items,
                bytes: stats.bytes,
                updated_at: stats.updated_at,
                registered: registered(node),
                gateway: None,
            });
        let gateways = self
            .gateways
            .iter()
            .filter(|(node, _)| {
                !self
                    .domains
                    .get(domain)
                    .is_some_and(|nodes| nodes.contains_key(*node))
            })
            .map(|(node, &updated_at)| Holder {
                node_id: node.to_string(),
                items: 0,
                bytes: 0,
                updated_at,
                registered: registered(node),
                gateway: Some(true),
            });
        let mut holders: Vec<Holder> = own.chain(gateways).collect();
        holders.sort_by(|a, b| {
            (b.registered, b.items, &a.node_id).cmp(&(a.registered, a.items, &b.node_id))
        });
        holders
    }

    /// How many (domain, node) entries and gateways the index holds.
    pub(crate) fn len(&self) -> usize {
        self.domains.values().map(BTreeMap::len).sum::<usize>() + self.gateways.len()
    }

    /// The records to store and the keys to delete since the last call.
    pub(crate) fn take_dirty(&mut self) -> (Vec<HolderRecord>, Vec<(String, String)>) {
        let mut records = Vec::new();
        let mut removed = Vec::new();
        for (domain, node) in std::mem::take(&mut self.dirty) {
            let record = if &*domain == GATEWAY_DOMAIN {
                self.gateways.get(&node).map(|&updated_at| HolderRecord {
                    domain_id: String::new(),
                    node_id: node.to_string(),
                    items: 0,
                    bytes: 0,
                    updated_at,
                })
            } else {
                self.domains
                    .get(&domain)
                    .and_then(|nodes| nodes.get(&node))
                    .map(|stats| HolderRecord {
                        domain_id: domain.to_string(),
                        node_id: node.to_string(),
                        items: stats.items,
                        bytes: stats.bytes,
                        updated_at: stats.updated_at,
                    })
            };
            match record {
                Some(record) => records.push(record),
                None => removed.push((domain.to_string(), node.to_string())),
            }
        }
        (records, removed)
    }

    /// What changed for followers since the last call.
    pub(crate) fn take_changes(&mut self) -> Vec<HoldersChange> {
        std::mem::take(&mut self.changes).into_iter().collect()
    }

    /// Forgets the changes of an operation whose commit failed.
    pub(crate) fn clear_changes(&mut self) {
        self.changes.clear();
    }
}

#[cfg(test)]
mod tests {
    use domain_proto::discovery::DomainHoldings;

    use super::*;

    fn report(domains: &[(&str, u64)]) -> Holdings {
        Holdings {
            domains: domains
                .iter()
                .map(|&(domain_id, items)| DomainHoldings {
                    domain_id: domain_id.into(),
                    items,
                    bytes: items * 10,
                })
                .collect(),
            gateway: None,
        }
    }

    fn ids(holders: &[Holder]) -> Vec<&str> {
        holders.iter().map(|h| h.node_id.as_str()).collect()
    }

    #[test]
    fn a_report_replaces_what_was_known_of_the_node() {
        let mut index = HolderIndex::default();
        index
            .report("n1", &report(&[("a", 2), ("b", 1)]), 1)
            .unwrap();
        index.report("n1", &report(&[("b", 3)]), 2).unwrap();
        assert!(index.holders("a", |_| true).is_empty());
        let b = index.holders("b", |_| true);
        assert_eq!((b[0].items, b[0].bytes, b[0].updated_at), (3, 30, 2));
        let (records, removed) = index.take_dirty();
        assert_eq!(records.len(), 1);
        assert_eq!(removed, vec![("a".to_owned(), "n1".to_owned())]);
    }

    #[test]
    fn a_domain_reported_with_no_items_is_not_held() {
        let mut index = HolderIndex::default();
        index.report("n1", &report(&[("a", 0)]), 1).unwrap();
        assert!(index.holders("a", |_| true).is_empty());
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn a_finished_store_makes_a_holder_before_any_report() {
        let mut index = HolderIndex::default();
        index.stored("a", &Arc::from("n1"), 5);
        assert_eq!(ids(&index.holders("a", |_| true)), ["n1"]);
        assert_eq!(index.take_changes(), [HoldersChange::Domain("a".into())]);
    }

    #[test]
    fn a_gateway_holds_every_domain_and_registered_holders_come_first() {
        let mut index = HolderIndex::default();
        index.report("n1", &report(&[("a", 1)]), 1).unwrap();
        index.report("n2", &report(&[("a", 9)]), 1).unwrap();
        let gateway = Holdings {
            gateway: Some(true),
            ..Holdings::default()
        };
        index.report("g", &gateway, 1).unwrap();
        assert_eq!(ids(&index.holders("a", |n| n != "n2")), ["n1", "g", "n2"]);
        assert_eq!(ids(&index.holders("other", |_| true)), ["g"]);
        assert!(index.take_changes().contains(&HoldersChange::Every));
    }

    #[test]
    fn reports_too_large_or_malformed_are_refused_whole() {
        let mut index = HolderIndex::default();
        let long = "d".repeat(domain_proto::MAX_DOMAIN_ID_LEN + 1);
        assert!(matches!(
            index.report("n1", &report(&[("a", 1), (&long, 1)]), 1),
            Err(HoldingsError::BadDomain { .. })
        ));
        assert!(matches!(
            index.report("n1", &report(&[("a", 1), ("a", 2)]), 1),
            Err(HoldingsError::Duplicate { .. })
        ));
        let many: Vec<(String, u64)> = (0..=MAX_REPORTED_DOMAINS)
            .map(|i| (format!("d{i}"), 1))
            .collect();
        let many: Vec<(&str, u64)> = many.iter().map(|(d, n)| (d.as_str(), *n)).collect();
        assert!(matches!(
            index.report("n1", &report(&many), 1),
            Err(HoldingsError::TooManyDomains { .. })
        ));
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn stored_records_restore_the_same_index() {
        let mut index = HolderIndex::default();
        index.report("n1", &report(&[("a", 2)]), 1).unwrap();
        let gateway = Holdings {
            gateway: Some(true),
            ..Holdings::default()
        };
        index.report("g", &gateway, 1).unwrap();
        let (records, _) = index.take_dirty();
        let mut restored = HolderIndex::default();
        for record in records {
            restored.restore(record);
        }
        assert_eq!(
            restored.holders("a", |_| true),
            index.holders("a", |_| true)
        );
    }
}
