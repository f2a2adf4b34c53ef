//! Corrections and closed periods: an operator's signed repair of a counter, closing a
//! tenant's periods up to a watermark (by hand, or `close_after` a period's end), reopening
//! one, and the periods list a billing system reads.

use std::collections::HashMap;
use std::time::Duration;

use tally_domain::limits::AUTO_CLOSE_INTERVAL_MS;
use tally_domain::{
    CorrectionRequest, DomainError, LimitEnforcement, MetricCode, Period, PeriodKind, Reason, RecordClosing,
    TenantId, Timestamp, UsageOutcome, Watermark,
};
use tally_store::{
    Answer, CloseMode, CloseOutcome, EntitlementLookup, PeriodCursor, PeriodQuery, PeriodRecord, Store,
    StoreError, WriteOp,
};
use uuid::Uuid;

use crate::usage::check_page_limit;
use crate::{ServiceError, Tally};

/// Subscribers of one plan the automatic close visits per run.
pub const AUTO_CLOSE_SUBSCRIBERS_MAX: u32 = 100_000;

/// One period as billing reads it: the record, its closing state, and the limit the
/// tenant's plan gives the metric now (`None` when the plan no longer has the metric).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodView {
    /// The metric.
    pub metric_code: MetricCode,
    /// The period's kind under the current plan.
    pub period_kind: Option<PeriodKind>,
    /// The period.
    pub period: Period,
    /// Its counter.
    pub current_usage: i64,
    /// The limit under the current plan.
    pub limit: Option<i64>,
    /// The enforcement under the current plan.
    pub enforcement: Option<LimitEnforcement>,
    /// When it was closed, while it is.
    pub closed_at: Option<Timestamp>,
    /// When it was last reopened.
    pub reopened_at: Option<Timestamp>,
}

/// A page of periods and where the next one starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodPage {
    /// Newest first by period start, then metric code descending.
    pub periods: Vec<PeriodView>,
    /// Pass back to get the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// A filter over a tenant's periods, as a client gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeriodFilter {
    /// Only closed (`true`) or open (`false`) periods.
    pub closed: Option<bool>,
    /// Only this metric.
    pub metric_code: Option<MetricCode>,
    /// `period_start >= from`.
    pub from: Option<Timestamp>,
    /// `period_start < to`.
    pub to: Option<Timestamp>,
    /// Page length, `1..=PAGE_LEN_MAX`.
    pub limit: u32,
    /// An opaque cursor from a previous page.
    pub cursor: Option<String>,
}

/// Encodes a period cursor as `<period_start micros>_<metric_code>`.
pub fn encode_period_cursor(c: &PeriodCursor) -> String {
    format!("{}_{}", tally_domain::time::to_micros(c.period_start), c.metric_code)
}

/// Decodes `encode_period_cursor`'s output.
pub fn decode_period_cursor(raw: &str) -> Result<PeriodCursor, DomainError> {
    let bad = || DomainError::invalid("cursor", "is not a cursor this server gave out");
    let (micros, metric) = raw.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    Ok(PeriodCursor {
        period_start: tally_domain::time::from_micros(micros).map_err(|_| bad())?,
        metric_code: MetricCode::parse(metric).map_err(|_| bad())?,
    })
}

/// The latest period end at or before `at` among the counted (not gauge) limits of `ents`:
/// the watermark `close_after` moves a subscriber to. `None` when it has no counted limit.
pub fn latest_period_end(
    limits: impl Iterator<Item = (PeriodKind, Timestamp)>,
    at: Timestamp,
) -> Result<Option<Timestamp>, DomainError> {
    let mut latest: Option<Timestamp> = None;
    for (kind, anchor) in limits {
        if kind == PeriodKind::None {
            continue;
        }
        // The period containing `at` starts where the latest period ending by `at` ends.
        let end = kind.containing(at, anchor)?.start();
        latest = Some(latest.map_or(end, |l| l.max(end)));
    }
    Ok(latest)
}

