//! Retries: a lost answer and a 503 are sent again with the same idempotency key; a 4xx, and
//! a 429 in particular, never.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tally_client::{Client, Error, EventsQuery, ReserveRequest, RetryPolicy, UsageRequest};

use crate::helpers::{
    ADMIN_KEY, Canned, FAST_RETRY, Stub, TestServer, client_for, hard, lose_first_answer, seed,
};

fn usage_answer(current_usage: i64, replayed: bool) -> serde_json::Value {
    json!({"event_id": "0193b6a4-0000-7000-8000-000000000001", "tenant_id": "acme", "metric_code": "api_calls",
           "amount": 1, "current_usage": current_usage, "limit": 100, "remaining": 100 - current_usage,
           "enforcement": "hard", "period_start": "2026-11-15T00:00:00Z", "period_end": "2026-12-15T00:00:00Z",
           "exceeded": false, "replayed": replayed})
}

#[tokio::test]
async fn a_lost_answer_is_retried_with_the_same_key_and_counted_once() {
    let server = TestServer::start().await;
    seed(&server.client(), "pro", "acme", vec![hard("api_calls", 100)]).await;
    let (proxy_url, connections) = lose_first_answer(server.addr).await;
    let through_proxy = client_for(&proxy_url);

    // No key given: the client makes one, and the retry after the lost answer reuses it.
    let answer = through_proxy.record("acme", &UsageRequest::new("api_calls", 5)).await.unwrap();
    assert!(answer.replayed, "the first attempt was recorded; the retry is its replay: {answer:?}");
    assert_eq!(answer.current_usage, 5, "counted once");
    assert_eq!(connections.load(Ordering::SeqCst), 2, "the lost attempt, then the retry");

    let events = server.client().events("acme", &EventsQuery::default()).await.unwrap().events;
    assert_eq!(events.len(), 1, "exactly one event: {events:?}");
    assert_eq!(events[0].id, answer.event_id);
    assert_eq!(server.client().usage("acme").await.unwrap().metrics[0].current_usage, 5);
}

#[tokio::test]
async fn a_lost_reservation_answer_holds_once() {
    let server = TestServer::start().await;
    seed(&server.client(), "pro", "acme", vec![hard("tokens", 1000)]).await;
    let (proxy_url, _) = lose_first_answer(server.addr).await;
    let held = client_for(&proxy_url).reserve("acme", &ReserveRequest::new("tokens", 300)).await.unwrap();
    assert!(held.replayed, "{held:?}");
    let open = server.client().list_reservations("acme").await.unwrap().reservations;
    assert_eq!(open.len(), 1, "one hold, not two: {open:?}");
}

#[tokio::test]
async fn a_503_is_retried_with_the_same_idempotency_key() {
    let stub = Stub::start(vec![
        Canned::problem(503, "unavailable", "the store is unavailable; retry later"),
        Canned::json(200, usage_answer(1, false)),
    ])
    .await;
    let tally = client_for(&stub.url);
    let answer = tally.record("acme", &UsageRequest::new("api_calls", 1)).await.unwrap();
    assert_eq!((answer.current_usage, answer.replayed), (1, false));

    let seen = stub.seen();
    assert_eq!(seen.len(), 2, "one retry after the 503");
    for request in &seen {
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v1/tenants/acme/usage"));
        assert_eq!(request.authorization.as_deref(), Some(format!("Bearer {ADMIN_KEY}").as_str()));
    }
    let (first, second) = (seen[0].json(), seen[1].json());
    let key = first["idempotency_key"].as_str().expect("a generated key in the body");
    assert_eq!(uuid::Uuid::parse_str(key).unwrap().get_version_num(), 7);
    assert_eq!(second["idempotency_key"], key, "the retry sends the same key");
    assert_eq!(first, second, "the retry sends the same body");
    assert_eq!(first, json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": key}));

    // A second logical call gets a new key.
    tally.record("acme", &UsageRequest::new("api_calls", 1)).await.unwrap();
    assert_ne!(stub.seen()[2].json()["idempotency_key"], key);
}

#[tokio::test]
async fn a_batch_retried_after_a_503_keeps_each_events_key() {
    let stub = Stub::start(vec![
        Canned::problem(503, "unavailable", "retry later"),
        Canned::json(
            200,
            json!({"results": [usage_answer(1, false), {"error": {"type": "about:blank",
            "title": "Quota not found", "status": 422, "detail": "nope", "code": "quota_not_found"}}]}),
        ),
    ])
    .await;
    let events =
        [UsageRequest::new("api_calls", 1), UsageRequest::new("nope", 1).with_idempotency_key("mine")];
    let answer = client_for(&stub.url).record_batch("acme", &events).await.unwrap();
    assert_eq!(answer.results[1].problem().map(|p| p.code.as_str()), Some("quota_not_found"));
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].json(), seen[1].json());
    let keys: Vec<_> =
        seen[1].json()["events"].as_array().unwrap().iter().map(|e| e["idempotency_key"].clone()).collect();
    assert!(keys[0].as_str().is_some_and(|k| k.len() == 36), "{keys:?}");
    assert_eq!(keys[1], "mine");
}

