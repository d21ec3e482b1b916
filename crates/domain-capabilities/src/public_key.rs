//! `/public-key/v1`: the asker writes a domain id (raw UTF-8, at most 256 bytes) and
//! closes its write half; the answer is the raw 32-byte Ed25519 public key, then close.

use domain_auth::PublicKey;
use domain_proto::{DomainId, MAX_DOMAIN_ID_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::handshake::PublicKeySource;
use crate::idle::IdleTimeout;
use crate::{CapabilityError, Limits};

/// Asks the peer at the other end of `stream` for the public key of `domain_id`.
///
/// # Errors
/// [`CapabilityError::BadKeyRequest`] for a domain id [`DomainId`] refuses,
/// [`CapabilityError::NoPublicKey`] when the peer closes without a key,
/// [`CapabilityError::BadPublicKey`] for an answer that is not 32 bytes, or a
/// stream or idle error.
pub async fn fetch_public_key<S>(
    stream: S,
    domain_id: &str,
    limits: &Limits,
) -> Result<PublicKey, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    check_domain_id(domain_id)?;
    let mut stream = IdleTimeout::new(stream, limits.idle_timeout);
    stream
        .write_all(domain_id.as_bytes())
        .await
        .map_err(|e| CapabilityError::io("sending the domain id", e))?;
    stream
        .shutdown()
        .await
        .map_err(|e| CapabilityError::io("sending the domain id", e))?;
    let mut answer = Vec::with_capacity(PublicKey::LEN);
    (&mut stream)
        .take(PublicKey::LEN as u64 + 1)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| CapabilityError::io("reading the public key", e))?;
    match answer.len() {
        0 => Err(CapabilityError::NoPublicKey {
            domain_id: domain_id.to_owned(),
            reason: "the peer closed the stream without a key".into(),
        }),
        len => PublicKey::try_from(answer.as_slice())
            .map_err(|_| CapabilityError::BadPublicKey { len }),
    }
}

/// Answers one `/public-key/v1` request from `keys`; returns the domain id served.
///
/// A domain with no key gets the stream closed without an answer.
///
/// # Errors
/// [`CapabilityError::BadKeyRequest`] for a request that is not 1 to 256 bytes of
/// UTF-8, [`CapabilityError::NoPublicKey`] when `keys` has no key, or a stream or
/// idle error.
pub async fn serve_public_key<S, K>(
    stream: S,
    keys: &K,
    limits: &Limits,
) -> Result<String, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: PublicKeySource,
{
    let mut stream = IdleTimeout::new(stream, limits.idle_timeout);
    let mut request = Vec::with_capacity(64);
    (&mut stream)
        .take(MAX_DOMAIN_ID_LEN as u64 + 1)
        .read_to_end(&mut request)
        .await
        .map_err(|e| CapabilityError::io("reading the domain id", e))?;
    let domain_id = String::from_utf8(request).map_err(|_| CapabilityError::BadKeyRequest {
        reason: "the domain id is not UTF-8".into(),
    })?;
    check_domain_id(&domain_id)?;
    let key = match keys.public_key(&domain_id).await {
        Ok(key) => key,
        Err(reason) => {
            let _ = stream.shutdown().await;
            return Err(CapabilityError::NoPublicKey { domain_id, reason });
        }
    };
    stream
        .write_all(key.as_bytes())
        .await
        .map_err(|e| CapabilityError::io("sending the public key", e))?;
    stream
        .shutdown()
        .await
        .map_err(|e| CapabilityError::io("sending the public key", e))?;
    Ok(domain_id)
}

/// A domain id a key may be asked for: one [`DomainId`] accepts.
fn check_domain_id(domain_id: &str) -> Result<(), CapabilityError> {
    DomainId::new(domain_id)
        .map(drop)
        .map_err(|invalid| CapabilityError::BadKeyRequest {
            reason: invalid.to_string(),
        })
}
