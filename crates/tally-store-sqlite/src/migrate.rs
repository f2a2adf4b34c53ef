//! The embedded migrations and their runner: each applied in its own `BEGIN IMMEDIATE`
//! transaction together with its row in `tally_schema_migrations`.
//!
//! Migrations are never edited once written; a change is a new, additive file, so that an
//! older binary keeps working on a newer schema. Two processes migrating at once both
//! succeed: the write lock serializes them and the second finds the work done.

use std::time::Instant;

use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnection;
use tally_store::{SchemaReport, StoreError};

use crate::error::store_error;
use crate::rows::micros;
use crate::{SqliteStore, StatementLog};

/// The migration set of this adapter (PostgreSQL has `public` and `tenant`).
const MIGRATION_SET: &str = "main";

/// One migration: a version, a name, and its SQL (any number of statements).
struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in ascending version order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create_tables",
        sql: include_str!("../migrations/0001_create_tables.sql"),
    },
    Migration {
        version: 2,
        name: "event_listing_index",
        sql: include_str!("../migrations/0002_event_listing_index.sql"),
    },
    Migration {
        version: 3,
        name: "config_version",
        sql: include_str!("../migrations/0003_config_version.sql"),
    },
    Migration { version: 4, name: "admin_ui", sql: include_str!("../migrations/0004_admin_ui.sql") },
    Migration {
        version: 5,
        name: "catalog_gauges_reservations",
        sql: include_str!("../migrations/0005_catalog_gauges_reservations.sql"),
    },
    Migration { version: 6, name: "webhooks", sql: include_str!("../migrations/0006_webhooks.sql") },
    Migration {
        version: 7,
        name: "metric_value_property",
        sql: include_str!("../migrations/0007_metric_value_property.sql"),
    },
    Migration {
        version: 8,
        name: "corrections_closed_periods",
        sql: include_str!("../migrations/0008_corrections_closed_periods.sql"),
    },
    Migration {
        version: 9,
        name: "key_rate_limit",
        sql: include_str!("../migrations/0009_key_rate_limit.sql"),
    },
];

const _: () = {
    let mut idx = 1;
    while idx < MIGRATIONS.len() {
        assert!(MIGRATIONS[idx - 1].version < MIGRATIONS[idx].version);
        idx += 1;
    }
};

const CREATE_TRACKING_TABLE: &str = "CREATE TABLE IF NOT EXISTS tally_schema_migrations (
    set_name   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    name       TEXT NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (set_name, version)
)";

/// Applies the pending migrations of `store`.
pub(crate) async fn migrate(store: &SqliteStore) -> Result<SchemaReport, StoreError> {
    let started = Instant::now();
    let log = &store.log;
    if !tracking_table_exists(log, store.pool()).await? {
        let mut w = store.begin_write().await?;
        let outcome = log.query(CREATE_TRACKING_TABLE).execute(w.conn()).await.map(|_| ());
        w.finish(outcome.map_err(store_error)).await?;
    }
    let mut applied = 0u32;
    for migration in MIGRATIONS {
        // A cheap look first, so that an up-to-date database takes no write lock.
        if is_applied(log, store.pool(), migration.version).await? {
            continue;
        }
        let mut w = store.begin_write().await?;
        let outcome = apply(log, w.conn(), migration).await;
        if w.finish(outcome).await? {
            applied += 1;
            tracing::info!(version = migration.version, name = migration.name, "sqlite migration applied");
        }
    }
    Ok(SchemaReport {
        schema: MIGRATION_SET.to_owned(),
        tenant_id: None,
        applied,
        version: schema_version(log, store.pool()).await?,
        elapsed: started.elapsed(),
        error: None,
    })
}

/// Applies one migration inside the caller's `BEGIN IMMEDIATE` transaction, unless another
/// process applied it since the caller looked. Returns whether it was applied now.
async fn apply(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    migration: &Migration,
) -> Result<bool, StoreError> {
    if is_applied(log, &mut *conn, migration.version).await? {
        return Ok(false);
    }
    log.raw_sql(migration.sql).execute(&mut *conn).await.map_err(store_error)?;
    log.query(
        "INSERT INTO tally_schema_migrations (set_name, version, name, applied_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .bind(MIGRATION_SET)
    .bind(migration.version)
    .bind(migration.name)
    .bind(micros(chrono::Utc::now()))
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    Ok(true)
}

async fn tracking_table_exists(log: &StatementLog, pool: &SqlitePool) -> Result<bool, StoreError> {
    let found: Option<i64> = log
        .query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tally_schema_migrations'")
        .fetch_optional(pool)
        .await
        .map_err(store_error)?;
    Ok(found.is_some())
}

async fn is_applied<'e, E>(log: &StatementLog, executor: E, version: i64) -> Result<bool, StoreError>
where
    E: sqlx::SqliteExecutor<'e>,
{
    let found: Option<i64> = log
        .query_scalar("SELECT 1 FROM tally_schema_migrations WHERE set_name = ?1 AND version = ?2")
        .bind(MIGRATION_SET)
        .bind(version)
        .fetch_optional(executor)
        .await
        .map_err(store_error)?;
    Ok(found.is_some())
}

/// The highest applied version; 0 when nothing was ever applied.
pub(crate) async fn schema_version(log: &StatementLog, pool: &SqlitePool) -> Result<i64, StoreError> {
    if !tracking_table_exists(log, pool).await? {
        return Ok(0);
    }
    log.query_scalar("SELECT COALESCE(MAX(version), 0) FROM tally_schema_migrations WHERE set_name = ?1")
        .bind(MIGRATION_SET)
        .fetch_one(pool)
        .await
        .map_err(store_error)
}
