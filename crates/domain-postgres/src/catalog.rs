//! [`PostgresCatalog`]: the [`Catalog`] of a local store in a PostgreSQL schema.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use domain_datastore::catalog::{BlobKey, ItemKey, Reconciliation, Row, check_row};
use domain_datastore::{Catalog, DatastoreError, DomainUsage, Plan, QueryFilter};
use domain_proto::DomainId;
use domain_proto::domain_data::Metadata;
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Statement};
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::PostgresConfig;
use crate::migrations;

/// The first pause before connecting again to a database that went away.
const FIRST_RECONNECT: Duration = Duration::from_millis(50);

/// The longest pause between tries to connect again.
const MAX_RECONNECT: Duration = Duration::from_secs(1);

/// How often a writer asks again for a lock another session holds.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// Why the PostgreSQL catalog failed; a [`DatastoreError::Db`] carries it.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The database cannot be reached, or refused the login.
    #[error("cannot connect to the metadata database")]
    Connect(#[source] postgres::Error),
    /// The database did not come back within the configured patience.
    #[error("the metadata database did not come back within {waited:?}")]
    Unavailable {
        /// How long the catalog waited.
        waited: Duration,
        /// The last connection error.
        #[source]
        source: postgres::Error,
    },
    /// Another process writes to this schema: a store's catalog has one writer.
    #[error(
        "another process holds the catalog in schema {schema:?} (a second node on the same schema?)"
    )]
    Locked {
        /// The schema.
        schema: String,
    },
    /// The schema was migrated by a newer program than this one.
    #[error(
        "the catalog in schema {schema:?} is at version {found}, newer than this program's {known}"
    )]
    Newer {
        /// The schema.
        schema: String,
        /// Its version.
        found: i32,
        /// The latest version this program knows.
        known: i32,
    },
    /// A migration failed; its transaction was rolled back.
    #[error("migration {version} of schema {schema:?} failed")]
    Migrate {
        /// The schema.
        schema: String,
        /// The migration.
        version: i32,
        /// The database's error.
        #[source]
        source: postgres::Error,
    },
    /// A statement failed.
    #[error("metadata statement failed")]
    Statement(#[source] postgres::Error),
    /// No read connection could be had in time.
    #[error("no connection to the metadata database for a read")]
    Pool(#[source] r2d2::Error),
}

fn db(error: PostgresError) -> DatastoreError {
    DatastoreError::Db(Arc::new(error))
}

fn statement(error: postgres::Error) -> DatastoreError {
    db(PostgresError::Statement(error))
}

/// Whether `error` means the connection is gone (the server restarted, the network
/// dropped), so that the statement may be tried again on a new one.
fn connection_lost(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
        ]
        .contains(code),
        // No SQL state: the socket failed (and not, say, a certificate refused by TLS,
        // which waiting does not mend).
        None => std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                use std::io::ErrorKind::{
                    BrokenPipe, ConnectionAborted, ConnectionRefused, ConnectionReset,
                    NotConnected, TimedOut, UnexpectedEof,
                };
                matches!(
                    io.kind(),
                    ConnectionRefused
                        | ConnectionReset
                        | ConnectionAborted
                        | NotConnected
                        | BrokenPipe
                        | TimedOut
                        | UnexpectedEof
                )
            }),
    }
}

