//! The manager over loopback, with real cluster peers as nodes and clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use domain_auth::{DomainKeyStore, Expected, PublicKey, verify};
use domain_cluster::config::Role;
use domain_cluster::identity::Identity;
use domain_cluster::{ClusterError, SubmittedJob};
use domain_manager::{Manager, create_domain};
use domain_proto::discovery::{DomainHoldings, Holdings, JoinClusterRequest};
use domain_proto::protocols::STORE_V1;
use domain_proto::task::Status;

fn rejection(result: Result<SubmittedJob, ClusterError>) -> String {
    match result {
        Err(ClusterError::JobRejected { message, .. }) => message,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_a_join_under_another_peers_id_is_refused() {
    let dir = tempdir();
    let (manager, addr) = start(config(dir.path())).await;

    let node = joined_node(&manager, &addr).await;
    let nodes = manager.nodes().await.unwrap();
    assert_eq!(nodes, [node_message(node.local_peer_id())]);

    // Joining again is the heartbeat: still one node.
    within(
        "joining again",
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
    assert_eq!(manager.nodes().await.unwrap().len(), 1);

    let impostor = peer(Role::Node, &addr);
    let claimed = node_message(node.local_peer_id());
    let refused = within(
        "a join under another id",
        impostor.join(
            manager.peer_id(),
            JoinClusterRequest {
                node: claimed,
                ..JoinClusterRequest::default()
            },
        ),
    )
    .await;
    assert!(
        matches!(refused, Err(ClusterError::Frame { .. })),
        "{refused:?}"
    );
    assert_eq!(manager.nodes().await.unwrap().len(), 1);

    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_job_sends_its_tokens_to_the_submitter_and_nothing_of_it_on_gossip() {
    let dir = tempdir();
    let (manager, addr) = start(config(dir.path())).await;
    let node = joined_node(&manager, &addr).await;
    let client = peer(Role::Client, &addr);
    let watcher = peer(Role::Client, &addr);

    let request = job(
        "open-domain",
        "1",
        vec![store_task("upload", client.local_peer_id(), &[])],
    );
    let mut submitted = within("submitting", client.submit_job(manager.peer_id(), request))
        .await
        .unwrap();
    let task = within("the task with its token", submitted.tasks.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.receiver, Some(node.local_peer_id().to_string()));
    assert_eq!(task.status, Status::Pending as i32);

    // The token opens /store/v1 on the node for the client, checked with the served key.
    let key = within(
        "the public key",
        client.public_key(manager.peer_id(), "open-domain"),
    )
    .await
    .unwrap();
    let claims = verify(
        task.access_token.as_deref().unwrap(),
        &PublicKey::from_bytes(key),
        &Expected {
            domain_id: "open-domain",
            receiver: &node.local_peer_id().to_string(),
            sender: &client.local_peer_id().to_string(),
            endpoint: STORE_V1,
        },
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(claims.job_id, submitted.job_id);

    // A peer that follows the job's topic learns nothing there: the manager neither
    // announces the topic nor gossips the task's changes; the node reports to it directly.
    let mut events = watcher.gossip_events().unwrap();
    watcher.subscribe(&submitted.job_id).await.unwrap();
    report(&node, &manager, &with_status(&task, Status::Processing)).await;
    report(&node, &manager, &with_status(&task, Status::Done)).await;
    assert_eq!(
        within("the end of the job", submitted.tasks.next())
            .await
            .unwrap(),
        None
    );
    let job = manager.job(&submitted.job_id).await.unwrap().unwrap();
    assert_eq!(job.tasks[0].status, Status::Done as i32);
    assert!(job.tasks.iter().all(|t| t.access_token.is_none()));
    let overheard = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match events.recv().await {
                Ok(
                    domain_cluster::gossip::GossipEvent::Message { topic, .. }
                    | domain_cluster::gossip::GossipEvent::Subscribed { topic, .. },
                ) if topic == submitted.job_id => {
                    return topic;
                }
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert!(overheard.is_err(), "the job's topic carried something");

    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_refused_for_an_unknown_domain_a_peer_not_allowed_and_a_cycle() {
    let dir = tempdir();
    let alice = Identity::generate();
    create_domain(dir.path(), "scans", &[alice.peer_id()]).unwrap();
    let (manager, addr) = start(config(dir.path())).await;
    let alice_id = alice.peer_id();
    let alice = peer_with(alice, Role::Client, &addr);
    let bob = peer(Role::Client, &addr);

    let one = |domain: &str, sender| job(domain, "1", vec![store_task("a", sender, &[])]);
    let message = rejection(
        within(
            "unknown domain",
            alice.submit_job(manager.peer_id(), one("meshes", alice_id)),
        )
        .await,
    );
    assert_eq!(message, "unknown domain \"meshes\"");

    let bob_id = bob.local_peer_id();
    let message = rejection(
        within(
            "peer not allowed",
            bob.submit_job(manager.peer_id(), one("scans", bob_id)),
        )
        .await,
    );
    assert_eq!(
        message,
        format!("peer {bob_id} is not allowed to submit jobs to domain \"scans\"")
    );

    let cycle = job(
        "scans",
        "2",
        vec![
            store_task("a", alice_id, &["b"]),
            store_task("b", alice_id, &["a"]),
        ],
    );
    let message = rejection(within("a cycle", alice.submit_job(manager.peer_id(), cycle)).await);
    assert!(message.contains("cycle"), "{message}");

    // Alice's own valid job goes through.
    let accepted = within(
        "a valid job",
        alice.submit_job(manager.peer_id(), one("scans", alice_id)),
    )
    .await
    .unwrap();
    assert!(manager.job(&accepted.job_id).await.unwrap().is_some());
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holders_of_a_domain_are_named_to_its_allowed_peers_and_followed_as_they_change() {
    let dir = tempdir();
    let alice = Identity::generate();
    create_domain(dir.path(), "scans", &[alice.peer_id()]).unwrap();
    let (manager, addr) = start(config(dir.path())).await;
    let alice = peer_with(alice, Role::Client, &addr);
    let bob = peer(Role::Client, &addr);
    let holds_scans = Holdings {
        domains: vec![DomainHoldings {
            domain_id: "scans".into(),
            items: 3,
            bytes: 300,
        }],
        gateway: None,
    };
    let node_holding_scans = async || {
        let node = peer(Role::Node, &addr);
        admit(&manager, &node);
        let joined = node.join(
            manager.peer_id(),
            JoinClusterRequest {
                node: node_message(node.local_peer_id()),
                holdings: Some(holds_scans.clone()),
                ..JoinClusterRequest::default()
            },
        );
        within("joining", joined).await.unwrap();
        node
    };
    let first = node_holding_scans().await;

    let (holders, mut changes) = within(
        "asking for the holders",
        alice.holders(manager.peer_id(), "scans", true),
    )
    .await
    .unwrap();
    let named: Vec<(String, u64, bool)> = holders
        .iter()
        .map(|h| (h.node_id.clone(), h.items, h.registered))
        .collect();
    assert_eq!(named, [(first.local_peer_id().to_string(), 3, true)]);

    let refused = within(
        "a peer not allowed",
        bob.holders(manager.peer_id(), "scans", false),
    )
    .await;
    assert!(
        matches!(refused, Err(ClusterError::HoldersRefused { .. })),
        "{refused:?}"
    );

    let _second = node_holding_scans().await;
    let holders = within("the next holders", changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(holders.len(), 2);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_streams_the_jobs_a_peer_may_watch_then_their_changes() {
    let dir = tempdir();
    let alice = Identity::generate();
    create_domain(dir.path(), "scans", &[alice.peer_id()]).unwrap();
    let (manager, addr) = start(config(dir.path())).await;
    let alice_id = alice.peer_id();
    let alice = peer_with(alice, Role::Client, &addr);
    let node = joined_node(&manager, &addr).await;

    let mut first = within(
        "submitting before the monitor starts",
        alice.submit_job(
            manager.peer_id(),
            job("scans", "1", vec![store_task("a", alice_id, &[])]),
        ),
    )
    .await
    .unwrap();
    let task = first.tasks.next().await.unwrap().unwrap();

    let mut monitor = within("monitoring", alice.monitor(manager.peer_id()))
        .await
        .unwrap();
    // Every job as it is now.
    let now = within("the first frame", monitor.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.id, first.job_id);
    assert_eq!(now.tasks.len(), 1);
    assert_eq!(
        now.tasks[0].receiver,
        Some(node.local_peer_id().to_string())
    );

    // Then the changes, without tokens.
    report(&node, &manager, &with_status(&task, Status::Done)).await;
    let frames = monitor_until(&mut monitor, &first.job_id, "a", Status::Done).await;
    assert!(
        frames
            .iter()
            .flat_map(|j| &j.tasks)
            .all(|t| t.access_token.is_none())
    );

    // A peer allowed nowhere sees nothing of the domain's jobs.
    let stranger = peer(Role::Client, &addr);
    let mut blind = within("monitoring", stranger.monitor(manager.peer_id()))
        .await
        .unwrap();
    let second = within(
        "a second job",
        alice.submit_job(
            manager.peer_id(),
            job("scans", "2", vec![store_task("b", alice_id, &[])]),
        ),
    )
    .await
    .unwrap();
    monitor_until(&mut monitor, &second.job_id, "b", Status::Pending).await;
    let nothing = tokio::time::timeout(std::time::Duration::from_millis(300), blind.next()).await;
    assert!(nothing.is_err(), "a stranger saw {nothing:?}");

    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_are_served_for_the_declared_domains_only() {
    let dir = tempdir();
    let key = create_domain(dir.path(), "scans", &[]).unwrap();
    let mut config = config(dir.path());
    config.domains.push(domain_manager::DomainSpec {
        id: "from-config".into(),
        allow: vec![],
        replication: None,
    });
    let (manager, addr) = start(config).await;
    let client = peer(Role::Client, &addr);

    let served = within("a key", client.public_key(manager.peer_id(), "scans")).await;
    assert_eq!(served.unwrap(), *key.as_bytes());
    // A domain declared in the configuration file has its key from the start.
    let keys = DomainKeyStore::open(dir.path().join("keys")).unwrap();
    let configured = keys.key("from-config").unwrap().public_key();
    let served = within("a key", client.public_key(manager.peer_id(), "from-config")).await;
    assert_eq!(served.unwrap(), *configured.as_bytes());

    let unknown = within(
        "an unknown domain",
        client.public_key(manager.peer_id(), "nope"),
    )
    .await;
    assert!(unknown.is_err());
    assert!(!keys.key_path("nope").exists(), "a key was made on request");
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_updates_from_a_peer_that_is_neither_sender_nor_receiver_are_ignored() {
    let dir = tempdir();
    let (manager, addr) = start(config(dir.path())).await;
    let node = joined_node(&manager, &addr).await;
    let client = peer(Role::Client, &addr);
    // The stranger sends task "b" but has nothing to do with task "a".
    let stranger = peer(Role::Client, &addr);
    let request = job(
        "open-domain",
        "1",
        vec![
            store_task("a", client.local_peer_id(), &[]),
            store_task("b", stranger.local_peer_id(), &[]),
        ],
    );
    let mut submitted = within("submitting", client.submit_job(manager.peer_id(), request))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(submitted.tasks.next().await.unwrap().unwrap());
    }
    tasks.sort_by(|x, y| x.name.cmp(&y.name));
    let mut monitor = within("monitoring", client.monitor(manager.peer_id()))
        .await
        .unwrap();

    // One publisher's messages arrive in order: once "b" is PROCESSING, the claim on "a" was
    // weighed, and refused.
    report(&stranger, &manager, &with_status(&tasks[0], Status::Failed)).await;
    report(
        &stranger,
        &manager,
        &with_status(&tasks[1], Status::Processing),
    )
    .await;
    let frames = monitor_until(&mut monitor, &submitted.job_id, "b", Status::Processing).await;
    let a_statuses: Vec<i32> = frames
        .iter()
        .flat_map(|j| &j.tasks)
        .filter(|t| t.name == "a")
        .map(|t| t.status)
        .collect();
    assert!(
        a_statuses.iter().all(|&s| s == Status::Pending as i32),
        "{a_statuses:?}"
    );
    let job = manager.job(&submitted.job_id).await.unwrap().unwrap();
    assert_eq!(job.tasks[0].status, Status::Pending as i32);
    assert_eq!(
        job.tasks[0].receiver,
        Some(node.local_peer_id().to_string())
    );

    // The receiver's word counts.
    report(&node, &manager, &with_status(&tasks[0], Status::Done)).await;
    monitor_until(&mut monitor, &submitted.job_id, "a", Status::Done).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_resumes_its_jobs_and_the_submitter_gets_fresh_tokens() {
    let dir = tempdir();
    let client_identity = Identity::generate();
    let client_id = client_identity.peer_id();
    let request = job(
        "open-domain",
        "1",
        vec![
            store_task("first", client_id, &[]),
            store_task("second", client_id, &["first"]),
        ],
    );

    let (manager, addr) = start(config(dir.path())).await;
    let manager_id = manager.peer_id();
    let node_identity = Identity::generate();
    let node_id = node_identity.peer_id();
    let node = peer_with(node_identity.clone(), Role::Node, &addr);
    within(
        "joining",
        node.join(
            manager_id,
            JoinClusterRequest {
                node: node_message(node_id),
                ..JoinClusterRequest::default()
            },
        ),
    )
    .await
    .unwrap();
    let client = peer_with(client_identity.clone(), Role::Client, &addr);
    let mut submitted = within("submitting", client.submit_job(manager_id, request.clone()))
        .await
        .unwrap();
    let first = submitted.tasks.next().await.unwrap().unwrap();
    assert_eq!(first.name, "first");
    manager.shutdown().await.unwrap();
    client.shutdown().await.unwrap();
    node.shutdown().await.unwrap();

    // Same folder: same peer id, same job, same node, "first" still assigned.
    let (manager, addr) = start(config(dir.path())).await;
    assert_eq!(manager.peer_id(), manager_id);
    let job = manager.job(&submitted.job_id).await.unwrap().unwrap();
    let statuses: Vec<(String, i32, Option<String>)> = job
        .tasks
        .iter()
        .map(|t| (t.name.clone(), t.status, t.receiver.clone()))
        .collect();
    assert_eq!(
        statuses,
        [
            (
                "first".into(),
                Status::Pending as i32,
                Some(node_id.to_string())
            ),
            ("second".into(), Status::Pending as i32, None),
        ]
    );
    assert_eq!(manager.nodes().await.unwrap(), [node_message(node_id)]);

    // The node comes back; the client sends its request again and resumes the job.
    let node = peer_with(node_identity, Role::Node, &addr);
    within(
        "joining again",
        node.join(
            manager_id,
            JoinClusterRequest {
                node: node_message(node_id),
                ..JoinClusterRequest::default()
            },
        ),
    )
    .await
    .unwrap();
    let client = peer_with(client_identity, Role::Client, &addr);
    let mut resumed = within("resuming", client.submit_job(manager_id, request))
        .await
        .unwrap();
    assert_eq!(resumed.job_id, submitted.job_id);
    let again = within("a fresh token", resumed.tasks.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.name, "first");
    assert!(again.access_token.is_some());

    // "first" is done: "second" is assigned, and its token arrives on the resumed stream.
    report(&node, &manager, &with_status(&again, Status::Done)).await;
    let second = within("the next task", resumed.tasks.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.name, "second");
    assert_eq!(second.receiver, Some(node_id.to_string()));
    report(&node, &manager, &with_status(&second, Status::Done)).await;
    assert_eq!(
        within("the end of the job", resumed.tasks.next())
            .await
            .unwrap(),
        None
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_manager_on_the_same_folder_is_refused() {
    let dir = tempdir();
    let (manager, _) = start(config(dir.path())).await;
    let second = Manager::start(config(dir.path())).await;
    assert!(second.is_err());
    manager.shutdown().await.unwrap();
}
