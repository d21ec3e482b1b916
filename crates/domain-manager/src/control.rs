//! Where the operator's state lives: the domains with their allow-lists and public keys,
//! the admitted nodes and the invites.
//!
//! A manager alone keeps them in its data folder (`domains.toml`, `nodes.toml`); managers
//! that share etcd keep them there, under `<prefix>control/`, in the same TOML form:
//! `control/domains`, `control/nodes`, and `control/keys/<domain>` (the domain's public
//! key, hex), so that every manager, and every command run against any of them, sees one
//! state. Each change is a compare-and-swap on its key: a command and a running manager
//! never lose each other's change, as the folder's files never do under their lock.
//! Private keys never go to etcd (SECURITY.md): each manager holds them in its folder, and
//! [`ControlStore::check_key`] refuses a manager whose key is not the one etcd publishes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use domain_auth::{DomainKeyStore, PublicKey};
use domain_etcd::{Etcd, EtcdError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admission::NodesFile;
use crate::domains::DomainsFile;
use crate::error::ConfigError;

/// The etcd key of the domains, under the cluster's prefix.
const DOMAINS_KEY: &str = "control/domains";
/// The etcd key of the admissions and invites.
const NODES_KEY: &str = "control/nodes";
/// Where each domain's public key is, `control/keys/<domain>`.
const KEYS_PREFIX: &str = "control/keys/";
/// The largest document read from etcd: far above a thousand domains or invites.
const MAX_DOCUMENT: usize = 4 << 20;

/// The store of the operator's state.
#[derive(Debug, Clone)]
pub enum ControlStore {
    /// `DIR/domains.toml` and `DIR/nodes.toml` of a manager alone.
    Folder(PathBuf),
    /// etcd, under the cluster's prefix, for managers that share it.
    Etcd(Box<Etcd>),
}

/// Which version of the admissions was read: changes when anyone writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// The file's modification time and length.
    File(SystemTime, u64),
    /// The key's modification revision (0: absent).
    Etcd(i64),
}

