//! What opening a store checks and repairs: the state an interrupted process leaves.
//!
//! A crash can leave temporary files (an upload in progress), blob files that no committed
//! item uses (renamed into place, then the process died before the metadata commit, or
//! after a delete commit and before the file was removed), and, only if files were lost
//! outside the store's control, items whose blob is missing or of the wrong length. The
//! first two are removed; items without a usable blob are removed from the metadata, so
//! that nothing the store answers is broken. Every repair is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use domain_proto::domain_data::Metadata;
use redb::{Database, ReadableDatabase, ReadableTable};

use super::io_error;
use super::tables::{DOMAINS, ReadTables, WriteTables};
use crate::store::DatastoreError;
use domain_merkle::Root;
use domain_proto::DomainId;

/// What [`LocalDatastore::open`](super::LocalDatastore::open) found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Temporary files of interrupted uploads, removed.
    pub temp_files_removed: Vec<PathBuf>,
    /// Blob files that no item used, removed.
    pub orphan_blobs_removed: Vec<PathBuf>,
    /// Items whose blob file was missing or of the wrong length, or whose metadata did not
    /// decode, removed from the metadata.
    pub items_without_blob: Vec<(DomainId, String)>,
    /// Entries of the blobs folder that are not the store's (not a domain folder), left alone.
    pub unknown_entries: Vec<PathBuf>,
}

impl RepairReport {
    /// True when the store was consistent and nothing was changed.
    pub fn is_clean(&self) -> bool {
        self.temp_files_removed.is_empty()
            && self.orphan_blobs_removed.is_empty()
            && self.items_without_blob.is_empty()
            && self.unknown_entries.is_empty()
    }
}

/// Brings the folders and the metadata back to agreement. Runs before the store serves.
pub(super) fn repair(
    db: &Database,
    tmp_dir: &Path,
    blobs_dir: &Path,
) -> Result<RepairReport, DatastoreError> {
    let mut report = RepairReport::default();
    for entry in read_dir(tmp_dir)? {
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| io_error("remove", &path, e))?;
        tracing::info!(path = %path.display(), "removed the temporary file of an interrupted upload");
        report.temp_files_removed.push(path);
    }

    let mut domains = BTreeSet::new();
    {
        let txn = db.begin_read().map_err(super::db)?;
        match txn.open_table(DOMAINS) {
            Ok(table) => {
                for entry in table.iter().map_err(super::db)? {
                    let (name, _) = entry.map_err(super::db)?;
                    let name = name.value();
                    match DomainId::new(name) {
                        Ok(domain) => {
                            domains.insert(domain);
                        }
                        Err(e) => {
                            tracing::warn!(name, error = %domain_proto::ErrorChain(&e), "metadata names an invalid domain")
                        }
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(super::db(e)),
        }
    }
    for entry in read_dir(blobs_dir)? {
        let path = entry.path();
        match entry.file_name().to_str().map(DomainId::new) {
            Some(Ok(domain)) if path.is_dir() => {
                domains.insert(domain);
            }
            _ => {
                tracing::warn!(path = %path.display(), "not a domain folder; left alone");
                report.unknown_entries.push(path);
            }
        }
    }

    let txn = db.begin_write().map_err(super::db)?;
    for domain in &domains {
        repair_domain(db, &txn, blobs_dir, domain, &mut report)?;
    }
    txn.commit().map_err(super::db)?;
    Ok(report)
}

fn repair_domain(
    db: &Database,
    txn: &redb::WriteTransaction,
    blobs_dir: &Path,
    domain: &DomainId,
    report: &mut RepairReport,
) -> Result<(), DatastoreError> {
    let dir = blobs_dir.join(domain.as_str());
    let mut files: BTreeMap<String, u64> = BTreeMap::new();
    if dir.is_dir() {
        for entry in read_dir(&dir)? {
            let path = entry.path();
            let name = entry.file_name().to_str().map(str::to_owned);
            let len = entry
                .metadata()
                .map_err(|e| io_error("stat", &path, e))?
                .len();
            match name {
                Some(name) if name.parse::<Root>().is_ok() && path.is_file() => {
                    files.insert(name, len);
                }
                _ => {
                    tracing::warn!(path = %path.display(), "not a blob file; left alone");
                    report.unknown_entries.push(path);
                }
            }
        }
    }

    // Read every item first: the write transaction's tables borrow it mutably.
    let mut items: Vec<Metadata> = Vec::new();
    let mut undecodable: Vec<String> = Vec::new();
    {
        let read = db.begin_read().map_err(super::db)?;
        let tables = ReadTables::open(&read, domain).map_err(super::db)?;
        if let Some(table) = &tables.items {
            for entry in table.iter().map_err(super::db)? {
                let (id, bytes) = entry.map_err(super::db)?;
                match super::tables::decode(domain, id.value(), bytes.value()) {
                    Ok(item) => items.push(item),
                    Err(e) => {
                        tracing::warn!(error = %domain_proto::ErrorChain(&e), "undecodable item; removed");
                        undecodable.push(id.value().to_owned());
                    }
                }
            }
        }
    }

    let mut tables = WriteTables::open(txn, domain).map_err(super::db)?;
    for id in undecodable {
        // Its index entries, if any, point nowhere; lookups skip ids without an item.
        tables.items.remove(id.as_str()).map_err(super::db)?;
        report.items_without_blob.push((domain.clone(), id));
    }
    let mut used: BTreeMap<String, u64> = BTreeMap::new();
    for item in items {
        let root = item.hash.clone().unwrap_or_default();
        if files.get(&root) == Some(&u64::from(item.size)) {
            *used.entry(root).or_default() += 1;
        } else {
            tracing::warn!(%domain, id = item.id, root, "item without its blob; removed");
            tables.remove_item(&item).map_err(super::db)?;
            report.items_without_blob.push((domain.clone(), item.id));
        }
    }

    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for entry in tables.blobs.iter().map_err(super::db)? {
        let (root, count) = entry.map_err(super::db)?;
        counted.insert(root.value().to_owned(), count.value());
    }
    if counted != used {
        for root in counted.keys() {
            tables.blobs.remove(root.as_str()).map_err(super::db)?;
        }
        for (root, count) in &used {
            tables
                .blobs
                .insert(root.as_str(), *count)
                .map_err(super::db)?;
        }
    }

    for name in files.keys().filter(|name| !used.contains_key(*name)) {
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(|e| io_error("remove", &path, e))?;
        tracing::info!(path = %path.display(), "removed a blob no item uses");
        report.orphan_blobs_removed.push(path);
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, DatastoreError> {
    std::fs::read_dir(dir)
        .and_then(Iterator::collect)
        .map_err(|e| io_error("list", dir, e))
}
