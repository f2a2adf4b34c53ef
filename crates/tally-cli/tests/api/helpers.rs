//! The harness: a real server on a free port over a fresh store (SQLite or PostgreSQL), a
//! keep-alive client, and typed helpers that assert what every answer must look like.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tally_domain::{ApiKey, KeyScope, RateLimit, TenantId};
use tally_http::AppState;
use tally_service::{Clock, ManualClock, ServiceConfig, SystemClock, Tally};
use tally_store_postgres::{PgStore, Tenancy};
use tally_store_sqlite::SqliteStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The admin key every test server is configured with.
pub const ADMIN_KEY: &str = "test-admin-key";
/// The media type of every error body, exactly.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The instant manual-clock tests usually start at (a Sunday).
pub const NOW: &str = "2026-11-29T10:00:00Z";
/// The anchor manual-clock tests usually subscribe with.
pub const ANCHOR: &str = "2026-11-15T00:00:00Z";

/// Generates one `#[tokio::test]` per store for each named `async fn name(backend: Backend)`.
macro_rules! store_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }
            )+
        }
    };
}

/// Which store the server runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `SqliteStore::open_temp_file()`.
    Sqlite,
    /// `PgStore::open_test(Tenancy::Shared)` (needs `TALLY_TEST_DATABASE_URL`).
    Postgres,
}

/// The use cases behind the server, for what the HTTP API does not offer (keys).
enum Service {
    Sqlite(Tally<SqliteStore>),
    Postgres(Tally<PgStore>),
}

/// Who a request claims to be.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    /// `Authorization: Bearer test-admin-key`.
    Admin,
    /// `Authorization: Bearer <key>`.
    Key(&'a str),
    /// No `Authorization` header.
    Anonymous,
    /// `Authorization: <value>`, as given.
    Header(&'a str),
}

/// A running server and a client for it.
pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    pub admin_key: String,
    /// Set when the app runs on a manual clock.
    pub clock: Option<ManualClock>,
    service: Service,
    /// Dropping it stops the server.
    _shutdown: oneshot::Sender<()>,
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Reply {
    /// `METHOD path`, for failure messages.
    pub what: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

/// Parses an RFC 3339 instant (test input, so a bad one is a bug in the test).
pub fn ts(raw: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(raw).unwrap_or_else(|e| panic!("bad test timestamp {raw:?}: {e}")).to_utc()
}

/// Formats an instant as the server does (`Z`, no fraction for whole seconds).
pub fn fmt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// One plan limit as the API takes and answers it.
pub fn limit(metric: &str, limit: Option<i64>, enforcement: &str, period: &str) -> Value {
    json!({"metric_code": metric, "limit": limit, "enforcement": enforcement, "period": period})
}

/// The members of an object, sorted.
pub fn keys(v: &Value) -> Vec<String> {
    let mut out: Vec<String> =
        v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect();
    out.sort();
    out
}

/// Sorted owned strings.
pub fn sorted(names: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    out.sort();
    out
}

/// Asserts that `v` is an RFC 3339 instant in UTC with a `Z` suffix, and returns it.
#[track_caller]
pub fn assert_utc(v: &Value) -> DateTime<Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string timestamp: {v}"));
    assert!(s.ends_with('Z'), "timestamps answer in UTC with Z: {s}");
    ts(s)
}

/// Asserts that `v` is a UUID v7 and returns it.
#[track_caller]
pub fn assert_uuid_v7(v: &Value) -> Uuid {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string id: {v}"));
    let id = Uuid::try_parse(s).unwrap_or_else(|e| panic!("not a UUID {s:?}: {e}"));
    assert_eq!(id.get_version_num(), 7, "ids are UUID v7: {s}");
    id
}

impl Reply {
    /// The header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Content-Type` header, or "".
    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {:?}", self.what, self.text))
    }

    /// Asserts a JSON success with `status`; returns the body.
    #[track_caller]
    pub fn ok(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}: expected {status}, body {}", self.what, self.text);
        assert!(
            self.content_type().starts_with("application/json"),
            "{}: content type {:?}",
            self.what,
            self.content_type()
        );
        self.json()
    }

    /// Asserts `204 No Content` with an empty body.
    #[track_caller]
    pub fn no_content(&self) {
        assert_eq!(self.status, 204, "{}: expected 204, body {}", self.what, self.text);
        assert_eq!(self.text, "", "{}: a 204 has no body", self.what);
    }

    /// Asserts a problem+json answer with `status` and `code`; returns the body.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}: expected {status} {code}, body {}", self.what, self.text);
        assert_eq!(self.content_type(), PROBLEM_JSON, "{}: content type, body {}", self.what, self.text);
        let body = self.json();
        assert_problem_object(&body, status, code, &self.what);
        body
    }
}

