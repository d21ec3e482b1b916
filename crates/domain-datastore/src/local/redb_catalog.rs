//! [`RedbCatalog`]: a store's metadata in a redb file beside its blobs (the default).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use domain_proto::DomainId;
use domain_proto::domain_data::Metadata;
use prost::Message as _;
use redb::{ReadableDatabase as _, ReadableTable as _};

use super::meta::{self, MetaDb};
use super::tables::{self, DOMAINS, ReadTables, WriteTables};
use crate::catalog::{
    BlobKey, Catalog, DomainUsage, ItemKey, Plan, Reconciliation, Row, check_row,
};
use crate::store::{DatastoreError, QueryFilter};

/// [`Catalog::kind`] of a [`RedbCatalog`].
pub(super) const REDB_KIND: &str = "redb";

/// Metadata in one redb file (`meta.redb` in the store's folder): one table set per
/// domain, indexed by name and data type (see `tables`). Locked while open: a second
/// process cannot open it.
#[derive(Debug, Clone)]
pub struct RedbCatalog {
    db: Arc<MetaDb>,
}

impl RedbCatalog {
    /// Opens (or creates) the catalog in file `path`; redb repairs the file first if it was
    /// not closed cleanly.
    ///
    /// # Errors
    /// [`DatastoreError::Db`], among them when another process has it open.
    pub fn open(path: &Path) -> Result<Self, DatastoreError> {
        let db = Arc::new(MetaDb::open(path).map_err(db)?);
        // Stores written before the per-domain byte counters existed get them once.
        let txn = db
            .get()
            .map_err(self::db)?
            .begin_write()
            .map_err(self::db)?;
        tables::count_missing_bytes(&txn).map_err(self::db)?;
        txn.commit().map_err(self::db)?;
        Ok(Self { db })
    }

    fn read(&self) -> Result<redb::ReadTransaction, DatastoreError> {
        self.db.get().map_err(db)?.begin_read().map_err(db)
    }

    /// Runs one write transaction; after an I/O error (a full disk, say) the file is
    /// opened again, since redb refuses every later transaction until it is.
    fn write<T>(
        &self,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, DatastoreError> {
        let outcome = (|| {
            let txn = self.db.get()?.begin_write()?;
            let value = body(&txn)?;
            txn.commit()?;
            Ok(value)
        })();
        outcome.map_err(|error: redb::Error| {
            if meta::needs_reopen(&error) {
                match self.db.reopen() {
                    Ok(()) => tracing::info!("metadata database opened again after an I/O error"),
                    Err(reopen) => {
                        tracing::error!(error = %domain_proto::ErrorChain(&reopen), "cannot open the metadata database again");
                    }
                }
            }
            db(error)
        })
    }
}

/// Decodes a stored row and checks it.
fn row(id: &str, bytes: &[u8]) -> Row {
    let item = Metadata::decode(bytes).map_err(|e| e.to_string())?;
    check_row(id, item)
}

/// The row as an item, or [`DatastoreError::Corrupt`].
fn usable(domain: &DomainId, id: &str, row: Row) -> Result<Metadata, DatastoreError> {
    row.map_err(|reason| DatastoreError::Corrupt {
        domain: domain.clone(),
        id: id.to_owned(),
        reason,
    })
}

impl Catalog for RedbCatalog {
    fn kind(&self) -> String {
        REDB_KIND.to_owned()
    }

    fn fetch(&self, keys: &BTreeSet<ItemKey>) -> Result<HashMap<ItemKey, Row>, DatastoreError> {
        let txn = self.read()?;
        let mut rows = HashMap::new();
        let mut open: Option<(&DomainId, ReadTables)> = None;
        // Keys are sorted, so each domain's tables open once.
        for key in keys {
            if open.as_ref().is_none_or(|(domain, _)| *domain != &key.0) {
                open = Some((&key.0, ReadTables::open(&txn, &key.0).map_err(db)?));
            }
            let Some((_, tables)) = &open else { continue };
            let Some(items) = &tables.items else { continue };
            if let Some(bytes) = items.get(key.1.as_str()).map_err(db)? {
                rows.insert(key.clone(), row(&key.1, bytes.value()));
            }
        }
        Ok(rows)
    }

    fn apply(&self, plan: &Plan) -> Result<Vec<BlobKey>, DatastoreError> {
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_domain: BTreeMap<&DomainId, (Vec<&Metadata>, Vec<&Metadata>)> = BTreeMap::new();
        for (domain, item) in &plan.removed {
            by_domain.entry(domain).or_default().0.push(item);
        }
        for (domain, item) in &plan.written {
            by_domain.entry(domain).or_default().1.push(item);
        }
        for (domain, _) in plan.blob_users.keys() {
            by_domain.entry(domain).or_default();
        }
        self.write(|txn| {
            let mut unused = Vec::new();
            for (domain, (removed, written)) in by_domain {
                let mut tables = WriteTables::open(txn, domain)?;
                for item in removed {
                    tables.remove_item(item)?;
                }
                for item in written {
                    tables.insert_item(item)?;
                }
                let blobs = plan
                    .blob_users
                    .range((domain.clone(), String::new())..)
                    .take_while(|((d, _), _)| d == domain);
                for ((_, root), delta) in blobs {
                    if !tables.add_blob_users(root, *delta)? {
                        unused.push((domain.clone(), root.clone()));
                    }
                }
            }
            Ok(unused)
        })
    }

