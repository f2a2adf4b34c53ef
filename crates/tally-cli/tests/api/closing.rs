//! Corrections and closed periods over HTTP (issue 16, API.md "Additions (2026-12)"): signed
//! repairs of a counter in any open period, never refused by a limit; closing a tenant's
//! periods up to a watermark, writes refused with `period_closed` (single, batch item,
//! reservation commit, compatibility routes), replays still answering, reopening, the
//! periods list billing reads, plans' `close_after`, threshold webhooks on corrections, and
//! 64 writers racing a close.
#![allow(clippy::unwrap_used)] // a test: a missing member is a failure

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};
use tally_domain::RetryPolicy;
use tally_service::ServiceConfig;

use crate::helpers::{
    ADMIN_KEY, ANCHOR, Auth, Backend, NOW, Reply, TestApp, assert_problem_object, assert_uuid_v7, fmt, keys,
    limit, sorted, ts,
};
use crate::receiver::Receiver;

const CORRECTIONS: &str = "/v1/tenants/acme/usage/corrections";
const CLOSE: &str = "/v1/tenants/acme/periods/close";
const REOPEN: &str = "/v1/tenants/acme/periods/reopen";
const PERIODS: &str = "/v1/tenants/acme/periods";

/// NOW's day and the one before (NOW is 2026-11-29T10:00:00Z).
const TODAY: &str = "2026-11-29T00:00:00Z";
const YESTERDAY: &str = "2026-11-28T00:00:00Z";
const YESTERDAY_NOON: &str = "2026-11-28T12:00:00Z";

/// The usage answer, as on `POST .../usage`.
const USAGE_MEMBERS: [&str; 12] = [
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

/// One entry of `GET .../periods`.
const PERIOD_MEMBERS: [&str; 9] = [
    "metric_code",
    "period",
    "period_start",
    "period_end",
    "current_usage",
    "limit",
    "enforcement",
    "closed_at",
    "reopened_at",
];

/// `body` with `replayed` set to true: what a replay of it must answer.
fn as_replayed(body: &Value) -> Value {
    let mut out = body.clone();
    out["replayed"] = json!(true);
    out
}

/// A manual-clock app at NOW with `acme` on `api_calls` (HARD 100 a month, anchored ANCHOR).
async fn calls_app(backend: Backend, at: &str) -> TestApp {
    let app = TestApp::spawn_at(backend, at).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), Some(ANCHOR)).await;
    app
}

/// A manual-clock app at NOW with `acme` on `calls` (HARD 1000 a day) and `tokens`
/// (unlimited, a month from ANCHOR).
async fn day_app(backend: Backend) -> TestApp {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("calls", Some(1000), "hard", "day"), limit("tokens", None, "none", "month")]),
        Some(ANCHOR),
    )
    .await;
    app
}

async fn correct(app: &TestApp, body: &Value) -> Reply {
    app.post(CORRECTIONS, body).await
}

async fn close(app: &TestApp, before: &str) -> Reply {
    app.post(CLOSE, &json!({ "before": before })).await
}

async fn reopen(app: &TestApp, metric: &str, start: &str, reason: &str) -> Reply {
    app.post(REOPEN, &json!({"metric_code": metric, "period_start": start, "reason": reason})).await
}

/// The periods of one page of `GET .../periods?<query>`.
async fn periods(app: &TestApp, query: &str) -> Vec<Value> {
    let body = app.get(&format!("{PERIODS}?{query}")).await.ok(200);
    body["periods"].as_array().unwrap().clone()
}

