//! Rows as SQLite returns them, their column lists, and their conversion to domain values
//! (which re-validates everything read: bad stored data is `Corrupt`, never a panic).

use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite};
use tally_domain::{
    ApiKey, AuditEntry, CloseAfter, EventKind, EventReceipt, IdempotencyKey, KeyScope, Metadata, MetricCode,
    Name, Period, Plan, PlanCode, PlanSpec, QuotaLimit, Reason, RecordedEvent, Subscription, Tenant,
    TenantId, Timestamp, UsageEvent, UsageRecord,
};
use tally_store::StoreError;
use uuid::Uuid;

use crate::error::store_error;
use crate::{SQLITE_BIND_PARAMS_MAX, StatementLog};

/// Bulk statements of the write path come in a few shapes that stay prepared on their
/// connection (sqlx's statement cache): a power of two of rows, at most this many. Parsing a
/// statement cost more than running it (callgrind: 45% of a single POST's instructions when
/// every bulk statement was parsed again). 7 shapes times a dozen statement kinds stays within
/// the cache's 100 entries per connection.
pub(crate) const SQLITE_CACHED_SHAPE_ROWS_MAX: usize = 64;
/// Up to this many rows, a bulk write is cut into cached shapes (at most 2 + 6 statements);
/// above it, into statements as big as the bind limit allows, each prepared for its one use,
/// whose parsing the many rows amortize.
pub(crate) const SQLITE_SHAPED_ROWS_MAX: usize = 2 * SQLITE_CACHED_SHAPE_ROWS_MAX;

/// Whether a bulk statement of `rows` rows is one of the cached shapes.
pub(crate) fn keep_prepared(rows: usize) -> bool {
    rows <= SQLITE_CACHED_SHAPE_ROWS_MAX && rows.is_power_of_two()
}