/// The statements of one schema.
#[derive(Debug)]
struct Sql {
    schema: String,
    delete_items: String,
    insert_items: String,
    add_blob_users: String,
    drop_unused_blobs: String,
    add_usage: String,
    mark: String,
    fetch: String,
    blobs_used: String,
    item: String,
    usage: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let unnest_keys = "SELECT * FROM unnest($1::text[], $2::text[])";
        Self {
            schema: schema.to_owned(),
            delete_items: format!(
                "DELETE FROM {schema}.items WHERE (domain, id) IN ({unnest_keys})"
            ),
            insert_items: format!(
                "INSERT INTO {schema}.items (domain, id, name, data_type, size, hash, properties) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::int8[], $6::text[], $7::jsonb[])"
            ),
            add_blob_users: format!(
                "INSERT INTO {schema}.blobs AS b (domain, root, users) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) \
                 ON CONFLICT (domain, root) DO UPDATE SET users = b.users + EXCLUDED.users"
            ),
            drop_unused_blobs: format!(
                "DELETE FROM {schema}.blobs WHERE users <= 0 AND (domain, root) IN ({unnest_keys})"
            ),
            add_usage: format!(
                "INSERT INTO {schema}.domains AS d (domain, items, bytes) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[]) \
                 ON CONFLICT (domain) DO UPDATE \
                 SET items = d.items + EXCLUDED.items, bytes = d.bytes + EXCLUDED.bytes"
            ),
            mark: format!("UPDATE {schema}.writer SET last_commit = $1"),
            fetch: format!(
                "SELECT domain, id, name, data_type, size, hash, properties FROM {schema}.items \
                 WHERE (domain, id) IN ({unnest_keys})"
            ),
            blobs_used: format!(
                "SELECT domain, root FROM {schema}.blobs WHERE users > 0 AND (domain, root) IN ({unnest_keys})"
            ),
            item: format!(
                "SELECT domain, id, name, data_type, size, hash, properties FROM {schema}.items \
                 WHERE domain = $1 AND id = $2"
            ),
            usage: format!(
                "SELECT domain, items, bytes FROM {schema}.domains WHERE items > 0 \
                 ORDER BY domain COLLATE \"C\""
            ),
        }
    }
}

/// The writer's connection: it holds the schema's advisory lock, and its statements are
/// prepared once.
struct Writer {
    client: Client,
    delete_items: Statement,
    insert_items: Statement,
    add_blob_users: Statement,
    drop_unused_blobs: Statement,
    add_usage: Statement,
    mark: Statement,
    fetch: Statement,
    blobs_used: Statement,
}

impl Writer {
    fn prepare(mut client: Client, sql: &Sql) -> Result<Self, postgres::Error> {
        Ok(Self {
            delete_items: client.prepare(&sql.delete_items)?,
            insert_items: client.prepare(&sql.insert_items)?,
            add_blob_users: client.prepare(&sql.add_blob_users)?,
            drop_unused_blobs: client.prepare(&sql.drop_unused_blobs)?,
            add_usage: client.prepare(&sql.add_usage)?,
            mark: client.prepare(&sql.mark)?,
            fetch: client.prepare(&sql.fetch)?,
            blobs_used: client.prepare(&sql.blobs_used)?,
            client,
        })
    }

    /// Applies `plan` and records `marker` as the last commit, in one transaction.
    fn apply(&mut self, plan: &Plan, marker: &str) -> Result<(), postgres::Error> {
        let mut txn = self.client.transaction()?;
        if !plan.removed.is_empty() {
            let (domains, ids): (Vec<&str>, Vec<std::borrow::Cow<'_, str>>) = plan
                .removed
                .iter()
                .map(|(domain, item)| (domain.as_str(), escape(&item.id)))
                .unzip();
            txn.execute(&self.delete_items, &[&domains, &ids])?;
        }
        if !plan.written.is_empty() {
            let columns = Columns::of(&plan.written);
            txn.execute(
                &self.insert_items,
                &[
                    &columns.domains,
                    &columns.ids,
                    &columns.names,
                    &columns.types,
                    &columns.sizes,
                    &columns.hashes,
                    &columns.properties,
                ],
            )?;
        }
        if !plan.blob_users.is_empty() {
            let mut domains = Vec::with_capacity(plan.blob_users.len());
            let mut roots = Vec::with_capacity(plan.blob_users.len());
            let mut deltas = Vec::with_capacity(plan.blob_users.len());
            for ((domain, root), delta) in &plan.blob_users {
                domains.push(domain.as_str());
                roots.push(root.as_str());
                deltas.push(*delta);
            }
            txn.execute(&self.add_blob_users, &[&domains, &roots, &deltas])?;
            txn.execute(&self.drop_unused_blobs, &[&domains, &roots])?;
        }
        let usage = plan.usage_deltas();
        if !usage.is_empty() {
            let domains: Vec<&str> = usage.keys().map(DomainId::as_str).collect();
            let items: Vec<i64> = usage.values().map(|(items, _)| *items).collect();
            let bytes: Vec<i64> = usage.values().map(|(_, bytes)| *bytes).collect();
            txn.execute(&self.add_usage, &[&domains, &items, &bytes])?;
        }
        txn.execute(&self.mark, &[&marker])?;
        txn.commit()
    }
}

/// The columns of rows to insert, as arrays for `unnest`.
struct Columns<'a> {
    domains: Vec<&'a str>,
    ids: Vec<std::borrow::Cow<'a, str>>,
    names: Vec<std::borrow::Cow<'a, str>>,
    types: Vec<std::borrow::Cow<'a, str>>,
    sizes: Vec<i64>,
    hashes: Vec<&'a str>,
    properties: Vec<serde_json::Value>,
}