/// Asserts the RFC 9457 members and our `code` on a problem object (a body or a batch item's `error`).
#[track_caller]
pub fn assert_problem_object(body: &Value, status: u16, code: &str, what: &str) {
    assert_eq!(body["type"], "about:blank", "{what}: {body}");
    assert_eq!(body["status"], status, "{what}: {body}");
    assert_eq!(body["code"], code, "{what}: {body}");
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()), "{what}: title in {body}");
    assert!(body["detail"].is_string(), "{what}: detail in {body}");
}

impl TestApp {
    /// A server on the system clock.
    pub async fn spawn(backend: Backend) -> TestApp {
        TestApp::start(backend, None, ServiceConfig::default()).await
    }

    /// A server whose clock stands at `now` until the test moves it.
    pub async fn spawn_at(backend: Backend, now: &str) -> TestApp {
        TestApp::start(backend, Some(ManualClock::new(ts(now))), ServiceConfig::default()).await
    }

    /// A server on the system clock with these settings, trusting `webhook_roots` (PEM) for
    /// https webhook receivers.
    pub async fn spawn_with(
        backend: Backend,
        config: ServiceConfig,
        webhook_roots: Option<Vec<u8>>,
    ) -> TestApp {
        TestApp::start_with_roots(backend, None, config, webhook_roots).await
    }

    /// A server on the system clock whose tenant keys and admin keys without a rate limit of
    /// their own are limited to these (`2/s`; `None`: off), as with `--rate-limit-tenant-key`
    /// and `--rate-limit-admin-key`.
    pub async fn spawn_rate_limited(
        backend: Backend,
        tenant_key: Option<&str>,
        admin_key: Option<&str>,
    ) -> TestApp {
        let rate = |r: Option<&str>| r.map(|r| RateLimit::parse(r).expect("a valid test rate limit"));
        TestApp::start_full(
            backend,
            None,
            ServiceConfig::default(),
            None,
            (rate(tenant_key), rate(admin_key)),
        )
        .await
    }

    async fn start(backend: Backend, clock: Option<ManualClock>, config: ServiceConfig) -> TestApp {
        TestApp::start_with_roots(backend, clock, config, None).await
    }

    async fn start_with_roots(
        backend: Backend,
        clock: Option<ManualClock>,
        config: ServiceConfig,
        webhook_roots: Option<Vec<u8>>,
    ) -> TestApp {
        TestApp::start_full(backend, clock, config, webhook_roots, (None, None)).await
    }

