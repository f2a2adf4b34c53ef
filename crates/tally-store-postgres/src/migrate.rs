//! The embedded, versioned migrations and the runner that applies them, schema by schema.
//!
//! Two sets: `public` (Tally's own tables, in the base schema) and `tenant` (the quota
//! tables: in the base schema in shared tenancy, in each tenant's schema in schema tenancy).
//! Each schema tracks what it has applied in its own `tally_schema_migrations`.
//!
//! Per schema, each pending migration runs in its own transaction together with its
//! tracking row, in two round trips after `BEGIN`: one takes the schema's advisory lock
//! (`pg_advisory_xact_lock(hashtext('tally.migrate.' || schema))`, so concurrent migrators
//! serialize) and reads the applied versions after taking it; the other runs the migration's
//! SQL and the tracking insert as one simple-query batch. Migrations are additive only and
//! never edited once applied, so an old and a new binary can run side by side.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::stream::{self, StreamExt};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};
use tally_domain::TenantId;
use tally_domain::quota::schema_name_for;
use tally_store::{SchemaReport, StoreError};

use crate::rows::{get, is_undefined_table, map_err};
use crate::scope::internal_id_from_db;
use crate::{MIGRATE_CONCURRENCY, PgStore, StatementLog, Tenancy, check_tenancy};

/// One migration, applied once per schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// Its number in its set, from 1 up without gaps.
    pub version: i64,
    /// Its file name without number and extension (`[a-z0-9_]+`).
    pub name: &'static str,
    /// The SQL, with no schema names: it runs with `search_path` set to its schema.
    pub sql: &'static str,
}

/// Migrations tracked together under one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationSet {
    /// `public` or `tenant`, as `tally_schema_migrations.set_name` holds it.
    pub name: &'static str,
    /// In version order.
    pub migrations: &'static [Migration],
}

impl MigrationSet {
    /// The newest version this binary knows.
    pub fn latest_version(&self) -> i64 {
        self.migrations.last().map_or(0, |m| m.version)
    }
}

/// Tally's own tables, in the base schema.
pub const PUBLIC_SET: MigrationSet = MigrationSet {
    name: "public",
    migrations: &[
        Migration { version: 1, name: "init", sql: include_str!("../migrations/public/0001_init.sql") },
        Migration {
            version: 2,
            name: "config_version",
            sql: include_str!("../migrations/public/0002_config_version.sql"),
        },
        Migration {
            version: 3,
            name: "admin_session",
            sql: include_str!("../migrations/public/0003_admin_session.sql"),
        },
        Migration {
            version: 4,
            name: "catalog_reservations",
            sql: include_str!("../migrations/public/0004_catalog_reservations.sql"),
        },
        Migration {
            version: 5,
            name: "webhooks",
            sql: include_str!("../migrations/public/0005_webhooks.sql"),
        },
        Migration {
            version: 6,
            name: "metric_value_property",
            sql: include_str!("../migrations/public/0006_metric_value_property.sql"),
        },
        Migration {
            version: 7,
            name: "closed_periods",
            sql: include_str!("../migrations/public/0007_closed_periods.sql"),
        },
        Migration {
            version: 8,
            name: "key_rate_limit",
            sql: include_str!("../migrations/public/0008_key_rate_limit.sql"),
        },
    ],
};

/// The quota tables, in the base schema (shared tenancy) or in each tenant's schema.
pub const TENANT_SET: MigrationSet = MigrationSet {
    name: "tenant",
    migrations: &[
        Migration { version: 1, name: "usage", sql: include_str!("../migrations/tenant/0001_usage.sql") },
        Migration {
            version: 2,
            name: "events_listing_index",
            sql: include_str!("../migrations/tenant/0002_events_listing_index.sql"),
        },
        Migration {
            version: 3,
            name: "events_created_index",
            sql: include_str!("../migrations/tenant/0003_events_created_index.sql"),
        },
        Migration {
            version: 4,
            name: "event_set_reserved",
            sql: include_str!("../migrations/tenant/0004_event_set_reserved.sql"),
        },
        Migration {
            version: 5,
            name: "corrections_closed_periods",
            sql: include_str!("../migrations/tenant/0005_corrections_closed_periods.sql"),
        },
    ],
};

/// Tenants read per query when listing every tenant's schema.
const TENANT_PAGE_LEN: i64 = 1_000;

/// What migrating one set in one schema did.
struct SetOutcome {
    applied: u32,
    version: i64,
    error: Option<StoreError>,
}

/// SQL that takes `schema`'s migration lock, creates the schema when missing, points
/// `search_path` at it for the rest of the transaction and creates its tracking table when
/// missing. `schema` is the base schema (checked at connect) or a `tenant_<16 hex>` name.
fn enter_schema_sql(schema: &str) -> String {
    format!(
        "SET LOCAL client_min_messages TO warning;
DO $tally$BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('tally.migrate.' || '{schema}'));
  IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = '{schema}') THEN
    CREATE SCHEMA \"{schema}\";
  END IF;
