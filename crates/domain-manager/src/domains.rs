//! Which domains a manager serves and who may submit jobs to them.
//!
//! Domains come from the configuration file and from `DIR/domains.toml`, which
//! [`create_domain`] writes (`domain-manager domain create`). A [`DomainPolicy`] with no domain
//! at all is *open*: any domain, any submitter (the local demo); the manager warns about it at
//! start.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use domain_auth::{DomainKeyStore, PublicKey};
use domain_cluster::PeerId;
use domain_proto::{DomainId, InvalidDomainId};
use serde::{Deserialize, Serialize};

use crate::config::{keys_dir, write_toml};
use crate::control::ControlStore;
use crate::error::ConfigError;

/// A domain and the client peer ids allowed to submit jobs to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    /// The domain id.
    pub id: String,
    /// Peer ids (base58, `12D3KooW…`) of the clients that may submit jobs.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Copies of each item the domain keeps, each on its own node (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<u32>,
}

/// Why a job is refused before it reaches the scheduler; the text is the `BadRequest` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The manager does not serve this domain.
    #[error("unknown domain {domain:?}")]
    UnknownDomain {
        /// The domain asked for.
        domain: String,
    },
    /// The submitter is not on the domain's allow-list.
    #[error("peer {peer} is not allowed to submit jobs to domain {domain:?}")]
    NotAllowed {
        /// The domain.
        domain: String,
        /// The submitter.
        peer: PeerId,
    },
    /// A task of a job other than a replicate request carries replicate data, which marks
    /// the copies only the manager places.
    #[error("only the manager places copies: a task of this job carries replicate data")]
    CopyData,
    /// The domain id cannot be one.
    #[error("not a valid domain id")]
    InvalidDomain(#[source] InvalidDomainId),
}

/// The domains a manager serves, each with its allowed submitters; empty means open.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DomainPolicy {
    domains: BTreeMap<String, BTreeSet<PeerId>>,
    /// The domains that keep more than one copy of each item, and how many.
    replication: BTreeMap<String, u32>,
}

impl fmt::Debug for DomainPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_open() {
            f.write_str("DomainPolicy(open)")
        } else {
            f.debug_map().entries(self.domains.iter()).finish()
        }
    }
}

impl DomainPolicy {
    /// The open policy: any domain, any submitter.
    #[must_use]
    pub fn open() -> Self {
        Self::default()
    }

    /// The policy of `specs`; a domain named twice gets the union of its allow-lists.
    ///
    /// # Errors
    /// [`ConfigError::Domain`] for an invalid domain id or a peer id that does not parse.
    pub fn from_specs<'a>(
        specs: impl IntoIterator<Item = &'a DomainSpec>,
    ) -> Result<Self, ConfigError> {
        let mut domains: BTreeMap<String, BTreeSet<PeerId>> = BTreeMap::new();
        let mut replication: BTreeMap<String, u32> = BTreeMap::new();
        for spec in specs {
            check_domain_id(&spec.id).map_err(|e| ConfigError::Domain {
                domain: spec.id.chars().take(80).collect(),
                reason: e.to_string(),
            })?;
            match spec.replication {
                Some(0) => {
                    return Err(ConfigError::Domain {
                        domain: spec.id.clone(),
                        reason: "replication 0 keeps no copy; it must be 1 or more".into(),
                    });
                }
                Some(copies) if copies > 1 => {
                    let kept = replication.entry(spec.id.clone()).or_default();
                    *kept = (*kept).max(copies);
                }
                _ => {}
            }
            let allowed = domains.entry(spec.id.clone()).or_default();
            for peer in &spec.allow {
                let peer = peer.parse().map_err(|e| ConfigError::Domain {
                    domain: spec.id.clone(),
                    reason: format!("allowed peer {peer:?} is not a peer id: {e}"),
                })?;
                allowed.insert(peer);
            }
        }
        Ok(Self {
            domains,
            replication,
        })
    }

    /// Copies of each item `domain` keeps, each on its own node: 1 unless declared.
    #[must_use]
    pub fn replication(&self, domain: &str) -> u32 {
        self.replication.get(domain).copied().unwrap_or(1)
    }

    /// The domains that keep more than one copy of each item, with their count.
    #[must_use]
    pub fn replicated(&self) -> &BTreeMap<String, u32> {
        &self.replication
    }

    /// True when no domain is declared: every domain and submitter is accepted.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.domains.is_empty()
    }

    /// The declared domains, in id order.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(String::as_str)
    }

    /// The peers allowed to submit to `domain` (empty for an undeclared domain).
    pub fn allowed(&self, domain: &str) -> impl Iterator<Item = &PeerId> {
        self.domains.get(domain).into_iter().flatten()
    }

    /// Whether `peer` may submit jobs to `domain`.
    ///
    /// # Errors
    /// The [`Refusal`] to answer with.
    pub fn check_submitter(&self, domain: &str, peer: &PeerId) -> Result<(), Refusal> {
        check_domain_id(domain)?;
        if self.is_open() {
            return Ok(());
        }
        match self.domains.get(domain) {
            None => Err(Refusal::UnknownDomain {
                domain: domain.to_owned(),
            }),
            Some(allowed) if allowed.contains(peer) => Ok(()),
            Some(_) => Err(Refusal::NotAllowed {
                domain: domain.to_owned(),
                peer: *peer,
            }),
        }
    }

    /// Whether `peer` may follow the jobs of `domain` on `/monitor/v1`: the same peers that may
    /// submit to it.
    #[must_use]
    pub fn may_watch(&self, domain: &str, peer: &PeerId) -> bool {
        self.check_submitter(domain, peer).is_ok()
    }

    /// Whether `peer` may use some domain (any peer, when open): a peer the manager
    /// serves on the streams of its own share, not from the few left to strangers.
    #[must_use]
    pub fn knows(&self, peer: &PeerId) -> bool {
        self.is_open() || self.domains.values().any(|allowed| allowed.contains(peer))
    }

    /// Whether the manager serves `domain` at all (open, or declared).
    #[must_use]
    pub fn serves(&self, domain: &str) -> bool {
        check_domain_id(domain).is_ok() && (self.is_open() || self.domains.contains_key(domain))
    }
}

