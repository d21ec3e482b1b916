//! [`LocalEtcd`]: a real etcd process of one member on loopback, in a temporary folder, for
//! tests, benches and trying several managers on one machine.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::client::{Etcd, EtcdConfig};

/// How long a started etcd has to answer.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Why a local etcd could not run.
#[derive(Debug, thiserror::Error)]
pub enum LocalEtcdError {
    /// No etcd binary where it was looked for.
    #[error(
        "no etcd at {path} (Debian: apt-get install etcd-server; .ci/prepare does; or set ETCD)"
    )]
    NotInstalled {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The temporary folder, its log file or a free port could not be had.
    #[error("cannot prepare a local etcd")]
    Prepare(#[source] std::io::Error),
    /// The process could not be started.
    #[error("cannot start {path}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The process ended before answering; the end of its log says why.
    #[error("etcd exited ({status}) before it answered; its log ends:\n{log}")]
    Exited {
        /// How it ended.
        status: std::process::ExitStatus,
        /// The last lines of its log.
        log: String,
    },
    /// The process did not answer in time.
    #[error("etcd did not answer within {READY_WITHIN:?}; its log ends:\n{log}")]
    NotReady {
        /// The last lines of its log.
        log: String,
    },
}

/// An etcd of one member on loopback ports the system picked, with its data in a temporary
/// folder. [`kill`](Self::kill) and [`restart`](Self::restart) stop it hard and bring it
/// back on the same ports and data; dropping it kills it and removes the folder.
#[derive(Debug)]
pub struct LocalEtcd {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl LocalEtcd {
    /// The etcd binary: `$ETCD`, else `/usr/bin/etcd` (Debian's `etcd-server`).
    #[must_use]
    pub fn binary() -> PathBuf {
        std::env::var_os("ETCD").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
    }

    /// Starts etcd and waits until it answers.
    ///
    /// # Errors
    /// A [`LocalEtcdError`] saying what went wrong, with the end of etcd's log.
    pub async fn start() -> Result<Self, LocalEtcdError> {
        let binary = Self::binary();
        if !binary.exists() {
            return Err(LocalEtcdError::NotInstalled { path: binary });
        }
        let dir = tempfile::Builder::new()
            .prefix("etcd-")
            .tempdir()
            .map_err(LocalEtcdError::Prepare)?;
        let mut etcd = Self {
            binary,
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            child: None,
        };
        etcd.run().await?;
        Ok(etcd)
    }

    /// The client URL (`http://127.0.0.1:PORT`).
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A client configuration for this etcd, with the keys of a cluster under `prefix`.
    #[must_use]
    pub fn config(&self, prefix: &str) -> EtcdConfig {
        EtcdConfig {
            prefix: prefix.to_owned(),
            ..EtcdConfig::new(vec![self.endpoint()])
        }
    }

    /// The folder of its data and log.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the process at once (SIGKILL), as a crash would; the data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process if it runs, then starts it again on the same ports and data.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn restart(&mut self) -> Result<(), LocalEtcdError> {
        self.kill();
        self.run().await
    }

    async fn run(&mut self) -> Result<(), LocalEtcdError> {
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(LocalEtcdError::Prepare)?;
        let stderr = log.try_clone().map_err(LocalEtcdError::Prepare)?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.binary)
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|source| LocalEtcdError::Spawn {
                path: self.binary.clone(),
                source,
            })?;
        self.child = Some(child);
        let etcd = Etcd::connect(&EtcdConfig {
            request_timeout: Duration::from_secs(1),
            ..self.config("/")
        })
        .map_err(|e| LocalEtcdError::Prepare(std::io::Error::other(e)))?;
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            if etcd.get(b"/ready").await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(LocalEtcdError::Exited {
                    status,
                    log: log_tail(&log_path),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                self.kill();
                return Err(LocalEtcdError::NotReady {
                    log: log_tail(&log_path),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port free right now. etcd binds it a moment later; another process taking it
/// in between makes the start fail with etcd's own message, not a wrong connection.
fn free_port() -> Result<u16, LocalEtcdError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(LocalEtcdError::Prepare)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
