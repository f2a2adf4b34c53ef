//! Usage on SQLite: the seed's repository and event recorder, and the statements of the hot
//! path, which the writer (`crate::writer`) runs inside one `BEGIN IMMEDIATE` transaction
//! through `SqliteUsageTx`.
//!
//! Every statement of the hot path names its tenants (`tenant_id = ?` or `tenant_id IN
//! (...)`, also beside the joins on a batch's keys), or inserts rows whose tenants are bound
//! values, as on PostgreSQL; `tests/hot_path` checks it on the statement log.

use std::collections::{BTreeSet, HashMap};

use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::{QueryBuilder, Sqlite};
use tally_domain::{
    Delivery, IdempotencyKey, MetricCode, Period, RecordedEvent, TenantId, Timestamp, UsageRecord, Watermark,
};
use tally_store::{
    Answer, Ctx, EntitlementLookup, EventQuery, EventRecorder, FireKey, FireStates, LockedRecord, RecordKey,
    RecordState, RecordWrite, StoreError, UsageRepository, UsageWriter, WebhookRule, WriteOp, reset_audit,
};
use uuid::Uuid;

use crate::error::{EVENT_IDEMPOTENCY_CONSTRAINT, store_error, unique_violation};
use crate::rows::{self, EventRow, RecordRow, event_columns, insert_audit, micros, record_columns};
use crate::{SqliteStore, StatementLog, admin};

impl UsageRepository for SqliteStore {
    async fn usage_now(&self, key: &RecordKey, now: Timestamp) -> Result<(i64, i64), StoreError> {
        // One statement: the counter and the open holds on it, each one index search.
        self.log
            .query_as(
                "SELECT COALESCE((SELECT current_usage FROM quota_usage_record \
                   WHERE tenant_id = ?1 AND metric_code = ?2 AND period_start = ?3), 0), \
                 COALESCE((SELECT SUM(amount) FROM tally_reservation INDEXED BY tally_reservation_open_idx \
                   WHERE tenant_id = ?1 AND metric_code = ?2 AND period_start = ?3 \
                   AND status = 'open' AND expires_at > ?4), 0)",
            )
            .bind(key.tenant_id.as_str())
            .bind(key.metric_code.as_str())
            .bind(micros(key.period.start()))
            .bind(micros(now))
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn list_by_tenant_and_metric(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(concat!(
            "SELECT ",
            record_columns!(),
            " FROM quota_usage_record WHERE tenant_id = "
        ));
        qb.push_bind(tenant.as_str()).push(" AND metric_code = ").push_bind(metric.as_str());
        if let Some(from) = from {
            qb.push(" AND period_start >= ").push_bind(micros(from));
        }
        if let Some(to) = to {
            qb.push(" AND period_start < ").push_bind(micros(to));
        }
        qb.push(" ORDER BY period_start DESC LIMIT ").push_bind(i64::from(limit));
        let found: Vec<RecordRow> =
            self.log.built_as(&mut qb).fetch_all(&self.pool).await.map_err(store_error)?;
        found.into_iter().map(rows::record).collect()
    }

    async fn get_current_period(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        at: Timestamp,
    ) -> Result<UsageRecord, StoreError> {
        let found: Option<RecordRow> = self
            .log
            .query_as(concat!(
                "SELECT ",
                record_columns!(),
                " FROM quota_usage_record WHERE tenant_id = ?1 AND metric_code = ?2",
                " AND period_start <= ?3 AND period_end > ?3 ORDER BY period_start DESC LIMIT 1"
            ))
            .bind(tenant.as_str())
            .bind(metric.as_str())
            .bind(micros(at))
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        let row = found.ok_or_else(|| StoreError::not_found(format!("usage record of {tenant} {metric}")))?;
        rows::record(row)
    }

    async fn get_by_id(&self, tenant: &TenantId, id: Uuid) -> Result<UsageRecord, StoreError> {
        let found: Option<RecordRow> = self
            .log
            .query_as(concat!(
                "SELECT ",
                record_columns!(),
                " FROM quota_usage_record WHERE id = ?1 AND tenant_id = ?2"
            ))
            .bind(id.to_string())
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        rows::record(found.ok_or_else(|| StoreError::not_found(format!("usage record {id}")))?)
    }

    async fn save(&self, record: &UsageRecord) -> Result<(), StoreError> {
        let _writer = self.lock_writer().await?;
        // Only the counter and updated_at change; an id that names another tenant's, metric's
        // or period's record matches no row of the upsert's WHERE, which is a conflict.
        let upsert = self.log.query(concat!(
            "INSERT INTO quota_usage_record (",
            record_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            " ON CONFLICT (id) DO UPDATE SET current_usage = excluded.current_usage,",
            " updated_at = excluded.updated_at",
            " WHERE quota_usage_record.tenant_id = excluded.tenant_id",
            " AND quota_usage_record.metric_code = excluded.metric_code",
            " AND quota_usage_record.period_start = excluded.period_start",
            " AND quota_usage_record.period_end = excluded.period_end"
        ));
        let done = bind_record(upsert, record).execute(&self.pool).await.map_err(store_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "usage record {} exists for another tenant, metric or period",
                record.id
            )));
        }
        Ok(())
    }

    async fn delete(&self, tenant: &TenantId, id: Uuid) -> Result<(), StoreError> {
        let _writer = self.lock_writer().await?;
        let done = self
            .log
            .query("DELETE FROM quota_usage_record WHERE id = ?1 AND tenant_id = ?2")
            .bind(id.to_string())
            .bind(tenant.as_str())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(format!("usage record {id}")));
        }
        Ok(())
    }

    async fn get_for_period(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period_start: Timestamp,
    ) -> Result<UsageRecord, StoreError> {
        let found = find_record(&self.log, &self.pool, tenant, metric, period_start).await?;
        found.ok_or_else(|| {
            StoreError::not_found(format!("usage record of {tenant} {metric} at {period_start}"))
        })
    }
}

