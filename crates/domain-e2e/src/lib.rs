//! Harness of the end-to-end tests: run the cluster's real binaries on loopback.
//!
//! - [`binary`]: the path of a workspace binary built beside the running executable
//!   (`target/<profile>/`), found from [`std::env::current_exe`], since
//!   `CARGO_BIN_EXE_<name>` exists only inside the binary's own package.
//! - [`build_test_binaries`]: what `cargo test --workspace` builds, binaries included.
//!   Cargo builds the binaries of every workspace member under `cargo test --workspace`,
//!   but not those of a dev-dependency under `cargo test -p domain-e2e`; building them
//!   from the test (a no-op when they are fresh) makes both work and never runs a stale
//!   binary. [`build_binaries`] builds just some binaries, for programs such as the demo;
//!   [`build_release_binaries`] and [`release_binary`] do the same in the release profile,
//!   for benches run from a program built in another (`cargo xtask bench e2e`).
//! - [`Process`]: a spawned peer whose standard output is read line by line;
//!   [`wait_ready`](Process::wait_ready) waits, with a timeout, for its
//!   `ready <multiaddr>` line (no sleeps); standard error goes to a log file; the process
//!   is killed when dropped.
//! - [`run`]: runs a command to its end with a timeout, capturing its output.
//! - [`free_port`]: a loopback TCP port nobody listens on, to restart a peer on the same
//!   address.
//!
//! ```
//! use std::time::Duration;
//! use domain_e2e::Process;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let script = "echo 'listening /ip4/127.0.0.1/tcp/1'; echo 'ready /ip4/127.0.0.1/tcp/1'; exec sleep 60";
//! let mut peer = Process::spawn("peer", "sh".as_ref(), ["-c", script], &dir.path().join("peer.log"))?;
//! let ready = peer.wait_ready(Duration::from_secs(10))?;
//! assert_eq!(ready.addr, "/ip4/127.0.0.1/tcp/1");
//! assert_eq!(ready.listening, ["/ip4/127.0.0.1/tcp/1"]);
//! peer.kill();
//! # Ok(())
//! # }
//! ```

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Lines of a child's standard output held for the test before its reader waits.
const LINE_BUFFER: usize = 1024;

/// Why the harness could not do what was asked.
#[derive(Debug)]
pub enum HarnessError {
    /// The process could not be started or waited on.
    Io {
        /// The process.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// The process printed no `ready` line in time.
    NotReady {
        /// The process.
        name: String,
        /// How long the harness waited.
        waited: Duration,
        /// The end of its log.
        log: String,
    },
    /// The process ended before it was ready.
    Exited {
        /// The process.
        name: String,
        /// The end of its log.
        log: String,
    },
    /// A command did not finish in time (it was killed).
    TimedOut {
        /// The command.
        name: String,
        /// Its limit.
        limit: Duration,
    },
}

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io { name, .. } => write!(f, "cannot run {name}"),
            Self::NotReady { name, waited, log } => {
                write!(
                    f,
                    "{name} was not ready within {waited:?}; its log ends with:\n{log}"
                )
            }
            Self::Exited { name, log } => {
                write!(
                    f,
                    "{name} exited before it was ready; its log ends with:\n{log}"
                )
            }
            Self::TimedOut { name, limit } => write!(f, "{name} did not finish within {limit:?}"),
        }
    }
}

