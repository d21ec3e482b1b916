//! `/store/v1`: the sender streams items, the receiver writes them into its
//! datastore and answers each with its metadata, whose `hash` is the Merkle root it
//! computed. The sender compares that root with its own: the proof of transfer.
//!
//! With the [`RESUME`] extension (named in the handshake answer), an item sent with a
//! `resume_key` is answered a `ResumeOffer` first: the whole chunks the receiver kept of
//! an earlier stream that was cut while sending it. The sender checks them against the
//! root of its own first bytes and answers a `ResumeStart`, the offset its content bytes
//! start from; both trees still cover the whole content, so the root proves it whole.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::ops::Deref;
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Bytes;
use domain_datastore::{Datastore, is_replica};
use domain_merkle::{BackgroundBuilder, CHUNK_SIZE, Cores, MerkleBuilder, Root};
use domain_proto::DomainId;
use domain_proto::domain_data::{Metadata, ResumeOffer, ResumeStart, UpsertMetadata};
use domain_proto::{read_message, read_message_or_eof, write_message};
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt, ReadBuf,
};
use tokio::sync::{Semaphore, mpsc};

use crate::handshake::{self, PIPELINE, PublicKeySource, RESUME, StreamInfo};
use crate::idle::IdleTimeout;
use crate::{CapabilityError, Limits};

/// What a `/store/v1` receiver stored on one stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreSummary {
    /// Items stored.
    pub items: u64,
    /// Content bytes received on this stream.
    pub bytes: u64,
    /// Content bytes not sent again because items resumed from bytes kept earlier.
    pub resumed_bytes: u64,
    /// The ids of the items stored, in order, up to [`MAX_SUMMARY_IDS`] (the first ones),
    /// except replicas (copies of items held elsewhere, which are not copied again).
    pub ids: Vec<String>,
    /// Whether one of those items replaced an older version (an upsert).
    pub replaced: bool,
}

/// Ids a [`StoreSummary`] keeps at most: a stream of more items keeps the first ones.
pub const MAX_SUMMARY_IDS: usize = 100_000;

/// Batches of an item's content that may wait for the sender's hashing thread. With the
/// one it hashes and the one being filled, a sender holds at most `HASH_QUEUE + 2`
/// batches of [`Limits::io_batch`] bytes.
const HASH_QUEUE: usize = 2;

/// Longest `UpsertMetadata.resume_key` accepted, in bytes.
pub const MAX_RESUME_KEY_LEN: usize = 128;

/// An item sent by [`StoreSender::send_resumable`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// The receiver's metadata, its root checked against the whole content.
    pub metadata: Metadata,
    /// The content bytes not sent because the receiver had kept them: 0 unless resumed.
    pub resumed_from: u64,
}

/// Serves one inbound `/store/v1` stream: the handshake, then each item into
/// `datastore`, until the sender closes its write half.
///
/// Content goes straight from the stream into [`Datastore::put`], which computes the
/// root as the bytes pass; each item is visible only once it is whole. An item cut
/// short stores nothing and ends the stream.
///
/// # Errors
/// Any [`CapabilityError`]: the stream is lost, items answered before it stay stored.
pub async fn serve_store<S, D, K>(
    stream: S,
    info: &StreamInfo<'_>,
    datastore: &D,
    keys: &K,
    limits: &Limits,
) -> Result<StoreSummary, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Datastore,
    K: PublicKeySource,
{
    let mut stream = IdleTimeout::new(stream, limits.idle_timeout);
    let (accepted, mut holds) =
        handshake::accept_claiming(&mut stream, info, keys, limits, SystemTime::now()).await?;
    let served = store_accepted(
        stream,
        &accepted.domain,
        accepted.claims.copy,
        datastore,
        limits,
    )
    .await;
    if let (Ok(_), Some(token)) = (&served, holds.token.as_mut()) {
        token.done();
    }
    served
}

