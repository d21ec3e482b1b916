//! An upload through the manager whose stream is cut while it sends continues on the same
//! node, after the bytes the node kept, instead of starting over on another node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use domain_client::client::{Progress, Upload};
use domain_cluster::{ClusterHandle, PeerId};
use domain_merkle::{CHUNK_SIZE, root_of};
use domain_proto::DomainId;
use domain_testkit::LocalCluster;

/// Closes the node's connections to the client once `after` bytes of the upload have
/// been read (before the client reads more), and records what the client says it
/// resumed.
#[derive(Debug)]
struct CutOnce {
    node: ClusterHandle,
    client: OnceLock<PeerId>,
    after: u64,
    seen: AtomicU64,
    cut: AtomicBool,
    resumed: Mutex<Vec<(String, u64)>>,
}

impl Progress for CutOnce {
    fn started(&self, _name: &str, _size: u64) {}

    fn advanced(&self, bytes: u64) {
        let seen = self.seen.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if seen >= self.after && !self.cut.swap(true, Ordering::Relaxed) {
            let (node, client) = (&self.node, *self.client.get().unwrap());
            // The upload goes on only once the connection is closed: the cut always lands
            // in the middle, however fast this machine sends.
            let closed = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(node.disconnect(client))
            });
            assert!(closed.unwrap());
        }
    }

    fn finished(&self, _name: &str) {}

    fn resumed(&self, name: &str, offset: u64) {
        self.resumed.lock().unwrap().push((name.to_owned(), offset));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_while_sending_continues_on_the_same_node_after_what_it_kept() {
    let cluster = LocalCluster::start().await.unwrap();
    let size = 48 << 20;
    let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let path = cluster.dir().join("scan.bin");
    std::fs::write(&path, &bytes).unwrap();
    let progress = Arc::new(CutOnce {
        node: cluster.node().cluster().clone(),
        client: OnceLock::new(),
        after: 16 << 20,
        seen: AtomicU64::new(0),
        cut: AtomicBool::new(false),
        resumed: Mutex::new(Vec::new()),
    });
    let client = cluster
        .client()
        .await
        .unwrap()
        .with_progress(progress.clone());
    progress.client.set(client.peer_id()).unwrap();
    let domain = DomainId::new("scans").unwrap();

    let stored = client
        .upload(&domain, &[Upload::file(&path, "scan", "bin")])
        .await
        .unwrap();
    assert!(progress.cut.load(Ordering::Relaxed));
    let resumed = progress.resumed.lock().unwrap().clone();
    let [(name, offset)] = &resumed[..] else {
        panic!("resumed {resumed:?}");
    };
    assert_eq!(name, "scan");
    assert!(
        *offset > 0 && *offset < size as u64,
        "resumed after {offset}"
    );
    assert_eq!(offset % CHUNK_SIZE as u64, 0);
    assert_eq!(stored[0].hash, Some(root_of(&bytes).to_string()));

    // The resumed job finished on the node, so the manager sends a download there.
    let out = cluster.dir().join("out");
    let downloads = client
        .download(&domain, &[stored[0].id.clone()], &out)
        .await
        .unwrap();
    assert!(downloads.missing.is_empty());
    assert!(std::fs::read(out.join(&stored[0].id)).unwrap() == bytes);
}
