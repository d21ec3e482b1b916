//! The `domain-node` binary: its readiness lines, its joins, its clean exit on
//! SIGTERM, and one-line errors for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;

use domain_auth::DomainKey;
use domain_cluster::Multiaddr;
use domain_cluster::addr::peer_of;
use domain_cluster::identity::Identity;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

mod common;

use common::{DOMAIN, StandIn, tcp_loopback, within};

fn node_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_domain-node"));
    command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_listening_then_ready_after_joining_and_exits_cleanly_on_sigterm() {
    let key = DomainKey::generate(DOMAIN).unwrap();
    let mut manager = StandIn::start(Identity::generate(), tcp_loopback(), &key).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    // The file names a capacity and a name; the flags override the name.
    std::fs::write(
        &config,
        "store-capacity = -1\nname = \"from-file\"\njoin-interval = \"1h\"\n",
    )
    .unwrap();

    let mut child = node_binary()
        .arg("run")
        .arg("--manager")
        .arg(manager.addr.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("node"))
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--name", "from-flag"])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let listening = within("the listening line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let listen_addr: Multiaddr = listening
        .strip_prefix("listening ")
        .expect(&listening)
        .parse()
        .unwrap();
    let ready = within("the ready line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let ready_addr: Multiaddr = ready.strip_prefix("ready ").expect(&ready).parse().unwrap();
    assert_eq!(ready_addr, listen_addr);

    let join = manager.next_join().await;
    assert_eq!(Some(join.node.id.parse().unwrap()), peer_of(&ready_addr));
    assert_eq!(join.node.name, "from-flag");
    assert_eq!(join.node.capabilities[0].capacity, -1);
    assert_eq!(join.node.capabilities[1].capacity, 16);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = within("the node to exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(dir.path().join("node/identity.key").is_file());
    assert!(dir.path().join("node/store").is_dir());
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_non_zero_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let manager = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWLRPJAA5o6Ztr9vdumNjgx3D7T9dbtXbZpGbSaDcJkfAP";
    let data_dir = dir.path().to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["run", "--data-dir", data_dir], "manager"),
        (
            &[
                "run",
                "--manager",
                "/ip4/127.0.0.1/tcp/9",
                "--data-dir",
                data_dir,
            ],
            "/p2p/",
        ),
        (
            &[
                "run",
                "--manager",
                manager,
                "--data-dir",
                data_dir,
                "--store-capacity",
                "-5",
            ],
            "store-capacity",
        ),
        (
            &[
                "run",
                "--manager",
                manager,
                "--data-dir",
                data_dir,
                "--config",
                "/nonexistent/node.toml",
            ],
            "/nonexistent/node.toml",
        ),
    ];
    for (args, named) in cases {
        let output = within("the node to refuse", node_binary().args(args).output())
            .await
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}
