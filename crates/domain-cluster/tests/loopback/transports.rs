//! Streams over each transport, bulk transfer, and the yamux deadlock of
//! rust-libp2p #5410.

use std::io::Read as _;

use domain_cluster::config::Role;
use domain_cluster::{ClusterHandle, PeerId};
use libp2p::multiaddr::Protocol;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::common::{echo, loopback, quic_addr, serve_echo, start, tcp_addr, within, ws_addr};

const ECHO: &str = "/test/echo/1";

async fn exchange_over(
    pick: fn(&[libp2p::Multiaddr]) -> libp2p::Multiaddr,
    transport: Protocol<'static>,
) {
    let a = start(loopback(Role::Client)).await;
    let b = start(loopback(Role::Node)).await;
    let _server = serve_echo(&b.handle, ECHO);

    let addr = pick(&b.addrs);
    let peer = within("dial", a.handle.dial(addr)).await.unwrap();
    assert_eq!(peer, b.handle.local_peer_id());
    let conns = a.handle.peer_addrs(peer).await.unwrap();
    assert!(
        conns.iter().all(|c| c
            .iter()
            .any(|p| std::mem::discriminant(&p) == std::mem::discriminant(&transport))),
        "expected only {transport} connections, got {conns:?}"
    );

    let back = echo(&a.handle, peer, ECHO, b"hello over the cluster").await;
    assert_eq!(back, b"hello over the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_exchange_a_stream_over_tcp() {
    exchange_over(tcp_addr, Protocol::Tcp(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_exchange_a_stream_over_quic() {
    exchange_over(quic_addr, Protocol::QuicV1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_exchange_a_stream_over_websocket() {
    exchange_over(ws_addr, Protocol::Ws("/".into())).await;
}

/// Deterministic bytes for stream `label`: BLAKE3's extendable output.
fn content(label: &str) -> blake3::OutputReader {
    blake3::Hasher::new_derive_key("domain-cluster test content")
        .update(label.as_bytes())
        .finalize_xof()
}

const CHUNK: usize = 1 << 20;

/// Writes `len` bytes of `content(label)` in 1 MiB writes, returning their hash.
async fn send(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    label: &str,
    len: usize,
) -> blake3::Hash {
    let mut source = content(label);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        source.read_exact(&mut buf[..n]).unwrap();
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n]).await.unwrap();
        left -= n;
    }
    writer.flush().await.unwrap();
    hasher.finalize()
}

/// Reads to the end, returning the hash and count of what arrived.
async fn receive(reader: &mut (impl tokio::io::AsyncRead + Unpin)) -> (blake3::Hash, usize) {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            return (hasher.finalize(), total);
        }
        hasher.update(&buf[..n]);
        total += n;
    }
}

const BULK: &str = "/test/bulk/1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_transfer_over_tcp_arrives_intact() {
    const LEN: usize = 256 << 20;
    let a = start(loopback(Role::Client)).await;
    let b = start(loopback(Role::Node)).await;

    // The receiver hashes what arrives and answers with the hash.
    let mut incoming = b.handle.accept(BULK).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let (hash, len) = receive(&mut stream).await;
                stream.write_all(hash.as_bytes()).await.unwrap();
                stream.write_all(&(len as u64).to_be_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });

    let peer = within("dial", a.handle.dial(tcp_addr(&b.addrs)))
        .await
        .unwrap();
    let mut stream = a.handle.open_stream(peer, BULK).await.unwrap();
    let sent = within("sending 256 MiB", send(&mut stream, "bulk", LEN)).await;
    stream.shutdown().await.unwrap();
    let mut answer = [0u8; 40];
    within(
        "reading the receiver's hash",
        stream.read_exact(&mut answer),
    )
    .await
    .unwrap();
    assert_eq!(
        u64::from_be_bytes(answer[32..].try_into().unwrap()),
        LEN as u64
    );
    assert_eq!(
        blake3::Hash::from_bytes(answer[..32].try_into().unwrap()),
        sent
    );
}

const DUPLEX: &str = "/test/duplex/1";

/// Both ends of each stream write `len` bytes while reading the other's; each
/// reports `(label received, hash)` and `(label sent, hash)` on `report`.
fn serve_duplex(peer: &ClusterHandle, len: usize, report: mpsc::Sender<(String, blake3::Hash)>) {
    let mut incoming = peer.accept(DUPLEX).unwrap();
    let me = peer.local_peer_id();
    tokio::spawn(async move {
        let mut index = 0;
        while let Some((remote, stream)) = incoming.next().await {
            index += 1;
            let report = report.clone();
            tokio::spawn(async move {
                let (mut reader, mut writer) = tokio::io::split(stream);
                // The opener sends its stream label first, so both ends agree on names.
                let mut label = [0u8; 8];
                reader.read_exact(&mut label).await.unwrap();
                let label = u64::from_be_bytes(label);
                let outbound = format!("{me}->{remote} on {remote}#{label}");
                let inbound = format!("{remote}->{me} on {remote}#{label}");
                let (sent, (received, count)) = tokio::join!(
                    async {
                        let hash = send(&mut writer, &outbound, len).await;
                        writer.shutdown().await.unwrap();
                        hash
                    },
                    receive(&mut reader),
                );
                assert_eq!(
                    count, len,
                    "stream {inbound} (inbound #{index}) was cut short"
                );
                report
                    .send((format!("sent {outbound}"), sent))
                    .await
                    .unwrap();
                report
                    .send((format!("received {inbound}"), received))
                    .await
                    .unwrap();
            });
        }
    });
}

