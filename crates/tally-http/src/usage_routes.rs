//! Usage routes: record, batch, check, current usage, history, events, reset.

use std::time::Instant;

use axum::Json;
use axum::extract::{Request, State};
use serde_json::{Value, json};
use tally_domain::limits::{EVENT_BATCH_LEN_MAX, PAGE_LEN_DEFAULT, PAGE_LEN_MAX};
use tally_domain::{DomainError, EventKind, MetricCode, TenantId, UsageError};
use tally_service::ServiceError;
use tally_service::usage::EventFilter;
use tally_store::Store;

use crate::auth::{Admin, TenantAccess};
use crate::dto::{
    CheckBody, CheckResponse, EventResponse, EventsQuery, EventsResponse, HistoryQuery, HistoryResponse,
    RecordResponse, TenantUsageResponse, UsageBody, UsageResponse, parse_instant, parse_limit,
};
use crate::error::ApiError;
use crate::extract::Params;
use crate::json::{StrictJson, StrictQuery, body_bytes, from_value, parse_strict, require_json_content_type};
use crate::state::AppState;

fn tenant_param(p: &Params) -> Result<TenantId, ApiError> {
    Ok(TenantId::parse(p.get("tenant_id"))?)
}

fn metric_param(p: &Params) -> Result<MetricCode, ApiError> {
    Ok(MetricCode::parse(p.get("metric_code"))?)
}

fn count_usage(result: &Result<tally_domain::UsageOutcome, ServiceError>) {
    let (enforcement, outcome) = match result {
        Ok(o) if o.replayed => (o.enforcement.as_str(), "replayed"),
        Ok(o) => (o.enforcement.as_str(), "accepted"),
        Err(ServiceError::Usage(UsageError::QuotaExceeded { .. })) => ("hard", "refused"),
        Err(_) => ("unknown", "error"),
    };
    metrics::counter!("tally_usage_events_total", "enforcement" => enforcement, "result" => outcome)
        .increment(1);
    if let Ok(o) = result
        && o.exceeded
        && !o.replayed
        && o.enforcement == tally_domain::LimitEnforcement::Soft
    {
        tracing::warn!(tenant = %o.tenant_id, metric = %o.metric_code, current = o.current_usage, "soft limit exceeded");
        metrics::counter!("tally_soft_limit_exceeded_total").increment(1);
    }
}

fn store_latency(op: &'static str, started: Instant) {
    metrics::histogram!("tally_store_duration_seconds", "op" => op).record(started.elapsed().as_secs_f64());
}

/// `POST /v1/tenants/{tenant_id}/usage`
pub async fn record<S: Store>(
    State(state): State<AppState<S>>,
    TenantAccess(_, params): TenantAccess,
    StrictJson(body): StrictJson<UsageBody>,
) -> Result<Json<UsageResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let req = body.to_request(&tenant)?;
    let started = Instant::now();
    let result = state.tally.record(req).await;
    store_latency("apply_usage", started);
    count_usage(&result);
    let outcome = result.map_err(|e| ApiError::from_service_at(e, state.tally.now()))?;
    Ok(Json(UsageResponse::from(&outcome)))
}

