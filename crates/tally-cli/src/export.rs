//! `tally export usage`: the period totals (and, with `--events`, the events) a billing
//! system reads, streamed page by page as CSV or NDJSON.
//!
//! Everything is read through the store port and the service's use cases (`list_tenants`,
//! `Tally::periods`, `Tally::events`), so the export is the same on SQLite and PostgreSQL in
//! both tenancies. Tenants are visited in id order; each tenant's periods come newest first
//! (period start descending, then metric code descending), and with `--events` each period
//! row is followed by that period's events, newest first. Every read is one page of
//! `EXPORT_PAGE_LEN` rows, written out before the next is read: memory stays flat whatever
//! the size of the export.
//!
//! Rows:
//! - a period: `tenant_id, metric_code, period, period_start, period_end, current_usage,
//!   limit, enforcement, closed_at, reopened_at` (`period`, `limit` and `enforcement` as the
//!   tenant's plan gives the metric now; a gauge's unbounded period has null bounds);
//! - an event: `tenant_id, event_id, metric_code, kind, amount, timestamp, created_at,
//!   idempotency_key, reason, metadata`.
//!
//! NDJSON is one object per line with `"type": "period" | "event"`, absent values as null.
//! CSV is a header line, then a line per row: the column `type` first, then the union of
//! both rows' columns (`CSV_COLUMNS`), a cell empty when its row type lacks it or its value
//! is absent; cells are quoted as RFC 4180 says, lines end with `\n`, metadata is compact
//! JSON.
//!
//! A closed stdout (`tally export ... | head`) ends the export quietly with exit 0.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use tally_domain::limits::EXPORT_PAGE_LEN;
use tally_domain::time::{format_rfc3339, parse_rfc3339};
use tally_domain::{DomainError, RecordedEvent, TenantId, Timestamp};
use tally_service::closing::{PeriodFilter, PeriodView};
use tally_service::usage::EventFilter;
use tally_service::{ServiceError, Tally};
use tally_store::{Store, StoreError};

/// Bytes buffered before a write to the output.
pub const EXPORT_BUFFER_BYTES: usize = 256 * 1024;

/// The CSV header: the row type, then the union of the period and event columns.
pub const CSV_COLUMNS: [&str; 19] = [
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

/// What to export.
#[derive(Subcommand, Debug)]
pub enum ExportCmd {
    /// Period totals (and events with --events), streamed.
    Usage(UsageExportArgs),
}

/// `tally export usage` flags.
#[derive(Args, Debug, Clone)]
pub struct UsageExportArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Periods starting at or after (RFC 3339).
    #[arg(long)]
    pub from: Option<String>,
    /// Periods starting before (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    /// Only closed periods.
    #[arg(long)]
    pub closed_only: bool,
    /// The events of each period too.
    #[arg(long)]
    pub events: bool,
    /// `csv` or `ndjson`.
    #[arg(long, value_parser = ["csv", "ndjson"])]
    pub format: String,
    /// Write here instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Runs `tally export ...`.
pub async fn run<S: Store>(tally: &Tally<S>, cmd: &ExportCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ExportCmd::Usage(args) => export_usage(tally, args).await,
    }
}

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

/// What one export reads, the flags checked.
struct Selection {
    tenant: Option<TenantId>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    closed: Option<bool>,
    events: bool,
}

/// Why an export stopped: the output failed, or reading did.
enum Failure {
    Write(io::Error),
    Read(ServiceError),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Write(e)
    }
}

