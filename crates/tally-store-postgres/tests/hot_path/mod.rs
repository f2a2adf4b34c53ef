//! Every statement of the hot path names its tenants (`tenant_id = $n`, `tenant_id =
//! ANY($n)`), in both tenancies, so that the tables can later be distributed by tenant
//! (Citus); checked on the statement log during a mixed load. Also: every statement goes
//! through the statement log.
#![allow(clippy::unwrap_used)]

use chrono::Duration;
use tally_contract::{WriteExt, apply_one, audit, keyed, limit, metric, now, plan_code, req, spec, tenant};
use tally_domain::{
    ApiKey, AuditAction, KeyScope, LimitEnforcement, Name, PeriodKind, UsageError, WebhookEventType,
    WebhookId, WebhookSecret, WebhookSpec,
};
use tally_store::{ConfigVersion, EventCursor, EventQuery, Store, UsageRepository};
use tally_store_postgres::{PgStore, Tenancy};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// The check

/// Tables that hold no tenant's rows: statements on them alone need no tenant filter.
/// `tally_webhook` is admin configuration, like the plans: a usage transaction that may fire
/// a threshold reads every webhook (at most `WEBHOOKS_LEN_MAX`), and on a distributed
/// database it would be a reference table. The webhooks' states and deliveries are per
/// tenant and are checked like the usage tables.
const GLOBAL_TABLES: &[&str] = &["tally_api_key", "tally_config_version", "tally_webhook"];

/// Every table of the schema.
const TABLES: &[&str] = &[
    "tally_settings",
    "tally_plan",
    "tally_plan_version",
    "tally_tenant",
    "tally_subscription",
    "tally_override",
    "tally_api_key",
    "tally_audit",
    "tally_config_version",
    "quota_usage_record",
    "quota_usage_event",
    "tally_metric",
    "tally_reservation",
    "tally_admin_session",
    "tally_webhook",
    "tally_webhook_state",
    "tally_webhook_delivery",
];

/// Words (identifiers, qualified names, parameters, keywords) and single punctuation marks.
fn tokens(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in sql.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$' | '?' | '"') {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn is_param(token: &str) -> bool {
    let digits = token.strip_prefix('$').or_else(|| token.strip_prefix('?'));
    digits.is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()) && (token.starts_with('?') || !d.is_empty()))
}

fn is_tenant_column(token: &str) -> bool {
    token == "tenant_id" || token.ends_with(".tenant_id")
}

fn keyword(token: Option<&String>, word: &str) -> bool {
    token.is_some_and(|t| t.eq_ignore_ascii_case(word))
}

/// The tables a statement names (as whole words, possibly schema-qualified).
fn tables_of(tokens: &[String]) -> Vec<&'static str> {
    let mut found: Vec<&'static str> = TABLES
        .iter()
        .copied()
        .filter(|table| {
            tokens.iter().any(|t| t == table || t.rsplit_once('.').is_some_and(|(_, name)| name == *table))
        })
        .collect();
    found.sort_unstable();
    found
}

/// `tenant_id = <param>`, `tenant_id = ANY(<param>)` or `tenant_id IN (<param>, ...)`.
fn has_tenant_filter(t: &[String]) -> bool {
    (0..t.len()).any(|i| {
        if !is_tenant_column(&t[i]) {
            return false;
        }
        let at = |k: usize| t.get(i + k);
        let eq = at(1).is_some_and(|x| x == "=");
        (eq && at(2).is_some_and(|x| is_param(x)))
            || (eq
                && keyword(at(2), "ANY")
                && at(3).is_some_and(|x| x == "(")
                && at(4).is_some_and(|x| is_param(x)))
            || (keyword(at(1), "IN") && at(2).is_some_and(|x| x == "(") && at(3).is_some_and(|x| is_param(x)))
    })
}

