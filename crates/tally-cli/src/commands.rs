//! The commands, generic over the store so that SQLite and PostgreSQL run the same code.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use chrono::Duration;
use serde_json::json;
use tally_domain::time::{format_rfc3339, parse_rfc3339};
use tally_domain::{
    Change, CorrectionRequest, IdempotencyKey, KeyScope, Metadata, MetricCode, Name, PlanCode, Reason,
    TenantId, Timestamp, UsageError, UsageRequest,
};
use tally_service::closing::PeriodFilter;
use tally_service::usage::EventFilter;
use tally_service::{ServiceConfig, ServiceError, SystemClock, Tally};
use tally_store::{PutOutcome, SchemaReport, Store};
use uuid::Uuid;

use crate::output::{self, print_json, to_json, used_of};
use crate::{
    AdminCmd, Backend, Cli, Command, Global, KeysCmd, PeriodsCmd, PlansCmd, TenantsCmd, open_backend,
};
use tally_http::dto;

/// Runs one command and returns the process's exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config =
        ServiceConfig { max_event_age: parse_age(&cli.global.max_event_age)?, ..ServiceConfig::default() };
    if let Command::Serve { server, .. } | Command::Demo { server } = &cli.command {
        config.webhook_retry = webhook_retry(server)?;
        rate_limits(server)?;
    }
    match &cli.command {
        Command::Bench(args) => return crate::bench::run(args.clone()).await,
        Command::Migrate { target_version } => return migrate(&cli.global, *target_version).await,
        Command::Serve { server, no_migrate, print_config } => {
            if *print_config {
                print_effective_config(&cli.global, server, *no_migrate);
                return Ok(ExitCode::SUCCESS);
            }
            crate::serve::init_logging(&server.log_format)?;
            return serve(&cli.global, server, *no_migrate, config, false).await;
        }
        Command::Demo { server } => {
            crate::serve::init_logging(&server.log_format)?;
            let mut global = cli.global.clone();
            if global.database_url.is_none() {
                let path = std::env::temp_dir().join(format!("tally-demo-{}.db", Uuid::now_v7().simple()));
                global.database_url = Some(format!("sqlite://{}", path.display()));
            }
            return serve(&global, server, false, config, true).await;
        }
        _ => {}
    }
    match open_backend(&cli.global, false).await? {
        Backend::Sqlite(s) => {
            run_with(Tally::with_clock(s, Arc::new(SystemClock), config), cli.command).await
        }
        Backend::Postgres(s) => {
            run_with(Tally::with_clock(s, Arc::new(SystemClock), config), cli.command).await
        }
    }
}

/// Parses an age such as `35d`, `12h`, `90m`, `3600s` or plain seconds.
pub fn parse_age(raw: &str) -> anyhow::Result<Duration> {
    let raw = raw.trim();
    let (digits, unit) = match raw.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => raw.split_at(i),
        None => (raw, "s"),
    };
    let n: i64 =
        digits.parse().with_context(|| format!("--max-event-age: {raw:?} is not an age like 35d"))?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    };
    match seconds {
        Some(s) if s > 0 && s <= 10 * 365 * 86_400 => Ok(Duration::seconds(s)),
        _ => bail!(
            "--max-event-age: {raw:?} must be a positive age like 35d, 12h, 90m or 3600s, at most 10 years"
        ),
    }
}

