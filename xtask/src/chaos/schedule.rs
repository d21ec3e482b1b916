//! The fault schedule: a list of timed faults drawn from the seed alone, so that the same
//! seed replays the same faults at the same offsets from the start of the run.
//!
//! The generator is SplitMix64 of our own rather than `rand`'s `StdRng`: `rand` documents
//! that `StdRng` may change its algorithm between versions, and a seed printed by a CI run
//! must replay the same schedule after a dependency update.

use std::fmt;
use std::time::Duration;

/// Quiet time at the start, so that the workload has items before the first fault.
const WARMUP: Duration = Duration::from_secs(8);

/// No fault starts this close to the end of the fault window, so that each has time to
/// act before the cluster is healed.
const TAIL: Duration = Duration::from_secs(3);

/// At most this many nodes are down at once: with replication 2 on 4 nodes, two down
/// can take both copies of an item away, which the oracle must then not call a loss.
const MAX_NODES_DOWN: usize = 2;

/// A seeded pseudo-random generator (SplitMix64): fast, and stable across releases.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator of its own for `stream` (a worker, a link), independent of the others'
    /// draws, so that adding a worker leaves the fault schedule unchanged.
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut base = Self(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        Self(base.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: no modulo bias worth caring about at these ranges.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// An index in `0..n`.
    pub fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap_or(0)
    }

    /// A duration in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.between(lo, hi))
    }

    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// What the proxy does to one link for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// Every chunk is held `ms` plus up to `jitter_ms` before it is passed on.
    Latency { ms: u64, jitter_ms: u64 },
    /// At most this many bytes a second each way.
    Rate { bytes_per_sec: u64 },
    /// Nothing is passed on either way; the sockets stay open.
    Stall,
    /// One direction stops (toward the dialer when `downstream`), the other flows.
    HalfOpen { downstream: bool },
    /// Every open connection is closed with a TCP reset (no duration).
    Reset,
}

impl fmt::Display for LinkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latency { ms, jitter_ms } => write!(f, "latency {ms}ms ±{jitter_ms}ms"),
            Self::Rate { bytes_per_sec } => write!(f, "rate {} KiB/s", bytes_per_sec / 1024),
            Self::Stall => write!(f, "stall"),
            Self::HalfOpen { downstream: true } => write!(f, "half-open (answers stop)"),
            Self::HalfOpen { downstream: false } => write!(f, "half-open (requests stop)"),
            Self::Reset => write!(f, "reset"),
        }
    }
}

/// One fault, or the end of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillNode(usize),
    RestartNode(usize),
    KillManager,
    RestartManager,
    /// SIGKILL of the `domain` process a worker runs at that moment, if any.
    KillClient(usize),
    Link(usize, LinkFault),
    HealLink(usize),
    FillDisk(usize),
    FreeDisk(usize),
}

impl Fault {
    /// The kind, for the summary's counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::KillNode(_) => "kill node",
            Self::RestartNode(_) => "restart node",
            Self::KillManager => "kill manager",
            Self::RestartManager => "restart manager",
            Self::KillClient(_) => "kill client",
            Self::Link(_, LinkFault::Latency { .. }) => "link latency",
            Self::Link(_, LinkFault::Rate { .. }) => "link rate limit",
            Self::Link(_, LinkFault::Stall) => "link stall",
            Self::Link(_, LinkFault::HalfOpen { .. }) => "link half-open",
            Self::Link(_, LinkFault::Reset) => "link reset",
            Self::HealLink(_) => "heal link",
            Self::FillDisk(_) => "fill disk",
            Self::FreeDisk(_) => "free disk",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KillNode(i) => write!(f, "SIGKILL node{i}"),
            Self::RestartNode(i) => write!(f, "restart node{i}"),
            Self::KillManager => write!(f, "SIGKILL manager"),
            Self::RestartManager => write!(f, "restart manager"),
            Self::KillClient(w) => write!(f, "SIGKILL client of worker w{w}"),
            Self::Link(l, fault) => write!(f, "link{l}: {fault}"),
            Self::HealLink(l) => write!(f, "link{l}: heal"),
            Self::FillDisk(i) => write!(f, "fill the disk of node{i}"),
            Self::FreeDisk(i) => write!(f, "free the disk of node{i}"),
        }
    }
}

/// A fault at an offset from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub at: Duration,
    pub fault: Fault,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>9.3}s  {}", self.at.as_secs_f64(), self.fault)
    }
}

/// The shape of the cluster a schedule is drawn for.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub nodes: usize,
    /// Proxied links (one per node toward the manager, one for the clients).
    pub links: usize,
    pub workers: usize,
    /// The node whose disk can be filled.
    pub disk_node: usize,
}

/// The faults of one run, in time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub events: Vec<Event>,
}

