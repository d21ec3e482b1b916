//! Which nodes may join: the operator's admissions, and one-use invites for nodes whose
//! peer id is not known yet.
//!
//! Admissions live in `DIR/nodes.toml` (written by `domain-manager node allow`, `revoke`
//! and `invite`, and by the manager when a node redeems an invite) and in the
//! configuration file (`nodes = [...]`). An invite is kept only as the BLAKE3 hash of its
//! secret, with its expiry; redeeming it admits the presenting peer id and spends it.
//! Every change of the file goes through [`NodesFile::update`]: under an exclusive lock,
//! read, change, written whole (a synced temporary file renamed into place), so that a
//! command and a running manager never lose each other's change.
//!
//! A manager with no node admitted and no domain declared is *open*: any node joins (the
//! local demo). See [`Admission`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::PoisonError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domain_cluster::PeerId;
use serde::{Deserialize, Serialize};

use crate::config::write_toml;
use crate::control::{ControlStore, Version};
use crate::error::ConfigError;

/// Bytes of an invite's secret.
const INVITE_BYTES: usize = 32;
/// What every invite starts with, so that one is told apart from a peer id or a token.
const INVITE_PREFIX: &str = "dcinv-";
/// Invites kept at most; the oldest are dropped past it.
const MAX_INVITES: usize = 1024;

/// The admissions of `DIR/nodes.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesFile {
    /// Peer ids of the admitted nodes.
    #[serde(default)]
    pub admitted: Vec<String>,
    /// Invites not yet redeemed.
    #[serde(default, rename = "invite")]
    invites: Vec<InviteRecord>,
}

/// An invite as the manager keeps it: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteRecord {
    /// BLAKE3 of the secret, in hex.
    hash: String,
    /// Seconds since the Unix epoch after which it is refused.
    expires: u64,
}

/// Why a node is refused at `/join/v1`; the text goes to the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    /// Not admitted, and no invite.
    #[error(
        "node {peer} is not admitted by this manager: ask its operator to run `domain-manager node allow {peer}`, or to give you an invite (`domain-node run --invite`)"
    )]
    NotAdmitted {
        /// The node.
        peer: PeerId,
    },
    /// An invite that is unknown, spent or expired.
    #[error("node {peer} presented an invite that is unknown, already used or expired")]
    BadInvite {
        /// The node.
        peer: PeerId,
    },
    /// The invite was good but could not be recorded.
    #[error("the manager could not record the admission of node {peer}; try again")]
    NotRecorded {
        /// The node.
        peer: PeerId,
    },
}

impl NodesFile {
    /// The file's path in the data folder `data_dir`.
    #[must_use]
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("nodes.toml")
    }

    /// Reads the file of `data_dir`; a missing file admits nobody.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`], and [`ConfigError::Invalid`] for a
    /// peer id that does not parse.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = Self::path(data_dir);
        let file: Self = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                reason: e.message().to_owned(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        file.peers().map_err(|reason| ConfigError::Invalid {
            path,
            key: "admitted".into(),
            reason,
        })?;
        Ok(file)
    }

    /// The admitted peer ids.
    pub(crate) fn peers(&self) -> Result<BTreeSet<PeerId>, String> {
        self.admitted
            .iter()
            .map(|peer| {
                peer.parse()
                    .map_err(|e| format!("{peer:?} is not a peer id: {e}"))
            })
            .collect()
    }

    /// Changes the file of `data_dir` with `change` under an exclusive lock (held against
    /// every other command and manager on the folder), and writes it back whole when
    /// `change` says it changed something. Returns what `change` returned.
    ///
    /// # Errors
    /// Those of [`load`](Self::load), of locking and of writing ([`ConfigError::Write`]).
    pub fn update<T>(
        data_dir: &Path,
        change: impl FnOnce(&mut Self) -> (bool, T),
    ) -> Result<T, ConfigError> {
        let lock_path = data_dir.join("nodes.lock");
        let write_err = |source| ConfigError::Write {
            path: lock_path.clone(),
            source,
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(write_err)?;
        lock_exclusive(&lock).map_err(write_err)?;
        let mut file = Self::load(data_dir)?;
        let (changed, answer) = change(&mut file);
        if changed {
            write_toml(&Self::path(data_dir), &file)?;
        }
        Ok(answer)
    }

    /// Admits `peer`; false when it was admitted already.
    pub fn admit(&mut self, peer: &PeerId) -> bool {
        let peer = peer.to_string();
        let new = !self.admitted.contains(&peer);
        if new {
            self.admitted.push(peer);
        }
        new
    }

    /// Revokes `peer`; false when it was not admitted.
    pub fn revoke(&mut self, peer: &PeerId) -> bool {
        let peer = peer.to_string();
        let before = self.admitted.len();
        self.admitted.retain(|admitted| *admitted != peer);
        self.admitted.len() != before
    }

    /// Records a new invite (its hash and expiry), dropping the expired and the oldest.
    fn add_invite(&mut self, record: InviteRecord, now: u64) {
        self.prune(now);
        self.invites.push(record);
        self.prune(now);
    }

    /// Spends the invite whose hash is `hash`, if known and unexpired at `now`, admitting
    /// `peer`. Returns (whether the file changed, whether the invite was good).
    fn redeem(&mut self, hash: &str, peer: &PeerId, now: u64) -> (bool, bool) {
        let pruned = self.prune(now);
        let Some(at) = self.invites.iter().position(|known| known.hash == hash) else {
            return (pruned, false);
        };
        self.invites.remove(at);
        self.admit(peer);
        (true, true)
    }

    /// Drops the invites that expired before `now` (seconds since the epoch), and the
    /// oldest past [`MAX_INVITES`]; true when any went.
    fn prune(&mut self, now: u64) -> bool {
        let before = self.invites.len();
        self.invites.retain(|invite| invite.expires >= now);
        if self.invites.len() > MAX_INVITES {
            self.invites.sort_by_key(|invite| invite.expires);
            let excess = self.invites.len() - MAX_INVITES;
            self.invites.drain(..excess);
        }
        self.invites.len() != before
    }
}

