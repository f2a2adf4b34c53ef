//! Per-key rate limits (issue 19, section 4; API.md "Additions (2026-12)"): the server's
//! defaults for tenant and admin keys, a key's own limit winning over them both ways, 429
//! `rate_limited` with `Retry-After` and the `RateLimit-*` headers, answered before the body
//! is read and recording nothing, the exempt operations routes, the refill, the metrics
//! counter, and `tally serve` refusing a bad flag.
//!
//! Counts are exact: the limits are per minute (a token comes back every 30 s at `2/m`), so
//! a test's requests all fall within one bucket's burst; only the refill test uses `/s`.
#![allow(clippy::unwrap_used)] // a test: a missing member is a failure

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::sync::RwLock;

use crate::helpers::{ADMIN_KEY, Auth, Backend, Reply, TestApp, limit};

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

/// `tally_rate_limited_total` is one counter for the whole test process: the test that checks
/// its value holds this exclusively, every other test that is answered 429 holds it shared.
static METRICS: RwLock<()> = RwLock::const_new(());

const USAGE: &str = "/v1/tenants/acme/usage";

/// A server with these defaults, tenant `acme` on a plan of a million `api_calls` a month,
/// and a tenant key. The setup goes through a stored admin key with a limit of its own far
/// above the default, so the configured admin key's bucket is untouched.
async fn app_with(
    backend: Backend,
    tenant_default: Option<&str>,
    admin_default: Option<&str>,
) -> (TestApp, String) {
    let app = TestApp::spawn_rate_limited(backend, tenant_default, admin_default).await;
    let (_, setup) = app.stored_admin_key_with_limit("1000/m").await;
    setup_acme(&app, &setup).await;
    let (_, key) = app.tenant_key("acme").await;
    (app, key)
}

/// Tenant `acme` subscribed to plan `free`, made with the admin key `admin`.
async fn setup_acme(app: &TestApp, admin: &str) {
    let plan = json!({"name": "Free", "limits": [limit("api_calls", Some(1_000_000), "hard", "month")]});
    app.call(Method::PUT, "/v1/plans/free", Auth::Key(admin), Some(&plan)).await.ok(201);
    app.call(Method::PUT, "/v1/tenants/acme", Auth::Key(admin), Some(&json!({"name": "Acme"}))).await.ok(201);
    let sub = json!({"plan_code": "free"});
    app.call(Method::PUT, "/v1/tenants/acme/subscription", Auth::Key(admin), Some(&sub)).await.ok(200);
}

async fn get(app: &TestApp, path: &str, auth: Auth<'_>) -> Reply {
    app.call(Method::GET, path, auth, None).await
}

/// Asserts a 429 `rate_limited` with its headers for a limit of `count` per unit; returns
/// the seconds of `Retry-After`.
#[track_caller]
fn assert_limited(r: &Reply, count: u32) -> u64 {
    r.problem(429, "rate_limited");
    let secs = |name: &str| -> u64 {
        r.header(name)
            .unwrap_or_else(|| panic!("{}: no {name} header: {:?}", r.what, r.headers))
            .parse()
            .unwrap_or_else(|e| panic!("{}: {name} is not whole seconds: {e}", r.what))
    };
    let retry_after = secs("retry-after");
    assert!(retry_after >= 1, "{}: Retry-After {retry_after}", r.what);
    assert_eq!(secs("ratelimit-limit"), u64::from(count), "{}: RateLimit-Limit", r.what);
    assert_eq!(secs("ratelimit-remaining"), 0, "{}: RateLimit-Remaining", r.what);
    let reset = secs("ratelimit-reset");
    assert!(reset >= 1 && reset <= retry_after.max(1), "{}: RateLimit-Reset {reset}", r.what);
    retry_after
}

/// Sends `n` GETs of `path`, each of which must answer 200.
async fn all_ok(app: &TestApp, path: &str, auth: Auth<'_>, n: usize) {
    for i in 0..n {
        let r = get(app, path, auth).await;
        assert_eq!(r.status, 200, "request {} of {n}: {} {}", i + 1, r.what, r.text);
    }
}

