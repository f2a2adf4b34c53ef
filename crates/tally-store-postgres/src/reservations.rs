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

    /// Locks the reservations `wanted` (each asked for by its tenant) in one statement, in id
    /// order, the one lock order of reservations; one of another tenant is left out.
    pub(crate) async fn lock_reservations(
        &mut self,
        wanted: &[(TenantId, Uuid)],
    ) -> Result<Vec<Reservation>, StoreError> {
        let sql = format!(
            "SELECT {RESERVATION_COLUMNS} FROM tally_reservation
              WHERE tenant_id = ANY($1) AND id = ANY($2) ORDER BY id FOR UPDATE"
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(wanted.iter().map(|(t, _)| t.as_str()).collect::<Vec<&str>>())
            .bind(wanted.iter().map(|(_, id)| *id).collect::<Vec<Uuid>>())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let r = reservation(row)?;
            if wanted.iter().any(|(t, id)| *t == r.tenant_id && *id == r.id) {
                found.push(r);
            }
        }
        Ok(found)
    }

    /// How many reservations each of `tenants` holds open at `now` (0 when none), in one
    /// statement.
    pub(crate) async fn count_open_reservations_of(
        &mut self,
        tenants: &[TenantId],
        now: Timestamp,
    ) -> Result<HashMap<TenantId, i64>, StoreError> {
        let rows = self
            .log
            .query(
                "SELECT tenant_id, COUNT(*) AS open FROM tally_reservation
                  WHERE tenant_id = ANY($1) AND status = 'open' AND expires_at > $2
                  GROUP BY tenant_id",
            )
            .bind(tenants.iter().map(TenantId::as_str).collect::<Vec<&str>>())
            .bind(now)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        let mut counts: HashMap<TenantId, i64> = tenants.iter().map(|t| (t.clone(), 0)).collect();
        for row in &rows {
            let tenant = TenantId::parse(get(row, "tenant_id")?)?;
            counts.insert(tenant, get(row, "open")?);
        }
        Ok(counts)
    }

    /// Inserts `new` reservations in one statement; `Retry` when a concurrent transaction
    /// took one of their idempotency keys since they were looked up.
    pub(crate) async fn insert_reservations(&mut self, new: &[Reservation]) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO tally_reservation ({RESERVATION_COLUMNS})
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[],
                                  $6::timestamptz[], $7::text[], $8::bigint[], $9::timestamptz[],
                                  $10::timestamptz[], $11::text[], $12::timestamptz[], $13::uuid[],
                                  $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[])
             ON CONFLICT ON CONSTRAINT tally_reservation_idem_uq DO NOTHING RETURNING id"
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(new.iter().map(|r| r.id).collect::<Vec<Uuid>>())
            .bind(new.iter().map(|r| r.tenant_id.as_str()).collect::<Vec<&str>>())
            .bind(new.iter().map(|r| r.metric_code.as_str()).collect::<Vec<&str>>())
            .bind(new.iter().map(|r| r.amount).collect::<Vec<i64>>())
            .bind(new.iter().map(|r| r.period.start()).collect::<Vec<Timestamp>>())
            .bind(new.iter().map(|r| r.period.end()).collect::<Vec<Timestamp>>())
            .bind(
                new.iter()
                    .map(|r| r.idempotency_key.as_ref().map(IdempotencyKey::as_str))
                    .collect::<Vec<_>>(),
            )
            .bind(new.iter().map(|r| r.ttl_seconds).collect::<Vec<i64>>())
            .bind(new.iter().map(|r| r.created_at).collect::<Vec<Timestamp>>())
            .bind(new.iter().map(|r| r.expires_at).collect::<Vec<Timestamp>>())
            .bind(new.iter().map(|r| r.status.as_str()).collect::<Vec<&str>>())
            .bind(new.iter().map(|r| r.settled_at).collect::<Vec<Option<Timestamp>>>())
            .bind(new.iter().map(|r| r.committed_event_id).collect::<Vec<Option<Uuid>>>())
            .bind(new.iter().map(|r| r.committed_amount).collect::<Vec<Option<i64>>>())
            .bind(new.iter().map(|r| r.usage_at_creation).collect::<Vec<i64>>())
            .bind(new.iter().map(|r| r.reserved_at_creation).collect::<Vec<i64>>())
            .bind(new.iter().map(|r| r.limit_at_creation).collect::<Vec<Option<i64>>>())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        if rows.len() < new.len() { Err(StoreError::Retry) } else { Ok(()) }
    }

    /// Settles (commits or releases) `settled` reservations, locked by this transaction, in
    /// one statement.
    pub(crate) async fn settle_reservations(&mut self, settled: &[Reservation]) -> Result<(), StoreError> {
        self.log
            .query(
                "UPDATE tally_reservation AS r
                    SET status = u.status, settled_at = u.settled_at, committed_event_id = u.committed_event_id,
                        committed_amount = u.committed_amount
                   FROM unnest($1::text[], $2::uuid[], $3::text[], $4::timestamptz[], $5::uuid[], $6::bigint[])
                        AS u(tenant_id, id, status, settled_at, committed_event_id, committed_amount)
                  WHERE r.tenant_id = ANY($1) AND r.tenant_id = u.tenant_id AND r.id = u.id",
            )
            .bind(settled.iter().map(|r| r.tenant_id.as_str()).collect::<Vec<&str>>())
            .bind(settled.iter().map(|r| r.id).collect::<Vec<Uuid>>())
            .bind(settled.iter().map(|r| r.status.as_str()).collect::<Vec<&str>>())
            .bind(settled.iter().map(|r| r.settled_at).collect::<Vec<Option<Timestamp>>>())
            .bind(settled.iter().map(|r| r.committed_event_id).collect::<Vec<Option<Uuid>>>())
            .bind(settled.iter().map(|r| r.committed_amount).collect::<Vec<Option<i64>>>())
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
