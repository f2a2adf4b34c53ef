//! Reservations: quota held before long work and settled after it (reserve, then commit).
//!
//! A reservation holds `amount` of a metric against the period its creation fell in. While
//! it is open (not settled, and `now < expires_at`), a HARD limit counts it as used: usage
//! and new reservations are refused when `current_usage + reserved + amount > limit`.
//! Committing records usage (at most the amount held) in that same period and releases the
//! rest; releasing frees it all; from `expires_at` on it frees itself, whether or not the
//! sweeper has marked it `expired` yet.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::error::DomainError;
use crate::ids::{Amount, IdempotencyKey, Metadata, MetricCode, TenantId};
use crate::limits::{RESERVATION_TTL_SECONDS_DEFAULT, RESERVATION_TTL_SECONDS_MAX};
use crate::period::Period;
use crate::time::Timestamp;

/// Where a reservation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservationStatus {
    /// Holding quota until `expires_at`.
    Open,
    /// Settled by a commit: usage was recorded and the rest released.
    Committed,
    /// Released by its owner.
    Released,
    /// Freed by reaching `expires_at` without a commit.
    Expired,
}

impl ReservationStatus {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Open => "open",
            ReservationStatus::Committed => "committed",
            ReservationStatus::Released => "released",
            ReservationStatus::Expired => "expired",
        }
    }
}

impl fmt::Display for ReservationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReservationStatus {
    type Err = DomainError;
    fn from_str(raw: &str) -> Result<ReservationStatus, DomainError> {
        match raw {
            "open" => Ok(ReservationStatus::Open),
            "committed" => Ok(ReservationStatus::Committed),
            "released" => Ok(ReservationStatus::Released),
            "expired" => Ok(ReservationStatus::Expired),
            _ => Err(DomainError::invalid("status", format!("unknown reservation status {raw:?}"))),
        }
    }
}

/// A reservation's time to live, in seconds: `1..=RESERVATION_TTL_SECONDS_MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ttl(i64);

impl Ttl {
    /// Checks the range; `None` is the default.
    pub fn new(seconds: Option<i64>) -> Result<Ttl, DomainError> {
        let s = seconds.unwrap_or(RESERVATION_TTL_SECONDS_DEFAULT);
        if !(1..=RESERVATION_TTL_SECONDS_MAX).contains(&s) {
            return Err(DomainError::invalid(
                "ttl_seconds",
                format!("must be between 1 and {RESERVATION_TTL_SECONDS_MAX}, got {s}"),
            ));
        }
        Ok(Ttl(s))
    }
    /// Seconds.
    pub fn seconds(self) -> i64 {
        self.0
    }
}

/// A validated request to hold quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveRequest {
    /// Whose quota.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// How much to hold.
    pub amount: Amount,
    /// How long to hold it.
    pub ttl: Ttl,
    /// For safe retries: the same key and payload answers the original reservation.
    pub idempotency_key: Option<IdempotencyKey>,
}

/// A validated request to settle a reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRequest {
    /// Whose reservation.
    pub tenant_id: TenantId,
    /// Which.
    pub reservation_id: Uuid,
    /// How much was used: at most the amount held; `None` is all of it.
    pub amount: Option<Amount>,
    /// The usage event's context.
    pub metadata: Metadata,
}

/// A reservation as stored, with the counters its creation answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Time-ordered id (UUID v7).
    pub id: Uuid,
    /// Whose quota.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// How much is held.
    pub amount: i64,
    /// The period it holds against, and where its commit counts.
    pub period: Period,
    /// The client's key, if any.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The ttl asked for (compared on a replayed creation).
    pub ttl_seconds: i64,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it frees itself.
    pub expires_at: Timestamp,
    /// Where it stands, as stored (see `status_at` for the effective one).
    pub status: ReservationStatus,
    /// When it was committed, released or marked expired.
    pub settled_at: Option<Timestamp>,
    /// The event its commit recorded.
    pub committed_event_id: Option<Uuid>,
    /// The amount its commit recorded.
    pub committed_amount: Option<i64>,
    /// The counter when it was made.
    pub usage_at_creation: i64,
    /// Everything held (itself included) when it was made.
    pub reserved_at_creation: i64,
    /// The limit when it was made.
    pub limit_at_creation: Option<i64>,
}

impl Reservation {
    /// The effective status at `now`: an open reservation past `expires_at` has expired,
    /// whether or not the sweeper marked it.
    pub fn status_at(&self, now: Timestamp) -> ReservationStatus {
        if self.status == ReservationStatus::Open && now >= self.expires_at {
            ReservationStatus::Expired
        } else {
            self.status
        }
    }

    /// Whether a creation request carries the payload this reservation was made from.
    pub fn same_payload(&self, req: &ReserveRequest) -> bool {
        self.metric_code == req.metric_code
            && self.amount == req.amount.get()
            && self.ttl_seconds == req.ttl.seconds()
    }

    /// `max(limit - usage - reserved, 0)` as the creation answered it.
    pub fn remaining_at_creation(&self) -> Option<i64> {
        self.limit_at_creation.map(|l| {
            l.saturating_sub(self.usage_at_creation).saturating_sub(self.reserved_at_creation).max(0)
        })
    }
}

/// The answer to a reservation (or its replay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveOutcome {
    /// The reservation.
    pub reservation: Reservation,
    /// True when this answers a retry and nothing more was reserved.
    pub replayed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    #[test]
    fn ttl_defaults_and_stays_within_a_day() {
        assert_eq!(Ttl::new(None).map(Ttl::seconds), Ok(RESERVATION_TTL_SECONDS_DEFAULT));
        assert!(Ttl::new(Some(0)).is_err());
        assert!(Ttl::new(Some(RESERVATION_TTL_SECONDS_MAX + 1)).is_err());
        assert_eq!(Ttl::new(Some(1)).map(Ttl::seconds), Ok(1));
    }

    #[test]
    fn an_open_reservation_expires_at_its_expiry_instant() {
        let t = |s: &str| parse_rfc3339(s).expect("t");
        let r = Reservation {
            id: Uuid::now_v7(),
            tenant_id: TenantId::parse("acme").expect("t"),
            metric_code: MetricCode::parse("tokens").expect("m"),
            amount: 5,
            period: Period::new(t("2026-12-01T00:00:00Z"), t("2027-01-01T00:00:00Z")).expect("p"),
            idempotency_key: None,
            ttl_seconds: 60,
            created_at: t("2026-12-06T10:00:00Z"),
            expires_at: t("2026-12-06T10:01:00Z"),
            status: ReservationStatus::Open,
            settled_at: None,
            committed_event_id: None,
            committed_amount: None,
            usage_at_creation: 90,
            reserved_at_creation: 5,
            limit_at_creation: Some(100),
        };
        assert_eq!(r.status_at(t("2026-12-06T10:00:59Z")), ReservationStatus::Open);
        assert_eq!(r.status_at(t("2026-12-06T10:01:00Z")), ReservationStatus::Expired);
        assert_eq!(r.remaining_at_creation(), Some(5));
        let released = Reservation { status: ReservationStatus::Released, ..r };
        assert_eq!(released.status_at(t("2026-12-06T10:05:00Z")), ReservationStatus::Released);
    }
}
