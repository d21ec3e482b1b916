//! The workload: workers that each run `domain` commands one after the other (uploads of
//! 0 B to 64 MiB, re-uploads under a name in use, downloads, listings, deletes) drawn from
//! a generator of their own; a `watch` that runs throughout; and a checker that, whenever
//! every peer has been up and every link clean for a while, lists the domain and downloads
//! a few items, as the availability promise requires. Every command is a real process,
//! and the fault schedule may SIGKILL the one a worker runs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::Live;
use super::cluster::{ClientPids, DOMAIN, path};
use super::oracle::{Item, ItemState, Listed, Oracle, Promise, Record, content, root};
use super::schedule::Rng;

/// The longest a command may run before it counts as stuck and is killed: far beyond any
/// transfer of the workload (64 MiB on loopback) plus the faults' longest outage.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// The task timeout the clients ask for: a task whose client was killed fails after it
/// (and one retry), so that the stuck-job check can wait for the end of every job.
pub const TASK_TIMEOUT: &str = "30s";

/// How long every peer must have been up and every link clean before the checker expects
/// every acknowledged item: a restarted node's join, the manager's holder index.
const QUIET: Duration = Duration::from_secs(8);

/// Items the checker downloads per check, each at most this large.
const CHECK_DOWNLOADS: usize = 2;
const CHECK_MAX_LEN: u64 = 8 * 1024 * 1024;

/// What a `domain` command did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub code: Option<i32>,
    pub killed: bool,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.code == Some(0) && !self.killed && !self.timed_out
    }

    /// One line: how it ended, and its last error line.
    pub fn summary(&self) -> String {
        if self.killed {
            return "killed (injected)".to_owned();
        }
        if self.timed_out {
            return format!("no end within {COMMAND_LIMIT:?}; killed");
        }
        let last = self
            .stderr
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("")
            .chars()
            .take(240)
            .collect::<String>();
        match self.code {
            Some(0) => "ok".to_owned(),
            Some(code) => format!("exit {code}: {last}"),
            None => format!("signalled: {last}"),
        }
    }
}

/// Counts of operations by kind and outcome, for the summary.
pub type Counts = BTreeMap<(String, &'static str), u64>;

/// Everything the workload's threads share.
pub struct Workload<'a> {
    pub oracle: &'a Oracle,
    pub live: &'a Live,
    pub client: &'a Path,
    pub manager: &'a str,
    pub dir: &'a Path,
    pub seed: u64,
    pub pids: ClientPids,
    /// Set by the fault schedule: kill the command worker i runs now.
    pub kill: Vec<AtomicBool>,
    /// Set at the end of the fault window: each worker finishes its command and stops.
    pub stop: AtomicBool,
    /// Set when the watch is to end.
    pub stop_watch: AtomicBool,
    pub counts: Mutex<Counts>,
    /// What the watch printed: (incarnation, offset, item).
    pub watched: Mutex<Vec<(usize, Duration, String)>>,
    /// Each incarnation of the watch: its start and end.
    pub watches: Mutex<Vec<(Duration, Option<Duration>)>>,
    /// Uploads that failed while a disk was full: their error lines.
    pub disk_errors: Mutex<Vec<String>>,
}