/// `(metric_code, period_start)` of each period.
fn starts(periods: &[Value]) -> Vec<(String, String)> {
    periods
        .iter()
        .map(|p| {
            (p["metric_code"].as_str().unwrap().to_owned(), p["period_start"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn start_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(m, s)| ((*m).to_owned(), (*s).to_owned())).collect()
}

/// Every history record of `metric` in 2000..2100, newest first.
async fn history(app: &TestApp, tenant: &str, metric: &str) -> Vec<Value> {
    let path = format!(
        "/v1/tenants/{tenant}/usage/{metric}/history?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"
    );
    app.get(&path).await.ok(200)["records"].as_array().unwrap().clone()
}

/// The usage of the record of `metric` whose period starts at `start` (0 when none).
async fn usage_in(app: &TestApp, metric: &str, start: &str) -> i64 {
    history(app, "acme", metric)
        .await
        .iter()
        .find(|r| r["period_start"] == start)
        .map_or(0, |r| r["current_usage"].as_i64().unwrap())
}

/// Asserts a 409 `period_closed` naming the period and when it was closed.
#[track_caller]
fn assert_period_closed(body: &Value, metric: &str, start: &str, end: &str, closed_at: &str) {
    assert_eq!(
        (&body["metric_code"], &body["period_start"], &body["period_end"], &body["closed_at"]),
        (&json!(metric), &json!(start), &json!(end), &json!(closed_at)),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------
// Corrections

async fn a_correction_moves_the_counter_by_its_signed_amount(backend: Backend) {
    let app = calls_app(backend, NOW).await;
    let usage = app.record("acme", "api_calls", 10).await;
    assert_eq!(usage.get("kind"), None, "a usage answer has no kind member: {usage}");

    let up = correct(
        &app,
        &json!({"metric_code": "api_calls", "amount": 5, "reason": "double-sent batch", "idempotency_key": "fix-1"}),
    )
    .await
    .ok(200);
    let mut members = USAGE_MEMBERS.to_vec();
    members.push("kind");
    assert_eq!(keys(&up), sorted(&members));
    assert_uuid_v7(&up["event_id"]);
    assert_eq!(
        (&up["kind"], &up["tenant_id"], &up["metric_code"], &up["amount"], &up["current_usage"]),
        (&json!("correction"), &json!("acme"), &json!("api_calls"), &json!(5), &json!(15))
    );
    assert_eq!(
        (&up["limit"], &up["remaining"], &up["enforcement"], &up["exceeded"], &up["replayed"]),
        (&json!(100), &json!(85), &json!("hard"), &json!(false), &json!(false))
    );
    assert_eq!((&up["period_start"], &up["period_end"]), (&json!(ANCHOR), &json!("2026-12-15T00:00:00Z")));

    let down = correct(
        &app,
        &json!({"metric_code": "api_calls", "amount": -7, "reason": "refund of 7 calls promised",
                "timestamp": "2026-11-29T09:00:00Z"}),
    )
    .await
    .ok(200);
    assert_eq!(
        (&down["kind"], &down["amount"], &down["current_usage"], &down["remaining"]),
        (&json!("correction"), &json!(-7), &json!(8), &json!(92))
    );
    assert_eq!(app.current_usage("acme", "api_calls").await, 8);
    assert_eq!(usage_in(&app, "api_calls", ANCHOR).await, 8);

    // The trail: every correction is an event with its kind and reason; usage says so too.
    let events = app.all_events("acme").await;
    assert_eq!(events.len(), 3);
    let find = |id: &Value| events.iter().find(|e| e["id"] == *id).unwrap().clone();
    let (u, c1, c2) = (find(&usage["event_id"]), find(&up["event_id"]), find(&down["event_id"]));
    assert_eq!((&u["kind"], u.get("reason")), (&json!("usage"), Some(&Value::Null)), "{u}");
    assert_eq!(
        (&c1["kind"], &c1["reason"], &c1["amount"], &c1["idempotency_key"], &c1["metadata"]),
        (&json!("correction"), &json!("double-sent batch"), &json!(5), &json!("fix-1"), &json!({}))
    );
    assert_eq!(
        (&c2["kind"], &c2["reason"], &c2["amount"], &c2["timestamp"]),
        (
            &json!("correction"),
            &json!("refund of 7 calls promised"),
            &json!(-7),
            &json!("2026-11-29T09:00:00Z")
        )
    );

    let only = |kind: &'static str| {
        let app = &app;
        async move {
            let body = app.get(&format!("/v1/tenants/acme/events?kind={kind}")).await.ok(200);
            let mut ids: Vec<String> = body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    let mut corrections =
        vec![up["event_id"].as_str().unwrap().to_owned(), down["event_id"].as_str().unwrap().to_owned()];
    corrections.sort();
    assert_eq!(only("correction").await, corrections);
    assert_eq!(only("usage").await, vec![usage["event_id"].as_str().unwrap().to_owned()]);
    let both = app.get("/v1/tenants/acme/events?kind=correction&metric_code=api_calls&limit=1").await.ok(200);
    assert_eq!(both["events"].as_array().unwrap().len(), 1);
    assert_eq!(both["events"][0]["kind"], "correction");
    let cursor = both["next_cursor"].as_str().expect("a second correction is on the next page");
    let next = app
        .get(&format!(
            "/v1/tenants/acme/events?kind=correction&metric_code=api_calls&limit=1&cursor={cursor}"
        ))
        .await
        .ok(200);
    assert_eq!(next["events"].as_array().unwrap().len(), 1, "{next}");
    assert_eq!(next["events"][0]["kind"], "correction");
    assert_ne!(next["events"][0]["id"], both["events"][0]["id"]);
    assert_eq!(next["next_cursor"], Value::Null, "the usage event is not on a correction page");
    for bad in ["other", "Usage", "", "usage,correction"] {
        app.get(&format!("/v1/tenants/acme/events?kind={bad}")).await.problem(400, "invalid_request");
    }
}

async fn a_correction_reaches_past_periods_beyond_the_event_window(backend: Backend) {
    let app = calls_app(backend, "2026-06-20T10:00:00Z").await;
    app.record("acme", "api_calls", 50).await;
    app.set_now(NOW);

    // June is more than 35 days back: usage may not go there, a correction may.
    app.post_usage(
        "acme",
        &json!({"metric_code": "api_calls", "amount": 1, "timestamp": "2026-06-20T12:00:00Z"}),
    )
    .await
    .problem(422, "event_out_of_window");
    let june = correct(
        &app,
        &json!({"metric_code": "api_calls", "amount": -20, "reason": "June was double counted",
                "timestamp": "2026-06-20T12:00:00Z"}),
    )
    .await
    .ok(200);
    assert_eq!(
        (&june["current_usage"], &june["period_start"], &june["period_end"], &june["remaining"]),
        (&json!(30), &json!("2026-06-15T00:00:00Z"), &json!("2026-07-15T00:00:00Z"), &json!(70))
    );
    // A past period without a record gets one.
    let march = correct(
        &app,
        &json!({"metric_code": "api_calls", "amount": 5, "reason": "calls lost in March",
                "timestamp": "2026-03-01T00:00:00+01:00"}),
    )
    .await
    .ok(200);
    assert_eq!(
        (&march["current_usage"], &march["period_start"], &march["period_end"]),
        (&json!(5), &json!("2026-02-15T00:00:00Z"), &json!("2026-03-15T00:00:00Z"))
    );
    let old = correct(
        &app,
        &json!({"metric_code": "api_calls", "amount": 1, "reason": "years back", "timestamp": "2020-01-20T00:00:00Z"}),
    )
    .await
    .ok(200);
    assert_eq!(old["period_start"], "2020-01-15T00:00:00Z");

    assert_eq!(usage_in(&app, "api_calls", "2026-06-15T00:00:00Z").await, 30);
    assert_eq!(usage_in(&app, "api_calls", "2026-02-15T00:00:00Z").await, 5);
    assert_eq!(usage_in(&app, "api_calls", "2020-01-15T00:00:00Z").await, 1);
    assert_eq!(history(&app, "acme", "api_calls").await.len(), 3);
    assert_eq!(app.current_usage("acme", "api_calls").await, 0, "the current period did not move");
}

async fn a_correction_is_never_refused_by_a_hard_limit(backend: Backend) {
    let app = calls_app(backend, NOW).await;
    app.record("acme", "api_calls", 90).await;
    let over =
        correct(&app, &json!({"metric_code": "api_calls", "amount": 50, "reason": "backfill"})).await.ok(200);
    assert_eq!(
        (&over["current_usage"], &over["limit"], &over["remaining"], &over["exceeded"]),
        (&json!(140), &json!(100), &json!(0), &json!(true))
    );
    app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1}))
        .await
        .problem(429, "quota_exceeded");
    let check = app.check("acme", "api_calls", 1).await.ok(200);
    assert_eq!((&check["allowed"], &check["current_usage"]), (&json!(false), &json!(140)));

    let back =
        correct(&app, &json!({"metric_code": "api_calls", "amount": -45, "reason": "oops"})).await.ok(200);
    assert_eq!(
        (&back["current_usage"], &back["remaining"], &back["exceeded"]),
        (&json!(95), &json!(5), &json!(false))
    );
    assert_eq!(app.record("acme", "api_calls", 5).await["current_usage"], 100);
}

async fn a_correction_below_zero_or_on_a_gauge_is_refused(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.put("/v1/metrics/seats", &json!({"name": "Seats", "kind": "gauge"})).await.ok(201);
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", Some(100), "hard", "month"), limit("seats", Some(10), "hard", "none")]),
        Some(ANCHOR),
    )
    .await;
    app.record("acme", "api_calls", 10).await;

    let below = correct(&app, &json!({"metric_code": "api_calls", "amount": -11, "reason": "too much"}))
        .await
        .problem(422, "correction_below_zero");
    assert_eq!(
        (&below["metric_code"], &below["current_usage"]),
        (&json!("api_calls"), &json!(10)),
        "{below}"
    );
    // A past period without a record holds 0.
    correct(
        &app,
        &json!({"metric_code": "api_calls", "amount": -1, "reason": "r", "timestamp": "2026-10-20T00:00:00Z"}),
    )
    .await
    .problem(422, "correction_below_zero");
    assert_eq!(app.current_usage("acme", "api_calls").await, 10, "nothing changed");
    assert_eq!(app.all_events("acme").await.len(), 1, "nothing was recorded");
    let zero = correct(&app, &json!({"metric_code": "api_calls", "amount": -10, "reason": "all of it"}))
        .await
        .ok(200);
    assert_eq!(zero["current_usage"], 0, "exactly down to 0 is allowed");

    app.post_usage("acme", &json!({"metric_code": "seats", "set": 3})).await.ok(200);
    for amount in [1, -1] {
        let refused = correct(&app, &json!({"metric_code": "seats", "amount": amount, "reason": "seat fix"}))
            .await
            .problem(422, "correction_not_applicable");
        assert_eq!(refused["metric_code"], "seats");
    }
    assert_eq!(app.current_usage("acme", "seats").await, 3);

    correct(&app, &json!({"metric_code": "exports", "amount": 1, "reason": "r"}))
        .await
        .problem(422, "quota_not_found");
    app.post(
        "/v1/tenants/ghost/usage/corrections",
        &json!({"metric_code": "api_calls", "amount": 1, "reason": "r"}),
    )
    .await
    .problem(404, "not_found");
    app.put_tenant("beta").await;
    app.post(
        "/v1/tenants/beta/usage/corrections",
        &json!({"metric_code": "api_calls", "amount": 1, "reason": "r"}),
    )
    .await
    .problem(422, "no_subscription");
    assert_eq!(app.all_events("acme").await.len(), 3);
}

async fn bad_corrections_are_400_and_change_nothing(backend: Backend) {
    let app = calls_app(backend, NOW).await;
    let long = "x".repeat(501);
    for (body, what) in [
        (json!({"metric_code": "api_calls", "amount": 0, "reason": "r"}), "amount 0"),
        (json!({"metric_code": "api_calls", "amount": 1_000_000_000_001_i64, "reason": "r"}), "over 10^12"),
        (
            json!({"metric_code": "api_calls", "amount": -1_000_000_000_001_i64, "reason": "r"}),
            "under -10^12",
        ),
        (json!({"metric_code": "api_calls", "amount": i64::MIN, "reason": "r"}), "i64::MIN"),
        (json!({"metric_code": "api_calls", "amount": 1e30, "reason": "r"}), "not an i64"),
        (json!({"metric_code": "api_calls", "amount": 1.5, "reason": "r"}), "fractional"),
        (json!({"metric_code": "api_calls", "amount": "5", "reason": "r"}), "a string amount"),
        (json!({"metric_code": "api_calls", "reason": "r"}), "no amount"),
        (json!({"metric_code": "api_calls", "amount": 1}), "no reason"),
        (json!({"metric_code": "api_calls", "amount": 1, "reason": null}), "a null reason"),
        (json!({"metric_code": "api_calls", "amount": 1, "reason": ""}), "an empty reason"),
        (json!({"metric_code": "api_calls", "amount": 1, "reason": "   "}), "a blank reason"),
        (json!({"metric_code": "api_calls", "amount": 1, "reason": long}), "a reason of 501 chars"),
        (json!({"amount": 1, "reason": "r"}), "no metric"),
        (json!({"metric_code": "Api", "amount": 1, "reason": "r"}), "a bad metric code"),
        (json!({"metric_code": "api_calls", "amount": 1, "reason": "r", "metadata": {}}), "unknown member"),
        (json!({"metric_code": "api_calls", "ammount": 1, "reason": "r"}), "a typo"),
        (
            json!({"metric_code": "api_calls", "amount": 1, "reason": "r", "timestamp": "2026-11-29T10:00:00"}),
            "a timestamp without offset",
        ),
        (
            json!({"metric_code": "api_calls", "amount": 1, "reason": "r", "idempotency_key": ""}),
            "an empty key",
        ),
        (
            json!({"metric_code": "api_calls", "amount": 1, "reason": "r", "idempotency_key": "a b"}),
            "a bad key",
        ),
        (json!([1]), "not an object"),
    ] {
        let reply = correct(&app, &body).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.text);
        reply.problem(400, "invalid_request");
    }
    app.post_text(CORRECTIONS, r#"{"metric_code":"api_calls","amount":1,"amount":2,"reason":"r"}"#)
        .await
        .problem(400, "invalid_request");
    assert_eq!(app.all_events("acme").await, Vec::<Value>::new(), "nothing was recorded");
    assert_eq!(app.current_usage("acme", "api_calls").await, 0);
    assert!(app.audit_entries(Some("acme")).await.iter().all(|e| e["action"] != "usage.correct"));

    // The bounds themselves are fine; a reason counts characters, not bytes.
    let max =
        correct(&app, &json!({"metric_code": "api_calls", "amount": 1_000_000_000_000_i64, "reason": "x"}))
            .await
            .ok(200);
    assert_eq!((&max["current_usage"], &max["exceeded"]), (&json!(1_000_000_000_000_i64), &json!(true)));
    let min =
        correct(&app, &json!({"metric_code": "api_calls", "amount": -1_000_000_000_000_i64, "reason": "x"}))
            .await
            .ok(200);
    assert_eq!(min["current_usage"], 0);
    let accents = "é".repeat(500);
    let wide = correct(&app, &json!({"metric_code": "api_calls", "amount": 1, "reason": accents.clone()}))
        .await
        .ok(200);
    let event = app.all_events("acme").await.into_iter().find(|e| e["id"] == wide["event_id"]).unwrap();
    assert_eq!(event["reason"], json!(accents));
}

async fn corrections_replay_and_share_the_usage_key_space(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", Some(100), "hard", "month"), limit("tokens", None, "none", "month")]),
        Some(ANCHOR),
    )
    .await;
    app.record("acme", "api_calls", 10).await;
    let request = json!({"metric_code": "api_calls", "amount": 5, "reason": "refund", "idempotency_key": "c-1",
                         "timestamp": "2026-11-29T09:00:00Z"});
    let original = correct(&app, &request).await.ok(200);
    assert_eq!((&original["current_usage"], &original["replayed"]), (&json!(15), &json!(false)));
    app.record("acme", "api_calls", 2).await;

    let replay = correct(&app, &request).await.ok(200);
    assert_eq!(replay, as_replayed(&original), "the counters as they were then");
    let same_instant = json!({"metric_code": "api_calls", "amount": 5, "reason": "refund", "idempotency_key": "c-1",
                              "timestamp": "2026-11-29T11:00:00+02:00"});
    assert_eq!(correct(&app, &same_instant).await.ok(200), as_replayed(&original));
    assert_eq!(app.current_usage("acme", "api_calls").await, 17, "a replay moves nothing");

    for variant in [
        json!({"metric_code": "api_calls", "amount": 6, "reason": "refund", "idempotency_key": "c-1", "timestamp": "2026-11-29T09:00:00Z"}),
        json!({"metric_code": "api_calls", "amount": -5, "reason": "refund", "idempotency_key": "c-1", "timestamp": "2026-11-29T09:00:00Z"}),
        json!({"metric_code": "api_calls", "amount": 5, "reason": "refund!", "idempotency_key": "c-1", "timestamp": "2026-11-29T09:00:00Z"}),
        json!({"metric_code": "api_calls", "amount": 5, "reason": "refund", "idempotency_key": "c-1", "timestamp": "2026-11-29T09:00:01Z"}),
        json!({"metric_code": "api_calls", "amount": 5, "reason": "refund", "idempotency_key": "c-1"}),
        json!({"metric_code": "tokens", "amount": 5, "reason": "refund", "idempotency_key": "c-1", "timestamp": "2026-11-29T09:00:00Z"}),
    ] {
        correct(&app, &variant).await.problem(409, "idempotency_conflict");
    }

    // One key space: a usage key is not a correction's, nor the other way round.
    app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "u-1"}))
        .await
        .ok(200);
    correct(&app, &json!({"metric_code": "api_calls", "amount": 1, "reason": "r", "idempotency_key": "u-1"}))
        .await
        .problem(409, "idempotency_conflict");
    app.post_usage(
        "acme",
        &json!({"metric_code": "api_calls", "amount": 5, "idempotency_key": "c-1", "timestamp": "2026-11-29T09:00:00Z"}),
    )
    .await
    .problem(409, "idempotency_conflict");
    let batch = app
        .post_batch(
            "acme",
            json!([{"metric_code": "api_calls", "amount": 5, "idempotency_key": "c-1", "timestamp": "2026-11-29T09:00:00Z"}]),
        )
        .await
        .ok(200);
    assert_problem_object(&batch["results"][0]["error"], 409, "idempotency_conflict", "batch item");
    assert_eq!(app.current_usage("acme", "api_calls").await, 18);
    assert_eq!(app.all_events("acme").await.len(), 4);

    // A refused correction consumes no key.
    correct(
        &app,
        &json!({"metric_code": "api_calls", "amount": -1000, "reason": "r", "idempotency_key": "c-2"}),
    )
    .await
    .problem(422, "correction_below_zero");
    let fresh = correct(
        &app,
        &json!({"metric_code": "api_calls", "amount": 2, "reason": "other", "idempotency_key": "c-2"}),
    )
    .await
    .ok(200);
    assert_eq!((&fresh["replayed"], &fresh["current_usage"]), (&json!(false), &json!(20)));
}

