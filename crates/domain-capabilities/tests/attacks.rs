//! Hostile openers and broken streams against the receivers: each is refused with
//! its own reason, none panics, and none leaves data visible in the datastore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{DOMAIN, Fixture, LOAD_INFO, RECEIVER, SENDER, STORE_INFO, data, new_item, pipe};
use domain_auth::{DomainKey, PublicKey, Rejection};
use domain_capabilities::{
    CapabilityError, Direction, Limits, StaticKeys, StoreSender, serve_load, serve_store,
    store_items,
};
use domain_datastore::{Datastore, LocalDatastore};
use domain_proto::domain_data::{Query, UpsertMetadata};
use domain_proto::protocols::{LOAD_V1, STORE_V1};
use domain_proto::task::{Code, DomainClusterHandshakeRequest, DomainClusterHandshakeResponse};
use domain_proto::{FrameError, encode_frame, read_message, write_message};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncWriteExt, DuplexStream};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A domain whose raw signing key the test holds, to forge any token it likes.
struct Forger {
    signing: SigningKey,
    keys: StaticKeys,
}

impl Forger {
    fn new() -> Self {
        let signing = SigningKey::from_bytes(&[42; 32]);
        let keys = StaticKeys::new().with(
            DOMAIN,
            PublicKey::from_bytes(signing.verifying_key().to_bytes()),
        );
        Self { signing, keys }
    }

