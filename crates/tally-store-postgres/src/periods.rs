//! Closed periods on PostgreSQL: the tenant's watermark, reopening, and the periods billing
//! reads.
//!
//! The watermark (`closed_before`, `closed_before_at`) lives on the tenant's row in the base
//! schema, in both tenancies. A close or a reopening takes that row first, exclusively
//! (`FOR NO KEY UPDATE`, the lock an `UPDATE` of it takes), and only then touches the
//! tenant's records; every hot-path write into a period that may be closed takes the same row
//! `FOR SHARE` before its record locks (`PgUsageTx::load_watermarks`). So a close waits for
//! the batches in flight to commit, every batch after it sees its watermark, no in-flight
//! batch lands an event in a period once a close has committed, and the one lock order
//! (tenant row, then records) forms no deadlock. The exclusive lock is not `FOR UPDATE`: a
//! foreign-key check on the tenant (`FOR KEY SHARE`) need not wait for a close.

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection};
use tally_domain::{MetricCode, Period, Reason, RecordClosing, TenantId, Timestamp, Watermark};
use tally_store::{
    CloseMode, CloseOutcome, PeriodQuery, PeriodRecord, PeriodStore, StoreError, close_audit, reopen_audit,
};
use uuid::Uuid;

use crate::admin::{UPSERT_PASSES_MAX, insert_audit};
use crate::rows::{PERIOD_COLUMNS, get, map_err, period_from_row};
use crate::scope::{Scope, internal_id_from_db};
use crate::usage::BEGIN_READ_COMMITTED;
use crate::{PgStore, StatementLog, Tenancy};

/// A watermark from the `closed_before` and `closed_before_at` columns of `row`.
pub(crate) fn watermark_from_row(row: &PgRow) -> Result<Option<Watermark>, StoreError> {
    let closed_before: Option<Timestamp> = get(row, "closed_before")?;
    let moved_at: Option<Timestamp> = get(row, "closed_before_at")?;
    match (closed_before, moved_at) {
        (Some(closed_before), Some(moved_at)) => Ok(Some(Watermark { closed_before, moved_at })),
        (None, None) => Ok(None),
        other => Err(StoreError::Corrupt(format!("a tenant's watermark is half set: {other:?}"))),
    }
}

fn tenant_not_found(tenant: &TenantId) -> StoreError {
    StoreError::not_found(format!("tenant {tenant}"))
}

