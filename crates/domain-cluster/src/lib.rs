//! The libp2p swarm of a domain cluster (docs/design.md §6).
//!
//! One swarm per process, owned by one event loop that takes commands from
//! cloneable [`ClusterHandle`]s over a bounded channel and answers on oneshot
//! channels (the shape of rust-libp2p's file-sharing example). The swarm speaks
//! TCP + Noise + Yamux, QUIC and WebSocket; identify (`/posemesh/id/1.0.0`),
//! ping, Kademlia (`/posemesh/kad/1.0.0`, server mode on the manager), gossipsub
//! with signed messages and strict validation, relay (server on the manager,
//! client on nodes and clients), DCUtR, AutoNAT, connection limits, and raw
//! streams per protocol id (a bounded-backlog take on libp2p-stream), adapted to Tokio's I/O traits so
//! that handlers generic over `AsyncRead + AsyncWrite` take them as they are.
//!
//! - [`Identity`](identity::Identity): the peer's Ed25519 key, kept in a 0600 file.
//! - [`ClusterConfig`](config::ClusterConfig) and [`Role`](config::Role): what to
//!   start; [`Cluster::start`] starts it.
//! - [`ClusterHandle`]: dial, [`open_stream`](ClusterHandle::open_stream) (through
//!   the manager's relay when a direct dial fails), [`accept`](ClusterHandle::accept),
//!   gossip, task updates, and the client side of `/join/v1`, `/jobs/v1`,
//!   `/monitor/v1`, `/leader/v1` and `/public-key/v1`.
//! - [`Managers`]: the managers a peer knows, and which leads; requests go to the
//!   leader and follow it when it changes.
//! - [`gossip`]: gossip events and task updates (length-delimited `Task`s
//!   without access tokens, on a topic named by the job id); [`peers`]:
//!   connection events.
//! - [`ClusterError`]: every failure, naming its input.
//!
//! Two peers on loopback exchanging a stream:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
//! use domain_cluster::config::{ClusterConfig, Role};
//! use domain_cluster::identity::Identity;
//! use domain_cluster::Cluster;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let (manager, _) = Cluster::start(ClusterConfig::loopback(Identity::generate(), Role::Manager))?;
//! let manager_addr = manager.listen_addrs().await?[0].clone();
//! let mut greetings = manager.accept("/greet/1")?;
//! tokio::spawn(async move {
//!     while let Some((_peer, mut stream)) = greetings.next().await {
//!         let _ = stream.write_all(b"welcome").await;
//!         let _ = stream.shutdown().await;
//!     }
//! });
//!
//! let client_config = ClusterConfig::new(Identity::generate(), Role::Client)
//!     .with_bootstrap(manager_addr);
//! let (client, _) = Cluster::start(client_config)?;
//! let mut stream = client.open_stream(manager.local_peer_id(), "/greet/1").await?;
//! let mut greeting = String::new();
//! stream.read_to_string(&mut greeting).await?;
//! assert_eq!(greeting, "welcome");
//!
//! client.shutdown().await?;
//! manager.shutdown().await?;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(())
//! # }
//! ```

pub mod addr;
mod bans;
mod behaviour;
pub mod config;
pub mod error;
mod event_loop;
pub mod gossip;
mod handle;
pub mod identity;
mod ip_limits;
pub mod managers;
pub mod peers;
mod requests;
pub mod stream;
mod stream_behaviour;

pub use bans::{Banned, MAX_BANS};
pub use error::{ClusterError, IdentityError};
pub use handle::{Cluster, ClusterHandle};
pub use ip_limits::PerIpExceeded;
pub use libp2p::{Multiaddr, PeerId};
pub use managers::Managers;
pub use requests::{
    FrameStream, HolderStream, JobStream, PUBLIC_KEY_LEN, SubmittedJob, TaskStream,
};
pub use stream::{ClusterStream, IncomingStreams, PeerStream};
pub use stream_behaviour::OpenStreamError;
