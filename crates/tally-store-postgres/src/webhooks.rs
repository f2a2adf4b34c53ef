//! Threshold webhooks on PostgreSQL (`tally_webhook`, `tally_webhook_state`,
//! `tally_webhook_delivery`, in the base schema in both tenancies): the admin operations, the
//! delivery worker's claims and attempts, and the outbox primitives that the usage
//! transactions run (see `tally_store::outbox`), each one statement over arrays.
//!
//! The outbox statements name their tenants like the rest of the hot path; the rules are
//! read from `tally_webhook`, a small admin table that holds no tenant's rows.
//!
//! There are no foreign keys, so that deleting a webhook never fails a usage transaction.
//! A usage transaction that read the webhooks before a concurrent delete committed may still
//! write the deleted webhook's states and deliveries after it; they are never claimed (claims
//! join `tally_webhook`), and a webhook registered again under the same id starts without
//! them (see `DELETE_HISTORY_SQL`).

use std::collections::HashMap;

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection};
use tally_domain::{
    AuditEntry, Delivery, MetricCode, TenantId, Timestamp, Webhook, WebhookEventType, WebhookId,
    WebhookSecret, WebhookSpec,
};
use tally_store::{
    FireKey, FireStates, PutOutcome, RecordKey, StoreError, WebhookRule, WebhookStore, webhook_after_put,
};
use uuid::Uuid;

use crate::admin::{UpsertPass, WHOLE_LIST_LEN_MAX, bump_config_version, insert_audit, upsert_config};
use crate::rows::{get, map_err};
use crate::usage::list_limit;
use crate::{PgStore, StatementLog};

const WEBHOOK_COLUMNS: &str = "id, url, thresholds, events, secret, created_at, updated_at";

const DELIVERY_COLUMNS: &str = "id, webhook_id, event_type, tenant_id, metric_code, body, status, attempts, \
     last_response_code, last_error, next_attempt_at, window_start, created_at, last_attempt_at";

/// Removes a webhook's threshold states and deliveries (`$1` its id): when it is deleted,
/// and when it is created, in case a usage transaction that raced an earlier delete of the
/// same id left some behind.
const DELETE_HISTORY_SQL: &str = "WITH states AS (DELETE FROM tally_webhook_state WHERE webhook_id = $1)
     DELETE FROM tally_webhook_delivery WHERE webhook_id = $1";

/// A webhook's spec as stored, checked again.
fn spec(url: &str, thresholds: Vec<i32>, events: Vec<String>) -> Result<WebhookSpec, StoreError> {
    let thresholds: Vec<i64> = thresholds.into_iter().map(i64::from).collect();
    let events =
        events.iter().map(|e| e.parse::<WebhookEventType>()).collect::<Result<Vec<WebhookEventType>, _>>()?;
    Ok(WebhookSpec::new(url, &thresholds, &events)?)
}

fn thresholds_param(spec: &WebhookSpec) -> Vec<i32> {
    spec.thresholds.iter().map(|&t| i32::from(t)).collect()
}

fn events_param(spec: &WebhookSpec) -> Vec<&'static str> {
    spec.events.iter().map(|e| e.as_str()).collect()
}

/// A webhook from the columns of `WEBHOOK_COLUMNS`, each named with `prefix`.
fn webhook_from_row(row: &PgRow, prefix: &str) -> Result<Webhook, StoreError> {
    let col = |name: &str| format!("{prefix}{name}");
    Ok(Webhook {
        id: WebhookId::parse(get(row, &col("id"))?)?,
        spec: spec(get(row, &col("url"))?, get(row, &col("thresholds"))?, get(row, &col("events"))?)?,
        secret: WebhookSecret::parse(get(row, &col("secret"))?)?,
        created_at: get(row, &col("created_at"))?,
        updated_at: get(row, &col("updated_at"))?,
    })
}

fn delivery_from_row(row: &PgRow) -> Result<Delivery, StoreError> {
    let event_type: &str = get(row, "event_type")?;
    let status: &str = get(row, "status")?;
    Ok(Delivery {
        id: get(row, "id")?,
        webhook_id: WebhookId::parse(get(row, "webhook_id")?)?,
        event_type: event_type.parse()?,
        tenant_id: TenantId::parse(get(row, "tenant_id")?)?,
        metric_code: MetricCode::parse(get(row, "metric_code")?)?,
        body: get(row, "body")?,
        status: status.parse()?,
        attempts: get(row, "attempts")?,
        last_response_code: get(row, "last_response_code")?,
        last_error: get(row, "last_error")?,
        next_attempt_at: get(row, "next_attempt_at")?,
        window_start: get(row, "window_start")?,
        created_at: get(row, "created_at")?,
        last_attempt_at: get(row, "last_attempt_at")?,
    })
}

