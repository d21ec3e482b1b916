//! The metadata half of a [`LocalDatastore`](crate::LocalDatastore): a [`Catalog`].
//!
//! A local store keeps content as blob files named by their Merkle root and metadata in a
//! catalog: [`RedbCatalog`](crate::RedbCatalog) (a redb file beside the blobs, the default)
//! or a server database (`domain-postgres`). The store owns every rule that is not about
//! where rows live: the order of a put (blob published, then row committed), which
//! requests of a batch succeed (its `Planner`), reference counts of blobs, removing blob
//! files no item uses, and the repair at open. A catalog only reads rows and applies a
//! [`Plan`] atomically, so every backend keeps the same promises by construction.
//!
//! Only the store's commit worker writes to a catalog (one thread, one process: a catalog
//! must refuse a second process), so a plan made from rows read just before it is applied
//! cannot be overtaken. Calls block; the store makes them off the async runtime.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use domain_merkle::Root;
use domain_proto::DomainId;
use domain_proto::domain_data::{Metadata, UpsertMetadata};

use crate::store::{DatastoreError, QueryFilter, is_replica};

/// An item's key in a catalog: its domain and id.
pub type ItemKey = (DomainId, String);

/// A blob's key in a catalog: its domain and Merkle root (hex).
pub type BlobKey = (DomainId, String);

/// What a catalog holds under an item key: the item, or why its row is unusable (it does
/// not decode, or contradicts itself).
pub type Row = Result<Metadata, String>;

/// What one domain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainUsage {
    /// The domain.
    pub domain: DomainId,
    /// Its items.
    pub items: u64,
    /// Their content bytes.
    pub bytes: u64,
}

/// The changes of one commit, applied by [`Catalog::apply`] in one transaction: all of
/// them or none.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Rows to remove, as they are stored now (the indexes need their name and type).
    pub removed: Vec<(DomainId, Metadata)>,
    /// Rows to write, after the removals: new ids, or ids just removed.
    pub written: Vec<(DomainId, Metadata)>,
    /// Change in the number of items using each blob. A blob whose count ends at zero or
    /// below is forgotten and reported unused.
    pub blob_users: BTreeMap<BlobKey, i64>,
}

impl Plan {
    /// Whether applying the plan changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.written.is_empty() && self.blob_users.is_empty()
    }

    /// Net change of each domain's item count and content bytes.
    #[must_use]
    pub fn usage_deltas(&self) -> BTreeMap<DomainId, (i64, i64)> {
        let mut deltas: BTreeMap<DomainId, (i64, i64)> = BTreeMap::new();
        for (domain, item) in &self.removed {
            let delta = deltas.entry(domain.clone()).or_default();
            delta.0 -= 1;
            delta.1 -= i64::from(item.size);
        }
        for (domain, item) in &self.written {
            let delta = deltas.entry(domain.clone()).or_default();
            delta.0 += 1;
            delta.1 += i64::from(item.size);
        }
        deltas
    }
}

