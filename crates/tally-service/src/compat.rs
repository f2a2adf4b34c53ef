//! The use cases behind the OpenMeter and Lago compatibility routes: ingest several events
//! validated whole first, an entitlement's value, a meter query summed from the event trail,
//! and a tenant's current usage. The wire shapes are tally-http's; this is the logic.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{Datelike, Duration, TimeZone, Utc};
use tally_domain::limits::PAGE_LEN_MAX;
use tally_domain::{
    DomainError, LimitEnforcement, MetricCode, MetricKind, PeriodKind, TenantId, Timestamp, UsageError,
    UsageOutcome, UsageRequest,
};
use tally_store::{EventCursor, EventQuery, Store, WriteOp};

use crate::{ServiceError, Tally};

/// Events one meter query reads at most; a larger range is refused (narrow it or add
/// `subject`), so that a query cannot scan the whole trail.
pub const METER_QUERY_EVENTS_MAX: usize = 1_000_000;
/// Windows one meter query answers at most.
pub const METER_QUERY_WINDOWS_MAX: usize = 10_000;
/// Tenants a meter query without `subject` reads at most.
pub const METER_QUERY_SUBJECTS_MAX: usize = 10_000;

/// The window of a meter query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowSize {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
    /// One UTC calendar month.
    Month,
}

impl std::str::FromStr for WindowSize {
    type Err = DomainError;
    fn from_str(raw: &str) -> Result<WindowSize, DomainError> {
        match raw {
            "MINUTE" => Ok(WindowSize::Minute),
            "HOUR" => Ok(WindowSize::Hour),
            "DAY" => Ok(WindowSize::Day),
            "MONTH" => Ok(WindowSize::Month),
            _ => Err(DomainError::invalid("windowSize", "must be MINUTE, HOUR, DAY or MONTH")),
        }
    }
}

impl WindowSize {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowSize::Minute => "MINUTE",
            WindowSize::Hour => "HOUR",
            WindowSize::Day => "DAY",
            WindowSize::Month => "MONTH",
        }
    }

    /// The start of the window holding `t` (UTC).
    pub fn floor(self, t: Timestamp) -> Timestamp {
        let ts = t.timestamp();
        let secs = match self {
            WindowSize::Minute => ts - ts.rem_euclid(60),
            WindowSize::Hour => ts - ts.rem_euclid(3_600),
            WindowSize::Day => ts - ts.rem_euclid(86_400),
            WindowSize::Month => {
                return Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0).single().unwrap_or(t);
            }
        };
        Utc.timestamp_opt(secs, 0).single().unwrap_or(t)
    }

    /// The start of the window after the one starting at `start`.
    pub fn next(self, start: Timestamp) -> Timestamp {
        match self {
            WindowSize::Minute => start + Duration::minutes(1),
            WindowSize::Hour => start + Duration::hours(1),
            WindowSize::Day => start + Duration::days(1),
            WindowSize::Month => start.checked_add_months(chrono::Months::new(1)).unwrap_or(start),
        }
    }
}

/// One row of a meter query: what `subject` used in `[window_start, window_end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterRow {
    /// The tenant.
    pub subject: TenantId,
    /// Start of the window.
    pub window_start: Timestamp,
    /// End of the window.
    pub window_end: Timestamp,
    /// The sum of the amounts of its events.
    pub value: i64,
}

/// An entitlement's value, OpenMeter's way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntitlementValue {
    /// False only when a HARD limit has no room left.
    pub has_access: bool,
    /// What is left: `max(limit - usage - reserved, 0)`; `None` when unlimited.
    pub balance: Option<i64>,
    /// Usage in the period holding the instant asked about.
    pub usage: i64,
    /// `max(usage - limit, 0)`.
    pub overage: i64,
}

