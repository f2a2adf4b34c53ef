//! The PostgreSQL store adapter: `PgStore`, over sqlx runtime queries, with the quota tables
//! either shared by every tenant in the base schema or in one schema per tenant.
//!
//! Layout of the crate:
//! - `lib.rs`: configuration, connecting, the pool and the test helper;
//! - `migrate.rs`: the embedded, versioned migrations and the per-schema runner;
//! - `scope.rs`: where a tenant's quota tables live, and how SQL names them;
//! - `rows.rs`: reading rows back into domain values, and the one error mapping;
//! - `usage.rs`: the hot path (`apply_usage` through `UsageTx`), records and events;
//! - `admin.rs`: plans, tenants, subscriptions, overrides, keys, the audit log and the
//!   configuration version;
//! - `admin_ui.rs`: the admin UI's lists across tenants, its look-ups, password and sessions;
//! - `catalog.rs`: the metric catalog;
//! - `periods.rs`: closed periods: the tenants' watermarks, closing, reopening, the periods
//!   billing reads;
//! - `reservations.rs`: reservations, in the base schema in both tenancies;
//! - `webhooks.rs`: threshold webhooks, their states and deliveries (the outbox), in the
//!   base schema in both tenancies;
//! - `statements.rs`: the statement log, through which every statement is sent.
//!
//! # Fresh plans
//!
//! sqlx prepares statements and PostgreSQL may then reuse a generic plan. A generic plan made
//! while a table was small stays in use as it grows until an ANALYZE invalidates it; with
//! autovacuum off nothing does, and tests/faults/soak saw the idempotency look-up turn into
//! sequential scans of `quota_usage_event`, 100 ms each, two minutes after a start on an
//! empty database. So every write transaction (usage, resets, reservations) starts with
//! `SET LOCAL plan_cache_mode = force_custom_plan`, sent with its `BEGIN`: its statements are
//! planned for the tables as they are, at a cost amortized over a group-committed batch. Out
//! of transactions, the statements that read the events table by more than one unique key
//! (event lists, the admin UI's pages) are sent unnamed (`persistent(false)`), which plans
//! them the same way. The one-row reads of the `check` path keep their cached plans:
//! planning every statement of every connection (`plan_cache_mode` on the connection) was
//! measured too, and halved `check` throughput (10k/s to 5.3k/s, 64 connections, A/B).
#![warn(missing_docs)]

mod admin;
mod admin_ui;
mod catalog;
mod migrate;
mod periods;
mod reservations;
mod rows;
mod scope;
mod statements;
mod usage;
mod webhooks;
mod writer;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use futures::FutureExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use std::convert::Infallible;
use std::sync::Arc;

use tally_store::write::GROUP_COMMIT_WRITERS_DEFAULT;
use tally_store::{Committer, ConfigCache, SchemaReport, StoreError, write_forever};

use crate::writer::{PgWriter, ScopeMap};
use uuid::Uuid;

pub use migrate::{Migration, MigrationSet, PUBLIC_SET, TENANT_SET};
pub use statements::StatementLog;

/// Connections in a store's pool unless configured otherwise.
pub const PG_POOL_CONNECTIONS: u32 = 16;
/// How long opening the store may take before it reports `Unavailable`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for a pooled connection before it reports `Unavailable`.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection idle for longer than this is pinged before it is handed out; fresher
/// ones are not, which saves a round trip on the hot path.
pub const IDLE_PING_AFTER: Duration = Duration::from_secs(10);
/// Schemas migrated at once by `migrate` (each on its own pooled connection).
pub const MIGRATE_CONCURRENCY: usize = 8;
/// The base schema unless configured otherwise.
pub const DEFAULT_BASE_SCHEMA: &str = "public";
/// Where `open_test` connects when `TALLY_TEST_DATABASE_URL` is not set.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tally_test?sslmode=disable";
/// Longest schema name PostgreSQL keeps whole.
const SCHEMA_NAME_LEN_MAX: usize = 63;

/// Where the quota tables live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tenancy {
    /// One set of quota tables in the base schema, shared by every tenant (rows carry
    /// `tenant_id`).
    Shared,
    /// One schema per tenant (`tenant_<16 hex>`, named from its internal id) holding its own
    /// quota tables; plans, tenants, keys and the audit log stay in the base schema.
    Schema,
}

impl Tenancy {
    /// `shared` or `schema`, as configured and as stored in `tally_settings`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tenancy::Shared => "shared",
            Tenancy::Schema => "schema",
        }
    }
}

impl fmt::Display for Tenancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenancy name that is neither `shared` nor `schema`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseTenancyError(String);

