//! Instants: UTC, microsecond precision (what PostgreSQL and SQLite both keep exactly).

use chrono::{DateTime, SubsecRound, Utc};

use crate::error::DomainError;

/// An instant in UTC, truncated to whole microseconds.
pub type Timestamp = DateTime<Utc>;

/// Truncates to whole microseconds, the precision every store keeps.
pub fn truncate(t: DateTime<Utc>) -> Timestamp {
    t.trunc_subsecs(6)
}

/// Parses RFC 3339 with any offset (which is required), truncated to microseconds, in UTC.
/// The instant must lie in years 1 to 9999 in UTC (see `from_micros`): an offset can push
/// `9999-12-31T23:59:59-01:00` past it, and such an instant could be stored but not read back.
pub fn parse_rfc3339(raw: &str) -> Result<Timestamp, DomainError> {
    let bad = || {
        DomainError::invalid(
            "timestamp",
            format!("must be RFC 3339 with an offset, in years 1 to 9999 in UTC, got {raw:?}"),
        )
    };
    let t = DateTime::parse_from_rfc3339(raw).map(|t| truncate(t.with_timezone(&Utc))).map_err(|_| bad())?;
    if !(TIMESTAMP_MICROS_MIN..=TIMESTAMP_MICROS_MAX).contains(&to_micros(t)) {
        return Err(bad());
    }
    Ok(t)
}

/// Formats as RFC 3339 in UTC with a `Z` suffix, as every response does.
pub fn format_rfc3339(t: Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Microseconds since the Unix epoch.
pub fn to_micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

/// The instant `micros` microseconds after the Unix epoch.
///
/// Only instants in years 1 to 9999 are taken: both databases hold those, and nothing Tally
/// stores lies outside them, so a cursor or value beyond them is refused here rather than by
/// the database.
pub fn from_micros(micros: i64) -> Result<Timestamp, DomainError> {
    if !(TIMESTAMP_MICROS_MIN..=TIMESTAMP_MICROS_MAX).contains(&micros) {
        return Err(DomainError::PeriodOutOfRange);
    }
    DateTime::from_timestamp_micros(micros).ok_or(DomainError::PeriodOutOfRange)
}

/// 0001-01-01T00:00:00Z in microseconds since the Unix epoch.
pub const TIMESTAMP_MICROS_MIN: i64 = -62_135_596_800_000_000;
/// 9999-12-31T23:59:59.999999Z in microseconds since the Unix epoch.
pub const TIMESTAMP_MICROS_MAX: i64 = 253_402_300_799_999_999;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_outside_years_1_to_9999_are_refused() {
        assert_eq!(
            from_micros(TIMESTAMP_MICROS_MIN).map(|t| t.to_rfc3339()),
            Ok("0001-01-01T00:00:00+00:00".to_owned())
        );
        assert_eq!(from_micros(TIMESTAMP_MICROS_MAX).map(|t| t.timestamp()), Ok(253_402_300_799));
        assert!(from_micros(TIMESTAMP_MICROS_MIN - 1).is_err());
        assert!(from_micros(TIMESTAMP_MICROS_MAX + 1).is_err());
    }

    #[test]
    fn offsets_are_converted_and_a_missing_offset_is_refused() {
        let t = parse_rfc3339("2026-11-29T12:00:00+02:00").expect("offset");
        assert_eq!(format_rfc3339(t), "2026-11-29T10:00:00Z");
        assert!(parse_rfc3339("2026-11-29T10:00:00").is_err());
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn sub_microsecond_digits_are_truncated() {
        let t = parse_rfc3339("2026-11-29T10:00:00.123456789Z").expect("nanos");
        assert_eq!(format_rfc3339(t), "2026-11-29T10:00:00.123456Z");
        assert_eq!(from_micros(to_micros(t)).expect("range"), t);
    }
}
