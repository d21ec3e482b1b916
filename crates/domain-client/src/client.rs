//! Moving data through a domain cluster: upload and download as jobs.
//!
//! The modules follow the flow: `upload`, `download`, `holders` (asking the nodes that
//! hold a domain's data), `delete`, `watch` (subscriptions), `attempts` (what follows a
//! failed attempt), `partial` (resumable download files), `error` and `config`.
//!
//! A [`Client`] is a peer with no capability. To upload, it submits a job of one
//! `/store/v1` task to the manager, waits on the job's `/jobs/v1` stream for the task's
//! assignment (the receiving node and a token bound to this client), opens the task
//! stream to that node and sends every item on it, comparing the node's Merkle root
//! with its own for each. A download is the same with a `/load/v1` task that asks for
//! the items by id; each item's bytes are checked against its root before the file
//! appears. The `*_direct` forms skip the manager and use a node address and a token
//! obtained elsewhere (scripts, tests, other tools).
//!
//! When a transfer fails, the client reports the task FAILED on `/task-status/v1` (it is
//! the task's sender, so the manager accepts the report), the manager assigns the task
//! again, and the client tries the new assignment, up to [`ClientConfig::max_attempts`]
//! in all (`attempts`: each such decision is a plain function, tested on its own). Content is therefore always replayable: a
//! file path or bytes in memory ([`Content`]), never a one-shot reader.
//!
//! Items of [`RESUMABLE_MIN`] bytes or more are sent resumable: when the stream is cut
//! (reset, closed, idle) rather than refused, the client first continues on the same
//! node, with a job pinned to it, after the whole chunks that node kept; only if that
//! fails does the retry on another node start again from nothing. Downloads resume from
//! the partial file they left ([`Client::download`]).
//!
//! Listing, downloading, deleting and watching ask exactly the nodes that hold data of
//! the domain: the manager names them (`/holders/v1`, its holder index), and the client
//! submits one job with a task pinned to each that is registered, then asks them one
//! after the other. A download stops fetching once it has every id asked for, and the
//! remaining holders only answer a metadata query, so that every task ends DONE. A holder
//! that is down is reported in one line (`node X did not answer`, also in
//! [`Downloads::unanswered`]) and the others still answer. Ids found nowhere come back in
//! [`Downloads::missing`].

mod attempts;
mod config;
mod delete;
mod download;
mod error;
mod holders;
mod partial;
mod progress;
mod upload;
mod watch;

pub use config::{ClientConfig, default_identity_path};
pub use download::{Downloaded, Downloads};
pub use error::ClientError;
pub use progress::{Counted, Progress};
pub use upload::{Content, RESUMABLE_MIN, Upload};
pub use watch::Subscription;

use attempts::TaskRun;
use domain_proto::DomainId;

use std::sync::Arc;

use domain_cluster::addr::peer_of;
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterHandle, JobStream, Managers, Multiaddr, PeerId};
use domain_proto::task::{
    Any, CapabilityFilters, JobRequest, ResourceRecruitment, TaskRequest,
    resource_recruitment::RecruitmentPolicy,
};

/// Most items a listing collects, so that a node cannot grow the client's memory
/// without bound.
pub const MAX_LISTED_ITEMS: usize = 1_000_000;

/// A node to talk to without the manager, with a token obtained elsewhere.
#[derive(Debug, Clone)]
pub struct Direct {
    /// The node's address, ending with `/p2p/<peer id>`.
    pub node: Multiaddr,
    /// The task token (issued for this client as sender, that node as receiver, and the
    /// protocol used).
    pub token: String,
}

/// A node and a token to open one task stream with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Assignment {
    node: PeerId,
    token: String,
}

/// A peer that uploads and downloads domain data.
///
/// Cloning is cheap: clones share the peer (its swarm) and stop with it.
#[derive(Debug, Clone)]
pub struct Client {
    cluster: ClusterHandle,
    managers: Option<Managers>,
    config: ClientConfig,
    progress: Option<Arc<dyn Progress>>,
}

impl Client {
    /// Starts the client's peer, bootstrapped from the first of `managers` (addresses
    /// ending with `/p2p/<id>`: one, or several on one etcd, of which the client follows
    /// whichever leads), or alone when there is none (for the direct forms). An
    /// `Option<Multiaddr>` is such a list.
    ///
    /// # Errors
    /// [`ClientError::ManagerAddress`], [`ClientError::Cluster`].
    pub async fn start(
        identity: Identity,
        managers: impl IntoIterator<Item = Multiaddr>,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let managers: Vec<Multiaddr> = managers.into_iter().collect();
        if let Some(addr) = managers.iter().find(|addr| peer_of(addr).is_none()) {
            return Err(ClientError::ManagerAddress { addr: addr.clone() });
        }
        let mut cluster_config = ClusterConfig::new(identity, Role::Client);
        cluster_config.request_timeout = config.request_timeout;
        if let Some((first, more)) = managers.split_first() {
            cluster_config = cluster_config
                .with_bootstrap(first.clone())
                .with_more_bootstrap(more.iter().cloned());
        }
        let (cluster, _event_loop) =
            Cluster::start(cluster_config).map_err(|e| ClientError::Cluster(Box::new(e)))?;
        let managers = if managers.is_empty() {
            None
        } else {
            Some(
                Managers::new(cluster.clone(), managers)
                    .map_err(|e| ClientError::Cluster(Box::new(e)))?
                    .with_patience(config.connect_patience)
                    .with_lone_patience(config.connect_patience),
            )
        };
        Ok(Self {
            cluster,
            managers,
            config,
            progress: None,
        })
    }

