//! `Managers` against in-test managers: a standby that serves only `/leader/v1`, a leader
//! that serves the request too, and a manager that is gone.

use std::time::Duration;

use domain_cluster::config::Role;
use domain_cluster::{ClusterError, ClusterHandle, Managers, Multiaddr};
use domain_proto::discovery::{LeaderRequest, LeaderResponse};
use domain_proto::protocols::LEADER_V1;
use domain_proto::{read_message, write_message};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{Peer, loopback, manager, start, tcp_addr, within};

/// What the test's request opens on the leader.
const HELLO: &str = "/hello/1";

fn full_addr(peer: &Peer) -> Multiaddr {
    tcp_addr(&peer.addrs)
        .with_p2p(peer.handle.local_peer_id())
        .unwrap()
}

/// Answers `/leader/v1` with `leading` and `leader` as the leader's addresses.
fn serve_leader(manager: &ClusterHandle, leading: bool, leader: Vec<String>) {
    let mut incoming = manager.accept(LEADER_V1).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let leader_addrs = leader.clone();
            tokio::spawn(async move {
                let _: LeaderRequest = read_message(&mut stream, 64).await.unwrap();
                let answer = LeaderResponse {
                    leading,
                    leader_addrs,
                };
                write_message(&mut stream, &answer).await.unwrap();
            });
        }
    });
}

/// Answers `/hello/1` with its own peer id.
fn serve_hello(manager: &ClusterHandle) {
    let mut incoming = manager.accept(HELLO).unwrap();
    let me = manager.local_peer_id().to_string();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let me = me.clone();
            tokio::spawn(async move {
                stream.write_all(me.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
}

async fn hello(
    client: &ClusterHandle,
    manager: domain_cluster::PeerId,
) -> Result<String, ClusterError> {
    let mut stream = client.open_stream(manager, HELLO).await?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .map_err(|source| ClusterError::StreamIo {
            protocol: HELLO,
            peer: manager,
            source,
        })?;
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_gone_manager_follows_a_standby_to_the_leader_and_runs_there_once() {
    let leader = manager().await;
    serve_leader(&leader.handle, true, vec![full_addr(&leader).to_string()]);
    serve_hello(&leader.handle);
    let standby = manager().await;
    serve_leader(&standby.handle, false, vec![full_addr(&leader).to_string()]);
    let gone = manager().await;
    let gone_addr = full_addr(&gone);
    gone.handle.shutdown().await.unwrap();

    // The client was given the gone manager and the standby, not the leader.
    let client = start(loopback(Role::Client)).await;
    let managers = Managers::new(client.handle.clone(), [gone_addr, full_addr(&standby)]).unwrap();
    let answer = within("the request", managers.call(|m| hello(&client.handle, m)))
        .await
        .unwrap();
    assert_eq!(answer, leader.handle.local_peer_id().to_string());
    assert_eq!(managers.leader(), leader.handle.local_peer_id());
    assert!(managers.is_manager(&leader.handle.local_peer_id()));

    // The leader found is kept: the next request goes straight to it.
    let again = within("again", managers.call(|m| hello(&client.handle, m))).await;
    assert_eq!(again.unwrap(), answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_an_answer_and_no_leader_is_searched_for() {
    let first = manager().await;
    let second = manager().await;
    let client = start(loopback(Role::Client)).await;
    let managers = Managers::new(
        client.handle.clone(),
        [full_addr(&first), full_addr(&second)],
    )
    .unwrap();
    let mut calls = 0;
    let refused = managers
        .call(|_| {
            calls += 1;
            async {
                Err::<(), _>(ClusterError::JobRejected {
                    name: "j".into(),
                    message: "no".into(),
                })
            }
        })
        .await;
    assert!(matches!(refused, Err(ClusterError::JobRejected { .. })));
    assert_eq!(calls, 1);
    assert_eq!(managers.leader(), first.handle.local_peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_leader_the_search_ends_after_its_patience() {
    let standbys = [manager().await, manager().await];
    for standby in &standbys {
        serve_leader(&standby.handle, false, Vec::new());
    }
    let client = start(loopback(Role::Client)).await;
    let managers = Managers::new(client.handle.clone(), standbys.iter().map(full_addr))
        .unwrap()
        .with_patience(Duration::from_millis(500));
    let failed = within("the search", managers.call(|m| hello(&client.handle, m))).await;
    assert!(
        matches!(failed, Err(ClusterError::NoLeader { managers: 2, .. })),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_the_only_manager_is_repeated_within_a_client_s_patience_and_not_by_default() {
    // A manager that is starting: up, but not serving the request yet.
    let only = manager().await;
    let client = start(loopback(Role::Client)).await;
    let managers = Managers::new(client.handle.clone(), [full_addr(&only)])
        .unwrap()
        .with_lone_patience(Duration::from_secs(30));
    let serving = {
        let handle = only.handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            serve_hello(&handle);
        })
    };
    let mut calls = 0;
    let answer = within(
        "the request",
        managers.call(|m| {
            calls += 1;
            hello(&client.handle, m)
        }),
    )
    .await
    .unwrap();
    assert_eq!(answer, only.handle.local_peer_id().to_string());
    assert!(calls > 1, "asked {calls} times");
    serving.await.unwrap();

    // One that never serves it: by default (a node's) the error at once; with a
    // patience, the last error once it ran out.
    let never = manager().await;
    let mut calls = 0;
    let failed = Managers::new(client.handle.clone(), [full_addr(&never)])
        .unwrap()
        .call(|m| {
            calls += 1;
            hello(&client.handle, m)
        })
        .await;
    assert!(
        matches!(failed, Err(ClusterError::OpenStream { .. })),
        "{failed:?}"
    );
    assert_eq!(calls, 1);
    let managers = Managers::new(client.handle.clone(), [full_addr(&never)])
        .unwrap()
        .with_lone_patience(Duration::from_millis(500));
    let failed = within("the request", managers.call(|m| hello(&client.handle, m))).await;
    assert!(
        matches!(failed, Err(ClusterError::OpenStream { .. })),
        "{failed:?}"
    );
}

#[test]
fn an_address_without_its_peer_id_or_no_address_is_refused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _inside = runtime.enter();
    let (client, _) = domain_cluster::Cluster::start(loopback(Role::Client)).unwrap();
    let bare: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
    assert!(matches!(
        Managers::new(client.clone(), [bare]),
        Err(ClusterError::MissingPeerId { .. })
    ));
    assert!(matches!(
        Managers::new(client, Vec::<Multiaddr>::new()),
        Err(ClusterError::NoManager)
    ));
}
