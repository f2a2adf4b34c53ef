//! The contract suite: one set of behaviours every store adapter must show, instantiated
//! by each adapter's tests with `contract_suite!`. A new store behaviour starts life here.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Duration;
use tally_domain::{
    Amount, ApiKey, AuditAction, AuditEntry, Change, CommitRequest, CorrectionRequest, EventKind,
    EventReceipt, IdempotencyKey, KeyScope, LimitEnforcement, Metadata, MetricCode, MetricKind, MetricSpec,
    Name, Period, PeriodKind, PlanCode, PlanSpec, QuotaLimit, Reason, RecordedEvent, ReservationStatus,
    ReserveRequest, TenantId, Timestamp, Ttl, UsageError, UsageEvent, UsageOutcome, UsageRecord,
    UsageRequest,
};
use tally_domain::{DeliveryStatus, WebhookEventType, WebhookId, WebhookSecret, WebhookSpec};
use uuid::Uuid;

use tally_domain::ReserveOutcome;
use tally_store::{
    AdminSearch, AdminSession, Answer, CloseMode, CloseOutcome, Ctx, EntitlementLookup, EventCursor,
    EventListQuery, EventQuery, PeriodCursor, PeriodQuery, PutOutcome, RecordCursor, RecordListQuery,
    RecordSort, SortKey, Store, StoreError, TimeRange, UsageWriter, WriteOp,
};

/// The event-age window of the suite's writes: wide, so that only the cases about the
/// window meet it.
pub const CONTRACT_EVENT_AGE: Duration = Duration::days(36_500);

/// The suite's per-operation calls, over `UsageWriter::write`.
pub trait WriteExt: UsageWriter {
    /// Usage requests in order, in one write.
    fn apply_usage(
        &self,
        requests: &[UsageRequest],
        now: Timestamp,
    ) -> impl std::future::Future<Output = Result<Vec<Result<UsageOutcome, UsageError>>, StoreError>> + Send
    {
        let ops = requests.iter().cloned().map(WriteOp::Usage).collect();
        async move {
            let answers = self.write(ops, Ctx::new(now, CONTRACT_EVENT_AGE)).await?;
            Ok(answers.into_iter().map(|a| a.into_usage().expect("a usage answers a usage")).collect())
        }
    }

    /// One reservation.
    fn reserve(
        &self,
        req: &ReserveRequest,
        now: Timestamp,
    ) -> impl std::future::Future<Output = Result<Result<ReserveOutcome, UsageError>, StoreError>> + Send
    {
        let op = WriteOp::Reserve(req.clone());
        async move {
            Ok(one(self.write(vec![op], Ctx::new(now, CONTRACT_EVENT_AGE)).await?)
                .into_reserve()
                .expect("a reserve answers a reserve"))
        }
    }

    /// One commit of a reservation.
    fn commit_reservation(
        &self,
        req: &CommitRequest,
        now: Timestamp,
    ) -> impl std::future::Future<Output = Result<Result<UsageOutcome, UsageError>, StoreError>> + Send {
        let op = WriteOp::Commit(req.clone());
        async move {
            Ok(one(self.write(vec![op], Ctx::new(now, CONTRACT_EVENT_AGE)).await?)
                .into_usage()
                .expect("a commit answers a usage"))
        }
    }

    /// One release of a reservation.
    fn release_reservation(
        &self,
        tenant: &TenantId,
        id: Uuid,
        now: Timestamp,
    ) -> impl std::future::Future<Output = Result<Result<(), UsageError>, StoreError>> + Send {
        let op = WriteOp::Release { tenant_id: tenant.clone(), reservation_id: id };
        async move {
            Ok(one(self.write(vec![op], Ctx::new(now, CONTRACT_EVENT_AGE)).await?)
                .into_release()
                .expect("a release answers a release"))
        }
    }
}

impl<S: UsageWriter + ?Sized> WriteExt for S {}

fn one(answers: Vec<Answer>) -> Answer {
    assert_eq!(answers.len(), 1, "one operation, one answer");
    answers.into_iter().next().expect("one answer")
}

/// Instantiates every contract case as a `#[tokio::test]` for the store that `$make` (an
/// async closure or function returning the store) builds afresh for each case.
#[macro_export]
macro_rules! contract_suite {
    ($make:expr) => {
        $crate::contract_suite!(@cases $make;
            plan_put_creates_then_versions_and_an_equal_put_changes_nothing,
            plan_versions_are_kept_newest_first,
            a_plan_with_subscribers_cannot_be_deleted,
            tenants_are_created_renamed_and_listed_by_id,
            subscription_keeps_its_anchor_and_started_at_moves_only_with_the_plan,
            without_a_subscription_usage_is_refused,
            overrides_replace_plan_entries_and_add_metrics,
            entitlement_lookup_tells_missing_tenant_from_no_subscription,
            recording_usage_counts_it_and_appends_the_event,
            hard_limit_refusal_writes_nothing_on_a_cold_period,
            hard_limit_allows_exactly_up_to_the_limit,
            soft_limit_records_past_the_limit_and_says_exceeded,
            a_metric_without_a_limit_is_quota_not_found,
            unknown_tenant_is_tenant_not_found,
            replay_returns_the_original_answer_and_records_nothing,
            a_reused_key_with_another_payload_is_a_conflict,
            a_replay_past_the_window_answers_the_original_and_a_new_key_is_out_of_window,
            a_replay_answers_the_original_after_the_plan_lost_the_metric,
            usage_now_counts_the_record_and_the_open_holds,
            find_events_by_keys_returns_the_stored_events_of_each_tenant,
            a_refused_request_consumes_no_key,
            batch_items_apply_in_order_each_on_its_own,
            a_key_repeated_inside_a_batch_replays_the_earlier_item,
            a_lowered_limit_applies_to_the_next_request,
            usage_counts_in_the_period_of_its_timestamp,
            reset_sets_the_counter_to_zero_and_is_audited,
            usage_repository_operations_follow_the_seed,
            events_are_newest_first_filtered_and_keyset_paginated,
            event_recorder_appends_without_touching_counters,
            metadata_and_timestamps_round_trip_exactly,
            keys_are_stored_found_listed_touched_and_revoked,
            audit_log_is_newest_first_and_filtered_by_tenant,
            verify_inputs_hold_records_event_sums_and_resets,
            one_tenant_never_sees_another_tenants_rows,
            config_version_grows_with_every_configuration_change_and_only_then,
            concurrent_writers_never_overshoot_a_hard_limit_on_a_warm_record,
            concurrent_writers_never_overshoot_a_hard_limit_on_a_cold_period,
            concurrent_retries_over_twenty_keys_record_twenty_events,
            records_list_sorts_by_each_column_both_ways_with_ties_broken_by_id,
            records_list_pages_cover_every_record_exactly_once_in_every_order,
            records_list_refuses_a_cursor_of_another_kind_than_its_sort,
            records_list_filters_by_metric_and_by_period_end_and_created_at_windows,
            records_list_search_matches_a_tenant_or_a_metric,
            events_list_is_newest_first_and_pages_cover_every_event_exactly_once,
            events_list_filters_by_metric_created_at_window_and_search,
            an_empty_search_matches_no_record_and_no_event,
            find_event_returns_the_tenants_event_and_none_for_a_miss_or_another_tenant,
            tenant_prefix_search_is_case_sensitive_and_takes_percent_and_underscore_literally,
            metric_codes_come_from_plans_old_plan_versions_and_overrides_sorted_without_duplicates,
            admin_password_is_set_replaced_and_audited_only_when_it_changes,
            admin_sessions_are_found_until_they_expire_and_deleted_one_by_one_or_in_bulk,
            a_taken_admin_session_token_hash_is_a_conflict,
            metric_catalog_declares_changes_and_lists_metrics,
            a_gauge_goes_up_and_down_never_below_zero_and_never_resets,
            a_replayed_set_answers_the_original_and_a_set_never_replays_an_add,
            concurrent_gauge_changes_never_overshoot_a_hard_limit_or_go_below_zero,
            a_reservation_holds_quota_until_it_is_committed,
            released_and_expired_reservations_free_their_quota,
            a_replayed_reservation_holds_nothing_more,
            concurrent_reservations_never_hold_more_than_a_hard_limit,
            reservations_are_found_only_under_their_own_tenant,
            a_reservation_on_a_gauge_holds_room_under_its_limit,
            webhooks_are_registered_replaced_listed_and_deleted,
            concurrent_usage_crossing_a_threshold_writes_exactly_one_delivery,
            a_gauge_oscillating_within_its_rearm_band_fires_once,
            webhooks_fire_only_for_crossings_after_registration_and_on_commits,
            deliveries_are_claimed_once_retried_failed_and_redelivered,
            a_dedup_key_of_the_compatibility_routes_replays_whatever_the_payload,
            a_correction_moves_any_open_period_by_a_signed_amount_past_the_limit,
            a_correction_below_zero_or_on_a_gauge_is_refused_and_writes_nothing,
            a_replayed_correction_answers_the_original_and_another_payload_conflicts,
            closing_moves_the_watermark_forward_only_and_closes_the_records_under_it,
            writes_into_a_closed_period_are_refused_and_replays_still_answer,
            a_reopened_period_stays_open_until_an_explicit_close,
            periods_are_listed_newest_first_filtered_and_paginated,
            a_commit_into_a_closed_period_is_refused_and_releases_its_hold,
            writers_racing_a_close_never_land_in_the_closed_period,
            a_whole_write_is_refused_whole_by_a_closed_period
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store = ($make)().await;
                $crate::$case(store).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------
// Fixtures

pub fn t(s: &str) -> Timestamp {
    tally_domain::time::parse_rfc3339(s).unwrap()
}

/// The fixed "now" of the suite, and the anchor of its subscriptions.
pub fn now() -> Timestamp {
    t("2026-11-29T10:00:00Z")
}

pub fn anchor() -> Timestamp {
    t("2026-11-15T00:00:00Z")
}

pub fn tenant(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

pub fn metric(s: &str) -> MetricCode {
    MetricCode::parse(s).unwrap()
}

pub fn plan_code(s: &str) -> PlanCode {
    PlanCode::parse(s).unwrap()
}

pub fn limit(m: &str, value: Option<i64>, enforcement: LimitEnforcement, period: PeriodKind) -> QuotaLimit {
    QuotaLimit::new(metric(m), value, enforcement, period).unwrap()
}

pub fn spec(name: &str, limits: Vec<QuotaLimit>) -> PlanSpec {
    PlanSpec::new(Name::parse(name).unwrap(), limits).unwrap()
}

pub fn audit(action: AuditAction, tenant_id: Option<&TenantId>) -> AuditEntry {
    AuditEntry::new(now(), None, action, tenant_id.cloned(), serde_json::json!({}))
}

pub fn req(tenant_id: &str, m: &str, amount: i64) -> UsageRequest {
    UsageRequest {
        tenant_id: tenant(tenant_id),
        metric_code: metric(m),
        change: Change::add(Amount::new(amount).unwrap()),
        idempotency_key: None,
        metadata: Metadata::default(),
        timestamp: None,
    }
}

pub fn keyed(mut r: UsageRequest, key: &str) -> UsageRequest {
    r.idempotency_key = Some(IdempotencyKey::parse(key).unwrap());
    r
}

/// Creates plan `code` with `limits`, tenant `tenant_id` subscribed to it at `anchor()`.
pub async fn setup<S: Store>(store: &S, tenant_id: &str, code: &str, limits: Vec<QuotaLimit>) {
    let tid = tenant(tenant_id);
    store
        .put_plan(&plan_code(code), &spec(code, limits), now(), &audit(AuditAction::PlanPut, None))
        .await
        .unwrap();
    store.put_tenant(&tid, &Name::parse(tenant_id).unwrap(), now()).await.unwrap();
    store
        .put_subscription(
            &tid,
            &plan_code(code),
            Some(anchor()),
            now(),
            &audit(AuditAction::SubscriptionPut, Some(&tid)),
        )
        .await
        .unwrap();
}

fn hard(m: &str, value: i64) -> QuotaLimit {
    limit(m, Some(value), LimitEnforcement::Hard, PeriodKind::Month)
}

pub async fn apply_one<S: Store>(store: &S, r: UsageRequest) -> Result<UsageOutcome, UsageError> {
    apply_one_at(store, r, now()).await
}

pub async fn apply_one_at<S: Store>(
    store: &S,
    r: UsageRequest,
    at: Timestamp,
) -> Result<UsageOutcome, UsageError> {
    let mut out = store.apply_usage(&[r], at).await.unwrap();
    assert_eq!(out.len(), 1);
    out.remove(0)
}

async fn all_events<S: Store>(store: &S, tenant_id: &str) -> Vec<RecordedEvent> {
    let q = EventQuery { metric_code: None, from: None, to: None, limit: 1_000, after: None, kind: None };
    store.get_events_for_metric(&tenant(tenant_id), &q).await.unwrap()
}

async fn current<S: Store>(store: &S, tenant_id: &str, m: &str) -> Option<i64> {
    match store.get_current_period(&tenant(tenant_id), &metric(m), now()).await {
        Ok(r) => Some(r.current_usage),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------------------
// Plans, tenants, subscriptions, overrides

pub async fn plan_put_creates_then_versions_and_an_equal_put_changes_nothing<S: Store>(store: S) {
    let code = plan_code("pro");
    let a = audit(AuditAction::PlanPut, None);
    let v1 = store.put_plan(&code, &spec("Pro", vec![hard("api_calls", 10)]), now(), &a).await.unwrap();
    let PutOutcome::Created(p1) = v1 else { panic!("first put creates: {v1:?}") };
    assert_eq!((p1.version, p1.created_at, p1.updated_at), (1, now(), now()));

    let later = now() + Duration::seconds(5);
    let same = store.put_plan(&code, &spec("Pro", vec![hard("api_calls", 10)]), later, &a).await.unwrap();
    let PutOutcome::Unchanged(p_same) = same else { panic!("equal put is unchanged: {same:?}") };
    assert_eq!((p_same.version, p_same.updated_at), (1, now()));

    let changed = store.put_plan(&code, &spec("Pro", vec![hard("api_calls", 20)]), later, &a).await.unwrap();
    let PutOutcome::Updated(p2) = changed else { panic!("a change updates: {changed:?}") };
    assert_eq!((p2.version, p2.created_at, p2.updated_at), (2, now(), later));
    assert_eq!(p2.limits, vec![hard("api_calls", 20)]);

    let found = store.find_plan(&code).await.unwrap().unwrap();
    assert_eq!(found, p2);
    assert_eq!(store.find_plan(&plan_code("nope")).await.unwrap(), None);
    store.put_plan(&plan_code("free"), &spec("Free", vec![]), now(), &a).await.unwrap();
    let codes: Vec<String> =
        store.list_plans().await.unwrap().into_iter().map(|p| p.code.to_string()).collect();
    assert_eq!(codes, ["free", "pro"]);
    // Only the two changes were audited, not the equal put.
    let entries = store.list_audit(None, None, 100).await.unwrap();
    assert_eq!(entries.iter().filter(|e| e.action == "plan.put").count(), 3);
}

pub async fn plan_versions_are_kept_newest_first<S: Store>(store: S) {
    let code = plan_code("pro");
    let a = audit(AuditAction::PlanPut, None);
    for value in [1, 2, 3] {
        store.put_plan(&code, &spec("Pro", vec![hard("api_calls", value)]), now(), &a).await.unwrap();
    }
    let versions = store.list_plan_versions(&code).await.unwrap();
    let seen: Vec<(i64, Option<i64>)> = versions.iter().map(|p| (p.version, p.limits[0].limit)).collect();
    assert_eq!(seen, [(3, Some(3)), (2, Some(2)), (1, Some(1))]);
    assert!(store.list_plan_versions(&plan_code("never")).await.unwrap().is_empty());
}

pub async fn a_plan_with_subscribers_cannot_be_deleted<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    let del = audit(AuditAction::PlanDelete, None);
    let err = store.delete_plan(&plan_code("pro"), &del).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.list_subscribers(&plan_code("pro"), 100).await.unwrap(), vec![tenant("acme")]);
    store.delete_subscription(&tenant("acme"), &audit(AuditAction::SubscriptionDelete, None)).await.unwrap();
    store.delete_plan(&plan_code("pro"), &del).await.unwrap();
    assert_eq!(store.find_plan(&plan_code("pro")).await.unwrap(), None);
    let err = store.delete_plan(&plan_code("pro"), &del).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

pub async fn tenants_are_created_renamed_and_listed_by_id<S: Store>(store: S) {
    let name = |s: &str| Name::parse(s).unwrap();
    let created = store.put_tenant(&tenant("beta"), &name("Beta"), now()).await.unwrap();
    assert!(created.is_created());
    let same = store.put_tenant(&tenant("beta"), &name("Beta"), now()).await.unwrap();
    assert!(matches!(same, PutOutcome::Unchanged(_)), "{same:?}");
    let renamed = store.put_tenant(&tenant("beta"), &name("Beta GmbH"), now()).await.unwrap();
    let PutOutcome::Updated(t) = renamed else { panic!("rename updates") };
    assert_eq!((t.name.as_str(), t.created_at), ("Beta GmbH", now()));
    for id in ["alpha", "gamma", "delta"] {
        store.put_tenant(&tenant(id), &name(id), now()).await.unwrap();
    }
    let page1 = store.list_tenants(None, 2).await.unwrap();
    let ids1: Vec<&str> = page1.iter().map(|t| t.tenant_id.as_str()).collect();
    assert_eq!(ids1, ["alpha", "beta"]);
    let page2 = store.list_tenants(Some(&page1[1].tenant_id), 10).await.unwrap();
    let ids2: Vec<&str> = page2.iter().map(|t| t.tenant_id.as_str()).collect();
    assert_eq!(ids2, ["delta", "gamma"]);
    let found = store.find_tenant(&tenant("gamma")).await.unwrap().unwrap();
    assert_eq!(found.name.as_str(), "gamma");
    assert_eq!(store.find_tenant(&tenant("nobody")).await.unwrap(), None);
    // Internal ids (which name schemas) are unique.
    let all = store.list_tenants(None, 10).await.unwrap();
    let mut internal: Vec<u64> = all.iter().map(|t| t.internal_id).collect();
    internal.sort_unstable();
    internal.dedup();
    assert_eq!(internal.len(), 4);
}

pub async fn subscription_keeps_its_anchor_and_started_at_moves_only_with_the_plan<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    let a = audit(AuditAction::PlanPut, None);
    store.put_plan(&plan_code("big"), &spec("Big", vec![hard("api_calls", 100)]), now(), &a).await.unwrap();
    let sa = audit(AuditAction::SubscriptionPut, None);
    let later = now() + Duration::hours(1);
    let same_plan =
        store.put_subscription(&tenant("acme"), &plan_code("pro"), None, later, &sa).await.unwrap();
    assert_eq!((same_plan.anchor, same_plan.started_at), (anchor(), now()));
    let moved = store.put_subscription(&tenant("acme"), &plan_code("big"), None, later, &sa).await.unwrap();
    assert_eq!((moved.plan_code.as_str(), moved.anchor, moved.started_at), ("big", anchor(), later));
    let new_anchor = t("2026-11-20T00:00:00Z");
    let re = store
        .put_subscription(&tenant("acme"), &plan_code("big"), Some(new_anchor), later, &sa)
        .await
        .unwrap();
    assert_eq!((re.anchor, re.started_at), (new_anchor, later));
    assert_eq!(store.find_subscription(&tenant("acme")).await.unwrap(), Some(re));

    store.put_tenant(&tenant("fresh"), &Name::parse("Fresh").unwrap(), now()).await.unwrap();
    let fresh = store.put_subscription(&tenant("fresh"), &plan_code("pro"), None, later, &sa).await.unwrap();
    assert_eq!((fresh.anchor, fresh.started_at), (later, later));

    let err =
        store.put_subscription(&tenant("ghost"), &plan_code("pro"), None, later, &sa).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err =
        store.put_subscription(&tenant("acme"), &plan_code("ghost"), None, later, &sa).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

pub async fn without_a_subscription_usage_is_refused<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    apply_one(&store, req("acme", "api_calls", 1)).await.unwrap();
    let del = audit(AuditAction::SubscriptionDelete, None);
    store.delete_subscription(&tenant("acme"), &del).await.unwrap();
    let err = apply_one(&store, req("acme", "api_calls", 1)).await.unwrap_err();
    assert_eq!(err, UsageError::NoSubscription { tenant: tenant("acme") });
    let err = store.delete_subscription(&tenant("acme"), &del).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(all_events(&store, "acme").await.len(), 1);
}

pub async fn overrides_replace_plan_entries_and_add_metrics<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    let oa = audit(AuditAction::OverridePut, None);
    store.put_override(&tenant("acme"), &hard("api_calls", 1), &oa).await.unwrap();
    let extra = limit("exports", None, LimitEnforcement::None, PeriodKind::Day);
    store.put_override(&tenant("acme"), &extra, &oa).await.unwrap();
    // Setting it again replaces it.
    store.put_override(&tenant("acme"), &hard("api_calls", 2), &oa).await.unwrap();
    let overrides = store.list_overrides(&tenant("acme")).await.unwrap();
    assert_eq!(overrides, vec![hard("api_calls", 2), extra.clone()]);

    assert!(apply_one(&store, req("acme", "api_calls", 2)).await.is_ok());
    let err = apply_one(&store, req("acme", "api_calls", 1)).await.unwrap_err();
    assert!(matches!(err, UsageError::QuotaExceeded { limit: 2, .. }), "{err:?}");
    let out = apply_one(&store, req("acme", "exports", 7)).await.unwrap();
    assert_eq!((out.limit, out.enforcement), (None, LimitEnforcement::None));
    assert_eq!(out.period.start(), t("2026-11-29T00:00:00Z"));

    let od = audit(AuditAction::OverrideDelete, None);
    store.delete_override(&tenant("acme"), &metric("exports"), &od).await.unwrap();
    let err = store.delete_override(&tenant("acme"), &metric("exports"), &od).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store.put_override(&tenant("ghost"), &extra, &oa).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = apply_one(&store, req("acme", "exports", 1)).await.unwrap_err();
    assert_eq!(err, UsageError::QuotaNotFound { metric: metric("exports") });
}

pub async fn entitlement_lookup_tells_missing_tenant_from_no_subscription<S: Store>(store: S) {
    assert_eq!(store.find_entitlement(&tenant("ghost")).await.unwrap(), EntitlementLookup::TenantMissing);
    store.put_tenant(&tenant("bare"), &Name::parse("Bare").unwrap(), now()).await.unwrap();
    assert_eq!(store.find_entitlement(&tenant("bare")).await.unwrap(), EntitlementLookup::NoSubscription);
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    let EntitlementLookup::Found(e) = store.find_entitlement(&tenant("acme")).await.unwrap() else {
        panic!("subscribed tenant has an entitlement")
    };
    assert_eq!(e.subscription.anchor, anchor());
    assert_eq!(e.limit_for(&metric("api_calls")), Some(&hard("api_calls", 10)));
}

// ---------------------------------------------------------------------------------------
// Applying usage

pub async fn recording_usage_counts_it_and_appends_the_event<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    let first = apply_one(&store, req("acme", "api_calls", 5)).await.unwrap();
    assert_eq!(
        (first.current_usage, first.remaining, first.exceeded, first.replayed),
        (5, Some(95), false, false)
    );
    assert_eq!((first.period.start(), first.period.end()), (anchor(), t("2026-12-15T00:00:00Z")));
    let second = apply_one(&store, req("acme", "api_calls", 7)).await.unwrap();
    assert_eq!(second.current_usage, 12);
    assert_eq!(current(&store, "acme", "api_calls").await, Some(12));
    let events = all_events(&store, "acme").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event.id, second.event_id, "newest first");
    assert_eq!(
        (events[0].event.amount, events[0].event.timestamp, events[0].event.created_at),
        (7, now(), now())
    );
}

pub async fn hard_limit_refusal_writes_nothing_on_a_cold_period<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    let err = apply_one(&store, req("acme", "api_calls", 11)).await.unwrap_err();
    let UsageError::QuotaExceeded { current, limit, requested, period, .. } = err else { panic!("{err:?}") };
    assert_eq!((current, limit, requested, period.end()), (0, 10, 11, t("2026-12-15T00:00:00Z")));
    assert_eq!(current_or_none(&store).await, None, "no record was created");
    assert!(all_events(&store, "acme").await.is_empty());
}

