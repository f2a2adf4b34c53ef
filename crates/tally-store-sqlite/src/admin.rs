//! Admin state on SQLite: plans and their versions, tenants, subscriptions, overrides, API
//! keys, the audit log, entitlements, and the inputs of `tally verify`.
//!
//! Every mutation runs under the writer lock in a `BEGIN IMMEDIATE` transaction that also
//! writes its audit entry, and only when something changes.

use std::collections::HashMap;

use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite};
use tally_domain::{
    ApiKey, AuditAction, AuditEntry, CloseAfter, Entitlement, MetricCode, Name, Override, Plan, PlanCode,
    PlanSpec, QuotaLimit, Subscription, Tenant, TenantId, Timestamp,
};
use tally_store::{
    AuditStore, ConfigVersion, EntitlementLookup, EventTotal, KeyStore, PlanStore, PutOutcome, RecordKey,
    RecordTotal, StoreError, TenantStore, VerifyInputs, reset_fact,
};
use uuid::Uuid;

use crate::error::store_error;
use crate::rows::{
    self, AuditRow, KeyRow, OverrideRow, PlanRow, RecordRow, SubscriptionRow, TenantEntitlementRow,
    TenantOverrideRow, TenantRow, audit_columns, insert_audit, instant, internal_id_bits, key_columns,
    limits_json, micros, plan_columns, record_columns, rows_per_statement,
};
use crate::{SqliteStore, StatementLog};

// ---------------------------------------------------------------------------------------
// Plans

impl PlanStore for SqliteStore {
    async fn put_plan(
        &self,
        code: &PlanCode,
        spec: &PlanSpec,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<PutOutcome<Plan>, StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = put_plan_in_tx(&self.log, w.conn(), code, spec, now, audit).await;
        w.finish(outcome).await
    }

    async fn find_plan(&self, code: &PlanCode) -> Result<Option<Plan>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        find_plan(&self.log, &mut conn, code).await
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        let found: Vec<PlanRow> = self
            .log
            .query_as(concat!("SELECT ", plan_columns!(), " FROM tally_plan ORDER BY code"))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        found.into_iter().map(rows::plan).collect()
    }

    async fn list_plan_versions(&self, code: &PlanCode) -> Result<Vec<Plan>, StoreError> {
        let found: Vec<PlanRow> = self
            .log
            .query_as(concat!(
                "SELECT ",
                plan_columns!(),
                " FROM tally_plan_version WHERE code = ?1 ORDER BY version DESC"
            ))
            .bind(code.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        found.into_iter().map(rows::plan).collect()
    }

    async fn delete_plan(&self, code: &PlanCode, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = delete_plan_in_tx(&self.log, w.conn(), code, audit).await;
        w.finish(outcome).await
    }
}

async fn find_plan(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    code: &PlanCode,
) -> Result<Option<Plan>, StoreError> {
    let found: Option<PlanRow> = log
        .query_as(concat!("SELECT ", plan_columns!(), " FROM tally_plan WHERE code = ?1"))
        .bind(code.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(store_error)?;
    found.map(rows::plan).transpose()
}

async fn put_plan_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    code: &PlanCode,
    spec: &PlanSpec,
    now: Timestamp,
    audit: &AuditEntry,
) -> Result<PutOutcome<Plan>, StoreError> {
    let existing = find_plan(log, conn, code).await?;
    let plan = match &existing {
        Some(current) if current.matches(spec) => return Ok(PutOutcome::Unchanged(current.clone())),
        Some(current) => Plan {
            code: code.clone(),
            name: spec.name.clone(),
            limits: spec.limits.clone(),
            close_after: spec.close_after,
            version: current.version.checked_add(1).ok_or_else(|| {
                StoreError::Corrupt(format!("plan {code} is at version {}", current.version))
            })?,
            created_at: current.created_at,
            updated_at: now,
        },
        None => Plan {
            code: code.clone(),
            name: spec.name.clone(),
            limits: spec.limits.clone(),
            close_after: spec.close_after,
            version: 1,
            created_at: now,
            updated_at: now,
        },
    };
    let limits = limits_json(&plan.limits)?;
    log.query(concat!(
        "INSERT INTO tally_plan (",
        plan_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        " ON CONFLICT (code) DO UPDATE SET name = excluded.name, limits = excluded.limits,",
        " version = excluded.version, updated_at = excluded.updated_at,",
        " close_after_seconds = excluded.close_after_seconds"
    ))
    .bind(plan.code.as_str())
    .bind(plan.name.as_str())
    .bind(limits.as_str())
    .bind(plan.version)
    .bind(micros(plan.created_at))
    .bind(micros(plan.updated_at))
    .bind(plan.close_after.map(CloseAfter::seconds))
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    log.query(concat!(
        "INSERT INTO tally_plan_version (",
        plan_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))
    .bind(plan.code.as_str())
    .bind(plan.name.as_str())
    .bind(limits.as_str())
    .bind(plan.version)
    .bind(micros(plan.created_at))
    .bind(micros(plan.updated_at))
    .bind(plan.close_after.map(CloseAfter::seconds))
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    insert_audit(log, conn, audit).await?;
    bump_config_version(log, conn).await?;
    Ok(if existing.is_some() { PutOutcome::Updated(plan) } else { PutOutcome::Created(plan) })
}

