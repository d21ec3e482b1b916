//! A domain-cluster node (docs/design.md §1, §3, §5, §6, §9): it joins the manager,
//! registers `/store/v1`, `/load/v1` and `/delete/v1` with their capacities, and serves
//! them from its local datastore, or, as a gateway
//! ([`upstream`](NodeConfig::upstream)), from the cluster of another manager
//! ([`NodeDatastore`]).
//!
//! - [`Node`]: [`Node::start`] opens the [`LocalDatastore`](domain_datastore::LocalDatastore)
//!   under `DIR/store`, keeps the peer identity at `DIR/identity.key`, starts the
//!   swarm with the (first) manager as bootstrap peer, joins the manager and re-joins it
//!   every [`join_interval`](NodeConfig::join_interval) (the heartbeat; the manager's
//!   address is dialled again each time, so a restarted manager is found; given several
//!   [`managers`](NodeConfig::managers), the node joins whichever leads and follows a new
//!   leader, keeping its admission, which lives in the shared state). Task
//!   streams are served with domain-capabilities' handlers, at most
//!   [`max_task_streams`](NodeConfig::max_task_streams) at once (by default
//!   [`MAX_CONCURRENT_TASK_STREAMS`](domain_capabilities::MAX_CONCURRENT_TASK_STREAMS)):
//!   one more is dropped at once, not queued. [`Node::shutdown`] stops
//!   accepting, lets running streams finish within the grace period, and cuts the rest.
//! - [`ManagerKeys`]: domain public keys fetched from the leading manager over
//!   `/public-key/v1`, cached, fetched again when a token's signature fails.
//! - [`StatusReporter`]: PROCESSING when a stream's handshake succeeds, DONE or
//!   FAILED when it ends, reported to the manager on `/task-status/v1`, without token.
//! - [`NodeConfig`] and [`NodeSettings`]: the configuration, and the partial form
//!   that the command line, the environment and the TOML file of `domain-node run`
//!   fill in.
//!
//! ```
//! use domain_node::{NodeConfig, NodeSettings};
//!
//! let settings = NodeSettings {
//!     manager: vec!["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWLRPJAA5o6Ztr9vdumNjgx3D7T9dbtXbZpGbSaDcJkfAP".parse()?],
//!     data_dir: Some("/var/lib/domain-node".into()),
//!     load_capacity: Some(-1),
//!     ..NodeSettings::default()
//! };
//! let config: NodeConfig = settings.into_config()?;
//! assert_eq!(config.store_dir(), std::path::Path::new("/var/lib/domain-node/store"));
//! assert_eq!((config.store_capacity, config.load_capacity), (16, -1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
mod handshakes;
pub mod keys;
mod metrics;
mod node;
mod replicate;
pub mod status;
pub mod store;

pub use config::{ConfigError, METADATA_PASSWORD_VAR, MetadataDatabase, NodeConfig, NodeSettings};
pub use keys::ManagerKeys;
pub use node::{Node, NodeError, ShutdownReport, node_identity};
pub use status::StatusReporter;
pub use store::{NodeContent, NodeDatastore};