async fn only_an_admin_corrects_closes_reopens_and_lists_periods(backend: Backend) {
    let app = day_app(backend).await;
    app.record_at("acme", "calls", 3, YESTERDAY_NOON).await;
    app.tenant_on_plan("beta", json!([limit("calls", Some(10), "hard", "day")]), None).await;
    let (_, key) = app.tenant_key("acme").await;
    let k = Auth::Key(&key);
    let correction = json!({"metric_code": "calls", "amount": 1, "reason": "r"});
    app.call(Method::POST, CORRECTIONS, k, Some(&correction)).await.problem(403, "forbidden");
    app.call(Method::POST, CLOSE, k, Some(&json!({"before": TODAY}))).await.problem(403, "forbidden");
    app.call(Method::GET, PERIODS, k, None).await.problem(403, "forbidden");
    app.call(Method::GET, "/v1/tenants/beta/periods", k, None).await.problem(403, "forbidden");
    app.call(Method::POST, "/v1/tenants/beta/usage/corrections", k, Some(&correction))
        .await
        .problem(403, "forbidden");
    app.call(Method::POST, CORRECTIONS, Auth::Anonymous, Some(&correction))
        .await
        .problem(401, "unauthorized");
    app.call(Method::POST, CLOSE, Auth::Anonymous, Some(&json!({"before": TODAY})))
        .await
        .problem(401, "unauthorized");
    assert_eq!(app.current_usage("acme", "calls").await, 0);
    assert_eq!(usage_in(&app, "calls", YESTERDAY).await, 3);

    // Once an admin has closed yesterday, reopening it is refused to the key too.
    close(&app, TODAY).await.ok(200);
    let reopen_body = json!({"metric_code": "calls", "period_start": YESTERDAY, "reason": "r"});
    app.call(Method::POST, REOPEN, k, Some(&reopen_body)).await.problem(403, "forbidden");
    assert_eq!(periods(&app, "closed=true").await.len(), 1, "still closed");
    // The tenant's key still reads its events, corrections included.
    correct(&app, &json!({"metric_code": "calls", "amount": 2, "reason": "r"})).await.ok(200);
    let read = app.call(Method::GET, "/v1/tenants/acme/events?kind=correction", k, None).await.ok(200);
    assert_eq!(read["events"].as_array().unwrap().len(), 1);
    assert_eq!(read["events"][0]["reason"], "r");
}

async fn every_correction_is_audited_once(backend: Backend) {
    let app = calls_app(backend, NOW).await;
    let (_, stored) = app.stored_admin_key().await;
    app.record("acme", "api_calls", 10).await;
    let body = json!({"metric_code": "api_calls", "amount": -4, "reason": "refund promised", "idempotency_key": "a-1"});
    let done = app.call(Method::POST, CORRECTIONS, Auth::Key(&stored), Some(&body)).await.ok(200);
    correct(&app, &body).await.ok(200); // a replay
    correct(&app, &json!({"metric_code": "api_calls", "amount": -100, "reason": "r"}))
        .await
        .problem(422, "correction_below_zero");
    let entries = app.audit_entries(Some("acme")).await;
    let corrections: Vec<&Value> = entries.iter().filter(|e| e["action"] == "usage.correct").collect();
    assert_eq!(corrections.len(), 1, "one entry per applied correction: {entries:?}");
    let e = corrections[0];
    assert_eq!(e["tenant_id"], "acme");
    assert!(e["key_id"].is_string(), "who did it: {e}");
    let details = &e["details"];
    assert_eq!(
        (&details["metric_code"], &details["amount"], &details["reason"], &details["event_id"]),
        (&json!("api_calls"), &json!(-4), &json!("refund promised"), &done["event_id"])
    );
    // The whole-period reset stays in the audit log only, not among the events.
    app.reset("acme", "api_calls").await.ok(200);
    assert_eq!(app.all_events("acme").await.len(), 2);
    assert!(app.audit_entries(Some("acme")).await.iter().any(|e| e["action"] == "reset"));
}

