//! `tally import django`: imports a live database of the Django quota module that Tally
//! replaces (see docs/MIGRATING.md for the mapping and a worked example).
//!
//! A run, in order:
//!
//! 1. The plans of `--plans` are applied (the file of `tally plans apply`, plus an optional
//!    `default_plan` and a `[tenants]` table saying which tenant gets which plan).
//! 2. The source is read inside one `REPEATABLE READ READ ONLY` transaction, so that events
//!    and records are compared as of one instant even while Django keeps writing.
//! 3. The schemas are chosen (`public`, `all`, or a list) and their tenants found; each valid
//!    tenant is created when missing and subscribed when it has no subscription, anchored on
//!    January 1st 00:00Z so that month and year periods are calendar months and years, the
//!    periods the Django module's records carry.
//! 4. Each schema's events are read in pages of `IMPORT_BATCH_LEN`, keyset-paginated on
//!    `(tenant_id, metric_code, created_at, id)`: the order of the seed's index
//!    `quota_usage_event_tenant_metric_idx`, with the id to break ties. In that order each
//!    (tenant, metric) arrives whole and in time order, so the running total each imported
//!    event carries (`usage_after`) is exact and only one group's sums are held in memory.
//!    Events keep their ids; one already in Tally is counted as present, not written again.
//!    When a (tenant, metric) is finished, its source records are compared with the sums of
//!    its events per Tally period: drift, duplicates, records without events, periods
//!    without a record, records whose period is not a Tally period.
//! 5. Records: every period the import touched gets its counter rebuilt from Tally's own
//!    event trail (`AuditStore::verify_inputs`, what `tally verify` reads), so `tally verify`
//!    agrees by construction, after a re-run or an interrupted run too.
//!
//! Exit codes: 0 imported and the source agreed with itself; 1 imported, but the source's
//! records disagree with its events (the "no" of `tally verify`); 2 any row refused or any
//! failure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{Datelike, NaiveDate};
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgRow, PgSslMode};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use tally_domain::limits::{AMOUNT_MAX, AMOUNT_MIN};
use tally_domain::time::{TIMESTAMP_MICROS_MAX, TIMESTAMP_MICROS_MIN, format_rfc3339};
use tally_domain::{
    EventReceipt, Metadata, MetricCode, Name, Period, PlanCode, PlanSpec, QuotaLimit, RecordedEvent,
    TenantId, Timestamp, UsageEvent, UsageRecord,
};
use tally_service::Tally;
use tally_store::{EntitlementLookup, PutOutcome, Store, StoreError};
use uuid::Uuid;

/// Source rows read per page, and so events written per batch.
pub const IMPORT_BATCH_LEN: usize = 1_000;
/// Events of a batch looked up and written at once.
pub const IMPORT_WRITE_CONCURRENCY: usize = 8;
/// How long connecting to the source may take.
pub const SOURCE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL identifiers stop at 63 bytes.
const SCHEMA_NAME_LEN_MAX: usize = 63;
/// The Django module's tables.
const EVENTS: &str = "quota_usage_event";
const RECORDS: &str = "quota_usage_record";

#[derive(Subcommand, Debug)]
pub enum ImportCmd {
    /// Import a database of the Django quota module: its events become Tally's audit trail
    /// (ids kept, so a re-run adds nothing), records are rebuilt from them, and the source's
    /// own records are compared with its events. Exit 0 done, 1 done but the source
    /// disagrees with itself, 2 a row refused or a failure.
    Django(DjangoArgs),
}

