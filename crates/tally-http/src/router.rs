//! The route table (one list that builds the router and that the OpenAPI test compares with
//! the document), and the middleware every request passes through.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use tally_domain::limits::REQUEST_BODY_BYTES_MAX;
use tally_store::Store;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::error::{ApiError, FailureCause};
use crate::state::AppState;
use crate::{
    admin_routes, closing_routes, compat_routes, ops_routes, reservation_routes, usage_routes, webhook_routes,
};
use tracing::Instrument;

/// A request that takes longer than this is answered 503 `unavailable`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Every route: path, method, handler.
pub fn route_table<S: Store>() -> Vec<(&'static str, Method, MethodRouter<AppState<S>>)> {
    vec![
        ("/v1/tenants/{tenant_id}/usage", Method::POST, post(usage_routes::record::<S>)),
        ("/v1/tenants/{tenant_id}/usage", Method::GET, get(usage_routes::usage::<S>)),
        ("/v1/tenants/{tenant_id}/usage/batch", Method::POST, post(usage_routes::record_batch::<S>)),
        ("/v1/tenants/{tenant_id}/usage/check", Method::POST, post(usage_routes::check::<S>)),
        ("/v1/tenants/{tenant_id}/usage/{metric_code}/history", Method::GET, get(usage_routes::history::<S>)),
        ("/v1/tenants/{tenant_id}/usage/{metric_code}/reset", Method::POST, post(usage_routes::reset::<S>)),
        ("/v1/tenants/{tenant_id}/events", Method::GET, get(usage_routes::events::<S>)),
        ("/v1/tenants/{tenant_id}/usage/corrections", Method::POST, post(closing_routes::correct::<S>)),
        ("/v1/tenants/{tenant_id}/periods", Method::GET, get(closing_routes::list::<S>)),
        ("/v1/tenants/{tenant_id}/periods/close", Method::POST, post(closing_routes::close::<S>)),
        ("/v1/tenants/{tenant_id}/periods/reopen", Method::POST, post(closing_routes::reopen::<S>)),
        ("/v1/tenants/{tenant_id}/reservations", Method::POST, post(reservation_routes::reserve::<S>)),
        ("/v1/tenants/{tenant_id}/reservations", Method::GET, get(reservation_routes::list::<S>)),
        (
            "/v1/tenants/{tenant_id}/reservations/{reservation_id}/commit",
            Method::POST,
            post(reservation_routes::commit::<S>),
        ),
        (
            "/v1/tenants/{tenant_id}/reservations/{reservation_id}",
            Method::DELETE,
            delete(reservation_routes::release::<S>),
        ),
        ("/v1/plans", Method::GET, get(admin_routes::list_plans::<S>)),
        ("/v1/plans/{plan_code}", Method::PUT, put(admin_routes::put_plan::<S>)),
        ("/v1/plans/{plan_code}", Method::GET, get(admin_routes::get_plan::<S>)),
        ("/v1/plans/{plan_code}", Method::DELETE, delete(admin_routes::delete_plan::<S>)),
        ("/v1/metrics", Method::GET, get(admin_routes::list_metrics::<S>)),
        ("/v1/metrics/{metric_code}", Method::PUT, put(admin_routes::put_metric::<S>)),
        ("/v1/metrics/{metric_code}", Method::GET, get(admin_routes::get_metric::<S>)),
        ("/v1/webhooks", Method::GET, get(webhook_routes::list::<S>)),
        ("/v1/webhooks/{webhook_id}", Method::PUT, put(webhook_routes::put::<S>)),
        ("/v1/webhooks/{webhook_id}", Method::GET, get(webhook_routes::get_one::<S>)),
        ("/v1/webhooks/{webhook_id}", Method::DELETE, delete(webhook_routes::delete::<S>)),
        ("/v1/webhooks/{webhook_id}/deliveries", Method::GET, get(webhook_routes::deliveries::<S>)),
        (
            "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
            Method::POST,
            post(webhook_routes::redeliver::<S>),
        ),
        ("/v1/tenants", Method::GET, get(admin_routes::list_tenants::<S>)),
        ("/v1/tenants/{tenant_id}", Method::PUT, put(admin_routes::put_tenant::<S>)),
        ("/v1/tenants/{tenant_id}", Method::GET, get(admin_routes::get_tenant::<S>)),
        ("/v1/tenants/{tenant_id}/subscription", Method::PUT, put(admin_routes::put_subscription::<S>)),
        (
            "/v1/tenants/{tenant_id}/subscription",
            Method::DELETE,
            delete(admin_routes::delete_subscription::<S>),
        ),
        (
            "/v1/tenants/{tenant_id}/overrides/{metric_code}",
            Method::PUT,
            put(admin_routes::put_override::<S>),
        ),
        (
            "/v1/tenants/{tenant_id}/overrides/{metric_code}",
            Method::DELETE,
            delete(admin_routes::delete_override::<S>),
        ),
        ("/v1/audit", Method::GET, get(admin_routes::audit::<S>)),
        ("/v1/keys", Method::POST, post(crate::key_routes::create::<S>)),
        ("/v1/keys", Method::GET, get(crate::key_routes::list::<S>)),
        ("/v1/keys/{key_id}", Method::DELETE, delete(crate::key_routes::revoke::<S>)),
        ("/api/v1/events", Method::POST, post(compat_routes::ingest::<S>)),
        ("/api/v1/events/batch", Method::POST, post(compat_routes::ingest_lago_batch::<S>)),
        (
            "/api/v1/customers/{customer}/entitlements/{metric_code}/value",
            Method::GET,
            get(compat_routes::entitlement_value::<S>),
        ),
        (
            "/api/v2/customers/{customer}/entitlements/{metric_code}/value",
            Method::GET,
            get(compat_routes::entitlement_value::<S>),
        ),
        ("/api/v1/meters/{metric_code}/query", Method::GET, get(compat_routes::meter_query::<S>)),
        ("/api/v1/customers/{customer}/current_usage", Method::GET, get(compat_routes::current_usage::<S>)),
        ("/healthz", Method::GET, get(ops_routes::healthz)),
        ("/readyz", Method::GET, get(ops_routes::readyz::<S>)),
        ("/metrics", Method::GET, get(ops_routes::metrics::<S>)),
        ("/openapi.json", Method::GET, get(ops_routes::openapi_json)),
        ("/docs", Method::GET, get(ops_routes::docs)),
    ]
}

