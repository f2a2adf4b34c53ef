//! Usage against the real server: record, check, usage, events, history, reset, batches,
//! gauges, and the typed errors.

use chrono::{DateTime, Utc};
use serde_json::json;
use tally_client::{
    AuditQuery, BatchResult, CheckRequest, Enforcement, Error, EventsQuery, HistoryQuery, Limit, MetricKind,
    MetricRequest, PeriodKind, UsageRequest,
};

use crate::helpers::{TestServer, hard, seed};

#[tokio::test]
async fn record_check_usage_and_events_round_trip() {
    let server = TestServer::start().await;
    let tally = server.client();
    let storage = Limit::new("storage_bytes", Some(100), Enforcement::Soft, PeriodKind::Month);
    seed(&tally, "pro", "acme", vec![hard("api_calls", 10), storage]).await;

    // Recorded, with everything the answer carries.
    let at = DateTime::from_timestamp(Utc::now().timestamp() - 60, 0).unwrap();
    let request = UsageRequest::new("api_calls", 3)
        .with_idempotency_key("req-1")
        .with_metadata(json!({"endpoint": "/search"}))
        .with_timestamp(at);
    let first = tally.record("acme", &request).await.unwrap();
    assert_eq!((first.tenant_id.as_str(), first.metric_code.as_str()), ("acme", "api_calls"));
    assert_eq!((first.amount, first.current_usage, first.limit, first.remaining), (3, 3, Some(10), Some(7)));
    assert_eq!(first.enforcement, Enforcement::Hard);
    assert!(!first.exceeded && !first.replayed);
    let (start, end) = (first.period_start.unwrap(), first.period_end.unwrap());
    assert!(start <= at && at < end, "{start} <= {at} < {end}");
    assert_eq!(uuid::Uuid::parse_str(&first.event_id).unwrap().get_version_num(), 7);

    // The same key and payload: the original answer, replayed, nothing more counted.
    let again = tally.record("acme", &request).await.unwrap();
    assert!(again.replayed);
    assert_eq!((again.event_id.as_str(), again.current_usage), (first.event_id.as_str(), 3));

    // Check changes nothing and says yes up to the limit, no beyond it.
    let yes = tally.check("acme", &CheckRequest::new("api_calls", 7)).await.unwrap();
    assert!(yes.allowed);
    assert_eq!((yes.current_usage, yes.reserved, yes.remaining), (3, 0, Some(7)));
    assert_eq!(yes.period_end, Some(end));
    let no = tally.check("acme", &CheckRequest::new("api_calls", 8)).await.unwrap();
    assert!(!no.allowed);

    // The current period of every metric of the plan.
    let usage = tally.usage("acme").await.unwrap();
    assert_eq!((usage.tenant_id.as_str(), usage.plan_code.as_str()), ("acme", "pro"));
    let mut metrics: Vec<_> =
        usage.metrics.iter().map(|m| (m.metric_code.as_str(), m.current_usage)).collect();
    metrics.sort();
    assert_eq!(metrics, [("api_calls", 3), ("storage_bytes", 0)]);
    let soft = usage.metrics.iter().find(|m| m.metric_code == "storage_bytes").unwrap();
    assert_eq!(
        (soft.enforcement, soft.period, soft.limit),
        (Enforcement::Soft, PeriodKind::Month, Some(100))
    );

    // One event, as sent.
    let events = tally.events("acme", &EventsQuery::default()).await.unwrap();
    assert_eq!(events.events.len(), 1, "{events:?}");
    let event = &events.events[0];
    assert_eq!((event.id.as_str(), event.amount), (first.event_id.as_str(), 3));
    assert_eq!(event.idempotency_key.as_deref(), Some("req-1"));
    assert_eq!(event.metadata, json!({"endpoint": "/search"}));
    assert_eq!(event.timestamp, at);
    assert_eq!(events.next_cursor, None);

    // A second event without a key gets a generated one; filters and pages work.
    tally.record("acme", &UsageRequest::new("storage_bytes", 150)).await.unwrap();
    let page = tally.events("acme", &EventsQuery { limit: Some(1), ..EventsQuery::default() }).await.unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].metric_code, "storage_bytes", "newest first");
    let generated = page.events[0].idempotency_key.clone().unwrap();
    assert_eq!(uuid::Uuid::parse_str(&generated).unwrap().get_version_num(), 7);
    let rest = tally
        .events(
            "acme",
            &EventsQuery { limit: Some(1), cursor: page.next_cursor.clone(), ..EventsQuery::default() },
        )
        .await
        .unwrap();
    assert_eq!(rest.events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [first.event_id.as_str()]);
    let only =
        EventsQuery { metric_code: Some("api_calls".into()), from: Some(at), ..EventsQuery::default() };
    assert_eq!(tally.events("acme", &only).await.unwrap().events.len(), 1);
    let before = EventsQuery { to: Some(at), ..EventsQuery::default() };
    assert!(tally.events("acme", &before).await.unwrap().events.is_empty(), "`to` is exclusive");

    // History, then a reset that shows in history and in the audit log.
    let history = tally.history("acme", "api_calls", &HistoryQuery::default()).await.unwrap();
    assert_eq!(history.records.len(), 1);
    assert_eq!((history.records[0].current_usage, history.records[0].period_start), (3, Some(start)));
    let reset = tally.reset("acme", "api_calls").await.unwrap();
    assert_eq!((reset.current_usage, reset.id.as_str()), (0, history.records[0].id.as_str()));
    let audit =
        tally.audit(&AuditQuery { tenant_id: Some("acme".into()), ..AuditQuery::default() }).await.unwrap();
    assert_eq!(audit.entries.first().map(|e| e.action.as_str()), Some("reset"), "{audit:?}");
}

