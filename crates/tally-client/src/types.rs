//! The wire types of `/v1`: request bodies, query parameters and answers, member for member
//! as the API sends and takes them (API.md; the server's own shapes are `tally-http`'s
//! `dto.rs`).
//!
//! Request bodies leave out the members that are `None`, because the server refuses unknown
//! members and treats an omitted one as its default. Answers accept members this client does
//! not know yet (a newer server may add some) and are `#[non_exhaustive]` for the same reason.
//! Timestamps are [`DateTime<Utc>`]: they go out as RFC 3339 with a `Z` and come back the same.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Problem;

// ---------------------------------------------------------------------------------------
// Enumerations

/// How a limit is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Enforcement {
    /// A usage that would pass the limit is refused with 429 and not recorded.
    Hard,
    /// Always recorded; `exceeded: true` once past the limit.
    Soft,
    /// Always recorded; tracking only.
    None,
    /// A value this client does not know (from a newer server). Never send it.
    #[serde(other)]
    Unknown,
}

/// The period a limit counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PeriodKind {
    /// UTC calendar hours.
    Hour,
    /// UTC calendar days.
    Day,
    /// UTC calendar weeks, starting Monday 00:00Z.
    Week,
    /// Months from the subscription's anchor (the default).
    Month,
    /// Years from the subscription's anchor.
    Year,
    /// No period: a gauge's level, which never resets.
    None,
    /// A value this client does not know (from a newer server). Never send it.
    #[serde(other)]
    Unknown,
}

/// What a metric of the catalog measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum MetricKind {
    /// Sums positive amounts per period.
    Counter,
    /// A level that goes up and down (seats, projects, stored bytes).
    Gauge,
    /// A value this client does not know (from a newer server). Never send it.
    #[serde(other)]
    Unknown,
}

/// The events a webhook can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WebhookEvent {
    /// `usage.threshold_crossed`: usage reached a threshold (a percentage of the limit).
    #[serde(rename = "usage.threshold_crossed")]
    ThresholdCrossed,
    /// `usage.limit_refused`: a HARD limit refused for the first time in a period.
    #[serde(rename = "usage.limit_refused")]
    LimitRefused,
    /// A value this client does not know (from a newer server). Never send it.
    #[serde(other)]
    Unknown,
}

/// Where a webhook delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DeliveryStatus {
    /// Not delivered yet; tried again at `next_attempt_at`.
    Pending,
    /// A 2xx answer came.
    Delivered,
    /// Retried for the whole retry window without success.
    Failed,
    /// A value this client does not know (from a newer server).
    #[serde(other)]
    Unknown,
}

// ---------------------------------------------------------------------------------------
// Request bodies

/// `POST /v1/tenants/{tenant_id}/usage`, and one item of a batch.
///
/// Only `metric_code` and `amount` (or, for a gauge, `set`) are required. When
/// `idempotency_key` is `None` the client generates a UUID v7 for the call, and every retry
/// of that call sends the same key.
///
/// ```
/// use tally_client::UsageRequest;
///
/// let req = UsageRequest::new("api_calls", 1)
///     .with_idempotency_key("req-7f3a")
///     .with_metadata(serde_json::json!({"endpoint": "/search"}));
/// assert_eq!(
///     serde_json::to_value(&req).unwrap(),
///     serde_json::json!({"metric_code": "api_calls", "amount": 1,
///                        "idempotency_key": "req-7f3a", "metadata": {"endpoint": "/search"}})
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRequest {
    /// `[a-z][a-z0-9_]*`, 1–64 chars.
    pub metric_code: String,
    /// `1..=1_000_000_000_000`; a gauge also takes negative amounts. Leave `None` with `set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// A gauge only: the level to set, instead of `amount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<i64>,
    /// 1–255 visible ASCII chars, per tenant; generated (UUID v7) when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// A JSON object of at most 4096 bytes serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// When the usage happened (default: when Tally records it); at most 5 minutes ahead of
    /// the server's clock and `max_event_age` (35 days by default) behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
}

impl UsageRequest {
    /// `amount` more of `metric_code` (a negative amount lowers a gauge).
    pub fn new(metric_code: impl Into<String>, amount: i64) -> UsageRequest {
        UsageRequest {
            metric_code: metric_code.into(),
            amount: Some(amount),
            set: None,
            idempotency_key: None,
            metadata: None,
            timestamp: None,
        }
    }