/// The part of [`serve_store`] after an accepted handshake.
///
/// Items under ids of their own (`UpsertMetadata.replica`) are taken only when `copy`: the
/// token says the manager placed this task as a copy.
///
/// Two halves run side by side: one reads items and starts storing them, the other
/// writes the answers, in order, as the stores complete. Small items (up to
/// [`IN_MEMORY_MAX`]) are read into memory and stored while the next ones arrive, so a
/// pipelining sender's items reach the datastore together and share its durable commits;
/// larger ones stream from the wire into the datastore. A sender that waits for each
/// answer (a v1 sender) sees no difference.
pub(crate) async fn store_accepted<S, D>(
    stream: IdleTimeout<S>,
    domain: &DomainId,
    copy: bool,
    datastore: &D,
    limits: &Limits,
) -> Result<StoreSummary, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Datastore,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let budget = Semaphore::new(PIPELINE_BYTES as usize);
    let summary = {
        let (queue, answers) = mpsc::channel(1);
        let mut receiving = pin!(receive_items(
            &mut reader,
            domain,
            copy,
            datastore,
            limits,
            &budget,
            queue
        ));
        let mut answering = pin!(answer_items(&mut writer, answers));
        tokio::select! {
            answered = &mut answering => {
                // The answers end before the items only when an answer failed: the items
                // after it are dropped. Otherwise the items had ended already.
                let summary = answered?;
                receiving.await?;
                summary
            }
            received = &mut receiving => {
                // The answers of the items before the end, or before the one that failed,
                // still go out; a failed answer came first in stream order.
                let summary = answering.await?;
                received?;
                summary
            }
        }
    };
    let mut stream = reader.unsplit(writer);
    stream
        .shutdown()
        .await
        .map_err(|e| CapabilityError::io("closing the stream", e))?;
    Ok(summary)
}

/// Items up to this size are read into memory by a receiver and stored while the next
/// items arrive; larger ones stream from the wire into the datastore.
const IN_MEMORY_MAX: u64 = 64 << 10;

/// Items a sender keeps in flight on a [`PIPELINE`] stream at most: sent, not answered.
pub const PIPELINE_ITEMS: usize = 64;

/// Content bytes of the items a sender keeps in flight on a [`PIPELINE`] stream at most.
/// An item larger than this alone is sent once every earlier one is answered. A receiver
/// holds at most this much of a stream's small items in memory.
pub const PIPELINE_BYTES: u64 = 4 << 20;

/// What the receiving half hands the answering half: an answer to write once every
/// earlier one is written, when it is ready.
type Answer<'a> = Pin<Box<dyn Future<Output = Result<Outgoing, CapabilityError>> + Send + 'a>>;

/// A frame the receiver writes, with what the summary counts of it.
enum Outgoing {
    /// The resume offer of an item sent with a resume key.
    Offer(ResumeOffer),
    /// An item stored.
    Stored {
        metadata: Metadata,
        /// Content bytes received on this stream.
        received: u64,
        /// Content bytes kept from an earlier stream.
        resumed: u64,
        replica: bool,
        replaces: bool,
    },
}

/// The receiving half of [`store_accepted`]: reads each item and hands `answers` the
/// future of its answer, until the sender closes its write half.
async fn receive_items<'a, R, D>(
    reader: &mut R,
    domain: &'a DomainId,
    copy: bool,
    datastore: &'a D,
    limits: &Limits,
    budget: &'a Semaphore,
    answers: mpsc::Sender<Answer<'a>>,
) -> Result<(), CapabilityError>
where
    R: AsyncRead + Unpin + Send,
    D: Datastore,
{
    let ready = |outgoing: Outgoing| -> Answer<'a> { Box::pin(std::future::ready(Ok(outgoing))) };
    loop {
        let item: Option<UpsertMetadata> = read_message_or_eof(reader, limits.max_frame)
            .await
            .map_err(|e| CapabilityError::frame("reading the next item", e))?;
        let Some(mut item) = item else {
            return Ok(());
        };
        let name = item.name.clone();
        let size = u64::from(item.size);
        let replica = is_replica(&item);
        if replica && !copy {
            return Err(CapabilityError::Unexpected {
                during: "reading the next item",
                what: "an item under an id of its own (a replica) on a task the manager did not place as a copy",
            });
        }
        let replaces = !item.is_new && !replica;
        let stored = move |metadata, start| Outgoing::Stored {
            metadata,
            received: size - start,
            resumed: start,
            replica,
            replaces,
        };
        let failed = |e| CapabilityError::datastore("receiving content", &name, e);
        let answer = match item.resume_key.take() {
            Some(key) => {
                check_resume_key(&key)?;
                let offer = resume_offer(domain, datastore, &key, &item).await?;
                let offered = offer.offset;
                if answers.send(ready(Outgoing::Offer(offer))).await.is_err() {
                    return Ok(());
                }
                let start = resume_start(reader, offered, limits).await?;
                let content = Limited::new(&mut *reader, size - start);
                let metadata = datastore
                    .put_resumable(domain, item, &key, start, content)
                    .await
                    .map_err(failed)?;
                ready(stored(metadata, start))
            }
            None if size <= IN_MEMORY_MAX => {
                // At most 64 KiB: within the budget's permits and a u32.
                let permit = budget.acquire_many(size as u32).await.map_err(|_| {
                    CapabilityError::Unexpected {
                        during: "reading the next item",
                        what: "a closed budget",
                    }
                })?;
                let bytes = read_content(reader, &item).await.map_err(failed)?;
                Box::pin(async move {
                    let metadata = datastore
                        .put(domain, item, &bytes[..])
                        .await
                        .map_err(|e| CapabilityError::datastore("receiving content", &name, e))?;
                    drop(permit);
                    Ok(stored(metadata, 0))
                })
            }
            None => {
                let content = Limited::new(&mut *reader, size);
                let metadata = datastore.put(domain, item, content).await.map_err(failed)?;
                ready(stored(metadata, 0))
            }
        };
        if answers.send(answer).await.is_err() {
            // The answering half stopped on an error, which it reports.
            return Ok(());
        }
    }
}

