//! `tally demo`: a ready system for a newcomer — three plans, 51 tenants (as many as the
//! seed's report migrated), usage and events over several past periods, and keys to try.

use chrono::{Duration, Months};
use tally_domain::limits::EVENT_BATCH_LEN_MAX;
use tally_domain::{
    Amount, Change, KeyScope, LimitEnforcement, Metadata, MetricCode, Name, PeriodKind, PlanCode, PlanSpec,
    QuotaLimit, TenantId, Timestamp, UsageError, UsageRequest,
};
use tally_service::Tally;
use tally_store::{Ctx, Store, WriteOp};

/// Tenants the demo creates.
pub const DEMO_TENANTS: usize = 51;
/// Past monthly periods that get usage, besides the current one.
pub const DEMO_PAST_PERIODS: u32 = 3;
/// Events per tenant and period (spread over the metrics).
pub const DEMO_EVENTS_PER_PERIOD: usize = 40;

const NAMES: &[&str] = &[
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "aperture",
    "massive",
    "vandelay",
    "pied-piper",
    "dunder",
    "oscorp",
    "gringotts",
    "monarch",
    "nakatomi",
];

fn limit(
    metric: &str,
    value: Option<i64>,
    enforcement: LimitEnforcement,
    period: PeriodKind,
) -> anyhow::Result<QuotaLimit> {
    Ok(QuotaLimit::new(MetricCode::parse(metric)?, value, enforcement, period)?)
}

/// The demo's plans.
pub fn demo_plans() -> anyhow::Result<Vec<(PlanCode, PlanSpec)>> {
    use LimitEnforcement as E;
    use PeriodKind as P;
    let gib = 1024 * 1024 * 1024;
    Ok(vec![
        (
            PlanCode::parse("free")?,
            PlanSpec::new(
                Name::parse("Free")?,
                vec![
                    limit("api_calls", Some(1_000), E::Hard, P::Month)?,
                    limit("storage_bytes", Some(gib), E::Soft, P::Month)?,
                    limit("exports", Some(10), E::Hard, P::Day)?,
                ],
            )?,
        ),
        (
            PlanCode::parse("pro")?,
            PlanSpec::new(
                Name::parse("Pro")?,
                vec![
                    limit("api_calls", Some(100_000), E::Hard, P::Month)?,
                    limit("storage_bytes", Some(100 * gib), E::Soft, P::Month)?,
                    limit("exports", None, E::None, P::Day)?,
                ],
            )?,
        ),
        (
            PlanCode::parse("enterprise")?,
            PlanSpec::new(
                Name::parse("Enterprise")?,
                vec![
                    limit("api_calls", Some(10_000_000), E::Soft, P::Month)?,
                    limit("storage_bytes", None, E::None, P::Month)?,
                    limit("exports", None, E::None, P::Day)?,
                ],
            )?,
        ),
    ])
}

