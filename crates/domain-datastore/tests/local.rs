//! The local backend: the shared behaviour suite, then what only files and redb can show.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "suite/mod.rs"]
mod suite;

use std::path::{Path, PathBuf};

use domain_datastore::{
    Datastore, DatastoreError, LocalContent, LocalDatastore, LocalOptions, Subscription,
    SubscriptionError,
};
use domain_merkle::{Root, root_of};
use domain_proto::DomainId;
use domain_proto::domain_data::{Metadata, Query, UpsertMetadata};
use futures::StreamExt;
use proptest::prelude::*;
use suite::{domain, pattern, put_bytes, read_content, upsert};
use tokio::io::AsyncRead;

async fn fresh() -> (LocalDatastore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDatastore::open(dir.path()).await.unwrap();
    assert!(store.repair_report().is_clean());
    (store, dir)
}

datastore_suite!(fresh);

/// Every file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn blob_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.starts_with("blobs"))
        .collect()
}

#[tokio::test]
async fn identical_content_is_stored_once_and_released_with_its_last_item() {
    let (store, dir) = fresh().await;
    let d = domain("d");
    let bytes = pattern(100_000, 9);
    let a = put_bytes(&store, &d, "a", "t", &bytes).await;
    let b = put_bytes(&store, &d, "b", "u", &bytes).await;
    let root: Root = a.hash.as_deref().unwrap().parse().unwrap();
    assert_eq!(
        blob_files(dir.path()),
        vec![PathBuf::from("blobs/d").join(root.to_string())]
    );
    store.delete(&d, &a.id).await.unwrap();
    assert!(store.blob_path(&d, &root).exists());
    store.delete(&d, &b.id).await.unwrap();
    assert!(blob_files(dir.path()).is_empty());
}

#[tokio::test]
async fn replacing_an_item_releases_its_old_content() {
    let (store, dir) = fresh().await;
    let d = domain("d");
    let old = put_bytes(&store, &d, "a", "t", b"old").await;
    let mut item = upsert("a", "t", 3);
    item.is_new = false;
    item.id = old.id.clone();
    let new = store.put(&d, item, &b"new"[..]).await.unwrap();
    assert_eq!(
        blob_files(dir.path()),
        vec![PathBuf::from("blobs/d").join(new.hash.unwrap())]
    );

    // Replacing with the same content keeps the one blob.
    let mut item = upsert("a2", "t", 3);
    item.is_new = false;
    item.id = old.id.clone();
    store.put(&d, item, &b"new"[..]).await.unwrap();
    assert_eq!(blob_files(dir.path()).len(), 1);
    let (_, content) = read_content(&store, &d, &old.id).await;
    assert_eq!(content, b"new");
}

#[tokio::test]
async fn refused_puts_leave_no_file_behind() {
    let (store, dir) = fresh().await;
    let d = domain("d");
    let bytes = pattern(2_000_000, 0);
    store
        .put(&d, upsert("short", "t", 2_000_001), bytes.as_slice())
        .await
        .unwrap_err();
    store
        .put(&d, upsert("long", "t", 1_999_999), bytes.as_slice())
        .await
        .unwrap_err();
    assert_eq!(
        files_under(dir.path()),
        vec![PathBuf::from("catalog"), PathBuf::from("meta.redb")]
    );
}

#[tokio::test]
async fn names_types_and_properties_never_become_paths() {
    let (store, dir) = fresh().await;
    let d = domain("d");
    let mut item = upsert("../../escaped", "/tmp/x", 4);
    item.properties.insert("../k".into(), "/etc/passwd".into());
    let stored = store.put(&d, item, &b"data"[..]).await.unwrap();
    let expected = vec![PathBuf::from("blobs/d").join(stored.hash.unwrap())];
    assert_eq!(blob_files(dir.path()), expected);
    assert!(!dir.path().parent().unwrap().join("escaped").exists());
}

