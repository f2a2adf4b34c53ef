//! The statements of the hot path (run by `crate::writer` inside its transactions, each a
//! fixed number of round trips per schema whatever the batch length), the reset beside it,
//! the seed's record and event repositories, and the inputs of `tally verify`.
//!
//! Every statement on the quota tables filters on its tenants (`tenant_id = $n` or
//! `tenant_id = ANY($n)`), or inserts rows whose tenants are bound values, so the tables can
//! later be distributed by tenant; `tests/hot_path` checks it on the statement log.
//!
//! Record locks (`lock_records`): one `SELECT ... FOR UPDATE` in key order takes the records
//! that exist, which is all of them once a period is warm, without writing a row version;
//! only the missing ones are then inserted (`ON CONFLICT DO NOTHING`, in key order), and
//! those a concurrent transaction created meanwhile are locked last. A transaction that
//! would have to wait for such a row while already holding others rolls back and re-runs
//! instead (`NOWAIT`), so that no wait is ever out of key order and no deadlock can form.
//! A cold period cannot be overshot: its first writers serialize on the unique key.
//!
//! Closed periods: the lock statements also return each record's `closed_at` and
//! `reopened_at`, and a batch writing into a period that may be closed first reads its
//! tenants' watermarks under a share lock of their rows (`load_watermarks`), the row a close
//! takes exclusively before closing the records (`crate::periods`).

use std::collections::{BTreeMap, HashMap};

use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Transaction};
use tally_domain::limits::PAGE_LEN_MAX;
use tally_domain::{
    AuditEntry, Delivery, Entitlement, IdempotencyKey, MetricCode, Period, Reason, RecordedEvent, TenantId,
    Timestamp, UsageRecord, Watermark,
};
use tally_store::{
    Answer, Ctx, EntitlementLookup, EventQuery, EventRecorder, EventTotal, FireKey, FireStates, LockedRecord,
    RecordKey, RecordState, RecordTotal, RecordWrite, StoreError, UsageRepository, UsageWriter, VerifyInputs,
    WebhookRule, WriteOp, reset_audit, reset_fact,
};
use uuid::Uuid;

use crate::admin::{insert_audit, tenant_exists};
use crate::migrate::list_tenant_schemas;
use crate::rows::{
    AUDIT_COLUMNS, EVENT_COLUMNS, RECORD_COLUMNS, audit_from_row, checked_limits, event_from_row, get,
    map_err, plan_from_row, record_from_row, subscription_from_row,
};
use crate::scope::{Scope, internal_id_from_db};
use crate::{PgStore, StatementLog, Tenancy};

/// Rows one list call returns at most: a full page and one more, which tells the caller
/// that another page follows.
pub(crate) const LIST_LEN_MAX: u32 = PAGE_LEN_MAX + 1;

/// The isolation the hot path runs in: each statement sees what committed before it, and
/// row locks (not snapshots) decide.
/// Every write transaction plans each of its statements for the tables as they are (see the
/// crate docs, *Fresh plans*); one round trip with the `BEGIN`.
pub(crate) const BEGIN_READ_COMMITTED: &str =
    "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL plan_cache_mode = force_custom_plan";

/// `tally verify` reads every schema from one snapshot, so counters and events agree.
const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// A list limit as SQL takes it, bounded by `LIST_LEN_MAX`.
pub(crate) fn list_limit(limit: u32) -> i64 {
    i64::from(limit.min(LIST_LEN_MAX))
}

/// Every tenant's subscription, plan and overrides, in one query.
const ENTITLEMENTS_SQL: &str = "
SELECT t.tenant_id, t.internal_id,
       s.plan_code, s.anchor, s.started_at,
       p.code, p.name, p.limits, p.version, p.created_at, p.updated_at, p.close_after_seconds,
       COALESCE((SELECT jsonb_agg(jsonb_build_object('metric_code', o.metric_code, 'limit', o.\"limit\",
                                                     'enforcement', o.enforcement, 'period', o.period)
                                  ORDER BY o.metric_code)
                   FROM tally_override o
                  WHERE o.tenant_id = t.tenant_id), '[]'::jsonb) AS overrides
  FROM tally_tenant t
  LEFT JOIN tally_subscription s ON s.tenant_id = t.tenant_id
  LEFT JOIN tally_plan p ON p.code = s.plan_code
 WHERE t.tenant_id = ANY($1)";

/// Reads the entitlements of `tenants`, with the internal id that names each one's schema.
pub(crate) async fn load_entitlements(
    log: &StatementLog,
    conn: &mut PgConnection,
    tenants: &[TenantId],
) -> Result<HashMap<TenantId, (u64, EntitlementLookup)>, StoreError> {
    let ids: Vec<&str> = tenants.iter().map(TenantId::as_str).collect();
    let rows = log.query(ENTITLEMENTS_SQL).bind(ids).fetch_all(conn).await.map_err(map_err)?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        let tenant_id = TenantId::parse(get(row, "tenant_id")?)?;
        let internal_id = internal_id_from_db(get(row, "internal_id")?);
        let plan_code: Option<&str> = get(row, "plan_code")?;
        let lookup = if plan_code.is_none() {
            EntitlementLookup::NoSubscription
        } else {
            let subscription = subscription_from_row(row)?;
            let plan = plan_from_row(row)?;
            let Json(overrides): Json<Vec<tally_domain::Override>> = get(row, "overrides")?;
            EntitlementLookup::Found(Entitlement::resolve(subscription, &plan, &checked_limits(overrides)?))
        };
        found.insert(tenant_id, (internal_id, lookup));
    }
    Ok(found)
}

/// One write transaction of the hot path (see `crate::writer`), with the statements it runs.
pub(crate) struct PgUsageTx {
    pub(crate) tx: Transaction<'static, Postgres>,
    pub(crate) log: StatementLog,
    pub(crate) tenancy: Tenancy,
    /// The schema of every tenant `load_entitlements` found (schema tenancy).
    pub(crate) scopes: HashMap<TenantId, Scope>,
}

/// Whether a record lock may wait for another transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockWait {
    /// Wait, as row locks taken in key order may.
    Block,
    /// Fail at once (`NOWAIT`): the transaction is re-run.
    NoWait,
}

