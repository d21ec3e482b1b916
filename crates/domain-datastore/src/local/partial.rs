//! The bytes of resumable puts that were cut short, kept so that a later put under the
//! same key continues where they end.
//!
//! A kept put is one file, `partials/<id>`, holding the first whole chunks of the item's
//! content; `<id>` is the BLAKE3 hash of the domain, the sender's key and the item's size,
//! so a key can neither escape the folder nor resume an item of another size. A put that
//! resumes moves the file back into `tmp/` first, so a crash while it runs loses the kept
//! bytes rather than leaving a file in an unknown state here. The folder holds at most
//! [`LocalOptions::partial_bytes`](super::LocalOptions::partial_bytes) (the oldest files
//! go first) and nothing older than [`LocalOptions::partial_ttl`](super::LocalOptions).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::io_error;
use crate::store::{DatastoreError, ResumePoint};
use domain_merkle::{CHUNK_SIZE, MerkleBuilder};
use domain_proto::DomainId;

/// Trees of kept files remembered at once; the others are read back from their files.
const KNOWN_TREES: usize = 256;

/// The kept bytes of cut puts, and which keys a put is using now.
#[derive(Debug)]
pub(crate) struct Partials {
    dir: PathBuf,
    limit: u64,
    ttl: Duration,
    slots: Mutex<HashMap<String, Slot>>,
    /// Told whenever a put lets its key go.
    released: tokio::sync::Notify,
}

#[derive(Debug)]
enum Slot {
    /// A put under this key is under way: no other may use its bytes.
    Busy,
    /// The tree of the kept file, as the put that kept it built it: no need to read the
    /// file back to offer it.
    Known(MerkleBuilder),
}

/// A key a put holds: nobody else resumes from it until it is dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    partials: Arc<Partials>,
    id: String,
    known: Option<MerkleBuilder>,
}

impl Partials {
    /// Opens `dir` (created if missing) and removes what expired or is not a kept put.
    pub(crate) fn open(dir: PathBuf, limit: u64, ttl: Duration) -> Result<Self, DatastoreError> {
        std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
        let partials = Self {
            dir,
            limit,
            ttl,
            slots: Mutex::new(HashMap::new()),
            released: tokio::sync::Notify::new(),
        };
        for (path, _, modified) in partials.files()? {
            let is_id = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| {
                    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
                });
            if !is_id || partials.expired(modified) {
                remove(&path)?;
            }
        }
        Ok(partials)
    }

    /// The name of what a put of `size` bytes under `key` in `domain` keeps.
    pub(crate) fn id(domain: &DomainId, key: &str, size: u32) -> String {
        let mut hasher = blake3::Hasher::new_derive_key("domain-cluster partial upload v1");
        // Lengths first, so no two different triples hash the same bytes.
        hasher.update(&(domain.as_str().len() as u64).to_le_bytes());
        hasher.update(domain.as_str().as_bytes());
        hasher.update(&(key.len() as u64).to_le_bytes());
        hasher.update(key.as_bytes());
        hasher.update(&size.to_le_bytes());
        hasher.finalize().to_hex().to_string()
    }

    pub(crate) fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What is kept under `id` for an item of `size` bytes; `None` when nothing is, or a
    /// put holds the key. Reads the file back when its tree is not remembered. Blocking.
    pub(crate) fn point(&self, id: &str, size: u32) -> Result<Option<ResumePoint>, DatastoreError> {
        let known = match self.slots().get(id) {
            Some(Slot::Busy) => return Ok(None),
            Some(Slot::Known(tree)) => Some(tree.clone()),
            None => None,
        };
        let path = self.path(id);
        let (file, len) = match File::open(&path).and_then(|file| {
            let metadata = file.metadata()?;
            Ok((file, metadata))
        }) {
            Ok((file, metadata)) if !self.expired(metadata.modified().ok()) => {
                (file, metadata.len())
            }
            Ok(_) => {
                self.forget(id);
                remove(&path)?;
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(id);
                return Ok(None);
            }
            Err(e) => return Err(io_error("open", &path, e)),
        };
        let offset = whole_chunks(len.min(u64::from(size)));
        let tree = match known {
            Some(tree) if tree.len() == offset => tree,
            _ => {
                let mut tree = MerkleBuilder::new();
                let read = tree
                    .update_from_reader(file.take(offset))
                    .map_err(|e| io_error("read", &path, e))?;
                if read != offset {
                    return Ok(None);
                }
                self.remember(id, &tree);
                tree
            }
        };
        Ok((offset > 0).then(|| ResumePoint {
            offset,
            prefix_root: tree.finalize(),
        }))
    }

    /// Waits up to `patience` for the put holding `id`, if any, to let it go: a sender
    /// whose stream was cut comes back while the receiver is still keeping the bytes of
    /// that stream.
    pub(crate) async fn wait_released(&self, id: &str, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !matches!(self.slots().get(id), Some(Slot::Busy)) {
                return;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return;
            }
        }
    }

    /// Holds `id` for a put; `None` when another put holds it.
    pub(crate) fn claim(self: &Arc<Self>, id: String) -> Option<Claim> {
        let mut slots = self.slots();
        let known = match slots.insert(id.clone(), Slot::Busy) {
            Some(Slot::Busy) => return None,
            Some(Slot::Known(tree)) => Some(tree),
            None => None,
        };
        drop(slots);
        Some(Claim {
            partials: Arc::clone(self),
            id,
            known,
        })
    }

    /// Keeps the first `tree.len()` bytes of the file at `temp` (a whole number of chunks)
    /// under `id`, making room by removing the oldest kept files. `false` when the bytes
    /// alone are over the limit, and nothing is kept. Blocking.
    fn keep(&self, id: &str, temp: &Path, tree: MerkleBuilder) -> Result<bool, DatastoreError> {
        let len = tree.len();
        if len == 0 || len > self.limit {
            return Ok(false);
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(temp)
            .map_err(|e| io_error("open", temp, e))?;
        file.set_len(len)
            .map_err(|e| io_error("truncate", temp, e))?;
        file.sync_all().map_err(|e| io_error("fsync", temp, e))?;
        let mut files = self.files()?;
        files.sort_by_key(|&(_, len, modified)| (modified, len));
        let mut total: u64 = files.iter().map(|&(_, len, _)| len).sum();
        for (path, file_len, _) in files {
            if total + len <= self.limit {
                break;
            }
            remove(&path)?;
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                self.forget(name);
            }
            total -= file_len;
        }
        let path = self.path(id);
        std::fs::rename(temp, &path).map_err(|e| io_error("rename", temp, e))?;
        super::fsync_dir(&self.dir).map_err(|e| io_error("fsync", &self.dir, e))?;
        Ok(true)
    }

    /// Every kept file with its length and modification time.
    fn files(&self) -> Result<Vec<(PathBuf, u64, Option<SystemTime>)>, DatastoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_error("list", &self.dir, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &self.dir, e))?;
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            files.push((entry.path(), metadata.len(), metadata.modified().ok()));
        }
        Ok(files)
    }

    fn expired(&self, modified: Option<SystemTime>) -> bool {
        modified
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > self.ttl)
    }

    fn remember(&self, id: &str, tree: &MerkleBuilder) {
        let mut slots = self.slots();
        if slots.len() >= KNOWN_TREES {
            // Any remembered tree may go: it is read back from its file when needed.
            let stale = slots
                .iter()
                .find_map(|(id, slot)| matches!(slot, Slot::Known(_)).then(|| id.clone()));
            if let Some(stale) = stale {
                slots.remove(&stale);
            }
        }
        if !matches!(slots.get(id), Some(Slot::Busy)) {
            slots.insert(id.to_owned(), Slot::Known(tree.clone()));
        }
    }

    fn forget(&self, id: &str) {
        let mut slots = self.slots();
        if matches!(slots.get(id), Some(Slot::Known(_))) {
            slots.remove(id);
        }
    }
}

