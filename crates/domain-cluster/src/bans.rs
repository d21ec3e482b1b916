//! Peers refused for a while: [`Behaviour`].
//!
//! A service that sees a peer misbehave (opening streams past its share again and again,
//! handshakes that never finish) bans it with [`ClusterHandle::ban`]: its connections
//! close at once and new ones are refused, in either direction, until the ban ends. A
//! fresh identity is free, so a ban is no wall on its own; it makes a flooding identity
//! cost a new connection and Noise handshake, which the connection limits (in total and
//! per IP address) bound.
//!
//! [`ClusterHandle::ban`]: crate::ClusterHandle::ban

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use tokio::time::Instant;

/// Bans kept at most: past this many, those that end soonest go first.
pub const MAX_BANS: usize = 65_536;

/// A connection refused: its peer is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Banned {
    /// The peer.
    pub peer: PeerId,
}

impl fmt::Display for Banned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {} is banned for a while", self.peer)
    }
}

impl std::error::Error for Banned {}

/// Refuses the connections of banned peers.
#[derive(Debug, Default)]
pub(crate) struct Behaviour {
    until: HashMap<PeerId, Instant>,
}

impl Behaviour {
    /// Bans `peer` for `duration` from now (longer if it was banned longer already).
    pub(crate) fn ban(&mut self, peer: PeerId, duration: Duration) {
        let now = Instant::now();
        if self.until.len() >= MAX_BANS && !self.until.contains_key(&peer) {
            self.until.retain(|_, until| *until > now);
            if self.until.len() >= MAX_BANS {
                let soonest = self.until.iter().min_by_key(|(_, until)| **until);
                if let Some((&soonest, _)) = soonest {
                    self.until.remove(&soonest);
                }
            }
        }
        let until = now + duration;
        let entry = self.until.entry(peer).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Whether `peer` is banned now.
    #[cfg(test)]
    fn is_banned(&self, peer: &PeerId) -> bool {
        self.until
            .get(peer)
            .is_some_and(|until| *until > Instant::now())
    }

    fn check(&mut self, peer: PeerId) -> Result<(), ConnectionDenied> {
        match self.until.get(&peer) {
            Some(until) if *until > Instant::now() => Err(ConnectionDenied::new(Banned { peer })),
            Some(_) => {
                self.until.remove(&peer);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer).map(|()| dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer).map(|()| dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

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

    #[tokio::test(start_paused = true)]
    async fn a_ban_refuses_its_peer_until_it_ends_and_no_one_else() {
        let mut bans = Behaviour::default();
        let (banned, other) = (PeerId::random(), PeerId::random());
        bans.ban(banned, Duration::from_secs(60));
        assert!(bans.check(banned).is_err());
        assert!(bans.check(other).is_ok());
        // A shorter ban does not cut a longer one short.
        bans.ban(banned, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(bans.is_banned(&banned));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(bans.check(banned).is_ok());
        assert!(bans.until.is_empty(), "an ended ban is forgotten");
    }
}
