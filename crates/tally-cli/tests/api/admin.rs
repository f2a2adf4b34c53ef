//! Plans, tenants, subscriptions and overrides: the admin resources.

use serde_json::{Value, json};

use crate::helpers::{ANCHOR, Backend, NOW, TestApp, assert_utc, keys, limit, sorted};

fn pro_limits() -> Value {
    json!([
        {"metric_code": "api_calls", "limit": 100000, "enforcement": "hard", "period": "month"},
        {"metric_code": "storage_bytes", "limit": 10737418240_i64, "enforcement": "soft"},
        {"metric_code": "exports", "limit": null, "enforcement": "none", "period": "day"}
    ])
}

/// The limits of a plan answer, sorted by metric.
fn sorted_limits(plan: &Value) -> Vec<Value> {
    let mut out = plan["limits"].as_array().unwrap_or_else(|| panic!("limits in {plan}")).clone();
    out.sort_by(|a, b| a["metric_code"].as_str().cmp(&b["metric_code"].as_str()));
    out
}

async fn plan_put_creates_with_201_then_replaces_with_200_and_bumps_the_version(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;

    let created = app.put("/v1/plans/pro", &json!({"name": "Pro", "limits": pro_limits()})).await.ok(201);
    assert_eq!(
        keys(&created),
        sorted(&["plan_code", "name", "limits", "close_after", "version", "created_at", "updated_at"])
    );
    assert_eq!(created["close_after"], Value::Null);
    assert_eq!(created["plan_code"], "pro");
    assert_eq!(created["name"], "Pro");
    assert_eq!(created["version"], 1);
    assert_eq!(created["created_at"], NOW);
    assert_eq!(created["updated_at"], NOW);
    assert_eq!(
        sorted_limits(&created),
        vec![
            limit("api_calls", Some(100000), "hard", "month"),
            limit("exports", None, "none", "day"),
            limit("storage_bytes", Some(10737418240), "soft", "month"),
        ],
        "a limit without a period counts per month"
    );

    app.set_now("2026-11-29T11:00:00Z");
    let replaced = app
        .put(
            "/v1/plans/pro",
            &json!({"name": "Pro 2", "limits": [{"metric_code": "api_calls", "limit": 5, "enforcement": "soft"}]}),
        )
        .await
        .ok(200);
    assert_eq!(replaced["plan_code"], "pro");
    assert_eq!(replaced["name"], "Pro 2");
    assert_eq!(replaced["version"], 2);
    assert_eq!(replaced["created_at"], NOW);
    assert_eq!(replaced["updated_at"], "2026-11-29T11:00:00Z");
    assert_eq!(sorted_limits(&replaced), vec![limit("api_calls", Some(5), "soft", "month")]);

    app.set_now("2026-11-29T12:00:00Z");
    let third = app.put("/v1/plans/pro", &json!({"name": "Pro 3", "limits": []})).await.ok(200);
    assert_eq!(third["version"], 3);
    assert_eq!(third["limits"], json!([]));
}

async fn plan_put_that_changes_nothing_keeps_the_version_and_updated_at(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    let body = json!({"name": "Pro", "limits": pro_limits()});
    let created = app.put("/v1/plans/pro", &body).await.ok(201);

    app.set_now("2026-11-29T11:00:00Z");
    let again = app.put("/v1/plans/pro", &body).await.ok(200);
    assert_eq!(again["version"], 1, "{again}");
    assert_eq!(again["updated_at"], created["updated_at"], "{again}");
    assert_eq!(again["created_at"], created["created_at"]);

    // Spelling out the default period is the same plan.
    let explicit_default = json!({"name": "Pro", "limits": [
        {"metric_code": "api_calls", "limit": 100000, "enforcement": "hard", "period": "month"},
        {"metric_code": "storage_bytes", "limit": 10737418240_i64, "enforcement": "soft", "period": "month"},
        {"metric_code": "exports", "limit": null, "enforcement": "none", "period": "day"}
    ]});
    let same = app.put("/v1/plans/pro", &explicit_default).await.ok(200);
    assert_eq!(same["version"], 1, "{same}");
    assert_eq!(same["updated_at"], NOW, "{same}");

    let read = app.get("/v1/plans/pro").await.ok(200);
    assert_eq!(read["version"], 1);
    assert_eq!(read["updated_at"], NOW);
}

