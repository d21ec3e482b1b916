//! The manager's part that a node relies on, in process, and a node joined to it
//! ([`setup::Setup`]), for the node's tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use domain_auth::DomainKey;
use domain_capabilities::{Limits, StaticKeys};
use domain_cluster::addr::first_plain_tcp;
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterHandle, Multiaddr, PeerId};
use domain_proto::discovery::{JoinClusterRequest, JoinClusterResponse};
use domain_proto::protocols::{JOIN_V1, MAX_STATUS_FRAME, PUBLIC_KEY_V1, TASK_STATUS_V1};
use domain_proto::task::Task;
use domain_proto::{DEFAULT_MAX_FRAME, read_message, read_message_or_eof, write_message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub mod setup;

pub const DOMAIN: &str = "domain-1";
pub const WAIT: Duration = Duration::from_secs(20);

/// Fails the test instead of hanging it.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub fn tcp_loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

/// The manager's part that a node relies on: `/join/v1` (checking that the
/// node names itself) and `/public-key/v1` from a real domain key.
pub struct StandIn {
    pub cluster: ClusterHandle,
    event_loop: JoinHandle<()>,
    pub addr: Multiaddr,
    joins: mpsc::Receiver<JoinClusterRequest>,
    /// The task status reports received on `/task-status/v1`, with their reporter.
    reports: tokio::sync::Mutex<mpsc::Receiver<(PeerId, Task)>>,
    servers: Vec<JoinHandle<()>>,
}

impl StandIn {
    pub async fn start(identity: Identity, listen: Multiaddr, key: &DomainKey) -> Self {
        let config = ClusterConfig::new(identity, Role::Manager).with_listen_addrs([listen]);
        let (cluster, event_loop) = Cluster::start(config).unwrap();
        let addr = first_plain_tcp(&cluster.listen_addrs().await.unwrap())
            .cloned()
            .unwrap();

        let (joins_tx, joins) = mpsc::channel(64);
        let mut join_streams = cluster.accept(JOIN_V1).unwrap();
        let join_server = tokio::spawn(async move {
            while let Some((peer, mut stream)) = join_streams.next().await {
                let Ok(request) =
                    read_message::<JoinClusterRequest, _>(&mut stream, DEFAULT_MAX_FRAME).await
                else {
                    continue;
                };
                if request.node.id != peer.to_string() {
                    continue;
                }
                if write_message(&mut stream, &JoinClusterResponse::default())
                    .await
                    .is_ok()
                {
                    let _ = joins_tx.try_send(request);
                }
            }
        });

        let keys = Arc::new(StaticKeys::new().with(DOMAIN, key.public_key()));
        let mut key_streams = cluster.accept(PUBLIC_KEY_V1).unwrap();
        let key_server = tokio::spawn(async move {
            while let Some((_, stream)) = key_streams.next().await {
                let keys = Arc::clone(&keys);
                tokio::spawn(async move {
                    let _ = domain_capabilities::serve_public_key(
                        stream,
                        keys.as_ref(),
                        &Limits::default(),
                    )
                    .await;
                });
            }
        });

        let (reports_tx, reports) = mpsc::channel(256);
        let mut report_streams = cluster.accept(TASK_STATUS_V1).unwrap();
        let report_server = tokio::spawn(async move {
            while let Some((peer, stream)) = report_streams.next().await {
                let reports = reports_tx.clone();
                tokio::spawn(async move {
                    let (mut reader, mut writer) = tokio::io::split(stream);
                    while let Ok(Some(task)) =
                        read_message_or_eof::<Task, _>(&mut reader, MAX_STATUS_FRAME).await
                    {
                        let _ = reports.send((peer, task)).await;
                    }
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut writer).await;
                });
            }
        });

        Self {
            cluster,
            event_loop,
            addr,
            joins,
            reports: tokio::sync::Mutex::new(reports),
            servers: vec![join_server, key_server, report_server],
        }
    }

    /// The next task status report received, and who sent it.
    pub async fn next_report(&self) -> (PeerId, Task) {
        let mut reports = self.reports.lock().await;
        within("a task status report", reports.recv())
            .await
            .unwrap()
    }

    pub async fn next_join(&mut self) -> JoinClusterRequest {
        within("a join", self.joins.recv()).await.unwrap()
    }

    pub async fn stop(self) {
        self.cluster.shutdown().await.unwrap();
        self.event_loop.await.unwrap();
        for server in self.servers {
            server.abort();
        }
    }
}
