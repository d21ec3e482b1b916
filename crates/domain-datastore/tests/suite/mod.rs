//! The behaviour every [`Datastore`] backend must have, written once over the trait.
//!
//! A backend's test file includes this module and instantiates every behaviour with
//! [`datastore_suite!`], giving it an async constructor of a fresh, empty store (and
//! `refusing replicas` for a store that cannot keep items under ids of their own):
//!
//! ```ignore
//! #[path = "suite/mod.rs"]
//! mod suite;
//! async fn fresh() -> (MyStore, Guard) { ... }
//! datastore_suite!(fresh);
//! ```

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use domain_datastore::{Datastore, DatastoreError};
use domain_merkle::root_of;
use domain_proto::DomainId;
use domain_proto::domain_data::{Metadata, Query, UpsertMetadata};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Defines one `#[tokio::test]` per behaviour, each on a fresh store from `$fresh`.
#[macro_export]
macro_rules! datastore_suite {
    // A store that keeps replicas (the local one).
    ($fresh:path) => {
        $crate::datastore_suite!($fresh, without replicas);
        $crate::datastore_suite!(@tests $fresh; a_replica_is_stored_under_its_id_whether_or_not_it_exists);
    };
    // A store that refuses them (a remote one: only its cluster's manager places copies).
    ($fresh:path, refusing replicas) => {
        $crate::datastore_suite!($fresh, without replicas);
        $crate::datastore_suite!(@tests $fresh; a_replica_is_refused_and_leaves_nothing);
    };
    ($fresh:path, without replicas) => {
        $crate::datastore_suite!(@tests $fresh;
            put_answers_the_merkle_root_of_the_content,
            get_returns_the_stored_metadata_and_exact_bytes,
            get_from_reads_from_the_offset_to_the_end_and_not_past_it,
            empty_content_is_an_item_like_any_other,
            fewer_bytes_than_size_is_refused_and_leaves_nothing,
            more_bytes_than_size_is_refused_and_leaves_nothing,
            a_failing_content_reader_is_reported_and_leaves_nothing,
            is_new_makes_a_new_id_whatever_id_is_given,
            upsert_replaces_the_item_with_that_id,
            upsert_of_an_unknown_id_is_not_found,
            delete_removes_the_item,
            unknown_ids_are_not_found,
            identical_content_survives_deleting_one_of_its_items,
            query_by_ids_names_and_data_types_matches_exactly,
            query_by_regular_expressions_matches_anywhere_unless_anchored,
            query_criteria_combine_and_results_are_ordered_by_id,
            query_by_properties_matches_items_having_every_pair,
            query_with_an_oversized_or_broken_regex_is_invalid,
            domains_do_not_see_each_other,
            names_that_look_like_paths_are_plain_data,
            subscribers_get_new_matching_items_only,
            concurrent_writers_to_one_domain_all_land,
        );
    };
    (@tests $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _keep) = $fresh().await;
                suite::$name(&store).await;
            }
        )*
    };
}

pub fn domain(name: &str) -> DomainId {
    DomainId::new(name).unwrap()
}

pub fn upsert(name: &str, data_type: &str, size: usize) -> UpsertMetadata {
    UpsertMetadata {
        name: name.into(),
        data_type: data_type.into(),
        size: u32::try_from(size).unwrap(),
        is_new: true,
        id: String::new(),
        properties: BTreeMap::new(),
        replica: None,
        resume_key: None,
    }
}

/// Bytes where byte i is i mod 251 (the pattern of the Merkle vectors), shifted by `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect()
}

pub async fn put_bytes<S: Datastore>(
    store: &S,
    domain: &DomainId,
    name: &str,
    data_type: &str,
    bytes: &[u8],
) -> Metadata {
    store
        .put(domain, upsert(name, data_type, bytes.len()), bytes)
        .await
        .unwrap()
}

pub async fn read_content<S: Datastore>(
    store: &S,
    domain: &DomainId,
    id: &str,
) -> (Metadata, Vec<u8>) {
    let (item, mut content) = store.get(domain, id).await.unwrap();
    let mut bytes = Vec::new();
    content.read_to_end(&mut bytes).await.unwrap();
    (item, bytes)
}

