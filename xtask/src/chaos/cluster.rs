//! The cluster under test as processes: a manager with one domain of replication 2, the
//! nodes, the fault proxies between them, and a small file system of its own for one
//! node's data so that its disk can fill. Kills are SIGKILL; restarts reuse the data
//! folder and the port, as a supervisor would. Everything is killed and unmounted when the
//! cluster is dropped, and on Ctrl-C by the handler [`Cluster::start`] installs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use domain_e2e::{Process, free_port};

use super::proxy::{Link, Mode};
use super::schedule::LinkFault;

/// The domain the workload uses.
pub const DOMAIN: &str = "chaos";

/// How long a peer may take to print its `ready` line: a debug build on a busy 2-core
/// machine, with the manager perhaps just restarted.
const READY: Duration = Duration::from_secs(60);

/// How long a peer may take to stop after SIGTERM at the end before it is killed.
const GRACE: Duration = Duration::from_secs(15);

/// A limit on the operator's one-shot commands (`id`).
const COMMAND: Duration = Duration::from_secs(60);

/// The size of the file system of the node whose disk fills (in memory): room for its
/// share of a few minutes of workload (a node holds 300–550 MiB after two), so that the
/// disk is full only while the schedule says so, yet filled in a second or two.
const DISK_SIZE: &str = "2g";

/// The three binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub manager: PathBuf,
    pub node: PathBuf,
    pub client: PathBuf,
}

/// A running peer and whether its `ready` line was seen since it last started.
#[derive(Debug)]
struct Slot {
    process: Process,
    ready: bool,
}

/// Processes of the run, shared with the Ctrl-C handler.
type Running = Arc<Mutex<BTreeMap<String, Slot>>>;

/// A tmpfs mounted on a node's data folder; unmounted when dropped.
#[derive(Debug)]
pub struct Disk {
    pub dir: PathBuf,
    filler: PathBuf,
}

impl Disk {
    /// Mounts a small tmpfs on `dir` (which must exist and be empty), private to its owner
    /// as the node requires of its data folder.
    fn mount(dir: &Path) -> anyhow::Result<Self> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={DISK_SIZE},mode=0700"))
            .arg("tmpfs")
            .arg(dir)
            .stderr(std::process::Stdio::piped())
            .output()
            .context("cannot run mount")?;
        if !status.status.success() {
            bail!(
                "mount -t tmpfs on {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&status.stderr).trim()
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            filler: dir.join("chaos-filler"),
        })
    }

    /// Writes a filler file until the file system is full (ENOSPC); answers with its size.
    pub fn fill(&self) -> std::io::Result<u64> {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&self.filler)?;
        let block = vec![0xA5u8; 1024 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(error) if error.raw_os_error() == Some(28) => break,
                Err(error) => return Err(error),
            }
        }
        // Fill the last partial block too, byte by byte at the end is not needed: tmpfs
        // counts whole pages, and a write of less than a page then fails the same way.
        let small = [0xA5u8; 4096];
        while let Ok(n) = file.write(&small) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
        Ok(written)
    }

    /// Removes the filler.
    pub fn free(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        unmount(&self.dir);
    }
}

