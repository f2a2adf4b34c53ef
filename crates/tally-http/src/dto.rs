//! Wire types: the JSON shapes of API.md, with plain fields. Requests become domain types
//! through the `to_*` methods at the handler; responses are built with `From`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_domain::time::{format_rfc3339, parse_rfc3339};
use tally_domain::{
    Amount, AuditEntry, Change, CloseAfter, CommitRequest, CorrectionRequest, DomainError, EventKind,
    IdempotencyKey, LimitEnforcement, Metadata, MetricCode, MetricSpec, Name, Period, PeriodKind, Plan,
    PlanSpec, QuotaLimit, Reason, RecordedEvent, Reservation, ReserveOutcome, ReserveRequest, Subscription,
    TenantId, Timestamp, Ttl, UsageOutcome, UsageRecord, UsageRequest,
};
use tally_service::admin::TenantView;
use tally_service::catalog::CatalogEntry;
use tally_service::closing::PeriodView;
use tally_service::usage::{CheckOutcome, MetricUsage, TenantUsage};
use utoipa::ToSchema;

// ---------------------------------------------------------------------------------------
// Requests

/// One usage event to record. Only `metric_code` and `amount` are required.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBody {
    /// `[a-z][a-z0-9_]*`, 1–64 chars.
    pub metric_code: String,
    /// 1..=1000000000000; a gauge (a metric limited with `period: none`) also takes
    /// -1000000000000..=-1. Required unless `set` is given.
    #[serde(default)]
    pub amount: Option<i64>,
    /// A gauge only: the level to set, 0..=1000000000000, instead of `amount`.
    #[serde(default)]
    pub set: Option<i64>,
    /// 1–255 visible ASCII chars; the same key and payload replays the original answer.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// A JSON object of at most 4096 bytes serialized.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// RFC 3339 with an offset; default now; at most 5 min ahead, `max_event_age` behind.
    #[serde(default)]
    pub timestamp: Option<String>,
}

impl UsageBody {
    /// The validated request for `tenant`.
    pub fn to_request(&self, tenant: &TenantId) -> Result<UsageRequest, DomainError> {
        Ok(UsageRequest {
            tenant_id: tenant.clone(),
            metric_code: MetricCode::parse(&self.metric_code)?,
            change: Change::from_wire(self.amount, self.set)?,
            idempotency_key: self.idempotency_key.as_deref().map(IdempotencyKey::parse).transpose()?,
            metadata: match &self.metadata {
                Some(v) => Metadata::new(v.clone())?,
                None => Metadata::default(),
            },
            timestamp: self.timestamp.as_deref().map(parse_rfc3339).transpose()?,
        })
    }
}

/// Up to 1000 events, applied in order, each on its own.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The events, as in `POST .../usage`.
    pub events: Vec<UsageBody>,
}

/// A hypothetical usage to check.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// The metric.
    pub metric_code: String,
    /// The amount that would be recorded (negative for a gauge's decrease). Required unless
    /// `set` is given.
    #[serde(default)]
    pub amount: Option<i64>,
    /// A gauge only: the level that would be set.
    #[serde(default)]
    pub set: Option<i64>,
}

impl CheckBody {
    /// The change that would be recorded.
    pub fn change(&self) -> Result<Change, DomainError> {
        Change::from_wire(self.amount, self.set)
    }
}

/// Quota to hold before work whose cost is known at its end.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    /// The metric.
    pub metric_code: String,
    /// How much to hold: 1..=1000000000000.
    pub amount: i64,
    /// How long to hold it: 1..=86400 seconds, default 300.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
    /// The same key and payload answers the original reservation, holding nothing more.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl ReserveBody {
    /// The validated request for `tenant`.
    pub fn to_request(&self, tenant: &TenantId) -> Result<ReserveRequest, DomainError> {
        Ok(ReserveRequest {
            tenant_id: tenant.clone(),
            metric_code: MetricCode::parse(&self.metric_code)?,
            amount: Amount::new(self.amount)?,
            ttl: Ttl::new(self.ttl_seconds)?,
            idempotency_key: self.idempotency_key.as_deref().map(IdempotencyKey::parse).transpose()?,
        })
    }
}

/// What a reservation used.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitBody {
    /// At most the amount reserved; default: all of it.
    #[serde(default)]
    pub amount: Option<i64>,
    /// The usage event's context: a JSON object of at most 4096 bytes serialized.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

