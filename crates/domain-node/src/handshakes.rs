//! [`Handshakes`]: the task streams whose opener has not shown a token yet.
//!
//! Anyone may open a task stream; only a token makes it worth serving. Streams in their
//! handshake are therefore kept apart from the served ones, in a pool of their own with
//! two bounds:
//! - per remote peer ([`NodeConfig::max_handshakes_per_peer`]), so that one peer cannot
//!   take the pool;
//! - in all ([`MAX_PENDING_HANDSHAKES`]). Many fresh identities together can fill the
//!   pool, so a full pool makes room by ending its oldest handshake, as a SYN-flooded
//!   TCP stack drops its oldest half-open connection: an honest handshake is two small
//!   frames and done in milliseconds, long before streams opened after it push it out;
//!   a silent one is what reaches the front.
//!
//! Every handshake also has [`HANDSHAKE_TIMEOUT`] at most. A stream takes one of the
//! node's task-stream permits only once its token was accepted.
//!
//! [`NodeConfig::max_handshakes_per_peer`]: crate::NodeConfig::max_handshakes_per_peer

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use domain_cluster::PeerId;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Task streams in their handshake at once, from all peers together; a stream past this
/// many ends the oldest. Far more than the tasks a scheduler gives a node at once (32 by
/// default), each of which opens one stream.
pub const MAX_PENDING_HANDSHAKES: usize = 128;

/// The longest a handshake may take (shorter when the streams' idle timeout is): an
/// honest one takes a round trip.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshakes of one peer that fail in a row (dropped past its limit, pushed out, timed
/// out, or refused) before it is banned: an honest peer's handshakes succeed.
pub const FAILED_HANDSHAKES_BEFORE_BAN: u32 = 64;

/// How long a peer whose handshakes keep failing is refused.
pub const HANDSHAKE_BAN: Duration = Duration::from_secs(10 * 60);

/// Peers whose failures are counted at most; past this many the counts start over.
const MAX_COUNTED_PEERS: usize = 65_536;

/// Streams in their handshake: counted per remote peer, and in all, oldest first.
#[derive(Debug)]
pub(crate) struct Handshakes {
    per_peer: usize,
    total: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Only peers with a stream in its handshake: an entry goes at zero.
    by_peer: HashMap<PeerId, usize>,
    /// The handshakes under way, oldest first, each with what ends it early.
    pending: VecDeque<(u64, CancellationToken)>,
    next_serial: u64,
    /// Handshakes that failed in a row, per peer.
    failures: HashMap<PeerId, u32>,
}

/// One stream's place among the [`Handshakes`], given back on drop.
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    handshakes: Arc<Handshakes>,
    peer: PeerId,
    serial: u64,
    evicted: CancellationToken,
}

