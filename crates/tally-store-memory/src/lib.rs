//! The in-memory store: every trait of tally-store over maps behind one async mutex. For unit
//! tests only; it keeps nothing across restarts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tally_domain::limits::PAGE_LEN_MAX;
use tally_domain::{
    ApiKey, AuditEntry, Entitlement, IdempotencyKey, MetricCode, Name, Override, Period, Plan, PlanCode,
    PlanSpec, QuotaLimit, RecordedEvent, Subscription, Tenant, TenantId, Timestamp, UsageError, UsageOutcome,
    UsageRecord, UsageRequest,
};
use tally_domain::{CommitRequest, Reservation, ReservationStatus, ReserveOutcome, ReserveRequest};
use tally_store::{
    AdminSearch, AdminSession, AdminUiStore, AuditStore, ConfigVersion, EntitlementLookup, EventListQuery,
    EventQuery, EventRecorder, EventTotal, KeyStore, LockedRecord, PlanStore, PutOutcome, RecordCursor,
    RecordKey, RecordListQuery, RecordSort, RecordTotal, RecordUpdate, ReservationStore, ReservationTx,
    SortKey, StoreError, TenantStore, UsageApplier, UsageRepository, UsageTx, VerifyInputs, apply_in_tx,
    commit_in_tx, release_in_tx, reserve_in_tx, reset_audit, reset_fact,
};
use tokio::sync::Mutex;
use uuid::Uuid;

mod webhooks;

type PeriodKey = (TenantId, MetricCode, Timestamp);

#[derive(Default)]
struct State {
    plans: BTreeMap<PlanCode, Plan>,
    plan_versions: BTreeMap<(PlanCode, i64), Plan>,
    tenants: BTreeMap<TenantId, Tenant>,
    subscriptions: BTreeMap<TenantId, Subscription>,
    overrides: BTreeMap<(TenantId, MetricCode), Override>,
    keys: Vec<ApiKey>,
    audit: Vec<AuditEntry>,
    records: HashMap<Uuid, UsageRecord>,
    record_ids: HashMap<PeriodKey, Uuid>,
    events: Vec<RecordedEvent>,
    event_keys: HashMap<(TenantId, IdempotencyKey), usize>,
    config_version: i64,
    admin_password: Option<String>,
    admin_sessions: BTreeMap<String, AdminSession>,
    metrics: BTreeMap<MetricCode, tally_domain::Metric>,
    reservations: BTreeMap<Uuid, Reservation>,
    webhooks: BTreeMap<tally_domain::WebhookId, tally_domain::Webhook>,
    fire_states: HashMap<tally_store::FireKey, bool>,
    deliveries: BTreeMap<Uuid, tally_domain::Delivery>,
}

impl State {
    fn entitlement(&self, tenant_id: &TenantId) -> EntitlementLookup {
        if !self.tenants.contains_key(tenant_id) {
            return EntitlementLookup::TenantMissing;
        }
        let Some(sub) = self.subscriptions.get(tenant_id) else {
            return EntitlementLookup::NoSubscription;
        };
        let Some(plan) = self.plans.get(&sub.plan_code) else {
            return EntitlementLookup::NoSubscription;
        };
        let overrides: Vec<Override> =
            self.overrides.iter().filter(|((t, _), _)| t == tenant_id).map(|(_, o)| o.clone()).collect();
        EntitlementLookup::Found(Entitlement::resolve(sub.clone(), plan, &overrides))
    }

    fn insert_record(&mut self, record: UsageRecord) {
        let key = (record.tenant_id.clone(), record.metric_code.clone(), record.period_start);
        self.record_ids.insert(key, record.id);
        self.records.insert(record.id, record);
    }

    fn push_event(&mut self, rec: RecordedEvent) {
        if let Some(k) = &rec.event.idempotency_key {
            self.event_keys.insert((rec.event.tenant_id.clone(), k.clone()), self.events.len());
        }
        self.events.push(rec);
    }
}

/// The in-memory store. Clones share one state.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

struct MemTx<'a> {
    state: &'a mut State,
}

