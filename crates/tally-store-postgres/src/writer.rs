//! The PostgreSQL write side: writer tasks (`PgConfig::writers`, default
//! `GROUP_COMMIT_WRITERS_DEFAULT`) drain the group-commit queue (`tally_store::write`), each
//! carrying its batches out in READ COMMITTED transactions on a pooled connection.
//!
//! A batch's transaction, in order:
//! 1. `BEGIN` (with `SET LOCAL plan_cache_mode`), `tally_config_version`, the reservations it
//!    settles (`FOR UPDATE`, by id), the closing watermarks of the tenants writing into a
//!    period that may be closed (their `tally_tenant` rows `FOR SHARE`, in tenant order, only
//!    when there are such writes: see `PgUsageTx::load_watermarks`), the records it touches
//!    (locked in the global key order, missing ones created at zero, see
//!    `PgUsageTx::lock_records`) with what open holds sum to on them, the events and
//!    reservations already stored under its idempotency keys, and the threshold states when
//!    webhooks are registered;
//! 2. the decision, in Rust (`tally_engine::plan`);
//! 3. the writes (with the audit entries of its corrections) and `COMMIT`.
//!
//! Several writers run batches at once; the record locks taken in key order serialize those
//! that share a record, and never deadlock. A close takes a tenant's row exclusively and then
//! its records (`crate::periods`), the order of the batches that share the row. A lock needed
//! after others are held (`load_more`: a record, a watermark) is taken with `NOWAIT`, and a
//! taken one re-runs the batch.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, RwLock};

use sqlx::PgPool;
use tally_domain::{RecordKey, TenantId, Timestamp};
use tally_store::{
    Ctx, EntitlementLookup, FireStates, Loaded, LoadedReservation, Needs, RecordWrite, StoreError,
    WebhookRule, WriteTx, Writes,
};

use crate::rows::{get, map_err};
use crate::scope::{Scope, internal_id_from_db};
use crate::usage::{BEGIN_READ_COMMITTED, LockWait, PgUsageTx, load_entitlements};
use crate::{StatementLog, Tenancy};

/// Where each tenant's quota tables live (schema tenancy), shared by a store's clones and
/// writers. A tenant's internal id never changes, so neither does its schema.
pub(crate) type ScopeMap = Arc<RwLock<HashMap<TenantId, Scope>>>;

/// One writer task's side of the store.
pub(crate) struct PgWriter {
    pool: PgPool,
    log: StatementLog,
    tenancy: Tenancy,
    scopes: ScopeMap,
    open: Option<PgUsageTx>,
}

impl PgWriter {
    pub(crate) fn new(pool: PgPool, log: StatementLog, tenancy: Tenancy, scopes: ScopeMap) -> PgWriter {
        PgWriter { pool, log, tenancy, scopes, open: None }
    }

    fn tx(&mut self) -> Result<&mut PgUsageTx, StoreError> {
        self.open.as_mut().ok_or_else(|| StoreError::Other("no write transaction is open".to_owned()))
    }