/// A usage record as the lock statements return it.
struct LockedRow {
    tenant_id: String,
    metric_code: String,
    period_start: Timestamp,
    id: Uuid,
    current_usage: i64,
    closed_at: Option<Timestamp>,
    reopened_at: Option<Timestamp>,
}

fn locked_row(row: &PgRow) -> Result<LockedRow, StoreError> {
    Ok(LockedRow {
        tenant_id: get(row, "tenant_id")?,
        metric_code: get(row, "metric_code")?,
        period_start: get(row, "period_start")?,
        id: get(row, "id")?,
        current_usage: get(row, "current_usage")?,
        closed_at: get(row, "closed_at")?,
        reopened_at: get(row, "reopened_at")?,
    })
}

/// A record key as the database spells it.
type KeyParts = (String, String, Timestamp);

fn key_parts(key: &RecordKey) -> KeyParts {
    (key.tenant_id.as_str().to_owned(), key.metric_code.as_str().to_owned(), key.period.start())
}

/// Moves each of `rows` from `wanted` into `locked`.
fn settle(
    wanted: &mut HashMap<KeyParts, &RecordKey>,
    locked: &mut HashMap<RecordKey, LockedRecord>,
    rows: Vec<LockedRow>,
    created: bool,
) -> Result<(), StoreError> {
    for row in rows {
        let parts = (row.tenant_id, row.metric_code, row.period_start);
        let key = wanted.remove(&parts).ok_or_else(|| {
            StoreError::Other(format!(
                "locked a record nobody asked for: {} {} {}",
                parts.0, parts.1, parts.2
            ))
        })?;
        let state = if created { RecordState::Created } else { RecordState::Existing };
        locked.insert(
            key.clone(),
            LockedRecord {
                closed_at: row.closed_at,
                // Reopened since its last close: open, whatever the watermark says.
                reopened: row.reopened_at.is_some() && row.closed_at.is_none(),
                ..LockedRecord::at(row.id, row.current_usage, state)
            },
        );
    }
    Ok(())
}

/// What to do with an item whose tenant `load_entitlements` did not find.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unknown {
    /// Leave it out: a missing tenant has no rows.
    Skip,
    /// Fail: the algorithm never writes for a missing tenant.
    Fail,
}

impl PgUsageTx {
    /// Where `tenant`'s quota tables live, once `load_entitlements` found it (schema tenancy).
    pub(crate) fn scope(&self, tenant: &TenantId) -> Option<Scope> {
        match self.tenancy {
            Tenancy::Shared => Some(Scope::Base),
            Tenancy::Schema => self.scopes.get(tenant).cloned(),
        }
    }

