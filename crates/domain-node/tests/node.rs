//! A real node on loopback against an in-process manager stand-in that serves
//! `/join/v1` and `/public-key/v1` with a real domain key, and a client that
//! moves data with tokens issued by that key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use domain_auth::{DomainKey, TaskClaims};
use domain_capabilities::{CapabilityError, Limits, StoreSender};
use domain_cluster::Multiaddr;
use domain_cluster::PeerId;
use domain_cluster::identity::Identity;
use domain_datastore::Datastore as _;
use domain_proto::domain_data::{Query, UpsertMetadata};
use domain_proto::protocols::{DELETE_V1, LOAD_V1, STORE_V1};
use domain_proto::task::Status;

mod common;

use common::setup::Setup;
use common::{DOMAIN, StandIn, within};

/// The next status report `manager` received, which must come from `reporter`.
async fn next_update(manager: &StandIn, reporter: PeerId) -> (String, Status) {
    let (from, task) = manager.next_report().await;
    assert_eq!(from, reporter);
    assert_eq!(task.access_token, None);
    (task.name.clone(), task.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_joins_with_its_name_and_capacities() {
    let mut setup = Setup::start(|c| c.join_interval = Duration::from_millis(200)).await;
    // The join loop runs on: the heartbeat brings the same registration again.
    let heartbeat = setup.manager.next_join().await;
    assert_eq!(heartbeat.node.name, "node-a");
    let capabilities: Vec<(String, i32)> = heartbeat
        .node
        .capabilities
        .iter()
        .map(|c| (c.endpoint.clone(), c.capacity))
        .collect();
    assert_eq!(
        capabilities,
        [
            (STORE_V1.to_owned(), 4),
            (LOAD_V1.to_owned(), -1),
            (DELETE_V1.to_owned(), -1)
        ]
    );
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_tokens_of_the_domain_key_uploads_and_downloads() {
    let setup = Setup::start(|c| c.join_interval = Duration::from_secs(60)).await;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let store_token = setup.token("job-up", "upload", STORE_V1).await;
    let ids = setup
        .store(&store_token, &[("big", &big), ("small", b"hello")])
        .await
        .unwrap();
    assert!(setup.node.keys().cached(DOMAIN).is_some());

    let load_token = setup.token("job-down", "download", LOAD_V1).await;
    let mut loaded = setup.load(&load_token, &ids).await;
    loaded.sort();
    assert_eq!(
        loaded,
        [
            ("big".to_owned(), big.clone()),
            ("small".to_owned(), b"hello".to_vec())
        ]
    );
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_not_signed_by_the_domain_key_or_for_another_protocol_are_refused() {
    let setup = Setup::start(|c| c.join_interval = Duration::from_secs(60)).await;
    let forger = DomainKey::generate(DOMAIN).unwrap();
    let claims = TaskClaims::new(
        DOMAIN,
        "job-x",
        "upload",
        setup.client.local_peer_id().to_string(),
        setup.node.peer_id().to_string(),
        STORE_V1,
        SystemTime::now(),
        Duration::from_secs(60),
    );
    let forged = forger.issue(&claims).unwrap();
    let refused = setup.store(&forged, &[("x", b"x")]).await.unwrap_err();
    assert!(
        matches!(&refused, CapabilityError::Refused { message } if message.contains("signature")),
        "{refused}"
    );

    let for_load = setup.token("job-x", "download", LOAD_V1).await;
    let refused = setup.store(&for_load, &[("x", b"x")]).await.unwrap_err();
    assert!(
        matches!(&refused, CapabilityError::Refused { message } if message.contains(LOAD_V1)),
        "{refused}"
    );
    let nothing = setup
        .node
        .datastore()
        .query(
            &domain_proto::DomainId::new(DOMAIN).unwrap(),
            &Query::default(),
        )
        .await
        .unwrap();
    assert!(nothing.is_empty());
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_reports_processing_then_done_or_failed_to_the_manager() {
    let setup = Setup::start(|c| c.join_interval = Duration::from_secs(60)).await;
    let node = setup.node.peer_id();

    let token = setup.token("job-status", "upload", STORE_V1).await;
    setup.store(&token, &[("a", b"abc")]).await.unwrap();
    assert_eq!(
        next_update(&setup.manager, node).await,
        ("upload".to_owned(), Status::Processing)
    );
    assert_eq!(
        next_update(&setup.manager, node).await,
        ("upload".to_owned(), Status::Done)
    );

    // A sender that announces more bytes than it sends fails the task.
    let token = setup.token("job-status", "broken-upload", STORE_V1).await;
    let stream = setup.client.open_stream(node, STORE_V1).await.unwrap();
    let mut sender = StoreSender::open(stream, &token, DOMAIN, Limits::default())
        .await
        .unwrap();
    let item = UpsertMetadata {
        name: "short".into(),
        size: 10,
        is_new: true,
        ..UpsertMetadata::default()
    };
    assert!(sender.send(item, &b"abc"[..]).await.is_err());
    drop(sender);
    assert_eq!(
        next_update(&setup.manager, node).await,
        ("broken-upload".to_owned(), Status::Processing)
    );
    assert_eq!(
        next_update(&setup.manager, node).await,
        ("broken-upload".to_owned(), Status::Failed)
    );
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_joins_again_after_the_manager_restarts() {
    let setup = Setup::start(|c| c.join_interval = Duration::from_millis(300)).await;
    let Setup {
        _dir,
        key,
        manager_identity,
        manager,
        node,
        client,
    } = setup;
    let addr = manager.addr.clone();
    manager.stop().await;

    // Same identity, same port: what a restarted manager looks like.
    let listen: Multiaddr = addr
        .iter()
        .filter(|p| !matches!(p, domain_cluster::addr::Protocol::P2p(_)))
        .collect();
    let mut restarted = StandIn::start(manager_identity, listen, &key).await;
    assert_eq!(restarted.addr, addr);
    let join = restarted.next_join().await;
    assert_eq!(join.node.id, node.peer_id().to_string());

    // And it serves again with keys from the restarted manager.
    let setup = Setup {
        _dir,
        key,
        manager_identity: Identity::generate(),
        manager: restarted,
        node,
        client,
    };
    setup
        .client
        .dial(setup.node.ready_addr().await.unwrap())
        .await
        .unwrap();
    let token = setup.token("job-after", "upload", STORE_V1).await;
    setup.store(&token, &[("after", b"restart")]).await.unwrap();
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_running_stream_finish_within_the_grace_period() {
    let setup = Setup::start(|c| {
        c.join_interval = Duration::from_secs(60);
        c.shutdown_grace = Duration::from_secs(10);
    })
    .await;
    let token = setup.token("job-grace", "upload", STORE_V1).await;
    let stream = setup
        .client
        .open_stream(setup.node.peer_id(), STORE_V1)
        .await
        .unwrap();
    let mut sender = StoreSender::open(stream, &token, DOMAIN, Limits::default())
        .await
        .unwrap();
    within("the stream to count as running", async {
        while setup.node.running_streams() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    let Setup {
        _dir,
        manager,
        node,
        client,
        ..
    } = setup;
    let store = node.datastore().clone();
    let shutdown = tokio::spawn(node.shutdown());
    let item = UpsertMetadata {
        name: "late".into(),
        is_new: true,
        ..UpsertMetadata::default()
    };
    let stored = sender.send_bytes(item, &b"still served"[..]).await.unwrap();
    sender.finish().await.unwrap();
    let report = within("the shutdown", shutdown).await.unwrap().unwrap();
    assert_eq!(report.streams_cut, 0);
    let (metadata, _) = store
        .get(&domain_proto::DomainId::new(DOMAIN).unwrap(), &stored.id)
        .await
        .unwrap();
    assert_eq!(metadata.name, "late");
    client.shutdown().await.unwrap();
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_stream_still_running_after_the_grace_period() {
    let setup = Setup::start(|c| {
        c.join_interval = Duration::from_secs(60);
        c.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    let node_id = setup.node.peer_id();
    let token = setup.token("job-cut", "upload", STORE_V1).await;
    let stream = setup.client.open_stream(node_id, STORE_V1).await.unwrap();
    let _idle_sender = StoreSender::open(stream, &token, DOMAIN, Limits::default())
        .await
        .unwrap();
    assert_eq!(
        next_update(&setup.manager, node_id).await,
        ("upload".to_owned(), Status::Processing)
    );
    let Setup {
        _dir,
        manager,
        node,
        client,
        ..
    } = setup;
    let report = within("the shutdown", node.shutdown()).await.unwrap();
    assert_eq!(report.streams_cut, 1);
    assert_eq!(
        next_update(&manager, node_id).await,
        ("upload".to_owned(), Status::Failed)
    );
    client.shutdown().await.unwrap();
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_the_limit_is_dropped_at_once_and_the_running_one_goes_on() {
    let setup = Setup::start(|c| {
        c.join_interval = Duration::from_secs(60);
        c.max_task_streams = 1;
    })
    .await;
    let node = setup.node.peer_id();
    let token = setup.token("job-limit", "upload", STORE_V1).await;
    let stream = setup.client.open_stream(node, STORE_V1).await.unwrap();
    let mut running = StoreSender::open(stream, &token, DOMAIN, Limits::default())
        .await
        .unwrap();

    // A token of its own, accepted: the node drops the stream for want of a permit.
    let other = setup.token("job-limit", "upload-b", STORE_V1).await;
    let stream = setup.client.open_stream(node, STORE_V1).await.unwrap();
    let over = within(
        "the stream over the limit to be dropped",
        StoreSender::open(stream, &other, DOMAIN, Limits::default()),
    )
    .await;
    assert!(over.is_err());
    assert_eq!(setup.node.running_streams(), 1);

    let item = UpsertMetadata {
        name: "first".into(),
        is_new: true,
        ..UpsertMetadata::default()
    };
    running.send_bytes(item, &b"goes on"[..]).await.unwrap();
    running.finish().await.unwrap();
    // Its permit back, the node takes streams again (with a token of their own: this
    // one's task is done here).
    within("the permit to come back", async {
        while setup.node.running_streams() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let next = setup.token("job-limit", "upload-2", STORE_V1).await;
    setup
        .store(&next, &[("second", b"accepted")])
        .await
        .unwrap();
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_made_while_the_manager_restarts_reaches_it_once_it_is_back() {
    let setup = Setup::start(|c| c.join_interval = Duration::from_millis(300)).await;
    let node_id = setup.node.peer_id();
    let token = setup.token("job-restart", "upload", STORE_V1).await;
    let stream = setup.client.open_stream(node_id, STORE_V1).await.unwrap();
    let mut sender = StoreSender::open(stream, &token, DOMAIN, Limits::default())
        .await
        .unwrap();

    let Setup {
        _dir,
        key,
        manager_identity,
        manager,
        node,
        client,
    } = setup;
    let addr = manager.addr.clone();
    manager.stop().await;

    // The task ends while no manager follows its job: nobody takes the report.
    let item = UpsertMetadata {
        name: "during-restart".into(),
        is_new: true,
        ..UpsertMetadata::default()
    };
    sender.send_bytes(item, &b"kept"[..]).await.unwrap();
    sender.finish().await.unwrap();

    let listen: Multiaddr = addr
        .iter()
        .filter(|p| !matches!(p, domain_cluster::addr::Protocol::P2p(_)))
        .collect();
    let restarted = StandIn::start(manager_identity, listen, &key).await;
    loop {
        let (name, status) = next_update(&restarted, node_id).await;
        assert_eq!(name, "upload");
        if status == Status::Done {
            break;
        }
        assert_eq!(status, Status::Processing);
    }
    client.shutdown().await.unwrap();
    node.shutdown().await.unwrap();
    restarted.stop().await;
}
