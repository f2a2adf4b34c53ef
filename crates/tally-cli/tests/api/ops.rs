//! Operations routes: health, readiness, metrics, the OpenAPI document, the docs page, and
//! request ids on every answer.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;
use tally_store_sqlite::SqliteStore;

use crate::helpers::{Auth, Backend, TestApp, limit};

const HTTP_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// (path, lowercase method) of every route the server builds from.
fn route_table() -> BTreeSet<(String, String)> {
    tally_http::route_table::<SqliteStore>()
        .into_iter()
        .map(|(path, method, _)| (path.to_owned(), method.as_str().to_lowercase()))
        .collect()
}

async fn health_and_readiness_answer_200_without_a_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for path in ["/healthz", "/readyz"] {
        let r = app.call(Method::GET, path, Auth::Anonymous, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
}

async fn metrics_are_prometheus_text_with_request_counts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan(
        "acme",
        json!([limit("api_calls", Some(1), "hard", "month"), limit("exports", Some(1), "soft", "month")]),
        None,
    )
    .await;
    app.record("acme", "api_calls", 1).await;
    app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1}))
        .await
        .problem(429, "quota_exceeded");
    app.record("acme", "exports", 2).await;
    app.post_batch("acme", json!([{"metric_code": "exports", "amount": 1}])).await.ok(200);
    let r = app.call(Method::GET, "/metrics", Auth::Anonymous, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type().starts_with("text/plain"), "{}", r.content_type());
    assert!(r.text.contains("tally_http_requests_total"), "{}", r.text);
    assert!(r.text.contains("# TYPE tally_http_requests_total counter"), "{}", r.text);
    assert!(r.text.contains("tally_http_request_duration_seconds"), "latency histogram: {}", r.text);
    let by_route_and_status = r.text.lines().any(|l| {
        l.starts_with("tally_http_requests_total{")
            && l.contains(r#"route="/v1/tenants/{tenant_id}/usage""#)
            && l.contains(r#"status="429""#)
    });
    assert!(by_route_and_status, "request counts by route and status: {}", r.text);
    for name in [
        "tally_usage_events_total",
        "tally_soft_limit_exceeded_total",
        "tally_batch_size",
        "tally_store_duration_seconds",
    ] {
        assert!(r.text.contains(name), "{name} in {}", r.text);
    }
}

async fn the_openapi_document_is_3_1_and_lists_exactly_the_route_table(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app.call(Method::GET, "/openapi.json", Auth::Anonymous, None).await;
    let doc = r.ok(200);
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1."), "{version}");

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if HTTP_METHODS.contains(&method.as_str()) {
                documented.insert((path.clone(), method.clone()));
            }
        }
    }
    let routes = route_table();
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes not documented: {undocumented:?}; documented but not routed: {unrouted:?}"
    );
    // What schemathesis found: a 204 has no body, and creating answers 201.
    for (path, method) in [
        ("/v1/plans/{plan_code}", "delete"),
        ("/v1/tenants/{tenant_id}/subscription", "delete"),
        ("/v1/tenants/{tenant_id}/overrides/{metric_code}", "delete"),
    ] {
        let ok = &doc["paths"][path][method]["responses"]["204"];
        assert!(ok.is_object() && ok.get("content").is_none(), "{method} {path}: 204 without a body: {ok}");
    }
    for path in ["/v1/plans/{plan_code}", "/v1/tenants/{tenant_id}"] {
        let responses = &doc["paths"][path]["put"]["responses"];
        assert!(responses["200"].is_object() && responses["201"].is_object(), "PUT {path}: {responses}");
    }
}

async fn the_docs_page_is_html_and_mentions_every_path(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app.call(Method::GET, "/docs", Auth::Anonymous, None).await;
    assert_eq!(r.status, 200);
    assert!(r.content_type().starts_with("text/html"), "{}", r.content_type());
    for (path, _method) in route_table() {
        assert!(r.text.contains(&path), "/docs does not mention {path}");
    }
    assert!(!r.text.contains("<script src=\"http"), "the page needs no internet access");
}

async fn every_answer_carries_a_request_id_and_echoes_the_callers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let answers = [
        app.call(Method::GET, "/healthz", Auth::Anonymous, None).await,
        app.call(Method::GET, "/v1/plans", Auth::Admin, None).await,
        app.call(Method::GET, "/v1/plans", Auth::Anonymous, None).await,
        app.call(Method::GET, "/v1/nope", Auth::Admin, None).await,
        app.call(Method::PATCH, "/v1/plans", Auth::Admin, None).await,
        app.post_text("/v1/tenants/acme/usage", "{").await,
    ];
    let mut ids = BTreeSet::new();
    for r in &answers {
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{} ({}) has no x-request-id", r.what, r.status));
        assert!(!id.is_empty());
        ids.insert(id.to_owned());
    }
    assert_eq!(ids.len(), answers.len(), "each request gets its own id");

    for (method, path) in [(Method::GET, "/healthz"), (Method::GET, "/v1/nope"), (Method::GET, "/v1/plans")] {
        let r =
            app.call_with_headers(method, path, Auth::Admin, &[("x-request-id", "caller-chosen-42")]).await;
        assert_eq!(r.header("x-request-id"), Some("caller-chosen-42"), "{}", r.what);
    }
}

async fn an_unreachable_store_answers_503_unavailable(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(10), "hard", "month")]), None).await;
    app.close_store().await;

    let r = app.call(Method::GET, "/readyz", Auth::Anonymous, None).await;
    r.problem(503, "unavailable");
    app.post_usage("acme", &json!({"metric_code": "api_calls", "amount": 1}))
        .await
        .problem(503, "unavailable");
    app.get("/v1/plans").await.problem(503, "unavailable");
    let alive = app.call(Method::GET, "/healthz", Auth::Anonymous, None).await;
    assert_eq!(alive.status, 200, "the process still runs");
}

store_tests!(
    an_unreachable_store_answers_503_unavailable,
    health_and_readiness_answer_200_without_a_key,
    metrics_are_prometheus_text_with_request_counts,
    the_openapi_document_is_3_1_and_lists_exactly_the_route_table,
    the_docs_page_is_html_and_mentions_every_path,
    every_answer_carries_a_request_id_and_echoes_the_callers,
);
