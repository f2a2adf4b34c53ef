//! Threshold webhooks on SQLite (`tally_webhook`, `tally_webhook_state`,
//! `tally_webhook_delivery`): the admin operations, the delivery worker's claims and
//! attempts, and the outbox primitives that the usage transactions run inside their
//! `BEGIN IMMEDIATE` transaction (see `tally_store::outbox`).
//!
//! The outbox statements name their tenants like the rest of the hot path; the rules are
//! read from `tally_webhook`, a small admin table that holds no tenant's rows.

use std::collections::HashMap;

use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};
use tally_domain::{
    AuditEntry, Delivery, MetricCode, TenantId, Timestamp, Webhook, WebhookEventType, WebhookId,
    WebhookSecret, WebhookSpec,
};
use tally_store::{
    FireKey, FireStates, PutOutcome, RecordKey, StoreError, WebhookRule, WebhookStore, webhook_after_put,
};
use uuid::Uuid;

use crate::admin::bump_config_version;
use crate::error::store_error;
use crate::rows::{self, insert_audit, instant, micros, rows_per_statement};
use crate::usage::push_tenants_in;
use crate::{SqliteStore, StatementLog};

const WEBHOOK_COLUMNS: &str = "id, url, thresholds, events, secret, created_at, updated_at";

/// The columns `delivery` reads, in the order `push_delivery` binds them.
const DELIVERY_COLUMNS: &str = "id, webhook_id, event_type, tenant_id, metric_code, body, status, attempts, \
     last_response_code, last_error, next_attempt_at, window_start, created_at, last_attempt_at";

/// Columns of `tally_webhook_delivery`.
const DELIVERY_COLUMNS_LEN: usize = 14;

/// Values bound per row when writing threshold states.
const FIRE_STATE_BINDS: usize = 8;

/// A webhook's spec as stored: thresholds and events are JSON arrays, checked again on read.
fn spec(url: &str, thresholds: &str, events: &str) -> Result<WebhookSpec, StoreError> {
    let thresholds: Vec<i64> = serde_json::from_str(thresholds)
        .map_err(|e| StoreError::Corrupt(format!("tally_webhook.thresholds is not a JSON array: {e}")))?;
    let events: Vec<WebhookEventType> = serde_json::from_str(events)
        .map_err(|e| StoreError::Corrupt(format!("tally_webhook.events is not a JSON array: {e}")))?;
    Ok(WebhookSpec::new(url, &thresholds, &events)?)
}

fn thresholds_json(spec: &WebhookSpec) -> Result<String, StoreError> {
    serde_json::to_string(&spec.thresholds)
        .map_err(|e| StoreError::Other(format!("serializing thresholds: {e}")))
}

fn events_json(spec: &WebhookSpec) -> Result<String, StoreError> {
    serde_json::to_string(&spec.events).map_err(|e| StoreError::Other(format!("serializing events: {e}")))
}

/// A webhook from the columns of `WEBHOOK_COLUMNS`, each named with `prefix`.
fn webhook(row: &SqliteRow, prefix: &str) -> Result<Webhook, StoreError> {
    let text = |name: &str| -> Result<String, StoreError> {
        row.try_get(format!("{prefix}{name}").as_str()).map_err(store_error)
    };
    let at = |name: &str| -> Result<Timestamp, StoreError> {
        let raw: i64 = row.try_get(format!("{prefix}{name}").as_str()).map_err(store_error)?;
        instant(name, raw)
    };
    Ok(Webhook {
        id: WebhookId::parse(&text("id")?)?,
        spec: spec(&text("url")?, &text("thresholds")?, &text("events")?)?,
        secret: WebhookSecret::parse(&text("secret")?)?,
        created_at: at("created_at")?,
        updated_at: at("updated_at")?,
    })
}

