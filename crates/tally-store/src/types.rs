//! Values that cross the store boundary besides domain types: queries, pages, outcomes.

pub use tally_domain::{EntitlementLookup, RecordKey};
use tally_domain::{EventKind, IdempotencyKey, MetricCode, RecordedEvent, TenantId, Timestamp, UsageRecord};
use uuid::Uuid;

/// What a create-or-replace did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome<T> {
    /// It did not exist and was created.
    Created(T),
    /// It existed and changed.
    Updated(T),
    /// It existed and the put changed nothing.
    Unchanged(T),
}

impl<T> PutOutcome<T> {
    /// The resulting value, whatever happened.
    pub fn into_inner(self) -> T {
        match self {
            PutOutcome::Created(v) | PutOutcome::Updated(v) | PutOutcome::Unchanged(v) => v,
        }
    }
    /// True for `Created`.
    pub fn is_created(&self) -> bool {
        matches!(self, PutOutcome::Created(_))
    }
}

/// Where a page of events continues: strictly older than this `(timestamp, id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventCursor {
    /// Timestamp of the last event shown.
    pub timestamp: Timestamp,
    /// Id of the last event shown.
    pub id: Uuid,
}

/// A filter over one tenant's events, newest first by `(timestamp, id)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this metric, when given.
    pub metric_code: Option<MetricCode>,
    /// `timestamp >= from`, when given.
    pub from: Option<Timestamp>,
    /// `timestamp < to`, when given.
    pub to: Option<Timestamp>,
    /// At most this many events (the caller bounds it by `PAGE_LEN_MAX` + 1).
    pub limit: u32,
    /// Continue after this event.
    pub after: Option<EventCursor>,
    /// Only events of this kind (usage or corrections), when given.
    pub kind: Option<EventKind>,
}

/// A period as a billing system reads it: its record, and whether it is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodRecord {
    /// The counter.
    pub record: UsageRecord,
    /// When the period was closed, while it is.
    pub closed_at: Option<Timestamp>,
    /// When it was last reopened (kept once it is closed again).
    pub reopened_at: Option<Timestamp>,
}

/// Where a page of periods continues: strictly after this `(period_start, metric_code)` in
/// the order `period_start DESC, metric_code DESC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodCursor {
    /// Start of the last period shown.
    pub period_start: Timestamp,
    /// Its metric.
    pub metric_code: MetricCode,
}

/// A filter over one tenant's periods, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeriodQuery {
    /// Only closed (`true`) or open (`false`) periods, when given.
    pub closed: Option<bool>,
    /// Only this metric, when given.
    pub metric_code: Option<MetricCode>,
    /// `period_start >= from`, when given.
    pub from: Option<Timestamp>,
    /// `period_start < to`, when given.
    pub to: Option<Timestamp>,
    /// At most this many (the caller bounds it).
    pub limit: u32,
    /// Continue after this period.
    pub after: Option<PeriodCursor>,
}

/// What a close did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseOutcome {
    /// The tenant's watermark afterwards.
    pub closed_before: Timestamp,
    /// Existing records newly closed.
    pub closed: u64,
}

/// How a close was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    /// By an operator: also closes again the periods reopened under `before`.
    Explicit,
    /// By the `close_after` job: leaves reopened periods open.
    Automatic,
}

/// A usage record's counter, for `tally verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordTotal {
    /// The record.
    pub id: Uuid,
    /// Its identity.
    pub key: RecordKey,
    /// Its counter.
    pub current_usage: i64,
}

/// The sum of the events that counted in one period, for `tally verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTotal {
    /// Whose.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// Start of the period the events counted in.
    pub period_start: Timestamp,
    /// Sum of their amounts (corrections are signed).
    pub amount_sum: i64,
    /// How many, corrections included.
    pub n_events: i64,
    /// How many of them are corrections.
    pub n_corrections: i64,
}

/// A usage reset, as the audit log holds it, for `tally verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetFact {
    /// Whose.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// Start of the period reset.
    pub period_start: Timestamp,
    /// What the counter held before the reset.
    pub previous_usage: i64,
}

/// Everything `tally verify` compares, read from the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyInputs {
    /// Every usage record's counter.
    pub records: Vec<RecordTotal>,
    /// The event sums per period.
    pub events: Vec<EventTotal>,
    /// Every audited reset.
    pub resets: Vec<ResetFact>,
}

/// A stored event found by its idempotency key.
pub type KeyedEvent = ((TenantId, IdempotencyKey), RecordedEvent);

/// What migrating one schema did, for `tally migrate`'s report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaReport {
    /// The schema (`public`, `tenant_<16 hex>`, or `main` for SQLite).
    pub schema: String,
    /// The tenant whose schema it is, in schema tenancy.
    pub tenant_id: Option<TenantId>,
    /// How many migrations were applied now.
    pub applied: u32,
    /// The schema's version afterwards.
    pub version: i64,
    /// Wall time spent on this schema.
    pub elapsed: std::time::Duration,
    /// Why it failed, if it did; the other schemas are migrated all the same.
    pub error: Option<String>,
}

/// A half-open time window `[from, to)`; either end may be open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// `>= from`, when given.
    pub from: Option<Timestamp>,
    /// `< to`, when given.
    pub to: Option<Timestamp>,
}

