//! [`RemoteDatastore`]: the [`Datastore`] trait over a domain cluster, the counterpart of
//! [`LocalDatastore`](domain_datastore::LocalDatastore), so that one program body works
//! on local and remote data alike.
//!
//! Each call is a job through the cluster's manager, as the [`Client`] runs it:
//! - [`put`](Datastore::put) streams over a `/store/v1` task (an upsert goes to the node
//!   that holds the item it replaces); the node's Merkle root is compared with the one
//!   computed here, so a put that succeeds is proven.
//! - [`get`](Datastore::get) streams the content over a `/load/v1` task as it is read;
//!   the root check ends with the last byte, so a reader that reached its end
//!   without an error read the item's exact content.
//! - [`query`](Datastore::query) lists over `/load/v1` on every node that holds data of
//!   the domain, each id once, ordered by id.
//! - [`delete`](Datastore::delete) runs `/delete/v1` on every node that holds data of
//!   the domain.
//! - [`subscribe`](Datastore::subscribe) follows keep-alive `/load/v1` streams from
//!   their caught-up markers; a put through this store waits until the subscriptions
//!   made before it are established, so a subscriber sees the puts that follow it.
//!
//! Bad content is caught here, before the node could store it: content that ends before
//! `size`, or holds more, is refused with [`DatastoreError::SizeMismatch`] (its last byte
//! is held back until the end of the reader is seen), and a reader that fails is
//! reported as [`DatastoreError::ReadContent`]. Failures of the cluster come as
//! [`DatastoreError::Remote`] with the [`ClientError`] as their source.
//!
//! ```no_run
//! # async fn demo(client: domain_client::client::Client) -> Result<(), domain_datastore::DatastoreError> {
//! use domain_client::datastore::RemoteDatastore;
//! use domain_datastore::Datastore;
//! use domain_proto::DomainId;
//! use domain_proto::domain_data::UpsertMetadata;
//!
//! let store = RemoteDatastore::new(client);
//! let domain = DomainId::new("lab").expect("a valid domain id");
//! let item = UpsertMetadata { name: "scan".into(), data_type: "ply".into(), size: 5, is_new: true, ..Default::default() };
//! let stored = store.put(&domain, item, &b"hello"[..]).await?;
//! let (metadata, _content) = store.get(&domain, &stored.id).await?;
//! assert_eq!(metadata.hash, stored.hash);
//! # Ok(())
//! # }
//! ```

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use domain_datastore::{
    DEFAULT_SUBSCRIPTION_CAPACITY, Datastore, DatastoreError, QueryFilter, Subscribers,
    Subscription, is_replica,
};
use domain_proto::DomainId;
use domain_proto::domain_data::{Metadata, Query, UpsertMetadata};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt as _, BufReader, DuplexStream, ReadBuf};
use tokio::sync::{oneshot, watch};

use crate::client::{Client, ClientError};

/// Bytes of a [`get`](Datastore::get)'s content buffered between the transfer and its
/// reader: the transfer waits while the reader is this far behind.
const CONTENT_PIPE: usize = 1024 * 1024;

/// Bytes a [`RemoteContent`] lends its reader at a time: large enough that a sender
/// writing from it makes large network writes.
const CONTENT_READ: usize = 256 * 1024;

/// How often a subscription's feed checks whether its subscriber is still there, when
/// no item comes to tell.
const SUBSCRIBER_CHECK: Duration = Duration::from_secs(1);

/// The [`Datastore`] of a domain cluster, through a [`Client`]. Cloning is cheap: clones
/// share the client.
#[derive(Debug, Clone)]
pub struct RemoteDatastore {
    client: Client,
    /// Subscriptions not yet established; puts wait for none to be.
    establishing: Arc<watch::Sender<usize>>,
    subscription_capacity: usize,
    /// How long a put waits for subscriptions to be established before going ahead.
    subscription_patience: Duration,
}

