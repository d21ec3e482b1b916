//! The small-items part of `cargo xtask bench e2e`: a folder of many small files (2,000
//! of 4 KiB by default, the images and poses of a scanned room) uploaded with one
//! `domain upload` straight to a node, then downloaded with one `domain download`, each
//! counted in items per second.
//!
//! The limit it is held against is measured in the same run, on the same disk: the local
//! datastore storing the same items from memory, 256 puts in flight, every item durable
//! before its put returns. An upload adds the network, the handshake and the client's file
//! reads to that; a download adds the network and the client's durable writes of the
//! files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use domain_datastore::{Datastore, LocalDatastore};
use domain_proto::DomainId;
use domain_proto::domain_data::UpsertMetadata;
use domain_proto::protocols::{LOAD_V1, STORE_V1};
use futures::StreamExt as _;

use super::{BenchCluster, DOMAIN, Transport, median, path_arg, say, verdict};

/// Puts in flight in the local baseline: as the datastore bench has them.
const IN_FLIGHT: usize = 256;
/// Minimum items per second up and down.
const TARGET_ITEMS_PER_S: f64 = 10_000.0;
/// Minimum rate up and down, as a multiple of the local datastore's.
const TARGET_RATIO: f64 = 0.5;

/// Items per second of one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Round {
    /// The local datastore, items from memory.
    local: f64,
    /// `domain upload` of the folder to a node.
    upload: f64,
    /// `domain download` of every item from that node.
    download: f64,
}

/// What the part found.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Found {
    items: usize,
    item_size: usize,
    rounds: Vec<Round>,
}

/// The content of item `i`: distinct from every other, so that each is a blob of its own.
fn content(i: usize, size: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..size).map(|j| ((i * 7 + j * 31) % 251) as u8).collect();
    let tag = (i as u64).to_le_bytes();
    let n = tag.len().min(size);
    bytes[..n].copy_from_slice(&tag[..n]);
    bytes
}