impl UsageTx for MemTx<'_> {
    async fn load_entitlements(
        &mut self,
        tenants: &[TenantId],
    ) -> Result<HashMap<TenantId, EntitlementLookup>, StoreError> {
        Ok(tenants.iter().map(|t| (t.clone(), self.state.entitlement(t))).collect())
    }

    async fn find_events_by_keys(
        &mut self,
        keys: &[(TenantId, IdempotencyKey)],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(keys
            .iter()
            .filter_map(|k| self.state.event_keys.get(k))
            .map(|&i| self.state.events[i].clone())
            .collect())
    }

    async fn lock_records(
        &mut self,
        keys: &[RecordKey],
        now: Timestamp,
    ) -> Result<HashMap<RecordKey, LockedRecord>, StoreError> {
        let mut out = HashMap::new();
        for key in keys {
            let pk = (key.tenant_id.clone(), key.metric_code.clone(), key.period.start());
            let locked = match self.state.record_ids.get(&pk).and_then(|id| self.state.records.get(id)) {
                Some(r) => LockedRecord { id: r.id, current_usage: r.current_usage, created: false },
                None => {
                    let r = UsageRecord::new(key.tenant_id.clone(), key.metric_code.clone(), key.period, now);
                    let locked = LockedRecord { id: r.id, current_usage: 0, created: true };
                    self.state.insert_record(r);
                    locked
                }
            };
            out.insert(key.clone(), locked);
        }
        Ok(out)
    }

    async fn update_records(&mut self, updates: &[RecordUpdate], now: Timestamp) -> Result<(), StoreError> {
        for u in updates {
            let r = self.state.records.get_mut(&u.id).ok_or_else(|| StoreError::not_found("usage record"))?;
            r.current_usage = u.current_usage;
            r.updated_at = now;
        }
        Ok(())
    }

    async fn delete_records(&mut self, keys: &[(RecordKey, Uuid)]) -> Result<(), StoreError> {
        for (key, id) in keys {
            self.state.records.remove(id);
            self.state.record_ids.remove(&(
                key.tenant_id.clone(),
                key.metric_code.clone(),
                key.period.start(),
            ));
        }
        Ok(())
    }

    async fn reserved_sums(
        &mut self,
        keys: &[RecordKey],
        now: Timestamp,
    ) -> Result<HashMap<RecordKey, i64>, StoreError> {
        let mut out = HashMap::new();
        for key in keys {
            let held: i64 = self
                .state
                .reservations
                .values()
                .filter(|r| {
                    r.status_at(now) == ReservationStatus::Open
                        && r.tenant_id == key.tenant_id
                        && r.metric_code == key.metric_code
                        && r.period == key.period
                })
                .map(|r| r.amount)
                .sum();
            if held > 0 {
                out.insert(key.clone(), held);
            }
        }
        Ok(out)
    }

    async fn insert_events(&mut self, events: &[RecordedEvent]) -> Result<(), StoreError> {
        // Under the one mutex no other writer can take a key between the look-up and here.
        for rec in events {
            self.state.push_event(rec.clone());
        }
        Ok(())
    }

    async fn load_webhook_rules(&mut self) -> Result<Vec<tally_store::WebhookRule>, StoreError> {
        Ok(self.webhook_rules())
    }

    async fn load_fire_states(
        &mut self,
        keys: &[tally_store::FireKey],
    ) -> Result<tally_store::FireStates, StoreError> {
        Ok(self.fire_states(keys))
    }

    async fn write_outbox(
        &mut self,
        states: &[(tally_store::FireKey, bool)],
        deliveries: &[tally_domain::Delivery],
        _now: Timestamp,
    ) -> Result<(), StoreError> {
        self.write_outbox_rows(states, deliveries);
        Ok(())
    }
}

