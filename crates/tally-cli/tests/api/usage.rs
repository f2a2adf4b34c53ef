//! Recording usage: the answer, periods, timestamps, metadata, amounts and enforcement.

use chrono::{Duration, Utc};
use serde_json::{Value, json};

use crate::helpers::{ANCHOR, Backend, NOW, TestApp, assert_uuid_v7, fmt, keys, limit, sorted, ts};

const RECORD_MEMBERS: [&str; 12] = [
    "event_id",
    "tenant_id",
    "metric_code",
    "amount",
    "current_usage",
    "limit",
    "remaining",
    "enforcement",
    "period_start",
    "period_end",
    "exceeded",
    "replayed",
];

async fn recording_answers_exactly_the_documented_body(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100000), "hard", "month")]), Some(ANCHOR))
        .await;
    app.record("acme", "api_calls", 41).await;

    let body = app
        .post_usage(
            "acme",
            &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "req-7f3a",
                    "metadata": {"endpoint": "/search"}, "timestamp": "2026-11-29T10:00:00Z"}),
        )
        .await
        .ok(200);
    assert_eq!(keys(&body), sorted(&RECORD_MEMBERS));
    assert_uuid_v7(&body["event_id"]);
    assert_eq!(body["tenant_id"], "acme");
    assert_eq!(body["metric_code"], "api_calls");
    assert_eq!(body["amount"], 1);
    assert_eq!(body["current_usage"], 42);
    assert_eq!(body["limit"], 100000);
    assert_eq!(body["remaining"], 99958);
    assert_eq!(body["enforcement"], "hard");
    assert_eq!(body["period_start"], "2026-11-15T00:00:00Z");
    assert_eq!(body["period_end"], "2026-12-15T00:00:00Z");
    assert_eq!(body["exceeded"], false);
    assert_eq!(body["replayed"], false);

    let events = app.all_events("acme").await;
    assert_eq!(events.len(), 2);
    let event = events.iter().find(|e| e["id"] == body["event_id"]).expect("the recorded event is listed");
    assert_eq!(event["metadata"], json!({"endpoint": "/search"}));
    assert_eq!(event["idempotency_key"], "req-7f3a");
    assert_eq!(event["timestamp"], "2026-11-29T10:00:00Z");
    assert_eq!(event["amount"], 1);
}

async fn remaining_stops_at_zero_and_is_null_when_unlimited(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", Some(3), "soft", "month"), limit("exports", None, "none", "month")]),
        None,
    )
    .await;

    let over = app.record("acme", "api_calls", 5).await;
    assert_eq!(over["current_usage"], 5);
    assert_eq!(over["remaining"], 0);
    assert_eq!(over["exceeded"], true);

    let unlimited = app.record("acme", "exports", 7).await;
    assert_eq!(unlimited["limit"], Value::Null);
    assert_eq!(unlimited["remaining"], Value::Null);
    assert_eq!(unlimited["exceeded"], false);
    assert_eq!(unlimited["enforcement"], "none");
}

async fn month_periods_follow_the_anchor_clamped_to_the_end_of_the_month(backend: Backend) {
    let app = TestApp::spawn_at(backend, "2026-03-05T00:00:00Z").await;
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", None, "none", "month")]),
        Some("2026-01-31T10:00:00Z"),
    )
    .await;

    let now = app.record("acme", "api_calls", 1).await;
    assert_eq!(now["period_start"], "2026-02-28T10:00:00Z");
    assert_eq!(now["period_end"], "2026-03-31T10:00:00Z");

    let earlier = app.record_at("acme", "api_calls", 1, "2026-02-28T09:59:59Z").await;
    assert_eq!(earlier["period_start"], "2026-01-31T10:00:00Z");
    assert_eq!(earlier["period_end"], "2026-02-28T10:00:00Z");
    assert_eq!(earlier["current_usage"], 1, "a usage counts in the period of its timestamp");

    let boundary = app.record_at("acme", "api_calls", 1, "2026-02-28T10:00:00Z").await;
    assert_eq!(boundary["period_start"], "2026-02-28T10:00:00Z", "periods are half-open");
    assert_eq!(boundary["current_usage"], 2);
}