impl CommitBody {
    /// The validated commit of `reservation_id`.
    pub fn to_request(
        &self,
        tenant: &TenantId,
        reservation_id: uuid::Uuid,
    ) -> Result<CommitRequest, DomainError> {
        Ok(CommitRequest {
            tenant_id: tenant.clone(),
            reservation_id,
            amount: self.amount.map(Amount::new).transpose()?,
            metadata: match &self.metadata {
                Some(v) => Metadata::new(v.clone())?,
                None => Metadata::default(),
            },
        })
    }
}

/// A metric's declaration in the catalog.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricBody {
    /// Display name; default: the metric code.
    #[serde(default)]
    pub name: Option<String>,
    /// Its unit (`seat`, `byte`), 1–32 bytes; `null` or absent for none.
    #[serde(default)]
    pub unit: Option<String>,
    /// `counter` (default) or `gauge`.
    #[serde(default)]
    pub kind: Option<String>,
    /// A JSON pointer (such as `/tokens`) into an event's `data` (OpenMeter) or `properties`
    /// (Lago) on the compatibility routes naming its amount; `null` or absent: each event
    /// counts 1.
    #[serde(default)]
    pub value_property: Option<String>,
}

impl MetricBody {
    /// The validated declaration of `code`.
    pub fn to_spec(&self, code: &MetricCode) -> Result<MetricSpec, DomainError> {
        Ok(MetricSpec {
            name: Name::parse(self.name.as_deref().unwrap_or(code.as_str()))?,
            unit: self.unit.as_deref().map(tally_domain::metric::check_unit).transpose()?,
            kind: self.kind.as_deref().map(str::parse).transpose()?.unwrap_or_default(),
            value_property: self
                .value_property
                .as_deref()
                .map(tally_domain::metric::check_value_property)
                .transpose()?,
        })
    }
}

/// One limit of a plan.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitBody {
    /// The metric.
    pub metric_code: String,
    /// Most usage per period; `null` or absent is unlimited.
    #[serde(default)]
    pub limit: Option<i64>,
    /// `hard`, `soft` or `none`.
    pub enforcement: String,
    /// `hour`, `day`, `week`, `month` (default), `year`, or `none` for a gauge.
    #[serde(default)]
    pub period: Option<String>,
}

fn to_limit(
    metric_code: &str,
    limit: Option<i64>,
    enforcement: &str,
    period: Option<&str>,
) -> Result<QuotaLimit, DomainError> {
    let enforcement: LimitEnforcement = enforcement.parse()?;
    let period: PeriodKind = period.unwrap_or("month").parse()?;
    QuotaLimit::new(MetricCode::parse(metric_code)?, limit, enforcement, period)
}

/// A plan's content.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    /// Display name.
    pub name: String,
    /// At most one limit per metric.
    #[serde(default)]
    pub limits: Vec<LimitBody>,
    /// Close every subscriber's periods this long after they end (`"3d"`: a number and a
    /// unit `s`, `m`, `h`, `d` or `w`, at most 366 days); null or absent: only by hand.
    #[serde(default)]
    pub close_after: Option<String>,
}

impl PlanBody {
    /// The validated plan.
    pub fn to_spec(&self) -> Result<PlanSpec, DomainError> {
        let limits = self
            .limits
            .iter()
            .map(|l| to_limit(&l.metric_code, l.limit, &l.enforcement, l.period.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let close_after = self.close_after.as_deref().map(CloseAfter::parse).transpose()?;
        Ok(PlanSpec::new(Name::parse(&self.name)?, limits)?.with_close_after(close_after))
    }
}

/// A signed repair of a counter, with its reason (admin).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrectionBody {
    /// `[a-z][a-z0-9_]*`, 1–64 chars; a counter (a gauge is corrected with `set`).
    pub metric_code: String,
    /// Signed, nonzero, -1000000000000..=1000000000000.
    pub amount: i64,
    /// Why, 1–500 characters.
    pub reason: String,
    /// The instant whose period moves (RFC 3339 with an offset); default now. Any period
    /// that is not closed, past ones included: not bound by `max_event_age`.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// 1–255 visible ASCII chars, in the usage key space.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl CorrectionBody {
    /// The validated correction for `tenant`, audited as `key_id`.
    pub fn to_request(
        &self,
        tenant: &TenantId,
        key_id: Option<uuid::Uuid>,
    ) -> Result<CorrectionRequest, DomainError> {
        Ok(CorrectionRequest {
            tenant_id: tenant.clone(),
            metric_code: MetricCode::parse(&self.metric_code)?,
            amount: CorrectionRequest::check_amount(self.amount)?,
            reason: Reason::parse(&self.reason)?,
            idempotency_key: self.idempotency_key.as_deref().map(IdempotencyKey::parse).transpose()?,
            timestamp: self.timestamp.as_deref().map(parse_rfc3339).transpose()?,
            key_id,
        })
    }
}

/// Close every period ending at or before `before` (admin).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseBody {
    /// RFC 3339, at most now.
    pub before: String,
}

