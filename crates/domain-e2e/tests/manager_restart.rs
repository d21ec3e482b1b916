//! A manager killed (SIGKILL) in the middle of a job and started again on the same data
//! folder and port: the node joins again, the client resumes the job, every task finishes
//! once, and every item is on the node with its root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{content, start_manager, start_node};
use domain_capabilities::{Limits, store_items};
use domain_client::client::{Client, ClientConfig};
use domain_cluster::addr::peer_of;
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterHandle, JobStream, Multiaddr, PeerId, TaskStream};
use domain_e2e::free_port;
use domain_merkle::root_of;
use domain_proto::DomainId;
use domain_proto::domain_data::{Query, UpsertMetadata};
use domain_proto::protocols::STORE_V1;
use domain_proto::task::{CapabilityFilters, JobRequest, ResourceRecruitment, Status, TaskRequest};

const TASKS: usize = 4;
const DOMAIN: &str = "e2e";
/// Limit of each wait on the cluster: generous, for debug builds on a busy machine.
const WAIT: Duration = Duration::from_secs(60);

fn job_request(sender: PeerId) -> JobRequest {
    let tasks = (0..TASKS)
        .map(|i| TaskRequest {
            name: format!("store-{i}"),
            capability_filters: CapabilityFilters {
                endpoint: STORE_V1.into(),
                ..CapabilityFilters::default()
            },
            timeout: "10m".into(),
            resource_recruitment: ResourceRecruitment::default(),
            sender: sender.to_string(),
            ..TaskRequest::default()
        })
        .collect();
    JobRequest {
        name: "restart".into(),
        tasks,
        nonce: "manager-restart-test".into(),
        domain_id: DOMAIN.into(),
    }
}

/// The next `count` assignments on a job's stream: task name -> (node, token).
async fn assignments(tasks: &mut TaskStream, count: usize) -> BTreeMap<String, (PeerId, String)> {
    let mut assigned = BTreeMap::new();
    while assigned.len() < count {
        let task = tokio::time::timeout(WAIT, tasks.next())
            .await
            .expect("no assignment in time")
            .unwrap()
            .expect("the manager ended the job's stream");
        let node: PeerId = task.receiver.as_deref().unwrap().parse().unwrap();
        assigned.insert(task.name, (node, task.access_token.unwrap()));
    }
    assigned
}

/// Sends item `i` on the task stream the token opens; returns its root.
async fn store(client: &ClusterHandle, node: PeerId, token: &str, i: usize) -> String {
    let bytes = content(100_000 + i * 7168, i as u8);
    let item = UpsertMetadata {
        name: format!("item-{i}"),
        data_type: "bin".into(),
        size: bytes.len() as u32,
        is_new: true,
        ..UpsertMetadata::default()
    };
    let stream = client.open_stream(node, STORE_V1).await.unwrap();
    let stored = store_items(
        stream,
        token,
        DOMAIN,
        [(item, &bytes[..])],
        Limits::default(),
    )
    .await
    .unwrap();
    let root = root_of(&bytes).to_string();
    assert_eq!(stored[0].hash.as_deref(), Some(root.as_str()));
    root
}

