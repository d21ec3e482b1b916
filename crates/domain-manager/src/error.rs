//! The manager's errors: [`ConfigError`] for what it is given, [`ManagerError`] for running.

use std::path::PathBuf;

use domain_auth::KeyStoreError;
use domain_cluster::{ClusterError, IdentityError};
use domain_scheduler::SchedulerError;

/// A configuration, domain list or domain key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file cannot be written.
    #[error("cannot write {path}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file is not valid TOML of the expected shape.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A required setting is absent from both the file and the command line.
    #[error("no {key} given (flag --{key} or key `{key}` in the settings file)")]
    Missing {
        /// The setting.
        key: &'static str,
    },
    /// The settings file cannot be read, or is not valid TOML of the manager's keys.
    #[error(transparent)]
    Settings(#[from] domain_settings::SettingsError),
    /// A setting has a value that does not parse.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// The file (empty when the value came from elsewhere).
        path: PathBuf,
        /// The setting's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A declared domain is not valid.
    #[error("domain {domain:?}: {reason}")]
    Domain {
        /// The domain id (at most its first 80 characters).
        domain: String,
        /// What is wrong.
        reason: String,
    },
    /// The data folder cannot be created, or others may access it.
    #[error("data folder")]
    DataDir(#[source] domain_auth::PrivateDirError),
    /// The domain key store failed.
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
    /// The operator's state in etcd cannot be read or written.
    #[error("etcd")]
    Etcd(#[from] domain_etcd::EtcdError),
    /// A document of the operator's state in etcd is not valid.
    #[error("etcd key {key}: {reason}")]
    Document {
        /// The key, under the cluster's prefix.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The managers on etcd sign a domain's tokens with a key this manager does not have.
    #[error(
        "domain {domain:?}: the managers on etcd sign with key {published}, which this manager \
         does not have; import it from a manager that has it (`domain-manager domain export` / `import`)"
    )]
    NoKey {
        /// The domain.
        domain: String,
        /// The public key etcd publishes, hex.
        published: String,
    },
    /// This manager's key of a domain is not the one the managers on etcd sign with.
    #[error(
        "domain {domain:?}: this manager's key is not the one published in etcd ({published}); \
         import the domain's key from a manager that has it (`domain-manager domain export` / `import`)"
    )]
    KeyMismatch {
        /// The domain.
        domain: String,
        /// The public key etcd publishes, hex.
        published: String,
    },
}

/// Why the manager could not start, or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The configuration, the domain list or a domain key cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data folder cannot be created, or others may access it.
    #[error("data folder")]
    DataDir(#[source] domain_auth::PrivateDirError),
    /// The identity file cannot be used.
    #[error("identity")]
    Identity(#[from] IdentityError),
    /// The scheduler's state cannot be opened (a corrupt or locked database, a poisoned store).
    #[error("scheduler")]
    Scheduler(#[from] SchedulerError),
    /// The operator's metrics endpoint cannot listen.
    #[error(transparent)]
    Metrics(domain_telemetry::EndpointError),
    /// The swarm failed.
    #[error("cluster")]
    Cluster(#[from] ClusterError),
    /// etcd, where managers that share their state keep it, cannot be used.
    #[error("etcd")]
    Etcd(#[from] domain_etcd::EtcdError),
    /// This manager led the others through etcd and no longer does: its lease ran out
    /// (etcd unreachable for as long, or the process paused). Another leads, or will.
    #[error("this manager lost its leadership: its etcd lease ran out")]
    LeadershipLost,
    /// No domain is declared and no node admitted (open mode), on an address beyond
    /// loopback, without `--open`.
    #[error(
        "refusing to run open on {addr}: no domain is declared and no node admitted, so any peer could join and submit; declare a domain (`domain-manager domain create`) and admit nodes (`domain-manager node allow`), listen on loopback only, or pass --open"
    )]
    OpenBeyondLoopback {
        /// The first address beyond loopback.
        addr: domain_cluster::Multiaddr,
    },
    /// The scheduler thread could not be started.
    #[error("cannot start the scheduler thread: {0}")]
    Thread(std::io::Error),
    /// The manager has stopped (or its scheduler thread died).
    #[error("the manager has stopped")]
    Stopped,
}
