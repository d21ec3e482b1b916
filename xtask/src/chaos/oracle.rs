//! The oracle: the history of every operation and fault of a run, the model of what the
//! clients were told, and the checks of the promises against both. A violation is kept
//! with the items it involves, so that the report can print the shortest history that
//! shows it: the operations on those items and the faults in that time window.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::schedule::Rng;

/// The promises the oracle checks, one verdict line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Promise {
    /// Acknowledged uploads are listed and download with their root while the holders
    /// are up (checked during the run, in quiet windows).
    Available,
    /// The same, once faults stopped and the cluster settled.
    Settled,
    /// Nothing is listed or downloaded with bytes, a size or a root no client sent.
    Bytes,
    /// Deleted items stay deleted.
    Deletes,
    /// No job runs forever; no client command hangs.
    Stuck,
    /// `watch` shows each new item once.
    Watch,
    /// Every process's RSS stays under its bound.
    Rss,
    /// No panic, and no ERROR line that an injected fault does not explain.
    Logs,
    /// Disk full is a clear error to the client and leaves no partial item.
    DiskFull,
    /// Every killed peer starts again and joins.
    Restarts,
    /// Once settled, every item has exactly the copies its domain asks for.
    Copies,
}

impl Promise {
    pub const ALL: [Self; 11] = [
        Self::Available,
        Self::Settled,
        Self::Bytes,
        Self::Deletes,
        Self::Stuck,
        Self::Watch,
        Self::Rss,
        Self::Logs,
        Self::DiskFull,
        Self::Restarts,
        Self::Copies,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Self::Available => "acknowledged items listed and downloadable while holders are up",
            Self::Settled => "acknowledged items listed and downloadable after settling",
            Self::Bytes => "no item with bytes, size or root a client did not send",
            Self::Deletes => "deleted items stay deleted",
            Self::Stuck => "no job or command stuck",
            Self::Watch => "watch shows each new item once",
            Self::Rss => "RSS under its bound",
            Self::Logs => "no panic, no unexplained ERROR in any log",
            Self::DiskFull => "disk full: a clear error, no partial item",
            Self::Restarts => "every killed peer restarts and joins",
            Self::Copies => "exactly the copies the domain asks for, once settled",
        }
    }
}

/// One operation of a client, a check, or a fault.
#[derive(Debug, Clone)]
pub struct Record {
    pub start: Duration,
    pub end: Duration,
    /// `w0`…, `checker`, `watch`, `faults`, `final`.
    pub actor: String,
    pub op: String,
    pub ids: Vec<String>,
    pub names: Vec<String>,
    pub outcome: String,
}

impl Record {
    fn is_fault(&self) -> bool {
        self.actor == "faults"
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>8.3}s..{:>8.3}s  {:<7} {:<9}",
            self.start.as_secs_f64(),
            self.end.as_secs_f64(),
            self.actor,
            self.op
        )?;
        if !self.ids.is_empty() {
            write!(f, " id={}", abbreviate(&self.ids))?;
        }
        if !self.names.is_empty() {
            write!(f, " name={}", abbreviate(&self.names))?;
        }
        if !self.outcome.is_empty() {
            write!(f, "  → {}", self.outcome)?;
        }
        Ok(())
    }
}

fn abbreviate(values: &[String]) -> String {
    if values.len() <= 3 {
        values.join(",")
    } else {
        format!("{},… ({} in all)", values[..3].join(","), values.len())
    }
}

/// A broken promise.
#[derive(Debug, Clone)]
pub struct Violation {
    pub promise: Promise,
    pub at: Duration,
    pub ids: Vec<String>,
    pub names: Vec<String>,
    pub detail: String,
}

/// What became of an acknowledged item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemState {
    Present,
    /// A `rm` of it runs.
    Deleting,
    /// A `rm` of it was acknowledged at this offset.
    Deleted(Duration),
    /// A `rm` of it failed or was killed: it may be there or not.
    MaybeDeleted,
}

