//! Client of a domain cluster: the library behind the `domain` command.
//!
//! - [`cli`]: the `domain` command line, one module per command
//!   (`domain hash` prints the Merkle root a domain stores a file under).
//!
//! ```
//! use domain_client::cli::hash::root_of_reader;
//! use domain_datastore::root_of;
//!
//! // What `domain hash` prints for a file holding "scan".
//! let root = root_of_reader(&b"scan"[..])?;
//! assert_eq!(root, root_of(b"scan"));
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod cli;
