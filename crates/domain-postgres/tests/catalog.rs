//! What only a server database shows: one writer per schema, schemas apart, versions, the
//! login.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use domain_datastore::{Datastore, DatastoreError, LocalDatastore};
use domain_postgres::{LocalPostgres, PostgresCatalog, PostgresConfig, PostgresError};
use domain_proto::DomainId;
use domain_proto::domain_data::{Query, UpsertMetadata};

fn server() -> LocalPostgres {
    LocalPostgres::start().unwrap_or_else(|e| panic!("{e}"))
}

/// The PostgreSQL error inside a catalog's failure.
fn cause(error: &DatastoreError) -> &PostgresError {
    match error {
        DatastoreError::Db(cause) => cause
            .downcast_ref::<PostgresError>()
            .unwrap_or_else(|| panic!("not a PostgreSQL error: {cause}")),
        other => panic!("not a catalog error: {other:?}"),
    }
}

fn quick(config: PostgresConfig) -> PostgresConfig {
    config.patience(Duration::from_millis(300))
}

#[test]
fn a_second_writer_on_a_schema_is_refused_until_the_first_is_gone() {
    let server = server();
    let first = PostgresCatalog::connect(server.config("node").unwrap()).unwrap();
    let second = PostgresCatalog::connect(quick(server.config("node").unwrap())).unwrap_err();
    assert!(matches!(cause(&second), PostgresError::Locked { schema } if schema == "node"));
    // Another schema of the same database is another store.
    PostgresCatalog::connect(quick(server.config("other_node").unwrap())).unwrap();
    drop(first);
    PostgresCatalog::connect(server.config("node").unwrap()).unwrap();
}