/// The due deliveries, oldest due first, each locked and moved to its lease in one statement:
/// `SKIP LOCKED` leaves those another instance is claiming to it, and only deliveries whose
/// webhook exists are taken.
const CLAIM_SQL: &str = "
UPDATE tally_webhook_delivery AS d SET next_attempt_at = $2
  FROM (SELECT c.id, c.next_attempt_at AS due_at
          FROM tally_webhook_delivery AS c
         WHERE c.status = 'pending' AND c.next_attempt_at <= $1
           AND EXISTS (SELECT FROM tally_webhook AS x WHERE x.id = c.webhook_id)
         ORDER BY c.next_attempt_at, c.id
         LIMIT $3
           FOR UPDATE OF c SKIP LOCKED) AS due,
       tally_webhook AS w
 WHERE d.id = due.id AND w.id = d.webhook_id
RETURNING d.id, d.webhook_id, d.event_type, d.tenant_id, d.metric_code, d.body, d.status, d.attempts,
          d.last_response_code, d.last_error, d.next_attempt_at, d.window_start, d.created_at,
          d.last_attempt_at, due.due_at, w.id AS w_id, w.url AS w_url, w.thresholds AS w_thresholds,
          w.events AS w_events, w.secret AS w_secret, w.created_at AS w_created_at,
          w.updated_at AS w_updated_at";

impl WebhookStore for PgStore {
    async fn put_webhook(
        &self,
        id: &WebhookId,
        spec: &WebhookSpec,
        secret: &WebhookSecret,
        replace_secret: bool,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<PutOutcome<Webhook>, StoreError> {
        upsert_config!(self, audit, |conn| {
            let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM tally_webhook WHERE id = $1 FOR UPDATE");
            let existing = self
                .log
                .query(AssertSqlSafe(sql))
                .bind(id.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
            let existing = existing.as_ref().map(|row| webhook_from_row(row, "")).transpose()?;
            let (w, created) =
                match webhook_after_put(existing.as_ref(), id, spec, secret, replace_secret, now) {
                    PutOutcome::Unchanged(w) => return Ok(UpsertPass::Unchanged(w)),
                    PutOutcome::Updated(w) => (w, false),
                    PutOutcome::Created(w) => (w, true),
                };
            // The same values either way: update the locked row, or insert a new one.
            let sql = if created {
                format!(
                    "INSERT INTO tally_webhook ({WEBHOOK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $6)
                     ON CONFLICT (id) DO NOTHING"
                )
            } else {
                "UPDATE tally_webhook SET url = $2, thresholds = $3, events = $4, secret = $5, updated_at = $6
                  WHERE id = $1"
                    .to_owned()
            };
            let done = self
                .log
                .query(AssertSqlSafe(sql))
                .bind(w.id.as_str())
                .bind(w.spec.url.as_str())
                .bind(thresholds_param(&w.spec))
                .bind(events_param(&w.spec))
                .bind(w.secret.expose())
                .bind(w.updated_at)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            if done.rows_affected() == 0 {
                return Ok(UpsertPass::Raced);
            }
            if !created {
                return Ok(UpsertPass::Written(PutOutcome::Updated(w)));
            }
            self.log
                .query(DELETE_HISTORY_SQL)
                .bind(id.as_str())
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(UpsertPass::Written(PutOutcome::Created(w)))
        })
    }

    async fn find_webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM tally_webhook WHERE id = $1");
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await
            .map_err(map_err)?;
        row.as_ref().map(|row| webhook_from_row(row, "")).transpose()
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM tally_webhook ORDER BY id COLLATE \"C\" LIMIT $1");
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(WHOLE_LIST_LEN_MAX)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        rows.iter().map(|row| webhook_from_row(row, "")).collect()
    }

    async fn delete_webhook(&self, id: &WebhookId, audit: &AuditEntry) -> Result<bool, StoreError> {
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        let done = self
            .log
            .query("DELETE FROM tally_webhook WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            self.log.rollback(tx).await.map_err(map_err)?;
            return Ok(false);
        }
        self.log.query(DELETE_HISTORY_SQL).bind(id.as_str()).execute(&mut *tx).await.map_err(map_err)?;
        insert_audit(&self.log, &mut tx, audit).await?;
        bump_config_version(&self.log, &mut tx).await?;
        self.log.commit(tx).await.map_err(map_err)?;
        Ok(true)
    }

