//! `cargo xtask bench e2e`: the end-to-end upload bench, measured against its limits.
//!
//! An upload is bound by the slowest of what it is made of: moving bytes over loopback,
//! libp2p's encryption and multiplexing, and writing them durably. So each round measures,
//! over the same bytes (a file of pattern data in a temporary folder, read by every sender):
//!
//! - (a) raw loopback TCP: std sockets, no libp2p;
//! - (b) one raw libp2p stream (no handshake, no storage), through `domain-cluster`, over
//!   TCP + Noise + Yamux and over QUIC;
//! - (c) a plain file write and fsync into the temporary folder (the same disk);
//! - the upload: `domain upload` (release build) straight to a node, over TCP and over QUIC,
//!   stored with fsync by the node's datastore.
//!
//! Every upload goes to a node started for it with an empty store, since a datastore keeps
//! identical content once and would skip writing it again. The client dials the node's
//! `/tcp` or `/udp/.../quic-v1` address itself (the direct form of `domain upload`, with a
//! token signed here with the domain's key from the manager's data folder), so that the
//! connection runs over that transport. Then a larger upload, one item (sizes are u32),
//! goes to a fresh node over each transport while its peak RSS (`VmHWM`) is read.
//!
//! The baselines run in this process. Its own crates are built lightly optimised, but the
//! code bytes pass through (std, tokio, libp2p, yamux, Noise) is optimised fully even here
//! (`[profile.dev.package."*"]`): a release build of xtask measures the same. The upload's
//! time is the `domain` process's, start to exit: its start, dial and handshake count
//! against it.
//!
//! Next to each throughput stands the CPU time spent per GiB by every process that took
//! part (this one for the baselines; the client and the node for an upload, from
//! `/proc/<pid>/stat`) and the cores it kept busy on average: on a machine with few cores,
//! an upload that does more work per byte than a baseline cannot keep up with it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use domain_auth::{DomainKey, DomainKeyStore, TaskClaims};
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterHandle, Multiaddr, PeerId};
use domain_e2e::{build_release_binaries, release_binary};

use crate::peers::Peers;
use domain_proto::protocols::STORE_V1;
use libp2p::multiaddr::Protocol;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
/// Lifetime of the upload tokens.
const TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 60);
const MIB: f64 = (1 << 20) as f64;