async fn current_or_none<S: Store>(store: &S) -> Option<i64> {
    current(store, "acme", "api_calls").await
}

pub async fn hard_limit_allows_exactly_up_to_the_limit<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    assert_eq!(apply_one(&store, req("acme", "api_calls", 10)).await.unwrap().remaining, Some(0));
    let err = apply_one(&store, req("acme", "api_calls", 1)).await.unwrap_err();
    assert!(matches!(err, UsageError::QuotaExceeded { current: 10, .. }), "{err:?}");
    assert_eq!(current_or_none(&store).await, Some(10));
    assert_eq!(all_events(&store, "acme").await.len(), 1);
}

pub async fn soft_limit_records_past_the_limit_and_says_exceeded<S: Store>(store: S) {
    let soft = limit("storage_bytes", Some(10), LimitEnforcement::Soft, PeriodKind::Month);
    setup(&store, "acme", "pro", vec![soft]).await;
    let a = apply_one(&store, req("acme", "storage_bytes", 10)).await.unwrap();
    assert!(!a.exceeded);
    let b = apply_one(&store, req("acme", "storage_bytes", 5)).await.unwrap();
    assert_eq!(
        (b.current_usage, b.exceeded, b.remaining, b.enforcement),
        (15, true, Some(0), LimitEnforcement::Soft)
    );
}

pub async fn a_metric_without_a_limit_is_quota_not_found<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    let err = apply_one(&store, req("acme", "exports", 1)).await.unwrap_err();
    assert_eq!(err, UsageError::QuotaNotFound { metric: metric("exports") });
}

pub async fn unknown_tenant_is_tenant_not_found<S: Store>(store: S) {
    let err = apply_one(&store, req("ghost", "api_calls", 1)).await.unwrap_err();
    assert_eq!(err, UsageError::TenantNotFound { tenant: tenant("ghost") });
}

pub async fn replay_returns_the_original_answer_and_records_nothing<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    let mut r = keyed(req("acme", "api_calls", 3), "req-1");
    r.metadata = Metadata::new(serde_json::json!({"a": 1, "b": [1, 2]})).unwrap();
    let first = apply_one(&store, r.clone()).await.unwrap();
    apply_one(&store, req("acme", "api_calls", 4)).await.unwrap();
    // Same payload, metadata keys in another order: a replay with the counters as they were.
    r.metadata = Metadata::new(serde_json::json!({"b": [1, 2], "a": 1})).unwrap();
    let again = apply_one_at(&store, r, now() + Duration::seconds(30)).await.unwrap();
    assert_eq!(again, UsageOutcome { replayed: true, ..first.clone() });
    assert_eq!(current_or_none(&store).await, Some(7));
    assert_eq!(all_events(&store, "acme").await.len(), 2);
    // The same key on another tenant is another key.
    setup(&store, "beta", "pro", vec![hard("api_calls", 100)]).await;
    let other = apply_one(&store, keyed(req("beta", "api_calls", 3), "req-1")).await.unwrap();
    assert!(!other.replayed);
}

/// The idempotency lookup comes before the event window (API.md, "Order of checks").
pub async fn a_replay_past_the_window_answers_the_original_and_a_new_key_is_out_of_window<S: Store>(
    store: S,
) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    let window = Duration::days(35);
    let stamped = UsageRequest { timestamp: Some(now()), ..keyed(req("acme", "api_calls", 3), "late-1") };
    let first = store.write(vec![WriteOp::Usage(stamped.clone())], Ctx::new(now(), window)).await.unwrap();
    let first = one(first).into_usage().unwrap().unwrap();
    let later = now() + Duration::days(40);
    let again = store.write(vec![WriteOp::Usage(stamped.clone())], Ctx::new(later, window)).await.unwrap();
    assert_eq!(one(again).into_usage().unwrap(), Ok(UsageOutcome { replayed: true, ..first }));
    let fresh = UsageRequest { idempotency_key: Some(IdempotencyKey::parse("late-2").unwrap()), ..stamped };
    let refused = store.write(vec![WriteOp::Usage(fresh)], Ctx::new(later, window)).await.unwrap();
    assert!(matches!(one(refused).into_usage().unwrap(), Err(UsageError::EventOutOfWindow { .. })));
    assert_eq!(all_events(&store, "acme").await.len(), 1);
}

/// A replay answers the original even when the limit it was decided on is gone.
pub async fn a_replay_answers_the_original_after_the_plan_lost_the_metric<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    let r = keyed(req("acme", "api_calls", 3), "before-change");
    let first = apply_one(&store, r.clone()).await.unwrap();
    store
        .put_plan(
            &plan_code("pro"),
            &spec("pro", vec![hard("exports", 5)]),
            now(),
            &audit(AuditAction::PlanPut, None),
        )
        .await
        .unwrap();
    let again = apply_one(&store, r).await.unwrap();
    assert_eq!(again, UsageOutcome { replayed: true, ..first });
    let unkeyed = apply_one(&store, req("acme", "api_calls", 1)).await;
    assert!(matches!(unkeyed, Err(UsageError::QuotaNotFound { .. })), "{unkeyed:?}");
}

pub async fn usage_now_counts_the_record_and_the_open_holds<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    let key = tally_store::RecordKey {
        tenant_id: tenant("acme"),
        metric_code: metric("api_calls"),
        period: PeriodKind::Month.containing(now(), anchor()).unwrap(),
    };
    assert_eq!(store.usage_now(&key, now()).await.unwrap(), (0, 0));
    apply_one(&store, req("acme", "api_calls", 7)).await.unwrap();
    store.reserve(&reserve_req("acme", "api_calls", 5, 60), now()).await.unwrap().unwrap();
    assert_eq!(store.usage_now(&key, now()).await.unwrap(), (7, 5));
    // A hold past its expiry holds nothing, swept or not.
    assert_eq!(store.usage_now(&key, now() + Duration::seconds(61)).await.unwrap(), (7, 0));
}

pub async fn find_events_by_keys_returns_the_stored_events_of_each_tenant<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    setup(&store, "beta", "pro", vec![hard("api_calls", 100)]).await;
    apply_one(&store, keyed(req("acme", "api_calls", 1), "k1")).await.unwrap();
    apply_one(&store, keyed(req("beta", "api_calls", 2), "k1")).await.unwrap();
    let key = |t: &str, k: &str| (tenant(t), IdempotencyKey::parse(k).unwrap());
    let mut found = store
        .find_events_by_keys(&[key("acme", "k1"), key("beta", "k1"), key("acme", "missing")])
        .await
        .unwrap();
    found.sort_by(|a, b| a.event.tenant_id.cmp(&b.event.tenant_id));
    let amounts: Vec<(String, i64)> =
        found.iter().map(|e| (e.event.tenant_id.to_string(), e.event.amount)).collect();
    assert_eq!(amounts, vec![("acme".to_owned(), 1), ("beta".to_owned(), 2)]);
    assert!(store.find_events_by_keys(&[]).await.unwrap().is_empty());
}

pub async fn a_reused_key_with_another_payload_is_a_conflict<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100), hard("exports", 5)]).await;
    apply_one(&store, keyed(req("acme", "api_calls", 3), "k")).await.unwrap();
    let conflicts = [
        keyed(req("acme", "api_calls", 4), "k"),
        keyed(req("acme", "exports", 3), "k"),
        UsageRequest { timestamp: Some(now()), ..keyed(req("acme", "api_calls", 3), "k") },
        UsageRequest {
            metadata: Metadata::new(serde_json::json!({"x": 1})).unwrap(),
            ..keyed(req("acme", "api_calls", 3), "k")
        },
    ];
    for r in conflicts {
        let err = apply_one(&store, r).await.unwrap_err();
        assert!(matches!(err, UsageError::IdempotencyConflict { .. }), "{err:?}");
    }
    assert_eq!(current_or_none(&store).await, Some(3));
    assert_eq!(all_events(&store, "acme").await.len(), 1);
}

pub async fn a_refused_request_consumes_no_key<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 5)]).await;
    let err = apply_one(&store, keyed(req("acme", "api_calls", 6), "k")).await.unwrap_err();
    assert!(matches!(err, UsageError::QuotaExceeded { .. }));
    // Whatever the payload, the key is free.
    let ok = apply_one(&store, keyed(req("acme", "api_calls", 2), "k")).await.unwrap();
    assert!(!ok.replayed);
    assert_eq!(ok.current_usage, 2);
}

pub async fn batch_items_apply_in_order_each_on_its_own<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10), hard("exports", 100)]).await;
    let batch = [
        req("acme", "api_calls", 6),
        req("acme", "api_calls", 6),
        req("acme", "exports", 1),
        req("acme", "nope", 1),
        req("acme", "api_calls", 4),
    ];
    let out = store.apply_usage(&batch, now()).await.unwrap();
    assert_eq!(out.len(), 5);
    assert_eq!(out[0].as_ref().map(|o| o.current_usage), Ok(6));
    assert!(matches!(out[1], Err(UsageError::QuotaExceeded { current: 6, .. })), "{:?}", out[1]);
    assert_eq!(out[2].as_ref().map(|o| o.current_usage), Ok(1));
    assert!(matches!(out[3], Err(UsageError::QuotaNotFound { .. })));
    assert_eq!(out[4].as_ref().map(|o| o.current_usage), Ok(10));
    assert_eq!(current_or_none(&store).await, Some(10));
    assert_eq!(all_events(&store, "acme").await.len(), 3);
    assert!(store.apply_usage(&[], now()).await.unwrap().is_empty());
}

