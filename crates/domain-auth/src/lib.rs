//! Domain keys and task tokens (docs/design.md §5).
//!
//! The manager keeps one Ed25519 key pair per domain and signs, for each task, a
//! short-lived JWT (alg EdDSA only) that lets one sender open one protocol on one
//! receiver for one domain. Receivers check it with the domain's public key.
//!
//! - [`DomainKeyStore`]: the keys at rest, one PKCS#8 file per domain (mode 0600 in
//!   a 0700 folder, written atomically); a folder or key file that group or others
//!   can access is refused.
//! - [`DomainKey`]: a domain's private key; [`DomainKey::issue`] signs
//!   [`TaskClaims`]; its `Debug` never shows the private key.
//! - [`PublicKey`]: the 32 bytes that `/public-key/v1` serves, hex on display.
//! - [`verify`]: every check of §5, against a caller-given time, naming the first
//!   that failed as a [`Rejection`]. No HS\*, RS\* or `none` token is ever accepted.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use domain_auth::{DomainKeyStore, Expected, Rejection, TaskClaims, verify};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = DomainKeyStore::open(dir.path().join("keys"))?;
//! let key = store.key("my-domain")?;
//!
//! let now = SystemTime::now();
//! let claims = TaskClaims::new(
//!     "my-domain", "job-1", "upload", "sender-peer", "receiver-peer", "/store/v1",
//!     now, Duration::from_secs(60),
//! );
//! let token = key.issue(&claims)?;
//!
//! let expected = Expected {
//!     domain_id: "my-domain",
//!     receiver: "receiver-peer",
//!     sender: "sender-peer",
//!     endpoint: "/store/v1",
//! };
//! assert_eq!(verify(&token, &key.public_key(), &expected, now)?, claims);
//!
//! let elsewhere = Expected { endpoint: "/load/v1", ..expected };
//! assert!(matches!(
//!     verify(&token, &key.public_key(), &elsewhere, now),
//!     Err(Rejection::WrongEndpoint { .. })
//! ));
//! # Ok(())
//! # }
//! ```

mod key;
pub mod private_dir;
mod token;

pub use key::{DomainKey, DomainKeyStore, KeyStoreError, PublicKey, PublicKeyError};
pub use private_dir::{
    Existing, PrivateDirError, create_private_dir, keep_new_files_private, open_private_dir,
    write_private,
};
pub use token::{
    Expected, LEEWAY_SECS, MAX_TOKEN_LEN, MAX_TOKEN_LIFETIME, Rejection, TaskClaims, TokenError,
    lifetime_for_timeout, unix_secs, verify, verify_now,
};