/// Admits `peer` in the data folder `data_dir`; false when it was admitted already.
///
/// # Errors
/// Those of [`NodesFile::update`].
pub fn admit_node(data_dir: &Path, peer: &PeerId) -> Result<bool, ConfigError> {
    ensure_dir(data_dir)?;
    NodesFile::update(data_dir, |file| {
        let new = file.admit(peer);
        (new, new)
    })
}

/// Revokes `peer` in the data folder `data_dir`; false when it was not admitted there. A
/// running manager refuses the node's next join and gives its tasks to others.
///
/// # Errors
/// Those of [`NodesFile::update`].
pub fn revoke_node(data_dir: &Path, peer: &PeerId) -> Result<bool, ConfigError> {
    ensure_dir(data_dir)?;
    NodesFile::update(data_dir, |file| {
        let removed = file.revoke(peer);
        (removed, removed)
    })
}

/// Creates a one-use invite valid for `ttl` in the data folder `data_dir` and returns its
/// secret, to hand to the operator of the node (`domain-node run --invite SECRET`). Only
/// its hash is written.
///
/// # Errors
/// Those of [`NodesFile::update`].
pub fn create_invite(data_dir: &Path, ttl: Duration) -> Result<String, ConfigError> {
    ensure_dir(data_dir)?;
    let (invite, record, now) = new_invite(ttl).map_err(|source| ConfigError::Write {
        path: NodesFile::path(data_dir),
        source,
    })?;
    NodesFile::update(data_dir, |file| {
        file.add_invite(record, now);
        (true, ())
    })?;
    Ok(invite)
}

/// [`create_invite`] in the operator's state of `control` (the folder, or etcd shared by
/// several managers): any of the managers admits the node that presents it.
///
/// # Errors
/// Those of [`ControlStore::update_nodes`]; [`ConfigError::Write`] when no random secret
/// can be had.
pub async fn create_invite_in(
    control: &ControlStore,
    ttl: Duration,
) -> Result<String, ConfigError> {
    let (invite, record, now) = new_invite(ttl).map_err(|source| ConfigError::Write {
        path: PathBuf::from("invite"),
        source,
    })?;
    control
        .update_nodes(|file| {
            file.add_invite(record.clone(), now);
            (true, ())
        })
        .await?;
    Ok(invite)
}

/// A new invite valid for `ttl`: its secret, the record kept of it, and now.
fn new_invite(ttl: Duration) -> std::io::Result<(String, InviteRecord, u64)> {
    let mut secret = [0u8; INVITE_BYTES];
    getrandom(&mut secret)?;
    let invite = format!("{INVITE_PREFIX}{}", hex::encode(secret));
    let now = unix_seconds(SystemTime::now());
    let record = InviteRecord {
        hash: invite_hash(&invite),
        expires: now.saturating_add(ttl.as_secs()),
    };
    Ok((invite, record, now))
}

/// Who may join a manager: the admissions of its [`ControlStore`] (its data folder, or
/// etcd) and of its configuration file. Reads the store's admissions again whenever they
/// changed, so that `domain-manager node allow` and `revoke` take effect on a running
/// manager at the node's next join.
#[derive(Debug)]
pub struct Admission {
    store: ControlStore,
    /// Admitted in the configuration file: never revoked by the store.
    configured: BTreeSet<PeerId>,
    /// No domain is declared: with nobody admitted, any node joins.
    no_domain: bool,
    /// Admitted in the store, as last read, and the version read.
    read: std::sync::Mutex<(BTreeSet<PeerId>, Option<Version>)>,
    /// One reload at a time: joins that arrive together read the store once.
    reloading: tokio::sync::Mutex<()>,
}

