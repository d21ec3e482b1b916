//! Whatever items go up `/store/v1` come back down `/load/v1` byte for byte, and
//! `serve` routes each task protocol to its handler.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DOMAIN, Fixture, LOAD_INFO, RECEIVER, SENDER, STORE_INFO, new_item, pipe, runtime};
use domain_capabilities::{
    CapabilityError, Limits, Served, StreamInfo, open_load, serve, store_items,
};
use domain_merkle::CHUNK_SIZE;
use domain_proto::domain_data::Query;
use domain_proto::protocols::{JOBS_V1, LOAD_V1, STORE_V1};
use domain_proto::task::ConsumeDataInputV1;
use proptest::collection::vec;
use proptest::prelude::*;

/// Small batches, so that items span several of them and batch edges fall anywhere.
const SMALL_BATCHES: Limits = Limits {
    io_batch: 3000,
    ..Limits::DEFAULT
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn items_stored_over_store_v1_load_back_identical_over_load_v1(
        blobs in vec(vec(any::<u8>(), 0..3 * CHUNK_SIZE + 10), 1..5),
    ) {
        runtime().block_on(async {
            let fixture = Fixture::new().await;
            let (client, server) = pipe();
            let token = fixture.token(STORE_V1);
            let items = blobs.iter().enumerate().map(|(i, b)| (new_item(&format!("p-{i}"), b.len()), b.as_slice()));
            let (served, stored) = tokio::join!(
                serve(server, &STORE_INFO, &fixture.store, &fixture.keys, &SMALL_BATCHES),
                store_items(client, &token, DOMAIN, items, SMALL_BATCHES),
            );
            assert!(matches!(served.unwrap(), Served::Store(_)));
            let stored = stored.unwrap();

            let (client, server) = pipe();
            let token = fixture.token(LOAD_V1);
            let request = ConsumeDataInputV1 { query: Query::default(), keep_alive: false, ..Default::default() };
            let load = async {
                let (mut consumer, _unsubscriber) = open_load(client, &token, DOMAIN, request, SMALL_BATCHES).await?;
                let mut got = Vec::new();
                while let Some(item) = consumer.next().await? {
                    got.push(item.read_to_vec(u64::MAX).await?);
                }
                Ok::<_, CapabilityError>(got)
            };
            let (served, loaded) = tokio::join!(
                serve(server, &LOAD_INFO, &fixture.store, &fixture.keys, &SMALL_BATCHES),
                load,
            );
            assert!(matches!(served.unwrap(), Served::Load(_)));
            let loaded = loaded.unwrap();
            assert_eq!(loaded.len(), blobs.len());
            for (metadata, blob) in stored.iter().zip(&blobs) {
                let (_, content) = loaded.iter().find(|(m, _)| m.id == metadata.id).unwrap();
                assert_eq!(content, blob);
            }
        });
    }
}

#[tokio::test]
async fn serve_refuses_a_protocol_it_has_no_handler_for() {
    let fixture = Fixture::new().await;
    let info = StreamInfo {
        local_peer: RECEIVER,
        remote_peer: SENDER,
        protocol: JOBS_V1,
        tokens: None,
        permits: None,
    };
    let (_client, server) = pipe();
    let served = serve(
        server,
        &info,
        &fixture.store,
        &fixture.keys,
        &Limits::DEFAULT,
    )
    .await;
    assert!(
        matches!(served, Err(CapabilityError::UnsupportedProtocol { protocol }) if protocol == JOBS_V1)
    );
}
