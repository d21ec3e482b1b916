//! `cargo xtask fuzz --seconds N`: runs each cargo-fuzz target of `fuzz/` for N seconds.
//!
//! The targets build with a nightly toolchain and cargo-fuzz (`cargo install
//! cargo-fuzz`); where either is missing this says so and fails rather than pass
//! silently. Each target's corpus grows in `fuzz/corpus/<target>` (not committed),
//! seeded from `fuzz/seeds/<target>` when that folder exists; a crash leaves its
//! input in `fuzz/artifacts/<target>` and fails the run.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The fuzz targets, in the order they run.
pub const TARGETS: [&str; 4] = [
    "frame_decoder",
    "handshake",
    "store_receiver",
    "manager_requests",
];

/// Runs every target in [`TARGETS`] for `seconds` seconds each.
pub fn run(seconds: u64) -> anyhow::Result<()> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let root = crate::workspace_root();
    let fuzz_dir = root.join("fuzz");
    check_tools(&fuzz_dir)?;
    for target in TARGETS {
        println!("fuzz: {target} for {seconds} s");
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        let mut command = Command::new("cargo");
        command
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus);
        let seeds = fuzz_dir.join("seeds").join(target);
        if seeds.is_dir() {
            command.arg(&seeds);
        }
        let status = command
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .current_dir(&fuzz_dir)
            .status()
            .with_context(|| format!("cannot start cargo fuzz run {target}"))?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed ({status}); its input is in fuzz/artifacts/{target}"
            );
        }
    }
    Ok(())
}

/// Fails with what to install when nightly or cargo-fuzz is missing.
fn check_tools(fuzz_dir: &Path) -> anyhow::Result<()> {
    if !fuzz_dir.join("Cargo.toml").is_file() {
        bail!("no fuzz/Cargo.toml under {}", fuzz_dir.display());
    }
    let works = |args: &[&str]| {
        Command::new("cargo")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !works(&["+nightly", "--version"]) {
        bail!("fuzzing needs a nightly toolchain: rustup toolchain install nightly");
    }
    if !works(&["+nightly", "fuzz", "--version"]) {
        bail!("fuzzing needs cargo-fuzz: cargo install cargo-fuzz");
    }
    Ok(())
}
