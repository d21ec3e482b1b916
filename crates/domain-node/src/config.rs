//! What a node needs to start: [`NodeConfig`], and [`NodeSettings`], the partial
//! form that the command line, the environment and a TOML file fill in (flags over the
//! environment over the file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use domain_capabilities::{Limits, MAX_CONCURRENT_TASK_STREAMS};
use domain_cluster::Multiaddr;
use domain_cluster::addr::Protocol;
use domain_datastore::LocalOptions;
use domain_settings::parse_duration;
use serde::{Deserialize, Serialize};

/// Capacity advertised for each capability when none is configured.
pub const DEFAULT_CAPACITY: i32 = 16;

/// How often a node re-joins the manager (the join doubles as its heartbeat).
pub const DEFAULT_JOIN_INTERVAL: Duration = Duration::from_secs(5);

/// How long running task streams may go on after a shutdown request.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The limit on each remote wait of the node's swarm (dials, joins, key fetches).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Task streams one peer may have in their handshake at once, by default.
///
/// An honest handshake is two small frames and ends in milliseconds; by default
/// the scheduler gives a node at most 16 + 16 tasks at once ([`DEFAULT_CAPACITY`]
/// per capability). A peer past this many is opening streams it does not
/// authenticate: without the limit, one peer could take every place of the pool of
/// handshakes and push out the handshakes of every other client.
pub const DEFAULT_MAX_HANDSHAKES_PER_PEER: usize = 32;

/// Where a node with data folder `data_dir` keeps its peer identity.
#[must_use]
pub fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.key")
}