// ---------------------------------------------------------------------------------------
// Threshold webhooks and corrections (system clock: deliveries are sent in real time)

const SECRET: &str = "whsec_test_0123456789abcdef";
const ARRIVAL: Duration = Duration::from_secs(20);

fn fast_retries() -> ServiceConfig {
    ServiceConfig {
        webhook_retry: RetryPolicy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            window: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
        },
        ..ServiceConfig::default()
    }
}

async fn webhook_app(backend: Backend, receiver: &Receiver, thresholds: Value) -> TestApp {
    let app = TestApp::spawn_with(backend, fast_retries(), None).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    app.put(
        "/v1/webhooks/ops",
        &json!({"url": receiver.url, "thresholds": thresholds, "events": ["usage.threshold_crossed"], "secret": SECRET}),
    )
    .await
    .ok(201);
    app
}

async fn a_downward_correction_fires_nothing_and_an_upward_crossing_fires_once(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(backend, fast_retries(), None).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    // 50% is passed before the webhook exists: it never fires in this period.
    app.record("acme", "api_calls", 60).await;
    app.put(
        "/v1/webhooks/ops",
        &json!({"url": receiver.url, "thresholds": [50, 80], "events": ["usage.threshold_crossed"], "secret": SECRET}),
    )
    .await
    .ok(201);
    correct(&app, &json!({"metric_code": "api_calls", "amount": -5, "reason": "down"})).await.ok(200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.hits().len(), 0, "a correction down fires nothing: {:?}", receiver.hits());

    let up = correct(&app, &json!({"metric_code": "api_calls", "amount": 30, "reason": "up"})).await.ok(200);
    assert_eq!(up["current_usage"], 85);
    let hits = receiver.wait_for(1, ARRIVAL).await;
    let data = hits[0].json()["data"].clone();
    assert_eq!(
        (&data["threshold"], &data["current_usage"], &data["limit"], &data["metric_code"]),
        (&json!(80), &json!(85), &json!(100), &json!("api_calls"))
    );
    // Down below 80 and up again, by corrections and by usage: still one delivery for 80.
    correct(&app, &json!({"metric_code": "api_calls", "amount": -20, "reason": "down again"})).await.ok(200);
    correct(&app, &json!({"metric_code": "api_calls", "amount": 20, "reason": "up again"})).await.ok(200);
    correct(&app, &json!({"metric_code": "api_calls", "amount": -10, "reason": "and down"})).await.ok(200);
    app.record("acme", "api_calls", 10).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.hits().len(), 1, "{:?}", receiver.hits());
    let log = app.get("/v1/webhooks/ops/deliveries").await.ok(200);
    assert_eq!(log["deliveries"].as_array().unwrap().len(), 1, "{log}");
}

async fn concurrent_corrections_crossing_a_threshold_make_one_delivery(backend: Backend) {
    let receiver = Receiver::start().await;
    let app = webhook_app(backend, &receiver, json!([50])).await;
    let url = format!("{}{CORRECTIONS}", app.base_url);
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (client, url) = (app.client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"metric_code": "api_calls", "amount": 5, "reason": format!("fix {i}")});
            client.post(url).bearer_auth(ADMIN_KEY).json(&body).send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "a correction is never refused by a limit");
    }
    assert_eq!(app.current_usage("acme", "api_calls").await, 160);
    let hits = receiver.wait_for(1, ARRIVAL).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.hits().len(), 1, "{:?}", receiver.hits());
    let data = hits[0].json()["data"].clone();
    assert_eq!(data["threshold"], 50);
    assert_eq!(data["current_usage"], 50, "the usage of the correction that crossed");
}

// ---------------------------------------------------------------------------------------
// Closing

async fn a_close_sets_the_watermark_and_counts_the_records_it_closed(backend: Backend) {
    let app = day_app(backend).await;
    app.record_at("acme", "calls", 3, "2026-11-27T12:00:00Z").await;
    app.record_at("acme", "calls", 4, YESTERDAY_NOON).await;
    app.record_at("acme", "calls", 5, "2026-11-29T09:00:00Z").await;
    app.record("acme", "tokens", 7).await;
    app.set_now("2026-11-29T10:30:00Z");

    let first = close(&app, TODAY).await.ok(200);
    assert_eq!(first, json!({"closed_before": TODAY, "closed": 2}), "the two day records before today");
    let same = close(&app, "2026-11-29T01:00:00+01:00").await.ok(200);
    assert_eq!(same, json!({"closed_before": TODAY, "closed": 0}), "the same instant closes nothing more");
    let smaller = close(&app, YESTERDAY).await.ok(200);
    assert_eq!(smaller, json!({"closed_before": TODAY, "closed": 0}), "the watermark never moves back");

    let closed = periods(&app, "closed=true").await;
    assert_eq!(starts(&closed), start_pairs(&[("calls", YESTERDAY), ("calls", "2026-11-27T00:00:00Z")]));
    assert!(closed.iter().all(|p| p["closed_at"] == "2026-11-29T10:30:00Z"), "{closed:?}");
    let open = periods(&app, "closed=false").await;
    assert_eq!(starts(&open), start_pairs(&[("calls", TODAY), ("tokens", ANCHOR)]));

    for (body, what) in [
        (json!({"before": "2026-11-29T10:30:01Z"}), "later than now"),
        (json!({"before": "2027-01-01T00:00:00Z"}), "far later than now"),
        (json!({"before": "2026-11-29T00:00:00"}), "no offset"),
        (json!({"before": "yesterday"}), "not a timestamp"),
        (json!({"before": 1_795_900_000}), "a number"),
        (json!({}), "no before"),
        (json!({"before": TODAY, "metric_code": "calls"}), "unknown member"),
    ] {
        let reply = app.post(CLOSE, &body).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.text);
        reply.problem(400, "invalid_request");
    }
    assert_eq!(periods(&app, "closed=true").await.len(), 2, "a refused close closes nothing");
    app.post("/v1/tenants/ghost/periods/close", &json!({"before": TODAY})).await.problem(404, "not_found");

    let audit = app.audit_entries(Some("acme")).await;
    let closes: Vec<&Value> = audit.iter().filter(|e| e["action"] == "period.close").collect();
    let e = closes.iter().find(|e| e["details"]["closed"] == 2).unwrap_or_else(|| panic!("{audit:?}"));
    assert_eq!((&e["tenant_id"], &e["details"]["closed_before"]), (&json!("acme"), &json!(TODAY)));

    // Exactly now is allowed: nothing ends by then that was not closed already.
    assert_eq!(
        close(&app, "2026-11-29T10:30:00Z").await.ok(200),
        json!({"closed_before": "2026-11-29T10:30:00Z", "closed": 0})
    );
    assert_eq!(app.record("acme", "calls", 1).await["current_usage"], 6, "today is still open");
}

async fn a_watermark_inside_a_period_leaves_that_period_open(backend: Backend) {
    let app = day_app(backend).await;
    app.record_at("acme", "calls", 3, "2026-11-27T12:00:00Z").await;
    app.record_at("acme", "calls", 4, YESTERDAY_NOON).await;
    app.record_at("acme", "tokens", 5, "2026-11-10T12:00:00Z").await; // the month [10-15, 11-15)
    app.record("acme", "tokens", 6).await; // the month [11-15, 12-15)
    let closed = close(&app, YESTERDAY_NOON).await.ok(200);
    assert_eq!(closed, json!({"closed_before": YESTERDAY_NOON, "closed": 2}), "only periods ended by then");
    assert_eq!(
        starts(&periods(&app, "closed=true").await),
        start_pairs(&[("calls", "2026-11-27T00:00:00Z"), ("tokens", "2026-10-15T00:00:00Z")])
    );
    app.post_usage(
        "acme",
        &json!({"metric_code": "calls", "amount": 1, "timestamp": "2026-11-27T23:00:00Z"}),
    )
    .await
    .problem(409, "period_closed");
    app.post_usage(
        "acme",
        &json!({"metric_code": "tokens", "amount": 1, "timestamp": "2026-11-14T23:00:00Z"}),
    )
    .await
    .problem(409, "period_closed");
    // Yesterday ends after the watermark: open, before and after `before` alike.
    assert_eq!(app.record_at("acme", "calls", 1, "2026-11-28T06:00:00Z").await["current_usage"], 5);
    assert_eq!(app.record_at("acme", "calls", 1, "2026-11-28T18:00:00Z").await["current_usage"], 6);
    assert_eq!(app.record_at("acme", "tokens", 1, "2026-11-15T00:00:00Z").await["current_usage"], 7);
}

