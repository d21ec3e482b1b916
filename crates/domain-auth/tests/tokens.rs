//! Task-token verification: a valid token passes, and every attack of the issue's
//! table is refused with its own reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain_auth::{
    DomainKey, Expected, LEEWAY_SECS, MAX_TOKEN_LIFETIME, PublicKey, Rejection, TaskClaims,
    lifetime_for_timeout, verify,
};
use ed25519_dalek::{Signer, SigningKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{Value, json};

const DOMAIN: &str = "domain-1";
const SENDER: &str = "12D3KooWSender";
const RECEIVER: &str = "12D3KooWReceiver";
const ENDPOINT: &str = "/store/v1";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const T0: u64 = 1_800_000_000;

fn expected() -> Expected<'static> {
    Expected {
        domain_id: DOMAIN,
        receiver: RECEIVER,
        sender: SENDER,
        endpoint: ENDPOINT,
    }
}

fn claims() -> TaskClaims {
    TaskClaims::new(
        DOMAIN,
        "job",
        "task",
        SENDER,
        RECEIVER,
        ENDPOINT,
        at(T0),
        Duration::from_secs(600),
    )
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs arbitrary header and payload JSON with an Ed25519 key, as a forger with
/// the right key (or a wrong one) would.
fn sign_raw(key: &SigningKey, header: &Value, payload: &Value) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let signature = key.sign(message.as_bytes());
    format!("{message}.{}", b64(&signature.to_bytes()))
}

struct Fixture {
    signing: SigningKey,
    public: PublicKey,
}

impl Fixture {
    fn new() -> Self {
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let public = PublicKey::from_bytes(signing.verifying_key().to_bytes());
        Self { signing, public }
    }

    fn token_with(&self, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let mut payload = serde_json::to_value(claims()).unwrap();
        edit(payload.as_object_mut().unwrap());
        sign_raw(
            &self.signing,
            &json!({"alg": "EdDSA", "typ": "JWT"}),
            &payload,
        )
    }

    fn check(&self, token: &str, now: u64) -> Result<TaskClaims, Rejection> {
        verify(token, &self.public, &expected(), at(now))
    }
}

#[test]
fn a_valid_token_is_accepted_and_returns_its_claims() {
    let key = DomainKey::generate(DOMAIN).unwrap();
    let token = key.issue(&claims()).unwrap();
    let got = verify(&token, &key.public_key(), &expected(), at(T0 + 1)).unwrap();
    assert_eq!(got.job_id, "job");
    assert_eq!(got.exp, T0 + 600);
    assert_eq!(got.sub, SENDER);
    assert_eq!(got.scope, ENDPOINT);
}

#[test]
fn a_holder_reads_its_tokens_claims_without_the_key_but_garbage_is_refused() {
    let key = DomainKey::generate(DOMAIN).unwrap();
    let issued = claims();
    let token = key.issue(&issued).unwrap();
    assert_eq!(TaskClaims::read_unverified(&token).unwrap(), issued);
    // The holder cannot check the signature, so a forged one reads the same: reading
    // grants nothing.
    let forged = format!("{}.AAAA", token.rsplit_once('.').unwrap().0);
    assert_eq!(TaskClaims::read_unverified(&forged).unwrap(), issued);
    for garbage in ["", "a.b", "a.b.c", &"x".repeat(10_000)] {
        assert!(
            matches!(
                TaskClaims::read_unverified(garbage),
                Err(Rejection::Malformed { .. })
            ),
            "{garbage:.20}"
        );
    }
}

#[test]
fn a_token_hand_signed_with_the_right_key_is_accepted() {
    let f = Fixture::new();
    assert!(f.check(&f.token_with(|_| {}), T0).is_ok());
}

#[test]
fn a_token_just_past_exp_is_accepted_within_the_leeway() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    assert!(f.check(&token, T0 + 600 + LEEWAY_SECS).is_ok());
}

#[test]
fn a_token_expired_beyond_the_leeway_is_refused() {
    let f = Fixture::new();
    let now = T0 + 600 + LEEWAY_SECS + 1;
    assert_eq!(
        f.check(&f.token_with(|_| {}), now),
        Err(Rejection::Expired { exp: T0 + 600, now })
    );
}

