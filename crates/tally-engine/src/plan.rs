//! `plan`: the answers and the writes of a batch, decided in arrival order against what the
//! transaction loaded.
//!
//! Each operation is decided on its own against the counters as the operations before it
//! in the batch left them; a refusal writes nothing, and a record this transaction created
//! for an operation that was then refused is deleted again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tally_domain::limits::RESERVATIONS_OPEN_MAX;
use tally_domain::usage::checked_usage;
use tally_domain::{
    AuditAction, AuditEntry, Change, CommitRequest, CorrectionRequest, Delivery, DomainError,
    EntitlementLookup, EventKind, EventReceipt, IdempotencyKey, MetricCode, PeriodKind, QuotaLimit,
    RecordClosing, RecordKey, RecordedEvent, Reservation, ReservationStatus, ReserveOutcome, ReserveRequest,
    TenantId, Timestamp, UsageError, UsageEvent, UsageOutcome, UsageRequest, decide_with_reserved,
};
use uuid::Uuid;

use crate::loaded::{Loaded, LockedRecord, RecordState};
use crate::needs::Needs;
use crate::op::{Answer, Ctx, Entitlements, WriteOp};
use crate::outbox::{self, FireKey, Signal, WebhookRule};

/// A counter to write: a new value for a locked record, or a record to insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordWrite {
    /// The record.
    pub id: Uuid,
    /// Its identity.
    pub key: RecordKey,
    /// The new counter.
    pub current_usage: i64,
    /// The record is absent from the store and must be inserted (else updated).
    pub insert: bool,
}

/// Everything a batch writes, for the adapter's second round trip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    /// Events to append, in one global order of `(tenant_id, idempotency_key)` so that two
    /// batches waiting on each other's keys cannot deadlock (arrival order is in the answers,
    /// and the events' ids and timestamps say when each happened).
    pub events: Vec<RecordedEvent>,
    /// Counters to write, each record at most once, in key order.
    pub records: Vec<RecordWrite>,
    /// Records this transaction created that nothing was recorded in.
    pub delete_records: Vec<(RecordKey, Uuid)>,
    /// Reservations to insert.
    pub new_reservations: Vec<Reservation>,
    /// Reservations whose settlement changed (`status`, `settled_at`, `committed_*`), by id.
    pub settled_reservations: Vec<Reservation>,
    /// Threshold states that changed (insert or update).
    pub fire_states: Vec<(FireKey, bool)>,
    /// Webhook deliveries to append.
    pub deliveries: Vec<Delivery>,
    /// Audit entries to append (`usage.correct`), in arrival order.
    pub audit: Vec<AuditEntry>,
}

impl Writes {
    /// Whether the batch writes nothing at all.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.records.is_empty()
            && self.delete_records.is_empty()
            && self.new_reservations.is_empty()
            && self.settled_reservations.is_empty()
            && self.fire_states.is_empty()
            && self.deliveries.is_empty()
            && self.audit.is_empty()
    }
}

/// The outcome of a batch: one answer per operation, in order, and what to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// One per operation, in the operations' order.
    pub answers: Vec<Answer>,
    /// What the transaction writes before it commits.
    pub writes: Writes,
}

/// Why a batch could not be decided from what was loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unplanned {
    /// More must be loaded in the same transaction (records that the entitlements read
    /// inside it, or a reservation, pointed to; threshold states of a crossing); then `plan`
    /// runs again.
    Need(Box<Needs>),
    /// What was loaded contradicts itself (a committed reservation without its event).
    Corrupt(String),
}

