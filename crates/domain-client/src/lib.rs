//! Client of a domain cluster: the library behind the `domain` command (`domain-cli`),
//! the gateway node and any program that keeps its data in domains.
//!
//! - [`client`]: a [`Client`](client::Client) is a peer of the cluster that uploads,
//!   downloads, lists, removes and watches items: a job on the manager, then task
//!   streams to the nodes it assigns, every item's Merkle root compared on both ends; or
//!   straight to a node with a token obtained elsewhere ([`Direct`](client::Direct)).
//! - [`datastore`]: [`RemoteDatastore`](datastore::RemoteDatastore), the cluster behind
//!   the same `Datastore` trait as a local folder.
//!
//! ```no_run
//! use domain_client::client::{Client, ClientConfig, Upload};
//! use domain_cluster::identity::Identity;
//! use domain_proto::DomainId;
//!
//! # async fn example(manager: domain_cluster::Multiaddr) -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::start(Identity::generate(), Some(manager), ClientConfig::default()).await?;
//! let domain = DomainId::new("lab")?;
//! let stored = client
//!     .upload(&domain, &[Upload::bytes(b"scan".to_vec(), "scan", "ply")])
//!     .await?;
//! println!("stored {} with root {:?}", stored[0].id, stored[0].hash);
//! client.shutdown().await?;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod datastore;
