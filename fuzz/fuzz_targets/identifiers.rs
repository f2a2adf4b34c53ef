//! Arbitrary strings into every self-checking identifier of the domain, each checked against
//! an independent statement of its rule (crates/tally-domain/src/limits.rs and the doc of
//! each type): when a parse succeeds, `as_str()` is the input and the rule holds; when the
//! rule holds, the parse succeeds. The serde and `TryFrom<String>` paths agree with `parse`.
//! Then metadata from JSON parsed out of the same bytes, and amounts from their first 8 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tally_domain::limits::{
    AMOUNT_MAX, AMOUNT_MIN, EVENT_METADATA_BYTES_MAX, IDEMPOTENCY_KEY_LEN_MAX, METRIC_CODE_LEN_MAX,
    NAME_LEN_MAX, PLAN_CODE_LEN_MAX, TENANT_ID_LEN_MAX,
};
use tally_domain::{Amount, IdempotencyKey, Metadata, MetricCode, Name, PlanCode, TenantId};

fn tenant_rule(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=TENANT_ID_LEN_MAX).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn code_rule(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    (1..=max).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

fn key_rule(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=IDEMPOTENCY_KEY_LEN_MAX).contains(&b.len()) && b.iter().all(|c| (0x21..=0x7E).contains(c))
}

fn name_rule(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= NAME_LEN_MAX && !s.chars().any(char::is_control)
}

macro_rules! check_ident {
    ($ty:ty, $s:expr, $rule:expr) => {{
        let s: &str = $s;
        let parsed = <$ty>::parse(s);
        match &parsed {
            Ok(v) => {
                assert_eq!(v.as_str(), s, "{} changed its input", stringify!($ty));
                assert_eq!(v.to_string(), s);
                assert!($rule, "{} took {:?}, which breaks its rule", stringify!($ty), s);
            }
            Err(e) => {
                assert!(!$rule, "{} refused {:?}, which keeps its rule: {}", stringify!($ty), s, e);
            }
        }
        // `TryFrom<String>` and serde (what the stores read back) agree with `parse`.
        let via_try = <$ty>::try_from(s.to_owned());
        assert_eq!(via_try.is_ok(), parsed.is_ok());
        let via_serde = serde_json::from_value::<$ty>(Value::String(s.to_owned()));
        assert_eq!(via_serde.is_ok(), parsed.is_ok());
        if let Ok(v) = parsed {
            assert_eq!(via_serde.ok(), Some(v.clone()));
            let back = serde_json::to_value(&v).expect("serializes");
            assert_eq!(back, Value::String(s.to_owned()));
        }
    }};
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

fn holds_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

fn metadata(value: Value) {
    let expected_ok = match &value {
        Value::Null => true,
        Value::Object(_) => {
            !holds_nul(&value)
                && serde_json::to_string(&value).expect("serializes").len() <= EVENT_METADATA_BYTES_MAX
        }
        _ => false,
    };
    match Metadata::new(value.clone()) {
        Ok(m) => {
            assert!(expected_ok, "metadata took {value}");
            let text = m.to_json_string();
            assert!(text.len() <= EVENT_METADATA_BYTES_MAX);
            if !value.is_null() {
                assert_eq!(m.to_value(), value);
            }
            assert_eq!(Metadata::new(m.to_value()).ok(), Some(m.clone()));
            // What a store writes, it reads back as the same metadata.
            let read: Metadata = serde_json::from_str(&text).expect("stored metadata reads back");
            if !has_float(&m.to_value()) {
                assert_eq!(read, m);
            }
        }
        Err(e) => assert!(!expected_ok, "metadata refused {value}: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // Amount from the first 8 bytes.
    if let Some(head) = data.get(..8) {
        let raw = i64::from_le_bytes(head.try_into().expect("8 bytes"));
        match Amount::new(raw) {
            Ok(a) => {
                assert_eq!(a.get(), raw);
                assert!((AMOUNT_MIN..=AMOUNT_MAX).contains(&raw));
            }
            Err(_) => assert!(!(AMOUNT_MIN..=AMOUNT_MAX).contains(&raw)),
        }
    }

    let text = String::from_utf8_lossy(data);
    let s: &str = &text;
    check_ident!(TenantId, s, tenant_rule(s));
    check_ident!(MetricCode, s, code_rule(s, METRIC_CODE_LEN_MAX));
    check_ident!(PlanCode, s, code_rule(s, PLAN_CODE_LEN_MAX));
    check_ident!(IdempotencyKey, s, key_rule(s));
    check_ident!(Name, s, name_rule(s));

    // Metadata: the bytes as JSON (strictly, as a request would carry it), else as a string.
    match tally_http::json::parse_strict(data) {
        Ok(v) => metadata(v),
        Err(_) => metadata(Value::String(s.to_owned())),
    }
});