async fn periods_tile_time_before_the_anchor_too(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", None, "none", "month"), limit("seats", None, "none", "year")]),
        Some("2026-12-10T00:00:00Z"),
    )
    .await;
    let month = app.record("acme", "api_calls", 1).await;
    assert_eq!(month["period_start"], "2026-11-10T00:00:00Z");
    assert_eq!(month["period_end"], "2026-12-10T00:00:00Z");
    let year = app.record("acme", "seats", 1).await;
    assert_eq!(year["period_start"], "2025-12-10T00:00:00Z");
    assert_eq!(year["period_end"], "2026-12-10T00:00:00Z");
}

async fn hour_day_and_week_periods_follow_the_utc_calendar(backend: Backend) {
    // 2026-11-29 is a Sunday: its week started on Monday the 23rd.
    let app = TestApp::spawn_at(backend, "2026-11-29T10:30:00Z").await;
    app.tenant_on_plan(
        "acme",
        json!([
            limit("per_hour", Some(10), "hard", "hour"),
            limit("per_day", Some(10), "hard", "day"),
            limit("per_week", Some(10), "hard", "week"),
        ]),
        Some("2026-11-15T07:13:00Z"),
    )
    .await;
    let hour = app.record("acme", "per_hour", 1).await;
    assert_eq!(
        (hour["period_start"].as_str(), hour["period_end"].as_str()),
        (Some("2026-11-29T10:00:00Z"), Some("2026-11-29T11:00:00Z"))
    );
    let day = app.record("acme", "per_day", 1).await;
    assert_eq!(
        (day["period_start"].as_str(), day["period_end"].as_str()),
        (Some("2026-11-29T00:00:00Z"), Some("2026-11-30T00:00:00Z"))
    );
    let week = app.record("acme", "per_week", 1).await;
    assert_eq!(
        (week["period_start"].as_str(), week["period_end"].as_str()),
        (Some("2026-11-23T00:00:00Z"), Some("2026-11-30T00:00:00Z"))
    );
}

async fn a_timestamp_with_an_offset_counts_at_its_instant_and_answers_in_utc(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "hour")]), Some(ANCHOR)).await;

    let body = app.record_at("acme", "api_calls", 1, "2026-11-29T11:30:00+02:00").await;
    assert_eq!(body["period_start"], "2026-11-29T09:00:00Z");
    assert_eq!(body["period_end"], "2026-11-29T10:00:00Z");

    let events = app.all_events("acme").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["timestamp"], "2026-11-29T09:30:00Z");
}

async fn a_timestamp_without_an_offset_is_invalid(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "month")]), Some(ANCHOR)).await;
    for bad in [json!("2026-11-29T10:00:00"), json!("2026-11-29"), json!("yesterday"), json!(1796032800)] {
        let r =
            app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "timestamp": bad})).await;
        let problem = r.problem(400, "invalid_request");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("timestamp")), "{problem}");
    }
    assert!(app.all_events("acme").await.is_empty());
}

async fn a_timestamp_outside_the_window_is_event_out_of_window(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "month")]), Some(ANCHOR)).await;
    let now = ts(NOW);

    for refused in [now + Duration::seconds(5 * 60 + 1), now - Duration::days(35) - Duration::seconds(1)] {
        app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "timestamp": fmt(refused)}))
            .await
            .problem(422, "event_out_of_window");
    }
    assert!(app.all_events("acme").await.is_empty(), "a refused event records nothing");

    for accepted in [now + Duration::seconds(5 * 60), now - Duration::days(35)] {
        app.record_at("acme", "api_calls", 1, &fmt(accepted)).await;
    }
    assert_eq!(app.all_events("acme").await.len(), 2);
}

async fn an_event_sent_without_metadata_shows_an_empty_object(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "month")]), None).await;
    app.record("acme", "api_calls", 1).await;
    let events = app.all_events("acme").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["metadata"], json!({}));
    assert_eq!(events[0]["idempotency_key"], Value::Null);
}