async fn delete_plan_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    code: &PlanCode,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    if find_plan(log, conn, code).await?.is_none() {
        return Err(StoreError::not_found(format!("plan {code}")));
    }
    let n_subscribers: i64 = log
        .query_scalar("SELECT COUNT(*) FROM tally_subscription WHERE plan_code = ?1")
        .bind(code.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(store_error)?;
    if n_subscribers > 0 {
        return Err(StoreError::Conflict(format!("plan {code} has {n_subscribers} subscribers")));
    }
    // The history goes with the plan, so that a plan created again starts at version 1.
    for sql in ["DELETE FROM tally_plan_version WHERE code = ?1", "DELETE FROM tally_plan WHERE code = ?1"] {
        log.query(sql).bind(code.as_str()).execute(&mut *conn).await.map_err(store_error)?;
    }
    insert_audit(log, conn, audit).await?;
    bump_config_version(log, conn).await
}

// ---------------------------------------------------------------------------------------
// Tenants, subscriptions, overrides

impl TenantStore for SqliteStore {
    async fn put_tenant(
        &self,
        tenant_id: &TenantId,
        name: &Name,
        now: Timestamp,
    ) -> Result<PutOutcome<Tenant>, StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = put_tenant_in_tx(&self.log, w.conn(), tenant_id, name, now).await;
        w.finish(outcome).await
    }

    async fn find_tenant(&self, tenant_id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        find_tenant(&self.log, &mut conn, tenant_id).await
    }

    async fn list_tenants(&self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>, StoreError> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT tenant_id, name, internal_id, created_at FROM tally_tenant");
        if let Some(after) = after {
            qb.push(" WHERE tenant_id > ").push_bind(after.as_str());
        }
        qb.push(" ORDER BY tenant_id LIMIT ").push_bind(i64::from(limit));
        let found: Vec<TenantRow> =
            self.log.built_as(&mut qb).fetch_all(&self.pool).await.map_err(store_error)?;
        found.into_iter().map(rows::tenant).collect()
    }

    async fn put_subscription(
        &self,
        tenant_id: &TenantId,
        plan: &PlanCode,
        anchor: Option<Timestamp>,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<Subscription, StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = put_subscription_in_tx(&self.log, w.conn(), tenant_id, plan, anchor, now, audit).await;
        w.finish(outcome).await
    }

    async fn find_subscription(&self, tenant_id: &TenantId) -> Result<Option<Subscription>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        find_subscription(&self.log, &mut conn, tenant_id).await
    }

    async fn delete_subscription(&self, tenant_id: &TenantId, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = change_one_in_tx(
            &self.log,
            w.conn(),
            self.log.query("DELETE FROM tally_subscription WHERE tenant_id = ?1").bind(tenant_id.as_str()),
            || format!("subscription of tenant {tenant_id}"),
            audit,
        )
        .await;
        w.finish(outcome).await
    }

    async fn list_subscribers(&self, plan: &PlanCode, limit: u32) -> Result<Vec<TenantId>, StoreError> {
        let found: Vec<String> = self
            .log
            .query_scalar(
                "SELECT tenant_id FROM tally_subscription WHERE plan_code = ?1 ORDER BY tenant_id LIMIT ?2",
            )
            .bind(plan.as_str())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        found.iter().map(|t| Ok(TenantId::parse(t)?)).collect()
    }

    async fn put_override(
        &self,
        tenant_id: &TenantId,
        limit: &QuotaLimit,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = put_override_in_tx(&self.log, w.conn(), tenant_id, limit, audit).await;
        w.finish(outcome).await
    }

    async fn delete_override(
        &self,
        tenant_id: &TenantId,
        metric: &MetricCode,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = change_one_in_tx(
            &self.log,
            w.conn(),
            self.log
                .query("DELETE FROM tally_override WHERE tenant_id = ?1 AND metric_code = ?2")
                .bind(tenant_id.as_str())
                .bind(metric.as_str()),
            || format!("override of {metric} for tenant {tenant_id}"),
            audit,
        )
        .await;
        w.finish(outcome).await
    }

    async fn list_overrides(&self, tenant_id: &TenantId) -> Result<Vec<Override>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        list_overrides(&self.log, &mut conn, tenant_id).await
    }

    async fn find_entitlement(&self, tenant_id: &TenantId) -> Result<EntitlementLookup, StoreError> {
        // One snapshot for the tenant, its subscription, plan and overrides.
        let mut tx = self.begin_read().await?;
        let mut found = load_entitlements(&self.log, &mut tx, std::slice::from_ref(tenant_id)).await?;
        self.log.commit(tx).await.map_err(store_error)?;
        Ok(found.remove(tenant_id).unwrap_or(EntitlementLookup::TenantMissing))
    }
}

