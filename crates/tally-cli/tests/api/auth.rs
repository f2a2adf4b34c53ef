//! Who may do what: no key, unknown keys, tenant keys inside and outside their tenant, admin
//! keys (configured and stored), revoked keys.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Auth, Backend, TestApp, limit};

/// Every route of the main API with a valid body for it, on tenant `t` and metric `api_calls`.
fn tenant_routes(t: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (
            Method::POST,
            format!("/v1/tenants/{t}/usage"),
            Some(json!({"metric_code": "api_calls", "amount": 1})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{t}/usage/batch"),
            Some(json!({"events": [{"metric_code": "api_calls", "amount": 1}]})),
        ),
        (
            Method::POST,
            format!("/v1/tenants/{t}/usage/check"),
            Some(json!({"metric_code": "api_calls", "amount": 1})),
        ),
        (Method::GET, format!("/v1/tenants/{t}/usage"), None),
        (Method::GET, format!("/v1/tenants/{t}/usage/api_calls/history"), None),
        (Method::GET, format!("/v1/tenants/{t}/events"), None),
    ]
}

/// Every admin route, with a valid body, touching tenant `t`, in an order in which an admin
/// succeeds at each.
fn admin_routes(t: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, "/v1/plans".to_owned(), None),
        (Method::PUT, "/v1/plans/other".to_owned(), Some(json!({"name": "Other", "limits": []}))),
        (Method::GET, "/v1/plans/shared".to_owned(), None),
        (Method::DELETE, "/v1/plans/spare".to_owned(), None),
        (Method::GET, "/v1/tenants".to_owned(), None),
        (Method::PUT, format!("/v1/tenants/{t}"), Some(json!({"name": "Renamed"}))),
        (Method::GET, format!("/v1/tenants/{t}"), None),
        (Method::PUT, format!("/v1/tenants/{t}/subscription"), Some(json!({"plan_code": "shared"}))),
        (
            Method::PUT,
            format!("/v1/tenants/{t}/overrides/api_calls"),
            Some(json!({"limit": 1000, "enforcement": "hard"})),
        ),
        (Method::DELETE, format!("/v1/tenants/{t}/overrides/api_calls"), None),
        (Method::POST, format!("/v1/tenants/{t}/usage/api_calls/reset"), None),
        (Method::DELETE, format!("/v1/tenants/{t}/subscription"), None),
        (Method::GET, "/v1/audit".to_owned(), None),
        (Method::GET, format!("/v1/audit?tenant_id={t}"), None),
    ]
}

/// Two subscribed tenants on the plan `shared`, an unused plan `spare`, an override on acme.
async fn two_tenants(backend: Backend) -> TestApp {
    let app = TestApp::spawn(backend).await;
    app.put_plan("shared", json!([limit("api_calls", Some(1000), "hard", "month")])).await;
    app.put_plan("spare", json!([])).await;
    for t in ["acme", "globex"] {
        app.put_tenant(t).await;
        app.subscribe(t, "shared", None).await;
    }
    app.put("/v1/tenants/acme/overrides/api_calls", &json!({"limit": 1000, "enforcement": "hard"}))
        .await
        .ok(200);
    app
}

async fn requests_without_a_valid_key_are_unauthorized(backend: Backend) {
    let app = two_tenants(backend).await;
    let mut routes = tenant_routes("acme");
    routes.extend(admin_routes("acme"));
    let presented = [
        Auth::Anonymous,
        Auth::Key("not-a-key"),
        Auth::Key("tly_0000000000000000000000000000000000000000000000000000000000000000"),
        Auth::Header("test-admin-key"),
        Auth::Header("Basic dGVzdC1hZG1pbi1rZXk6"),
        Auth::Header("Bearer"),
        Auth::Header("Bearer "),
        Auth::Header("Token test-admin-key"),
    ];
    for auth in presented {
        for (method, path, body) in &routes {
            let r = app.call(method.clone(), path, auth, body.as_ref()).await;
            assert_eq!(r.status, 401, "{auth:?} on {}: {}", r.what, r.text);
            r.problem(401, "unauthorized");
        }
    }
    assert_eq!(app.all_events("acme").await.len(), 0);
    assert_eq!(app.get("/v1/plans/spare").await.status, 200, "nothing was deleted");
}

async fn a_tenant_key_may_record_check_and_read_its_own_tenant(backend: Backend) {
    let app = two_tenants(backend).await;
    let (_id, key) = app.tenant_key("acme").await;
    for (method, path, body) in tenant_routes("acme") {
        let r = app.call(method, &path, Auth::Key(&key), body.as_ref()).await;
        r.ok(200);
    }
    assert_eq!(app.all_events("acme").await.len(), 2, "the single record and the batch item");
}

