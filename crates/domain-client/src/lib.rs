//! Client of a domain cluster: the library behind the `domain` command.
//!
//! - [`client`]: [`Client`](client::Client) uploads and downloads through a cluster: a job
//!   on the manager, then a task stream to the node it assigns, roots compared on both
//!   ends; or straight to a node with a token obtained elsewhere.
//! - [`cli`]: the `domain` command line, one module per command
//!   (`domain hash` prints the Merkle root a domain stores a file under; `domain upload`
//!   and `domain download` use [`client`]).
//!
//! ```
//! use domain_client::cli::hash::root_of_reader;
//! use domain_merkle::root_of;
//!
//! // What `domain hash` prints for a file holding "scan".
//! let root = root_of_reader(&b"scan"[..])?;
//! assert_eq!(root, root_of(b"scan"));
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod cli;
pub mod client;
pub mod datastore;
