//! Throughput of the Merkle core against BLAKE3's own limits, on one 64 MiB buffer.
//!
//! - `a_blake3_one_shot`: `blake3::hash` over the whole buffer, the ceiling;
//! - `b_blake3_per_leaf`: `blake3::hash` over each 7168-byte leaf, the per-leaf limit every
//!   sequential tree pays;
//! - `c_builder_writes_*`: [`MerkleBuilder::update`] fed in writes of one chunk, 64 KiB and
//!   1 MiB (target: each at 0.9 × a or better: the builder gathers leaves into full SIMD
//!   batches across writes);
//! - `d_parallel_*`: the rayon path, [`root_of`] in one call and
//!   [`MerkleBuilder::update_parallel`] in 1 MiB writes (target: 1.8 × b or better on
//!   two cores);
//! - `e_writer_sink_64KiB`: [`HashingWriter`] into `tokio::io::sink()` in 64 KiB writes.
//!
//! Group `merkle_pipe`, the sending loop of `/store/v1` (1 MiB batches written into an
//! 8 MiB `tokio::io::duplex` that a task on the other core drains):
//! - `f_pipe_unhashed`: the writes alone, the floor;
//! - `g_pipe_hashed_inline`: each batch hashed by the writing task after its write;
//! - `h_pipe_hashed_in_background`: each batch hashed by a [`BackgroundBuilder`] while
//!   it is written, as the sender does. g costs about f plus `c_builder_writes_1MiB`;
//!   h, with a core to spare, about the larger of the two.
//!
//! `cargo xtask bench` runs this and prints each result as a ratio to a and b.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use domain_merkle::{BackgroundBuilder, CHUNK_SIZE, Cores, HashingWriter, MerkleBuilder, root_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1 << 20;
const DATA_LEN: usize = 64 * MIB;

/// `len` bytes where byte i = i mod 251, the data of the shared vectors: no two chunks
/// hold the same bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..=250_u8).cycle().take(len).collect()
}

fn builder_in_writes(data: &[u8], write: usize) -> domain_merkle::Root {
    let mut builder = MerkleBuilder::new();
    for piece in data.chunks(write) {
        builder.update(piece);
    }
    builder.finalize()
}

/// A group over [`DATA_LEN`] bytes per iteration. Each iteration takes tens of
/// milliseconds: a few flat samples give a stable mean and keep the whole run to a couple
/// of minutes.
fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .throughput(Throughput::Bytes(DATA_LEN as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group
}

fn merkle(c: &mut Criterion) {
    let data = pattern(DATA_LEN);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let mut group = group(c, "merkle");

    group.bench_function("a_blake3_one_shot", |b| {
        b.iter(|| blake3::hash(black_box(&data)));
    });
    group.bench_function("a_copy_in_7KiB_writes", |b| {
        let mut gathered = vec![0_u8; 16 * CHUNK_SIZE];
        b.iter(|| {
            for (i, piece) in black_box(&data).chunks(CHUNK_SIZE).enumerate() {
                let at = i % 16 * CHUNK_SIZE;
                gathered[at..at + piece.len()].copy_from_slice(piece);
                black_box(&gathered);
            }
        });
    });
    group.bench_function("b_blake3_per_leaf", |b| {
        b.iter(|| {
            for leaf in black_box(&data).chunks(CHUNK_SIZE) {
                black_box(blake3::hash(leaf));
            }
        });
    });
    for (name, write) in [
        ("c_builder_writes_7KiB", CHUNK_SIZE),
        ("c_builder_writes_64KiB", 64 << 10),
        ("c_builder_writes_1MiB", MIB),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| builder_in_writes(black_box(&data), write));
        });
    }
    group.bench_function("d_parallel_root_of", |b| {
        b.iter(|| root_of(black_box(&data)));
    });
    group.bench_function("d_parallel_writes_1MiB", |b| {
        b.iter(|| {
            let mut builder = MerkleBuilder::new();
            for piece in black_box(&data).chunks(MIB) {
                builder.update_parallel(piece);
            }
            builder.finalize()
        });
    });
    group.bench_function("e_writer_sink_64KiB", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut writer = HashingWriter::new(tokio::io::sink());
                for piece in black_box(&data).chunks(64 << 10) {
                    writer.write_all(piece).await.unwrap();
                }
                writer.root()
            })
        });
    });
    group.finish();
}

/// The sender's loop of `/store/v1` reduced to its two costs: each 1 MiB batch is written
/// into an 8 MiB pipe (drained by a task on the other core) and hashed.
fn pipe(c: &mut Criterion) {
    let data = Bytes::from(pattern(DATA_LEN));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();

    let mut group = group(c, "merkle_pipe");
    for hashing in [Hashing::None, Hashing::Inline, Hashing::Background] {
        group.bench_function(hashing.name(), |b| {
            b.iter(|| runtime.block_on(write_into_pipe(&data, hashing)));
        });
    }
    group.finish();
}

/// Where [`pipe`] hashes each batch.
#[derive(Clone, Copy)]
enum Hashing {
    /// Not at all: the pipe alone.
    None,
    /// On the writing task, after the write.
    Inline,
    /// On a [`BackgroundBuilder`], while the batch is written.
    Background,
}

impl Hashing {
    fn name(self) -> &'static str {
        match self {
            Self::None => "f_pipe_unhashed",
            Self::Inline => "g_pipe_hashed_inline",
            Self::Background => "h_pipe_hashed_in_background",
        }
    }
}

async fn write_into_pipe(data: &Bytes, hashing: Hashing) -> Option<domain_merkle::Root> {
    let (mut writer, mut reader) = tokio::io::duplex(8 * MIB);
    let drain = tokio::spawn(async move {
        let mut buf = vec![0_u8; MIB];
        while reader.read(&mut buf).await.unwrap() > 0 {}
    });
    let mut inline = MerkleBuilder::new();
    let background = BackgroundBuilder::spawn(MerkleBuilder::new(), 2, Cores::One, drop::<Bytes>);
    for start in (0..data.len()).step_by(MIB) {
        let batch = data.slice(start..data.len().min(start + MIB));
        match hashing {
            Hashing::None => {}
            Hashing::Inline => {
                writer.write_all(&batch).await.unwrap();
                inline.update(&batch);
                continue;
            }
            Hashing::Background => background.push(batch.clone()).await.unwrap(),
        }
        writer.write_all(&batch).await.unwrap();
    }
    drop(writer);
    drain.await.unwrap();
    let background = background.finish().await.unwrap();
    match hashing {
        Hashing::None => None,
        Hashing::Inline => Some(inline.finalize()),
        Hashing::Background => Some(background.finalize()),
    }
}

criterion_group!(benches, merkle, pipe);
criterion_main!(benches);
