//! Corrections and closed periods (admin): a signed repair of a counter, closing a tenant's
//! periods up to a watermark, reopening one, and the periods list billing reads.

use axum::Json;
use axum::extract::State;
use tally_domain::limits::PAGE_LEN_DEFAULT;
use tally_domain::time::parse_rfc3339;
use tally_domain::{DomainError, MetricCode, Reason, TenantId};
use tally_service::closing::PeriodFilter;
use tally_store::Store;

use crate::auth::Admin;
use crate::dto::{
    CloseBody, CloseResponse, CorrectionBody, PeriodResponse, PeriodsQuery, PeriodsResponse, ReopenBody,
    UsageResponse, parse_limit,
};
use crate::error::ApiError;
use crate::extract::Params;
use crate::json::{StrictJson, StrictQuery};
use crate::state::AppState;

fn tenant_param(p: &Params) -> Result<TenantId, ApiError> {
    Ok(TenantId::parse(p.get("tenant_id"))?)
}

fn instant(field: &'static str, raw: &str) -> Result<tally_domain::Timestamp, DomainError> {
    parse_rfc3339(raw)
        .map_err(|_| DomainError::invalid(field, format!("must be RFC 3339 with an offset, got {raw:?}")))
}

/// `POST /v1/tenants/{tenant_id}/usage/corrections`
pub async fn correct<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
    StrictJson(body): StrictJson<CorrectionBody>,
) -> Result<Json<UsageResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let req = body.to_request(&tenant, key_id)?;
    let outcome = state.tally.correct(req).await?;
    Ok(Json(UsageResponse::from(&outcome)))
}

/// `POST /v1/tenants/{tenant_id}/periods/close`
pub async fn close<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
    StrictJson(body): StrictJson<CloseBody>,
) -> Result<Json<CloseResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let before = instant("before", &body.before)?;
    let outcome = state.tally.close_periods(&tenant, before, key_id).await?;
    Ok(Json(CloseResponse {
        closed_before: tally_domain::time::format_rfc3339(outcome.closed_before),
        closed: outcome.closed,
    }))
}

/// `POST /v1/tenants/{tenant_id}/periods/reopen`
pub async fn reopen<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
    StrictJson(body): StrictJson<ReopenBody>,
) -> Result<Json<PeriodResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let metric = MetricCode::parse(&body.metric_code)?;
    let start = instant("period_start", &body.period_start)?;
    let reason = Reason::parse(&body.reason)?;
    let view = state.tally.reopen_period(&tenant, &metric, start, &reason, key_id).await?;
    Ok(Json(PeriodResponse::from(&view)))
}

/// `GET /v1/tenants/{tenant_id}/periods`
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    params: Params,
    StrictQuery(q): StrictQuery<PeriodsQuery>,
) -> Result<Json<PeriodsResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let closed = match q.closed.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(
                DomainError::invalid("closed", format!("must be true or false, got {other:?}")).into()
            );
        }
    };
    let filter = PeriodFilter {
        closed,
        metric_code: q.metric_code.as_deref().map(MetricCode::parse).transpose()?,
        from: None,
        to: None,
        limit: parse_limit(q.limit.as_deref(), PAGE_LEN_DEFAULT)?,
        cursor: q.cursor,
    };
    let page = state.tally.periods(&tenant, &filter).await?;
    Ok(Json(PeriodsResponse {
        periods: page.periods.iter().map(PeriodResponse::from).collect(),
        next_cursor: page.next_cursor,
    }))
}
