//! `tally serve` as a process: two instances sharing one PostgreSQL database never overshoot a
//! HARD limit, SIGTERM under load loses no acknowledged event, and a kill -9 between reserve
//! and commit loses no committed usage and leaks no held quota past its expiry, and a restart
//! delivers the webhook deliveries that were pending.
#![allow(clippy::unwrap_used)] // Integration tests: a failed unwrap is a failed test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::Connection;

const TALLY: &str = env!("CARGO_BIN_EXE_tally");
const ADMIN_KEY: &str = "process-test-admin-key";

fn pg_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tally_test?sslmode=disable".to_owned())
}

struct Server {
    child: Child,
    base_url: String,
}

impl Drop for Server {
    /// A test that fails before stopping its server must not leave the process running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `tally serve` on a free port and waits for its "listening" log line.
    fn start(envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(TALLY);
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("TALLY_ADMIN_KEY", ADMIN_KEY)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tally serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let base_url = loop {
            let line = lines.next().expect("tally serve exited before listening").expect("read stderr");
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().expect("an address").to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, base_url }
    }

    /// `kill -9`: no shutdown, no flush, nothing but what was committed survives.
    fn crash(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait for tally serve");
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(status.success());
        self.child.wait().expect("wait for tally serve")
    }
}

async fn put(client: &reqwest::Client, url: String, body: serde_json::Value) {
    let resp = client.put(url).bearer_auth(ADMIN_KEY).json(&body).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
}

async fn setup(client: &reqwest::Client, base: &str, limit: i64) {
    let plan = serde_json::json!({"name": "Pro", "limits": [{"metric_code": "api_calls", "limit": limit, "enforcement": "hard"}]});
    put(client, format!("{base}/v1/plans/pro"), plan).await;
    put(client, format!("{base}/v1/tenants/acme"), serde_json::json!({"name": "Acme"})).await;
    put(client, format!("{base}/v1/tenants/acme/subscription"), serde_json::json!({"plan_code": "pro"}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_server_processes_on_one_postgres_never_overshoot_a_hard_limit() {
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&pg_url()).await.expect("PostgreSQL must be reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\""))).execute(&mut conn).await.unwrap();
    let url = pg_url();
    let envs = [("TALLY_DATABASE_URL", url.as_str()), ("TALLY_PG_SCHEMA", schema.as_str())];
    let a = Server::start(&envs);
    let b = Server::start(&envs);
    let client = reqwest::Client::new();
    setup(&client, &a.base_url, 500).await;

    let accepted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let base = if i % 2 == 0 { a.base_url.clone() } else { b.base_url.clone() };
        let (client, accepted, refused) = (client.clone(), accepted.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let resp = client
                    .post(format!("{base}/v1/tenants/acme/usage"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&serde_json::json!({"metric_code": "api_calls", "amount": 1}))
                    .send()
                    .await
                    .unwrap();
                match resp.status().as_u16() {
                    200 => accepted.fetch_add(1, Ordering::Relaxed),
                    429 => refused.fetch_add(1, Ordering::Relaxed),
                    other => panic!("unexpected {other}: {}", resp.text().await.unwrap()),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 500);
    assert_eq!(refused.load(Ordering::Relaxed), 140);
    let usage: serde_json::Value = client
        .get(format!("{}/v1/tenants/acme/usage", b.base_url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["metrics"][0]["current_usage"], 500);
    let events: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".quota_usage_event"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(events, 500);
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    let verify = Command::new(TALLY).arg("verify").envs(envs).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_finishes_in_flight_requests_and_loses_no_acknowledged_event() {
    let dir = std::env::temp_dir().join(format!("tally-proc-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db_url = format!("sqlite://{}", dir.join("tally.db").display());
    let server = Server::start(&[("TALLY_DATABASE_URL", db_url.as_str())]);
    let client = reqwest::Client::new();
    setup(&client, &server.base_url, 1_000_000).await;

    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (client, acked, stop, base) =
            (client.clone(), acked.clone(), stop.clone(), server.base_url.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = serde_json::json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": format!("w{worker}-{n}")});
                let sent = client.post(format!("{base}/v1/tenants/acme/usage")).bearer_auth(ADMIN_KEY).json(&body).send().await;
                match sent {
                    Ok(resp) if resp.status() == 200 => {
                        let v: serde_json::Value = resp.json().await.unwrap();
                        acked.lock().unwrap().push(v["event_id"].as_str().unwrap().to_owned());
                    }
                    // Once the server stops accepting, requests fail: the worker is done.
                    Ok(resp) if resp.status() == 503 => break,
                    Ok(resp) => panic!("unexpected {}", resp.status()),
                    Err(_) => break,
                }
            }
        }));
    }
    // Let load build up, then ask the server to stop while requests are in flight.
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(status.success(), "exit status {status:?}");
    let acked = acked.lock().unwrap().clone();
    let mut conn = sqlx::SqliteConnection::connect(&db_url).await.unwrap();
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT id FROM quota_usage_event").fetch_all(&mut conn).await.unwrap();
    let stored: std::collections::HashSet<String> = stored.into_iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(missing.is_empty(), "{} acknowledged events were lost", missing.len());
    assert!(acked.len() >= 200);
    assert_eq!(stored.len(), acked.len(), "every stored event was acknowledged: in-flight requests finished");
}

/// The output lines of a process, kept as they come, from both stdout and stderr (stderr
/// lines prefixed `stderr: `). Waiting for one line never loses another: the two pipes are
/// read by two threads, so their lines may arrive in either order.
struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    /// The first line (seen before or arriving within 60 s) that `pick` accepts.
    fn wait<T>(&mut self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        if let Some(found) = self.seen.iter().find_map(|l| pick(l)) {
            return found;
        }
        loop {
            let line =
                self.rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("{what} never came"));
            self.seen.push(line.clone());
            if let Some(found) = pick(&line) {
                return found;
            }
        }
    }

    /// The rest of the line that starts with `prefix`.
    fn after(&mut self, prefix: &str) -> String {
        self.wait(prefix, |l| l.strip_prefix(prefix).map(|rest| rest.trim().to_owned()))
    }
}

