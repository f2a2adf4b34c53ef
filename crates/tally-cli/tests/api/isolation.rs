//! Tenant isolation: a tenant key never reads or writes another tenant's data on any route
//! that names a tenant, never uses an admin route, and sees only its own rows even when
//! tenant ids share a prefix; revoked keys open nothing; keys, session tokens and the admin
//! password exist at rest only as hashes; hostile but valid tenant ids round-trip.
//!
//! Already covered elsewhere, and not repeated here: a UI session is worthless after logout
//! (`admin_ui.rs`, `logging_out_ends_the_session_on_the_server`); a tenant key cannot sign in
//! to the UI (`admin_ui.rs`, `the_configured_and_stored_admin_keys_sign_in_and_a_tenant_key_does_not`);
//! schema tenancy names schemas from internal ids and serves `a.b-c_d` at the store level
//! (tally-store-postgres `tests/migrations`, `hostile_tenant_ids_are_refused_and_odd_ones_work_end_to_end`).

use reqwest::Method;
use serde_json::{Value, json};
use tally_domain::TenantId;
use tally_domain::limits::REQUEST_BODY_BYTES_MAX;
use tally_service::keys::hash_key;
use tally_store::{KeyStore, TenantStore};

use crate::helpers::{ADMIN_KEY, Auth, Backend, Reply, TestApp, limit};

/// A well-formed reservation id that names no reservation.
const SOME_RESERVATION: &str = "0193a000-0000-7000-8000-000000000000";

/// Every route of the route table that names a tenant, with a valid body, on tenant `t`.
fn tenant_routes(t: &str) -> Vec<(Method, String, Option<Value>)> {
    let usage = json!({"metric_code": "api_calls", "amount": 1});
    vec![
        (Method::POST, format!("/v1/tenants/{t}/usage"), Some(usage.clone())),
        (Method::GET, format!("/v1/tenants/{t}/usage"), None),
        (Method::POST, format!("/v1/tenants/{t}/usage/batch"), Some(json!({"events": [usage.clone()]}))),
        (Method::POST, format!("/v1/tenants/{t}/usage/check"), Some(usage)),
        (Method::GET, format!("/v1/tenants/{t}/usage/api_calls/history"), None),
        (Method::POST, format!("/v1/tenants/{t}/usage/api_calls/reset"), None),
        (Method::GET, format!("/v1/tenants/{t}/events"), None),
        (
            Method::POST,
            format!("/v1/tenants/{t}/reservations"),
            Some(json!({"metric_code": "api_calls", "amount": 1})),
        ),
        (Method::GET, format!("/v1/tenants/{t}/reservations"), None),
        (Method::POST, format!("/v1/tenants/{t}/reservations/{SOME_RESERVATION}/commit"), Some(json!({}))),
        (Method::DELETE, format!("/v1/tenants/{t}/reservations/{SOME_RESERVATION}"), None),
        (Method::PUT, format!("/v1/tenants/{t}"), Some(json!({"name": "Taken over"}))),
        (Method::GET, format!("/v1/tenants/{t}"), None),
        (Method::PUT, format!("/v1/tenants/{t}/subscription"), Some(json!({"plan_code": "spare"}))),
        (
            Method::PUT,
            format!("/v1/tenants/{t}/overrides/api_calls"),
            Some(json!({"limit": 1, "enforcement": "hard"})),
        ),
        (Method::DELETE, format!("/v1/tenants/{t}/overrides/api_calls"), None),
        (Method::DELETE, format!("/v1/tenants/{t}/subscription"), None),
    ]
}