/// Reads the content of a small item into memory, failing as a datastore's put does on
/// a short stream.
async fn read_content<R: AsyncRead + Unpin>(
    reader: &mut R,
    item: &UpsertMetadata,
) -> Result<Vec<u8>, domain_datastore::DatastoreError> {
    let mut bytes = vec![0_u8; item.size as usize];
    let got = fill(&mut Limited::new(reader, u64::from(item.size)), &mut bytes)
        .await
        .map_err(|source| domain_datastore::DatastoreError::ReadContent {
            name: item.name.clone(),
            source,
        })?;
    if got != bytes.len() {
        return Err(domain_datastore::DatastoreError::SizeMismatch {
            expected: item.size,
            got: got as u64,
        });
    }
    Ok(bytes)
}

/// The answering half of [`store_accepted`]: writes each answer once it and every
/// earlier one are ready, with at most [`PIPELINE_ITEMS`] stores under way.
async fn answer_items<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut answers: mpsc::Receiver<Answer<'_>>,
) -> Result<StoreSummary, CapabilityError> {
    let mut summary = StoreSummary::default();
    let mut pending = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            next = answers.recv(), if open && pending.len() < PIPELINE_ITEMS => match next {
                Some(answer) => pending.push_back(answer),
                None => open = false,
            },
            Some(done) = pending.next() => match done? {
                Outgoing::Offer(offer) => write_message(writer, &offer)
                    .await
                    .map_err(|e| CapabilityError::frame("offering to resume", e))?,
                Outgoing::Stored { metadata, received, resumed, replica, replaces } => {
                    write_message(writer, &metadata)
                        .await
                        .map_err(|e| CapabilityError::frame("answering an item", e))?;
                    summary.items += 1;
                    summary.bytes += received;
                    summary.resumed_bytes += resumed;
                    summary.replaced |= replaces;
                    if !replica && summary.ids.len() < MAX_SUMMARY_IDS {
                        summary.ids.push(metadata.id);
                    }
                }
            },
            else => return Ok(summary),
        }
    }
}

/// The offer for an item sent with a resume key: what `datastore` kept of it.
async fn resume_offer<D: Datastore>(
    domain: &DomainId,
    datastore: &D,
    key: &str,
    item: &UpsertMetadata,
) -> Result<ResumeOffer, CapabilityError> {
    let point = datastore
        .resume_point(domain, key, item.size)
        .await
        .map_err(|e| CapabilityError::datastore("looking for kept bytes", &item.name, e))?;
    Ok(ResumeOffer {
        offset: point.map_or(0, |point| point.offset),
        prefix_hash: point.map(|point| point.prefix_root.to_string()),
    })
}

/// Reads the sender's answer to an offer of `offered` bytes: the offset its content
/// starts from.
async fn resume_start<R: AsyncRead + Unpin>(
    reader: &mut R,
    offered: u64,
    limits: &Limits,
) -> Result<u64, CapabilityError> {
    let start: ResumeStart = read_message(reader, limits.max_frame)
        .await
        .map_err(|e| CapabilityError::frame("reading where the content starts", e))?;
    if start.offset != 0 && start.offset != offered {
        return Err(CapabilityError::Unexpected {
            during: "reading where the content starts",
            what: "an offset that was not offered",
        });
    }
    Ok(start.offset)
}

fn check_resume_key(key: &str) -> Result<(), CapabilityError> {
    if key.is_empty() || key.len() > MAX_RESUME_KEY_LEN {
        return Err(CapabilityError::BadResumeKey { len: key.len() });
    }
    Ok(())
}

