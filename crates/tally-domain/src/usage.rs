//! Usage: the per-period counter (`UsageRecord`), the immutable fact (`UsageEvent`), a
//! request to record usage, its outcome, and the decision a limit makes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::closing::Reason;
use crate::error::DomainError;
use crate::ids::{Amount, IdempotencyKey, Metadata, MetricCode, TenantId};
use crate::limits::AMOUNT_MAX;
use crate::period::{Period, PeriodKind};
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

/// What an event records: usage, or an operator's correction of a count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Usage recorded by the product (`POST .../usage`, batches, reservations' commits,
    /// compatibility events).
    #[default]
    Usage,
    /// A signed repair of a counter (`POST .../usage/corrections`), with its reason.
    Correction,
}

impl EventKind {
    /// The wire and column name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Usage => "usage",
            EventKind::Correction => "correction",
        }
    }

    /// Reads a wire or column name.
    pub fn parse(raw: &str) -> Result<EventKind, DomainError> {
        match raw {
            "usage" => Ok(EventKind::Usage),
            "correction" => Ok(EventKind::Correction),
            _ => Err(DomainError::invalid("kind", format!("must be usage or correction, got {raw:?}"))),
        }
    }
}

/// An immutable fact: some usage happened, or a count was corrected. Never updated, never
/// deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Time-ordered id (UUID v7).
    pub id: Uuid,
    /// Whose usage.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// How much: `> 0` for a counter's usage; signed for a gauge's change and a correction.
    pub amount: i64,
    /// The client's context, `{}` when none was sent.
    pub metadata: Metadata,
    /// The client's key for safe retries.
    pub idempotency_key: Option<IdempotencyKey>,
    /// When the usage happened (the client's, or the time it was recorded).
    pub timestamp: Timestamp,
    /// When Tally recorded it.
    pub created_at: Timestamp,
    /// Usage or a correction.
    pub kind: EventKind,
    /// A correction's reason; `None` for usage.
    pub reason: Option<Reason>,
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
    /// Whether the request set a gauge's level (`set`) rather than adding an amount; the
    /// event's `amount` is then the change it made and `usage_after` the level set.
    pub set: bool,
    /// What open reservations held in the period right after this event (0 when none).
    pub reserved: i64,
}

/// An event as stored, with its receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The fact.
    pub event: UsageEvent,
    /// The answer given when it was recorded.
    pub receipt: EventReceipt,
}

/// What a usage request does to its counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Change {
    /// Adds an amount: `1..=AMOUNT_MAX` for a counter; a gauge also takes
    /// `-AMOUNT_MAX..=-1` (never 0).
    Add(i64),
    /// Sets a gauge's level: `0..=AMOUNT_MAX`. Counters refuse it.
    Set(i64),
}

impl Change {
    /// A positive amount, as every metric takes.
    pub fn add(amount: Amount) -> Change {
        Change::Add(amount.get())
    }

    /// `amount` or `set` from the wire: exactly one of them, `amount` nonzero within
    /// `±AMOUNT_MAX`, `set` within `0..=AMOUNT_MAX`. Whether the metric takes a negative
    /// amount or a `set` is decided against its limit (`Change::check_for`).
    pub fn from_wire(amount: Option<i64>, set: Option<i64>) -> Result<Change, DomainError> {
        match (amount, set) {
            (Some(_), Some(_)) => Err(DomainError::invalid("set", "give either amount or set, not both")),
            (None, None) => Err(DomainError::invalid("amount", "is required (or set, for a gauge)")),
            (Some(n), None) => {
                if n == 0 || n.unsigned_abs() > AMOUNT_MAX.unsigned_abs() {
                    return Err(DomainError::invalid(
                        "amount",
                        format!(
                            "must be between 1 and {AMOUNT_MAX} (a gauge also takes -{AMOUNT_MAX} to -1), got {n}"
                        ),
                    ));
                }
                Ok(Change::Add(n))
            }
            (None, Some(n)) => {
                if !(0..=AMOUNT_MAX).contains(&n) {
                    return Err(DomainError::invalid(
                        "set",
                        format!("must be between 0 and {AMOUNT_MAX}, got {n}"),
                    ));
                }
                Ok(Change::Set(n))
            }
        }
    }

    /// Refuses what a counter cannot take (a negative amount, a `set`) when the metric's
    /// limit counts per period; a gauge (`period: none`) takes both.
    pub fn check_for(self, kind: PeriodKind) -> Result<Change, DomainError> {
        if kind == PeriodKind::None {
            return Ok(self);
        }
        match self {
            Change::Add(n) if n >= 1 => Ok(self),
            Change::Add(n) => Err(DomainError::invalid(
                "amount",
                format!(
                    "must be between 1 and {AMOUNT_MAX} for a counter, got {n} (negative amounts are for gauges)"
                ),
            )),
            Change::Set(_) => {
                Err(DomainError::invalid("set", "is only for gauges (metrics limited with period none)"))
            }
        }
    }