async fn plans_are_read_one_by_one_and_listed(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    let pro = app.put("/v1/plans/pro", &json!({"name": "Pro", "limits": pro_limits()})).await.ok(201);
    let free = app
        .put(
            "/v1/plans/free",
            &json!({"name": "Free", "limits": [{"metric_code": "api_calls", "limit": 10, "enforcement": "hard"}]}),
        )
        .await
        .ok(201);

    let read = app.get("/v1/plans/pro").await.ok(200);
    assert_eq!(read["plan_code"], pro["plan_code"]);
    assert_eq!(read["name"], pro["name"]);
    assert_eq!(read["version"], pro["version"]);
    assert_eq!(read["created_at"], pro["created_at"]);
    assert_eq!(read["updated_at"], pro["updated_at"]);
    assert_eq!(sorted_limits(&read), sorted_limits(&pro));

    let list = app.get("/v1/plans").await.ok(200);
    assert_eq!(keys(&list), sorted(&["plans"]));
    let mut codes: Vec<&str> = list["plans"]
        .as_array()
        .expect("plans")
        .iter()
        .map(|p| p["plan_code"].as_str().expect("code"))
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, vec!["free", "pro"]);
    let listed_free =
        list["plans"].as_array().expect("plans").iter().find(|p| p["plan_code"] == "free").cloned();
    assert_eq!(listed_free.map(|p| p["limits"].clone()), Some(free["limits"].clone()));

    app.get("/v1/plans/missing").await.problem(404, "not_found");
    app.get("/v1/plans?limit=5").await.problem(400, "invalid_request");
}

async fn deleting_a_plan_answers_204_and_then_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put_plan("pro", pro_limits()).await;

    app.delete("/v1/plans/pro").await.no_content();
    app.get("/v1/plans/pro").await.problem(404, "not_found");
    app.delete("/v1/plans/pro").await.problem(404, "not_found");
    app.delete("/v1/plans/never_was").await.problem(404, "not_found");
    let list = app.get("/v1/plans").await.ok(200);
    assert_eq!(list["plans"], json!([]));
}

async fn deleting_a_plan_with_a_subscriber_is_a_conflict(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put_plan("pro", pro_limits()).await;
    app.put_tenant("acme").await;
    app.subscribe("acme", "pro", None).await;

    app.delete("/v1/plans/pro").await.problem(409, "conflict");
    app.get("/v1/plans/pro").await.ok(200);

    app.delete("/v1/tenants/acme/subscription").await.no_content();
    app.delete("/v1/plans/pro").await.no_content();
}

async fn tenant_put_creates_with_201_then_renames_with_200(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;

    let created = app.put("/v1/tenants/acme", &json!({"name": "Acme Inc."})).await.ok(201);
    for member in ["tenant_id", "name", "subscription", "created_at", "overrides"] {
        assert!(created.get(member).is_some(), "{member} in {created}");
    }
    assert_eq!(created["tenant_id"], "acme");
    assert_eq!(created["name"], "Acme Inc.");
    assert_eq!(created["subscription"], Value::Null);
    assert_eq!(created["overrides"], json!([]));
    assert_eq!(created["created_at"], NOW);

    app.set_now("2026-11-29T11:00:00Z");
    let renamed = app.put("/v1/tenants/acme", &json!({"name": "Acme"})).await.ok(200);
    assert_eq!(renamed["name"], "Acme");
    assert_eq!(renamed["created_at"], NOW, "a rename keeps created_at");

    let same = app.put("/v1/tenants/acme", &json!({"name": "Acme"})).await.ok(200);
    assert_eq!(same["name"], "Acme");

    let read = app.get("/v1/tenants/acme").await.ok(200);
    assert_eq!(read["tenant_id"], "acme");
    assert_eq!(read["name"], "Acme");
    assert_eq!(read["created_at"], NOW);
    assert_eq!(read["subscription"], Value::Null);

    app.get("/v1/tenants/ghost").await.problem(404, "not_found");
}