/// Reopen one closed period (admin).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReopenBody {
    /// The metric.
    pub metric_code: String,
    /// The period's first instant, RFC 3339.
    pub period_start: String,
    /// Why, 1–500 characters.
    pub reason: String,
}

/// What a close did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CloseResponse {
    /// The tenant's watermark now: periods ending at or before it are closed.
    pub closed_before: String,
    /// Existing records newly closed.
    pub closed: u64,
}

/// One period, as a billing system reads it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PeriodResponse {
    pub metric_code: String,
    /// The period kind the tenant's plan gives the metric now; null when it has none.
    pub period: Option<String>,
    pub period_start: String,
    pub period_end: String,
    pub current_usage: i64,
    pub limit: Option<i64>,
    pub enforcement: Option<String>,
    /// When it was closed; null while it is open.
    pub closed_at: Option<String>,
    /// When it was last reopened.
    pub reopened_at: Option<String>,
}

impl From<&PeriodView> for PeriodResponse {
    fn from(p: &PeriodView) -> PeriodResponse {
        PeriodResponse {
            metric_code: p.metric_code.to_string(),
            period: p.period_kind.map(|k| k.as_str().to_owned()),
            period_start: format_rfc3339(p.period.start()),
            period_end: format_rfc3339(p.period.end()),
            current_usage: p.current_usage,
            limit: p.limit,
            enforcement: p.enforcement.map(|e| e.as_str().to_owned()),
            closed_at: p.closed_at.map(format_rfc3339),
            reopened_at: p.reopened_at.map(format_rfc3339),
        }
    }
}

/// A page of periods, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PeriodsResponse {
    pub periods: Vec<PeriodResponse>,
    pub next_cursor: Option<String>,
}

/// Query of `GET .../periods`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodsQuery {
    /// `true` or `false`.
    pub closed: Option<String>,
    /// Only this metric.
    pub metric_code: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<String>,
    /// From a previous page.
    pub cursor: Option<String>,
}

/// A tenant's attributes.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantBody {
    /// Display name; default: the tenant id on create, unchanged on replace.
    #[serde(default)]
    pub name: Option<String>,
}

/// A subscription.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    /// The plan.
    pub plan_code: String,
    /// RFC 3339; default: the current anchor, or now for a new subscription.
    #[serde(default)]
    pub anchor: Option<String>,
}

/// A tenant's own limit for one metric.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideBody {
    /// Most usage per period; `null` or absent is unlimited.
    #[serde(default)]
    pub limit: Option<i64>,
    /// `hard`, `soft` or `none`.
    pub enforcement: String,
    /// `hour`, `day`, `week`, `month` (default), `year`, or `none` for a gauge.
    #[serde(default)]
    pub period: Option<String>,
}

impl OverrideBody {
    /// The validated limit for `metric`.
    pub fn to_limit(&self, metric: &MetricCode) -> Result<QuotaLimit, DomainError> {
        to_limit(metric.as_str(), self.limit, &self.enforcement, self.period.as_deref())
    }
}

/// Query of `GET .../events`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this metric.
    pub metric_code: Option<String>,
    /// Inclusive.
    pub from: Option<String>,
    /// Exclusive.
    pub to: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<String>,
    /// From a previous page.
    pub cursor: Option<String>,
    /// `usage` or `correction`.
    pub kind: Option<String>,
}

/// Query of `GET .../history`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Records whose period starts at or after this.
    pub from: Option<String>,
    /// Records whose period starts before this.
    pub to: Option<String>,
    /// 1..=1000, default 1000.
    pub limit: Option<String>,
}

