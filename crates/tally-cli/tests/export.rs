//! `tally export usage` as a billing system runs it: the `tally` binary against a SQLite file
//! and against PostgreSQL in both tenancies, its rows in both formats, its filters, its
//! errors; then its memory on a generated database of many events (peak RSS ≤ 64 MiB), a
//! closed pipe, and the progress bar on a terminal.
//!
//! The PostgreSQL tests fail, never skip, when `TALLY_TEST_DATABASE_URL` (or the default
//! local server) cannot be reached. The export of a million events takes about 30 s in a
//! debug build on two cores (the database is generated in about 5 s), so it always runs.
#![allow(clippy::unwrap_used)] // Integration tests: a failed unwrap is a failed test.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveTime, Utc};
use serde_json::{Value, json};
use sqlx::Connection;

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

/// What the issue allows the export's peak resident memory.
const EXPORT_RSS_MAX_KIB: u64 = 64 * 1024;
/// Events of each generated day period.
const GENERATED_EVENTS_PER_DAY: u64 = 100_000;

/// The CSV header, in the order the export writes it.
const CSV_HEADER: [&str; 19] = [
    "type",
    "tenant_id",
    "metric_code",
    "period",
    "period_start",
    "period_end",
    "current_usage",
    "limit",
    "enforcement",
    "closed_at",
    "reopened_at",
    "event_id",
    "kind",
    "amount",
    "timestamp",
    "created_at",
    "idempotency_key",
    "reason",
    "metadata",
];

fn pg_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tally_test?sslmode=disable".to_owned())
}

/// Where a test's database lives: a SQLite file, or a fresh PostgreSQL schema.
struct Db {
    url: String,
    pg_schema: Option<String>,
    tenancy: &'static str,
    dir: PathBuf,
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-export-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Db {
    fn sqlite() -> Db {
        let dir = temp_dir();
        Db {
            url: format!("sqlite://{}", dir.join("tally.db").display()),
            pg_schema: None,
            tenancy: "shared",
            dir,
        }
    }

    async fn postgres(tenancy: &'static str) -> Db {
        let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&pg_url())
            .await
            .expect("PostgreSQL must be reachable for these tests");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        let db = Db { url: pg_url(), pg_schema: Some(schema), tenancy, dir: temp_dir() };
        db.ok(&["migrate"]);
        db
    }

    fn sqlite_path(&self) -> &str {
        self.url.trim_start_matches("sqlite://")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(TALLY);
        cmd.args(args)
            .current_dir(&self.dir)
            .env_remove("TALLY_ADMIN_KEY")
            .env("TALLY_DATABASE_URL", &self.url)
            .env("TALLY_TENANCY", self.tenancy)
            .stdin(Stdio::null());
        if let Some(s) = &self.pg_schema {
            cmd.env("TALLY_PG_SCHEMA", s);
        }
        cmd
    }

    fn tally(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run tally")
    }

