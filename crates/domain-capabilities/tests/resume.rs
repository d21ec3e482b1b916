//! Resuming transfers. `/load/v1`: the consumer holds a prefix of whole chunks, the
//! receiver sends only the rest, and the root is still checked over the whole content.
//! `/store/v1`: the receiver keeps the whole chunks of an upload that was cut, and the
//! sender's next stream under the same key sends only the rest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};

use common::{DOMAIN, Fixture, LOAD_INFO, data, new_item, pipe, runtime};
use domain_capabilities::{
    CapabilityError, Limits, LoadSummary, Prefixes, Sent, StoreSender, StoreSummary,
    open_load_resuming, serve_load,
};
use domain_datastore::Datastore;
use domain_merkle::{CHUNK_SIZE, MerkleBuilder, root_of};
use domain_proto::domain_data::{Metadata, Query, ResumeOffer, ResumeStart, UpsertMetadata};
use domain_proto::protocols::{LOAD_V1, STORE_V1};
use domain_proto::task::{
    Code, ConsumeDataInputV1, DomainClusterHandshakeRequest, DomainClusterHandshakeResponse,
};
use domain_proto::{encode_frame, read_message, write_message};
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Ten whole chunks and a tail: every offset below is somewhere inside it.
const SIZE: usize = 10 * CHUNK_SIZE + 100;

async fn stored(fixture: &Fixture, blob: &[u8]) -> Metadata {
    fixture
        .store
        .put(&fixture.domain(), new_item("scan", blob.len()), blob)
        .await
        .unwrap()
}

fn by_id(id: &str) -> ConsumeDataInputV1 {
    ConsumeDataInputV1 {
        query: Query {
            ids: vec![id.to_owned()],
            ..Default::default()
        },
        keep_alive: false,
        ..Default::default()
    }
}

fn prefix_of(id: &str, held: &[u8]) -> Prefixes {
    let mut prefixes = Prefixes::new();
    let mut builder = MerkleBuilder::new();
    builder.update(held);
    prefixes.insert(id.to_owned(), builder).unwrap();
    prefixes
}

/// What one load of `id` delivered: where its content started, the bytes that arrived
/// (before the error, if any) and the error; and what the receiver says it sent.
struct Loaded {
    served: LoadSummary,
    offset: u64,
    content: Vec<u8>,
    error: Option<String>,
}

/// Where a load writes the item's content.
enum Into<'a> {
    /// `LoadedItem`'s `AsyncRead`.
    Memory,
    /// `LoadedItem::write_to_file`, into this file, cut to the item's offset first (as the
    /// client does with a partial download); `content` is then the file's.
    File(&'a std::path::Path),
}

/// Loads `id` with `prefixes` over a pipe whose consumer side ends after `cut` bytes.
async fn load(fixture: &Fixture, id: &str, prefixes: Prefixes, cut: Option<usize>) -> Loaded {
    load_into(fixture, id, prefixes, cut, Into::Memory).await
}

