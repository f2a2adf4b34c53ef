//! Errors the framework raises before any use case runs: bodies, media types, sizes, routes,
//! methods and path parameters. Every one is problem+json.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Auth, Backend, TestApp, limit};

const USAGE: &str = "/v1/tenants/acme/usage";

async fn app_with_tenant(backend: Backend) -> TestApp {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    app
}

#[track_caller]
fn assert_detail_names(problem: &serde_json::Value, word: &str) {
    assert!(
        problem["detail"].as_str().is_some_and(|d| d.contains(word)),
        "the detail should name {word:?}: {problem}"
    );
}

async fn malformed_json_is_invalid_request(backend: Backend) {
    let app = app_with_tenant(backend).await;
    for body in [
        r#"{"metric_code": "api_calls", "amount": }"#,
        r#"{"metric_code": "api_calls", "amount": 1"#,
        r#"{"metric_code": "api_calls", "amount": 1,}"#,
        r#"{"metric_code": "api_calls", "amount": 1} {}"#,
        "",
        "null",
        "[]",
        r#"{'metric_code': 'api_calls'}"#,
    ] {
        let r = app.post_text(USAGE, body).await;
        r.problem(400, "invalid_request");
    }
    app.call_raw(Method::PUT, "/v1/plans/pro", Auth::Admin, Some("application/json"), "{\"name\": \"Pro\"")
        .await
        .problem(400, "invalid_request");
    assert!(app.all_events("acme").await.is_empty());
}