pub async fn a_key_repeated_inside_a_batch_replays_the_earlier_item<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    let batch = [
        keyed(req("acme", "api_calls", 20), "refused"),
        keyed(req("acme", "api_calls", 2), "refused"),
        keyed(req("acme", "api_calls", 3), "k"),
        keyed(req("acme", "api_calls", 3), "k"),
        keyed(req("acme", "api_calls", 4), "k"),
    ];
    let out = store.apply_usage(&batch, now()).await.unwrap();
    assert!(matches!(out[0], Err(UsageError::QuotaExceeded { .. })));
    assert_eq!(out[1].as_ref().map(|o| (o.current_usage, o.replayed)), Ok((2, false)));
    let first = out[2].clone().unwrap();
    assert_eq!(out[3], Ok(UsageOutcome { replayed: true, ..first }));
    assert!(matches!(out[4], Err(UsageError::IdempotencyConflict { .. })));
    assert_eq!(current_or_none(&store).await, Some(5));
}

pub async fn a_lowered_limit_applies_to_the_next_request<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    apply_one(&store, req("acme", "api_calls", 50)).await.unwrap();
    let a = audit(AuditAction::PlanPut, None);
    store.put_plan(&plan_code("pro"), &spec("pro", vec![hard("api_calls", 50)]), now(), &a).await.unwrap();
    let err = apply_one(&store, req("acme", "api_calls", 1)).await.unwrap_err();
    assert!(matches!(err, UsageError::QuotaExceeded { current: 50, limit: 50, .. }), "{err:?}");
}

pub async fn usage_counts_in_the_period_of_its_timestamp<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    let mut old = req("acme", "api_calls", 2);
    old.timestamp = Some(t("2026-11-10T00:00:00Z"));
    let out = apply_one(&store, old).await.unwrap();
    assert_eq!((out.period.start(), out.period.end()), (t("2026-10-15T00:00:00Z"), anchor()));
    apply_one(&store, req("acme", "api_calls", 3)).await.unwrap();
    let history = store
        .list_by_tenant_and_metric(&tenant("acme"), &metric("api_calls"), None, None, 100)
        .await
        .unwrap();
    let seen: Vec<(Timestamp, i64)> = history.iter().map(|r| (r.period_start, r.current_usage)).collect();
    assert_eq!(seen, [(anchor(), 3), (t("2026-10-15T00:00:00Z"), 2)]);
}

pub async fn reset_sets_the_counter_to_zero_and_is_audited<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    apply_one(&store, req("acme", "api_calls", 10)).await.unwrap();
    let period = PeriodKind::Month.containing(now(), anchor()).unwrap();
    let key_id = Uuid::now_v7();
    let record =
        store.reset_usage(&tenant("acme"), &metric("api_calls"), period, now(), Some(key_id)).await.unwrap();
    assert_eq!((record.current_usage, record.period_start), (0, anchor()));
    assert!(apply_one(&store, req("acme", "api_calls", 10)).await.is_ok());
    let entries = store.list_audit(Some(&tenant("acme")), None, 100).await.unwrap();
    let reset = entries.iter().find(|e| e.action == "reset").expect("reset audited");
    assert_eq!(reset.key_id, Some(key_id));
    assert_eq!(reset.details["previous_usage"], 10);
    assert_eq!(reset.details["metric_code"], "api_calls");
    // A period with no record yet: a zero record.
    let next = PeriodKind::Month.containing(t("2026-12-20T00:00:00Z"), anchor()).unwrap();
    let zero = store.reset_usage(&tenant("acme"), &metric("api_calls"), next, now(), None).await.unwrap();
    assert_eq!((zero.current_usage, zero.period_start), (0, next.start()));
}

pub async fn usage_repository_operations_follow_the_seed<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    let (acme, calls) = (tenant("acme"), metric("api_calls"));
    let mut periods = Vec::new();
    for start in
        ["2026-08-15T00:00:00Z", "2026-09-15T00:00:00Z", "2026-10-15T00:00:00Z", "2026-11-15T00:00:00Z"]
    {
        periods.push(PeriodKind::Month.containing(t(start), anchor()).unwrap());
    }
    let mut saved = Vec::new();
    for (i, p) in periods.iter().enumerate() {
        let mut r = UsageRecord::new(acme.clone(), calls.clone(), *p, now());
        r.current_usage = i64::try_from(i).unwrap() * 10;
        store.save(&r).await.unwrap();
        saved.push(r);
    }
    // save() replaces by id.
    saved[3].current_usage = 99;
    saved[3].updated_at = now() + Duration::seconds(1);
    store.save(&saved[3]).await.unwrap();
    assert_eq!(store.get_by_id(&acme, saved[3].id).await.unwrap(), saved[3]);
    // A second record for the same period is a conflict.
    let dup = UsageRecord::new(acme.clone(), calls.clone(), periods[3], now());
    assert!(matches!(store.save(&dup).await.unwrap_err(), StoreError::Conflict(_)));

    assert_eq!(store.get_current_period(&acme, &calls, now()).await.unwrap(), saved[3]);
    assert_eq!(store.get_for_period(&acme, &calls, periods[1].start()).await.unwrap(), saved[1]);
    assert!(matches!(
        store.get_for_period(&acme, &calls, t("2020-01-01T00:00:00Z")).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
    let all = store.list_by_tenant_and_metric(&acme, &calls, None, None, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.id).collect::<Vec<_>>(),
        saved.iter().rev().map(|r| r.id).collect::<Vec<_>>()
    );
    let window = store
        .list_by_tenant_and_metric(&acme, &calls, Some(periods[1].start()), Some(periods[3].start()), 100)
        .await
        .unwrap();
    assert_eq!(window.iter().map(|r| r.id).collect::<Vec<_>>(), vec![saved[2].id, saved[1].id]);
    let limited = store.list_by_tenant_and_metric(&acme, &calls, None, None, 1).await.unwrap();
    assert_eq!(limited.len(), 1);

    store.delete(&acme, saved[0].id).await.unwrap();
    assert!(matches!(store.get_by_id(&acme, saved[0].id).await.unwrap_err(), StoreError::NotFound(_)));
    assert!(matches!(store.delete(&acme, saved[0].id).await.unwrap_err(), StoreError::NotFound(_)));
}

pub async fn events_are_newest_first_filtered_and_keyset_paginated<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 1_000), hard("exports", 1_000)]).await;
    let base = t("2026-11-29T09:00:00Z");
    // Five events at distinct minutes, plus two that share one timestamp.
    for i in 0..5i64 {
        let mut r = req("acme", if i % 2 == 0 { "api_calls" } else { "exports" }, i + 1);
        r.timestamp = Some(base + Duration::minutes(i));
        apply_one(&store, r).await.unwrap();
    }
    for amount in [10, 11] {
        let mut r = req("acme", "api_calls", amount);
        r.timestamp = Some(base + Duration::minutes(10));
        apply_one(&store, r).await.unwrap();
    }
    let all = all_events(&store, "acme").await;
    let amounts: Vec<i64> = all.iter().map(|e| e.event.amount).collect();
    assert_eq!(amounts, [11, 10, 5, 4, 3, 2, 1], "by timestamp then id, descending");

    let q = |metric_code: Option<&str>, from: Option<Timestamp>, to: Option<Timestamp>, limit: u32, after| {
        EventQuery { metric_code: metric_code.map(metric), from, to, limit, after, kind: None }
    };
    let acme = tenant("acme");
    let exports =
        store.get_events_for_metric(&acme, &q(Some("exports"), None, None, 100, None)).await.unwrap();
    assert_eq!(exports.iter().map(|e| e.event.amount).collect::<Vec<_>>(), [4, 2]);
    let window = store
        .get_events_for_metric(
            &acme,
            &q(None, Some(base + Duration::minutes(1)), Some(base + Duration::minutes(4)), 100, None),
        )
        .await
        .unwrap();
    assert_eq!(
        window.iter().map(|e| e.event.amount).collect::<Vec<_>>(),
        [4, 3, 2],
        "from inclusive, to exclusive"
    );

    // Pages of two, following the cursor, see every event exactly once.
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..10 {
        let page = store.get_events_for_metric(&acme, &q(None, None, None, 2, after)).await.unwrap();
        seen.extend(page.iter().map(|e| e.event.amount));
        if page.len() < 2 {
            break;
        }
        let last = &page[page.len() - 1].event;
        after = Some(EventCursor { timestamp: last.timestamp, id: last.id });
    }
    assert_eq!(seen, amounts);
}

pub async fn event_recorder_appends_without_touching_counters<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    let out = apply_one(&store, keyed(req("acme", "api_calls", 1), "taken")).await.unwrap();
    let mut copy = all_events(&store, "acme").await.remove(0);
    assert_eq!(copy.event.id, out.event_id);
    copy.event.id = Uuid::now_v7();
    copy.event.idempotency_key = None;
    copy.event.amount = 4;
    store.record(&copy).await.unwrap();
    assert_eq!(all_events(&store, "acme").await.len(), 2);
    assert_eq!(current_or_none(&store).await, Some(1), "record() counts nothing");
    // A taken idempotency key is a conflict.
    copy.event.id = Uuid::now_v7();
    copy.event.idempotency_key = Some(IdempotencyKey::parse("taken").unwrap());
    assert!(matches!(store.record(&copy).await.unwrap_err(), StoreError::Conflict(_)));
}

pub async fn metadata_and_timestamps_round_trip_exactly<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    let mut r = keyed(req("acme", "api_calls", 1), "k-u");
    r.idempotency_key = Some(IdempotencyKey::parse("k~!{}").unwrap());
    r.metadata = Metadata::new(serde_json::json!({
        "endpoint": "/search", "unicode": "é中😀", "nested": {"n": 1.5, "list": [null, true]},
        "script": "<script>alert(1)</script>", "quote": "it's \"quoted\""
    }))
    .unwrap();
    r.timestamp = Some(t("2026-11-29T09:59:59.123456Z"));
    apply_one(&store, r.clone()).await.unwrap();
    let e = all_events(&store, "acme").await.remove(0);
    assert_eq!(e.event.metadata, r.metadata);
    assert_eq!(e.event.timestamp, t("2026-11-29T09:59:59.123456Z"));
    assert_eq!(e.event.idempotency_key, r.idempotency_key);
    assert!(e.receipt.timestamp_explicit);
    // And the replay of it compares equal after the round trip.
    assert!(apply_one(&store, r).await.unwrap().replayed);
}

pub async fn keys_are_stored_found_listed_touched_and_revoked<S: Store>(store: S) {
    store.put_tenant(&tenant("acme"), &Name::parse("Acme").unwrap(), now()).await.unwrap();
    let admin = ApiKey {
        id: Uuid::now_v7(),
        scope: KeyScope::Admin,
        key_hash: "a".repeat(64),
        created_at: now(),
        last_used_at: None,
        revoked_at: None,
        rate_limit: None,
    };
    let scoped = ApiKey {
        id: Uuid::now_v7(),
        scope: KeyScope::Tenant(tenant("acme")),
        key_hash: "b".repeat(64),
        created_at: now(),
        last_used_at: None,
        revoked_at: None,
        // A key's own rate limit round-trips.
        rate_limit: Some(tally_domain::RateLimit::parse("600/m").unwrap()),
    };
    let ka = audit(AuditAction::KeyCreate, None);
    store.insert_key(&admin, &ka).await.unwrap();
    store.insert_key(&scoped, &ka).await.unwrap();
    assert_eq!(store.find_key_by_hash(&"b".repeat(64)).await.unwrap(), Some(scoped.clone()));
    assert_eq!(store.find_key_by_hash(&"c".repeat(64)).await.unwrap(), None);
    let later = now() + Duration::minutes(2);
    store.touch_key(admin.id, later).await.unwrap();
    let listed = store.list_keys().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].last_used_at, Some(later));
    let kr = audit(AuditAction::KeyRevoke, None);
    store.revoke_key(scoped.id, later, &kr).await.unwrap();
    let revoked = store.find_key_by_hash(&"b".repeat(64)).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(later));
    assert!(matches!(store.revoke_key(scoped.id, later, &kr).await.unwrap_err(), StoreError::NotFound(_)));
    assert!(matches!(
        store.revoke_key(Uuid::now_v7(), later, &kr).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
    let actions: Vec<String> =
        store.list_audit(None, None, 10).await.unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(actions, ["key.revoke", "key.create", "key.create"]);
}

pub async fn audit_log_is_newest_first_and_filtered_by_tenant<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 10)]).await;
    setup(&store, "beta", "pro", vec![hard("api_calls", 10)]).await;
    let all = store.list_audit(None, None, 100).await.unwrap();
    // plan.put (acme's setup), subscription.put, plan.put is unchanged for beta, subscription.put.
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["subscription.put", "subscription.put", "plan.put"]);
    let beta = store.list_audit(Some(&tenant("beta")), None, 100).await.unwrap();
    assert_eq!(beta.len(), 1);
    assert_eq!(beta[0].tenant_id, Some(tenant("beta")));
    let page = store.list_audit(None, Some(all[0].id), 1).await.unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), vec![all[1].id]);
}

pub async fn verify_inputs_hold_records_event_sums_and_resets<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    apply_one(&store, req("acme", "api_calls", 5)).await.unwrap();
    apply_one(&store, req("acme", "api_calls", 6)).await.unwrap();
    let period = PeriodKind::Month.containing(now(), anchor()).unwrap();
    store.reset_usage(&tenant("acme"), &metric("api_calls"), period, now(), None).await.unwrap();
    apply_one(&store, req("acme", "api_calls", 2)).await.unwrap();
    let inputs = store.verify_inputs().await.unwrap();
    assert_eq!(inputs.records.len(), 1);
    assert_eq!(inputs.records[0].current_usage, 2);
    assert_eq!(inputs.records[0].key.period, period);
    assert_eq!(inputs.events.len(), 1);
    assert_eq!((inputs.events[0].amount_sum, inputs.events[0].n_events), (13, 3));
    assert_eq!(inputs.events[0].period_start, anchor());
    assert_eq!(inputs.resets.len(), 1);
    assert_eq!((inputs.resets[0].previous_usage, inputs.resets[0].period_start), (11, anchor()));
}