    async fn list_deliveries(
        &self,
        webhook: &WebhookId,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        // Only the filters given reach SQL; either way the page walks tally_webhook_delivery_log_idx.
        let sql = match before {
            None => format!(
                "SELECT {DELIVERY_COLUMNS} FROM tally_webhook_delivery WHERE webhook_id = $1
                  ORDER BY id DESC LIMIT $2"
            ),
            Some(_) => format!(
                "SELECT {DELIVERY_COLUMNS} FROM tally_webhook_delivery WHERE webhook_id = $1 AND id < $3
                  ORDER BY id DESC LIMIT $2"
            ),
        };
        let mut q = self.log.query(AssertSqlSafe(sql)).bind(webhook.as_str()).bind(list_limit(limit));
        if let Some(before) = before {
            q = q.bind(before);
        }
        let rows = q.fetch_all(self.pool()).await.map_err(map_err)?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn find_delivery(&self, webhook: &WebhookId, id: Uuid) -> Result<Option<Delivery>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM tally_webhook_delivery WHERE webhook_id = $1 AND id = $2"
        );
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(webhook.as_str())
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(map_err)?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    async fn redeliver(
        &self,
        webhook: &WebhookId,
        id: Uuid,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<Option<Delivery>, StoreError> {
        let mut tx = self.log.begin(self.pool(), "BEGIN").await.map_err(map_err)?;
        let sql = format!(
            "UPDATE tally_webhook_delivery SET status = 'pending', next_attempt_at = $3, window_start = $3
              WHERE webhook_id = $1 AND id = $2
             RETURNING {DELIVERY_COLUMNS}"
        );
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(webhook.as_str())
            .bind(id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let Some(row) = row else {
            self.log.rollback(tx).await.map_err(map_err)?;
            return Ok(None);
        };
        let delivery = delivery_from_row(&row)?;
        insert_audit(&self.log, &mut tx, audit).await?;
        self.log.commit(tx).await.map_err(map_err)?;
        Ok(Some(delivery))
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        max: i64,
    ) -> Result<Vec<(Delivery, Webhook)>, StoreError> {
        let rows = self
            .log
            .query(CLAIM_SQL)
            .bind(now)
            .bind(lease_until)
            .bind(max.max(0))
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let due_at: Timestamp = get(row, "due_at")?;
            claimed.push((due_at, delivery_from_row(row)?, webhook_from_row(row, "w_")?));
        }
        // RETURNING keeps no order: oldest due first, as they were chosen.
        claimed.sort_by_key(|(due_at, d, _)| (*due_at, d.id));
        Ok(claimed.into_iter().map(|(_, d, w)| (d, w)).collect())
    }

    async fn record_attempt(&self, d: &Delivery) -> Result<(), StoreError> {
        self.log
            .query(
                "UPDATE tally_webhook_delivery SET status = $2, attempts = $3, last_response_code = $4,
                        last_error = $5, next_attempt_at = $6, last_attempt_at = $7
                  WHERE id = $1",
            )
            .bind(d.id)
            .bind(d.status.as_str())
            .bind(d.attempts)
            .bind(d.last_response_code)
            .bind(d.last_error.as_deref())
            .bind(d.next_attempt_at)
            .bind(d.last_attempt_at)
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The outbox, inside the usage transactions

/// Every webhook's id and spec: one statement on a small admin table.
pub(crate) async fn load_webhook_rules(
    log: &StatementLog,
    conn: &mut PgConnection,
) -> Result<Vec<WebhookRule>, StoreError> {
    let rows = log
        .query("SELECT id, url, thresholds, events FROM tally_webhook ORDER BY id COLLATE \"C\"")
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|row| {
            Ok(WebhookRule {
                id: WebhookId::parse(get(row, "id")?)?,
                spec: spec(get(row, "url")?, get(row, "thresholds")?, get(row, "events")?)?,
            })
        })
        .collect()
}

/// Every stored threshold state of the records of `keys`, of every webhook: one probe of the
/// primary key's prefix (webhook, tenant, metric, period start) per record and webhook.
pub(crate) async fn load_fire_states_of_records(
    log: &StatementLog,
    conn: &mut PgConnection,
    keys: &[RecordKey],
) -> Result<FireStates, StoreError> {
    let rows = log
        .query(
            "SELECT s.webhook_id, s.tenant_id, s.metric_code, s.period_start, s.event_type, s.threshold, s.fired
               FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(tenant_id, metric_code, period_start)
               CROSS JOIN tally_webhook AS w
               JOIN tally_webhook_state AS s
                 ON s.webhook_id = w.id AND s.tenant_id = k.tenant_id AND s.metric_code = k.metric_code
                AND s.period_start = k.period_start
              WHERE s.tenant_id = ANY($1)",
        )
        .bind(keys.iter().map(|k| k.tenant_id.as_str()).collect::<Vec<&str>>())
        .bind(keys.iter().map(|k| k.metric_code.as_str()).collect::<Vec<&str>>())
        .bind(keys.iter().map(|k| k.period.start()).collect::<Vec<Timestamp>>())
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    let by_parts: HashMap<(&str, &str, Timestamp), &RecordKey> =
        keys.iter().map(|k| ((k.tenant_id.as_str(), k.metric_code.as_str(), k.period.start()), k)).collect();
    let mut found = FireStates::with_capacity(rows.len());
    for row in &rows {
        let parts: (&str, &str, Timestamp) =
            (get(row, "tenant_id")?, get(row, "metric_code")?, get(row, "period_start")?);
        let Some(key) = by_parts.get(&parts) else { continue };
        let event_type: &str = get(row, "event_type")?;
        let threshold: i32 = get(row, "threshold")?;
        let threshold = u16::try_from(threshold).map_err(|_| {
            StoreError::Corrupt(format!("tally_webhook_state.threshold {threshold} is out of range"))
        })?;
        let fire_key = FireKey {
            webhook_id: WebhookId::parse(get(row, "webhook_id")?)?,
            tenant_id: key.tenant_id.clone(),
            metric_code: key.metric_code.clone(),
            period_start: key.period.start(),
            event_type: event_type.parse()?,
            threshold,
        };
        found.insert(fire_key, get(row, "fired")?);
    }
    Ok(found)
}

/// Inserts or updates threshold states, then appends deliveries: one statement each, over
/// arrays, and none for an empty slice.
pub(crate) async fn write_outbox(
    log: &StatementLog,
    conn: &mut PgConnection,
    states: &[(FireKey, bool)],
    deliveries: &[Delivery],
    now: Timestamp,
) -> Result<(), StoreError> {
    if !states.is_empty() {
        log.query(
            "INSERT INTO tally_webhook_state AS s
                    (webhook_id, tenant_id, metric_code, period_start, event_type, threshold, fired, updated_at)
             SELECT u.webhook_id, u.tenant_id, u.metric_code, u.period_start, u.event_type, u.threshold, u.fired, $8
               FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::integer[],
                           $7::boolean[])
                    AS u(webhook_id, tenant_id, metric_code, period_start, event_type, threshold, fired)
             ON CONFLICT (webhook_id, tenant_id, metric_code, period_start, event_type, threshold)
             DO UPDATE SET fired = EXCLUDED.fired, updated_at = EXCLUDED.updated_at",
        )
        .bind(states.iter().map(|(k, _)| k.webhook_id.as_str()).collect::<Vec<&str>>())
        .bind(states.iter().map(|(k, _)| k.tenant_id.as_str()).collect::<Vec<&str>>())
        .bind(states.iter().map(|(k, _)| k.metric_code.as_str()).collect::<Vec<&str>>())
        .bind(states.iter().map(|(k, _)| k.period_start).collect::<Vec<Timestamp>>())
        .bind(states.iter().map(|(k, _)| k.event_type.as_str()).collect::<Vec<&str>>())
        .bind(states.iter().map(|(k, _)| i32::from(k.threshold)).collect::<Vec<i32>>())
        .bind(states.iter().map(|(_, fired)| *fired).collect::<Vec<bool>>())
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    }
    if !deliveries.is_empty() {
        let sql = format!(
            "INSERT INTO tally_webhook_delivery ({DELIVERY_COLUMNS})
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::text[], $8::integer[], $9::integer[], $10::text[], $11::timestamptz[],
                                  $12::timestamptz[], $13::timestamptz[], $14::timestamptz[])"
        );
        log.query(AssertSqlSafe(sql))
            .bind(deliveries.iter().map(|d| d.id).collect::<Vec<Uuid>>())
            .bind(deliveries.iter().map(|d| d.webhook_id.as_str()).collect::<Vec<&str>>())
            .bind(deliveries.iter().map(|d| d.event_type.as_str()).collect::<Vec<&str>>())
            .bind(deliveries.iter().map(|d| d.tenant_id.as_str()).collect::<Vec<&str>>())
            .bind(deliveries.iter().map(|d| d.metric_code.as_str()).collect::<Vec<&str>>())
            .bind(deliveries.iter().map(|d| d.body.as_str()).collect::<Vec<&str>>())
            .bind(deliveries.iter().map(|d| d.status.as_str()).collect::<Vec<&str>>())
            .bind(deliveries.iter().map(|d| d.attempts).collect::<Vec<i32>>())
            .bind(deliveries.iter().map(|d| d.last_response_code).collect::<Vec<Option<i32>>>())
            .bind(deliveries.iter().map(|d| d.last_error.as_deref()).collect::<Vec<Option<&str>>>())
            .bind(deliveries.iter().map(|d| d.next_attempt_at).collect::<Vec<Option<Timestamp>>>())
            .bind(deliveries.iter().map(|d| d.window_start).collect::<Vec<Timestamp>>())
            .bind(deliveries.iter().map(|d| d.created_at).collect::<Vec<Timestamp>>())
            .bind(deliveries.iter().map(|d| d.last_attempt_at).collect::<Vec<Option<Timestamp>>>())
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}