impl std::error::Error for HarnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The path of the workspace binary `name`, built in the same `target/<profile>` folder as
/// the running executable (a test in `deps/`, or a binary such as xtask).
///
/// # Errors
/// When the running executable's path is unknown.
pub fn binary(name: &str) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no folder", exe.display())))?;
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    Ok(dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

/// The path of the workspace binary `name` built in the release profile, in the target
/// folder of the running executable (`target/release/`), whatever profile that one has.
///
/// # Errors
/// When the running executable's path is unknown.
pub fn release_binary(name: &str) -> io::Result<PathBuf> {
    Ok(target_dir()?
        .join("release")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

/// Builds the binaries of `packages` (`cargo build --bins`), in the profile and target
/// folder of the running executable, so that [`binary`] finds them up to date. For a
/// program such as `cargo xtask demo`; tests use [`build_test_binaries`].
///
/// # Errors
/// When cargo cannot run or the build fails.
pub fn build_binaries(packages: &[&str]) -> io::Result<()> {
    let mut command = cargo_in_this_target(&["build", "--quiet", "--bins"])?;
    for package in packages {
        command.args(["--package", package]);
    }
    run_build(command, &format!("cargo build of {packages:?}"))
}

/// Builds the binaries of `packages` (`cargo build --release --bins`) in the target folder
/// of the running executable, so that [`release_binary`] finds them up to date. For a
/// program built in another profile that measures the binaries (`cargo xtask bench e2e`).
///
/// # Errors
/// When cargo cannot run or the build fails.
pub fn build_release_binaries(packages: &[&str]) -> io::Result<()> {
    let mut command = cargo_in_target(
        &["build", "--quiet", "--release", "--bins"],
        &target_dir()?,
        None,
    );
    for package in packages {
        command.args(["--package", package]);
    }
    run_build(command, &format!("cargo build --release of {packages:?}"))
}

/// Builds what `cargo test --workspace` builds (`cargo test --workspace --no-run`),
/// binaries included, in the target folder of the running test.
///
/// Under `cargo test --workspace` this finds everything fresh and does nothing. Building
/// only the binaries instead (`cargo build --bins`) would resolve features without the
/// dev-dependencies, rebuild the binaries in another variant, and make every later
/// `cargo test --workspace` rebuild them again. Under `cargo test -p domain-e2e`, which
/// does not build a dev-dependency's binaries, it builds them, so no test runs a stale one.
///
/// # Errors
/// When cargo cannot run or the build fails.
pub fn build_test_binaries() -> io::Result<()> {
    let command = cargo_in_this_target(&["test", "--quiet", "--workspace", "--no-run"])?;
    run_build(command, "cargo test --workspace --no-run")
}

/// The profile folder of the running executable (`target/<profile>`).
fn profile_dir() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut profile_dir = exe
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no folder", exe.display())))?;
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().unwrap_or(profile_dir);
    }
    Ok(profile_dir.to_path_buf())
}

/// The target folder of the running executable (`target/`).
fn target_dir() -> io::Result<PathBuf> {
    let profile_dir = profile_dir()?;
    profile_dir
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| io::Error::other(format!("{} has no folder", profile_dir.display())))
}

/// `cargo <args>` aimed at the profile and target folder of the running executable.
fn cargo_in_this_target(args: &[&str]) -> io::Result<Command> {
    let profile_dir = profile_dir()?;
    Ok(cargo_in_target(args, &target_dir()?, Some(&profile_dir)))
}

/// `cargo <args>` aimed at `target_dir`, and at the profile of `profile_dir` when given.
fn cargo_in_target(args: &[&str], target_dir: &Path, profile_dir: Option<&Path>) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(args).arg("--target-dir").arg(target_dir);
    // Cargo gives a running test its package's variables; some build scripts (ring's)
    // track `CARGO_MANIFEST_DIR`, so passing them on would make the inner build dirty
    // and the next outer one too.
    for (name, _) in std::env::vars_os() {
        let is_package_var = name.to_str().is_some_and(|name| {
            [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
                || name == "CARGO_TARGET_TMPDIR"
        });
        if is_package_var {
            command.env_remove(name);
        }
    }
    // `debug/` holds the dev and test profiles, each command's own default; any other
    // folder is named after its profile.
    match profile_dir
        .and_then(Path::file_name)
        .and_then(OsStr::to_str)
    {
        Some("debug") | None => {}
        Some(other) => {
            command.args(["--profile", other]);
        }
    }
    command
}

fn run_build(mut command: Command, what: &str) -> io::Result<()> {
    let status = command.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{what} failed ({status})")))
    }
}

/// A loopback TCP port free at the time of the call.
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// What a peer printed once ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The address of its `ready <addr>` line.
    pub addr: String,
    /// The addresses of its `listening <addr>` lines before it.
    pub listening: Vec<String>,
    /// The address of its `metrics <addr>` line, when it serves metrics.
    pub metrics: Option<String>,
}

