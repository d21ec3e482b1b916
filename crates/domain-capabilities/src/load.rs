//! `/load/v1`: the sender asks for the items matching a query; the receiver sends
//! each one's metadata, then (unless `metadata_only`) exactly `size` content bytes.
//! With `keep_alive` it then streams items stored later, until the sender sends
//! `UnsubscribeDataQueryV1` or goes away.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domain_datastore::{Datastore, DatastoreError};
use domain_merkle::{CHUNK_SIZE, MerkleBuilder, Root};
use domain_proto::DomainId;
use domain_proto::domain_data::Metadata;
use domain_proto::task::{ConsumeDataInputV1, UnsubscribeDataQueryV1};
use domain_proto::{read_message, read_message_or_eof, write_message};
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf,
    WriteHalf,
};

use crate::handshake::{self, Accepted, PublicKeySource, StreamInfo};
use crate::idle::IdleTimeout;
use crate::{CapabilityError, Limits};

/// What a `/load/v1` receiver sent on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadSummary {
    /// Items sent.
    pub items: u64,
    /// Content bytes sent.
    pub bytes: u64,
}

/// Serves one inbound `/load/v1` stream: the handshake, the request, the matching
/// items, and with `keep_alive` every matching item stored afterwards until the
/// sender unsubscribes or goes away.
///
/// # Errors
/// Any [`CapabilityError`]; [`CapabilityError::Lagged`] when a keep-alive
/// subscriber fell so far behind that items were lost (it must load again).
pub async fn serve_load<S, D, K>(
    stream: S,
    info: &StreamInfo<'_>,
    datastore: &D,
    keys: &K,
    limits: &Limits,
) -> Result<LoadSummary, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Datastore,
    K: PublicKeySource,
{
    let mut stream = IdleTimeout::new(stream, limits.idle_timeout);
    let (accepted, holds) =
        handshake::accept_claiming(&mut stream, info, keys, limits, SystemTime::now()).await?;
    // Held for the stream, the token never spent: see `TokenLedger`.
    let _holds = holds;
    load_accepted(stream, &accepted, datastore, limits).await
}

/// The part of [`serve_load`] after an accepted handshake.
///
/// A keep-alive subscription ends when the token that opened it expires: a token grants
/// a stream for its lifetime, not forever. The sender renews it with a new stream on a
/// fresh token before then.
pub(crate) async fn load_accepted<S, D>(
    mut stream: IdleTimeout<S>,
    accepted: &Accepted,
    datastore: &D,
    limits: &Limits,
) -> Result<LoadSummary, CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Datastore,
{
    let domain = &accepted.domain;
    // Measured on the tokio clock, so that paused time in tests runs it out.
    let left = UNIX_EPOCH + Duration::from_secs(accepted.claims.exp);
    let left = left.duration_since(SystemTime::now()).unwrap_or_default();
    let expires = tokio::time::Instant::now() + left;
    let request: ConsumeDataInputV1 = read_message(&mut stream, limits.max_frame)
        .await
        .map_err(|e| CapabilityError::frame("reading the load request", e))?;
    let query = request.query;
    let resume = request.resume_from;
    // Subscribing before the query leaves no gap; the overlap is skipped below.
    let subscription = match request.keep_alive {
        true => Some(
            datastore
                .subscribe(domain, &query)
                .map_err(CapabilityError::Datastore)?,
        ),
        false => None,
    };
    let existing = datastore
        .query(domain, &query)
        .await
        .map_err(CapabilityError::Datastore)?;

    let mut sender = ItemSender {
        datastore,
        domain,
        metadata_only: query.metadata_only,
        resume,
        summary: LoadSummary::default(),
    };
    for item in &existing {
        sender.send(&mut stream, item).await?;
    }
    if request.keep_alive && request.mark_caught_up == Some(true) {
        write_message(&mut stream, &Metadata::default())
            .await
            .map_err(|e| CapabilityError::frame("marking the subscription caught up", e))?;
    }
    let Some(mut subscription) = subscription else {
        stream
            .shutdown()
            .await
            .map_err(|e| CapabilityError::io("closing the stream", e))?;
        return Ok(sender.summary);
    };

    let mut sent_before: HashMap<String, Option<String>> = existing
        .into_iter()
        .map(|item| (item.id, item.hash))
        .collect();
    // Between items the sender may stay silent for as long as it likes.
    stream.wait_patiently();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let max_frame = limits.max_frame;
    let unsubscribed = async move {
        let message: Option<UnsubscribeDataQueryV1> = read_message_or_eof(&mut reader, max_frame)
            .await
            .map_err(|e| CapabilityError::frame("waiting for an unsubscribe", e))?;
        // A frame or the end of the stream: either way the sender wants no more.
        let _ = message;
        Ok::<(), CapabilityError>(())
    };
    tokio::pin!(unsubscribed);
    loop {
        tokio::select! {
            biased;
            ended = &mut unsubscribed => {
                ended?;
                break;
            }
            () = tokio::time::sleep_until(expires) => break,
            next = subscription.recv() => match next {
                Some(Ok(item)) => {
                    if sent_before.get(&item.id).is_some_and(|hash| *hash == item.hash) {
                        sent_before.remove(&item.id);
                        continue;
                    }
                    sender.send(&mut writer, &item).await?;
                }
                Some(Err(lagged)) => return Err(lagged.into()),
                None => break,
            },
        }
    }
    writer
        .shutdown()
        .await
        .map_err(|e| CapabilityError::io("closing the stream", e))?;
    Ok(sender.summary)
}

