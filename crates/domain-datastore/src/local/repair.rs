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

use super::io_error;
use crate::catalog::{BlobKey, Catalog};
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

/// Brings the folders and the catalog back to agreement. Runs before the store serves.
pub(super) fn repair(
    catalog: &dyn Catalog,
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

    let mut domains = catalog.domains()?;
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
    for domain in &domains {
        repair_domain(catalog, blobs_dir, domain, &mut report)?;
    }
    Ok(report)
}

fn repair_domain(
    catalog: &dyn Catalog,
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

    for id in catalog.reconcile(domain, &files)? {
        report.items_without_blob.push((domain.clone(), id));
    }
    let blobs: BTreeSet<BlobKey> = files
        .keys()
        .map(|root| (domain.clone(), root.clone()))
        .collect();
    let used = catalog.blobs_used(&blobs)?;
    for (_, name) in blobs.difference(&used) {
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
