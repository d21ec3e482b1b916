//! `/load/v1` over an in-memory pipe from a real local datastore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::{DOMAIN, Fixture, LOAD_INFO, claims, data, new_item, pipe};
use domain_auth::{TaskClaims, unix_secs};
use domain_capabilities::{
    CapabilityError, Limits, LoadConsumer, LoadSummary, Unsubscriber, open_load, serve_load,
};
use domain_datastore::Datastore;
use domain_merkle::{CHUNK_SIZE, root_of};
use domain_proto::domain_data::{Metadata, Query};
use domain_proto::protocols::LOAD_V1;
use domain_proto::task::ConsumeDataInputV1;
use tokio::io::DuplexStream;

const MAX: u64 = 200 << 20;

async fn put(fixture: &Fixture, name: &str, blob: &[u8]) -> Metadata {
    fixture
        .store
        .put(&fixture.domain(), new_item(name, blob.len()), blob)
        .await
        .unwrap()
}

/// A `/load/v1` stream served from the fixture's store by a task of its own: the
/// consumer's two halves, and the server's task.
async fn served_in_background(
    fixture: &Fixture,
    request: ConsumeDataInputV1,
) -> (
    LoadConsumer<DuplexStream>,
    Unsubscriber<DuplexStream>,
    tokio::task::JoinHandle<Result<LoadSummary, CapabilityError>>,
) {
    served_with(fixture, request, &fixture.token(LOAD_V1), Limits::DEFAULT).await
}

/// [`served_in_background`] on `token`, with `limits` at both ends.
async fn served_with(
    fixture: &Fixture,
    request: ConsumeDataInputV1,
    token: &str,
    limits: Limits,
) -> (
    LoadConsumer<DuplexStream>,
    Unsubscriber<DuplexStream>,
    tokio::task::JoinHandle<Result<LoadSummary, CapabilityError>>,
) {
    let (client, server) = pipe();
    let server = tokio::spawn({
        let store = fixture.store.clone();
        let keys = fixture.keys.clone();
        async move { serve_load(server, &LOAD_INFO, &store, &keys, &limits).await }
    });
    let (consumer, unsubscriber) = open_load(client, token, DOMAIN, request, limits)
        .await
        .unwrap();
    (consumer, unsubscriber, server)
}