/// Sends items from a datastore to a stream.
struct ItemSender<'a, D> {
    datastore: &'a D,
    domain: &'a DomainId,
    metadata_only: bool,
    /// Bytes the consumer holds per id; each applies to the first send of its id only
    /// (a later version of the item has other content).
    resume: BTreeMap<String, u64>,
    summary: LoadSummary,
}

impl<D: Datastore> ItemSender<'_, D> {
    async fn send<W: AsyncWrite + Unpin + Send>(
        &mut self,
        writer: &mut W,
        item: &Metadata,
    ) -> Result<(), CapabilityError> {
        if self.metadata_only {
            write_message(writer, item)
                .await
                .map_err(|e| CapabilityError::frame("sending metadata", e))?;
            self.summary.items += 1;
            return Ok(());
        }
        // An offset that is not a chunk boundary is not a prefix the consumer can hold:
        // the whole content goes, as a v1 receiver would send it. So it does when the item
        // changed since the consumer's prefix and is now shorter.
        let asked = self
            .resume
            .remove(&item.id)
            .filter(|&offset| offset > 0 && offset % CHUNK_SIZE as u64 == 0);
        let mut fetched = None;
        if let Some(offset) = asked {
            match self.datastore.get_from(self.domain, &item.id, offset).await {
                Err(DatastoreError::OffsetPastEnd { .. }) => {}
                result => {
                    fetched = Some(result.map(|(item, content)| (item, content, Some(offset))))
                }
            }
        }
        let fetched = match fetched {
            Some(fetched) => fetched,
            None => self
                .datastore
                .get(self.domain, &item.id)
                .await
                .map(|(item, content)| (item, content, None)),
        };
        let (mut metadata, mut content, offset) = match fetched {
            Ok(found) => found,
            // Deleted since the query or the notification: nothing to send.
            Err(DatastoreError::NotFound { .. }) => return Ok(()),
            Err(err) => return Err(CapabilityError::Datastore(err)),
        };
        let size = u64::from(metadata.size);
        metadata.content_offset = offset;
        write_message(writer, &metadata)
            .await
            .map_err(|e| CapabilityError::frame("sending metadata", e))?;
        let offset = offset.unwrap_or(0);
        let mut sent = offset;
        while sent < size {
            // Written from the store's own buffer: the content is copied once, into the
            // stream.
            let available = content.fill_buf().await.map_err(|source| {
                CapabilityError::Datastore(DatastoreError::ReadContent {
                    name: metadata.name.clone(),
                    source,
                })
            })?;
            if available.is_empty() {
                return Err(CapabilityError::Datastore(DatastoreError::Corrupt {
                    domain: self.domain.clone(),
                    id: metadata.id.clone(),
                    reason: format!("content ends after {sent} of {size} bytes"),
                }));
            }
            let n = usize::try_from(size - sent)
                .map_or(available.len(), |left| left.min(available.len()));
            writer
                .write_all(&available[..n])
                .await
                .map_err(|e| CapabilityError::io("sending content", e))?;
            content.consume(n);
            sent += n as u64;
        }
        writer
            .flush()
            .await
            .map_err(|e| CapabilityError::io("sending content", e))?;
        self.summary.items += 1;
        self.summary.bytes += size - offset;
        Ok(())
    }
}