fn delivery(row: &SqliteRow) -> Result<Delivery, StoreError> {
    let text = |name: &str| -> Result<String, StoreError> { row.try_get(name).map_err(store_error) };
    let int = |name: &str| -> Result<Option<i64>, StoreError> { row.try_get(name).map_err(store_error) };
    let int32 = |name: &str, raw: i64| {
        i32::try_from(raw).map_err(|_| StoreError::Corrupt(format!("{name} {raw} is out of range")))
    };
    let at = |name: &str| -> Result<Option<Timestamp>, StoreError> {
        int(name)?.map(|m| instant(name, m)).transpose()
    };
    let required = |name: &str, value: Option<Timestamp>| {
        value.ok_or_else(|| StoreError::Corrupt(format!("tally_webhook_delivery.{name} is NULL")))
    };
    let attempts: i64 = row.try_get("attempts").map_err(store_error)?;
    Ok(Delivery {
        id: rows::uuid("tally_webhook_delivery.id", &text("id")?)?,
        webhook_id: WebhookId::parse(&text("webhook_id")?)?,
        event_type: text("event_type")?.parse()?,
        tenant_id: TenantId::parse(&text("tenant_id")?)?,
        metric_code: MetricCode::parse(&text("metric_code")?)?,
        body: text("body")?,
        status: text("status")?.parse()?,
        attempts: int32("attempts", attempts)?,
        last_response_code: int("last_response_code")?.map(|c| int32("last_response_code", c)).transpose()?,
        last_error: row.try_get("last_error").map_err(store_error)?,
        next_attempt_at: at("next_attempt_at")?,
        window_start: required("window_start", at("window_start")?)?,
        created_at: required("created_at", at("created_at")?)?,
        last_attempt_at: at("last_attempt_at")?,
    })
}

async fn find_webhook(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    id: &WebhookId,
) -> Result<Option<Webhook>, StoreError> {
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM tally_webhook WHERE id = ?1");
    let row = log
        .query(sqlx::AssertSqlSafe(sql))
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(store_error)?;
    row.as_ref().map(|r| webhook(r, "")).transpose()
}

/// Writes what `webhook_after_put` decided, with its audit entry and a new configuration
/// version; an `Unchanged` put writes nothing.
async fn store_webhook_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    outcome: &PutOutcome<Webhook>,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    let (PutOutcome::Created(stored) | PutOutcome::Updated(stored)) = outcome else {
        return Ok(());
    };
    let sql = format!(
        "INSERT INTO tally_webhook ({WEBHOOK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (id) DO UPDATE SET url = excluded.url, thresholds = excluded.thresholds,
             events = excluded.events, secret = excluded.secret, updated_at = excluded.updated_at"
    );
    log.query(sqlx::AssertSqlSafe(sql))
        .bind(stored.id.as_str())
        .bind(stored.spec.url.as_str())
        .bind(thresholds_json(&stored.spec)?)
        .bind(events_json(&stored.spec)?)
        .bind(stored.secret.expose())
        .bind(micros(stored.created_at))
        .bind(micros(stored.updated_at))
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    insert_audit(log, conn, audit).await?;
    bump_config_version(log, conn).await
}

async fn delete_webhook_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    id: &WebhookId,
    audit: &AuditEntry,
) -> Result<bool, StoreError> {
    let done = log
        .query("DELETE FROM tally_webhook WHERE id = ?1")
        .bind(id.as_str())
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    for sql in [
        "DELETE FROM tally_webhook_state WHERE webhook_id = ?1",
        "DELETE FROM tally_webhook_delivery WHERE webhook_id = ?1",
    ] {
        log.query(sql).bind(id.as_str()).execute(&mut *conn).await.map_err(store_error)?;
    }
    insert_audit(log, conn, audit).await?;
    bump_config_version(log, conn).await?;
    Ok(true)
}

async fn find_delivery<'e>(
    log: &StatementLog,
    executor: impl sqlx::SqliteExecutor<'e>,
    webhook: &WebhookId,
    id: Uuid,
) -> Result<Option<Delivery>, StoreError> {
    let sql =
        format!("SELECT {DELIVERY_COLUMNS} FROM tally_webhook_delivery WHERE webhook_id = ?1 AND id = ?2");
    let row = log
        .query(sqlx::AssertSqlSafe(sql))
        .bind(webhook.as_str())
        .bind(id.to_string())
        .fetch_optional(executor)
        .await
        .map_err(store_error)?;
    row.as_ref().map(delivery).transpose()
}

async fn redeliver_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    webhook: &WebhookId,
    id: Uuid,
    now: Timestamp,
    audit: &AuditEntry,
) -> Result<Option<Delivery>, StoreError> {
    let done = log
        .query(
            "UPDATE tally_webhook_delivery SET status = 'pending', next_attempt_at = ?3, window_start = ?3 \
             WHERE webhook_id = ?1 AND id = ?2",
        )
        .bind(webhook.as_str())
        .bind(id.to_string())
        .bind(micros(now))
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    insert_audit(log, conn, audit).await?;
    find_delivery(log, &mut *conn, webhook, id).await
}

