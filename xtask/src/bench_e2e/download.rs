//! The download part of `cargo xtask bench e2e`: `domain download` of the bench's item
//! straight from a node (`--node ADDR --token T`, a `/load/v1` token signed here for the
//! client's peer id), over TCP and over QUIC, so that the connection runs over the
//! transport asked for. The command writes the item into a folder, checks its root and
//! fsyncs it before it exits; the bench then checks that it printed the item and that the
//! file has the item's size, and removes it.
//!
//! Every round reads one node that received the item before the rounds and served it once
//! unmeasured: the node writes blobs past the page cache, and that first download brings
//! the blob into it, as the baselines' file is. The peak RSS comes from a larger item on a
//! node of its own, restarted on its store before each transport so that the node's
//! `VmHWM` covers that download alone. The client's is read every [`POLL`] while it runs,
//! since a process's `/proc` entry loses it when it exits.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_e2e::{Output, release_binary};
use domain_proto::protocols::LOAD_V1;

use super::procfs::peak_rss;
use super::{
    BenchCluster, BenchNode, COMMAND, DOMAIN, MIB, Measure, Measured, TARGET_RSS_MIB, Transport,
    mib_per_s, one_item, path_arg, say, verdict,
};

/// Minimum download throughput over TCP, as a multiple of the raw libp2p stream over TCP.
const TARGET_RATIO_TCP: f64 = 0.85;
/// How often the client's `VmHWM` is read during the large download.
const POLL: Duration = Duration::from_millis(10);

/// A node that holds the bench's item, which every download round reads.
pub(super) struct Serving {
    node: BenchNode,
    id: String,
    len: u64,
}

impl Serving {
    /// Starts the node `name`, uploads `file` (`len` bytes) to it and downloads it once,
    /// neither measured.
    pub(super) fn start(
        cluster: &BenchCluster<'_>,
        name: &str,
        file: &Path,
        len: u64,
    ) -> anyhow::Result<Self> {
        let node = cluster.start_node(name)?;
        let (id, _) = cluster.upload_to(&node, file, Transport::Tcp)?;
        say(&format!(
            "{name} holds item {id}; a first download, not measured, reads it into the page cache"
        ));
        let serving = Self { node, id, len };
        serving.download(cluster, Transport::Tcp)?;
        Ok(serving)
    }

    /// One download over `transport`: the `domain download` process's time, start to
    /// exit, and the CPU time of it and of the node.
    pub(super) fn download(
        &self,
        cluster: &BenchCluster<'_>,
        transport: Transport,
    ) -> anyhow::Result<Measured> {
        let out = cluster.dir.join("download");
        let owned = download_args(cluster, &self.node, &self.id, transport, &out)?;
        let args: Vec<&str> = owned.iter().map(String::as_str).collect();
        let (output, measured) = cluster
            .timed_domain(&args, self.node.pid)
            .with_context(|| format!("downloading over {}", transport.name()))?;
        check_and_remove(&output.stdout, &self.id, &out, self.len)?;
        Ok(measured)
    }

    /// Stops the node and removes its store.
    pub(super) fn stop(self, cluster: &BenchCluster<'_>) -> anyhow::Result<()> {
        cluster.remove_node(self.node)
    }
}

/// The arguments of `domain download` of item `id` straight from `node` over `transport`
/// into the folder `out`.
fn download_args(
    cluster: &BenchCluster<'_>,
    node: &BenchNode,
    id: &str,
    transport: Transport,
    out: &Path,
) -> anyhow::Result<Vec<String>> {
    let (addr, peer) = node.addr(transport)?;
    let token = cluster.token(&node.name, peer, LOAD_V1)?;
    let (out, addr) = (path_arg(out), addr.to_string());
    let args = [
        "download", "--domain", DOMAIN, "--id", id, "--out", &out, "--node", &addr, "--token",
        &token,
    ];
    Ok(args.map(str::to_owned).into())
}