END$tally$;
SET LOCAL search_path TO \"{schema}\";
CREATE TABLE IF NOT EXISTS tally_schema_migrations (
    set_name   text NOT NULL,
    version    bigint NOT NULL,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL,
    PRIMARY KEY (set_name, version)
);
"
    )
}

/// SQL that applies `migration` and records it, in the schema `search_path` points at.
fn apply_sql(set: &MigrationSet, migration: &Migration) -> String {
    format!(
        "{sql}\n;\nINSERT INTO tally_schema_migrations (set_name, version, name, applied_at) \
         VALUES ('{set}', {version}, '{name}', now());\n",
        sql = migration.sql,
        set = set.name,
        version = migration.version,
        name = migration.name,
    )
}

/// SQL that creates a new tenant's schema with every tenant migration applied, to run in
/// the transaction that creates the tenant, and then points `search_path` back at the base.
pub(crate) fn create_tenant_schema_sql(schema: &str, base_schema: &str) -> String {
    let mut sql = enter_schema_sql(schema);
    for migration in TENANT_SET.migrations {
        sql.push_str(&apply_sql(&TENANT_SET, migration));
    }
    sql.push_str(&format!("SET LOCAL search_path TO \"{base_schema}\";\n"));
    sql
}

/// Applies `set`'s migrations up to `target` (all when `None`) in `schema`, each in its own
/// transaction. A failure stops this schema and is returned in the outcome.
async fn run_set(
    log: &StatementLog,
    pool: &PgPool,
    schema: &str,
    set: &MigrationSet,
    target: Option<i64>,
) -> SetOutcome {
    let wanted: Vec<&Migration> =
        set.migrations.iter().filter(|m| target.is_none_or(|t| m.version <= t)).collect();
    let mut outcome = SetOutcome { applied: 0, version: 0, error: None };
    // Each pass applies one migration; the pass after the last one finds nothing pending.
    for _ in 0..=wanted.len() {
        match run_one(log, pool, schema, set, &wanted).await {
            Ok(step) => {
                outcome.version = step.version;
                if step.applied {
                    outcome.applied += 1;
                }
                if step.pending_after == 0 {
                    break;
                }
            }
            Err(e) => {
                outcome.error = Some(e);
                break;
            }
        }
    }
    outcome
}

struct Step {
    applied: bool,
    version: i64,
    pending_after: usize,
}

/// One transaction: lock the schema, read what is applied, apply the first pending one.
async fn run_one(
    log: &StatementLog,
    pool: &PgPool,
    schema: &str,
    set: &MigrationSet,
    wanted: &[&Migration],
) -> Result<Step, StoreError> {
    let mut tx = log.begin(pool, "BEGIN").await.map_err(map_err)?;
    let read = format!(
        "{}SELECT version FROM tally_schema_migrations WHERE set_name = '{}';",
        enter_schema_sql(schema),
        set.name
    );
    let rows = log.raw_sql(AssertSqlSafe(read)).fetch_all(&mut *tx).await.map_err(map_err)?;
    let mut done = BTreeSet::new();
    for row in &rows {
        done.insert(row.try_get::<i64, _>("version").map_err(map_err)?);
    }
    let pending: Vec<&Migration> = wanted.iter().copied().filter(|m| !done.contains(&m.version)).collect();
    let version = done.last().copied().unwrap_or(0);
    let Some(next) = pending.first() else {
        log.commit(tx).await.map_err(map_err)?;
        return Ok(Step { applied: false, version, pending_after: 0 });
    };
    log.raw_sql(AssertSqlSafe(apply_sql(set, next))).execute(&mut *tx).await.map_err(|e| {
        StoreError::Other(format!("migration {} {:04}_{}: {}", set.name, next.version, next.name, map_err(e)))
    })?;
    log.commit(tx).await.map_err(map_err)?;
    Ok(Step { applied: true, version: version.max(next.version), pending_after: pending.len() - 1 })
}