#[tokio::test]
async fn items_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let d = domain("d");
    let bytes = pattern(1_500_000, 4);
    let stored = {
        let store = LocalDatastore::open(dir.path()).await.unwrap();
        put_bytes(&store, &d, "kept", "t", &bytes).await
    };
    let store = LocalDatastore::open(dir.path()).await.unwrap();
    assert!(
        store.repair_report().is_clean(),
        "{:?}",
        store.repair_report()
    );
    let (got, content) = read_content(&store, &d, &stored.id).await;
    assert_eq!(got, stored);
    assert!(content == bytes);
}

#[tokio::test]
async fn a_second_open_of_the_same_folder_is_refused_while_the_first_is_open() {
    let (_store, dir) = fresh().await;
    let err = LocalDatastore::open(dir.path()).await.unwrap_err();
    assert!(matches!(err, DatastoreError::Db(_)), "{err:?}");
}

#[tokio::test]
async fn open_removes_temp_files_and_orphan_blobs_and_items_without_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let d = domain("d");
    let (kept, lost) = {
        let store = LocalDatastore::open(dir.path()).await.unwrap();
        let kept = put_bytes(&store, &d, "kept", "t", b"kept").await;
        let lost = put_bytes(&store, &d, "lost", "t", b"lost").await;
        (kept, lost)
    };
    let truncated = put_truncated_blob(dir.path()).await;
    let blobs = dir.path().join("blobs/d");
    // What a crash (or a careless hand) can leave behind.
    std::fs::write(dir.path().join("tmp/upload.part"), b"half an upload").unwrap();
    let orphan = blobs.join(root_of(b"orphan").to_string());
    std::fs::write(&orphan, b"orphan").unwrap();
    std::fs::remove_file(blobs.join(lost.hash.as_deref().unwrap())).unwrap();

    let store = LocalDatastore::open(dir.path()).await.unwrap();
    let report = store.repair_report().clone();
    assert_eq!(
        report.temp_files_removed,
        vec![dir.path().join("tmp/upload.part")]
    );
    let mut orphans = report.orphan_blobs_removed.clone();
    orphans.sort();
    let mut expected = vec![orphan, truncated.1];
    expected.sort();
    assert_eq!(orphans, expected);
    let mut without = report.items_without_blob.clone();
    without.sort();
    let mut expected = vec![(d.clone(), lost.id.clone()), (domain("e"), truncated.0)];
    expected.sort();
    assert_eq!(without, expected);

    assert_eq!(
        store.query(&d, &Query::default()).await.unwrap(),
        vec![kept.clone()]
    );
    assert!(matches!(
        store.get(&d, &lost.id).await,
        Err(DatastoreError::NotFound { .. })
    ));
    drop(store);
    let store = LocalDatastore::open(dir.path()).await.unwrap();
    assert!(
        store.repair_report().is_clean(),
        "{:?}",
        store.repair_report()
    );
}

/// Stores an item in domain `e`, then cuts its blob short. Returns its id and blob path.
async fn put_truncated_blob(dir: &Path) -> (String, PathBuf) {
    // The store in `dir` is closed; open it briefly.
    let store = LocalDatastore::open(dir).await.unwrap();
    let e = domain("e");
    let item = put_bytes(&store, &e, "cut", "t", &pattern(10_000, 2)).await;
    let path = store.blob_path(&e, &item.hash.as_deref().unwrap().parse().unwrap());
    drop(store);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(5_000).unwrap();
    (item.id, path)
}

#[tokio::test]
async fn a_slow_subscriber_is_dropped_with_an_error_and_writers_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocalOptions {
        subscription_capacity: 2,
        ..LocalOptions::default()
    };
    let store = LocalDatastore::open_with(dir.path(), options)
        .await
        .unwrap();
    let d = domain("d");
    let mut slow = store.subscribe(&d, &Query::default()).unwrap();
    let mut written = Vec::new();
    for i in 0..5_u8 {
        written.push(put_bytes(&store, &d, &format!("i{i}"), "t", &[i]).await);
    }
    assert_eq!(slow.next().await.unwrap().unwrap(), written[0]);
    assert_eq!(slow.next().await.unwrap().unwrap(), written[1]);
    assert_eq!(
        slow.next().await,
        Some(Err(SubscriptionError::Lagged { capacity: 2 }))
    );
    assert_eq!(slow.next().await, None);
}