async fn all<S: Datastore>(store: &S, domain: &DomainId) -> Vec<Metadata> {
    store.query(domain, &Query::default()).await.unwrap()
}

fn ids(items: &[Metadata]) -> Vec<&str> {
    items.iter().map(|m| m.id.as_str()).collect()
}

pub async fn put_answers_the_merkle_root_of_the_content<S: Datastore>(store: &S) {
    let d = domain("d");
    let bytes = pattern(3 * 7168 + 5, 0);
    let mut item = upsert("scan", "ply", bytes.len());
    item.properties.insert("k".into(), "v".into());
    let stored = store.put(&d, item, bytes.as_slice()).await.unwrap();
    assert_eq!(
        stored.hash.as_deref(),
        Some(root_of(&bytes).to_string().as_str())
    );
    assert_eq!(
        (stored.name.as_str(), stored.data_type.as_str()),
        ("scan", "ply")
    );
    assert_eq!(stored.size as usize, bytes.len());
    assert_eq!(stored.properties.get("k").map(String::as_str), Some("v"));
    assert!(
        uuid::Uuid::parse_str(&stored.id).is_ok(),
        "id {:?} is not a UUID",
        stored.id
    );
}

pub async fn get_returns_the_stored_metadata_and_exact_bytes<S: Datastore>(store: &S) {
    let d = domain("d");
    // Crosses several I/O batches and ends mid-chunk.
    let bytes = pattern(2 * 1024 * 1024 + 7168 * 3 + 11, 7);
    let stored = put_bytes(store, &d, "big", "bin", &bytes).await;
    let (got, content) = read_content(store, &d, &stored.id).await;
    assert_eq!(got, stored);
    assert!(content == bytes, "content differs");
    assert_eq!(root_of(&content).to_string(), got.hash.unwrap());
}

pub async fn get_from_reads_from_the_offset_to_the_end_and_not_past_it<S: Datastore>(store: &S) {
    let d = domain("d");
    let bytes = pattern(5 * 7168 + 9, 3);
    let stored = put_bytes(store, &d, "scan", "bin", &bytes).await;
    // The start, a chunk boundary, the middle of a chunk, the very end.
    for offset in [0, 7168, 2 * 7168 + 100, bytes.len()] {
        let (got, mut content) = store.get_from(&d, &stored.id, offset as u64).await.unwrap();
        assert_eq!(got, stored);
        let mut rest = Vec::new();
        content.read_to_end(&mut rest).await.unwrap();
        assert!(rest == bytes[offset..], "content from {offset} differs");
    }
    let past = bytes.len() as u64 + 1;
    assert!(matches!(
        store.get_from(&d, &stored.id, past).await,
        Err(DatastoreError::OffsetPastEnd { offset, .. }) if offset == past
    ));
    assert!(matches!(
        store.get_from(&d, "no-such-id", 0).await,
        Err(DatastoreError::NotFound { .. })
    ));
}

pub async fn empty_content_is_an_item_like_any_other<S: Datastore>(store: &S) {
    let d = domain("d");
    let stored = put_bytes(store, &d, "empty", "none", b"").await;
    assert_eq!(
        stored.hash.as_deref(),
        Some(root_of(b"").to_string().as_str())
    );
    let (_, content) = read_content(store, &d, &stored.id).await;
    assert!(content.is_empty());
}

pub async fn fewer_bytes_than_size_is_refused_and_leaves_nothing<S: Datastore>(store: &S) {
    let d = domain("d");
    let bytes = pattern(10_000, 1);
    let err = store
        .put(&d, upsert("short", "t", 10_001), bytes.as_slice())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DatastoreError::SizeMismatch {
                expected: 10_001,
                got: 10_000
            }
        ),
        "{err:?}"
    );
    assert!(all(store, &d).await.is_empty());
}

pub async fn more_bytes_than_size_is_refused_and_leaves_nothing<S: Datastore>(store: &S) {
    let d = domain("d");
    let bytes = pattern(3 * 1024 * 1024, 1);
    let err = store
        .put(&d, upsert("long", "t", 1024 * 1024), bytes.as_slice())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DatastoreError::SizeMismatch {
                expected: 1_048_576,
                got: 1_048_577
            }
        ),
        "{err:?}"
    );
    assert!(all(store, &d).await.is_empty());
}

