//! The adapter's own tests: migrations per schema, tenancy, and tenant ids that never reach
//! SQL as anything but bound parameters.

use std::time::{Duration, Instant};

use sqlx::AssertSqlSafe;
use tally_contract::{self as contract, WriteExt, apply_one, keyed, now, req, setup};
use tally_domain::{Name, PlanCode, TenantId};
use tally_store::{
    AuditStore, ConfigVersion, PlanStore, SchemaReport, StoreError, TenantStore, UsageRepository, UsageWriter,
};
use tally_store_postgres::{CONNECT_TIMEOUT, PUBLIC_SET, PgConfig, PgStore, TENANT_SET, Tenancy};
use uuid::Uuid;

fn quiet(_: &SchemaReport) {}

/// A configuration for a base schema nobody has used yet.
fn fresh_config(tenancy: Tenancy) -> PgConfig {
    let mut config = PgConfig::new(&tally_store_postgres::test_database_url(), tenancy);
    config.base_schema = format!("t_{}", Uuid::now_v7().simple());
    config
}

fn config_of(store: &PgStore, tenancy: Tenancy) -> PgConfig {
    let mut config = PgConfig::new(&tally_store_postgres::test_database_url(), tenancy);
    config.base_schema = store.base_schema().to_owned();
    config
}

async fn create_tenants(store: &PgStore, ids: &[&str]) -> Vec<tally_domain::Tenant> {
    let mut tenants = Vec::new();
    for id in ids {
        let tid = TenantId::parse(id).expect("a valid tenant id");
        let name = Name::parse(id).expect("a valid name");
        let put = store.put_tenant(&tid, &name, now()).await.expect("put_tenant");
        tenants.push(put.into_inner());
    }
    tenants
}

async fn tables_in(store: &PgStore, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name",
    )
    .bind(schema)
    .fetch_all(store.pool())
    .await
    .expect("information_schema answers")
}

async fn run(store: &PgStore, target: Option<i64>) -> Vec<SchemaReport> {
    store.migrate(target, &quiet).await.expect("migrate")
}

#[tokio::test]
async fn migrating_twice_changes_nothing() {
    for tenancy in [Tenancy::Shared, Tenancy::Schema] {
        let store = PgStore::open_test(tenancy).await;
        create_tenants(&store, &["acme", "beta"]).await;
        let reports = run(&store, None).await;
        let expected_schemas = if tenancy == Tenancy::Shared { 1 } else { 3 };
        assert_eq!(reports.len(), expected_schemas, "{tenancy}");
        for r in &reports {
            assert_eq!((r.applied, &r.error), (0, &None), "{tenancy} {}", r.schema);
        }
        assert_eq!(reports[0].version, PUBLIC_SET.latest_version());
        for r in &reports[1..] {
            assert_eq!(r.version, TENANT_SET.latest_version());
        }
        assert_eq!(store.schema_version().await.unwrap(), PUBLIC_SET.latest_version());
    }
}

#[tokio::test]
async fn concurrent_migrators_apply_each_migration_once() {
    for tenancy in [Tenancy::Shared, Tenancy::Schema] {
        let config = fresh_config(tenancy);
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(PgStore::connect(config.clone()).await.unwrap());
        }
        assert_eq!(stores[0].schema_version().await.unwrap(), 0, "nothing is migrated by connect");
        let runs = futures::future::join_all(stores.iter().map(|s| s.migrate(None, &quiet))).await;
        let mut applied = 0;
        for reports in runs {
            let reports = reports.unwrap();
            assert_eq!(reports.len(), 1);
            assert_eq!((reports[0].version, &reports[0].error), (PUBLIC_SET.latest_version(), &None));
            applied += reports[0].applied;
        }
        let per_base = PUBLIC_SET.migrations.len()
            + if tenancy == Tenancy::Shared { TENANT_SET.migrations.len() } else { 0 };
        assert_eq!(applied as usize, per_base, "{tenancy}: every migration applied exactly once");
        let tracked: i64 = sqlx::query_scalar("SELECT count(*) FROM tally_schema_migrations")
            .fetch_one(stores[0].pool())
            .await
            .unwrap();
        assert_eq!(tracked as usize, per_base);
    }
}

