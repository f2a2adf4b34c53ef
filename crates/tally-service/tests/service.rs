//! The use cases over an SQLite temp-file store, with a clock the tests move.
#![allow(clippy::unwrap_used)] // Integration tests: a failed unwrap is a failed test.

use std::sync::Arc;

use chrono::Duration;
use tally_domain::{
    Amount, Change, DomainError, KeyScope, LimitEnforcement, Metadata, MetricCode, Name, PeriodKind,
    PlanCode, PlanSpec, QuotaLimit, TenantId, Timestamp, UsageError, UsageRequest,
};
use tally_service::usage::EventFilter;
use tally_service::{ManualClock, ServiceConfig, ServiceError, Tally};
use tally_store::{PeriodStore, PlanStore, UsageRepository};
use tally_store_sqlite::SqliteStore;

fn t(s: &str) -> Timestamp {
    tally_domain::time::parse_rfc3339(s).unwrap()
}

fn m(s: &str) -> MetricCode {
    MetricCode::parse(s).unwrap()
}

fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn req(metric: &str, amount: i64) -> UsageRequest {
    UsageRequest {
        tenant_id: acme(),
        metric_code: m(metric),
        change: Change::add(Amount::new(amount).unwrap()),
        idempotency_key: None,
        metadata: Metadata::default(),
        timestamp: None,
    }
}

async fn tally_with(limits: Vec<QuotaLimit>) -> (Tally<SqliteStore>, ManualClock) {
    tally_on(SqliteStore::open_temp_file().await.unwrap(), limits).await
}

async fn tally_on(store: SqliteStore, limits: Vec<QuotaLimit>) -> (Tally<SqliteStore>, ManualClock) {
    let clock = ManualClock::new(t("2026-11-29T10:00:00Z"));
    let tally = Tally::with_clock(store, Arc::new(clock.clone()), ServiceConfig::default());
    let pro = PlanCode::parse("pro").unwrap();
    tally.put_plan(&pro, &PlanSpec::new(Name::parse("Pro").unwrap(), limits).unwrap(), None).await.unwrap();
    tally.put_tenant(&acme(), &Name::parse("Acme").unwrap()).await.unwrap();
    tally.subscribe(&acme(), &pro, Some(t("2026-11-15T00:00:00Z")), None).await.unwrap();
    (tally, clock)
}

fn hard(metric: &str, value: i64, period: PeriodKind) -> QuotaLimit {
    QuotaLimit::new(m(metric), Some(value), LimitEnforcement::Hard, period).unwrap()
}

#[tokio::test]
async fn a_new_period_starts_from_zero_when_the_clock_crosses_its_boundary() {
    let (tally, clock) = tally_with(vec![hard("api_calls", 10, PeriodKind::Day)]).await;
    tally.record(req("api_calls", 10)).await.unwrap();
    let err = tally.record(req("api_calls", 1)).await.unwrap_err();
    assert!(matches!(err, ServiceError::Usage(UsageError::QuotaExceeded { .. })), "{err:?}");
    clock.set(t("2026-11-30T00:00:00Z"));
    let out = tally.record(req("api_calls", 1)).await.unwrap();
    assert_eq!((out.current_usage, out.period.start()), (1, t("2026-11-30T00:00:00Z")));
}

#[tokio::test]
async fn timestamps_outside_the_window_are_refused() {
    let (tally, _clock) = tally_with(vec![hard("api_calls", 10, PeriodKind::Month)]).await;
    let mut future = req("api_calls", 1);
    future.timestamp = Some(t("2026-11-29T10:05:01Z"));
    assert!(matches!(
        tally.record(future.clone()).await.unwrap_err(),
        ServiceError::Usage(UsageError::EventOutOfWindow { .. })
    ));
    future.timestamp = Some(t("2026-11-29T10:05:00Z"));
    assert!(tally.record(future).await.is_ok());
    let mut old = req("api_calls", 1);
    old.timestamp = Some(t("2026-11-29T10:00:00Z") - Duration::days(35) - Duration::seconds(1));
    assert!(matches!(
        tally.record(old).await.unwrap_err(),
        ServiceError::Usage(UsageError::EventOutOfWindow { .. })
    ));
}