async fn open_duplex(
    from: ClusterHandle,
    to: PeerId,
    label: u64,
    len: usize,
    report: mpsc::Sender<(String, blake3::Hash)>,
) {
    let me = from.local_peer_id();
    let stream = from.open_stream(to, DUPLEX).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    writer.write_all(&label.to_be_bytes()).await.unwrap();
    let outbound = format!("{me}->{to} on {me}#{label}");
    let inbound = format!("{to}->{me} on {me}#{label}");
    let (sent, (received, count)) = tokio::join!(
        async {
            let hash = send(&mut writer, &outbound, len).await;
            writer.shutdown().await.unwrap();
            hash
        },
        receive(&mut reader),
    );
    assert_eq!(count, len, "stream {inbound} was cut short");
    report
        .send((format!("sent {outbound}"), sent))
        .await
        .unwrap();
    report
        .send((format!("received {inbound}"), received))
        .await
        .unwrap();
}

/// rust-libp2p #5410: with yamux 0.13, streams of libp2p-stream deadlocked when
/// both peers wrote large buffers on several streams while reading. Here each
/// peer opens four streams to the other and every stream carries 16 MiB each
/// way at once (256 MiB in all); every byte must arrive, in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_writing_both_ways_do_not_deadlock_yamux() {
    const STREAMS_EACH_WAY: u64 = 4;
    const LEN: usize = 16 << 20;
    let a = start(loopback(Role::Node)).await;
    let b = start(loopback(Role::Node)).await;
    let (report, mut reports) = mpsc::channel(64);
    serve_duplex(&a.handle, LEN, report.clone());
    serve_duplex(&b.handle, LEN, report.clone());
    // Each dials the other, so that both know the connection before opening streams.
    within("dial", a.handle.dial(tcp_addr(&b.addrs)))
        .await
        .unwrap();
    within("dial", b.handle.dial(tcp_addr(&a.addrs)))
        .await
        .unwrap();

    let mut openers = Vec::new();
    for label in 0..STREAMS_EACH_WAY {
        openers.push(tokio::spawn(open_duplex(
            a.handle.clone(),
            b.handle.local_peer_id(),
            label,
            LEN,
            report.clone(),
        )));
        openers.push(tokio::spawn(open_duplex(
            b.handle.clone(),
            a.handle.local_peer_id(),
            label,
            LEN,
            report.clone(),
        )));
    }
    within("every duplex stream", async {
        for opener in openers {
            opener.await.unwrap();
        }
    })
    .await;

    // Four reports per stream: each end's sent and received hash.
    let mut hashes = std::collections::HashMap::new();
    for _ in 0..STREAMS_EACH_WAY * 2 * 4 {
        let (what, hash) = within("reports", reports.recv()).await.unwrap();
        assert!(hashes.insert(what, hash).is_none());
    }
    for (what, hash) in &hashes {
        if let Some(direction) = what.strip_prefix("sent ") {
            assert_eq!(
                hashes.get(&format!("received {direction}")),
                Some(hash),
                "{direction} corrupted"
            );
        }
    }
}

/// Streams queue for a busy acceptor instead of being dropped: all 32 opened
/// at once arrive, though nobody takes one until every open has returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_at_once_queue_for_an_acceptor_that_is_not_ready() {
    const STREAMS: u8 = 32;
    let a = start(loopback(Role::Client)).await;
    let b = start(loopback(Role::Node)).await;
    let mut incoming = b.handle.accept("/test/queue/1").unwrap();
    let peer = within("dial", a.handle.dial(tcp_addr(&b.addrs)))
        .await
        .unwrap();

    let opens = (0..STREAMS).map(|i| {
        let a = a.handle.clone();
        async move {
            let mut stream = a.open_stream(peer, "/test/queue/1").await.unwrap();
            stream.write_all(&[i]).await.unwrap();
            stream.shutdown().await.unwrap();
            stream
        }
    });
    let _open = within("opening every stream", futures::future::join_all(opens)).await;

    let mut seen = Vec::new();
    for _ in 0..STREAMS {
        let (from, mut stream) = within("next inbound stream", incoming.next())
            .await
            .unwrap();
        assert_eq!(from, a.handle.local_peer_id());
        let mut byte = Vec::new();
        within("reading the stream's byte", stream.read_to_end(&mut byte))
            .await
            .unwrap();
        seen.extend(byte);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..STREAMS).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_waiting_on_a_connection_this_side_closes_fail_at_once() {
    let a = start(loopback(Role::Client)).await;
    let b = start(loopback(Role::Node)).await;
    let mut incoming = b.handle.accept("/test/idle/1").unwrap();
    let peer = within("dial", a.handle.dial(tcp_addr(&b.addrs)))
        .await
        .unwrap();
    let mut opened = a.handle.open_stream(peer, "/test/idle/1").await.unwrap();
    opened.write_all(b"x").await.unwrap();
    opened.flush().await.unwrap();
    let (_, mut accepted) = within("the inbound stream", incoming.next()).await.unwrap();
    let mut byte = [0; 1];
    accepted.read_exact(&mut byte).await.unwrap();

    // Both ends now wait for bytes that will not come; the accepting side hangs up.
    let reading = tokio::spawn(async move { accepted.read(&mut byte).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        within("disconnect", b.handle.disconnect(a.handle.local_peer_id()))
            .await
            .unwrap()
    );
    // Well under any idle timeout: the read is woken by the connection's end.
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), reading)
        .await
        .expect("the waiting read fails at once")
        .unwrap();
    assert!(read.is_err(), "{read:?}");
    let mut rest = Vec::new();
    let remote = within("the other end", opened.read_to_end(&mut rest)).await;
    assert!(remote.is_err() || rest.is_empty(), "{remote:?}");
}