    fn claims(&self) -> Map<String, Value> {
        let now = now();
        json!({
            "domain_id": DOMAIN, "job_id": "job", "task_name": "task",
            "sender": SENDER, "receiver": RECEIVER, "endpoint": STORE_V1,
            "iat": now, "exp": now + 600, "sub": SENDER, "scope": STORE_V1, "jti": "1",
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn sign(&self, header: &Value, claims: &Map<String, Value>) -> String {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(Value::Object(claims.clone()).to_string().as_bytes())
        );
        format!(
            "{message}.{}",
            b64(&self.signing.sign(message.as_bytes()).to_bytes())
        )
    }

    fn token(&self, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut claims = self.claims();
        edit(&mut claims);
        self.sign(&json!({"alg": "EdDSA", "typ": "JWT"}), &claims)
    }
}

/// Opens `/store/v1` with `token` for `domain_id`, sends one small item if accepted,
/// and returns what each side said.
async fn attempt(
    store: &LocalDatastore,
    keys: &StaticKeys,
    token: &str,
    domain_id: &str,
) -> (Result<(), CapabilityError>, Result<(), CapabilityError>) {
    let (client, server) = pipe();
    let blob = data(100);
    let (served, sent) = tokio::join!(
        serve_store(server, &STORE_INFO, store, keys, &Limits::DEFAULT),
        store_items(
            client,
            token,
            domain_id,
            [(new_item("x", blob.len()), blob.as_slice())],
            Limits::DEFAULT
        ),
    );
    (served.map(drop), sent.map(drop))
}

async fn stored_count(fixture: &Fixture) -> usize {
    fixture
        .store
        .query(&fixture.domain(), &Query::default())
        .await
        .unwrap()
        .len()
}

type IsReason = fn(&Rejection) -> bool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_accepts_a_valid_token_and_refuses_each_attack_with_its_reason() {
    let fixture = Fixture::new().await;
    let forger = Forger::new();
    let other_domain_key = DomainKey::generate(DOMAIN).unwrap();

    let valid = forger.token(|_| {});
    let (served, sent) = attempt(&fixture.store, &forger.keys, &valid, DOMAIN).await;
    served.unwrap();
    sent.unwrap();
    assert_eq!(stored_count(&fixture).await, 1);

    let parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let mut tampered_claims = forger.claims();
    tampered_claims.insert("exp".into(), json!(now() + 86_400 * 365));
    let tampered_payload = format!(
        "{}.{}.{}",
        parts[0],
        b64(Value::Object(tampered_claims).to_string().as_bytes()),
        parts[2]
    );
    let mut signature = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
    signature[10] ^= 0x80;
    let tampered_signature = format!("{}.{}.{}", parts[0], parts[1], b64(&signature));
    let alg_none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let public = forger.signing.verifying_key().to_bytes();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &forger.claims(),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    let other_key_claims = serde_json::from_value(Value::Object(forger.claims())).unwrap();

    let cases: Vec<(&str, String, IsReason)> = vec![
        (
            "expired beyond the leeway",
            forger.token(|c| {
                c.insert("iat".into(), json!(now() - 3600));
                c.insert("exp".into(), json!(now() - 31));
            }),
            |r| matches!(r, Rejection::Expired { .. }),
        ),
        (
            "issued in the future",
            forger.token(|c| {
                c.insert("iat".into(), json!(now() + 3600));
                c.insert("exp".into(), json!(now() + 7200));
            }),
            |r| matches!(r, Rejection::IssuedInFuture { .. }),
        ),
        (
            "wrong domain",
            forger.token(|c| drop(c.insert("domain_id".into(), json!("domain-2")))),
            |r| matches!(r, Rejection::WrongDomain { .. }),
        ),
        (
            "wrong receiver",
            forger.token(|c| drop(c.insert("receiver".into(), json!("12D3KooWElsewhere")))),
            |r| matches!(r, Rejection::WrongReceiver { .. }),
        ),
        (
            "wrong sender",
            forger.token(|c| drop(c.insert("sender".into(), json!("12D3KooWSomeoneElse")))),
            |r| matches!(r, Rejection::WrongSender { .. }),
        ),
        (
            "wrong endpoint",
            forger.token(|c| drop(c.insert("endpoint".into(), json!(LOAD_V1)))),
            |r| matches!(r, Rejection::WrongEndpoint { .. }),
        ),
        (
            "signed with another domain's key",
            other_domain_key.issue(&other_key_claims).unwrap(),
            |r| matches!(r, Rejection::BadSignature { .. }),
        ),
        (
            "alg none",
            alg_none,
            |r| matches!(r, Rejection::AlgNotEdDsa { alg } if alg == "none"),
        ),
        (
            "HS256 signed with the public key as secret",
            hs256,
            |r| matches!(r, Rejection::AlgNotEdDsa { alg } if alg == "HS256"),
        ),
        ("tampered payload", tampered_payload, |r| {
            matches!(r, Rejection::BadSignature { .. })
        }),
        ("tampered signature", tampered_signature, |r| {
            matches!(r, Rejection::BadSignature { .. })
        }),
        (
            "missing exp",
            forger.token(|c| drop(c.remove("exp"))),
            |r| matches!(r, Rejection::MissingExp),
        ),
        (
            "exp as a string",
            forger.token(|c| drop(c.insert("exp".into(), json!((now() + 600).to_string())))),
            |r| matches!(r, Rejection::ExpNotNumeric { .. }),
        ),
        ("garbage", "\u{1}not a token at all".to_owned(), |r| {
            matches!(r, Rejection::Malformed { .. })
        }),
    ];
    for (attack, token, is_reason) in cases {
        let (served, sent) = attempt(&fixture.store, &forger.keys, &token, DOMAIN).await;
        let rejection = match served {
            Err(CapabilityError::Rejected(rejection)) => rejection,
            other => panic!("{attack}: the receiver did not reject the token: {other:?}"),
        };
        assert!(
            is_reason(&rejection),
            "{attack}: refused for the wrong reason: {rejection}"
        );
        match sent {
            Err(CapabilityError::Refused { message }) => assert!(
                message.contains(&rejection.to_string()),
                "{attack}: {message}"
            ),
            other => panic!("{attack}: the opener was not told: {other:?}"),
        }
        println!("{attack:45} -> {rejection}");
    }
    // Only the valid token's item was stored.
    assert_eq!(stored_count(&fixture).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_for_an_unknown_or_invalid_domain_is_refused() {
    let fixture = Fixture::new().await;
    let token = fixture.token(STORE_V1);
    let (served, sent) = attempt(&fixture.store, &fixture.keys, &token, "domain-2").await;
    assert!(
        matches!(served, Err(CapabilityError::NoPublicKey { .. })),
        "{served:?}"
    );
    assert!(
        matches!(sent, Err(CapabilityError::Refused { .. })),
        "{sent:?}"
    );
    let (served, _) = attempt(&fixture.store, &fixture.keys, &token, "../etc").await;
    assert!(
        matches!(served, Err(CapabilityError::InvalidDomain(_))),
        "{served:?}"
    );
    assert_eq!(stored_count(&fixture).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_token_does_not_open_a_store_stream_and_a_store_token_does_not_open_a_load_stream() {
    let fixture = Fixture::new().await;
    let load_token = fixture.token(LOAD_V1);
    let (served, _) = attempt(&fixture.store, &fixture.keys, &load_token, DOMAIN).await;
    assert!(
        matches!(
            served,
            Err(CapabilityError::Rejected(Rejection::WrongEndpoint { .. }))
        ),
        "{served:?}"
    );

    let (client, server) = pipe();
    let store_token = fixture.token(STORE_V1);
    let request = domain_proto::task::ConsumeDataInputV1 {
        query: Query::default(),
        keep_alive: false,
        ..Default::default()
    };
    let (served, opened) = tokio::join!(
        serve_load(
            server,
            &LOAD_INFO,
            &fixture.store,
            &fixture.keys,
            &Limits::DEFAULT
        ),
        domain_capabilities::open_load(client, &store_token, DOMAIN, request, Limits::DEFAULT),
    );
    assert!(
        matches!(
            served,
            Err(CapabilityError::Rejected(Rejection::WrongEndpoint { .. }))
        ),
        "{served:?}"
    );
    // The load request goes out before the answer is read; the refusal comes after.
    let _ = opened;
}

/// Opens `/store/v1` by hand with a valid token, then lets `misbehave` write.
async fn after_handshake(fixture: &Fixture, client: &mut DuplexStream) {
    let request = DomainClusterHandshakeRequest {
        access_token: fixture.token(STORE_V1),
        domain_id: DOMAIN.into(),
    };
    write_message(client, &request).await.unwrap();
    let response: DomainClusterHandshakeResponse = read_message(client, 1 << 20).await.unwrap();
    assert_eq!(response.code(), Code::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_before_allocation() {
    let fixture = Fixture::new().await;
    // Before the handshake.
    let (mut client, server) = pipe();
    client.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let served = fixture.serve_store(server).await;
    assert!(
        matches!(
            served,
            Err(CapabilityError::Frame {
                source: FrameError::TooLarge {
                    len: 4_294_967_295,
                    ..
                },
                ..
            })
        ),
        "{served:?}"
    );
    // A handshake larger than a token can make it, refused before its bytes are read:
    // the limit is the handshake's, not the stream's 4 MiB.
    let (mut client, server) = pipe();
    let announced = domain_capabilities::MAX_HANDSHAKE_FRAME as u32 + 1;
    client.write_all(&announced.to_be_bytes()).await.unwrap();
    let served = fixture.serve_store(server).await;
    assert!(
        matches!(
            served,
            Err(CapabilityError::Frame {
                source: FrameError::TooLarge { len, .. },
                ..
            }) if len == u64::from(announced)
        ),
        "{served:?}"
    );
    // In place of an item.
    let (mut client, server) = pipe();
    let serving = tokio::spawn({
        let (store, keys) = (fixture.store.clone(), fixture.keys.clone());
        async move { serve_store(server, &STORE_INFO, &store, &keys, &Limits::DEFAULT).await }
    });
    after_handshake(&fixture, &mut client).await;
    client
        .write_all(&((5u32 << 20) + 1).to_be_bytes())
        .await
        .unwrap();
    let served = serving.await.unwrap();
    assert!(
        matches!(
            served,
            Err(CapabilityError::Frame {
                source: FrameError::TooLarge { .. },
                ..
            })
        ),
        "{served:?}"
    );
    assert_eq!(stored_count(&fixture).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_content_stores_nothing() {
    let fixture = Fixture::new().await;
    let (mut client, server) = pipe();
    let serving = tokio::spawn({
        let (store, keys) = (fixture.store.clone(), fixture.keys.clone());
        async move { serve_store(server, &STORE_INFO, &store, &keys, &Limits::DEFAULT).await }
    });
    after_handshake(&fixture, &mut client).await;
    write_message(&mut client, &new_item("cut", 10_000))
        .await
        .unwrap();
    client.write_all(&data(5_000)).await.unwrap();
    client.shutdown().await.unwrap();
    let served = serving.await.unwrap();
    assert!(
        matches!(
            served,
            Err(CapabilityError::Truncated {
                expected: 10_000,
                got: 5_000,
                ..
            })
        ),
        "{served:?}"
    );
    assert_eq!(stored_count(&fixture).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_beyond_size_are_not_content_and_break_the_stream() {
    let fixture = Fixture::new().await;
    let (mut client, server) = pipe();
    let serving = tokio::spawn({
        let (store, keys) = (fixture.store.clone(), fixture.keys.clone());
        async move { serve_store(server, &STORE_INFO, &store, &keys, &Limits::DEFAULT).await }
    });
    after_handshake(&fixture, &mut client).await;
    let blob = data(150);
    write_message(&mut client, &new_item("exact", 100))
        .await
        .unwrap();
    client.write_all(&blob).await.unwrap();
    client.shutdown().await.unwrap();
    let served = serving.await.unwrap();
    // The 50 extra bytes are read as the next frame, whose prefix is far too large.
    assert!(
        matches!(served, Err(CapabilityError::Frame { .. })),
        "{served:?}"
    );
    // The item holds exactly its announced 100 bytes; nothing else is visible.
    let items = fixture
        .store
        .query(&fixture.domain(), &Query::default())
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].size, 100);
    assert_eq!(
        items[0].hash,
        Some(domain_merkle::root_of(&blob[..100]).to_string())
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_silent_from_the_start_loses_its_stream_after_the_idle_timeout() {
    let fixture = Fixture::new().await;
    let limits = Limits::DEFAULT;
    let (_client, server) = pipe();
    let started = tokio::time::Instant::now();
    let served = serve_store(server, &STORE_INFO, &fixture.store, &fixture.keys, &limits).await;
    assert!(
        matches!(
            served,
            Err(CapabilityError::Idle {
                direction: Direction::Read,
                ..
            })
        ),
        "{served:?}"
    );
    assert_eq!(started.elapsed(), limits.idle_timeout);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stalls_after_the_handshake_loses_its_stream_after_the_idle_timeout() {
    let fixture = Fixture::new().await;
    let limits = Limits::DEFAULT;
    let (mut client, server) = pipe();
    let serving = tokio::spawn({
        let (store, keys) = (fixture.store.clone(), fixture.keys.clone());
        async move { serve_store(server, &STORE_INFO, &store, &keys, &limits).await }
    });
    after_handshake(&fixture, &mut client).await;
    let started = tokio::time::Instant::now();
    let served = serving.await.unwrap();
    assert!(
        matches!(
            served,
            Err(CapabilityError::Idle {
                direction: Direction::Read,
                ..
            })
        ),
        "{served:?}"
    );
    assert_eq!(started.elapsed(), limits.idle_timeout);
    drop(client);
}

// The local datastore hashes and writes on blocking threads, which stop a paused
// clock from advancing by itself while a put waits for bytes: this one runs on the
// real clock with a short limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stalls_inside_content_loses_its_stream_and_stores_nothing() {
    let fixture = Fixture::new().await;
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::DEFAULT
    };
    let (mut client, server) = pipe();
    let serving = tokio::spawn({
        let (store, keys) = (fixture.store.clone(), fixture.keys.clone());
        async move { serve_store(server, &STORE_INFO, &store, &keys, &limits).await }
    });
    after_handshake(&fixture, &mut client).await;
    write_message(&mut client, &new_item("stalled", 10_000))
        .await
        .unwrap();
    client.write_all(&data(10)).await.unwrap();
    let started = std::time::Instant::now();
    let served = tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            served,
            Err(CapabilityError::Idle {
                direction: Direction::Read,
                ..
            })
        ),
        "{served:?}"
    );
    assert!(started.elapsed() >= limits.idle_timeout);
    assert_eq!(stored_count(&fixture).await, 0);
    drop(client);
}

#[tokio::test(start_paused = true)]
async fn a_receiver_that_never_answers_fails_the_sender_after_the_idle_timeout() {
    let (client, _server) = pipe();
    let opened = StoreSender::open(client, "token", DOMAIN, Limits::DEFAULT).await;
    assert!(
        matches!(opened, Err(CapabilityError::Idle { .. })),
        "{opened:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_load_request_loses_the_stream() {
    let fixture = Fixture::new().await;
    let (mut client, server) = pipe();
    let serving = tokio::spawn({
        let (store, keys) = (fixture.store.clone(), fixture.keys.clone());
        async move { serve_load(server, &LOAD_INFO, &store, &keys, &Limits::DEFAULT).await }
    });
    let request = DomainClusterHandshakeRequest {
        access_token: fixture.token(LOAD_V1),
        domain_id: DOMAIN.into(),
    };
    write_message(&mut client, &request).await.unwrap();
    let _: DomainClusterHandshakeResponse = read_message(&mut client, 1 << 20).await.unwrap();
    // A frame whose body is not a ConsumeDataInputV1 (field 1 with a bad wire type).
    let mut frame = encode_frame(&UpsertMetadata::default()).unwrap();
    frame.truncate(4);
    frame.extend_from_slice(&[3, 2, 0x0f, 0xff]);
    frame[3] = 4;
    client.write_all(&frame).await.unwrap();
    let served = serving.await.unwrap();
    assert!(
        matches!(served, Err(CapabilityError::Frame { .. })),
        "{served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_requests_and_answers_of_the_wrong_shape_are_refused() {
    use domain_capabilities::{fetch_public_key, serve_public_key};
    let fixture = Fixture::new().await;

    let too_long = "d".repeat(257);
    let fetched = fetch_public_key(pipe().0, &too_long, &Limits::DEFAULT).await;
    assert!(
        matches!(fetched, Err(CapabilityError::BadKeyRequest { .. })),
        "{fetched:?}"
    );

    let (mut client, server) = pipe();
    client.write_all(too_long.as_bytes()).await.unwrap();
    client.shutdown().await.unwrap();
    let served = serve_public_key(server, &fixture.keys, &Limits::DEFAULT).await;
    assert!(
        matches!(served, Err(CapabilityError::BadKeyRequest { .. })),
        "{served:?}"
    );

    let (client, server) = pipe();
    let (served, fetched) = tokio::join!(
        serve_public_key(server, &fixture.keys, &Limits::DEFAULT),
        fetch_public_key(client, "unknown-domain", &Limits::DEFAULT),
    );
    assert!(
        matches!(served, Err(CapabilityError::NoPublicKey { .. })),
        "{served:?}"
    );
    assert!(
        matches!(fetched, Err(CapabilityError::NoPublicKey { .. })),
        "{fetched:?}"
    );

    let (client, mut server) = pipe();
    let liar = async move {
        let mut request = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut server, &mut request)
            .await
            .unwrap();
        server.write_all(&[7; 31]).await.unwrap();
        server.shutdown().await.unwrap();
    };
    let ((), fetched) = tokio::join!(liar, fetch_public_key(client, DOMAIN, &Limits::DEFAULT));
    assert!(
        matches!(fetched, Err(CapabilityError::BadPublicKey { len: 31 })),
        "{fetched:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_timeout_fires_on_time_even_with_large_limits() {
    // A different limit is honoured exactly.
    let fixture = Fixture::new().await;
    let limits = Limits {
        idle_timeout: Duration::from_secs(5),
        ..Limits::DEFAULT
    };
    let (_client, server) = pipe();
    let started = tokio::time::Instant::now();
    let served = serve_store(server, &STORE_INFO, &fixture.store, &fixture.keys, &limits).await;
    assert!(matches!(served, Err(CapabilityError::Idle { .. })));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_under_an_id_of_its_own_is_refused_unless_the_token_is_for_a_copy() {
    let fixture = Fixture::new().await;
    let blob = data(100);
    let replica = UpsertMetadata {
        id: "chosen-by-the-sender".into(),
        is_new: false,
        replica: Some(true),
        ..new_item("x", blob.len())
    };
    let store_with = |token: String| {
        let (client, server) = pipe();
        let replica = replica.clone();
        let blob = blob.clone();
        let fixture = &fixture;
        async move {
            let (served, sent) = tokio::join!(
                fixture.serve_store(server),
                store_items(
                    client,
                    &token,
                    DOMAIN,
                    [(replica, blob.as_slice())],
                    Limits::DEFAULT
                ),
            );
            (served.map(drop), sent)
        }
    };

    // An ordinary task's token: the sender may not choose the id.
    let (served, _) = store_with(fixture.token(STORE_V1)).await;
    assert!(
        matches!(served, Err(CapabilityError::Unexpected { .. })),
        "{served:?}"
    );
    assert_eq!(stored_count(&fixture).await, 0);

    // A copy the manager placed: stored under the id it has elsewhere.
    let copy = domain_auth::TaskClaims {
        copy: true,
        ..common::claims(STORE_V1)
    };
    let (served, sent) = store_with(fixture.key.issue(&copy).unwrap()).await;
    served.unwrap();
    assert_eq!(sent.unwrap()[0].id, "chosen-by-the-sender");
}
