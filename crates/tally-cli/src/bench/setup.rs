//! Creating the run's plan and tenants, over the API with the admin key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hyper::Method;
use serde_json::{Value, json};

use super::client::{AdminClient, Endpoint};
use super::options::Settings;

/// Connections used to create tenants (and to read usage for the checks).
pub const ADMIN_CONNECTIONS_MAX: usize = 16;

/// The plan's body: metrics m1..mN, monthly, with the chosen enforcement; NONE is unlimited.
pub fn plan_body(settings: &Settings) -> Value {
    let limits: Vec<Value> = (0..settings.metrics)
        .map(|i| {
            let enforcement = settings.enforcement_of(i);
            let limit = if enforcement == "none" { Value::Null } else { json!(settings.limit) };
            json!({"metric_code": Settings::metric_code(i), "limit": limit, "enforcement": enforcement, "period": "month"})
        })
        .collect();
    json!({"name": format!("bench {}", settings.run_id), "limits": limits})
}

/// PUTs the plan, then every tenant and its subscription, on several connections at once.
pub async fn create(settings: &Settings, endpoint: &Arc<Endpoint>) -> anyhow::Result<()> {
    let plan = settings.plan_code();
    AdminClient::new(endpoint.clone())
        .call_ok(Method::PUT, &format!("/v1/plans/{plan}"), Some(plan_body(settings).to_string()))
        .await?;
    let next = AtomicU32::new(0);
    let subscription = json!({"plan_code": plan}).to_string();
    let workers = (0..settings.connections.min(ADMIN_CONNECTIONS_MAX)).map(|_| async {
        let mut client = AdminClient::new(endpoint.clone());
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= settings.tenants {
                return Ok::<_, anyhow::Error>(());
            }
            let tenant = settings.tenant_id(index);
            let name = json!({"name": format!("bench tenant {index}")}).to_string();
            client.call_ok(Method::PUT, &format!("/v1/tenants/{tenant}"), Some(name)).await?;
            client
                .call_ok(
                    Method::PUT,
                    &format!("/v1/tenants/{tenant}/subscription"),
                    Some(subscription.clone()),
                )
                .await?;
        }
    });
    futures::future::try_join_all(workers).await?;
    Ok(())
}
