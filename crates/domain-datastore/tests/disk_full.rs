//! A store whose file system fills up: writes fail with a clear error while it is full,
//! and the store carries on once there is room again, without being opened again (redb
//! refuses every transaction after an I/O error until its database is reopened, which the
//! commit worker does). Runs on a small tmpfs the test mounts, so as root only; it says in
//! one line that it skips elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use domain_datastore::{Datastore as _, DatastoreError, LocalDatastore};
use domain_proto::DomainId;
use domain_proto::domain_data::UpsertMetadata;

/// A tmpfs mounted at a folder, unmounted when dropped.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path) -> Option<Self> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !mounted.status.success() {
            println!(
                "skipped: cannot mount a tmpfs here ({})",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            return None;
        }
        Some(Self(dir))
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn item(name: &str, size: usize) -> UpsertMetadata {
    UpsertMetadata {
        name: name.into(),
        data_type: "bin".into(),
        size: u32::try_from(size).unwrap(),
        is_new: true,
        ..UpsertMetadata::default()
    }
}

#[tokio::test]
async fn a_store_whose_disk_filled_carries_on_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(dir.path()) else {
        return;
    };
    let store = LocalDatastore::open(dir.path().join("store"))
        .await
        .unwrap();
    let domain = DomainId::new("full").unwrap();
    let kept = store
        .put(&domain, item("kept", 1000), &[1u8; 1000][..])
        .await
        .unwrap();
    let doomed = store
        .put(&domain, item("doomed", 1000), &[2u8; 1000][..])
        .await
        .unwrap();

    // Another program takes every byte left.
    let filler_path = dir.path().join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while filler.write_all(&block).is_ok() {}
    while filler.write_all(&block[..512]).is_ok() {}
    drop(filler);

    // Full: a put fails with a clear error, and so may a delete (its commit needs room).
    let refused = store
        .put(&domain, item("refused", 100_000), &[3u8; 100_000][..])
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("space")
            || matches!(refused, DatastoreError::Io { .. } | DatastoreError::Db(_)),
        "{refused}"
    );
    let _ = store.delete(&domain, &doomed.id).await;

    // Room again: the same store takes writes, and every item is as it was.
    std::fs::remove_file(&filler_path).unwrap();
    store
        .delete(&domain, &doomed.id)
        .await
        .or_else(|e| match e {
            DatastoreError::NotFound { .. } => Ok(()),
            e => Err(e),
        })
        .unwrap();
    let after = store
        .put(&domain, item("after", 1000), &[4u8; 1000][..])
        .await
        .unwrap();
    let (metadata, _) = store.get(&domain, &kept.id).await.unwrap();
    assert_eq!(metadata.hash, kept.hash);
    store.get(&domain, &after.id).await.unwrap();
    assert!(matches!(
        store.get(&domain, &doomed.id).await,
        Err(DatastoreError::NotFound { .. })
    ));
}
