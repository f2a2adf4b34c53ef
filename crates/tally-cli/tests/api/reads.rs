//! Check, current usage, history, events, reset and the audit log.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    ANCHOR, Auth, Backend, NOW, TestApp, assert_utc, assert_uuid_v7, distinct_ids, keys, limit, sorted,
};

// ---------------------------------------------------------------------------------------
// check

async fn check_answers_with_the_usage_before_the_amount_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "month")]), Some(ANCHOR)).await;
    app.record("acme", "api_calls", 7).await;

    let fits = app.check("acme", "api_calls", 3).await.ok(200);
    assert_eq!(
        keys(&fits),
        sorted(&[
            "allowed",
            "metric_code",
            "current_usage",
            "reserved",
            "limit",
            "remaining",
            "enforcement",
            "period_start",
            "period_end"
        ])
    );
    assert_eq!(fits["allowed"], true);
    assert_eq!(fits["metric_code"], "api_calls");
    assert_eq!(fits["current_usage"], 7);
    assert_eq!(fits["limit"], 10);
    assert_eq!(fits["remaining"], 3);
    assert_eq!(fits["enforcement"], "hard");
    assert_eq!(fits["period_start"], "2026-11-15T00:00:00Z");
    assert_eq!(fits["period_end"], "2026-12-15T00:00:00Z");

    let too_much = app.check("acme", "api_calls", 4).await.ok(200);
    assert_eq!(too_much["allowed"], false);
    assert_eq!(too_much["current_usage"], 7);
    assert_eq!(too_much["remaining"], 3);

    assert_eq!(app.current_usage("acme", "api_calls").await, 7, "a check changes nothing");
    assert_eq!(app.all_events("acme").await.len(), 1);
}

async fn check_on_soft_and_none_limits_is_always_allowed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan(
        "acme",
        json!([
            limit("soft_metric", Some(1), "soft", "month"),
            limit("none_metric", Some(1), "none", "month")
        ]),
        None,
    )
    .await;
    app.record("acme", "soft_metric", 5).await;
    for metric in ["soft_metric", "none_metric"] {
        let body = app.check("acme", metric, 1000).await.ok(200);
        assert_eq!(body["allowed"], true, "{body}");
    }
    assert_eq!(app.check("acme", "soft_metric", 1).await.ok(200)["current_usage"], 5);
}

async fn check_refuses_what_recording_would_refuse(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "month")]), None).await;
    app.put_tenant("idle").await;
    app.check("acme", "exports", 1).await.problem(422, "quota_not_found");
    app.check("acme", "api_calls", 0).await.problem(400, "invalid_request");
    app.check("idle", "api_calls", 1).await.problem(422, "no_subscription");
    app.check("ghost", "api_calls", 1).await.problem(404, "not_found");
    app.post(
        "/v1/tenants/acme/usage/check",
        &json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "x"}),
    )
    .await
    .problem(400, "invalid_request");
}

// ---------------------------------------------------------------------------------------
// usage