/// The i-th demo tenant's id.
pub fn demo_tenant_id(i: usize) -> String {
    if i < NAMES.len() {
        NAMES[i].to_owned()
    } else {
        format!("{}-{}", NAMES[i % NAMES.len()], i / NAMES.len() + 1)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, good enough to spread demo data.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Loads the demo unless the store already holds plans. Returns the tenant whose key to show.
pub async fn seed<S: Store>(tally: &Tally<S>) -> anyhow::Result<TenantId> {
    let first = TenantId::parse(&demo_tenant_id(0))?;
    if !tally.list_plans().await?.is_empty() {
        return Ok(first);
    }
    for (code, spec) in demo_plans()? {
        tally.put_plan(&code, &spec, None).await?;
    }
    let now = tally.now();
    let mut rng = Rng(0x5eed_7a11_u64);
    let metrics = ["api_calls", "storage_bytes", "exports"];
    let mut pending: Vec<(Timestamp, UsageRequest)> = Vec::new();
    for i in 0..DEMO_TENANTS {
        let id = TenantId::parse(&demo_tenant_id(i))?;
        let name = Name::parse(&titlecase(&demo_tenant_id(i)))?;
        tally.put_tenant(&id, &name).await?;
        let plan = match i % 8 {
            0..=3 => "free",
            4..=6 => "pro",
            _ => "enterprise",
        };
        // Anchors at midnight on days spread over a month, as real sign-ups would be.
        let start = now.checked_sub_months(Months::new(DEMO_PAST_PERIODS + 1)).unwrap_or(now);
        let anchor = start.date_naive().and_time(chrono::NaiveTime::MIN).and_utc()
            + Duration::days(i64::try_from(i % 28).unwrap_or(0));
        tally.subscribe(&id, &PlanCode::parse(plan)?, Some(anchor), None).await?;
        for back in 0..=DEMO_PAST_PERIODS {
            let period_end = now.checked_sub_months(Months::new(back)).unwrap_or(now);
            for _ in 0..DEMO_EVENTS_PER_PERIOD {
                let metric = metrics[usize::try_from(rng.below(3)).unwrap_or(0)];
                let amount = match metric {
                    "api_calls" => 1 + rng.below(if plan == "free" { 40 } else { 4_000 }),
                    "storage_bytes" => 1 + rng.below(50_000_000),
                    _ => 1,
                };
                let at = period_end - Duration::hours(i64::try_from(rng.below(24 * 27)).unwrap_or(0));
                let mut metadata = serde_json::Map::new();
                metadata.insert("source".into(), serde_json::json!("demo"));
                metadata.insert(
                    "endpoint".into(),
                    serde_json::json!(
                        ["/search", "/export", "/upload"][usize::try_from(rng.below(3)).unwrap_or(0)]
                    ),
                );
                let req = UsageRequest {
                    tenant_id: id.clone(),
                    metric_code: MetricCode::parse(metric)?,
                    change: Change::add(Amount::new(i64::try_from(amount).unwrap_or(1))?),
                    idempotency_key: None,
                    metadata: Metadata::from_map(metadata)?,
                    timestamp: Some(at.min(now)),
                };
                pending.push((at.min(now), req));
            }
        }
    }
    // Apply in time order, as the usage would have arrived (backfilled: each event carries
    // its past timestamp); refusals by HARD limits are part of a realistic history and are
    // simply not recorded.
    pending.sort_by_key(|(at, _)| *at);
    // The history is backfilled on purpose, so its window reaches back to its first event.
    let oldest = pending.first().map_or(now, |(at, _)| *at);
    let ctx = Ctx::new(now, (now - oldest) + Duration::days(1));
    let ops: Vec<WriteOp> = pending.into_iter().map(|(_, r)| WriteOp::Usage(r)).collect();
    for chunk in ops.chunks(EVENT_BATCH_LEN_MAX) {
        for answer in tally.store().write(chunk.to_vec(), ctx).await? {
            if let Some(Err(e)) = answer.into_usage()
                && !matches!(e, UsageError::QuotaExceeded { .. })
            {
                anyhow::bail!("recording the demo history: {e}");
            }
        }
    }
    Ok(first)
}

fn titlecase(id: &str) -> String {
    id.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints how to reach the demo: URL, keys, and three curl calls that work against it.
pub fn print_intro(url: &str, admin_key: &str, tenant: &TenantId, tenant_key: &str) {
    println!("url: {url}");
    println!("admin key: {admin_key}");
    println!("tenant key ({tenant}): {tenant_key}");
    println!();
    println!("Try:");
    println!(
        "  curl -s -X POST {url}/v1/tenants/{tenant}/usage -H 'Authorization: Bearer {tenant_key}' -H 'Content-Type: application/json' -d '{{\"metric_code\": \"api_calls\", \"amount\": 1, \"idempotency_key\": \"demo-1\"}}'"
    );
    println!("  curl -s {url}/v1/tenants/{tenant}/usage -H 'Authorization: Bearer {tenant_key}'");
    println!("  curl -s {url}/v1/plans -H 'Authorization: Bearer {admin_key}'");
    println!("API reference: {url}/docs");
}

/// Makes a fresh admin key and a key for `tenant`, for the intro.
pub async fn demo_keys<S: Store>(tally: &Tally<S>, tenant: &TenantId) -> anyhow::Result<(String, String)> {
    let (_a, admin) = tally.create_key(KeyScope::Admin, None).await?;
    let (_t, scoped) = tally.create_key(KeyScope::Tenant(tenant.clone()), None).await?;
    Ok((admin, scoped))
}
