//! Behaviour of the SQLite adapter beyond the contract: migrations, the file and its pool,
//! the schema's names, concurrency between stores on one file, and unreadable rows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tally_contract::{WriteExt, apply_one, limit, metric, now, req, setup, tenant};
use tally_domain::{LimitEnforcement, Name, PeriodKind, UsageError, UsageRecord};
use tally_store::{
    ConfigVersion, EventQuery, EventRecorder, PlanStore, StoreError, TenantStore, UsageRepository,
};
use tally_store_sqlite::{SQLITE_POOL_CONNECTIONS, SqliteStore};
use uuid::Uuid;

/// A database path under the temp dir, removed (with its companions) when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new() -> TempPath {
        TempPath(std::env::temp_dir().join(format!("tally-adapter-test-{}.sqlite3", Uuid::new_v4())))
    }
    fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

async fn scalar_i64(store: &SqliteStore, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(store.pool()).await.expect("a scalar query")
}

async fn schema_sql(store: &SqliteStore) -> Vec<String> {
    sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name")
        .fetch_all(store.pool())
        .await
        .expect("read the schema")
}

async fn database_file(store: &SqliteStore) -> PathBuf {
    let file: String = sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
        .fetch_one(store.pool())
        .await
        .expect("the main database has a file");
    PathBuf::from(file)
}

#[tokio::test]
async fn migrating_twice_changes_nothing() {
    let store = SqliteStore::open_temp_file().await.unwrap();
    let schema_before = schema_sql(&store).await;
    let reports = store.migrate().await.unwrap();
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert_eq!((report.schema.as_str(), report.tenant_id.as_ref()), ("main", None));
    assert_eq!((report.applied, report.version, report.error.as_deref()), (0, 9, None));
    assert_eq!(schema_sql(&store).await, schema_before);
    let tracked: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT set_name, version, name FROM tally_schema_migrations ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(
        tracked,
        [
            ("main".to_owned(), 1, "create_tables".to_owned()),
            ("main".to_owned(), 2, "event_listing_index".to_owned()),
            ("main".to_owned(), 3, "config_version".to_owned()),
            ("main".to_owned(), 4, "admin_ui".to_owned()),
            ("main".to_owned(), 5, "catalog_gauges_reservations".to_owned()),
            ("main".to_owned(), 6, "webhooks".to_owned()),
            ("main".to_owned(), 7, "metric_value_property".to_owned()),
            ("main".to_owned(), 8, "corrections_closed_periods".to_owned()),
            ("main".to_owned(), 9, "key_rate_limit".to_owned())
        ]
    );
    assert_eq!(store.schema_version().await.unwrap(), 9);
}

#[tokio::test]
async fn a_database_at_version_one_is_brought_to_the_latest_version() {
    let store = SqliteStore::open_temp_file().await.unwrap();
    sqlx::query("DROP INDEX quota_usage_event_tenant_ts_idx").execute(store.pool()).await.unwrap();
    sqlx::query("DROP TABLE tally_config_version").execute(store.pool()).await.unwrap();
    sqlx::query("DROP INDEX quota_usage_event_created_idx").execute(store.pool()).await.unwrap();
    sqlx::query("DROP INDEX quota_usage_record_created_idx").execute(store.pool()).await.unwrap();
    sqlx::query("DROP TABLE tally_admin_session").execute(store.pool()).await.unwrap();
    sqlx::query("DROP TABLE tally_metric").execute(store.pool()).await.unwrap();
    sqlx::query("DROP TABLE tally_reservation").execute(store.pool()).await.unwrap();
    sqlx::query("ALTER TABLE quota_usage_event DROP COLUMN is_set").execute(store.pool()).await.unwrap();
    sqlx::query("ALTER TABLE quota_usage_event DROP COLUMN reserved_at").execute(store.pool()).await.unwrap();
    for table in ["tally_webhook", "tally_webhook_state", "tally_webhook_delivery"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}"))).execute(store.pool()).await.unwrap();
    }
    sqlx::query("DROP INDEX quota_usage_record_tenant_start_idx").execute(store.pool()).await.unwrap();
    for (table, column) in [
        ("quota_usage_event", "kind"),
        ("quota_usage_event", "reason"),
        ("quota_usage_record", "closed_at"),
        ("quota_usage_record", "reopened_at"),
        ("tally_tenant", "closed_before"),
        ("tally_tenant", "closed_before_at"),
        ("tally_plan", "close_after_seconds"),
        ("tally_plan_version", "close_after_seconds"),
        ("tally_api_key", "rate_limit"),
    ] {
        let sql = format!("ALTER TABLE {table} DROP COLUMN {column}");
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(store.pool()).await.unwrap();
    }
    sqlx::query("DELETE FROM tally_schema_migrations WHERE version >= 2")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 1);
    let report = store.migrate().await.unwrap().remove(0);
    assert_eq!((report.applied, report.version), (8, 9));
    let n = scalar_i64(
        &store,
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name IN \
         ('quota_usage_event_tenant_ts_idx', 'quota_usage_event_created_idx', 'quota_usage_record_created_idx', \
          'tally_admin_session_expires_idx', 'tally_webhook_delivery_due_idx', 'tally_webhook_delivery_log_idx', \
          'quota_usage_record_tenant_start_idx')",
    )
    .await;
    assert_eq!(n, 7);
    assert_eq!(store.config_version().await.unwrap(), 0, "the version starts at zero");
}