/// Parses a duration such as `250ms`, `5s`, `90m`, `1h` or `2d` given to `flag`.
pub fn parse_duration(flag: &str, raw: &str) -> anyhow::Result<std::time::Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits.parse().with_context(|| format!("{flag}: {raw:?} is not a duration like 5s"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" | "" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    };
    match ms {
        Some(ms) if ms > 0 && ms <= 365 * 86_400_000 => Ok(std::time::Duration::from_millis(ms)),
        _ => {
            bail!("{flag}: {raw:?} must be a positive duration like 250ms, 5s, 90m, 1h or 2d, at most a year")
        }
    }
}

/// `--rate-limit-tenant-key` and `--rate-limit-admin-key` of `tally serve`, read at start
/// (a bad one is an error naming the flag: exit 2).
fn rate_limits(
    server: &crate::ServerArgs,
) -> anyhow::Result<(Option<tally_domain::RateLimit>, Option<tally_domain::RateLimit>)> {
    let read = |flag: &str, raw: &Option<String>| {
        raw.as_deref()
            .map(|r| tally_domain::RateLimit::parse(r.trim()).with_context(|| format!("{flag}: {r:?}")))
            .transpose()
    };
    Ok((
        read("--rate-limit-tenant-key", &server.rate_limit_tenant_key)?,
        read("--rate-limit-admin-key", &server.rate_limit_admin_key)?,
    ))
}

/// The webhook retry settings of `tally serve`.
fn webhook_retry(server: &crate::ServerArgs) -> anyhow::Result<tally_domain::RetryPolicy> {
    let policy = tally_domain::RetryPolicy {
        initial: parse_duration("--webhook-retry-initial", &server.webhook_retry_initial)?,
        max_delay: parse_duration("--webhook-retry-max-delay", &server.webhook_retry_max_delay)?,
        window: parse_duration("--webhook-retry-window", &server.webhook_retry_window)?,
        timeout: parse_duration("--webhook-timeout", &server.webhook_timeout)?,
    };
    if policy.max_delay < policy.initial {
        bail!("--webhook-retry-max-delay must not be shorter than --webhook-retry-initial");
    }
    Ok(policy)
}

fn tenant(raw: &str) -> anyhow::Result<TenantId> {
    Ok(TenantId::parse(raw)?)
}

fn metric(raw: &str) -> anyhow::Result<MetricCode> {
    Ok(MetricCode::parse(raw)?)
}

fn plan(raw: &str) -> anyhow::Result<PlanCode> {
    Ok(PlanCode::parse(raw)?)
}

/// An amount: positive, or negative for a gauge (a metric limited with period none).
fn amount(raw: &str) -> anyhow::Result<Change> {
    let n: i64 = raw.parse().map_err(|_| anyhow::anyhow!("amount: must be a whole number, got {raw:?}"))?;
    Ok(Change::from_wire(Some(n), None)?)
}

fn instant(raw: Option<&str>) -> anyhow::Result<Option<Timestamp>> {
    Ok(raw.map(parse_rfc3339).transpose()?)
}

/// Maps a use case's error to a message and exit code: a HARD refusal is a "no" (1).
/// `period <start> to <end>`, or what a gauge has instead.
fn period_text(period: &tally_domain::Period) -> String {
    match period.bounds() {
        Some((start, end)) => format!("period {} to {}", format_rfc3339(start), format_rfc3339(end)),
        None => "gauge, no period".to_owned(),
    }
}

fn refused_or_error(e: ServiceError) -> anyhow::Result<ExitCode> {
    match e {
        ServiceError::Usage(u @ (UsageError::QuotaExceeded { .. } | UsageError::GaugeBelowZero { .. })) => {
            eprintln!("refused: {u}");
            Ok(ExitCode::from(1))
        }
        other => Err(other.into()),
    }
}

async fn run_with<S: Store>(tally: Tally<S>, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate { .. } | Command::Serve { .. } | Command::Demo { .. } | Command::Bench(_) => {
            unreachable!("handled before a store is opened")
        }
        Command::Import(cmd) => return crate::import_django::run(&tally, cmd).await,
        Command::Plans(PlansCmd::Apply { file }) => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let plans =
                crate::plans_file::parse_plans(&text).with_context(|| format!("in {}", file.display()))?;
            for (code, spec) in plans {
                let (what, p) = match tally.put_plan(&code, &spec, None).await? {
                    PutOutcome::Created(p) => ("created", p),
                    PutOutcome::Updated(p) => ("updated", p),
                    PutOutcome::Unchanged(p) => ("unchanged", p),
                };
                println!("{code}: {what} (version {})", p.version);
            }
        }
        Command::Plans(PlansCmd::List { json }) => {
            let plans = tally.list_plans().await?;
            if json {
                print_json(&json!(
                    plans.iter().map(|p| to_json(dto::PlanResponse::from(p))).collect::<Vec<_>>()
                ));
            } else {
                for p in plans {
                    let limits: Vec<String> = p
                        .limits
                        .iter()
                        .map(|l| {
                            let v = l.limit.map_or("unlimited".to_owned(), |v| v.to_string());
                            format!("{} {} {} per {}", l.metric_code, v, l.enforcement, l.period)
                        })
                        .collect();
                    println!("{}\t{}\tv{}\t{}", p.code, p.name, p.version, limits.join(", "));
                }
            }
        }
        Command::Tenants(TenantsCmd::Create { tenant: t, name, plan: p, anchor }) => {
            let id = tenant(&t)?;
            let name = Name::parse(name.as_deref().unwrap_or(&t))?;
            let anchor = instant(anchor.as_deref())?;
            let out = tally.put_tenant(&id, &name).await?;
            println!("{id}: {}", if out.is_created() { "created" } else { "exists" });
            if let Some(p) = p {
                let sub = tally.subscribe(&id, &plan(&p)?, anchor, None).await?;
                println!("{id}: subscribed to {} (anchor {})", sub.plan_code, format_rfc3339(sub.anchor));
            } else if anchor.is_some() {
                bail!("--anchor needs --plan");
            }
        }
        Command::Tenants(TenantsCmd::List { json }) => {
            let mut all = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = tally.list_tenants(tally_domain::limits::PAGE_LEN_MAX, cursor.as_deref()).await?;
                all.extend(page.tenants);
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            if json {
                print_json(&json!(
                    all.iter().map(|v| to_json(dto::TenantResponse::from(v))).collect::<Vec<_>>()
                ));
            } else {
                for v in all {
                    let plan = v.subscription.as_ref().map_or("-".to_owned(), |s| s.plan_code.to_string());
                    println!("{}\t{}\t{}", v.tenant.tenant_id, v.tenant.name, plan);
                }
            }
        }
        Command::Tenants(TenantsCmd::Show { tenant: t, json }) => {
            let v = tally.get_tenant(&tenant(&t)?).await?;
            if json {
                print_json(&to_json(dto::TenantResponse::from(&v)));
            } else {
                println!("tenant: {}", v.tenant.tenant_id);
                println!("name: {}", v.tenant.name);
                println!("created: {}", format_rfc3339(v.tenant.created_at));
                match &v.subscription {
                    Some(s) => println!(
                        "plan: {} (anchor {}, since {})",
                        s.plan_code,
                        format_rfc3339(s.anchor),
                        format_rfc3339(s.started_at)
                    ),
                    None => println!("plan: none"),
                }
                for o in &v.overrides {
                    let value = o.limit.map_or("unlimited".to_owned(), |l| l.to_string());
                    println!("override: {} {} {} per {}", o.metric_code, value, o.enforcement, o.period);
                }
            }
        }
        Command::Subscribe { tenant: t, plan: p, anchor } => {
            let sub = tally.subscribe(&tenant(&t)?, &plan(&p)?, instant(anchor.as_deref())?, None).await?;
            println!("{t}: subscribed to {} (anchor {})", sub.plan_code, format_rfc3339(sub.anchor));
        }
        Command::Keys(KeysCmd::Create { admin, tenant: t, rate_limit }) => {
            let scope = match (admin, t) {
                (true, None) => KeyScope::Admin,
                (false, Some(t)) => KeyScope::Tenant(tenant(&t)?),
                _ => bail!("give exactly one of --admin or --tenant TENANT"),
            };
            let rate_limit = rate_limit.as_deref().map(tally_domain::RateLimit::parse).transpose()?;
            let (key, secret) = tally.create_key_with(scope, rate_limit, None).await?;
            println!("id: {}", key.id);
            match key.scope.tenant() {
                Some(t) => println!("scope: tenant {t}"),
                None => println!("scope: admin"),
            }
            if let Some(r) = key.rate_limit {
                println!("rate limit: {r}");
            }
            println!("{secret}");
        }
        Command::Keys(KeysCmd::List { json }) => {
            let keys = tally.list_keys().await?;
            if json {
                print_json(&json!(keys.iter().map(output::key_json).collect::<Vec<_>>()));
            } else {
                for k in keys {
                    let scope = k.scope.tenant().map_or("admin".to_owned(), |t| format!("tenant {t}"));
                    let used = k
                        .last_used_at
                        .map_or("never used".to_owned(), |t| format!("last used {}", format_rfc3339(t)));
                    let revoked =
                        k.revoked_at.map_or(String::new(), |t| format!("\trevoked {}", format_rfc3339(t)));
                    println!("{}\t{scope}\tcreated {}\t{used}{revoked}", k.id, format_rfc3339(k.created_at));
                }
            }
        }
        Command::Admin(AdminCmd::SetPassword) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
            let password = line.strip_suffix('\n').unwrap_or(&line);
            let password = password.strip_suffix('\r').unwrap_or(password);
            tally.set_admin_password(password).await?;
            println!("admin password set");
        }
        Command::Keys(KeysCmd::Revoke { id }) => {
            let id = Uuid::try_parse(&id).map_err(|_| anyhow::anyhow!("key id: {id:?} is not a UUID"))?;
            tally.revoke_key(id, None).await?;
            println!("{id}: revoked");
        }
        Command::Record { tenant: t, metric: m, amount: a, key, metadata, at, json } => {
            let metadata = match metadata {
                Some(raw) => {
                    let value: serde_json::Value = serde_json::from_str(&raw)
                        .map_err(|e| anyhow::anyhow!("metadata: not valid JSON: {e}"))?;
                    if !value.is_object() {
                        bail!("metadata: must be a JSON object");
                    }
                    Metadata::new(value)?
                }
                None => Metadata::default(),
            };
            let req = UsageRequest {
                tenant_id: tenant(&t)?,
                metric_code: metric(&m)?,
                change: amount(&a)?,
                idempotency_key: key.as_deref().map(IdempotencyKey::parse).transpose()?,
                metadata,
                timestamp: instant(at.as_deref())?,
            };
            let out = match tally.record(req).await {
                Ok(out) => out,
                Err(e) => return refused_or_error(e),
            };
            if json {
                print_json(&to_json(dto::UsageResponse::from(&out)));
            } else {
                let replayed = if out.replayed { " (replayed: nothing recorded)" } else { "" };
                println!(
                    "{}: {} {}: {}, {}{replayed}",
                    out.tenant_id,
                    out.metric_code,
                    out.amount,
                    used_of(out.current_usage, out.limit),
                    period_text(&out.period)
                );
            }
        }
        Command::Check { tenant: t, metric: m, amount: a, json } => {
            let c = tally.check(&tenant(&t)?, &metric(&m)?, amount(&a)?).await?;
            if json {
                print_json(&to_json(dto::CheckResponse::from(&c)));
            } else {
                let verdict = if c.allowed { "allowed" } else { "refused" };
                println!("{verdict}: {} {}", c.metric_code, used_of(c.current_usage, c.limit));
            }
            return Ok(if c.allowed { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        Command::Usage { tenant: t, json } => {
            let u = tally.usage(&tenant(&t)?).await?;
            if json {
                print_json(&to_json(dto::TenantUsageResponse::from(&u)));
            } else {
                println!("{} on plan {}", u.tenant_id, u.plan_code);
                for m in &u.metrics {
                    let flag = if m.exceeded { " EXCEEDED" } else { "" };
                    let period = match m.period.bounds() {
                        Some((_, end)) => format!("per {} until {}", m.period_kind, format_rfc3339(end)),
                        None => "gauge, no period".to_owned(),
                    };
                    println!(
                        "{}\t{}\t{}\t{period}{flag}",
                        m.metric_code,
                        used_of(m.current_usage, m.limit),
                        m.enforcement,
                    );
                }
            }
        }
        Command::Events { tenant: t, metric: m, from, to, limit, cursor, json } => {
            let filter = EventFilter {
                metric_code: m.as_deref().map(metric).transpose()?,
                from: instant(from.as_deref())?,
                to: instant(to.as_deref())?,
                limit,
                cursor,
                kind: None,
            };
            let page = tally.events(&tenant(&t)?, &filter).await?;
            if json {
                print_json(&json!({
                    "events": page.events.iter().map(|e| to_json(dto::EventResponse::from(e))).collect::<Vec<_>>(),
                    "next_cursor": page.next_cursor,
                }));
            } else {
                for e in &page.events {
                    let key = e.event.idempotency_key.as_ref().map_or("-", |k| k.as_str());
                    println!(
                        "{}\t{}\t{}\t{}\t{key}\t{}",
                        format_rfc3339(e.event.timestamp),
                        e.event.metric_code,
                        e.event.amount,
                        e.event.id,
                        e.event.metadata.to_json_string()
                    );
                }
                if let Some(c) = page.next_cursor {
                    println!("next page: --cursor {c}");
                }
            }
        }
        Command::Correct { tenant: t, metric: m, amount: a, reason, at, key, json } => {
            let n: i64 =
                a.parse().map_err(|_| anyhow::anyhow!("amount: must be a whole number, got {a:?}"))?;
            let req = CorrectionRequest {
                tenant_id: tenant(&t)?,
                metric_code: metric(&m)?,
                amount: CorrectionRequest::check_amount(n)?,
                reason: Reason::parse(&reason)?,
                idempotency_key: key.as_deref().map(IdempotencyKey::parse).transpose()?,
                timestamp: instant(at.as_deref())?,
                key_id: None,
            };
            let out = tally.correct(req).await?;
            if json {
                print_json(&to_json(dto::UsageResponse::from(&out)));
            } else {
                let replayed = if out.replayed { " (replayed: nothing recorded)" } else { "" };
                println!(
                    "{}: {} corrected by {}: {}, {}{replayed}",
                    out.tenant_id,
                    out.metric_code,
                    out.amount,
                    used_of(out.current_usage, out.limit),
                    period_text(&out.period)
                );
            }
        }
        Command::Periods(PeriodsCmd::Close { tenant: t, before, json }) => {
            let before = parse_rfc3339(&before).map_err(|e| anyhow::anyhow!("--before: {e}"))?;
            let out = tally.close_periods(&tenant(&t)?, before, None).await?;
            if json {
                print_json(
                    &json!({"closed_before": format_rfc3339(out.closed_before), "closed": out.closed}),
                );
            } else {
                println!(
                    "{t}: periods ending at or before {} are closed ({} record{} newly closed)",
                    format_rfc3339(out.closed_before),
                    out.closed,
                    if out.closed == 1 { "" } else { "s" }
                );
            }
        }
        Command::Periods(PeriodsCmd::Reopen { tenant: t, metric: m, period_start, reason, json }) => {
            let start = parse_rfc3339(&period_start).map_err(|e| anyhow::anyhow!("period_start: {e}"))?;
            let view = tally
                .reopen_period(&tenant(&t)?, &metric(&m)?, start, &Reason::parse(&reason)?, None)
                .await?;
            if json {
                print_json(&to_json(dto::PeriodResponse::from(&view)));
            } else {
                println!(
                    "{t}: {} {} reopened ({})",
                    view.metric_code,
                    period_text(&view.period),
                    used_of(view.current_usage, view.limit)
                );
            }
        }
        Command::Periods(PeriodsCmd::List { tenant: t, closed, metric: m, limit, cursor, json }) => {
            let filter = PeriodFilter {
                closed,
                metric_code: m.as_deref().map(metric).transpose()?,
                from: None,
                to: None,
                limit,
                cursor,
            };
            let page = tally.periods(&tenant(&t)?, &filter).await?;
            if json {
                print_json(&json!({
                    "periods": page.periods.iter().map(|p| to_json(dto::PeriodResponse::from(p))).collect::<Vec<_>>(),
                    "next_cursor": page.next_cursor,
                }));
            } else {
                for p in &page.periods {
                    let state = match (p.closed_at, p.reopened_at) {
                        (Some(at), _) => format!("closed {}", format_rfc3339(at)),
                        (None, Some(at)) => format!("reopened {}", format_rfc3339(at)),
                        (None, None) => "open".to_owned(),
                    };
                    println!(
                        "{}\t{}\t{}\t{state}",
                        p.metric_code,
                        period_text(&p.period),
                        used_of(p.current_usage, p.limit)
                    );
                }
                if let Some(next) = &page.next_cursor {
                    println!("next: --cursor {next}");
                }
            }
        }
        Command::Export(cmd) => return crate::export::run(&tally, &cmd).await,
        Command::Verify { json } => {
            let report = tally.verify().await?;
            if json {
                print_json(&output::verify_json(&report));
            } else {
                for d in &report.drifts {
                    let record = d.record_id.map_or("no record".to_owned(), |id| format!("record {id}"));
                    let recorded = d.recorded.map_or("missing".to_owned(), |r| r.to_string());
                    println!(
                        "DRIFT {record}: tenant {} metric {} period {}: counter {recorded}, events say {} ({} events)",
                        d.tenant_id,
                        d.metric_code,
                        format_rfc3339(d.period_start),
                        d.expected,
                        d.n_events
                    );
                }
                println!(
                    "verified {} records against {} events ({} of them corrections) and {} resets: {} drift{}",
                    report.n_records,
                    report.n_events,
                    report.n_corrections,
                    report.n_resets,
                    report.drifts.len(),
                    if report.drifts.len() == 1 { "" } else { "s" }
                );
            }
            return Ok(if report.drifts.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_effective_config(global: &Global, server: &crate::ServerArgs, no_migrate: bool) {
    let secret = |s: &Option<String>| if s.is_some() { "***" } else { "(none)" };
    println!("database_url = {:?}", crate::redact_url(global.database_url()));
    println!("tenancy = {:?}", global.tenancy);
    println!("pg_schema = {:?}", global.pg_schema);
    println!("max_event_age = {:?}", global.max_event_age);
    println!("listen = {:?}", server.listen);
    println!("admin_key = {}", secret(&server.admin_key));
    println!("metrics_token = {}", secret(&server.metrics_token));
    println!("log_format = {:?}", server.log_format);
    println!("cookie_secure = {}", server.cookie_secure);
    println!("webhook_retry_initial = {:?}", server.webhook_retry_initial);
    println!("webhook_retry_max_delay = {:?}", server.webhook_retry_max_delay);
    println!("webhook_retry_window = {:?}", server.webhook_retry_window);
    println!("webhook_timeout = {:?}", server.webhook_timeout);
    println!("webhook_ca_file = {:?}", server.webhook_ca_file);
    let rate = |r: &Option<String>| r.as_deref().map_or("off".to_owned(), |r| format!("{r:?}"));
    println!("rate_limit_tenant_key = {}", rate(&server.rate_limit_tenant_key));
    println!("rate_limit_admin_key = {}", rate(&server.rate_limit_admin_key));
    println!("no_migrate = {no_migrate}");
}

/// One `tally serve` per SQLite file: its writer task owns the write side of the file (the
/// CLI's other commands still write to it directly, serialized by SQLite's own lock). A
/// second server on the same file is refused with one line naming the file (exit 2).
fn claim_sqlite_write_side(url: &str) -> anyhow::Result<()> {
    let path = tally_store_sqlite::database_path(url)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .open(&path)
        .with_context(|| format!("opening {} to claim it", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            // Locked (`flock`, exclusive) for as long as this process lives, and never closed:
            // closing any descriptor of a database file drops the POSIX locks SQLite holds on
            // it through its own. The exit releases it (also a `kill -9`).
            std::mem::forget(file);
            Ok(())
        }
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `tally serve` is already serving {}: stop it, or give this one another --database-url",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("locking {}", path.display())))
        }
    }
}

/// `tally serve` and `tally demo`.
async fn serve(
    global: &Global,
    server: &crate::ServerArgs,
    no_migrate: bool,
    config: ServiceConfig,
    demo: bool,
) -> anyhow::Result<ExitCode> {
    let backend = crate::open_backend_with(global, true, server.writers).await?;
    let url = crate::redact_url(global.database_url());
    match backend {
        Backend::Sqlite(s) => {
            claim_sqlite_write_side(global.database_url())?;
            let version = s.schema_version().await.context("reading the schema version")?;
            serve_with(s, server, config, demo, format!("sqlite {url}"), version).await
        }
        Backend::Postgres(s) => {
            if !no_migrate {
                let reports = s.migrate(None, &|_| {}).await.context("migrating PostgreSQL at start")?;
                let failed: Vec<&str> =
                    reports.iter().filter(|r| r.error.is_some()).map(|r| r.schema.as_str()).collect();
                if !failed.is_empty() {
                    bail!("migrating PostgreSQL at start: schemas failed: {}", failed.join(", "));
                }
            }
            let version = s.schema_version().await.context("reading the schema version")?;
            if version == 0 {
                bail!("the database at {url} is not migrated: run `tally migrate` or drop --no-migrate");
            }
            let name = format!("postgres {url} ({} tenancy)", global.tenancy);
            serve_with(s, server, config, demo, name, version).await
        }
    }
}

async fn serve_with<S: Store>(
    store: S,
    server: &crate::ServerArgs,
    config: ServiceConfig,
    demo: bool,
    store_name: String,
    schema_version: i64,
) -> anyhow::Result<ExitCode> {
    let tally = Tally::with_clock(store.clone(), Arc::new(SystemClock), config.clone());
    let listener = crate::serve::bind(&server.listen).await?;
    let addr = listener.local_addr().context("reading the bound address")?;
    if demo {
        let tenant = crate::demo::seed(&tally).await.context("loading the demo")?;
        let (admin, scoped) = crate::demo::demo_keys(&tally, &tenant).await?;
        crate::demo::print_intro(&format!("http://{addr}"), &admin, &tenant, &scoped);
    } else if let Some(secret) = crate::serve::ensure_admin_key(&tally, server.admin_key.is_some()).await? {
        println!(
            "No admin key was configured or stored, so one was created. It is shown this once; Tally keeps only its hash."
        );
        println!("admin key: {secret}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let (rate_limit_tenant_key, rate_limit_admin_key) = rate_limits(server)?;
    let opts = crate::serve::ServeOptions {
        admin_key: server.admin_key.clone(),
        metrics_token: server.metrics_token.clone(),
        cookie_secure: server.cookie_secure,
        webhook_roots_pem: match &server.webhook_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading --webhook-ca-file {}", path.display()))?,
            ),
            None => None,
        },
        rate_limit_tenant_key,
        rate_limit_admin_key,
        config,
        store_name,
        schema_version,
    };
    crate::serve::run_server(store, listener, opts).await?;
    Ok(ExitCode::SUCCESS)
}

/// `tally migrate`: one line per schema, then a total line; a progress bar on a terminal.
async fn migrate(global: &Global, target_version: Option<i64>) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let backend = open_backend(global, true).await?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message("migrating");
        bar
    });
    let print = |r: &SchemaReport| {
        let line = report_line(r);
        match &bar {
            Some(b) => {
                b.println(line);
                b.inc(1);
            }
            None => println!("{line}"),
        }
    };
    let reports = match backend {
        Backend::Sqlite(s) => {
            let reports = s.migrate().await.context("migrating SQLite")?;
            reports.iter().for_each(print);
            reports
        }
        Backend::Postgres(s) => s.migrate(target_version, &print).await.context("migrating PostgreSQL")?,
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    let applied: u32 = reports.iter().map(|r| r.applied).sum();
    println!(
        "total: {} schemas, {} OK, {failed} failed, {applied} migrations applied in {:.3}s",
        reports.len(),
        reports.len() - failed,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        for r in reports.iter().filter(|r| r.error.is_some()) {
            eprintln!("error: schema {} failed to migrate", r.schema);
        }
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn report_line(r: &SchemaReport) -> String {
    let who = r.tenant_id.as_ref().map_or(String::new(), |t| format!(" ({t})"));
    let secs = r.elapsed.as_secs_f64();
    match &r.error {
        None => format!("{}{who} OK ({secs:.3}s) version {}, {} applied", r.schema, r.version, r.applied),
        Some(e) => format!("{}{who} FAILED ({secs:.3}s): {e}", r.schema),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_units_and_refuse_nonsense() {
        assert_eq!(parse_age("35d").unwrap(), Duration::days(35));
        assert_eq!(parse_age("12h").unwrap(), Duration::hours(12));
        assert_eq!(parse_age("90m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_age("3600").unwrap(), Duration::hours(1));
        for bad in ["", "0d", "-1d", "35x", "d", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
