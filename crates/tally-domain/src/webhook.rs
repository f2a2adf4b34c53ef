//! Threshold webhooks: what an admin registers, when a threshold is crossed, and the
//! deliveries that tell a receiver about it.
//!
//! A webhook watches every tenant's finite limits. A counter crosses `t`% of its limit when a
//! usage takes it from below `t * limit / 100` to that value or above; it then fires once for
//! its (tenant, metric, period, threshold), never again in that period. A gauge fires when its
//! level reaches a threshold and re-arms once the level has fallen below 90% of that
//! threshold's value (`REARM_PER_MILLE`), so a level oscillating around it fires once.
//! `usage.limit_refused` fires once per (tenant, metric, period), on the first HARD refusal.
//!
//! These are pure functions of integers; the store applies them under the usage record's lock,
//! in the transaction that changes the usage (see `tally_store::outbox`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;
use crate::ids::{MetricCode, TenantId, WebhookId};
use crate::limits::{
    WEBHOOK_SECRET_LEN_MAX, WEBHOOK_SECRET_LEN_MIN, WEBHOOK_THRESHOLD_MAX, WEBHOOK_THRESHOLDS_LEN_MAX,
    WEBHOOK_URL_LEN_MAX,
};
use crate::time::{Timestamp, format_rfc3339};

/// A gauge's threshold re-arms once the level is below this many thousandths of its value.
pub const REARM_PER_MILLE: i128 = 900;

/// What a webhook is told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WebhookEventType {
    /// A tenant's usage of a metric reached a threshold of its limit.
    #[serde(rename = "usage.threshold_crossed")]
    ThresholdCrossed,
    /// A HARD limit refused a usage (the first refusal in a period).
    #[serde(rename = "usage.limit_refused")]
    LimitRefused,
}

impl WebhookEventType {
    /// Every event type, in wire order.
    pub const ALL: [WebhookEventType; 2] =
        [WebhookEventType::ThresholdCrossed, WebhookEventType::LimitRefused];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEventType::ThresholdCrossed => "usage.threshold_crossed",
            WebhookEventType::LimitRefused => "usage.limit_refused",
        }
    }
}

impl fmt::Display for WebhookEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WebhookEventType {
    type Err = DomainError;
    fn from_str(raw: &str) -> Result<WebhookEventType, DomainError> {
        WebhookEventType::ALL.into_iter().find(|t| t.as_str() == raw).ok_or_else(|| {
            DomainError::invalid("events", "each must be usage.threshold_crossed or usage.limit_refused")
        })
    }
}

/// Where deliveries go: an absolute `http` or `https` URL with a host, at most
/// `WEBHOOK_URL_LEN_MAX` bytes, without spaces, control characters or a fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// Checks `raw` and wraps it.
    pub fn parse(raw: &str) -> Result<WebhookUrl, DomainError> {
        let invalid = |why: &str| DomainError::invalid("url", why.to_owned());
        if raw.is_empty() || raw.len() > WEBHOOK_URL_LEN_MAX {
            return Err(invalid(&format!("must be 1 to {WEBHOOK_URL_LEN_MAX} bytes")));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) || raw.contains('#') {
            return Err(invalid("must not contain spaces, control characters or a fragment"));
        }
        let lower = raw.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"))
            .ok_or_else(|| invalid("must be an http:// or https:// URL"))?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        let host = if host.starts_with('[') {
            host.split(']').next().map(|h| h.trim_start_matches('[')).unwrap_or_default()
        } else {
            host.split(':').next().unwrap_or_default()
        };
        if host.is_empty() {
            return Err(invalid("must name a host"));
        }
        Ok(WebhookUrl(raw.to_owned()))
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The key deliveries are signed with: `WEBHOOK_SECRET_LEN_MIN..=WEBHOOK_SECRET_LEN_MAX`
/// visible ASCII characters. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// Checks `raw` and wraps it.
    pub fn parse(raw: &str) -> Result<WebhookSecret, DomainError> {
        let ok_len = (WEBHOOK_SECRET_LEN_MIN..=WEBHOOK_SECRET_LEN_MAX).contains(&raw.len());
        if !ok_len || !raw.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
            return Err(DomainError::invalid(
                "secret",
                format!(
                    "must be {WEBHOOK_SECRET_LEN_MIN} to {WEBHOOK_SECRET_LEN_MAX} visible ASCII characters"
                ),
            ));
        }
        Ok(WebhookSecret(raw.to_owned()))
    }

    /// The secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// Percentages of a limit, each in `1..=WEBHOOK_THRESHOLD_MAX`, ascending, without repeats;
