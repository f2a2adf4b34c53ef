//! The query strings of the admin lists: filters, search, sort and cursor, as a browser's
//! GET form sends them. Empty fields mean "not given". Anything malformed is a 400 page that
//! names the field.

use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::Deserialize;
use tally_domain::{DomainError, MetricCode, TenantId, Timestamp};
use tally_store::{RecordCursor, RecordSort, SortKey, TimeRange};
use uuid::Uuid;

use super::urlencode;

/// Every field any admin list takes; each list reads the ones it uses.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ListParams {
    /// Search term: tenant id prefix or metric code prefix.
    pub q: Option<String>,
    /// Exactly this tenant (wins over `q`).
    pub tenant_id: Option<String>,
    /// Exactly this metric.
    pub metric_code: Option<String>,
    /// `created_at` from this day (UTC, inclusive), `YYYY-MM-DD`.
    pub created_from: Option<String>,
    /// `created_at` up to this day (UTC, inclusive).
    pub created_to: Option<String>,
    /// `period_end` from this day (UTC, inclusive).
    pub period_end_from: Option<String>,
    /// `period_end` up to this day (UTC, inclusive).
    pub period_end_to: Option<String>,
    /// Records: `created_at`, `period_end`, `current_usage`, `tenant_id` or `metric_code`.
    pub sort: Option<String>,
    /// `asc` or `desc`.
    pub dir: Option<String>,
    /// The cursor of the next page.
    pub after: Option<String>,
}

/// A given (non-blank) value.
pub fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn invalid(field: &'static str, rule: impl Into<String>) -> DomainError {
    DomainError::invalid(field, rule.into())
}

/// The metric filter.
pub fn metric(p: &ListParams) -> Result<Option<MetricCode>, DomainError> {
    given(&p.metric_code).map(MetricCode::parse).transpose()
}

/// The exact tenant filter.
pub fn tenant(p: &ListParams) -> Result<Option<TenantId>, DomainError> {
    given(&p.tenant_id).map(TenantId::parse).transpose()
}

fn parse_day(field: &'static str, raw: &str) -> Result<Timestamp, DomainError> {
    let d = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| invalid(field, format!("must be a day as YYYY-MM-DD, got {raw:?}")))?;
    let midnight = d.and_hms_opt(0, 0, 0).ok_or_else(|| invalid(field, "is not a day"))?;
    Ok(Utc.from_utc_datetime(&midnight))
}

/// A window of whole UTC days, both ends inclusive.
pub fn day_range(
    from_field: &'static str,
    from: &Option<String>,
    to_field: &'static str,
    to: &Option<String>,
) -> Result<TimeRange, DomainError> {
    let from = given(from).map(|raw| parse_day(from_field, raw)).transpose()?;
    let to = given(to).map(|raw| parse_day(to_field, raw).map(|t| t + Duration::days(1))).transpose()?;
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        return Err(invalid(to_field, "must not be before the start of the window"));
    }
    Ok(TimeRange { from, to })
}

/// The records list's sort column and direction (default: newest `created_at` first).
pub fn record_sort(p: &ListParams) -> Result<(RecordSort, bool), DomainError> {
    let sort = match given(&p.sort) {
        None => RecordSort::CreatedAt,
        Some(name) => RecordSort::from_column(name).ok_or_else(|| {
            let names: Vec<&str> = RecordSort::ALL.iter().map(|s| s.column()).collect();
            invalid("sort", format!("must be one of {}, got {name:?}", names.join(", ")))
        })?,
    };
    let descending = match given(&p.dir) {
        None => matches!(sort, RecordSort::CreatedAt | RecordSort::PeriodEnd | RecordSort::CurrentUsage),
        Some("desc") => true,
        Some("asc") => false,
        Some(other) => return Err(invalid("dir", format!("must be asc or desc, got {other:?}"))),
    };
    Ok((sort, descending))
}

