//! Keys over HTTP (issue 19, API.md "Operating"): `POST /v1/keys` shows the secret once and
//! keeps only its hash, `GET /v1/keys` lists keys without secrets, `DELETE /v1/keys/{key_id}`
//! revokes one on every instance within a second; admin only, audited as `key.create` and
//! `key.revoke` with the acting key.
#![allow(clippy::unwrap_used)] // a test: a missing member is a failure

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tally_http::AppState;
use tally_service::Tally;
use tally_service::keys::hash_key;
use tally_store::Store;
use tally_store_postgres::{PgConfig, PgStore, Tenancy};
use tally_store_sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::helpers::{
    ADMIN_KEY, Auth, Backend, Reply, TestApp, assert_utc, assert_uuid_v7, keys, limit, sorted,
};

const KEYS: &str = "/v1/keys";

/// The members of the answer that creates a key.
const CREATED_MEMBERS: [&str; 6] = ["id", "key", "scope", "tenant_id", "rate_limit", "created_at"];
/// The members of a listed key.
const LISTED_MEMBERS: [&str; 7] =
    ["id", "scope", "tenant_id", "rate_limit", "created_at", "last_used_at", "revoked_at"];

/// A server with tenant `acme` on a plan, so that `GET /v1/tenants/acme/usage` answers 200.
async fn app_with_acme(backend: Backend) -> TestApp {
    let app = TestApp::spawn(backend).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    app
}

/// `POST /v1/keys` with `body` as `auth`.
async fn create(app: &TestApp, auth: Auth<'_>, body: &Value) -> Reply {
    app.call(Method::POST, KEYS, auth, Some(body)).await
}

/// `GET /v1/tenants/acme/usage` with `key`: its status.
async fn usage_status(app_url: &str, client: &reqwest::Client, key: &str) -> u16 {
    client
        .get(format!("{app_url}/v1/tenants/acme/usage"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {app_url}/v1/tenants/acme/usage: {e}"))
        .status()
        .as_u16()
}

/// The listed keys.
async fn listed(app: &TestApp) -> Vec<Value> {
    let r = app.get(KEYS).await;
    let body = r.ok(200);
    assert_eq!(keys(&body), sorted(&["keys"]), "{body}");
    body["keys"].as_array().expect("keys is an array").clone()
}

/// The audit entries of `action`, newest first.
async fn audited(app: &TestApp, action: &str) -> Vec<Value> {
    app.audit_entries(None).await.into_iter().filter(|e| e["action"] == action).collect()
}

/// Asserts that the created answer is well formed and returns (id, secret).
#[track_caller]
fn assert_created(
    body: &Value,
    scope: &str,
    tenant: Option<&str>,
    rate_limit: Option<&str>,
) -> (String, String) {
    assert_eq!(keys(body), sorted(&CREATED_MEMBERS), "{body}");
    let id = assert_uuid_v7(&body["id"]).to_string();
    let secret = body["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tly_") && secret.len() == 68, "tly_ and 64 hex digits: {secret}");
    assert_eq!(body["scope"], scope, "{body}");
    assert_eq!(body["tenant_id"], json!(tenant), "{body}");
    assert_eq!(body["rate_limit"], json!(rate_limit), "{body}");
    assert_utc(&body["created_at"]);
    (id, secret)
}

async fn a_tenant_key_created_over_http_works_at_once_and_is_shown_once(backend: Backend) {
    let app = app_with_acme(backend).await;
    let r =
        create(&app, Auth::Admin, &json!({"scope": "tenant", "tenant_id": "acme", "rate_limit": "600/m"}))
            .await;
    let body = r.ok(201);
    let (id, secret) = assert_created(&body, "tenant", Some("acme"), Some("600/m"));

    // It authenticates at once, as that tenant's key and no more.
    app.call(Method::GET, "/v1/tenants/acme/usage", Auth::Key(&secret), None).await.ok(200);
    app.call(Method::GET, "/v1/plans", Auth::Key(&secret), None).await.problem(403, "forbidden");

    // Listed without its secret or its hash, with the same members as `tally keys list --json`.
    let list = app.get(KEYS).await;
    assert!(!list.text.contains(&secret), "{backend:?}: the listing shows the key: {}", list.text);
    assert!(
        !list.text.contains(&hash_key(&secret)),
        "{backend:?}: the listing shows the hash: {}",
        list.text
    );
    let all = listed(&app).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let k = &all[0];
    assert_eq!(keys(k), sorted(&LISTED_MEMBERS), "{k}");
    assert_eq!(k["id"], id.as_str());
    assert_eq!(
        (&k["scope"], &k["tenant_id"], &k["rate_limit"]),
        (&json!("tenant"), &json!("acme"), &json!("600/m"))
    );
    assert_eq!(k["created_at"], body["created_at"]);
    assert_eq!(k["revoked_at"], Value::Null);

    // Only the hash reached the store; the audit entry does not hold the secret either.
    assert_store_keeps_only_the_hash(&app, &secret).await;
    let entries = audited(&app, "key.create").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e["key_id"], Value::Null, "done with the configured admin key: {e}");
    assert_eq!(e["tenant_id"], "acme", "{e}");
    assert_eq!(e["details"], json!({"key_id": id, "scope": "tenant", "rate_limit": "600/m"}), "{e}");
    let audit = app.get("/v1/audit?limit=1000").await;
    assert!(!audit.text.contains(&secret) && !audit.text.contains(&hash_key(&secret)), "{}", audit.text);

    // Every rate unit round-trips through the store.
    for rate in ["1000/s", "10000/h"] {
        let r =
            create(&app, Auth::Admin, &json!({"scope": "tenant", "tenant_id": "acme", "rate_limit": rate}))
                .await;
        assert_created(&r.ok(201), "tenant", Some("acme"), Some(rate));
    }
    let rates: Vec<Value> = listed(&app).await.iter().map(|k| k["rate_limit"].clone()).collect();
    assert_eq!(rates, vec![json!("600/m"), json!("1000/s"), json!("10000/h")], "oldest first");
}

