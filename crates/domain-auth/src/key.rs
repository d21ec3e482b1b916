//! Domain keys: one Ed25519 key pair per domain, kept at rest by [`DomainKeyStore`].
//!
//! Key files are PKCS#8 PEM (what `openssl genpkey -algorithm ed25519` writes), named by
//! the BLAKE3 hash of the domain id so that no peer-chosen text ever becomes a path.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain_proto::{DomainId, InvalidDomainId};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey};

use crate::private_dir::{
    Existing, PrivateDirError, exposed_mode, open_private_dir, write_private,
};
use crate::token::{TaskClaims, TokenError};

/// A key file larger than this is not a PEM Ed25519 key; refused before it is read whole.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// A domain's Ed25519 public key: the 32 bytes that verify its task tokens.
///
/// Displays (and parses) as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The length of a public key in bytes.
    pub const LEN: usize = 32;

    /// Wraps the raw 32 bytes of an Ed25519 public key.
    ///
    /// No curve check happens here; a key that is not a valid point fails
    /// verification with [`Rejection::InvalidPublicKey`](crate::Rejection::InvalidPublicKey).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes, as `/public-key/v1` sends them.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl TryFrom<&[u8]> for PublicKey {
    type Error = PublicKeyError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| PublicKeyError::Length { len: bytes.len() })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = PublicKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| PublicKeyError::Hex {
            input: s.chars().take(80).collect(),
        })?;
        Ok(Self(bytes))
    }
}

/// Why bytes or text are not a public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    /// Raw key bytes of the wrong length.
    #[error("a public key is 32 bytes, got {len}")]
    Length {
        /// The length given.
        len: usize,
    },
    /// Text that is not 64 hex characters.
    #[error("a public key is 64 hex characters, got {input:?}")]
    Hex {
        /// The text given (at most its first 80 characters).
        input: String,
    },
}

/// A domain's private signing key, which issues its task tokens.
///
/// Cheap to clone (shared). `Debug` shows the domain and the public key, never the
/// private key; the key bytes are wiped from memory when the last clone drops.
#[derive(Clone)]
pub struct DomainKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    domain_id: String,
    public: PublicKey,
    /// Zeroized on drop by ed25519-dalek.
    signing: SigningKey,
}

/// `base64url({"typ":"JWT","alg":"EdDSA"})`: the header of every token we issue.
///
/// Tokens are signed here with the kept [`SigningKey`] rather than through
/// `jsonwebtoken::encode`, which parses the PKCS#8 key again on every call: that
/// doubled the cost of a token, and the manager signs one per assignment.
/// [`verify`](crate::verify) (through jsonwebtoken) is the check that they are
/// standard EdDSA JWTs.
const TOKEN_HEADER: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFZERTQSJ9";

impl DomainKey {
    /// Makes a fresh random key for `domain_id` (not stored anywhere).
    ///
    /// # Errors
    /// [`KeyStoreError::InvalidDomainId`] for a domain id [`DomainId`] refuses,
    /// [`KeyStoreError::Encode`] if the key cannot be put in PKCS#8 form.
    pub fn generate(domain_id: &str) -> Result<Self, KeyStoreError> {
        check_domain_id(domain_id)?;
        let signing = SigningKey::generate(&mut rand_core::OsRng);
        Self::from_signing(domain_id, signing)
    }

    fn from_signing(domain_id: &str, signing: SigningKey) -> Result<Self, KeyStoreError> {
        Ok(Self {
            inner: Arc::new(KeyInner {
                domain_id: domain_id.to_owned(),
                public: PublicKey(signing.verifying_key().to_bytes()),
                signing,
            }),
        })
    }

    /// The domain this key belongs to.
    pub fn domain_id(&self) -> &str {
        &self.inner.domain_id
    }

    /// The public half, which verifies this key's tokens.
    pub fn public_key(&self) -> PublicKey {
        self.inner.public
    }