/// Everything [`Node::start`](crate::Node::start) needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The managers' addresses, each ending with `/p2p/<manager id>`; never empty. With
    /// several (managers sharing one state in etcd), the node finds the leader among them
    /// and follows it when it changes; the first is asked first.
    pub managers: Vec<Multiaddr>,
    /// Holds `identity.key` and the datastore (`store/`).
    pub data_dir: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// The addresses others reach the node at, when not those it listens on (a port
    /// forward, a proxy): announced instead of them. Empty: the listen addresses.
    pub announce: Vec<Multiaddr>,
    /// The name the node registers with; its peer id when `None`.
    pub name: Option<String>,
    /// Concurrent `/store/v1` tasks advertised to the scheduler; -1 is unlimited.
    pub store_capacity: i32,
    /// Concurrent `/load/v1` tasks advertised to the scheduler; -1 is unlimited.
    pub load_capacity: i32,
    /// Time between joins once joined; failed joins are retried sooner.
    pub join_interval: Duration,
    /// How long running task streams may go on after a shutdown request before
    /// they are cut.
    pub shutdown_grace: Duration,
    /// The limit on each remote wait of the swarm.
    pub request_timeout: Duration,
    /// The limits of every task stream.
    pub limits: Limits,
    /// Task streams served at once, counted from the acceptance of their token; one more
    /// is dropped at once.
    pub max_task_streams: usize,
    /// Task streams one remote peer may have in their handshake at once (all peers
    /// together have 128, the oldest ending for a new one when all are taken); one more
    /// from that peer is dropped at once. See [`DEFAULT_MAX_HANDSHAKES_PER_PEER`].
    pub max_handshakes_per_peer: usize,
    /// The manager of another cluster (with `/p2p/<id>`) to serve every task from,
    /// as a gateway in front of that cluster's nodes; `None` serves from the local
    /// datastore. The node reaches it as a client with the identity at
    /// [`upstream_identity_path`](Self::upstream_identity_path), which the upstream
    /// domains must allow.
    pub upstream: Option<Multiaddr>,
    /// Settings of the local datastore, among them how much of cut uploads it keeps for
    /// them to resume (`partial_bytes`, `partial_ttl`).
    pub store_options: LocalOptions,
    /// Where item metadata lives: `None` (the default) in `store/meta.redb`, else in
    /// PostgreSQL. Blobs stay in `store/` either way.
    pub metadata: Option<MetadataDatabase>,
    /// A one-use invite from the manager's operator (`domain-manager node invite`), sent
    /// with the joins until one is accepted: the manager then admits this node for good.
    pub invite: Option<String>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` over HTTP; `None` (the
    /// default) serves none.
    pub metrics: Option<std::net::SocketAddr>,
}

impl NodeConfig {
    /// A configuration with the defaults: loopback TCP, QUIC and WebSocket on
    /// ports the system picks, capacities of [`DEFAULT_CAPACITY`].
    ///
    /// # Errors
    /// [`ConfigError::ManagerWithoutPeerId`] when `manager` does not end with
    /// `/p2p/<id>`.
    pub fn new(manager: Multiaddr, data_dir: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        check_manager(&manager)?;
        Ok(Self {
            managers: vec![manager],
            data_dir: data_dir.into(),
            listen: default_listen_addrs(),
            announce: Vec::new(),
            name: None,
            store_capacity: DEFAULT_CAPACITY,
            load_capacity: DEFAULT_CAPACITY,
            join_interval: DEFAULT_JOIN_INTERVAL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            limits: Limits::default(),
            max_task_streams: MAX_CONCURRENT_TASK_STREAMS,
            max_handshakes_per_peer: DEFAULT_MAX_HANDSHAKES_PER_PEER,
            upstream: None,
            store_options: LocalOptions::default(),
            metadata: None,
            invite: None,
            metrics: None,
        })
    }

    /// Replaces the managers with `managers` (several managers on one etcd), asked in
    /// this order.
    ///
    /// # Errors
    /// [`ConfigError::ManagerWithoutPeerId`] for an address without `/p2p/<id>`;
    /// [`ConfigError::Missing`] when `managers` is empty.
    pub fn with_managers(
        mut self,
        managers: impl IntoIterator<Item = Multiaddr>,
    ) -> Result<Self, ConfigError> {
        let managers: Vec<Multiaddr> = managers.into_iter().collect();
        if managers.is_empty() {
            return Err(ConfigError::Missing { key: "manager" });
        }
        managers.iter().try_for_each(check_manager)?;
        self.managers = managers;
        Ok(self)
    }

    /// Serves every task from the cluster of the manager at `upstream` (a gateway).
    ///
    /// # Errors
    /// [`ConfigError::ManagerWithoutPeerId`] when `upstream` does not end with
    /// `/p2p/<id>`; [`ConfigError::UpstreamIsOwnManager`] when it is this node's own
    /// manager, which would assign the node's tasks back to it.
    pub fn with_upstream(mut self, upstream: Multiaddr) -> Result<Self, ConfigError> {
        let peer = |addr: &Multiaddr| match addr.iter().last() {
            Some(Protocol::P2p(peer)) => Some(peer),
            _ => None,
        };
        let Some(upstream_peer) = peer(&upstream) else {
            return Err(ConfigError::ManagerWithoutPeerId { addr: upstream });
        };
        if self
            .managers
            .iter()
            .any(|manager| peer(manager) == Some(upstream_peer))
        {
            return Err(ConfigError::UpstreamIsOwnManager { addr: upstream });
        }
        self.upstream = Some(upstream);
        Ok(self)
    }

    /// Where the node keeps its peer identity.
    #[must_use]
    pub fn identity_path(&self) -> PathBuf {
        identity_path(&self.data_dir)
    }

    /// Where a gateway keeps the identity it reaches its upstream cluster with (its own
    /// peer id there, apart from the node's).
    #[must_use]
    pub fn upstream_identity_path(&self) -> PathBuf {
        self.data_dir.join("upstream.key")
    }

    /// Where the node keeps its datastore.
    #[must_use]
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }
}

/// The environment variable a node reads its metadata database's password from, when no
/// password file is given.
pub const METADATA_PASSWORD_VAR: &str = "DOMAIN_NODE_METADATA_PASSWORD";

/// A node's item metadata in PostgreSQL: the database, its schema, and where the password
/// is (a file, else [`METADATA_PASSWORD_VAR`], else none: a socket with peer
/// authentication, say). Never a password itself: it would show in process lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataDatabase {
    /// `postgres://user@host:port/database`, without a password.
    pub url: String,
    /// The schema of this node's rows: one per node on a shared database.
    pub schema: String,
    /// A file holding the password (its first line).
    pub password_file: Option<PathBuf>,
    /// PEM certificates to trust for the database's TLS certificate instead of Mozilla's
    /// roots (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl MetadataDatabase {
    /// The catalog configuration, with the password read from its file or the
    /// environment.
    ///
    /// # Errors
    /// [`ConfigError::Metadata`] for a URL or schema the catalog refuses;
    /// [`ConfigError::PasswordFile`] when the file cannot be read.
    pub fn catalog_config(&self) -> Result<domain_postgres::PostgresConfig, ConfigError> {
        let mut config = domain_postgres::PostgresConfig::new(&self.url)
            .and_then(|config| config.schema(&self.schema))
            .map_err(ConfigError::Metadata)?;
        let password =
            match &self.password_file {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|source| {
                    ConfigError::PasswordFile {
                        path: path.clone(),
                        source,
                    }
                })?),
                None => std::env::var(METADATA_PASSWORD_VAR).ok(),
            };
        if let Some(password) = password {
            config = config.password(password.lines().next().unwrap_or_default());
        }
        if let Some(ca_file) = &self.ca_file {
            config = config.ca_file(ca_file).map_err(ConfigError::Metadata)?;
        }
        Ok(config)
    }
}