impl<S: Store> Tally<S> {
    /// Corrects the counter of the period containing the request's timestamp by its signed
    /// amount: a replay of its key answers the original; never refused by a limit; refused
    /// below zero, on a gauge and in a closed period.
    pub async fn correct(&self, req: CorrectionRequest) -> Result<UsageOutcome, ServiceError> {
        let answers = self.store().write(vec![WriteOp::Correct(req)], self.write_ctx()).await?;
        match answers.into_iter().next().and_then(Answer::into_usage) {
            Some(result) => result.map_err(ServiceError::from),
            None => Err(ServiceError::Internal("store answered no correction".to_owned())),
        }
    }

    /// Closes every period of `tenant` ending at or before `before` (at most now), by hand.
    pub async fn close_periods(
        &self,
        tenant: &TenantId,
        before: Timestamp,
        key_id: Option<Uuid>,
    ) -> Result<CloseOutcome, ServiceError> {
        let now = self.now();
        if before > now {
            return Err(DomainError::invalid(
                "before",
                format!(
                    "must not be later than now ({}), got {}",
                    tally_domain::time::format_rfc3339(now),
                    tally_domain::time::format_rfc3339(before)
                ),
            )
            .into());
        }
        Ok(self.store().close_periods(tenant, before, CloseMode::Explicit, now, key_id).await?)
    }