#[tokio::test]
async fn the_config_version_is_one_row_that_only_configuration_changes_raise() {
    let store = SqliteStore::open_temp_file().await.unwrap();
    assert_eq!(store.config_version().await.unwrap(), 0);
    setup(
        &store,
        "acme",
        "pro",
        vec![limit("api_calls", Some(10), LimitEnforcement::Hard, PeriodKind::Month)],
    )
    .await;
    // A plan, a tenant and a subscription: three changes, three steps.
    assert_eq!(store.config_version().await.unwrap(), 3);
    apply_one(&store, req("acme", "api_calls", 1)).await.unwrap();
    assert_eq!(store.config_version().await.unwrap(), 3);
    // There is only ever the one row.
    let err = sqlx::query("INSERT INTO tally_config_version (id, version) VALUES (2, 0)")
        .execute(store.pool())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
    // A writer holding the write lock does not hold up the version's readers.
    let mut writer = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("UPDATE tally_config_version SET version = version + 1").execute(&mut *writer).await.unwrap();
    let read = tokio::time::timeout(std::time::Duration::from_secs(1), store.config_version()).await;
    assert_eq!(read.expect("the read does not wait for the writer").unwrap(), 3);
    writer.rollback().await.unwrap();
}

#[tokio::test]
async fn two_stores_opening_one_new_file_at_once_both_migrate_it() {
    let path = TempPath::new();
    let url = path.url();
    let (a, b) = tokio::join!(SqliteStore::open(&url), SqliteStore::open(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.schema_version().await.unwrap(), b.schema_version().await.unwrap()), (9, 9));
    assert_eq!(scalar_i64(&a, "SELECT COUNT(*) FROM tally_schema_migrations").await, 9);
    // And migrating both again at once applies nothing.
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    assert_eq!((ra.unwrap()[0].applied, rb.unwrap()[0].applied), (0, 0));
}

#[tokio::test]
async fn the_database_is_a_wal_file_behind_a_pool_of_at_least_four_connections() {
    let store = SqliteStore::open_temp_file().await.unwrap();
    let mut conns = Vec::new();
    // Four connections held at once: the pool really has them.
    for _ in 0..4 {
        conns.push(store.pool().acquire().await.unwrap());
    }
    for conn in &mut conns {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut **conn).await.unwrap();
        assert_eq!(mode, "wal");
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut **conn).await.unwrap();
        assert_eq!(synchronous, 2, "FULL");
        let fks: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut **conn).await.unwrap();
        assert_eq!(fks, 1);
        let busy_ms: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut **conn).await.unwrap();
        assert_eq!(busy_ms, 5_000);
    }
    assert!(store.pool().options().get_max_connections() >= 4);
    assert_eq!(store.pool().options().get_max_connections(), SQLITE_POOL_CONNECTIONS);
    assert!(store.pool().size() >= 4);
    let file = database_file(&store).await;
    assert!(file.starts_with(std::env::temp_dir()), "{}", file.display());
}

