//! Reservations, written once and run by every adapter inside its own transaction through
//! `ReservationTx`, like `apply_in_tx`: so every store holds, commits and releases alike.
//!
//! A reservation is made under the lock of the usage record it holds against (the record of
//! the current period, created at zero when missing), the same lock every usage decision on
//! that record takes; so the open reservations a decision sums cannot change before it
//! commits, and HARD limits hold with reservations as without.
//!
//! The functions return `Ok(Err(refusal))` for an answer the caller must commit (a commit of
//! an expired reservation marks it expired) and `Err(StoreError)` for a failure, after which
//! the caller rolls back (`StoreError::Retry`: and re-runs).

use std::future::Future;

use tally_domain::{
    Change, CommitRequest, EventReceipt, IdempotencyKey, RecordedEvent, Reservation, ReservationStatus,
    ReserveOutcome, ReserveRequest, TenantId, Timestamp, UsageError, UsageEvent, UsageOutcome,
    decide_with_reserved,
};
use uuid::Uuid;

use crate::apply::{RecordUpdate, UsageTx, resolve_limit};
use crate::error::StoreError;
use crate::outbox::{Signal, outbox_in_tx};
use crate::types::RecordKey;

/// The primitives a reservation needs besides those of `UsageTx`.
pub trait ReservationTx: UsageTx {
    /// The tenant's reservation made under this idempotency key, if any.
    fn find_reservation_by_key(
        &mut self,
        tenant: &TenantId,
        key: &IdempotencyKey,
    ) -> impl Future<Output = Result<Option<Reservation>, StoreError>> + Send;