async fn the_burst_plus_one_th_request_of_a_tenant_key_is_rate_limited(backend: Backend) {
    let _shared = METRICS.read().await;
    let (app, key) = app_with(backend, Some("2/m"), None).await;
    // Burst 4 (twice the rate).
    all_ok(&app, USAGE, Auth::Key(&key), 4).await;
    let r = get(&app, USAGE, Auth::Key(&key)).await;
    let retry_after = assert_limited(&r, 2);
    // One token every 30 s at 2/m.
    assert!((29..=30).contains(&retry_after), "Retry-After {retry_after}");
    assert!(r.json()["detail"].as_str().unwrap().contains("2/m"), "{}", r.text);
    // Every route that takes the key is limited, whatever its method.
    for (method, path) in [
        (Method::POST, "/v1/tenants/acme/usage/check"),
        (Method::GET, "/v1/tenants/acme/events"),
        (Method::GET, "/api/v1/customers/acme/current_usage"),
    ] {
        assert_limited(&app.call(method, path, Auth::Key(&key), None).await, 2);
    }
    // Another tenant key has its own bucket, and the admin key no limit at all.
    let (_, other) = app.tenant_key("acme").await;
    all_ok(&app, USAGE, Auth::Key(&other), 4).await;
    all_ok(&app, USAGE, Auth::Admin, 20).await;
    // Bad keys are still 401: authentication comes first.
    assert_eq!(get(&app, USAGE, Auth::Key("tk_unknown")).await.status, 401);
}

async fn a_key_s_own_limit_wins_over_the_default_both_ways(backend: Backend) {
    let _shared = METRICS.read().await;
    let (app, _) = app_with(backend, Some("2/m"), Some("2/m")).await;
    // Admin setup is done; from here on the configured admin key is not used.
    let (_, higher) = app.tenant_key_with_limit("acme", "10/m").await;
    let (_, lower) = app.tenant_key_with_limit("acme", "1/m").await;
    all_ok(&app, USAGE, Auth::Key(&higher), 20).await;
    assert_limited(&get(&app, USAGE, Auth::Key(&higher)).await, 10);
    all_ok(&app, USAGE, Auth::Key(&lower), 2).await;
    assert_limited(&get(&app, USAGE, Auth::Key(&lower)).await, 1);
    // The same for stored admin keys.
    let (_, admin_higher) = app.stored_admin_key_with_limit("5/m").await;
    let (_, admin_lower) = app.stored_admin_key_with_limit("1/m").await;
    all_ok(&app, "/v1/plans", Auth::Key(&admin_higher), 10).await;
    assert_limited(&get(&app, "/v1/plans", Auth::Key(&admin_higher)).await, 5);
    all_ok(&app, "/v1/plans", Auth::Key(&admin_lower), 2).await;
    assert_limited(&get(&app, "/v1/plans", Auth::Key(&admin_lower)).await, 1);
}

async fn a_key_s_own_limit_applies_with_the_flags_off(backend: Backend) {
    let _shared = METRICS.read().await;
    let (app, plain) = app_with(backend, None, None).await;
    let (_, own) = app.tenant_key_with_limit("acme", "1/m").await;
    all_ok(&app, USAGE, Auth::Key(&own), 2).await;
    assert_limited(&get(&app, USAGE, Auth::Key(&own)).await, 1);
    // Keys without a limit of their own are not limited at all.
    all_ok(&app, USAGE, Auth::Key(&plain), 30).await;
    all_ok(&app, USAGE, Auth::Admin, 30).await;
}

async fn the_admin_default_applies_to_admin_keys_only(backend: Backend) {
    let _shared = METRICS.read().await;
    // No setup through the configured admin key: its burst of 6 is counted from the start.
    let app = TestApp::spawn_rate_limited(backend, None, Some("3/m")).await;
    all_ok(&app, "/v1/plans", Auth::Admin, 6).await;
    assert_limited(&get(&app, "/v1/plans", Auth::Admin).await, 3);
    // A stored admin key has its own bucket under the same default: 3 writes, 3 reads.
    let (_, stored) = app.stored_admin_key().await;
    setup_acme(&app, &stored).await;
    all_ok(&app, "/v1/plans", Auth::Key(&stored), 3).await;
    assert_limited(&get(&app, "/v1/plans", Auth::Key(&stored)).await, 3);
    // Tenant keys are not limited by the admin default.
    let (_, tenant) = app.tenant_key("acme").await;
    all_ok(&app, USAGE, Auth::Key(&tenant), 20).await;
}

