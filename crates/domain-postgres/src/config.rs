//! [`PostgresConfig`]: where a catalog's database is and how to reach it.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The schema a catalog uses unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "domain_store";

/// Read connections a catalog keeps at most (queries, item lookups, usage).
pub const DEFAULT_READERS: u32 = 4;

/// How long a catalog waits for its database to come back (a restart, a failover) before
/// a commit fails.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(15);

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The connection string does not parse.
    #[error("not a PostgreSQL connection string (postgres://user@host:port/database)")]
    Url(#[source] postgres::Error),
    /// The connection string carries a password, which would show in process lists and
    /// shell histories.
    #[error(
        "the connection string carries a password: give it in a file or the environment instead"
    )]
    PasswordInUrl,
    /// The CA file cannot be read, or holds no PEM certificate.
    #[error("cannot use {path} as the database's CA certificates", path = path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The TLS client cannot be set up.
    #[error("cannot set up TLS to the database")]
    Tls(#[source] rustls::Error),
    /// The schema name is not a plain lowercase identifier.
    #[error(
        "schema {0:?} is not a plain identifier (a-z, 0-9 and _, not starting with a digit, at most 63)"
    )]
    Schema(String),
}

/// Where a [`PostgresCatalog`](crate::PostgresCatalog) keeps its rows.
///
/// One schema holds one store's catalog: several nodes may share a database, each with a
/// schema of its own. The password never comes from the connection string (see
/// [`ConfigError::PasswordInUrl`]); set [`password`](Self::password) from a file or the
/// environment.
///
/// TLS follows the URL's `sslmode`: `disable`, `prefer` (the default: TLS when the server
/// offers it) or `require`. The server's certificate is always verified, against
/// Mozilla's roots or the [`ca_file`](Self::ca_file)'s certificates, with the host name
/// of the URL (stricter than libpq's `require`, which checks nothing).
#[derive(Clone)]
pub struct PostgresConfig {
    connection: postgres::Config,
    schema: String,
    readers: u32,
    patience: Duration,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("hosts", &self.connection.get_hosts())
            .field("ports", &self.connection.get_ports())
            .field("user", &self.connection.get_user())
            .field("dbname", &self.connection.get_dbname())
            .field("password", &self.connection.get_password().map(|_| "…"))
            .field("schema", &self.schema)
            .field("readers", &self.readers)
            .field("patience", &self.patience)
            .field("ssl_mode", &self.connection.get_ssl_mode())
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// The database named by `url` (`postgres://user@host:port/database`, or libpq's
    /// `host=… user=…` form), in schema [`DEFAULT_SCHEMA`].
    ///
    /// # Errors
    /// [`ConfigError::Url`], or [`ConfigError::PasswordInUrl`].
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let mut connection = postgres::Config::from_str(url).map_err(ConfigError::Url)?;
        if connection.get_password().is_some() {
            return Err(ConfigError::PasswordInUrl);
        }
        connection
            .application_name("domain-node")
            .connect_timeout(Duration::from_secs(5));
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Ok(Self {
            connection,
            schema: DEFAULT_SCHEMA.to_owned(),
            readers: DEFAULT_READERS,
            patience: DEFAULT_PATIENCE,
            tls: tls_with(roots)?,
        })
    }

    /// Trusts the PEM certificates in `path`, and only them, for the server's certificate
    /// (a private CA, or the server's own self-signed certificate).
    ///
    /// # Errors
    /// [`ConfigError::CaFile`] when the file cannot be read or holds no certificate.
    pub fn ca_file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| ConfigError::CaFile {
            path: path.to_owned(),
            source,
        };
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| failed(Box::new(e)))?
            .collect::<Result<_, _>>()
            .map_err(|e| failed(Box::new(e)))?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates {
            roots.add(certificate).map_err(|e| failed(Box::new(e)))?;
        }
        if roots.is_empty() {
            return Err(failed("no certificate in it".into()));
        }
        self.tls = tls_with(roots)?;
        Ok(self)
    }

    /// Uses `password` to log in.
    #[must_use]
    pub fn password(mut self, password: &str) -> Self {
        self.connection
            .password(password.trim_end_matches(['\r', '\n']));
        self
    }

    /// Keeps the catalog in `schema` (created when missing).
    ///
    /// # Errors
    /// [`ConfigError::Schema`] unless it is a plain lowercase identifier.
    pub fn schema(mut self, schema: &str) -> Result<Self, ConfigError> {
        let plain = schema.len() <= 63
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            return Err(ConfigError::Schema(schema.to_owned()));
        }
        self.schema = schema.to_owned();
        Ok(self)
    }

    /// Keeps at most `readers` read connections (at least 1).
    #[must_use]
    pub fn readers(mut self, readers: u32) -> Self {
        self.readers = readers.max(1);
        self
    }

    /// Waits up to `patience` for the database to come back before a commit fails.
    #[must_use]
    pub fn patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// The schema.
    #[must_use]
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    pub(crate) fn connection(&self) -> &postgres::Config {
        &self.connection
    }

    pub(crate) fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    pub(crate) fn reader_count(&self) -> u32 {
        self.readers
    }

    pub(crate) fn wait_limit(&self) -> Duration {
        self.patience
    }
}

/// A TLS connector trusting `roots`, with ring (the provider libp2p uses) named here rather
/// than installed process-wide.
fn tls_with(roots: rustls::RootCertStore) -> Result<MakeRustlsConnect, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ConfigError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_connection_string_is_refused() {
        assert!(matches!(
            PostgresConfig::new("postgres://node:secret@db.example:5432/meta"),
            Err(ConfigError::PasswordInUrl)
        ));
        assert!(matches!(
            PostgresConfig::new("host=db.example user=node password=secret"),
            Err(ConfigError::PasswordInUrl)
        ));
        assert!(PostgresConfig::new("postgres://node@db.example:5432/meta").is_ok());
    }

    #[test]
    fn the_password_is_never_printed() {
        let config = PostgresConfig::new("postgres://node@db.example/meta")
            .unwrap_or_else(|e| panic!("{e}"))
            .password("hunter2\n");
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(config.connection().get_password(), Some(&b"hunter2"[..]));
    }

    #[test]
    fn a_schema_must_be_a_plain_identifier() {
        let config = || PostgresConfig::new("postgres://node@db.example/meta");
        for bad in ["", "1abc", "Store", "a-b", "a;drop", &"a".repeat(64)] {
            assert!(
                config().and_then(|c| c.schema(bad)).is_err(),
                "{bad:?} accepted"
            );
        }
        for good in ["store", "_s1", "node_7"] {
            assert!(
                config().and_then(|c| c.schema(good)).is_ok(),
                "{good:?} refused"
            );
        }
    }
}
