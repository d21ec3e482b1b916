//! The node capabilities, both sides of each, over any
//! `AsyncRead + AsyncWrite + Unpin + Send` stream (a libp2p stream, a TCP socket, a
//! `tokio::io::duplex` in tests): nothing here knows of libp2p.
//!
//! - [`handshake`]: the first frames of every task stream; the receiver checks the
//!   task token (docs/design.md §5) with a domain public key from a [`PublicKeySource`].
//! - `/store/v1`: [`StoreSender`] (or [`store_items`]) streams items and checks the
//!   receiver's Merkle root against its own; [`serve_store`] streams them into a
//!   [`domain_datastore::Datastore`]. With the [`RESUME`] extension,
//!   [`StoreSender::send_resumable`] continues an item whose earlier stream was cut
//!   after the whole chunks the receiver kept; with [`PIPELINE`],
//!   [`StoreSender::send_pipelined`] keeps several items in flight.
//! - `/load/v1`: [`open_load`] gives a [`LoadConsumer`] of items (content checked
//!   against each root) and an [`Unsubscriber`] for keep-alive subscriptions;
//!   [`serve_load`] answers from a datastore.
//! - `/delete/v1` (an extension): [`delete_items`] asks the receiver to remove items;
//!   [`serve_delete`] removes them from a datastore.
//! - `/public-key/v1`: [`fetch_public_key`] and [`serve_public_key`].
//! - [`serve`] routes an inbound task stream to its handler by protocol id;
//!   [`accept_task_stream`] does it in two steps, handing out the verified claims
//!   ([`AcceptedStream`]) between the handshake and the exchange.
//!
//! Every read and write runs under the idle timeout of [`Limits`] ([`IdleTimeout`]),
//! every frame under its size limit; a misbehaving peer gets a typed
//! [`CapabilityError`] and loses its stream, nothing else. Raw content moves in
//! batches of [`Limits::io_batch`] bytes.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
//! use domain_auth::DomainKey;
//! use domain_capabilities::{Limits, StaticKeys, fetch_public_key, serve_public_key};
//!
//! let key = DomainKey::generate("my-domain")?;
//! let keys = StaticKeys::new().with("my-domain", key.public_key());
//! let limits = Limits::default();
//!
//! let (asker, answerer) = tokio::io::duplex(1024);
//! let (served, fetched) = tokio::join!(
//!     serve_public_key(answerer, &keys, &limits),
//!     fetch_public_key(asker, "my-domain", &limits),
//! );
//! assert_eq!(served?, "my-domain");
//! assert_eq!(fetched?, key.public_key());
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use domain_datastore::Datastore;
use domain_proto::DEFAULT_MAX_FRAME;
use domain_proto::protocols::{DELETE_V1, LOAD_V1, STORE_V1};
use tokio::io::{AsyncRead, AsyncWrite};

mod delete;
mod error;
pub mod handshake;
mod idle;
pub mod ledger;
mod load;
mod public_key;
mod store;

pub use delete::{DeleteSummary, Deleted, delete_items, serve_delete};
pub use error::CapabilityError;
use handshake::Holds;
pub use handshake::{
    Accepted, KeyFn, MAX_HANDSHAKE_FRAME, Opened, PIPELINE, PublicKeySource, RESUME, StaticKeys,
    StreamInfo,
};
pub use idle::{Direction, IdleElapsed, IdleTimeout};
pub use ledger::{DEFAULT_LEDGER_CAPACITY, Replay, TokenLedger, TokenUse};
pub use load::{
    LoadConsumer, LoadSummary, LoadedItem, Prefixes, Unsubscriber, open_load, open_load_resuming,
    serve_load,
};
pub use public_key::{fetch_public_key, serve_public_key};
pub use store::{
    MAX_RESUME_KEY_LEN, MAX_SUMMARY_IDS, PIPELINE_BYTES, PIPELINE_ITEMS, Sent, StoreSender,
    StoreSummary, serve_store, store_items,
};

/// Inbound task streams a node serves at once (docs/design.md §9); the node holds a
/// `tokio::sync::Semaphore` of this many permits around [`serve`].
pub const MAX_CONCURRENT_TASK_STREAMS: usize = 256;

/// Default idle limit of a stream (docs/design.md §9).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default batch of raw content per read and write: large, so that transfers are
/// not bound by per-call costs (docs/design.md §4).
pub const DEFAULT_IO_BATCH: usize = 1024 * 1024;

/// The limits every capability stream runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted, in bytes.
    pub max_frame: usize,
    /// A stream on which no byte moves for this long fails.
    pub idle_timeout: Duration,
    /// Bytes of raw content per read and write (the buffer each stream allocates).
    pub io_batch: usize,
}