/// Yields `good` bytes, then fails.
struct FailingReader {
    good: usize,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.good == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer went away",
            )));
        }
        let n = self.good.min(buf.remaining());
        buf.put_slice(&vec![1; n]);
        self.good -= n;
        Poll::Ready(Ok(()))
    }
}

pub async fn a_failing_content_reader_is_reported_and_leaves_nothing<S: Datastore>(store: &S) {
    let d = domain("d");
    let err = store
        .put(
            &d,
            upsert("cut", "t", 5_000_000),
            FailingReader { good: 1_500_000 },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DatastoreError::ReadContent { name, .. } if name == "cut"),
        "{err:?}"
    );
    assert!(all(store, &d).await.is_empty());
}

pub async fn is_new_makes_a_new_id_whatever_id_is_given<S: Datastore>(store: &S) {
    let d = domain("d");
    let first = put_bytes(store, &d, "a", "t", b"one").await;
    let mut item = upsert("a", "t", 3);
    item.id = first.id.clone();
    let second = store.put(&d, item, &b"two"[..]).await.unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(all(store, &d).await.len(), 2);
}

pub async fn upsert_replaces_the_item_with_that_id<S: Datastore>(store: &S) {
    let d = domain("d");
    let first = put_bytes(store, &d, "old-name", "old-type", b"old content").await;
    let mut item = upsert("new-name", "new-type", 11);
    item.is_new = false;
    item.id = first.id.clone();
    item.properties.insert("v".into(), "2".into());
    let replaced = store.put(&d, item, &b"new content"[..]).await.unwrap();
    assert_eq!(replaced.id, first.id);
    assert_eq!(
        replaced.hash.as_deref(),
        Some(root_of(b"new content").to_string().as_str())
    );

    let items = all(store, &d).await;
    assert_eq!(items, vec![replaced.clone()]);
    let (_, content) = read_content(store, &d, &first.id).await;
    assert_eq!(content, b"new content");
    let by_old_name = Query {
        names: vec!["old-name".into()],
        ..Default::default()
    };
    assert!(store.query(&d, &by_old_name).await.unwrap().is_empty());
    let by_old_type = Query {
        data_types: vec!["old-type".into()],
        ..Default::default()
    };
    assert!(store.query(&d, &by_old_type).await.unwrap().is_empty());
    let by_new_name = Query {
        names: vec!["new-name".into()],
        ..Default::default()
    };
    assert_eq!(store.query(&d, &by_new_name).await.unwrap(), vec![replaced]);
}

pub async fn upsert_of_an_unknown_id_is_not_found<S: Datastore>(store: &S) {
    let d = domain("d");
    put_bytes(store, &d, "a", "t", b"x").await;
    let mut item = upsert("a", "t", 1);
    item.is_new = false;
    item.id = "no-such-id".into();
    let err = store.put(&d, item, &b"y"[..]).await.unwrap_err();
    assert!(
        matches!(&err, DatastoreError::NotFound { id, .. } if id == "no-such-id"),
        "{err:?}"
    );
    assert_eq!(all(store, &d).await.len(), 1);
}

#[allow(dead_code, reason = "a backend runs one of the two replica behaviours")]
pub async fn a_replica_is_refused_and_leaves_nothing<S: Datastore>(store: &S) {
    let d = domain("d");
    let replica = UpsertMetadata {
        is_new: false,
        id: "copy-of-an-item-held-elsewhere".into(),
        replica: Some(true),
        ..upsert("copy", "t", 3)
    };
    let err = store.put(&d, replica, &b"one"[..]).await.unwrap_err();
    assert!(
        matches!(err, DatastoreError::ReplicasUnsupported),
        "{err:?}"
    );
    assert!(all(store, &d).await.is_empty());
}

