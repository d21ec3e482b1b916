//! The `/store/v1` protocol's overhead over the datastore it feeds.
//!
//! Group `capabilities_store` (128 MiB per item, into one store in a temporary folder):
//! - `a_datastore_put`: the datastore's `put` of the bytes from memory, the baseline;
//! - `b_store_v1_duplex`: the same bytes through `/store/v1`: handshake with token
//!   verification, `StoreSender::send_bytes` hashing its own root on a thread of its own
//!   while it streams the bytes in 1 MiB batches, over an 8 MiB `tokio::io::duplex` to
//!   `serve_store`, which streams them into the same `put` and answers the root the
//!   sender checks;
//! - `c_store_v1_reader_duplex`: as b, with the content from a reader (`StoreSender::send`),
//!   as files are sent: each batch is copied out of the reader;
//! - `d_store_v1_resumable_duplex`: as c, with `StoreSender::send_resumable` under a fresh
//!   key (what `domain upload` does for items of 1 MiB or more): the receiver's offer
//!   (nothing kept) costs a round trip and the put goes through `put_resumable`. d / c is
//!   the price of the resume extension.
//!
//! What each goes through is `domain_benches::store`, shared with the `store_paired`
//! bench, which runs the four in turn, round after round, and prints the ratios of each
//! round: criterion measures a, then b, and so on, seconds apart, while this machine's
//! disk drifts in speed from one second to the next.
//!
//! Target: b >= 0.95 x a in throughput. Both ends share this machine's cores, so b does
//! the sender's work (its hash, its copy into the pipe) on top of a's: b can match a
//! only on the cores a leaves idle. Each timed item is deleted outside the timing, so
//! every put writes (and fsyncs) a new blob.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use domain_benches::store::{LEN, Path, StoreBench};

fn store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bench = runtime.block_on(StoreBench::open()).unwrap();

    let mut group = c.benchmark_group("capabilities_store");
    group
        .throughput(Throughput::Bytes(LEN as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for path in Path::ALL {
        group.bench_function(path.name(), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += bench.store_once(path).await.unwrap();
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