/// The sending side of a `/store/v1` stream.
///
/// ```no_run
/// # async fn demo(stream: tokio::io::DuplexStream) -> Result<(), domain_capabilities::CapabilityError> {
/// use domain_capabilities::{Limits, StoreSender};
/// use domain_proto::domain_data::UpsertMetadata;
///
/// let mut sender = StoreSender::open(stream, "<token>", "my-domain", Limits::default()).await?;
/// let item = UpsertMetadata { name: "scan".into(), data_type: "ply".into(), is_new: true, ..Default::default() };
/// let stored = sender.send_bytes(item, &b"hello"[..]).await?;
/// println!("stored as {} with root {:?}", stored.id, stored.hash);
/// sender.finish().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct StoreSender<S> {
    stream: IdleTimeout<S>,
    limits: Limits,
    /// Whether the receiver named the [`RESUME`] extension.
    resumes: bool,
    /// Whether the receiver named the [`PIPELINE`] extension.
    pipelines: bool,
    /// Items sent by [`send_pipelined`](Self::send_pipelined) and not answered yet,
    /// oldest first.
    in_flight: VecDeque<InFlight>,
    /// Content bytes of `in_flight`.
    in_flight_bytes: u64,
    /// Answers of pipelined items (roots checked) not taken yet, oldest first.
    receipts: VecDeque<Metadata>,
    /// Content batches, reused from item to item.
    batches: BatchPool,
}

/// An item sent on a pipelined stream, waiting for its answer.
#[derive(Debug)]
struct InFlight {
    name: String,
    size: u64,
    root: Root,
}