impl Admission {
    /// The admissions of `store` and `configured`; `no_domain` when the manager declares
    /// no domain (then, with nobody admitted, it is open).
    ///
    /// # Errors
    /// Those of reading the store's admissions.
    pub async fn load(
        store: ControlStore,
        configured: BTreeSet<PeerId>,
        no_domain: bool,
    ) -> Result<Self, ConfigError> {
        let admission = Self {
            store,
            configured,
            no_domain,
            read: std::sync::Mutex::new((BTreeSet::new(), None)),
            reloading: tokio::sync::Mutex::new(()),
        };
        admission.reload().await?;
        Ok(admission)
    }

    /// The admitted set and its version, as last read: whole after every store (a holder
    /// that panicked left it as it was).
    fn read(&self) -> std::sync::MutexGuard<'_, (BTreeSet<PeerId>, Option<Version>)> {
        self.read.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True when any node may join: no domain declared and nobody admitted.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.no_domain && self.configured.is_empty() && self.read().0.is_empty()
    }

    /// Whether nobody at all is admitted (neither in the store nor configured).
    #[must_use]
    pub fn admits_nobody(&self) -> bool {
        self.configured.is_empty() && self.read().0.is_empty()
    }

    /// Whether `peer` may join now.
    #[must_use]
    pub fn admits(&self, peer: &PeerId) -> bool {
        self.is_open() || self.configured.contains(peer) || self.read().0.contains(peer)
    }

    /// Reads the store's admissions again if they changed since; returns the peers it no
    /// longer admits (revoked since the last read).
    ///
    /// # Errors
    /// Those of reading the store; the admissions stay as they were.
    pub async fn reload(&self) -> Result<Vec<PeerId>, ConfigError> {
        let _one_reload = self.reloading.lock().await;
        let seen = self.read().1;
        let Some((file, version)) = self.store.nodes_since(seen).await? else {
            return Ok(Vec::new());
        };
        let admitted = file.peers().map_err(|reason| ConfigError::Document {
            key: "admitted",
            reason,
        })?;
        let mut read = self.read();
        let revoked = read
            .0
            .difference(&admitted)
            .filter(|peer| !self.configured.contains(*peer))
            .copied()
            .collect();
        *read = (admitted, Some(version));
        Ok(revoked)
    }

    /// Decides the join of `peer`, presenting `invite` (if any): admitted peers join; an
    /// invite that is known and unexpired admits the peer for good (recorded in the
    /// store) and is spent.
    ///
    /// # Errors
    /// The [`JoinRefusal`] to send the node.
    pub async fn check_join(&self, peer: &PeerId, invite: Option<&str>) -> Result<(), JoinRefusal> {
        if let Err(error) = self.reload().await {
            // The last admissions read stay in force; the operator sees why.
            tracing::warn!(
                "cannot read the node admissions again: {}",
                domain_proto::ErrorChain(&error)
            );
        }
        if self.admits(peer) {
            return Ok(());
        }
        let Some(invite) = invite.filter(|invite| !invite.is_empty()) else {
            return Err(JoinRefusal::NotAdmitted { peer: *peer });
        };
        let hash = invite_hash(invite);
        let now = unix_seconds(SystemTime::now());
        let redeemed = self
            .store
            .update_nodes(|file| file.redeem(&hash, peer, now))
            .await;
        match redeemed {
            Ok(true) => {
                tracing::info!(node = %peer, "node admitted with an invite");
                self.read().0.insert(*peer);
                Ok(())
            }
            Ok(false) => Err(JoinRefusal::BadInvite { peer: *peer }),
            Err(error) => {
                tracing::warn!(node = %peer, "cannot record an admission: {}", domain_proto::ErrorChain(&error));
                Err(JoinRefusal::NotRecorded { peer: *peer })
            }
        }
    }
}

