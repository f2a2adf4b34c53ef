//! `verify`: rebuilds every usage record from the event trail and the audited resets, and
//! names each record whose counter differs.
//!
//! A reset sets a counter to zero and keeps what it held in the audit log, so for each
//! (tenant, metric, period) the counter must equal the sum of its events minus the sum of
//! what its resets wiped, whatever the order in which they happened.

use std::collections::BTreeMap;

use tally_domain::{MetricCode, TenantId, Timestamp};
use tally_store::Store;
use uuid::Uuid;

use crate::{ServiceError, Tally};

/// One record whose counter does not match its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// Whose.
    pub tenant_id: TenantId,
    /// Of what.
    pub metric_code: MetricCode,
    /// Which period.
    pub period_start: Timestamp,
    /// The record, when there is one.
    pub record_id: Option<Uuid>,
    /// Its counter, when there is a record.
    pub recorded: Option<i64>,
    /// What the events and resets say it should be.
    pub expected: i64,
    /// Events that counted in the period.
    pub n_events: i64,
}

/// The result of `verify`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub n_records: usize,
    /// Events read, corrections included.
    pub n_events: i64,
    /// Corrections among them.
    pub n_corrections: i64,
    /// Resets read.
    pub n_resets: usize,
    /// Every disagreement; empty when the store is consistent.
    pub drifts: Vec<Drift>,
}

type Key = (TenantId, MetricCode, Timestamp);

impl<S: Store> Tally<S> {
    /// Compares every usage record with its events and resets.
    pub async fn verify(&self) -> Result<VerifyReport, ServiceError> {
        let inputs = self.store().verify_inputs().await?;
        let mut events: BTreeMap<Key, (i64, i64)> = BTreeMap::new();
        let mut n_events = 0i64;
        let mut n_corrections = 0i64;
        for e in &inputs.events {
            n_events = n_events.saturating_add(e.n_events);
            n_corrections = n_corrections.saturating_add(e.n_corrections);
            events.insert(
                (e.tenant_id.clone(), e.metric_code.clone(), e.period_start),
                (e.amount_sum, e.n_events),
            );
        }
        let mut wiped: BTreeMap<Key, i64> = BTreeMap::new();
        for r in &inputs.resets {
            let w = wiped.entry((r.tenant_id.clone(), r.metric_code.clone(), r.period_start)).or_default();
            *w = w.saturating_add(r.previous_usage);
        }
        let mut drifts = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for rec in &inputs.records {
            let key = (rec.key.tenant_id.clone(), rec.key.metric_code.clone(), rec.key.period.start());
            let (sum, n) = events.get(&key).copied().unwrap_or((0, 0));
            let expected = sum.saturating_sub(wiped.get(&key).copied().unwrap_or(0));
            if rec.current_usage != expected {
                drifts.push(Drift {
                    tenant_id: key.0.clone(),
                    metric_code: key.1.clone(),
                    period_start: key.2,
                    record_id: Some(rec.id),
                    recorded: Some(rec.current_usage),
                    expected,
                    n_events: n,
                });
            }
            seen.insert(key);
        }
        for (key, (sum, n)) in &events {
            if !seen.contains(key) {
                let expected = sum.saturating_sub(wiped.get(key).copied().unwrap_or(0));
                drifts.push(Drift {
                    tenant_id: key.0.clone(),
                    metric_code: key.1.clone(),
                    period_start: key.2,
                    record_id: None,
                    recorded: None,
                    expected,
                    n_events: *n,
                });
            }
        }
        Ok(VerifyReport {
            n_records: inputs.records.len(),
            n_events,
            n_corrections,
            n_resets: inputs.resets.len(),
            drifts,
        })
    }
}
