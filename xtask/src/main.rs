//! Project automation, run as `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! - `cargo xtask ci`: what CI runs (`.ci/run`): formatting, lints, the test suite.
//! - `cargo xtask bench [FILTER]...`: the Merkle benches, printed as ratios to BLAKE3's limits.
//! - `cargo xtask demo`: a manager, two nodes and the `domain` command on loopback.

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;
mod demo;

/// Project automation for the domain cluster workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run what CI runs: `cargo fmt --check`, clippy with warnings denied, the tests.
    Ci,
    /// Run the Merkle benches (release build) and print each as a ratio to BLAKE3 one-shot
    /// and to BLAKE3 over independent 7168-byte leaves.
    Bench {
        /// Criterion arguments, e.g. a filter on bench names.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        criterion_args: Vec<String>,
    },
    /// Start a manager and two nodes on loopback, upload a 64 MiB file and a folder with the
    /// `domain` command, list, download them back, check bytes and roots, print the
    /// throughput, and stop everything (also on Ctrl-C).
    Demo,
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
        Task::Ci => ci(),
        Task::Bench { criterion_args } => bench::run(&criterion_args),
        Task::Demo => demo::run(),
    }
}

fn ci() -> anyhow::Result<()> {
    let status = Command::new("bash")
        .arg(".ci/run")
        .current_dir(workspace_root())
        .status()
        .context("cannot start bash .ci/run")?;
    if !status.success() {
        bail!(".ci/run failed ({status})");
    }
    Ok(())
}

/// The workspace root: xtask lives one folder below it.
pub(crate) fn workspace_root() -> std::path::PathBuf {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}