pub async fn one_tenant_never_sees_another_tenants_rows<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    setup(&store, "beta", "pro", vec![hard("api_calls", 100)]).await;
    apply_one(&store, req("acme", "api_calls", 5)).await.unwrap();
    let rec = store.get_current_period(&tenant("acme"), &metric("api_calls"), now()).await.unwrap();
    let beta = tenant("beta");
    assert!(matches!(store.get_by_id(&beta, rec.id).await.unwrap_err(), StoreError::NotFound(_)));
    assert!(matches!(store.delete(&beta, rec.id).await.unwrap_err(), StoreError::NotFound(_)));
    assert!(all_events(&store, "beta").await.is_empty());
    assert!(
        store
            .list_by_tenant_and_metric(&beta, &metric("api_calls"), None, None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(current(&store, "beta", "api_calls").await, None);
}

pub async fn config_version_grows_with_every_configuration_change_and_only_then<S: Store>(store: S) {
    let mut last = store.config_version().await.unwrap();
    let (acme, a) = (tenant("acme"), |action| audit(action, None));
    macro_rules! grows {
        ($what:expr, $op:expr) => {{
            $op;
            let now_version = store.config_version().await.unwrap();
            assert!(
                now_version > last,
                "{} did not raise the config version ({} -> {})",
                $what,
                last,
                now_version
            );
            last = now_version;
        }};
    }
    macro_rules! stays {
        ($what:expr, $op:expr) => {{
            $op;
            let now_version = store.config_version().await.unwrap();
            assert_eq!(now_version, last, "{} raised the config version", $what);
        }};
    }
    let pro = plan_code("pro");
    grows!(
        "plan create",
        store
            .put_plan(&pro, &spec("Pro", vec![hard("api_calls", 10)]), now(), &a(AuditAction::PlanPut))
            .await
            .unwrap()
    );
    stays!(
        "an equal plan put",
        store
            .put_plan(&pro, &spec("Pro", vec![hard("api_calls", 10)]), now(), &a(AuditAction::PlanPut))
            .await
            .unwrap()
    );
    grows!(
        "plan change",
        store
            .put_plan(&pro, &spec("Pro", vec![hard("api_calls", 20)]), now(), &a(AuditAction::PlanPut))
            .await
            .unwrap()
    );
    grows!("tenant create", store.put_tenant(&acme, &Name::parse("Acme").unwrap(), now()).await.unwrap());
    grows!(
        "subscription",
        store
            .put_subscription(&acme, &pro, Some(anchor()), now(), &a(AuditAction::SubscriptionPut))
            .await
            .unwrap()
    );
    grows!(
        "override",
        store.put_override(&acme, &hard("exports", 1), &a(AuditAction::OverridePut)).await.unwrap()
    );
    stays!("usage", apply_one(&store, req("acme", "api_calls", 1)).await.unwrap());
    stays!("a read", store.find_entitlement(&acme).await.unwrap());
    grows!(
        "override removal",
        store.delete_override(&acme, &metric("exports"), &a(AuditAction::OverrideDelete)).await.unwrap()
    );
    let key = ApiKey {
        id: Uuid::now_v7(),
        scope: KeyScope::Tenant(acme.clone()),
        key_hash: "d".repeat(64),
        created_at: now(),
        last_used_at: None,
        revoked_at: None,
        rate_limit: None,
    };
    grows!("key create", store.insert_key(&key, &a(AuditAction::KeyCreate)).await.unwrap());
    stays!("key touch", store.touch_key(key.id, now()).await.unwrap());
    grows!("key revoke", store.revoke_key(key.id, now(), &a(AuditAction::KeyRevoke)).await.unwrap());
    grows!(
        "subscription removal",
        store.delete_subscription(&acme, &a(AuditAction::SubscriptionDelete)).await.unwrap()
    );
    grows!("plan removal", store.delete_plan(&pro, &a(AuditAction::PlanDelete)).await.unwrap());
    // Another handle on the same store sees the same version.
    assert_eq!(store.clone().config_version().await.unwrap(), last);
}

// ---------------------------------------------------------------------------------------
// Concurrency

/// 64 tasks, each recording amount 1 ten times, against a HARD limit of 500 on one record.
async fn hammer<S: Store>(store: S, warm: bool) {
    const TASKS: usize = 64;
    const TRIES_PER_TASK: usize = 10;
    setup(&store, "acme", "pro", vec![hard("api_calls", 500)]).await;
    if warm {
        let period = PeriodKind::Month.containing(now(), anchor()).unwrap();
        store.save(&UsageRecord::new(tenant("acme"), metric("api_calls"), period, now())).await.unwrap();
    }
    let accepted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let (store, accepted, refused) = (store.clone(), accepted.clone(), refused.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..TRIES_PER_TASK {
                match apply_one(&store, req("acme", "api_calls", 1)).await {
                    Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                    Err(UsageError::QuotaExceeded { .. }) => refused.fetch_add(1, Ordering::Relaxed),
                    Err(e) => panic!("unexpected {e:?}"),
                };
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 500);
    assert_eq!(refused.load(Ordering::Relaxed), TASKS * TRIES_PER_TASK - 500);
    assert_eq!(current_or_none(&store).await, Some(500));
    let inputs = store.verify_inputs().await.unwrap();
    assert_eq!(inputs.records.len(), 1);
    assert_eq!((inputs.events[0].n_events, inputs.events[0].amount_sum), (500, 500));
}

pub async fn concurrent_writers_never_overshoot_a_hard_limit_on_a_warm_record<S: Store>(store: S) {
    hammer(store, true).await;
}

pub async fn concurrent_writers_never_overshoot_a_hard_limit_on_a_cold_period<S: Store>(store: S) {
    hammer(store, false).await;
}

pub async fn concurrent_retries_over_twenty_keys_record_twenty_events<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 1_000)]).await;
    let mut handles = Vec::new();
    for i in 0..200usize {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            apply_one(&store, keyed(req("acme", "api_calls", 1), &format!("key-{}", i % 20))).await
        }));
    }
    let mut fresh = 0;
    for h in handles {
        let out = h.await.unwrap().unwrap();
        if !out.replayed {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 20);
    assert_eq!(all_events(&store, "acme").await.len(), 20);
    assert_eq!(current_or_none(&store).await, Some(20));
}

// ---------------------------------------------------------------------------------------
// The admin UI: lists across tenants, the tenant and metric look-ups, password, sessions

/// The tenants of the admin fixtures. By bytes (`COLLATE "C"`) the upper-case id sorts first;
/// most locales would sort it last, so text sorts are pinned to byte order.
const ADMIN_TENANTS: [&str; 3] = ["Zulu", "acme", "beta"];
const ADMIN_METRICS: [&str; 2] = ["api_calls", "exports"];
const RECORD_SORTS: [RecordSort; 5] = [
    RecordSort::CreatedAt,
    RecordSort::PeriodEnd,
    RecordSort::CurrentUsage,
    RecordSort::TenantId,
    RecordSort::MetricCode,
];

async fn put_tenants<S: Store>(store: &S, ids: &[&str]) {
    for id in ids {
        store.put_tenant(&tenant(id), &Name::parse(id).unwrap(), now()).await.unwrap();
    }
}

/// Twelve records, one per tenant, metric and month, saved as they are. Every sort column
/// has ties (four created_at values, three usages, two period ends), and ids are random, so
/// ties are broken in no particular insertion order.
pub async fn admin_records<S: Store>(store: &S) -> Vec<UsageRecord> {
    put_tenants(store, &ADMIN_TENANTS).await;
    let months = [
        (t("2026-10-01T00:00:00Z"), t("2026-11-01T00:00:00Z")),
        (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z")),
    ];
    let mut records = Vec::new();
    for tenant_id in ADMIN_TENANTS {
        for m in ADMIN_METRICS {
            for (period_start, period_end) in months {
                let idx = i64::try_from(records.len()).unwrap();
                let created_at = period_start + Duration::minutes(idx % 4);
                let record = UsageRecord {
                    id: Uuid::new_v4(),
                    tenant_id: tenant(tenant_id),
                    metric_code: metric(m),
                    current_usage: (idx % 3) * 10,
                    period_start,
                    period_end,
                    created_at,
                    updated_at: created_at,
                };
                store.save(&record).await.unwrap();
                records.push(record);
            }
        }
    }
    records
}

fn records_query(sort: RecordSort, descending: bool, limit: u32) -> RecordListQuery {
    RecordListQuery {
        metric_code: None,
        period_end: TimeRange::default(),
        created_at: TimeRange::default(),
        search: None,
        sort,
        descending,
        after: None,
        limit,
    }
}

/// The ids of the `records` that `keep` keeps, in the list's order: by the sort column, then
/// by id, both descending or both ascending.
fn expected_records(
    records: &[UsageRecord],
    keep: impl Fn(&UsageRecord) -> bool,
    sort: RecordSort,
    descending: bool,
) -> Vec<Uuid> {
    let mut kept: Vec<&UsageRecord> = records.iter().filter(|r| keep(r)).collect();
    kept.sort_by_key(|r| (sort.key_of(r), r.id));
    if descending {
        kept.reverse();
    }
    kept.into_iter().map(|r| r.id).collect()
}

fn record_ids(records: &[UsageRecord]) -> Vec<Uuid> {
    records.iter().map(|r| r.id).collect()
}

/// Every page of `query` (whose limit is the page length), following the cursor.
async fn all_record_pages<S: Store>(store: &S, mut query: RecordListQuery) -> Vec<Vec<Uuid>> {
    let mut pages = Vec::new();
    for _ in 0..100 {
        let page = store.list_records_admin(&query).await.unwrap();
        assert!(page.len() <= query.limit as usize);
        let Some(last) = page.last() else { break };
        query.after = Some(RecordCursor { key: query.sort.key_of(last), id: last.id });
        let full = page.len() == query.limit as usize;
        pages.push(record_ids(&page));
        if !full {
            break;
        }
    }
    pages
}

fn search(tenants: &[&str], metrics: &[&str]) -> Option<AdminSearch> {
    Some(AdminSearch {
        tenant_ids: tenants.iter().map(|id| tenant(id)).collect(),
        metric_codes: metrics.iter().map(|m| metric(m)).collect(),
    })
}

pub async fn records_list_sorts_by_each_column_both_ways_with_ties_broken_by_id<S: Store>(store: S) {
    let records = admin_records(&store).await;
    for sort in RECORD_SORTS {
        for descending in [true, false] {
            let listed = store.list_records_admin(&records_query(sort, descending, 100)).await.unwrap();
            assert_eq!(
                record_ids(&listed),
                expected_records(&records, |_| true, sort, descending),
                "{sort:?}, descending: {descending}"
            );
        }
    }
    // Rows come back whole and exact.
    let listed = store.list_records_admin(&records_query(RecordSort::CreatedAt, true, 100)).await.unwrap();
    for row in &listed {
        assert_eq!(Some(row), records.iter().find(|r| r.id == row.id));
    }
    let limited = store.list_records_admin(&records_query(RecordSort::TenantId, false, 3)).await.unwrap();
    let first_three = expected_records(&records, |_| true, RecordSort::TenantId, false)[..3].to_vec();
    assert_eq!(record_ids(&limited), first_three, "the limit keeps the first rows");
    assert!(limited.iter().all(|r| r.tenant_id == tenant("Zulu")), "upper case sorts first, by bytes");
}

pub async fn records_list_pages_cover_every_record_exactly_once_in_every_order<S: Store>(store: S) {
    let records = admin_records(&store).await;
    for sort in RECORD_SORTS {
        for descending in [true, false] {
            let pages = all_record_pages(&store, records_query(sort, descending, 5)).await;
            let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
            assert_eq!(sizes, [5, 5, 2], "{sort:?}, descending: {descending}");
            assert_eq!(
                pages.concat(),
                expected_records(&records, |_| true, sort, descending),
                "{sort:?}, descending: {descending}"
            );
        }
    }
    // A page that ends exactly at the last row is followed by an empty one.
    let pages = all_record_pages(&store, records_query(RecordSort::CurrentUsage, true, 4)).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 4]);
}

pub async fn records_list_refuses_a_cursor_of_another_kind_than_its_sort<S: Store>(store: S) {
    admin_records(&store).await;
    let mismatched = [
        (RecordSort::CreatedAt, SortKey::Int(1)),
        (RecordSort::PeriodEnd, SortKey::Text("acme".to_owned())),
        (RecordSort::CurrentUsage, SortKey::Time(now())),
        (RecordSort::TenantId, SortKey::Int(1)),
        (RecordSort::MetricCode, SortKey::Time(now())),
    ];
    for (sort, key) in mismatched {
        let mut query = records_query(sort, true, 10);
        query.after = Some(RecordCursor { key, id: Uuid::nil() });
        let err = store.list_records_admin(&query).await.unwrap_err();
        assert!(matches!(err, StoreError::Other(_)), "{sort:?}: {err:?}");
    }
}

pub async fn records_list_filters_by_metric_and_by_period_end_and_created_at_windows<S: Store>(store: S) {
    let records = admin_records(&store).await;
    let (oct_end, nov_end) = (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z"));
    let list = |query: RecordListQuery| {
        let store = store.clone();
        async move { record_ids(&store.list_records_admin(&query).await.unwrap()) }
    };
    let sort = RecordSort::CreatedAt;

    let mut q = records_query(sort, true, 100);
    q.metric_code = Some(metric("exports"));
    assert_eq!(list(q).await, expected_records(&records, |r| r.metric_code == metric("exports"), sort, true));

    // period_end in [oct_end, nov_end): `from` is inclusive, `to` exclusive.
    let mut q = records_query(sort, true, 100);
    q.period_end = TimeRange { from: Some(oct_end), to: Some(nov_end) };
    let october = expected_records(&records, |r| r.period_end == oct_end, sort, true);
    assert_eq!(october.len(), 6);
    assert_eq!(list(q).await, october);
    let mut q = records_query(sort, true, 100);
    q.period_end = TimeRange { from: Some(nov_end), to: None };
    assert_eq!(list(q).await, expected_records(&records, |r| r.period_end == nov_end, sort, true));

    // created_at in [Oct 1 00:02, Nov 1 00:03): two of the four created_at values.
    let window = TimeRange { from: Some(t("2026-10-01T00:02:00Z")), to: Some(t("2026-11-01T00:03:00Z")) };
    let mut q = records_query(sort, false, 100);
    q.created_at = window;
    let in_window = expected_records(&records, |r| window.contains(r.created_at), sort, false);
    assert_eq!(in_window.len(), 6);
    assert_eq!(list(q).await, in_window);

    // Filters combine, and pages of a filtered list cover it exactly once.
    let mut q = records_query(RecordSort::CurrentUsage, false, 2);
    q.metric_code = Some(metric("api_calls"));
    q.created_at = window;
    let wanted = expected_records(
        &records,
        |r| r.metric_code == metric("api_calls") && window.contains(r.created_at),
        RecordSort::CurrentUsage,
        false,
    );
    assert_eq!(wanted.len(), 3);
    assert_eq!(all_record_pages(&store, q).await.concat(), wanted);
}

pub async fn records_list_search_matches_a_tenant_or_a_metric<S: Store>(store: S) {
    let records = admin_records(&store).await;
    let sort = RecordSort::TenantId;
    let run = |search: Option<AdminSearch>, metric_code: Option<MetricCode>| {
        let store = store.clone();
        async move {
            let mut q = records_query(sort, false, 100);
            q.search = search;
            q.metric_code = metric_code;
            record_ids(&store.list_records_admin(&q).await.unwrap())
        }
    };
    let beta = expected_records(&records, |r| r.tenant_id == tenant("beta"), sort, false);
    assert_eq!(beta.len(), 4);
    assert_eq!(run(search(&["beta"], &[]), None).await, beta);
    let exports = expected_records(&records, |r| r.metric_code == metric("exports"), sort, false);
    assert_eq!(run(search(&[], &["exports"]), None).await, exports);
    let either = expected_records(
        &records,
        |r| r.tenant_id == tenant("Zulu") || r.metric_code == metric("exports"),
        sort,
        false,
    );
    assert_eq!(either.len(), 8, "a tenant OR a metric");
    assert_eq!(run(search(&["Zulu"], &["exports"]), None).await, either);
    assert_eq!(run(search(&["beta", "Zulu"], &[]), None).await.len(), 8);
    assert!(run(search(&["ghost"], &[]), None).await.is_empty());
    assert!(run(search(&[], &["seats"]), None).await.is_empty());
    // The search and the metric filter both apply.
    let acme_exports = expected_records(
        &records,
        |r| r.tenant_id == tenant("acme") && r.metric_code == metric("exports"),
        sort,
        false,
    );
    assert_eq!(run(search(&["acme"], &[]), Some(metric("exports"))).await, acme_exports);
    // Pages of a searched list cover it exactly once.
    let mut q = records_query(RecordSort::CreatedAt, true, 3);
    q.search = search(&["Zulu"], &["exports"]);
    let wanted = expected_records(
        &records,
        |r| r.tenant_id == tenant("Zulu") || r.metric_code == metric("exports"),
        RecordSort::CreatedAt,
        true,
    );
    assert_eq!(all_record_pages(&store, q).await.concat(), wanted);
}

/// Fifteen events across the admin tenants and metrics, stored as they are: created_at in
/// pairs of ties, timestamps in the opposite order (the list goes by created_at, not by
/// timestamp), random ids.
pub async fn admin_events<S: Store>(store: &S) -> Vec<RecordedEvent> {
    put_tenants(store, &ADMIN_TENANTS).await;
    let base = t("2026-11-29T09:00:00Z");
    let mut events = Vec::new();
    for idx in 0..15i64 {
        let timestamp = base - Duration::seconds(idx);
        let tenant_id = ADMIN_TENANTS[usize::try_from(idx % 3).unwrap()];
        let m = ADMIN_METRICS[usize::try_from(idx % 2).unwrap()];
        let e = RecordedEvent {
            event: UsageEvent {
                id: Uuid::new_v4(),
                tenant_id: tenant(tenant_id),
                metric_code: metric(m),
                amount: idx + 1,
                metadata: Metadata::default(),
                idempotency_key: None,
                timestamp,
                created_at: base + Duration::seconds(idx / 2),
                kind: EventKind::Usage,
                reason: None,
            },
            receipt: EventReceipt {
                usage_after: idx + 1,
                limit: None,
                enforcement: LimitEnforcement::None,
                period: PeriodKind::Month.containing(timestamp, anchor()).unwrap(),
                timestamp_explicit: true,
                set: false,
                reserved: 0,
            },
        };
        store.record(&e).await.unwrap();
        events.push(e);
    }
    events
}

fn events_query(limit: u32) -> EventListQuery {
    EventListQuery { metric_code: None, created_at: TimeRange::default(), search: None, after: None, limit }
}

/// The ids of the `events` that `keep` keeps, newest first by `(created_at, id)`.
fn expected_events(events: &[RecordedEvent], keep: impl Fn(&UsageEvent) -> bool) -> Vec<Uuid> {
    let mut kept: Vec<&UsageEvent> = events.iter().map(|e| &e.event).filter(|e| keep(e)).collect();
    kept.sort_by_key(|e| std::cmp::Reverse((e.created_at, e.id)));
    kept.into_iter().map(|e| e.id).collect()
}

fn event_ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event.id).collect()
}

