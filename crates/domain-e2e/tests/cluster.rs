//! The real binaries on loopback: a manager, two nodes, and the `domain` command uploading,
//! listing and downloading through them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{
    content, domain, domain_ok, download_args, item_lines, start_manager, start_node, upload_bytes,
};
use domain_merkle::{CHUNK_SIZE, root_of};

#[test]
fn files_uploaded_through_the_manager_come_back_byte_for_byte_with_their_roots() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (_manager, manager) = start_manager(work, None);
    let (_node1, _) = start_node(work, "node1", &manager.addr);
    let (_node2, _) = start_node(work, "node2", &manager.addr);

    // A file of several chunks that ends mid-chunk, and a folder with an empty file,
    // a one-chunk file and a chunk-and-a-byte file.
    let big = work.join("scan.bin");
    std::fs::write(&big, content(3 * 1024 * 1024 + 11, 1)).unwrap();
    let folder = work.join("folder");
    std::fs::create_dir(&folder).unwrap();
    let small = [("empty.txt", 0), ("pose.json", 7168), ("mesh.obj", 7169)];
    for (seed, (name, len)) in small.iter().enumerate() {
        std::fs::write(folder.join(name), content(*len, seed as u8 + 2)).unwrap();
    }

    let mut uploaded = BTreeMap::new();
    let big_arg = big.display().to_string();
    let out = domain_ok(
        work,
        &[
            "upload",
            &big_arg,
            "--domain",
            "e2e",
            "--manager",
            &manager.addr,
        ],
    );
    uploaded.extend(item_lines(&out).into_iter().map(|l| (l.id.clone(), l)));
    let small_args: Vec<String> = small
        .iter()
        .map(|(n, _)| folder.join(n).display().to_string())
        .collect();
    let mut args = vec!["upload"];
    args.extend(small_args.iter().map(String::as_str));
    args.extend(["--domain", "e2e", "--manager", &manager.addr]);
    let out = domain_ok(work, &args);
    uploaded.extend(item_lines(&out).into_iter().map(|l| (l.id.clone(), l)));
    assert_eq!(
        uploaded.len(),
        4,
        "one line per file, distinct ids: {uploaded:?}"
    );
    for line in uploaded.values() {
        let bytes = std::fs::read(&line.path).unwrap();
        assert_eq!(
            line.root,
            root_of(&bytes).to_string(),
            "root of {}",
            line.path.display()
        );
    }

    // Every listed item is one we uploaded, with its root.
    let listing = domain_ok(
        work,
        &["list", "--domain", "e2e", "--manager", &manager.addr],
    );
    assert!(
        !listing.is_empty(),
        "the node the manager picked lists nothing"
    );
    for line in listing.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let uploaded_line = &uploaded[fields[0]];
        assert_eq!(fields[1], uploaded_line.root);
    }

    let copies = work.join("copies");
    let copies_arg = copies.display().to_string();
    let mut args = vec![
        "download",
        "--domain",
        "e2e",
        "--manager",
        &manager.addr,
        "--out",
        &copies_arg,
    ];
    for id in uploaded.keys() {
        args.extend(["--id", id]);
    }
    let out = domain_ok(work, &args);
    let downloaded = item_lines(&out);
    assert_eq!(downloaded.len(), uploaded.len());
    for line in &downloaded {
        let original = &uploaded[&line.id];
        assert_eq!(line.root, original.root);
        assert_eq!(line.path, copies.join(&line.id), "written as <out>/<id>");
        assert_eq!(
            std::fs::read(&line.path).unwrap(),
            std::fs::read(&original.path).unwrap()
        );
    }
    let mut names: Vec<_> = std::fs::read_dir(&copies)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let ids: Vec<_> = uploaded.keys().map(std::ffi::OsString::from).collect();
    assert_eq!(names, ids, "nothing but the items in the output folder");

    // A file that was there is not replaced: the user edited one copy meanwhile.
    let (id, _) = uploaded.iter().next().unwrap();
    let edited = copies.join(id);
    std::fs::write(&edited, b"edited by hand").unwrap();
    let again = domain(work, &args);
    assert!(!again.status.success(), "{}", again.stdout);
    assert!(
        again.stderr.contains("is not replaced") && again.stderr.contains("--overwrite"),
        "{}",
        again.stderr
    );
    assert_eq!(std::fs::read(&edited).unwrap(), b"edited by hand");
    args.push("--overwrite");
    domain_ok(work, &args);
    assert_eq!(
        std::fs::read(&edited).unwrap(),
        std::fs::read(&uploaded[id].path).unwrap()
    );
}

