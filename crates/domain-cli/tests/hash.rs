//! `domain hash`, run as the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use domain_merkle::{CHUNK_SIZE, root_of};

fn domain() -> Command {
    Command::new(env!("CARGO_BIN_EXE_domain"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path.to_str().unwrap().to_owned()
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = domain()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // Feed from another thread: the child may fill its stdout pipe before reading all input.
    let feeder = std::thread::spawn(move || input.write_all(&stdin));
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    output
}

fn stdout(output: &Output) -> &str {
    std::str::from_utf8(&output.stdout).unwrap()
}

fn stderr(output: &Output) -> &str {
    std::str::from_utf8(&output.stderr).unwrap()
}

#[test]
fn hash_prints_root_and_name_per_file_like_b3sum() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_file(dir.path(), "empty", b"");
    let small = write_file(dir.path(), "small.txt", b"hello");
    let three = pattern(2 * CHUNK_SIZE + 5, 1);
    let three_leaves = write_file(dir.path(), "three leaves.bin", &three);

    let output = domain()
        .args(["hash", &empty, &small, &three_leaves])
        .output()
        .unwrap();

    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stderr(&output), "");
    assert_eq!(
        stdout(&output),
        format!(
            "{}  {empty}\n{}  {small}\n{}  {three_leaves}\n",
            root_of(b""),
            root_of(b"hello"),
            root_of(&three)
        )
    );
}

#[test]
fn hash_streams_files_larger_than_one_batch() {
    // Three batches and a partial one, the batch edges in the middle of chunks.
    let data = pattern(3 * (1 << 20) + 12_345, 7);
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "large.bin", &data);

    let output = domain().args(["hash", &path]).output().unwrap();

    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{}  {path}\n", root_of(&data)));
}

#[test]
fn hash_without_files_reads_standard_input_named_dash() {
    let data = pattern(5 * CHUNK_SIZE + 1, 3);
    let output = run_with_stdin(&["hash"], &data);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{}  -\n", root_of(&data)));
}

#[test]
fn dash_among_files_reads_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "a", b"file bytes");
    let output = run_with_stdin(&["hash", &file, "-"], b"stdin bytes");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!(
            "{}  {file}\n{}  -\n",
            root_of(b"file bytes"),
            root_of(b"stdin bytes")
        )
    );
}

#[test]
fn missing_file_gets_one_error_line_the_others_are_still_hashed_and_the_exit_says_partly_done() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_file(dir.path(), "first", b"one");
    let missing = dir.path().join("missing").to_str().unwrap().to_owned();
    let last = write_file(dir.path(), "last", b"two");

    let output = domain()
        .args(["hash", &first, &missing, &last])
        .output()
        .unwrap();

    assert_eq!(
        output.status.code(),
        Some(i32::from(domain_cli::output::PARTLY_DONE))
    );
    assert_eq!(
        stdout(&output),
        format!(
            "{}  {first}\n{}  {last}\n",
            root_of(b"one"),
            root_of(b"two")
        )
    );
    let errors = stderr(&output);
    assert_eq!(errors.lines().count(), 1, "{errors}");
    assert!(
        errors.starts_with(&format!("domain: {missing}: ")),
        "{errors}"
    );
    assert!(errors.contains("No such file or directory"), "{errors}");
}

#[test]
fn json_gives_one_object_per_file_with_its_root_or_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "a \"quoted\"\nname", b"one");
    let missing = dir.path().join("missing").to_str().unwrap().to_owned();
    let output = domain()
        .args(["hash", "--json", &file, &missing])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(i32::from(domain_cli::output::PARTLY_DONE))
    );
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", stdout(&output));
    assert_eq!(lines[0]["path"], file.as_str());
    assert_eq!(lines[0]["root"], root_of(b"one").to_string());
    assert_eq!(lines[1]["path"], missing.as_str());
    assert!(
        lines[1]["error"].as_str().unwrap().contains("No such file"),
        "{}",
        lines[1]
    );
}

#[test]
fn a_directory_is_reported_as_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().to_str().unwrap();
    let output = domain().args(["hash", name]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    let errors = stderr(&output);
    assert!(errors.starts_with(&format!("domain: {name}: ")), "{errors}");
    assert_eq!(errors.lines().count(), 1, "{errors}");
}

#[test]
fn a_name_with_a_newline_is_escaped_and_marked_like_b3sum() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "two\nlines", b"x");
    let output = domain().args(["hash", &path]).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        format!("\\{}  {}\n", root_of(b"x"), path.replace('\n', "\\n"))
    );
}

#[test]
fn help_describes_the_commands() {
    let top = domain().arg("--help").output().unwrap();
    assert!(top.status.success());
    let top = stdout(&top);
    assert!(top.contains("hash") && top.contains("Merkle root"), "{top}");

    let hash = domain().args(["hash", "--help"]).output().unwrap();
    assert!(hash.status.success());
    let hash = stdout(&hash);
    assert!(
        hash.contains("[FILE]...") && hash.contains("standard input"),
        "{hash}"
    );
}

#[test]
fn unknown_command_is_a_usage_error() {
    let output = domain().arg("frobnicate").output().unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("frobnicate"));
}