impl Limits {
    /// The defaults of docs/design.md §9: 4 MiB frames, 30 s idle, 1 MiB content batches.
    pub const DEFAULT: Self = Self {
        max_frame: DEFAULT_MAX_FRAME,
        idle_timeout: DEFAULT_IDLE_TIMEOUT,
        io_batch: DEFAULT_IO_BATCH,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What an inbound task stream did, by protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// A `/store/v1` stream.
    Store(StoreSummary),
    /// A `/load/v1` stream.
    Load(LoadSummary),
    /// A `/delete/v1` stream.
    Delete(DeleteSummary),
}

/// Serves an inbound task stream opened on `info.protocol` (`/store/v1`, `/load/v1` or
/// `/delete/v1`).
///
/// # Errors
/// [`CapabilityError::UnsupportedProtocol`] for another protocol; otherwise what the
/// protocol's handler returns.
pub async fn serve<S, D, K>(
    stream: S,
    info: &StreamInfo<'_>,
    datastore: &D,
    keys: &K,
    limits: &Limits,
) -> Result<Served, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Datastore,
    K: PublicKeySource,
{
    accept_task_stream(stream, info, keys, limits)
        .await?
        .serve(datastore)
        .await
}

/// The task protocols a node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskProtocol {
    Store,
    Load,
    Delete,
}

/// An inbound task stream whose handshake was accepted: the verified claims, and
/// the stream ready for its protocol's exchange.
///
/// [`serve`] in two steps, for a node that acts on the claims (reports the task's
/// status, logs its job) before the data moves.
#[derive(Debug)]
pub struct AcceptedStream<S> {
    stream: IdleTimeout<S>,
    accepted: Accepted,
    /// The token's hold in the receiver's ledger, spent when the exchange ends well, and
    /// the receiver's permit, given back when the stream ends.
    holds: Holds,
    protocol: TaskProtocol,
    limits: Limits,
}

/// Receives the handshake of an inbound task stream opened on `info.protocol`
/// (`/store/v1`, `/load/v1` or `/delete/v1`); [`AcceptedStream::serve`] does the rest.
///
/// # Errors
/// [`CapabilityError::UnsupportedProtocol`] for another protocol (before reading
/// anything); otherwise those of [`handshake::accept`].
pub async fn accept_task_stream<S, K>(
    stream: S,
    info: &StreamInfo<'_>,
    keys: &K,
    limits: &Limits,
) -> Result<AcceptedStream<S>, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: PublicKeySource,
{
    let protocol = match info.protocol {
        STORE_V1 => TaskProtocol::Store,
        LOAD_V1 => TaskProtocol::Load,
        DELETE_V1 => TaskProtocol::Delete,
        other => {
            return Err(CapabilityError::UnsupportedProtocol {
                protocol: other.to_owned(),
            });
        }
    };
    let mut stream = IdleTimeout::new(stream, limits.idle_timeout);
    let (accepted, holds) = handshake::accept_claiming(
        &mut stream,
        info,
        keys,
        limits,
        std::time::SystemTime::now(),
    )
    .await?;
    Ok(AcceptedStream {
        stream,
        accepted,
        holds,
        protocol,
        limits: *limits,
    })
}

impl<S> AcceptedStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// The accepted handshake: the domain and the verified token claims.
    pub fn accepted(&self) -> &Accepted {
        &self.accepted
    }

    /// Runs the protocol's exchange with `datastore`, as [`serve_store`],
    /// [`serve_load`] or [`serve_delete`] do after their handshake.
    ///
    /// # Errors
    /// What the protocol's handler returns.
    pub async fn serve<D: Datastore>(self, datastore: &D) -> Result<Served, CapabilityError> {
        let Self {
            stream,
            accepted,
            mut holds,
            protocol,
            limits,
        } = self;
        let served = match protocol {
            TaskProtocol::Store => store::store_accepted(
                stream,
                &accepted.domain,
                accepted.claims.copy,
                datastore,
                &limits,
            )
            .await
            .map(Served::Store),
            TaskProtocol::Load => load::load_accepted(stream, &accepted, datastore, &limits)
                .await
                .map(Served::Load),
            TaskProtocol::Delete => {
                delete::delete_accepted(stream, &accepted.domain, datastore, &limits)
                    .await
                    .map(Served::Delete)
            }
        };
        // A write done on this node: the token writes nothing more. A stream that failed
        // leaves it for the transfer to be tried again, and a read never spends it (see
        // `TokenLedger`).
        let wrote = matches!(protocol, TaskProtocol::Store | TaskProtocol::Delete);
        if let (true, Ok(_), Some(token)) = (wrote, &served, holds.token.as_mut()) {
            token.done();
        }
        served
    }
}
