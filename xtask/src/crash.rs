//! `cargo xtask crash --cycles N`: the datastore crash test with more kills than the test
//! suite's 50, on each catalog.
//!
//! Runs the crash test (a child process uploading to a local store, SIGKILLed at random
//! moments, the store reopened and checked after each kill) of
//! `crates/domain-datastore/tests/crash.rs` (redb) and `crates/domain-postgres/tests/crash.rs`
//! (PostgreSQL) with `DOMAIN_CRASH_CYCLES=N`. Set `CRASH_SEED` to repeat a run; the tests
//! print the seed they used.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{Context as _, bail};

/// The integration test that owns the crash scenario.
const TEST: &str = "crash_kills_leave_every_acknowledged_item_intact";

/// The crates whose `crash` test runs it: one per catalog.
const CRATES: [&str; 2] = ["domain-datastore", "domain-postgres"];

/// Runs the crash test of each catalog with `cycles` kill-and-reopen cycles.
pub fn run(cycles: u32) -> anyhow::Result<()> {
    if cycles == 0 {
        bail!("--cycles must be at least 1");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    for krate in CRATES {
        let status = Command::new(&cargo)
            .current_dir(crate::workspace_root())
            .args([
                "test", "-p", krate, "--test", "crash", "--", "--exact", TEST,
            ])
            .arg("--nocapture")
            .env("DOMAIN_CRASH_CYCLES", cycles.to_string())
            .status()
            .with_context(|| format!("running {} test", cargo.to_string_lossy()))?;
        if !status.success() {
            bail!("the crash test of {krate} failed after up to {cycles} cycles ({status})");
        }
    }
    Ok(())
}
