//! Crash consistency of a local store, whatever its catalog: a child process uploads,
//! replaces and deletes items until it is killed with SIGKILL at a random moment; the store
//! is then reopened and every acknowledged item must be intact, nothing partial visible,
//! no stray file left.
//!
//! A backend's test file includes this module, gives [`child`] and [`cycles`] a function
//! that opens its store on a folder, and runs [`child`] from an ignored test named
//! `crash_child`: the child is the test binary itself, re-run on that test with
//! `CRASH_CHILD_DIR` set (and whatever else [`cycles`] was asked to pass on).
//! `DOMAIN_CRASH_CYCLES` sets the number of kills (default 50); `cargo xtask crash
//! --cycles N` runs more.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use domain_datastore::{Datastore, LocalDatastore};
use domain_merkle::root_of;
use domain_proto::DomainId;
use domain_proto::domain_data::{Query, UpsertMetadata};
use tokio::io::AsyncReadExt;

const CHILD_DIR_VAR: &str = "CRASH_CHILD_DIR";
const CHILD_SEED_VAR: &str = "CRASH_CHILD_SEED";
const CYCLES_VAR: &str = "DOMAIN_CRASH_CYCLES";
const DEFAULT_CYCLES: u32 = 50;

/// SplitMix64: a small deterministic generator, so a failing run can be repeated by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn domain() -> DomainId {
    DomainId::new("crash").unwrap()
}

fn content(rng: &mut Rng) -> Vec<u8> {
    // Mostly small items, some spanning several I/O batches, a few repeated contents.
    let len = match rng.below(10) {
        0 => 1_000_000 + rng.below(2_000_000),
        1 => 0,
        _ => rng.below(200_000),
    } as usize;
    let seed = if rng.below(5) == 0 { 0 } else { rng.next() };
    let mut bytes = Vec::with_capacity(len);
    let mut bytes_rng = Rng(seed ^ len as u64);
    while bytes.len() < len {
        bytes.extend_from_slice(&bytes_rng.next().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The child: works on the store `open` opens until killed, one line on stdout per step.
/// `begin <op> <id>` before a replace or delete, `ack <id> <root>` after a put or replace
/// returns, `deleted <id>` after a delete returns. Does nothing unless run by [`cycles`].
pub fn child<F, Fut>(open: F)
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = LocalDatastore>,
{
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_VAR).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = open(PathBuf::from(dir)).await;
        let d = domain();
        let mut rng = Rng(seed);
        let mut ids: Vec<String> = store
            .query(&d, &Query::default())
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        loop {
            // A few puts at once, so that commits are shared.
            let puts = (0..1 + rng.below(4)).map(|i| {
                let bytes = content(&mut rng);
                let store = &store;
                let d = &d;
                async move {
                    let item = UpsertMetadata {
                        name: format!("item-{i}"),
                        data_type: "crash".into(),
                        size: bytes.len() as u32,
                        is_new: true,
                        ..Default::default()
                    };
                    let stored = store.put(d, item, bytes.as_slice()).await.unwrap();
                    println!("ack {} {}", stored.id, stored.hash.as_deref().unwrap());
                    stored.id
                }
            });
            ids.extend(futures::future::join_all(puts).await);
            // Deletes keep the store small (so each check stays quick) and race with puts
            // of the same content.
            let deletes = match ids.len() {
                0..=3 => 0,
                4..=30 => u64::from(rng.below(3) == 0),
                _ => 3,
            };
            for _ in 0..deletes {
                let id = ids.swap_remove(rng.below(ids.len() as u64) as usize);
                println!("begin delete {id}");
                store.delete(&d, &id).await.unwrap();
                println!("deleted {id}");
            }
            if !ids.is_empty() && rng.below(3) == 0 {
                let id = ids[rng.below(ids.len() as u64) as usize].clone();
                let bytes = content(&mut rng);
                let item = UpsertMetadata {
                    name: "replaced".into(),
                    data_type: "crash".into(),
                    size: bytes.len() as u32,
                    is_new: false,
                    id: id.clone(),
                    ..Default::default()
                };
                println!("begin replace {id}");
                let stored = store.put(&d, item, bytes.as_slice()).await.unwrap();
                println!("ack {} {}", stored.id, stored.hash.as_deref().unwrap());
            }
        }
    });
}