    /// The amount a counter adds, or the change a gauge's level would make from `current`.
    pub fn delta(self, metric: &MetricCode, current: i64) -> Result<i64, DomainError> {
        match self {
            Change::Add(n) => Ok(n),
            Change::Set(level) => level.checked_sub(current).ok_or_else(|| DomainError::CounterOverflow {
                metric: metric.to_string(),
                current,
                amount: level,
            }),
        }
    }
}

/// A validated request to record usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRequest {
    /// Whose usage.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// How much (or, for a gauge, the level to set).
    pub change: Change,
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
        let change_same = match self.change {
            Change::Add(n) => !recorded.receipt.set && recorded.event.amount == n,
            Change::Set(level) => recorded.receipt.set && recorded.receipt.usage_after == level,
        };
        recorded.event.kind == EventKind::Usage
            && self.metric_code == recorded.event.metric_code
            && change_same
            && self.metadata == recorded.event.metadata
            && timestamp_same
    }

    /// Whether another request in the same batch carries an equal payload.
    pub fn same_payload_as(&self, other: &UsageRequest) -> bool {
        self.metric_code == other.metric_code
            && self.change == other.change
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
    /// `max(limit - current_usage - reserved, 0)`, or `None` when unlimited.
    pub remaining: Option<i64>,
    /// The enforcement.
    pub enforcement: LimitEnforcement,
    /// The period counted in.
    pub period: Period,
    /// `current_usage > limit`.
    pub exceeded: bool,
    /// True when this answers a retry and nothing was recorded.
    pub replayed: bool,
    /// Usage, or a correction.
    pub kind: EventKind,
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
            remaining: r.limit.map(|l| l.saturating_sub(r.usage_after).saturating_sub(r.reserved).max(0)),
            enforcement: r.enforcement,
            period: r.period,
            exceeded: r.limit.is_some_and(|l| r.usage_after > l),
            replayed,
            kind: recorded.event.kind,
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
    /// No reservation of the tenant has this id.
    #[error("reservation {id} not found")]
    ReservationNotFound {
        /// The id asked for.
        id: uuid::Uuid,
    },
    /// The reservation was settled otherwise (released, expired, or committed with another
    /// amount); nothing was recorded.
    #[error("reservation {id} is {status}: {why}")]
    ReservationClosed {
        /// The reservation.
        id: uuid::Uuid,
        /// Where it stands.
        status: crate::reservation::ReservationStatus,
        /// What the caller tried.
        why: String,
    },
    /// A gauge's level would go below zero; nothing was recorded.
    #[error("{metric}: level {current} cannot go down by {decrease}")]
    GaugeBelowZero {
        /// The metric.
        metric: MetricCode,
        /// The level before the request.
        current: i64,
        /// How much it would have gone down.
        decrease: i64,
    },
    /// The period the write falls in is closed; nothing was recorded.
    #[error("{metric}: the period [{}, {}) is closed (since {closed_at})", period.start(), period.end())]
    PeriodClosed {
        /// The metric.
        metric: MetricCode,
        /// The closed period.
        period: Period,
        /// When it was closed.
        closed_at: Timestamp,
    },
    /// A correction would take a counter below zero; nothing was recorded.
    #[error("{metric}: a correction of {amount} would take the counter from {current} below 0")]
    CorrectionBelowZero {
        /// The metric.
        metric: MetricCode,
        /// The counter before.
        current: i64,
        /// The correction asked for.
        amount: i64,
    },
    /// Corrections are for counters; a gauge's level is set instead.
    #[error("{metric} is a gauge: correct its level with a usage \"set\" instead")]
    CorrectionNotApplicable {
        /// The metric.
        metric: MetricCode,
    },
    /// The request is invalid (including a counter that would overflow).
    #[error(transparent)]
    Invalid(#[from] DomainError),
}

/// The counter's new value if `change` is recorded under `limit`, or why not.
///
/// A counter adds its amount, refused under HARD when the sum passes the limit. A gauge
/// (`period: none`) moves its level by the amount or to the level set: never below 0
/// (`GaugeBelowZero`), and under HARD a rise that ends above the limit is refused, while a
/// decrease is always allowed (even one that stays above a limit lowered meanwhile).
pub fn decide(limit: &QuotaLimit, period: Period, current: i64, change: Change) -> Result<i64, UsageError> {
    decide_with_reserved(limit, period, current, 0, change)
}

/// `decide`, counting `reserved` (open reservations) against a HARD limit as if used.
pub fn decide_with_reserved(
    limit: &QuotaLimit,
    period: Period,
    current: i64,
    reserved: i64,
    change: Change,
) -> Result<i64, UsageError> {
    let change = change.check_for(limit.period)?;
    let delta = change.delta(&limit.metric_code, current)?;
    let after = checked_usage(&limit.metric_code, current, delta)?;
    if after < 0 {
        return Err(UsageError::GaugeBelowZero {
            metric: limit.metric_code.clone(),
            current,
            decrease: delta.saturating_neg(),
        });
    }
    if let Some(max) = limit.limit
        && limit.should_enforce(limit.enforcement)
        && delta > 0
        && after.saturating_add(reserved) > max
    {
        return Err(UsageError::QuotaExceeded {
            metric: limit.metric_code.clone(),
            current,
            limit: max,
            requested: delta,
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

    fn amount(n: i64) -> Change {
        Change::Add(n)
    }

    fn positive(n: i64) -> Amount {
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
        assert!(record.record_usage(positive(1), period().start()).is_err());
        assert_eq!(record.current_usage, i64::MAX);
        record.reset(period().start());
        assert_eq!(record.current_usage, 0);
        record.record_usage(positive(3), period().start()).expect("fits");
        assert_eq!(record.current_usage, 3);
    }

    #[test]
    fn an_omitted_timestamp_matches_only_an_omitted_one() {
        let p = period();
        let req = UsageRequest {
            tenant_id: TenantId::parse("acme").expect("t"),
            metric_code: MetricCode::parse("api_calls").expect("m"),
            change: amount(1),
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
                kind: EventKind::Usage,
                reason: None,
            },
            receipt: EventReceipt {
                usage_after: 1,
                limit: None,
                enforcement: LimitEnforcement::None,
                period: p,
                timestamp_explicit: false,
                set: false,
                reserved: 0,
            },
        };
        assert!(req.same_payload(&rec));
        rec.receipt.timestamp_explicit = true;
        assert!(!req.same_payload(&rec));
        let explicit = UsageRequest { timestamp: Some(p.start()), ..req.clone() };
        assert!(explicit.same_payload(&rec));
        let other_amount = UsageRequest { change: amount(2), ..explicit };
        assert!(!other_amount.same_payload(&rec));
    }

    fn gauge(value: Option<i64>, enforcement: LimitEnforcement) -> QuotaLimit {
        QuotaLimit::new(MetricCode::parse("seats").expect("m"), value, enforcement, PeriodKind::None)
            .expect("l")
    }

    #[test]
    fn a_gauge_goes_down_never_below_zero_and_set_moves_it_to_a_level() {
        let hard = gauge(Some(10), LimitEnforcement::Hard);
        let all = Period::unbounded();
        assert_eq!(decide(&hard, all, 7, Change::Add(-3)), Ok(4));
        assert_eq!(decide(&hard, all, 7, Change::Set(2)), Ok(2));
        assert_eq!(decide(&hard, all, 7, Change::Set(10)), Ok(10));
        let below = decide(&hard, all, 2, Change::Add(-3)).expect_err("below zero");
        assert!(matches!(below, UsageError::GaugeBelowZero { current: 2, decrease: 3, .. }));
        // HARD refuses a rise that ends above the limit, reporting the rise asked for...
        let over = decide(&hard, all, 7, Change::Set(11)).expect_err("over");
        assert!(matches!(over, UsageError::QuotaExceeded { current: 7, limit: 10, requested: 4, .. }));
        // ...but a decrease is always allowed, even one that stays above a lowered limit.
        assert_eq!(decide(&gauge(Some(5), LimitEnforcement::Hard), all, 9, Change::Add(-1)), Ok(8));
        assert_eq!(decide(&gauge(Some(5), LimitEnforcement::Soft), all, 5, Change::Set(50)), Ok(50));
    }

    #[test]
    fn counters_refuse_what_only_gauges_take() {
        let counter = limit(Some(10), LimitEnforcement::Hard);
        assert!(matches!(decide(&counter, period(), 5, Change::Add(-1)), Err(UsageError::Invalid(_))));
        assert!(matches!(decide(&counter, period(), 5, Change::Set(1)), Err(UsageError::Invalid(_))));
        assert!(Change::from_wire(Some(1), Some(1)).is_err());
        assert!(Change::from_wire(None, None).is_err());
        assert!(Change::from_wire(Some(0), None).is_err());
        assert!(Change::from_wire(None, Some(-1)).is_err());
        assert_eq!(Change::from_wire(Some(-AMOUNT_MAX), None), Ok(Change::Add(-AMOUNT_MAX)));
        assert!(Change::from_wire(Some(-AMOUNT_MAX - 1), None).is_err());
        assert_eq!(Change::from_wire(None, Some(0)), Ok(Change::Set(0)));
    }

    #[test]
    fn reservations_count_against_a_hard_limit_only() {
        let hard = limit(Some(10), LimitEnforcement::Hard);
        assert_eq!(decide_with_reserved(&hard, period(), 4, 5, amount(1)), Ok(5));
        assert!(decide_with_reserved(&hard, period(), 4, 5, amount(2)).is_err());
        let soft = limit(Some(10), LimitEnforcement::Soft);
        assert_eq!(decide_with_reserved(&soft, period(), 4, 5, amount(2)), Ok(6));
    }
}
