//! A WebSocket peer that multiplexes as js-libp2p's yamux does: a raw rust-yamux
//! connection whose DATA frames are as large as its whole send window.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::{Future, poll_fn};
use std::io::Read as _;
use std::time::Duration;

use anyhow::Context as _;
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterHandle};
use libp2p::core::transport::{DialOpts, PortUse};
use libp2p::core::upgrade::OutboundConnectionUpgrade as _;
use libp2p::core::{Endpoint, Transport as _};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, identity, noise, tcp};
use multistream_select::{Version, dialer_select_proto};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The longest the test waits for one step; well above what loopback needs on
/// a busy 2-core machine in debug.
const WAIT: Duration = Duration::from_secs(120);

const UPLOAD: &str = "/test/upload/1";

/// What the whole upload is: 50 MiB.
const LEN: usize = 50 << 20;

/// One write of the sender: 4 MiB, several times any window yamux grants.
const WRITE: usize = 4 << 20;

/// Fails the test, naming `what`, when `future` does not finish within [`WAIT`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// What the accepting side read from one stream.
#[derive(Debug)]
struct Received {
    count: u64,
    /// The hash of every byte at EOF, or the read error that ended the stream.
    end: Result<blake3::Hash, std::io::Error>,
}

/// Accepts [`UPLOAD`] on `peer`: reads each stream to its end, answers with the
/// count (8 bytes, big-endian) and BLAKE3 hash (32 bytes) of what arrived, and
/// reports what it read on the returned channel.
fn serve_upload(peer: &ClusterHandle) -> mpsc::Receiver<Received> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut incoming = peer.accept(UPLOAD).unwrap();
    let (report, reports) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let report = report.clone();
            tokio::spawn(async move {
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut count = 0u64;
                let end = loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break Ok(hasher.finalize()),
                        Ok(n) => {
                            hasher.update(&buf[..n]);
                            count += n as u64;
                        }
                        Err(error) => break Err(error),
                    }
                };
                if let Ok(hash) = &end {
                    let mut answer = count.to_be_bytes().to_vec();
                    answer.extend_from_slice(hash.as_bytes());
                    // The uploader reports it when this answer does not arrive.
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.shutdown().await;
                }
                let _ = report.send(Received { count, end }).await;
            });
        }
    });
    reports
}

/// A yamux connection to `addr` over WebSocket + Noise, negotiated as libp2p
/// does, and the identity of the peer at the other end.
async fn connect(
    addr: Multiaddr,
    config: yamux::Config,
) -> anyhow::Result<(
    PeerId,
    yamux::Connection<impl futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static>,
)> {
    let mut transport = libp2p_websocket::Config::new(tcp::tokio::Transport::new(
        tcp::Config::default().nodelay(true),
    ));
    let opts = DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::New,
    };
    let socket = transport
        .dial(addr, opts)
        .context("dialling")?
        .await
        .context("the WebSocket handshake")?;
    let keypair = identity::Keypair::generate_ed25519();
    let (noise_protocol, socket) = dialer_select_proto(socket, ["/noise"], Version::V1)
        .await
        .context("negotiating /noise")?;
    let (remote, socket) = noise::Config::new(&keypair)?
        .upgrade_outbound(socket, noise_protocol)
        .await
        .context("the Noise handshake")?;
    let (_, socket) = dialer_select_proto(socket, ["/yamux/1.0.0"], Version::V1)
        .await
        .context("negotiating /yamux/1.0.0")?;
    Ok((
        remote,
        yamux::Connection::new(socket, config, yamux::Mode::Client),
    ))
}

/// Drives `connection` (in yamux 0.14 polling for inbound streams drives it
/// all), refusing the streams the remote opens; ends when the connection does.
fn drive<T>(mut connection: yamux::Connection<T>) -> JoinHandle<Result<(), yamux::ConnectionError>>
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_next_inbound(cx)).await {
                // Identify, Kademlia and the like: dropping the stream resets it.
                Some(Ok(_inbound)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            }
        }
    })
}

