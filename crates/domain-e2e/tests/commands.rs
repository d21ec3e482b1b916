//! The `domain` command as a person uses it, on a loopback cluster of the real binaries:
//! folders and properties on upload, downloads by query, `ls`, `watch`, `jobs`, `key`, and
//! the same commands for scripts (`--json`, exit statuses).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{READY, binary, content, domain, domain_ok, item_lines, start_manager, start_node};
use domain_auth::DomainKeyStore;
use domain_e2e::Process;
use domain_merkle::root_of;

/// Fields of one `domain ls` line: id, root, size, data type, name.
fn listing(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}

#[test]
fn a_folder_upload_is_found_again_by_name_type_and_regex_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (_manager, manager) = start_manager(work, None);
    let (_node1, _) = start_node(work, "node1", &manager.addr);
    let (_node2, _) = start_node(work, "node2", &manager.addr);

    let scans = work.join("scans");
    std::fs::create_dir_all(scans.join("room")).unwrap();
    std::fs::write(scans.join("hall.ply"), content(20_000, 1)).unwrap();
    std::fs::write(scans.join("room/desk.ply"), content(7168, 2)).unwrap();
    std::fs::write(scans.join("room/pose.json"), content(100, 3)).unwrap();
    let scans_arg = scans.display().to_string();
    let out = domain_ok(
        work,
        &[
            "upload",
            &scans_arg,
            "--domain",
            "e2e",
            "--prop",
            "site=lab",
            "--manager",
            &manager.addr,
        ],
    );
    let uploaded = item_lines(&out);
    assert_eq!(uploaded.len(), 3, "every file under the folder: {out}");
    // A second upload, which the manager may place on the other node.
    let single = work.join("extra.obj");
    std::fs::write(&single, content(9000, 4)).unwrap();
    let single_arg = single.display().to_string();
    let out = domain_ok(
        work,
        &[
            "upload",
            &single_arg,
            "--domain",
            "e2e",
            "--manager",
            &manager.addr,
        ],
    );
    let extra = item_lines(&out).remove(0);

    let all = listing(&domain_ok(
        work,
        &["ls", "--domain", "e2e", "--manager", &manager.addr],
    ));
    let names: BTreeSet<&str> = all.iter().map(|f| f[4].as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["hall.ply", "room/desk.ply", "room/pose.json", "extra.obj"]),
        "ls lists every node's items, folder files named by their inner path"
    );

    let by_type = listing(&domain_ok(
        work,
        &[
            "ls",
            "--domain",
            "e2e",
            "--type",
            "ply",
            "--manager",
            &manager.addr,
        ],
    ));
    assert_eq!(by_type.len(), 2);

    let copies = work.join("copies");
    let copies_arg = copies.display().to_string();
    let out = domain_ok(
        work,
        &[
            "download",
            "--domain",
            "e2e",
            "--name-re",
            "^room/",
            "--out",
            &copies_arg,
            "--manager",
            &manager.addr,
        ],
    );
    let downloaded = item_lines(&out);
    let got: BTreeSet<&str> = downloaded.iter().map(|l| l.id.as_str()).collect();
    let want: BTreeSet<&str> = uploaded
        .iter()
        .filter(|l| l.path.starts_with(scans.join("room")))
        .map(|l| l.id.as_str())
        .collect();
    assert_eq!(got, want);
    for line in &downloaded {
        let original = uploaded.iter().find(|u| u.id == line.id).unwrap();
        let bytes = std::fs::read(&line.path).unwrap();
        assert_eq!(bytes, std::fs::read(&original.path).unwrap());
        assert_eq!(root_of(&bytes).to_string(), line.root);
    }

    let out = domain_ok(
        work,
        &[
            "download",
            "--domain",
            "e2e",
            "--name",
            "extra.obj",
            "--out",
            &copies_arg,
            "--manager",
            &manager.addr,
        ],
    );
    assert_eq!(
        item_lines(&out)[0].id,
        extra.id,
        "found on whichever node holds it"
    );

    let out = domain_ok(
        work,
        &[
            "download",
            "--domain",
            "e2e",
            "--type-re",
            "^js",
            "--metadata-only",
            "--out",
            &copies_arg,
            "--manager",
            &manager.addr,
        ],
    );
    let only = listing(&out);
    assert_eq!(only.len(), 1);
    assert_eq!(only[0][4], "room/pose.json");
    assert_eq!(
        std::fs::read_dir(&copies).unwrap().count(),
        3,
        "--metadata-only writes nothing"
    );
}