impl Handshakes {
    /// At most `per_peer` handshakes of one peer (at least 1), and `total` in all.
    pub(crate) fn new(per_peer: usize, total: usize) -> Self {
        Self {
            per_peer: per_peer.max(1),
            total: total.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// The limit per peer.
    pub(crate) fn per_peer(&self) -> usize {
        self.per_peer
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Counts only, whole after every update: usable even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more handshake of `peer`, unless it has its limit already. When
    /// all slots are taken, the oldest handshake is told to end (see
    /// [`HandshakeSlot::evicted`]) and this one takes its place.
    pub(crate) fn try_start(self: &Arc<Self>, peer: PeerId) -> Option<HandshakeSlot> {
        let mut state = self.state();
        let running = state.by_peer.entry(peer).or_insert(0);
        if *running >= self.per_peer {
            return None;
        }
        *running += 1;
        if state.pending.len() >= self.total {
            if let Some((_, oldest)) = state.pending.pop_front() {
                oldest.cancel();
            }
        }
        let serial = state.next_serial;
        state.next_serial += 1;
        let evicted = CancellationToken::new();
        state.pending.push_back((serial, evicted.clone()));
        Some(HandshakeSlot {
            handshakes: Arc::clone(self),
            peer,
            serial,
            evicted,
        })
    }

    /// Counts a failed handshake of `peer`; `true` when it makes
    /// [`FAILED_HANDSHAKES_BEFORE_BAN`] in a row, and the count starts over.
    pub(crate) fn failed(&self, peer: PeerId) -> bool {
        let mut state = self.state();
        if state.failures.len() >= MAX_COUNTED_PEERS && !state.failures.contains_key(&peer) {
            state.failures.clear();
        }
        let count = state.failures.entry(peer).or_default();
        *count += 1;
        if *count < FAILED_HANDSHAKES_BEFORE_BAN {
            return false;
        }
        state.failures.remove(&peer);
        true
    }

    /// A handshake of `peer` succeeded: its failures are forgotten.
    pub(crate) fn succeeded(&self, peer: PeerId) {
        self.state().failures.remove(&peer);
    }

    /// Handshakes under way (evicted ones no longer count).
    pub(crate) fn pending(&self) -> usize {
        self.state().pending.len()
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let state = self.state();
        (state.by_peer.len(), state.pending.len())
    }
}

impl HandshakeSlot {
    /// Completes when newer streams pushed this handshake out of a full pool.
    pub(crate) fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.evicted.cancelled()
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut state = self.handshakes.state();
        if let Some(running) = state.by_peer.get_mut(&self.peer) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                state.by_peer.remove(&self.peer);
            }
        }
        // At most `total` entries: a linear search costs less than an index would.
        if let Some(at) = state.pending.iter().position(|(s, _)| *s == self.serial) {
            state.pending.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_at_most_the_limit_of_handshakes_and_others_are_not_counted_against_it() {
        let handshakes = Arc::new(Handshakes::new(2, 100));
        let (greedy, other) = (PeerId::random(), PeerId::random());
        let first = handshakes.try_start(greedy).unwrap();
        let _second = handshakes.try_start(greedy).unwrap();
        assert!(handshakes.try_start(greedy).is_none());
        let _others = handshakes.try_start(other).unwrap();

        drop(first);
        let _third = handshakes.try_start(greedy).unwrap();
        assert!(handshakes.try_start(greedy).is_none());
    }

    #[test]
    fn a_peer_is_forgotten_when_its_last_handshake_ends() {
        let handshakes = Arc::new(Handshakes::new(8, 100));
        let slots: Vec<_> = (0..3)
            .map(|_| handshakes.try_start(PeerId::random()).unwrap())
            .collect();
        assert_eq!(handshakes.counts(), (3, 3));
        drop(slots);
        assert_eq!(handshakes.counts(), (0, 0));
    }

    #[test]
    fn a_peer_whose_handshakes_keep_failing_is_named_once_and_a_success_forgives() {
        let handshakes = Handshakes::new(2, 4);
        let (flooder, honest) = (PeerId::random(), PeerId::random());
        let named = (0..FAILED_HANDSHAKES_BEFORE_BAN)
            .filter(|_| handshakes.failed(flooder))
            .count();
        assert_eq!(named, 1, "named when it reaches the count");
        for _ in 1..FAILED_HANDSHAKES_BEFORE_BAN {
            assert!(!handshakes.failed(honest));
            handshakes.succeeded(honest);
        }
        assert!(
            !handshakes.failed(honest),
            "failures with successes between"
        );
    }

    #[test]
    fn a_full_pool_ends_its_oldest_handshake_for_a_new_one() {
        // Four fresh identities, each within its own limit, fill a pool of four.
        let handshakes = Arc::new(Handshakes::new(2, 4));
        let flood: Vec<_> = (0..4)
            .map(|_| handshakes.try_start(PeerId::random()).unwrap())
            .collect();
        let honest = handshakes.try_start(PeerId::random()).unwrap();
        assert!(flood[0].evicted.is_cancelled(), "the oldest ends");
        assert!(flood[1..].iter().all(|s| !s.evicted.is_cancelled()));
        assert!(!honest.evicted.is_cancelled());
        // The evicted stream still counts until its task lets go of it.
        assert_eq!(handshakes.counts(), (5, 4));
        drop(flood);
        assert_eq!(handshakes.counts(), (1, 1));
    }
}
