//! Threshold webhooks: registration, the deliveries log, redelivery, and the worker that
//! sends what the usage transactions wrote to the outbox (`tally_store::outbox`).
//!
//! The worker claims due deliveries (a lease: `next_attempt_at` moves past the attempt's
//! timeout, so an instance that dies mid-attempt leaves the delivery due again, and several
//! instances never send one delivery at once), posts each body with its signature, and stores
//! the outcome: `delivered` on a 2xx, else the next attempt by `RetryPolicy`, or `failed`
//! once the retry window is over. Delivery is at least once; the body's `id` is the same on
//! every attempt so that receivers can drop repeats.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tally_domain::limits::{
    WEBHOOK_CLAIM_BATCH_LEN, WEBHOOK_CLAIM_GRACE_MS, WEBHOOK_ERROR_LEN_MAX, WEBHOOK_POLL_INTERVAL_MS,
    WEBHOOKS_LEN_MAX,
};
use tally_domain::{
    AuditAction, AuditEntry, Delivery, DeliveryStatus, Webhook, WebhookEventType, WebhookId, WebhookSecret,
    WebhookSpec,
};
use tally_store::{PutOutcome, Store};
use uuid::Uuid;

use crate::{ServiceError, Tally};

/// The header that carries a delivery's signature.
pub const SIGNATURE_HEADER: &str = "Tally-Signature";

/// What a client sends to register or replace a webhook.
#[derive(Clone, Debug)]
pub struct WebhookInput {
    /// Where deliveries go.
    pub url: String,
    /// Percentages of a limit.
    pub thresholds: Vec<i64>,
    /// Event types.
    pub events: Vec<WebhookEventType>,
    /// The signing secret; generated on creation when absent, kept on replace when absent.
    pub secret: Option<String>,
}

/// A put's result: the webhook, and its secret when this answer is the one that shows it
/// (creation only).
#[derive(Clone, Debug)]
pub struct WebhookPut {
    /// What happened.
    pub outcome: PutOutcome<Webhook>,
    /// The secret, shown once: set only when the webhook was created.
    pub shown_secret: Option<WebhookSecret>,
}

/// The signature header's value for `body` sent at unix time `t`:
/// `t=<t>,v1=<hex of HMAC-SHA256("<t>.<body>") keyed with the secret>`.
pub fn signature(secret: &WebhookSecret, t: i64, body: &str) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// A new random secret: `whsec_` and 32 random bytes in hex.
pub fn generate_secret() -> WebhookSecret {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    WebhookSecret::parse(&format!("whsec_{hex}")).unwrap_or_else(|_| unreachable!("70 visible characters"))
}

/// What became of one attempt to post a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered with this status code.
    Answered(u16),
    /// No answer: refused, reset, timed out, TLS failed. The text says which.
    NoAnswer(String),
}

/// Posts deliveries. `tally-http` implements it with an HTTP client; tests use their own.
pub trait Sender: Send + Sync + 'static {
    /// Posts `body` to `url` as `application/json` with these extra headers, waiting at most
    /// `timeout` for the answer, following no redirect.
    fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: &str,
        timeout: Duration,
    ) -> impl Future<Output = Attempt> + Send;
}

fn delivery_audit_details(webhook: &WebhookId, delivery: Uuid) -> serde_json::Value {
    serde_json::json!({ "webhook_id": webhook.as_str(), "delivery_id": delivery.to_string() })
}

impl<S: Store> Tally<S> {
    /// Registers a webhook or replaces it. A put that changes nothing changes nothing.
    pub async fn put_webhook(
        &self,
        id: &WebhookId,
        input: WebhookInput,
        key_id: Option<Uuid>,
    ) -> Result<WebhookPut, ServiceError> {
        let spec = WebhookSpec::new(&input.url, &input.thresholds, &input.events)?;
        let given = input.secret.as_deref().map(WebhookSecret::parse).transpose()?;
        let existing = self.store.find_webhook(id).await?;
        if existing.is_none() && self.store.list_webhooks().await?.len() >= WEBHOOKS_LEN_MAX {
            return Err(ServiceError::Conflict(format!(
                "{WEBHOOKS_LEN_MAX} webhooks are registered, the most allowed"
            )));
        }
        let replace_secret = given.is_some();
        let secret = given.unwrap_or_else(generate_secret);
        let details = serde_json::json!({
            "webhook_id": id.as_str(),
            "url": spec.url.as_str(),
            "thresholds": spec.thresholds,
            "events": spec.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            "secret_replaced": replace_secret && existing.is_some(),
        });
        let audit = AuditEntry::new(self.now(), key_id, AuditAction::WebhookPut, None, details);
        let outcome = self.store.put_webhook(id, &spec, &secret, replace_secret, self.now(), &audit).await?;
        let shown_secret = match &outcome {
            PutOutcome::Created(w) => Some(w.secret.clone()),
            PutOutcome::Updated(_) | PutOutcome::Unchanged(_) => None,
        };
        Ok(WebhookPut { outcome, shown_secret })
    }

    /// A webhook; `NotFound` when it is not registered.
    pub async fn get_webhook(&self, id: &WebhookId) -> Result<Webhook, ServiceError> {
        self.store.find_webhook(id).await?.ok_or_else(|| ServiceError::NotFound(format!("webhook {id}")))
    }