    async fn start_full(
        backend: Backend,
        clock: Option<ManualClock>,
        config: ServiceConfig,
        webhook_roots: Option<Vec<u8>>,
        (tenant_rate, admin_rate): (Option<RateLimit>, Option<RateLimit>),
    ) -> TestApp {
        let clock_dyn: Arc<dyn Clock> = match &clock {
            Some(c) => Arc::new(c.clone()),
            None => Arc::new(SystemClock),
        };
        // Bound before the server starts, so no test ever waits for it.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let base_url = format!("http://{}", listener.local_addr().expect("a bound listener has an address"));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let stop = async move {
            stopped.await.ok();
        };
        let service = match backend {
            Backend::Sqlite => {
                let store = SqliteStore::open_temp_file().await.expect("open a temporary sqlite store");
                let tally = Tally::with_clock(store, clock_dyn, config);
                let state = AppState::new(tally.clone())
                    .with_admin_key(Some(ADMIN_KEY))
                    .with_webhook_roots(webhook_roots)
                    .with_rate_limits(tenant_rate, admin_rate);
                tokio::spawn(tally_http::serve(listener, state, stop));
                Service::Sqlite(tally)
            }
            Backend::Postgres => {
                let store = PgStore::open_test(Tenancy::Shared).await;
                let tally = Tally::with_clock(store, clock_dyn, config);
                let state = AppState::new(tally.clone())
                    .with_admin_key(Some(ADMIN_KEY))
                    .with_webhook_roots(webhook_roots)
                    .with_rate_limits(tenant_rate, admin_rate);
                tokio::spawn(tally_http::serve(listener, state, stop));
                Service::Postgres(tally)
            }
        };
        TestApp {
            base_url,
            client: reqwest::Client::new(),
            admin_key: ADMIN_KEY.to_owned(),
            clock,
            service,
            _shutdown: shutdown,
        }
    }

    /// The manual clock (the app must have been spawned with `spawn_at`).
    pub fn clock(&self) -> &ManualClock {
        self.clock.as_ref().expect("this test app runs on the system clock")
    }

    /// Moves the manual clock to `at`.
    pub fn set_now(&self, at: &str) {
        self.clock().set(ts(at));
    }

    // -----------------------------------------------------------------------------------
    // Raw requests

    fn builder(&self, method: Method, path: &str, auth: Auth<'_>) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base_url));
        match auth {
            Auth::Admin => req.header("authorization", format!("Bearer {}", self.admin_key)),
            Auth::Key(k) => req.header("authorization", format!("Bearer {k}")),
            Auth::Anonymous => req,
            Auth::Header(h) => req.header("authorization", h),
        }
    }

    async fn read(what: String, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"));
        Reply { what, status, headers, text }
    }

    /// A request with a JSON body (or none).
    pub async fn call(&self, method: Method, path: &str, auth: Auth<'_>, body: Option<&Value>) -> Reply {
        let what = format!("{method} {path}");
        let mut req = self.builder(method, path, auth);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        TestApp::read(what, req).await
    }

    /// A request with a body sent byte for byte, with the given content type (or none).
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let what = format!("{method} {path}");
        let mut req = self.builder(method, path, auth);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        TestApp::read(what, req.body(body)).await
    }

    /// A request with extra headers and no body.
    pub async fn call_with_headers(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let what = format!("{method} {path}");
        let mut req = self.builder(method, path, auth);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        TestApp::read(what, req).await
    }

    /// `GET` as admin.
    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Auth::Admin, None).await
    }

    /// `PUT` as admin.
    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::PUT, path, Auth::Admin, Some(body)).await
    }

    /// `POST` as admin.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::POST, path, Auth::Admin, Some(body)).await
    }

    /// `POST` with a raw JSON text as admin.
    pub async fn post_text(&self, path: &str, body: &str) -> Reply {
        self.call_raw(Method::POST, path, Auth::Admin, Some("application/json"), body.to_owned()).await
    }

    /// `DELETE` as admin.
    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, Auth::Admin, None).await
    }

    // -----------------------------------------------------------------------------------
    // Typed helpers

    /// Creates or replaces a plan; returns the plan.
    pub async fn put_plan(&self, code: &str, limits: Value) -> Value {
        let r = self.put(&format!("/v1/plans/{code}"), &json!({"name": code, "limits": limits})).await;
        assert!(r.status == 200 || r.status == 201, "{}: {} {}", r.what, r.status, r.text);
        r.json()
    }

    /// Creates a tenant; returns it.
    pub async fn put_tenant(&self, tenant: &str) -> Value {
        self.put(&format!("/v1/tenants/{tenant}"), &json!({"name": format!("Tenant {tenant}")})).await.ok(201)
    }

    /// Subscribes a tenant; returns the subscription.
    pub async fn subscribe(&self, tenant: &str, plan: &str, anchor: Option<&str>) -> Value {
        let body = match anchor {
            Some(a) => json!({"plan_code": plan, "anchor": a}),
            None => json!({"plan_code": plan}),
        };
        self.put(&format!("/v1/tenants/{tenant}/subscription"), &body).await.ok(200)
    }

    /// A tenant subscribed (with `anchor`) to its own plan `<tenant>_plan` of `limits`.
    pub async fn tenant_on_plan(&self, tenant: &str, limits: Value, anchor: Option<&str>) {
        let plan = format!("{}_plan", tenant.replace(['-', '.'], "_").to_lowercase());
        self.put_plan(&plan, limits).await;
        self.put_tenant(tenant).await;
        self.subscribe(tenant, &plan, anchor).await;
    }

    /// `POST /v1/tenants/{tenant}/usage` as admin.
    pub async fn post_usage(&self, tenant: &str, body: &Value) -> Reply {
        self.post(&format!("/v1/tenants/{tenant}/usage"), body).await
    }

    /// `POST /v1/tenants/{tenant}/usage/batch` as admin.
    pub async fn post_batch(&self, tenant: &str, events: Value) -> Reply {
        self.post(&format!("/v1/tenants/{tenant}/usage/batch"), &json!({ "events": events })).await
    }

    /// `POST /v1/tenants/{tenant}/usage/check` as admin.
    pub async fn check(&self, tenant: &str, metric: &str, amount: i64) -> Reply {
        self.post(
            &format!("/v1/tenants/{tenant}/usage/check"),
            &json!({"metric_code": metric, "amount": amount}),
        )
        .await
    }

    /// `POST /v1/tenants/{tenant}/usage/{metric}/reset` as admin, with no body.
    pub async fn reset(&self, tenant: &str, metric: &str) -> Reply {
        self.call(Method::POST, &format!("/v1/tenants/{tenant}/usage/{metric}/reset"), Auth::Admin, None)
            .await
    }

    /// Records `amount` of `metric`, which must succeed; returns the answer.
    pub async fn record(&self, tenant: &str, metric: &str, amount: i64) -> Value {
        self.post_usage(tenant, &json!({"metric_code": metric, "amount": amount})).await.ok(200)
    }

    /// Records `amount` of `metric` at `timestamp`, which must succeed; returns the answer.
    pub async fn record_at(&self, tenant: &str, metric: &str, amount: i64, timestamp: &str) -> Value {
        self.post_usage(tenant, &json!({"metric_code": metric, "amount": amount, "timestamp": timestamp}))
            .await
            .ok(200)
    }

    /// The current usage of `metric` from `GET .../usage`.
    pub async fn current_usage(&self, tenant: &str, metric: &str) -> i64 {
        let body = self.get(&format!("/v1/tenants/{tenant}/usage")).await.ok(200);
        let m = body["metrics"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["metric_code"] == metric))
            .unwrap_or_else(|| panic!("{metric} is not in {body}"))
            .clone();
        m["current_usage"].as_i64().unwrap_or_else(|| panic!("current_usage in {m}"))
    }

    /// Every event of the tenant, newest first, following cursors (pages of 1000).
    pub async fn all_events(&self, tenant: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _page in 0..100 {
            let path = match &cursor {
                Some(c) => format!("/v1/tenants/{tenant}/events?limit=1000&cursor={c}"),
                None => format!("/v1/tenants/{tenant}/events?limit=1000"),
            };
            let body = self.get(&path).await.ok(200);
            out.extend(body["events"].as_array().expect("events is an array").iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return out,
            }
        }
        panic!("more than 100 pages of events");
    }

    /// The audit log (all of it, newest first), optionally for one tenant.
    pub async fn audit_entries(&self, tenant: Option<&str>) -> Vec<Value> {
        let path = match tenant {
            Some(t) => format!("/v1/audit?limit=1000&tenant_id={t}"),
            None => "/v1/audit?limit=1000".to_owned(),
        };
        let body = self.get(&path).await.ok(200);
        assert_eq!(body["next_cursor"], Value::Null, "more than one page of audit entries");
        body["entries"].as_array().expect("entries is an array").clone()
    }

    /// A key bound to `tenant`, created through the service: (id, secret).
    pub async fn tenant_key(&self, tenant: &str) -> (Uuid, String) {
        let tenant = TenantId::parse(tenant).expect("a valid tenant id");
        let (key, secret) = self.create_key(KeyScope::Tenant(tenant)).await;
        (key.id, secret)
    }

    /// A stored admin key, created through the service: (id, secret).
    pub async fn stored_admin_key(&self) -> (Uuid, String) {
        let (key, secret) = self.create_key(KeyScope::Admin).await;
        (key.id, secret)
    }

    async fn create_key(&self, scope: KeyScope) -> (ApiKey, String) {
        self.create_key_with(scope, None).await
    }

    /// A key bound to `tenant` with its own rate limit (`"2/s"`), created through the
    /// service: (id, secret).
    pub async fn tenant_key_with_limit(&self, tenant: &str, rate: &str) -> (Uuid, String) {
        let tenant = TenantId::parse(tenant).expect("a valid tenant id");
        let rate = RateLimit::parse(rate).expect("a valid test rate limit");
        let (key, secret) = self.create_key_with(KeyScope::Tenant(tenant), Some(rate)).await;
        (key.id, secret)
    }

    /// A stored admin key with its own rate limit, created through the service: (id, secret).
    pub async fn stored_admin_key_with_limit(&self, rate: &str) -> (Uuid, String) {
        let rate = RateLimit::parse(rate).expect("a valid test rate limit");
        let (key, secret) = self.create_key_with(KeyScope::Admin, Some(rate)).await;
        (key.id, secret)
    }

    async fn create_key_with(&self, scope: KeyScope, rate: Option<RateLimit>) -> (ApiKey, String) {
        match &self.service {
            Service::Sqlite(t) => t.create_key_with(scope, rate, None).await,
            Service::Postgres(t) => t.create_key_with(scope, rate, None).await,
        }
        .expect("create a key")
    }

    /// Closes the store's connection pool: from now on the store is unreachable.
    pub async fn close_store(&self) {
        match &self.service {
            Service::Sqlite(t) => t.store().pool().close().await,
            Service::Postgres(t) => t.store().pool().close().await,
        }
    }

    /// Sets the admin UI password through the service (as `tally admin set-password` does).
    pub async fn set_admin_password(&self, password: &str) {
        match &self.service {
            Service::Sqlite(t) => t.set_admin_password(password).await,
            Service::Postgres(t) => t.set_admin_password(password).await,
        }
        .expect("set the admin password")
    }

    /// Revokes a key through the service.
    pub async fn revoke_key(&self, id: Uuid) {
        match &self.service {
            Service::Sqlite(t) => t.revoke_key(id, None).await,
            Service::Postgres(t) => t.revoke_key(id, None).await,
        }
        .expect("revoke a key")
    }
}