#[test]
fn a_token_issued_in_the_future_is_refused() {
    let f = Fixture::new();
    let now = T0 - LEEWAY_SECS - 1;
    assert_eq!(
        f.check(&f.token_with(|_| {}), now),
        Err(Rejection::IssuedInFuture { iat: T0, now })
    );
    assert!(f.check(&f.token_with(|_| {}), T0 - LEEWAY_SECS).is_ok());
}

/// Whether a rejection is of the expected kind.
type IsReason = fn(&Rejection) -> bool;

#[test]
fn a_token_for_another_domain_receiver_sender_or_endpoint_is_refused() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let cases: [(Expected<'_>, IsReason); 4] = [
        (
            Expected {
                domain_id: "domain-2",
                ..expected()
            },
            |r| matches!(r, Rejection::WrongDomain { .. }),
        ),
        (
            Expected {
                receiver: "12D3KooWOther",
                ..expected()
            },
            |r| matches!(r, Rejection::WrongReceiver { .. }),
        ),
        (
            Expected {
                sender: "12D3KooWThief",
                ..expected()
            },
            |r| matches!(r, Rejection::WrongSender { .. }),
        ),
        (
            Expected {
                endpoint: "/load/v1",
                ..expected()
            },
            |r| matches!(r, Rejection::WrongEndpoint { .. }),
        ),
    ];
    for (expected, is_reason) in cases {
        let rejection = verify(&token, &f.public, &expected, at(T0)).unwrap_err();
        assert!(is_reason(&rejection), "{expected:?}: {rejection}");
    }
}

#[test]
fn a_token_signed_with_another_domains_key_is_refused() {
    let f = Fixture::new();
    let other = DomainKey::generate(DOMAIN).unwrap();
    let token = other.issue(&claims()).unwrap();
    assert_eq!(
        f.check(&token, T0),
        Err(Rejection::BadSignature {
            domain_id: DOMAIN.into()
        })
    );
}

#[test]
fn an_alg_none_token_is_refused() {
    let f = Fixture::new();
    let payload = serde_json::to_value(claims()).unwrap();
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        let body = b64(payload.to_string().as_bytes());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            let rejection = f.check(&token, T0).unwrap_err();
            assert!(
                matches!(&rejection, Rejection::AlgNotEdDsa { alg: got } if got == alg)
                    || matches!(rejection, Rejection::Malformed { .. }),
                "{token}: {rejection}"
            );
        }
        let token = format!("{header}.{body}.");
        assert_eq!(
            f.check(&token, T0),
            Err(Rejection::AlgNotEdDsa { alg: alg.into() })
        );
    }
}

#[test]
fn an_hs256_token_signed_with_the_public_key_as_secret_is_refused() {
    let f = Fixture::new();
    for secret in [
        f.public.as_bytes().to_vec(),
        f.public.to_string().into_bytes(),
    ] {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_eq!(
            f.check(&token, T0),
            Err(Rejection::AlgNotEdDsa {
                alg: "HS256".into()
            })
        );
    }
}

#[test]
fn a_token_whose_header_alg_is_not_a_string_is_refused() {
    let f = Fixture::new();
    let token = sign_raw(
        &f.signing,
        &json!({"alg": ["EdDSA"]}),
        &serde_json::to_value(claims()).unwrap(),
    );
    assert!(matches!(
        f.check(&token, T0),
        Err(Rejection::AlgNotEdDsa { .. })
    ));
}

#[test]
fn a_token_with_a_tampered_payload_is_refused() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = serde_json::to_value(claims()).unwrap();
    forged["sender"] = json!("12D3KooWThief");
    forged["sub"] = json!("12D3KooWThief");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged.to_string().as_bytes()),
        parts[2]
    );
    let thief = Expected {
        sender: "12D3KooWThief",
        ..expected()
    };
    assert_eq!(
        verify(&tampered, &f.public, &thief, at(T0)),
        Err(Rejection::BadSignature {
            domain_id: DOMAIN.into()
        })
    );
}

#[test]
fn a_token_with_a_tampered_signature_is_refused() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
    for i in [0, 31, 32, 63] {
        bytes[i] ^= 0x01;
        let tampered = format!("{message}.{}", b64(&bytes));
        assert_eq!(
            f.check(&tampered, T0),
            Err(Rejection::BadSignature {
                domain_id: DOMAIN.into()
            })
        );
        bytes[i] ^= 0x01;
    }
    let truncated = format!("{message}.{}", b64(&bytes[..63]));
    assert!(f.check(&truncated, T0).is_err());
    let empty = format!("{message}.");
    assert!(f.check(&empty, T0).is_err());
}

