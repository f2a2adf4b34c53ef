//! Admin routes: plans, tenants, subscriptions, overrides, the audit log.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tally_domain::limits::PAGE_LEN_DEFAULT;
use tally_domain::{MetricCode, Name, PlanCode, TenantId};
use tally_store::Store;

use crate::auth::Admin;
use crate::dto::{
    AuditEntryResponse, AuditQuery, AuditResponse, LimitResponse, MetricBody, MetricResponse,
    MetricsResponse, NoQuery, OverrideBody, PageQuery, PlanBody, PlanResponse, PlansResponse,
    SubscriptionBody, SubscriptionResponse, TenantBody, TenantResponse, TenantsResponse, parse_instant,
    parse_limit,
};
use crate::error::ApiError;
use crate::extract::Params;
use crate::json::{StrictJson, StrictQuery};
use crate::state::AppState;

fn created_or_ok<T: serde::Serialize>(created: bool, body: T) -> Response {
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(body)).into_response()
}

fn plan_param(p: &Params) -> Result<PlanCode, ApiError> {
    Ok(PlanCode::parse(p.get("plan_code"))?)
}

fn tenant_param(p: &Params) -> Result<TenantId, ApiError> {
    Ok(TenantId::parse(p.get("tenant_id"))?)
}

/// `PUT /v1/plans/{plan_code}`
pub async fn put_plan<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
    StrictJson(body): StrictJson<PlanBody>,
) -> Result<Response, ApiError> {
    let code = plan_param(&params)?;
    let spec = body.to_spec()?;
    let out = state.tally.put_plan(&code, &spec, key_id).await?;
    let created = out.is_created();
    Ok(created_or_ok(created, PlanResponse::from(&out.into_inner())))
}

/// `GET /v1/plans`
pub async fn list_plans<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    StrictQuery(_): StrictQuery<NoQuery>,
) -> Result<Json<PlansResponse>, ApiError> {
    let plans = state.tally.list_plans().await?;
    Ok(Json(PlansResponse { plans: plans.iter().map(PlanResponse::from).collect() }))
}

/// `GET /v1/plans/{plan_code}`
pub async fn get_plan<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    params: Params,
) -> Result<Json<PlanResponse>, ApiError> {
    let plan = state.tally.get_plan(&plan_param(&params)?).await?;
    Ok(Json(PlanResponse::from(&plan)))
}

/// `DELETE /v1/plans/{plan_code}`
pub async fn delete_plan<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
) -> Result<StatusCode, ApiError> {
    state.tally.delete_plan(&plan_param(&params)?, key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn metric_param(p: &Params) -> Result<MetricCode, ApiError> {
    Ok(MetricCode::parse(p.get("metric_code"))?)
}

/// `PUT /v1/metrics/{metric_code}`
pub async fn put_metric<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
    StrictJson(body): StrictJson<MetricBody>,
) -> Result<Response, ApiError> {
    let code = metric_param(&params)?;
    let spec = body.to_spec(&code)?;
    let out = state.tally.put_metric(&code, &spec, key_id).await?;
    let created = out.is_created();
    let entry = tally_service::catalog::CatalogEntry::declared(out.into_inner());
    Ok(created_or_ok(created, MetricResponse::from(&entry)))
}

/// `GET /v1/metrics`
pub async fn list_metrics<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    StrictQuery(_): StrictQuery<NoQuery>,
) -> Result<Json<MetricsResponse>, ApiError> {
    let metrics = state.tally.list_metrics().await?;
    Ok(Json(MetricsResponse { metrics: metrics.iter().map(MetricResponse::from).collect() }))
}

/// `GET /v1/metrics/{metric_code}`
pub async fn get_metric<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    params: Params,
    StrictQuery(_): StrictQuery<NoQuery>,
) -> Result<Json<MetricResponse>, ApiError> {
    let metric = state.tally.get_metric(&metric_param(&params)?).await?;
    Ok(Json(MetricResponse::from(&metric)))
}

/// `PUT /v1/tenants/{tenant_id}`
pub async fn put_tenant<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    params: Params,
    StrictJson(body): StrictJson<TenantBody>,
) -> Result<Response, ApiError> {
    let tenant = tenant_param(&params)?;
    let name = match &body.name {
        Some(n) => Name::parse(n)?,
        None => {
            match state.tally.store().find_tenant(&tenant).await.map_err(tally_service::ServiceError::from)? {
                Some(existing) => existing.name,
                None => Name::parse(tenant.as_str())?,
            }
        }
    };
    let out = state.tally.put_tenant(&tenant, &name).await?;
    let created = out.is_created();
    Ok(created_or_ok(created, TenantResponse::from(&out.into_inner())))
}

/// `GET /v1/tenants`
pub async fn list_tenants<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    StrictQuery(q): StrictQuery<PageQuery>,
) -> Result<Json<TenantsResponse>, ApiError> {
    let limit = parse_limit(q.limit.as_deref(), PAGE_LEN_DEFAULT)?;
    let page = state.tally.list_tenants(limit, q.cursor.as_deref()).await?;
    Ok(Json(TenantsResponse {
        tenants: page.tenants.iter().map(TenantResponse::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// `GET /v1/tenants/{tenant_id}`
pub async fn get_tenant<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    params: Params,
) -> Result<Json<TenantResponse>, ApiError> {
    let view = state.tally.get_tenant(&tenant_param(&params)?).await?;
    Ok(Json(TenantResponse::from(&view)))
}

/// `PUT /v1/tenants/{tenant_id}/subscription`
pub async fn put_subscription<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
    StrictJson(body): StrictJson<SubscriptionBody>,
) -> Result<Json<SubscriptionResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let plan = PlanCode::parse(&body.plan_code)?;
    let anchor = parse_instant("anchor", body.anchor.as_deref())?;
    let sub = state.tally.subscribe(&tenant, &plan, anchor, key_id).await?;
    Ok(Json(SubscriptionResponse::from(&sub)))
}

/// `DELETE /v1/tenants/{tenant_id}/subscription`
pub async fn delete_subscription<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
) -> Result<StatusCode, ApiError> {
    state.tally.unsubscribe(&tenant_param(&params)?, key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/tenants/{tenant_id}/overrides/{metric_code}`
pub async fn put_override<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
    StrictJson(body): StrictJson<OverrideBody>,
) -> Result<Json<LimitResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let metric = MetricCode::parse(params.get("metric_code"))?;
    let limit = body.to_limit(&metric)?;
    state.tally.put_override(&tenant, &limit, key_id).await?;
    Ok(Json(LimitResponse::from(&limit)))
}

/// `DELETE /v1/tenants/{tenant_id}/overrides/{metric_code}`
pub async fn delete_override<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_param(&params)?;
    let metric = MetricCode::parse(params.get("metric_code"))?;
    state.tally.delete_override(&tenant, &metric, key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/audit`
pub async fn audit<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    StrictQuery(q): StrictQuery<AuditQuery>,
) -> Result<Json<AuditResponse>, ApiError> {
    let tenant = q.tenant_id.as_deref().map(TenantId::parse).transpose()?;
    let limit = parse_limit(q.limit.as_deref(), PAGE_LEN_DEFAULT)?;
    let page = state.tally.audit_log(tenant.as_ref(), limit, q.cursor.as_deref()).await?;
    Ok(Json(AuditResponse {
        entries: page.entries.iter().map(AuditEntryResponse::from).collect(),
        next_cursor: page.next_cursor,
    }))
}