#[tokio::test]
async fn schema_tenancy_keeps_each_tenants_tables_in_its_own_schema() {
    let store = PgStore::open_test(Tenancy::Schema).await;
    let tenants = create_tenants(&store, &["acme", "beta", "gamma"]).await;
    let reports = run(&store, None).await;
    assert_eq!(reports.len(), 1 + 3);
    assert_eq!((reports[0].schema.as_str(), &reports[0].tenant_id), (store.base_schema(), &None));
    for (report, tenant) in reports[1..].iter().zip(&tenants) {
        assert_eq!(report.schema, tenant.schema_name());
        assert_eq!(report.tenant_id.as_ref(), Some(&tenant.tenant_id));
        assert!(report.schema.starts_with("tenant_") && report.schema.len() == "tenant_".len() + 16);
        let tables = tables_in(&store, &report.schema).await;
        assert_eq!(tables, ["quota_usage_event", "quota_usage_record", "tally_schema_migrations"]);
    }
    let base_tables = tables_in(&store, store.base_schema()).await;
    assert!(base_tables.iter().all(|t| !t.starts_with("quota_")), "{base_tables:?}");
    assert!(base_tables.contains(&"tally_tenant".to_owned()));
    // Like reservations, webhooks and their outbox stay in the base schema.
    for table in ["tally_reservation", "tally_webhook", "tally_webhook_state", "tally_webhook_delivery"] {
        assert!(base_tables.contains(&table.to_owned()), "{table} in {base_tables:?}");
    }

    let shared = PgStore::open_test(Tenancy::Shared).await;
    let shared_tables = tables_in(&shared, shared.base_schema()).await;
    assert!(shared_tables.contains(&"quota_usage_record".to_owned()), "{shared_tables:?}");
}

#[tokio::test]
async fn a_staged_rollout_applies_the_newest_migration_in_a_second_pass() {
    let store = PgStore::open_test(Tenancy::Schema).await;
    let tenants = create_tenants(&store, &["acme", "beta", "gamma"]).await;
    // Start the tenant schemas over from nothing, behind Tally's back.
    for t in &tenants {
        let sql = format!("DROP SCHEMA \"{}\" CASCADE", t.schema_name());
        sqlx::query(AssertSqlSafe(sql)).execute(store.pool()).await.unwrap();
    }
    let first = run(&store, Some(1)).await;
    assert_eq!(first.len(), 4);
    assert_eq!(first[0].applied, 0);
    for r in &first[1..] {
        assert_eq!((r.applied, r.version, &r.error), (1, 1, &None), "{}", r.schema);
    }
    let second = run(&store, None).await;
    let rest = u32::try_from(TENANT_SET.migrations.len() - 1).unwrap();
    for r in &second[1..] {
        assert_eq!(
            (r.applied, r.version, &r.error),
            (rest, TENANT_SET.latest_version(), &None),
            "{}",
            r.schema
        );
    }
    assert!(run(&store, None).await.iter().all(|r| r.applied == 0));

    // In shared tenancy the base schema takes the tenant set.
    let shared = PgStore::connect(fresh_config(Tenancy::Shared)).await.unwrap();
    let first = run(&shared, Some(1)).await;
    assert_eq!(first[0].applied as usize, PUBLIC_SET.migrations.len() + 1);
    let second = run(&shared, None).await;
    assert_eq!(second[0].applied, rest);
}

#[tokio::test]
async fn a_failing_schema_is_named_and_the_others_still_migrate() {
    let store = PgStore::open_test(Tenancy::Schema).await;
    let tenants = create_tenants(&store, &["acme", "beta", "gamma"]).await;
    // Every schema has its newest migration pending; beta's tracking table is gone, so
    // migration 1 runs again there and collides with the tables it created long ago.
    for t in &tenants {
        let schema = t.schema_name();
        let sql = format!(
            "DROP INDEX \"{schema}\".quota_usage_event_tenant_ts_idx;
             DELETE FROM \"{schema}\".tally_schema_migrations WHERE version = 2;"
        );
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(store.pool()).await.unwrap();
    }
    let broken = tenants[1].schema_name();
    let sql = format!("DROP TABLE \"{broken}\".tally_schema_migrations");
    sqlx::query(AssertSqlSafe(sql)).execute(store.pool()).await.unwrap();

    let seen = std::sync::Mutex::new(Vec::new());
    let reports = store.migrate(None, &|r| seen.lock().unwrap().push(r.schema.clone())).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 4, "progress after each schema");
    let failed: Vec<&SchemaReport> = reports.iter().filter(|r| r.error.is_some()).collect();
    assert_eq!(failed.len(), 1, "{reports:?}");
    assert_eq!(failed[0].schema, broken);
    assert_eq!(failed[0].tenant_id, Some(tenants[1].tenant_id.clone()));
    assert!(failed[0].error.as_deref().unwrap().contains("quota_usage_record"), "{:?}", failed[0].error);
    for r in reports.iter().filter(|r| r.error.is_none() && r.tenant_id.is_some()) {
        assert_eq!((r.applied, r.version), (1, TENANT_SET.latest_version()), "{}", r.schema);
    }
}