/// `POST /v1/tenants/{tenant_id}/usage/batch`
pub async fn record_batch<S: Store>(
    State(state): State<AppState<S>>,
    TenantAccess(_, params): TenantAccess,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_param(&params)?;
    require_json_content_type(req.headers())?;
    let bytes = body_bytes(req, &state).await?;
    // The envelope first: an object with exactly `events`, an array of at most the limit.
    let Value::Object(mut envelope) = parse_strict(&bytes)? else {
        return Err(ApiError::invalid("the body must be an object {\"events\": [...]}"));
    };
    if let Some(unknown) = envelope.keys().find(|k| *k != "events") {
        return Err(ApiError::invalid(format!("unknown member {unknown:?}; expected only \"events\"")));
    }
    let Some(Value::Array(items)) = envelope.remove("events") else {
        return Err(ApiError::invalid("events: must be an array"));
    };
    if items.len() > EVENT_BATCH_LEN_MAX {
        return Err(ApiError::invalid(format!(
            "events: at most {EVENT_BATCH_LEN_MAX} per batch, got {}",
            items.len()
        )));
    }
    metrics::histogram!("tally_batch_size").record(items.len() as f64);
    // Then each item on its own.
    let mut parse_errors: Vec<Option<ApiError>> = Vec::with_capacity(items.len());
    let mut requests: Vec<Result<tally_domain::UsageRequest, DomainError>> = Vec::with_capacity(items.len());
    for (idx, item) in items.into_iter().enumerate() {
        let parsed = from_value::<UsageBody>(item)
            .map_err(|e| ApiError::invalid(format!("events[{idx}]: {}", e.detail)))
            .and_then(|b| b.to_request(&tenant).map_err(ApiError::from));
        match parsed {
            Ok(r) => {
                requests.push(Ok(r));
                parse_errors.push(None);
            }
            Err(e) => {
                // A placeholder the service answers in place; the precise error is kept here.
                requests.push(Err(DomainError::invalid("events", e.detail.clone())));
                parse_errors.push(Some(e));
            }
        }
    }
    let started = Instant::now();
    let results = state.tally.record_batch(&tenant, requests).await?;
    let now = state.tally.now();
    store_latency("apply_usage", started);
    let out: Vec<Value> = results
        .into_iter()
        .zip(parse_errors)
        .map(|(result, parse_error)| {
            if let Some(e) = parse_error {
                return json!({"error": e.to_json()});
            }
            count_usage(&result);
            match result {
                Ok(o) => serde_json::to_value(UsageResponse::from(&o)).unwrap_or(Value::Null),
                Err(e) => json!({"error": ApiError::from_service_at(e, now).to_json()}),
            }
        })
        .collect();
    Ok(Json(json!({"results": out})))
}

/// `POST /v1/tenants/{tenant_id}/usage/check`
pub async fn check<S: Store>(
    State(state): State<AppState<S>>,
    TenantAccess(_, params): TenantAccess,
    StrictJson(body): StrictJson<CheckBody>,
) -> Result<Json<CheckResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let metric = MetricCode::parse(&body.metric_code)?;
    let change = body.change()?;
    let c = state.tally.check(&tenant, &metric, change).await?;
    Ok(Json(CheckResponse::from(&c)))
}

/// `GET /v1/tenants/{tenant_id}/usage`
pub async fn usage<S: Store>(
    State(state): State<AppState<S>>,
    TenantAccess(_, params): TenantAccess,
    StrictQuery(_): StrictQuery<crate::dto::NoQuery>,
) -> Result<Json<TenantUsageResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let u = state.tally.usage(&tenant).await?;
    Ok(Json(TenantUsageResponse::from(&u)))
}

/// `GET /v1/tenants/{tenant_id}/usage/{metric_code}/history`
pub async fn history<S: Store>(
    State(state): State<AppState<S>>,
    TenantAccess(_, params): TenantAccess,
    StrictQuery(q): StrictQuery<HistoryQuery>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let metric = metric_param(&params)?;
    let from = parse_instant("from", q.from.as_deref())?;
    let to = parse_instant("to", q.to.as_deref())?;
    let limit = parse_limit(q.limit.as_deref(), PAGE_LEN_MAX)?;
    let records = state.tally.history(&tenant, &metric, from, to, limit).await?;
    Ok(Json(HistoryResponse { records: records.iter().map(RecordResponse::from).collect() }))
}

/// `GET /v1/tenants/{tenant_id}/events`
pub async fn events<S: Store>(
    State(state): State<AppState<S>>,
    TenantAccess(_, params): TenantAccess,
    StrictQuery(q): StrictQuery<EventsQuery>,
) -> Result<Json<EventsResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let filter = EventFilter {
        metric_code: q.metric_code.as_deref().map(MetricCode::parse).transpose()?,
        from: parse_instant("from", q.from.as_deref())?,
        to: parse_instant("to", q.to.as_deref())?,
        limit: parse_limit(q.limit.as_deref(), PAGE_LEN_DEFAULT)?,
        cursor: q.cursor,
        kind: q.kind.as_deref().map(EventKind::parse).transpose()?,
    };
    let page = state.tally.events(&tenant, &filter).await?;
    Ok(Json(EventsResponse {
        events: page.events.iter().map(EventResponse::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// `POST /v1/tenants/{tenant_id}/usage/{metric_code}/reset`
pub async fn reset<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
) -> Result<Json<RecordResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let metric = metric_param(&params)?;
    let record = state.tally.reset(&tenant, &metric, key_id).await?;
    Ok(Json(RecordResponse::from(&record)))
}