/// The chunks a bulk statement over `items` (of `n_columns` bound values each) is sent in:
/// cached shapes up to `SQLITE_SHAPED_ROWS_MAX` items, the biggest statements above.
pub(crate) fn statement_chunks<T>(items: &[T], n_columns: usize) -> Vec<&[T]> {
    if items.len() > SQLITE_SHAPED_ROWS_MAX {
        return items.chunks(rows_per_statement(n_columns)).collect();
    }
    let mut chunks = Vec::new();
    let mut rest = items;
    while !rest.is_empty() {
        let take = if rest.len() >= SQLITE_CACHED_SHAPE_ROWS_MAX {
            SQLITE_CACHED_SHAPE_ROWS_MAX
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(take);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// How many rows of `n_columns` bound values fit in one statement.
pub(crate) const fn rows_per_statement(n_columns: usize) -> usize {
    SQLITE_BIND_PARAMS_MAX / n_columns
}

/// Microseconds since the Unix epoch: how every timestamp is stored.
pub(crate) fn micros(t: Timestamp) -> i64 {
    tally_domain::time::to_micros(t)
}

/// A stored timestamp.
pub(crate) fn instant(column: &str, micros: i64) -> Result<Timestamp, StoreError> {
    tally_domain::time::from_micros(micros)
        .map_err(|e| StoreError::Corrupt(format!("{column} {micros}: {e}")))
}

fn opt_instant(column: &str, micros: Option<i64>) -> Result<Option<Timestamp>, StoreError> {
    micros.map(|m| instant(column, m)).transpose()
}

/// A stored UUID (hyphenated text).
pub(crate) fn uuid(column: &str, raw: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(raw).map_err(|e| StoreError::Corrupt(format!("{column} {raw:?}: {e}")))
}

fn json(column: &str, raw: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(format!("{column} is not JSON: {e}")))
}

/// The JSON text of a plan's limits, as stored.
pub(crate) fn limits_json(limits: &[QuotaLimit]) -> Result<String, StoreError> {
    serde_json::to_string(limits).map_err(|e| StoreError::Other(format!("serializing limits: {e}")))
}

// ---------------------------------------------------------------------------------------
// Usage records

/// The columns of `RecordRow`, in order.
macro_rules! record_columns {
    () => {
        "id, tenant_id, metric_code, current_usage, period_start, period_end, created_at, updated_at"
    };
}
pub(crate) use record_columns;

/// A `quota_usage_record` row.
pub(crate) type RecordRow = (String, String, String, i64, i64, i64, i64, i64);

pub(crate) fn record(row: RecordRow) -> Result<UsageRecord, StoreError> {
    let (id, tenant_id, metric_code, current_usage, period_start, period_end, created_at, updated_at) = row;
    Ok(UsageRecord {
        id: uuid("quota_usage_record.id", &id)?,
        tenant_id: TenantId::parse(&tenant_id)?,
        metric_code: MetricCode::parse(&metric_code)?,
        current_usage,
        period_start: instant("period_start", period_start)?,
        period_end: instant("period_end", period_end)?,
        created_at: instant("created_at", created_at)?,
        updated_at: instant("updated_at", updated_at)?,
    })
}

// ---------------------------------------------------------------------------------------
// Usage events

/// The columns of `EventRow`, in order.
macro_rules! event_columns {
    () => {
        "id, tenant_id, metric_code, amount, metadata, idempotency_key, timestamp, created_at, \
         usage_after, limit_at, enforcement, period_start, period_end, timestamp_explicit, is_set, reserved_at, \
         kind, reason"
    };
}
pub(crate) use event_columns;

/// Columns of `quota_usage_event`.
const EVENT_COLUMNS_LEN: usize = 18;

/// A `quota_usage_event` row: the event, then its receipt, then its kind and reason (read
/// by position, in `event_columns!()` order: more columns than sqlx's tuples take).
pub(crate) struct EventRow {
    id: String,
    tenant_id: String,
    metric_code: String,
    amount: i64,
    metadata: String,
    idempotency_key: Option<String>,
    timestamp: i64,
    created_at: i64,
    usage_after: i64,
    limit_at: Option<i64>,
    enforcement: String,
    period_start: i64,
    period_end: i64,
    timestamp_explicit: i64,
    is_set: i64,
    reserved_at: i64,
    kind: String,
    reason: Option<String>,
}

impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for EventRow {
    fn from_row(row: &'r sqlx::sqlite::SqliteRow) -> Result<EventRow, sqlx::Error> {
        use sqlx::Row;
        Ok(EventRow {
            id: row.try_get(0)?,
            tenant_id: row.try_get(1)?,
            metric_code: row.try_get(2)?,
            amount: row.try_get(3)?,
            metadata: row.try_get(4)?,
            idempotency_key: row.try_get(5)?,
            timestamp: row.try_get(6)?,
            created_at: row.try_get(7)?,
            usage_after: row.try_get(8)?,
            limit_at: row.try_get(9)?,
            enforcement: row.try_get(10)?,
            period_start: row.try_get(11)?,
            period_end: row.try_get(12)?,
            timestamp_explicit: row.try_get(13)?,
            is_set: row.try_get(14)?,
            reserved_at: row.try_get(15)?,
            kind: row.try_get(16)?,
            reason: row.try_get(17)?,
        })
    }
}

pub(crate) fn event(row: EventRow) -> Result<RecordedEvent, StoreError> {
    let flag = |column: &str, value: i64| match value {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(StoreError::Corrupt(format!("{column} {other} is not 0 or 1"))),
    };
    Ok(RecordedEvent {
        event: UsageEvent {
            id: uuid("quota_usage_event.id", &row.id)?,
            tenant_id: TenantId::parse(&row.tenant_id)?,
            metric_code: MetricCode::parse(&row.metric_code)?,
            amount: row.amount,
            metadata: Metadata::new(json("metadata", &row.metadata)?)?,
            idempotency_key: row.idempotency_key.as_deref().map(IdempotencyKey::parse).transpose()?,
            timestamp: instant("timestamp", row.timestamp)?,
            created_at: instant("created_at", row.created_at)?,
            kind: EventKind::parse(&row.kind)?,
            reason: row.reason.as_deref().map(Reason::parse).transpose()?,
        },
        receipt: EventReceipt {
            usage_after: row.usage_after,
            limit: row.limit_at,
            enforcement: row.enforcement.parse()?,
            period: Period::new(
                instant("period_start", row.period_start)?,
                instant("period_end", row.period_end)?,
            )?,
            timestamp_explicit: flag("timestamp_explicit", row.timestamp_explicit)?,
            set: flag("is_set", row.is_set)?,
            reserved: row.reserved_at,
        },
    })
}

/// One event of `tenant` by id: the admin UI's event page, and a commit's replay.
pub(crate) async fn event_by_id<'e>(
    log: &StatementLog,
    executor: impl sqlx::SqliteExecutor<'e>,
    tenant: &TenantId,
    id: uuid::Uuid,
) -> Result<Option<RecordedEvent>, StoreError> {
    let found: Option<EventRow> = log
        .query_as(concat!(
            "SELECT ",
            event_columns!(),
            " FROM quota_usage_event WHERE tenant_id = ?1 AND id = ?2"
        ))
        .bind(tenant.as_str())
        .bind(id.to_string())
        .fetch_optional(executor)
        .await
        .map_err(crate::error::store_error)?;
    found.map(event).transpose()
}

/// Appends events with multi-row inserts, as few as the bind limit allows. Returns the
/// driver's error so that callers can tell a taken idempotency key from other failures.
pub(crate) async fn insert_events(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    events: &[RecordedEvent],
) -> Result<(), sqlx::Error> {
    for chunk in statement_chunks(events, EVENT_COLUMNS_LEN) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(concat!("INSERT INTO quota_usage_event (", event_columns!(), ") "));
        qb.push_values(chunk, |mut b, rec| {
            let (e, r) = (&rec.event, &rec.receipt);
            b.push_bind(e.id.to_string())
                .push_bind(e.tenant_id.as_str().to_owned())
                .push_bind(e.metric_code.as_str().to_owned())
                .push_bind(e.amount)
                .push_bind(e.metadata.to_json_string())
                .push_bind(e.idempotency_key.as_ref().map(|k| k.as_str().to_owned()))
                .push_bind(micros(e.timestamp))
                .push_bind(micros(e.created_at))
                .push_bind(r.usage_after)
                .push_bind(r.limit)
                .push_bind(r.enforcement.as_str())
                .push_bind(micros(r.period.start()))
                .push_bind(micros(r.period.end()))
                .push_bind(i64::from(r.timestamp_explicit))
                .push_bind(i64::from(r.set))
                .push_bind(r.reserved)
                .push_bind(e.kind.as_str())
                .push_bind(e.reason.as_ref().map(|r| r.as_str().to_owned()));
        });
        log.built(&mut qb).persistent(keep_prepared(chunk.len())).execute(&mut *conn).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Plans, tenants, subscriptions, overrides

/// The columns of `PlanRow`, in order.
macro_rules! plan_columns {
    () => {
        "code, name, limits, version, created_at, updated_at, close_after_seconds"
    };
}
pub(crate) use plan_columns;

/// A `tally_plan` or `tally_plan_version` row.
pub(crate) type PlanRow = (String, String, String, i64, i64, i64, Option<i64>);

pub(crate) fn plan(row: PlanRow) -> Result<Plan, StoreError> {
    let (code, name, limits, version, created_at, updated_at, close_after) = row;
    let code = PlanCode::parse(&code)?;
    let stored: Vec<QuotaLimit> = serde_json::from_str(&limits)
        .map_err(|e| StoreError::Corrupt(format!("limits of plan {code}: {e}")))?;
    // Deserializing checks the codes; the constructors check the rest.
    let limits = stored
        .into_iter()
        .map(|l| QuotaLimit::new(l.metric_code, l.limit, l.enforcement, l.period))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = PlanSpec::new(Name::parse(&name)?, limits)?;
    Ok(Plan {
        code,
        name: spec.name,
        limits: spec.limits,
        close_after: close_after.map(CloseAfter::from_seconds).transpose()?,
        version,
        created_at: instant("created_at", created_at)?,
        updated_at: instant("updated_at", updated_at)?,
    })
}

/// A `tally_tenant` row: id, name, internal id (as i64 bits), created_at.
pub(crate) type TenantRow = (String, String, i64, i64);

pub(crate) fn tenant(row: TenantRow) -> Result<Tenant, StoreError> {
    let (tenant_id, name, internal_id, created_at) = row;
    Ok(Tenant {
        tenant_id: TenantId::parse(&tenant_id)?,
        name: Name::parse(&name)?,
        internal_id: u64::from_be_bytes(internal_id.to_be_bytes()),
        created_at: instant("created_at", created_at)?,
    })
}

/// An internal id as stored: the u64's bits as an i64.
pub(crate) fn internal_id_bits(internal_id: u64) -> i64 {
    i64::from_be_bytes(internal_id.to_be_bytes())
}

/// A `tally_subscription` row: tenant, plan, anchor, started_at.
pub(crate) type SubscriptionRow = (String, String, i64, i64);

pub(crate) fn subscription(row: SubscriptionRow) -> Result<Subscription, StoreError> {
    let (tenant_id, plan_code, anchor, started_at) = row;
    Ok(Subscription {
        tenant_id: TenantId::parse(&tenant_id)?,
        plan_code: PlanCode::parse(&plan_code)?,
        anchor: instant("anchor", anchor)?,
        started_at: instant("started_at", started_at)?,
    })
}

/// A tenant with its subscription and its plan, if any (a `tally_tenant LEFT JOIN
/// tally_subscription LEFT JOIN tally_plan` row): tenant; plan code, anchor, started_at; then
/// the plan's columns in `plan_columns!()` order.
pub(crate) type TenantEntitlementRow = (
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// Splits a `TenantEntitlementRow` into the tenant, its subscription (when it has one) and
/// the subscribed plan (when the row has one).
pub(crate) fn tenant_entitlement(
    row: TenantEntitlementRow,
) -> (String, Option<SubscriptionRow>, Option<PlanRow>) {
    let (
        tenant_id,
        plan_code,
        anchor,
        started_at,
        code,
        name,
        limits,
        version,
        created_at,
        updated_at,
        close_after,
    ) = row;
    let subscription = match (plan_code, anchor, started_at) {
        (Some(plan_code), Some(anchor), Some(started_at)) => {
            Some((tenant_id.clone(), plan_code, anchor, started_at))
        }
        _ => None,
    };
    let plan = match (code, name, limits, version, created_at, updated_at) {
        (Some(code), Some(name), Some(limits), Some(version), Some(created_at), Some(updated_at)) => {
            Some((code, name, limits, version, created_at, updated_at, close_after))
        }
        _ => None,
    };
    (tenant_id, subscription, plan)
}

/// A `tally_override` row with its tenant: tenant, metric, limit, enforcement, period.
pub(crate) type TenantOverrideRow = (String, String, Option<i64>, String, String);

/// A `tally_override` row without its tenant: metric, limit, enforcement, period.
pub(crate) type OverrideRow = (String, Option<i64>, String, String);

pub(crate) fn quota_limit(row: OverrideRow) -> Result<QuotaLimit, StoreError> {
    let (metric_code, limit, enforcement, period) = row;
    Ok(QuotaLimit::new(MetricCode::parse(&metric_code)?, limit, enforcement.parse()?, period.parse()?)?)
}

// ---------------------------------------------------------------------------------------
// Keys and audit

/// The columns of `KeyRow`, in order.
macro_rules! key_columns {
    () => {
        "id, key_hash, scope, tenant_id, created_at, last_used_at, revoked_at, rate_limit"
    };
}
pub(crate) use key_columns;

/// A `tally_api_key` row.
pub(crate) type KeyRow =
    (String, String, String, Option<String>, i64, Option<i64>, Option<i64>, Option<String>);

pub(crate) fn key(row: KeyRow) -> Result<ApiKey, StoreError> {
    let (id, key_hash, scope, tenant_id, created_at, last_used_at, revoked_at, rate_limit) = row;
    let id = uuid("tally_api_key.id", &id)?;
    let scope = match (scope.as_str(), tenant_id) {
        ("admin", None) => KeyScope::Admin,
        ("tenant", Some(t)) => KeyScope::Tenant(TenantId::parse(&t)?),
        (other, t) => {
            return Err(StoreError::Corrupt(format!("key {id} has scope {other:?} with tenant {t:?}")));
        }
    };
    Ok(ApiKey {
        id,
        scope,
        key_hash,
        created_at: instant("created_at", created_at)?,
        last_used_at: opt_instant("last_used_at", last_used_at)?,
        revoked_at: opt_instant("revoked_at", revoked_at)?,
        rate_limit: rate_limit.as_deref().map(tally_domain::RateLimit::parse).transpose()?,
    })
}

/// The columns of `AuditRow`, in order.
macro_rules! audit_columns {
    () => {
        "id, at, key_id, action, tenant_id, details"
    };
}
pub(crate) use audit_columns;

/// A `tally_audit` row.
pub(crate) type AuditRow = (String, i64, Option<String>, String, Option<String>, String);

pub(crate) fn audit(row: AuditRow) -> Result<AuditEntry, StoreError> {
    let (id, at, key_id, action, tenant_id, details) = row;
    Ok(AuditEntry {
        id: uuid("tally_audit.id", &id)?,
        at: instant("at", at)?,
        key_id: key_id.as_deref().map(|k| uuid("tally_audit.key_id", k)).transpose()?,
        action,
        tenant_id: tenant_id.as_deref().map(TenantId::parse).transpose()?,
        details: json("details", &details)?,
    })
}

/// Writes an audit entry, inside the caller's transaction, under its own id while that id
/// is free. Callers may hand the same entry to several mutations (the contract suite does),
/// and each mutation is its own line in the log, so a taken id is replaced by a fresh
/// UUID v7, which also sorts the line after the earlier ones.
pub(crate) async fn insert_audit(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    for id in [entry.id, Uuid::now_v7()] {
        let done = log
            .query(concat!(
                "INSERT INTO tally_audit (",
                audit_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING"
            ))
            .bind(id.to_string())
            .bind(micros(entry.at))
            .bind(entry.key_id.map(|k| k.to_string()))
            .bind(entry.action.as_str())
            .bind(entry.tenant_id.as_ref().map(|t| t.as_str().to_owned()))
            .bind(entry.details.to_string())
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
    }
    Err(StoreError::Conflict(format!("audit id {} and a fresh one are both taken", entry.id)))
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn bulk_statements_come_in_cached_shapes_up_to_the_shaped_maximum() {
        for n in 0..=SQLITE_SHAPED_ROWS_MAX {
            let items: Vec<usize> = (0..n).collect();
            let chunks = statement_chunks(&items, 16);
            let flat: Vec<usize> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(flat, items, "every item once, in order ({n})");
            assert!(
                chunks.iter().all(|c| keep_prepared(c.len())),
                "{n}: {:?}",
                chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
            );
            assert!(chunks.len() <= 8, "{n}");
        }
        let big: Vec<usize> = (0..1000).collect();
        assert_eq!(statement_chunks(&big, 16).len(), 1, "a big batch is one statement");
        assert_eq!(statement_chunks(&big, 16)[0].len(), 1000);
    }
}
