//! The admin UI over HTTP, without a browser: sign-in and its cookie, CSRF, logout that ends
//! the session server-side, read-only routes, filters, search, pagination, escaping and the
//! usage pictures. (The browser tests in tests/browser drive the same pages in Chromium.)

use std::collections::HashMap;

use serde_json::json;

use crate::helpers::{Backend, NOW, TestApp, limit};

const PASSWORD: &str = "correct horse battery staple";

/// A cookie-keeping client that does not follow redirects.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
}

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
    }
}

/// The value of `<input ... name="csrf_token" value="...">` in a page.
fn csrf_of(html: &str) -> String {
    let at = html.find(r#"name="csrf_token" value=""#).unwrap_or_else(|| panic!("no csrf field in {html}"));
    let rest = &html[at + r#"name="csrf_token" value=""#.len()..];
    rest[..rest.find('"').expect("closing quote")].to_owned()
}

impl Browser {
    fn new(app: &TestApp) -> Browser {
        let client =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Browser { client, base: app.base_url.clone(), cookies: HashMap::new() }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let resp = req.header("cookie", self.cookie_header()).send().await.expect("request");
        let page = Page {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.text().await.expect("body"),
        };
        for c in page.set_cookies() {
            let first = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = first.split_once('=') {
                if v.is_empty() || c.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        page
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.client.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body: String =
            form.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect::<Vec<_>>().join("&");
        let req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(req).await
    }

    /// Signs in with `secret` through the form; returns the answer to the POST.
    async fn sign_in(&mut self, secret: &str) -> Page {
        let form = self.get("/admin/login").await;
        assert_eq!(form.status, 200, "{}", form.text);
        let csrf = csrf_of(&form.text);
        self.post_form(
            "/admin/login",
            &[("password", secret), ("csrf_token", &csrf), ("next", "/admin/records")],
        )
        .await
    }

    /// A page that must answer 200 HTML.
    async fn html(&mut self, path: &str) -> String {
        let page = self.get(path).await;
        assert_eq!(page.status, 200, "GET {path}: {}", page.text);
        let ct = page.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(ct, "text/html; charset=utf-8", "GET {path}");
        page.text
    }
}

fn urlencode(raw: &str) -> String {
    raw.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Rows of class `class` in a page.
fn rows(html: &str, class: &str) -> usize {
    html.matches(&format!(r#"<tr class="{class}""#)).count()
}

/// A plan with a HARD and a SOFT metric, `n` tenants `t00..`, and one api_calls event each.
async fn seeded(backend: Backend, n: usize) -> TestApp {
    let app = TestApp::spawn(backend).await;
    app.put_plan(
        "pro",
        json!([limit("api_calls", Some(1000), "hard", "month"), limit("storage", Some(50), "soft", "month")]),
    )
    .await;
    for i in 0..n {
        let t = format!("t{i:02}");
        app.put_tenant(&t).await;
        app.subscribe(&t, "pro", None).await;
        app.record(&t, "api_calls", 1).await;
        app.record(&t, "storage", 2).await;
    }
    app.set_admin_password(PASSWORD).await;
    app
}

async fn signed_in(app: &TestApp) -> Browser {
    let mut b = Browser::new(app);
    let page = b.sign_in(PASSWORD).await;
    assert_eq!(page.status, 303, "{}", page.text);
    b
}

async fn anonymous_pages_redirect_to_the_sign_in_page(backend: Backend) {
    let app = seeded(backend, 1).await;
    let mut b = Browser::new(&app);
    for path in
        ["/admin/records", "/admin/events", "/admin/tenants", "/admin/tenants/t00", "/admin/plans/pro"]
    {
        let page = b.get(path).await;
        assert_eq!(page.status, 303, "GET {path}");
        assert!(page.location().starts_with("/admin/login?next=/admin/"), "GET {path}: {}", page.location());
    }
    assert_eq!(b.get("/admin").await.location(), "/admin/tenants");
}

async fn signing_in_with_the_password_sets_a_strict_http_only_session_cookie(backend: Backend) {
    let app = seeded(backend, 1).await;
    let mut b = Browser::new(&app);
    let page = b.sign_in(PASSWORD).await;
    assert_eq!(page.status, 303, "{}", page.text);
    assert_eq!(page.location(), "/admin/records", "goes where it was asked to");
    let session = page
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("tally_admin_session="))
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=28800"] {
        assert!(session.contains(attr), "{attr} in {session}");
    }
    assert!(!session.contains("Secure"), "Secure only with --cookie-secure: {session}");
    let records = b.get("/admin/records").await;
    assert_eq!(records.status, 200);
    let csp = records.headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(records.headers.get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
}

async fn the_configured_and_stored_admin_keys_sign_in_and_a_tenant_key_does_not(backend: Backend) {
    let app = seeded(backend, 1).await;
    let admin_key = app.admin_key.clone();
    assert_eq!(Browser::new(&app).sign_in(&admin_key).await.status, 303);
    let (_, stored) = app.stored_admin_key().await;
    assert_eq!(Browser::new(&app).sign_in(&stored).await.status, 303);
    let (_, tenant_key) = app.tenant_key("t00").await;
    let refused = Browser::new(&app).sign_in(&tenant_key).await;
    assert_eq!(refused.status, 401, "a tenant key is not an admin");
    assert!(refused.text.contains("Wrong password or key."));
}

async fn a_wrong_password_is_refused_without_a_session(backend: Backend) {
    let app = seeded(backend, 1).await;
    let mut b = Browser::new(&app);
    let page = b.sign_in("not the password at all").await;
    assert_eq!(page.status, 401);
    assert!(page.text.contains("Wrong password or key."), "{}", page.text);
    assert!(!page.set_cookies().iter().any(|c| c.starts_with("tally_admin_session=")));
    assert_eq!(b.get("/admin/records").await.status, 303);
}

async fn a_sign_in_without_its_form_token_is_refused(backend: Backend) {
    let app = seeded(backend, 1).await;
    let mut b = Browser::new(&app);
    let page = b.post_form("/admin/login", &[("password", PASSWORD), ("csrf_token", "forged")]).await;
    assert_eq!(page.status, 403, "{}", page.text);
    assert!(!page.set_cookies().iter().any(|c| c.starts_with("tally_admin_session=")));
}

async fn logging_out_ends_the_session_on_the_server(backend: Backend) {
    let app = seeded(backend, 1).await;
    let mut b = signed_in(&app).await;
    let token = b.cookies.get("tally_admin_session").cloned().expect("session cookie");
    let page = b.html("/admin/tenants").await;
    let csrf = csrf_of(&page);

    let forged = b.post_form("/admin/logout", &[("csrf_token", "forged")]).await;
    assert_eq!(forged.status, 403, "a logout without the session's token is refused");
    assert_eq!(b.get("/admin/tenants").await.status, 200, "and the session lives on");

    let out = b.post_form("/admin/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert_eq!(out.location(), "/admin/login");
    assert!(
        out.set_cookies().iter().any(|c| c.starts_with("tally_admin_session=;") && c.contains("Max-Age=0"))
    );

    let mut replay = Browser::new(&app);
    replay.cookies.insert("tally_admin_session".to_owned(), token);
    assert_eq!(replay.get("/admin/tenants").await.status, 303, "the old cookie is worthless");
}

async fn the_admin_pages_are_read_only(backend: Backend) {
    let app = seeded(backend, 1).await;
    let mut b = signed_in(&app).await;
    for path in ["/admin/records", "/admin/events", "/admin/tenants/t00", "/admin/plans/pro"] {
        for method in [reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::DELETE] {
            let req = b.client.request(method.clone(), format!("{}{path}", b.base));
            let page = b.send(req).await;
            assert_eq!(page.status, 405, "{method} {path}");
        }
    }
}

async fn records_filter_search_sort_and_paginate(backend: Backend) {
    let app = seeded(backend, 26).await;
    app.put_tenant("acme").await;
    app.subscribe("acme", "pro", None).await;
    app.record("acme", "api_calls", 420).await;
    let mut b = signed_in(&app).await;

    let all = b.html("/admin/records").await;
    assert_eq!(rows(&all, "record-row"), 50, "a page holds 50 of the 53 records");
    assert!(all.contains(r#"id="next-page""#), "a next page link");
    let href_at = all.find(r#"rel="next""#).expect("next link");
    let start = all[..href_at].rfind("href=\"").expect("href") + 6;
    let href = all[start..].split('"').next().expect("href value").replace("&amp;", "&");
    let second = b.html(&href).await;
    assert_eq!(rows(&second, "record-row"), 3, "the rest on page two");
    assert!(second.contains(r#"id="first-page""#));

    let api = b.html("/admin/records?metric_code=api_calls").await;
    assert_eq!(rows(&api, "record-row"), 27);
    assert!(!api.contains("<td>storage</td>"));

    let searched = b.html("/admin/records?q=acm").await;
    assert_eq!(rows(&searched, "record-row"), 1, "only acme starts with acm");
    assert!(searched.contains("420"));

    let by_metric_name = b.html("/admin/records?q=stor").await;
    assert_eq!(rows(&by_metric_name, "record-row"), 26, "a metric code prefix matches too");

    let sorted = b.html("/admin/records?sort=current_usage&dir=desc").await;
    let first_row = sorted.find(r#"<tr class="record-row""#).expect("a row");
    assert!(
        sorted[first_row..].split("</tr>").next().expect("row").contains("420"),
        "the biggest counter first"
    );

    let exact = b.html("/admin/records?tenant_id=t01").await;
    assert_eq!(rows(&exact, "record-row"), 2);

    let today = app_today();
    let created = b.html(&format!("/admin/records?created_from={today}&created_to={today}")).await;
    assert_eq!(rows(&created, "record-row"), 50, "everything was created today");
    let none = b.html("/admin/records?created_from=2000-01-01&created_to=2000-01-02").await;
    assert!(none.contains(r#"id="no-rows""#));
}

fn app_today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

async fn events_filter_search_paginate_and_show_their_metadata_as_text(backend: Backend) {
    let app = seeded(backend, 26).await;
    app.put_tenant("acme").await;
    app.subscribe("acme", "pro", None).await;
    let payload = "<script>window.__xss=1</script><img src=x onerror=alert(1)>";
    let recorded = app
        .post_usage(
            "acme",
            &json!({"metric_code": "api_calls", "amount": 3, "idempotency_key": "req-<b>1</b>", "metadata": {"note": payload}}),
        )
        .await
        .ok(200);
    let event_id = recorded["event_id"].as_str().expect("event id").to_owned();
    let mut b = signed_in(&app).await;

    let all = b.html("/admin/events").await;
    assert_eq!(rows(&all, "event-row"), 50);
    assert!(all.contains(r#"rel="next""#));
    let api = b.html("/admin/events?metric_code=api_calls").await;
    assert_eq!(rows(&api, "event-row"), 27);
    let acme = b.html("/admin/events?q=acme").await;
    assert_eq!(rows(&acme, "event-row"), 1);

    let detail = b.html(&format!("/admin/tenants/acme/events/{event_id}")).await;
    assert!(detail.contains("&lt;script&gt;window.__xss=1&lt;/script&gt;"), "{detail}");
    assert!(!detail.contains("<script>") && !detail.contains("<img"), "nothing from the payload is markup");
    assert!(detail.contains("req-&lt;b&gt;1&lt;/b&gt;"), "the idempotency key is text too");

    let other = b.get(&format!("/admin/tenants/t00/events/{event_id}")).await;
    assert_eq!(other.status, 404, "an event is found only under its own tenant");
}

async fn the_tenant_page_draws_usage_against_the_limit(backend: Backend) {
    let app = seeded(backend, 0).await;
    app.put_tenant("acme").await;
    app.subscribe("acme", "pro", None).await;
    app.record("acme", "api_calls", 420).await;
    app.record("acme", "storage", 45).await;
    let mut b = signed_in(&app).await;
    let page = b.html("/admin/tenants/acme").await;
    assert!(page.contains(r#"data-metric="api_calls" data-current="420" data-limit="1000" data-state="under" data-enforcement="hard""#), "{page}");
    assert!(page.contains("420</strong> of <span class=\"limit\">1,000"));
    assert!(page.contains(
        r#"data-metric="storage" data-current="45" data-limit="50" data-state="near" data-enforcement="soft""#
    ));
    let chart_at = page.find(r#"class="usage-chart""#).expect("a chart");
    let chart = &page[chart_at..page[chart_at..].find("</svg>").expect("end") + chart_at];
    assert_eq!(chart.matches("data-value=").count(), 12, "twelve periods");
    assert!(chart.contains(r#"data-values="0,0,0,0,0,0,0,0,0,0,0,420""#), "{chart}");

    let missing = b.get("/admin/tenants/nobody").await;
    assert_eq!(missing.status, 404);
}

async fn the_tenant_page_shows_a_gauge_as_a_level_against_its_limit(backend: Backend) {
    let app = seeded(backend, 0).await;
    app.put("/v1/metrics/seats", &json!({"name": "Seats", "kind": "gauge"})).await.ok(201);
    app.tenant_on_plan("acme", json!([limit("seats", Some(10), "hard", "none")]), None).await;
    app.record("acme", "seats", 9).await;
    app.record("acme", "seats", -1).await;
    let mut b = signed_in(&app).await;
    let page = b.html("/admin/tenants/acme").await;
    assert!(
        page.contains(r#"data-metric="seats" data-current="8" data-limit="10" data-state="near" data-enforcement="hard""#),
        "{page}"
    );
    assert!(page.contains("gauge · current level, no period"), "{page}");
    assert!(!page.contains(r#"class="usage-chart""#), "a level has no periods to chart");
    let records = b.html("/admin/records?metric_code=seats").await;
    assert_eq!(rows(&records, "record-row"), 1);
    assert!(records.contains("none (gauge)"), "{records}");
}

async fn the_webhook_pages_show_each_delivery_with_its_status_and_attempts(backend: Backend) {
    let app = seeded(backend, 0).await;
    let receiver = crate::receiver::Receiver::start().await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), None).await;
    app.put("/v1/webhooks/ops", &json!({"url": receiver.url, "thresholds": [50, 80]})).await.ok(201);
    app.record("acme", "api_calls", 90).await;
    receiver.wait_for(2, std::time::Duration::from_secs(20)).await;
    // The log says delivered once the worker has stored the answers.
    for _ in 0..400 {
        let log = app.get("/v1/webhooks/ops/deliveries").await.ok(200);
        if log["deliveries"].as_array().expect("a list").iter().all(|d| d["status"] == "delivered") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut b = signed_in(&app).await;
    let list = b.html("/admin/webhooks").await;
    assert_eq!(rows(&list, "webhook-row"), 1);
    assert!(list.contains(r#"href="/admin/webhooks/ops""#) && list.contains("50%, 80%"), "{list}");
    let page = b.html("/admin/webhooks/ops").await;
    assert_eq!(rows(&page, "delivery-row"), 2, "{page}");
    assert_eq!(page.matches(r#"data-status="delivered""#).count(), 2, "{page}");
    assert!(page.contains("usage.threshold_crossed") && page.contains(&receiver.url), "{page}");
    assert_eq!(b.get("/admin/webhooks/nope").await.status, 404);
    assert_eq!(b.get("/admin/webhooks/ops?after=garbage").await.status, 400);
}

async fn the_plan_pages_show_limits_versions_and_subscribers(backend: Backend) {
    let app = seeded(backend, 2).await;
    app.put_plan("pro", json!([limit("api_calls", Some(2000), "hard", "month")])).await;
    let mut b = signed_in(&app).await;
    let list = b.html("/admin/plans").await;
    assert_eq!(rows(&list, "plan-row"), 1);
    let page = b.html("/admin/plans/pro").await;
    assert_eq!(rows(&page, "version-row"), 2, "two versions");
    assert!(page.contains(r#"href="/admin/tenants/t00""#) && page.contains(r#"href="/admin/tenants/t01""#));
    assert_eq!(b.get("/admin/plans/nope").await.status, 404);
}

async fn bad_filters_answer_a_400_page_that_names_the_field(backend: Backend) {
    let app = seeded(backend, 1).await;
    let mut b = signed_in(&app).await;
    for (path, field) in [
        ("/admin/records?created_from=yesterday", "created_from"),
        ("/admin/records?sort=bogus", "sort"),
        ("/admin/records?dir=up", "dir"),
        ("/admin/records?after=garbage", "after"),
        ("/admin/records?metric_code=Not-A-Code", "metric_code"),
        ("/admin/events?after=1.2", "after"),
        ("/admin/events?created_from=2026-02-02&created_to=2026-02-01", "created_to"),
        ("/admin/tenants/acme/events/not-a-uuid", "event_id"),
    ] {
        let page = b.get(path).await;
        assert_eq!(page.status, 400, "GET {path}: {}", page.text);
        assert!(page.text.contains(field), "GET {path} names {field}: {}", page.text);
    }
    let long = "a".repeat(65);
    assert_eq!(b.get(&format!("/admin/records?q={long}")).await.status, 400, "a search term has a bound");
}

async fn corrections_and_closed_periods_show_as_such(backend: Backend) {
    // Monthly periods from the 15th: 2026-10-15 to 2026-11-15 (to be closed), then the current one.
    let app = TestApp::spawn_at(backend, "2026-11-10T12:00:00Z").await;
    app.put_plan("pro", json!([limit("api_calls", Some(1000), "hard", "month")])).await;
    app.put_tenant("acme").await;
    app.subscribe("acme", "pro", Some("2026-10-15T00:00:00Z")).await;
    app.record("acme", "api_calls", 5).await;
    app.set_now(NOW);
    app.record("acme", "api_calls", 3).await;
    let corrected = app
        .post(
            "/v1/tenants/acme/usage/corrections",
            &json!({"metric_code": "api_calls", "amount": -1, "reason": "refund <b>x</b>", "timestamp": "2026-11-10T13:00:00Z"}),
        )
        .await
        .ok(200);
    assert_eq!(corrected["kind"], "correction", "{corrected}");
    let correction_id = corrected["event_id"].as_str().expect("event id").to_owned();
    let closed =
        app.post("/v1/tenants/acme/periods/close", &json!({"before": "2026-11-15T00:00:00Z"})).await.ok(200);
    assert_eq!(closed["closed"], 1, "{closed}");
    app.set_admin_password(PASSWORD).await;
    let mut b = signed_in(&app).await;

    let events = b.html("/admin/events?tenant_id=acme").await;
    assert_eq!(rows(&events, "event-row"), 3, "{events}");
    assert_eq!(events.matches(r#"data-kind="correction""#).count(), 1, "{events}");
    assert_eq!(events.matches(r#"data-kind="usage""#).count(), 2, "{events}");
    let row_at = events.find(r#"data-kind="correction""#).expect("the correction's row");
    let row = events[row_at..].split("</tr>").next().expect("row");
    assert!(row.contains(r#"<span class="badge kind-correction">correction</span>"#), "{row}");
    assert!(row.contains("refund &lt;b&gt;x&lt;/b&gt;"), "the reason is text: {row}");
    assert!(row.contains("-1"), "{row}");
    assert!(!events.contains("<b>x</b>"), "nothing from the reason is markup");

    let detail = b.html(&format!("/admin/tenants/acme/events/{correction_id}")).await;
    assert!(detail.contains(r#"<dd id="kind" data-kind="correction">"#), "{detail}");
    assert!(detail.contains(r#"<dd id="reason">refund &lt;b&gt;x&lt;/b&gt;</dd>"#), "{detail}");
    assert!(!detail.contains("<b>x</b>"));

    let page = b.html("/admin/tenants/acme").await;
    assert_eq!(rows(&page, "period-row"), 2, "{page}");
    let row_of = |page: &str, state: &str| -> String {
        let at = page
            .find(&format!(r#"data-metric="api_calls" data-state="{state}""#))
            .unwrap_or_else(|| panic!("a {state} period in {page}"));
        page[at..].split("</tr>").next().expect("row").to_owned()
    };
    let past = row_of(&page, "closed");
    assert!(past.contains("2026-10-15 00:00:00 UTC to 2026-11-15 00:00:00 UTC"), "{past}");
    assert!(past.contains("4 of 1,000 (hard)"), "5 less the correction: {past}");
    assert!(
        past.contains(r#"<span class="badge period-closed">closed</span> 2026-11-29 10:00:00 UTC"#),
        "{past}"
    );
    let current = row_of(&page, "open");
    assert!(current.contains("2026-11-15 00:00:00 UTC to 2026-12-15 00:00:00 UTC"), "{current}");
    assert!(
        current.contains("3 of 1,000 (hard)") && current.contains("<td class=\"state\">open</td>"),
        "{current}"
    );

    app.set_now("2026-11-29T11:00:00Z");
    app.post(
        "/v1/tenants/acme/periods/reopen",
        &json!({"metric_code": "api_calls", "period_start": "2026-10-15T00:00:00Z", "reason": "late invoice fix"}),
    )
    .await
    .ok(200);
    let page = b.html("/admin/tenants/acme").await;
    let reopened = row_of(&page, "reopened");
    assert!(reopened.contains("2026-10-15 00:00:00 UTC to 2026-11-15 00:00:00 UTC"), "{reopened}");
    assert!(
        reopened.contains(r#"<span class="badge period-reopened">reopened</span> 2026-11-29 11:00:00 UTC"#),
        "{reopened}"
    );
    assert!(!page.contains(r#"data-state="closed""#), "{page}");
}

store_tests!(
    anonymous_pages_redirect_to_the_sign_in_page,
    signing_in_with_the_password_sets_a_strict_http_only_session_cookie,
    the_configured_and_stored_admin_keys_sign_in_and_a_tenant_key_does_not,
    a_wrong_password_is_refused_without_a_session,
    a_sign_in_without_its_form_token_is_refused,
    logging_out_ends_the_session_on_the_server,
    the_admin_pages_are_read_only,
    records_filter_search_sort_and_paginate,
    events_filter_search_paginate_and_show_their_metadata_as_text,
    the_tenant_page_draws_usage_against_the_limit,
    the_tenant_page_shows_a_gauge_as_a_level_against_its_limit,
    the_plan_pages_show_limits_versions_and_subscribers,
    the_webhook_pages_show_each_delivery_with_its_status_and_attempts,
    bad_filters_answer_a_400_page_that_names_the_field,
    corrections_and_closed_periods_show_as_such,
);
