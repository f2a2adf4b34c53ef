//! Reservation routes: hold quota, commit what was used, release, list the open ones. A
//! tenant key may use them for its own tenant.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tally_domain::{DomainError, TenantId};
use tally_store::Store;
use uuid::Uuid;

use crate::auth::TenantAccess;
use crate::dto::{
    CommitBody, NoQuery, OpenReservationResponse, ReservationResponse, ReservationsResponse, ReserveBody,
    UsageResponse,
};
use crate::error::ApiError;
use crate::extract::Params;
use crate::json::{StrictJson, StrictQuery, body_bytes, from_value, parse_strict, require_json_content_type};
use crate::state::AppState;

fn tenant_param(p: &Params) -> Result<TenantId, ApiError> {
    Ok(TenantId::parse(p.get("tenant_id"))?)
}

fn reservation_param(p: &Params) -> Result<Uuid, ApiError> {
    Uuid::parse_str(p.get("reservation_id"))
        .map_err(|_| DomainError::invalid("reservation_id", "must be a UUID").into())
}

/// `POST /v1/tenants/{tenant_id}/reservations`: 201 when quota was held, 200 for a replay.
pub async fn reserve<S: Store>(
    State(state): State<AppState<S>>,
    TenantAccess(_, params): TenantAccess,
    StrictJson(body): StrictJson<ReserveBody>,
) -> Result<Response, ApiError> {
    let tenant = tenant_param(&params)?;
    let req = body.to_request(&tenant)?;
    let out = state.tally.reserve(&req).await.map_err(|e| ApiError::from_service_at(e, state.tally.now()))?;
    let status = if out.replayed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(ReservationResponse::from(&out))).into_response())
}

/// `GET /v1/tenants/{tenant_id}/reservations`: the open ones, oldest first.
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    TenantAccess(_, params): TenantAccess,
    StrictQuery(_): StrictQuery<NoQuery>,
) -> Result<Json<ReservationsResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let open = state.tally.open_reservations(&tenant).await?;
    Ok(Json(ReservationsResponse { reservations: open.iter().map(OpenReservationResponse::from).collect() }))
}

/// `POST /v1/tenants/{tenant_id}/reservations/{reservation_id}/commit`: the body is
/// optional (no body commits all of it).
pub async fn commit<S: Store>(
    State(state): State<AppState<S>>,
    TenantAccess(_, params): TenantAccess,
    req: Request,
) -> Result<Json<UsageResponse>, ApiError> {
    let tenant = tenant_param(&params)?;
    let id = reservation_param(&params)?;
    let headers = req.headers().clone();
    let bytes = body_bytes(req, &state).await?;
    let body = if bytes.is_empty() {
        CommitBody::default()
    } else {
        require_json_content_type(&headers)?;
        from_value::<CommitBody>(parse_strict(&bytes)?)?
    };
    let commit = body.to_request(&tenant, id)?;
    let outcome = state
        .tally
        .commit_reservation(&commit)
        .await
        .map_err(|e| ApiError::from_service_at(e, state.tally.now()))?;
    Ok(Json(UsageResponse::from(&outcome)))
}

/// `DELETE /v1/tenants/{tenant_id}/reservations/{reservation_id}`: 204, released.
pub async fn release<S: Store>(
    State(state): State<AppState<S>>,
    TenantAccess(_, params): TenantAccess,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_param(&params)?;
    let id = reservation_param(&params)?;
    state.tally.release_reservation(&tenant, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
