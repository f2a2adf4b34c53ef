//! The `tally` binary as an operator uses it: exit codes, output, config layers, migrate,
//! verify against rows changed behind Tally's back, and two server processes sharing one
//! PostgreSQL database under a HARD limit.
#![allow(clippy::unwrap_used)] // Integration tests: a failed unwrap is a failed test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sqlx::Connection;

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

fn pg_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tally_test?sslmode=disable".to_owned())
}

/// Where a test's database lives: a SQLite file, or a fresh PostgreSQL schema.
#[derive(Clone)]
struct Db {
    url: String,
    pg_schema: Option<String>,
    tenancy: &'static str,
    dir: PathBuf,
}

impl Db {
    fn sqlite() -> Db {
        let dir = std::env::temp_dir().join(format!("tally-cli-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
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
        let dir = std::env::temp_dir().join(format!("tally-cli-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Db { url: pg_url(), pg_schema: Some(schema), tenancy, dir };
        let out = db.tally(&["migrate"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        db
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(TALLY);
        cmd.args(args)
            .current_dir(&self.dir)
            .env_remove("TALLY_DATABASE_URL")
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

    /// Runs and expects exit 0.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.tally(args);
        assert!(out.status.success(), "tally {args:?} failed: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    async fn sql(&self, statement: &str) {
        if let Some(schema) = &self.pg_schema {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO \"{schema}\"")))
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(statement.to_owned())).execute(&mut conn).await.unwrap();
        } else {
            let path = self.url.trim_start_matches("sqlite://");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(statement.to_owned())).execute(&mut conn).await.unwrap();
        }
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
limit = 100
enforcement = "hard"
period = "month"

[[plans.pro.limits]]
metric_code = "exports"
enforcement = "none"
period = "day"
"#;

fn setup(db: &Db) {
    let plans = write(&db.dir, "plans.toml", PLANS);
    db.ok(&["plans", "apply", plans.to_str().unwrap()]);
    db.ok(&["tenants", "create", "acme", "--plan", "pro", "--anchor", "2026-01-15T00:00:00Z"]);
    db.ok(&["tenants", "create", "beta", "--plan", "pro"]);
}

async fn verify_names_a_changed_counter_and_a_deleted_event(db: Db) {
    setup(&db);
    for (tenant, metric, amount) in
        [("acme", "api_calls", "5"), ("acme", "api_calls", "7"), ("beta", "exports", "3")]
    {
        db.ok(&["record", tenant, metric, amount]);
    }
    let clean = db.ok(&["verify"]);
    assert!(clean.contains("0 drifts"), "{clean}");
    // Behind Tally's back: change beta's counter, delete one of acme's events.
    db.sql("UPDATE quota_usage_record SET current_usage = 99 WHERE tenant_id = 'beta'").await;
    db.sql("DELETE FROM quota_usage_event WHERE tenant_id = 'acme' AND amount = 7").await;
    let out = db.tally(&["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.contains("tenant acme metric api_calls") && report.contains("counter 12, events say 5"),
        "{report}"
    );
    assert!(
        report.contains("tenant beta metric exports") && report.contains("counter 99, events say 3"),
        "{report}"
    );
    assert!(report.contains("2 drifts"), "{report}");
    let json: serde_json::Value = serde_json::from_str(&db.ok_or_code(&["verify", "--json"], 1)).unwrap();
    assert_eq!(json["drifts"].as_array().unwrap().len(), 2);
}

impl Db {
    fn ok_or_code(&self, args: &[&str], code: i32) -> String {
        let out = self.tally(args);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        text(&out.stdout)
    }
}

#[tokio::test]
async fn verify_on_sqlite_names_a_changed_counter_and_a_deleted_event() {
    verify_names_a_changed_counter_and_a_deleted_event(Db::sqlite()).await;
}

#[tokio::test]
async fn verify_on_postgres_names_a_changed_counter_and_a_deleted_event() {
    verify_names_a_changed_counter_and_a_deleted_event(Db::postgres("shared").await).await;
}

#[tokio::test]
async fn verify_on_postgres_schema_tenancy_names_a_changed_counter_and_a_deleted_event() {
    let db = Db::postgres("schema").await;
    setup(&db);
    for (tenant, metric, amount) in
        [("acme", "api_calls", "5"), ("acme", "api_calls", "7"), ("beta", "exports", "3")]
    {
        db.ok(&["record", tenant, metric, amount]);
    }
    assert!(db.ok(&["verify"]).contains("0 drifts"));
    let migrate = db.ok(&["migrate"]);
    let lines: Vec<&str> = migrate.lines().collect();
    assert_eq!(lines.len(), 4, "public + 2 tenant schemas + total: {migrate}");
    assert!(lines[1].contains("(acme) OK") || lines[2].contains("(acme) OK"), "{migrate}");
    assert!(lines[3].starts_with("total: 3 schemas, 3 OK, 0 failed, 0 migrations applied"), "{migrate}");
}

#[test]
fn plans_apply_twice_changes_nothing_and_lists_in_both_forms() {
    let db = Db::sqlite();
    let plans = write(&db.dir, "plans.toml", PLANS);
    assert_eq!(db.ok(&["plans", "apply", plans.to_str().unwrap()]), "pro: created (version 1)\n");
    assert_eq!(db.ok(&["plans", "apply", plans.to_str().unwrap()]), "pro: unchanged (version 1)\n");
    let changed = write(&db.dir, "plans2.toml", &PLANS.replace("limit = 100", "limit = 200"));
    assert_eq!(db.ok(&["plans", "apply", changed.to_str().unwrap()]), "pro: updated (version 2)\n");
    let listed: serde_json::Value = serde_json::from_str(&db.ok(&["plans", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["plan_code"], "pro");
    assert_eq!(listed[0]["limits"][0]["limit"], 200);
    assert!(db.ok(&["plans", "list"]).starts_with("pro\tPro\tv2\tapi_calls 200 hard per month"));
}

#[test]
fn keys_are_printed_once_as_the_last_line_and_listed_without_secrets() {
    let db = Db::sqlite();
    setup(&db);
    let out = db.ok(&["keys", "create", "--tenant", "acme"]);
    let secret = out.lines().last().unwrap();
    assert!(secret.starts_with("tly_") && secret.len() == 68, "{out}");
    let admin = db.ok(&["keys", "create", "--admin"]);
    assert!(admin.lines().last().unwrap().starts_with("tly_"));
    let listed = db.ok(&["keys", "list", "--json"]);
    assert!(!listed.contains(secret), "a listing never shows a key");
    let keys: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(keys[0]["scope"], "tenant");
    assert_eq!(keys[0]["tenant_id"], "acme");
    assert_eq!(keys[1]["scope"], "admin");
    for member in ["id", "scope", "tenant_id", "created_at", "last_used_at"] {
        assert!(keys[0].get(member).is_some(), "{member}");
    }
    let id = keys[0]["id"].as_str().unwrap();
    assert_eq!(db.ok(&["keys", "revoke", id]), format!("{id}: revoked\n"));
    let again = db.tally(&["keys", "revoke", id]);
    assert_eq!(again.status.code(), Some(2));
    let ghost = db.tally(&["keys", "create", "--tenant", "ghost"]);
    assert_eq!(ghost.status.code(), Some(2));
    assert!(text(&ghost.stderr).contains("tenant ghost not found"), "{}", text(&ghost.stderr));
}

#[test]
fn check_and_record_answer_with_exit_codes() {
    let db = Db::sqlite();
    setup(&db);
    assert_eq!(db.tally(&["check", "acme", "api_calls", "100"]).status.code(), Some(0));
    assert_eq!(db.tally(&["check", "acme", "api_calls", "101"]).status.code(), Some(1));
    let rec = db.ok(&["record", "acme", "api_calls", "60", "--key", "k1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&rec).unwrap();
    assert_eq!((v["current_usage"].as_i64(), v["replayed"].as_bool()), (Some(60), Some(false)));
    let again: serde_json::Value =
        serde_json::from_str(&db.ok(&["record", "acme", "api_calls", "60", "--key", "k1", "--json"]))
            .unwrap();
    assert_eq!(again["replayed"], true);
    let refused = db.tally(&["record", "acme", "api_calls", "41"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("api_calls: 60 used of 100, 41 requested"));
    let usage = db.ok(&["usage", "acme"]);
    assert!(usage.contains("api_calls\t60 used of 100\thard"), "{usage}");
    let events: serde_json::Value = serde_json::from_str(&db.ok(&["events", "acme", "--json"])).unwrap();
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
}

const GAUGE_PLANS: &str = r#"
[plans.team]
name = "Team"

[[plans.team.limits]]
metric_code = "seats"
limit = 10
enforcement = "hard"
period = "none"
"#;

#[test]
fn a_gauge_goes_up_and_down_from_the_command_line() {
    let db = Db::sqlite();
    let plans = write(&db.dir, "gauges.toml", GAUGE_PLANS);
    db.ok(&["plans", "apply", plans.to_str().unwrap()]);
    db.ok(&["tenants", "create", "acme", "--plan", "team"]);
    let up = db.ok(&["record", "acme", "seats", "5"]);
    assert!(up.contains("gauge, no period"), "{up}");
    let down: serde_json::Value =
        serde_json::from_str(&db.ok(&["record", "acme", "seats", "-2", "--json"])).unwrap();
    assert_eq!((down["amount"].as_i64(), down["current_usage"].as_i64()), (Some(-2), Some(3)));
    assert_eq!(down["period_end"], serde_json::Value::Null);
    assert_eq!(db.tally(&["check", "acme", "seats", "-3"]).status.code(), Some(0));
    assert_eq!(db.tally(&["check", "acme", "seats", "-4"]).status.code(), Some(1));
    let below = db.tally(&["record", "acme", "seats", "-4"]);
    assert_eq!(below.status.code(), Some(1), "a refusal: {}", text(&below.stderr));
    assert!(text(&below.stderr).contains("seats: level 3 cannot go down by 4"), "{}", text(&below.stderr));
    let usage = db.ok(&["usage", "acme"]);
    assert!(usage.contains("seats\t3 used of 10\thard\tgauge, no period"), "{usage}");
    assert!(db.ok(&["verify"]).contains("0 drifts"));
}

#[test]
fn errors_are_one_line_on_stderr_with_exit_code_2() {
    let db = Db::sqlite();
    setup(&db);
    for args in [
        &["record", "acme", "api_calls", "zero"][..],
        &["record", "acme", "api_calls", "0"],
        &["record", "ac me", "api_calls", "1"],
        &["record", "acme", "api_calls", "1", "--metadata", "[1]"],
        &["record", "acme", "api_calls", "1", "--at", "yesterday"],
        &["usage", "ghost"],
        &["subscribe", "acme", "nope"],
        &["events", "acme", "--limit", "0"],
    ] {
        let out = db.tally(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let bad_url =
        Command::new(TALLY).args(["usage", "acme"]).env("TALLY_DATABASE_URL", "mysql://x").output().unwrap();
    assert_eq!(bad_url.status.code(), Some(2));
    assert!(text(&bad_url.stderr).contains("--database-url must start with sqlite:// or postgres://"));
}

#[test]
fn flags_win_over_env_and_env_over_the_config_file() {
    let db = Db::sqlite();
    setup(&db);
    let other = Db::sqlite();
    // The file names the other database; the env names ours; the flag names the other again.
    write(&db.dir, "tally.toml", &format!("database_url = {:?}\nmax_event_age = \"7d\"\n", other.url));
    let from_env = db.ok(&["tenants", "list"]);
    assert!(from_env.contains("acme"), "env beats the file: {from_env}");
    let mut cmd = db.command(&["tenants", "list"]);
    cmd.env_remove("TALLY_DATABASE_URL");
    let from_file = cmd.output().unwrap();
    assert!(from_file.status.success());
    assert_eq!(text(&from_file.stdout), "", "the file names an empty database");
    let from_flag = db.ok(&["tenants", "list", "--database-url", &other.url]);
    assert_eq!(from_flag, "");
    write(&db.dir, "tally.toml", "databse_url = \"x\"\n");
    let typo = db.tally(&["tenants", "list"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(text(&typo.stderr).contains("unknown key \"databse_url\""));
}

#[test]
fn migrate_on_sqlite_prints_a_line_per_schema_and_a_total() {
    let db = Db::sqlite();
    let first = db.ok(&["migrate"]);
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 2, "{first}");
    assert!(lines[0].starts_with("main OK ("), "{first}");
    assert!(lines[1].starts_with("total: 1 schemas, 1 OK, 0 failed"), "{first}");
    let second = db.ok(&["migrate"]);
    assert!(second.contains("0 migrations applied"), "{second}");
}

/// `tally correct` and `tally periods`: a correction, a close, a refusal, a reopening, and
/// verify counting the corrections, with the exit codes and both output forms.
fn corrections_and_closed_periods_from_the_command_line(db: &Db) {
    let plans = write(&db.dir, "plans.toml", &format!("{PLANS}\n"));
    db.ok(&["plans", "apply", plans.to_str().unwrap()]);
    db.ok(&["tenants", "create", "acme", "--plan", "pro", "--anchor", "2026-01-15T00:00:00Z"]);
    let now = chrono::Utc::now();
    let day =
        |days_ago: i64| (now - chrono::Duration::days(days_ago)).format("%Y-%m-%dT12:00:00Z").to_string();
    let (two_days_ago, yesterday) = (day(2), day(1));
    db.ok(&["record", "acme", "exports", "5", "--at", &two_days_ago]);
    let fixed = db.ok(&[
        "correct",
        "acme",
        "exports",
        "-2",
        "--reason",
        "double-sent",
        "--at",
        &two_days_ago,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&fixed).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["amount"].as_i64(), v["current_usage"].as_i64()),
        (Some("correction"), Some(-2), Some(3))
    );
    // Below zero and a missing reason are errors (exit 2), each one line.
    let below = db.tally(&["correct", "acme", "exports", "-9", "--reason", "x", "--at", &two_days_ago]);
    assert_eq!(below.status.code(), Some(2));
    assert!(text(&below.stderr).contains("below 0"), "{}", text(&below.stderr));
    assert_eq!(db.tally(&["correct", "acme", "exports", "1"]).status.code(), Some(2));
    // Close everything before the start of yesterday: the day before yesterday is closed.
    let before = (now - chrono::Duration::days(1)).format("%Y-%m-%dT00:00:00Z").to_string();
    let closed = db.ok(&["periods", "close", "acme", "--before", &before, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&closed).unwrap();
    assert_eq!((v["closed_before"].as_str(), v["closed"].as_u64()), (Some(before.as_str()), Some(1)));
    let late = db.tally(&["record", "acme", "exports", "1", "--at", &two_days_ago]);
    assert_eq!(late.status.code(), Some(2));
    assert!(text(&late.stderr).contains("is closed"), "{}", text(&late.stderr));
    db.ok(&["record", "acme", "exports", "1", "--at", &yesterday]);
    let listed = db.ok(&["periods", "list", "acme", "--closed", "true"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("exports") && listed.contains("closed "), "{listed}");
    let start = (now - chrono::Duration::days(2)).format("%Y-%m-%dT00:00:00Z").to_string();
    let reopened = db.ok(&["periods", "reopen", "acme", "exports", &start, "--reason", "dispute", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&reopened).unwrap();
    assert!(v["closed_at"].is_null() && v["reopened_at"].is_string(), "{v}");
    db.ok(&["correct", "acme", "exports", "1", "--reason", "dispute settled", "--at", &two_days_ago]);
    let verify = db.ok(&["verify"]);
    assert!(verify.contains("against 4 events (2 of them corrections) and 0 resets: 0 drifts"), "{verify}");
    let json: serde_json::Value = serde_json::from_str(&db.ok(&["verify", "--json"])).unwrap();
    assert_eq!(json["corrections"].as_i64(), Some(2));
}

#[test]
fn corrections_and_closed_periods_on_sqlite() {
    corrections_and_closed_periods_from_the_command_line(&Db::sqlite());
}

#[tokio::test]
async fn corrections_and_closed_periods_on_postgres_schema_tenancy() {
    corrections_and_closed_periods_from_the_command_line(&Db::postgres("schema").await);
}

/// `tally keys create --rate-limit RATE` (issue 19): the key's own rate limit is printed,
/// stored and listed; a bad one is an error (exit 2) that creates nothing.
fn keys_take_their_own_rate_limit(db: &Db) {
    setup(db);
    let out = db.ok(&["keys", "create", "--tenant", "acme", "--rate-limit", "600/m"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"rate limit: 600/m"), "{out}");
    assert!(lines.last().unwrap().starts_with("tly_"), "the key is still the last line: {out}");
    let admin = db.ok(&["keys", "create", "--admin"]);
    assert!(!admin.contains("rate limit"), "no rate limit of its own: {admin}");
    let keys: serde_json::Value = serde_json::from_str(&db.ok(&["keys", "list", "--json"])).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2, "{keys}");
    assert_eq!(keys[0]["rate_limit"], "600/m", "{keys}");
    assert_eq!(keys[1]["rate_limit"], serde_json::Value::Null, "{keys}");

    let bad = db.tally(&["keys", "create", "--tenant", "acme", "--rate-limit", "5/d"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    let err = text(&bad.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("rate_limit"), "{err}");
    assert!(text(&bad.stdout).is_empty(), "nothing printed, no key shown: {}", text(&bad.stdout));
    let keys: serde_json::Value = serde_json::from_str(&db.ok(&["keys", "list", "--json"])).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2, "a refused key was created: {keys}");
}

#[test]
fn keys_take_their_own_rate_limit_on_sqlite() {
    keys_take_their_own_rate_limit(&Db::sqlite());
}

#[tokio::test]
async fn keys_take_their_own_rate_limit_on_postgres() {
    keys_take_their_own_rate_limit(&Db::postgres("shared").await);
}