    /// The period of `metric` starting at `start`: from the tenant's plan, or from a record
    /// that exists for it when the plan no longer says.
    async fn period_starting(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        start: Timestamp,
    ) -> Result<Period, ServiceError> {
        let not_found = || {
            ServiceError::NotFound(format!(
                "period of {metric} starting {}",
                tally_domain::time::format_rfc3339(start)
            ))
        };
        match self.store().get_for_period(tenant, metric, start).await {
            Ok(record) => return Ok(record.period()?),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let lookup = self.store().config_cache().entitlement(self.store(), tenant).await?;
        let EntitlementLookup::Found(e) = &*lookup else {
            self.require_tenant(tenant).await?;
            return Err(not_found());
        };
        let limit = e.limit_for(metric).ok_or_else(not_found)?;
        let period = limit.period.containing(start, e.subscription.anchor)?;
        if period.start() != start || limit.period == PeriodKind::None {
            return Err(not_found());
        }
        Ok(period)
    }

    /// Reopens one closed period; `Conflict` when it is not closed.
    pub async fn reopen_period(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period_start: Timestamp,
        reason: &Reason,
        key_id: Option<Uuid>,
    ) -> Result<PeriodView, ServiceError> {
        self.require_tenant(tenant).await?;
        let period = self.period_starting(tenant, metric, period_start).await?;
        let reopened = self.store().reopen_period(tenant, metric, period, reason, self.now(), key_id).await?;
        Ok(self.views(tenant, vec![reopened]).await?.remove(0))
    }

    /// A page of the tenant's periods, newest first.
    pub async fn periods(
        &self,
        tenant: &TenantId,
        filter: &PeriodFilter,
    ) -> Result<PeriodPage, ServiceError> {
        let limit = check_page_limit(filter.limit)?;
        let after = filter.cursor.as_deref().map(decode_period_cursor).transpose()?;
        self.require_tenant(tenant).await?;
        let query = PeriodQuery {
            closed: filter.closed,
            metric_code: filter.metric_code.clone(),
            from: filter.from,
            to: filter.to,
            limit: limit + 1,
            after,
        };
        let mut found = self.store().list_periods(tenant, &query).await?;
        let next_cursor = if found.len() > limit as usize {
            found.truncate(limit as usize);
            found.last().map(|p| {
                encode_period_cursor(&PeriodCursor {
                    period_start: p.record.period_start,
                    metric_code: p.record.metric_code.clone(),
                })
            })
        } else {
            None
        };
        Ok(PeriodPage { periods: self.views(tenant, found).await?, next_cursor })
    }

    /// The records with the limits the tenant's plan gives them now.
    pub async fn views(
        &self,
        tenant: &TenantId,
        records: Vec<PeriodRecord>,
    ) -> Result<Vec<PeriodView>, ServiceError> {
        let lookup = self.store().config_cache().entitlement(self.store(), tenant).await?;
        let entitlement = match &*lookup {
            EntitlementLookup::Found(e) => Some(e),
            _ => None,
        };
        Ok(records
            .into_iter()
            .map(|p| {
                let limit = entitlement.and_then(|e| e.limit_for(&p.record.metric_code));
                PeriodView {
                    period: Period::new(p.record.period_start, p.record.period_end)
                        .unwrap_or_else(|_| Period::unbounded()),
                    metric_code: p.record.metric_code,
                    period_kind: limit.map(|l| l.period),
                    current_usage: p.record.current_usage,
                    limit: limit.and_then(|l| l.limit),
                    enforcement: limit.map(|l| l.enforcement),
                    closed_at: p.closed_at,
                    reopened_at: p.reopened_at,
                }
            })
            .collect())
    }

    /// When `period` of `metric` was closed, if it is closed now: under the tenant's
    /// watermark and not reopened since, or marked closed on its record. Watermarks read are
    /// kept in `marks`, one read per tenant. Outside a write transaction, so a close may
    /// commit right after; the write path decides again under the records' locks.
    pub async fn closed_at(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period: Period,
        marks: &mut HashMap<TenantId, Option<Watermark>>,
    ) -> Result<Option<Timestamp>, ServiceError> {
        let mark = match marks.get(tenant) {
            Some(m) => *m,
            None => {
                // A tenant not created yet (an import's dry run) has closed nothing.
                let m = match self.store().find_watermark(tenant).await {
                    Ok(m) => m,
                    Err(StoreError::NotFound(_)) => None,
                    Err(e) => return Err(e.into()),
                };
                marks.insert(tenant.clone(), m);
                m
            }
        };
        if !mark.is_some_and(|m| m.covers(period)) {
            return Ok(None);
        }
        let query = PeriodQuery {
            metric_code: Some(metric.clone()),
            from: Some(period.start()),
            to: Some(period.start() + chrono::Duration::microseconds(1)),
            limit: 1,
            ..PeriodQuery::default()
        };
        let found = self.store().list_periods(tenant, &query).await?.into_iter().next();
        let closing = found
            .map(|p| RecordClosing { closed_at: p.closed_at, reopened_at: p.reopened_at })
            .unwrap_or_default();
        Ok(closing.closed_since(mark, period))
    }

    /// One run of the automatic close: every subscriber of a plan with `close_after` gets
    /// its watermark moved to the latest period end at least `close_after` ago (never back;
    /// reopened periods stay open). Safe on several instances at once: a close only moves a
    /// watermark forward, under the tenant's lock. Returns the records it closed.
    pub async fn auto_close_once(&self) -> Result<u64, ServiceError> {
        let now = self.now();
        let mut closed = 0;
        for plan in self.store().list_plans().await? {
            let Some(after) = plan.close_after else { continue };
            let at = now - chrono::Duration::seconds(after.seconds());
            for tenant in self.store().list_subscribers(&plan.code, AUTO_CLOSE_SUBSCRIBERS_MAX).await? {
                let lookup = self.store().config_cache().entitlement(self.store(), &tenant).await?;
                let EntitlementLookup::Found(e) = &*lookup else { continue };
                if e.subscription.plan_code != plan.code {
                    continue;
                }
                let anchor = e.subscription.anchor;
                let Some(target) = latest_period_end(e.limits.values().map(|l| (l.period, anchor)), at)?
                else {
                    continue;
                };
                let current = self.store().find_watermark(&tenant).await?;
                if current.is_some_and(|w| w.closed_before >= target) {
                    continue;
                }
                match self.store().close_periods(&tenant, target, CloseMode::Automatic, now, None).await {
                    Ok(outcome) => closed += outcome.closed,
                    // The tenant went away meanwhile.
                    Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(closed)
    }
}

/// Runs the automatic close every `interval` until the task is dropped. A failure is logged
/// and tried again at the next tick.
pub async fn close_forever<S: Store>(tally: Tally<S>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tally.auto_close_once().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(closed = n, "periods closed after their plan's close_after"),
            Err(e) => tracing::warn!(error = %e, "closing periods automatically failed"),
        }
    }
}

/// The automatic close's default interval.
pub const AUTO_CLOSE_INTERVAL: Duration = Duration::from_millis(AUTO_CLOSE_INTERVAL_MS);