/// `INSERT INTO table [AS x] (..., tenant_id, ...) VALUES (...)` or `... SELECT ... FROM
/// unnest(<params>)`: the new rows' tenants are bound values.
fn inserts_bound_tenants(t: &[String]) -> bool {
    if !(keyword(t.first(), "INSERT") && keyword(t.get(1), "INTO")) {
        return false;
    }
    let Some(open) = t.iter().position(|x| x == "(") else { return false };
    let Some(close) = t[open..].iter().position(|x| x == ")").map(|p| p + open) else { return false };
    if !t[open..close].iter().any(|x| x == "tenant_id") {
        return false;
    }
    match t.get(close + 1) {
        Some(v) if v.eq_ignore_ascii_case("VALUES") => true,
        Some(s) if s.eq_ignore_ascii_case("SELECT") => t[close..]
            .windows(3)
            .any(|w| w[0].eq_ignore_ascii_case("FROM") && w[1].eq_ignore_ascii_case("unnest") && w[2] == "("),
        _ => false,
    }
}

/// Why a statement of the hot path fails the check, or `None` when it passes.
fn tenant_filter_problem(sql: &str) -> Option<&'static str> {
    let t = tokens(sql);
    if ["BEGIN", "COMMIT", "ROLLBACK"].iter().any(|w| keyword(t.first(), w)) {
        return None;
    }
    let tables = tables_of(&t);
    if tables.is_empty() {
        return Some("names no table of the schema");
    }
    if tables.iter().all(|table| GLOBAL_TABLES.contains(table)) {
        return None;
    }
    if has_tenant_filter(&t) || inserts_bound_tenants(&t) {
        return None;
    }
    Some("has no tenant_id = ?, tenant_id IN (...) or bound tenant_id column")
}

fn assert_every_statement_names_its_tenants(statements: &[String]) {
    let problems: Vec<String> = statements
        .iter()
        .filter_map(|sql| tenant_filter_problem(sql).map(|why| format!("{why}:\n    {sql}")))
        .collect();
    assert!(
        problems.is_empty(),
        "{} of {} hot-path statements do not name their tenants:\n{}",
        problems.len(),
        statements.len(),
        problems.join("\n")
    );
}

/// The log saw the whole hot path: each kind of statement is there.
fn assert_the_whole_hot_path_was_seen(statements: &[String]) {
    for (verb, table) in [
        ("INSERT INTO", "quota_usage_record"),
        ("UPDATE", "quota_usage_record"),
        ("DELETE FROM", "quota_usage_record"),
        ("INSERT INTO", "quota_usage_event"),
        ("SELECT", "quota_usage_event"),
        ("SELECT", "tally_override"),
        ("SELECT", "tally_api_key"),
        ("SELECT", "tally_config_version"),
        ("SELECT", "tally_webhook_state"),
        ("INSERT INTO", "tally_webhook_state"),
        ("INSERT INTO", "tally_webhook_delivery"),
        ("BEGIN", ""),
        ("COMMIT", ""),
    ] {
        assert!(
            statements.iter().any(|s| s.contains(verb) && s.contains(table)),
            "no {verb} statement on {table:?}: {statements:#?}"
        );
    }
}

