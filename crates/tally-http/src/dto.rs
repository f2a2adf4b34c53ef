//! Wire types: the JSON shapes of API.md, with plain fields. Requests become domain types
//! through the `to_*` methods at the handler; responses are built with `From`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_domain::time::{format_rfc3339, parse_rfc3339};
use tally_domain::{
    Amount, AuditEntry, DomainError, IdempotencyKey, LimitEnforcement, Metadata, MetricCode, Name,
    PeriodKind, Plan, PlanSpec, QuotaLimit, RecordedEvent, Subscription, TenantId, Timestamp, UsageOutcome,
    UsageRecord, UsageRequest,
};
use tally_service::admin::TenantView;
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
    /// 1..=1000000000000.
    pub amount: i64,
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
            amount: Amount::new(self.amount)?,
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
    /// The amount that would be recorded.
    pub amount: i64,
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
    /// `hour`, `day`, `week`, `month` (default) or `year`.
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
}

impl PlanBody {
    /// The validated plan.
    pub fn to_spec(&self) -> Result<PlanSpec, DomainError> {
        let limits = self
            .limits
            .iter()
            .map(|l| to_limit(&l.metric_code, l.limit, &l.enforcement, l.period.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        PlanSpec::new(Name::parse(&self.name)?, limits)
    }
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
    /// `hour`, `day`, `week`, `month` (default) or `year`.
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
    pub period_start: String,
    pub period_end: String,
    pub exceeded: bool,
    pub replayed: bool,
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
            period_start: format_rfc3339(o.period.start()),
            period_end: format_rfc3339(o.period.end()),
            exceeded: o.exceeded,
            replayed: o.replayed,
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
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    pub enforcement: String,
    pub period_start: String,
    pub period_end: String,
}

impl From<&CheckOutcome> for CheckResponse {
    fn from(c: &CheckOutcome) -> CheckResponse {
        CheckResponse {
            allowed: c.allowed,
            metric_code: c.metric_code.to_string(),
            current_usage: c.current_usage,
            limit: c.limit,
            remaining: c.remaining,
            enforcement: c.enforcement.as_str().to_owned(),
            period_start: format_rfc3339(c.period.start()),
            period_end: format_rfc3339(c.period.end()),
        }
    }
}

/// One metric's current period.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MetricUsageResponse {
    pub metric_code: String,
    pub current_usage: i64,
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    pub enforcement: String,
    pub period: String,
    pub period_start: String,
    pub period_end: String,
    pub exceeded: bool,
}

impl From<&MetricUsage> for MetricUsageResponse {
    fn from(m: &MetricUsage) -> MetricUsageResponse {
        MetricUsageResponse {
            metric_code: m.metric_code.to_string(),
            current_usage: m.current_usage,
            limit: m.limit,
            remaining: m.remaining,
            enforcement: m.enforcement.as_str().to_owned(),
            period: m.period_kind.as_str().to_owned(),
            period_start: format_rfc3339(m.period.start()),
            period_end: format_rfc3339(m.period.end()),
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
    pub period_start: String,
    pub period_end: String,
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
            period_start: format_rfc3339(r.period_start),
            period_end: format_rfc3339(r.period_end),
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
            version: p.version,
            created_at: format_rfc3339(p.created_at),
            updated_at: format_rfc3339(p.updated_at),
        }
    }
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