/// Every page of `query` (whose limit is the page length), following the cursor.
async fn all_event_pages<S: Store>(store: &S, mut query: EventListQuery) -> Vec<Vec<Uuid>> {
    let mut pages = Vec::new();
    for _ in 0..100 {
        let page = store.list_events_admin(&query).await.unwrap();
        assert!(page.len() <= query.limit as usize);
        let Some(last) = page.last() else { break };
        query.after = Some((last.event.created_at, last.event.id));
        let full = page.len() == query.limit as usize;
        pages.push(event_ids(&page));
        if !full {
            break;
        }
    }
    pages
}

pub async fn events_list_is_newest_first_and_pages_cover_every_event_exactly_once<S: Store>(store: S) {
    let events = admin_events(&store).await;
    let listed = store.list_events_admin(&events_query(100)).await.unwrap();
    assert_eq!(event_ids(&listed), expected_events(&events, |_| true));
    for row in &listed {
        assert_eq!(Some(row), events.iter().find(|e| e.event.id == row.event.id), "rows come back exact");
    }
    let pages = all_event_pages(&store, events_query(4)).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 4, 3]);
    assert_eq!(pages.concat(), expected_events(&events, |_| true));
    let pages = all_event_pages(&store, events_query(5)).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [5, 5, 5]);
    assert_eq!(pages.concat(), expected_events(&events, |_| true));
}

pub async fn events_list_filters_by_metric_created_at_window_and_search<S: Store>(store: S) {
    let events = admin_events(&store).await;
    let list = |query: EventListQuery| {
        let store = store.clone();
        async move { event_ids(&store.list_events_admin(&query).await.unwrap()) }
    };
    let mut q = events_query(100);
    q.metric_code = Some(metric("exports"));
    assert_eq!(list(q).await, expected_events(&events, |e| e.metric_code == metric("exports")));

    // created_at in [09:00:02, 09:00:05): `from` inclusive, `to` exclusive.
    let window = TimeRange { from: Some(t("2026-11-29T09:00:02Z")), to: Some(t("2026-11-29T09:00:05Z")) };
    let mut q = events_query(100);
    q.created_at = window;
    let in_window = expected_events(&events, |e| window.contains(e.created_at));
    assert_eq!(in_window.len(), 6);
    assert_eq!(list(q).await, in_window);

    let mut q = events_query(100);
    q.search = search(&["acme"], &[]);
    assert_eq!(list(q).await, expected_events(&events, |e| e.tenant_id == tenant("acme")));
    let mut q = events_query(100);
    q.search = search(&[], &["api_calls"]);
    assert_eq!(list(q).await, expected_events(&events, |e| e.metric_code == metric("api_calls")));
    let either = |e: &UsageEvent| e.tenant_id == tenant("Zulu") || e.metric_code == metric("exports");
    let mut q = events_query(100);
    q.search = search(&["Zulu"], &["exports"]);
    assert_eq!(list(q).await, expected_events(&events, either));
    let mut q = events_query(100);
    q.search = search(&["ghost"], &[]);
    assert!(list(q).await.is_empty());

    // Everything at once, in pages of two.
    let mut q = events_query(2);
    q.search = search(&["Zulu"], &["exports"]);
    q.metric_code = Some(metric("api_calls"));
    q.created_at = TimeRange { from: None, to: Some(t("2026-11-29T09:00:06Z")) };
    let wanted = expected_events(&events, |e| {
        either(e) && e.metric_code == metric("api_calls") && e.created_at < t("2026-11-29T09:00:06Z")
    });
    assert_eq!(wanted.len(), 2);
    assert_eq!(all_event_pages(&store, q).await.concat(), wanted);
}

pub async fn an_empty_search_matches_no_record_and_no_event<S: Store>(store: S) {
    admin_records(&store).await;
    admin_events(&store).await;
    let empty = Some(AdminSearch::default());
    for sort in RECORD_SORTS {
        let mut q = records_query(sort, true, 100);
        q.search = empty.clone();
        assert!(store.list_records_admin(&q).await.unwrap().is_empty(), "{sort:?}");
    }
    let mut q = events_query(100);
    q.search = empty;
    assert!(store.list_events_admin(&q).await.unwrap().is_empty());
    // No search at all is everything.
    assert_eq!(store.list_events_admin(&events_query(100)).await.unwrap().len(), 15);
}

pub async fn find_event_returns_the_tenants_event_and_none_for_a_miss_or_another_tenant<S: Store>(store: S) {
    let events = admin_events(&store).await;
    for e in &events[..3] {
        let found = store.find_event(&e.event.tenant_id, e.event.id).await.unwrap();
        assert_eq!(found.as_ref(), Some(e));
    }
    let e = &events[0];
    let other = ADMIN_TENANTS.iter().map(|id| tenant(id)).find(|t| *t != e.event.tenant_id).unwrap();
    assert_eq!(store.find_event(&other, e.event.id).await.unwrap(), None, "another tenant's event");
    assert_eq!(store.find_event(&e.event.tenant_id, Uuid::new_v4()).await.unwrap(), None);
    assert_eq!(store.find_event(&tenant("ghost"), e.event.id).await.unwrap(), None);
}

pub async fn tenant_prefix_search_is_case_sensitive_and_takes_percent_and_underscore_literally<S: Store>(
    store: S,
) {
    put_tenants(&store, &["ACME", "acme", "acme-x", "acme.eu", "acmeX", "acme_us", "acmf", "ac", "b"]).await;
    let found = |prefix: &'static str, limit: u32| {
        let store = store.clone();
        async move {
            let ids = store.list_tenant_ids_by_prefix(prefix, limit).await.unwrap();
            ids.iter().map(|t| t.as_str().to_owned()).collect::<Vec<String>>()
        }
    };
    // By bytes: '-' < '.' < 'X' < '_'.
    assert_eq!(found("acme", 10).await, ["acme", "acme-x", "acme.eu", "acmeX", "acme_us"]);
    assert_eq!(found("acme", 2).await, ["acme", "acme-x"]);
    assert_eq!(found("ACME", 10).await, ["ACME"]);
    assert!(found("Acme", 10).await.is_empty(), "case-sensitive");
    assert_eq!(found("acme_", 10).await, ["acme_us"], "_ is itself, not any character");
    assert_eq!(found("acme.", 10).await, ["acme.eu"]);
    assert!(found("ac%", 10).await.is_empty(), "% is itself, not any text");
    assert!(found("%", 10).await.is_empty());
    assert!(found("_", 10).await.is_empty());
    assert!(found("acme\\", 10).await.is_empty());
    assert!(found("é", 10).await.is_empty());
    assert_eq!(found("acmf", 10).await, ["acmf"]);
    assert!(found("z", 10).await.is_empty());
    assert_eq!(found("", 3).await, ["ACME", "ac", "acme"], "the empty prefix is every tenant, by id");
}

pub async fn metric_codes_come_from_plans_old_plan_versions_and_overrides_sorted_without_duplicates<
    S: Store,
>(
    store: S,
) {
    assert!(store.list_metric_codes().await.unwrap().is_empty());
    let a = audit(AuditAction::PlanPut, None);
    let pro = plan_code("pro");
    store
        .put_plan(&pro, &spec("Pro", vec![hard("api_calls", 1), hard("storage", 1)]), now(), &a)
        .await
        .unwrap();
    // The second version drops storage, which old usage may still be recorded under.
    store
        .put_plan(&pro, &spec("Pro", vec![hard("exports", 1), hard("api_calls", 2)]), now(), &a)
        .await
        .unwrap();
    store.put_plan(&plan_code("free"), &spec("Free", vec![hard("api_calls", 1)]), now(), &a).await.unwrap();
    put_tenants(&store, &["acme"]).await;
    let oa = audit(AuditAction::OverridePut, None);
    store.put_override(&tenant("acme"), &hard("seats", 3), &oa).await.unwrap();
    store.put_override(&tenant("acme"), &hard("api_calls", 3), &oa).await.unwrap();
    let codes = store.list_metric_codes().await.unwrap();
    assert_eq!(codes, [metric("api_calls"), metric("exports"), metric("seats"), metric("storage")]);
}

pub async fn admin_password_is_set_replaced_and_audited_only_when_it_changes<S: Store>(store: S) {
    assert_eq!(AuditAction::AdminPasswordSet.as_str(), "admin.password_set");
    assert_eq!(store.find_admin_password().await.unwrap(), None);
    let first = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    let second = "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXJzYWx0$b3RoZXJoYXNob3RoZXJoYXNo";
    let set = || audit(AuditAction::AdminPasswordSet, None);
    store.set_admin_password(first, &set()).await.unwrap();
    assert_eq!(store.find_admin_password().await.unwrap().as_deref(), Some(first));
    store.set_admin_password(second, &set()).await.unwrap();
    assert_eq!(store.find_admin_password().await.unwrap().as_deref(), Some(second));
    // Setting the same hash again changes nothing and is not audited.
    store.set_admin_password(second, &set()).await.unwrap();
    assert_eq!(store.find_admin_password().await.unwrap().as_deref(), Some(second));
    let entries = store.list_audit(None, None, 100).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["admin.password_set", "admin.password_set"]);
    assert!(entries.iter().all(|e| e.tenant_id.is_none()));
}

fn admin_session(token: &str, principal: &str, expires_at: Timestamp) -> AdminSession {
    AdminSession {
        token_hash: token.repeat(64),
        csrf_token: format!("csrf-{token}"),
        principal: principal.to_owned(),
        created_at: now() - Duration::minutes(5),
        expires_at,
    }
}

pub async fn admin_sessions_are_found_until_they_expire_and_deleted_one_by_one_or_in_bulk<S: Store>(
    store: S,
) {
    let key_principal = format!("key:{}", Uuid::now_v7());
    let long = admin_session("a", "password", now() + Duration::hours(1));
    let short = admin_session("b", "password", now() + Duration::minutes(1));
    let gone = admin_session("c", "password", now() - Duration::seconds(1));
    let day = admin_session("d", &key_principal, t("2026-11-30T10:00:00.123456Z"));
    for s in [&long, &short, &gone, &day] {
        store.insert_admin_session(s).await.unwrap();
    }
    let find = |token_hash: String, at: Timestamp| {
        let store = store.clone();
        async move { store.find_admin_session(&token_hash, at).await.unwrap() }
    };
    assert_eq!(find(long.token_hash.clone(), now()).await.as_ref(), Some(&long));
    assert_eq!(find(day.token_hash.clone(), now()).await.as_ref(), Some(&day), "rows come back exact");
    assert_eq!(find(gone.token_hash.clone(), now()).await, None, "expired");
    let last_instant = short.expires_at - Duration::microseconds(1);
    assert_eq!(find(short.token_hash.clone(), last_instant).await.as_ref(), Some(&short));
    assert_eq!(find(short.token_hash.clone(), short.expires_at).await, None, "expired at expires_at");
    assert_eq!(find("f".repeat(64), now()).await, None);

    store.delete_admin_session(&long.token_hash).await.unwrap();
    assert_eq!(find(long.token_hash.clone(), now()).await, None);
    store.delete_admin_session(&long.token_hash).await.unwrap();
    store.delete_admin_session(&"f".repeat(64)).await.unwrap();

    // At now + 2 min, short and gone have expired; day has not.
    let later = now() + Duration::minutes(2);
    assert_eq!(store.delete_expired_admin_sessions(later).await.unwrap(), 2);
    assert_eq!(store.delete_expired_admin_sessions(later).await.unwrap(), 0);
    assert_eq!(find(short.token_hash.clone(), now()).await, None, "deleted, not only expired");
    assert_eq!(find(day.token_hash.clone(), now()).await.as_ref(), Some(&day));
    assert_eq!(store.delete_expired_admin_sessions(day.expires_at).await.unwrap(), 1, "expires_at counts");
}

pub async fn a_taken_admin_session_token_hash_is_a_conflict<S: Store>(store: S) {
    let first = admin_session("a", "password", now() + Duration::hours(1));
    store.insert_admin_session(&first).await.unwrap();
    let mut again = admin_session("a", "key:other", now() + Duration::hours(2));
    again.csrf_token = "another".to_owned();
    let err = store.insert_admin_session(&again).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.find_admin_session(&first.token_hash, now()).await.unwrap(), Some(first));
}

// ---------------------------------------------------------------------------------------
// The metric catalog and gauges

fn gauge(m: &str, value: Option<i64>, enforcement: LimitEnforcement) -> QuotaLimit {
    limit(m, value, enforcement, PeriodKind::None)
}

fn change(tenant_id: &str, m: &str, c: Change) -> UsageRequest {
    UsageRequest { change: c, ..req(tenant_id, m, 1) }
}

pub async fn metric_catalog_declares_changes_and_lists_metrics<S: Store>(store: S) {
    let seats = MetricSpec {
        name: Name::parse("Seats").unwrap(),
        unit: Some("seat".to_owned()),
        kind: MetricKind::Gauge,
        value_property: None,
    };
    let calls = MetricSpec {
        name: Name::parse("API calls").unwrap(),
        unit: None,
        kind: MetricKind::Counter,
        value_property: Some("/usage/calls".to_owned()),
    };
    let a = audit(AuditAction::MetricPut, None);
    let created = store.put_metric(&metric("seats"), &seats, now(), &a).await.unwrap();
    assert!(created.is_created());
    let later = now() + Duration::seconds(60);
    let same = store
        .put_metric(&metric("seats"), &seats, later, &audit(AuditAction::MetricPut, None))
        .await
        .unwrap();
    assert!(matches!(&same, PutOutcome::Unchanged(m) if m.updated_at == now()), "{same:?}");
    let renamed = MetricSpec { name: Name::parse("Seats in use").unwrap(), ..seats.clone() };
    let updated = store
        .put_metric(&metric("seats"), &renamed, later, &audit(AuditAction::MetricPut, None))
        .await
        .unwrap();
    let PutOutcome::Updated(m) = updated else { panic!("a changed spec updates the metric") };
    assert_eq!((m.created_at, m.updated_at, &m.spec), (now(), later, &renamed));
    store
        .put_metric(&metric("api_calls"), &calls, now(), &audit(AuditAction::MetricPut, None))
        .await
        .unwrap();

    assert_eq!(store.find_metric(&metric("seats")).await.unwrap().map(|m| m.spec), Some(renamed));
    assert_eq!(store.find_metric(&metric("api_calls")).await.unwrap().map(|m| m.spec), Some(calls.clone()));
    // value_property alone is a change, and clearing it too.
    let counted = MetricSpec { value_property: None, ..calls };
    let again =
        store.put_metric(&metric("api_calls"), &counted, later, &audit(AuditAction::MetricPut, None)).await;
    assert!(matches!(again.unwrap(), PutOutcome::Updated(m) if m.spec.value_property.is_none()));
    assert_eq!(store.find_metric(&metric("ghost")).await.unwrap(), None);
    let codes: Vec<String> = store.list_metrics().await.unwrap().iter().map(|m| m.code.to_string()).collect();
    assert_eq!(codes, ["api_calls", "seats"]);
    // Four changes, four audit entries: the put that changed nothing wrote none.
    let entries = store.list_audit(None, None, 100).await.unwrap();
    assert_eq!(entries.iter().filter(|e| e.action == "metric.put").count(), 4);
}

pub async fn a_gauge_goes_up_and_down_never_below_zero_and_never_resets<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![gauge("seats", Some(10), LimitEnforcement::Hard)]).await;
    let up = apply_one(&store, change("acme", "seats", Change::Add(5))).await.unwrap();
    assert_eq!((up.amount, up.current_usage, up.remaining), (5, 5, Some(5)));
    assert!(up.period.is_unbounded());
    let down = apply_one(&store, change("acme", "seats", Change::Add(-2))).await.unwrap();
    assert_eq!((down.amount, down.current_usage), (-2, 3));
    let set = apply_one(&store, change("acme", "seats", Change::Set(8))).await.unwrap();
    assert_eq!((set.amount, set.current_usage), (5, 8));

    let below = apply_one(&store, change("acme", "seats", Change::Add(-9))).await.unwrap_err();
    assert!(matches!(below, UsageError::GaugeBelowZero { current: 8, decrease: 9, .. }), "{below:?}");
    let over = apply_one(&store, change("acme", "seats", Change::Add(3))).await.unwrap_err();
    assert!(
        matches!(over, UsageError::QuotaExceeded { current: 8, limit: 10, requested: 3, .. }),
        "{over:?}"
    );
    let emptied = apply_one(&store, change("acme", "seats", Change::Set(0))).await.unwrap();
    assert_eq!((emptied.amount, emptied.current_usage), (-8, 0));
    assert_eq!(apply_one(&store, change("acme", "seats", Change::Set(10))).await.unwrap().remaining, Some(0));

    // A year on, the level is where it was: a gauge's record spans all time.
    let next_year = now() + Duration::days(400);
    let later = apply_one_at(&store, change("acme", "seats", Change::Add(-4)), next_year).await.unwrap();
    assert_eq!(later.current_usage, 6);
    let record =
        store.get_for_period(&tenant("acme"), &metric("seats"), Period::unbounded().start()).await.unwrap();
    assert_eq!(record.current_usage, 6);
    assert_eq!(
        store.get_current_period(&tenant("acme"), &metric("seats"), now()).await.unwrap().id,
        record.id
    );

    // The events are the changes made, refusals wrote none, and they sum to the level.
    let events = all_events(&store, "acme").await;
    let mut amounts: Vec<i64> = events.iter().map(|e| e.event.amount).collect();
    amounts.sort_unstable();
    assert_eq!(amounts, [-8, -4, -2, 5, 5, 10]);
    assert_eq!(events.iter().map(|e| e.event.amount).sum::<i64>(), 6);
    assert_eq!(events.iter().filter(|e| e.receipt.set).count(), 3);
}

