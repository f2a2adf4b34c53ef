//! Usage: the per-period counter (`UsageRecord`), the immutable fact (`UsageEvent`), a
//! request to record usage, its outcome, and the decision a limit makes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;
use crate::ids::{Amount, IdempotencyKey, Metadata, MetricCode, TenantId};
use crate::period::Period;
use crate::quota::{LimitEnforcement, QuotaLimit};
use crate::time::Timestamp;

/// A tenant's counter for one metric in one period (the seed's aggregate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Time-ordered id (UUID v7).
    pub id: Uuid,
    /// Whose usage.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// Usage counted in the period so far.
    pub current_usage: i64,
    /// First instant of the period.
    pub period_start: Timestamp,
    /// First instant after the period.
    pub period_end: Timestamp,
    /// When the record was created.
    pub created_at: Timestamp,
    /// When the counter last changed.
    pub updated_at: Timestamp,
}

impl UsageRecord {
    /// A zero record for `period`.
    pub fn new(tenant_id: TenantId, metric_code: MetricCode, period: Period, now: Timestamp) -> UsageRecord {
        UsageRecord {
            id: Uuid::now_v7(),
            tenant_id,
            metric_code,
            current_usage: 0,
            period_start: period.start(),
            period_end: period.end(),
            created_at: now,
            updated_at: now,
        }
    }

    /// Adds `amount` to the counter; never wraps.
    pub fn record_usage(&mut self, amount: Amount, now: Timestamp) -> Result<(), DomainError> {
        self.current_usage = checked_usage(&self.metric_code, self.current_usage, amount.get())?;
        self.updated_at = now;
        Ok(())
    }

    /// Sets the counter back to zero.
    pub fn reset(&mut self, now: Timestamp) {
        self.current_usage = 0;
        self.updated_at = now;
    }

    /// The record's period.
    pub fn period(&self) -> Result<Period, DomainError> {
        Period::new(self.period_start, self.period_end)
    }
}

/// `current + amount`, or `CounterOverflow`.
pub fn checked_usage(metric: &MetricCode, current: i64, amount: i64) -> Result<i64, DomainError> {
    current.checked_add(amount).ok_or_else(|| DomainError::CounterOverflow {
        metric: metric.to_string(),
        current,
        amount,
    })
}

/// An immutable fact: some usage happened. Never updated, never deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Time-ordered id (UUID v7).
    pub id: Uuid,
    /// Whose usage.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// How much; always `> 0`.
    pub amount: i64,
    /// The client's context, `{}` when none was sent.
    pub metadata: Metadata,
    /// The client's key for safe retries.
    pub idempotency_key: Option<IdempotencyKey>,
    /// When the usage happened (the client's, or the time it was recorded).
    pub timestamp: Timestamp,
    /// When Tally recorded it.
    pub created_at: Timestamp,
}

/// What recording an event answered, kept with the event so that a replay returns the
/// original answer (the counters as they were then).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventReceipt {
    /// The counter right after this event.
    pub usage_after: i64,
    /// The limit in force then.
    pub limit: Option<i64>,
    /// The enforcement in force then.
    pub enforcement: LimitEnforcement,
    /// The period the event counted in.
    pub period: Period,
    /// Whether the client sent `timestamp` (for payload comparison on replay).
    pub timestamp_explicit: bool,
}

/// An event as stored, with its receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The fact.
    pub event: UsageEvent,
    /// The answer given when it was recorded.
    pub receipt: EventReceipt,
}

/// A validated request to record usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRequest {
    /// Whose usage.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// How much.
    pub amount: Amount,
    /// For safe retries.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Context; `{}` when none.
    pub metadata: Metadata,
    /// When it happened, if the client said; otherwise the time it is recorded.
    pub timestamp: Option<Timestamp>,
}

