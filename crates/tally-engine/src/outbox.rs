//! The webhook outbox's decision: what a batch's changes of usage fire, decided in the batch
//! that makes them and written in its transaction, so a crossing is never lost and never
//! doubled.
//!
//! Exactly once rests on two things. Every change of a (tenant, metric, period)'s usage is
//! made under that record's lock, so the transactions that could fire one threshold run one
//! after another and each sees the last one's state. And each threshold's state is a row keyed
//! by (webhook, tenant, metric, period start, event type, threshold): a counter's row, once
//! fired, stays fired for the period; a gauge's row is re-armed when the level falls below
//! the re-arm line (`tally_domain::webhook::below_rearm`).

use std::collections::{BTreeMap, HashMap};

use tally_domain::webhook::{ThresholdStep, threshold_step};
use tally_domain::{
    Delivery, DeliveryData, MetricCode, RecordKey, TenantId, Timestamp, WebhookEventType, WebhookId,
    WebhookSpec,
};

/// What a usage transaction needs of a webhook: its id and what it watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookRule {
    /// The webhook.
    pub id: WebhookId,
    /// Its thresholds and event types (its URL is not used here).
    pub spec: WebhookSpec,
}

/// One threshold's state row: fired or armed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FireKey {
    /// The webhook.
    pub webhook_id: WebhookId,
    /// The tenant.
    pub tenant_id: TenantId,
    /// The metric.
    pub metric_code: MetricCode,
    /// The period's start (a gauge's is its one unbounded period's).
    pub period_start: Timestamp,
    /// What fires.
    pub event_type: WebhookEventType,
    /// The percentage; 0 for `usage.limit_refused`.
    pub threshold: u16,
}

/// The states of the keys that have a row (absent: armed, never fired).
pub type FireStates = HashMap<FireKey, bool>;

/// What happened to a record's usage, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Usage moved from `before` to `after` under `limit`.
    Changed {
        /// The record.
        key: RecordKey,
        /// Its limit when it moved.
        limit: i64,
        /// Usage before.
        before: i64,
        /// Usage after.
        after: i64,
    },
    /// A HARD limit refused `requested` at `current`.
    Refused {
        /// The record.
        key: RecordKey,
        /// The limit.
        limit: i64,
        /// Usage at the refusal.
        current: i64,
        /// The amount refused.
        requested: i64,
    },
}

impl Signal {
    fn key(&self) -> &RecordKey {
        match self {
            Signal::Changed { key, .. } | Signal::Refused { key, .. } => key,
        }
    }
}

/// What the outbox writes: changed threshold states and new deliveries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboxWrites {
    /// States that changed (insert or update).
    pub states: Vec<(FireKey, bool)>,
    /// Deliveries to append.
    pub deliveries: Vec<Delivery>,
}

/// Decides what `signals` fire against the stored states.
pub fn decide(
    rules: &[WebhookRule],
    signals: &[Signal],
    stored: &FireStates,
    now: Timestamp,
) -> OutboxWrites {
    if signals.is_empty() || rules.is_empty() {
        return OutboxWrites::default();
    }
    let mut state: BTreeMap<FireKey, bool> = BTreeMap::new();
    let mut deliveries = Vec::new();
    for step in steps(rules, signals) {
        let fired = *state.get(&step.key).or_else(|| stored.get(&step.key)).unwrap_or(&false);
        match step.step {
            ThresholdStep::Fire if !fired => {
                deliveries.push(Delivery::new(
                    step.key.webhook_id.clone(),
                    step.key.event_type,
                    &step.data,
                    now,
                ));
                state.insert(step.key, true);
            }
            ThresholdStep::Rearm if fired => {
                state.insert(step.key, false);
            }
            ThresholdStep::Fire | ThresholdStep::Rearm => {}
        }
    }
    let states =
        state.into_iter().filter(|(k, fired)| stored.get(k).copied().unwrap_or(false) != *fired).collect();
    OutboxWrites { states, deliveries }
}

/// Whether any of `signals` makes a step under `rules` (so that threshold states matter).
pub fn any_step(rules: &[WebhookRule], signals: &[Signal]) -> bool {
    !signals.is_empty() && !rules.is_empty() && !steps(rules, signals).is_empty()
}

struct Step {
    key: FireKey,
    step: ThresholdStep,
    data: DeliveryData,
}

fn steps(rules: &[WebhookRule], signals: &[Signal]) -> Vec<Step> {
    let mut out = Vec::new();
    for signal in signals {
        let key = signal.key();
        let fire_key = |rule: &WebhookRule, event_type, threshold| FireKey {
            webhook_id: rule.id.clone(),
            tenant_id: key.tenant_id.clone(),
            metric_code: key.metric_code.clone(),
            period_start: key.period.start(),
            event_type,
            threshold,
        };
        let data = |threshold, current_usage, limit, requested| DeliveryData {
            tenant_id: key.tenant_id.clone(),
            metric_code: key.metric_code.clone(),
            threshold,
            current_usage,
            limit,
            requested,
            period: key.period.bounds(),
        };
        for rule in rules {
            match *signal {
                Signal::Changed { limit, before, after, .. } => {
                    if !rule.spec.wants(WebhookEventType::ThresholdCrossed) {
                        continue;
                    }
                    let gauge = key.period.bounds().is_none();
                    for &pct in &rule.spec.thresholds {
                        if let Some(step) = threshold_step(before, after, limit, pct, gauge) {
                            out.push(Step {
                                key: fire_key(rule, WebhookEventType::ThresholdCrossed, pct),
                                step,
                                data: data(Some(pct), after, limit, None),
                            });
                        }
                    }
                }
                Signal::Refused { limit, current, requested, .. } => {
                    if rule.spec.wants(WebhookEventType::LimitRefused) {
                        out.push(Step {
                            key: fire_key(rule, WebhookEventType::LimitRefused, 0),
                            step: ThresholdStep::Fire,
                            data: data(None, current, limit, Some(requested)),
                        });
                    }
                }
            }
        }
    }
    out
}