pub async fn a_replayed_set_answers_the_original_and_a_set_never_replays_an_add<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![gauge("seats", None, LimitEnforcement::None)]).await;
    let first = apply_one(&store, keyed(change("acme", "seats", Change::Set(4)), "set-4")).await.unwrap();
    assert_eq!((first.amount, first.current_usage, first.replayed), (4, 4, false));
    apply_one(&store, change("acme", "seats", Change::Add(3))).await.unwrap();
    let again = apply_one(&store, keyed(change("acme", "seats", Change::Set(4)), "set-4")).await.unwrap();
    assert_eq!((again.event_id, again.current_usage, again.replayed), (first.event_id, 4, true));
    // The same change of +4 as an `amount` is another payload.
    let add = apply_one(&store, keyed(change("acme", "seats", Change::Add(4)), "set-4")).await.unwrap_err();
    assert!(matches!(add, UsageError::IdempotencyConflict { .. }), "{add:?}");
    assert_eq!(current(&store, "acme", "seats").await, Some(7));
}

pub async fn concurrent_gauge_changes_never_overshoot_a_hard_limit_or_go_below_zero<S: Store>(store: S) {
    const TASKS: i64 = 64;
    const LIMIT: i64 = 20;
    setup(&store, "acme", "pro", vec![gauge("seats", Some(LIMIT), LimitEnforcement::Hard)]).await;
    let mut handles = Vec::new();
    for i in 0..TASKS {
        let store = store.clone();
        // Two rises for every fall: the level presses against both bounds.
        let delta = if i % 3 == 2 { -1 } else { 1 };
        handles.push(tokio::spawn(async move {
            match apply_one(&store, change("acme", "seats", Change::Add(delta))).await {
                Ok(out) => {
                    assert!((0..=LIMIT).contains(&out.current_usage), "{out:?}");
                    delta
                }
                Err(UsageError::QuotaExceeded { .. } | UsageError::GaugeBelowZero { .. }) => 0,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }));
    }
    let mut level = 0;
    for h in handles {
        level += h.await.unwrap();
    }
    assert!((0..=LIMIT).contains(&level));
    assert_eq!(current(&store, "acme", "seats").await, Some(level));
    assert_eq!(all_events(&store, "acme").await.iter().map(|e| e.event.amount).sum::<i64>(), level);
}

// ---------------------------------------------------------------------------------------
// Reservations

fn reserve_req(tenant_id: &str, m: &str, amount: i64, ttl: i64) -> ReserveRequest {
    ReserveRequest {
        tenant_id: tenant(tenant_id),
        metric_code: metric(m),
        amount: Amount::new(amount).unwrap(),
        ttl: Ttl::new(Some(ttl)).unwrap(),
        idempotency_key: None,
    }
}

fn commit_req(tenant_id: &str, id: Uuid, amount: Option<i64>) -> CommitRequest {
    CommitRequest {
        tenant_id: tenant(tenant_id),
        reservation_id: id,
        amount: amount.map(|a| Amount::new(a).unwrap()),
        metadata: Metadata::default(),
    }
}

async fn held<S: Store>(store: &S, at: Timestamp) -> i64 {
    store.reserved_by_period(&tenant("acme"), at).await.unwrap().iter().map(|(_, _, h)| h).sum()
}

pub async fn a_reservation_holds_quota_until_it_is_committed<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    let r = store.reserve(&reserve_req("acme", "api_calls", 40, 300), now()).await.unwrap().unwrap();
    assert!(!r.replayed);
    let res = &r.reservation;
    assert_eq!(
        (res.usage_at_creation, res.reserved_at_creation, res.remaining_at_creation()),
        (0, 40, Some(60))
    );
    assert_eq!(res.expires_at, now() + Duration::seconds(300));
    assert_eq!(held(&store, now()).await, 40);

    // Usage counts the hold: 60 fit, 61 do not, and neither does another reservation.
    let err = apply_one(&store, req("acme", "api_calls", 61)).await.unwrap_err();
    assert!(matches!(err, UsageError::QuotaExceeded { current: 0, .. }), "{err:?}");
    assert_eq!(apply_one(&store, req("acme", "api_calls", 60)).await.unwrap().remaining, Some(0));
    let more = store.reserve(&reserve_req("acme", "api_calls", 1, 300), now()).await.unwrap().unwrap_err();
    assert!(matches!(more, UsageError::QuotaExceeded { .. }), "{more:?}");

    // Committing 30 of the 40 records 30 and frees the other 10.
    let done = store.commit_reservation(&commit_req("acme", res.id, Some(30)), now()).await.unwrap().unwrap();
    assert_eq!((done.amount, done.current_usage, done.remaining, done.replayed), (30, 90, Some(10), false));
    assert_eq!(held(&store, now()).await, 0);
    assert!(apply_one(&store, req("acme", "api_calls", 10)).await.is_ok());

    // Committing again with the same amount replays; with another, or releasing, is refused.
    let again =
        store.commit_reservation(&commit_req("acme", res.id, Some(30)), now()).await.unwrap().unwrap();
    assert_eq!((again.event_id, again.current_usage, again.replayed), (done.event_id, 90, true));
    let other =
        store.commit_reservation(&commit_req("acme", res.id, None), now()).await.unwrap().unwrap_err();
    assert!(
        matches!(other, UsageError::ReservationClosed { status: ReservationStatus::Committed, .. }),
        "{other:?}"
    );
    let release = store.release_reservation(&tenant("acme"), res.id, now()).await.unwrap().unwrap_err();
    assert!(matches!(release, UsageError::ReservationClosed { .. }), "{release:?}");
    assert_eq!(current_or_none(&store).await, Some(100));
    // The commit's event counts in the period the quota was held in, timed at the hold.
    let events = all_events(&store, "acme").await;
    let committed = events.iter().find(|e| e.event.id == done.event_id).unwrap();
    assert_eq!((committed.event.amount, committed.event.timestamp), (30, now()));
}

pub async fn released_and_expired_reservations_free_their_quota<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    let r = store.reserve(&reserve_req("acme", "api_calls", 50, 300), now()).await.unwrap().unwrap();
    assert!(apply_one(&store, req("acme", "api_calls", 51)).await.is_err());
    store.release_reservation(&tenant("acme"), r.reservation.id, now()).await.unwrap().unwrap();
    // Releasing twice changes nothing; a released reservation cannot be committed.
    store.release_reservation(&tenant("acme"), r.reservation.id, now()).await.unwrap().unwrap();
    let late = store.commit_reservation(&commit_req("acme", r.reservation.id, None), now()).await.unwrap();
    assert!(
        matches!(late, Err(UsageError::ReservationClosed { status: ReservationStatus::Released, .. })),
        "{late:?}"
    );
    assert!(apply_one(&store, req("acme", "api_calls", 51)).await.is_ok());

    // 49 held for a minute: refused at 59 s, free at 60 s, whether or not the sweeper ran.
    let r = store.reserve(&reserve_req("acme", "api_calls", 49, 60), now()).await.unwrap().unwrap();
    let at = |s: i64| now() + Duration::seconds(s);
    assert!(apply_one_at(&store, req("acme", "api_calls", 1), at(59)).await.is_err());
    assert_eq!(store.list_open_reservations(&tenant("acme"), at(59)).await.unwrap().len(), 1);
    assert!(store.list_open_reservations(&tenant("acme"), at(60)).await.unwrap().is_empty());
    assert!(apply_one_at(&store, req("acme", "api_calls", 1), at(60)).await.is_ok());
    let expired =
        store.commit_reservation(&commit_req("acme", r.reservation.id, None), at(61)).await.unwrap();
    assert!(
        matches!(expired, Err(UsageError::ReservationClosed { status: ReservationStatus::Expired, .. })),
        "{expired:?}"
    );

    // The sweeper marks what expired, once.
    store.reserve(&reserve_req("acme", "api_calls", 10, 1), at(62)).await.unwrap().unwrap();
    assert_eq!(store.expire_reservations(at(62), 100).await.unwrap(), 0);
    assert_eq!(store.expire_reservations(at(63), 100).await.unwrap(), 1);
    assert_eq!(store.expire_reservations(at(64), 100).await.unwrap(), 0);
    assert_eq!(current_or_none(&store).await, Some(52));
}

pub async fn a_replayed_reservation_holds_nothing_more<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    let keyed = ReserveRequest {
        idempotency_key: Some(IdempotencyKey::parse("job-9").unwrap()),
        ..reserve_req("acme", "api_calls", 30, 300)
    };
    let first = store.reserve(&keyed, now()).await.unwrap().unwrap();
    let again = store.reserve(&keyed, now() + Duration::seconds(5)).await.unwrap().unwrap();
    assert!(again.replayed);
    assert_eq!(again.reservation.id, first.reservation.id);
    assert_eq!(again.reservation.reserved_at_creation, 30);
    assert_eq!(held(&store, now()).await, 30);
    let changed = ReserveRequest { amount: Amount::new(31).unwrap(), ..keyed };
    let err = store.reserve(&changed, now()).await.unwrap().unwrap_err();
    assert!(matches!(err, UsageError::IdempotencyConflict { .. }), "{err:?}");
}

pub async fn concurrent_reservations_never_hold_more_than_a_hard_limit<S: Store>(store: S) {
    const TASKS: usize = 64;
    const LIMIT: i64 = 20;
    setup(&store, "acme", "pro", vec![hard("api_calls", LIMIT)]).await;
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            match store.reserve(&reserve_req("acme", "api_calls", 1, 300), now()).await.unwrap() {
                Ok(r) => {
                    assert!(r.reservation.reserved_at_creation <= LIMIT, "{r:?}");
                    1
                }
                Err(UsageError::QuotaExceeded { .. }) => 0,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }));
    }
    let mut accepted = 0;
    for h in handles {
        accepted += h.await.unwrap();
    }
    assert_eq!(accepted, LIMIT);
    assert_eq!(held(&store, now()).await, LIMIT);
    assert_eq!(store.list_open_reservations(&tenant("acme"), now()).await.unwrap().len(), 20);
}

pub async fn reservations_are_found_only_under_their_own_tenant<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    setup(&store, "beta", "pro", vec![hard("api_calls", 100)]).await;
    let r = store.reserve(&reserve_req("acme", "api_calls", 5, 300), now()).await.unwrap().unwrap();
    let id = r.reservation.id;
    let commit = store.commit_reservation(&commit_req("beta", id, None), now()).await.unwrap();
    assert!(matches!(commit, Err(UsageError::ReservationNotFound { .. })), "{commit:?}");
    let release = store.release_reservation(&tenant("beta"), id, now()).await.unwrap();
    assert!(matches!(release, Err(UsageError::ReservationNotFound { .. })), "{release:?}");
    assert!(store.list_open_reservations(&tenant("beta"), now()).await.unwrap().is_empty());
    assert!(store.reserved_by_period(&tenant("beta"), now()).await.unwrap().is_empty());
    let ghost = store.reserve(&reserve_req("ghost", "api_calls", 1, 300), now()).await.unwrap();
    assert!(matches!(ghost, Err(UsageError::TenantNotFound { .. })), "{ghost:?}");
    let unknown = store.reserve(&reserve_req("acme", "exports", 1, 300), now()).await.unwrap();
    assert!(matches!(unknown, Err(UsageError::QuotaNotFound { .. })), "{unknown:?}");
    // Commit the whole hold by default.
    let done = store.commit_reservation(&commit_req("acme", id, None), now()).await.unwrap().unwrap();
    assert_eq!(done.current_usage, 5);
}

pub async fn a_reservation_on_a_gauge_holds_room_under_its_limit<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![gauge("seats", Some(10), LimitEnforcement::Hard)]).await;
    apply_one(&store, change("acme", "seats", Change::Set(6))).await.unwrap();
    let r = store.reserve(&reserve_req("acme", "seats", 3, 300), now()).await.unwrap().unwrap();
    assert_eq!(r.reservation.remaining_at_creation(), Some(1));
    assert!(r.reservation.period.is_unbounded());
    // A rise past the room left is refused; a decrease is not, and it makes room.
    let over = apply_one(&store, change("acme", "seats", Change::Add(2))).await.unwrap_err();
    assert!(matches!(over, UsageError::QuotaExceeded { current: 6, .. }), "{over:?}");
    assert_eq!(apply_one(&store, change("acme", "seats", Change::Add(-2))).await.unwrap().remaining, Some(3));
    let done = store
        .commit_reservation(&commit_req("acme", r.reservation.id, Some(2)), now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((done.amount, done.current_usage, done.remaining), (2, 6, Some(4)));
    assert_eq!(held(&store, now()).await, 0);
}

// ---------------------------------------------------------------------------------------
// Threshold webhooks

fn webhook_spec(url: &str, thresholds: &[i64], events: &[WebhookEventType]) -> WebhookSpec {
    WebhookSpec::new(url, thresholds, events).unwrap()
}

fn secret(s: &str) -> WebhookSecret {
    WebhookSecret::parse(s).unwrap()
}

fn hook(s: &str) -> WebhookId {
    WebhookId::parse(s).unwrap()
}

async fn register<S: Store>(store: &S, id: &str, thresholds: &[i64]) {
    let spec = webhook_spec("http://127.0.0.1:9/hook", thresholds, &WebhookEventType::ALL);
    let a = audit(AuditAction::WebhookPut, None);
    store.put_webhook(&hook(id), &spec, &secret("whsec_0123456789abcdef"), true, now(), &a).await.unwrap();
}

/// Every delivery of the webhook, oldest first, as (type, threshold, current_usage).
async fn fired<S: Store>(store: &S, id: &str) -> Vec<(WebhookEventType, Option<i64>, i64)> {
    let mut all = store.list_deliveries(&hook(id), None, 1_000).await.unwrap();
    all.reverse();
    all.iter()
        .map(|d| {
            let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
            assert_eq!(body["id"], d.id.to_string());
            assert_eq!(body["type"], d.event_type.as_str());
            (
                d.event_type,
                body["data"]["threshold"].as_i64(),
                body["data"]["current_usage"].as_i64().unwrap(),
            )
        })
        .collect()
}

pub async fn webhooks_are_registered_replaced_listed_and_deleted<S: Store>(store: S) {
    let id = hook("ops");
    let spec = webhook_spec("https://example.com/hook", &[80, 100], &WebhookEventType::ALL);
    let a = audit(AuditAction::WebhookPut, None);
    let first = secret("whsec_first_secret_0001");
    let created = store.put_webhook(&id, &spec, &first, true, now(), &a).await.unwrap();
    assert!(created.is_created());
    let later = now() + Duration::seconds(60);
    // Without a new secret and with the same spec, nothing changes.
    let other = secret("whsec_never_stored_0002");
    let same = store.put_webhook(&id, &spec, &other, false, later, &a).await.unwrap();
    assert!(matches!(&same, PutOutcome::Unchanged(w) if w.updated_at == now() && w.secret == first));
    // A new spec keeps the secret unless it is replaced.
    let narrower = webhook_spec("https://example.com/hook", &[90], &[WebhookEventType::ThresholdCrossed]);
    let changed = store.put_webhook(&id, &narrower, &other, false, later, &a).await.unwrap().into_inner();
    assert_eq!(
        (changed.spec.thresholds.clone(), changed.secret.clone(), changed.updated_at),
        (vec![90], first, later)
    );
    assert_eq!(changed.created_at, now());
    let rotated = store.put_webhook(&id, &narrower, &other, true, later, &a).await.unwrap();
    assert!(matches!(&rotated, PutOutcome::Updated(w) if w.secret == other));
    assert_eq!(store.find_webhook(&id).await.unwrap().unwrap().secret, other);
    register(&store, "billing", &[50]).await;
    let ids: Vec<String> = store.list_webhooks().await.unwrap().iter().map(|w| w.id.to_string()).collect();
    assert_eq!(ids, vec!["billing", "ops"]);
    let audited = store.list_audit(None, None, 100).await.unwrap();
    assert_eq!(audited.iter().filter(|e| e.action == "webhook.put").count(), 4);

    let d = audit(AuditAction::WebhookDelete, None);
    assert!(store.delete_webhook(&id, &d).await.unwrap());
    assert!(!store.delete_webhook(&id, &d).await.unwrap());
    assert_eq!(store.find_webhook(&id).await.unwrap(), None);
    assert_eq!(store.list_webhooks().await.unwrap().len(), 1);
}