/// Where a [`LocalDatastore`](crate::LocalDatastore) keeps its metadata.
///
/// Every method blocks. A failure of the catalog itself (its file, its server) is
/// [`DatastoreError::Db`]; the store then fails the requests of that commit and goes on
/// with the next, so a catalog that can recover (reopen a file, reconnect) should do so
/// before its next call returns.
pub trait Catalog: Send + Sync + fmt::Debug + 'static {
    /// What kind of catalog this is, in one line (`redb`, `postgres schema node_1`): a store
    /// folder records the kind it was made with and refuses another, whose rows would not
    /// name its blobs (opened with an empty catalog, the repair would remove every blob as
    /// unused).
    fn kind(&self) -> String;

    /// The rows stored under `keys`; keys without a row are left out.
    ///
    /// # Errors
    /// [`DatastoreError::Db`].
    fn fetch(&self, keys: &BTreeSet<ItemKey>) -> Result<HashMap<ItemKey, Row>, DatastoreError>;

    /// Applies `plan` in one transaction, durable when this returns. Answers the blobs
    /// that no item uses any more.
    ///
    /// # Errors
    /// [`DatastoreError::Db`]; nothing of the plan is applied then.
    fn apply(&self, plan: &Plan) -> Result<Vec<BlobKey>, DatastoreError>;

    /// Which of `blobs` some item uses.
    ///
    /// # Errors
    /// [`DatastoreError::Db`].
    fn blobs_used(&self, blobs: &BTreeSet<BlobKey>) -> Result<BTreeSet<BlobKey>, DatastoreError>;

    /// Item `id` of `domain`.
    ///
    /// # Errors
    /// [`DatastoreError::Db`], or [`DatastoreError::Corrupt`] for an unusable row.
    fn item(&self, domain: &DomainId, id: &str) -> Result<Option<Metadata>, DatastoreError>;

    /// Every item of `domain` that `filter` matches, ordered by id.
    ///
    /// # Errors
    /// [`DatastoreError::Db`], or [`DatastoreError::Corrupt`] for an unusable row.
    fn query(
        &self,
        domain: &DomainId,
        filter: &QueryFilter,
    ) -> Result<Vec<Metadata>, DatastoreError>;

    /// Items and content bytes of every domain with at least one item, in domain order,
    /// from counters (no scan).
    ///
    /// # Errors
    /// [`DatastoreError::Db`].
    fn usage(&self) -> Result<Vec<DomainUsage>, DatastoreError>;

    /// Every domain the catalog has rows of.
    ///
    /// # Errors
    /// [`DatastoreError::Db`].
    fn domains(&self) -> Result<BTreeSet<DomainId>, DatastoreError>;

    /// Brings `domain`'s rows into agreement with its blob files (root → length), in one
    /// transaction: removes items whose blob is missing or of another length and rows that
    /// are unusable, and sets each blob's user count to the items using it. Answers the ids
    /// removed. Runs at open, before the store serves.
    ///
    /// # Errors
    /// [`DatastoreError::Db`].
    fn reconcile(
        &self,
        domain: &DomainId,
        files: &BTreeMap<String, u64>,
    ) -> Result<Vec<String>, DatastoreError>;
}

/// What [`Catalog::reconcile`] decides for a domain, from its rows and its blob files:
/// shared by the catalogs so that they repair alike.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reconciliation {
    /// Ids of the rows to remove, with the item when the row was usable.
    pub removed: Vec<(String, Option<Metadata>)>,
    /// Items using each blob, for the blobs in use.
    pub blob_users: BTreeMap<String, u64>,
}

impl Reconciliation {
    /// Decides, for the `rows` of a domain and its blob `files` (root → length).
    #[must_use]
    pub fn new(
        rows: impl IntoIterator<Item = (String, Row)>,
        files: &BTreeMap<String, u64>,
    ) -> Self {
        let mut out = Self::default();
        for (id, row) in rows {
            match row {
                Ok(item) => {
                    let root = item.hash.clone().unwrap_or_default();
                    if files.get(&root) == Some(&u64::from(item.size)) {
                        *out.blob_users.entry(root).or_default() += 1;
                    } else {
                        tracing::warn!(id, root, "item without its blob; removed");
                        out.removed.push((id, Some(item)));
                    }
                }
                Err(reason) => {
                    tracing::warn!(id, reason, "unusable item; removed");
                    out.removed.push((id, None));
                }
            }
        }
        out
    }
}

/// Checks a stored row: it must name itself `id` and carry a Merkle root.
///
/// # Errors
/// Why the row is unusable.
pub fn check_row(id: &str, item: Metadata) -> Row {
    if item.id != id {
        return Err(format!(
            "stored under {id:?} but names itself {:?}",
            item.id
        ));
    }
    if item
        .hash
        .as_deref()
        .is_none_or(|h| h.parse::<Root>().is_err())
    {
        return Err(format!("hash {:?} is not a Merkle root", item.hash));
    }
    Ok(item)
}

/// Decides the outcome of each put and delete of a commit, in order, against the rows
/// they touch, and gathers the [`Plan`] that applies the ones that succeed.
///
/// Requests of one batch see each other: a delete after a put of the same id removes it.
#[derive(Debug)]
pub(crate) struct Planner {
    /// Rows before the batch.
    before: HashMap<ItemKey, Row>,
    /// Rows as the batch leaves them so far (`None`: removed); keys not here are as before.
    after: HashMap<ItemKey, Option<Metadata>>,
    blob_users: BTreeMap<BlobKey, i64>,
}