#[tokio::test]
async fn subscriptions_end_when_the_store_is_dropped() {
    let (store, _dir) = fresh().await;
    let mut sub = store.subscribe(&domain("d"), &Query::default()).unwrap();
    drop(store);
    assert_eq!(sub.next().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_from_many_tasks_share_commits_safely() {
    let (store, dir) = fresh().await;
    let d = domain("d");
    let tasks: Vec<_> = (0..64_u32)
        .map(|i| {
            let (store, d) = (store.clone(), d.clone());
            tokio::spawn(async move {
                let bytes = pattern(1000 + (i as usize % 4), (i % 4) as u8);
                let stored = put_bytes(&store, &d, &format!("n{i}"), "t", &bytes).await;
                if i % 2 == 0 {
                    store.delete(&d, &stored.id).await.unwrap();
                    None
                } else {
                    Some((stored, bytes))
                }
            })
        })
        .collect();
    let mut kept = Vec::new();
    for task in tasks {
        kept.extend(task.await.unwrap());
    }
    assert_eq!(
        store.query(&d, &Query::default()).await.unwrap().len(),
        kept.len()
    );
    for (stored, bytes) in &kept {
        let (_, content) = read_content(&store, &d, &stored.id).await;
        assert_eq!(&content, bytes);
    }
    // Odd-numbered items are kept: contents 1 and 3 of the four.
    assert_eq!(blob_files(dir.path()).len(), 2);
    drop(store);
    let store = LocalDatastore::open(dir.path()).await.unwrap();
    assert!(
        store.repair_report().is_clean(),
        "{:?}",
        store.repair_report()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn any_content_round_trips_with_its_merkle_root(
        bytes in prop::collection::vec(any::<u8>(), 0..40_000),
        name in ".{0,40}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (store, _dir) = fresh().await;
            let d = domain("d");
            let stored = put_bytes(&store, &d, &name, "t", &bytes).await;
            prop_assert_eq!(stored.hash.clone().unwrap(), root_of(&bytes).to_string());
            let (got, content) = read_content(&store, &d, &stored.id).await;
            prop_assert_eq!(got, stored);
            prop_assert_eq!(content, bytes);
            Ok(())
        })?;
    }
}

/// The local store behind the trait's default `get_from`, which reads past the offset
/// instead of seeking: what a backend without seeking gets.
struct DefaultGetFrom(LocalDatastore);

impl Datastore for DefaultGetFrom {
    type Content = LocalContent;

    async fn put<R: AsyncRead + Send + Unpin>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        content: R,
    ) -> Result<Metadata, DatastoreError> {
        self.0.put(domain, item, content).await
    }

    async fn get(
        &self,
        domain: &DomainId,
        id: &str,
    ) -> Result<(Metadata, Self::Content), DatastoreError> {
        self.0.get(domain, id).await
    }

    async fn query(
        &self,
        domain: &DomainId,
        query: &Query,
    ) -> Result<Vec<Metadata>, DatastoreError> {
        self.0.query(domain, query).await
    }

    async fn delete(&self, domain: &DomainId, id: &str) -> Result<(), DatastoreError> {
        self.0.delete(domain, id).await
    }

    fn subscribe(&self, domain: &DomainId, query: &Query) -> Result<Subscription, DatastoreError> {
        self.0.subscribe(domain, query)
    }
}

#[tokio::test]
async fn the_default_get_from_reads_past_the_offset_like_a_seek() {
    let (store, _dir) = fresh().await;
    suite::get_from_reads_from_the_offset_to_the_end_and_not_past_it(&DefaultGetFrom(store)).await;
}
