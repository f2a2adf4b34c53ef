//! The metric catalog: what each metric is called, its unit, and whether it is a counter
//! (positive amounts summed per period) or a gauge (a level that goes up and down).
//!
//! How usage is applied follows the limit in force: a limit with `period: none` makes a
//! gauge's level of the metric, any other period a counter. The catalog's `kind` is the
//! declaration those limits are checked against when a plan or override is written
//! (`MetricKind::check_period`): a declared gauge takes only `period: none`, a declared
//! counter never does. A metric used in a plan but never declared is a counter, unless its
//! limit says `period: none`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::ids::{MetricCode, Name};
use crate::limits::{METRIC_UNIT_LEN_MAX, VALUE_PROPERTY_LEN_MAX};
use crate::period::PeriodKind;
use crate::time::Timestamp;

/// A counter or a gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Positive amounts, summed per period.
    #[default]
    Counter,
    /// A level that goes up and down and never resets (`period: none`).
    Gauge,
}

impl MetricKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }

    /// Whether a limit counting over `period` fits a metric of this kind: a gauge's limit
    /// has no period, a counter's always has one.
    pub fn check_period(self, metric: &MetricCode, period: PeriodKind) -> Result<(), DomainError> {
        match (self, period == PeriodKind::None) {
            (MetricKind::Gauge, true) | (MetricKind::Counter, false) => Ok(()),
            (MetricKind::Gauge, false) => Err(DomainError::invalid(
                "period",
                format!("{metric} is a gauge: its limit must use period none, not {period}"),
            )),
            (MetricKind::Counter, true) => Err(DomainError::invalid(
                "period",
                format!(
                    "{metric} is a counter: period none is for gauges (declare it with kind gauge first)"
                ),
            )),
        }
    }
}

impl fmt::Display for MetricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MetricKind {
    type Err = DomainError;
    fn from_str(raw: &str) -> Result<MetricKind, DomainError> {
        match raw {
            "counter" => Ok(MetricKind::Counter),
            "gauge" => Ok(MetricKind::Gauge),
            _ => Err(DomainError::invalid("kind", "must be counter or gauge")),
        }
    }
}

/// A metric's unit: 1–32 visible characters, no control characters.
pub fn check_unit(raw: &str) -> Result<String, DomainError> {
    if raw.is_empty()
        || raw.len() > METRIC_UNIT_LEN_MAX
        || raw.chars().any(char::is_control)
        || raw.trim() != raw
    {
        return Err(DomainError::invalid(
            "unit",
            format!(
                "must be 1 to {METRIC_UNIT_LEN_MAX} bytes, without control characters or surrounding spaces"
            ),
        ));
    }
    Ok(raw.to_owned())
}

/// A JSON pointer (RFC 6901) into an ingested event's `data` (CloudEvents) or `properties`
/// (Lago) naming the member that holds its amount, such as `/tokens`: empty, or `/` followed
/// by reference tokens, at most `VALUE_PROPERTY_LEN_MAX` bytes, every `~` escaped as `~0` or
/// `~1`.
pub fn check_value_property(raw: &str) -> Result<String, DomainError> {
    let bad = |why: &str| DomainError::invalid("value_property", why.to_owned());
    if raw.len() > VALUE_PROPERTY_LEN_MAX {
        return Err(bad(&format!("must be at most {VALUE_PROPERTY_LEN_MAX} bytes")));
    }
    if !raw.is_empty() && !raw.starts_with('/') {
        return Err(bad("must be a JSON pointer such as /tokens (empty, or starting with /)"));
    }
    if raw.chars().any(char::is_control) {
        return Err(bad("must not contain control characters"));
    }
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(bad("~ must be escaped as ~0 (and / inside a name as ~1)"));
        }
    }
    Ok(raw.to_owned())
}

/// What a client declares about a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricSpec {
    /// Display name.
    pub name: Name,
    /// Its unit, if any (`seat`, `byte`, `call`).
    pub unit: Option<String>,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// Where an ingested event of the compatibility routes carries its amount (a JSON
    /// pointer, see `check_value_property`); `None`: each event counts 1.
    pub value_property: Option<String>,
}

/// A metric in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    /// Its code.
    pub code: MetricCode,
    /// What was declared.
    pub spec: MetricSpec,
    /// When it was first declared.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_properties_are_json_pointers() {
        for ok in ["", "/tokens", "/usage/input_tokens", "/a~1b", "/m~0n", "/0"] {
            assert_eq!(check_value_property(ok).ok().as_deref(), Some(ok), "{ok}");
        }
        for bad in ["tokens", "/a~2", "/a~", "/a\n"] {
            let raw = bad.replace("\\n", "\n");
            assert!(check_value_property(&raw).is_err(), "{bad}");
        }
        assert!(check_value_property(&format!("/{}", "a".repeat(VALUE_PROPERTY_LEN_MAX))).is_err());
    }

    #[test]
    fn a_gauge_takes_only_period_none_and_a_counter_never() {
        let m = MetricCode::parse("seats").expect("m");
        assert!(MetricKind::Gauge.check_period(&m, PeriodKind::None).is_ok());
        assert!(MetricKind::Gauge.check_period(&m, PeriodKind::Month).is_err());
        assert!(MetricKind::Counter.check_period(&m, PeriodKind::Day).is_ok());
        assert!(MetricKind::Counter.check_period(&m, PeriodKind::None).is_err());
    }

    #[test]
    fn units_are_short_and_printable() {
        assert!(check_unit("seat").is_ok());
        assert!(check_unit("").is_err());
        assert!(check_unit(" seat").is_err());
        assert!(check_unit("a\u{7}").is_err());
        assert!(check_unit(&"x".repeat(METRIC_UNIT_LEN_MAX + 1)).is_err());
        assert!("gauge".parse::<MetricKind>().is_ok());
        assert!("level".parse::<MetricKind>().is_err());
    }
}
