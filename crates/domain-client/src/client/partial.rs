//! Downloads that were cut: their partial files, and the prefixes they resume from.
//!
//! An item downloading into a folder is written to `.<id>.part` beside its final name
//! and renamed once its content matches its root. A transfer cut part-way leaves that
//! file; the next download into the folder hashes its whole chunks and asks the node to
//! send only the rest (`resume_from` on `/load/v1`). The root is checked over the prefix
//! and the rest together, so a prefix that was damaged on disk fails the check, and its
//! file is removed rather than resumed again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use domain_capabilities::Prefixes;
use domain_merkle::{CHUNK_SIZE, MerkleBuilder};

use super::ClientError;
use super::download::check_id;

/// Partial files a download hashes to resume at most; more are downloaded whole.
const MAX_RESUMED: usize = 64;

/// Where the content of item `id` is written until it is complete.
pub(crate) fn partial_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!(".{id}.part"))
}

/// The prefixes of the partial files in `dir` (only those of `ids`, unless it is empty:
/// a query by name may match any of them), but not those of `discarded`: for each, its
/// whole chunks hashed. Files that cannot be read are left out (downloaded whole, and
/// rewritten).
pub(crate) async fn held_prefixes(
    dir: &Path,
    ids: &[String],
    discarded: &BTreeSet<String>,
) -> Prefixes {
    let mut prefixes = Prefixes::new();
    for (id, path) in partial_files(dir, ids).await {
        if discarded.contains(&id) {
            continue;
        }
        let hashed = tokio::task::spawn_blocking(move || hash_prefix(&path)).await;
        match hashed {
            Ok(Ok(prefix)) => {
                // Whole chunks by construction, so the insert cannot refuse it.
                let _ = prefixes.insert(id, prefix);
            }
            Ok(Err(error)) => {
                tracing::debug!(%id, error = %domain_proto::ErrorChain(&error), "partial download not resumed")
            }
            Err(error) => {
                tracing::debug!(%id, error = %domain_proto::ErrorChain(&error), "partial download not resumed")
            }
        }
    }
    prefixes
}

/// The `.<id>.part` files of `dir` whose id is one a download would write, and one of
/// `ids` if that is not empty.
async fn partial_files(dir: &Path, ids: &[String]) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return found;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|name| name.strip_prefix('.')?.strip_suffix(".part"))
        else {
            continue;
        };
        let wanted = ids.is_empty() || ids.iter().any(|wanted| wanted == id);
        if wanted && check_id(id).is_ok() {
            found.push((id.to_owned(), entry.path()));
            if found.len() == MAX_RESUMED {
                break;
            }
        }
    }
    found
}

/// The Merkle builder over the whole chunks at the start of the file at `path`.
fn hash_prefix(path: &Path) -> std::io::Result<MerkleBuilder> {
    use std::io::Read as _;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    no_follow(&mut options);
    let file = options.open(path)?;
    let whole = file.metadata()?.len() / CHUNK_SIZE as u64 * CHUNK_SIZE as u64;
    let mut builder = MerkleBuilder::new();
    if builder.update_from_reader(file.take(whole))? != whole {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(builder)
}

/// Opens the partial file at `path` to receive an item's content from `offset` on:
/// whatever lies past `offset` (a piece of a chunk, or all of it when the node sends
/// the whole content) is cut off.
///
/// The file is locked for this process: two downloads of one item into one folder at
/// once would write over each other.
pub(crate) async fn open_partial(path: &Path, offset: u64) -> Result<std::fs::File, ClientError> {
    let io = |action, e| ClientError::io(action, path, e);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    no_follow(&mut options);
    let file = options.open(path).map_err(|e| io("creating", e))?;
    lock(&file).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => ClientError::PartialInUse {
            path: path.to_owned(),
        },
        _ => io("locking", e),
    })?;
    file.set_len(offset).map_err(|e| io("truncating", e))?;
    Ok(file)
}

/// Moves the complete, synced partial file at `partial` to `path`; unless `overwrite`,
/// never over a file that is there (checked by the rename itself, so a file that appears
/// meanwhile is not replaced either).
///
/// # Errors
/// [`ClientError::WouldReplace`]; [`ClientError::Io`] when the rename fails.
pub(crate) async fn publish(
    partial: &Path,
    path: &Path,
    overwrite: bool,
) -> Result<(), ClientError> {
    let (from, to) = (partial.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || publish_blocking(&from, &to, overwrite))
        .await
        .map_err(|e| ClientError::io("renaming into place", path, e.into()))?
}

/// [`publish`] on the calling thread.
pub(crate) fn publish_blocking(
    partial: &Path,
    path: &Path,
    overwrite: bool,
) -> Result<(), ClientError> {
    let renamed = if overwrite {
        std::fs::rename(partial, path)
    } else {
        rename_no_replace(partial, path)
    };
    match renamed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(ClientError::WouldReplace {
            path: path.to_owned(),
        }),
        Err(e) => Err(ClientError::io("renaming into place", path, e)),
    }
}