#[tokio::test]
async fn the_named_indexes_and_unique_constraints_exist() {
    let store = SqliteStore::open_temp_file().await.unwrap();
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let named = |name: &str, table: &str| (name.to_owned(), table.to_owned());
    assert_eq!(
        indexes,
        [
            named("quota_usage_event_created_idx", "quota_usage_event"),
            named("quota_usage_event_tenant_metric_idx", "quota_usage_event"),
            named("quota_usage_event_tenant_ts_idx", "quota_usage_event"),
            named("quota_usage_record_created_idx", "quota_usage_record"),
            named("quota_usage_record_tenant_metric_idx", "quota_usage_record"),
            named("quota_usage_record_tenant_period_idx", "quota_usage_record"),
            named("quota_usage_record_tenant_start_idx", "quota_usage_record"),
            named("tally_admin_session_expires_idx", "tally_admin_session"),
            named("tally_audit_tenant_idx", "tally_audit"),
            named("tally_reservation_expiry_idx", "tally_reservation"),
            named("tally_reservation_open_idx", "tally_reservation"),
            named("tally_webhook_delivery_due_idx", "tally_webhook_delivery"),
            named("tally_webhook_delivery_log_idx", "tally_webhook_delivery"),
        ]
    );
    assert_eq!(
        index_columns(&store, "quota_usage_event_tenant_ts_idx").await,
        [("tenant_id".to_owned(), 0), ("timestamp".to_owned(), 1), ("id".to_owned(), 1)],
        "(tenant_id, timestamp DESC, id DESC)"
    );
    assert_eq!(
        index_columns(&store, "quota_usage_event_created_idx").await,
        [("created_at".to_owned(), 1), ("id".to_owned(), 1)],
        "(created_at DESC, id DESC)"
    );
    assert_eq!(
        index_columns(&store, "tally_webhook_delivery_log_idx").await,
        [("webhook_id".to_owned(), 0), ("id".to_owned(), 1)],
        "(webhook_id, id DESC)"
    );
    // The named unique constraints, and the unique indexes SQLite keeps for them.
    for (table, constraint, columns) in [
        ("quota_usage_record", "quota_usage_record_uq", vec!["tenant_id", "metric_code", "period_start"]),
        ("quota_usage_event", "quota_usage_event_idem_uq", vec!["tenant_id", "idempotency_key"]),
        ("tally_api_key", "", vec!["key_hash"]),
        ("tally_tenant", "", vec!["internal_id"]),
    ] {
        let sql: String =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1")
                .bind(table)
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert!(sql.contains(&format!("CONSTRAINT {constraint} UNIQUE")) || constraint.is_empty(), "{sql}");
        let unique: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND origin = 'u'",
        )
        .bind(table)
        .fetch_all(store.pool())
        .await
        .unwrap();
        let mut found = false;
        for index in unique {
            let cols: Vec<String> = index_columns(&store, &index).await.into_iter().map(|(c, _)| c).collect();
            found |= cols == columns;
        }
        assert!(found, "{table} has a unique index on {columns:?}");
    }
}

/// The key columns of an index, each with its `desc` flag.
async fn index_columns(store: &SqliteStore, index: &str) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT name, \"desc\" FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno")
        .bind(index)
        .fetch_all(store.pool())
        .await
        .expect("read the index columns")
}