async fn tenants_are_listed_by_pages_that_see_each_tenant_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut ids: Vec<String> = (0..7).map(|i| format!("tenant-{i}")).collect();
    for id in &ids {
        app.put_tenant(id).await;
    }
    ids.sort();

    let all = app.get("/v1/tenants").await.ok(200);
    assert_eq!(keys(&all), sorted(&["tenants", "next_cursor"]));
    assert_eq!(all["next_cursor"], Value::Null);
    assert_eq!(all["tenants"].as_array().expect("tenants").len(), 7);

    let mut seen = Vec::new();
    let mut path = "/v1/tenants?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page = app.get(&path).await.ok(200);
        let tenants = page["tenants"].as_array().expect("tenants");
        assert!(tenants.len() <= 3, "{page}");
        seen.extend(tenants.iter().map(|t| t["tenant_id"].as_str().expect("id").to_owned()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/tenants?limit=3&cursor={c}"),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    let mut sorted_seen = seen.clone();
    sorted_seen.sort();
    assert_eq!(sorted_seen, ids, "every tenant exactly once");
}

async fn tenants_list_defaults_to_pages_of_100(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for i in 0..101 {
        app.put_tenant(&format!("t{i:03}")).await;
    }
    let first = app.get("/v1/tenants").await.ok(200);
    assert_eq!(first["tenants"].as_array().expect("tenants").len(), 100);
    let cursor = first["next_cursor"].as_str().expect("a next page").to_owned();
    let second = app.get(&format!("/v1/tenants?cursor={cursor}")).await.ok(200);
    assert_eq!(second["tenants"].as_array().expect("tenants").len(), 1);
    assert_eq!(second["next_cursor"], Value::Null);
}

async fn tenants_list_refuses_a_limit_outside_1_to_1000_and_unknown_parameters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put_tenant("acme").await;
    for query in
        ["limit=0", "limit=1001", "limit=-1", "limit=ten", "page=2", "limit=10&sort=name", "cursor=%21%21"]
    {
        app.get(&format!("/v1/tenants?{query}")).await.problem(400, "invalid_request");
    }
    app.get("/v1/tenants?limit=1").await.ok(200);
    app.get("/v1/tenants?limit=1000").await.ok(200);
}

async fn subscription_put_answers_plan_anchor_and_started_at(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.put_plan("pro", pro_limits()).await;
    app.put_tenant("acme").await;

    let sub = app
        .put("/v1/tenants/acme/subscription", &json!({"plan_code": "pro", "anchor": ANCHOR}))
        .await
        .ok(200);
    assert_eq!(keys(&sub), sorted(&["plan_code", "anchor", "started_at"]));
    assert_eq!(sub["plan_code"], "pro");
    assert_eq!(sub["anchor"], ANCHOR);
    assert_eq!(sub["started_at"], NOW);

    let tenant = app.get("/v1/tenants/acme").await.ok(200);
    assert_eq!(tenant["subscription"], sub);

    // An anchor with an offset is the same instant, answered in UTC.
    let shifted = app
        .put(
            "/v1/tenants/acme/subscription",
            &json!({"plan_code": "pro", "anchor": "2026-11-15T02:00:00+02:00"}),
        )
        .await
        .ok(200);
    assert_eq!(shifted["anchor"], ANCHOR);
}

async fn subscription_without_anchor_starts_now_and_later_keeps_the_anchor(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.put_plan("pro", pro_limits()).await;
    app.put_plan("free", json!([limit("api_calls", Some(10), "hard", "month")])).await;
    app.put_tenant("acme").await;

    let first = app.subscribe("acme", "pro", None).await;
    assert_eq!(first["anchor"], NOW, "a new subscription without anchor is anchored now");
    assert_eq!(first["started_at"], NOW);

    // Same plan later, no anchor: nothing moves.
    app.set_now("2026-11-30T08:00:00Z");
    let same = app.subscribe("acme", "pro", None).await;
    assert_eq!(same["anchor"], NOW);
    assert_eq!(same["started_at"], NOW, "started_at changes only with the plan");

    // Another plan, no anchor: the anchor stays, started_at moves.
    let changed = app.subscribe("acme", "free", None).await;
    assert_eq!(changed["plan_code"], "free");
    assert_eq!(changed["anchor"], NOW, "the current anchor is kept");
    assert_eq!(changed["started_at"], "2026-11-30T08:00:00Z");

    // Same plan with a new anchor: the anchor moves, started_at does not.
    app.set_now("2026-12-01T09:00:00Z");
    let reanchored = app.subscribe("acme", "free", Some(ANCHOR)).await;
    assert_eq!(reanchored["anchor"], ANCHOR);
    assert_eq!(reanchored["started_at"], "2026-11-30T08:00:00Z");

    assert_eq!(app.get("/v1/tenants/acme").await.ok(200)["subscription"], reanchored);
}