/// One page of a tenant's events, newest first: `SELECT ... LIMIT ?` appended to `qb`.
///
/// The listing index is named: without statistics SQLite 3.51 takes the older
/// `(tenant_id, metric_code, created_at)` index for `tenant_id = ?` and sorts every event
/// of the tenant, where this one reads the page in order and stops.
fn push_events_page(qb: &mut QueryBuilder<Sqlite>, tenant: &TenantId, query: &EventQuery) {
    qb.push(concat!(
        "SELECT ",
        event_columns!(),
        " FROM quota_usage_event INDEXED BY quota_usage_event_tenant_ts_idx WHERE tenant_id = "
    ));
    qb.push_bind(tenant.as_str());
    if let Some(metric) = &query.metric_code {
        qb.push(" AND metric_code = ").push_bind(metric.as_str());
    }
    if let Some(from) = query.from {
        qb.push(" AND timestamp >= ").push_bind(micros(from));
    }
    if let Some(to) = query.to {
        qb.push(" AND timestamp < ").push_bind(micros(to));
    }
    if let Some(kind) = query.kind {
        qb.push(" AND kind = ").push_bind(kind.as_str());
    }
    if let Some(after) = query.after {
        // The first term bounds the index range; the second is the exact keyset order.
        // UUID v7 text compares in time order: fixed-width lowercase hex.
        let at = micros(after.timestamp);
        qb.push(" AND timestamp <= ").push_bind(at);
        qb.push(" AND (timestamp < ").push_bind(at);
        qb.push(" OR (timestamp = ").push_bind(at).push(" AND id < ").push_bind(after.id.to_string());
        qb.push("))");
    }
    qb.push(" ORDER BY timestamp DESC, id DESC LIMIT ").push_bind(i64::from(query.limit));
}

