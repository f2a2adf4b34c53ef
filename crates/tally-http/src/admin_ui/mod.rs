//! The read-only admin UI under `/admin`: server-rendered HTML, no JavaScript, its own
//! sign-in (the admin password set by `tally admin set-password`, or an admin key) with
//! server-side sessions.
//!
//! - The session cookie `tally_admin_session` is HttpOnly, SameSite=Strict, `Path=/admin`,
//!   expires with the session (`ADMIN_SESSION_SECONDS`), and is Secure when the server runs
//!   with `--cookie-secure`. The store keeps only the token's SHA-256 hash; logging out deletes
//!   the session, so the cookie is worthless afterwards, on every server instance.
//! - Every form that posts carries a CSRF token: the sign-in form a random value also set in
//!   the cookie `tally_login_csrf` (both must match), the logout form the session's own token.
//! - After a failed sign-in the same client waits longer before each next answer
//!   (`LoginThrottle`).
//! - Pages answer GET only; every other method is 405. Nothing can be changed from here.

mod login;
mod pages;
mod params;
pub mod svg;
pub mod view;
mod webhooks;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tally_service::ServiceError;
use tally_store::{AdminSession, Store};

use crate::state::AppState;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "tally_admin_session";
/// The sign-in form's CSRF cookie name.
pub const LOGIN_CSRF_COOKIE: &str = "tally_login_csrf";
/// Longest Cookie header looked at, in bytes.
pub const COOKIE_HEADER_BYTES_MAX: usize = 4096;

/// The admin UI's routes (merged into the application's router).
pub fn routes<S: Store>() -> Router<AppState<S>> {
    Router::new()
        .route("/admin", get(pages::home))
        .route("/admin/", get(pages::home))
        .route("/admin/admin.css", get(pages::stylesheet))
        .route("/admin/login", get(login::form::<S>).post(login::submit::<S>))
        .route("/admin/logout", axum::routing::post(login::logout::<S>))
        .route("/admin/records", get(pages::records::<S>))
        .route("/admin/events", get(pages::events::<S>))
        .route("/admin/tenants/{tenant_id}/events/{event_id}", get(pages::event::<S>))
        .route("/admin/tenants", get(pages::tenants::<S>))
        .route("/admin/tenants/{tenant_id}", get(pages::tenant::<S>))
        .route("/admin/plans", get(pages::plans::<S>))
        .route("/admin/plans/{plan_code}", get(pages::plan::<S>))
        .route("/admin/webhooks", get(webhooks::webhooks::<S>))
        .route("/admin/webhooks/{webhook_id}", get(webhooks::webhook::<S>))
}

/// The value of cookie `name` in the request, if present.
pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter(|v| v.len() <= COOKIE_HEADER_BYTES_MAX)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A signed-in operator: the request carried the cookie of a live session.
pub struct Operator {
    /// The session.
    pub session: AdminSession,
    /// The cookie value (to end the session).
    pub token: String,
}

impl Operator {
    /// For the page header.
    pub fn signed(&self) -> view::Signed<'_> {
        view::Signed { principal: &self.session.principal, csrf_token: &self.session.csrf_token }
    }
}

/// Why a page could not be shown to the caller.
pub enum Refusal {
    /// Not signed in: go to the sign-in page.
    SignIn(String),
    /// The store failed.
    Unavailable(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignIn(next) => {
                let target = format!("/admin/login?next={}", urlencode(&next));
                let mut resp = Redirect::to(&target).into_response();
                view::with_security_headers(resp.headers_mut());
                resp
            }
            Refusal::Unavailable(detail) => view::error_page(StatusCode::SERVICE_UNAVAILABLE, &detail, None),
        }
    }
}

impl<S: Store> FromRequestParts<AppState<S>> for Operator {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState<S>) -> Result<Self, Self::Rejection> {
        let next = parts.uri.path_and_query().map_or("/admin", |p| p.as_str()).to_owned();
        let Some(token) = cookie(parts, SESSION_COOKIE) else { return Err(Refusal::SignIn(next)) };
        match state.tally.admin_session(token).await {
            Ok(Some(session)) => Ok(Operator { session, token: token.to_owned() }),
            Ok(None) => Err(Refusal::SignIn(next)),
            Err(e) => Err(Refusal::Unavailable(format!("the store cannot be reached: {e}"))),
        }
    }
}

/// A service error as an admin page.
pub fn service_error_page(e: &ServiceError, op: &Operator) -> Response {
    let status = match e {
        ServiceError::Invalid(_) | ServiceError::Usage(_) => StatusCode::BAD_REQUEST,
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Conflict(_) => StatusCode::CONFLICT,
        ServiceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        let mut page = view::error_page(status, "something went wrong on our side", Some(&op.signed()));
        page.extensions_mut().insert(crate::error::FailureCause(e.to_string()));
        return page;
    }
    view::error_page(status, &e.to_string(), Some(&op.signed()))
}

/// Percent-encodes everything but unreserved characters (for query values).
pub fn urlencode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(urlencode("/admin/records?q=a b&x=<"), "/admin/records%3Fq%3Da%20b%26x%3D%3C");
    }
}
