//! Threshold webhooks over HTTP, delivered to a real local receiver: exactly one delivery
//! per crossing under concurrency, the gauge re-arm band, retries with the same id, failure
//! after the retry window and redelivery by hand, https, and the signature recipe.
#![allow(clippy::unwrap_used)] // a test: a missing member is a failure

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;
use tally_domain::RetryPolicy;
use tally_service::ServiceConfig;

use crate::helpers::{Auth, Backend, TestApp, keys, limit, sorted};
use crate::receiver::{Hit, Receiver};

const SECRET: &str = "whsec_test_0123456789abcdef";
/// Long enough for a delivery to arrive on a busy machine; the tests end as soon as it does.
const ARRIVAL: Duration = Duration::from_secs(20);

/// Retries fast enough for a test: 100 ms, doubling, at most 400 ms apart, for `window`.
fn fast_retries(window: Duration) -> ServiceConfig {
    ServiceConfig {
        webhook_retry: RetryPolicy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            window,
            timeout: Duration::from_secs(2),
        },
        ..ServiceConfig::default()
    }
}

async fn app_with(backend: Backend, window: Duration, roots: Option<&str>) -> TestApp {
    let app = TestApp::spawn_with(backend, fast_retries(window), roots.map(|r| r.as_bytes().to_vec())).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    app
}

async fn register(app: &TestApp, id: &str, url: &str, thresholds: Value, events: Value) -> Value {
    let body = json!({"url": url, "thresholds": thresholds, "events": events, "secret": SECRET});
    app.put(&format!("/v1/webhooks/{id}"), &body).await.ok(201)
}

async fn deliveries(app: &TestApp, id: &str) -> Vec<Value> {
    let page = app.get(&format!("/v1/webhooks/{id}/deliveries")).await.ok(200);
    page["deliveries"].as_array().unwrap().clone()
}

/// Polls the deliveries log until `done` holds for its newest entry.
async fn wait_log(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        let log = deliveries(app, id).await;
        if let Some(d) = log.first().filter(|d| done(d)) {
            return d.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the deliveries log never got there: {log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The documented recipe: split `t=<t>,v1=<hex>`, compute HMAC-SHA256 of `<t>.<body>` keyed
/// with the secret, compare in hex.
fn verify(hit: &Hit, secret: &str) {
    let header = hit.header("tally-signature").expect("a signature header");
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_owned()),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => panic!("unexpected part {part:?} in {header:?}"),
        }
    }
    let t = t.expect("a t= part");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", hit.body).as_bytes());
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1.as_deref(), Some(expected.as_str()), "the signature does not verify");
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "t is the time of sending, got {age} s ago");
}

async fn sixty_four_concurrent_requests_crossing_80_percent_make_one_delivery(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = app_with(backend, Duration::from_secs(60), None).await;
    register(&app, "ops", &receiver.url, json!([80]), json!(["usage.threshold_crossed"])).await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = reqwest::Client::new();
        let url = format!("{}/v1/tenants/acme/usage", app.base_url);
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(crate::helpers::ADMIN_KEY)
                .json(&json!({"metric_code": "api_calls", "amount": 2}))
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 50, "{statuses:?}");
    let hits = receiver.wait_for(1, ARRIVAL).await;
    // Give a second delivery every chance to show up before saying there is none.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.hits().len(), 1, "{:?}", receiver.hits());
    let hit = &hits[0];
    verify(hit, SECRET);
    let body = hit.json();
    assert_eq!(keys(&body), sorted(&["id", "type", "created_at", "data"]));
    assert_eq!(body["type"], "usage.threshold_crossed");
    assert_eq!(hit.header("tally-delivery-id"), body["id"].as_str());
    assert_eq!(hit.header("content-type"), Some("application/json"));
    let data = &body["data"];
    assert_eq!((&data["tenant_id"], &data["metric_code"]), (&json!("acme"), &json!("api_calls")));
    assert_eq!(
        (&data["threshold"], &data["current_usage"], &data["limit"]),
        (&json!(80), &json!(80), &json!(100))
    );
    assert!(data["period_start"].is_string() && data["period_end"].is_string());
    let d = wait_log(&app, "ops", |d| d["status"] == "delivered").await;
    assert_eq!((&d["id"], &d["attempts"], &d["last_response_code"]), (&body["id"], &json!(1), &json!(200)));
    assert_eq!(d["next_attempt_at"], Value::Null);
    assert_eq!(deliveries(&app, "ops").await.len(), 1);
}

