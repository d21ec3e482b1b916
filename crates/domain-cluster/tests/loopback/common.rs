//! Helpers shared by the loopback tests.

use std::future::Future;
use std::time::Duration;

use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterHandle};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tokio::task::JoinHandle;

/// The longest any test waits for one step; well above what loopback needs
/// on a busy 2-core machine in debug.
pub const WAIT: Duration = Duration::from_secs(60);

/// Fails the test, naming `what`, when `future` does not finish within [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A loopback configuration for `role`, with a quick gossip heartbeat.
pub fn loopback(role: Role) -> ClusterConfig {
    let mut config = ClusterConfig::loopback(Identity::generate(), role);
    config.request_timeout = Duration::from_secs(30);
    config.gossip_heartbeat = Duration::from_millis(200);
    config
}

pub struct Peer {
    pub handle: ClusterHandle,
    pub task: JoinHandle<()>,
    pub addrs: Vec<Multiaddr>,
}

pub async fn start(config: ClusterConfig) -> Peer {
    // Logs show with RUST_LOG set (e.g. RUST_LOG=domain_cluster=debug).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (handle, task) = Cluster::start(config).unwrap();
    let addrs = within("listen addresses", handle.listen_addrs())
        .await
        .unwrap();
    Peer {
        handle,
        task,
        addrs,
    }
}

/// A manager listening on loopback.
pub async fn manager() -> Peer {
    start(loopback(Role::Manager)).await
}

/// A peer of `role` bootstrapped from `manager` over TCP.
pub async fn joined(role: Role, manager: &Peer) -> Peer {
    start(loopback(role).with_bootstrap(tcp_addr(&manager.addrs))).await
}

fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// The plain TCP address (not WebSocket, not relayed) among `addrs`.
pub fn tcp_addr(addrs: &[Multiaddr]) -> Multiaddr {
    addrs
        .iter()
        .find(|a| {
            a.iter().any(|p| matches!(p, Protocol::Tcp(_)))
                && !a.iter().any(|p| matches!(p, Protocol::Ws(_)))
                && !is_circuit(a)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no TCP address in {addrs:?}"))
}

/// The QUIC address among `addrs`.
pub fn quic_addr(addrs: &[Multiaddr]) -> Multiaddr {
    addrs
        .iter()
        .find(|a| a.iter().any(|p| p == Protocol::QuicV1) && !is_circuit(a))
        .cloned()
        .unwrap_or_else(|| panic!("no QUIC address in {addrs:?}"))
}

/// The WebSocket address among `addrs`.
pub fn ws_addr(addrs: &[Multiaddr]) -> Multiaddr {
    addrs
        .iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Ws(_))) && !is_circuit(a))
        .cloned()
        .unwrap_or_else(|| panic!("no WebSocket address in {addrs:?}"))
}

/// Serves `protocol` on `peer` by echoing each stream back until its writer closes.
pub fn serve_echo(peer: &ClusterHandle, protocol: &str) -> JoinHandle<()> {
    let mut incoming = peer.accept(protocol).unwrap();
    tokio::spawn(async move {
        while let Some((_, stream)) = incoming.next().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = tokio::io::split(stream);
                tokio::io::copy(&mut reader, &mut writer).await.unwrap();
                tokio::io::AsyncWriteExt::shutdown(&mut writer)
                    .await
                    .unwrap();
            });
        }
    })
}

/// Opens `protocol` to `peer`, writes `message`, closes the write half and
/// returns everything read back.
pub async fn echo(
    from: &ClusterHandle,
    peer: libp2p::PeerId,
    protocol: &str,
    message: &[u8],
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = within("opening the echo stream", from.open_stream(peer, protocol))
        .await
        .unwrap();
    stream.write_all(message).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("reading the echo", stream.read_to_end(&mut back))
        .await
        .unwrap();
    back
}
