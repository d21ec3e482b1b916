//! The datastore behaviour suite, unchanged, on a store whose catalog is PostgreSQL: a real
//! server per test (`LocalPostgres`), blobs in a temporary folder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../domain-datastore/tests/suite/mod.rs"]
mod suite;

use domain_datastore::LocalDatastore;
use domain_postgres::LocalPostgres;

/// What a test keeps alive beside its store: the server, and the blobs' folder.
type Keep = (LocalPostgres, tempfile::TempDir);

async fn fresh() -> (LocalDatastore, Keep) {
    let server = tokio::task::spawn_blocking(LocalPostgres::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let store = server.open_store(dir.path(), "store").await.unwrap();
    assert!(store.repair_report().is_clean());
    (store, (server, dir))
}

datastore_suite!(fresh);