impl<'a> Columns<'a> {
    fn of(rows: &'a [(DomainId, Metadata)]) -> Self {
        let mut columns = Self {
            domains: Vec::with_capacity(rows.len()),
            ids: Vec::with_capacity(rows.len()),
            names: Vec::with_capacity(rows.len()),
            types: Vec::with_capacity(rows.len()),
            sizes: Vec::with_capacity(rows.len()),
            hashes: Vec::with_capacity(rows.len()),
            properties: Vec::with_capacity(rows.len()),
        };
        for (domain, item) in rows {
            columns.domains.push(domain.as_str());
            columns.ids.push(escape(&item.id));
            columns.names.push(escape(&item.name));
            columns.types.push(escape(&item.data_type));
            columns.sizes.push(i64::from(item.size));
            columns
                .hashes
                .push(item.hash.as_deref().unwrap_or_default());
            columns
                .properties
                .push(properties_json(item.properties.iter()));
        }
        columns
    }
}

/// Properties as a JSON object of strings, escaped ([`escape`]).
fn properties_json<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> serde_json::Value {
    serde_json::Value::Object(
        pairs
            .map(|(key, value)| {
                (
                    escape(key).into_owned(),
                    serde_json::Value::String(escape(value).into_owned()),
                )
            })
            .collect(),
    )
}

/// The escape character of [`escape`]: a control character no name is expected to hold.
const ESCAPE: char = '\u{1}';

/// Text as PostgreSQL can keep it: `text` and `jsonb` cannot hold NUL, which a name, an
/// id or a property may (they are any UTF-8). NUL becomes `\u{1}0` and `\u{1}` becomes
/// `\u{1}\u{1}`; everything else, so every name a person would type, is kept as is, and
/// equal texts stay equal (the database compares the escaped forms).
fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\0', ESCAPE]) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        match c {
            '\0' => out.extend([ESCAPE, '0']),
            ESCAPE => out.extend([ESCAPE, ESCAPE]),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The text [`escape`] was given, or why `stored` is not an escaped text.
fn unescape(stored: String) -> Result<String, String> {
    if !stored.contains(ESCAPE) {
        return Ok(stored);
    }
    let mut out = String::with_capacity(stored.len());
    let mut chars = stored.chars();
    while let Some(c) = chars.next() {
        if c != ESCAPE {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some(ESCAPE) => out.push(ESCAPE),
            other => return Err(format!("bad escape {other:?} in {stored:?}")),
        }
    }
    Ok(out)
}

/// A stored row as an item: its domain, id, and the item or why it is unusable.
fn row_item(row: &postgres::Row) -> Result<(String, String, Row), postgres::Error> {
    let domain: String = row.try_get("domain")?;
    let stored_id: String = row.try_get("id")?;
    let size: i64 = row.try_get("size")?;
    let properties: serde_json::Value = row.try_get("properties")?;
    let name: String = row.try_get("name")?;
    let data_type: String = row.try_get("data_type")?;
    let hash: String = row.try_get("hash")?;
    let id = match unescape(stored_id.clone()) {
        Ok(id) => id,
        Err(reason) => return Ok((domain, stored_id, Err(reason))),
    };
    let item = (|| {
        let size = u32::try_from(size).map_err(|_| format!("size {size} is out of range"))?;
        let serde_json::Value::Object(map) = properties else {
            return Err("properties are not a JSON object".to_owned());
        };
        let mut pairs = BTreeMap::new();
        for (key, value) in map {
            let serde_json::Value::String(value) = value else {
                return Err(format!("property {key:?} is not a string"));
            };
            pairs.insert(unescape(key)?, unescape(value)?);
        }
        Ok(Metadata {
            name: unescape(name)?,
            data_type: unescape(data_type)?,
            size,
            id: id.clone(),
            hash: Some(hash),
            properties: pairs.into_iter().collect(),
            content_offset: None,
        })
    })();
    let checked = item.and_then(|item| check_row(&id, item));
    Ok((domain, id, checked))
}

