//! Addresses: what every crate above needs to know of a [`Multiaddr`], so that none of
//! them depends on libp2p itself.
//!
//! ```
//! use domain_cluster::addr::{first_plain_tcp, is_plain_tcp, peer_of};
//! use domain_cluster::Multiaddr;
//!
//! let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse()?;
//! let ws: Multiaddr = "/ip4/127.0.0.1/tcp/4002/ws".parse()?;
//! assert!(is_plain_tcp(&tcp) && !is_plain_tcp(&ws));
//! assert_eq!(first_plain_tcp(&[ws, tcp.clone()]), Some(&tcp));
//! assert_eq!(peer_of(&tcp), None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use libp2p::multiaddr::{Error as ParseError, Protocol};

use crate::{Multiaddr, PeerId};

/// The peer id `addr` ends with (`/p2p/<id>`), if it ends with one.
#[must_use]
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// `addr` without its trailing `/p2p/<id>`.
#[must_use]
pub fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if peer_of(&addr).is_some() {
        addr.pop();
    }
    addr
}

/// `addr` ending with `/p2p/<peer>`.
#[must_use]
pub fn with_peer_id(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if peer_of(&addr) == Some(peer) {
        addr
    } else {
        addr.with(Protocol::P2p(peer))
    }
}

/// Whether `addr` goes through a relay (`/p2p-circuit`).
#[must_use]
pub fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// Whether `addr` is a direct TCP address: no WebSocket, no relay circuit.
#[must_use]
pub fn is_plain_tcp(addr: &Multiaddr) -> bool {
    let mut tcp = false;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Tcp(_) => tcp = true,
            Protocol::Ws(_) | Protocol::Wss(_) | Protocol::P2pCircuit => return false,
            _ => {}
        }
    }
    tcp
}

/// Whether `addr` is a direct QUIC address (no relay circuit).
#[must_use]
pub fn is_plain_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::QuicV1) && !is_circuit(addr)
}

/// The first of `addrs` that [`is_plain_tcp`].
#[must_use]
pub fn first_plain_tcp(addrs: &[Multiaddr]) -> Option<&Multiaddr> {
    addrs.iter().find(|addr| is_plain_tcp(addr))
}

/// Whether `addr` reaches this host only: an IPv4 or IPv6 loopback address, or the name
/// `localhost`.
#[must_use]
pub fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        Some(Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name)) => {
            name == "localhost"
        }
        _ => false,
    }
}

/// `/ip4/127.0.0.1/tcp/0`: any free TCP port on the IPv4 loopback.
#[must_use]
pub fn loopback_tcp() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0))
}

/// The TCP multiaddr of `addr`: `/ip4/A/tcp/P` or `/ip6/A/tcp/P`.
#[must_use]
pub fn tcp(addr: std::net::SocketAddr) -> Multiaddr {
    Multiaddr::from(addr.ip()).with(Protocol::Tcp(addr.port()))
}

/// `/ip4/127.0.0.1/udp/0/quic-v1`: any free QUIC port on the IPv4 loopback.
#[must_use]
pub fn loopback_quic() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
        .with(Protocol::Udp(0))
        .with(Protocol::QuicV1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    #[test]
    fn plain_tcp_is_tcp_without_websocket_or_relay() {
        let peer = PeerId::random();
        assert!(is_plain_tcp(&addr("/ip4/10.0.0.1/tcp/1")));
        assert!(is_plain_tcp(&addr(&format!("/ip6/::1/tcp/1/p2p/{peer}"))));
        for not in [
            "/ip4/10.0.0.1/tcp/1/ws",
            "/ip4/10.0.0.1/tcp/1/wss",
            "/ip4/10.0.0.1/udp/1/quic-v1",
            &format!("/ip4/10.0.0.1/tcp/1/p2p/{peer}/p2p-circuit"),
        ] {
            assert!(!is_plain_tcp(&addr(not)), "{not}");
        }
        assert!(is_plain_quic(&addr("/ip4/10.0.0.1/udp/1/quic-v1")));
    }

    #[test]
    fn a_peer_id_is_added_once_and_taken_off_again() {
        let peer = PeerId::random();
        let bare = addr("/ip4/127.0.0.1/tcp/4001");
        let full = with_peer_id(bare.clone(), peer);
        assert_eq!(peer_of(&full), Some(peer));
        assert_eq!(with_peer_id(full.clone(), peer), full);
        assert_eq!(without_peer_id(&full), bare);
        assert_eq!(peer_of(&bare), None);
    }

    #[test]
    fn a_socket_address_is_its_tcp_multiaddr() {
        assert_eq!(
            tcp("127.0.0.1:4001".parse().unwrap()),
            addr("/ip4/127.0.0.1/tcp/4001")
        );
        assert_eq!(tcp("[::1]:9".parse().unwrap()), addr("/ip6/::1/tcp/9"));
    }

    #[test]
    fn loopback_is_127_8_the_ipv6_loopback_or_localhost() {
        for yes in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/127.1.2.3/tcp/1",
            "/ip6/::1/tcp/1",
            "/dns/localhost/tcp/1",
        ] {
            assert!(is_loopback(&addr(yes)), "{yes}");
        }
        for no in [
            "/ip4/10.0.0.1/tcp/1",
            "/ip6/::/tcp/1",
            "/dns/example.com/tcp/1",
        ] {
            assert!(!is_loopback(&addr(no)), "{no}");
        }
    }
}
