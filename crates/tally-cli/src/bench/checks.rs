//! The correctness checks, through the API: usage read before and after the load, compared with
//! what the client saw accepted.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use serde_json::{Value, json};
pub use tally_client::Enforcement;

use super::load::Load;
use super::options::{Mode, Settings, value_name};
use super::setup::ADMIN_CONNECTIONS_MAX;

/// Failures listed in the report (all are counted).
pub const FAILURES_LISTED_MAX: usize = 50;

/// A metric's state as the server reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub usage: i64,
    pub limit: Option<i64>,
    pub enforcement: Enforcement,
}

/// The wire name of an enforcement, for the report.
fn enforcement_name(e: Enforcement) -> &'static str {
    match e {
        Enforcement::Hard => "hard",
        Enforcement::Soft => "soft",
        Enforcement::None => "none",
        _ => "unknown",
    }
}

/// Reads `GET /v1/tenants/{id}/usage` of the given tenants; the answer is indexed by pair
/// (`tenant × metrics + metric`), `None` for tenants not read.
pub async fn read_usage(
    settings: &Settings,
    admin: &tally_client::Client,
    tenants: &[u32],
) -> anyhow::Result<Vec<Option<Observed>>> {
    let metrics = settings.metrics as usize;
    let next = AtomicUsize::new(0);
    let workers = (0..settings.connections.min(ADMIN_CONNECTIONS_MAX)).map(|_| async {
        let mut read = Vec::new();
        loop {
            let Some(&tenant) = tenants.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return Ok::<_, anyhow::Error>(read);
            };
            let id = settings.tenant_id(tenant);
            let answer = admin.usage(&id).await.with_context(|| format!("reading the usage of {id}"))?;
            let mut row = vec![None; metrics];
            for m in answer.metrics {
                if let Some(index) = m.metric_code.strip_prefix('m').and_then(|n| n.parse::<usize>().ok())
                    && (1..=metrics).contains(&index)
                {
                    row[index - 1] =
                        Some(Observed { usage: m.current_usage, limit: m.limit, enforcement: m.enforcement });
                }
            }
            if let Some(missing) = row.iter().position(Option::is_none) {
                bail!("tenant {id} has no metric {} on its plan", Settings::metric_code(missing as u32));
            }
            read.push((tenant, row));
        }
    });
    let mut out = vec![None; settings.tenants as usize * metrics];
    for rows in futures::future::try_join_all(workers).await? {
        for (tenant, row) in rows {
            let start = tenant as usize * metrics;
            out[start..start + metrics].clone_from_slice(&row);
        }
    }
    Ok(out)
}

/// One pair that failed a check.
#[derive(Clone, Debug)]
pub struct Failure {
    pub tenant_id: String,
    pub metric_code: String,
    pub problem: String,
    pub detail: Value,
}

/// The outcome of the checks.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub tenants_checked: usize,
    pub pairs_checked: usize,
    pub overshoots: usize,
    pub mismatches: usize,
    pub false_refusals: usize,
    /// Failed replays with `--idempotency retry` (`None` without).
    pub replays_failed: Option<u64>,
    /// Events whose answer was lost: accepted == recorded then holds only as a range.
    pub unknown_events: u64,
    pub failures: Vec<Failure>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.overshoots == 0
            && self.mismatches == 0
            && self.false_refusals == 0
            && self.replays_failed.unwrap_or(0) == 0
    }

    pub fn to_json(&self) -> Value {
        let details: Vec<Value> = self
            .failures
            .iter()
            .map(|f| {
                let mut d =
                    json!({"tenant_id": f.tenant_id, "metric_code": f.metric_code, "problem": f.problem});
                if let (Some(d), Some(extra)) = (d.as_object_mut(), f.detail.as_object()) {
                    d.extend(extra.clone());
                }
                d
            })
            .collect();
        json!({
            "no_overshoot": self.overshoots == 0,
            "accepted_equals_recorded": self.mismatches == 0,
            "no_false_refusal": self.false_refusals == 0,
            "idempotent_replays": self.replays_failed.map(|n| n == 0),
            "passed": self.passed(),
            "tenants_checked": self.tenants_checked,
            "pairs_checked": self.pairs_checked,
            "overshoots": self.overshoots,
            "mismatches": self.mismatches,
            "false_refusals": self.false_refusals,
            "unknown_events": self.unknown_events,
            "details": details,
        })
    }
}