/// The application: every route of the table, the fallbacks and the middleware.
pub fn router<S: Store>(state: AppState<S>) -> Router {
    let mut by_path: Vec<(&'static str, MethodRouter<AppState<S>>)> = Vec::new();
    for (path, _method, handler) in route_table::<S>() {
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, existing)) => {
                let merged = std::mem::take(existing).merge(handler);
                *existing = merged;
            }
            None => by_path.push((path, handler)),
        }
    }
    let mut app: Router<AppState<S>> = Router::new();
    for (path, handler) in by_path {
        app = app.route(path, handler);
    }
    app.merge(crate::admin_ui::routes::<S>())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .layer(middleware::from_fn(timeout))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            ApiError::internal().because("the handler panicked").into_response()
        }))
        .layer(middleware::from_fn(observe))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([axum::http::header::AUTHORIZATION]))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            ApiError::unavailable(format!("the request took longer than {}s", REQUEST_TIMEOUT.as_secs()))
                .into_response()
        }
    }
}

/// Metrics and logs of every request. At the default level no span is made per request (it
/// cost 13% of a `/healthz` request's instructions); at debug level each request gets a
/// `request` span with its method, path and request id. Every 5xx logs one event with the
/// method, the route, the request id, the status and the cause (a [`FailureCause`] on the
/// response), whatever the level.
async fn observe(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let request_id = req.headers().get("x-request-id").cloned();
    let started = Instant::now();
    let resp = if tracing::enabled!(tracing::Level::DEBUG) {
        let id = request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
        let span =
            tracing::debug_span!("request", method = %method, path = %req.uri().path(), request_id = %id);
        next.run(req).instrument(span).await
    } else {
        next.run(req).await
    };
    let route = route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    let status = resp.status().as_u16();
    if resp.status().is_server_error() {
        let cause = resp.extensions().get::<FailureCause>().map_or("", |c| c.0.as_str());
        let request_id = request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
        if status == 500 {
            tracing::error!(method = %method, route, request_id, status, cause, "request failed");
        } else {
            tracing::warn!(method = %method, route, request_id, status, cause, "request failed");
        }
    }
    let (requests, duration) = route_metrics(route, &method, status);
    requests.increment(1);
    duration.record(started.elapsed().as_secs_f64());
    resp
}

/// The `route` label of requests that matched no route.
const UNMATCHED_ROUTE: &str = "unmatched";

/// A route's metric handles by method, and its request counters by status.
type RouteHandles = Vec<(Method, metrics::Histogram, Vec<(u16, metrics::Counter)>)>;

