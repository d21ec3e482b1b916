//! The binaries' logs as a log collector reads them: a manager, a node and the `domain`
//! command with `--log-format json` at debug level, through an upload, a listing, a
//! download and a direct upload with a token from `domain-manager token issue`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{COMMAND, binary, content, start_manager_with, start_node_with};
use domain_e2e::Output;
use domain_merkle::root_of;

/// Every binary of this test logs JSON lines, at debug level for the workspace's crates
/// (libp2p's own debug lines are many and never see a token).
fn json_at_debug(command: &mut Command) {
    command.arg("--log-format").arg("json").env(
        "RUST_LOG",
        "info,domain_manager=debug,domain_node=debug,domain_client=debug,domain_cluster=debug,\
         domain_capabilities=debug,domain_datastore=debug,domain_scheduler=debug,domain_cli=debug",
    );
}

/// `domain ARGS` with the client identity in `dir`, logging JSON at debug level.
fn domain(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(binary("domain"));
    command
        .args(args)
        .arg("--identity")
        .arg(dir.join("client").join("identity.key"));
    json_at_debug(&mut command);
    let output = domain_e2e::run_command("domain", command, COMMAND).unwrap();
    assert!(
        output.status.success(),
        "domain {args:?}: {}",
        output.stderr
    );
    output
}

fn manager_command(args: &[&str]) -> String {
    let mut command = Command::new(binary("domain-manager"));
    command.args(args);
    json_at_debug(&mut command);
    let output = domain_e2e::run_command("domain-manager", command, COMMAND).unwrap();
    assert!(output.status.success(), "{args:?}: {}", output.stderr);
    output.stdout
}

/// Strings that must appear in no log: whatever of a private key a log line could show
/// (hex of any 16 bytes of its file, the file in base64, the PEM body lines).
fn secrets_of_key_file(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let mut secrets: Vec<String> = text
        .lines()
        .filter(|line| line.len() >= 16 && !line.starts_with("-----"))
        .map(str::to_owned)
        .collect();
    for window in bytes.windows(16) {
        let hex: String = window.iter().map(|b| format!("{b:02x}")).collect();
        secrets.push(hex.to_uppercase());
        secrets.push(hex);
    }
    secrets.push(format!("{:?}", &bytes[..bytes.len().min(16)]));
    secrets
}

#[test]
fn json_logs_of_a_whole_run_name_each_tasks_job_and_peer_and_hold_no_token_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let client = domain(work, &["id"]).stdout.trim().to_owned();
    let manager_dir = work.join("manager").display().to_string();
    manager_command(&[
        "domain",
        "create",
        "e2e",
        "--data-dir",
        &manager_dir,
        "--allow",
        &client,
    ]);
    let (_manager, manager) = start_manager_with(work, None, json_at_debug);
    let (_node, node) = start_node_with(work, "node1", &manager.addr, json_at_debug);
    let node_peer = node.addr.rsplit('/').next().unwrap().to_owned();

    let file = work.join("scan.bin");
    let bytes = content(100_000, 3);
    std::fs::write(&file, &bytes).unwrap();
    let file_arg = file.display().to_string();
    let manager_args = ["--domain", "e2e", "--manager", manager.addr.as_str()];
    let mut client_logs = String::new();
    let upload = domain(work, &[&["upload", &file_arg][..], &manager_args].concat());
    client_logs.push_str(&upload.stderr);
    client_logs.push_str(&domain(work, &[&["ls"][..], &manager_args].concat()).stderr);
    let copies = work.join("copies").display().to_string();
    let download = domain(
        work,
        &[&["download", "--out", &copies][..], &manager_args].concat(),
    );
    client_logs.push_str(&download.stderr);
    assert!(download.stdout.contains(&root_of(&bytes).to_string()));
    let token = manager_command(&[
        "token",
        "issue",
        "--domain",
        "e2e",
        "--sender",
        &client,
        "--node",
        &node_peer,
        "--endpoint",
        "/store/v1",
        "--data-dir",
        &manager_dir,
    ]);
    let token = token.trim();
    assert!(
        token.starts_with("eyJ"),
        "the prefix looked for below: {token}"
    );
    let direct = domain(
        work,
        &[
            "upload", &file_arg, "--domain", "e2e", "--node", &node.addr, "--token", token,
        ],
    );
    client_logs.push_str(&direct.stderr);

    let manager_logs = std::fs::read_to_string(work.join("manager.log")).unwrap();
    let node_logs = std::fs::read_to_string(work.join("node1.log")).unwrap();
    let mut lines = Vec::new();
    for (who, logs) in [
        ("manager", &manager_logs),
        ("node", &node_logs),
        ("client", &client_logs),
    ] {
        assert!(logs.lines().count() > 5, "{who} logged at debug level");
        for line in logs.lines().filter(|l| !l.is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{who}: not a JSON line ({e}): {line}"));
            assert!(
                value["level"].is_string() && value["timestamp"].is_string(),
                "{line}"
            );
            lines.push((who, value));
        }
    }

    // Every line about a task names its job and its peer, in the event or its span.
    let about_a_task = |value: &serde_json::Value| {
        [value, &value["span"]]
            .into_iter()
            .find(|fields| fields.get("task").is_some())
            .cloned()
    };
    let mut task_lines = 0;
    for (who, value) in &lines {
        if let Some(fields) = about_a_task(value) {
            task_lines += 1;
            assert!(fields["job"].is_string(), "{who}: {value}");
            assert!(fields["peer"].is_string(), "{who}: {value}");
        }
    }
    let node_done: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|(who, value)| *who == "node" && value["message"] == "task stream done")
        .map(|(_, value)| value)
        .collect();
    let node_tasks: Vec<String> = lines
        .iter()
        .filter(|(who, value)| *who == "node" && about_a_task(value).is_some())
        .map(|(_, value)| value.to_string())
        .collect();
    assert_eq!(
        node_done.len(),
        4,
        "two uploads, a listing and a download: {node_tasks:#?}"
    );
    for done in &node_done {
        assert_eq!(done["span"]["peer"], client.as_str(), "{done}");
        assert!(
            done["span"]["job"]
                .as_str()
                .is_some_and(|job| !job.is_empty())
        );
    }
    assert!(task_lines >= 6, "{task_lines} lines about tasks");

    // No token, no key.
    let everything = format!("{manager_logs}{node_logs}{client_logs}");
    assert!(!everything.contains(token), "the issued token was logged");
    // The header of every EdDSA JWT, `{"` in base64url: no token of the run is logged.
    assert!(!everything.contains("eyJ"), "a token was logged");
    assert!(!everything.contains("PRIVATE KEY"));
    let keys_dir = work.join("manager").join("keys");
    let mut key_files: Vec<_> = std::fs::read_dir(&keys_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    key_files.extend([
        work.join("manager").join("identity.key"),
        work.join("node1").join("identity.key"),
        work.join("client").join("identity.key"),
    ]);
    for key_file in key_files {
        assert!(key_file.exists(), "{}", key_file.display());
        for secret in secrets_of_key_file(&key_file) {
            assert!(
                !everything.contains(&secret),
                "{} shows in the logs",
                key_file.display()
            );
        }
    }
}