#[tokio::test]
async fn a_hard_limit_refuses_with_the_quota_members_and_nothing_is_recorded() {
    let server = TestServer::start().await;
    let tally = server.client();
    seed(&tally, "free", "acme", vec![hard("api_calls", 5)]).await;
    let ok = tally.record("acme", &UsageRequest::new("api_calls", 4)).await.unwrap();

    let err = tally.record("acme", &UsageRequest::new("api_calls", 2)).await.unwrap_err();
    let Error::QuotaExceeded(q) = &err else { panic!("expected a quota refusal, got {err:?}") };
    assert_eq!(q.metric_code, "api_calls");
    assert_eq!((q.current_usage, q.limit, q.requested), (4, 5, 2));
    assert_eq!(q.period_end, ok.period_end);
    let retry_after = q.retry_after.expect("a Retry-After header");
    assert!(retry_after.as_secs() > 0);
    assert!(q.detail.contains("api_calls"), "{}", q.detail);
    assert_eq!((err.status(), err.code()), (Some(429), Some("quota_exceeded")));
    assert!(err.is_quota_exceeded() && !err.is_unavailable());

    assert_eq!(tally.usage("acme").await.unwrap().metrics[0].current_usage, 4, "a refusal records nothing");
    assert_eq!(tally.events("acme", &EventsQuery::default()).await.unwrap().events.len(), 1);
}

#[tokio::test]
async fn other_refusals_are_problems_with_their_code() {
    let server = TestServer::start().await;
    let tally = server.client();
    seed(&tally, "free", "acme", vec![hard("api_calls", 5)]).await;

    let unknown_metric = tally.record("acme", &UsageRequest::new("exports", 1)).await.unwrap_err();
    let p = unknown_metric.problem().unwrap();
    assert_eq!(
        (p.status, p.code.as_str(), p.metric_code.as_deref()),
        (422, "quota_not_found", Some("exports"))
    );

    let bad = tally.record("acme", &UsageRequest::new("Bad-Code", 1)).await.unwrap_err();
    assert_eq!((bad.status(), bad.code()), (Some(400), Some("invalid_request")));
    assert!(!bad.problem().unwrap().detail.is_empty());

    tally.put_tenant("bare", &Default::default()).await.unwrap();
    let unsubscribed = tally.usage("bare").await.unwrap_err();
    assert_eq!((unsubscribed.status(), unsubscribed.code()), (Some(422), Some("no_subscription")));

    let reused = UsageRequest::new("api_calls", 1).with_idempotency_key("same");
    tally.record("acme", &reused).await.unwrap();
    let conflict =
        tally.record("acme", &UsageRequest::new("api_calls", 2).with_idempotency_key("same")).await;
    assert_eq!(conflict.unwrap_err().code(), Some("idempotency_conflict"));

    let anonymous = tally_client::Client::new(&server.url, "wrong-key").unwrap();
    let denied = anonymous.usage("acme").await.unwrap_err();
    assert_eq!((denied.status(), denied.code()), (Some(401), Some("unauthorized")));
}

