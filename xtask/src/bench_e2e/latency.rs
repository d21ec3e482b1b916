//! The latency part of `cargo xtask bench e2e`: how long the control plane keeps a user
//! waiting. On a loopback cluster of its own (a manager and N nodes; 1 and 4 by default),
//! a few small items are uploaded through the manager; then, run after run,
//! `domain ls --domain D` and `domain download --domain D --id ID` of one 4 KiB item, both
//! through the manager (`--manager`), are timed as whole processes, start to exit: the
//! client's start, its dial of the manager, the job, the transfers and its shutdown all
//! count, as they do for a user. One run of each, not counted, comes first, so that every
//! counted run finds the binaries in the page cache. The baseline, timed in the same runs,
//! is `domain key --domain D`: the same process start, dial and shutdown around one
//! request to the manager and nothing else, so `ls - key` is what the control plane adds.
//!
//! The manager places a store task on the least loaded node, ties to the smallest id, so
//! uploads one after another would all land on one node: they go N at a time, round after
//! round, until there are [`MIN_ITEMS`] and every node holds one (or [`MAX_ROUNDS`]
//! passed). What each node holds is counted with a direct `domain ls` of it, and shown.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use domain_proto::protocols::LOAD_V1;

use super::download::check_and_remove;
use super::{BenchCluster, BenchNode, DOMAIN, Transport, median, one_item, path_arg, say, verdict};
use crate::peers::Peers;

/// Bytes of each item.
const ITEM_SIZE: usize = 4096;
/// Items uploaded at least, before the runs.
const MIN_ITEMS: usize = 8;
/// Rounds of uploads at most while some node holds nothing.
const MAX_ROUNDS: usize = 8;
/// Target median of `domain ls` on 4 nodes, in ms.
const TARGET_LS_MS: f64 = 50.0;
/// Target median of a 1-item download, in ms.
const TARGET_DOWNLOAD_MS: f64 = 100.0;

/// The runs on one cluster.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Latencies {
    /// Nodes of the cluster.
    pub(super) nodes: u32,
    /// Items of the domain.
    pub(super) items: usize,
    /// Items each node holds.
    pub(super) held: Vec<usize>,
    /// Each run of `domain key`, the baseline: the process and one manager round trip.
    pub(super) key: Vec<Duration>,
    /// Each run of `domain ls`.
    pub(super) ls: Vec<Duration>,
    /// Each run of the 1-item download.
    pub(super) download: Vec<Duration>,
}

/// Starts a manager and `nodes` nodes, uploads the items, times `runs` runs of each
/// command, and stops the cluster.
pub(super) fn measure(
    dir: &Path,
    peers: &Peers,
    nodes: u32,
    runs: u32,
) -> anyhow::Result<Latencies> {
    let name = format!("latency-{nodes}");
    let cluster = BenchCluster::start(dir, peers, &format!("{name}-manager"))?;
    let mut started = Vec::new();
    let result = (|| {
        for i in 1..=nodes {
            started.push(cluster.start_node(&format!("{name}-node-{i}"))?);
        }
        let work = dir.join(&name);
        std::fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
        measure_on(&cluster, &started, &work, runs)
    })();
    for node in started {
        let _ = cluster.remove_node(node);
    }
    cluster.stop();
    result
}