    /// Sets the level of the gauge `metric_code` to `level`.
    pub fn set_level(metric_code: impl Into<String>, level: i64) -> UsageRequest {
        UsageRequest { amount: None, set: Some(level), ..UsageRequest::new(metric_code, 0) }
    }

    /// With this idempotency key instead of a generated one.
    #[must_use]
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> UsageRequest {
        self.idempotency_key = Some(key.into());
        self
    }

    /// With this metadata (a JSON object).
    #[must_use]
    pub fn with_metadata(mut self, metadata: Value) -> UsageRequest {
        self.metadata = Some(metadata);
        self
    }

    /// Counted at `timestamp` instead of when Tally records it.
    #[must_use]
    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> UsageRequest {
        self.timestamp = Some(timestamp);
        self
    }
}

/// `POST /v1/tenants/{tenant_id}/usage/check`: would this usage be allowed? Changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// The metric.
    pub metric_code: String,
    /// The amount that would be recorded. Leave `None` with `set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// A gauge only: the level that would be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<i64>,
}

impl CheckRequest {
    /// Would `amount` more of `metric_code` be allowed?
    pub fn new(metric_code: impl Into<String>, amount: i64) -> CheckRequest {
        CheckRequest { metric_code: metric_code.into(), amount: Some(amount), set: None }
    }

    /// Would setting the gauge `metric_code` to `level` be allowed?
    pub fn set_level(metric_code: impl Into<String>, level: i64) -> CheckRequest {
        CheckRequest { metric_code: metric_code.into(), amount: None, set: Some(level) }
    }
}

/// `POST /v1/tenants/{tenant_id}/reservations`: hold quota before long work.
///
/// When `idempotency_key` is `None` the client generates a UUID v7, so a retried creation
/// answers the original reservation and holds nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRequest {
    /// The metric.
    pub metric_code: String,
    /// How much to hold: `1..=1_000_000_000_000`.
    pub amount: i64,
    /// How long to hold it: `1..=86400` seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// 1–255 visible ASCII chars, per tenant; generated (UUID v7) when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl ReserveRequest {
    /// Holds `amount` of `metric_code` for the default time (300 s).
    pub fn new(metric_code: impl Into<String>, amount: i64) -> ReserveRequest {
        ReserveRequest { metric_code: metric_code.into(), amount, ttl_seconds: None, idempotency_key: None }
    }

    /// Held for `seconds` instead of the default.
    #[must_use]
    pub fn with_ttl_seconds(mut self, seconds: i64) -> ReserveRequest {
        self.ttl_seconds = Some(seconds);
        self
    }

    /// With this idempotency key instead of a generated one.
    #[must_use]
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> ReserveRequest {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// `POST /v1/tenants/{tenant_id}/reservations/{reservation_id}/commit`: what was used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitRequest {
    /// At most the amount reserved; default: all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// The usage event's metadata: a JSON object of at most 4096 bytes serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

impl CommitRequest {
    /// Commits `amount` of the reservation and releases the rest.
    pub fn amount(amount: i64) -> CommitRequest {
        CommitRequest { amount: Some(amount), metadata: None }
    }
}

/// One limit of a plan, as sent and as answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// The metric.
    pub metric_code: String,
    /// Most usage per period; `None` is unlimited.
    pub limit: Option<i64>,
    /// How the limit is enforced.
    pub enforcement: Enforcement,
    /// The period it counts over (`None` for a gauge).
    pub period: PeriodKind,
}

impl Limit {
    /// A limit on `metric_code`.
    pub fn new(
        metric_code: impl Into<String>,
        limit: Option<i64>,
        enforcement: Enforcement,
        period: PeriodKind,
    ) -> Limit {
        Limit { metric_code: metric_code.into(), limit, enforcement, period }
    }
}

/// `PUT /v1/plans/{plan_code}`: a plan's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRequest {
    /// Display name.
    pub name: String,
    /// At most one limit per metric.
    pub limits: Vec<Limit>,
}

/// `PUT /v1/tenants/{tenant_id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRequest {
    /// Display name; default: the tenant id on create, unchanged on replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `PUT /v1/tenants/{tenant_id}/subscription`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRequest {
    /// The plan.
    pub plan_code: String,
    /// Where monthly and yearly periods start; default: the current anchor, or now for a new
    /// subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<DateTime<Utc>>,
}

impl SubscriptionRequest {
    /// Subscribes to `plan_code`, keeping the anchor (or anchored now when new).
    pub fn new(plan_code: impl Into<String>) -> SubscriptionRequest {
        SubscriptionRequest { plan_code: plan_code.into(), anchor: None }
    }
}

