//! `/delete/v1` (an extension: posemesh has no way to remove an item): after the
//! handshake the sender writes one `DeleteDataInputV1` naming ids, the receiver
//! removes those it holds from the stream's domain and answers one
//! `DeleteDataOutputV1` saying, for each id, whether it was removed or not held; then
//! both sides close.

use std::collections::BTreeSet;
use std::time::SystemTime;

use domain_datastore::{Datastore, DatastoreError};
use domain_proto::DomainId;
use domain_proto::task::{DeleteDataInputV1, DeleteDataOutputV1};
use domain_proto::{read_message, read_message_or_eof, write_message};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::handshake::{self, PublicKeySource, StreamInfo};
use crate::idle::IdleTimeout;
use crate::{CapabilityError, Limits};

/// What a `/delete/v1` receiver did on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeleteSummary {
    /// Items removed.
    pub deleted: u64,
    /// Ids asked for that the receiver did not hold.
    pub missing: u64,
}

/// The receiver's answer to a delete, as [`delete_items`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deleted {
    /// The ids removed, in order.
    pub deleted: Vec<String>,
    /// The ids the receiver did not hold, in order.
    pub missing: Vec<String>,
}

/// Serves one inbound `/delete/v1` stream: the handshake, then the delete.
///
/// # Errors
/// Any [`CapabilityError`]; ids removed before a failure stay removed.
pub async fn serve_delete<S, D, K>(
    stream: S,
    info: &StreamInfo<'_>,
    datastore: &D,
    keys: &K,
    limits: &Limits,
) -> Result<DeleteSummary, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Datastore,
    K: PublicKeySource,
{
    let mut stream = IdleTimeout::new(stream, limits.idle_timeout);
    let (accepted, mut holds) =
        handshake::accept_claiming(&mut stream, info, keys, limits, SystemTime::now()).await?;
    let served = delete_accepted(stream, &accepted.domain, datastore, limits).await;
    if let (Ok(_), Some(token)) = (&served, holds.token.as_mut()) {
        token.done();
    }
    served
}

/// The part of [`serve_delete`] after an accepted handshake.
pub(crate) async fn delete_accepted<S, D>(
    mut stream: IdleTimeout<S>,
    domain: &DomainId,
    datastore: &D,
    limits: &Limits,
) -> Result<DeleteSummary, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Datastore,
{
    let request: DeleteDataInputV1 = read_message(&mut stream, limits.max_frame)
        .await
        .map_err(|e| CapabilityError::frame("reading the delete request", e))?;
    // An id named twice is removed once; the answer names each id once, in order.
    let ids: BTreeSet<String> = request.ids.into_iter().collect();
    let mut answer = DeleteDataOutputV1::default();
    for id in ids {
        match datastore.delete(domain, &id).await {
            Ok(()) => answer.deleted.push(id),
            Err(DatastoreError::NotFound { .. }) => answer.missing.push(id),
            Err(error) => return Err(CapabilityError::Datastore(error)),
        }
    }
    write_message(&mut stream, &answer)
        .await
        .map_err(|e| CapabilityError::frame("answering the delete", e))?;
    stream
        .shutdown()
        .await
        .map_err(|e| CapabilityError::io("closing the stream", e))?;
    Ok(DeleteSummary {
        deleted: answer.deleted.len() as u64,
        missing: answer.missing.len() as u64,
    })
}

/// Opens a `/delete/v1` stream with the handshake, asks the receiver to remove `ids`
/// from `domain_id`, and returns its answer.
///
/// # Errors
/// [`CapabilityError::Refused`] when the receiver refuses the token,
/// [`CapabilityError::Unexpected`] for an answer about ids not asked for, or a stream
/// or frame error (the receiver may then have removed some of the ids).
pub async fn delete_items<S>(
    stream: S,
    access_token: &str,
    domain_id: &str,
    ids: &[String],
    limits: Limits,
) -> Result<Deleted, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut stream = IdleTimeout::new(stream, limits.idle_timeout);
    handshake::open(&mut stream, access_token, domain_id, &limits).await?;
    let request = DeleteDataInputV1 { ids: ids.to_vec() };
    write_message(&mut stream, &request)
        .await
        .map_err(|e| CapabilityError::frame("sending the delete request", e))?;
    stream
        .shutdown()
        .await
        .map_err(|e| CapabilityError::io("closing the stream", e))?;
    let answer: DeleteDataOutputV1 = read_message(&mut stream, limits.max_frame)
        .await
        .map_err(|e| CapabilityError::frame("reading the delete answer", e))?;
    let asked: BTreeSet<&String> = ids.iter().collect();
    if !answer
        .deleted
        .iter()
        .chain(&answer.missing)
        .all(|id| asked.contains(id))
    {
        return Err(CapabilityError::Unexpected {
            during: "reading the delete answer",
            what: "an id that was not asked for",
        });
    }
    let extra: Option<DeleteDataOutputV1> = read_message_or_eof(&mut stream, limits.max_frame)
        .await
        .map_err(|e| CapabilityError::frame("waiting for the receiver to close", e))?;
    if extra.is_some() {
        return Err(CapabilityError::Unexpected {
            during: "waiting for the receiver to close",
            what: "a second answer",
        });
    }
    Ok(Deleted {
        deleted: answer.deleted,
        missing: answer.missing,
    })
}
