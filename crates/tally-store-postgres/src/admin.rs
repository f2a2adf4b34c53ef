//! Plans, tenants, subscriptions, overrides, API keys and the audit log: the base schema's
//! tables. Every admin mutation writes its audit entry in the transaction of the change,
//! and only when something changed.

use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection};
use tally_domain::quota::schema_name_for;
use tally_domain::{
    ApiKey, AuditEntry, CloseAfter, MetricCode, Name, Override, Plan, PlanCode, PlanSpec, QuotaLimit,
    Subscription, Tenant, TenantId, Timestamp,
};
use tally_store::{
    AuditStore, ConfigVersion, EntitlementLookup, KeyStore, PlanStore, PutOutcome, StoreError, TenantStore,
    VerifyInputs,
};
use uuid::Uuid;

use crate::migrate::create_tenant_schema_sql;
use crate::rows::{
    AUDIT_COLUMNS, KEY_COLUMNS, OVERRIDE_COLUMNS, PLAN_COLUMNS, SUBSCRIPTION_COLUMNS, TENANT_COLUMNS,
    audit_from_row, get, key_from_row, map_err, override_from_row, plan_from_row, subscription_from_row,
    tenant_from_row,
};
use crate::scope::internal_id_to_db;
use crate::usage::{list_limit, load_entitlements, verify_inputs};
use crate::{PgStore, StatementLog, Tenancy};

/// Rows a "list every ..." call returns at most (plans, plan versions, keys, overrides):
/// admin-made rows that never come near this many.
pub(crate) const WHOLE_LIST_LEN_MAX: i64 = 10_000;

/// Passes a create-or-update makes at most: the second one finds the row that a
/// concurrent first writer created meanwhile.
pub(crate) const UPSERT_PASSES_MAX: usize = 2;

/// What one pass of `upsert_config` found and did.
pub(crate) enum UpsertPass<T> {
    /// The stored row already says this: the transaction is rolled back, nothing is audited.
    Unchanged(T),
    /// Updated or inserted; the audit entry and the configuration version follow.
    Written(PutOutcome<T>),
    /// The insert met a row a concurrent put created after the lock found none: lock it and
    /// compare again.
    Raced,
}

/// The shape of every configuration put (plans, metrics, webhooks): in one transaction, lock
/// the row (`SELECT ... FOR UPDATE`) and compare, then update it or insert it (`ON CONFLICT
/// DO NOTHING`), in at most `UPSERT_PASSES_MAX` passes; a write is audited and bumps the
/// configuration version in the same transaction. `$pass` is one lock-compare-write on
/// `$conn`, answering an `UpsertPass` (`return` leaves the pass). A macro rather than a
/// function taking an async closure, whose future could not be named `Send` for the store
/// traits.
macro_rules! upsert_config {
    ($store:expr, $audit:expr, |$conn:ident| $pass:block) => {{
        let store = $store;
        let mut tx = store.log.begin(store.pool(), "BEGIN").await.map_err($crate::rows::map_err)?;
        let mut outcome = Err(tally_store::StoreError::Retry);
        for _ in 0..$crate::admin::UPSERT_PASSES_MAX {
            let $conn: &mut sqlx::PgConnection = &mut tx;
            let pass: Result<$crate::admin::UpsertPass<_>, tally_store::StoreError> = async { $pass }.await;
            match pass? {
                $crate::admin::UpsertPass::Unchanged(current) => {
                    store.log.rollback(tx).await.map_err($crate::rows::map_err)?;
                    outcome = Ok(tally_store::PutOutcome::Unchanged(current));
                    break;
                }
                $crate::admin::UpsertPass::Raced => {}
                $crate::admin::UpsertPass::Written(written) => {
                    $crate::admin::insert_audit(&store.log, &mut tx, $audit).await?;
                    $crate::admin::bump_config_version(&store.log, &mut tx).await?;
                    store.log.commit(tx).await.map_err($crate::rows::map_err)?;
                    outcome = Ok(written);
                    break;
                }
            }
        }
        outcome
    }};
}
pub(crate) use upsert_config;