/// `PUT /v1/tenants/{tenant_id}/overrides/{metric_code}`: a tenant's own limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideRequest {
    /// Most usage per period; `None` is unlimited.
    pub limit: Option<i64>,
    /// How the limit is enforced.
    pub enforcement: Enforcement,
    /// The period (default `month`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<PeriodKind>,
}

/// `PUT /v1/metrics/{metric_code}`: a metric's declaration in the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricRequest {
    /// Display name; default: the metric code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its unit (`seat`, `byte`), 1–32 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `counter` (default) or `gauge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MetricKind>,
    /// For events ingested through the compatibility routes (OpenMeter, Lago): a JSON
    /// pointer (`/tokens`) into the event's `data` or `properties` naming its amount; `None`:
    /// each event counts 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_property: Option<String>,
}

/// `PUT /v1/webhooks/{webhook_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRequest {
    /// Where deliveries are posted: an `http` or `https` URL.
    pub url: String,
    /// Percentages of a limit, 1–1000 each, at most 10; default `[80, 100]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<u16>>,
    /// Which events to send; default both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<WebhookEvent>>,
    /// The signing secret, 16–256 visible ASCII chars; generated on creation when absent
    /// (and shown once, in that answer), kept on a replace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookRequest {
    /// A webhook posting to `url`, with the default thresholds and events.
    pub fn new(url: impl Into<String>) -> WebhookRequest {
        WebhookRequest { url: url.into(), thresholds: None, events: None, secret: None }
    }
}

// ---------------------------------------------------------------------------------------
// Query parameters

/// `GET /v1/tenants/{tenant_id}/events`. Every member is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsQuery {
    /// Only this metric.
    pub metric_code: Option<String>,
    /// Events at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Events before this instant.
    pub to: Option<DateTime<Utc>>,
    /// `1..=1000`, default 100.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/tenants/{tenant_id}/usage/{metric_code}/history`. Every member is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Records whose period starts at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Records whose period starts before this instant.
    pub to: Option<DateTime<Utc>>,
    /// `1..=1000`, default 1000.
    pub limit: Option<u32>,
}

/// A page of a paginated list (tenants, deliveries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageQuery {
    /// `1..=1000`, default 100.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/audit`. Every member is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this tenant's entries.
    pub tenant_id: Option<String>,
    /// `1..=1000`, default 100.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Answers

/// The answer to a recorded (or replayed) usage event, and to a commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageResponse {
    /// The event's id (a UUID v7).
    pub event_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The metric.
    pub metric_code: String,
    /// The change recorded (for a gauge's `set`, the difference to the previous level).
    pub amount: i64,
    /// Usage of the period after this event.
    pub current_usage: i64,
    /// The limit; `None` is unlimited.
    pub limit: Option<i64>,
    /// `max(limit - current_usage - reserved, 0)`; `None` when unlimited.
    pub remaining: Option<i64>,
    /// How the limit is enforced.
    pub enforcement: Enforcement,
    /// Start of the period; `None` for a gauge.
    pub period_start: Option<DateTime<Utc>>,
    /// End of the period (exclusive); `None` for a gauge.
    pub period_end: Option<DateTime<Utc>>,
    /// `limit` is set and `current_usage > limit`.
    pub exceeded: bool,
    /// True when this answers a retry (the same idempotency key and payload): nothing more
    /// was recorded.
    pub replayed: bool,
}

/// The answer of a batch: one result per event, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchResponse {
    /// One entry per item of the request.
    pub results: Vec<BatchResult>,
}

/// One item of a batch's answer: `{...usage answer...}` or `{"error": problem}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "BatchResultWire", into = "BatchResultWire")]
pub enum BatchResult {
    /// Recorded (or replayed).
    Recorded(UsageResponse),
    /// Refused or invalid; the other items were applied all the same.
    Failed(Problem),
}

impl BatchResult {
    /// The usage answer, when the item was recorded.
    pub fn recorded(&self) -> Option<&UsageResponse> {
        match self {
            BatchResult::Recorded(r) => Some(r),
            BatchResult::Failed(_) => None,
        }
    }

