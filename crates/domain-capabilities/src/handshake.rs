//! The handshake that opens every task stream (docs/protocol.md, docs/design.md §5).
//!
//! The opener sends `DomainClusterHandshakeRequest{access_token, domain_id}`; the
//! receiver checks the token with the domain's public key and answers
//! `DomainClusterHandshakeResponse` with OK, or BadRequest and the reason, then closes.
//!
//! The OK answer also names the additive extensions of the stream's protocol that this
//! receiver speaks (field 3, which v1 peers neither send nor read): an opener uses an
//! extension that changes the exchange, such as [`RESUME`] on `/store/v1`, only once the
//! receiver has named it, so v1 receivers keep working.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use domain_auth::{Expected, MAX_TOKEN_LEN, PublicKey, Rejection, TaskClaims, unix_secs, verify};
use domain_proto::protocols::STORE_V1;
use domain_proto::task::{Code, DomainClusterHandshakeRequest, DomainClusterHandshakeResponse};
use domain_proto::{DomainId, MAX_DOMAIN_ID_LEN};
use domain_proto::{read_message, read_message_or_eof, write_message};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ledger::{TokenLedger, TokenUse};
use crate::{CapabilityError, Limits};

/// Where a receiver gets the public key of a domain to check tokens with.
///
/// A node fetches keys from the manager over `/public-key/v1` and caches them; tests
/// and fixed set-ups use [`StaticKeys`]; any async closure fits through [`KeyFn`].
pub trait PublicKeySource: Send + Sync {
    /// The public key of `domain_id`, or why there is none.
    fn public_key(&self, domain_id: &str)
    -> impl Future<Output = Result<PublicKey, String>> + Send;

    /// A fresher key of `domain_id` than [`public_key`](Self::public_key) gave, asked
    /// for once when a token's signature does not verify: a source that caches keys
    /// fetched elsewhere refetches here, so that a rotated domain key is picked up.
    /// `None` (the default) when there is nothing fresher to have.
    fn refreshed_key(&self, domain_id: &str) -> impl Future<Output = Option<PublicKey>> + Send {
        let _ = domain_id;
        std::future::ready(None)
    }
}

impl<T: PublicKeySource> PublicKeySource for &T {
    fn public_key(
        &self,
        domain_id: &str,
    ) -> impl Future<Output = Result<PublicKey, String>> + Send {
        (**self).public_key(domain_id)
    }

    fn refreshed_key(&self, domain_id: &str) -> impl Future<Output = Option<PublicKey>> + Send {
        (**self).refreshed_key(domain_id)
    }
}

impl<T: PublicKeySource> PublicKeySource for std::sync::Arc<T> {
    fn public_key(
        &self,
        domain_id: &str,
    ) -> impl Future<Output = Result<PublicKey, String>> + Send {
        (**self).public_key(domain_id)
    }

    fn refreshed_key(&self, domain_id: &str) -> impl Future<Output = Option<PublicKey>> + Send {
        (**self).refreshed_key(domain_id)
    }
}

/// A fixed map from domain id to public key.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys(HashMap<String, PublicKey>);

impl StaticKeys {
    /// An empty map: every domain is unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the key of `domain_id`.
    #[must_use]
    pub fn with(mut self, domain_id: impl Into<String>, key: PublicKey) -> Self {
        self.0.insert(domain_id.into(), key);
        self
    }
}

impl PublicKeySource for StaticKeys {
    fn public_key(
        &self,
        domain_id: &str,
    ) -> impl Future<Output = Result<PublicKey, String>> + Send {
        let key = self
            .0
            .get(domain_id)
            .copied()
            .ok_or_else(|| "unknown domain".to_owned());
        std::future::ready(key)
    }
}

/// A key source from an async function of the domain id.
///
/// ```
/// use domain_auth::PublicKey;
/// use domain_capabilities::KeyFn;
///
/// let keys = KeyFn(|domain_id: String| async move {
///     if domain_id == "d" { Ok(PublicKey::from_bytes([1; 32])) } else { Err("unknown".to_owned()) }
/// });
/// # let _ = keys;
/// ```
#[derive(Debug, Clone)]
pub struct KeyFn<F>(pub F);