pub async fn concurrent_usage_crossing_a_threshold_writes_exactly_one_delivery<S: Store>(store: S) {
    const TASKS: usize = 64;
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    register(&store, "ops", &[80, 100]).await;
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        handles
            .push(tokio::spawn(async move { apply_one(&store, req("acme", "api_calls", 2)).await.is_ok() }));
    }
    let mut accepted = 0;
    for h in handles {
        accepted += usize::from(h.await.unwrap());
    }
    assert_eq!(accepted, 50);
    // One crossing of each threshold, exactly at its value, and one refusal.
    let crossed = fired(&store, "ops").await;
    let mut kinds: Vec<(WebhookEventType, Option<i64>)> = crossed.iter().map(|(t, p, _)| (*t, *p)).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            (WebhookEventType::ThresholdCrossed, Some(80)),
            (WebhookEventType::ThresholdCrossed, Some(100)),
            (WebhookEventType::LimitRefused, None),
        ]
    );
    for (t, p, usage) in &crossed {
        match t {
            WebhookEventType::ThresholdCrossed => assert_eq!(Some(*usage), *p),
            WebhookEventType::LimitRefused => assert_eq!(*usage, 100),
        }
    }
    // More refusals and a batch in the same period fire nothing more.
    assert!(apply_one(&store, req("acme", "api_calls", 1)).await.is_err());
    let out =
        store.apply_usage(&[req("acme", "api_calls", 1), req("acme", "api_calls", 5)], now()).await.unwrap();
    assert!(out.iter().all(Result::is_err));
    assert_eq!(fired(&store, "ops").await.len(), 3);
    // The next period fires again.
    let next = now() + Duration::days(40);
    apply_one_at(&store, req("acme", "api_calls", 85), next).await.unwrap();
    assert_eq!(fired(&store, "ops").await.len(), 4);
}

pub async fn a_gauge_oscillating_within_its_rearm_band_fires_once<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![gauge("seats", Some(100), LimitEnforcement::Soft)]).await;
    register(&store, "ops", &[80]).await;
    let set = |n: i64| change("acme", "seats", Change::Set(n));
    // Around the threshold of 80, never below its re-arm line of 72: one delivery.
    for level in [79, 80, 75, 81, 72, 90, 79, 80] {
        apply_one(&store, set(level)).await.unwrap();
    }
    assert_eq!(fired(&store, "ops").await, vec![(WebhookEventType::ThresholdCrossed, Some(80), 80)]);
    // Below the line it re-arms, and the next reach fires again, also inside one batch.
    let batch = [set(71), set(85), set(10), set(95)];
    let out = store.apply_usage(&batch, now()).await.unwrap();
    assert!(out.iter().all(Result::is_ok));
    let all = fired(&store, "ops").await;
    assert_eq!(all.iter().map(|(_, _, u)| *u).collect::<Vec<_>>(), vec![80, 85, 95]);
    // A decrease alone fires nothing.
    apply_one(&store, change("acme", "seats", Change::Add(-5))).await.unwrap();
    assert_eq!(fired(&store, "ops").await.len(), 3);
}

pub async fn webhooks_fire_only_for_crossings_after_registration_and_on_commits<S: Store>(store: S) {
    setup(
        &store,
        "acme",
        "pro",
        vec![hard("api_calls", 100), limit("tokens", None, LimitEnforcement::None, PeriodKind::Month)],
    )
    .await;
    apply_one(&store, req("acme", "api_calls", 85)).await.unwrap();
    register(&store, "ops", &[80, 90]).await;
    // 80 was passed before the webhook existed: only 90 fires.
    apply_one(&store, req("acme", "api_calls", 5)).await.unwrap();
    assert_eq!(fired(&store, "ops").await, vec![(WebhookEventType::ThresholdCrossed, Some(90), 90)]);
    // An unlimited metric has no thresholds.
    apply_one(&store, req("acme", "tokens", 1_000_000)).await.unwrap();
    assert_eq!(fired(&store, "ops").await.len(), 1);
    // A refused reservation is a HARD refusal; a commit that reaches 100 crosses it.
    assert!(store.reserve(&reserve_req("acme", "api_calls", 11, 300), now()).await.unwrap().is_err());
    let r = store.reserve(&reserve_req("acme", "api_calls", 10, 300), now()).await.unwrap().unwrap();
    store.commit_reservation(&commit_req("acme", r.reservation.id, None), now()).await.unwrap().unwrap();
    let kinds: Vec<(WebhookEventType, Option<i64>, i64)> = fired(&store, "ops").await;
    assert_eq!(
        kinds,
        vec![(WebhookEventType::ThresholdCrossed, Some(90), 90), (WebhookEventType::LimitRefused, None, 90),]
    );
    // Thresholds are of the limit: 100 is not among this webhook's, so nothing more fired.
    let other = webhook_spec("http://127.0.0.1:9/hook", &[100], &[WebhookEventType::ThresholdCrossed]);
    let a = audit(AuditAction::WebhookPut, None);
    store
        .put_webhook(&hook("full"), &other, &secret("whsec_0123456789abcdef"), true, now(), &a)
        .await
        .unwrap();
    assert!(fired(&store, "full").await.is_empty());
}

pub async fn deliveries_are_claimed_once_retried_failed_and_redelivered<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    register(&store, "ops", &[10, 20, 30]).await;
    register(&store, "quiet", &[99]).await;
    for _ in 0..3 {
        apply_one(&store, req("acme", "api_calls", 10)).await.unwrap();
    }
    // Newest first, in pages.
    let all = store.list_deliveries(&hook("ops"), None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    let page = store.list_deliveries(&hook("ops"), Some(all[0].id), 1).await.unwrap();
    assert_eq!(page.iter().map(|d| d.id).collect::<Vec<_>>(), vec![all[1].id]);
    assert!(store.list_deliveries(&hook("quiet"), None, 10).await.unwrap().is_empty());
    assert_eq!(store.find_delivery(&hook("quiet"), all[0].id).await.unwrap(), None);
    let d = store.find_delivery(&hook("ops"), all[0].id).await.unwrap().unwrap();
    assert_eq!((d.status, d.attempts, d.next_attempt_at), (DeliveryStatus::Pending, 0, Some(now())));

    // Claims take due deliveries once, until their lease runs out.
    let lease = now() + Duration::seconds(15);
    let claimed = store.claim_deliveries(now(), lease, 2).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|(d, w)| w.id == hook("ops") && d.next_attempt_at == Some(lease)));
    let rest = store.claim_deliveries(now(), lease, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(store.claim_deliveries(now(), lease, 10).await.unwrap().is_empty());
    assert_eq!(store.claim_deliveries(lease, lease + Duration::seconds(15), 10).await.unwrap().len(), 3);

    // An attempt's outcome is stored as given.
    let (mut first, _) = claimed[0].clone();
    let retry_at = now() + Duration::seconds(5);
    first.attempts = 1;
    first.last_response_code = Some(500);
    first.last_error = Some("HTTP 500".to_owned());
    first.next_attempt_at = Some(retry_at);
    first.last_attempt_at = Some(now());
    store.record_attempt(&first).await.unwrap();
    assert_eq!(store.find_delivery(&hook("ops"), first.id).await.unwrap().unwrap(), first);
    first.status = DeliveryStatus::Failed;
    first.attempts = 2;
    first.last_response_code = None;
    first.last_error = Some("timed out".to_owned());
    first.next_attempt_at = None;
    store.record_attempt(&first).await.unwrap();
    assert!(
        store
            .claim_deliveries(retry_at + Duration::days(2), retry_at + Duration::days(3), 10)
            .await
            .unwrap()
            .iter()
            .all(|(d, _)| d.id != first.id)
    );

    // Redelivery makes it pending and due, with a new window; it is audited.
    let again = now() + Duration::hours(30);
    let r = audit(AuditAction::WebhookRedeliver, None);
    assert_eq!(store.redeliver(&hook("quiet"), first.id, again, &r).await.unwrap(), None);
    let redone = store.redeliver(&hook("ops"), first.id, again, &r).await.unwrap().unwrap();
    assert_eq!(
        (redone.status, redone.attempts, redone.next_attempt_at, redone.window_start),
        (DeliveryStatus::Pending, 2, Some(again), again)
    );
    let due = store.claim_deliveries(again, again + Duration::seconds(15), 10).await.unwrap();
    assert!(due.iter().any(|(d, _)| d.id == first.id));
    assert!(store.list_audit(None, None, 100).await.unwrap().iter().any(|e| e.action == "webhook.redeliver"));

    // Deleting the webhook deletes its deliveries and its states.
    assert!(store.delete_webhook(&hook("ops"), &audit(AuditAction::WebhookDelete, None)).await.unwrap());
    assert!(store.list_deliveries(&hook("ops"), None, 10).await.unwrap().is_empty());
    register(&store, "ops", &[10]).await;
    apply_one(&store, req("acme", "api_calls", 1)).await.unwrap();
    assert!(store.list_deliveries(&hook("ops"), None, 10).await.unwrap().is_empty());
}

pub async fn a_dedup_key_of_the_compatibility_routes_replays_whatever_the_payload<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![hard("api_calls", 100)]).await;
    let first = apply_one(&store, keyed(req("acme", "api_calls", 5), "ce:billing:evt-1")).await.unwrap();
    let again = apply_one(&store, keyed(req("acme", "api_calls", 7), "ce:billing:evt-1")).await.unwrap();
    assert_eq!((again.event_id, again.amount, again.replayed), (first.event_id, 5, true));
    let lago = apply_one(&store, keyed(req("acme", "api_calls", 1), "lago:tx-1")).await.unwrap();
    let batch =
        [keyed(req("acme", "api_calls", 2), "lago:tx-1"), keyed(req("acme", "api_calls", 3), "lago:tx-2")];
    let out = store.apply_usage(&batch, now()).await.unwrap();
    assert_eq!(out[0].as_ref().unwrap().event_id, lago.event_id);
    assert!(out[0].as_ref().unwrap().replayed);
    // Any other key keeps the strict rule: another payload is a conflict.
    apply_one(&store, keyed(req("acme", "api_calls", 1), "job-1")).await.unwrap();
    let err = apply_one(&store, keyed(req("acme", "api_calls", 2), "job-1")).await.unwrap_err();
    assert!(matches!(err, UsageError::IdempotencyConflict { .. }), "{err:?}");
    assert_eq!(current(&store, "acme", "api_calls").await, Some(5 + 1 + 3 + 1));
}

// ---------------------------------------------------------------------------------------
// Corrections and closed periods

fn daily(m: &str, value: i64) -> QuotaLimit {
    limit(m, Some(value), LimitEnforcement::Hard, PeriodKind::Day)
}

fn correction(tenant_id: &str, m: &str, amount: i64, at: Option<Timestamp>) -> CorrectionRequest {
    CorrectionRequest {
        tenant_id: tenant(tenant_id),
        metric_code: metric(m),
        amount,
        reason: Reason::parse("refund promised in ticket 42").unwrap(),
        idempotency_key: None,
        timestamp: at,
        key_id: None,
    }
}

async fn correct_at<S: Store>(
    store: &S,
    r: CorrectionRequest,
    now: Timestamp,
) -> Result<UsageOutcome, UsageError> {
    let answers = store.write(vec![WriteOp::Correct(r)], Ctx::new(now, CONTRACT_EVENT_AGE)).await.unwrap();
    one(answers).into_usage().expect("a correction answers a usage")
}

fn at_time(r: UsageRequest, at: Timestamp) -> UsageRequest {
    UsageRequest { timestamp: Some(at), ..r }
}

async fn day_usage<S: Store>(store: &S, day: &str) -> Option<i64> {
    match store.get_for_period(&tenant("acme"), &metric("api_calls"), t(day)).await {
        Ok(r) => Some(r.current_usage),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => panic!("{e}"),
    }
}

async fn audited<S: Store>(store: &S, action: AuditAction) -> Vec<AuditEntry> {
    let all = store.list_audit(Some(&tenant("acme")), None, 1_000).await.unwrap();
    all.into_iter().filter(|e| e.action == action.as_str()).collect()
}

fn day_period(day: &str) -> Period {
    Period::new(t(day), t(day) + Duration::days(1)).unwrap()
}

pub async fn a_correction_moves_any_open_period_by_a_signed_amount_past_the_limit<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![daily("api_calls", 10)]).await;
    let d1 = t("2026-11-20T12:00:00Z");
    apply_one(&store, at_time(req("acme", "api_calls", 8), d1)).await.unwrap();
    // A correction is never refused by a limit: it says exceeded.
    let up = correct_at(&store, correction("acme", "api_calls", 5, Some(d1)), now()).await.unwrap();
    assert_eq!((up.amount, up.current_usage, up.exceeded, up.kind), (5, 13, true, EventKind::Correction));
    assert_eq!(up.period, day_period("2026-11-20T00:00:00Z"));
    let down = correct_at(&store, correction("acme", "api_calls", -4, Some(d1)), now()).await.unwrap();
    assert_eq!((down.current_usage, down.exceeded, down.remaining), (9, false, Some(1)));
    assert_eq!(day_usage(&store, "2026-11-20T00:00:00Z").await, Some(9));
    // Far outside any event window, and into a period with no record yet.
    let old = t("2025-01-03T08:00:00Z");
    let first = correct_at(&store, correction("acme", "api_calls", 7, Some(old)), now()).await.unwrap();
    assert_eq!(first.current_usage, 7);
    assert_eq!(day_usage(&store, "2025-01-03T00:00:00Z").await, Some(7));
    // Without a timestamp, the current period moves.
    let today = correct_at(&store, correction("acme", "api_calls", 2, None), now()).await.unwrap();
    assert_eq!(today.period, day_period("2026-11-29T00:00:00Z"));

    let events = all_events(&store, "acme").await;
    let kinds: Vec<(EventKind, i64, Option<&str>)> = events
        .iter()
        .map(|e| (e.event.kind, e.event.amount, e.event.reason.as_ref().map(Reason::as_str)))
        .collect();
    let reason = Some("refund promised in ticket 42");
    assert_eq!(
        kinds,
        vec![
            (EventKind::Correction, 2, reason),
            (EventKind::Correction, -4, reason),
            (EventKind::Correction, 5, reason),
            (EventKind::Usage, 8, None),
            (EventKind::Correction, 7, reason),
        ]
    );
    let only = |kind| EventQuery {
        metric_code: None,
        from: None,
        to: None,
        limit: 100,
        after: None,
        kind: Some(kind),
    };
    assert_eq!(store.get_events_for_metric(&tenant("acme"), &only(EventKind::Usage)).await.unwrap().len(), 1);
    assert_eq!(
        store.get_events_for_metric(&tenant("acme"), &only(EventKind::Correction)).await.unwrap().len(),
        4
    );
    // Each correction is audited in its own transaction, with the acting key and the change.
    let entries = audited(&store, AuditAction::UsageCorrect).await;
    assert_eq!(entries.len(), 4);
    let newest = &entries[0].details;
    assert_eq!((newest["amount"].as_i64(), newest["reason"].as_str()), (Some(2), reason));
    // verify counts the corrections: the counters agree with the signed sums.
    let inputs = store.verify_inputs().await.unwrap();
    let corrections: i64 = inputs.events.iter().map(|e| e.n_corrections).sum();
    assert_eq!(corrections, 4);
    let day1 = inputs.events.iter().find(|e| e.period_start == t("2026-11-20T00:00:00Z")).unwrap();
    assert_eq!((day1.amount_sum, day1.n_events, day1.n_corrections), (9, 3, 2));
}

