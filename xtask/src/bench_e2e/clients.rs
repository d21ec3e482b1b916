//! The many-clients part of `cargo xtask bench e2e`: 8 clients, each with an identity of
//! its own, upload a 256 MiB file each to one node at the same time, then download one
//! item each from it at the same time, every one a `domain` process dialling the node over
//! TCP.
//!
//! Each direction is held against one client alone on the same node in the same run: the
//! aggregate (all bytes over the time from the first start to the last exit) against the
//! one client's rate; each client's rate against the mean (fairness); the node's peak RSS
//! (`VmHWM`, the node restarted before each direction) against a bound.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use domain_cluster::PeerId;
use domain_cluster::identity::Identity;
use domain_e2e::release_binary;
use domain_proto::protocols::{LOAD_V1, STORE_V1};

use super::cluster::{BenchNode, one_item};
use super::procfs::peak_rss;
use super::{BenchCluster, DOMAIN, MIB, Transport, generate, mib_per_s, path_arg, say, verdict};

/// Minimum aggregate throughput, as a multiple of one client alone.
const TARGET_AGGREGATE: f64 = 0.9;
/// Minimum throughput of any one client, as a multiple of the mean of all.
const TARGET_FAIRNESS: f64 = 0.5;
/// Maximum peak RSS of the node, in MiB.
const TARGET_RSS_MIB: f64 = 128.0;

/// One direction with many clients.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Direction {
    /// MiB/s of one client alone.
    alone: f64,
    /// MiB/s of each client at once.
    each: Vec<f64>,
    /// MiB/s of all of them together: their bytes over first start to last exit.
    aggregate: f64,
    /// The node's `VmHWM`, in bytes, during the clients at once.
    node_hwm: u64,
}

/// What the part found.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Found {
    clients: usize,
    size_mib: u32,
    upload: Direction,
    download: Direction,
}

/// A client of the bench: its identity file and peer id.
struct Client {
    identity: PathBuf,
    peer: PeerId,
}

