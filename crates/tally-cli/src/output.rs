//! What the CLI prints: JSON in the shapes of the HTTP API (`--json`, built from the same
//! wire types as the server's answers), and plain text helpers.

use serde::Serialize;
use serde_json::{Value, json};
use tally_domain::time::format_rfc3339;
use tally_service::verify::VerifyReport;

/// Any wire type as a JSON value.
pub fn to_json<T: Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub fn verify_json(r: &VerifyReport) -> Value {
    let drifts: Vec<Value> = r
        .drifts
        .iter()
        .map(|d| {
            json!({
                "tenant_id": d.tenant_id.as_str(), "metric_code": d.metric_code.as_str(),
                "period_start": format_rfc3339(d.period_start), "record_id": d.record_id.map(|i| i.to_string()),
                "recorded": d.recorded, "expected": d.expected, "n_events": d.n_events,
            })
        })
        .collect();
    json!({
        "records": r.n_records, "events": r.n_events, "corrections": r.n_corrections,
        "resets": r.n_resets, "drifts": drifts,
    })
}

pub fn key_json(k: &tally_domain::ApiKey) -> Value {
    json!({
        "id": k.id.to_string(), "scope": k.scope.kind(), "tenant_id": k.scope.tenant().map(|t| t.as_str()),
        "rate_limit": k.rate_limit.map(|r| r.to_string()),
        "created_at": format_rfc3339(k.created_at), "last_used_at": k.last_used_at.map(format_rfc3339),
        "revoked_at": k.revoked_at.map(format_rfc3339),
    })
}

/// `12 used of 100`, or `12 used (unlimited)`.
pub fn used_of(current: i64, limit: Option<i64>) -> String {
    match limit {
        Some(l) => format!("{current} used of {l}"),
        None => format!("{current} used (unlimited)"),
    }
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}
