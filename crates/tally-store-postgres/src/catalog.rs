//! The metric catalog on PostgreSQL (`tally_metric`, in the base schema).

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgRow;
use tally_domain::{AuditEntry, Metric, MetricCode, MetricSpec, Name, Timestamp};
use tally_store::{MetricStore, PutOutcome, StoreError};

use crate::PgStore;
use crate::admin::{UpsertPass, WHOLE_LIST_LEN_MAX, upsert_config};
use crate::rows::{get, map_err};

const METRIC_COLUMNS: &str = "code, name, unit, kind, value_property, created_at, updated_at";

fn metric_from_row(row: &PgRow) -> Result<Metric, StoreError> {
    let kind: &str = get(row, "kind")?;
    Ok(Metric {
        code: MetricCode::parse(get(row, "code")?)?,
        spec: MetricSpec {
            name: Name::parse(get(row, "name")?)?,
            unit: get(row, "unit")?,
            kind: kind.parse()?,
            value_property: get(row, "value_property")?,
        },
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

impl MetricStore for PgStore {
    async fn put_metric(
        &self,
        code: &MetricCode,
        spec: &MetricSpec,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<PutOutcome<Metric>, StoreError> {
        upsert_config!(self, audit, |conn| {
            let sql = format!("SELECT {METRIC_COLUMNS} FROM tally_metric WHERE code = $1 FOR UPDATE");
            let existing = self
                .log
                .query(AssertSqlSafe(sql))
                .bind(code.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
            let existing = existing.as_ref().map(metric_from_row).transpose()?;
            if let Some(old) = existing.as_ref().filter(|old| &old.spec == spec) {
                return Ok(UpsertPass::Unchanged(old.clone()));
            }
            // The same values either way: update the locked row, or insert a new one.
            let sql = if existing.is_some() {
                format!(
                    "UPDATE tally_metric SET name = $2, unit = $3, kind = $4, updated_at = $5, value_property = $6
                      WHERE code = $1 RETURNING {METRIC_COLUMNS}"
                )
            } else {
                format!(
                    "INSERT INTO tally_metric ({METRIC_COLUMNS}) VALUES ($1, $2, $3, $4, $6, $5, $5)
                     ON CONFLICT (code) DO NOTHING RETURNING {METRIC_COLUMNS}"
                )
            };
            let row = self
                .log
                .query(AssertSqlSafe(sql))
                .bind(code.as_str())
                .bind(spec.name.as_str())
                .bind(spec.unit.as_deref())
                .bind(spec.kind.as_str())
                .bind(now)
                .bind(spec.value_property.as_deref())
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(match (row, existing) {
                (Some(row), Some(_)) => UpsertPass::Written(PutOutcome::Updated(metric_from_row(&row)?)),
                (Some(row), None) => UpsertPass::Written(PutOutcome::Created(metric_from_row(&row)?)),
                (None, _) => UpsertPass::Raced,
            })
        })
    }

    async fn find_metric(&self, code: &MetricCode) -> Result<Option<Metric>, StoreError> {
        let sql = format!("SELECT {METRIC_COLUMNS} FROM tally_metric WHERE code = $1");
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(code.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(map_err)?;
        row.as_ref().map(metric_from_row).transpose()
    }

    async fn list_metrics(&self) -> Result<Vec<Metric>, StoreError> {
        let sql = format!("SELECT {METRIC_COLUMNS} FROM tally_metric ORDER BY code COLLATE \"C\" LIMIT $1");
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(WHOLE_LIST_LEN_MAX)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        rows.iter().map(metric_from_row).collect()
    }
}