    /// Signs `claims` as a JWT with alg EdDSA.
    ///
    /// # Errors
    /// [`TokenError::DomainMismatch`] when the claims name another domain than this
    /// key's; [`TokenError::Sign`] if signing fails.
    pub fn issue(&self, claims: &TaskClaims) -> Result<String, TokenError> {
        if claims.domain_id != self.inner.domain_id {
            return Err(TokenError::DomainMismatch {
                key_domain: self.inner.domain_id.clone(),
                claims_domain: claims.domain_id.clone(),
            });
        }
        let payload = serde_json::to_vec(claims).map_err(|source| TokenError::Sign {
            domain_id: claims.domain_id.clone(),
            reason: source.to_string(),
        })?;
        let mut token = String::with_capacity(TOKEN_HEADER.len() + 2 * payload.len() + 90);
        token.push_str(TOKEN_HEADER);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.inner.signing.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        Ok(token)
    }

    fn to_pem(&self) -> Result<zeroize::Zeroizing<String>, KeyStoreError> {
        self.inner
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|source| KeyStoreError::Encode {
                domain_id: self.inner.domain_id.clone(),
                reason: source.to_string(),
            })
    }
}

impl fmt::Debug for DomainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainKey")
            .field("domain_id", &self.inner.domain_id)
            .field("public_key", &self.inner.public)
            .field("private_key", &"[redacted]")
            .finish()
    }
}