fn check_domain_id(domain: &str) -> Result<(), Refusal> {
    DomainId::new(domain)
        .map(drop)
        .map_err(Refusal::InvalidDomain)
}

/// `DIR/domains.toml`: the domains made with `domain-manager domain create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainsFile {
    /// The domains, in creation order.
    #[serde(default)]
    pub domain: Vec<DomainSpec>,
}

impl DomainsFile {
    /// The file's path in the data folder `data_dir`.
    #[must_use]
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("domains.toml")
    }

    /// Reads the file of `data_dir`; a missing file holds no domain.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = Self::path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path,
                reason: e.message().to_owned(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Declares `domain` if it is not, and adds `allow` to its allow-list; true when
    /// anything changed.
    pub(crate) fn declare(&mut self, domain: &str, allow: &[PeerId]) -> bool {
        let allow = allow.iter().map(ToString::to_string);
        match self.domain.iter_mut().find(|d| d.id == domain) {
            Some(spec) => {
                let before = spec.allow.len();
                for peer in allow {
                    if !spec.allow.contains(&peer) {
                        spec.allow.push(peer);
                    }
                }
                spec.allow.len() != before
            }
            None => {
                self.domain.push(DomainSpec {
                    id: domain.to_owned(),
                    allow: allow.collect(),
                    replication: None,
                });
                true
            }
        }
    }

    /// Writes the file of `data_dir` whole or not at all: a synced temporary file renamed into
    /// place.
    ///
    /// # Errors
    /// [`ConfigError::Write`].
    pub fn save(&self, data_dir: &Path) -> Result<(), ConfigError> {
        write_toml(&Self::path(data_dir), self)
    }
}

/// The key store of the data folder `data_dir` (created if missing), once `domain` is
/// known to be a domain id nodes accept.
fn domain_keys(data_dir: &Path, domain: &str) -> Result<DomainKeyStore, ConfigError> {
    check_domain_id(domain).map_err(|e| ConfigError::Domain {
        domain: domain.chars().take(80).collect(),
        reason: domain_proto::ErrorChain(&e).to_string(),
    })?;
    domain_auth::open_private_dir(data_dir).map_err(ConfigError::DataDir)?;
    Ok(DomainKeyStore::open(keys_dir(data_dir))?)
}

/// Creates (or completes) a domain in the data folder `data_dir`: makes its key if it has none,
/// records it in `domains.toml` with `allow` added to its allow-list, and returns its public key.
///
/// Running it again for the same domain keeps its key and adds the new peers.
///
/// # Errors
/// [`ConfigError::Domain`] for an invalid domain id or peer id, [`ConfigError::Keys`] when the
/// key store fails, and the errors of [`DomainsFile::load`] and [`DomainsFile::save`].
pub fn create_domain(
    data_dir: &Path,
    domain: &str,
    allow: &[PeerId],
) -> Result<PublicKey, ConfigError> {
    let keys = domain_keys(data_dir, domain)?;
    let mut file = DomainsFile::load(data_dir)?;
    // Validates what is already there before adding to it.
    DomainPolicy::from_specs(&file.domain)?;
    let public = keys.key(domain)?.public_key();
    file.declare(domain, allow);
    file.save(data_dir)?;
    Ok(public)
}