    /// The tenant's reservation with this id, locked for the rest of the transaction.
    fn lock_reservation(
        &mut self,
        tenant: &TenantId,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Reservation>, StoreError>> + Send;

    /// How many reservations the tenant holds open at `now`.
    fn count_open_reservations(
        &mut self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Stores a new reservation; `Err(StoreError::Retry)` when its idempotency key was taken
    /// by a concurrent transaction since `find_reservation_by_key`.
    fn insert_reservation(&mut self, r: &Reservation) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes a reservation's settlement: `status`, `settled_at`, `committed_event_id`,
    /// `committed_amount`.
    fn settle_reservation(&mut self, r: &Reservation) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One event of the tenant by id (a commit's replay answers from it).
    fn find_event_by_id(
        &mut self,
        tenant: &TenantId,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send;
}

/// Holds `req.amount` against the current period's record, or refuses as a usage would.
pub async fn reserve_in_tx<T: ReservationTx>(
    tx: &mut T,
    req: &ReserveRequest,
    now: Timestamp,
) -> Result<Result<ReserveOutcome, UsageError>, StoreError> {
    if let Some(key) = &req.idempotency_key
        && let Some(found) = tx.find_reservation_by_key(&req.tenant_id, key).await?
    {
        return Ok(if found.same_payload(req) {
            Ok(ReserveOutcome { reservation: found, replayed: true })
        } else {
            Err(UsageError::IdempotencyConflict { key: key.clone() })
        });
    }
    let entitlements = tx.load_entitlements(std::slice::from_ref(&req.tenant_id)).await?;
    let (limit, anchor) =
        match resolve_limit(&req.tenant_id, &req.metric_code, entitlements.get(&req.tenant_id)) {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
    let period = match limit.period.containing(now, anchor) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e.into())),
    };
    let open = tx.count_open_reservations(&req.tenant_id, now).await?;
    if open >= tally_domain::limits::RESERVATIONS_OPEN_MAX {
        return Ok(Err(UsageError::Invalid(tally_domain::DomainError::invalid(
            "amount",
            format!(
                "the tenant holds {open} open reservations, the most allowed; commit or release some first"
            ),
        ))));
    }
    let key = RecordKey { tenant_id: req.tenant_id.clone(), metric_code: req.metric_code.clone(), period };
    let locked = tx.lock_records(std::slice::from_ref(&key), now).await?;
    let lock = locked.get(&key).ok_or_else(|| StoreError::Other("record was not locked".to_owned()))?;
    let held = tx.reserved_sums(std::slice::from_ref(&key), now).await?.get(&key).copied().unwrap_or(0);
    if let Err(refusal) =
        decide_with_reserved(&limit, period, lock.current_usage, held, Change::add(req.amount))
    {
        if let UsageError::QuotaExceeded { current, limit, requested, .. } = &refusal {
            let signal =
                Signal::Refused { key: key.clone(), limit: *limit, current: *current, requested: *requested };
            outbox_in_tx(tx, &[signal], now).await?;
        }
        if lock.created {
            tx.delete_records(&[(key, lock.id)]).await?;
        }
        return Ok(Err(refusal));
    }
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
        usage_at_creation: lock.current_usage,
        reserved_at_creation: held.saturating_add(req.amount.get()),
        limit_at_creation: limit.limit,
    };
    tx.insert_reservation(&reservation).await?;
    Ok(Ok(ReserveOutcome { reservation, replayed: false }))
}

/// Records the usage of an open reservation (at most the amount held; all of it by default)
/// in the period it held against, and releases the rest. A second commit with the same
/// amount answers the first one's result with `replayed: true`.
pub async fn commit_in_tx<T: ReservationTx>(
    tx: &mut T,
    req: &CommitRequest,
    now: Timestamp,
) -> Result<Result<UsageOutcome, UsageError>, StoreError> {
    let Some(mut r) = tx.lock_reservation(&req.tenant_id, req.reservation_id).await? else {
        return Ok(Err(UsageError::ReservationNotFound { id: req.reservation_id }));
    };
    let amount = req.amount.map_or(r.amount, |a| a.get());
    match r.status_at(now) {
        ReservationStatus::Open => {}
        ReservationStatus::Committed => {
            if r.committed_amount != Some(amount) {
                let before = r.committed_amount.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
                return Ok(Err(closed(&r, format!("it was committed with amount {before}, not {amount}"))));
            }
            let event_id = r.committed_event_id.ok_or_else(|| {
                StoreError::Corrupt(format!("reservation {} is committed without its event", r.id))
            })?;
            let Some(event) = tx.find_event_by_id(&r.tenant_id, event_id).await? else {
                return Err(StoreError::Corrupt(format!(
                    "the event {event_id} of reservation {} is missing",
                    r.id
                )));
            };
            return Ok(Ok(UsageOutcome::from_recorded(&event, true)));
        }
        status @ (ReservationStatus::Released | ReservationStatus::Expired) => {
            if status == ReservationStatus::Expired && r.status == ReservationStatus::Open {
                r.status = ReservationStatus::Expired;
                r.settled_at = Some(r.expires_at);
                tx.settle_reservation(&r).await?;
            }
            return Ok(Err(closed(&r, "only an open reservation can be committed".to_owned())));
        }
    }
    if amount > r.amount {
        return Ok(Err(UsageError::Invalid(tally_domain::DomainError::invalid(
            "amount",
            format!("must be between 1 and the {} reserved, got {amount}", r.amount),
        ))));
    }
    let entitlements = tx.load_entitlements(std::slice::from_ref(&r.tenant_id)).await?;
    let (limit, _) = match resolve_limit(&r.tenant_id, &r.metric_code, entitlements.get(&r.tenant_id)) {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    let key =
        RecordKey { tenant_id: r.tenant_id.clone(), metric_code: r.metric_code.clone(), period: r.period };
    let locked = tx.lock_records(std::slice::from_ref(&key), now).await?;
    let lock = locked.get(&key).ok_or_else(|| StoreError::Other("record was not locked".to_owned()))?;
    let held = tx.reserved_sums(std::slice::from_ref(&key), now).await?.get(&key).copied().unwrap_or(0);
    // The quota was held: the commit is never refused by the limit it held against.
    let after = match tally_domain::usage::checked_usage(&r.metric_code, lock.current_usage, amount) {
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
    if let Some(limit) = limit.limit {
        let signal = Signal::Changed { key: key.clone(), limit, before: lock.current_usage, after };
        outbox_in_tx(tx, &[signal], now).await?;
    }
    tx.update_records(&[RecordUpdate { id: lock.id, key, current_usage: after }], now).await?;
    tx.insert_events(std::slice::from_ref(&event)).await?;
    r.status = ReservationStatus::Committed;
    r.settled_at = Some(now);
    r.committed_event_id = Some(event.event.id);
    r.committed_amount = Some(amount);
    tx.settle_reservation(&r).await?;
    Ok(Ok(UsageOutcome::from_recorded(&event, false)))
}

/// Frees a reservation. Releasing one already released or expired changes nothing; a
/// committed one cannot be released.
pub async fn release_in_tx<T: ReservationTx>(
    tx: &mut T,
    tenant: &TenantId,
    id: Uuid,
    now: Timestamp,
) -> Result<Result<(), UsageError>, StoreError> {
    let Some(mut r) = tx.lock_reservation(tenant, id).await? else {
        return Ok(Err(UsageError::ReservationNotFound { id }));
    };
    match (r.status, r.status_at(now)) {
        (_, ReservationStatus::Committed) => {
            Ok(Err(closed(&r, "a committed reservation cannot be released".to_owned())))
        }
        (ReservationStatus::Open, effective) => {
            r.status = if effective == ReservationStatus::Expired {
                ReservationStatus::Expired
            } else {
                ReservationStatus::Released
            };
            r.settled_at = Some(if r.status == ReservationStatus::Expired { r.expires_at } else { now });
            tx.settle_reservation(&r).await?;
            Ok(Ok(()))
        }
        _ => Ok(Ok(())),
    }
}

fn closed(r: &Reservation, why: String) -> UsageError {
    UsageError::ReservationClosed { id: r.id, status: r.status, why }
}