/// Writes `audit` in the caller's transaction. An entry whose id is taken already (the
/// same `AuditEntry` passed to a second mutation) is written again under a fresh v7 id:
/// every change keeps its own line in the log.
pub(crate) async fn insert_audit(
    log: &StatementLog,
    conn: &mut PgConnection,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    let sql =
        "INSERT INTO tally_audit (id, at, key_id, action, tenant_id, details) VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (id) DO NOTHING";
    for id in [audit.id, Uuid::now_v7()] {
        let done = log
            .query(sql)
            .bind(id)
            .bind(audit.at)
            .bind(audit.key_id)
            .bind(audit.action.as_str())
            .bind(audit.tenant_id.as_ref().map(TenantId::as_str))
            .bind(Json(&audit.details))
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
    }
    Err(StoreError::Conflict("tally_audit_pkey".to_owned()))
}

/// Raises the configuration version in the caller's transaction: every change to a plan,
/// tenant, subscription, override or key calls it once, as its last statement before the
/// commit, so that the row lock it takes (which orders concurrent changes) is held briefly
/// and always taken last.
pub(crate) async fn bump_config_version(
    log: &StatementLog,
    conn: &mut PgConnection,
) -> Result<(), StoreError> {
    let done = log
        .query("UPDATE tally_config_version SET version = version + 1 WHERE id = 1")
        .execute(conn)
        .await
        .map_err(map_err)?;
    if done.rows_affected() != 1 {
        return Err(StoreError::Corrupt("tally_config_version has lost its row".to_owned()));
    }
    Ok(())
}