async fn subscription_to_a_missing_plan_or_tenant_is_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put_plan("pro", pro_limits()).await;
    app.put_tenant("acme").await;
    app.put("/v1/tenants/acme/subscription", &json!({"plan_code": "missing"}))
        .await
        .problem(404, "not_found");
    app.put("/v1/tenants/ghost/subscription", &json!({"plan_code": "pro"})).await.problem(404, "not_found");
    app.put("/v1/tenants/acme/subscription", &json!({"plan_code": "pro", "anchor": "2026-11-15T00:00:00"}))
        .await
        .problem(400, "invalid_request");
    assert_eq!(app.get("/v1/tenants/acme").await.ok(200)["subscription"], Value::Null);
}

async fn deleting_a_subscription_stops_recording_and_a_second_delete_is_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "month")]), None).await;
    app.record("acme", "api_calls", 1).await;

    app.delete("/v1/tenants/acme/subscription").await.no_content();
    assert_eq!(app.get("/v1/tenants/acme").await.ok(200)["subscription"], Value::Null);
    app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1}))
        .await
        .problem(422, "no_subscription");
    app.check("acme", "api_calls", 1).await.problem(422, "no_subscription");
    app.get("/v1/tenants/acme/usage").await.problem(422, "no_subscription");
    app.delete("/v1/tenants/acme/subscription").await.problem(404, "not_found");
    app.delete("/v1/tenants/ghost/subscription").await.problem(404, "not_found");
    assert_eq!(app.all_events("acme").await.len(), 1);
}

async fn plan_changes_apply_to_subscribers_at_once_and_keep_the_counted_usage(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.put_plan("big", json!([limit("api_calls", Some(10), "hard", "month")])).await;
    app.put_plan("small", json!([limit("api_calls", Some(6), "hard", "month")])).await;
    app.put_tenant("acme").await;
    app.subscribe("acme", "big", None).await;
    app.record("acme", "api_calls", 5).await;

    // A plan change keeps the current period's usage; the new limit applies at once.
    app.subscribe("acme", "small", None).await;
    let refused = app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 2})).await;
    let body = refused.problem(429, "quota_exceeded");
    assert_eq!(body["current_usage"], 5);
    assert_eq!(body["limit"], 6);
    assert_eq!(app.record("acme", "api_calls", 1).await["current_usage"], 6);

    // Replacing the plan applies from the next request on.
    app.put_plan("small", json!([limit("api_calls", Some(8), "hard", "month")])).await;
    let ok = app.record("acme", "api_calls", 2).await;
    assert_eq!(ok["current_usage"], 8);
    assert_eq!(ok["limit"], 8);
    assert_eq!(ok["remaining"], 0);
}

async fn override_put_answers_the_limit_and_is_listed_on_the_tenant(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;

    let put = app
        .put(
            "/v1/tenants/acme/overrides/api_calls",
            &json!({"limit": 5, "enforcement": "hard", "period": "day"}),
        )
        .await
        .ok(200);
    assert_eq!(put, limit("api_calls", Some(5), "hard", "day"));

    let tenant = app.get("/v1/tenants/acme").await.ok(200);
    assert_eq!(tenant["overrides"], json!([limit("api_calls", Some(5), "hard", "day")]));

    // The override replaces the plan's entry for this tenant.
    let ok = app.record("acme", "api_calls", 5).await;
    assert_eq!(ok["limit"], 5);
    let refused = app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1})).await;
    assert_eq!(refused.problem(429, "quota_exceeded")["limit"], 5);

    // Without a period, an override counts per month; a null limit is unlimited.
    let unlimited = app
        .put("/v1/tenants/acme/overrides/api_calls", &json!({"limit": null, "enforcement": "none"}))
        .await
        .ok(200);
    assert_eq!(unlimited, limit("api_calls", None, "none", "month"));
    let ok = app.record("acme", "api_calls", 1000).await;
    assert_eq!(ok["limit"], Value::Null);
    assert_eq!(ok["remaining"], Value::Null);

    app.put("/v1/tenants/ghost/overrides/api_calls", &json!({"limit": 1, "enforcement": "hard"}))
        .await
        .problem(404, "not_found");
}