impl ReservationTx for MemTx<'_> {
    async fn find_reservation_by_key(
        &mut self,
        tenant: &TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<Reservation>, StoreError> {
        Ok(self
            .state
            .reservations
            .values()
            .find(|r| &r.tenant_id == tenant && r.idempotency_key.as_ref() == Some(key))
            .cloned())
    }

    async fn lock_reservation(
        &mut self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<Reservation>, StoreError> {
        Ok(self.state.reservations.get(&id).filter(|r| &r.tenant_id == tenant).cloned())
    }

    async fn count_open_reservations(
        &mut self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<i64, StoreError> {
        let n = self
            .state
            .reservations
            .values()
            .filter(|r| &r.tenant_id == tenant && r.status_at(now) == ReservationStatus::Open)
            .count();
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    }

    async fn insert_reservation(&mut self, r: &Reservation) -> Result<(), StoreError> {
        self.state.reservations.insert(r.id, r.clone());
        Ok(())
    }

    async fn settle_reservation(&mut self, r: &Reservation) -> Result<(), StoreError> {
        self.state.reservations.insert(r.id, r.clone());
        Ok(())
    }

    async fn find_event_by_id(
        &mut self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        Ok(self.state.events.iter().find(|e| e.event.id == id && &e.event.tenant_id == tenant).cloned())
    }
}

impl ReservationStore for MemoryStore {
    async fn reserve(
        &self,
        req: &ReserveRequest,
        now: Timestamp,
    ) -> Result<Result<ReserveOutcome, UsageError>, StoreError> {
        let mut state = self.state.lock().await;
        reserve_in_tx(&mut MemTx { state: &mut state }, req, now).await
    }

    async fn commit_reservation(
        &self,
        req: &CommitRequest,
        now: Timestamp,
    ) -> Result<Result<UsageOutcome, UsageError>, StoreError> {
        let mut state = self.state.lock().await;
        commit_in_tx(&mut MemTx { state: &mut state }, req, now).await
    }

    async fn release_reservation(
        &self,
        tenant: &TenantId,
        id: Uuid,
        now: Timestamp,
    ) -> Result<Result<(), UsageError>, StoreError> {
        let mut state = self.state.lock().await;
        release_in_tx(&mut MemTx { state: &mut state }, tenant, id, now).await
    }

    async fn list_open_reservations(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<Vec<Reservation>, StoreError> {
        let state = self.state.lock().await;
        // Ids are UUID v7: by id is by creation.
        Ok(state
            .reservations
            .values()
            .filter(|r| &r.tenant_id == tenant && r.status_at(now) == ReservationStatus::Open)
            .cloned()
            .collect())
    }

    async fn reserved_by_period(
        &self,
        tenant: &TenantId,
        now: Timestamp,
    ) -> Result<Vec<(MetricCode, Timestamp, i64)>, StoreError> {
        let state = self.state.lock().await;
        let mut sums: BTreeMap<(MetricCode, Timestamp), i64> = BTreeMap::new();
        for r in state.reservations.values() {
            if &r.tenant_id == tenant && r.status_at(now) == ReservationStatus::Open {
                *sums.entry((r.metric_code.clone(), r.period.start())).or_default() += r.amount;
            }
        }
        Ok(sums.into_iter().map(|((m, start), held)| (m, start, held)).collect())
    }

    async fn expire_reservations(&self, now: Timestamp, max: i64) -> Result<u64, StoreError> {
        let mut state = self.state.lock().await;
        let mut marked = 0u64;
        for r in state.reservations.values_mut() {
            if i64::try_from(marked).unwrap_or(i64::MAX) >= max {
                break;
            }
            if r.status == ReservationStatus::Open && r.expires_at <= now {
                r.status = ReservationStatus::Expired;
                r.settled_at = Some(r.expires_at);
                marked += 1;
            }
        }
        Ok(marked)
    }
}

impl UsageApplier for MemoryStore {
    async fn apply_usage(
        &self,
        requests: &[UsageRequest],
        now: Timestamp,
    ) -> Result<Vec<Result<UsageOutcome, UsageError>>, StoreError> {
        let mut state = self.state.lock().await;
        let mut tx = MemTx { state: &mut state };
        apply_in_tx(&mut tx, requests, now).await
    }

    async fn reset_usage(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period: Period,
        now: Timestamp,
        key_id: Option<Uuid>,
    ) -> Result<UsageRecord, StoreError> {
        let mut state = self.state.lock().await;
        let pk = (tenant.clone(), metric.clone(), period.start());
        let before = match state.record_ids.get(&pk).and_then(|id| state.records.get(id)) {
            Some(r) => r.clone(),
            None => {
                let r = UsageRecord::new(tenant.clone(), metric.clone(), period, now);
                state.insert_record(r.clone());
                r
            }
        };
        state.audit.push(reset_audit(key_id, now, &before));
        let mut after = before;
        after.reset(now);
        state.insert_record(after.clone());
        Ok(after)
    }
}

impl UsageRepository for MemoryStore {
    async fn list_by_tenant_and_metric(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        limit: u32,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let state = self.state.lock().await;
        let mut out: Vec<UsageRecord> = state
            .records
            .values()
            .filter(|r| &r.tenant_id == tenant && &r.metric_code == metric)
            .filter(|r| from.is_none_or(|f| r.period_start >= f) && to.is_none_or(|t| r.period_start < t))
            .cloned()
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.period_start));
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn get_current_period(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        at: Timestamp,
    ) -> Result<UsageRecord, StoreError> {
        let state = self.state.lock().await;
        state
            .records
            .values()
            .find(|r| {
                &r.tenant_id == tenant
                    && &r.metric_code == metric
                    && r.period_start <= at
                    && at < r.period_end
            })
            .cloned()
            .ok_or_else(|| StoreError::not_found("usage record"))
    }

    async fn get_by_id(&self, tenant: &TenantId, id: Uuid) -> Result<UsageRecord, StoreError> {
        let state = self.state.lock().await;
        state
            .records
            .get(&id)
            .filter(|r| &r.tenant_id == tenant)
            .cloned()
            .ok_or_else(|| StoreError::not_found("usage record"))
    }

    async fn save(&self, record: &UsageRecord) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        let pk = (record.tenant_id.clone(), record.metric_code.clone(), record.period_start);
        if let Some(other) = state.record_ids.get(&pk)
            && *other != record.id
        {
            return Err(StoreError::Conflict("quota_usage_record_uq".to_owned()));
        }
        state.insert_record(record.clone());
        Ok(())
    }

    async fn delete(&self, tenant: &TenantId, id: Uuid) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        match state.records.get(&id) {
            Some(r) if &r.tenant_id == tenant => {
                let pk = (r.tenant_id.clone(), r.metric_code.clone(), r.period_start);
                state.record_ids.remove(&pk);
                state.records.remove(&id);
                Ok(())
            }
            _ => Err(StoreError::not_found("usage record")),
        }
    }

    async fn get_for_period(
        &self,
        tenant: &TenantId,
        metric: &MetricCode,
        period_start: Timestamp,
    ) -> Result<UsageRecord, StoreError> {
        let state = self.state.lock().await;
        state
            .record_ids
            .get(&(tenant.clone(), metric.clone(), period_start))
            .and_then(|id| state.records.get(id))
            .cloned()
            .ok_or_else(|| StoreError::not_found("usage record"))
    }
}