async fn metadata_over_4096_bytes_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", None, "none", "month")]), None).await;
    // `{"k":"` + value + `"}` is the value's length plus 8 bytes.
    let sized = |value: String| json!({"metric_code": "api_calls", "amount": 1, "metadata": {"k": value}});

    app.post_usage("acme", &sized("x".repeat(4088))).await.ok(200);
    let problem = app.post_usage("acme", &sized("x".repeat(4089))).await.problem(400, "invalid_request");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("metadata")), "{problem}");

    // Non-ASCII counts as its UTF-8 bytes ("é" is 2), not as a 6-byte \u escape.
    app.post_usage("acme", &sized("é".repeat(2044))).await.ok(200);
    app.post_usage("acme", &sized(format!("{}x", "é".repeat(2044)))).await.problem(400, "invalid_request");

    for not_an_object in [json!([1, 2]), json!("text"), json!(5)] {
        app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "metadata": not_an_object}))
            .await
            .problem(400, "invalid_request");
    }
    assert_eq!(app.all_events("acme").await.len(), 2);
}

async fn amounts_outside_one_to_a_trillion_or_not_integers_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", None, "none", "month")]), None).await;
    for bad in
        [json!(0), json!(-1), json!(1.5), json!("1"), json!(1_000_000_000_001_i64), json!(null), json!(true)]
    {
        let r = app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": bad})).await;
        let problem = r.problem(400, "invalid_request");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("amount")), "amount {bad}: {problem}");
    }
    app.post_usage("acme", &json!({"metric_code": "api_calls"})).await.problem(400, "invalid_request");
    assert!(app.all_events("acme").await.is_empty());

    let max = app.record("acme", "api_calls", 1_000_000_000_000).await;
    assert_eq!(max["amount"], 1_000_000_000_000_i64);
    assert_eq!(app.record("acme", "api_calls", 1).await["current_usage"], 1_000_000_000_001_i64);
}

async fn a_hard_limit_allows_exactly_up_to_the_limit_and_refuses_the_next_unit(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "month")]), Some(ANCHOR)).await;
    app.record("acme", "api_calls", 4).await;
    let full = app.record("acme", "api_calls", 6).await;
    assert_eq!(full["current_usage"], 10);
    assert_eq!(full["remaining"], 0);
    assert_eq!(full["exceeded"], false);

    let r = app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1})).await;
    let problem = r.problem(429, "quota_exceeded");
    assert_eq!(problem["metric_code"], "api_calls");
    assert_eq!(problem["current_usage"], 10);
    assert_eq!(problem["limit"], 10);
    assert_eq!(problem["requested"], 1);
    assert_eq!(problem["period_end"], "2026-12-15T00:00:00Z");
    let retry_after = r.header("retry-after").expect("a 429 carries Retry-After");
    assert!(retry_after.parse::<u64>().is_ok_and(|s| s > 0), "Retry-After: {retry_after}");

    // Nothing was recorded.
    assert_eq!(app.current_usage("acme", "api_calls").await, 10);
    assert_eq!(app.all_events("acme").await.len(), 2);

    // A smaller request that would also cross is refused as well, reporting what it asked.
    let r = app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 5})).await;
    assert_eq!(r.problem(429, "quota_exceeded")["requested"], 5);
}

async fn quota_exceeded_says_when_to_retry_in_seconds_until_the_period_end(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(1), "hard", "day")]), None).await;
    app.record("acme", "api_calls", 1).await;

    let before = Utc::now();
    let r = app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1})).await;
    let after = Utc::now();
    let problem = r.problem(429, "quota_exceeded");
    let period_end = ts(problem["period_end"].as_str().expect("period_end"));
    let secs = |from: chrono::DateTime<Utc>| {
        let micros = (period_end - from).num_microseconds().expect("in range");
        (micros + 999_999) / 1_000_000
    };
    let retry_after: i64 =
        r.header("retry-after").expect("Retry-After").parse().expect("Retry-After is whole seconds");
    assert!(
        (secs(after)..=secs(before)).contains(&retry_after),
        "Retry-After {retry_after} is not the seconds to {period_end}, rounded up"
    );
}

