//! Many clients at once over HTTP: a HARD limit is never passed, and retries of one key record
//! one event.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::{Backend, TestApp, limit};

const CLIENT_TASKS: usize = 64;
const REQUESTS_PER_TASK: usize = 10;
const HARD_LIMIT: i64 = 500;

/// Status and body of one request, sent with a shared keep-alive client.
async fn post(client: reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let resp = client
        .post(&url)
        .header("authorization", "Bearer test-admin-key")
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_else(|e| panic!("POST {url}: reading the body: {e}"));
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url}: {e}: {text}"));
    (status, body)
}

async fn concurrent_clients_never_push_usage_past_a_hard_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(HARD_LIMIT), "hard", "month")]), None).await;
    let url = Arc::new(format!("{}/v1/tenants/acme/usage", app.base_url));

    let mut tasks = JoinSet::new();
    for _ in 0..CLIENT_TASKS {
        let client = app.client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let mut statuses = Vec::with_capacity(REQUESTS_PER_TASK);
            for _ in 0..REQUESTS_PER_TASK {
                let (status, body) =
                    post(client.clone(), url.to_string(), json!({"metric_code": "api_calls", "amount": 1}))
                        .await;
                if status == 200 {
                    let usage = body["current_usage"].as_i64().expect("current_usage");
                    assert!((1..=HARD_LIMIT).contains(&usage), "accepted with usage {usage}");
                } else {
                    assert_eq!(body["code"], "quota_exceeded", "{status} {body}");
                }
                statuses.push(status);
            }
            statuses
        });
    }
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        for status in done.expect("a client task panicked") {
            *by_status.entry(status).or_default() += 1;
        }
    }
    let total = CLIENT_TASKS * REQUESTS_PER_TASK;
    let expected: HashMap<u16, usize> = HashMap::from([(200, 500), (429, total - 500)]);
    assert_eq!(by_status, expected);

    assert_eq!(app.current_usage("acme", "api_calls").await, HARD_LIMIT);
    assert_eq!(app.all_events("acme").await.len(), 500);
}

async fn concurrent_retries_over_twenty_keys_record_exactly_twenty_events(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10_000), "hard", "month")]), None).await;
    let url = format!("{}/v1/tenants/acme/usage", app.base_url);

    let mut tasks = JoinSet::new();
    for i in 0..200 {
        let key = format!("key-{}", i % 20);
        let body = json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": key, "metadata": {"k": i % 20}});
        let (client, url) = (app.client.clone(), url.clone());
        tasks.spawn(async move { (key, post(client, url, body).await) });
    }
    let mut event_by_key: HashMap<String, HashSet<String>> = HashMap::new();
    let mut fresh = 0;
    while let Some(done) = tasks.join_next().await {
        let (key, (status, body)) = done.expect("a client task panicked");
        assert_eq!(status, 200, "{key}: {body}");
        if body["replayed"] == false {
            fresh += 1;
        }
        event_by_key.entry(key).or_default().insert(body["event_id"].as_str().expect("event_id").to_owned());
    }
    assert_eq!(fresh, 20, "one original answer per key");
    assert_eq!(event_by_key.len(), 20);
    assert!(event_by_key.values().all(|ids| ids.len() == 1), "every answer for a key names one event");

    let events = app.all_events("acme").await;
    assert_eq!(events.len(), 20);
    assert_eq!(app.current_usage("acme", "api_calls").await, 20);
}

store_tests!(
    concurrent_clients_never_push_usage_past_a_hard_limit,
    concurrent_retries_over_twenty_keys_record_exactly_twenty_events,
);
