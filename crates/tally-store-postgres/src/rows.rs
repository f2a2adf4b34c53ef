//! Reading rows back into domain values (every stored value is checked again, so bad stored
//! data is a `Corrupt` error, never a panic), and the one mapping of sqlx errors.

use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Decode, Postgres, Row, Type};
use tally_domain::{
    ApiKey, AuditEntry, CloseAfter, EventKind, EventReceipt, IdempotencyKey, KeyScope, LimitEnforcement,
    Metadata, MetricCode, Name, Period, PeriodKind, Plan, PlanCode, QuotaLimit, Reason, RecordedEvent,
    Subscription, Tenant, TenantId, UsageEvent, UsageRecord,
};
use tally_store::{PeriodRecord, StoreError};

use crate::scope::internal_id_from_db;

/// Turns a sqlx error into a `StoreError`: the one place that reads PostgreSQL's codes.
pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                // unique_violation, foreign_key_violation: the change contradicts stored state.
                "23505" | "23503" => StoreError::Conflict(db.constraint().unwrap_or(db.message()).to_owned()),
                // deadlock_detected, serialization_failure, lock_not_available (a NOWAIT lock
                // found taken): the transaction lost a race.
                "40P01" | "40001" | "55P03" => StoreError::Retry,
                // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections.
                "57P01" | "57P02" | "57P03" | "53300" => StoreError::Unavailable(db.message().to_owned()),
                c if c.starts_with("08") => StoreError::Unavailable(db.message().to_owned()),
                _ => StoreError::Other(format!("{} ({code})", db.message())),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreError::Corrupt(e.to_string()),
        other => StoreError::Other(other.to_string()),
    }
}

/// True when `e` says a relation does not exist (`undefined_table`): an unmigrated schema.
pub(crate) fn is_undefined_table(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|db| db.code()).is_some_and(|c| c == "42P01")
}

/// One column of a row.
pub(crate) fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, StoreError>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    row.try_get(column).map_err(map_err)
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Checks limits read from JSON as strictly as `QuotaLimit::new` checks new ones.
pub(crate) fn checked_limits(limits: Vec<QuotaLimit>) -> Result<Vec<QuotaLimit>, StoreError> {
    limits
        .into_iter()
        .map(|l| QuotaLimit::new(l.metric_code, l.limit, l.enforcement, l.period).map_err(StoreError::from))
        .collect()
}

/// The columns `record_from_row` reads.
pub(crate) const RECORD_COLUMNS: &str =
    "id, tenant_id, metric_code, current_usage, period_start, period_end, created_at, updated_at";

/// A usage record.
pub(crate) fn record_from_row(row: &PgRow) -> Result<UsageRecord, StoreError> {
    Ok(UsageRecord {
        id: get(row, "id")?,
        tenant_id: TenantId::parse(get(row, "tenant_id")?)?,
        metric_code: MetricCode::parse(get(row, "metric_code")?)?,
        current_usage: get(row, "current_usage")?,
        period_start: get(row, "period_start")?,
        period_end: get(row, "period_end")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

/// The columns `period_from_row` reads: a record's, and whether its period is closed.
pub(crate) const PERIOD_COLUMNS: &str = "id, tenant_id, metric_code, current_usage, period_start, period_end, \
     created_at, updated_at, closed_at, reopened_at";

/// A usage record as billing reads it, with `closed_at` and `reopened_at`.
pub(crate) fn period_from_row(row: &PgRow) -> Result<PeriodRecord, StoreError> {
    Ok(PeriodRecord {
        record: record_from_row(row)?,
        closed_at: get(row, "closed_at")?,
        reopened_at: get(row, "reopened_at")?,
    })
}

/// The columns `event_from_row` reads.
pub(crate) const EVENT_COLUMNS: &str = "id, tenant_id, metric_code, amount, metadata, idempotency_key, \
     \"timestamp\", created_at, usage_after, limit_at, enforcement, period_start, period_end, timestamp_explicit, is_set, reserved_at, \
     kind, reason";

/// One event of `tenant` by id, in its scope: the admin UI's event page, and a commit's replay.
pub(crate) async fn event_by_id<'e>(
    log: &crate::StatementLog,
    executor: impl sqlx::PgExecutor<'e>,
    scope: &crate::scope::Scope,
    tenant: &TenantId,
    id: uuid::Uuid,
) -> Result<Option<RecordedEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM {events} WHERE tenant_id = $1 AND id = $2",
        events = scope.events()
    );
    let row = log
        .query(sqlx::AssertSqlSafe(sql))
        .bind(tenant.as_str())
        .bind(id)
        .fetch_optional(executor)
        .await
        .map_err(map_err)?;
    row.as_ref().map(event_from_row).transpose()
}