/// Checks that `domain download` printed the item `id` alone and wrote its `len` bytes
/// into `out`, then removes `out`.
pub(super) fn check_and_remove(stdout: &str, id: &str, out: &Path, len: u64) -> anyhow::Result<()> {
    let printed = one_item(stdout).context("domain download")?;
    ensure!(
        printed == id,
        "domain download printed item {printed}, not {id}"
    );
    let path = out.join(id);
    let size = std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    ensure!(
        size == len,
        "{} holds {size} bytes, not {len}",
        path.display()
    );
    std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))
}

/// The node's and the client's peak RSS during the large download over one transport.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct DownloadPeak {
    pub(super) transport: Transport,
    /// MiB downloaded.
    pub(super) size_mib: u32,
    /// Its throughput, MiB/s.
    pub(super) throughput: f64,
    /// `VmHWM` of the node, in bytes.
    pub(super) node_hwm: u64,
    /// `VmHWM` of the client, in bytes, as last read before it exited.
    pub(super) client_hwm: u64,
}

/// The node's and the client's peak RSS during a download of `big` (`size_mib` MiB) over
/// each transport.
pub(super) fn peaks(
    cluster: &BenchCluster<'_>,
    big: &Path,
    size_mib: u32,
) -> anyhow::Result<Vec<DownloadPeak>> {
    let len = u64::from(size_mib) << 20;
    let name = "node-rss-load";
    let mut node = cluster.start_node(name)?;
    let (id, _) = cluster.upload_to(&node, big, Transport::Tcp)?;
    let program = release_binary("domain").context("locating domain")?;
    let out = cluster.dir.join("download");
    let mut peaks = Vec::new();
    for transport in [Transport::Tcp, Transport::Quic] {
        // A fresh process on the same store, so that its VmHWM is this download's alone.
        cluster.peers.stop(name);
        node = cluster.start_node(name)?;
        let owned = download_args(cluster, &node, &id, transport, &out)?;
        let args: Vec<&str> = owned.iter().map(String::as_str).collect();
        let watched = watch_hwm(&program, &cluster.client_args(&args))?;
        ensure!(
            watched.output.status.success(),
            "domain download over {} failed ({}): {}",
            transport.name(),
            watched.output.status,
            watched.output.stderr.trim()
        );
        check_and_remove(&watched.output.stdout, &id, &out, len)?;
        let peak = DownloadPeak {
            transport,
            size_mib,
            throughput: mib_per_s(len, watched.took),
            node_hwm: peak_rss(node.pid)?,
            client_hwm: watched.hwm,
        };
        say(&format!(
            "{size_mib} MiB download over {}: {:.0} MiB/s, peak RSS node {:.1} MiB, client {:.1} MiB",
            transport.name(),
            peak.throughput,
            peak.node_hwm as f64 / MIB,
            peak.client_hwm as f64 / MIB
        ));
        peaks.push(peak);
    }
    cluster.remove_node(node)?;
    Ok(peaks)
}

/// What a command run by [`watch_hwm`] did.
struct Watched {
    output: Output,
    /// Start to exit (to within [`POLL`]).
    took: Duration,
    /// Its `VmHWM` at the last reading, in bytes.
    hwm: u64,
}

/// Runs `program` to its end, reading its `VmHWM` every [`POLL`] meanwhile: `VmHWM` only
/// grows, so the last reading misses at most what it grew in its last [`POLL`].
fn watch_hwm(program: &Path, args: &[&str]) -> anyhow::Result<Watched> {
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = child.stdout.take().map(read_all);
    let stderr = child.stderr.take().map(read_all);
    let mut hwm = 0;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for domain download")? {
            break status;
        }
        // An exiting process loses its memory lines before it is reaped: no reading then.
        if let Ok(now) = peak_rss(child.id()) {
            hwm = hwm.max(now);
        }
        if started.elapsed() > COMMAND {
            let _ = child.kill();
            let _ = child.wait();
            bail!("domain download did not finish within {COMMAND:?}");
        }
        std::thread::sleep(POLL);
    };
    let took = started.elapsed();
    let collect = |reader: Option<JoinHandle<String>>| {
        reader
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default()
    };
    Ok(Watched {
        output: Output {
            status,
            stdout: collect(stdout),
            stderr: collect(stderr),
        },
        took,
        hwm,
    })
}

