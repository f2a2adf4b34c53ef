//! Usage use cases: record (single and batch), check, current usage, history, events, reset.

use tally_domain::limits::{EVENT_BATCH_LEN_MAX, PAGE_LEN_MAX};
use tally_domain::{
    Change, DomainError, LimitEnforcement, MetricCode, Period, PeriodKind, PlanCode, RecordedEvent, TenantId,
    Timestamp, UsageError, UsageOutcome, UsageRecord, UsageRequest, decide_with_reserved,
};
use tally_store::{
    Answer, EntitlementLookup, EventCursor, EventQuery, RecordKey, Store, StoreError, WriteOp,
};
use uuid::Uuid;

use crate::{ServiceError, Tally};

/// The answer of `check`: what recording would do, without recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Whether recording the amount now would be accepted.
    pub allowed: bool,
    /// The metric.
    pub metric_code: MetricCode,
    /// Usage before the hypothetical amount.
    pub current_usage: i64,
    /// What open reservations hold in the period.
    pub reserved: i64,
    /// The limit; `None` is unlimited.
    pub limit: Option<i64>,
    /// `max(limit - current_usage - reserved, 0)`.
    pub remaining: Option<i64>,
    /// The enforcement.
    pub enforcement: LimitEnforcement,
    /// The current period.
    pub period: Period,
}

/// One metric's current period, for `usage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricUsage {
    /// The metric.
    pub metric_code: MetricCode,
    /// Usage in the current period (0 when nothing was recorded).
    pub current_usage: i64,
    /// What open reservations hold in the period.
    pub reserved: i64,
    /// The limit.
    pub limit: Option<i64>,
    /// `max(limit - current_usage - reserved, 0)`.
    pub remaining: Option<i64>,
    /// The enforcement.
    pub enforcement: LimitEnforcement,
    /// The period kind.
    pub period_kind: PeriodKind,
    /// The current period.
    pub period: Period,
    /// `current_usage > limit`.
    pub exceeded: bool,
}

/// A tenant's current usage of every metric of its plan and overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantUsage {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Its plan.
    pub plan_code: PlanCode,
    /// One entry per metric, by metric code.
    pub metrics: Vec<MetricUsage>,
}

/// A page of events and where the next one starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventPage {
    /// Newest first.
    pub events: Vec<RecordedEvent>,
    /// Pass back to get the next page; `None` at the end.
    pub next_cursor: Option<String>,
}

/// A filter over a tenant's events, as a client gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this metric.
    pub metric_code: Option<MetricCode>,
    /// `timestamp >= from`.
    pub from: Option<Timestamp>,
    /// `timestamp < to`.
    pub to: Option<Timestamp>,
    /// Page length, `1..=PAGE_LEN_MAX`.
    pub limit: u32,
    /// An opaque cursor from a previous page.
    pub cursor: Option<String>,
    /// Only usage or only corrections.
    pub kind: Option<tally_domain::EventKind>,
}

/// Encodes an event cursor as `<timestamp micros>_<uuid>`.
pub fn encode_event_cursor(c: &EventCursor) -> String {
    format!("{}_{}", tally_domain::time::to_micros(c.timestamp), c.id.simple())
}

/// Decodes a cursor made by `encode_event_cursor`.
pub fn decode_event_cursor(raw: &str) -> Result<EventCursor, DomainError> {
    let bad = || DomainError::invalid("cursor", "is not a cursor this server issued");
    let (micros, id) = raw.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let id = Uuid::try_parse(id).map_err(|_| bad())?;
    Ok(EventCursor { timestamp: tally_domain::time::from_micros(micros).map_err(|_| bad())?, id })
}

/// Checks a page length.
pub fn check_page_limit(limit: u32) -> Result<u32, DomainError> {
    if limit == 0 || limit > PAGE_LEN_MAX {
        return Err(DomainError::invalid(
            "limit",
            format!("must be between 1 and {PAGE_LEN_MAX}, got {limit}"),
        ));
    }
    Ok(limit)
}

