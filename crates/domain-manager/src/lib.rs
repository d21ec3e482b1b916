//! The domain manager (docs/design.md §1, §3, §5–§7): the always-on peer of a domain cluster that
//! registers nodes, schedules jobs, issues task tokens and serves the domains' public keys.
//!
//! A [`Manager`] composes the libraries: the swarm of domain-cluster in
//! [`Role::Manager`](domain_cluster::config::Role::Manager)
//! (Kademlia server, relay server, gossip), the [`Scheduler`](domain_scheduler::Scheduler) with
//! its redb store, and the domain keys of domain-auth. It serves
//!
//! - `/join/v1`: a node registers its capabilities; joining again is its heartbeat. The node id
//!   must be the peer id of the stream.
//! - `/jobs/v1`: a client submits a job. It is refused (`BadRequest` and the reason) for an
//!   unknown domain, a submitter not on the domain's allow-list, or a job the scheduler refuses
//!   (a cycle, an unknown need, …). Accepted, the stream then carries one `Task` frame with its
//!   access token per assignment, until the job ends or the client closes. Tokens travel there
//!   only. Sending again the request of a running job it submitted (same nonce, same job id)
//!   *resumes* it: the answer is the same job id, then a fresh token for each task assigned now
//!   and the job's later ones; that is how a client carries on after the manager restarts.
//! - `/monitor/v1`: after the client's `ack`, a `Job` frame with every task of each job the
//!   client may watch (its domains; any job when the manager is open), then on each change the
//!   job with the tasks that changed. No tokens. A large job comes as several frames.
//! - `/public-key/v1`: the public key of a domain served that has a key.
//!
//! Task updates: the manager follows each running job's gossip topic, hands every update to the
//! scheduler (which believes only the task's sender and current receiver), and publishes each
//! task change itself, without token.
//!
//! The [`Scheduler`](domain_scheduler::Scheduler) lives on a thread of its own (each operation
//! commits to redb before it returns) fed by a bounded queue; a tokio interval drives its ticks
//! ([`ManagerConfig::tick_interval`]). State lives in the data folder: `identity.key`, `keys/`,
//! `scheduler.redb`, `domains.toml`; a manager started again on the same folder keeps its peer
//! id, its domains, and every job where it was.
//!
//! # Main types
//! - [`Manager`]: [`start`](Manager::start), addresses, [`job`](Manager::job),
//!   [`nodes`](Manager::nodes), [`shutdown`](Manager::shutdown).
//! - [`ManagerConfig`] and [`ManagerSettings`], its flags and TOML file declared once.
//! - [`DomainPolicy`] (who may submit where), [`create_domain`] and [`DomainsFile`].
//! - [`ManagerError`], [`ConfigError`].
//!
//! # Example
//! A manager with one domain, and a client that asks it for the domain's public key:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
//! use domain_cluster::config::{ClusterConfig, Role};
//! use domain_cluster::{identity::Identity, Cluster, PeerId};
//! use domain_manager::{Manager, ManagerConfig, create_domain};
//!
//! let dir = tempfile::tempdir()?;
//! // The manager's own folder (mode 0700): one that others may enter is refused.
//! let data = dir.path().join("manager");
//! let client_id = Identity::generate();
//! let key = create_domain(&data, "my-domain", &[client_id.peer_id()])?;
//!
//! let mut config = ManagerConfig::new(&data);
//! config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
//! let manager = Manager::start(config).await?;
//! let addr = manager.tcp_addr().ok_or("no TCP address")?.clone();
//!
//! let (client, _) =
//!     Cluster::start(ClusterConfig::new(client_id, Role::Client).with_bootstrap(addr))?;
//! let fetched = client.public_key(manager.peer_id(), "my-domain").await?;
//! assert_eq!(&fetched, key.as_bytes());
//!
//! client.shutdown().await?;
//! manager.shutdown().await?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(())
//! # }
//! ```

pub mod admission;
pub mod config;
pub mod control;
pub mod domains;
mod error;
pub mod leadership;
mod metrics;
mod repair;
mod replication;
mod scheduler_thread;
mod service;
#[cfg(test)]
mod tests_support;
pub mod tokens;

pub use admission::{
    Admission, JoinRefusal, NodesFile, admit_node, create_invite, create_invite_in, revoke_node,
};
pub use config::{ManagerConfig, ManagerSettings};
pub use control::ControlStore;
pub use domains::{
    DomainPolicy, DomainSpec, DomainsFile, Refusal, create_domain, create_domain_in,
};
pub use error::{ConfigError, ManagerError};
pub use repair::RepairConfig;
pub use service::{
    FIRST_REQUEST_TIMEOUT, MAX_STRANGER_STREAMS, MAX_STRANGER_STREAMS_PER_PEER,
    MAX_STREAMS_PER_PEER, MAX_STREAMS_PER_PROTOCOL, Manager, STRANGER_BAN,
    STRANGER_REFUSALS_BEFORE_BAN, manager_identity,
};