#[test]
fn a_schema_from_a_newer_program_is_refused_and_left_alone() {
    let server = server();
    drop(PostgresCatalog::connect(server.config("node").unwrap()).unwrap());
    let mut admin: postgres::Config = server.url().parse().unwrap();
    let mut admin = admin
        .password(server.password())
        .connect(postgres::NoTls)
        .unwrap();
    admin
        .execute(
            "INSERT INTO node.schema_migrations (version) VALUES (999)",
            &[],
        )
        .unwrap();
    let refused = PostgresCatalog::connect(server.config("node").unwrap()).unwrap_err();
    assert!(matches!(
        cause(&refused),
        PostgresError::Newer { found: 999, known, .. } if *known == domain_postgres::migrations::latest()
    ));
    // Opening again does not migrate twice: the versions are as they were.
    let versions: Vec<i32> = admin
        .query(
            "SELECT version FROM node.schema_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut expected: Vec<i32> = domain_postgres::migrations::MIGRATIONS
        .iter()
        .map(|(version, _)| *version)
        .collect();
    expected.push(999);
    assert_eq!(versions, expected);
}

#[test]
fn a_wrong_password_is_a_clear_error_at_once() {
    let server = server();
    let config = PostgresConfig::new(&server.url())
        .unwrap()
        .password("not the password")
        .schema("node")
        .unwrap();
    let start = std::time::Instant::now();
    let refused = PostgresCatalog::connect(config).unwrap_err();
    assert!(
        matches!(cause(&refused), PostgresError::Connect(_)),
        "{refused:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a refused login is not waited out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_are_rows_an_operator_can_query() {
    let server = tokio::task::spawn_blocking(server).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = server.open_store(dir.path(), "node").await.unwrap();
    let domain = DomainId::new("site").unwrap();
    let item = UpsertMetadata {
        name: "scan-1".into(),
        data_type: "ply".into(),
        size: 4,
        is_new: true,
        properties: [("floor".to_owned(), "2".to_owned())].into(),
        ..Default::default()
    };
    let stored = store.put(&domain, item, &b"scan"[..]).await.unwrap();
    let url = server.url();
    let password = server.password();
    let row = tokio::task::spawn_blocking(move || {
        let mut config: postgres::Config = url.parse().unwrap();
        let mut client = config.password(password).connect(postgres::NoTls).unwrap();
        let row = client
            .query_one(
                "SELECT id, name, data_type, size, hash, properties->>'floor' FROM node.items \
                 WHERE domain = 'site' AND properties @> '{\"floor\": \"2\"}'",
                &[],
            )
            .unwrap();
        let id: String = row.get(0);
        let name: String = row.get(1);
        let data_type: String = row.get(2);
        let size: i64 = row.get(3);
        let hash: String = row.get(4);
        let floor: String = row.get(5);
        (id, name, data_type, size, hash, floor)
    })
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            stored.id.clone(),
            "scan-1".to_owned(),
            "ply".to_owned(),
            4,
            stored.hash.clone().unwrap(),
            "2".to_owned()
        )
    );
    assert_eq!(store.usage().await.unwrap()[0].items, 1);
    assert_eq!(
        store.query(&domain, &Query::default()).await.unwrap(),
        vec![stored]
    );
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_folder_of_postgres_is_refused_by_redb_and_keeps_its_blobs() {
    let server = tokio::task::spawn_blocking(server).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = server.open_store(dir.path(), "node").await.unwrap();
    let domain = DomainId::new("site").unwrap();
    let item = UpsertMetadata {
        name: "scan".into(),
        data_type: "ply".into(),
        size: 4,
        is_new: true,
        ..Default::default()
    };
    let stored = store.put(&domain, item, &b"scan"[..]).await.unwrap();
    drop(store);
    // `domain store ls --dir` on it, say: an empty redb catalog would find every blob unused.
    let refused = LocalDatastore::open(dir.path()).await.unwrap_err();
    assert!(
        matches!(&refused, DatastoreError::OtherCatalog { recorded, .. } if recorded == "postgres schema node"),
        "{refused:?}"
    );
    assert!(!dir.path().join("meta.redb").exists());
    let blob = dir
        .path()
        .join("blobs/site")
        .join(stored.hash.as_deref().unwrap());
    assert!(blob.exists(), "the blob stays");
}

#[test]
fn a_url_asking_for_tls_fails_rather_than_falling_back_to_plain_text() {
    let server = server();
    let config = PostgresConfig::new(&format!("{}?sslmode=require", server.url()))
        .unwrap()
        .password(server.password())
        .schema("node")
        .unwrap();
    let refused = PostgresCatalog::connect(quick(config)).unwrap_err();
    assert!(
        matches!(cause(&refused), PostgresError::Connect(_)),
        "{}",
        domain_proto::ErrorChain(&refused)
    );
}

#[test]
fn tls_to_the_database_verifies_its_certificate() {
    let server = LocalPostgres::start_with_tls().unwrap_or_else(|e| panic!("{e}"));
    let certificate = server.certificate().unwrap().to_owned();
    let config = || {
        PostgresConfig::new(&format!("{}?sslmode=require", server.url()))
            .unwrap()
            .password(server.password())
            .schema("node")
            .unwrap()
    };
    // Its self-signed certificate is not among Mozilla's roots: refused, not ignored.
    let refused = PostgresCatalog::connect(quick(config())).unwrap_err();
    assert!(
        matches!(cause(&refused), PostgresError::Connect(_)),
        "{}",
        domain_proto::ErrorChain(&refused)
    );
    // Trusted through the CA file: the catalog's session is encrypted.
    let catalog = PostgresCatalog::connect(config().ca_file(&certificate).unwrap()).unwrap();
    let mut admin: postgres::Config = server.url().parse().unwrap();
    let mut admin = admin
        .password(server.password())
        .connect(postgres::NoTls)
        .unwrap();
    let sessions: Vec<bool> = admin
        .query(
            "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = 'domain-node'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        !sessions.is_empty() && sessions.iter().all(|ssl| *ssl),
        "{sessions:?}"
    );
    drop(catalog);
}
