//! `tally import django` against real PostgreSQL sources built from the Django module's own
//! schema (the seed's `django_schema.sql`), run as an operator runs it: the `tally` binary,
//! its report, its exit codes, then `verify`, `usage` and `events` on the destination.
//!
//! Every test needs PostgreSQL (the source is always PostgreSQL): they fail, never skip,
//! when it cannot be reached. Each test creates its own source database and drops it after.
#![allow(clippy::unwrap_used)] // Integration tests: a failed unwrap is a failed test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use uuid::Uuid;

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

fn pg_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tally_test?sslmode=disable".to_owned())
}

/// `url` with its database name replaced by `db`.
fn url_with_db(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _old) = base.rsplit_once('/').unwrap();
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

/// The seed's schema, the file the Django migration 0001 produces. The copy in
/// tests/fixtures keeps the tests runnable where the shared seed directory is absent;
/// `the_fixture_schema_is_the_seed_schema` keeps the two equal.
fn django_schema_sql() -> String {
    let seed = seed_schema_path();
    let path = if seed.exists() { seed } else { fixture_schema_path() };
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn seed_schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/seed/django_schema.sql")
}

fn fixture_schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/django/django_schema.sql")
}

#[test]
fn the_fixture_schema_is_the_seed_schema() {
    let fixture = std::fs::read_to_string(fixture_schema_path()).unwrap();
    assert!(fixture.contains("CREATE TABLE \"quota_usage_event\""));
    let seed = seed_schema_path();
    if seed.exists() {
        assert_eq!(
            fixture,
            std::fs::read_to_string(seed).unwrap(),
            "copy the seed's schema into tests/fixtures"
        );
    }
}

/// A source database of its own, dropped when the test ends.
struct Source {
    db: String,
    url: String,
}

impl Source {
    /// A fresh database with the Django tables created by the seed's SQL in each of `schemas`
    /// (created when not `public`).
    async fn create(schemas: &[&str]) -> Source {
        let db = format!("tally_dj_{}", Uuid::now_v7().simple());
        let mut admin =
            PgConnection::connect(&pg_url()).await.expect("PostgreSQL must be reachable for these tests");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{db}\""))).execute(&mut admin).await.unwrap();
        admin.close().await.unwrap();
        let source = Source { url: url_with_db(&pg_url(), &db), db };
        let sql = django_schema_sql();
        let mut conn = source.connect().await;
        for schema in schemas {
            if *schema != "public" {
                sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            sqlx::query(AssertSqlSafe(format!("SET search_path TO \"{schema}\"")))
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::raw_sql(AssertSqlSafe(sql.clone())).execute(&mut conn).await.unwrap();
        }
        source
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let db = self.db.clone();
        // A runtime of its own on a thread of its own: Drop runs inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&pg_url()).await {
                    let drop = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
                    let _ = sqlx::query(AssertSqlSafe(drop)).execute(&mut admin).await;
                }
            });
        })
        .join();
    }
}

