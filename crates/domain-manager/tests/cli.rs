//! The `domain-manager` binary: its domain commands, the lines it prints, a graceful stop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_domain-manager");

fn manager(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn domain_create_prints_the_public_key_and_domain_list_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("manager");
    let data = data.to_str().unwrap();
    let peer = "12D3KooWJWo7dJKXbZLoSvQfLEdHiKsvj7Y9P3D1nYZNjSjoEwU1";
    let created = manager(&[
        "domain",
        "create",
        "scans",
        "--data-dir",
        data,
        "--allow",
        peer,
    ]);
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert_eq!(key.len(), 64);
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()));

    let listed = manager(&["domain", "list", "--data-dir", data]);
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(
        String::from_utf8(listed.stdout).unwrap(),
        format!("scans\t{key}\t{peer}\n")
    );

    let bad = manager(&[
        "domain",
        "create",
        "x",
        "--data-dir",
        data,
        "--allow",
        "nobody",
    ]);
    assert!(!bad.status.success());
}

#[test]
fn node_allow_revoke_ls_and_invite_keep_the_admissions_of_the_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("manager");
    let data = data.to_str().unwrap();
    let peer = "12D3KooWJWo7dJKXbZLoSvQfLEdHiKsvj7Y9P3D1nYZNjSjoEwU1";
    let ls = || String::from_utf8(manager(&["node", "ls", "--data-dir", data]).stdout).unwrap();

    assert!(
        manager(&["node", "allow", peer, "--data-dir", data])
            .status
            .success()
    );
    assert!(
        manager(&["node", "allow", peer, "--data-dir", data])
            .status
            .success()
    );
    assert_eq!(ls(), format!("{peer}\n"));
    assert!(
        manager(&["node", "revoke", peer, "--data-dir", data])
            .status
            .success()
    );
    assert_eq!(ls(), "");
    let again = manager(&["node", "revoke", peer, "--data-dir", data]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not admitted"));
    assert!(
        !manager(&["node", "allow", "nobody", "--data-dir", data])
            .status
            .success()
    );

    let invite = manager(&["node", "invite", "--data-dir", data, "--ttl", "1h"]);
    assert!(invite.status.success(), "{invite:?}");
    let invite = String::from_utf8(invite.stdout).unwrap();
    assert!(invite.starts_with("dcinv-"), "{invite}");
    // The secret itself is never written.
    let file = std::fs::read_to_string(dir.path().join("manager").join("nodes.toml")).unwrap();
    assert!(!file.contains(invite.trim()), "{file}");
}

/// A running `domain-manager run`, its `listening` addresses and its `ready` address.
struct Running {
    child: Child,
    listening: Vec<String>,
    ready: String,
}

fn run_until_ready(args: &[&str]) -> Running {
    let mut child = Command::new(BIN)
        .arg("run")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut listening = Vec::new();
    let ready = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("no ready line");
        match line.split_once(' ') {
            Some(("listening", addr)) => listening.push(addr.to_owned()),
            Some(("ready", addr)) => break addr.to_owned(),
            _ => panic!("unexpected line {line:?}"),
        }
    };
    Running {
        child,
        listening,
        ready,
    }
}

/// Sends SIGTERM and expects a clean exit.
fn stop(mut child: Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn run_prints_its_addresses_then_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("manager");
    let running = run_until_ready(&["--data-dir", data.to_str().unwrap()]);
    // The default: loopback TCP, QUIC and WebSocket, each with the peer id.
    let Running {
        child,
        listening,
        ready,
    } = running;
    assert_eq!(listening.len(), 3, "{listening:?}");
    assert!(
        listening.iter().any(|a| a.contains("/ws/")),
        "{listening:?}"
    );
    assert!(
        listening
            .iter()
            .all(|a| a.starts_with("/ip4/127.0.0.1/") && a.contains("/p2p/12D3KooW"))
    );
    assert!(
        ready.contains("/tcp/") && listening.contains(&ready),
        "{ready}"
    );
    stop(child);
    // The state it leaves behind.
    assert!(data.join("identity.key").exists());
    assert!(data.join("scheduler.redb").exists());
}

#[test]
fn the_config_file_sets_the_data_folder_and_flags_override_its_listen_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("state");
    let config = dir.path().join("manager.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\ntick-interval = \"200ms\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let running = run_until_ready(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    assert_eq!(running.listening.len(), 1, "{:?}", running.listening);
    assert!(running.ready.contains("/tcp/"));
    stop(running.child);
    assert!(data.join("identity.key").exists());

    std::fs::write(&config, "lisen = []\n").unwrap();
    let refused = Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8(refused.stderr).unwrap();
    assert!(message.contains("lisen"), "{message}");
}