    /// Locks, in key order, the records among `keys` that exist; `NoWait` fails the
    /// statement (as `StoreError::Retry`) rather than wait for another transaction's lock.
    async fn lock_existing(
        &mut self,
        scope: &Scope,
        keys: &[&RecordKey],
        wait: LockWait,
    ) -> Result<Vec<LockedRow>, StoreError> {
        let sql = format!(
            "SELECT r.id, r.tenant_id, r.metric_code, r.period_start, r.current_usage, r.closed_at, r.reopened_at
               FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(tenant_id, metric_code, period_start)
               JOIN {records} AS r
                 ON r.tenant_id = k.tenant_id AND r.metric_code = k.metric_code AND r.period_start = k.period_start
              WHERE r.tenant_id = ANY($1)
              ORDER BY r.tenant_id, r.metric_code, r.period_start
                FOR UPDATE OF r{nowait}",
            records = scope.records(),
            nowait = if wait == LockWait::NoWait { " NOWAIT" } else { "" },
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(keys.iter().map(|k| k.tenant_id.as_str()).collect::<Vec<&str>>())
            .bind(keys.iter().map(|k| k.metric_code.as_str()).collect::<Vec<&str>>())
            .bind(keys.iter().map(|k| k.period.start()).collect::<Vec<Timestamp>>())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        rows.iter().map(locked_row).collect()
    }

    /// Creates the records of `keys` at zero, in key order, leaving out those that exist
    /// (or that a concurrent transaction creates and commits meanwhile); returns the rows
    /// created, which stay locked by this transaction.
    async fn create_missing(
        &mut self,
        scope: &Scope,
        keys: &[&RecordKey],
        now: Timestamp,
    ) -> Result<Vec<LockedRow>, StoreError> {
        let sql = format!(
            "INSERT INTO {records} AS r
                    (id, tenant_id, metric_code, current_usage, period_start, period_end, created_at, updated_at)
             SELECT u.id, u.tenant_id, u.metric_code, 0, u.period_start, u.period_end, $6, $6
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
                    AS u(id, tenant_id, metric_code, period_start, period_end)
              ORDER BY u.tenant_id, u.metric_code, u.period_start
             ON CONFLICT ON CONSTRAINT quota_usage_record_uq DO NOTHING
             RETURNING r.id, r.tenant_id, r.metric_code, r.period_start, r.current_usage, r.closed_at, r.reopened_at",
            records = scope.records()
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(keys.iter().map(|_| Uuid::now_v7()).collect::<Vec<Uuid>>())
            .bind(keys.iter().map(|k| k.tenant_id.as_str()).collect::<Vec<&str>>())
            .bind(keys.iter().map(|k| k.metric_code.as_str()).collect::<Vec<&str>>())
            .bind(keys.iter().map(|k| k.period.start()).collect::<Vec<Timestamp>>())
            .bind(keys.iter().map(|k| k.period.end()).collect::<Vec<Timestamp>>())
            .bind(now)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        rows.iter().map(locked_row).collect()
    }

    /// Splits items by the schema of their tenant: one group in shared tenancy; in schema
    /// tenancy one per tenant, in tenant order (the global order records are locked in).
    fn by_scope<'t, T>(
        &self,
        items: impl IntoIterator<Item = (&'t TenantId, T)>,
        unknown: Unknown,
    ) -> Result<Vec<(Scope, Vec<T>)>, StoreError> {
        if self.tenancy == Tenancy::Shared {
            let all: Vec<T> = items.into_iter().map(|(_, item)| item).collect();
            return Ok(if all.is_empty() { Vec::new() } else { vec![(Scope::Base, all)] });
        }
        let mut groups: BTreeMap<&TenantId, Vec<T>> = BTreeMap::new();
        for (tenant, item) in items {
            groups.entry(tenant).or_default().push(item);
        }
        let mut scoped = Vec::with_capacity(groups.len());
        for (tenant, group) in groups {
            match self.scopes.get(tenant) {
                Some(scope) => scoped.push((scope.clone(), group)),
                None if unknown == Unknown::Skip => {}
                None => {
                    return Err(StoreError::Other(format!("tenant {tenant} was not loaded in this batch")));
                }
            }
        }
        Ok(scoped)
    }
}

impl PgUsageTx {
    pub(crate) async fn load_entitlements(
        &mut self,
        tenants: &[TenantId],
    ) -> Result<HashMap<TenantId, EntitlementLookup>, StoreError> {
        let found = load_entitlements(&self.log, &mut self.tx, tenants).await?;
        let mut lookups = HashMap::with_capacity(tenants.len());
        for tenant in tenants {
            match found.get(tenant) {
                None => {
                    lookups.insert(tenant.clone(), EntitlementLookup::TenantMissing);
                }
                Some((internal_id, lookup)) => {
                    if self.tenancy == Tenancy::Schema {
                        self.scopes.insert(tenant.clone(), Scope::of_internal_id(*internal_id));
                    }
                    lookups.insert(tenant.clone(), lookup.clone());
                }
            }
        }
        Ok(lookups)
    }

    pub(crate) async fn find_events_by_keys(
        &mut self,
        keys: &[(TenantId, IdempotencyKey)],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self.events_by_keys(keys, false).await?.1)
    }

    /// `tally_config_version` as this transaction sees it, and the events stored under
    /// `keys`, read by one statement (the first schema's): a write batch's key look-up, made
    /// after its record locks, also reads the version its decision is checked against.
    pub(crate) async fn config_version_and_events(
        &mut self,
        keys: &[(TenantId, IdempotencyKey)],
    ) -> Result<(i64, Vec<RecordedEvent>), StoreError> {
        let (version, events) = self.events_by_keys(keys, true).await?;
        let version = match version {
            Some(v) => v,
            None => self.config_version().await?,
        };
        Ok((version, events))
    }

    async fn events_by_keys(
        &mut self,
        keys: &[(TenantId, IdempotencyKey)],
        with_version: bool,
    ) -> Result<(Option<i64>, Vec<RecordedEvent>), StoreError> {
        let mut events = Vec::new();
        let mut version = None;
        for (scope, group) in self.by_scope(keys.iter().map(|(t, k)| (t, (t, k))), Unknown::Skip)? {
            // One probe of quota_usage_event_idem_uq per key, driven by the keys: with only a
            // tenant filter the planner would read every event of the batch's tenants, which
            // grows with the table (found by tests/faults/soak). `$3` names the tenants, once
            // each, for a table distributed by tenant; `IS TRUE` keeps it a filter, since as an
            // index condition it would turn each probe into one per tenant (0.22 ms instead of
            // 0.008 ms per key with 50 tenants and 1M events).
            let probe = format!(
                "SELECT {EVENT_COLUMNS} FROM unnest($1::text[], $2::text[]) AS k(t, ik)
                  CROSS JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM {events}
                     WHERE (tenant_id = ANY($3)) IS TRUE AND tenant_id = k.t AND idempotency_key = k.ik) AS e",
                events = scope.events()
            );
            let read_version = with_version && version.is_none();
            let sql = if read_version {
                // The one-row version table drives the join, so the row comes back even when
                // no key is taken (with the event's columns NULL).
                format!(
                    "SELECT v.version AS config_version, e.* FROM tally_config_version AS v
                       LEFT JOIN LATERAL ({probe}) AS e ON true
                      WHERE v.id = 1"
                )
            } else {
                probe
            };
            let tenants: Vec<&str> = group.iter().map(|(t, _)| t.as_str()).collect();
            let idem: Vec<&str> = group.iter().map(|(_, k)| k.as_str()).collect();
            let mut distinct: Vec<&str> = tenants.clone();
            distinct.sort_unstable();
            distinct.dedup();
            // Unnamed (`persistent(false)`): planned at each execution for the table as it
            // is, never from a generic plan cached while it was small (see the crate docs, *Fresh plans*).
            let rows = self
                .log
                .query(AssertSqlSafe(sql))
                .persistent(false)
                .bind(tenants)
                .bind(idem)
                .bind(distinct)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(map_err)?;
            for row in &rows {
                if read_version {
                    version = Some(get(row, "config_version")?);
                    if get::<Option<Uuid>>(row, "id")?.is_none() {
                        continue;
                    }
                }
                events.push(event_from_row(row)?);
            }
        }
        Ok((version, events))
    }

    /// See the module's documentation: lock what exists, create what is missing, lock what
    /// was created meanwhile; one to three statements per schema.
    ///
    /// `holding`: the transaction already holds record locks (a `load_more`), so not even
    /// step 1 may wait.
    pub(crate) async fn lock_records(
        &mut self,
        keys: &[RecordKey],
        now: Timestamp,
        holding: bool,
    ) -> Result<HashMap<RecordKey, LockedRecord>, StoreError> {
        let mut locked = HashMap::with_capacity(keys.len());
        for (scope, group) in self.by_scope(keys.iter().map(|k| (&k.tenant_id, k)), Unknown::Fail)? {
            let mut wanted: HashMap<KeyParts, &RecordKey> =
                group.iter().map(|k| (key_parts(k), *k)).collect();

            // 1. Lock the records that exist, in key order: usually all of them, and locking
            //    writes no new row version.
            let first_wait = if holding { LockWait::NoWait } else { LockWait::Block };
            let existing = self.lock_existing(&scope, &group, first_wait).await?;
            let mut holds_any = holding || !existing.is_empty();
            settle(&mut wanted, &mut locked, existing, false)?;
            if wanted.is_empty() {
                continue;
            }

            // 2. Create the missing ones, in key order. A key that a concurrent transaction is
            //    creating waits for that transaction; if it commits, the key conflicts and is
            //    left out here.
            let missing: Vec<&RecordKey> =
                group.iter().copied().filter(|k| wanted.contains_key(&key_parts(k))).collect();
            let created = self.create_missing(&scope, &missing, now).await?;
            holds_any |= !created.is_empty();
            settle(&mut wanted, &mut locked, created, true)?;
            if wanted.is_empty() {
                continue;
            }

            // 3. Lock what concurrent transactions created since step 1. Holding nothing of
            //    this group yet, the transaction may wait as in step 1; holding rows, it must
            //    not wait out of key order, so a row locked by another transaction makes it
            //    roll back and re-run (with every record existing by then, step 1 takes them
            //    all in order).
            let raced: Vec<&RecordKey> =
                group.iter().copied().filter(|k| wanted.contains_key(&key_parts(k))).collect();
            let wait = if holds_any { LockWait::NoWait } else { LockWait::Block };
            let found = self.lock_existing(&scope, &raced, wait).await?;
            settle(&mut wanted, &mut locked, found, false)?;
            if !wanted.is_empty() {
                // Deleted again meanwhile: start over.
                return Err(StoreError::Retry);
            }
        }
        Ok(locked)
    }

