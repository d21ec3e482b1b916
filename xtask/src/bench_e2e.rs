//! `cargo xtask bench e2e`: the end-to-end bench, measured against its limits and targets.
//!
//! Six parts, each of which can run alone (`--only upload`, `--only download,latency`):
//!
//! - **upload**: `domain upload` (release build) of a file straight to a node, over TCP and
//!   over QUIC, stored with fsync by the node's datastore;
//! - **download** ([`download`]): `domain download` of that item from a node, over TCP and
//!   over QUIC, written and fsynced at the client, its root checked by the command;
//! - **latency** ([`latency`]): `domain ls` and a 1-item download through the manager, on a
//!   loopback cluster of 1 node and of 4;
//! - **flood** ([`flood`]): an upload through the manager while fresh identities flood it;
//! - **small** ([`small`]): a folder of 2,000 files of 4 KiB uploaded and downloaded, in
//!   items/s, against the local datastore's rate for the same items in the same run;
//! - **clients** ([`clients`]): 8 clients uploading 256 MiB each to one node at once, then
//!   downloading, against one client alone: aggregate, fairness, the node's peak RSS.
//!
//! A transfer is bound by the slowest of what it is made of: moving bytes over loopback,
//! libp2p's encryption and multiplexing, and writing them durably. So each round of the
//! upload and download parts measures, over the same bytes (a file of pattern data in a
//! temporary folder, read by every sender, 1 GiB by default):
//!
//! - (a) raw loopback TCP: std sockets, no libp2p;
//! - (b) one raw libp2p stream (no handshake, no storage), through `domain-cluster`, over
//!   TCP + Noise + Yamux and over QUIC, both ends in this process;
//! - (c) a plain file write and fsync into the temporary folder (the same disk);
//! - the uploads, then the downloads, over TCP and over QUIC.
//!
//! An upload is held against the slowest baseline of its transport; a download against (b)
//! of its transport, which is what it adds the handshake, the framing, the node's reads and
//! the client's write and fsync to.
//!
//! Every upload goes to a node started for it with an empty store, since a datastore keeps
//! identical content once and would skip writing it again. The client dials the node's
//! `/tcp` or `/udp/.../quic-v1` address itself (the direct form of `domain upload` and
//! `domain download`, with a token signed here with the domain's key from the manager's
//! data folder), so that the connection runs over that transport. The downloads all read
//! one node that received the item before the rounds. Then a larger item (sizes are u32)
//! is uploaded to a fresh node over each transport while its peak RSS (`VmHWM`) is read,
//! and downloaded over each transport while the node's and the client's are.
//!
//! The baselines run in this process. Its own crates are built lightly optimised, but the
//! code bytes pass through (std, tokio, libp2p, yamux, Noise) is optimised fully even here
//! (`[profile.dev.package."*"]`): a release build of xtask measures the same. A transfer's
//! time, like a latency, is the `domain` process's, start to exit: its start, dial and
//! handshake count against it.
//!
//! Next to each throughput stands the CPU time spent per GiB by every process that took
//! part (this one for the baselines; the client and the node for a transfer, from
//! `/proc/<pid>/stat`) and the cores it kept busy on average: on a machine with few cores,
//! a transfer that does more work per byte than a baseline cannot keep up with it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use domain_cluster::Multiaddr;
use domain_cluster::addr::{is_plain_quic, is_plain_tcp, loopback_quic, loopback_tcp};
use domain_e2e::build_release_binaries;

use crate::peers::Peers;
use baseline::{in_process, raw_libp2p, raw_tcp, write_fsync};
use cluster::{BenchCluster, BenchNode, one_item};
use procfs::load_average;

mod baseline;
mod clients;
mod cluster;
mod download;
mod flood;
mod latency;
mod procfs;
mod small;

