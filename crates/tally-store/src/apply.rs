//! The apply-usage algorithm, written once and run by every adapter inside its own
//! transaction through `UsageTx`, so that every store decides exactly alike.
//!
//! Order of work inside one transaction:
//! 1. read the entitlements of every tenant in the batch (limits are read inside the
//!    deciding transaction, so a lowered limit applies at once on every instance);
//! 2. look up the idempotency keys already taken;
//! 3. lock every record the batch needs, in one global order (creating missing ones at zero,
//!    so a cold period cannot be overshot by concurrent first writers);
//! 4. decide each request in arrival order against the counters in memory;
//! 5. write each touched record once, append the accepted events, and remove the records
//!    created here that nothing was recorded in (a HARD refusal writes nothing at all).
//!
//! When the event insert finds a key taken meanwhile by a concurrent transaction, the
//! adapter rolls back and re-runs the whole batch (`StoreError::Retry`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;

use tally_domain::{
    AuditAction, AuditEntry, Change, Delivery, EventReceipt, IdempotencyKey, QuotaLimit, RecordedEvent,
    TenantId, Timestamp, UsageError, UsageEvent, UsageOutcome, UsageRecord, UsageRequest,
    decide_with_reserved,
};
use uuid::Uuid;

use crate::error::StoreError;
use crate::outbox::{FireKey, FireStates, Signal, WebhookRule, outbox_in_tx};
use crate::types::{EntitlementLookup, RecordKey};

/// A record locked for the rest of the transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedRecord {
    /// Its id.
    pub id: Uuid,
    /// Its counter when locked.
    pub current_usage: i64,
    /// Whether this transaction created it.
    pub created: bool,
}

/// A new counter value for a locked record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordUpdate {
    /// The record.
    pub id: Uuid,
    /// Its identity (adapters that shard by tenant need it).
    pub key: RecordKey,
    /// The new counter.
    pub current_usage: i64,
}

/// The primitives one store transaction offers the algorithm. All are bulk operations, so
/// that a batch costs a fixed number of round trips whatever its length.
pub trait UsageTx: Send {
    /// Each tenant's entitlement, read inside the transaction.
    fn load_entitlements(
        &mut self,
        tenants: &[TenantId],
    ) -> impl Future<Output = Result<HashMap<TenantId, EntitlementLookup>, StoreError>> + Send;

