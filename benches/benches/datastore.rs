//! The local datastore against the disk it sits on, with each catalog: `redb` (the
//! default, a file beside the blobs) and `postgres` (a real PostgreSQL server this bench
//! starts with `LocalPostgres` on loopback; skipped with a line when none is installed).
//!
//! Group `datastore_put` (256 MiB, in the same run, in the same folder):
//! - `a_raw_write_fsync`: `std::fs` writes of 1 MiB then `sync_all`, the disk limit;
//! - `b_put/<catalog>`: [`LocalDatastore::put`] of the same bytes from memory (stream,
//!   hash, write, fsync, rename, folder fsync, metadata commit). Target: b >= 0.9 x a in
//!   throughput, and postgres >= 0.9 x redb.
//!
//! Group `datastore_metadata`, per catalog:
//! - `c_put_10k_small_items/<catalog>`: 10 000 puts of a 64-byte item, 256 in flight, all
//!   with the same content (its blob is written once): the metadata path with its commit
//!   shared by concurrent writers. Targets: redb >= 10 000 items/s; postgres >= 0.5 x redb.
//! - `d_query_by_name/<catalog>`, `e_query_by_data_type/<catalog>`,
//!   `f_query_by_property/<catalog>`: queries of a store holding 100 000 items, by exact
//!   name (100 matches), data type (10 000 matches) and one property (100 matches; redb has
//!   no property index and reads every item). Throughput counts the items answered.
//!   Target: a query by property on postgres <= 20 ms.
//!
//! Each timed put's item is deleted outside the timing, so every put writes a new blob.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use std::path::Path;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use domain_benches::{MIB, pattern};
use domain_datastore::{Datastore, LocalDatastore};
use domain_postgres::LocalPostgres;
use domain_proto::DomainId;
use domain_proto::domain_data::{Query, UpsertMetadata};
use futures::StreamExt;

const PUT_LEN: usize = 256 * MIB;
const SMALL_ITEMS: usize = 10_000;
const IN_FLIGHT: usize = 256;
const QUERY_ITEMS: usize = 100_000;

fn upsert(name: String, data_type: String, size: usize) -> UpsertMetadata {
    UpsertMetadata {
        name,
        data_type,
        size: u32::try_from(size).unwrap(),
        is_new: true,
        ..Default::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The stores of this run: redb in `dir/redb`, and, with a server, PostgreSQL (schema
/// `schema`) with blobs in `dir/postgres`.
fn stores(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    server: Option<&LocalPostgres>,
    schema: &str,
) -> Vec<(&'static str, LocalDatastore)> {
    let mut stores = vec![(
        "redb",
        runtime
            .block_on(LocalDatastore::open(dir.join("redb")))
            .unwrap(),
    )];
    if let Some(server) = server {
        let store = runtime
            .block_on(server.open_store(&dir.join("postgres"), schema))
            .unwrap();
        stores.push(("postgres", store));
    }
    stores
}

/// A PostgreSQL server for this run, or `None` (said once) when none can start here.
fn postgres() -> Option<LocalPostgres> {
    match LocalPostgres::start() {
        Ok(server) => Some(server),
        Err(error) => {
            eprintln!("datastore bench: no PostgreSQL catalog in this run: {error}");
            None
        }
    }
}

/// Puts `count` 64-byte items of identical content with [`IN_FLIGHT`] at a time; item i is
/// named `name-{i % 1000}` with data type `type-{i % 10}` and property `cell` =
/// `{i % 1000}`.
async fn put_small_items(store: &LocalDatastore, domain: &DomainId, count: usize) {
    let content = [7_u8; 64];
    futures::stream::iter(0..count)
        .map(|i| {
            let mut item = upsert(format!("name-{}", i % 1000), format!("type-{}", i % 10), 64);
            item.properties = [
                ("cell".to_owned(), (i % 1000).to_string()),
                ("site".to_owned(), "bench".to_owned()),
            ]
            .into();
            async move { store.put(domain, item, &content[..]).await.unwrap() }
        })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|_| async {})
        .await;
}

fn put(c: &mut Criterion, server: Option<&LocalPostgres>) {
    let data = pattern(PUT_LEN);
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(&runtime, dir.path(), server, "bench_put");
    let domain = DomainId::new("bench").unwrap();
    let raw_path = dir.path().join("redb").join("raw-write");

    let mut group = c.benchmark_group("datastore_put");
    group
        .throughput(Throughput::Bytes(PUT_LEN as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(12));

    group.bench_function("a_raw_write_fsync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let mut file = std::fs::File::create(&raw_path).unwrap();
                for batch in data.chunks(MIB) {
                    file.write_all(batch).unwrap();
                }
                file.sync_all().unwrap();
                drop(file);
                total += started.elapsed();
                std::fs::remove_file(&raw_path).unwrap();
            }
            total
        });
    });
    for (catalog, store) in &stores {
        group.bench_function(format!("b_put/{catalog}"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let item = upsert("big".into(), "bin".into(), PUT_LEN);
                        let started = Instant::now();
                        let stored = store.put(&domain, item, data.as_slice()).await.unwrap();
                        total += started.elapsed();
                        store.delete(&domain, &stored.id).await.unwrap();
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

fn metadata(c: &mut Criterion, server: Option<&LocalPostgres>) {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(&runtime, dir.path(), server, "bench_metadata");

    let mut group = c.benchmark_group("datastore_metadata");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));

    for (catalog, store) in &stores {
        group.throughput(Throughput::Elements(SMALL_ITEMS as u64));
        let mut round = 0_u32;
        group.bench_function(format!("c_put_10k_small_items/{catalog}"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        // A fresh domain per round, so the tables do not grow across samples.
                        round += 1;
                        let domain = DomainId::new(format!("insert-{round}")).unwrap();
                        let started = Instant::now();
                        put_small_items(store, &domain, SMALL_ITEMS).await;
                        total += started.elapsed();
                    }
                    total
                })
            });
        });

        let domain = DomainId::new("query").unwrap();
        runtime.block_on(put_small_items(store, &domain, QUERY_ITEMS));
        let by_name = Query {
            names: vec!["name-42".into()],
            ..Default::default()
        };
        let by_type = Query {
            data_types: vec!["type-3".into()],
            ..Default::default()
        };
        let by_property = Query {
            properties: [("cell".to_owned(), "42".to_owned())].into(),
            ..Default::default()
        };
        for (name, query, matches) in [
            ("d_query_by_name", by_name, QUERY_ITEMS / 1000),
            ("e_query_by_data_type", by_type, QUERY_ITEMS / 10),
            ("f_query_by_property", by_property, QUERY_ITEMS / 1000),
        ] {
            group.throughput(Throughput::Elements(matches as u64));
            group.bench_function(format!("{name}/{catalog}"), |b| {
                b.iter(|| {
                    let found = runtime.block_on(store.query(&domain, &query)).unwrap();
                    assert_eq!(found.len(), matches);
                });
            });
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let server = postgres();
    put(c, server.as_ref());
    metadata(c, server.as_ref());
}

criterion_group!(datastore, benches);
criterion_main!(datastore);
