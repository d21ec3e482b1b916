//! The remote backend: the behaviour suite every `Datastore` passes, run against
//! `RemoteDatastore` on a cluster in this process (a manager and a node on loopback).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../domain-datastore/tests/suite/mod.rs"]
mod suite;

mod common;

use common::Cluster;
use domain_client::datastore::RemoteDatastore;

async fn fresh() -> (RemoteDatastore, Cluster) {
    let cluster = Cluster::start().await;
    (RemoteDatastore::new(cluster.client(None).await), cluster)
}

datastore_suite!(fresh, refusing replicas);
