//! Resumable puts of the local backend: what a cut put keeps, and how a later put under
//! the same key continues from it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The suite's helpers; its behaviours run in `local.rs`.
#[allow(dead_code)]
#[path = "suite/mod.rs"]
mod suite;

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use domain_datastore::{Datastore, DatastoreError, LocalDatastore, LocalOptions, ResumePoint};
use domain_merkle::{CHUNK_SIZE, root_of};
use domain_proto::domain_data::Query;
use suite::{domain, pattern, read_content, upsert};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const KEY: &str = "upload-1";

/// Ten whole chunks and a tail, streamed (over the store's in-memory size).
const SIZE: usize = 10 * CHUNK_SIZE + 100;

/// A reader that fails, as a dropped connection does.
struct Reset;

impl AsyncRead for Reset {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
    }
}

/// The first `received` bytes of `data`, then a reset.
fn cut_after(data: &[u8], received: usize) -> impl AsyncRead + Send + Unpin + '_ {
    (&data[..received]).chain(Reset)
}

async fn open(dir: &Path, options: LocalOptions) -> LocalDatastore {
    LocalDatastore::open_with(dir, options).await.unwrap()
}

async fn put_cut(store: &LocalDatastore, data: &[u8], received: usize) -> DatastoreError {
    store
        .put_resumable(
            &domain("d"),
            upsert("scan", "bin", data.len()),
            KEY,
            0,
            cut_after(data, received),
        )
        .await
        .unwrap_err()
}

async fn point(store: &LocalDatastore, size: usize) -> Option<ResumePoint> {
    store
        .resume_point(&domain("d"), KEY, size.try_into().unwrap())
        .await
        .unwrap()
}

fn kept_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("partials")).unwrap().count()
}

#[tokio::test]
async fn a_cut_put_keeps_its_whole_chunks_and_a_resumed_put_stores_the_whole_item() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), LocalOptions::default()).await;
    let data = pattern(SIZE, 1);
    let received = 4 * CHUNK_SIZE + 5;

    let error = put_cut(&store, &data, received).await;
    assert!(
        matches!(error, DatastoreError::ReadContent { .. }),
        "{error}"
    );
    // Nothing is visible, but the whole chunks are kept.
    let listed = store.query(&domain("d"), &Query::default()).await.unwrap();
    assert!(listed.is_empty());
    let kept = 4 * CHUNK_SIZE;
    assert_eq!(
        point(&store, SIZE).await,
        Some(ResumePoint {
            offset: kept as u64,
            prefix_root: root_of(&data[..kept]),
        })
    );

    let stored = store
        .put_resumable(
            &domain("d"),
            upsert("scan", "bin", SIZE),
            KEY,
            kept as u64,
            &data[kept..],
        )
        .await
        .unwrap();
    assert_eq!(stored.hash, Some(root_of(&data).to_string()));
    assert_eq!(read_content(&store, &domain("d"), &stored.id).await.1, data);
    assert_eq!(point(&store, SIZE).await, None);
    assert_eq!(kept_files(dir.path()), 0);
}

#[tokio::test]
async fn content_that_ends_early_is_kept_like_content_that_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), LocalOptions::default()).await;
    let data = pattern(SIZE, 2);
    let error = store
        .put_resumable(
            &domain("d"),
            upsert("scan", "bin", SIZE),
            KEY,
            0,
            &data[..3 * CHUNK_SIZE - 1],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, DatastoreError::SizeMismatch { .. }),
        "{error}"
    );
    assert_eq!(
        point(&store, SIZE).await.unwrap().offset,
        2 * CHUNK_SIZE as u64
    );
}

#[tokio::test]
async fn content_longer_than_its_size_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), LocalOptions::default()).await;
    let data = pattern(SIZE + 10, 3);
    let error = store
        .put_resumable(&domain("d"), upsert("scan", "bin", SIZE), KEY, 0, &data[..])
        .await
        .unwrap_err();
    assert!(
        matches!(error, DatastoreError::SizeMismatch { .. }),
        "{error}"
    );
    assert_eq!(point(&store, SIZE).await, None);
}

#[tokio::test]
async fn kept_bytes_survive_reopening_and_are_read_back_from_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(SIZE, 4);
    {
        let store = open(dir.path(), LocalOptions::default()).await;
        put_cut(&store, &data, 6 * CHUNK_SIZE).await;
    }
    let store = open(dir.path(), LocalOptions::default()).await;
    let offered = point(&store, SIZE).await.unwrap();
    assert_eq!(offered.offset, 6 * CHUNK_SIZE as u64);
    assert_eq!(offered.prefix_root, root_of(&data[..6 * CHUNK_SIZE]));
    drop(store);

    // Bytes damaged on disk show in the prefix root: the sender will not skip them.
    let kept = std::fs::read_dir(dir.path().join("partials"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&kept).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&kept, &bytes).unwrap();
    let store = open(dir.path(), LocalOptions::default()).await;
    let offered = point(&store, SIZE).await.unwrap();
    assert_ne!(offered.prefix_root, root_of(&data[..6 * CHUNK_SIZE]));
}

