//! A receiver with a [`TokenLedger`]: a token opens one stream at a time, and no write once
//! a write of it ended well; a stream that was cut leaves its token for a retry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DOMAIN, Fixture, LOAD_INFO, STORE_INFO, data, new_item, pipe};
use domain_capabilities::{
    CapabilityError, Limits, StoreSender, StreamInfo, TokenLedger, open_load, serve_load,
    serve_store, store_items,
};
use domain_datastore::Datastore;
use domain_proto::protocols::{LOAD_V1, STORE_V1};
use domain_proto::task::ConsumeDataInputV1;

/// Serves one `/store/v1` stream of `fixture`'s store, with `ledger`.
async fn serve_with<S>(
    fixture: &Fixture,
    ledger: &TokenLedger,
    stream: S,
) -> Result<(), CapabilityError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let info = StreamInfo {
        tokens: Some(ledger),
        permits: None,
        ..STORE_INFO
    };
    serve_store(
        stream,
        &info,
        &fixture.store,
        &fixture.keys,
        &Limits::DEFAULT,
    )
    .await
    .map(drop)
}

/// Stores one small item with `token` on a fresh stream; what each side said.
async fn store_once(
    fixture: &Fixture,
    ledger: &TokenLedger,
    token: &str,
) -> (Result<(), CapabilityError>, Result<(), CapabilityError>) {
    let (client, server) = pipe();
    let blob = data(100);
    let (served, sent) = tokio::join!(
        serve_with(fixture, ledger, server),
        store_items(
            client,
            token,
            DOMAIN,
            [(new_item("x", blob.len()), blob.as_slice())],
            Limits::DEFAULT
        ),
    );
    (served, sent.map(drop))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_task_is_done_is_refused_on_a_second_stream() {
    let fixture = Fixture::new().await;
    let ledger = TokenLedger::default();
    let token = fixture.token(STORE_V1);
    let (served, sent) = store_once(&fixture, &ledger, &token).await;
    served.unwrap();
    sent.unwrap();

    let (served, sent) = store_once(&fixture, &ledger, &token).await;
    let refused = sent.unwrap_err().to_string();
    assert!(refused.contains("used already"), "{refused}");
    assert!(
        matches!(served, Err(CapabilityError::Replayed(_))),
        "{served:?}"
    );
    // Another token of the same task claims is its own: it goes through.
    let (served, _) = store_once(&fixture, &ledger, &fixture.token(STORE_V1)).await;
    served.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_opens_one_stream_at_a_time_and_a_cut_stream_leaves_it_for_a_retry() {
    let fixture = Fixture::new().await;
    let ledger = TokenLedger::default();
    let token = fixture.token(STORE_V1);

    // A first stream past its handshake, left open.
    let (client, server) = pipe();
    let first = tokio::spawn({
        let (fixture_store, keys, ledger) =
            (fixture.store.clone(), fixture.keys.clone(), ledger.clone());
        async move {
            let info = StreamInfo {
                tokens: Some(&ledger),
                permits: None,
                ..STORE_INFO
            };
            serve_store(server, &info, &fixture_store, &keys, &Limits::DEFAULT).await
        }
    });
    let mut sender = StoreSender::open(client, &token, DOMAIN, Limits::DEFAULT)
        .await
        .unwrap();

    let (_, sent) = store_once(&fixture, &ledger, &token).await;
    let refused = sent.unwrap_err().to_string();
    assert!(refused.contains("in use by another stream"), "{refused}");

    // Cut inside an item (1000 bytes announced, 10 sent): the receiver's stream fails,
    // and the token may be tried again.
    let short = data(10);
    assert!(
        sender
            .send(new_item("x", 1000), short.as_slice())
            .await
            .is_err()
    );
    drop(sender);
    assert!(first.await.unwrap().is_err());
    let (served, sent) = store_once(&fixture, &ledger, &token).await;
    served.unwrap();
    sent.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_token_reads_again_after_a_stream_ended_well() {
    // The client reads an item again on the same token when its partial file failed the
    // root check: the node cannot tell that read from one that ended well.
    let fixture = Fixture::new().await;
    let ledger = TokenLedger::default();
    let blob = data(5000);
    fixture
        .store
        .put(
            &fixture.domain(),
            new_item("x", blob.len()),
            blob.as_slice(),
        )
        .await
        .unwrap();
    let token = fixture.token(LOAD_V1);
    for _ in 0..2 {
        let (client, server) = pipe();
        let info = StreamInfo {
            tokens: Some(&ledger),
            permits: None,
            ..LOAD_INFO
        };
        let request = ConsumeDataInputV1 {
            keep_alive: false,
            ..Default::default()
        };
        let (served, read) = tokio::join!(
            serve_load(
                server,
                &info,
                &fixture.store,
                &fixture.keys,
                &Limits::DEFAULT
            ),
            async {
                let (mut consumer, _) =
                    open_load(client, &token, DOMAIN, request, Limits::DEFAULT).await?;
                let mut content = Vec::new();
                while let Some(item) = consumer.next().await? {
                    content = item.read_to_vec(1 << 20).await?.1;
                }
                Ok::<_, CapabilityError>(content)
            }
        );
        served.unwrap();
        assert_eq!(read.unwrap(), blob);
    }
}
