//! `/store/v1` with the `pipeline` extension: the sender keeps items in flight, the
//! receiver stores them side by side and answers in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{DOMAIN, Fixture, data, new_item, pipe};
use domain_capabilities::{
    CapabilityError, Limits, PIPELINE, PIPELINE_BYTES, PIPELINE_ITEMS, StoreSender,
};
use domain_datastore::{Datastore, DatastoreError};
use domain_merkle::{CHUNK_SIZE, root_of};
use domain_proto::domain_data::{Metadata, UpsertMetadata};
use domain_proto::protocols::STORE_V1;
use domain_proto::task::{Code, DomainClusterHandshakeRequest, DomainClusterHandshakeResponse};
use domain_proto::{read_message, write_message};
use tokio::io::{AsyncReadExt, DuplexStream};

/// Sizes of a stream of mixed items, each with its reason.
const MIXED_SIZES: [usize; 8] = [
    0,              // nothing to read into memory
    4096,           // the small file of a scan
    CHUNK_SIZE,     // exactly one leaf
    64 << 10,       // the largest item a receiver reads into memory
    (64 << 10) + 1, // the smallest that streams into the datastore
    3 << 20,        // several batches: hashed on the sender's thread
    1,              // a small item right after a streamed one
    5 * CHUNK_SIZE, // several leaves
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_items_of_every_size_are_answered_in_order_with_their_roots() {
    let fixture = Fixture::new().await;
    let (client, server) = pipe();
    let token = fixture.token(STORE_V1);
    // 300 items: far more than the window, mixing sizes so that small stores finish
    // while a large one streams.
    let blobs: Vec<Vec<u8>> = (0..300)
        .map(|i| data(MIXED_SIZES[i % MIXED_SIZES.len()] + i % 3))
        .collect();
    let send = async {
        let mut sender = StoreSender::open(client, &token, DOMAIN, Limits::DEFAULT).await?;
        assert!(sender.pipelines());
        let mut stored = Vec::new();
        for (i, blob) in blobs.iter().enumerate() {
            let item = new_item(&format!("item-{i}"), blob.len());
            sender.send_pipelined(item, blob.as_slice()).await?;
            stored.extend(sender.take_receipts());
        }
        sender.flush_receipts().await?;
        stored.extend(sender.take_receipts());
        sender.finish().await?;
        Ok::<_, CapabilityError>(stored)
    };
    let (served, stored) = tokio::join!(fixture.serve_store(server), send);
    let (summary, stored) = (served.unwrap(), stored.unwrap());
    assert_eq!(stored.len(), blobs.len());
    assert_eq!(summary.items, blobs.len() as u64);
    for (i, (metadata, blob)) in stored.iter().zip(&blobs).enumerate() {
        assert_eq!(metadata.name, format!("item-{i}"), "answers come in order");
        assert_eq!(metadata.hash, Some(root_of(blob).to_string()));
        assert_eq!(summary.ids[i], metadata.id);
        let (_, mut content) = fixture
            .store
            .get(&fixture.domain(), &metadata.id)
            .await
            .unwrap();
        let mut back = Vec::new();
        content.read_to_end(&mut back).await.unwrap();
        assert_eq!(&back, blob, "item {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_item_ends_the_stream_after_the_answers_of_the_items_before_it() {
    let fixture = Fixture::new().await;
    let (client, server) = pipe();
    let token = fixture.token(STORE_V1);
    let send = async {
        let mut sender = StoreSender::open(client, &token, DOMAIN, Limits::DEFAULT)
            .await
            .unwrap();
        let mut sent = Ok(());
        for i in 0..10 {
            let blob = data(100 + i);
            let mut item = new_item(&format!("item-{i}"), blob.len());
            if i == 5 {
                // An upsert of an item that does not exist.
                item.is_new = false;
                item.id = "no-such-item".into();
            }
            sent = sender.send_pipelined(item, blob.as_slice()).await;
            if sent.is_err() {
                break;
            }
        }
        if sent.is_ok() {
            sent = sender.flush_receipts().await;
        }
        let receipts: Vec<Metadata> = sender.take_receipts().collect();
        (sent, receipts)
    };
    let (served, (sent, receipts)) = tokio::join!(fixture.serve_store(server), send);
    assert!(
        matches!(
            served,
            Err(CapabilityError::Datastore(DatastoreError::NotFound { .. }))
        ),
        "{served:?}"
    );
    assert!(sent.is_err(), "the sender sees the stream fail");
    let names: Vec<&str> = receipts.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["item-0", "item-1", "item-2", "item-3", "item-4"]);
    for receipt in &receipts {
        fixture
            .store
            .metadata(&fixture.domain(), &receipt.id)
            .await
            .unwrap();
    }
}

/// Answers the handshake by hand with `extensions`, for a receiver that reads items
/// and answers only when the test says so.
async fn accept_by_hand(server: &mut DuplexStream, extensions: &[&str]) {
    let _: DomainClusterHandshakeRequest = read_message(server, 1 << 20).await.unwrap();
    let ok = DomainClusterHandshakeResponse {
        code: Code::Ok as i32,
        err_msg: String::new(),
        extensions: extensions.iter().map(|&e| e.to_owned()).collect(),
    };
    write_message(server, &ok).await.unwrap();
}

/// Reads the next item and its content; `None` when the sender sends nothing more
/// within a second (virtual time: it is waiting for an answer).
async fn next_item(server: &mut DuplexStream) -> Option<(UpsertMetadata, Vec<u8>)> {
    let item: UpsertMetadata =
        tokio::time::timeout(Duration::from_secs(1), read_message(server, 1 << 20))
            .await
            .ok()?
            .unwrap();
    let mut content = vec![0; item.size as usize];
    server.read_exact(&mut content).await.unwrap();
    Some((item, content))
}

/// The answer of a receiver that stored `content` as `item`.
async fn answer(server: &mut DuplexStream, item: &UpsertMetadata, content: &[u8]) {
    let metadata = Metadata {
        name: item.name.clone(),
        size: item.size,
        id: item.name.clone(),
        hash: Some(root_of(content).to_string()),
        ..Default::default()
    };
    write_message(server, &metadata).await.unwrap();
}

/// How many items of `size` bytes a sender writes to a receiver speaking `extensions`
/// before it waits for an answer; then, after one answer, whether it sends one more.
async fn items_sent_unanswered(extensions: &[&str], size: usize) -> (usize, bool) {
    let fixture = Fixture::new().await;
    let (client, mut server) = tokio::io::duplex(8 << 20);
    let token = fixture.token(STORE_V1);
    let receiver = async {
        accept_by_hand(&mut server, extensions).await;
        let mut unanswered = Vec::new();
        while let Some(item) = next_item(&mut server).await {
            unanswered.push(item);
        }
        let count = unanswered.len();
        let (item, content) = &unanswered[0];
        answer(&mut server, item, content).await;
        let one_more = next_item(&mut server).await.is_some();
        (count, one_more)
    };
    let sender = async {
        let mut sender = StoreSender::open(client, &token, DOMAIN, Limits::DEFAULT)
            .await
            .unwrap();
        let blob = data(size);
        for i in 0..PIPELINE_ITEMS + 10 {
            let item = new_item(&format!("item-{i}"), size);
            if sender.send_pipelined(item, blob.as_slice()).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        seen = receiver => seen,
        () = sender => panic!("the sender never waited"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_sender_keeps_at_most_the_window_of_items_unanswered() {
    assert_eq!(
        items_sent_unanswered(&[PIPELINE], 100).await,
        (PIPELINE_ITEMS, true)
    );
}

#[tokio::test(start_paused = true)]
async fn a_sender_keeps_at_most_the_window_of_bytes_unanswered() {
    let size = 1 << 20;
    let window = usize::try_from(PIPELINE_BYTES).unwrap() / size;
    assert_eq!(
        items_sent_unanswered(&[PIPELINE], size).await,
        (window, true)
    );
}

#[tokio::test(start_paused = true)]
async fn a_receiver_without_the_extension_gets_one_item_at_a_time() {
    assert_eq!(items_sent_unanswered(&["resume"], 100).await, (1, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_never_reads_the_answers_is_held_back_and_timed_out() {
    let fixture = Fixture::new().await;
    // Room for a few answers only: they back up at once.
    let (mut client, server) = tokio::io::duplex(4 << 10);
    let token = fixture.token(STORE_V1);
    let limits = Limits {
        idle_timeout: Duration::from_secs(2),
        ..Limits::DEFAULT
    };
    let served = domain_capabilities::serve_store(
        server,
        &common::STORE_INFO,
        &fixture.store,
        &fixture.keys,
        &limits,
    );
    let mut written = 0;
    let flood = async {
        let request = DomainClusterHandshakeRequest {
            access_token: token.clone(),
            domain_id: DOMAIN.into(),
        };
        write_message(&mut client, &request).await.unwrap();
        let _: DomainClusterHandshakeResponse = read_message(&mut client, 1 << 20).await.unwrap();
        let blob = data(100);
        for i in 0..10_000 {
            let item = new_item(&format!("item-{i}"), blob.len());
            if write_message(&mut client, &item).await.is_err() {
                return;
            }
            if tokio::io::AsyncWriteExt::write_all(&mut client, &blob)
                .await
                .is_err()
            {
                return;
            }
            written += 1;
        }
    };
    let served = tokio::select! {
        served = served => served,
        () = flood => panic!("the receiver took every item without its answers being read"),
    };
    assert!(
        matches!(served, Err(CapabilityError::Idle { .. })),
        "{served:?}"
    );
    assert!(
        written < 2 * PIPELINE_ITEMS + 100,
        "{written} items taken unanswered"
    );
}