impl Workload<'_> {
    fn count(&self, op: &str, outcome: &'static str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((op.to_owned(), outcome))
            .or_default() += 1;
    }

    fn identity(&self, actor: &str) -> PathBuf {
        self.dir.join("clients").join(format!("{actor}.key"))
    }

    /// Runs `domain ARGS --manager M --identity I` as `actor`, its standard error appended
    /// to the actor's log; killed when `kill` is set meanwhile or after [`COMMAND_LIMIT`].
    pub fn run(&self, actor: &str, args: &[String], kill: Option<&AtomicBool>) -> Outcome {
        let mut command = Command::new(self.client);
        command
            .args(args)
            .args(["--manager", self.manager])
            .arg("--identity")
            .arg(self.identity(actor))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                return Outcome {
                    stderr: format!("cannot start domain: {error}"),
                    ..Outcome::default()
                };
            }
        };
        self.pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(actor.to_owned(), child.id());
        let stdout = child.stdout.take().map(read_all);
        let stderr = child.stderr.take().map(read_all);
        let started = Instant::now();
        let mut outcome = Outcome::default();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    outcome.code = status.code();
                    break;
                }
                Ok(None) => {}
                Err(_) => break,
            }
            if kill.is_some_and(|kill| kill.swap(false, Ordering::Relaxed)) {
                outcome.killed = true;
                let _ = child.kill();
            } else if started.elapsed() > COMMAND_LIMIT {
                outcome.timed_out = true;
                let _ = child.kill();
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
        self.pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(actor);
        let collect = |reader: Option<thread::JoinHandle<Vec<u8>>>| {
            reader
                .and_then(|r| r.join().ok())
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default()
        };
        outcome.stdout = collect(stdout);
        outcome.stderr = collect(stderr);
        let log = self.dir.join("clients").join(format!("{actor}.log"));
        if let Ok(mut log) = File::options().create(true).append(true).open(log) {
            let _ = writeln!(
                log,
                "--- {:.3}s domain {} → {}",
                self.oracle.now().as_secs_f64(),
                args.first().map_or("", String::as_str),
                outcome.summary()
            );
            let _ = log.write_all(outcome.stderr.as_bytes());
        }
        outcome
    }

    /// One worker's loop, until [`Self::stop`].
    pub fn worker(&self, index: usize) {
        let actor = format!("w{index}");
        let mut rng = Rng::derive(self.seed, 1_000 + index as u64);
        let dir = self.dir.join("clients").join(&actor);
        let _ = std::fs::create_dir_all(dir.join("up"));
        let _ = std::fs::create_dir_all(dir.join("down"));
        let kill = &self.kill[index];
        let mut serial = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            // A kill meant for a command that ended just before it is not carried over.
            kill.store(false, Ordering::Relaxed);
            serial += 1;
            let roll = rng.below(100);
            if roll < 45 {
                let name = format!("{actor}-{serial}.bin");
                self.upload(&actor, &dir, &mut rng, name, "upload", kill);
            } else if roll < 53 {
                match self.oracle.some_name(&mut rng) {
                    Some(name) => self.upload(&actor, &dir, &mut rng, name, "upsert", kill),
                    None => continue,
                }
            } else if roll < 73 {
                self.download(&actor, &dir, &mut rng, kill);
            } else if roll < 83 {
                self.list(&actor, kill);
            } else {
                self.delete(&actor, &mut rng, kill);
            }
        }
    }

    /// An upload of new content as `name` (`op` is `upsert` when the name is in use: the
    /// command line has no way to replace an item's content under its id, so an upsert
    /// here is a new item under a name another item has).
    pub fn upload(
        &self,
        actor: &str,
        dir: &Path,
        rng: &mut Rng,
        name: String,
        op: &'static str,
        kill: &AtomicBool,
    ) {
        let len = size(rng);
        let seed = rng.next_u64();
        let bytes = content(seed, len);
        let expected = root(&bytes);
        let file = dir.join("up").join(format!("{seed:016x}.bin"));
        if std::fs::write(&file, &bytes).is_err() {
            return;
        }
        drop(bytes);
        self.oracle.attempt(&name, &expected, len);
        let before = self.live.snapshot();
        let start = self.oracle.now();
        let args: Vec<String> = vec![
            "upload".into(),
            path(&file),
            "--name".into(),
            name.clone(),
            "--domain".into(),
            DOMAIN.into(),
            "--json".into(),
            "--task-timeout".into(),
            TASK_TIMEOUT.into(),
        ];
        let outcome = self.run(actor, &args, Some(kill));
        let end = self.oracle.now();
        let _ = std::fs::remove_file(&file);
        let mut ids = Vec::new();
        let summary = if outcome.ok() {
            let listed = Listed::parse(&outcome.stdout);
            match listed.as_slice() {
                [item] => {
                    ids.push(item.id.clone());
                    if item.size != len || item.hash.as_deref() != Some(expected.as_str()) {
                        self.oracle.violate(
                            Promise::Bytes,
                            vec![item.id.clone()],
                            vec![name.clone()],
                            format!(
                                "upload of {len} bytes of root {expected} acknowledged as {} bytes of root {:?}",
                                item.size, item.hash
                            ),
                        );
                    }
                    self.oracle.acknowledge(Item {
                        id: item.id.clone(),
                        name: name.clone(),
                        len,
                        seed,
                        root: expected.clone(),
                        sent: start,
                        acked: end,
                        state: ItemState::Present,
                    });
                    self.count(op, "acknowledged");
                    format!("acknowledged, {len} bytes, root {}", &expected[..12])
                }
                _ => {
                    self.count(op, "odd output");
                    format!("exit 0 but {} items printed", listed.len())
                }
            }
        } else {
            let summary = outcome.summary();
            self.count(op, if outcome.killed { "killed" } else { "failed" });
            // Only failures that the full disk alone explains: no other fault then.
            let after = self.live.snapshot();
            let only_the_disk = before.quiet_for().is_some() && after.changes == before.changes;
            if !outcome.killed && only_the_disk && (before.disk_full || after.disk_full) {
                self.disk_errors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(summary.clone());
            }
            format!("{len} bytes: {summary}")
        };
        self.oracle.record(Record {
            start,
            end,
            actor: actor.to_owned(),
            op: op.to_owned(),
            ids,
            names: vec![name],
            outcome: summary,
        });
    }

    fn download(&self, actor: &str, dir: &Path, rng: &mut Rng, kill: &AtomicBool) {
        let Some(item) = self.oracle.pick(rng, false) else {
            return;
        };
        let out = dir.join("down");
        let start = self.oracle.now();
        let outcome = self.run(actor, &download_args(&item.id, &out), Some(kill));
        let end = self.oracle.now();
        let summary = if outcome.ok() {
            self.count("download", "ok");
            self.verify_download(actor, &item, &out, &outcome.stdout)
        } else {
            self.count("download", if outcome.killed { "killed" } else { "failed" });
            outcome.summary()
        };
        let _ = std::fs::remove_file(out.join(&item.id));
        self.oracle.record(Record {
            start,
            end,
            actor: actor.to_owned(),
            op: "download".into(),
            ids: vec![item.id.clone()],
            names: vec![item.name.clone()],
            outcome: summary,
        });
    }

    /// Compares a downloaded file and the root printed for it with what was uploaded;
    /// answers with a summary.
    pub fn verify_download(&self, actor: &str, item: &Item, out: &Path, stdout: &str) -> String {
        let printed = Listed::parse(stdout);
        let printed_root = printed
            .iter()
            .find(|listed| listed.id == item.id)
            .and_then(|listed| listed.hash.clone());
        let file = out.join(&item.id);
        let bytes = std::fs::read(&file).unwrap_or_default();
        let same = bytes.len() as u64 == item.len && bytes == content(item.seed, item.len);
        if !same || printed_root.as_deref() != Some(item.root.as_str()) {
            self.oracle.violate(
                Promise::Bytes,
                vec![item.id.clone()],
                vec![item.name.clone()],
                format!(
                    "{actor} downloaded {} as {} bytes (same as sent: {same}) with root {printed_root:?}; sent {} bytes of root {}",
                    item.id,
                    bytes.len(),
                    item.len,
                    item.root
                ),
            );
            return "WRONG BYTES".into();
        }
        format!("ok, {} bytes", item.len)
    }

    fn list(&self, actor: &str, kill: &AtomicBool) {
        let start = self.oracle.now();
        let outcome = self.run(actor, &list_args(), Some(kill));
        let end = self.oracle.now();
        let summary = if outcome.ok() {
            self.count("ls", "ok");
            let listed = Listed::parse(&outcome.stdout);
            self.oracle.check_listing(&listed, start, actor);
            format!("{} items", listed.len())
        } else {
            self.count("ls", if outcome.killed { "killed" } else { "failed" });
            outcome.summary()
        };
        self.oracle.record(Record {
            start,
            end,
            actor: actor.to_owned(),
            op: "ls".into(),
            ids: Vec::new(),
            names: Vec::new(),
            outcome: summary,
        });
    }

    fn delete(&self, actor: &str, rng: &mut Rng, kill: &AtomicBool) {
        let Some(item) = self.oracle.pick(rng, true) else {
            return;
        };
        let start = self.oracle.now();
        let args = vec![
            "rm".into(),
            "--domain".into(),
            DOMAIN.into(),
            "--id".into(),
            item.id.clone(),
            "--task-timeout".into(),
            TASK_TIMEOUT.into(),
        ];
        let outcome = self.run(actor, &args, Some(kill));
        let end = self.oracle.now();
        let summary = if outcome.ok() {
            self.count("rm", "acknowledged");
            self.oracle.set_state(&item.id, ItemState::Deleted(end));
            // A holder passed over is said on standard error even when rm succeeds.
            let warning = outcome.stderr.lines().rev().find(|l| !l.trim().is_empty());
            match warning {
                Some(line) => format!(
                    "acknowledged; said: {}",
                    line.chars().take(200).collect::<String>()
                ),
                None => "acknowledged".into(),
            }
        } else {
            self.count("rm", if outcome.killed { "killed" } else { "failed" });
            self.oracle.set_state(&item.id, ItemState::MaybeDeleted);
            outcome.summary()
        };
        self.oracle.record(Record {
            start,
            end,
            actor: actor.to_owned(),
            op: "rm".into(),
            ids: vec![item.id.clone()],
            names: vec![item.name.clone()],
            outcome: summary,
        });
    }

    /// The checker's loop, until [`Self::stop`]: in each quiet window, a listing that must
    /// hold every item acknowledged before it, and a few downloads.
    pub fn checker(&self) {
        let actor = "checker";
        let mut rng = Rng::derive(self.seed, 2_000);
        let out = self.dir.join("clients").join("checker");
        let _ = std::fs::create_dir_all(&out);
        while !self.stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_secs(2));
            let state = self.live.snapshot();
            if state.quiet_for().is_none_or(|quiet| quiet < QUIET) {
                continue;
            }
            let changes = state.changes;
            let unchanged = || self.live.snapshot().changes == changes;
            let start = self.oracle.now();
            let expected: Vec<Item> = self
                .oracle
                .items(|state| *state == ItemState::Present)
                .into_iter()
                .filter(|item| item.acked + Duration::from_secs(1) < start)
                .collect();
            let missing = self.missing_after_retry(actor, start, &expected, &unchanged);
            let missing = missing.filter(|missing| !missing.is_empty() && unchanged());
            if let Some(missing) = missing {
                self.oracle.violate(
                    Promise::Available,
                    missing.iter().map(|item| item.id.clone()).collect(),
                    missing.iter().map(|item| item.name.clone()).collect(),
                    format!(
                        "{} acknowledged items not listed twice in a row, with every peer up and every link clean for {:.1}s",
                        missing.len(),
                        state.quiet_for().unwrap_or_default().as_secs_f64()
                    ),
                );
            }
            let small: Vec<&Item> = expected
                .iter()
                .filter(|item| item.len <= CHECK_MAX_LEN)
                .collect();
            for _ in 0..CHECK_DOWNLOADS.min(small.len()) {
                let item = small[rng.index(small.len())];
                self.check_download(actor, item, &out, &unchanged);
            }
        }
    }

    /// Lists the domain (twice at most, 3 s apart) and answers with the expected items
    /// still present that neither listing held; `None` when the check says nothing (a
    /// fault came meanwhile, or the listing failed).
    fn missing_after_retry(
        &self,
        actor: &str,
        start: Duration,
        expected: &[Item],
        unchanged: &dyn Fn() -> bool,
    ) -> Option<Vec<Item>> {
        let mut missing: Vec<Item> = expected.to_vec();
        for attempt in 0..2 {
            if attempt > 0 {
                thread::sleep(Duration::from_secs(3));
            }
            let began = self.oracle.now();
            let outcome = self.run(actor, &list_args(), None);
            let end = self.oracle.now();
            let listed = if outcome.ok() {
                let listed = Listed::parse(&outcome.stdout);
                self.oracle.check_listing(&listed, began, actor)
            } else {
                Default::default()
            };
            if outcome.ok() {
                missing.retain(|item| {
                    !listed.contains(&item.id)
                        && self
                            .oracle
                            .item(&item.id)
                            .is_some_and(|now| now.state == ItemState::Present)
                });
            }
            self.oracle.record(Record {
                start: began,
                end,
                actor: actor.into(),
                op: "check ls".into(),
                ids: missing
                    .iter()
                    .take(20)
                    .map(|item| item.id.clone())
                    .collect(),
                names: Vec::new(),
                outcome: if outcome.ok() {
                    format!(
                        "{} listed, {} of {} expected missing",
                        listed.len(),
                        missing.len(),
                        expected.len()
                    )
                } else {
                    outcome.summary()
                },
            });
            if !unchanged() {
                return None;
            }
            if !outcome.ok() {
                if attempt == 1 {
                    self.oracle.violate(
                        Promise::Available,
                        Vec::new(),
                        Vec::new(),
                        format!(
                            "ls failed in a quiet window (from {:.3}s): {}",
                            start.as_secs_f64(),
                            outcome.summary()
                        ),
                    );
                }
                continue;
            }
            if missing.is_empty() {
                break;
            }
        }
        Some(missing)
    }

    fn check_download(&self, actor: &str, item: &Item, out: &Path, unchanged: &dyn Fn() -> bool) {
        for attempt in 0..2 {
            if self
                .oracle
                .item(&item.id)
                .is_none_or(|now| now.state != ItemState::Present)
            {
                return;
            }
            let start = self.oracle.now();
            let outcome = self.run(actor, &download_args(&item.id, out), None);
            let end = self.oracle.now();
            let summary = if outcome.ok() {
                self.verify_download(actor, item, out, &outcome.stdout)
            } else {
                outcome.summary()
            };
            let _ = std::fs::remove_file(out.join(&item.id));
            self.oracle.record(Record {
                start,
                end,
                actor: actor.into(),
                op: "check get".into(),
                ids: vec![item.id.clone()],
                names: vec![item.name.clone()],
                outcome: summary.clone(),
            });
            if outcome.ok() || !unchanged() {
                return;
            }
            let still = self
                .oracle
                .item(&item.id)
                .is_some_and(|now| now.state == ItemState::Present);
            if attempt == 1 && still {
                self.oracle.violate(
                    Promise::Available,
                    vec![item.id.clone()],
                    vec![item.name.clone()],
                    format!(
                        "download failed twice with every peer up and every link clean: {summary}"
                    ),
                );
            }
            thread::sleep(Duration::from_secs(2));
        }
    }

    /// The watch: `domain watch --json` from the start to the end, started again when it
    /// exits (each start an incarnation of its own).
    pub fn watcher(&self) {
        let actor = "watch";
        let mut incarnation = 0;
        while !self.stop_watch.load(Ordering::Relaxed) {
            let log = self.dir.join("clients").join("watch.log");
            let Ok(stderr) = File::options().create(true).append(true).open(&log) else {
                return;
            };
            let child = Command::new(self.client)
                .args([
                    "watch",
                    "--domain",
                    DOMAIN,
                    "--json",
                    "--manager",
                    self.manager,
                ])
                .arg("--identity")
                .arg(self.identity(actor))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn();
            let Ok(mut child) = child else {
                return;
            };
            let start = self.oracle.now();
            self.watches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((start, None));
            self.pids
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(actor.into(), child.id());
            if let Some(stdout) = child.stdout.take() {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    for item in Listed::parse(&line) {
                        self.watched
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((incarnation, self.oracle.now(), item.id));
                    }
                }
            }
            let status = child.wait();
            let end = self.oracle.now();
            self.pids
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(actor);
            if let Some(last) = self
                .watches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last_mut()
            {
                last.1 = Some(end);
            }
            self.oracle.record(Record {
                start,
                end,
                actor: actor.into(),
                op: "watch".into(),
                ids: Vec::new(),
                names: Vec::new(),
                outcome: format!("ended: {status:?}"),
            });
            incarnation += 1;
            if !self.stop_watch.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// `domain ls --json` of the domain.
pub fn list_args() -> Vec<String> {
    vec![
        "ls".into(),
        "--domain".into(),
        DOMAIN.into(),
        "--json".into(),
        "--task-timeout".into(),
        TASK_TIMEOUT.into(),
    ]
}

/// `domain download` of item `id` into `out`, as JSON, replacing a file left there.
fn download_args(id: &str, out: &Path) -> Vec<String> {
    vec![
        "download".into(),
        "--domain".into(),
        DOMAIN.into(),
        "--id".into(),
        id.into(),
        "--out".into(),
        path(out),
        "--json".into(),
        "--overwrite".into(),
        "--task-timeout".into(),
        TASK_TIMEOUT.into(),
    ]
}

/// An upload's size: empty, small, on a 7168-byte chunk boundary, medium, and rarely large
/// (up to 64 MiB).
fn size(rng: &mut Rng) -> u64 {
    const CHUNK: u64 = 7168;
    match rng.below(100) {
        0..10 => 0,
        10..45 => rng.between(1, 64 * 1024),
        45..65 => {
            let chunks = rng.between(1, 4);
            chunks * CHUNK + rng.between(0, 2) - 1
        }
        65..95 => rng.between(64 * 1024, 4 * 1024 * 1024),
        95..99 => rng.between(4 * 1024 * 1024, 16 * 1024 * 1024),
        _ => rng.between(16 * 1024 * 1024, 64 * 1024 * 1024),
    }
}

fn read_all(mut reader: impl std::io::Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        bytes
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_empty_boundaries_and_large_within_64_mib() {
        let mut rng = Rng::new(11);
        let sizes: Vec<u64> = (0..5_000).map(|_| size(&mut rng)).collect();
        assert!(sizes.contains(&0));
        assert!(sizes.contains(&7168) && sizes.contains(&7167) && sizes.contains(&7169));
        assert!(sizes.iter().any(|s| *s > 16 * 1024 * 1024));
        assert!(sizes.iter().all(|s| *s <= 64 * 1024 * 1024));
    }
}
