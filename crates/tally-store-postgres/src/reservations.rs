//! Reservations on PostgreSQL (`tally_reservation`, in the base schema in both tenancies):
//! the statements the writer runs inside its READ COMMITTED transactions, and the
//! reads and the sweep beside them. Every statement names its tenant.

use std::collections::HashMap;

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection};
use tally_domain::limits::RESERVATIONS_OPEN_MAX;
use tally_domain::{IdempotencyKey, MetricCode, Period, RecordedEvent, Reservation, TenantId, Timestamp};
use tally_store::{RecordKey, ReservationStore, StoreError};
use uuid::Uuid;

use crate::rows::{get, map_err};
use crate::usage::PgUsageTx;
use crate::{PgStore, StatementLog, Tenancy};

const RESERVATION_COLUMNS: &str = "id, tenant_id, metric_code, amount, period_start, period_end, idempotency_key, \
     ttl_seconds, created_at, expires_at, status, settled_at, committed_event_id, committed_amount, \
     usage_at_creation, reserved_at_creation, limit_at_creation";

fn reservation(row: &PgRow) -> Result<Reservation, StoreError> {
    let key: Option<&str> = get(row, "idempotency_key")?;
    let status: &str = get(row, "status")?;
    Ok(Reservation {
        id: get(row, "id")?,
        tenant_id: TenantId::parse(get(row, "tenant_id")?)?,
        metric_code: MetricCode::parse(get(row, "metric_code")?)?,
        amount: get(row, "amount")?,
        period: Period::new(get(row, "period_start")?, get(row, "period_end")?)?,
        idempotency_key: key.map(IdempotencyKey::parse).transpose()?,
        ttl_seconds: get(row, "ttl_seconds")?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
        status: status.parse()?,
        settled_at: get(row, "settled_at")?,
        committed_event_id: get(row, "committed_event_id")?,
        committed_amount: get(row, "committed_amount")?,
        usage_at_creation: get(row, "usage_at_creation")?,
        reserved_at_creation: get(row, "reserved_at_creation")?,
        limit_at_creation: get(row, "limit_at_creation")?,
    })
}

/// What open reservations hold against each of `keys` at `now`.
pub(crate) async fn reserved_sums(
    log: &StatementLog,
    conn: &mut PgConnection,
    keys: &[RecordKey],
    now: Timestamp,
) -> Result<HashMap<RecordKey, i64>, StoreError> {
    let rows = log
        .query(
            "SELECT tenant_id, metric_code, period_start, SUM(amount)::bigint AS held
               FROM tally_reservation
              WHERE tenant_id = ANY($1) AND status = 'open' AND expires_at > $4
                AND (tenant_id, metric_code, period_start)
                    IN (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]))
              GROUP BY tenant_id, metric_code, period_start",
        )
        .bind(keys.iter().map(|k| k.tenant_id.as_str()).collect::<Vec<&str>>())
        .bind(keys.iter().map(|k| k.metric_code.as_str()).collect::<Vec<&str>>())
        .bind(keys.iter().map(|k| k.period.start()).collect::<Vec<Timestamp>>())
        .bind(now)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    let mut out = HashMap::new();
    for row in &rows {
        let (tenant, metric, start): (&str, &str, Timestamp) =
            (get(row, "tenant_id")?, get(row, "metric_code")?, get(row, "period_start")?);
        if let Some(key) = keys.iter().find(|k| {
            k.tenant_id.as_str() == tenant && k.metric_code.as_str() == metric && k.period.start() == start
        }) {
            out.insert(key.clone(), get(row, "held")?);
        }
    }
    Ok(out)
}

impl PgUsageTx {
    pub(crate) async fn find_reservation_by_key(
        &mut self,
        tenant: &TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<Reservation>, StoreError> {
        let sql = format!(
            "SELECT {RESERVATION_COLUMNS} FROM tally_reservation WHERE tenant_id = $1 AND idempotency_key = $2"
        );
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(key.as_str())
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)?;
        row.as_ref().map(reservation).transpose()
    }

