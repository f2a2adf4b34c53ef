//! Billing periods: half-open `[start, end)` intervals that tile all time around an anchor.
//!
//! `hour`, `day` and `week` follow the UTC calendar (weeks start Monday 00:00Z). `month` and
//! `year` follow the subscription's anchor: the k-th period starts k months (years) after the
//! anchor, on the anchor's day clamped to the month's last day, at the anchor's time of day.
//! Every start is computed from the anchor itself, never from the previous period, so a
//! clamped February never makes March drift.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::limits::PERIOD_SEARCH_STEPS_MAX;
use crate::time::Timestamp;

/// The length of the periods a limit counts over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    /// One UTC hour.
    Hour,
    /// One UTC day.
    Day,
    /// One ISO week, Monday 00:00Z to Monday 00:00Z.
    Week,
    /// One month from the anchor.
    #[default]
    Month,
    /// One year from the anchor.
    Year,
    /// No period: a gauge's level, which never resets. Its record spans all representable
    /// time (`Period::unbounded`) and the wire shows `period_start`/`period_end` as `null`.
    None,
}

impl PeriodKind {
    /// The wire name (`hour`, `day`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Hour => "hour",
            PeriodKind::Day => "day",
            PeriodKind::Week => "week",
            PeriodKind::Month => "month",
            PeriodKind::Year => "year",
            PeriodKind::None => "none",
        }
    }

    /// The period of this kind that contains `at`, for a subscription anchored at `anchor`.
    pub fn containing(self, at: Timestamp, anchor: Timestamp) -> Result<Period, DomainError> {
        match self {
            PeriodKind::Hour => {
                let start = at
                    .date_naive()
                    .and_hms_opt(at.hour(), 0, 0)
                    .ok_or(DomainError::PeriodOutOfRange)?
                    .and_utc();
                Period::new(start, add(start, Duration::hours(1))?)
            }
            PeriodKind::Day => {
                let start = at.date_naive().and_time(NaiveTime::MIN).and_utc();
                Period::new(start, add(start, Duration::days(1))?)
            }
            PeriodKind::Week => {
                let back = i64::from(at.weekday().num_days_from_monday());
                let monday = at
                    .date_naive()
                    .checked_sub_signed(Duration::days(back))
                    .ok_or(DomainError::PeriodOutOfRange)?;
                let start = monday.and_time(NaiveTime::MIN).and_utc();
                Period::new(start, add(start, Duration::weeks(1))?)
            }
            PeriodKind::Month => anchored(at, anchor, 1),
            PeriodKind::Year => anchored(at, anchor, 12),
            PeriodKind::None => Ok(Period::unbounded()),
        }
    }
}

impl fmt::Display for PeriodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PeriodKind {
    type Err = DomainError;
    fn from_str(raw: &str) -> Result<PeriodKind, DomainError> {
        match raw {
            "hour" => Ok(PeriodKind::Hour),
            "day" => Ok(PeriodKind::Day),
            "week" => Ok(PeriodKind::Week),
            "month" => Ok(PeriodKind::Month),
            "year" => Ok(PeriodKind::Year),
            "none" => Ok(PeriodKind::None),
            _ => Err(DomainError::invalid("period", "must be one of hour, day, week, month, year, none")),
        }
    }
}

fn add(t: Timestamp, d: Duration) -> Result<Timestamp, DomainError> {
    t.checked_add_signed(d).ok_or(DomainError::PeriodOutOfRange)
}

/// Month index counted from year 0 (January of year 0 is 0).
fn month_index(year: i32, month0: u32) -> i64 {
    i64::from(year) * 12 + i64::from(month0)
}

fn days_in_month(year: i32, month: u32) -> Option<u32> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year.checked_add(1)?, 1, 1)?
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)?
    };
    u32::try_from(next.signed_duration_since(first).num_days()).ok()
}

/// The start of the k-th anchored period: `k * step_months` after the anchor, clamped.
fn anchored_start(anchor: Timestamp, k: i64, step_months: i64) -> Result<Timestamp, DomainError> {
    let base = month_index(anchor.year(), anchor.month0());
    let idx =
        k.checked_mul(step_months).and_then(|m| base.checked_add(m)).ok_or(DomainError::PeriodOutOfRange)?;
    let year = i32::try_from(idx.div_euclid(12)).map_err(|_| DomainError::PeriodOutOfRange)?;
    let month = u32::try_from(idx.rem_euclid(12)).map_err(|_| DomainError::PeriodOutOfRange)? + 1;
    let dim = days_in_month(year, month).ok_or(DomainError::PeriodOutOfRange)?;
    let day = anchor.day().min(dim);
    let date = NaiveDate::from_ymd_opt(year, month, day).ok_or(DomainError::PeriodOutOfRange)?;
    Ok(NaiveDateTime::new(date, anchor.time()).and_utc())
}