impl UsageRequest {
    /// Whether `recorded` came from an equal payload: same metric, amount, metadata (as
    /// JSON values) and timestamp (as instants; an omitted timestamp equals only an omitted one).
    pub fn same_payload(&self, recorded: &RecordedEvent) -> bool {
        let timestamp_same = match self.timestamp {
            Some(t) => recorded.receipt.timestamp_explicit && recorded.event.timestamp == t,
            None => !recorded.receipt.timestamp_explicit,
        };
        self.metric_code == recorded.event.metric_code
            && self.amount.get() == recorded.event.amount
            && self.metadata == recorded.event.metadata
            && timestamp_same
    }

    /// Whether another request in the same batch carries an equal payload.
    pub fn same_payload_as(&self, other: &UsageRequest) -> bool {
        self.metric_code == other.metric_code
            && self.amount == other.amount
            && self.metadata == other.metadata
            && self.timestamp == other.timestamp
    }
}

/// The answer to a recorded (or replayed) usage request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageOutcome {
    /// The event's id.
    pub event_id: Uuid,
    /// Whose usage.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// How much.
    pub amount: i64,
    /// The counter after this event.
    pub current_usage: i64,
    /// The limit; `None` is unlimited.
    pub limit: Option<i64>,
    /// `max(limit - current_usage, 0)`, or `None` when unlimited.
    pub remaining: Option<i64>,
    /// The enforcement.
    pub enforcement: LimitEnforcement,
    /// The period counted in.
    pub period: Period,
    /// `current_usage > limit`.
    pub exceeded: bool,
    /// True when this answers a retry and nothing was recorded.
    pub replayed: bool,
}

impl UsageOutcome {
    /// The answer that recording `recorded` gave.
    pub fn from_recorded(recorded: &RecordedEvent, replayed: bool) -> UsageOutcome {
        let r = &recorded.receipt;
        UsageOutcome {
            event_id: recorded.event.id,
            tenant_id: recorded.event.tenant_id.clone(),
            metric_code: recorded.event.metric_code.clone(),
            amount: recorded.event.amount,
            current_usage: r.usage_after,
            limit: r.limit,
            remaining: r.limit.map(|l| l.saturating_sub(r.usage_after).max(0)),
            enforcement: r.enforcement,
            period: r.period,
            exceeded: r.limit.is_some_and(|l| r.usage_after > l),
            replayed,
        }
    }
}

/// Why usage was not recorded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// A HARD limit would be passed; nothing was recorded.
    #[error("{metric}: {current} used of {limit}, {requested} requested")]
    QuotaExceeded {
        /// The metric.
        metric: MetricCode,
        /// Usage before the request.
        current: i64,
        /// The limit.
        limit: i64,
        /// The amount asked for.
        requested: i64,
        /// The period whose limit refused it.
        period: Period,
    },
    /// The tenant's plan has no limit for the metric.
    #[error("{metric}: the tenant's plan has no limit for this metric")]
    QuotaNotFound {
        /// The metric.
        metric: MetricCode,
    },
    /// The tenant has no active subscription.
    #[error("tenant {tenant} has no active subscription")]
    NoSubscription {
        /// The tenant.
        tenant: TenantId,
    },
    /// The tenant does not exist.
    #[error("tenant {tenant} not found")]
    TenantNotFound {
        /// The tenant.
        tenant: TenantId,
    },
    /// The idempotency key was used before with another payload.
    #[error("idempotency key {key} was used before with a different payload")]
    IdempotencyConflict {
        /// The key.
        key: IdempotencyKey,
    },
    /// The timestamp lies outside the accepted window.
    #[error("timestamp {timestamp} is outside the accepted window [{earliest}, {latest}]")]
    EventOutOfWindow {
        /// The timestamp given.
        timestamp: Timestamp,
        /// The oldest accepted.
        earliest: Timestamp,
        /// The newest accepted.
        latest: Timestamp,
    },
    /// No usage record matches.
    #[error("usage record not found")]
    UsageRecordNotFound,
    /// The request is invalid (including a counter that would overflow).
    #[error(transparent)]
    Invalid(#[from] DomainError),
}

