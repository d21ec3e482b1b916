//! `/store/v1` over an in-memory pipe into a real local datastore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DOMAIN, Fixture, STORE_INFO, data, new_item, pipe};
use domain_capabilities::{
    CapabilityError, Limits, StoreSender, StoreSummary, serve_store, store_items,
};
use domain_datastore::Datastore;
use domain_merkle::{CHUNK_SIZE, root_of};
use domain_proto::domain_data::{Query, UpsertMetadata};
use domain_proto::protocols::STORE_V1;
use tokio::io::AsyncReadExt;

async fn read_back(fixture: &Fixture, id: &str) -> Vec<u8> {
    let (_, mut content) = fixture.store.get(&fixture.domain(), id).await.unwrap();
    let mut bytes = Vec::new();
    content.read_to_end(&mut bytes).await.unwrap();
    bytes
}

/// Sizes where the tree or the sender's batching changes shape, each with its reason.
const INTERESTING_SIZES: [usize; 11] = [
    0,                        // one empty leaf
    1,                        // one short leaf
    CHUNK_SIZE - 1,           // a leaf one byte short
    CHUNK_SIZE,               // exactly one leaf
    CHUNK_SIZE + 1,           // a second leaf of one byte
    2 * CHUNK_SIZE,           // a perfect tree of two
    3 * CHUNK_SIZE + 5,       // an unbalanced tree
    (1 << 20) - 1,            // one batch less a byte: hashed by the sending task
    1 << 20,                  // exactly one batch
    (1 << 20) + 1,            // a batch and a byte: the sender's hashing thread
    4 * CHUNK_SIZE * 37 + 11, // several batches, leaves across batch edges
];

/// How a test hands the content to the sender.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// [`StoreSender::send`], from a reader.
    Reader,
    /// [`StoreSender::send_bytes`], from bytes in memory.
    Bytes,
}

async fn sizes_round_trip_with_matching_roots(via: Via) {
    let fixture = Fixture::new().await;
    let blobs: Vec<Vec<u8>> = INTERESTING_SIZES.iter().map(|&n| data(n)).collect();
    let (client, server) = pipe();
    let token = fixture.token(STORE_V1);
    let send = async {
        let mut sender = StoreSender::open(client, &token, DOMAIN, Limits::default()).await?;
        let mut stored = Vec::new();
        for (i, blob) in blobs.iter().enumerate() {
            let item = new_item(&format!("item-{i}"), blob.len());
            stored.push(match via {
                Via::Reader => sender.send(item, blob.as_slice()).await?,
                Via::Bytes => sender.send_bytes(item, blob.clone()).await?,
            });
        }
        sender.finish().await?;
        Ok::<_, CapabilityError>(stored)
    };
    let (served, stored) = tokio::join!(fixture.serve_store(server), send);
    let stored = stored.unwrap();
    let total: usize = INTERESTING_SIZES.iter().sum();
    assert_eq!(
        served.unwrap(),
        StoreSummary {
            items: INTERESTING_SIZES.len() as u64,
            bytes: total as u64,
            ids: stored.iter().map(|m| m.id.clone()).collect(),
            replaced: false,
            resumed_bytes: 0,
        }
    );
    for (metadata, blob) in stored.iter().zip(&blobs) {
        assert_eq!(metadata.size as usize, blob.len(), "{via:?}");
        assert_eq!(
            metadata.hash.as_deref(),
            Some(root_of(blob).to_string().as_str()),
            "{via:?}"
        );
        assert_eq!(
            &read_back(&fixture, &metadata.id).await,
            blob,
            "{via:?} {}",
            metadata.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_of_sizes_around_chunk_and_batch_boundaries_round_trip_from_a_reader() {
    sizes_round_trip_with_matching_roots(Via::Reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_of_sizes_around_chunk_and_batch_boundaries_round_trip_from_bytes() {
    sizes_round_trip_with_matching_roots(Via::Bytes).await;
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
            .send_bytes(new_item("scan", 0), &b"old content"[..])
            .await?;
        let replace = UpsertMetadata {
            is_new: false,
            id: first.id.clone(),
            ..new_item("scan", 0)
        };
        let second = sender
            .send_bytes(replace, &b"new content, longer"[..])
            .await?;
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

/// `has` bytes of content sent as an item of `size`.
async fn content_shorter_than_its_size(has: usize, size: usize) {
    let fixture = Fixture::new().await;
    let (client, server) = pipe();
    let token = fixture.token(STORE_V1);
    let limits = Limits::default();
    let short = data(has);
    let (served, sent) = tokio::join!(
        serve_store(server, &STORE_INFO, &fixture.store, &fixture.keys, &limits),
        store_items(
            client,
            &token,
            DOMAIN,
            [(new_item("short", size), short.as_slice())],
            limits
        ),
    );
    assert!(
        matches!(
            sent,
            Err(CapabilityError::ContentTooShort { expected, got, .. })
                if expected == size as u64 && got == has as u64
        ),
        "{sent:?}"
    );
    assert!(
        matches!(
            served,
            Err(CapabilityError::Truncated { expected, .. }) if expected == size as u64
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
async fn content_shorter_than_its_size_fails_on_the_sender_and_stores_nothing() {
    // Within one batch, hashed by the sending task.
    content_shorter_than_its_size(1000, 5000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_shorter_than_its_size_fails_on_the_sender_and_stores_nothing_over_batches() {
    // Several batches, hashed by the sender's hashing thread, cut inside a batch.
    content_shorter_than_its_size((3 << 20) + 77, 5 << 20).await;
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