    /// The problem, when the item failed.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            BatchResult::Recorded(_) => None,
            BatchResult::Failed(p) => Some(p),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum BatchResultWire {
    Failed { error: Problem },
    Recorded(UsageResponse),
}

impl From<BatchResultWire> for BatchResult {
    fn from(w: BatchResultWire) -> BatchResult {
        match w {
            BatchResultWire::Failed { error } => BatchResult::Failed(error),
            BatchResultWire::Recorded(r) => BatchResult::Recorded(r),
        }
    }
}

impl From<BatchResult> for BatchResultWire {
    fn from(r: BatchResult) -> BatchResultWire {
        match r {
            BatchResult::Failed(error) => BatchResultWire::Failed { error },
            BatchResult::Recorded(r) => BatchResultWire::Recorded(r),
        }
    }
}

/// The answer of a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CheckResponse {
    /// Whether the usage would be recorded (SOFT and NONE always answer true).
    pub allowed: bool,
    /// The metric.
    pub metric_code: String,
    /// Usage of the period, before the hypothetical amount.
    pub current_usage: i64,
    /// What open reservations hold in the period.
    pub reserved: i64,
    /// The limit; `None` is unlimited.
    pub limit: Option<i64>,
    /// `max(limit - current_usage - reserved, 0)`; `None` when unlimited.
    pub remaining: Option<i64>,
    /// How the limit is enforced.
    pub enforcement: Enforcement,
    /// Start of the period; `None` for a gauge.
    pub period_start: Option<DateTime<Utc>>,
    /// End of the period (exclusive); `None` for a gauge.
    pub period_end: Option<DateTime<Utc>>,
}

/// `GET /v1/tenants/{tenant_id}/usage`: the current period of every metric of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TenantUsage {
    /// The tenant.
    pub tenant_id: String,
    /// Its plan.
    pub plan_code: String,
    /// One entry per metric of the plan and of the tenant's overrides.
    pub metrics: Vec<MetricUsage>,
}

/// One metric's current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MetricUsage {
    /// The metric.
    pub metric_code: String,
    /// Usage of the current period (zero when nothing was used).
    pub current_usage: i64,
    /// What open reservations hold in the period.
    pub reserved: i64,
    /// The limit; `None` is unlimited.
    pub limit: Option<i64>,
    /// `max(limit - current_usage - reserved, 0)`; `None` when unlimited.
    pub remaining: Option<i64>,
    /// How the limit is enforced.
    pub enforcement: Enforcement,
    /// The limit's period.
    pub period: PeriodKind,
    /// Start of the period; `None` for a gauge.
    pub period_start: Option<DateTime<Utc>>,
    /// End of the period (exclusive); `None` for a gauge.
    pub period_end: Option<DateTime<Utc>>,
    /// `limit` is set and `current_usage > limit`.
    pub exceeded: bool,
}

/// A usage record: one metric's counter for one period. Also the answer of a reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageRecord {
    /// The record's id.
    pub id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The metric.
    pub metric_code: String,
    /// Start of the period; `None` for a gauge.
    pub period_start: Option<DateTime<Utc>>,
    /// End of the period (exclusive); `None` for a gauge.
    pub period_end: Option<DateTime<Utc>>,
    /// The counter.
    pub current_usage: i64,
    /// When the record was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// `GET .../usage/{metric_code}/history`: records newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct History {
    /// The records.
    pub records: Vec<UsageRecord>,
}

/// One usage event, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// The event's id (a UUID v7).
    pub id: String,
    /// The metric.
    pub metric_code: String,
    /// The change recorded.
    pub amount: i64,
    /// Its metadata (`{}` when sent without).
    pub metadata: Value,
    /// The idempotency key it was recorded with.
    pub idempotency_key: Option<String>,
    /// When the usage happened.
    pub timestamp: DateTime<Utc>,
    /// When Tally recorded it.
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/tenants/{tenant_id}/events`: a page of events, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EventsPage {
    /// The events.
    pub events: Vec<Event>,
    /// The `cursor` of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Plan {
    /// Its code.
    pub plan_code: String,
    /// Display name.
    pub name: String,
    /// Its limits.
    pub limits: Vec<Limit>,
    /// 1 on creation, +1 on each change.
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/plans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Plans {
    /// Every plan.
    pub plans: Vec<Plan>,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Subscription {
    /// The plan.
    pub plan_code: String,
    /// Where monthly and yearly periods start.
    pub anchor: DateTime<Utc>,
    /// When the tenant moved to this plan.
    pub started_at: DateTime<Utc>,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tenant {
    /// Its id.
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// Its subscription, if any.
    pub subscription: Option<Subscription>,
    /// Its own limits, replacing the plan's.
    #[serde(default)]
    pub overrides: Vec<Limit>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/tenants`: a page of tenants, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TenantsPage {
    /// The tenants.
    pub tenants: Vec<Tenant>,
    /// The `cursor` of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// A reservation, as created (201) or replayed (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Reservation {
    /// Its id (a UUID), for commit and release.
    pub reservation_id: String,
    /// The metric.
    pub metric_code: String,
    /// The amount held.
    pub amount: i64,
    /// When it releases itself.
    pub expires_at: DateTime<Utc>,
    /// The counter when it was made.
    pub current_usage: i64,
    /// Everything held in the period when it was made, itself included.
    pub reserved: i64,
    /// The limit; `None` is unlimited.
    pub limit: Option<i64>,
    /// `max(limit - current_usage - reserved, 0)`; `None` when unlimited.
    pub remaining: Option<i64>,
    /// True when this answers a retry and nothing more was reserved.
    pub replayed: bool,
}

