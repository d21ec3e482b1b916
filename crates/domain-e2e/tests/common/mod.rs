//! Starting the cluster's binaries for the end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use std::sync::OnceLock;

use domain_e2e::{Output, Process, Ready, build_test_binaries, run};

/// Readiness limit of a peer: generous, for debug builds on a busy 2-core machine.
pub const READY: Duration = Duration::from_secs(60);
/// Limit of one `domain` command.
pub const COMMAND: Duration = Duration::from_secs(120);

/// The path of a binary of the workspace (`domain-manager`, `domain-node`, `domain`),
/// built (once per test process) if needed.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| build_test_binaries().map_err(|e| e.to_string()));
    if let Err(error) = built {
        panic!("{error}");
    }
    domain_e2e::binary(name).unwrap()
}

/// A manager on `dir`, listening on `listen` (loopback TCP on a port the system picks by
/// default).
pub fn start_manager(dir: &Path, listen: Option<&str>) -> (Process, Ready) {
    start_manager_with(dir, listen, |_| {})
}

/// [`start_manager`], with the command changed by `configure` (more flags, environment)
/// before it starts.
pub fn start_manager_with(
    dir: &Path,
    listen: Option<&str>,
    configure: impl FnOnce(&mut Command),
) -> (Process, Ready) {
    let data = dir.join("manager");
    let mut args = vec![
        "run".to_owned(),
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--tick-interval".to_owned(),
        "200ms".to_owned(),
    ];
    if let Some(listen) = listen {
        args.extend(["--listen".to_owned(), listen.to_owned()]);
    }
    let mut command = Command::new(binary("domain-manager"));
    command.args(&args);
    configure(&mut command);
    let mut manager =
        Process::spawn_command("domain-manager", command, &dir.join("manager.log")).unwrap();
    let ready = manager.wait_ready(READY).unwrap_or_else(|e| panic!("{e}"));
    (manager, ready)
}

/// A node named `name` with its data in `dir/<name>`, joined to the manager at `manager`.
///
/// A manager with domains declared admits only the nodes its operator admitted: the node's
/// peer id (`domain-node id`) is admitted first (`domain-manager node allow`), as an
/// operator does.
pub fn start_node(dir: &Path, name: &str, manager: &str) -> (Process, Ready) {
    start_node_with(dir, name, manager, |_| {})
}

/// [`start_node`], with the command changed by `configure` (more flags, environment)
/// before it starts.
pub fn start_node_with(
    dir: &Path,
    name: &str,
    manager: &str,
    configure: impl FnOnce(&mut Command),
) -> (Process, Ready) {
    let data = dir.join(name);
    let manager_dir = dir.join("manager");
    if manager_dir.join("domains.toml").exists() {
        let data_arg = data.display().to_string();
        let id = run(
            "domain-node id",
            &binary("domain-node"),
            ["id", "--data-dir", &data_arg],
            COMMAND,
        )
        .unwrap();
        assert!(id.status.success(), "{}", id.stderr);
        let manager_arg = manager_dir.display().to_string();
        let allowed = run(
            "domain-manager node allow",
            &binary("domain-manager"),
            [
                "node",
                "allow",
                id.stdout.trim(),
                "--data-dir",
                &manager_arg,
            ],
            COMMAND,
        )
        .unwrap();
        assert!(allowed.status.success(), "{}", allowed.stderr);
    }
    let args = [
        "run",
        "--manager",
        manager,
        "--data-dir",
        &data.display().to_string(),
        "--name",
        name,
        "--join-interval",
        "1s",
    ];
    let mut command = Command::new(binary("domain-node"));
    command.args(args);
    configure(&mut command);
    let mut node = Process::spawn_command(name, command, &dir.join(format!("{name}.log"))).unwrap();
    let ready = node.wait_ready(READY).unwrap_or_else(|e| panic!("{e}"));
    (node, ready)
}

/// Runs `domain-manager` with `args` (an operator's command, not `run`).
pub fn manager(args: &[&str]) -> Output {
    run("domain-manager", &binary("domain-manager"), args, COMMAND)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `domain-manager` with `args`, which must succeed; its standard output.
pub fn manager_ok(args: &[&str]) -> String {
    let output = manager(args);
    assert!(
        output.status.success(),
        "domain-manager {args:?}: {}",
        output.stderr
    );
    output.stdout
}

/// `domain-manager token issue` of a token of domain `e2e` for `sender` on `node` (peer ids)
/// and `endpoint`, signed with the key of the manager whose data folder is `dir/manager`.
pub fn issue_token(dir: &Path, sender: &str, node: &str, endpoint: &str) -> Output {
    let manager_dir = dir.join("manager").display().to_string();
    manager(&[
        "token",
        "issue",
        "--domain",
        "e2e",
        "--sender",
        sender,
        "--node",
        node,
        "--endpoint",
        endpoint,
        "--data-dir",
        &manager_dir,
    ])
}

/// Runs `domain` with `args` and the client identity in `dir`.
pub fn domain(dir: &Path, args: &[&str]) -> Output {
    let identity = dir.join("client").join("identity.key");
    let identity = identity.display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--identity", &identity]);
    run("domain", &binary("domain"), &all, COMMAND).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `domain` and requires it to succeed.
pub fn domain_ok(dir: &Path, args: &[&str]) -> String {
    let output = domain(dir, args);
    assert!(
        output.status.success(),
        "domain {args:?} failed ({}):\n{}",
        output.status,
        output.stderr
    );
    output.stdout
}

/// Writes `bytes` to `dir/<name>` and uploads it to domain `e2e` through the manager at
/// `manager`; returns its item line.
pub fn upload_bytes(dir: &Path, manager: &str, name: &str, bytes: &[u8]) -> ItemLine {
    let file = dir.join(name);
    std::fs::write(&file, bytes).unwrap();
    let file = file.display().to_string();
    let out = domain_ok(
        dir,
        &["upload", &file, "--domain", "e2e", "--manager", manager],
    );
    let mut lines = item_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    lines.remove(0)
}

/// The arguments of `domain download` of item `id` of domain `e2e` into `out`.
pub fn download_args<'a>(id: &'a str, manager: &'a str, out: &'a str) -> [&'a str; 9] {
    [
        "download",
        "--domain",
        "e2e",
        "--id",
        id,
        "--manager",
        manager,
        "--out",
        out,
    ]
}

/// One `<id>  <root>  <path>` line of `domain upload` or `download`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemLine {
    /// The item's id.
    pub id: String,
    /// Its Merkle root, hex.
    pub root: String,
    /// The local file.
    pub path: PathBuf,
}

/// The item lines of a command's standard output.
pub fn item_lines(stdout: &str) -> Vec<ItemLine> {
    stdout
        .lines()
        .map(|line| {
            let mut fields = line.splitn(3, "  ");
            let (Some(id), Some(root), Some(path)) = (fields.next(), fields.next(), fields.next())
            else {
                panic!("not an item line: {line:?}");
            };
            ItemLine {
                id: id.to_owned(),
                root: root.to_owned(),
                path: PathBuf::from(path),
            }
        })
        .collect()
}

/// Content where byte i is a mix of i and `seed`: distinct per file, not chunk-aligned.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(u64::from(seed)) as u8
                ^ (i >> 13) as u8
        })
        .collect()
}
