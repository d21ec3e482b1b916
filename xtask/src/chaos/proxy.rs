//! A fault proxy for loopback links: this kernel has no netem qdisc, so slow, lossy and
//! stalling links are made here, in user space. Each [`Link`] listens on a loopback port
//! of its own and forwards every connection to one target; its [`Mode`] (latency and
//! jitter, a rate limit, a stall, one direction stopped) applies to every connection at
//! once, and [`Link::reset`] ends each open connection with a TCP reset.
//!
//! Each direction of a connection is a reader that stamps the chunks it reads and a
//! writer that passes them on once their delay is over, with a bounded queue between
//! them: latency delays the bytes without cutting the throughput, and a stalled writer
//! stops the reader once the queue is full, so the sender feels TCP's backpressure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::schedule::{LinkFault, Rng};

/// The largest read, and so the largest chunk in a queue.
const CHUNK: usize = 16 * 1024;

/// Chunks queued per direction of a connection: at most 1 MiB held per direction.
const QUEUE: usize = 64;

/// The burst of the rate limit's token bucket.
const BURST: u64 = 64 * 1024;

/// How a link treats its bytes now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mode {
    pub latency: Duration,
    pub jitter: Duration,
    /// Bytes a second each way; `None` is unlimited.
    pub rate: Option<u64>,
    /// Neither direction is passed on.
    pub stalled: bool,
    /// The direction toward the dialer is not passed on.
    pub downstream_stopped: bool,
    /// The direction toward the target is not passed on.
    pub upstream_stopped: bool,
}

impl Mode {
    /// The mode of a scheduled fault; `None` for a reset, which is no mode.
    pub fn of(fault: LinkFault) -> Option<Self> {
        let clean = Self::default();
        Some(match fault {
            LinkFault::Latency { ms, jitter_ms } => Self {
                latency: Duration::from_millis(ms),
                jitter: Duration::from_millis(jitter_ms),
                ..clean
            },
            LinkFault::Rate { bytes_per_sec } => Self {
                rate: Some(bytes_per_sec),
                ..clean
            },
            LinkFault::Stall => Self {
                stalled: true,
                ..clean
            },
            LinkFault::HalfOpen { downstream } => Self {
                downstream_stopped: downstream,
                upstream_stopped: !downstream,
                ..clean
            },
            LinkFault::Reset => return None,
        })
    }

    fn stops(&self, downstream: bool) -> bool {
        self.stalled
            || (downstream && self.downstream_stopped)
            || (!downstream && self.upstream_stopped)
    }
}

/// What every connection of a link watches: the mode, and a count of resets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Control {
    mode: Mode,
    resets: u64,
}

/// One proxied link: a loopback listener forwarding to `target`.
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    control: watch::Sender<Control>,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Listens on a loopback port the system picks and forwards to `target`; `seed` draws
    /// the jitter.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(target: SocketAddr, seed: u64) -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (control, _) = watch::channel(Control::default());
        let connections = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept(
            listener,
            target,
            control.clone(),
            Arc::clone(&connections),
            seed,
        ));
        Ok(Self {
            addr,
            control,
            connections,
            task,
        })
    }

    /// Where dialers connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Applies `mode` to every connection, open and future.
    pub fn set(&self, mode: Mode) {
        self.control.send_modify(|control| control.mode = mode);
    }

    /// Ends every open connection with a TCP reset; later ones are not affected.
    pub fn reset(&self) {
        self.control.send_modify(|control| control.resets += 1);
    }

    /// Applies a scheduled fault.
    pub fn apply(&self, fault: LinkFault) {
        match Mode::of(fault) {
            Some(mode) => self.set(mode),
            None => self.reset(),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    control: watch::Sender<Control>,
    connections: Arc<AtomicU64>,
    seed: u64,
) {
    let mut serial = 0u64;
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        serial += 1;
        connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(
            inbound,
            target,
            control.subscribe(),
            Rng::derive(seed, serial),
        ));
    }
}