impl fmt::Display for ParseTenancyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tenancy must be shared or schema, got {:?}", self.0)
    }
}

impl std::error::Error for ParseTenancyError {}

impl FromStr for Tenancy {
    type Err = ParseTenancyError;
    fn from_str(raw: &str) -> Result<Tenancy, ParseTenancyError> {
        match raw {
            "shared" => Ok(Tenancy::Shared),
            "schema" => Ok(Tenancy::Schema),
            _ => Err(ParseTenancyError(raw.to_owned())),
        }
    }
}

/// How to reach the database and how to lay out tenants in it.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// A `postgres://` URL; sqlx is built without TLS here, so add `sslmode=disable`.
    pub url: String,
    /// Shared tables or one schema per tenant; must match what the database was migrated with.
    pub tenancy: Tenancy,
    /// The schema holding Tally's own tables (`[a-z_][a-z0-9_]*`, at most 63 bytes).
    pub base_schema: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// Writer tasks draining the group-commit queue, each with one transaction at a time.
    pub writers: usize,
}

impl PgConfig {
    /// A configuration with the default base schema and pool size.
    pub fn new(url: &str, tenancy: Tenancy) -> PgConfig {
        PgConfig {
            url: url.to_owned(),
            tenancy,
            base_schema: DEFAULT_BASE_SCHEMA.to_owned(),
            max_connections: PG_POOL_CONNECTIONS,
            writers: GROUP_COMMIT_WRITERS_DEFAULT,
        }
    }
}

impl fmt::Debug for PgConfig {
    // The URL may carry a password, so it is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &"***")
            .field("tenancy", &self.tenancy)
            .field("base_schema", &self.base_schema)
            .field("max_connections", &self.max_connections)
            .field("writers", &self.writers)
            .finish()
    }
}

/// The PostgreSQL store. Cloning is cheap: clones share one pool, the write queue with its
/// writer tasks (which end when the last clone is dropped) and the configuration cache.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The hot path's write queue (see `writer`).
    committer: Committer<Infallible>,
    cache: Arc<ConfigCache>,
    /// Each tenant's schema, once seen (schema tenancy).
    scopes: ScopeMap,
    /// One connection of its own (opened on first use) for `config_version`, which every
    /// server polls several times a second: it never queues behind the hot path's
    /// transactions for a pooled connection.
    version_pool: PgPool,
    tenancy: Tenancy,
    base_schema: String,
    /// Every statement this store sends goes through it (see `statements`).
    log: StatementLog,
}