fn usable(domain: &DomainId, id: String, row: Row) -> Result<Metadata, DatastoreError> {
    row.map_err(|reason| DatastoreError::Corrupt {
        domain: domain.clone(),
        id,
        reason,
    })
}

/// Keys as two arrays for `unnest`, the second escaped ([`escape`]).
fn key_arrays<'a>(
    keys: impl Iterator<Item = &'a (DomainId, String)>,
) -> (Vec<&'a str>, Vec<std::borrow::Cow<'a, str>>) {
    keys.map(|(domain, id)| (domain.as_str(), escape(id)))
        .unzip()
}

/// A [`Catalog`] in one schema of a PostgreSQL database, for
/// [`LocalDatastore::open_with_catalog`](domain_datastore::LocalDatastore::open_with_catalog):
/// blobs stay files in the store's folder, rows go to the database.
///
/// Items are a table with their properties as JSONB (a GIN index answers property
/// queries), indexed by name and data type; blob users and per-domain counters are kept in
/// the same transaction as the items. One writer connection holds the schema's advisory
/// lock, so a second process on the same schema is refused; it applies each commit's plan
/// in one transaction of a few set-based statements, whatever the number of items. When
/// the database goes away (a restart, a failover), the writer connects again for up to the
/// configured patience; a commit whose connection dropped during `COMMIT` checks the
/// marker it wrote to learn whether it committed, and otherwise runs again, so a put either
/// succeeds or fails cleanly. Reads use a small pool.
pub struct PostgresCatalog {
    config: PostgresConfig,
    sql: Sql,
    writer: Mutex<Option<Writer>>,
    readers: r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>,
}

impl std::fmt::Debug for PostgresCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCatalog")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PostgresCatalog {
    /// Connects to the database of `config`, takes the schema's lock and brings the schema
    /// to the latest version (creating it when missing). Blocks; waits for the database
    /// for up to the configured patience.
    ///
    /// # Errors
    /// [`DatastoreError::Db`] with a [`PostgresError`]: unreachable, locked by another
    /// process, a schema newer than this program, a failed migration.
    pub fn connect(config: PostgresConfig) -> Result<Self, DatastoreError> {
        let sql = Sql::new(config.schema_name());
        let mut client = connect_patiently(&config)?;
        take_lock(&mut client, &config)?;
        migrations::migrate(&mut client, config.schema_name()).map_err(db)?;
        let writer = Writer::prepare(client, &sql).map_err(statement)?;
        let manager = PostgresConnectionManager::new(config.connection().clone(), config.tls());
        let readers = r2d2::Pool::builder()
            .max_size(config.reader_count())
            .min_idle(Some(0))
            .connection_timeout(config.wait_limit().max(Duration::from_secs(1)))
            .build_unchecked(manager);
        Ok(Self {
            config,
            sql,
            writer: Mutex::new(Some(writer)),
            readers,
        })
    }

    /// The writer, connected again (and locked again) if its connection went away.
    fn writer(&self) -> Result<MutexGuard<'_, Option<Writer>>, DatastoreError> {
        let mut guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if guard
            .as_ref()
            .is_none_or(|writer| writer.client.is_closed())
        {
            *guard = None;
            let mut client = connect_patiently(&self.config)?;
            take_lock(&mut client, &self.config)?;
            *guard = Some(Writer::prepare(client, &self.sql).map_err(statement)?);
            tracing::info!(
                schema = self.sql.schema,
                "connected to the metadata database again"
            );
        }
        Ok(guard)
    }

    /// Runs `body` on the writer; a connection that went away is dropped, and `body` runs
    /// once more on a new one.
    fn with_writer<T>(
        &self,
        mut body: impl FnMut(&mut Writer) -> Result<T, postgres::Error>,
    ) -> Result<T, DatastoreError> {
        let mut tried = false;
        loop {
            let mut guard = self.writer()?;
            let Some(writer) = guard.as_mut() else {
                continue;
            };
            match body(writer) {
                Ok(value) => return Ok(value),
                Err(error) if connection_lost(&error) => {
                    *guard = None;
                    if tried {
                        return Err(statement(error));
                    }
                    tried = true;
                }
                Err(error) => return Err(statement(error)),
            }
        }
    }

    fn reader(
        &self,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>, DatastoreError>
    {
        self.readers.get().map_err(|e| db(PostgresError::Pool(e)))
    }
}