impl<S> StoreSender<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Opens the stream with the handshake.
    ///
    /// # Errors
    /// [`CapabilityError::Refused`] when the receiver refuses the token; stream errors.
    pub async fn open(
        stream: S,
        access_token: &str,
        domain_id: &str,
        limits: Limits,
    ) -> Result<Self, CapabilityError> {
        let mut stream = IdleTimeout::new(stream, limits.idle_timeout);
        let opened = handshake::open(&mut stream, access_token, domain_id, &limits).await?;
        Ok(Self {
            stream,
            limits,
            resumes: opened.speaks(RESUME),
            pipelines: opened.speaks(PIPELINE),
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            receipts: VecDeque::new(),
            batches: BatchPool::new(),
        })
    }

    /// Whether the receiver takes items without waiting for each answer (the
    /// [`PIPELINE`] extension): [`send_pipelined`](Self::send_pipelined) then keeps
    /// several in flight.
    pub fn pipelines(&self) -> bool {
        self.pipelines
    }

    /// Sends one item as [`send`](Self::send) does, but to a receiver that pipelines
    /// returns once it is written: its metadata, root checked, comes later from
    /// [`take_receipts`](Self::take_receipts), in the order items were sent. At most
    /// [`PIPELINE_ITEMS`] items and [`PIPELINE_BYTES`] bytes of content are in flight: this
    /// waits for the oldest answers to make room. To a receiver without the extension it
    /// waits for the answer here, item by item.
    ///
    /// Many small items go at the rate the receiver stores them, not one round trip each.
    /// When the stream fails, items sent but not answered may or may not be stored.
    ///
    /// # Errors
    /// As [`send`](Self::send), for this item or an earlier one in flight.
    pub async fn send_pipelined<R>(
        &mut self,
        item: UpsertMetadata,
        content: R,
    ) -> Result<(), CapabilityError>
    where
        R: AsyncRead + Unpin,
    {
        let size = u64::from(item.size);
        while !self.in_flight.is_empty()
            && (self.in_flight.len() >= PIPELINE_ITEMS
                || self.in_flight_bytes + size > PIPELINE_BYTES)
        {
            self.receive_one().await?;
        }
        let name = item.name.clone();
        let root = self.send_item(&item, content).await?;
        self.in_flight.push_back(InFlight { name, size, root });
        self.in_flight_bytes += size;
        if !self.pipelines {
            self.receive_one().await?;
        }
        Ok(())
    }

    /// The answers of items sent by [`send_pipelined`](Self::send_pipelined) that have
    /// come, roots checked, oldest first.
    pub fn take_receipts(&mut self) -> impl Iterator<Item = Metadata> + '_ {
        self.receipts.drain(..)
    }

    /// Waits for the answer of every item in flight; they are then in
    /// [`take_receipts`](Self::take_receipts).
    ///
    /// # Errors
    /// As [`send`](Self::send), for the first item whose answer fails.
    pub async fn flush_receipts(&mut self) -> Result<(), CapabilityError> {
        while !self.in_flight.is_empty() {
            self.receive_one().await?;
        }
        Ok(())
    }

    /// Reads the answer of the oldest item in flight.
    async fn receive_one(&mut self) -> Result<(), CapabilityError> {
        let Some(sent) = self.in_flight.pop_front() else {
            return Ok(());
        };
        self.in_flight_bytes -= sent.size;
        let metadata = self.await_receipt(&sent.name, sent.size, sent.root).await?;
        self.receipts.push_back(metadata);
        Ok(())
    }

    /// Whether the receiver keeps the bytes of items cut short for
    /// [`send_resumable`](Self::send_resumable) to continue (the [`RESUME`] extension).
    pub fn resumes(&self) -> bool {
        self.resumes
    }

    /// As [`send`](Self::send), for content that can be read again from its current
    /// position: if an earlier stream was cut while sending this item under `key` (a name
    /// of this content, which the receiver keeps the cut bytes by), only what the
    /// receiver does not hold yet is sent.
    ///
    /// The receiver offers the whole chunks it kept with their Merkle root; the content's
    /// own first bytes are hashed here, and skipped only when the two roots agree (else
    /// everything is sent, from the position `content` had). The root checked at the end
    /// covers the whole content either way. A receiver without the extension gets the
    /// whole content, as from [`send`](Self::send).
    ///
    /// # Errors
    /// As [`send`](Self::send); [`CapabilityError::BadResumeKey`] for an empty key or one
    /// over [`MAX_RESUME_KEY_LEN`] bytes; [`CapabilityError::Io`] when `content` cannot
    /// seek.
    pub async fn send_resumable<R>(
        &mut self,
        mut item: UpsertMetadata,
        key: &str,
        mut content: R,
    ) -> Result<Sent, CapabilityError>
    where
        R: AsyncRead + AsyncSeek + Unpin,
    {
        check_resume_key(key)?;
        self.flush_receipts().await?;
        if !self.resumes {
            let metadata = self.send(item, content).await?;
            return Ok(Sent {
                metadata,
                resumed_from: 0,
            });
        }
        let name = item.name.clone();
        let size = u64::from(item.size);
        item.resume_key = Some(key.to_owned());
        write_message(&mut self.stream, &item)
            .await
            .map_err(|e| CapabilityError::frame("sending an item", e))?;
        let offer: ResumeOffer = read_message(&mut self.stream, self.limits.max_frame)
            .await
            .map_err(|e| CapabilityError::frame("reading the receiver's resume offer", e))?;
        let (start, builder) = self.check_offer(size, &offer, &mut content).await?;
        write_message(&mut self.stream, &ResumeStart { offset: start })
            .await
            .map_err(|e| CapabilityError::frame("saying where the content starts", e))?;
        let local = self
            .send_content(&name, start, size, content, builder)
            .await?;
        let metadata = self.await_receipt(&name, size, local).await?;
        Ok(Sent {
            metadata,
            resumed_from: start,
        })
    }

    /// Where the content of an item starts after `offer`, and the tree of the bytes before:
    /// the offer's offset when the first bytes of `content` have its root, else 0 with
    /// `content` back where it was.
    async fn check_offer<R>(
        &mut self,
        size: u64,
        offer: &ResumeOffer,
        content: &mut R,
    ) -> Result<(u64, MerkleBuilder), CapabilityError>
    where
        R: AsyncRead + AsyncSeek + Unpin,
    {
        let offered = offer
            .prefix_hash
            .as_deref()
            .and_then(|h| h.parse::<Root>().ok());
        let usable =
            offer.offset > 0 && offer.offset <= size && offer.offset % CHUNK_SIZE as u64 == 0;
        let (Some(offered), true) = (offered, usable) else {
            return Ok((0, MerkleBuilder::new()));
        };
        let seek = |e| CapabilityError::io("seeking in the content to send", e);
        let origin = content.stream_position().await.map_err(seek)?;
        let mut builder = MerkleBuilder::new();
        let batch = self.limits.io_batch.max(1);
        let mut buf = self.batches.take(batch);
        let hashed = async {
            while builder.len() < offer.offset {
                let want = (offer.offset - builder.len()).min(batch as u64) as usize;
                let filled = fill(content, &mut buf[..want])
                    .await
                    .map_err(|e| CapabilityError::io("reading the content to send", e))?;
                if filled == 0 {
                    break;
                }
                builder.update_parallel(&buf[..filled]);
            }
            Ok::<_, CapabilityError>(())
        }
        .await;
        self.batches.put(buf);
        hashed?;
        if builder.len() == offer.offset && builder.finalize() == offered {
            return Ok((offer.offset, builder));
        }
        // The receiver kept other bytes under this key (another version of the content):
        // all of it goes again.
        content.seek(SeekFrom::Start(origin)).await.map_err(seek)?;
        Ok((0, MerkleBuilder::new()))
    }

    /// Sends one item whose content is exactly `item.size` bytes of `content`, and
    /// returns the receiver's metadata once its root matches the one computed here.
    ///
    /// Bytes of `content` past `item.size` are left unread. Items sent by
    /// [`send_pipelined`](Self::send_pipelined) before are answered first (their receipts
    /// wait in [`take_receipts`](Self::take_receipts)).
    ///
    /// # Errors
    /// [`CapabilityError::ContentTooShort`] when `content` ends early (the stream is then
    /// unusable), [`CapabilityError::RootMismatch`], [`CapabilityError::MissingRoot`],
    /// [`CapabilityError::SizeMismatch`], or a stream error.
    pub async fn send<R>(
        &mut self,
        item: UpsertMetadata,
        content: R,
    ) -> Result<Metadata, CapabilityError>
    where
        R: AsyncRead + Unpin,
    {
        self.flush_receipts().await?;
        let local = self.send_item(&item, content).await?;
        self.await_receipt(&item.name, u64::from(item.size), local)
            .await
    }

    /// Writes `item` and exactly `item.size` bytes of `content`; the root of those bytes.
    async fn send_item<R: AsyncRead + Unpin>(
        &mut self,
        item: &UpsertMetadata,
        content: R,
    ) -> Result<Root, CapabilityError> {
        write_message(&mut self.stream, item)
            .await
            .map_err(|e| CapabilityError::frame("sending an item", e))?;
        let size = u64::from(item.size);
        self.send_content(&item.name, 0, size, content, MerkleBuilder::new())
            .await
    }

    /// Sends one item whose content is `content`; `item.size` is set from its length.
    ///
    /// The bytes are written and hashed straight from `content` (a `Vec<u8>` or a
    /// `&'static [u8]` converts without a copy).
    ///
    /// # Errors
    /// As [`send`](Self::send), and [`CapabilityError::ItemTooLarge`] over 4 GiB - 1.
    pub async fn send_bytes(
        &mut self,
        mut item: UpsertMetadata,
        content: impl Into<Bytes>,
    ) -> Result<Metadata, CapabilityError> {
        let content: Bytes = content.into();
        item.size = size_field(content.len() as u64)?;
        self.flush_receipts().await?;
        let name = item.name.clone();
        write_message(&mut self.stream, &item)
            .await
            .map_err(|e| CapabilityError::frame("sending an item", e))?;
        let batch = self.limits.io_batch.max(1);
        let mut hasher =
            ContentHasher::new(MerkleBuilder::new(), content.len() as u64, batch, drop);
        let copied = async {
            for start in (0..content.len()).step_by(batch) {
                let piece = content.slice(start..content.len().min(start + batch));
                if !self.write_hashed(&mut hasher, piece).await? {
                    break;
                }
            }
            self.flush_content().await
        }
        .await;
        let local = hasher.finish().await?;
        copied?;
        self.await_receipt(&name, content.len() as u64, local).await
    }

    /// Sends the file at `path` as one item; `item.size` is set from the file's length.
    ///
    /// # Errors
    /// As [`send`](Self::send), [`CapabilityError::ItemTooLarge`], and
    /// [`CapabilityError::Io`] when the file cannot be opened.
    pub async fn send_file(
        &mut self,
        mut item: UpsertMetadata,
        path: &Path,
    ) -> Result<Metadata, CapabilityError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| CapabilityError::io("opening the file to send", e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| CapabilityError::io("reading the file's length", e))?
            .len();
        item.size = size_field(len)?;
        self.send(item, file).await
    }

    /// Closes the write half and waits for the receiver to close its own, which it
    /// does once every item is stored. Items still in flight are answered first; their
    /// receipts, untaken, are dropped.
    ///
    /// # Errors
    /// As [`flush_receipts`](Self::flush_receipts); a stream or idle error, or
    /// [`CapabilityError::Frame`] if the receiver sends more.
    pub async fn finish(mut self) -> Result<(), CapabilityError> {
        self.flush_receipts().await?;
        self.stream
            .shutdown()
            .await
            .map_err(|e| CapabilityError::io("closing the stream", e))?;
        let extra: Option<Metadata> = read_message_or_eof(&mut self.stream, self.limits.max_frame)
            .await
            .map_err(|e| CapabilityError::frame("waiting for the receiver to close", e))?;
        match extra {
            None => Ok(()),
            Some(_) => Err(CapabilityError::Unexpected {
                during: "waiting for the receiver to close",
                what: "metadata after the last item",
            }),
        }
    }

    /// Copies the bytes of an item of `size` bytes from `start` on in large batches,
    /// hashing each batch as it goes into `builder`, the tree of the bytes before `start`.
    async fn send_content<R: AsyncRead + Unpin>(
        &mut self,
        name: &str,
        start: u64,
        size: u64,
        mut content: R,
        builder: MerkleBuilder,
    ) -> Result<Root, CapabilityError> {
        let batch = self.limits.io_batch.max(1);
        let returned = self.batches.returns();
        let mut hasher = ContentHasher::new(builder, size - start, batch, move |done| {
            recycle(done, &returned);
        });
        let mut sent = start;
        let copied = async {
            while sent < size {
                let want = (size - sent).min(batch as u64) as usize;
                let mut buf = self.batches.take(want);
                let filled = fill(&mut content, &mut buf).await;
                let filled = match filled {
                    Ok(0) => {
                        // The receiver would wait for bytes that never come: close now so
                        // it sees the stream end and stores nothing.
                        let _ = self.stream.shutdown().await;
                        return Err(CapabilityError::ContentTooShort {
                            name: name.to_owned(),
                            expected: size,
                            got: sent,
                        });
                    }
                    Ok(filled) => filled,
                    Err(e) => return Err(CapabilityError::io("reading the content to send", e)),
                };
                buf.truncate(filled);
                let buf = Arc::new(buf);
                let hashing = self.write_hashed(&mut hasher, Arc::clone(&buf)).await;
                self.batches.recycle(buf);
                if !hashing? {
                    break;
                }
                sent += filled as u64;
            }
            self.flush_content().await
        }
        .await;
        let local = hasher.finish().await?;
        copied?;
        Ok(local)
    }

    /// Writes `batch` and has `hasher` hash it at the same time. `Ok(false)` when the
    /// hashing thread has stopped: [`ContentHasher::finish`] says why.
    async fn write_hashed<B>(
        &mut self,
        hasher: &mut ContentHasher<B>,
        batch: B,
    ) -> Result<bool, CapabilityError>
    where
        B: Deref<Target: AsRef<[u8]>> + Clone + Send + 'static,
    {
        let written = match hasher {
            ContentHasher::Thread(thread) => {
                if thread.push(batch.clone()).await.is_err() {
                    return Ok(false);
                }
                self.stream.write_all((*batch).as_ref()).await
            }
            // Biased: the write goes first, so its bytes are in the pipe during the hash.
            ContentHasher::Here(tree) => {
                let bytes = (*batch).as_ref();
                let (written, ()) = tokio::join!(biased; self.stream.write_all(bytes), async {
                    tree.update(bytes);
                });
                written
            }
        };
        written.map_err(|e| CapabilityError::io("sending content", e))?;
        Ok(true)
    }

    async fn flush_content(&mut self) -> Result<(), CapabilityError> {
        self.stream
            .flush()
            .await
            .map_err(|e| CapabilityError::io("sending content", e))
    }

    async fn await_receipt(
        &mut self,
        name: &str,
        size: u64,
        local: Root,
    ) -> Result<Metadata, CapabilityError> {
        let metadata: Metadata = read_message(&mut self.stream, self.limits.max_frame)
            .await
            .map_err(|e| CapabilityError::frame("waiting for the receiver's metadata", e))?;
        let remote = metadata
            .hash
            .as_deref()
            .ok_or_else(|| CapabilityError::MissingRoot {
                name: name.to_owned(),
            })?;
        if remote.parse::<Root>().ok() != Some(local) {
            return Err(CapabilityError::RootMismatch {
                name: name.to_owned(),
                local,
                remote: remote.chars().take(80).collect(),
            });
        }
        if u64::from(metadata.size) != size {
            return Err(CapabilityError::SizeMismatch {
                name: name.to_owned(),
                expected: size,
                got: metadata.size.into(),
            });
        }
        Ok(metadata)
    }
}

