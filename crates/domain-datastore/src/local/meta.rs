//! The metadata database, which the commit worker closes and opens again after an I/O
//! error: redb refuses every later transaction after one (`PreviousIo`: a disk that filled
//! in the middle of a commit, say) until the database is opened again, which a store
//! that must go on serving once the disk has room cannot wait for.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redb::Database;

/// How long a reopen waits for readers to let go of the old handle (each holds it for one
/// read), in steps.
const READERS_STEP: Duration = Duration::from_millis(10);
const READERS_STEPS: u32 = 500;

/// The store's `meta.redb`: a handle per read or commit, the same one until it is opened
/// again.
#[derive(Debug)]
pub(super) struct MetaDb {
    path: PathBuf,
    current: RwLock<Option<Arc<Database>>>,
}

impl MetaDb {
    /// Opens (or creates) the database at `path`; redb repairs it first if it was not
    /// closed cleanly.
    pub(super) fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Some(Arc::new(db))),
        })
    }

    /// The database, for one read or one commit.
    pub(super) fn get(&self) -> Result<Arc<Database>, redb::Error> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                redb::Error::Io(std::io::Error::other(
                    "the metadata database is closed: opening it again failed",
                ))
            })
    }

    /// Closes the database and opens it again, once the readers of the old handle are
    /// done; meanwhile new readers wait.
    pub(super) fn reopen(&self) -> Result<(), redb::Error> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = current.take() {
            let mut old = old;
            let mut steps = 0;
            // redb holds a lock on its file: the old handle must be gone before a new one.
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if steps < READERS_STEPS => {
                        old = shared;
                        steps += 1;
                        std::thread::sleep(READERS_STEP);
                    }
                    Err(shared) => {
                        *current = Some(shared);
                        return Err(redb::Error::DatabaseAlreadyOpen);
                    }
                }
            }
        }
        let db = Database::create(&self.path)?;
        *current = Some(Arc::new(db));
        Ok(())
    }
}

/// Whether `error` leaves the database refusing every later transaction until reopened.
pub(super) fn needs_reopen(error: &redb::Error) -> bool {
    matches!(error, redb::Error::PreviousIo | redb::Error::Io(_))
}

/// Whether `error` is the file system running out of space.
pub(super) fn is_full(error: &redb::Error) -> bool {
    matches!(error, redb::Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_database_keeps_what_was_committed() {
        let dir = tempfile::tempdir().unwrap();
        let table: redb::TableDefinition<'_, &str, u64> = redb::TableDefinition::new("t");
        let meta = MetaDb::open(&dir.path().join("meta.redb")).unwrap();
        let txn = meta.get().unwrap().begin_write().unwrap();
        txn.open_table(table).unwrap().insert("a", 1).unwrap();
        txn.commit().unwrap();
        // A reader still holds the old handle for a moment.
        let reader = meta.get().unwrap();
        let released = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(reader);
        });
        meta.reopen().unwrap();
        released.join().unwrap();
        let txn = redb::ReadableDatabase::begin_read(&*meta.get().unwrap()).unwrap();
        let value = redb::ReadableTable::get(&txn.open_table(table).unwrap(), "a")
            .unwrap()
            .map(|v| v.value());
        assert_eq!(value, Some(1));
    }
}