/// An open reservation, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OpenReservation {
    /// Its id.
    pub reservation_id: String,
    /// The metric.
    pub metric_code: String,
    /// The amount held.
    pub amount: i64,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it releases itself.
    pub expires_at: DateTime<Utc>,
    /// The idempotency key it was made with.
    pub idempotency_key: Option<String>,
}

/// `GET /v1/tenants/{tenant_id}/reservations`: the open ones, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Reservations {
    /// The open reservations.
    pub reservations: Vec<OpenReservation>,
}

/// A metric of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metric {
    /// Its code.
    pub metric_code: String,
    /// Display name.
    pub name: String,
    /// Its unit, if any.
    pub unit: Option<String>,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// Where an event ingested through the compatibility routes carries its amount; `None`:
    /// each event counts 1.
    #[serde(default)]
    pub value_property: Option<String>,
    /// False for a metric a plan limits without its being declared.
    pub declared: bool,
    /// `None` when not declared.
    pub created_at: Option<DateTime<Utc>>,
    /// `None` when not declared.
    pub updated_at: Option<DateTime<Utc>>,
}

/// `GET /v1/metrics`: every metric, declared or limited by a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metrics {
    /// The metrics, by code.
    pub metrics: Vec<Metric>,
}

/// A registered webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Webhook {
    /// Its id.
    pub webhook_id: String,
    /// Where deliveries are posted.
    pub url: String,
    /// Percentages of a limit.
    pub thresholds: Vec<u16>,
    /// Which events it is sent.
    pub events: Vec<WebhookEvent>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The signing secret: only in the answer that created it, never again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `GET /v1/webhooks`: every webhook (without secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Webhooks {
    /// The webhooks, by id.
    pub webhooks: Vec<Webhook>,
}

/// One delivery of a webhook and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Delivery {
    /// Also the posted body's `id`, the same on every attempt.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: WebhookEvent,
    /// Pending, delivered or failed.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: i32,
    /// The status code of the last answer; `None` when none came.
    pub last_response_code: Option<i32>,
    /// Why the last attempt failed; `None` when it did not.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When it is tried next; `None` unless pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was last tried.
    #[serde(default)]
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// The tenant whose usage made it.
    pub tenant_id: String,
    /// The metric.
    pub metric_code: String,
    /// The body posted, as sent.
    pub payload: Value,
}

/// `GET /v1/webhooks/{webhook_id}/deliveries`: a page, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeliveriesPage {
    /// The deliveries.
    pub deliveries: Vec<Delivery>,
    /// The `cursor` of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// One audit entry: who changed what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Its id.
    pub id: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The acting key; `None` for the command line.
    pub key_id: Option<String>,
    /// `reset`, `plan.put`, `plan.delete`, `subscription.put`, ...
    pub action: String,
    /// The tenant concerned, if any.
    pub tenant_id: Option<String>,
    /// What changed.
    pub details: Value,
}

/// `GET /v1/audit`: a page of the audit log, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// The `cursor` of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Health {
    /// `ok` (healthz) or `ready` (readyz).
    pub status: String,
}

/// The answer of a `PUT` that creates or replaces: 201 or 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put<T> {
    /// True on 201 (created), false on 200 (replaced, or unchanged).
    pub created: bool,
    /// The resource as it now is.
    pub value: T,
}

impl<T> Put<T> {
    /// The resource.
    pub fn into_inner(self) -> T {
        self.value
    }
}
