//! The operator's state (domains, allow-lists, public keys, admissions, invites) in each
//! store a manager keeps it in: its data folder, and etcd shared by several managers. One
//! suite runs on both; etcd is Debian's `etcd-server`, started on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use domain_auth::DomainKeyStore;
use domain_cluster::PeerId;
use domain_etcd::{Etcd, LocalEtcd};
use domain_manager::config::keys_dir;
use domain_manager::{
    Admission, ConfigError, ControlStore, JoinRefusal, create_domain_in, create_invite_in,
};

fn private_dir(parent: &Path, name: &str) -> std::path::PathBuf {
    let dir = parent.join(name);
    domain_auth::create_private_dir(&dir).unwrap();
    dir
}

/// What a running manager and its operator's commands see of one store, as behaviours.
async fn admissions_suite(store: ControlStore) {
    let (node, other, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
    // A running manager's view, and the commands that change the store under it.
    let admission = Admission::load(store.clone(), BTreeSet::new(), false)
        .await
        .unwrap();
    assert_eq!(
        admission.check_join(&node, None).await,
        Err(JoinRefusal::NotAdmitted { peer: node })
    );
    store
        .update_nodes(|file| (file.admit(&node), ()))
        .await
        .unwrap();
    assert!(admission.check_join(&node, None).await.is_ok());

    // An invite admits one peer once, whichever manager it is presented to.
    let invite = create_invite_in(&store, Duration::from_secs(600))
        .await
        .unwrap();
    let second_manager = Admission::load(store.clone(), BTreeSet::new(), false)
        .await
        .unwrap();
    assert!(
        second_manager
            .check_join(&other, Some(&invite))
            .await
            .is_ok()
    );
    assert_eq!(
        admission.check_join(&stranger, Some(&invite)).await,
        Err(JoinRefusal::BadInvite { peer: stranger })
    );
    assert!(admission.check_join(&other, None).await.is_ok());

    // A revocation reaches the running manager at the node's next join, named once.
    let revoked = store
        .update_nodes(|file| {
            let removed = file.revoke(&node);
            (removed, removed)
        })
        .await
        .unwrap();
    assert!(revoked);
    assert_eq!(admission.reload().await.unwrap(), vec![node]);
    assert!(admission.check_join(&node, None).await.is_err());
    let mut admitted = store.admitted().await.unwrap();
    admitted.sort();
    assert_eq!(admitted, vec![other.to_string()]);
}

#[tokio::test]
async fn admissions_and_invites_behave_the_same_in_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    admissions_suite(ControlStore::Folder(private_dir(dir.path(), "manager"))).await;
}

#[tokio::test]
async fn admissions_and_invites_behave_the_same_in_etcd() {
    let etcd = LocalEtcd::start().await.unwrap();
    let store = ControlStore::Etcd(Box::new(
        Etcd::connect(&etcd.config("/control-test/")).unwrap(),
    ));
    admissions_suite(store).await;
}

#[tokio::test]
async fn every_manager_on_etcd_signs_with_the_domain_key_etcd_publishes() {
    let etcd = LocalEtcd::start().await.unwrap();
    let store = ControlStore::Etcd(Box::new(
        Etcd::connect(&etcd.config("/keys-test/")).unwrap(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let (first, second, third) = (
        private_dir(dir.path(), "first"),
        private_dir(dir.path(), "second"),
        private_dir(dir.path(), "third"),
    );
    let alice = PeerId::random();
    let key = create_domain_in(&store, &first, "scans", &[alice])
        .await
        .unwrap();

    // A manager without the key is told to import it, and makes none of its own.
    let missing = create_domain_in(&store, &second, "scans", &[]).await;
    assert!(
        matches!(&missing, Err(ConfigError::NoKey { published, .. }) if *published == key.to_string()),
        "{missing:?}"
    );
    let second_keys = DomainKeyStore::open(keys_dir(&second)).unwrap();
    assert!(!second_keys.key_path("scans").exists());
    let pem = DomainKeyStore::open(keys_dir(&first))
        .unwrap()
        .export("scans")
        .unwrap();
    second_keys.import("scans", &pem).unwrap();
    let bob = PeerId::random();
    assert_eq!(
        create_domain_in(&store, &second, "scans", &[bob])
            .await
            .unwrap(),
        key
    );

    // A manager holding another key for the domain is refused, not believed.
    DomainKeyStore::open(keys_dir(&third))
        .unwrap()
        .key("scans")
        .unwrap();
    let other = create_domain_in(&store, &third, "scans", &[]).await;
    assert!(
        matches!(other, Err(ConfigError::KeyMismatch { .. })),
        "{other:?}"
    );

    // One declaration, both allow-lists.
    let domains = store.domains().await.unwrap();
    assert_eq!(domains.domain.len(), 1);
    assert_eq!(
        domains.domain[0].allow,
        vec![alice.to_string(), bob.to_string()]
    );
    assert_eq!(
        store.published_key("scans").await.unwrap(),
        Some(key.to_string())
    );
}

#[tokio::test]
async fn a_document_in_etcd_that_is_not_valid_is_refused_with_its_key() {
    let etcd = LocalEtcd::start().await.unwrap();
    let client = Etcd::connect(&etcd.config("/bad-test/")).unwrap();
    client
        .put(&client.key(b"control/nodes"), b"admitted = [\"nope\"]\n")
        .await
        .unwrap();
    let store = ControlStore::Etcd(Box::new(client));
    let error = Admission::load(store, BTreeSet::new(), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("control/nodes") && error.contains("nope"),
        "{error}"
    );
}