    /// Runs and expects exit 0 and nothing on stderr (which is no terminal here).
    fn ok(&self, args: &[&str]) -> String {
        let out = self.tally(args);
        assert!(out.status.success(), "tally {args:?} failed: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    /// An export: exit 0, stdout its data, stderr empty.
    fn export(&self, args: &[&str]) -> String {
        let mut all = vec!["export", "usage"];
        all.extend_from_slice(args);
        let out = self.tally(&all);
        assert!(out.status.success(), "tally {all:?} failed: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr), "", "tally {all:?}: stderr is not a terminal, so it stays empty");
        text(&out.stdout)
    }

    /// An export that must fail: exit 2, nothing on stdout, one line on stderr, returned.
    fn export_error(&self, args: &[&str]) -> String {
        let mut all = vec!["export", "usage"];
        all.extend_from_slice(args);
        let out = self.tally(&all);
        assert_eq!(out.status.code(), Some(2), "tally {all:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "", "tally {all:?}: nothing on stdout");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "tally {all:?}: {err}");
        assert!(err.starts_with("error: ") && !err.contains("panicked"), "tally {all:?}: {err}");
        err
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

const PLANS: &str = r#"
[plans.pro]
name = "Pro"

[[plans.pro.limits]]
metric_code = "api_calls"
limit = 1000
enforcement = "hard"
period = "day"

[[plans.pro.limits]]
metric_code = "exports"
enforcement = "none"
period = "day"
"#;

/// A metadata value a CSV cell must quote: a comma and double quotes.
const TRICKY_METADATA: &str = r#"{"note":"a, \"b\""}"#;

/// The day periods the scenario uses: the day before yesterday (closed), yesterday (open),
/// and today's start, where yesterday ends.
struct Days {
    d2: DateTime<Utc>,
    d1: DateTime<Utc>,
    d0: DateTime<Utc>,
}

impl Days {
    fn now() -> Days {
        let d0 = Utc::now().date_naive().and_time(NaiveTime::MIN).and_utc();
        Days { d2: d0 - chrono::Duration::days(2), d1: d0 - chrono::Duration::days(1), d0 }
    }
}

fn at(t: DateTime<Utc>, hours: i64) -> String {
    rfc3339(t + chrono::Duration::hours(hours))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// acme: api_calls 10 the day before yesterday (its period then closed), 20 and a correction
/// of -5 yesterday, exports 3 yesterday; beta: api_calls 7 yesterday.
fn scenario(db: &Db, days: &Days) {
    let plans = write(&db.dir, "plans.toml", PLANS);
    db.ok(&["plans", "apply", plans.to_str().unwrap()]);
    db.ok(&["tenants", "create", "acme", "--plan", "pro"]);
    db.ok(&["tenants", "create", "beta", "--plan", "pro"]);
    db.ok(&[
        "record",
        "acme",
        "api_calls",
        "10",
        "--at",
        &at(days.d2, 12),
        "--key",
        "k1",
        "--metadata",
        TRICKY_METADATA,
    ]);
    db.ok(&["record", "acme", "api_calls", "20", "--at", &at(days.d1, 12)]);
    db.ok(&["correct", "acme", "api_calls", "-5", "--reason", "refund", "--at", &at(days.d1, 13)]);
    db.ok(&["record", "acme", "exports", "3", "--at", &at(days.d1, 11)]);
    db.ok(&["record", "beta", "api_calls", "7", "--at", &at(days.d1, 10)]);
    let closed = db.ok(&["periods", "close", "acme", "--before", &rfc3339(days.d1)]);
    assert!(closed.contains("(1 record newly closed)"), "{closed}");
}

fn period_row(
    tenant: &str,
    metric: &str,
    start: DateTime<Utc>,
    usage: i64,
    limit: Option<i64>,
    enforcement: &str,
    closed: bool,
) -> Value {
    json!({
        "type": "period",
        "tenant_id": tenant,
        "metric_code": metric,
        "period": "day",
        "period_start": rfc3339(start),
        "period_end": rfc3339(start + chrono::Duration::days(1)),
        "current_usage": usage,
        "limit": limit,
        "enforcement": enforcement,
        "closed_at": if closed { json!("<closed>") } else { Value::Null },
        "reopened_at": null,
    })
}

fn event_row(tenant: &str, metric: &str, kind: &str, amount: i64, timestamp: String) -> Value {
    json!({
        "type": "event",
        "tenant_id": tenant,
        "event_id": "<id>",
        "metric_code": metric,
        "kind": kind,
        "amount": amount,
        "timestamp": timestamp,
        "created_at": "<created>",
        "idempotency_key": null,
        "reason": null,
        "metadata": {},
    })
}

/// One row of the scenario's export, with what selects it.
struct Expected {
    /// In a closed period.
    closed: bool,
    tenant: &'static str,
    /// Its period's start.
    start: DateTime<Utc>,
    row: Value,
}

impl Expected {
    fn is_period(&self) -> bool {
        self.row["type"] == "period"
    }
}

/// The expected rows `keep` selects, in export order.
fn select(all: &[Expected], keep: impl Fn(&Expected) -> bool) -> Vec<Value> {
    all.iter().filter(|e| keep(e)).map(|e| e.row.clone()).collect()
}

/// Every row of the scenario with `--events`, in export order.
fn expected(days: &Days) -> Vec<Expected> {
    let mut correction = event_row("acme", "api_calls", "correction", -5, at(days.d1, 13));
    correction["reason"] = json!("refund");
    let mut first = event_row("acme", "api_calls", "usage", 10, at(days.d2, 12));
    first["idempotency_key"] = json!("k1");
    first["metadata"] = serde_json::from_str(TRICKY_METADATA).unwrap();
    let row = |closed, tenant, start, row| Expected { closed, tenant, start, row };
    vec![
        // Newest period first; in one period start, metric code descending.
        row(false, "acme", days.d1, period_row("acme", "exports", days.d1, 3, None, "none", false)),
        row(false, "acme", days.d1, event_row("acme", "exports", "usage", 3, at(days.d1, 11))),
        row(false, "acme", days.d1, period_row("acme", "api_calls", days.d1, 15, Some(1000), "hard", false)),
        row(false, "acme", days.d1, correction),
        row(false, "acme", days.d1, event_row("acme", "api_calls", "usage", 20, at(days.d1, 12))),
        row(true, "acme", days.d2, period_row("acme", "api_calls", days.d2, 10, Some(1000), "hard", true)),
        row(true, "acme", days.d2, first),
        row(false, "beta", days.d1, period_row("beta", "api_calls", days.d1, 7, Some(1000), "hard", false)),
        row(false, "beta", days.d1, event_row("beta", "api_calls", "usage", 7, at(days.d1, 10))),
    ]
}

/// The NDJSON lines, each checked to be one object, with the values that differ per run
/// (ids, creation and closing instants) checked and replaced by placeholders.
fn ndjson_rows(out: &str, started: DateTime<Utc>) -> Vec<Value> {
    assert!(out.is_empty() || out.ends_with('\n'), "every line ends with a newline: {out:?}");
    out.lines()
        .map(|line| {
            let mut row: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(row.is_object(), "{line}");
            let instant = |v: &Value| {
                let t = DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
                assert!(t >= started - chrono::Duration::seconds(1), "{line}");
            };
            if let Some(closed) = row.get("closed_at").filter(|v| !v.is_null()) {
                instant(closed);
                row["closed_at"] = json!("<closed>");
            }
            if let Some(created) = row.get("created_at") {
                instant(created);
                row["created_at"] = json!("<created>");
            }
            if let Some(id) = row.get("event_id") {
                uuid::Uuid::parse_str(id.as_str().unwrap()).unwrap();
                row["event_id"] = json!("<id>");
            }
            row
        })
        .collect()
}

/// Parses RFC 4180 CSV: quoted cells may hold commas, doubled quotes, CR and LF.
fn parse_csv(raw: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut cell = String::new();
    let mut chars = raw.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                '"' => quoted = false,
                _ => cell.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                assert!(cell.is_empty(), "a quote inside an unquoted cell: {raw}");
                quoted = true;
            }
            ',' => record.push(std::mem::take(&mut cell)),
            '\n' => {
                record.push(std::mem::take(&mut cell));
                records.push(std::mem::take(&mut record));
            }
            '\r' => panic!("a bare CR outside quotes: {raw:?}"),
            _ => cell.push(c),
        }
    }
    assert!(!quoted && cell.is_empty() && record.is_empty(), "the last line ends with a newline: {raw:?}");
    records
}

/// The CSV record an NDJSON row must have: the header's columns in order, absent and null
/// values empty, metadata as compact JSON.
fn csv_of(row: &Value) -> Vec<String> {
    CSV_HEADER
        .iter()
        .map(|column| match row.get(*column) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => serde_json::to_string(other).unwrap(),
        })
        .collect()
}

/// Exports with `args` in both formats, checks the NDJSON rows are `want` and the CSV is
/// the header then the same rows.
fn check_both_formats(db: &Db, args: &[&str], started: DateTime<Utc>, want: &[Value]) {
    let mut nd = args.to_vec();
    nd.extend_from_slice(&["--format", "ndjson"]);
    let ndjson = db.export(&nd);
    let rows = ndjson_rows(&ndjson, started);
    assert_eq!(rows, want, "ndjson with {args:?}:\n{ndjson}");

    let mut cs = args.to_vec();
    cs.extend_from_slice(&["--format", "csv"]);
    let csv = db.export(&cs);
    let records = parse_csv(&csv);
    assert_eq!(records[0], CSV_HEADER, "csv with {args:?}:\n{csv}");
    let raw_rows: Vec<Value> = ndjson.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let from_ndjson: Vec<Vec<String>> = raw_rows.iter().map(csv_of).collect();
    assert_eq!(&records[1..], from_ndjson, "csv with {args:?}:\n{csv}");
}

async fn export_rows_filters_and_errors(db: Db) {
    let started = Utc::now();
    let days = Days::now();
    scenario(&db, &days);
    let all = expected(&days);
    let (d2, d1, d0) = (rfc3339(days.d2), rfc3339(days.d1), rfc3339(days.d0));
    let check = |args: &[&str], keep: &dyn Fn(&Expected) -> bool| {
        check_both_formats(&db, args, started, &select(&all, keep));
    };

    // Every tenant's periods, then with their events.
    check(&[], &|e| e.is_period());
    check(&["--events"], &|_| true);
    // --closed-only: only acme's closed day, with its event when asked.
    check(&["--closed-only"], &|e| e.closed && e.is_period());
    check(&["--closed-only", "--events"], &|e| e.closed);
    // --tenant.
    check(&["--tenant", "beta"], &|e| e.tenant == "beta" && e.is_period());
    check(&["--tenant", "acme", "--events"], &|e| e.tenant == "acme");
    // --from and --to bound the period start: [from, to).
    check(&["--from", &d1], &|e| e.start >= days.d1 && e.is_period());
    check(&["--to", &d1], &|e| e.start < days.d1 && e.is_period());
    check(&["--from", &d2, "--to", &d1, "--events"], &|e| e.start == days.d2);
    check(&["--from", &d1, "--to", &d0, "--tenant", "acme", "--events"], &|e| {
        e.tenant == "acme" && e.start == days.d1
    });
    check(&["--from", &d0, "--events"], &|_| false);

    // The correction is exported with its reason; the tricky metadata is quoted in CSV.
    let csv = db.export(&["--events", "--format", "csv", "--tenant", "acme"]);
    assert!(csv.starts_with(&(CSV_HEADER.join(",") + "\n")), "{csv}");
    let correction = csv.lines().find(|l| l.contains(",correction,")).unwrap();
    assert!(correction.contains(&format!(",correction,-5,{},", at(days.d1, 13))), "{correction}");
    assert!(correction.ends_with(",,refund,{}"), "{correction}");
    let tricky = csv.lines().find(|l| l.contains(",k1,")).unwrap();
    assert!(tricky.ends_with(r#",k1,,"{""note"":""a, \""b\""""}""#), "{tricky}");
    let period = csv.lines().find(|l| l.starts_with("period,acme,exports,")).unwrap();
    assert_eq!(period, format!("period,acme,exports,day,{d1},{d0},3,,none,,,,,,,,,,"));

    // --output: the file gets what stdout would, created or truncated; stdout stays empty.
    let expected_ndjson = db.export(&["--events", "--format", "ndjson"]);
    let file = db.dir.join("export.ndjson");
    std::fs::write(&file, "x".repeat(expected_ndjson.len() * 2)).unwrap();
    for _ in 0..2 {
        let out = db.export(&["--events", "--format", "ndjson", "--output", file.to_str().unwrap()]);
        assert_eq!(out, "");
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(ndjson_rows(&written, started), ndjson_rows(&expected_ndjson, started));
    }
    let csv_file = db.dir.join("export.csv");
    db.export(&["--format", "csv", "--output", csv_file.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&csv_file).unwrap(), db.export(&["--format", "csv"]));

    // Bad input: exit 2, one line naming what is wrong, nothing on stdout.
    let err = db.export_error(&["--format", "csv", "--from", "yesterday"]);
    assert!(err.starts_with("error: --from: must be RFC 3339"), "{err}");
    let err = db.export_error(&["--format", "ndjson", "--to", "2026-13-01T00:00:00Z"]);
    assert!(err.starts_with("error: --to: must be RFC 3339"), "{err}");
    let err = db.export_error(&["--format", "csv", "--tenant", "ghost"]);
    assert_eq!(err, "error: tenant ghost not found\n");
    let missing = db.dir.join("no-such-dir").join("out.csv");
    let err = db.export_error(&["--format", "csv", "--output", missing.to_str().unwrap()]);
    assert!(err.contains(missing.to_str().unwrap()), "the error names the file: {err}");
    let out = db.tally(&["export", "usage", "--format", "xml"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown format");
    assert_eq!(text(&out.stdout), "");
}

#[tokio::test]
async fn export_on_sqlite_streams_periods_and_events_in_both_formats() {
    export_rows_filters_and_errors(Db::sqlite()).await;
}

#[tokio::test]
async fn export_on_postgres_streams_periods_and_events_in_both_formats() {
    export_rows_filters_and_errors(Db::postgres("shared").await).await;
}

#[tokio::test]
async fn export_on_postgres_schema_tenancy_streams_periods_and_events_in_both_formats() {
    export_rows_filters_and_errors(Db::postgres("schema").await).await;
}

#[test]
fn a_gauge_period_has_no_bounds_and_takes_all_its_events() {
    let db = Db::sqlite();
    let plans = write(
        &db.dir,
        "gauges.toml",
        "[plans.team]\nname = \"Team\"\n\n[[plans.team.limits]]\nmetric_code = \"seats\"\nlimit = 10\nenforcement = \"soft\"\nperiod = \"none\"\n",
    );
    db.ok(&["plans", "apply", plans.to_str().unwrap()]);
    db.ok(&["tenants", "create", "acme", "--plan", "team"]);
    db.ok(&["record", "acme", "seats", "5"]);
    db.ok(&["record", "acme", "seats", "-2"]);
    let rows: Vec<Value> = db
        .export(&["--events", "--format", "ndjson"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        (&rows[0]["period"], &rows[0]["period_start"], &rows[0]["period_end"], &rows[0]["current_usage"]),
        (&json!("none"), &Value::Null, &Value::Null, &json!(3))
    );
    assert_eq!((&rows[1]["amount"], &rows[2]["amount"]), (&json!(-2), &json!(5)), "newest first");
    let csv = db.export(&["--format", "csv"]);
    assert_eq!(csv.lines().nth(1).unwrap(), "period,acme,seats,none,,,3,10,soft,,,,,,,,,,");
}

// ---------------------------------------------------------------------------------------
// Memory, on a generated database

const BULK_PLANS: &str = r#"
[plans.bulk]
name = "Bulk"

[[plans.bulk.limits]]
metric_code = "api_calls"
enforcement = "none"
period = "day"
"#;

/// The first generated day (a UTC day: `day` periods are UTC days whatever the anchor).
const GENERATED_FIRST_DAY_MICROS: i64 = 1_735_689_600_000_000; // 2025-01-01T00:00:00Z
const DAY_MICROS: i64 = 86_400_000_000;

/// A SQLite database whose tenant `bulk` has `n_events` usage events of `api_calls`,
/// `GENERATED_EVENTS_PER_DAY` a day from 2025-01-01, with their day records: made by the
/// binary (plan, tenant, schema), filled by SQL straight into the tables, as `record` would
/// have filled them (running totals, periods, receipts).
async fn generated(n_events: u64) -> Db {
    assert_eq!(n_events % GENERATED_EVENTS_PER_DAY, 0);
    let db = Db::sqlite();
    let plans = write(&db.dir, "bulk.toml", BULK_PLANS);
    db.ok(&["plans", "apply", plans.to_str().unwrap()]);
    db.ok(&["tenants", "create", "bulk", "--plan", "bulk", "--anchor", "2025-01-01T00:00:00Z"]);
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.sqlite_path())).await.unwrap();
    let per_day = GENERATED_EVENTS_PER_DAY as i64;
    let step = DAY_MICROS / per_day;
    let n_days = n_events as i64 / per_day;
    let statements = [
        "BEGIN".to_owned(),
        // Event i is the (i % per_day)-th of day i / per_day, `step` µs after the one before.
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last}) \
             INSERT INTO quota_usage_event (id, tenant_id, metric_code, amount, metadata, \
               idempotency_key, timestamp, created_at, usage_after, limit_at, enforcement, \
               period_start, period_end, timestamp_explicit, is_set, reserved_at, kind, reason) \
             SELECT printf('00000000-0000-7000-8000-%012x', i), 'bulk', 'api_calls', 1, \
               '{{\"request\":' || i || ',\"region\":\"eu, west\"}}', NULL, \
               {first} + (i / {per_day}) * {day} + (i % {per_day}) * {step}, \
               {first} + (i / {per_day}) * {day} + (i % {per_day}) * {step}, \
               (i % {per_day}) + 1, NULL, 'none', \
               {first} + (i / {per_day}) * {day}, {first} + (i / {per_day} + 1) * {day}, 1, 0, 0, 'usage', NULL \
             FROM n",
            last = n_events - 1,
            first = GENERATED_FIRST_DAY_MICROS,
            day = DAY_MICROS,
        ),
        format!(
            "WITH RECURSIVE d(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM d WHERE k < {last}) \
             INSERT INTO quota_usage_record (id, tenant_id, metric_code, current_usage, \
               period_start, period_end, created_at, updated_at, closed_at, reopened_at) \
             SELECT printf('00000000-0000-7000-9000-%012x', k), 'bulk', 'api_calls', {per_day}, \
               {first} + k * {day}, {first} + (k + 1) * {day}, {first} + k * {day}, \
               {first} + (k + 1) * {day} - {step}, NULL, NULL \
             FROM d",
            last = n_days - 1,
            first = GENERATED_FIRST_DAY_MICROS,
            day = DAY_MICROS,
        ),
        "COMMIT".to_owned(),
    ];
    for s in statements {
        sqlx::query(sqlx::AssertSqlSafe(s)).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    db
}

/// Runs `command` to its end and returns its exit status and peak resident set size in
/// KiB: from `/usr/bin/time -f %M` (the kernel's own maximum, from wait4) when it is
/// installed, else the highest `VmHWM` of /proc/PID/status seen while it runs.
fn peak_rss_kib(db: &Db, mut command: Command) -> (std::process::ExitStatus, u64) {
    let time = Path::new("/usr/bin/time");
    if time.exists() {
        let report = db.dir.join("rss.txt");
        let mut timed = Command::new(time);
        timed.arg("-f").arg("%M").arg("-o").arg(&report).arg(command.get_program()).args(command.get_args());
        for (k, v) in command.get_envs() {
            match v {
                Some(v) => timed.env(k, v),
                None => timed.env_remove(k),
            };
        }
        timed.current_dir(&db.dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let out = timed.output().unwrap();
        assert_eq!(text(&out.stderr), "", "stderr is not a terminal: nothing on it");
        let raw = std::fs::read_to_string(&report).unwrap();
        let kib = raw.lines().last().unwrap().trim().parse().unwrap_or_else(|_| panic!("{raw}"));
        return (out.status, kib);
    }
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path)
            && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
        {
            peak = peak.max(line.split_whitespace().nth(1).unwrap().parse().unwrap());
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Exports every event of a generated database to a file and checks the peak RSS, the
/// rows (every event once, each after its period, newest first) and prints the throughput.
async fn export_of_generated_events_stays_under_64_mib(n_events: u64) {
    let t = Instant::now();
    let db = generated(n_events).await;
    eprintln!("generated {n_events} events in {:.1} s", t.elapsed().as_secs_f64());
    let file = db.dir.join("events.ndjson");
    let command = db.command(&[
        "export",
        "usage",
        "--events",
        "--format",
        "ndjson",
        "--output",
        file.to_str().unwrap(),
    ]);
    let t = Instant::now();
    let (status, kib) = peak_rss_kib(&db, command);
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success(), "{status}");
    eprintln!(
        "exported {n_events} events in {secs:.1} s ({:.0} events/s), peak RSS {:.1} MiB",
        n_events as f64 / secs,
        kib as f64 / 1024.0
    );
    assert!(kib <= EXPORT_RSS_MAX_KIB, "peak RSS {kib} KiB > {EXPORT_RSS_MAX_KIB} KiB");

    let reader = BufReader::new(std::fs::File::open(&file).unwrap());
    let (mut periods, mut events) = (0u64, 0u64);
    let mut in_period = 0u64;
    let mut last_start = String::new();
    for line in reader.lines() {
        let line = line.unwrap();
        if line.starts_with(r#"{"type":"event","#) {
            events += 1;
            in_period += 1;
        } else {
            let row: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(row["type"], "period", "{line}");
            assert!(periods == 0 || in_period == GENERATED_EVENTS_PER_DAY, "a period's events, all of them");
            let start = row["period_start"].as_str().unwrap().to_owned();
            assert!(periods == 0 || start < last_start, "newest period first: {start} after {last_start}");
            assert_eq!(row["current_usage"], GENERATED_EVENTS_PER_DAY);
            last_start = start;
            periods += 1;
            in_period = 0;
        }
    }
    assert_eq!(in_period, GENERATED_EVENTS_PER_DAY);
    assert_eq!((periods, events), (n_events / GENERATED_EVENTS_PER_DAY, n_events));
    let _ = std::fs::remove_dir_all(&db.dir);
}

/// The issue's figure: a million events exported with peak RSS ≤ 64 MiB.
#[tokio::test]
async fn export_of_1m_events_stays_under_64_mib() {
    export_of_generated_events_stays_under_64_mib(1_000_000).await;
}

#[tokio::test]
async fn a_closed_stdout_ends_the_export_quietly() {
    let db = generated(GENERATED_EVENTS_PER_DAY).await;
    for format in ["ndjson", "csv"] {
        let mut child = db
            .command(&["export", "usage", "--events", "--format", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read a little, as `| head` does, then close the pipe.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 4096];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{format}: {stderr}");
        assert_eq!(stderr, "", "{format}: a closed pipe is not an error");
    }
    let _ = std::fs::remove_dir_all(&db.dir);
}

/// On a terminal the export draws a progress bar on stderr (run under `script`, which gives
/// the command a pseudo-terminal); the data still goes only to the output file.
#[tokio::test]
async fn a_terminal_gets_a_progress_bar() {
    let script = Path::new("/usr/bin/script");
    if !script.exists() {
        eprintln!("skipped: /usr/bin/script (util-linux) gives the pseudo-terminal this test needs");
        return;
    }
    let db = generated(GENERATED_EVENTS_PER_DAY).await;
    let file = db.dir.join("events.csv");
    let line = format!("{TALLY} export usage --events --format csv --output {}", file.display());
    let out = Command::new(script)
        .args(["-qefc", &line, "/dev/null"])
        .current_dir(&db.dir)
        .env("TALLY_DATABASE_URL", &db.url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
    let terminal = text(&out.stdout);
    assert!(terminal.contains("rows exported"), "the bar: {terminal:?}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written.lines().count() as u64, 1 + 1 + GENERATED_EVENTS_PER_DAY);
    assert!(!written.contains("rows exported"));
    let _ = std::fs::remove_dir_all(&db.dir);
}