/// The tenant's row, locked exclusively in the caller's transaction: where its records live
/// and its watermark. `NotFound` when there is no such tenant.
async fn lock_tenant(
    store: &PgStore,
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<(Scope, Option<Watermark>), StoreError> {
    let row = store
        .log
        .query(
            "SELECT internal_id, closed_before, closed_before_at FROM tally_tenant
              WHERE tenant_id = $1 FOR NO KEY UPDATE",
        )
        .bind(tenant.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    let row = row.ok_or_else(|| tenant_not_found(tenant))?;
    let scope = match store.tenancy() {
        Tenancy::Shared => Scope::Base,
        Tenancy::Schema => Scope::of_internal_id(internal_id_from_db(get(&row, "internal_id")?)),
    };
    Ok((scope, watermark_from_row(&row)?))
}

/// The record of `metric`'s period starting at `start`, locked.
async fn lock_period(
    log: &StatementLog,
    conn: &mut PgConnection,
    scope: &Scope,
    tenant: &TenantId,
    metric: &MetricCode,
    start: Timestamp,
) -> Result<Option<PeriodRecord>, StoreError> {
    let sql = format!(
        "SELECT {PERIOD_COLUMNS} FROM {records}
          WHERE tenant_id = $1 AND metric_code = $2 AND period_start = $3 FOR UPDATE",
        records = scope.records()
    );
    let row = log
        .query(AssertSqlSafe(sql))
        .bind(tenant.as_str())
        .bind(metric.as_str())
        .bind(start)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.as_ref().map(period_from_row).transpose()
}

async fn close_in_tx(
    store: &PgStore,
    conn: &mut PgConnection,
    tenant: &TenantId,
    before: Timestamp,
    mode: CloseMode,
    now: Timestamp,
    key_id: Option<Uuid>,
) -> Result<CloseOutcome, StoreError> {
    let log = &store.log;
    let (scope, old) = lock_tenant(store, conn, tenant).await?;
    // The watermark only moves forward.
    let (closed_before, moved) = Watermark::after_close(old, before);
    if moved {
        log.query("UPDATE tally_tenant SET closed_before = $2, closed_before_at = $3 WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .bind(before)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    // An explicit close also closes again what was reopened under `before`; the automatic
    // one leaves a reopened period open.
    let (reopened, bound) = match mode {
        CloseMode::Explicit => ("", before),
        CloseMode::Automatic => (" AND reopened_at IS NULL", closed_before),
    };
    let sql = format!(
        "UPDATE {records} SET closed_at = $1
          WHERE tenant_id = $2 AND period_end <= $3 AND closed_at IS NULL{reopened}",
        records = scope.records()
    );
    let closed = log
        .query(AssertSqlSafe(sql))
        .bind(now)
        .bind(tenant.as_str())
        .bind(bound)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?
        .rows_affected();
    let outcome = CloseOutcome { closed_before, closed };
    if moved || closed > 0 {
        insert_audit(log, conn, &close_audit(key_id, now, tenant, before, mode, &outcome)).await?;
    }
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
async fn reopen_in_tx(
    store: &PgStore,
    conn: &mut PgConnection,
    tenant: &TenantId,
    metric: &MetricCode,
    period: Period,
    reason: &Reason,
    now: Timestamp,
    key_id: Option<Uuid>,
) -> Result<PeriodRecord, StoreError> {
    let log = &store.log;
    let (scope, mark) = lock_tenant(store, conn, tenant).await?;
    let under_mark = mark.is_some_and(|w| w.covers(period));
    let not_closed = || {
        StoreError::Conflict(format!(
            "the period of {metric} starting {} is not closed",
            tally_domain::time::format_rfc3339(period.start())
        ))
    };
    // A second pass finds the record that a concurrent transaction (a reset) created after
    // the first found none.
    for _ in 0..UPSERT_PASSES_MAX {
        let reopened = match lock_period(log, conn, &scope, tenant, metric, period.start()).await? {
            Some(found) => {
                let closing = RecordClosing { closed_at: found.closed_at, reopened_at: found.reopened_at };
                let closed = closing.closed_since(mark, period).is_some();
                if !closed {
                    return Err(not_closed());
                }
                let sql = format!(
                    "UPDATE {records} SET closed_at = NULL, reopened_at = $1 WHERE tenant_id = $2 AND id = $3
                     RETURNING {PERIOD_COLUMNS}",
                    records = scope.records()
                );
                let row = log
                    .query(AssertSqlSafe(sql))
                    .bind(now)
                    .bind(tenant.as_str())
                    .bind(found.record.id)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(map_err)?;
                period_from_row(&row)?
            }
            None if under_mark => {
                // Closed by the watermark without a record: the zero record carries the
                // reopening.
                let sql = format!(
                    "INSERT INTO {records} AS r
                            (id, tenant_id, metric_code, current_usage, period_start, period_end, created_at,
                             updated_at, reopened_at)
                     VALUES ($1, $2, $3, 0, $4, $5, $6, $6, $6)
                     ON CONFLICT ON CONSTRAINT quota_usage_record_uq DO NOTHING
                     RETURNING {PERIOD_COLUMNS}",
                    records = scope.records()
                );
                let row = log
                    .query(AssertSqlSafe(sql))
                    .bind(Uuid::now_v7())
                    .bind(tenant.as_str())
                    .bind(metric.as_str())
                    .bind(period.start())
                    .bind(period.end())
                    .bind(now)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(map_err)?;
                match row {
                    Some(row) => period_from_row(&row)?,
                    None => continue,
                }
            }
            None => return Err(not_closed()),
        };
        insert_audit(log, conn, &reopen_audit(key_id, now, tenant, metric, period, reason)).await?;
        return Ok(reopened);
    }
    Err(StoreError::Retry)
}

/// Commits `outcome`'s transaction when it is `Ok`, rolls it back otherwise.
async fn finish<T>(
    log: &StatementLog,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    outcome: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match outcome {
        Ok(value) => {
            log.commit(tx).await.map_err(map_err)?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = log.rollback(tx).await {
                tracing::debug!(error = %rollback, "rollback of a failed period change failed");
            }
            Err(e)
        }
    }
}

impl PeriodStore for PgStore {
    async fn close_periods(
        &self,
        tenant: &TenantId,
        before: Timestamp,
        mode: CloseMode,
        now: Timestamp,
        key_id: Option<Uuid>,
    ) -> Result<CloseOutcome, StoreError> {
        let mut tx = self.log.begin(self.pool(), BEGIN_READ_COMMITTED).await.map_err(map_err)?;
        let outcome = close_in_tx(self, &mut tx, tenant, before, mode, now, key_id).await;
        finish(&self.log, tx, outcome).await
    }

    async fn reopen_period(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period: Period,
        reason: &Reason,
        now: Timestamp,
        key_id: Option<Uuid>,
    ) -> Result<PeriodRecord, StoreError> {
        let mut tx = self.log.begin(self.pool(), BEGIN_READ_COMMITTED).await.map_err(map_err)?;
        let outcome = reopen_in_tx(self, &mut tx, tenant, metric, period, reason, now, key_id).await;
        finish(&self.log, tx, outcome).await
    }

    async fn list_periods(
        &self,
        tenant: &TenantId,
        query: &PeriodQuery,
    ) -> Result<Vec<PeriodRecord>, StoreError> {
        // Like the other lists of a tenant's rows, an unknown tenant has none.
        let Some(scope) = self.scope_of(self.pool(), tenant).await? else { return Ok(Vec::new()) };
        // Only the filters given reach SQL. Metric codes compare byte-wise (`COLLATE "C"`),
        // as SQLite and Rust order them, whatever the database's collation.
        let mut sql =
            format!("SELECT {PERIOD_COLUMNS} FROM {records} WHERE tenant_id = $1", records = scope.records());
        let mut n = 1;
        let mut next = || {
            n += 1;
            n
        };
        if query.metric_code.is_some() {
            sql.push_str(&format!(" AND metric_code = ${}", next()));
        }
        match query.closed {
            Some(true) => sql.push_str(" AND closed_at IS NOT NULL"),
            Some(false) => sql.push_str(" AND closed_at IS NULL"),
            None => {}
        }
        if query.from.is_some() {
            sql.push_str(&format!(" AND period_start >= ${}", next()));
        }
        if query.to.is_some() {
            sql.push_str(&format!(" AND period_start < ${}", next()));
        }
        if query.after.is_some() {
            let (start, code) = (next(), next());
            sql.push_str(&format!(
                " AND (period_start < ${start} OR (period_start = ${start} AND metric_code COLLATE \"C\" < ${code}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY period_start DESC, metric_code COLLATE \"C\" DESC LIMIT ${}",
            next()
        ));
        // Planned at each execution (see the crate docs, *Fresh plans*): the records grow.
        let mut q = self.log.query(AssertSqlSafe(sql)).persistent(false).bind(tenant.as_str());
        if let Some(metric) = &query.metric_code {
            q = q.bind(metric.as_str());
        }
        if let Some(from) = query.from {
            q = q.bind(from);
        }
        if let Some(to) = query.to {
            q = q.bind(to);
        }
        if let Some(after) = &query.after {
            q = q.bind(after.period_start).bind(after.metric_code.as_str());
        }
        // The caller bounds the page (an export reads long ones).
        let rows = q.bind(i64::from(query.limit)).fetch_all(self.pool()).await.map_err(map_err)?;
        rows.iter().map(period_from_row).collect()
    }

    async fn find_watermark(&self, tenant: &TenantId) -> Result<Option<Watermark>, StoreError> {
        let row = self
            .log
            .query("SELECT closed_before, closed_before_at FROM tally_tenant WHERE tenant_id = $1")
            .bind(tenant.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(map_err)?;
        let row = row.ok_or_else(|| tenant_not_found(tenant))?;
        watermark_from_row(&row)
    }
}