#[tokio::test]
async fn hostile_tenant_ids_are_refused_and_odd_ones_work_end_to_end() {
    assert!(TenantId::parse("a\"; DROP TABLE x; --").is_err());
    assert!(TenantId::parse("tenant_1\"").is_err());
    let store = PgStore::open_test(Tenancy::Schema).await;
    let odd = "a.b-c_d";
    setup(
        &store,
        odd,
        "pro",
        vec![contract::limit(
            "api_calls",
            Some(10),
            tally_domain::LimitEnforcement::Hard,
            tally_domain::PeriodKind::Month,
        )],
    )
    .await;
    let out = apply_one(&store, keyed(req(odd, "api_calls", 3), "k-1")).await.unwrap();
    assert_eq!(out.current_usage, 3);
    assert!(apply_one(&store, keyed(req(odd, "api_calls", 3), "k-1")).await.unwrap().replayed);
    let tid = TenantId::parse(odd).unwrap();
    let record = store.get_current_period(&tid, &contract::metric("api_calls"), now()).await.unwrap();
    assert_eq!(record.current_usage, 3);
    let tenant = store.find_tenant(&tid).await.unwrap().unwrap();
    let schema = tenant.schema_name();
    let sql = format!("SELECT tenant_id FROM \"{schema}\".quota_usage_record");
    let owners: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql)).fetch_all(store.pool()).await.unwrap();
    assert_eq!(owners, [odd]);
    let named_after_the_id: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE strpos(nspname, 'a.b-c_d') > 0")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(schema, format!("tenant_{:016x}", tenant.internal_id));
    assert_eq!(named_after_the_id, 0, "no schema is named from the external id");
}

#[tokio::test]
async fn a_batch_across_tenants_lands_in_each_tenants_schema() {
    let store = PgStore::open_test(Tenancy::Schema).await;
    let hard = |v| {
        contract::limit(
            "api_calls",
            Some(v),
            tally_domain::LimitEnforcement::Hard,
            tally_domain::PeriodKind::Month,
        )
    };
    setup(&store, "acme", "pro", vec![hard(10)]).await;
    setup(&store, "beta", "pro", vec![hard(10)]).await;
    let batch = [
        req("beta", "api_calls", 2),
        keyed(req("acme", "api_calls", 1), "same-key"),
        req("ghost", "api_calls", 1),
        keyed(req("beta", "api_calls", 4), "same-key"),
        req("acme", "api_calls", 20),
    ];
    let out = store.apply_usage(&batch, now()).await.unwrap();
    assert_eq!(out[0].as_ref().map(|o| o.current_usage), Ok(2));
    assert_eq!(out[1].as_ref().map(|o| o.current_usage), Ok(1));
    assert!(matches!(out[2], Err(tally_domain::UsageError::TenantNotFound { .. })));
    assert_eq!(out[3].as_ref().map(|o| (o.current_usage, o.replayed)), Ok((6, false)));
    assert!(matches!(out[4], Err(tally_domain::UsageError::QuotaExceeded { .. })));
    for (id, usage) in [("acme", 1), ("beta", 6)] {
        let tenant = store.find_tenant(&TenantId::parse(id).unwrap()).await.unwrap().unwrap();
        let sql =
            format!("SELECT tenant_id, current_usage FROM \"{}\".quota_usage_record", tenant.schema_name());
        let rows: Vec<(String, i64)> =
            sqlx::query_as(AssertSqlSafe(sql)).fetch_all(store.pool()).await.unwrap();
        assert_eq!(rows, [(id.to_owned(), usage)]);
    }
}