impl EventRecorder for MemoryStore {
    async fn record(&self, event: &RecordedEvent) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        if let Some(k) = &event.event.idempotency_key
            && state.event_keys.contains_key(&(event.event.tenant_id.clone(), k.clone()))
        {
            return Err(StoreError::Conflict("quota_usage_event_idem_uq".to_owned()));
        }
        if state.events.iter().any(|e| e.event.id == event.event.id) {
            return Err(StoreError::Conflict("quota_usage_event_pkey".to_owned()));
        }
        state.push_event(event.clone());
        Ok(())
    }

    async fn get_events_for_metric(
        &self,
        tenant: &TenantId,
        query: &EventQuery,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.state.lock().await;
        let mut out: Vec<RecordedEvent> = state
            .events
            .iter()
            .filter(|e| &e.event.tenant_id == tenant)
            .filter(|e| query.metric_code.as_ref().is_none_or(|m| &e.event.metric_code == m))
            .filter(|e| query.from.is_none_or(|f| e.event.timestamp >= f))
            .filter(|e| query.to.is_none_or(|t| e.event.timestamp < t))
            .filter(|e| query.after.is_none_or(|c| (e.event.timestamp, e.event.id) < (c.timestamp, c.id)))
            .cloned()
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse((e.event.timestamp, e.event.id)));
        out.truncate(query.limit as usize);
        Ok(out)
    }
}

