//! The `/store/v1` bench's setup, shared by its criterion group (`benches/capabilities.rs`)
//! and its paired rounds (`benches/store_paired.rs`), so that both measure the same thing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use domain_auth::{DomainKey, KeyStoreError, TaskClaims, TokenError};
use domain_capabilities::{
    CapabilityError, Limits, StaticKeys, StoreSender, StreamInfo, serve_store,
};
use domain_datastore::{Datastore, DatastoreError, LocalDatastore};
use domain_proto::domain_data::UpsertMetadata;
use domain_proto::protocols::STORE_V1;
use domain_proto::{DomainId, InvalidDomainId};

use crate::{MIB, pattern};

/// Bytes of every item the bench stores: large enough that setting up a stream is noise.
pub const LEN: usize = 128 * MIB;
// `UpsertMetadata.size` is a u32.
const _: () = assert!(LEN <= u32::MAX as usize);

/// Bytes the in-memory pipe holds: the order of what a real transport keeps in flight
/// (loopback TCP's socket buffers, a yamux window). A pipe of one batch would make the two
/// sides take turns, which no network does.
pub const PIPE: usize = 8 * MIB;

const DOMAIN: &str = "bench";
const INFO: StreamInfo<'static> = StreamInfo {
    local_peer: "receiver",
    remote_peer: "sender",
    protocol: STORE_V1,
    tokens: None,
    permits: None,
};

/// What one timed store goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `a`: [`Datastore::put`] of the bytes from memory, no protocol: the baseline.
    Put,
    /// `b`, `c`, `d`: `/store/v1` over a `tokio::io::duplex` of [`PIPE`] bytes into the
    /// same `put`, handshake with token verification included.
    StoreV1(Sender),
}

/// How a `/store/v1` bench hands the content to the [`StoreSender`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// `b`: [`StoreSender::send_bytes`], the bytes shared with the sender's hashing thread.
    Bytes,
    /// `c`: [`StoreSender::send`] from a reader, as a file is sent: each batch is copied
    /// out of the reader.
    Reader,
    /// `d`: [`StoreSender::send_resumable`] from a reader under a fresh key, as
    /// `domain upload` sends items of 1 MiB or more: one more round trip for the offer.
    Resumable,
}

impl Path {
    /// Every path, baseline first.
    pub const ALL: [Self; 4] = [
        Self::Put,
        Self::StoreV1(Sender::Bytes),
        Self::StoreV1(Sender::Reader),
        Self::StoreV1(Sender::Resumable),
    ];

    /// The bench function's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Put => "a_datastore_put",
            Self::StoreV1(Sender::Bytes) => "b_store_v1_duplex",
            Self::StoreV1(Sender::Reader) => "c_store_v1_reader_duplex",
            Self::StoreV1(Sender::Resumable) => "d_store_v1_resumable_duplex",
        }
    }
}

/// Why a bench could not go on.
#[derive(Debug, thiserror::Error)]
pub enum StoreBenchError {
    /// The temporary folder could not be made.
    #[error("making a temporary folder: {0}")]
    Folder(#[source] std::io::Error),
    /// The bench's domain id was refused.
    #[error(transparent)]
    DomainId(#[from] InvalidDomainId),
    /// The domain key could not be made.
    #[error(transparent)]
    Key(#[from] KeyStoreError),
    /// The task token could not be issued.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Opening the datastore, a put or a delete failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// The `/store/v1` sender or receiver failed.
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    /// The receiver's task panicked.
    #[error("the receiver's task: {0}")]
    Receiver(#[from] tokio::task::JoinError),
}

/// A local datastore in a temporary folder, a domain key, and [`LEN`] bytes to store.
#[derive(Debug)]
pub struct StoreBench {
    store: LocalDatastore,
    domain: DomainId,
    key: DomainKey,
    keys: StaticKeys,
    data: Bytes,
    // Last, so that the store is closed before its folder goes.
    _dir: tempfile::TempDir,
}

impl StoreBench {
    /// Opens the datastore in a new temporary folder.
    ///
    /// # Errors
    /// When the folder, the datastore or the key cannot be made.
    pub async fn open() -> Result<Self, StoreBenchError> {
        let dir = tempfile::tempdir().map_err(StoreBenchError::Folder)?;
        let store = LocalDatastore::open(dir.path().join("store")).await?;
        let key = DomainKey::generate(DOMAIN)?;
        Ok(Self {
            store,
            domain: DomainId::new(DOMAIN)?,
            keys: StaticKeys::new().with(DOMAIN, key.public_key()),
            key,
            data: Bytes::from(pattern(LEN)),
            _dir: dir,
        })
    }

    /// Stores the bytes once through `path` and deletes them again, so that every store
    /// writes (and fsyncs) a new blob. Returns the time of the store alone.
    ///
    /// # Errors
    /// When the store or the delete fails.
    pub async fn store_once(&self, path: Path) -> Result<Duration, StoreBenchError> {
        let (took, id) = match path {
            Path::Put => {
                let started = Instant::now();
                let stored = self.store.put(&self.domain, item(), &self.data[..]).await?;
                (started.elapsed(), stored.id)
            }
            Path::StoreV1(sender) => self.store_v1(sender).await?,
        };
        self.store.delete(&self.domain, &id).await?;
        Ok(took)
    }

    /// One `/store/v1` stream of the bytes: how long it took, and the item's id.
    async fn store_v1(&self, send: Sender) -> Result<(Duration, String), StoreBenchError> {
        let claims = TaskClaims::new(
            DOMAIN,
            "job",
            "task",
            INFO.remote_peer,
            INFO.local_peer,
            STORE_V1,
            SystemTime::now(),
            Duration::from_secs(600),
        );
        let token = self.key.issue(&claims)?;
        let (client, server) = tokio::io::duplex(PIPE);
        let started = Instant::now();
        let receiver = tokio::spawn({
            let (store, keys) = (self.store.clone(), self.keys.clone());
            async move { serve_store(server, &INFO, &store, &keys, &Limits::DEFAULT).await }
        });
        let mut sender = StoreSender::open(client, &token, DOMAIN, Limits::DEFAULT).await?;
        let stored = match send {
            Sender::Bytes => sender.send_bytes(item(), self.data.clone()).await,
            Sender::Reader => sender.send(item(), &self.data[..]).await,
            Sender::Resumable => {
                // A fresh key per stream: nothing kept, as for a first upload.
                static STREAMS: AtomicU64 = AtomicU64::new(0);
                let resume_key = format!("bench {}", STREAMS.fetch_add(1, Ordering::Relaxed));
                let content = std::io::Cursor::new(&self.data[..]);
                let sent = sender.send_resumable(item(), &resume_key, content).await;
                sent.map(|sent| sent.metadata)
            }
        };
        let stored = stored?;
        sender.finish().await?;
        receiver.await??;
        Ok((started.elapsed(), stored.id))
    }
}

fn item() -> UpsertMetadata {
    UpsertMetadata {
        name: "big".into(),
        data_type: "bin".into(),
        size: LEN as u32,
        is_new: true,
        ..Default::default()
    }
}