/// Follows job `job_id` on the manager's monitor until every task in `until` is DONE,
/// recording each change of a task's status in `seen` (`last`: each task's status last
/// seen, across monitor streams).
async fn monitor_until_done(
    monitor: &mut JobStream,
    job_id: &str,
    until: &[String],
    last: &mut BTreeMap<String, Status>,
    seen: &mut Vec<(String, Status)>,
) {
    let all_done = |last: &BTreeMap<String, Status>| {
        until
            .iter()
            .all(|name| last.get(name) == Some(&Status::Done))
    };
    while !all_done(last) {
        let job = tokio::time::timeout(WAIT, monitor.next())
            .await
            .unwrap_or_else(|_| panic!("tasks not DONE in time; the manager said {seen:?}"))
            .unwrap()
            .expect("the monitor stream ended");
        if job.id != job_id {
            continue;
        }
        for task in &job.tasks {
            let status = task.status();
            if last.insert(task.name.clone(), status) != Some(status) {
                seen.push((task.name.clone(), status));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_killed_mid_job_resumes_it_with_nothing_lost_and_nothing_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().to_path_buf();
    let listen = format!("/ip4/127.0.0.1/tcp/{}", free_port().unwrap());
    let (mut manager, ready, _node) = {
        let (work, listen) = (work.clone(), listen.clone());
        tokio::task::spawn_blocking(move || {
            let (manager, ready) = start_manager(&work, Some(&listen));
            let (node, _) = start_node(&work, "node1", &ready.addr);
            (manager, ready, node)
        })
        .await
        .unwrap()
    };
    let manager_addr: Multiaddr = ready.addr.parse().unwrap();
    let manager_id = peer_of(&manager_addr).unwrap();

    let identity = Identity::generate();
    let (client, _) = Cluster::start(
        ClusterConfig::new(identity.clone(), Role::Client).with_bootstrap(manager_addr.clone()),
    )
    .unwrap();
    let request = job_request(client.local_peer_id());
    let mut job = client
        .submit_job(manager_id, request.clone())
        .await
        .unwrap();
    let job_id = job.job_id.clone();
    let mut monitor = client.monitor(manager_id).await.unwrap();
    let first = assignments(&mut job.tasks, TASKS).await;

    // One task runs to DONE, then the manager dies with the three others assigned.
    let mut roots = BTreeMap::new();
    let (node, token) = &first["store-0"];
    roots.insert(0, store(&client, *node, token, 0).await);
    let (mut last, mut seen) = (BTreeMap::new(), Vec::new());
    monitor_until_done(
        &mut monitor,
        &job_id,
        &["store-0".into()],
        &mut last,
        &mut seen,
    )
    .await;
    manager.kill();
    drop(job);

    let (_manager, again) = {
        let (work, listen) = (work.clone(), listen.clone());
        tokio::task::spawn_blocking(move || start_manager(&work, Some(&listen)))
            .await
            .unwrap()
    };
    assert_eq!(again.addr, ready.addr, "same identity, same port");
    client.dial(manager_addr.clone()).await.unwrap();

    // The same request resumes the job: fresh tokens for the tasks still to run.
    let mut resumed = client.submit_job(manager_id, request).await.unwrap();
    assert_eq!(resumed.job_id, job_id);
    let rest = assignments(&mut resumed.tasks, TASKS - 1).await;
    assert!(
        !rest.contains_key("store-0"),
        "a DONE task is not assigned again"
    );
    for i in 1..TASKS {
        let (node, token) = &rest[&format!("store-{i}")];
        assert_eq!(
            *node,
            first[&format!("store-{i}")].0,
            "still on the node it had"
        );
        roots.insert(i, store(&client, *node, token, i).await);
    }
    let names: Vec<String> = (0..TASKS).map(|i| format!("store-{i}")).collect();
    let mut monitor = client.monitor(manager_id).await.unwrap();
    monitor_until_done(&mut monitor, &job_id, &names, &mut last, &mut seen).await;

    // Each task became DONE once, and none was retried or failed.
    for name in &names {
        let done = seen
            .iter()
            .filter(|(n, s)| n == name && *s == Status::Done)
            .count();
        assert_eq!(done, 1, "{name} DONE {done} times: {seen:?}");
    }
    assert!(
        !seen
            .iter()
            .any(|(_, s)| matches!(s, Status::Retry | Status::Failed)),
        "a task was retried or failed: {seen:?}"
    );

    // The job as the manager keeps it: every task DONE.
    let mut monitor = client.monitor(manager_id).await.unwrap();
    loop {
        let job = tokio::time::timeout(WAIT, monitor.next())
            .await
            .expect("the job is not on the monitor stream")
            .unwrap()
            .unwrap();
        if job.id == job_id {
            assert_eq!(job.tasks.len(), TASKS);
            assert!(
                job.tasks.iter().all(|t| t.status() == Status::Done),
                "{job:?}"
            );
            break;
        }
    }
    drop(monitor);

    // Nothing lost, nothing stored twice: the node holds exactly the four items.
    let lister = Client::start(
        Identity::generate(),
        Some(manager_addr),
        ClientConfig::default(),
    )
    .await
    .unwrap();
    let listed = lister
        .list(&DomainId::new(DOMAIN).unwrap(), &Query::default())
        .await
        .unwrap();
    let mut listed: Vec<(String, String)> = listed
        .into_iter()
        .map(|m| (m.name, m.hash.unwrap_or_default()))
        .collect();
    listed.sort();
    let expected: Vec<(String, String)> = roots
        .iter()
        .map(|(i, root)| (format!("item-{i}"), root.clone()))
        .collect();
    assert_eq!(listed, expected);
    lister.shutdown().await.unwrap();
    client.shutdown().await.unwrap();
}
