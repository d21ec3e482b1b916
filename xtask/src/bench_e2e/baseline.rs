//! The baselines of `cargo xtask bench e2e`, measured in this process over the bench's
//! file: (a) raw loopback TCP, (b) one raw libp2p stream, (c) a file write and fsync.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterHandle};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::procfs::cpu_time;
use super::{BATCH, Measured, RAW_PROTOCOL, Transport};

/// Runs `measure` (which answers with its wall time) and adds the CPU time this process
/// spent meanwhile, on all its threads.
pub(super) fn in_process(
    measure: impl FnOnce() -> anyhow::Result<Duration>,
) -> anyhow::Result<Measured> {
    let before = cpu_time("self")?.own;
    let took = measure()?;
    let cpu = cpu_time("self")?.own.saturating_sub(before);
    Ok(Measured { took, cpu })
}

/// (a): the file's bytes over a loopback TCP connection, read to the end on the other side.
pub(super) fn raw_tcp(file: &Path, len: u64) -> anyhow::Result<Duration> {
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
pub(super) async fn raw_libp2p(
    file: &Path,
    len: u64,
    transport: Transport,
) -> anyhow::Result<Duration> {
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

pub(super) async fn raw_libp2p_between(
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
pub(super) fn write_fsync(file: &Path, copy: &Path) -> anyhow::Result<Duration> {
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
pub(super) fn copy_file(path: &Path, out: &mut impl Write) -> anyhow::Result<()> {
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
