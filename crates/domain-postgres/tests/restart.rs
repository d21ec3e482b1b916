//! PostgreSQL restarting under a store's load: puts in flight wait for it or fail with a
//! clear error, nothing acknowledged is lost, nothing unacknowledged shows, subscribers see
//! each committed item once, and the store goes on without being opened again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use domain_datastore::{Datastore, DatastoreError, LocalDatastore};
use domain_merkle::root_of;
use domain_postgres::LocalPostgres;
use domain_proto::DomainId;
use domain_proto::domain_data::{Query, UpsertMetadata};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

/// Writers putting at once.
const WRITERS: usize = 8;

/// What one writer saw: acknowledged items (id → root), and the errors of failed puts.
#[derive(Default)]
struct Seen {
    acked: BTreeMap<String, String>,
    failed: Vec<String>,
    /// The longest a put took.
    longest: Duration,
}

async fn write_until(
    store: LocalDatastore,
    writer: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    let domain = DomainId::new("restart").unwrap();
    let mut seen = Seen::default();
    let mut n = 0_u32;
    while !*stop.borrow() {
        n += 1;
        let bytes = format!("writer {writer} item {n}").repeat(1 + (n as usize % 50));
        let item = UpsertMetadata {
            name: format!("w{writer}-{n}"),
            data_type: "restart".into(),
            size: bytes.len() as u32,
            is_new: true,
            ..Default::default()
        };
        let start = std::time::Instant::now();
        let put = store.put(&domain, item, bytes.as_bytes()).await;
        seen.longest = seen.longest.max(start.elapsed());
        match put {
            Ok(stored) => {
                assert_eq!(stored.hash, Some(root_of(bytes.as_bytes()).to_string()));
                seen.acked.insert(stored.id, stored.hash.unwrap());
            }
            Err(error @ DatastoreError::Db(_)) => {
                seen.failed
                    .push(domain_proto::ErrorChain(&error).to_string());
            }
            Err(other) => panic!("a put failed with an unexpected error: {other:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_loses_nothing_and_the_store_goes_on() {
    let mut server = tokio::task::spawn_blocking(LocalPostgres::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let store = server.open_store(dir.path(), "store").await.unwrap();
    let domain = DomainId::new("restart").unwrap();
    let mut subscription = store.subscribe(&domain, &Query::default()).unwrap();
    let published = tokio::spawn(async move {
        let mut ids = Vec::new();
        while let Some(item) = subscription.next().await {
            ids.push(item.unwrap().id);
        }
        ids
    });

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write_until(store.clone(), w, stopped.clone())))
        .collect();
    // Load first, then the server goes down hard and comes back on the same data.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.crash();
        std::thread::sleep(Duration::from_millis(500));
        server.start_again().unwrap_or_else(|e| panic!("{e}"));
        server
    })
    .await
    .unwrap();
    // And load after it is back, on the same store.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.send(true).unwrap();
    let mut acked = BTreeMap::new();
    let mut failed = Vec::new();
    let mut longest = Duration::ZERO;
    for writer in writers {
        let seen = writer.await.unwrap();
        acked.extend(seen.acked);
        failed.extend(seen.failed);
        longest = longest.max(seen.longest);
    }
    // The server was down for half a second while puts ran: some waited it out (or
    // failed), else the restart missed the load and the test shows nothing.
    assert!(
        longest >= Duration::from_millis(400) || !failed.is_empty(),
        "no put met the restart (longest {longest:?})"
    );
    let after = store
        .put(
            &domain,
            UpsertMetadata {
                name: "after".into(),
                data_type: "restart".into(),
                size: 5,
                is_new: true,
                ..Default::default()
            },
            &b"after"[..],
        )
        .await
        .expect("a put once the database is back");
    acked.insert(after.id.clone(), after.hash.clone().unwrap());
    eprintln!(
        "{} puts acknowledged, {} failed ({:?}), the longest took {longest:?}",
        acked.len(),
        failed.len(),
        failed.first()
    );

    // Exactly the acknowledged items, each whole.
    let listed = store.query(&domain, &Query::default()).await.unwrap();
    let listed_ids: BTreeSet<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    let acked_ids: BTreeSet<&str> = acked.keys().map(String::as_str).collect();
    assert_eq!(
        listed_ids, acked_ids,
        "listed items differ from acknowledged puts"
    );
    for item in &listed {
        let (_, mut content) = store.get(&domain, &item.id).await.unwrap();
        let mut bytes = Vec::new();
        content.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(Some(root_of(&bytes).to_string()), item.hash);
        assert_eq!(acked.get(&item.id), item.hash.as_ref());
    }
    // Every committed item published once.
    drop(store);
    let published = published.await.unwrap();
    let once: BTreeSet<&str> = published.iter().map(String::as_str).collect();
    assert_eq!(once.len(), published.len(), "an item was published twice");
    assert_eq!(
        once, acked_ids,
        "published items differ from acknowledged puts"
    );
    drop(server);
}