#[tokio::test]
async fn two_stores_on_one_file_never_overshoot_a_hard_limit() {
    // Two stores have two writer locks, as two processes would: only SQLite's own write
    // lock (BEGIN IMMEDIATE, waiting up to the busy timeout) keeps them apart.
    const TASKS_PER_STORE: usize = 8;
    const TRIES_PER_TASK: usize = 10;
    const LIMIT: usize = 100;
    let path = TempPath::new();
    let a = SqliteStore::open(&path.url()).await.unwrap();
    let b = SqliteStore::open(&path.0.display().to_string()).await.unwrap();
    setup(
        &a,
        "acme",
        "pro",
        vec![limit("api_calls", Some(LIMIT as i64), LimitEnforcement::Hard, PeriodKind::Month)],
    )
    .await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for store in [a.clone(), b.clone()] {
        for _ in 0..TASKS_PER_STORE {
            let (store, accepted) = (store.clone(), accepted.clone());
            handles.push(tokio::spawn(async move {
                for _ in 0..TRIES_PER_TASK {
                    match apply_one(&store, req("acme", "api_calls", 1)).await {
                        Ok(_) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(UsageError::QuotaExceeded { .. }) => {}
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::Relaxed), LIMIT);
    let record = b.get_current_period(&tenant("acme"), &metric("api_calls"), now()).await.unwrap();
    assert_eq!(record.current_usage, LIMIT as i64);
    let q = EventQuery { metric_code: None, from: None, to: None, limit: 1_000, after: None, kind: None };
    assert_eq!(a.get_events_for_metric(&tenant("acme"), &q).await.unwrap().len(), LIMIT);
}

#[tokio::test]
async fn the_temp_file_goes_with_the_last_clone() {
    let store = SqliteStore::open_temp_file().await.unwrap();
    let file = database_file(&store).await;
    let clone = store.clone();
    drop(store);
    assert!(file.exists());
    assert!(clone.find_tenant(&tenant("acme")).await.unwrap().is_none());
    drop(clone);
    assert!(!file.exists());
    assert!(!Path::new(&format!("{}-wal", file.display())).exists());
}

#[tokio::test]
async fn urls_and_bare_paths_open_the_same_file_and_memory_is_refused() {
    let path = TempPath::new();
    let a = SqliteStore::open(&path.url()).await.unwrap();
    a.put_tenant(&tenant("acme"), &Name::parse("Acme").unwrap(), now()).await.unwrap();
    for url in [format!("sqlite:{}", path.0.display()), path.0.display().to_string()] {
        let b = SqliteStore::open(&url).await.unwrap();
        assert!(b.find_tenant(&tenant("acme")).await.unwrap().is_some(), "{url}");
    }
    for url in ["sqlite::memory:", ":memory:", "sqlite://"] {
        assert!(SqliteStore::open(url).await.is_err(), "{url}");
    }
}

#[tokio::test]
async fn rows_changed_behind_tallys_back_are_corrupt_never_a_panic() {
    let store = SqliteStore::open_temp_file().await.unwrap();
    setup(
        &store,
        "acme",
        "pro",
        vec![limit("api_calls", Some(10), LimitEnforcement::Hard, PeriodKind::Month)],
    )
    .await;
    apply_one(&store, req("acme", "api_calls", 1)).await.unwrap();
    let pool = store.pool();
    let corrupt = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Corrupt(_)));

    sqlx::query("UPDATE quota_usage_event SET metadata = 'not json'").execute(pool).await.unwrap();
    let q = EventQuery { metric_code: None, from: None, to: None, limit: 10, after: None, kind: None };
    assert!(corrupt(store.get_events_for_metric(&tenant("acme"), &q).await.map(|_| ())));

    sqlx::query("UPDATE quota_usage_record SET current_usage = 'many'").execute(pool).await.unwrap();
    let found = store.get_current_period(&tenant("acme"), &metric("api_calls"), now()).await;
    assert!(corrupt(found.map(|_| ())));

    sqlx::query("UPDATE tally_plan SET limits = '[{\"metric_code\":\"api_calls\",\"limit\":-1,\"enforcement\":\"hard\",\"period\":\"month\"}]'")
        .execute(pool)
        .await
        .unwrap();
    assert!(corrupt(store.find_plan(&tally_contract::plan_code("pro")).await.map(|_| ())));
    // The hot path reads the same plan: the batch fails as a whole, and writes nothing.
    let err = store.apply_usage(&[req("acme", "api_calls", 1)], now()).await;
    assert!(matches!(err, Err(StoreError::Corrupt(_))), "{err:?}");
    assert_eq!(scalar_i64(&store, "SELECT COUNT(*) FROM quota_usage_event").await, 1);

    sqlx::query("UPDATE tally_tenant SET name = ''").execute(pool).await.unwrap();
    assert!(corrupt(store.find_tenant(&tenant("acme")).await.map(|_| ())));
}

#[tokio::test]
async fn save_refuses_an_id_that_names_another_tenants_record() {
    let store = SqliteStore::open_temp_file().await.unwrap();
    setup(
        &store,
        "acme",
        "pro",
        vec![limit("api_calls", Some(10), LimitEnforcement::Hard, PeriodKind::Month)],
    )
    .await;
    apply_one(&store, req("acme", "api_calls", 3)).await.unwrap();
    let acme = store.get_current_period(&tenant("acme"), &metric("api_calls"), now()).await.unwrap();
    let stolen = UsageRecord { tenant_id: tenant("beta"), current_usage: 0, ..acme.clone() };
    assert!(matches!(store.save(&stolen).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.get_by_id(&tenant("acme"), acme.id).await.unwrap(), acme);
}