#[test]
fn watch_prints_items_stored_after_it_started_and_ends_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (_manager, manager) = start_manager(work, None);
    let (_node1, _) = start_node(work, "node1", &manager.addr);
    let before = work.join("before.bin");
    std::fs::write(&before, content(5000, 1)).unwrap();
    let before_arg = before.display().to_string();
    let first = item_lines(&domain_ok(
        work,
        &[
            "upload",
            &before_arg,
            "--domain",
            "e2e",
            "--manager",
            &manager.addr,
        ],
    ))
    .remove(0);

    let identity = work
        .join("client")
        .join("identity.key")
        .display()
        .to_string();
    let mut watch = Process::spawn(
        "domain watch",
        &binary("domain"),
        [
            "watch",
            "--domain",
            "e2e",
            "--manager",
            &manager.addr,
            "--identity",
            &identity,
        ],
        &work.join("watch.log"),
    )
    .unwrap();
    let line = watch.next_line(READY).expect("the stored item, first");
    assert!(line.starts_with(&first.id), "{line}");

    let after = work.join("after.bin");
    std::fs::write(&after, content(70_000, 2)).unwrap();
    let after_arg = after.display().to_string();
    let second = item_lines(&domain_ok(
        work,
        &[
            "upload",
            &after_arg,
            "--domain",
            "e2e",
            "--manager",
            &manager.addr,
        ],
    ))
    .remove(0);
    let line = watch.next_line(READY).expect("the new item, live");
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(
        fields[..3],
        [second.id.as_str(), second.root.as_str(), "70000"]
    );

    let status = watch
        .terminate(Duration::from_secs(20))
        .expect("watch exits");
    assert!(status.success(), "{status}: {}", watch.log_tail());
}

#[test]
fn jobs_lists_each_upload_with_its_task_and_key_prints_the_domain_key() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (_manager, manager) = start_manager(work, None);
    let (_node1, node) = start_node(work, "node1", &manager.addr);
    let file = work.join("scan.ply");
    std::fs::write(&file, content(1000, 1)).unwrap();
    let file_arg = file.display().to_string();
    domain_ok(
        work,
        &[
            "upload",
            &file_arg,
            "--domain",
            "e2e",
            "--manager",
            &manager.addr,
        ],
    );

    let jobs = domain_ok(work, &["jobs", "--manager", &manager.addr]);
    let node_id = node.addr.rsplit('/').next().unwrap();
    assert!(
        jobs.lines()
            .any(|l| l.contains("  upload  ") && l.contains(&format!("upload:DONE@{node_id}"))),
        "{jobs}"
    );

    let key = domain_ok(
        work,
        &["key", "--domain", "e2e", "--manager", &manager.addr],
    );
    let expected = DomainKeyStore::open(work.join("manager").join("keys"))
        .unwrap()
        .key("e2e")
        .unwrap()
        .public_key();
    assert_eq!(key.trim(), hex_of(expected.as_bytes()));

    let unknown = domain(
        work,
        &["key", "--domain", "nobody", "--manager", &manager.addr],
    );
    assert!(!unknown.status.success());
    // One line for the error (logs, when RUST_LOG asks for them, are not the command's).
    let errors = unknown
        .stderr
        .lines()
        .filter(|l| l.starts_with("domain: "))
        .count();
    assert_eq!(errors, 1, "{}", unknown.stderr);
}

