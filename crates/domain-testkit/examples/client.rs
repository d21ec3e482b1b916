//! A program that uses a domain cluster through `domain-client`: connect, subscribe,
//! upload from a reader, download into a writer, roots checked on both ends.
//!
//! ```sh
//! cargo run -p domain-testkit --example client                        # its own cluster
//! cargo run -p domain-testkit --example client -- MANAGER_ADDR DOMAIN  # a running one
//! ```
//!
//! Without arguments it starts a manager and a node in this process, on loopback, with
//! their data in a temporary folder, so that it runs anywhere as it is.

mod common;

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use domain_client::client::{Client, ClientConfig};
use domain_cluster::identity::Identity;
use domain_merkle::root_of;
use domain_proto::domain_data::{Query, UpsertMetadata};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("client example: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let (_cluster, manager, domain) = common::cluster_from_args("client").await?;

    // 1. Connect: a peer of its own, bootstrapped from the manager.
    let client = Client::start(Identity::generate(), Some(manager), ClientConfig::default())
        .await
        .context("starting the client")?;
    println!("client {}", client.peer_id());

    // 2. Subscribe before uploading, so the new item shows up live.
    let query = Query {
        names: vec!["greeting".into()],
        ..Query::default()
    };
    let mut subscription = client.subscribe(&domain, &query).await?;

    // 3. Upload from any reader; the node's root is compared with ours before this returns.
    let content = b"hello, domain".repeat(10_000);
    let item = UpsertMetadata {
        name: "greeting".into(),
        data_type: "text/plain".into(),
        size: u32::try_from(content.len())?,
        is_new: true,
        ..UpsertMetadata::default()
    };
    let stored = client.upload_reader(&domain, item, &content[..]).await?;
    println!(
        "stored {} with root {}",
        stored.id,
        stored.hash.as_deref().unwrap_or("?")
    );

    // 4. The subscription sees it (after any greeting stored before).
    loop {
        let seen = subscription
            .next()
            .await
            .context("the subscription ended")??;
        println!("seen {} {:?} ({} bytes)", seen.id, seen.name, seen.size);
        if seen.id == stored.id {
            break;
        }
    }
    subscription.unsubscribe().await;

    // 5. Download into any writer; the content is checked against its root on the way.
    let mut copy = Vec::new();
    let metadata = client
        .download_to(&domain, &stored.id, &mut copy)
        .await?
        .context("the item is gone")?;
    if copy != content || metadata.hash != stored.hash {
        bail!("the downloaded item differs from the uploaded one");
    }
    println!(
        "downloaded {} bytes, root {} (computed here: {})",
        copy.len(),
        metadata.hash.as_deref().unwrap_or("?"),
        root_of(&copy)
    );
    client.shutdown().await?;
    Ok(())
}
