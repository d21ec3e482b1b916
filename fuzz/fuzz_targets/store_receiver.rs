//! The `/store/v1` receiver over an arbitrary byte stream after a valid handshake,
//! into a real local datastore. Whatever it stores and acknowledges must be whole:
//! the content read back has the announced size and the announced Merkle root. Items
//! with a resume key are answered an offer first, and what a cut one keeps stays out of
//! sight.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use domain_proto::DomainId;
use domain_auth::{DomainKey, TaskClaims};
use domain_capabilities::handshake::StreamInfo;
use domain_capabilities::{Limits, StaticKeys, serve_store};
use domain_datastore::{Datastore, LocalDatastore, LocalOptions};
use domain_merkle::root_of;
use domain_proto::task::DomainClusterHandshakeRequest;
use domain_proto::{encode_frame, protocols::STORE_V1, read_message, read_message_or_eof};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOMAIN: &str = "domain-1";
const INFO: StreamInfo<'static> = StreamInfo { local_peer: "receiver", remote_peer: "sender", protocol: STORE_V1, tokens: None, permits: None };

struct Setup {
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    store: LocalDatastore,
    keys: StaticKeys,
    handshake: Vec<u8>,
    domain: DomainId,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Kept bytes of cut resumable puts stay small: runs add up.
        let options = LocalOptions { partial_bytes: 1 << 20, ..LocalOptions::default() };
        let store = runtime.block_on(LocalDatastore::open_with(dir.path(), options)).unwrap();
        let key = DomainKey::generate(DOMAIN).unwrap();
        let keys = StaticKeys::new().with(DOMAIN, key.public_key());
        let claims = TaskClaims::new(DOMAIN, "job", "task", "sender", "receiver", STORE_V1, SystemTime::now(), Duration::from_secs(3600));
        let token = key.issue(&claims).unwrap();
        let handshake =
            encode_frame(&DomainClusterHandshakeRequest { access_token: token, domain_id: DOMAIN.into() }).unwrap();
        Setup { runtime, _dir: dir, store, keys, handshake, domain: DomainId::new(DOMAIN).unwrap() }
    })
}

/// An answer of the receiver: a `Metadata` (which always carries the root) or a
/// `ResumeOffer` (which never does). Field 1 is left out: `Metadata.name` and
/// `ResumeOffer.offset` differ in wire type, and an unknown field is skipped either way.
#[derive(Clone, PartialEq, prost::Message)]
struct Answer {
    #[prost(string, tag = "2")]
    data_type: String,
    #[prost(uint32, tag = "3")]
    size: u32,
    #[prost(string, tag = "4")]
    id: String,
    #[prost(string, optional, tag = "5")]
    hash: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    setup.runtime.block_on(async {
        let room = setup.handshake.len() + data.len() + 64 * 1024;
        let (mut opener, receiver) = tokio::io::duplex(room);
        opener.write_all(&setup.handshake).await.unwrap();
        opener.write_all(data).await.unwrap();
        opener.shutdown().await.unwrap();
        let limits = Limits { max_frame: 64 * 1024, ..Limits::DEFAULT };
        let served = serve_store(receiver, &INFO, &setup.store, &setup.keys, &limits).await;

        // Every acknowledged item is whole and matches its root.
        let _: domain_proto::task::DomainClusterHandshakeResponse = read_message(&mut opener, 1 << 20).await.unwrap();
        let mut acknowledged = 0u64;
        while let Ok(Some(metadata)) = read_message_or_eof::<Answer, _>(&mut opener, 1 << 20).await {
            if metadata.hash.is_none() {
                continue; // a resume offer
            }
            let (stored, mut content) = setup.store.get(&setup.domain, &metadata.id).await.unwrap();
            assert_eq!(
                (&stored.data_type, stored.size, &stored.hash),
                (&metadata.data_type, metadata.size, &metadata.hash)
            );
            let mut bytes = Vec::new();
            content.read_to_end(&mut bytes).await.unwrap();
            assert_eq!(bytes.len(), metadata.size as usize);
            assert_eq!(metadata.hash, Some(root_of(&bytes).to_string()));
            setup.store.delete(&setup.domain, &metadata.id).await.unwrap();
            acknowledged += 1;
        }
        if let Ok(summary) = served {
            assert_eq!(summary.items, acknowledged);
        }
        // Nothing unacknowledged is visible.
        assert!(setup.store.query(&setup.domain, &Default::default()).await.unwrap().is_empty());
    });
});
