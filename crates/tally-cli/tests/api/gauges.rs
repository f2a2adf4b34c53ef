//! The metric catalog and gauges: `PUT/GET /v1/metrics`, limits with `period: none`,
//! negative amounts and `set`, never below zero, HARD refusing only rises above the limit.
#![allow(clippy::unwrap_used)] // a test: a missing member is a failure

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Auth, Backend, NOW, TestApp, keys, limit, sorted};

const METRIC_MEMBERS: [&str; 8] =
    ["metric_code", "name", "unit", "kind", "value_property", "declared", "created_at", "updated_at"];

async fn a_metric_is_declared_changed_read_and_listed(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    let body = json!({"name": "Seats", "unit": "seat", "kind": "gauge"});
    let created = app.put("/v1/metrics/seats", &body).await.ok(201);
    assert_eq!(keys(&created), sorted(&METRIC_MEMBERS));
    assert_eq!((&created["metric_code"], &created["name"]), (&json!("seats"), &json!("Seats")));
    assert_eq!((&created["unit"], &created["kind"]), (&json!("seat"), &json!("gauge")));
    app.set_now("2026-11-29T11:00:00Z");
    let same = app.put("/v1/metrics/seats", &body).await.ok(200);
    assert_eq!(same["updated_at"], created["updated_at"], "an equal put changes nothing");
    let renamed = app
        .put("/v1/metrics/seats", &json!({"name": "Seats in use", "unit": "seat", "kind": "gauge"}))
        .await
        .ok(200);
    assert_eq!((&renamed["name"], &renamed["created_at"]), (&json!("Seats in use"), &created["created_at"]));
    assert_ne!(renamed["updated_at"], created["updated_at"]);

    // Name defaults to the code, kind to counter, unit to none.
    let bare = app.put("/v1/metrics/api_calls", &json!({})).await.ok(201);
    assert_eq!(
        (&bare["name"], &bare["kind"], &bare["unit"]),
        (&json!("api_calls"), &json!("counter"), &Value::Null)
    );

    assert_eq!(app.get("/v1/metrics/seats").await.ok(200), renamed);
    let list = app.get("/v1/metrics").await.ok(200);
    let codes: Vec<&str> =
        list["metrics"].as_array().unwrap().iter().map(|m| m["metric_code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["api_calls", "seats"]);
    app.get("/v1/metrics/ghost").await.problem(404, "not_found");
    let audited = app.audit_entries(None).await;
    assert_eq!(audited.iter().filter(|e| e["action"] == "metric.put").count(), 3);
}

async fn bad_metric_declarations_are_refused_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for (body, what) in [
        (json!({"kind": "level"}), "unknown kind"),
        (json!({"kind": 1}), "kind not a string"),
        (json!({"unit": ""}), "empty unit"),
        (json!({"unit": "x".repeat(33)}), "unit over 32 bytes"),
        (json!({"name": ""}), "empty name"),
        (json!({"knd": "gauge"}), "unknown member"),
    ] {
        let r = app.put("/v1/metrics/seats", &body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        r.problem(400, "invalid_request");
    }
    app.put("/v1/metrics/Seats", &json!({})).await.problem(400, "invalid_request");
    assert_eq!(app.get("/v1/metrics").await.ok(200), json!({"metrics": []}));
    let (_, tenant_key) = {
        app.put_tenant("acme").await;
        app.tenant_key("acme").await
    };
    app.call(Method::PUT, "/v1/metrics/seats", Auth::Key(&tenant_key), Some(&json!({})))
        .await
        .problem(403, "forbidden");
    app.call(Method::GET, "/v1/metrics", Auth::Key(&tenant_key), None).await.problem(403, "forbidden");
    app.call(Method::GET, "/v1/metrics", Auth::Anonymous, None).await.problem(401, "unauthorized");
}

async fn limits_must_fit_the_declared_kind(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put("/v1/metrics/seats", &json!({"kind": "gauge"})).await.ok(201);
    app.put("/v1/metrics/api_calls", &json!({"kind": "counter"})).await.ok(201);
    let gauge_monthly = json!({"name": "p", "limits": [limit("seats", Some(5), "hard", "month")]});
    app.put("/v1/plans/p", &gauge_monthly).await.problem(400, "invalid_request");
    let counter_none = json!({"name": "p", "limits": [limit("api_calls", Some(5), "hard", "none")]});
    app.put("/v1/plans/p", &counter_none).await.problem(400, "invalid_request");
    app.get("/v1/plans/p").await.problem(404, "not_found");

    // An undeclared metric takes any period; a declared one only its own.
    app.put_plan(
        "p",
        json!([limit("seats", Some(5), "hard", "none"), limit("projects", Some(3), "hard", "none")]),
    )
    .await;
    app.put_tenant("acme").await;
    app.subscribe("acme", "p", None).await;
    let over = json!({"limit": 9, "enforcement": "hard", "period": "day"});
    app.put("/v1/tenants/acme/overrides/seats", &over).await.problem(400, "invalid_request");
    // A metric a plan limits without its being declared is in the catalog too: a counter,
    // or a gauge where its limit has no period.
    let projects = app.get("/v1/metrics/projects").await.ok(200);
    assert_eq!((&projects["declared"], &projects["kind"]), (&json!(false), &json!("gauge")));
    assert_eq!((&projects["name"], &projects["created_at"]), (&json!("projects"), &Value::Null));
    let listed = app.get("/v1/metrics").await.ok(200);
    let codes: Vec<(&str, bool)> = listed["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["metric_code"].as_str().unwrap(), m["declared"].as_bool().unwrap()))
        .collect();
    assert_eq!(codes, [("api_calls", true), ("projects", false), ("seats", true)]);
    app.get("/v1/metrics/exports").await.problem(404, "not_found");
    // The plan limits seats without a period: seats cannot become a counter now.
    app.put("/v1/metrics/seats", &json!({"kind": "counter"})).await.problem(409, "conflict");
    assert_eq!(app.get("/v1/metrics/seats").await.ok(200)["kind"], "gauge");
}

async fn a_gauge_goes_up_and_down_and_never_below_zero(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.put("/v1/metrics/seats", &json!({"name": "Seats", "unit": "seat", "kind": "gauge"})).await.ok(201);
    app.tenant_on_plan("acme", json!([limit("seats", Some(10), "hard", "none")]), None).await;

    let up = app.record("acme", "seats", 5).await;
    assert_eq!((&up["amount"], &up["current_usage"], &up["remaining"]), (&json!(5), &json!(5), &json!(5)));
    assert_eq!((&up["period_start"], &up["period_end"]), (&Value::Null, &Value::Null));
    let down = app.record("acme", "seats", -2).await;
    assert_eq!((&down["amount"], &down["current_usage"]), (&json!(-2), &json!(3)));
    let set = app.post_usage("acme", &json!({"metric_code": "seats", "set": 8})).await.ok(200);
    assert_eq!((&set["amount"], &set["current_usage"]), (&json!(5), &json!(8)));

    let below = app
        .post_usage("acme", &json!({"metric_code": "seats", "amount": -9}))
        .await
        .problem(422, "gauge_below_zero");
    assert_eq!((&below["current_usage"], &below["requested"]), (&json!(8), &json!(-9)));
    let r = app.post_usage("acme", &json!({"metric_code": "seats", "amount": 3})).await;
    assert_eq!(r.header("retry-after"), None, "a gauge has no period end to wait for");
    let over = r.problem(429, "quota_exceeded");
    assert_eq!(
        (&over["current_usage"], &over["limit"], &over["requested"]),
        (&json!(8), &json!(10), &json!(3))
    );
    assert_eq!(over["period_end"], Value::Null);

    // check: rises within the limit and decreases are allowed, a rise past it or below 0 not.
    let check = |body: Value| {
        let app = &app;
        async move { app.post("/v1/tenants/acme/usage/check", &body).await.ok(200) }
    };
    assert_eq!(check(json!({"metric_code": "seats", "amount": 2})).await["allowed"], true);
    assert_eq!(check(json!({"metric_code": "seats", "amount": 3})).await["allowed"], false);
    assert_eq!(check(json!({"metric_code": "seats", "amount": -8})).await["allowed"], true);
    assert_eq!(check(json!({"metric_code": "seats", "amount": -9})).await["allowed"], false);
    let c = check(json!({"metric_code": "seats", "set": 10})).await;
    assert_eq!(
        (&c["allowed"], &c["current_usage"], &c["period_end"]),
        (&json!(true), &json!(8), &Value::Null)
    );

    let usage = app.get("/v1/tenants/acme/usage").await.ok(200);
    let seats = &usage["metrics"][0];
    assert_eq!(
        (&seats["period"], &seats["current_usage"], &seats["period_start"]),
        (&json!("none"), &json!(8), &Value::Null)
    );
    assert_eq!(
        app.get("/v1/tenants/acme/usage/seats/history").await.ok(200)["records"][0]["period_end"],
        Value::Null
    );

    // A decrease is allowed even above a limit lowered meanwhile; a rise is not.
    app.put(
        "/v1/tenants/acme/overrides/seats",
        &json!({"limit": 4, "enforcement": "hard", "period": "none"}),
    )
    .await
    .ok(200);
    assert_eq!(app.record("acme", "seats", -1).await["current_usage"], 7);
    app.post_usage("acme", &json!({"metric_code": "seats", "set": 8})).await.problem(429, "quota_exceeded");
    assert_eq!(
        app.post_usage("acme", &json!({"metric_code": "seats", "set": 4})).await.ok(200)["remaining"],
        0
    );

    // The events are the changes; they sum to the level.
    let amounts: Vec<i64> =
        app.all_events("acme").await.iter().map(|e| e["amount"].as_i64().unwrap()).collect();
    assert_eq!(amounts.iter().sum::<i64>(), 4);
    assert_eq!(amounts.len(), 5);
}

async fn gauge_only_inputs_are_refused_elsewhere_and_in_bad_shapes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("seats", None, "none", "none"), limit("api_calls", Some(10), "hard", "month")]),
        None,
    )
    .await;
    for (body, what) in [
        (json!({"metric_code": "seats", "amount": 1, "set": 1}), "amount and set"),
        (json!({"metric_code": "seats", "set": -1}), "negative set"),
        (json!({"metric_code": "seats", "amount": 0}), "zero amount"),
        (json!({"metric_code": "seats", "amount": -1_000_000_000_001i64}), "amount below -10^12"),
        (json!({"metric_code": "seats"}), "neither amount nor set"),
        (json!({"metric_code": "api_calls", "amount": -1}), "negative amount on a counter"),
        (json!({"metric_code": "api_calls", "set": 1}), "set on a counter"),
    ] {
        let r = app.post_usage("acme", &body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        r.problem(400, "invalid_request");
    }
    assert!(app.all_events("acme").await.is_empty());
    // A batch takes gauge items like single requests, each on its own.
    let batch = app
        .post_batch(
            "acme",
            json!([
                {"metric_code": "seats", "set": 3},
                {"metric_code": "seats", "amount": -5},
                {"metric_code": "seats", "amount": -3},
                {"metric_code": "api_calls", "amount": -1},
            ]),
        )
        .await
        .ok(200);
    assert_eq!(batch["results"][0]["current_usage"], 3);
    assert_eq!(batch["results"][1]["error"]["code"], "gauge_below_zero");
    assert_eq!(batch["results"][2]["current_usage"], 0);
    assert_eq!(batch["results"][3]["error"]["code"], "invalid_request");
}

store_tests!(
    a_metric_is_declared_changed_read_and_listed,
    bad_metric_declarations_are_refused_and_change_nothing,
    limits_must_fit_the_declared_kind,
    a_gauge_goes_up_and_down_and_never_below_zero,
    gauge_only_inputs_are_refused_elsewhere_and_in_bad_shapes,
);
