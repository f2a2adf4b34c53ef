//! The metric catalog on PostgreSQL (`tally_metric`, in the base schema).

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgRow;
use tally_domain::{AuditEntry, Metric, MetricCode, MetricSpec, Name, Timestamp};
use tally_store::{MetricStore, PutOutcome, StoreError};

use crate::PgStore;
use crate::admin::{UPSERT_PASSES_MAX, WHOLE_LIST_LEN_MAX, bump_config_version, insert_audit};
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
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        for _ in 0..UPSERT_PASSES_MAX {
            let sql = format!("SELECT {METRIC_COLUMNS} FROM tally_metric WHERE code = $1 FOR UPDATE");
            let existing = self
                .log
                .query(AssertSqlSafe(sql))
                .bind(code.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            let (metric, created) = match existing {
                Some(row) => {
                    let old = metric_from_row(&row)?;
                    if &old.spec == spec {
                        self.log.rollback(tx).await.map_err(map_err)?;
                        return Ok(PutOutcome::Unchanged(old));
                    }
                    let sql = format!(
                        "UPDATE tally_metric SET name = $2, unit = $3, kind = $4, updated_at = $5,
                                value_property = $6
                          WHERE code = $1 RETURNING {METRIC_COLUMNS}"
                    );
                    let row = self
                        .log
                        .query(AssertSqlSafe(sql))
                        .bind(code.as_str())
                        .bind(spec.name.as_str())
                        .bind(spec.unit.as_deref())
                        .bind(spec.kind.as_str())
                        .bind(now)
                        .bind(spec.value_property.as_deref())
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    (metric_from_row(&row)?, false)
                }
                None => {
                    let sql = format!(
                        "INSERT INTO tally_metric ({METRIC_COLUMNS}) VALUES ($1, $2, $3, $4, $6, $5, $5)
                         ON CONFLICT (code) DO NOTHING RETURNING {METRIC_COLUMNS}"
                    );
                    let row = self
                        .log
                        .query(AssertSqlSafe(sql))
                        .bind(code.as_str())
                        .bind(spec.name.as_str())
                        .bind(spec.unit.as_deref())
                        .bind(spec.kind.as_str())
                        .bind(now)
                        .bind(spec.value_property.as_deref())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    match row {
                        Some(row) => (metric_from_row(&row)?, true),
                        // A concurrent put created it meanwhile: lock it and compare.
                        None => continue,
                    }
                }
            };
            insert_audit(&self.log, &mut tx, audit).await?;
            bump_config_version(&self.log, &mut tx).await?;
            self.log.commit(tx).await.map_err(map_err)?;
            return Ok(if created { PutOutcome::Created(metric) } else { PutOutcome::Updated(metric) });
        }
        Err(StoreError::Retry)
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
