//! The flood part of `cargo xtask bench e2e`: an honest upload through the manager while
//! [`IDENTITIES`] fresh identities flood the manager and the node.
//!
//! On a cluster of its own (a manager, one node), `domain upload FILE --manager M` of one
//! item is timed as a whole process, round after round, alternately alone and under the
//! flood; the report holds the median of each and their ratio. The flood runs in this
//! process: each identity connects to the manager and to the node and keeps open, on
//! every protocol each serves, as many silent streams as a peer the manager knows may
//! hold (64 on a manager protocol, 32 on a node's task protocol), each sending half a
//! frame header and then nothing; every [`CYCLE`] it opens again those that were dropped
//! and sends a frame header over every limit on each protocol (once banned, it dials
//! again once a cycle). The
//! honest upload must keep [`TARGET_RATIO`] of its speed, the node must stay registered
//! (the uploads go through the manager, which places them only on registered nodes), and
//! the manager's and the node's peak RSS are shown.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterHandle, Multiaddr, PeerId};
use domain_proto::protocols::{
    HOLDERS_V1, JOBS_V1, JOIN_V1, LOAD_V1, MONITOR_V1, STORE_V1, TASK_STATUS_V1,
};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

use super::procfs::{cpu_time, peak_rss};
use super::{BenchCluster, DOMAIN, Measured, median, mib_per_s, one_item, path_arg, say, verdict};
use crate::peers::Peers;

/// Fresh identities of the flood.
pub(super) const IDENTITIES: usize = 16;
/// Minimum throughput of the honest upload under the flood, as a multiple of its
/// throughput alone in the same run.
const TARGET_RATIO: f64 = 0.9;
/// Silent streams each identity keeps open on each manager protocol.
const MANAGER_STREAMS: usize = 64;
/// Silent streams each identity keeps open on each node protocol.
const NODE_STREAMS: usize = 32;
/// How often each identity sends an oversized frame on each protocol, and reopens the
/// streams that were dropped (or tries to connect again, once banned).
const CYCLE: Duration = Duration::from_secs(1);
const MANAGER_PROTOCOLS: [&str; 5] = [JOIN_V1, JOBS_V1, MONITOR_V1, HOLDERS_V1, TASK_STATUS_V1];
const NODE_PROTOCOLS: [&str; 2] = [STORE_V1, LOAD_V1];

/// What the flood part found.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Flooded {
    pub(super) size_mib: u32,
    /// MiB/s of each upload alone.
    pub(super) alone: Vec<f64>,
    /// MiB/s of each upload under the flood.
    pub(super) flooded: Vec<f64>,
    /// Streams the flood opened, in all.
    pub(super) streams_opened: u64,
    /// Cores the flood itself kept busy during the flooded uploads (median): it runs on
    /// the same machine, so its own work slows the upload too.
    pub(super) flood_cores: f64,
    /// `VmHWM` of the manager and of the node at the end, in bytes.
    pub(super) manager_hwm: u64,
    pub(super) node_hwm: u64,
}