#[tokio::test]
async fn the_seed_index_names_and_the_unique_constraints_exist() {
    for tenancy in [Tenancy::Shared, Tenancy::Schema] {
        let store = PgStore::open_test(tenancy).await;
        let tenants = create_tenants(&store, &["acme"]).await;
        let schema = if tenancy == Tenancy::Shared {
            store.base_schema().to_owned()
        } else {
            tenants[0].schema_name()
        };
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
        )
        .bind(&schema)
        .fetch_all(store.pool())
        .await
        .unwrap();
        for name in [
            "quota_usage_record_tenant_metric_idx",
            "quota_usage_record_tenant_period_idx",
            "quota_usage_event_tenant_metric_idx",
            "quota_usage_event_tenant_ts_idx",
            "quota_usage_event_created_idx",
            "quota_usage_record_created_idx",
        ] {
            assert!(indexes.contains(&name.to_owned()), "{tenancy}: {name} in {indexes:?}");
        }
        let created_idx: String = sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = 'quota_usage_event_created_idx'",
        )
        .bind(&schema)
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert!(created_idx.ends_with("(created_at DESC, id DESC)"), "{created_idx}");
        let base_indexes: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
        )
        .bind(store.base_schema())
        .fetch_all(store.pool())
        .await
        .unwrap();
        for name in [
            "tally_admin_session_pkey",
            "tally_admin_session_expires_idx",
            "tally_webhook_delivery_due_idx",
            "tally_webhook_delivery_log_idx",
        ] {
            assert!(base_indexes.contains(&name.to_owned()), "{tenancy}: {name} in {base_indexes:?}");
        }
        let uniques: Vec<String> = sqlx::query_scalar(
            "SELECT c.conname::text FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
              WHERE n.nspname = $1 AND c.contype = 'u' ORDER BY c.conname",
        )
        .bind(&schema)
        .fetch_all(store.pool())
        .await
        .unwrap();
        for name in ["quota_usage_event_idem_uq", "quota_usage_record_uq"] {
            assert!(uniques.contains(&name.to_owned()), "{tenancy}: {name} in {uniques:?}");
        }
    }
}