/// The due deliveries with their webhooks, oldest due first: the partial index is walked in
/// order (the deliveries are the outer loop, which `CROSS JOIN` keeps), so the claim reads
/// the pending deliveries it takes and no others.
const CLAIM_SQL: &str = "SELECT d.id, d.webhook_id, d.event_type, d.tenant_id, d.metric_code, d.body, d.status, \
     d.attempts, d.last_response_code, d.last_error, d.next_attempt_at, d.window_start, d.created_at, \
     d.last_attempt_at, w.id AS w_id, w.url AS w_url, w.thresholds AS w_thresholds, w.events AS w_events, \
     w.secret AS w_secret, w.created_at AS w_created_at, w.updated_at AS w_updated_at \
     FROM tally_webhook_delivery AS d INDEXED BY tally_webhook_delivery_due_idx \
     CROSS JOIN tally_webhook AS w ON w.id = d.webhook_id \
     WHERE d.status = 'pending' AND d.next_attempt_at <= ?1 ORDER BY d.next_attempt_at, d.id LIMIT ?2";

async fn claim_in_tx(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    now: Timestamp,
    lease_until: Timestamp,
    max: i64,
) -> Result<Vec<(Delivery, Webhook)>, StoreError> {
    // SQLite reads a negative LIMIT as no limit at all.
    let rows = log
        .query(CLAIM_SQL)
        .bind(micros(now))
        .bind(max.max(0))
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut d = delivery(row)?;
        d.next_attempt_at = Some(lease_until);
        claimed.push((d, webhook(row, "w_")?));
    }
    for chunk in claimed.chunks(rows_per_statement(1).saturating_sub(1)) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("UPDATE tally_webhook_delivery SET next_attempt_at = ");
        qb.push_bind(micros(lease_until)).push(" WHERE id IN (");
        let mut ids = qb.separated(", ");
        for (d, _) in chunk {
            ids.push_bind(d.id.to_string());
        }
        qb.push(")");
        log.built(&mut qb).persistent(false).execute(&mut *conn).await.map_err(store_error)?;
    }
    Ok(claimed)
}

// ---------------------------------------------------------------------------------------
// The outbox, inside the usage transactions

/// Every webhook's id and spec: one statement on a small admin table.
pub(crate) async fn load_webhook_rules(
    log: &StatementLog,
    conn: &mut SqliteConnection,
) -> Result<Vec<WebhookRule>, StoreError> {
    let rows: Vec<(String, String, String, String)> = log
        .query_as("SELECT id, url, thresholds, events FROM tally_webhook ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .map_err(store_error)?;
    rows.into_iter()
        .map(|(id, url, thresholds, events)| {
            Ok(WebhookRule { id: WebhookId::parse(&id)?, spec: spec(&url, &thresholds, &events)? })
        })
        .collect()
}

/// Every stored threshold state of the records of `keys`, of every webhook: one search of
/// the state table's primary key prefix (webhook, tenant, metric, period) per record and
/// webhook (`CROSS JOIN` fixes that loop order).
pub(crate) async fn load_fire_states_of_records(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    keys: &[RecordKey],
) -> Result<FireStates, StoreError> {
    let mut found = FireStates::new();
    let by_parts: HashMap<(&str, &str, i64), &RecordKey> = keys
        .iter()
        .map(|k| ((k.tenant_id.as_str(), k.metric_code.as_str(), micros(k.period.start())), k))
        .collect();
    for chunk in crate::rows::statement_chunks(keys, RECORD_STATE_KEY_BINDS) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("");
        push_fire_states_of_records(&mut qb, chunk);
        let page: Vec<(String, String, String, i64, String, i64, i64)> = log
            .built_as(&mut qb)
            .persistent(crate::rows::keep_prepared(chunk.len()))
            .fetch_all(&mut *conn)
            .await
            .map_err(store_error)?;
        for (webhook_id, tenant_id, metric_code, period_start, event_type, threshold, fired) in page {
            let Some(key) = by_parts.get(&(tenant_id.as_str(), metric_code.as_str(), period_start)) else {
                continue;
            };
            let fired = match fired {
                0 => false,
                1 => true,
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "tally_webhook_state.fired {other} is not 0 or 1"
                    )));
                }
            };
            let threshold = u16::try_from(threshold).map_err(|_| {
                StoreError::Corrupt(format!("tally_webhook_state.threshold {threshold} is out of range"))
            })?;
            let fire_key = FireKey {
                webhook_id: WebhookId::parse(&webhook_id)?,
                tenant_id: key.tenant_id.clone(),
                metric_code: key.metric_code.clone(),
                period_start: key.period.start(),
                event_type: event_type.parse()?,
                threshold,
            };
            found.insert(fire_key, fired);
        }
    }
    Ok(found)
}

