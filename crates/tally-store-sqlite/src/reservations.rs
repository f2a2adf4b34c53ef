//! Reservations on SQLite (`tally_reservation`): the statements the writer runs inside its
//! `BEGIN IMMEDIATE` transactions, and the reads and the sweep beside them.

use std::collections::HashMap;

use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};
use tally_domain::limits::RESERVATIONS_OPEN_MAX;
use tally_domain::{IdempotencyKey, MetricCode, Period, RecordedEvent, Reservation, TenantId, Timestamp};
use tally_store::{RecordKey, ReservationStore, StoreError};
use uuid::Uuid;

use crate::error::{store_error, unique_violation};
use crate::rows::{self, instant, keep_prepared, micros};
use crate::usage::{SqliteUsageTx, push_tenants_in};
use crate::{SqliteStore, StatementLog};

const RESERVATION_COLUMNS: &str = "id, tenant_id, metric_code, amount, period_start, period_end, idempotency_key, \
     ttl_seconds, created_at, expires_at, status, settled_at, committed_event_id, committed_amount, \
     usage_at_creation, reserved_at_creation, limit_at_creation";

fn reservation(row: &SqliteRow) -> Result<Reservation, StoreError> {
    let col = |name: &str| -> Result<i64, StoreError> { row.try_get(name).map_err(store_error) };
    let opt = |name: &str| -> Result<Option<i64>, StoreError> { row.try_get(name).map_err(store_error) };
    let text = |name: &str| -> Result<String, StoreError> { row.try_get(name).map_err(store_error) };
    let key: Option<String> = row.try_get("idempotency_key").map_err(store_error)?;
    let event: Option<String> = row.try_get("committed_event_id").map_err(store_error)?;
    Ok(Reservation {
        id: rows::uuid("tally_reservation.id", &text("id")?)?,
        tenant_id: TenantId::parse(&text("tenant_id")?)?,
        metric_code: MetricCode::parse(&text("metric_code")?)?,
        amount: col("amount")?,
        period: Period::new(
            instant("period_start", col("period_start")?)?,
            instant("period_end", col("period_end")?)?,
        )?,
        idempotency_key: key.as_deref().map(IdempotencyKey::parse).transpose()?,
        ttl_seconds: col("ttl_seconds")?,
        created_at: instant("created_at", col("created_at")?)?,
        expires_at: instant("expires_at", col("expires_at")?)?,
        status: text("status")?.parse()?,
        settled_at: opt("settled_at")?.map(|m| instant("settled_at", m)).transpose()?,
        committed_event_id: event.as_deref().map(|e| rows::uuid("committed_event_id", e)).transpose()?,
        committed_amount: opt("committed_amount")?,
        usage_at_creation: col("usage_at_creation")?,
        reserved_at_creation: col("reserved_at_creation")?,
        limit_at_creation: opt("limit_at_creation")?,
    })
}

/// What open reservations hold against each of `keys` at `now`.
pub(crate) async fn reserved_sums(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    keys: &[RecordKey],
    now: Timestamp,
) -> Result<HashMap<RecordKey, i64>, StoreError> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
        "SELECT tenant_id, metric_code, period_start, SUM(amount) FROM tally_reservation \
         INDEXED BY tally_reservation_open_idx WHERE status = 'open' AND expires_at > ",
    );
    qb.push_bind(micros(now)).push(" AND ");
    push_tenants_in(&mut qb, "tenant_id", keys.iter().map(|k| &k.tenant_id));
    qb.push(" GROUP BY tenant_id, metric_code, period_start");
    let rows: Vec<(String, String, i64, i64)> = log
        .built_as(&mut qb)
        .persistent(keep_prepared(keys.len()))
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    let mut out = HashMap::new();
    for key in keys {
        let start = micros(key.period.start());
        if let Some((_, _, _, held)) = rows
            .iter()
            .find(|(t, m, p, _)| t == key.tenant_id.as_str() && m == key.metric_code.as_str() && *p == start)
        {
            out.insert(key.clone(), *held);
        }
    }
    Ok(out)
}

