//! `/store/v1` over an in-memory pipe into a real local datastore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DOMAIN, Fixture, STORE_INFO, data, new_item, pipe};
use domain_capabilities::{
    CapabilityError, Limits, StoreSender, StoreSummary, serve_store, store_items,
};
use domain_datastore::{CHUNK_SIZE, Datastore, root_of};
use domain_proto::domain_data::{Query, UpsertMetadata};
use domain_proto::protocols::STORE_V1;
use tokio::io::AsyncReadExt;

async fn read_back(fixture: &Fixture, id: &str) -> Vec<u8> {
    let (_, mut content) = fixture.store.get(&fixture.domain(), id).await.unwrap();
    let mut bytes = Vec::new();
    content.read_to_end(&mut bytes).await.unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_of_sizes_around_chunk_boundaries_round_trip_with_matching_roots() {
    let fixture = Fixture::new().await;
    let sizes = [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        2 * CHUNK_SIZE,
        3 * CHUNK_SIZE + 5,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        4 * CHUNK_SIZE * 37 + 11,
    ];
    let blobs: Vec<Vec<u8>> = sizes.iter().map(|&n| data(n)).collect();
    let (client, server) = pipe();
    let token = fixture.token(STORE_V1);
    let items = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| (new_item(&format!("item-{i}"), b.len()), b.as_slice()));
    let (served, stored) = tokio::join!(
        fixture.serve_store(server),
        store_items(client, &token, DOMAIN, items, Limits::default()),
    );
    let stored = stored.unwrap();
    let total: usize = sizes.iter().sum();
    assert_eq!(
        served.unwrap(),
        StoreSummary {
            items: sizes.len() as u64,
            bytes: total as u64,
            ids: stored.iter().map(|m| m.id.clone()).collect(),
            replaced: false,
            resumed_bytes: 0,
        }
    );
    assert_eq!(stored.len(), sizes.len());
    for (metadata, blob) in stored.iter().zip(&blobs) {
        assert_eq!(metadata.size as usize, blob.len());
        assert_eq!(
            metadata.hash.as_deref(),
            Some(root_of(blob).to_string().as_str())
        );
        assert_eq!(
            &read_back(&fixture, &metadata.id).await,
            blob,
            "{}",
            metadata.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_item_round_trips() {
    let fixture = Fixture::new().await;
    let blob = data(100 << 20);
    let (client, server) = pipe();
    let token = fixture.token(STORE_V1);
    let (served, stored) = tokio::join!(
        fixture.serve_store(server),
        store_items(
            client,
            &token,
            DOMAIN,
            [(new_item("big", blob.len()), blob.as_slice())],
            Limits::default()
        ),
    );
    assert_eq!(served.unwrap().bytes, 100 << 20);
    let stored = stored.unwrap();
    assert_eq!(
        stored[0].hash.as_deref(),
        Some(root_of(&blob).to_string().as_str())
    );
    assert!(read_back(&fixture, &stored[0].id).await == blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_sent_with_its_length_as_size() {
    let fixture = Fixture::new().await;
    let blob = data(5 * CHUNK_SIZE + 123);
    let path = fixture.dir.path().join("upload.bin");
    std::fs::write(&path, &blob).unwrap();
    let (client, server) = pipe();
    let token = fixture.token(STORE_V1);
    let limits = Limits::default();
    let send = async {
        let mut sender = StoreSender::open(client, &token, DOMAIN, limits).await?;
        let item = UpsertMetadata {
            size: 0,
            ..new_item("file", 0)
        };
        let stored = sender.send_file(item, &path).await?;
        sender.finish().await?;
        Ok::<_, CapabilityError>(stored)
    };
    let (served, stored) = tokio::join!(
        serve_store(server, &STORE_INFO, &fixture.store, &fixture.keys, &limits),
        send
    );
    served.unwrap();
    let stored = stored.unwrap();
    assert_eq!(stored.size as usize, blob.len());
    assert_eq!(read_back(&fixture, &stored.id).await, blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_replaced_by_id_holds_the_new_content() {
    let fixture = Fixture::new().await;
    let (client, server) = pipe();
    let token = fixture.token(STORE_V1);
    let limits = Limits::default();
    let send = async {
        let mut sender = StoreSender::open(client, &token, DOMAIN, limits).await?;
        let first = sender
            .send_bytes(new_item("scan", 0), b"old content")
            .await?;
        let replace = UpsertMetadata {
            is_new: false,
            id: first.id.clone(),
            ..new_item("scan", 0)
        };
        let second = sender.send_bytes(replace, b"new content, longer").await?;
        sender.finish().await?;
        Ok::<_, CapabilityError>((first, second))
    };
    let (served, sent) = tokio::join!(
        serve_store(server, &STORE_INFO, &fixture.store, &fixture.keys, &limits),
        send
    );
    served.unwrap();
    let (first, second) = sent.unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(read_back(&fixture, &first.id).await, b"new content, longer");
    assert_eq!(
        fixture
            .store
            .query(&fixture.domain(), &Query::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_shorter_than_its_size_fails_on_the_sender_and_stores_nothing() {
    let fixture = Fixture::new().await;
    let (client, server) = pipe();
    let token = fixture.token(STORE_V1);
    let limits = Limits::default();
    let short = data(1000);
    let (served, sent) = tokio::join!(
        serve_store(server, &STORE_INFO, &fixture.store, &fixture.keys, &limits),
        store_items(
            client,
            &token,
            DOMAIN,
            [(new_item("short", 5000), short.as_slice())],
            limits
        ),
    );
    assert!(
        matches!(
            sent,
            Err(CapabilityError::ContentTooShort {
                expected: 5000,
                got: 1000,
                ..
            })
        ),
        "{sent:?}"
    );
    assert!(
        matches!(
            served,
            Err(CapabilityError::Truncated { expected: 5000, .. })
        ),
        "{served:?}"
    );
    assert!(
        fixture
            .store
            .query(&fixture.domain(), &Query::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_announcing_another_root_fails_the_sender_with_a_root_mismatch() {
    use domain_proto::domain_data::Metadata;
    use domain_proto::task::{Code, DomainClusterHandshakeRequest, DomainClusterHandshakeResponse};
    use domain_proto::{read_message, write_message};

    let fixture = Fixture::new().await;
    let (client, mut server) = pipe();
    let token = fixture.token(STORE_V1);
    // A receiver that stores nothing and lies about the root.
    let liar = async move {
        let _: DomainClusterHandshakeRequest = read_message(&mut server, 1 << 20).await.unwrap();
        write_message(
            &mut server,
            &DomainClusterHandshakeResponse {
                code: Code::Ok as i32,
                err_msg: String::new(),
                extensions: Vec::new(),
            },
        )
        .await
        .unwrap();
        let item: UpsertMetadata = read_message(&mut server, 1 << 20).await.unwrap();
        let mut content = vec![0; item.size as usize];
        server.read_exact(&mut content).await.unwrap();
        let lie = Metadata {
            name: item.name,
            size: item.size,
            id: "x".into(),
            hash: Some(root_of(b"something else").to_string()),
            ..Default::default()
        };
        write_message(&mut server, &lie).await.unwrap();
        server
    };
    let blob = data(3 * CHUNK_SIZE);
    let (_server, sent) = tokio::join!(
        liar,
        store_items(
            client,
            &token,
            DOMAIN,
            [(new_item("x", blob.len()), blob.as_slice())],
            Limits::default()
        ),
    );
    match sent {
        Err(CapabilityError::RootMismatch { local, remote, .. }) => {
            assert_eq!(local, root_of(&blob));
            assert_eq!(remote, root_of(b"something else").to_string());
        }
        other => panic!("expected a root mismatch, got {other:?}"),
    }
}
