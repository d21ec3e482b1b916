//! Resuming a `/load/v1` transfer: the consumer holds a prefix of whole chunks, the
//! receiver sends only the rest, and the root is still checked over the whole content.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};

use common::{DOMAIN, Fixture, LOAD_INFO, data, new_item, pipe};
use domain_capabilities::{
    CapabilityError, Limits, LoadSummary, Prefixes, open_load_resuming, serve_load,
};
use domain_datastore::{CHUNK_SIZE, Datastore, MerkleBuilder};
use domain_proto::domain_data::{Metadata, Query};
use domain_proto::protocols::LOAD_V1;
use domain_proto::task::ConsumeDataInputV1;
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

/// Loads `id` with `prefixes` over a pipe whose consumer side ends after `cut` bytes.
async fn load(fixture: &Fixture, id: &str, prefixes: Prefixes, cut: Option<usize>) -> Loaded {
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
        item.read_to_end(&mut content)
            .await
            .map_err(|e| format!("{e:?}"))?;
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
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
