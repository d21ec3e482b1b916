//! A peer's identity key, kept in a file so a restarted peer keeps its peer id
//! (docs/design.md §6): allow-lists name peer ids and task tokens are bound to them.

use std::fs;
use std::io::Read;
use std::path::Path;

use libp2p::PeerId;
use libp2p::identity::Keypair;

use domain_auth::{Existing, write_private};

use crate::error::IdentityError;

/// No protobuf-encoded libp2p key pair is near this long (an Ed25519 pair is 68
/// bytes, RSA ones a few KiB); the cap bounds what a wrong path makes us read.
const MAX_KEY_FILE_LEN: u64 = 16 * 1024;

/// Permission bits that must be clear on a key file: any access by group or others.
const GROUP_OTHER_BITS: u32 = 0o077;

/// A peer's Ed25519 key pair and the peer id derived from it.
#[derive(Debug, Clone)]
pub struct Identity {
    keypair: Keypair,
}

impl Identity {
    /// Loads the key pair kept at `path`, or creates one there when the file does
    /// not exist.
    ///
    /// A new file holds the libp2p protobuf encoding of a fresh Ed25519 key pair,
    /// has mode 0600 and appears whole or not at all: it is written to a temporary
    /// file in the same folder, synced, then renamed into place. The folder must exist.
    ///
    /// # Errors
    /// [`IdentityError::Permissions`] when the existing file is readable by group
    /// or others; [`IdentityError::Decode`] when it is not a key pair;
    /// [`IdentityError::Io`] when the file or its folder cannot be used.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        match Self::load(path) {
            Err(IdentityError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let identity = Self::generate();
                match identity.save_new(path) {
                    Ok(()) => Ok(identity),
                    // Another process (a second `domain` command started at the same
                    // time) created the key meanwhile: that key is the identity.
                    Err(IdentityError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        Self::load(path)
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }

    /// Loads the key pair kept at `path`.
    ///
    /// # Errors
    /// As [`Identity::load_or_create`], and [`IdentityError::Io`] with
    /// `NotFound` when the file does not exist.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        let io_err = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = fs::File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        check_private(path, &meta)?;
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(IdentityError::TooLarge {
                path: path.to_path_buf(),
                len: meta.len(),
                limit: MAX_KEY_FILE_LEN,
            });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // `take` also bounds a file that grows between the check and the read.
        (&mut file)
            .take(MAX_KEY_FILE_LEN)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        let keypair =
            Keypair::from_protobuf_encoding(&bytes).map_err(|source| IdentityError::Decode {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self { keypair })
    }

    /// A fresh Ed25519 identity, kept only in memory (clients that need no
    /// stable id, tests).
    #[must_use]
    pub fn generate() -> Self {
        Self {
            keypair: Keypair::generate_ed25519(),
        }
    }

    /// The key pair, to build the swarm with.
    #[must_use]
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// The peer id this key pair proves.
    #[must_use]
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// Writes the key pair to a new file at `path`, atomically, with mode 0600.
    fn save_new(&self, path: &Path) -> Result<(), IdentityError> {
        let bytes =
            self.keypair
                .to_protobuf_encoding()
                .map_err(|source| IdentityError::Encode {
                    path: path.to_path_buf(),
                    source,
                })?;
        // A key another process wrote meanwhile wins; this one is discarded.
        write_private(path, &bytes, Existing::Keep).map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &fs::Metadata) -> Result<(), IdentityError> {
    let _ = GROUP_OTHER_BITS;
    Ok(())
}

/// Makes the rename durable: a crash after it must not lose the new entry.
#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn processes_creating_the_same_identity_at_once_all_end_with_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let peers: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| Identity::load_or_create(&path).unwrap().peer_id()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = Identity::load(&path).unwrap().peer_id();
        assert!(peers.iter().all(|peer| *peer == on_disk), "{peers:?}");
    }

    #[test]
    fn a_created_identity_reloads_with_the_same_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let created = Identity::load_or_create(&path).unwrap();
        let reloaded = Identity::load_or_create(&path).unwrap();
        assert_eq!(created.peer_id(), reloaded.peer_id());
        assert_eq!(Identity::load(&path).unwrap().peer_id(), created.peer_id());
    }

    #[cfg(unix)]
    #[test]
    fn a_created_identity_file_has_mode_0600_and_no_temp_file_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        Identity::load_or_create(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("identity.key")]);
    }

    #[cfg(unix)]
    #[test]
    fn an_identity_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        Identity::load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, IdentityError::Permissions { mode: 0o644, .. }),
            "unexpected error: {err}"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::Permissions { mode: 0o640, .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_file_that_is_not_a_key_pair_is_refused_and_left_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        fs::write(&path, b"not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Identity::load_or_create(&path),
            Err(IdentityError::Decode { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), b"not a key");
    }

    #[cfg(unix)]
    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        fs::write(&path, vec![0u8; (MAX_KEY_FILE_LEN + 1) as usize]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_missing_folder_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("identity.key");
        let err = Identity::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, IdentityError::Io { .. }),
            "unexpected error: {err}"
        );
    }
}