impl ControlStore {
    /// The domains.
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::Parse`] or [`ConfigError::Etcd`].
    pub async fn domains(&self) -> Result<DomainsFile, ConfigError> {
        match self {
            Self::Folder(dir) => DomainsFile::load(dir),
            Self::Etcd(etcd) => read(etcd, DOMAINS_KEY).await,
        }
    }

    /// Changes the domains with `change`, which says whether it changed anything; returns
    /// what it returned. `change` may be called more than once (another writer came first).
    ///
    /// # Errors
    /// Those of reading and writing the domains.
    pub async fn update_domains<T>(
        &self,
        change: impl FnMut(&mut DomainsFile) -> (bool, T),
    ) -> Result<T, ConfigError> {
        match self {
            Self::Folder(dir) => {
                let mut change = change;
                let mut file = DomainsFile::load(dir)?;
                let (changed, answer) = change(&mut file);
                if changed {
                    file.save(dir)?;
                }
                Ok(answer)
            }
            Self::Etcd(etcd) => update(etcd, DOMAINS_KEY, change).await,
        }
    }

    /// The admissions and invites, and their version.
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::Parse`] or [`ConfigError::Etcd`].
    pub(crate) async fn nodes(&self) -> Result<(NodesFile, Version), ConfigError> {
        // Nothing seen before: whatever is there is news.
        self.nodes_since(None).await?.ok_or(ConfigError::Document {
            key: NODES_KEY,
            reason: "not read".to_owned(),
        })
    }

    /// The admitted nodes' peer ids.
    ///
    /// # Errors
    /// Those of reading the admissions.
    pub async fn admitted(&self) -> Result<Vec<String>, ConfigError> {
        Ok(self.nodes().await?.0.admitted)
    }

    /// The admissions and invites and their version, unless they are still at `seen`
    /// (`None`): one read of etcd, or a look at the file's length and time.
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::Parse`], [`ConfigError::Document`] or
    /// [`ConfigError::Etcd`].
    pub(crate) async fn nodes_since(
        &self,
        seen: Option<Version>,
    ) -> Result<Option<(NodesFile, Version)>, ConfigError> {
        match self {
            Self::Folder(dir) => {
                // The version first: a change after it is seen at the next read.
                let version = file_version(&NodesFile::path(dir));
                if seen == Some(version) {
                    return Ok(None);
                }
                Ok(Some((NodesFile::load(dir)?, version)))
            }
            Self::Etcd(etcd) => {
                let kv = etcd.get(&etcd.key(NODES_KEY.as_bytes())).await?;
                let version = Version::Etcd(kv.as_ref().map_or(0, |kv| kv.mod_revision));
                if seen == Some(version) {
                    return Ok(None);
                }
                let file: NodesFile = match kv {
                    Some(kv) => parse(NODES_KEY, &kv.value)?,
                    None => NodesFile::default(),
                };
                file.peers().map_err(|reason| ConfigError::Document {
                    key: NODES_KEY,
                    reason,
                })?;
                Ok(Some((file, version)))
            }
        }
    }

    /// Changes the admissions and invites as [`update_domains`](Self::update_domains)
    /// changes the domains (in the folder, under the file's lock).
    ///
    /// # Errors
    /// Those of reading and writing the admissions.
    pub async fn update_nodes<T>(
        &self,
        change: impl FnMut(&mut NodesFile) -> (bool, T),
    ) -> Result<T, ConfigError> {
        match self {
            Self::Folder(dir) => {
                domain_auth::open_private_dir(dir).map_err(ConfigError::DataDir)?;
                NodesFile::update(dir, change)
            }
            Self::Etcd(etcd) => update(etcd, NODES_KEY, change).await,
        }
    }

    /// Makes sure `key` is the public key every manager signs `domain`'s tokens with: in
    /// etcd, publishes it if none is yet, and refuses it if another one is. A folder holds
    /// the only key there is.
    ///
    /// # Errors
    /// [`ConfigError::KeyMismatch`] when etcd publishes another key; [`ConfigError::Etcd`].
    pub async fn check_key(&self, domain: &str, key: &PublicKey) -> Result<(), ConfigError> {
        let Self::Etcd(etcd) = self else {
            return Ok(());
        };
        let hex = key.to_string();
        let mut published = None;
        etcd.update(
            &etcd.key(format!("{KEYS_PREFIX}{domain}").as_bytes()),
            |current| {
                published = current.map(|value| String::from_utf8_lossy(value).into_owned());
                Ok::<_, EtcdError>(current.is_none().then(|| hex.clone().into_bytes()))
            },
        )
        .await?;
        match published {
            Some(published) if published != hex => Err(ConfigError::KeyMismatch {
                domain: domain.to_owned(),
                published,
            }),
            _ => Ok(()),
        }
    }

    /// The key `keys` signs `domain`'s tokens with, made if no manager has one yet; with
    /// etcd, the one etcd publishes (published now if none is).
    ///
    /// # Errors
    /// [`ConfigError::NoKey`] when etcd publishes a key and this manager has none (it is
    /// not made: it would not be that key); [`ConfigError::KeyMismatch`];
    /// [`ConfigError::Keys`]; [`ConfigError::Etcd`].
    pub async fn domain_key(
        &self,
        keys: &DomainKeyStore,
        domain: &str,
    ) -> Result<PublicKey, ConfigError> {
        if !keys.key_path(domain).exists() {
            if let Some(published) = self.published_key(domain).await? {
                return Err(ConfigError::NoKey {
                    domain: domain.to_owned(),
                    published,
                });
            }
        }
        let public = keys.key(domain)?.public_key();
        self.check_key(domain, &public).await?;
        Ok(public)
    }

    /// The public key published for `domain`, if any (etcd only).
    ///
    /// # Errors
    /// [`ConfigError::Etcd`].
    pub async fn published_key(&self, domain: &str) -> Result<Option<String>, ConfigError> {
        let Self::Etcd(etcd) = self else {
            return Ok(None);
        };
        let key = etcd.key(format!("{KEYS_PREFIX}{domain}").as_bytes());
        Ok(etcd
            .get(&key)
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }
}

fn file_version(path: &Path) -> Version {
    let meta = std::fs::metadata(path).ok();
    Version::File(
        meta.as_ref()
            .and_then(|m| m.modified().ok())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        meta.map_or(0, |m| m.len()),
    )
}

/// The document at `key`, its default when absent.
async fn read<T: DeserializeOwned + Default>(
    etcd: &Etcd,
    key: &'static str,
) -> Result<T, ConfigError> {
    match etcd.get(&etcd.key(key.as_bytes())).await? {
        Some(kv) => parse(key, &kv.value),
        None => Ok(T::default()),
    }
}

fn parse<T: DeserializeOwned>(key: &'static str, value: &[u8]) -> Result<T, ConfigError> {
    if value.len() > MAX_DOCUMENT {
        return Err(ConfigError::Document {
            key,
            reason: format!("{} bytes, more than {MAX_DOCUMENT}", value.len()),
        });
    }
    let text = std::str::from_utf8(value).map_err(|e| ConfigError::Document {
        key,
        reason: e.to_string(),
    })?;
    toml::from_str(text).map_err(|e| ConfigError::Document {
        key,
        reason: e.message().to_owned(),
    })
}

/// Read, `change`, write if unchanged since read; again from the read otherwise.
async fn update<D, T>(
    etcd: &Etcd,
    key: &'static str,
    mut change: impl FnMut(&mut D) -> (bool, T),
) -> Result<T, ConfigError>
where
    D: DeserializeOwned + Serialize + Default,
{
    let mut answer = None;
    etcd.update(&etcd.key(key.as_bytes()), |current| {
        let mut document: D = match current {
            Some(value) => parse(key, value)?,
            None => D::default(),
        };
        let (changed, value) = change(&mut document);
        answer = Some(value);
        if !changed {
            return Ok(None);
        }
        toml::to_string_pretty(&document)
            .map(|text| Some(text.into_bytes()))
            .map_err(|e| ConfigError::Document {
                key,
                reason: e.to_string(),
            })
    })
    .await?;
    // `change` ran at least once: `update` reads before it decides.
    answer.ok_or(ConfigError::Document {
        key,
        reason: "not read".to_owned(),
    })
}