impl<F, Fut> PublicKeySource for KeyFn<F>
where
    F: Fn(String) -> Fut + Send + Sync,
    Fut: Future<Output = Result<PublicKey, String>> + Send,
{
    fn public_key(
        &self,
        domain_id: &str,
    ) -> impl Future<Output = Result<PublicKey, String>> + Send {
        (self.0)(domain_id.to_owned())
    }
}

/// Who is at each end of a task stream, and which protocol it was opened on.
#[derive(Debug, Clone, Copy)]
pub struct StreamInfo<'a> {
    /// This peer's id (the token's `receiver`).
    pub local_peer: &'a str,
    /// The remote peer's id (the token's `sender`).
    pub remote_peer: &'a str,
    /// The protocol id the stream was opened on (the token's `endpoint`).
    pub protocol: &'a str,
    /// The tokens this receiver has served: with one, a token opens one stream at a time
    /// and none once a stream of it ended well (see [`TokenLedger`]); `None` checks only
    /// the token itself.
    pub tokens: Option<&'a TokenLedger>,
    /// The receiver's task-stream permits: with them, a stream whose token was accepted
    /// takes one before the OK is sent, and is dropped unanswered when none is free
    /// ([`CapabilityError::Busy`]; the sender tries again), so that streams still in
    /// their handshake never hold one. `None` takes none.
    pub permits: Option<&'a Arc<Semaphore>>,
}

/// What an accepted stream holds until it ends: its token in the receiver's ledger, and
/// one of the receiver's permits.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    pub(crate) token: Option<TokenUse>,
    #[expect(dead_code, reason = "held for its drop, which gives the permit back")]
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

/// A handshake the receiver accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The domain the stream works on.
    pub domain: DomainId,
    /// The verified token claims.
    pub claims: TaskClaims,
}

/// The extension of `/store/v1` by which an upload cut short continues where the receiver's
/// kept bytes end (`UpsertMetadata.resume_key`, `ResumeOffer`, `ResumeStart`).
pub const RESUME: &str = "resume";

/// The extension of `/store/v1` by which the sender keeps several items in flight: it
/// sends the next items before the answer of the first has come, up to
/// `PIPELINE_ITEMS` items and `PIPELINE_BYTES` bytes of content unanswered. The receiver
/// answers in order, each item once it is durable. The wire does not change, only the
/// sender's patience, so a receiver names it only to say it stores items side by side.
pub const PIPELINE: &str = "pipeline";

/// The extensions a receiver of this crate speaks on `protocol`.
fn extensions_of(protocol: &str) -> Vec<String> {
    match protocol {
        STORE_V1 => vec![RESUME.to_owned(), PIPELINE.to_owned()],
        _ => Vec::new(),
    }
}

/// What the receiver of an opened task stream said besides OK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Opened {
    /// The extensions of the protocol the receiver speaks; none from a v1 receiver.
    pub extensions: Vec<String>,
}

impl Opened {
    /// Whether the receiver named `extension`.
    pub fn speaks(&self, extension: &str) -> bool {
        self.extensions.iter().any(|e| e == extension)
    }
}

/// Opens a task stream: sends the token, waits for the receiver's answer.
///
/// # Errors
/// [`CapabilityError::Refused`] with the receiver's message when it answers
/// BadRequest or closes the stream without an answer (what posemesh peers do);
/// stream, frame and idle errors otherwise.
pub async fn open<S>(
    stream: &mut S,
    access_token: &str,
    domain_id: &str,
    limits: &Limits,
) -> Result<Opened, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let request = DomainClusterHandshakeRequest {
        access_token: access_token.to_owned(),
        domain_id: domain_id.to_owned(),
    };
    write_message(stream, &request)
        .await
        .map_err(|e| CapabilityError::frame("sending the handshake", e))?;
    let response: Option<DomainClusterHandshakeResponse> =
        read_message_or_eof(stream, limits.max_frame)
            .await
            .map_err(|e| CapabilityError::frame("reading the handshake response", e))?;
    match response {
        None => Err(CapabilityError::Refused {
            message: "the receiver closed the stream without an answer".into(),
        }),
        Some(response) if response.code() == Code::Ok => Ok(Opened {
            extensions: response.extensions,
        }),
        Some(response) => Err(CapabilityError::Refused {
            message: if response.err_msg.is_empty() {
                format!("code {}", response.code)
            } else {
                response.err_msg
            },
        }),
    }
}