/// A running peer process, killed when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    lines: Receiver<String>,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args`, its standard error appended to `log`.
    ///
    /// # Errors
    /// [`HarnessError::Io`] when the log or the process cannot be created.
    pub fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        log: &Path,
    ) -> Result<Self, HarnessError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(program);
        command.args(args);
        Self::spawn_command(name, command, log)
    }

    /// Starts `command` (its program, arguments and environment as the caller set them),
    /// its standard error appended to `log`.
    ///
    /// # Errors
    /// [`HarnessError::Io`] when the log or the process cannot be created.
    pub fn spawn_command(
        name: &str,
        mut command: Command,
        log: &Path,
    ) -> Result<Self, HarnessError> {
        let io_err = |source| HarnessError::Io {
            name: name.to_owned(),
            source,
        };
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err)?;
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| HarnessError::Io {
                name: name.to_owned(),
                source: io::Error::new(e.kind(), format!("starting {program}: {e}")),
            })?;
        let lines = match child.stdout.take() {
            Some(stdout) => read_lines(stdout),
            None => mpsc::sync_channel(0).1,
        };
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            log: log.to_path_buf(),
        })
    }

    /// Waits for the `ready <addr>` line, collecting the `listening <addr>` lines before it.
    ///
    /// # Errors
    /// [`HarnessError::NotReady`] after `timeout`; [`HarnessError::Exited`] when the process
    /// ends first.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Ready, HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut listening = Vec::new();
        let mut metrics = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("ready ") {
                        return Ok(Ready {
                            addr: addr.trim().to_owned(),
                            listening,
                            metrics,
                        });
                    }
                    if let Some(addr) = line.strip_prefix("metrics ") {
                        metrics = Some(addr.trim().to_owned());
                    }
                    if let Some(addr) = line.strip_prefix("listening ") {
                        listening.push(addr.trim().to_owned());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(HarnessError::NotReady {
                        name: self.name.clone(),
                        waited: timeout,
                        log: self.log_tail(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Reap it so that its log is complete.
                    let _ = self.child.wait();
                    return Err(HarnessError::Exited {
                        name: self.name.clone(),
                        log: self.log_tail(),
                    });
                }
            }
        }
    }

    /// The next line of standard output within `timeout`, `None` at its end or after the
    /// timeout.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The process's name in messages.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace` for it, then kills it.
    /// Returns its exit status when it stopped by itself.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let signalled = i32::try_from(self.child.id())
            .ok()
            .is_some_and(|pid| kill(Pid::from_raw(pid), Signal::SIGTERM).is_ok());
        if signalled {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                match self.child.try_wait() {
                    Ok(Some(status)) => return Some(status),
                    Ok(None) => thread::sleep(Duration::from_millis(20)),
                    Err(_) => break,
                }
            }
        }
        self.kill();
        None
    }

    /// The last lines of the process's log, for failure messages.
    #[must_use]
    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends each line of `stdout` into a bounded channel, from a thread of its own.
fn read_lines(stdout: ChildStdout) -> Receiver<String> {
    let (sender, receiver) = mpsc::sync_channel(LINE_BUFFER);
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The last `lines` lines of the file at `path` (empty when unreadable).
#[must_use]
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `program` with `args` to its end, killing it after `limit`.
///
/// # Errors
/// [`HarnessError::Io`] when it cannot start; [`HarnessError::TimedOut`].
pub fn run<I, S>(
    name: &str,
    program: &Path,
    args: I,
    limit: Duration,
) -> Result<Output, HarnessError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.args(args);
    run_command(name, command, limit)
}

/// Runs `command` (its program, arguments and environment as the caller set them) to its
/// end, killing it after `limit`.
///
/// # Errors
/// [`HarnessError::Io`] when it cannot start; [`HarnessError::TimedOut`].
pub fn run_command(
    name: &str,
    mut command: Command,
    limit: Duration,
) -> Result<Output, HarnessError> {
    let io_err = |source| HarnessError::Io {
        name: name.to_owned(),
        source,
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err)?;
    let stdout = child.stdout.take().map(read_all);
    let stderr = child.stderr.take().map(read_all);
    let (done, finished) = mpsc::sync_channel(1);
    let pid = child.id();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = done.send(());
        status
    });
    if finished.recv_timeout(limit).is_err() {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = waiter.join();
        return Err(HarnessError::TimedOut {
            name: name.to_owned(),
            limit,
        });
    }
    let status = waiter
        .join()
        .map_err(|_| io_err(io::Error::other("the waiting thread panicked")))?
        .map_err(io_err)?;
    let collect = |reader: Option<thread::JoinHandle<Vec<u8>>>| {
        reader
            .and_then(|r| r.join().ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

fn read_all(mut reader: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        bytes
    })
}
