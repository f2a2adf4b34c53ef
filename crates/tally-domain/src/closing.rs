//! Corrections and closed periods: a signed repair of a counter, the reason it carries, a
//! tenant's closing watermark, and a plan's `close_after`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::ids::{IdempotencyKey, MetricCode, TenantId};
use crate::limits::{AMOUNT_MAX, CLOSE_AFTER_SECONDS_MAX, REASON_CHARS_MAX};
use crate::period::Period;
use crate::time::Timestamp;
use crate::usage::{EventKind, RecordedEvent};

/// Why an operator repaired a count or reopened a period: 1 to `REASON_CHARS_MAX`
/// characters, not only white space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reason(String);

impl Reason {
    /// Checks `raw` and wraps it.
    pub fn parse(raw: &str) -> Result<Reason, DomainError> {
        let chars = raw.chars().count();
        if raw.trim().is_empty() {
            return Err(DomainError::invalid("reason", "is required: say why, in 1 to 500 characters"));
        }
        if chars > REASON_CHARS_MAX {
            return Err(DomainError::invalid(
                "reason",
                format!("must be at most {REASON_CHARS_MAX} characters, got {chars}"),
            ));
        }
        if raw.contains('\0') {
            return Err(DomainError::invalid("reason", "must not contain the NUL character"));
        }
        Ok(Reason(raw.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Reason {
    type Error = DomainError;
    fn try_from(raw: String) -> Result<Reason, DomainError> {
        Reason::parse(&raw)
    }
}

impl From<Reason> for String {
    fn from(value: Reason) -> String {
        value.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated correction: move the counter of the period containing `timestamp` by a
/// signed `amount`, with a reason. Never refused by a limit, not bound by the event window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrectionRequest {
    /// Whose counter.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// The signed change: nonzero, within `±AMOUNT_MAX`.
    pub amount: i64,
    /// Why.
    pub reason: Reason,
    /// For safe retries; shares the tenant's usage key space.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The instant whose period moves; the time it is recorded when omitted.
    pub timestamp: Option<Timestamp>,
    /// The admin key that asked, for the audit entry (`None`: the CLI).
    pub key_id: Option<uuid::Uuid>,
}

impl CorrectionRequest {
    /// Checks the amount: nonzero, `|amount| ≤ AMOUNT_MAX`.
    pub fn check_amount(amount: i64) -> Result<i64, DomainError> {
        if amount == 0 || amount.unsigned_abs() > AMOUNT_MAX.unsigned_abs() {
            return Err(DomainError::invalid(
                "amount",
                format!("must be nonzero and between -{AMOUNT_MAX} and {AMOUNT_MAX}, got {amount}"),
            ));
        }
        Ok(amount)
    }

    /// Whether `recorded` came from an equal correction: same metric, amount, reason and
    /// timestamp (an omitted timestamp equals only an omitted one).
    pub fn same_payload(&self, recorded: &RecordedEvent) -> bool {
        let timestamp_same = match self.timestamp {
            Some(t) => recorded.receipt.timestamp_explicit && recorded.event.timestamp == t,
            None => !recorded.receipt.timestamp_explicit,
        };
        recorded.event.kind == EventKind::Correction
            && self.metric_code == recorded.event.metric_code
            && self.amount == recorded.event.amount
            && recorded.event.reason.as_ref() == Some(&self.reason)
            && timestamp_same
    }
}

/// A tenant's closing watermark: every period with `period_end ≤ closed_before` is closed,
/// except one reopened since (its record says so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermark {
    /// Periods ending at or before it are closed.
    pub closed_before: Timestamp,
    /// When the watermark last moved (the `closed_at` of a period closed without a record).
    pub moved_at: Timestamp,
}

impl Watermark {
    /// Whether `period` lies under the watermark.
    pub fn covers(&self, period: Period) -> bool {
        period.end() <= self.closed_before
    }

    /// The watermark a close asking for `before` leaves, and whether it moved: it only
    /// ever moves forward.
    pub fn after_close(old: Option<Watermark>, before: Timestamp) -> (Timestamp, bool) {
        match old {
            Some(w) if before <= w.closed_before => (w.closed_before, false),
            _ => (before, true),
        }
    }
}

/// A period's closing state as its record keeps it (no record: both `None`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordClosing {
    /// When the period was closed, while it is.
    pub closed_at: Option<Timestamp>,
    /// When it was last reopened.
    pub reopened_at: Option<Timestamp>,
}

impl RecordClosing {
    /// Reopened since its last close: open, whatever the watermark says.
    pub fn reopened(&self) -> bool {
        self.reopened_at.is_some() && self.closed_at.is_none()
    }

    /// When `period` was closed, if it is: its record says so, or it lies under the
    /// tenant's watermark (`mark`) and was not reopened since. The one rule every store,
    /// the decision step and the reads share.
    pub fn closed_since(&self, mark: Option<Watermark>, period: Period) -> Option<Timestamp> {
        if let Some(at) = self.closed_at {
            return Some(at);
        }
        if self.reopened() {
            return None;
        }
        mark.filter(|m| m.covers(period)).map(|m| m.moved_at)
    }
}

/// A plan's `close_after`: periods that ended at least this long ago are closed
/// automatically. Written as a number and a unit: `s`, `m`, `h`, `d` or `w` (`"3d"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CloseAfter(i64);

impl CloseAfter {
    /// `0..=CLOSE_AFTER_SECONDS_MAX` seconds.
    pub fn from_seconds(seconds: i64) -> Result<CloseAfter, DomainError> {
        if !(0..=CLOSE_AFTER_SECONDS_MAX).contains(&seconds) {
            return Err(DomainError::invalid(
                "close_after",
                format!("must be between 0s and {}d, got {seconds}s", CLOSE_AFTER_SECONDS_MAX / 86_400),
            ));
        }
        Ok(CloseAfter(seconds))
    }

    /// Parses `"3d"`, `"12h"`, `"90m"`, `"30s"` or `"2w"`.
    pub fn parse(raw: &str) -> Result<CloseAfter, DomainError> {
        let bad = || {
            DomainError::invalid(
                "close_after",
                format!("must be a number and a unit s, m, h, d or w (such as \"3d\"), got {raw:?}"),
            )
        };
        let unit_at = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, unit) = raw.split_at(unit_at);
        if digits.is_empty() || digits.len() > 12 {
            return Err(bad());
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(bad()),
        };
        CloseAfter::from_seconds(n.checked_mul(scale).ok_or_else(bad)?)
    }

    /// The duration in seconds.
    pub fn seconds(self) -> i64 {
        self.0
    }
}

impl fmt::Display for CloseAfter {
    /// The largest unit that divides it exactly (`259200` seconds is `3d`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        for (unit, scale) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3_600), ("m", 60)] {
            if s != 0 && s % scale == 0 {
                return write!(f, "{}{unit}", s / scale);
            }
        }
        write!(f, "{s}s")
    }
}