#[tokio::test]
async fn a_batch_answers_each_event_in_order_and_replays_by_key() {
    let server = TestServer::start().await;
    let tally = server.client();
    seed(&tally, "pro", "acme", vec![hard("api_calls", 100)]).await;

    let events = vec![
        UsageRequest::new("api_calls", 1),
        UsageRequest::new("api_calls", 2).with_idempotency_key("batch-2"),
        UsageRequest::new("nope", 1),
        UsageRequest::new("api_calls", 200),
    ];
    let answer = tally.record_batch("acme", &events).await.unwrap();
    assert_eq!(answer.results.len(), 4);
    let recorded: Vec<_> = answer.results.iter().filter_map(BatchResult::recorded).collect();
    assert_eq!(recorded.iter().map(|r| r.current_usage).collect::<Vec<_>>(), [1, 3], "applied in order");
    let not_found = answer.results[2].problem().unwrap();
    assert_eq!((not_found.status, not_found.code.as_str()), (422, "quota_not_found"));
    let BatchResult::Failed(over) = &answer.results[3] else { panic!("{:?}", answer.results[3]) };
    assert_eq!(
        (over.code.as_str(), over.current_usage, over.limit, over.requested),
        ("quota_exceeded", Some(3), Some(100), Some(200))
    );

    // Sent again: the keyed event replays, the one without a key got a new key and counts.
    let again = tally.record_batch("acme", &events[..2]).await.unwrap();
    let replays: Vec<_> = again.results.iter().map(|r| r.recorded().unwrap().replayed).collect();
    assert_eq!(replays, [false, true]);
    let listed = tally.events("acme", &EventsQuery::default()).await.unwrap().events;
    assert_eq!(listed.len(), 3, "two from the first batch, one new: {listed:?}");
    assert!(listed.iter().all(|e| e.idempotency_key.is_some()), "every event of a batch gets a key");

    let empty = tally.record_batch("acme", &[]).await.unwrap();
    assert!(empty.results.is_empty());
}

#[tokio::test]
async fn gauges_go_up_and_down_without_a_period() {
    let server = TestServer::start().await;
    let tally = server.client();
    let seats = MetricRequest {
        name: Some("Seats".into()),
        unit: Some("seat".into()),
        kind: Some(MetricKind::Gauge),
        ..Default::default()
    };
    tally.put_metric("seats", &seats).await.unwrap();
    let limit = Limit::new("seats", Some(5), Enforcement::Hard, PeriodKind::None);
    seed(&tally, "team", "acme", vec![limit]).await;

    let set = tally.record("acme", &UsageRequest::set_level("seats", 4)).await.unwrap();
    assert_eq!((set.current_usage, set.period_start, set.period_end), (4, None, None));
    let down = tally.record("acme", &UsageRequest::new("seats", -3)).await.unwrap();
    assert_eq!((down.amount, down.current_usage), (-3, 1));
    assert!(tally.check("acme", &CheckRequest::set_level("seats", 5)).await.unwrap().allowed);
    let over = tally.record("acme", &UsageRequest::set_level("seats", 6)).await.unwrap_err();
    assert_eq!(over.quota_exceeded().map(|q| (q.limit, q.period_end)), Some((5, None)));
    let below = tally.record("acme", &UsageRequest::new("seats", -2)).await.unwrap_err();
    assert_eq!(below.code(), Some("gauge_below_zero"));
    assert_eq!(tally.usage("acme").await.unwrap().metrics[0].period, PeriodKind::None);
}