fn unmount(dir: &Path) {
    // Lazy: a node killed a moment ago may still hold a descriptor.
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

/// The cluster of one run.
pub struct Cluster {
    pub bins: Binaries,
    pub dir: PathBuf,
    pub nodes: usize,
    running: Running,
    manager_args: Vec<String>,
    node_args: Vec<Vec<String>>,
    /// The manager's address through the clients' proxy link.
    pub client_manager: String,
    /// One link per node toward the manager, the clients' link toward the manager, then
    /// one link per node toward it (the address it announces).
    links: Vec<Link>,
    /// Runs the proxies; dropped after them.
    _runtime: tokio::runtime::Runtime,
    pub disk: Option<Disk>,
    /// The nodes' peer ids, in order.
    node_ids: Vec<String>,
}

impl Cluster {
    /// Sets up and starts the cluster in `dir`: identities, the manager's settings with
    /// domain `chaos` (replication 2, `clients` allowed, the nodes admitted), the proxies,
    /// the manager, the nodes. `client_ids` are the peer ids the domain allows.
    pub fn start(
        bins: Binaries,
        dir: &Path,
        nodes: usize,
        disk_node: usize,
        client_ids: &[String],
        clients: ClientPids,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let running: Running = Arc::default();
        install_ctrl_c(
            Arc::clone(&running),
            clients,
            dir.join(format!("node{disk_node}")),
        )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("chaos-proxy")
            .build()
            .context("starting the proxies' runtime")?;

        let manager_dir = dir.join("manager");
        let manager_id = one_line(&bins.manager, &["id", "--data-dir", &path(&manager_dir)])?;
        let mut disk = None;
        let mut node_ids = Vec::new();
        for index in 0..nodes {
            let node_dir = dir.join(format!("node{index}"));
            if index == disk_node {
                std::fs::create_dir_all(&node_dir)?;
                match Disk::mount(&node_dir) {
                    Ok(mounted) => disk = Some(mounted),
                    Err(error) => {
                        println!("chaos: disk-full faults skipped: {error:#} (mounting needs root)")
                    }
                }
            }
            node_ids.push(one_line(
                &bins.node,
                &["id", "--data-dir", &path(&node_dir)],
            )?);
        }

        let manager_port = free_port()?;
        let settings = manager_settings(&manager_dir, manager_port, &node_ids, client_ids);
        let settings_file = dir.join("manager.toml");
        std::fs::write(&settings_file, settings)?;
        let manager_args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            path(&settings_file),
        ];

        // Links 0..nodes: node i to the manager; link `nodes`: the clients to the manager;
        // links nodes+1..: everyone (clients, the other nodes) to node i, which announces
        // its link's address instead of the port it listens on.
        let target = SocketAddr::from(([127, 0, 0, 1], manager_port));
        let mut links = (0..=nodes)
            .map(|index| runtime.block_on(Link::start(target, seed ^ index as u64)))
            .collect::<Result<Vec<_>, _>>()
            .context("starting the fault proxies")?;
        let through =
            |link: &Link| format!("/ip4/127.0.0.1/tcp/{}/p2p/{manager_id}", link.addr().port());
        let client_manager = through(&links[nodes]);
        let mut node_args = Vec::new();
        let mut data_links = Vec::new();
        for (index, link) in links.iter().take(nodes).enumerate() {
            let port = free_port()?;
            let data = runtime
                .block_on(Link::start(
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    seed ^ (nodes + 1 + index) as u64,
                ))
                .context("starting the fault proxies")?;
            node_args.push(vec![
                "run".to_owned(),
                "--manager".to_owned(),
                through(link),
                "--data-dir".to_owned(),
                path(&dir.join(format!("node{index}"))),
                "--name".to_owned(),
                format!("node{index}"),
                "--listen".to_owned(),
                format!("/ip4/127.0.0.1/tcp/{port}"),
                "--announce".to_owned(),
                format!("/ip4/127.0.0.1/tcp/{}", data.addr().port()),
                "--join-interval".to_owned(),
                "1s".to_owned(),
            ]);
            data_links.push(data);
        }
        links.extend(data_links);
        let cluster = Self {
            bins,
            dir: dir.to_path_buf(),
            nodes,
            running,
            manager_args,
            node_args,
            client_manager,
            links,
            _runtime: runtime,
            disk,
            node_ids,
        };
        cluster.start_manager(true)?;
        for index in 0..nodes {
            cluster.start_node(index, true)?;
        }
        Ok(cluster)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the manager and waits for its `ready` line when `wait`.
    pub fn start_manager(&self, wait: bool) -> anyhow::Result<()> {
        self.spawn("manager", &self.bins.manager, &self.manager_args, wait)
    }

    /// Starts node `index`; with `wait`, waits until it joined the manager (`ready`).
    pub fn start_node(&self, index: usize, wait: bool) -> anyhow::Result<()> {
        self.spawn(
            &format!("node{index}"),
            &self.bins.node,
            &self.node_args[index],
            wait,
        )
    }

    fn spawn(&self, name: &str, program: &Path, args: &[String], wait: bool) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let mut process = Process::spawn(name, program, args, &log)?;
        let mut ready = false;
        if wait {
            process.wait_ready(READY)?;
            ready = true;
        }
        self.lock().insert(name.to_owned(), Slot { process, ready });
        Ok(())
    }

    /// SIGKILLs the peer `name` and reaps it.
    pub fn kill(&self, name: &str) {
        let slot = self.lock().remove(name);
        if let Some(mut slot) = slot {
            slot.process.kill();
        }
    }

    /// Whether the peer `name` runs.
    pub fn is_running(&self, name: &str) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|slot| alive(slot.process.id()))
    }

    /// Waits for the `ready` line of every peer started without waiting; names those that
    /// never printed it, with the end of their log.
    pub fn wait_all_ready(&self) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        let mut running = self.lock();
        for (name, slot) in running.iter_mut() {
            if slot.ready {
                continue;
            }
            match slot.process.wait_ready(READY) {
                Ok(_) => slot.ready = true,
                Err(error) => failed.push((name.clone(), error.to_string())),
            }
        }
        failed
    }

    /// Each node's name (`node0`…) by its peer id.
    pub fn node_names(&self) -> BTreeMap<String, String> {
        self.node_ids
            .iter()
            .enumerate()
            .map(|(index, id)| (id.clone(), format!("node{index}")))
            .collect()
    }

    /// The process id of each running peer, by name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.lock()
            .iter()
            .map(|(name, slot)| (name.clone(), slot.process.id()))
            .collect()
    }

    /// Applies a fault to proxy link `index`.
    pub fn link_fault(&self, index: usize, fault: LinkFault) {
        if let Some(link) = self.links.get(index) {
            link.apply(fault);
        }
    }

    /// Ends every fault of proxy link `index`.
    pub fn heal_link(&self, index: usize) {
        if let Some(link) = self.links.get(index) {
            link.set(Mode::default());
        }
    }

    /// Ends every fault of every link.
    pub fn heal_all_links(&self) {
        for link in &self.links {
            link.set(Mode::default());
        }
    }

    /// Connections each proxy link accepted.
    pub fn link_connections(&self) -> Vec<u64> {
        self.links.iter().map(Link::connections).collect()
    }

    /// Stops every peer with SIGTERM (the nodes first), so that their stores are closed
    /// cleanly before they are read offline; names those that did not stop cleanly.
    pub fn stop_all(&self) -> Vec<String> {
        let mut unclean = Vec::new();
        let mut slots: Vec<(String, Slot)> =
            std::mem::take(&mut *self.lock()).into_iter().collect();
        // Nodes first, the manager last: nodes leaving do not need it, but it is polite.
        slots.sort_by_key(|(name, _)| name == "manager");
        for (name, mut slot) in slots {
            match slot.process.terminate(GRACE) {
                Some(status) if status.success() => {}
                Some(status) => unclean.push(format!("{name} stopped with {status}")),
                None => unclean.push(format!("{name} did not stop within {GRACE:?}; killed")),
            }
        }
        unclean
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The peers die before the fields drop: the disk's mount point is then free when
        // `Disk` unmounts it, and the proxies stop after their peers.
        std::mem::take(&mut *self.lock());
    }
}

