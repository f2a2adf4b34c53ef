//! What a write transaction loaded in its first round trip, under the locks it took: the
//! input of `plan` besides the operations and the configuration.

use std::collections::HashMap;

use tally_domain::{IdempotencyKey, RecordKey, RecordedEvent, Reservation, TenantId, Timestamp, Watermark};
use uuid::Uuid;

use crate::outbox::FireStates;

/// How a locked record came to be in the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// It existed, and is locked for the rest of the transaction.
    Existing,
    /// This transaction created it at zero, holding it locked, so that concurrent first
    /// writers of a cold period wait for it (PostgreSQL). Deleted again if nothing uses it.
    Created,
    /// It does not exist and nothing else can create it before the commit (the adapter
    /// holds the only write lock: SQLite's `BEGIN IMMEDIATE`). Inserted only if used.
    Absent,
}

/// A usage record as the transaction holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedRecord {
    /// Its id (a new one for an absent record).
    pub id: Uuid,
    /// Its counter when locked.
    pub current_usage: i64,
    /// What open reservations (status open, `expires_at > now`) hold against it, read under
    /// its lock: reservations are made under the same lock, so the sum cannot move before
    /// the commit.
    pub reserved: i64,
    /// How it came to be held.
    pub state: RecordState,
    /// When its period was closed, if it is (read under its lock).
    pub closed_at: Option<Timestamp>,
    /// Whether its period was reopened since its last close: then it is open, whatever the
    /// tenant's watermark says.
    pub reopened: bool,
}

impl LockedRecord {
    /// A record that does not exist yet, at zero.
    pub fn absent() -> LockedRecord {
        LockedRecord::at(Uuid::now_v7(), 0, RecordState::Absent)
    }

    /// A record held at `current_usage`, open, with nothing reserved yet.
    pub fn at(id: Uuid, current_usage: i64, state: RecordState) -> LockedRecord {
        LockedRecord { id, current_usage, reserved: 0, state, closed_at: None, reopened: false }
    }
}

/// A reservation locked by the transaction, with the event its commit recorded (for a
/// replayed commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedReservation {
    /// The reservation as stored.
    pub reservation: Reservation,
    /// Its commit's event, when it is committed.
    pub committed_event: Option<RecordedEvent>,
}

/// Everything `plan` reads besides the operations and the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// `tally_config_version` as the transaction read it: the configuration the batch must
    /// be decided against is at least this one.
    pub config_version: i64,
    /// The records the batch touches, locked. A record key an operation needs and that is
    /// missing here makes `plan` ask for it.
    pub records: HashMap<RecordKey, LockedRecord>,
    /// The events already stored under the batch's idempotency keys.
    pub events: HashMap<(TenantId, IdempotencyKey), RecordedEvent>,
    /// The reservations already made under the batch's reservation idempotency keys.
    pub reservations_by_key: HashMap<(TenantId, IdempotencyKey), Reservation>,
    /// The reservations the batch commits or releases, locked, by id (each of the tenant
    /// that asked; another tenant's is absent).
    pub reservations: HashMap<Uuid, LoadedReservation>,
    /// How many reservations each tenant that reserves holds open now.
    pub open_reservations: HashMap<TenantId, i64>,
    /// The threshold states of every loaded record, when the batch may fire webhooks;
    /// `None` when they were not read.
    pub fire_states: Option<FireStates>,
    /// The closing watermarks of the tenants that write into periods that may be closed,
    /// read under a share lock of the tenant (which a close takes exclusively): `None` for a
    /// tenant that never closed a period. A tenant absent here was not read.
    pub watermarks: HashMap<TenantId, Option<Watermark>>,
}

impl Loaded {
    /// The idempotency keys of `needs` whose events were not looked up yet.
    pub fn missing_event_keys(&self, needs: &crate::Needs) -> Vec<(TenantId, IdempotencyKey)> {
        needs.event_keys.iter().filter(|k| !self.events.contains_key(*k)).cloned().collect()
    }

    /// Files events found under their idempotency keys.
    pub fn add_events(&mut self, events: Vec<RecordedEvent>) {
        for event in events {
            if let Some(key) = event.event.idempotency_key.clone() {
                self.events.insert((event.event.tenant_id.clone(), key), event);
            }
        }
    }

    /// The reservation idempotency keys of `needs` not looked up yet.
    pub fn missing_reservation_keys<'n>(
        &self,
        needs: &'n crate::Needs,
    ) -> impl Iterator<Item = &'n (TenantId, IdempotencyKey)> + use<'n, '_> {
        needs.reservation_keys.iter().filter(|k| !self.reservations_by_key.contains_key(*k))
    }

    /// The tenants of `needs` whose watermarks were not read yet.
    pub fn missing_watermarks<'n>(
        &self,
        needs: &'n crate::Needs,
    ) -> impl Iterator<Item = &'n TenantId> + use<'n, '_> {
        needs.watermarks.iter().filter(|t| !self.watermarks.contains_key(*t))
    }

    /// The tenants of `needs` whose open reservations were not counted yet.
    pub fn missing_open_counts<'n>(
        &self,
        needs: &'n crate::Needs,
    ) -> impl Iterator<Item = &'n TenantId> + use<'n, '_> {
        needs.open_reservations.iter().filter(|t| !self.open_reservations.contains_key(*t))
    }
}