/// Binds a record's columns, in `record_columns!()` order, as `?1` to `?8`.
fn bind_record<'q>(
    query: sqlx::query::Query<'q, Sqlite, SqliteArguments>,
    record: &UsageRecord,
) -> sqlx::query::Query<'q, Sqlite, SqliteArguments> {
    query
        .bind(record.id.to_string())
        .bind(record.tenant_id.as_str().to_owned())
        .bind(record.metric_code.as_str().to_owned())
        .bind(record.current_usage)
        .bind(micros(record.period_start))
        .bind(micros(record.period_end))
        .bind(micros(record.created_at))
        .bind(micros(record.updated_at))
}

/// The record of `metric` whose period starts at `period_start`, if any.
async fn find_record<'e, E>(
    log: &StatementLog,
    executor: E,
    tenant: &TenantId,
    metric: &MetricCode,
    period_start: Timestamp,
) -> Result<Option<UsageRecord>, StoreError>
where
    E: sqlx::SqliteExecutor<'e>,
{
    let found: Option<RecordRow> = log
        .query_as(concat!(
            "SELECT ",
            record_columns!(),
            " FROM quota_usage_record WHERE tenant_id = ?1 AND metric_code = ?2 AND period_start = ?3"
        ))
        .bind(tenant.as_str())
        .bind(metric.as_str())
        .bind(micros(period_start))
        .fetch_optional(executor)
        .await
        .map_err(store_error)?;
    found.map(rows::record).transpose()
}

impl EventRecorder for SqliteStore {
    async fn find_events_by_keys(
        &self,
        keys: &[(TenantId, IdempotencyKey)],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        SqliteUsageTx { conn: &mut conn, log: &self.log }.find_events_by_keys(keys).await
    }

    async fn record(&self, event: &RecordedEvent) -> Result<(), StoreError> {
        let _writer = self.lock_writer().await?;
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        rows::insert_events(&self.log, &mut conn, std::slice::from_ref(event)).await.map_err(store_error)
    }

    async fn get_events_for_metric(
        &self,
        tenant: &TenantId,
        query: &EventQuery,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("");
        push_events_page(&mut qb, tenant, query);
        let found: Vec<EventRow> =
            self.log.built_as(&mut qb).fetch_all(&self.pool).await.map_err(store_error)?;
        found.into_iter().map(rows::event).collect()
    }
}

/// Runs one write of the shared algorithms (`$run`, an expression over the `SqliteUsageTx`
/// named `$tx`: `apply_in_tx`, `reserve_in_tx`, ...) in a `BEGIN IMMEDIATE` transaction
/// under the writer lock, and re-runs it when it lost a race on an idempotency key, at most
/// `APPLY_RETRY_MAX` times. `Ok` commits, whatever it holds (a refusal is an answer, and
/// what it wrote stands); `Err` rolls back.
impl UsageWriter for SqliteStore {
    async fn write(&self, ops: Vec<WriteOp>, ctx: Ctx) -> Result<Vec<Answer>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.committer.submit(ops, ctx).await
    }

    async fn write_whole(&self, ops: Vec<WriteOp>, ctx: Ctx) -> Result<Vec<Answer>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.committer.submit_whole(ops, ctx).await
    }

    async fn reset_usage(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period: Period,
        now: Timestamp,
        key_id: Option<Uuid>,
    ) -> Result<UsageRecord, StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = reset_in_tx(&self.log, w.conn(), tenant, metric, period, now, key_id).await;
        w.finish(outcome).await
    }
}

pub(crate) async fn reset_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    metric: &MetricCode,
    period: Period,
    now: Timestamp,
    key_id: Option<Uuid>,
) -> Result<UsageRecord, StoreError> {
    let before = match find_record(log, &mut *conn, tenant, metric, period.start()).await? {
        Some(existing) => existing,
        None => {
            let zero = UsageRecord::new(tenant.clone(), metric.clone(), period, now);
            let insert = log.query(concat!(
                "INSERT INTO quota_usage_record (",
                record_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ));
            bind_record(insert, &zero).execute(&mut *conn).await.map_err(store_error)?;
            zero
        }
    };
    let mut after = before.clone();
    after.reset(now);
    log.query(
        "UPDATE quota_usage_record SET current_usage = ?2, updated_at = ?3 WHERE tenant_id = ?4 AND id = ?1",
    )
    .bind(after.id.to_string())
    .bind(after.current_usage)
    .bind(micros(after.updated_at))
    .bind(tenant.as_str())
    .execute(&mut *conn)
    .await
    .map_err(store_error)?;
    insert_audit(log, conn, &reset_audit(key_id, now, &before)).await?;
    Ok(after)
}