async fn an_admin_key_created_over_http_manages_keys_under_its_own_id(backend: Backend) {
    let app = app_with_acme(backend).await;
    // `tenant_id: null` and `rate_limit: null` are as good as absent.
    let body = create(&app, Auth::Admin, &json!({"scope": "admin", "tenant_id": null, "rate_limit": null}))
        .await
        .ok(201);
    let (admin_id, admin) = assert_created(&body, "admin", None, None);
    app.call(Method::GET, "/v1/plans", Auth::Key(&admin), None).await.ok(200);

    // That key creates, lists and revokes keys; the audit log names it.
    let r = create(&app, Auth::Key(&admin), &json!({"scope": "tenant", "tenant_id": "acme"})).await;
    let (tenant_id, tenant_key) = assert_created(&r.ok(201), "tenant", Some("acme"), None);
    let ids: Vec<Value> = listed(&app).await.iter().map(|k| k["id"].clone()).collect();
    assert_eq!(ids, vec![json!(admin_id), json!(tenant_id)]);
    let list = app.call(Method::GET, KEYS, Auth::Key(&admin), None).await;
    assert!(!list.text.contains(&admin) && !list.text.contains(&tenant_key), "{}", list.text);
    app.call(Method::DELETE, &format!("{KEYS}/{tenant_id}"), Auth::Key(&admin), None).await.no_content();

    let created = audited(&app, "key.create").await;
    assert_eq!(created.len(), 2, "{created:?}");
    assert_eq!(
        created[0]["key_id"],
        admin_id.as_str(),
        "the newer one, by the stored admin key: {created:?}"
    );
    assert_eq!(created[0]["details"]["key_id"], tenant_id.as_str());
    assert_eq!(created[1]["key_id"], Value::Null, "the first, by the configured admin key");
    assert_eq!(created[1]["tenant_id"], Value::Null, "an admin key belongs to no tenant");
    assert_eq!(created[1]["details"], json!({"key_id": admin_id, "scope": "admin", "rate_limit": null}));
    let revoked = audited(&app, "key.revoke").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["key_id"], admin_id.as_str());
    assert_eq!(revoked[0]["tenant_id"], "acme");
    assert_eq!(revoked[0]["details"], json!({"key_id": tenant_id}));

    // An admin key may revoke itself; from then on it opens nothing.
    app.call(Method::DELETE, &format!("{KEYS}/{admin_id}"), Auth::Key(&admin), None).await.no_content();
    app.call(Method::GET, KEYS, Auth::Key(&admin), None).await.problem(401, "unauthorized");
}

