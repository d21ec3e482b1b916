//! The remote backend: the behaviour suite every `Datastore` passes, run against
//! `RemoteDatastore` on a cluster in this process (a manager and a node on loopback).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../domain-datastore/tests/suite/mod.rs"]
mod suite;

use domain_client::datastore::RemoteDatastore;
use domain_testkit::LocalCluster;

async fn fresh() -> (RemoteDatastore, LocalCluster) {
    let cluster = LocalCluster::start().await.unwrap();
    (
        RemoteDatastore::new(cluster.client().await.unwrap()),
        cluster,
    )
}

datastore_suite!(fresh, refusing replicas);