/// Opens a `/store/v1` stream, sends every item (pipelined when the receiver can),
/// closes, and returns each item's metadata (roots checked) in order.
///
/// # Errors
/// The first [`CapabilityError`]; items before it are stored.
pub async fn store_items<S, R, I>(
    stream: S,
    access_token: &str,
    domain_id: &str,
    items: I,
    limits: Limits,
) -> Result<Vec<Metadata>, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    R: AsyncRead + Unpin,
    I: IntoIterator<Item = (UpsertMetadata, R)>,
{
    let mut sender = StoreSender::open(stream, access_token, domain_id, limits).await?;
    let mut stored = Vec::new();
    for (item, content) in items {
        sender.send_pipelined(item, content).await?;
        stored.extend(sender.take_receipts());
    }
    sender.flush_receipts().await?;
    stored.extend(sender.take_receipts());
    sender.finish().await?;
    Ok(stored)
}

/// Where a sender hashes an item's content. Hashing on the task that writes puts the hash
/// and the copy of each batch one after the other on one core, half the speed of either;
/// an item of more than one batch is hashed on a thread of its own, each batch while it
/// is written. One batch is not worth a thread.
enum ContentHasher<B> {
    Here(MerkleBuilder),
    Thread(BackgroundBuilder<B>),
}