async fn a_key_revoked_over_http_stops_at_once_and_only_once(backend: Backend) {
    let app = app_with_acme(backend).await;
    let r = create(&app, Auth::Admin, &json!({"scope": "tenant", "tenant_id": "acme"})).await;
    let (id, secret) = assert_created(&r.ok(201), "tenant", Some("acme"), None);
    let (other_id, other) = app.tenant_key("acme").await;
    app.call(Method::GET, "/v1/tenants/acme/usage", Auth::Key(&secret), None).await.ok(200);

    app.delete(&format!("{KEYS}/{id}")).await.no_content();
    app.call(Method::GET, "/v1/tenants/acme/usage", Auth::Key(&secret), None)
        .await
        .problem(401, "unauthorized");
    app.call(Method::GET, "/v1/tenants/acme/usage", Auth::Key(&other), None).await.ok(200);

    // Still listed, with when it was revoked; the other key is untouched.
    let all = listed(&app).await;
    let mine = all.iter().find(|k| k["id"] == id.as_str()).unwrap();
    assert_utc(&mine["revoked_at"]);
    let theirs = all.iter().find(|k| k["id"] == other_id.to_string().as_str()).unwrap();
    assert_eq!(theirs["revoked_at"], Value::Null);

    // Revoking again, or an unknown key, is 404 and audits nothing; a malformed id is 400.
    app.delete(&format!("{KEYS}/{id}")).await.problem(404, "not_found");
    app.delete(&format!("{KEYS}/0190f0c8-0000-7000-8000-000000000000")).await.problem(404, "not_found");
    let bad = app.delete(&format!("{KEYS}/not-a-uuid")).await.problem(400, "invalid_request");
    assert_eq!(bad["field"], "key_id", "{bad}");
    let revoked = audited(&app, "key.revoke").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["key_id"], Value::Null);
    assert_eq!(revoked[0]["tenant_id"], "acme");
    assert_eq!(revoked[0]["details"], json!({"key_id": id}));
}

/// A second server over the same store, as another instance would be (its own
/// configuration cache): its base URL and the sender whose drop stops it.
async fn another_instance(app: &TestApp) -> (String, oneshot::Sender<()>) {
    if let Some(store) = app.sqlite_store() {
        let path = store.pool().connect_options().get_filename().to_owned();
        let other =
            SqliteStore::open(&format!("sqlite://{}", path.display())).await.expect("open the file again");
        return serve(other).await;
    }
    let store = app.pg_store().expect("a store");
    let mut config = PgConfig::new(&tally_store_postgres::test_database_url(), Tenancy::Shared);
    config.base_schema = store.base_schema().to_owned();
    config.max_connections = 4;
    config.writers = 1;
    serve(PgStore::connect(config).await.expect("connect again")).await
}

async fn serve<S: Store>(store: S) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
    let base_url = format!("http://{}", listener.local_addr().expect("an address"));
    let (shutdown, stopped) = oneshot::channel::<()>();
    let state = AppState::new(Tally::new(store)).with_admin_key(Some(ADMIN_KEY));
    tokio::spawn(tally_http::serve(listener, state, async move {
        stopped.await.ok();
    }));
    (base_url, shutdown)
}

