//! Values that cross the store boundary besides domain types: queries, pages, outcomes.

use tally_domain::{Entitlement, IdempotencyKey, MetricCode, Period, RecordedEvent, TenantId, Timestamp};
use uuid::Uuid;

/// What a create-or-replace did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome<T> {
    /// It did not exist and was created.
    Created(T),
    /// It existed and changed.
    Updated(T),
    /// It existed and the put changed nothing.
    Unchanged(T),
}

impl<T> PutOutcome<T> {
    /// The resulting value, whatever happened.
    pub fn into_inner(self) -> T {
        match self {
            PutOutcome::Created(v) | PutOutcome::Updated(v) | PutOutcome::Unchanged(v) => v,
        }
    }
    /// True for `Created`.
    pub fn is_created(&self) -> bool {
        matches!(self, PutOutcome::Created(_))
    }
}

/// A tenant's entitlement as found in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntitlementLookup {
    /// No such tenant.
    TenantMissing,
    /// The tenant exists with no subscription.
    NoSubscription,
    /// The tenant's subscription, plan and overrides, resolved.
    Found(Entitlement),
}

/// Where a page of events continues: strictly older than this `(timestamp, id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventCursor {
    /// Timestamp of the last event shown.
    pub timestamp: Timestamp,
    /// Id of the last event shown.
    pub id: Uuid,
}

/// A filter over one tenant's events, newest first by `(timestamp, id)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this metric, when given.
    pub metric_code: Option<MetricCode>,
    /// `timestamp >= from`, when given.
    pub from: Option<Timestamp>,
    /// `timestamp < to`, when given.
    pub to: Option<Timestamp>,
    /// At most this many events (the caller bounds it by `PAGE_LEN_MAX` + 1).
    pub limit: u32,
    /// Continue after this event.
    pub after: Option<EventCursor>,
}

/// A usage record's identity: one tenant, metric and period.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    /// Whose.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// Which period.
    pub period: Period,
}

/// A usage record's counter, for `tally verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordTotal {
    /// The record.
    pub id: Uuid,
    /// Its identity.
    pub key: RecordKey,
    /// Its counter.
    pub current_usage: i64,
}

/// The sum of the events that counted in one period, for `tally verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTotal {
    /// Whose.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// Start of the period the events counted in.
    pub period_start: Timestamp,
    /// Sum of their amounts.
    pub amount_sum: i64,
    /// How many.
    pub n_events: i64,
}

/// A usage reset, as the audit log holds it, for `tally verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetFact {
    /// Whose.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// Start of the period reset.
    pub period_start: Timestamp,
    /// What the counter held before the reset.
    pub previous_usage: i64,
}

/// Everything `tally verify` compares, read from the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyInputs {
    /// Every usage record's counter.
    pub records: Vec<RecordTotal>,
    /// The event sums per period.
    pub events: Vec<EventTotal>,
    /// Every audited reset.
    pub resets: Vec<ResetFact>,
}

/// A stored event found by its idempotency key.
pub type KeyedEvent = ((TenantId, IdempotencyKey), RecordedEvent);

/// What migrating one schema did, for `tally migrate`'s report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaReport {
    /// The schema (`public`, `tenant_<16 hex>`, or `main` for SQLite).
    pub schema: String,
    /// The tenant whose schema it is, in schema tenancy.
    pub tenant_id: Option<TenantId>,
    /// How many migrations were applied now.
    pub applied: u32,
    /// The schema's version afterwards.
    pub version: i64,
    /// Wall time spent on this schema.
    pub elapsed: std::time::Duration,
    /// Why it failed, if it did; the other schemas are migrated all the same.
    pub error: Option<String>,
}
