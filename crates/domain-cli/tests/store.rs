//! `domain store`: the built binary against a temporary store folder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use domain_merkle::root_of;

fn domain(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_domain"))
        .arg("store")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn put_ls_get_rm_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let file = work.path().join("scan.ply");
    let bytes: Vec<u8> = (0..3_000_000_u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();

    let put = stdout(&domain(
        &store,
        &[
            "put",
            file.to_str().unwrap(),
            "--domain",
            "d1",
            "--name",
            "../scan",
            "--type",
            "ply",
            "--prop",
            "k=v",
        ],
    ));
    let (id, root) = put.trim().split_once(' ').unwrap();
    assert_eq!(root, root_of(&bytes).to_string());

    let ls = stdout(&domain(&store, &["ls", "--domain", "d1", "--type", "ply"]));
    assert_eq!(ls, format!("{id}\t{root}\t{}\tply\t../scan\n", bytes.len()));
    let none = stdout(&domain(
        &store,
        &["ls", "--domain", "d1", "--name-regex", "^mesh"],
    ));
    assert_eq!(none, "");

    let out = work.path().join("out.ply");
    stdout(&domain(
        &store,
        &["get", id, "--domain", "d1", "-o", out.to_str().unwrap()],
    ));
    assert!(std::fs::read(&out).unwrap() == bytes);
    let to_stdout = domain(&store, &["get", id, "--domain", "d1"]);
    assert!(to_stdout.status.success());
    assert!(to_stdout.stdout == bytes);

    stdout(&domain(&store, &["rm", id, "--domain", "d1"]));
    assert_eq!(stdout(&domain(&store, &["ls", "--domain", "d1"])), "");
}

#[test]
fn put_with_replace_keeps_the_id() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let file = work.path().join("a");
    std::fs::write(&file, b"first").unwrap();
    let put = stdout(&domain(
        &store,
        &[
            "put",
            file.to_str().unwrap(),
            "--domain",
            "d",
            "--name",
            "a",
            "--type",
            "t",
        ],
    ));
    let id = put.split(' ').next().unwrap().to_owned();
    std::fs::write(&file, b"second").unwrap();
    let args = [
        "put",
        file.to_str().unwrap(),
        "--domain",
        "d",
        "--name",
        "a",
        "--type",
        "t",
        "--replace",
        &id,
    ];
    let replaced = stdout(&domain(&store, &args));
    assert_eq!(replaced.trim(), format!("{id} {}", root_of(b"second")));
}

#[test]
fn failures_are_one_line_and_a_non_zero_exit() {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let out = work.path().join("never");
    for args in [
        &[
            "get",
            "no-such-id",
            "--domain",
            "d",
            "-o",
            out.to_str().unwrap(),
        ][..],
        &["rm", "no-such-id", "--domain", "d"],
        &[
            "put",
            "/no/such/file",
            "--domain",
            "d",
            "--name",
            "n",
            "--type",
            "t",
        ],
        &["ls", "--domain", "d", "--name-regex", "("],
    ] {
        let output = domain(&store, args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let err = String::from_utf8(output.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("domain: "), "{args:?}: {err}");
    }
    assert!(!out.exists());
    let bad_domain = domain(&store, &["ls", "--domain", "../etc"]);
    assert!(!bad_domain.status.success());
}