    /// Every webhook, by id.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, ServiceError> {
        Ok(self.store.list_webhooks().await?)
    }

    /// Removes a webhook with its deliveries; `NotFound` when it is not registered.
    pub async fn delete_webhook(&self, id: &WebhookId, key_id: Option<Uuid>) -> Result<(), ServiceError> {
        let details = serde_json::json!({ "webhook_id": id.as_str() });
        let audit = AuditEntry::new(self.now(), key_id, AuditAction::WebhookDelete, None, details);
        if self.store.delete_webhook(id, &audit).await? {
            Ok(())
        } else {
            Err(ServiceError::NotFound(format!("webhook {id}")))
        }
    }

    /// A page of the webhook's deliveries, newest first, after `cursor` (the last id of the
    /// previous page); the next page's cursor when there may be more.
    pub async fn list_deliveries(
        &self,
        id: &WebhookId,
        cursor: Option<Uuid>,
        limit: u32,
    ) -> Result<(Vec<Delivery>, Option<Uuid>), ServiceError> {
        self.get_webhook(id).await?;
        let mut page = self.store.list_deliveries(id, cursor, limit.saturating_add(1)).await?;
        let more = page.len() > limit as usize;
        page.truncate(limit as usize);
        let next = if more { page.last().map(|d| d.id) } else { None };
        Ok((page, next))
    }

    /// Sends a delivery again, whatever its status: pending and due now, with a new retry
    /// window. `NotFound` when the webhook has no such delivery.
    pub async fn redeliver(
        &self,
        id: &WebhookId,
        delivery: Uuid,
        key_id: Option<Uuid>,
    ) -> Result<Delivery, ServiceError> {
        let audit = AuditEntry::new(
            self.now(),
            key_id,
            AuditAction::WebhookRedeliver,
            None,
            delivery_audit_details(id, delivery),
        );
        self.store
            .redeliver(id, delivery, self.now(), &audit)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("delivery {delivery} of webhook {id}")))
    }

    /// Claims the deliveries due now and makes one attempt at each, concurrently. Returns
    /// how many were attempted.
    pub async fn deliver_due<D: Sender>(&self, sender: &D) -> Result<usize, ServiceError> {
        let policy = self.config.webhook_retry;
        let now = self.now();
        let lease =
            chrono::Duration::from_std(policy.timeout + Duration::from_millis(WEBHOOK_CLAIM_GRACE_MS))
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let claimed = self.store.claim_deliveries(now, now + lease, WEBHOOK_CLAIM_BATCH_LEN).await?;
        let n = claimed.len();
        let attempts = claimed.into_iter().map(|(d, w)| self.attempt(sender, d, w));
        for result in futures::future::join_all(attempts).await {
            result?;
        }
        Ok(n)
    }

    async fn attempt<D: Sender>(&self, sender: &D, mut d: Delivery, w: Webhook) -> Result<(), ServiceError> {
        let policy = self.config.webhook_retry;
        let headers = [
            (SIGNATURE_HEADER, signature(&w.secret, self.now().timestamp(), &d.body)),
            ("Tally-Delivery-Id", d.id.to_string()),
            ("Tally-Event-Type", d.event_type.as_str().to_owned()),
        ];
        let outcome = sender.post(w.spec.url.as_str(), &headers, &d.body, policy.timeout).await;
        let now = self.now();
        d.attempts = d.attempts.saturating_add(1);
        d.last_attempt_at = Some(now);
        let (code, error) = match &outcome {
            Attempt::Answered(code) if (200..300).contains(code) => (Some(*code), None),
            Attempt::Answered(code) => (Some(*code), Some(format!("answered {code}"))),
            Attempt::NoAnswer(why) => (None, Some(why.chars().take(WEBHOOK_ERROR_LEN_MAX).collect())),
        };
        d.last_response_code = code.map(i32::from);
        if error.is_none() {
            d.status = DeliveryStatus::Delivered;
            d.next_attempt_at = None;
        } else {
            d.next_attempt_at = policy.next_attempt(d.window_start, now);
            if d.next_attempt_at.is_none() {
                d.status = DeliveryStatus::Failed;
            }
            tracing::info!(delivery = %d.id, webhook = %w.id, attempts = d.attempts, error = ?error, status = %d.status, "webhook delivery failed");
        }
        d.last_error = error;
        metrics::counter!("tally_webhook_attempts_total", "outcome" => if d.status == DeliveryStatus::Delivered { "delivered" } else { "failed" }).increment(1);
        self.store.record_attempt(&d).await?;
        Ok(())
    }
}

/// Sends due deliveries every `WEBHOOK_POLL_INTERVAL_MS` until the task is dropped. A
/// failure is logged and tried again at the next tick; nothing is lost, as the outbox keeps
/// every delivery until it is answered.
pub async fn deliver_forever<S: Store, D: Sender>(tally: Tally<S>, sender: Arc<D>) {
    let mut tick = tokio::time::interval(Duration::from_millis(WEBHOOK_POLL_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Keep sending while full batches come back, so a backlog drains at once.
        loop {
            match tally.deliver_due(&*sender).await {
                Ok(n) if n as i64 >= WEBHOOK_CLAIM_BATCH_LEN => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "sending webhook deliveries failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_follows_the_documented_recipe() {
        // HMAC-SHA256 of "1700000000.{}" keyed "whsec_test_secret_123", as computed by
        // `printf '%s' '1700000000.{}' | openssl dgst -sha256 -hmac whsec_test_secret_123`.
        let secret = WebhookSecret::parse("whsec_test_secret_123").expect("valid");
        assert_eq!(
            signature(&secret, 1_700_000_000, "{}"),
            "t=1700000000,v1=c61da39a83078801eed36e027527ac71718ca621c86556f5c44b6213bd6952cd"
        );
    }

    #[test]
    fn generated_secrets_are_long_and_differ() {
        let a = generate_secret();
        assert!(a.expose().starts_with("whsec_") && a.expose().len() == 70);
        assert_ne!(a, generate_secret());
    }
}