/// One `BEGIN IMMEDIATE` transaction seen by the apply algorithm. The write lock is held
/// from the start, so nothing changes between its reads and its writes.
pub(crate) struct SqliteUsageTx<'c> {
    pub(crate) conn: &'c mut SqliteConnection,
    pub(crate) log: &'c StatementLog,
}

/// Appends `column IN (?, ...)` over the distinct tenants among `tenants`: every statement
/// of the hot path names its tenants, so that the tables can be distributed by tenant.
pub(crate) fn push_tenants_in<'t>(
    qb: &mut QueryBuilder<Sqlite>,
    column: &str,
    tenants: impl IntoIterator<Item = &'t TenantId>,
) {
    let distinct: BTreeSet<&str> = tenants.into_iter().map(TenantId::as_str).collect();
    qb.push(column).push(" IN (");
    let mut list = qb.separated(", ");
    for tenant in distinct {
        list.push_bind(tenant);
    }
    qb.push(")");
}

/// The events stored under these keys: a `SELECT` appended to `qb`. The keys are the outer
/// loop of a `CROSS JOIN` (which SQLite never reorders), so each is one search of the
/// unique index; a row-value `IN (VALUES ...)` would scan the table.
fn push_events_by_keys(qb: &mut QueryBuilder<Sqlite>, keys: &[(TenantId, IdempotencyKey)]) {
    // The key columns are named apart from the event's, which the select names bare.
    qb.push("WITH k (key_tenant_id, key_value) AS (");
    qb.push_values(keys, |mut b, (tenant, key)| {
        b.push_bind(tenant.as_str()).push_bind(key.as_str());
    });
    qb.push(concat!(
        ") SELECT ",
        event_columns!(),
        " FROM k CROSS JOIN quota_usage_event AS e",
        " ON e.tenant_id = k.key_tenant_id AND e.idempotency_key = k.key_value WHERE "
    ));
    push_tenants_in(qb, "e.tenant_id", keys.iter().map(|(tenant, _)| tenant));
}

/// The id and counter of the records with these keys: a `SELECT` appended to `qb`, one
/// search of `quota_usage_record_uq` per key (see `push_events_by_keys`).
fn push_records_by_keys(qb: &mut QueryBuilder<Sqlite>, keys: &[RecordKey]) {
    qb.push("WITH k (tenant_id, metric_code, period_start) AS (");
    qb.push_values(keys, |mut b, key| {
        b.push_bind(key.tenant_id.as_str())
            .push_bind(key.metric_code.as_str())
            .push_bind(micros(key.period.start()));
    });
    qb.push(
        ") SELECT r.tenant_id, r.metric_code, r.period_start, r.id, r.current_usage, r.closed_at, r.reopened_at \
         FROM k CROSS JOIN quota_usage_record AS r ON r.tenant_id = k.tenant_id \
         AND r.metric_code = k.metric_code AND r.period_start = k.period_start WHERE ",
    );
    push_tenants_in(qb, "r.tenant_id", keys.iter().map(|key| &key.tenant_id));
}

/// Columns bound per row when creating a zero record.
const NEW_RECORD_BINDS: usize = 7;
/// Values bound per row when selecting events by key: the key, and its tenant in the filter.
const EVENT_KEY_BINDS: usize = 3;
/// Values bound per row when selecting records by key: the key, and its tenant in the filter.
const RECORD_KEY_BINDS: usize = 4;
/// Values bound per row when updating counters: the row, and its tenant in the filter.
const RECORD_UPDATE_BINDS: usize = 4;
/// Values bound per row when deleting records: the id, and its tenant in the filter.
const RECORD_DELETE_BINDS: usize = 2;

