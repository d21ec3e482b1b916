//! The browser page of `examples/browser` in a real Chromium against this build's binaries:
//! js-libp2p on one side, our manager and node on the other. The suite itself is TypeScript
//! (Vitest + playwright-core, `npm test` there); this test runs it so that
//! `cargo test --workspace` covers the page too. It needs Node.js with npm and Chromium
//! (`/usr/bin/chromium`, or `CHROMIUM`); `.ci/run` installs Chromium where it is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `examples/browser`, from this crate's folder.
fn page_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/browser")
}

/// Runs `npm <args>` in the page's folder and fails the test with its output when it fails.
fn npm(args: &[&str], bin_dir: &Path) -> String {
    let output = Command::new("npm")
        .args(args)
        .current_dir(page_dir())
        .env("DOMAIN_BIN_DIR", bin_dir)
        .env("CI", "true")
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run npm (the browser tests need Node.js and npm): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "npm {}: {}\n{text}",
        args.join(" "),
        output.status
    );
    text
}

#[test]
fn the_browser_page_uploads_lists_downloads_and_watches_in_chromium() {
    let chromium =
        std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from);
    assert!(
        chromium.exists(),
        "{} is missing: install Chromium (Debian: apt-get install chromium; .ci/run does) or set CHROMIUM",
        chromium.display()
    );
    // The binaries cargo built for this test (the dev-dependencies of this crate).
    let manager = domain_e2e::binary("domain-manager").unwrap();
    let bin_dir = manager.parent().unwrap();
    if !page_dir().join("node_modules/.package-lock.json").exists() {
        npm(&["ci", "--no-audit", "--no-fund"], bin_dir);
    }
    let report = npm(&["test"], bin_dir);
    // The throughput the suite measured, shown with `--nocapture`.
    for line in report.lines().filter(|l| l.contains("MiB/s")) {
        println!("{line}");
    }
}
