//! What a batch must have loaded before it can be decided: the first round trip's work.

use std::collections::BTreeSet;

use tally_domain::{IdempotencyKey, RecordKey, TenantId};
use uuid::Uuid;

use crate::op::{Ctx, Entitlements, WriteOp};
use crate::plan::resolve_limit;

/// What to load, each list sorted and without repeats. Records are locked in this order (the
/// global key order every transaction follows, so none waits for another in a cycle).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Records to lock (creating missing ones at zero, or noting them absent).
    pub records: Vec<RecordKey>,
    /// Reservations to lock, by `(tenant, id)`: the ones the batch commits or releases. The
    /// record each holds against is locked with the others, after them.
    pub reservations: Vec<(TenantId, Uuid)>,
    /// Idempotency keys of usage whose events may exist.
    pub event_keys: Vec<(TenantId, IdempotencyKey)>,
    /// Idempotency keys of reservations that may exist.
    pub reservation_keys: Vec<(TenantId, IdempotencyKey)>,
    /// Tenants whose open reservations must be counted (they reserve).
    pub open_reservations: Vec<TenantId>,
    /// Read the threshold states of every locked record (webhooks are registered).
    pub fire_states: bool,
    /// Tenants whose closing watermark must be read, under a share lock taken before any
    /// record's lock (a close takes the tenant's row first, then its records): those writing
    /// into a period that may be closed (`Ctx::may_be_closed`).
    pub watermarks: Vec<TenantId>,
}

impl Needs {
    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.reservations.is_empty()
            && self.event_keys.is_empty()
            && self.reservation_keys.is_empty()
            && self.open_reservations.is_empty()
            && !self.fire_states
            && self.watermarks.is_empty()
    }

    /// Every tenant named anywhere in these needs, once each, sorted.
    pub fn tenants(&self) -> Vec<&TenantId> {
        let mut all: BTreeSet<&TenantId> = BTreeSet::new();
        all.extend(self.records.iter().map(|k| &k.tenant_id));
        all.extend(self.reservations.iter().map(|(t, _)| t));
        all.extend(self.event_keys.iter().map(|(t, _)| t));
        all.extend(self.reservation_keys.iter().map(|(t, _)| t));
        all.extend(self.open_reservations.iter());
        all.extend(self.watermarks.iter());
        all.into_iter().collect()
    }
}

/// The record a write of `metric` for `tenant` at `at` (now when `None`) counts in, when
/// the tenant's entitlement has the metric.
fn target<E: Entitlements + ?Sized>(
    tenant: &TenantId,
    metric: &tally_domain::MetricCode,
    at: Option<tally_domain::Timestamp>,
    ents: &E,
    ctx: &Ctx,
) -> Option<RecordKey> {
    let (limit, anchor) = resolve_limit(tenant, metric, ents.lookup(tenant)).ok()?;
    let period = limit.period.containing(at.unwrap_or(ctx.now), anchor).ok()?;
    Some(RecordKey { tenant_id: tenant.clone(), metric_code: metric.clone(), period })
}

/// What `ops` need, given the entitlements they will be decided against. `webhooks` says
/// whether any webhook is registered (threshold states are read only then).
pub fn needs<E: Entitlements + ?Sized>(ops: &[WriteOp], ents: &E, ctx: &Ctx, webhooks: bool) -> Needs {
    let mut records = BTreeSet::new();
    let mut reservations = BTreeSet::new();
    let mut event_keys = BTreeSet::new();
    let mut reservation_keys = BTreeSet::new();
    let mut open = BTreeSet::new();
    let mut watermarks = BTreeSet::new();
    for op in ops {
        match op {
            WriteOp::Usage(req) => {
                if let Some(key) = &req.idempotency_key {
                    event_keys.insert((req.tenant_id.clone(), key.clone()));
                }
                if ctx.check_window(req.timestamp).is_err() {
                    continue;
                }
                if let Some(key) = target(&req.tenant_id, &req.metric_code, req.timestamp, ents, ctx) {
                    if ctx.may_be_closed(key.period.end()) {
                        watermarks.insert(req.tenant_id.clone());
                    }
                    records.insert(key);
                }
            }
            WriteOp::Correct(req) => {
                if let Some(key) = &req.idempotency_key {
                    event_keys.insert((req.tenant_id.clone(), key.clone()));
                }
                if let Some(key) = target(&req.tenant_id, &req.metric_code, req.timestamp, ents, ctx) {
                    if ctx.may_be_closed(key.period.end()) {
                        watermarks.insert(req.tenant_id.clone());
                    }
                    records.insert(key);
                }
            }
            WriteOp::Reserve(req) => {
                if let Some(key) = &req.idempotency_key {
                    reservation_keys.insert((req.tenant_id.clone(), key.clone()));
                }
                let Ok((limit, anchor)) =
                    resolve_limit(&req.tenant_id, &req.metric_code, ents.lookup(&req.tenant_id))
                else {
                    continue;
                };
                open.insert(req.tenant_id.clone());
                let Ok(period) = limit.period.containing(ctx.now, anchor) else { continue };
                records.insert(RecordKey {
                    tenant_id: req.tenant_id.clone(),
                    metric_code: req.metric_code.clone(),
                    period,
                });
            }
            WriteOp::Commit(req) => {
                reservations.insert((req.reservation_id, req.tenant_id.clone()));
            }
            WriteOp::Release { tenant_id, reservation_id } => {
                reservations.insert((*reservation_id, tenant_id.clone()));
            }
        }
    }
    Needs {
        records: records.into_iter().collect(),
        reservations: reservations.into_iter().map(|(id, t)| (t, id)).collect(),
        event_keys: event_keys.into_iter().collect(),
        reservation_keys: reservation_keys.into_iter().collect(),
        open_reservations: open.into_iter().collect(),
        fire_states: webhooks,
        watermarks: watermarks.into_iter().collect(),
    }
}