async fn a_gauge_oscillating_within_its_rearm_band_makes_one_delivery(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(backend, fast_retries(Duration::from_secs(60)), None).await;
    app.put("/v1/metrics/seats", &json!({"kind": "gauge"})).await.ok(201);
    app.tenant_on_plan("acme", json!([limit("seats", Some(100), "soft", "none")]), None).await;
    register(&app, "seats", &receiver.url, json!([80]), json!(["usage.threshold_crossed"])).await;
    // 80 is the threshold, 72 its re-arm line: the level crosses 80 four times, never below 72.
    for level in [79, 80, 75, 81, 72, 90, 79, 80] {
        app.post_usage("acme", &json!({"metric_code": "seats", "set": level})).await.ok(200);
    }
    let hits = receiver.wait_for(1, ARRIVAL).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.hits().len(), 1);
    let data = hits[0].json()["data"].clone();
    assert_eq!(
        (&data["current_usage"], &data["period_start"], &data["period_end"]),
        (&json!(80), &Value::Null, &Value::Null)
    );
    // Below the line it re-arms: the next reach is a second delivery.
    app.post_usage("acme", &json!({"metric_code": "seats", "amount": -10})).await.ok(200);
    app.post_usage("acme", &json!({"metric_code": "seats", "set": 85})).await.ok(200);
    let hits = receiver.wait_for(2, ARRIVAL).await;
    assert_eq!(hits[1].json()["data"]["current_usage"], 85);
}

async fn a_failing_receiver_gets_the_same_delivery_id_until_it_answers(backend: Backend) {
    let receiver = Receiver::start().await;
    receiver.answer_next(&[500, 503, 404]);
    let app = app_with(backend, Duration::from_secs(60), None).await;
    register(&app, "ops", &receiver.url, json!([50]), json!(["usage.threshold_crossed"])).await;
    app.record("acme", "api_calls", 60).await;
    let hits = receiver.wait_for(4, ARRIVAL).await;
    let ids: Vec<&str> = hits.iter().map(|h| h.header("tally-delivery-id").unwrap()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert!(hits.iter().all(|h| h.body == hits[0].body), "every attempt sends the same body");
    for h in &hits {
        verify(h, SECRET);
    }
    let d = wait_log(&app, "ops", |d| d["status"] == "delivered").await;
    assert_eq!(
        (&d["attempts"], &d["last_response_code"], &d["id"]),
        (&json!(4), &json!(200), &json!(ids[0]))
    );
}

async fn after_the_retry_window_a_delivery_fails_and_can_be_redelivered(backend: Backend) {
    let receiver = Receiver::start().await;
    receiver.answer_next(&[500; 100]);
    let app = app_with(backend, Duration::from_millis(700), None).await;
    register(&app, "ops", &receiver.url, json!([50]), json!(["usage.threshold_crossed"])).await;
    app.record("acme", "api_calls", 60).await;
    let failed = wait_log(&app, "ops", |d| d["status"] == "failed").await;
    assert!(failed["attempts"].as_i64().unwrap() >= 2, "{failed}");
    assert_eq!((&failed["last_response_code"], &failed["next_attempt_at"]), (&json!(500), &Value::Null));
    let tried = receiver.hits().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.hits().len(), tried, "a failed delivery is not tried again by itself");

    // By hand: pending again, sent again with the same id, and audited.
    receiver.clear_script();
    let id = failed["id"].as_str().unwrap();
    let again = app.post(&format!("/v1/webhooks/ops/deliveries/{id}/redeliver"), &json!({})).await.ok(202);
    assert_eq!((&again["id"], &again["status"]), (&json!(id), &json!("pending")));
    let done = wait_log(&app, "ops", |d| d["status"] == "delivered").await;
    assert_eq!(done["id"], id);
    assert_eq!(receiver.hits().last().unwrap().header("tally-delivery-id"), Some(id));
    assert!(app.audit_entries(None).await.iter().any(|e| e["action"] == "webhook.redeliver"));
    let unknown = format!("/v1/webhooks/ops/deliveries/{}/redeliver", uuid::Uuid::now_v7());
    app.post(&unknown, &json!({})).await.problem(404, "not_found");
}

async fn https_receivers_work(backend: Backend) {
    let receiver = Receiver::start_tls().await;
    let app = app_with(backend, Duration::from_secs(60), receiver.ca_pem.as_deref()).await;
    register(
        &app,
        "tls",
        &receiver.url,
        json!([10]),
        json!(["usage.threshold_crossed", "usage.limit_refused"]),
    )
    .await;
    app.record("acme", "api_calls", 100).await;
    app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1}))
        .await
        .problem(429, "quota_exceeded");
    let hits = receiver.wait_for(2, ARRIVAL).await;
    let mut types: Vec<String> = hits.iter().map(|h| h.json()["type"].as_str().unwrap().to_owned()).collect();
    types.sort();
    assert_eq!(types, vec!["usage.limit_refused", "usage.threshold_crossed"]);
    let refused = hits.iter().map(Hit::json).find(|b| b["type"] == "usage.limit_refused").unwrap();
    assert_eq!((&refused["data"]["current_usage"], &refused["data"]["requested"]), (&json!(100), &json!(1)));
    assert_eq!(refused["data"]["threshold"], Value::Null);
}

