//! Reservations over HTTP: hold, commit (partly or whole), release, list, expiry, replays,
//! and HARD limits counting holds everywhere.
#![allow(clippy::unwrap_used)] // a test: a missing member is a failure

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Auth, Backend, NOW, TestApp, keys, limit, sorted};

const RESERVATION_MEMBERS: [&str; 9] = [
    "reservation_id",
    "metric_code",
    "amount",
    "expires_at",
    "current_usage",
    "reserved",
    "limit",
    "remaining",
    "replayed",
];

async fn tokens_app(backend: Backend) -> TestApp {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("tokens", Some(10000), "hard", "month")]), None).await;
    app
}

async fn reserve(app: &TestApp, body: Value) -> crate::helpers::Reply {
    app.post("/v1/tenants/acme/reservations", &body).await
}

async fn a_reservation_holds_quota_and_a_commit_records_what_was_used(backend: Backend) {
    let app = tokens_app(backend).await;
    app.record("acme", "tokens", 1000).await;
    let r = reserve(
        &app,
        json!({"metric_code": "tokens", "amount": 4000, "ttl_seconds": 300, "idempotency_key": "job-9"}),
    )
    .await
    .ok(201);
    assert_eq!(keys(&r), sorted(&RESERVATION_MEMBERS));
    assert_eq!(
        (&r["amount"], &r["current_usage"], &r["reserved"]),
        (&json!(4000), &json!(1000), &json!(4000))
    );
    assert_eq!((&r["limit"], &r["remaining"], &r["replayed"]), (&json!(10000), &json!(5000), &json!(false)));
    assert_eq!(r["expires_at"], "2026-11-29T10:05:00Z");
    let id = r["reservation_id"].as_str().unwrap().to_owned();

    // The usage views show the hold, and HARD counts it.
    let usage = app.get("/v1/tenants/acme/usage").await.ok(200);
    assert_eq!(
        (&usage["metrics"][0]["reserved"], &usage["metrics"][0]["remaining"]),
        (&json!(4000), &json!(5000))
    );
    let check = app.check("acme", "tokens", 5001).await.ok(200);
    assert_eq!(
        (&check["allowed"], &check["reserved"], &check["remaining"]),
        (&json!(false), &json!(4000), &json!(5000))
    );
    let refused = app
        .post_usage("acme", &json!({"metric_code": "tokens", "amount": 5001}))
        .await
        .problem(429, "quota_exceeded");
    assert_eq!(refused["current_usage"], 1000);
    assert_eq!(app.record("acme", "tokens", 5000).await["remaining"], 0);

    // A replay answers the original, holding nothing more.
    let again = reserve(
        &app,
        json!({"metric_code": "tokens", "amount": 4000, "ttl_seconds": 300, "idempotency_key": "job-9"}),
    )
    .await
    .ok(200);
    assert_eq!(
        (&again["reservation_id"], &again["replayed"], &again["current_usage"]),
        (&json!(id), &json!(true), &json!(1000))
    );
    reserve(&app, json!({"metric_code": "tokens", "amount": 3999, "idempotency_key": "job-9"}))
        .await
        .problem(409, "idempotency_conflict");

    let list = app.get("/v1/tenants/acme/reservations").await.ok(200);
    assert_eq!(list["reservations"].as_array().unwrap().len(), 1);
    assert_eq!(list["reservations"][0]["reservation_id"], json!(id));

    let commit = format!("/v1/tenants/acme/reservations/{id}/commit");
    let done = app.post(&commit, &json!({"amount": 3120, "metadata": {"model": "m"}})).await.ok(200);
    assert_eq!(
        (&done["amount"], &done["current_usage"], &done["remaining"]),
        (&json!(3120), &json!(9120), &json!(880))
    );
    assert_eq!(done["replayed"], false);
    let replay = app.post(&commit, &json!({"amount": 3120})).await.ok(200);
    assert_eq!(
        (&replay["event_id"], &replay["replayed"], &replay["current_usage"]),
        (&done["event_id"], &json!(true), &json!(9120))
    );
    app.post(&commit, &json!({"amount": 3000})).await.problem(409, "conflict");
    app.delete(&format!("/v1/tenants/acme/reservations/{id}")).await.problem(409, "conflict");
    assert_eq!(app.get("/v1/tenants/acme/reservations").await.ok(200), json!({"reservations": []}));
    let usage = app.get("/v1/tenants/acme/usage").await.ok(200);
    assert_eq!(
        (&usage["metrics"][0]["reserved"], &usage["metrics"][0]["current_usage"]),
        (&json!(0), &json!(9120))
    );
    let event = app.all_events("acme").await.into_iter().find(|e| e["id"] == done["event_id"]).unwrap();
    assert_eq!(event["metadata"], json!({"model": "m"}));
}