/// Makes the content of `files`, all in the folder `dir`, durable: one `syncfs` of the
/// folder's file system for all of them where there is one (a fsync per small file costs
/// a journal commit each), else a fsync of each.
pub(crate) fn sync_together(dir: &Path, files: &[&std::fs::File]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let _ = files;
        let dir = std::fs::File::open(dir)?;
        rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        files.iter().try_for_each(|file| file.sync_all())
    }
}

#[cfg(target_os = "linux")]
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE).map_err(std::io::Error::from)
}

/// Without an atomic form, a check then a rename: a file that appears in between is
/// replaced.
#[cfg(not(target_os = "linux"))]
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(std::io::ErrorKind::AlreadyExists.into());
    }
    std::fs::rename(from, to)
}

/// Makes `options` refuse to open a symbolic link: a partial file planted as a link
/// would otherwise have the download write (or read) wherever it points.
fn no_follow(options: &mut std::fs::OpenOptions) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(NO_FOLLOW);
    }
    #[cfg(not(unix))]
    let _ = options;
}

#[cfg(target_os = "linux")]
const NO_FOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
#[cfg(all(unix, not(target_os = "linux")))]
const NO_FOLLOW: i32 = 0x100;

/// Takes the exclusive advisory lock of `file`, or fails with `WouldBlock` at once.
/// (`File::try_lock` needs Rust 1.89; the workspace supports 1.85.)
#[cfg(target_os = "linux")]
fn lock(file: &std::fs::File) -> std::io::Result<()> {
    use rustix::fs::{FlockOperation, flock};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn lock(_: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_partial_file_resumes_from_its_last_whole_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..3 * CHUNK_SIZE + 100).map(|i| i as u8).collect();
        std::fs::write(partial_path(dir.path(), "item-1"), &bytes).unwrap();
        // Not ids a download writes: never resumed.
        std::fs::write(dir.path().join("..part"), b"x").unwrap();
        std::fs::write(dir.path().join(".item-2.tmp"), b"x").unwrap();

        let found = partial_files(dir.path(), &[]).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "item-1");
        // A download of other ids leaves this one alone.
        assert!(
            partial_files(dir.path(), &["item-3".to_owned()])
                .await
                .is_empty()
        );
        assert_eq!(
            partial_files(dir.path(), &["item-1".to_owned()])
                .await
                .len(),
            1
        );
        let prefix = hash_prefix(&found[0].1).unwrap();
        let mut expected = MerkleBuilder::new();
        expected.update(&bytes[..3 * CHUNK_SIZE]);
        assert_eq!(prefix.len(), 3 * CHUNK_SIZE as u64);
        assert_eq!(prefix.finalize(), expected.finalize());
        assert!(
            !held_prefixes(dir.path(), &[], &BTreeSet::new())
                .await
                .is_empty()
        );
        // A partial whose root check failed once is not resumed again.
        let discarded = BTreeSet::from(["item-1".to_owned()]);
        assert!(held_prefixes(dir.path(), &[], &discarded).await.is_empty());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_partial_planted_as_a_link_is_neither_followed_nor_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("Makefile");
        std::fs::write(&victim, vec![b'x'; 2 * CHUNK_SIZE]).unwrap();
        let partial = partial_path(dir.path(), "item-1");
        std::os::unix::fs::symlink(&victim, &partial).unwrap();

        assert!(
            held_prefixes(dir.path(), &[], &BTreeSet::new())
                .await
                .is_empty()
        );
        assert!(open_partial(&partial, 0).await.is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), vec![b'x'; 2 * CHUNK_SIZE]);
    }

    #[tokio::test]
    async fn a_download_replaces_no_file_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (partial, path) = (dir.path().join(".a.part"), dir.path().join("a"));
        std::fs::write(&path, b"the user's").unwrap();
        std::fs::write(&partial, b"downloaded").unwrap();
        assert!(matches!(
            publish(&partial, &path, false).await,
            Err(ClientError::WouldReplace { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"the user's");
        publish(&partial, &path, true).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"downloaded");
        std::fs::write(&partial, b"new").unwrap();
        publish(&partial, &dir.path().join("b"), false)
            .await
            .unwrap();
        assert!(!partial.exists());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn opening_a_partial_cuts_it_at_the_offset_and_locks_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = partial_path(dir.path(), "item-1");
        std::fs::write(&path, vec![7; 2 * CHUNK_SIZE + 5]).unwrap();
        let file = open_partial(&path, CHUNK_SIZE as u64).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), CHUNK_SIZE as u64);
        assert!(matches!(
            open_partial(&path, 0).await,
            Err(ClientError::PartialInUse { .. })
        ));
        drop(file);
        open_partial(&path, 0).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
