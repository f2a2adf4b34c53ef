//! `ApiError`: every failure at the HTTP edge as `application/problem+json` (RFC 9457) with
//! a stable `code` member. 5xx bodies say only what the client may act on; the cause travels
//! with the response as a [`FailureCause`] extension, and the router's `observe` middleware
//! logs it in the request's one 5xx event.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tally_domain::time::format_rfc3339;
use tally_domain::{DomainError, UsageError};
use tally_service::ServiceError;

/// The media type of every error body, exactly (no `charset`: some clients compare it).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem to answer with.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`quota_exceeded`, ...).
    pub code: &'static str,
    /// Short human-readable summary.
    pub title: &'static str,
    /// What happened, in this case.
    pub detail: String,
    /// Extra members (`metric_code`, `limit`, ...).
    pub extra: Map<String, Value>,
    /// Seconds for `Retry-After`, when a retry can succeed later.
    pub retry_after: Option<i64>,
    /// `RateLimit-Limit` of a 429 `rate_limited` (the limit's count per unit). With it the
    /// answer also carries `RateLimit-Remaining: 0` and `RateLimit-Reset` equal to
    /// `Retry-After`. (A `NonZeroU32`: it fits beside `status`, so `ApiError` does not grow.)
    pub rate_limit: Option<std::num::NonZeroU32>,
    /// Why a 5xx happened, for the log only (never in the body).
    pub cause: Option<Box<str>>,
}

/// The cause of a 5xx answer, carried on the response to the middleware that logs it.
#[derive(Debug, Clone)]
pub struct FailureCause(pub String);

