//! `cargo xtask bench failover`: how long the cluster is without a manager when its leader
//! dies, and what sharing the state in etcd costs a submit.
//!
//! A real etcd (Debian's `etcd-server`, [`LocalEtcd`]) and three `domain-manager run
//! --etcd` processes (release build) on loopback, each with its identity and port chosen
//! here, so that the bench's client knows all three. The client submits jobs of one task
//! (none is ever assigned: there is no node) to the managers in turn until one accepts;
//! the one that accepts leads. Then, `--kills` times: the leader is killed (SIGKILL), and
//! the client submits again, manager after manager, until a job is accepted; the time from
//! the kill to that acceptance is one failover, and every refused or failed attempt on the
//! way (a standby does not serve `/jobs/v1`, the dead leader does not answer) is counted.
//! The killed manager is started again, as a standby, before the next kill. At the end,
//! every job a manager accepted must be in etcd's state: an acknowledged job that a
//! failover lost would be missing there.
//!
//! Then the submit throughput: `--jobs` jobs of one task, `--concurrency` at a time, to
//! the leader on etcd, and the same to one manager on its embedded redb store, in the same
//! run: the ratio is what etcd costs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use domain_cluster::config::{ClusterConfig, Role};
use domain_cluster::identity::Identity;
use domain_cluster::{Cluster, ClusterHandle, Multiaddr, PeerId};
use domain_e2e::{Process, build_release_binaries, free_port, release_binary};
use domain_etcd::LocalEtcd;
use domain_proto::task::{CapabilityFilters, JobRequest, ResourceRecruitment, TaskRequest};

/// Target: the median failover at most this many leases…
const TARGET_LEASES: f64 = 2.0;
/// …and at most this long.
const TARGET_FAILOVER: Duration = Duration::from_secs(5);
/// Target: submit throughput on etcd at least this fraction of redb's.
const TARGET_THROUGHPUT_RATIO: f64 = 0.3;
/// How long the client tries before a failover counts as failed.
const GIVE_UP: Duration = Duration::from_secs(60);
/// The limit on each request of the client: a dead leader must not hold it long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Managers on the etcd.
const MANAGERS: usize = 3;

/// What `cargo xtask bench failover` measures.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Times the leader is killed.
    #[arg(long, value_name = "N", default_value_t = 20)]
    kills: u32,
    /// The managers' `--leader-lease` (whole seconds).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = domain_settings::parse_duration)]
    lease: Duration,
    /// Jobs submitted per store in the throughput part.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    jobs: u32,
    /// Jobs submitted at once in the throughput part.
    #[arg(long, value_name = "N", default_value_t = 8)]
    concurrency: u32,
}

/// One `domain-manager run` of the bench, which can be killed and started again.
struct Manager {
    name: String,
    dir: std::path::PathBuf,
    peer: PeerId,
    addr: Multiaddr,
    args: Vec<String>,
    process: Option<Process>,
}

