//! [`TokenLedger`]: the task tokens a receiver has served, so that a token opens one
//! stream at a time, and none once its task is done here.
//!
//! A token is valid until its `exp` (up to an hour). Without a ledger, one that opened a
//! `/store/v1` stream could open another after the first finished, as long as it had not
//! expired: whoever saw it could write again. The ledger keeps each token id (`jti`)
//! while a stream of it is open, and after a write (`/store/v1`, `/delete/v1`) of it ends
//! well until its `exp`. A stream that failed or was cut leaves its token usable, so that
//! the transfer can be tried again (a resumed upload). A read (`/load/v1`) never spends
//! its token, one stream at a time: the node cannot tell a read that ended well from one
//! whose content then failed its root at the client, which reads again on the same token,
//! and reading again grants nothing the token did not.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use domain_auth::{TaskClaims, unix_secs};

/// Ended tokens a [`TokenLedger::default`] remembers at most.
pub const DEFAULT_LEDGER_CAPACITY: usize = 65_536;

/// Why a token was refused by the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    /// Another stream of the token is open.
    #[error("token {jti} is in use by another stream")]
    InUse {
        /// The token id.
        jti: String,
    },
    /// A stream of the token ended well: its task is done on this node.
    #[error("token {jti} was used already: its task is done on this node")]
    Spent {
        /// The token id.
        jti: String,
    },
}

/// The tokens a receiver has served (see the [module docs](self)). Cheap to clone: clones
/// share the ledger.
///
/// It remembers at most `capacity` ended tokens: past that, those that expire soonest are
/// forgotten first (their replay is then refused only by their expiry). A token without a
/// `jti` is not tracked.
#[derive(Debug, Clone)]
pub struct TokenLedger {
    state: Arc<Mutex<State>>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    open: HashSet<String>,
    /// Ended tokens and their expiry, in seconds since the Unix epoch.
    spent: HashMap<String, u64>,
    /// The same, by expiry.
    by_expiry: BTreeSet<(u64, String)>,
}

impl Default for TokenLedger {
    fn default() -> Self {
        Self::new(DEFAULT_LEDGER_CAPACITY)
    }
}

impl TokenLedger {
    /// A ledger that remembers at most `capacity` ended tokens (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Takes `claims`' token for one stream, at `now` (seconds since the Unix epoch).
    /// The [`TokenUse`] frees it when dropped; [`TokenUse::done`] first spends it.
    ///
    /// # Errors
    /// [`Replay::InUse`] while another stream of it is open; [`Replay::Spent`] once a
    /// stream of it ended well.
    pub fn claim(&self, claims: &TaskClaims, now: u64) -> Result<TokenUse, Replay> {
        let jti = claims.jti.clone();
        if !jti.is_empty() {
            let mut state = self.lock();
            state.forget_expired(now);
            if state.spent.contains_key(&jti) {
                return Err(Replay::Spent { jti });
            }
            if !state.open.insert(jti.clone()) {
                return Err(Replay::InUse { jti });
            }
        }
        Ok(TokenUse {
            ledger: self.clone(),
            jti,
            exp: claims.exp,
            done: false,
        })
    }

    /// Ended tokens remembered now.
    #[must_use]
    pub fn spent(&self) -> usize {
        self.lock().spent.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, jti: &str, spent_until: Option<u64>) {
        let mut state = self.lock();
        state.open.remove(jti);
        let Some(exp) = spent_until else { return };
        state.forget_expired(unix_secs(std::time::SystemTime::now()));
        if state.spent.insert(jti.to_owned(), exp).is_none() {
            state.by_expiry.insert((exp, jti.to_owned()));
        }
        while state.spent.len() > self.capacity {
            let Some((_, soonest)) = state.by_expiry.pop_first() else {
                break;
            };
            state.spent.remove(&soonest);
        }
    }
}

impl State {
    fn forget_expired(&mut self, now: u64) {
        while let Some((exp, _)) = self.by_expiry.first() {
            if *exp >= now {
                break;
            }
            if let Some((_, jti)) = self.by_expiry.pop_first() {
                self.spent.remove(&jti);
            }
        }
    }
}

/// A stream's hold on its token (see [`TokenLedger::claim`]).
#[derive(Debug)]
pub struct TokenUse {
    ledger: TokenLedger,
    jti: String,
    exp: u64,
    done: bool,
}

impl TokenUse {
    /// The stream ended well: the token opens no other stream until it expires.
    pub fn done(&mut self) {
        self.done = true;
    }
}

impl Drop for TokenUse {
    fn drop(&mut self) {
        if !self.jti.is_empty() {
            self.ledger
                .release(&self.jti, self.done.then_some(self.exp));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn claims(lifetime: u64) -> TaskClaims {
        TaskClaims::new(
            "d",
            "job",
            "task",
            "sender",
            "receiver",
            "/store/v1",
            SystemTime::now(),
            Duration::from_secs(lifetime),
        )
    }

    fn now() -> u64 {
        unix_secs(SystemTime::now())
    }

    #[test]
    fn a_token_opens_one_stream_at_a_time_and_none_once_a_stream_ended_well() {
        let ledger = TokenLedger::default();
        let token = claims(600);
        let first = ledger.claim(&token, now()).unwrap();
        assert!(matches!(
            ledger.claim(&token, now()),
            Err(Replay::InUse { .. })
        ));
        // Cut: usable again.
        drop(first);
        let mut second = ledger.claim(&token, now()).unwrap();
        second.done();
        drop(second);
        assert!(matches!(
            ledger.claim(&token, now()),
            Err(Replay::Spent { .. })
        ));
        // Other tokens are not concerned.
        ledger.claim(&claims(600), now()).unwrap();
    }

    #[test]
    fn an_expired_token_is_forgotten_and_the_oldest_go_first_past_the_capacity() {
        let ledger = TokenLedger::new(2);
        let tokens: Vec<TaskClaims> = (1..=3).map(|i| claims(600 * i)).collect();
        for token in &tokens {
            ledger.claim(token, now()).unwrap().done();
        }
        assert_eq!(ledger.spent(), 2);
        // The soonest to expire went; the two others are still refused.
        assert!(ledger.claim(&tokens[0], now()).is_ok());
        assert!(ledger.claim(&tokens[2], now()).is_err());
        // Past every expiry, nothing is kept.
        let later = now() + 3 * 3600;
        assert!(ledger.claim(&tokens[2], later).is_ok());
        assert_eq!(ledger.spent(), 0);
    }

    #[test]
    fn a_token_without_an_id_is_not_tracked() {
        let ledger = TokenLedger::default();
        let mut token = claims(600);
        token.jti.clear();
        let _first = ledger.claim(&token, now()).unwrap();
        ledger.claim(&token, now()).unwrap().done();
        assert!(ledger.claim(&token, now()).is_ok());
    }
}
