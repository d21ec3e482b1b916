//! Node admission: only the nodes the operator admitted (by peer id or with an invite)
//! join, get tasks and stay registered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use domain_cluster::ClusterError;
use domain_cluster::config::Role;
use domain_cluster::identity::Identity;
use domain_manager::{ManagerError, admit_node, create_domain, create_invite, revoke_node};
use domain_proto::discovery::JoinClusterRequest;

fn refusal<T: std::fmt::Debug>(result: Result<T, ClusterError>) -> String {
    match result {
        Err(ClusterError::JoinRefused { message }) => message,
        other => panic!("expected a refused join, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_not_admitted_is_refused_with_a_reason_and_never_gets_a_task() {
    let dir = tempdir();
    let (manager, addr, alice, alice_id) = manager_with_client(dir.path()).await;

    let rogue = peer(Role::Node, &addr);
    let rogue_id = rogue.local_peer_id();
    let message = refusal(
        within(
            "a rogue join",
            rogue.join(
                manager.peer_id(),
                JoinClusterRequest {
                    node: node_message(rogue_id),
                    ..JoinClusterRequest::default()
                },
            ),
        )
        .await,
    );
    assert!(message.contains("not admitted"), "{message}");
    assert!(message.contains(&rogue_id.to_string()), "{message}");
    assert!(manager.nodes().await.unwrap().is_empty());

    // The upload's task waits for an admitted node, and goes to the first that joins.
    let mut submitted = submit_one_store(&manager, &alice, alice_id).await;
    let refused_again = within(
        "the rogue again",
        rogue.join(
            manager.peer_id(),
            JoinClusterRequest {
                node: node_message(rogue_id),
                ..JoinClusterRequest::default()
            },
        ),
    )
    .await;
    assert!(matches!(
        refused_again,
        Err(ClusterError::JoinRefused { .. })
    ));
    let honest = joined_node(&manager, &addr).await;
    let task = within("the task's token", submitted.tasks.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        task.receiver.as_deref(),
        Some(honest.local_peer_id().to_string().as_str())
    );
    assert_eq!(manager.nodes().await.unwrap().len(), 1);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_admits_the_first_node_that_presents_it_and_no_other() {
    let dir = tempdir();
    create_domain(dir.path(), "scans", &[]).unwrap();
    let invite = create_invite(dir.path(), Duration::from_secs(3600)).unwrap();
    let (manager, addr) = start(config(dir.path())).await;

    let invited = peer(Role::Node, &addr);
    let invited_id = invited.local_peer_id();
    within(
        "joining with the invite",
        invited.join(
            manager.peer_id(),
            JoinClusterRequest {
                node: node_message(invited_id),
                invite: Some(invite.clone()),
                ..JoinClusterRequest::default()
            },
        ),
    )
    .await
    .unwrap();
    // Admitted for good: later joins need no invite.
    within(
        "joining again",
        invited.join(
            manager.peer_id(),
            JoinClusterRequest {
                node: node_message(invited_id),
                ..JoinClusterRequest::default()
            },
        ),
    )
    .await
    .unwrap();

    let other = peer(Role::Node, &addr);
    let message = refusal(
        within(
            "the spent invite",
            other.join(
                manager.peer_id(),
                JoinClusterRequest {
                    node: node_message(other.local_peer_id()),
                    invite: Some(invite),
                    ..JoinClusterRequest::default()
                },
            ),
        )
        .await,
    );
    assert!(message.contains("already used"), "{message}");
    let nodes = node_ids(&manager).await;
    assert_eq!(nodes, [invited_id.to_string()]);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_at_its_next_join_and_its_task_goes_to_another() {
    let dir = tempdir();
    let (manager, addr, alice, alice_id) = manager_with_client(dir.path()).await;

    let first = joined_node(&manager, &addr).await;
    let first_id = first.local_peer_id();
    let mut submitted = submit_one_store(&manager, &alice, alice_id).await;
    let task = within("the first token", submitted.tasks.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        task.receiver.as_deref(),
        Some(first_id.to_string().as_str())
    );
    let second = joined_node(&manager, &addr).await;

    assert!(revoke_node(manager.data_dir(), &first_id).unwrap());
    let message = refusal(
        within(
            "the revoked node's heartbeat",
            first.join(
                manager.peer_id(),
                JoinClusterRequest {
                    node: node_message(first_id),
                    ..JoinClusterRequest::default()
                },
            ),
        )
        .await,
    );
    assert!(message.contains("not admitted"), "{message}");
    let task = within("the token for the other node", submitted.tasks.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        task.receiver.as_deref(),
        Some(second.local_peer_id().to_string().as_str())
    );
    let nodes = node_ids(&manager).await;
    assert_eq!(nodes, [second.local_peer_id().to_string()]);
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_drops_registered_nodes_it_no_longer_admits() {
    let dir = tempdir();
    create_domain(dir.path(), "scans", &[]).unwrap();
    let (manager, addr) = start(config(dir.path())).await;
    let node = joined_node(&manager, &addr).await;
    assert_eq!(manager.nodes().await.unwrap().len(), 1);
    manager.shutdown().await.unwrap();
    node.shutdown().await.unwrap();

    assert!(revoke_node(dir.path(), &node.local_peer_id()).unwrap());
    let (manager, _) = start(config(dir.path())).await;
    assert!(manager.nodes().await.unwrap().is_empty());
    manager.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_open_manager_refuses_to_listen_beyond_loopback_without_open() {
    let dir = tempdir();
    let mut open = config(dir.path());
    open.listen = vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()];
    let refused = manager_start(open).await;
    assert!(
        matches!(refused, Err(ManagerError::OpenBeyondLoopback { .. })),
        "{refused:?}"
    );
    // A node admitted closes the manager: then the addresses are the operator's choice.
    admit_node(dir.path(), &Identity::generate().peer_id()).unwrap();
    let mut closed = config(dir.path());
    closed.listen = vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()];
    let started = manager_start(closed).await.unwrap();
    started.shutdown().await.unwrap();
}

async fn manager_start(
    config: domain_manager::ManagerConfig,
) -> Result<domain_manager::Manager, ManagerError> {
    within("starting", domain_manager::Manager::start(config)).await
}
