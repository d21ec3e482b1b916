//! `cargo xtask chaos --minutes N --seed S`: a loopback cluster (a manager, 4 nodes, domain
//! `chaos` with replication 2) under concurrent clients while a fault schedule drawn from
//! the seed SIGKILLs and restarts the nodes and the manager, kills clients mid-transfer,
//! slows, stalls, half-opens and resets the proxied links, and fills a node's disk; then
//! the oracle checks every promise (see [`oracle::Promise`]) during the run and once the
//! cluster settled. A failure prints the seed, the promise and the shortest history that
//! shows it, keeps the run's folder and exits non-zero; the same seed replays the same
//! fault schedule (its digest is printed at the start, to compare two runs).
//!
//! What is proxied: each node's link to the manager and the clients' link to the manager
//! (the addresses they are given point at the proxy), and every link to a node (clients'
//! transfers, other nodes' copies), since each node announces its proxy's address
//! (`--announce`) instead of the port it listens on. A libp2p peer may still learn a
//! listen address some other way (the manager's own identify answers name its port), so a
//! few connections may go around the proxy.

mod cluster;
mod oracle;
mod proxy;
mod schedule;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use cluster::{Binaries, ClientPids, Cluster, DOMAIN, one_line, path, sigkill};
use oracle::{ItemState, Listed, Oracle, Promise, Record, scan_log};
use schedule::{Fault, LinkFault, Rng, Schedule, Shape};
use workload::Workload;

/// Nodes of the cluster.
const NODES: usize = 4;

/// RSS bounds, checked every half second. The manager keeps at most 10 000 finished jobs
/// (a run makes a few thousand); a node streams items in batches of at most 1 MiB through
/// at most 256 task streams and never holds an item whole; a client streams too, a few
/// batches ahead. Each bound is several times what a quiet run uses, low enough that a
/// leak of one item's content per operation crosses it within a run.
const MANAGER_RSS_MIB: u64 = 512;
const NODE_RSS_MIB: u64 = 768;
const CLIENT_RSS_MIB: u64 = 512;

/// How long the final checks wait for running jobs to end: a killed client's task fails
/// after its timeout (30 s) and one retry.
const JOBS_DRAIN: Duration = Duration::from_secs(100);

/// Items per `domain download` in the final check.
const FINAL_BATCH: usize = 25;

/// Options of `cargo xtask chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Minutes of workload and faults (settling and the final checks come after).
    #[arg(long, default_value_t = 2.0)]
    pub minutes: f64,
    /// The seed of the fault schedule and of the workload [default: a fresh one, printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// The cargo profile of the binaries: `dev` reuses a test build (as `dist` does).
    #[arg(long, default_value = "release", value_parser = ["dev", "release"])]
    pub profile: String,
    /// Run the binaries already in `target/<profile>`, without building them.
    #[arg(long)]
    pub no_build: bool,
    /// Concurrent client workers (besides the watch and the checker).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub workers: u16,
    /// Seconds the cluster is given to settle after the faults stop, before the final
    /// checks.
    #[arg(long, default_value_t = 30)]
    pub settle: u64,
    /// Skip the check that every item has exactly the copies its domain asks for (it needs
    /// replication that repairs itself).
    #[arg(long)]
    pub no_copies_check: bool,
    /// Keep the run's folder even when every promise holds.
    #[arg(long)]
    pub keep: bool,
}

/// What the checker knows of the cluster's state now, as the fault schedule left it.
#[derive(Debug, Clone)]
pub struct LiveState {
    pub nodes_up: Vec<bool>,
    pub manager_up: bool,
    pub links_faulted: Vec<bool>,
    pub disk_full: bool,
    /// The last change of a peer or a link.
    pub changed: Instant,
    /// Changes of peers and links so far: a check that sees it move was disturbed.
    pub changes: u64,
}

impl LiveState {
    /// How long every peer has been up and every link clean; `None` while not.
    pub fn quiet_for(&self) -> Option<Duration> {
        let up = self.manager_up
            && self.nodes_up.iter().all(|up| *up)
            && !self.links_faulted.iter().any(|faulted| *faulted);
        up.then(|| self.changed.elapsed())
    }
}

/// The shared [`LiveState`].
#[derive(Debug)]
pub struct Live(Mutex<LiveState>);

impl Live {
    fn new(nodes: usize, links: usize) -> Self {
        Self(Mutex::new(LiveState {
            nodes_up: vec![true; nodes],
            manager_up: true,
            links_faulted: vec![false; links],
            disk_full: false,
            changed: Instant::now(),
            changes: 0,
        }))
    }

