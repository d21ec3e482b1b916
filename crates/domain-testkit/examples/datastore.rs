//! One program body for local and remote data: `catalogue` is written once against the
//! `Datastore` trait and runs on a `LocalDatastore` in a folder, then on a
//! `RemoteDatastore` that reaches a cluster through `domain-client`.
//!
//! ```sh
//! cargo run -p domain-testkit --example datastore                        # its own cluster
//! cargo run -p domain-testkit --example datastore -- MANAGER_ADDR DOMAIN  # a running one
//! ```
//!
//! Without arguments it starts a manager and a node in this process, on loopback, with
//! their data in a temporary folder.

mod common;

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use domain_client::client::{Client, ClientConfig};
use domain_client::datastore::RemoteDatastore;
use domain_cluster::identity::Identity;
use domain_datastore::{Datastore, LocalDatastore};
use domain_merkle::root_of;
use domain_proto::DomainId;
use domain_proto::domain_data::{Query, UpsertMetadata};
use futures::StreamExt as _;
use tokio::io::AsyncReadExt as _;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("datastore example: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let (_cluster, manager, domain) = common::cluster_from_args("datastore").await?;

    let folder = tempfile::tempdir()?;
    let local = LocalDatastore::open(folder.path()).await?;
    println!("local:");
    catalogue(&local, &domain).await?;

    let client = Client::start(Identity::generate(), Some(manager), ClientConfig::default())
        .await
        .context("starting the client")?;
    let remote = RemoteDatastore::new(client.clone());
    println!("remote:");
    catalogue(&remote, &domain).await?;
    client.shutdown().await?;
    Ok(())
}

/// Stores two poses and a mesh, watches them arrive, finds the poses, reads one back
/// and checks its root, then removes the poses again.
async fn catalogue<D: Datastore>(store: &D, domain: &DomainId) -> anyhow::Result<()> {
    let mut arrivals = store.subscribe(domain, &Query::default())?;
    let mut stored = Vec::new();
    for (name, data_type, content) in [
        ("pose-1", "pose", b"{\"x\":1}".to_vec()),
        ("pose-2", "pose", b"{\"x\":2}".to_vec()),
        ("hall", "mesh", vec![7; 100_000]),
    ] {
        let item = UpsertMetadata {
            name: name.into(),
            data_type: data_type.into(),
            size: u32::try_from(content.len())?,
            is_new: true,
            ..UpsertMetadata::default()
        };
        let metadata = store.put(domain, item, content.as_slice()).await?;
        println!(
            "  stored  {} {:<6} root {}",
            metadata.id,
            name,
            metadata.hash.as_deref().unwrap_or("?")
        );
        stored.push((metadata, content));
    }
    for _ in &stored {
        let arrived = arrivals.next().await.context("the subscription ended")??;
        println!("  arrived {} {}", arrived.id, arrived.name);
    }

    let poses = Query {
        data_types: vec!["pose".into()],
        ..Query::default()
    };
    let found = store.query(domain, &poses).await?;
    println!("  {} poses", found.len());

    let (metadata, expected) = &stored[2];
    let (_, mut reader) = store.get(domain, &metadata.id).await?;
    let mut content = Vec::new();
    reader.read_to_end(&mut content).await?;
    if content != *expected || Some(root_of(&content).to_string()) != metadata.hash {
        bail!("{} came back different", metadata.name);
    }
    println!(
        "  read    {} ({} bytes, root checked)",
        metadata.id,
        content.len()
    );

    for pose in &found {
        store.delete(domain, &pose.id).await?;
    }
    println!(
        "  removed the poses; {} items left",
        store.query(domain, &Query::default()).await?.len()
    );
    Ok(())
}