/// Why the key store could not open or hand out a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// A file-system operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The key folder can be read or entered by group or others.
    #[error(
        "key folder {path} has mode {mode:04o}: group and others must have no access (chmod 700)"
    )]
    InsecureFolder {
        /// The folder.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file can be read or written by group or others.
    #[error(
        "key file {path} has mode {mode:04o}: group and others must have no access (chmod 600)"
    )]
    InsecureKeyFile {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key path exists but is not a regular file.
    #[error("key path {path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A key file holds something other than a PKCS#8 Ed25519 key.
    #[error("key file {path} is not a PKCS#8 PEM Ed25519 key: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The domain id cannot name a domain.
    #[error("no key for an invalid domain id")]
    InvalidDomainId(#[source] InvalidDomainId),
    /// An export asked for a domain that has no key here.
    #[error("no key for domain {domain_id} in this key store")]
    NoKey {
        /// The domain.
        domain_id: String,
    },
    /// An import brought a key for a domain that has another one here: replacing it would
    /// make every token issued with it fail.
    #[error("domain {domain_id} has another key here already; remove its file to replace it")]
    KeyExists {
        /// The domain.
        domain_id: String,
    },
    /// An imported key is not a PKCS#8 PEM Ed25519 key.
    #[error("the key given for domain {domain_id} is not a PKCS#8 PEM Ed25519 key: {reason}")]
    NotAKey {
        /// The domain.
        domain_id: String,
        /// What was wrong.
        reason: String,
    },
    /// The key could not be put in PKCS#8 form.
    #[error("cannot encode the key of domain {domain_id}: {reason}")]
    Encode {
        /// The domain.
        domain_id: String,
        /// What failed.
        reason: String,
    },
}

fn check_domain_id(domain_id: &str) -> Result<(), KeyStoreError> {
    DomainId::new(domain_id)
        .map(drop)
        .map_err(KeyStoreError::InvalidDomainId)
}

/// The domain keys of a manager: one Ed25519 key per domain, created on first use.
///
/// The folder has mode 0700 and each key file mode 0600; [`open`](Self::open) and
/// [`key`](Self::key) refuse a folder or key file that group or others can access,
/// rather than use a key that may have leaked. A new key is written to a temporary
/// file, fsynced, and renamed into place, so a crash never leaves half a key. Keys
/// are cached after their first use, so the file system is touched once per domain.
#[derive(Debug)]
pub struct DomainKeyStore {
    dir: PathBuf,
    cache: Mutex<HashMap<String, DomainKey>>,
}

impl DomainKeyStore {
    /// Opens the key folder `dir`, creating it (mode 0700) if needed.
    ///
    /// # Errors
    /// [`KeyStoreError::InsecureFolder`] when group or others can access the folder;
    /// [`KeyStoreError::Io`] when it cannot be created or inspected.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, KeyStoreError> {
        let dir = dir.as_ref().to_path_buf();
        open_private_dir(&dir).map_err(|error| match error {
            PrivateDirError::Exposed { path, mode } => KeyStoreError::InsecureFolder { path, mode },
            PrivateDirError::NotAFolder { path } => KeyStoreError::Io {
                action: "open key folder",
                path,
                source: std::io::ErrorKind::NotADirectory.into(),
            },
            PrivateDirError::Io { path, source, .. } => KeyStoreError::Io {
                action: "create key folder",
                path,
                source,
            },
        })?;
        Ok(Self {
            dir,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The folder the keys live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of `domain_id`, created and stored on first use.
    ///
    /// Does small blocking file I/O the first time a domain is asked for.
    ///
    /// # Errors
    /// [`KeyStoreError::InvalidDomainId`], [`KeyStoreError::InsecureKeyFile`] for a key
    /// file others can read, [`KeyStoreError::Corrupt`] for one that holds no key, and
    /// [`KeyStoreError::Io`] when the file system fails.
    pub fn key(&self, domain_id: &str) -> Result<DomainKey, KeyStoreError> {
        check_domain_id(domain_id)?;
        // Holding the lock across the file work makes first use per domain race-free
        // inside the process; `persist_noclobber` covers other processes.
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(key) = cache.get(domain_id) {
            return Ok(key.clone());
        }
        let path = self.key_path(domain_id);
        let key = match load_key(&path, domain_id)? {
            Some(key) => key,
            None => self.create_key(&path, domain_id)?,
        };
        cache.insert(domain_id.to_owned(), key.clone());
        Ok(key)
    }

    /// The private key of `domain_id` as PKCS#8 PEM, for another manager of the same
    /// domains to [`import`](Self::import). It is the secret that signs the domain's
    /// tokens: move it over a channel only its owner can read.
    ///
    /// # Errors
    /// [`KeyStoreError::NoKey`] when the domain has no key here yet; those of
    /// [`key`](Self::key) reading it.
    pub fn export(&self, domain_id: &str) -> Result<zeroize::Zeroizing<String>, KeyStoreError> {
        check_domain_id(domain_id)?;
        let key = load_key(&self.key_path(domain_id), domain_id)?.ok_or_else(|| {
            KeyStoreError::NoKey {
                domain_id: domain_id.to_owned(),
            }
        })?;
        key.to_pem()
    }

    /// Stores `pem`, the key another manager [exported](Self::export), as the key of
    /// `domain_id`, so that both issue tokens the same public key verifies. Importing the
    /// key a domain already has changes nothing.
    ///
    /// # Errors
    /// [`KeyStoreError::NotAKey`] for text that is no PKCS#8 PEM Ed25519 key;
    /// [`KeyStoreError::KeyExists`] when the domain has another key here; those of
    /// [`key`](Self::key) writing it.
    pub fn import(&self, domain_id: &str, pem: &str) -> Result<DomainKey, KeyStoreError> {
        check_domain_id(domain_id)?;
        let signing = SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyStoreError::NotAKey {
            domain_id: domain_id.to_owned(),
            reason: e.to_string(),
        })?;
        let imported = DomainKey::from_signing(domain_id, signing)?;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let path = self.key_path(domain_id);
        let exists = |key: DomainKey| {
            if key.public_key() == imported.public_key() {
                Ok(key)
            } else {
                Err(KeyStoreError::KeyExists {
                    domain_id: domain_id.to_owned(),
                })
            }
        };
        if let Some(key) = load_key(&path, domain_id)? {
            return exists(key);
        }
        match write_private(&path, imported.to_pem()?.as_bytes(), Existing::Keep) {
            Ok(()) => {}
            // Another process made or imported this domain's key in between.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                let key = load_key(&path, domain_id)?.ok_or_else(|| KeyStoreError::Io {
                    action: "reload",
                    path: path.clone(),
                    source: std::io::ErrorKind::NotFound.into(),
                })?;
                return exists(key);
            }
            Err(source) => {
                return Err(KeyStoreError::Io {
                    action: "write",
                    path,
                    source,
                });
            }
        }
        cache.insert(domain_id.to_owned(), imported.clone());
        Ok(imported)
    }

    /// The path of `domain_id`'s key file (which may not exist yet).
    pub fn key_path(&self, domain_id: &str) -> PathBuf {
        let name = blake3::hash(domain_id.as_bytes()).to_hex();
        self.dir.join(format!("{name}.pem"))
    }

    fn create_key(&self, path: &Path, domain_id: &str) -> Result<DomainKey, KeyStoreError> {
        let key = DomainKey::generate(domain_id)?;
        let pem = key.to_pem()?;
        let io = |action, source| KeyStoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        match write_private(path, pem.as_bytes(), Existing::Keep) {
            Ok(()) => {}
            // Another process made this domain's key first: use theirs.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                return load_key(path, domain_id)?.ok_or_else(|| {
                    io("reload", std::io::Error::from(std::io::ErrorKind::NotFound))
                });
            }
            Err(err) => return Err(io("write", err)),
        }
        Ok(key)
    }
}

