//! The compatibility routes over HTTP, beyond what the real Python clients exercise
//! (tests/compat): whole-request validation, refusals by index, dedup keys, tenant keys, the
//! shapes of every answer.
#![allow(clippy::unwrap_used)] // a test: a missing member is a failure

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Auth, Backend, NOW, TestApp, limit};

const CE: &str = "application/cloudevents+json";
const CE_BATCH: &str = "application/cloudevents-batch+json";

async fn app(backend: Backend) -> TestApp {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.put("/v1/metrics/tokens", &json!({"value_property": "/tokens"})).await.ok(201);
    let limits =
        json!([limit("api_calls", Some(3), "hard", "month"), limit("tokens", Some(1000), "soft", "month")]);
    app.tenant_on_plan("acme", limits.clone(), None).await;
    app.put_tenant("beta").await;
    app.subscribe("beta", "acme_plan", None).await;
    app
}

fn ce(id: &str, subject: &str, kind: &str, data: Value) -> Value {
    json!({"id": id, "source": "svc", "specversion": "1.0", "type": kind, "subject": subject,
           "time": NOW, "data": data, "datacontenttype": "application/json", "x-extension": 1})
}

async fn post(app: &TestApp, path: &str, ct: &str, body: &Value) -> crate::helpers::Reply {
    app.call_raw(Method::POST, path, Auth::Admin, Some(ct), body.to_string()).await
}

async fn cloud_events_answer_204_count_their_value_and_dedup_for_ever(backend: Backend) {
    let app = app(backend).await;
    let r =
        post(&app, "/api/v1/events", CE, &ce("e1", "acme", "tokens", json!({"tokens": 120, "model": "m"})))
            .await;
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    let batch = json!([
        ce("e2", "acme", "tokens", json!({"tokens": "30"})),
        ce("e3", "acme", "api_calls", json!({}))
    ]);
    assert_eq!(post(&app, "/api/v1/events", CE_BATCH, &batch).await.status, 204);
    // The same (source, id) with another payload is a replay: nothing more is recorded.
    let again =
        post(&app, "/api/v1/events", "application/json", &ce("e1", "acme", "tokens", json!({"tokens": 5})))
            .await;
    assert_eq!(again.status, 204);
    assert_eq!(app.current_usage("acme", "tokens").await, 150);
    assert_eq!(app.current_usage("acme", "api_calls").await, 1);
    let events = app.all_events("acme").await;
    let first = events.iter().find(|e| e["idempotency_key"] == "ce:svc:e1").unwrap();
    assert_eq!((&first["amount"], &first["metadata"]), (&json!(120), &json!({"tokens": 120, "model": "m"})));
    assert_eq!(first["timestamp"], NOW);
}