/// What the parent knows from the child's acknowledgements.
#[derive(Default)]
struct Expected {
    /// Acknowledged items and their roots.
    acked: BTreeMap<String, String>,
    /// Items with a replace or delete in flight when the child died: either state is fine.
    uncertain: BTreeSet<String>,
}

impl Expected {
    fn apply(&mut self, output: &str) {
        // The last line may be cut by the kill; only whole lines count.
        let complete = match output.rfind('\n') {
            Some(end) => &output[..end],
            None => "",
        };
        for line in complete.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["ack", id, root] => {
                    self.acked.insert((*id).to_owned(), (*root).to_owned());
                    self.uncertain.remove(*id);
                }
                ["begin", _, id] => {
                    self.uncertain.insert((*id).to_owned());
                }
                ["deleted", id] => {
                    self.acked.remove(*id);
                    self.uncertain.remove(*id);
                }
                _ => {}
            }
        }
    }
}

fn run_child(dir: &Path, seed: u64, kill_after: Duration, env: &[(String, String)]) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD_DIR_VAR, dir)
        .env(CHILD_SEED_VAR, seed.to_string())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Drain stdout while the child runs, so a full pipe never stalls it.
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    std::thread::sleep(kill_after);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

async fn check(store: LocalDatastore, dir: &Path, expected: &mut Expected, cycle: u32) {
    let report = store.repair_report().clone();
    assert!(
        report.items_without_blob.is_empty() && report.unknown_entries.is_empty(),
        "cycle {cycle}: committed metadata lost its blob: {report:?}"
    );
    let d = domain();
    let items: BTreeMap<String, _> = store
        .query(&d, &Query::default())
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();

    for (id, root) in &expected.acked {
        if expected.uncertain.contains(id) {
            continue;
        }
        let item = items
            .get(id)
            .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged {id} is gone"));
        assert_eq!(
            item.hash.as_deref(),
            Some(root.as_str()),
            "cycle {cycle}: {id} changed"
        );
    }
    for (id, item) in &items {
        // Whatever is visible is whole: its bytes hash to its root.
        let (_, mut reader) = store.get(&d, id).await.unwrap();
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(
            bytes.len(),
            item.size as usize,
            "cycle {cycle}: {id} is partial"
        );
        assert_eq!(
            Some(root_of(&bytes).to_string()),
            item.hash,
            "cycle {cycle}: {id} does not hash to its root"
        );
        // Committed but not acknowledged before the kill: now it is known.
        expected
            .acked
            .insert(id.clone(), item.hash.clone().unwrap());
    }
    expected.acked.retain(|id, _| items.contains_key(id));
    expected.uncertain.clear();

    // No temporary file, and exactly the blobs the items use.
    let tmp: Vec<PathBuf> = std::fs::read_dir(dir.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        tmp.is_empty(),
        "cycle {cycle}: temporary files left: {tmp:?}"
    );
    let blob_dir = dir.join("blobs").join(d.as_str());
    let blobs: BTreeSet<String> = match std::fs::read_dir(&blob_dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => BTreeSet::new(),
    };
    let used: BTreeSet<String> = items.values().map(|m| m.hash.clone().unwrap()).collect();
    assert_eq!(blobs, used, "cycle {cycle}: blob files and items disagree");
}

/// Kills a child working on a store in a new folder, again and again, and checks the store
/// `open` opens after each kill. `env` goes to every child.
pub fn cycles<F, Fut>(open: F, env: &[(String, String)])
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = LocalDatastore>,
{
    let cycles: u32 = std::env::var(CYCLES_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CYCLES);
    let base_seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {cycles} cycles, CRASH_SEED={base_seed}");
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rng = Rng(base_seed);
    let mut expected = Expected::default();
    let started = Instant::now();
    let mut acknowledged = 0;
    for cycle in 0..cycles {
        // From before the store is open to well into the uploads.
        let kill_after = Duration::from_millis(10 + rng.below(250));
        let output = run_child(dir.path(), rng.next(), kill_after, env);
        acknowledged += output.matches("ack ").count();
        expected.apply(&output);
        runtime.block_on(async {
            let store = open(dir.path().to_owned()).await;
            check(store, dir.path(), &mut expected, cycle).await;
        });
    }
    eprintln!(
        "crash test: {cycles} kills, {acknowledged} acknowledged puts, {} items at the end, {:?}",
        expected.acked.len(),
        started.elapsed()
    );
    assert!(
        acknowledged > 0,
        "the child never acknowledged a put: the test tested nothing"
    );
}