impl SqliteUsageTx<'_> {
    pub(crate) async fn load_entitlements(
        &mut self,
        tenants: &[TenantId],
    ) -> Result<HashMap<TenantId, EntitlementLookup>, StoreError> {
        admin::load_entitlements(self.log, self.conn, tenants).await
    }

    pub(crate) async fn find_events_by_keys(
        &mut self,
        keys: &[(TenantId, IdempotencyKey)],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut found = Vec::new();
        for chunk in crate::rows::statement_chunks(keys, EVENT_KEY_BINDS) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("");
            push_events_by_keys(&mut qb, chunk);
            let page: Vec<EventRow> = self
                .log
                .built_as(&mut qb)
                .persistent(crate::rows::keep_prepared(chunk.len()))
                .fetch_all(&mut *self.conn)
                .await
                .map_err(store_error)?;
            for row in page {
                found.push(rows::event(row)?);
            }
        }
        Ok(found)
    }

    /// The records of `keys` that exist, with their counters; the others are absent. BEGIN
    /// IMMEDIATE holds the database's write lock, so reading is locking, and no other
    /// writer can create an absent one before this transaction ends.
    pub(crate) async fn load_records(
        &mut self,
        keys: &[RecordKey],
    ) -> Result<HashMap<RecordKey, LockedRecord>, StoreError> {
        // id, counter, closed_at, reopened_at; then the key in front, as a row.
        type Stored = (String, i64, Option<i64>, Option<i64>);
        type Row = (String, String, i64, String, i64, Option<i64>, Option<i64>);
        let mut stored: HashMap<(String, String, i64), Stored> = HashMap::with_capacity(keys.len());
        for chunk in crate::rows::statement_chunks(keys, RECORD_KEY_BINDS) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("");
            push_records_by_keys(&mut qb, chunk);
            let page: Vec<Row> = self
                .log
                .built_as(&mut qb)
                .persistent(crate::rows::keep_prepared(chunk.len()))
                .fetch_all(&mut *self.conn)
                .await
                .map_err(store_error)?;
            for (tenant_id, metric_code, period_start, id, current_usage, closed_at, reopened_at) in page {
                stored.insert(
                    (tenant_id, metric_code, period_start),
                    (id, current_usage, closed_at, reopened_at),
                );
            }
        }
        let mut locked = HashMap::with_capacity(keys.len());
        for key in keys {
            let lookup = (
                key.tenant_id.as_str().to_owned(),
                key.metric_code.as_str().to_owned(),
                micros(key.period.start()),
            );
            let record = match stored.remove(&lookup) {
                Some((id, current_usage, closed_at, reopened_at)) => LockedRecord {
                    closed_at: closed_at.map(|at| rows::instant("closed_at", at)).transpose()?,
                    reopened: reopened_at.is_some() && closed_at.is_none(),
                    ..LockedRecord::at(
                        rows::uuid("quota_usage_record.id", &id)?,
                        current_usage,
                        RecordState::Existing,
                    )
                },
                None => LockedRecord::absent(),
            };
            locked.insert(key.clone(), record);
        }
        Ok(locked)
    }

    /// Inserts the absent records among `writes` with their counters.
    pub(crate) async fn insert_records(
        &mut self,
        writes: &[&RecordWrite],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let at = micros(now);
        for chunk in crate::rows::statement_chunks(writes, NEW_RECORD_BINDS) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new(concat!("INSERT INTO quota_usage_record (", record_columns!(), ") "));
            qb.push_values(chunk, |mut b, w| {
                b.push_bind(w.id.to_string())
                    .push_bind(w.key.tenant_id.as_str())
                    .push_bind(w.key.metric_code.as_str())
                    .push_bind(w.current_usage)
                    .push_bind(micros(w.key.period.start()))
                    .push_bind(micros(w.key.period.end()))
                    .push_bind(at)
                    .push_bind(at);
            });
            self.log
                .built(&mut qb)
                .persistent(crate::rows::keep_prepared(chunk.len()))
                .execute(&mut *self.conn)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    pub(crate) async fn update_records(
        &mut self,
        updates: &[&RecordWrite],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let at = micros(now);
        for chunk in crate::rows::statement_chunks(updates, RECORD_UPDATE_BINDS) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("WITH v (id, current_usage, updated_at) AS (");
            qb.push_values(chunk, |mut b, u| {
                b.push_bind(u.id.to_string()).push_bind(u.current_usage).push_bind(at);
            });
            qb.push(
                ") UPDATE quota_usage_record SET current_usage = v.current_usage, updated_at = v.updated_at \
                 FROM v WHERE quota_usage_record.id = v.id AND ",
            );
            push_tenants_in(&mut qb, "quota_usage_record.tenant_id", chunk.iter().map(|u| &u.key.tenant_id));
            let done = self
                .log
                .built(&mut qb)
                .persistent(crate::rows::keep_prepared(chunk.len()))
                .execute(&mut *self.conn)
                .await
                .map_err(store_error)?;
            if done.rows_affected() != chunk.len() as u64 {
                return Err(StoreError::Other(format!(
                    "updated {} of {} locked usage records",
                    done.rows_affected(),
                    chunk.len()
                )));
            }
        }
        Ok(())
    }

    pub(crate) async fn delete_records(&mut self, keys: &[(RecordKey, Uuid)]) -> Result<(), StoreError> {
        for chunk in crate::rows::statement_chunks(keys, RECORD_DELETE_BINDS) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("DELETE FROM quota_usage_record WHERE ");
            push_tenants_in(&mut qb, "tenant_id", chunk.iter().map(|(key, _)| &key.tenant_id));
            qb.push(" AND id IN (");
            let mut ids = qb.separated(", ");
            for (_, id) in chunk {
                ids.push_bind(id.to_string());
            }
            qb.push(")");
            self.log
                .built(&mut qb)
                .persistent(crate::rows::keep_prepared(chunk.len()))
                .execute(&mut *self.conn)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    pub(crate) async fn reserved_sums(
        &mut self,
        keys: &[RecordKey],
        now: Timestamp,
    ) -> Result<HashMap<RecordKey, i64>, StoreError> {
        crate::reservations::reserved_sums(self.log, self.conn, keys, now).await
    }

    pub(crate) async fn insert_events(&mut self, events: &[RecordedEvent]) -> Result<(), StoreError> {
        match rows::insert_events(self.log, self.conn, events).await {
            Ok(()) => Ok(()),
            Err(e) if unique_violation(&e).as_deref() == Some(EVENT_IDEMPOTENCY_CONSTRAINT) => {
                Err(StoreError::Retry)
            }
            Err(e) => Err(store_error(e)),
        }
    }

    pub(crate) async fn load_webhook_rules(&mut self) -> Result<Vec<WebhookRule>, StoreError> {
        crate::webhooks::load_webhook_rules(self.log, self.conn).await
    }

    /// `tally_config_version` as this transaction sees it.
    /// The watermarks of `tenants` (`None` for a tenant that never closed a period). Under
    /// `BEGIN IMMEDIATE` no close can move one before the commit.
    pub(crate) async fn load_watermarks(
        &mut self,
        tenants: &[&TenantId],
    ) -> Result<Vec<(TenantId, Option<Watermark>)>, StoreError> {
        let mut found = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let row: Option<(Option<i64>, Option<i64>)> = self
                .log
                .query_as("SELECT closed_before, closed_before_at FROM tally_tenant WHERE tenant_id = ?1")
                .bind(tenant.as_str())
                .fetch_optional(&mut *self.conn)
                .await
                .map_err(store_error)?;
            found.push(((*tenant).clone(), crate::periods::watermark(row.unwrap_or((None, None)))?));
        }
        Ok(found)
    }

    pub(crate) async fn config_version(&mut self) -> Result<i64, StoreError> {
        self.log
            .query_scalar("SELECT version FROM tally_config_version WHERE id = 1")
            .fetch_one(&mut *self.conn)
            .await
            .map_err(store_error)
    }

    pub(crate) async fn load_fire_states_of_records(
        &mut self,
        keys: &[RecordKey],
    ) -> Result<FireStates, StoreError> {
        crate::webhooks::load_fire_states_of_records(self.log, self.conn, keys).await
    }

    pub(crate) async fn write_outbox(
        &mut self,
        states: &[(FireKey, bool)],
        deliveries: &[Delivery],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        crate::webhooks::write_outbox(self.log, self.conn, states, deliveries, now).await
    }
}