#[test]
fn downloading_an_unknown_id_fails_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (_manager, manager) = start_manager(work, None);
    let (_node, _) = start_node(work, "node1", &manager.addr);
    let copies = work.join("copies").display().to_string();
    let output = domain(
        work,
        &[
            "download",
            "--domain",
            "e2e",
            "--id",
            "no-such-item",
            "--manager",
            &manager.addr,
            "--out",
            &copies,
        ],
    );
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "{}", output.stdout);
    assert!(output.stderr.contains("no-such-item"), "{}", output.stderr);
}

/// The names of two nodes to start in `work`: the one the manager assigns a task first
/// when both are idle, and the other, which should hold the data so that the task goes
/// to a node without it.
fn holder_and_first_pick(work: &std::path::Path) -> (String, String) {
    // The scheduler breaks ties by the smaller node id.
    let mut nodes: Vec<(String, String)> = ["node1", "node2"]
        .iter()
        .map(|name| {
            let identity = domain_node::node_identity(&work.join(name)).unwrap();
            (identity.peer_id().to_string(), (*name).to_owned())
        })
        .collect();
    nodes.sort();
    (nodes[0].1.clone(), nodes[1].1.clone())
}

#[test]
fn a_download_finds_items_on_a_node_other_than_the_one_the_manager_picks() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (other, holder) = holder_and_first_pick(work);

    let (_manager, manager) = start_manager(work, None);
    let (_holder, _) = start_node(work, &holder, &manager.addr);
    let file = work.join("scan.bin");
    let bytes = content(200_000, 5);
    std::fs::write(&file, &bytes).unwrap();
    let file_arg = file.display().to_string();
    let out = domain_ok(
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
    let uploaded = item_lines(&out);

    let (_other, _) = start_node(work, &other, &manager.addr);
    let copies = work.join("copies");
    let copies_arg = copies.display().to_string();
    let out = domain_ok(
        work,
        &[
            "download",
            "--domain",
            "e2e",
            "--id",
            &uploaded[0].id,
            "--manager",
            &manager.addr,
            "--out",
            &copies_arg,
        ],
    );
    let downloaded = item_lines(&out);
    assert_eq!(downloaded.len(), 1);
    assert_eq!(downloaded[0].root, uploaded[0].root);
    assert_eq!(std::fs::read(&downloaded[0].path).unwrap(), bytes);
}

#[test]
fn a_download_cut_part_way_continues_from_the_last_whole_chunk_of_its_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (_manager, manager) = start_manager(work, None);
    let (_node, _) = start_node(work, "node1", &manager.addr);
    let bytes = content(40 * CHUNK_SIZE + 123, 9);
    let uploaded = upload_bytes(work, &manager.addr, "scan.bin", &bytes);

    // What a cut transfer leaves: the partial file, 25 chunks and a piece of the next.
    let copies = work.join("copies");
    std::fs::create_dir(&copies).unwrap();
    let held = 25 * CHUNK_SIZE + 1000;
    let partial = copies.join(format!(".{}.part", uploaded.id));
    std::fs::write(&partial, &bytes[..held]).unwrap();
    let copies_arg = copies.display().to_string();
    let out = domain_ok(
        work,
        &download_args(&uploaded.id, &manager.addr, &copies_arg),
    );
    let downloaded = item_lines(&out);
    assert_eq!(downloaded[0].root, uploaded.root);
    assert_eq!(std::fs::read(&downloaded[0].path).unwrap(), bytes);
    assert!(!partial.exists());

    // The node sent the item from the 25th chunk on, not from byte 0.
    let log = std::fs::read_to_string(work.join("node1.log")).unwrap();
    let sent_again = bytes.len() - 25 * CHUNK_SIZE;
    assert!(
        log.lines().any(|line| line.contains("/load/v1")
            && line.contains("task stream done")
            && line.contains(&format!("bytes={sent_again}"))),
        "{log}"
    );
}

