//! The OpenAPI 3.1 document, generated from the DTOs and one doc entry per route, and the
//! `/docs` page rendered from it on the server (no script, no CDN, nothing fetched).
#![allow(dead_code)]

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::dto::*;

/// Declares a documentation-only function for one route, with the shared error responses.
macro_rules! route_doc {
    ($name:ident, $method:ident, $path:literal, $tag:literal, $summary:literal,
     params($($param:tt)*), request($($req:tt)*), ok($($ok:tt)*)) => {
        #[utoipa::path(
            $method,
            path = $path,
            tag = $tag,
            summary = $summary,
            params($($param)*),
            $($req)*
            responses(
                $($ok)*,
                (status = 400, body = Problem, content_type = "application/problem+json", description = "invalid_request"),
                (status = 401, body = Problem, content_type = "application/problem+json", description = "unauthorized"),
                (status = 403, body = Problem, content_type = "application/problem+json", description = "forbidden"),
                (status = 404, body = Problem, content_type = "application/problem+json", description = "not_found"),
                (status = 409, body = Problem, content_type = "application/problem+json", description = "conflict, idempotency_conflict or period_closed"),
                (status = 413, body = Problem, content_type = "application/problem+json", description = "payload_too_large"),
                (status = 415, body = Problem, content_type = "application/problem+json", description = "unsupported_media_type"),
                (status = 422, body = Problem, content_type = "application/problem+json", description = "quota_not_found, no_subscription, event_out_of_window, gauge_below_zero, correction_below_zero or correction_not_applicable"),
                (status = 429, body = Problem, content_type = "application/problem+json", description = "quota_exceeded; nothing was recorded"),
                (status = 503, body = Problem, content_type = "application/problem+json", description = "unavailable; retry"),
            ),
            security(("bearer" = []))
        )]
        pub fn $name() {}
    };
}

route_doc!(
    record,
    post,
    "/v1/tenants/{tenant_id}/usage",
    "usage",
    "Record usage",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(request_body = UsageBody,),
    ok((status = 200, body = UsageResponse, description = "Success"))
);
route_doc!(
    record_batch,
    post,
    "/v1/tenants/{tenant_id}/usage/batch",
    "usage",
    "Record up to 1000 events, each on its own",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(request_body = BatchBody,),
    ok((status = 200, body = BatchResponse, description = "Success"))
);
route_doc!(
    check,
    post,
    "/v1/tenants/{tenant_id}/usage/check",
    "usage",
    "Check whether usage would be allowed; changes nothing",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(request_body = CheckBody,),
    ok((status = 200, body = CheckResponse, description = "Success"))
);
route_doc!(
    usage,
    get,
    "/v1/tenants/{tenant_id}/usage",
    "usage",
    "Current usage of every metric",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(),
    ok((status = 200, body = TenantUsageResponse, description = "Success"))
);
route_doc!(history, get, "/v1/tenants/{tenant_id}/usage/{metric_code}/history", "usage", "Usage records of one metric, newest first",
    params(("tenant_id" = String, Path, description = "Tenant id"), ("metric_code" = String, Path, description = "Metric"),
           ("from" = Option<String>, Query, description = "Period start at or after (RFC 3339)"),
           ("to" = Option<String>, Query, description = "Period start before (RFC 3339)"),
           ("limit" = Option<u32>, Query, description = "1..=1000, default 1000")),
    request(), ok((status = 200, body = HistoryResponse, description = "Success")));
route_doc!(events, get, "/v1/tenants/{tenant_id}/events", "usage", "Usage events, newest first, keyset-paginated",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("metric_code" = Option<String>, Query, description = "Only this metric"),
           ("from" = Option<String>, Query, description = "Timestamp at or after (RFC 3339)"),
           ("to" = Option<String>, Query, description = "Timestamp before (RFC 3339)"),
           ("limit" = Option<u32>, Query, description = "1..=1000, default 100"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
           ("kind" = Option<String>, Query, description = "usage or correction")),
    request(), ok((status = 200, body = EventsResponse, description = "Success")));