async fn writes_into_a_closed_period_are_409_period_closed(backend: Backend) {
    let app = day_app(backend).await;
    app.record_at("acme", "calls", 4, YESTERDAY_NOON).await;
    app.set_now("2026-11-29T10:30:00Z");
    close(&app, TODAY).await.ok(200);
    app.set_now("2026-11-29T11:00:00Z");
    let closed_at = "2026-11-29T10:30:00Z";

    for at in [YESTERDAY_NOON, YESTERDAY, "2026-11-28T23:59:59.999Z", "2026-11-29T00:59:59+01:00"] {
        let refused = app
            .post_usage("acme", &json!({"metric_code": "calls", "amount": 1, "timestamp": at}))
            .await
            .problem(409, "period_closed");
        assert_period_closed(&refused, "calls", YESTERDAY, TODAY, closed_at);
    }
    // A closed period without a record is closed all the same.
    let empty = app
        .post_usage(
            "acme",
            &json!({"metric_code": "calls", "amount": 1, "timestamp": "2026-11-20T12:00:00Z"}),
        )
        .await
        .problem(409, "period_closed");
    assert_period_closed(&empty, "calls", "2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z", closed_at);
    for at in [YESTERDAY_NOON, "2026-11-20T12:00:00Z"] {
        let refused =
            correct(&app, &json!({"metric_code": "calls", "amount": -1, "reason": "r", "timestamp": at}))
                .await
                .problem(409, "period_closed");
        assert_eq!(refused["metric_code"], "calls");
        assert_eq!(refused["closed_at"], closed_at);
    }
    // The order of checks: the window before the closed period, the closed period before limits.
    app.post_usage(
        "acme",
        &json!({"metric_code": "calls", "amount": 1, "timestamp": "2026-09-01T00:00:00Z"}),
    )
    .await
    .problem(422, "event_out_of_window");
    app.post_usage("acme", &json!({"metric_code": "calls", "amount": 5000, "timestamp": YESTERDAY_NOON}))
        .await
        .problem(409, "period_closed");

    // Open periods still take writes: today's, and the month of `tokens`, which has not ended.
    assert_eq!(app.record_at("acme", "calls", 2, TODAY).await["current_usage"], 2);
    assert_eq!(app.record("acme", "calls", 1).await["current_usage"], 3);
    assert_eq!(app.record_at("acme", "tokens", 9, YESTERDAY_NOON).await["period_start"], ANCHOR);
    assert_eq!(
        correct(&app, &json!({"metric_code": "calls", "amount": 1, "reason": "r"})).await.ok(200)["current_usage"],
        4
    );

    assert_eq!(usage_in(&app, "calls", YESTERDAY).await, 4, "the closed total did not move");
    assert_eq!(usage_in(&app, "calls", "2026-11-20T00:00:00Z").await, 0);
    assert_eq!(app.all_events("acme").await.len(), 5);
}

async fn a_replay_of_a_write_accepted_before_the_close_answers_the_original(backend: Backend) {
    let app = day_app(backend).await;
    let usage =
        json!({"metric_code": "calls", "amount": 4, "idempotency_key": "k-1", "timestamp": YESTERDAY_NOON});
    let original = app.post_usage("acme", &usage).await.ok(200);
    let correction = json!({"metric_code": "calls", "amount": -1, "reason": "fix", "idempotency_key": "c-1",
                            "timestamp": "2026-11-28T13:00:00Z"});
    let corrected = correct(&app, &correction).await.ok(200);
    close(&app, TODAY).await.ok(200);

    assert_eq!(app.post_usage("acme", &usage).await.ok(200), as_replayed(&original));
    assert_eq!(correct(&app, &correction).await.ok(200), as_replayed(&corrected));
    let batch = app.post_batch("acme", json!([usage.clone()])).await.ok(200);
    assert_eq!(batch["results"][0], as_replayed(&original));
    // Still after the window has passed, too.
    app.set_now("2027-01-10T00:00:00Z");
    assert_eq!(app.post_usage("acme", &usage).await.ok(200), as_replayed(&original));
    assert_eq!(correct(&app, &correction).await.ok(200), as_replayed(&corrected));
    app.set_now(NOW);

    // The look-up comes before the closed period: another payload is a conflict ...
    app.post_usage(
        "acme",
        &json!({"metric_code": "calls", "amount": 5, "idempotency_key": "k-1", "timestamp": YESTERDAY_NOON}),
    )
    .await
    .problem(409, "idempotency_conflict");
    // ... and a new key is refused by the close.
    app.post_usage(
        "acme",
        &json!({"metric_code": "calls", "amount": 4, "idempotency_key": "k-2", "timestamp": YESTERDAY_NOON}),
    )
    .await
    .problem(409, "period_closed");
    assert_eq!(usage_in(&app, "calls", YESTERDAY).await, 3);
    assert_eq!(app.all_events("acme").await.len(), 2);
}