/// Metric handles, resolved once per route, method and status rather than once per request
/// (building a labelled key and looking it up in the registry cost allocations on every
/// request). Bounded: routes come from the route table (plus `unmatched`), methods from the
/// request line (unknown ones share one entry), statuses are 3-digit codes.
static ROUTE_METRICS: std::sync::LazyLock<
    std::sync::RwLock<std::collections::HashMap<String, RouteHandles>>,
> = std::sync::LazyLock::new(Default::default);

fn route_metrics(route: &str, method: &Method, status: u16) -> (metrics::Counter, metrics::Histogram) {
    // Methods outside the standard set are labelled as one, so that a client cannot grow the
    // map (or the exported series) by inventing methods.
    let method = if KNOWN_METHODS.contains(method) {
        method.clone()
    } else {
        Method::from_bytes(b"OTHER").unwrap_or(Method::GET)
    };
    if let Ok(map) = ROUTE_METRICS.read()
        && let Some(by_method) = map.get(route)
        && let Some((_, duration, by_status)) = by_method.iter().find(|(m, _, _)| *m == method)
        && let Some((_, requests)) = by_status.iter().find(|(s, _)| *s == status)
    {
        return (requests.clone(), duration.clone());
    }
    let Ok(mut map) = ROUTE_METRICS.write() else {
        return (metrics::Counter::noop(), metrics::Histogram::noop());
    };
    let by_method = map.entry(route.to_owned()).or_default();
    let index = match by_method.iter().position(|(m, _, _)| *m == method) {
        Some(i) => i,
        None => {
            let duration = metrics::histogram!(
                "tally_http_request_duration_seconds",
                "route" => route.to_owned(),
                "method" => method.as_str().to_owned()
            );
            by_method.push((method.clone(), duration, Vec::new()));
            by_method.len() - 1
        }
    };
    let (_, duration, by_status) = &mut by_method[index];
    let requests = match by_status.iter().find(|(s, _)| *s == status) {
        Some((_, c)) => c.clone(),
        None => {
            let c = metrics::counter!(
                "tally_http_requests_total",
                "route" => route.to_owned(),
                "method" => method.as_str().to_owned(),
                "status" => status.to_string()
            );
            by_status.push((status, c.clone()));
            c
        }
    };
    (requests, duration.clone())
}

/// Methods labelled by name in the request metrics.
const KNOWN_METHODS: &[Method] =
    &[Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    /// A log sink the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn panics() -> &'static str {
        panic!("on purpose")
    }

    async fn call(app: Router, path: &str) -> StatusCode {
        let req = Request::builder().uri(path).header("x-request-id", "req-42").body(Body::empty()).unwrap();
        app.oneshot(req).await.unwrap().status()
    }

    /// At the default level: a 5xx logs exactly one event, with the method, the route, the
    /// request id, the status and the cause; a 2xx logs nothing and opens no span.
    #[tokio::test]
    async fn a_5xx_logs_one_event_with_method_route_request_id_and_cause() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter("info")
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = Router::new()
            .route("/boom/{id}", get(|| async { ApiError::internal().because("the disk caught fire") }))
            .route("/fine", get(|| async { "ok" }))
            .route("/panics", get(panics))
            .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
                ApiError::internal().because("the handler panicked").into_response()
            }))
            .layer(middleware::from_fn(observe));

        assert_eq!(call(app.clone(), "/fine").await, StatusCode::OK);
        assert!(sink.0.lock().unwrap().is_empty(), "a 2xx logs nothing at info");

        assert_eq!(call(app.clone(), "/boom/7").await, StatusCode::INTERNAL_SERVER_ERROR);
        let text = String::from_utf8(std::mem::take(&mut *sink.0.lock().unwrap())).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1, "{text}");
        let fields = &lines[0]["fields"];
        assert_eq!(lines[0]["level"], "ERROR", "{text}");
        assert_eq!(fields["method"], "GET", "{text}");
        assert_eq!(fields["route"], "/boom/{id}", "{text}");
        assert_eq!(fields["request_id"], "req-42", "{text}");
        assert_eq!(fields["status"], 500, "{text}");
        assert_eq!(fields["cause"], "the disk caught fire", "{text}");
        assert!(lines[0].get("span").is_none(), "no request span at info: {text}");

        assert_eq!(call(app, "/panics").await, StatusCode::INTERNAL_SERVER_ERROR);
        let text = String::from_utf8(std::mem::take(&mut *sink.0.lock().unwrap())).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("request failed")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains("the handler panicked"), "{text}");
    }
}