/// The JSON objects of a command's standard output, one per line.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

#[test]
fn with_json_every_command_prints_one_object_per_line_and_a_partial_download_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (_manager, manager) = start_manager(work, None);
    let (_node1, node) = start_node(work, "node1", &manager.addr);
    let node_id = node.addr.rsplit('/').next().unwrap();
    let file = work.join("scan.ply");
    let bytes = content(12_345, 7);
    std::fs::write(&file, &bytes).unwrap();
    let file_arg = file.display().to_string();
    let manager_args = ["--domain", "e2e", "--manager", manager.addr.as_str()];

    let uploaded = json_lines(&domain_ok(
        work,
        &[
            &["upload", &file_arg, "--json", "--prop", "site=lab"][..],
            &manager_args,
        ]
        .concat(),
    ));
    assert_eq!(uploaded.len(), 1);
    let item = &uploaded[0];
    let id = item["id"].as_str().unwrap().to_owned();
    assert_eq!(item["name"], "scan.ply");
    assert_eq!(item["data_type"], "ply");
    assert_eq!(item["size"], 12_345);
    assert_eq!(item["hash"], root_of(&bytes).to_string());
    assert_eq!(item["properties"]["site"], "lab");
    assert_eq!(item["path"], file_arg.as_str());

    let listed = json_lines(&domain_ok(
        work,
        &[&["ls", "--json"][..], &manager_args].concat(),
    ));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["properties"]["site"], "lab");
    assert!(listed[0].get("path").is_none(), "a listing moves no file");

    let copies = work.join("copies").display().to_string();
    let partial = domain(
        work,
        &[
            &[
                "download", "--json", "--out", &copies, "--id", &id, "--id", "absent",
            ][..],
            &manager_args,
        ]
        .concat(),
    );
    assert_eq!(
        partial.status.code(),
        Some(i32::from(domain_cli::output::PARTLY_DONE)),
        "{}",
        partial.stderr
    );
    let lines = json_lines(&partial.stdout);
    assert_eq!(lines.len(), 2, "{}", partial.stdout);
    assert_eq!(lines[0]["id"], id.as_str());
    let path = lines[0]["path"].as_str().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);
    assert_eq!(lines[1]["id"], "absent");
    assert!(lines[1]["error"].as_str().unwrap().contains("not found"));
    assert!(partial.stderr.contains("absent"), "{}", partial.stderr);
    let none_found = domain(
        work,
        &[
            &["download", "--out", &copies, "--id", "absent"][..],
            &manager_args,
        ]
        .concat(),
    );
    assert_eq!(
        none_found.status.code(),
        Some(1),
        "nothing done is a failure"
    );

    let jobs = json_lines(&domain_ok(
        work,
        &["jobs", "--json", "--manager", &manager.addr],
    ));
    let upload = jobs
        .iter()
        .find(|job| job["name"] == "upload")
        .unwrap_or_else(|| panic!("{jobs:?}"));
    let task = &upload["tasks"][0];
    assert_eq!(task["status"], "DONE");
    assert_eq!(task["receiver"], node_id);
    assert_eq!(task["endpoint"], "/store/v1");
    assert!(
        jobs.iter()
            .all(|job| !job.to_string().contains("access_token")),
        "no token is ever printed"
    );

    let identity = work
        .join("client")
        .join("identity.key")
        .display()
        .to_string();
    let mut watch = Process::spawn(
        "domain watch",
        &binary("domain"),
        [
            &["watch", "--json", "--identity", &identity][..],
            &manager_args,
        ]
        .concat(),
        &work.join("watch.log"),
    )
    .unwrap();
    let line = watch.next_line(READY).expect("the stored item");
    let watched: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(watched["id"], id.as_str());
    assert_eq!(watched["hash"], root_of(&bytes).to_string());
    let status = watch
        .terminate(Duration::from_secs(20))
        .expect("watch exits");
    assert!(status.success(), "{status}: {}", watch.log_tail());
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