async fn usage_lists_every_metric_of_the_plan_and_its_overrides(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", Some(100), "hard", "month"), limit("storage", Some(10), "soft", "week")]),
        Some(ANCHOR),
    )
    .await;
    app.put(
        "/v1/tenants/acme/overrides/exports",
        &json!({"limit": null, "enforcement": "none", "period": "day"}),
    )
    .await
    .ok(200);
    app.record("acme", "api_calls", 4).await;

    let body = app.get("/v1/tenants/acme/usage").await.ok(200);
    assert_eq!(keys(&body), sorted(&["tenant_id", "plan_code", "metrics"]));
    assert_eq!(body["tenant_id"], "acme");
    assert_eq!(body["plan_code"], "acme_plan");
    let metric = |code: &str| -> Value {
        body["metrics"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["metric_code"] == code))
            .unwrap_or_else(|| panic!("{code} in {body}"))
            .clone()
    };
    assert_eq!(body["metrics"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        metric("api_calls"),
        json!({"metric_code": "api_calls", "current_usage": 4, "reserved": 0, "limit": 100, "remaining": 96, "enforcement": "hard",
               "period": "month", "period_start": "2026-11-15T00:00:00Z", "period_end": "2026-12-15T00:00:00Z",
               "exceeded": false})
    );
    assert_eq!(
        metric("storage"),
        json!({"metric_code": "storage", "current_usage": 0, "reserved": 0, "limit": 10, "remaining": 10, "enforcement": "soft",
               "period": "week", "period_start": "2026-11-23T00:00:00Z", "period_end": "2026-11-30T00:00:00Z",
               "exceeded": false})
    );
    assert_eq!(
        metric("exports"),
        json!({"metric_code": "exports", "current_usage": 0, "reserved": 0, "limit": null, "remaining": null, "enforcement": "none",
               "period": "day", "period_start": "2026-11-29T00:00:00Z", "period_end": "2026-11-30T00:00:00Z",
               "exceeded": false})
    );

    // An override of a plan metric replaces its entry.
    app.put("/v1/tenants/acme/overrides/api_calls", &json!({"limit": 2, "enforcement": "soft"}))
        .await
        .ok(200);
    let body = app.get("/v1/tenants/acme/usage").await.ok(200);
    let api_calls =
        body["metrics"].as_array().and_then(|ms| ms.iter().find(|m| m["metric_code"] == "api_calls"));
    let api_calls = api_calls.expect("api_calls").clone();
    assert_eq!(api_calls["limit"], 2);
    assert_eq!(api_calls["enforcement"], "soft");
    assert_eq!(api_calls["exceeded"], true);
    assert_eq!(api_calls["remaining"], 0);
    assert_eq!(body["metrics"].as_array().map(Vec::len), Some(3));
}

async fn usage_needs_a_subscription_and_an_existing_tenant(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put_tenant("idle").await;
    app.get("/v1/tenants/idle/usage").await.problem(422, "no_subscription");
    app.get("/v1/tenants/ghost/usage").await.problem(404, "not_found");
    app.get("/v1/tenants/idle/usage?verbose=1").await.problem(400, "invalid_request");
}

// ---------------------------------------------------------------------------------------
// history

