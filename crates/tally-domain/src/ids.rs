//! Identifiers and values that check themselves on construction.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::limits::{
    AMOUNT_MAX, AMOUNT_MIN, EVENT_METADATA_BYTES_MAX, IDEMPOTENCY_KEY_LEN_MAX, METRIC_CODE_LEN_MAX,
    NAME_LEN_MAX, PLAN_CODE_LEN_MAX, TENANT_ID_LEN_MAX,
};

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `raw` and wraps it.
            pub fn parse(raw: &str) -> Result<$name, DomainError> {
                $check(raw).map_err(|rule| DomainError::invalid($field, rule))?;
                Ok($name(raw.to_owned()))
            }
            /// The checked text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(raw: String) -> Result<$name, DomainError> {
                $check(&raw).map_err(|rule| DomainError::invalid($field, rule))?;
                Ok($name(raw))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn check_tenant_id(raw: &str) -> Result<(), String> {
    let bytes = raw.as_bytes();
    if bytes.is_empty() || bytes.len() > TENANT_ID_LEN_MAX {
        return Err(format!("must be 1 to {TENANT_ID_LEN_MAX} characters, got {}", bytes.len()));
    }
    let head_ok = bytes[0].is_ascii_alphanumeric();
    let tail_ok = bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !head_ok || !tail_ok {
        return Err("must match [A-Za-z0-9][A-Za-z0-9_.-]*".to_owned());
    }
    Ok(())
}

fn check_code(raw: &str, max: usize) -> Result<(), String> {
    let bytes = raw.as_bytes();
    if bytes.is_empty() || bytes.len() > max {
        return Err(format!("must be 1 to {max} characters, got {}", bytes.len()));
    }
    let head_ok = bytes[0].is_ascii_lowercase();
    let tail_ok = bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    if !head_ok || !tail_ok {
        return Err("must match [a-z][a-z0-9_]*".to_owned());
    }
    Ok(())
}

fn check_metric_code(raw: &str) -> Result<(), String> {
    check_code(raw, METRIC_CODE_LEN_MAX)
}

fn check_plan_code(raw: &str) -> Result<(), String> {
    check_code(raw, PLAN_CODE_LEN_MAX)
}

fn check_idempotency_key(raw: &str) -> Result<(), String> {
    let bytes = raw.as_bytes();
    if bytes.is_empty() || bytes.len() > IDEMPOTENCY_KEY_LEN_MAX {
        return Err(format!("must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} characters, got {}", bytes.len()));
    }
    if !bytes.iter().all(|b| (0x21..=0x7E).contains(b)) {
        return Err("must be visible ASCII characters (0x21 to 0x7E)".to_owned());
    }
    Ok(())
}