#[allow(dead_code, reason = "a backend runs one of the two replica behaviours")]
pub async fn a_replica_is_stored_under_its_id_whether_or_not_it_exists<S: Datastore>(store: &S) {
    let d = domain("d");
    let replica = |size| UpsertMetadata {
        is_new: false,
        id: "copy-of-an-item-held-elsewhere".into(),
        replica: Some(true),
        ..upsert("copy", "t", size)
    };
    let first = store.put(&d, replica(3), &b"one"[..]).await.unwrap();
    assert_eq!(first.id, "copy-of-an-item-held-elsewhere");
    assert_eq!(first.hash, Some(root_of(b"one").to_string()));
    // Copied again: replaced, still one item.
    let second = store.put(&d, replica(3), &b"two"[..]).await.unwrap();
    assert_eq!(second.id, first.id);
    assert_eq!(all(store, &d).await, vec![second.clone()]);
    let (_, content) = read_content(store, &d, &first.id).await;
    assert_eq!(content, b"two");

    // The empty id is the caught-up marker of `/load/v1`; no item may have it.
    let empty = UpsertMetadata {
        id: String::new(),
        ..replica(1)
    };
    let err = store.put(&d, empty, &b"x"[..]).await.unwrap_err();
    assert!(
        matches!(err, DatastoreError::InvalidItemId { .. }),
        "{err:?}"
    );
    let long = UpsertMetadata {
        id: "x".repeat(domain_datastore::MAX_ITEM_ID_LEN + 1),
        ..replica(1)
    };
    let err = store.put(&d, long, &b"x"[..]).await.unwrap_err();
    assert!(
        matches!(err, DatastoreError::InvalidItemId { .. }),
        "{err:?}"
    );
    assert_eq!(all(store, &d).await, vec![second]);
}

pub async fn delete_removes_the_item<S: Datastore>(store: &S) {
    let d = domain("d");
    let keep = put_bytes(store, &d, "keep", "t", b"keep").await;
    let gone = put_bytes(store, &d, "gone", "t", b"gone").await;
    store.delete(&d, &gone.id).await.unwrap();
    assert_eq!(all(store, &d).await, vec![keep]);
    assert!(matches!(
        store.get(&d, &gone.id).await,
        Err(DatastoreError::NotFound { .. })
    ));
    let by_name = Query {
        names: vec!["gone".into()],
        ..Default::default()
    };
    assert!(store.query(&d, &by_name).await.unwrap().is_empty());
}