async fn history_lists_records_newest_first_and_selects_by_period_start(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", None, "none", "hour")]), Some(ANCHOR)).await;
    app.record_at("acme", "api_calls", 1, "2026-11-29T07:10:00Z").await;
    app.record_at("acme", "api_calls", 2, "2026-11-29T09:30:00Z").await;
    app.record_at("acme", "api_calls", 3, "2026-11-29T08:20:00Z").await;
    app.record_at("acme", "api_calls", 4, "2026-11-29T08:40:00Z").await;

    let body = app.get("/v1/tenants/acme/usage/api_calls/history").await.ok(200);
    assert_eq!(keys(&body), sorted(&["records"]));
    let records = body["records"].as_array().expect("records");
    let starts: Vec<&str> = records.iter().map(|r| r["period_start"].as_str().expect("start")).collect();
    assert_eq!(starts, vec!["2026-11-29T09:00:00Z", "2026-11-29T08:00:00Z", "2026-11-29T07:00:00Z"]);
    let usages: Vec<i64> = records.iter().map(|r| r["current_usage"].as_i64().expect("usage")).collect();
    assert_eq!(usages, vec![2, 7, 1]);
    for r in records {
        for member in ["id", "period_start", "period_end", "current_usage", "created_at", "updated_at"] {
            assert!(r.get(member).is_some(), "{member} in {r}");
        }
        assert!(r["id"].as_str().is_some_and(|id| !id.is_empty()), "{r}");
        assert_utc(&r["created_at"]);
        assert_utc(&r["updated_at"]);
    }
    assert_eq!(records[0]["period_end"], "2026-11-29T10:00:00Z");
    distinct_ids(records, "id");

    let window =
        app.get("/v1/tenants/acme/usage/api_calls/history?from=2026-11-29T08:00:00Z&to=2026-11-29T09:00:00Z");
    let window = window.await.ok(200);
    let starts: Vec<&str> = window["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["period_start"].as_str().expect("s"))
        .collect();
    assert_eq!(starts, vec!["2026-11-29T08:00:00Z"], "from is inclusive, to exclusive");

    // Selection is by period_start: a period that began before `from` is not included.
    let later = app.get("/v1/tenants/acme/usage/api_calls/history?from=2026-11-29T08:30:00Z").await.ok(200);
    let starts: Vec<&str> = later["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["period_start"].as_str().expect("s"))
        .collect();
    assert_eq!(starts, vec!["2026-11-29T09:00:00Z"]);

    let offset =
        app.get("/v1/tenants/acme/usage/api_calls/history?to=2026-11-29T10:00:00%2B02:00").await.ok(200);
    let starts: Vec<&str> = offset["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["period_start"].as_str().expect("s"))
        .collect();
    assert_eq!(starts, vec!["2026-11-29T07:00:00Z"]);
}

async fn history_of_an_unused_metric_is_an_empty_list(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", None, "none", "month")]), None).await;
    assert_eq!(app.get("/v1/tenants/acme/usage/api_calls/history").await.ok(200), json!({"records": []}));
    assert_eq!(app.get("/v1/tenants/acme/usage/exports/history").await.ok(200), json!({"records": []}));
}

async fn history_refuses_bad_queries(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", None, "none", "month")]), None).await;
    for query in
        ["from=yesterday", "to=2026-11-29T08:00:00", "limit=0", "limit=1001", "metric_code=api_calls"]
    {
        app.get(&format!("/v1/tenants/acme/usage/api_calls/history?{query}"))
            .await
            .problem(400, "invalid_request");
    }
    app.get("/v1/tenants/ghost/usage/api_calls/history").await.problem(404, "not_found");
}

// ---------------------------------------------------------------------------------------
// events

async fn events_are_listed_newest_first_by_timestamp_then_id(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", None, "none", "month"), limit("exports", None, "none", "month")]),
        Some(ANCHOR),
    )
    .await;
    app.post_usage(
        "acme",
        &json!({"metric_code": "api_calls", "amount": 1, "timestamp": "2026-11-29T09:00:00Z",
                "idempotency_key": "first", "metadata": {"n": 1}}),
    )
    .await
    .ok(200);
    app.record_at("acme", "exports", 2, "2026-11-29T09:30:00Z").await;
    app.record_at("acme", "api_calls", 3, "2026-11-29T08:00:00Z").await;
    app.record_at("acme", "api_calls", 4, "2026-11-29T09:30:00Z").await;
    app.record_at("acme", "api_calls", 5, "2026-11-29T09:30:00Z").await;

    let body = app.get("/v1/tenants/acme/events").await.ok(200);
    assert_eq!(keys(&body), sorted(&["events", "next_cursor"]));
    assert_eq!(body["next_cursor"], Value::Null);
    let events = body["events"].as_array().expect("events");
    let stamps: Vec<&str> = events.iter().map(|e| e["timestamp"].as_str().expect("timestamp")).collect();
    assert_eq!(
        stamps,
        vec![
            "2026-11-29T09:30:00Z",
            "2026-11-29T09:30:00Z",
            "2026-11-29T09:30:00Z",
            "2026-11-29T09:00:00Z",
            "2026-11-29T08:00:00Z"
        ]
    );
    let tied: Vec<uuid::Uuid> = events[..3].iter().map(|e| assert_uuid_v7(&e["id"])).collect();
    assert!(tied.windows(2).all(|w| w[0] > w[1]), "equal timestamps are ordered by id descending: {tied:?}");
    let amounts: Vec<i64> = events[..3].iter().map(|e| e["amount"].as_i64().expect("amount")).collect();
    assert_eq!(amounts, vec![5, 4, 2], "ids are time-ordered, so the later write comes first");

    let first = &events[3];
    assert_eq!(
        keys(first),
        sorted(&[
            "id",
            "metric_code",
            "amount",
            "metadata",
            "idempotency_key",
            "timestamp",
            "created_at",
            "kind",
            "reason"
        ])
    );
    assert_eq!((first["kind"].as_str(), &first["reason"]), (Some("usage"), &Value::Null));
    assert_eq!(first["metric_code"], "api_calls");
    assert_eq!(first["amount"], 1);
    assert_eq!(first["metadata"], json!({"n": 1}));
    assert_eq!(first["idempotency_key"], "first");
    assert_eq!(first["created_at"], NOW);
}

async fn events_filter_by_metric_and_by_a_half_open_time_range(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", None, "none", "month"), limit("exports", None, "none", "month")]),
        Some(ANCHOR),
    )
    .await;
    app.record_at("acme", "api_calls", 1, "2026-11-29T07:00:00Z").await;
    app.record_at("acme", "api_calls", 2, "2026-11-29T08:00:00Z").await;
    app.record_at("acme", "exports", 3, "2026-11-29T08:30:00Z").await;
    app.record_at("acme", "api_calls", 4, "2026-11-29T09:00:00Z").await;

    let amounts = |body: Value| -> Vec<i64> {
        body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["amount"].as_i64().expect("amount"))
            .collect()
    };
    let only_api = app.get("/v1/tenants/acme/events?metric_code=api_calls").await.ok(200);
    assert_eq!(amounts(only_api), vec![4, 2, 1]);
    let only_exports = app.get("/v1/tenants/acme/events?metric_code=exports").await.ok(200);
    assert_eq!(amounts(only_exports), vec![3]);
    let range =
        app.get("/v1/tenants/acme/events?from=2026-11-29T08:00:00Z&to=2026-11-29T09:00:00Z").await.ok(200);
    assert_eq!(amounts(range), vec![3, 2], "from inclusive, to exclusive");
    let both = app
        .get(
            "/v1/tenants/acme/events?metric_code=api_calls&from=2026-11-29T08:00:00Z&to=2026-11-29T09:00:01Z",
        )
        .await
        .ok(200);
    assert_eq!(amounts(both), vec![4, 2]);
    let unknown_metric = app.get("/v1/tenants/acme/events?metric_code=never_used").await.ok(200);
    assert_eq!(unknown_metric, json!({"events": [], "next_cursor": null}));
}