/// An item a client saw acknowledged.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub name: String,
    pub len: u64,
    /// The seed of its content ([`content`]).
    pub seed: u64,
    pub root: String,
    /// When its upload began.
    pub sent: Duration,
    pub acked: Duration,
    pub state: ItemState,
}

/// An item as `ls --json` or `store ls --json` prints it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub name: String,
    pub size: u64,
    pub hash: Option<String>,
}

impl Listed {
    /// The items of `--json` output, one object a line; other lines are passed over.
    pub fn parse(stdout: &str) -> Vec<Self> {
        stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|value| {
                Some(Self {
                    id: value.get("id")?.as_str()?.to_owned(),
                    name: value.get("name")?.as_str()?.to_owned(),
                    size: value.get("size")?.as_u64()?,
                    hash: value
                        .get("hash")
                        .and_then(|h| h.as_str())
                        .map(str::to_owned),
                })
            })
            .collect()
    }
}

#[derive(Debug, Default)]
struct Model {
    items: BTreeMap<String, Item>,
    /// Every content ever sent under a name, acknowledged or not: (root, length).
    attempts: BTreeMap<String, Vec<(String, u64)>>,
}

/// The history, the model and the violations of one run.
#[derive(Debug)]
pub struct Oracle {
    start: Instant,
    records: Mutex<Vec<Record>>,
    model: Mutex<Model>,
    violations: Mutex<Vec<Violation>>,
    /// Per promise: why it was not checked, or what was seen when it passed.
    notes: Mutex<BTreeMap<Promise, Vec<String>>>,
    skipped: Mutex<BTreeMap<Promise, String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Oracle {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            records: Mutex::default(),
            model: Mutex::default(),
            violations: Mutex::default(),
            notes: Mutex::default(),
            skipped: Mutex::default(),
        }
    }

    /// The offset of now from the start of the run.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The instant of offset `at`.
    pub fn instant(&self, at: Duration) -> Instant {
        self.start + at
    }

    pub fn record(&self, record: Record) {
        lock(&self.records).push(record);
    }

    /// When the faults whose op is one of `ops` began, in order.
    pub fn fault_times(&self, ops: &[&str]) -> Vec<Duration> {
        lock(&self.records)
            .iter()
            .filter(|record| record.is_fault() && ops.contains(&record.op.as_str()))
            .map(|record| record.start)
            .collect()
    }

    /// How many records `wanted` picks.
    pub fn count(&self, wanted: impl Fn(&Record) -> bool) -> usize {
        lock(&self.records)
            .iter()
            .filter(|record| wanted(record))
            .count()
    }

    pub fn violate(&self, promise: Promise, ids: Vec<String>, names: Vec<String>, detail: String) {
        let at = self.now();
        lock(&self.violations).push(Violation {
            promise,
            at,
            ids,
            names,
            detail,
        });
    }

    pub fn violations(&self) -> Vec<Violation> {
        lock(&self.violations).clone()
    }

    pub fn note(&self, promise: Promise, note: String) {
        lock(&self.notes).entry(promise).or_default().push(note);
    }

    pub fn notes(&self, promise: Promise) -> Vec<String> {
        lock(&self.notes).get(&promise).cloned().unwrap_or_default()
    }

    pub fn skip(&self, promise: Promise, why: String) {
        lock(&self.skipped).insert(promise, why);
    }

    pub fn skipped(&self, promise: Promise) -> Option<String> {
        lock(&self.skipped).get(&promise).cloned()
    }

    /// Notes that content `(root, len)` is about to be sent under `name`.
    pub fn attempt(&self, name: &str, root: &str, len: u64) {
        lock(&self.model)
            .attempts
            .entry(name.to_owned())
            .or_default()
            .push((root.to_owned(), len));
    }

    pub fn acknowledge(&self, item: Item) {
        lock(&self.model).items.insert(item.id.clone(), item);
    }

    /// The items in `state` now.
    pub fn items(&self, wanted: impl Fn(&ItemState) -> bool) -> Vec<Item> {
        lock(&self.model)
            .items
            .values()
            .filter(|item| wanted(&item.state))
            .cloned()
            .collect()
    }

    pub fn item(&self, id: &str) -> Option<Item> {
        lock(&self.model).items.get(id).cloned()
    }

    /// Sets the state of item `id`.
    pub fn set_state(&self, id: &str, state: ItemState) {
        if let Some(item) = lock(&self.model).items.get_mut(id) {
            item.state = state;
        }
    }

    /// Picks a present item at random and marks it as being deleted (when `deleting`), so
    /// that no other worker reads it meanwhile.
    pub fn pick(&self, rng: &mut Rng, deleting: bool) -> Option<Item> {
        let mut model = lock(&self.model);
        let present: Vec<&String> = model
            .items
            .values()
            .filter(|item| item.state == ItemState::Present)
            .map(|item| &item.id)
            .collect();
        if present.is_empty() {
            return None;
        }
        let id = present[rng.index(present.len())].clone();
        let item = model.items.get_mut(&id)?;
        if deleting {
            item.state = ItemState::Deleting;
        }
        Some(item.clone())
    }

    /// A name some acknowledged item has, for an upsert.
    pub fn some_name(&self, rng: &mut Rng) -> Option<String> {
        let model = lock(&self.model);
        let names: Vec<&String> = model.items.values().map(|item| &item.name).collect();
        (!names.is_empty()).then(|| names[rng.index(names.len())].clone())
    }

    /// Checks a listing that started at offset `started` (what `actor` saw): every item in
    /// it has bytes a client sent, none was deleted before the listing began. Answers with
    /// the ids listed.
    pub fn check_listing(
        &self,
        listed: &[Listed],
        started: Duration,
        actor: &str,
    ) -> BTreeSet<String> {
        let model = lock(&self.model);
        let mut ids = BTreeSet::new();
        let mut broken = Vec::new();
        for entry in listed {
            ids.insert(entry.id.clone());
            match model.items.get(&entry.id) {
                Some(item) => {
                    if entry.size != item.len
                        || entry.hash.as_deref().is_some_and(|h| h != item.root)
                    {
                        broken.push((
                            Promise::Bytes,
                            entry,
                            format!(
                                "{actor} listed {} with size {} root {:?}; the client sent {} bytes of root {}",
                                entry.id, entry.size, entry.hash, item.len, item.root
                            ),
                        ));
                    }
                    let deleted_before = match item.state {
                        ItemState::Deleted(at) => Some(at).filter(|at| *at < started),
                        _ => None,
                    };
                    if let Some(at) = deleted_before {
                        broken.push((
                            Promise::Deletes,
                            entry,
                            format!(
                                "{actor} listed {} in a listing begun at {:.3}s; its rm was acknowledged at {:.3}s",
                                entry.id,
                                started.as_secs_f64(),
                                at.as_secs_f64()
                            ),
                        ));
                    }
                }
                None => {
                    let sent = model.attempts.get(&entry.name).is_some_and(|attempts| {
                        attempts.iter().any(|(root, len)| {
                            *len == entry.size && entry.hash.as_deref().is_none_or(|h| h == root)
                        })
                    });
                    if !sent {
                        broken.push((
                            Promise::Bytes,
                            entry,
                            format!(
                                "{actor} listed {} ({:?}, {} bytes, root {:?}), which no client saw acknowledged and whose content no client sent under that name",
                                entry.id, entry.name, entry.size, entry.hash
                            ),
                        ));
                    }
                }
            }
        }
        drop(model);
        for (promise, entry, detail) in broken {
            self.violate(
                promise,
                vec![entry.id.clone()],
                vec![entry.name.clone()],
                detail,
            );
        }
        ids
    }

    /// The shortest history that shows `violation`: the records that touch its items or
    /// names, and the faults from 10 s before the last of those records that began before
    /// the violation (the operation that decided it, such as the `rm` of an item listed
    /// after it) up to the violation.
    pub fn explain(&self, violation: &Violation) -> Vec<Record> {
        let records = lock(&self.records);
        let touches = |record: &Record| {
            !record.is_fault()
                && (record.ids.iter().any(|id| violation.ids.contains(id))
                    || record
                        .names
                        .iter()
                        .any(|name| violation.names.contains(name)))
        };
        let mut shown: Vec<Record> = records.iter().filter(|r| touches(r)).cloned().collect();
        let anchor = shown
            .iter()
            .map(|r| r.start)
            .filter(|start| *start <= violation.at)
            .max()
            .unwrap_or(violation.at);
        let from = anchor.saturating_sub(Duration::from_secs(10));
        shown.extend(
            records
                .iter()
                .filter(|r| r.is_fault() && r.start >= from && r.start <= violation.at)
                .cloned(),
        );
        shown.sort_by_key(|r| r.start);
        shown
    }
}