/// [`load`], into `into`.
async fn load_into(
    fixture: &Fixture,
    id: &str,
    prefixes: Prefixes,
    cut: Option<usize>,
    into: Into<'_>,
) -> Loaded {
    let (client, server) = pipe();
    let client = Cut::new(client, cut.unwrap_or(usize::MAX));
    let token = fixture.token(LOAD_V1);
    let mut offset = 0;
    let mut content = Vec::new();
    let consume = async {
        // Debug forms: they name the error's kind (`RootMismatch`), also inside io errors.
        let (mut consumer, _unsubscriber) =
            open_load_resuming(client, &token, DOMAIN, by_id(id), prefixes, Limits::DEFAULT)
                .await
                .map_err(|e| format!("{e:?}"))?;
        let mut item = consumer
            .next()
            .await
            .map_err(|e| format!("{e:?}"))?
            .expect("the item is stored");
        offset = item.offset();
        match into {
            Into::Memory => {
                item.read_to_end(&mut content)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
            }
            Into::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
                    .unwrap();
                file.set_len(offset).unwrap();
                item.write_to_file(file, path, |_| {})
                    .await
                    .map_err(|e| format!("{e:?}"))?;
            }
        }
        Ok::<_, String>(())
    };
    let (served, consumed) = tokio::join!(
        serve_load(
            server,
            &LOAD_INFO,
            &fixture.store,
            &fixture.keys,
            &Limits::DEFAULT
        ),
        consume
    );
    if let Into::File(path) = into {
        // None when the stream was cut before the item's frame.
        content = std::fs::read(path).unwrap_or_default();
    }
    Loaded {
        served: served.unwrap_or_default(),
        offset,
        content,
        error: consumed.err(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_load_sends_only_the_bytes_after_the_prefix_and_checks_the_whole_root() {
    let fixture = Fixture::new().await;
    let blob = data(SIZE);
    let item = stored(&fixture, &blob).await;
    let held = 3 * CHUNK_SIZE;

    let loaded = load(&fixture, &item.id, prefix_of(&item.id, &blob[..held]), None).await;
    assert_eq!(loaded.error, None);
    assert_eq!(loaded.offset, held as u64);
    assert_eq!(loaded.content, blob[held..]);
    assert_eq!(loaded.served.bytes, (SIZE - held) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_that_differs_from_the_stored_content_fails_the_root_check() {
    let fixture = Fixture::new().await;
    let blob = data(SIZE);
    let item = stored(&fixture, &blob).await;
    let mut wrong = blob[..2 * CHUNK_SIZE].to_vec();
    wrong[17] ^= 1;

    let loaded = load(&fixture, &item.id, prefix_of(&item.id, &wrong), None).await;
    let error = loaded.error.expect("the root check fails");
    assert!(error.contains("RootMismatch"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_longer_than_the_content_gets_the_whole_content_again() {
    let fixture = Fixture::new().await;
    let blob = data(2 * CHUNK_SIZE);
    let item = stored(&fixture, &blob).await;
    // Three chunks held of a two-chunk item: not this item's prefix, so no resume.
    let held = data(3 * CHUNK_SIZE);

    let loaded = load(&fixture, &item.id, prefix_of(&item.id, &held), None).await;
    assert_eq!(loaded.error, None);
    assert_eq!(loaded.offset, 0);
    assert_eq!(loaded.content, blob);
    assert_eq!(loaded.served.bytes, blob.len() as u64);
}

#[test]
fn a_prefix_must_be_whole_chunks() {
    let mut prefixes = Prefixes::new();
    let mut builder = MerkleBuilder::new();
    builder.update(&data(CHUNK_SIZE + 1));
    assert!(matches!(
        prefixes.insert("id".to_owned(), builder),
        Err(CapabilityError::PartialChunk { len }) if len == CHUNK_SIZE as u64 + 1
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A transfer cut anywhere continues from the last whole chunk the consumer holds.
    #[test]
    fn a_load_cut_anywhere_resumes_from_the_last_whole_chunk(cut in 0usize..SIZE) {
        runtime().block_on(async {
            let fixture = Fixture::new().await;
            let blob = data(SIZE);
            let item = stored(&fixture, &blob).await;

            // The cut counts every byte the consumer reads, frames included.
            let first = load(&fixture, &item.id, Prefixes::new(), Some(cut)).await;
            let held = first.content;
            prop_assert_eq!(&held[..], &blob[..held.len()]);
            let whole = held.len() / CHUNK_SIZE * CHUNK_SIZE;
            let prefixes = if whole > 0 { prefix_of(&item.id, &held[..whole]) } else { Prefixes::new() };

            let second = load(&fixture, &item.id, prefixes, None).await;
            prop_assert_eq!(second.error, None);
            prop_assert_eq!(second.offset, whole as u64);
            prop_assert_eq!(&second.content[..], &blob[whole..]);
            // Sent again: what the consumer held past its last whole chunk (under one
            // chunk), and nothing before it.
            prop_assert_eq!(second.served.bytes, (SIZE - whole) as u64);
            Ok(())
        })?;
    }

    /// Written into a file, a transfer cut anywhere leaves exactly the bytes that arrived
    /// (the writer sets the file's full length up front, and cuts it back), and the
    /// download resumed into the same file completes it.
    #[test]
    fn a_load_into_a_file_cut_anywhere_leaves_what_arrived_and_resumes_from_it(cut in 0usize..SIZE) {
        runtime().block_on(async {
            let fixture = Fixture::new().await;
            let blob = data(SIZE);
            let item = stored(&fixture, &blob).await;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("partial");

            let first = load_into(&fixture, &item.id, Prefixes::new(), Some(cut), Into::File(&path)).await;
            prop_assert!(first.error.is_some(), "a cut before the content's end fails");
            let held = first.content;
            prop_assert_eq!(&held[..], &blob[..held.len()]);
            let whole = held.len() / CHUNK_SIZE * CHUNK_SIZE;
            let prefixes = if whole > 0 { prefix_of(&item.id, &held[..whole]) } else { Prefixes::new() };

            let second = load_into(&fixture, &item.id, prefixes, None, Into::File(&path)).await;
            prop_assert_eq!(second.error, None);
            prop_assert_eq!(second.offset, whole as u64);
            prop_assert!(second.content == blob, "the file holds the whole item");
            Ok(())
        })?;
    }

    /// An upload cut anywhere in its content continues from the last whole chunk the
    /// receiver got: what goes again is what it received past that chunk, under one chunk.
    #[test]
    fn an_upload_cut_anywhere_resumes_from_the_last_whole_chunk_received(received in 0usize..SIZE) {
        runtime().block_on(async {
            let fixture = Fixture::new().await;
            let blob = data(SIZE);
            let before = frames_before_content(&fixture, SIZE);

            let first = upload(&fixture, &blob, Some(before + received)).await;
            prop_assert!(first.sent.is_err());

            let second = upload(&fixture, &blob, None).await;
            let sent = second.sent.unwrap();
            let whole = received / CHUNK_SIZE * CHUNK_SIZE;
            prop_assert_eq!(sent.resumed_from, whole as u64);
            prop_assert_eq!(sent.metadata.hash, Some(root_of(&blob).to_string()));
            // Sent twice: the bytes received past the last whole chunk.
            let again = received - whole;
            prop_assert!(again < CHUNK_SIZE);
            prop_assert_eq!(second.served.unwrap().bytes, (SIZE - whole) as u64);
            Ok(())
        })?;
    }

}

const KEY: &str = "scan.bin 2026-12-01T10:00:00Z";

/// What one resumable upload did: the sender's outcome and the receiver's summary.
struct Uploaded {
    sent: Result<Sent, String>,
    served: Result<StoreSummary, String>,
}

/// Uploads `blob` under `KEY` over a pipe whose receiver side ends after `cut` bytes.
async fn upload(fixture: &Fixture, blob: &[u8], cut: Option<usize>) -> Uploaded {
    let (client, server) = pipe();
    let server = Cut::new(server, cut.unwrap_or(usize::MAX));
    let token = fixture.token(STORE_V1);
    let send = async {
        let mut sender = StoreSender::open(client, &token, DOMAIN, Limits::DEFAULT)
            .await
            .map_err(|e| format!("{e:?}"))?;
        assert!(sender.resumes());
        let content = std::io::Cursor::new(blob);
        let sent = sender
            .send_resumable(new_item("scan", blob.len()), KEY, content)
            .await
            .map_err(|e| format!("{e:?}"))?;
        sender.finish().await.map_err(|e| format!("{e:?}"))?;
        Ok(sent)
    };
    let serve = fixture.serve_store(server);
    let (sent, served) = tokio::join!(send, serve);
    Uploaded {
        sent,
        served: served.map_err(|e| format!("{e:?}")),
    }
}

/// Bytes the receiver reads before the content of the first item of [`upload`].
fn frames_before_content(fixture: &Fixture, size: usize) -> usize {
    let handshake = DomainClusterHandshakeRequest {
        access_token: fixture.token(STORE_V1),
        domain_id: DOMAIN.into(),
    };
    let item = UpsertMetadata {
        resume_key: Some(KEY.into()),
        ..new_item("scan", size)
    };
    // The first stream of an item starts at 0: nothing is kept yet.
    let start = ResumeStart { offset: 0 };
    [
        encode_frame(&handshake).unwrap().len(),
        encode_frame(&item).unwrap().len(),
        encode_frame(&start).unwrap().len(),
    ]
    .iter()
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_upload_sends_only_what_the_receiver_did_not_keep() {
    let fixture = Fixture::new().await;
    let blob = data(SIZE);
    let before = frames_before_content(&fixture, SIZE);
    let received = 4 * CHUNK_SIZE + 300;

    let first = upload(&fixture, &blob, Some(before + received)).await;
    assert!(first.sent.is_err());
    assert!(first.served.is_err());
    let listed = fixture
        .store
        .query(&fixture.domain(), &Query::default())
        .await;
    assert!(
        listed.unwrap().is_empty(),
        "nothing of a cut upload is visible"
    );

    let second = upload(&fixture, &blob, None).await;
    let sent = second.sent.unwrap();
    assert_eq!(sent.resumed_from, 4 * CHUNK_SIZE as u64);
    assert_eq!(sent.metadata.hash, Some(root_of(&blob).to_string()));
    let served = second.served.unwrap();
    assert_eq!(served.bytes, (SIZE - 4 * CHUNK_SIZE) as u64);
    assert_eq!(served.resumed_bytes, 4 * CHUNK_SIZE as u64);
    let (_, mut content) = fixture
        .store
        .get(&fixture.domain(), &sent.metadata.id)
        .await
        .unwrap();
    let mut stored = Vec::new();
    content.read_to_end(&mut stored).await.unwrap();
    assert_eq!(stored, blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_bytes_of_other_content_under_the_same_key_are_not_skipped() {
    let fixture = Fixture::new().await;
    let old = data(SIZE);
    let before = frames_before_content(&fixture, SIZE);
    let first = upload(&fixture, &old, Some(before + 5 * CHUNK_SIZE)).await;
    assert!(first.sent.is_err());

    // The file changed since, at the same size.
    let mut new = old.clone();
    new[10] ^= 0xff;
    let second = upload(&fixture, &new, None).await;
    let sent = second.sent.unwrap();
    assert_eq!(sent.resumed_from, 0);
    assert_eq!(sent.metadata.hash, Some(root_of(&new).to_string()));
    assert_eq!(second.served.unwrap().bytes, SIZE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_without_the_extension_gets_the_whole_content_and_no_resume_key() {
    let fixture = Fixture::new().await;
    let (client, mut server) = pipe();
    let token = fixture.token(STORE_V1);
    let blob = data(3 * CHUNK_SIZE);
    // A v1 receiver: it names no extension and reads content right after the item.
    let v1 = async {
        let _: DomainClusterHandshakeRequest = read_message(&mut server, 1 << 20).await.unwrap();
        let ok = DomainClusterHandshakeResponse {
            code: Code::Ok as i32,
            err_msg: String::new(),
            extensions: Vec::new(),
        };
        write_message(&mut server, &ok).await.unwrap();
        let item: UpsertMetadata = read_message(&mut server, 1 << 20).await.unwrap();
        let mut content = vec![0; item.size as usize];
        server.read_exact(&mut content).await.unwrap();
        let answer = Metadata {
            name: item.name.clone(),
            size: item.size,
            id: "1".into(),
            hash: Some(root_of(&content).to_string()),
            ..Default::default()
        };
        write_message(&mut server, &answer).await.unwrap();
        (item, content)
    };
    let send = async {
        let mut sender = StoreSender::open(client, &token, DOMAIN, Limits::DEFAULT)
            .await
            .unwrap();
        assert!(!sender.resumes());
        let item = new_item("scan", blob.len());
        let content = std::io::Cursor::new(&blob);
        sender.send_resumable(item, KEY, content).await.unwrap()
    };
    let ((item, content), sent) = tokio::join!(v1, send);
    assert_eq!(item.resume_key, None);
    assert_eq!(content, blob);
    assert_eq!(sent.resumed_from, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_was_not_offered_loses_the_stream_and_stores_nothing() {
    let fixture = Fixture::new().await;
    let (mut client, server) = pipe();
    let token = fixture.token(STORE_V1);
    let liar = async {
        let ok = handshake_by_hand(&mut client, &token).await;
        assert!(ok.extensions.iter().any(|e| e == "resume"));
        let item = UpsertMetadata {
            resume_key: Some(KEY.into()),
            ..new_item("scan", SIZE)
        };
        write_message(&mut client, &item).await.unwrap();
        let offer: ResumeOffer = read_message(&mut client, 1 << 20).await.unwrap();
        assert_eq!((offer.offset, offer.prefix_hash), (0, None));
        // Claims the receiver holds two chunks it never offered.
        let start = ResumeStart {
            offset: 2 * CHUNK_SIZE as u64,
        };
        write_message(&mut client, &start).await.unwrap();
        client
    };
    let serve = fixture.serve_store(server);
    let (_client, served) = tokio::join!(liar, serve);
    assert!(
        matches!(served, Err(CapabilityError::Unexpected { .. })),
        "{served:?}"
    );
    let listed = fixture
        .store
        .query(&fixture.domain(), &Query::default())
        .await;
    assert!(listed.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_key_over_the_limit_is_refused_by_both_sides() {
    let fixture = Fixture::new().await;
    let long = "k".repeat(domain_capabilities::MAX_RESUME_KEY_LEN + 1);
    let token = fixture.token(STORE_V1);

    let (client, server) = pipe();
    let send = async {
        let mut sender = StoreSender::open(client, &token, DOMAIN, Limits::DEFAULT).await?;
        let content = std::io::Cursor::new(vec![0; 10]);
        sender
            .send_resumable(new_item("scan", 10), &long, content)
            .await
    };
    let serve = fixture.serve_store(server);
    let (sent, _) = tokio::join!(send, serve);
    assert!(
        matches!(sent, Err(CapabilityError::BadResumeKey { len }) if len == long.len()),
        "{sent:?}"
    );

    // A sender that sends one anyway loses its stream.
    let (mut client, server) = pipe();
    let send = async {
        handshake_by_hand(&mut client, &token).await;
        let item = UpsertMetadata {
            resume_key: Some(long.clone()),
            ..new_item("scan", 10)
        };
        write_message(&mut client, &item).await.unwrap();
        client
    };
    let serve = fixture.serve_store(server);
    let (_client, served) = tokio::join!(send, serve);
    assert!(
        matches!(served, Err(CapabilityError::BadResumeKey { len }) if len == long.len()),
        "{served:?}"
    );
}

/// Opens a `/store/v1` stream by hand, as a peer that need not follow the protocol
/// does, and returns the receiver's answer.
async fn handshake_by_hand(
    client: &mut tokio::io::DuplexStream,
    token: &str,
) -> DomainClusterHandshakeResponse {
    let request = DomainClusterHandshakeRequest {
        access_token: token.to_owned(),
        domain_id: DOMAIN.into(),
    };
    write_message(client, &request).await.unwrap();
    read_message(client, 1 << 20).await.unwrap()
}

/// A stream whose read side ends (as a dropped connection does) after `left` bytes.
struct Cut<S> {
    inner: S,
    left: usize,
}

impl<S> Cut<S> {
    fn new(inner: S, left: usize) -> Self {
        Self { inner, left }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Cut<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        let room = buf.remaining().min(self.left);
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let got = limited.filled().len();
        buf.advance(got);
        this.left -= got;
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Cut<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