async fn a_batch_item_in_a_closed_period_is_a_per_item_error(backend: Backend) {
    let app = day_app(backend).await;
    assert_eq!(close(&app, TODAY).await.ok(200), json!({"closed_before": TODAY, "closed": 0}));
    let results = app
        .post_batch(
            "acme",
            json!([
                {"metric_code": "calls", "amount": 1},
                {"metric_code": "calls", "amount": 2, "timestamp": YESTERDAY_NOON, "idempotency_key": "b-1"},
                {"metric_code": "calls", "amount": 3, "timestamp": "2026-11-29T09:00:00Z"},
                {"metric_code": "tokens", "amount": 4, "timestamp": YESTERDAY_NOON},
            ]),
        )
        .await
        .ok(200);
    let results = results["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 4);
    assert_eq!((&results[0]["current_usage"], &results[2]["current_usage"]), (&json!(1), &json!(4)));
    assert_eq!(results[3]["current_usage"], 4);
    let error = &results[1]["error"];
    assert_problem_object(error, 409, "period_closed", "batch item 1");
    assert_period_closed(error, "calls", YESTERDAY, TODAY, NOW);
    assert_eq!(app.current_usage("acme", "calls").await, 4);
    assert_eq!(app.all_events("acme").await.len(), 3);
    // The refused item consumed no key.
    let fresh = app
        .post_usage("acme", &json!({"metric_code": "calls", "amount": 2, "idempotency_key": "b-1"}))
        .await
        .ok(200);
    assert_eq!((&fresh["replayed"], &fresh["current_usage"]), (&json!(false), &json!(6)));
}

async fn a_commit_into_a_closed_period_is_refused_and_releases_its_hold(backend: Backend) {
    let app = TestApp::spawn_at(backend, "2026-11-28T23:59:00Z").await;
    app.tenant_on_plan("acme", json!([limit("calls", Some(100), "hard", "day")]), Some(ANCHOR)).await;
    let held = app
        .post(
            "/v1/tenants/acme/reservations",
            &json!({"metric_code": "calls", "amount": 40, "ttl_seconds": 600}),
        )
        .await
        .ok(201);
    assert_eq!(held["expires_at"], "2026-11-29T00:09:00Z");
    let id = held["reservation_id"].as_str().unwrap().to_owned();
    app.set_now("2026-11-29T00:02:00Z");
    let open = app.get("/v1/tenants/acme/reservations").await.ok(200);
    assert_eq!(open["reservations"].as_array().unwrap().len(), 1, "still open past the period's end: {open}");

    close(&app, TODAY).await.ok(200);
    let commit = format!("/v1/tenants/acme/reservations/{id}/commit");
    let refused = app.post(&commit, &json!({"amount": 30})).await.problem(409, "period_closed");
    assert_period_closed(&refused, "calls", YESTERDAY, TODAY, "2026-11-29T00:02:00Z");

    // The hold is released: not listed, not committable, nothing recorded.
    assert_eq!(app.get("/v1/tenants/acme/reservations").await.ok(200), json!({"reservations": []}));
    let again = app.post(&commit, &json!({"amount": 30})).await.problem(409, "conflict");
    assert_eq!(again["reservation_status"], "released", "{again}");
    assert_eq!(app.all_events("acme").await, Vec::<Value>::new());
    assert_eq!(usage_in(&app, "calls", YESTERDAY).await, 0);
    let yesterday = periods(&app, "metric_code=calls").await;
    assert!(
        yesterday.iter().all(|p| p["current_usage"] == 0),
        "nothing was recorded in the closed period: {yesterday:?}"
    );

    // Today's holds commit as before, and the whole limit is free today.
    let today = app
        .post("/v1/tenants/acme/reservations", &json!({"metric_code": "calls", "amount": 100}))
        .await
        .ok(201);
    assert_eq!(today["reserved"], 100);
    let path = format!("/v1/tenants/acme/reservations/{}/commit", today["reservation_id"].as_str().unwrap());
    let done = app.post(&path, &json!({"amount": 10})).await.ok(200);
    assert_eq!((&done["current_usage"], &done["period_start"]), (&json!(10), &json!(TODAY)));
    let usage = app.get("/v1/tenants/acme/usage").await.ok(200);
    assert_eq!(usage["metrics"][0]["reserved"], 0);
}

async fn the_periods_list_filters_and_pages(backend: Backend) {
    let app = day_app(backend).await;
    for (i, day) in ["2026-11-26", "2026-11-27", "2026-11-28", "2026-11-29"].iter().enumerate() {
        app.record_at("acme", "calls", i64::try_from(i).unwrap() + 1, &format!("{day}T08:00:00Z")).await;
    }
    app.record("acme", "tokens", 50).await;
    app.set_now("2026-11-29T10:30:00Z");
    assert_eq!(close(&app, "2026-11-28T00:00:00Z").await.ok(200)["closed"], 2);

    let all = app.get(PERIODS).await.ok(200);
    assert_eq!(keys(&all), sorted(&["periods", "next_cursor"]));
    assert_eq!(all["next_cursor"], Value::Null);
    let list = all["periods"].as_array().unwrap().clone();
    assert_eq!(
        starts(&list),
        start_pairs(&[
            ("calls", TODAY),
            ("calls", YESTERDAY),
            ("calls", "2026-11-27T00:00:00Z"),
            ("calls", "2026-11-26T00:00:00Z"),
            ("tokens", ANCHOR),
        ]),
        "newest first"
    );
    for p in &list {
        assert_eq!(keys(p), sorted(&PERIOD_MEMBERS), "{p}");
    }
    assert_eq!(
        list[2],
        json!({"metric_code": "calls", "period": "day", "period_start": "2026-11-27T00:00:00Z",
               "period_end": "2026-11-28T00:00:00Z", "current_usage": 2, "limit": 1000, "enforcement": "hard",
               "closed_at": "2026-11-29T10:30:00Z", "reopened_at": null})
    );
    assert_eq!(
        list[4],
        json!({"metric_code": "tokens", "period": "month", "period_start": ANCHOR,
               "period_end": "2026-12-15T00:00:00Z", "current_usage": 50, "limit": null, "enforcement": "none",
               "closed_at": null, "reopened_at": null})
    );

    assert_eq!(
        starts(&periods(&app, "closed=true").await),
        start_pairs(&[("calls", "2026-11-27T00:00:00Z"), ("calls", "2026-11-26T00:00:00Z")])
    );
    assert_eq!(
        starts(&periods(&app, "closed=false").await),
        start_pairs(&[("calls", TODAY), ("calls", YESTERDAY), ("tokens", ANCHOR)])
    );
    assert_eq!(starts(&periods(&app, "metric_code=tokens").await), start_pairs(&[("tokens", ANCHOR)]));
    assert_eq!(
        starts(&periods(&app, "metric_code=calls&closed=false").await),
        start_pairs(&[("calls", TODAY), ("calls", YESTERDAY)])
    );
    assert_eq!(periods(&app, "metric_code=exports").await, Vec::<Value>::new());
    assert_eq!(app.get(&format!("{PERIODS}?limit=5")).await.ok(200)["next_cursor"], Value::Null);

    // Pages of 2, and of 1 among the closed ones.
    let closed_list = periods(&app, "closed=true").await;
    for (query, sizes, expected) in
        [("limit=2", vec![2, 2, 1], list.clone()), ("closed=true&limit=1", vec![1, 1], closed_list)]
    {
        let mut seen = Vec::new();
        let mut got_sizes = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let path = match &cursor {
                Some(c) => format!("{PERIODS}?{query}&cursor={c}"),
                None => format!("{PERIODS}?{query}"),
            };
            let page = app.get(&path).await.ok(200);
            let items = page["periods"].as_array().unwrap();
            got_sizes.push(items.len());
            seen.extend(items.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(got_sizes, sizes, "{query}");
        assert_eq!(seen, expected, "{query}: the pages together are the whole list");
    }

    for bad in [
        "closed=maybe",
        "closed=1",
        "closed=TRUE",
        "limit=0",
        "limit=1001",
        "limit=x",
        "cursor=nope",
        "metric_code=Calls",
        "status=closed",
    ] {
        let reply = app.get(&format!("{PERIODS}?{bad}")).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        reply.problem(400, "invalid_request");
    }
    app.get("/v1/tenants/ghost/periods").await.problem(404, "not_found");
    app.tenant_on_plan("beta", json!([limit("calls", Some(10), "hard", "day")]), None).await;
    assert_eq!(
        app.get("/v1/tenants/beta/periods").await.ok(200),
        json!({"periods": [], "next_cursor": null})
    );
}

async fn a_reopened_period_takes_writes_until_an_explicit_close(backend: Backend) {
    let app = day_app(backend).await;
    app.record_at("acme", "calls", 4, YESTERDAY_NOON).await;
    app.set_now("2026-11-29T10:30:00Z");
    close(&app, TODAY).await.ok(200);
    app.set_now("2026-11-29T11:00:00Z");

    let reopened = reopen(&app, "calls", YESTERDAY, "late usage found").await.ok(200);
    assert_eq!(
        reopened,
        json!({"metric_code": "calls", "period": "day", "period_start": YESTERDAY, "period_end": TODAY,
               "current_usage": 4, "limit": 1000, "enforcement": "hard", "closed_at": null,
               "reopened_at": "2026-11-29T11:00:00Z"})
    );
    assert_eq!(app.record_at("acme", "calls", 1, YESTERDAY_NOON).await["current_usage"], 5);
    let fixed = correct(
        &app,
        &json!({"metric_code": "calls", "amount": 2, "reason": "r", "timestamp": "2026-11-28T18:00:00Z"}),
    )
    .await
    .ok(200);
    assert_eq!(fixed["current_usage"], 7);
    let listed = periods(&app, "metric_code=calls&closed=false").await;
    let y = listed.iter().find(|p| p["period_start"] == YESTERDAY).unwrap();
    assert_eq!(
        (&y["closed_at"], &y["reopened_at"], &y["current_usage"]),
        (&Value::Null, &json!("2026-11-29T11:00:00Z"), &json!(7))
    );

    // The period's start may be written with any offset.
    app.set_now("2026-11-29T11:10:00Z");
    assert_eq!(close(&app, TODAY).await.ok(200)["closed"], 1);
    let offset = reopen(&app, "calls", "2026-11-28T01:00:00+01:00", "late usage found").await.ok(200);
    assert_eq!(
        (&offset["period_start"], &offset["reopened_at"]),
        (&json!(YESTERDAY), &json!("2026-11-29T11:10:00Z"))
    );
    // Only a closed period reopens.
    reopen(&app, "calls", YESTERDAY, "again").await.problem(409, "conflict");
    reopen(&app, "calls", TODAY, "today").await.problem(409, "conflict");
    reopen(&app, "tokens", ANCHOR, "month").await.problem(409, "conflict");
    // A closed period without a record reopens as a zero record.
    let empty = reopen(&app, "calls", "2026-11-20T00:00:00Z", "late import").await.ok(200);
    assert_eq!((&empty["current_usage"], &empty["closed_at"]), (&json!(0), &Value::Null));
    assert_eq!(app.record_at("acme", "calls", 3, "2026-11-20T12:00:00Z").await["current_usage"], 3);

    for (body, what) in [
        (json!({"metric_code": "calls", "period_start": YESTERDAY}), "no reason"),
        (json!({"metric_code": "calls", "period_start": YESTERDAY, "reason": ""}), "an empty reason"),
        (
            json!({"metric_code": "calls", "period_start": YESTERDAY, "reason": "x".repeat(501)}),
            "a long reason",
        ),
        (json!({"metric_code": "Calls", "period_start": YESTERDAY, "reason": "r"}), "a bad metric"),
        (json!({"metric_code": "calls", "period_start": "2026-11-28T00:00:00", "reason": "r"}), "no offset"),
        (json!({"period_start": YESTERDAY, "reason": "r"}), "no metric"),
        (
            json!({"metric_code": "calls", "period_start": YESTERDAY, "reason": "r", "note": 1}),
            "unknown member",
        ),
    ] {
        let reply = app.post(REOPEN, &body).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.text);
        reply.problem(400, "invalid_request");
    }
    app.post(
        "/v1/tenants/ghost/periods/reopen",
        &json!({"metric_code": "calls", "period_start": YESTERDAY, "reason": "r"}),
    )
    .await
    .problem(404, "not_found");

    let audit = app.audit_entries(Some("acme")).await;
    let reopens: Vec<&Value> = audit.iter().filter(|e| e["action"] == "period.reopen").collect();
    assert_eq!(reopens.len(), 3, "{audit:?}");
    let first = reopens.iter().find(|e| e["details"]["period_start"] == YESTERDAY).unwrap();
    assert_eq!(
        (&first["tenant_id"], &first["details"]["metric_code"], &first["details"]["reason"]),
        (&json!("acme"), &json!("calls"), &json!("late usage found"))
    );

    // An explicit close closes the reopened periods again, even at the same watermark.
    app.set_now("2026-11-29T11:30:00Z");
    assert_eq!(close(&app, TODAY).await.ok(200), json!({"closed_before": TODAY, "closed": 2}));
    let refused = app
        .post_usage("acme", &json!({"metric_code": "calls", "amount": 1, "timestamp": YESTERDAY_NOON}))
        .await
        .problem(409, "period_closed");
    assert_period_closed(&refused, "calls", YESTERDAY, TODAY, "2026-11-29T11:30:00Z");
    app.post_usage(
        "acme",
        &json!({"metric_code": "calls", "amount": 1, "timestamp": "2026-11-20T12:00:00Z"}),
    )
    .await
    .problem(409, "period_closed");
    let closed = periods(&app, "closed=true").await;
    assert_eq!(starts(&closed), start_pairs(&[("calls", YESTERDAY), ("calls", "2026-11-20T00:00:00Z")]));
    assert_eq!(closed[0]["current_usage"], 7);
    assert_eq!(closed[0]["closed_at"], "2026-11-29T11:30:00Z");
}

async fn a_plan_takes_close_after(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let limits = json!([limit("calls", Some(10), "hard", "day")]);
    let body = |close_after: Value| json!({"name": "Pro", "limits": limits, "close_after": close_after});
    let created = app.put("/v1/plans/pro", &body(json!("3d"))).await.ok(201);
    assert_eq!(created["close_after"], "3d");
    assert_eq!(app.get("/v1/plans/pro").await.ok(200)["close_after"], "3d");
    let listed = app.get("/v1/plans").await.ok(200);
    assert_eq!(listed["plans"][0]["close_after"], "3d");
    let same = app.put("/v1/plans/pro", &body(json!("3d"))).await.ok(200);
    assert_eq!((&same["version"], &same["updated_at"]), (&created["version"], &created["updated_at"]));
    let hours = app.put("/v1/plans/pro", &body(json!("12h"))).await.ok(200);
    assert_eq!((&hours["close_after"], &hours["version"]), (&json!("12h"), &json!(2)));
    assert_eq!(app.put("/v1/plans/pro", &body(Value::Null)).await.ok(200)["close_after"], Value::Null);
    let absent = app.put("/v1/plans/basic", &json!({"name": "Basic", "limits": limits})).await.ok(201);
    assert_eq!(absent.get("close_after"), Some(&Value::Null), "{absent}");

    for bad in
        [json!("3x"), json!(""), json!("d"), json!("3"), json!("-1d"), json!("3 d"), json!(3), json!("367d")]
    {
        let reply = app.put("/v1/plans/pro", &body(bad.clone())).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        reply.problem(400, "invalid_request");
    }
    assert_eq!(
        app.get("/v1/plans/pro").await.ok(200)["close_after"],
        Value::Null,
        "a refused PUT changed nothing"
    );
}

async fn the_new_routes_and_members_are_documented(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc = app.call(Method::GET, "/openapi.json", Auth::Anonymous, None).await.ok(200);
    for (path, method) in [
        ("/v1/tenants/{tenant_id}/usage/corrections", "post"),
        ("/v1/tenants/{tenant_id}/periods/close", "post"),
        ("/v1/tenants/{tenant_id}/periods/reopen", "post"),
        ("/v1/tenants/{tenant_id}/periods", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op["responses"]["200"].is_object(), "{method} {path}: {op}");
    }
    let text = doc.to_string();
    for needle in
        ["period_closed", "correction_below_zero", "correction_not_applicable", "close_after", "reopened_at"]
    {
        assert!(text.contains(needle), "the OpenAPI document does not mention {needle}");
    }
    let docs = app.call(Method::GET, "/docs", Auth::Anonymous, None).await;
    assert_eq!(docs.status, 200);
    for path in ["/usage/corrections", "/periods/close", "/periods/reopen", "/periods"] {
        assert!(docs.text.contains(path), "/docs does not mention {path}");
    }
}

// ---------------------------------------------------------------------------------------
// Compatibility routes: a multi-event request with an event in a closed period applies nothing

async fn a_lago_batch_with_an_event_in_a_closed_period_applies_nothing(backend: Backend) {
    let app = day_app(backend).await;
    close(&app, TODAY).await.ok(200);
    let event = |tx: &str, at: &str| {
        json!({"transaction_id": tx, "external_subscription_id": "acme", "code": "calls", "timestamp": at,
               "properties": {}})
    };
    let batch = json!({"events": [event("tx-a", NOW), event("tx-b", YESTERDAY_NOON), event("tx-c", NOW)]});
    let refused = app.post("/api/v1/events/batch", &batch).await.problem(409, "period_closed");
    assert_period_closed(&refused, "calls", YESTERDAY, TODAY, NOW);
    assert_eq!(app.current_usage("acme", "calls").await, 0, "nothing was applied");
    assert_eq!(app.all_events("acme").await, Vec::<Value>::new());

    let one = json!({"event": event("tx-d", YESTERDAY_NOON)});
    app.post("/api/v1/events", &one).await.problem(409, "period_closed");
    // Without the closed event the others apply: their keys were not consumed.
    let rest = json!({"events": [event("tx-a", NOW), event("tx-c", NOW)]});
    assert_eq!(app.post("/api/v1/events/batch", &rest).await.ok(200)["events"].as_array().unwrap().len(), 2);
    assert_eq!(app.current_usage("acme", "calls").await, 2);
}

async fn an_openmeter_batch_with_an_event_in_a_closed_period_applies_nothing(backend: Backend) {
    let app = day_app(backend).await;
    close(&app, TODAY).await.ok(200);
    let ce = |id: &str, at: &str| {
        json!({"id": id, "source": "svc", "specversion": "1.0", "type": "calls", "subject": "acme", "time": at,
               "data": {}})
    };
    let batch = json!([ce("e1", NOW), ce("e2", YESTERDAY_NOON), ce("e3", NOW)]);
    let r = app
        .call_raw(
            Method::POST,
            "/api/v1/events",
            Auth::Admin,
            Some("application/cloudevents-batch+json"),
            batch.to_string(),
        )
        .await;
    let refused = r.problem(409, "period_closed");
    assert_period_closed(&refused, "calls", YESTERDAY, TODAY, NOW);
    assert_eq!(app.current_usage("acme", "calls").await, 0, "nothing was applied");
    assert_eq!(app.all_events("acme").await, Vec::<Value>::new());
}

// ---------------------------------------------------------------------------------------
// 64 writers racing a close (system clock: yesterday and today are the real ones)

const WRITERS: usize = 64;
const WRITES_PER_WRITER_MAX: usize = 200;

/// One write of the race: whether the close had answered before it was sent, its status,
/// and its body.
struct Write {
    after_close: bool,
    status: u16,
    body: Value,
}

async fn sixty_four_writers_racing_a_close_never_land_in_a_closed_period(backend: Backend) {
    race_a_close(TestApp::spawn(backend).await).await;
}

async fn race_a_close(app: TestApp) {
    let today = Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let yesterday = today - chrono::Duration::days(1);
    let (today_s, yesterday_s) = (fmt(today), fmt(yesterday));
    let at = fmt(yesterday + chrono::Duration::hours(12));
    app.tenant_on_plan("acme", json!([limit("calls", Some(1_000_000), "hard", "day")]), None).await;

    let url = format!("{}/v1/tenants/acme/usage", app.base_url);
    let answered = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let close_answered = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, url, at) = (app.client.clone(), url.clone(), at.clone());
        let (answered, in_flight, close_answered) =
            (answered.clone(), in_flight.clone(), close_answered.clone());
        writers.push(tokio::spawn(async move {
            let mut writes = Vec::new();
            for i in 0..WRITES_PER_WRITER_MAX {
                let body = json!({"metric_code": "calls", "amount": 1, "timestamp": at,
                                  "idempotency_key": format!("w{w}-{i}")});
                let after_close = close_answered.load(Ordering::SeqCst);
                in_flight.fetch_add(1, Ordering::SeqCst);
                let resp = client.post(&url).bearer_auth(ADMIN_KEY).json(&body).send().await.unwrap();
                let status = resp.status().as_u16();
                let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
                in_flight.fetch_sub(1, Ordering::SeqCst);
                answered.fetch_add(1, Ordering::SeqCst);
                let done = status != 200;
                writes.push(Write { after_close, status, body });
                if done {
                    break;
                }
            }
            writes
        }));
    }
    // The close starts while the writers are busy: once they have had 64 answers.
    let closer = {
        let (client, base) = (app.client.clone(), app.base_url.clone());
        let (answered, in_flight, close_answered) =
            (answered.clone(), in_flight.clone(), close_answered.clone());
        let today_s = today_s.clone();
        tokio::spawn(async move {
            while answered.load(Ordering::SeqCst) < WRITERS {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let busy = in_flight.load(Ordering::SeqCst);
            let resp = client
                .post(format!("{base}/v1/tenants/acme/periods/close"))
                .bearer_auth(ADMIN_KEY)
                .json(&json!({"before": today_s}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
            close_answered.store(true, Ordering::SeqCst);
            // What the closed period holds right after the close answered.
            let listed = client
                .get(format!("{base}/v1/tenants/acme/periods?closed=true&metric_code=calls"))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap();
            (busy, status, body, listed)
        })
    };
    let mut writes = Vec::new();
    for w in writers {
        let mine = w.await.unwrap();
        assert!(
            mine.last().is_some_and(|w| w.status == 409),
            "every writer ends on the close: {:?}",
            mine.last().map(|w| (w.status, w.body.clone()))
        );
        writes.extend(mine);
    }
    let (busy, status, closed, listed) = closer.await.unwrap();
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed, json!({"closed_before": today_s, "closed": 1}));
    assert!(busy > 0, "the close raced writers in flight");

    let listed = listed["periods"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["period_start"], json!(yesterday_s));
    let closed_at = listed[0]["closed_at"].clone();
    assert!(closed_at.is_string(), "{listed:?}");

    let mut usages = Vec::new();
    for w in &writes {
        match w.status {
            200 => {
                assert!(!w.after_close, "a write sent after the close answered was accepted: {}", w.body);
                usages.push(w.body["current_usage"].as_i64().unwrap());
            }
            409 => {
                assert_eq!(w.body["code"], "period_closed", "{}", w.body);
                assert_eq!(
                    (&w.body["period_start"], &w.body["period_end"], &w.body["closed_at"]),
                    (&json!(yesterday_s), &json!(today_s), &closed_at),
                    "{}",
                    w.body
                );
            }
            other => panic!("a write answered {other}: {}", w.body),
        }
    }
    let accepted = i64::try_from(usages.len()).unwrap();
    eprintln!(
        "race: {accepted} accepted, {} refused, {busy} writes in flight when the close was sent",
        writes.len() - usages.len()
    );
    assert!(accepted >= i64::try_from(WRITERS).unwrap(), "the close came after 64 answers: {accepted}");
    usages.sort_unstable();
    assert_eq!(usages, (1..=accepted).collect::<Vec<_>>(), "each accepted write counted once");
    assert_eq!(listed[0]["current_usage"], accepted, "the closed total right after the close");

    // Afterwards: the same totals, the trail agrees, and the period stays closed.
    let record = history(&app, "acme", "calls").await;
    assert_eq!(record.len(), 1);
    assert_eq!(record[0]["current_usage"], accepted);
    let events = app.all_events("acme").await;
    assert_eq!(i64::try_from(events.len()).unwrap(), accepted);
    let ids: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len());
    assert!(events.iter().all(|e| ts(e["timestamp"].as_str().unwrap()) == ts(&at)));
    app.post_usage("acme", &json!({"metric_code": "calls", "amount": 1, "timestamp": at}))
        .await
        .problem(409, "period_closed");
    correct(&app, &json!({"metric_code": "calls", "amount": -1, "reason": "r", "timestamp": at}))
        .await
        .problem(409, "period_closed");
    assert_eq!(app.record("acme", "calls", 1).await["current_usage"], 1, "today is open");
    assert_eq!(usage_in(&app, "calls", &yesterday_s).await, accepted);
}