    /// Gives the open transaction the schemas of `tenants` that exist (schema tenancy),
    /// reading only those never seen before.
    async fn scope_tenants(&mut self, tenants: &[&TenantId]) -> Result<(), StoreError> {
        if self.tenancy == Tenancy::Shared {
            return Ok(());
        }
        let mut unknown: Vec<&str> = Vec::new();
        {
            let known = self.scopes.read().unwrap_or_else(|p| p.into_inner());
            let tx = self
                .open
                .as_mut()
                .ok_or_else(|| StoreError::Other("no write transaction is open".to_owned()))?;
            for tenant in tenants {
                match known.get(*tenant) {
                    Some(scope) => {
                        tx.scopes.insert((*tenant).clone(), scope.clone());
                    }
                    None => unknown.push(tenant.as_str()),
                }
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let log = self.log.clone();
        let tx = self.tx()?;
        let rows = log
            .query("SELECT tenant_id, internal_id FROM tally_tenant WHERE tenant_id = ANY($1)")
            .bind(unknown)
            .fetch_all(&mut *tx.tx)
            .await
            .map_err(map_err)?;
        let mut known = self.scopes.write().unwrap_or_else(|p| p.into_inner());
        let tx =
            self.open.as_mut().ok_or_else(|| StoreError::Other("no write transaction is open".to_owned()))?;
        for row in &rows {
            let tenant = TenantId::parse(get(row, "tenant_id")?)?;
            let internal_id: i64 = get(row, "internal_id")?;
            let scope = Scope::of_internal_id(internal_id_from_db(internal_id));
            tx.scopes.insert(tenant.clone(), scope.clone());
            known.insert(tenant, scope);
        }
        Ok(())
    }

    /// Loads what `needs` asks for and `loaded` lacks; `holding` when record locks are held.
    async fn load(
        &mut self,
        needs: &Needs,
        now: Timestamp,
        loaded: &mut Loaded,
        holding: bool,
        with_version: bool,
    ) -> Result<Option<i64>, StoreError> {
        let tenants = needs.tenants();
        self.scope_tenants(&tenants).await?;
        let schema_tenancy = self.tenancy == Tenancy::Schema;
        let tx = self.tx()?;
        let mut keys: BTreeSet<RecordKey> = BTreeSet::new();
        let wanted: Vec<(TenantId, uuid::Uuid)> = needs
            .reservations
            .iter()
            .filter(|(_, id)| !loaded.reservations.contains_key(id))
            .cloned()
            .collect();
        let locked = if wanted.is_empty() { Vec::new() } else { tx.lock_reservations(&wanted).await? };
        for reservation in locked {
            // A committed one answers its replay with its commit's event.
            let committed_event = match reservation.committed_event_id {
                Some(event_id) => tx.find_event_by_id(&reservation.tenant_id, event_id).await?,
                None => None,
            };
            keys.insert(RecordKey {
                tenant_id: reservation.tenant_id.clone(),
                metric_code: reservation.metric_code.clone(),
                period: reservation.period,
            });
            loaded.reservations.insert(reservation.id, LoadedReservation { reservation, committed_event });
        }
        // The watermarks, before any record lock (see `PgUsageTx::load_watermarks`): of the
        // tenants writing into a period that may be closed, and of those whose reservations,
        // settled here, lie in one (a commit into a closed period is refused).
        let window = Ctx::new(now, chrono::Duration::zero());
        let mut marks: BTreeSet<&TenantId> = loaded.missing_watermarks(needs).collect();
        for held in loaded.reservations.values() {
            let r = &held.reservation;
            if !loaded.watermarks.contains_key(&r.tenant_id) && window.may_be_closed(r.period.end()) {
                marks.insert(&r.tenant_id);
            }
        }
        if !marks.is_empty() {
            let marks: Vec<&TenantId> = marks.into_iter().collect();
            // Holding record locks, the share must not wait out of order: a close holding the
            // tenant may be waiting for one of them.
            let wait = if holding || !loaded.records.is_empty() { LockWait::NoWait } else { LockWait::Block };
            let found = tx.load_watermarks(&marks, wait).await?;
            loaded.watermarks.extend(found);
        }
        keys.extend(needs.records.iter().cloned());
        let keys: Vec<RecordKey> = keys.into_iter().filter(|k| !loaded.records.contains_key(k)).collect();
        // Only tenants that exist have records; the decision refuses the others.
        let keys: Vec<RecordKey> = if schema_tenancy {
            keys.into_iter().filter(|k| tx.scopes.contains_key(&k.tenant_id)).collect()
        } else {
            keys
        };
        if !keys.is_empty() {
            let holding = holding || !loaded.records.is_empty();
            let mut records = tx.lock_records(&keys, now, holding).await?;
            for (key, held) in tx.reserved_sums(&keys, now).await? {
                if let Some(record) = records.get_mut(&key) {
                    record.reserved = held;
                }
            }
            if needs.fire_states || loaded.fire_states.is_some() {
                let states = tx.load_fire_states_of_records(&keys).await?;
                loaded.fire_states.get_or_insert_with(FireStates::new).extend(states);
            }
            loaded.records.extend(records);
        } else if needs.fire_states && loaded.fire_states.is_none() {
            let all: Vec<RecordKey> = loaded.records.keys().cloned().collect();
            let states =
                if all.is_empty() { FireStates::new() } else { tx.load_fire_states_of_records(&all).await? };
            loaded.fire_states = Some(states);
        }
        // After the record locks: a concurrent retry of the same key on the same record has
        // committed by now, so it is found here rather than conflicting at the insert (which
        // re-runs the batch, and under a storm of retries ran out of attempts).
        let event_keys = loaded.missing_event_keys(needs);
        let mut version = None;
        if !event_keys.is_empty() {
            let events = if with_version {
                let (v, events) = tx.config_version_and_events(&event_keys).await?;
                version = Some(v);
                events
            } else {
                tx.find_events_by_keys(&event_keys).await?
            };
            loaded.add_events(events);
        }
        let keys: Vec<_> = loaded.missing_reservation_keys(needs).cloned().collect();
        for (tenant, key) in keys {
            if let Some(found) = tx.find_reservation_by_key(&tenant, &key).await? {
                loaded.reservations_by_key.insert((tenant, key), found);
            }
        }
        let tenants: Vec<TenantId> = loaded.missing_open_counts(needs).cloned().collect();
        if !tenants.is_empty() {
            let counts = tx.count_open_reservations_of(&tenants, now).await?;
            loaded.open_reservations.extend(counts);
        }
        Ok(version)
    }

    async fn write_all(&mut self, writes: &Writes, now: Timestamp) -> Result<(), StoreError> {
        let tx = self.tx()?;
        let updates: Vec<&RecordWrite> = writes.records.iter().collect();
        if updates.iter().any(|w| w.insert) {
            return Err(StoreError::Other("a PostgreSQL batch never holds an absent record".to_owned()));
        }
        if !writes.events.is_empty() || !updates.is_empty() {
            tx.write_usage(&writes.events, &updates, now).await?;
        }
        if !writes.delete_records.is_empty() {
            tx.delete_records(&writes.delete_records).await?;
        }
        if !writes.new_reservations.is_empty() {
            tx.insert_reservations(&writes.new_reservations).await?;
        }
        if !writes.settled_reservations.is_empty() {
            tx.settle_reservations(&writes.settled_reservations).await?;
        }
        if !writes.fire_states.is_empty() || !writes.deliveries.is_empty() {
            tx.write_outbox(&writes.fire_states, &writes.deliveries, now).await?;
        }
        if !writes.audit.is_empty() {
            tx.insert_audit(&writes.audit).await?;
        }
        Ok(())
    }

    async fn finish(&mut self, outcome: Result<(), StoreError>) -> Result<(), StoreError> {
        let Some(open) = self.open.take() else { return outcome };
        match outcome {
            Ok(()) => self.log.commit(open.tx).await.map_err(map_err),
            Err(e) => {
                if let Err(rollback) = self.log.rollback(open.tx).await {
                    tracing::debug!(error = %rollback, "rollback of a failed write transaction failed");
                }
                Err(e)
            }
        }
    }

    async fn entitlements_outside(
        &mut self,
        tenants: &[TenantId],
    ) -> Result<HashMap<TenantId, (u64, EntitlementLookup)>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        load_entitlements(&self.log, &mut conn, tenants).await
    }
}

impl WriteTx for PgWriter {
    type Other = Infallible;