impl SqliteUsageTx<'_> {
    pub(crate) async fn find_reservation_by_key(
        &mut self,
        tenant: &TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<Reservation>, StoreError> {
        let sql = format!(
            "SELECT {RESERVATION_COLUMNS} FROM tally_reservation WHERE tenant_id = ?1 AND idempotency_key = ?2"
        );
        let row = self
            .log
            .query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(key.as_str())
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(store_error)?;
        row.as_ref().map(reservation).transpose()
    }

    pub(crate) async fn lock_reservation(
        &mut self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Reservation>, StoreError> {
        // BEGIN IMMEDIATE holds the database's write lock: reading is locking.
        let sql =
            format!("SELECT {RESERVATION_COLUMNS} FROM tally_reservation WHERE tenant_id = ?1 AND id = ?2");
        let row = self
            .log
            .query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id.to_string())
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(store_error)?;
        row.as_ref().map(reservation).transpose()
    }

    pub(crate) async fn count_open_reservations(
        &mut self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        self.log
            .query_scalar(
                "SELECT COUNT(*) FROM tally_reservation INDEXED BY tally_reservation_open_idx \
                 WHERE tenant_id = ?1 AND status = 'open' AND expires_at > ?2",
            )
            .bind(tenant.as_str())
            .bind(micros(now))
            .fetch_one(&mut *self.conn)
            .await
            .map_err(store_error)
    }

    pub(crate) async fn insert_reservation(&mut self, r: &Reservation) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO tally_reservation ({RESERVATION_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        );
        let done = self
            .log
            .query(sqlx::AssertSqlSafe(sql))
            .bind(r.id.to_string())
            .bind(r.tenant_id.as_str())
            .bind(r.metric_code.as_str())
            .bind(r.amount)
            .bind(micros(r.period.start()))
            .bind(micros(r.period.end()))
            .bind(r.idempotency_key.as_ref().map(IdempotencyKey::as_str))
            .bind(r.ttl_seconds)
            .bind(micros(r.created_at))
            .bind(micros(r.expires_at))
            .bind(r.status.as_str())
            .bind(r.settled_at.map(micros))
            .bind(r.committed_event_id.map(|e| e.to_string()))
            .bind(r.committed_amount)
            .bind(r.usage_at_creation)
            .bind(r.reserved_at_creation)
            .bind(r.limit_at_creation)
            .execute(&mut *self.conn)
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(e) if unique_violation(&e).is_some() => Err(StoreError::Retry),
            Err(e) => Err(store_error(e)),
        }
    }

    pub(crate) async fn settle_reservation(&mut self, r: &Reservation) -> Result<(), StoreError> {
        self.log
            .query(
                "UPDATE tally_reservation SET status = ?3, settled_at = ?4, committed_event_id = ?5, \
                 committed_amount = ?6 WHERE tenant_id = ?1 AND id = ?2",
            )
            .bind(r.tenant_id.as_str())
            .bind(r.id.to_string())
            .bind(r.status.as_str())
            .bind(r.settled_at.map(micros))
            .bind(r.committed_event_id.map(|e| e.to_string()))
            .bind(r.committed_amount)
            .execute(&mut *self.conn)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    pub(crate) async fn find_event_by_id(
        &mut self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        rows::event_by_id(self.log, &mut *self.conn, tenant, id).await
    }
}

impl ReservationStore for SqliteStore {
    async fn list_open_reservations(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<Vec<Reservation>, StoreError> {
        let sql = format!(
            "SELECT {RESERVATION_COLUMNS} FROM tally_reservation INDEXED BY tally_reservation_open_idx
              WHERE tenant_id = ?1 AND status = 'open' AND expires_at > ?2 ORDER BY created_at, id LIMIT ?3"
        );
        let rows = self
            .log
            .query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(micros(now))
            .bind(RESERVATIONS_OPEN_MAX)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        rows.iter().map(reservation).collect()
    }

    async fn reserved_by_period(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<Vec<(MetricCode, Timestamp, i64)>, StoreError> {
        let rows: Vec<(String, i64, i64)> = self
            .log
            .query_as(
                "SELECT metric_code, period_start, SUM(amount) FROM tally_reservation \
                 INDEXED BY tally_reservation_open_idx WHERE tenant_id = ?1 AND status = 'open' \
                 AND expires_at > ?2 GROUP BY metric_code, period_start",
            )
            .bind(tenant.as_str())
            .bind(micros(now))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        rows.into_iter()
            .map(|(m, start, held)| Ok((MetricCode::parse(&m)?, instant("period_start", start)?, held)))
            .collect()
    }

    async fn expire_reservations(&self, now: Timestamp, max: i64) -> Result<u64, StoreError> {
        let _writer = self.lock_writer().await?;
        let done = self
            .log
            .query(
                "UPDATE tally_reservation SET status = 'expired', settled_at = expires_at WHERE id IN \
                 (SELECT id FROM tally_reservation INDEXED BY tally_reservation_expiry_idx \
                  WHERE status = 'open' AND expires_at <= ?1 LIMIT ?2)",
            )
            .bind(micros(now))
            .bind(max)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }
}