/// Opens a `/load/v1` stream: the handshake, then the request.
///
/// Returns the consumer of the items and the handle that ends a keep-alive
/// subscription (without keep-alive the receiver ends the stream itself).
///
/// # Errors
/// [`CapabilityError::Refused`] when the receiver refuses the token; stream errors.
pub async fn open_load<S>(
    stream: S,
    access_token: &str,
    domain_id: &str,
    request: ConsumeDataInputV1,
    limits: Limits,
) -> Result<(LoadConsumer<S>, Unsubscriber<S>), CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    open_load_resuming(
        stream,
        access_token,
        domain_id,
        request,
        Prefixes::new(),
        limits,
    )
    .await
}

/// As [`open_load`], for a consumer that already holds the start of some items'
/// content: their ids go in the request's `resume_from`, and a receiver that knows the
/// extension sends each of them from the end of its prefix. [`LoadedItem::offset`] says
/// where an item's content starts; the root is checked over the prefix and the rest.
///
/// # Errors
/// As [`open_load`].
pub async fn open_load_resuming<S>(
    stream: S,
    access_token: &str,
    domain_id: &str,
    mut request: ConsumeDataInputV1,
    prefixes: Prefixes,
    limits: Limits,
) -> Result<(LoadConsumer<S>, Unsubscriber<S>), CapabilityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    request.resume_from = prefixes
        .0
        .iter()
        .map(|(id, prefix)| (id.clone(), prefix.len()))
        .collect();
    let mut stream = IdleTimeout::new(stream, limits.idle_timeout);
    handshake::open(&mut stream, access_token, domain_id, &limits).await?;
    write_message(&mut stream, &request)
        .await
        .map_err(|e| CapabilityError::frame("sending the load request", e))?;
    let (reader, writer) = tokio::io::split(stream.into_inner());
    let consumer = LoadConsumer {
        reader: IdleTimeout::new(reader, limits.idle_timeout),
        limits,
        metadata_only: request.query.metadata_only,
        keep_alive: request.keep_alive,
        marker_due: request.keep_alive && request.mark_caught_up == Some(true),
        prefixes: prefixes.0,
        current: None,
        finished: false,
    };
    let unsubscriber = Unsubscriber {
        writer: IdleTimeout::new(writer, limits.idle_timeout),
    };
    Ok((consumer, unsubscriber))
}

/// What a consumer already holds of the items it loads again: per id, the Merkle
/// builder over the first bytes of its content, a whole number of chunks.
#[derive(Debug, Default)]
pub struct Prefixes(BTreeMap<String, MerkleBuilder>);