    fn blobs_used(&self, blobs: &BTreeSet<BlobKey>) -> Result<BTreeSet<BlobKey>, DatastoreError> {
        let txn = self.read()?;
        let mut used = BTreeSet::new();
        let mut open: Option<(&DomainId, ReadTables)> = None;
        for key in blobs {
            if open.as_ref().is_none_or(|(domain, _)| *domain != &key.0) {
                open = Some((&key.0, ReadTables::open(&txn, &key.0).map_err(db)?));
            }
            let Some((_, tables)) = &open else { continue };
            let Some(table) = &tables.blobs else { continue };
            if table.get(key.1.as_str()).map_err(db)?.is_some() {
                used.insert(key.clone());
            }
        }
        Ok(used)
    }

    fn item(&self, domain: &DomainId, id: &str) -> Result<Option<Metadata>, DatastoreError> {
        let txn = self.read()?;
        let tables = ReadTables::open(&txn, domain).map_err(db)?;
        let Some(items) = &tables.items else {
            return Ok(None);
        };
        match items.get(id).map_err(db)? {
            None => Ok(None),
            Some(bytes) => usable(domain, id, row(id, bytes.value())).map(Some),
        }
    }

    fn query(
        &self,
        domain: &DomainId,
        filter: &QueryFilter,
    ) -> Result<Vec<Metadata>, DatastoreError> {
        let txn = self.read()?;
        let tables = ReadTables::open(&txn, domain).map_err(db)?;
        let Some(items) = &tables.items else {
            return Ok(Vec::new());
        };
        let mut found = BTreeMap::new();
        let mut add_id = |id: &str| -> Result<(), DatastoreError> {
            if !found.contains_key(id) {
                // An index entry without its item is skipped (a repaired unusable row).
                if let Some(bytes) = items.get(id).map_err(db)? {
                    let item = usable(domain, id, row(id, bytes.value()))?;
                    if filter.matches(&item) {
                        found.insert(item.id.clone(), item);
                    }
                }
            }
            Ok(())
        };
        // The most selective way in: exact ids, then an index, then every item.
        let index = if !filter.names().is_empty() {
            Some((&tables.by_name, filter.names()))
        } else if !filter.data_types().is_empty() {
            Some((&tables.by_type, filter.data_types()))
        } else {
            None
        };
        if !filter.ids().is_empty() {
            for id in filter.ids() {
                add_id(id)?;
            }
        } else if let Some((index, keys)) = index {
            let Some(index) = index else {
                return Ok(Vec::new());
            };
            for key in keys {
                for id in index.get(key.as_str()).map_err(db)? {
                    add_id(id.map_err(db)?.value())?;
                }
            }
        } else {
            for entry in items.iter().map_err(db)? {
                let (id, bytes) = entry.map_err(db)?;
                let item = usable(domain, id.value(), row(id.value(), bytes.value()))?;
                if filter.matches(&item) {
                    found.insert(item.id.clone(), item);
                }
            }
        }
        Ok(found.into_values().collect())
    }

    fn usage(&self) -> Result<Vec<DomainUsage>, DatastoreError> {
        tables::usage(&self.read()?).map_err(db)
    }

    fn domains(&self) -> Result<BTreeSet<DomainId>, DatastoreError> {
        let txn = self.read()?;
        let mut domains = BTreeSet::new();
        let table = match txn.open_table(DOMAINS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(domains),
            Err(e) => return Err(db(e)),
        };
        for entry in table.iter().map_err(db)? {
            let (name, _) = entry.map_err(db)?;
            match DomainId::new(name.value()) {
                Ok(domain) => {
                    domains.insert(domain);
                }
                Err(e) => {
                    tracing::warn!(name = name.value(), error = %domain_proto::ErrorChain(&e), "metadata names an invalid domain");
                }
            }
        }
        Ok(domains)
    }

    fn reconcile(
        &self,
        domain: &DomainId,
        files: &BTreeMap<String, u64>,
    ) -> Result<Vec<String>, DatastoreError> {
        let mut rows = Vec::new();
        {
            let txn = self.read()?;
            let tables = ReadTables::open(&txn, domain).map_err(db)?;
            if let Some(items) = &tables.items {
                for entry in items.iter().map_err(db)? {
                    let (id, bytes) = entry.map_err(db)?;
                    rows.push((id.value().to_owned(), row(id.value(), bytes.value())));
                }
            }
        }
        let decided = Reconciliation::new(rows, files);
        self.write(|txn| {
            let mut tables = WriteTables::open(txn, domain)?;
            for (id, item) in &decided.removed {
                match item {
                    Some(item) => tables.remove_item(item)?,
                    // Its index entries, if any, point nowhere; lookups skip ids without
                    // an item.
                    None => {
                        tables.items.remove(id.as_str())?;
                    }
                }
            }
            tables.set_blob_users(&decided.blob_users)?;
            Ok(())
        })?;
        Ok(decided.removed.into_iter().map(|(id, _)| id).collect())
    }
}

/// Converts any redb error into [`DatastoreError::Db`].
pub(super) fn db<E: Into<redb::Error>>(e: E) -> DatastoreError {
    DatastoreError::Db(Arc::new(e.into()))
}