impl RemoteDatastore {
    /// The datastore of the cluster `client` is connected to (it needs a manager).
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self {
            client,
            establishing: Arc::new(watch::Sender::new(0)),
            subscription_capacity: DEFAULT_SUBSCRIPTION_CAPACITY,
            subscription_patience: Duration::from_secs(30),
        }
    }

    /// The client the store works through.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Waits until the subscriptions made through this store are established, or for
    /// [`Self::subscription_patience`].
    async fn subscriptions_established(&self) {
        let mut establishing = self.establishing.subscribe();
        let wait = establishing.wait_for(|pending| *pending == 0);
        let _ = tokio::time::timeout(self.subscription_patience, wait).await;
    }

    async fn put_checked<R: AsyncRead + Send + Unpin>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        mut content: R,
    ) -> Result<Metadata, DatastoreError> {
        let size = item.size;
        let name = item.name.clone();
        if size == 0 {
            // Nothing is sent for an empty item, so nothing would notice extra bytes.
            let mut extra = [0; 1];
            match content.read(&mut extra).await {
                Ok(0) => {}
                Ok(_) => {
                    return Err(DatastoreError::SizeMismatch {
                        expected: 0,
                        got: 1,
                    });
                }
                Err(source) => return Err(DatastoreError::ReadContent { name, source }),
            }
        }
        if is_replica(&item) {
            // The upstream nodes take items under ids of their own only on the copy tasks
            // their manager places (`TaskClaims::copy`): this client's tasks are none.
            return Err(DatastoreError::ReplicasUnsupported);
        }
        self.subscriptions_established().await;
        let receiver = match item.is_new {
            true => None,
            false => match self.client.locate(domain, &item.id).await {
                Ok(Some((_, node))) => Some(node),
                Ok(None) => {
                    return Err(DatastoreError::NotFound {
                        domain: domain.clone(),
                        id: item.id,
                    });
                }
                Err(error) => return Err(remote("finding the item to replace", error)),
            },
        };
        let exact = ExactSize::new(content, size);
        let fault = Arc::clone(&exact.fault);
        let stored = self
            .client
            .upload_reader_on(domain, item, exact, receiver)
            .await;
        let fault = fault.lock().unwrap_or_else(PoisonError::into_inner).take();
        match (stored, fault) {
            (Ok(stored), _) => Ok(stored),
            (Err(_), Some(Fault::Short { got })) => Err(DatastoreError::SizeMismatch {
                expected: size,
                got,
            }),
            (Err(_), Some(Fault::Long)) => Err(DatastoreError::SizeMismatch {
                expected: size,
                got: u64::from(size) + 1,
            }),
            (Err(_), Some(Fault::Read(source))) => {
                Err(DatastoreError::ReadContent { name, source })
            }
            (Err(error), None) => Err(remote("storing an item", error)),
        }
    }
}

impl Datastore for RemoteDatastore {
    type Content = RemoteContent;

    fn put<R: AsyncRead + Send + Unpin>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        content: R,
    ) -> impl Future<Output = Result<Metadata, DatastoreError>> + Send {
        self.put_checked(domain, item, content)
    }

    async fn get(
        &self,
        domain: &DomainId,
        id: &str,
    ) -> Result<(Metadata, Self::Content), DatastoreError> {
        let (mut writer, reader) = tokio::io::duplex(CONTENT_PIPE);
        let (started, metadata) = oneshot::channel();
        let (finished, outcome) = oneshot::channel();
        let client = self.client.clone();
        let (task_domain, task_id) = (domain.clone(), id.to_owned());
        tokio::spawn(async move {
            let downloaded = client
                .download_announced(&task_domain, &task_id, &mut writer, Some(started))
                .await;
            // The reader sees the end of the pipe only after the outcome is sent.
            let _ = finished.send(downloaded);
            drop(writer);
        });
        match metadata.await {
            Ok(metadata) => Ok((
                metadata,
                RemoteContent {
                    pipe: BufReader::with_capacity(CONTENT_READ, reader),
                    outcome: Some(outcome),
                },
            )),
            // No item started: the download found nothing, or failed.
            Err(_) => match outcome.await {
                Ok(Ok(_)) => Err(DatastoreError::NotFound {
                    domain: domain.clone(),
                    id: id.to_owned(),
                }),
                Ok(Err(error)) => Err(remote("fetching an item", error)),
                Err(_) => Err(remote("fetching an item", TaskGone)),
            },
        }
    }

    async fn query(
        &self,
        domain: &DomainId,
        query: &Query,
    ) -> Result<Vec<Metadata>, DatastoreError> {
        QueryFilter::new(query)?;
        let mut items = self
            .client
            .list(domain, query)
            .await
            .map_err(|error| remote("listing items", error))?;
        items.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(items)
    }

    async fn delete(&self, domain: &DomainId, id: &str) -> Result<(), DatastoreError> {
        let answer = self
            .client
            .delete(domain, &[id.to_owned()])
            .await
            .map_err(|error| remote("removing an item", error))?;
        match answer.deleted.is_empty() {
            false => Ok(()),
            true => Err(DatastoreError::NotFound {
                domain: domain.clone(),
                id: id.to_owned(),
            }),
        }
    }

    /// As the trait says; the feed of the subscription runs on the current tokio
    /// runtime, which this must be called from. The stream ends (and the failure is
    /// logged) when the cluster cannot serve it.
    fn subscribe(&self, domain: &DomainId, query: &Query) -> Result<Subscription, DatastoreError> {
        let filter = QueryFilter::new(query)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|error| DatastoreError::Remote {
                during: "subscribing (outside a tokio runtime)",
                source: Box::new(error),
            })?;
        let subscribers = Subscribers::new(self.subscription_capacity);
        let subscription = subscribers.subscribe(domain, filter);
        let establishing = Establishing::start(&self.establishing);
        let feed = Feed {
            client: self.client.clone(),
            domain: domain.clone(),
            query: query.clone(),
            subscribers,
        };
        runtime.spawn(feed.run(establishing));
        Ok(subscription)
    }
}