/// Forwards one connection both ways until both sides end or a reset comes.
async fn connection(
    inbound: TcpStream,
    target: SocketAddr,
    control: watch::Receiver<Control>,
    mut rng: Rng,
) {
    let resets_at_start = control.borrow().resets;
    let Ok(outbound) = TcpStream::connect(target).await else {
        // The target is down (a killed peer): the dialer sees a reset, as it would.
        let _ = inbound.set_zero_linger();
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let up = pump(
        in_read,
        out_write,
        control.clone(),
        resets_at_start,
        false,
        Rng::derive(rng.next_u64(), 1),
    );
    let down = pump(
        out_read,
        in_write,
        control,
        resets_at_start,
        true,
        Rng::derive(rng.next_u64(), 2),
    );
    let ((in_read, out_write, up_reset), (out_read, in_write, down_reset)) = tokio::join!(up, down);
    if up_reset || down_reset {
        // Whole streams again, so that dropping them closes without the FIN a dropped
        // write half sends; SO_LINGER 0 makes that close a reset. Set only now: from the
        // start, it would turn every normal close into a reset too.
        for (read, write) in [(in_read, in_write), (out_read, out_write)] {
            if let Ok(stream) = read.reunite(write) {
                let _ = stream.set_zero_linger();
            }
        }
    }
}

/// Resolves when a reset comes after `resets_at_start`; never once the link is gone.
async fn reset_of(mut control: watch::Receiver<Control>, resets_at_start: u64) {
    loop {
        if control.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if control.borrow().resets != resets_at_start {
            return;
        }
    }
}

/// Moves bytes from `from` to `to` under the link's mode until `from` ends (then `to` is
/// shut down) or a reset comes; hands both halves back, and whether a reset ended it.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    control: watch::Receiver<Control>,
    resets_at_start: u64,
    downstream: bool,
    mut rng: Rng,
) -> (OwnedReadHalf, OwnedWriteHalf, bool) {
    let (queue, mut chunks) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reset = reset_of(control.clone(), resets_at_start);
    let reader = {
        let from = &mut from;
        async move {
            loop {
                let mut buf = vec![0u8; CHUNK];
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if queue.send((Instant::now(), buf)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    let writer = {
        let to = &mut to;
        async move {
            let mut control = control;
            let mut not_before = Instant::now();
            let mut tokens = BURST;
            let mut refilled = Instant::now();
            while let Some((read_at, chunk)) = chunks.recv().await {
                // Held while the mode stops this direction; a change of mode wakes it.
                loop {
                    let mode = control.borrow_and_update().mode;
                    if !mode.stops(downstream) {
                        break;
                    }
                    if control.changed().await.is_err() {
                        return;
                    }
                }
                let mode = control.borrow().mode;
                let jitter_ms = u64::try_from(mode.jitter.as_millis()).unwrap_or(u64::MAX);
                let delay =
                    mode.latency + Duration::from_millis(rng.below(jitter_ms.saturating_add(1)));
                // Jitter never reorders bytes: a chunk waits for the one before it.
                not_before = not_before.max(read_at + delay);
                tokio::time::sleep_until(not_before).await;
                if let Some(rate) = mode.rate.filter(|rate| *rate > 0) {
                    let need = (chunk.len() as u64).min(BURST);
                    loop {
                        let now = Instant::now();
                        let earned = now.duration_since(refilled).as_secs_f64() * rate as f64;
                        if earned >= 1.0 {
                            tokens = (tokens + earned as u64).min(BURST);
                            refilled = now;
                        }
                        if tokens >= need {
                            tokens -= need;
                            break;
                        }
                        let missing = need - tokens;
                        tokio::time::sleep(Duration::from_secs_f64(missing as f64 / rate as f64))
                            .await;
                    }
                }
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            // The reader saw the end: pass it on as a FIN.
            let _ = to.shutdown().await;
        }
    };
    let was_reset = tokio::select! {
        _ = async { tokio::join!(reader, writer) } => false,
        () = reset => true,
    };
    (from, to, was_reset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    /// A loopback server that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    /// Sends `bytes` through `stream` and reads as many back.
    async fn round_trip(stream: TcpStream, bytes: &[u8]) -> Vec<u8> {
        let (mut read, mut write) = stream.into_split();
        let sent = bytes.to_vec();
        let sender = tokio::spawn(async move {
            write.write_all(&sent).await.unwrap();
            write
        });
        let mut back = vec![0u8; bytes.len()];
        read.read_exact(&mut back).await.unwrap();
        drop(sender.await.unwrap());
        back
    }

    fn content(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        Rng::new(3).fill(&mut bytes);
        bytes
    }

    #[tokio::test]
    async fn bytes_arrive_intact_and_in_order_under_latency_with_jitter() {
        let link = Link::start(echo_server().await, 1).await.unwrap();
        link.set(Mode {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(20),
            ..Mode::default()
        });
        let bytes = content(3 * 1024 * 1024 + 7);
        let stream = TcpStream::connect(link.addr()).await.unwrap();
        assert!(round_trip(stream, &bytes).await == bytes);
    }

    #[tokio::test]
    async fn a_rate_limit_slows_the_bytes_without_changing_them() {
        let link = Link::start(echo_server().await, 2).await.unwrap();
        // 512 KiB each way at 1 MiB/s: about half a second beyond the first burst.
        link.set(Mode {
            rate: Some(1024 * 1024),
            ..Mode::default()
        });
        let bytes = content(512 * 1024);
        let started = std::time::Instant::now();
        let stream = TcpStream::connect(link.addr()).await.unwrap();
        assert!(round_trip(stream, &bytes).await == bytes);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(350), "{took:?}");
    }

    #[tokio::test]
    async fn a_stall_holds_the_bytes_until_it_ends() {
        let link = Link::start(echo_server().await, 3).await.unwrap();
        let mut stream = TcpStream::connect(link.addr()).await.unwrap();
        stream.write_all(b"before").await.unwrap();
        let mut back = [0u8; 6];
        stream.read_exact(&mut back).await.unwrap();
        link.set(Mode {
            stalled: true,
            ..Mode::default()
        });
        let started = std::time::Instant::now();
        stream.write_all(b"during").await.unwrap();
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut back));
        assert!(read.await.is_err(), "nothing passes a stalled link");
        link.set(Mode::default());
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"during");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn half_open_stops_one_direction_and_keeps_the_connection() {
        let link = Link::start(echo_server().await, 4).await.unwrap();
        let mut stream = TcpStream::connect(link.addr()).await.unwrap();
        link.apply(LinkFault::HalfOpen { downstream: true });
        stream.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut back));
        assert!(read.await.is_err(), "no answer comes back");
        link.set(Mode::default());
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
    }

    #[tokio::test]
    async fn a_reset_is_seen_as_a_reset_and_later_connections_work() {
        let link = Link::start(echo_server().await, 5).await.unwrap();
        let mut stream = TcpStream::connect(link.addr()).await.unwrap();
        stream.write_all(b"x").await.unwrap();
        let mut back = [0u8; 1];
        stream.read_exact(&mut back).await.unwrap();
        link.apply(LinkFault::Reset);
        let mut rest = [0u8; 1];
        let error = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest))
            .await
            .expect("the reset arrives")
            .expect_err("a reset, not an end");
        assert_eq!(error.kind(), ErrorKind::ConnectionReset);
        let again = TcpStream::connect(link.addr()).await.unwrap();
        assert_eq!(round_trip(again, b"after").await, b"after");
        assert_eq!(link.connections(), 2);
    }

    #[tokio::test]
    async fn a_target_that_is_down_is_a_reset_to_the_dialer() {
        let port = domain_e2e::free_port().unwrap();
        let link = Link::start(SocketAddr::from(([127, 0, 0, 1], port)), 6)
            .await
            .unwrap();
        let mut stream = TcpStream::connect(link.addr()).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