impl TimeRange {
    /// Whether `at` falls inside the window.
    pub fn contains(&self, at: Timestamp) -> bool {
        self.from.is_none_or(|from| at >= from) && self.to.is_none_or(|to| at < to)
    }
}

/// An admin search, already resolved to the concrete values it matches: a row matches when
/// its tenant is one of `tenant_ids` OR its metric is one of `metric_codes`. Both empty
/// matches nothing. (The service resolves a typed term against the tenants table and the
/// known metric codes, so that the big tables are only ever probed by equality.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminSearch {
    /// Tenants whose rows match.
    pub tenant_ids: Vec<TenantId>,
    /// Metrics whose rows match.
    pub metric_codes: Vec<MetricCode>,
}

impl AdminSearch {
    /// Whether a row of this tenant and metric matches.
    pub fn matches(&self, tenant: &TenantId, metric: &MetricCode) -> bool {
        self.tenant_ids.contains(tenant) || self.metric_codes.contains(metric)
    }
}

/// The column the admin records list is sorted by (ties broken by id, in the same direction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordSort {
    /// `created_at` (the default, newest first).
    #[default]
    CreatedAt,
    /// `period_end`.
    PeriodEnd,
    /// `current_usage`.
    CurrentUsage,
    /// `tenant_id`.
    TenantId,
    /// `metric_code`.
    MetricCode,
}

impl RecordSort {
    /// Every sort, in the order the admin UI shows its columns.
    pub const ALL: [RecordSort; 5] = [
        RecordSort::CreatedAt,
        RecordSort::PeriodEnd,
        RecordSort::CurrentUsage,
        RecordSort::TenantId,
        RecordSort::MetricCode,
    ];

    /// The sorted column's name: in `quota_usage_record`, and on the wire (`sort=...`).
    pub fn column(self) -> &'static str {
        match self {
            RecordSort::CreatedAt => "created_at",
            RecordSort::PeriodEnd => "period_end",
            RecordSort::CurrentUsage => "current_usage",
            RecordSort::TenantId => "tenant_id",
            RecordSort::MetricCode => "metric_code",
        }
    }

    /// The sort of the column named `name`.
    pub fn from_column(name: &str) -> Option<RecordSort> {
        RecordSort::ALL.into_iter().find(|s| s.column() == name)
    }

    /// The value of this sort's column in `record`: what a cursor after it holds.
    pub fn key_of(self, record: &UsageRecord) -> SortKey {
        match self {
            RecordSort::CreatedAt => SortKey::Time(record.created_at),
            RecordSort::PeriodEnd => SortKey::Time(record.period_end),
            RecordSort::CurrentUsage => SortKey::Int(record.current_usage),
            RecordSort::TenantId => SortKey::Text(record.tenant_id.as_str().to_owned()),
            RecordSort::MetricCode => SortKey::Text(record.metric_code.as_str().to_owned()),
        }
    }
}

/// The value of the sort column of the last row shown. Values of one kind order as the
/// stores order them: text by its bytes (`COLLATE "C"`, SQLite's `BINARY`), whatever the
/// database's collation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortKey {
    /// For `created_at` and `period_end`.
    Time(Timestamp),
    /// For `current_usage`.
    Int(i64),
    /// For `tenant_id` and `metric_code`.
    Text(String),
}

/// Where a page of the admin records list continues: strictly after `(key, id)` in the
/// list's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordCursor {
    /// The sort column's value in the last row shown (its kind matches the sort).
    pub key: SortKey,
    /// The id of the last row shown.
    pub id: Uuid,
}

/// The admin UI's list of usage records across every tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordListQuery {
    /// Only this metric, when given.
    pub metric_code: Option<MetricCode>,
    /// Only records whose `period_end` is in this window.
    pub period_end: TimeRange,
    /// Only records whose `created_at` is in this window.
    pub created_at: TimeRange,
    /// Only records matching this search, when given.
    pub search: Option<AdminSearch>,
    /// The sort column.
    pub sort: RecordSort,
    /// Largest first when true.
    pub descending: bool,
    /// Continue after this row.
    pub after: Option<RecordCursor>,
    /// At most this many rows (the caller bounds it by `PAGE_LEN_MAX` + 1).
    pub limit: u32,
}

/// The admin UI's list of usage events across every tenant, newest first by
/// `(created_at, id)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventListQuery {
    /// Only this metric, when given.
    pub metric_code: Option<MetricCode>,
    /// Only events whose `created_at` is in this window.
    pub created_at: TimeRange,
    /// Only events matching this search, when given.
    pub search: Option<AdminSearch>,
    /// Continue strictly after (older than) this `(created_at, id)`.
    pub after: Option<(Timestamp, Uuid)>,
    /// At most this many rows (the caller bounds it by `PAGE_LEN_MAX` + 1).
    pub limit: u32,
}

/// A signed-in admin UI session. The browser holds the token; the store holds its SHA-256
/// hash only, so a leaked table cannot be replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSession {
    /// Lowercase hex SHA-256 of the session token.
    pub token_hash: String,
    /// The token every form that posts must carry (double-submit is not enough: it is
    /// checked against this stored value).
    pub csrf_token: String,
    /// Who signed in: `password`, or `key:<key id>`.
    pub principal: String,
    /// When the session began.
    pub created_at: Timestamp,
    /// When the session stops working, whatever happens.
    pub expires_at: Timestamp,
}