async fn collect(
    consumer: &mut LoadConsumer<DuplexStream>,
) -> Result<Vec<(Metadata, Vec<u8>)>, CapabilityError> {
    let mut items = Vec::new();
    while let Some(item) = consumer.next().await? {
        items.push(item.read_to_vec(MAX).await?);
    }
    Ok(items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_items_download_with_their_content_then_the_stream_ends() {
    let fixture = Fixture::new().await;
    let sizes = [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3 * CHUNK_SIZE + 5,
        (1 << 20) + 1,
    ];
    let mut expected = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let blob = data(size);
        expected.push((put(&fixture, &format!("scan-{i}"), &blob).await, blob));
    }
    put(&fixture, "other", b"not matched").await;
    expected.sort_by(|a, b| a.0.id.cmp(&b.0.id));

    let (client, server) = pipe();
    let token = fixture.token(LOAD_V1);
    let request = ConsumeDataInputV1 {
        query: Query {
            name_regexp: Some("^scan-".into()),
            ..Default::default()
        },
        keep_alive: false,
        ..Default::default()
    };
    let consume = async {
        let (mut consumer, _unsubscriber) =
            open_load(client, &token, DOMAIN, request, Limits::DEFAULT).await?;
        collect(&mut consumer).await
    };
    let (served, got) = tokio::join!(
        serve_load(
            server,
            &LOAD_INFO,
            &fixture.store,
            &fixture.keys,
            &Limits::DEFAULT
        ),
        consume
    );
    let got = got.unwrap();
    let total: usize = sizes.iter().sum();
    assert_eq!(
        served.unwrap(),
        LoadSummary {
            items: sizes.len() as u64,
            bytes: total as u64
        }
    );
    assert_eq!(got.len(), expected.len());
    for ((metadata, content), (want_metadata, want)) in got.iter().zip(&expected) {
        assert_eq!(metadata, want_metadata);
        assert_eq!(content, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_item_downloads_and_matches_its_root() {
    let fixture = Fixture::new().await;
    let blob = data(100 << 20);
    let stored = put(&fixture, "big", &blob).await;
    let (client, server) = pipe();
    let token = fixture.token(LOAD_V1);
    let request = ConsumeDataInputV1 {
        query: Query {
            ids: vec![stored.id.clone()],
            ..Default::default()
        },
        keep_alive: false,
        ..Default::default()
    };
    let consume = async {
        let (mut consumer, _unsubscriber) =
            open_load(client, &token, DOMAIN, request, Limits::DEFAULT).await?;
        collect(&mut consumer).await
    };
    let (served, got) = tokio::join!(
        serve_load(
            server,
            &LOAD_INFO,
            &fixture.store,
            &fixture.keys,
            &Limits::DEFAULT
        ),
        consume
    );
    served.unwrap();
    let got = got.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].0.hash.as_deref(),
        Some(root_of(&blob).to_string().as_str())
    );
    assert!(got[0].1 == blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_only_sends_no_content_and_unread_content_is_skipped() {
    let fixture = Fixture::new().await;
    for i in 0..3 {
        put(&fixture, &format!("m-{i}"), &data(2 * CHUNK_SIZE + i)).await;
    }
    for metadata_only in [true, false] {
        let (client, server) = pipe();
        let token = fixture.token(LOAD_V1);
        let request = ConsumeDataInputV1 {
            query: Query {
                metadata_only,
                ..Default::default()
            },
            keep_alive: false,
            ..Default::default()
        };
        let consume = async {
            let (mut consumer, _unsubscriber) =
                open_load(client, &token, DOMAIN, request, Limits::DEFAULT).await?;
            let mut names = Vec::new();
            // Content, if any, is left unread: the next call skips it.
            while let Some(item) = consumer.next().await? {
                names.push(item.metadata().name.clone());
            }
            Ok::<_, CapabilityError>(names)
        };
        let (served, names) = tokio::join!(
            serve_load(
                server,
                &LOAD_INFO,
                &fixture.store,
                &fixture.keys,
                &Limits::DEFAULT
            ),
            consume
        );
        let summary = served.unwrap();
        assert_eq!(names.unwrap().len(), 3);
        assert_eq!(summary.items, 3);
        assert_eq!(summary.bytes == 0, metadata_only);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_receives_items_stored_after_subscribing_and_stops_on_unsubscribe() {
    let fixture = Fixture::new().await;
    let before = put(&fixture, "before", b"already there").await;
    let request = ConsumeDataInputV1 {
        query: Query {
            names: vec!["before".into(), "after".into()],
            ..Default::default()
        },
        keep_alive: true,
        ..Default::default()
    };
    let (mut consumer, unsubscriber, server) = served_in_background(&fixture, request).await;
    let (first, content) = consumer
        .next()
        .await
        .unwrap()
        .unwrap()
        .read_to_vec(MAX)
        .await
        .unwrap();
    assert_eq!(first, before);
    assert_eq!(content, b"already there");

    // Stored after the subscription started: delivered, content and all. Items that
    // do not match the query are not.
    put(&fixture, "unrelated", b"no").await;
    let later = data(4 * CHUNK_SIZE + 1);
    let after = put(&fixture, "after", &later).await;
    let (got, content) = consumer
        .next()
        .await
        .unwrap()
        .unwrap()
        .read_to_vec(MAX)
        .await
        .unwrap();
    assert_eq!(got, after);
    assert!(content == later);

    unsubscriber.unsubscribe().await.unwrap();
    assert!(consumer.next().await.unwrap().is_none());
    let summary = server.await.unwrap().unwrap();
    assert_eq!(summary.items, 2);

    // Nothing stored after the unsubscribe reaches anyone: the server is gone.
    put(&fixture, "after", b"too late").await;
    assert!(consumer.next().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_marker_separates_the_items_already_there_from_the_new_ones() {
    let fixture = Fixture::new().await;
    put(&fixture, "before-1", b"one").await;
    put(&fixture, "before-2", &data(3 * CHUNK_SIZE)).await;
    let request = ConsumeDataInputV1 {
        query: Query::default(),
        keep_alive: true,
        mark_caught_up: Some(true),
        ..Default::default()
    };
    let (mut consumer, unsubscriber, server) = served_in_background(&fixture, request).await;
    // Past both items already there, their content skipped.
    assert_eq!(consumer.skip_to_caught_up().await.unwrap(), 2);
    assert!(matches!(
        consumer.skip_to_caught_up().await,
        Err(CapabilityError::Unexpected { .. })
    ));

    let after = put(&fixture, "after", b"new").await;
    let (got, content) = consumer
        .next()
        .await
        .unwrap()
        .unwrap()
        .read_to_vec(MAX)
        .await
        .unwrap();
    assert_eq!((got, content), (after, b"new".to_vec()));
    unsubscriber.unsubscribe().await.unwrap();
    assert!(consumer.next().await.unwrap().is_none());
    // The marker is not an item.
    assert_eq!(server.await.unwrap().unwrap().items, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_asked_for_no_marker_cannot_wait_for_one() {
    let fixture = Fixture::new().await;
    let request = ConsumeDataInputV1 {
        query: Query::default(),
        keep_alive: true,
        ..Default::default()
    };
    let (mut consumer, unsubscriber, server) = served_in_background(&fixture, request).await;
    assert!(matches!(
        consumer.skip_to_caught_up().await,
        Err(CapabilityError::Unexpected { .. })
    ));
    unsubscriber.unsubscribe().await.unwrap();
    assert!(consumer.next().await.unwrap().is_none());
    server.await.unwrap().unwrap();
}

// Real time, not paused: the store's puts run on blocking threads, and paused time would
// jump to the token's expiry while one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_subscription_may_stay_silent_longer_than_the_idle_timeout() {
    let fixture = Fixture::new().await;
    let request = ConsumeDataInputV1 {
        query: Query::default(),
        keep_alive: true,
        ..Default::default()
    };
    let limits = Limits {
        idle_timeout: Duration::from_millis(100),
        ..Limits::DEFAULT
    };
    let token = fixture.token(LOAD_V1);
    let (mut consumer, unsubscriber, server) = served_with(&fixture, request, &token, limits).await;
    let store = fixture.store.clone();
    let domain = fixture.domain();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        store
            .put(&domain, new_item("late", 4), &b"late"[..])
            .await
            .unwrap()
    });
    let (got, content) = consumer
        .next()
        .await
        .unwrap()
        .unwrap()
        .read_to_vec(MAX)
        .await
        .unwrap();
    assert_eq!(got, writer.await.unwrap());
    assert_eq!(content, b"late");
    unsubscriber.unsubscribe().await.unwrap();
    assert!(consumer.next().await.unwrap().is_none());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_subscription_ends_when_its_token_expires() {
    let fixture = Fixture::new().await;
    let request = ConsumeDataInputV1 {
        query: Query::default(),
        keep_alive: true,
        ..Default::default()
    };
    let claims = TaskClaims {
        exp: unix_secs(SystemTime::now()) + 2,
        ..claims(LOAD_V1)
    };
    let token = fixture.key.issue(&claims).unwrap();
    let (mut consumer, _unsubscriber, server) =
        served_with(&fixture, request, &token, Limits::DEFAULT).await;
    let stored = put(&fixture, "before", b"in time").await;
    let got = consumer.next().await.unwrap().unwrap();
    assert_eq!(*got.metadata(), stored);
    // The node ends the stream at `exp`, as it would on an unsubscribe; the sender must
    // renew it on a fresh token.
    let ended = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
    assert!(
        ended
            .expect("the stream outlived its token")
            .unwrap()
            .is_none()
    );
    assert!(unix_secs(SystemTime::now()) >= claims.exp);
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_goes_away_ends_the_keep_alive_stream() {
    let fixture = Fixture::new().await;
    let request = ConsumeDataInputV1 {
        query: Query::default(),
        keep_alive: true,
        ..Default::default()
    };
    let (consumer, unsubscriber, server) = served_in_background(&fixture, request).await;
    drop(consumer);
    drop(unsubscriber);
    let served = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
}