fn to_hex(raw: &str) -> String {
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(raw: &str) -> Option<String> {
    if !raw.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..raw.len())
        .step_by(2)
        .map(|i| raw.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Encodes a records cursor: `t<micros>.<id>`, `i<int>.<id>` or `s<hex>.<id>`.
pub fn encode_record_cursor(c: &RecordCursor) -> String {
    let key = match &c.key {
        SortKey::Time(t) => format!("t{}", tally_domain::time::to_micros(*t)),
        SortKey::Int(n) => format!("i{n}"),
        SortKey::Text(s) => format!("s{}", to_hex(s)),
    };
    format!("{key}.{}", c.id.simple())
}

/// Decodes a records cursor for `sort`; one made for another sort is refused.
pub fn decode_record_cursor(raw: &str, sort: RecordSort) -> Result<RecordCursor, DomainError> {
    let bad = || invalid("after", "is not a cursor of this list and sort");
    let (key, id) = raw.split_once('.').ok_or_else(bad)?;
    let id = Uuid::try_parse(id).map_err(|_| bad())?;
    let key = match (sort, key.split_at_checked(1).ok_or_else(bad)?) {
        (RecordSort::CreatedAt | RecordSort::PeriodEnd, ("t", micros)) => SortKey::Time(
            tally_domain::time::from_micros(micros.parse().map_err(|_| bad())?).map_err(|_| bad())?,
        ),
        (RecordSort::CurrentUsage, ("i", n)) => SortKey::Int(n.parse().map_err(|_| bad())?),
        (RecordSort::TenantId | RecordSort::MetricCode, ("s", hex)) => {
            SortKey::Text(from_hex(hex).ok_or_else(bad)?)
        }
        _ => return Err(bad()),
    };
    Ok(RecordCursor { key, id })
}

/// Encodes an events cursor: `<created_at micros>.<id>`.
pub fn encode_event_cursor(at: Timestamp, id: Uuid) -> String {
    format!("{}.{}", tally_domain::time::to_micros(at), id.simple())
}

/// Decodes an events cursor.
pub fn decode_event_cursor(raw: &str) -> Result<(Timestamp, Uuid), DomainError> {
    let bad = || invalid("after", "is not a cursor of this list");
    let (micros, id) = raw.split_once('.').ok_or_else(bad)?;
    let at = tally_domain::time::from_micros(micros.parse().map_err(|_| bad())?).map_err(|_| bad())?;
    Ok((at, Uuid::try_parse(id).map_err(|_| bad())?))
}

/// A link to `base` with the given non-empty query pairs.
pub fn link(base: &str, pairs: &[(&str, Option<&str>)]) -> String {
    let mut out = base.to_owned();
    let mut sep = '?';
    for (k, v) in pairs {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.push(sep);
            out.push_str(k);
            out.push('=');
            out.push_str(&urlencode(v));
            sep = '&';
        }
    }
    out
}

/// The quick windows offered for a date filter: label, first day, last day (inclusive).
pub fn quick_windows(now: Timestamp) -> Vec<(&'static str, String, String)> {
    let today = now.date_naive();
    let fmt = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
    let month_start = today.with_day(1).unwrap_or(today);
    let year_start = today.with_ordinal(1).unwrap_or(today);
    vec![
        ("Today", fmt(today), fmt(today)),
        ("Past 7 days", fmt(today - Duration::days(6)), fmt(today)),
        ("This month", fmt(month_start), fmt(today)),
        ("This year", fmt(year_start), fmt(today)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_cursors_round_trip_for_every_sort() {
        let id = Uuid::now_v7();
        let t = tally_domain::time::parse_rfc3339("2026-11-29T10:00:00.123456Z").expect("t");
        for (sort, key) in [
            (RecordSort::CreatedAt, SortKey::Time(t)),
            (RecordSort::CurrentUsage, SortKey::Int(-42)),
            (RecordSort::TenantId, SortKey::Text("acme.eu_1".to_owned())),
        ] {
            let c = RecordCursor { key, id };
            assert_eq!(decode_record_cursor(&encode_record_cursor(&c), sort).expect("decodes"), c);
        }
    }

    #[test]
    fn a_cursor_of_another_sort_is_refused() {
        let c = RecordCursor { key: SortKey::Int(3), id: Uuid::now_v7() };
        assert!(decode_record_cursor(&encode_record_cursor(&c), RecordSort::TenantId).is_err());
        assert!(decode_record_cursor("garbage", RecordSort::CreatedAt).is_err());
        assert!(decode_event_cursor("1.2").is_err());
    }

    #[test]
    fn a_day_window_includes_its_last_day() {
        let r = day_range("f", &Some("2026-11-01".into()), "t", &Some("2026-11-01".into())).expect("range");
        assert_eq!(r.to.expect("to") - r.from.expect("from"), Duration::days(1));
        assert!(day_range("f", &Some("2026-11-02".into()), "t", &Some("2026-11-01".into())).is_err());
        assert!(day_range("f", &Some("11/02/2026".into()), "t", &None).is_err());
    }

    #[test]
    fn links_skip_empty_values_and_encode_the_rest() {
        assert_eq!(
            link("/admin/records", &[("q", Some("a&b")), ("sort", None), ("dir", Some(""))]),
            "/admin/records?q=a%26b"
        );
    }
}