#[derive(Args, Debug)]
pub struct DjangoArgs {
    /// The Django database, read only: `postgres://USER@HOST:PORT/DB` (`sslmode=disable`
    /// is used when the URL names no sslmode).
    #[arg(long = "from", value_name = "POSTGRES_URL", env = "TALLY_IMPORT_FROM", hide_env_values = true)]
    pub from: String,
    /// `public`, `all` (every schema holding both tables, as django-tenants lays them out),
    /// or a comma-separated list of schema names.
    #[arg(long, default_value = "public", value_name = "public|all|LIST")]
    pub schemas: String,
    /// Plans to apply first: the file of `tally plans apply`, plus an optional
    /// `default_plan = "CODE"` and a `[tenants]` table of `TENANT = "PLAN"`.
    #[arg(long, value_name = "FILE.toml")]
    pub plans: Option<PathBuf>,
    /// Read and report everything, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tally import ...` against the store of `--database-url`.
pub async fn run<S: Store>(tally: &Tally<S>, cmd: ImportCmd) -> anyhow::Result<ExitCode> {
    let ImportCmd::Django(args) = cmd;
    let plans = match &args.plans {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            parse_import_plans(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => ImportPlans::default(),
    };
    let spec = parse_schemas(&args.schemas)?;
    let mut conn = connect_source(&args.from).await?;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut conn)
        .await
        .context("starting a read-only transaction on the source")?;

    let mut importer = Importer::new(tally, args.dry_run);
    let schemas = importer.choose_schemas(&mut conn, spec).await?;
    let mut first_seen: BTreeMap<String, Timestamp> = BTreeMap::new();
    let mut n_events_total = 0u64;
    for schema in &schemas {
        for (raw, first_at, n_events) in discover(&mut conn, schema).await? {
            n_events_total = n_events_total.saturating_add(u64::try_from(n_events).unwrap_or(0));
            first_seen.entry(raw).and_modify(|t| *t = (*t).min(first_at)).or_insert(first_at);
        }
    }
    importer.apply_plans(&plans).await?;
    importer.setup_tenants(first_seen, &plans).await?;

    importer.bar = std::io::stderr().is_terminal().then(|| progress_bar(n_events_total));
    for schema in &schemas {
        importer.import_schema(&mut conn, schema).await?;
    }
    if let Some(bar) = importer.bar.take() {
        bar.finish_and_clear();
    }
    // The transaction only read; ending it is all that is left to do on the source.
    let _ = sqlx::query("COMMIT").execute(&mut conn).await;
    let _ = conn.close().await;

    importer.rebuild_records().await?;
    let report = importer.report;
    if args.json {
        crate::output::print_json(&report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if !report.errors.is_empty() {
        let n = report.errors.len();
        eprintln!(
            "error: {n} source row{} refused (see the ERROR lines of the report)",
            if n == 1 { "" } else { "s" }
        );
        return Ok(ExitCode::from(2));
    }
    Ok(if report.disagreements.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let style =
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} events, {eta} left")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar
}

// ---------------------------------------------------------------------------------------
// The plans file

/// The plans of `--plans`, and who gets which.
#[derive(Debug, Default)]
struct ImportPlans {
    plans: Vec<(PlanCode, PlanSpec)>,
    default_plan: Option<PlanCode>,
    tenants: BTreeMap<TenantId, PlanCode>,
}

/// Parses the file of `tally plans apply` with two optional keys more: `default_plan`, the
/// plan of every tenant that has none, and `[tenants]`, a table of `TENANT = "PLAN"`.
fn parse_import_plans(text: &str) -> anyhow::Result<ImportPlans> {
    let mut table: toml::Table = toml::from_str(text).context("not a valid plans file")?;
    let default_plan = match table.remove("default_plan") {
        None => None,
        Some(toml::Value::String(code)) => Some(PlanCode::parse(&code).context("default_plan")?),
        Some(_) => bail!("default_plan: must be a plan code in quotes"),
    };
    let mut tenants = BTreeMap::new();
    match table.remove("tenants") {
        None => {}
        Some(toml::Value::Table(entries)) => {
            for (raw, value) in entries {
                let tenant = TenantId::parse(&raw).with_context(|| format!("[tenants] {raw:?}"))?;
                let toml::Value::String(code) = value else {
                    bail!("[tenants] {raw}: must be a plan code in quotes");
                };
                tenants.insert(tenant, PlanCode::parse(&code).with_context(|| format!("[tenants] {raw}"))?);
            }
        }
        Some(_) => bail!("tenants: must be a table of TENANT = \"PLAN\""),
    }
    let rest = toml::to_string(&table).context("reading the plans")?;
    let plans = crate::plans_file::parse_plans(&rest)?;
    Ok(ImportPlans { plans, default_plan, tenants })
}

/// January 1st 00:00Z of `t`'s year: month and year periods anchored there are calendar
/// months and years (any such anchor gives the same periods; the year is only cosmetic).
fn calendar_anchor(t: Timestamp) -> Timestamp {
    NaiveDate::from_ymd_opt(t.year(), 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).map_or(t, |d| d.and_utc())
}

// ---------------------------------------------------------------------------------------
// The source

/// Which schemas `--schemas` names.
#[derive(Debug, PartialEq, Eq)]
enum SchemaSpec {
    All,
    Named(Vec<String>),
}

fn parse_schemas(raw: &str) -> anyhow::Result<SchemaSpec> {
    let raw = raw.trim();
    if raw == "all" {
        return Ok(SchemaSpec::All);
    }
    let mut names: Vec<String> = Vec::new();
    for part in raw.split(',') {
        let name = part.trim();
        check_schema_name(name).map_err(|rule| anyhow::anyhow!("--schemas: {name:?} {rule}"))?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(SchemaSpec::Named(names))
}

/// A schema name as django-tenants makes them: 1..=63 bytes of `[A-Za-z_][A-Za-z0-9_$-]*`.
/// Only names that pass reach SQL, and always quoted.
fn check_schema_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > SCHEMA_NAME_LEN_MAX {
        return Err(format!("must be 1 to {SCHEMA_NAME_LEN_MAX} bytes, got {}", bytes.len()));
    }
    let head_ok = bytes[0].is_ascii_alphabetic() || bytes[0] == b'_';
    let tail_ok = bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$' | b'-'));
    if !head_ok || !tail_ok {
        return Err("must match [A-Za-z_][A-Za-z0-9_$-]*".to_owned());
    }
    Ok(())
}

/// A checked schema name and its quoted form for SQL.
#[derive(Clone, Debug)]
struct SourceSchema {
    name: String,
    quoted: String,
}

impl SourceSchema {
    fn new(name: &str) -> Result<SourceSchema, String> {
        check_schema_name(name)?;
        Ok(SourceSchema { name: name.to_owned(), quoted: format!("\"{}\"", name.replace('"', "\"\"")) })
    }
}

async fn connect_source(url: &str) -> anyhow::Result<PgConnection> {
    let shown = crate::redact_url(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("--from must be a postgres:// URL, got {shown}");
    }
    let mut options =
        PgConnectOptions::from_str(url).with_context(|| format!("--from: not a valid URL: {shown}"))?;
    if !url.contains("sslmode=") {
        options = options.ssl_mode(PgSslMode::Disable);
    }
    let options = options.application_name("tally import django");
    tokio::time::timeout(SOURCE_CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "connecting to the source at {shown}: no answer within {SOURCE_CONNECT_TIMEOUT:?}"
            )
        })?
        .with_context(|| format!("connecting to the source at {shown}"))
}

/// One schema of the source as the catalog describes it.
struct SchemaFacts {
    name: String,
    has_events: bool,
    has_records: bool,
    /// `quota_usage_event` has an `idempotency_key` column: these are Tally's own tables.
    is_tally: bool,
}

async fn schema_facts(conn: &mut PgConnection) -> anyhow::Result<Vec<SchemaFacts>> {
    let rows = sqlx::query(
        "SELECT n.nspname::text AS name,
                EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid
                         AND c.relname = 'quota_usage_event' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')) AS has_events,
                EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid
                         AND c.relname = 'quota_usage_record' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')) AS has_records,
                EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                         WHERE c.relnamespace = n.oid AND c.relname = 'quota_usage_event'
                           AND a.attname = 'idempotency_key' AND NOT a.attisdropped) AS is_tally
           FROM pg_namespace n
          WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .context("listing the source's schemas")?;
    let mut facts = Vec::with_capacity(rows.len());
    for row in rows {
        facts.push(SchemaFacts {
            name: row.try_get("name")?,
            has_events: row.try_get("has_events")?,
            has_records: row.try_get("has_records")?,
            is_tally: row.try_get("is_tally")?,
        });
    }
    facts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(facts)
}

/// Every tenant id of the schema, with its earliest instant and its number of events.
async fn discover(
    conn: &mut PgConnection,
    schema: &SourceSchema,
) -> anyhow::Result<Vec<(String, Timestamp, i64)>> {
    let sql = format!(
        "SELECT tenant_id::text AS tenant_id, MIN(first_at) AS first_at, SUM(n_events)::bigint AS n_events FROM (
             SELECT tenant_id, MIN(created_at) AS first_at, COUNT(*) AS n_events FROM {s}.{EVENTS} GROUP BY tenant_id
             UNION ALL
             SELECT tenant_id, MIN(period_start), 0::bigint FROM {s}.{RECORDS} GROUP BY tenant_id
         ) AS found GROUP BY tenant_id",
        s = schema.quoted
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await
        .with_context(|| format!("reading the tenants of schema {}", schema.name))?;
    rows.iter()
        .map(|row| Ok((row.try_get("tenant_id")?, row.try_get("first_at")?, row.try_get("n_events")?)))
        .collect()
}

/// A row of `quota_usage_event`.
struct SourceEvent {
    id: Uuid,
    tenant_id: String,
    metric_code: String,
    amount: i64,
    metadata: Value,
    created_at: Timestamp,
}

fn source_event(row: &PgRow) -> anyhow::Result<SourceEvent> {
    Ok(SourceEvent {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        metric_code: row.try_get("metric_code")?,
        amount: row.try_get("amount")?,
        metadata: row.try_get::<sqlx::types::Json<Value>, _>("metadata")?.0,
        created_at: row.try_get("created_at")?,
    })
}

/// Where a page of events continues: strictly after this `(tenant_id, metric_code,
/// created_at, id)`.
type EventCursor = (String, String, Timestamp, Uuid);

async fn events_page(
    conn: &mut PgConnection,
    schema: &SourceSchema,
    after: Option<&EventCursor>,
) -> anyhow::Result<Vec<SourceEvent>> {
    let columns =
        "id, tenant_id::text AS tenant_id, metric_code::text AS metric_code, amount, metadata, created_at";
    let order = "ORDER BY tenant_id, metric_code, created_at, id";
    let limit = i64::try_from(IMPORT_BATCH_LEN).unwrap_or(i64::MAX);
    let rows = match after {
        None => {
            let sql = format!("SELECT {columns} FROM {}.{EVENTS} {order} LIMIT $1", schema.quoted);
            sqlx::query(AssertSqlSafe(sql)).bind(limit).fetch_all(&mut *conn).await
        }
        Some((tenant, metric, created_at, id)) => {
            let sql = format!(
                "SELECT {columns} FROM {}.{EVENTS}
                  WHERE (tenant_id, metric_code, created_at, id) > ($1, $2, $3, $4) {order} LIMIT $5",
                schema.quoted
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(tenant)
                .bind(metric)
                .bind(created_at)
                .bind(id)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
        }
    }
    .with_context(|| format!("reading events of schema {}", schema.name))?;
    rows.iter().map(source_event).collect()
}

/// A row of `quota_usage_record`.
struct SourceRecord {
    id: Uuid,
    tenant_id: String,
    metric_code: String,
    current_usage: i64,
    period_start: Timestamp,
    period_end: Timestamp,
    created_at: Timestamp,
}

const RECORD_COLUMNS: &str = "id, tenant_id::text AS tenant_id, metric_code::text AS metric_code, \
     current_usage, period_start, period_end, created_at";

fn source_record(row: &PgRow) -> anyhow::Result<SourceRecord> {
    Ok(SourceRecord {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        metric_code: row.try_get("metric_code")?,
        current_usage: row.try_get("current_usage")?,
        period_start: row.try_get("period_start")?,
        period_end: row.try_get("period_end")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The records of one (tenant, metric): one per period, or a few more when duplicated.
async fn records_of(
    conn: &mut PgConnection,
    schema: &SourceSchema,
    tenant: &str,
    metric: &str,
) -> anyhow::Result<Vec<SourceRecord>> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM {}.{RECORDS} WHERE tenant_id = $1 AND metric_code = $2
          ORDER BY period_start, id",
        schema.quoted
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(tenant)
        .bind(metric)
        .fetch_all(&mut *conn)
        .await
        .with_context(|| format!("reading records of schema {}", schema.name))?;
    rows.iter().map(source_record).collect()
}

/// A page of every record of the schema, keyset-paginated on id.
async fn records_page(
    conn: &mut PgConnection,
    schema: &SourceSchema,
    after: Option<Uuid>,
) -> anyhow::Result<Vec<SourceRecord>> {
    let limit = i64::try_from(IMPORT_BATCH_LEN).unwrap_or(i64::MAX);
    let rows = match after {
        None => {
            let sql =
                format!("SELECT {RECORD_COLUMNS} FROM {}.{RECORDS} ORDER BY id LIMIT $1", schema.quoted);
            sqlx::query(AssertSqlSafe(sql)).bind(limit).fetch_all(&mut *conn).await
        }
        Some(id) => {
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM {}.{RECORDS} WHERE id > $1 ORDER BY id LIMIT $2",
                schema.quoted
            );
            sqlx::query(AssertSqlSafe(sql)).bind(id).bind(limit).fetch_all(&mut *conn).await
        }
    }
    .with_context(|| format!("reading records of schema {}", schema.name))?;
    rows.iter().map(source_record).collect()
}

// ---------------------------------------------------------------------------------------
// The report

/// What kind of disagreement between the source's records and its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A record's `current_usage` differs from the sum of its period's events.
    Drift,
    /// Two or more records for one (tenant, metric, period).
    Duplicate,
    /// A record whose period has no event.
    RecordWithoutEvents,
    /// Events whose period has no record.
    EventsWithoutRecord,
    /// A record whose period is not one of Tally's periods for it, so it cannot be compared.
    Misaligned,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Drift,
        Kind::Duplicate,
        Kind::RecordWithoutEvents,
        Kind::EventsWithoutRecord,
        Kind::Misaligned,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Drift => "drift",
            Kind::Duplicate => "duplicate",
            Kind::RecordWithoutEvents => "record_without_events",
            Kind::EventsWithoutRecord => "events_without_record",
            Kind::Misaligned => "misaligned",
        }
    }