/// The counter's new value if `amount` is recorded under `limit`, or why not.
pub fn decide(limit: &QuotaLimit, period: Period, current: i64, amount: Amount) -> Result<i64, UsageError> {
    let after = checked_usage(&limit.metric_code, current, amount.get())?;
    if let Some(max) = limit.limit
        && limit.should_enforce(limit.enforcement)
        && after > max
    {
        return Err(UsageError::QuotaExceeded {
            metric: limit.metric_code.clone(),
            current,
            limit: max,
            requested: amount.get(),
            period,
        });
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::period::PeriodKind;
    use crate::time::parse_rfc3339;

    fn period() -> Period {
        let t = parse_rfc3339("2026-11-01T00:00:00Z").expect("t");
        PeriodKind::Month.containing(t, t).expect("period")
    }

    fn limit(value: Option<i64>, enforcement: LimitEnforcement) -> QuotaLimit {
        QuotaLimit::new(MetricCode::parse("api_calls").expect("m"), value, enforcement, PeriodKind::Month)
            .expect("l")
    }

    fn amount(n: i64) -> Amount {
        Amount::new(n).expect("amount")
    }

    #[test]
    fn hard_limit_allows_exactly_up_to_the_limit() {
        assert_eq!(decide(&limit(Some(10), LimitEnforcement::Hard), period(), 9, amount(1)), Ok(10));
    }

    #[test]
    fn hard_limit_denies_the_event_that_would_cross_it() {
        let err =
            decide(&limit(Some(10), LimitEnforcement::Hard), period(), 10, amount(1)).expect_err("over");
        assert_eq!(err.to_string(), "api_calls: 10 used of 10, 1 requested");
    }

    #[test]
    fn soft_and_none_record_past_the_limit() {
        assert_eq!(decide(&limit(Some(10), LimitEnforcement::Soft), period(), 10, amount(5)), Ok(15));
        assert_eq!(decide(&limit(Some(0), LimitEnforcement::None), period(), 0, amount(5)), Ok(5));
    }

    #[test]
    fn counters_never_wrap() {
        let err = decide(&limit(None, LimitEnforcement::None), period(), i64::MAX - 1, amount(2))
            .expect_err("overflow");
        assert!(matches!(err, UsageError::Invalid(DomainError::CounterOverflow { .. })));
        let mut record = UsageRecord::new(
            TenantId::parse("acme").expect("t"),
            MetricCode::parse("m").expect("m"),
            period(),
            period().start(),
        );
        record.current_usage = i64::MAX;
        assert!(record.record_usage(amount(1), period().start()).is_err());
        assert_eq!(record.current_usage, i64::MAX);
        record.reset(period().start());
        assert_eq!(record.current_usage, 0);
        record.record_usage(amount(3), period().start()).expect("fits");
        assert_eq!(record.current_usage, 3);
    }

    #[test]
    fn an_omitted_timestamp_matches_only_an_omitted_one() {
        let p = period();
        let req = UsageRequest {
            tenant_id: TenantId::parse("acme").expect("t"),
            metric_code: MetricCode::parse("api_calls").expect("m"),
            amount: amount(1),
            idempotency_key: None,
            metadata: Metadata::default(),
            timestamp: None,
        };
        let mut rec = RecordedEvent {
            event: UsageEvent {
                id: Uuid::now_v7(),
                tenant_id: req.tenant_id.clone(),
                metric_code: req.metric_code.clone(),
                amount: 1,
                metadata: Metadata::default(),
                idempotency_key: None,
                timestamp: p.start(),
                created_at: p.start(),
            },
            receipt: EventReceipt {
                usage_after: 1,
                limit: None,
                enforcement: LimitEnforcement::None,
                period: p,
                timestamp_explicit: false,
            },
        };
        assert!(req.same_payload(&rec));
        rec.receipt.timestamp_explicit = true;
        assert!(!req.same_payload(&rec));
        let explicit = UsageRequest { timestamp: Some(p.start()), ..req.clone() };
        assert!(explicit.same_payload(&rec));
        let other_amount = UsageRequest { amount: amount(2), ..explicit };
        assert!(!other_amount.same_payload(&rec));
    }
}