/// The routes of the route table that name no tenant, each admin-only.
fn tenantless_admin_routes() -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, "/v1/plans".to_owned(), None),
        (Method::GET, "/v1/plans/shared".to_owned(), None),
        (Method::PUT, "/v1/plans/shared".to_owned(), Some(json!({"name": "Free for all", "limits": []}))),
        (Method::DELETE, "/v1/plans/spare".to_owned(), None),
        (Method::GET, "/v1/tenants".to_owned(), None),
        (Method::GET, "/v1/tenants?limit=1000".to_owned(), None),
        (Method::GET, "/v1/audit".to_owned(), None),
        (Method::GET, "/v1/metrics".to_owned(), None),
        (Method::GET, "/v1/metrics/api_calls".to_owned(), None),
        (Method::PUT, "/v1/metrics/api_calls".to_owned(), Some(json!({"kind": "counter"}))),
        (Method::GET, "/v1/webhooks".to_owned(), None),
        (Method::GET, "/v1/webhooks/ops".to_owned(), None),
        (Method::PUT, "/v1/webhooks/ops".to_owned(), Some(json!({"url": "http://127.0.0.1:9/hook"}))),
        (Method::DELETE, "/v1/webhooks/ops".to_owned(), None),
        (Method::GET, "/v1/webhooks/ops/deliveries".to_owned(), None),
        (
            Method::POST,
            "/v1/webhooks/ops/deliveries/0190f0c8-0000-7000-8000-000000000000/redeliver".to_owned(),
            None,
        ),
        (Method::GET, "/v1/keys".to_owned(), None),
        (Method::POST, "/v1/keys".to_owned(), Some(json!({"scope": "admin"}))),
        (Method::DELETE, "/v1/keys/0190f0c8-0000-7000-8000-000000000000".to_owned(), None),
    ]
}

/// Tenants whose ids overlap as prefixes, as LIKE patterns (`_`, `.`), by case and by length.
const NEIGHBOURS: [&str; 6] = ["acme2", "acme_1", "acme.x", "acme-", "ACME", "acm"];

/// Plan `shared` (api_calls HARD 1000), an unused plan `spare`, and `acme` plus every
/// neighbour subscribed to `shared`, each with an override and `n + 1` events tagged with
/// its own id, under one idempotency key shared by all.
async fn neighbourhood(backend: Backend) -> TestApp {
    let app = TestApp::spawn(backend).await;
    app.put_plan("shared", json!([limit("api_calls", Some(1000), "hard", "month")])).await;
    app.put_plan("spare", json!([])).await;
    for (n, t) in std::iter::once("acme").chain(NEIGHBOURS).enumerate() {
        app.put_tenant(t).await;
        app.subscribe(t, "shared", None).await;
        app.put(
            &format!("/v1/tenants/{t}/overrides/api_calls"),
            &json!({"limit": 500, "enforcement": "hard"}),
        )
        .await
        .ok(200);
        let owner = json!({"owner": t});
        let mut first = json!({"metric_code": "api_calls", "amount": 1, "metadata": owner});
        first["idempotency_key"] = json!("same-key");
        let r = app.post_usage(t, &first).await.ok(200);
        assert_eq!(r["replayed"], false, "{t}: another tenant's idempotency key is not this tenant's");
        for i in 0..n {
            let body = json!({"metric_code": "api_calls", "amount": 10 + i, "metadata": {"owner": t}});
            app.post_usage(t, &body).await.ok(200);
        }
    }
    app
}

/// Everything about tenant `t` that a request could change.
async fn snapshot(app: &TestApp, t: &str) -> Value {
    json!({
        "tenant": app.get(&format!("/v1/tenants/{t}")).await.ok(200),
        "usage": app.get(&format!("/v1/tenants/{t}/usage")).await.ok(200),
        "history": app.get(&format!("/v1/tenants/{t}/usage/api_calls/history")).await.ok(200),
        "events": app.all_events(t).await,
        "reservations": app.get(&format!("/v1/tenants/{t}/reservations")).await.ok(200),
        "audit": app.audit_entries(Some(t)).await,
    })
}

/// Everything a tenantless admin route could change.
async fn global_snapshot(app: &TestApp) -> Value {
    json!({
        "plans": app.get("/v1/plans").await.ok(200),
        "tenants": app.get("/v1/tenants?limit=1000").await.ok(200),
        "metrics": app.get("/v1/metrics").await.ok(200),
        "webhooks": app.get("/v1/webhooks").await.ok(200),
        "audit": app.audit_entries(None).await,
    })
}

/// Sends every request and collects those not answered with problem `status`/`code`.
async fn expect_all(
    app: &TestApp,
    auth: Auth<'_>,
    routes: &[(Method, String, Option<Value>)],
    status: u16,
    code: &str,
    failures: &mut Vec<String>,
) {
    for (method, path, body) in routes {
        let r = app.call(method.clone(), path, auth, body.as_ref()).await;
        if let Err(why) = is_problem(&r, status, code) {
            failures.push(format!("{auth:?} {}: {why}", r.what));
        }
    }
}