/// Minimum upload throughput, as a multiple of the slowest baseline.
const TARGET_RATIO: f64 = 0.8;
/// Maximum peak RSS of the node during the large upload, in MiB.
const TARGET_RSS_MIB: f64 = 64.0;
/// Bytes per read and write of the baselines: the datastore's and the client's batch.
const BATCH: usize = 1 << 20;
/// The bench's domain.
const DOMAIN: &str = "bench";
/// The protocol of the raw libp2p stream.
const RAW_PROTOCOL: &str = "/bench/raw/1";
/// Limit of one `domain` command (a large upload over a slow transport included).
const COMMAND: Duration = Duration::from_secs(900);
/// Lifetime of the task tokens signed here.
const TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 60);
const MIB: f64 = (1 << 20) as f64;

/// What `cargo xtask bench e2e` measures.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Run only these parts (repeat the flag, or separate them with commas) [default: all].
    #[arg(long, value_enum, value_name = "PART", value_delimiter = ',')]
    only: Vec<Part>,
    /// MiB per transfer of the throughput rounds (upload and download).
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    size_mib: u32,
    /// Rounds of every throughput measurement; the report shows each one's median.
    #[arg(long, value_name = "N", default_value_t = 3)]
    rounds: u32,
    /// MiB of the upload and the download during which peak RSS is read (one item: < 4096;
    /// 0 skips them).
    #[arg(long, value_name = "MIB", default_value_t = 3072)]
    rss_size_mib: u32,
    /// Runs of each command of the latency part; the report shows median, min and max.
    #[arg(long, value_name = "N", default_value_t = 20)]
    latency_runs: u32,
    /// MiB of each upload of the flood part.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    flood_size_mib: u32,
    /// Clients of the clients part.
    #[arg(long, value_name = "N", default_value_t = 8)]
    clients: usize,
    /// MiB each client of the clients part uploads and downloads.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    clients_size_mib: u32,
    /// Files of the small part's folder.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    small_items: usize,
    /// Bytes of each file of the small part.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    small_size: usize,
    /// Sizes of the latency part's clusters, in nodes.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_values_t = [1, 4])]
    latency_nodes: Vec<u32>,
}

impl Options {
    /// Whether the run includes `part`.
    pub(crate) fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// A part of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Part {
    /// Uploads over TCP and QUIC against the baselines; the node's peak RSS.
    Upload,
    /// Downloads over TCP and QUIC against the baselines; the node's and client's peak RSS.
    Download,
    /// `domain ls` and a 1-item download through the manager, on 1 and 4 nodes.
    Latency,
    /// An upload through the manager alone and while 16 fresh identities flood the
    /// manager and the node.
    Flood,
    /// A folder of many small files uploaded to a node and downloaded back, in items/s,
    /// against the local datastore's rate.
    Small,
    /// 8 clients uploading to one node at once, then downloading: aggregate, fairness and
    /// the node's peak RSS against one client alone.
    Clients,
}

/// A transport the client can be made to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Quic => "QUIC",
        }
    }

    /// A loopback listen address on this transport, its port picked by the system.
    fn listen_addr(self) -> Multiaddr {
        match self {
            Self::Tcp => loopback_tcp(),
            Self::Quic => loopback_quic(),
        }
    }

    /// Whether `addr` is a direct address of this transport (plain TCP: not WebSocket).
    fn carries(self, addr: &Multiaddr) -> bool {
        match self {
            Self::Tcp => is_plain_tcp(addr),
            Self::Quic => is_plain_quic(addr),
        }
    }

    /// The first of `addrs` on this transport.
    fn pick(self, addrs: &[String]) -> anyhow::Result<Multiaddr> {
        for addr in addrs {
            let parsed: Multiaddr = addr
                .parse()
                .with_context(|| format!("parsing the address {addr}"))?;
            if self.carries(&parsed) {
                return Ok(parsed);
            }
        }
        bail!("no {} address among {addrs:?}", self.name())
    }
}

/// One measurement of each round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Measure {
    RawTcp,
    RawLibp2p(Transport),
    WriteFsync,
    Upload(Transport),
    Download(Transport),
}