impl<B> ContentHasher<B>
where
    B: Deref<Target: AsRef<[u8]>> + Send + 'static,
{
    /// A hasher that goes on from `tree` for `rest` more bytes, sent in batches of `batch`;
    /// `done` takes each batch once a thread has hashed it.
    fn new(
        tree: MerkleBuilder,
        rest: u64,
        batch: usize,
        done: impl FnMut(B) + Send + 'static,
    ) -> Self {
        if rest > batch as u64 {
            Self::Thread(BackgroundBuilder::spawn(tree, HASH_QUEUE, Cores::One, done))
        } else {
            Self::Here(tree)
        }
    }

    /// The root of every byte hashed.
    async fn finish(self) -> Result<Root, CapabilityError> {
        let tree = match self {
            Self::Here(tree) => tree,
            Self::Thread(thread) => thread.finish().await.map_err(CapabilityError::Hashing)?,
        };
        Ok(tree.finalize())
    }
}

/// The content batches of a sender: taken to be filled, shared by the write and the
/// hashing thread, and back for the next batch once both are done with it.
#[derive(Debug)]
struct BatchPool {
    returns: mpsc::Sender<Vec<u8>>,
    free: mpsc::Receiver<Vec<u8>>,
}

impl BatchPool {
    fn new() -> Self {
        // Room for every batch a sender can hold at once.
        let (returns, free) = mpsc::channel(HASH_QUEUE + 2);
        Self { returns, free }
    }