async fn a_key_made_or_revoked_over_http_is_seen_by_every_instance_within_a_second(backend: Backend) {
    let app = app_with_acme(backend).await;
    let (other, _stop) = another_instance(&app).await;
    let client = reqwest::Client::new();
    let r = create(&app, Auth::Admin, &json!({"scope": "tenant", "tenant_id": "acme"})).await;
    let (id, secret) = assert_created(&r.ok(201), "tenant", Some("acme"), None);
    let deadline = Instant::now() + Duration::from_secs(1);
    while usage_status(&other, &client, &secret).await != 200 {
        assert!(Instant::now() < deadline, "{backend:?}: the new key did not work on {other} after 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both instances know the key (and cache it); it is revoked on the first.
    assert_eq!(usage_status(&app.base_url, &client, &secret).await, 200);
    app.delete(&format!("{KEYS}/{id}")).await.no_content();
    let deadline = Instant::now() + Duration::from_secs(1);
    for base in [&app.base_url, &other] {
        while usage_status(base, &client, &secret).await != 401 {
            assert!(
                Instant::now() < deadline,
                "{backend:?}: the revoked key still worked on {base} after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn only_an_admin_may_create_list_or_revoke_keys(backend: Backend) {
    let app = app_with_acme(backend).await;
    let (tenant_key_id, tenant_key) = app.tenant_key("acme").await;
    let (revoked_id, revoked) = app.stored_admin_key().await;
    app.revoke_key(revoked_id).await;
    // `last_used_at` moves as the tenant key is used; the rest must not.
    let without_use = |mut all: Vec<Value>| {
        for k in &mut all {
            k.as_object_mut().unwrap().remove("last_used_at");
        }
        all
    };
    let before = without_use(listed(&app).await);
    let id = tenant_key_id.to_string();
    let delete_own = format!("{KEYS}/{id}");
    // Who may act is settled before the body or the id is looked at.
    let requests: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, KEYS.to_owned(), Some(json!({"scope": "tenant", "tenant_id": "acme"}))),
        (Method::POST, KEYS.to_owned(), Some(json!({"scope": "admin"}))),
        (Method::POST, KEYS.to_owned(), Some(json!({"scope": "root", "bogus": 1}))),
        (Method::POST, KEYS.to_owned(), None),
        (Method::GET, KEYS.to_owned(), None),
        (Method::GET, format!("{KEYS}?bogus=1"), None),
        (Method::DELETE, delete_own.clone(), None),
        (Method::DELETE, format!("{KEYS}/not-a-uuid"), None),
    ];
    for (method, path, body) in &requests {
        app.call(method.clone(), path, Auth::Key(&tenant_key), body.as_ref()).await.problem(403, "forbidden");
        app.call(method.clone(), path, Auth::Anonymous, body.as_ref()).await.problem(401, "unauthorized");
        app.call(method.clone(), path, Auth::Key(&revoked), body.as_ref()).await.problem(401, "unauthorized");
        app.call(method.clone(), path, Auth::Key("tly_nope"), body.as_ref())
            .await
            .problem(401, "unauthorized");
    }
    assert_eq!(without_use(listed(&app).await), before, "{backend:?}: nothing was created or revoked");
    assert!(audited(&app, "key.create").await.len() == 2 && audited(&app, "key.revoke").await.len() == 1);
    app.call(Method::GET, "/v1/tenants/acme/usage", Auth::Key(&tenant_key), None).await.ok(200);
}

async fn bad_key_requests_are_refused_naming_the_member_and_create_nothing(backend: Backend) {
    let app = app_with_acme(backend).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"scope": "root"}), "scope"),
        (json!({"scope": "Admin"}), "scope"),
        (json!({"scope": "tenant"}), "tenant_id"),
        (json!({"scope": "tenant", "tenant_id": null}), "tenant_id"),
        (json!({"scope": "tenant", "tenant_id": "ac me"}), "tenant_id"),
        (json!({"scope": "tenant", "tenant_id": ""}), "tenant_id"),
        (json!({"scope": "admin", "tenant_id": "acme"}), "tenant_id"),
        (json!({"scope": "tenant", "tenant_id": "acme", "rate_limit": "5/d"}), "rate_limit"),
        (json!({"scope": "admin", "rate_limit": "0/s"}), "rate_limit"),
        (json!({"scope": "admin", "rate_limit": "1000"}), "rate_limit"),
        (json!({"scope": "admin", "rate_limit": ""}), "rate_limit"),
    ];
    for (body, field) in &cases {
        let p = create(&app, Auth::Admin, body).await.problem(400, "invalid_request");
        assert_eq!(p["field"], *field, "{backend:?}: {body} -> {p}");
    }
    // Shapes the wire type refuses: unknown or duplicate members, wrong types, no scope.
    for raw in [
        r#"{"scope": "admin", "bogus": 1}"#,
        r#"{"scope": "admin", "key": "tly_chosen"}"#,
        r#"{"scope": "admin", "scope": "tenant"}"#,
        r#"{"scope": "admin", "rate_limit": 600}"#,
        r#"{"scope": 1}"#,
        r#"{"tenant_id": "acme"}"#,
        r#"[]"#,
        r#"{"#,
    ] {
        app.post_text(KEYS, raw).await.problem(400, "invalid_request");
    }
    app.call_raw(Method::POST, KEYS, Auth::Admin, Some("text/plain"), r#"{"scope": "admin"}"#)
        .await
        .problem(415, "unsupported_media_type");
    // A tenant that does not exist.
    let p = create(&app, Auth::Admin, &json!({"scope": "tenant", "tenant_id": "ghost"}))
        .await
        .problem(404, "not_found");
    assert!(p["detail"].as_str().unwrap().contains("ghost"), "{p}");
    app.get(&format!("{KEYS}?limit=1")).await.problem(400, "invalid_request");

    assert_eq!(listed(&app).await, Vec::<Value>::new(), "{backend:?}: a refused request created a key");
    assert!(audited(&app, "key.create").await.is_empty());
}