fn check_name(raw: &str) -> Result<(), String> {
    if raw.trim().is_empty() || raw.len() > NAME_LEN_MAX {
        return Err(format!("must be 1 to {NAME_LEN_MAX} bytes and not blank"));
    }
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

string_newtype!(
    /// A tenant's external id: 1..=64 bytes of `[A-Za-z0-9][A-Za-z0-9_.-]*`.
    TenantId, "tenant_id", check_tenant_id
);
string_newtype!(
    /// A metric code such as `api_calls`: 1..=64 bytes of `[a-z][a-z0-9_]*`.
    MetricCode, "metric_code", check_metric_code
);
string_newtype!(
    /// A plan code such as `pro`: 1..=64 bytes of `[a-z][a-z0-9_]*`.
    PlanCode, "plan_code", check_plan_code
);
string_newtype!(
    /// A client's idempotency key: 1..=255 visible ASCII characters.
    IdempotencyKey, "idempotency_key", check_idempotency_key
);
/// Prefixes of the idempotency keys the compatibility routes make from their clients' dedup
/// ids (`ce:<source>:<id>` for CloudEvents, `lago:<transaction_id>` for Lago).
pub const DEDUP_KEY_PREFIXES: [&str; 2] = ["ce:", "lago:"];

impl IdempotencyKey {
    /// Whether this key is a client's dedup id (see `DEDUP_KEY_PREFIXES`): a repeat is then a
    /// replay whatever its payload, as the OpenMeter and Lago clients expect, where any other
    /// key with another payload is a conflict.
    pub fn replays_any_payload(&self) -> bool {
        DEDUP_KEY_PREFIXES.iter().any(|p| self.as_str().starts_with(p))
    }
}

string_newtype!(
    /// A webhook's id, chosen by the admin who registers it: the rules of a tenant id.
    WebhookId, "webhook_id", check_tenant_id
);
string_newtype!(
    /// A display name for a plan or tenant: 1..=200 bytes, not blank, no control characters.
    Name, "name", check_name
);

/// The amount of one usage event: a whole number in `AMOUNT_MIN..=AMOUNT_MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Amount(i64);

impl Amount {
    /// Checks the range and wraps it.
    pub fn new(raw: i64) -> Result<Amount, DomainError> {
        if !(AMOUNT_MIN..=AMOUNT_MAX).contains(&raw) {
            return Err(DomainError::invalid(
                "amount",
                format!("must be between {AMOUNT_MIN} and {AMOUNT_MAX}, got {raw}"),
            ));
        }
        Ok(Amount(raw))
    }
    /// The amount as a plain integer.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A limit value: a whole number `>= 0`, or unlimited.
pub fn check_limit_value(raw: Option<i64>) -> Result<Option<i64>, DomainError> {
    match raw {
        Some(v) if v < 0 => Err(DomainError::invalid("limit", format!("must be >= 0 or null, got {v}"))),
        other => Ok(other),
    }
}

/// An event's metadata: a JSON object whose compact UTF-8 serialization is at most
/// `EVENT_METADATA_BYTES_MAX` bytes. Key order does not matter for equality.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct Metadata(serde_json::Map<String, serde_json::Value>);

impl TryFrom<serde_json::Map<String, serde_json::Value>> for Metadata {
    type Error = DomainError;
    fn try_from(map: serde_json::Map<String, serde_json::Value>) -> Result<Metadata, DomainError> {
        Metadata::from_map(map)
    }
}

/// Whether a JSON value holds a NUL character in any string or member name, at any depth.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

impl Metadata {
    /// Checks that `value` is an object within the size limit.
    pub fn new(value: serde_json::Value) -> Result<Metadata, DomainError> {
        match value {
            serde_json::Value::Object(map) => Metadata::from_map(map),
            serde_json::Value::Null => Ok(Metadata::default()),
            _ => Err(DomainError::invalid("metadata", "must be a JSON object")),
        }
    }

    /// Checks the size of an object and wraps it. A NUL character is refused anywhere in it
    /// (PostgreSQL's jsonb cannot hold one, and both stores must take the same input).
    pub fn from_map(map: serde_json::Map<String, serde_json::Value>) -> Result<Metadata, DomainError> {
        if map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)) {
            return Err(DomainError::invalid("metadata", "must not contain the NUL character (\\u0000)"));
        }
        let metadata = Metadata(map);
        let metadata_bytes = metadata.to_json_string().len();
        if metadata_bytes > EVENT_METADATA_BYTES_MAX {
            return Err(DomainError::invalid(
                "metadata",
                format!("must be at most {EVENT_METADATA_BYTES_MAX} bytes serialized, got {metadata_bytes}"),
            ));
        }
        Ok(metadata)
    }

    /// The object.
    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }

    /// Compact JSON, non-ASCII written as UTF-8: the form whose length is limited.
    pub fn to_json_string(&self) -> String {
        // Serializing a map of JSON values cannot fail: keys are strings.
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The metadata as a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::Value::Object(self.0.clone())
    }

    /// True for `{}`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_with_a_nul_anywhere_is_refused() {
        for bad in [
            serde_json::json!({"k": "a\u{0}b"}),
            serde_json::json!({"k\u{0}": 1}),
            serde_json::json!({"k": [{"deep": ["\u{0}"]}]}),
        ] {
            assert!(Metadata::new(bad.clone()).is_err(), "{bad}");
        }
        assert!(
            Metadata::new(serde_json::json!({"k": "a\\u0000b"})).is_ok(),
            "an escaped backslash is not a NUL"
        );
    }

    #[test]
    fn tenant_id_accepts_the_documented_pattern_and_refuses_the_rest() {
        assert!(TenantId::parse("acme").is_ok());
        assert!(TenantId::parse("A1_b.c-d").is_ok());
        assert!(TenantId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "-acme", "_a", ".a", "a b", "a/b", "é", "a;drop", &"a".repeat(65), "a\u{0}"] {
            let err = TenantId::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with("tenant_id: "), "{err}");
        }
    }

    #[test]
    fn metric_and_plan_codes_are_lowercase_identifiers() {
        assert!(MetricCode::parse("api_calls").is_ok());
        assert!(PlanCode::parse("pro2").is_ok());
        for bad in ["", "Api", "1a", "_a", "a-b", "a.b", &"a".repeat(65)] {
            assert!(MetricCode::parse(bad).is_err(), "{bad}");
            assert!(PlanCode::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            MetricCode::parse("A").expect_err("upper").to_string(),
            "metric_code: must match [a-z][a-z0-9_]*"
        );
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(IdempotencyKey::parse("req-7f3a!~").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        for bad in ["", "a b", "tab\t", "é", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amount_is_bounded_on_both_sides() {
        assert!(Amount::new(0).is_err());
        assert!(Amount::new(-1).is_err());
        assert_eq!(Amount::new(1).map(Amount::get), Ok(1));
        assert!(Amount::new(AMOUNT_MAX).is_ok());
        assert!(Amount::new(AMOUNT_MAX + 1).is_err());
    }

    #[test]
    fn metadata_size_counts_utf8_bytes_of_compact_json() {
        let small = serde_json::json!({"k": "é"});
        let m = Metadata::new(small).expect("small");
        assert_eq!(m.to_json_string(), "{\"k\":\"é\"}");
        // {"k":"..."} is 8 bytes of frame; fill to exactly the limit.
        let fill = "x".repeat(EVENT_METADATA_BYTES_MAX - 8);
        assert!(Metadata::new(serde_json::json!({ "k": fill })).is_ok());
        let over = "x".repeat(EVENT_METADATA_BYTES_MAX - 7);
        assert!(Metadata::new(serde_json::json!({ "k": over })).is_err());
        assert!(Metadata::new(serde_json::json!([1])).is_err());
        assert!(Metadata::new(serde_json::json!("s")).is_err());
        assert_eq!(Metadata::new(serde_json::Value::Null), Ok(Metadata::default()));
    }

    #[test]
    fn metadata_equality_ignores_key_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":{"c":2,"d":3}}"#).expect("json");
        let b: serde_json::Value = serde_json::from_str(r#"{"b":{"d":3,"c":2},"a":1}"#).expect("json");
        assert_eq!(Metadata::new(a), Metadata::new(b));
    }
}
