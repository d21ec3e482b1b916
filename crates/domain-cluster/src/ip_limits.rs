//! A cap on the inbound connections from one network address: [`Behaviour`].
//!
//! libp2p's `connection_limits` counts connections in total and per peer id, and peer
//! ids cost nothing: one machine can open thousands of connections under fresh
//! identities and take every inbound place. This behaviour counts inbound connections,
//! pending and established, per remote IP address, an IPv6 address by its /64 prefix
//! (the block one host is usually given), and refuses one past the cap before its
//! handshake starts. Relayed connections are not counted: their address is the relay's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionClosed, ListenFailure};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

/// Where inbound connections are counted from: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl Source {
    /// The source of a connection from `addr`; `None` for a relayed connection or an
    /// address without an IP.
    fn of(addr: &Multiaddr) -> Option<Self> {
        if crate::addr::is_circuit(addr) {
            return None;
        }
        let ip = addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
            _ => None,
        })?;
        Some(match ip {
            IpAddr::V4(ip) => Self::V4(ip.octets()),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(ip) => Self::V4(ip.octets()),
                None => Self::V6Prefix(prefix_64(ip)),
            },
        })
    }
}

fn prefix_64(ip: Ipv6Addr) -> [u8; 8] {
    let octets = ip.octets();
    let mut prefix = [0; 8];
    prefix.copy_from_slice(&octets[..8]);
    prefix
}

/// An inbound connection refused: its source has `limit` already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerIpExceeded {
    /// The cap per source.
    pub limit: u32,
}

impl fmt::Display for PerIpExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at most {} inbound connections from one address are allowed",
            self.limit
        )
    }
}

impl std::error::Error for PerIpExceeded {}

/// Counts inbound connections per source address and refuses those past `limit`.
#[derive(Debug)]
pub(crate) struct Behaviour {
    limit: Option<u32>,
    source_of: HashMap<ConnectionId, Source>,
    per_source: HashMap<Source, u32>,
}

impl Behaviour {
    /// At most `limit` inbound connections per source; `None` counts nothing.
    pub(crate) fn new(limit: Option<u32>) -> Self {
        Self {
            limit,
            source_of: HashMap::new(),
            per_source: HashMap::new(),
        }
    }

    fn release(&mut self, connection: ConnectionId) {
        let Some(source) = self.source_of.remove(&connection) else {
            return;
        };
        if let Some(count) = self.per_source.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let (Some(limit), Some(source)) = (self.limit, Source::of(remote_addr)) else {
            return Ok(());
        };
        let count = self.per_source.entry(source).or_insert(0);
        if *count >= limit {
            return Err(ConnectionDenied::new(PerIpExceeded { limit }));
        }
        *count += 1;
        self.source_of.insert(connection_id, source);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        // A counted connection leaves by one of these: refused or failed while pending
        // (by this behaviour or a later one), or closed once established.
        match event {
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. })
            | FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.release(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    #[test]
    fn connections_count_by_ipv4_address_and_ipv6_prefix_but_not_through_a_relay() {
        let v4 = Source::of(&addr("/ip4/192.0.2.7/tcp/4001"));
        assert_eq!(v4, Source::of(&addr("/ip4/192.0.2.7/udp/9/quic-v1")));
        assert_ne!(v4, Source::of(&addr("/ip4/192.0.2.8/tcp/4001")));
        // One host's /64, however it picks the rest.
        let v6 = Source::of(&addr("/ip6/2001:db8:1:2::1/tcp/1"));
        assert_eq!(v6, Source::of(&addr("/ip6/2001:db8:1:2:ffff::9/tcp/2")));
        assert_ne!(v6, Source::of(&addr("/ip6/2001:db8:1:3::1/tcp/1")));
        assert_eq!(v4, Source::of(&addr("/ip6/::ffff:192.0.2.7/tcp/1")));
        let relayed = "/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWLRPJAA5o6Ztr9vdumNjgx3D7T9dbtXbZpGbSaDcJkfAP/p2p-circuit";
        assert_eq!(Source::of(&addr(relayed)), None);
    }

    #[test]
    fn a_source_past_its_limit_is_refused_until_one_of_its_connections_goes() {
        let mut limits = Behaviour::new(Some(2));
        let local = addr("/ip4/127.0.0.1/tcp/4001");
        let remote = addr("/ip4/192.0.2.7/tcp/5000");
        let other = addr("/ip4/192.0.2.8/tcp/5000");
        let ids: Vec<_> = (0..4)
            .map(|_| ConnectionId::new_unchecked(rand_id()))
            .collect();
        assert!(
            limits
                .handle_pending_inbound_connection(ids[0], &local, &remote)
                .is_ok()
        );
        assert!(
            limits
                .handle_pending_inbound_connection(ids[1], &local, &remote)
                .is_ok()
        );
        let refused = limits.handle_pending_inbound_connection(ids[2], &local, &remote);
        assert!(refused.is_err());
        assert!(
            limits
                .handle_pending_inbound_connection(ids[3], &local, &other)
                .is_ok()
        );
        limits.release(ids[0]);
        assert!(
            limits
                .handle_pending_inbound_connection(ids[2], &local, &remote)
                .is_ok()
        );
        // Releasing twice (a failure reported after a close) takes nothing more.
        limits.release(ids[0]);
        assert_eq!(limits.per_source[&Source::of(&remote).unwrap()], 2);
    }

    fn rand_id() -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(1_000_000);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}