/// The threshold states of the records of `keys`, of every webhook: a `SELECT` appended to
/// `qb`, filtered on the keys' tenants.
fn push_fire_states_of_records(qb: &mut QueryBuilder<Sqlite>, keys: &[RecordKey]) {
    qb.push("WITH k (tenant_id, metric_code, period_start) AS (");
    qb.push_values(keys, |mut b, k| {
        b.push_bind(k.tenant_id.as_str())
            .push_bind(k.metric_code.as_str())
            .push_bind(micros(k.period.start()));
    });
    qb.push(
        ") SELECT s.webhook_id, s.tenant_id, s.metric_code, s.period_start, s.event_type, s.threshold, s.fired \
         FROM k CROSS JOIN tally_webhook AS w CROSS JOIN tally_webhook_state AS s \
         ON s.webhook_id = w.id AND s.tenant_id = k.tenant_id \
         AND s.metric_code = k.metric_code AND s.period_start = k.period_start WHERE ",
    );
    push_tenants_in(qb, "s.tenant_id", keys.iter().map(|k| &k.tenant_id));
}

/// Values bound per record when reading its threshold states: the key, and its tenant.
const RECORD_STATE_KEY_BINDS: usize = 4;

/// Inserts or updates threshold states, and appends deliveries, with multi-row statements.
pub(crate) async fn write_outbox(
    log: &StatementLog,
    conn: &mut SqliteConnection,
    states: &[(FireKey, bool)],
    deliveries: &[Delivery],
    now: Timestamp,
) -> Result<(), StoreError> {
    let at = micros(now);
    for chunk in crate::rows::statement_chunks(states, FIRE_STATE_BINDS) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO tally_webhook_state (webhook_id, tenant_id, metric_code, period_start, event_type, \
             threshold, fired, updated_at) ",
        );
        qb.push_values(chunk, |mut b, (k, fired)| {
            b.push_bind(k.webhook_id.as_str())
                .push_bind(k.tenant_id.as_str())
                .push_bind(k.metric_code.as_str())
                .push_bind(micros(k.period_start))
                .push_bind(k.event_type.as_str())
                .push_bind(i64::from(k.threshold))
                .push_bind(i64::from(*fired))
                .push_bind(at);
        });
        qb.push(
            " ON CONFLICT (webhook_id, tenant_id, metric_code, period_start, event_type, threshold) \
             DO UPDATE SET fired = excluded.fired, updated_at = excluded.updated_at",
        );
        log.built(&mut qb)
            .persistent(crate::rows::keep_prepared(chunk.len()))
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
    }
    for chunk in crate::rows::statement_chunks(deliveries, DELIVERY_COLUMNS_LEN) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("INSERT INTO tally_webhook_delivery ({DELIVERY_COLUMNS}) "));
        qb.push_values(chunk, |mut b, d| {
            b.push_bind(d.id.to_string())
                .push_bind(d.webhook_id.as_str())
                .push_bind(d.event_type.as_str())
                .push_bind(d.tenant_id.as_str())
                .push_bind(d.metric_code.as_str())
                .push_bind(d.body.as_str())
                .push_bind(d.status.as_str())
                .push_bind(i64::from(d.attempts))
                .push_bind(d.last_response_code.map(i64::from))
                .push_bind(d.last_error.as_deref())
                .push_bind(d.next_attempt_at.map(micros))
                .push_bind(micros(d.window_start))
                .push_bind(micros(d.created_at))
                .push_bind(d.last_attempt_at.map(micros));
        });
        log.built(&mut qb)
            .persistent(crate::rows::keep_prepared(chunk.len()))
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

impl WebhookStore for SqliteStore {
    async fn put_webhook(
        &self,
        id: &WebhookId,
        spec: &WebhookSpec,
        secret: &WebhookSecret,
        replace_secret: bool,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<PutOutcome<Webhook>, StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = async {
            let existing = find_webhook(&self.log, w.conn(), id).await?;
            let outcome = webhook_after_put(existing.as_ref(), id, spec, secret, replace_secret, now);
            store_webhook_in_tx(&self.log, w.conn(), &outcome, audit).await?;
            Ok(outcome)
        }
        .await;
        w.finish(outcome).await
    }