fn is_problem(r: &Reply, status: u16, code: &str) -> Result<(), String> {
    let body: Value = serde_json::from_str(&r.text).unwrap_or(Value::Null);
    if r.status != status || r.content_type() != crate::helpers::PROBLEM_JSON || body["code"] != code {
        return Err(format!("{} {:.300} (want {status} {code})", r.status, r.text));
    }
    Ok(())
}

async fn a_tenant_key_cannot_touch_any_other_tenant_on_any_route(backend: Backend) {
    let app = neighbourhood(backend).await;
    let (_id, key) = app.tenant_key("acme").await;
    let mut before = Vec::new();
    for t in NEIGHBOURS {
        before.push(snapshot(&app, t).await);
    }
    let global = global_snapshot(&app).await;

    // The neighbours, a tenant that does not exist, and a neighbour spelled with escapes
    // (`acme%32` is `acme2`, `%41CME` is `ACME`): the key's tenant is compared after decoding.
    let mut others: Vec<String> = NEIGHBOURS.iter().map(|t| (*t).to_owned()).collect();
    others.extend(["ghost", "acme%32", "%41CME", "acme%5F1"].map(str::to_owned));
    let mut failures = Vec::new();
    for other in &others {
        expect_all(&app, Auth::Key(&key), &tenant_routes(other), 403, "forbidden", &mut failures).await;
    }
    assert!(
        failures.is_empty(),
        "{backend:?}: a tenant key reached another tenant:\n{}",
        failures.join("\n")
    );

    for (t, was) in NEIGHBOURS.iter().zip(&before) {
        assert_eq!(&snapshot(&app, t).await, was, "{backend:?}: {t} changed");
    }
    assert_eq!(global_snapshot(&app).await, global, "{backend:?}: plans, tenants or the audit log changed");
    app.get("/v1/tenants/ghost").await.problem(404, "not_found");

    // The same key spelled with escapes is still its own tenant.
    app.call(Method::GET, "/v1/tenants/%61cme/usage", Auth::Key(&key), None).await.ok(200);
}

async fn a_tenant_key_is_forbidden_on_every_admin_route_of_its_own_tenant(backend: Backend) {
    let app = neighbourhood(backend).await;
    let (_id, key) = app.tenant_key("acme").await;
    let own = snapshot(&app, "acme").await;
    let global = global_snapshot(&app).await;

    // The usage, check, history and events routes of its own tenant are its to use; every
    // other route that names its tenant is admin-only, as is every route that names none.
    let mut admin_only: Vec<(Method, String, Option<Value>)> = tenant_routes("acme")
        .into_iter()
        .filter(|(_, path, _)| {
            path.ends_with("/reset")
                || (!path.contains("/usage") && !path.ends_with("/events") && !path.contains("/reservations"))
        })
        .collect();
    assert_eq!(admin_only.len(), 7, "reset, tenant get/put, subscription put/delete, override put/delete");
    admin_only.extend(tenantless_admin_routes());
    admin_only.extend([
        (Method::GET, "/v1/audit?tenant_id=acme".to_owned(), None),
        (Method::GET, "/v1/audit?tenant_id=acme&limit=1".to_owned(), None),
        (Method::GET, "/v1/plans/spare".to_owned(), None),
    ]);
    let mut failures = Vec::new();
    expect_all(&app, Auth::Key(&key), &admin_only, 403, "forbidden", &mut failures).await;
    assert!(failures.is_empty(), "{backend:?}: a tenant key used an admin route:\n{}", failures.join("\n"));
    assert_eq!(snapshot(&app, "acme").await, own, "{backend:?}: acme changed");
    assert_eq!(global_snapshot(&app).await, global, "{backend:?}: plans, tenants or the audit log changed");

    // Keys are managed under /v1/keys (admin only, in the lists above) and by `tally keys`:
    // no route under a tenant or the admin UI touches them.
    for path in ["/v1/tenants/acme/keys", "/admin/keys"] {
        for auth in [Auth::Key(&key), Auth::Admin] {
            let r = app.call(Method::GET, path, auth, None).await;
            assert_eq!(r.status, 404, "{backend:?}: {auth:?} {}: {}", r.what, r.text);
        }
    }
}

