//! Requests built to cost the manager memory are refused from their encoding, before any
//! of their elements is built.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use domain_cluster::config::Role;
use domain_cluster::identity::Identity;
use domain_proto::discovery::JoinClusterRequest;
use std::time::Duration;

use domain_proto::protocols::{HOLDERS_V1, JOBS_V1, JOIN_V1, MONITOR_V1};
use domain_proto::task::{Code, SubmitJobResponse};
use domain_proto::{DEFAULT_MAX_FRAME, read_message};
use tokio::io::AsyncWriteExt as _;

/// A frame whose body is `field` (a key byte) with an empty value, repeated to fill
/// `len` bytes: the cheapest way to make a decoder build millions of empty structs.
fn frame_of_empty_fields(key: u8, len: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(len);
    while body.len() + 2 <= len {
        body.extend_from_slice(&[key, 0x00]);
    }
    let mut varint = Vec::new();
    prost::encoding::encode_varint(body.len() as u64, &mut varint);
    let mut frame = ((varint.len() + body.len()) as u32).to_be_bytes().to_vec();
    frame.extend(varint);
    frame.extend(body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_request_of_two_million_empty_tasks_is_refused_before_it_is_built() {
    let dir = tempdir();
    let (manager, _, alice, _) = manager_with_client(dir.path()).await;

    // JobRequest.tasks is field 2 (key 0x12): 2M empty tasks in 4 MiB.
    let frame = frame_of_empty_fields(0x12, DEFAULT_MAX_FRAME - 16);
    let mut stream = within(
        "opening /jobs/v1",
        alice.open_stream(manager.peer_id(), JOBS_V1),
    )
    .await
    .unwrap();
    within("sending", stream.write_all(&frame)).await.unwrap();
    let answer: SubmitJobResponse =
        within("the answer", read_message(&mut stream, DEFAULT_MAX_FRAME))
            .await
            .unwrap();
    assert_eq!(answer.code, Code::BadRequest as i32);
    assert!(
        answer
            .err_msg
            .contains("holds 2097144 tasks; a job holds at most 10000"),
        "{}",
        answer.err_msg
    );
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_of_a_million_empty_capabilities_is_refused_before_it_is_built() {
    let dir = tempdir();
    let (manager, addr) = start(config(dir.path())).await;
    let node = peer(Role::Node, &addr);

    // JoinClusterRequest.node (field 1) holding the node's own id (Node.id, field 1) and
    // a million empty capabilities (Node.capabilities, field 2, key 0x12): without the
    // count, a join the manager would accept.
    let id = node.local_peer_id().to_string();
    let mut node_message = vec![0x0a, id.len() as u8];
    node_message.extend_from_slice(id.as_bytes());
    while node_message.len() < 2 << 20 {
        node_message.extend_from_slice(&[0x12, 0x00]);
    }
    let mut body = vec![0x0a];
    prost::encoding::encode_varint(node_message.len() as u64, &mut body);
    body.extend(node_message);
    let mut varint = Vec::new();
    prost::encoding::encode_varint(body.len() as u64, &mut varint);
    let mut frame = ((varint.len() + body.len()) as u32).to_be_bytes().to_vec();
    frame.extend(varint);
    frame.extend(body);

    let mut stream = within(
        "opening /join/v1",
        node.open_stream(manager.peer_id(), JOIN_V1),
    )
    .await
    .unwrap();
    within("sending", stream.write_all(&frame)).await.unwrap();
    let answer = within(
        "the answer",
        read_message::<domain_proto::discovery::JoinClusterResponse, _>(&mut stream, 1024),
    )
    .await
    .unwrap();
    let reason = answer.err_msg.unwrap_or_default();
    assert!(
        reason.contains("advertises 1048549 capabilities; at most 256"),
        "{reason}"
    );
    assert!(manager.nodes().await.unwrap().is_empty());
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_hold_every_slot_of_a_protocol_with_silent_streams() {
    let dir = tempdir();
    // A peer the manager knows (on an allow-list), gone rogue.
    let greedy = Identity::generate();
    domain_manager::create_domain(dir.path(), "greedy", &[greedy.peer_id()]).unwrap();
    let (manager, addr, alice, alice_id) = manager_with_client(dir.path()).await;
    let greedy = peer_with(greedy, Role::Client, &addr);

    // Silent streams up to the peer's share: each held until the first request's deadline.
    let mut held = Vec::new();
    for _ in 0..domain_manager::MAX_STREAMS_PER_PEER {
        held.push(
            within(
                "a silent stream",
                greedy.open_stream(manager.peer_id(), JOBS_V1),
            )
            .await
            .unwrap(),
        );
    }
    // One more is dropped at once, not after the deadline (5 s).
    let mut over = within(
        "one stream more",
        greedy.open_stream(manager.peer_id(), JOBS_V1),
    )
    .await
    .unwrap();
    let mut byte = [0u8; 1];
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut over, &mut byte),
    )
    .await;
    assert!(matches!(ended, Ok(Ok(0) | Err(_))), "{ended:?}");

    // Everyone else is still served.
    let accepted = within(
        "alice's job",
        alice.submit_job(
            manager.peer_id(),
            job("scans", "1", vec![store_task("a", alice_id, &[])]),
        ),
    )
    .await;
    assert!(accepted.is_ok(), "{accepted:?}");
    drop(held);
    manager.shutdown().await.unwrap();
}

/// Fresh identities of the flood. Each opens on every protocol an oversized frame and as
/// many silent streams as a known peer may hold (64; 2,560 in all, more than the 1,024 of
/// a protocol); the manager serves 4 of each, 128 at most in all, and bans an identity
/// that keeps opening past its 4.
const FLOOD_IDENTITIES: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_fresh_identities_is_banned_and_neither_drops_a_node_nor_keeps_out_a_client_or_an_invited_node()
 {
    let dir = tempdir();
    let (manager, addr, alice, alice_id) = manager_with_client(dir.path()).await;
    let node = joined_node(&manager, &addr).await;
    let invite =
        domain_manager::create_invite(manager.data_dir(), Duration::from_secs(600)).unwrap();

    // Each identity up to its share on every protocol, silent or with an oversized frame.
    let mut held = Vec::new();
    let mut flooders = Vec::new();
    for _ in 0..FLOOD_IDENTITIES {
        let flooder = peer(Role::Client, &addr);
        for protocol in [JOIN_V1, JOBS_V1, MONITOR_V1, HOLDERS_V1] {
            // A frame header over every limit (refused at once), then half a frame
            // header on as many streams as the identity may hold, and silence.
            let oversized = std::iter::once(u32::MAX.to_be_bytes().to_vec());
            let silent = std::iter::repeat_n(vec![0, 0], domain_manager::MAX_STREAMS_PER_PEER);
            for bytes in oversized.chain(silent) {
                let Ok(mut stream) = flooder.open_stream(manager.peer_id(), protocol).await else {
                    continue;
                };
                let _ = stream.write_all(&bytes).await;
                let _ = stream.flush().await;
                held.push(stream);
            }
        }
        flooders.push(flooder);
    }
    // Each identity, past its share again and again, is banned: its connection closes and
    // it cannot open another stream.
    for flooder in &flooders {
        within("the flooder's ban", async {
            loop {
                match flooder.open_stream(manager.peer_id(), JOIN_V1).await {
                    Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await;
    }
    assert!(held.len() >= FLOOD_IDENTITIES, "the flood opened streams");

    // The admitted node's heartbeat, a client's job and a newcomer's invite all get in.
    within(
        "the node's heartbeat",
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
    let accepted = within(
        "alice's job",
        alice.submit_job(
            manager.peer_id(),
            job("scans", "1", vec![store_task("a", alice_id, &[])]),
        ),
    )
    .await;
    assert!(accepted.is_ok(), "{accepted:?}");
    let newcomer = peer(Role::Node, &addr);
    within(
        "the invited node's join",
        newcomer.join(
            manager.peer_id(),
            JoinClusterRequest {
                node: node_message(newcomer.local_peer_id()),
                invite: Some(invite),
                ..JoinClusterRequest::default()
            },
        ),
    )
    .await
    .unwrap();
    let mut nodes = node_ids(&manager).await;
    nodes.sort();
    let mut expected = vec![
        node.local_peer_id().to_string(),
        newcomer.local_peer_id().to_string(),
    ];
    expected.sort();
    assert_eq!(nodes, expected, "no node dropped, the newcomer admitted");
    drop(held);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_marks_its_own_tasks_as_copies_is_refused() {
    let dir = tempdir();
    let (manager, _, alice, alice_id) = manager_with_client(dir.path()).await;

    // A copy's token lets its sender choose item ids: a job may not claim to be one.
    let mut forged = store_task("b", alice_id, &[]);
    forged.data = Some(domain_proto::task::Any {
        type_url: domain_proto::REPLICATE_INPUT.into(),
        value: Vec::new(),
    });
    let request = job("scans", "1", vec![store_task("a", alice_id, &[]), forged]);
    let refused = within("submitting", alice.submit_job(manager.peer_id(), request)).await;
    match refused {
        Err(domain_cluster::ClusterError::JobRejected { message, .. }) => {
            assert!(
                message.contains("only the manager places copies"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    manager.shutdown().await.unwrap();
}