/// What `cargo xtask bench e2e` measures.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// MiB per transfer of the throughput rounds.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    size_mib: u32,
    /// Rounds of every measurement; the report shows each one's median.
    #[arg(long, value_name = "N", default_value_t = 3)]
    rounds: u32,
    /// MiB of the upload during which the node's peak RSS is read (one item: < 4096).
    #[arg(long, value_name = "MIB", default_value_t = 3072)]
    rss_size_mib: u32,
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
        let ip = Multiaddr::empty().with(Protocol::Ip4(Ipv4Addr::LOCALHOST));
        match self {
            Self::Tcp => ip.with(Protocol::Tcp(0)),
            Self::Quic => ip.with(Protocol::Udp(0)).with(Protocol::QuicV1),
        }
    }

    /// Whether `addr` is a direct address of this transport (plain TCP: not WebSocket).
    fn carries(self, addr: &Multiaddr) -> bool {
        let mut tcp = false;
        let mut quic = false;
        for protocol in addr.iter() {
            match protocol {
                Protocol::Tcp(_) => tcp = true,
                Protocol::QuicV1 => quic = true,
                Protocol::Ws(_) | Protocol::Wss(_) | Protocol::P2pCircuit => return false,
                _ => {}
            }
        }
        match self {
            Self::Tcp => tcp,
            Self::Quic => quic,
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
}

impl Measure {
    /// Every measurement, in the order of a round and of the report.
    const ALL: [Self; 6] = [
        Self::RawTcp,
        Self::RawLibp2p(Transport::Tcp),
        Self::RawLibp2p(Transport::Quic),
        Self::WriteFsync,
        Self::Upload(Transport::Tcp),
        Self::Upload(Transport::Quic),
    ];

    fn label(self) -> &'static str {
        match self {
            Self::RawTcp => "(a) raw loopback TCP",
            Self::RawLibp2p(Transport::Tcp) => "(b) libp2p stream, TCP+Noise+Yamux",
            Self::RawLibp2p(Transport::Quic) => "(b) libp2p stream, QUIC",
            Self::WriteFsync => "(c) file write + fsync",
            Self::Upload(Transport::Tcp) => "    upload over TCP",
            Self::Upload(Transport::Quic) => "    upload over QUIC",
        }
    }

    /// Whether the upload over `transport` is held against it: the raw libp2p stream
    /// over the same transport, the raw loopback TCP and the disk.
    fn is_baseline_for(self, transport: Transport) -> bool {
        match self {
            Self::RawTcp | Self::WriteFsync => true,
            Self::RawLibp2p(over) => over == transport,
            Self::Upload(_) => false,
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

/// Runs the bench.
pub fn run(options: &Options) -> anyhow::Result<()> {
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    let size = item_size(options.size_mib, "--size-mib")?;
    let rss_size = item_size(options.rss_size_mib, "--rss-size-mib")?;

    say("building domain-manager, domain-node and domain in release");
    build_release_binaries(&["domain-manager", "domain-node", "domain-client"])
        .context("building the release binaries")?;
    let dir = tempfile::Builder::new()
        .prefix("domain-bench-e2e-")
        .tempdir()
        .context("creating the bench's temporary folder")?;
    let peers = Peers::new(dir.path().to_path_buf(), "bench e2e")?;
    let load_before = load_average();
    let result = bench(options, size, rss_size, dir.path(), &peers);
    let _ = peers.stop_all();
    let (samples, peaks) = result?;
    print!("{}", report(options.size_mib, &samples, &peaks));
    // The machine may be shared: say how busy it was.
    println!(
        "load average (1, 5, 15 min) on {} CPUs: {} before, {} after",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_before.as_deref().unwrap_or("unknown"),
        load_average().as_deref().unwrap_or("unknown"),
    );
    Ok(())
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
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

fn bench(
    options: &Options,
    size: u64,
    rss_size: u64,
    dir: &Path,
    peers: &Peers,
) -> anyhow::Result<(Samples, Vec<PeakRss>)> {
    let data = dir.join("data.bin");
    generate(&data, size, 1)?;
    let cluster = BenchCluster::start(dir, peers)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    let mut samples = Samples::new();
    for round in 1..=options.rounds {
        for measure in Measure::ALL {
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
            };
            let sample = Sample::new(size, measured);
            say(&format!(
                "round {round}/{}: {:<36} {:>6.0} MiB/s, {:.2} CPU s/GiB",
                options.rounds,
                measure.label().trim_start(),
                sample.throughput,
                sample.cpu_per_gib,
            ));
            samples.entry(measure).or_default().push(sample);
        }
    }
    std::fs::remove_file(&data).with_context(|| format!("removing {}", data.display()))?;

    let big = dir.join("big.bin");
    generate(&big, rss_size, 2)?;
    let mut peaks = Vec::new();
    for transport in [Transport::Tcp, Transport::Quic] {
        let name = format!("node-rss-{}", transport.name().to_lowercase());
        let uploaded = cluster.upload(&name, &big, transport)?;
        let peak = PeakRss {
            transport,
            size_mib: options.rss_size_mib,
            throughput: mib_per_s(rss_size, uploaded.measured.took),
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
    Ok((samples, peaks))
}

/// A manager, a domain, a client identity and the key to sign its tokens.
struct BenchCluster<'a> {
    peers: &'a Peers,
    dir: PathBuf,
    manager: String,
    key: DomainKey,
    client: PeerId,
    identity: PathBuf,
}

/// What one upload took.
struct Uploaded {
    /// The `domain upload` process, start to exit; CPU time of it and of the node.
    measured: Measured,
    /// The node's `VmHWM` at the end, in bytes.
    node_hwm: u64,
}

impl<'a> BenchCluster<'a> {
    /// Creates the domain (the client on its allow-list) and starts the manager.
    fn start(dir: &Path, peers: &'a Peers) -> anyhow::Result<Self> {
        let client_dir = dir.join("client");
        std::fs::create_dir(&client_dir)
            .with_context(|| format!("creating {}", client_dir.display()))?;
        let identity = client_dir.join("identity.key");
        let client = Identity::load_or_create(&identity)
            .with_context(|| format!("creating the client identity {}", identity.display()))?
            .peer_id();

        let manager_dir = path_arg(&dir.join("manager"));
        let program = release_binary("domain-manager").context("locating domain-manager")?;
        let client_id = client.to_string();
        let created = domain_e2e::run(
            "domain-manager domain create",
            &program,
            [
                "domain",
                "create",
                DOMAIN,
                "--data-dir",
                &manager_dir,
                "--allow",
                &client_id,
            ],
            COMMAND,
        )?;
        ensure!(
            created.status.success(),
            "domain-manager domain create failed ({}): {}",
            created.status,
            created.stderr.trim()
        );
        let key = DomainKeyStore::open(dir.join("manager").join("keys"))
            .and_then(|keys| keys.key(DOMAIN))
            .context("reading the domain's key from the manager's data folder")?;

        let (ready, _) = peers.start("manager", &program, &["run", "--data-dir", &manager_dir])?;
        say(&format!("manager ready at {}", ready.addr));
        Ok(Self {
            peers,
            dir: dir.to_path_buf(),
            manager: ready.addr,
            key,
            client,
            identity,
        })
    }

    /// Starts a node named `name` with an empty store, uploads `file` to it over
    /// `transport`, reads its peak RSS, stops it and removes its data.
    fn upload(&self, name: &str, file: &Path, transport: Transport) -> anyhow::Result<Uploaded> {
        let node_dir = self.dir.join(name);
        let program = release_binary("domain-node").context("locating domain-node")?;
        let node_dir_arg = path_arg(&node_dir);
        let (ready, pid) = self.peers.start(
            name,
            &program,
            &[
                "run",
                "--manager",
                &self.manager,
                "--data-dir",
                &node_dir_arg,
                "--name",
                name,
            ],
        )?;
        let addr = transport.pick(&ready.listening)?;
        let node = peer_of(&addr).with_context(|| format!("{addr} names no peer"))?;
        let claims = TaskClaims::new(
            DOMAIN,
            "bench-e2e",
            name,
            self.client.to_string(),
            node.to_string(),
            STORE_V1,
            SystemTime::now(),
            TOKEN_LIFETIME,
        );
        let token = self
            .key
            .issue(&claims)
            .context("signing the upload token")?;

        let domain = release_binary("domain").context("locating domain")?;
        let (file_arg, addr_arg, identity) =
            (path_arg(file), addr.to_string(), path_arg(&self.identity));
        let node_cpu = cpu_time(&pid.to_string())?.own;
        let client_cpu = cpu_time("self")?.children;
        let started = Instant::now();
        let output = domain_e2e::run(
            "domain upload",
            &domain,
            [
                "upload",
                &file_arg,
                "--domain",
                DOMAIN,
                "--node",
                &addr_arg,
                "--token",
                &token,
                "--identity",
                &identity,
            ],
            COMMAND,
        )?;
        let took = started.elapsed();
        // The client was reaped by now, so its time counts among this process's children.
        let cpu = cpu_time("self")?.children.saturating_sub(client_cpu)
            + cpu_time(&pid.to_string())?.own.saturating_sub(node_cpu);
        ensure!(
            output.status.success(),
            "domain upload to {name} over {} failed ({}): {}",
            transport.name(),
            output.status,
            output.stderr.trim()
        );
        // The client has compared the node's root with its own: one line per stored item.
        ensure!(
            output.stdout.lines().count() == 1,
            "domain upload printed {:?}, not one item line",
            output.stdout
        );
        let node_hwm = peak_rss(pid)?;
        self.peers.stop(name);
        std::fs::remove_dir_all(&node_dir)
            .with_context(|| format!("removing {}", node_dir.display()))?;
        Ok(Uploaded {
            measured: Measured { took, cpu },
            node_hwm,
        })
    }
}

/// (a): the file's bytes over a loopback TCP connection, read to the end on the other side.
fn raw_tcp(file: &Path, len: u64) -> anyhow::Result<Duration> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding loopback TCP")?;
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    std::thread::scope(|scope| {
        let receiver = scope.spawn(move || -> std::io::Result<u64> {
            let (mut stream, _) = listener.accept()?;
            let mut buf = vec![0u8; BATCH];
            let mut total = 0;
            loop {
                match stream.read(&mut buf)? {
                    0 => return Ok(total),
                    n => total += n as u64,
                }
            }
        });
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).context("connecting over loopback TCP")?;
        copy_file(file, &mut stream)?;
        stream
            .shutdown(Shutdown::Write)
            .context("closing the sending side")?;
        let received = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))?
            .context("receiving over loopback TCP")?;
        let took = started.elapsed();
        ensure!(received == len, "received {received} of {len} bytes");
        Ok(took)
    })
}