/// The content of an upload: `len` bytes drawn from `seed`, so that the oracle can compare
/// a download with what was sent without keeping it.
pub fn content(seed: u64, len: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
    Rng::new(seed).fill(&mut bytes);
    bytes
}

/// The Merkle root of `bytes`, hex, as the cluster reports it.
pub fn root(bytes: &[u8]) -> String {
    domain_merkle::root_of(bytes).to_string()
}

/// Lines that are allowed to say ERROR, each because a fault the run injects explains it.
/// Kept tight: a line matches only with all of its fragments.
const EXPLAINED_ERRORS: &[(&[&str], &str)] = &[];

/// Scans a log: panics, and ERROR lines no entry of [`EXPLAINED_ERRORS`] explains.
/// Answers with (explained count, unexplained lines).
pub fn scan_log(text: &str) -> (usize, Vec<String>) {
    let mut explained = 0;
    let mut bad = Vec::new();
    for line in text.lines() {
        let panic = line.contains("panicked");
        let error = line.contains(" ERROR ") || line.contains("\"level\":\"ERROR\"");
        if !panic && !error {
            continue;
        }
        if !panic
            && EXPLAINED_ERRORS
                .iter()
                .any(|(fragments, _)| fragments.iter().all(|f| line.contains(f)))
        {
            explained += 1;
            continue;
        }
        bad.push(line.chars().take(400).collect());
    }
    (explained, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_with_wrong_bytes_or_a_deleted_item_is_a_violation_and_a_lost_ack_is_not() {
        let oracle = Oracle::new();
        oracle.attempt("a", "r1", 10);
        oracle.acknowledge(Item {
            id: "i1".into(),
            name: "a".into(),
            len: 10,
            seed: 1,
            root: "r1".into(),
            sent: Duration::ZERO,
            acked: Duration::ZERO,
            state: ItemState::Deleted(Duration::from_millis(5)),
        });
        oracle.attempt("b", "r2", 3);
        let listed = |id: &str, name: &str, size, hash: &str| Listed {
            id: id.into(),
            name: name.into(),
            size,
            hash: Some(hash.into()),
        };
        // Before the rm's acknowledgement: fine. An unacknowledged upload's content: fine.
        oracle.check_listing(
            &[listed("i1", "a", 10, "r1"), listed("i2", "b", 3, "r2")],
            Duration::from_millis(1),
            "t",
        );
        assert!(oracle.violations().is_empty());
        oracle.check_listing(
            &[listed("i1", "a", 10, "r1"), listed("i3", "b", 3, "zz")],
            Duration::from_secs(1),
            "t",
        );
        let promises: Vec<Promise> = oracle.violations().iter().map(|v| v.promise).collect();
        assert_eq!(promises, [Promise::Deletes, Promise::Bytes]);
        let shown = oracle.explain(&oracle.violations()[1]);
        assert!(shown.is_empty());
    }

    #[test]
    fn content_is_the_same_for_the_same_seed() {
        assert_eq!(content(5, 1000), content(5, 1000));
        assert_ne!(content(5, 1000), content(6, 1000));
        assert_eq!(root(&[]), root(&content(9, 0)));
    }

    #[test]
    fn panics_and_error_lines_are_found() {
        let log = "2026 INFO fine\n2026 ERROR something broke\nthread 'x' panicked at src\n";
        let (explained, bad) = scan_log(log);
        assert_eq!(explained, 0);
        assert_eq!(bad.len(), 2);
    }
}
