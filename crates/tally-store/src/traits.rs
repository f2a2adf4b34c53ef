//! The repository traits every adapter implements. Every usage call takes a `TenantId`.
//!
//! Adapters implement these with plain `async fn`; the service is generic over the store,
//! so there is no `dyn`. Each mutating admin operation takes the `AuditEntry` that the
//! adapter writes in the same transaction as the change (and only when something changed).

use std::future::Future;

use tally_domain::{
    ApiKey, AuditEntry, IdempotencyKey, MetricCode, MetricCode as Metric, MetricSpec, Name, Override, Period,
    Plan, PlanCode, PlanSpec, QuotaLimit, Reason, RecordKey, RecordedEvent, Reservation, Subscription,
    Tenant, TenantId, Timestamp, UsageRecord, Watermark,
};
use tally_domain::{Delivery, Webhook, WebhookId, WebhookSecret, WebhookSpec};
use tally_engine::{Answer, Ctx, WriteOp};
use uuid::Uuid;

use crate::cache::ConfigCache;
use crate::error::StoreError;
use crate::types::{
    AdminSession, CloseMode, CloseOutcome, EntitlementLookup, EventListQuery, EventQuery, PeriodQuery,
    PeriodRecord, PutOutcome, RecordListQuery, VerifyInputs,
};

/// The seed's usage repository: per-period counters.
pub trait UsageRepository: Send + Sync {
    /// The counter of `key` (0 when it has no record) and what open reservations hold
    /// against it at `now`: what `check` decides on, in one read.
    fn usage_now(
        &self,
        key: &RecordKey,
        now: Timestamp,
    ) -> impl Future<Output = Result<(i64, i64), StoreError>> + Send;