impl PlanStore for MemoryStore {
    async fn put_plan(
        &self,
        code: &PlanCode,
        spec: &PlanSpec,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<PutOutcome<Plan>, StoreError> {
        let mut state = self.state.lock().await;
        let outcome = match state.plans.get(code) {
            Some(p) if p.matches(spec) => return Ok(PutOutcome::Unchanged(p.clone())),
            Some(p) => PutOutcome::Updated(Plan {
                name: spec.name.clone(),
                limits: spec.limits.clone(),
                version: p.version + 1,
                updated_at: now,
                ..p.clone()
            }),
            None => PutOutcome::Created(Plan {
                code: code.clone(),
                name: spec.name.clone(),
                limits: spec.limits.clone(),
                version: 1,
                created_at: now,
                updated_at: now,
            }),
        };
        let plan = match &outcome {
            PutOutcome::Created(p) | PutOutcome::Updated(p) | PutOutcome::Unchanged(p) => p.clone(),
        };
        state.plan_versions.insert((code.clone(), plan.version), plan.clone());
        state.plans.insert(code.clone(), plan);
        state.audit.push(audit.clone());
        state.config_version += 1;
        Ok(outcome)
    }

    async fn find_plan(&self, code: &PlanCode) -> Result<Option<Plan>, StoreError> {
        Ok(self.state.lock().await.plans.get(code).cloned())
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        Ok(self.state.lock().await.plans.values().cloned().collect())
    }

    async fn list_plan_versions(&self, code: &PlanCode) -> Result<Vec<Plan>, StoreError> {
        let state = self.state.lock().await;
        let mut out: Vec<Plan> =
            state.plan_versions.iter().filter(|((c, _), _)| c == code).map(|(_, p)| p.clone()).collect();
        out.reverse();
        Ok(out)
    }

    async fn delete_plan(&self, code: &PlanCode, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        if !state.plans.contains_key(code) {
            return Err(StoreError::not_found(format!("plan {code}")));
        }
        if state.subscriptions.values().any(|s| &s.plan_code == code) {
            return Err(StoreError::Conflict(format!("plan {code} has subscribers")));
        }
        state.plans.remove(code);
        state.plan_versions.retain(|(c, _), _| c != code);
        state.audit.push(audit.clone());
        state.config_version += 1;
        Ok(())
    }
}

impl tally_store::MetricStore for MemoryStore {
    async fn put_metric(
        &self,
        code: &MetricCode,
        spec: &tally_domain::MetricSpec,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<PutOutcome<tally_domain::Metric>, StoreError> {
        let mut state = self.state.lock().await;
        let outcome = match state.metrics.get(code) {
            Some(m) if &m.spec == spec => return Ok(PutOutcome::Unchanged(m.clone())),
            Some(m) => {
                PutOutcome::Updated(tally_domain::Metric { spec: spec.clone(), updated_at: now, ..m.clone() })
            }
            None => PutOutcome::Created(tally_domain::Metric {
                code: code.clone(),
                spec: spec.clone(),
                created_at: now,
                updated_at: now,
            }),
        };
        let metric = match &outcome {
            PutOutcome::Created(m) | PutOutcome::Updated(m) | PutOutcome::Unchanged(m) => m.clone(),
        };
        state.metrics.insert(code.clone(), metric);
        state.audit.push(audit.clone());
        state.config_version += 1;
        Ok(outcome)
    }

    async fn find_metric(&self, code: &MetricCode) -> Result<Option<tally_domain::Metric>, StoreError> {
        Ok(self.state.lock().await.metrics.get(code).cloned())
    }

    async fn list_metrics(&self) -> Result<Vec<tally_domain::Metric>, StoreError> {
        Ok(self.state.lock().await.metrics.values().cloned().collect())
    }
}

impl TenantStore for MemoryStore {
    async fn put_tenant(
        &self,
        tenant_id: &TenantId,
        name: &Name,
        now: Timestamp,
    ) -> Result<PutOutcome<Tenant>, StoreError> {
        let mut state = self.state.lock().await;
        if let Some(t) = state.tenants.get_mut(tenant_id) {
            if &t.name == name {
                return Ok(PutOutcome::Unchanged(t.clone()));
            }
            t.name = name.clone();
            let t = t.clone();
            state.config_version += 1;
            return Ok(PutOutcome::Updated(t));
        }
        let t = Tenant {
            tenant_id: tenant_id.clone(),
            name: name.clone(),
            internal_id: Uuid::new_v4().as_u64_pair().0,
            created_at: now,
        };
        state.tenants.insert(tenant_id.clone(), t.clone());
        state.config_version += 1;
        Ok(PutOutcome::Created(t))
    }