fn invite_hash(invite: &str) -> String {
    blake3::hash(invite.as_bytes()).to_hex().to_string()
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn ensure_dir(data_dir: &Path) -> Result<(), ConfigError> {
    domain_auth::open_private_dir(data_dir).map_err(ConfigError::DataDir)
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use rand_core::RngCore as _;
    rand_core::OsRng
        .try_fill_bytes(buf)
        .map_err(std::io::Error::other)
}

/// Takes the exclusive advisory lock of `file`, waiting for it.
/// (`File::lock` needs Rust 1.89; the workspace supports 1.85.)
#[cfg(target_os = "linux")]
fn lock_exclusive(file: &std::fs::File) -> std::io::Result<()> {
    rustix::fs::flock(file, rustix::fs::FlockOperation::LockExclusive).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn lock_exclusive(_: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    fn folder(dir: &Path) -> ControlStore {
        ControlStore::Folder(dir.to_owned())
    }

    #[tokio::test]
    async fn an_open_manager_admits_anyone_until_a_node_is_admitted_or_a_domain_declared() {
        let dir = crate::tests_support::private_tempdir();
        let (known, stranger) = (peer(), peer());
        let admission = Admission::load(folder(dir.path()), BTreeSet::new(), true)
            .await
            .unwrap();
        assert!(admission.is_open());
        assert!(admission.check_join(&stranger, None).await.is_ok());

        assert!(admit_node(dir.path(), &known).unwrap());
        assert!(!admit_node(dir.path(), &known).unwrap(), "admitted once");
        assert!(admission.check_join(&known, None).await.is_ok());
        assert_eq!(
            admission.check_join(&stranger, None).await,
            Err(JoinRefusal::NotAdmitted { peer: stranger })
        );

        let closed = Admission::load(
            folder(crate::tests_support::private_tempdir().path()),
            BTreeSet::new(),
            false,
        )
        .await
        .unwrap();
        assert!(!closed.is_open(), "a declared domain closes the manager");
        assert!(!closed.admits(&stranger));
    }

    #[tokio::test]
    async fn a_revoked_node_is_refused_at_its_next_join_and_named_once() {
        let dir = crate::tests_support::private_tempdir();
        let (node, configured) = (peer(), peer());
        admit_node(dir.path(), &node).unwrap();
        admit_node(dir.path(), &configured).unwrap();
        let admission = Admission::load(folder(dir.path()), BTreeSet::from([configured]), false)
            .await
            .unwrap();
        assert!(admission.check_join(&node, None).await.is_ok());

        assert!(revoke_node(dir.path(), &node).unwrap());
        assert!(revoke_node(dir.path(), &configured).unwrap());
        assert!(!revoke_node(dir.path(), &node).unwrap(), "revoked once");
        // The configuration file's admissions are not the folder's to revoke.
        assert_eq!(admission.reload().await.unwrap(), vec![node]);
        assert!(admission.reload().await.unwrap().is_empty());
        assert!(admission.check_join(&node, None).await.is_err());
        assert!(admission.check_join(&configured, None).await.is_ok());
    }

    #[tokio::test]
    async fn an_invite_admits_one_peer_once_and_is_kept_only_as_a_hash() {
        let dir = crate::tests_support::private_tempdir();
        let (first, second) = (peer(), peer());
        let admission = Admission::load(folder(dir.path()), BTreeSet::new(), false)
            .await
            .unwrap();
        let invite = create_invite(dir.path(), Duration::from_secs(600)).unwrap();
        assert!(invite.starts_with(INVITE_PREFIX));
        let text = std::fs::read_to_string(NodesFile::path(dir.path())).unwrap();
        assert!(!text.contains(&invite[INVITE_PREFIX.len()..]), "{text}");

        assert_eq!(
            admission.check_join(&first, Some("dcinv-00")).await,
            Err(JoinRefusal::BadInvite { peer: first })
        );
        assert!(admission.check_join(&first, Some(&invite)).await.is_ok());
        // Admitted for good, without the invite; the invite is spent.
        assert!(admission.check_join(&first, None).await.is_ok());
        assert!(admission.check_join(&second, Some(&invite)).await.is_err());
        // And the admission survives a manager that reads the folder again.
        let again = Admission::load(folder(dir.path()), BTreeSet::new(), false)
            .await
            .unwrap();
        assert!(again.admits(&first));
        assert!(!again.admits(&second));
    }

    #[tokio::test]
    async fn an_expired_invite_is_refused_and_dropped() {
        let dir = crate::tests_support::private_tempdir();
        let node = peer();
        let invite = create_invite(dir.path(), Duration::ZERO).unwrap();
        // Expired long ago, as a manager would see it a day later.
        let mut file = NodesFile::load(dir.path()).unwrap();
        file.invites[0].expires = 1;
        write_toml(&NodesFile::path(dir.path()), &file).unwrap();
        let admission = Admission::load(folder(dir.path()), BTreeSet::new(), false)
            .await
            .unwrap();
        assert_eq!(
            admission.check_join(&node, Some(&invite)).await,
            Err(JoinRefusal::BadInvite { peer: node })
        );
        assert!(NodesFile::load(dir.path()).unwrap().invites.is_empty());
    }

    #[tokio::test]
    async fn a_bad_peer_id_in_the_file_is_named() {
        let dir = crate::tests_support::private_tempdir();
        std::fs::write(NodesFile::path(dir.path()), "admitted = [\"nope\"]\n").unwrap();
        let error = NodesFile::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("\"nope\" is not a peer id"), "{error}");
    }
}