    async fn find_webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        find_webhook(&self.log, &mut conn, id).await
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM tally_webhook ORDER BY id");
        let rows =
            self.log.query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await.map_err(store_error)?;
        rows.iter().map(|r| webhook(r, "")).collect()
    }

    async fn delete_webhook(&self, id: &WebhookId, audit: &AuditEntry) -> Result<bool, StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = delete_webhook_in_tx(&self.log, w.conn(), id, audit).await;
        w.finish(outcome).await
    }

    async fn list_deliveries(
        &self,
        webhook: &WebhookId,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        // Hyphenated lowercase UUIDs compare as text in the order of the UUIDs.
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {DELIVERY_COLUMNS} FROM tally_webhook_delivery INDEXED BY tally_webhook_delivery_log_idx \
             WHERE webhook_id = "
        ));
        qb.push_bind(webhook.as_str());
        if let Some(before) = before {
            qb.push(" AND id < ").push_bind(before.to_string());
        }
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit));
        let rows = self.log.built(&mut qb).fetch_all(&self.pool).await.map_err(store_error)?;
        rows.iter().map(delivery).collect()
    }

    async fn find_delivery(&self, webhook: &WebhookId, id: Uuid) -> Result<Option<Delivery>, StoreError> {
        find_delivery(&self.log, &self.pool, webhook, id).await
    }

    async fn redeliver(
        &self,
        webhook: &WebhookId,
        id: Uuid,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<Option<Delivery>, StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = redeliver_in_tx(&self.log, w.conn(), webhook, id, now, audit).await;
        w.finish(outcome).await
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        max: i64,
    ) -> Result<Vec<(Delivery, Webhook)>, StoreError> {
        let mut w = self.begin_write().await?;
        let outcome = claim_in_tx(&self.log, w.conn(), now, lease_until, max).await;
        w.finish(outcome).await
    }

    async fn record_attempt(&self, d: &Delivery) -> Result<(), StoreError> {
        let _writer = self.lock_writer().await?;
        self.log
            .query(
                "UPDATE tally_webhook_delivery SET status = ?2, attempts = ?3, last_response_code = ?4, \
                 last_error = ?5, next_attempt_at = ?6, last_attempt_at = ?7 WHERE id = ?1",
            )
            .bind(d.id.to_string())
            .bind(d.status.as_str())
            .bind(i64::from(d.attempts))
            .bind(d.last_response_code.map(i64::from))
            .bind(d.last_error.as_deref())
            .bind(d.next_attempt_at.map(micros))
            .bind(d.last_attempt_at.map(micros))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tally_contract::{metric, now, tenant};
    use tally_domain::PeriodKind;

    use super::*;

    async fn plan_of(store: &SqliteStore, mut qb: QueryBuilder<Sqlite>) -> String {
        let steps: Vec<(i64, i64, i64, String)> = qb.build_query_as().fetch_all(store.pool()).await.unwrap();
        steps.into_iter().map(|(_, _, _, detail)| detail).collect::<Vec<_>>().join("\n")
    }

    #[tokio::test]
    async fn state_lookups_search_the_primary_key_and_claims_walk_the_due_index() {
        let store = SqliteStore::open_temp_file().await.unwrap();
        let keys: Vec<RecordKey> = ["api_calls", "exports"]
            .into_iter()
            .map(|m| RecordKey {
                tenant_id: tenant("acme"),
                metric_code: metric(m),
                period: PeriodKind::Month.containing(now(), now()).unwrap(),
            })
            .collect();
        let mut qb = QueryBuilder::new("EXPLAIN QUERY PLAN ");
        push_fire_states_of_records(&mut qb, &keys);
        let plan = plan_of(&store, qb).await;
        assert!(plan.contains("SEARCH s USING INDEX sqlite_autoindex_tally_webhook_state_1"), "{plan}");
        assert!(!plan.contains("SCAN s"), "{plan}");

        let steps: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {CLAIM_SQL}")))
                .bind(0_i64)
                .bind(10_i64)
                .fetch_all(store.pool())
                .await
                .unwrap();
        let plan = steps.into_iter().map(|(_, _, _, detail)| detail).collect::<Vec<_>>().join("\n");
        assert!(plan.contains("USING INDEX tally_webhook_delivery_due_idx (next_attempt_at<?)"), "{plan}");
        // Only deliveries due at the same instant are sorted among themselves, by id.
        assert!(!plan.contains("USE TEMP B-TREE FOR ORDER BY"), "no sort of every due delivery: {plan}");
    }
}