/// Reads a key file; `None` when there is none.
fn load_key(path: &Path, domain_id: &str) -> Result<Option<DomainKey>, KeyStoreError> {
    let io = |action, source| KeyStoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io("open key file", err)),
    };
    let meta = file.metadata().map_err(|e| io("inspect key file", e))?;
    if !meta.is_file() {
        return Err(KeyStoreError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if let Some(mode) = exposed_mode(&meta) {
        return Err(KeyStoreError::InsecureKeyFile {
            path: path.to_path_buf(),
            mode,
        });
    }
    let corrupt = |reason: String| KeyStoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(corrupt(format!(
            "{} bytes is too long for a key",
            meta.len()
        )));
    }
    let mut pem = zeroize::Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE_LEN)
        .read_to_string(&mut pem)
        .map_err(|e| io("read key file", e))?;
    let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| corrupt(e.to_string()))?;
    DomainKey::from_signing(domain_id, signing).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_header_is_base64url_of_an_eddsa_jwt_header() {
        let header = URL_SAFE_NO_PAD.decode(TOKEN_HEADER).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header, serde_json::json!({"typ": "JWT", "alg": "EdDSA"}));
    }

    #[test]
    fn public_key_round_trips_through_hex() {
        let key = PublicKey::from_bytes([0xab; 32]);
        let text = key.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<PublicKey>().unwrap(), key);
        assert!(matches!(
            "zz".parse::<PublicKey>(),
            Err(PublicKeyError::Hex { .. })
        ));
        assert!(matches!(
            PublicKey::try_from(&[0u8; 31][..]),
            Err(PublicKeyError::Length { len: 31 })
        ));
    }

    #[test]
    fn domain_key_debug_never_shows_the_private_key() {
        let key = DomainKey::generate("d").unwrap();
        let pem = key.to_pem().unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let shown = format!("{key:?} {key:#?}");
        assert!(shown.contains("[redacted]"));
        assert!(!shown.contains(&body));
        assert!(shown.contains(&key.public_key().to_string()));
    }

    #[test]
    fn invalid_domain_ids_are_refused() {
        assert!(matches!(
            DomainKey::generate(""),
            Err(KeyStoreError::InvalidDomainId { .. })
        ));
        let long = "x".repeat(domain_proto::MAX_DOMAIN_ID_LEN + 1);
        for bad in [long.as_str(), "my lab", "../keys", ".hidden"] {
            assert!(
                matches!(
                    DomainKey::generate(bad),
                    Err(KeyStoreError::InvalidDomainId(_))
                ),
                "{bad:?}"
            );
        }
    }
}