impl Measure {
    /// Every measurement, in the order of a round and of the report.
    const ALL: [Self; 8] = [
        Self::RawTcp,
        Self::RawLibp2p(Transport::Tcp),
        Self::RawLibp2p(Transport::Quic),
        Self::WriteFsync,
        Self::Upload(Transport::Tcp),
        Self::Upload(Transport::Quic),
        Self::Download(Transport::Tcp),
        Self::Download(Transport::Quic),
    ];

    fn label(self) -> &'static str {
        match self {
            Self::RawTcp => "(a) raw loopback TCP",
            Self::RawLibp2p(Transport::Tcp) => "(b) libp2p stream, TCP+Noise+Yamux",
            Self::RawLibp2p(Transport::Quic) => "(b) libp2p stream, QUIC",
            Self::WriteFsync => "(c) file write + fsync",
            Self::Upload(Transport::Tcp) => "    upload over TCP",
            Self::Upload(Transport::Quic) => "    upload over QUIC",
            Self::Download(Transport::Tcp) => "    download over TCP",
            Self::Download(Transport::Quic) => "    download over QUIC",
        }
    }

    /// The part that measures it; none for a baseline, which both throughput parts need.
    fn part(self) -> Option<Part> {
        match self {
            Self::Upload(_) => Some(Part::Upload),
            Self::Download(_) => Some(Part::Download),
            Self::RawTcp | Self::RawLibp2p(_) | Self::WriteFsync => None,
        }
    }

    /// Whether the upload over `transport` is held against it: the raw libp2p stream
    /// over the same transport, the raw loopback TCP and the disk.
    fn is_baseline_for(self, transport: Transport) -> bool {
        match self {
            Self::RawTcp | Self::WriteFsync => true,
            Self::RawLibp2p(over) => over == transport,
            Self::Upload(_) | Self::Download(_) => false,
        }
    }
}

/// What one transfer took: wall time, and CPU time of every process that worked on it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Measured {
    took: Duration,
    cpu: Duration,
}

/// One measurement's result.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    /// MiB/s.
    throughput: f64,
    /// CPU seconds per GiB moved.
    cpu_per_gib: f64,
}

impl Sample {
    fn new(bytes: u64, measured: Measured) -> Self {
        let gib = bytes as f64 / (MIB * 1024.0);
        Self {
            throughput: mib_per_s(bytes, measured.took),
            cpu_per_gib: measured.cpu.as_secs_f64() / gib.max(1e-12),
        }
    }

    /// Cores kept busy on average.
    fn cores(self) -> f64 {
        self.cpu_per_gib * self.throughput / 1024.0
    }
}

/// One sample per round, by measurement.
type Samples = BTreeMap<Measure, Vec<Sample>>;

/// The node's peak RSS during the large upload over one transport.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PeakRss {
    transport: Transport,
    /// MiB uploaded.
    size_mib: u32,
    /// Its throughput, MiB/s.
    throughput: f64,
    /// `VmHWM` of the node, in bytes.
    hwm: u64,
}

/// What the throughput parts found.
#[derive(Debug, Default)]
struct Throughput {
    samples: Samples,
    upload_peaks: Vec<PeakRss>,
    download_peaks: Vec<download::DownloadPeak>,
}

/// Runs the bench.
pub fn run(options: &Options) -> anyhow::Result<()> {
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    ensure!(
        options.latency_runs > 0,
        "--latency-runs must be at least 1"
    );
    ensure!(
        options.latency_nodes.iter().all(|&n| n > 0),
        "--latency-nodes: a cluster needs at least 1 node"
    );
    let size = item_size(options.size_mib, "--size-mib")?;
    let rss_size = match options.rss_size_mib {
        0 => None,
        mib => Some(item_size(mib, "--rss-size-mib")?),
    };

    say("building domain-manager, domain-node and domain in release");
    build_release_binaries(&["domain-manager", "domain-node", "domain-cli"])
        .context("building the release binaries")?;
    let dir = tempfile::Builder::new()
        .prefix("domain-bench-e2e-")
        .tempdir()
        .context("creating the bench's temporary folder")?;
    let peers = Peers::new(dir.path().to_path_buf(), "bench e2e")?;
    let load_before = load_average();
    let result = bench(options, size, rss_size, dir.path(), &peers);
    let _ = peers.stop_all();
    result?;
    // The machine may be shared: say how busy it was.
    println!(
        "load average (1, 5, 15 min) on {} CPUs: {} before, {} after",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_before.as_deref().unwrap_or("unknown"),
        load_average().as_deref().unwrap_or("unknown"),
    );
    Ok(())
}