    /// Records of `metric` whose `period_start` is in `[from, to)`, newest first, at most `limit`.
    fn list_by_tenant_and_metric(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<UsageRecord>, StoreError>> + Send;

    /// The record whose period contains `at`; `NotFound` when none.
    fn get_current_period(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        at: Timestamp,
    ) -> impl Future<Output = Result<UsageRecord, StoreError>> + Send;

    /// The record with this id, of this tenant; `NotFound` when none.
    fn get_by_id(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> impl Future<Output = Result<UsageRecord, StoreError>> + Send;

    /// Inserts or replaces a record by id (the counter and `updated_at`); a second record
    /// for the same tenant, metric and period is a `Conflict`.
    fn save(&self, record: &UsageRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes the record with this id; `NotFound` when none.
    fn delete(&self, tenant: &TenantId, id: Uuid) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The record of `metric` for the period starting at `period_start`; `NotFound` when none.
    fn get_for_period(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period_start: Timestamp,
    ) -> impl Future<Output = Result<UsageRecord, StoreError>> + Send;
}

/// The seed's event recorder: the immutable audit trail of usage.
pub trait EventRecorder: Send + Sync {
    /// Appends one event as it is, touching no counter (imports use this); a taken
    /// idempotency key or id is a `Conflict`.
    fn record(&self, event: &RecordedEvent) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The events stored under these idempotency keys (of any tenants).
    fn find_events_by_keys(
        &self,
        keys: &[(TenantId, IdempotencyKey)],
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// One tenant's events, newest first by `(timestamp, id)`, filtered and keyset-paginated.
    fn get_events_for_metric(
        &self,
        tenant: &TenantId,
        query: &EventQuery,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;
}

/// The hot path's write side, and the reset beside it.
pub trait UsageWriter: Send + Sync {
    /// Decides and writes `ops` (usage, reservations, commits, releases) in arrival order,
    /// each on its own, in one transaction group-committed with whatever else waits (see
    /// `crate::write`): for each usage, the idempotency lookup first, then the event window,
    /// the subscription and the limit (read under the record's lock, counting open holds; a
    /// HARD refusal writes nothing). One answer per operation, in order; an `Err` means
    /// nothing of `ops` was written.
    fn write(
        &self,
        ops: Vec<WriteOp>,
        ctx: Ctx,
    ) -> impl Future<Output = Result<Vec<Answer>, StoreError>> + Send;

    /// `write`, all of `ops` or none: when a closed period refuses any of them, none is
    /// written and each answers that `PeriodClosed` (decided under the records' locks in the
    /// same transaction). The compatibility routes' multi-event requests use it.
    fn write_whole(
        &self,
        ops: Vec<WriteOp>,
        ctx: Ctx,
    ) -> impl Future<Output = Result<Vec<Answer>, StoreError>> + Send;

    /// Sets the counter of `metric` in `period` to zero (creating a zero record when none
    /// exists) and writes the audit entry `reset` (see `crate::reset_audit`) in the same
    /// transaction. Returns the record after the reset.
    fn reset_usage(
        &self,
        tenant: &TenantId,
        metric: &Metric,
        period: Period,
        now: Timestamp,
        key_id: Option<Uuid>,
    ) -> impl Future<Output = Result<UsageRecord, StoreError>> + Send;
}

/// Reservations: quota held before long work and settled after it. Holding, committing and
/// releasing are write operations (`UsageWriter::write`); these are the reads and the sweep.
pub trait ReservationStore: Send + Sync {
    /// The tenant's reservations open at `now`, oldest first (at most
    /// `RESERVATIONS_OPEN_MAX`).
    fn list_open_reservations(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<Reservation>, StoreError>> + Send;

    /// What the tenant's open reservations hold, per metric and period start.
    fn reserved_by_period(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<(MetricCode, Timestamp, i64)>, StoreError>> + Send;

    /// Marks at most `max` open reservations past their expiry as expired (their quota is
    /// free from `expires_at` on either way); returns how many it marked.
    fn expire_reservations(
        &self,
        now: Timestamp,
        max: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The metric catalog.
pub trait MetricStore: Send + Sync {
    /// Declares the metric, or changes it when `spec` differs; a put that changes nothing
    /// changes nothing, `updated_at` included. `audit` is written only when something changed.
    fn put_metric(
        &self,
        code: &MetricCode,
        spec: &MetricSpec,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<PutOutcome<tally_domain::Metric>, StoreError>> + Send;

    /// The metric, if declared.
    fn find_metric(
        &self,
        code: &MetricCode,
    ) -> impl Future<Output = Result<Option<tally_domain::Metric>, StoreError>> + Send;

    /// Every declared metric, by code.
    fn list_metrics(&self) -> impl Future<Output = Result<Vec<tally_domain::Metric>, StoreError>> + Send;
}

/// Threshold webhooks and their deliveries (the outbox is written by the usage transactions,
/// see `crate::outbox`). Webhooks are admin configuration and live in the base schema.
pub trait WebhookStore: Send + Sync {
    /// Registers the webhook or changes it. `secret` is used when the webhook is created, and
    /// replaces the stored one when `replace_secret`; a put that changes nothing changes
    /// nothing, `updated_at` included. `audit` is written only when something changed.
    fn put_webhook(
        &self,
        id: &WebhookId,
        spec: &WebhookSpec,
        secret: &WebhookSecret,
        replace_secret: bool,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<PutOutcome<Webhook>, StoreError>> + Send;

    /// The webhook, if registered.
    fn find_webhook(
        &self,
        id: &WebhookId,
    ) -> impl Future<Output = Result<Option<Webhook>, StoreError>> + Send;

    /// Every webhook, by id.
    fn list_webhooks(&self) -> impl Future<Output = Result<Vec<Webhook>, StoreError>> + Send;

    /// Removes the webhook with its threshold states and deliveries; false when it did not
    /// exist. `audit` is written only when it did.
    fn delete_webhook(
        &self,
        id: &WebhookId,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The webhook's deliveries, newest first, with ids below `before` when given; at most
    /// `limit`.
    fn list_deliveries(
        &self,
        webhook: &WebhookId,
        before: Option<Uuid>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send;

    /// One delivery of the webhook.
    fn find_delivery(
        &self,
        webhook: &WebhookId,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Delivery>, StoreError>> + Send;

    /// Makes the delivery pending and due at `now`, with a new retry window from `now`;
    /// `None` when the webhook has no such delivery. `audit` is written with it.
    fn redeliver(
        &self,
        webhook: &WebhookId,
        id: Uuid,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<Option<Delivery>, StoreError>> + Send;

    /// Claims at most `max` pending deliveries due at `now` (oldest due first), moving their
    /// `next_attempt_at` to `lease_until` so that no other worker takes them meanwhile; each
    /// comes with its webhook. Deliveries whose webhook is gone are not claimed.
    fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        max: i64,
    ) -> impl Future<Output = Result<Vec<(Delivery, Webhook)>, StoreError>> + Send;

    /// Stores the outcome of an attempt: `status`, `attempts`, `last_response_code`,
    /// `last_error`, `next_attempt_at` and `last_attempt_at` of `delivery`.
    fn record_attempt(&self, delivery: &Delivery) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Plans, with their version history.
pub trait PlanStore: Send + Sync {
    /// Creates the plan (version 1), or replaces it (version + 1 and a history entry) when
    /// `spec` differs; a put that changes nothing changes nothing, `updated_at` included.
    /// `audit` is written only when something changed.
    fn put_plan(
        &self,
        code: &PlanCode,
        spec: &PlanSpec,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<PutOutcome<Plan>, StoreError>> + Send;

    /// The plan, if it exists.
    fn find_plan(&self, code: &PlanCode) -> impl Future<Output = Result<Option<Plan>, StoreError>> + Send;

    /// Every plan, by code.
    fn list_plans(&self) -> impl Future<Output = Result<Vec<Plan>, StoreError>> + Send;

    /// Every version of the plan, newest first (empty when the plan never existed).
    fn list_plan_versions(
        &self,
        code: &PlanCode,
    ) -> impl Future<Output = Result<Vec<Plan>, StoreError>> + Send;

    /// Deletes the plan; `NotFound` when missing, `Conflict` while a tenant subscribes to it.
    fn delete_plan(
        &self,
        code: &PlanCode,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Tenants, their subscriptions and their overrides.
pub trait TenantStore: Send + Sync {
    /// Creates the tenant (and, in schema tenancy, its schema) or renames it.
    fn put_tenant(
        &self,
        tenant_id: &TenantId,
        name: &Name,
        now: Timestamp,
    ) -> impl Future<Output = Result<PutOutcome<Tenant>, StoreError>> + Send;

    /// The tenant, if it exists.
    fn find_tenant(
        &self,
        tenant_id: &TenantId,
    ) -> impl Future<Output = Result<Option<Tenant>, StoreError>> + Send;

    /// Tenants ordered by id, strictly after `after`, at most `limit`.
    fn list_tenants(
        &self,
        after: Option<&TenantId>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Tenant>, StoreError>> + Send;

    /// Subscribes the tenant to `plan`. Without `anchor` an existing subscription keeps its
    /// anchor and a new one is anchored at `now`; `started_at` changes only with the plan.
    /// `NotFound` for an unknown tenant or plan.
    fn put_subscription(
        &self,
        tenant_id: &TenantId,
        plan: &PlanCode,
        anchor: Option<Timestamp>,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<Subscription, StoreError>> + Send;

    /// The tenant's subscription, if any.
    fn find_subscription(
        &self,
        tenant_id: &TenantId,
    ) -> impl Future<Output = Result<Option<Subscription>, StoreError>> + Send;

    /// Ends the subscription; `NotFound` when there is none.
    fn delete_subscription(
        &self,
        tenant_id: &TenantId,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Tenants subscribed to `plan`, by id, at most `limit`.
    fn list_subscribers(
        &self,
        plan: &PlanCode,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<TenantId>, StoreError>> + Send;

    /// Sets the tenant's own limit for one metric; `NotFound` for an unknown tenant.
    fn put_override(
        &self,
        tenant_id: &TenantId,
        limit: &QuotaLimit,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes the tenant's override of `metric`; `NotFound` when there is none.
    fn delete_override(
        &self,
        tenant_id: &TenantId,
        metric: &MetricCode,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The tenant's overrides, by metric.
    fn list_overrides(
        &self,
        tenant_id: &TenantId,
    ) -> impl Future<Output = Result<Vec<Override>, StoreError>> + Send;

    /// The tenant's subscription, plan and overrides, resolved.
    fn find_entitlement(
        &self,
        tenant_id: &TenantId,
    ) -> impl Future<Output = Result<EntitlementLookup, StoreError>> + Send;
}

/// API keys, stored as hashes only.
pub trait KeyStore: Send + Sync {
    /// Stores a new key and its `key.create` audit entry.
    fn insert_key(
        &self,
        key: &ApiKey,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The key whose hash this is, revoked or not.
    fn find_key_by_hash(
        &self,
        key_hash: &str,
    ) -> impl Future<Output = Result<Option<ApiKey>, StoreError>> + Send;

    /// Every key, oldest first.
    fn list_keys(&self) -> impl Future<Output = Result<Vec<ApiKey>, StoreError>> + Send;

    /// Revokes the key; `NotFound` when there is no such key or it is already revoked.
    fn revoke_key(
        &self,
        id: Uuid,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Notes that the key was used at `now`.
    fn touch_key(&self, id: Uuid, now: Timestamp) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The admin audit log and the inputs of `tally verify`.
pub trait AuditStore: Send + Sync {
    /// Entries newest first (by id), for one tenant when given, strictly before `before`.
    fn list_audit(
        &self,
        tenant_id: Option<&TenantId>,
        before: Option<Uuid>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, StoreError>> + Send;

    /// Every record's counter, every period's event sum, and every audited reset.
    fn verify_inputs(&self) -> impl Future<Output = Result<VerifyInputs, StoreError>> + Send;

    /// Answers when the store is reachable.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A number that grows with every configuration change, so that caches of plans,
/// subscriptions, overrides, tenants and keys — in this process or any other sharing the
/// store — can tell cheaply whether they are stale.
pub trait ConfigVersion: Send + Sync {
    /// The current version. Every committed change to a plan, tenant, subscription, override
    /// or key increases it (in the same transaction as the change); usage never does.
    fn config_version(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// The store's configuration cache (shared by its clones; see `crate::cache`).
    fn config_cache(&self) -> &ConfigCache;
}

/// What the read-only admin UI reads across tenants, and its sign-in state.
pub trait AdminUiStore: Send + Sync {
    /// Usage records of every tenant, filtered, sorted and keyset-paginated (see
    /// `RecordListQuery`).
    fn list_records_admin(
        &self,
        query: &RecordListQuery,
    ) -> impl Future<Output = Result<Vec<UsageRecord>, StoreError>> + Send;

    /// Usage events of every tenant, newest first by `(created_at, id)`, filtered and
    /// keyset-paginated (see `EventListQuery`).
    fn list_events_admin(
        &self,
        query: &EventListQuery,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// One event of one tenant, if it exists.
    fn find_event(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send;

    /// Ids of the tenants whose id starts with `prefix` (case-sensitive), by id, at most
    /// `limit`.
    fn list_tenant_ids_by_prefix(
        &self,
        prefix: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<TenantId>, StoreError>> + Send;

    /// Every metric code that any plan version or any override names, sorted, without
    /// duplicates: the metrics usage can have been recorded for.
    fn list_metric_codes(&self) -> impl Future<Output = Result<Vec<MetricCode>, StoreError>> + Send;

    /// Stores the admin UI password's hash (a PHC string) and its audit entry, replacing
    /// any earlier one.
    fn set_admin_password(
        &self,
        phc_hash: &str,
        audit: &AuditEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The admin UI password's hash, if one was set.
    fn find_admin_password(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Stores a new session; a taken `token_hash` is a `Conflict`.
    fn insert_admin_session(
        &self,
        session: &AdminSession,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The session with this token hash, if it exists and has not expired at `now`.
    fn find_admin_session(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<AdminSession>, StoreError>> + Send;

    /// Ends the session (signing out); ending one that does not exist is not an error.
    fn delete_admin_session(&self, token_hash: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes every session expired at `now`; returns how many.
    fn delete_expired_admin_sessions(
        &self,
        now: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Closed periods: the tenant's watermark, reopening, and the periods billing reads.
pub trait PeriodStore: Send + Sync {
    /// Moves the tenant's watermark to `before` if that is later (never back) and closes
    /// every existing record with `period_end <= before` that is open: in `Explicit` mode
    /// also those reopened, in `Automatic` mode not. Takes the tenant's row lock first, the
    /// lock every write into a period that may be closed shares, so no in-flight batch lands
    /// an event in a period once this has committed. Writes `period.close` to the audit log
    /// in the same transaction, only when something changed. `NotFound` for an unknown tenant.
    fn close_periods(
        &self,
        tenant: &TenantId,
        before: Timestamp,
        mode: CloseMode,
        now: Timestamp,
        key_id: Option<Uuid>,
    ) -> impl Future<Output = Result<CloseOutcome, StoreError>> + Send;

    /// Opens the closed period `period` of `metric` again (creating its zero record when the
    /// watermark closed it without one), with `period.reopen` in the audit log. `Conflict`
    /// when it is not closed, `NotFound` for an unknown tenant.
    fn reopen_period(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period: Period,
        reason: &Reason,
        now: Timestamp,
        key_id: Option<Uuid>,
    ) -> impl Future<Output = Result<PeriodRecord, StoreError>> + Send;

    /// One page of the tenant's periods, `period_start DESC, metric_code DESC`.
    fn list_periods(
        &self,
        tenant: &TenantId,
        query: &PeriodQuery,
    ) -> impl Future<Output = Result<Vec<PeriodRecord>, StoreError>> + Send;

    /// The tenant's watermark, if it ever closed a period.
    fn find_watermark(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Option<Watermark>, StoreError>> + Send;
}

/// Everything a Tally store does. Cloning is cheap (a pool handle).
pub trait Store:
    UsageRepository
    + EventRecorder
    + UsageWriter
    + PlanStore
    + MetricStore
    + ReservationStore
    + WebhookStore
    + TenantStore
    + KeyStore
    + AuditStore
    + ConfigVersion
    + AdminUiStore
    + PeriodStore
    + Clone
    + 'static
{
}

impl<S> Store for S where
    S: UsageRepository
        + EventRecorder
        + UsageWriter
        + PlanStore
        + MetricStore
        + ReservationStore
        + WebhookStore
        + TenantStore
        + KeyStore
        + AuditStore
        + ConfigVersion
        + AdminUiStore
        + PeriodStore
        + Clone
        + 'static
{
}