async fn find_tenant(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenant_id: &TenantId,
) -> Result<Option<Tenant>, StoreError> {
    let found: Option<TenantRow> = log
        .query_as("SELECT tenant_id, name, internal_id, created_at FROM tally_tenant WHERE tenant_id = ?1")
        .bind(tenant_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(store_error)?;
    found.map(rows::tenant).transpose()
}

async fn put_tenant_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenant_id: &TenantId,
    name: &Name,
    now: Timestamp,
) -> Result<PutOutcome<Tenant>, StoreError> {
    match find_tenant(log, conn, tenant_id).await? {
        Some(current) if current.name == *name => Ok(PutOutcome::Unchanged(current)),
        Some(current) => {
            log.query("UPDATE tally_tenant SET name = ?2 WHERE tenant_id = ?1")
                .bind(tenant_id.as_str())
                .bind(name.as_str())
                .execute(&mut *conn)
                .await
                .map_err(store_error)?;
            bump_config_version(log, conn).await?;
            Ok(PutOutcome::Updated(Tenant { name: name.clone(), ..current }))
        }
        None => {
            let tenant = Tenant {
                tenant_id: tenant_id.clone(),
                name: name.clone(),
                // Random, so that a schema name (in the PostgreSQL adapter) reveals nothing.
                internal_id: Uuid::new_v4().as_u64_pair().0,
                created_at: now,
            };
            log.query(
                "INSERT INTO tally_tenant (tenant_id, name, internal_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(tenant.tenant_id.as_str())
            .bind(tenant.name.as_str())
            .bind(internal_id_bits(tenant.internal_id))
            .bind(micros(tenant.created_at))
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
            bump_config_version(log, conn).await?;
            Ok(PutOutcome::Created(tenant))
        }
    }
}

async fn find_subscription(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenant_id: &TenantId,
) -> Result<Option<Subscription>, StoreError> {
    let found: Option<SubscriptionRow> = log
        .query_as(
            "SELECT tenant_id, plan_code, anchor, started_at FROM tally_subscription WHERE tenant_id = ?1",
        )
        .bind(tenant_id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(store_error)?;
    found.map(rows::subscription).transpose()
}

async fn put_subscription_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenant_id: &TenantId,
    plan: &PlanCode,
    anchor: Option<Timestamp>,
    now: Timestamp,
    audit: &AuditEntry,
) -> Result<Subscription, StoreError> {
    if find_tenant(log, conn, tenant_id).await?.is_none() {
        return Err(StoreError::not_found(format!("tenant {tenant_id}")));
    }
    if find_plan(log, conn, plan).await?.is_none() {
        return Err(StoreError::not_found(format!("plan {plan}")));
    }
    let existing = find_subscription(log, conn, tenant_id).await?;
    let subscription = Subscription {
        tenant_id: tenant_id.clone(),
        plan_code: plan.clone(),
        anchor: anchor.or(existing.as_ref().map(|s| s.anchor)).unwrap_or(now),
        started_at: match &existing {
            Some(s) if s.plan_code == *plan => s.started_at,
            _ => now,
        },
    };
    if existing.as_ref() == Some(&subscription) {
        return Ok(subscription);
    }
    log.query(
        "INSERT INTO tally_subscription (tenant_id, plan_code, anchor, started_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (tenant_id) DO UPDATE SET plan_code = excluded.plan_code, anchor = excluded.anchor, \
         started_at = excluded.started_at",
    )
    .bind(subscription.tenant_id.as_str())
    .bind(subscription.plan_code.as_str())
    .bind(micros(subscription.anchor))
    .bind(micros(subscription.started_at))
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    insert_audit(log, conn, audit).await?;
    bump_config_version(log, conn).await?;
    Ok(subscription)
}

async fn list_overrides(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenant_id: &TenantId,
) -> Result<Vec<Override>, StoreError> {
    let found: Vec<OverrideRow> = log
        .query_as(
            "SELECT metric_code, \"limit\", enforcement, period FROM tally_override WHERE tenant_id = ?1 \
         ORDER BY metric_code",
        )
        .bind(tenant_id.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    found.into_iter().map(rows::quota_limit).collect()
}

async fn put_override_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenant_id: &TenantId,
    limit: &QuotaLimit,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    if find_tenant(log, conn, tenant_id).await?.is_none() {
        return Err(StoreError::not_found(format!("tenant {tenant_id}")));
    }
    if list_overrides(log, conn, tenant_id).await?.contains(limit) {
        return Ok(());
    }
    log.query(
        "INSERT INTO tally_override (tenant_id, metric_code, \"limit\", enforcement, period) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (tenant_id, metric_code) DO UPDATE SET \
         \"limit\" = excluded.\"limit\", enforcement = excluded.enforcement, period = excluded.period",
    )
    .bind(tenant_id.as_str())
    .bind(limit.metric_code.as_str())
    .bind(limit.limit)
    .bind(limit.enforcement.as_str())
    .bind(limit.period.as_str())
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    insert_audit(log, conn, audit).await?;
    bump_config_version(log, conn).await
}

/// Runs a statement that changes (deletes, revokes) one configuration row, audits it and
/// raises the configuration version; `NotFound` (naming `what`) when it matched none.
async fn change_one_in_tx<'q>(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    change: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    what: impl FnOnce() -> String,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    let done = change.execute(&mut *conn).await.map_err(store_error)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::not_found(what()));
    }
    insert_audit(log, conn, audit).await?;
    bump_config_version(log, conn).await
}

