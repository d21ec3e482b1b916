//! A domain store's metadata in PostgreSQL.
//!
//! `domain-datastore`'s [`LocalDatastore`](domain_datastore::LocalDatastore) keeps content
//! as blob files named by their Merkle root and metadata in a
//! [`Catalog`](domain_datastore::Catalog). This crate's [`PostgresCatalog`] is that catalog
//! in a schema of a PostgreSQL database an operator already backs up, replicates and
//! queries: the blob files, the put path and every promise of the store stay the same
//! (blob published, then row committed; repair at open; subscribers see each committed
//! item once; identical content stored once). A node uses it with
//! `domain-node run --metadata postgres://…`.
//!
//! - [`PostgresConfig`]: the database (a URL without a password: the password comes from
//!   a file or the environment), the schema, the readers, the patience for a database that
//!   went away.
//! - [`PostgresCatalog`]: the catalog; [`migrations`] versions its schema.
//! - [`LocalPostgres`]: a throwaway server (`initdb` in a temporary folder, on a loopback
//!   port) for tests and benches.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
//! use std::sync::Arc;
//! use domain_datastore::{LocalDatastore, LocalOptions};
//! use domain_postgres::{PostgresCatalog, PostgresConfig};
//!
//! let config = PostgresConfig::new("postgres://node@db.internal/domains")?
//!     .password(&std::fs::read_to_string("/etc/domain-node/db-password")?)
//!     .schema("node_1")?;
//! let catalog = tokio::task::spawn_blocking(move || PostgresCatalog::connect(config)).await??;
//! let store =
//!     LocalDatastore::open_with_catalog("/var/lib/domain-node/store", LocalOptions::default(), Arc::new(catalog))
//!         .await?;
//! # drop(store);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(())
//! # }
//! ```

mod catalog;
mod config;
mod local;
pub mod migrations;

pub use catalog::{PostgresCatalog, PostgresError};
pub use config::{ConfigError, DEFAULT_PATIENCE, DEFAULT_READERS, DEFAULT_SCHEMA, PostgresConfig};
pub use local::{LocalPostgres, LocalPostgresError};