/// The largest handshake request a receiver reads: a token of [`MAX_TOKEN_LEN`] bytes, a
/// domain id of [`MAX_DOMAIN_ID_LEN`] and their framing.
pub const MAX_HANDSHAKE_FRAME: usize = MAX_TOKEN_LEN + MAX_DOMAIN_ID_LEN + 32;

/// Receives the handshake of a task stream: reads the request, checks the token at
/// the current time, and answers OK or BadRequest with the reason.
///
/// On refusal the write half is closed after the answer and the reason is returned;
/// the caller drops the stream.
///
/// # Errors
/// [`CapabilityError::Rejected`] with the [`Rejection`],
/// [`CapabilityError::InvalidDomain`], [`CapabilityError::NoPublicKey`], or a stream,
/// frame or idle error.
pub async fn accept<S, K>(
    stream: &mut S,
    info: &StreamInfo<'_>,
    keys: &K,
    limits: &Limits,
) -> Result<Accepted, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: PublicKeySource,
{
    accept_at(stream, info, keys, limits, SystemTime::now()).await
}

/// [`accept`] with the time to check the token against.
///
/// With a ledger in `info`, the token is checked against it, and released at once: to
/// hold it for the stream and spend it when the stream ends well, serve through
/// [`accept_task_stream`](crate::accept_task_stream).
///
/// # Errors
/// As [`accept`].
pub async fn accept_at<S, K>(
    stream: &mut S,
    info: &StreamInfo<'_>,
    keys: &K,
    limits: &Limits,
    now: SystemTime,
) -> Result<Accepted, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: PublicKeySource,
{
    accept_claiming(stream, info, keys, limits, now)
        .await
        .map(|(accepted, _)| accepted)
}

/// [`accept_at`], holding the token in `info`'s ledger (if any) for the stream.
pub(crate) async fn accept_claiming<S, K>(
    stream: &mut S,
    info: &StreamInfo<'_>,
    keys: &K,
    limits: &Limits,
    now: SystemTime,
) -> Result<(Accepted, Holds), CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: PublicKeySource,
{
    // Bounded by what a valid handshake holds, not by the stream's frame limit: a token
    // over MAX_TOKEN_LEN is refused before its bytes are read, not after.
    let limit = limits.max_frame.min(MAX_HANDSHAKE_FRAME);
    let request: DomainClusterHandshakeRequest = read_message(stream, limit)
        .await
        .map_err(|e| CapabilityError::frame("reading the handshake", e))?;
    match check(&request, info, keys, now).await {
        Ok((accepted, token)) => {
            let permit = match info.permits {
                Some(permits) => match Arc::clone(permits).try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    // Unanswered, the token released: the sender tries again later.
                    Err(_) => return Err(CapabilityError::Busy),
                },
                None => None,
            };
            let ok = DomainClusterHandshakeResponse {
                code: Code::Ok as i32,
                err_msg: String::new(),
                extensions: extensions_of(info.protocol),
            };
            write_message(stream, &ok)
                .await
                .map_err(|e| CapabilityError::frame("accepting the handshake", e))?;
            Ok((accepted, Holds { token, permit }))
        }
        Err(refusal) => {
            let bad = DomainClusterHandshakeResponse {
                code: Code::BadRequest as i32,
                err_msg: domain_proto::ErrorChain(&refusal).to_string(),
                extensions: Vec::new(),
            };
            // The refusal is the error that matters; a peer that cannot take the answer
            // loses nothing it was owed.
            if write_message(stream, &bad).await.is_ok() {
                let _ = stream.shutdown().await;
            }
            Err(refusal)
        }
    }
}

