//! Project automation, run as `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! - `cargo xtask test`: the whole test suite, with what it needs installed first
//!   (`.ci/prepare`: Chromium and the browser page's npm packages).
//! - `cargo xtask ci`: what CI runs (`.ci/run`): formatting, lints, docs, the fuzz targets'
//!   build, the test suite.
//! - `cargo xtask bench [FILTER]...`: the Merkle benches, printed as ratios to BLAKE3's limits.
//! - `cargo xtask bench e2e`: 1 GiB uploads to a node and downloads from it, over TCP and
//!   over QUIC, against raw TCP, a raw libp2p stream and a file write + fsync of the same
//!   bytes; the peak RSS of node and client; the latency of `domain ls` and of a 1-item
//!   download through the manager on 1 and 4 nodes; an upload through the manager while
//!   16 fresh identities flood it and the node (`--only upload|download|latency|flood`).
//! - `cargo xtask bench failover`: three managers on etcd, the leader killed 20 times: the
//!   time until a job is accepted again, failed attempts, lost jobs; submit throughput on
//!   etcd against redb.
//! - `cargo xtask demo`: a manager, two nodes and the `domain` command on loopback.
//! - `cargo xtask browser`: the web page of `examples/browser` next to a loopback cluster.
//! - `cargo xtask crash --cycles N`: the datastore's SIGKILL crash test, N cycles, on each catalog.
//! - `cargo xtask chaos --minutes N --seed S`: a loopback cluster under concurrent clients
//!   while a seeded schedule kills peers and clients, degrades links and fills a disk;
//!   then every promise is checked.
//! - `cargo xtask fuzz --seconds N`: each cargo-fuzz target for N seconds (nightly).
//! - `cargo xtask dist [--deb] [--check]`: binaries, man pages, completions and Debian
//!   packages in `dist/`.

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

mod bench;
mod bench_e2e;
mod bench_failover;
mod browser;
mod chaos;
mod crash;
mod demo;
mod dist;
mod fuzz;
mod peers;

/// Project automation for the domain cluster workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what the tests need when it is missing (`.ci/prepare`: Debian's Chromium,
    /// the npm packages of the browser page), then run `cargo test --workspace`.
    Test {
        /// `.ci/prepare` has run already: go straight to the tests.
        #[arg(long)]
        prepared: bool,
        /// Arguments for `cargo test` after `--workspace`, e.g. `-- --test-threads 1`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Run what CI runs (`.ci/run`): `cargo fmt --check`, clippy and rustdoc with
    /// warnings denied, a check of the fuzz targets, then `cargo xtask test`.
    Ci,
    /// Run the Merkle benches (release build) and print each as a ratio to BLAKE3 one-shot
    /// and to BLAKE3 over independent 7168-byte leaves; or, as `bench e2e`, the end-to-end
    /// bench (uploads, downloads, control-plane latency).
    #[command(args_conflicts_with_subcommands = true)]
    Bench(BenchArgs),
    /// Start a manager and two nodes on loopback, upload a 64 MiB file and a folder with the
    /// `domain` command, list, download them back, check bytes and roots, print the
    /// throughput, and stop everything (also on Ctrl-C).
    Demo,
    /// Start a manager and a node on loopback and serve the web page of `examples/browser`
    /// (Vite's dev server); print the URL to open in a browser. Ctrl-C stops everything.
    Browser {
        /// The port the page is served on, at 127.0.0.1.
        #[arg(long, default_value_t = 5173)]
        port: u16,
    },
    /// Kill a process that uploads to a local datastore with SIGKILL at random moments,
    /// reopen the store each time and check that every acknowledged item is intact and
    /// nothing partial or orphaned remains.
    Crash {
        /// How many kill-and-reopen cycles to run.
        #[arg(long, default_value_t = 500)]
        cycles: u32,
    },
    /// Run a loopback cluster (a manager, 4 nodes, a domain with replication 2) under
    /// concurrent clients while a fault schedule drawn from the seed kills and restarts
    /// peers, kills clients mid-transfer, slows, stalls and resets links through a fault
    /// proxy and fills a node's disk; check every promise during the run and once settled.
    /// A failure prints the seed and the shortest history that shows it.
    Chaos(chaos::Options),
    /// Build what a release ships into dist/: the binaries, their man pages and shell
    /// completions, and with --deb the Debian packages (systemd units for the manager and
    /// the node, their settings in /etc/domain, a system user each).
    Dist(dist::Options),
    /// Run each cargo-fuzz target (frame decoder, handshake, /store/v1 receiver) for a while;
    /// needs `cargo install cargo-fuzz` and a nightly toolchain.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

#[derive(Debug, Args)]
struct BenchArgs {
    #[command(subcommand)]
    bench: Option<BenchTask>,
    /// Criterion arguments of the Merkle benches, e.g. a filter on bench names.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    criterion_args: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum BenchTask {
    /// Upload a file (1 GiB by default) to a node and download it back, over TCP and over
    /// QUIC (release binaries; stored with fsync by the node, written and fsynced by the
    /// client), and measure in the same run raw loopback TCP, a raw libp2p stream and a file
    /// write + fsync of the same bytes; print each throughput with its CPU time, the upload
    /// as a ratio to the slowest baseline, the download as a ratio to the raw stream, and the
    /// peak RSS of node and client during a larger transfer (3 GiB by default). Then time
    /// `domain ls` and a 1-item download through the manager, as whole processes, on a
    /// loopback cluster of 1 node and of 4 (median, min and max of 20 runs). Then an upload
    /// through the manager, alone and while 16 fresh identities flood the manager and the
    /// node. `--only` runs some of the parts: upload, download, latency, flood.
    E2e(bench_e2e::Options),
    /// Three managers on a real etcd (release binaries): kill the leader 20 times while a
    /// client submits jobs, and print the time from each kill until a job is accepted again
    /// (min, median, p90, max), how many client attempts failed, whether any acknowledged
    /// job is missing afterwards; then the submit throughput on etcd and on redb, in the
    /// same run.
    Failover(bench_failover::Options),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Task::Test {
            prepared,
            cargo_args,
        } => test(prepared, &cargo_args),
        Task::Ci => ci(),
        Task::Bench(BenchArgs {
            bench: Some(BenchTask::E2e(options)),
            ..
        }) => bench_e2e::run(&options),
        Task::Bench(BenchArgs {
            bench: Some(BenchTask::Failover(options)),
            ..
        }) => bench_failover::run(&options),
        Task::Bench(BenchArgs {
            bench: None,
            criterion_args,
        }) => bench::run(&criterion_args),
        Task::Demo => demo::run(),
        Task::Browser { port } => browser::run(port),
        Task::Crash { cycles } => crash::run(cycles),
        Task::Chaos(options) => chaos::run(&options),
        Task::Fuzz { seconds } => fuzz::run(seconds),
        Task::Dist(options) => dist::run(&options),
    }
}

