//! `/delete/v1` over an in-memory pipe on a real local datastore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DELETE_INFO, DOMAIN, Fixture, data, new_item, pipe};
use domain_capabilities::{
    CapabilityError, DeleteSummary, Deleted, Limits, delete_items, serve_delete,
};
use domain_datastore::{Datastore, DatastoreError};
use domain_proto::domain_data::{Metadata, Query};
use domain_proto::protocols::{DELETE_V1, LOAD_V1};

async fn put(fixture: &Fixture, name: &str) -> Metadata {
    let blob = data(10_000);
    fixture
        .store
        .put(
            &fixture.domain(),
            new_item(name, blob.len()),
            blob.as_slice(),
        )
        .await
        .unwrap()
}

async fn held(fixture: &Fixture) -> Vec<String> {
    let items = fixture
        .store
        .query(&fixture.domain(), &Query::default())
        .await
        .unwrap();
    items.into_iter().map(|item| item.id).collect()
}

#[tokio::test]
async fn held_ids_are_removed_and_the_others_named_missing_each_once() {
    let fixture = Fixture::new().await;
    let (a, b, keep) = (
        put(&fixture, "a").await,
        put(&fixture, "b").await,
        put(&fixture, "keep").await,
    );
    let ids = [
        b.id.clone(),
        "no-such-id".into(),
        a.id.clone(),
        a.id.clone(),
    ];

    let (client, server) = pipe();
    let token = fixture.token(DELETE_V1);
    let limits = Limits::default();
    let (served, answer) = tokio::join!(
        serve_delete(server, &DELETE_INFO, &fixture.store, &fixture.keys, &limits),
        delete_items(client, &token, DOMAIN, &ids, limits),
    );
    assert_eq!(
        served.unwrap(),
        DeleteSummary {
            deleted: 2,
            missing: 1
        }
    );
    let mut deleted = vec![a.id.clone(), b.id.clone()];
    deleted.sort();
    assert_eq!(
        answer.unwrap(),
        Deleted {
            deleted,
            missing: vec!["no-such-id".into()],
        }
    );
    assert_eq!(held(&fixture).await, vec![keep.id]);
    assert!(matches!(
        fixture.store.get(&fixture.domain(), &a.id).await,
        Err(DatastoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_token_for_another_endpoint_removes_nothing() {
    let fixture = Fixture::new().await;
    let item = put(&fixture, "a").await;

    let (client, server) = pipe();
    // Loading an item does not entitle its sender to remove it.
    let token = fixture.token(LOAD_V1);
    let limits = Limits::default();
    let ids = [item.id.clone()];
    let (served, answer) = tokio::join!(
        serve_delete(server, &DELETE_INFO, &fixture.store, &fixture.keys, &limits),
        delete_items(client, &token, DOMAIN, &ids, limits),
    );
    assert!(
        matches!(served, Err(CapabilityError::Rejected(_))),
        "{served:?}"
    );
    assert!(
        matches!(answer, Err(CapabilityError::Refused { .. })),
        "{answer:?}"
    );
    assert_eq!(held(&fixture).await, vec![item.id]);
}
