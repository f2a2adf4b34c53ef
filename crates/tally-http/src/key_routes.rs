//! API key routes (admin): create (the secret shown once), list (without secrets), revoke.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tally_domain::DomainError;
use tally_store::Store;
use uuid::Uuid;

use crate::auth::Admin;
use crate::dto::{KeyBody, KeyEntryResponse, KeyResponse, KeysResponse, NoQuery};
use crate::error::ApiError;
use crate::extract::Params;
use crate::json::{StrictJson, StrictQuery};
use crate::state::AppState;

fn key_param(p: &Params) -> Result<Uuid, ApiError> {
    Uuid::parse_str(p.get("key_id")).map_err(|_| DomainError::invalid("key_id", "must be a UUID").into())
}

/// `POST /v1/keys`: 201 with the secret, shown this once (only its hash is stored); audited
/// as `key.create` without it.
pub async fn create<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    StrictJson(body): StrictJson<KeyBody>,
) -> Result<Response, ApiError> {
    let (scope, rate_limit) = body.to_input()?;
    let (key, secret) = state.tally.create_key_with(scope, rate_limit, key_id).await?;
    Ok((StatusCode::CREATED, Json(KeyResponse::new(&key, secret))).into_response())
}

/// `GET /v1/keys`: every stored key, revoked ones included, oldest first, without secrets.
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    StrictQuery(_): StrictQuery<NoQuery>,
) -> Result<Json<KeysResponse>, ApiError> {
    let keys = state.tally.list_keys().await?;
    Ok(Json(KeysResponse { keys: keys.iter().map(KeyEntryResponse::from).collect() }))
}

/// `DELETE /v1/keys/{key_id}`: 204; every instance refuses the key within a second. An
/// unknown or already revoked key is 404. Audited as `key.revoke`.
pub async fn revoke<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
) -> Result<StatusCode, ApiError> {
    state.tally.revoke_key(key_param(&params)?, key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
