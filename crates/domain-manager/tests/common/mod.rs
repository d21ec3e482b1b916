//! Helpers of the manager's tests: a manager in a temp folder, peers that join it, jobs.

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use domain_cluster::JobStream;
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterHandle, Multiaddr, PeerId};
use domain_manager::{Manager, ManagerConfig};
use domain_proto::discovery::{Capability, JoinClusterRequest, Node};
use domain_proto::protocols::{LOAD_V1, STORE_V1};
use domain_proto::task::{
    CapabilityFilters, Job, JobRequest, ResourceRecruitment, Status, Task, TaskRequest,
};

/// The longest a test waits for one step: far above what loopback needs on a busy machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// Fails the test, naming `what`, when `future` does not finish within [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A temporary folder only its owner may enter, as a manager's data folder must be
/// (`tempfile::tempdir` follows the umask).
pub fn tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .expect("a temporary folder")
}

/// A manager on `dir` serving domain `scans` to one client: the manager, its address, the
/// client (connected) and the client's peer id.
pub async fn manager_with_client(dir: &Path) -> (Manager, Multiaddr, ClusterHandle, PeerId) {
    let client = Identity::generate();
    let client_id = client.peer_id();
    domain_manager::create_domain(dir, "scans", &[client_id]).unwrap();
    let (manager, addr) = start(config(dir)).await;
    let client = peer_with(client, Role::Client, &addr);
    (manager, addr, client, client_id)
}

/// Submits, as `client` (`client_id`), a job of one `/store/v1` task to domain `scans`.
pub async fn submit_one_store(
    manager: &Manager,
    client: &ClusterHandle,
    client_id: PeerId,
) -> domain_cluster::SubmittedJob {
    within(
        "submitting",
        client.submit_job(
            manager.peer_id(),
            job("scans", "1", vec![store_task("a", client_id, &[])]),
        ),
    )
    .await
    .unwrap()
}

/// The peer ids of the nodes registered with `manager`, in id order.
pub async fn node_ids(manager: &Manager) -> Vec<String> {
    manager
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect()
}

/// A manager configuration in `dir`: loopback TCP, quick ticks.
pub fn config(dir: &Path) -> ManagerConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = ManagerConfig::new(dir);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.tick_interval = Duration::from_millis(50);
    config.request_timeout = Duration::from_secs(20);
    config
}

pub async fn start(config: ManagerConfig) -> (Manager, Multiaddr) {
    let manager = within("starting the manager", Manager::start(config))
        .await
        .unwrap();
    let addr = manager.tcp_addr().unwrap().clone();
    (manager, addr)
}

/// A peer of `role` with `identity`, bootstrapped from the manager at `addr`.
pub fn peer_with(identity: Identity, role: Role, addr: &Multiaddr) -> ClusterHandle {
    let mut config = ClusterConfig::new(identity, role).with_bootstrap(addr.clone());
    config.relay_reservation = false;
    config.gossip_heartbeat = Duration::from_millis(100);
    config.request_timeout = Duration::from_secs(20);
    Cluster::start(config).unwrap().0
}

pub fn peer(role: Role, addr: &Multiaddr) -> ClusterHandle {
    peer_with(Identity::generate(), role, addr)
}

/// A node offering `/store/v1` and `/load/v1` with no capacity limit.
pub fn node_message(id: PeerId) -> Node {
    Node {
        id: id.to_string(),
        name: "test-node".into(),
        capabilities: vec![
            Capability {
                endpoint: STORE_V1.into(),
                capacity: -1,
            },
            Capability {
                endpoint: LOAD_V1.into(),
                capacity: -1,
            },
        ],
        ..Default::default()
    }
}

/// Admits `node` to `manager`, unless the manager is open (admitting one node would close
/// it to the others).
pub fn admit(manager: &Manager, node: &ClusterHandle) {
    if !manager.policy().is_open() {
        domain_manager::admit_node(manager.data_dir(), &node.local_peer_id()).unwrap();
    }
}

/// A node that has joined `manager` (admitted first).
pub async fn joined_node(manager: &Manager, addr: &Multiaddr) -> ClusterHandle {
    let node = peer(Role::Node, addr);
    admit(manager, &node);
    within(
        "joining",
        node.join(
            manager.peer_id(),
            JoinClusterRequest {
                node: node_message(node.local_peer_id()),
                ..JoinClusterRequest::default()
            },
        ),
    )
    .await
    .unwrap();
    node
}

/// A `/store/v1` task sent by `sender` that needs `needs`.
pub fn store_task(name: &str, sender: PeerId, needs: &[&str]) -> TaskRequest {
    TaskRequest {
        name: name.into(),
        capability_filters: CapabilityFilters {
            endpoint: STORE_V1.into(),
            ..Default::default()
        },
        timeout: "5m".into(),
        needs: needs.iter().map(|n| (*n).to_owned()).collect(),
        resource_recruitment: ResourceRecruitment::default(),
        sender: sender.to_string(),
        ..Default::default()
    }
}

pub fn job(domain: &str, nonce: &str, tasks: Vec<TaskRequest>) -> JobRequest {
    JobRequest {
        name: "test-job".into(),
        tasks,
        nonce: nonce.into(),
        domain_id: domain.into(),
    }
}

/// `task` with a new status, as a sender or receiver reports it (no token).
pub fn with_status(task: &Task, status: Status) -> Task {
    Task {
        status: status as i32,
        access_token: None,
        ..task.clone()
    }
}

/// Reports a task's status to `manager` as `peer` (`/task-status/v1`).
pub async fn report(peer: &ClusterHandle, manager: &Manager, task: &Task) {
    within(
        "reporting a task's status",
        peer.report_tasks(manager.peer_id(), std::slice::from_ref(task)),
    )
    .await
    .unwrap();
}

/// Reads monitor frames until one shows `task` of `job_id` in `status`; returns every frame
/// read.
pub async fn monitor_until(
    monitor: &mut JobStream,
    job_id: &str,
    task: &str,
    status: Status,
) -> Vec<Job> {
    let mut seen = Vec::new();
    within("the monitor showing a task's status", async {
        loop {
            let job = monitor.next().await.unwrap().expect("monitor stream ended");
            let reached = job.id == job_id
                && job
                    .tasks
                    .iter()
                    .any(|t| t.name == task && t.status == status as i32);
            seen.push(job);
            if reached {
                return;
            }
        }
    })
    .await;
    seen
}