    fn words(self, n: usize) -> String {
        let s = if n == 1 { "" } else { "s" };
        match self {
            Kind::Drift => format!("{n} drift{s}"),
            Kind::Duplicate => format!("{n} duplicate{s}"),
            Kind::RecordWithoutEvents => format!("{n} record{s} without events"),
            Kind::EventsWithoutRecord => format!("{n} period{s} without a record"),
            Kind::Misaligned => format!("{n} misaligned record{s}"),
        }
    }
}

/// One disagreement found in the source.
#[derive(Debug)]
struct Disagreement {
    kind: Kind,
    schema: String,
    tenant_id: String,
    metric_code: String,
    period_start: Timestamp,
    period_end: Timestamp,
    /// The records concerned, with their `current_usage`.
    records: Vec<(Uuid, i64)>,
    /// What the period's events sum to, and how many there are.
    events_sum: i64,
    n_events: i64,
    /// For a misaligned record: the Tally period its start falls in.
    tally_period: Option<Period>,
}

impl Disagreement {
    fn to_text(&self) -> String {
        let period = format!("{} to {}", format_rfc3339(self.period_start), format_rfc3339(self.period_end));
        let what = format!("tenant {} metric {} period {period}", self.tenant_id, self.metric_code);
        let events =
            format!("events say {} ({} event{})", self.events_sum, self.n_events, plural(self.n_events));
        let (id, usage) = self.records.first().copied().unwrap_or((Uuid::nil(), 0));
        match self.kind {
            Kind::Drift => {
                format!("DRIFT {} record {id}: {what}: current_usage {usage}, {events}", self.schema)
            }
            Kind::Duplicate => {
                let list: Vec<String> =
                    self.records.iter().map(|(id, usage)| format!("{id} (current_usage {usage})")).collect();
                format!(
                    "DUPLICATE {}: {what} has {} records: {}; {events}",
                    self.schema,
                    self.records.len(),
                    list.join(", ")
                )
            }
            Kind::RecordWithoutEvents => {
                format!("NO EVENTS {} record {id}: {what}: current_usage {usage}, no events", self.schema)
            }
            Kind::EventsWithoutRecord => format!("NO RECORD {}: {what}: {events}, no record", self.schema),
            Kind::Misaligned => {
                let tally = self.tally_period.map_or(String::new(), |p| {
                    format!(
                        " (Tally's period there: {} to {})",
                        format_rfc3339(p.start()),
                        format_rfc3339(p.end())
                    )
                });
                format!(
                    "MISALIGNED {} record {id}: {what}: not a Tally period{tally}; current_usage {usage}, not compared",
                    self.schema
                )
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "kind": self.kind.as_str(),
            "schema": self.schema,
            "tenant_id": self.tenant_id,
            "metric_code": self.metric_code,
            "period_start": format_rfc3339(self.period_start),
            "period_end": format_rfc3339(self.period_end),
            "records": self.records.iter().map(|(id, usage)| json!({"id": id.to_string(), "current_usage": usage})).collect::<Vec<_>>(),
            "events_sum": self.events_sum,
            "n_events": self.n_events,
            "tally_period": self.tally_period.map(|p| json!({"start": format_rfc3339(p.start()), "end": format_rfc3339(p.end())})),
        })
    }
}

