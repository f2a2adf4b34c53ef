//! Signing in and out of the admin UI.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Form, FromRequest, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use tally_domain::KeyScope;
use tally_domain::limits::{ADMIN_PASSWORD_BYTES_MAX, ADMIN_SESSION_SECONDS};
use tally_service::admin_ui::{SESSION_TOKEN_BYTES, random_hex};
use tally_service::keys::{constant_time_eq, hash_key};
use tally_store::Store;

use super::view::{self, page, respond};
use super::{LOGIN_CSRF_COOKIE, Operator, Refusal, SESSION_COOKIE, cookie};
use crate::state::AppState;

/// How long a sign-in form stays valid, in seconds.
pub const LOGIN_FORM_SECONDS: i64 = 3600;

/// The sign-in page's query.
#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// The sign-in form. `password` takes the admin password or an admin key; `key` an admin key.
#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    password: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    next: String,
}

/// The logout form.
#[derive(Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf_token: String,
}

/// Where to go after signing in: a path of the admin UI, nothing else (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/admin") && !n.contains("//") && !n.contains('\\') && n.len() <= 2048 => {
            n.to_owned()
        }
        _ => "/admin".to_owned(),
    }
}

fn cookie_header(name: &str, value: &str, path: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let raw = format!("{name}={value}; HttpOnly; SameSite=Strict; Path={path}; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&raw).unwrap_or_else(|_| HeaderValue::from_static("invalid=1; Max-Age=0"))
}

fn login_page(status: StatusCode, csrf: &str, next: &str, error: Option<&str>, secure: bool) -> Response {
    let body: Markup = html! {
        form.login method="post" action="/admin/login" {
            h1 { "Sign in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            label {
                "Admin password or admin key"
                input type="password" name="password" id="password" autocomplete="current-password"
                    required maxlength=(ADMIN_PASSWORD_BYTES_MAX) autofocus;
            }
            input type="hidden" name="csrf_token" value=(csrf);
            input type="hidden" name="next" value=(next);
            button type="submit" id="sign-in" { "Sign in" }
        }
    };
    let mut resp = respond(status, page("Sign in", "", None, body));
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(LOGIN_CSRF_COOKIE, csrf, "/admin/login", LOGIN_FORM_SECONDS, secure),
    );
    resp
}

/// `GET /admin/login`: the form, with a fresh CSRF token.
pub async fn form<S: Store>(
    State(state): State<AppState<S>>,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    let next = safe_next(query.as_ref().ok().and_then(|q| q.next.as_deref()));
    login_page(StatusCode::OK, &random_hex(SESSION_TOKEN_BYTES), &next, None, state.cookie_secure)
}

fn client_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
}

/// Who a secret signs in as: `admin-key` (the configured key), `key:<id>` (a stored admin
/// key) or `password`; `None` when it is none of them.
async fn principal_for<S: Store>(state: &AppState<S>, secret: &str) -> Result<Option<String>, Response> {
    if secret.is_empty() || secret.len() > ADMIN_PASSWORD_BYTES_MAX {
        return Ok(None);
    }
    if let Some(admin_hash) = &state.admin_key_hash
        && constant_time_eq(hash_key(secret).as_bytes(), admin_hash.as_bytes())
    {
        return Ok(Some("admin-key".to_owned()));
    }
    let unavailable = |e: tally_service::ServiceError| {
        view::error_page(StatusCode::SERVICE_UNAVAILABLE, &format!("the store cannot be reached: {e}"), None)
    };
    if let Some(key) = state.tally.authenticate(secret).await.map_err(unavailable)?
        && key.scope == KeyScope::Admin
    {
        return Ok(Some(format!("key:{}", key.id)));
    }
    if state.tally.check_admin_password(secret).await.map_err(unavailable)? {
        return Ok(Some("password".to_owned()));
    }
    Ok(None)
}

/// `POST /admin/login`.
pub async fn submit<S: Store>(State(state): State<AppState<S>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let login_cookie = cookie(&parts, LOGIN_CSRF_COOKIE).map(str::to_owned);
    let client = client_of(&parts);
    let form: Result<Form<LoginForm>, FormRejection> =
        Form::from_request(Request::from_parts(parts, body), &state).await;
    let secure = state.cookie_secure;
    let fresh = random_hex(SESSION_TOKEN_BYTES);
    let Ok(Form(form)) = form else {
        return login_page(
            StatusCode::BAD_REQUEST,
            &fresh,
            "/admin",
            Some("The form could not be read."),
            secure,
        );
    };
    let next = safe_next(Some(&form.next));
    let csrf_ok = login_cookie.is_some_and(|c| {
        !form.csrf_token.is_empty() && constant_time_eq(c.as_bytes(), form.csrf_token.as_bytes())
    });
    if !csrf_ok {
        return login_page(
            StatusCode::FORBIDDEN,
            &fresh,
            &next,
            Some("This sign-in form has expired or was not sent from this site. Please try again."),
            secure,
        );
    }
    let delay = state.login_throttle.delay(&client, Instant::now());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let secret = if form.key.is_empty() { form.password.trim() } else { form.key.trim() };
    let principal = match principal_for(&state, secret).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let Some(principal) = principal else {
        state.login_throttle.failed(&client, Instant::now());
        tracing::warn!(client = %client, "failed admin sign-in");
        return login_page(StatusCode::UNAUTHORIZED, &fresh, &next, Some("Wrong password or key."), secure);
    };
    state.login_throttle.succeeded(&client);
    let new = match state.tally.start_admin_session(&principal).await {
        Ok(n) => n,
        Err(e) => {
            return view::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("could not start a session: {e}"),
                None,
            );
        }
    };
    let mut resp = Redirect::to(&next).into_response();
    let h = resp.headers_mut();
    view::with_security_headers(h);
    h.append(
        header::SET_COOKIE,
        cookie_header(SESSION_COOKIE, &new.token, "/admin", ADMIN_SESSION_SECONDS, secure),
    );
    h.append(header::SET_COOKIE, cookie_header(LOGIN_CSRF_COOKIE, "", "/admin/login", 0, secure));
    resp
}

/// `POST /admin/logout`: ends the session server-side and clears the cookie.
pub async fn logout<S: Store>(
    State(state): State<AppState<S>>,
    operator: Result<Operator, Refusal>,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let op = match operator {
        Ok(op) => op,
        Err(refusal) => return refusal.into_response(),
    };
    let token_ok = form.is_ok_and(|Form(f)| {
        !f.csrf_token.is_empty()
            && constant_time_eq(f.csrf_token.as_bytes(), op.session.csrf_token.as_bytes())
    });
    if !token_ok {
        return view::error_page(
            StatusCode::FORBIDDEN,
            "the logout form did not carry this session's CSRF token",
            Some(&op.signed()),
        );
    }
    if let Err(e) = state.tally.end_admin_session(&op.token).await {
        return view::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("could not end the session: {e}"),
            None,
        );
    }
    let mut resp = Redirect::to("/admin/login").into_response();
    let h = resp.headers_mut();
    view::with_security_headers(h);
    h.append(header::SET_COOKIE, cookie_header(SESSION_COOKIE, "", "/admin", 0, state.cookie_secure));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admin_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/admin/records?q=a")), "/admin/records?q=a");
        assert_eq!(safe_next(Some("https://evil.example/")), "/admin");
        assert_eq!(safe_next(Some("//evil.example/admin")), "/admin");
        assert_eq!(safe_next(Some("/admin//evil.example")), "/admin");
        assert_eq!(safe_next(None), "/admin");
    }
}
