//! Threshold webhook routes (admin): register, list, remove, the deliveries log, redeliver.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tally_domain::limits::PAGE_LEN_DEFAULT;
use tally_domain::{DomainError, WebhookId};
use tally_store::Store;
use uuid::Uuid;

use crate::auth::Admin;
use crate::dto::{
    DeliveriesResponse, DeliveryResponse, NoQuery, PageQuery, WebhookBody, WebhookResponse, WebhooksResponse,
    parse_limit,
};
use crate::error::ApiError;
use crate::extract::Params;
use crate::json::{StrictJson, StrictQuery};
use crate::state::AppState;

fn webhook_param(p: &Params) -> Result<WebhookId, ApiError> {
    Ok(WebhookId::parse(p.get("webhook_id"))?)
}

fn uuid(field: &'static str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| DomainError::invalid(field, "must be a UUID").into())
}

/// `PUT /v1/webhooks/{webhook_id}`: 201 with the secret when registered, 200 without it
/// when replaced or unchanged.
pub async fn put<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
    StrictJson(body): StrictJson<WebhookBody>,
) -> Result<Response, ApiError> {
    let id = webhook_param(&params)?;
    let input = body.to_input()?;
    let put = state.tally.put_webhook(&id, input, key_id).await?;
    let status = if put.outcome.is_created() { StatusCode::CREATED } else { StatusCode::OK };
    let view = WebhookResponse::new(&put.outcome.into_inner(), put.shown_secret.as_ref());
    Ok((status, Json(view)).into_response())
}

/// `GET /v1/webhooks`
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    StrictQuery(_): StrictQuery<NoQuery>,
) -> Result<Json<WebhooksResponse>, ApiError> {
    let all = state.tally.list_webhooks().await?;
    Ok(Json(WebhooksResponse { webhooks: all.iter().map(|w| WebhookResponse::new(w, None)).collect() }))
}

/// `GET /v1/webhooks/{webhook_id}`
pub async fn get_one<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    params: Params,
    StrictQuery(_): StrictQuery<NoQuery>,
) -> Result<Json<WebhookResponse>, ApiError> {
    let w = state.tally.get_webhook(&webhook_param(&params)?).await?;
    Ok(Json(WebhookResponse::new(&w, None)))
}

/// `DELETE /v1/webhooks/{webhook_id}`: 204; its deliveries go with it.
pub async fn delete<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
) -> Result<StatusCode, ApiError> {
    state.tally.delete_webhook(&webhook_param(&params)?, key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/webhooks/{webhook_id}/deliveries?limit=&cursor=`: newest first.
pub async fn deliveries<S: Store>(
    State(state): State<AppState<S>>,
    _admin: Admin,
    params: Params,
    StrictQuery(q): StrictQuery<PageQuery>,
) -> Result<Json<DeliveriesResponse>, ApiError> {
    let id = webhook_param(&params)?;
    let limit = parse_limit(q.limit.as_deref(), PAGE_LEN_DEFAULT)?;
    let cursor = q.cursor.as_deref().map(|c| uuid("cursor", c)).transpose()?;
    let (page, next) = state.tally.list_deliveries(&id, cursor, limit).await?;
    Ok(Json(DeliveriesResponse {
        deliveries: page.iter().map(DeliveryResponse::from).collect(),
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// `POST /v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver`: 202, pending and due
/// now with a new retry window, whatever its status was.
pub async fn redeliver<S: Store>(
    State(state): State<AppState<S>>,
    Admin(key_id): Admin,
    params: Params,
) -> Result<Response, ApiError> {
    let id = webhook_param(&params)?;
    let delivery = uuid("delivery_id", params.get("delivery_id"))?;
    let d = state.tally.redeliver(&id, delivery, key_id).await?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryResponse::from(&d))).into_response())
}