async fn a_tenant_key_on_another_tenant_is_forbidden_whether_it_exists_or_not(backend: Backend) {
    let app = two_tenants(backend).await;
    let (_id, key) = app.tenant_key("acme").await;
    for other in ["globex", "ghost", "ACME", "acme2"] {
        for (method, path, body) in tenant_routes(other) {
            let r = app.call(method, &path, Auth::Key(&key), body.as_ref()).await;
            r.problem(403, "forbidden");
        }
    }
    assert!(app.all_events("globex").await.is_empty());
}

async fn a_tenant_key_on_any_admin_route_is_forbidden(backend: Backend) {
    let app = two_tenants(backend).await;
    let (_id, key) = app.tenant_key("acme").await;
    for tenant in ["acme", "globex"] {
        for (method, path, body) in admin_routes(tenant) {
            let r = app.call(method, &path, Auth::Key(&key), body.as_ref()).await;
            r.problem(403, "forbidden");
        }
    }
    // Nothing changed.
    assert_eq!(app.get("/v1/plans/spare").await.status, 200);
    app.get("/v1/plans/other").await.problem(404, "not_found");
    let acme = app.get("/v1/tenants/acme").await.ok(200);
    assert_eq!(acme["name"], "Tenant acme");
    assert_eq!(acme["subscription"]["plan_code"], "shared");
    assert_eq!(acme["overrides"].as_array().map(Vec::len), Some(1));
}

async fn the_admin_key_may_use_every_route(backend: Backend) {
    let app = two_tenants(backend).await;
    for (method, path, body) in tenant_routes("acme") {
        app.call(method, &path, Auth::Admin, body.as_ref()).await.ok(200);
    }
    for (method, path, body) in admin_routes("globex") {
        let r = app.call(method, &path, Auth::Admin, body.as_ref()).await;
        assert!((200..300).contains(&r.status), "{}: {} {}", r.what, r.status, r.text);
    }
}

async fn a_stored_admin_key_may_use_admin_routes(backend: Backend) {
    let app = two_tenants(backend).await;
    let (_id, key) = app.stored_admin_key().await;
    for (method, path, body) in admin_routes("globex") {
        let r = app.call(method, &path, Auth::Key(&key), body.as_ref()).await;
        assert!((200..300).contains(&r.status), "{}: {} {}", r.what, r.status, r.text);
    }
    for (method, path, body) in tenant_routes("acme") {
        app.call(method, &path, Auth::Key(&key), body.as_ref()).await.ok(200);
    }
}

async fn a_revoked_key_is_unauthorized(backend: Backend) {
    let app = two_tenants(backend).await;
    let (id, key) = app.tenant_key("acme").await;
    app.call(Method::GET, "/v1/tenants/acme/usage", Auth::Key(&key), None).await.ok(200);
    app.revoke_key(id).await;
    app.call(Method::GET, "/v1/tenants/acme/usage", Auth::Key(&key), None).await.problem(401, "unauthorized");
    app.call(
        Method::POST,
        "/v1/tenants/acme/usage",
        Auth::Key(&key),
        Some(&json!({"metric_code": "api_calls", "amount": 1})),
    )
    .await
    .problem(401, "unauthorized");

    let (admin_id, admin) = app.stored_admin_key().await;
    app.call(Method::GET, "/v1/plans", Auth::Key(&admin), None).await.ok(200);
    app.revoke_key(admin_id).await;
    app.call(Method::GET, "/v1/plans", Auth::Key(&admin), None).await.problem(401, "unauthorized");
}

async fn the_bearer_scheme_is_case_insensitive(backend: Backend) {
    let app = two_tenants(backend).await;
    app.call(Method::GET, "/v1/plans", Auth::Header("bearer test-admin-key"), None).await.ok(200);
    app.call(Method::GET, "/v1/plans", Auth::Header("BEARER test-admin-key"), None).await.ok(200);
}

store_tests!(
    requests_without_a_valid_key_are_unauthorized,
    a_tenant_key_may_record_check_and_read_its_own_tenant,
    a_tenant_key_on_another_tenant_is_forbidden_whether_it_exists_or_not,
    a_tenant_key_on_any_admin_route_is_forbidden,
    the_admin_key_may_use_every_route,
    a_stored_admin_key_may_use_admin_routes,
    a_revoked_key_is_unauthorized,
    the_bearer_scheme_is_case_insensitive,
);
