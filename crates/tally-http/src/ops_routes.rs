//! Operations routes: health, readiness, metrics, the OpenAPI document and the docs page.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;
use tally_service::keys::{constant_time_eq, hash_key};
use tally_store::Store;

use crate::error::ApiError;
use crate::state::AppState;

/// How long `/readyz` waits for the store.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`
pub async fn readyz<S: Store>(State(state): State<AppState<S>>) -> Result<Json<serde_json::Value>, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.tally.store().ping()).await {
        Ok(Ok(())) => Ok(Json(json!({"status": "ready"}))),
        Ok(Err(e)) => Err(ApiError::unavailable(format!("the store does not answer: {e}"))),
        Err(_) => Err(ApiError::unavailable("the store did not answer in time")),
    }
}

/// `GET /metrics`
pub async fn metrics<S: Store>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.metrics_token_hash {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| hash_key(token.trim()));
        match presented {
            Some(h) if constant_time_eq(h.as_bytes(), expected.as_bytes()) => {}
            _ => return Err(ApiError::unauthorized("/metrics needs Authorization: Bearer <metrics token>")),
        }
    }
    let body = state.metrics.render();
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(resp)
}

/// `GET /openapi.json`
pub async fn openapi_json() -> Response {
    let doc = crate::openapi::document();
    match doc.to_json() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(_) => ApiError::internal().into_response(),
    }
}

/// `GET /docs`
pub async fn docs() -> Html<String> {
    Html(crate::docs_page::render(&crate::openapi::document()))
}