async fn events_pagination_sees_every_event_exactly_once(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", None, "none", "month")]), Some(ANCHOR)).await;
    // 30 events over 10 distinct timestamps, so pages split inside runs of equal timestamps.
    let items: Vec<Value> = (0..30)
        .map(|i| {
            json!({"metric_code": "api_calls", "amount": i + 1,
                        "timestamp": format!("2026-11-29T09:{:02}:00Z", (i * 7) % 10)})
        })
        .collect();
    app.post_batch("acme", json!(items)).await.ok(200);
    let everything = app.all_events("acme").await;
    assert_eq!(everything.len(), 30);
    let expected_order = distinct_ids(&everything, "id");

    for page_len in [1, 4, 7, 30] {
        let mut seen = Vec::new();
        let mut path = format!("/v1/tenants/acme/events?limit={page_len}");
        for _ in 0..40 {
            let page = app.get(&path).await.ok(200);
            let events = page["events"].as_array().expect("events");
            assert!(events.len() <= page_len, "{page}");
            seen.extend(events.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(events.len(), page_len, "a page before the last is full");
                    path = format!("/v1/tenants/acme/events?limit={page_len}&cursor={c}");
                }
                None => break,
            }
        }
        assert_eq!(distinct_ids(&seen, "id"), expected_order, "pages of {page_len}");
    }

    // A filter applies across pages too.
    let mut seen = Vec::new();
    let mut path =
        "/v1/tenants/acme/events?limit=2&from=2026-11-29T09:03:00Z&to=2026-11-29T09:07:00Z".to_owned();
    for _ in 0..40 {
        let page = app.get(&path).await.ok(200);
        seen.extend(page["events"].as_array().expect("events").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => {
                path = format!(
                    "/v1/tenants/acme/events?limit=2&from=2026-11-29T09:03:00Z&to=2026-11-29T09:07:00Z&cursor={c}"
                )
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 12, "minutes 03..=06, three events each");
    distinct_ids(&seen, "id");
}

async fn events_default_to_pages_of_100(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", None, "none", "month")]), None).await;
    let items: Vec<Value> = (0..150).map(|_| json!({"metric_code": "api_calls", "amount": 1})).collect();
    app.post_batch("acme", json!(items)).await.ok(200);
    let first = app.get("/v1/tenants/acme/events").await.ok(200);
    assert_eq!(first["events"].as_array().map(Vec::len), Some(100));
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let second = app.get(&format!("/v1/tenants/acme/events?cursor={cursor}")).await.ok(200);
    assert_eq!(second["events"].as_array().map(Vec::len), Some(50));
    assert_eq!(second["next_cursor"], Value::Null);
}

async fn events_refuse_bad_cursors_limits_and_parameters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", None, "none", "month")]), None).await;
    app.record("acme", "api_calls", 1).await;
    for query in [
        "cursor=garbage",
        "cursor=123_notauuid",
        "limit=0",
        "limit=1001",
        "limit=many",
        "from=yesterday",
        "to=2026-11-29T10:00:00",
        "metric_code=Not-A-Metric",
        "tenant_id=acme",
        "order=asc",
    ] {
        app.get(&format!("/v1/tenants/acme/events?{query}")).await.problem(400, "invalid_request");
    }
    app.get("/v1/tenants/acme/events?limit=1000").await.ok(200);
    app.get("/v1/tenants/ghost/events").await.problem(404, "not_found");
}