/// A usage event with its receipt.
pub(crate) fn event_from_row(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let Json(metadata): Json<serde_json::Value> = get(row, "metadata")?;
    let idempotency_key: Option<&str> = get(row, "idempotency_key")?;
    let enforcement: &str = get(row, "enforcement")?;
    let kind: &str = get(row, "kind")?;
    let reason: Option<&str> = get(row, "reason")?;
    Ok(RecordedEvent {
        event: UsageEvent {
            id: get(row, "id")?,
            tenant_id: TenantId::parse(get(row, "tenant_id")?)?,
            metric_code: MetricCode::parse(get(row, "metric_code")?)?,
            amount: get(row, "amount")?,
            metadata: Metadata::new(metadata)?,
            idempotency_key: idempotency_key.map(IdempotencyKey::parse).transpose()?,
            timestamp: get(row, "timestamp")?,
            created_at: get(row, "created_at")?,
            kind: EventKind::parse(kind)?,
            reason: reason.map(Reason::parse).transpose()?,
        },
        receipt: EventReceipt {
            usage_after: get(row, "usage_after")?,
            limit: get(row, "limit_at")?,
            enforcement: enforcement.parse::<LimitEnforcement>()?,
            period: Period::new(get(row, "period_start")?, get(row, "period_end")?)?,
            timestamp_explicit: get(row, "timestamp_explicit")?,
            set: get(row, "is_set")?,
            reserved: get(row, "reserved_at")?,
        },
    })
}

/// The columns `plan_from_row` reads.
pub(crate) const PLAN_COLUMNS: &str =
    "code, name, limits, version, created_at, updated_at, close_after_seconds";

/// A plan (or one version of it).
pub(crate) fn plan_from_row(row: &PgRow) -> Result<Plan, StoreError> {
    let Json(limits): Json<Vec<QuotaLimit>> = get(row, "limits")?;
    let close_after: Option<i64> = get(row, "close_after_seconds")?;
    Ok(Plan {
        code: PlanCode::parse(get(row, "code")?)?,
        name: Name::parse(get(row, "name")?)?,
        limits: checked_limits(limits)?,
        close_after: close_after.map(CloseAfter::from_seconds).transpose()?,
        version: get(row, "version")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

/// The columns `tenant_from_row` reads.
pub(crate) const TENANT_COLUMNS: &str = "tenant_id, name, internal_id, created_at";

/// A tenant.
pub(crate) fn tenant_from_row(row: &PgRow) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        tenant_id: TenantId::parse(get(row, "tenant_id")?)?,
        name: Name::parse(get(row, "name")?)?,
        internal_id: internal_id_from_db(get(row, "internal_id")?),
        created_at: get(row, "created_at")?,
    })
}

/// The columns `subscription_from_row` reads.
pub(crate) const SUBSCRIPTION_COLUMNS: &str = "tenant_id, plan_code, anchor, started_at";

/// A subscription.
pub(crate) fn subscription_from_row(row: &PgRow) -> Result<Subscription, StoreError> {
    Ok(Subscription {
        tenant_id: TenantId::parse(get(row, "tenant_id")?)?,
        plan_code: PlanCode::parse(get(row, "plan_code")?)?,
        anchor: get(row, "anchor")?,
        started_at: get(row, "started_at")?,
    })
}

/// The columns `override_from_row` reads.
pub(crate) const OVERRIDE_COLUMNS: &str = "metric_code, \"limit\", enforcement, period";

/// A tenant's override.
pub(crate) fn override_from_row(row: &PgRow) -> Result<QuotaLimit, StoreError> {
    let enforcement: &str = get(row, "enforcement")?;
    let period: &str = get(row, "period")?;
    Ok(QuotaLimit::new(
        MetricCode::parse(get(row, "metric_code")?)?,
        get(row, "limit")?,
        enforcement.parse::<LimitEnforcement>()?,
        period.parse::<PeriodKind>()?,
    )?)
}

/// The columns `key_from_row` reads.
pub(crate) const KEY_COLUMNS: &str =
    "id, key_hash, scope, tenant_id, created_at, last_used_at, revoked_at, rate_limit";

/// An API key.
pub(crate) fn key_from_row(row: &PgRow) -> Result<ApiKey, StoreError> {
    let id = get(row, "id")?;
    let scope: &str = get(row, "scope")?;
    let tenant_id: Option<&str> = get(row, "tenant_id")?;
    let scope = match (scope, tenant_id) {
        ("admin", None) => KeyScope::Admin,
        ("tenant", Some(t)) => KeyScope::Tenant(TenantId::parse(t)?),
        (scope, _) => return Err(corrupt(format!("key {id} has scope {scope:?} with tenant {tenant_id:?}"))),
    };
    Ok(ApiKey {
        id,
        scope,
        key_hash: get(row, "key_hash")?,
        created_at: get(row, "created_at")?,
        last_used_at: get(row, "last_used_at")?,
        revoked_at: get(row, "revoked_at")?,
        rate_limit: get::<Option<&str>>(row, "rate_limit")?
            .map(tally_domain::RateLimit::parse)
            .transpose()?,
    })
}

/// The columns `audit_from_row` reads.
pub(crate) const AUDIT_COLUMNS: &str = "id, at, key_id, action, tenant_id, details";

/// An audit entry.
pub(crate) fn audit_from_row(row: &PgRow) -> Result<AuditEntry, StoreError> {
    let tenant_id: Option<&str> = get(row, "tenant_id")?;
    let Json(details): Json<serde_json::Value> = get(row, "details")?;
    Ok(AuditEntry {
        id: get(row, "id")?,
        at: get(row, "at")?,
        key_id: get(row, "key_id")?,
        action: get(row, "action")?,
        tenant_id: tenant_id.map(TenantId::parse).transpose()?,
        details,
    })
}
