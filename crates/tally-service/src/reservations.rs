//! Reservation use cases: hold quota, commit what was used, release the rest; and the
//! sweeper that marks expired reservations without any request having to arrive.

use std::time::Duration;

use tally_domain::limits::{RESERVATION_SWEEP_BATCH_LEN, RESERVATION_SWEEP_INTERVAL_MS};
use tally_domain::{CommitRequest, Reservation, ReserveOutcome, ReserveRequest, TenantId, UsageOutcome};
use tally_store::Store;
use uuid::Uuid;

use crate::{ServiceError, Tally};

impl<S: Store> Tally<S> {
    /// Holds quota against the current period; HARD refuses as it would the usage itself.
    pub async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, ServiceError> {
        Ok(self.store.reserve(req, self.now()).await??)
    }

    /// Records what an open reservation used and releases the rest.
    pub async fn commit_reservation(&self, req: &CommitRequest) -> Result<UsageOutcome, ServiceError> {
        Ok(self.store.commit_reservation(req, self.now()).await??)
    }

    /// Frees a reservation.
    pub async fn release_reservation(&self, tenant: &TenantId, id: Uuid) -> Result<(), ServiceError> {
        Ok(self.store.release_reservation(tenant, id, self.now()).await??)
    }

    /// The tenant's open reservations, oldest first.
    pub async fn open_reservations(&self, tenant: &TenantId) -> Result<Vec<Reservation>, ServiceError> {
        self.require_tenant(tenant).await?;
        Ok(self.store.list_open_reservations(tenant, self.now()).await?)
    }

    /// Marks every open reservation past its expiry as expired, a batch at a time; returns
    /// how many it marked. Their quota was free from `expires_at` on already: this keeps the
    /// stored status true for lists and the admin UI.
    pub async fn sweep_reservations(&self) -> Result<u64, ServiceError> {
        let mut marked = 0;
        loop {
            let n = self.store.expire_reservations(self.now(), RESERVATION_SWEEP_BATCH_LEN).await?;
            marked += n;
            if n < u64::try_from(RESERVATION_SWEEP_BATCH_LEN).unwrap_or(u64::MAX) {
                return Ok(marked);
            }
        }
    }
}

/// Sweeps expired reservations every `RESERVATION_SWEEP_INTERVAL_MS` until the task is
/// dropped. A failure is logged and tried again at the next tick.
pub async fn sweep_forever<S: Store>(tally: Tally<S>) {
    let mut tick = tokio::time::interval(Duration::from_millis(RESERVATION_SWEEP_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tally.sweep_reservations().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(expired = n, "reservations expired"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired reservations failed"),
        }
    }
}
