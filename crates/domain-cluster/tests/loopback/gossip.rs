//! Gossip between three peers, and task updates on a job's topic.

use domain_cluster::config::Role;
use domain_cluster::gossip::{GossipEvent, GossipEvents};
use domain_cluster::{ClusterHandle, PeerId};
use domain_proto::task::{Status, Task};

use crate::common::{joined, manager, within};

/// Waits until `events` shows each of `peers` subscribed to `topic`.
async fn await_subscribers(events: &mut GossipEvents, topic: &str, peers: &[PeerId]) {
    let mut missing: Vec<PeerId> = peers.to_vec();
    within("subscriptions", async {
        while !missing.is_empty() {
            if let GossipEvent::Subscribed { peer, topic: t } = events.recv().await.unwrap()
                && t == topic
            {
                missing.retain(|p| *p != peer);
            }
        }
    })
    .await;
}

/// The next message on `topic`: (signer, data).
async fn next_message(events: &mut GossipEvents, topic: &str) -> (Option<PeerId>, Vec<u8>) {
    within("a gossip message", async {
        loop {
            if let GossipEvent::Message {
                topic: t,
                source,
                data,
                ..
            } = events.recv().await.unwrap()
                && t == topic
            {
                return (source, data);
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_by_one_node_reaches_the_manager_and_the_other_node() {
    const TOPIC: &str = "job-42";
    let manager = manager().await;
    let a = joined(Role::Node, &manager).await;
    let b = joined(Role::Node, &manager).await;
    let peers: [&ClusterHandle; 3] = [&manager.handle, &a.handle, &b.handle];

    let mut events: Vec<GossipEvents> = peers.iter().map(|p| p.gossip_events().unwrap()).collect();
    for peer in peers {
        assert!(peer.subscribe(TOPIC).await.unwrap());
    }
    // a and b know only the manager; the manager knows both.
    let (m_id, a_id, b_id) = (
        manager.handle.local_peer_id(),
        a.handle.local_peer_id(),
        b.handle.local_peer_id(),
    );
    await_subscribers(&mut events[0], TOPIC, &[a_id, b_id]).await;
    await_subscribers(&mut events[1], TOPIC, &[m_id]).await;
    await_subscribers(&mut events[2], TOPIC, &[m_id]).await;

    a.handle
        .publish(TOPIC, b"task done".to_vec())
        .await
        .unwrap();
    for receiver in [0, 2] {
        let (source, data) = next_message(&mut events[receiver], TOPIC).await;
        assert_eq!(source, Some(a_id), "messages are signed by their publisher");
        assert_eq!(data, b"task done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_updates_reach_followers_without_the_access_token() {
    const JOB: &str = "3f2a-job";
    let manager = manager().await;
    let client = joined(Role::Client, &manager).await;
    let mut manager_events = manager.handle.gossip_events().unwrap();
    manager.handle.subscribe(JOB).await.unwrap();

    let mut updates = client.handle.follow_task_updates(JOB).await.unwrap();
    assert_eq!(updates.job_id(), JOB);
    await_subscribers(&mut manager_events, JOB, &[client.handle.local_peer_id()]).await;

    let task = Task {
        name: "store-scan".into(),
        receiver: Some(client.handle.local_peer_id().to_string()),
        endpoint: domain_proto::protocols::STORE_V1.into(),
        access_token: Some("eyJhbGciOiJFZERTQSJ9.secret".into()),
        job_id: JOB.into(),
        sender: manager.handle.local_peer_id().to_string(),
        status: Status::Started as i32,
        output: None,
    };
    manager
        .handle
        .publish_task_update(JOB, &task)
        .await
        .unwrap();
    let update = within("task update", updates.recv()).await.unwrap();
    assert_eq!(update.publisher, Some(manager.handle.local_peer_id()));
    assert_eq!(
        update.task,
        Task {
            access_token: None,
            ..task
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_before_anyone_subscribes_is_an_error_naming_the_topic() {
    let manager = manager().await;
    let err = manager
        .handle
        .publish("lonely", b"x".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, domain_cluster::ClusterError::Publish { topic, .. } if topic == "lonely"),
        "unexpected error: {err}"
    );
}