fn plural(n: i64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A row that could not be imported, or a failure that concerns one thing.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RowError {
    schema: String,
    table: &'static str,
    id: String,
    message: String,
}

#[derive(Debug, Default)]
struct SchemaCounts {
    name: String,
    events_read: u64,
    records_read: u64,
}

#[derive(Debug, Default)]
struct Report {
    dry_run: bool,
    schemas: Vec<SchemaCounts>,
    /// Each plan of the file and what applying it did (or would do).
    plans: Vec<(String, &'static str)>,
    tenants_created: u64,
    tenants_subscribed: u64,
    tenants_kept: u64,
    events_read: u64,
    events_imported: u64,
    events_present: u64,
    records_read: u64,
    records_rebuilt: u64,
    records_created: u64,
    records_updated: u64,
    records_unchanged: u64,
    disagreements: Vec<Disagreement>,
    errors: Vec<RowError>,
}

impl Report {
    fn events_refused(&self) -> u64 {
        self.errors.iter().filter(|e| e.table == EVENTS).count() as u64
    }

    fn count(&self, kind: Kind) -> usize {
        self.disagreements.iter().filter(|d| d.kind == kind).count()
    }

    fn plans_summary(&self) -> String {
        let n = |what: &str| self.plans.iter().filter(|(_, w)| *w == what).count();
        format!("{} created, {} updated, {} unchanged", n("created"), n("updated"), n("unchanged"))
    }

    fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        for d in &self.disagreements {
            line(d.to_text());
        }
        for e in &self.errors {
            line(format!("ERROR {} {} {}: {}", e.schema, e.table, e.id, e.message));
        }
        if self.dry_run {
            line("dry run: nothing was written; counts say what an import would do".to_owned());
        }
        let names: Vec<&str> = self.schemas.iter().map(|s| s.name.as_str()).collect();
        line(format!("schemas read: {} ({})", self.schemas.len(), names.join(", ")));
        for s in &self.schemas {
            line(format!("  {}: {} events, {} records", s.name, s.events_read, s.records_read));
        }
        if !self.plans.is_empty() {
            line(format!("plans: {}", self.plans_summary()));
        }
        line(format!(
            "tenants: {} created, {} subscribed, {} kept",
            self.tenants_created, self.tenants_subscribed, self.tenants_kept
        ));
        line(format!(
            "events: {} read, {} imported, {} already present, {} refused",
            self.events_read,
            self.events_imported,
            self.events_present,
            self.events_refused()
        ));
        if self.dry_run {
            line(format!("records: {} read; {} to rebuild", self.records_read, self.records_rebuilt));
        } else {
            line(format!(
                "records: {} read; {} rebuilt ({} created, {} updated, {} unchanged)",
                self.records_read,
                self.records_rebuilt,
                self.records_created,
                self.records_updated,
                self.records_unchanged
            ));
        }
        let kinds: Vec<String> = Kind::ALL.iter().map(|k| k.words(self.count(*k))).collect();
        line(format!("disagreements: {}", kinds.join(", ")));
        line(format!("errors: {}", self.errors.len()));
        if self.events_imported == 0 && self.events_present > 0 {
            line(format!("nothing new: all {} importable events were already in Tally", self.events_present));
        }
        out
    }

    fn to_json(&self) -> Value {
        let counts: serde_json::Map<String, Value> =
            Kind::ALL.iter().map(|k| (k.as_str().to_owned(), json!(self.count(*k)))).collect();
        let n = |what: &str| self.plans.iter().filter(|(_, w)| *w == what).count();
        json!({
            "dry_run": self.dry_run,
            "schemas": self.schemas.iter().map(|s| json!({"name": s.name, "events": s.events_read, "records": s.records_read})).collect::<Vec<_>>(),
            "plans": {"created": n("created"), "updated": n("updated"), "unchanged": n("unchanged")},
            "tenants": {"created": self.tenants_created, "subscribed": self.tenants_subscribed, "kept": self.tenants_kept},
            "events": {
                "read": self.events_read, "imported": self.events_imported,
                "already_present": self.events_present, "refused": self.events_refused(),
            },
            "records": {
                "read": self.records_read, "rebuilt": self.records_rebuilt, "created": self.records_created,
                "updated": self.records_updated, "unchanged": self.records_unchanged,
            },
            "disagreement_counts": counts,
            "disagreements": self.disagreements.iter().map(Disagreement::to_json).collect::<Vec<_>>(),
            "errors": self.errors.iter().map(|e| json!({"schema": e.schema, "table": e.table, "id": e.id, "message": e.message})).collect::<Vec<_>>(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// The import

/// A tenant's plan as the import uses it.
#[derive(Clone, Debug)]
struct TenantPlan {
    plan: PlanCode,
    limits: BTreeMap<MetricCode, QuotaLimit>,
    anchor: Timestamp,
}

/// What the import can do with a tenant id of the source.
#[derive(Clone, Debug)]
enum TenantState {
    Ready(TenantPlan),
    /// Its rows are refused, for this reason.
    Refused(String),
}

/// What every event of a (tenant, metric) needs.
#[derive(Clone, Debug)]
struct GroupCtx {
    tenant: TenantId,
    metric: MetricCode,
    limit: QuotaLimit,
    anchor: Timestamp,
}

/// The sums of one Tally period of a (tenant, metric), from the source's events.
#[derive(Debug)]
struct PeriodSums {
    period: Period,
    /// Every event of the period, whether importable or not: what the source says.
    source_sum: i64,
    n_source: i64,
    /// The events that go to Tally, in time order: the running total of the trail.
    tally_sum: i64,
}

/// One (tenant, metric) of a schema, while its events stream by.
struct Group {
    tenant_raw: String,
    metric_raw: String,
    ctx: Result<GroupCtx, String>,
    periods: BTreeMap<Timestamp, PeriodSums>,
}

/// A Tally record the import rebuilds, and the source record it continues, if exactly one.
struct Touched {
    period: Period,
    source_record: Option<(Uuid, Timestamp)>,
}

type RecordKeyOf = (TenantId, MetricCode, Timestamp);

/// What writing one event did.
enum Written {
    Imported,
    Present,
    Refused(String),
}

struct Importer<'a, S: Store> {
    tally: &'a Tally<S>,
    dry_run: bool,
    tenants: HashMap<String, TenantState>,
    touched: BTreeMap<RecordKeyOf, Touched>,
    report: Report,
    bar: Option<indicatif::ProgressBar>,
    /// Tenants' closing watermarks, read once each.
    marks: HashMap<TenantId, Option<tally_domain::Watermark>>,
}

impl<'a, S: Store> Importer<'a, S> {
    fn new(tally: &'a Tally<S>, dry_run: bool) -> Importer<'a, S> {
        Importer {
            tally,
            dry_run,
            tenants: HashMap::new(),
            touched: BTreeMap::new(),
            report: Report { dry_run, ..Report::default() },
            bar: None,
            marks: HashMap::new(),
        }
    }

    fn refuse(&mut self, schema: &str, table: &'static str, id: impl ToString, message: impl Into<String>) {
        self.report.errors.push(RowError {
            schema: schema.to_owned(),
            table,
            id: id.to_string(),
            message: message.into(),
        });
    }

    /// The schemas `spec` names, each checked to hold the Django module's two tables.
    async fn choose_schemas(
        &mut self,
        conn: &mut PgConnection,
        spec: SchemaSpec,
    ) -> anyhow::Result<Vec<SourceSchema>> {
        let facts = schema_facts(conn).await?;
        let mut chosen = Vec::new();
        match spec {
            SchemaSpec::All => {
                for f in facts.iter().filter(|f| f.has_events && f.has_records && !f.is_tally) {
                    match SourceSchema::new(&f.name) {
                        Ok(s) => chosen.push(s),
                        Err(rule) => {
                            self.refuse(&f.name, "schema", &f.name, format!("schema name {rule}; not read"))
                        }
                    }
                }
                if chosen.is_empty() {
                    bail!("no schema of the source holds both {RECORDS} and {EVENTS}");
                }
            }
            SchemaSpec::Named(names) => {
                for name in names {
                    let Some(f) = facts.iter().find(|f| f.name == name) else {
                        bail!("--schemas: the source has no schema {name:?}");
                    };
                    if !(f.has_events && f.has_records) {
                        bail!(
                            "--schemas: schema {name:?} does not hold both {RECORDS} and {EVENTS} \
                             (--schemas all reads every schema that does)"
                        );
                    }
                    if f.is_tally {
                        bail!("--schemas: schema {name:?} holds Tally's own tables, not the Django module's");
                    }
                    chosen.push(
                        SourceSchema::new(&name)
                            .map_err(|rule| anyhow::anyhow!("--schemas: {name:?} {rule}"))?,
                    );
                }
            }
        }
        Ok(chosen)
    }

    /// Applies the plans of the file (in a dry run, says what applying them would do).
    async fn apply_plans(&mut self, plans: &ImportPlans) -> anyhow::Result<()> {
        let store = self.tally.store();
        for (code, spec) in &plans.plans {
            let what = if self.dry_run {
                match store.find_plan(code).await? {
                    None => "created",
                    Some(p) if p.name == spec.name && p.limits == spec.limits => "unchanged",
                    Some(_) => "updated",
                }
            } else {
                match self
                    .tally
                    .put_plan(code, spec, None)
                    .await
                    .with_context(|| format!("applying plan {code}"))?
                {
                    PutOutcome::Created(_) => "created",
                    PutOutcome::Updated(_) => "updated",
                    PutOutcome::Unchanged(_) => "unchanged",
                }
            };
            self.report.plans.push((code.to_string(), what));
        }
        let named = plans.default_plan.iter().chain(plans.tenants.values());
        for code in named {
            let in_file = plans.plans.iter().any(|(c, _)| c == code);
            if !in_file && store.find_plan(code).await?.is_none() {
                bail!("--plans: plan {code} is named but neither defined in the file nor in Tally");
            }
        }
        Ok(())
    }

    /// Creates and subscribes every valid tenant of the source (in a dry run, only works out
    /// what it would be subscribed to).
    async fn setup_tenants(
        &mut self,
        first_seen: BTreeMap<String, Timestamp>,
        plans: &ImportPlans,
    ) -> anyhow::Result<()> {
        for (raw, first_at) in first_seen {
            let state = match TenantId::parse(&raw) {
                Err(e) => TenantState::Refused(format!("{e} (got {raw:?})")),
                Ok(tenant) => match self.setup_tenant(&tenant, first_at, plans).await? {
                    Ok(plan) => TenantState::Ready(plan),
                    Err(reason) => TenantState::Refused(reason),
                },
            };
            self.tenants.insert(raw, state);
        }
        Ok(())
    }

    async fn setup_tenant(
        &mut self,
        tenant: &TenantId,
        first_at: Timestamp,
        plans: &ImportPlans,
    ) -> anyhow::Result<Result<TenantPlan, String>> {
        let store = self.tally.store();
        let exists = store.find_tenant(tenant).await?.is_some();
        let current = if exists { store.find_subscription(tenant).await? } else { None };
        let wanted = plans
            .tenants
            .get(tenant)
            .or(current.as_ref().map(|s| &s.plan_code))
            .or(plans.default_plan.as_ref())
            .cloned();
        let Some(plan) = wanted else {
            return Ok(Err(format!(
                "tenant {tenant} has no plan: name it in the [tenants] table of --plans, or set default_plan"
            )));
        };
        let changes_plan = current.as_ref().is_none_or(|s| s.plan_code != plan);
        let anchor = current.as_ref().map_or_else(|| calendar_anchor(first_at), |s| s.anchor);
        if !exists {
            self.report.tenants_created += 1;
        } else if changes_plan {
            self.report.tenants_subscribed += 1;
        } else {
            self.report.tenants_kept += 1;
        }
        if self.dry_run {
            let limits = match plans.plans.iter().find(|(c, _)| *c == plan) {
                Some((_, spec)) => spec.limits.clone(),
                None => match store.find_plan(&plan).await? {
                    Some(p) => p.limits,
                    None => return Ok(Err(format!("plan {plan} does not exist"))),
                },
            };
            let mut by_metric: BTreeMap<MetricCode, QuotaLimit> =
                limits.into_iter().map(|l| (l.metric_code.clone(), l)).collect();
            if exists {
                for o in store.list_overrides(tenant).await? {
                    by_metric.insert(o.metric_code.clone(), o);
                }
            }
            return Ok(Ok(TenantPlan { plan, limits: by_metric, anchor }));
        }
        if !exists {
            let name = Name::parse(tenant.as_str())?;
            self.tally
                .put_tenant(tenant, &name)
                .await
                .with_context(|| format!("creating tenant {tenant}"))?;
        }
        if changes_plan {
            // A new subscription is anchored on the calendar; a changed plan keeps its anchor.
            let new_anchor = current.is_none().then_some(anchor);
            self.tally
                .subscribe(tenant, &plan, new_anchor, None)
                .await
                .with_context(|| format!("subscribing tenant {tenant} to plan {plan}"))?;
        }
        match store.find_entitlement(tenant).await? {
            EntitlementLookup::Found(e) => {
                Ok(Ok(TenantPlan { plan, limits: e.limits, anchor: e.subscription.anchor }))
            }
            _ => bail!("tenant {tenant}: no subscription right after subscribing it"),
        }
    }

    /// What a (tenant, metric) of the source needs to be imported, or why it cannot be.
    fn group_ctx(&self, tenant_raw: &str, metric_raw: &str) -> Result<GroupCtx, String> {
        let tenant = TenantId::parse(tenant_raw).map_err(|e| format!("{e} (got {tenant_raw:?})"))?;
        let metric = MetricCode::parse(metric_raw).map_err(|e| format!("{e} (got {metric_raw:?})"))?;
        let plan = match self.tenants.get(tenant_raw) {
            Some(TenantState::Ready(plan)) => plan,
            Some(TenantState::Refused(reason)) => return Err(reason.clone()),
            None => return Err(format!("tenant {tenant} appeared after the schemas were read")),
        };
        let Some(limit) = plan.limits.get(&metric) else {
            return Err(format!(
                "metric {metric} is not in plan {} of tenant {tenant}: add it to the plan",
                plan.plan
            ));
        };
        Ok(GroupCtx { tenant, metric, limit: limit.clone(), anchor: plan.anchor })
    }

    async fn import_schema(&mut self, conn: &mut PgConnection, schema: &SourceSchema) -> anyhow::Result<()> {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("schema {}", schema.name));
        }
        let counts_at = self.report.schemas.len();
        self.report.schemas.push(SchemaCounts { name: schema.name.clone(), ..SchemaCounts::default() });
        let records_before = self.report.records_read;
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut group: Option<Group> = None;
        let mut after: Option<EventCursor> = None;
        loop {
            let page = events_page(conn, schema, after.as_ref()).await?;
            let n_page = page.len();
            if let Some(last) = page.last() {
                after = Some((last.tenant_id.clone(), last.metric_code.clone(), last.created_at, last.id));
            }
            let mut batch = Vec::with_capacity(n_page);
            let mut finished = Vec::new();
            for e in page {
                self.report.events_read += 1;
                let same = group
                    .as_ref()
                    .is_some_and(|g| g.tenant_raw == e.tenant_id && g.metric_raw == e.metric_code);
                if !same {
                    finished.extend(group.take());
                    seen.insert((e.tenant_id.clone(), e.metric_code.clone()));
                    group = Some(Group {
                        ctx: self.group_ctx(&e.tenant_id, &e.metric_code),
                        tenant_raw: e.tenant_id.clone(),
                        metric_raw: e.metric_code.clone(),
                        periods: BTreeMap::new(),
                    });
                }
                if let Some(g) = group.as_mut() {
                    match &g.ctx {
                        Err(reason) => {
                            let reason = reason.clone();
                            self.refuse(&schema.name, EVENTS, e.id, reason);
                        }
                        Ok(ctx) => {
                            if let Some(event) = self.take_event(&schema.name, ctx, &mut g.periods, e) {
                                batch.push(event);
                            }
                        }
                    }
                }
            }
            self.write_batch(&schema.name, &batch).await?;
            for g in finished {
                self.finish_group(conn, schema, g).await?;
            }
            if let Some(bar) = &self.bar {
                bar.inc(n_page as u64);
            }
            self.report.schemas[counts_at].events_read += n_page as u64;
            if n_page < IMPORT_BATCH_LEN {
                break;
            }
        }
        if let Some(g) = group.take() {
            self.finish_group(conn, schema, g).await?;
        }
        self.records_without_events(conn, schema, &seen).await?;
        self.report.schemas[counts_at].records_read = self.report.records_read - records_before;
        Ok(())
    }

    /// Checks one event of a valid (tenant, metric), counts it in its period, and returns it
    /// as a Tally event when it can be imported.
    fn take_event(
        &mut self,
        schema: &str,
        ctx: &GroupCtx,
        periods: &mut BTreeMap<Timestamp, PeriodSums>,
        e: SourceEvent,
    ) -> Option<RecordedEvent> {
        let micros = e.created_at.timestamp_micros();
        if !(TIMESTAMP_MICROS_MIN..=TIMESTAMP_MICROS_MAX).contains(&micros) {
            self.refuse(
                schema,
                EVENTS,
                e.id,
                format!("created_at {}: outside the years 1 to 9999", e.created_at),
            );
            return None;
        }
        let period = match ctx.limit.period.containing(e.created_at, ctx.anchor) {
            Ok(p) => p,
            Err(err) => {
                self.refuse(schema, EVENTS, e.id, err.to_string());
                return None;
            }
        };
        let sums = periods.entry(period.start()).or_insert(PeriodSums {
            period,
            source_sum: 0,
            n_source: 0,
            tally_sum: 0,
        });
        sums.source_sum = sums.source_sum.saturating_add(e.amount);
        sums.n_source += 1;
        if !(AMOUNT_MIN..=AMOUNT_MAX).contains(&e.amount) {
            let message = format!("amount: must be between {AMOUNT_MIN} and {AMOUNT_MAX}, got {}", e.amount);
            self.refuse(schema, EVENTS, e.id, message);
            return None;
        }
        let metadata = match e.metadata {
            Value::Object(map) => match Metadata::from_map(map) {
                Ok(m) => m,
                Err(err) => {
                    self.refuse(schema, EVENTS, e.id, err.to_string());
                    return None;
                }
            },
            other => {
                let kind = match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::String(_) => "a string",
                    Value::Array(_) => "an array",
                    Value::Object(_) => "an object",
                };
                self.refuse(schema, EVENTS, e.id, format!("metadata: must be a JSON object, got {kind}"));
                return None;
            }
        };
        let Some(usage_after) = sums.tally_sum.checked_add(e.amount) else {
            self.refuse(schema, EVENTS, e.id, format!("{}: the period's counter would overflow", ctx.metric));
            return None;
        };
        sums.tally_sum = usage_after;
        self.touched
            .entry((ctx.tenant.clone(), ctx.metric.clone(), period.start()))
            .or_insert(Touched { period, source_record: None });
        Some(RecordedEvent {
            event: UsageEvent {
                id: e.id,
                tenant_id: ctx.tenant.clone(),
                metric_code: ctx.metric.clone(),
                amount: e.amount,
                metadata,
                idempotency_key: None,
                timestamp: e.created_at,
                created_at: e.created_at,
                kind: tally_domain::EventKind::Usage,
                reason: None,
            },
            receipt: EventReceipt {
                usage_after,
                limit: ctx.limit.limit,
                enforcement: ctx.limit.enforcement,
                period,
                timestamp_explicit: true,
                set: false,
                reserved: 0,
            },
        })
    }

    /// Writes a batch of events, `IMPORT_WRITE_CONCURRENCY` at a time (in a dry run, only
    /// looks each up).
    async fn write_batch(&mut self, schema: &str, batch: &[RecordedEvent]) -> anyhow::Result<()> {
        // Closed periods take no more events: those rows are ERROR lines (exit 2). An event
        // already in Tally is present whatever its period.
        let mut open = Vec::with_capacity(batch.len());
        for e in batch {
            let period = e.receipt.period;
            let closed = self
                .tally
                .closed_at(&e.event.tenant_id, &e.event.metric_code, period, &mut self.marks)
                .await
                .with_context(|| format!("reading the closed periods of tenant {}", e.event.tenant_id))?;
            match closed {
                Some(at)
                    if self.tally.store().find_event(&e.event.tenant_id, e.event.id).await?.is_none() =>
                {
                    let message = format!(
                        "the period [{}, {}) of {} is closed (since {}); reopen it to import into it",
                        format_rfc3339(period.start()),
                        format_rfc3339(period.end()),
                        e.event.metric_code,
                        format_rfc3339(at)
                    );
                    self.refuse(schema, EVENTS, e.event.id, message);
                    // A closed period's record is not rebuilt either.
                    self.touched.remove(&(
                        e.event.tenant_id.clone(),
                        e.event.metric_code.clone(),
                        period.start(),
                    ));
                }
                _ => open.push(e),
            }
        }
        let store = self.tally.store();
        let dry_run = self.dry_run;
        let results: Vec<(Uuid, Result<Written, StoreError>)> = futures::stream::iter(open)
            .map(|e| async move { (e.event.id, write_event(store, e, dry_run).await) })
            .buffer_unordered(IMPORT_WRITE_CONCURRENCY)
            .collect()
            .await;
        for (id, result) in results {
            match result.with_context(|| format!("writing event {id} of schema {schema}"))? {
                Written::Imported => self.report.events_imported += 1,
                Written::Present => self.report.events_present += 1,
                Written::Refused(message) => self.refuse(schema, EVENTS, id, message),
            }
        }
        Ok(())
    }

    async fn finish_group(
        &mut self,
        conn: &mut PgConnection,
        schema: &SourceSchema,
        g: Group,
    ) -> anyhow::Result<()> {
        let records = records_of(conn, schema, &g.tenant_raw, &g.metric_raw).await?;
        self.compare(&schema.name, &g.tenant_raw, &g.metric_raw, &g.ctx, &g.periods, records);
        Ok(())
    }

    /// The records of the schema whose (tenant, metric) has no event at all.
    async fn records_without_events(
        &mut self,
        conn: &mut PgConnection,
        schema: &SourceSchema,
        seen: &HashSet<(String, String)>,
    ) -> anyhow::Result<()> {
        let mut unseen: BTreeMap<(String, String), Vec<SourceRecord>> = BTreeMap::new();
        let mut after: Option<Uuid> = None;
        loop {
            let page = records_page(conn, schema, after).await?;
            let n_page = page.len();
            after = page.last().map(|r| r.id);
            for r in page {
                let key = (r.tenant_id.clone(), r.metric_code.clone());
                if !seen.contains(&key) {
                    unseen.entry(key).or_default().push(r);
                }
            }
            if n_page < IMPORT_BATCH_LEN {
                break;
            }
        }
        let no_events = BTreeMap::new();
        for ((tenant, metric), records) in unseen {
            let ctx = self.group_ctx(&tenant, &metric);
            self.compare(&schema.name, &tenant, &metric, &ctx, &no_events, records);
        }
        Ok(())
    }

    /// Compares the records of one (tenant, metric) with its events' sums per period.
    fn compare(
        &mut self,
        schema: &str,
        tenant_raw: &str,
        metric_raw: &str,
        ctx: &Result<GroupCtx, String>,
        periods: &BTreeMap<Timestamp, PeriodSums>,
        records: Vec<SourceRecord>,
    ) {
        self.report.records_read += records.len() as u64;
        let ctx = match ctx {
            Ok(ctx) => ctx,
            Err(reason) => {
                for r in records {
                    self.refuse(schema, RECORDS, r.id, format!("not compared: {reason}"));
                }
                return;
            }
        };
        let found = |kind: Kind, start: Timestamp, end: Timestamp| Disagreement {
            kind,
            schema: schema.to_owned(),
            tenant_id: tenant_raw.to_owned(),
            metric_code: metric_raw.to_owned(),
            period_start: start,
            period_end: end,
            records: Vec::new(),
            events_sum: 0,
            n_events: 0,
            tally_period: None,
        };
        let mut aligned: BTreeMap<Timestamp, Vec<SourceRecord>> = BTreeMap::new();
        for r in records {
            if r.period_start >= r.period_end {
                let message = format!(
                    "period_end {} is not after period_start {}",
                    format_rfc3339(r.period_end),
                    format_rfc3339(r.period_start)
                );
                self.refuse(schema, RECORDS, r.id, message);
                continue;
            }
            match ctx.limit.period.containing(r.period_start, ctx.anchor) {
                Err(err) => self.refuse(schema, RECORDS, r.id, format!("period_start: {err}")),
                Ok(p) if p.start() == r.period_start && p.end() == r.period_end => {
                    aligned.entry(p.start()).or_default().push(r);
                }
                Ok(p) => {
                    let mut d = found(Kind::Misaligned, r.period_start, r.period_end);
                    d.records.push((r.id, r.current_usage));
                    d.tally_period = Some(p);
                    self.report.disagreements.push(d);
                }
            }
        }
        let mut out = Vec::new();
        for (start, recs) in &aligned {
            let (events_sum, n_events) = periods.get(start).map_or((0, 0), |s| (s.source_sum, s.n_source));
            let end = recs.first().map_or(*start, |r| r.period_end);
            let kind = if recs.len() >= 2 {
                Some(Kind::Duplicate)
            } else if n_events == 0 {
                Some(Kind::RecordWithoutEvents)
            } else if recs.iter().any(|r| r.current_usage != events_sum) {
                Some(Kind::Drift)
            } else {
                None
            };
            if let Some(kind) = kind {
                let mut d = found(kind, *start, end);
                d.records = recs.iter().map(|r| (r.id, r.current_usage)).collect();
                d.events_sum = events_sum;
                d.n_events = n_events;
                out.push(d);
            }
            if let [only] = recs.as_slice()
                && let Some(t) = self.touched.get_mut(&(ctx.tenant.clone(), ctx.metric.clone(), *start))
                && t.source_record.is_none()
            {
                t.source_record = Some((only.id, only.created_at));
            }
        }
        for (start, sums) in periods {
            if !aligned.contains_key(start) {
                let mut d = found(Kind::EventsWithoutRecord, sums.period.start(), sums.period.end());
                d.events_sum = sums.source_sum;
                d.n_events = sums.n_source;
                out.push(d);
            }
        }
        out.sort_by_key(|d| d.period_start);
        self.report.disagreements.extend(out);
    }

    /// Sets the counter of every period the import touched to what Tally's own events (and
    /// audited resets) say, creating the record when missing.
    async fn rebuild_records(&mut self) -> anyhow::Result<()> {
        self.report.records_rebuilt = self.touched.len() as u64;
        self.report.errors.sort();
        if self.dry_run || self.touched.is_empty() {
            return Ok(());
        }
        let store = self.tally.store();
        let inputs = store.verify_inputs().await.context("reading Tally's event sums")?;
        let mut sums: HashMap<RecordKeyOf, i64> = HashMap::new();
        for e in inputs.events {
            sums.insert((e.tenant_id, e.metric_code, e.period_start), e.amount_sum);
        }
        for r in inputs.resets {
            let w = sums.entry((r.tenant_id, r.metric_code, r.period_start)).or_default();
            *w = w.saturating_sub(r.previous_usage);
        }
        let mut existing: HashMap<RecordKeyOf, i64> = HashMap::new();
        for r in inputs.records {
            existing.insert((r.key.tenant_id, r.key.metric_code, r.key.period.start()), r.current_usage);
        }
        let now = self.tally.now();
        let touched = std::mem::take(&mut self.touched);
        for (key, t) in touched {
            let expected = sums.get(&key).copied().unwrap_or(0);
            let (tenant, metric, start) = &key;
            match existing.get(&key) {
                Some(&usage) if usage == expected => self.report.records_unchanged += 1,
                Some(_) => {
                    let mut record =
                        store.get_for_period(tenant, metric, *start).await.with_context(|| {
                            format!("reading the record of {tenant} {metric} {}", format_rfc3339(*start))
                        })?;
                    record.current_usage = expected;
                    record.updated_at = now;
                    store.save(&record).await.with_context(|| format!("saving record {}", record.id))?;
                    self.report.records_updated += 1;
                }
                None => {
                    let (id, created_at) = t.source_record.unwrap_or_else(|| (Uuid::now_v7(), now));
                    let mut record = UsageRecord {
                        id,
                        tenant_id: tenant.clone(),
                        metric_code: metric.clone(),
                        current_usage: expected,
                        period_start: t.period.start(),
                        period_end: t.period.end(),
                        created_at,
                        updated_at: now,
                    };
                    let mut saved = store.save(&record).await;
                    if matches!(saved, Err(StoreError::Conflict(_))) && t.source_record.is_some() {
                        // The source record's id is taken in Tally: a fresh id will do.
                        record.id = Uuid::now_v7();
                        saved = store.save(&record).await;
                    }
                    match saved {
                        Ok(()) => self.report.records_created += 1,
                        Err(StoreError::Conflict(why)) => {
                            let message = format!(
                                "record of {tenant} {metric} {} not saved: {why}",
                                format_rfc3339(*start)
                            );
                            self.refuse("-", "tally record", record.id, message);
                        }
                        Err(e) => return Err(e).with_context(|| format!("saving record {}", record.id)),
                    }
                }
            }
        }
        self.report.errors.sort();
        Ok(())
    }
}

/// Appends one event to Tally's trail unless it is there already (in a dry run, only
/// looks). An id taken by a different event refuses the row; a store failure is an `Err`.
async fn write_event<S: Store>(store: &S, e: &RecordedEvent, dry_run: bool) -> Result<Written, StoreError> {
    let same = |found: &RecordedEvent| {
        found.event.metric_code == e.event.metric_code
            && found.event.amount == e.event.amount
            && found.event.timestamp == e.event.timestamp
            && found.event.metadata == e.event.metadata
    };
    let taken = || Written::Refused("the id is taken in Tally by a different event".to_owned());
    if let Some(found) = store.find_event(&e.event.tenant_id, e.event.id).await? {
        return Ok(if same(&found) { Written::Present } else { taken() });
    }
    if dry_run {
        return Ok(Written::Imported);
    }
    match store.record(e).await {
        Ok(()) => Ok(Written::Imported),
        // Another run wrote it meanwhile, or the id is another tenant's.
        Err(StoreError::Conflict(_)) => match store.find_event(&e.event.tenant_id, e.event.id).await? {
            Some(found) if same(&found) => Ok(Written::Present),
            _ => Ok(taken()),
        },
        Err(StoreError::NotFound(what)) => Ok(Written::Refused(format!("{what} not found in Tally"))),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_domain::PeriodKind;
    use tally_domain::time::parse_rfc3339;

    #[test]
    fn schema_lists_are_checked_names() {
        assert_eq!(parse_schemas("all").unwrap(), SchemaSpec::All);
        assert_eq!(parse_schemas("public").unwrap(), SchemaSpec::Named(vec!["public".to_owned()]));
        assert_eq!(
            parse_schemas(" tenant_a, tenant-b ,tenant_a").unwrap(),
            SchemaSpec::Named(vec!["tenant_a".to_owned(), "tenant-b".to_owned()])
        );
        for bad in ["", "a,,b", "x\"; DROP TABLE t; --", "1abc", "a b", &"s".repeat(64)] {
            assert!(parse_schemas(bad).is_err(), "{bad:?}");
        }
        let s = SourceSchema::new("Tenant-1").unwrap();
        assert_eq!(s.quoted, "\"Tenant-1\"");
    }

    #[test]
    fn the_plans_file_takes_a_default_plan_and_a_tenants_table() {
        let text = r#"
default_plan = "free"

[tenants]
acme = "pro"
"globex.io" = "free"

[plans.free]
name = "Free"

[[plans.free.limits]]
metric_code = "api_calls"
limit = 100
enforcement = "hard"

[plans.pro]
name = "Pro"
"#;
        let p = parse_import_plans(text).unwrap();
        assert_eq!(p.plans.len(), 2);
        assert_eq!(p.default_plan.as_ref().map(PlanCode::as_str), Some("free"));
        assert_eq!(p.tenants.get(&TenantId::parse("acme").unwrap()).map(PlanCode::as_str), Some("pro"));
        // Without the two keys it is exactly the file of `tally plans apply`.
        let plain = parse_import_plans(
            &text
                .replace("default_plan = \"free\"", "")
                .replace("[tenants]\nacme = \"pro\"\n\"globex.io\" = \"free\"", ""),
        )
        .unwrap();
        assert!(plain.default_plan.is_none() && plain.tenants.is_empty() && plain.plans.len() == 2);
        assert!(parse_import_plans("[tenants]\n\"bad tenant!\" = \"pro\"\n").is_err());
        assert!(parse_import_plans("default_plan = 3\n").is_err());
        assert!(parse_import_plans("[plans.pro]\nname = \"Pro\"\ntypo = 1\n").is_err());
    }

    #[test]
    fn the_calendar_anchor_makes_months_calendar_months() {
        let anchor = calendar_anchor(parse_rfc3339("2026-11-17T13:45:00Z").unwrap());
        assert_eq!(anchor, parse_rfc3339("2026-01-01T00:00:00Z").unwrap());
        let p = PeriodKind::Month.containing(parse_rfc3339("2027-02-14T08:00:00Z").unwrap(), anchor).unwrap();
        assert_eq!(p.start(), parse_rfc3339("2027-02-01T00:00:00Z").unwrap());
        assert_eq!(p.end(), parse_rfc3339("2027-03-01T00:00:00Z").unwrap());
        let y = PeriodKind::Year.containing(parse_rfc3339("2025-06-01T00:00:00Z").unwrap(), anchor).unwrap();
        assert_eq!(y.start(), parse_rfc3339("2025-01-01T00:00:00Z").unwrap());
    }

    #[test]
    fn the_report_names_every_record_of_a_duplicate() {
        let t = parse_rfc3339("2026-11-01T00:00:00Z").unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let d = Disagreement {
            kind: Kind::Duplicate,
            schema: "public".to_owned(),
            tenant_id: "acme".to_owned(),
            metric_code: "api_calls".to_owned(),
            period_start: t,
            period_end: t + chrono::Duration::days(30),
            records: vec![(a, 3), (b, 4)],
            events_sum: 7,
            n_events: 2,
            tally_period: None,
        };
        let text = d.to_text();
        assert!(text.contains(&a.to_string()) && text.contains(&b.to_string()), "{text}");
        assert_eq!(d.to_json()["records"].as_array().unwrap().len(), 2);
    }
}