fn measure_on(
    cluster: &BenchCluster<'_>,
    nodes: &[BenchNode],
    work: &Path,
    runs: u32,
) -> anyhow::Result<Latencies> {
    let (ids, held) = spread_items(cluster, nodes, work)?;
    let id = ids.first().context("no item was uploaded")?;
    say(&format!(
        "{} node(s) hold {} items ({} on each); timing {runs} runs after one not counted",
        nodes.len(),
        ids.len(),
        list(&held)
    ));
    let out = work.join("out");
    let out_arg = path_arg(&out);
    let manager = cluster.manager.as_str();
    let ls_args = ["ls", "--domain", DOMAIN, "--manager", manager];
    let key_args = ["key", "--domain", DOMAIN, "--manager", manager];
    let download_args = [
        "download",
        "--domain",
        DOMAIN,
        "--id",
        id,
        "--out",
        &out_arg,
        "--manager",
        manager,
    ];
    let ls = || -> anyhow::Result<Duration> {
        let started = Instant::now();
        let output = cluster.domain(&ls_args)?;
        let took = started.elapsed();
        let listed = count_lines(&output.stdout);
        ensure!(
            listed == ids.len(),
            "domain ls listed {listed} of the {} items",
            ids.len()
        );
        Ok(took)
    };
    let download = || -> anyhow::Result<Duration> {
        let started = Instant::now();
        let output = cluster.domain(&download_args)?;
        let took = started.elapsed();
        check_and_remove(&output.stdout, id, &out, ITEM_SIZE as u64)?;
        Ok(took)
    };
    let key = || -> anyhow::Result<Duration> {
        let started = Instant::now();
        cluster.domain(&key_args)?;
        Ok(started.elapsed())
    };
    key()?;
    ls()?;
    download()?;
    let mut found = Latencies {
        nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
        items: ids.len(),
        held,
        key: Vec::new(),
        ls: Vec::new(),
        download: Vec::new(),
    };
    for _ in 0..runs {
        found.key.push(key()?);
        found.ls.push(ls()?);
        found.download.push(download()?);
    }
    say(&format!(
        "{} node(s): domain key {}, domain ls {}, 1-item download {}",
        nodes.len(),
        spread(&found.key),
        spread(&found.ls),
        spread(&found.download)
    ));
    Ok(found)
}

/// Uploads items of [`ITEM_SIZE`] bytes through the manager, as many at once as there are
/// nodes, until there are [`MIN_ITEMS`] and every node holds one, or [`MAX_ROUNDS`] rounds
/// passed; answers with their ids and how many items each node holds.
fn spread_items(
    cluster: &BenchCluster<'_>,
    nodes: &[BenchNode],
    work: &Path,
) -> anyhow::Result<(Vec<String>, Vec<usize>)> {
    let mut ids = Vec::new();
    let mut held = vec![0; nodes.len()];
    for round in 0..MAX_ROUNDS {
        let mut files = Vec::new();
        for k in 0..nodes.len() {
            let n = round * nodes.len() + k;
            let path = work.join(format!("item-{n}.bin"));
            crate::demo::generate_seeded(&path, ITEM_SIZE, 1000 + n as u64)?;
            files.push(path);
        }
        let uploaded: Vec<anyhow::Result<String>> = std::thread::scope(|scope| {
            let uploads: Vec<_> = files
                .iter()
                .map(|file| scope.spawn(move || upload(cluster, file)))
                .collect();
            uploads
                .into_iter()
                .map(|upload| {
                    upload
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("an upload thread panicked")))
                })
                .collect()
        });
        for id in uploaded {
            ids.push(id?);
        }
        held = nodes
            .iter()
            .map(|node| held_by(cluster, node))
            .collect::<anyhow::Result<_>>()?;
        if ids.len() >= MIN_ITEMS && held.iter().all(|&n| n > 0) {
            break;
        }
    }
    Ok((ids, held))
}

/// Uploads `file` through the manager; the item's id.
fn upload(cluster: &BenchCluster<'_>, file: &Path) -> anyhow::Result<String> {
    let file = path_arg(file);
    let args = [
        "upload",
        &file,
        "--domain",
        DOMAIN,
        "--manager",
        &cluster.manager,
    ];
    let output = cluster.domain(&args)?;
    one_item(&output.stdout).context("domain upload")
}

/// How many items of the domain `node` holds, from a `domain ls` of that node alone.
fn held_by(cluster: &BenchCluster<'_>, node: &BenchNode) -> anyhow::Result<usize> {
    let (addr, peer) = node.addr(Transport::Tcp)?;
    let token = cluster.token(&node.name, peer, LOAD_V1)?;
    let addr = addr.to_string();
    let args = ["ls", "--domain", DOMAIN, "--node", &addr, "--token", &token];
    Ok(count_lines(&cluster.domain(&args)?.stdout))
}

fn count_lines(text: &str) -> usize {
    text.lines().filter(|line| !line.trim().is_empty()).count()
}

fn list(values: &[usize]) -> String {
    let each: Vec<String> = values.iter().map(ToString::to_string).collect();
    each.join(", ")
}

/// The median of `values` in ms.
fn median_ms(values: &[Duration]) -> Option<f64> {
    let ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    median(&ms)
}

/// `<median> ms [<min> - <max>]` of `values`.
fn spread(values: &[Duration]) -> String {
    let (Some(median), Some(min), Some(max)) =
        (median_ms(values), values.iter().min(), values.iter().max())
    else {
        return "no runs".to_owned();
    };
    format!(
        "{median:.0} ms [{:.0} - {:.0}]",
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    )
}