/// Connects, trying again after a pause that doubles up to a second, for up to the
/// configured patience.
fn connect_patiently(config: &PostgresConfig) -> Result<Client, DatastoreError> {
    let start = Instant::now();
    let mut pause = FIRST_RECONNECT;
    loop {
        match config.connection().connect(config.tls()) {
            Ok(client) => return Ok(client),
            Err(error)
                if start.elapsed() + pause < config.wait_limit() && connection_lost(&error) =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_RECONNECT);
            }
            Err(error) if connection_lost(&error) => {
                return Err(db(PostgresError::Unavailable {
                    waited: start.elapsed(),
                    source: error,
                }));
            }
            Err(error) => return Err(db(PostgresError::Connect(error))),
        }
    }
}

/// Takes the schema's advisory lock for the session of `client`, waiting up to the
/// configured patience: the session of a writer that just died holds it until the server
/// notices its connection is gone.
fn take_lock(client: &mut Client, config: &PostgresConfig) -> Result<(), DatastoreError> {
    let schema = config.schema_name();
    let key = format!("domain-store:{schema}");
    let start = Instant::now();
    loop {
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            )
            .map_err(statement)?;
        if row.try_get::<_, bool>(0).map_err(statement)? {
            return Ok(());
        }
        if start.elapsed() >= config.wait_limit() {
            return Err(db(PostgresError::Locked {
                schema: schema.to_owned(),
            }));
        }
        std::thread::sleep(LOCK_POLL);
    }
}

impl Catalog for PostgresCatalog {
    fn kind(&self) -> String {
        format!("postgres schema {}", self.sql.schema)
    }