async fn insert_event(
    conn: &mut PgConnection,
    schema: &str,
    tenant: &str,
    metric: &str,
    amount: i64,
    metadata: &str,
    at: DateTime<Utc>,
) -> Uuid {
    let id = Uuid::new_v4();
    let sql = format!(
        "INSERT INTO \"{schema}\".quota_usage_event (id, tenant_id, metric_code, amount, metadata, created_at)
         VALUES ($1, $2, $3, $4, $5::jsonb, $6)"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .bind(tenant)
        .bind(metric)
        .bind(amount)
        .bind(metadata)
        .bind(at)
        .execute(&mut *conn)
        .await
        .unwrap();
    id
}

async fn insert_record(
    conn: &mut PgConnection,
    schema: &str,
    tenant: &str,
    metric: &str,
    usage: i64,
    month: DateTime<Utc>,
) -> Uuid {
    let id = Uuid::new_v4();
    let sql = format!(
        "INSERT INTO \"{schema}\".quota_usage_record
           (id, tenant_id, metric_code, current_usage, period_start, period_end, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $5, $5)"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .bind(tenant)
        .bind(metric)
        .bind(usage)
        .bind(month)
        .bind(next_month(month))
        .execute(&mut *conn)
        .await
        .unwrap();
    id
}

/// The first instant of the current UTC month, and of the one before.
fn months() -> (DateTime<Utc>, DateTime<Utc>) {
    let today = Utc::now().date_naive();
    let cur = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap();
    let prev = if cur.month() == 1 {
        NaiveDate::from_ymd_opt(cur.year() - 1, 12, 1).unwrap()
    } else {
        NaiveDate::from_ymd_opt(cur.year(), cur.month() - 1, 1).unwrap()
    };
    (prev.and_hms_opt(0, 0, 0).unwrap().and_utc(), cur.and_hms_opt(0, 0, 0).unwrap().and_utc())
}

fn next_month(t: DateTime<Utc>) -> DateTime<Utc> {
    let d = t.date_naive();
    let next = if d.month() == 12 {
        NaiveDate::from_ymd_opt(d.year() + 1, 1, 1).unwrap()
    } else {
        NaiveDate::from_ymd_opt(d.year(), d.month() + 1, 1).unwrap()
    };
    next.and_hms_opt(0, 0, 0).unwrap().and_utc()
}

/// A Tally destination: a SQLite file, or a fresh base schema of the PostgreSQL test database.
struct Dest {
    url: String,
    pg_schema: Option<String>,
    tenancy: &'static str,
    dir: PathBuf,
}

impl Dest {
    fn sqlite() -> Dest {
        let dir = std::env::temp_dir().join(format!("tally-import-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Dest {
            url: format!("sqlite://{}", dir.join("tally.db").display()),
            pg_schema: None,
            tenancy: "shared",
            dir,
        }
    }

    async fn postgres(tenancy: &'static str) -> Dest {
        let schema = format!("t_{}", Uuid::now_v7().simple());
        let mut conn =
            PgConnection::connect(&pg_url()).await.expect("PostgreSQL must be reachable for these tests");
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\""))).execute(&mut conn).await.unwrap();
        let dir = std::env::temp_dir().join(format!("tally-import-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = Dest { url: pg_url(), pg_schema: Some(schema), tenancy, dir };
        dest.ok(&["migrate"]);
        dest
    }

    fn tally(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(TALLY);
        cmd.args(args)
            .current_dir(&self.dir)
            .env_remove("TALLY_ADMIN_KEY")
            .env_remove("TALLY_IMPORT_FROM")
            .env("TALLY_DATABASE_URL", &self.url)
            .env("TALLY_TENANCY", self.tenancy)
            .stdin(Stdio::null());
        if let Some(s) = &self.pg_schema {
            cmd.env("TALLY_PG_SCHEMA", s);
        }
        cmd.output().expect("run tally")
    }

    /// Runs and expects exit 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.tally(args);
        assert!(out.status.success(), "tally {args:?} failed: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    fn import(&self, source: &Source, extra: &[&str]) -> Output {
        let mut args = vec!["import", "django", "--from", source.url.as_str()];
        args.extend_from_slice(extra);
        self.tally(&args)
    }

    fn write(&self, name: &str, body: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    }

    /// The destination's usage records as (tenant, metric, period_start, current_usage, id),
    /// read behind Tally's back (SQLite only).
    async fn sqlite_records(&self) -> Vec<(String, String, i64, i64, String)> {
        let path = self.url.trim_start_matches("sqlite://");
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await.unwrap();
        sqlx::query_as(
            "SELECT tenant_id, metric_code, period_start, current_usage, id FROM quota_usage_record
              ORDER BY tenant_id, metric_code, period_start",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

const PLANS: &str = r#"
default_plan = "free"

[tenants]
acme = "pro"

[plans.free]
name = "Free"

[[plans.free.limits]]
metric_code = "api_calls"
limit = 1000
enforcement = "hard"
period = "month"

[[plans.free.limits]]
metric_code = "exports"
enforcement = "none"
period = "month"

[plans.pro]
name = "Pro"

[[plans.pro.limits]]
metric_code = "api_calls"
limit = 100000
enforcement = "soft"
period = "month"

[[plans.pro.limits]]
metric_code = "exports"
enforcement = "none"
period = "month"
"#;

/// The ids of the rows the shared-tables source holds, by what they exercise.
struct Ids {
    dup: (Uuid, Uuid),
    drift: Uuid,
    no_events: Uuid,
    globex_ok: Uuid,
    bad_tenant_event: Uuid,
    bad_tenant_record: Uuid,
    array_metadata: Uuid,
    big_metadata: Uuid,
    acme_events: Vec<Uuid>,
}

/// One `public` schema, two tenants over two months, and every kind of trouble:
/// - acme api_calls, previous month: events 3 + 4, two records (7 and 3): a duplicate;
/// - acme api_calls, this month: events 5 + 1 (+ 2 with array metadata, refused), record 10: drift (8);
/// - acme exports, previous month: a record of 4 and no event at all: a record without events;
/// - globex api_calls, previous month: event 2, record 2: agrees;
/// - globex api_calls, this month: events 8 + 1 (+ 1 with metadata over 4096 bytes, refused), no record;
/// - "bad tenant!": an event and a record, both refused.
async fn shared_source() -> (Source, Ids) {
    let source = Source::create(&["public"]).await;
    let mut c = source.connect().await;
    let (prev, cur) = months();
    let h = Duration::hours;
    let p = "public";
    let e1 = insert_event(&mut c, p, "acme", "api_calls", 3, r#"{"path": "/v1/a"}"#, prev + h(1)).await;
    let e2 = insert_event(&mut c, p, "acme", "api_calls", 4, "{}", prev + h(2)).await;
    let dup = (
        insert_record(&mut c, p, "acme", "api_calls", 7, prev).await,
        insert_record(&mut c, p, "acme", "api_calls", 3, prev).await,
    );
    let e3 = insert_event(&mut c, p, "acme", "api_calls", 5, r#"{"n": 1}"#, cur + h(1)).await;
    let e4 = insert_event(&mut c, p, "acme", "api_calls", 1, "{}", cur + h(2)).await;
    let array_metadata = insert_event(&mut c, p, "acme", "api_calls", 2, "[1, 2]", cur + h(3)).await;
    let drift = insert_record(&mut c, p, "acme", "api_calls", 10, cur).await;
    let no_events = insert_record(&mut c, p, "acme", "exports", 4, prev).await;
    insert_event(&mut c, p, "globex", "api_calls", 2, "{}", prev + h(5)).await;
    let globex_ok = insert_record(&mut c, p, "globex", "api_calls", 2, prev).await;
    insert_event(&mut c, p, "globex", "api_calls", 8, "{}", cur + h(1)).await;
    insert_event(&mut c, p, "globex", "api_calls", 1, "{}", cur + h(1)).await;
    let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(5000));
    let big_metadata = insert_event(&mut c, p, "globex", "api_calls", 1, &big, cur + h(4)).await;
    let bad_tenant_event = insert_event(&mut c, p, "bad tenant!", "api_calls", 1, "{}", cur + h(1)).await;
    let bad_tenant_record = insert_record(&mut c, p, "bad tenant!", "api_calls", 1, cur).await;
    let ids = Ids {
        dup,
        drift,
        no_events,
        globex_ok,
        bad_tenant_event,
        bad_tenant_record,
        array_metadata,
        big_metadata,
        acme_events: vec![e1, e2, e3, e4],
    };
    (source, ids)
}

#[tokio::test]
async fn an_import_reports_every_disagreement_and_refused_row_and_a_second_adds_nothing() {
    let (source, ids) = shared_source().await;
    let dest = Dest::sqlite();
    let plans = dest.write("plans.toml", PLANS);

    let out = dest.import(&source, &["--plans", &plans]);
    let report = text(&out.stdout);
    println!("{report}");
    // Refused rows make it an error (2), after the whole report.
    assert_eq!(code(&out), 2, "{report}{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("4 source rows refused"), "{}", text(&out.stderr));
    // The duplicate names every record of its period.
    let dup_line = report.lines().find(|l| l.starts_with("DUPLICATE public")).unwrap();
    assert!(
        dup_line.contains(&ids.dup.0.to_string()) && dup_line.contains(&ids.dup.1.to_string()),
        "{dup_line}"
    );
    assert!(dup_line.contains("events say 7 (2 events)"), "{dup_line}");
    let drift_line = report.lines().find(|l| l.starts_with("DRIFT public")).unwrap();
    assert!(drift_line.contains(&ids.drift.to_string()), "{drift_line}");
    assert!(drift_line.contains("current_usage 10, events say 8 (3 events)"), "{drift_line}");
    let no_events = report.lines().find(|l| l.starts_with("NO EVENTS public")).unwrap();
    assert!(no_events.contains(&ids.no_events.to_string()) && no_events.contains("exports"), "{no_events}");
    let no_record = report.lines().find(|l| l.starts_with("NO RECORD public")).unwrap();
    assert!(
        no_record.contains("tenant globex") && no_record.contains("events say 10 (3 events)"),
        "{no_record}"
    );
    assert!(!report.contains(&ids.globex_ok.to_string()), "an agreeing record is not reported");
    // Every refused row is named by schema, table and id, with the reason.
    for (id, why) in [
        (ids.bad_tenant_event, "tenant_id"),
        (ids.bad_tenant_record, "tenant_id"),
        (ids.array_metadata, "must be a JSON object"),
        (ids.big_metadata, "4096 bytes"),
    ] {
        let line = report
            .lines()
            .find(|l| l.contains(&id.to_string()))
            .unwrap_or_else(|| panic!("{id} in {report}"));
        assert!(line.starts_with("ERROR public quota_usage_"), "{line}");
        assert!(line.contains(why), "{line}");
    }
    assert!(report.contains("events: 10 read, 7 imported, 0 already present, 3 refused"), "{report}");
    assert!(report.contains("records: 6 read; 4 rebuilt (4 created, 0 updated, 0 unchanged)"), "{report}");
    assert!(report.contains("tenants: 2 created, 0 subscribed, 0 kept"), "{report}");
    assert!(
        report.contains(
            "disagreements: 1 drift, 1 duplicate, 1 record without events, 1 period without a record, 0 misaligned records"
        ),
        "{report}"
    );
    assert!(report.contains("errors: 4"), "{report}");

    // Tally agrees with its own trail, and shows what was imported.
    let verify = dest.ok(&["verify"]);
    assert!(
        verify.contains("verified 4 records against 7 events (0 of them corrections) and 0 resets: 0 drifts"),
        "{verify}"
    );
    let usage = dest.ok(&["usage", "acme"]);
    assert!(usage.contains("acme on plan pro"), "{usage}");
    assert!(usage.contains("api_calls\t6 used of 100000\tsoft"), "{usage}");
    let usage = dest.ok(&["usage", "globex"]);
    assert!(
        usage.contains("globex on plan free") && usage.contains("api_calls\t9 used of 1000\thard"),
        "{usage}"
    );
    let events = dest.ok(&["events", "acme"]);
    for id in &ids.acme_events {
        assert!(events.contains(&id.to_string()), "{id} in {events}");
    }
    assert!(events.contains(r#"{"path":"/v1/a"}"#), "{events}");
    assert!(!events.contains(&ids.array_metadata.to_string()), "{events}");
    let show = dest.ok(&["tenants", "show", "acme"]);
    assert!(show.contains("-01-01T00:00:00Z"), "anchored on the calendar: {show}");
    // Records: one per period, summed from the imported events; a lone source record keeps its id.
    let (prev, cur) = months();
    let records = dest.sqlite_records().await;
    let sums: Vec<(&str, &str, i64, i64)> =
        records.iter().map(|(t, m, s, u, _)| (t.as_str(), m.as_str(), *s, *u)).collect();
    assert_eq!(
        sums,
        vec![
            ("acme", "api_calls", prev.timestamp_micros(), 7),
            ("acme", "api_calls", cur.timestamp_micros(), 6),
            ("globex", "api_calls", prev.timestamp_micros(), 2),
            ("globex", "api_calls", cur.timestamp_micros(), 9),
        ]
    );
    assert_eq!(records[1].4, ids.drift.to_string());
    assert_eq!(records[2].4, ids.globex_ok.to_string());

    // A second import finds everything in place, says so, and changes nothing.
    let again = dest.import(&source, &["--plans", &plans]);
    let report = text(&again.stdout);
    assert_eq!(code(&again), 2, "{report}");
    assert!(report.contains("events: 10 read, 0 imported, 7 already present, 3 refused"), "{report}");
    assert!(report.contains("4 rebuilt (0 created, 0 updated, 4 unchanged)"), "{report}");
    assert!(report.contains("nothing new: all 7 importable events were already in Tally"), "{report}");
    assert!(report.contains("plans: 0 created, 0 updated, 2 unchanged"), "{report}");
    assert!(report.contains("tenants: 0 created, 0 subscribed, 2 kept"), "{report}");
    let verify = dest.ok(&["verify"]);
    assert!(verify.contains("against 7 events (0 of them corrections) and 0 resets: 0 drifts"), "{verify}");

    // The same report as JSON.
    let json = dest.import(&source, &["--plans", &plans, "--json"]);
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["events"]["imported"], 0);
    assert_eq!(v["events"]["already_present"], 7);
    assert_eq!(v["disagreement_counts"]["duplicate"], 1);
    let dup = v["disagreements"].as_array().unwrap().iter().find(|d| d["kind"] == "duplicate").unwrap();
    let dup_ids: Vec<&str> =
        dup["records"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert!(
        dup_ids.contains(&ids.dup.0.to_string().as_str())
            && dup_ids.contains(&ids.dup.1.to_string().as_str())
    );
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 4);
    assert!(errors.iter().all(|e| e["schema"] == "public" && e["id"].as_str().is_some()));
}

#[tokio::test]
async fn a_dry_run_reports_everything_and_writes_nothing() {
    let (source, ids) = shared_source().await;
    let dest = Dest::sqlite();
    let plans = dest.write("plans.toml", PLANS);
    let out = dest.import(&source, &["--plans", &plans, "--dry-run"]);
    let report = text(&out.stdout);
    assert_eq!(code(&out), 2, "{report}");
    assert!(report.contains("dry run: nothing was written"), "{report}");
    assert!(report.contains(&ids.dup.0.to_string()) && report.contains(&ids.dup.1.to_string()), "{report}");
    assert!(report.contains("events: 10 read, 7 imported, 0 already present, 3 refused"), "{report}");
    assert!(report.contains("records: 6 read; 4 to rebuild"), "{report}");
    assert!(report.contains("plans: 2 created"), "{report}");
    // The destination stays empty.
    assert_eq!(dest.ok(&["tenants", "list"]), "");
    assert_eq!(dest.ok(&["plans", "list"]), "");
    assert!(dest.ok(&["verify"]).contains("verified 0 records against 0 events"));
    assert!(dest.sqlite_records().await.is_empty());
}

/// django-tenants: `public` with the tables (empty, the module is a shared app), a schema per
/// tenant, and a schema without the tables.
async fn tenants_source() -> Source {
    let source = Source::create(&["public", "tenant_alpha", "tenant_beta"]).await;
    let mut c = source.connect().await;
    sqlx::query("CREATE SCHEMA unrelated").execute(&mut c).await.unwrap();
    let (prev, cur) = months();
    let h = Duration::hours;
    let a = "tenant_alpha";
    insert_event(&mut c, a, "alpha", "api_calls", 1, "{}", prev + h(1)).await;
    insert_event(&mut c, a, "alpha", "api_calls", 2, "{}", prev + h(2)).await;
    insert_record(&mut c, a, "alpha", "api_calls", 3, prev).await;
    insert_event(&mut c, a, "alpha", "api_calls", 4, "{}", cur + h(1)).await;
    insert_record(&mut c, a, "alpha", "api_calls", 4, cur).await;
    let b = "tenant_beta";
    insert_event(&mut c, b, "beta", "api_calls", 5, "{}", cur + h(1)).await;
    insert_event(&mut c, b, "beta", "api_calls", 5, "{}", cur + h(2)).await;
    insert_record(&mut c, b, "beta", "api_calls", 12, cur).await;
    source
}

const FREE_FOR_ALL: &str = r#"
default_plan = "free"

[plans.free]
name = "Free"

[[plans.free.limits]]
metric_code = "api_calls"
limit = 1000
enforcement = "hard"
"#;

#[tokio::test]
async fn schemas_all_reads_every_tenant_schema_and_disagreements_alone_exit_1() {
    let source = tenants_source().await;
    let dest = Dest::sqlite();
    let plans = dest.write("plans.toml", FREE_FOR_ALL);
    let out = dest.import(&source, &["--schemas", "all", "--plans", &plans]);
    let report = text(&out.stdout);
    assert_eq!(code(&out), 1, "{report}{}", text(&out.stderr));
    assert!(report.contains("schemas read: 3 (public, tenant_alpha, tenant_beta)"), "{report}");
    assert!(report.contains("events: 5 read, 5 imported, 0 already present, 0 refused"), "{report}");
    let drift = report.lines().find(|l| l.starts_with("DRIFT tenant_beta")).unwrap();
    assert!(drift.contains("current_usage 12, events say 10 (2 events)"), "{drift}");
    assert!(report.contains("errors: 0"), "{report}");
    assert!(dest.ok(&["verify"]).contains("against 5 events (0 of them corrections) and 0 resets: 0 drifts"));
    assert!(dest.ok(&["usage", "beta"]).contains("api_calls\t10 used of 1000"));
    assert!(dest.ok(&["usage", "alpha"]).contains("api_calls\t4 used of 1000"));
}

#[tokio::test]
async fn a_list_of_schemas_reads_those_only_and_refuses_what_is_not_a_schema_name() {
    let source = tenants_source().await;
    let dest = Dest::sqlite();
    let plans = dest.write("plans.toml", FREE_FOR_ALL);
    // alpha alone agrees with itself: exit 0.
    let out = dest.import(&source, &["--schemas", "tenant_alpha", "--plans", &plans]);
    let report = text(&out.stdout);
    assert_eq!(code(&out), 0, "{report}{}", text(&out.stderr));
    assert!(report.contains("schemas read: 1 (tenant_alpha)"), "{report}");
    assert!(report.contains("events: 3 read, 3 imported"), "{report}");
    assert!(report.contains("disagreements: 0 drifts"), "{report}");
    // Both: alpha's events are there already, beta's are new.
    let out = dest.import(&source, &["--schemas", "tenant_alpha,tenant_beta", "--plans", &plans]);
    let report = text(&out.stdout);
    assert_eq!(code(&out), 1, "{report}");
    assert!(report.contains("events: 5 read, 2 imported, 3 already present, 0 refused"), "{report}");
    assert!(dest.ok(&["verify"]).contains("0 drifts"));

    for bad in ["tenant_alpha;DROP SCHEMA public", "\"x\"", "a b", "nope", "unrelated"] {
        let out = dest.import(&source, &["--schemas", bad, "--plans", &plans]);
        assert_eq!(code(&out), 2, "{bad}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(err.starts_with("error: --schemas") && err.lines().count() == 1, "{bad}: {err}");
    }
    // A tenant without a plan is refused row by row, never dropped silently.
    let out = Dest::sqlite().import(&source, &["--schemas", "tenant_beta"]);
    let report = text(&out.stdout);
    assert_eq!(code(&out), 2, "{report}");
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ERROR tenant_beta") && l.contains("has no plan")).count(),
        3
    );
}

#[tokio::test]
async fn an_import_into_postgresql_verifies_in_both_tenancies() {
    let source = tenants_source().await;
    for tenancy in ["shared", "schema"] {
        let dest = Dest::postgres(tenancy).await;
        let plans = dest.write("plans.toml", FREE_FOR_ALL);
        let out = dest.import(&source, &["--schemas", "all", "--plans", &plans]);
        let report = text(&out.stdout);
        assert_eq!(code(&out), 1, "{tenancy}: {report}{}", text(&out.stderr));
        assert!(report.contains("events: 5 read, 5 imported"), "{tenancy}: {report}");
        assert!(report.contains("3 rebuilt (3 created"), "{tenancy}: {report}");
        let verify = dest.ok(&["verify"]);
        assert!(
            verify.contains(
                "verified 3 records against 5 events (0 of them corrections) and 0 resets: 0 drifts"
            ),
            "{tenancy}: {verify}"
        );
        assert!(dest.ok(&["usage", "beta"]).contains("api_calls\t10 used of 1000"), "{tenancy}");
        let again = dest.import(&source, &["--schemas", "all", "--plans", &plans]);
        let report = text(&again.stdout);
        assert!(report.contains("events: 5 read, 0 imported, 5 already present"), "{tenancy}: {report}");
        assert!(report.contains("nothing new"), "{tenancy}: {report}");
    }
}

#[tokio::test]
async fn a_record_whose_period_is_not_a_tally_period_is_reported_not_compared() {
    let source = Source::create(&["public"]).await;
    let mut c = source.connect().await;
    let (prev, cur) = months();
    // A period from the 15th to the 15th: Tally's months (calendar months here) cut it in two.
    let mid = prev + Duration::days(14);
    let sql = "INSERT INTO quota_usage_record
                 (id, tenant_id, metric_code, current_usage, period_start, period_end, created_at, updated_at)
               VALUES ($1, 'initech', 'api_calls', 3, $2, $3, $2, $2)";
    let id = Uuid::new_v4();
    sqlx::query(sql).bind(id).bind(mid).bind(cur + Duration::days(14)).execute(&mut c).await.unwrap();
    insert_event(&mut c, "public", "initech", "api_calls", 3, "{}", mid + Duration::days(5)).await;
    let dest = Dest::sqlite();
    let plans = dest.write("plans.toml", FREE_FOR_ALL);
    let out = dest.import(&source, &["--plans", &plans]);
    let report = text(&out.stdout);
    assert_eq!(code(&out), 1, "{report}{}", text(&out.stderr));
    let line = report.lines().find(|l| l.starts_with("MISALIGNED public")).unwrap();
    assert!(line.contains(&id.to_string()) && line.contains("not compared"), "{line}");
    assert!(
        report.lines().any(|l| l.starts_with("NO RECORD public") && l.contains("events say 3 (1 event)"))
    );
    assert!(dest.ok(&["verify"]).contains("0 drifts"));
}

#[tokio::test]
async fn an_unreachable_or_wrong_source_is_one_line_on_stderr_and_exit_2() {
    let dest = Dest::sqlite();
    let out = dest.tally(&["import", "django", "--from", "mysql://x@127.0.0.1/db"]);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("--from must be a postgres:// URL"), "{}", text(&out.stderr));
    let out = dest.tally(&["import", "django", "--from", "postgres://u:secret@127.0.0.1:1/db"]);
    assert_eq!(code(&out), 2);
    let err = text(&out.stderr);
    assert!(err.contains("postgres://u:***@127.0.0.1:1/db") && !err.contains("secret"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A source with the tables in no schema it is asked to read.
    let source = Source::create(&["tenant_alpha"]).await;
    let out = dest.import(&source, &[]);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("does not hold both"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn rows_of_closed_periods_are_error_lines_and_exit_2() {
    let source = Source::create(&["public"]).await;
    let mut c = source.connect().await;
    let (prev, cur) = months();
    let h = Duration::hours;
    insert_event(&mut c, "public", "acme", "api_calls", 3, "{}", prev + h(1)).await;
    insert_event(&mut c, "public", "acme", "api_calls", 4, "{}", cur + h(1)).await;
    let dest = Dest::sqlite();
    let plans = dest.write("plans.toml", PLANS);
    let first = dest.import(&source, &["--plans", &plans]);
    // Exit 1: the source has no records for its periods (a disagreement, not an error).
    assert_eq!(code(&first), 1, "{}{}", text(&first.stdout), text(&first.stderr));
    // Everything that ended by now is closed; then the source gains a late row in the
    // previous month and one in the current month.
    let now = tally_domain::time::format_rfc3339(tally_domain::time::truncate(Utc::now()));
    dest.ok(&["periods", "close", "acme", "--before", &now]);
    let late = insert_event(&mut c, "public", "acme", "api_calls", 5, "{}", prev + h(2)).await;
    insert_event(&mut c, "public", "acme", "api_calls", 6, "{}", cur + h(2)).await;
    let second = dest.import(&source, &["--plans", &plans]);
    let report = text(&second.stdout);
    assert_eq!(code(&second), 2, "{report}{}", text(&second.stderr));
    let line = report.lines().find(|l| l.contains(&late.to_string())).unwrap_or_else(|| panic!("{report}"));
    assert!(line.starts_with("ERROR public quota_usage_event") && line.contains("is closed"), "{line}");
    assert!(report.contains("events: 4 read, 1 imported, 2 already present, 1 refused"), "{report}");
    assert!(dest.ok(&["verify"]).contains("0 drifts"));
}
