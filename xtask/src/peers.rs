//! The peers (a manager, nodes) that a command of xtask starts as processes: each waited
//! for until ready, stopped on request or at the end, and on Ctrl-C too, when the handler
//! also removes the command's temporary folder, since the process then exits at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use domain_e2e::{Process, Ready};

/// How long a peer may take to print its `ready` line.
const READY: Duration = Duration::from_secs(60);

/// How long a peer may take to stop after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(10);

/// The running peers of one command; `label` starts every line it prints.
pub struct Peers {
    running: Arc<Mutex<Vec<Process>>>,
    dir: PathBuf,
    label: &'static str,
}

impl Peers {
    /// Peers whose logs go to `dir`, which the Ctrl-C handler removes.
    ///
    /// # Errors
    /// When the Ctrl-C handler cannot be installed (one per process).
    pub fn new(dir: PathBuf, label: &'static str) -> anyhow::Result<Self> {
        let running: Arc<Mutex<Vec<Process>>> = Arc::default();
        let on_signal = Arc::clone(&running);
        let dir_on_signal = dir.clone();
        ctrlc::set_handler(move || {
            eprintln!("{label}: interrupted, stopping the manager and the nodes");
            let mut peers = on_signal.lock().unwrap_or_else(PoisonError::into_inner);
            for peer in peers.iter_mut().rev() {
                peer.terminate(GRACE);
            }
            peers.clear();
            let _ = std::fs::remove_dir_all(&dir_on_signal);
            std::process::exit(130);
        })
        .context("installing the Ctrl-C handler")?;
        Ok(Self {
            running,
            dir,
            label,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Process>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `program` as the peer `name` (its log in `<dir>/<name>.log`) and waits for
    /// its `ready` line; answers with what it printed and its process id.
    ///
    /// # Errors
    /// When it cannot start or is not ready in time.
    pub fn start(&self, name: &str, program: &Path, args: &[&str]) -> anyhow::Result<(Ready, u32)> {
        let log = self.dir.join(format!("{name}.log"));
        let mut peer = Process::spawn(name, program, args, &log)?;
        let ready = peer.wait_ready(READY)?;
        let pid = peer.id();
        self.lock().push(peer);
        Ok((ready, pid))
    }

    /// Stops the peer `name`, saying so when it did not stop cleanly.
    pub fn stop(&self, name: &str) {
        let peer = {
            let mut running = self.lock();
            let index = running.iter().position(|peer| peer.name() == name);
            index.map(|index| running.remove(index))
        };
        if let Some(peer) = peer {
            self.stop_peer(peer);
        }
    }

    /// Stops every peer, the last started first; answers with the names of those that
    /// stopped cleanly, in the order they started.
    pub fn stop_all(&self) -> Vec<String> {
        let stopping: Vec<Process> = self.lock().drain(..).rev().collect();
        let mut stopped: Vec<String> = stopping
            .into_iter()
            .filter_map(|peer| self.stop_peer(peer))
            .collect();
        stopped.reverse();
        stopped
    }

    /// Stops one peer; answers with its name when it stopped cleanly.
    fn stop_peer(&self, mut peer: Process) -> Option<String> {
        let label = self.label;
        match peer.terminate(GRACE) {
            Some(status) if status.success() => return Some(peer.name().to_owned()),
            Some(status) => println!("{label}: {} stopped with {status}", peer.name()),
            None => println!(
                "{label}: {} did not stop within {GRACE:?}; killed",
                peer.name()
            ),
        }
        None
    }
}