/// Query of paginated lists.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1..=1000, default 100.
    pub limit: Option<String>,
    /// From a previous page.
    pub cursor: Option<String>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this tenant's entries.
    pub tenant_id: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<String>,
    /// From a previous page.
    pub cursor: Option<String>,
}

/// A query's `limit`, checked: `1..=PAGE_LEN_MAX`, `default` when absent.
pub fn parse_limit(raw: Option<&str>, default: u32) -> Result<u32, DomainError> {
    match raw {
        None => Ok(default),
        Some(s) => {
            let n: u32 = s.parse().map_err(|_| {
                DomainError::invalid(
                    "limit",
                    format!("must be a whole number between 1 and {}", tally_domain::limits::PAGE_LEN_MAX),
                )
            })?;
            tally_service::usage::check_page_limit(n)
        }
    }
}

/// An optional RFC 3339 instant from a query parameter.
pub fn parse_instant(field: &'static str, raw: Option<&str>) -> Result<Option<Timestamp>, DomainError> {
    raw.map(|s| {
        parse_rfc3339(s)
            .map_err(|_| DomainError::invalid(field, format!("must be RFC 3339 with an offset, got {s:?}")))
    })
    .transpose()
}

// ---------------------------------------------------------------------------------------
// Responses

/// The answer to a recorded (or replayed) usage event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageResponse {
    pub event_id: String,
    pub tenant_id: String,
    pub metric_code: String,
    pub amount: i64,
    pub current_usage: i64,
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    pub enforcement: String,
    /// `null` for a gauge, whose level has no period.
    pub period_start: Option<String>,
    /// `null` for a gauge.
    pub period_end: Option<String>,
    pub exceeded: bool,
    pub replayed: bool,
    /// `"correction"` on the answer of a correction; absent on usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
}

/// `[start, end)` on the wire: `null`s for the unbounded period of a gauge.
fn period_wire(period: &Period) -> (Option<String>, Option<String>) {
    match period.bounds() {
        Some((start, end)) => (Some(format_rfc3339(start)), Some(format_rfc3339(end))),
        None => (None, None),
    }
}

impl From<&UsageOutcome> for UsageResponse {
    fn from(o: &UsageOutcome) -> UsageResponse {
        UsageResponse {
            event_id: o.event_id.to_string(),
            tenant_id: o.tenant_id.to_string(),
            metric_code: o.metric_code.to_string(),
            amount: o.amount,
            current_usage: o.current_usage,
            limit: o.limit,
            remaining: o.remaining,
            enforcement: o.enforcement.as_str().to_owned(),
            period_start: period_wire(&o.period).0,
            period_end: period_wire(&o.period).1,
            exceeded: o.exceeded,
            replayed: o.replayed,
            kind: (o.kind == EventKind::Correction).then_some("correction"),
        }
    }
}

/// One entry per event, in order: the usage answer, or `{"error": problem}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchResponse {
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<Value>,
}

/// The answer of a check.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CheckResponse {
    pub allowed: bool,
    pub metric_code: String,
    pub current_usage: i64,
    /// What open reservations hold in the period.
    pub reserved: i64,
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    pub enforcement: String,
    /// `null` for a gauge.
    pub period_start: Option<String>,
    /// `null` for a gauge.
    pub period_end: Option<String>,
}

impl From<&CheckOutcome> for CheckResponse {
    fn from(c: &CheckOutcome) -> CheckResponse {
        CheckResponse {
            allowed: c.allowed,
            metric_code: c.metric_code.to_string(),
            current_usage: c.current_usage,
            reserved: c.reserved,
            limit: c.limit,
            remaining: c.remaining,
            enforcement: c.enforcement.as_str().to_owned(),
            period_start: period_wire(&c.period).0,
            period_end: period_wire(&c.period).1,
        }
    }
}

/// One metric's current period.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MetricUsageResponse {
    pub metric_code: String,
    pub current_usage: i64,
    /// What open reservations hold in the period.
    pub reserved: i64,
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    pub enforcement: String,
    pub period: String,
    /// `null` for a gauge.
    pub period_start: Option<String>,
    /// `null` for a gauge.
    pub period_end: Option<String>,
    pub exceeded: bool,
}