/// One metric of a tenant's current usage, Lago's way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeUsage {
    /// The metric.
    pub metric_code: MetricCode,
    /// Its name in the catalog (the code when undeclared).
    pub name: String,
    /// Usage in the current period.
    pub units: i64,
    /// Events in the current period.
    pub events_count: u64,
}

/// A tenant's current usage, Lago's way: the monthly billing period of its subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentUsage {
    /// Start of the billing period.
    pub from: Timestamp,
    /// End of the billing period.
    pub to: Timestamp,
    /// One entry per metric of the plan, by code.
    pub charges: Vec<ChargeUsage>,
}

impl<S: Store> Tally<S> {
    /// The catalog's `value_property` and kind of `metric` (a counter without one when
    /// undeclared).
    pub async fn ingest_shape(
        &self,
        metric: &MetricCode,
    ) -> Result<(Option<String>, MetricKind), ServiceError> {
        Ok(match self.store.find_metric(metric).await? {
            Some(m) => (m.spec.value_property, m.spec.kind),
            None => (None, MetricKind::Counter),
        })
    }

    /// Records events of any tenants, validated whole first: an unknown tenant, a tenant
    /// without a subscription, a metric without a limit or a timestamp out of the window fails
    /// the whole request before anything is applied. Then all are applied in order in one
    /// transaction, each on its own: the answers say which were refused; except that a
    /// closed period refuses the whole request, in the same transaction, and then nothing
    /// is applied (every answer is that `PeriodClosed`).
    pub async fn ingest(
        &self,
        requests: Vec<UsageRequest>,
    ) -> Result<Vec<Result<UsageOutcome, ServiceError>>, ServiceError> {
        let now = self.now();
        let ctx = tally_store::Ctx::new(now, self.config().max_event_age);
        // A replay answers the original whatever changed since (API.md, "Order of checks"):
        // events already stored under their keys skip the validation.
        let keys: Vec<(TenantId, tally_domain::IdempotencyKey)> = requests
            .iter()
            .filter_map(|r| r.idempotency_key.clone().map(|k| (r.tenant_id.clone(), k)))
            .collect();
        let stored: HashSet<(TenantId, tally_domain::IdempotencyKey)> = self
            .store
            .find_events_by_keys(&keys)
            .await?
            .into_iter()
            .filter_map(|e| e.event.idempotency_key.map(|k| (e.event.tenant_id, k)))
            .collect();
        let mut seen: HashMap<TenantId, tally_domain::Entitlement> = HashMap::new();
        for (idx, r) in requests.iter().enumerate() {
            if let Some(key) = &r.idempotency_key
                && stored.contains(&(r.tenant_id.clone(), key.clone()))
            {
                continue;
            }
            let entitlement = match seen.get(&r.tenant_id) {
                Some(e) => e.clone(),
                None => {
                    let e = self.entitlement(&r.tenant_id).await?;
                    seen.insert(r.tenant_id.clone(), e.clone());
                    e
                }
            };
            if entitlement.limit_for(&r.metric_code).is_none() {
                return Err(UsageError::QuotaNotFound { metric: r.metric_code.clone() }.into());
            }
            ctx.check_window(r.timestamp).map_err(|e| match e {
                UsageError::EventOutOfWindow { .. } => ServiceError::Usage(e),
                other => ServiceError::Invalid(DomainError::invalid("events", format!("[{idx}]: {other}"))),
            })?;
        }
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        // A closed period refuses the whole request: written whole or not at all.
        let ops = requests.into_iter().map(WriteOp::Usage).collect();
        let applied = self.store.write_whole(ops, ctx).await?;
        Ok(applied
            .into_iter()
            .map(|a| match a.into_usage() {
                Some(r) => r.map_err(ServiceError::from),
                None => Err(ServiceError::Internal("store answered a usage with another answer".to_owned())),
            })
            .collect())
    }

