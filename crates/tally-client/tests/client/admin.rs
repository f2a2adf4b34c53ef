//! Administration against the real server: plans, tenants, subscriptions, overrides, the
//! metric catalog, webhooks and their deliveries, the audit log, and the probes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tally_client::{
    AuditQuery, DeliveryStatus, Enforcement, Limit, MetricKind, MetricRequest, OverrideRequest, PageQuery,
    PeriodKind, PlanRequest, SubscriptionRequest, TenantRequest, UsageRequest, WebhookEvent, WebhookRequest,
};

use crate::helpers::{Canned, Stub, TestServer, eventually, hard, seed};

#[tokio::test]
async fn plans_tenants_subscriptions_and_overrides() {
    let server = TestServer::start().await;
    let tally = server.client();

    // Plans: created at version 1, unchanged by the same content, +1 on a change.
    let plan = PlanRequest { name: "Pro".into(), limits: vec![hard("api_calls", 1000)] };
    let created = tally.put_plan("pro", &plan).await.unwrap();
    assert!(created.created);
    assert_eq!((created.value.plan_code.as_str(), created.value.version), ("pro", 1));
    assert_eq!(created.value.limits, plan.limits);
    let same = tally.put_plan("pro", &plan).await.unwrap();
    assert_eq!(
        (same.created, same.value.version, same.value.updated_at),
        (false, 1, created.value.updated_at)
    );
    let mut bigger = plan.clone();
    bigger.limits.push(Limit::new("exports", None, Enforcement::None, PeriodKind::Day));
    let changed = tally.put_plan("pro", &bigger).await.unwrap().into_inner();
    assert_eq!((changed.version, changed.limits.len()), (2, 2));
    assert_eq!(tally.get_plan("pro").await.unwrap(), changed);
    assert_eq!(tally.list_plans().await.unwrap().plans, std::slice::from_ref(&changed));

    // Tenants: named after their id by default, paginated by id.
    let acme = tally.put_tenant("acme", &TenantRequest { name: Some("Acme Inc.".into()) }).await.unwrap();
    assert!(acme.created);
    assert_eq!((acme.value.name.as_str(), acme.value.subscription.as_ref()), ("Acme Inc.", None));
    let globex = tally.put_tenant("globex", &TenantRequest::default()).await.unwrap();
    assert_eq!(globex.value.name, "globex");
    let renamed = tally.put_tenant("acme", &TenantRequest { name: Some("Acme".into()) }).await.unwrap();
    assert_eq!((renamed.created, renamed.value.name.as_str()), (false, "Acme"));
    let first = tally.list_tenants(&PageQuery { limit: Some(1), cursor: None }).await.unwrap();
    assert_eq!(first.tenants.iter().map(|t| t.tenant_id.as_str()).collect::<Vec<_>>(), ["acme"]);
    let second =
        tally.list_tenants(&PageQuery { limit: Some(1), cursor: first.next_cursor.clone() }).await.unwrap();
    assert_eq!(second.tenants.iter().map(|t| t.tenant_id.as_str()).collect::<Vec<_>>(), ["globex"]);

    // A subscription with an anchor, then an override of one metric.
    let anchor: DateTime<Utc> = "2026-01-31T10:00:00Z".parse().unwrap();
    let sub = SubscriptionRequest { plan_code: "pro".into(), anchor: Some(anchor) };
    let subscribed = tally.put_subscription("acme", &sub).await.unwrap();
    assert_eq!((subscribed.plan_code.as_str(), subscribed.anchor), ("pro", anchor));
    let own = OverrideRequest { limit: Some(5000), enforcement: Enforcement::Soft, period: None };
    let limit = tally.put_override("acme", "api_calls", &own).await.unwrap();
    assert_eq!(limit, Limit::new("api_calls", Some(5000), Enforcement::Soft, PeriodKind::Month));
    let view = tally.get_tenant("acme").await.unwrap();
    assert_eq!(view.subscription.map(|s| s.plan_code), Some("pro".to_owned()));
    assert_eq!(view.overrides, [limit]);
    let usage = tally.usage("acme").await.unwrap();
    let api = usage.metrics.iter().find(|m| m.metric_code == "api_calls").unwrap();
    assert_eq!((api.limit, api.enforcement), (Some(5000), Enforcement::Soft), "the override applies");

    // Removing things: 404 for what is not there, 409 for a plan in use.
    tally.delete_override("acme", "api_calls").await.unwrap();
    assert_eq!(tally.delete_override("acme", "api_calls").await.unwrap_err().code(), Some("not_found"));
    let in_use = tally.delete_plan("pro").await.unwrap_err();
    assert_eq!((in_use.status(), in_use.code()), (Some(409), Some("conflict")));
    tally.delete_subscription("acme").await.unwrap();
    assert_eq!(tally.delete_subscription("acme").await.unwrap_err().status(), Some(404));
    tally.delete_plan("pro").await.unwrap();
    assert_eq!(tally.get_plan("pro").await.unwrap_err().code(), Some("not_found"));
    assert_eq!(tally.get_tenant("nobody").await.unwrap_err().status(), Some(404));

    // Every change is in the audit log, newest first.
    let audit =
        tally.audit(&AuditQuery { tenant_id: Some("acme".into()), ..Default::default() }).await.unwrap();
    let actions: Vec<_> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["subscription.delete", "override.delete", "override.put", "subscription.put"]);
    assert!(audit.entries.iter().all(|e| e.tenant_id.as_deref() == Some("acme")));
    let everything = tally.audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(everything.entries.first().map(|e| e.action.as_str()), Some("plan.delete"));
}

