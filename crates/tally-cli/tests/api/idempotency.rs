//! Idempotency keys: replay of the original answer, payload equality, conflicts, and keys that
//! a refused request leaves free.

use serde_json::{Value, json};

use crate::helpers::{ANCHOR, Backend, NOW, TestApp, limit};

const USAGE: &str = "/v1/tenants/acme/usage";

/// `body` with `replayed` set to true: what a replay of it must answer.
fn as_replayed(body: &Value) -> Value {
    let mut out = body.clone();
    out["replayed"] = json!(true);
    out
}

async fn the_same_key_and_payload_replay_the_original_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    let request = json!({"metric_code": "api_calls", "amount": 3, "idempotency_key": "req-1",
                         "metadata": {"endpoint": "/search"}});
    let original = app.post_usage("acme", &request).await.ok(200);
    assert_eq!(original["replayed"], false);
    assert_eq!(original["current_usage"], 3);

    app.record("acme", "api_calls", 2).await;

    let replay = app.post_usage("acme", &request).await.ok(200);
    assert_eq!(replay, as_replayed(&original), "the counters are as they were then");
    let again = app.post_usage("acme", &request).await.ok(200);
    assert_eq!(again, as_replayed(&original));

    assert_eq!(app.current_usage("acme", "api_calls").await, 5, "a replay records nothing");
    assert_eq!(app.all_events("acme").await.len(), 2);
}

async fn metadata_key_order_and_timestamp_offsets_do_not_change_the_payload(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), Some(ANCHOR)).await;
    let first = app
        .post_text(
            USAGE,
            r#"{"metric_code":"api_calls","amount":1,"idempotency_key":"k","timestamp":"2026-11-29T09:00:00Z",
                "metadata":{"a":1,"b":{"x":1,"y":[1,2]}}}"#,
        )
        .await
        .ok(200);
    let second = app
        .post_text(
            USAGE,
            r#"{"metadata":{"b":{"y":[1,2],"x":1},"a":1},"timestamp":"2026-11-29T11:00:00+02:00",
                "idempotency_key":"k","amount":1,"metric_code":"api_calls"}"#,
        )
        .await
        .ok(200);
    assert_eq!(second, as_replayed(&first));
    assert_eq!(app.all_events("acme").await.len(), 1);
}

async fn an_explicit_null_equals_an_omitted_member(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;

    let omitted = app
        .post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "a"}))
        .await;
    let omitted = omitted.ok(200);
    let nulls = app
        .post_usage(
            "acme",
            &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "a", "metadata": null, "timestamp": null}),
        )
        .await
        .ok(200);
    assert_eq!(nulls, as_replayed(&omitted));

    let nulls_first = app
        .post_usage(
            "acme",
            &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "b", "metadata": null, "timestamp": null}),
        )
        .await
        .ok(200);
    let omitted_then = app
        .post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "b"}))
        .await
        .ok(200);
    assert_eq!(omitted_then, as_replayed(&nulls_first));
    assert_eq!(app.all_events("acme").await.len(), 2);
}

async fn the_same_key_with_another_payload_is_an_idempotency_conflict(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", Some(100), "hard", "month"), limit("exports", Some(100), "hard", "month")]),
        Some(ANCHOR),
    )
    .await;
    let original = json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "k",
                          "metadata": {"a": 1}, "timestamp": "2026-11-29T09:00:00Z"});
    app.post_usage("acme", &original).await.ok(200);

    let variants = [
        json!({"metric_code": "api_calls", "amount": 2, "idempotency_key": "k", "metadata": {"a": 1}, "timestamp": "2026-11-29T09:00:00Z"}),
        json!({"metric_code": "exports", "amount": 1, "idempotency_key": "k", "metadata": {"a": 1}, "timestamp": "2026-11-29T09:00:00Z"}),
        json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "k", "metadata": {"a": 2}, "timestamp": "2026-11-29T09:00:00Z"}),
        json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "k", "timestamp": "2026-11-29T09:00:00Z"}),
        json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "k", "metadata": {"a": 1}, "timestamp": "2026-11-29T09:00:01Z"}),
        json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "k", "metadata": {"a": 1}}),
    ];
    for variant in &variants {
        app.post_usage("acme", variant).await.problem(409, "idempotency_conflict");
    }
    assert_eq!(app.all_events("acme").await.len(), 1, "a conflict records nothing");
    assert_eq!(app.current_usage("acme", "api_calls").await, 1);
    assert_eq!(app.current_usage("acme", "exports").await, 0);
    assert_eq!(app.post_usage("acme", &original).await.ok(200)["replayed"], true);
}