async fn an_override_adds_a_metric_that_is_not_on_the_plan(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    app.post_usage("acme", &json!({"metric_code": "exports", "amount": 1}))
        .await
        .problem(422, "quota_not_found");

    app.put(
        "/v1/tenants/acme/overrides/exports",
        &json!({"limit": 2, "enforcement": "soft", "period": "month"}),
    )
    .await
    .ok(200);
    let recorded = app.record("acme", "exports", 3).await;
    assert_eq!(recorded["limit"], 2);
    assert_eq!(recorded["enforcement"], "soft");
    assert_eq!(recorded["exceeded"], true);

    let usage = app.get("/v1/tenants/acme/usage").await.ok(200);
    let mut codes: Vec<&str> = usage["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .map(|m| m["metric_code"].as_str().expect("code"))
        .collect();
    codes.sort_unstable();
    assert_eq!(codes, vec!["api_calls", "exports"]);
}

async fn deleting_an_override_restores_the_plan_and_a_missing_one_is_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    app.put("/v1/tenants/acme/overrides/api_calls", &json!({"limit": 1, "enforcement": "hard"}))
        .await
        .ok(200);
    app.put("/v1/tenants/acme/overrides/exports", &json!({"limit": 1, "enforcement": "hard"})).await.ok(200);
    assert_eq!(
        app.get("/v1/tenants/acme").await.ok(200)["overrides"].as_array().expect("overrides").len(),
        2
    );

    app.delete("/v1/tenants/acme/overrides/api_calls").await.no_content();
    app.delete("/v1/tenants/acme/overrides/exports").await.no_content();
    assert_eq!(app.get("/v1/tenants/acme").await.ok(200)["overrides"], json!([]));
    assert_eq!(app.record("acme", "api_calls", 50).await["limit"], 100, "the plan's limit applies again");
    app.post_usage("acme", &json!({"metric_code": "exports", "amount": 1}))
        .await
        .problem(422, "quota_not_found");

    app.delete("/v1/tenants/acme/overrides/api_calls").await.problem(404, "not_found");
    app.delete("/v1/tenants/acme/overrides/never_set").await.problem(404, "not_found");
    app.delete("/v1/tenants/ghost/overrides/api_calls").await.problem(404, "not_found");
}

async fn tenant_answers_carry_timestamps_in_utc(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    let tenant = app.get("/v1/tenants/acme").await.ok(200);
    assert_utc(&tenant["created_at"]);
    assert_utc(&tenant["subscription"]["anchor"]);
    assert_utc(&tenant["subscription"]["started_at"]);
    let plan = app.get("/v1/plans/acme_plan").await.ok(200);
    assert_utc(&plan["created_at"]);
    assert_utc(&plan["updated_at"]);
}

async fn a_plan_with_two_limits_for_one_metric_is_invalid(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json!({"name": "Pro", "limits": [
        limit("api_calls", Some(1), "hard", "month"),
        limit("api_calls", Some(2), "soft", "day"),
    ]});
    app.put("/v1/plans/pro", &body).await.problem(400, "invalid_request");
    app.get("/v1/plans/pro").await.problem(404, "not_found");
}

store_tests!(
    a_plan_with_two_limits_for_one_metric_is_invalid,
    plan_put_creates_with_201_then_replaces_with_200_and_bumps_the_version,
    plan_put_that_changes_nothing_keeps_the_version_and_updated_at,
    plans_are_read_one_by_one_and_listed,
    deleting_a_plan_answers_204_and_then_404,
    deleting_a_plan_with_a_subscriber_is_a_conflict,
    tenant_put_creates_with_201_then_renames_with_200,
    tenants_are_listed_by_pages_that_see_each_tenant_once,
    tenants_list_defaults_to_pages_of_100,
    tenants_list_refuses_a_limit_outside_1_to_1000_and_unknown_parameters,
    subscription_put_answers_plan_anchor_and_started_at,
    subscription_without_anchor_starts_now_and_later_keeps_the_anchor,
    subscription_to_a_missing_plan_or_tenant_is_404,
    deleting_a_subscription_stops_recording_and_a_second_delete_is_404,
    plan_changes_apply_to_subscribers_at_once_and_keep_the_counted_usage,
    override_put_answers_the_limit_and_is_listed_on_the_tenant,
    an_override_adds_a_metric_that_is_not_on_the_plan,
    deleting_an_override_restores_the_plan_and_a_missing_one_is_404,
    tenant_answers_carry_timestamps_in_utc,
);
