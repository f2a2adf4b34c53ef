//! Closed periods on SQLite: the tenant's watermark, reopening, and the periods billing
//! reads. Every change runs under the writer lock and `BEGIN IMMEDIATE`, like the hot path's
//! batches, so a close and a batch never interleave.

use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite};
use tally_domain::{MetricCode, Period, Reason, RecordClosing, TenantId, Timestamp, UsageRecord, Watermark};
use tally_store::{
    CloseMode, CloseOutcome, PeriodQuery, PeriodRecord, PeriodStore, StoreError, close_audit, reopen_audit,
};
use uuid::Uuid;

use crate::error::store_error;
use crate::rows::{self, RecordRow, insert_audit, instant, micros, record_columns};
use crate::{SqliteStore, StatementLog};

/// A watermark from its two `tally_tenant` columns.
pub(crate) fn watermark(row: (Option<i64>, Option<i64>)) -> Result<Option<Watermark>, StoreError> {
    match row {
        (Some(before), Some(at)) => Ok(Some(Watermark {
            closed_before: instant("closed_before", before)?,
            moved_at: instant("closed_before_at", at)?,
        })),
        (None, None) => Ok(None),
        other => Err(StoreError::Corrupt(format!("a tenant's watermark is half set: {other:?}"))),
    }
}

/// The tenant's watermark, or `NotFound` when the tenant does not exist.
async fn tenant_watermark(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenant: &TenantId,
) -> Result<Option<Watermark>, StoreError> {
    let row: Option<(Option<i64>, Option<i64>)> = log
        .query_as("SELECT closed_before, closed_before_at FROM tally_tenant WHERE tenant_id = ?1")
        .bind(tenant.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(store_error)?;
    let row = row.ok_or_else(|| StoreError::not_found(format!("tenant {tenant}")))?;
    watermark(row)
}

/// A record row followed by `closed_at, reopened_at`.
type PeriodRow = (String, String, String, i64, i64, i64, i64, i64, Option<i64>, Option<i64>);

fn period_record(row: PeriodRow) -> Result<PeriodRecord, StoreError> {
    let (id, tenant, metric, usage, start, end, created, updated, closed_at, reopened_at) = row;
    let record: RecordRow = (id, tenant, metric, usage, start, end, created, updated);
    Ok(PeriodRecord {
        record: rows::record(record)?,
        closed_at: closed_at.map(|at| instant("closed_at", at)).transpose()?,
        reopened_at: reopened_at.map(|at| instant("reopened_at", at)).transpose()?,
    })
}

async fn find_period(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    metric: &MetricCode,
    start: Timestamp,
) -> Result<Option<PeriodRecord>, StoreError> {
    let row: Option<PeriodRow> = log
        .query_as(concat!(
            "SELECT ",
            record_columns!(),
            ", closed_at, reopened_at FROM quota_usage_record",
            " WHERE tenant_id = ?1 AND metric_code = ?2 AND period_start = ?3"
        ))
        .bind(tenant.as_str())
        .bind(metric.as_str())
        .bind(micros(start))
        .fetch_optional(&mut *conn)
        .await
        .map_err(store_error)?;
    row.map(period_record).transpose()
}

async fn close_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    before: Timestamp,
    mode: CloseMode,
    now: Timestamp,
    key_id: Option<Uuid>,
) -> Result<CloseOutcome, StoreError> {
    let old = tenant_watermark(log, conn, tenant).await?;
    let (closed_before, moved) = Watermark::after_close(old, before);
    if moved {
        log.query("UPDATE tally_tenant SET closed_before = ?1, closed_before_at = ?2 WHERE tenant_id = ?3")
            .bind(micros(before))
            .bind(micros(now))
            .bind(tenant.as_str())
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
    }
    // An explicit close also closes again what was reopened under `before`; the automatic
    // one leaves a reopened period open.
    let sql = match mode {
        CloseMode::Explicit => {
            "UPDATE quota_usage_record SET closed_at = ?1 \
             WHERE tenant_id = ?2 AND period_end <= ?3 AND closed_at IS NULL"
        }
        CloseMode::Automatic => {
            "UPDATE quota_usage_record SET closed_at = ?1 \
             WHERE tenant_id = ?2 AND period_end <= ?3 AND closed_at IS NULL AND reopened_at IS NULL"
        }
    };
    let bound = if mode == CloseMode::Explicit { before } else { closed_before };
    let closed = log
        .query(sql)
        .bind(micros(now))
        .bind(tenant.as_str())
        .bind(micros(bound))
        .execute(&mut *conn)
        .await
        .map_err(store_error)?
        .rows_affected();
    let outcome = CloseOutcome { closed_before, closed };
    if moved || closed > 0 {
        insert_audit(log, conn, &close_audit(key_id, now, tenant, before, mode, &outcome)).await?;
    }
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
async fn reopen_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    metric: &MetricCode,
    period: Period,
    reason: &Reason,
    now: Timestamp,
    key_id: Option<Uuid>,
) -> Result<PeriodRecord, StoreError> {
    let mark = tenant_watermark(log, conn, tenant).await?;
    let under_mark = mark.is_some_and(|w| w.covers(period));
    let not_closed = || {
        StoreError::Conflict(format!(
            "the period of {metric} starting {} is not closed",
            tally_domain::time::format_rfc3339(period.start())
        ))
    };
    let reopened = match find_period(log, conn, tenant, metric, period.start()).await? {
        Some(found) => {
            let closing = RecordClosing { closed_at: found.closed_at, reopened_at: found.reopened_at };
            if closing.closed_since(mark, period).is_none() {
                return Err(not_closed());
            }
            log.query(
                "UPDATE quota_usage_record SET closed_at = NULL, reopened_at = ?1 WHERE tenant_id = ?2 AND id = ?3",
            )
            .bind(micros(now))
            .bind(tenant.as_str())
            .bind(found.record.id.to_string())
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
            PeriodRecord { closed_at: None, reopened_at: Some(now), ..found }
        }
        None if under_mark => {
            // Closed by the watermark without a record: the zero record carries the reopening.
            let zero = UsageRecord::new(tenant.clone(), metric.clone(), period, now);
            log.query(concat!(
                "INSERT INTO quota_usage_record (",
                record_columns!(),
                ", reopened_at) VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?6, ?6)"
            ))
            .bind(zero.id.to_string())
            .bind(tenant.as_str())
            .bind(metric.as_str())
            .bind(micros(period.start()))
            .bind(micros(period.end()))
            .bind(micros(now))
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
            PeriodRecord { record: zero, closed_at: None, reopened_at: Some(now) }
        }
        None => return Err(not_closed()),
    };
    insert_audit(log, conn, &reopen_audit(key_id, now, tenant, metric, period, reason)).await?;
    Ok(reopened)
}