fn anchored(at: Timestamp, anchor: Timestamp, step_months: i64) -> Result<Period, DomainError> {
    let diff = month_index(at.year(), at.month0()) - month_index(anchor.year(), anchor.month0());
    let mut k = diff.div_euclid(step_months);
    // The estimate is right or one too high (when `at` lies before the anchor's day and time
    // in its month); step down, then up, within a fixed bound.
    for _ in 0..PERIOD_SEARCH_STEPS_MAX {
        let start = anchored_start(anchor, k, step_months)?;
        if start > at {
            k -= 1;
            continue;
        }
        let end = anchored_start(anchor, k + 1, step_months)?;
        if end <= at {
            k += 1;
            continue;
        }
        return Period::new(start, end);
    }
    Err(DomainError::PeriodOutOfRange)
}

/// A half-open interval `[start, end)` with `start < end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Period {
    start: Timestamp,
    end: Timestamp,
}

impl Period {
    /// Checks `start < end`.
    pub fn new(start: Timestamp, end: Timestamp) -> Result<Period, DomainError> {
        if start >= end {
            return Err(DomainError::invalid("period", "start must be before end"));
        }
        Ok(Period { start, end })
    }
    /// The one period of a gauge (`PeriodKind::None`): all representable time, from
    /// 0001-01-01T00:00:00Z to the last microsecond of 9999.
    pub fn unbounded() -> Period {
        Period {
            start: crate::time::from_micros(crate::time::TIMESTAMP_MICROS_MIN).expect("the first instant"),
            end: crate::time::from_micros(crate::time::TIMESTAMP_MICROS_MAX).expect("the last instant"),
        }
    }
    /// Whether this is the unbounded period of a gauge.
    pub fn is_unbounded(&self) -> bool {
        *self == Period::unbounded()
    }
    /// First instant inside the period.
    pub fn start(&self) -> Timestamp {
        self.start
    }
    /// First instant after the period.
    pub fn end(&self) -> Timestamp {
        self.end
    }
    /// Whether `at` lies in `[start, end)`.
    pub fn contains(&self, at: Timestamp) -> bool {
        self.start <= at && at < self.end
    }
    /// `[start, end)`, or `None` for the unbounded period of a gauge: what the wire shows.
    pub fn bounds(&self) -> Option<(Timestamp, Timestamp)> {
        (!self.is_unbounded()).then_some((self.start, self.end))
    }
    /// Seconds from `now` to the end of the period, rounded up; 0 once it has ended.
    pub fn seconds_until_end(&self, now: DateTime<Utc>) -> i64 {
        let micros = (self.end - now).num_microseconds().unwrap_or(i64::MAX);
        if micros <= 0 { 0 } else { (micros + 999_999) / 1_000_000 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;
    use proptest::prelude::*;

    fn t(s: &str) -> Timestamp {
        parse_rfc3339(s).expect("valid timestamp")
    }

    #[test]
    fn month_anchored_on_the_31st_clamps_and_never_drifts() {
        let anchor = t("2026-01-31T10:00:00Z");
        let starts: Vec<String> =
            (0..6).map(|k| anchored_start(anchor, k, 1).expect("in range").to_rfc3339()).collect();
        assert_eq!(
            starts,
            [
                "2026-01-31T10:00:00+00:00",
                "2026-02-28T10:00:00+00:00",
                "2026-03-31T10:00:00+00:00",
                "2026-04-30T10:00:00+00:00",
                "2026-05-31T10:00:00+00:00",
                "2026-06-30T10:00:00+00:00",
            ]
        );
        let leap = PeriodKind::Month.containing(t("2028-03-01T00:00:00Z"), anchor).expect("period");
        assert_eq!(leap.start(), t("2028-02-29T10:00:00Z"));
        assert_eq!(leap.end(), t("2028-03-31T10:00:00Z"));
    }

    #[test]
    fn year_anchored_on_feb_29_clamps_to_feb_28() {
        let anchor = t("2024-02-29T00:00:00Z");
        let p = PeriodKind::Year.containing(t("2025-06-01T00:00:00Z"), anchor).expect("period");
        assert_eq!(p.start(), t("2025-02-28T00:00:00Z"));
        assert_eq!(p.end(), t("2026-02-28T00:00:00Z"));
        let back = PeriodKind::Year.containing(t("2028-02-29T00:00:00Z"), anchor).expect("period");
        assert_eq!(back.start(), t("2028-02-29T00:00:00Z"));
    }

    #[test]
    fn calendar_periods_follow_utc() {
        let at = t("2026-11-29T10:30:00Z"); // a Sunday
        let anchor = t("2020-01-01T00:00:00Z");
        let hour = PeriodKind::Hour.containing(at, anchor).expect("hour");
        assert_eq!((hour.start(), hour.end()), (t("2026-11-29T10:00:00Z"), t("2026-11-29T11:00:00Z")));
        let day = PeriodKind::Day.containing(at, anchor).expect("day");
        assert_eq!((day.start(), day.end()), (t("2026-11-29T00:00:00Z"), t("2026-11-30T00:00:00Z")));
        let week = PeriodKind::Week.containing(at, anchor).expect("week");
        assert_eq!((week.start(), week.end()), (t("2026-11-23T00:00:00Z"), t("2026-11-30T00:00:00Z")));
    }

    #[test]
    fn periods_before_the_anchor_exist_too() {
        let anchor = t("2026-11-15T00:00:00Z");
        let p = PeriodKind::Month.containing(t("2026-11-14T23:59:59Z"), anchor).expect("period");
        assert_eq!((p.start(), p.end()), (t("2026-10-15T00:00:00Z"), anchor));
    }

    #[test]
    fn retry_after_rounds_up() {
        let p = Period::new(t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z")).expect("p");
        assert_eq!(p.seconds_until_end(t("2026-11-30T23:59:58.5Z")), 2);
        assert_eq!(p.seconds_until_end(t("2026-12-01T00:00:00Z")), 0);
    }

    /// Instants spread over 400 years, at microsecond precision.
    fn instant() -> impl Strategy<Value = Timestamp> {
        let lo = t("1800-01-01T00:00:00Z").timestamp_micros();
        let hi = t("2200-01-01T00:00:00Z").timestamp_micros();
        (lo..hi).prop_map(|us| DateTime::from_timestamp_micros(us).expect("in range"))
    }

    /// Anchors biased towards the 28th to 31st, where clamping happens.
    fn anchor() -> impl Strategy<Value = Timestamp> {
        prop_oneof![
            instant(),
            (1800i32..2200, 1u32..=12, 28u32..=31, 0u32..24, 0u32..60).prop_filter_map(
                "valid date",
                |(y, m, d, h, min)| {
                    NaiveDate::from_ymd_opt(y, m, d)
                        .and_then(|date| date.and_hms_opt(h, min, 0))
                        .map(|n| n.and_utc())
                }
            ),
        ]
    }

    fn kind() -> impl Strategy<Value = PeriodKind> {
        prop_oneof![
            Just(PeriodKind::Hour),
            Just(PeriodKind::Day),
            Just(PeriodKind::Week),
            Just(PeriodKind::Month),
            Just(PeriodKind::Year),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn the_period_containing_t_contains_t(k in kind(), at in instant(), a in anchor()) {
            let p = k.containing(at, a).expect("in range");
            prop_assert!(p.contains(at));
        }

        #[test]
        fn periods_tile_time_with_no_gap_and_no_overlap(k in kind(), at in instant(), a in anchor()) {
            let p = k.containing(at, a).expect("in range");
            // The instant just before the start belongs to the previous period, which ends
            // exactly where this one starts; the end belongs to the next, which starts there.
            let before = k.containing(p.start() - Duration::microseconds(1), a).expect("in range");
            prop_assert_eq!(before.end(), p.start());
            let after = k.containing(p.end(), a).expect("in range");
            prop_assert_eq!(after.start(), p.end());
            // Any instant in the period maps to the very same period.
            let mid = p.start() + (p.end() - p.start()) / 2;
            prop_assert_eq!(k.containing(mid, a).expect("in range"), p);
        }

        #[test]
        fn anchored_periods_start_on_the_anchor_day_clamped_at_the_anchor_time(
            at in instant(), a in anchor(), yearly in any::<bool>()
        ) {
            let k = if yearly { PeriodKind::Year } else { PeriodKind::Month };
            let p = k.containing(at, a).expect("in range");
            let s = p.start();
            prop_assert_eq!(s.time(), a.time());
            let dim = days_in_month(s.year(), s.month()).expect("valid month");
            prop_assert_eq!(s.day(), a.day().min(dim));
            if yearly {
                prop_assert_eq!(s.month(), a.month());
            }
        }
    }
}