#[tokio::test]
async fn the_metric_catalog() {
    let server = TestServer::start().await;
    let tally = server.client();
    let seats = MetricRequest {
        name: Some("Seats".into()),
        unit: Some("seat".into()),
        kind: Some(MetricKind::Gauge),
        ..Default::default()
    };
    let declared = tally.put_metric("seats", &seats).await.unwrap();
    assert!(declared.created);
    assert_eq!((declared.value.kind, declared.value.unit.as_deref()), (MetricKind::Gauge, Some("seat")));
    assert!(declared.value.declared && declared.value.created_at.is_some());
    assert_eq!(declared.value.value_property, None, "each event counts 1 unless told otherwise");
    let again = tally.put_metric("seats", &seats).await.unwrap();
    assert!(!again.created);
    assert_eq!(tally.get_metric("seats").await.unwrap().name, "Seats");

    // A metric a plan limits without its being declared is listed as an undeclared counter.
    tally
        .put_plan("pro", &PlanRequest { name: "Pro".into(), limits: vec![hard("api_calls", 10)] })
        .await
        .unwrap();
    let all = tally.list_metrics().await.unwrap().metrics;
    let listed: Vec<_> = all.iter().map(|m| (m.metric_code.as_str(), m.kind, m.declared)).collect();
    assert_eq!(listed, [("api_calls", MetricKind::Counter, false), ("seats", MetricKind::Gauge, true)]);
    assert_eq!(tally.get_metric("unknown").await.unwrap_err().status(), Some(404));
}

#[tokio::test]
async fn webhooks_their_deliveries_and_redelivery() {
    let server = TestServer::start().await;
    let tally = server.client();
    let receiver = Stub::start(vec![Canned::json(200, serde_json::json!({}))]).await;
    seed(&tally, "pro", "acme", vec![hard("api_calls", 10)]).await;

    let request = WebhookRequest {
        url: format!("{}/hooks/tally", receiver.url),
        thresholds: Some(vec![50, 100]),
        events: Some(vec![WebhookEvent::ThresholdCrossed]),
        secret: None,
    };
    let created = tally.put_webhook("ops", &request).await.unwrap();
    assert!(created.created);
    let secret = created.value.secret.clone().expect("a generated secret, shown once");
    assert!(secret.len() >= 16);
    assert_eq!(
        (created.value.thresholds.as_slice(), created.value.events.as_slice()),
        (&[50u16, 100][..], &[WebhookEvent::ThresholdCrossed][..])
    );
    let shown = tally.get_webhook("ops").await.unwrap();
    assert_eq!((shown.secret, shown.url), (None, request.url.clone()));
    let listed = tally.list_webhooks().await.unwrap().webhooks;
    assert_eq!(listed.iter().map(|w| w.webhook_id.as_str()).collect::<Vec<_>>(), ["ops"]);
    assert!(listed[0].secret.is_none());

    // Crossing 50% makes one delivery, written with the usage, and the worker posts it.
    tally.record("acme", &UsageRequest::new("api_calls", 6)).await.unwrap();
    let deliveries = tally.list_deliveries("ops", &PageQuery::default()).await.unwrap();
    assert_eq!(deliveries.deliveries.len(), 1, "{deliveries:?}");
    let delivery = &deliveries.deliveries[0];
    assert_eq!((delivery.event_type, delivery.tenant_id.as_str()), (WebhookEvent::ThresholdCrossed, "acme"));
    assert_eq!(delivery.payload["data"]["threshold"], 50);
    assert_eq!(delivery.payload["id"], delivery.id.as_str());
    let delivered = eventually(Duration::from_secs(10), || async {
        let page = tally.list_deliveries("ops", &PageQuery::default()).await.unwrap();
        page.deliveries.into_iter().find(|d| d.status == DeliveryStatus::Delivered)
    })
    .await
    .expect("delivered within 10 s");
    assert_eq!((delivered.attempts, delivered.last_response_code), (1, Some(200)));
    let posted = receiver.seen();
    assert_eq!(posted.len(), 1);
    assert_eq!((posted[0].method.as_str(), posted[0].path.as_str()), ("POST", "/hooks/tally"));
    assert_eq!(posted[0].json()["id"], delivery.id.as_str());

    // Sent again on demand, under the same id.
    let again = tally.redeliver("ops", &delivery.id).await.unwrap();
    assert_eq!((again.id.as_str(), again.status), (delivery.id.as_str(), DeliveryStatus::Pending));
    let reposted =
        eventually(Duration::from_secs(10), || async { (receiver.seen().len() == 2).then_some(()) }).await;
    assert!(reposted.is_some(), "redelivered within 10 s");
    assert_eq!(receiver.seen()[1].json()["id"], delivery.id.as_str());
    let unknown = tally.redeliver("ops", &uuid::Uuid::now_v7().to_string()).await.unwrap_err();
    assert_eq!(unknown.code(), Some("not_found"));

    tally.delete_webhook("ops").await.unwrap();
    assert_eq!(tally.get_webhook("ops").await.unwrap_err().status(), Some(404));
    assert!(tally.list_webhooks().await.unwrap().webhooks.is_empty());
}

#[tokio::test]
async fn probes_and_a_tenant_without_a_key() {
    let server = TestServer::start().await;
    let tally = server.client();
    assert_eq!(tally.healthz().await.unwrap().status, "ok");
    assert_eq!(tally.readyz().await.unwrap().status, "ready");
    // Probes need no key; admin routes do.
    let anonymous = tally_client::Client::builder(&server.url).build().unwrap();
    assert_eq!(anonymous.healthz().await.unwrap().status, "ok");
    let denied = anonymous.list_plans().await.unwrap_err();
    assert_eq!((denied.status(), denied.code()), (Some(401), Some("unauthorized")));
}
