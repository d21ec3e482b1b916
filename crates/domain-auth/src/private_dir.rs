//! Files and folders only their owner may read: where a manager and a node keep keys,
//! state and data, and where a client keeps its identity.
//!
//! [`open_private_dir`] creates a folder with mode 0700 (whatever the umask), and refuses
//! one that group or others may access, naming its mode. Everything inside such a folder
//! is out of other users' reach whatever its own mode, since reaching it means passing
//! through the folder. [`create_private_dir`] only creates (for a folder the user may have
//! made otherwise, such as the one of a client's identity), and [`write_private`] writes a
//! file of mode 0600 whole or not at all.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Permission bits that let group or others in.
pub(crate) const GROUP_OTHER_BITS: u32 = 0o077;

/// Why a private folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    /// Group or others may access the folder.
    #[error(
        "folder {path} can be accessed by other users (mode {mode:04o}); run `chmod 700 {path}`",
        path = path.display()
    )]
    Exposed {
        /// The folder.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path exists and is not a folder.
    #[error("{path} is not a folder", path = path.display())]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
    /// The folder cannot be created or inspected.
    #[error("cannot {action} {path}", path = path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Creates the folder `path` (and its missing parents) with mode 0700 if it does not
/// exist; checks that only its owner may access it.
///
/// # Errors
/// [`PrivateDirError::Exposed`] for a folder group or others may access;
/// [`PrivateDirError::NotAFolder`]; [`PrivateDirError::Io`].
pub fn open_private_dir(path: &Path) -> Result<(), PrivateDirError> {
    let io = |action, source| PrivateDirError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    create_private_dir(path).map_err(|e| io("create", e))?;
    let meta = fs::metadata(path).map_err(|e| io("inspect", e))?;
    if !meta.is_dir() {
        return Err(PrivateDirError::NotAFolder {
            path: path.to_owned(),
        });
    }
    if let Some(mode) = exposed_mode(&meta) {
        return Err(PrivateDirError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Creates the folder `path` and its missing parents with mode 0700; a folder that
/// exists is left as it is.
///
/// # Errors
/// The operating system's, when a folder cannot be created.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        // The umask may only take bits away from 0700: the mode holds under any umask.
        builder.mode(0o700);
    }
    builder.create(path)
}

/// What [`write_private`] does when `path` exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Leave it, and fail with [`io::ErrorKind::AlreadyExists`]: for a key that another
    /// process may have made meanwhile, whose key then wins.
    Keep,
    /// Replace it.
    Replace,
}

/// Writes `bytes` to the file `path` whole or not at all, with mode 0600: a temporary
/// file in the same folder, synced, renamed into place, then the folder synced so that
/// the rename survives a crash. No one else can read the bytes at any point, not even
/// before the rename.
///
/// # Errors
/// The operating system's; [`io::ErrorKind::AlreadyExists`] with [`Existing::Keep`] when
/// `path` exists.
pub fn write_private(path: &Path, bytes: &[u8], existing: Existing) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // tempfile creates its files with mode 0600 on Unix.
    let mut file = tempfile::Builder::new()
        .prefix(".private-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    match existing {
        Existing::Keep => file.persist_noclobber(path),
        Existing::Replace => file.persist(path),
    }
    .map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Makes every file and folder the process creates from now on private to its owner (a
/// umask of 077: files 0600 and folders 0700 at most, whatever the umask it started
/// with). For a binary's `main`, first thing: the umask is the whole process's.
pub fn keep_new_files_private() {
    #[cfg(target_os = "linux")]
    {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(GROUP_OTHER_BITS));
    }
}

/// The permission bits of `meta` when they let group or others in.
#[cfg(unix)]
pub(crate) fn exposed_mode(meta: &fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    (mode & GROUP_OTHER_BITS != 0).then_some(mode)
}

// Elsewhere file modes do not exist; access is the platform ACLs' business.
#[cfg(not(unix))]
pub(crate) fn exposed_mode(_meta: &fs::Metadata) -> Option<u32> {
    None
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_folder_and_its_missing_parents_get_mode_0700() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a").join("b");
        open_private_dir(&path).unwrap();
        assert_eq!(mode_of(&path), 0o700);
        assert_eq!(mode_of(&dir.path().join("a")), 0o700);
        // Opening it again is fine.
        open_private_dir(&path).unwrap();
    }

    #[test]
    fn a_folder_others_may_enter_is_refused_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let error = open_private_dir(&path).unwrap_err();
        assert!(
            matches!(error, PrivateDirError::Exposed { mode: 0o755, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("chmod 700"), "{error}");
    }

    #[test]
    fn a_file_is_not_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        fs::write(&path, b"x").unwrap();
        assert!(open_private_dir(&path).is_err());
    }

    #[test]
    fn a_private_file_is_0600_whole_and_kept_or_replaced_as_asked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_private(&path, b"first", Existing::Keep).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let kept = write_private(&path, b"second", Existing::Keep).unwrap_err();
        assert_eq!(kept.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        write_private(&path, b"third", Existing::Replace).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"third");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
