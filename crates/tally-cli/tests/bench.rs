//! `tally bench` against the real server binary on a temporary SQLite file: an overshoot run
//! with a small HARD limit, a batch run, and a `--mode check` run. Every figure the bench
//! reports about accepted events is compared with the event rows in the database.
#![allow(clippy::unwrap_used)] // Integration tests: a failed unwrap is a failed test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use sqlx::Connection;

const TALLY: &str = env!("CARGO_BIN_EXE_tally");
const ADMIN_KEY: &str = "bench-test-admin-key";
const TENANTS: i64 = 20;
const METRICS: i64 = 5;
const LIMIT: i64 = 50;

struct Server {
    child: Child,
    base_url: String,
    db_url: String,
    dir: PathBuf,
}

impl Server {
    /// Starts `tally serve` on a free port and a fresh SQLite file, and waits for its
    /// "listening" log line.
    fn start() -> Server {
        let dir = std::env::temp_dir().join(format!("tally-bench-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let db_url = format!("sqlite://{}", dir.join("tally.db").display());
        let mut child = Command::new(TALLY)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("TALLY_ADMIN_KEY", ADMIN_KEY)
            .env("TALLY_DATABASE_URL", &db_url)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tally serve");
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
        Server { child, base_url, db_url, dir }
    }

    /// Runs `tally bench` against this server; returns the exit code and the JSON report.
    fn bench(&self, args: &[&str]) -> (i32, Value) {
        let out = Command::new(TALLY)
            .arg("bench")
            .args(["--url", &self.base_url, "--json"])
            .args(args)
            .env("TALLY_ADMIN_KEY", ADMIN_KEY)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bench printed no JSON ({e}); stderr:\n{stderr}"));
        (out.status.code().unwrap(), report)
    }

    /// (event rows, sum of their amounts) of one run's tenants, straight from the database.
    async fn events_in_db(&self, run_id: &str) -> (i64, i64) {
        let mut conn = sqlx::SqliteConnection::connect(&self.db_url).await.unwrap();
        sqlx::query_as(
            "SELECT count(*), coalesce(sum(amount), 0) FROM quota_usage_event WHERE tenant_id LIKE ?",
        )
        .bind(format!("bench-{run_id}-%"))
        .fetch_one(&mut conn)
        .await
        .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn status(report: &Value, code: &str) -> i64 {
    report["status"][code].as_i64().unwrap_or(0)
}

fn assert_checks_pass(report: &Value) {
    let checks = &report["checks"];
    assert_eq!(checks["no_overshoot"], true, "{checks}");
    assert_eq!(checks["accepted_equals_recorded"], true, "{checks}");
    assert_eq!(checks["no_false_refusal"], true, "{checks}");
    assert_eq!(checks["pairs_checked"], TENANTS * METRICS, "{checks}");
    assert_eq!(checks["details"].as_array().unwrap().len(), 0, "{checks}");
}

/// 2000 requests of amount 5 spread evenly over 20 tenants × 5 metrics: 20 requests (100) per
/// pair against a HARD limit of 50, so every pair saturates at exactly 10 accepted requests
/// and every request beyond is refused, whatever the interleaving.
#[tokio::test]
async fn a_small_hard_limit_is_never_overshot_and_accepted_equals_recorded() {
    let server = Server::start();
    let (code, report) = server.bench(&[
        "--requests",
        "2000",
        "--connections",
        "16",
        "--tenants",
        "20",
        "--limit",
        "50",
        "--amount",
        "5",
        "--warmup",
        "0",
        "--run-id",
        "overshoot",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_checks_pass(&report);
    assert_eq!(report["requests"], 2000);
    let saturated_amount = TENANTS * METRICS * LIMIT;
    assert_eq!(report["accepted_amount"], saturated_amount, "every pair is saturated");
    assert_eq!(report["accepted_events"], saturated_amount / 5);
    assert_eq!(status(&report, "200"), saturated_amount / 5);
    assert_eq!(status(&report, "429"), 2000 - saturated_amount / 5);
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(report["requests_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(report["settings"]["limit"], 50);
    assert_eq!(server.events_in_db("overshoot").await, (saturated_amount / 5, saturated_amount));
}

/// Reserve+commit pairs against the same saturating HARD limit: 2000 holds of 5, 10 per pair
/// held and committed, the rest refused (429) at the hold; every commit is an event.
#[tokio::test]
async fn reserve_and_commit_pairs_never_overshoot_and_each_commit_is_an_event() {
    let server = Server::start();
    let (code, report) = server.bench(&[
        "--mode",
        "reserve",
        "--requests",
        "2000",
        "--connections",
        "16",
        "--tenants",
        "20",
        "--limit",
        "50",
        "--amount",
        "5",
        "--warmup",
        "0",
        "--run-id",
        "reserve",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_checks_pass(&report);
    let saturated_amount = TENANTS * METRICS * LIMIT;
    assert_eq!(report["accepted_amount"], saturated_amount, "every pair is saturated");
    assert_eq!(report["accepted_events"], saturated_amount / 5);
    // A held unit answers 201 then 200; a refused one 429 at the hold.
    assert_eq!(status(&report, "201"), saturated_amount / 5);
    assert_eq!(status(&report, "200"), saturated_amount / 5);
    assert_eq!(status(&report, "429"), 2000 - saturated_amount / 5);
    assert_eq!(server.events_in_db("reserve").await, (saturated_amount / 5, saturated_amount));
}

/// Batches of 10: each pair is sent 50 events of amount 2 (100) against the limit of 50, so
/// 25 items per pair are accepted and 25 refused inside 200 answers.
#[tokio::test]
async fn batches_are_checked_item_by_item() {
    let server = Server::start();
    let (code, report) = server.bench(&[
        "--requests",
        "500",
        "--batch-size",
        "10",
        "--connections",
        "8",
        "--tenants",
        "20",
        "--limit",
        "50",
        "--amount",
        "2",
        "--warmup",
        "0",
        "--idempotency",
        "retry",
        "--run-id",
        "batch",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_checks_pass(&report);
    assert_eq!(report["checks"]["idempotent_replays"], true);
    assert!(report["replays"]["sent"].as_i64().unwrap() > 0, "{report}");
    assert_eq!(status(&report, "200"), 500 + report["replays"]["sent"].as_i64().unwrap());
    let accepted = TENANTS * METRICS * LIMIT / 2;
    assert_eq!(report["accepted_events"], accepted);
    assert_eq!(report["accepted_amount"], TENANTS * METRICS * LIMIT);
    let items = report["items"]["429"].as_i64().unwrap() + report["items"]["200"].as_i64().unwrap();
    assert!(items >= 5000, "every item answered: {report}");
    assert_eq!(server.events_in_db("batch").await, (accepted, TENANTS * METRICS * LIMIT));
}

/// `--mode check` records nothing: on fresh tenants every check is allowed; on a run whose
/// pairs are full (reused with --no-setup), every HARD check is refused, and still nothing is
/// recorded.
#[tokio::test]
async fn check_mode_records_nothing() {
    let server = Server::start();
    let (code, report) = server.bench(&[
        "--requests",
        "1000",
        "--mode",
        "check",
        "--connections",
        "16",
        "--tenants",
        "20",
        "--limit",
        "50",
        "--warmup",
        "0",
        "--run-id",
        "check",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_checks_pass(&report);
    assert_eq!(report["accepted_events"], 0);
    assert_eq!(report["check_answers"]["allowed"], 1000);
    assert_eq!(server.events_in_db("check").await, (0, 0));

    // Fill every pair, then check against the full ones without setting up again.
    let (code, report) = server.bench(&[
        "--requests",
        "200",
        "--tenants",
        "20",
        "--limit",
        "50",
        "--amount",
        "50",
        "--warmup",
        "0",
        "--no-setup",
        "--run-id",
        "check",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["accepted_amount"], TENANTS * METRICS * LIMIT);
    let (code, report) = server.bench(&[
        "--requests",
        "500",
        "--mode",
        "check",
        "--tenants",
        "20",
        "--limit",
        "50",
        "--warmup",
        "0",
        "--no-setup",
        "--run-id",
        "check",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_checks_pass(&report);
    assert_eq!(report["check_answers"]["refused"], 500);
    assert_eq!(server.events_in_db("check").await, (TENANTS * METRICS, TENANTS * METRICS * LIMIT));
}

/// `--mode healthz` measures the floor: every answer a 200 counted, nothing recorded; and
/// `--cpu-pid` reports the server's CPU time per measured request (a timed run: the CPU is
/// read at the start and the end of the measured window).
#[tokio::test]
async fn healthz_mode_counts_answers_and_reports_the_servers_cpu() {
    let server = Server::start();
    let pid = server.child.id().to_string();
    let (code, report) = server.bench(&[
        "--duration",
        "1",
        "--mode",
        "healthz",
        "--tenants",
        "20",
        "--warmup",
        "0",
        "--cpu-pid",
        &pid,
        "--run-id",
        "floor",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_checks_pass(&report);
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests > 0, "{report}");
    assert_eq!(report["status"]["200"].as_u64(), Some(requests), "{report}");
    assert_eq!(report["accepted_events"], 0);
    let cpu = report["cpu_us_per_request"]["server"].as_f64().expect("the server's CPU per request");
    assert!(cpu >= 0.0, "{report}");
    assert!(report["cpu_us_per_request"]["postgres"].is_null(), "{report}");
    assert_eq!(server.events_in_db("floor").await, (0, 0));
}

#[test]
fn bad_options_exit_2_with_a_reason() {
    for (args, needle) in [
        (&["--batch-size", "0"][..], "--batch-size"),
        (&["--mode", "check", "--batch-size", "5"], "--batch-size"),
        (&["--mode", "healthz", "--batch-size", "5"], "--batch-size"),
        (&["--mode", "reserve", "--idempotency", "retry"], "retry"),
        (&["--amount", "5..1"], "--amount"),
        (&["--url", "https://example.com"], "https"),
    ] {
        let out =
            Command::new(TALLY).arg("bench").args(args).env("TALLY_ADMIN_KEY", ADMIN_KEY).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
