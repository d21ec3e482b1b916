//! `cargo xtask browser`: the page of `examples/browser` next to a demo cluster.
//!
//! Builds the binaries, starts a manager and a node on loopback with their data in a
//! temporary folder, installs the page's npm packages when they are missing, and serves the
//! page with Vite's dev server; prints the URL to open, which names the manager's WebSocket
//! address. Ctrl-C stops everything.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use domain_e2e::binary;

use crate::peers::Peers;

/// The domain the printed URL opens.
const DOMAIN: &str = "demo";

/// Runs the page and the cluster until Ctrl-C (or until Vite stops).
pub fn run(port: u16) -> anyhow::Result<()> {
    crate::demo::build()?;
    let page = crate::workspace_root().join("examples").join("browser");
    if !page
        .join("node_modules")
        .join(".package-lock.json")
        .exists()
    {
        say("installing the page's npm packages (npm ci)");
        npm(&page, &["ci", "--no-audit", "--no-fund"])?;
    }
    let dir = tempfile::Builder::new()
        .prefix("domain-browser-")
        .tempdir()
        .context("creating the temporary folder")?;
    let peers = Peers::new(dir.path().to_path_buf(), "browser")?;
    let result = serve(&page, dir.path(), &peers, port);
    peers.stop_all();
    result
}

fn serve(page: &Path, dir: &Path, peers: &Peers, port: u16) -> anyhow::Result<()> {
    let manager_bin = binary("domain-manager").context("locating domain-manager")?;
    let manager_dir = dir.join("manager").display().to_string();
    let (manager, _) = peers.start(
        "manager",
        &manager_bin,
        &["run", "--data-dir", &manager_dir],
    )?;
    let websocket = manager
        .listening
        .iter()
        .find(|addr| addr.contains("/ws/"))
        .context("the manager listens on no WebSocket address")?;
    let node_bin = binary("domain-node").context("locating domain-node")?;
    let node_dir = dir.join("node1").display().to_string();
    let args = [
        "run",
        "--manager",
        &manager.addr,
        "--data-dir",
        &node_dir,
        "--name",
        "node1",
    ];
    peers.start("node1", &node_bin, &args)?;
    say(&format!(
        "manager at {websocket}, one node; logs in {}",
        dir.display()
    ));
    say(&format!(
        "open http://127.0.0.1:{port}/?manager={websocket}&domain={DOMAIN}  (Ctrl-C stops)"
    ));
    say(&format!(
        "upload from the command line too: DOMAIN_MANAGER={} cargo run -q -p domain-cli --bin domain -- upload FILE --domain {DOMAIN}",
        manager.addr
    ));
    let port = port.to_string();
    npm(
        page,
        &[
            "exec",
            "--",
            "vite",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--strictPort",
        ],
    )
}

fn npm(page: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("npm")
        .args(args)
        .current_dir(page)
        .status()
        .context("cannot run npm: the page needs Node.js and npm")?;
    if !status.success() {
        bail!("npm {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn say(line: &str) {
    println!("browser: {line}");
}
