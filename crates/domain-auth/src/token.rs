//! Task tokens (docs/design.md §5): the claims, and the receiver's checks.
//!
//! A token is a JWT signed with alg EdDSA by the domain's key. [`verify`] accepts a
//! token only when every check of §5 passes and otherwise names the first that
//! failed as a [`Rejection`]. Time is a parameter, so callers (and tests) decide
//! what "now" is; [`verify_now`] reads the system clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::key::PublicKey;

/// Clock skew tolerated on `exp` and `iat`, in seconds (docs/design.md §5 allows at most 30).
pub const LEEWAY_SECS: u64 = 30;

/// The longest a token may live: a task's timeout, capped at one hour.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Tokens longer than this are refused unparsed; a real one is well under 2 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims of a task token.
///
/// Field names are the JSON claim names. `sub` and `scope` restate, for generic JWT
/// tooling, what the dedicated claims say: `sub` is the sender's peer id (the
/// principal the token is granted to, RFC 7519 §4.1.2) and `scope` is the one
/// protocol id the token opens (an OAuth-style scope list with a single entry).
/// [`verify`] checks the dedicated claims; `sub` and `scope` carry no extra power.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskClaims {
    /// The domain whose data the task works on.
    pub domain_id: String,
    /// The job the task belongs to.
    pub job_id: String,
    /// The task's name within its job.
    pub task_name: String,
    /// Peer id of the party that opens the task stream.
    pub sender: String,
    /// Peer id of the party that accepts it.
    pub receiver: String,
    /// The protocol id the token opens (`/store/v1`, `/load/v1`, …).
    pub endpoint: String,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, in seconds since the Unix epoch.
    pub exp: u64,
    /// The sender's peer id (see the type's docs).
    pub sub: String,
    /// The endpoint, as an OAuth-style scope (see the type's docs).
    pub scope: String,
    /// A unique token id (a random UUID), for logs and replay tracking.
    pub jti: String,
    /// The task is a copy the manager placed: the stream may store items under the ids
    /// they have elsewhere (`UpsertMetadata.replica`). Absent (false) on every other task.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy: bool,
}

impl TaskClaims {
    /// Claims for one task, issued at `now` and valid for `lifetime` (rounded up to
    /// whole seconds and capped at [`MAX_TOKEN_LIFETIME`]).
    ///
    /// `sub` is set to `sender`, `scope` to `endpoint`, `jti` to a fresh random UUID.
    /// Use [`lifetime_for_timeout`] to derive the lifetime from a task's timeout.
    #[expect(
        clippy::too_many_arguments,
        reason = "one parameter per claim of docs/design.md §5"
    )]
    pub fn new(
        domain_id: impl Into<String>,
        job_id: impl Into<String>,
        task_name: impl Into<String>,
        sender: impl Into<String>,
        receiver: impl Into<String>,
        endpoint: impl Into<String>,
        now: SystemTime,
        lifetime: Duration,
    ) -> Self {
        let sender = sender.into();
        let endpoint = endpoint.into();
        let iat = unix_secs(now);
        let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
        let lifetime_secs = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
        Self {
            domain_id: domain_id.into(),
            job_id: job_id.into(),
            task_name: task_name.into(),
            sub: sender.clone(),
            sender,
            receiver: receiver.into(),
            scope: endpoint.clone(),
            endpoint,
            iat,
            exp: iat.saturating_add(lifetime_secs),
            jti: uuid::Uuid::new_v4().to_string(),
            copy: false,
        }
    }
}

impl TaskClaims {
    /// The claims `token` states, read without checking its signature or any claim: what
    /// the holder of a token reads to learn when it expires. Never a basis for trust; a
    /// receiver calls [`verify`].
    ///
    /// # Errors
    /// [`Rejection::Malformed`] (or [`Rejection::AlgNotEdDsa`]) when `token` is no EdDSA
    /// JWT carrying these claims.
    pub fn read_unverified(token: &str) -> Result<Self, Rejection> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(malformed(format!(
                "{} bytes is longer than {MAX_TOKEN_LEN}",
                token.len()
            )));
        }
        let parts = split_and_check_alg(token)?;
        let payload = URL_SAFE_NO_PAD
            .decode(parts.payload)
            .map_err(|err| malformed(format!("payload is not base64url: {err}")))?;
        serde_json::from_slice(&payload).map_err(|err| malformed(format!("claims: {err}")))
    }
}

/// The default token lifetime for a task with this timeout: the timeout itself,
/// at most [`MAX_TOKEN_LIFETIME`].
pub fn lifetime_for_timeout(timeout: Duration) -> Duration {
    timeout.min(MAX_TOKEN_LIFETIME)
}

