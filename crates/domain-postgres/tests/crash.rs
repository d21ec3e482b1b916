//! Crash consistency of a local store whose catalog is PostgreSQL: the datastore's crash
//! test (`crash/mod.rs`, SIGKILL of a writing child, then every acknowledged item intact
//! and nothing partial or stray), on a real server that outlives the children.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../domain-datastore/tests/crash/mod.rs"]
mod crash;

use std::path::PathBuf;
use std::sync::Arc;

use domain_datastore::{LocalDatastore, LocalOptions};
use domain_postgres::{LocalPostgres, PostgresCatalog, PostgresConfig};

const URL_VAR: &str = "CRASH_PG_URL";
const PASSWORD_VAR: &str = "CRASH_PG_PASSWORD";

async fn open(dir: PathBuf, url: String, password: String) -> LocalDatastore {
    let config = PostgresConfig::new(&url)
        .unwrap()
        .password(&password)
        .schema("crash")
        .unwrap();
    let catalog = tokio::task::spawn_blocking(move || PostgresCatalog::connect(config))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{}", domain_proto::ErrorChain(&e)));
    LocalDatastore::open_with_catalog(&dir, LocalOptions::default(), Arc::new(catalog))
        .await
        .unwrap()
}

#[test]
#[ignore = "the child process of crash_kills_leave_every_acknowledged_item_intact"]
fn crash_child() {
    crash::child(|dir| {
        let var = |name| std::env::var(name).unwrap_or_default();
        open(dir, var(URL_VAR), var(PASSWORD_VAR))
    });
}

#[test]
fn crash_kills_leave_every_acknowledged_item_intact() {
    let server = LocalPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    let (url, password) = (server.url(), server.password().to_owned());
    let env = [
        (URL_VAR.to_owned(), url.clone()),
        (PASSWORD_VAR.to_owned(), password.clone()),
    ];
    crash::cycles(|dir| open(dir, url.clone(), password.clone()), &env);
}
