//! `tally serve` as a process: two instances sharing one PostgreSQL database never overshoot a
//! HARD limit, and SIGTERM under load loses no acknowledged event.
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