async fn registration_shows_the_secret_once_and_refuses_bad_input(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created =
        app.put("/v1/webhooks/ops", &json!({"url": "https://hooks.example.com/tally"})).await.ok(201);
    assert_eq!(
        keys(&created),
        sorted(&["webhook_id", "url", "thresholds", "events", "created_at", "updated_at", "secret"])
    );
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["thresholds"], json!([80, 100]));
    assert_eq!(created["events"], json!(["usage.threshold_crossed", "usage.limit_refused"]));
    // Never again: not on a replace, not in a read, not in the list.
    let same = app.put("/v1/webhooks/ops", &json!({"url": "https://hooks.example.com/tally"})).await.ok(200);
    assert_eq!((same.get("secret"), &same["updated_at"]), (None, &created["updated_at"]));
    let changed = app
        .put(
            "/v1/webhooks/ops",
            &json!({"url": "https://hooks.example.com/v2", "thresholds": [100, 50], "secret": SECRET}),
        )
        .await
        .ok(200);
    assert_eq!((changed.get("secret"), &changed["thresholds"]), (None, &json!([50, 100])));
    assert_eq!(app.get("/v1/webhooks/ops").await.ok(200).get("secret"), None);
    let list = app.get("/v1/webhooks").await.ok(200);
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    assert_eq!(list["webhooks"][0].get("secret"), None);
    assert!(
        app.get("/v1/webhooks/ops/deliveries").await.ok(200)["deliveries"].as_array().unwrap().is_empty()
    );

    for (body, what) in [
        (json!({"url": "ftp://x.example.com"}), "not http"),
        (json!({"url": "http://"}), "no host"),
        (json!({}), "no url"),
        (json!({"url": "https://a.example.com", "thresholds": []}), "no thresholds"),
        (json!({"url": "https://a.example.com", "thresholds": [0]}), "threshold 0"),
        (json!({"url": "https://a.example.com", "thresholds": [80, 80]}), "repeated threshold"),
        (json!({"url": "https://a.example.com", "thresholds": [1001]}), "threshold over 1000"),
        (json!({"url": "https://a.example.com", "events": ["usage.recorded"]}), "unknown event"),
        (json!({"url": "https://a.example.com", "events": []}), "no events"),
        (json!({"url": "https://a.example.com", "secret": "short"}), "short secret"),
        (json!({"url": "https://a.example.com", "treshold": [80]}), "unknown member"),
    ] {
        let reply = app.put("/v1/webhooks/bad", &body).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.text);
        assert_eq!(reply.json()["code"], "invalid_request", "{what}");
    }
    app.get("/v1/webhooks/bad").await.problem(404, "not_found");
    app.get("/v1/webhooks/bad/deliveries").await.problem(404, "not_found");
    app.get("/v1/webhooks/ops/deliveries?cursor=nope").await.problem(400, "invalid_request");
    app.get("/v1/webhooks/ops/deliveries?limit=0").await.problem(400, "invalid_request");
    app.put("/v1/webhooks/bad id", &json!({"url": "https://a.example.com"}))
        .await
        .problem(400, "invalid_request");
    let (_, tenant_key) = {
        app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
        app.tenant_key("acme").await
    };
    app.call(Method::GET, "/v1/webhooks", Auth::Key(&tenant_key), None).await.problem(403, "forbidden");
    app.delete("/v1/webhooks/ops").await.no_content();
    app.delete("/v1/webhooks/ops").await.problem(404, "not_found");
    let audited = app.audit_entries(None).await;
    assert_eq!(audited.iter().filter(|e| e["action"] == "webhook.put").count(), 2);
    assert_eq!(audited.iter().filter(|e| e["action"] == "webhook.delete").count(), 1);
    assert!(audited.iter().all(|e| !e.to_string().contains(SECRET)), "secrets never reach the audit log");
}

store_tests!(
    sixty_four_concurrent_requests_crossing_80_percent_make_one_delivery,
    a_gauge_oscillating_within_its_rearm_band_makes_one_delivery,
    a_failing_receiver_gets_the_same_delivery_id_until_it_answers,
    after_the_retry_window_a_delivery_fails_and_can_be_redelivered,
    https_receivers_work,
    registration_shows_the_secret_once_and_refuses_bad_input,
);