#[tokio::test]
async fn check_answers_without_changing_anything() {
    let (tally, _clock) = tally_with(vec![hard("api_calls", 10, PeriodKind::Month)]).await;
    tally.record(req("api_calls", 8)).await.unwrap();
    let yes = tally.check(&acme(), &m("api_calls"), Change::Add(2)).await.unwrap();
    assert_eq!((yes.allowed, yes.current_usage, yes.remaining), (true, 8, Some(2)));
    let no = tally.check(&acme(), &m("api_calls"), Change::Add(3)).await.unwrap();
    assert!(!no.allowed);
    assert_eq!(tally.usage(&acme()).await.unwrap().metrics[0].current_usage, 8);
    let err = tally.check(&acme(), &m("nope"), Change::Add(1)).await.unwrap_err();
    assert!(matches!(err, ServiceError::Usage(UsageError::QuotaNotFound { .. })));
}

#[tokio::test]
async fn usage_lists_every_metric_with_zero_where_nothing_was_used() {
    let soft = QuotaLimit::new(m("storage"), Some(5), LimitEnforcement::Soft, PeriodKind::Month).unwrap();
    let (tally, _clock) = tally_with(vec![hard("api_calls", 10, PeriodKind::Month), soft]).await;
    tally.record(req("storage", 7)).await.unwrap();
    let usage = tally.usage(&acme()).await.unwrap();
    let rows: Vec<(&str, i64, bool)> =
        usage.metrics.iter().map(|u| (u.metric_code.as_str(), u.current_usage, u.exceeded)).collect();
    assert_eq!(rows, [("api_calls", 0, false), ("storage", 7, true)]);
    assert_eq!(usage.plan_code.as_str(), "pro");
    tally.unsubscribe(&acme(), None).await.unwrap();
    assert!(matches!(
        tally.usage(&acme()).await.unwrap_err(),
        ServiceError::Usage(UsageError::NoSubscription { .. })
    ));
}