#[tokio::test]
async fn retries_are_bounded_and_end_with_the_last_answer() {
    let stub = Stub::start(vec![Canned::problem(503, "unavailable", "down")]).await;
    let err = client_for(&stub.url).record("acme", &UsageRequest::new("api_calls", 1)).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(503), Some("unavailable")));
    assert!(err.is_unavailable());
    assert_eq!(stub.seen().len(), FAST_RETRY.max_attempts as usize);

    let once = Client::builder(&stub.url).retry(RetryPolicy::never()).build().unwrap();
    let before = stub.seen().len();
    once.record("acme", &UsageRequest::new("api_calls", 1)).await.unwrap_err();
    assert_eq!(stub.seen().len(), before + 1, "RetryPolicy::never makes one attempt");
}

#[tokio::test]
async fn a_429_is_an_answer_and_is_never_retried() {
    let quota = Canned {
        status: 429,
        headers: vec![
            ("content-type", "application/problem+json".to_owned()),
            ("retry-after", "30".to_owned()),
        ],
        body: json!({"type": "about:blank", "title": "Quota exceeded", "status": 429,
            "detail": "api_calls: 100 used of 100, 1 requested", "code": "quota_exceeded",
            "metric_code": "api_calls", "current_usage": 100, "limit": 100, "requested": 1,
            "period_end": "2026-12-15T00:00:00Z"})
        .to_string(),
    };
    let stub = Stub::start(vec![quota]).await;
    let err = client_for(&stub.url).record("acme", &UsageRequest::new("api_calls", 1)).await.unwrap_err();
    let Error::QuotaExceeded(q) = &err else { panic!("{err:?}") };
    assert_eq!((q.current_usage, q.limit, q.requested), (100, 100, 1));
    assert_eq!(q.period_end, Some("2026-12-15T00:00:00Z".parse().unwrap()));
    assert_eq!(q.retry_after, Some(Duration::from_secs(30)));
    assert_eq!(stub.seen().len(), 1, "no retry");
}

#[tokio::test]
async fn other_4xx_are_never_retried() {
    for (status, code) in [
        (400, "invalid_request"),
        (404, "not_found"),
        (409, "idempotency_conflict"),
        (422, "no_subscription"),
    ] {
        let stub = Stub::start(vec![Canned::problem(status, code, "no")]).await;
        let err = client_for(&stub.url).record("acme", &UsageRequest::new("api_calls", 1)).await.unwrap_err();
        assert_eq!((err.status(), err.code()), (Some(status), Some(code)));
        assert!(!err.is_unavailable());
        assert_eq!(stub.seen().len(), 1, "{status} is not retried");
    }
}

#[tokio::test]
async fn calls_unsafe_to_resend_are_retried_on_503_but_not_on_a_proxys_504() {
    let record = json!({"id": "r1", "tenant_id": "acme", "metric_code": "api_calls", "period_start": null,
        "period_end": null, "current_usage": 0, "created_at": "2026-11-15T00:00:00Z",
        "updated_at": "2026-11-15T00:00:00Z"});
    let stub =
        Stub::start(vec![Canned::problem(503, "unavailable", "down"), Canned::json(200, record)]).await;
    let reset = client_for(&stub.url).reset("acme", "api_calls").await.unwrap();
    assert_eq!((reset.current_usage, stub.seen().len()), (0, 2));

    let gateway = Canned {
        status: 504,
        headers: vec![("content-type", "text/html".into())],
        body: "<h1>504</h1>".into(),
    };
    let stub = Stub::start(vec![gateway]).await;
    let err = client_for(&stub.url).reset("acme", "api_calls").await.unwrap_err();
    assert!(matches!(err, Error::UnexpectedResponse { status: 504, .. }), "{err:?}");
    assert!(err.is_unavailable());
    assert_eq!(stub.seen().len(), 1, "the reset may have happened behind the proxy: not resent");

    // A usage write carries its key, so a 504 is resent.
    let stub = Stub::start(vec![
        Canned::problem(504, "gateway_timeout", "slow"),
        Canned::json(200, usage_answer(1, true)),
    ])
    .await;
    let answer = client_for(&stub.url).record("acme", &UsageRequest::new("api_calls", 1)).await.unwrap();
    assert!(answer.replayed);
    assert_eq!(stub.seen().len(), 2);
}

#[tokio::test]
async fn an_answer_of_the_wrong_shape_is_unexpected() {
    let stub = Stub::start(vec![Canned::json(200, json!({"hello": "world"}))]).await;
    let err = client_for(&stub.url).record("acme", &UsageRequest::new("api_calls", 1)).await.unwrap_err();
    let Error::UnexpectedResponse { status, body, .. } = &err else { panic!("{err:?}") };
    assert_eq!((*status, body.as_str()), (200, r#"{"hello":"world"}"#));
    assert!(!err.is_unavailable());
    assert_eq!(stub.seen().len(), 1);
}
