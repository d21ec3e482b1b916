//! Replication that repairs itself, on a real cluster in this process: the leader keeps
//! every item at exactly the copies its domain asks for when a holder is gone for good,
//! comes back, restarts, or the domain asks for more or fewer copies; an item a client
//! deleted while a holder was away does not come back with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use domain_client::client::{Client, ClientConfig, ClientError, Upload};
use domain_cluster::Multiaddr;
use domain_cluster::identity::Identity;
use domain_datastore::Datastore as _;
use domain_manager::{DomainSpec, Manager, ManagerConfig, RepairConfig};
use domain_node::{Node, NodeConfig};
use domain_proto::DomainId;
use domain_proto::domain_data::Query;
use domain_testkit::{admit, manager_addr, start_manager, start_node};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(90);
const DOMAIN: &str = "lab";

/// Sizes across chunk boundaries, one item each.
const SIZES: [usize; 5] = [0, 1, 7168, 7169, 300_000];

fn init_logs() {
    // Logs show with RUST_LOG set (e.g. RUST_LOG=domain_manager=debug).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A manager whose domain keeps `copies` of each item, quick to notice a node gone.
fn manager_config(
    dir: &Path,
    client: &Identity,
    copies: u32,
    node_timeout: Duration,
) -> ManagerConfig {
    let mut config = ManagerConfig::new(dir.join("manager"));
    config.domains.push(DomainSpec {
        id: DOMAIN.to_owned(),
        allow: vec![client.peer_id().to_string()],
        replication: Some(copies),
    });
    config.tick_interval = Duration::from_millis(200);
    config.node_timeout = node_timeout;
    config.repair = RepairConfig {
        grace: Duration::from_secs(1),
        interval: Duration::from_secs(3600),
    };
    config
}

fn node_config(manager: &Multiaddr, dir: &Path) -> NodeConfig {
    let mut config = NodeConfig::new(manager.clone(), dir).unwrap();
    config.join_interval = Duration::from_millis(300);
    config
}

/// Starts node `name` under `dir`, admitted first.
async fn node(manager: &Manager, addr: &Multiaddr, dir: &Path, name: &str) -> (Node, PathBuf) {
    let data = dir.join(name);
    admit(manager, &data).unwrap();
    (start_node(node_config(addr, &data)).await.unwrap(), data)
}

async fn client(identity: Identity, manager: &Multiaddr) -> Client {
    let config = ClientConfig {
        connect_patience: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    Client::start(identity, Some(manager.clone()), config)
        .await
        .unwrap()
}

/// Uploads one item per size, one at a time (so that they spread): id → root.
async fn upload(client: &Client) -> BTreeMap<String, Option<String>> {
    let domain = DomainId::new(DOMAIN).unwrap();
    let mut uploaded = BTreeMap::new();
    for (i, size) in SIZES.into_iter().enumerate() {
        let bytes: Vec<u8> = (0..size).map(|b| (b % 251) as u8 ^ i as u8).collect();
        let stored = client
            .upload(
                &domain,
                &[Upload::bytes(bytes, &format!("item-{i}"), "bin")],
            )
            .await
            .unwrap();
        uploaded.insert(stored[0].id.clone(), stored[0].hash.clone());
    }
    uploaded
}

/// Where each item is: id → the indexes of the running nodes holding it, each copy's
/// root checked against `roots`.
async fn placement(
    nodes: &[Option<Node>],
    roots: &BTreeMap<String, Option<String>>,
) -> BTreeMap<String, BTreeSet<usize>> {
    let domain = DomainId::new(DOMAIN).unwrap();
    let mut held: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let Some(node) = node else { continue };
        for item in node
            .datastore()
            .query(&domain, &Query::default())
            .await
            .unwrap()
        {
            assert_eq!(
                roots.get(&item.id),
                Some(&item.hash),
                "a copy is the item itself"
            );
            held.entry(item.id).or_default().insert(i);
        }
    }
    held
}

/// Waits until every item of `expected` is on exactly `copies` running nodes and no
/// other item is anywhere; the placement then.
async fn settled(
    nodes: &[Option<Node>],
    roots: &BTreeMap<String, Option<String>>,
    expected: &BTreeSet<String>,
    copies: usize,
) -> BTreeMap<String, BTreeSet<usize>> {
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            let held = placement(nodes, roots).await;
            let ids: BTreeSet<String> = held.keys().cloned().collect();
            if ids == *expected && held.values().all(|on| on.len() == copies) {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    match waited {
        Ok(held) => held,
        Err(_) => panic!(
            "not every item on exactly {copies} nodes: {:?}",
            placement(nodes, roots).await
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_node_gone_for_good_are_made_again_and_dropped_once_it_is_back() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::generate();
    let config = manager_config(dir.path(), &identity, 2, Duration::from_secs(2));
    let manager = start_manager(config).await.unwrap();
    let addr = manager_addr(&manager).unwrap();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for name in ["a", "b", "c"] {
        let (node, data) = node(&manager, &addr, dir.path(), name).await;
        nodes.push(Some(node));
        dirs.push(data);
    }
    let client = client(identity, &addr).await;
    let roots = upload(&client).await;
    let all: BTreeSet<String> = roots.keys().cloned().collect();
    let spread = settled(&nodes, &roots, &all, 2).await;

    // The node holding the most items goes, for longer than its grace.
    let lost = (0..3)
        .max_by_key(|i| spread.values().filter(|on| on.contains(i)).count())
        .unwrap();
    nodes[lost].take().unwrap().shutdown().await.unwrap();
    settled(&nodes, &roots, &all, 2).await;

    // Deleted while it is away: its copy must not come back with it.
    let domain = DomainId::new(DOMAIN).unwrap();
    let deleted = spread
        .iter()
        .find(|(_, on)| on.contains(&lost))
        .map(|(id, _)| id.clone())
        .unwrap();
    let answer = client
        .delete(&domain, std::slice::from_ref(&deleted))
        .await
        .unwrap();
    assert_eq!(answer.deleted, vec![deleted.clone()]);

    // Back with its old copies: one too many of each, and the deleted item, which no
    // listing shows from the moment it is registered again.
    nodes[lost] = Some(start_node(node_config(&addr, &dirs[lost])).await.unwrap());
    let listed = client.list(&domain, &Query::default()).await.unwrap();
    assert!(
        listed.iter().all(|item| item.id != deleted),
        "a node back from away lists an item deleted meanwhile"
    );
    let mut kept = all.clone();
    kept.remove(&deleted);
    settled(&nodes, &roots, &kept, 2).await;
    client.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_restarts_has_the_copies_it_owed_made() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::generate();
    // Nodes stay registered across the restart: only the node's own word tells.
    let config = manager_config(dir.path(), &identity, 2, Duration::from_secs(60));
    let manager = start_manager(config).await.unwrap();
    let addr = manager_addr(&manager).unwrap();
    let (a, a_dir) = node(&manager, &addr, dir.path(), "a").await;
    let client = client(identity, &addr).await;
    // Alone, `a` cannot place the second copies: they are owed.
    let roots = upload(&client).await;
    let all: BTreeSet<String> = roots.keys().cloned().collect();
    let mut nodes = vec![Some(a)];
    settled(&nodes, &roots, &all, 1).await;
    let (b, _) = node(&manager, &addr, dir.path(), "b").await;
    nodes.push(Some(b));

    nodes[0].take().unwrap().shutdown().await.unwrap();
    nodes[0] = Some(start_node(node_config(&addr, &a_dir)).await.unwrap());
    let held = settled(&nodes, &roots, &all, 2).await;
    assert!(held.values().all(|on| on.len() == 2));
    client.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_domain_asks_for_more_or_fewer_copies_its_items_follow() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::generate();
    // The manager comes back on the same address, where the nodes look for it.
    let listen = domain_testkit::free_loopback_tcp().unwrap();
    let start = |copies: u32| {
        let mut config = manager_config(dir.path(), &identity, copies, Duration::from_secs(60));
        config.listen = vec![listen.clone()];
        Manager::start(config)
    };
    let mut manager = start(2).await.unwrap();
    let addr = manager_addr(&manager).unwrap();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(Some(node(&manager, &addr, dir.path(), name).await.0));
    }
    let client = client(identity.clone(), &addr).await;
    let roots = upload(&client).await;
    client.shutdown().await.unwrap();
    let all: BTreeSet<String> = roots.keys().cloned().collect();
    settled(&nodes, &roots, &all, 2).await;

    for copies in [3, 1] {
        manager.shutdown().await.unwrap();
        manager = start(copies).await.unwrap();
        settled(&nodes, &roots, &all, copies as usize).await;
    }
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_is_remembered_across_a_manager_restart() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::generate();
    let listen = domain_testkit::free_loopback_tcp().unwrap();
    let start = || {
        let mut config = manager_config(dir.path(), &identity, 2, Duration::from_secs(2));
        config.listen = vec![listen.clone()];
        Manager::start(config)
    };
    let mut manager = start().await.unwrap();
    let addr = manager_addr(&manager).unwrap();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for name in ["a", "b", "c"] {
        let (node, data) = node(&manager, &addr, dir.path(), name).await;
        nodes.push(Some(node));
        dirs.push(data);
    }
    let client = client(identity.clone(), &addr).await;
    let roots = upload(&client).await;
    let all: BTreeSet<String> = roots.keys().cloned().collect();
    let spread = settled(&nodes, &roots, &all, 2).await;
    let (deleted, on) = spread
        .iter()
        .next()
        .map(|(id, on)| (id.clone(), on.clone()))
        .unwrap();
    let away = *on.first().unwrap();
    nodes[away].take().unwrap().shutdown().await.unwrap();
    settled(&nodes, &roots, &all, 2).await;
    let domain = DomainId::new(DOMAIN).unwrap();
    client
        .delete(&domain, std::slice::from_ref(&deleted))
        .await
        .unwrap();
    client.shutdown().await.unwrap();

    // A new run of the manager, then the node that still holds the deleted item.
    manager.shutdown().await.unwrap();
    manager = start().await.unwrap();
    nodes[away] = Some(start_node(node_config(&addr, &dirs[away])).await.unwrap());
    let mut kept = all.clone();
    kept.remove(&deleted);
    settled(&nodes, &roots, &kept, 2).await;
    manager.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_the_delete_did_not_reach_loses_the_item_soon_after() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::generate();
    // Both holders stay registered throughout, and no audit is due: only the removal
    // that follows the delete that failed there can take the copy away.
    let mut config = manager_config(dir.path(), &identity, 2, Duration::from_secs(60));
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let manager = start_manager(config).await.unwrap();
    let addr = manager_addr(&manager).unwrap();
    let (a, _) = node(&manager, &addr, dir.path(), "a").await;
    let (b, _) = node(&manager, &addr, dir.path(), "b").await;
    let nodes = vec![Some(a), Some(b)];

    let uploader = client(identity.clone(), &addr).await;
    let roots = upload(&uploader).await;
    uploader.shutdown().await.unwrap();
    let all: BTreeSet<String> = roots.keys().cloned().collect();
    settled(&nodes, &roots, &all, 2).await;
    // The audit a new leader makes found nothing to do: none is due from now on.
    let metrics = manager.metrics_addr().unwrap();
    tokio::time::timeout(WAIT, async {
        while clean_audits(metrics).await < 1.0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the first audit ends");

    // `b` refuses the client that deletes (directly and through the relay), and stays
    // registered with the manager.
    let deleter = client(identity, &addr).await;
    let b = nodes[1].as_ref().unwrap();
    b.cluster()
        .ban(deleter.peer_id(), Duration::from_secs(3600))
        .await
        .unwrap();
    let deleted = all.first().unwrap().clone();
    let domain = DomainId::new(DOMAIN).unwrap();
    let error = deleter
        .delete(&domain, std::slice::from_ref(&deleted))
        .await
        .unwrap_err();
    match error {
        ClientError::DeleteIncomplete {
            answered,
            unanswered,
        } => {
            assert_eq!(answered.deleted, vec![deleted.clone()], "`a` answered");
            assert_eq!(unanswered, vec![b.peer_id()]);
        }
        other => panic!("a delete that missed a holder is incomplete, not {other}"),
    }
    let mut kept = all.clone();
    kept.remove(&deleted);
    settled(&nodes, &roots, &kept, 2).await;
    deleter.shutdown().await.unwrap();
}

/// The manager's audits that found nothing to do, from its metrics endpoint.
async fn clean_audits(metrics: std::net::SocketAddr) -> f64 {
    let mut stream = tokio::net::TcpStream::connect(metrics).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|line| {
            line.strip_prefix("domain_manager_repair_audits_total{outcome=\"clean\"} ")
        })
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}