/// The latency table and the target checks, as printed.
pub(super) fn report(runs: u32, found: &[Latencies]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncontrol plane through the manager, each run the whole `domain` process from start \
         to exit (its start, dial, job and shutdown included): median [min - max] in ms of \
         {runs} runs, after one not counted"
    );
    let _ = writeln!(
        out,
        "{:>5} {:>5}  {:<16} {:<24} {:<24} 1-item download (4 KiB)",
        "nodes", "items", "held per node", "domain key (baseline)", "domain ls"
    );
    for cluster in found {
        let _ = writeln!(
            out,
            "{:>5} {:>5}  {:<16} {:<24} {:<24} {}",
            cluster.nodes,
            cluster.items,
            list(&cluster.held),
            spread(&cluster.key),
            spread(&cluster.ls),
            spread(&cluster.download)
        );
    }
    for cluster in found {
        if let (Some(key), Some(ls), Some(download)) = (
            median_ms(&cluster.key),
            median_ms(&cluster.ls),
            median_ms(&cluster.download),
        ) {
            let _ = writeln!(
                out,
                "{} node(s): beyond the baseline, domain ls takes {:.0} ms and the 1-item download {:.0} ms",
                cluster.nodes,
                ls - key,
                download - key
            );
        }
    }
    let ls = |cluster: &Latencies| median_ms(&cluster.ls);
    let download = |cluster: &Latencies| median_ms(&cluster.download);
    write_target(
        &mut out,
        "domain ls (set for 4 nodes)",
        TARGET_LS_MS,
        found,
        ls,
    );
    write_target(
        &mut out,
        "1-item download",
        TARGET_DOWNLOAD_MS,
        found,
        download,
    );
    out
}

/// The line that holds the median of every cluster, as `median_of` gives it, against
/// `target` ms; to a tenth of a ms, so that a median just above the target does not read
/// as equal to it.
fn write_target(
    out: &mut String,
    what: &str,
    target: f64,
    found: &[Latencies],
    median_of: impl Fn(&Latencies) -> Option<f64>,
) {
    let each: Vec<String> = found
        .iter()
        .filter_map(|cluster| {
            let ms = median_of(cluster)?;
            let nodes = cluster.nodes;
            let s = if nodes == 1 { "" } else { "s" };
            Some(format!(
                "{ms:.1} ms on {nodes} node{s}, {}",
                verdict(ms <= target)
            ))
        })
        .collect();
    if !each.is_empty() {
        let _ = writeln!(out, "target {what} <= {target:.0} ms: {}", each.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().copied().map(Duration::from_millis).collect()
    }

    #[test]
    fn a_spread_is_the_median_then_min_and_max() {
        assert_eq!(spread(&ms(&[30, 10, 20, 50])), "25 ms [10 - 50]");
        assert_eq!(spread(&[]), "no runs");
    }

    #[test]
    fn the_report_checks_each_cluster_against_the_targets() {
        let found = [
            Latencies {
                nodes: 1,
                items: 8,
                held: vec![8],
                key: ms(&[15, 16, 17]),
                ls: ms(&[20, 22, 21]),
                download: ms(&[60, 80, 70]),
            },
            Latencies {
                nodes: 4,
                items: 8,
                held: vec![2, 2, 3, 1],
                key: ms(&[15, 16, 17]),
                ls: ms(&[2010, 2030, 2020]),
                download: ms(&[90, 120, 110]),
            },
        ];
        let table = report(3, &found);
        assert!(
            table.contains("median [min - max] in ms of 3 runs"),
            "{table}"
        );
        assert!(
            table.contains(
                "    4     8  2, 2, 3, 1       16 ms [15 - 17]          2020 ms [2010 - 2030]    110 ms [90 - 120]\n"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "4 node(s): beyond the baseline, domain ls takes 2004 ms and the 1-item download 94 ms"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "target domain ls (set for 4 nodes) <= 50 ms: 21.0 ms on 1 node, met; 2020.0 ms on 4 nodes, MISSED"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "target 1-item download <= 100 ms: 70.0 ms on 1 node, met; 110.0 ms on 4 nodes, MISSED"
            ),
            "{table}"
        );
    }
}