/// Reads `reader` to its end on a thread of its own, so that a full pipe never blocks
/// the child.
fn read_all(mut reader: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The download lines of the report: each download against (b) over its transport, the
/// target over TCP, and the peak RSS.
pub(super) fn write_report(
    out: &mut String,
    throughput: &dyn Fn(Measure) -> Option<f64>,
    peaks: &[DownloadPeak],
) {
    for transport in [Transport::Tcp, Transport::Quic] {
        let (Some(base), Some(value)) = (
            throughput(Measure::RawLibp2p(transport)),
            throughput(Measure::Download(transport)),
        ) else {
            continue;
        };
        let ratio = value / base;
        let name = transport.name();
        let _ = writeln!(
            out,
            "\ndownload over {name} (node -> client, written and fsynced at the client): \
             against (b) over {name} at {base:.0} MiB/s (one stream, both ends in this process)"
        );
        let _ = match transport {
            Transport::Tcp => writeln!(
                out,
                "target download over TCP >= {TARGET_RATIO_TCP:.2} x (b) TCP: {ratio:.2}, {}",
                verdict(ratio >= TARGET_RATIO_TCP)
            ),
            Transport::Quic => writeln!(
                out,
                "download over QUIC: {ratio:.2} x (b) QUIC (no target over QUIC)"
            ),
        };
    }
    for peak in peaks {
        let (node, client) = (peak.node_hwm as f64 / MIB, peak.client_hwm as f64 / MIB);
        let _ = writeln!(
            out,
            "peak RSS (VmHWM) during a {} MiB download over {} ({:.0} MiB/s): node {node:.1} MiB, \
             client {client:.1} MiB (read every {} ms); target <= {TARGET_RSS_MIB:.0} MiB each, {}",
            peak.size_mib,
            peak.transport.name(),
            peak.throughput,
            POLL.as_millis(),
            verdict(node <= TARGET_RSS_MIB && client <= TARGET_RSS_MIB)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_holds_each_download_against_the_raw_stream_of_its_transport() {
        let throughput = |measure: Measure| match measure {
            Measure::RawLibp2p(Transport::Tcp) => Some(400.0),
            Measure::RawLibp2p(Transport::Quic) => Some(250.0),
            Measure::Download(Transport::Tcp) => Some(360.0),
            Measure::Download(Transport::Quic) => Some(150.0),
            _ => None,
        };
        let peaks = [DownloadPeak {
            transport: Transport::Quic,
            size_mib: 3072,
            throughput: 140.0,
            node_hwm: 30 << 20,
            client_hwm: 70 << 20,
        }];
        let mut out = String::new();
        write_report(&mut out, &throughput, &peaks);
        assert!(
            out.contains(
                "against (b) over TCP at 400 MiB/s (one stream, both ends in this process)"
            ),
            "{out}"
        );
        assert!(
            out.contains("target download over TCP >= 0.85 x (b) TCP: 0.90, met"),
            "{out}"
        );
        assert!(
            out.contains("download over QUIC: 0.60 x (b) QUIC (no target over QUIC)"),
            "{out}"
        );
        assert!(
            out.contains(
                "during a 3072 MiB download over QUIC (140 MiB/s): node 30.0 MiB, client 70.0 MiB \
                 (read every 10 ms); target <= 64 MiB each, MISSED"
            ),
            "{out}"
        );
    }

    #[test]
    fn without_a_download_the_report_says_nothing_of_downloads() {
        let mut out = String::new();
        write_report(&mut out, &|_: Measure| None, &[]);
        assert!(out.is_empty(), "{out}");
    }
}