/// API.md: a tenant key gets 403 on every route but its own tenant's usage routes, "and on
/// any other tenant". Who may act is settled before what was sent is looked at, so a
/// refused caller learns nothing from the validation and costs no body parsing.
async fn a_tenant_key_is_refused_before_its_request_is_validated(backend: Backend) {
    let app = neighbourhood(backend).await;
    let (_id, key) = app.tenant_key("acme").await;
    let before = snapshot(&app, "acme2").await;
    let mut oversized = br#"{"metric_code": "api_calls", "amount": 1}"#.to_vec();
    oversized.resize(REQUEST_BODY_BYTES_MAX + 1, b' ');
    let json = Some("application/json");
    let cases: Vec<(&str, &str, Option<&str>, Vec<u8>)> = vec![
        ("POST", "/v1/tenants/acme2/usage", json, b"{".to_vec()),
        ("POST", "/v1/tenants/acme2/usage", json, br#"{"metric_code": "api_calls", "amount": 0}"#.to_vec()),
        ("POST", "/v1/tenants/acme2/usage", Some("text/plain"), b"x".to_vec()),
        ("POST", "/v1/tenants/acme2/usage", json, oversized.clone()),
        ("POST", "/v1/tenants/acme2/usage/check", json, br#"{"amount": 1}"#.to_vec()),
        ("POST", "/v1/tenants/acme2/usage/batch", json, b"{".to_vec()),
        ("POST", "/v1/tenants/acme2/usage/batch", json, oversized),
        ("GET", "/v1/tenants/acme2/events?bogus=1", None, Vec::new()),
        ("GET", "/v1/tenants/acme2/events?limit=0", None, Vec::new()),
        ("GET", "/v1/tenants/acme2/usage?x=1", None, Vec::new()),
        ("GET", "/v1/tenants/acme2/usage/api_calls/history?limit=0", None, Vec::new()),
        ("PUT", "/v1/plans/x", json, b"{".to_vec()),
        ("PUT", "/v1/tenants/acme", json, b"[]".to_vec()),
        ("PUT", "/v1/tenants/acme/subscription", Some("text/plain"), b"spare".to_vec()),
        ("PUT", "/v1/tenants/acme/overrides/api_calls", json, br#"{"limit": "x"}"#.to_vec()),
        ("GET", "/v1/plans?x=1", None, Vec::new()),
        ("GET", "/v1/tenants?limit=0", None, Vec::new()),
        ("GET", "/v1/audit?bogus=1", None, Vec::new()),
    ];
    let mut failures = Vec::new();
    let bearer = format!("Bearer {key}");
    for (method, path, content_type, body) in cases {
        // With `Expect: 100-continue`, so that an answer given before the body is read is
        // seen as such (and the body is never sent).
        let mut headers = vec![("authorization", bearer.as_str())];
        headers.extend(content_type.map(|ct| ("content-type", ct)));
        let (r, body_read) = app.call_expect_continue(method, path, &headers, &body).await;
        if let Err(why) = is_problem(&r, 403, "forbidden") {
            failures.push(format!("{}: {why}", r.what));
        } else if body_read && body.len() > REQUEST_BODY_BYTES_MAX {
            failures.push(format!("{}: 403, but only after reading {} bytes", r.what, body.len()));
        }
        // Without any key, the same requests are 401: authentication already comes first.
        let (anonymous, _) = app.call_expect_continue(method, path, &headers[1..], &body).await;
        if anonymous.status != 401 {
            failures.push(format!("anonymous {}: {} {}", anonymous.what, anonymous.status, anonymous.text));
        }
    }
    assert_eq!(snapshot(&app, "acme2").await, before, "{backend:?}: acme2 changed");
    assert!(failures.is_empty(), "{backend:?}: validated before authorized:\n{}", failures.join("\n"));
}

async fn listings_show_only_the_callers_rows_when_tenant_ids_overlap(backend: Backend) {
    let app = neighbourhood(backend).await;
    let tenants: Vec<&str> = std::iter::once("acme").chain(NEIGHBOURS).collect();
    let mut cursors = Vec::new();
    for (n, t) in tenants.iter().enumerate() {
        let (_id, key) = app.tenant_key(t).await;
        let expected_events = n + 1;
        let expected_usage: i64 = 1 + (0..n as i64).map(|i| 10 + i).sum::<i64>();

        // Events, one per page, so every cursor is followed.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _page in 0..=expected_events {
            let path = match &cursor {
                Some(c) => format!("/v1/tenants/{t}/events?limit=1&cursor={c}"),
                None => format!("/v1/tenants/{t}/events?limit=1"),
            };
            let page = app.call(Method::GET, &path, Auth::Key(&key), None).await.ok(200);
            seen.extend(page["events"].as_array().expect("events").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => {
                    cursors.push(c.to_owned());
                    cursor = Some(c.to_owned());
                }
                None => break,
            }
        }
        assert_eq!(seen.len(), expected_events, "{backend:?}: {t} sees {seen:?}");
        for e in &seen {
            assert_eq!(e["metadata"]["owner"], *t, "{backend:?}: {t} sees another tenant's event {e}");
        }
        let filtered = app
            .call(
                Method::GET,
                &format!("/v1/tenants/{t}/events?metric_code=api_calls&limit=1000"),
                Auth::Key(&key),
                None,
            )
            .await
            .ok(200);
        assert_eq!(filtered["events"].as_array().map(Vec::len), Some(expected_events), "{backend:?}: {t}");

        let usage =
            app.call(Method::GET, &format!("/v1/tenants/{t}/usage"), Auth::Key(&key), None).await.ok(200);
        assert_eq!(usage["tenant_id"], *t);
        assert_eq!(usage["metrics"][0]["current_usage"], expected_usage, "{backend:?}: {t}: {usage}");
        assert_eq!(usage["metrics"][0]["limit"], 500, "{backend:?}: {t} has its own override only");

        let history = app
            .call(Method::GET, &format!("/v1/tenants/{t}/usage/api_calls/history"), Auth::Key(&key), None)
            .await
            .ok(200);
        let records = history["records"].as_array().expect("records");
        assert_eq!(records.len(), 1, "{backend:?}: {t}: {history}");
        assert_eq!(records[0]["tenant_id"], *t);
        assert_eq!(records[0]["current_usage"], expected_usage);

        let check = app
            .call(
                Method::POST,
                &format!("/v1/tenants/{t}/usage/check"),
                Auth::Key(&key),
                Some(&json!({"metric_code": "api_calls", "amount": 1})),
            )
            .await
            .ok(200);
        assert_eq!(check["current_usage"], expected_usage, "{backend:?}: {t}");

        // The admin's view of one tenant's audit log holds that tenant only.
        for entry in app.audit_entries(Some(t)).await {
            assert_eq!(entry["tenant_id"], *t, "{backend:?}: audit of {t} shows {entry}");
        }
    }

    // A cursor issued on one tenant's list pages through the caller's own tenant only.
    let (_id, key) = app.tenant_key("acme").await;
    for c in &cursors {
        let page = app
            .call(
                Method::GET,
                &format!("/v1/tenants/acme/events?limit=1000&cursor={c}"),
                Auth::Key(&key),
                None,
            )
            .await
            .ok(200);
        for e in page["events"].as_array().expect("events") {
            assert_eq!(e["metadata"]["owner"], "acme", "{backend:?}: a foreign cursor leaked {e}");
        }
    }
}

async fn a_revoked_key_is_unauthorized_on_every_route(backend: Backend) {
    let app = neighbourhood(backend).await;
    let (tenant_id, tenant_key) = app.tenant_key("acme").await;
    let (admin_id, admin_key) = app.stored_admin_key().await;
    app.call(Method::GET, "/v1/tenants/acme/usage", Auth::Key(&tenant_key), None).await.ok(200);
    app.call(Method::GET, "/v1/plans", Auth::Key(&admin_key), None).await.ok(200);
    app.revoke_key(tenant_id).await;
    app.revoke_key(admin_id).await;
    let own = snapshot(&app, "acme").await;
    let global = global_snapshot(&app).await;

    let mut routes = tenant_routes("acme");
    routes.extend(tenant_routes("acme2"));
    routes.extend(tenantless_admin_routes());
    let mut failures = Vec::new();
    for key in [&tenant_key, &admin_key] {
        expect_all(&app, Auth::Key(key), &routes, 401, "unauthorized", &mut failures).await;
    }
    assert!(failures.is_empty(), "{backend:?}: a revoked key opened a route:\n{}", failures.join("\n"));
    assert_eq!(snapshot(&app, "acme").await, own, "{backend:?}: acme changed");
    assert_eq!(global_snapshot(&app).await, global, "{backend:?}: plans, tenants or the audit log changed");

    // Nor does a revoked admin key sign in to the admin UI.
    let r = sign_in(&app, &admin_key).await;
    assert_eq!(r.status, 401, "{backend:?}: sign-in with a revoked admin key: {}", r.text);
    assert!(session_cookie(&r).is_none());
}

/// Posts the admin UI sign-in form with `secret` (and a matching CSRF pair).
async fn sign_in(app: &TestApp, secret: &str) -> Reply {
    let csrf = "00112233445566778899aabbccddeeff";
    let cookie = format!("tally_login_csrf={csrf}");
    let body = format!("password={secret}&csrf_token={csrf}&next=/admin/tenants");
    let headers = [("content-type", "application/x-www-form-urlencoded"), ("cookie", cookie.as_str())];
    app.call_exact("POST", "/admin/login", &headers, body.into_bytes()).await
}

/// The session token a sign-in answer sets, if any.
fn session_cookie(r: &Reply) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("tally_admin_session="))
        .and_then(|rest| rest.split(';').next())
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
}

