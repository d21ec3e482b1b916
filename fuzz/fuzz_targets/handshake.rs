//! The receiver's handshake with token verification, three ways: the whole opener
//! stream arbitrary; an arbitrary token in a well-formed request; and arbitrary
//! claims, correctly signed with the domain key, so that every check after the
//! signature is reached. Whatever is accepted must satisfy every rule of docs/design.md §5.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain_auth::{LEEWAY_SECS, PublicKey};
use domain_capabilities::handshake::{StreamInfo, accept_at};
use domain_capabilities::{Limits, StaticKeys};
use domain_proto::task::DomainClusterHandshakeRequest;
use domain_proto::{encode_frame, protocols::STORE_V1};
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

const DOMAIN: &str = "domain-1";
const NOW: u64 = 1_800_000_000;
const INFO: StreamInfo<'static> = StreamInfo { local_peer: "receiver", remote_peer: "sender", protocol: STORE_V1, tokens: None, permits: None };

struct Setup {
    runtime: tokio::runtime::Runtime,
    signing: SigningKey,
    keys: StaticKeys,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let signing = SigningKey::from_bytes(&[5; 32]);
        let keys = StaticKeys::new().with(DOMAIN, PublicKey::from_bytes(signing.verifying_key().to_bytes()));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        Setup { runtime, signing, keys }
    })
}

fn request_frame(token: &str) -> Vec<u8> {
    encode_frame(&DomainClusterHandshakeRequest { access_token: token.to_owned(), domain_id: DOMAIN.into() }).unwrap()
}

fn signed(payload: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let signature = setup().signing.sign(message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    let stream_bytes = match mode % 3 {
        0 => rest.to_vec(),
        1 => request_frame(&String::from_utf8_lossy(rest)),
        _ => request_frame(&signed(rest)),
    };
    setup.runtime.block_on(async {
        let (mut opener, mut receiver) = tokio::io::duplex(stream_bytes.len() + 4096);
        opener.write_all(&stream_bytes).await.unwrap();
        opener.shutdown().await.unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(NOW);
        if let Ok(accepted) = accept_at(&mut receiver, &INFO, &setup.keys, &Limits::DEFAULT, now).await {
            let claims = accepted.claims;
            assert_eq!(accepted.domain.as_str(), DOMAIN);
            assert_eq!(claims.domain_id, DOMAIN);
            assert_eq!(claims.receiver, INFO.local_peer);
            assert_eq!(claims.sender, INFO.remote_peer);
            assert_eq!(claims.endpoint, INFO.protocol);
            assert!(claims.exp.saturating_add(LEEWAY_SECS) >= NOW);
            assert!(claims.iat <= NOW + LEEWAY_SECS);
            // Only a token signed here with the domain key can pass: anything else
            // accepted would be a forgery.
            assert_eq!(mode % 3, 2);
        }
    });
});
