//! [`Forwarder`]: a TCP port forward on loopback that a test can cut, for a node reached
//! through something in front of it (announced with `NodeConfig::announce`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use domain_cluster::Multiaddr;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards every connection to its own loopback port on to a target, counting the bytes
/// that go towards the target, until [`cut`](Self::cut). Stops when dropped.
#[derive(Debug)]
pub struct Forwarder {
    addr: SocketAddr,
    towards: Arc<AtomicU64>,
    cut: watch::Sender<bool>,
}

impl Forwarder {
    /// Starts forwarding from a free loopback port to `target`.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let towards = Arc::new(AtomicU64::new(0));
        let (cut, cut_seen) = watch::channel(false);
        tokio::spawn(accept(listener, target, Arc::clone(&towards), cut_seen));
        Ok(Self { addr, towards, cut })
    }

    /// The address it forwards from, as a TCP multiaddr.
    #[must_use]
    pub fn multiaddr(&self) -> Multiaddr {
        domain_cluster::addr::tcp(self.addr)
    }

    /// Bytes forwarded towards the target so far.
    #[must_use]
    pub fn forwarded(&self) -> u64 {
        self.towards.load(Ordering::Relaxed)
    }

    /// Closes every forwarded connection and refuses new ones from now on: the target is
    /// unreachable through here, while its own outbound connections stay up.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    towards: Arc<AtomicU64>,
    mut cut: watch::Receiver<bool>,
) {
    loop {
        let inbound = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => inbound,
                Err(_) => return,
            },
            _ = cut.wait_for(|cut| *cut) => return,
        };
        let towards = Arc::clone(&towards);
        let mut cut = cut.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = forward(inbound, target, &towards) => {}
                _ = cut.wait_for(|cut| *cut) => {}
            }
        });
    }
}

async fn forward(mut inbound: TcpStream, target: SocketAddr, towards: &AtomicU64) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let (mut from_client, mut to_client) = inbound.split();
    let (mut from_target, mut to_target) = outbound.split();
    let there = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match from_client.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if to_target.write_all(&buffer[..n]).await.is_err() {
                return;
            }
            towards.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let back = tokio::io::copy(&mut from_target, &mut to_client);
    let _ = tokio::join!(there, back);
}
