//! Connection events: which peers come and go.
//!
//! Like gossip events, they travel on a bounded broadcast channel: the event
//! loop never waits for a subscriber, and one that falls behind is told how
//! many events it lost.

use libp2p::{Multiaddr, PeerId};
use tokio::sync::broadcast;

use crate::error::ClusterError;

/// A peer's first connection opened, its identity learned, or its last
/// connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// The first connection to the peer is up.
    Connected {
        /// The peer.
        peer: PeerId,
        /// The connection's remote address (with `/p2p-circuit` when relayed).
        addr: Multiaddr,
    },
    /// The peer told who it is (identify). Its `protocol_version` is
    /// `/posemesh/id/1.0.0` for posemesh peers and ours.
    Identified {
        /// The peer.
        peer: PeerId,
        /// The protocol version it announces.
        protocol_version: String,
        /// Its software and version.
        agent_version: String,
    },
    /// The last connection to the peer has closed.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
}

/// A subscriber's view of peer events, from the moment it was created.
#[derive(Debug)]
pub struct PeerEvents {
    receiver: broadcast::Receiver<PeerEvent>,
}

impl PeerEvents {
    pub(crate) fn new(receiver: broadcast::Receiver<PeerEvent>) -> Self {
        Self { receiver }
    }

    /// The next peer event.
    ///
    /// # Errors
    /// [`ClusterError::PeerEventsLagged`] when events were dropped because this
    /// subscriber fell behind; [`ClusterError::Shutdown`] once the cluster has
    /// stopped.
    pub async fn recv(&mut self) -> Result<PeerEvent, ClusterError> {
        self.receiver.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(missed) => {
                ClusterError::PeerEventsLagged { missed }
            }
            broadcast::error::RecvError::Closed => ClusterError::Shutdown,
        })
    }
}