route_doc!(
    correct,
    post,
    "/v1/tenants/{tenant_id}/usage/corrections",
    "usage",
    "Correct a counter by a signed amount (admin; audited; never refused by a limit)",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(request_body = CorrectionBody,),
    ok((status = 200, body = UsageResponse, description = "The usage body with kind: correction"))
);
route_doc!(
    close_periods,
    post,
    "/v1/tenants/{tenant_id}/periods/close",
    "periods",
    "Close every period ending at or before `before` (admin; audited; the watermark only moves forward)",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(request_body = CloseBody,),
    ok((status = 200, body = CloseResponse, description = "Success"))
);
route_doc!(
    reopen_period,
    post,
    "/v1/tenants/{tenant_id}/periods/reopen",
    "periods",
    "Reopen one closed period (admin; audited); 409 when it is not closed",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(request_body = ReopenBody,),
    ok((status = 200, body = PeriodResponse, description = "The period, open again"))
);
route_doc!(list_periods, get, "/v1/tenants/{tenant_id}/periods", "periods", "A tenant's periods with their closing state, newest first (admin)",
    params(("tenant_id" = String, Path, description = "Tenant id"),
           ("closed" = Option<bool>, Query, description = "true: closed periods only; false: open ones only"),
           ("metric_code" = Option<String>, Query, description = "Only this metric"),
           ("limit" = Option<u32>, Query, description = "1..=1000, default 100"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    request(), ok((status = 200, body = PeriodsResponse, description = "Success")));
route_doc!(
    reset,
    post,
    "/v1/tenants/{tenant_id}/usage/{metric_code}/reset",
    "usage",
    "Reset the current period's usage (admin; audited)",
    params(
        ("tenant_id" = String, Path, description = "Tenant id"),
        ("metric_code" = String, Path, description = "Metric")
    ),
    request(),
    ok((status = 200, body = RecordResponse, description = "Success"))
);
route_doc!(
    put_plan,
    put,
    "/v1/plans/{plan_code}",
    "plans",
    "Create (201) or replace (200) a plan",
    params(("plan_code" = String, Path, description = "Plan code")),
    request(request_body = PlanBody,),
    ok(
        (status = 200, body = PlanResponse, description = "Replaced"),
        (status = 201, body = PlanResponse, description = "Created")
    )
);
route_doc!(
    reserve,
    post,
    "/v1/tenants/{tenant_id}/reservations",
    "reservations",
    "Hold quota (201); a replayed idempotency key answers the original (200)",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(request_body = ReserveBody,),
    ok(
        (status = 201, body = ReservationResponse, description = "Held"),
        (status = 200, body = ReservationResponse, description = "Replayed")
    )
);
route_doc!(
    list_reservations,
    get,
    "/v1/tenants/{tenant_id}/reservations",
    "reservations",
    "The open reservations, oldest first",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(),
    ok((status = 200, body = ReservationsResponse, description = "Success"))
);
route_doc!(
    commit_reservation,
    post,
    "/v1/tenants/{tenant_id}/reservations/{reservation_id}/commit",
    "reservations",
    "Record what was used (at most the amount held; no body: all of it) and release the rest",
    params(
        ("tenant_id" = String, Path, description = "Tenant id"),
        ("reservation_id" = String, Path, description = "Reservation id")
    ),
    request(request_body(content = Option<CommitBody>, description = "Optional"),),
    ok((status = 200, body = UsageResponse, description = "Recorded, or replayed"))
);
route_doc!(
    release_reservation,
    delete,
    "/v1/tenants/{tenant_id}/reservations/{reservation_id}",
    "reservations",
    "Release a reservation",
    params(
        ("tenant_id" = String, Path, description = "Tenant id"),
        ("reservation_id" = String, Path, description = "Reservation id")
    ),
    request(),
    ok((status = 204, description = "Released"))
);
route_doc!(
    put_metric,
    put,
    "/v1/metrics/{metric_code}",
    "metrics",
    "Declare (201) or change (200) a metric: name, unit, counter or gauge",
    params(("metric_code" = String, Path, description = "Metric code")),
    request(request_body = MetricBody,),
    ok(
        (status = 200, body = MetricResponse, description = "Changed"),
        (status = 201, body = MetricResponse, description = "Declared")
    )
);
route_doc!(
    list_metrics,
    get,
    "/v1/metrics",
    "metrics",
    "List declared metrics",
    params(),
    request(),
    ok((status = 200, body = MetricsResponse, description = "Success"))
);
route_doc!(
    get_metric,
    get,
    "/v1/metrics/{metric_code}",
    "metrics",
    "Get a declared metric",
    params(("metric_code" = String, Path, description = "Metric code")),
    request(),
    ok((status = 200, body = MetricResponse, description = "Success"))
);
route_doc!(
    put_webhook,
    put,
    "/v1/webhooks/{webhook_id}",
    "webhooks",
    "Register (201, with the secret shown once) or replace (200) a threshold webhook",
    params(("webhook_id" = String, Path, description = "Webhook id")),
    request(request_body = WebhookBody,),
    ok(
        (status = 200, body = WebhookResponse, description = "Replaced or unchanged; no secret"),
        (status = 201, body = WebhookResponse, description = "Registered; the secret is shown this once")
    )
);
route_doc!(
    list_webhooks,
    get,
    "/v1/webhooks",
    "webhooks",
    "List webhooks (without secrets)",
    params(),
    request(),
    ok((status = 200, body = WebhooksResponse, description = "Success"))
);
route_doc!(
    get_webhook,
    get,
    "/v1/webhooks/{webhook_id}",
    "webhooks",
    "Get a webhook (without its secret)",
    params(("webhook_id" = String, Path, description = "Webhook id")),
    request(),
    ok((status = 200, body = WebhookResponse, description = "Success"))
);
route_doc!(
    delete_webhook,
    delete,
    "/v1/webhooks/{webhook_id}",
    "webhooks",
    "Remove a webhook with its deliveries",
    params(("webhook_id" = String, Path, description = "Webhook id")),
    request(),
    ok((status = 204, description = "Removed; no body"))
);
route_doc!(list_deliveries, get, "/v1/webhooks/{webhook_id}/deliveries", "webhooks", "A webhook's deliveries, newest first",
    params(("webhook_id" = String, Path, description = "Webhook id"),
           ("limit" = Option<u32>, Query, description = "1..=1000, default 100"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    request(), ok((status = 200, body = DeliveriesResponse, description = "Success")));
route_doc!(
    redeliver,
    post,
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    "webhooks",
    "Send a delivery again: pending and due now, with a new 24 h retry window",
    params(
        ("webhook_id" = String, Path, description = "Webhook id"),
        ("delivery_id" = String, Path, description = "Delivery id")
    ),
    request(),
    ok((status = 202, body = DeliveryResponse, description = "Pending again"))
);
route_doc!(
    list_plans,
    get,
    "/v1/plans",
    "plans",
    "List plans",
    params(),
    request(),
    ok((status = 200, body = PlansResponse, description = "Success"))
);
route_doc!(
    get_plan,
    get,
    "/v1/plans/{plan_code}",
    "plans",
    "Get a plan",
    params(("plan_code" = String, Path, description = "Plan code")),
    request(),
    ok((status = 200, body = PlanResponse, description = "Success"))
);
route_doc!(
    delete_plan,
    delete,
    "/v1/plans/{plan_code}",
    "plans",
    "Delete a plan nobody subscribes to",
    params(("plan_code" = String, Path, description = "Plan code")),
    request(),
    ok((status = 204, description = "Deleted; no body"))
);
route_doc!(
    put_tenant,
    put,
    "/v1/tenants/{tenant_id}",
    "tenants",
    "Create (201) or rename (200) a tenant",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(request_body = TenantBody,),
    ok(
        (status = 200, body = TenantResponse, description = "Renamed or unchanged"),
        (status = 201, body = TenantResponse, description = "Created")
    )
);
route_doc!(list_tenants, get, "/v1/tenants", "tenants", "List tenants by id",
    params(("limit" = Option<u32>, Query, description = "1..=1000, default 100"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    request(), ok((status = 200, body = TenantsResponse, description = "Success")));
route_doc!(
    get_tenant,
    get,
    "/v1/tenants/{tenant_id}",
    "tenants",
    "Get a tenant with its subscription and overrides",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(),
    ok((status = 200, body = TenantResponse, description = "Success"))
);
route_doc!(
    put_subscription,
    put,
    "/v1/tenants/{tenant_id}/subscription",
    "tenants",
    "Subscribe a tenant or change its plan",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(request_body = SubscriptionBody,),
    ok((status = 200, body = SubscriptionResponse, description = "Success"))
);
route_doc!(
    delete_subscription,
    delete,
    "/v1/tenants/{tenant_id}/subscription",
    "tenants",
    "End a tenant's subscription",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request(),
    ok((status = 204, description = "Deleted; no body"))
);
route_doc!(
    put_override,
    put,
    "/v1/tenants/{tenant_id}/overrides/{metric_code}",
    "tenants",
    "Set a tenant's own limit for one metric",
    params(
        ("tenant_id" = String, Path, description = "Tenant id"),
        ("metric_code" = String, Path, description = "Metric")
    ),
    request(request_body = OverrideBody,),
    ok((status = 200, body = LimitResponse, description = "Success"))
);
route_doc!(
    delete_override,
    delete,
    "/v1/tenants/{tenant_id}/overrides/{metric_code}",
    "tenants",
    "Remove a tenant's override",
    params(
        ("tenant_id" = String, Path, description = "Tenant id"),
        ("metric_code" = String, Path, description = "Metric")
    ),
    request(),
    ok((status = 204, description = "Deleted; no body"))
);
route_doc!(audit, get, "/v1/audit", "audit", "The admin audit log, newest first",
    params(("tenant_id" = Option<String>, Query, description = "Only this tenant"),
           ("limit" = Option<u32>, Query, description = "1..=1000, default 100"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    request(), ok((status = 200, body = AuditResponse, description = "Success")));

route_doc!(
    create_key,
    post,
    "/v1/keys",
    "keys",
    "Create an API key (admin; audited); the secret is shown this once, only its hash is kept",
    params(),
    request(request_body = KeyBody,),
    ok((status = 201, body = KeyResponse, description = "Created; `key` is shown this once"))
);
route_doc!(
    list_keys,
    get,
    "/v1/keys",
    "keys",
    "List the stored API keys, revoked ones included, oldest first (without secrets)",
    params(),
    request(),
    ok((status = 200, body = KeysResponse, description = "Success"))
);
route_doc!(
    revoke_key,
    delete,
    "/v1/keys/{key_id}",
    "keys",
    "Revoke an API key (admin; audited); every instance refuses it within a second",
    params(("key_id" = String, Path, description = "Key id (a UUID)")),
    request(),
    ok((status = 204, description = "Revoked; no body"))
);

route_doc!(
    compat_ingest,
    post,
    "/api/v1/events",
    "compatibility",
    "OpenMeter CloudEvents (one, or a batch) or one Lago event; 204 (CloudEvents) or 200 (Lago)",
    params(),
    request(request_body(
        content = Object,
        description = "application/cloudevents+json, application/cloudevents-batch+json or application/json",
        content_type = "application/json"
    ),),
    ok(
        (status = 204, description = "CloudEvents recorded (or replayed); no body"),
        (status = 200, body = Object, description = "Lago: {\"event\": {...}}")
    )
);
route_doc!(
    compat_lago_batch,
    post,
    "/api/v1/events/batch",
    "compatibility",
    "Lago events {\"events\": [...]}",
    params(),
    request(request_body(content = Object, content_type = "application/json"),),
    ok((status = 200, body = Object, description = "{\"events\": [...]}"))
);
route_doc!(compat_entitlement_v1, get, "/api/v1/customers/{customer}/entitlements/{metric_code}/value", "compatibility",
    "OpenMeter: an entitlement's value (hasAccess, balance, usage, overage)",
    params(("customer" = String, Path, description = "Tenant id"), ("metric_code" = String, Path, description = "Metric"),
           ("time" = Option<String>, Query, description = "RFC 3339; default now")),
    request(), ok((status = 200, body = Object, description = "{hasAccess, balance, usage, overage}")));
route_doc!(compat_entitlement_v2, get, "/api/v2/customers/{customer}/entitlements/{metric_code}/value", "compatibility",
    "OpenMeter v2: an entitlement's value (hasAccess, balance, usage, overage)",
    params(("customer" = String, Path, description = "Tenant id"), ("metric_code" = String, Path, description = "Metric"),
           ("time" = Option<String>, Query, description = "RFC 3339; default now")),
    request(), ok((status = 200, body = Object, description = "{hasAccess, balance, usage, overage}")));
route_doc!(compat_meter_query, get, "/api/v1/meters/{metric_code}/query", "compatibility",
    "OpenMeter: a meter's usage per subject and window, summed from the event trail",
    params(("metric_code" = String, Path, description = "Metric"),
           ("from" = Option<String>, Query, description = "RFC 3339, inclusive; default the beginning"),
           ("to" = Option<String>, Query, description = "RFC 3339, exclusive; default now"),
           ("windowSize" = Option<String>, Query, description = "MINUTE, HOUR, DAY or MONTH (UTC); default one window"),
           ("subject" = Option<Vec<String>>, Query, description = "Tenant ids (repeatable); default all (a tenant key: its own)")),
    request(), ok((status = 200, body = Object, description = "{from, to, windowSize, data: [{value, windowStart, windowEnd, subject, groupBy}]}")));
route_doc!(compat_current_usage, get, "/api/v1/customers/{customer}/current_usage", "compatibility",
    "Lago: a customer's current usage (units only; Tally does not price)",
    params(("customer" = String, Path, description = "Tenant id"),
           ("external_subscription_id" = Option<String>, Query, description = "Accepted and ignored: a tenant has one subscription")),
    request(), ok((status = 200, body = Object, description = "{customer_usage: {...}}")));

/// `GET /healthz`
#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "The process runs",
    responses((status = 200, body = HealthResponse, description = "Running")))]
pub fn healthz() {}

/// `GET /readyz`
#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "The store answers",
    responses((status = 200, body = HealthResponse, description = "Ready"),
              (status = 503, body = Problem, content_type = "application/problem+json", description = "The store does not answer")))]
pub fn readyz() {}

/// `GET /metrics`
#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics (text format)",
    responses((status = 200, body = String, content_type = "text/plain", description = "Metrics"),
              (status = 401, body = Problem, content_type = "application/problem+json", description = "A metrics token is configured and was not given")))]
pub fn metrics() {}

/// `GET /openapi.json`
#[utoipa::path(get, path = "/openapi.json", tag = "operations", summary = "This document",
    responses((status = 200, body = Object, description = "OpenAPI 3.1")))]
pub fn openapi_json() {}

/// `GET /docs`
#[utoipa::path(get, path = "/docs", tag = "operations", summary = "Human-readable API reference",
    responses((status = 200, body = String, content_type = "text/html", description = "HTML")))]
pub fn docs() {}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Tally", description = "Usage metering and quota enforcement for SaaS products."),
    paths(record, record_batch, check, usage, history, events, reset, correct, close_periods, reopen_period,
          list_periods, reserve, list_reservations,
          commit_reservation, release_reservation, put_metric, list_metrics, get_metric,
          put_webhook, list_webhooks, get_webhook, delete_webhook, list_deliveries, redeliver,
          put_plan, list_plans, get_plan, delete_plan,
          put_tenant, list_tenants, get_tenant, put_subscription, delete_subscription, put_override, delete_override,
          audit, create_key, list_keys, revoke_key,
          compat_ingest, compat_lago_batch, compat_entitlement_v1, compat_entitlement_v2,
          compat_meter_query, compat_current_usage, healthz, readyz, metrics, openapi_json, docs),
    components(schemas(Problem)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}
