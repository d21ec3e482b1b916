//! The redb schema: one table set per domain, plus the list of domains.
//!
//! For domain `d`:
//! - `d/items`: item id -> `Metadata` (protobuf), the source of truth;
//! - `d/by_name`, `d/by_type`: name / data type -> item ids (multimaps), secondary indexes;
//! - `d/blobs`: Merkle root (hex) -> how many items use that blob file.
//!
//! and for all domains, `domain_bytes`: domain id -> the content bytes of its items, kept in
//! the same transaction as every item change so that [`usage`] costs no scan (a node
//! reports it to its manager with every join).
//!
//! The domain id is validated ([`DomainId`]) before it names anything, and names and data
//! types are only ever keys, never part of a table name or a path.

use domain_proto::domain_data::Metadata;
use prost::Message;
use redb::{
    MultimapTable, MultimapTableDefinition, ReadOnlyMultimapTable, ReadOnlyTable, ReadTransaction,
    ReadableTable, ReadableTableMetadata, Table, TableDefinition, TableError, WriteTransaction,
};

use crate::catalog::DomainUsage;
use domain_proto::DomainId;

/// Every domain that ever stored an item.
pub(super) const DOMAINS: TableDefinition<'static, &str, ()> = TableDefinition::new("domains");

/// The content bytes of each domain's items.
const DOMAIN_BYTES: TableDefinition<'static, &str, u64> = TableDefinition::new("domain_bytes");

/// The names of one domain's tables.
pub(super) struct TableNames {
    items: String,
    by_name: String,
    by_type: String,
    blobs: String,
}

impl TableNames {
    pub(super) fn new(domain: &DomainId) -> Self {
        Self {
            items: format!("{domain}/items"),
            by_name: format!("{domain}/by_name"),
            by_type: format!("{domain}/by_type"),
            blobs: format!("{domain}/blobs"),
        }
    }

    fn items(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.items)
    }

    fn by_name(&self) -> MultimapTableDefinition<'_, &'static str, &'static str> {
        MultimapTableDefinition::new(&self.by_name)
    }

    fn by_type(&self) -> MultimapTableDefinition<'_, &'static str, &'static str> {
        MultimapTableDefinition::new(&self.by_type)
    }

    fn blobs(&self) -> TableDefinition<'_, &'static str, u64> {
        TableDefinition::new(&self.blobs)
    }
}

/// A domain's tables open for writing.
pub(super) struct WriteTables<'t> {
    domain: &'t DomainId,
    bytes: Table<'t, &'static str, u64>,
    pub(super) items: Table<'t, &'static str, &'static [u8]>,
    pub(super) by_name: MultimapTable<'t, &'static str, &'static str>,
    pub(super) by_type: MultimapTable<'t, &'static str, &'static str>,
    pub(super) blobs: Table<'t, &'static str, u64>,
}

impl<'t> WriteTables<'t> {
    /// Opens (creating if needed) the tables of `domain` and records the domain.
    pub(super) fn open(
        txn: &'t WriteTransaction,
        domain: &'t DomainId,
    ) -> Result<Self, redb::Error> {
        txn.open_table(DOMAINS)?.insert(domain.as_str(), ())?;
        let names = TableNames::new(domain);
        Ok(Self {
            domain,
            bytes: txn.open_table(DOMAIN_BYTES)?,
            items: txn.open_table(names.items())?,
            by_name: txn.open_multimap_table(names.by_name())?,
            by_type: txn.open_multimap_table(names.by_type())?,
            blobs: txn.open_table(names.blobs())?,
        })
    }

    /// Adds `item` under its id, to both indexes.
    pub(super) fn insert_item(&mut self, item: &Metadata) -> Result<(), redb::Error> {
        self.items
            .insert(item.id.as_str(), item.encode_to_vec().as_slice())?;
        self.by_name.insert(item.name.as_str(), item.id.as_str())?;
        self.by_type
            .insert(item.data_type.as_str(), item.id.as_str())?;
        self.add_bytes(i128::from(item.size))
    }

    fn add_bytes(&mut self, delta: i128) -> Result<(), redb::Error> {
        let key = self.domain.as_str();
        let now = self.bytes.get(key)?.map_or(0, |b| b.value());
        let next = u64::try_from((i128::from(now) + delta).max(0)).unwrap_or(u64::MAX);
        self.bytes.insert(key, next)?;
        Ok(())
    }

    /// Removes `item` and its index entries.
    pub(super) fn remove_item(&mut self, item: &Metadata) -> Result<(), redb::Error> {
        self.items.remove(item.id.as_str())?;
        self.by_name.remove(item.name.as_str(), item.id.as_str())?;
        self.by_type
            .remove(item.data_type.as_str(), item.id.as_str())?;
        self.add_bytes(-i128::from(item.size))
    }

