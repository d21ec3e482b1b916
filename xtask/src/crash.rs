//! `cargo xtask crash --cycles N`: the datastore crash test with more kills than the test
//! suite's 50.
//!
//! Runs `crates/domain-datastore/tests/crash.rs` (a child process uploading to a local store,
//! SIGKILLed at random moments, the store reopened and checked after each kill) with
//! `DOMAIN_CRASH_CYCLES=N`. Set `CRASH_SEED` to repeat a run; the test prints the seed it used.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{Context as _, bail};

/// The integration test that owns the crash scenario.
const TEST: &str = "crash_kills_leave_every_acknowledged_item_intact";

/// Runs the datastore crash test with `cycles` kill-and-reopen cycles.
pub fn run(cycles: u32) -> anyhow::Result<()> {
    if cycles == 0 {
        bail!("--cycles must be at least 1");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let status = Command::new(&cargo)
        .current_dir(crate::workspace_root())
        .args([
            "test",
            "-p",
            "domain-datastore",
            "--test",
            "crash",
            "--",
            "--exact",
            TEST,
        ])
        .arg("--nocapture")
        .env("DOMAIN_CRASH_CYCLES", cycles.to_string())
        .status()
        .with_context(|| format!("running {} test", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("the crash test failed after up to {cycles} cycles ({status})");
    }
    Ok(())
}