/// Asserts that `items` holds no id twice; returns the ids in order.
#[track_caller]
pub fn distinct_ids(items: &[Value], member: &str) -> Vec<String> {
    let ids: Vec<String> = items
        .iter()
        .map(|e| e[member].as_str().unwrap_or_else(|| panic!("{member} in {e}")).to_owned())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate {member}s");
    ids
}

// ---------------------------------------------------------------------------------------
// Exact requests and the stores behind the server (bad_input.rs, isolation.rs)

impl TestApp {
    /// A request sent exactly as given on a fresh HTTP/1.1 connection: any method, the path
    /// neither normalized nor re-encoded (reqwest resolves `..` and `%2e%2e` segments before
    /// sending), the headers as listed and the body bytes as they are.
    pub async fn call_exact(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        use http_body_util::BodyExt;

        let what = format!("{method} {}", if path.len() > 200 { &path[..200] } else { path });
        let authority = self.base_url.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap_or_else(|e| panic!("{what}: handshake: {e}"));
        tokio::spawn(async move {
            // The server may close the connection after answering early (413); that is fine.
            conn.await.ok();
        });
        let method = hyper::Method::from_bytes(method.as_bytes()).unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut req = hyper::Request::builder().method(method).uri(path).header("host", authority.as_str());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap_or_else(|e| panic!("{what}: building the request: {e}"));
        let resp = sender.send_request(req).await.unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"))
            .to_bytes();
        Reply { what, status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    /// A request with `Expect: 100-continue`, on a raw connection: the body is sent only if
    /// the server asks for it, that is, once a handler starts reading it. A server that
    /// answers before reading (401, 403) is seen answering, not as a broken connection.
    /// Returns the answer and whether the server asked for the body.
    pub async fn call_expect_continue(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (Reply, bool) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

        let what = format!("{method} {path}");
        let authority = self.base_url.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\
             expect: 100-continue\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        write.write_all(head.as_bytes()).await.unwrap_or_else(|e| panic!("{what}: writing the head: {e}"));
        let mut body_sent = false;
        for _answer in 0..2 {
            let mut status_line = String::new();
            read.read_line(&mut status_line)
                .await
                .unwrap_or_else(|e| panic!("{what}: reading the status: {e}"));
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{what}: bad status line {status_line:?}"));
            let mut headers = HeaderMap::new();
            loop {
                let mut line = String::new();
                read.read_line(&mut line).await.unwrap_or_else(|e| panic!("{what}: reading a header: {e}"));
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && let (Ok(k), Ok(v)) = (
                        reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()),
                        reqwest::header::HeaderValue::from_str(v.trim()),
                    )
                {
                    headers.append(k, v);
                }
            }
            if status == 100 {
                write.write_all(body).await.unwrap_or_else(|e| panic!("{what}: writing the body: {e}"));
                body_sent = true;
                continue;
            }
            let len: Option<usize> =
                headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            let mut bytes = Vec::new();
            match len {
                Some(n) => {
                    bytes.resize(n, 0);
                    read.read_exact(&mut bytes)
                        .await
                        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
                }
                None => {
                    read.read_to_end(&mut bytes)
                        .await
                        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
                }
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            return (Reply { what, status, headers, text }, body_sent);
        }
        panic!("{what}: no final answer after 100 Continue");
    }

    /// A server over PostgreSQL in schema tenancy (one schema per tenant), on the system clock.
    pub async fn spawn_pg_schema_tenancy() -> TestApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let base_url = format!("http://{}", listener.local_addr().expect("a bound listener has an address"));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let stop = async move {
            stopped.await.ok();
        };
        let store = PgStore::open_test(Tenancy::Schema).await;
        let tally = Tally::with_clock(store, Arc::new(SystemClock), ServiceConfig::default());
        let state = AppState::new(tally.clone()).with_admin_key(Some(ADMIN_KEY));
        tokio::spawn(tally_http::serve(listener, state, stop));
        TestApp {
            base_url,
            client: reqwest::Client::new(),
            admin_key: ADMIN_KEY.to_owned(),
            clock: None,
            service: Service::Postgres(tally),
            _shutdown: shutdown,
        }
    }

    /// The SQLite store behind the server, when it runs on SQLite.
    pub fn sqlite_store(&self) -> Option<&SqliteStore> {
        match &self.service {
            Service::Sqlite(t) => Some(t.store()),
            Service::Postgres(_) => None,
        }
    }

    /// The PostgreSQL store behind the server, when it runs on PostgreSQL.
    pub fn pg_store(&self) -> Option<&PgStore> {
        match &self.service {
            Service::Sqlite(_) => None,
            Service::Postgres(t) => Some(t.store()),
        }
    }
}