    /// Adds `delta` to the items using blob `root`; false when none is left (its row is
    /// then gone).
    pub(super) fn add_blob_users(&mut self, root: &str, delta: i64) -> Result<bool, redb::Error> {
        let count = self.blobs.get(root)?.map_or(0, |c| c.value());
        let next = i128::from(count) + i128::from(delta);
        match u64::try_from(next) {
            Ok(next) if next > 0 => {
                self.blobs.insert(root, next)?;
                Ok(true)
            }
            _ => {
                self.blobs.remove(root)?;
                Ok(false)
            }
        }
    }

    /// Sets the users of every blob of the domain to `users`, forgetting the others.
    pub(super) fn set_blob_users(
        &mut self,
        users: &std::collections::BTreeMap<String, u64>,
    ) -> Result<(), redb::Error> {
        self.blobs.retain(|root, _| users.contains_key(root))?;
        for (root, count) in users {
            self.blobs.insert(root.as_str(), *count)?;
        }
        Ok(())
    }
}

/// Items and content bytes of every domain with at least one item, in domain order: a
/// count per table and one counter each, no scan of the items.
pub(super) fn usage(txn: &ReadTransaction) -> Result<Vec<DomainUsage>, redb::Error> {
    let domains = match missing_is_none(txn.open_table(DOMAINS))? {
        Some(domains) => domains,
        None => return Ok(Vec::new()),
    };
    let bytes = missing_is_none(txn.open_table(DOMAIN_BYTES))?;
    let mut out = Vec::new();
    for entry in domains.iter()? {
        let (name, _) = entry?;
        let Ok(domain) = DomainId::new(name.value()) else {
            continue;
        };
        let names = TableNames::new(&domain);
        let items = match missing_is_none(txn.open_table(names.items()))? {
            Some(items) => items.len()?,
            None => 0,
        };
        if items == 0 {
            continue;
        }
        let bytes = match &bytes {
            Some(table) => table.get(domain.as_str())?.map_or(0, |b| b.value()),
            None => 0,
        };
        out.push(DomainUsage {
            domain,
            items,
            bytes,
        });
    }
    Ok(out)
}

/// Counts the content bytes of each domain that has no counter yet (a store written before
/// the counter existed): one scan of its items, once.
pub(super) fn count_missing_bytes(txn: &WriteTransaction) -> Result<(), redb::Error> {
    let mut domains = Vec::new();
    for entry in txn.open_table(DOMAINS)?.iter()? {
        let (name, _) = entry?;
        domains.push(name.value().to_owned());
    }
    let mut counters = txn.open_table(DOMAIN_BYTES)?;
    for name in domains {
        let Ok(domain) = DomainId::new(&name) else {
            continue;
        };
        if counters.get(domain.as_str())?.is_some() {
            continue;
        }
        let names = TableNames::new(&domain);
        let mut total: u64 = 0;
        if let Some(items) = missing_is_none(txn.open_table(names.items()))? {
            for entry in items.iter()? {
                let (_, bytes) = entry?;
                // An item that does not decode counts nothing; the repair reports it.
                if let Ok(item) = Metadata::decode(bytes.value()) {
                    total = total.saturating_add(u64::from(item.size));
                }
            }
        }
        counters.insert(domain.as_str(), total)?;
    }
    Ok(())
}

/// A domain's tables open for reading; `None` fields for a domain that has none yet.
pub(super) struct ReadTables {
    pub(super) items: Option<ReadOnlyTable<&'static str, &'static [u8]>>,
    pub(super) by_name: Option<ReadOnlyMultimapTable<&'static str, &'static str>>,
    pub(super) by_type: Option<ReadOnlyMultimapTable<&'static str, &'static str>>,
    pub(super) blobs: Option<ReadOnlyTable<&'static str, u64>>,
}

impl ReadTables {
    pub(super) fn open(txn: &ReadTransaction, domain: &DomainId) -> Result<Self, redb::Error> {
        let names = TableNames::new(domain);
        Ok(Self {
            items: missing_is_none(txn.open_table(names.items()))?,
            by_name: missing_is_none(txn.open_multimap_table(names.by_name()))?,
            by_type: missing_is_none(txn.open_multimap_table(names.by_type()))?,
            blobs: missing_is_none(txn.open_table(names.blobs()))?,
        })
    }
}

fn missing_is_none<T>(opened: Result<T, TableError>) -> Result<Option<T>, redb::Error> {
    match opened {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
