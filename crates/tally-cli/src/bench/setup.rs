//! Creating the run's plan and tenants, over the API with the admin key, through
//! `tally-client` (which retries on connection errors and 503: every call here is a PUT).

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;
use tally_client::{Client, Enforcement, Limit, PeriodKind, PlanRequest, SubscriptionRequest, TenantRequest};

use super::options::Settings;

/// Concurrent calls used to create tenants (and to read usage for the checks).
pub const ADMIN_CONNECTIONS_MAX: usize = 16;

/// The enforcement of `--enforcement`'s wire name.
pub fn enforcement(name: &str) -> Enforcement {
    match name {
        "hard" => Enforcement::Hard,
        "soft" => Enforcement::Soft,
        _ => Enforcement::None,
    }
}

/// The plan: metrics m1..mN, monthly, with the chosen enforcement; NONE is unlimited.
pub fn plan_request(settings: &Settings) -> PlanRequest {
    let limits = (0..settings.metrics)
        .map(|i| {
            let e = enforcement(settings.enforcement_of(i));
            let limit = (e != Enforcement::None).then_some(settings.limit);
            Limit::new(Settings::metric_code(i), limit, e, PeriodKind::Month)
        })
        .collect();
    PlanRequest { name: format!("bench {}", settings.run_id), limits }
}

/// PUTs the plan, then every tenant and its subscription, several at once.
pub async fn create(settings: &Settings, admin: &Client) -> anyhow::Result<()> {
    let plan = settings.plan_code();
    admin.put_plan(&plan, &plan_request(settings)).await.with_context(|| format!("PUT /v1/plans/{plan}"))?;
    let next = AtomicU32::new(0);
    let workers = (0..settings.connections.min(ADMIN_CONNECTIONS_MAX)).map(|_| async {
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= settings.tenants {
                return Ok::<_, anyhow::Error>(());
            }
            let tenant = settings.tenant_id(index);
            let name = TenantRequest { name: Some(format!("bench tenant {index}")) };
            admin.put_tenant(&tenant, &name).await.with_context(|| format!("PUT /v1/tenants/{tenant}"))?;
            admin
                .put_subscription(&tenant, &SubscriptionRequest::new(plan.clone()))
                .await
                .with_context(|| format!("PUT /v1/tenants/{tenant}/subscription"))?;
        }
    });
    futures::future::try_join_all(workers).await?;
    Ok(())
}
