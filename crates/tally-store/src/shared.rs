//! Small pieces every adapter shares outside the hot path: the audit entries of a reset, a
//! close and a reopening, and what a webhook put makes of the stored webhook.

use tally_domain::time::format_rfc3339;
use tally_domain::{
    AuditAction, AuditEntry, MetricCode, Period, Reason, TenantId, Timestamp, UsageRecord, WebhookId,
    WebhookSpec,
};
use uuid::Uuid;

use crate::types::{CloseMode, CloseOutcome};

/// The audit entry of a close: what was asked, the watermark after, and how many records
/// it closed.
pub fn close_audit(
    key_id: Option<Uuid>,
    now: Timestamp,
    tenant: &TenantId,
    before: Timestamp,
    mode: CloseMode,
    outcome: &CloseOutcome,
) -> AuditEntry {
    AuditEntry::new(
        now,
        key_id,
        AuditAction::PeriodClose,
        Some(tenant.clone()),
        serde_json::json!({
            "before": format_rfc3339(before),
            "closed_before": format_rfc3339(outcome.closed_before),
            "closed": outcome.closed,
            "automatic": mode == CloseMode::Automatic,
        }),
    )
}

/// The audit entry of a reopening.
pub fn reopen_audit(
    key_id: Option<Uuid>,
    now: Timestamp,
    tenant: &TenantId,
    metric: &MetricCode,
    period: Period,
    reason: &Reason,
) -> AuditEntry {
    AuditEntry::new(
        now,
        key_id,
        AuditAction::PeriodReopen,
        Some(tenant.clone()),
        serde_json::json!({
            "metric_code": metric.as_str(),
            "period_start": format_rfc3339(period.start()),
            "period_end": format_rfc3339(period.end()),
            "reason": reason.as_str(),
        }),
    )
}

/// The audit entry of a reset: what the counter held before, so that `tally verify` can
/// rebuild every counter from the events and the resets.
pub fn reset_audit(key_id: Option<Uuid>, now: Timestamp, before: &UsageRecord) -> AuditEntry {
    AuditEntry::new(
        now,
        key_id,
        AuditAction::Reset,
        Some(before.tenant_id.clone()),
        serde_json::json!({
            "metric_code": before.metric_code.as_str(),
            "record_id": before.id.to_string(),
            "period_start": tally_domain::time::format_rfc3339(before.period_start),
            "period_end": tally_domain::time::format_rfc3339(before.period_end),
            "previous_usage": before.current_usage,
        }),
    )
}

/// What a put makes of the stored webhook, the same in every adapter: `Unchanged` (write
/// nothing) when neither the spec nor the secret would change.
pub fn webhook_after_put(
    existing: Option<&tally_domain::Webhook>,
    id: &WebhookId,
    spec: &WebhookSpec,
    secret: &tally_domain::WebhookSecret,
    replace_secret: bool,
    now: Timestamp,
) -> crate::PutOutcome<tally_domain::Webhook> {
    use crate::PutOutcome;
    match existing {
        Some(current) if &current.spec == spec && (!replace_secret || &current.secret == secret) => {
            PutOutcome::Unchanged(current.clone())
        }
        Some(current) => PutOutcome::Updated(tally_domain::Webhook {
            spec: spec.clone(),
            secret: if replace_secret { secret.clone() } else { current.secret.clone() },
            updated_at: now,
            ..current.clone()
        }),
        None => PutOutcome::Created(tally_domain::Webhook {
            id: id.clone(),
            spec: spec.clone(),
            secret: secret.clone(),
            created_at: now,
            updated_at: now,
        }),
    }
}