    pub(crate) async fn delete_records(&mut self, keys: &[(RecordKey, Uuid)]) -> Result<(), StoreError> {
        for (scope, group) in
            self.by_scope(keys.iter().map(|(k, id)| (&k.tenant_id, (k, *id))), Unknown::Fail)?
        {
            let sql = format!(
                "DELETE FROM {records} WHERE tenant_id = ANY($1) AND id = ANY($2)",
                records = scope.records()
            );
            let tenants: Vec<&str> = group.iter().map(|(k, _)| k.tenant_id.as_str()).collect();
            let ids: Vec<Uuid> = group.iter().map(|(_, id)| *id).collect();
            self.log
                .query(AssertSqlSafe(sql))
                .bind(tenants)
                .bind(ids)
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    pub(crate) async fn reserved_sums(
        &mut self,
        keys: &[RecordKey],
        now: Timestamp,
    ) -> Result<HashMap<RecordKey, i64>, StoreError> {
        crate::reservations::reserved_sums(&self.log, &mut self.tx, keys, now).await
    }

    /// Appends `events` and sets the counters of `updates` (records this transaction
    /// locked), in one statement per scope: both are data-modifying parts of one `WITH`, so
    /// a batch's usage costs one round trip, not two. `Retry` when a concurrent transaction
    /// took one of the idempotency keys since they were looked up.
    pub(crate) async fn write_usage(
        &mut self,
        events: &[RecordedEvent],
        updates: &[&RecordWrite],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut scoped: BTreeMap<Scope, (Vec<&RecordedEvent>, Vec<&RecordWrite>)> = BTreeMap::new();
        for (scope, group) in self.by_scope(events.iter().map(|e| (&e.event.tenant_id, e)), Unknown::Fail)? {
            scoped.entry(scope).or_default().0 = group;
        }
        for (scope, group) in self.by_scope(updates.iter().map(|u| (&u.key.tenant_id, *u)), Unknown::Fail)? {
            scoped.entry(scope).or_default().1 = group;
        }
        for (scope, (events, updates)) in scoped {
            let sql = format!(
                "WITH inserted AS (
                   INSERT INTO {events_table} ({EVENT_COLUMNS})
                   SELECT u.id, u.tenant_id, u.metric_code, u.amount, u.metadata::jsonb, u.idempotency_key,
                          u.ts, u.created_at, u.usage_after, u.limit_at, u.enforcement, u.period_start,
                          u.period_end, u.timestamp_explicit, u.is_set, u.reserved_at, u.kind, u.reason
                     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                                 $7::timestamptz[], $8::timestamptz[], $9::bigint[], $10::bigint[], $11::text[],
                                 $12::timestamptz[], $13::timestamptz[], $14::boolean[], $15::boolean[],
                                 $16::bigint[], $21::text[], $22::text[])
                          AS u(id, tenant_id, metric_code, amount, metadata, idempotency_key, ts, created_at,
                               usage_after, limit_at, enforcement, period_start, period_end, timestamp_explicit,
                               is_set, reserved_at, kind, reason)
                   ON CONFLICT ON CONSTRAINT quota_usage_event_idem_uq DO NOTHING
                   RETURNING id),
                 updated AS (
                   UPDATE {records} AS r SET current_usage = c.current_usage, updated_at = $19
                     FROM unnest($17::uuid[], $18::bigint[]) AS c(id, current_usage)
                    WHERE r.tenant_id = ANY($20) AND r.id = c.id
                   RETURNING r.id)
                 SELECT (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM updated) AS updated",
                events_table = scope.events(),
                records = scope.records()
            );
            let row = self
                .log
                .query(AssertSqlSafe(sql))
                .bind(events.iter().map(|e| e.event.id).collect::<Vec<Uuid>>())
                .bind(events.iter().map(|e| e.event.tenant_id.as_str()).collect::<Vec<&str>>())
                .bind(events.iter().map(|e| e.event.metric_code.as_str()).collect::<Vec<&str>>())
                .bind(events.iter().map(|e| e.event.amount).collect::<Vec<i64>>())
                .bind(events.iter().map(|e| e.event.metadata.to_json_string()).collect::<Vec<String>>())
                .bind(
                    events
                        .iter()
                        .map(|e| e.event.idempotency_key.as_ref().map(IdempotencyKey::as_str))
                        .collect::<Vec<Option<&str>>>(),
                )
                .bind(events.iter().map(|e| e.event.timestamp).collect::<Vec<Timestamp>>())
                .bind(events.iter().map(|e| e.event.created_at).collect::<Vec<Timestamp>>())
                .bind(events.iter().map(|e| e.receipt.usage_after).collect::<Vec<i64>>())
                .bind(events.iter().map(|e| e.receipt.limit).collect::<Vec<Option<i64>>>())
                .bind(events.iter().map(|e| e.receipt.enforcement.as_str()).collect::<Vec<&str>>())
                .bind(events.iter().map(|e| e.receipt.period.start()).collect::<Vec<Timestamp>>())
                .bind(events.iter().map(|e| e.receipt.period.end()).collect::<Vec<Timestamp>>())
                .bind(events.iter().map(|e| e.receipt.timestamp_explicit).collect::<Vec<bool>>())
                .bind(events.iter().map(|e| e.receipt.set).collect::<Vec<bool>>())
                .bind(events.iter().map(|e| e.receipt.reserved).collect::<Vec<i64>>())
                .bind(updates.iter().map(|u| u.id).collect::<Vec<Uuid>>())
                .bind(updates.iter().map(|u| u.current_usage).collect::<Vec<i64>>())
                .bind(now)
                .bind(updates.iter().map(|u| u.key.tenant_id.as_str()).collect::<Vec<&str>>())
                .bind(events.iter().map(|e| e.event.kind.as_str()).collect::<Vec<&str>>())
                .bind(
                    events
                        .iter()
                        .map(|e| e.event.reason.as_ref().map(Reason::as_str))
                        .collect::<Vec<Option<&str>>>(),
                )
                .fetch_one(&mut *self.tx)
                .await
                .map_err(map_err)?;
            let inserted: i64 = get(&row, "inserted")?;
            let updated: i64 = get(&row, "updated")?;
            if usize::try_from(inserted) != Ok(events.len()) {
                // A concurrent transaction took one of the idempotency keys since we looked.
                return Err(StoreError::Retry);
            }
            if usize::try_from(updated) != Ok(updates.len()) {
                return Err(StoreError::Other(format!(
                    "updated {updated} of {} locked records",
                    updates.len()
                )));
            }
        }
        Ok(())
    }