/// Whether process `pid` runs (not exited, not a zombie waiting to be reaped).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// The manager's settings file: loopback TCP only on a fixed port (restarts keep the
/// address the proxies forward to), quick liveness, and the domain with its copies.
fn manager_settings(dir: &Path, port: u16, nodes: &[String], clients: &[String]) -> String {
    let quoted = |ids: &[String]| {
        ids.iter()
            .map(|id| format!("\"{id}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "data-dir = \"{}\"\n\
         listen = [\"/ip4/127.0.0.1/tcp/{port}\"]\n\
         # A killed node is noticed within seconds, not the default 30 s.\n\
         tick-interval = \"200ms\"\n\
         node-timeout = \"5s\"\n\
         request-timeout = \"10s\"\n\
         # A task of a killed client fails after its timeout and one retry, so the\n\
         # stuck-job check can wait for it.\n\
         max-retries = 1\n\
         # Copies of a node away longer than a schedule's longest outage are made again\n\
         # elsewhere, and every domain is audited within the settling time.\n\
         repair-grace = \"12s\"\n\
         repair-interval = \"15s\"\n\
         nodes = [{}]\n\
         \n\
         [[domain]]\n\
         id = \"{DOMAIN}\"\n\
         allow = [{}]\n\
         replication = 2\n",
        dir.display(),
        quoted(nodes),
        quoted(clients)
    )
}

/// Runs `program args` and answers with its one line of output.
pub fn one_line(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = domain_e2e::run(&program.display().to_string(), program, args, COMMAND)?;
    if !output.status.success() {
        bail!(
            "{} {args:?} failed: {}",
            program.display(),
            output.stderr.trim()
        );
    }
    Ok(output.stdout.trim().to_owned())
}

pub fn path(path: &Path) -> String {
    path.display().to_string()
}

/// The `domain` processes running now, by worker, for the Ctrl-C handler and the RSS
/// sampler.
pub type ClientPids = Arc<Mutex<BTreeMap<String, u32>>>;

/// SIGKILLs process `pid`.
pub fn sigkill(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// On Ctrl-C (or SIGTERM): kill every peer and client, unmount the disk, exit. The run's
/// folder is kept for a look at the logs; its path was printed at the start.
fn install_ctrl_c(running: Running, clients: ClientPids, disk_dir: PathBuf) -> anyhow::Result<()> {
    ctrlc::set_handler(move || {
        eprintln!("chaos: interrupted; killing the cluster");
        for pid in clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            sigkill(*pid);
        }
        std::mem::take(&mut *running.lock().unwrap_or_else(PoisonError::into_inner));
        unmount(&disk_dir);
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")
}