/// Starts a process and returns it with its output lines as they come.
fn spawn_with_stdout(args: &[&str], envs: &[(&str, &str)]) -> (Child, Lines) {
    let mut cmd = Command::new(TALLY);
    cmd.args(args)
        .env_remove("TALLY_ADMIN_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start tally");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx_err.send(format!("stderr: {line}"));
        }
    });
    (child, Lines { rx, seen: Vec::new() })
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    child.wait().expect("wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_a_url_and_keys_that_work_with_its_curl_calls() {
    let (mut child, mut lines) = spawn_with_stdout(&["demo", "--listen", "127.0.0.1:0"], &[]);
    let url = lines.after("url: ");
    let admin = lines.after("admin key: ");
    let tenant_line = lines.after("tenant key (");
    let (tenant, key) = tenant_line.split_once("): ").expect("tenant key (T): KEY");
    let client = reqwest::Client::new();
    let recorded = client
        .post(format!("{url}/v1/tenants/{tenant}/usage"))
        .bearer_auth(key)
        .json(&serde_json::json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": "demo-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(recorded.status(), 200);
    let usage: serde_json::Value = client
        .get(format!("{url}/v1/tenants/{tenant}/usage"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["metrics"].as_array().unwrap().len(), 3);
    let tenants: serde_json::Value = client
        .get(format!("{url}/v1/tenants?limit=1000"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tenants["tenants"].as_array().unwrap().len(), 51);
    let plans: serde_json::Value =
        client.get(format!("{url}/v1/plans")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
    let codes: Vec<&str> =
        plans["plans"].as_array().unwrap().iter().map(|p| p["plan_code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["enterprise", "free", "pro"]);
    // Usage spreads over past periods: history has more than the current record.
    let history: serde_json::Value = client
        .get(format!("{url}/v1/tenants/{tenant}/usage/storage_bytes/history"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(history["records"].as_array().unwrap().len() >= 3, "{history}");
    let docs = client.get(format!("{url}/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(sigterm(&mut child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_without_an_admin_key_creates_one_and_prints_it_once() {
    let dir = std::env::temp_dir().join(format!("tally-proc-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db_url = format!("sqlite://{}", dir.join("tally.db").display());
    let envs = [("TALLY_DATABASE_URL", db_url.as_str()), ("TALLY_LOG_FORMAT", "json")];
    let (mut first, mut lines) = spawn_with_stdout(&["serve", "--listen", "127.0.0.1:0"], &envs);
    let key = lines.after("admin key: ");
    // The log line of the start, as JSON: address, store and schema version.
    let log = lines.wait("the start log line", |line| {
        line.strip_prefix("stderr: ")
            .filter(|json| json.contains("listening on"))
            .map(|json| serde_json::from_str::<serde_json::Value>(json).expect("a JSON log line"))
    });
    let address = log["fields"]["address"].as_str().expect("the address is logged").to_owned();
    assert!(log["fields"]["store"].as_str().unwrap().starts_with("sqlite"));
    assert!(log["fields"]["schema_version"].as_i64().unwrap() >= 1);
    let client = reqwest::Client::new();
    let plans = client.get(format!("http://{address}/v1/plans")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(plans.status(), 200);
    assert!(sigterm(&mut first).success());
    // Only its hash was kept; a second start prints no key.
    let stored = Command::new(TALLY)
        .args(["keys", "list", "--json"])
        .env("TALLY_DATABASE_URL", &db_url)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&stored.stdout);
    assert!(!listed.contains(&key));
    assert!(listed.contains("\"scope\": \"admin\""));
    let (mut second, mut lines) = spawn_with_stdout(&["serve", "--listen", "127.0.0.1:0"], &envs);
    lines.wait("the second start's log line", |line| line.contains("listening on").then_some(()));
    assert!(!lines.seen.iter().any(|l| l.starts_with("admin key: ")), "a second start printed a key");
    assert!(sigterm(&mut second).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_with_the_cli_stops_working_on_every_instance_within_a_second() {
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&pg_url()).await.expect("PostgreSQL must be reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\""))).execute(&mut conn).await.unwrap();
    let url = pg_url();
    let envs = [("TALLY_DATABASE_URL", url.as_str()), ("TALLY_PG_SCHEMA", schema.as_str())];
    let a = Server::start(&envs);
    let b = Server::start(&envs);
    let client = reqwest::Client::new();
    setup(&client, &a.base_url, 1_000).await;
    let created =
        Command::new(TALLY).args(["keys", "create", "--tenant", "acme"]).envs(envs).output().unwrap();
    assert!(created.status.success());
    let text = String::from_utf8_lossy(&created.stdout).into_owned();
    let key = text.lines().last().unwrap().to_owned();
    let id = text.lines().next().unwrap().trim_start_matches("id: ").to_owned();
    let usage_status = |base: String, key: String, client: reqwest::Client| async move {
        client
            .get(format!("{base}/v1/tenants/acme/usage"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // Both instances know the key (and cache it).
    for base in [&a.base_url, &b.base_url] {
        assert_eq!(usage_status(base.clone(), key.clone(), client.clone()).await, 200);
    }
    let revoked = Command::new(TALLY).args(["keys", "revoke", &id]).envs(envs).output().unwrap();
    assert!(revoked.status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    for base in [&a.base_url, &b.base_url] {
        while usage_status(base.clone(), key.clone(), client.clone()).await != 401 {
            assert!(std::time::Instant::now() < deadline, "the revoked key still worked on {base} after 1 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

async fn post_json(
    client: &reqwest::Client,
    url: String,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = client.post(url).bearer_auth(ADMIN_KEY).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Reserves and commits one hold, reserves a second and crashes the server before its commit;
/// after a restart the commit is there, the second hold still counts until it expires, and
/// from its expiry on its quota is free again, with the sweeper marking it expired.
async fn crash_between_reserve_and_commit(envs: &[(&str, &str)], status_sql: &str) {
    const TTL_SECONDS: u64 = 3;
    let server = Server::start(envs);
    let client = reqwest::Client::new();
    setup(&client, &server.base_url, 1000).await;
    let reservations = format!("{}/v1/tenants/acme/reservations", server.base_url);
    let (status, first) = post_json(
        &client,
        reservations.clone(),
        serde_json::json!({"metric_code": "api_calls", "amount": 400}),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    let commit = format!("{reservations}/{}/commit", first["reservation_id"].as_str().unwrap());
    let (status, committed) = post_json(&client, commit, serde_json::json!({"amount": 300})).await;
    assert_eq!((status, committed["current_usage"].as_i64()), (200, Some(300)), "{committed}");
    let body = serde_json::json!({"metric_code": "api_calls", "amount": 600, "ttl_seconds": TTL_SECONDS});
    let (status, held) = post_json(&client, reservations, body).await;
    assert_eq!((status, held["remaining"].as_i64()), (201, Some(100)), "{held}");
    let held_id = held["reservation_id"].as_str().unwrap().to_owned();
    let expires_at = chrono::DateTime::parse_from_rfc3339(held["expires_at"].as_str().unwrap()).unwrap();
    server.crash();

    let server = Server::start(envs);
    let usage = format!("{}/v1/tenants/acme/usage", server.base_url);
    let one = |amount: i64| serde_json::json!({"metric_code": "api_calls", "amount": amount});
    // The hold survived the crash: 101 more do not fit while it is open.
    if chrono::Utc::now() < expires_at - chrono::Duration::milliseconds(500) {
        let (status, refused) = post_json(&client, usage.clone(), one(101)).await;
        assert_eq!(status, 429, "{refused}");
    }
    // From its expiry on, its quota is free, and the sweeper marks it without a request.
    let wait = (expires_at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(2_500)).await;
    let status_now: String = if envs.iter().any(|(_, v)| v.starts_with("postgres")) {
        let mut conn = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
        sqlx::query_scalar(sqlx::AssertSqlSafe(status_sql.to_owned()))
            .bind(held_id.clone())
            .fetch_one(&mut conn)
            .await
            .unwrap()
    } else {
        let url = envs.iter().find(|(k, _)| *k == "TALLY_DATABASE_URL").map(|(_, v)| *v).unwrap();
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sqlx::AssertSqlSafe(status_sql.to_owned()))
            .bind(held_id.clone())
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(status_now, "expired");
    let (status, fits) = post_json(&client, usage.clone(), one(700)).await;
    assert_eq!((status, fits["current_usage"].as_i64()), (200, Some(1000)), "{fits}");
    assert!(server.terminate().success());
    let verify = Command::new(TALLY).arg("verify").envs(envs.iter().copied()).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_reserve_and_commit_loses_nothing_and_leaks_no_quota_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("tally-proc-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db_url = format!("sqlite://{}", dir.join("tally.db").display());
    crash_between_reserve_and_commit(
        &[("TALLY_DATABASE_URL", db_url.as_str())],
        "SELECT status FROM tally_reservation WHERE id = ?1",
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_reserve_and_commit_loses_nothing_and_leaks_no_quota_on_postgres() {
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&pg_url()).await.expect("PostgreSQL must be reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\""))).execute(&mut conn).await.unwrap();
    let url = pg_url();
    let sql = format!("SELECT status FROM \"{schema}\".tally_reservation WHERE id = $1::uuid");
    crash_between_reserve_and_commit(
        &[("TALLY_DATABASE_URL", url.as_str()), ("TALLY_PG_SCHEMA", schema.as_str())],
        &sql,
    )
    .await;
}

// Shared with the API tests, which use all of it.
#[path = "api/receiver.rs"]
#[allow(dead_code)]
mod receiver;

async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    let resp = client.get(url).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert!(resp.status().is_success());
    resp.json().await.unwrap()
}

/// A crossing is recorded while its receiver is down; the server is killed while the
/// delivery waits for its next attempt; once the receiver is up and the server restarted, the
/// pending delivery arrives, with the id it had before the crash.
async fn a_restart_delivers_what_was_pending(envs: &[(&str, &str)]) {
    // A port nobody listens on yet: attempts fail with no answer until the receiver starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut envs = envs.to_vec();
    envs.extend([("TALLY_WEBHOOK_RETRY_INITIAL", "300ms"), ("TALLY_WEBHOOK_RETRY_MAX_DELAY", "300ms")]);
    let server = Server::start(&envs);
    let client = reqwest::Client::new();
    setup(&client, &server.base_url, 100).await;
    let hook = serde_json::json!({"url": format!("http://127.0.0.1:{port}/hook"), "thresholds": [50]});
    put(&client, format!("{}/v1/webhooks/ops", server.base_url), hook).await;
    let usage = format!("{}/v1/tenants/acme/usage", server.base_url);
    let (status, _) =
        post_json(&client, usage, serde_json::json!({"metric_code": "api_calls", "amount": 60})).await;
    assert_eq!(status, 200);
    let log = format!("{}/v1/webhooks/ops/deliveries", server.base_url);
    let pending = loop {
        let page = get_json(&client, log.clone()).await;
        let d = page["deliveries"][0].clone();
        if d["attempts"].as_i64().unwrap_or(0) >= 1 {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (&pending["status"], &pending["last_response_code"]),
        (&serde_json::json!("pending"), &serde_json::Value::Null)
    );
    server.crash();

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let receiver = receiver::Receiver::start_on(listener, false).await;
    let server = Server::start(&envs);
    let hits = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(hits[0].header("tally-delivery-id"), pending["id"].as_str());
    let log = format!("{}/v1/webhooks/ops/deliveries", server.base_url);
    let delivered = loop {
        let page = get_json(&client, log.clone()).await;
        if page["deliveries"][0]["status"] == "delivered" {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(delivered["deliveries"].as_array().unwrap().len(), 1);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_delivers_the_pending_webhook_deliveries_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("tally-proc-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db_url = format!("sqlite://{}", dir.join("tally.db").display());
    a_restart_delivers_what_was_pending(&[("TALLY_DATABASE_URL", db_url.as_str())]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_delivers_the_pending_webhook_deliveries_on_postgres() {
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&pg_url()).await.expect("PostgreSQL must be reachable");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\""))).execute(&mut conn).await.unwrap();
    let url = pg_url();
    a_restart_delivers_what_was_pending(&[
        ("TALLY_DATABASE_URL", url.as_str()),
        ("TALLY_PG_SCHEMA", schema.as_str()),
    ])
    .await;
}

/// Runs a CLI command on `db_url` to its end: (exit code, stdout, stderr).
fn cli(db_url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(TALLY)
        .args(args)
        .env("TALLY_DATABASE_URL", db_url)
        .env("TALLY_ADMIN_KEY", ADMIN_KEY)
        .stdin(Stdio::null())
        .output()
        .expect("run tally");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One `tally serve` owns an SQLite file's write side: a second is refused at start (exit 2,
/// one line naming the file), while `tally record` keeps writing to the file directly, during
/// HTTP load, without overshooting a HARD limit or leaving drift. Once the first server has
/// stopped, the file can be served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_serve_on_one_sqlite_file_is_refused_and_cli_writes_beside_the_first_never_overshoot() {
    const LIMIT: i64 = 60;
    let dir = std::env::temp_dir().join(format!("tally-proc-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tally.db");
    let db_url = format!("sqlite://{}", file.display());
    let server = Server::start(&[("TALLY_DATABASE_URL", db_url.as_str())]);
    let client = reqwest::Client::new();
    setup(&client, &server.base_url, LIMIT).await;

    let (code, _, stderr) = cli(&db_url, &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(&file.display().to_string()), "names the file: {stderr}");

    // HTTP writers and CLI writers on the same metric, together past the limit.
    let accepted_http = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (client, base, accepted) = (client.clone(), server.base_url.clone(), accepted_http.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..20 {
                let body = serde_json::json!({"metric_code": "api_calls", "amount": 1, "idempotency_key": format!("h{worker}-{n}")});
                let resp = client
                    .post(format!("{base}/v1/tenants/acme/usage"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                match resp.status().as_u16() {
                    200 => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    429 => {}
                    other => panic!("unexpected {other}: {}", resp.text().await.unwrap()),
                }
            }
        }));
    }
    let cli_url = db_url.clone();
    let cli_task = tokio::task::spawn_blocking(move || {
        let mut accepted = 0;
        for n in 0..20 {
            let key = format!("c-{n}");
            let (code, out, err) = cli(&cli_url, &["record", "acme", "api_calls", "1", "--key", &key]);
            match code {
                0 => accepted += 1,
                1 => {}
                _ => panic!("tally record failed ({code}): {out}{err}"),
            }
        }
        accepted
    });
    for t in tasks {
        t.await.unwrap();
    }
    let accepted_cli: i64 = cli_task.await.unwrap();
    let accepted = i64::try_from(accepted_http.load(Ordering::Relaxed)).unwrap() + accepted_cli;
    assert_eq!(accepted, LIMIT, "100 requests of 1 against {LIMIT}: exactly the limit is accepted");
    let usage: serde_json::Value = client
        .get(format!("{}/v1/tenants/acme/usage", server.base_url))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let current = usage["metrics"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["metric_code"] == "api_calls"))
        .map(|m| m["current_usage"].as_i64().unwrap());
    assert_eq!(current, Some(LIMIT), "{usage}");
    let (code, out, err) = cli(&db_url, &["verify"]);
    assert_eq!(code, 0, "verify: {out}{err}");

    assert!(server.terminate().success());
    let again = Server::start(&[("TALLY_DATABASE_URL", db_url.as_str())]);
    assert!(again.terminate().success());
}
