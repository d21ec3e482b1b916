//! Shared set-up of the capability tests: a real local datastore in a temp dir, a
//! domain key, and tokens for the two peers of a stream.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use domain_auth::{DomainKey, TaskClaims};
use domain_capabilities::{
    CapabilityError, Limits, StaticKeys, StoreSummary, StreamInfo, serve_store,
};
use domain_datastore::LocalDatastore;
use domain_proto::DomainId;
use domain_proto::domain_data::UpsertMetadata;

pub const DOMAIN: &str = "domain-1";
pub const SENDER: &str = "12D3KooWSenderPeer";
pub const RECEIVER: &str = "12D3KooWReceiverPeer";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: LocalDatastore,
    pub key: DomainKey,
    pub keys: StaticKeys,
}

impl Fixture {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDatastore::open(dir.path().join("store"))
            .await
            .unwrap();
        let key = DomainKey::generate(DOMAIN).unwrap();
        let keys = StaticKeys::new().with(DOMAIN, key.public_key());
        Self {
            dir,
            store,
            key,
            keys,
        }
    }

    pub fn token(&self, endpoint: &str) -> String {
        self.key.issue(&claims(endpoint)).unwrap()
    }

    pub fn domain(&self) -> DomainId {
        DomainId::new(DOMAIN).unwrap()
    }

    /// Serves one `/store/v1` stream from the sender into this fixture's store.
    pub async fn serve_store<S>(&self, stream: S) -> Result<StoreSummary, CapabilityError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        serve_store(
            stream,
            &STORE_INFO,
            &self.store,
            &self.keys,
            &Limits::DEFAULT,
        )
        .await
    }
}

/// A runtime of two workers, for a proptest body (which cannot be an async test).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn claims(endpoint: &str) -> TaskClaims {
    TaskClaims::new(
        DOMAIN,
        "job-1",
        "task-1",
        SENDER,
        RECEIVER,
        endpoint,
        SystemTime::now(),
        Duration::from_secs(600),
    )
}

/// The receiver's view of a `/store/v1` stream from the sender.
pub const STORE_INFO: StreamInfo<'static> = StreamInfo {
    local_peer: RECEIVER,
    remote_peer: SENDER,
    protocol: domain_proto::protocols::STORE_V1,
    tokens: None,
    permits: None,
};

/// The receiver's view of a `/load/v1` stream from the sender.
pub const LOAD_INFO: StreamInfo<'static> = StreamInfo {
    local_peer: RECEIVER,
    remote_peer: SENDER,
    protocol: domain_proto::protocols::LOAD_V1,
    tokens: None,
    permits: None,
};

/// Byte i is i mod 251, as in the Merkle vectors: no chunk repeats another.
pub fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

pub fn new_item(name: &str, size: usize) -> UpsertMetadata {
    UpsertMetadata {
        name: name.into(),
        data_type: "test/bytes".into(),
        size: u32::try_from(size).unwrap(),
        is_new: true,
        ..Default::default()
    }
}

/// A duplex pipe with a buffer as large as a content batch.
pub fn pipe() -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
    tokio::io::duplex(1 << 20)
}

/// The receiver's view of a `/delete/v1` stream from the sender.
pub const DELETE_INFO: StreamInfo<'static> = StreamInfo {
    local_peer: RECEIVER,
    remote_peer: SENDER,
    protocol: domain_proto::protocols::DELETE_V1,
    tokens: None,
    permits: None,
};
