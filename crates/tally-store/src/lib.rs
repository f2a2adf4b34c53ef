//! Repository traits, `StoreError`, the apply-usage algorithm that every adapter runs inside
//! its own transaction, and the contract suite that every adapter passes (feature `contract`).
#![warn(missing_docs)]

pub mod apply;
pub mod error;
pub mod outbox;
pub mod reserve;
pub mod traits;
pub mod types;

#[cfg(feature = "contract")]
pub mod contract;

pub use apply::{LockedRecord, RecordUpdate, UsageTx, apply_in_tx, reset_audit};
pub use error::StoreError;
pub use outbox::{FireKey, FireStates, Signal, WebhookRule, outbox_in_tx, webhook_after_put};
pub use reserve::{ReservationTx, commit_in_tx, release_in_tx, reserve_in_tx};
pub use traits::{
    AdminUiStore, AuditStore, ConfigVersion, EventRecorder, KeyStore, MetricStore, PlanStore,
    ReservationStore, Store, TenantStore, UsageApplier, UsageRepository, WebhookStore,
};
pub use types::{
    AdminSearch, AdminSession, EntitlementLookup, EventCursor, EventListQuery, EventQuery, EventTotal,
    KeyedEvent, PutOutcome, RecordCursor, RecordKey, RecordListQuery, RecordSort, RecordTotal, ResetFact,
    SchemaReport, SortKey, TimeRange, VerifyInputs,
};

use tally_domain::{AuditAction, AuditEntry, MetricCode, TenantId};

/// Reads a reset back from its audit entry (see `reset_audit`); `None` for other actions.
pub fn reset_fact(entry: &AuditEntry) -> Result<Option<ResetFact>, StoreError> {
    if entry.action != AuditAction::Reset.as_str() {
        return Ok(None);
    }
    let d = &entry.details;
    let bad = || StoreError::Corrupt(format!("audit entry {} is not a readable reset", entry.id));
    let tenant_id: TenantId = entry.tenant_id.clone().ok_or_else(bad)?;
    let metric_code = MetricCode::parse(d["metric_code"].as_str().ok_or_else(bad)?)?;
    let period_start = tally_domain::time::parse_rfc3339(d["period_start"].as_str().ok_or_else(bad)?)?;
    let previous_usage = d["previous_usage"].as_i64().ok_or_else(bad)?;
    Ok(Some(ResetFact { tenant_id, metric_code, period_start, previous_usage }))
}