/// Seconds since the Unix epoch; times before it count as 0.
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What the receiver of a task stream expects a token to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected<'a> {
    /// The domain id of the handshake request.
    pub domain_id: &'a str,
    /// The receiver's own peer id.
    pub receiver: &'a str,
    /// The remote peer id of the stream.
    pub sender: &'a str,
    /// The protocol the stream was opened on.
    pub endpoint: &'a str,
}

/// Why a token was refused: one variant per check of docs/design.md §5.
///
/// The `Display` text is what a receiver sends back in a BadRequest handshake response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The header's alg is not EdDSA (HS256, RS256, `none`, …).
    #[error("token alg {alg:?} is not EdDSA")]
    AlgNotEdDsa {
        /// The alg the header names.
        alg: String,
    },
    /// The signature does not verify with the domain's public key.
    #[error("token signature does not verify with the public key of domain {domain_id}")]
    BadSignature {
        /// The domain whose key was used.
        domain_id: String,
    },
    /// The domain's public key is not a valid Ed25519 key.
    #[error("the public key of domain {domain_id} is not a valid Ed25519 key")]
    InvalidPublicKey {
        /// The domain.
        domain_id: String,
    },
    /// Not a JWT, or claims of the wrong shape.
    #[error("malformed token: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The claims have no `exp`.
    #[error("token has no exp claim")]
    MissingExp,
    /// `exp` is not a non-negative integer number of seconds.
    #[error("token exp {found} is not a number of seconds")]
    ExpNotNumeric {
        /// The `exp` value as JSON (at most 80 characters).
        found: String,
    },
    /// `exp` is past, beyond the leeway.
    #[error("token expired at {exp}, now is {now} (leeway {LEEWAY_SECS} s)")]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The verifier's time.
        now: u64,
    },
    /// `iat` is in the future, beyond the leeway.
    #[error("token issued at {iat}, in the future of {now} (leeway {LEEWAY_SECS} s)")]
    IssuedInFuture {
        /// The token's `iat`.
        iat: u64,
        /// The verifier's time.
        now: u64,
    },
    /// The token is for another domain than the request names.
    #[error("token is for domain {got:?}, not {expected:?}")]
    WrongDomain {
        /// The domain of the request.
        expected: String,
        /// The domain in the token.
        got: String,
    },
    /// The token is for another receiver.
    #[error("token is for receiver {got:?}, not this peer {expected:?}")]
    WrongReceiver {
        /// This peer's id.
        expected: String,
        /// The receiver in the token.
        got: String,
    },
    /// The token was issued to another sender than the remote peer.
    #[error("token is for sender {got:?}, but the stream comes from {expected:?}")]
    WrongSender {
        /// The remote peer of the stream.
        expected: String,
        /// The sender in the token.
        got: String,
    },
    /// The token opens another protocol than this stream's.
    #[error("token opens {got:?}, but the stream is {expected:?}")]
    WrongEndpoint {
        /// The stream's protocol.
        expected: String,
        /// The endpoint in the token.
        got: String,
    },
}

impl Rejection {
    /// Every [`reason`](Self::reason), for those who list them (a metric's labels).
    pub const REASONS: [&'static str; 12] = [
        "alg_not_eddsa",
        "bad_signature",
        "invalid_public_key",
        "malformed",
        "missing_exp",
        "exp_not_numeric",
        "expired",
        "issued_in_future",
        "wrong_domain",
        "wrong_receiver",
        "wrong_sender",
        "wrong_endpoint",
    ];

    /// Which check failed, as a short fixed name (`expired`, `wrong_endpoint`, …): what a
    /// metric counts refusals by, with none of the token's contents.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        let index = match self {
            Self::AlgNotEdDsa { .. } => 0,
            Self::BadSignature { .. } => 1,
            Self::InvalidPublicKey { .. } => 2,
            Self::Malformed { .. } => 3,
            Self::MissingExp => 4,
            Self::ExpNotNumeric { .. } => 5,
            Self::Expired { .. } => 6,
            Self::IssuedInFuture { .. } => 7,
            Self::WrongDomain { .. } => 8,
            Self::WrongReceiver { .. } => 9,
            Self::WrongSender { .. } => 10,
            Self::WrongEndpoint { .. } => 11,
        };
        Self::REASONS[index]
    }
}

/// Why a token could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The claims name another domain than the signing key's.
    #[error("the key of domain {key_domain} cannot sign a token for domain {claims_domain}")]
    DomainMismatch {
        /// The key's domain.
        key_domain: String,
        /// The domain in the claims.
        claims_domain: String,
    },
    /// Signing failed.
    #[error("cannot sign a token for domain {domain_id}: {reason}")]
    Sign {
        /// The domain.
        domain_id: String,
        /// What failed.
        reason: String,
    },
}