async fn check<K: PublicKeySource>(
    request: &DomainClusterHandshakeRequest,
    info: &StreamInfo<'_>,
    keys: &K,
    now: SystemTime,
) -> Result<(Accepted, Option<TokenUse>), CapabilityError> {
    let domain = DomainId::new(request.domain_id.as_str())?;
    let key =
        keys.public_key(domain.as_str())
            .await
            .map_err(|reason| CapabilityError::NoPublicKey {
                domain_id: domain.to_string(),
                reason,
            })?;
    let expected = Expected {
        domain_id: domain.as_str(),
        receiver: info.local_peer,
        sender: info.remote_peer,
        endpoint: info.protocol,
    };
    let claims = match verify(&request.access_token, &key, &expected, now) {
        Err(Rejection::BadSignature { .. }) => match keys.refreshed_key(domain.as_str()).await {
            Some(fresh) if fresh != key => verify(&request.access_token, &fresh, &expected, now)?,
            _ => {
                return Err(Rejection::BadSignature {
                    domain_id: domain.to_string(),
                }
                .into());
            }
        },
        verified => verified?,
    };
    let token = match info.tokens {
        Some(ledger) => Some(ledger.claim(&claims, unix_secs(now))?),
        None => None,
    };
    Ok((Accepted { domain, claims }, token))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use domain_auth::DomainKey;
    use domain_datastore::LocalDatastore;
    use domain_proto::protocols::STORE_V1;

    use super::*;
    use crate::{Served, StoreSender, accept_task_stream};

    const DOMAIN: &str = "domain-1";
    const INFO: StreamInfo<'static> = StreamInfo {
        local_peer: "receiver",
        remote_peer: "sender",
        protocol: STORE_V1,
        tokens: None,
        permits: None,
    };

    /// A cache holding a stale key, and the fresh one it would fetch.
    struct RotatingKeys {
        cached: Mutex<PublicKey>,
        fresh: Option<PublicKey>,
    }

    impl PublicKeySource for RotatingKeys {
        async fn public_key(&self, _domain_id: &str) -> Result<PublicKey, String> {
            Ok(*self.cached.lock().unwrap())
        }

        async fn refreshed_key(&self, _domain_id: &str) -> Option<PublicKey> {
            let fresh = self.fresh?;
            *self.cached.lock().unwrap() = fresh;
            Some(fresh)
        }
    }

    fn token(key: &DomainKey) -> String {
        let claims = TaskClaims::new(
            DOMAIN,
            "job-1",
            "task-1",
            "sender",
            "receiver",
            STORE_V1,
            SystemTime::now(),
            Duration::from_secs(60),
        );
        key.issue(&claims).unwrap()
    }

    async fn handshake(token: &str, keys: &RotatingKeys) -> Result<Accepted, CapabilityError> {
        let limits = Limits::default();
        let (mut opener, mut receiver) = tokio::io::duplex(4096);
        let (opened, accepted) = tokio::join!(
            open(&mut opener, token, DOMAIN, &limits),
            accept(&mut receiver, &INFO, keys, &limits),
        );
        assert_eq!(opened.is_ok(), accepted.is_ok());
        accepted
    }

    #[tokio::test]
    async fn an_accepted_stream_holds_a_permit_and_one_past_them_goes_unanswered() {
        let key = DomainKey::generate(DOMAIN).unwrap();
        let keys = StaticKeys::new().with(DOMAIN, key.public_key());
        let limits = Limits::default();
        let permits = Arc::new(Semaphore::new(1));
        let info = StreamInfo {
            permits: Some(&permits),
            ..INFO
        };
        // Opens a stream on a fresh token; the opener's half stays open until dropped.
        let open_one = || async {
            let (mut opener, receiver) = tokio::io::duplex(4096);
            let (opened, accepted) = tokio::join!(
                async {
                    let opened = open(&mut opener, &token(&key), DOMAIN, &limits).await;
                    (opened, opener)
                },
                accept_task_stream(receiver, &info, &keys, &limits),
            );
            (opened, accepted)
        };
        let ((opened, _opener), first) = open_one().await;
        assert!(opened.is_ok());
        let first = first.unwrap();
        assert_eq!(
            permits.available_permits(),
            0,
            "the accepted stream holds it"
        );

        let ((opened, _opener), second) = open_one().await;
        assert!(matches!(second, Err(CapabilityError::Busy)), "{second:?}");
        assert!(
            opened.is_err(),
            "the stream past the permits goes unanswered"
        );

        drop(first);
        assert_eq!(permits.available_permits(), 1, "back with the stream's end");
    }

    #[tokio::test]
    async fn a_token_of_a_rotated_key_is_accepted_once_the_source_refreshes_it() {
        let old = DomainKey::generate(DOMAIN).unwrap();
        let new = DomainKey::generate(DOMAIN).unwrap();
        let keys = RotatingKeys {
            cached: Mutex::new(old.public_key()),
            fresh: Some(new.public_key()),
        };
        let accepted = handshake(&token(&new), &keys).await.unwrap();
        assert_eq!(accepted.claims.job_id, "job-1");
        assert_eq!(*keys.cached.lock().unwrap(), new.public_key());
    }

    #[tokio::test]
    async fn a_bad_signature_is_refused_when_the_source_has_no_fresher_key() {
        let signer = DomainKey::generate(DOMAIN).unwrap();
        let other = DomainKey::generate(DOMAIN).unwrap();
        let stale = RotatingKeys {
            cached: Mutex::new(other.public_key()),
            fresh: None,
        };
        let same = RotatingKeys {
            cached: Mutex::new(other.public_key()),
            fresh: Some(other.public_key()),
        };
        for keys in [stale, same] {
            let refused = handshake(&token(&signer), &keys).await.unwrap_err();
            assert!(
                matches!(
                    refused,
                    CapabilityError::Rejected(Rejection::BadSignature { .. })
                ),
                "{refused}"
            );
        }
    }

    #[tokio::test]
    async fn an_accepted_task_stream_shows_its_claims_before_serving() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDatastore::open(dir.path()).await.unwrap();
        let key = DomainKey::generate(DOMAIN).unwrap();
        let keys = StaticKeys::new().with(DOMAIN, key.public_key());
        let limits = Limits::default();
        let (opener, receiver) = tokio::io::duplex(64 * 1024);
        let token = token(&key);
        let sending = async {
            let mut sender = StoreSender::open(opener, &token, DOMAIN, limits).await?;
            let item = domain_proto::domain_data::UpsertMetadata {
                name: "a".into(),
                is_new: true,
                ..Default::default()
            };
            sender.send_bytes(item, &b"abc"[..]).await?;
            sender.finish().await
        };
        let serving = async {
            let accepted = accept_task_stream(receiver, &INFO, &keys, &limits).await?;
            assert_eq!(accepted.accepted().claims.task_name, "task-1");
            accepted.serve(&store).await
        };
        let (sent, served) = tokio::join!(sending, serving);
        sent.unwrap();
        assert!(matches!(served.unwrap(), Served::Store(s) if s.items == 1 && s.bytes == 3));
    }

    #[tokio::test]
    async fn a_stream_of_another_protocol_is_refused_before_any_read() {
        let (_opener, receiver) = tokio::io::duplex(64);
        let info = StreamInfo {
            protocol: "/compute/v1",
            ..INFO
        };
        let refused = accept_task_stream(receiver, &info, &StaticKeys::new(), &Limits::default())
            .await
            .unwrap_err();
        assert!(matches!(
            refused,
            CapabilityError::UnsupportedProtocol { .. }
        ));
    }
}
