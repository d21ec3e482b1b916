//! Crash consistency of the local store with its redb catalog: see `crash/mod.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "crash/mod.rs"]
mod crash;

use std::path::PathBuf;

use domain_datastore::LocalDatastore;

async fn open(dir: PathBuf) -> LocalDatastore {
    LocalDatastore::open(&dir).await.unwrap()
}

#[test]
#[ignore = "the child process of crash_kills_leave_every_acknowledged_item_intact"]
fn crash_child() {
    crash::child(open);
}

#[test]
fn crash_kills_leave_every_acknowledged_item_intact() {
    crash::cycles(open, &[]);
}