/// The `migrate` of `PgStore`.
pub(crate) async fn migrate(
    store: &PgStore,
    target_tenant_version: Option<i64>,
    progress: &(dyn Fn(&SchemaReport) + Send + Sync),
) -> Result<Vec<SchemaReport>, StoreError> {
    let started = Instant::now();
    let pool = store.pool();
    let base = store.base_schema();
    let log = &store.log;
    let public = run_set(log, pool, base, &PUBLIC_SET, None).await;
    if let Some(e) = public.error {
        return Err(e);
    }
    claim_tenancy(log, pool, store.tenancy()).await?;
    let mut base_report = SchemaReport {
        schema: base.to_owned(),
        tenant_id: None,
        applied: public.applied,
        version: public.version,
        elapsed: started.elapsed(),
        error: None,
    };
    if store.tenancy() == Tenancy::Shared {
        let tenant = run_set(log, pool, base, &TENANT_SET, target_tenant_version).await;
        if let Some(e) = tenant.error {
            return Err(e);
        }
        base_report.applied += tenant.applied;
        base_report.elapsed = started.elapsed();
        progress(&base_report);
        return Ok(vec![base_report]);
    }
    progress(&base_report);

    let tenants = {
        let mut conn = pool.acquire().await.map_err(map_err)?;
        list_tenant_schemas(log, &mut conn).await?
    };
    let concurrency =
        MIGRATE_CONCURRENCY.min(usize::try_from(pool.options().get_max_connections()).unwrap_or(1));
    let mut results = stream::iter(tenants.into_iter().enumerate())
        .map(|(idx, (tenant_id, schema))| async move {
            let started = Instant::now();
            let outcome = run_set(log, pool, &schema, &TENANT_SET, target_tenant_version).await;
            let report = SchemaReport {
                schema,
                tenant_id: Some(tenant_id),
                applied: outcome.applied,
                version: outcome.version,
                elapsed: started.elapsed(),
                error: outcome.error.map(|e| e.to_string()),
            };
            (idx, report)
        })
        .buffer_unordered(concurrency.max(1));
    let mut reports = Vec::new();
    while let Some((idx, report)) = results.next().await {
        if let Some(error) = &report.error {
            tracing::warn!(schema = %report.schema, %error, "tenant schema migration failed");
        }
        progress(&report);
        reports.push((idx, report));
    }
    reports.sort_by_key(|(idx, _)| *idx);
    let mut all = Vec::with_capacity(reports.len() + 1);
    all.push(base_report);
    all.extend(reports.into_iter().map(|(_, r)| r));
    Ok(all)
}

/// Records the tenancy on first migrate; refuses to migrate with the other one later.
async fn claim_tenancy(log: &StatementLog, pool: &PgPool, tenancy: Tenancy) -> Result<(), StoreError> {
    log.query("INSERT INTO tally_settings (key, value) VALUES ('tenancy', $1) ON CONFLICT (key) DO NOTHING")
        .bind(tenancy.as_str())
        .execute(pool)
        .await
        .map_err(map_err)?;
    let stored = stored_tenancy(log, pool)
        .await?
        .ok_or_else(|| StoreError::Other("tally_settings lost its tenancy".to_owned()))?;
    check_tenancy(&stored, tenancy)
}

/// The tenancy the database was migrated with; `None` before the first migration.
pub(crate) async fn stored_tenancy(log: &StatementLog, pool: &PgPool) -> Result<Option<String>, StoreError> {
    let found = log
        .query_scalar::<String>("SELECT value FROM tally_settings WHERE key = 'tenancy'")
        .fetch_optional(pool)
        .await;
    match found {
        Ok(value) => Ok(value),
        Err(e) if is_undefined_table(&e) => Ok(None),
        Err(e) => Err(map_err(e)),
    }
}

/// The highest applied version of `set` in the base schema; 0 when none is.
pub(crate) async fn applied_version(
    log: &StatementLog,
    pool: &PgPool,
    set: &MigrationSet,
) -> Result<i64, StoreError> {
    let found = log
        .query_scalar::<i64>(
            "SELECT COALESCE(max(version), 0)::bigint FROM tally_schema_migrations WHERE set_name = $1",
        )
        .bind(set.name)
        .fetch_one(pool)
        .await;
    match found {
        Ok(version) => Ok(version),
        Err(e) if is_undefined_table(&e) => Ok(0),
        Err(e) => Err(map_err(e)),
    }
}

/// Every tenant with the name of its schema (as schema tenancy names it), by tenant id.
pub(crate) async fn list_tenant_schemas(
    log: &StatementLog,
    conn: &mut PgConnection,
) -> Result<Vec<(TenantId, String)>, StoreError> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let rows = log
            .query(
                "SELECT tenant_id, internal_id FROM tally_tenant
              WHERE ($1::text IS NULL OR tenant_id > $1) ORDER BY tenant_id LIMIT $2",
            )
            .bind(after.as_deref())
            .bind(TENANT_PAGE_LEN)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
        let full_page = i64::try_from(rows.len()).is_ok_and(|n| n == TENANT_PAGE_LEN);
        for row in &rows {
            let tenant_id = TenantId::parse(get(row, "tenant_id")?)?;
            all.push((tenant_id, schema_name_for(internal_id_from_db(get(row, "internal_id")?))));
        }
        match all.last() {
            Some((last, _)) if full_page => after = Some(last.as_str().to_owned()),
            _ => return Ok(all),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }

    #[test]
    fn sets_are_numbered_from_one_without_gaps_and_named_plainly() {
        for set in [PUBLIC_SET, TENANT_SET] {
            assert!(plain(set.name));
            for (idx, m) in set.migrations.iter().enumerate() {
                assert_eq!(m.version, i64::try_from(idx).expect("few migrations") + 1, "{}", set.name);
                assert!(plain(m.name), "{}", m.name);
            }
        }
    }

    #[test]
    fn every_migration_file_is_embedded() {
        for set in [PUBLIC_SET, TENANT_SET] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(set.name);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .expect("migrations directory")
                .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            let embedded: Vec<String> =
                set.migrations.iter().map(|m| format!("{:04}_{}.sql", m.version, m.name)).collect();
            assert_eq!(files, embedded, "{}", set.name);
        }
    }
}