impl PgStore {
    /// Connects (no migration). Every pooled connection gets `search_path` = the base schema,
    /// so all unqualified SQL hits the base schema. An unreachable server fails within
    /// `CONNECT_TIMEOUT` with `StoreError::Unavailable`; a database migrated with the other
    /// tenancy is refused with `StoreError::Other`.
    pub async fn connect(config: PgConfig) -> Result<PgStore, StoreError> {
        check_base_schema(&config.base_schema)?;
        let options = PgConnectOptions::from_str(&config.url)
            .map_err(|e| StoreError::Other(format!("invalid database url: {e}")))?
            .options([("search_path", config.base_schema.as_str())]);
        let pool_options = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                async move {
                    if meta.idle_for > IDLE_PING_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                }
                .boxed()
            });
        let version_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .connect_lazy_with(options.clone());
        let pool = tokio::time::timeout(CONNECT_TIMEOUT, pool_options.connect_with(options))
            .await
            .map_err(|_| StoreError::Unavailable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(rows::map_err)?;
        let log = StatementLog::default();
        let cache = Arc::new(ConfigCache::default());
        let scopes = ScopeMap::default();
        let (committer, queue) = Committer::new();
        for _ in 0..config.writers.max(1) {
            let writer = PgWriter::new(pool.clone(), log.clone(), config.tenancy, scopes.clone());
            tokio::spawn(write_forever(queue.clone(), writer, cache.clone()));
        }
        let store = PgStore {
            pool,
            committer,
            cache,
            scopes,
            version_pool,
            tenancy: config.tenancy,
            base_schema: config.base_schema,
            log,
        };
        if let Some(stored) = migrate::stored_tenancy(&store.log, &store.pool).await? {
            check_tenancy(stored.as_str(), store.tenancy)?;
        }
        Ok(store)
    }

    /// Migrates the base schema (the `public` set), then, in shared tenancy, the `tenant` set
    /// in the base schema too; in schema tenancy, the `tenant` set in every tenant's schema,
    /// `MIGRATE_CONCURRENCY` at once. Calls `progress` after each schema and returns one
    /// report per schema, base first. A failing tenant schema is reported with its error and
    /// does not stop the others; only a failure of the base schema is an `Err`.
    /// `target_tenant_version` applies tenant migrations only up to that version (`None`:
    /// all), for staged rollouts and for measuring a pending migration.
    ///
    /// In shared tenancy the base schema's report counts the migrations of both sets and
    /// its `version` is the `public` set's.
    pub async fn migrate(
        &self,
        target_tenant_version: Option<i64>,
        progress: &(dyn Fn(&SchemaReport) + Send + Sync),
    ) -> Result<Vec<SchemaReport>, StoreError> {
        migrate::migrate(self, target_tenant_version, progress).await
    }

    /// The highest applied version of the `public` set; 0 before the first migration.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        migrate::applied_version(&self.log, &self.pool, &migrate::PUBLIC_SET).await
    }

    /// The tenancy this store runs with.
    pub fn tenancy(&self) -> Tenancy {
        self.tenancy
    }

    /// The schema holding Tally's own tables.
    pub fn base_schema(&self) -> &str {
        &self.base_schema
    }

    /// The pool, for tests and tools that touch rows behind Tally's back.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// This store's statement log (shared with its clones): off until `start`ed, it then
    /// records the SQL text of every statement the store sends. A test tool.
    pub fn statement_log(&self) -> StatementLog {
        self.log.clone()
    }

    /// Test helper: connects to `test_database_url()`, creates a fresh base schema
    /// `t_<uuid>` (so tests never see each other's rows), migrates it and returns the store.
    /// Panics with a clear message when the server is unreachable: tests fail, never skip.
    pub async fn open_test(tenancy: Tenancy) -> PgStore {
        let mut config = PgConfig::new(&test_database_url(), tenancy);
        config.base_schema = format!("t_{}", Uuid::now_v7().simple());
        let store = match PgStore::connect(config).await {
            Ok(store) => store,
            Err(e) => panic!(
                "cannot open the PostgreSQL test database (set TALLY_TEST_DATABASE_URL, default \
                 {DEFAULT_TEST_DATABASE_URL}): {e}"
            ),
        };
        if let Err(e) = store.migrate(None, &|_| {}).await {
            panic!("cannot migrate the PostgreSQL test schema {}: {e}", store.base_schema);
        }
        store
    }
}

/// The database tests use: `TALLY_TEST_DATABASE_URL`, else `DEFAULT_TEST_DATABASE_URL`.
pub fn test_database_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// The base schema is written into SQL as an identifier, so only plain lowercase names pass.
fn check_base_schema(name: &str) -> Result<(), StoreError> {
    let bytes = name.as_bytes();
    let head_ok = bytes.first().is_some_and(|b| b.is_ascii_lowercase() || *b == b'_');
    let tail_ok = bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    let reserved = name.starts_with("pg_") || name.starts_with("tenant_");
    if !head_ok || !tail_ok || bytes.len() > SCHEMA_NAME_LEN_MAX || reserved {
        return Err(StoreError::Other(format!(
            "base schema must match [a-z_][a-z0-9_]* (at most {SCHEMA_NAME_LEN_MAX} bytes, not pg_* or \
             tenant_*), got {name:?}"
        )));
    }
    Ok(())
}

/// Refuses to run a database in a tenancy other than the one it was migrated with.
fn check_tenancy(stored: &str, configured: Tenancy) -> Result<(), StoreError> {
    if stored == configured.as_str() {
        return Ok(());
    }
    Err(StoreError::Other(format!(
        "the database was migrated with tenancy {stored:?}, not {:?}; tenancy cannot change once set",
        configured.as_str()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenancy_parses_its_two_names_only() {
        assert_eq!("shared".parse::<Tenancy>(), Ok(Tenancy::Shared));
        assert_eq!("schema".parse::<Tenancy>(), Ok(Tenancy::Schema));
        assert!("Schema".parse::<Tenancy>().is_err());
        assert_eq!(Tenancy::Schema.as_str(), "schema");
    }

    #[test]
    fn base_schema_names_are_plain_identifiers() {
        for ok in ["public", "tally", "t_0199", "_x"] {
            assert!(check_base_schema(ok).is_ok(), "{ok}");
        }
        for bad in
            ["", "Public", "a-b", "a\"b", "1a", "pg_catalog", "tenant_00000000deadbeef", &"a".repeat(64)]
        {
            assert!(check_base_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_debug_hides_the_url() {
        let config = PgConfig::new("postgres://u:secret@h/db", Tenancy::Shared);
        assert!(!format!("{config:?}").contains("secret"));
    }
}