// ---------------------------------------------------------------------------------------
// reset

async fn reset_zeroes_the_current_period_and_is_audited_with_the_key(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "month")]), Some(ANCHOR)).await;
    app.record("acme", "api_calls", 7).await;
    let (key_id, secret) = app.stored_admin_key().await;

    let path = "/v1/tenants/acme/usage/api_calls/reset";
    let record = app.call(Method::POST, path, Auth::Key(&secret), None).await.ok(200);
    for member in ["id", "period_start", "period_end", "current_usage", "created_at", "updated_at"] {
        assert!(record.get(member).is_some(), "{member} in {record}");
    }
    assert_eq!(record["current_usage"], 0);
    assert_eq!(record["period_start"], "2026-11-15T00:00:00Z");
    assert_eq!(record["period_end"], "2026-12-15T00:00:00Z");

    assert_eq!(app.current_usage("acme", "api_calls").await, 0);
    assert_eq!(app.all_events("acme").await.len(), 1, "a reset is not a usage event");
    assert_eq!(
        app.record("acme", "api_calls", 10).await["current_usage"],
        10,
        "the full limit is free again"
    );

    let entries = app.audit_entries(Some("acme")).await;
    let reset = entries.iter().find(|e| e["action"] == "reset").expect("a reset entry");
    assert_eq!(reset["key_id"], key_id.to_string());
    assert_eq!(reset["tenant_id"], "acme");
    assert_eq!(entries[0]["action"], "reset", "newest first");
}

async fn reset_of_a_period_with_no_record_answers_a_zero_record(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "day")]), Some(ANCHOR)).await;
    let record = app.reset("acme", "api_calls").await.ok(200);
    assert_eq!(record["current_usage"], 0);
    assert_eq!(record["period_start"], "2026-11-29T00:00:00Z");
    assert_eq!(record["period_end"], "2026-11-30T00:00:00Z");
    let audit = app.audit_entries(Some("acme")).await;
    assert_eq!(audit[0]["action"], "reset");
    assert_eq!(audit[0]["key_id"], Value::Null, "the configured admin key is no stored key");

    app.reset("acme", "exports").await.problem(422, "quota_not_found");
    app.reset("ghost", "api_calls").await.problem(404, "not_found");
}

// ---------------------------------------------------------------------------------------
// audit

