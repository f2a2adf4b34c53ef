//! The final report: figures of the measured phase, then the checks; as text or one JSON object.

use std::sync::atomic::Ordering;

use serde_json::{Map, Value, json};

use super::checks::CheckReport;
use super::load::{Load, Stats};
use super::options::Mode;

/// The figures of a finished run.
pub struct Figures {
    pub requests: u64,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub events_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub accepted_events: u64,
    pub accepted_amount: i64,
    pub setup_s: f64,
    /// CPU time per measured request of `--cpu-pid` (the server), in µs.
    pub server_cpu_us: Option<f64>,
    /// CPU time per measured request of every `postgres` process (`--cpu-postgres`), in µs.
    pub postgres_cpu_us: Option<f64>,
}

const NS_PER_MS: f64 = 1e6;
const NS_PER_S: f64 = 1e9;

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

impl Figures {
    pub fn of(load: &Load, setup_s: f64) -> Figures {
        let m = &load.measured;
        let requests = m.requests.load(Ordering::Relaxed);
        let duration_s = m.last_answer_ns.load(Ordering::Relaxed) as f64 / NS_PER_S;
        let per_s = |n: u64| if duration_s > 0.0 { n as f64 / duration_s } else { 0.0 };
        let latency = m.latency.snapshot();
        let ms = |ns: u64| ns as f64 / NS_PER_MS;
        Figures {
            requests,
            duration_s,
            requests_per_s: per_s(requests),
            events_per_s: per_s(m.events.load(Ordering::Relaxed)),
            p50_ms: ms(latency.quantile(0.50)),
            p95_ms: ms(latency.quantile(0.95)),
            p99_ms: ms(latency.quantile(0.99)),
            max_ms: ms(latency.max()),
            mean_ms: latency.mean() / NS_PER_MS,
            accepted_events: load.pairs.iter().map(|p| p.accepted_events.load(Ordering::Relaxed)).sum(),
            accepted_amount: load
                .pairs
                .iter()
                .fold(0i64, |sum, p| sum.saturating_add(p.accepted_amount.load(Ordering::Relaxed))),
            setup_s,
            server_cpu_us: None,
            postgres_cpu_us: None,
        }
    }
}

fn status_map(stats: &Stats) -> Map<String, Value> {
    let mut map: Map<String, Value> =
        stats.status_counts().into_iter().map(|(code, n)| (code.to_string(), json!(n))).collect();
    map.insert("conn_error".to_owned(), json!(stats.conn_errors.load(Ordering::Relaxed)));
    map.insert("timeout".to_owned(), json!(stats.timeouts.load(Ordering::Relaxed)));
    map
}

/// The report as one JSON object.
pub fn to_json(load: &Load, f: &Figures, checks: &CheckReport) -> Value {
    let m = &load.measured;
    let w = &load.warmup;
    let mut report = json!({
        "settings": load.settings.to_json(),
        "requests": f.requests,
        "duration_s": round(f.duration_s, 3),
        "requests_per_s": round(f.requests_per_s, 1),
        "events_per_s": round(f.events_per_s, 1),
        "latency_ms": {
            "p50": round(f.p50_ms, 3), "p95": round(f.p95_ms, 3), "p99": round(f.p99_ms, 3),
            "max": round(f.max_ms, 3), "mean": round(f.mean_ms, 3),
        },
        "status": status_map(m),
        "accepted_events": f.accepted_events,
        "accepted_amount": f.accepted_amount,
        "warmup": {
            "requests": w.requests.load(Ordering::Relaxed),
            "events": w.events.load(Ordering::Relaxed),
            "status": status_map(w),
        },
        "setup_s": round(f.setup_s, 3),
        "cpu_us_per_request": {"server": f.server_cpu_us, "postgres": f.postgres_cpu_us},
        "lost_answers": {
            "events": load.unknown_events.load(Ordering::Relaxed),
            "unreadable_200": load.bad_answers.load(Ordering::Relaxed),
        },
        "checks": checks.to_json(),
    });
    if let Some(obj) = report.as_object_mut() {
        if load.workload.batched() {
            let items: Map<String, Value> =
                m.item_counts().into_iter().map(|(code, n)| (code.to_string(), json!(n))).collect();
            obj.insert("items".to_owned(), Value::Object(items));
        }
        if load.settings.mode == Mode::Check {
            obj.insert(
                "check_answers".to_owned(),
                json!({"allowed": m.allowed.load(Ordering::Relaxed), "refused": m.refused.load(Ordering::Relaxed)}),
            );
        }
        if checks.replays_failed.is_some() {
            let failures = load.replay_failures.lock().map(|f| f.clone()).unwrap_or_default();
            obj.insert(
                "replays".to_owned(),
                json!({
                    "sent": load.replays_sent.load(Ordering::Relaxed),
                    "failed": load.replays_failed.load(Ordering::Relaxed),
                    "failures": failures,
                }),
            );
        }
    }
    report
}