#[test]
fn a_partial_file_that_does_not_match_the_item_is_discarded_and_the_item_downloaded_whole() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (_manager, manager) = start_manager(work, None);
    let (_node, _) = start_node(work, "node1", &manager.addr);
    let bytes = content(4 * CHUNK_SIZE, 3);
    let uploaded = upload_bytes(work, &manager.addr, "scan.bin", &bytes);

    let copies = work.join("copies");
    std::fs::create_dir(&copies).unwrap();
    let partial = copies.join(format!(".{}.part", uploaded.id));
    let mut damaged = bytes[..2 * CHUNK_SIZE].to_vec();
    damaged[100] ^= 0xff;
    std::fs::write(&partial, &damaged).unwrap();
    let copies_arg = copies.display().to_string();
    let output = domain(
        work,
        &download_args(&uploaded.id, &manager.addr, &copies_arg),
    );
    assert!(output.status.success(), "{}", output.stderr);
    assert!(
        output.stderr.contains("did not match its item"),
        "{}",
        output.stderr
    );
    let downloaded = item_lines(&output.stdout);
    assert_eq!(downloaded[0].root, uploaded.root);
    assert_eq!(std::fs::read(&downloaded[0].path).unwrap(), bytes);
    assert!(!partial.exists());

    // The root check failed over the resumed half; the node then sent the whole item,
    // on the same task, without a job of its own.
    let log = std::fs::read_to_string(work.join("node1.log")).unwrap();
    assert!(
        log.lines().any(|line| line.contains("/load/v1")
            && line.contains("task stream done")
            && line.contains(&format!("bytes={}", bytes.len()))),
        "{log}"
    );
}

#[test]
fn rm_removes_items_from_the_node_that_holds_them_and_names_ids_no_node_holds() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (other, holder) = holder_and_first_pick(work);
    let (_manager, manager) = start_manager(work, None);
    let (_holder, _) = start_node(work, &holder, &manager.addr);
    let gone = upload_bytes(work, &manager.addr, "gone.bin", &content(20_000, 1));
    let kept = upload_bytes(work, &manager.addr, "kept.bin", &content(100, 2));
    // The delete's first task goes to this node, which holds nothing.
    let (_other, _) = start_node(work, &other, &manager.addr);

    let args = [
        "rm",
        "--domain",
        "e2e",
        "--id",
        &gone.id,
        "--id",
        "no-such-item",
        "--manager",
        &manager.addr,
    ];
    let output = domain(work, &args);
    assert!(!output.status.success(), "{}", output.stderr);
    assert_eq!(output.stdout.trim(), gone.id);
    assert!(output.stderr.contains("no-such-item"), "{}", output.stderr);

    let listing = domain_ok(work, &["ls", "--domain", "e2e", "--manager", &manager.addr]);
    let listed: Vec<&str> = listing
        .lines()
        .map(|line| line.split('\t').next().unwrap())
        .collect();
    assert_eq!(listed, [kept.id.as_str()]);
    let log = std::fs::read_to_string(work.join(format!("{holder}.log"))).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("/delete/v1") && line.contains("items=1")),
        "{log}"
    );
}
