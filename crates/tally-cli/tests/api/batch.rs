//! `POST .../usage/batch`: the envelope is checked whole, then each item stands alone.

use serde_json::{Value, json};

use crate::helpers::{ANCHOR, Backend, NOW, TestApp, assert_problem_object, keys, limit};

const BATCH: &str = "/v1/tenants/acme/usage/batch";

fn one(amount: i64) -> Value {
    json!({"metric_code": "api_calls", "amount": amount})
}

/// The results array of a 200 batch answer.
fn results(body: &Value) -> Vec<Value> {
    assert_eq!(keys(body), vec!["results".to_owned()], "{body}");
    body["results"].as_array().unwrap_or_else(|| panic!("results in {body}")).clone()
}

/// Asserts that a batch item is `{"error": problem}` and returns the problem.
#[track_caller]
fn item_error(item: &Value, status: u16, code: &str) -> Value {
    assert_eq!(keys(item), vec!["error".to_owned()], "{item}");
    assert_problem_object(&item["error"], status, code, "batch item");
    item["error"].clone()
}

async fn envelope_errors_refuse_the_whole_batch(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10000), "hard", "month")]), None).await;

    let too_many: Vec<Value> = (0..1001).map(|_| one(1)).collect();
    let bodies = [
        json!([one(1)]),
        json!("events"),
        json!(null),
        json!({}),
        json!({"events": {"metric_code": "api_calls", "amount": 1}}),
        json!({"events": "all"}),
        json!({"events": null}),
        json!({"events": [one(1)], "extra": true}),
        json!({ "events": too_many }),
    ];
    for body in &bodies {
        app.post(BATCH, body).await.problem(400, "invalid_request");
    }
    let named =
        app.post(BATCH, &json!({"events": [one(1)], "extra": true})).await.problem(400, "invalid_request");
    assert!(named["detail"].as_str().is_some_and(|d| d.contains("extra")), "{named}");
    assert!(app.all_events("acme").await.is_empty(), "nothing applied");
    assert_eq!(app.current_usage("acme", "api_calls").await, 0);
}

async fn an_empty_batch_answers_200_with_no_results(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "month")]), None).await;
    let body = app.post_batch("acme", json!([])).await.ok(200);
    assert_eq!(body, json!({"results": []}));
}

async fn a_batch_of_1000_items_is_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(1000), "hard", "month")]), None).await;
    let items: Vec<Value> = (0..1000).map(|_| one(1)).collect();
    let body = app.post_batch("acme", json!(items)).await.ok(200);
    let results = results(&body);
    assert_eq!(results.len(), 1000);
    assert_eq!(results[999]["current_usage"], 1000);
    assert_eq!(app.current_usage("acme", "api_calls").await, 1000);
}

async fn an_invalid_item_is_answered_in_place_and_the_others_apply(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    let body = app
        .post_batch(
            "acme",
            json!([
                one(1),
                {"metric_code": "api_calls", "amount": 0},
                {"metric_code": "api_calls", "amount": 1, "ammount": 1},
                "not an object",
                {"metric_code": "Api Calls", "amount": 1},
                one(2),
            ]),
        )
        .await
        .ok(200);
    let results = results(&body);
    assert_eq!(results.len(), 6);
    assert_eq!(results[0]["current_usage"], 1);
    assert_eq!(results[0]["replayed"], false);
    item_error(&results[1], 400, "invalid_request");
    let unknown = item_error(&results[2], 400, "invalid_request");
    assert!(unknown["detail"].as_str().is_some_and(|d| d.contains("ammount")), "{unknown}");
    item_error(&results[3], 400, "invalid_request");
    item_error(&results[4], 400, "invalid_request");
    assert_eq!(results[5]["current_usage"], 3);
    assert_eq!(app.all_events("acme").await.len(), 2);
}

async fn a_hard_refusal_in_the_middle_does_not_undo_the_others(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(3), "hard", "month")]), Some(ANCHOR)).await;
    let body = app.post_batch("acme", json!([one(2), one(2), one(1)])).await.ok(200);
    let results = results(&body);
    assert_eq!(results[0]["current_usage"], 2);
    let refused = item_error(&results[1], 429, "quota_exceeded");
    assert_eq!(refused["metric_code"], "api_calls");
    assert_eq!(refused["current_usage"], 2);
    assert_eq!(refused["limit"], 3);
    assert_eq!(refused["requested"], 2);
    assert_eq!(refused["period_end"], "2026-12-15T00:00:00Z");
    assert_eq!(results[2]["current_usage"], 3);
    assert_eq!(app.current_usage("acme", "api_calls").await, 3);
    assert_eq!(app.all_events("acme").await.len(), 2);
}