/// Loopback TCP, QUIC and WebSocket (for browser pages), on ports the system picks: the
/// cluster's [`domain_cluster::config::loopback_listen_addrs`].
#[must_use]
pub fn default_listen_addrs() -> Vec<Multiaddr> {
    domain_cluster::config::loopback_listen_addrs()
}

/// A node's settings, declared once: the flags of `domain-node run` (some also read from
/// the environment) and the keys of its TOML file, named as the flags are (`data-dir`,
/// `store-capacity`, ...). Every one is optional; [`into_config`](Self::into_config)
/// fills in the defaults. [`domain_settings::layer`] puts the flags over the file.
///
/// ```
/// use domain_node::NodeSettings;
///
/// let file: NodeSettings = toml::from_str(r#"
///     manager = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWLRPJAA5o6Ztr9vdumNjgx3D7T9dbtXbZpGbSaDcJkfAP"
///     data-dir = "/var/lib/domain-node"
///     store-capacity = -1
///     join-interval = "2s"
/// "#)?;
/// let flags = NodeSettings { store_capacity: Some(8), ..NodeSettings::default() };
/// let config = domain_settings::layer(&file, &flags)?.into_config()?;
/// assert_eq!(config.store_capacity, 8);
/// assert_eq!(config.join_interval, std::time::Duration::from_secs(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSettings {
    /// A manager's multiaddr, ending with /p2p/PEER_ID; repeat it (or separate with
    /// commas) for several managers on one etcd: the node follows whichever leads.
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "DOMAIN_MANAGER",
        value_delimiter = ','
    )]
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "domain_settings::one_or_many"
    )]
    pub manager: Vec<Multiaddr>,
    /// Holds identity.key and the datastore (store/).
    #[arg(long, value_name = "DIR", env = "DOMAIN_NODE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// An address to listen on (repeatable) [default: loopback TCP, QUIC and WebSocket].
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "DOMAIN_NODE_LISTEN",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<Multiaddr>,
    /// An address others reach this node at (repeatable), announced instead of the listen
    /// addresses: behind a port forward or a proxy [default: the listen addresses].
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "DOMAIN_NODE_ANNOUNCE",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub announce: Vec<Multiaddr>,
    /// The name to register with [default: the peer id].
    #[arg(long, value_name = "N", env = "DOMAIN_NODE_NAME")]
    pub name: Option<String>,
    /// Concurrent /store/v1 tasks to take, -1 for unlimited [default: 16].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub store_capacity: Option<i32>,
    /// Concurrent /load/v1 tasks to take, -1 for unlimited [default: 16].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub load_capacity: Option<i32>,
    /// Time between joins, the node's heartbeat [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "domain_settings::duration")]
    pub join_interval: Option<Duration>,
    /// How long running task streams may go on after Ctrl-C or SIGTERM [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "domain_settings::duration")]
    pub shutdown_grace: Option<Duration>,
    /// The limit on each remote wait: dials, joins, key fetches [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "domain_settings::duration")]
    pub request_timeout: Option<Duration>,
    /// Task streams served at once; one more is dropped [default: 256].
    #[arg(long, value_name = "N")]
    pub max_task_streams: Option<usize>,
    /// Task streams one remote peer may have in their handshake at once [default: 32].
    #[arg(long, value_name = "N")]
    pub max_handshakes_per_peer: Option<usize>,
    /// Store nothing here: serve every task from the cluster of this manager (its
    /// multiaddr with /p2p/PEER_ID), as a gateway in front of its nodes. The node reaches it
    /// as the peer in DIR/upstream.key, which its domains must allow.
    #[arg(long, value_name = "MULTIADDR", env = "DOMAIN_NODE_UPSTREAM")]
    pub upstream: Option<Multiaddr>,
    /// Bytes of cut uploads kept for them to resume, all together; the oldest go first
    /// [default: 4 GiB].
    #[arg(long, value_name = "BYTES")]
    pub resume_bytes: Option<u64>,
    /// How long the bytes of a cut upload are kept [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "domain_settings::duration")]
    pub resume_ttl: Option<Duration>,
    /// Keep item metadata in this PostgreSQL database (postgres://user@host:port/db,
    /// without a password) instead of DIR/store/meta.redb; blobs stay in DIR/store.
    #[arg(long, value_name = "URL", env = "DOMAIN_NODE_METADATA")]
    pub metadata: Option<String>,
    /// The schema of this node's rows in --metadata, one per node [default: domain_store].
    #[arg(long, value_name = "NAME", env = "DOMAIN_NODE_METADATA_SCHEMA")]
    pub metadata_schema: Option<String>,
    /// A file whose first line is the password of --metadata [default: the environment
    /// variable DOMAIN_NODE_METADATA_PASSWORD, else none].
    #[arg(long, value_name = "FILE", env = "DOMAIN_NODE_METADATA_PASSWORD_FILE")]
    pub metadata_password_file: Option<PathBuf>,
    /// PEM certificates to trust for --metadata's TLS (sslmode in its URL) instead of
    /// Mozilla's roots: a private CA.
    #[arg(long, value_name = "FILE", env = "DOMAIN_NODE_METADATA_CA_FILE")]
    pub metadata_ca_file: Option<PathBuf>,
    /// A one-use invite from the manager's operator (`domain-manager node invite`): the
    /// manager admits this node at its first join.
    #[arg(
        long,
        value_name = "INVITE",
        env = "DOMAIN_NODE_INVITE",
        hide_env_values = true
    )]
    pub invite: Option<String>,
    /// Serve Prometheus metrics (`/metrics`), `/healthz` and `/readyz` (ready once
    /// joined) over HTTP on this address, e.g. 127.0.0.1:9464 [default: none].
    #[arg(long, value_name = "ADDR", env = "DOMAIN_NODE_METRICS")]
    pub metrics: Option<std::net::SocketAddr>,
}