/// (b): the file's bytes on one raw libp2p stream between two peers of this process,
/// counted to the end by the receiver, which answers with the count.
async fn raw_libp2p(file: &Path, len: u64, transport: Transport) -> anyhow::Result<Duration> {
    let receiver_config = ClusterConfig::new(Identity::generate(), Role::Node)
        .with_listen_addrs([transport.listen_addr()]);
    let (receiver, _) = Cluster::start(receiver_config).context("starting the receiving peer")?;
    let (sender, _) = Cluster::start(ClusterConfig::new(Identity::generate(), Role::Client))
        .context("starting the sending peer")?;
    let result = raw_libp2p_between(&sender, &receiver, file, len, transport).await;
    let _ = sender.shutdown().await;
    let _ = receiver.shutdown().await;
    result
}

async fn raw_libp2p_between(
    sender: &ClusterHandle,
    receiver: &ClusterHandle,
    file: &Path,
    len: u64,
    transport: Transport,
) -> anyhow::Result<Duration> {
    let addrs = receiver
        .listen_addrs()
        .await
        .context("waiting for the receiver's address")?;
    let addr = addrs
        .into_iter()
        .find(|addr| transport.carries(addr))
        .with_context(|| format!("the receiver listens on no {} address", transport.name()))?;
    let mut incoming = receiver.accept(RAW_PROTOCOL)?;
    let counting = tokio::spawn(async move {
        let (_, mut stream) = incoming
            .next()
            .await
            .context("the receiver stopped before the stream came")?;
        let mut buf = vec![0u8; BATCH];
        let mut total = 0u64;
        loop {
            match stream
                .read(&mut buf)
                .await
                .context("receiving the stream")?
            {
                0 => break,
                n => total += n as u64,
            }
        }
        stream
            .write_all(&total.to_be_bytes())
            .await
            .context("answering with the count")?;
        stream.shutdown().await.context("closing the stream")?;
        anyhow::Ok(total)
    });

    let started = Instant::now();
    let peer = sender.dial(addr).await?;
    let mut stream = sender.open_stream(peer, RAW_PROTOCOL).await?;
    let mut source = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let mut buf = vec![0u8; BATCH];
    loop {
        let n = source
            .read(&mut buf)
            .await
            .with_context(|| format!("reading {}", file.display()))?;
        if n == 0 {
            break;
        }
        stream
            .write_all(&buf[..n])
            .await
            .context("sending on the stream")?;
    }
    stream
        .shutdown()
        .await
        .context("closing the sending side")?;
    let mut count = [0u8; 8];
    stream
        .read_exact(&mut count)
        .await
        .context("reading the receiver's count")?;
    let took = started.elapsed();
    let received = counting.await.context("the receiving task failed")??;
    ensure!(
        received == len && u64::from_be_bytes(count) == len,
        "received {received} of {len} bytes"
    );
    Ok(took)
}