    /// The events already stored under these keys.
    fn find_events_by_keys(
        &mut self,
        keys: &[(TenantId, IdempotencyKey)],
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Locks these records, given in ascending order, creating missing ones at zero
    /// (`created: true`) with `now` as their times. Returns one entry per key.
    fn lock_records(
        &mut self,
        keys: &[RecordKey],
        now: Timestamp,
    ) -> impl Future<Output = Result<HashMap<RecordKey, LockedRecord>, StoreError>> + Send;

    /// Writes new counters (each record at most once) with `updated_at = now`.
    fn update_records(
        &mut self,
        updates: &[RecordUpdate],
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes records this transaction created and recorded nothing in.
    fn delete_records(
        &mut self,
        keys: &[(RecordKey, Uuid)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// What open reservations hold (status open, `expires_at > now`) against each of these
    /// records, read after `lock_records` (reservations are made under the same record
    /// locks, so the sums cannot move before the commit). Keys without any are absent.
    fn reserved_sums(
        &mut self,
        keys: &[RecordKey],
        now: Timestamp,
    ) -> impl Future<Output = Result<HashMap<RecordKey, i64>, StoreError>> + Send;

    /// Appends events. `Err(StoreError::Retry)` when an idempotency key was taken by a
    /// concurrent transaction since `find_events_by_keys`.
    fn insert_events(
        &mut self,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every registered webhook's id and spec (`crate::outbox`).
    fn load_webhook_rules(&mut self) -> impl Future<Output = Result<Vec<WebhookRule>, StoreError>> + Send;

    /// The stored state of these thresholds: `true` fired, `false` re-armed; absent keys
    /// have never fired. Called only under the locks of the keys' records.
    fn load_fire_states(
        &mut self,
        keys: &[FireKey],
    ) -> impl Future<Output = Result<FireStates, StoreError>> + Send;

    /// Writes new threshold states (insert or update, `updated_at = now`) and appends new
    /// deliveries.
    fn write_outbox(
        &mut self,
        states: &[(FireKey, bool)],
        deliveries: &[Delivery],
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One request, resolved against its tenant's entitlement.
struct Resolved {
    limit: QuotaLimit,
    key: RecordKey,
    at: Timestamp,
}

/// Runs the algorithm over `requests` inside `tx`. Returns one result per request, in order.
pub async fn apply_in_tx<T: UsageTx>(
    tx: &mut T,
    requests: &[UsageRequest],
    now: Timestamp,
) -> Result<Vec<Result<UsageOutcome, UsageError>>, StoreError> {
    // 1. Entitlements, once per tenant.
    let tenants: Vec<TenantId> =
        requests.iter().map(|r| r.tenant_id.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let entitlements = tx.load_entitlements(&tenants).await?;

    // 2. Keys already taken.
    let keyed: Vec<(TenantId, IdempotencyKey)> = requests
        .iter()
        .filter_map(|r| r.idempotency_key.clone().map(|k| (r.tenant_id.clone(), k)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut stored: HashMap<(TenantId, IdempotencyKey), RecordedEvent> = HashMap::new();
    if !keyed.is_empty() {
        for rec in tx.find_events_by_keys(&keyed).await? {
            if let Some(key) = rec.event.idempotency_key.clone() {
                stored.insert((rec.event.tenant_id.clone(), key), rec);
            }
        }
    }

    // Resolve every request that is not answered by a stored event.
    let mut resolved: Vec<Option<Result<Resolved, UsageError>>> = Vec::with_capacity(requests.len());
    for req in requests {
        let replayed = req
            .idempotency_key
            .as_ref()
            .is_some_and(|k| stored.contains_key(&(req.tenant_id.clone(), k.clone())));
        if replayed {
            resolved.push(None);
            continue;
        }
        resolved.push(Some(resolve(req, entitlements.get(&req.tenant_id), now)));
    }

    // 3. Lock what the batch needs, in ascending key order.
    let needed: Vec<RecordKey> = resolved
        .iter()
        .filter_map(|r| match r {
            Some(Ok(res)) => Some(res.key.clone()),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let locked = if needed.is_empty() { HashMap::new() } else { tx.lock_records(&needed, now).await? };
    let reserved = reserved_for(tx, &resolved, now).await?;

    // 4. Decide in arrival order.
    let mut usage: BTreeMap<RecordKey, i64> = BTreeMap::new();
    let mut accepted_in_batch: HashMap<(TenantId, IdempotencyKey), usize> = HashMap::new();
    let mut results: Vec<Result<UsageOutcome, UsageError>> = Vec::with_capacity(requests.len());
    let mut recorded: Vec<Option<RecordedEvent>> = vec![None; requests.len()];
    let mut signals: Vec<Signal> = Vec::new();
    for (idx, (req, res)) in requests.iter().zip(resolved).enumerate() {
        let tenant_key = req.idempotency_key.clone().map(|k| (req.tenant_id.clone(), k));
        if let Some(tk) = &tenant_key {
            if let Some(rec) = stored.get(tk) {
                results.push(replay_or_conflict(req, rec));
                continue;
            }
            if let Some(&earlier) = accepted_in_batch.get(tk) {
                let rec = recorded[earlier].as_ref().expect("an accepted request has its event");
                results.push(replay_or_conflict(req, rec));
                continue;
            }
        }
        let res = match res {
            Some(Ok(res)) => res,
            Some(Err(e)) => {
                results.push(Err(e));
                continue;
            }
            None => unreachable!("only stored keys skip resolution"),
        };
        let lock =
            locked.get(&res.key).ok_or_else(|| StoreError::Other("record was not locked".to_owned()))?;
        let current = *usage.get(&res.key).unwrap_or(&lock.current_usage);
        let held = reserved.get(&res.key).copied().unwrap_or(0);
        match decide_with_reserved(&res.limit, res.key.period, current, held, req.change) {
            Ok(after) => {
                usage.insert(res.key.clone(), after);
                if let Some(limit) = res.limit.limit {
                    signals.push(Signal::Changed { key: res.key.clone(), limit, before: current, after });
                }
                let rec = RecordedEvent {
                    event: UsageEvent {
                        id: Uuid::now_v7(),
                        tenant_id: req.tenant_id.clone(),
                        metric_code: req.metric_code.clone(),
                        // A counter's amount, or the change a gauge's level made.
                        amount: after - current,
                        metadata: req.metadata.clone(),
                        idempotency_key: req.idempotency_key.clone(),
                        timestamp: res.at,
                        created_at: now,
                    },
                    receipt: EventReceipt {
                        usage_after: after,
                        limit: res.limit.limit,
                        enforcement: res.limit.enforcement,
                        period: res.key.period,
                        timestamp_explicit: req.timestamp.is_some(),
                        set: matches!(req.change, Change::Set(_)),
                        reserved: held,
                    },
                };
                results.push(Ok(UsageOutcome::from_recorded(&rec, false)));
                recorded[idx] = Some(rec);
                if let Some(tk) = tenant_key {
                    accepted_in_batch.insert(tk, idx);
                }
            }
            Err(e) => {
                if let UsageError::QuotaExceeded { current, limit, requested, .. } = &e {
                    signals.push(Signal::Refused {
                        key: res.key.clone(),
                        limit: *limit,
                        current: *current,
                        requested: *requested,
                    });
                }
                results.push(Err(e));
            }
        }
    }

    // 5. Write.
    let updates: Vec<RecordUpdate> = usage
        .iter()
        .filter_map(|(key, &after)| {
            let lock = locked.get(key)?;
            (after != lock.current_usage || lock.created).then(|| RecordUpdate {
                id: lock.id,
                key: key.clone(),
                current_usage: after,
            })
        })
        .collect();
    if !updates.is_empty() {
        tx.update_records(&updates, now).await?;
    }
    let unused: Vec<(RecordKey, Uuid)> = locked
        .iter()
        .filter(|(key, lock)| lock.created && !usage.contains_key(*key))
        .map(|(key, lock)| (key.clone(), lock.id))
        .collect();
    if !unused.is_empty() {
        tx.delete_records(&unused).await?;
    }
    let mut events: Vec<RecordedEvent> = recorded.into_iter().flatten().collect();
    // Insert in one global order of the unique (tenant_id, idempotency_key), so that two
    // batches waiting on each other's keys cannot deadlock; arrival order is kept in the
    // answers, and the events' ids and timestamps say when each happened.
    events.sort_by(|a, b| {
        (&a.event.tenant_id, &a.event.idempotency_key).cmp(&(&b.event.tenant_id, &b.event.idempotency_key))
    });
    if !events.is_empty() {
        tx.insert_events(&events).await?;
    }
    outbox_in_tx(tx, &signals, now).await?;
    Ok(results)
}

/// The open reservations against the records of the batch's finite limits: HARD decisions
/// count them as used, and every answer's `remaining` subtracts them.
async fn reserved_for<T: UsageTx>(
    tx: &mut T,
    resolved: &[Option<Result<Resolved, UsageError>>],
    now: Timestamp,
) -> Result<HashMap<RecordKey, i64>, StoreError> {
    let keys: Vec<RecordKey> = resolved
        .iter()
        .filter_map(|r| match r {
            Some(Ok(res)) if res.limit.limit.is_some() => Some(res.key.clone()),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if keys.is_empty() { Ok(HashMap::new()) } else { tx.reserved_sums(&keys, now).await }
}

pub(crate) fn resolve_limit(
    tenant: &TenantId,
    metric: &tally_domain::MetricCode,
    lookup: Option<&EntitlementLookup>,
) -> Result<(QuotaLimit, Timestamp), UsageError> {
    let entitlement = match lookup {
        None | Some(EntitlementLookup::TenantMissing) => {
            return Err(UsageError::TenantNotFound { tenant: tenant.clone() });
        }
        Some(EntitlementLookup::NoSubscription) => {
            return Err(UsageError::NoSubscription { tenant: tenant.clone() });
        }
        Some(EntitlementLookup::Found(e)) => e,
    };
    let limit =
        entitlement.limit_for(metric).ok_or_else(|| UsageError::QuotaNotFound { metric: metric.clone() })?;
    Ok((limit.clone(), entitlement.subscription.anchor))
}

fn resolve(
    req: &UsageRequest,
    lookup: Option<&EntitlementLookup>,
    now: Timestamp,
) -> Result<Resolved, UsageError> {
    let (limit, anchor) = resolve_limit(&req.tenant_id, &req.metric_code, lookup)?;
    let at = req.timestamp.unwrap_or(now);
    let period = limit.period.containing(at, anchor)?;
    Ok(Resolved {
        limit,
        key: RecordKey { tenant_id: req.tenant_id.clone(), metric_code: req.metric_code.clone(), period },
        at,
    })
}

fn replay_or_conflict(req: &UsageRequest, rec: &RecordedEvent) -> Result<UsageOutcome, UsageError> {
    let dedup = req.idempotency_key.as_ref().is_some_and(IdempotencyKey::replays_any_payload);
    if dedup || req.same_payload(rec) {
        Ok(UsageOutcome::from_recorded(rec, true))
    } else {
        Err(UsageError::IdempotencyConflict {
            key: req.idempotency_key.clone().expect("only keyed requests replay"),
        })
    }
}

/// The audit entry of a reset: what the counter held before, so that `tally verify` can
/// rebuild every counter from the events and the resets.
pub fn reset_audit(key_id: Option<Uuid>, now: Timestamp, before: &UsageRecord) -> AuditEntry {
    AuditEntry::new(
        now,
        key_id,
        AuditAction::Reset,
        Some(before.tenant_id.clone()),
        serde_json::json!({
            "metric_code": before.metric_code.as_str(),
            "record_id": before.id.to_string(),
            "period_start": tally_domain::time::format_rfc3339(before.period_start),
            "period_end": tally_domain::time::format_rfc3339(before.period_end),
            "previous_usage": before.current_usage,
        }),
    )
}