/// Keeps `plan` as a version in its history.
async fn insert_plan_version(
    log: &StatementLog,
    conn: &mut PgConnection,
    plan: &Plan,
) -> Result<(), StoreError> {
    log.query(
        "INSERT INTO tally_plan_version (code, version, name, limits, created_at, updated_at, close_after_seconds)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(plan.code.as_str())
    .bind(plan.version)
    .bind(plan.name.as_str())
    .bind(Json(&plan.limits))
    .bind(plan.created_at)
    .bind(plan.updated_at)
    .bind(plan.close_after.map(CloseAfter::seconds))
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

fn plan_not_found(code: &PlanCode) -> StoreError {
    StoreError::not_found(format!("plan {code}"))
}

fn tenant_not_found(tenant: &TenantId) -> StoreError {
    StoreError::not_found(format!("tenant {tenant}"))
}

/// Whether the tenant exists, in the caller's transaction.
pub(crate) async fn tenant_exists(
    log: &StatementLog,
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<bool, StoreError> {
    log.query_scalar::<bool>("SELECT EXISTS (SELECT 1 FROM tally_tenant WHERE tenant_id = $1)")
        .bind(tenant.as_str())
        .fetch_one(conn)
        .await
        .map_err(map_err)
}

impl PlanStore for PgStore {
    async fn put_plan(
        &self,
        code: &PlanCode,
        spec: &PlanSpec,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<PutOutcome<Plan>, StoreError> {
        upsert_config!(self, audit, |conn| {
            let sql = format!("SELECT {PLAN_COLUMNS} FROM tally_plan WHERE code = $1 FOR UPDATE");
            let existing = self
                .log
                .query(AssertSqlSafe(sql))
                .bind(code.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
            let existing = existing.as_ref().map(plan_from_row).transpose()?;
            if let Some(old) = existing.as_ref().filter(|old| old.matches(spec)) {
                return Ok(UpsertPass::Unchanged(old.clone()));
            }
            // The same values either way: update the locked row, or insert a new one.
            let sql = if existing.is_some() {
                format!(
                    "UPDATE tally_plan SET name = $2, limits = $3, version = version + 1, updated_at = $4,
                            close_after_seconds = $5
                      WHERE code = $1 RETURNING {PLAN_COLUMNS}"
                )
            } else {
                format!(
                    "INSERT INTO tally_plan (code, name, limits, version, created_at, updated_at, close_after_seconds)
                     VALUES ($1, $2, $3, 1, $4, $4, $5) ON CONFLICT (code) DO NOTHING RETURNING {PLAN_COLUMNS}"
                )
            };
            let row = self
                .log
                .query(AssertSqlSafe(sql))
                .bind(code.as_str())
                .bind(spec.name.as_str())
                .bind(Json(&spec.limits))
                .bind(now)
                .bind(spec.close_after.map(CloseAfter::seconds))
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
            let Some(row) = row else { return Ok(UpsertPass::Raced) };
            let plan = plan_from_row(&row)?;
            insert_plan_version(&self.log, conn, &plan).await?;
            Ok(UpsertPass::Written(if existing.is_some() {
                PutOutcome::Updated(plan)
            } else {
                PutOutcome::Created(plan)
            }))
        })
    }

    async fn find_plan(&self, code: &PlanCode) -> Result<Option<Plan>, StoreError> {
        let sql = format!("SELECT {PLAN_COLUMNS} FROM tally_plan WHERE code = $1");
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(code.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(map_err)?;
        row.as_ref().map(plan_from_row).transpose()
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        let sql = format!("SELECT {PLAN_COLUMNS} FROM tally_plan ORDER BY code LIMIT $1");
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(WHOLE_LIST_LEN_MAX)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        rows.iter().map(plan_from_row).collect()
    }

    async fn list_plan_versions(&self, code: &PlanCode) -> Result<Vec<Plan>, StoreError> {
        let sql = format!(
            "SELECT {PLAN_COLUMNS} FROM tally_plan_version WHERE code = $1 ORDER BY version DESC LIMIT $2"
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(code.as_str())
            .bind(WHOLE_LIST_LEN_MAX)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        rows.iter().map(plan_from_row).collect()
    }

    async fn delete_plan(&self, code: &PlanCode, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        let found = self
            .log
            .query("SELECT code FROM tally_plan WHERE code = $1 FOR UPDATE")
            .bind(code.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if found.is_none() {
            return Err(plan_not_found(code));
        }
        let subscribers: i64 = self
            .log
            .query_scalar("SELECT count(*) FROM tally_subscription WHERE plan_code = $1")
            .bind(code.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if subscribers > 0 {
            return Err(StoreError::Conflict(format!("plan {code} has {subscribers} subscribers")));
        }
        self.log
            .query("DELETE FROM tally_plan WHERE code = $1")
            .bind(code.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        self.log
            .query("DELETE FROM tally_plan_version WHERE code = $1")
            .bind(code.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_audit(&self.log, &mut tx, audit).await?;
        bump_config_version(&self.log, &mut tx).await?;
        self.log.commit(tx).await.map_err(map_err)
    }
}

impl TenantStore for PgStore {
    async fn put_tenant(
        &self,
        tenant_id: &TenantId,
        name: &Name,
        now: Timestamp,
    ) -> Result<PutOutcome<Tenant>, StoreError> {
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        let internal_id = Uuid::new_v4().as_u64_pair().0;
        let sql = format!(
            "INSERT INTO tally_tenant AS t (tenant_id, name, internal_id, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id) DO UPDATE SET name = EXCLUDED.name WHERE t.name IS DISTINCT FROM EXCLUDED.name
             RETURNING {TENANT_COLUMNS}, (t.xmax = 0) AS created"
        );
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant_id.as_str())
            .bind(name.as_str())
            .bind(internal_id_to_db(internal_id))
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let Some(row) = row else {
            // The tenant exists with this name already.
            let sql = format!("SELECT {TENANT_COLUMNS} FROM tally_tenant WHERE tenant_id = $1");
            let row = self
                .log
                .query(AssertSqlSafe(sql))
                .bind(tenant_id.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
            self.log.rollback(tx).await.map_err(map_err)?;
            return Ok(PutOutcome::Unchanged(tenant_from_row(&row)?));
        };
        let tenant = tenant_from_row(&row)?;
        let created: bool = get(&row, "created")?;
        if created && self.tenancy() == Tenancy::Schema {
            let sql = create_tenant_schema_sql(&schema_name_for(tenant.internal_id), self.base_schema());
            self.log.raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await.map_err(map_err)?;
        }
        bump_config_version(&self.log, &mut tx).await?;
        self.log.commit(tx).await.map_err(map_err)?;
        Ok(if created { PutOutcome::Created(tenant) } else { PutOutcome::Updated(tenant) })
    }

    async fn find_tenant(&self, tenant_id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tally_tenant WHERE tenant_id = $1");
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant_id.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(map_err)?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn list_tenants(&self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>, StoreError> {
        let sql = format!(
            "SELECT {TENANT_COLUMNS} FROM tally_tenant WHERE ($1::text IS NULL OR tenant_id > $1)
              ORDER BY tenant_id LIMIT $2"
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(after.map(TenantId::as_str))
            .bind(list_limit(limit))
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        rows.iter().map(tenant_from_row).collect()
    }

    async fn put_subscription(
        &self,
        tenant_id: &TenantId,
        plan: &PlanCode,
        anchor: Option<Timestamp>,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<Subscription, StoreError> {
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        let row = self
            .log
            .query(
                "SELECT EXISTS (SELECT 1 FROM tally_tenant WHERE tenant_id = $1) AS tenant_found,
                    EXISTS (SELECT 1 FROM tally_plan WHERE code = $2) AS plan_found",
            )
            .bind(tenant_id.as_str())
            .bind(plan.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if !get::<bool>(&row, "tenant_found")? {
            return Err(tenant_not_found(tenant_id));
        }
        if !get::<bool>(&row, "plan_found")? {
            return Err(plan_not_found(plan));
        }
        for _ in 0..UPSERT_PASSES_MAX {
            let sql = format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM tally_subscription WHERE tenant_id = $1 FOR UPDATE"
            );
            let existing = self
                .log
                .query(AssertSqlSafe(sql))
                .bind(tenant_id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            let subscription = match existing {
                None => {
                    let sql = format!(
                        "INSERT INTO tally_subscription (tenant_id, plan_code, anchor, started_at)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO NOTHING RETURNING {SUBSCRIPTION_COLUMNS}"
                    );
                    let row = self
                        .log
                        .query(AssertSqlSafe(sql))
                        .bind(tenant_id.as_str())
                        .bind(plan.as_str())
                        .bind(anchor.unwrap_or(now))
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    match row {
                        Some(row) => subscription_from_row(&row)?,
                        // A concurrent put subscribed the tenant meanwhile: lock it and compare.
                        None => continue,
                    }
                }
                Some(row) => {
                    let old = subscription_from_row(&row)?;
                    let new = Subscription {
                        tenant_id: tenant_id.clone(),
                        plan_code: plan.clone(),
                        anchor: anchor.unwrap_or(old.anchor),
                        started_at: if &old.plan_code == plan { old.started_at } else { now },
                    };
                    if new == old {
                        self.log.rollback(tx).await.map_err(map_err)?;
                        return Ok(old);
                    }
                    self.log
                        .query(
                            "UPDATE tally_subscription SET plan_code = $2, anchor = $3, started_at = $4
                          WHERE tenant_id = $1",
                        )
                        .bind(tenant_id.as_str())
                        .bind(new.plan_code.as_str())
                        .bind(new.anchor)
                        .bind(new.started_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    new
                }
            };
            insert_audit(&self.log, &mut tx, audit).await?;
            bump_config_version(&self.log, &mut tx).await?;
            self.log.commit(tx).await.map_err(map_err)?;
            return Ok(subscription);
        }
        Err(StoreError::Retry)
    }

    async fn find_subscription(&self, tenant_id: &TenantId) -> Result<Option<Subscription>, StoreError> {
        let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM tally_subscription WHERE tenant_id = $1");
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant_id.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(map_err)?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    async fn delete_subscription(&self, tenant_id: &TenantId, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        let deleted = self
            .log
            .query("DELETE FROM tally_subscription WHERE tenant_id = $1")
            .bind(tenant_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::not_found(format!("subscription of tenant {tenant_id}")));
        }
        insert_audit(&self.log, &mut tx, audit).await?;
        bump_config_version(&self.log, &mut tx).await?;
        self.log.commit(tx).await.map_err(map_err)
    }

    async fn list_subscribers(&self, plan: &PlanCode, limit: u32) -> Result<Vec<TenantId>, StoreError> {
        let ids: Vec<String> = self
            .log
            .query_scalar(
                "SELECT tenant_id FROM tally_subscription WHERE plan_code = $1 ORDER BY tenant_id LIMIT $2",
            )
            .bind(plan.as_str())
            .bind(list_limit(limit))
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        ids.iter().map(|id| TenantId::parse(id).map_err(StoreError::from)).collect()
    }

    async fn put_override(
        &self,
        tenant_id: &TenantId,
        limit: &QuotaLimit,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        if !tenant_exists(&self.log, &mut tx, tenant_id).await? {
            return Err(tenant_not_found(tenant_id));
        }
        let changed = self.log.query(
            "INSERT INTO tally_override AS o (tenant_id, metric_code, \"limit\", enforcement, period)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, metric_code) DO UPDATE
                SET \"limit\" = EXCLUDED.\"limit\", enforcement = EXCLUDED.enforcement, period = EXCLUDED.period
              WHERE (o.\"limit\", o.enforcement, o.period)
                    IS DISTINCT FROM (EXCLUDED.\"limit\", EXCLUDED.enforcement, EXCLUDED.period)",
        )
        .bind(tenant_id.as_str())
        .bind(limit.metric_code.as_str())
        .bind(limit.limit)
        .bind(limit.enforcement.as_str())
        .bind(limit.period.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if changed.rows_affected() == 0 {
            self.log.rollback(tx).await.map_err(map_err)?;
            return Ok(());
        }
        insert_audit(&self.log, &mut tx, audit).await?;
        bump_config_version(&self.log, &mut tx).await?;
        self.log.commit(tx).await.map_err(map_err)
    }

    async fn delete_override(
        &self,
        tenant_id: &TenantId,
        metric: &MetricCode,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        let deleted = self
            .log
            .query("DELETE FROM tally_override WHERE tenant_id = $1 AND metric_code = $2")
            .bind(tenant_id.as_str())
            .bind(metric.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::not_found(format!("override of {metric} for tenant {tenant_id}")));
        }
        insert_audit(&self.log, &mut tx, audit).await?;
        bump_config_version(&self.log, &mut tx).await?;
        self.log.commit(tx).await.map_err(map_err)
    }

    async fn list_overrides(&self, tenant_id: &TenantId) -> Result<Vec<Override>, StoreError> {
        let sql = format!(
            "SELECT {OVERRIDE_COLUMNS} FROM tally_override WHERE tenant_id = $1 ORDER BY metric_code LIMIT $2"
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant_id.as_str())
            .bind(WHOLE_LIST_LEN_MAX)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        rows.iter().map(override_from_row).collect()
    }

    async fn find_entitlement(&self, tenant_id: &TenantId) -> Result<EntitlementLookup, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(map_err)?;
        let mut found = load_entitlements(&self.log, &mut conn, std::slice::from_ref(tenant_id)).await?;
        Ok(found.remove(tenant_id).map_or(EntitlementLookup::TenantMissing, |(_, lookup)| lookup))
    }
}

impl KeyStore for PgStore {
    async fn insert_key(&self, key: &ApiKey, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        self.log.query(
            "INSERT INTO tally_api_key (id, key_hash, scope, tenant_id, created_at, last_used_at, revoked_at,
                                        rate_limit)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(key.id)
        .bind(key.key_hash.as_str())
        .bind(key.scope.kind())
        .bind(key.scope.tenant().map(TenantId::as_str))
        .bind(key.created_at)
        .bind(key.last_used_at)
        .bind(key.revoked_at)
        .bind(key.rate_limit.map(|r| r.to_string()))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(&self.log, &mut tx, audit).await?;
        bump_config_version(&self.log, &mut tx).await?;
        self.log.commit(tx).await.map_err(map_err)
    }

    async fn find_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM tally_api_key WHERE key_hash = $1");
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(key_hash)
            .fetch_optional(self.pool())
            .await
            .map_err(map_err)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM tally_api_key ORDER BY created_at, id LIMIT $1");
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(WHOLE_LIST_LEN_MAX)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_key(&self, id: Uuid, now: Timestamp, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        let revoked = self
            .log
            .query("UPDATE tally_api_key SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if revoked.rows_affected() == 0 {
            return Err(StoreError::not_found(format!("unrevoked key {id}")));
        }
        insert_audit(&self.log, &mut tx, audit).await?;
        bump_config_version(&self.log, &mut tx).await?;
        self.log.commit(tx).await.map_err(map_err)
    }

    async fn touch_key(&self, id: Uuid, now: Timestamp) -> Result<(), StoreError> {
        self.log
            .query(
                "UPDATE tally_api_key SET last_used_at = $2
              WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(id)
            .bind(now)
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

impl AuditStore for PgStore {
    async fn list_audit(
        &self,
        tenant_id: Option<&TenantId>,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        // Only the filters given reach SQL, so a tenant's page walks tally_audit_tenant_idx.
        let sql = match (tenant_id.is_some(), before.is_some()) {
            (false, false) => format!("SELECT {AUDIT_COLUMNS} FROM tally_audit ORDER BY id DESC LIMIT $1"),
            (true, false) => format!(
                "SELECT {AUDIT_COLUMNS} FROM tally_audit WHERE tenant_id = $2 ORDER BY id DESC LIMIT $1"
            ),
            (false, true) => {
                format!("SELECT {AUDIT_COLUMNS} FROM tally_audit WHERE id < $2 ORDER BY id DESC LIMIT $1")
            }
            (true, true) => format!(
                "SELECT {AUDIT_COLUMNS} FROM tally_audit WHERE tenant_id = $2 AND id < $3 ORDER BY id DESC LIMIT $1"
            ),
        };
        let mut q = self.log.query(AssertSqlSafe(sql)).bind(list_limit(limit));
        if let Some(tenant_id) = tenant_id {
            q = q.bind(tenant_id.as_str());
        }
        if let Some(before) = before {
            q = q.bind(before);
        }
        let rows = q.fetch_all(self.pool()).await.map_err(map_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn verify_inputs(&self) -> Result<VerifyInputs, StoreError> {
        verify_inputs(self).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.log.query("SELECT 1").execute(self.pool()).await.map_err(map_err)?;
        Ok(())
    }
}

impl ConfigVersion for PgStore {
    async fn config_version(&self) -> Result<i64, StoreError> {
        // One primary-key read on a connection of its own: a plain SELECT never waits for
        // the writers' row locks, nor, here, for a connection that they hold.
        self.log
            .query_scalar::<i64>("SELECT version FROM tally_config_version WHERE id = 1")
            .fetch_one(&self.version_pool)
            .await
            .map_err(map_err)
    }

    fn config_cache(&self) -> &tally_store::ConfigCache {
        &self.cache
    }
}