/// Runs the part: `clients` clients, `size_mib` MiB each.
pub(super) fn measure(
    cluster: &BenchCluster<'_>,
    dir: &Path,
    clients: usize,
    size_mib: u32,
) -> anyhow::Result<Found> {
    let data = dir.join("clients.bin");
    generate(&data, u64::from(size_mib) << 20, 3)?;
    let identities: Vec<Client> = (0..clients)
        .map(|i| {
            let identity = dir.join(format!("client-{i}.key"));
            let peer = Identity::load_or_create(&identity)
                .with_context(|| format!("creating {}", identity.display()))?
                .peer_id();
            Ok(Client { identity, peer })
        })
        .collect::<anyhow::Result<_>>()?;
    let bytes = u64::from(size_mib) << 20;

    // Alone: a node of its own, so that the others start from an empty store as it did.
    let alone_node = cluster.start_node("node-clients-alone")?;
    let took = run_all(&[upload(cluster, &alone_node, &identities[0], &data)?])?;
    let upload_alone = mib_per_s(bytes, took[0]);
    cluster.remove_node(alone_node)?;

    let name = "node-clients";
    let node = cluster.start_node(name)?;
    let commands = identities
        .iter()
        .map(|client| upload(cluster, &node, client, &data))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let outputs = run_all_keeping(&commands)?;
    let all = started.elapsed();
    let ids: Vec<String> = outputs
        .iter()
        .map(|(_, stdout)| one_item(stdout))
        .collect::<anyhow::Result<_>>()?;
    let uploads = Direction {
        alone: upload_alone,
        each: outputs
            .iter()
            .map(|(took, _)| mib_per_s(bytes, *took))
            .collect(),
        aggregate: mib_per_s(bytes * clients as u64, all),
        node_hwm: peak_rss(node.pid)?,
    };
    say(&format!(
        "{clients} uploads of {size_mib} MiB at once: {:.0} MiB/s together, one alone {upload_alone:.0} MiB/s",
        uploads.aggregate
    ));

    // Downloads from a node restarted on its store, so that its peak is theirs alone; the
    // first download, alone, also brings the blob into the page cache.
    cluster.peers.stop(name);
    let node = cluster.start_node(name)?;
    let out = |i: usize| dir.join(format!("clients-download-{i}"));
    let alone = [download(
        cluster,
        &node,
        &identities[0],
        &ids[0],
        &out(clients),
    )?];
    run_all(&alone)?;
    let took = run_all(&alone)?;
    let download_alone = mib_per_s(bytes, took[0]);
    // The alone node's peak covered its two downloads: restart once more.
    cluster.peers.stop(name);
    let node = cluster.start_node(name)?;
    let commands = identities
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(i, (client, id))| download(cluster, &node, client, id, &out(i)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let took = run_all(&commands)?;
    let all = started.elapsed();
    let downloads = Direction {
        alone: download_alone,
        each: took.iter().map(|took| mib_per_s(bytes, *took)).collect(),
        aggregate: mib_per_s(bytes * clients as u64, all),
        node_hwm: peak_rss(node.pid)?,
    };
    say(&format!(
        "{clients} downloads of {size_mib} MiB at once: {:.0} MiB/s together, one alone {download_alone:.0} MiB/s",
        downloads.aggregate
    ));
    for i in 0..=clients {
        let folder = out(i);
        std::fs::remove_dir_all(&folder)
            .with_context(|| format!("removing {}", folder.display()))?;
    }
    cluster.remove_node(node)?;
    std::fs::remove_file(&data).with_context(|| format!("removing {}", data.display()))?;
    Ok(Found {
        clients,
        size_mib,
        upload: uploads,
        download: downloads,
    })
}

/// The arguments of `domain` uploading `data` straight to `node` as `client`.
fn upload(
    cluster: &BenchCluster<'_>,
    node: &BenchNode,
    client: &Client,
    data: &Path,
) -> anyhow::Result<Vec<String>> {
    let args = [
        "upload".into(),
        path_arg(data),
        "--domain".into(),
        DOMAIN.into(),
    ];
    direct(cluster, node, client, STORE_V1, args.into())
}

/// The arguments of `domain` downloading item `id` from `node` into `out` as `client`.
fn download(
    cluster: &BenchCluster<'_>,
    node: &BenchNode,
    client: &Client,
    id: &str,
    out: &Path,
) -> anyhow::Result<Vec<String>> {
    let args = [
        "download".into(),
        "--domain".into(),
        DOMAIN.into(),
        "--id".into(),
        id.into(),
        "--out".into(),
        path_arg(out),
        "--overwrite".into(),
    ];
    direct(cluster, node, client, LOAD_V1, args.into())
}

/// `args` followed by what runs them straight on `node` over TCP as `client`: the
/// node's address, a token for `endpoint`, the client's identity.
fn direct(
    cluster: &BenchCluster<'_>,
    node: &BenchNode,
    client: &Client,
    endpoint: &str,
    mut args: Vec<String>,
) -> anyhow::Result<Vec<String>> {
    let (addr, peer) = node.addr(Transport::Tcp)?;
    let token = cluster.token_for(client.peer, &node.name, peer, endpoint)?;
    args.extend([
        "--node".into(),
        addr.to_string(),
        "--token".into(),
        token,
        "--identity".into(),
        path_arg(&client.identity),
    ]);
    Ok(args)
}

/// Starts one `domain` process per argument list at once and waits for all; the time of
/// each, start to exit. Fails unless every one succeeded.
fn run_all(commands: &[Vec<String>]) -> anyhow::Result<Vec<Duration>> {
    Ok(run_all_keeping(commands)?
        .into_iter()
        .map(|(took, _)| took)
        .collect())
}

/// As [`run_all`], with each one's standard output.
fn run_all_keeping(commands: &[Vec<String>]) -> anyhow::Result<Vec<(Duration, String)>> {
    let program = release_binary("domain").context("locating domain")?;
    let started = Instant::now();
    let children = commands
        .iter()
        .map(|args| {
            Command::new(&program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting domain")
        })
        .collect::<anyhow::Result<Vec<Child>>>()?;
    // Each waited on a thread of its own, so that each time is its own exit's.
    let waiters: Vec<_> = children
        .into_iter()
        .map(|child| {
            std::thread::spawn(move || {
                let output = child.wait_with_output();
                (started.elapsed(), output)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(waiters.len());
    for waiter in waiters {
        let (took, output) = waiter
            .join()
            .map_err(|_| anyhow::anyhow!("a waiting thread panicked"))?;
        let output = output.context("waiting for domain")?;
        ensure!(
            output.status.success(),
            "domain {} failed ({}): {}",
            commands
                .first()
                .and_then(|c| c.first())
                .map_or("", String::as_str),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        results.push((took, String::from_utf8_lossy(&output.stdout).into_owned()));
    }
    Ok(results)
}

/// The table and the target checks, as printed.
pub(super) fn report(found: &Found) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} clients at once, {} MiB each, one node, TCP",
        found.clients, found.size_mib
    );
    for (what, direction) in [("upload", &found.upload), ("download", &found.download)] {
        let mean = direction.each.iter().sum::<f64>() / direction.each.len().max(1) as f64;
        let slowest = direction.each.iter().copied().fold(f64::INFINITY, f64::min);
        let fastest = direction.each.iter().copied().fold(0.0, f64::max);
        let aggregate = direction.aggregate / direction.alone.max(1e-9);
        let fairness = slowest / mean.max(1e-9);
        let rss = direction.node_hwm as f64 / MIB;
        let _ = writeln!(
            out,
            "{what:<8}: one alone {:.0} MiB/s; together {:.0} MiB/s ({aggregate:.2} x alone); each {slowest:.0}..{fastest:.0} MiB/s, mean {mean:.0} (slowest {fairness:.2} x mean); node peak RSS {rss:.1} MiB",
            direction.alone, direction.aggregate
        );
        let _ = writeln!(
            out,
            "target {what} together >= {TARGET_AGGREGATE:.2} x alone: {aggregate:.2}, {}",
            verdict(aggregate >= TARGET_AGGREGATE)
        );
        let _ = writeln!(
            out,
            "target {what} slowest client >= {TARGET_FAIRNESS:.2} x mean: {fairness:.2}, {}",
            verdict(fairness >= TARGET_FAIRNESS)
        );
        let _ = writeln!(
            out,
            "target {what} node peak RSS <= {TARGET_RSS_MIB:.0} MiB: {rss:.1} MiB, {}",
            verdict(rss <= TARGET_RSS_MIB)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_checks_the_aggregate_the_slowest_client_and_the_node_peak() {
        let direction = |each: Vec<f64>, aggregate, hwm_mib: u64| Direction {
            alone: 100.0,
            each,
            aggregate,
            node_hwm: hwm_mib << 20,
        };
        let found = Found {
            clients: 2,
            size_mib: 256,
            upload: direction(vec![40.0, 60.0], 95.0, 100),
            download: direction(vec![20.0, 80.0], 80.0, 200),
        };
        let table = report(&found);
        assert!(
            table.contains("target upload together >= 0.90 x alone: 0.95, met"),
            "{table}"
        );
        assert!(
            table.contains("target upload slowest client >= 0.50 x mean: 0.80, met"),
            "{table}"
        );
        assert!(
            table.contains("target download together >= 0.90 x alone: 0.80, MISSED"),
            "{table}"
        );
        assert!(
            table.contains("target download slowest client >= 0.50 x mean: 0.40, MISSED"),
            "{table}"
        );
        assert!(
            table.contains("target download node peak RSS <= 128 MiB: 200.0 MiB, MISSED"),
            "{table}"
        );
    }
}