/// Runs `rounds` rounds of `items` items of `item_size` bytes.
pub(super) fn measure(
    cluster: &BenchCluster<'_>,
    dir: &Path,
    items: usize,
    item_size: usize,
    rounds: u32,
) -> anyhow::Result<Found> {
    let folder = dir.join("small");
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    for i in 0..items {
        let path = folder.join(format!("item-{i:05}.bin"));
        std::fs::write(&path, content(i, item_size))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut found = Found {
        items,
        item_size,
        rounds: Vec::new(),
    };
    for round in 1..=rounds {
        let store = dir.join(format!("small-local-{round}"));
        let local = runtime.block_on(local_puts(&store, items, item_size))?;
        std::fs::remove_dir_all(&store).with_context(|| format!("removing {}", store.display()))?;
        let (upload, download) = over_the_network(cluster, &folder, dir, items, round)?;
        let rates = Round {
            local: per_s(items, local),
            upload: per_s(items, upload),
            download: per_s(items, download),
        };
        say(&format!(
            "round {round}/{rounds}: {items} items of {item_size} B: local puts {:.0}/s, upload {:.0}/s, download {:.0}/s",
            rates.local, rates.upload, rates.download
        ));
        found.rounds.push(rates);
    }
    std::fs::remove_dir_all(&folder).with_context(|| format!("removing {}", folder.display()))?;
    Ok(found)
}

/// Stores the items in a local datastore at `store`, [`IN_FLIGHT`] at a time; the time
/// from the first put to the last answer.
async fn local_puts(store: &Path, items: usize, item_size: usize) -> anyhow::Result<Duration> {
    let datastore = LocalDatastore::open(store)
        .await
        .with_context(|| format!("opening a datastore in {}", store.display()))?;
    let domain = DomainId::new(DOMAIN)?;
    let contents: Vec<Vec<u8>> = (0..items).map(|i| content(i, item_size)).collect();
    let started = Instant::now();
    let mut puts = futures::stream::iter(contents.iter().enumerate())
        .map(|(i, bytes)| {
            let item = UpsertMetadata {
                name: format!("item-{i:05}.bin"),
                data_type: "bin".into(),
                size: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                is_new: true,
                ..Default::default()
            };
            datastore.put(&domain, item, &bytes[..])
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(put) = puts.next().await {
        put.context("a local put")?;
    }
    Ok(started.elapsed())
}

/// Uploads the folder to a fresh node over TCP and downloads every item back; the time
/// of each `domain` process, start to exit.
fn over_the_network(
    cluster: &BenchCluster<'_>,
    folder: &Path,
    dir: &Path,
    items: usize,
    round: u32,
) -> anyhow::Result<(Duration, Duration)> {
    let node = cluster.start_node(&format!("node-small-{round}"))?;
    let (addr, peer) = node.addr(Transport::Tcp)?;
    let addr = addr.to_string();
    let store_token = cluster.token(&node.name, peer, STORE_V1)?;
    let folder_arg = path_arg(folder);
    let upload = [
        "upload",
        &folder_arg,
        "--domain",
        DOMAIN,
        "--node",
        &addr,
        "--token",
        &store_token,
    ];
    let (output, uploaded) = cluster.timed_domain(&upload, node.pid)?;
    let lines = count_lines(&output.stdout);
    ensure!(
        lines == items,
        "domain upload printed {lines} items, not {items}"
    );

    let out: PathBuf = dir.join("small-download");
    let load_token = cluster.token(&node.name, peer, LOAD_V1)?;
    let out_arg = path_arg(&out);
    let download = [
        "download",
        "--domain",
        DOMAIN,
        "--out",
        &out_arg,
        "--node",
        &addr,
        "--token",
        &load_token,
    ];
    let (output, downloaded) = cluster.timed_domain(&download, node.pid)?;
    let lines = count_lines(&output.stdout);
    ensure!(
        lines == items,
        "domain download printed {lines} items, not {items}"
    );
    let files = std::fs::read_dir(&out)
        .with_context(|| format!("reading {}", out.display()))?
        .count();
    ensure!(
        files == items,
        "{} holds {files} files, not {items}",
        out.display()
    );
    std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    cluster.remove_node(node)?;
    Ok((uploaded.took, downloaded.took))
}

fn count_lines(stdout: &str) -> usize {
    stdout.lines().filter(|l| !l.trim().is_empty()).count()
}

fn per_s(items: usize, took: Duration) -> f64 {
    items as f64 / took.as_secs_f64().max(1e-9)
}

/// The medians, the ratios to the local datastore and the target checks, as printed.
pub(super) fn report(found: &Found) -> String {
    let median_of = |value: fn(&Round) -> f64| {
        let values: Vec<f64> = found.rounds.iter().map(value).collect();
        median(&values).unwrap_or(0.0)
    };
    let local = median_of(|r| r.local);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsmall items: {} of {} B, median of {} rounds",
        found.items,
        found.item_size,
        found.rounds.len()
    );
    let _ = writeln!(out, "{:<40} {:>10} {:>8}", "", "items/s", "x local");
    let _ = writeln!(
        out,
        "{:<40} {local:>10.0} {:>8.2}",
        "local datastore puts", 1.0
    );
    for (label, rate) in [
        ("domain upload of the folder (TCP)", median_of(|r| r.upload)),
        (
            "domain download of every item (TCP)",
            median_of(|r| r.download),
        ),
    ] {
        let _ = writeln!(
            out,
            "{label:<40} {rate:>10.0} {:>8.2}",
            rate / local.max(1e-9)
        );
    }
    let _ = writeln!(out);
    for (what, rate) in [
        ("upload", median_of(|r| r.upload)),
        ("download", median_of(|r| r.download)),
    ] {
        let ratio = rate / local.max(1e-9);
        let _ = writeln!(
            out,
            "target small-item {what} >= {TARGET_ITEMS_PER_S:.0} items/s and >= {TARGET_RATIO:.2} x local: {rate:.0} items/s, {ratio:.2} x, {}",
            verdict(rate >= TARGET_ITEMS_PER_S && ratio >= TARGET_RATIO)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_has_content_of_its_own() {
        let contents: std::collections::BTreeSet<Vec<u8>> =
            (0..3000).map(|i| content(i, 4096)).collect();
        assert_eq!(contents.len(), 3000);
        assert_eq!(content(5, 3).len(), 3);
    }

    #[test]
    fn report_holds_each_direction_against_the_local_rate_and_the_floor() {
        let found = Found {
            items: 2000,
            item_size: 4096,
            rounds: vec![Round {
                local: 20_000.0,
                upload: 12_000.0,
                download: 8_000.0,
            }],
        };
        let table = report(&found);
        assert!(
            table.contains(
                "upload >= 10000 items/s and >= 0.50 x local: 12000 items/s, 0.60 x, met"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "download >= 10000 items/s and >= 0.50 x local: 8000 items/s, 0.40 x, MISSED"
            ),
            "{table}"
        );
    }
}
