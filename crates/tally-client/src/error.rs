//! What can go wrong: Tally's answers (`application/problem+json`), kept apart from failures
//! to get an answer at all.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An error answer of Tally (RFC 9457 problem details with a stable `code`), and the extra
/// members some codes carry.
///
/// The members beyond `type`, `title`, `status`, `detail` and `code` are present only for the
/// codes that carry them: `field` on `invalid_request`; `metric_code`, `current_usage`,
/// `limit`, `requested` and `period_end` on `quota_exceeded` (429); `metric_code`,
/// `current_usage` and `requested` on `gauge_below_zero`; `reservation_status` on a
/// reservation's `conflict`. Members this client does not know land in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Always `about:blank`.
    #[serde(rename = "type", default = "about_blank")]
    pub type_: String,
    /// A short summary (`Quota exceeded`).
    #[serde(default)]
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened, in this case.
    #[serde(default)]
    pub detail: String,
    /// The stable machine-readable code (`quota_exceeded`, `not_found`, ...).
    pub code: String,
    /// `invalid_request`: the member at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The metric (`quota_exceeded`, `gauge_below_zero`, `quota_not_found`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_code: Option<String>,
    /// Usage before the request (`quota_exceeded`, `gauge_below_zero`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_usage: Option<i64>,
    /// The limit (`quota_exceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// The amount asked for (`quota_exceeded`, `gauge_below_zero`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<i64>,
    /// End of the period whose limit refused (`quota_exceeded`); `None` for a gauge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<DateTime<Utc>>,
    /// The reservation's state (`conflict` on commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_status: Option<String>,
    /// Any other member.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn about_blank() -> String {
    "about:blank".to_owned()
}

/// A 429 `quota_exceeded`: a HARD limit would be passed, and **nothing was recorded**.
///
/// This is Tally's answer "no", not a failure to retry: the client never retries it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaExceeded {
    /// The problem's `detail` (`api_calls: 1000 used of 1000, 1 requested`).
    pub detail: String,
    /// The metric.
    pub metric_code: String,
    /// Usage before the request (open reservations not included).
    pub current_usage: i64,
    /// The limit.
    pub limit: i64,
    /// The amount asked for.
    pub requested: i64,
    /// When the period ends and the quota is free again; `None` for a gauge.
    pub period_end: Option<DateTime<Utc>>,
    /// The `Retry-After` header: how long until a retry can succeed (absent for a gauge).
    pub retry_after: Option<Duration>,
}

impl QuotaExceeded {
    /// The typed view of a 429 `quota_exceeded` problem; `None` when a member is missing.
    pub fn from_problem(problem: &Problem, retry_after: Option<Duration>) -> Option<QuotaExceeded> {
        if problem.code != "quota_exceeded" {
            return None;
        }
        Some(QuotaExceeded {
            detail: problem.detail.clone(),
            metric_code: problem.metric_code.clone()?,
            current_usage: problem.current_usage?,
            limit: problem.limit?,
            requested: problem.requested?,
            period_end: problem.period_end,
            retry_after,
        })
    }
}

