//! Tally's domain: tenants, metrics, usage events and records, quota limits, plans,
//! subscriptions and periods. No I/O, no clock: callers pass `now`.
#![warn(missing_docs)]

pub mod admin;
pub mod closing;
pub mod error;
pub mod ids;
pub mod limits;
pub mod metric;
pub mod period;
pub mod quota;
pub mod reservation;
pub mod time;
pub mod usage;
pub mod webhook;

pub use admin::{ApiKey, AuditAction, AuditEntry, KeyScope, RateLimit};
pub use closing::{CloseAfter, CorrectionRequest, Reason, RecordClosing, Watermark};
pub use error::DomainError;
pub use ids::{Amount, IdempotencyKey, Metadata, MetricCode, Name, PlanCode, TenantId, WebhookId};
pub use metric::{Metric, MetricKind, MetricSpec};
pub use period::{Period, PeriodKind};
pub use quota::{
    Entitlement, EntitlementLookup, LimitEnforcement, Override, Plan, PlanSpec, QuotaLimit, Subscription,
    Tenant,
};
pub use reservation::{CommitRequest, Reservation, ReservationStatus, ReserveOutcome, ReserveRequest, Ttl};
pub use time::Timestamp;
pub use usage::{
    Change, EventKind, EventReceipt, RecordKey, RecordedEvent, UsageError, UsageEvent, UsageOutcome,
    UsageRecord, UsageRequest, decide, decide_with_reserved,
};
pub use webhook::{
    Delivery, DeliveryData, DeliveryStatus, RetryPolicy, Webhook, WebhookEventType, WebhookSecret,
    WebhookSpec, WebhookUrl,
};
