//! What a manager and a node write is theirs alone: folders 0700 and files 0600 whatever
//! the umask they start with, and a data folder others may enter is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use common::{COMMAND, READY, binary};
use domain_e2e::{Process, run};

/// Starts `program` with `args` under umask 000, the most permissive there is.
fn spawn_under_umask_000(name: &str, program: &Path, args: &[&str], log: &Path) -> Process {
    let mut all = vec![
        "-c".to_owned(),
        "umask 000; exec \"$0\" \"$@\"".to_owned(),
        program.display().to_string(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    Process::spawn(name, Path::new("/bin/sh"), &all, log).unwrap()
}

/// Every file and folder under `root` (itself included), with its mode, that group or
/// others may access.
fn exposed(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            found.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    found
}

#[test]
fn a_manager_and_a_node_started_under_umask_000_keep_their_folders_and_files_private() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let manager_dir = work.join("manager");
    let node_dir = work.join("node1");
    let (manager_arg, node_arg) = (
        manager_dir.display().to_string(),
        node_dir.display().to_string(),
    );
    let mut manager = spawn_under_umask_000(
        "domain-manager",
        &binary("domain-manager"),
        &["run", "--data-dir", &manager_arg],
        &work.join("manager.log"),
    );
    let ready = manager.wait_ready(READY).unwrap();
    let mut node = spawn_under_umask_000(
        "domain-node",
        &binary("domain-node"),
        &[
            "run",
            "--manager",
            &ready.addr,
            "--data-dir",
            &node_arg,
            "--join-interval",
            "1s",
        ],
        &work.join("node1.log"),
    );
    node.wait_ready(READY).unwrap();
    // The node's store holds its database and its folders for uploads in progress.
    for written in ["store/meta.redb", "store/tmp", "store/partials"] {
        assert!(node_dir.join(written).exists(), "{written}");
    }
    assert!(manager_dir.join("scheduler.redb").exists());
    drop((node, manager));
    assert_eq!(exposed(&manager_dir), Vec::<String>::new());
    assert_eq!(exposed(&node_dir), Vec::<String>::new());
}

#[test]
fn a_data_folder_others_may_enter_is_refused_with_the_command_that_fixes_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node1");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_arg = data.display().to_string();
    let refused = run(
        "domain-node",
        &binary("domain-node"),
        [
            "run",
            "--manager",
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWHKMydZGqq1EdtwGm3kxL4xkWaxPynkHVytLrrB8PpvXQ",
            "--data-dir",
            &data_arg,
        ],
        COMMAND,
    )
    .unwrap();
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("chmod 700"), "{}", refused.stderr);
    let refused = run(
        "domain-manager",
        &binary("domain-manager"),
        ["run", "--data-dir", &data_arg],
        COMMAND,
    )
    .unwrap();
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("0755"), "{}", refused.stderr);
}