/// Decides `ops` in arrival order against `loaded`, the entitlements `ents` and the webhook
/// `rules`.
pub fn plan<E: Entitlements + ?Sized>(
    ops: &[WriteOp],
    ents: &E,
    rules: &[WebhookRule],
    loaded: &Loaded,
    ctx: &Ctx,
) -> Result<Plan, Unplanned> {
    let mut work = Work::new(loaded, ctx);
    let mut answers = Vec::with_capacity(ops.len());
    for op in ops {
        let answer = match op {
            WriteOp::Usage(req) => Answer::Usage(work.usage(req, ents)),
            WriteOp::Reserve(req) => Answer::Reserve(work.reserve(req, ents)),
            WriteOp::Commit(req) => Answer::Usage(work.commit(req, ents)?),
            WriteOp::Correct(req) => Answer::Usage(work.correct(req, ents)),
            WriteOp::Release { tenant_id, reservation_id } => {
                Answer::Release(work.release(tenant_id, *reservation_id))
            }
        };
        answers.push(answer);
    }
    let writes = work.finish(rules)?;
    Ok(Plan { answers, writes })
}

/// Resolves the limit of `metric` for `tenant`, and the anchor its periods follow.
pub(crate) fn resolve_limit<'e>(
    tenant: &TenantId,
    metric: &MetricCode,
    lookup: Option<&'e EntitlementLookup>,
) -> Result<(&'e QuotaLimit, Timestamp), UsageError> {
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
    Ok((limit, entitlement.subscription.anchor))
}

/// A request's answer from the event stored (or accepted earlier in the batch) under its key.
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

fn replay_reservation(req: &ReserveRequest, found: &Reservation) -> Result<ReserveOutcome, UsageError> {
    if found.same_payload(req) {
        Ok(ReserveOutcome { reservation: found.clone(), replayed: true })
    } else {
        Err(UsageError::IdempotencyConflict {
            key: req.idempotency_key.clone().expect("only keyed reservations replay"),
        })
    }
}

fn closed(r: &Reservation, why: String) -> UsageError {
    UsageError::ReservationClosed { id: r.id, status: r.status, why }
}

/// The batch's working state: the counters and holds as the operations so far left them.
struct Work<'l> {
    loaded: &'l Loaded,
    ctx: &'l Ctx,
    /// Counters moved in this batch.
    usage: HashMap<RecordKey, i64>,
    /// Records that must exist after the batch even if their counter did not move (a
    /// reservation holds against them).
    kept: BTreeSet<RecordKey>,
    /// What this batch added to (or took from) each record's open holds.
    held_delta: HashMap<RecordKey, i64>,
    /// What this batch changed in each tenant's count of open reservations.
    open_delta: HashMap<TenantId, i64>,
    /// Records an operation needed that were not loaded.
    missing: BTreeSet<RecordKey>,
    /// Tenants whose watermark an operation needed and that was not read.
    missing_watermarks: BTreeSet<TenantId>,
    /// Events accepted, in arrival order, and their keys.
    events: Vec<RecordedEvent>,
    event_keys: HashMap<(TenantId, IdempotencyKey), usize>,
    /// Reservations made, in arrival order, and their keys.
    new_reservations: Vec<Reservation>,
    reservation_keys: HashMap<(TenantId, IdempotencyKey), usize>,
    /// Loaded reservations as this batch left them, and the events its commits recorded.
    settled: BTreeMap<Uuid, Reservation>,
    committed: HashMap<Uuid, usize>,
    signals: Vec<Signal>,
    audit: Vec<AuditEntry>,
}