    /// The value of the tenant's entitlement to `metric` at `at` (now when `None`): usage in
    /// the period holding `at`, and what is left of the limit.
    pub async fn entitlement_value(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        at: Option<Timestamp>,
    ) -> Result<EntitlementValue, ServiceError> {
        let entitlement = self.entitlement(tenant).await?;
        let limit = entitlement
            .limit_for(metric)
            .ok_or_else(|| ServiceError::from(UsageError::QuotaNotFound { metric: metric.clone() }))?;
        let now = self.now();
        let at = at.unwrap_or(now);
        let period =
            limit.period.containing(at, entitlement.subscription.anchor).map_err(ServiceError::from)?;
        let usage = match self.store.get_for_period(tenant, metric, period.start()).await {
            Ok(r) => r.current_usage,
            Err(tally_store::StoreError::NotFound(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        // Open reservations hold quota now, in the current period only.
        let reserved = if period.contains(now) {
            self.store
                .reserved_by_period(tenant, now)
                .await?
                .iter()
                .filter(|(m, start, _)| m == metric && *start == period.start())
                .map(|(_, _, held)| held)
                .sum()
        } else {
            0
        };
        let balance = limit.limit.map(|l| l.saturating_sub(usage).saturating_sub(reserved).max(0));
        let overage = limit.limit.map_or(0, |l| usage.saturating_sub(l).max(0));
        let has_access = !(limit.enforcement == LimitEnforcement::Hard && balance == Some(0));
        Ok(EntitlementValue { has_access, balance, usage, overage })
    }

    /// Sums `metric`'s events of each of `subjects` (every tenant when empty) with
    /// `from <= timestamp < to`, per window (one window spanning the range when `window` is
    /// `None`). Rows come by subject, then window; windows without events are left out.
    pub async fn meter_query(
        &self,
        metric: &MetricCode,
        subjects: &[TenantId],
        from: Timestamp,
        to: Timestamp,
        window: Option<WindowSize>,
    ) -> Result<Vec<MeterRow>, ServiceError> {
        if from >= to {
            return Err(DomainError::invalid("from", "must be before to").into());
        }
        let subjects: Vec<TenantId> =
            if subjects.is_empty() { self.all_tenant_ids().await? } else { subjects.to_vec() };
        let mut rows = Vec::new();
        let mut read = 0usize;
        for subject in &subjects {
            let mut sums: BTreeMap<Timestamp, i64> = BTreeMap::new();
            self.each_event_page(subject, metric, Some((from, to)), |page| {
                read += page.len();
                if read > METER_QUERY_EVENTS_MAX {
                    return Err(DomainError::invalid(
                        "from",
                        format!("the range holds more than {METER_QUERY_EVENTS_MAX} events; narrow it or name a subject"),
                    )
                    .into());
                }
                for e in page {
                    let start = window.map_or(from, |w| w.floor(e.event.timestamp).max(from));
                    let sum = sums.entry(start).or_insert(0);
                    *sum = sum.saturating_add(e.event.amount);
                }
                Ok(())
            })
            .await?;
            if sums.len() > METER_QUERY_WINDOWS_MAX {
                return Err(DomainError::invalid(
                    "windowSize",
                    format!("the range holds more than {METER_QUERY_WINDOWS_MAX} windows; use a larger one"),
                )
                .into());
            }
            for (start, value) in sums {
                let end = window.map_or(to, |w| w.next(w.floor(start)).min(to));
                rows.push(MeterRow { subject: subject.clone(), window_start: start, window_end: end, value });
            }
        }
        Ok(rows)
    }

    async fn all_tenant_ids(&self) -> Result<Vec<TenantId>, ServiceError> {
        let mut out = Vec::new();
        let mut after: Option<TenantId> = None;
        loop {
            let page = self.store.list_tenants(after.as_ref(), PAGE_LEN_MAX).await?;
            let full = page.len() == PAGE_LEN_MAX as usize;
            after = page.last().map(|t| t.tenant_id.clone());
            out.extend(page.into_iter().map(|t| t.tenant_id));
            if out.len() > METER_QUERY_SUBJECTS_MAX {
                return Err(DomainError::invalid(
                    "subject",
                    format!("more than {METER_QUERY_SUBJECTS_MAX} tenants: name the subjects to query"),
                )
                .into());
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// The tenant's usage of every metric of its plan in the monthly billing period of its
    /// subscription that holds now.
    pub async fn current_usage(&self, tenant: &TenantId) -> Result<CurrentUsage, ServiceError> {
        let entitlement = self.entitlement(tenant).await?;
        let now = self.now();
        let billing =
            PeriodKind::Month.containing(now, entitlement.subscription.anchor).map_err(ServiceError::from)?;
        let usage = self.usage(tenant).await?;
        // Names from the catalog, read once; an undeclared metric is named by its code.
        let names: HashMap<MetricCode, String> =
            self.store.list_metrics().await?.into_iter().map(|m| (m.code, m.spec.name.to_string())).collect();
        let mut charges = Vec::with_capacity(usage.metrics.len());
        for m in &usage.metrics {
            let name = names.get(&m.metric_code).cloned().unwrap_or_else(|| m.metric_code.to_string());
            let events_count = self.count_events(tenant, &m.metric_code, m.period.bounds()).await?;
            charges.push(ChargeUsage {
                metric_code: m.metric_code.clone(),
                name,
                units: m.current_usage,
                events_count,
            });
        }
        Ok(CurrentUsage { from: billing.start(), to: billing.end(), charges })
    }

    async fn count_events(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        bounds: Option<(Timestamp, Timestamp)>,
    ) -> Result<u64, ServiceError> {
        let mut count = 0u64;
        self.each_event_page(tenant, metric, bounds, |page| {
            count += page.len() as u64;
            Ok(())
        })
        .await?;
        Ok(count)
    }

    /// Calls `visit` with each page of the tenant's events of `metric` with
    /// `from <= timestamp < to` (all of them when `bounds` is `None`), newest first.
    async fn each_event_page(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        bounds: Option<(Timestamp, Timestamp)>,
        mut visit: impl FnMut(&[tally_domain::RecordedEvent]) -> Result<(), ServiceError>,
    ) -> Result<(), ServiceError> {
        let mut after: Option<EventCursor> = None;
        loop {
            let query = EventQuery {
                metric_code: Some(metric.clone()),
                from: bounds.map(|b| b.0),
                to: bounds.map(|b| b.1),
                limit: PAGE_LEN_MAX,
                after,
                // Corrections are part of the usage a meter sums.
                kind: None,
            };
            let page = self.store.get_events_for_metric(tenant, &query).await?;
            visit(&page)?;
            match page.last() {
                Some(last) if page.len() == PAGE_LEN_MAX as usize => {
                    after = Some(EventCursor { timestamp: last.event.timestamp, id: last.event.id });
                }
                _ => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(raw: &str) -> Timestamp {
        tally_domain::time::parse_rfc3339(raw).expect("valid")
    }

    #[test]
    fn windows_floor_and_step_in_utc() {
        let at = t("2026-11-29T10:17:42Z");
        assert_eq!(WindowSize::Minute.floor(at), t("2026-11-29T10:17:00Z"));
        assert_eq!(WindowSize::Hour.floor(at), t("2026-11-29T10:00:00Z"));
        assert_eq!(WindowSize::Day.floor(at), t("2026-11-29T00:00:00Z"));
        assert_eq!(WindowSize::Month.floor(at), t("2026-11-01T00:00:00Z"));
        assert_eq!(WindowSize::Month.next(t("2026-12-01T00:00:00Z")), t("2027-01-01T00:00:00Z"));
        assert_eq!("DAY".parse::<WindowSize>().ok(), Some(WindowSize::Day));
        assert!("day".parse::<WindowSize>().is_err());
    }
}
