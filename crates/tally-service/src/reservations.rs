//! Reservation use cases: hold quota, commit what was used, release the rest; and the
//! sweeper that marks expired reservations without any request having to arrive.

use std::time::Duration;

use tally_domain::limits::{RESERVATION_SWEEP_BATCH_LEN, RESERVATION_SWEEP_INTERVAL_MS};
use tally_domain::{CommitRequest, Reservation, ReserveOutcome, ReserveRequest, TenantId, UsageOutcome};
use tally_store::{Answer, Store, WriteOp};
use uuid::Uuid;

use crate::{ServiceError, Tally};

fn wrong_answer(what: &str) -> ServiceError {
    ServiceError::Internal(format!("store answered a {what} with another kind of answer"))
}

impl<S: Store> Tally<S> {
    /// Holds quota against the current period; HARD refuses as it would the usage itself.
    pub async fn reserve(&self, req: &ReserveRequest) -> Result<ReserveOutcome, ServiceError> {
        let answer = self.write_one(WriteOp::Reserve(req.clone())).await?;
        Ok(answer.into_reserve().ok_or_else(|| wrong_answer("reservation"))??)
    }

    /// Records what an open reservation used and releases the rest.
    pub async fn commit_reservation(&self, req: &CommitRequest) -> Result<UsageOutcome, ServiceError> {
        let answer = self.write_one(WriteOp::Commit(req.clone())).await?;
        Ok(answer.into_usage().ok_or_else(|| wrong_answer("commit"))??)
    }

    /// Frees a reservation.
    pub async fn release_reservation(&self, tenant: &TenantId, id: Uuid) -> Result<(), ServiceError> {
        let op = WriteOp::Release { tenant_id: tenant.clone(), reservation_id: id };
        let answer = self.write_one(op).await?;
        Ok(answer.into_release().ok_or_else(|| wrong_answer("release"))??)
    }

    /// One write operation, group-committed with whatever else waits.
    async fn write_one(&self, op: WriteOp) -> Result<Answer, ServiceError> {
        let answers = self.store.write(vec![op], self.write_ctx()).await?;
        answers.into_iter().next().ok_or_else(|| ServiceError::Internal("store answered nothing".to_owned()))
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