#[tokio::test]
async fn kept_bytes_expire() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(SIZE, 5);
    {
        let store = open(dir.path(), LocalOptions::default()).await;
        put_cut(&store, &data, 6 * CHUNK_SIZE).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let expiring = LocalOptions {
        partial_ttl: Duration::from_millis(1),
        ..LocalOptions::default()
    };
    let store = open(dir.path(), expiring).await;
    assert_eq!(kept_files(dir.path()), 0, "removed at open");
    assert_eq!(point(&store, SIZE).await, None);
}

#[tokio::test]
async fn the_oldest_kept_bytes_make_room_and_bytes_over_the_limit_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocalOptions {
        partial_bytes: 5 * CHUNK_SIZE as u64,
        ..LocalOptions::default()
    };
    let store = open(dir.path(), options).await;
    let data = pattern(SIZE, 6);
    let put = |key: &'static str, received: usize| {
        let (store, data) = (&store, &data);
        async move {
            store
                .put_resumable(
                    &domain("d"),
                    upsert("scan", "bin", SIZE),
                    key,
                    0,
                    cut_after(data, received),
                )
                .await
                .unwrap_err();
            store
                .resume_point(&domain("d"), key, SIZE as u32)
                .await
                .unwrap()
        }
    };
    assert!(put("a", 3 * CHUNK_SIZE).await.is_some());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(put("b", 2 * CHUNK_SIZE).await.is_some());
    // Three more chunks do not fit beside the five kept: the oldest, "a", goes.
    assert!(put("c", 3 * CHUNK_SIZE).await.is_some());
    let d = domain("d");
    let still = |key| store.resume_point(&d, key, SIZE as u32);
    assert_eq!(still("a").await.unwrap(), None);
    assert!(still("b").await.unwrap().is_some());
    // Six chunks alone are over the limit.
    assert_eq!(put("d", 6 * CHUNK_SIZE).await, None);
    assert_eq!(kept_files(dir.path()), 2);
}

#[tokio::test]
async fn kept_bytes_resume_only_the_same_key_and_size_and_from_zero_drops_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), LocalOptions::default()).await;
    let data = pattern(SIZE, 7);
    put_cut(&store, &data, 5 * CHUNK_SIZE).await;
    assert_eq!(point(&store, SIZE + 1).await, None, "another size");
    let other_key = store.resume_point(&domain("d"), "other", SIZE as u32).await;
    assert_eq!(other_key.unwrap(), None);
    let other_domain = store.resume_point(&domain("e"), KEY, SIZE as u32).await;
    assert_eq!(other_domain.unwrap(), None);

    // A start past the kept bytes is refused, and the kept bytes stay.
    let past = store
        .put_resumable(
            &domain("d"),
            upsert("scan", "bin", SIZE),
            KEY,
            6 * CHUNK_SIZE as u64,
            &data[6 * CHUNK_SIZE..],
        )
        .await
        .unwrap_err();
    assert!(matches!(past, DatastoreError::ResumeLost { .. }), "{past}");
    assert_eq!(
        point(&store, SIZE).await.unwrap().offset,
        5 * CHUNK_SIZE as u64
    );

    // Starting from 0 (the sender's bytes differ) stores the new content whole.
    let other = pattern(SIZE, 8);
    let stored = store
        .put_resumable(
            &domain("d"),
            upsert("scan", "bin", SIZE),
            KEY,
            0,
            &other[..],
        )
        .await
        .unwrap();
    assert_eq!(
        read_content(&store, &domain("d"), &stored.id).await.1,
        other
    );
    assert_eq!(point(&store, SIZE).await, None);
}

#[tokio::test]
async fn a_key_in_use_is_not_offered_and_its_bytes_are_not_shared() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), LocalOptions::default()).await;
    let data = pattern(SIZE, 9);
    put_cut(&store, &data, 5 * CHUNK_SIZE).await;
    let offset = point(&store, SIZE).await.unwrap().offset;

    // A put resumes, and waits for bytes that have not come yet.
    let (mut feed, pending) = tokio::io::duplex(1024);
    let d = domain("d");
    let resuming = store.put_resumable(&d, upsert("scan", "bin", SIZE), KEY, offset, pending);
    let others = async {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(point(&store, SIZE).await, None);
        let second = store
            .put_resumable(
                &domain("d"),
                upsert("scan", "bin", SIZE),
                KEY,
                offset,
                &data[offset as usize..],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(second, DatastoreError::ResumeLost { .. }),
            "{second}"
        );
        tokio::io::AsyncWriteExt::write_all(&mut feed, &data[offset as usize..])
            .await
            .unwrap();
        drop(feed);
    };
    let (resumed, ()) = tokio::join!(resuming, others);
    let resumed = resumed.unwrap();
    assert_eq!(
        read_content(&store, &domain("d"), &resumed.id).await.1,
        data
    );
}