    pub(crate) async fn load_webhook_rules(&mut self) -> Result<Vec<WebhookRule>, StoreError> {
        crate::webhooks::load_webhook_rules(&self.log, &mut self.tx).await
    }

    pub(crate) async fn load_fire_states_of_records(
        &mut self,
        keys: &[RecordKey],
    ) -> Result<FireStates, StoreError> {
        crate::webhooks::load_fire_states_of_records(&self.log, &mut self.tx, keys).await
    }

    /// The closing watermarks of `tenants` (`None` for one that never closed a period, or
    /// that does not exist), each read under a share lock of the tenant's row in the base
    /// schema, taken in tenant order. A close takes that row exclusively before it closes
    /// the records, so while this transaction holds the share no close of these tenants can
    /// commit, and once one has, this read sees its watermark. `NoWait` (the transaction
    /// holds record locks, out of that order) fails at once, as `StoreError::Retry`, when a
    /// close holds the row.
    pub(crate) async fn load_watermarks(
        &mut self,
        tenants: &[&TenantId],
        wait: LockWait,
    ) -> Result<Vec<(TenantId, Option<Watermark>)>, StoreError> {
        let sql = if wait == LockWait::NoWait {
            "SELECT tenant_id, closed_before, closed_before_at FROM tally_tenant
              WHERE tenant_id = ANY($1) ORDER BY tenant_id FOR SHARE NOWAIT"
        } else {
            "SELECT tenant_id, closed_before, closed_before_at FROM tally_tenant
              WHERE tenant_id = ANY($1) ORDER BY tenant_id FOR SHARE"
        };
        let rows = self
            .log
            .query(sql)
            .bind(tenants.iter().map(|t| t.as_str()).collect::<Vec<&str>>())
            .fetch_all(&mut *self.tx)
            .await
            .map_err(map_err)?;
        let mut found: HashMap<String, Option<Watermark>> = HashMap::with_capacity(rows.len());
        for row in &rows {
            found.insert(get(row, "tenant_id")?, crate::periods::watermark_from_row(row)?);
        }
        Ok(tenants.iter().map(|t| ((*t).clone(), found.remove(t.as_str()).flatten())).collect())
    }

    /// Appends `entries` to the audit log (a batch's corrections), in one statement.
    pub(crate) async fn insert_audit(&mut self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let done = self
            .log
            .query(
                "INSERT INTO tally_audit (id, at, key_id, action, tenant_id, details)
                 SELECT u.id, u.at, u.key_id, u.action, u.tenant_id, u.details::jsonb
                   FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[], $4::text[], $5::text[], $6::text[])
                        AS u(id, at, key_id, action, tenant_id, details)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(entries.iter().map(|e| e.id).collect::<Vec<Uuid>>())
            .bind(entries.iter().map(|e| e.at).collect::<Vec<Timestamp>>())
            .bind(entries.iter().map(|e| e.key_id).collect::<Vec<Option<Uuid>>>())
            .bind(entries.iter().map(|e| e.action.as_str()).collect::<Vec<&str>>())
            .bind(
                entries
                    .iter()
                    .map(|e| e.tenant_id.as_ref().map(TenantId::as_str))
                    .collect::<Vec<Option<&str>>>(),
            )
            .bind(entries.iter().map(|e| e.details.to_string()).collect::<Vec<String>>())
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        if usize::try_from(done.rows_affected()) != Ok(entries.len()) {
            // A taken id (each entry is new, with a fresh v7 id): re-run the batch, whose
            // plan makes new entries.
            return Err(StoreError::Retry);
        }
        Ok(())
    }

    /// `tally_config_version` as this transaction sees it.
    pub(crate) async fn config_version(&mut self) -> Result<i64, StoreError> {
        self.log
            .query_scalar("SELECT version FROM tally_config_version WHERE id = 1")
            .fetch_one(&mut *self.tx)
            .await
            .map_err(map_err)
    }

    pub(crate) async fn write_outbox(
        &mut self,
        states: &[(FireKey, bool)],
        deliveries: &[Delivery],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        crate::webhooks::write_outbox(&self.log, &mut self.tx, states, deliveries, now).await
    }
}