/// Raises the configuration version inside the caller's transaction: every change to a
/// plan, tenant, subscription, override or key calls it once, after the change.
pub(crate) async fn bump_config_version(
    log: &StatementLog,
    conn: &mut SqliteConnection,
) -> Result<(), StoreError> {
    let done = log
        .query("UPDATE tally_config_version SET version = version + 1 WHERE id = 1")
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    if done.rows_affected() != 1 {
        return Err(StoreError::Corrupt("tally_config_version has lost its row".to_owned()));
    }
    Ok(())
}

/// Each tenant's entitlement, read on `conn` (inside the caller's transaction) with two
/// statements whatever the number of tenants, each filtered on the tenants: the tenants
/// with their subscriptions and plans, then their overrides.
pub(crate) async fn load_entitlements(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenants: &[TenantId],
) -> Result<HashMap<TenantId, EntitlementLookup>, StoreError> {
    let mut found: HashMap<TenantId, EntitlementLookup> = HashMap::with_capacity(tenants.len());
    let mut subscriptions: Vec<(Subscription, Plan)> = Vec::new();
    // A plan shared by many tenants of the batch is read back once.
    let mut plans: HashMap<String, Plan> = HashMap::new();
    for chunk in tenants.chunks(rows_per_statement(1)) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(concat!(
            "SELECT t.tenant_id, s.plan_code, s.anchor, s.started_at, ",
            "p.code, p.name, p.limits, p.version, p.created_at, p.updated_at, p.close_after_seconds ",
            "FROM tally_tenant AS t LEFT JOIN tally_subscription AS s ON s.tenant_id = t.tenant_id ",
            "LEFT JOIN tally_plan AS p ON p.code = s.plan_code WHERE t.tenant_id IN ("
        ));
        let mut ids = qb.separated(", ");
        for tenant in chunk {
            ids.push_bind(tenant.as_str());
        }
        qb.push(")");
        let page: Vec<TenantEntitlementRow> =
            log.built_as(&mut qb).persistent(false).fetch_all(&mut *conn).await.map_err(store_error)?;
        for (tenant_id, subscribed, plan) in page.into_iter().map(rows::tenant_entitlement) {
            let tenant_id = TenantId::parse(&tenant_id)?;
            let Some(subscription) = subscribed else {
                found.insert(tenant_id, EntitlementLookup::NoSubscription);
                continue;
            };
            let subscription = rows::subscription(subscription)?;
            let Some(plan_row) = plan else {
                return Err(StoreError::Corrupt(format!(
                    "tenant {} subscribes to missing plan {}",
                    subscription.tenant_id, subscription.plan_code
                )));
            };
            let plan = match plans.get(&plan_row.0) {
                Some(plan) => plan.clone(),
                None => {
                    let plan = rows::plan(plan_row)?;
                    plans.insert(plan.code.as_str().to_owned(), plan.clone());
                    plan
                }
            };
            subscriptions.push((subscription, plan));
        }
    }
    if subscriptions.is_empty() {
        return Ok(found);
    }

    let mut overrides: HashMap<TenantId, Vec<Override>> = HashMap::new();
    for chunk in subscriptions.chunks(rows_per_statement(1)) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT tenant_id, metric_code, \"limit\", enforcement, period FROM tally_override \
             WHERE tenant_id IN (",
        );
        let mut ids = qb.separated(", ");
        for (s, _) in chunk {
            ids.push_bind(s.tenant_id.as_str());
        }
        qb.push(") ORDER BY tenant_id, metric_code");
        let page: Vec<TenantOverrideRow> =
            log.built_as(&mut qb).persistent(false).fetch_all(&mut *conn).await.map_err(store_error)?;
        for (tenant_id, metric_code, limit, enforcement, period) in page {
            let limit = rows::quota_limit((metric_code, limit, enforcement, period))?;
            overrides.entry(TenantId::parse(&tenant_id)?).or_default().push(limit);
        }
    }

    for (subscription, plan) in subscriptions {
        let tenant_id = subscription.tenant_id.clone();
        let own = overrides.get(&tenant_id).map_or(&[][..], Vec::as_slice);
        found.insert(tenant_id, EntitlementLookup::Found(Entitlement::resolve(subscription, &plan, own)));
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------
// Keys

impl KeyStore for SqliteStore {
    async fn insert_key(&self, key: &ApiKey, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = insert_key_in_tx(&self.log, w.conn(), key, audit).await;
        w.finish(outcome).await
    }

    async fn find_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let found: Option<KeyRow> = self
            .log
            .query_as(concat!("SELECT ", key_columns!(), " FROM tally_api_key WHERE key_hash = ?1"))
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        found.map(rows::key).transpose()
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let found: Vec<KeyRow> = self
            .log
            .query_as(concat!("SELECT ", key_columns!(), " FROM tally_api_key ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        found.into_iter().map(rows::key).collect()
    }

    async fn revoke_key(&self, id: Uuid, now: Timestamp, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = change_one_in_tx(
            &self.log,
            w.conn(),
            self.log
                .query("UPDATE tally_api_key SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
                .bind(id.to_string())
                .bind(micros(now)),
            || format!("active key {id}"),
            audit,
        )
        .await;
        w.finish(outcome).await
    }

    async fn touch_key(&self, id: Uuid, now: Timestamp) -> Result<(), StoreError> {
        let _writer = self.lock_writer().await?;
        // Only forward: a late touch never hides a newer one. An unknown key is no error,
        // as in the other adapters: there is nothing to note.
        self.log
            .query(
                "UPDATE tally_api_key SET last_used_at = ?2 \
             WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
            )
            .bind(id.to_string())
            .bind(micros(now))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

async fn insert_key_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    key: &ApiKey,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    log.query(concat!(
        "INSERT INTO tally_api_key (",
        key_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))
    .bind(key.id.to_string())
    .bind(key.key_hash.as_str())
    .bind(key.scope.kind())
    .bind(key.scope.tenant().map(|t| t.as_str().to_owned()))
    .bind(micros(key.created_at))
    .bind(key.last_used_at.map(micros))
    .bind(key.revoked_at.map(micros))
    .bind(key.rate_limit.map(|r| r.to_string()))
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    insert_audit(log, conn, audit).await?;
    bump_config_version(log, conn).await
}

// ---------------------------------------------------------------------------------------
// Audit and verify

impl AuditStore for SqliteStore {
    async fn list_audit(
        &self,
        tenant_id: Option<&TenantId>,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(concat!("SELECT ", audit_columns!(), " FROM tally_audit WHERE 1 = 1"));
        if let Some(tenant_id) = tenant_id {
            qb.push(" AND tenant_id = ").push_bind(tenant_id.as_str());
        }
        if let Some(before) = before {
            // UUID v7 text compares in time order: fixed-width lowercase hex.
            qb.push(" AND id < ").push_bind(before.to_string());
        }
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
        let found: Vec<AuditRow> =
            self.log.built_as(&mut qb).fetch_all(&self.pool).await.map_err(store_error)?;
        found.into_iter().map(rows::audit).collect()
    }

    async fn verify_inputs(&self) -> Result<VerifyInputs, StoreError> {
        // One snapshot, so that counters, events and resets agree with each other.
        let mut tx = self.begin_read().await?;
        let inputs = verify_inputs(&self.log, &mut tx).await?;
        self.log.commit(tx).await.map_err(store_error)?;
        Ok(inputs)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: i64 = self.log.query_scalar("SELECT 1").fetch_one(&self.pool).await.map_err(store_error)?;
        Ok(())
    }
}

impl ConfigVersion for SqliteStore {
    async fn config_version(&self) -> Result<i64, StoreError> {
        // One primary-key read on a pooled connection: in WAL mode it never waits for the writer.
        self.log
            .query_scalar("SELECT version FROM tally_config_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)
    }

    fn config_cache(&self) -> &tally_store::ConfigCache {
        &self.cache
    }
}

async fn verify_inputs(log: &StatementLog, conn: &mut SqliteConnection) -> Result<VerifyInputs, StoreError> {
    let found: Vec<RecordRow> = log
        .query_as(concat!(
            "SELECT ",
            record_columns!(),
            " FROM quota_usage_record ORDER BY tenant_id, metric_code, period_start"
        ))
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    let mut records = Vec::with_capacity(found.len());
    for row in found {
        let r = rows::record(row)?;
        let period = r.period()?;
        let key = RecordKey { tenant_id: r.tenant_id, metric_code: r.metric_code, period };
        records.push(RecordTotal { id: r.id, key, current_usage: r.current_usage });
    }

    let sums: Vec<(String, String, i64, i64, i64, i64)> = log
        .query_as(
            "SELECT tenant_id, metric_code, period_start, SUM(amount), COUNT(*), \
             SUM(kind = 'correction') FROM quota_usage_event \
         GROUP BY tenant_id, metric_code, period_start ORDER BY tenant_id, metric_code, period_start",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    let mut events = Vec::with_capacity(sums.len());
    for (tenant_id, metric_code, period_start, amount_sum, n_events, n_corrections) in sums {
        events.push(EventTotal {
            tenant_id: TenantId::parse(&tenant_id)?,
            metric_code: MetricCode::parse(&metric_code)?,
            period_start: instant("period_start", period_start)?,
            amount_sum,
            n_events,
            n_corrections,
        });
    }

    let audited: Vec<AuditRow> = log
        .query_as(concat!("SELECT ", audit_columns!(), " FROM tally_audit WHERE action = ?1 ORDER BY id"))
        .bind(AuditAction::Reset.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    let mut resets = Vec::with_capacity(audited.len());
    for row in audited {
        if let Some(fact) = reset_fact(&rows::audit(row)?)? {
            resets.push(fact);
        }
    }
    Ok(VerifyInputs { records, events, resets })
}