impl Prefixes {
    /// No prefixes: every item comes whole.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the consumer holds the first `prefix.len()` bytes of item `id`,
    /// hashed into `prefix`. An empty prefix asks for nothing and is not recorded.
    ///
    /// # Errors
    /// [`CapabilityError::PartialChunk`] unless the prefix is whole chunks.
    pub fn insert(&mut self, id: String, prefix: MerkleBuilder) -> Result<(), CapabilityError> {
        let len = prefix.len();
        if len % CHUNK_SIZE as u64 != 0 {
            return Err(CapabilityError::PartialChunk { len });
        }
        if len > 0 {
            self.0.insert(id, prefix);
        }
        Ok(())
    }

    /// Whether no prefix is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The items of a `/load/v1` stream, one at a time.
///
/// Each item's content is read through the [`LoadedItem`] that
/// [`next`](Self::next) returns, which checks it against the item's Merkle root; what
/// is left unread is skipped at the next call.
#[derive(Debug)]
pub struct LoadConsumer<S> {
    reader: IdleTimeout<ReadHalf<S>>,
    limits: Limits,
    metadata_only: bool,
    keep_alive: bool,
    /// The caught-up marker was asked for and has not arrived.
    marker_due: bool,
    /// The prefixes asked to resume from, until their item arrives.
    prefixes: BTreeMap<String, MerkleBuilder>,
    current: Option<Content>,
    finished: bool,
}

/// What [`LoadConsumer::next_frame`] read.
enum Frame {
    /// An item's metadata and the offset its content starts at.
    Item(Metadata, u64),
    /// The caught-up marker.
    CaughtUp,
    /// The receiver closed the stream.
    End,
}

/// The content still to come of the current item.
#[derive(Debug)]
struct Content {
    name: String,
    remaining: u64,
    expected: Root,
    builder: MerkleBuilder,
}

impl<S: AsyncRead + Unpin + Send> LoadConsumer<S> {
    /// The next item, or `None` once the receiver has closed the stream (after an
    /// unsubscribe, with keep-alive).
    ///
    /// With keep-alive this waits as long as it takes for the next item to be stored.
    ///
    /// # Errors
    /// Stream, frame and idle errors; [`CapabilityError::MissingRoot`] for an item
    /// whose metadata has no valid root.
    pub async fn next(&mut self) -> Result<Option<LoadedItem<'_, S>>, CapabilityError> {
        loop {
            match self.next_frame().await? {
                Frame::CaughtUp => continue,
                Frame::End => return Ok(None),
                Frame::Item(metadata, offset) => {
                    return Ok(Some(LoadedItem {
                        metadata,
                        offset,
                        consumer: self,
                    }));
                }
            }
        }
    }

    /// Reads past the items that matched when a keep-alive subscription began, up to
    /// the receiver's caught-up marker, asked for with
    /// `ConsumeDataInputV1.mark_caught_up`: from then on [`next`](Self::next) gives only
    /// items stored after the subscription began. Returns how many items it passed.
    ///
    /// A receiver that does not know the extension sends no marker: bound the wait.
    ///
    /// # Errors
    /// As [`next_before_caught_up`](Self::next_before_caught_up).
    pub async fn skip_to_caught_up(&mut self) -> Result<u64, CapabilityError> {
        let mut passed = 0;
        while self.next_before_caught_up().await?.is_some() {
            passed += 1;
        }
        Ok(passed)
    }