    /// A batch of `len` bytes, reused when one is free.
    fn take(&mut self, len: usize) -> Vec<u8> {
        let mut batch = self.free.try_recv().unwrap_or_default();
        batch.resize(len, 0);
        batch
    }

    /// Hands back a batch that no one else holds.
    fn put(&self, batch: Vec<u8>) {
        let _ = self.returns.try_send(batch);
    }

    /// Hands back a shared batch if this was its last user.
    fn recycle(&self, batch: Arc<Vec<u8>>) {
        recycle(batch, &self.returns);
    }

    /// Where a hashing thread hands batches back.
    fn returns(&self) -> mpsc::Sender<Vec<u8>> {
        self.returns.clone()
    }
}

/// Hands `batch` back to its pool once its last user is done with it.
fn recycle(batch: Arc<Vec<u8>>, returns: &mpsc::Sender<Vec<u8>>) {
    if let Some(batch) = Arc::into_inner(batch) {
        let _ = returns.try_send(batch);
    }
}

fn size_field(len: u64) -> Result<u32, CapabilityError> {
    u32::try_from(len).map_err(|_| CapabilityError::ItemTooLarge { len })
}

/// The first `left` bytes of `inner`, as `AsyncReadExt::take` gives them, but handing the
/// inner reader the caller's buffer as initialised as it is. tokio's `Take` hands it an
/// uninitialised view instead, which tokio-util's `Compat` (under every libp2p stream) must
/// zero before each read: with 1 MiB batches filled a frame at a time, that is several
/// times the content in memset.
struct Limited<R> {
    inner: R,
    left: u64,
}

impl<R> Limited<R> {
    fn new(inner: R, left: u64) -> Self {
        Self { inner, left }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Limited<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let max =
            usize::try_from(self.left).map_or(buf.remaining(), |left| left.min(buf.remaining()));
        if max == 0 {
            return Poll::Ready(Ok(()));
        }
        // Zeroes only what was never initialised: nothing, for a buffer of initialised bytes.
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(max));
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.advance(n);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
pub(crate) async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limited_reads_end_after_their_bytes_and_leave_the_rest() {
        let mut source: &[u8] = b"0123456789";
        let mut out = Vec::new();
        Limited::new(&mut source, 4)
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, b"0123");
        assert_eq!(source, b"456789");

        let mut short: &[u8] = b"01";
        let mut buf = [7u8; 8];
        let n = Limited::new(&mut short, 4).read(&mut buf).await.unwrap();
        assert_eq!((n, &buf[..3]), (2, &[b'0', b'1', 7][..]));
    }

    /// Reads nothing; records how many bytes of each buffer it is handed are initialised.
    struct InitialisedSeen(Vec<usize>);

    impl AsyncRead for InitialisedSeen {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.0.push(buf.initialized().len());
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn limited_reads_hand_the_inner_reader_an_initialised_buffer() {
        let mut inner = InitialisedSeen(Vec::new());
        let mut buf = [0u8; 64];
        let read = Limited::new(&mut inner, 16).read(&mut buf).await.unwrap();
        let taken = (&mut inner).take(16).read(&mut buf).await.unwrap();
        assert_eq!((read, taken), (0, 0));
        // tokio's `Take` hides that the buffer is initialised; `Limited` does not.
        assert_eq!(inner.0, [16, 0]);
    }

    #[test]
    fn sizes_over_u32_are_refused() {
        assert_eq!(size_field(u64::from(u32::MAX)).unwrap(), u32::MAX);
        assert!(
            matches!(size_field(1 << 32), Err(CapabilityError::ItemTooLarge { len }) if len == 1 << 32)
        );
    }
}
