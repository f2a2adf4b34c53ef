//! Arbitrary bytes as a JSON request body, through the server's strict parsing
//! (`tally_http::json::parse_strict` and `from_value`) and every body's wire type → domain
//! conversion, as the handlers do it. Nothing here may panic; an accepted body must satisfy the
//! limits the domain promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tally_domain::limits::{
    AMOUNT_MAX, AMOUNT_MIN, EVENT_BATCH_LEN_MAX, EVENT_METADATA_BYTES_MAX, NAME_LEN_MAX, PAGE_LEN_MAX,
    PLAN_LIMITS_LEN_MAX,
};
use tally_domain::{MetricCode, Name, PlanCode, TenantId};
use tally_http::ApiError;
use tally_http::dto::{
    BatchBody, CheckBody, OverrideBody, PlanBody, SubscriptionBody, TenantBody, UsageBody, parse_instant,
    parse_limit,
};
use tally_http::json::{JSON_DEPTH_MAX, from_value, parse_strict};

/// Every rejection at this stage is a client error with a body.
fn check_error(e: &ApiError) {
    assert!(e.status.is_client_error(), "parsing answered {} for {:?}", e.status, e.detail);
    let body = e.to_json();
    assert!(body.is_object());
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn usage(value: Value, tenant: &TenantId) {
    match from_value::<UsageBody>(value) {
        Ok(body) => match body.to_request(tenant) {
            Ok(req) => {
                assert_eq!(req.metric_code.as_str(), body.metric_code);
                assert!((AMOUNT_MIN..=AMOUNT_MAX).contains(&req.amount.get()));
                assert!(req.metadata.to_json_string().len() <= EVENT_METADATA_BYTES_MAX);
                assert_eq!(req.idempotency_key.as_ref().map(|k| k.as_str()), body.idempotency_key.as_deref());
            }
            Err(e) => check_error(&ApiError::from(e)),
        },
        Err(e) => check_error(&e),
    }
}

/// `POST .../usage/batch`: the envelope by hand, then each item on its own.
fn batch(value: &Value, tenant: &TenantId) {
    if let Ok(b) = from_value::<BatchBody>(value.clone()) {
        let _ = b.events.len();
    }
    let Value::Object(envelope) = value else { return };
    if envelope.keys().any(|k| k != "events") {
        return;
    }
    let Some(Value::Array(items)) = envelope.get("events") else { return };
    if items.len() > EVENT_BATCH_LEN_MAX {
        return;
    }
    for item in items {
        usage(item.clone(), tenant);
    }
}

fn check(value: Value) {
    match from_value::<CheckBody>(value) {
        Ok(body) => {
            if let Ok(m) = MetricCode::parse(&body.metric_code) {
                assert_eq!(m.as_str(), body.metric_code);
            }
            let _ = tally_domain::Amount::new(body.amount);
        }
        Err(e) => check_error(&e),
    }
}

fn plan(value: Value) {
    match from_value::<PlanBody>(value) {
        Ok(body) => match body.to_spec() {
            Ok(spec) => {
                assert!(spec.limits.len() <= PLAN_LIMITS_LEN_MAX);
                assert_eq!(spec.limits.len(), body.limits.len());
                assert!(spec.name.as_str().len() <= NAME_LEN_MAX);
                for l in &spec.limits {
                    assert!(l.limit.is_none_or(|v| v >= 0));
                }
            }
            Err(e) => check_error(&ApiError::from(e)),
        },
        Err(e) => check_error(&e),
    }
}

fn tenant_body(value: Value) {
    match from_value::<TenantBody>(value) {
        Ok(body) => {
            if let Some(n) = body.name.as_deref()
                && let Ok(name) = Name::parse(n)
            {
                assert_eq!(name.as_str(), n);
            }
        }
        Err(e) => check_error(&e),
    }
}

fn subscription(value: Value) {
    match from_value::<SubscriptionBody>(value) {
        Ok(body) => {
            let _ = PlanCode::parse(&body.plan_code);
            match parse_instant("anchor", body.anchor.as_deref()) {
                Ok(Some(t)) => {
                    // An anchor is stored: it must be an instant every store reads back
                    // (years 1 to 9999) and print as RFC 3339 that the server parses back.
                    let printed = tally_domain::time::format_rfc3339(t);
                    assert!(
                        tally_domain::time::from_micros(tally_domain::time::to_micros(t)).is_ok(),
                        "anchor {:?} taken as {printed}, outside years 1 to 9999",
                        body.anchor
                    );
                    let again = tally_domain::time::parse_rfc3339(&printed);
                    assert_eq!(again.ok(), Some(t), "anchor prints as {printed}, which does not parse back");
                }
                Ok(None) => {}
                Err(e) => check_error(&ApiError::from(e)),
            }
        }
        Err(e) => check_error(&e),
    }
}

fn override_body(value: Value, metric: &MetricCode) {
    match from_value::<OverrideBody>(value) {
        Ok(body) => match body.to_limit(metric) {
            Ok(l) => {
                assert_eq!(&l.metric_code, metric);
                assert!(l.limit.is_none_or(|v| v >= 0));
            }
            Err(e) => check_error(&ApiError::from(e)),
        },
        Err(e) => check_error(&e),
    }
}

/// String members that a query could carry, through the query helpers.
fn query_like(value: &Value) {
    let Value::Object(map) = value else { return };
    for (k, v) in map {
        let Value::String(s) = v else { continue };
        match k.as_str() {
            "limit" => {
                if let Ok(n) = parse_limit(Some(s), 100) {
                    assert!((1..=PAGE_LEN_MAX).contains(&n));
                }
            }
            "cursor" => {
                let _ = tally_service::usage::decode_event_cursor(s);
            }
            _ => {
                let _ = parse_instant("from", Some(s));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let value = match parse_strict(data) {
        Ok(v) => v,
        Err(e) => {
            check_error(&e);
            return;
        }
    };
    // What the strict parser takes, plain serde_json takes too, with the same value.
    assert!(depth(&value) <= JSON_DEPTH_MAX, "nesting past the limit was accepted");
    let plain: Value = serde_json::from_slice(data).expect("strict JSON is JSON");
    assert_eq!(plain, value);

    let tenant = TenantId::parse("acme").expect("tenant");
    let metric = MetricCode::parse("api_calls").expect("metric");
    usage(value.clone(), &tenant);
    batch(&value, &tenant);
    check(value.clone());
    plan(value.clone());
    tenant_body(value.clone());
    subscription(value.clone());
    override_body(value.clone(), &metric);
    query_like(&value);
});