    /// Lets downloads replace files that already exist in their folder (see
    /// [`ClientConfig::overwrite`]).
    #[must_use]
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.config.overwrite = overwrite;
        self
    }

    /// Tells `progress` about every item this client sends or receives from now on.
    #[must_use]
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// This client's peer id: the sender named in its tasks and tokens.
    #[must_use]
    pub fn peer_id(&self) -> PeerId {
        self.cluster.local_peer_id()
    }

    /// Stops the client's peer.
    ///
    /// # Errors
    /// [`ClientError::Cluster`] when the event loop has already stopped.
    pub async fn shutdown(self) -> Result<(), ClientError> {
        self.cluster
            .shutdown()
            .await
            .map_err(|e| ClientError::Cluster(Box::new(e)))
    }

    /// The domain's Ed25519 public key, as the manager serves it on `/public-key/v1`:
    /// the key that verifies the domain's task tokens.
    ///
    /// # Errors
    /// [`ClientError::NoManager`], [`ClientError::Manager`].
    pub async fn public_key(&self, domain: &DomainId) -> Result<[u8; 32], ClientError> {
        self.managers()?
            .call(|manager| self.cluster.public_key(manager, domain.as_str()))
            .await
            .map_err(|source| ClientError::Manager {
                job: "public-key".to_owned(),
                source: Box::new(source),
            })
    }

    /// The manager's `/monitor/v1` stream: every running job this client may watch and the
    /// last finished ones (the manager sends its 256 most recently finished), then each
    /// change as it happens.
    ///
    /// # Errors
    /// [`ClientError::NoManager`], [`ClientError::Manager`].
    pub async fn jobs(&self) -> Result<JobStream, ClientError> {
        self.managers()?
            .call(|manager| self.cluster.monitor(manager))
            .await
            .map_err(|source| ClientError::Manager {
                job: "monitor".to_owned(),
                source: Box::new(source),
            })
    }

    /// Submits a job of one task on `endpoint` for each of `receivers` (a node, or the
    /// manager's pick), each carrying `data` when given; the assignments come from the
    /// returned [`TaskRun`], which starts with the first task selected. A job of one task
    /// names it after the job; tasks of a job of several are `job@node`.
    async fn submit(
        &self,
        domain: &DomainId,
        job_name: &str,
        endpoint: &str,
        receivers: &[Option<PeerId>],
        data: Option<&Any>,
    ) -> Result<TaskRun<'_>, ClientError> {
        let managers = self.managers()?;
        let targets: Vec<(String, Option<PeerId>)> = match receivers {
            [receiver] => vec![(job_name.to_owned(), *receiver)],
            _ => receivers
                .iter()
                .map(|receiver| {
                    let node = receiver.map_or_else(String::new, |node| node.to_string());
                    (format!("{job_name}@{node}"), *receiver)
                })
                .collect(),
        };
        let tasks = targets
            .iter()
            .map(|(name, receiver)| {
                // A task pinned to a node fails at once when that node is gone, instead
                // of waiting for it.
                let policy = if receiver.is_some() {
                    RecruitmentPolicy::Fail
                } else {
                    RecruitmentPolicy::Always
                };
                TaskRequest {
                    name: name.clone(),
                    capability_filters: CapabilityFilters {
                        endpoint: endpoint.to_owned(),
                        ..CapabilityFilters::default()
                    },
                    timeout: config::wire_timeout(self.config.task_timeout),
                    resource_recruitment: ResourceRecruitment {
                        recruitment_policy: policy as i32,
                        ..ResourceRecruitment::default()
                    },
                    sender: self.peer_id().to_string(),
                    receiver: receiver.map(|peer| peer.to_string()),
                    data: data.cloned(),
                    ..TaskRequest::default()
                }
            })
            .collect();
        let request = JobRequest {
            name: job_name.to_owned(),
            tasks,
            nonce: uuid::Uuid::new_v4().to_string(),
            domain_id: domain.as_str().to_owned(),
        };
        // Submitted again to a new leader, the same request (same nonce) is the same job.
        let job = managers
            .call(|manager| self.cluster.submit_job(manager, request.clone()))
            .await
            .map_err(|source| ClientError::Manager {
                job: job_name.to_owned(),
                source: Box::new(source),
            })?;
        tracing::debug!(job_id = %job.job_id, job = job_name, "job accepted");
        Ok(TaskRun::new(self, job, request, targets))
    }

    /// The managers, or [`ClientError::NoManager`] for a client started without.
    fn managers(&self) -> Result<&Managers, ClientError> {
        self.managers.as_ref().ok_or(ClientError::NoManager)
    }

    /// The manager believed to lead, if the client has managers.
    fn manager(&self) -> Option<PeerId> {
        self.managers.as_ref().map(Managers::leader)
    }

    /// Connects to a node given directly.
    async fn dial(&self, direct: &Direct) -> Result<Assignment, ClientError> {
        let node = self
            .cluster
            .dial(direct.node.clone())
            .await
            .map_err(|source| ClientError::Connect {
                node: direct.node.to_string(),
                source: Box::new(source),
            })?;
        Ok(Assignment {
            node,
            token: direct.token.clone(),
        })
    }

    /// Opens a task stream to `node`. A node that cannot be reached yet (its relay slot
    /// not reserved again after a manager restart, its address not yet learned) is tried
    /// again after growing pauses, for up to [`ClientConfig::connect_patience`].
    async fn open(
        &self,
        node: PeerId,
        protocol: &'static str,
    ) -> Result<domain_cluster::ClusterStream, ClientError> {
        self.cluster
            .open_stream_within(node, protocol, self.config.connect_patience)
            .await
            .map_err(|source| ClientError::Connect {
                node: node.to_string(),
                source: Box::new(source),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manager_address_must_name_its_peer() {
        let peer = PeerId::random();
        let with: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        let without: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(peer_of(&with), Some(peer));
        assert_eq!(peer_of(&without), None);
    }
}
