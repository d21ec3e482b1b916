//! The catalog's schema, versioned: the migrations in `migrations/`, applied at connect.
//!
//! `{schema}.schema_migrations` records each version applied. A migration runs in one
//! transaction with its record, so a crash leaves it applied or not at all; migrations
//! are only ever added, never edited. A schema at a version this program does not know
//! (a newer program migrated it) is refused rather than written.

use postgres::Client;

use crate::catalog::PostgresError;

/// Every migration, in order: version and SQL (`{schema}` stands for the schema).
pub const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../migrations/0001_catalog.sql"))];

/// The latest version this program knows.
#[must_use]
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// Brings `schema` to [`latest`], creating it when missing. The caller holds the
/// schema's lock, so no other process migrates it meanwhile.
///
/// # Errors
/// [`PostgresError::Newer`], [`PostgresError::Migrate`], [`PostgresError::Statement`].
pub(crate) fn migrate(client: &mut Client, schema: &str) -> Result<(), PostgresError> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .map_err(PostgresError::Statement)?;
    let current: i32 = client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"),
            &[],
        )
        .and_then(|row| row.try_get(0))
        .map_err(PostgresError::Statement)?;
    if current > latest() {
        return Err(PostgresError::Newer {
            schema: schema.to_owned(),
            found: current,
            known: latest(),
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        let failed = |source| PostgresError::Migrate {
            schema: schema.to_owned(),
            version: *version,
            source,
        };
        let mut txn = client.transaction().map_err(failed)?;
        txn.batch_execute(&sql.replace("{schema}", schema))
            .map_err(failed)?;
        txn.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version) VALUES ($1)"),
            &[version],
        )
        .map_err(failed)?;
        txn.commit().map_err(failed)?;
        tracing::info!(schema, version, "metadata schema migrated");
    }
    Ok(())
}