impl NodeSettings {
    /// Reads settings from a TOML file.
    ///
    /// # Errors
    /// [`ConfigError::Settings`], naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Ok(domain_settings::load(path.as_ref())?)
    }

    /// Checks the settings and fills in the defaults.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] without `manager` or `data-dir`; a
    /// [`ConfigError`] naming the key of any value out of range.
    pub fn into_config(self) -> Result<NodeConfig, ConfigError> {
        let mut managers = self.manager.into_iter();
        let first = managers
            .next()
            .ok_or(ConfigError::Missing { key: "manager" })?;
        let data_dir = self
            .data_dir
            .ok_or(ConfigError::Missing { key: "data-dir" })?;
        let mut config = NodeConfig::new(first.clone(), data_dir)?
            .with_managers(std::iter::once(first).chain(managers))?;
        if !self.listen.is_empty() {
            config.listen = self.listen;
        }
        if let Some(name) = self.name {
            if name.trim().is_empty() {
                return Err(ConfigError::EmptyName);
            }
            config.name = Some(name);
        }
        if let Some(capacity) = self.store_capacity {
            config.store_capacity = check_capacity("store-capacity", capacity)?;
        }
        if let Some(capacity) = self.load_capacity {
            config.load_capacity = check_capacity("load-capacity", capacity)?;
        }
        config.join_interval = self.join_interval.unwrap_or(config.join_interval);
        config.shutdown_grace = self.shutdown_grace.unwrap_or(config.shutdown_grace);
        config.request_timeout = self.request_timeout.unwrap_or(config.request_timeout);
        if let Some(limit) = self.max_task_streams {
            config.max_task_streams = check_limit("max-task-streams", limit)?;
        }
        if let Some(limit) = self.max_handshakes_per_peer {
            config.max_handshakes_per_peer = check_limit("max-handshakes-per-peer", limit)?;
        }
        if let Some(bytes) = self.resume_bytes {
            config.store_options.partial_bytes = bytes;
        }
        if let Some(ttl) = self.resume_ttl {
            config.store_options.partial_ttl = ttl;
        }
        if let Some(upstream) = self.upstream {
            config = config.with_upstream(upstream)?;
        }
        match self.metadata {
            Some(url) => {
                if config.upstream.is_some() {
                    return Err(ConfigError::MetadataOnGateway);
                }
                let metadata = MetadataDatabase {
                    url,
                    schema: self
                        .metadata_schema
                        .unwrap_or_else(|| domain_postgres::DEFAULT_SCHEMA.to_owned()),
                    password_file: self.metadata_password_file,
                    ca_file: self.metadata_ca_file,
                };
                // The URL and schema are checked now; the password is read at start.
                domain_postgres::PostgresConfig::new(&metadata.url)
                    .and_then(|config| config.schema(&metadata.schema))
                    .map_err(ConfigError::Metadata)?;
                config.metadata = Some(metadata);
            }
            None if self.metadata_schema.is_some()
                || self.metadata_password_file.is_some()
                || self.metadata_ca_file.is_some() =>
            {
                return Err(ConfigError::Missing { key: "metadata" });
            }
            None => {}
        }
        config.invite = self.invite.filter(|invite| !invite.trim().is_empty());
        config.metrics = self.metrics;
        config.announce = self.announce;
        Ok(config)
    }
}