#[test]
fn a_token_without_exp_is_refused() {
    let f = Fixture::new();
    assert_eq!(
        f.check(&f.token_with(|c| drop(c.remove("exp"))), T0),
        Err(Rejection::MissingExp)
    );
}

#[test]
fn a_token_whose_exp_is_not_a_number_is_refused() {
    let f = Fixture::new();
    for bad in [
        json!((T0 + 600).to_string()),
        json!(null),
        json!(-5),
        json!(1.5e9),
        json!([T0]),
    ] {
        let token = f.token_with(|c| drop(c.insert("exp".into(), bad.clone())));
        assert!(
            matches!(f.check(&token, T0), Err(Rejection::ExpNotNumeric { .. })),
            "{bad}"
        );
    }
}

#[test]
fn a_token_missing_another_claim_is_refused_as_malformed() {
    let f = Fixture::new();
    for claim in ["domain_id", "receiver", "sender", "endpoint", "iat"] {
        let token = f.token_with(|c| drop(c.remove(claim)));
        assert!(
            matches!(f.check(&token, T0), Err(Rejection::Malformed { .. })),
            "{claim}"
        );
    }
}

#[test]
fn garbage_is_refused_as_malformed() {
    let f = Fixture::new();
    let long = "a".repeat(100_000);
    for garbage in [
        "",
        ".",
        "..",
        "a.b.c",
        "a.b.c.d",
        "\u{0}\u{1}",
        "eyJ.eyJ.eyJ",
        long.as_str(),
    ] {
        assert!(
            matches!(f.check(garbage, T0), Err(Rejection::Malformed { .. })),
            "{garbage:.20}"
        );
    }
}

#[test]
fn a_public_key_that_is_not_a_curve_point_refuses_every_token() {
    let f = Fixture::new();
    let token = f.token_with(|_| {});
    // y = 2 does not decompress to a point of the Ed25519 curve.
    let mut bad = [0u8; 32];
    bad[0] = 2;
    let rejection = verify(&token, &PublicKey::from_bytes(bad), &expected(), at(T0)).unwrap_err();
    assert!(
        matches!(
            rejection,
            Rejection::InvalidPublicKey { .. } | Rejection::BadSignature { .. }
        ),
        "{rejection}"
    );
}

#[test]
fn token_lifetime_is_the_task_timeout_capped_at_one_hour_and_rounded_up() {
    assert_eq!(
        lifetime_for_timeout(Duration::from_secs(30)),
        Duration::from_secs(30)
    );
    assert_eq!(
        lifetime_for_timeout(Duration::from_secs(7200)),
        MAX_TOKEN_LIFETIME
    );
    let short = TaskClaims::new(
        DOMAIN,
        "j",
        "t",
        SENDER,
        RECEIVER,
        ENDPOINT,
        at(T0),
        Duration::from_millis(500),
    );
    assert_eq!(short.exp, T0 + 1);
    let long = TaskClaims::new(
        DOMAIN,
        "j",
        "t",
        SENDER,
        RECEIVER,
        ENDPOINT,
        at(T0),
        Duration::from_secs(86_400),
    );
    assert_eq!(long.exp, T0 + 3600);
}

#[test]
fn each_token_has_its_own_jti() {
    assert_ne!(claims().jti, claims().jti);
}

proptest! {
    #[test]
    fn arbitrary_text_never_verifies_and_never_panics(token in ".{0,400}") {
        let f = Fixture::new();
        prop_assert!(f.check(&token, T0).is_err());
    }

    #[test]
    fn any_single_byte_change_of_a_valid_token_is_refused(index in 0usize..10_000, byte in any::<u8>()) {
        let f = Fixture::new();
        let token = f.token_with(|_| {});
        let mut bytes = token.clone().into_bytes();
        let index = index % bytes.len();
        prop_assume!(bytes[index] != byte);
        bytes[index] = byte;
        if let Ok(tampered) = String::from_utf8(bytes) {
            // base64url's last character can carry unused bits: a change there may
            // decode to the same bytes, which is the same token.
            let same = tampered.split('.').zip(token.split('.')).all(|(a, b)| {
                a == b || URL_SAFE_NO_PAD.decode(a).ok().zip(URL_SAFE_NO_PAD.decode(b).ok()).is_some_and(|(x, y)| x == y)
            });
            prop_assume!(!same);
            prop_assert!(f.check(&tampered, T0).is_err());
        }
    }
}