    fn fetch(&self, keys: &BTreeSet<ItemKey>) -> Result<HashMap<ItemKey, Row>, DatastoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let (domains, ids) = key_arrays(keys.iter());
        let rows =
            self.with_writer(|writer| writer.client.query(&writer.fetch, &[&domains, &ids]))?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let (domain, id, item) = row_item(row).map_err(statement)?;
            if let Ok(domain) = DomainId::new(&domain) {
                found.insert((domain, id), item);
            }
        }
        Ok(found)
    }

    fn apply(&self, plan: &Plan) -> Result<Vec<BlobKey>, DatastoreError> {
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        // Every blob that lost a user may have none left: the store checks each.
        let maybe_unused: Vec<BlobKey> = plan
            .blob_users
            .iter()
            .filter(|(_, delta)| **delta < 0)
            .map(|(key, _)| key.clone())
            .collect();
        let marker = uuid::Uuid::new_v4().to_string();
        let mut tried = false;
        loop {
            let mut guard = self.writer()?;
            let Some(writer) = guard.as_mut() else {
                continue;
            };
            match writer.apply(plan, &marker) {
                Ok(()) => return Ok(maybe_unused),
                Err(error) if connection_lost(&error) && !tried => {
                    *guard = None;
                    drop(guard);
                    tried = true;
                    // The connection went during the transaction, perhaps during COMMIT:
                    // the marker says whether it landed. Nobody else writes here.
                    let committed = self.with_writer(|writer| {
                        let row = writer.client.query_one(
                            &format!("SELECT last_commit FROM {}.writer", self.sql.schema),
                            &[],
                        )?;
                        Ok(row.try_get::<_, Option<String>>(0)?.as_deref() == Some(&marker))
                    })?;
                    if committed {
                        return Ok(maybe_unused);
                    }
                    tracing::info!(
                        schema = self.sql.schema,
                        "a commit was cut by the metadata database going away; committing again"
                    );
                }
                Err(error) => {
                    if connection_lost(&error) {
                        *guard = None;
                    }
                    return Err(statement(error));
                }
            }
        }
    }

    fn blobs_used(&self, blobs: &BTreeSet<BlobKey>) -> Result<BTreeSet<BlobKey>, DatastoreError> {
        if blobs.is_empty() {
            return Ok(BTreeSet::new());
        }
        let (domains, roots) = key_arrays(blobs.iter());
        let rows = self
            .with_writer(|writer| writer.client.query(&writer.blobs_used, &[&domains, &roots]))?;
        let mut used = BTreeSet::new();
        for row in &rows {
            let domain: String = row.try_get(0).map_err(statement)?;
            let root: String = row.try_get(1).map_err(statement)?;
            if let Ok(domain) = DomainId::new(&domain) {
                used.insert((domain, root));
            }
        }
        Ok(used)
    }

    fn item(&self, domain: &DomainId, id: &str) -> Result<Option<Metadata>, DatastoreError> {
        let mut reader = self.reader()?;
        let rows = reader
            .query(&self.sql.item, &[&domain.as_str(), &escape(id)])
            .map_err(statement)?;
        match rows.first() {
            None => Ok(None),
            Some(row) => {
                let (_, id, item) = row_item(row).map_err(statement)?;
                usable(domain, id, item).map(Some)
            }
        }
    }

    fn query(
        &self,
        domain: &DomainId,
        filter: &QueryFilter,
    ) -> Result<Vec<Metadata>, DatastoreError> {
        let mut sql = format!(
            "SELECT domain, id, name, data_type, size, hash, properties FROM {}.items WHERE domain = $1",
            self.sql.schema
        );
        let domain_text = domain.as_str();
        let properties = properties_json(filter.properties().iter().map(|(k, v)| (k, v)));
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&domain_text];
        // Exact criteria go to the database, where indexes answer them; the regular
        // expressions (Rust's syntax, not PostgreSQL's) are matched here, on what it sends.
        let escaped = |texts: &[String]| -> Vec<String> {
            texts.iter().map(|text| escape(text).into_owned()).collect()
        };
        let ids = escaped(filter.ids());
        let names = escaped(filter.names());
        let types = escaped(filter.data_types());
        if !ids.is_empty() {
            params.push(&ids);
            sql.push_str(&format!(" AND id = ANY(${})", params.len()));
        }
        if !names.is_empty() {
            params.push(&names);
            sql.push_str(&format!(" AND name = ANY(${})", params.len()));
        }
        if !types.is_empty() {
            params.push(&types);
            sql.push_str(&format!(" AND data_type = ANY(${})", params.len()));
        }
        if !filter.properties().is_empty() {
            params.push(&properties);
            sql.push_str(&format!(" AND properties @> ${}", params.len()));
        }
        sql.push_str(" ORDER BY id COLLATE \"C\"");
        let mut reader = self.reader()?;
        let rows = reader.query(&sql, &params).map_err(statement)?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let (_, id, item) = row_item(row).map_err(statement)?;
            let item = usable(domain, id, item)?;
            if filter.matches(&item) {
                found.push(item);
            }
        }
        // Escaping moves NUL and U+0001 in the database's order: sorted again here.
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    fn usage(&self) -> Result<Vec<DomainUsage>, DatastoreError> {
        let mut reader = self.reader()?;
        let rows = reader.query(&self.sql.usage, &[]).map_err(statement)?;
        let mut usage = Vec::with_capacity(rows.len());
        for row in &rows {
            let domain: String = row.try_get(0).map_err(statement)?;
            let items: i64 = row.try_get(1).map_err(statement)?;
            let bytes: i64 = row.try_get(2).map_err(statement)?;
            let Ok(domain) = DomainId::new(&domain) else {
                tracing::warn!(domain, "metadata names an invalid domain");
                continue;
            };
            usage.push(DomainUsage {
                domain,
                items: u64::try_from(items).unwrap_or(0),
                bytes: u64::try_from(bytes).unwrap_or(0),
            });
        }
        Ok(usage)
    }

    fn domains(&self) -> Result<BTreeSet<DomainId>, DatastoreError> {
        let sql = format!(
            "SELECT domain FROM {schema}.domains UNION SELECT DISTINCT domain FROM {schema}.items",
            schema = self.sql.schema
        );
        let rows = self.with_writer(|writer| writer.client.query(&sql, &[]))?;
        let mut domains = BTreeSet::new();
        for row in &rows {
            let name: String = row.try_get(0).map_err(statement)?;
            match DomainId::new(&name) {
                Ok(domain) => {
                    domains.insert(domain);
                }
                Err(e) => {
                    tracing::warn!(name, error = %domain_proto::ErrorChain(&e), "metadata names an invalid domain");
                }
            }
        }
        Ok(domains)
    }

    fn reconcile(
        &self,
        domain: &DomainId,
        files: &BTreeMap<String, u64>,
    ) -> Result<Vec<String>, DatastoreError> {
        let schema = &self.sql.schema;
        let rows = self.with_writer(|writer| {
            writer.client.query(
                &format!(
                    "SELECT domain, id, name, data_type, size, hash, properties FROM {schema}.items WHERE domain = $1"
                ),
                &[&domain.as_str()],
            )
        })?;
        let mut decided_rows = Vec::with_capacity(rows.len());
        for row in &rows {
            let (_, id, item) = row_item(row).map_err(statement)?;
            decided_rows.push((id, item));
        }
        let decided = Reconciliation::new(decided_rows, files);
        let removed: Vec<std::borrow::Cow<'_, str>> =
            decided.removed.iter().map(|(id, _)| escape(id)).collect();
        let roots: Vec<&str> = decided.blob_users.keys().map(String::as_str).collect();
        let users: Vec<i64> = decided
            .blob_users
            .values()
            .map(|count| i64::try_from(*count).unwrap_or(i64::MAX))
            .collect();
        self.with_writer(|writer| {
            let mut txn = writer.client.transaction()?;
            txn.execute(
                &format!("DELETE FROM {schema}.items WHERE domain = $1 AND id = ANY($2)"),
                &[&domain.as_str(), &removed],
            )?;
            txn.execute(
                &format!("DELETE FROM {schema}.blobs WHERE domain = $1"),
                &[&domain.as_str()],
            )?;
            txn.execute(
                &format!(
                    "INSERT INTO {schema}.blobs (domain, root, users) \
                     SELECT $1::text, * FROM unnest($2::text[], $3::int8[])"
                ),
                &[&domain.as_str(), &roots, &users],
            )?;
            // The counters, recounted from the items that stay.
            txn.execute(
                &format!(
                    "INSERT INTO {schema}.domains AS d (domain, items, bytes) \
                     SELECT $1::text, count(*), coalesce(sum(size), 0)::int8 FROM {schema}.items WHERE domain = $1 \
                     ON CONFLICT (domain) DO UPDATE SET items = EXCLUDED.items, bytes = EXCLUDED.bytes"
                ),
                &[&domain.as_str()],
            )?;
            txn.commit()
        })?;
        Ok(decided.removed.into_iter().map(|(id, _)| id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn escaped_text_has_no_nul_and_comes_back_whole(text in "\\PC*|[\\x00\\x01a]{0,8}") {
            let escaped = escape(&text);
            prop_assert!(!escaped.contains('\0'));
            prop_assert_eq!(unescape(escaped.into_owned()), Ok(text));
        }

        #[test]
        fn escaping_keeps_distinct_texts_distinct(a in "[\\x00\\x01ab]{0,6}", b in "[\\x00\\x01ab]{0,6}") {
            prop_assert_eq!(a == b, escape(&a) == escape(&b));
        }
    }

    #[test]
    fn a_name_a_person_types_is_stored_as_is() {
        for name in [
            "scan 1",
            "C:\\scans\\a.ply",
            "../../etc/passwd",
            "é\u{1F600}",
        ] {
            assert!(matches!(escape(name), std::borrow::Cow::Borrowed(same) if same == name));
        }
    }
}