/// at least one and at most `WEBHOOK_THRESHOLDS_LEN_MAX`.
pub fn check_thresholds(raw: &[i64]) -> Result<Vec<u16>, DomainError> {
    let invalid = |why: String| DomainError::invalid("thresholds", why);
    if raw.is_empty() || raw.len() > WEBHOOK_THRESHOLDS_LEN_MAX {
        return Err(invalid(format!("must hold 1 to {WEBHOOK_THRESHOLDS_LEN_MAX} percentages")));
    }
    let mut out = Vec::with_capacity(raw.len());
    for &t in raw {
        let pct =
            u16::try_from(t).ok().filter(|p| (1..=WEBHOOK_THRESHOLD_MAX).contains(p)).ok_or_else(|| {
                invalid(format!("each must be 1 to {WEBHOOK_THRESHOLD_MAX} (percent), got {t}"))
            })?;
        if out.contains(&pct) {
            return Err(invalid(format!("{pct} is given twice")));
        }
        out.push(pct);
    }
    out.sort_unstable();
    Ok(out)
}

/// Event types, at least one, without repeats; kept in wire order.
pub fn check_events(raw: &[WebhookEventType]) -> Result<Vec<WebhookEventType>, DomainError> {
    if raw.is_empty() {
        return Err(DomainError::invalid("events", "must name at least one event type"));
    }
    let mut out = raw.to_vec();
    out.sort_unstable();
    if out.windows(2).any(|w| w[0] == w[1]) {
        return Err(DomainError::invalid("events", "an event type is given twice"));
    }
    Ok(out)
}

/// What an admin declares about a webhook (the secret aside).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSpec {
    /// Where deliveries go.
    pub url: WebhookUrl,
    /// Percentages of a limit, ascending.
    pub thresholds: Vec<u16>,
    /// What it is told about.
    pub events: Vec<WebhookEventType>,
}

impl WebhookSpec {
    /// Checks each part (`WebhookUrl::parse`, `check_thresholds`, `check_events`): the one way
    /// a spec is built, from a request or from a stored row.
    pub fn new(
        url: &str,
        thresholds: &[i64],
        events: &[WebhookEventType],
    ) -> Result<WebhookSpec, DomainError> {
        Ok(WebhookSpec {
            url: WebhookUrl::parse(url)?,
            thresholds: check_thresholds(thresholds)?,
            events: check_events(events)?,
        })
    }

    /// Whether it wants deliveries of this type.
    pub fn wants(&self, t: WebhookEventType) -> bool {
        self.events.contains(&t)
    }
}

/// A registered webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    /// Its id.
    pub id: WebhookId,
    /// What was declared.
    pub spec: WebhookSpec,
    /// The signing key.
    pub secret: WebhookSecret,
    /// When it was registered.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// Whether `usage` has reached `pct`% of `limit` (exact: no rounding).
pub fn threshold_reached(usage: i64, limit: i64, pct: u16) -> bool {
    i128::from(usage) * 100 >= i128::from(pct) * i128::from(limit)
}

/// Whether a gauge's level is below the re-arm line of `pct`% of `limit` (90% of that value).
pub fn below_rearm(level: i64, limit: i64, pct: u16) -> bool {
    i128::from(level) * 100_000 < REARM_PER_MILLE * i128::from(pct) * i128::from(limit)
}

/// What one step of a threshold's state machine does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThresholdStep {
    /// The usage went from below the threshold to it or above: fire, unless already fired.
    Fire,
    /// A gauge's level fell below the re-arm line: the next reach fires again.
    Rearm,
}

/// What a change of usage from `before` to `after` does to the threshold `pct`% of `limit`.
/// Counters never re-arm (`gauge == false`).
pub fn threshold_step(before: i64, after: i64, limit: i64, pct: u16, gauge: bool) -> Option<ThresholdStep> {
    if !threshold_reached(before, limit, pct) && threshold_reached(after, limit, pct) {
        Some(ThresholdStep::Fire)
    } else if gauge && !below_rearm(before, limit, pct) && below_rearm(after, limit, pct) {
        Some(ThresholdStep::Rearm)
    } else {
        None
    }
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not yet answered with a 2xx; tried again at `next_attempt_at`.
    Pending,
    /// A 2xx came back.
    Delivered,
    /// The retry window passed without a 2xx; `redeliver` sends it again.
    Failed,
}

impl DeliveryStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

