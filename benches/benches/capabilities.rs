//! The `/store/v1` protocol's overhead over the datastore it feeds.
//!
//! Group `capabilities_store` (128 MiB, in the same run, into the same store):
//! - `a_datastore_put`: [`LocalDatastore::put`] of the bytes from memory;
//! - `b_store_v1_duplex`: the same bytes through `/store/v1` — handshake with token
//!   verification, [`StoreSender::send_bytes`] hashing its own root on a thread of its
//!   own while it streams the bytes in 1 MiB batches, over a `tokio::io::duplex` to
//!   [`serve_store`], which streams them into the same `put` and answers the root the
//!   sender checks. The pipe holds 8 MiB, the order of what a real transport keeps in
//!   flight (loopback TCP's socket buffers, a yamux window); a pipe of one batch would
//!   make the two sides take turns, which no network does.
//!
//! - `c_store_v1_reader_duplex`: as b, with the content from a reader
//!   ([`StoreSender::send`]), as files are sent: each batch is copied out of the reader.
//! - `d_store_v1_resumable_duplex`: as c, with [`StoreSender::send_resumable`] under a
//!   fresh key (what `domain upload` does for items of 1 MiB or more): the receiver's
//!   offer (nothing kept) costs a round trip and the put goes through `put_resumable`.
//!   d / c is the price of the resume extension.
//!
//! Target: b >= 0.95 x a in throughput. Both ends share this machine's cores, so b does
//! the sender's work (its hash, its copy into the pipe) on top of a's: b can match a
//! only on the cores a leaves idle. Each timed item is deleted outside the timing, so
//! every put writes (and fsyncs) a new blob.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use domain_auth::{DomainKey, TaskClaims};
use domain_benches::{MIB, pattern};
use domain_capabilities::{Limits, StaticKeys, StoreSender, StreamInfo, serve_store};
use domain_datastore::{Datastore, DomainId, LocalDatastore};
use domain_proto::domain_data::UpsertMetadata;
use domain_proto::protocols::STORE_V1;

const LEN: usize = 128 * MIB;
const DOMAIN: &str = "bench";
const INFO: StreamInfo<'static> = StreamInfo {
    local_peer: "receiver",
    remote_peer: "sender",
    protocol: STORE_V1,
};

fn item() -> UpsertMetadata {
    UpsertMetadata {
        name: "big".into(),
        data_type: "bin".into(),
        size: u32::try_from(LEN).unwrap(),
        is_new: true,
        ..Default::default()
    }
}

fn store(c: &mut Criterion) {
    let data = Bytes::from(pattern(LEN));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = runtime
        .block_on(LocalDatastore::open(dir.path().join("store")))
        .unwrap();
    let domain = DomainId::new(DOMAIN).unwrap();
    let key = DomainKey::generate(DOMAIN).unwrap();
    let keys = StaticKeys::new().with(DOMAIN, key.public_key());

    let mut group = c.benchmark_group("capabilities_store");
    group
        .throughput(Throughput::Bytes(LEN as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));

    group.bench_function("a_datastore_put", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let stored = store.put(&domain, item(), &data[..]).await.unwrap();
                    total += started.elapsed();
                    store.delete(&domain, &stored.id).await.unwrap();
                }
                total
            })
        });
    });
    let sends = [
        ("b_store_v1_duplex", Send::Bytes),
        ("c_store_v1_reader_duplex", Send::Reader),
        ("d_store_v1_resumable_duplex", Send::Resumable),
    ];
    for (name, send) in sends {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (elapsed, id) = store_v1(&store, &keys, &key, &data, send).await;
                        total += elapsed;
                        store.delete(&domain, &id).await.unwrap();
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

/// How a bench hands the content to the sender.
#[derive(Clone, Copy)]
enum Send {
    Bytes,
    Reader,
    Resumable,
}

/// One `/store/v1` stream of `data` into `store`: how long it took, and the item's id.
async fn store_v1(
    store: &LocalDatastore,
    keys: &StaticKeys,
    key: &DomainKey,
    data: &Bytes,
    send: Send,
) -> (Duration, String) {
    let claims = TaskClaims::new(
        DOMAIN,
        "job",
        "task",
        INFO.remote_peer,
        INFO.local_peer,
        STORE_V1,
        SystemTime::now(),
        Duration::from_secs(600),
    );
    let token = key.issue(&claims).unwrap();
    let (client, server) = tokio::io::duplex(8 * MIB);
    let started = Instant::now();
    let receiver = tokio::spawn({
        let (store, keys) = (store.clone(), keys.clone());
        async move { serve_store(server, &INFO, &store, &keys, &Limits::DEFAULT).await }
    });
    let mut sender = StoreSender::open(client, &token, DOMAIN, Limits::DEFAULT)
        .await
        .unwrap();
    let stored = match send {
        Send::Bytes => sender.send_bytes(item(), data.clone()).await.unwrap(),
        Send::Reader => sender.send(item(), &data[..]).await.unwrap(),
        Send::Resumable => {
            // A fresh key per stream: nothing kept, as for a first upload.
            static STREAMS: AtomicU64 = AtomicU64::new(0);
            let resume_key = format!("bench {}", STREAMS.fetch_add(1, Ordering::Relaxed));
            let content = std::io::Cursor::new(&data[..]);
            let sent = sender.send_resumable(item(), &resume_key, content).await;
            sent.unwrap().metadata
        }
    };
    sender.finish().await.unwrap();
    receiver.await.unwrap().unwrap();
    (started.elapsed(), stored.id)
}

criterion_group!(benches, store);
criterion_main!(benches);