async fn a_key_refused_with_429_is_evaluated_afresh_on_retry(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(5), "hard", "month")]), None).await;
    app.record("acme", "api_calls", 5).await;

    let request = json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "retry-me"});
    app.post_usage("acme", &request).await.problem(429, "quota_exceeded");
    app.post_usage("acme", &request).await.problem(429, "quota_exceeded");

    // Room again: the key was never used, so even another payload is recorded, not a conflict.
    app.reset("acme", "api_calls").await.ok(200);
    assert_eq!(app.current_usage("acme", "api_calls").await, 0);
    let fresh = app
        .post_usage("acme", &json!({"metric_code": "api_calls", "amount": 2, "idempotency_key": "retry-me"}))
        .await
        .ok(200);
    assert_eq!(fresh["replayed"], false);
    assert_eq!(fresh["current_usage"], 2);
}

async fn a_request_refused_with_4xx_consumes_no_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(5), "hard", "month")]), None).await;

    app.post_usage("acme", &json!({"metric_code": "exports", "amount": 1, "idempotency_key": "k1"}))
        .await
        .problem(422, "quota_not_found");
    app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 0, "idempotency_key": "k1"}))
        .await
        .problem(400, "invalid_request");
    app.post_usage(
        "acme",
        &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "k1", "timestamp": "2000-01-01T00:00:00Z"}),
    )
    .await
    .problem(422, "event_out_of_window");
    let ok = app
        .post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "k1"}))
        .await
        .ok(200);
    assert_eq!(ok["replayed"], false);
    assert_eq!(app.all_events("acme").await.len(), 1);
}

async fn idempotency_keys_belong_to_one_tenant(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    app.tenant_on_plan("globex", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;

    let a = app
        .post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "shared"}))
        .await
        .ok(200);
    let b = app
        .post_usage("globex", &json!({"metric_code": "api_calls", "amount": 7, "idempotency_key": "shared"}))
        .await
        .ok(200);
    assert_eq!(b["replayed"], false);
    assert_eq!(b["tenant_id"], "globex");
    assert_eq!(b["current_usage"], 7);
    assert_ne!(a["event_id"], b["event_id"]);
    assert_eq!(app.all_events("acme").await.len(), 1);
    assert_eq!(app.all_events("globex").await.len(), 1);
}

async fn idempotency_keys_are_1_to_255_visible_ascii_characters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", None, "none", "month")]), None).await;
    for bad in [String::new(), "a b".to_owned(), "tab\tkey".to_owned(), "clé".to_owned(), "k".repeat(256)] {
        app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": bad}))
            .await
            .problem(400, "invalid_request");
    }
    for good in ["!".to_owned(), "~{}[]\"\\".to_owned(), "k".repeat(255)] {
        let ok = app
            .post_usage(
                "acme",
                &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": good.clone()}),
            )
            .await
            .ok(200);
        assert_eq!(ok["replayed"], false, "{good}");
    }
    assert_eq!(app.all_events("acme").await.len(), 3);
}

async fn a_replay_answers_with_the_limits_and_period_of_the_original(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), Some(ANCHOR)).await;
    let request = json!({"metric_code": "api_calls", "amount": 3, "idempotency_key": "then"});
    let original = app.post_usage("acme", &request).await.ok(200);

    app.put_plan("acme_plan", json!([limit("api_calls", Some(50), "soft", "month")])).await;
    app.set_now("2026-12-20T00:00:00Z");
    let replay = app.post_usage("acme", &request).await.ok(200);
    assert_eq!(replay, as_replayed(&original));
    assert_eq!(replay["period_start"], "2026-11-15T00:00:00Z");
    assert_eq!(replay["limit"], 100);
    assert_eq!(app.all_events("acme").await.len(), 1);
}

/// The idempotency look-up comes before the event-time window: a retry of an accepted event
/// whose explicit timestamp has since fallen out of the window answers the original, while
/// a new key with that timestamp is refused.
async fn a_retry_after_its_timestamp_left_the_window_still_replays(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), Some(ANCHOR)).await;
    let request =
        json!({"metric_code": "api_calls", "amount": 2, "idempotency_key": "late", "timestamp": NOW});
    let original = app.post_usage("acme", &request).await.ok(200);

    app.set_now("2027-01-30T00:00:00Z"); // more than 35 days after NOW
    let replay = app.post_usage("acme", &request).await.ok(200);
    assert_eq!(replay, as_replayed(&original));
    let fresh =
        json!({"metric_code": "api_calls", "amount": 2, "idempotency_key": "late-2", "timestamp": NOW});
    app.post_usage("acme", &fresh).await.problem(422, "event_out_of_window");
    assert_eq!(app.all_events("acme").await.len(), 1);
}

store_tests!(
    a_retry_after_its_timestamp_left_the_window_still_replays,
    a_replay_answers_with_the_limits_and_period_of_the_original,
    the_same_key_and_payload_replay_the_original_answer,
    metadata_key_order_and_timestamp_offsets_do_not_change_the_payload,
    an_explicit_null_equals_an_omitted_member,
    the_same_key_with_another_payload_is_an_idempotency_conflict,
    a_key_refused_with_429_is_evaluated_afresh_on_retry,
    a_request_refused_with_4xx_consumes_no_key,
    idempotency_keys_belong_to_one_tenant,
    idempotency_keys_are_1_to_255_visible_ascii_characters,
);