async fn a_request_is_validated_whole_before_anything_is_applied(backend: Backend) {
    let app = app(backend).await;
    for (body, what) in [
        (
            json!([ce("a", "acme", "api_calls", json!({})), ce("b", "acme", "tokens", json!({}))]),
            "no value at /tokens",
        ),
        (
            json!([
                ce("a", "acme", "api_calls", json!({})),
                ce("b", "acme", "tokens", json!({"tokens": 1.5}))
            ]),
            "fractional",
        ),
        (
            json!([ce("a", "acme", "api_calls", json!({})), {"id": "b", "source": "svc", "type": "api_calls"}]),
            "no subject",
        ),
        (
            json!([ce("a", "acme", "api_calls", json!({})), ce("b", "Not Valid", "api_calls", json!({}))]),
            "bad subject",
        ),
        (
            json!([ce("a", "acme", "api_calls", json!({})), ce("b", "acme", "Bad-Code", json!({}))]),
            "bad type",
        ),
        (json!([ce("a", "acme", "api_calls", json!("text"))]), "data not an object"),
        (json!([]), "empty batch"),
    ] {
        let r = post(&app, "/api/v1/events", CE_BATCH, &body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        assert_eq!(r.json()["code"], "invalid_request", "{what}");
    }
    assert_eq!(app.current_usage("acme", "api_calls").await, 0, "nothing was applied");
    let unknown = post(
        &app,
        "/api/v1/events",
        CE_BATCH,
        &json!([ce("a", "acme", "api_calls", json!({})), ce("b", "ghost", "api_calls", json!({}))]),
    )
    .await;
    assert_eq!((unknown.status, unknown.json()["code"].clone()), (404, json!("not_found")));
    let no_limit = post(&app, "/api/v1/events", CE, &ce("a", "acme", "exports", json!({}))).await;
    assert_eq!(no_limit.json()["code"], "quota_not_found");
    let text = app.call_raw(Method::POST, "/api/v1/events", Auth::Admin, Some("text/plain"), "{}").await;
    assert_eq!((text.status, text.json()["code"].clone()), (415, json!("unsupported_media_type")));
    let one_as_batch =
        post(&app, "/api/v1/events", CE, &json!([ce("a", "acme", "api_calls", json!({}))])).await;
    assert_eq!(one_as_batch.status, 400);
    assert_eq!(app.current_usage("acme", "api_calls").await, 0);
}

async fn refused_events_are_named_by_index_and_a_resend_applies_nothing_twice(backend: Backend) {
    let app = app(backend).await;
    let batch =
        json!((0..5).map(|i| ce(&format!("r{i}"), "acme", "api_calls", json!({}))).collect::<Vec<_>>());
    let r = post(&app, "/api/v1/events", CE_BATCH, &batch).await;
    assert_eq!(r.status, 429, "{}", r.text);
    let body = r.json();
    assert_eq!((&body["code"], &body["refused"]), (&json!("quota_exceeded"), &json!([3, 4])));
    assert_eq!(app.current_usage("acme", "api_calls").await, 3);
    let again = post(&app, "/api/v1/events", CE_BATCH, &batch).await;
    assert_eq!((again.status, again.json()["refused"].clone()), (429, json!([3, 4])));
    assert_eq!(app.all_events("acme").await.len(), 3, "the first three replayed");
    // OpenMeter's entitlement: no room left under HARD, denied with a 200.
    let v = app.get("/api/v1/customers/acme/entitlements/api_calls/value").await.ok(200);
    assert_eq!(v, json!({"hasAccess": false, "balance": 0, "usage": 3, "overage": 0}));
    let v2 = app
        .get(&format!("/api/v2/customers/beta/entitlements/tokens/value?time={NOW}&unknown=1"))
        .await
        .ok(200);
    assert_eq!(v2, json!({"hasAccess": true, "balance": 1000, "usage": 0, "overage": 0}));
    app.get("/api/v1/customers/ghost/entitlements/api_calls/value").await.problem(404, "not_found");
}

async fn lago_events_echo_back_with_the_customer_as_tenant(backend: Backend) {
    let app = app(backend).await;
    let one = json!({"event": {"transaction_id": "tx-1", "external_subscription_id": "sub-9",
        "external_customer_id": "beta", "code": "tokens", "timestamp": "1795946400.5",
        "properties": {"tokens": 12}, "precise_total_amount_cents": "1.0"}});
    let r = app.post("/api/v1/events", &one).await.ok(200);
    let e = &r["event"];
    assert_eq!(
        (&e["transaction_id"], &e["external_subscription_id"], &e["code"]),
        (&json!("tx-1"), &json!("sub-9"), &json!("tokens"))
    );
    assert_eq!(
        (&e["timestamp"], &e["properties"]),
        (&json!("2026-11-29T10:00:00.500Z"), &json!({"tokens": 12}))
    );
    crate::helpers::assert_uuid_v7(&e["lago_id"]);
    let replay = app.post("/api/v1/events", &json!({"event": {"transaction_id": "tx-1", "external_subscription_id": "beta", "code": "tokens", "properties": {"tokens": 99}}})).await.ok(200);
    assert_eq!(replay["event"]["lago_id"], e["lago_id"]);
    let batch = json!({"events": [
        {"transaction_id": "tx-2", "external_subscription_id": "beta", "code": "tokens", "timestamp": 1795946400, "properties": {"tokens": 3}},
        {"transaction_id": "tx-3", "external_subscription_id": "beta", "code": "tokens", "properties": {"tokens": 4}}]});
    let b = app.post("/api/v1/events/batch", &batch).await.ok(200);
    assert_eq!(b["events"].as_array().unwrap().len(), 2);
    assert_eq!(app.current_usage("beta", "tokens").await, 19);
    app.put("/v1/metrics/tokens", &json!({"name": "Tokens", "value_property": "/tokens"})).await.ok(200);
    let usage = app.get("/api/v1/customers/beta/current_usage?external_subscription_id=beta").await.ok(200);
    let u = &usage["customer_usage"];
    let tokens = u["charges_usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["billable_metric"]["code"] == "tokens")
        .unwrap();
    assert_eq!(
        (&tokens["units"], &tokens["events_count"], &tokens["amount_cents"]),
        (&json!("19"), &json!(3), &json!(0))
    );
    assert_eq!(tokens["billable_metric"]["aggregation_type"], "sum_agg");
    // Names come from the catalog; an undeclared metric is named by its code.
    let calls = u["charges_usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["billable_metric"]["code"] == "api_calls")
        .unwrap();
    assert_eq!(
        (&tokens["billable_metric"]["name"], &calls["billable_metric"]["name"]),
        (&json!("Tokens"), &json!("api_calls"))
    );
    assert_eq!(
        (&u["amount_cents"], &u["total_amount_cents"], &u["taxes_amount_cents"]),
        (&json!(0), &json!(0), &json!(0))
    );
    assert!(u["from_datetime"].is_string() && u["to_datetime"].is_string());
}

async fn meter_queries_sum_the_trail_per_subject_and_window(backend: Backend) {
    let app = app(backend).await;
    app.record_at("acme", "tokens", 5, "2026-11-29T09:10:00Z").await;
    app.record_at("acme", "tokens", 7, "2026-11-29T09:50:00Z").await;
    app.record_at("beta", "tokens", 11, "2026-11-29T08:30:00Z").await;
    let q = app.get("/api/v1/meters/tokens/query?from=2026-11-29T08:00:00Z&to=2026-11-29T10:00:00Z&windowSize=HOUR&subject=acme&subject=beta").await.ok(200);
    assert_eq!(
        (&q["from"], &q["to"], &q["windowSize"]),
        (&json!("2026-11-29T08:00:00Z"), &json!("2026-11-29T10:00:00Z"), &json!("HOUR"))
    );
    let rows: Vec<(String, String, i64)> = q["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["subject"].as_str().unwrap().to_owned(),
                r["windowStart"].as_str().unwrap().to_owned(),
                r["value"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("acme".into(), "2026-11-29T09:00:00Z".into(), 12),
            ("beta".into(), "2026-11-29T08:00:00Z".into(), 11)
        ]
    );
    let whole = app
        .get("/api/v1/meters/tokens/query?from=2026-11-29T00:00:00Z&to=2026-11-30T00:00:00Z")
        .await
        .ok(200);
    assert_eq!(whole["data"].as_array().unwrap().len(), 2, "every tenant, one window each");
    app.get("/api/v1/meters/tokens/query?windowSize=WEEK").await.problem(400, "invalid_request");
    app.get("/api/v1/meters/tokens/query?from=2026-11-30T00:00:00Z&to=2026-11-29T00:00:00Z")
        .await
        .problem(400, "invalid_request");
}

async fn a_tenant_key_ingests_and_reads_only_its_own_tenant(backend: Backend) {
    let app = app(backend).await;
    let (_, key) = app.tenant_key("acme").await;
    let own = app
        .call_raw(
            Method::POST,
            "/api/v1/events",
            Auth::Key(&key),
            Some(CE),
            ce("k1", "acme", "api_calls", json!({})).to_string(),
        )
        .await;
    assert_eq!(own.status, 204, "{}", own.text);
    let other = app
        .call_raw(
            Method::POST,
            "/api/v1/events",
            Auth::Key(&key),
            Some(CE_BATCH),
            json!([ce("k2", "acme", "api_calls", json!({})), ce("k3", "beta", "api_calls", json!({}))])
                .to_string(),
        )
        .await;
    assert_eq!((other.status, other.json()["code"].clone()), (403, json!("forbidden")));
    assert_eq!(app.current_usage("acme", "api_calls").await, 1, "a forbidden request applies nothing");
    for path in [
        "/api/v1/customers/beta/entitlements/api_calls/value",
        "/api/v1/customers/beta/current_usage",
        "/api/v1/meters/api_calls/query?subject=beta",
    ] {
        let r = app.call(Method::GET, path, Auth::Key(&key), None).await;
        assert_eq!(r.status, 403, "{path}");
    }
    let mine = app.call(Method::GET, "/api/v1/meters/api_calls/query", Auth::Key(&key), None).await.ok(200);
    assert!(mine["data"].as_array().unwrap().iter().all(|r| r["subject"] == "acme"));
    app.call(Method::POST, "/api/v1/events", Auth::Anonymous, None).await.problem(401, "unauthorized");
}

/// A compatibility event's dedup comes before the plan: once recorded, a resend answers as
/// before even after the plan lost the metric's limit (a new event is then refused).
async fn a_resent_cloud_event_dedups_after_its_limit_is_gone(backend: Backend) {
    let app = app(backend).await;
    let event = ce("gone-1", "acme", "api_calls", json!({}));
    assert_eq!(post(&app, "/api/v1/events", CE, &event).await.status, 204);
    app.put_plan("acme_plan", json!([limit("tokens", Some(1000), "soft", "month")])).await;

    assert_eq!(post(&app, "/api/v1/events", CE, &event).await.status, 204, "a resend is a replay");
    let fresh = post(&app, "/api/v1/events", CE, &ce("gone-2", "acme", "api_calls", json!({}))).await;
    assert_eq!(fresh.json()["code"], "quota_not_found", "{}", fresh.text);
    let events = app.all_events("acme").await;
    assert_eq!(events.iter().filter(|e| e["metric_code"] == "api_calls").count(), 1);
}

store_tests!(
    a_resent_cloud_event_dedups_after_its_limit_is_gone,
    cloud_events_answer_204_count_their_value_and_dedup_for_ever,
    a_request_is_validated_whole_before_anything_is_applied,
    refused_events_are_named_by_index_and_a_resend_applies_nothing_twice,
    lago_events_echo_back_with_the_customer_as_tenant,
    meter_queries_sum_the_trail_per_subject_and_window,
    a_tenant_key_ingests_and_reads_only_its_own_tenant,
);