async fn admin_page(app: &TestApp, token: &str) -> Reply {
    let cookie = format!("tally_admin_session={token}");
    app.call_exact("GET", "/admin/tenants", &[("cookie", cookie.as_str())], Vec::new()).await
}

/// CLI.md: "A revoked key stops working on every instance within 1 s." A UI session opened
/// with an admin key is that key at work, so revoking the key ends it.
async fn revoking_an_admin_key_ends_the_admin_ui_sessions_it_opened(backend: Backend) {
    let app = neighbourhood(backend).await;
    let (admin_id, admin_key) = app.stored_admin_key().await;
    let r = sign_in(&app, &admin_key).await;
    assert_eq!(r.status, 303, "{backend:?}: {}", r.text);
    let token = session_cookie(&r).expect("a session cookie");
    assert_eq!(admin_page(&app, &token).await.status, 200);
    app.revoke_key(admin_id).await;
    let after = admin_page(&app, &token).await;
    assert_eq!(after.status, 303, "{backend:?}: the session of a revoked key still shows pages");
}

async fn an_admin_ui_session_and_an_api_key_are_not_interchangeable(backend: Backend) {
    let app = neighbourhood(backend).await;
    let r = sign_in(&app, ADMIN_KEY).await;
    assert_eq!(r.status, 303, "{backend:?}: {}", r.text);
    let token = session_cookie(&r).expect("a session cookie");
    assert_eq!(admin_page(&app, &token).await.status, 200);

    // The session token is no API key.
    let bearer = format!("Bearer {token}");
    app.call(Method::GET, "/v1/plans", Auth::Header(&bearer), None).await.problem(401, "unauthorized");
    // Keys are no session tokens, whether admin or tenant.
    let (_id, tenant_key) = app.tenant_key("acme").await;
    for key in [ADMIN_KEY, tenant_key.as_str()] {
        let page = admin_page(&app, key).await;
        assert_eq!(page.status, 303, "{backend:?}: a key used as a session cookie: {}", page.text);
    }
    // A session cookie does not authorize the JSON API either.
    let cookie = format!("tally_admin_session={token}");
    let r = app.call_exact("GET", "/v1/plans", &[("cookie", cookie.as_str())], Vec::new()).await;
    assert_eq!(r.status, 401, "{backend:?}: {}", r.text);
}