impl From<&MetricUsage> for MetricUsageResponse {
    fn from(m: &MetricUsage) -> MetricUsageResponse {
        MetricUsageResponse {
            metric_code: m.metric_code.to_string(),
            current_usage: m.current_usage,
            reserved: m.reserved,
            limit: m.limit,
            remaining: m.remaining,
            enforcement: m.enforcement.as_str().to_owned(),
            period: m.period_kind.as_str().to_owned(),
            period_start: period_wire(&m.period).0,
            period_end: period_wire(&m.period).1,
            exceeded: m.exceeded,
        }
    }
}

/// A tenant's current usage of every metric.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantUsageResponse {
    pub tenant_id: String,
    pub plan_code: String,
    pub metrics: Vec<MetricUsageResponse>,
}

impl From<&TenantUsage> for TenantUsageResponse {
    fn from(u: &TenantUsage) -> TenantUsageResponse {
        TenantUsageResponse {
            tenant_id: u.tenant_id.to_string(),
            plan_code: u.plan_code.to_string(),
            metrics: u.metrics.iter().map(MetricUsageResponse::from).collect(),
        }
    }
}

/// A usage record.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordResponse {
    pub id: String,
    pub tenant_id: String,
    pub metric_code: String,
    /// `null` for a gauge's record.
    pub period_start: Option<String>,
    /// `null` for a gauge's record.
    pub period_end: Option<String>,
    pub current_usage: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&UsageRecord> for RecordResponse {
    fn from(r: &UsageRecord) -> RecordResponse {
        RecordResponse {
            id: r.id.to_string(),
            tenant_id: r.tenant_id.to_string(),
            metric_code: r.metric_code.to_string(),
            period_start: r.period().ok().and_then(|p| p.bounds()).map(|(start, _)| format_rfc3339(start)),
            period_end: r.period().ok().and_then(|p| p.bounds()).map(|(_, end)| format_rfc3339(end)),
            current_usage: r.current_usage,
            created_at: format_rfc3339(r.created_at),
            updated_at: format_rfc3339(r.updated_at),
        }
    }
}

/// Records of one metric, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryResponse {
    pub records: Vec<RecordResponse>,
}

/// One usage event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventResponse {
    pub id: String,
    pub metric_code: String,
    pub amount: i64,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub idempotency_key: Option<String>,
    pub timestamp: String,
    pub created_at: String,
    /// `usage` or `correction`.
    pub kind: String,
    /// A correction's reason; null for usage.
    pub reason: Option<String>,
}

impl From<&RecordedEvent> for EventResponse {
    fn from(e: &RecordedEvent) -> EventResponse {
        EventResponse {
            id: e.event.id.to_string(),
            metric_code: e.event.metric_code.to_string(),
            amount: e.event.amount,
            metadata: e.event.metadata.to_value(),
            idempotency_key: e.event.idempotency_key.as_ref().map(|k| k.to_string()),
            timestamp: format_rfc3339(e.event.timestamp),
            created_at: format_rfc3339(e.event.created_at),
            kind: e.event.kind.as_str().to_owned(),
            reason: e.event.reason.as_ref().map(|r| r.as_str().to_owned()),
        }
    }
}

/// A page of events, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventsResponse {
    pub events: Vec<EventResponse>,
    pub next_cursor: Option<String>,
}

/// A limit, on a plan or as an override.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LimitResponse {
    pub metric_code: String,
    pub limit: Option<i64>,
    pub enforcement: String,
    pub period: String,
}

impl From<&QuotaLimit> for LimitResponse {
    fn from(l: &QuotaLimit) -> LimitResponse {
        LimitResponse {
            metric_code: l.metric_code.to_string(),
            limit: l.limit,
            enforcement: l.enforcement.as_str().to_owned(),
            period: l.period.as_str().to_owned(),
        }
    }
}

/// A plan.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanResponse {
    pub plan_code: String,
    pub name: String,
    pub limits: Vec<LimitResponse>,
    /// Periods close this long after they end; null: only by hand.
    pub close_after: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Plan> for PlanResponse {
    fn from(p: &Plan) -> PlanResponse {
        PlanResponse {
            plan_code: p.code.to_string(),
            name: p.name.to_string(),
            limits: p.limits.iter().map(LimitResponse::from).collect(),
            close_after: p.close_after.map(|c| c.to_string()),
            version: p.version,
            created_at: format_rfc3339(p.created_at),
            updated_at: format_rfc3339(p.updated_at),
        }
    }
}