/// (c): the file's bytes written to `copy` and fsynced.
fn write_fsync(file: &Path, copy: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut out = File::create_new(copy).with_context(|| format!("creating {}", copy.display()))?;
    copy_file(file, &mut out)?;
    out.sync_all()
        .with_context(|| format!("fsync of {}", copy.display()))?;
    let took = started.elapsed();
    drop(out);
    std::fs::remove_file(copy).with_context(|| format!("removing {}", copy.display()))?;
    Ok(took)
}

/// Copies the file at `path` into `out` in batches of [`BATCH`].
fn copy_file(path: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let mut source = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; BATCH];
    loop {
        let n = source
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n]).context("writing the copy")?;
    }
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

/// Runs `measure` (which answers with its wall time) and adds the CPU time this process
/// spent meanwhile, on all its threads.
fn in_process(measure: impl FnOnce() -> anyhow::Result<Duration>) -> anyhow::Result<Measured> {
    let before = cpu_time("self")?.own;
    let took = measure()?;
    let cpu = cpu_time("self")?.own.saturating_sub(before);
    Ok(Measured { took, cpu })
}

/// CPU time (user and system) of a process, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTime {
    /// Its own threads.
    own: Duration,
    /// Its children that it has waited for.
    children: Duration,
}

/// The [`CpuTime`] of process `pid` (a number, or `self`).
fn cpu_time(pid: &str) -> anyhow::Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_time(&stat).with_context(|| format!("{path}: no CPU times in {stat:?}"))
}

