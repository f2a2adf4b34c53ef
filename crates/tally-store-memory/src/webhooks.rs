//! Webhooks, their threshold states and deliveries, in memory.

use tally_domain::{
    AuditEntry, Delivery, DeliveryStatus, Timestamp, Webhook, WebhookId, WebhookSecret, WebhookSpec,
};
use tally_store::{
    FireKey, FireStates, PutOutcome, StoreError, WebhookRule, WebhookStore, webhook_after_put,
};
use uuid::Uuid;

use crate::{MemTx, MemoryStore};

impl MemTx<'_> {
    pub(crate) fn webhook_rules(&self) -> Vec<WebhookRule> {
        self.state.webhooks.values().map(|w| WebhookRule { id: w.id.clone(), spec: w.spec.clone() }).collect()
    }

    pub(crate) fn fire_states(&self, keys: &[FireKey]) -> FireStates {
        keys.iter().filter_map(|k| self.state.fire_states.get(k).map(|f| (k.clone(), *f))).collect()
    }

    pub(crate) fn write_outbox_rows(&mut self, states: &[(FireKey, bool)], deliveries: &[Delivery]) {
        for (k, fired) in states {
            self.state.fire_states.insert(k.clone(), *fired);
        }
        for d in deliveries {
            self.state.deliveries.insert(d.id, d.clone());
        }
    }
}

impl WebhookStore for MemoryStore {
    async fn put_webhook(
        &self,
        id: &WebhookId,
        spec: &WebhookSpec,
        secret: &WebhookSecret,
        replace_secret: bool,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<PutOutcome<Webhook>, StoreError> {
        let mut state = self.state.lock().await;
        let outcome = webhook_after_put(state.webhooks.get(id), id, spec, secret, replace_secret, now);
        if let PutOutcome::Created(w) | PutOutcome::Updated(w) = &outcome {
            state.webhooks.insert(id.clone(), w.clone());
            state.audit.push(audit.clone());
            state.config_version += 1;
        }
        Ok(outcome)
    }

    async fn find_webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        Ok(self.state.lock().await.webhooks.get(id).cloned())
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        Ok(self.state.lock().await.webhooks.values().cloned().collect())
    }

    async fn delete_webhook(&self, id: &WebhookId, audit: &AuditEntry) -> Result<bool, StoreError> {
        let mut state = self.state.lock().await;
        if state.webhooks.remove(id).is_none() {
            return Ok(false);
        }
        state.fire_states.retain(|k, _| &k.webhook_id != id);
        state.deliveries.retain(|_, d| &d.webhook_id != id);
        state.audit.push(audit.clone());
        state.config_version += 1;
        Ok(true)
    }

    async fn list_deliveries(
        &self,
        webhook: &WebhookId,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let state = self.state.lock().await;
        Ok(state
            .deliveries
            .values()
            .rev()
            .filter(|d| &d.webhook_id == webhook && before.is_none_or(|b| d.id < b))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn find_delivery(&self, webhook: &WebhookId, id: Uuid) -> Result<Option<Delivery>, StoreError> {
        let state = self.state.lock().await;
        Ok(state.deliveries.get(&id).filter(|d| &d.webhook_id == webhook).cloned())
    }

    async fn redeliver(
        &self,
        webhook: &WebhookId,
        id: Uuid,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<Option<Delivery>, StoreError> {
        let mut state = self.state.lock().await;
        let Some(d) = state.deliveries.get_mut(&id).filter(|d| &d.webhook_id == webhook) else {
            return Ok(None);
        };
        d.status = DeliveryStatus::Pending;
        d.next_attempt_at = Some(now);
        d.window_start = now;
        let d = d.clone();
        state.audit.push(audit.clone());
        Ok(Some(d))
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        max: i64,
    ) -> Result<Vec<(Delivery, Webhook)>, StoreError> {
        let mut state = self.state.lock().await;
        let mut due: Vec<(Timestamp, Uuid)> = state
            .deliveries
            .values()
            .filter(|d| d.status == DeliveryStatus::Pending && state.webhooks.contains_key(&d.webhook_id))
            .filter_map(|d| d.next_attempt_at.filter(|at| *at <= now).map(|at| (at, d.id)))
            .collect();
        due.sort();
        due.truncate(usize::try_from(max).unwrap_or(0));
        let mut out = Vec::with_capacity(due.len());
        for (_, id) in due {
            let Some(d) = state.deliveries.get_mut(&id) else { continue };
            d.next_attempt_at = Some(lease_until);
            let d = d.clone();
            if let Some(w) = state.webhooks.get(&d.webhook_id) {
                out.push((d, w.clone()));
            }
        }
        Ok(out)
    }

    async fn record_attempt(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        if let Some(d) = state.deliveries.get_mut(&delivery.id) {
            d.status = delivery.status;
            d.attempts = delivery.attempts;
            d.last_response_code = delivery.last_response_code;
            d.last_error.clone_from(&delivery.last_error);
            d.next_attempt_at = delivery.next_attempt_at;
            d.last_attempt_at = delivery.last_attempt_at;
        }
        Ok(())
    }
}