impl<'l> Work<'l> {
    fn new(loaded: &'l Loaded, ctx: &'l Ctx) -> Work<'l> {
        Work {
            loaded,
            ctx,
            usage: HashMap::new(),
            kept: BTreeSet::new(),
            held_delta: HashMap::new(),
            open_delta: HashMap::new(),
            missing: BTreeSet::new(),
            missing_watermarks: BTreeSet::new(),
            events: Vec::new(),
            event_keys: HashMap::new(),
            new_reservations: Vec::new(),
            reservation_keys: HashMap::new(),
            settled: BTreeMap::new(),
            committed: HashMap::new(),
            signals: Vec::new(),
            audit: Vec::new(),
        }
    }

    /// The locked record of `key`, or `None` (noted as missing) when it was not loaded.
    fn record(&mut self, key: &RecordKey) -> Option<&'l LockedRecord> {
        let found = self.loaded.records.get(key);
        if found.is_none() {
            self.missing.insert(key.clone());
        }
        found
    }

    /// `PeriodClosed` when the period of `key` is closed: its record says so, or it lies
    /// under the tenant's watermark and was not reopened. `UsageRecordNotFound` stands in
    /// (noted as missing) when the watermark is needed and was not read.
    fn closed(&mut self, key: &RecordKey, lock: &LockedRecord) -> Result<(), UsageError> {
        let closed = |closed_at| UsageError::PeriodClosed {
            metric: key.metric_code.clone(),
            period: key.period,
            closed_at,
        };
        let closing = RecordClosing {
            closed_at: lock.closed_at,
            // Only whether it was reopened matters here, not when.
            reopened_at: lock.reopened.then_some(self.ctx.now),
        };
        let needs_mark =
            closing.closed_at.is_none() && !lock.reopened && self.ctx.may_be_closed(key.period.end());
        let mark = match self.loaded.watermarks.get(&key.tenant_id) {
            Some(mark) => *mark,
            None if needs_mark => {
                self.missing_watermarks.insert(key.tenant_id.clone());
                return Err(UsageError::UsageRecordNotFound);
            }
            None => None,
        };
        match closing.closed_since(mark, key.period) {
            Some(at) => Err(closed(at)),
            None => Ok(()),
        }
    }

    fn current(&self, key: &RecordKey, lock: &LockedRecord) -> i64 {
        self.usage.get(key).copied().unwrap_or(lock.current_usage)
    }

    fn held(&self, key: &RecordKey, lock: &LockedRecord) -> i64 {
        lock.reserved.saturating_add(self.held_delta.get(key).copied().unwrap_or(0)).max(0)
    }

    fn usage<E: Entitlements + ?Sized>(
        &mut self,
        req: &UsageRequest,
        ents: &E,
    ) -> Result<UsageOutcome, UsageError> {
        // 1. The idempotency lookup: a replay answers the original, whatever changed since.
        let keyed = req.idempotency_key.as_ref().map(|k| (req.tenant_id.clone(), k.clone()));
        if let Some(tk) = &keyed {
            if let Some(rec) = self.loaded.events.get(tk) {
                return replay_or_conflict(req, rec);
            }
            if let Some(&idx) = self.event_keys.get(tk) {
                return replay_or_conflict(req, &self.events[idx]);
            }
        }
        // 2. The window, then 3. the subscription and the limit.
        self.ctx.check_window(req.timestamp)?;
        let (limit, anchor) = resolve_limit(&req.tenant_id, &req.metric_code, ents.lookup(&req.tenant_id))?;
        let at = req.timestamp.unwrap_or(self.ctx.now);
        let period = limit.period.containing(at, anchor)?;
        let key =
            RecordKey { tenant_id: req.tenant_id.clone(), metric_code: req.metric_code.clone(), period };
        let Some(lock) = self.record(&key) else {
            // Decided once the record is loaded (`Unplanned::Need`).
            return Err(UsageError::UsageRecordNotFound);
        };
        // 4. A closed period takes nothing more.
        self.closed(&key, lock)?;
        let current = self.current(&key, lock);
        let held = self.held(&key, lock);
        match decide_with_reserved(limit, period, current, held, req.change) {
            Ok(after) => {
                if let Some(max) = limit.limit {
                    self.signals.push(Signal::Changed {
                        key: key.clone(),
                        limit: max,
                        before: current,
                        after,
                    });
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
                        timestamp: at,
                        created_at: self.ctx.now,
                        kind: EventKind::Usage,
                        reason: None,
                    },
                    receipt: EventReceipt {
                        usage_after: after,
                        limit: limit.limit,
                        enforcement: limit.enforcement,
                        period,
                        timestamp_explicit: req.timestamp.is_some(),
                        set: matches!(req.change, Change::Set(_)),
                        reserved: held,
                    },
                };
                let outcome = UsageOutcome::from_recorded(&rec, false);
                self.usage.insert(key, after);
                if let Some(tk) = keyed {
                    self.event_keys.insert(tk, self.events.len());
                }
                self.events.push(rec);
                Ok(outcome)
            }
            Err(e) => {
                self.refused(&key, &e);
                Err(e)
            }
        }
    }

    fn refused(&mut self, key: &RecordKey, e: &UsageError) {
        if let UsageError::QuotaExceeded { current, limit, requested, .. } = e {
            self.signals.push(Signal::Refused {
                key: key.clone(),
                limit: *limit,
                current: *current,
                requested: *requested,
            });
        }
    }

    fn reserve<E: Entitlements + ?Sized>(
        &mut self,
        req: &ReserveRequest,
        ents: &E,
    ) -> Result<ReserveOutcome, UsageError> {
        let keyed = req.idempotency_key.as_ref().map(|k| (req.tenant_id.clone(), k.clone()));
        if let Some(tk) = &keyed {
            if let Some(found) = self.loaded.reservations_by_key.get(tk) {
                return replay_reservation(req, found);
            }
            if let Some(&idx) = self.reservation_keys.get(tk) {
                return replay_reservation(req, &self.new_reservations[idx]);
            }
        }
        let (limit, anchor) = resolve_limit(&req.tenant_id, &req.metric_code, ents.lookup(&req.tenant_id))?;
        let period = limit.period.containing(self.ctx.now, anchor)?;
        let open = self.loaded.open_reservations.get(&req.tenant_id).copied().unwrap_or(0)
            + self.open_delta.get(&req.tenant_id).copied().unwrap_or(0);
        if open >= RESERVATIONS_OPEN_MAX {
            return Err(UsageError::Invalid(DomainError::invalid(
                "amount",
                format!(
                    "the tenant holds {open} open reservations, the most allowed; commit or release some first"
                ),
            )));
        }
        let key =
            RecordKey { tenant_id: req.tenant_id.clone(), metric_code: req.metric_code.clone(), period };
        let Some(lock) = self.record(&key) else {
            return Err(UsageError::UsageRecordNotFound);
        };
        let current = self.current(&key, lock);
        let held = self.held(&key, lock);
        if let Err(refusal) = decide_with_reserved(limit, period, current, held, Change::add(req.amount)) {
            self.refused(&key, &refusal);
            return Err(refusal);
        }
        let now = self.ctx.now;
        let reservation = Reservation {
            id: Uuid::now_v7(),
            tenant_id: req.tenant_id.clone(),
            metric_code: req.metric_code.clone(),
            amount: req.amount.get(),
            period,
            idempotency_key: req.idempotency_key.clone(),
            ttl_seconds: req.ttl.seconds(),
            created_at: now,
            expires_at: now + chrono::Duration::seconds(req.ttl.seconds()),
            status: ReservationStatus::Open,
            settled_at: None,
            committed_event_id: None,
            committed_amount: None,
            usage_at_creation: current,
            reserved_at_creation: held.saturating_add(req.amount.get()),
            limit_at_creation: limit.limit,
        };
        *self.held_delta.entry(key.clone()).or_insert(0) += req.amount.get();
        *self.open_delta.entry(req.tenant_id.clone()).or_insert(0) += 1;
        self.kept.insert(key);
        if let Some(tk) = keyed {
            self.reservation_keys.insert(tk, self.new_reservations.len());
        }
        self.new_reservations.push(reservation.clone());
        Ok(ReserveOutcome { reservation, replayed: false })
    }

    /// The reservation `id` of `tenant` as the batch left it so far.
    fn reservation(&self, tenant: &TenantId, id: Uuid) -> Option<Reservation> {
        let r = match self.settled.get(&id) {
            Some(r) => r.clone(),
            None => self.loaded.reservations.get(&id)?.reservation.clone(),
        };
        (&r.tenant_id == tenant).then_some(r)
    }

    /// The event reservation `r`'s commit recorded: in this batch, or as loaded.
    fn committed_event(&self, r: &Reservation) -> Option<&RecordedEvent> {
        match self.committed.get(&r.id) {
            Some(&idx) => self.events.get(idx),
            None => self.loaded.reservations.get(&r.id)?.committed_event.as_ref(),
        }
    }

    /// Takes an open reservation's hold off its record's sum and its tenant's count.
    fn unhold(&mut self, r: &Reservation) {
        let key = RecordKey {
            tenant_id: r.tenant_id.clone(),
            metric_code: r.metric_code.clone(),
            period: r.period,
        };
        *self.held_delta.entry(key).or_insert(0) -= r.amount;
        *self.open_delta.entry(r.tenant_id.clone()).or_insert(0) -= 1;
    }

    fn commit<E: Entitlements + ?Sized>(
        &mut self,
        req: &CommitRequest,
        ents: &E,
    ) -> Result<Result<UsageOutcome, UsageError>, Unplanned> {
        let now = self.ctx.now;
        let Some(mut r) = self.reservation(&req.tenant_id, req.reservation_id) else {
            return Ok(Err(UsageError::ReservationNotFound { id: req.reservation_id }));
        };
        let amount = req.amount.map_or(r.amount, |a| a.get());
        match r.status_at(now) {
            ReservationStatus::Open => {}
            ReservationStatus::Committed => {
                if r.committed_amount != Some(amount) {
                    let before = r.committed_amount.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
                    return Ok(Err(closed(
                        &r,
                        format!("it was committed with amount {before}, not {amount}"),
                    )));
                }
                let Some(event) = self.committed_event(&r) else {
                    return Err(Unplanned::Corrupt(format!(
                        "reservation {} is committed without its event",
                        r.id
                    )));
                };
                return Ok(Ok(UsageOutcome::from_recorded(event, true)));
            }
            status @ (ReservationStatus::Released | ReservationStatus::Expired) => {
                if status == ReservationStatus::Expired && r.status == ReservationStatus::Open {
                    r.status = ReservationStatus::Expired;
                    r.settled_at = Some(r.expires_at);
                    self.settled.insert(r.id, r.clone());
                }
                return Ok(Err(closed(&r, "only an open reservation can be committed".to_owned())));
            }
        }
        if amount > r.amount {
            return Ok(Err(UsageError::Invalid(DomainError::invalid(
                "amount",
                format!("must be between 1 and the {} reserved, got {amount}", r.amount),
            ))));
        }
        let (limit, _) = match resolve_limit(&r.tenant_id, &r.metric_code, ents.lookup(&r.tenant_id)) {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        let key = RecordKey {
            tenant_id: r.tenant_id.clone(),
            metric_code: r.metric_code.clone(),
            period: r.period,
        };
        let Some(lock) = self.record(&key) else {
            return Ok(Err(UsageError::UsageRecordNotFound));
        };
        if let Err(e) = self.closed(&key, lock) {
            if matches!(e, UsageError::PeriodClosed { .. }) {
                // Its period was closed while it was held: nothing is recorded, and the
                // hold is released.
                self.unhold(&r);
                r.status = ReservationStatus::Released;
                r.settled_at = Some(now);
                self.settled.insert(r.id, r);
            }
            return Ok(Err(e));
        }
        let current = self.current(&key, lock);
        let held = self.held(&key, lock);
        // The quota was held: the commit is never refused by the limit it held against.
        let after = match checked_usage(&r.metric_code, current, amount) {
            Ok(after) => after,
            Err(e) => return Ok(Err(e.into())),
        };
        let event = RecordedEvent {
            event: UsageEvent {
                id: Uuid::now_v7(),
                tenant_id: r.tenant_id.clone(),
                metric_code: r.metric_code.clone(),
                amount,
                metadata: req.metadata.clone(),
                idempotency_key: None,
                // The work began when the quota was held: the usage counts in that period.
                timestamp: r.created_at,
                created_at: now,
                kind: EventKind::Usage,
                reason: None,
            },
            receipt: EventReceipt {
                usage_after: after,
                limit: limit.limit,
                enforcement: limit.enforcement,
                period: r.period,
                timestamp_explicit: false,
                set: false,
                reserved: held.saturating_sub(r.amount).max(0),
            },
        };
        if let Some(max) = limit.limit {
            self.signals.push(Signal::Changed { key: key.clone(), limit: max, before: current, after });
        }
        self.usage.insert(key, after);
        self.unhold(&r);
        r.status = ReservationStatus::Committed;
        r.settled_at = Some(now);
        r.committed_event_id = Some(event.event.id);
        r.committed_amount = Some(amount);
        self.settled.insert(r.id, r);
        let outcome = UsageOutcome::from_recorded(&event, false);
        self.committed.insert(req.reservation_id, self.events.len());
        self.events.push(event);
        Ok(Ok(outcome))
    }

    fn correct<E: Entitlements + ?Sized>(
        &mut self,
        req: &CorrectionRequest,
        ents: &E,
    ) -> Result<UsageOutcome, UsageError> {
        // 1. The idempotency lookup, in the usage key space.
        let keyed = req.idempotency_key.as_ref().map(|k| (req.tenant_id.clone(), k.clone()));
        if let Some(tk) = &keyed {
            let found =
                self.loaded.events.get(tk).or_else(|| self.event_keys.get(tk).map(|&idx| &self.events[idx]));
            if let Some(rec) = found {
                return if req.same_payload(rec) {
                    Ok(UsageOutcome::from_recorded(rec, true))
                } else {
                    Err(UsageError::IdempotencyConflict { key: tk.1.clone() })
                };
            }
        }
        // 2. No event window: a repair may reach any period that is not closed.
        let (limit, anchor) = resolve_limit(&req.tenant_id, &req.metric_code, ents.lookup(&req.tenant_id))?;
        if limit.period == PeriodKind::None {
            return Err(UsageError::CorrectionNotApplicable { metric: req.metric_code.clone() });
        }
        let at = req.timestamp.unwrap_or(self.ctx.now);
        let period = limit.period.containing(at, anchor)?;
        let key =
            RecordKey { tenant_id: req.tenant_id.clone(), metric_code: req.metric_code.clone(), period };
        let Some(lock) = self.record(&key) else {
            return Err(UsageError::UsageRecordNotFound);
        };
        self.closed(&key, lock)?;
        let current = self.current(&key, lock);
        let held = self.held(&key, lock);
        // 3. Never refused by a limit; never below zero.
        let after = checked_usage(&req.metric_code, current, req.amount)?;
        if after < 0 {
            return Err(UsageError::CorrectionBelowZero {
                metric: req.metric_code.clone(),
                current,
                amount: req.amount,
            });
        }
        // Only a rise may cross a threshold; a fall never fires (nor re-arms) one.
        if let Some(max) = limit.limit
            && req.amount > 0
        {
            self.signals.push(Signal::Changed { key: key.clone(), limit: max, before: current, after });
        }
        let rec = RecordedEvent {
            event: UsageEvent {
                id: Uuid::now_v7(),
                tenant_id: req.tenant_id.clone(),
                metric_code: req.metric_code.clone(),
                amount: req.amount,
                metadata: tally_domain::Metadata::default(),
                idempotency_key: req.idempotency_key.clone(),
                timestamp: at,
                created_at: self.ctx.now,
                kind: EventKind::Correction,
                reason: Some(req.reason.clone()),
            },
            receipt: EventReceipt {
                usage_after: after,
                limit: limit.limit,
                enforcement: limit.enforcement,
                period,
                timestamp_explicit: req.timestamp.is_some(),
                set: false,
                reserved: held,
            },
        };
        let outcome = UsageOutcome::from_recorded(&rec, false);
        self.audit.push(AuditEntry::new(
            self.ctx.now,
            req.key_id,
            AuditAction::UsageCorrect,
            Some(req.tenant_id.clone()),
            serde_json::json!({
                "event_id": rec.event.id.to_string(),
                "metric_code": req.metric_code.as_str(),
                "amount": req.amount,
                "reason": req.reason.as_str(),
                "timestamp": tally_domain::time::format_rfc3339(at),
                "period_start": tally_domain::time::format_rfc3339(period.start()),
                "period_end": tally_domain::time::format_rfc3339(period.end()),
                "usage_before": current,
                "usage_after": after,
            }),
        ));
        self.usage.insert(key, after);
        if let Some(tk) = keyed {
            self.event_keys.insert(tk, self.events.len());
        }
        self.events.push(rec);
        Ok(outcome)
    }

    fn release(&mut self, tenant: &TenantId, id: Uuid) -> Result<(), UsageError> {
        let now = self.ctx.now;
        let Some(mut r) = self.reservation(tenant, id) else {
            return Err(UsageError::ReservationNotFound { id });
        };
        match (r.status, r.status_at(now)) {
            (_, ReservationStatus::Committed) => {
                Err(closed(&r, "a committed reservation cannot be released".to_owned()))
            }
            (ReservationStatus::Open, effective) => {
                if effective == ReservationStatus::Expired {
                    r.status = ReservationStatus::Expired;
                    r.settled_at = Some(r.expires_at);
                } else {
                    self.unhold(&r);
                    r.status = ReservationStatus::Released;
                    r.settled_at = Some(now);
                }
                self.settled.insert(r.id, r);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn finish(self, rules: &[WebhookRule]) -> Result<Writes, Unplanned> {
        let mut need = Needs::default();
        if !self.missing.is_empty() {
            need.records = self.missing.into_iter().collect();
        }
        if !self.missing_watermarks.is_empty() {
            need.watermarks = self.missing_watermarks.into_iter().collect();
        }
        let fire = outbox::any_step(rules, &self.signals);
        if fire && self.loaded.fire_states.is_none() {
            need.fire_states = true;
        }
        if !need.is_empty() {
            return Err(Unplanned::Need(Box::new(need)));
        }
        let outbox = match &self.loaded.fire_states {
            Some(stored) if fire => outbox::decide(rules, &self.signals, stored, self.ctx.now),
            _ => outbox::OutboxWrites::default(),
        };

        let mut records = Vec::new();
        let mut delete_records = Vec::new();
        let mut keys: BTreeSet<&RecordKey> = self.usage.keys().collect();
        keys.extend(self.kept.iter());
        for key in keys {
            let lock = &self.loaded.records[key];
            let after = self.usage.get(key).copied().unwrap_or(lock.current_usage);
            let insert = lock.state == RecordState::Absent;
            if insert || after != lock.current_usage {
                records.push(RecordWrite { id: lock.id, key: key.clone(), current_usage: after, insert });
            }
        }
        for (key, lock) in &self.loaded.records {
            if lock.state == RecordState::Created && !self.usage.contains_key(key) && !self.kept.contains(key)
            {
                delete_records.push((key.clone(), lock.id));
            }
        }
        delete_records.sort();

        let mut events = self.events;
        events.sort_by(|a, b| {
            (&a.event.tenant_id, &a.event.idempotency_key)
                .cmp(&(&b.event.tenant_id, &b.event.idempotency_key))
        });
        Ok(Writes {
            events,
            records,
            delete_records,
            new_reservations: self.new_reservations,
            settled_reservations: self.settled.into_values().collect(),
            fire_states: outbox.states,
            deliveries: outbox.deliveries,
            audit: self.audit,
        })
    }
}
