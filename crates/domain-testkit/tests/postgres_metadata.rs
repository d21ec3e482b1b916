//! A node started with its item metadata in PostgreSQL (what `domain-node run --metadata
//! postgres://…` does), on a real cluster in this process and a real server: clients store,
//! find by property and read items through it; the rows are in the database; a restarted
//! node serves them again; the password comes from a file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use domain_client::client::ClientConfig;
use domain_client::datastore::RemoteDatastore;
use domain_cluster::identity::Identity;
use domain_datastore::Datastore;
use domain_manager::ManagerConfig;
use domain_merkle::root_of;
use domain_node::{MetadataDatabase, NodeConfig, NodeDatastore, NodeSettings};
use domain_postgres::LocalPostgres;
use domain_proto::DomainId;
use domain_proto::domain_data::{Query, UpsertMetadata};
use domain_testkit::{manager_addr, start_client, start_manager, start_node};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_item_metadata_in_postgres_and_serves_it_after_a_restart() {
    let server = tokio::task::spawn_blocking(LocalPostgres::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("db-password");
    std::fs::write(&password_file, format!("{}\n", server.password())).unwrap();
    let manager = start_manager(ManagerConfig::new(dir.path().join("manager")))
        .await
        .unwrap();
    let manager_addr = manager_addr(&manager).unwrap();
    // As the flags give it: URL, schema and password file, checked by the settings.
    let settings = NodeSettings {
        manager: vec![manager_addr.clone()],
        data_dir: Some(dir.path().join("node")),
        metadata: Some(server.url()),
        metadata_schema: Some("node_a".into()),
        metadata_password_file: Some(password_file.clone()),
        ..NodeSettings::default()
    };
    let config: NodeConfig = settings.into_config().unwrap();
    assert_eq!(
        config.metadata,
        Some(MetadataDatabase {
            url: server.url(),
            schema: "node_a".into(),
            password_file: Some(password_file),
            ca_file: None,
        })
    );
    let node = start_node(config.clone()).await.unwrap();
    assert!(matches!(node.datastore(), NodeDatastore::Local(_)));

    let client = start_client(Identity::generate(), &manager_addr, ClientConfig::default())
        .await
        .unwrap();
    let store = RemoteDatastore::new(client);
    let domain = DomainId::new("site").unwrap();
    let mut stored = Vec::new();
    for (name, floor) in [("scan-1", "1"), ("scan-2", "2"), ("scan-3", "2")] {
        let bytes = format!("the bytes of {name}").repeat(1000);
        let item = UpsertMetadata {
            name: name.into(),
            data_type: "ply".into(),
            size: bytes.len() as u32,
            is_new: true,
            properties: [("floor".to_owned(), floor.to_owned())].into(),
            ..Default::default()
        };
        let item = store.put(&domain, item, bytes.as_bytes()).await.unwrap();
        assert_eq!(item.hash, Some(root_of(bytes.as_bytes()).to_string()));
        stored.push(item);
    }
    let second_floor = Query {
        properties: [("floor".to_owned(), "2".to_owned())].into(),
        ..Default::default()
    };
    let found = store.query(&domain, &second_floor).await.unwrap();
    // Answers come ordered by id, the ids are random.
    let mut expected = stored[1..].to_vec();
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(found, expected);

    // The rows are in the database, in the node's schema.
    let (url, password) = (server.url(), server.password());
    let rows: i64 = tokio::task::spawn_blocking(move || {
        let mut config: postgres::Config = url.parse().unwrap();
        let mut client = config.password(password).connect(postgres::NoTls).unwrap();
        client
            .query_one(
                "SELECT count(*) FROM node_a.items WHERE domain = 'site'",
                &[],
            )
            .unwrap()
            .get(0)
    })
    .await
    .unwrap();
    assert_eq!(rows, 3);

    // A restarted node (same folder, same schema) serves them again.
    node.shutdown().await.unwrap();
    let node = start_node(config).await.unwrap();
    let (metadata, mut content) = store.get(&domain, &stored[0].id).await.unwrap();
    assert_eq!(metadata, stored[0]);
    let mut bytes = Vec::new();
    content.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(bytes, "the bytes of scan-1".repeat(1000).into_bytes());
    node.shutdown().await.unwrap();
    drop(manager);
}