impl PeriodStore for SqliteStore {
    async fn close_periods(
        &self,
        tenant: &TenantId,
        before: Timestamp,
        mode: CloseMode,
        now: Timestamp,
        key_id: Option<Uuid>,
    ) -> Result<CloseOutcome, StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = close_in_tx(&self.log, w.conn(), tenant, before, mode, now, key_id).await;
        w.finish(outcome).await
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
        let mut w = self.begin_write().await?;
        let outcome = reopen_in_tx(&self.log, w.conn(), tenant, metric, period, reason, now, key_id).await;
        w.finish(outcome).await
    }

    async fn list_periods(
        &self,
        tenant: &TenantId,
        query: &PeriodQuery,
    ) -> Result<Vec<PeriodRecord>, StoreError> {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(concat!(
            "SELECT ",
            record_columns!(),
            ", closed_at, reopened_at FROM quota_usage_record INDEXED BY quota_usage_record_tenant_start_idx",
            " WHERE tenant_id = "
        ));
        qb.push_bind(tenant.as_str());
        if let Some(metric) = &query.metric_code {
            qb.push(" AND metric_code = ").push_bind(metric.as_str());
        }
        match query.closed {
            Some(true) => {
                qb.push(" AND closed_at IS NOT NULL");
            }
            Some(false) => {
                qb.push(" AND closed_at IS NULL");
            }
            None => {}
        }
        if let Some(from) = query.from {
            qb.push(" AND period_start >= ").push_bind(micros(from));
        }
        if let Some(to) = query.to {
            qb.push(" AND period_start < ").push_bind(micros(to));
        }
        if let Some(after) = &query.after {
            let at = micros(after.period_start);
            qb.push(" AND (period_start < ").push_bind(at);
            qb.push(" OR (period_start = ").push_bind(at);
            qb.push(" AND metric_code < ").push_bind(after.metric_code.as_str().to_owned()).push("))");
        }
        qb.push(" ORDER BY period_start DESC, metric_code DESC LIMIT ").push_bind(i64::from(query.limit));
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        let found: Vec<PeriodRow> =
            self.log.built_as(&mut qb).persistent(false).fetch_all(&mut *conn).await.map_err(store_error)?;
        found.into_iter().map(period_record).collect()
    }

    async fn find_watermark(&self, tenant: &TenantId) -> Result<Option<Watermark>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        tenant_watermark(&self.log, &mut conn, tenant).await
    }
}