async fn release_expiry_and_bad_commits(backend: Backend) {
    let app = tokens_app(backend).await;
    let r = reserve(&app, json!({"metric_code": "tokens", "amount": 9000})).await.ok(201);
    assert_eq!(r["expires_at"], "2026-11-29T10:05:00Z", "ttl_seconds defaults to 300");
    let id = r["reservation_id"].as_str().unwrap().to_owned();
    let commit = format!("/v1/tenants/acme/reservations/{id}/commit");
    for (body, what) in [
        (json!({"amount": 9001}), "more than reserved"),
        (json!({"amount": 0}), "zero"),
        (json!({"amount": "1"}), "a string"),
        (json!({"amont": 1}), "unknown member"),
    ] {
        let reply = app.post(&commit, &body).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.text);
    }
    app.delete(&format!("/v1/tenants/acme/reservations/{id}")).await.no_content();
    app.delete(&format!("/v1/tenants/acme/reservations/{id}")).await.no_content();
    app.post(&commit, &json!({})).await.problem(409, "conflict");
    assert_eq!(app.record("acme", "tokens", 9000).await["current_usage"], 9000);

    // An expired hold frees its quota from expires_at on, with or without a request.
    let short =
        reserve(&app, json!({"metric_code": "tokens", "amount": 1000, "ttl_seconds": 60})).await.ok(201);
    app.post_usage("acme", &json!({"metric_code": "tokens", "amount": 1}))
        .await
        .problem(429, "quota_exceeded");
    app.set_now("2026-11-29T10:01:00Z");
    assert_eq!(app.get("/v1/tenants/acme/reservations").await.ok(200), json!({"reservations": []}));
    let late = format!("/v1/tenants/acme/reservations/{}/commit", short["reservation_id"].as_str().unwrap());
    let closed = app.call(Method::POST, &late, Auth::Admin, None).await.problem(409, "conflict");
    assert_eq!(closed["reservation_status"], "expired");
    assert_eq!(app.record("acme", "tokens", 1000).await["remaining"], 0);

    let ghost = "0193a000-0000-7000-8000-000000000000";
    app.post(&format!("/v1/tenants/acme/reservations/{ghost}/commit"), &json!({}))
        .await
        .problem(404, "not_found");
    app.delete(&format!("/v1/tenants/acme/reservations/{ghost}")).await.problem(404, "not_found");
    app.delete("/v1/tenants/acme/reservations/not-a-uuid").await.problem(400, "invalid_request");
    for (body, what) in [
        (json!({"metric_code": "tokens", "amount": 1, "ttl_seconds": 0}), "ttl 0"),
        (json!({"metric_code": "tokens", "amount": 1, "ttl_seconds": 86401}), "ttl over a day"),
        (json!({"metric_code": "tokens", "amount": 0}), "amount 0"),
        (json!({"metric_code": "tokens"}), "no amount"),
        (json!({"metric_code": "Tokens", "amount": 1}), "bad metric"),
    ] {
        let reply = reserve(&app, body).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.text);
    }
    reserve(&app, json!({"metric_code": "exports", "amount": 1})).await.problem(422, "quota_not_found");
}

async fn a_tenant_key_holds_only_its_own_quota(backend: Backend) {
    let app = tokens_app(backend).await;
    app.tenant_on_plan("beta", json!([limit("tokens", Some(10), "hard", "month")]), None).await;
    let (_, acme_key) = app.tenant_key("acme").await;
    let body = json!({"metric_code": "tokens", "amount": 5});
    let own = app
        .call(Method::POST, "/v1/tenants/acme/reservations", Auth::Key(&acme_key), Some(&body))
        .await
        .ok(201);
    let id = own["reservation_id"].as_str().unwrap();
    app.call(Method::POST, "/v1/tenants/beta/reservations", Auth::Key(&acme_key), Some(&body))
        .await
        .problem(403, "forbidden");
    app.call(Method::GET, "/v1/tenants/beta/reservations", Auth::Key(&acme_key), None)
        .await
        .problem(403, "forbidden");
    let commit = format!("/v1/tenants/beta/reservations/{id}/commit");
    app.call(Method::POST, &commit, Auth::Key(&acme_key), None).await.problem(403, "forbidden");
    // Admin on the wrong tenant: not found there.
    app.call(Method::POST, &commit, Auth::Admin, None).await.problem(404, "not_found");
    let mine = format!("/v1/tenants/acme/reservations/{id}/commit");
    assert_eq!(app.call(Method::POST, &mine, Auth::Key(&acme_key), None).await.ok(200)["amount"], 5);
}

store_tests!(
    a_reservation_holds_quota_and_a_commit_records_what_was_used,
    release_expiry_and_bad_commits,
    a_tenant_key_holds_only_its_own_quota,
);
