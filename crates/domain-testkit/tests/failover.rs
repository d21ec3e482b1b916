//! Managers that share their state in a real etcd (Debian's `etcd-server`, started on
//! loopback by `LocalEtcd`): one leads, the others stand by until it is gone, and the next
//! leader serves the state the first one wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use domain_etcd::LocalEtcd;
use domain_manager::{Manager, ManagerConfig};
use domain_node::NodeConfig;
use domain_testkit::{manager_addr, start_manager, start_node};

/// Far above the lease (2 s) and the time a standby takes to open the state.
const TAKEOVER: Duration = Duration::from_secs(30);

fn config(etcd: &LocalEtcd, dir: &Path) -> ManagerConfig {
    ManagerConfig {
        etcd: Some(etcd.config("/failover/")),
        leader_lease: Duration::from_secs(2),
        ..ManagerConfig::new(dir)
    }
}

async fn registered(manager: &Manager) -> Vec<String> {
    let mut nodes: Vec<String> = manager
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|node| node.id)
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_leads_once_the_leader_dies_and_serves_the_state_it_wrote() {
    let etcd = LocalEtcd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = start_manager(config(&etcd, &dir.path().join("first")))
        .await
        .unwrap();
    // Open mode (no domain, no admission): any node joins, and its registration is state.
    let node = start_node(
        NodeConfig::new(manager_addr(&first).unwrap(), dir.path().join("node")).unwrap(),
    )
    .await
    .unwrap();
    let joined = registered(&first).await;
    assert_eq!(joined.len(), 1);

    let standby = tokio::spawn(start_manager(config(&etcd, &dir.path().join("second"))));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !standby.is_finished(),
        "a second manager serves while the first leads"
    );

    // As a crash: no resignation, the lease runs out.
    drop(first);
    let second = tokio::time::timeout(TAKEOVER, standby)
        .await
        .expect("the standby leads once the leader's lease ran out")
        .unwrap()
        .unwrap();
    assert_eq!(registered(&second).await, joined);
    drop(node);
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_shuts_down_hands_over_at_once() {
    let etcd = LocalEtcd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = start_manager(config(&etcd, &dir.path().join("first")))
        .await
        .unwrap();
    let standby = tokio::spawn(start_manager(config(&etcd, &dir.path().join("second"))));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!standby.is_finished());
    first.shutdown().await.unwrap();
    // Resigned: the standby needs no lease to run out. Well within one lease here, but the
    // bound is generous: timings belong in benches.
    let second = tokio::time::timeout(TAKEOVER, standby)
        .await
        .expect("the standby leads once the leader resigned")
        .unwrap()
        .unwrap();
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_lease_is_gone_stops() {
    let etcd = LocalEtcd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start_manager(config(&etcd, &dir.path().join("first")))
        .await
        .unwrap();
    // etcd gone for longer than the lease: the leader cannot know it still leads.
    let mut etcd = etcd;
    etcd.kill();
    let stopped = tokio::time::timeout(TAKEOVER, leader.stopped())
        .await
        .expect("the leader stops once its lease ran out");
    // Whichever it notices first: the lease it cannot refresh, or a write etcd refuses.
    assert!(
        matches!(
            stopped,
            Err(domain_manager::ManagerError::LeadershipLost
                | domain_manager::ManagerError::Scheduler(_))
        ),
        "{stopped:?}"
    );
    let _ = leader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_restart_shorter_than_the_lease_costs_the_leader_nothing() {
    let mut etcd = LocalEtcd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str| ManagerConfig {
        // Far longer than a restart of a local etcd, so that the leader outlives it.
        leader_lease: Duration::from_secs(10),
        ..config(&etcd, &dir.path().join(name))
    };
    let leader = start_manager(config("first")).await.unwrap();
    let standby = tokio::spawn(start_manager(config("second")));
    let first = start_node(
        NodeConfig::new(manager_addr(&leader).unwrap(), dir.path().join("node-1")).unwrap(),
    )
    .await
    .unwrap();

    etcd.restart().await.unwrap();

    // The leader still leads: a node joins (a write of the registry), and both are there.
    let second = start_node(
        NodeConfig::new(manager_addr(&leader).unwrap(), dir.path().join("node-2")).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(registered(&leader).await.len(), 2);
    assert!(!standby.is_finished(), "the standby took over");
    // And what it wrote is in etcd: the standby finds it once the leader hands over.
    let joined = registered(&leader).await;
    drop((first, second));
    leader.shutdown().await.unwrap();
    let next = tokio::time::timeout(TAKEOVER, standby)
        .await
        .expect("the standby leads once the leader resigned")
        .unwrap()
        .unwrap();
    assert_eq!(registered(&next).await, joined);
    next.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_manager_says_who_leads_and_a_standby_names_the_leader() {
    use domain_cluster::Cluster;
    use domain_cluster::config::{ClusterConfig, Role};
    use domain_cluster::identity::Identity;

    let etcd = LocalEtcd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let leader = start_manager(config(&etcd, &dir.path().join("first")))
        .await
        .unwrap();
    // The standby's identity and port are known before it starts: it prints nothing while
    // it stands by.
    let standby_dir = dir.path().join("second");
    domain_auth::create_private_dir(&standby_dir).unwrap();
    let standby_config = config(&etcd, &standby_dir);
    let standby_id = Identity::load_or_create(standby_config.identity_path())
        .unwrap()
        .peer_id();
    let listen = domain_testkit::free_loopback_tcp().unwrap();
    let standby_addr = listen.clone().with_p2p(standby_id).unwrap();
    // Its own listen address: `start_manager` would pick a port.
    let standby = tokio::spawn(Manager::start(ManagerConfig {
        listen: vec![listen],
        ..standby_config
    }));

    let (client, _) =
        Cluster::start(ClusterConfig::loopback(Identity::generate(), Role::Client)).unwrap();
    client.dial(manager_addr(&leader).unwrap()).await.unwrap();
    let answer = client.leader(leader.peer_id()).await.unwrap();
    assert!(answer.leading);
    let leader_addrs: Vec<String> = leader
        .listen_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(answer.leader_addrs, leader_addrs);

    // The standby listens while it waits, and answers with the leader's addresses.
    let from_standby = tokio::time::timeout(TAKEOVER, async {
        loop {
            if client.dial(standby_addr.clone()).await.is_ok() {
                if let Ok(answer) = client.leader(standby_id).await {
                    break answer;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the standby answers /leader/v1");
    assert!(!from_standby.leading);
    assert_eq!(from_standby.leader_addrs, leader_addrs);
    assert!(!standby.is_finished());

    leader.shutdown().await.unwrap();
    let second = tokio::time::timeout(TAKEOVER, standby)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let answer = client.leader(second.peer_id()).await.unwrap();
    assert!(answer.leading, "the new leader says so once it serves");
    second.shutdown().await.unwrap();
    client.shutdown().await.unwrap();
}