/// [`create_domain`] in the operator's state of `control` (the folder, or etcd shared by
/// several managers), the key in the data folder `data_dir`: with etcd, the key etcd
/// publishes for the domain, which this manager must have (imported), or a new one that
/// etcd publishes from now on.
///
/// # Errors
/// Those of [`create_domain`], of [`ControlStore::domain_key`] and of
/// [`ControlStore::update_domains`].
pub async fn create_domain_in(
    control: &ControlStore,
    data_dir: &Path,
    domain: &str,
    allow: &[PeerId],
) -> Result<PublicKey, ConfigError> {
    let keys = domain_keys(data_dir, domain)?;
    let public = control.domain_key(&keys, domain).await?;
    control
        .update_domains(|file| (file.declare(domain, allow), ()))
        .await?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn an_open_policy_accepts_any_domain_and_submitter_but_not_an_invalid_id() {
        let policy = DomainPolicy::open();
        assert!(policy.check_submitter("anything", &peer()).is_ok());
        assert!(matches!(
            policy.check_submitter("", &peer()),
            Err(Refusal::InvalidDomain(_))
        ));
        assert!(policy.check_submitter(&"d".repeat(257), &peer()).is_err());
    }

    #[test]
    fn a_declared_policy_refuses_unknown_domains_and_peers_not_allowed() {
        let alice = peer();
        let specs = [
            DomainSpec {
                id: "a".into(),
                allow: vec![alice.to_string()],
                replication: Some(3),
            },
            DomainSpec {
                id: "b".into(),
                allow: vec![],
                replication: None,
            },
        ];
        let policy = DomainPolicy::from_specs(&specs).unwrap();
        assert!(policy.check_submitter("a", &alice).is_ok());
        assert_eq!(
            policy.check_submitter("c", &alice),
            Err(Refusal::UnknownDomain { domain: "c".into() })
        );
        let bob = peer();
        let refusal = policy.check_submitter("a", &bob).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            format!("peer {bob} is not allowed to submit jobs to domain \"a\"")
        );
        assert!(policy.check_submitter("b", &alice).is_err());
        assert!(policy.serves("b") && !policy.serves("c"));
        assert_eq!((policy.replication("a"), policy.replication("b")), (3, 1));
        assert_eq!(policy.replicated().len(), 1);
    }

    #[test]
    fn a_domain_that_keeps_no_copy_is_refused() {
        let specs = [DomainSpec {
            id: "a".into(),
            allow: vec![],
            replication: Some(0),
        }];
        let err = DomainPolicy::from_specs(&specs).unwrap_err();
        assert!(err.to_string().contains("replication 0"), "{err}");
    }

    #[test]
    fn a_bad_peer_id_in_an_allow_list_is_named() {
        let specs = [DomainSpec {
            id: "a".into(),
            allow: vec!["not-a-peer".into()],
            replication: None,
        }];
        let err = DomainPolicy::from_specs(&specs).unwrap_err();
        assert!(err.to_string().contains("not-a-peer"), "{err}");
    }

    #[test]
    fn a_domain_id_nodes_would_refuse_is_not_created_and_the_reason_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let error = create_domain(dir.path(), "my lab", &[]).unwrap_err();
        assert!(error.to_string().contains("contains ' '"), "{error}");
        assert!(!DomainsFile::path(dir.path()).exists());
    }

    #[test]
    fn creating_a_domain_twice_keeps_its_key_and_merges_its_allow_list() {
        let dir = crate::tests_support::private_tempdir();
        let (alice, bob) = (peer(), peer());
        let first = create_domain(dir.path(), "d", &[alice]).unwrap();
        let second = create_domain(dir.path(), "d", &[alice, bob]).unwrap();
        assert_eq!(first, second);
        let file = DomainsFile::load(dir.path()).unwrap();
        assert_eq!(
            file.domain,
            [DomainSpec {
                id: "d".into(),
                allow: vec![alice.to_string(), bob.to_string()],
                replication: None,
            }]
        );
        let keys = DomainKeyStore::open(keys_dir(dir.path())).unwrap();
        assert_eq!(keys.key("d").unwrap().public_key(), first);
    }
}