impl Serialize for CloseAfter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CloseAfter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CloseAfter, D::Error> {
        let raw = String::deserialize(d)?;
        CloseAfter::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_after_reads_and_writes_its_units() {
        assert_eq!(CloseAfter::parse("3d").unwrap().seconds(), 259_200);
        assert_eq!(CloseAfter::parse("90m").unwrap().to_string(), "90m");
        assert_eq!(CloseAfter::parse("120m").unwrap().to_string(), "2h");
        assert_eq!(CloseAfter::parse("0s").unwrap().to_string(), "0s");
        assert_eq!(CloseAfter::parse("2w").unwrap().to_string(), "2w");
        for bad in ["", "d", "3", "3x", "-1d", "3 d", "400d", "99999999999999d"] {
            assert!(CloseAfter::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_period_is_closed_by_its_record_or_by_the_watermark_unless_reopened() {
        let t = |s: &str| crate::time::parse_rfc3339(s).unwrap();
        let october = Period::new(t("2026-10-01T00:00:00Z"), t("2026-11-01T00:00:00Z")).unwrap();
        let mark =
            Watermark { closed_before: t("2026-11-01T00:00:00Z"), moved_at: t("2026-11-02T00:00:00Z") };
        let low = Watermark { closed_before: t("2026-10-15T00:00:00Z"), ..mark };
        let none = RecordClosing::default();
        assert_eq!(none.closed_since(Some(mark), october), Some(mark.moved_at));
        assert_eq!(none.closed_since(Some(low), october), None);
        assert_eq!(none.closed_since(None, october), None);
        let marked = RecordClosing { closed_at: Some(t("2026-11-03T00:00:00Z")), reopened_at: None };
        assert_eq!(marked.closed_since(None, october), Some(t("2026-11-03T00:00:00Z")));
        let reopened = RecordClosing { closed_at: None, reopened_at: Some(t("2026-11-04T00:00:00Z")) };
        assert_eq!(reopened.closed_since(Some(mark), october), None);
        let closed_again = RecordClosing { closed_at: Some(t("2026-11-05T00:00:00Z")), ..reopened };
        assert_eq!(closed_again.closed_since(Some(mark), october), Some(t("2026-11-05T00:00:00Z")));
        assert_eq!(
            Watermark::after_close(Some(mark), t("2026-10-01T00:00:00Z")),
            (mark.closed_before, false)
        );
        assert_eq!(Watermark::after_close(Some(mark), mark.closed_before), (mark.closed_before, false));
        assert_eq!(
            Watermark::after_close(None, t("2026-10-01T00:00:00Z")),
            (t("2026-10-01T00:00:00Z"), true)
        );
    }

    #[test]
    fn a_reason_is_one_to_five_hundred_characters() {
        assert!(Reason::parse("refund of 500 calls").is_ok());
        assert!(Reason::parse(&"é".repeat(500)).is_ok());
        assert!(Reason::parse(&"é".repeat(501)).is_err());
        assert!(Reason::parse("").is_err());
        assert!(Reason::parse("   ").is_err());
    }

    #[test]
    fn a_correction_amount_is_signed_nonzero_and_bounded() {
        assert_eq!(CorrectionRequest::check_amount(-500), Ok(-500));
        assert_eq!(CorrectionRequest::check_amount(AMOUNT_MAX), Ok(AMOUNT_MAX));
        assert_eq!(CorrectionRequest::check_amount(-AMOUNT_MAX), Ok(-AMOUNT_MAX));
        assert!(CorrectionRequest::check_amount(0).is_err());
        assert!(CorrectionRequest::check_amount(AMOUNT_MAX + 1).is_err());
        assert!(CorrectionRequest::check_amount(i64::MIN).is_err());
    }
}