impl Planner {
    /// A planner over `before`, the rows of every id the batch names (fetched with
    /// [`Catalog::fetch`]).
    pub(crate) fn new(before: HashMap<ItemKey, Row>) -> Self {
        Self {
            before,
            after: HashMap::new(),
            blob_users: BTreeMap::new(),
        }
    }

    /// The row under `key` as the batch leaves it so far.
    fn current(&self, key: &ItemKey) -> Result<Option<Metadata>, DatastoreError> {
        if let Some(now) = self.after.get(key) {
            return Ok(now.clone());
        }
        match self.before.get(key) {
            None => Ok(None),
            Some(Ok(item)) => Ok(Some(item.clone())),
            Some(Err(reason)) => Err(DatastoreError::Corrupt {
                domain: key.0.clone(),
                id: key.1.clone(),
                reason: reason.clone(),
            }),
        }
    }

    fn users(&mut self, domain: &DomainId, root: &str, delta: i64) {
        *self
            .blob_users
            .entry((domain.clone(), root.to_owned()))
            .or_default() += delta;
    }

    /// A put of `item` whose content has Merkle root `root`: the stored metadata, or why
    /// it cannot be stored.
    pub(crate) fn put(
        &mut self,
        domain: &DomainId,
        item: &UpsertMetadata,
        root: &Root,
    ) -> Result<Metadata, DatastoreError> {
        let (id, old) = if item.is_new {
            (uuid::Uuid::new_v4().to_string(), None)
        } else {
            let key = (domain.clone(), item.id.clone());
            match self.current(&key)? {
                Some(old) => (item.id.clone(), Some(old)),
                // A copy of an item held elsewhere keeps that item's id.
                None if is_replica(item) => (item.id.clone(), None),
                None => {
                    return Err(DatastoreError::NotFound {
                        domain: domain.clone(),
                        id: item.id.clone(),
                    });
                }
            }
        };
        let stored = Metadata {
            name: item.name.clone(),
            data_type: item.data_type.clone(),
            size: item.size,
            id,
            hash: Some(root.to_string()),
            properties: item.properties.clone(),
            content_offset: None,
        };
        self.users(domain, &root.to_string(), 1);
        if let Some(old_root) = old.as_ref().and_then(|old| old.hash.as_deref()) {
            self.users(domain, old_root, -1);
        }
        self.after
            .insert((domain.clone(), stored.id.clone()), Some(stored.clone()));
        Ok(stored)
    }

    /// A delete of item `id`: the removed item, or why not.
    pub(crate) fn delete(
        &mut self,
        domain: &DomainId,
        id: &str,
    ) -> Result<Metadata, DatastoreError> {
        let key = (domain.clone(), id.to_owned());
        let Some(old) = self.current(&key)? else {
            return Err(DatastoreError::NotFound {
                domain: domain.clone(),
                id: id.to_owned(),
            });
        };
        if let Some(root) = old.hash.as_deref() {
            self.users(domain, root, -1);
        }
        self.after.insert(key, None);
        Ok(old)
    }