/// A reservation, as created (201) or replayed (200).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReservationResponse {
    pub reservation_id: String,
    pub metric_code: String,
    pub amount: i64,
    pub expires_at: String,
    /// The counter when it was made.
    pub current_usage: i64,
    /// Everything held in the period when it was made, itself included.
    pub reserved: i64,
    pub limit: Option<i64>,
    /// `max(limit - current_usage - reserved, 0)`.
    pub remaining: Option<i64>,
    /// True when this answers a retry and nothing more was reserved.
    pub replayed: bool,
}

impl From<&ReserveOutcome> for ReservationResponse {
    fn from(o: &ReserveOutcome) -> ReservationResponse {
        let r = &o.reservation;
        ReservationResponse {
            reservation_id: r.id.to_string(),
            metric_code: r.metric_code.to_string(),
            amount: r.amount,
            expires_at: format_rfc3339(r.expires_at),
            current_usage: r.usage_at_creation,
            reserved: r.reserved_at_creation,
            limit: r.limit_at_creation,
            remaining: r.remaining_at_creation(),
            replayed: o.replayed,
        }
    }
}

/// An open reservation, as listed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OpenReservationResponse {
    pub reservation_id: String,
    pub metric_code: String,
    pub amount: i64,
    pub created_at: String,
    pub expires_at: String,
    pub idempotency_key: Option<String>,
}

impl From<&Reservation> for OpenReservationResponse {
    fn from(r: &Reservation) -> OpenReservationResponse {
        OpenReservationResponse {
            reservation_id: r.id.to_string(),
            metric_code: r.metric_code.to_string(),
            amount: r.amount,
            created_at: format_rfc3339(r.created_at),
            expires_at: format_rfc3339(r.expires_at),
            idempotency_key: r.idempotency_key.as_ref().map(|k| k.to_string()),
        }
    }
}

/// The tenant's open reservations, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReservationsResponse {
    pub reservations: Vec<OpenReservationResponse>,
}

/// A metric in the catalog.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MetricResponse {
    pub metric_code: String,
    pub name: String,
    pub unit: Option<String>,
    /// `counter` or `gauge`.
    pub kind: String,
    /// Where an ingested event carries its amount; `null`: each event counts 1.
    pub value_property: Option<String>,
    /// False for a metric a plan limits without its being declared: shown as a counter (a
    /// gauge when a limit on it has `period: none`), named by its code.
    pub declared: bool,
    /// `null` when not declared.
    pub created_at: Option<String>,
    /// `null` when not declared.
    pub updated_at: Option<String>,
}

impl From<&CatalogEntry> for MetricResponse {
    fn from(m: &CatalogEntry) -> MetricResponse {
        MetricResponse {
            metric_code: m.code.to_string(),
            name: m.spec.name.to_string(),
            unit: m.spec.unit.clone(),
            kind: m.spec.kind.as_str().to_owned(),
            value_property: m.spec.value_property.clone(),
            declared: m.declared,
            created_at: m.created_at.map(format_rfc3339),
            updated_at: m.updated_at.map(format_rfc3339),
        }
    }
}

/// Every metric of the catalog, by code: declared, or limited by a plan.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MetricsResponse {
    pub metrics: Vec<MetricResponse>,
}

/// Every plan.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlansResponse {
    pub plans: Vec<PlanResponse>,
}

/// A subscription.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubscriptionResponse {
    pub plan_code: String,
    pub anchor: String,
    pub started_at: String,
}

impl From<&Subscription> for SubscriptionResponse {
    fn from(s: &Subscription) -> SubscriptionResponse {
        SubscriptionResponse {
            plan_code: s.plan_code.to_string(),
            anchor: format_rfc3339(s.anchor),
            started_at: format_rfc3339(s.started_at),
        }
    }
}

/// A tenant.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantResponse {
    pub tenant_id: String,
    pub name: String,
    pub subscription: Option<SubscriptionResponse>,
    pub overrides: Vec<LimitResponse>,
    pub created_at: String,
}

impl From<&TenantView> for TenantResponse {
    fn from(v: &TenantView) -> TenantResponse {
        TenantResponse {
            tenant_id: v.tenant.tenant_id.to_string(),
            name: v.tenant.name.to_string(),
            subscription: v.subscription.as_ref().map(SubscriptionResponse::from),
            overrides: v.overrides.iter().map(LimitResponse::from).collect(),
            created_at: format_rfc3339(v.tenant.created_at),
        }
    }
}