async fn audit_lists_every_change_newest_first_with_its_action(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    let mut minute = 0;
    let mut tick = || {
        minute += 1;
        app.set_now(&format!("2026-11-29T10:{minute:02}:00Z"));
    };
    app.put_plan("pro", json!([limit("api_calls", Some(10), "hard", "month")])).await;
    tick();
    app.put_tenant("acme").await;
    app.subscribe("acme", "pro", None).await;
    tick();
    app.put("/v1/tenants/acme/overrides/api_calls", &json!({"limit": 5, "enforcement": "hard"}))
        .await
        .ok(200);
    tick();
    app.delete("/v1/tenants/acme/overrides/api_calls").await.no_content();
    tick();
    app.reset("acme", "api_calls").await.ok(200);
    tick();
    let (key_id, _secret) = app.tenant_key("acme").await;
    tick();
    app.revoke_key(key_id).await;
    tick();
    app.delete("/v1/tenants/acme/subscription").await.no_content();
    tick();
    app.delete("/v1/plans/pro").await.no_content();

    let body = app.get("/v1/audit").await.ok(200);
    assert_eq!(keys(&body), sorted(&["entries", "next_cursor"]));
    assert_eq!(body["next_cursor"], Value::Null);
    let entries = body["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().expect("action")).collect();
    assert_eq!(
        actions,
        vec![
            "plan.delete",
            "subscription.delete",
            "key.revoke",
            "key.create",
            "reset",
            "override.delete",
            "override.put",
            "subscription.put",
            "plan.put"
        ]
    );
    for e in entries {
        assert_eq!(keys(e), sorted(&["id", "at", "key_id", "action", "tenant_id", "details"]), "{e}");
        assert_utc(&e["at"]);
        assert_eq!(e["key_id"], Value::Null, "done with the configured admin key: {e}");
        assert!(e["details"].is_object(), "{e}");
    }
    let ats: Vec<&str> = entries.iter().map(|e| e["at"].as_str().expect("at")).collect();
    assert!(ats.windows(2).all(|w| w[0] > w[1]), "newest first: {ats:?}");
    assert_eq!(entries[0]["at"], "2026-11-29T10:08:00Z");
    assert_eq!(entries[8]["at"], NOW);
    for e in &entries[1..8] {
        assert_eq!(e["tenant_id"], "acme", "{e}");
    }
    distinct_ids(entries, "id");
}

async fn audit_filters_by_tenant_and_paginates(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put_plan("pro", json!([limit("api_calls", Some(10), "hard", "month")])).await;
    for tenant in ["acme", "globex"] {
        app.put_tenant(tenant).await;
        app.subscribe(tenant, "pro", None).await;
        app.put(
            &format!("/v1/tenants/{tenant}/overrides/api_calls"),
            &json!({"limit": 5, "enforcement": "hard"}),
        )
        .await
        .ok(200);
        app.reset(tenant, "api_calls").await.ok(200);
    }
    let acme = app.audit_entries(Some("acme")).await;
    let actions: Vec<&str> = acme.iter().map(|e| e["action"].as_str().expect("action")).collect();
    assert_eq!(actions, vec!["reset", "override.put", "subscription.put"]);
    assert!(acme.iter().all(|e| e["tenant_id"] == "acme"));

    let all = app.audit_entries(None).await;
    assert_eq!(all.len(), 7);
    let mut seen = Vec::new();
    let mut path = "/v1/audit?limit=2".to_owned();
    for _ in 0..10 {
        let page = app.get(&path).await.ok(200);
        let entries = page["entries"].as_array().expect("entries");
        assert!(entries.len() <= 2);
        seen.extend(entries.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/audit?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(distinct_ids(&seen, "id"), distinct_ids(&all, "id"), "pages see every entry once, in order");

    for query in ["limit=0", "limit=1001", "cursor=nope", "action=reset", "tenant_id=-bad"] {
        app.get(&format!("/v1/audit?{query}")).await.problem(400, "invalid_request");
    }
    assert_eq!(
        app.get("/v1/audit?tenant_id=ghost").await.ok(200),
        json!({"entries": [], "next_cursor": null})
    );
}

store_tests!(
    check_answers_with_the_usage_before_the_amount_and_changes_nothing,
    check_on_soft_and_none_limits_is_always_allowed,
    check_refuses_what_recording_would_refuse,
    usage_lists_every_metric_of_the_plan_and_its_overrides,
    usage_needs_a_subscription_and_an_existing_tenant,
    history_lists_records_newest_first_and_selects_by_period_start,
    history_of_an_unused_metric_is_an_empty_list,
    history_refuses_bad_queries,
    events_are_listed_newest_first_by_timestamp_then_id,
    events_filter_by_metric_and_by_a_half_open_time_range,
    events_pagination_sees_every_event_exactly_once,
    events_default_to_pages_of_100,
    events_refuse_bad_cursors_limits_and_parameters,
    reset_zeroes_the_current_period_and_is_audited_with_the_key,
    reset_of_a_period_with_no_record_answers_a_zero_record,
    audit_lists_every_change_newest_first_with_its_action,
    audit_filters_by_tenant_and_paginates,
);
