//! The store port: repository traits, `StoreError`, the configuration cache, and the write
//! side every adapter shares (`write`: the group-commit queue, the writers and the one
//! transaction runner that carries out `tally_engine`'s decisions through an adapter's
//! `WriteTx`).
#![warn(missing_docs)]

pub mod cache;
pub mod error;
mod shared;
pub mod traits;
pub mod types;
pub mod write;

pub use cache::ConfigCache;
pub use error::StoreError;
pub use shared::{close_audit, reopen_audit, reset_audit, webhook_after_put};
pub use tally_engine::{
    Answer, Ctx, FireKey, FireStates, Loaded, LoadedReservation, LockedRecord, Needs, Plan, RecordState,
    RecordWrite, Signal, WebhookRule, WriteOp, Writes,
};
pub use traits::{
    AdminUiStore, AuditStore, ConfigVersion, EventRecorder, KeyStore, MetricStore, PeriodStore, PlanStore,
    ReservationStore, Store, TenantStore, UsageRepository, UsageWriter, WebhookStore,
};
pub use types::{
    AdminSearch, AdminSession, CloseMode, CloseOutcome, EntitlementLookup, EventCursor, EventListQuery,
    EventQuery, EventTotal, KeyedEvent, PeriodCursor, PeriodQuery, PeriodRecord, PutOutcome, RecordCursor,
    RecordKey, RecordListQuery, RecordSort, RecordTotal, ResetFact, SchemaReport, SortKey, TimeRange,
    VerifyInputs,
};
pub use write::{Committer, JobQueue, WriteTx, run_batch, run_batch_with_wholes, write_forever};

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