impl UsageWriter for PgStore {
    async fn write(&self, ops: Vec<WriteOp>, ctx: Ctx) -> Result<Vec<Answer>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.committer.submit(ops, ctx).await
    }

    async fn write_whole(&self, ops: Vec<WriteOp>, ctx: Ctx) -> Result<Vec<Answer>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.committer.submit_whole(ops, ctx).await
    }

    async fn reset_usage(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period: Period,
        now: Timestamp,
        key_id: Option<Uuid>,
    ) -> Result<UsageRecord, StoreError> {
        let mut tx = self.log.begin(self.pool(), BEGIN_READ_COMMITTED).await.map_err(map_err)?;
        let scope = self.scope_of(&mut *tx, tenant).await?.ok_or_else(|| tenant_not_found(tenant))?;
        // Shared tenancy found the scope without asking; a reset is audited, so it needs a tenant.
        if self.tenancy() == Tenancy::Shared && !tenant_exists(&self.log, &mut tx, tenant).await? {
            return Err(tenant_not_found(tenant));
        }
        let lock = format!(
            "INSERT INTO {records} AS r ({RECORD_COLUMNS}) VALUES ($1, $2, $3, 0, $4, $5, $6, $6)
             ON CONFLICT ON CONSTRAINT quota_usage_record_uq DO UPDATE SET current_usage = r.current_usage
             RETURNING {RECORD_COLUMNS}",
            records = scope.records()
        );
        let row = self
            .log
            .query(AssertSqlSafe(lock))
            .bind(Uuid::now_v7())
            .bind(tenant.as_str())
            .bind(metric.as_str())
            .bind(period.start())
            .bind(period.end())
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        let before = record_from_row(&row)?;
        let reset = format!(
            "UPDATE {records} SET current_usage = 0, updated_at = $3 WHERE tenant_id = $1 AND id = $2
             RETURNING {RECORD_COLUMNS}",
            records = scope.records()
        );
        let row = self
            .log
            .query(AssertSqlSafe(reset))
            .bind(tenant.as_str())
            .bind(before.id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        let after = record_from_row(&row)?;
        insert_audit(&self.log, &mut tx, &reset_audit(key_id, now, &before)).await?;
        self.log.commit(tx).await.map_err(map_err)?;
        Ok(after)
    }
}

fn tenant_not_found(tenant: &TenantId) -> StoreError {
    StoreError::not_found(format!("tenant {tenant}"))
}

fn record_not_found(tenant: &TenantId) -> StoreError {
    StoreError::not_found(format!("usage record of tenant {tenant}"))
}

/// The first of `rows` as a record, or `NotFound`.
fn first_record(tenant: &TenantId, rows: &[PgRow]) -> Result<UsageRecord, StoreError> {
    match rows.first() {
        Some(row) => record_from_row(row),
        None => Err(record_not_found(tenant)),
    }
}

impl UsageRepository for PgStore {
    async fn usage_now(&self, key: &RecordKey, now: Timestamp) -> Result<(i64, i64), StoreError> {
        let Some(scope) = self.scope_of(self.pool(), &key.tenant_id).await? else {
            return Ok((0, 0));
        };
        // One statement (`bench/check.sql` runs the same one): the counter and the open holds.
        let sql = format!(
            "SELECT COALESCE((SELECT current_usage FROM {records}
                               WHERE tenant_id = $1 AND metric_code = $2 AND period_start = $3), 0)::bigint AS usage,
                    COALESCE((SELECT SUM(amount) FROM tally_reservation
                               WHERE tenant_id = $1 AND metric_code = $2 AND period_start = $3
                                 AND status = 'open' AND expires_at > $4), 0)::bigint AS reserved",
            records = scope.records()
        );
        let row = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(key.tenant_id.as_str())
            .bind(key.metric_code.as_str())
            .bind(key.period.start())
            .bind(now)
            .fetch_one(self.pool())
            .await
            .map_err(map_err)?;
        let usage: i64 = get(&row, "usage")?;
        let reserved: i64 = get(&row, "reserved")?;
        Ok((usage, reserved))
    }

    async fn list_by_tenant_and_metric(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let Some(scope) = self.scope_of(self.pool(), tenant).await? else { return Ok(Vec::new()) };
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM {records}
              WHERE tenant_id = $1 AND metric_code = $2
                AND ($3::timestamptz IS NULL OR period_start >= $3)
                AND ($4::timestamptz IS NULL OR period_start < $4)
              ORDER BY period_start DESC LIMIT $5",
            records = scope.records()
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(metric.as_str())
            .bind(from)
            .bind(to)
            .bind(list_limit(limit))
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        rows.iter().map(record_from_row).collect()
    }

    async fn get_current_period(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        at: Timestamp,
    ) -> Result<UsageRecord, StoreError> {
        let Some(scope) = self.scope_of(self.pool(), tenant).await? else {
            return Err(record_not_found(tenant));
        };
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM {records}
              WHERE tenant_id = $1 AND metric_code = $2 AND period_end > $3 AND period_start <= $3
              ORDER BY period_start DESC LIMIT 1",
            records = scope.records()
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(metric.as_str())
            .bind(at)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        first_record(tenant, &rows)
    }

    async fn get_by_id(&self, tenant: &TenantId, id: Uuid) -> Result<UsageRecord, StoreError> {
        let Some(scope) = self.scope_of(self.pool(), tenant).await? else {
            return Err(record_not_found(tenant));
        };
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM {records} WHERE tenant_id = $1 AND id = $2",
            records = scope.records()
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        first_record(tenant, &rows)
    }

    async fn save(&self, record: &UsageRecord) -> Result<(), StoreError> {
        let tenant = &record.tenant_id;
        let Some(scope) = self.scope_of(self.pool(), tenant).await? else {
            return Err(tenant_not_found(tenant));
        };
        let sql = format!(
            "INSERT INTO {records} AS r ({RECORD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET current_usage = EXCLUDED.current_usage, updated_at = EXCLUDED.updated_at
              WHERE r.tenant_id = $2",
            records = scope.records()
        );
        let done = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(record.id)
            .bind(tenant.as_str())
            .bind(record.metric_code.as_str())
            .bind(record.current_usage)
            .bind(record.period_start)
            .bind(record.period_end)
            .bind(record.created_at)
            .bind(record.updated_at)
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "usage record {} belongs to another tenant",
                record.id
            )));
        }
        Ok(())
    }

    async fn delete(&self, tenant: &TenantId, id: Uuid) -> Result<(), StoreError> {
        let Some(scope) = self.scope_of(self.pool(), tenant).await? else {
            return Err(record_not_found(tenant));
        };
        let sql =
            format!("DELETE FROM {records} WHERE tenant_id = $1 AND id = $2", records = scope.records());
        let done = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(record_not_found(tenant));
        }
        Ok(())
    }

    async fn get_for_period(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period_start: Timestamp,
    ) -> Result<UsageRecord, StoreError> {
        let Some(scope) = self.scope_of(self.pool(), tenant).await? else {
            return Err(record_not_found(tenant));
        };
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM {records}
              WHERE tenant_id = $1 AND metric_code = $2 AND period_start = $3",
            records = scope.records()
        );
        let rows = self
            .log
            .query(AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(metric.as_str())
            .bind(period_start)
            .fetch_all(self.pool())
            .await
            .map_err(map_err)?;
        first_record(tenant, &rows)
    }
}