/// `mib` MiB as an item size (a u32), or why it cannot be one.
fn item_size(mib: u32, flag: &str) -> anyhow::Result<u64> {
    let bytes = u64::from(mib) << 20;
    ensure!(
        mib > 0 && u32::try_from(bytes).is_ok(),
        "{flag} {mib}: an item holds 1 byte to 4 GiB - 1, so 1 to 4095 MiB"
    );
    Ok(bytes)
}

/// Runs the parts asked for, printing each one's report as soon as it is done, so that a
/// later part that fails does not lose the figures of an earlier one.
fn bench(
    options: &Options,
    size: u64,
    rss_size: Option<u64>,
    dir: &Path,
    peers: &Peers,
) -> anyhow::Result<()> {
    if options.runs(Part::Upload) || options.runs(Part::Download) {
        let found = throughput(options, size, rss_size, dir, peers)?;
        print!(
            "{}",
            report(
                options.size_mib,
                &found.samples,
                &found.upload_peaks,
                &found.download_peaks
            )
        );
    }
    if options.runs(Part::Latency) {
        let mut found = Vec::new();
        for &nodes in &options.latency_nodes {
            found.push(latency::measure(dir, peers, nodes, options.latency_runs)?);
        }
        print!("{}", latency::report(options.latency_runs, &found));
    }
    if options.runs(Part::Small) {
        let cluster = BenchCluster::start(dir, peers, "manager-small")?;
        let found = small::measure(
            &cluster,
            dir,
            options.small_items,
            options.small_size,
            options.rounds,
        );
        cluster.stop();
        print!("{}", small::report(&found?));
    }
    if options.runs(Part::Clients) {
        ensure!(options.clients > 0, "--clients must be at least 1");
        item_size(options.clients_size_mib, "--clients-size-mib")?;
        let cluster = BenchCluster::start(dir, peers, "manager-clients")?;
        let found = clients::measure(&cluster, dir, options.clients, options.clients_size_mib);
        cluster.stop();
        print!("{}", clients::report(&found?));
    }
    if options.runs(Part::Flood) {
        let found = flood::measure(dir, peers, options.flood_size_mib, options.rounds)?;
        print!("{}", flood::report(&found));
    }
    Ok(())
}

fn throughput(
    options: &Options,
    size: u64,
    rss_size: Option<u64>,
    dir: &Path,
    peers: &Peers,
) -> anyhow::Result<Throughput> {
    let data = dir.join("data.bin");
    generate(&data, size, 1)?;
    let cluster = BenchCluster::start(dir, peers, "manager")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let serving = match options.runs(Part::Download) {
        true => Some(download::Serving::start(
            &cluster,
            "node-load",
            &data,
            size,
        )?),
        false => None,
    };

    let measures: Vec<Measure> = Measure::ALL
        .into_iter()
        .filter(|measure| measure.part().is_none_or(|part| options.runs(part)))
        .collect();
    let mut found = Throughput::default();
    for round in 1..=options.rounds {
        for &measure in &measures {
            let measured = match measure {
                Measure::RawTcp => in_process(|| raw_tcp(&data, size))?,
                Measure::RawLibp2p(transport) => {
                    in_process(|| runtime.block_on(raw_libp2p(&data, size, transport)))?
                }
                Measure::WriteFsync => in_process(|| write_fsync(&data, &dir.join("copy.bin")))?,
                Measure::Upload(transport) => {
                    let name = format!("node-{}-{round}", transport.name().to_lowercase());
                    cluster.upload(&name, &data, transport)?.measured
                }
                Measure::Download(transport) => serving
                    .as_ref()
                    .context("no node serves the downloads")?
                    .download(&cluster, transport)?,
            };
            let sample = Sample::new(size, measured);
            say(&format!(
                "round {round}/{}: {:<36} {:>6.0} MiB/s, {:.2} CPU s/GiB",
                options.rounds,
                measure.label().trim_start(),
                sample.throughput,
                sample.cpu_per_gib,
            ));
            found.samples.entry(measure).or_default().push(sample);
        }
    }
    if let Some(serving) = serving {
        serving.stop(&cluster)?;
    }
    std::fs::remove_file(&data).with_context(|| format!("removing {}", data.display()))?;

    if let Some(rss_size) = rss_size {
        let big = dir.join("big.bin");
        generate(&big, rss_size, 2)?;
        if options.runs(Part::Upload) {
            found.upload_peaks = upload_peaks(&cluster, &big, options.rss_size_mib)?;
        }
        if options.runs(Part::Download) {
            found.download_peaks = download::peaks(&cluster, &big, options.rss_size_mib)?;
        }
        std::fs::remove_file(&big).with_context(|| format!("removing {}", big.display()))?;
    }
    cluster.stop();
    Ok(found)
}

