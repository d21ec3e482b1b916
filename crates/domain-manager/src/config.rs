//! What a manager runs with: [`ManagerConfig`], and the TOML file ([`ConfigFile`]) whose keys
//! mirror the command-line flags (`data-dir`, `listen`, `tick-interval`, …).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domain_auth::{Existing, write_private};
use domain_cluster::config::parse_duration;
use domain_cluster::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::domains::DomainSpec;
use crate::error::ConfigError;

/// Everything [`Manager::start`](crate::Manager::start) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Where the manager keeps its identity (`identity.key`), domain keys (`keys/`), scheduler
    /// state (`scheduler.redb`) and the domains made with `domain create` (`domains.toml`).
    pub data_dir: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Domains declared in the configuration file, besides those of `domains.toml`.
    pub domains: Vec<DomainSpec>,
    /// How often the scheduler enforces timeouts, drops silent nodes and retries assignments.
    pub tick_interval: Duration,
    /// A node that has not joined again for this long is dropped and its tasks go elsewhere.
    pub node_timeout: Duration,
    /// Failed attempts retried before a task is FAILED.
    pub max_retries: u32,
    /// The most tasks one job may hold.
    pub max_tasks_per_job: usize,
    /// The limit on every wait for a remote peer (a request frame, a write to a slow reader).
    pub request_timeout: Duration,
    /// A finished job is forgotten (in memory and in `scheduler.redb`) this long after it
    /// finished; never sooner than the scheduler's [`FINISHED_GRACE`](domain_scheduler::FINISHED_GRACE).
    pub keep_finished: Duration,
    /// At most this many finished jobs are kept; beyond it the oldest finished are forgotten
    /// first, except those finished within the grace period. Running jobs are never forgotten.
    pub max_finished_jobs: usize,
    /// Nodes admitted by the configuration file, besides those of `nodes.toml`.
    pub nodes: BTreeSet<PeerId>,
    /// Run open (any node joins, any client submits) also on addresses other than loopback;
    /// only for a manager with no domain declared and no node admitted.
    pub open: bool,
}

