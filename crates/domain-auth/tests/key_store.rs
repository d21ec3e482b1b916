//! The domain key store: file modes, persistence, refusal of exposed keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use domain_auth::{DomainKeyStore, Expected, KeyStoreError, TaskClaims, TokenError, verify};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn open_creates_the_folder_with_mode_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/keys");
    let store = DomainKeyStore::open(&dir).unwrap();
    assert_eq!(store.dir(), dir);
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn a_key_is_created_on_first_use_as_a_0600_file_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DomainKeyStore::open(tmp.path().join("keys")).unwrap();
    let key = store.key("domain-a").unwrap();
    let path = store.key_path("domain-a");
    assert_eq!(mode(&path), 0o600);
    let pem = fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    // No temporary file is left beside it.
    let entries: Vec<_> = fs::read_dir(store.dir()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(key.domain_id(), "domain-a");
}

#[test]
fn the_same_domain_gets_the_same_key_across_calls_and_reopens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let first = DomainKeyStore::open(&dir)
        .unwrap()
        .key("d")
        .unwrap()
        .public_key();
    let store = DomainKeyStore::open(&dir).unwrap();
    assert_eq!(store.key("d").unwrap().public_key(), first);
    assert_eq!(store.key("d").unwrap().public_key(), first);
    assert_ne!(store.key("other").unwrap().public_key(), first);
}

#[test]
fn a_key_issued_by_a_reopened_store_verifies_with_the_first_public_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let public = DomainKeyStore::open(&dir)
        .unwrap()
        .key("d")
        .unwrap()
        .public_key();
    let key = DomainKeyStore::open(&dir).unwrap().key("d").unwrap();
    let now = SystemTime::now();
    let claims = TaskClaims::new(
        "d",
        "j",
        "t",
        "s",
        "r",
        "/store/v1",
        now,
        Duration::from_secs(60),
    );
    let token = key.issue(&claims).unwrap();
    let expected = Expected {
        domain_id: "d",
        receiver: "r",
        sender: "s",
        endpoint: "/store/v1",
    };
    assert_eq!(verify(&token, &public, &expected, now).unwrap(), claims);
}

#[test]
fn a_folder_that_group_or_others_can_enter_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    let err = DomainKeyStore::open(&dir).unwrap_err();
    assert!(
        matches!(err, KeyStoreError::InsecureFolder { mode: 0o755, .. }),
        "{err}"
    );
}

#[test]
fn a_key_file_that_others_can_read_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let path = {
        let store = DomainKeyStore::open(&dir).unwrap();
        store.key("d").unwrap();
        store.key_path("d")
    };
    for exposed in [0o644, 0o640, 0o604, 0o620] {
        chmod(&path, exposed);
        let err = DomainKeyStore::open(&dir).unwrap().key("d").unwrap_err();
        assert!(
            matches!(err, KeyStoreError::InsecureKeyFile { mode, .. } if mode == exposed),
            "{err}"
        );
    }
}

#[test]
fn a_key_file_holding_no_key_is_refused_as_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DomainKeyStore::open(tmp.path().join("keys")).unwrap();
    let path = store.key_path("d");
    fs::write(&path, "not a key").unwrap();
    chmod(&path, 0o600);
    assert!(matches!(store.key("d"), Err(KeyStoreError::Corrupt { .. })));
    fs::write(&path, vec![b'A'; 10_000]).unwrap();
    assert!(matches!(store.key("d"), Err(KeyStoreError::Corrupt { .. })));
}

#[test]
fn ids_that_are_not_domain_ids_get_no_key_and_never_become_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DomainKeyStore::open(tmp.path().join("keys")).unwrap();
    for id in [
        "../escape",
        "/etc/passwd",
        "a/b",
        "..",
        "\u{0}",
        "",
        "my lab",
    ] {
        assert!(
            matches!(store.key(id), Err(KeyStoreError::InvalidDomainId(_))),
            "{id:?}"
        );
        // A key file is named by the id's hash, whatever the id.
        assert_eq!(store.key_path(id).parent().unwrap(), store.dir(), "{id:?}");
    }
    assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 0);
    assert!(!tmp.path().join("escape").exists());
}

#[test]
fn a_key_refuses_to_sign_claims_of_another_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DomainKeyStore::open(tmp.path().join("keys")).unwrap();
    let key = store.key("a").unwrap();
    let claims = TaskClaims::new(
        "b",
        "j",
        "t",
        "s",
        "r",
        "/store/v1",
        SystemTime::now(),
        Duration::from_secs(1),
    );
    assert!(matches!(
        key.issue(&claims),
        Err(TokenError::DomainMismatch { .. })
    ));
}

#[test]
fn debug_of_the_store_and_its_keys_never_prints_the_private_key() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DomainKeyStore::open(tmp.path().join("keys")).unwrap();
    let key = store.key("d").unwrap();
    let pem = fs::read_to_string(store.key_path("d")).unwrap();
    let secret_line = pem.lines().nth(1).unwrap();
    let shown = format!("{store:?} {key:?} {key:#?}");
    assert!(!shown.contains(secret_line), "{shown}");
}

#[test]
fn a_key_exported_from_one_store_and_imported_into_another_signs_tokens_the_first_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let first = DomainKeyStore::open(tmp.path().join("first")).unwrap();
    let second = DomainKeyStore::open(tmp.path().join("second")).unwrap();
    let public = first.key("d").unwrap().public_key();
    let pem = first.export("d").unwrap();
    let imported = second.import("d", &pem).unwrap();
    assert_eq!(imported.public_key(), public);
    assert_eq!(mode(&second.key_path("d")), 0o600);
    // A reopened store reads the imported key from its file.
    let key = DomainKeyStore::open(tmp.path().join("second"))
        .unwrap()
        .key("d")
        .unwrap();
    let now = SystemTime::now();
    let claims = TaskClaims::new(
        "d",
        "j",
        "t",
        "s",
        "r",
        "/load/v1",
        now,
        Duration::from_secs(60),
    );
    let expected = Expected {
        domain_id: "d",
        receiver: "r",
        sender: "s",
        endpoint: "/load/v1",
    };
    let token = key.issue(&claims).unwrap();
    assert_eq!(verify(&token, &public, &expected, now).unwrap(), claims);
    // Importing the same key again changes nothing.
    assert_eq!(second.import("d", &pem).unwrap().public_key(), public);
}

#[test]
fn an_import_never_replaces_another_key_nor_takes_what_is_no_key() {
    let tmp = tempfile::tempdir().unwrap();
    let first = DomainKeyStore::open(tmp.path().join("first")).unwrap();
    let second = DomainKeyStore::open(tmp.path().join("second")).unwrap();
    first.key("d").unwrap();
    let own = second.key("d").unwrap().public_key();
    let foreign = first.export("d").unwrap();
    assert!(matches!(
        second.import("d", &foreign),
        Err(KeyStoreError::KeyExists { .. })
    ));
    assert_eq!(second.key("d").unwrap().public_key(), own);
    assert!(matches!(
        second.import(
            "e",
            "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"
        ),
        Err(KeyStoreError::NotAKey { .. })
    ));
    assert!(!second.key_path("e").exists());
    assert!(matches!(
        second.export("absent"),
        Err(KeyStoreError::NoKey { .. })
    ));
    assert!(matches!(
        second.import("../x", &foreign),
        Err(KeyStoreError::InvalidDomainId(_))
    ));
}