    async fn find_tenant(&self, tenant_id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        Ok(self.state.lock().await.tenants.get(tenant_id).cloned())
    }

    async fn list_tenants(&self, after: Option<&TenantId>, limit: u32) -> Result<Vec<Tenant>, StoreError> {
        let state = self.state.lock().await;
        Ok(state
            .tenants
            .values()
            .filter(|t| after.is_none_or(|a| &t.tenant_id > a))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn put_subscription(
        &self,
        tenant_id: &TenantId,
        plan: &PlanCode,
        anchor: Option<Timestamp>,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<Subscription, StoreError> {
        let mut state = self.state.lock().await;
        if !state.tenants.contains_key(tenant_id) {
            return Err(StoreError::not_found(format!("tenant {tenant_id}")));
        }
        if !state.plans.contains_key(plan) {
            return Err(StoreError::not_found(format!("plan {plan}")));
        }
        let sub = match state.subscriptions.get(tenant_id) {
            Some(old) => Subscription {
                tenant_id: tenant_id.clone(),
                plan_code: plan.clone(),
                anchor: anchor.unwrap_or(old.anchor),
                started_at: if &old.plan_code == plan { old.started_at } else { now },
            },
            None => Subscription {
                tenant_id: tenant_id.clone(),
                plan_code: plan.clone(),
                anchor: anchor.unwrap_or(now),
                started_at: now,
            },
        };
        if state.subscriptions.get(tenant_id) != Some(&sub) {
            state.subscriptions.insert(tenant_id.clone(), sub.clone());
            state.audit.push(audit.clone());
            state.config_version += 1;
        }
        Ok(sub)
    }

    async fn find_subscription(&self, tenant_id: &TenantId) -> Result<Option<Subscription>, StoreError> {
        Ok(self.state.lock().await.subscriptions.get(tenant_id).cloned())
    }

    async fn delete_subscription(&self, tenant_id: &TenantId, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        state.subscriptions.remove(tenant_id).ok_or_else(|| StoreError::not_found("subscription"))?;
        state.audit.push(audit.clone());
        state.config_version += 1;
        Ok(())
    }

    async fn list_subscribers(&self, plan: &PlanCode, limit: u32) -> Result<Vec<TenantId>, StoreError> {
        let state = self.state.lock().await;
        Ok(state
            .subscriptions
            .values()
            .filter(|s| &s.plan_code == plan)
            .map(|s| s.tenant_id.clone())
            .take(limit as usize)
            .collect())
    }

    async fn put_override(
        &self,
        tenant_id: &TenantId,
        limit: &QuotaLimit,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        if !state.tenants.contains_key(tenant_id) {
            return Err(StoreError::not_found(format!("tenant {tenant_id}")));
        }
        let key = (tenant_id.clone(), limit.metric_code.clone());
        if state.overrides.get(&key) != Some(limit) {
            state.overrides.insert(key, limit.clone());
            state.audit.push(audit.clone());
            state.config_version += 1;
        }
        Ok(())
    }

    async fn delete_override(
        &self,
        tenant_id: &TenantId,
        metric: &MetricCode,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        state
            .overrides
            .remove(&(tenant_id.clone(), metric.clone()))
            .ok_or_else(|| StoreError::not_found("override"))?;
        state.audit.push(audit.clone());
        state.config_version += 1;
        Ok(())
    }

    async fn list_overrides(&self, tenant_id: &TenantId) -> Result<Vec<Override>, StoreError> {
        let state = self.state.lock().await;
        Ok(state.overrides.iter().filter(|((t, _), _)| t == tenant_id).map(|(_, o)| o.clone()).collect())
    }

    async fn find_entitlement(&self, tenant_id: &TenantId) -> Result<EntitlementLookup, StoreError> {
        Ok(self.state.lock().await.entitlement(tenant_id))
    }
}

impl KeyStore for MemoryStore {
    async fn insert_key(&self, key: &ApiKey, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        if state.keys.iter().any(|k| k.id == key.id || k.key_hash == key.key_hash) {
            return Err(StoreError::Conflict("tally_api_key".to_owned()));
        }
        state.keys.push(key.clone());
        state.audit.push(audit.clone());
        state.config_version += 1;
        Ok(())
    }

    async fn find_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(self.state.lock().await.keys.iter().find(|k| k.key_hash == key_hash).cloned())
    }

    async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        Ok(self.state.lock().await.keys.clone())
    }

    async fn revoke_key(&self, id: Uuid, now: Timestamp, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        let key = state
            .keys
            .iter_mut()
            .find(|k| k.id == id && k.revoked_at.is_none())
            .ok_or_else(|| StoreError::not_found(format!("key {id}")))?;
        key.revoked_at = Some(now);
        state.audit.push(audit.clone());
        state.config_version += 1;
        Ok(())
    }

    async fn touch_key(&self, id: Uuid, now: Timestamp) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        if let Some(k) = state.keys.iter_mut().find(|k| k.id == id) {
            k.last_used_at = Some(now);
        }
        Ok(())
    }
}

impl ConfigVersion for MemoryStore {
    async fn config_version(&self) -> Result<i64, StoreError> {
        Ok(self.state.lock().await.config_version)
    }
}

impl AuditStore for MemoryStore {
    async fn list_audit(
        &self,
        tenant_id: Option<&TenantId>,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let state = self.state.lock().await;
        let mut out: Vec<AuditEntry> = state
            .audit
            .iter()
            .filter(|e| tenant_id.is_none_or(|t| e.tenant_id.as_ref() == Some(t)))
            .filter(|e| before.is_none_or(|b| e.id < b))
            .cloned()
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.id));
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn verify_inputs(&self) -> Result<VerifyInputs, StoreError> {
        let state = self.state.lock().await;
        let mut records: Vec<RecordTotal> = state
            .records
            .values()
            .map(|r| {
                Ok(RecordTotal {
                    id: r.id,
                    key: RecordKey {
                        tenant_id: r.tenant_id.clone(),
                        metric_code: r.metric_code.clone(),
                        period: r.period()?,
                    },
                    current_usage: r.current_usage,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        records.sort_by(|a, b| a.key.cmp(&b.key));
        let mut sums: BTreeMap<PeriodKey, (i64, i64)> = BTreeMap::new();
        for e in &state.events {
            let k = (e.event.tenant_id.clone(), e.event.metric_code.clone(), e.receipt.period.start());
            let entry = sums.entry(k).or_default();
            entry.0 = entry.0.saturating_add(e.event.amount);
            entry.1 += 1;
        }
        let events = sums
            .into_iter()
            .map(|((tenant_id, metric_code, period_start), (amount_sum, n_events))| EventTotal {
                tenant_id,
                metric_code,
                period_start,
                amount_sum,
                n_events,
            })
            .collect();
        let mut resets = Vec::new();
        for entry in &state.audit {
            if let Some(fact) = reset_fact(entry)? {
                resets.push(fact);
            }
        }
        Ok(VerifyInputs { records, events, resets })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Rows an admin list returns at most, as in the other adapters: a full page and one more.
const ADMIN_LIST_LEN_MAX: u32 = PAGE_LEN_MAX + 1;

/// Whether a row of `tenant` and `metric` passes the search, when there is one.
fn passes(search: Option<&AdminSearch>, tenant: &TenantId, metric: &MetricCode) -> bool {
    search.is_none_or(|s| s.matches(tenant, metric))
}

/// A cursor whose key is not of the sort's kind is an error, as in the other adapters.
fn check_cursor(sort: RecordSort, cursor: &RecordCursor) -> Result<(), StoreError> {
    let kind_matches = matches!(
        (sort, &cursor.key),
        (RecordSort::CreatedAt | RecordSort::PeriodEnd, SortKey::Time(_))
            | (RecordSort::CurrentUsage, SortKey::Int(_))
            | (RecordSort::TenantId | RecordSort::MetricCode, SortKey::Text(_))
    );
    if !kind_matches {
        return Err(StoreError::Other(format!(
            "a cursor at {:?} cannot continue a list sorted by {sort:?}",
            cursor.key
        )));
    }
    Ok(())
}

/// Whether `record` comes strictly after `cursor` in the list's order.
fn is_after(sort: RecordSort, descending: bool, record: &UsageRecord, cursor: &RecordCursor) -> bool {
    let order = (sort.key_of(record), record.id).cmp(&(cursor.key.clone(), cursor.id));
    if descending { order.is_lt() } else { order.is_gt() }
}

impl AdminUiStore for MemoryStore {
    async fn list_records_admin(&self, query: &RecordListQuery) -> Result<Vec<UsageRecord>, StoreError> {
        if let Some(cursor) = &query.after {
            check_cursor(query.sort, cursor)?;
        }
        let state = self.state.lock().await;
        let mut out: Vec<UsageRecord> = state
            .records
            .values()
            .filter(|r| query.metric_code.as_ref().is_none_or(|m| &r.metric_code == m))
            .filter(|r| query.period_end.contains(r.period_end) && query.created_at.contains(r.created_at))
            .filter(|r| passes(query.search.as_ref(), &r.tenant_id, &r.metric_code))
            .filter(|r| query.after.as_ref().is_none_or(|c| is_after(query.sort, query.descending, r, c)))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            let order = (query.sort.key_of(a), a.id).cmp(&(query.sort.key_of(b), b.id));
            if query.descending { order.reverse() } else { order }
        });
        out.truncate(query.limit.min(ADMIN_LIST_LEN_MAX) as usize);
        Ok(out)
    }

    async fn list_events_admin(&self, query: &EventListQuery) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.state.lock().await;
        let mut out: Vec<RecordedEvent> = state
            .events
            .iter()
            .filter(|e| query.metric_code.as_ref().is_none_or(|m| &e.event.metric_code == m))
            .filter(|e| query.created_at.contains(e.event.created_at))
            .filter(|e| passes(query.search.as_ref(), &e.event.tenant_id, &e.event.metric_code))
            .filter(|e| query.after.is_none_or(|after| (e.event.created_at, e.event.id) < after))
            .cloned()
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse((e.event.created_at, e.event.id)));
        out.truncate(query.limit.min(ADMIN_LIST_LEN_MAX) as usize);
        Ok(out)
    }

    async fn find_event(&self, tenant: &TenantId, id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
        let state = self.state.lock().await;
        Ok(state.events.iter().find(|e| e.event.id == id && &e.event.tenant_id == tenant).cloned())
    }

    async fn list_tenant_ids_by_prefix(&self, prefix: &str, limit: u32) -> Result<Vec<TenantId>, StoreError> {
        let state = self.state.lock().await;
        Ok(state
            .tenants
            .keys()
            .filter(|t| t.as_str().starts_with(prefix))
            .take(limit.min(ADMIN_LIST_LEN_MAX) as usize)
            .cloned()
            .collect())
    }

    async fn list_metric_codes(&self) -> Result<Vec<MetricCode>, StoreError> {
        let state = self.state.lock().await;
        let plans = state.plans.values().chain(state.plan_versions.values());
        let mut codes: BTreeSet<MetricCode> =
            plans.flat_map(|p| p.limits.iter().map(|l| l.metric_code.clone())).collect();
        codes.extend(state.overrides.keys().map(|(_, m)| m.clone()));
        Ok(codes.into_iter().collect())
    }

    async fn set_admin_password(&self, phc_hash: &str, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        if state.admin_password.as_deref() == Some(phc_hash) {
            return Ok(());
        }
        state.admin_password = Some(phc_hash.to_owned());
        state.audit.push(audit.clone());
        Ok(())
    }

    async fn find_admin_password(&self) -> Result<Option<String>, StoreError> {
        Ok(self.state.lock().await.admin_password.clone())
    }

    async fn insert_admin_session(&self, session: &AdminSession) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        if state.admin_sessions.contains_key(&session.token_hash) {
            return Err(StoreError::Conflict("tally_admin_session_pkey".to_owned()));
        }
        state.admin_sessions.insert(session.token_hash.clone(), session.clone());
        Ok(())
    }

    async fn find_admin_session(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<Option<AdminSession>, StoreError> {
        let state = self.state.lock().await;
        Ok(state.admin_sessions.get(token_hash).filter(|s| now < s.expires_at).cloned())
    }

    async fn delete_admin_session(&self, token_hash: &str) -> Result<(), StoreError> {
        self.state.lock().await.admin_sessions.remove(token_hash);
        Ok(())
    }

    async fn delete_expired_admin_sessions(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut state = self.state.lock().await;
        let before = state.admin_sessions.len();
        state.admin_sessions.retain(|_, s| now < s.expires_at);
        Ok((before - state.admin_sessions.len()) as u64)
    }
}