    async fn run_other(&mut self, job: Infallible) {
        match job {}
    }

    async fn load_entitlements(
        &mut self,
        tenants: &[TenantId],
    ) -> Result<Vec<(TenantId, EntitlementLookup)>, StoreError> {
        let mut found = match self.open.as_mut() {
            Some(tx) => load_entitlements(&self.log, &mut tx.tx, tenants).await?,
            None => self.entitlements_outside(tenants).await?,
        };
        if self.tenancy == Tenancy::Schema {
            let mut known = self.scopes.write().unwrap_or_else(|p| p.into_inner());
            for (tenant, (internal_id, _)) in &found {
                known.insert(tenant.clone(), Scope::of_internal_id(*internal_id));
            }
        }
        Ok(tenants
            .iter()
            .map(|t| (t.clone(), found.remove(t).map_or(EntitlementLookup::TenantMissing, |(_, e)| e)))
            .collect())
    }

    async fn load_webhook_rules(&mut self) -> Result<Vec<WebhookRule>, StoreError> {
        match self.open.as_mut() {
            Some(tx) => tx.load_webhook_rules().await,
            None => {
                let mut conn = self.pool.acquire().await.map_err(map_err)?;
                crate::webhooks::load_webhook_rules(&self.log, &mut conn).await
            }
        }
    }

    async fn begin(&mut self, needs: &Needs, now: Timestamp) -> Result<Loaded, StoreError> {
        let tx = self.log.begin(&self.pool, BEGIN_READ_COMMITTED).await.map_err(map_err)?;
        self.open =
            Some(PgUsageTx { tx, log: self.log.clone(), tenancy: self.tenancy, scopes: HashMap::new() });
        let mut loaded = Loaded::default();
        let outcome = async {
            // The version comes with the taken keys, read after the record locks; a batch
            // with no key to look up reads it on its own.
            let version = match self.load(needs, now, &mut loaded, false, true).await? {
                Some(v) => v,
                None => self.tx()?.config_version().await?,
            };
            loaded.config_version = version;
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => Ok(loaded),
            Err(e) => {
                WriteTx::rollback(self).await;
                Err(e)
            }
        }
    }

    async fn load_more(
        &mut self,
        needs: &Needs,
        now: Timestamp,
        loaded: &mut Loaded,
    ) -> Result<(), StoreError> {
        self.load(needs, now, loaded, true, false).await.map(|_| ())
    }

    async fn commit(&mut self, writes: &Writes, now: Timestamp) -> Result<(), StoreError> {
        let outcome = self.write_all(writes, now).await;
        self.finish(outcome).await
    }

    async fn rollback(&mut self) {
        let _ = self.finish(Err(StoreError::Retry)).await;
    }
}