fn check_manager(manager: &Multiaddr) -> Result<(), ConfigError> {
    if matches!(manager.iter().last(), Some(Protocol::P2p(_))) {
        Ok(())
    } else {
        Err(ConfigError::ManagerWithoutPeerId {
            addr: manager.clone(),
        })
    }
}

fn check_capacity(key: &'static str, capacity: i32) -> Result<i32, ConfigError> {
    if capacity < -1 {
        return Err(ConfigError::Capacity { key, capacity });
    }
    Ok(capacity)
}

fn check_limit(key: &'static str, limit: usize) -> Result<usize, ConfigError> {
    if limit == 0 {
        return Err(ConfigError::ZeroLimit { key });
    }
    Ok(limit)
}

/// Why a node's configuration is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is absent from both the file and the command line.
    #[error("no {key} given (flag --{key} or key `{key}` in the config file)")]
    Missing {
        /// The setting.
        key: &'static str,
    },
    /// The settings file cannot be read, or is not valid TOML of the node's keys.
    #[error(transparent)]
    Settings(#[from] domain_settings::SettingsError),
    /// The manager's address does not name the manager.
    #[error("manager address {addr} does not end with /p2p/<manager peer id>")]
    ManagerWithoutPeerId {
        /// The address given.
        addr: Multiaddr,
    },
    /// The upstream of a gateway is the node's own manager: its tasks would come back
    /// to it.
    #[error("upstream {addr} is this node's own manager; a gateway serves another cluster")]
    UpstreamIsOwnManager {
        /// The address given.
        addr: Multiaddr,
    },
    /// A capacity below -1.
    #[error("{key} {capacity} is out of range (-1 for unlimited, or 0 and up)")]
    Capacity {
        /// The setting.
        key: &'static str,
        /// The value given.
        capacity: i32,
    },
    /// A name of only white space.
    #[error("the node name is empty")]
    EmptyName,
    /// The metadata database's URL or schema is not usable.
    #[error("metadata")]
    Metadata(#[source] domain_postgres::ConfigError),
    /// The metadata database's password file cannot be read.
    #[error("cannot read the metadata password file {path}", path = path.display())]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A gateway stores nothing, so it has no metadata to keep.
    #[error("metadata is for a node's own store; a gateway (upstream) has none")]
    MetadataOnGateway,
    /// A stream limit of zero, which would refuse every stream.
    #[error("{key} must be at least 1")]
    ZeroLimit {
        /// The setting.
        key: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANAGER: &str =
        "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWLRPJAA5o6Ztr9vdumNjgx3D7T9dbtXbZpGbSaDcJkfAP";

    fn addr(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    /// What `domain-node run ARGS` gives as flags.
    fn flags(args: &[&str]) -> NodeSettings {
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            settings: NodeSettings,
        }
        let args = std::iter::once("run").chain(args.iter().copied());
        <Run as clap::Parser>::try_parse_from(args)
            .unwrap()
            .settings
    }

    fn settings() -> NodeSettings {
        NodeSettings {
            manager: vec![addr(MANAGER)],
            data_dir: Some("/tmp/node".into()),
            ..NodeSettings::default()
        }
    }

    #[test]
    fn metadata_in_postgres_takes_a_url_without_password_and_a_schema() {
        let set = domain_settings::layer(
            &settings(),
            &flags(&[
                "--metadata",
                "postgres://node@db.internal/meta",
                "--metadata-schema",
                "node_7",
                "--metadata-password-file",
                "/run/secrets/db",
            ]),
        )
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(
            set.metadata,
            Some(MetadataDatabase {
                url: "postgres://node@db.internal/meta".into(),
                schema: "node_7".into(),
                password_file: Some("/run/secrets/db".into()),
                ca_file: None,
            })
        );
        let with = |changes: NodeSettings| {
            domain_settings::layer(&settings(), &changes)
                .unwrap()
                .into_config()
        };
        let password_in_url = with(NodeSettings {
            metadata: Some("postgres://node:secret@db.internal/meta".into()),
            ..NodeSettings::default()
        });
        assert!(matches!(
            password_in_url,
            Err(ConfigError::Metadata(
                domain_postgres::ConfigError::PasswordInUrl
            ))
        ));
        let schema_alone = with(NodeSettings {
            metadata_schema: Some("node_7".into()),
            ..NodeSettings::default()
        });
        assert!(matches!(
            schema_alone,
            Err(ConfigError::Missing { key: "metadata" })
        ));
        let gateway = with(NodeSettings {
            metadata: Some("postgres://node@db.internal/meta".into()),
            upstream: Some(addr(
                "/ip4/127.0.0.1/tcp/5001/p2p/12D3KooWCKrmoGZQvSqPyJfCy2x8S6vSeNwTYb1Qz4Kx1B1JwT3m",
            )),
            ..NodeSettings::default()
        });
        assert!(matches!(gateway, Err(ConfigError::MetadataOnGateway)));
        // Without it, redb in the store folder.
        assert_eq!(with(NodeSettings::default()).unwrap().metadata, None);
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let config = settings().into_config().unwrap();
        assert_eq!(config.store_capacity, DEFAULT_CAPACITY);
        assert_eq!(config.load_capacity, DEFAULT_CAPACITY);
        assert_eq!(config.join_interval, DEFAULT_JOIN_INTERVAL);
        assert_eq!(config.listen, default_listen_addrs());
        assert_eq!(config.name, None);
        assert_eq!(config.identity_path(), Path::new("/tmp/node/identity.key"));
        assert_eq!(config.store_dir(), Path::new("/tmp/node/store"));
    }

    #[test]
    fn flags_override_the_file_key_by_key() {
        let file = NodeSettings {
            name: Some("from-file".into()),
            load_capacity: Some(3),
            listen: vec![addr("/ip4/127.0.0.1/tcp/7000")],
            ..settings()
        };
        let merged = domain_settings::layer(&file, &flags(&["--name", "from-flag"])).unwrap();
        let config = merged.into_config().unwrap();
        assert_eq!(config.name.as_deref(), Some("from-flag"));
        assert_eq!(config.load_capacity, 3);
        assert_eq!(config.listen[0].to_string(), "/ip4/127.0.0.1/tcp/7000");

        let merged = domain_settings::layer(
            &file,
            &flags(&[
                "--listen",
                "/ip4/127.0.0.1/tcp/7001",
                "--join-interval",
                "1m 30s",
            ]),
        )
        .unwrap();
        let config = merged.into_config().unwrap();
        assert_eq!(config.listen, [addr("/ip4/127.0.0.1/tcp/7001")]);
        assert_eq!(config.join_interval, Duration::from_secs(90));
        assert_eq!(config.name.as_deref(), Some("from-file"));
    }

    #[test]
    fn the_packaged_settings_file_reads_and_names_the_state_folder() {
        let packaged = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/etc/node.toml");
        let file = NodeSettings::load(packaged).unwrap();
        assert_eq!(file.data_dir, Some(PathBuf::from("/var/lib/domain-node")));
        assert!(
            file.manager.is_empty(),
            "the operator names the manager: a packaged one would be wrong"
        );
    }

    #[test]
    fn no_flags_leave_every_key_of_the_example_file_as_it_is() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/node.example.toml"
        );
        let mut file = NodeSettings::load(example).unwrap();
        // The example leaves the gateway, invite, metrics, announce and metadata keys
        // commented out.
        file.upstream = Some(addr(
            "/ip4/127.0.0.1/tcp/5001/p2p/12D3KooWBK6mNwBwAwHhygpw9HQ6vZiwzyDPx9jLLk4v6VDdg3YL",
        ));
        file.metadata = Some("postgres://node1@db.internal/domains".into());
        file.metadata_schema = Some("node1".into());
        file.metadata_password_file = Some("/etc/domain/node1-db-password".into());
        file.metadata_ca_file = Some("/etc/domain/db-ca.pem".into());
        file.invite = Some("dcinv-x".into());
        file.metrics = Some("127.0.0.1:9464".parse().unwrap());
        file.announce = vec![addr("/ip4/203.0.113.7/tcp/4001")];
        let every_key = toml::Table::try_from(&file).unwrap();
        assert_eq!(
            every_key.len(),
            21,
            "a key of NodeSettings is not in this test"
        );
        assert_eq!(domain_settings::layer(&file, &flags(&[])).unwrap(), file);
    }

    #[test]
    fn a_missing_manager_or_data_dir_is_named() {
        let no_manager = NodeSettings {
            manager: Vec::new(),
            ..settings()
        };
        assert!(matches!(
            no_manager.into_config(),
            Err(ConfigError::Missing { key: "manager" })
        ));
        let no_dir = NodeSettings {
            data_dir: None,
            ..settings()
        };
        assert!(matches!(
            no_dir.into_config(),
            Err(ConfigError::Missing { key: "data-dir" })
        ));
    }

    #[test]
    fn a_manager_address_without_peer_id_is_refused() {
        let bare = NodeSettings {
            manager: vec![addr("/ip4/127.0.0.1/tcp/4001")],
            ..settings()
        };
        assert!(matches!(
            bare.into_config(),
            Err(ConfigError::ManagerWithoutPeerId { .. })
        ));
    }

    #[test]
    fn the_example_config_in_the_repository_is_valid() {
        let file: NodeSettings =
            toml::from_str(include_str!("../../../config/node.example.toml")).unwrap();
        let config = file.into_config().unwrap();
        assert_eq!(config.name.as_deref(), Some("node-1"));
        assert_eq!(config.upstream, None);
    }

    #[test]
    fn a_gateway_names_another_clusters_manager() {
        let upstream = addr(
            "/ip4/127.0.0.1/tcp/5001/p2p/12D3KooWBK6mNwBwAwHhygpw9HQ6vZiwzyDPx9jLLk4v6VDdg3YL",
        );
        let gateway = NodeSettings {
            upstream: Some(upstream.clone()),
            ..settings()
        };
        let config = gateway.into_config().unwrap();
        assert_eq!(config.upstream, Some(upstream));
        assert_eq!(
            config.upstream_identity_path(),
            Path::new("/tmp/node/upstream.key")
        );
        assert_eq!(settings().into_config().unwrap().upstream, None);

        // Its own manager would give its tasks back to it.
        let own = NodeSettings {
            upstream: Some(addr(&MANAGER.replace("4001", "4002"))),
            ..settings()
        };
        assert!(matches!(
            own.into_config(),
            Err(ConfigError::UpstreamIsOwnManager { .. })
        ));
        let bare = NodeSettings {
            upstream: Some(addr("/ip4/127.0.0.1/tcp/5001")),
            ..settings()
        };
        assert!(matches!(
            bare.into_config(),
            Err(ConfigError::ManagerWithoutPeerId { .. })
        ));
    }

    #[test]
    fn bad_values_are_refused_naming_their_key() {
        let cases = [
            NodeSettings {
                store_capacity: Some(-2),
                ..settings()
            },
            NodeSettings {
                name: Some("  ".into()),
                ..settings()
            },
        ];
        for case in cases {
            assert!(case.clone().into_config().is_err(), "{case:?}");
        }
        for (line, key) in [
            ("join-interval = \"soon\"", "join-interval"),
            ("shutdown-grace = \"0s\"", "shutdown-grace"),
            ("resume-ttl = \"0s\"", "resume-ttl"),
            ("listen = [\"not an address\"]", "listen"),
            ("upstream = \"nowhere\"", "upstream"),
        ] {
            let error = toml::from_str::<NodeSettings>(line).unwrap_err();
            assert!(error.to_string().contains(key), "{line}: {error}");
        }
    }

    #[test]
    fn unknown_keys_in_a_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "manager = \"x\"\nstore-capacty = 3\n").unwrap();
        let error = NodeSettings::load(&path).unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::Settings(domain_settings::SettingsError::Parse { .. })
            ),
            "{error}"
        );
        assert!(error.to_string().contains("node.toml"));
    }

    #[test]
    fn the_example_config_parses() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/node.example.toml"
        );
        let config = NodeSettings::load(example).unwrap().into_config().unwrap();
        assert_eq!(config.store_capacity, DEFAULT_CAPACITY);
        assert_eq!(config.max_task_streams, MAX_CONCURRENT_TASK_STREAMS);
        assert_eq!(
            config.max_handshakes_per_peer,
            DEFAULT_MAX_HANDSHAKES_PER_PEER
        );
        // The example shows the defaults.
        let defaults = LocalOptions::default();
        assert_eq!(config.store_options.partial_bytes, defaults.partial_bytes);
        assert_eq!(config.store_options.partial_ttl, defaults.partial_ttl);
    }

    #[test]
    fn what_is_kept_of_cut_uploads_is_set_from_the_settings() {
        let set = NodeSettings {
            resume_bytes: Some(1 << 20),
            resume_ttl: Some(Duration::from_secs(90 * 60)),
            ..settings()
        }
        .into_config()
        .unwrap();
        assert_eq!(set.store_options.partial_bytes, 1 << 20);
        assert_eq!(set.store_options.partial_ttl, Duration::from_secs(90 * 60));
    }

    #[test]
    fn stream_limits_are_set_from_the_settings_and_zero_is_refused() {
        let set = NodeSettings {
            max_task_streams: Some(8),
            max_handshakes_per_peer: Some(2),
            ..settings()
        }
        .into_config()
        .unwrap();
        assert_eq!((set.max_task_streams, set.max_handshakes_per_peer), (8, 2));
        for zero in [
            NodeSettings {
                max_task_streams: Some(0),
                ..settings()
            },
            NodeSettings {
                max_handshakes_per_peer: Some(0),
                ..settings()
            },
        ] {
            let error = zero.into_config().unwrap_err();
            assert!(matches!(error, ConfigError::ZeroLimit { .. }), "{error}");
        }
    }
}
