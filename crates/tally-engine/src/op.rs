//! What a write batch holds (operations, in arrival order), what each one answers, and the
//! inputs every decision takes besides what was loaded.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Duration;
use tally_domain::limits::{CLOSE_CLOCK_SKEW_SECONDS_MAX, EVENT_FUTURE_SECONDS_MAX};
use tally_domain::{
    CommitRequest, CorrectionRequest, EntitlementLookup, ReserveOutcome, ReserveRequest, TenantId, Timestamp,
    UsageError, UsageOutcome, UsageRequest,
};
use uuid::Uuid;

/// One write of the hot path. A batch holds any mix of them, from any tenants; they are
/// decided in arrival order, each on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Record usage (`POST .../usage`, an item of a batch, a compatibility event).
    Usage(UsageRequest),
    /// Hold quota (`POST .../reservations`).
    Reserve(ReserveRequest),
    /// Settle a reservation with its usage (`POST .../reservations/{id}/commit`).
    Commit(CommitRequest),
    /// Correct a counter by a signed amount (`POST .../usage/corrections`).
    Correct(CorrectionRequest),
    /// Free a reservation (`DELETE .../reservations/{id}`).
    Release {
        /// Whose reservation.
        tenant_id: TenantId,
        /// Which.
        reservation_id: Uuid,
    },
}

impl WriteOp {
    /// The tenant the operation acts for.
    pub fn tenant_id(&self) -> &TenantId {
        match self {
            WriteOp::Usage(r) => &r.tenant_id,
            WriteOp::Reserve(r) => &r.tenant_id,
            WriteOp::Commit(r) => &r.tenant_id,
            WriteOp::Correct(r) => &r.tenant_id,
            WriteOp::Release { tenant_id, .. } => tenant_id,
        }
    }
}

/// What one operation answers. `Err` is a refusal that wrote nothing (a HARD limit, an
/// unknown tenant, a conflict, ...); failures of the store are not answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Of `WriteOp::Usage`, `WriteOp::Correct` and `WriteOp::Commit`.
    Usage(Result<UsageOutcome, UsageError>),
    /// Of `WriteOp::Reserve`.
    Reserve(Result<ReserveOutcome, UsageError>),
    /// Of `WriteOp::Release`.
    Release(Result<(), UsageError>),
}

impl Answer {
    /// The usage outcome, when this answers a usage or a commit.
    pub fn into_usage(self) -> Option<Result<UsageOutcome, UsageError>> {
        match self {
            Answer::Usage(r) => Some(r),
            _ => None,
        }
    }

    /// The reservation outcome, when this answers a reservation.
    pub fn into_reserve(self) -> Option<Result<ReserveOutcome, UsageError>> {
        match self {
            Answer::Reserve(r) => Some(r),
            _ => None,
        }
    }

    /// The release outcome, when this answers a release.
    pub fn into_release(self) -> Option<Result<(), UsageError>> {
        match self {
            Answer::Release(r) => Some(r),
            _ => None,
        }
    }
}

/// The tenants' entitlements a batch is decided against: from the configuration cache, or
/// read inside the transaction when the configuration version moved.
pub trait Entitlements {
    /// The tenant's entitlement; `None` when it was not looked up (decided as a missing tenant).
    fn lookup(&self, tenant: &TenantId) -> Option<&EntitlementLookup>;
}

impl Entitlements for HashMap<TenantId, EntitlementLookup> {
    fn lookup(&self, tenant: &TenantId) -> Option<&EntitlementLookup> {
        self.get(tenant)
    }
}

impl Entitlements for HashMap<TenantId, Arc<EntitlementLookup>> {
    fn lookup(&self, tenant: &TenantId) -> Option<&EntitlementLookup> {
        self.get(tenant).map(|e| &**e)
    }
}

/// The instant and the rules every decision of one batch takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// The batch's "now": event times default to it, periods and expiries are read at it.
    pub now: Timestamp,
    /// How far in the past an event's timestamp may lie.
    pub max_event_age: Duration,
}

impl Ctx {
    /// A context at `now` with the given event-age window.
    pub fn new(now: Timestamp, max_event_age: Duration) -> Ctx {
        Ctx { now, max_event_age }
    }

    /// `EventOutOfWindow` when `timestamp` lies more than `max_event_age` behind `now` or
    /// more than `EVENT_FUTURE_SECONDS_MAX` ahead of it.
    pub fn check_window(&self, timestamp: Option<Timestamp>) -> Result<(), UsageError> {
        let Some(ts) = timestamp else { return Ok(()) };
        let earliest = self.now - self.max_event_age;
        let latest = self.now + Duration::seconds(EVENT_FUTURE_SECONDS_MAX);
        if ts < earliest || ts > latest {
            return Err(UsageError::EventOutOfWindow { timestamp: ts, earliest, latest });
        }
        Ok(())
    }

    /// Whether a period ending at `end` may be closed already, by this instance or by one
    /// whose clock runs up to `CLOSE_CLOCK_SKEW_SECONDS_MAX` ahead: a write into it reads
    /// its tenant's watermark.
    pub fn may_be_closed(&self, end: Timestamp) -> bool {
        end <= self.now + Duration::seconds(CLOSE_CLOCK_SKEW_SECONDS_MAX)
    }
}