impl Manager {
    fn new(work: &Path, name: &str, etcd: Option<&str>, lease: Duration) -> anyhow::Result<Self> {
        let dir = work.join(name);
        // A manager refuses a data folder that others may read.
        domain_auth::create_private_dir(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let peer = Identity::load_or_create(dir.join("identity.key"))
            .context("creating a manager identity")?
            .peer_id();
        let port = free_port().context("finding a free port")?;
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        let addr: Multiaddr = format!("{listen}/p2p/{peer}").parse()?;
        let mut args = vec![
            "run".to_owned(),
            "--data-dir".to_owned(),
            dir.display().to_string(),
            "--listen".to_owned(),
            listen,
        ];
        if let Some(etcd) = etcd {
            args.extend([
                "--etcd".to_owned(),
                etcd.to_owned(),
                "--leader-lease".to_owned(),
                humantime::format_duration(lease).to_string(),
            ]);
        }
        Ok(Self {
            name: name.to_owned(),
            dir,
            peer,
            addr,
            args,
            process: None,
        })
    }

    fn start(&mut self, program: &Path) -> anyhow::Result<()> {
        let log = self.dir.with_extension("log");
        self.process = Some(Process::spawn(&self.name, program, &self.args, &log)?);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

/// Runs the bench and prints its report.
///
/// # Errors
/// When a process, etcd or the client cannot start, or a failover never ends.
pub fn run(options: &Options) -> anyhow::Result<()> {
    ensure!(
        options.lease.subsec_nanos() == 0 && !options.lease.is_zero(),
        "--lease must be whole seconds"
    );
    say("building domain-manager (release)");
    build_release_binaries(&["domain-manager"]).context("building domain-manager")?;
    let program = release_binary("domain-manager").context("locating domain-manager")?;
    let work = tempfile::Builder::new()
        .prefix("bench-failover-")
        .tempdir()
        .context("creating the bench's folder")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(measure(options, &program, work.path()))
}

async fn measure(options: &Options, program: &Path, work: &Path) -> anyhow::Result<()> {
    let etcd = LocalEtcd::start().await.context("starting etcd")?;
    let mut managers = (0..MANAGERS)
        .map(|i| {
            Manager::new(
                work,
                &format!("manager-{i}"),
                Some(&etcd.endpoint()),
                options.lease,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for manager in &mut managers {
        manager.start(program)?;
    }
    let client = client()?;
    let mut jobs = 0_u64;
    let mut failed = 0_u64;
    let mut accepted = Vec::new();
    let (mut leader, _) =
        submit_to_any(&client, &managers, &mut jobs, &mut failed, &mut accepted).await?;
    say(&format!(
        "{MANAGERS} managers on etcd {}, lease {}; {} leads",
        etcd.endpoint(),
        humantime::format_duration(options.lease),
        managers[leader].name
    ));
    failed = 0;
    let mut failovers = Vec::new();
    for kill in 1..=options.kills {
        managers[leader].kill();
        let killed = Instant::now();
        let (next, _) =
            submit_to_any(&client, &managers, &mut jobs, &mut failed, &mut accepted).await?;
        let took = killed.elapsed();
        failovers.push(took);
        say(&format!(
            "kill {kill}: {} killed, {} accepted a job {} ms later",
            managers[leader].name,
            managers[next].name,
            took.as_millis()
        ));
        managers[leader].start(program)?;
        leader = next;
    }

    let lost = lost_jobs(&etcd, &accepted).await?;
    let on_etcd = throughput(&client, &managers[leader], options, &mut jobs).await?;
    for manager in &mut managers {
        manager.kill();
    }
    let mut alone = Manager::new(work, "manager-redb", None, options.lease)?;
    alone.start(program)?;
    // Its first accepted job says it is up.
    submit_to_any(
        &client,
        std::slice::from_ref(&alone),
        &mut jobs,
        &mut 0,
        &mut Vec::new(),
    )
    .await?;
    let on_redb = throughput(&client, &alone, options, &mut jobs).await?;
    alone.kill();
    drop(etcd);

    report(
        options,
        &failovers,
        failed,
        accepted.len(),
        lost,
        on_etcd,
        on_redb,
    );
    ensure!(
        lost == 0,
        "{lost} acknowledged jobs are missing from the state"
    );
    Ok(())
}

/// How many of the jobs named in `accepted` are missing from the managers' state in etcd.
async fn lost_jobs(etcd: &LocalEtcd, accepted: &[String]) -> anyhow::Result<usize> {
    use prost::Message as _;
    let client = domain_etcd::Etcd::connect(&etcd.config(domain_etcd::EtcdConfig::DEFAULT_PREFIX))?;
    let (records, _) = client.scan(&client.key(b"state/jobs/")).await?;
    let mut present = std::collections::HashSet::new();
    for record in records {
        let job = domain_scheduler::JobRecord::decode(record.value.as_slice())
            .context("a job record in etcd does not decode")?;
        present.insert(job.request.name);
    }
    Ok(accepted
        .iter()
        .filter(|name| !present.contains(*name))
        .count())
}

fn client() -> anyhow::Result<ClusterHandle> {
    let mut config = ClusterConfig::new(Identity::generate(), Role::Client);
    config.request_timeout = REQUEST_TIMEOUT;
    let (handle, _task) = Cluster::start(config).context("starting the bench's client")?;
    Ok(handle)
}

/// A job of one store task that waits for a node (there is none), unique by `nonce`.
fn job(client: &ClusterHandle, nonce: u64) -> JobRequest {
    JobRequest {
        name: format!("bench-{nonce}"),
        tasks: vec![TaskRequest {
            name: "store".to_owned(),
            capability_filters: CapabilityFilters {
                endpoint: domain_proto::protocols::STORE_V1.to_owned(),
                ..CapabilityFilters::default()
            },
            timeout: "10m".to_owned(),
            resource_recruitment: ResourceRecruitment::default(),
            sender: client.local_peer_id().to_string(),
            ..TaskRequest::default()
        }],
        nonce: nonce.to_string(),
        domain_id: "bench".to_owned(),
    }
}

/// Submits a job to each manager in turn, round after round, until one accepts it;
/// answers that manager's index. Each attempt that fails counts in `failed`.
async fn submit_to_any(
    client: &ClusterHandle,
    managers: &[Manager],
    jobs: &mut u64,
    failed: &mut u64,
    accepted: &mut Vec<String>,
) -> anyhow::Result<(usize, Duration)> {
    let started = Instant::now();
    let mut last_error = None;
    while started.elapsed() < GIVE_UP {
        for (i, manager) in managers.iter().enumerate() {
            if manager.process.is_none() {
                continue;
            }
            *jobs += 1;
            let request = job(client, *jobs);
            let name = request.name.clone();
            let submitted = async {
                client.dial(manager.addr.clone()).await?;
                client.submit_job(manager.peer, request).await
            };
            match submitted.await {
                Ok(_) => {
                    accepted.push(name);
                    return Ok((i, started.elapsed()));
                }
                Err(error) => {
                    *failed += 1;
                    last_error = Some(error);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs: Vec<String> = managers
        .iter()
        .filter_map(|m| m.process.as_ref())
        .map(|p| format!("{}:\n{}", p.name(), p.log_tail()))
        .collect();
    match last_error {
        Some(error) => Err(anyhow::Error::new(error).context(format!(
            "no manager accepted a job within {GIVE_UP:?}; their logs end:\n{}",
            logs.join("\n")
        ))),
        None => bail!("no manager to submit to"),
    }
}

/// Jobs per second submitted to `manager`, `options.concurrency` at a time.
async fn throughput(
    client: &ClusterHandle,
    manager: &Manager,
    options: &Options,
    jobs: &mut u64,
) -> anyhow::Result<f64> {
    let first = *jobs;
    *jobs += u64::from(options.jobs);
    let started = Instant::now();
    let mut submitters = tokio::task::JoinSet::new();
    for lane in 0..u64::from(options.concurrency) {
        let (client, peer) = (client.clone(), manager.peer);
        let count = u64::from(options.jobs);
        let concurrency = u64::from(options.concurrency);
        submitters.spawn(async move {
            let mut nonce = first + lane;
            while nonce < first + count {
                client
                    .submit_job(peer, job(&client, nonce))
                    .await
                    .with_context(|| format!("submitting job {nonce}"))?;
                nonce += concurrency;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = submitters.join_next().await {
        done.context("a submitter panicked")??;
    }
    Ok(f64::from(options.jobs) / started.elapsed().as_secs_f64())
}

fn report(
    options: &Options,
    failovers: &[Duration],
    failed: u64,
    accepted: usize,
    lost: usize,
    on_etcd: f64,
    on_redb: f64,
) {
    let mut millis: Vec<u128> = failovers.iter().map(Duration::as_millis).collect();
    millis.sort_unstable();
    let at = |q: f64| {
        let last = millis.len().saturating_sub(1);
        // Nearest rank: small samples, no interpolation.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        millis
            .get(((last as f64) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let median = Duration::from_millis(u64::try_from(at(0.5)).unwrap_or(u64::MAX));
    let limit = options.lease.mul_f64(TARGET_LEASES).min(TARGET_FAILOVER);
    say(&format!(
        "failover, kill to next accepted job, {} kills: min {} ms, median {} ms, p90 {} ms, max {} ms \
         (target: median <= {} ms = min({TARGET_LEASES} leases, {} s): {})",
        millis.len(),
        at(0.0),
        at(0.5),
        at(0.9),
        at(1.0),
        limit.as_millis(),
        TARGET_FAILOVER.as_secs(),
        verdict(median <= limit)
    ));
    say(&format!(
        "client attempts that failed during the failovers: {failed} (standbys asked, the dead leader dialled); \
         acknowledged jobs {accepted}, missing from the state after the kills: {lost} (target 0: {})",
        verdict(lost == 0)
    ));
    let ratio = on_etcd / on_redb;
    say(&format!(
        "submit throughput, jobs of one task, {} at a time: etcd {on_etcd:.0} jobs/s, redb {on_redb:.0} jobs/s, \
         ratio {ratio:.2} (target >= {TARGET_THROUGHPUT_RATIO}: {})",
        options.concurrency,
        verdict(ratio >= TARGET_THROUGHPUT_RATIO)
    ));
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn say(line: &str) {
    println!("bench failover: {line}");
}
