//! What a manager runs with: [`ManagerConfig`], and [`ManagerSettings`], the partial form
//! that the command line, the environment and a TOML file fill in (flags over the
//! environment over the file).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domain_auth::{Existing, write_private};
use domain_cluster::{Multiaddr, PeerId};
use domain_etcd::EtcdConfig;
use domain_settings::parse_duration;
use serde::{Deserialize, Serialize};

use crate::domains::DomainSpec;
use crate::error::ConfigError;
use crate::repair::RepairConfig;

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
    /// Keep the scheduler's state in this etcd, shared with the other managers there, one of
    /// which leads at a time; `None` keeps it in `scheduler.redb`, for this manager alone.
    pub etcd: Option<EtcdConfig>,
    /// The time-to-live of the leader's etcd lease (whole seconds): how long a dead leader
    /// leads before a standby takes over.
    pub leader_lease: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` over HTTP; `None` (the default)
    /// serves none.
    pub metrics: Option<std::net::SocketAddr>,
    /// When the leader audits the copies of a domain that keeps more than one: how long a
    /// holder may stay away before its copies are made elsewhere, and how often every
    /// domain is audited anyway.
    pub repair: RepairConfig,
}

/// The leader's lease when none is configured: a standby takes over 2 to 3 s after the
/// leader dies.
pub const DEFAULT_LEADER_LEASE: Duration = Duration::from_secs(2);

impl ManagerConfig {
    /// The defaults, keeping state in `data_dir`: listen on loopback TCP, QUIC and WebSocket with ports the
    /// system picks, tick every second, drop nodes silent for 30 s, 3 retries, 10 000 tasks per
    /// job, 30 s remote waits, finished jobs kept for 24 h and 10 000 at most, copies of a
    /// holder away for 5 min made elsewhere, every domain audited hourly.
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
            etcd: None,
            leader_lease: DEFAULT_LEADER_LEASE,
            metrics: None,
            repair: RepairConfig::default(),
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

/// The manager's settings, declared once: the flags of `domain-manager run` (some also read
/// from the environment) and the keys of its TOML file, named as the flags are. Every one
/// is optional but `data-dir`; [`into_config`](Self::into_config) fills in the defaults of
/// [`ManagerConfig::new`]. Nodes and domains are declared in the file only.
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
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ManagerSettings {
    /// Folder of the identity, domain keys, scheduler state and domains.
    #[arg(long, value_name = "DIR", env = "DOMAIN_MANAGER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// An address to listen on (repeatable) [default: loopback TCP, QUIC and WebSocket on
    /// ports the system picks].
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "DOMAIN_MANAGER_LISTEN",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<Multiaddr>,
    /// How often the scheduler enforces timeouts, drops silent nodes and retries
    /// assignments [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "domain_settings::duration")]
    pub tick_interval: Option<Duration>,
    /// Drop a node that has not joined again for this long; its tasks go elsewhere
    /// [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "domain_settings::duration")]
    pub node_timeout: Option<Duration>,
    /// The limit on every wait for a remote peer [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "domain_settings::duration")]
    pub request_timeout: Option<Duration>,
    /// Failed attempts retried before a task is FAILED [default: 3].
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// The most tasks one job may hold [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_tasks_per_job: Option<usize>,
    /// Forget a finished job this long after it finished; never sooner than a minute
    /// [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "domain_settings::duration")]
    pub keep_finished: Option<Duration>,
    /// Keep at most this many finished jobs, forgetting the oldest finished first
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_finished_jobs: Option<usize>,
    /// Run open (any node joins, any peer submits, as with no domain declared and no node
    /// admitted) also on addresses beyond loopback. Without it such a manager refuses to
    /// start.
    #[arg(long)]
    #[serde(skip_serializing_if = "domain_settings::is_false")]
    pub open: bool,
    /// An etcd endpoint (repeatable): keep the scheduler's state there, shared with the
    /// other managers on it, one of which leads at a time [default: scheduler.redb in the
    /// data folder, this manager alone].
    #[arg(
        long = "etcd",
        value_name = "URL",
        env = "DOMAIN_MANAGER_ETCD",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub etcd: Vec<String>,
    /// Where in etcd the cluster keeps its keys, so that one etcd can serve several
    /// clusters [default: /domain-cluster/].
    #[arg(long, value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// How long a dead leader's etcd lease outlives it, in whole seconds: a standby leads
    /// that long after the leader dies [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "domain_settings::duration")]
    pub leader_lease: Option<Duration>,
    /// Serve Prometheus metrics (`/metrics`), `/healthz` and `/readyz` (ready while this
    /// manager leads) over HTTP on this address, e.g. 127.0.0.1:9464 [default: none].
    #[arg(long, value_name = "ADDR", env = "DOMAIN_MANAGER_METRICS")]
    pub metrics: Option<std::net::SocketAddr>,
    /// How long a holder of a domain that keeps several copies may stay away (not
    /// registered) before the leader makes its copies again on other nodes [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "domain_settings::duration")]
    pub repair_grace: Option<Duration>,
    /// How often the leader audits the copies of every domain, besides after a holder
    /// stayed away, came back or restarted [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(with = "domain_settings::duration")]
    pub repair_interval: Option<Duration>,
    /// Peer ids of the nodes admitted (besides `domain-manager node allow`); file only.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// `[[domain]]` tables: `id`, `allow` (client peer ids), `replication`; file only.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub domain: Vec<DomainSpec>,
}

impl ManagerSettings {
    /// Reads settings from the TOML file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Settings`] when it cannot be read or is not valid settings (an
    /// unknown key, a wrong type, a duration that does not parse), and
    /// [`ConfigError::Invalid`] for a node that is no peer id, each naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let settings: Self = domain_settings::load(path)?;
        settings
            .admitted_nodes()
            .map_err(|reason| ConfigError::Invalid {
                path: path.to_owned(),
                key: "nodes".to_owned(),
                reason,
            })?;
        Ok(settings)
    }

    /// Checks the settings and fills in the defaults.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] without `data-dir`; [`ConfigError::Invalid`] for a node
    /// that is no peer id.
    pub fn into_config(self) -> Result<ManagerConfig, ConfigError> {
        let nodes = self
            .admitted_nodes()
            .map_err(|reason| ConfigError::Invalid {
                path: PathBuf::new(),
                key: "nodes".to_owned(),
                reason,
            })?;
        let data_dir = self
            .data_dir
            .ok_or(ConfigError::Missing { key: "data-dir" })?;
        let defaults = ManagerConfig::new(data_dir);
        let leader_lease = self.leader_lease.unwrap_or(defaults.leader_lease);
        if leader_lease.subsec_nanos() != 0 {
            return Err(ConfigError::Invalid {
                path: PathBuf::new(),
                key: "leader-lease".to_owned(),
                reason: format!(
                    "{} is not whole seconds (etcd's leases are)",
                    humantime::format_duration(leader_lease)
                ),
            });
        }
        let request_timeout = self.request_timeout.unwrap_or(defaults.request_timeout);
        let etcd = (!self.etcd.is_empty()).then(|| EtcdConfig {
            endpoints: self.etcd,
            prefix: self
                .etcd_prefix
                .unwrap_or_else(|| EtcdConfig::DEFAULT_PREFIX.to_owned()),
            // A call that outlasts the lease is of no use to a leader.
            request_timeout: request_timeout.min(leader_lease),
        });
        Ok(ManagerConfig {
            listen: if self.listen.is_empty() {
                defaults.listen
            } else {
                self.listen
            },
            domains: self.domain,
            tick_interval: self.tick_interval.unwrap_or(defaults.tick_interval),
            node_timeout: self.node_timeout.unwrap_or(defaults.node_timeout),
            max_retries: self.max_retries.unwrap_or(defaults.max_retries),
            max_tasks_per_job: self.max_tasks_per_job.unwrap_or(defaults.max_tasks_per_job),
            request_timeout,
            keep_finished: self.keep_finished.unwrap_or(defaults.keep_finished),
            max_finished_jobs: self.max_finished_jobs.unwrap_or(defaults.max_finished_jobs),
            nodes,
            open: self.open,
            etcd,
            leader_lease,
            metrics: self.metrics,
            repair: RepairConfig {
                grace: self.repair_grace.unwrap_or(defaults.repair.grace),
                interval: self.repair_interval.unwrap_or(defaults.repair.interval),
            },
            data_dir: defaults.data_dir,
        })
    }

    /// The peer ids of `nodes`.
    ///
    /// # Errors
    /// The first that does not parse, as text.
    pub fn admitted_nodes(&self) -> Result<BTreeSet<PeerId>, String> {
        self.nodes
            .iter()
            .map(|node| {
                node.parse()
                    .map_err(|e| format!("{node:?} is not a peer id: {e}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `domain-manager run ARGS` gives as flags.
    fn flags(args: &[&str]) -> ManagerSettings {
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            settings: ManagerSettings,
        }
        let args = std::iter::once("run").chain(args.iter().copied());
        <Run as clap::Parser>::try_parse_from(args)
            .unwrap()
            .settings
    }

    fn file(text: &str) -> ManagerSettings {
        toml::from_str(text).unwrap()
    }

    const EXAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/manager.example.toml"
    );

    #[test]
    fn a_file_sets_what_it_names_and_keeps_the_defaults_otherwise() {
        let config = file(
            r#"
            data-dir = "/data"
            listen = ["/ip4/127.0.0.1/tcp/4001"]
            tick-interval = "250ms"
            keep-finished = "2h"
            [[domain]]
            id = "d"
            allow = ["12D3KooWJWo7dJKXbZLoSvQfLEdHiKsvj7Y9P3D1nYZNjSjoEwU1"]
            "#,
        )
        .into_config()
        .unwrap();
        assert_eq!(config.listen, ["/ip4/127.0.0.1/tcp/4001".parse().unwrap()]);
        assert_eq!(config.tick_interval, Duration::from_millis(250));
        assert_eq!(config.node_timeout, Duration::from_secs(30));
        assert_eq!(config.keep_finished, Duration::from_secs(2 * 3600));
        assert_eq!(config.max_finished_jobs, 10_000);
        assert_eq!(config.domains.len(), 1);
        assert_eq!(config.data_dir, PathBuf::from("/data"));
    }

    #[test]
    fn flags_override_the_file_key_by_key_and_keep_its_nodes_and_domains() {
        let from_file = ManagerSettings::load(EXAMPLE).unwrap();
        let merged = domain_settings::layer(
            &from_file,
            &flags(&[
                "--data-dir",
                "/elsewhere",
                "--node-timeout",
                "1m 30s",
                "--open",
            ]),
        )
        .unwrap();
        let config = merged.into_config().unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/elsewhere"));
        assert_eq!(config.node_timeout, Duration::from_secs(90));
        assert!(config.open);
        // The file's own keys, in the type the repair takes.
        assert_eq!(config.repair.grace, Duration::from_secs(5 * 60));
        assert_eq!(config.repair.interval, Duration::from_secs(3600));
        assert_eq!(config.listen.len(), 3, "the file's listen addresses stay");
        assert_eq!(config.domains, from_file.domain);
        assert_eq!(config.nodes, from_file.admitted_nodes().unwrap());
    }

    #[test]
    fn the_packaged_settings_file_starts_a_manager_on_loopback_in_the_state_folder() {
        let packaged = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/etc/manager.toml");
        let config = ManagerSettings::load(packaged)
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/domain-manager"));
        assert!(!config.listen.is_empty());
        assert!(
            config
                .listen
                .iter()
                .all(|addr| addr.to_string().starts_with("/ip4/127.0.0.1/")),
            "open by default, so loopback only"
        );
    }

    #[test]
    fn no_flags_leave_every_key_of_the_example_file_as_it_is() {
        let mut from_file = ManagerSettings::load(EXAMPLE).unwrap();
        from_file.open = true;
        from_file.etcd = vec!["http://127.0.0.1:2379".into()];
        from_file.etcd_prefix = Some("/lab/".into());
        from_file.leader_lease = Some(Duration::from_secs(3));
        from_file.metrics = Some("127.0.0.1:9464".parse().unwrap());
        let every_key = toml::Table::try_from(&from_file).unwrap();
        assert_eq!(
            every_key.len(),
            18,
            "a key of ManagerSettings is not in this test"
        );
        assert_eq!(
            domain_settings::layer(&from_file, &flags(&[])).unwrap(),
            from_file
        );
    }

    #[test]
    fn durations_take_the_grammar_the_node_takes() {
        let config = file(
            r#"data-dir = "/d"
node-timeout = "1m 30s"
keep-finished = "2days""#,
        )
        .into_config()
        .unwrap();
        assert_eq!(config.node_timeout, Duration::from_secs(90));
        assert_eq!(config.keep_finished, Duration::from_secs(2 * 24 * 3600));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_name() {
        for (text, key) in [
            ("lisen = []", "lisen"),
            (r#"node-timeout = "soon""#, "node-timeout"),
            (r#"tick-interval = "0s""#, "tick-interval"),
            (r#"keep-finished = "forever""#, "keep-finished"),
            ("max-finished-jobs = -1", "max-finished-jobs"),
            (r#"listen = ["nowhere"]"#, "listen"),
        ] {
            let error = toml::from_str::<ManagerSettings>(text).unwrap_err();
            assert!(error.to_string().contains(key), "{text}: {error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manager.toml");
        std::fs::write(&path, "nodes = [\"not-a-peer\"]\n").unwrap();
        let error = ManagerSettings::load(&path).unwrap_err();
        assert!(matches!(error, ConfigError::Invalid { .. }), "{error}");
        assert!(error.to_string().contains("manager.toml"), "{error}");
        assert!(matches!(
            ManagerSettings::default().into_config(),
            Err(ConfigError::Missing { key: "data-dir" })
        ));
    }

    #[test]
    fn etcd_endpoints_make_a_shared_store_with_a_lease_of_whole_seconds() {
        let config = flags(&[
            "--data-dir",
            "/d",
            "--etcd",
            "http://127.0.0.1:2379,http://127.0.0.1:22379",
            "--leader-lease",
            "3s",
        ])
        .into_config()
        .unwrap();
        let etcd = config.etcd.unwrap();
        assert_eq!(etcd.endpoints.len(), 2);
        assert_eq!(etcd.prefix, EtcdConfig::DEFAULT_PREFIX);
        assert_eq!(etcd.request_timeout, Duration::from_secs(3));
        assert_eq!(config.leader_lease, Duration::from_secs(3));
        assert_eq!(
            flags(&["--data-dir", "/d"]).into_config().unwrap().etcd,
            None
        );
        let fraction = flags(&["--data-dir", "/d", "--leader-lease", "1500ms"]).into_config();
        assert!(
            matches!(fraction, Err(ConfigError::Invalid { .. })),
            "{fraction:?}"
        );
    }

    #[test]
    fn the_example_config_in_the_repository_is_valid() {
        let config = ManagerSettings::load(EXAMPLE)
            .unwrap()
            .into_config()
            .unwrap();
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
