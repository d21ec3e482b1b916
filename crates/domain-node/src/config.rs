//! What a node needs to start: [`NodeConfig`], and [`NodeSettings`], the partial
//! form that a TOML file and the command line fill in (flags override the file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use domain_capabilities::{Limits, MAX_CONCURRENT_TASK_STREAMS};
use domain_cluster::Multiaddr;
use domain_cluster::addr::{ParseError, Protocol};
use domain_datastore::LocalOptions;
use serde::Deserialize;

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
    /// The manager's address, ending with `/p2p/<manager id>`.
    pub manager: Multiaddr,
    /// Holds `identity.key` and the datastore (`store/`).
    pub data_dir: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
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
    /// A one-use invite from the manager's operator (`domain-manager node invite`), sent
    /// with the joins until one is accepted: the manager then admits this node for good.
    pub invite: Option<String>,
}

impl NodeConfig {
    /// A configuration with the defaults: loopback TCP, QUIC and WebSocket on
    /// ports the system picks, capacities of [`DEFAULT_CAPACITY`].
    ///
    /// # Errors
    /// [`ConfigError::ManagerWithoutPeerId`] when `manager` does not end with
    /// `/p2p/<id>`.
    pub fn new(manager: Multiaddr, data_dir: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        if !matches!(manager.iter().last(), Some(Protocol::P2p(_))) {
            return Err(ConfigError::ManagerWithoutPeerId { addr: manager });
        }
        Ok(Self {
            manager,
            data_dir: data_dir.into(),
            listen: default_listen_addrs(),
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
            invite: None,
        })
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
        if peer(&self.manager) == Some(upstream_peer) {
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

/// Loopback TCP, QUIC and WebSocket (for browser pages), on ports the system picks: the
/// cluster's [`domain_cluster::config::loopback_listen_addrs`].
#[must_use]
pub fn default_listen_addrs() -> Vec<Multiaddr> {
    domain_cluster::config::loopback_listen_addrs()
}

/// A node's settings as a config file or the command line gives them: every
/// key optional, named as the flags are (`data-dir`, `store-capacity`, ...).
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
/// let config = file.overridden_by(flags).into_config()?;
/// assert_eq!(config.store_capacity, 8);
/// assert_eq!(config.join_interval, std::time::Duration::from_secs(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSettings {
    /// The manager's multiaddr with `/p2p/<id>`.
    pub manager: Option<String>,
    /// The data folder.
    pub data_dir: Option<PathBuf>,
    /// Listen multiaddrs; empty keeps the defaults.
    pub listen: Vec<String>,
    /// The node's name.
    pub name: Option<String>,
    /// `/store/v1` capacity, -1 for unlimited.
    pub store_capacity: Option<i32>,
    /// `/load/v1` capacity, -1 for unlimited.
    pub load_capacity: Option<i32>,
    /// Join interval, e.g. `"5s"`.
    pub join_interval: Option<String>,
    /// Shutdown grace period, e.g. `"30s"`.
    pub shutdown_grace: Option<String>,
    /// Limit on remote waits, e.g. `"30s"`.
    pub request_timeout: Option<String>,
    /// Task streams served at once (at least 1).
    pub max_task_streams: Option<usize>,
    /// Task streams one remote peer may have in their handshake at once (at least 1).
    pub max_handshakes_per_peer: Option<usize>,
    /// The upstream manager's multiaddr with `/p2p/<id>`, for a gateway.
    pub upstream: Option<String>,
    /// Bytes of cut uploads kept for them to resume, all together.
    pub resume_bytes: Option<u64>,
    /// How long the bytes of a cut upload are kept, e.g. `"24h"`.
    pub resume_ttl: Option<String>,
    /// A one-use invite from the manager's operator.
    pub invite: Option<String>,
}

impl NodeSettings {
    /// Reads settings from a TOML file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`], naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// These settings with every key that `over` sets replaced by its value
    /// (`listen` as a whole, when `over` names any address).
    #[must_use]
    pub fn overridden_by(self, over: Self) -> Self {
        Self {
            manager: over.manager.or(self.manager),
            data_dir: over.data_dir.or(self.data_dir),
            listen: if over.listen.is_empty() {
                self.listen
            } else {
                over.listen
            },
            name: over.name.or(self.name),
            store_capacity: over.store_capacity.or(self.store_capacity),
            load_capacity: over.load_capacity.or(self.load_capacity),
            join_interval: over.join_interval.or(self.join_interval),
            shutdown_grace: over.shutdown_grace.or(self.shutdown_grace),
            request_timeout: over.request_timeout.or(self.request_timeout),
            max_task_streams: over.max_task_streams.or(self.max_task_streams),
            max_handshakes_per_peer: over
                .max_handshakes_per_peer
                .or(self.max_handshakes_per_peer),
            upstream: over.upstream.or(self.upstream),
            resume_bytes: over.resume_bytes.or(self.resume_bytes),
            resume_ttl: over.resume_ttl.or(self.resume_ttl),
            invite: over.invite.or(self.invite),
        }
    }

    /// Checks the settings and fills in the defaults.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] without `manager` or `data-dir`; a
    /// [`ConfigError`] naming the key of any value that does not parse or is
    /// out of range.
    pub fn into_config(self) -> Result<NodeConfig, ConfigError> {
        let manager = self
            .manager
            .ok_or(ConfigError::Missing { key: "manager" })?;
        let manager = parse_addr("manager", &manager)?;
        let data_dir = self
            .data_dir
            .ok_or(ConfigError::Missing { key: "data-dir" })?;
        let mut config = NodeConfig::new(manager, data_dir)?;
        if !self.listen.is_empty() {
            config.listen = self
                .listen
                .iter()
                .map(|addr| parse_addr("listen", addr))
                .collect::<Result<_, _>>()?;
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
        if let Some(interval) = self.join_interval {
            config.join_interval = parse_duration("join-interval", &interval)?;
        }
        if let Some(grace) = self.shutdown_grace {
            config.shutdown_grace = parse_duration("shutdown-grace", &grace)?;
        }
        if let Some(timeout) = self.request_timeout {
            config.request_timeout = parse_duration("request-timeout", &timeout)?;
        }
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
            config.store_options.partial_ttl = parse_duration("resume-ttl", &ttl)?;
        }
        if let Some(upstream) = self.upstream {
            config = config.with_upstream(parse_addr("upstream", &upstream)?)?;
        }
        config.invite = self.invite.filter(|invite| !invite.trim().is_empty());
        Ok(config)
    }
}

fn parse_addr(key: &'static str, value: &str) -> Result<Multiaddr, ConfigError> {
    value.parse().map_err(|source| ConfigError::Multiaddr {
        key,
        value: value.to_owned(),
        source,
    })
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

fn parse_duration(key: &'static str, value: &str) -> Result<Duration, ConfigError> {
    domain_cluster::config::parse_duration(value).map_err(|reason| ConfigError::Duration {
        key,
        value: value.to_owned(),
        reason,
    })
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
    /// The config file cannot be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML of the expected keys.
    #[error("config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error, with the line and key.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value that is not a multiaddr.
    #[error("{key} {value:?} is not a multiaddr")]
    Multiaddr {
        /// The setting.
        key: &'static str,
        /// The value given.
        value: String,
        /// The parse error.
        #[source]
        source: ParseError,
    },
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
    /// A duration that does not parse or is zero.
    #[error("{key} {value:?} is not a usable duration: {reason}")]
    Duration {
        /// The setting.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A name of only white space.
    #[error("the node name is empty")]
    EmptyName,
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

    fn settings() -> NodeSettings {
        NodeSettings {
            manager: Some(MANAGER.into()),
            data_dir: Some("/tmp/node".into()),
            ..NodeSettings::default()
        }
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
            listen: vec!["/ip4/127.0.0.1/tcp/7000".into()],
            ..settings()
        };
        let flags = NodeSettings {
            name: Some("from-flag".into()),
            ..NodeSettings::default()
        };
        let config = file.overridden_by(flags).into_config().unwrap();
        assert_eq!(config.name.as_deref(), Some("from-flag"));
        assert_eq!(config.load_capacity, 3);
        assert_eq!(config.listen[0].to_string(), "/ip4/127.0.0.1/tcp/7000");
    }

    #[test]
    fn a_missing_manager_or_data_dir_is_named() {
        let no_manager = NodeSettings {
            manager: None,
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
            manager: Some("/ip4/127.0.0.1/tcp/4001".into()),
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
        let upstream =
            "/ip4/127.0.0.1/tcp/5001/p2p/12D3KooWBK6mNwBwAwHhygpw9HQ6vZiwzyDPx9jLLk4v6VDdg3YL";
        let gateway = NodeSettings {
            upstream: Some(upstream.into()),
            ..settings()
        };
        let config = gateway.into_config().unwrap();
        assert_eq!(config.upstream, Some(upstream.parse().unwrap()));
        assert_eq!(
            config.upstream_identity_path(),
            Path::new("/tmp/node/upstream.key")
        );
        assert_eq!(settings().into_config().unwrap().upstream, None);

        // Its own manager would give its tasks back to it.
        let own = NodeSettings {
            upstream: Some(MANAGER.replace("4001", "4002")),
            ..settings()
        };
        assert!(matches!(
            own.into_config(),
            Err(ConfigError::UpstreamIsOwnManager { .. })
        ));
        let bare = NodeSettings {
            upstream: Some("/ip4/127.0.0.1/tcp/5001".into()),
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
                join_interval: Some("soon".into()),
                ..settings()
            },
            NodeSettings {
                shutdown_grace: Some("0s".into()),
                ..settings()
            },
            NodeSettings {
                listen: vec!["not an address".into()],
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
    }

    #[test]
    fn unknown_keys_in_a_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "manager = \"x\"\nstore-capacty = 3\n").unwrap();
        let error = NodeSettings::load(&path).unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
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
    fn what_is_kept_of_cut_uploads_is_set_from_the_settings_and_no_time_is_refused() {
        let set = NodeSettings {
            resume_bytes: Some(1 << 20),
            resume_ttl: Some("90m".into()),
            ..settings()
        }
        .into_config()
        .unwrap();
        assert_eq!(set.store_options.partial_bytes, 1 << 20);
        assert_eq!(set.store_options.partial_ttl, Duration::from_secs(90 * 60));
        let zero = NodeSettings {
            resume_ttl: Some("0s".into()),
            ..settings()
        };
        assert!(matches!(
            zero.into_config(),
            Err(ConfigError::Duration {
                key: "resume-ttl",
                ..
            })
        ));
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
