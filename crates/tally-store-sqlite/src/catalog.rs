//! The metric catalog on SQLite (`tally_metric`).

use sqlx::sqlite::SqliteConnection;
use tally_domain::{AuditEntry, Metric, MetricCode, MetricSpec, Name, Timestamp};
use tally_store::{MetricStore, PutOutcome, StoreError};

use crate::admin::bump_config_version;
use crate::error::store_error;
use crate::rows::{insert_audit, instant, micros};
use crate::{SqliteStore, StatementLog};

const METRIC_COLUMNS: &str = "code, name, unit, kind, value_property, created_at, updated_at";

type MetricRow = (String, String, Option<String>, String, Option<String>, i64, i64);

fn metric(row: MetricRow) -> Result<Metric, StoreError> {
    let (code, name, unit, kind, value_property, created_at, updated_at) = row;
    Ok(Metric {
        code: MetricCode::parse(&code)?,
        spec: MetricSpec { name: Name::parse(&name)?, unit, kind: kind.parse()?, value_property },
        created_at: instant("created_at", created_at)?,
        updated_at: instant("updated_at", updated_at)?,
    })
}

async fn find_metric(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    code: &MetricCode,
) -> Result<Option<Metric>, StoreError> {
    let sql = format!("SELECT {METRIC_COLUMNS} FROM tally_metric WHERE code = ?1");
    let found: Option<MetricRow> = log
        .query_as(sqlx::AssertSqlSafe(sql))
        .bind(code.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(store_error)?;
    found.map(metric).transpose()
}

async fn put_metric_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    code: &MetricCode,
    spec: &MetricSpec,
    now: Timestamp,
    audit: &AuditEntry,
) -> Result<PutOutcome<Metric>, StoreError> {
    let existing = find_metric(log, conn, code).await?;
    let metric = match &existing {
        Some(current) if &current.spec == spec => return Ok(PutOutcome::Unchanged(current.clone())),
        Some(current) => Metric { spec: spec.clone(), updated_at: now, ..current.clone() },
        None => Metric { code: code.clone(), spec: spec.clone(), created_at: now, updated_at: now },
    };
    let sql = format!(
        "INSERT INTO tally_metric ({METRIC_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (code) DO UPDATE SET name = excluded.name, unit = excluded.unit,
             kind = excluded.kind, value_property = excluded.value_property,
             updated_at = excluded.updated_at"
    );
    log.query(sqlx::AssertSqlSafe(sql))
        .bind(metric.code.as_str())
        .bind(metric.spec.name.as_str())
        .bind(metric.spec.unit.as_deref())
        .bind(metric.spec.kind.as_str())
        .bind(metric.spec.value_property.as_deref())
        .bind(micros(metric.created_at))
        .bind(micros(metric.updated_at))
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    insert_audit(log, conn, audit).await?;
    bump_config_version(log, conn).await?;
    Ok(if existing.is_some() { PutOutcome::Updated(metric) } else { PutOutcome::Created(metric) })
}

impl MetricStore for SqliteStore {
    async fn put_metric(
        &self,
        code: &MetricCode,
        spec: &MetricSpec,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<PutOutcome<Metric>, StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = put_metric_in_tx(&self.log, w.conn(), code, spec, now, audit).await;
        w.finish(outcome).await
    }

    async fn find_metric(&self, code: &MetricCode) -> Result<Option<Metric>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        find_metric(&self.log, &mut conn, code).await
    }

    async fn list_metrics(&self) -> Result<Vec<Metric>, StoreError> {
        let sql = format!("SELECT {METRIC_COLUMNS} FROM tally_metric ORDER BY code");
        let found: Vec<MetricRow> =
            self.log.query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await.map_err(store_error)?;
        found.into_iter().map(metric).collect()
    }
}