pub async fn a_correction_below_zero_or_on_a_gauge_is_refused_and_writes_nothing<S: Store>(store: S) {
    setup(
        &store,
        "acme",
        "pro",
        vec![daily("api_calls", 10), limit("seats", Some(5), LimitEnforcement::Hard, PeriodKind::None)],
    )
    .await;
    apply_one(&store, req("acme", "api_calls", 3)).await.unwrap();
    let below = correct_at(&store, correction("acme", "api_calls", -4, None), now()).await.unwrap_err();
    assert!(matches!(below, UsageError::CorrectionBelowZero { current: 3, amount: -4, .. }), "{below:?}");
    let empty =
        correct_at(&store, correction("acme", "api_calls", -1, Some(t("2026-11-01T00:00:00Z"))), now())
            .await
            .unwrap_err();
    assert!(matches!(empty, UsageError::CorrectionBelowZero { current: 0, .. }), "{empty:?}");
    assert_eq!(day_usage(&store, "2026-11-01T00:00:00Z").await, None, "a refusal creates no record");
    let gauge = correct_at(&store, correction("acme", "seats", 1, None), now()).await.unwrap_err();
    assert!(matches!(gauge, UsageError::CorrectionNotApplicable { .. }), "{gauge:?}");
    let unknown = correct_at(&store, correction("acme", "exports", 1, None), now()).await.unwrap_err();
    assert!(matches!(unknown, UsageError::QuotaNotFound { .. }), "{unknown:?}");
    assert_eq!(all_events(&store, "acme").await.len(), 1);
    assert!(audited(&store, AuditAction::UsageCorrect).await.is_empty());
}

pub async fn a_replayed_correction_answers_the_original_and_another_payload_conflicts<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![daily("api_calls", 10)]).await;
    apply_one(&store, keyed(req("acme", "api_calls", 4), "usage-1")).await.unwrap();
    let keyed_fix = |amount, key: &str| CorrectionRequest {
        idempotency_key: Some(IdempotencyKey::parse(key).unwrap()),
        ..correction("acme", "api_calls", amount, None)
    };
    let first = correct_at(&store, keyed_fix(-2, "fix-1"), now()).await.unwrap();
    let again = correct_at(&store, keyed_fix(-2, "fix-1"), now()).await.unwrap();
    assert_eq!((again.event_id, again.current_usage, again.replayed), (first.event_id, 2, true));
    assert_eq!(current_or_none(&store).await, Some(2));
    let other = correct_at(&store, keyed_fix(-1, "fix-1"), now()).await.unwrap_err();
    assert!(matches!(other, UsageError::IdempotencyConflict { .. }), "{other:?}");
    let mut reason = keyed_fix(-2, "fix-1");
    reason.reason = Reason::parse("another reason").unwrap();
    assert!(matches!(correct_at(&store, reason, now()).await, Err(UsageError::IdempotencyConflict { .. })));
    // One key space: a usage key is not a correction's, nor the other way round.
    let usage_key = correct_at(&store, keyed_fix(-2, "usage-1"), now()).await.unwrap_err();
    assert!(matches!(usage_key, UsageError::IdempotencyConflict { .. }), "{usage_key:?}");
    let fix_key = apply_one(&store, keyed(req("acme", "api_calls", 2), "fix-1")).await.unwrap_err();
    assert!(matches!(fix_key, UsageError::IdempotencyConflict { .. }), "{fix_key:?}");
    assert_eq!(current_or_none(&store).await, Some(2));
}

/// Usage in three past days of November (the 20th, 21st, 22nd) and today (the 29th).
async fn four_days<S: Store>(store: &S) {
    setup(store, "acme", "pro", vec![daily("api_calls", 100)]).await;
    for (day, n, key) in [("2026-11-20", 1, "d20"), ("2026-11-21", 2, "d21"), ("2026-11-22", 3, "d22")] {
        let at = t(&format!("{day}T12:00:00Z"));
        apply_one(store, keyed(at_time(req("acme", "api_calls", n), at), key)).await.unwrap();
    }
    apply_one(store, req("acme", "api_calls", 4)).await.unwrap();
}

pub async fn closing_moves_the_watermark_forward_only_and_closes_the_records_under_it<S: Store>(store: S) {
    four_days(&store).await;
    let acme = tenant("acme");
    assert_eq!(store.find_watermark(&acme).await.unwrap(), None);
    let closed = store
        .close_periods(&acme, t("2026-11-22T00:00:00Z"), CloseMode::Explicit, now(), None)
        .await
        .unwrap();
    assert_eq!(closed, CloseOutcome { closed_before: t("2026-11-22T00:00:00Z"), closed: 2 });
    let mark = store.find_watermark(&acme).await.unwrap().unwrap();
    assert_eq!((mark.closed_before, mark.moved_at), (t("2026-11-22T00:00:00Z"), now()));
    // A smaller watermark changes nothing, and is not audited.
    let later = now() + Duration::minutes(1);
    let back = store
        .close_periods(&acme, t("2026-11-21T00:00:00Z"), CloseMode::Explicit, later, None)
        .await
        .unwrap();
    assert_eq!(back, CloseOutcome { closed_before: t("2026-11-22T00:00:00Z"), closed: 0 });
    assert_eq!(store.find_watermark(&acme).await.unwrap().unwrap().moved_at, now());
    let entries = audited(&store, AuditAction::PeriodClose).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].details["closed"].as_u64(), Some(2));
    // Forward again: one more record.
    let more = store
        .close_periods(&acme, t("2026-11-23T00:00:00Z"), CloseMode::Explicit, later, None)
        .await
        .unwrap();
    assert_eq!(more.closed, 1);
    let unknown = store.close_periods(&tenant("nobody"), now(), CloseMode::Explicit, now(), None).await;
    assert!(matches!(unknown, Err(StoreError::NotFound(_))), "{unknown:?}");
}

pub async fn writes_into_a_closed_period_are_refused_and_replays_still_answer<S: Store>(store: S) {
    four_days(&store).await;
    let acme = tenant("acme");
    store.close_periods(&acme, t("2026-11-22T00:00:00Z"), CloseMode::Explicit, now(), None).await.unwrap();
    let d21 = t("2026-11-21T12:00:00Z");
    let late = apply_one(&store, at_time(req("acme", "api_calls", 1), d21)).await.unwrap_err();
    let UsageError::PeriodClosed { metric: m, period, closed_at } = &late else { panic!("{late:?}") };
    assert_eq!((m.as_str(), *period, *closed_at), ("api_calls", day_period("2026-11-21T00:00:00Z"), now()));
    let fix = correct_at(&store, correction("acme", "api_calls", -1, Some(d21)), now()).await.unwrap_err();
    assert!(matches!(fix, UsageError::PeriodClosed { .. }), "{fix:?}");
    // A closed day without a record takes nothing either, and gets no record.
    let d10 = t("2026-11-10T12:00:00Z");
    let empty = apply_one(&store, at_time(req("acme", "api_calls", 1), d10)).await.unwrap_err();
    assert!(matches!(empty, UsageError::PeriodClosed { .. }), "{empty:?}");
    assert_eq!(day_usage(&store, "2026-11-10T00:00:00Z").await, None);
    // A retry of an event accepted before the close answers the original.
    let replay = apply_one(&store, keyed(at_time(req("acme", "api_calls", 2), d21), "d21")).await.unwrap();
    assert!(replay.replayed);
    // Open periods take writes as before.
    apply_one(&store, at_time(req("acme", "api_calls", 1), t("2026-11-22T12:00:00Z"))).await.unwrap();
    apply_one(&store, req("acme", "api_calls", 1)).await.unwrap();
    // In one batch, the closed item is refused on its own.
    let batch = store
        .apply_usage(
            &[
                req("acme", "api_calls", 1),
                at_time(req("acme", "api_calls", 1), d21),
                req("acme", "api_calls", 1),
            ],
            now(),
        )
        .await
        .unwrap();
    assert!(batch[0].is_ok() && batch[2].is_ok(), "{batch:?}");
    assert!(matches!(batch[1], Err(UsageError::PeriodClosed { .. })), "{batch:?}");
    assert_eq!(
        (day_usage(&store, "2026-11-21T00:00:00Z").await, current_or_none(&store).await),
        (Some(2), Some(7))
    );
}

pub async fn a_reopened_period_stays_open_until_an_explicit_close<S: Store>(store: S) {
    four_days(&store).await;
    let acme = tenant("acme");
    let api = metric("api_calls");
    let why = Reason::parse("late invoice dispute").unwrap();
    store.close_periods(&acme, t("2026-11-22T00:00:00Z"), CloseMode::Explicit, now(), None).await.unwrap();
    let later = now() + Duration::minutes(5);
    let d21 = day_period("2026-11-21T00:00:00Z");
    let open = store.reopen_period(&acme, &api, d21, &why, later, None).await.unwrap();
    assert_eq!((open.record.current_usage, open.closed_at, open.reopened_at), (2, None, Some(later)));
    apply_one(&store, at_time(req("acme", "api_calls", 5), t("2026-11-21T13:00:00Z"))).await.unwrap();
    assert_eq!(day_usage(&store, "2026-11-21T00:00:00Z").await, Some(7));
    // Reopening what is open is a conflict.
    let twice = store.reopen_period(&acme, &api, d21, &why, later, None).await;
    assert!(matches!(twice, Err(StoreError::Conflict(_))), "{twice:?}");
    let today = store.reopen_period(&acme, &api, day_period("2026-11-29T00:00:00Z"), &why, later, None).await;
    assert!(matches!(today, Err(StoreError::Conflict(_))), "{today:?}");
    // A day closed by the watermark alone gets a zero record when reopened.
    let d10 = day_period("2026-11-10T00:00:00Z");
    let zero = store.reopen_period(&acme, &api, d10, &why, later, None).await.unwrap();
    assert_eq!((zero.record.current_usage, zero.reopened_at), (0, Some(later)));
    apply_one(&store, at_time(req("acme", "api_calls", 1), t("2026-11-10T01:00:00Z"))).await.unwrap();
    assert_eq!(audited(&store, AuditAction::PeriodReopen).await.len(), 2);
    // The automatic close moves the watermark but leaves reopened periods open...
    let auto = store
        .close_periods(&acme, t("2026-11-23T00:00:00Z"), CloseMode::Automatic, later, None)
        .await
        .unwrap();
    assert_eq!(auto, CloseOutcome { closed_before: t("2026-11-23T00:00:00Z"), closed: 1 });
    apply_one(&store, at_time(req("acme", "api_calls", 1), t("2026-11-21T14:00:00Z"))).await.unwrap();
    // ...and an explicit close, even one that does not move the watermark, closes them.
    let again = store
        .close_periods(&acme, t("2026-11-22T00:00:00Z"), CloseMode::Explicit, later, None)
        .await
        .unwrap();
    assert_eq!(again, CloseOutcome { closed_before: t("2026-11-23T00:00:00Z"), closed: 2 });
    let closed =
        apply_one(&store, at_time(req("acme", "api_calls", 1), t("2026-11-21T15:00:00Z"))).await.unwrap_err();
    assert!(matches!(closed, UsageError::PeriodClosed { .. }), "{closed:?}");
    let listed = store
        .list_periods(
            &acme,
            &PeriodQuery {
                metric_code: Some(api.clone()),
                from: Some(t("2026-11-21T00:00:00Z")),
                to: Some(t("2026-11-22T00:00:00Z")),
                limit: 10,
                ..PeriodQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].closed_at, listed[0].reopened_at, listed[0].record.current_usage),
        (Some(later), Some(later), 8)
    );
}

pub async fn periods_are_listed_newest_first_filtered_and_paginated<S: Store>(store: S) {
    four_days(&store).await;
    let acme = tenant("acme");
    store.close_periods(&acme, t("2026-11-22T00:00:00Z"), CloseMode::Explicit, now(), None).await.unwrap();
    let q = |closed, limit, after| PeriodQuery { closed, limit, after, ..PeriodQuery::default() };
    let all = store.list_periods(&acme, &q(None, 10, None)).await.unwrap();
    let starts: Vec<Timestamp> = all.iter().map(|p| p.record.period_start).collect();
    assert_eq!(
        starts,
        ["2026-11-29", "2026-11-22", "2026-11-21", "2026-11-20"].map(|d| t(&format!("{d}T00:00:00Z")))
    );
    assert_eq!(all.iter().map(|p| p.closed_at.is_some()).collect::<Vec<_>>(), [false, false, true, true]);
    assert_eq!(store.list_periods(&acme, &q(Some(true), 10, None)).await.unwrap().len(), 2);
    assert_eq!(store.list_periods(&acme, &q(Some(false), 10, None)).await.unwrap().len(), 2);
    // Pages of one cover every period once.
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = store.list_periods(&acme, &q(None, 1, after.clone())).await.unwrap();
        let Some(last) = page.last() else { break };
        seen.push(last.record.period_start);
        after = Some(PeriodCursor {
            period_start: last.record.period_start,
            metric_code: last.record.metric_code.clone(),
        });
    }
    assert_eq!(seen, starts);
    assert!(store.list_periods(&tenant("other"), &q(None, 10, None)).await.unwrap().is_empty());
}

pub async fn a_commit_into_a_closed_period_is_refused_and_releases_its_hold<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![daily("api_calls", 100)]).await;
    let acme = tenant("acme");
    let held_at = t("2026-11-28T23:58:00Z");
    let r = store.reserve(&reserve_req("acme", "api_calls", 40, 600), held_at).await.unwrap().unwrap();
    let after = t("2026-11-29T00:03:00Z");
    assert_eq!(held(&store, after).await, 40);
    store.close_periods(&acme, t("2026-11-29T00:00:00Z"), CloseMode::Explicit, after, None).await.unwrap();
    let refused = store
        .commit_reservation(&commit_req("acme", r.reservation.id, None), after)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(refused, UsageError::PeriodClosed { .. }), "{refused:?}");
    assert_eq!(held(&store, after).await, 0, "the hold is released");
    let again = store.commit_reservation(&commit_req("acme", r.reservation.id, None), after).await.unwrap();
    assert!(
        matches!(again, Err(UsageError::ReservationClosed { status: ReservationStatus::Released, .. })),
        "{again:?}"
    );
    assert!(all_events(&store, "acme").await.is_empty());
}

pub async fn writers_racing_a_close_never_land_in_the_closed_period<S: Store>(store: S) {
    setup(&store, "acme", "pro", vec![daily("api_calls", 1_000_000)]).await;
    let acme = tenant("acme");
    let d28 = t("2026-11-28T12:00:00Z");
    apply_one(&store, at_time(req("acme", "api_calls", 1), d28)).await.unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(1));
    let mut writers = Vec::new();
    for w in 0..32 {
        let (store, accepted) = (store.clone(), accepted.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..20 {
                let r = keyed(at_time(req("acme", "api_calls", 1), d28), &format!("w{w}-{i}"));
                match apply_one(&store, r).await {
                    Ok(_) => {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(UsageError::PeriodClosed { .. }) => return,
                    Err(e) => panic!("{e:?}"),
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let closed = store
        .close_periods(&acme, t("2026-11-29T00:00:00Z"), CloseMode::Explicit, now(), None)
        .await
        .unwrap();
    assert_eq!(closed.closed, 1);
    // Whatever answered after the close committed, nothing more lands in the day.
    let at_close = day_usage(&store, "2026-11-28T00:00:00Z").await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(day_usage(&store, "2026-11-28T00:00:00Z").await, Some(at_close));
    assert_eq!(at_close, accepted.load(std::sync::atomic::Ordering::SeqCst));
    let late = apply_one(&store, at_time(req("acme", "api_calls", 1), d28)).await.unwrap_err();
    assert!(matches!(late, UsageError::PeriodClosed { .. }), "{late:?}");
}

pub async fn a_whole_write_is_refused_whole_by_a_closed_period<S: Store>(store: S) {
    four_days(&store).await;
    let acme = tenant("acme");
    store.close_periods(&acme, t("2026-11-22T00:00:00Z"), CloseMode::Explicit, now(), None).await.unwrap();
    let ctx = Ctx::new(now(), CONTRACT_EVENT_AGE);
    let open = req("acme", "api_calls", 1);
    let closed = at_time(req("acme", "api_calls", 1), t("2026-11-21T12:00:00Z"));
    let cold = at_time(req("acme", "api_calls", 1), t("2026-11-23T12:00:00Z"));
    let ops = vec![WriteOp::Usage(open.clone()), WriteOp::Usage(cold.clone()), WriteOp::Usage(closed)];
    let answers = store.write_whole(ops, ctx).await.unwrap();
    assert_eq!(answers.len(), 3);
    for a in answers {
        let refused = a.into_usage().unwrap().unwrap_err();
        assert!(matches!(refused, UsageError::PeriodClosed { .. }), "{refused:?}");
    }
    assert_eq!(
        (current_or_none(&store).await, day_usage(&store, "2026-11-23T00:00:00Z").await),
        (Some(4), None)
    );
    // Without the closed one, the same operations are written, whole.
    let answers = store.write_whole(vec![WriteOp::Usage(open), WriteOp::Usage(cold)], ctx).await.unwrap();
    assert!(answers.into_iter().all(|a| a.into_usage().unwrap().is_ok()));
    assert_eq!(
        (current_or_none(&store).await, day_usage(&store, "2026-11-23T00:00:00Z").await),
        (Some(5), Some(1))
    );
}