/// Everything a call can fail with.
///
/// [`Error::QuotaExceeded`] and [`Error::Api`] are answers of Tally; [`Error::Transport`]
/// means no answer came (nothing listens, a timeout, a dropped connection). Use
/// [`Error::is_unavailable`] to tell "Tally cannot be reached" from "Tally said no".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 429 `quota_exceeded`: refused by a HARD limit; nothing was recorded.
    #[error("quota exceeded: {}", .0.detail)]
    QuotaExceeded(Box<QuotaExceeded>),
    /// Any other problem+json answer (4xx, or 5xx once retries are spent).
    #[error("{} {}: {}", .0.status, .0.code, .0.detail)]
    Api(Box<Problem>),
    /// No answer: the connection failed, timed out or broke (after the retries).
    #[error("could not reach Tally: {}", with_root_cause(.0))]
    Transport(#[source] reqwest::Error),
    /// An answer that is not what the API documents (not JSON, a proxy's HTML page, a body
    /// of the wrong shape).
    #[error("unexpected answer from Tally (HTTP {status}): {reason}")]
    UnexpectedResponse {
        /// The HTTP status.
        status: u16,
        /// What was wrong with it.
        reason: String,
        /// The start of the body, for the log.
        body: String,
    },
    /// The client cannot be built (a bad base URL, a key that is not a header value, https
    /// without the `rustls` feature).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A request this client could not encode (nothing was sent).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// `e`, followed by its innermost cause (`connection refused`, `operation timed out`), which
/// reqwest's own message leaves out.
fn with_root_cause(e: &reqwest::Error) -> String {
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    if std::ptr::addr_eq(root, e as &dyn std::error::Error) { e.to_string() } else { format!("{e} ({root})") }
}

/// How much of an unexpected body [`Error::UnexpectedResponse`] keeps.
pub const UNEXPECTED_BODY_CHARS_MAX: usize = 512;

/// Statuses meaning "Tally cannot be reached": 503 is Tally's own (`unavailable`, the store
/// is unreachable), 502 and 504 are a proxy's in front of it.
pub const UNAVAILABLE_STATUSES: [u16; 3] = [502, 503, 504];

impl Error {
    /// The HTTP status, when Tally (or a proxy) answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::QuotaExceeded(_) => Some(429),
            Error::Api(p) => Some(p.status),
            Error::UnexpectedResponse { status, .. } => Some(*status),
            Error::Transport(e) => e.status().map(|s| s.as_u16()),
            Error::Config(_) | Error::InvalidRequest(_) => None,
        }
    }

    /// The problem's stable `code` (`quota_exceeded`, `not_found`, ...), when Tally answered
    /// one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::QuotaExceeded(_) => Some("quota_exceeded"),
            Error::Api(p) => Some(&p.code),
            _ => None,
        }
    }

    /// The problem answered, for [`Error::Api`].
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Api(p) => Some(p),
            _ => None,
        }
    }

    /// The refusal, for [`Error::QuotaExceeded`].
    pub fn quota_exceeded(&self) -> Option<&QuotaExceeded> {
        match self {
            Error::QuotaExceeded(q) => Some(q),
            _ => None,
        }
    }

    /// True for a HARD limit's refusal (429 `quota_exceeded`).
    pub fn is_quota_exceeded(&self) -> bool {
        matches!(self, Error::QuotaExceeded(_))
    }

    /// True when Tally could not be reached: no answer at all, or 502/503/504. This is what
    /// [`Unreachable`](crate::Unreachable) applies to; every other error is an answer.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Transport(e) => !e.is_builder() && !e.is_redirect(),
            Error::Api(_) | Error::UnexpectedResponse { .. } => {
                self.status().is_some_and(|s| UNAVAILABLE_STATUSES.contains(&s))
            }
            Error::QuotaExceeded(_) | Error::Config(_) | Error::InvalidRequest(_) => false,
        }
    }

    /// An error answer, from its status, `Retry-After` and body.
    pub(crate) fn from_answer(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Error {
        match serde_json::from_slice::<Problem>(body) {
            Ok(problem) => {
                if status == 429
                    && let Some(q) = QuotaExceeded::from_problem(&problem, retry_after)
                {
                    return Error::QuotaExceeded(Box::new(q));
                }
                Error::Api(Box::new(problem))
            }
            Err(e) => Error::unexpected(status, format!("not a problem+json body: {e}"), body),
        }
    }

    /// An answer of the wrong shape.
    pub(crate) fn unexpected(status: u16, reason: String, body: &[u8]) -> Error {
        let text = String::from_utf8_lossy(body);
        Error::UnexpectedResponse {
            status,
            reason,
            body: text.chars().take(UNEXPECTED_BODY_CHARS_MAX).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_problem_becomes_quota_exceeded_with_its_members() {
        let body = br#"{"type": "about:blank", "title": "Quota exceeded", "status": 429,
            "detail": "api_calls: 1000 used of 1000, 1 requested", "code": "quota_exceeded",
            "metric_code": "api_calls", "current_usage": 1000, "limit": 1000, "requested": 1,
            "period_end": "2026-12-01T00:00:00Z"}"#;
        let e = Error::from_answer(429, Some(Duration::from_secs(7)), body);
        let q = e.quota_exceeded().expect("a quota refusal");
        assert_eq!(q.metric_code, "api_calls");
        assert_eq!((q.current_usage, q.limit, q.requested), (1000, 1000, 1));
        assert_eq!(q.period_end.map(|t| t.to_rfc3339()), Some("2026-12-01T00:00:00+00:00".to_owned()));
        assert_eq!(q.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(e.status(), Some(429));
        assert_eq!(e.code(), Some("quota_exceeded"));
        assert!(!e.is_unavailable());
    }

    #[test]
    fn a_gauge_refusal_has_no_period_end() {
        let body = br#"{"type": "about:blank", "title": "Quota exceeded", "status": 429, "detail": "d",
            "code": "quota_exceeded", "metric_code": "seats", "current_usage": 5, "limit": 5,
            "requested": 1, "period_end": null}"#;
        let q = Error::from_answer(429, None, body).quota_exceeded().cloned().expect("a quota refusal");
        assert_eq!(q.period_end, None);
    }

    #[test]
    fn other_problems_keep_their_members_and_unknown_ones() {
        let body = br#"{"type": "about:blank", "title": "Invalid request", "status": 400,
            "detail": "amount: too big", "code": "invalid_request", "field": "amount", "hint": 3}"#;
        let e = Error::from_answer(400, None, body);
        let p = e.problem().expect("a problem");
        assert_eq!((p.status, p.code.as_str(), p.field.as_deref()), (400, "invalid_request", Some("amount")));
        assert_eq!(p.extra.get("hint"), Some(&Value::from(3)));
        assert!(!e.is_unavailable());
    }

    #[test]
    fn a_proxy_page_is_unexpected_and_a_502_means_unavailable() {
        let e = Error::from_answer(502, None, b"<html>Bad Gateway</html>");
        assert!(matches!(e, Error::UnexpectedResponse { status: 502, .. }), "{e:?}");
        assert!(e.is_unavailable());
        let e = Error::from_answer(503, None, br#"{"status": 503, "code": "unavailable", "detail": "x"}"#);
        assert!(e.is_unavailable());
        assert_eq!(e.code(), Some("unavailable"));
    }
}