#[cfg(test)]
mod tests {
    use tally_contract::{metric, now, tenant};
    use tally_domain::{EventReceipt, LimitEnforcement, Metadata, PeriodKind, UsageEvent};
    use tally_store::EventCursor;

    use super::*;

    /// SQLite's plan for the statement in `qb` (which starts with `EXPLAIN QUERY PLAN`).
    async fn plan_of(store: &SqliteStore, mut qb: QueryBuilder<Sqlite>) -> String {
        let steps: Vec<(i64, i64, i64, String)> = qb.build_query_as().fetch_all(store.pool()).await.unwrap();
        steps.into_iter().map(|(_, _, _, detail)| detail).collect::<Vec<_>>().join("\n")
    }

    fn explain() -> QueryBuilder<Sqlite> {
        QueryBuilder::new("EXPLAIN QUERY PLAN ")
    }

    #[tokio::test]
    async fn event_pages_walk_the_listing_index_whatever_the_filter() {
        let store = SqliteStore::open_temp_file().await.unwrap();
        let tenant = TenantId::parse("acme").unwrap();
        let at = tally_domain::time::parse_rfc3339("2026-11-29T10:00:00Z").unwrap();
        let cursor = EventCursor { timestamp: at, id: Uuid::now_v7() };
        let queries = [
            EventQuery { metric_code: None, from: None, to: None, limit: 10, after: None, kind: None },
            EventQuery {
                metric_code: None,
                from: Some(at),
                to: Some(at),
                limit: 10,
                after: Some(cursor),
                kind: None,
            },
            EventQuery {
                metric_code: Some(MetricCode::parse("api_calls").unwrap()),
                from: None,
                to: None,
                limit: 10,
                after: Some(cursor),
                kind: None,
            },
        ];
        for query in queries {
            let mut qb = explain();
            push_events_page(&mut qb, &tenant, &query);
            let plan = plan_of(&store, qb).await;
            assert!(
                plan.contains("USING INDEX quota_usage_event_tenant_ts_idx (tenant_id=?"),
                "{query:?}: {plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "no sort step: {plan}");
        }
    }

    #[tokio::test]
    async fn keyed_lookups_search_the_unique_indexes_and_never_scan() {
        let store = SqliteStore::open_temp_file().await.unwrap();
        let tenant = TenantId::parse("acme").unwrap();
        let keys: Vec<(TenantId, IdempotencyKey)> =
            (0..3).map(|i| (tenant.clone(), IdempotencyKey::parse(&format!("k{i}")).unwrap())).collect();
        let mut qb = explain();
        push_events_by_keys(&mut qb, &keys);
        let plan = plan_of(&store, qb).await;
        // The tenant filter leaves the search on the unique key whole.
        assert!(
            plan.contains("SEARCH e USING INDEX") && plan.contains("(tenant_id=? AND idempotency_key=?)"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN e") && !plan.contains("SCAN quota_usage_event"), "{plan}");

        let at = tally_domain::time::parse_rfc3339("2026-11-29T10:00:00Z").unwrap();
        let period = PeriodKind::Day.containing(at, at).unwrap();
        let record_keys: Vec<RecordKey> = ["a", "b"]
            .into_iter()
            .map(|m| RecordKey {
                tenant_id: tenant.clone(),
                metric_code: MetricCode::parse(m).unwrap(),
                period,
            })
            .collect();
        let mut qb = explain();
        push_records_by_keys(&mut qb, &record_keys);
        let plan = plan_of(&store, qb).await;
        assert!(
            plan.contains("SEARCH r USING INDEX")
                && plan.contains("(tenant_id=? AND metric_code=? AND period_start=?)"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN r") && !plan.contains("SCAN quota_usage_record"), "{plan}");
    }

    fn record_key(m: &str) -> RecordKey {
        RecordKey {
            tenant_id: tenant("acme"),
            metric_code: metric(m),
            period: PeriodKind::Day.containing(now(), now()).unwrap(),
        }
    }

    #[tokio::test]
    async fn load_records_reads_what_exists_and_notes_the_rest_absent() {
        let store = SqliteStore::open_temp_file().await.unwrap();
        let mut tx = store.begin_immediate().await.unwrap();
        let first = SqliteUsageTx { conn: &mut tx, log: &store.log }
            .load_records(&[record_key("a"), record_key("b")])
            .await
            .unwrap();
        assert!(first.values().all(|l| l.state == RecordState::Absent && l.current_usage == 0), "{first:?}");
        let a = first[&record_key("a")].id;
        let write = RecordWrite { id: a, key: record_key("a"), current_usage: 5, insert: true };
        SqliteUsageTx { conn: &mut tx, log: &store.log }.insert_records(&[&write], now()).await.unwrap();
        tx.commit().await.unwrap();

        let mut tx = store.begin_immediate().await.unwrap();
        let keys = [record_key("a"), record_key("b")];
        let second = SqliteUsageTx { conn: &mut tx, log: &store.log }.load_records(&keys).await.unwrap();
        assert_eq!(second[&record_key("a")], LockedRecord::at(a, 5, RecordState::Existing));
        assert_eq!(second[&record_key("b")].state, RecordState::Absent);
        let update = RecordWrite { id: a, key: record_key("a"), current_usage: 7, insert: false };
        SqliteUsageTx { conn: &mut tx, log: &store.log }.update_records(&[&update], now()).await.unwrap();
        tx.commit().await.unwrap();
        let rows: Vec<i64> = sqlx::query_scalar("SELECT current_usage FROM quota_usage_record")
            .fetch_all(store.pool())
            .await
            .unwrap();
        assert_eq!(rows, vec![7]);
    }

    fn event(key: Option<&str>) -> RecordedEvent {
        RecordedEvent {
            event: UsageEvent {
                id: Uuid::now_v7(),
                tenant_id: tenant("acme"),
                metric_code: metric("api_calls"),
                amount: 1,
                metadata: Metadata::default(),
                idempotency_key: key.map(|k| IdempotencyKey::parse(k).unwrap()),
                timestamp: now(),
                created_at: now(),
                kind: tally_domain::EventKind::Usage,
                reason: None,
            },
            receipt: EventReceipt {
                usage_after: 1,
                limit: None,
                enforcement: LimitEnforcement::None,
                period: PeriodKind::Day.containing(now(), now()).unwrap(),
                timestamp_explicit: false,
                set: false,
                reserved: 0,
            },
        }
    }

    #[tokio::test]
    async fn a_key_taken_since_the_lookup_is_a_retry_and_a_taken_id_a_conflict() {
        let store = SqliteStore::open_temp_file().await.unwrap();
        let mut tx = store.begin_immediate().await.unwrap();
        let first = event(Some("k"));
        SqliteUsageTx { conn: &mut tx, log: &store.log }
            .insert_events(std::slice::from_ref(&first))
            .await
            .unwrap();
        let again = SqliteUsageTx { conn: &mut tx, log: &store.log }.insert_events(&[event(Some("k"))]).await;
        assert_eq!(again, Err(StoreError::Retry));
        let mut same_id = event(None);
        same_id.event.id = first.event.id;
        let clash = SqliteUsageTx { conn: &mut tx, log: &store.log }.insert_events(&[same_id]).await;
        assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
        let found = SqliteUsageTx { conn: &mut tx, log: &store.log }
            .find_events_by_keys(&[(tenant("acme"), IdempotencyKey::parse("k").unwrap())])
            .await
            .unwrap();
        assert_eq!(found, vec![first]);
    }
}