#[tokio::test]
async fn event_pages_follow_their_cursor_and_bad_cursors_are_refused() {
    let (tally, _clock) = tally_with(vec![hard("api_calls", 1_000, PeriodKind::Month)]).await;
    for i in 1..=5 {
        tally.record(req("api_calls", i)).await.unwrap();
    }
    let mut filter = EventFilter { limit: 2, ..EventFilter::default() };
    let mut amounts = Vec::new();
    for _ in 0..5 {
        let page = tally.events(&acme(), &filter).await.unwrap();
        amounts.extend(page.events.iter().map(|e| e.event.amount));
        match page.next_cursor {
            Some(c) => filter.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(amounts, [5, 4, 3, 2, 1]);
    let bad = EventFilter { limit: 2, cursor: Some("nope".to_owned()), ..EventFilter::default() };
    assert!(matches!(
        tally.events(&acme(), &bad).await.unwrap_err(),
        ServiceError::Invalid(DomainError::Invalid { field: "cursor", .. })
    ));
    let zero = EventFilter { limit: 0, ..EventFilter::default() };
    assert!(matches!(tally.events(&acme(), &zero).await.unwrap_err(), ServiceError::Invalid(_)));
    let ghost = TenantId::parse("ghost").unwrap();
    let ok = EventFilter { limit: 10, ..EventFilter::default() };
    assert!(matches!(tally.events(&ghost, &ok).await.unwrap_err(), ServiceError::NotFound(_)));
}

#[tokio::test]
async fn batch_answers_invalid_items_in_place() {
    let (tally, _clock) = tally_with(vec![hard("api_calls", 10, PeriodKind::Month)]).await;
    let out = tally
        .record_batch(
            &acme(),
            vec![
                Ok(req("api_calls", 4)),
                Err(DomainError::invalid("amount", "must be between 1 and 1000000000000, got 0")),
                Ok(req("api_calls", 7)),
                Ok(req("api_calls", 6)),
            ],
        )
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().map(|o| o.current_usage), Ok(4));
    assert!(matches!(out[1], Err(ServiceError::Invalid(_))));
    assert!(matches!(out[2], Err(ServiceError::Usage(UsageError::QuotaExceeded { .. }))));
    assert_eq!(out[3].as_ref().map(|o| o.current_usage), Ok(10));
    let too_many: Vec<_> = (0..1001).map(|_| Ok(req("api_calls", 1))).collect();
    assert!(matches!(tally.record_batch(&acme(), too_many).await.unwrap_err(), ServiceError::Invalid(_)));
}

#[tokio::test]
async fn verify_finds_no_drift_after_resets_and_names_every_drifted_record() {
    let (tally, clock) = tally_with(vec![hard("api_calls", 100, PeriodKind::Day)]).await;
    tally.record(req("api_calls", 30)).await.unwrap();
    tally.reset(&acme(), &m("api_calls"), None).await.unwrap();
    tally.record(req("api_calls", 5)).await.unwrap();
    clock.advance(Duration::days(1));
    tally.record(req("api_calls", 9)).await.unwrap();
    let report = tally.verify().await.unwrap();
    assert_eq!((report.n_records, report.n_events, report.n_resets), (2, 3, 1));
    assert!(report.drifts.is_empty(), "{report:?}");

    // Change a counter behind the use cases' back.
    let store = tally.store().clone();
    let mut rec = store.get_current_period(&acme(), &m("api_calls"), tally.now()).await.unwrap();
    rec.current_usage = 10;
    store.save(&rec).await.unwrap();
    let report = tally.verify().await.unwrap();
    assert_eq!(report.drifts.len(), 1);
    assert_eq!(
        (report.drifts[0].record_id, report.drifts[0].recorded, report.drifts[0].expected),
        (Some(rec.id), Some(10), 9)
    );
}

#[tokio::test]
async fn keys_authenticate_until_revoked_and_tenant_keys_need_their_tenant() {
    let (tally, _clock) = tally_with(vec![]).await;
    let (admin, secret) = tally.create_key(KeyScope::Admin, None).await.unwrap();
    assert_ne!(admin.key_hash, secret);
    assert_eq!(tally.authenticate(&secret).await.unwrap().map(|k| k.id), Some(admin.id));
    assert_eq!(tally.authenticate("tly_wrong").await.unwrap(), None);
    let (scoped, tenant_secret) = tally.create_key(KeyScope::Tenant(acme()), Some(admin.id)).await.unwrap();
    assert_eq!(
        tally.authenticate(&tenant_secret).await.unwrap().map(|k| k.scope),
        Some(KeyScope::Tenant(acme()))
    );
    tally.revoke_key(scoped.id, Some(admin.id)).await.unwrap();
    assert_eq!(tally.authenticate(&tenant_secret).await.unwrap(), None);
    let ghost = KeyScope::Tenant(TenantId::parse("ghost").unwrap());
    assert!(matches!(tally.create_key(ghost, None).await.unwrap_err(), ServiceError::NotFound(_)));
    let log = tally.audit_log(None, 10, None).await.unwrap();
    assert_eq!(log.entries[0].action, "key.revoke");
    assert_eq!(log.entries[0].key_id, Some(admin.id));
}

#[tokio::test]
async fn a_plan_in_use_cannot_be_deleted() {
    let (tally, _clock) = tally_with(vec![]).await;
    let pro = PlanCode::parse("pro").unwrap();
    assert!(matches!(tally.delete_plan(&pro, None).await.unwrap_err(), ServiceError::Conflict(_)));
    tally.unsubscribe(&acme(), None).await.unwrap();
    tally.delete_plan(&pro, None).await.unwrap();
    assert!(matches!(tally.get_plan(&pro).await.unwrap_err(), ServiceError::NotFound(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_never_overshoots_and_answers_each_caller_its_own_result() {
    let (tally, _clock) = tally_with(vec![hard("api_calls", 500, PeriodKind::Month)]).await;
    let mut handles = Vec::new();
    for i in 0..64 {
        let tally = tally.clone();
        handles.push(tokio::spawn(async move {
            let mut accepted = 0;
            for n in 0..10 {
                let mut r = req("api_calls", 1);
                r.idempotency_key = Some(tally_domain::IdempotencyKey::parse(&format!("t{i}-{n}")).unwrap());
                match tally.record(r.clone()).await {
                    Ok(out) => {
                        assert!(!out.replayed);
                        accepted += 1;
                        // The same request again is a replay of exactly this answer.
                        let again = tally.record(r).await.unwrap();
                        assert_eq!((again.event_id, again.replayed), (out.event_id, true));
                    }
                    Err(ServiceError::Usage(UsageError::QuotaExceeded { .. })) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for h in handles {
        accepted += h.await.unwrap();
    }
    assert_eq!(accepted, 500);
    assert_eq!(tally.usage(&acme()).await.unwrap().metrics[0].current_usage, 500);
    assert!(tally.verify().await.unwrap().drifts.is_empty());
}

/// Polls `probe` until it holds, failing after one second.
async fn within_a_second<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !probe().await {
        assert!(std::time::Instant::now() < deadline, "{what} was not seen within 1 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_change_made_through_another_instance_is_seen_within_a_second() {
    // Two stores on one file, each with its own caches, as two processes would be.
    let dir = std::env::temp_dir().join(format!("tally-service-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tally.sqlite3");
    let url = file.to_str().unwrap().to_owned();
    let (writer, _clock) =
        tally_on(SqliteStore::open(&url).await.unwrap(), vec![hard("api_calls", 10, PeriodKind::Month)])
            .await;
    let reader = Tally::new(SqliteStore::open(&url).await.unwrap());
    let (key, secret) = writer.create_key(KeyScope::Tenant(acme()), None).await.unwrap();
    assert!(reader.authenticate(&secret).await.unwrap().is_some());
    assert_eq!(reader.check(&acme(), &m("api_calls"), Change::Add(10)).await.unwrap().limit, Some(10));

    let pro = PlanCode::parse("pro").unwrap();
    let raised =
        PlanSpec::new(Name::parse("Pro").unwrap(), vec![hard("api_calls", 20, PeriodKind::Month)]).unwrap();
    writer.put_plan(&pro, &raised, None).await.unwrap();
    writer.revoke_key(key.id, None).await.unwrap();
    within_a_second("the raised limit", || async {
        reader.check(&acme(), &m("api_calls"), Change::Add(10)).await.unwrap().limit == Some(20)
    })
    .await;
    within_a_second("the revoked key", || async { reader.authenticate(&secret).await.unwrap().is_none() })
        .await;
    drop((writer, reader));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_change_made_through_the_same_instance_is_seen_at_once() {
    let (tally, _clock) = tally_with(vec![hard("api_calls", 10, PeriodKind::Month)]).await;
    let beta = TenantId::parse("beta").unwrap();
    tally.put_tenant(&beta, &Name::parse("Beta").unwrap()).await.unwrap();
    assert!(matches!(
        tally.usage(&beta).await.unwrap_err(),
        ServiceError::Usage(UsageError::NoSubscription { .. })
    ));
    tally.subscribe(&beta, &PlanCode::parse("pro").unwrap(), None, None).await.unwrap();
    assert_eq!(tally.usage(&beta).await.unwrap().metrics.len(), 1);
}

#[tokio::test]
async fn close_after_moves_each_subscribers_watermark_to_the_latest_period_end_it_allows() {
    let (tally, clock) =
        tally_with(vec![hard("api_calls", 10, PeriodKind::Day), hard("exports", 10, PeriodKind::Month)])
            .await;
    // Usage on the 26th, 27th and 28th of November, recorded as it happened.
    for day in ["2026-11-26", "2026-11-27", "2026-11-28"] {
        clock.set(t(&format!("{day}T12:00:00Z")));
        tally.record(req("api_calls", 1)).await.unwrap();
    }
    clock.set(t("2026-11-29T10:00:00Z"));
    // Without close_after nothing closes.
    assert_eq!(tally.auto_close_once().await.unwrap(), 0);
    let pro = PlanCode::parse("pro").unwrap();
    let plan = tally.store().find_plan(&pro).await.unwrap().unwrap();
    let spec = PlanSpec::new(plan.name.clone(), plan.limits.clone())
        .unwrap()
        .with_close_after(Some(tally_domain::CloseAfter::parse("1d").unwrap()));
    tally.put_plan(&pro, &spec, None).await.unwrap();
    // 1 day before now is the 28th 10:00: the latest period end by then is the 28th 00:00
    // (the daily limit; the monthly period anchored on the 15th ended on the 15th).
    assert_eq!(tally.auto_close_once().await.unwrap(), 2);
    let mark = tally.store().find_watermark(&acme()).await.unwrap().unwrap();
    assert_eq!(mark.closed_before, t("2026-11-28T00:00:00Z"));
    // Running again (as another instance would) changes nothing.
    assert_eq!(tally.auto_close_once().await.unwrap(), 0);
    // A reopened day stays open across later runs.
    let why = tally_domain::Reason::parse("dispute").unwrap();
    tally.reopen_period(&acme(), &m("api_calls"), t("2026-11-27T00:00:00Z"), &why, None).await.unwrap();
    clock.set(t("2026-11-30T10:00:00Z"));
    assert_eq!(tally.auto_close_once().await.unwrap(), 1, "only the 28th");
    let open = tally_service::closing::PeriodFilter { closed: Some(false), limit: 10, ..Default::default() };
    let starts: Vec<Timestamp> =
        tally.periods(&acme(), &open).await.unwrap().periods.iter().map(|p| p.period.start()).collect();
    assert_eq!(starts, [t("2026-11-27T00:00:00Z")]);
    // A close into the future is refused.
    let future = tally.close_periods(&acme(), t("2026-12-01T00:00:00Z"), None).await.unwrap_err();
    assert!(matches!(future, ServiceError::Invalid(_)), "{future:?}");
    // Reopening a period that is not one of the metric's is not found.
    let odd = tally.reopen_period(&acme(), &m("api_calls"), t("2026-11-20T05:00:00Z"), &why, None).await;
    assert!(matches!(odd, Err(ServiceError::NotFound(_))), "{odd:?}");
}