/// Starts a manager and a node, uploads `size_mib` MiB `rounds` times alone and as many
/// under the flood, alternately, and stops them.
pub(super) fn measure(
    dir: &Path,
    peers: &Peers,
    size_mib: u32,
    rounds: u32,
) -> anyhow::Result<Flooded> {
    let data = dir.join("flood.bin");
    let len = u64::from(size_mib) << 20;
    super::generate(&data, len, 3)?;
    let cluster = BenchCluster::start(dir, peers, "manager-flood")?;
    // TCP only: a client that holds connections over several transports opens its
    // stream on whichever came first, and a QUIC stream (slower on loopback) in one round
    // and TCP in the next measured the transport, not the flood.
    let node = cluster.start_node_on("node-flood", &["/ip4/127.0.0.1/tcp/0"])?;
    let (node_addr, _) = node.addr(super::Transport::Tcp)?;
    let manager_addr: Multiaddr = cluster.manager.parse().context("the manager's address")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    let upload = |label: &str| -> anyhow::Result<f64> {
        let file = path_arg(&data);
        let args = [
            "upload",
            &file,
            "--domain",
            DOMAIN,
            "--manager",
            &cluster.manager,
        ];
        let (output, Measured { took, .. }) = cluster
            .timed_domain(&args, node.pid)
            .with_context(|| format!("the honest upload {label}"))?;
        one_item(&output.stdout).context("domain upload")?;
        let throughput = mib_per_s(len, took);
        say(&format!("upload {label}: {throughput:.0} MiB/s"));
        Ok(throughput)
    };
    // One upload first, not counted, so that every counted one finds the file and the
    // binaries in the page cache.
    upload("to warm up")?;
    let (mut alone, mut flooded, mut streams_opened) = (Vec::new(), Vec::new(), 0);
    let mut flood_load = Vec::new();
    let manager_pid = cluster.manager_pid.to_string();
    for round in 1..=rounds {
        alone.push(upload(&format!("alone, round {round}/{rounds}"))?);
        let flood = runtime.block_on(Flood::start(&manager_addr, &node_addr))?;
        // Let the flood take every place it can before the upload starts.
        std::thread::sleep(Duration::from_secs(1));
        let (flood_cpu, manager_cpu) = (cpu_time("self")?.own, cpu_time(&manager_pid)?.own);
        let started = std::time::Instant::now();
        let measured = upload(&format!("under the flood, round {round}/{rounds}"));
        let took = started.elapsed().as_secs_f64();
        let flood_cores = (cpu_time("self")?.own - flood_cpu).as_secs_f64() / took;
        let manager_cores = (cpu_time(&manager_pid)?.own - manager_cpu).as_secs_f64() / took;
        say(&format!(
            "meanwhile the flood kept {flood_cores:.2} cores busy in this process, the manager {manager_cores:.2}"
        ));
        flood_load.push(flood_cores);
        streams_opened += runtime.block_on(flood.stop());
        flooded.push(measured?);
    }
    let found = Flooded {
        size_mib,
        alone,
        flooded,
        streams_opened,
        flood_cores: median(&flood_load).unwrap_or(0.0),
        manager_hwm: peak_rss(cluster.manager_pid)?,
        node_hwm: peak_rss(node.pid)?,
    };
    cluster.remove_node(node)?;
    cluster.stop();
    Ok(found)
}

/// The flooding identities at work.
struct Flood {
    identities: Vec<ClusterHandle>,
    stop: watch::Sender<bool>,
    workers: tokio::task::JoinSet<u64>,
}

impl Flood {
    async fn start(manager: &Multiaddr, node: &Multiaddr) -> anyhow::Result<Self> {
        let manager_id = domain_cluster::addr::peer_of(manager).context("the manager's peer id")?;
        let node_id = domain_cluster::addr::peer_of(node).context("the node's peer id")?;
        let (stop, stopped) = watch::channel(false);
        let mut identities = Vec::new();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..IDENTITIES {
            let (cluster, _) =
                Cluster::start(ClusterConfig::new(Identity::generate(), Role::Client))
                    .context("starting a flooding identity")?;
            cluster.dial(manager.clone()).await?;
            cluster.dial(node.clone()).await?;
            let target = |peer, protocol, streams| Target {
                peer,
                protocol,
                streams,
                held: Vec::new(),
            };
            let targets = MANAGER_PROTOCOLS
                .iter()
                .map(|&p| target(manager_id, p, MANAGER_STREAMS))
                .chain(
                    NODE_PROTOCOLS
                        .iter()
                        .map(|&p| target(node_id, p, NODE_STREAMS)),
                )
                .collect();
            workers.spawn(flood_one(cluster.clone(), targets, stopped.clone()));
            identities.push(cluster);
        }
        Ok(Self {
            identities,
            stop,
            workers,
        })
    }