    /// The net changes of the batch: rows removed or replaced, rows written, blob counts.
    pub(crate) fn finish(self) -> Plan {
        let mut plan = Plan {
            blob_users: self
                .blob_users
                .into_iter()
                .filter(|(_, delta)| *delta != 0)
                .collect(),
            ..Plan::default()
        };
        let mut after: Vec<(ItemKey, Option<Metadata>)> = self.after.into_iter().collect();
        // Applied in key order, so that two runs of one batch write alike.
        after.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, now) in after {
            let before = self.before.get(&key).and_then(|row| row.as_ref().ok());
            if before == now.as_ref() {
                continue;
            }
            if let Some(before) = before {
                plan.removed.push((key.0.clone(), before.clone()));
            }
            if let Some(now) = now {
                plan.written.push((key.0, now));
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain_merkle::root_of;

    fn domain() -> DomainId {
        DomainId::new("d").unwrap_or_else(|e| panic!("{e}"))
    }

    fn upsert(id: &str, is_new: bool) -> UpsertMetadata {
        UpsertMetadata {
            name: "n".into(),
            data_type: "t".into(),
            size: 3,
            is_new,
            id: id.into(),
            ..Default::default()
        }
    }

    fn stored(id: &str, content: &[u8]) -> Metadata {
        Metadata {
            name: "n".into(),
            data_type: "t".into(),
            size: 3,
            id: id.into(),
            hash: Some(root_of(content).to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn a_put_then_a_delete_of_the_same_new_item_in_one_batch_changes_no_row() {
        let mut planner = Planner::new(HashMap::new());
        let put = planner
            .put(&domain(), &upsert("", true), &root_of(b"abc"))
            .unwrap_or_else(|e| panic!("{e}"));
        planner
            .delete(&domain(), &put.id)
            .unwrap_or_else(|e| panic!("{e}"));
        let plan = planner.finish();
        assert!(
            plan.removed.is_empty() && plan.written.is_empty(),
            "{plan:?}"
        );
        // The blob gained and lost a user: nothing to count, the store checks its file.
        assert!(plan.blob_users.is_empty(), "{plan:?}");
    }

    #[test]
    fn replacing_an_item_removes_its_old_row_and_moves_one_user_between_blobs() {
        let old = stored("x", b"old");
        let key = (domain(), "x".to_owned());
        let mut planner = Planner::new(HashMap::from([(key, Ok(old.clone()))]));
        let new = planner
            .put(&domain(), &upsert("x", false), &root_of(b"new"))
            .unwrap_or_else(|e| panic!("{e}"));
        let plan = planner.finish();
        assert_eq!(plan.removed, vec![(domain(), old)]);
        assert_eq!(plan.written, vec![(domain(), new)]);
        assert_eq!(
            plan.blob_users,
            BTreeMap::from([
                ((domain(), root_of(b"new").to_string()), 1),
                ((domain(), root_of(b"old").to_string()), -1),
            ])
        );
        assert_eq!(plan.usage_deltas(), BTreeMap::from([(domain(), (0, 0))]));
    }

    #[test]
    fn an_upsert_of_a_missing_or_unusable_item_fails_alone() {
        let key = (domain(), "bad".to_owned());
        let mut planner = Planner::new(HashMap::from([(key, Err("garbled".to_owned()))]));
        assert!(matches!(
            planner.put(&domain(), &upsert("gone", false), &root_of(b"abc")),
            Err(DatastoreError::NotFound { .. })
        ));
        assert!(matches!(
            planner.delete(&domain(), "bad"),
            Err(DatastoreError::Corrupt { .. })
        ));
        let ok = planner.put(&domain(), &upsert("", true), &root_of(b"abc"));
        assert!(ok.is_ok());
        assert_eq!(planner.finish().written.len(), 1);
    }

    #[test]
    fn a_replica_is_stored_under_its_own_id_whether_or_not_it_exists() {
        let mut planner = Planner::new(HashMap::new());
        let mut copy = upsert("copied", false);
        copy.replica = Some(true);
        let stored = planner
            .put(&domain(), &copy, &root_of(b"abc"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stored.id, "copied");
    }

    #[test]
    fn a_row_must_name_itself_and_carry_a_root() {
        assert!(check_row("x", stored("x", b"abc")).is_ok());
        assert!(check_row("y", stored("x", b"abc")).is_err());
        let mut no_root = stored("x", b"abc");
        no_root.hash = Some("nope".into());
        assert!(check_row("x", no_root).is_err());
    }

    #[test]
    fn reconciling_keeps_items_whose_blob_is_whole_and_counts_their_users() {
        let whole = stored("a", b"abc");
        let twin = stored("b", b"abc");
        let short = stored("c", b"xyz");
        let files = BTreeMap::from([
            (root_of(b"abc").to_string(), 3),
            (root_of(b"xyz").to_string(), 2),
        ]);
        let rows = vec![
            ("a".to_owned(), Ok(whole)),
            ("b".to_owned(), Ok(twin)),
            ("c".to_owned(), Ok(short.clone())),
            ("d".to_owned(), Err("garbled".to_owned())),
        ];
        let decided = Reconciliation::new(rows, &files);
        assert_eq!(
            decided.removed,
            vec![("c".to_owned(), Some(short)), ("d".to_owned(), None)]
        );
        assert_eq!(
            decided.blob_users,
            BTreeMap::from([(root_of(b"abc").to_string(), 2)])
        );
    }
}