impl Schedule {
    /// The faults of a fault window of `span`, drawn from `seed` alone.
    pub fn generate(seed: u64, span: Duration, shape: Shape) -> Self {
        let mut rng = Rng::derive(seed, 0);
        let mut events = Vec::new();
        let last = span.saturating_sub(TAIL);
        // Until when each node, the manager, each link, the disk is busy with a fault.
        let mut node_until = vec![Duration::ZERO; shape.nodes];
        let mut link_until = vec![Duration::ZERO; shape.links];
        let mut manager_until = Duration::ZERO;
        let mut disk_until = Duration::ZERO;
        let mut at = WARMUP;
        loop {
            at += rng.millis(1_000, 5_000);
            if at >= last {
                break;
            }
            // Weights: kill node 25, manager 8, client 15, link 37, disk 15.
            let roll = rng.below(100);
            if roll < 25 {
                let down = node_until.iter().filter(|until| **until > at).count();
                let up: Vec<usize> = (0..shape.nodes).filter(|i| node_until[*i] <= at).collect();
                if down >= MAX_NODES_DOWN || up.is_empty() {
                    continue;
                }
                let node = up[rng.index(up.len())];
                let back = (at + rng.millis(1_500, 10_000)).min(span);
                node_until[node] = back;
                events.push(Event {
                    at,
                    fault: Fault::KillNode(node),
                });
                events.push(Event {
                    at: back,
                    fault: Fault::RestartNode(node),
                });
            } else if roll < 33 {
                if manager_until > at {
                    continue;
                }
                let back = (at + rng.millis(500, 6_000)).min(span);
                manager_until = back;
                events.push(Event {
                    at,
                    fault: Fault::KillManager,
                });
                events.push(Event {
                    at: back,
                    fault: Fault::RestartManager,
                });
            } else if roll < 48 {
                events.push(Event {
                    at,
                    fault: Fault::KillClient(rng.index(shape.workers)),
                });
            } else if roll < 85 {
                let free: Vec<usize> = (0..shape.links).filter(|l| link_until[*l] <= at).collect();
                if free.is_empty() {
                    continue;
                }
                let link = free[rng.index(free.len())];
                let fault = match rng.below(5) {
                    0 => LinkFault::Latency {
                        ms: rng.between(20, 250),
                        jitter_ms: rng.between(0, 80),
                    },
                    1 => LinkFault::Rate {
                        bytes_per_sec: rng.between(16, 2048) * 1024,
                    },
                    2 => LinkFault::Stall,
                    3 => LinkFault::HalfOpen {
                        downstream: rng.below(2) == 0,
                    },
                    _ => LinkFault::Reset,
                };
                events.push(Event {
                    at,
                    fault: Fault::Link(link, fault),
                });
                if fault != LinkFault::Reset {
                    // Stalls are kept short: a stalled link holds every request on it.
                    let lasts = match fault {
                        LinkFault::Stall | LinkFault::HalfOpen { .. } => rng.millis(500, 6_000),
                        _ => rng.millis(2_000, 15_000),
                    };
                    let healed = (at + lasts).min(span);
                    link_until[link] = healed;
                    events.push(Event {
                        at: healed,
                        fault: Fault::HealLink(link),
                    });
                }
            } else {
                if disk_until > at {
                    continue;
                }
                let freed = (at + rng.millis(3_000, 15_000)).min(span);
                disk_until = freed;
                events.push(Event {
                    at,
                    fault: Fault::FillDisk(shape.disk_node),
                });
                events.push(Event {
                    at: freed,
                    fault: Fault::FreeDisk(shape.disk_node),
                });
            }
        }
        // Stable: a fault and its end drawn at the same offset keep their order.
        events.sort_by_key(|event| event.at);
        Self { events }
    }

    /// FNV-1a over the printed schedule: two runs print the same digest exactly when they
    /// replay the same faults.
    pub fn digest(&self) -> u64 {
        let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
        for event in &self.events {
            for byte in event.to_string().bytes().chain(std::iter::once(b'\n')) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01B3);
            }
        }
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        nodes: 4,
        links: 5,
        workers: 4,
        disk_node: 3,
    };

    #[test]
    fn the_same_seed_draws_the_same_schedule_and_another_seed_another() {
        let span = Duration::from_secs(120);
        let one = Schedule::generate(7, span, SHAPE);
        assert_eq!(one, Schedule::generate(7, span, SHAPE));
        assert_eq!(one.digest(), Schedule::generate(7, span, SHAPE).digest());
        assert_ne!(one.digest(), Schedule::generate(8, span, SHAPE).digest());
        assert!(one.events.len() > 20, "{}", one.events.len());
    }

    #[test]
    fn every_fault_ends_within_the_window_and_kills_are_bounded() {
        let span = Duration::from_secs(300);
        for seed in 0..50 {
            let schedule = Schedule::generate(seed, span, SHAPE);
            let mut down = [false; 4];
            let mut manager_down = false;
            for event in &schedule.events {
                assert!(event.at <= span && event.at >= WARMUP);
                match event.fault {
                    Fault::KillNode(i) => {
                        assert!(!down[i]);
                        down[i] = true;
                        assert!(down.iter().filter(|d| **d).count() <= MAX_NODES_DOWN);
                    }
                    Fault::RestartNode(i) => {
                        assert!(down[i]);
                        down[i] = false;
                    }
                    Fault::KillManager => {
                        assert!(!manager_down);
                        manager_down = true;
                    }
                    Fault::RestartManager => manager_down = false,
                    _ => {}
                }
            }
            assert!(!manager_down && down.iter().all(|d| !d), "seed {seed}");
        }
    }

    #[test]
    fn the_generator_is_splitmix64() {
        // The first outputs of SplitMix64 seeded with 0, as published with the algorithm.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
