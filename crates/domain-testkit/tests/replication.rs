//! Replication on a real cluster in this process: a manager whose domain keeps two copies
//! of each item, three nodes, a client that uploads each item once. Every item ends up on
//! two distinct nodes; with one of them gone, every item still downloads and its root
//! checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use domain_client::client::{Client, ClientConfig, Upload};
use domain_client::datastore::RemoteDatastore;
use domain_cluster::identity::Identity;
use domain_datastore::Datastore as _;
use domain_manager::{DomainSpec, ManagerConfig};
use domain_merkle::root_of;
use domain_node::{Node, NodeConfig};
use domain_proto::DomainId;
use domain_proto::domain_data::{Query, UpsertMetadata};
use domain_testkit::{admit, manager_addr, start_manager, start_node};

const WAIT: Duration = Duration::from_secs(90);

fn client_config() -> ClientConfig {
    ClientConfig {
        connect_patience: Duration::from_secs(2),
        ..ClientConfig::default()
    }
}

/// Where each item is: the indexes of the nodes holding it, by id.
async fn holders(nodes: &[Node], domain: &DomainId) -> BTreeMap<String, Vec<usize>> {
    let mut held: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for item in node
            .datastore()
            .query(domain, &Query::default())
            .await
            .unwrap()
        {
            held.entry(item.id).or_default().push(i);
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_copies_every_item_survives_the_loss_of_a_node() {
    // Logs show with RUST_LOG set (e.g. RUST_LOG=domain_node=debug).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let client_identity = Identity::generate();
    let domain = DomainId::new("lab").unwrap();
    let mut config = ManagerConfig::new(dir.path().join("manager"));
    config.domains.push(DomainSpec {
        id: domain.to_string(),
        allow: vec![client_identity.peer_id().to_string()],
        replication: Some(2),
    });
    let manager = start_manager(config).await.unwrap();
    let manager_addr = manager_addr(&manager).unwrap();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        // Admitted by the operator before it first joins.
        admit(&manager, &dir.path().join(name)).unwrap();
        let mut config = NodeConfig::new(manager_addr.clone(), dir.path().join(name)).unwrap();
        config.join_interval = Duration::from_millis(500);
        nodes.push(start_node(config).await.unwrap());
    }

    // Uploads one at a time, so that they spread over the nodes; the sizes span chunks.
    let client = Client::start(client_identity, Some(manager_addr.clone()), client_config())
        .await
        .unwrap();
    let mut uploaded = BTreeMap::new();
    for (i, size) in [0, 1, 7168, 7169, 300_000, 2_000_000]
        .into_iter()
        .enumerate()
    {
        let bytes: Vec<u8> = (0..size).map(|b| (b % 251) as u8 ^ i as u8).collect();
        let name = format!("item-{i}");
        let stored = client
            .upload(&domain, &[Upload::bytes(bytes.clone(), &name, "bin")])
            .await
            .unwrap();
        uploaded.insert(stored[0].id.clone(), (stored[0].clone(), bytes));
    }

    // Each item on exactly two distinct nodes, under its id, with its root.
    let spread = tokio::time::timeout(WAIT, async {
        loop {
            let held = holders(&nodes, &domain).await;
            if held.len() == uploaded.len() && held.values().all(|on| on.len() == 2) {
                return held;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("every item copied to a second node");
    for node in &nodes {
        for copy in node
            .datastore()
            .query(&domain, &Query::default())
            .await
            .unwrap()
        {
            assert_eq!(copy, uploaded[&copy.id].0, "a copy is the item itself");
        }
    }

    // An upsert replaces every copy: the new version on two nodes, the old one on none,
    // wherever its copies were.
    let (id, (old, _)) = uploaded.iter().nth(4).unwrap();
    let (id, old) = (id.clone(), old.clone());
    let new_bytes = vec![42u8; 50_000];
    let item = UpsertMetadata {
        name: old.name.clone(),
        data_type: old.data_type.clone(),
        size: new_bytes.len() as u32,
        is_new: false,
        id: id.clone(),
        ..UpsertMetadata::default()
    };
    let store = RemoteDatastore::new(client.clone());
    let replaced = store
        .put(&domain, item, new_bytes.as_slice())
        .await
        .unwrap();
    assert_eq!(replaced.id, id);
    tokio::time::timeout(WAIT, async {
        loop {
            let mut versions = Vec::new();
            for node in &nodes {
                if let Ok(metadata) = node.datastore().get(&domain, &id).await {
                    versions.push(metadata.0.hash);
                }
            }
            if versions.len() == 2 && versions.iter().all(|hash| *hash == replaced.hash) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the new version on two nodes and the old one gone");
    uploaded.insert(id, (replaced, new_bytes));

    // The node holding the most items goes.
    let mut counts = [0; 3];
    for on in spread.values() {
        for &i in on {
            counts[i] += 1;
        }
    }
    let lost = (0..3).max_by_key(|&i| counts[i]).unwrap();
    let lost_node = nodes.remove(lost);
    lost_node.cluster().shutdown().await.unwrap();

    let ids: Vec<String> = uploaded.keys().cloned().collect();
    let out = dir.path().join("copies");
    let downloads = client.download(&domain, &ids, &out).await.unwrap();
    assert!(downloads.missing.is_empty(), "{:?}", downloads.missing);
    assert_eq!(downloads.items.len(), uploaded.len());
    for item in &downloads.items {
        let (stored, bytes) = &uploaded[&item.metadata.id];
        let content = std::fs::read(&item.path).unwrap();
        assert!(content == *bytes, "content of {}", stored.name);
        assert_eq!(item.metadata.hash, Some(root_of(&content).to_string()));
    }
    client.shutdown().await.unwrap();
}