impl FromStr for DeliveryStatus {
    type Err = DomainError;
    fn from_str(raw: &str) -> Result<DeliveryStatus, DomainError> {
        match raw {
            "pending" => Ok(DeliveryStatus::Pending),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "failed" => Ok(DeliveryStatus::Failed),
            _ => Err(DomainError::invalid("status", "must be pending, delivered or failed")),
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message to one webhook, with its attempts so far. Its `body` is fixed when it is
/// created, so every attempt sends the same bytes under the same `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Its id, also the body's `id`: receivers deduplicate on it.
    pub id: Uuid,
    /// The webhook it goes to.
    pub webhook_id: WebhookId,
    /// What it tells.
    pub event_type: WebhookEventType,
    /// The tenant it is about.
    pub tenant_id: TenantId,
    /// The metric it is about.
    pub metric_code: MetricCode,
    /// The JSON body sent.
    pub body: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: i32,
    /// The status code of the last answer, if one came.
    pub last_response_code: Option<i32>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When it is tried next (pending only).
    pub next_attempt_at: Option<Timestamp>,
    /// When the current retry window began: creation, or the last redelivery.
    pub window_start: Timestamp,
    /// When it was created (in the usage's transaction).
    pub created_at: Timestamp,
    /// When it was last tried.
    pub last_attempt_at: Option<Timestamp>,
}

/// What a delivery says about the usage that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryData {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The metric.
    pub metric_code: MetricCode,
    /// The percentage crossed (`usage.threshold_crossed` only).
    pub threshold: Option<u16>,
    /// The usage after the change (or at the refusal).
    pub current_usage: i64,
    /// The limit then.
    pub limit: i64,
    /// The amount refused (`usage.limit_refused` only).
    pub requested: Option<i64>,
    /// The period's bounds; `None` for a gauge.
    pub period: Option<(Timestamp, Timestamp)>,
}

impl Delivery {
    /// A new pending delivery, due at once, with its body.
    pub fn new(
        webhook_id: WebhookId,
        event_type: WebhookEventType,
        data: &DeliveryData,
        now: Timestamp,
    ) -> Delivery {
        let id = Uuid::now_v7();
        let mut fields = serde_json::Map::new();
        fields.insert("tenant_id".into(), data.tenant_id.as_str().into());
        fields.insert("metric_code".into(), data.metric_code.as_str().into());
        fields.insert("threshold".into(), data.threshold.into());
        fields.insert("current_usage".into(), data.current_usage.into());
        fields.insert("limit".into(), data.limit.into());
        if let Some(requested) = data.requested {
            fields.insert("requested".into(), requested.into());
        }
        let (start, end) = match data.period {
            Some((s, e)) => (Some(format_rfc3339(s)), Some(format_rfc3339(e))),
            None => (None, None),
        };
        fields.insert("period_start".into(), start.into());
        fields.insert("period_end".into(), end.into());
        let body = serde_json::json!({
            "id": id.to_string(),
            "type": event_type.as_str(),
            "created_at": format_rfc3339(now),
            "data": fields,
        })
        .to_string();
        Delivery {
            id,
            webhook_id,
            event_type,
            tenant_id: data.tenant_id.clone(),
            metric_code: data.metric_code.clone(),
            body,
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_response_code: None,
            last_error: None,
            next_attempt_at: Some(now),
            window_start: now,
            created_at: now,
            last_attempt_at: None,
        }
    }
}

/// How deliveries are retried. Defaults: 5 s after the first failure, doubling, at most 1 h
/// apart, for 24 h; each attempt waits at most 10 s for an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub initial: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
    /// How long after its window starts a delivery is still retried.
    pub window: Duration,
    /// How long an attempt waits for an answer.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        use crate::limits::{
            WEBHOOK_RETRY_INITIAL_MS, WEBHOOK_RETRY_MAX_DELAY_MS, WEBHOOK_RETRY_WINDOW_MS, WEBHOOK_TIMEOUT_MS,
        };
        RetryPolicy {
            initial: Duration::from_millis(WEBHOOK_RETRY_INITIAL_MS),
            max_delay: Duration::from_millis(WEBHOOK_RETRY_MAX_DELAY_MS),
            window: Duration::from_millis(WEBHOOK_RETRY_WINDOW_MS),
            timeout: Duration::from_millis(WEBHOOK_TIMEOUT_MS),
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt after a failure at `now`: `initial` plus the time
    /// since the window began, at most `max_delay`. With attempts on time that is `initial`,
    /// then double the last wait each time (5 s, 10 s, 20 s, ...), with no counter to keep,
    /// and a redelivery (a new window) starts again from `initial`.
    pub fn delay_at(&self, window_start: Timestamp, now: Timestamp) -> Duration {
        let elapsed = (now - window_start).to_std().unwrap_or_default();
        self.initial.saturating_add(elapsed).min(self.max_delay)
    }

    /// When to try again after a failure at `now`, or `None` when that would fall past the
    /// window that began at `window_start` (the delivery has failed).
    pub fn next_attempt(&self, window_start: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let delay = chrono::Duration::from_std(self.delay_at(window_start, now)).ok()?;
        let window = chrono::Duration::from_std(self.window).ok()?;
        let next = now.checked_add_signed(delay)?;
        (next <= window_start.checked_add_signed(window)?).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_reached_exactly_without_rounding() {
        assert!(!threshold_reached(799, 1000, 80));
        assert!(threshold_reached(800, 1000, 80));
        // 80% of 7 is 5.6: 5 has not reached it, 6 has.
        assert!(!threshold_reached(5, 7, 80));
        assert!(threshold_reached(6, 7, 80));
        assert!(threshold_reached(i64::MAX, i64::MAX, 100));
        assert!(!threshold_reached(i64::MAX - 1, i64::MAX, 100));
    }

    #[test]
    fn a_counter_fires_once_on_the_way_up_and_never_rearms() {
        assert_eq!(threshold_step(700, 800, 1000, 80, false), Some(ThresholdStep::Fire));
        assert_eq!(threshold_step(800, 900, 1000, 80, false), None);
        assert_eq!(threshold_step(900, 0, 1000, 80, false), None);
        assert_eq!(threshold_step(0, 10_000, 1000, 80, false), Some(ThresholdStep::Fire));
    }

    #[test]
    fn a_gauge_rearms_only_below_ninety_percent_of_the_threshold() {
        // Threshold 80% of 100 = 80; the re-arm line is 72.
        assert_eq!(threshold_step(79, 80, 100, 80, true), Some(ThresholdStep::Fire));
        assert_eq!(threshold_step(80, 72, 100, 80, true), None);
        assert_eq!(threshold_step(80, 71, 100, 80, true), Some(ThresholdStep::Rearm));
        assert_eq!(threshold_step(72, 71, 100, 80, true), Some(ThresholdStep::Rearm));
        assert_eq!(threshold_step(71, 70, 100, 80, true), None);
    }

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        for ok in
            ["http://127.0.0.1:8080/hook", "https://example.com", "HTTPS://a.b/c?d=e", "http://[::1]:9/x"]
        {
            assert!(WebhookUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ftp://x", "http://", "https:///path", "http://a b", "http://a/#frag", "example.com"]
        {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thresholds_and_events_are_checked_and_sorted() {
        assert_eq!(check_thresholds(&[100, 80]).ok(), Some(vec![80, 100]));
        assert!(check_thresholds(&[]).is_err());
        assert!(check_thresholds(&[0]).is_err());
        assert!(check_thresholds(&[80, 80]).is_err());
        assert!(check_thresholds(&[i64::from(WEBHOOK_THRESHOLD_MAX) + 1]).is_err());
        assert!(check_events(&[]).is_err());
        assert!(check_events(&[WebhookEventType::LimitRefused, WebhookEventType::LimitRefused]).is_err());
    }

    #[test]
    fn retries_double_up_to_the_cap_within_the_window() {
        let p = RetryPolicy::default();
        let start = chrono::DateTime::UNIX_EPOCH;
        // Attempts on time fail at 0, 5, 15, 35 s...: each wait doubles the last.
        let mut at = start;
        let mut waits = Vec::new();
        for _ in 0..4 {
            let next = p.next_attempt(start, at).expect("inside the window");
            waits.push((next - at).num_seconds());
            at = next;
        }
        assert_eq!(waits, vec![5, 10, 20, 40]);
        assert_eq!(p.delay_at(start, start + chrono::Duration::hours(5)), Duration::from_secs(3600));
        // Nothing is scheduled past the window: the delivery has failed.
        assert_eq!(p.next_attempt(start, start + chrono::Duration::minutes(1439)), None);
        assert!(p.next_attempt(start, start + chrono::Duration::minutes(1300)).is_some());
    }

    #[test]
    fn a_delivery_body_carries_its_id_and_data() {
        let data = DeliveryData {
            tenant_id: TenantId::parse("acme").expect("valid"),
            metric_code: MetricCode::parse("seats").expect("valid"),
            threshold: Some(80),
            current_usage: 8,
            limit: 10,
            requested: None,
            period: None,
        };
        let d = Delivery::new(
            WebhookId::parse("ops").expect("valid"),
            WebhookEventType::ThresholdCrossed,
            &data,
            chrono::DateTime::UNIX_EPOCH,
        );
        let body: serde_json::Value = serde_json::from_str(&d.body).expect("json");
        assert_eq!(body["id"], d.id.to_string());
        assert_eq!(body["type"], "usage.threshold_crossed");
        assert_eq!(body["data"]["threshold"], 80);
        assert_eq!(body["data"]["period_end"], serde_json::Value::Null);
        assert_eq!(d.status, DeliveryStatus::Pending);
    }
}