    /// Stops the flood; the streams it opened in all.
    async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        let opened = self.workers.join_all().await.into_iter().sum();
        for cluster in self.identities {
            let _ = cluster.shutdown().await;
        }
        opened
    }
}

/// What one identity keeps open: silent streams of one protocol on one peer.
struct Target {
    peer: PeerId,
    protocol: &'static str,
    streams: usize,
    held: Vec<domain_cluster::ClusterStream>,
}

/// One identity's flood until `stop`: every [`CYCLE`], on each target, the silent streams
/// that were dropped are opened again and one oversized frame is sent; the streams it
/// opened.
async fn flood_one(
    cluster: ClusterHandle,
    mut targets: Vec<Target>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut opened = 0;
    while !*stop.borrow() {
        // A stream that cannot be opened means no connection (a ban): one dial a cycle.
        'cycle: for target in &mut targets {
            // A dropped stream fails its next write: those go, and new ones take their place.
            let mut alive = Vec::with_capacity(target.held.len());
            for mut stream in target.held.drain(..) {
                if stream.write_all(&[0]).await.is_ok() && stream.flush().await.is_ok() {
                    alive.push(stream);
                }
            }
            target.held = alive;
            while target.held.len() < target.streams && !*stop.borrow() {
                let Ok(mut stream) = cluster.open_stream(target.peer, target.protocol).await else {
                    break 'cycle;
                };
                opened += 1;
                if stream.write_all(&[0, 0]).await.is_ok() && stream.flush().await.is_ok() {
                    target.held.push(stream);
                }
            }
            let Ok(mut stream) = cluster.open_stream(target.peer, target.protocol).await else {
                break 'cycle;
            };
            opened += 1;
            let _ = stream.write_all(&u32::MAX.to_be_bytes()).await;
            let _ = stream.flush().await;
        }
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => {}
            () = tokio::time::sleep(CYCLE) => {}
        }
    }
    opened
}

/// The flood part's report.
pub(super) fn report(found: &Flooded) -> String {
    let mut out = String::new();
    let alone = median(&found.alone).unwrap_or(0.0);
    let flooded = median(&found.flooded).unwrap_or(0.0);
    let ratio = flooded / alone.max(1e-9);
    let _ = writeln!(
        out,
        "\nflood: {} MiB uploaded through the manager, alone and while {IDENTITIES} fresh identities \
         hold silent streams and send oversized frames on every protocol of the manager and the node",
        found.size_mib
    );
    let _ = writeln!(
        out,
        "  alone {alone:.0} MiB/s {:?}, under the flood {flooded:.0} MiB/s {:?} ({} flood streams \
         opened; the flood itself kept {:.2} cores of this machine busy)",
        found.alone.iter().map(|v| v.round()).collect::<Vec<_>>(),
        found.flooded.iter().map(|v| v.round()).collect::<Vec<_>>(),
        found.streams_opened,
        found.flood_cores,
    );
    let _ = writeln!(
        out,
        "  peak RSS (VmHWM): manager {:.1} MiB, node {:.1} MiB",
        found.manager_hwm as f64 / super::MIB,
        found.node_hwm as f64 / super::MIB,
    );
    let _ = writeln!(
        out,
        "target upload under the flood >= {TARGET_RATIO} x alone: {ratio:.2}, {}",
        verdict(ratio >= TARGET_RATIO)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_holds_the_ratio_of_the_medians_and_its_verdict() {
        let found = Flooded {
            size_mib: 256,
            alone: vec![400.0, 420.0, 410.0],
            flooded: vec![380.0, 300.0, 390.0],
            streams_opened: 12_345,
            flood_cores: 0.4,
            manager_hwm: 40 << 20,
            node_hwm: 30 << 20,
        };
        let report = report(&found);
        assert!(report.contains("alone 410 MiB/s"), "{report}");
        assert!(report.contains("under the flood 380 MiB/s"), "{report}");
        assert!(report.contains(">= 0.9 x alone: 0.93, met"), "{report}");
    }
}