pub async fn unknown_ids_are_not_found<S: Datastore>(store: &S) {
    let d = domain("d");
    assert!(matches!(
        store.get(&d, "nope").await,
        Err(DatastoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete(&d, "nope").await,
        Err(DatastoreError::NotFound { .. })
    ));
    put_bytes(store, &d, "a", "t", b"x").await;
    assert!(matches!(
        store.get(&d, "nope").await,
        Err(DatastoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete(&d, "nope").await,
        Err(DatastoreError::NotFound { .. })
    ));
}

pub async fn identical_content_survives_deleting_one_of_its_items<S: Datastore>(store: &S) {
    let d = domain("d");
    let bytes = pattern(50_000, 3);
    let a = put_bytes(store, &d, "a", "t", &bytes).await;
    let b = put_bytes(store, &d, "b", "t", &bytes).await;
    assert_eq!(a.hash, b.hash);
    store.delete(&d, &a.id).await.unwrap();
    let (_, content) = read_content(store, &d, &b.id).await;
    assert!(content == bytes);
}

/// Items named n0..n5 with types t0..t2 (n_i has type t_{i mod 3}).
async fn six_items<S: Datastore>(store: &S, d: &DomainId) -> Vec<Metadata> {
    let mut items = Vec::new();
    for i in 0..6 {
        items.push(
            put_bytes(
                store,
                d,
                &format!("n{i}"),
                &format!("t{}", i % 3),
                &[i as u8],
            )
            .await,
        );
    }
    items
}

fn sorted_ids(items: &[&Metadata]) -> Vec<String> {
    let mut ids: Vec<String> = items.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    ids
}

pub async fn query_by_ids_names_and_data_types_matches_exactly<S: Datastore>(store: &S) {
    let d = &domain("d");
    let items = six_items(store, d).await;
    let run = |query: Query| async move { store.query(d, &query).await.unwrap() };

    let got = run(Query {
        ids: vec![items[1].id.clone(), items[4].id.clone(), "x".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&got), sorted_ids(&[&items[1], &items[4]]));

    let got = run(Query {
        names: vec!["n2".into(), "n5".into(), "n".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&got), sorted_ids(&[&items[2], &items[5]]));

    let got = run(Query {
        data_types: vec!["t0".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&got), sorted_ids(&[&items[0], &items[3]]));

    let got = run(Query {
        data_types: vec!["t".into()],
        ..Default::default()
    })
    .await;
    assert!(got.is_empty());

    // metadata_only changes what the caller fetches next, not which items match.
    let got = run(Query {
        names: vec!["n1".into()],
        metadata_only: true,
        ..Default::default()
    })
    .await;
    assert_eq!(got, vec![items[1].clone()]);
}

pub async fn query_by_regular_expressions_matches_anywhere_unless_anchored<S: Datastore>(
    store: &S,
) {
    let d = &domain("d");
    let items = six_items(store, d).await;
    let run = |query: Query| async move { store.query(d, &query).await.unwrap() };

    let got = run(Query {
        name_regexp: Some("[0-2]".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&got), sorted_ids(&[&items[0], &items[1], &items[2]]));

    let got = run(Query {
        name_regexp: Some("^[0-2]".into()),
        ..Default::default()
    })
    .await;
    assert!(got.is_empty());

    let got = run(Query {
        data_type_regexp: Some("^t[12]$".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&got),
        sorted_ids(&[&items[1], &items[2], &items[4], &items[5]])
    );
}

pub async fn query_criteria_combine_and_results_are_ordered_by_id<S: Datastore>(store: &S) {
    let d = domain("d");
    let items = six_items(store, &d).await;
    let query = Query {
        names: vec!["n0".into(), "n1".into(), "n3".into(), "n4".into()],
        data_types: vec!["t0".into(), "t1".into()],
        name_regexp: Some("[34]".into()),
        ..Default::default()
    };
    let got = store.query(&d, &query).await.unwrap();
    assert_eq!(ids(&got), sorted_ids(&[&items[3], &items[4]]));

    let everything = all(store, &d).await;
    assert_eq!(
        ids(&everything),
        sorted_ids(&items.iter().collect::<Vec<_>>())
    );
}

pub async fn query_by_properties_matches_items_having_every_pair<S: Datastore>(store: &S) {
    let d = domain("d");
    let with = |pairs: &[(&str, &str)]| UpsertMetadata {
        properties: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..upsert("scan", "ply", 1)
    };
    let mut stored = Vec::new();
    for pairs in [
        &[("site", "north"), ("floor", "2")][..],
        &[("site", "north"), ("floor", "3")],
        &[("site", "south"), ("floor", "2")],
        // Keys and values are plain text: quotes, braces and a JSON-looking value.
        &[("site", "north\"{\"floor\": \"2\"}"), ("floor", "2")],
        &[],
    ] {
        let item = store.put(&d, with(pairs), &b"x"[..]).await.unwrap();
        stored.push(item);
    }
    let fetched = store
        .query(
            &d,
            &Query {
                ids: vec![stored[0].id.clone()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        fetched[0].properties, stored[0].properties,
        "properties round-trip"
    );
    let by = |pairs: &[(&str, &str)]| Query {
        properties: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    let found = |items: Vec<Metadata>| -> Vec<String> {
        let mut ids: Vec<String> = items.into_iter().map(|m| m.id).collect();
        ids.sort();
        ids
    };
    let expect = |indexes: &[usize]| -> Vec<String> {
        sorted_ids(&indexes.iter().map(|&i| &stored[i]).collect::<Vec<_>>())
    };
    let north = store.query(&d, &by(&[("site", "north")])).await.unwrap();
    assert_eq!(found(north), expect(&[0, 1]));
    let north_2 = store
        .query(&d, &by(&[("site", "north"), ("floor", "2")]))
        .await
        .unwrap();
    assert_eq!(found(north_2), expect(&[0]));
    let second_floor = store.query(&d, &by(&[("floor", "2")])).await.unwrap();
    assert_eq!(found(second_floor), expect(&[0, 2, 3]));
    let none = store.query(&d, &by(&[("site", "east")])).await.unwrap();
    assert!(none.is_empty());
    // With other criteria: AND.
    let mut query = by(&[("floor", "2")]);
    query.ids = vec![stored[2].id.clone(), stored[1].id.clone()];
    assert_eq!(found(store.query(&d, &query).await.unwrap()), expect(&[2]));
}

pub async fn query_with_an_oversized_or_broken_regex_is_invalid<S: Datastore>(store: &S) {
    let d = domain("d");
    for query in [
        Query {
            name_regexp: Some("x".repeat(domain_datastore::MAX_REGEX_LEN + 1)),
            ..Default::default()
        },
        Query {
            data_type_regexp: Some("[".into()),
            ..Default::default()
        },
        Query {
            name_regexp: Some(r"(\w{500}){500}".into()),
            ..Default::default()
        },
    ] {
        let err = store.query(&d, &query).await.unwrap_err();
        assert!(matches!(err, DatastoreError::InvalidQuery(_)), "{err:?}");
        assert!(matches!(
            store.subscribe(&d, &query),
            Err(DatastoreError::InvalidQuery(_))
        ));
    }
}

pub async fn domains_do_not_see_each_other<S: Datastore>(store: &S) {
    let (a, b) = (domain("a"), domain("b"));
    let in_a = put_bytes(store, &a, "same", "t", b"in a").await;
    let in_b = put_bytes(store, &b, "same", "t", b"in b").await;
    assert_eq!(all(store, &a).await, vec![in_a.clone()]);
    assert_eq!(all(store, &b).await, vec![in_b]);
    assert!(matches!(
        store.get(&b, &in_a.id).await,
        Err(DatastoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete(&b, &in_a.id).await,
        Err(DatastoreError::NotFound { .. })
    ));
    assert!(all(store, &domain("never-used")).await.is_empty());
}

pub async fn names_that_look_like_paths_are_plain_data<S: Datastore>(store: &S) {
    let d = domain("d");
    for (name, data_type) in [("../x", "../../t"), ("/etc/passwd", "/"), ("a\0b", "..")] {
        let stored = put_bytes(store, &d, name, data_type, name.as_bytes()).await;
        let (got, content) = read_content(store, &d, &stored.id).await;
        assert_eq!(
            (got.name.as_str(), got.data_type.as_str()),
            (name, data_type)
        );
        assert_eq!(content, name.as_bytes());
        let by_name = Query {
            names: vec![name.into()],
            ..Default::default()
        };
        assert_eq!(store.query(&d, &by_name).await.unwrap(), vec![stored]);
    }
}

pub async fn subscribers_get_new_matching_items_only<S: Datastore>(store: &S) {
    let d = domain("d");
    put_bytes(store, &d, "scan-before", "t", b"0").await;
    let query = Query {
        name_regexp: Some("^scan-".into()),
        ..Default::default()
    };
    let mut sub = store.subscribe(&d, &query).unwrap();
    let mut other_domain = store
        .subscribe(&domain("other"), &Query::default())
        .unwrap();
    let first = put_bytes(store, &d, "scan-1", "t", b"1").await;
    put_bytes(store, &d, "mesh-1", "t", b"2").await;
    let second = put_bytes(store, &d, "scan-2", "t", b"3").await;

    let timeout = std::time::Duration::from_secs(10);
    let got = tokio::time::timeout(timeout, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, first);
    let got = tokio::time::timeout(timeout, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, second);
    // Nothing else is queued for either subscriber.
    let nothing = tokio::time::timeout(std::time::Duration::from_millis(50), sub.next()).await;
    assert!(nothing.is_err(), "unexpected {nothing:?}");
    let nothing =
        tokio::time::timeout(std::time::Duration::from_millis(50), other_domain.next()).await;
    assert!(nothing.is_err(), "unexpected {nothing:?}");
}

pub async fn concurrent_writers_to_one_domain_all_land<S: Datastore>(store: &S) {
    let d = domain("d");
    let writers = (0..24_u8).map(|i| {
        let d = d.clone();
        async move {
            // Every third writer repeats content, so deduplication races with new blobs.
            let bytes = pattern(20_000 + usize::from(i % 8) * 7168, i % 8);
            let stored = put_bytes(store, &d, &format!("w{i}"), "t", &bytes).await;
            (stored, bytes)
        }
    });
    let written = futures::future::join_all(writers).await;
    assert_eq!(all(store, &d).await.len(), written.len());
    for (stored, bytes) in written {
        let (got, content) = read_content(store, &d, &stored.id).await;
        assert_eq!(got, stored);
        assert!(content == bytes, "content of {} differs", stored.name);
    }
}