/// A page of tenants, by id.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantsResponse {
    pub tenants: Vec<TenantResponse>,
    pub next_cursor: Option<String>,
}

/// One audit entry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntryResponse {
    pub id: String,
    pub at: String,
    pub key_id: Option<String>,
    pub action: String,
    pub tenant_id: Option<String>,
    #[schema(value_type = Object)]
    pub details: Value,
}

impl From<&AuditEntry> for AuditEntryResponse {
    fn from(e: &AuditEntry) -> AuditEntryResponse {
        AuditEntryResponse {
            id: e.id.to_string(),
            at: format_rfc3339(e.at),
            key_id: e.key_id.map(|k| k.to_string()),
            action: e.action.clone(),
            tenant_id: e.tenant_id.as_ref().map(|t| t.to_string()),
            details: e.details.clone(),
        }
    }
}

/// A page of the audit log, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditResponse {
    pub entries: Vec<AuditEntryResponse>,
    pub next_cursor: Option<String>,
}

/// An error (RFC 9457) with a stable `code`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
}

/// A route that takes no query parameters refuses any.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// A webhook's registration (`PUT /v1/webhooks/{webhook_id}`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// Where deliveries are posted: an `http` or `https` URL.
    pub url: String,
    /// Percentages of a limit, 1–1000 each, at most 10; default `[80, 100]`.
    #[serde(default)]
    pub thresholds: Option<Vec<i64>>,
    /// `usage.threshold_crossed` and/or `usage.limit_refused`; default both.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// The signing secret, 16–256 visible ASCII characters; generated on creation when
    /// absent (and then shown once), kept on a replace when absent.
    #[serde(default)]
    pub secret: Option<String>,
}

/// Thresholds of a webhook registered without any.
pub const WEBHOOK_THRESHOLDS_DEFAULT: [i64; 2] = [80, 100];

impl WebhookBody {
    /// The use case's input.
    pub fn to_input(&self) -> Result<tally_service::webhooks::WebhookInput, DomainError> {
        let events = match &self.events {
            None => tally_domain::WebhookEventType::ALL.to_vec(),
            Some(raw) => raw.iter().map(|e| e.parse()).collect::<Result<_, _>>()?,
        };
        Ok(tally_service::webhooks::WebhookInput {
            url: self.url.clone(),
            thresholds: self.thresholds.clone().unwrap_or_else(|| WEBHOOK_THRESHOLDS_DEFAULT.to_vec()),
            events,
            secret: self.secret.clone(),
        })
    }
}

/// A registered webhook. `secret` appears only in the answer that created it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookResponse {
    pub webhook_id: String,
    pub url: String,
    pub thresholds: Vec<u16>,
    pub events: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Shown once, on creation; never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookResponse {
    /// The view of `w`, with `secret` when this answer shows it.
    pub fn new(w: &tally_domain::Webhook, secret: Option<&tally_domain::WebhookSecret>) -> WebhookResponse {
        WebhookResponse {
            webhook_id: w.id.to_string(),
            url: w.spec.url.as_str().to_owned(),
            thresholds: w.spec.thresholds.clone(),
            events: w.spec.events.iter().map(|e| e.as_str().to_owned()).collect(),
            created_at: format_rfc3339(w.created_at),
            updated_at: format_rfc3339(w.updated_at),
            secret: secret.map(|s| s.expose().to_owned()),
        }
    }
}

/// Every webhook, by id (without secrets).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhooksResponse {
    pub webhooks: Vec<WebhookResponse>,
}