impl<S: Store> Tally<S> {
    /// Records one usage event: a replay of its idempotency key answers the original, then
    /// the event window, the subscription and the limit decide (in the store's writer).
    pub async fn record(&self, req: UsageRequest) -> Result<UsageOutcome, ServiceError> {
        let answers = self.store.write(vec![WriteOp::Usage(req)], self.write_ctx()).await?;
        match answers.into_iter().next().and_then(Answer::into_usage) {
            Some(result) => result.map_err(ServiceError::from),
            None => Err(ServiceError::Internal("store answered no usage".to_owned())),
        }
    }

    /// Records up to `EVENT_BATCH_LEN_MAX` events of `tenant` in order, each on its own.
    /// Items that failed validation before reaching here are passed as `Err` and answered
    /// in place.
    pub async fn record_batch(
        &self,
        tenant: &TenantId,
        items: Vec<Result<UsageRequest, DomainError>>,
    ) -> Result<Vec<Result<UsageOutcome, ServiceError>>, ServiceError> {
        if items.len() > EVENT_BATCH_LEN_MAX {
            return Err(ServiceError::Invalid(DomainError::invalid(
                "events",
                format!("at most {EVENT_BATCH_LEN_MAX} events per batch, got {}", items.len()),
            )));
        }
        // An unknown tenant fails the whole request, as it does for a single event.
        self.require_tenant(tenant).await?;
        let mut answers: Vec<Option<Result<UsageOutcome, ServiceError>>> = Vec::with_capacity(items.len());
        let mut valid = Vec::with_capacity(items.len());
        for item in items {
            match item.map_err(ServiceError::from).and_then(|r| {
                if &r.tenant_id != tenant {
                    return Err(DomainError::invalid(
                        "tenant_id",
                        "every event of a batch belongs to its tenant",
                    )
                    .into());
                }
                Ok(WriteOp::Usage(r))
            }) {
                Ok(r) => {
                    valid.push(r);
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let mut applied = if valid.is_empty() {
            Vec::new().into_iter()
        } else {
            self.store.write(valid, self.write_ctx()).await?.into_iter()
        };
        Ok(answers
            .into_iter()
            .map(|a| match a {
                Some(done) => done,
                None => match applied.next().and_then(Answer::into_usage) {
                    Some(r) => r.map_err(ServiceError::from),
                    None => Err(ServiceError::Internal("store answered too few usages".to_owned())),
                },
            })
            .collect())
    }

    /// What recording `change` of `metric` now would do. Changes nothing. A refusal (a
    /// HARD limit, or a gauge that would go below zero) answers `allowed: false`.
    pub async fn check(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        change: Change,
    ) -> Result<CheckOutcome, ServiceError> {
        let now = self.now();
        let entitlement = self.entitlement(tenant).await?;
        let limit = entitlement
            .limit_for(metric)
            .ok_or_else(|| UsageError::QuotaNotFound { metric: metric.clone() })?
            .clone();
        let period = limit.period.containing(now, entitlement.subscription.anchor)?;
        let key = RecordKey { tenant_id: tenant.clone(), metric_code: metric.clone(), period };
        let (current, reserved) = self.store.usage_now(&key, now).await?;
        let allowed = match decide_with_reserved(&limit, period, current, reserved, change) {
            Ok(_) => true,
            Err(UsageError::QuotaExceeded { .. } | UsageError::GaugeBelowZero { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        Ok(CheckOutcome {
            allowed,
            metric_code: metric.clone(),
            current_usage: current,
            reserved,
            limit: limit.limit,
            remaining: limit.remaining_with(current, reserved),
            enforcement: limit.enforcement,
            period,
        })
    }

    /// The current period of every metric on the tenant's plan and overrides.
    pub async fn usage(&self, tenant: &TenantId) -> Result<TenantUsage, ServiceError> {
        let now = self.now();
        let entitlement = self.entitlement(tenant).await?;
        let mut metrics = Vec::with_capacity(entitlement.limits.len());
        let held = self.reserved_in(tenant, now).await?;
        for (metric, limit) in &entitlement.limits {
            let period = limit.period.containing(now, entitlement.subscription.anchor)?;
            let current = self.usage_in(tenant, metric, period).await?;
            let reserved = held.get(&(metric.clone(), period.start())).copied().unwrap_or(0);
            metrics.push(MetricUsage {
                metric_code: metric.clone(),
                current_usage: current,
                reserved,
                limit: limit.limit,
                remaining: limit.remaining_with(current, reserved),
                enforcement: limit.enforcement,
                period_kind: limit.period,
                period,
                exceeded: limit.is_exceeded(current),
            });
        }
        Ok(TenantUsage {
            tenant_id: tenant.clone(),
            plan_code: entitlement.subscription.plan_code.clone(),
            metrics,
        })
    }

    /// Records of `metric` whose period starts in `[from, to)`, newest first.
    pub async fn history(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<UsageRecord>, ServiceError> {
        let limit = check_page_limit(limit)?;
        self.require_tenant(tenant).await?;
        Ok(self.store.list_by_tenant_and_metric(tenant, metric, from, to, limit).await?)
    }

    /// A page of the tenant's events, newest first.
    pub async fn events(&self, tenant: &TenantId, filter: &EventFilter) -> Result<EventPage, ServiceError> {
        let limit = check_page_limit(filter.limit)?;
        let after = filter.cursor.as_deref().map(decode_event_cursor).transpose()?;
        self.require_tenant(tenant).await?;
        let query = EventQuery {
            metric_code: filter.metric_code.clone(),
            from: filter.from,
            to: filter.to,
            limit: limit + 1,
            after,
            kind: filter.kind,
        };
        let mut events = self.store.get_events_for_metric(tenant, &query).await?;
        let next_cursor = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events
                .last()
                .map(|e| encode_event_cursor(&EventCursor { timestamp: e.event.timestamp, id: e.event.id }))
        } else {
            None
        };
        Ok(EventPage { events, next_cursor })
    }

    /// Sets the current period's counter of `metric` to zero, audited with `key_id`.
    pub async fn reset(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        key_id: Option<Uuid>,
    ) -> Result<UsageRecord, ServiceError> {
        let now = self.now();
        let entitlement = self.entitlement(tenant).await?;
        let limit = entitlement
            .limit_for(metric)
            .ok_or_else(|| UsageError::QuotaNotFound { metric: metric.clone() })?;
        let period = limit.period.containing(now, entitlement.subscription.anchor)?;
        Ok(self.store.reset_usage(tenant, metric, period, now, key_id).await?)
    }

    /// The tenant's entitlement, or the error that says why there is none.
    pub async fn entitlement(&self, tenant: &TenantId) -> Result<tally_domain::Entitlement, ServiceError> {
        let lookup = self.store.config_cache().entitlement(&self.store, tenant).await?;
        match &*lookup {
            EntitlementLookup::Found(e) => Ok(e.clone()),
            EntitlementLookup::NoSubscription => {
                Err(UsageError::NoSubscription { tenant: tenant.clone() }.into())
            }
            EntitlementLookup::TenantMissing => Err(ServiceError::NotFound(format!("tenant {tenant}"))),
        }
    }

    /// What the tenant's open reservations hold, by metric and period start.
    async fn reserved_in(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<std::collections::HashMap<(MetricCode, Timestamp), i64>, ServiceError> {
        Ok(self
            .store
            .reserved_by_period(tenant, now)
            .await?
            .into_iter()
            .map(|(metric, start, held)| ((metric, start), held))
            .collect())
    }

    async fn usage_in(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period: Period,
    ) -> Result<i64, ServiceError> {
        match self.store.get_for_period(tenant, metric, period.start()).await {
            Ok(r) => Ok(r.current_usage),
            Err(StoreError::NotFound(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn require_tenant(
        &self,
        tenant: &TenantId,
    ) -> Result<tally_domain::Tenant, ServiceError> {
        self.store
            .config_cache()
            .tenant(&self.store, tenant)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("tenant {tenant}")))
    }
}
