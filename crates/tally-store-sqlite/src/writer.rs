//! The SQLite write side: one writer task per store drains the group-commit queue
//! (`tally_store::write`), and carries each batch out in one `BEGIN IMMEDIATE` transaction.
//!
//! SQLite takes one writer at a time, so one writer task is all there is: it holds the
//! store's in-process writer lock for the length of each transaction (admin writes take the
//! same lock), and `BEGIN IMMEDIATE` takes the database's write lock up front, so other
//! processes on the file (`tally record`, `tally import django`) wait for it up to
//! `SQLITE_BUSY_TIMEOUT`, as it waits for them. Under that lock reading is locking: no
//! record can change or appear before the commit, so records are read, not created ahead
//! (`RecordState::Absent`), and `load_more` never has to wait.

use std::convert::Infallible;
use std::sync::Arc;

use sqlx::{Sqlite, SqlitePool, Transaction};
use tally_domain::{RecordKey, TenantId, Timestamp};
use tally_store::{
    EntitlementLookup, FireStates, Loaded, LoadedReservation, Needs, RecordWrite, StoreError, WebhookRule,
    WriteTx, Writes,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::store_error;
use crate::usage::SqliteUsageTx;
use crate::{SQLITE_WRITER_WAIT_MAX, StatementLog, rollback};

/// The writer task's side of the store: the pool, the writer lock and the open transaction.
pub(crate) struct SqliteWriter {
    pool: SqlitePool,
    log: StatementLog,
    lock: Arc<Mutex<()>>,
    open: Option<Open>,
}

/// A transaction in progress, with the writer lock it holds.
struct Open {
    /// Declared first, so that it is dropped (rolled back) before the lock is released.
    tx: Transaction<'static, Sqlite>,
    _lock: OwnedMutexGuard<()>,
}

impl SqliteWriter {
    pub(crate) fn new(pool: SqlitePool, log: StatementLog, lock: Arc<Mutex<()>>) -> SqliteWriter {
        SqliteWriter { pool, log, lock, open: None }
    }

    fn in_tx(&mut self) -> Result<SqliteUsageTx<'_>, StoreError> {
        let open =
            self.open.as_mut().ok_or_else(|| StoreError::Other("no write transaction is open".to_owned()))?;
        Ok(SqliteUsageTx { conn: &mut open.tx, log: &self.log })
    }

    /// Loads what `needs` asks for and `loaded` lacks.
    async fn load(&mut self, needs: &Needs, now: Timestamp, loaded: &mut Loaded) -> Result<(), StoreError> {
        let mut tx = self.in_tx()?;
        let tenants: Vec<&TenantId> = loaded.missing_watermarks(needs).collect();
        if !tenants.is_empty() {
            let marks = tx.load_watermarks(&tenants).await?;
            loaded.watermarks.extend(marks);
        }
        let mut keys: Vec<RecordKey> = Vec::new();
        for (tenant, id) in &needs.reservations {
            if loaded.reservations.contains_key(id) {
                continue;
            }
            let Some(reservation) = tx.lock_reservation(tenant, *id).await? else { continue };
            let committed_event = match reservation.committed_event_id {
                Some(event_id) => tx.find_event_by_id(tenant, event_id).await?,
                None => None,
            };
            keys.push(RecordKey {
                tenant_id: reservation.tenant_id.clone(),
                metric_code: reservation.metric_code.clone(),
                period: reservation.period,
            });
            loaded.reservations.insert(*id, LoadedReservation { reservation, committed_event });
        }
        keys.extend(needs.records.iter().cloned());
        keys.sort();
        keys.dedup();
        keys.retain(|k| !loaded.records.contains_key(k));
        if !keys.is_empty() {
            let mut records = tx.load_records(&keys).await?;
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
            loaded.fire_states = Some(tx.load_fire_states_of_records(&all).await?);
        }
        let event_keys = loaded.missing_event_keys(needs);
        if !event_keys.is_empty() {
            let events = tx.find_events_by_keys(&event_keys).await?;
            loaded.add_events(events);
        }
        let keys: Vec<_> = loaded.missing_reservation_keys(needs).cloned().collect();
        for (tenant, key) in keys {
            if let Some(found) = tx.find_reservation_by_key(&tenant, &key).await? {
                loaded.reservations_by_key.insert((tenant, key), found);
            }
        }
        let tenants: Vec<TenantId> = loaded.missing_open_counts(needs).cloned().collect();
        for tenant in tenants {
            let open = tx.count_open_reservations(&tenant, now).await?;
            loaded.open_reservations.insert(tenant, open);
        }
        Ok(())
    }

    async fn write_all(&mut self, writes: &Writes, now: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.in_tx()?;
        if !writes.events.is_empty() {
            tx.insert_events(&writes.events).await?;
        }
        let (inserts, updates): (Vec<&RecordWrite>, Vec<&RecordWrite>) =
            writes.records.iter().partition(|w| w.insert);
        if !inserts.is_empty() {
            tx.insert_records(&inserts, now).await?;
        }
        if !updates.is_empty() {
            tx.update_records(&updates, now).await?;
        }
        if !writes.delete_records.is_empty() {
            tx.delete_records(&writes.delete_records).await?;
        }
        for r in &writes.new_reservations {
            tx.insert_reservation(r).await?;
        }
        for r in &writes.settled_reservations {
            tx.settle_reservation(r).await?;
        }
        if !writes.fire_states.is_empty() || !writes.deliveries.is_empty() {
            tx.write_outbox(&writes.fire_states, &writes.deliveries, now).await?;
        }
        for entry in &writes.audit {
            crate::rows::insert_audit(tx.log, tx.conn, entry).await?;
        }
        Ok(())
    }

    async fn finish(&mut self, outcome: Result<(), StoreError>) -> Result<(), StoreError> {
        let Some(open) = self.open.take() else { return outcome };
        let Open { tx, _lock } = open;
        match outcome {
            Ok(()) => self.log.commit(tx).await.map_err(store_error),
            Err(e) => {
                rollback(&self.log, tx).await;
                Err(e)
            }
        }
    }
}