/// Verifies `token` with the domain's public key, as the receiver of a task stream
/// at time `now`, and returns its claims.
///
/// The checks run in this order and the first failure is returned: alg is EdDSA;
/// the signature verifies; `exp` is present, a number, and not past (leeway
/// [`LEEWAY_SECS`]); `iat` is not in the future (same leeway); `domain_id`,
/// `receiver`, `sender` and `endpoint` equal `expected`.
///
/// # Errors
/// The [`Rejection`] of the first failed check.
pub fn verify(
    token: &str,
    key: &PublicKey,
    expected: &Expected<'_>,
    now: SystemTime,
) -> Result<TaskClaims, Rejection> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed(format!(
            "{} bytes is longer than {MAX_TOKEN_LEN}",
            token.len()
        )));
    }
    let parts = split_and_check_alg(token)?;

    // jsonwebtoken checks the signature; the claims we read and check ourselves,
    // against the caller's clock, so that each failure gets its own reason.
    let decoding = DecodingKey::from_ed_der(key.as_bytes());
    let verified = jsonwebtoken::crypto::verify(
        parts.signature,
        parts.message.as_bytes(),
        &decoding,
        Algorithm::EdDSA,
    )
    .map_err(|err| match err.kind() {
        ErrorKind::InvalidEddsaKey | ErrorKind::InvalidKeyFormat => Rejection::InvalidPublicKey {
            domain_id: expected.domain_id.to_owned(),
        },
        _ => malformed(format!("signature: {err}")),
    })?;
    if !verified {
        return Err(Rejection::BadSignature {
            domain_id: expected.domain_id.to_owned(),
        });
    }
    let payload = URL_SAFE_NO_PAD
        .decode(parts.payload)
        .map_err(|err| malformed(format!("payload is not base64url: {err}")))?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload)
        .map_err(|err| malformed(format!("payload is not a JSON object: {err}")))?;

    let exp = match claims.get("exp") {
        None => return Err(Rejection::MissingExp),
        Some(value) => value.as_u64().ok_or_else(|| Rejection::ExpNotNumeric {
            found: value.to_string().chars().take(80).collect(),
        })?,
    };
    let now = unix_secs(now);
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(Rejection::Expired { exp, now });
    }
    let claims: TaskClaims = serde_json::from_value(Value::Object(claims))
        .map_err(|err| malformed(format!("claims: {err}")))?;
    if claims.iat > now.saturating_add(LEEWAY_SECS) {
        return Err(Rejection::IssuedInFuture {
            iat: claims.iat,
            now,
        });
    }

    let mismatch = |expected: &str, got: &str| {
        (expected != got).then(|| (expected.to_owned(), got.to_owned()))
    };
    if let Some((expected, got)) = mismatch(expected.domain_id, &claims.domain_id) {
        return Err(Rejection::WrongDomain { expected, got });
    }
    if let Some((expected, got)) = mismatch(expected.receiver, &claims.receiver) {
        return Err(Rejection::WrongReceiver { expected, got });
    }
    if let Some((expected, got)) = mismatch(expected.sender, &claims.sender) {
        return Err(Rejection::WrongSender { expected, got });
    }
    if let Some((expected, got)) = mismatch(expected.endpoint, &claims.endpoint) {
        return Err(Rejection::WrongEndpoint { expected, got });
    }
    Ok(claims)
}

/// [`verify`] at the system clock's current time.
///
/// # Errors
/// The [`Rejection`] of the first failed check.
pub fn verify_now(
    token: &str,
    key: &PublicKey,
    expected: &Expected<'_>,
) -> Result<TaskClaims, Rejection> {
    verify(token, key, expected, SystemTime::now())
}

fn malformed(reason: impl Into<String>) -> Rejection {
    Rejection::Malformed {
        reason: reason.into(),
    }
}

/// A JWT cut at its dots.
struct Parts<'a> {
    /// `header.payload`, the signed bytes.
    message: &'a str,
    payload: &'a str,
    signature: &'a str,
}

/// Cuts the token into its three parts and reads the header's alg before anything
/// else, so that `none`, `HS256` and names jsonwebtoken does not know are all
/// refused as what they are.
fn split_and_check_alg(token: &str) -> Result<Parts<'_>, Rejection> {
    let three_parts = || malformed("a JWT has three dot-separated parts");
    let (message, signature) = token.rsplit_once('.').ok_or_else(three_parts)?;
    let (header, payload) = message.split_once('.').ok_or_else(three_parts)?;
    if payload.contains('.') {
        return Err(three_parts());
    }
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|err| malformed(format!("header is not base64url: {err}")))?;
    let header: Map<String, Value> = serde_json::from_slice(&header)
        .map_err(|err| malformed(format!("header is not a JSON object: {err}")))?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "EdDSA" => Ok(Parts {
            message,
            payload,
            signature,
        }),
        Some(Value::String(alg)) => Err(Rejection::AlgNotEdDsa {
            alg: alg.chars().take(80).collect(),
        }),
        Some(other) => Err(Rejection::AlgNotEdDsa {
            alg: other.to_string().chars().take(80).collect(),
        }),
        None => Err(malformed("header has no alg")),
    }
}