async fn health_readiness_and_metrics_are_never_limited(backend: Backend) {
    let _shared = METRICS.read().await;
    let app = TestApp::spawn_rate_limited(backend, Some("1/m"), Some("1/m")).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        for auth in [Auth::Anonymous, Auth::Admin] {
            all_ok(&app, path, auth, 10).await;
        }
    }
    // They took no token from the admin key either: its burst of 2 is whole.
    all_ok(&app, "/v1/plans", Auth::Admin, 2).await;
    assert_limited(&get(&app, "/v1/plans", Auth::Admin).await, 1);
    for path in ["/healthz", "/readyz", "/metrics"] {
        all_ok(&app, path, Auth::Admin, 3).await;
    }
}

async fn a_limited_key_works_again_once_a_token_is_back(backend: Backend) {
    let _shared = METRICS.read().await;
    let (app, key) = app_with(backend, Some("2/s"), None).await;
    // Burst 4 at 2/s: requests faster than 2 per second run out; stop at the first 429.
    let mut limited = None;
    for _ in 0..50 {
        let r = get(&app, USAGE, Auth::Key(&key)).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let limited = limited.expect("50 requests in a row never ran out of a 2/s bucket");
    let retry_after = assert_limited(&limited, 2);
    assert_eq!(retry_after, 1, "a token is back within half a second at 2/s");
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let r = get(&app, USAGE, Auth::Key(&key)).await;
    assert_eq!(r.status, 200, "after Retry-After: {}", r.text);
}

async fn a_limited_request_records_nothing_and_is_answered_before_its_body_is_read(backend: Backend) {
    let _shared = METRICS.read().await;
    let (app, key) = app_with(backend, Some("2/m"), None).await;
    for i in 0..4 {
        let body = json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": format!("k{i}")});
        app.call(Method::POST, USAGE, Auth::Key(&key), Some(&body)).await.ok(200);
    }
    let body = json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "k-limited"});
    assert_limited(&app.call(Method::POST, USAGE, Auth::Key(&key), Some(&body)).await, 2);
    let batch = json!({"events": [{"metric_code": "api_calls", "amount": 5}]});
    assert_limited(
        &app.call(Method::POST, "/v1/tenants/acme/usage/batch", Auth::Key(&key), Some(&batch)).await,
        2,
    );
    let reserve = json!({"metric_code": "api_calls", "amount": 1, "ttl_seconds": 60});
    assert_limited(
        &app.call(Method::POST, "/v1/tenants/acme/reservations", Auth::Key(&key), Some(&reserve)).await,
        2,
    );
    // The compatibility route too, before its body is looked at (this one is not valid).
    let r = app
        .call_raw(Method::POST, "/api/v1/events", Auth::Key(&key), Some("application/json"), "{".to_owned())
        .await;
    assert_limited(&r, 2);
    // A body that is not JSON at all is not read: 429, not 400.
    let r = app
        .call_raw(Method::POST, USAGE, Auth::Key(&key), Some("application/json"), "not json".to_owned())
        .await;
    assert_limited(&r, 2);
    // With `Expect: 100-continue` the server answers without asking for the body.
    let bearer = format!("Bearer {key}");
    let body = br#"{"metric_code": "api_calls", "amount": 1}"#;
    let (r, body_read) = app
        .call_expect_continue(
            "POST",
            USAGE,
            &[("authorization", bearer.as_str()), ("content-type", "application/json")],
            body,
        )
        .await;
    assert_limited(&r, 2);
    assert!(!body_read, "the body of a limited request was asked for");
    // Only the 4 accepted events exist.
    assert_eq!(app.current_usage("acme", "api_calls").await, 4);
    let events = app.all_events("acme").await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events.iter().all(|e| e["idempotency_key"] != "k-limited"), "{events:?}");
    assert!(
        app.get("/v1/tenants/acme/reservations").await.ok(200)["reservations"].as_array().unwrap().is_empty()
    );
}