impl WriteTx for SqliteWriter {
    type Other = Infallible;

    async fn run_other(&mut self, job: Infallible) {
        match job {}
    }

    async fn load_entitlements(
        &mut self,
        tenants: &[TenantId],
    ) -> Result<Vec<(TenantId, EntitlementLookup)>, StoreError> {
        let mut found = match self.open.as_mut() {
            Some(_) => self.in_tx()?.load_entitlements(tenants).await?,
            None => {
                let mut conn = self.pool.acquire().await.map_err(store_error)?;
                SqliteUsageTx { conn: &mut conn, log: &self.log }.load_entitlements(tenants).await?
            }
        };
        Ok(tenants
            .iter()
            .map(|t| (t.clone(), found.remove(t).unwrap_or(EntitlementLookup::TenantMissing)))
            .collect())
    }

    async fn load_webhook_rules(&mut self) -> Result<Vec<WebhookRule>, StoreError> {
        match self.open.as_mut() {
            Some(_) => self.in_tx()?.load_webhook_rules().await,
            None => {
                let mut conn = self.pool.acquire().await.map_err(store_error)?;
                SqliteUsageTx { conn: &mut conn, log: &self.log }.load_webhook_rules().await
            }
        }
    }

    async fn begin(&mut self, needs: &Needs, now: Timestamp) -> Result<Loaded, StoreError> {
        let lock = tokio::time::timeout(SQLITE_WRITER_WAIT_MAX, self.lock.clone().lock_owned())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "the sqlite writer lock stayed taken for {} s",
                    SQLITE_WRITER_WAIT_MAX.as_secs()
                ))
            })?;
        let tx = self.log.begin(&self.pool, "BEGIN IMMEDIATE").await.map_err(store_error)?;
        self.open = Some(Open { tx, _lock: lock });
        let mut loaded = Loaded::default();
        let outcome = async {
            loaded.config_version = self.in_tx()?.config_version().await?;
            self.load(needs, now, &mut loaded).await
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
        self.load(needs, now, loaded).await
    }

    async fn commit(&mut self, writes: &Writes, now: Timestamp) -> Result<(), StoreError> {
        let outcome = self.write_all(writes, now).await;
        self.finish(outcome).await
    }

    async fn rollback(&mut self) {
        if let Some(Open { tx, _lock }) = self.open.take() {
            rollback(&self.log, tx).await;
        }
    }
}