async fn other_refusals_are_answered_in_place_too(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), Some(ANCHOR)).await;
    app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "used"}))
        .await
        .ok(200);
    let body = app
        .post_batch(
            "acme",
            json!([
                {"metric_code": "exports", "amount": 1},
                {"metric_code": "api_calls", "amount": 1, "timestamp": "2026-11-29T10:06:00Z"},
                {"metric_code": "api_calls", "amount": 2, "idempotency_key": "used"},
                one(1),
            ]),
        )
        .await
        .ok(200);
    let results = results(&body);
    item_error(&results[0], 422, "quota_not_found");
    item_error(&results[1], 422, "event_out_of_window");
    item_error(&results[2], 409, "idempotency_conflict");
    assert_eq!(results[3]["current_usage"], 2);
}

async fn a_key_repeated_inside_a_batch_replays_the_earlier_item(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    let keyed = json!({"metric_code": "api_calls", "amount": 2, "idempotency_key": "dup", "metadata": {"a": 1, "b": 2}});
    let keyed_reordered = json!({"idempotency_key": "dup", "metadata": {"b": 2, "a": 1}, "amount": 2, "metric_code": "api_calls"});
    let body = app
        .post_batch(
            "acme",
            json!([
                keyed,
                one(1),
                keyed_reordered,
                {"metric_code": "api_calls", "amount": 5, "idempotency_key": "dup"},
            ]),
        )
        .await
        .ok(200);
    let results = results(&body);
    assert_eq!(results[0]["replayed"], false);
    assert_eq!(results[0]["current_usage"], 2);
    assert_eq!(results[1]["current_usage"], 3);
    let mut expected = results[0].clone();
    expected["replayed"] = json!(true);
    assert_eq!(results[2], expected, "the earlier item's answer, replayed");
    item_error(&results[3], 409, "idempotency_conflict");
    assert_eq!(app.all_events("acme").await.len(), 2);
    assert_eq!(app.current_usage("acme", "api_calls").await, 3);
}

async fn batch_items_share_the_key_space_with_single_requests(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    let single = app
        .post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "s"}))
        .await
        .ok(200);
    let body = app
        .post_batch(
            "acme",
            json!([{"metric_code": "api_calls", "amount": 1, "idempotency_key": "s"},
                   {"metric_code": "api_calls", "amount": 1, "idempotency_key": "b"}]),
        )
        .await
        .ok(200);
    let results = results(&body);
    let mut expected = single.clone();
    expected["replayed"] = json!(true);
    assert_eq!(results[0], expected);
    assert_eq!(results[1]["replayed"], false);

    let replay_of_batch_item = app
        .post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "b"}))
        .await
        .ok(200);
    let mut expected = results[1].clone();
    expected["replayed"] = json!(true);
    assert_eq!(replay_of_batch_item, expected);
    assert_eq!(app.all_events("acme").await.len(), 2);
}

async fn a_batch_for_an_unknown_tenant_is_not_found(backend: Backend) {
    // The tenant is named by the path, so it is the whole request that is refused.
    let app = TestApp::spawn(backend).await;
    app.post_batch("ghost", json!([one(1)])).await.problem(404, "not_found");
    app.post_batch("ghost", json!([])).await.problem(404, "not_found");
}

store_tests!(
    a_batch_for_an_unknown_tenant_is_not_found,
    envelope_errors_refuse_the_whole_batch,
    an_empty_batch_answers_200_with_no_results,
    a_batch_of_1000_items_is_accepted,
    an_invalid_item_is_answered_in_place_and_the_others_apply,
    a_hard_refusal_in_the_middle_does_not_undo_the_others,
    other_refusals_are_answered_in_place_too,
    a_key_repeated_inside_a_batch_replays_the_earlier_item,
    batch_items_share_the_key_space_with_single_requests,
);