/// `tally_rate_limited_total{scope}` in a `/metrics` text (0 when absent).
fn limited_total(metrics: &str, scope: &str) -> u64 {
    let prefix = format!("tally_rate_limited_total{{scope=\"{scope}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap_or_else(|e| panic!("{v:?}: {e}")) as u64)
}

async fn the_metrics_counter_moves_by_exactly_the_number_of_429s(backend: Backend) {
    let _exclusive = METRICS.write().await;
    let (app, key) = app_with(backend, Some("1/m"), Some("1/m")).await;
    let before = get(&app, "/metrics", Auth::Anonymous).await.text;
    assert!(before.contains("# TYPE tally_rate_limited_total counter"), "{before}");
    all_ok(&app, "/v1/plans", Auth::Admin, 2).await;
    for _ in 0..3 {
        assert_limited(&get(&app, "/v1/plans", Auth::Admin).await, 1);
    }
    all_ok(&app, USAGE, Auth::Key(&key), 2).await;
    for _ in 0..5 {
        assert_limited(&get(&app, USAGE, Auth::Key(&key)).await, 1);
    }
    let after = get(&app, "/metrics", Auth::Anonymous).await.text;
    assert_eq!(limited_total(&after, "tenant") - limited_total(&before, "tenant"), 5, "{after}");
    assert_eq!(limited_total(&after, "admin") - limited_total(&before, "admin"), 3, "{after}");
}

store_tests!(
    the_burst_plus_one_th_request_of_a_tenant_key_is_rate_limited,
    a_key_s_own_limit_wins_over_the_default_both_ways,
    a_key_s_own_limit_applies_with_the_flags_off,
    the_admin_default_applies_to_admin_keys_only,
    health_readiness_and_metrics_are_never_limited,
    a_limited_key_works_again_once_a_token_is_back,
    a_limited_request_records_nothing_and_is_answered_before_its_body_is_read,
    the_metrics_counter_moves_by_exactly_the_number_of_429s,
);

// ---------------------------------------------------------------------------------------
// The flags of `tally serve`, in a real process

fn tally(args: &[&str], db: &std::path::Path) -> Command {
    let mut cmd = Command::new(TALLY);
    cmd.args(args)
        .env("TALLY_DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("TALLY_ADMIN_KEY", ADMIN_KEY)
        .env_remove("TALLY_RATE_LIMIT_TENANT_KEY")
        .env_remove("TALLY_RATE_LIMIT_ADMIN_KEY")
        .env_remove("TALLY_CONFIG")
        .stdin(Stdio::null());
    cmd
}

fn temp_db() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tally-rl-{}.db", uuid::Uuid::now_v7().simple()))
}

#[test]
fn a_bad_rate_limit_flag_makes_serve_exit_2_with_one_line_naming_it() {
    let db = temp_db();
    for (flag, value) in [
        ("--rate-limit-tenant-key", "5/d"),
        ("--rate-limit-admin-key", "0/s"),
        ("--rate-limit-tenant-key", "lots"),
    ] {
        let out = tally(&["serve", "--listen", "127.0.0.1:0", flag, value], &db).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{flag} {value}: one line: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains(value), "{flag} {value}: {stderr}");
    }
    assert!(!db.exists(), "nothing was opened before the flags were read");
}

#[test]
fn print_config_shows_the_rate_limits() {
    let db = temp_db();
    let out = tally(&["serve", "--print-config"], &db).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("rate_limit_tenant_key = off"), "{stdout}");
    assert!(stdout.contains("rate_limit_admin_key = off"), "{stdout}");
    let out = tally(&["serve", "--print-config", "--rate-limit-tenant-key", "1000/s"], &db)
        .env("TALLY_RATE_LIMIT_ADMIN_KEY", "60/m")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#"rate_limit_tenant_key = "1000/s""#), "{stdout}");
    assert!(stdout.contains(r#"rate_limit_admin_key = "60/m""#), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_applies_the_admin_key_flag() {
    let _shared = METRICS.read().await;
    let db = temp_db();
    let mut child = tally(&["serve", "--listen", "127.0.0.1:0", "--rate-limit-admin-key", "1/m"], &db)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base_url = loop {
        let line = lines.next().expect("tally serve exited before listening").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = client.get(format!("{base_url}/v1/plans")).bearer_auth(ADMIN_KEY).send().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert_eq!(r.headers()["ratelimit-limit"], "1");
        }
    }
    let healthz = client.get(format!("{base_url}/healthz")).send().await.unwrap().status().as_u16();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&db);
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(healthz, 200);
}
