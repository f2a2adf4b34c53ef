//! The page frame and the small pieces every admin page shares. Everything is rendered with
//! maud, which escapes every interpolated value: a tenant id or metadata holding `<script>`
//! stays text. Nothing here is raw HTML except the constant stylesheet link.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use tally_domain::LimitEnforcement;

/// The navigation entries: path and label.
const NAV: [(&str, &str); 5] = [
    ("/admin/tenants", "Tenants"),
    ("/admin/plans", "Plans"),
    ("/admin/records", "Usage records"),
    ("/admin/events", "Usage events"),
    ("/admin/webhooks", "Webhooks"),
];

/// The security headers of every admin page: no script at all, no framing, no caching.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Who is signed in, for the header: the principal and the CSRF token of the logout form.
pub struct Signed<'a> {
    /// `password` or `key:<id>`.
    pub principal: &'a str,
    /// The session's CSRF token.
    pub csrf_token: &'a str,
}

/// A whole page: the header with navigation (when signed in) and `body`.
pub fn page(title: &str, current: &str, signed: Option<&Signed<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tally admin" }
                link rel="stylesheet" href="/admin/admin.css";
            }
            body {
                header {
                    a.brand href="/admin" { "Tally admin" }
                    @if let Some(s) = signed {
                        nav aria-label="Main" {
                            @for (path, label) in NAV {
                                @if path == current {
                                    a href=(path) aria-current="page" { (label) }
                                } @else {
                                    a href=(path) { (label) }
                                }
                            }
                        }
                        form method="post" action="/admin/logout" {
                            span.who { "signed in with " (principal_label(s.principal)) }
                            input type="hidden" name="csrf_token" value=(s.csrf_token);
                            button type="submit" id="logout" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// How the header names who signed in (see `login::principal_for`).
fn principal_label(principal: &str) -> String {
    match (principal, principal.strip_prefix("key:")) {
        (_, Some(id)) => format!("admin key {id}"),
        ("admin-key", None) => "the configured admin key".to_owned(),
        _ => "the admin password".to_owned(),
    }
}

/// Turns a page into a response with the admin security headers.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    with_security_headers(h);
    resp
}

/// Adds the admin pages' security headers.
pub fn with_security_headers(h: &mut axum::http::HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// An error page: what went wrong, in words, with the status it carries.
pub fn error_page(status: StatusCode, detail: &str, signed: Option<&Signed<'_>>) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (status.as_u16()) " " (title) }
        p.error role="alert" { (detail) }
        p { a href="/admin" { "Back to the admin home" } }
    };
    respond(status, page(title, "", signed, body))
}

/// An integer with thousands separators: `1234567` → `1,234,567`.
pub fn int(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A timestamp as operators read it: `2026-11-29 13:34:55 UTC`.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A timestamp's day: `2026-11-29`.
pub fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// The CSS class word of an enforcement (`hard`, `soft`, `none`).
pub fn enforcement_word(e: LimitEnforcement) -> &'static str {
    e.as_str()
}

/// A limit for display: the number, or `no limit`.
pub fn limit_text(limit: Option<i64>) -> String {
    limit.map_or_else(|| "no limit".to_owned(), int)
}

/// A table that scrolls sideways on a narrow screen.
pub fn table(head: Markup, rows: Markup) -> Markup {
    html! {
        div.table-wrap {
            table {
                thead { tr { (head) } }
                tbody { (rows) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_get_thousands_separators() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(-1234567), "-1,234,567");
    }

    #[test]
    fn the_header_names_how_the_operator_signed_in() {
        assert_eq!(principal_label("password"), "the admin password");
        assert_eq!(principal_label("admin-key"), "the configured admin key");
        assert_eq!(principal_label("key:0193"), "admin key 0193");
    }

    #[test]
    fn interpolated_text_is_escaped() {
        let out = page("<t>", "", None, html! { p { "<script>alert(1)</script>" } }).into_string();
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(out.contains("&lt;t&gt;"));
    }
}