fn test(prepared: bool, cargo_args: &[String]) -> anyhow::Result<()> {
    if !prepared {
        run_in_root(Command::new("bash").arg(".ci/prepare"), "bash .ci/prepare")?;
    }
    run_in_root(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["test", "--workspace"])
            .args(cargo_args),
        "cargo test --workspace",
    )
}

fn ci() -> anyhow::Result<()> {
    run_in_root(Command::new("bash").arg(".ci/run"), "bash .ci/run")
}

/// Runs `command` in the workspace root and fails unless it succeeds.
fn run_in_root(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The workspace root: xtask lives one folder below it.
pub(crate) fn workspace_root() -> std::path::PathBuf {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn parse(args: &[&str]) -> Result<Task, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_without_e2e_passes_its_arguments_to_criterion() {
        let Task::Bench(args) = parse(&["bench", "d_parallel", "--save-baseline", "main"]).unwrap()
        else {
            panic!("not bench");
        };
        assert!(args.bench.is_none());
        assert_eq!(
            args.criterion_args,
            ["d_parallel", "--save-baseline", "main"]
        );
        let Task::Bench(args) = parse(&["bench"]).unwrap() else {
            panic!("not bench");
        };
        assert!(args.bench.is_none() && args.criterion_args.is_empty());
    }

    #[test]
    fn bench_e2e_takes_its_own_options() {
        let Task::Bench(args) = parse(&["bench", "e2e", "--rounds", "5"]).unwrap() else {
            panic!("not bench");
        };
        assert!(matches!(args.bench, Some(BenchTask::E2e(_))));
        assert!(args.criterion_args.is_empty());
        assert!(parse(&["bench", "e2e", "d_parallel"]).is_err());
    }

    #[test]
    fn bench_e2e_runs_the_parts_asked_for() {
        let Task::Bench(BenchArgs {
            bench: Some(BenchTask::E2e(all)),
            ..
        }) = parse(&["bench", "e2e"]).unwrap()
        else {
            panic!("not bench e2e");
        };
        assert!(all.runs(bench_e2e::Part::Upload) && all.runs(bench_e2e::Part::Latency));
        let Task::Bench(BenchArgs {
            bench: Some(BenchTask::E2e(some)),
            ..
        }) = parse(&["bench", "e2e", "--only", "download,latency"]).unwrap()
        else {
            panic!("not bench e2e");
        };
        assert!(!some.runs(bench_e2e::Part::Upload));
        assert!(some.runs(bench_e2e::Part::Download) && some.runs(bench_e2e::Part::Latency));
        assert!(parse(&["bench", "e2e", "--only", "everything"]).is_err());
    }
}
