//! [`LocalPostgres`]: a real, throwaway PostgreSQL server on loopback, in a temporary
//! folder, for tests, benches and trying a node's PostgreSQL catalog on one machine.
//!
//! `initdb` makes a cluster in the folder, with a password for the `postgres` role over
//! TCP (so that the catalog's password path is the one in use) and trust on its own Unix
//! socket in the folder. PostgreSQL refuses to run as root, so when the process is root the
//! server runs as the `postgres` system user (Debian's package makes it) and the folder
//! is handed to that user.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use domain_datastore::{DatastoreError, LocalDatastore, LocalOptions};

use crate::PostgresCatalog;
use crate::config::{ConfigError, PostgresConfig};

/// How long a started server has to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The password of the `postgres` role of every local server: it guards a loopback port
/// of a throwaway cluster.
const PASSWORD: &str = "local-postgres";

/// Why a local PostgreSQL could not run.
#[derive(Debug, thiserror::Error)]
pub enum LocalPostgresError {
    /// No PostgreSQL binaries where they were looked for.
    #[error(
        "no PostgreSQL server binaries in {searched} (Debian: apt-get install postgresql; .ci/prepare does; or set PG_BIN)"
    )]
    NotInstalled {
        /// Where they were looked for.
        searched: String,
    },
    /// Running as root, and no `postgres` user to run the server as.
    #[error("running as root and no `postgres` user in /etc/passwd to run PostgreSQL as")]
    NoUser,
    /// The temporary folder, a file in it or a free port could not be had.
    #[error("cannot prepare a local PostgreSQL")]
    Prepare(#[source] std::io::Error),
    /// A program could not be started.
    #[error("cannot start {path}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// `initdb` failed.
    #[error("initdb failed ({status}):\n{output}")]
    Initdb {
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it printed.
        output: String,
    },
    /// The server ended before accepting connections; the end of its log says why.
    #[error("postgres exited ({status}) before it accepted connections; its log ends:\n{log}")]
    Exited {
        /// How it ended.
        status: std::process::ExitStatus,
        /// The last lines of its log.
        log: String,
    },
    /// The server did not accept connections in time.
    #[error("postgres did not accept connections within {READY_WITHIN:?}; its log ends:\n{log}")]
    NotReady {
        /// The last lines of its log.
        log: String,
    },
    /// The configuration for the server did not build.
    #[error("cannot configure a client of the local PostgreSQL")]
    Config(#[source] ConfigError),
    /// A store on the server did not open.
    #[error("cannot open a store on the local PostgreSQL")]
    Store(#[source] DatastoreError),
}

/// A PostgreSQL server of its own on a loopback port, with its data in a temporary folder.
/// [`crash`](Self::crash) stops it as a crash would (no checkpoint: the next start
/// recovers from the WAL); [`start_again`](Self::start_again) brings it back on the same
/// port and data. Dropping it stops the server and removes the folder.
#[derive(Debug)]
pub struct LocalPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    user: Option<(u32, u32)>,
    /// With TLS: the server's self-signed certificate (PEM), which clients trust.
    certificate: Option<PathBuf>,
    child: Option<Child>,
}

impl LocalPostgres {
    /// The folder of the server binaries: `$PG_BIN`, else the newest
    /// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
    #[must_use]
    pub fn bin_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("PG_BIN") {
            return Some(PathBuf::from(dir));
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("postgres").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    }

    /// Makes a cluster with `initdb`, starts the server and waits until it accepts
    /// connections. Blocks for about a second.
    ///
    /// # Errors
    /// A [`LocalPostgresError`] saying what went wrong, with the server's output.
    pub fn start() -> Result<Self, LocalPostgresError> {
        Self::start_inner(false)
    }

    /// As [`start`](Self::start), with TLS: a self-signed certificate for `127.0.0.1` and
    /// `localhost`, in [`certificate`](Self::certificate).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_with_tls() -> Result<Self, LocalPostgresError> {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> Result<Self, LocalPostgresError> {
        let bin = Self::bin_dir()
            .filter(|bin| bin.join("initdb").exists())
            .ok_or_else(|| LocalPostgresError::NotInstalled {
                searched: std::env::var("PG_BIN")
                    .unwrap_or_else(|_| "/usr/lib/postgresql/*/bin".to_owned()),
            })?;
        let user = if rustix::process::geteuid().is_root() {
            Some(postgres_user().ok_or(LocalPostgresError::NoUser)?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("postgres-")
            .tempdir()
            .map_err(LocalPostgresError::Prepare)?;
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, PASSWORD).map_err(LocalPostgresError::Prepare)?;
        if let Some((uid, gid)) = user {
            for path in [dir.path(), &pwfile] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(LocalPostgresError::Prepare)?;
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(dir.path().join("data"))
            .args(["--username=postgres", "--encoding=UTF8", "--locale=C.UTF-8"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            // The cluster is thrown away with the folder; its own files need no fsync.
            .arg("--no-sync");
        as_user(&mut initdb, user);
        let output = initdb
            .output()
            .map_err(|source| LocalPostgresError::Spawn {
                path: bin.join("initdb"),
                source,
            })?;
        if !output.status.success() {
            return Err(LocalPostgresError::Initdb {
                status: output.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        let certificate = if tls {
            Some(make_certificate(dir.path(), user)?)
        } else {
            None
        };
        let mut server = Self {
            bin,
            dir,
            port: free_port()?,
            user,
            certificate,
            child: None,
        };
        server.start_again()?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: the URL, without the password.
    #[must_use]
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The password of the `postgres` role.
    #[must_use]
    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// A catalog configuration for this server, in `schema`.
    ///
    /// # Errors
    /// [`LocalPostgresError::Config`] for a schema that is not a plain identifier.
    pub fn config(&self, schema: &str) -> Result<PostgresConfig, LocalPostgresError> {
        PostgresConfig::new(&self.url())
            .and_then(|config| config.password(PASSWORD).schema(schema))
            .map_err(LocalPostgresError::Config)
    }

    /// A [`LocalDatastore`] with its blobs in `dir` and its catalog in `schema` of this
    /// server.
    ///
    /// # Errors
    /// [`LocalPostgresError::Config`] for a bad schema, [`LocalPostgresError::Store`] when
    /// the catalog or the store cannot open.
    pub async fn open_store(
        &self,
        dir: &Path,
        schema: &str,
    ) -> Result<LocalDatastore, LocalPostgresError> {
        let config = self.config(schema)?;
        let catalog = tokio::task::spawn_blocking(move || PostgresCatalog::connect(config))
            .await
            .map_err(DatastoreError::from)
            .and_then(|connected| connected)
            .map_err(LocalPostgresError::Store)?;
        LocalDatastore::open_with_catalog(dir, LocalOptions::default(), Arc::new(catalog))
            .await
            .map_err(LocalPostgresError::Store)
    }

    /// The server's certificate (PEM) when it was started with TLS.
    #[must_use]
    pub fn certificate(&self) -> Option<&Path> {
        self.certificate.as_deref()
    }

    /// The server's folder (its data in `data/`, its log in `postgres.log`).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server at once, as a crash would: `SIGQUIT` ("immediate shutdown": no
    /// checkpoint, clients cut off), and waits for it. The data stays.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
            }
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port and data, and waits until it accepts
    /// connections.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_again(&mut self) -> Result<(), LocalPostgresError> {
        self.crash();
        let log_path = self.dir.path().join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(LocalPostgresError::Prepare)?;
        let log_err = log.try_clone().map_err(LocalPostgresError::Prepare)?;
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "max_connections=40"]);
        if let Some(certificate) = &self.certificate {
            command
                .args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", certificate.display()))
                .arg("-c")
                .arg(format!(
                    "ssl_key_file={}",
                    certificate.with_extension("key").display()
                ));
        }
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        as_user(&mut command, self.user);
        let mut child = command
            .spawn()
            .map_err(|source| LocalPostgresError::Spawn {
                path: self.bin.join("postgres"),
                source,
            })?;
        let deadline = Instant::now() + READY_WITHIN;
        let mut config = postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .password(PASSWORD)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LocalPostgresError::Exited {
                    status,
                    log: tail(&log_path),
                });
            }
            if config.connect(postgres::NoTls).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LocalPostgresError::NotReady {
                    log: tail(&log_path),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Writes a self-signed certificate for `127.0.0.1` and `localhost` to `dir/server.crt`
/// and its key to `dir/server.key` (mode 0600, the server's user's, as PostgreSQL wants).
fn make_certificate(dir: &Path, user: Option<(u32, u32)>) -> Result<PathBuf, LocalPostgresError> {
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| LocalPostgresError::Prepare(std::io::Error::other(e)))?;
    let certificate = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&certificate, made.cert.pem()).map_err(LocalPostgresError::Prepare)?;
    std::fs::write(&key, made.key_pair.serialize_pem()).map_err(LocalPostgresError::Prepare)?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(LocalPostgresError::Prepare)?;
    if let Some((uid, gid)) = user {
        for path in [&certificate, &key] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(LocalPostgresError::Prepare)?;
        }
    }
    Ok(certificate)
}

/// Runs `command` as `user` (uid, gid) when given.
fn as_user(command: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        std::os::unix::process::CommandExt::uid(command, uid);
        std::os::unix::process::CommandExt::gid(command, gid);
        command.env("HOME", "/tmp");
    }
}

/// The uid and gid of the `postgres` user, from `/etc/passwd`.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == "postgres").then_some(())?;
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

fn free_port() -> Result<u16, LocalPostgresError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(LocalPostgresError::Prepare)
}

/// The last lines of the server's log.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