/// Writes `data` on `stream` in [`WRITE`]-byte writes, closes the write half
/// and returns the receiver's answer: count and hash.
async fn upload(
    stream: &mut (impl futures::AsyncRead + futures::AsyncWrite + Unpin),
    data: &[u8],
) -> std::io::Result<(u64, blake3::Hash)> {
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};
    for chunk in data.chunks(WRITE) {
        stream.write_all(chunk).await?;
    }
    stream.close().await?;
    let mut answer = [0u8; 40];
    stream.read_exact(&mut answer).await?;
    let count = u64::from_be_bytes(answer[..8].try_into().unwrap());
    let hash = blake3::Hash::from_bytes(answer[8..].try_into().unwrap());
    Ok((count, hash))
}

/// The WebSocket address among `addrs`.
fn ws_addr(addrs: &[Multiaddr]) -> Multiaddr {
    addrs
        .iter()
        .find(|a| {
            a.iter().any(|p| matches!(p, Protocol::Ws(_)))
                && !a.iter().any(|p| p == Protocol::P2pCircuit)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no WebSocket address in {addrs:?}"))
}

// js-libp2p's yamux (browsers) sends each DATA frame as large as its whole send
// window, and rust-yamux resets the connection on a frame body over 1 MiB: the
// WebSocket transport must never let a stream's window grow past 1 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_peer_sending_frames_as_large_as_its_window_uploads_50_mib() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (handle, _task) =
        Cluster::start(ClusterConfig::loopback(Identity::generate(), Role::Node)).unwrap();
    let addrs = within("listen addresses", handle.listen_addrs())
        .await
        .unwrap();
    let mut reports = serve_upload(&handle);

    let mut config = yamux::Config::default();
    // As js-yamux: no splitting, a frame is as large as the send window allows.
    config.set_split_send_size(16 * 1024 * 1024);
    let (remote, mut connection) = within("connecting", connect(ws_addr(&addrs), config))
        .await
        .unwrap();
    assert_eq!(remote, handle.local_peer_id());

    // The data is made while the connection is not yet driven: the peer's first
    // ping waits for its pong meanwhile, so its round-trip estimate is tens of
    // milliseconds, as with a browser (busy event loop, a real network path),
    // not loopback's few hundred microseconds. Against that estimate loopback is
    // fast, and rust-yamux grows the stream's window at every update: the frames
    // grow with it.
    let (data, sent) = within(
        "making the data",
        tokio::task::spawn_blocking(|| {
            let mut data = vec![0u8; LEN];
            blake3::Hasher::new_derive_key("domain-cluster browser upload")
                .finalize_xof()
                .read_exact(&mut data)
                .unwrap();
            let hash = blake3::hash(&data);
            (data, hash)
        }),
    )
    .await
    .unwrap();
    let stream = poll_fn(|cx| connection.poll_new_outbound(cx))
        .await
        .unwrap();
    let driver = drive(connection);
    let (_, mut stream) = within(
        "negotiating the upload protocol",
        dialer_select_proto(stream, [UPLOAD], Version::V1),
    )
    .await
    .unwrap();

    let answer = within("uploading 50 MiB", upload(&mut stream, &data)).await;
    let connection_end = if answer.is_err() || driver.is_finished() {
        Some(within("the connection's end", driver).await.unwrap())
    } else {
        driver.abort();
        None
    };
    let received = within("the receiver's report", reports.recv())
        .await
        .unwrap();
    assert!(
        connection_end.is_none(),
        "the connection ended: {connection_end:?}; the upload: {answer:?}; \
         the receiver read {} of {LEN} bytes, then {:?}",
        received.count,
        received.end.as_ref().map(|_| "EOF"),
    );
    assert_eq!(received.count, LEN as u64, "{received:?}");
    assert_eq!(received.end.unwrap(), sent);
    assert_eq!(answer.unwrap(), (LEN as u64, sent));
}