fn status_line(stats: &Stats) -> String {
    let mut parts: Vec<String> = stats.status_counts().iter().map(|(c, n)| format!("{c}: {n}")).collect();
    for (name, n) in [("conn errors", &stats.conn_errors), ("timeouts", &stats.timeouts)] {
        let n = n.load(Ordering::Relaxed);
        if n > 0 {
            parts.push(format!("{name}: {n}"));
        }
    }
    if parts.is_empty() { "none".to_owned() } else { parts.join("  ") }
}

fn ok(pass: bool) -> &'static str {
    if pass { "OK" } else { "FAILED" }
}

/// The report for people.
pub fn to_text(load: &Load, f: &Figures, checks: &CheckReport) -> String {
    let m = &load.measured;
    let w = &load.warmup;
    let mut out = Vec::new();
    let what = match load.settings.mode {
        Mode::Check => "checks",
        Mode::Healthz => "answers",
        Mode::Reserve => "reserve+commit pairs",
        Mode::Record => "events",
    };
    out.push(format!(
        "requests   {} in {:.2} s: {:.0} req/s, {:.0} {what}/s",
        f.requests, f.duration_s, f.requests_per_s, f.events_per_s
    ));
    out.push(format!(
        "latency    p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (mean {:.2} ms)",
        f.p50_ms, f.p95_ms, f.p99_ms, f.max_ms, f.mean_ms
    ));
    out.push(format!("status     {}", status_line(m)));
    if f.server_cpu_us.is_some() || f.postgres_cpu_us.is_some() {
        let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} µs"));
        out.push(format!(
            "cpu        per request: server {}  postgres {}",
            us(f.server_cpu_us),
            us(f.postgres_cpu_us)
        ));
    }
    if load.workload.batched() {
        let items: Vec<String> = m.item_counts().iter().map(|(c, n)| format!("{c}: {n}")).collect();
        out.push(format!("items      {}", items.join("  ")));
    }
    if load.settings.mode == Mode::Check {
        out.push(format!(
            "answers    allowed {}  refused {}",
            m.allowed.load(Ordering::Relaxed),
            m.refused.load(Ordering::Relaxed)
        ));
    }
    let warm = w.requests.load(Ordering::Relaxed);
    if warm > 0 {
        out.push(format!("warm-up    {warm} requests (not in the figures above): {}", status_line(w)));
    }
    out.push(format!(
        "accepted   {} events, amount {} (whole run, warm-up included)",
        f.accepted_events, f.accepted_amount
    ));
    let lost = load.unknown_events.load(Ordering::Relaxed);
    if lost > 0 {
        out.push(format!("lost       {lost} events got no answer (they may or may not be recorded)"));
    }
    if let Some(failed) = checks.replays_failed {
        out.push(format!("replays    {} sent, {failed} failed", load.replays_sent.load(Ordering::Relaxed)));
    }
    let recorded =
        if load.settings.mode.records_nothing() { "nothing recorded" } else { "accepted == recorded" };
    out.push(format!(
        "check      {} tenants, {} tenant/metric pairs: no overshoot {}, {recorded} {}, no false refusal {}{}",
        checks.tenants_checked,
        checks.pairs_checked,
        ok(checks.overshoots == 0),
        ok(checks.mismatches == 0),
        ok(checks.false_refusals == 0),
        checks.replays_failed.map(|n| format!(", replays {}", ok(n == 0))).unwrap_or_default(),
    ));
    for failure in &checks.failures {
        out.push(format!("  FAILED {} {}: {}", failure.tenant_id, failure.metric_code, failure.problem));
    }
    if let Ok(kept) = load.replay_failures.lock() {
        for what in kept.iter() {
            out.push(format!("  FAILED replay: {what}"));
        }
    }
    let total = checks.overshoots + checks.mismatches + checks.false_refusals;
    if total > checks.failures.len() {
        out.push(format!("  ... {} more failures", total - checks.failures.len()));
    }
    out.push(format!("result     {}", if checks.passed() { "PASS" } else { "FAIL" }));
    out.join("\n")
}