async fn a_duplicate_member_is_refused_and_named(backend: Backend) {
    let app = app_with_tenant(backend).await;
    let top = app.post_text(USAGE, r#"{"metric_code": "api_calls", "amount": 1, "amount": 2}"#).await;
    assert_detail_names(&top.problem(400, "invalid_request"), "amount");

    let nested = app
        .post_text(
            USAGE,
            r#"{"metric_code": "api_calls", "amount": 1, "metadata": {"region": "eu", "region": "us"}}"#,
        )
        .await;
    assert_detail_names(&nested.problem(400, "invalid_request"), "region");

    let in_plan = app
        .call_raw(
            Method::PUT,
            "/v1/plans/pro",
            Auth::Admin,
            Some("application/json"),
            r#"{"name": "Pro", "name": "Pro 2", "limits": []}"#,
        )
        .await;
    assert_detail_names(&in_plan.problem(400, "invalid_request"), "name");
    app.get("/v1/plans/pro").await.problem(404, "not_found");
    assert!(app.all_events("acme").await.is_empty());
}

async fn an_unknown_member_is_refused_and_named(backend: Backend) {
    let app = app_with_tenant(backend).await;
    let typo = app.post(USAGE, &json!({"metric_code": "api_calls", "ammount": 1})).await;
    assert_detail_names(&typo.problem(400, "invalid_request"), "ammount");
    let extra = app.post(USAGE, &json!({"metric_code": "api_calls", "amount": 1, "tenant": "acme"})).await;
    assert_detail_names(&extra.problem(400, "invalid_request"), "tenant");
    assert!(app.all_events("acme").await.is_empty());

    let cases = [
        (Method::PUT, "/v1/plans/pro", json!({"name": "Pro", "limits": [], "tier": 1}), "tier"),
        (
            Method::PUT,
            "/v1/plans/pro",
            json!({"name": "Pro", "limits": [{"metric_code": "a", "limit": 1, "enforcement": "hard", "perod": "day"}]}),
            "perod",
        ),
        (Method::PUT, "/v1/tenants/acme", json!({"name": "Acme", "email": "x@example.com"}), "email"),
        (
            Method::PUT,
            "/v1/tenants/acme/subscription",
            json!({"plan_code": "acme_plan", "anchr": "x"}),
            "anchr",
        ),
        (
            Method::PUT,
            "/v1/tenants/acme/overrides/api_calls",
            json!({"limit": 1, "enforcement": "hard", "x": 1}),
            "x",
        ),
        (
            Method::POST,
            "/v1/tenants/acme/usage/check",
            json!({"metric_code": "api_calls", "amount": 1, "dry": true}),
            "dry",
        ),
    ];
    for (method, path, body, member) in cases {
        let r = app.call(method, path, Auth::Admin, Some(&body)).await;
        assert_detail_names(&r.problem(400, "invalid_request"), member);
    }
}

async fn wrong_types_and_values_outside_their_rules_are_invalid_request(backend: Backend) {
    let app = app_with_tenant(backend).await;
    for body in [
        json!({"metric_code": 5, "amount": 1}),
        json!({"metric_code": "Api-Calls", "amount": 1}),
        json!({"metric_code": "", "amount": 1}),
        json!({"metric_code": "a".repeat(65), "amount": 1}),
    ] {
        app.post(USAGE, &body).await.problem(400, "invalid_request");
    }
    for plan in [
        json!({"name": "Pro", "limits": [{"metric_code": "api_calls", "limit": 1, "enforcement": "strict"}]}),
        json!({"name": "Pro", "limits": [{"metric_code": "api_calls", "limit": 1, "enforcement": "hard", "period": "minute"}]}),
        json!({"name": "Pro", "limits": [{"metric_code": "api_calls", "limit": -1, "enforcement": "hard"}]}),
        json!({"name": "Pro", "limits": [{"metric_code": "API", "limit": 1, "enforcement": "hard"}]}),
        json!({"name": "", "limits": []}),
        json!({"limits": []}),
    ] {
        app.put("/v1/plans/pro", &plan).await.problem(400, "invalid_request");
    }
    app.put("/v1/tenants/acme/overrides/api_calls", &json!({"limit": 1, "enforcement": "always"}))
        .await
        .problem(400, "invalid_request");
}

async fn invalid_identifiers_in_the_path_are_invalid_request(backend: Backend) {
    let app = app_with_tenant(backend).await;
    let long_tenant = "t".repeat(65);
    app.put("/v1/plans/Pro", &json!({"name": "Pro", "limits": []})).await.problem(400, "invalid_request");
    app.put("/v1/plans/9lives", &json!({"name": "Pro", "limits": []})).await.problem(400, "invalid_request");
    app.put("/v1/tenants/-acme", &json!({"name": "x"})).await.problem(400, "invalid_request");
    app.put(&format!("/v1/tenants/{long_tenant}"), &json!({"name": "x"}))
        .await
        .problem(400, "invalid_request");
    app.put("/v1/tenants/acme/overrides/Api", &json!({"limit": 1, "enforcement": "hard"}))
        .await
        .problem(400, "invalid_request");
    app.get("/v1/tenants/acme/usage/API/history").await.problem(400, "invalid_request");
    app.put(&format!("/v1/tenants/{}", "t".repeat(64)), &json!({"name": "x"})).await.ok(201);
    app.put("/v1/tenants/A1_b.c-d", &json!({"name": "x"})).await.ok(201);
}

async fn a_body_that_is_not_json_is_unsupported_media_type(backend: Backend) {
    let app = app_with_tenant(backend).await;
    let body = r#"{"metric_code": "api_calls", "amount": 1}"#;
    for content_type in
        [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("application/jsonx"), None]
    {
        let r = app.call_raw(Method::POST, USAGE, Auth::Admin, content_type, body).await;
        r.problem(415, "unsupported_media_type");
        let r = app.call_raw(
            Method::POST,
            "/v1/tenants/acme/usage/batch",
            Auth::Admin,
            content_type,
            "{\"events\":[]}",
        );
        r.await.problem(415, "unsupported_media_type");
        let r = app.call_raw(
            Method::PUT,
            "/v1/plans/pro",
            Auth::Admin,
            content_type,
            r#"{"name":"Pro","limits":[]}"#,
        );
        r.await.problem(415, "unsupported_media_type");
    }
    assert!(app.all_events("acme").await.is_empty());
    app.call_raw(Method::POST, USAGE, Auth::Admin, Some("application/json; charset=utf-8"), body)
        .await
        .ok(200);
}

async fn a_body_over_4_mib_is_payload_too_large(backend: Backend) {
    let app = app_with_tenant(backend).await;
    // A well-formed request, padded inside metadata past the limit.
    let pad = "x".repeat(4 * 1024 * 1024);
    let usage = format!(r#"{{"metric_code": "api_calls", "amount": 1, "metadata": {{"pad": "{pad}"}}}}"#);
    app.call_raw(Method::POST, USAGE, Auth::Admin, Some("application/json"), usage)
        .await
        .problem(413, "payload_too_large");
    let batch = format!(
        r#"{{"events": [{{"metric_code": "api_calls", "amount": 1, "metadata": {{"pad": "{pad}"}}}}]}}"#
    );
    app.call_raw(Method::POST, "/v1/tenants/acme/usage/batch", Auth::Admin, Some("application/json"), batch)
        .await
        .problem(413, "payload_too_large");
    assert!(app.all_events("acme").await.is_empty());
}

async fn a_body_of_exactly_4_mib_is_read(backend: Backend) {
    let app = app_with_tenant(backend).await;
    let limit_bytes = 4 * 1024 * 1024;
    let request = r#"{"metric_code": "api_calls", "amount": 1}"#;
    // Trailing whitespace is valid JSON, so only the size differs.
    let exact = format!("{request}{}", " ".repeat(limit_bytes - request.len()));
    assert_eq!(exact.len(), limit_bytes);
    app.call_raw(Method::POST, USAGE, Auth::Admin, Some("application/json"), exact.clone()).await.ok(200);
    app.call_raw(Method::POST, USAGE, Auth::Admin, Some("application/json"), format!("{exact} "))
        .await
        .problem(413, "payload_too_large");
    assert_eq!(app.all_events("acme").await.len(), 1);
}

async fn an_unknown_route_is_not_found(backend: Backend) {
    let app = app_with_tenant(backend).await;
    for path in ["/v1/nope", "/nope", "/v1/tenants/acme/usage/api_calls", "/v2/plans", "/v1/plans/pro/limits"]
    {
        app.get(path).await.problem(404, "not_found");
    }
    app.call(Method::GET, "/v1/nope", Auth::Anonymous, None).await.problem(404, "not_found");
}

async fn a_known_path_with_another_method_is_method_not_allowed(backend: Backend) {
    let app = app_with_tenant(backend).await;
    let cases = [
        (Method::PATCH, "/v1/plans/pro"),
        (Method::POST, "/v1/plans/pro"),
        (Method::DELETE, "/v1/tenants/acme/usage"),
        (Method::PUT, "/v1/tenants/acme/usage"),
        (Method::GET, "/v1/tenants/acme/usage/batch"),
        (Method::GET, "/v1/tenants/acme/usage/api_calls/reset"),
        (Method::DELETE, "/v1/audit"),
        (Method::POST, "/healthz"),
    ];
    for (method, path) in cases {
        app.call(method, path, Auth::Admin, None).await.problem(405, "method_not_allowed");
    }
}

store_tests!(
    malformed_json_is_invalid_request,
    a_duplicate_member_is_refused_and_named,
    an_unknown_member_is_refused_and_named,
    wrong_types_and_values_outside_their_rules_are_invalid_request,
    invalid_identifiers_in_the_path_are_invalid_request,
    a_body_that_is_not_json_is_unsupported_media_type,
    a_body_over_4_mib_is_payload_too_large,
    a_body_of_exactly_4_mib_is_read,
    an_unknown_route_is_not_found,
    a_known_path_with_another_method_is_method_not_allowed,
);