/// The node's peak RSS during an upload of `big` (`size_mib` MiB) over each transport.
fn upload_peaks(
    cluster: &BenchCluster<'_>,
    big: &Path,
    size_mib: u32,
) -> anyhow::Result<Vec<PeakRss>> {
    let mut peaks = Vec::new();
    for transport in [Transport::Tcp, Transport::Quic] {
        let name = format!("node-rss-{}", transport.name().to_lowercase());
        let uploaded = cluster.upload(&name, big, transport)?;
        let peak = PeakRss {
            transport,
            size_mib,
            throughput: mib_per_s(u64::from(size_mib) << 20, uploaded.measured.took),
            hwm: uploaded.node_hwm,
        };
        say(&format!(
            "{} MiB upload over {}: {:.0} MiB/s, node peak RSS {:.1} MiB",
            peak.size_mib,
            transport.name(),
            peak.throughput,
            peak.hwm as f64 / MIB
        ));
        peaks.push(peak);
    }
    Ok(peaks)
}

/// Writes `len` bytes of pattern data to `path` and syncs them, so that no writeback of
/// the generated file runs during a measurement.
fn generate(path: &Path, len: u64, seed: u64) -> anyhow::Result<()> {
    say(&format!(
        "generating {} MiB of pattern data",
        len as f64 / MIB
    ));
    let len = usize::try_from(len).context("the file is too large for this platform")?;
    crate::demo::generate_seeded(path, len, seed)?;
    File::open(path)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("fsync of {}", path.display()))
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MIB / took.as_secs_f64().max(1e-9)
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// The table of medians, the ratios and the target checks of the throughput parts, as
/// printed.
fn report(
    size_mib: u32,
    samples: &Samples,
    peaks: &[PeakRss],
    download_peaks: &[download::DownloadPeak],
) -> String {
    let median_of = |measure: Measure, value: fn(&Sample) -> f64| {
        let values: Vec<f64> = samples.get(&measure)?.iter().map(value).collect();
        median(&values)
    };
    let throughput = |measure| median_of(measure, |s| s.throughput);
    let slowest = |transport| {
        Measure::ALL
            .into_iter()
            .filter(|measure| measure.is_baseline_for(transport))
            .filter_map(|measure| Some((measure, throughput(measure)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    };

    let mut out = String::new();
    let rounds = samples.values().map(Vec::len).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "\n{size_mib} MiB per transfer; medians of {rounds} rounds, each round's MiB/s in brackets"
    );
    let _ = writeln!(
        out,
        "{:<37} {:>12} {:>10} {:>6}",
        "", "throughput", "CPU s/GiB", "cores"
    );
    for measure in Measure::ALL {
        let (Some(values), Some(value)) = (samples.get(&measure), throughput(measure)) else {
            continue;
        };
        let cpu = median_of(measure, |s| s.cpu_per_gib).unwrap_or_default();
        let cores = median_of(measure, |s| s.cores()).unwrap_or_default();
        let each: Vec<String> = values
            .iter()
            .map(|sample| format!("{:.0}", sample.throughput))
            .collect();
        let ratio = match measure {
            Measure::Upload(transport) => slowest(transport)
                .map(|(_, base)| format!("  {:.2} x slowest", value / base))
                .unwrap_or_default(),
            Measure::Download(transport) => throughput(Measure::RawLibp2p(transport))
                .map(|base| format!("  {:.2} x (b) {}", value / base, transport.name()))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<37} {value:>6.0} MiB/s {cpu:>10.2} {cores:>6.2}  [{}]{ratio}",
            measure.label(),
            each.join(", ")
        );
    }
    for transport in [Transport::Tcp, Transport::Quic] {
        let (Some((base_measure, base)), Some(value)) =
            (slowest(transport), throughput(Measure::Upload(transport)))
        else {
            continue;
        };
        let achieved = value / base;
        let verdict = verdict(achieved >= TARGET_RATIO);
        let name = transport.name();
        let _ = writeln!(
            out,
            "\nupload over {name}: slowest baseline {} at {base:.0} MiB/s",
            base_measure.label().trim_start()
        );
        let _ = writeln!(
            out,
            "target upload over {name} >= {TARGET_RATIO:.2} x slowest: {achieved:.2}, {verdict}"
        );
    }
    for peak in peaks {
        let hwm = peak.hwm as f64 / MIB;
        let verdict = verdict(hwm <= TARGET_RSS_MIB);
        let _ = writeln!(
            out,
            "node peak RSS (VmHWM) during a {} MiB upload over {} ({:.0} MiB/s): {hwm:.1} MiB; target <= {TARGET_RSS_MIB:.0} MiB, {verdict}",
            peak.size_mib,
            peak.transport.name(),
            peak.throughput
        );
    }
    download::write_report(&mut out, &throughput, download_peaks);
    out
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn say(line: &str) {
    println!("bench e2e: {line}");
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWD51SR7iHbeSZk8CrZ3YpqgpXkJRUhU2s5es5mSL9vxyR";

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_two_middle_ones() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn a_sample_gives_cpu_per_gib_and_cores_busy() {
        let sample = Sample::new(
            1 << 29,
            Measured {
                took: Duration::from_secs(2),
                cpu: Duration::from_secs(3),
            },
        );
        assert!((sample.throughput - 256.0).abs() < 1e-9);
        assert!((sample.cpu_per_gib - 6.0).abs() < 1e-9);
        assert!((sample.cores() - 1.5).abs() < 1e-9);
    }

    #[test]
    fn each_transport_picks_its_own_direct_address() {
        let addrs = [
            format!("/ip4/127.0.0.1/tcp/4002/ws/p2p/{PEER}"),
            format!("/ip4/127.0.0.1/udp/4003/quic-v1/p2p/{PEER}"),
            format!("/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"),
        ];
        let tcp = Transport::Tcp.pick(&addrs).unwrap();
        assert_eq!(tcp.to_string(), addrs[2]);
        let quic = Transport::Quic.pick(&addrs).unwrap();
        assert_eq!(quic.to_string(), addrs[1]);
        assert_eq!(
            domain_cluster::addr::peer_of(&quic).unwrap().to_string(),
            PEER
        );
        assert!(Transport::Quic.pick(&addrs[2..]).is_err());
    }

    #[test]
    fn item_sizes_stay_within_a_u32() {
        assert_eq!(item_size(1024, "--size-mib").unwrap(), 1 << 30);
        assert_eq!(item_size(4095, "--size-mib").unwrap(), 4095 << 20);
        assert!(item_size(4096, "--size-mib").is_err());
        assert!(item_size(0, "--size-mib").is_err());
    }

    #[test]
    fn report_holds_each_upload_against_the_slowest_baseline_of_its_transport() {
        let at = |values: &[f64]| -> Vec<Sample> {
            values
                .iter()
                .map(|&throughput| Sample {
                    throughput,
                    cpu_per_gib: 2.0,
                })
                .collect()
        };
        let samples: Samples = [
            (Measure::RawTcp, at(&[3000.0, 2900.0, 3100.0])),
            (
                Measure::RawLibp2p(Transport::Tcp),
                at(&[400.0, 380.0, 390.0]),
            ),
            (Measure::RawLibp2p(Transport::Quic), at(&[250.0])),
            (Measure::WriteFsync, at(&[300.0, 310.0, 290.0])),
            (Measure::Upload(Transport::Tcp), at(&[270.0, 250.0, 260.0])),
            (Measure::Upload(Transport::Quic), at(&[200.0])),
        ]
        .into();
        let peaks = [PeakRss {
            transport: Transport::Tcp,
            size_mib: 3072,
            throughput: 255.0,
            hwm: 40 << 20,
        }];
        let table = report(1024, &samples, &peaks, &[]);
        assert!(table.contains("medians of 3 rounds"), "{table}");
        assert!(
            table.contains(
                "(c) file write + fsync                   300 MiB/s       2.00   0.59  [300, 310, 290]"
            ),
            "{table}"
        );
        assert!(
            table.contains("upload over TCP: slowest baseline (c) file write + fsync at 300 MiB/s"),
            "{table}"
        );
        assert!(
            table.contains(
                "upload over QUIC: slowest baseline (b) libp2p stream, QUIC at 250 MiB/s"
            ),
            "{table}"
        );
        assert!(
            table.contains("260 MiB/s       2.00   0.51  [270, 250, 260]  0.87 x slowest"),
            "{table}"
        );
        assert!(
            table.contains("target upload over TCP >= 0.80 x slowest: 0.87, met"),
            "{table}"
        );
        assert!(
            table.contains("200 MiB/s       2.00   0.39  [200]  0.80 x slowest"),
            "{table}"
        );
        assert!(
            table.contains("target upload over QUIC >= 0.80 x slowest: 0.80, met"),
            "{table}"
        );
        assert!(
            table.contains("3072 MiB upload over TCP (255 MiB/s): 40.0 MiB; target <= 64 MiB, met"),
            "{table}"
        );
        assert!(!table.contains("download"), "{table}");
    }

    #[test]
    fn report_holds_each_download_against_the_raw_stream_of_its_transport() {
        let at = |throughput: f64| {
            vec![Sample {
                throughput,
                cpu_per_gib: 1.0,
            }]
        };
        let samples: Samples = [
            (Measure::RawLibp2p(Transport::Tcp), at(400.0)),
            (Measure::RawLibp2p(Transport::Quic), at(250.0)),
            (Measure::Download(Transport::Tcp), at(340.0)),
            (Measure::Download(Transport::Quic), at(200.0)),
        ]
        .into();
        let table = report(256, &samples, &[], &[]);
        assert!(
            table.contains("    download over TCP                    340 MiB/s       1.00   0.33  [340]  0.85 x (b) TCP"),
            "{table}"
        );
        assert!(
            table.contains("200 MiB/s       1.00   0.20  [200]  0.80 x (b) QUIC"),
            "{table}"
        );
        assert!(
            table.contains("target download over TCP >= 0.85 x (b) TCP: 0.85, met"),
            "{table}"
        );
        assert!(!table.contains("upload"), "{table}");
    }

    #[test]
    fn the_item_id_is_the_first_field_of_the_one_line_printed() {
        let line = "id-1  3f2a  /tmp/out/id-1\n";
        assert_eq!(one_item(line).unwrap(), "id-1");
        assert!(one_item("").is_err());
        assert!(one_item("id-1\n").is_err());
        assert!(one_item(&format!("{line}{line}")).is_err());
    }

    #[test]
    fn each_part_runs_only_its_own_measures() {
        let parts: Vec<Option<Part>> = Measure::ALL.iter().map(|m| m.part()).collect();
        assert_eq!(parts.iter().filter(|p| p.is_none()).count(), 4);
        assert_eq!(
            Measure::ALL
                .iter()
                .filter(|m| m.part() == Some(Part::Download))
                .count(),
            2
        );
        assert!(!Measure::Download(Transport::Tcp).is_baseline_for(Transport::Tcp));
    }
}