    /// The next of the items that matched when a keep-alive subscription began, or
    /// `None` once the receiver's caught-up marker (asked for with
    /// `ConsumeDataInputV1.mark_caught_up`) came: from then on [`next`](Self::next) gives
    /// the items stored since. What a subscriber that renews its stream reads to tell the
    /// items it has seen from those stored while it renewed.
    ///
    /// # Errors
    /// [`CapabilityError::Unexpected`] when no marker was asked for or it came already;
    /// [`CapabilityError::Closed`] when the stream ends first; as [`next`](Self::next).
    pub async fn next_before_caught_up(
        &mut self,
    ) -> Result<Option<LoadedItem<'_, S>>, CapabilityError> {
        const DURING: &str = "waiting for the subscription to catch up";
        if !self.marker_due {
            return Err(CapabilityError::Unexpected {
                during: DURING,
                what: "a wait for a caught-up marker that was not asked for",
            });
        }
        match self.next_frame().await? {
            Frame::CaughtUp => Ok(None),
            Frame::End => Err(CapabilityError::Closed { during: DURING }),
            Frame::Item(metadata, offset) => Ok(Some(LoadedItem {
                metadata,
                offset,
                consumer: self,
            })),
        }
    }

    /// The next frame: an item (its content then waits in `current`), the marker, or the
    /// end of the stream.
    async fn next_frame(&mut self) -> Result<Frame, CapabilityError> {
        self.skip_rest().await?;
        if self.finished {
            return Ok(Frame::End);
        }
        if self.keep_alive {
            self.reader.wait_patiently();
        }
        let metadata: Option<Metadata> =
            read_message_or_eof(&mut self.reader, self.limits.max_frame)
                .await
                .map_err(|e| CapabilityError::frame("reading the next item", e))?;
        let Some(mut metadata) = metadata else {
            self.finished = true;
            return Ok(Frame::End);
        };
        if self.marker_due && metadata.id.is_empty() {
            self.marker_due = false;
            return Ok(Frame::CaughtUp);
        }
        // The offset describes this stream, not the item: the caller never sees it.
        let offset = metadata.content_offset.take().unwrap_or(0);
        let prefix = self.prefixes.remove(&metadata.id);
        let size = u64::from(metadata.size);
        if offset > 0 && (self.metadata_only || offset > size) {
            return Err(CapabilityError::Unexpected {
                during: "reading the next item",
                what: "a content offset outside the item",
            });
        }
        let builder = match prefix {
            Some(prefix) if offset > 0 && prefix.len() == offset => prefix,
            _ if offset > 0 => {
                return Err(CapabilityError::Unexpected {
                    during: "reading the next item",
                    what: "content resumed at an offset that was not asked for",
                });
            }
            _ => MerkleBuilder::new(),
        };
        if !self.metadata_only {
            let expected = metadata
                .hash
                .as_deref()
                .and_then(|hash| hash.parse::<Root>().ok())
                .ok_or_else(|| CapabilityError::MissingRoot {
                    name: metadata.name.clone(),
                })?;
            let content = Content {
                name: metadata.name.clone(),
                remaining: size - offset,
                expected,
                builder,
            };
            if content.remaining == 0 {
                content.check()?;
            } else {
                self.current = Some(content);
            }
        }
        Ok(Frame::Item(metadata, offset))
    }

    /// Reads and drops what is left of the current item's content.
    async fn skip_rest(&mut self) -> Result<(), CapabilityError> {
        let Some(content) = self.current.take() else {
            return Ok(());
        };
        let mut rest = (&mut self.reader).take(content.remaining);
        let skipped = tokio::io::copy(&mut rest, &mut tokio::io::sink())
            .await
            .map_err(|e| CapabilityError::io("skipping unread content", e))?;
        if skipped < content.remaining {
            return Err(CapabilityError::Truncated {
                name: content.name,
                expected: content.remaining,
                got: skipped,
            });
        }
        Ok(())
    }

    fn poll_content(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(content) = self.current.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        let got = if buf.remaining() as u64 <= content.remaining {
            ready!(Pin::new(&mut self.reader).poll_read(cx, buf))?;
            content.builder.update(&buf.filled()[before..]);
            buf.filled().len() - before
        } else {
            // Never read past this item: what follows is the next item's frame.
            let room = content.remaining as usize;
            let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
            ready!(Pin::new(&mut self.reader).poll_read(cx, &mut limited))?;
            content.builder.update(limited.filled());
            let got = limited.filled().len();
            buf.advance(got);
            got
        };
        if got == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "content of {:?} cut short with {} bytes to come",
                    content.name, content.remaining
                ),
            )));
        }
        content.remaining -= got as u64;
        if content.remaining == 0 {
            let done = self.current.take();
            if let Some(done) = done {
                if let Err(e) = done.check() {
                    // A read that fails has read nothing: the last bytes are not the
                    // caller's to keep.
                    buf.set_filled(before);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Content {
    fn check(self) -> Result<(), CapabilityError> {
        let local = self.builder.finalize();
        if local == self.expected {
            Ok(())
        } else {
            Err(CapabilityError::RootMismatch {
                name: self.name,
                local,
                remote: self.expected.to_string(),
            })
        }
    }
}

/// One item of a `/load/v1` stream: its metadata and, as an [`AsyncRead`], its
/// content (empty with `metadata_only`).
///
/// Reading fails with [`io::ErrorKind::InvalidData`] when the content does not match
/// the item's Merkle root; the error then carries a [`CapabilityError::RootMismatch`].
#[derive(Debug)]
pub struct LoadedItem<'a, S> {
    metadata: Metadata,
    offset: u64,
    consumer: &'a mut LoadConsumer<S>,
}

impl<S: AsyncRead + Unpin + Send> LoadedItem<'_, S> {
    /// The item's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Where in the item's content the bytes read from here start: the length of the
    /// consumer's prefix when the receiver resumed the item, otherwise 0 (the whole
    /// content follows, and a held prefix is to be discarded).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the content (from [`offset`](Self::offset)) into memory, refusing items over
    /// `max_len` bytes.
    ///
    /// # Errors
    /// [`CapabilityError::ItemTooLarge`] over `max_len`; [`CapabilityError::RootMismatch`]
    /// when the content does not match its root; stream errors.
    pub async fn read_to_vec(
        mut self,
        max_len: u64,
    ) -> Result<(Metadata, Vec<u8>), CapabilityError> {
        let size = u64::from(self.metadata.size);
        if size > max_len {
            return Err(CapabilityError::ItemTooLarge { len: size });
        }
        let expected = if self.consumer.metadata_only {
            0
        } else {
            size - self.offset
        };
        let mut content = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
        self.read_to_end(&mut content)
            .await
            .map_err(|e| content_error(&self.metadata.name, e))?;
        Ok((self.metadata, content))
    }

    /// Copies the whole content to `writer`; returns the bytes copied.
    ///
    /// # Errors
    /// As [`read_to_vec`](Self::read_to_vec), and [`CapabilityError::Io`] when `writer` fails.
    pub async fn copy_to<W: AsyncWrite + Unpin>(
        mut self,
        writer: &mut W,
    ) -> Result<u64, CapabilityError> {
        let name = self.metadata.name.clone();
        let copied = tokio::io::copy(&mut self, writer)
            .await
            .map_err(|e| content_error(&name, e))?;
        Ok(copied)
    }

    /// Writes the content (from [`offset`](Self::offset)) into `file`, which holds the
    /// item's first `offset` bytes, at disk speed: in large batches, hashed on a thread
    /// of their own while written, past the page cache where the file system allows
    /// ([`domain_datastore::stream_into_file`]). `advanced` hears of the bytes of each
    /// read as they arrive. Returns the file, not yet synced, once its content matched
    /// the item's root.
    ///
    /// A file is the one writer that can take back what it was given, so unlike
    /// [`copy_to`](Self::copy_to) nothing waits for the root before it is written.
    ///
    /// # Errors
    /// [`CapabilityError::RootMismatch`] when the content does not match its root;
    /// [`CapabilityError::Io`] when the stream fails or ends early: the file then holds
    /// exactly the bytes that arrived, which a later download can resume from;
    /// [`CapabilityError::Datastore`] when writing fails (the file's content is then
    /// undefined).
    pub async fn write_to_file(
        self,
        file: std::fs::File,
        path: &std::path::Path,
        mut advanced: impl FnMut(u64) + Send,
    ) -> Result<std::fs::File, CapabilityError> {
        let LoadConsumer {
            reader, current, ..
        } = self.consumer;
        // Metadata only, or nothing left to send (an empty item, a resumed one that was
        // whole): the content was checked when its frame came.
        let Some(content) = current.as_mut() else {
            return Ok(file);
        };
        let tree = std::mem::take(&mut content.builder);
        let raw = RawContent {
            reader,
            remaining: &mut content.remaining,
            advanced: &mut advanced,
        };
        let written = domain_datastore::stream_into_file(
            file,
            path,
            &content.name,
            self.metadata.size,
            raw,
            tree,
        )
        .await;
        let (local, file) = written.map_err(|error| match error {
            DatastoreError::ReadContent { source, .. } => {
                CapabilityError::io("reading content", source)
            }
            other => CapabilityError::Datastore(other),
        })?;
        // Taken only now: after a failure, `next` skips what is left of the content.
        let Some(content) = current.take() else {
            return Ok(file);
        };
        if local != content.expected {
            return Err(CapabilityError::RootMismatch {
                name: content.name,
                local,
                remote: content.expected.to_string(),
            });
        }
        Ok(file)
    }
}

/// The rest of the current item's content as it comes off the stream, unhashed: for a
/// reader that hashes it itself. Ends with the content; a stream that ends first is an
/// [`io::ErrorKind::UnexpectedEof`].
struct RawContent<'a, R, F> {
    reader: &'a mut R,
    remaining: &'a mut u64,
    advanced: &'a mut F,
}