impl ApiError {
    /// A problem with no extra members.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            title,
            detail: detail.into(),
            extra: Map::new(),
            retry_after: None,
            rate_limit: None,
            cause: None,
        }
    }
    /// 400 `invalid_request`.
    pub fn invalid(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "Invalid request", detail)
    }
    /// 401 `unauthorized`.
    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail)
    }
    /// 403 `forbidden`.
    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }
    /// 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "Not found", detail)
    }
    /// 503 `unavailable`.
    pub fn unavailable(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail)
    }
    /// 429 `rate_limited`: the key's rate limit is spent; `Retry-After` and the `RateLimit-*`
    /// headers say when a token is back. Nothing was recorded.
    pub fn rate_limited(limited: &crate::rate_limit::Limited) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Rate limited",
            format!(
                "this key's rate limit of {} (burst {}) is spent; retry in {} s",
                limited.limit,
                limited.limit.burst(),
                limited.retry_after
            ),
        );
        let secs = i64::try_from(limited.retry_after).unwrap_or(i64::MAX);
        err.retry_after = Some(secs.max(1));
        err.rate_limit = std::num::NonZeroU32::new(limited.limit.count());
        err
    }
    /// 500 `internal`: the body says nothing more.
    pub fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", "internal error")
    }
    /// The same problem, with the cause the log should show.
    pub fn because(mut self, cause: impl Into<String>) -> ApiError {
        self.cause = Some(cause.into().into_boxed_str());
        self
    }
    fn with(mut self, key: &str, value: Value) -> ApiError {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// The problem object, as it appears in a body or in a batch item's `error`.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("type".into(), json!("about:blank"));
        obj.insert("title".into(), json!(self.title));
        obj.insert("status".into(), json!(self.status.as_u16()));
        obj.insert("detail".into(), json!(self.detail));
        obj.insert("code".into(), json!(self.code));
        for (k, v) in &self.extra {
            obj.insert(k.clone(), v.clone());
        }
        Value::Object(obj)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Some(count) = self.rate_limit {
            let reset = self.retry_after.unwrap_or(1).max(1);
            let headers = resp.headers_mut();
            headers.insert("ratelimit-limit", HeaderValue::from(count.get()));
            headers.insert("ratelimit-remaining", HeaderValue::from_static("0"));
            headers.insert("ratelimit-reset", HeaderValue::from(reset));
        }
        if let Some(cause) = self.cause {
            resp.extensions_mut().insert(FailureCause(cause.into_string()));
        }
        resp
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> ApiError {
        match &e {
            DomainError::Invalid { field, .. } => {
                ApiError::invalid(e.to_string()).with("field", json!(field))
            }
            _ => ApiError::invalid(e.to_string()),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        ApiError::from_service_at(e, tally_domain::time::truncate(chrono::Utc::now()))
    }
}

impl ApiError {
    /// Maps a use case's failure, counting `Retry-After` from `now` (the service's clock).
    pub fn from_service_at(e: ServiceError, now: tally_domain::Timestamp) -> ApiError {
        match e {
            ServiceError::Invalid(d) => d.into(),
            ServiceError::Usage(u) => ApiError::from_usage_at(u, now),
            ServiceError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            ServiceError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", why),
            ServiceError::Unavailable(why) => {
                ApiError::unavailable("the store is unavailable; retry later").because(why)
            }
            ServiceError::Internal(why) => ApiError::internal().because(why),
        }
    }
}

impl ApiError {
    /// Maps a refusal, counting `Retry-After` from `now` (the service's clock).
    pub fn from_usage_at(e: UsageError, now: tally_domain::Timestamp) -> ApiError {
        let detail = e.to_string();
        match e {
            UsageError::QuotaExceeded { metric, current, limit, requested, period } => {
                let mut err =
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", "Quota exceeded", detail)
                        .with("metric_code", json!(metric.as_str()))
                        .with("current_usage", json!(current))
                        .with("limit", json!(limit))
                        .with("requested", json!(requested))
                        .with("period_end", json!(period.bounds().map(|(_, end)| format_rfc3339(end))));
                // A gauge has no period end: a retry succeeds only once its level went down.
                if period.bounds().is_some() {
                    err.retry_after = Some(period.seconds_until_end(now).max(1));
                }
                err
            }
            UsageError::ReservationNotFound { .. } => ApiError::not_found(detail),
            UsageError::ReservationClosed { status, .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
                    .with("reservation_status", json!(status.as_str()))
            }
            UsageError::GaugeBelowZero { metric, current, decrease } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "gauge_below_zero",
                "Gauge below zero",
                detail,
            )
            .with("metric_code", json!(metric.as_str()))
            .with("current_usage", json!(current))
            .with("requested", json!(decrease.saturating_neg())),
            UsageError::QuotaNotFound { metric } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "quota_not_found", "Quota not found", detail)
                    .with("metric_code", json!(metric.as_str()))
            }
            UsageError::NoSubscription { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_subscription", "No subscription", detail)
            }
            UsageError::EventOutOfWindow { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "event_out_of_window",
                "Event out of window",
                detail,
            ),
            UsageError::IdempotencyConflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", "Idempotency conflict", detail)
            }
            UsageError::TenantNotFound { .. } | UsageError::UsageRecordNotFound => {
                ApiError::not_found(detail)
            }
            UsageError::PeriodClosed { metric, period, closed_at } => {
                ApiError::new(StatusCode::CONFLICT, "period_closed", "Period closed", detail)
                    .with("metric_code", json!(metric.as_str()))
                    .with("period_start", json!(format_rfc3339(period.start())))
                    .with("period_end", json!(format_rfc3339(period.end())))
                    .with("closed_at", json!(format_rfc3339(closed_at)))
            }
            UsageError::CorrectionBelowZero { metric, current, amount } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "correction_below_zero",
                "Correction below zero",
                detail,
            )
            .with("metric_code", json!(metric.as_str()))
            .with("current_usage", json!(current))
            .with("requested", json!(amount)),
            UsageError::CorrectionNotApplicable { metric } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "correction_not_applicable",
                "Correction not applicable",
                detail,
            )
            .with("metric_code", json!(metric.as_str())),
            UsageError::Invalid(d) => d.into(),
        }
    }
}