#[tokio::test]
async fn the_other_tenancy_is_refused() {
    let store = PgStore::open_test(Tenancy::Shared).await;
    let err = PgStore::connect(config_of(&store, Tenancy::Schema)).await.unwrap_err();
    assert!(matches!(&err, StoreError::Other(m) if m.contains("tenancy")), "{err:?}");
    assert!(PgStore::connect(config_of(&store, Tenancy::Shared)).await.is_ok());

    // Two binaries reach a fresh database with different tenancies: the second to migrate loses.
    let config = fresh_config(Tenancy::Schema);
    let as_schema = PgStore::connect(config.clone()).await.unwrap();
    let as_shared = PgStore::connect(PgConfig { tenancy: Tenancy::Shared, ..config }).await.unwrap();
    as_schema.migrate(None, &quiet).await.unwrap();
    let err = as_shared.migrate(None, &quiet).await.unwrap_err();
    assert!(matches!(&err, StoreError::Other(m) if m.contains("tenancy")), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_within_the_connect_timeout() {
    let mut config =
        PgConfig::new("postgres://postgres@127.0.0.1:1/tally_test?sslmode=disable", Tenancy::Shared);
    config.base_schema = "public".to_owned();
    let started = Instant::now();
    let err = PgStore::connect(config).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn bad_stored_data_is_corrupt_not_a_panic() {
    let store = PgStore::open_test(Tenancy::Shared).await;
    setup(&store, "acme", "pro", vec![]).await;
    sqlx::query("UPDATE tally_plan SET limits = '[{\"metric_code\": \"Bad Code\"}]'::jsonb")
        .execute(store.pool())
        .await
        .unwrap();
    let err = store.find_plan(&PlanCode::parse("pro").unwrap()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let err = store.apply_usage(&[req("acme", "api_calls", 1)], now()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    sqlx::query("INSERT INTO tally_override VALUES ('acme', 'api_calls', -5, 'hard', 'month')")
        .execute(store.pool())
        .await
        .unwrap();
    let err = store.list_overrides(&TenantId::parse("acme").unwrap()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

#[tokio::test]
async fn concurrent_plan_puts_create_once_and_version_without_gaps() {
    use tally_domain::{AuditAction, LimitEnforcement, PeriodKind};
    let store = PgStore::open_test(Tenancy::Shared).await;
    let code = PlanCode::parse("pro").unwrap();
    let spec = |v| {
        contract::spec(
            "Pro",
            vec![contract::limit("api_calls", Some(v), LimitEnforcement::Hard, PeriodKind::Month)],
        )
    };
    let puts = (0..8).map(|_| {
        let (store, code, spec) = (store.clone(), code.clone(), spec(1));
        async move {
            store.put_plan(&code, &spec, now(), &contract::audit(AuditAction::PlanPut, None)).await.unwrap()
        }
    });
    let outcomes = futures::future::join_all(puts).await;
    assert_eq!(outcomes.iter().filter(|o| o.is_created()).count(), 1, "{outcomes:?}");
    let puts = (2..10).map(|v| {
        let (store, code, spec) = (store.clone(), code.clone(), spec(v));
        async move {
            store.put_plan(&code, &spec, now(), &contract::audit(AuditAction::PlanPut, None)).await.unwrap()
        }
    });
    futures::future::join_all(puts).await;
    let versions: Vec<i64> =
        store.list_plan_versions(&code).await.unwrap().iter().map(|p| p.version).collect();
    assert_eq!(versions, (1..=9).rev().collect::<Vec<i64>>());
    let audited = store.list_audit(None, None, 100).await.unwrap();
    assert_eq!(audited.len(), 9, "one audit entry per change, none for the equal puts");
}

#[tokio::test]
async fn resetting_an_unknown_tenant_is_not_found_in_both_tenancies() {
    for tenancy in [Tenancy::Shared, Tenancy::Schema] {
        let store = PgStore::open_test(tenancy).await;
        let period = tally_domain::PeriodKind::Month.containing(now(), contract::anchor()).unwrap();
        let err = store
            .reset_usage(
                &TenantId::parse("ghost").unwrap(),
                &contract::metric("api_calls"),
                period,
                now(),
                None,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{tenancy}: {err:?}");
        assert!(store.list_audit(None, None, 10).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_config_version_is_one_row_read_without_waiting_for_writers() {
    for tenancy in [Tenancy::Shared, Tenancy::Schema] {
        let store = PgStore::open_test(tenancy).await;
        assert_eq!(store.config_version().await.unwrap(), 0, "{tenancy}");
        setup(
            &store,
            "acme",
            "pro",
            vec![contract::limit(
                "api_calls",
                Some(10),
                tally_domain::LimitEnforcement::Hard,
                tally_domain::PeriodKind::Month,
            )],
        )
        .await;
        // A plan, a tenant (in schema tenancy, with its schema) and a subscription.
        assert_eq!(store.config_version().await.unwrap(), 3, "{tenancy}");
        apply_one(&store, req("acme", "api_calls", 1)).await.unwrap();
        assert_eq!(store.config_version().await.unwrap(), 3, "{tenancy}: usage leaves it alone");
        let second_row = sqlx::query("INSERT INTO tally_config_version (id, version) VALUES (2, 0)")
            .execute(store.pool())
            .await;
        assert!(second_row.is_err(), "{tenancy}: there is only ever the one row");

        // A writer holds the row's lock, and every pooled connection is taken: the version
        // is read all the same, at once.
        let mut writer = store.pool().begin().await.unwrap();
        sqlx::query("UPDATE tally_config_version SET version = version + 1")
            .execute(&mut *writer)
            .await
            .unwrap();
        let mut held = Vec::new();
        while let Ok(conn) = tokio::time::timeout(Duration::from_millis(200), store.pool().acquire()).await {
            held.push(conn.unwrap());
        }
        let read = tokio::time::timeout(Duration::from_secs(1), store.config_version()).await;
        assert_eq!(read.expect("the read waits for nobody").unwrap(), 3, "{tenancy}");
        drop(held);
        writer.rollback().await.unwrap();
    }
}