impl EventRecorder for PgStore {
    async fn find_events_by_keys(
        &self,
        keys: &[(TenantId, IdempotencyKey)],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.log.begin(self.pool(), BEGIN_READ_COMMITTED).await.map_err(map_err)?;
        let mut reader =
            PgUsageTx { tx, log: self.log.clone(), tenancy: self.tenancy(), scopes: HashMap::new() };
        let mut tenants: Vec<&TenantId> = keys.iter().map(|(t, _)| t).collect();
        tenants.sort();
        tenants.dedup();
        for tenant in tenants {
            if let Some(scope) = self.scope_of(&mut *reader.tx, tenant).await? {
                reader.scopes.insert(tenant.clone(), scope);
            }
        }
        let found = reader.find_events_by_keys(keys).await;
        let _ = self.log.rollback(reader.tx).await;
        found
    }

    async fn record(&self, recorded: &RecordedEvent) -> Result<(), StoreError> {
        let (event, receipt) = (&recorded.event, &recorded.receipt);
        let tenant = &event.tenant_id;
        let Some(scope) = self.scope_of(self.pool(), tenant).await? else {
            return Err(tenant_not_found(tenant));
        };
        let sql = format!(
            "INSERT INTO {events} ({EVENT_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
            events = scope.events()
        );
        self.log
            .query(AssertSqlSafe(sql))
            .bind(event.id)
            .bind(tenant.as_str())
            .bind(event.metric_code.as_str())
            .bind(event.amount)
            .bind(Json(event.metadata.as_map()))
            .bind(event.idempotency_key.as_ref().map(IdempotencyKey::as_str))
            .bind(event.timestamp)
            .bind(event.created_at)
            .bind(receipt.usage_after)
            .bind(receipt.limit)
            .bind(receipt.enforcement.as_str())
            .bind(receipt.period.start())
            .bind(receipt.period.end())
            .bind(receipt.timestamp_explicit)
            .bind(receipt.set)
            .bind(receipt.reserved)
            .bind(event.kind.as_str())
            .bind(event.reason.as_ref().map(Reason::as_str))
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn get_events_for_metric(
        &self,
        tenant: &TenantId,
        query: &EventQuery,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let Some(scope) = self.scope_of(self.pool(), tenant).await? else { return Ok(Vec::new()) };
        // Only the filters given reach SQL, so each combination gets a plan of its own that
        // walks quota_usage_event_tenant_ts_idx.
        let mut sql =
            format!("SELECT {EVENT_COLUMNS} FROM {events} WHERE tenant_id = $1", events = scope.events());
        let mut n = 1;
        let mut next = || {
            n += 1;
            n
        };
        if query.metric_code.is_some() {
            sql.push_str(&format!(" AND metric_code = ${}", next()));
        }
        if query.from.is_some() {
            sql.push_str(&format!(" AND \"timestamp\" >= ${}", next()));
        }
        if query.to.is_some() {
            sql.push_str(&format!(" AND \"timestamp\" < ${}", next()));
        }
        if query.kind.is_some() {
            sql.push_str(&format!(" AND kind = ${}", next()));
        }
        if query.after.is_some() {
            let (ts, id) = (next(), next());
            sql.push_str(&format!(" AND (\"timestamp\", id) < (${ts}, ${id})"));
        }
        sql.push_str(&format!(" ORDER BY \"timestamp\" DESC, id DESC LIMIT ${}", next()));
        // Planned at each execution (see the crate docs, *Fresh plans*): the events table grows.
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
        if let Some(kind) = query.kind {
            q = q.bind(kind.as_str());
        }
        if let Some(after) = query.after {
            q = q.bind(after.timestamp).bind(after.id);
        }
        let rows = q.bind(list_limit(query.limit)).fetch_all(self.pool()).await.map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }
}

/// Everything `tally verify` compares, from one snapshot of every schema.
pub(crate) async fn verify_inputs(store: &PgStore) -> Result<VerifyInputs, StoreError> {
    let mut tx = store.log.begin(store.pool(), BEGIN_SNAPSHOT).await.map_err(map_err)?;
    let scopes: Vec<Scope> = match store.tenancy() {
        Tenancy::Shared => vec![Scope::Base],
        Tenancy::Schema => list_tenant_schemas(&store.log, &mut tx)
            .await?
            .into_iter()
            .map(|(_, schema)| Scope::Tenant(schema))
            .collect(),
    };
    let mut inputs = VerifyInputs::default();
    for scope in &scopes {
        let sql = format!(
            "SELECT id, tenant_id, metric_code, current_usage, period_start, period_end FROM {records}
              ORDER BY tenant_id, metric_code, period_start",
            records = scope.records()
        );
        for row in &store.log.query(AssertSqlSafe(sql)).fetch_all(&mut *tx).await.map_err(map_err)? {
            inputs.records.push(RecordTotal {
                id: get(row, "id")?,
                key: RecordKey {
                    tenant_id: TenantId::parse(get(row, "tenant_id")?)?,
                    metric_code: MetricCode::parse(get(row, "metric_code")?)?,
                    period: Period::new(get(row, "period_start")?, get(row, "period_end")?)?,
                },
                current_usage: get(row, "current_usage")?,
            });
        }
        let sql = format!(
            "SELECT tenant_id, metric_code, period_start, sum(amount)::bigint AS amount_sum, count(*) AS n_events,
                    count(*) FILTER (WHERE kind = 'correction') AS n_corrections
               FROM {events} GROUP BY tenant_id, metric_code, period_start
              ORDER BY tenant_id, metric_code, period_start",
            events = scope.events()
        );
        for row in &store.log.query(AssertSqlSafe(sql)).fetch_all(&mut *tx).await.map_err(map_err)? {
            inputs.events.push(EventTotal {
                tenant_id: TenantId::parse(get(row, "tenant_id")?)?,
                metric_code: MetricCode::parse(get(row, "metric_code")?)?,
                period_start: get(row, "period_start")?,
                amount_sum: get(row, "amount_sum")?,
                n_events: get(row, "n_events")?,
                n_corrections: get(row, "n_corrections")?,
            });
        }
    }
    let sql = format!("SELECT {AUDIT_COLUMNS} FROM tally_audit WHERE action = 'reset' ORDER BY id");
    for row in &store.log.query(AssertSqlSafe(sql)).fetch_all(&mut *tx).await.map_err(map_err)? {
        if let Some(fact) = reset_fact(&audit_from_row(row)?)? {
            inputs.resets.push(fact);
        }
    }
    store.log.commit(tx).await.map_err(map_err)?;
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tally_contract::{metric, now, tenant};
    use tally_domain::PeriodKind;

    use super::*;

    fn key(m: &str) -> RecordKey {
        RecordKey {
            tenant_id: tenant("acme"),
            metric_code: metric(m),
            period: PeriodKind::Day.containing(now(), now()).unwrap(),
        }
    }

    async fn begin(store: &PgStore) -> PgUsageTx {
        let tx = store.pool().begin_with(BEGIN_READ_COMMITTED).await.unwrap();
        PgUsageTx { tx, log: store.log.clone(), tenancy: store.tenancy(), scopes: HashMap::new() }
    }

    async fn ctid(store: &PgStore, tx: Option<&mut PgUsageTx>, m: &str) -> String {
        let q =
            sqlx::query_scalar("SELECT ctid::text FROM quota_usage_record WHERE metric_code = $1").bind(m);
        match tx {
            Some(tx) => q.fetch_one(&mut *tx.tx).await.unwrap(),
            None => q.fetch_one(store.pool()).await.unwrap(),
        }
    }

    #[tokio::test]
    async fn locking_creates_only_the_missing_records_and_rewrites_no_existing_one() {
        let store = PgStore::open_test(Tenancy::Shared).await;
        let mut first = begin(&store).await;
        let locked = first.lock_records(&[key("a"), key("b")], now(), false).await.unwrap();
        assert!(
            locked.values().all(|l| l.state == RecordState::Created && l.current_usage == 0),
            "{locked:?}"
        );
        let a = locked[&key("a")].id;
        let write = RecordWrite { id: a, key: key("a"), current_usage: 5, insert: false };
        first.write_usage(&[], &[&write], now()).await.unwrap();
        first.tx.commit().await.unwrap();
        let before = (ctid(&store, None, "a").await, ctid(&store, None, "b").await);

        let mut second = begin(&store).await;
        let locked = second.lock_records(&[key("a"), key("b"), key("c")], now(), false).await.unwrap();
        assert_eq!(locked[&key("a")], LockedRecord::at(a, 5, RecordState::Existing));
        assert_eq!(locked[&key("b")].state, RecordState::Existing, "{locked:?}");
        assert_eq!(locked[&key("c")].state, RecordState::Created, "{locked:?}");
        // Locked, not rewritten: the existing rows are the same row versions.
        let during = (ctid(&store, Some(&mut second), "a").await, ctid(&store, Some(&mut second), "b").await);
        assert_eq!(during, before);
        let c = locked[&key("c")].id;
        second.delete_records(&[(key("c"), c)]).await.unwrap();
        second.tx.commit().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM quota_usage_record")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(n, 2);
    }

    #[tokio::test]
    async fn a_lock_that_must_not_wait_is_a_retry_when_the_row_is_taken() {
        let store = PgStore::open_test(Tenancy::Shared).await;
        let mut holder = begin(&store).await;
        holder.lock_records(&[key("a")], now(), false).await.unwrap();
        holder.tx.commit().await.unwrap();
        let mut holder = begin(&store).await;
        holder.lock_records(&[key("a")], now(), false).await.unwrap();

        let mut other = begin(&store).await;
        let err = other.lock_existing(&Scope::Base, &[&key("a")], LockWait::NoWait).await;
        assert!(matches!(err, Err(StoreError::Retry)), "{:?}", err.map(|rows| rows.len()));
        other.tx.rollback().await.unwrap();
        holder.tx.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn a_watermark_read_that_must_not_wait_is_a_retry_while_a_close_holds_the_tenant() {
        use tally_store::TenantStore;
        let store = PgStore::open_test(Tenancy::Shared).await;
        let name = tally_domain::Name::parse("Acme").unwrap();
        store.put_tenant(&tenant("acme"), &name, now()).await.unwrap();
        let (acme, ghost) = (tenant("acme"), tenant("ghost"));
        let mut reader = begin(&store).await;
        let marks = reader.load_watermarks(&[&acme, &ghost], LockWait::Block).await.unwrap();
        assert_eq!(marks, [(acme.clone(), None), (ghost.clone(), None)], "never closed, or no such tenant");
        reader.tx.rollback().await.unwrap();

        // A close holds the row as `crate::periods` takes it.
        let mut close = begin(&store).await;
        sqlx::query("SELECT 1 FROM tally_tenant WHERE tenant_id = 'acme' FOR NO KEY UPDATE")
            .execute(&mut *close.tx)
            .await
            .unwrap();
        let mut other = begin(&store).await;
        let err = other.load_watermarks(&[&acme], LockWait::NoWait).await;
        assert!(matches!(err, Err(StoreError::Retry)), "{err:?}");
        other.tx.rollback().await.unwrap();
        // Foreign-key checks (`FOR KEY SHARE`) on the tenant do not wait for a close.
        let mut fk = begin(&store).await;
        sqlx::query("SELECT 1 FROM tally_tenant WHERE tenant_id = 'acme' FOR KEY SHARE NOWAIT")
            .execute(&mut *fk.tx)
            .await
            .unwrap();
        fk.tx.rollback().await.unwrap();
        close.tx.rollback().await.unwrap();
    }
}