#[test]
fn the_check_tells_filtered_statements_from_the_others() {
    for ok in [
        "SELECT id FROM quota_usage_record WHERE tenant_id = ?1 AND metric_code = ?2",
        "SELECT id FROM quota_usage_record WHERE id = $2 AND tenant_id=$1",
        "DELETE FROM quota_usage_record WHERE tenant_id IN (?, ?) AND id IN (?)",
        "UPDATE \"tenant_00000000deadbeef\".quota_usage_record AS r SET current_usage = 1 WHERE r.tenant_id = ANY($4)",
        "INSERT INTO quota_usage_event (id, tenant_id, amount) VALUES (?, ?, ?), (?, ?, ?)",
        "INSERT INTO quota_usage_record AS r (id, tenant_id) SELECT u.id, u.tenant_id FROM unnest($1::uuid[], $2::text[]) AS u(id, tenant_id)",
        "SELECT id FROM tally_api_key WHERE key_hash = ?1",
        "SELECT version FROM tally_config_version WHERE id = 1",
        "BEGIN IMMEDIATE",
        "COMMIT",
    ] {
        assert_eq!(tenant_filter_problem(ok), None, "{ok}");
    }
    for bad in [
        "UPDATE quota_usage_record SET current_usage = 1 FROM v WHERE quota_usage_record.id = v.id",
        "DELETE FROM quota_usage_record WHERE id IN (?, ?)",
        "SELECT code FROM tally_plan WHERE code IN (?)",
        "SELECT id FROM quota_usage_record WHERE tenant_id = 'acme'",
        "SELECT e.id FROM k CROSS JOIN quota_usage_event AS e ON e.tenant_id = k.tenant_id",
        "INSERT INTO quota_usage_event (id, tenant_id) SELECT id, tenant_id FROM quota_usage_event",
        "INSERT INTO tally_audit (id, at) VALUES (?, ?)",
        "SELECT 1",
    ] {
        assert!(tenant_filter_problem(bad).is_some(), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------
// The load

const TENANTS: [&str; 4] = ["acme", "beta", "gamma", "delta"];

/// Plans, tenants, subscriptions, an override, a key and a webhook: admin work, before the
/// log is on.
async fn configure<S: Store>(store: &S) -> String {
    let pro = spec(
        "Pro",
        vec![
            limit("api_calls", Some(100), LimitEnforcement::Hard, PeriodKind::Month),
            limit("storage", Some(10), LimitEnforcement::Soft, PeriodKind::Month),
            limit("exports", None, LimitEnforcement::None, PeriodKind::Day),
        ],
    );
    store.put_plan(&plan_code("pro"), &pro, now(), &audit(AuditAction::PlanPut, None)).await.unwrap();
    for id in TENANTS {
        let tid = tenant(id);
        store.put_tenant(&tid, &Name::parse(id).unwrap(), now()).await.unwrap();
        let sa = audit(AuditAction::SubscriptionPut, Some(&tid));
        store.put_subscription(&tid, &plan_code("pro"), None, now(), &sa).await.unwrap();
    }
    let small = limit("api_calls", Some(5), LimitEnforcement::Hard, PeriodKind::Month);
    store.put_override(&tenant("beta"), &small, &audit(AuditAction::OverridePut, None)).await.unwrap();
    let key_hash = "e".repeat(64);
    let key = ApiKey {
        id: Uuid::now_v7(),
        scope: KeyScope::Tenant(tenant("acme")),
        key_hash: key_hash.clone(),
        created_at: now(),
        last_used_at: None,
        revoked_at: None,
        rate_limit: None,
    };
    store.insert_key(&key, &audit(AuditAction::KeyCreate, None)).await.unwrap();
    // Low thresholds, so that the load fires some (and refusals fire `usage.limit_refused`).
    let hook = WebhookSpec::new("http://127.0.0.1:9/hook", &[1, 50, 100], &WebhookEventType::ALL).unwrap();
    let secret = WebhookSecret::parse("whsec_0123456789abcdef").unwrap();
    let wa = audit(AuditAction::WebhookPut, None);
    store.put_webhook(&WebhookId::parse("ops").unwrap(), &hook, &secret, true, now(), &wa).await.unwrap();
    key_hash
}

/// Single and batched usage across tenants with keys, replays and HARD refusals, and every
/// read a request on the hot path makes.
async fn hot_path_load<S: Store>(store: &S, key_hash: &str) {
    // Single requests: fresh, replayed, refused on a cold period, refused on a warm one.
    let first = apply_one(store, keyed(req("acme", "api_calls", 1), "a-1")).await.unwrap();
    assert!(apply_one(store, keyed(req("acme", "api_calls", 1), "a-1")).await.unwrap().replayed);
    let cold = apply_one(store, req("gamma", "api_calls", 1_000)).await;
    assert!(matches!(cold, Err(UsageError::QuotaExceeded { .. })), "{cold:?}");
    let warm = apply_one(store, req("acme", "api_calls", 1_000)).await;
    assert!(matches!(warm, Err(UsageError::QuotaExceeded { .. })), "{warm:?}");

    // A batch across every tenant, then the same batch again (all keyed items replay).
    let mut at_nine = req("delta", "exports", 3);
    at_nine.timestamp = Some(now() - Duration::hours(1));
    let batch = vec![
        keyed(req("beta", "api_calls", 2), "b-1"),
        req("gamma", "storage", 12),
        keyed(at_nine, "d-1"),
        keyed(req("acme", "api_calls", 1), "a-1"),
        req("beta", "api_calls", 10),
        keyed(req("acme", "exports", 1), "a-1"),
        req("delta", "api_calls", 1),
        req("ghost", "api_calls", 1),
        keyed(req("beta", "api_calls", 2), "b-1"),
    ];
    for round in 0..2 {
        let out = store.apply_usage(&batch, now()).await.unwrap();
        assert_eq!(out.len(), batch.len());
        assert_eq!(out[0].as_ref().map(|o| o.replayed), Ok(round == 1));
        assert_eq!(out[3].as_ref().map(|o| (o.replayed, o.event_id)), Ok((true, first.event_id)));
        assert!(matches!(out[4], Err(UsageError::QuotaExceeded { .. })), "{:?}", out[4]);
        assert!(matches!(out[5], Err(UsageError::IdempotencyConflict { .. })), "{:?}", out[5]);
        assert!(matches!(out[7], Err(UsageError::TenantNotFound { .. })), "{:?}", out[7]);
        assert_eq!(out[8].as_ref().map(|o| o.replayed), Ok(true));
    }

    // The reads of the hot path.
    let acme = tenant("acme");
    let calls = metric("api_calls");
    let record = store.get_current_period(&acme, &calls, now()).await.unwrap();
    assert_eq!(record.current_usage, 1);
    assert_eq!(store.get_for_period(&acme, &calls, record.period_start).await.unwrap(), record);
    assert!(store.find_entitlement(&acme).await.is_ok());
    assert!(store.find_tenant(&tenant("beta")).await.unwrap().is_some());
    let listed = store
        .list_by_tenant_and_metric(&acme, &calls, Some(record.period_start), Some(record.period_end), 10)
        .await
        .unwrap();
    assert_eq!(listed, vec![record.clone()]);
    assert_eq!(store.list_by_tenant_and_metric(&acme, &calls, None, None, 10).await.unwrap().len(), 1);
    // Each tenant's events, one page at a time along the cursor.
    for (tenant_id, expected) in TENANTS.into_iter().zip([1, 1, 2, 3]) {
        let mut after = None;
        let mut seen = 0;
        while seen <= expected {
            let q = EventQuery { metric_code: None, from: None, to: None, limit: 1, after, kind: None };
            let page = store.get_events_for_metric(&tenant(tenant_id), &q).await.unwrap();
            let Some(last) = page.last() else { break };
            seen += 1;
            after = Some(EventCursor { timestamp: last.event.timestamp, id: last.event.id });
        }
        assert_eq!(seen, expected, "{tenant_id}");
    }
    let filtered = EventQuery {
        metric_code: Some(metric("exports")),
        from: Some(now() - Duration::days(1)),
        to: Some(now() + Duration::minutes(1)),
        limit: 10,
        kind: None,
        after: Some(EventCursor { timestamp: now(), id: Uuid::max() }),
    };
    assert_eq!(store.get_events_for_metric(&tenant("delta"), &filtered).await.unwrap().len(), 1);
    assert!(store.find_key_by_hash(key_hash).await.unwrap().is_some());
    store.config_version().await.unwrap();
}

#[tokio::test]
async fn every_hot_path_statement_names_its_tenants() {
    for tenancy in [Tenancy::Shared, Tenancy::Schema] {
        let store = PgStore::open_test(tenancy).await;
        let log = store.statement_log();
        let key_hash = configure(&store).await;
        assert!(!log.is_on() && log.take().is_empty(), "the log is off by default");

        log.start();
        hot_path_load(&store, &key_hash).await;
        log.stop();
        let statements = log.take();
        assert_the_whole_hot_path_was_seen(&statements);
        assert_every_statement_names_its_tenants(&statements);
        if tenancy == Tenancy::Schema {
            assert!(
                statements.iter().any(|s| s.contains("\"tenant_") && s.contains(".quota_usage_record")),
                "schema tenancy names each tenant's own tables: {statements:#?}"
            );
        }

        // A stopped log records nothing, and another store has a log of its own.
        store.config_version().await.unwrap();
        assert!(log.take().is_empty());
        let other = PgStore::open_test(tenancy).await;
        other.statement_log().start();
        store.config_version().await.unwrap();
        assert!(log.take().is_empty());
        other.config_version().await.unwrap();
        assert_eq!(other.statement_log().take().len(), 1);
    }
}

// ---------------------------------------------------------------------------------------
// Nothing escapes the log

/// Calls that send SQL without going through the statement log.
const UNLOGGED: &[&str] = &[
    "sqlx::query(",
    "sqlx::query_as(",
    "sqlx::query_scalar(",
    "sqlx::query_with(",
    "sqlx::query_as_with(",
    "sqlx::query_scalar_with(",
    "sqlx::raw_sql(",
    "sqlx::query::<",
    "sqlx::query_as::<",
    "sqlx::query_scalar::<",
    ".build()",
    ".build_query_as",
    ".build_query_scalar",
    ".begin()",
    ".begin_with(",
    ".commit()",
    ".rollback()",
    ".execute(\"",
    ".fetch_one(\"",
    ".fetch_all(\"",
    ".fetch_optional(\"",
];

#[test]
fn every_statement_goes_through_the_statement_log() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "statements.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests may touch the database behind the adapter's back.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            let line: String = line.split_whitespace().collect::<Vec<_>>().join(" ");
            for call in UNLOGGED {
                assert!(
                    !line.contains(call),
                    "{}:{}: {call} bypasses the statement log",
                    path.display(),
                    n + 1
                );
            }
            if line.starts_with("use sqlx::") || line.starts_with("pub use sqlx::") {
                for name in ["query,", "query}", "query_as", "query_scalar", "raw_sql"] {
                    assert!(!line.contains(name), "{}:{}: imports {name}", path.display(), n + 1);
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 5, "read {checked} source files");
}

// ---------------------------------------------------------------------------------------
// Round trips

/// Statements (each one round trip) of one warm single write and of one check, pinned: a
/// change to the hot path that adds a round trip fails here first. Counted on the
/// statement log, in both tenancies.
#[tokio::test]
async fn a_warm_write_and_a_check_make_a_pinned_number_of_round_trips() {
    for tenancy in [Tenancy::Shared, Tenancy::Schema] {
        let store = PgStore::open_test(tenancy).await;
        configure(&store).await;
        // Warm: the record exists, the caches hold the tenant and its plan.
        apply_one(&store, keyed(req("acme", "api_calls", 1), "warm-1")).await.unwrap();
        let log = store.statement_log();

        log.start();
        apply_one(&store, keyed(req("acme", "api_calls", 1), "warm-2")).await.unwrap();
        log.stop();
        let write = log.take();
        let record = store.get_current_period(&tenant("acme"), &metric("api_calls"), now()).await.unwrap();
        let key = tally_store::RecordKey {
            tenant_id: tenant("acme"),
            metric_code: metric("api_calls"),
            period: tally_domain::Period::new(record.period_start, record.period_end).unwrap(),
        };
        log.start();
        assert_eq!(store.usage_now(&key, now()).await.unwrap().0, 2);
        log.stop();
        let check = log.take();
        assert_eq!(check.len(), 1, "{tenancy:?}: a check is one statement: {check:#?}");
        assert_eq!(write.len(), WARM_WRITE_STATEMENTS, "{tenancy:?}: {write:#?}");
    }
}

/// BEGIN; the record's lock; its open holds; its threshold states (a webhook is registered);
/// the taken keys with the configuration version; the event with the counter; COMMIT.
const WARM_WRITE_STATEMENTS: usize = 7;

/// A batch of reservations, and one of their commits, costs the same statements whatever
/// its size: the reservations of a batch are looked up, counted, inserted and settled in
/// bulk, never one statement per reservation.
#[tokio::test]
async fn reservation_batches_make_the_same_round_trips_whatever_their_size() {
    use tally_domain::{Amount, CommitRequest, Metadata, ReserveRequest, Ttl};
    use tally_store::{Ctx, UsageWriter, WriteOp};
    let store = PgStore::open_test(Tenancy::Shared).await;
    configure(&store).await;
    let ctx = Ctx::new(now(), Duration::days(35));
    let reserve = |t: &str| {
        WriteOp::Reserve(ReserveRequest {
            tenant_id: tenant(t),
            metric_code: metric("api_calls"),
            amount: Amount::new(1).unwrap(),
            ttl: Ttl::new(Some(300)).unwrap(),
            idempotency_key: None,
        })
    };
    // Warm the records and the caches.
    store.write(TENANTS.iter().map(|t| reserve(t)).collect(), ctx).await.unwrap();
    let log = store.statement_log();
    let mut reserved = Vec::new();
    let mut counts = Vec::new();
    for size in [1, TENANTS.len()] {
        log.start();
        let answers = store.write(TENANTS[..size].iter().map(|t| reserve(t)).collect(), ctx).await.unwrap();
        log.stop();
        let reserve_statements = log.take().len();
        let ids: Vec<(String, Uuid)> = answers
            .into_iter()
            .zip(TENANTS)
            .map(|(a, t)| (t.to_owned(), a.into_reserve().unwrap().unwrap().reservation.id))
            .collect();
        reserved.extend(ids.clone());
        let commits = ids
            .iter()
            .map(|(t, id)| {
                WriteOp::Commit(CommitRequest {
                    tenant_id: tenant(t),
                    reservation_id: *id,
                    amount: None,
                    metadata: Metadata::default(),
                })
            })
            .collect();
        log.start();
        for answer in store.write(commits, ctx).await.unwrap() {
            answer.into_usage().unwrap().unwrap();
        }
        log.stop();
        counts.push((reserve_statements, log.take().len()));
    }
    assert_eq!(
        counts[0],
        counts[1],
        "(reserve, commit) statements for 1 and for {} operations",
        TENANTS.len()
    );
    assert_eq!(reserved.len(), 1 + TENANTS.len());
}

// ---------------------------------------------------------------------------------------
// Closed periods on the hot path

/// A write into a period that may be closed reads its tenant's watermark, under a share lock
/// of the tenant's row, in one statement more than a write into the current period, before
/// its record lock; a write into the current period does not.
#[tokio::test]
async fn a_past_period_write_reads_the_watermark_in_one_statement_before_its_record_lock() {
    for tenancy in [Tenancy::Shared, Tenancy::Schema] {
        let store = PgStore::open_test(tenancy).await;
        configure(&store).await;
        // `exports` counts per day: yesterday's period ended before now().
        let mut past = req("acme", "exports", 1);
        past.timestamp = Some(now() - Duration::days(1));
        // Warm: both records exist, the caches hold the tenant and its plan.
        apply_one(&store, req("acme", "exports", 1)).await.unwrap();
        apply_one(&store, past.clone()).await.unwrap();
        let log = store.statement_log();

        log.start();
        apply_one(&store, req("acme", "exports", 1)).await.unwrap();
        log.stop();
        let current = log.take();
        log.start();
        apply_one(&store, past).await.unwrap();
        log.stop();
        let past = log.take();

        let is_watermark = |s: &String| s.contains("tally_tenant") && s.contains("FOR SHARE");
        let is_record_lock = |s: &String| s.contains("quota_usage_record") && s.contains("FOR UPDATE");
        assert_eq!(current.len(), WARM_WRITE_STATEMENTS, "{tenancy:?}: {current:#?}");
        assert!(!current.iter().any(is_watermark), "{tenancy:?}: {current:#?}");
        assert_eq!(past.len(), WARM_WRITE_STATEMENTS + 1, "{tenancy:?}: {past:#?}");
        let mark = past.iter().position(is_watermark).expect("the watermark is read");
        let lock = past.iter().position(is_record_lock).expect("the record is locked");
        assert_eq!((mark, lock), (1, 2), "{tenancy:?}: right after BEGIN, then the record: {past:#?}");
        assert_eq!(past.iter().filter(|s| is_watermark(s)).count(), 1, "{tenancy:?}: {past:#?}");
        assert_every_statement_names_its_tenants(&past);

        // A correction of the past day: the same, with its audit entry written in the batch.
        let fix = tally_domain::CorrectionRequest {
            tenant_id: tenant("acme"),
            metric_code: metric("exports"),
            amount: -1,
            reason: tally_domain::Reason::parse("double-sent").unwrap(),
            idempotency_key: None,
            timestamp: Some(now() - Duration::days(1)),
            key_id: None,
        };
        let ctx = tally_store::Ctx::new(now(), Duration::days(35));
        log.start();
        let answers = tally_store::UsageWriter::write(&store, vec![tally_store::WriteOp::Correct(fix)], ctx);
        let answer = answers.await.unwrap().into_iter().next().unwrap().into_usage().unwrap().unwrap();
        log.stop();
        let corrected = log.take();
        assert_eq!(answer.current_usage, 1, "{tenancy:?}");
        let audit = corrected.iter().position(|s| s.contains("INSERT INTO tally_audit"));
        assert_eq!(audit, Some(corrected.len() - 2), "{tenancy:?}: before COMMIT: {corrected:#?}");
        assert_eq!(corrected.iter().position(is_watermark), Some(1), "{tenancy:?}: {corrected:#?}");
        assert_every_statement_names_its_tenants(&corrected);
    }
}

/// Writers racing a close of the periods they write into, most of them cold (each write
/// of a writer goes to another day, on a metric of its own, so it creates the record): once
/// the close has returned, nothing more lands in a closed period (no record appears or moves,
/// no event is added), every write either landed before it or was refused with
/// `PeriodClosed`, and every event of those periods was made before the close returned.
#[tokio::test]
async fn writers_racing_a_close_never_land_an_event_in_a_closed_period() {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tally_contract::setup;
    use tally_domain::time::truncate;
    use tally_domain::{RecordedEvent, Timestamp};
    use tally_store::{CloseMode, Ctx, EventRecorder, PeriodQuery, PeriodStore, UsageWriter, WriteOp};

    const WRITERS: usize = 32;
    /// Days back from the last closed one that a writer cycles through.
    const DAYS: i64 = 30;
    const WRITES_PER_WRITER_MAX: usize = 2_000;
    let wall = || truncate(chrono::Utc::now());
    let metric_of = |w: usize| format!("calls_{w:02}");
    for tenancy in [Tenancy::Shared, Tenancy::Schema] {
        let store = PgStore::open_test(tenancy).await;
        let limits =
            (0..WRITERS).map(|w| limit(&metric_of(w), None, LimitEnforcement::None, PeriodKind::Day));
        setup(&store, "acme", "daily", limits.collect()).await;
        // Yesterday on the wall clock, and the days before it: all closed by one close.
        let last = PeriodKind::Day.containing(wall() - Duration::days(1), tally_contract::anchor()).unwrap();
        let first_start = last.start() - Duration::days(DAYS - 1);
        let landed = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (store, landed, code) = (store.clone(), landed.clone(), metric_of(w));
            writers.push(tokio::spawn(async move {
                // (started, accepted) of each write, until one is refused.
                let mut seen: Vec<(Timestamp, bool)> = Vec::new();
                for i in 0..WRITES_PER_WRITER_MAX {
                    let mut r = req("acme", &code, 1);
                    let back = i64::try_from(i).unwrap() % DAYS;
                    let seconds = i64::try_from(i).unwrap();
                    r.timestamp = Some(last.start() - Duration::days(back) + Duration::seconds(seconds));
                    let started = wall();
                    let ctx = Ctx::new(started, Duration::days(35));
                    let answer = store.write(vec![WriteOp::Usage(r)], ctx).await.unwrap();
                    match answer.into_iter().next().unwrap().into_usage().unwrap() {
                        Ok(_) => {
                            landed.fetch_add(1, Ordering::Relaxed);
                            seen.push((started, true));
                        }
                        Err(UsageError::PeriodClosed { metric, .. }) => {
                            assert_eq!(metric.as_str(), code);
                            seen.push((started, false));
                            break;
                        }
                        Err(other) => panic!("a write into a past period was {other:?}"),
                    }
                }
                seen
            }));
        }
        // Close while the writers are busy creating records: after a few of theirs landed.
        while landed.load(Ordering::Relaxed) < WRITERS * 3 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let acme = tenant("acme");
        let outcome =
            store.close_periods(&acme, last.end(), CloseMode::Explicit, wall(), None).await.unwrap();
        let closed_by = wall();
        let all = PeriodQuery { limit: 10_000, ..PeriodQuery::default() };
        let usage = |periods: Vec<tally_store::PeriodRecord>| {
            periods
                .into_iter()
                .map(|p| {
                    assert!(p.closed_at.is_some(), "{tenancy:?}: {p:?} is closed");
                    ((p.record.metric_code.clone(), p.record.period_start), p.record.current_usage)
                })
                .collect::<BTreeMap<_, _>>()
        };
        let at_close = usage(store.list_periods(&acme, &all).await.unwrap());
        assert_eq!(outcome.closed_before, last.end(), "{tenancy:?}");
        assert_eq!(outcome.closed, u64::try_from(at_close.len()).unwrap(), "{tenancy:?}");

        let (mut accepted, mut refused) = (0, 0);
        for writer in writers {
            let seen = writer.await.unwrap();
            assert!(matches!(seen.last(), Some((_, false))), "{tenancy:?}: each writer ends refused");
            for (started, ok) in seen {
                if ok {
                    accepted += 1;
                    assert!(started <= closed_by, "{tenancy:?}: a write begun after the close landed");
                } else {
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, WRITERS);
        assert!(accepted >= WRITERS * 3, "{tenancy:?}: {accepted}");
        let at_end = usage(store.list_periods(&acme, &all).await.unwrap());
        assert_eq!(at_end, at_close, "{tenancy:?}: nothing landed after the close");
        assert_eq!(at_end.values().sum::<i64>(), i64::try_from(accepted).unwrap(), "{tenancy:?}");
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut after = None;
        loop {
            let q = EventQuery {
                metric_code: None,
                from: Some(first_start),
                to: Some(last.end()),
                limit: 1_000,
                after,
                kind: None,
            };
            let page = store.get_events_for_metric(&acme, &q).await.unwrap();
            let Some(tail) = page.last() else { break };
            after = Some(EventCursor { timestamp: tail.event.timestamp, id: tail.event.id });
            events.extend(page);
        }
        assert_eq!(events.len(), accepted, "{tenancy:?}: one event per accepted write");
        for e in &events {
            assert!(e.event.created_at <= closed_by, "{tenancy:?}: {e:?} was made after the close");
        }
    }
}