async fn retry_after_counts_from_the_servers_clock(backend: Backend) {
    // The period and the wait must come from the same "now": at 10:59:30 on the server's
    // clock an hourly limit frees up in 30 seconds.
    let app = TestApp::spawn_at(backend, "2026-11-29T10:59:30Z").await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(1), "hard", "hour")]), Some(ANCHOR)).await;
    app.record("acme", "api_calls", 1).await;
    let r = app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1})).await;
    assert_eq!(r.problem(429, "quota_exceeded")["period_end"], "2026-11-29T11:00:00Z");
    assert_eq!(r.header("retry-after"), Some("30"));
}

async fn a_soft_limit_records_past_the_limit_and_says_exceeded(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(2), "soft", "month")]), None).await;
    let at_limit = app.record("acme", "api_calls", 2).await;
    assert_eq!(at_limit["exceeded"], false, "exceeded means above the limit");
    assert_eq!(at_limit["remaining"], 0);
    let over = app.record("acme", "api_calls", 1).await;
    assert_eq!(over["current_usage"], 3);
    assert_eq!(over["exceeded"], true);
    assert_eq!(over["remaining"], 0);
    assert_eq!(over["enforcement"], "soft");
    assert_eq!(app.current_usage("acme", "api_calls").await, 3);
}

async fn enforcement_none_always_records_and_still_reports_exceeded(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", Some(1), "none", "month"), limit("exports", None, "none", "month")]),
        None,
    )
    .await;
    let over = app.record("acme", "api_calls", 5).await;
    assert_eq!(over["current_usage"], 5);
    assert_eq!(over["exceeded"], true);
    assert_eq!(over["enforcement"], "none");
    let untracked = app.record("acme", "exports", 5).await;
    assert_eq!(untracked["exceeded"], false);
}

async fn an_unknown_metric_is_quota_not_found(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "month")]), None).await;
    let problem = app
        .post_usage("acme", &json!({"metric_code": "exports", "amount": 1}))
        .await
        .problem(422, "quota_not_found");
    assert_eq!(problem["metric_code"], "exports");
    assert!(app.all_events("acme").await.is_empty());
}

async fn an_unknown_tenant_is_not_found(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.post_usage("ghost", &json!({"metric_code": "api_calls", "amount": 1}))
        .await
        .problem(404, "not_found");
    app.check("ghost", "api_calls", 1).await.problem(404, "not_found");
}

async fn a_tenant_without_a_subscription_cannot_record(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put_tenant("acme").await;
    app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1}))
        .await
        .problem(422, "no_subscription");
}

async fn a_limit_of_zero_refuses_every_hard_usage_and_flags_every_soft_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", Some(0), "hard", "month"), limit("exports", Some(0), "soft", "month")]),
        None,
    )
    .await;
    let r = app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1})).await;
    let problem = r.problem(429, "quota_exceeded");
    assert_eq!((problem["current_usage"].as_i64(), problem["limit"].as_i64()), (Some(0), Some(0)));
    let soft = app.record("acme", "exports", 1).await;
    assert_eq!(soft["exceeded"], true);
    assert_eq!(soft["remaining"], 0);
}

store_tests!(
    a_limit_of_zero_refuses_every_hard_usage_and_flags_every_soft_one,
    recording_answers_exactly_the_documented_body,
    remaining_stops_at_zero_and_is_null_when_unlimited,
    month_periods_follow_the_anchor_clamped_to_the_end_of_the_month,
    periods_tile_time_before_the_anchor_too,
    hour_day_and_week_periods_follow_the_utc_calendar,
    a_timestamp_with_an_offset_counts_at_its_instant_and_answers_in_utc,
    a_timestamp_without_an_offset_is_invalid,
    a_timestamp_outside_the_window_is_event_out_of_window,
    an_event_sent_without_metadata_shows_an_empty_object,
    metadata_over_4096_bytes_is_refused,
    amounts_outside_one_to_a_trillion_or_not_integers_are_refused,
    a_hard_limit_allows_exactly_up_to_the_limit_and_refuses_the_next_unit,
    quota_exceeded_says_when_to_retry_in_seconds_until_the_period_end,
    retry_after_counts_from_the_servers_clock,
    a_soft_limit_records_past_the_limit_and_says_exceeded,
    enforcement_none_always_records_and_still_reports_exceeded,
    an_unknown_metric_is_quota_not_found,
    an_unknown_tenant_is_not_found,
    a_tenant_without_a_subscription_cannot_record,
);
