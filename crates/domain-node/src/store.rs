//! [`NodeDatastore`]: what a node serves its tasks from, picked by its configuration:
//! its own [`LocalDatastore`], or, for a gateway, the [`RemoteDatastore`] of an
//! upstream cluster.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use domain_client::datastore::{RemoteContent, RemoteDatastore};
use domain_datastore::{
    Datastore, DatastoreError, LocalContent, LocalDatastore, ResumePoint, Subscription,
};
use domain_proto::DomainId;
use domain_proto::discovery::{DomainHoldings, Holdings};
use domain_proto::domain_data::{Metadata, Query, UpsertMetadata};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

/// A node's datastore: local files, or another cluster it stands in front of.
#[derive(Debug, Clone)]
pub enum NodeDatastore {
    /// redb metadata and blob files under the node's data folder.
    Local(LocalDatastore),
    /// The cluster of an upstream manager, reached as a client: the node stores nothing
    /// itself. (Boxed: a client is large, and a local store is a pointer.)
    Remote(Box<RemoteDatastore>),
}

impl NodeDatastore {
    /// The local store, unless this node is a gateway.
    #[must_use]
    pub fn local(&self) -> Option<&LocalDatastore> {
        match self {
            Self::Local(store) => Some(store),
            Self::Remote(_) => None,
        }
    }

    /// What this node tells its manager it holds: each domain with items and their
    /// bytes, or, for a gateway, that it serves every domain of its upstream cluster.
    ///
    /// # Errors
    /// Those of [`LocalDatastore::usage`].
    pub async fn holdings(&self) -> Result<Holdings, DatastoreError> {
        match self {
            Self::Local(store) => Ok(Holdings {
                domains: store
                    .usage()
                    .await?
                    .into_iter()
                    .map(|usage| DomainHoldings {
                        domain_id: usage.domain.as_str().to_owned(),
                        items: usage.items,
                        bytes: usage.bytes,
                    })
                    .collect(),
                gateway: None,
            }),
            Self::Remote(_) => Ok(Holdings {
                domains: Vec::new(),
                gateway: Some(true),
            }),
        }
    }
}

/// The content reader of a [`NodeDatastore`].
#[derive(Debug)]
pub enum NodeContent {
    /// From a [`LocalDatastore`].
    Local(LocalContent),
    /// From a [`RemoteDatastore`].
    Remote(RemoteContent),
}

impl AsyncRead for NodeContent {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Local(content) => Pin::new(content).poll_read(cx, buf),
            Self::Remote(content) => Pin::new(content).poll_read(cx, buf),
        }
    }
}

impl AsyncBufRead for NodeContent {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        match self.get_mut() {
            Self::Local(content) => Pin::new(content).poll_fill_buf(cx),
            Self::Remote(content) => Pin::new(content).poll_fill_buf(cx),
        }
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        match self.get_mut() {
            Self::Local(content) => Pin::new(content).consume(amt),
            Self::Remote(content) => Pin::new(content).consume(amt),
        }
    }
}

impl Datastore for NodeDatastore {
    type Content = NodeContent;

    async fn put<R: AsyncRead + Send + Unpin>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        content: R,
    ) -> Result<Metadata, DatastoreError> {
        match self {
            Self::Local(store) => store.put(domain, item, content).await,
            Self::Remote(store) => store.put(domain, item, content).await,
        }
    }

    async fn resume_point(
        &self,
        domain: &DomainId,
        key: &str,
        size: u32,
    ) -> Result<Option<ResumePoint>, DatastoreError> {
        match self {
            Self::Local(store) => store.resume_point(domain, key, size).await,
            Self::Remote(store) => store.resume_point(domain, key, size).await,
        }
    }

    async fn put_resumable<R: AsyncRead + Send + Unpin>(
        &self,
        domain: &DomainId,
        item: UpsertMetadata,
        key: &str,
        from: u64,
        content: R,
    ) -> Result<Metadata, DatastoreError> {
        match self {
            Self::Local(store) => store.put_resumable(domain, item, key, from, content).await,
            Self::Remote(store) => store.put_resumable(domain, item, key, from, content).await,
        }
    }

    async fn get(
        &self,
        domain: &DomainId,
        id: &str,
    ) -> Result<(Metadata, Self::Content), DatastoreError> {
        match self {
            Self::Local(store) => {
                let (metadata, content) = store.get(domain, id).await?;
                Ok((metadata, NodeContent::Local(content)))
            }
            Self::Remote(store) => {
                let (metadata, content) = store.get(domain, id).await?;
                Ok((metadata, NodeContent::Remote(content)))
            }
        }
    }

    async fn get_from(
        &self,
        domain: &DomainId,
        id: &str,
        offset: u64,
    ) -> Result<(Metadata, Self::Content), DatastoreError> {
        match self {
            Self::Local(store) => {
                let (metadata, content) = store.get_from(domain, id, offset).await?;
                Ok((metadata, NodeContent::Local(content)))
            }
            Self::Remote(store) => {
                let (metadata, content) = store.get_from(domain, id, offset).await?;
                Ok((metadata, NodeContent::Remote(content)))
            }
        }
    }

    async fn query(
        &self,
        domain: &DomainId,
        query: &Query,
    ) -> Result<Vec<Metadata>, DatastoreError> {
        match self {
            Self::Local(store) => store.query(domain, query).await,
            Self::Remote(store) => store.query(domain, query).await,
        }
    }

    async fn delete(&self, domain: &DomainId, id: &str) -> Result<(), DatastoreError> {
        match self {
            Self::Local(store) => store.delete(domain, id).await,
            Self::Remote(store) => store.delete(domain, id).await,
        }
    }

    fn subscribe(&self, domain: &DomainId, query: &Query) -> Result<Subscription, DatastoreError> {
        match self {
            Self::Local(store) => store.subscribe(domain, query),
            Self::Remote(store) => store.subscribe(domain, query),
        }
    }
}