impl From<ServiceError> for Failure {
    fn from(e: ServiceError) -> Failure {
        Failure::Read(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Read(e.into())
    }
}

async fn export_usage<S: Store>(tally: &Tally<S>, args: &UsageExportArgs) -> anyhow::Result<ExitCode> {
    let from = args.from.as_deref().map(|raw| flag_instant("--from", raw)).transpose()?;
    let to = args.to.as_deref().map(|raw| flag_instant("--to", raw)).transpose()?;
    let format = match args.format.as_str() {
        "csv" => Format::Csv,
        "ndjson" => Format::Ndjson,
        other => anyhow::bail!("--format: must be csv or ndjson, got {other:?}"),
    };
    let tenant = match args.tenant.as_deref() {
        Some(raw) => {
            let id = TenantId::parse(raw).map_err(|e| flag_error("--tenant", e))?;
            if tally.store().find_tenant(&id).await?.is_none() {
                anyhow::bail!("tenant {id} not found");
            }
            Some(id)
        }
        None => None,
    };
    let selection =
        Selection { tenant, from, to, closed: args.closed_only.then_some(true), events: args.events };

    let sink: Box<dyn Write + Send> = match &args.output {
        Some(path) => {
            Box::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        None => Box::new(io::stdout()),
    };
    let mut rows = Rows { out: BufWriter::with_capacity(EXPORT_BUFFER_BYTES, sink), format };
    let bar = io::stderr().is_terminal().then(progress_bar);

    let mut result = export(tally, &selection, &mut rows, bar.as_ref()).await;
    if result.is_ok() {
        result = rows.out.flush().map_err(Failure::Write);
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The reader went away (`| head`): what it wanted it has.
        Err(Failure::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe && args.output.is_none() => {
            Ok(ExitCode::SUCCESS)
        }
        Err(Failure::Write(e)) => Err(match &args.output {
            Some(path) => anyhow::Error::new(e).context(format!("writing {}", path.display())),
            None => anyhow::Error::new(e).context("writing to stdout"),
        }),
        Err(Failure::Read(e)) => Err(e.into()),
    }
}

/// An RFC 3339 flag, its error naming the flag.
fn flag_instant(flag: &str, raw: &str) -> anyhow::Result<Timestamp> {
    parse_rfc3339(raw).map_err(|e| flag_error(flag, e))
}

fn flag_error(flag: &str, e: DomainError) -> anyhow::Error {
    match e {
        DomainError::Invalid { rule, .. } => anyhow::anyhow!("{flag}: {rule}"),
        other => anyhow::anyhow!("{flag}: {other}"),
    }
}

/// A spinner counting the rows written, in the style of `tally import django`'s bar (the
/// total is not known without counting first).
fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} [{elapsed_precise}] {human_pos} rows exported",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar
}

/// Every selected tenant, in id order.
async fn export<S: Store>(
    tally: &Tally<S>,
    sel: &Selection,
    rows: &mut Rows,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), Failure> {
    rows.header()?;
    if let Some(tenant) = &sel.tenant {
        return export_tenant(tally, tenant, sel, rows, bar).await;
    }
    let mut after: Option<TenantId> = None;
    loop {
        let page = tally.store().list_tenants(after.as_ref(), EXPORT_PAGE_LEN).await?;
        for t in &page {
            export_tenant(tally, &t.tenant_id, sel, rows, bar).await?;
        }
        if page.len() < EXPORT_PAGE_LEN as usize {
            return Ok(());
        }
        after = page.into_iter().next_back().map(|t| t.tenant_id);
    }
}

/// One tenant's periods, newest first, each followed by its events when asked.
async fn export_tenant<S: Store>(
    tally: &Tally<S>,
    tenant: &TenantId,
    sel: &Selection,
    rows: &mut Rows,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), Failure> {
    if let Some(bar) = bar {
        bar.set_message(tenant.to_string());
    }
    let mut filter = PeriodFilter {
        closed: sel.closed,
        metric_code: None,
        from: sel.from,
        to: sel.to,
        limit: EXPORT_PAGE_LEN,
        cursor: None,
    };
    loop {
        let page = tally.periods(tenant, &filter).await?;
        for period in &page.periods {
            rows.period(tenant, period)?;
            if let Some(bar) = bar {
                bar.inc(1);
            }
            if sel.events {
                export_events(tally, tenant, period, rows, bar).await?;
            }
        }
        match page.next_cursor {
            Some(next) => filter.cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// The events of one period, newest first.
async fn export_events<S: Store>(
    tally: &Tally<S>,
    tenant: &TenantId,
    period: &PeriodView,
    rows: &mut Rows,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), Failure> {
    // A gauge's unbounded period holds every event of its metric.
    let bounds = period.period.bounds();
    let mut filter = EventFilter {
        metric_code: Some(period.metric_code.clone()),
        from: bounds.map(|(start, _)| start),
        to: bounds.map(|(_, end)| end),
        limit: EXPORT_PAGE_LEN,
        cursor: None,
        kind: None,
    };
    loop {
        let page = tally.events(tenant, &filter).await?;
        for event in &page.events {
            rows.event(event)?;
        }
        if let Some(bar) = bar {
            bar.inc(page.events.len() as u64);
        }
        match page.next_cursor {
            Some(next) => filter.cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// A period row as NDJSON writes it.
#[derive(Serialize)]
struct PeriodLine<'a> {
    #[serde(rename = "type")]
    row_type: &'static str,
    tenant_id: &'a str,
    metric_code: &'a str,
    period: Option<&'static str>,
    period_start: Option<String>,
    period_end: Option<String>,
    current_usage: i64,
    limit: Option<i64>,
    enforcement: Option<&'static str>,
    closed_at: Option<String>,
    reopened_at: Option<String>,
}

impl<'a> PeriodLine<'a> {
    fn new(tenant: &'a TenantId, p: &'a PeriodView) -> PeriodLine<'a> {
        let bounds = p.period.bounds();
        PeriodLine {
            row_type: "period",
            tenant_id: tenant.as_str(),
            metric_code: p.metric_code.as_str(),
            period: p.period_kind.map(|k| k.as_str()),
            period_start: bounds.map(|(start, _)| format_rfc3339(start)),
            period_end: bounds.map(|(_, end)| format_rfc3339(end)),
            current_usage: p.current_usage,
            limit: p.limit,
            enforcement: p.enforcement.map(|e| e.as_str()),
            closed_at: p.closed_at.map(format_rfc3339),
            reopened_at: p.reopened_at.map(format_rfc3339),
        }
    }
}

/// An event row as NDJSON writes it.
#[derive(Serialize)]
struct EventLine<'a> {
    #[serde(rename = "type")]
    row_type: &'static str,
    tenant_id: &'a str,
    event_id: String,
    metric_code: &'a str,
    kind: &'static str,
    amount: i64,
    timestamp: String,
    created_at: String,
    idempotency_key: Option<&'a str>,
    reason: Option<&'a str>,
    metadata: &'a tally_domain::Metadata,
}

impl<'a> EventLine<'a> {
    fn new(e: &'a RecordedEvent) -> EventLine<'a> {
        let e = &e.event;
        EventLine {
            row_type: "event",
            tenant_id: e.tenant_id.as_str(),
            event_id: e.id.to_string(),
            metric_code: e.metric_code.as_str(),
            kind: e.kind.as_str(),
            amount: e.amount,
            timestamp: format_rfc3339(e.timestamp),
            created_at: format_rfc3339(e.created_at),
            idempotency_key: e.idempotency_key.as_ref().map(|k| k.as_str()),
            reason: e.reason.as_ref().map(|r| r.as_str()),
            metadata: &e.metadata,
        }
    }
}

/// The output, one row at a time.
struct Rows {
    out: BufWriter<Box<dyn Write + Send>>,
    format: Format,
}

impl Rows {
    fn header(&mut self) -> io::Result<()> {
        if self.format == Format::Csv {
            self.csv_line(&CSV_COLUMNS.map(Some))?;
        }
        Ok(())
    }

    fn period(&mut self, tenant: &TenantId, p: &PeriodView) -> io::Result<()> {
        let line = PeriodLine::new(tenant, p);
        match self.format {
            Format::Ndjson => self.json_line(&line),
            Format::Csv => {
                let usage = line.current_usage.to_string();
                let limit = line.limit.map(|l| l.to_string());
                self.csv_line(&[
                    Some(line.row_type),
                    Some(line.tenant_id),
                    Some(line.metric_code),
                    line.period,
                    line.period_start.as_deref(),
                    line.period_end.as_deref(),
                    Some(&usage),
                    limit.as_deref(),
                    line.enforcement,
                    line.closed_at.as_deref(),
                    line.reopened_at.as_deref(),
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                ])
            }
        }
    }

    fn event(&mut self, e: &RecordedEvent) -> io::Result<()> {
        let line = EventLine::new(e);
        match self.format {
            Format::Ndjson => self.json_line(&line),
            Format::Csv => {
                let amount = line.amount.to_string();
                let metadata = line.metadata.to_json_string();
                self.csv_line(&[
                    Some(line.row_type),
                    Some(line.tenant_id),
                    Some(line.metric_code),
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    Some(&line.event_id),
                    Some(line.kind),
                    Some(&amount),
                    Some(&line.timestamp),
                    Some(&line.created_at),
                    line.idempotency_key,
                    line.reason,
                    Some(&metadata),
                ])
            }
        }
    }

    fn json_line(&mut self, row: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, row).map_err(io::Error::from)?;
        self.out.write_all(b"\n")
    }

    fn csv_line(&mut self, cells: &[Option<&str>; CSV_COLUMNS.len()]) -> io::Result<()> {
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                self.out.write_all(b",")?;
            }
            if let Some(cell) = cell {
                write_csv_cell(&mut self.out, cell)?;
            }
        }
        self.out.write_all(b"\n")
    }
}

/// One CSV cell as RFC 4180 says: quoted when it holds a comma, a double quote, CR or LF,
/// its double quotes doubled.
pub fn write_csv_cell(out: &mut impl Write, cell: &str) -> io::Result<()> {
    if !cell.bytes().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n')) {
        return out.write_all(cell.as_bytes());
    }
    let bytes = cell.as_bytes();
    out.write_all(b"\"")?;
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'"' {
            // The quote, then its double.
            out.write_all(&bytes[start..=i])?;
            out.write_all(b"\"")?;
            start = i + 1;
        }
    }
    out.write_all(&bytes[start..])?;
    out.write_all(b"\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(raw: &str) -> String {
        let mut out = Vec::new();
        write_csv_cell(&mut out, raw).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn csv_cells_are_quoted_only_when_they_must_be() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell(""), "");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("\""), "\"\"\"\"");
        assert_eq!(cell("two\nlines"), "\"two\nlines\"");
        assert_eq!(cell("cr\rhere"), "\"cr\rhere\"");
        assert_eq!(cell("{\"a\":\"x, \\\"y\\\"\"}"), "\"{\"\"a\"\":\"\"x, \\\"\"y\\\"\"\"\"}\"");
    }

    #[test]
    fn bad_instants_name_their_flag() {
        let e = flag_instant("--from", "yesterday").unwrap_err().to_string();
        assert!(e.starts_with("--from: must be RFC 3339"), "{e}");
    }
}
