//! Strict request bodies and queries: `application/json` only, duplicate members refused at
//! any depth, unknown members refused (by `deny_unknown_fields` on the DTOs), and every
//! rejection a problem+json naming the member.

use std::fmt;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// JSON nesting deeper than this is refused (serde_json's own recursion limit is 128).
pub const JSON_DEPTH_MAX: usize = 64;

/// A body parsed strictly into `T`.
pub struct StrictJson<T>(pub T);

/// A body parsed strictly into a JSON value (for envelopes checked by hand).
pub fn parse_strict(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue::deserialize_depth(&mut de, 0)
        .map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    de.end().map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Body members whose items are objects (a plan's `limits`; a batch's `events` are read item
/// by item). serde would also read a struct from an array of its fields in order
/// (`["api_calls", 1]`), a form the contract does not have; these items and every body itself
/// must be objects.
pub const OBJECT_LIST_MEMBERS: [&str; 1] = ["limits"];

fn require_objects(value: &Value) -> Result<(), ApiError> {
    let Value::Object(members) = value else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    for name in OBJECT_LIST_MEMBERS {
        if let Some(Value::Array(items)) = members.get(name)
            && let Some(idx) = items.iter().position(|item| !item.is_object())
        {
            return Err(ApiError::invalid(format!("{name}[{idx}]: must be a JSON object")));
        }
    }
    Ok(())
}

/// Deserializes `T` (a body's wire type) from a value that must be an object, naming the
/// member at fault.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    require_objects(&value)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            ApiError::invalid(inner)
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })
}

/// Checks that the request says its body is JSON.
pub fn require_json_content_type(parts_headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let ct = parts_headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        let shown = if ct.is_empty() { "none".to_owned() } else { format!("{ct:?}") };
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            format!("the body must be application/json, content type was {shown}"),
        ))
    }
}

/// Reads the body as bytes, mapping an over-long body to 413.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
                format!("the body is over {} bytes", tally_domain::limits::REQUEST_BODY_BYTES_MAX),
            )
        } else {
            ApiError::invalid(format!("could not read the body: {rej}"))
        }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json_content_type(req.headers())?;
        let bytes = body_bytes(req, state).await?;
        let value = parse_strict(&bytes)?;
        Ok(StrictJson(from_value(value)?))
    }
}

/// A query string parsed strictly into `T` (unknown and repeated parameters refused).
pub struct StrictQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded_deserializer(query);
        match de {
            Ok(v) => Ok(StrictQuery(v)),
            Err(e) => Err(ApiError::invalid(format!("query: {e}"))),
        }
    }
}

fn serde_urlencoded_deserializer<T: DeserializeOwned>(query: &str) -> Result<T, String> {
    // Parse pairs ourselves so that a repeated parameter is an error rather than a silent pick.
    let mut map = Map::new();
    for (k, v) in form_pairs(query)? {
        if map.contains_key(&k) {
            return Err(format!("parameter {k:?} appears more than once"));
        }
        map.insert(k, Value::String(v));
    }
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." { inner } else { format!("{path}: {inner}") }
    })
}

fn form_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(out)
}

fn percent_decode(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("truncated percent escape")?;
                let s = std::str::from_utf8(hex).map_err(|_| "bad percent escape")?;
                out.push(u8::from_str_radix(s, 16).map_err(|_| format!("bad percent escape %{s}"))?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "query is not UTF-8".to_owned())
}

/// A JSON value whose objects never repeat a member.
struct StrictValue;

impl StrictValue {
    fn deserialize_depth<'de, D: Deserializer<'de>>(de: D, depth: usize) -> Result<Value, D::Error> {
        de.deserialize_any(StrictVisitor { depth })
    }
}

struct StrictVisitor {
    depth: usize,
}

struct Seed {
    depth: usize,
}

impl<'de> de::DeserializeSeed<'de> for Seed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        StrictValue::deserialize_depth(de, self.depth)
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= JSON_DEPTH_MAX {
            return Err(de::Error::custom(format!("nested deeper than {JSON_DEPTH_MAX} levels")));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed { depth: self.depth + 1 })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= JSON_DEPTH_MAX {
            return Err(de::Error::custom(format!("nested deeper than {JSON_DEPTH_MAX} levels")));
        }
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate member {key:?}")));
            }
            let v = map.next_value_seed(Seed { depth: self.depth + 1 })?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_refused_at_any_depth() {
        assert!(parse_strict(br#"{"a":1,"b":{"c":1}}"#).is_ok());
        let top = parse_strict(br#"{"a":1,"a":2}"#).unwrap_err();
        assert!(top.detail.contains("duplicate member \"a\""), "{}", top.detail);
        assert!(parse_strict(br#"{"m":{"x":1,"x":1}}"#).is_err());
        assert!(parse_strict(br#"[{"x":1,"x":1}]"#).is_err());
    }

    #[test]
    fn malformed_and_trailing_input_is_refused() {
        for bad in [&b""[..], b"{", b"{\"a\":}", b"{} {}", b"nul", b"{\"a\":1,}"] {
            assert!(parse_strict(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "[".repeat(JSON_DEPTH_MAX + 1), "]".repeat(JSON_DEPTH_MAX + 1));
        assert!(parse_strict(deep.as_bytes()).is_err());
    }

    #[test]
    fn queries_decode_percent_escapes_and_refuse_repeats() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Q {
            a: Option<String>,
        }
        let q: Q = serde_urlencoded_deserializer("a=x%2By+z").unwrap();
        assert_eq!(q.a.as_deref(), Some("x+y z"));
        assert!(serde_urlencoded_deserializer::<Q>("a=1&a=2").is_err());
        assert!(serde_urlencoded_deserializer::<Q>("b=1").is_err());
        assert!(serde_urlencoded_deserializer::<Q>("a=%zz").is_err());
    }
}