    pub fn snapshot(&self) -> LiveState {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A change of peers or links.
    fn change(&self, change: impl FnOnce(&mut LiveState)) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut state);
        state.changed = Instant::now();
        state.changes += 1;
    }

    fn set_disk_full(&self, full: bool) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .disk_full = full;
    }
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let seed = options.seed.unwrap_or_else(fresh_seed);
    let span = Duration::try_from_secs_f64(options.minutes * 60.0)
        .ok()
        .filter(|span| *span >= Duration::from_secs(20))
        .context("--minutes must be at least 1/3 (20 s)")?;
    let workers = usize::from(options.workers);
    println!("chaos: seed {seed} (replay: {})", replay(options, seed));
    let bins = binaries(options)?;
    // Node i → manager, clients → manager, anyone → node i.
    let links = 2 * NODES + 1;
    let disk_node = Rng::derive(seed, 3).index(NODES);
    let shape = Shape {
        nodes: NODES,
        links,
        workers,
        disk_node,
    };
    let schedule = Schedule::generate(seed, span, shape);
    println!(
        "chaos: schedule of {} events over {:?}, digest {:016x}; links 0..{} are node i → manager, link {} clients → manager, links {}..{} anyone → node i; its start:",
        schedule.events.len(),
        span,
        schedule.digest(),
        NODES - 1,
        NODES,
        NODES + 1,
        2 * NODES
    );
    for event in schedule.events.iter().take(8) {
        println!("chaos:   {event}");
    }

    let dir = tempfile::Builder::new()
        .prefix("domain-chaos-")
        .tempdir()
        .context("creating the run's folder")?;
    println!("chaos: run folder {}", dir.path().display());
    let verdict = run_in(
        options,
        seed,
        span,
        workers,
        &bins,
        &schedule,
        shape,
        dir.path(),
    );
    match verdict {
        Ok(true) if !options.keep => Ok(()),
        Ok(true) => {
            println!("chaos: run folder kept: {}", dir.keep().display());
            Ok(())
        }
        Ok(false) => {
            let kept = dir.keep();
            bail!(
                "promises broken with seed {seed} (replay: {}); logs in {}",
                replay(options, seed),
                kept.display()
            )
        }
        Err(error) => {
            let kept = dir.keep();
            Err(error.context(format!(
                "the chaos run of seed {seed} could not finish; logs in {}",
                kept.display()
            )))
        }
    }
}

/// The command that replays this run's schedule.
fn replay(options: &Options, seed: u64) -> String {
    let mut command = format!(
        "cargo xtask chaos --minutes {} --seed {seed} --profile {}",
        options.minutes, options.profile
    );
    if options.workers != 4 {
        command.push_str(&format!(" --workers {}", options.workers));
    }
    if options.no_copies_check {
        command.push_str(" --no-copies-check");
    }
    command
}

/// A seed from the clock and the process id, for runs without `--seed`.
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    Rng::derive(nanos, u64::from(std::process::id())).next_u64() >> 16
}

/// Builds the binaries in `profile` (unless `--no-build`) and answers with their paths.
fn binaries(options: &Options) -> anyhow::Result<Binaries> {
    let root = crate::workspace_root();
    if !options.no_build {
        let mut cargo =
            std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cargo.current_dir(&root);
        if options.profile == "dev" {
            // What `cargo test --workspace` builds, binaries included, so that CI reuses its
            // test build instead of building the binaries in another variant.
            cargo.args(["test", "--locked", "--workspace", "--no-run"]);
        } else {
            cargo.args(["build", "--locked", "--release", "--bins"]);
            cargo.args([
                "-p",
                "domain-manager",
                "-p",
                "domain-node",
                "-p",
                "domain-cli",
            ]);
        }
        let status = cargo.status().context("cannot run cargo")?;
        if !status.success() {
            bail!("building the binaries failed ({status})");
        }
    }
    let release = domain_e2e::release_binary("domain")?;
    let target = release
        .parent()
        .and_then(Path::parent)
        .context("no target folder")?;
    let folder = target.join(if options.profile == "dev" {
        "debug"
    } else {
        "release"
    });
    let bins = Binaries {
        manager: folder.join("domain-manager"),
        node: folder.join("domain-node"),
        client: folder.join("domain"),
    };
    for bin in [&bins.manager, &bins.node, &bins.client] {
        if !bin.exists() {
            bail!("{} is missing: build it, or drop --no-build", bin.display());
        }
    }
    Ok(bins)
}