/// One subscription's items, from the cluster into its [`Subscribers`] (which filters
/// them, and drops a subscriber that falls behind).
struct Feed {
    client: Client,
    domain: DomainId,
    query: Query,
    subscribers: Subscribers,
}

impl Feed {
    async fn run(self, establishing: Establishing) {
        let subscribed = self.client.subscribe_new(&self.domain, &self.query).await;
        drop(establishing);
        let mut subscription = match subscribed {
            Ok(subscription) => subscription,
            Err(error) => {
                tracing::warn!(domain = %self.domain, error = %domain_proto::ErrorChain(&error), "subscription to the cluster failed; ending it");
                return;
            }
        };
        let mut check = tokio::time::interval(SUBSCRIBER_CHECK);
        loop {
            tokio::select! {
                item = subscription.next() => match item {
                    Some(Ok(item)) => self.subscribers.publish(&self.domain, &item),
                    // One node's stream; the others go on.
                    Some(Err(error)) => tracing::warn!(domain = %self.domain, error = %domain_proto::ErrorChain(&error), "a node's subscription stream ended"),
                    None => break,
                },
                _ = check.tick() => {}
            }
            if self.subscribers.count(&self.domain) == 0 {
                break;
            }
        }
        subscription.unsubscribe().await;
    }
}

/// Counts one subscription as not yet established until dropped.
struct Establishing(Arc<watch::Sender<usize>>);

impl Establishing {
    fn start(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|pending| *pending += 1);
        Self(Arc::clone(count))
    }
}

impl Drop for Establishing {
    fn drop(&mut self) {
        self.0.send_modify(|pending| *pending -= 1);
    }
}

/// The content of an item of a [`RemoteDatastore`], streamed as it is read.
///
/// Its end comes only once the transfer's root check passed; a transfer that failed,
/// or content that does not match its root, ends it with an error instead.
#[derive(Debug)]
pub struct RemoteContent {
    pipe: BufReader<DuplexStream>,
    /// How the transfer ended; taken once the pipe is drained.
    outcome: Option<oneshot::Receiver<Result<Option<Metadata>, ClientError>>>,
}

impl RemoteContent {
    /// How the transfer ended, once the pipe is drained: `Ok` when the content was whole
    /// and matched its root.
    fn poll_outcome(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(outcome) = self.outcome.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let outcome = ready!(Pin::new(outcome).poll(cx));
        self.outcome = None;
        match outcome {
            Ok(Ok(Some(_))) => Poll::Ready(Ok(())),
            Ok(Ok(None)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the item's content ended early: it went while it was read",
            ))),
            Ok(Err(error)) => Poll::Ready(Err(io::Error::other(error))),
            Err(_) => Poll::Ready(Err(io::Error::other(TaskGone))),
        }
    }
}

impl AsyncRead for RemoteContent {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.pipe).poll_read(cx, buf))?;
        if buf.filled().len() > before || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // The pipe ended: the transfer is over, and says how.
        this.poll_outcome(cx)
    }
}

impl AsyncBufRead for RemoteContent {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if ready!(Pin::new(&mut this.pipe).poll_fill_buf(cx))?.is_empty() {
            // The pipe ended: the transfer is over, and says how.
            ready!(this.poll_outcome(cx))?;
        }
        Pin::new(&mut this.pipe).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.pipe).consume(amt);
    }
}

/// The transfer task of a [`RemoteContent`] went away without saying how it ended.
#[derive(Debug, thiserror::Error)]
#[error("the transfer task ended without an outcome")]
struct TaskGone;

fn remote(
    during: &'static str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> DatastoreError {
    DatastoreError::Remote {
        during,
        source: Box::new(error),
    }
}