/// One delivery of a webhook and where it stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryResponse {
    /// Also the body's `id`, the same on every attempt.
    pub id: String,
    /// `usage.threshold_crossed` or `usage.limit_refused`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i32,
    /// The status code of the last answer; `null` when none came.
    pub last_response_code: Option<i32>,
    /// Why the last attempt failed; `null` when it did not.
    pub last_error: Option<String>,
    /// When it is tried next; `null` unless pending.
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub created_at: String,
    pub tenant_id: String,
    pub metric_code: String,
    /// The body posted, as sent.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl From<&tally_domain::Delivery> for DeliveryResponse {
    fn from(d: &tally_domain::Delivery) -> DeliveryResponse {
        DeliveryResponse {
            id: d.id.to_string(),
            event_type: d.event_type.as_str().to_owned(),
            status: d.status.as_str().to_owned(),
            attempts: d.attempts,
            last_response_code: d.last_response_code,
            last_error: d.last_error.clone(),
            next_attempt_at: d.next_attempt_at.map(format_rfc3339),
            last_attempt_at: d.last_attempt_at.map(format_rfc3339),
            created_at: format_rfc3339(d.created_at),
            tenant_id: d.tenant_id.to_string(),
            metric_code: d.metric_code.to_string(),
            payload: serde_json::from_str(&d.body).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A page of a webhook's deliveries, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveriesResponse {
    pub deliveries: Vec<DeliveryResponse>,
    /// The `cursor` of the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// A key to create (`POST /v1/keys`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    /// `admin` (everything) or `tenant` (one tenant's usage routes).
    pub scope: String,
    /// The tenant of a `tenant` key (which must exist); absent or `null` for an `admin` key.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// The key's own rate limit, `N/s`, `N/m` or `N/h` (burst 2× the rate), which wins over
    /// the server's `--rate-limit-*-key`; absent or `null`: the server's.
    #[serde(default)]
    pub rate_limit: Option<String>,
}

impl KeyBody {
    /// The validated scope and rate limit.
    pub fn to_input(&self) -> Result<(tally_domain::KeyScope, Option<tally_domain::RateLimit>), DomainError> {
        let scope = match (self.scope.as_str(), &self.tenant_id) {
            ("admin", None) => tally_domain::KeyScope::Admin,
            ("admin", Some(_)) => {
                return Err(DomainError::invalid("tenant_id", "must be absent for an admin key"));
            }
            ("tenant", Some(t)) => tally_domain::KeyScope::Tenant(TenantId::parse(t)?),
            ("tenant", None) => {
                return Err(DomainError::invalid("tenant_id", "is required for a tenant key"));
            }
            (other, _) => {
                return Err(DomainError::invalid("scope", format!("must be admin or tenant, got {other:?}")));
            }
        };
        let rate_limit = self.rate_limit.as_deref().map(tally_domain::RateLimit::parse).transpose()?;
        Ok((scope, rate_limit))
    }
}

/// A key just created: the only answer that shows `key`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyResponse {
    pub id: String,
    /// The secret, `tly_` and 64 hex digits: shown this once, only its SHA-256 is kept.
    pub key: String,
    /// `admin` or `tenant`.
    pub scope: String,
    /// `null` for an admin key.
    pub tenant_id: Option<String>,
    /// `N/s`, `N/m` or `N/h`; `null`: the server's default for its scope.
    pub rate_limit: Option<String>,
    pub created_at: String,
}

impl KeyResponse {
    /// The answer for `k`, created with `secret`.
    pub fn new(k: &tally_domain::ApiKey, secret: String) -> KeyResponse {
        KeyResponse {
            id: k.id.to_string(),
            key: secret,
            scope: k.scope.kind().to_owned(),
            tenant_id: k.scope.tenant().map(|t| t.to_string()),
            rate_limit: k.rate_limit.map(|r| r.to_string()),
            created_at: format_rfc3339(k.created_at),
        }
    }
}

/// A stored key, as listed: never its secret nor its hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyEntryResponse {
    pub id: String,
    /// `admin` or `tenant`.
    pub scope: String,
    /// `null` for an admin key.
    pub tenant_id: Option<String>,
    /// `N/s`, `N/m` or `N/h`; `null`: the server's default for its scope.
    pub rate_limit: Option<String>,
    pub created_at: String,
    /// Noted at most once a minute; `null`: never used.
    pub last_used_at: Option<String>,
    /// `null` while the key works.
    pub revoked_at: Option<String>,
}

impl From<&tally_domain::ApiKey> for KeyEntryResponse {
    fn from(k: &tally_domain::ApiKey) -> KeyEntryResponse {
        KeyEntryResponse {
            id: k.id.to_string(),
            scope: k.scope.kind().to_owned(),
            tenant_id: k.scope.tenant().map(|t| t.to_string()),
            rate_limit: k.rate_limit.map(|r| r.to_string()),
            created_at: format_rfc3339(k.created_at),
            last_used_at: k.last_used_at.map(format_rfc3339),
            revoked_at: k.revoked_at.map(format_rfc3339),
        }
    }
}

/// Every stored key, revoked ones included, oldest first (the configured admin key is not
/// stored, so not listed).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeysResponse {
    pub keys: Vec<KeyEntryResponse>,
}