impl<R: AsyncRead + Unpin, F: FnMut(u64)> AsyncRead for RawContent<'_, R, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if *this.remaining == 0 {
            return Poll::Ready(Ok(()));
        }
        // Never read past the content: what follows is the next item's frame.
        let room = usize::try_from(*this.remaining).unwrap_or(usize::MAX);
        let mut limited = if buf.remaining() > room {
            ReadBuf::new(buf.initialize_unfilled_to(room))
        } else {
            ReadBuf::new(buf.initialize_unfilled())
        };
        ready!(Pin::new(&mut *this.reader).poll_read(cx, &mut limited))?;
        let got = limited.filled().len();
        if got == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("content cut short with {} bytes to come", this.remaining),
            )));
        }
        buf.advance(got);
        *this.remaining -= got as u64;
        (this.advanced)(got as u64);
        Poll::Ready(Ok(()))
    }
}

fn content_error(name: &str, err: io::Error) -> CapabilityError {
    let mismatch = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<CapabilityError>());
    if let Some(CapabilityError::RootMismatch { local, remote, .. }) = mismatch {
        return CapabilityError::RootMismatch {
            name: name.to_owned(),
            local: *local,
            remote: remote.clone(),
        };
    }
    CapabilityError::io("reading content", err)
}

impl<S: AsyncRead + Unpin + Send> AsyncRead for LoadedItem<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().consumer.poll_content(cx, buf)
    }
}

/// Ends a keep-alive `/load/v1` subscription.
#[derive(Debug)]
pub struct Unsubscriber<S> {
    writer: IdleTimeout<WriteHalf<S>>,
}

impl<S: AsyncWrite + Unpin + Send> Unsubscriber<S> {
    /// Sends `UnsubscribeDataQueryV1` and closes the write half; the receiver then
    /// finishes the item in flight and closes the stream, which ends the
    /// [`LoadConsumer`].
    ///
    /// # Errors
    /// A stream or idle error.
    pub async fn unsubscribe(mut self) -> Result<(), CapabilityError> {
        write_message(&mut self.writer, &UnsubscribeDataQueryV1 {})
            .await
            .map_err(|e| CapabilityError::frame("unsubscribing", e))?;
        self.writer
            .shutdown()
            .await
            .map_err(|e| CapabilityError::io("unsubscribing", e))
    }
}