/// What was wrong with the content given to a put.
#[derive(Debug)]
enum Fault {
    /// It ended after `got` bytes, before the item's size.
    Short { got: u64 },
    /// It holds more bytes than the item's size.
    Long,
    /// Reading it failed.
    Read(io::Error),
}

/// Exactly `size` bytes of `inner`, or an error: the last byte is given out only once
/// the end of `inner` is seen, so that content with more bytes than its size fails
/// before the node has the whole item (and stores nothing). What went wrong is kept in
/// `fault` for the put to report.
struct ExactSize<R> {
    inner: R,
    remaining: u64,
    size: u32,
    /// The last byte, read and held back while the end of `inner` is checked.
    last: Option<u8>,
    fault: Arc<Mutex<Option<Fault>>>,
}

impl<R> ExactSize<R> {
    fn new(inner: R, size: u32) -> Self {
        Self {
            inner,
            remaining: u64::from(size),
            size,
            last: None,
            fault: Arc::new(Mutex::new(None)),
        }
    }

    fn fail(&self, fault: Fault) -> io::Error {
        let error = match &fault {
            Fault::Short { got } => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the content ended after {got} of {} bytes", self.size),
            ),
            Fault::Long => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the content holds more than its {} bytes", self.size),
            ),
            Fault::Read(source) => io::Error::new(source.kind(), source.to_string()),
        };
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = Some(fault);
        error
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ExactSize<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.remaining == 0 || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.remaining > 1 {
            // All but the last byte pass straight through.
            let room = (this.remaining - 1).min(buf.remaining() as u64) as usize;
            let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
            if let Err(source) = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited)) {
                return Poll::Ready(Err(this.fail(Fault::Read(source))));
            }
            let got = limited.filled().len();
            if got == 0 {
                let got = u64::from(this.size) - this.remaining;
                return Poll::Ready(Err(this.fail(Fault::Short { got })));
            }
            buf.advance(got);
            this.remaining -= got as u64;
            return Poll::Ready(Ok(()));
        }
        // The last byte, then one more read, which must find the end.
        loop {
            let mut probe = [0; 2];
            let mut probe = ReadBuf::new(&mut probe);
            if let Err(source) = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut probe)) {
                return Poll::Ready(Err(this.fail(Fault::Read(source))));
            }
            match (this.last, probe.filled()) {
                (None, []) => {
                    let got = u64::from(this.size) - 1;
                    return Poll::Ready(Err(this.fail(Fault::Short { got })));
                }
                (None, [byte]) => this.last = Some(*byte),
                (Some(byte), []) => {
                    buf.put_slice(&[byte]);
                    this.remaining = 0;
                    return Poll::Ready(Ok(()));
                }
                _ => return Poll::Ready(Err(this.fail(Fault::Long))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `content` through an [`ExactSize`] of `size` in reads of at most `step`.
    async fn read_exact_size(content: &[u8], size: u32, step: usize) -> (Vec<u8>, Option<Fault>) {
        let mut exact = ExactSize::new(content, size);
        let mut out = Vec::new();
        let mut buf = vec![0; step];
        loop {
            match exact.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        let fault = exact.fault.lock().unwrap().take();
        (out, fault)
    }

    #[tokio::test]
    async fn content_of_exactly_its_size_passes_whole() {
        for (len, step) in [(1, 1), (2, 1), (7168, 1000), (10_000, 1 << 20)] {
            let content: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (out, fault) = read_exact_size(&content, len as u32, step).await;
            assert_eq!(out, content);
            assert!(fault.is_none(), "{fault:?}");
        }
    }

    #[tokio::test]
    async fn content_longer_than_its_size_never_gives_its_last_byte() {
        for (len, size) in [(2, 1), (3, 2), (10_001, 10_000)] {
            let content = vec![1; len];
            let (out, fault) = read_exact_size(&content, size, 4096).await;
            assert_eq!(out.len(), size as usize - 1);
            assert!(matches!(fault, Some(Fault::Long)), "{fault:?}");
        }
    }

    #[tokio::test]
    async fn content_shorter_than_its_size_says_how_long_it_was() {
        for (len, size) in [(0, 1), (1, 2), (9_999, 10_000)] {
            let content = vec![1; len];
            let (out, fault) = read_exact_size(&content, size, 4096).await;
            assert_eq!(out.len(), len);
            assert!(
                matches!(fault, Some(Fault::Short { got }) if got == len as u64),
                "{fault:?}"
            );
        }
    }
}