impl ManagerConfig {
    /// The defaults, keeping state in `data_dir`: listen on loopback TCP, QUIC and WebSocket with ports the
    /// system picks, tick every second, drop nodes silent for 30 s, 3 retries, 10 000 tasks per
    /// job, 30 s remote waits, finished jobs kept for 24 h and 10 000 at most.
    #[must_use]
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: default_listen(),
            domains: Vec::new(),
            tick_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(30),
            max_retries: 3,
            max_tasks_per_job: 10_000,
            request_timeout: Duration::from_secs(30),
            keep_finished: Duration::from_secs(24 * 3600),
            max_finished_jobs: 10_000,
            nodes: BTreeSet::new(),
            open: false,
        }
    }

    /// The manager's identity file.
    #[must_use]
    pub fn identity_path(&self) -> PathBuf {
        self.data_dir.join("identity.key")
    }

    /// The folder of domain keys.
    #[must_use]
    pub fn keys_dir(&self) -> PathBuf {
        keys_dir(&self.data_dir)
    }

    /// The scheduler's database.
    #[must_use]
    pub fn scheduler_path(&self) -> PathBuf {
        self.data_dir.join("scheduler.redb")
    }

    /// Applies the settings of a configuration file; flags applied afterwards override them.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a setting that does not parse.
    pub fn apply_file(&mut self, file: ConfigFile) -> Result<(), ConfigError> {
        let path = file.path.clone().unwrap_or_default();
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.clone(),
            key: key.to_owned(),
            reason,
        };
        if let Some(dir) = file.data_dir {
            self.data_dir = dir;
        }
        if let Some(listen) = file.listen {
            self.listen = listen
                .iter()
                .map(|a| {
                    a.parse()
                        .map_err(|e| invalid("listen", format!("{a:?}: {e}")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(interval) = file.tick_interval {
            self.tick_interval =
                parse_duration(&interval).map_err(|reason| invalid("tick-interval", reason))?;
        }
        if let Some(timeout) = file.node_timeout {
            self.node_timeout =
                parse_duration(&timeout).map_err(|reason| invalid("node-timeout", reason))?;
        }
        if let Some(timeout) = file.request_timeout {
            self.request_timeout =
                parse_duration(&timeout).map_err(|reason| invalid("request-timeout", reason))?;
        }
        if let Some(retries) = file.max_retries {
            self.max_retries = retries;
        }
        if let Some(tasks) = file.max_tasks_per_job {
            self.max_tasks_per_job = tasks;
        }
        if let Some(keep) = file.keep_finished {
            self.keep_finished =
                parse_duration(&keep).map_err(|reason| invalid("keep-finished", reason))?;
        }
        if let Some(jobs) = file.max_finished_jobs {
            self.max_finished_jobs = jobs;
        }
        self.domains.extend(file.domain);
        for node in file.nodes {
            let peer = node
                .parse()
                .map_err(|e| invalid("nodes", format!("{node:?} is not a peer id: {e}")))?;
            self.nodes.insert(peer);
        }
        if let Some(open) = file.open {
            self.open = open;
        }
        Ok(())
    }
}

/// `DIR/keys`: where the domain keys of a manager with data folder `data_dir` live.
#[must_use]
pub fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

/// Writes `value` as TOML to `path`, whole or not at all and private to its owner
/// ([`domain_auth::write_private`]).
///
/// # Errors
/// [`ConfigError::Write`].
pub(crate) fn write_toml<T: Serialize>(path: &Path, value: &T) -> Result<(), ConfigError> {
    let write_err = |source| ConfigError::Write {
        path: path.to_owned(),
        source,
    };
    let text = toml::to_string_pretty(value).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    write_private(path, text.as_bytes(), Existing::Replace).map_err(write_err)
}

/// Loopback TCP, QUIC and WebSocket (for browser pages), on ports the system picks: the
/// cluster's [`domain_cluster::config::loopback_listen_addrs`].
#[must_use]
pub fn default_listen() -> Vec<Multiaddr> {
    domain_cluster::config::loopback_listen_addrs()
}

/// The manager's TOML configuration file. Every key is optional; command-line flags override
/// what it says.
///
/// ```toml
/// data-dir = "/var/lib/domain-manager"
/// listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1", "/ip4/0.0.0.0/tcp/4002/ws"]
/// tick-interval = "1s"
/// node-timeout = "30s"
/// keep-finished = "24h"
/// max-finished-jobs = 10000
/// nodes = ["12D3KooWHKMydZGqq1EdtwGm3kxL4xkWaxPynkHVytLrrB8PpvXQ"]
///
/// [[domain]]
/// id = "my-domain"
/// allow = ["12D3KooWJWo7dJKXbZLoSvQfLEdHiKsvj7Y9P3D1nYZNjSjoEwU1"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConfigFile {
    /// The file this was read from, for error messages.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// `data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `listen`: multiaddrs.
    pub listen: Option<Vec<String>>,
    /// `tick-interval`, e.g. `"1s"`.
    pub tick_interval: Option<String>,
    /// `node-timeout`, e.g. `"30s"`.
    pub node_timeout: Option<String>,
    /// `request-timeout`, e.g. `"30s"`.
    pub request_timeout: Option<String>,
    /// `max-retries`.
    pub max_retries: Option<u32>,
    /// `max-tasks-per-job`.
    pub max_tasks_per_job: Option<usize>,
    /// `keep-finished`, e.g. `"24h"`.
    pub keep_finished: Option<String>,
    /// `max-finished-jobs`.
    pub max_finished_jobs: Option<usize>,
    /// `[[domain]]` tables: `id` and `allow` (client peer ids).
    #[serde(default)]
    pub domain: Vec<DomainSpec>,
    /// `nodes`: peer ids of the nodes admitted (besides `domain-manager node allow`).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// `open`: as `--open`.
    pub open: Option<bool>,
}

impl ConfigFile {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when it cannot be read, [`ConfigError::Parse`] when it is not a
    /// valid configuration (an unknown key, a wrong type, a peer id that does not parse).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut file: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: e.message().to_owned(),
        })?;
        file.path = Some(path.to_owned());
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sets_what_it_names_and_keeps_the_defaults_otherwise() {
        let file: ConfigFile = toml::from_str(
            r#"
            listen = ["/ip4/127.0.0.1/tcp/4001"]
            tick-interval = "250ms"
            keep-finished = "2h"
            [[domain]]
            id = "d"
            allow = ["12D3KooWJWo7dJKXbZLoSvQfLEdHiKsvj7Y9P3D1nYZNjSjoEwU1"]
            "#,
        )
        .unwrap();
        let mut config = ManagerConfig::new("/data");
        config.apply_file(file).unwrap();
        assert_eq!(config.listen, ["/ip4/127.0.0.1/tcp/4001".parse().unwrap()]);
        assert_eq!(config.tick_interval, Duration::from_millis(250));
        assert_eq!(config.node_timeout, Duration::from_secs(30));
        assert_eq!(config.keep_finished, Duration::from_secs(2 * 3600));
        assert_eq!(config.max_finished_jobs, 10_000);
        assert_eq!(config.domains.len(), 1);
        assert_eq!(config.data_dir, PathBuf::from("/data"));
    }

    #[test]
    fn durations_take_the_grammar_the_node_takes() {
        let file: ConfigFile = toml::from_str(
            r#"node-timeout = "1m 30s"
keep-finished = "2days""#,
        )
        .unwrap();
        let mut config = ManagerConfig::new("/d");
        config.apply_file(file).unwrap();
        assert_eq!(config.node_timeout, Duration::from_secs(90));
        assert_eq!(config.keep_finished, Duration::from_secs(2 * 24 * 3600));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_name() {
        assert!(toml::from_str::<ConfigFile>("lisen = []").is_err());
        let file: ConfigFile = toml::from_str(r#"node-timeout = "soon""#).unwrap();
        let err = ManagerConfig::new("/d").apply_file(file).unwrap_err();
        assert!(err.to_string().contains("node-timeout"), "{err}");
        let file: ConfigFile = toml::from_str(r#"tick-interval = "0s""#).unwrap();
        assert!(ManagerConfig::new("/d").apply_file(file).is_err());
        let file: ConfigFile = toml::from_str(r#"keep-finished = "forever""#).unwrap();
        let err = ManagerConfig::new("/d").apply_file(file).unwrap_err();
        assert!(err.to_string().contains("keep-finished"), "{err}");
        assert!(toml::from_str::<ConfigFile>("max-finished-jobs = -1").is_err());
    }

    #[test]
    fn the_example_config_in_the_repository_is_valid() {
        let file: ConfigFile =
            toml::from_str(include_str!("../../../config/manager.example.toml")).unwrap();
        let mut config = ManagerConfig::new("/data");
        config.apply_file(file).unwrap();
        let policy = crate::DomainPolicy::from_specs(&config.domains).unwrap();
        assert_eq!(policy.replication("my-domain"), 2);
        assert_eq!(config.keep_finished, Duration::from_secs(24 * 3600));
        assert_eq!(config.max_finished_jobs, 10_000);
    }

    #[test]
    fn the_default_listen_addresses_are_loopback_tcp_quic_and_websocket() {
        let addrs: Vec<String> = default_listen().iter().map(ToString::to_string).collect();
        assert_eq!(
            addrs,
            [
                "/ip4/127.0.0.1/tcp/0",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "/ip4/127.0.0.1/tcp/0/ws"
            ]
        );
    }
}