/// Every table of the store as text, one row a line.
async fn store_text(app: &TestApp) -> String {
    let mut out = String::new();
    if let Some(store) = app.sqlite_store() {
        // The file and its write-ahead log hold every byte the store keeps.
        let files: Vec<(i64, String, String)> =
            sqlx::query_as("PRAGMA database_list").fetch_all(store.pool()).await.expect("database_list");
        let path = files.iter().find(|(_, name, _)| name == "main").map(|(_, _, p)| p.clone()).expect("main");
        for suffix in ["", "-wal"] {
            if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    if let Some(store) = app.pg_store() {
        let tables: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_schema::text, table_name::text FROM information_schema.tables
              WHERE table_schema = $1",
        )
        .bind(store.base_schema())
        .fetch_all(store.pool())
        .await
        .expect("list tables");
        assert!(!tables.is_empty());
        for (schema, table) in tables {
            let sql =
                format!(r#"SELECT coalesce(string_agg(t::text, E'\n'), '') FROM "{schema}"."{table}" AS t"#);
            let text: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(store.pool())
                .await
                .expect("dump a table");
            out.push_str(&text);
            out.push('\n');
        }
    }
    out
}

async fn keys_sessions_and_the_admin_password_exist_at_rest_only_as_hashes(backend: Backend) {
    // hash_key is SHA-256 in lowercase hex (the FIPS 180-2 "abc" vector).
    assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let app = neighbourhood(backend).await;
    let (tenant_id, tenant_secret) = app.tenant_key("acme").await;
    let (admin_id, admin_secret) = app.stored_admin_key().await;
    let (revoked_id, revoked_secret) = app.tenant_key("acme2").await;
    for key in [&tenant_secret, &admin_secret] {
        app.call(Method::GET, "/v1/tenants/acme/usage", Auth::Key(key), None).await.ok(200);
    }
    app.revoke_key(revoked_id).await;
    let password = "a long and secret admin password";
    app.set_admin_password(password).await;
    let signed_in = sign_in(&app, password).await;
    assert_eq!(signed_in.status, 303, "{backend:?}: {}", signed_in.text);
    let session = session_cookie(&signed_in).expect("a session cookie");

    let stored = match (app.sqlite_store(), app.pg_store()) {
        (Some(s), _) => KeyStore::list_keys(s).await,
        (_, Some(s)) => KeyStore::list_keys(s).await,
        _ => unreachable!("a server runs on one store"),
    }
    .expect("list keys");
    let secrets = [(tenant_id, &tenant_secret), (admin_id, &admin_secret), (revoked_id, &revoked_secret)];
    for (id, secret) in secrets {
        let key =
            stored.iter().find(|k| k.id == id).unwrap_or_else(|| panic!("{backend:?}: key {id} is stored"));
        assert_eq!(key.key_hash, hash_key(secret), "{backend:?}: key {id}");
        assert_eq!(key.key_hash.len(), 64);
        assert!(key.key_hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(!format!("{key:?}").contains(secret.trim_start_matches("tly_")), "{backend:?}: {key:?}");
        if let Some(pg) = app.pg_store() {
            // Computed by the database itself, independently of hash_key.
            let by_postgres: String =
                sqlx::query_scalar("SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex')")
                    .bind(secret.as_str())
                    .fetch_one(pg.pool())
                    .await
                    .expect("sha256 in PostgreSQL");
            assert_eq!(key.key_hash, by_postgres, "{backend:?}: key {id}");
        }
    }

    let at_rest = store_text(&app).await;
    for (id, secret) in secrets {
        assert!(at_rest.contains(&hash_key(secret)), "{backend:?}: the scan sees key {id}'s hash");
        // Neither the key nor its random part, anywhere in any table.
        assert!(
            !at_rest.contains(secret.trim_start_matches("tly_")),
            "{backend:?}: key {id} is stored in clear"
        );
    }
    assert!(at_rest.contains(&hash_key(&session)), "{backend:?}: the scan sees the session's hash");
    for (what, secret) in [
        ("the session token", session.as_str()),
        ("the admin password", password),
        ("the admin key", ADMIN_KEY),
    ] {
        assert!(!at_rest.contains(secret), "{backend:?}: {what} is stored in clear");
    }
}

/// The most hostile ids that TenantId accepts: SQL comment and traversal look-alikes, names
/// of schemas, tables and of tenant schemas themselves, the shortest and the longest.
fn hostile_valid_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "0",
        "public",
        "pg_catalog",
        "information_schema",
        "tenant_0000000000000001",
        "tenant_0000000000000002",
        "tally_tenant",
        "quota_usage_event",
        "a--",
        "a..--..__",
        "Robert--.--DROP-TABLE-students",
    ]
    .map(str::to_owned)
    .to_vec();
    ids.push(format!("Z{}", "-".repeat(63)));
    ids.push(format!("9{}", "._-".repeat(21)));
    for id in &ids {
        assert!(TenantId::parse(id).is_ok(), "{id} is valid");
    }
    ids
}

/// Records, reads usage, events and history for every id; each sees its own rows only.
async fn round_trip(app: &TestApp, ids: &[String]) {
    app.put_plan("pro", json!([limit("api_calls", Some(1000), "hard", "month")])).await;
    for (n, t) in ids.iter().enumerate() {
        app.put_tenant(t).await;
        app.subscribe(t, "pro", None).await;
        let amount = n as i64 + 1;
        let owner = json!({"owner": t});
        let body =
            json!({"metric_code": "api_calls", "amount": amount, "idempotency_key": "k", "metadata": owner});
        let r = app.post_usage(t, &body).await.ok(200);
        assert_eq!(r["tenant_id"], *t);
        assert_eq!(app.post_usage(t, &body).await.ok(200)["replayed"], true, "{t}");
    }
    for (n, t) in ids.iter().enumerate() {
        let amount = n as i64 + 1;
        assert_eq!(app.current_usage(t, "api_calls").await, amount, "{t}");
        let events = app.all_events(t).await;
        assert_eq!(events.len(), 1, "{t}: {events:?}");
        assert_eq!(events[0]["metadata"]["owner"], *t);
        assert_eq!(events[0]["amount"], amount);
        let history = app.get(&format!("/v1/tenants/{t}/usage/api_calls/history")).await.ok(200);
        assert_eq!(history["records"][0]["tenant_id"], *t);
        assert_eq!(history["records"][0]["current_usage"], amount);
        assert_eq!(app.get(&format!("/v1/tenants/{t}")).await.ok(200)["tenant_id"], *t);
    }
    let listed = app.get("/v1/tenants?limit=1000").await.ok(200);
    let mut listed: Vec<&str> = listed["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .filter_map(|t| t["tenant_id"].as_str())
        .collect();
    listed.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(listed, want);
}

async fn hostile_but_valid_tenant_ids_round_trip(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    round_trip(&app, &hostile_valid_ids()).await;
}

/// (schema, table) of every table in the database.
async fn all_tables(pool: &sqlx::PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
          WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("list tables")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_schema_tenancy_keeps_hostile_but_valid_tenant_ids_in_their_own_schemas() {
    let app = TestApp::spawn_pg_schema_tenancy().await;
    let store = app.pg_store().expect("a PostgreSQL store").clone();
    let base = store.base_schema().to_owned();
    let before: Vec<(String, String)> = all_tables(store.pool()).await;
    let base_tables: Vec<&(String, String)> = before.iter().filter(|(s, _)| *s == base).collect();
    assert!(!base_tables.is_empty());

    let ids = hostile_valid_ids();
    round_trip(&app, &ids).await;

    let after = all_tables(store.pool()).await;
    for table in &before {
        assert!(after.contains(table), "{table:?} is still there");
    }
    let mut schemas = std::collections::HashSet::new();
    for t in &ids {
        let tenant = TenantStore::find_tenant(&store, &TenantId::parse(t).expect("valid"))
            .await
            .expect("find the tenant")
            .expect("the tenant exists");
        let schema = tenant.schema_name();
        assert_eq!(schema, format!("tenant_{:016x}", tenant.internal_id), "{t}");
        assert!(schemas.insert(schema.clone()), "{t} shares schema {schema}");
        let sql = format!(r#"SELECT tenant_id, amount FROM "{schema}".quota_usage_event"#);
        let rows: Vec<(String, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(store.pool()).await.expect("read the schema");
        assert_eq!(rows.len(), 1, "{t}: {schema} holds {rows:?}");
        assert_eq!(rows[0].0, *t, "{t}: {schema} holds another tenant's event");
        // The schema holds what the tenant migration made, and nothing was dropped from it.
        let tables: Vec<String> =
            after.iter().filter(|(s, _)| *s == schema).map(|(_, n)| n.clone()).collect();
        for needed in ["quota_usage_event", "quota_usage_record"] {
            assert!(tables.iter().any(|n| n == needed), "{t}: {schema} lacks {needed}: {tables:?}");
        }
    }
    // The shared quota tables of the base schema stay empty in schema tenancy.
    for table in ["quota_usage_event", "quota_usage_record"] {
        if base_tables.iter().any(|(_, n)| n == table) {
            let sql = format!(r#"SELECT count(*) FROM "{base}"."{table}""#);
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(store.pool()).await.expect("count");
            assert_eq!(n, 0, "{base}.{table}");
        }
    }
}

store_tests!(
    a_tenant_key_cannot_touch_any_other_tenant_on_any_route,
    a_tenant_key_is_forbidden_on_every_admin_route_of_its_own_tenant,
    a_tenant_key_is_refused_before_its_request_is_validated,
    listings_show_only_the_callers_rows_when_tenant_ids_overlap,
    a_revoked_key_is_unauthorized_on_every_route,
    revoking_an_admin_key_ends_the_admin_ui_sessions_it_opened,
    an_admin_ui_session_and_an_api_key_are_not_interchangeable,
    keys_sessions_and_the_admin_password_exist_at_rest_only_as_hashes,
    hostile_but_valid_tenant_ids_round_trip,
);