// ---------------------------------------------------------------------------------------
// PostgreSQL in schema tenancy (one schema per tenant; system clock)

/// Corrections, a close, refusals, a replay and a reopening on the real yesterday.
async fn closing_on_the_system_clock(app: TestApp) {
    let today = Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let yesterday = today - chrono::Duration::days(1);
    let (today_s, yesterday_s) = (fmt(today), fmt(yesterday));
    let at = fmt(yesterday + chrono::Duration::hours(12));
    app.tenant_on_plan("acme", json!([limit("calls", Some(10), "soft", "day")]), None).await;
    let usage = json!({"metric_code": "calls", "amount": 3, "timestamp": at, "idempotency_key": "k"});
    let original = app.post_usage("acme", &usage).await.ok(200);
    let fix =
        correct(&app, &json!({"metric_code": "calls", "amount": 20, "reason": "backfill", "timestamp": at}))
            .await
            .ok(200);
    assert_eq!(
        (&fix["current_usage"], &fix["exceeded"], &fix["kind"]),
        (&json!(23), &json!(true), &json!("correction"))
    );
    assert_eq!(close(&app, &today_s).await.ok(200), json!({"closed_before": today_s, "closed": 1}));

    let refused = app
        .post_usage("acme", &json!({"metric_code": "calls", "amount": 1, "timestamp": at}))
        .await
        .problem(409, "period_closed");
    assert_eq!((&refused["period_start"], &refused["period_end"]), (&json!(yesterday_s), &json!(today_s)));
    correct(&app, &json!({"metric_code": "calls", "amount": -1, "reason": "r", "timestamp": at}))
        .await
        .problem(409, "period_closed");
    assert_eq!(app.post_usage("acme", &usage).await.ok(200), as_replayed(&original));
    let listed = periods(&app, "closed=true").await;
    assert_eq!((listed.len(), &listed[0]["current_usage"]), (1, &json!(23)));

    reopen(&app, "calls", &yesterday_s, "late").await.ok(200);
    assert_eq!(app.record_at("acme", "calls", 1, &at).await["current_usage"], 24);
    assert_eq!(close(&app, &today_s).await.ok(200)["closed"], 1);
    app.post_usage("acme", &json!({"metric_code": "calls", "amount": 1, "timestamp": at}))
        .await
        .problem(409, "period_closed");
    let audit = app.audit_entries(Some("acme")).await;
    for action in ["usage.correct", "period.close", "period.reopen"] {
        assert!(audit.iter().any(|e| e["action"] == action), "{action} in {audit:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_schema_tenancy_closes_and_corrects() {
    closing_on_the_system_clock(TestApp::spawn_pg_schema_tenancy().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_schema_tenancy_writers_racing_a_close_never_land_in_a_closed_period() {
    race_a_close(TestApp::spawn_pg_schema_tenancy().await).await;
}

async fn closing_on_the_system_clock_works(backend: Backend) {
    closing_on_the_system_clock(TestApp::spawn(backend).await).await;
}

store_tests!(
    a_correction_moves_the_counter_by_its_signed_amount,
    a_correction_reaches_past_periods_beyond_the_event_window,
    a_correction_is_never_refused_by_a_hard_limit,
    a_correction_below_zero_or_on_a_gauge_is_refused,
    bad_corrections_are_400_and_change_nothing,
    corrections_replay_and_share_the_usage_key_space,
    only_an_admin_corrects_closes_reopens_and_lists_periods,
    every_correction_is_audited_once,
    a_downward_correction_fires_nothing_and_an_upward_crossing_fires_once,
    concurrent_corrections_crossing_a_threshold_make_one_delivery,
    a_close_sets_the_watermark_and_counts_the_records_it_closed,
    a_watermark_inside_a_period_leaves_that_period_open,
    writes_into_a_closed_period_are_409_period_closed,
    a_replay_of_a_write_accepted_before_the_close_answers_the_original,
    a_batch_item_in_a_closed_period_is_a_per_item_error,
    a_commit_into_a_closed_period_is_refused_and_releases_its_hold,
    the_periods_list_filters_and_pages,
    a_reopened_period_takes_writes_until_an_explicit_close,
    a_plan_takes_close_after,
    the_new_routes_and_members_are_documented,
    a_lago_batch_with_an_event_in_a_closed_period_applies_nothing,
    an_openmeter_batch_with_an_event_in_a_closed_period_applies_nothing,
    sixty_four_writers_racing_a_close_never_land_in_a_closed_period,
    closing_on_the_system_clock_works,
);