/// Tenants that received at least one request.
pub fn tenants_used(load: &Load) -> Vec<u32> {
    let metrics = load.settings.metrics as usize;
    (0..load.settings.tenants)
        .filter(|&t| {
            let start = t as usize * metrics;
            load.pairs[start..start + metrics].iter().any(|p| p.sent_events.load(Ordering::Relaxed) > 0)
        })
        .collect()
}

/// Compares, for every pair of the used tenants, the usage read after the load with the usage
/// before it and what the client saw accepted:
/// - HARD: `usage <= limit` (no overshoot);
/// - every enforcement: `usage − before == accepted amount` (in `--mode check`, that is 0); when
///   answers were lost, `accepted <= usage − before <= accepted + lost`;
/// - HARD: a refusal of amount `a` means `usage + a > limit` at that moment, and usage never
///   decreases during the run, so `after + a > limit` must hold (no false refusal).
pub fn evaluate(
    load: &Load,
    before: &[Option<Observed>],
    after: &[Option<Observed>],
    tenants: &[u32],
) -> CheckReport {
    let settings = &load.settings;
    let metrics = settings.metrics;
    let mut report = CheckReport {
        tenants_checked: tenants.len(),
        replays_failed: (settings.idempotency == super::options::Idempotency::Retry
            && settings.mode == Mode::Record)
            .then(|| load.replays_failed.load(Ordering::Relaxed)),
        unknown_events: load.unknown_events.load(Ordering::Relaxed),
        ..CheckReport::default()
    };
    let fail = |report: &mut CheckReport, tenant: u32, metric: u32, problem: String, detail: Value| {
        if report.failures.len() < FAILURES_LISTED_MAX {
            report.failures.push(Failure {
                tenant_id: settings.tenant_id(tenant),
                metric_code: Settings::metric_code(metric),
                problem,
                detail,
            });
        }
    };
    for &tenant in tenants {
        for metric in 0..metrics {
            let index = load.workload.pair(tenant, metric);
            let (Some(Some(b)), Some(Some(a))) = (before.get(index), after.get(index)) else {
                continue;
            };
            report.pairs_checked += 1;
            let pair = &load.pairs[index];
            let accepted = pair.accepted_amount.load(Ordering::Relaxed);
            let unknown = pair.unknown_amount.load(Ordering::Relaxed);
            let min_refused = pair.min_refused.load(Ordering::Relaxed);
            let recorded = a.usage.saturating_sub(b.usage);
            let detail = json!({
                "enforcement": enforcement_name(a.enforcement), "limit": a.limit, "usage_before": b.usage,
                "usage_after": a.usage, "recorded": recorded, "accepted_amount": accepted,
                "accepted_events": pair.accepted_events.load(Ordering::Relaxed), "unknown_amount": unknown,
            });
            if a.enforcement == Enforcement::Hard
                && let Some(limit) = a.limit
                && a.usage > limit
            {
                report.overshoots += 1;
                fail(
                    &mut report,
                    tenant,
                    metric,
                    format!("overshoot: usage {} > HARD limit {limit}", a.usage),
                    detail.clone(),
                );
            }
            if recorded < accepted || recorded > accepted.saturating_add(unknown) {
                report.mismatches += 1;
                let problem = match (settings.mode, unknown) {
                    (Mode::Check | Mode::Healthz, _) => {
                        format!("{} recorded {recorded}: it must record nothing", value_name(&settings.mode))
                    }
                    (_, 0) => format!("recorded {recorded} != accepted {accepted}"),
                    _ => format!("recorded {recorded} outside accepted {accepted} + lost {unknown}"),
                };
                fail(&mut report, tenant, metric, problem, detail.clone());
            }
            if a.enforcement == Enforcement::Hard
                && min_refused > 0
                && let Some(limit) = a.limit
                && a.usage.saturating_add(min_refused) <= limit
            {
                report.false_refusals += 1;
                fail(
                    &mut report,
                    tenant,
                    metric,
                    format!(
                        "refused amount {min_refused} although usage {} leaves room under {limit}",
                        a.usage
                    ),
                    detail,
                );
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::bench::client::Endpoint;
    use crate::bench::options::BenchArgs;
    use crate::bench::workload::Workload;
    use clap::Parser;
    use hyper::header::HeaderValue;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn load(extra: &[&str]) -> Load {
        let mut argv = vec!["bench", "--admin-key", "k", "--tenants", "2", "--metrics", "2", "--limit", "10"];
        argv.extend_from_slice(extra);
        let settings = Settings::from_args(&Cli::try_parse_from(argv).unwrap().args).unwrap();
        let endpoint = Arc::new(Endpoint {
            addr: "127.0.0.1:1".parse().unwrap(),
            host: HeaderValue::from_static("127.0.0.1:1"),
            auth: HeaderValue::from_static("Bearer k"),
            base_path: String::new(),
        });
        let workload = Workload::new(&settings, "kp".to_owned());
        Load::new(settings, endpoint, workload).unwrap()
    }

    fn observed(usage: i64, enforcement: Enforcement) -> Option<Observed> {
        Some(Observed { usage, limit: Some(10), enforcement })
    }

    #[test]
    fn a_run_that_matches_passes() {
        let load = load(&[]);
        load.pairs[1].accepted_amount.store(10, Ordering::Relaxed);
        load.pairs[1].min_refused.store(1, Ordering::Relaxed);
        let before = vec![observed(0, Enforcement::Hard); 4];
        let mut after = before.clone();
        after[1] = observed(10, Enforcement::Hard);
        let report = evaluate(&load, &before, &after, &[0, 1]);
        assert!(report.passed(), "{report:?}");
        assert_eq!((report.tenants_checked, report.pairs_checked), (2, 4));
        assert_eq!(report.to_json()["no_overshoot"], true);
        assert_eq!(report.to_json()["idempotent_replays"], Value::Null);
    }

    #[test]
    fn overshoot_mismatch_and_false_refusal_are_each_named() {
        let load = load(&[]);
        // Pair 0: 11 accepted and recorded over a HARD limit of 10.
        load.pairs[0].accepted_amount.store(11, Ordering::Relaxed);
        // Pair 1: the client saw 3 accepted, the server recorded 4.
        load.pairs[1].accepted_amount.store(3, Ordering::Relaxed);
        // Pair 2: refused an amount of 2 while usage stayed at 5 of 10.
        load.pairs[2].accepted_amount.store(5, Ordering::Relaxed);
        load.pairs[2].min_refused.store(2, Ordering::Relaxed);
        let before = vec![observed(0, Enforcement::Hard); 4];
        let after = vec![
            observed(11, Enforcement::Hard),
            observed(4, Enforcement::Soft),
            observed(5, Enforcement::Hard),
            observed(0, Enforcement::None),
        ];
        let report = evaluate(&load, &before, &after, &[0, 1]);
        assert!(!report.passed());
        assert_eq!((report.overshoots, report.mismatches, report.false_refusals), (1, 1, 1));
        let json = report.to_json();
        assert_eq!(json["no_overshoot"], false);
        assert_eq!(json["accepted_equals_recorded"], false);
        assert_eq!(json["no_false_refusal"], false);
        let details = json["details"].as_array().unwrap();
        assert_eq!(details[0]["tenant_id"], format!("bench-{}-0", load.settings.run_id));
        assert_eq!(details[0]["metric_code"], "m1");
        assert!(details[0]["problem"].as_str().unwrap().contains("overshoot"));
        assert_eq!(details[1]["metric_code"], "m2");
        assert_eq!(details[1]["recorded"], 4);
        assert_eq!(details[2]["tenant_id"], format!("bench-{}-1", load.settings.run_id));
    }

    #[test]
    fn lost_answers_turn_equality_into_a_range() {
        let load = load(&[]);
        load.pairs[0].accepted_amount.store(3, Ordering::Relaxed);
        load.pairs[0].unknown_amount.store(2, Ordering::Relaxed);
        let before = vec![observed(0, Enforcement::Hard); 4];
        for (recorded, passes) in [(2, false), (3, true), (5, true), (6, false)] {
            let mut after = before.clone();
            after[0] = observed(recorded, Enforcement::Hard);
            assert_eq!(evaluate(&load, &before, &after, &[0]).passed(), passes, "recorded {recorded}");
        }
    }

    #[test]
    fn check_mode_must_record_nothing() {
        let load = load(&["--mode", "check"]);
        let before = vec![observed(0, Enforcement::Hard); 4];
        let mut after = before.clone();
        after[3] = observed(1, Enforcement::Hard);
        let report = evaluate(&load, &before, &after, &[0, 1]);
        assert_eq!(report.mismatches, 1);
        assert!(report.failures[0].problem.contains("must record nothing"));
    }
}