impl Claim {
    /// Moves what is kept under the key to `temp` and opens it to continue after its first
    /// `from` bytes, with their tree; `from == 0` drops what is kept and creates `temp`
    /// empty. Blocking.
    ///
    /// # Errors
    /// [`DatastoreError::ResumeLost`] when fewer than `from` bytes are kept.
    pub(crate) fn take(
        &mut self,
        temp: &Path,
        from: u64,
        key: &str,
    ) -> Result<(File, MerkleBuilder), DatastoreError> {
        let kept = self.partials.path(&self.id);
        let known = self.known.take();
        if from == 0 {
            remove(&kept)?;
            let file = File::create_new(temp).map_err(|e| io_error("create", temp, e))?;
            return Ok((file, MerkleBuilder::new()));
        }
        let lost = || DatastoreError::resume_lost(key, from);
        // Checked before the move: a refused start leaves the kept bytes for the next.
        let len = match std::fs::metadata(&kept) {
            Ok(metadata) => metadata.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(lost()),
            Err(e) => return Err(io_error("stat", &kept, e)),
        };
        if len < from || from % CHUNK_SIZE as u64 != 0 {
            self.known = known;
            return Err(lost());
        }
        std::fs::rename(&kept, temp).map_err(|e| io_error("rename", &kept, e))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(temp)
            .map_err(|e| io_error("open", temp, e))?;
        file.set_len(from)
            .map_err(|e| io_error("truncate", temp, e))?;
        let tree = match known {
            Some(tree) if tree.len() == from => tree,
            _ => {
                let mut tree = MerkleBuilder::new();
                tree.update_from_reader(&file)
                    .map_err(|e| io_error("read", temp, e))?;
                tree
            }
        };
        Ok((file, tree))
    }

    /// Keeps the whole chunks of `tree` (the bytes at the start of the file at `temp`)
    /// for the next put under this key. Blocking.
    pub(crate) fn keep(
        mut self,
        temp: &Path,
        mut tree: MerkleBuilder,
    ) -> Result<bool, DatastoreError> {
        tree.truncate_to_chunks();
        let kept = self.partials.keep(&self.id, temp, tree.clone())?;
        if kept {
            self.known = Some(tree);
        }
        Ok(kept)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut slots = self.partials.slots();
        match self.known.take() {
            Some(tree) => slots.insert(self.id.clone(), Slot::Known(tree)),
            None => slots.remove(&self.id),
        };
        drop(slots);
        self.partials.released.notify_waiters();
    }
}

fn whole_chunks(len: u64) -> u64 {
    len / CHUNK_SIZE as u64 * CHUNK_SIZE as u64
}

fn remove(path: &Path) -> Result<(), DatastoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", path, e)),
        _ => Ok(()),
    }
}