/// The CPU times of a `/proc/<pid>/stat` line: utime, stime, cutime, cstime are fields 14
/// to 17, in clock ticks of `USER_HZ` (100 wherever Linux has `/proc`, x86 and ARM alike).
fn parse_cpu_time(stat: &str) -> Option<CpuTime> {
    let ticks = |n: u64| Duration::from_millis(n.saturating_mul(10));
    // The command name (field 2) is in parentheses and may hold spaces.
    let (_, after_name) = stat.rsplit_once(')')?;
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let &[utime, stime, cutime, cstime] = fields.as_slice() else {
        return None;
    };
    Some(CpuTime {
        own: ticks(utime + stime),
        children: ticks(cutime + cstime),
    })
}

/// The peak resident set size (`VmHWM`) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_hwm(&status).with_context(|| format!("{path} has no VmHWM line"))
}

/// The `VmHWM:  <n> kB` line of a `/proc/<pid>/status`, in bytes.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kib * 1024)
}

/// The peer id at the end of `addr` (`/p2p/<id>`).
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
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

/// The table of medians, the upload ratios and the target checks, as printed.
fn report(size_mib: u32, samples: &Samples, peaks: &[PeakRss]) -> String {
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
        let verdict = if achieved >= TARGET_RATIO {
            "met"
        } else {
            "MISSED"
        };
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
        let verdict = if hwm <= TARGET_RSS_MIB {
            "met"
        } else {
            "MISSED"
        };
        let _ = writeln!(
            out,
            "node peak RSS (VmHWM) during a {} MiB upload over {} ({:.0} MiB/s): {hwm:.1} MiB; target <= {TARGET_RSS_MIB:.0} MiB, {verdict}",
            peak.size_mib,
            peak.transport.name(),
            peak.throughput
        );
    }
    out
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
    fn cpu_times_are_read_from_proc_stat_whatever_the_command_name() {
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 25 7 3 20 0 4 0 100 1000 200";
        let times = parse_cpu_time(stat).unwrap();
        assert_eq!(times.own, Duration::from_millis(1750));
        assert_eq!(times.children, Duration::from_millis(100));
        assert_eq!(parse_cpu_time("4242 (x) S 1 2"), None);
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
    fn vm_hwm_is_read_in_bytes_from_proc_status() {
        let status =
            "Name:\tdomain-node\nVmPeak:\t  900000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(23456 * 1024));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
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
        assert_eq!(peer_of(&quic).unwrap().to_string(), PEER);
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
        let table = report(1024, &samples, &peaks);
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
    }
}