/// Asserts that the store holds the key's hash and nowhere its secret.
async fn assert_store_keeps_only_the_hash(app: &TestApp, secret: &str) {
    let hash = hash_key(secret);
    let mut text = String::new();
    if let Some(store) = app.sqlite_store() {
        // The file and its write-ahead log hold every byte the store keeps.
        let path = store.pool().connect_options().get_filename().to_owned();
        for suffix in ["", "-wal"] {
            if let Ok(bytes) = std::fs::read(format!("{}{suffix}", path.display())) {
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    if let Some(store) = app.pg_store() {
        for table in ["tally_api_key", "tally_audit"] {
            let sql = format!(
                r#"SELECT coalesce(string_agg(t::text, E'\n'), '') FROM "{}"."{table}" AS t"#,
                store.base_schema()
            );
            let rows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(store.pool())
                .await
                .expect("dump a table");
            text.push_str(&rows);
            text.push('\n');
        }
    }
    assert!(text.contains(&hash), "the store holds the key's SHA-256");
    assert!(!text.contains(secret), "the store holds the key itself");
    assert!(!text.contains(secret.trim_start_matches("tly_")), "the store holds the key's secret part");
}

store_tests!(
    a_tenant_key_created_over_http_works_at_once_and_is_shown_once,
    an_admin_key_created_over_http_manages_keys_under_its_own_id,
    a_key_revoked_over_http_stops_at_once_and_only_once,
    a_key_made_or_revoked_over_http_is_seen_by_every_instance_within_a_second,
    only_an_admin_may_create_list_or_revoke_keys,
    bad_key_requests_are_refused_naming_the_member_and_create_nothing,
);