/// The run itself; `Ok(true)` when every promise held.
#[allow(clippy::too_many_arguments)]
fn run_in(
    options: &Options,
    seed: u64,
    span: Duration,
    workers: usize,
    bins: &Binaries,
    schedule: &Schedule,
    shape: Shape,
    dir: &Path,
) -> anyhow::Result<bool> {
    let clients_dir = dir.join("clients");
    std::fs::create_dir_all(&clients_dir)?;
    let mut actors: Vec<String> = (0..workers).map(|w| format!("w{w}")).collect();
    actors.extend(["checker", "watch", "final"].map(String::from));
    let client_ids = actors
        .iter()
        .map(|actor| {
            let identity = path(&clients_dir.join(format!("{actor}.key")));
            one_line(&bins.client, &["id", "--identity", &identity])
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pids: ClientPids = ClientPids::default();
    let cluster = Cluster::start(
        bins.clone(),
        dir,
        NODES,
        shape.disk_node,
        &client_ids,
        std::sync::Arc::clone(&pids),
        seed,
    )?;
    println!(
        "chaos: manager and {NODES} nodes up (node{} on a small tmpfs: {}); {workers} workers, a watch and a checker for {span:?}",
        shape.disk_node,
        if cluster.disk.is_some() {
            "mounted"
        } else {
            "not mounted"
        }
    );

    let manager = cluster.client_manager.clone();
    let oracle = Oracle::new();
    let live = Live::new(NODES, shape.links);
    let workload = Workload {
        oracle: &oracle,
        live: &live,
        client: &bins.client,
        manager: &manager,
        dir,
        seed,
        pids: std::sync::Arc::clone(&pids),
        kill: (0..workers).map(|_| AtomicBool::new(false)).collect(),
        stop: AtomicBool::new(false),
        stop_watch: AtomicBool::new(false),
        counts: Mutex::default(),
        watched: Mutex::default(),
        watches: Mutex::default(),
        disk_errors: Mutex::default(),
    };
    let sampling = AtomicBool::new(true);
    let rss: Mutex<BTreeMap<String, u64>> = Mutex::default();
    let mut faults_done: BTreeMap<&'static str, u64> = BTreeMap::new();

    thread::scope(|scope| -> anyhow::Result<()> {
        let sampler = scope.spawn(|| sample_rss(&cluster, &pids, &sampling, &rss));
        let watcher = scope.spawn(|| workload.watcher());
        let mut running: Vec<_> = (0..workers)
            .map(|index| {
                let workload = &workload;
                scope.spawn(move || workload.worker(index))
            })
            .collect();
        running.push(scope.spawn(|| workload.checker()));

        for event in &schedule.events {
            let due = oracle.instant(event.at);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            let outcome = apply(&cluster, &live, &workload, event.fault);
            *faults_done.entry(event.fault.kind()).or_default() += 1;
            let now = oracle.now();
            oracle.record(Record {
                start: now,
                end: now,
                actor: "faults".into(),
                op: event.fault.kind().into(),
                ids: Vec::new(),
                names: Vec::new(),
                outcome: format!(
                    "{} (due {:.3}s){outcome}",
                    event.fault,
                    event.at.as_secs_f64()
                ),
            });
        }
        thread::sleep(
            oracle
                .instant(span)
                .saturating_duration_since(Instant::now()),
        );
        println!(
            "chaos: {:.0}s: faults over; healing, letting the workers finish",
            oracle.now().as_secs_f64()
        );
        workload.stop.store(true, Ordering::Relaxed);
        heal(&cluster, &live, &oracle);
        for handle in running {
            let _ = handle.join();
        }
        println!(
            "chaos: {:.0}s: workers done; settling for {}s",
            oracle.now().as_secs_f64(),
            options.settle
        );
        thread::sleep(Duration::from_secs(options.settle));
        final_checks(&cluster, &workload, &oracle);
        workload.stop_watch.store(true, Ordering::Relaxed);
        if let Some(pid) = pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get("watch")
        {
            sigkill(*pid);
        }
        let _ = watcher.join();
        check_jobs(&workload, &oracle, &cluster.node_names());
        sampling.store(false, Ordering::Relaxed);
        let _ = sampler.join();
        Ok(())
    })?;

    println!(
        "chaos: connections through the proxy links (to the manager from node0..node{}, from clients; to node0..node{}): {:?}",
        NODES - 1,
        NODES - 1,
        cluster.link_connections()
    );
    check_watch(&workload, &oracle);
    for unclean in cluster.stop_all() {
        oracle.violate(
            Promise::Stuck,
            Vec::new(),
            Vec::new(),
            format!("at the end, {unclean}"),
        );
    }
    check_stores(&cluster, &oracle, options.no_copies_check);
    let mounted = cluster.disk.is_some();
    drop(cluster);
    check_logs(dir, &oracle);
    check_rss(&rss.lock().unwrap_or_else(PoisonError::into_inner), &oracle);
    check_disk(
        &workload,
        &oracle,
        &faults_done,
        shape.disk_node,
        mounted,
        dir,
    );

    let checks = oracle.count(|record| record.op == "check ls");
    oracle.note(
        Promise::Available,
        format!("{checks} listings in quiet windows, each with downloads"),
    );
    Ok(report(seed, &oracle, &workload, &faults_done, &rss))
}

/// Applies one fault; answers with a note for the history.
fn apply(cluster: &Cluster, live: &Live, workload: &Workload<'_>, fault: Fault) -> String {
    match fault {
        Fault::KillNode(index) => {
            cluster.kill(&format!("node{index}"));
            live.change(|state| state.nodes_up[index] = false);
        }
        Fault::RestartNode(index) => {
            // Not waited for: a node is ready once it joined, and the manager may be down.
            if let Err(error) = cluster.start_node(index, false) {
                return format!(": {error:#}");
            }
            live.change(|state| state.nodes_up[index] = true);
        }
        Fault::KillManager => {
            cluster.kill("manager");
            live.change(|state| state.manager_up = false);
        }
        Fault::RestartManager => {
            let started = Instant::now();
            if let Err(error) = cluster.start_manager(true) {
                return format!(": {error:#}");
            }
            live.change(|state| state.manager_up = true);
            return format!(", ready in {:.1}s", started.elapsed().as_secs_f64());
        }
        Fault::KillClient(worker) => {
            if let Some(kill) = workload.kill.get(worker) {
                kill.store(true, Ordering::Relaxed);
            }
        }
        Fault::Link(link, fault) => {
            cluster.link_fault(link, fault);
            live.change(|state| {
                if fault != LinkFault::Reset {
                    state.links_faulted[link] = true;
                }
            });
        }
        Fault::HealLink(link) => {
            cluster.heal_link(link);
            live.change(|state| state.links_faulted[link] = false);
        }
        Fault::FillDisk(_) => {
            let Some(disk) = &cluster.disk else {
                return ", skipped: no file system of its own".into();
            };
            live.set_disk_full(true);
            return match disk.fill() {
                Ok(bytes) => format!(", {} MiB of filler", bytes >> 20),
                Err(error) => format!(", filling failed: {error}"),
            };
        }
        Fault::FreeDisk(_) => {
            if let Some(disk) = &cluster.disk {
                disk.free();
            }
            live.set_disk_full(false);
        }
    }
    String::new()
}

/// Ends every fault: peers started again, links clean, the disk freed; then waits until
/// every peer is ready, and calls one that never is a broken promise.
fn heal(cluster: &Cluster, live: &Live, oracle: &Oracle) {
    if !cluster.is_running("manager") {
        let _ = cluster.start_manager(false);
    }
    for index in 0..cluster.nodes {
        if !cluster.is_running(&format!("node{index}")) {
            // A node that died by itself (not by the schedule) is noticed here.
            let _ = cluster.start_node(index, false);
        }
    }
    cluster.heal_all_links();
    if let Some(disk) = &cluster.disk {
        disk.free();
    }
    live.set_disk_full(false);
    live.change(|state| {
        state.manager_up = true;
        state.nodes_up.iter_mut().for_each(|up| *up = true);
        state.links_faulted.iter_mut().for_each(|f| *f = false);
    });
    for (name, error) in cluster.wait_all_ready() {
        oracle.violate(
            Promise::Restarts,
            Vec::new(),
            Vec::new(),
            format!("{name} did not start and join again: {error}"),
        );
    }
}

/// After settling: every acknowledged item is listed and downloads with its bytes and
/// root; no deleted item is listed.
fn final_checks(cluster: &Cluster, workload: &Workload<'_>, oracle: &Oracle) {
    let actor = "final";
    let expected = oracle.items(|state| *state == ItemState::Present);
    let mut missing: Vec<String> = Vec::new();
    for attempt in 0..5 {
        if attempt > 0 {
            thread::sleep(Duration::from_secs(5));
        }
        let start = oracle.now();
        let outcome = workload.run(actor, &workload::list_args(), None);
        let listed = if outcome.ok() {
            oracle.check_listing(&Listed::parse(&outcome.stdout), start, actor)
        } else {
            BTreeSet::new()
        };
        missing = expected
            .iter()
            .filter(|item| !listed.contains(&item.id))
            .map(|item| item.id.clone())
            .collect();
        oracle.record(Record {
            start,
            end: oracle.now(),
            actor: actor.into(),
            op: "final ls".into(),
            ids: missing.iter().take(20).cloned().collect(),
            names: Vec::new(),
            outcome: format!(
                "{}; {} of {} acknowledged missing",
                outcome.summary(),
                missing.len(),
                expected.len()
            ),
        });
        if outcome.ok() && missing.is_empty() {
            break;
        }
    }
    if !missing.is_empty() {
        let names = missing
            .iter()
            .filter_map(|id| oracle.item(id).map(|item| item.name))
            .collect();
        oracle.violate(
            Promise::Settled,
            missing.clone(),
            names,
            format!(
                "{} of {} acknowledged items not listed after settling (5 listings, 5 s apart)",
                missing.len(),
                expected.len()
            ),
        );
    }
    let out = cluster.dir.join("clients").join("final");
    let _ = std::fs::create_dir_all(&out);
    let present: Vec<_> = expected
        .iter()
        .filter(|item| !missing.contains(&item.id))
        .collect();
    let mut failed = Vec::new();
    for batch in present.chunks(FINAL_BATCH) {
        let mut args: Vec<String> = vec!["download".into(), "--domain".into(), DOMAIN.into()];
        for item in batch {
            args.extend(["--id".into(), item.id.clone()]);
        }
        args.extend([
            "--out".into(),
            path(&out),
            "--json".into(),
            "--overwrite".into(),
        ]);
        let start = oracle.now();
        let outcome = workload.run(actor, &args, None);
        let printed: BTreeSet<String> = Listed::parse(&outcome.stdout)
            .into_iter()
            .map(|l| l.id)
            .collect();
        for item in batch {
            if printed.contains(&item.id) {
                workload.verify_download(actor, item, &out, &outcome.stdout);
            } else {
                failed.push((*item).clone());
            }
            let _ = std::fs::remove_file(out.join(&item.id));
        }
        oracle.record(Record {
            start,
            end: oracle.now(),
            actor: actor.into(),
            op: "final get".into(),
            ids: batch.iter().map(|item| item.id.clone()).collect(),
            names: Vec::new(),
            outcome: outcome.summary(),
        });
    }
    if !failed.is_empty() {
        oracle.violate(
            Promise::Settled,
            failed.iter().map(|item| item.id.clone()).collect(),
            failed.iter().map(|item| item.name.clone()).collect(),
            format!(
                "{} listed items failed to download after settling",
                failed.len()
            ),
        );
    }
    oracle.note(
        Promise::Settled,
        format!(
            "{} items listed and downloaded byte for byte",
            present.len() - failed.len()
        ),
    );
}

/// A job the manager still runs, as `domain jobs --json` shows it.
struct RunningJob {
    id: String,
    name: String,
    /// Each task's status and the node it is assigned to.
    tasks: Vec<(String, String)>,
}

impl RunningJob {
    fn describe(&self) -> String {
        let tasks: Vec<String> = self
            .tasks
            .iter()
            .map(|(status, node)| format!("{status} on {node}"))
            .collect();
        format!("{} ({}: {})", self.id, self.name, tasks.join(", "))
    }

    /// Copies the nodes place themselves: their end is replication's promise.
    fn is_copy(&self) -> bool {
        self.name == "replicate" || self.name.starts_with("repair")
    }
}

/// The jobs not ended yet (a task neither DONE nor FAILED); receivers named by `nodes`.
fn running_jobs(
    workload: &Workload<'_>,
    nodes: &BTreeMap<String, String>,
) -> Result<Vec<RunningJob>, String> {
    let args: Vec<String> = vec!["jobs".into(), "--json".into()];
    let outcome = workload.run("final", &args, None);
    if !outcome.ok() {
        return Err(outcome.summary());
    }
    let node = |peer: Option<&str>| match peer {
        Some(peer) => nodes.get(peer).cloned().unwrap_or_else(|| peer.to_owned()),
        None => "no node".to_owned(),
    };
    Ok(outcome
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|job| RunningJob {
            id: job["id"].as_str().unwrap_or("?").to_owned(),
            name: job["name"].as_str().unwrap_or("?").to_owned(),
            tasks: job["tasks"]
                .as_array()
                .map(|tasks| {
                    tasks
                        .iter()
                        .map(|t| {
                            let status = t["status"].as_str().unwrap_or("?").to_owned();
                            (status, node(t["receiver"].as_str()))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .filter(|job| {
            job.tasks
                .iter()
                .any(|(status, _)| status != "DONE" && status != "FAILED")
        })
        .collect())
}

/// No job runs forever: the manager's jobs all end within [`JOBS_DRAIN`] of the end of
/// the workload (the watch was killed just before: its job must end too). A job that
/// replication runs is replication's promise, under the copies' verdict.
fn check_jobs(workload: &Workload<'_>, oracle: &Oracle, nodes: &BTreeMap<String, String>) {
    let deadline = Instant::now() + JOBS_DRAIN;
    loop {
        let running = match running_jobs(workload, nodes) {
            Ok(running) => running,
            Err(error) => {
                oracle.violate(
                    Promise::Stuck,
                    Vec::new(),
                    Vec::new(),
                    format!("domain jobs failed after settling: {error}"),
                );
                return;
            }
        };
        if !running.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_secs(5));
            continue;
        }
        let (copies, others): (Vec<&RunningJob>, Vec<&RunningJob>) =
            running.iter().partition(|job| job.is_copy());
        for (promise, jobs) in [(Promise::Copies, copies), (Promise::Stuck, others)] {
            if jobs.is_empty() {
                continue;
            }
            let described: Vec<String> = jobs.iter().take(8).map(|j| j.describe()).collect();
            oracle.violate(
                promise,
                Vec::new(),
                Vec::new(),
                format!(
                    "{} jobs still running {JOBS_DRAIN:?} after the workload ended: {}",
                    jobs.len(),
                    described.join("; ")
                ),
            );
        }
        if running.is_empty() {
            oracle.note(Promise::Stuck, "every job ended".into());
        }
        return;
    }
}

/// Each incarnation of the watch showed each item at most once, and every item whose
/// upload began after it started and was acknowledged well before it ended.
fn check_watch(workload: &Workload<'_>, oracle: &Oracle) {
    let watched = workload
        .watched
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let watches = workload
        .watches
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut seen: BTreeMap<(usize, String), u32> = BTreeMap::new();
    for (incarnation, _, id) in &watched {
        *seen.entry((*incarnation, id.clone())).or_default() += 1;
    }
    let twice: Vec<String> = seen
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|((incarnation, id), count)| format!("{id} {count} times in watch #{incarnation}"))
        .collect();
    if !twice.is_empty() {
        let ids = seen
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|((_, id), _)| id.clone())
            .collect();
        oracle.violate(
            Promise::Watch,
            ids,
            Vec::new(),
            format!(
                "{} items shown more than once: {}",
                twice.len(),
                twice.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ),
        );
    }
    // Items acknowledged with this margin before a watch ended must have reached it.
    let margin = Duration::from_secs(10);
    let every = oracle.items(|_| true);
    // A watch follows each holder on a stream of its own, opened again when the holder
    // (or the manager, which names the holders) comes back: what was stored there and
    // deleted again before that stream opened is nowhere left to show. Such an item is not
    // required: deleted within `SHORT_LIVED` of its acknowledgement, uploaded within
    // `REFOLLOW` of a peer's kill or restart.
    const SHORT_LIVED: Duration = Duration::from_secs(5);
    const REFOLLOW: Duration = Duration::from_secs(15);
    let restarts = oracle.fault_times(&[
        "kill node",
        "restart node",
        "kill manager",
        "restart manager",
    ]);
    let unseeable = |item: &oracle::Item| {
        matches!(item.state, ItemState::Deleted(at) if at < item.acked + SHORT_LIVED)
            && restarts
                .iter()
                .any(|at| *at <= item.sent && item.sent < *at + REFOLLOW)
    };
    let mut missed = Vec::new();
    let mut passed_over = 0;
    for (incarnation, (start, end)) in watches.iter().enumerate() {
        let Some(end) = end else { continue };
        for item in &every {
            let covered = item.sent > *start + Duration::from_secs(5) && item.acked + margin < *end;
            if covered && !seen.contains_key(&(incarnation, item.id.clone())) {
                if unseeable(item) {
                    passed_over += 1;
                } else {
                    missed.push((incarnation, item.clone()));
                }
            }
        }
    }
    if !missed.is_empty() {
        oracle.violate(
            Promise::Watch,
            missed.iter().map(|(_, item)| item.id.clone()).collect(),
            missed.iter().map(|(_, item)| item.name.clone()).collect(),
            format!(
                "{} items acknowledged while a watch ran were never shown by it (first: {} in watch #{})",
                missed.len(),
                missed[0].1.id,
                missed[0].0
            ),
        );
    }
    oracle.note(
        Promise::Watch,
        format!(
            "{} lines over {} incarnations; {passed_over} not shown, deleted within {SHORT_LIVED:?} of their upload while the watch followed a restarted peer again",
            watched.len(),
            watches.len()
        ),
    );
}

/// Reads each node's store offline (the nodes stopped): no item with bytes no client sent,
/// no deleted item, and each acknowledged item on exactly 2 nodes.
fn check_stores(cluster: &Cluster, oracle: &Oracle, skip_copies: bool) {
    let mut copies: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let now = oracle.now();
    for index in 0..cluster.nodes {
        let store = cluster.dir.join(format!("node{index}")).join("store");
        let store = path(&store);
        let args = ["store", "--dir", &store, "ls", "--domain", DOMAIN, "--json"];
        match domain_e2e::run(
            "domain store ls",
            &cluster.bins.client,
            args,
            Duration::from_secs(120),
        ) {
            Ok(output) if output.status.success() => {
                let listed = Listed::parse(&output.stdout);
                for id in oracle.check_listing(&listed, now, &format!("node{index}'s store")) {
                    copies.entry(id).or_default().push(index);
                }
            }
            Ok(output) => oracle.violate(
                Promise::Copies,
                Vec::new(),
                Vec::new(),
                format!(
                    "domain store ls of node{index} failed: {}",
                    output.stderr.trim()
                ),
            ),
            Err(error) => oracle.violate(
                Promise::Copies,
                Vec::new(),
                Vec::new(),
                format!("domain store ls of node{index}: {error}"),
            ),
        }
    }
    let mut wrong = Vec::new();
    let mut histogram: BTreeMap<usize, u64> = BTreeMap::new();
    for item in oracle.items(|state| *state == ItemState::Present) {
        let holders = copies.get(&item.id).cloned().unwrap_or_default();
        *histogram.entry(holders.len()).or_default() += 1;
        if holders.len() != 2 {
            wrong.push((item, holders));
        }
    }
    let shape = histogram
        .iter()
        .map(|(copies, items)| format!("{items} items on {copies}"))
        .collect::<Vec<_>>()
        .join(", ");
    if skip_copies {
        oracle.skip(
            Promise::Copies,
            format!(
                "--no-copies-check (would have found {} items without exactly 2 copies: {shape})",
                wrong.len()
            ),
        );
        return;
    }
    oracle.note(Promise::Copies, shape.clone());
    if !wrong.is_empty() {
        let first: Vec<String> = wrong
            .iter()
            .take(5)
            .map(|(item, holders)| format!("{} on {holders:?}", item.id))
            .collect();
        oracle.violate(
            Promise::Copies,
            wrong.iter().map(|(item, _)| item.id.clone()).collect(),
            wrong.iter().map(|(item, _)| item.name.clone()).collect(),
            format!(
                "{} acknowledged items do not have exactly 2 copies ({shape}); first: {}",
                wrong.len(),
                first.join("; ")
            ),
        );
    }
}

/// Panics and unexplained ERROR lines in any log of the run.
fn check_logs(dir: &Path, oracle: &Oracle) {
    let mut files: Vec<PathBuf> = Vec::new();
    for folder in [dir.to_path_buf(), dir.join("clients")] {
        if let Ok(entries) = std::fs::read_dir(&folder) {
            files.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .filter(|path| path.extension().is_some_and(|ext| ext == "log")),
            );
        }
    }
    files.sort();
    let mut explained_total = 0;
    for file in &files {
        let text = std::fs::read(file).unwrap_or_default();
        let (explained, bad) = scan_log(&String::from_utf8_lossy(&text));
        explained_total += explained;
        if !bad.is_empty() {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            oracle.violate(
                Promise::Logs,
                Vec::new(),
                Vec::new(),
                format!(
                    "{name}: {} lines; first: {}",
                    bad.len(),
                    bad.iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n      ")
                ),
            );
        }
    }
    oracle.note(
        Promise::Logs,
        format!(
            "{} logs read, {explained_total} ERROR lines explained by injected faults",
            files.len()
        ),
    );
}

/// Samples the RSS of every peer and client every half second, keeping each one's peak.
fn sample_rss(
    cluster: &Cluster,
    clients: &ClientPids,
    sampling: &AtomicBool,
    peaks: &Mutex<BTreeMap<String, u64>>,
) {
    while sampling.load(Ordering::Relaxed) {
        let mut pids = cluster.pids();
        pids.extend(
            clients
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(actor, pid)| (format!("client {actor}"), *pid)),
        );
        for (name, pid) in pids {
            if let Some(kib) = rss_kib(pid) {
                let mut peaks = peaks.lock().unwrap_or_else(PoisonError::into_inner);
                let peak = peaks.entry(name).or_default();
                *peak = (*peak).max(kib);
            }
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// VmRSS of process `pid`, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn check_rss(peaks: &BTreeMap<String, u64>, oracle: &Oracle) {
    for (name, kib) in peaks {
        let bound = if name == "manager" {
            MANAGER_RSS_MIB
        } else if name.starts_with("node") {
            NODE_RSS_MIB
        } else {
            CLIENT_RSS_MIB
        };
        if kib >> 10 > bound {
            oracle.violate(
                Promise::Rss,
                Vec::new(),
                Vec::new(),
                format!(
                    "{name} reached {} MiB, over its bound of {bound} MiB",
                    kib >> 10
                ),
            );
        }
    }
}

/// Disk full: the uploads that failed while the disk was full and nothing else was wrong
/// said so clearly; that no partial item remained is the stores' and listings' check.
fn check_disk(
    workload: &Workload<'_>,
    oracle: &Oracle,
    faults: &BTreeMap<&'static str, u64>,
    disk_node: usize,
    mounted: bool,
    log_dir: &Path,
) {
    if !faults.contains_key("fill disk") {
        oracle.skip(
            Promise::DiskFull,
            "the schedule drew no disk-full fault".into(),
        );
        return;
    }
    if !mounted {
        oracle.skip(
            Promise::DiskFull,
            "no file system of its own for the node (mount needs root)".into(),
        );
        return;
    }
    let errors = workload
        .disk_errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let node_log =
        std::fs::read_to_string(log_dir.join(format!("node{disk_node}.log"))).unwrap_or_default();
    let refusals = node_log
        .lines()
        .filter(|line| line.contains("No space left") || line.contains("os error 28"))
        .count();
    oracle.note(
        Promise::DiskFull,
        format!("node{disk_node} refused {refusals} writes for want of space"),
    );
    let clear = |error: &String| {
        let lower = error.to_lowercase();
        [
            "no space",
            "enospc",
            "disk full",
            "storage full",
            "space left",
        ]
        .iter()
        .any(|phrase| lower.contains(phrase))
    };
    let (clear_ones, unclear): (Vec<&String>, Vec<&String>) = errors.iter().partition(|e| clear(e));
    oracle.note(
        Promise::DiskFull,
        format!(
            "{} uploads failed while the disk was full: {} said so clearly",
            errors.len(),
            clear_ones.len()
        ),
    );
    if errors.is_empty() {
        oracle.note(
            Promise::DiskFull,
            "no upload failed in a window with only the disk full: each refused write was retried on another node".into(),
        );
    }
    if !unclear.is_empty() {
        oracle.violate(
            Promise::DiskFull,
            Vec::new(),
            Vec::new(),
            format!(
                "{} uploads that failed while node{disk_node}'s disk was full did not say why clearly; first: {}",
                unclear.len(),
                unclear[0]
            ),
        );
    }
}

/// Prints the summary and, for each broken promise, its violations with their shortest
/// history; answers whether every promise held.
fn report(
    seed: u64,
    oracle: &Oracle,
    workload: &Workload<'_>,
    faults: &BTreeMap<&'static str, u64>,
    rss: &Mutex<BTreeMap<String, u64>>,
) -> bool {
    println!("chaos: operations (kind: outcome count):");
    let counts = workload
        .counts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut by_kind: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((op, outcome), count) in &counts {
        by_kind
            .entry(op.clone())
            .or_default()
            .push(format!("{outcome} {count}"));
    }
    for (op, outcomes) in by_kind {
        println!("chaos:   {op:<8} {}", outcomes.join(", "));
    }
    let faults_line: Vec<String> = faults
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    println!("chaos: faults: {}", faults_line.join(", "));
    let rss = rss.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let peak = |prefix: &str| {
        rss.iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, k)| k >> 10)
            .max()
            .unwrap_or(0)
    };
    println!(
        "chaos: peak RSS: manager {} MiB (bound {MANAGER_RSS_MIB}), nodes {} MiB (bound {NODE_RSS_MIB}), clients {} MiB (bound {CLIENT_RSS_MIB})",
        peak("manager"),
        peak("node"),
        peak("client")
    );
    let violations = oracle.violations();
    println!("chaos: verdicts (seed {seed}):");
    let mut all_held = true;
    for promise in Promise::ALL {
        let broken: Vec<_> = violations.iter().filter(|v| v.promise == promise).collect();
        let notes = oracle.notes(promise).join("; ");
        if let Some(why) = oracle.skipped(promise) {
            println!("chaos:   SKIP  {}: {why}", promise.title());
        } else if broken.is_empty() {
            println!(
                "chaos:   PASS  {}{}",
                promise.title(),
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({notes})")
                }
            );
        } else {
            all_held = false;
            println!(
                "chaos:   FAIL  {} ({} violations){}",
                promise.title(),
                broken.len(),
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" ({notes})")
                }
            );
        }
    }
    // The same promise broken for the same items is shown once, with how often and when.
    type Key = (Promise, Vec<String>, Vec<String>);
    let mut groups: BTreeMap<Key, Vec<&oracle::Violation>> = BTreeMap::new();
    for violation in &violations {
        if oracle.skipped(violation.promise).is_some() {
            continue;
        }
        let key = (
            violation.promise,
            violation.ids.clone(),
            violation.names.clone(),
        );
        groups.entry(key).or_default().push(violation);
    }
    let mut groups: Vec<Vec<&oracle::Violation>> = groups.into_values().collect();
    groups.sort_by_key(|group| group[0].at);
    for group in groups {
        let first = group[0];
        let last = group[group.len() - 1];
        println!(
            "\nchaos: VIOLATED ({}) at {:.3}s, seed {seed}: {}",
            first.promise.title(),
            first.at.as_secs_f64(),
            first.detail
        );
        if group.len() > 1 {
            println!(
                "chaos:   seen {} times, the last at {:.3}s: {}",
                group.len(),
                last.at.as_secs_f64(),
                last.detail
            );
        }
        let history = oracle.explain(first);
        if !history.is_empty() {
            println!("chaos:   its history:");
            for record in history.iter().take(80) {
                println!("chaos:     {record}");
            }
        }
    }
    all_held
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }

    #[test]
    fn the_defaults_are_two_minutes_of_release_binaries_with_every_check() {
        let cli = Cli::try_parse_from(["chaos"]).unwrap();
        assert_eq!(cli.options.minutes, 2.0);
        assert_eq!(cli.options.profile, "release");
        assert!(cli.options.seed.is_none() && !cli.options.no_copies_check);
        let cli = Cli::try_parse_from([
            "chaos",
            "--minutes",
            "0.5",
            "--seed",
            "7",
            "--profile",
            "dev",
            "--no-copies-check",
        ])
        .unwrap();
        assert_eq!(cli.options.seed, Some(7));
        assert!(cli.options.no_copies_check);
        assert!(Cli::try_parse_from(["chaos", "--profile", "bench"]).is_err());
    }

    #[test]
    fn quiet_means_every_peer_up_and_every_link_clean() {
        let live = Live::new(2, 3);
        assert!(live.snapshot().quiet_for().is_some());
        live.change(|state| state.links_faulted[2] = true);
        assert!(live.snapshot().quiet_for().is_none());
        live.change(|state| state.links_faulted[2] = false);
        live.change(|state| state.nodes_up[0] = false);
        assert!(live.snapshot().quiet_for().is_none());
        assert_eq!(live.snapshot().changes, 3);
        live.set_disk_full(true);
        assert_eq!(
            live.snapshot().changes,
            3,
            "a full disk does not stop reads"
        );
    }
}
