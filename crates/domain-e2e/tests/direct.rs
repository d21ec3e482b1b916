//! A domain with an allow-list, and the `domain` command's direct forms: `--node ADDR
//! --token T` with tokens `domain-manager token issue` signs for a script.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    content, domain, domain_ok, issue_token, item_lines, manager, manager_ok, start_manager,
    start_node,
};
use domain_auth::TaskClaims;
use domain_cluster::{Multiaddr, PeerId};
use domain_merkle::root_of;
use domain_proto::protocols::{LOAD_V1, STORE_V1};

fn peer_of(addr: &str) -> PeerId {
    let addr: Multiaddr = addr.parse().unwrap();
    domain_cluster::addr::peer_of(&addr).unwrap()
}

#[test]
fn tokens_from_token_issue_open_a_node_directly_for_their_sender_and_endpoint_only() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    // As an operator would: the script's peer id from `domain id`, onto the allow-list.
    let client = domain_ok(work, &["id"]).trim().to_owned();
    let client_peer: PeerId = client.parse().unwrap();
    let again = domain_ok(work, &["id"]);
    assert_eq!(again.trim(), client, "the identity is made once");
    let manager_dir = work.join("manager").display().to_string();
    manager_ok(&[
        "domain",
        "create",
        "e2e",
        "--data-dir",
        &manager_dir,
        "--allow",
        &client,
    ]);
    let (_manager, manager) = start_manager(work, None);
    let (_node, node) = start_node(work, "node1", &manager.addr);
    let node_peer = peer_of(&node.addr).to_string();
    let token = |endpoint: &str| {
        let issued = issue_token(work, &client, &node_peer, endpoint);
        assert!(issued.status.success(), "{}", issued.stderr);
        issued.stdout.trim().to_owned()
    };
    let stranger = issue_token(work, &PeerId::random().to_string(), &node_peer, STORE_V1);
    assert!(!stranger.status.success());
    assert!(stranger.stdout.is_empty());
    assert!(
        stranger.stderr.contains("not allowed"),
        "{}",
        stranger.stderr
    );

    let claims = TaskClaims::read_unverified(&token(STORE_V1)).unwrap();
    assert_eq!(claims.sender, client_peer.to_string());
    assert_eq!(claims.receiver, node_peer);
    assert_eq!(
        claims.exp - claims.iat,
        600,
        "10 minutes unless --ttl says otherwise"
    );

    let file = work.join("scan.bin");
    let bytes = content(300_000, 9);
    std::fs::write(&file, &bytes).unwrap();
    let file_arg = file.display().to_string();
    let store_token = token(STORE_V1);
    let out = domain_ok(
        work,
        &[
            "upload",
            &file_arg,
            "--domain",
            "e2e",
            "--node",
            &node.addr,
            "--token",
            &store_token,
        ],
    );
    let uploaded = item_lines(&out);
    assert_eq!(uploaded.len(), 1);
    assert_eq!(uploaded[0].root, root_of(&bytes).to_string());

    let copies = work.join("copies").display().to_string();
    let id = uploaded[0].id.as_str();
    let download = |token: &str| {
        domain(
            work,
            &[
                "download", "--domain", "e2e", "--id", id, "--out", &copies, "--node", &node.addr,
                "--token", token,
            ],
        )
    };
    // A /store/v1 token does not open /load/v1.
    let refused = download(&store_token);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("refused"), "{}", refused.stderr);

    let loaded = download(&token(LOAD_V1));
    assert!(loaded.status.success(), "{}", loaded.stderr);
    let downloaded = item_lines(&loaded.stdout);
    assert_eq!(downloaded.len(), 1);
    assert_eq!(downloaded[0].root, uploaded[0].root);
    assert_eq!(std::fs::read(&downloaded[0].path).unwrap(), bytes);
}

#[test]
fn a_client_not_on_the_domains_allow_list_is_refused_with_the_managers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let manager_dir = work.join("manager").display().to_string();
    let someone_else = PeerId::random().to_string();
    manager_ok(&[
        "domain",
        "create",
        "e2e",
        "--data-dir",
        &manager_dir,
        "--allow",
        &someone_else,
    ]);
    let (_manager, manager) = start_manager(work, None);
    let (_node, _) = start_node(work, "node1", &manager.addr);

    let file = work.join("scan.bin");
    std::fs::write(&file, b"scan").unwrap();
    let file_arg = file.display().to_string();
    let refused = domain(
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
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
    assert!(refused.stderr.contains("not allowed"), "{}", refused.stderr);

    let unknown = domain(
        work,
        &[
            "upload",
            &file_arg,
            "--domain",
            "elsewhere",
            "--manager",
            &manager.addr,
        ],
    );
    assert!(!unknown.status.success());
    assert!(unknown.stderr.contains("elsewhere"), "{}", unknown.stderr);
}

#[test]
fn a_domain_key_exported_by_one_manager_signs_for_the_other_once_imported() {
    let dir = tempfile::tempdir().unwrap();
    let [first, second, third] =
        ["first", "second", "third"].map(|name| dir.path().join(name).display().to_string());
    let public = manager_ok(&["domain", "create", "shared", "--data-dir", &first]);
    let pem = manager_ok(&["domain", "export", "shared", "--data-dir", &first]);
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    let file = dir.path().join("shared.pem");
    std::fs::write(&file, &pem).unwrap();
    let file = file.display().to_string();
    let imported = manager_ok(&[
        "domain",
        "import",
        "shared",
        "--data-dir",
        &second,
        "--file",
        &file,
    ]);
    assert_eq!(imported, public);
    // Declaring the domain there keeps the imported key.
    assert_eq!(
        manager_ok(&["domain", "create", "shared", "--data-dir", &second]),
        public
    );

    // A manager whose domain has a key of its own keeps it.
    manager_ok(&["domain", "create", "shared", "--data-dir", &third]);
    let refused = manager(&[
        "domain",
        "import",
        "shared",
        "--data-dir",
        &third,
        "--file",
        &file,
    ]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("another key"), "{}", refused.stderr);
}