    pub(crate) async fn lock_reservation(
        &mut self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Reservation>, StoreError> {
        let sql = format!(
            "SELECT {RESERVATION_COLUMNS} FROM tally_reservation WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
        );
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)?;
        row.as_ref().map(reservation).transpose()
    }

    pub(crate) async fn count_open_reservations(
        &mut self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        self.log
            .query_scalar::<i64>(
                "SELECT COUNT(*) FROM tally_reservation WHERE tenant_id = $1 AND status = 'open' AND expires_at > $2",
            )
            .bind(tenant.as_str())
            .bind(now)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    pub(crate) async fn insert_reservation(&mut self, r: &Reservation) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO tally_reservation ({RESERVATION_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
             ON CONFLICT ON CONSTRAINT tally_reservation_idem_uq DO NOTHING RETURNING id"
        );
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(r.id)
            .bind(r.tenant_id.as_str())
            .bind(r.metric_code.as_str())
            .bind(r.amount)
            .bind(r.period.start())
            .bind(r.period.end())
            .bind(r.idempotency_key.as_ref().map(IdempotencyKey::as_str))
            .bind(r.ttl_seconds)
            .bind(r.created_at)
            .bind(r.expires_at)
            .bind(r.status.as_str())
            .bind(r.settled_at)
            .bind(r.committed_event_id)
            .bind(r.committed_amount)
            .bind(r.usage_at_creation)
            .bind(r.reserved_at_creation)
            .bind(r.limit_at_creation)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(map_err)?;
        // A concurrent transaction took the idempotency key since we looked: re-run.
        if row.is_none() { Err(StoreError::Retry) } else { Ok(()) }
    }

    pub(crate) async fn settle_reservation(&mut self, r: &Reservation) -> Result<(), StoreError> {
        self.log
            .query(
                "UPDATE tally_reservation SET status = $3, settled_at = $4, committed_event_id = $5,
                        committed_amount = $6
                  WHERE tenant_id = $1 AND id = $2",
            )
            .bind(r.tenant_id.as_str())
            .bind(r.id)
            .bind(r.status.as_str())
            .bind(r.settled_at)
            .bind(r.committed_event_id)
            .bind(r.committed_amount)
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    pub(crate) async fn find_event_by_id(
        &mut self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        if self.tenancy == Tenancy::Schema && !self.scopes.contains_key(tenant) {
            // Finds the tenant's schema.
            self.load_entitlements(std::slice::from_ref(tenant)).await?;
        }
        let Some(scope) = self.scope(tenant) else { return Ok(None) };
        crate::rows::event_by_id(&self.log, &mut *self.tx, &scope, tenant, id).await
    }
}

impl ReservationStore for PgStore {
    async fn list_open_reservations(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<Vec<Reservation>, StoreError> {
        let sql = format!(
            "SELECT {RESERVATION_COLUMNS} FROM tally_reservation
              WHERE tenant_id = $1 AND status = 'open' AND expires_at > $2 ORDER BY created_at, id LIMIT $3"
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(now)
            .bind(RESERVATIONS_OPEN_MAX)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        rows.iter().map(reservation).collect()
    }

    async fn reserved_by_period(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<Vec<(MetricCode, Timestamp, i64)>, StoreError> {
        let rows = self
            .log
            .query(
                "SELECT metric_code, period_start, SUM(amount)::bigint AS held FROM tally_reservation
                  WHERE tenant_id = $1 AND status = 'open' AND expires_at > $2
                  GROUP BY metric_code, period_start",
            )
            .bind(tenant.as_str())
            .bind(now)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok((
                    MetricCode::parse(get(row, "metric_code")?)?,
                    get(row, "period_start")?,
                    get(row, "held")?,
                ))
            })
            .collect()
    }

    async fn expire_reservations(&self, now: Timestamp, max: i64) -> Result<u64, StoreError> {
        let done = self
            .log
            .query(
                "UPDATE tally_reservation SET status = 'expired', settled_at = expires_at
                  WHERE id IN (SELECT id FROM tally_reservation WHERE status = 'open' AND expires_at <= $1
                                ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
            )
            .bind(now)
            .bind(max)
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }
}
