//! Bad input on every route of the route table, as one table: wrong types, numbers out of
//! range, broken identifiers, control and format characters, oversized bodies and metadata,
//! malformed JSON, wrong methods and media types, hostile query strings and path segments.
//! Each row names the exact answer; no row may answer 5xx, and the whole table must leave
//! every tenant, plan, event, record and audit entry as it found them.

use serde_json::{Value, json};
use tally_domain::limits::{
    AMOUNT_MAX, EVENT_BATCH_LEN_MAX, EVENT_METADATA_BYTES_MAX, METRIC_CODE_LEN_MAX, NAME_LEN_MAX,
    PLAN_CODE_LEN_MAX, PLAN_LIMITS_LEN_MAX, REQUEST_BODY_BYTES_MAX, TENANT_ID_LEN_MAX,
};

use crate::helpers::{ADMIN_KEY, ANCHOR, Backend, NOW, PROBLEM_JSON, Reply, TestApp, limit};

const T: &str = "/v1/tenants/acme";
const GOOD_USAGE: &str = r#"{"metric_code": "api_calls", "amount": 1}"#;
const INJECTION: &str = "'; DROP TABLE quota_usage_event; --";
/// `INJECTION`, percent-encoded for a path segment or a query value.
const INJECTION_ENC: &str = "%27%3B%20DROP%20TABLE%20quota_usage_event%3B%20--";
const TRAVERSAL: &str = "../../etc/passwd";
/// `TRAVERSAL` as one percent-encoded path segment.
const TRAVERSAL_ENC: &str = "..%2F..%2Fetc%2Fpasswd";
/// U+202E RIGHT-TO-LEFT OVERRIDE, percent-encoded.
const RTL_ENC: &str = "%E2%80%AE";
/// U+1F4DE TELEPHONE RECEIVER, percent-encoded.
const EMOJI_ENC: &str = "%F0%9F%93%9E";
/// A UUID v7 for cursors that are well-formed but point nowhere.
const SOME_UUID: &str = "01935b7e8a4b7c3d9e0f1a2b3c4d5e6f";
/// The CSRF value the sign-in cases carry in both the cookie and the form.
const LOGIN_CSRF: &str = "0123456789abcdef0123456789abcdef";

/// What a row must answer.
#[derive(Debug)]
enum Expect {
    /// `application/problem+json` with this status and `code`.
    Problem(u16, &'static str),
    /// An admin UI HTML page with this status.
    Page(u16),
    /// A redirect with this status to a location that starts with the text.
    Redirect(u16, &'static str),
    /// 200 from the batch route: one `error` per item, with these statuses and codes.
    BatchErrors(Vec<(u16, &'static str)>),
}

/// Who a row claims to be.
#[derive(Clone, Copy, Debug)]
enum Who {
    Admin,
    /// The tenant key of `acme`.
    AcmeKey,
    /// The signed-in admin UI session.
    Session,
    Anonymous,
}

/// One row of the table.
struct Case {
    name: String,
    method: &'static str,
    path: String,
    who: Who,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    expect: Expect,
}

fn case(name: impl Into<String>, method: &'static str, path: impl Into<String>) -> Case {
    Case {
        name: name.into(),
        method,
        path: path.into(),
        who: Who::Admin,
        headers: Vec::new(),
        body: Vec::new(),
        expect: Expect::Problem(0, "unset"),
    }
}

impl Case {
    /// A body sent as `application/json`.
    fn json(self, body: impl Into<Vec<u8>>) -> Case {
        self.typed("application/json", body)
    }
    /// A body with the given content type.
    fn typed(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Case {
        self.headers.push(("content-type".to_owned(), content_type.to_owned()));
        self.body = body.into();
        self
    }
    /// A body with no content type at all.
    fn untyped(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = body.into();
        self
    }
    fn header(mut self, name: &str, value: impl Into<String>) -> Case {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
    fn who(mut self, who: Who) -> Case {
        self.who = who;
        self
    }
    fn problem(mut self, status: u16, code: &'static str) -> Case {
        self.expect = Expect::Problem(status, code);
        self
    }
    fn invalid(self) -> Case {
        self.problem(400, "invalid_request")
    }
    fn page(mut self, status: u16) -> Case {
        self.expect = Expect::Page(status);
        self
    }
    fn redirect(mut self, status: u16, to: &'static str) -> Case {
        self.expect = Expect::Redirect(status, to);
        self
    }
    fn batch_errors(mut self, errors: Vec<(u16, &'static str)>) -> Case {
        self.expect = Expect::BatchErrors(errors);
        self
    }
}

/// A usage body with `member` set to the raw JSON text `value`.
fn usage_with(member: &str, value: &str) -> String {
    match member {
        "metric_code" => format!(r#"{{"metric_code": {value}, "amount": 1}}"#),
        "amount" => format!(r#"{{"metric_code": "api_calls", "amount": {value}}}"#),
        _ => format!(r#"{{"metric_code": "api_calls", "amount": 1, "{member}": {value}}}"#),
    }
}

/// A check body with `amount` as the raw JSON text `value`.
fn check_with_amount(value: &str) -> String {
    format!(r#"{{"metric_code": "api_calls", "amount": {value}}}"#)
}

/// A plan body with one limit whose `member` is the raw JSON text `value`.
fn plan_limit_with(member: &str, value: &str) -> String {
    let mut l = serde_json::Map::new();
    l.insert("metric_code".into(), json!("api_calls"));
    l.insert("limit".into(), json!(10));
    l.insert("enforcement".into(), json!("hard"));
    l.insert("period".into(), json!("month"));
    let mut text = serde_json::to_string(&Value::Object(l)).expect("a map serializes");
    let old = match member {
        "metric_code" => r#""metric_code":"api_calls""#,
        "limit" => r#""limit":10"#,
        "enforcement" => r#""enforcement":"hard""#,
        _ => r#""period":"month""#,
    };
    text = text.replace(old, &format!(r#""{member}":{value}"#));
    format!(r#"{{"name": "Pro", "limits": [{text}]}}"#)
}

/// A well-formed JSON text of exactly `REQUEST_BODY_BYTES_MAX + 1` bytes that starts with `head`.
fn oversized_json(head: &str) -> Vec<u8> {
    let mut body = head.as_bytes().to_vec();
    // Trailing whitespace is valid JSON, so only the size is wrong.
    body.resize(REQUEST_BODY_BYTES_MAX + 1, b' ');
    body
}

/// Metadata `{"k": "..."}` whose compact serialization is `EVENT_METADATA_BYTES_MAX + 1` bytes,
/// made of `fill` (one character) and ASCII padding.
fn metadata_one_byte_over(fill: char) -> Value {
    // `{"k":""}` is 8 bytes of frame.
    let budget = EVENT_METADATA_BYTES_MAX + 1 - 8;
    let n = budget / fill.len_utf8();
    let mut s: String = std::iter::repeat_n(fill, n).collect();
    s.push_str(&"x".repeat(budget - n * fill.len_utf8()));
    let m = json!({ "k": s });
    assert_eq!(serde_json::to_string(&m).expect("serializes").len(), EVENT_METADATA_BYTES_MAX + 1);
    m
}

/// The rows. `cookie` is the admin UI session's `Cookie` header value.
fn cases() -> Vec<Case> {
    let usage = format!("{T}/usage");
    let batch = format!("{T}/usage/batch");
    let check = format!("{T}/usage/check");
    let history = format!("{T}/usage/api_calls/history");
    let events = format!("{T}/events");
    let long_metric = "m".repeat(METRIC_CODE_LEN_MAX + 1);
    let long_tenant = "t".repeat(TENANT_ID_LEN_MAX + 1);
    let long_plan = "p".repeat(PLAN_CODE_LEN_MAX + 1);
    let long_name = "n".repeat(NAME_LEN_MAX + 1);
    let huge_int = "1000000000000000000000000000000"; // 10^30
    let cursor_10k = "c".repeat(10_000);
    let good_item = json!({"metric_code": "api_calls", "amount": 1});
    let zero_item = json!({"metric_code": "api_calls", "amount": 0});

    let mut c: Vec<Case> = Vec::new();

    // ----------------------------------------------------------------------------------
    // POST .../usage: amounts
    for (label, value) in [
        ("zero", "0".to_owned()),
        ("negative", "-1".to_owned()),
        ("minus zero", "-0".to_owned()),
        ("AMOUNT_MAX + 1", (AMOUNT_MAX + 1).to_string()),
        ("i64::MAX", i64::MAX.to_string()),
        ("i64::MAX + 1", "9223372036854775808".to_owned()),
        ("i64::MIN - 1", "-9223372036854775809".to_owned()),
        ("u64::MAX + 1", "18446744073709551616".to_owned()),
        ("10^30 as digits", huge_int.to_owned()),
        ("1e30", "1e30".to_owned()),
        ("1e2 (a float in JSON)", "1e2".to_owned()),
        ("1.0", "1.0".to_owned()),
        ("1.5", "1.5".to_owned()),
        ("a string", r#""1""#.to_owned()),
        ("true", "true".to_owned()),
        ("null", "null".to_owned()),
        ("an array", "[1]".to_owned()),
        ("an object", r#"{"value": 1}"#.to_owned()),
    ] {
        c.push(
            case(format!("usage: amount {label}"), "POST", &usage)
                .json(usage_with("amount", &value))
                .invalid(),
        );
    }
    c.push(case("usage: amount missing", "POST", &usage).json(r#"{"metric_code": "api_calls"}"#).invalid());

    // POST .../usage: metric codes
    for (label, value) in [
        ("one byte too long", json!(long_metric).to_string()),
        ("with NUL", r#""api_calls\u0000""#.to_owned()),
        ("with RTL override", r#""api\u202ecalls""#.to_owned()),
        ("with an emoji", json!("api_📞").to_string()),
        ("SQL injection", json!(INJECTION).to_string()),
        ("path traversal", json!(TRAVERSAL).to_string()),
        ("uppercase", r#""API_CALLS""#.to_owned()),
        ("leading digit", r#""1api""#.to_owned()),
        ("empty", r#""""#.to_owned()),
        ("null", "null".to_owned()),
        ("a number", "7".to_owned()),
        ("a lone surrogate escape", r#""api\ud800""#.to_owned()),
    ] {
        c.push(
            case(format!("usage: metric_code {label}"), "POST", &usage)
                .json(usage_with("metric_code", &value))
                .invalid(),
        );
    }
    c.push(
        case("usage: metric_code valid but on no plan", "POST", &usage)
            .json(r#"{"metric_code": "nope", "amount": 1}"#)
            .problem(422, "quota_not_found"),
    );

    // POST .../usage: idempotency keys
    for (label, value) in [
        ("one byte too long", json!("k".repeat(256)).to_string()),
        ("with NUL", r#""req\u0000one""#.to_owned()),
        ("with a space", r#""req one""#.to_owned()),
        ("with DEL", r#""req\u007f""#.to_owned()),
        ("with an emoji", json!("req-📞").to_string()),
        ("with RTL override", r#""req\u202e1""#.to_owned()),
        ("empty", r#""""#.to_owned()),
        ("a number", "5".to_owned()),
    ] {
        c.push(
            case(format!("usage: idempotency_key {label}"), "POST", &usage)
                .json(usage_with("idempotency_key", &value))
                .invalid(),
        );
    }

    // POST .../usage: metadata
    let over_ascii = metadata_one_byte_over('x');
    let over_utf8 = metadata_one_byte_over('é');
    let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
    for (label, value) in [
        ("one byte over the limit", over_ascii.to_string()),
        ("one byte over the limit in UTF-8, fewer characters", over_utf8.to_string()),
        ("an array", "[1, 2]".to_owned()),
        ("a string", r#""k=v""#.to_owned()),
        ("a number", "1".to_owned()),
        ("nested 70 deep", format!(r#"{{"k": {deep}}}"#)),
        ("with a duplicate nested member", r#"{"a": {"b": 1, "b": 2}}"#.to_owned()),
    ] {
        c.push(
            case(format!("usage: metadata {label}"), "POST", &usage)
                .json(usage_with("metadata", &value))
                .invalid(),
        );
    }

    // POST .../usage: timestamps
    for (label, value) in [
        ("without an offset", r#""2026-11-29T10:00:00""#),
        ("a word", r#""yesterday""#),
        ("unix seconds", "1795860000"),
        ("February 30th", r#""2026-02-30T00:00:00Z""#),
        ("an offset of 24 hours", r#""2026-11-29T10:00:00+24:00""#),
        ("a date only", r#""2026-11-29""#),
    ] {
        c.push(
            case(format!("usage: timestamp {label}"), "POST", &usage)
                .json(usage_with("timestamp", value))
                .invalid(),
        );
    }
    // A real instant far from now is out of the event window; year 0 is no instant Tally
    // takes at all (years 1 to 9999 in UTC), so it is an invalid request.
    c.push(
        case("usage: timestamp in year 9999", "POST", &usage)
            .json(usage_with("timestamp", r#""9999-12-31T23:59:59Z""#))
            .problem(422, "event_out_of_window"),
    );
    c.push(
        case("usage: timestamp in year 0", "POST", &usage)
            .json(usage_with("timestamp", r#""0000-01-01T00:00:00Z""#))
            .invalid(),
    );

    // POST .../usage: the body as a whole
    for (label, body) in [
        (
            "a member naming another tenant",
            br#"{"metric_code": "api_calls", "amount": 1, "tenant_id": "globex"}"#.to_vec(),
        ),
        (
            "a duplicate member",
            br#"{"metric_code": "api_calls", "metric_code": "storage", "amount": 1}"#.to_vec(),
        ),
        ("an array", br#"[{"metric_code": "api_calls", "amount": 1}]"#.to_vec()),
        ("a string", br#""api_calls""#.to_vec()),
        ("a number", b"1".to_vec()),
        ("true", b"true".to_vec()),
        ("truncated", br#"{"metric_code": "api_calls", "amo"#.to_vec()),
        ("with a UTF-8 byte order mark", [&b"\xEF\xBB\xBF"[..], GOOD_USAGE.as_bytes()].concat()),
        ("invalid UTF-8 in a string", b"{\"metric_code\": \"api\xff\", \"amount\": 1}".to_vec()),
        ("NaN", br#"{"metric_code": "api_calls", "amount": NaN}"#.to_vec()),
        ("Infinity", br#"{"metric_code": "api_calls", "amount": Infinity}"#.to_vec()),
        ("a comment", b"{\"metric_code\": \"api_calls\", // one\n \"amount\": 1}".to_vec()),
        ("two objects", [GOOD_USAGE, GOOD_USAGE].concat().into_bytes()),
        ("a NUL byte outside strings", [GOOD_USAGE.as_bytes(), b"\0"].concat()),
        ("nested 100 deep", format!("{}{}", "[".repeat(100), "]".repeat(100)).into_bytes()),
    ] {
        c.push(case(format!("usage: body {label}"), "POST", &usage).json(body).invalid());
    }
    c.push(
        case("usage: body one byte over 4 MiB", "POST", &usage)
            .json(oversized_json(GOOD_USAGE))
            .problem(413, "payload_too_large"),
    );
    for content_type in [
        "text/plain",
        "application/problem+json",
        "application/json-patch+json",
        "text/json",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        c.push(
            case(format!("usage: content type {content_type}"), "POST", &usage)
                .typed(content_type, GOOD_USAGE)
                .problem(415, "unsupported_media_type"),
        );
    }
    c.push(
        case("usage: no content type", "POST", &usage)
            .untyped(GOOD_USAGE)
            .problem(415, "unsupported_media_type"),
    );
    c.push(
        case("usage: a form body", "POST", &usage)
            .typed("application/x-www-form-urlencoded", "metric_code=api_calls&amount=1")
            .problem(415, "unsupported_media_type"),
    );
    c.push(
        case("usage: the tenant key sends amount 0 to its own tenant", "POST", &usage)
            .who(Who::AcmeKey)
            .json(usage_with("amount", "0"))
            .invalid(),
    );

    // POST .../usage: the tenant path segment
    for (label, segment) in [
        ("SQL injection", INJECTION_ENC.to_owned()),
        ("a literal ..", "..".to_owned()),
        ("%2e%2e%2f", "%2e%2e%2f".to_owned()),
        ("%2e%2e", "%2e%2e".to_owned()),
        ("an encoded traversal", TRAVERSAL_ENC.to_owned()),
        ("NUL", "%00".to_owned()),
        ("acme and NUL", "acme%00".to_owned()),
        ("an invalid UTF-8 byte", "%FF".to_owned()),
        ("an emoji", EMOJI_ENC.to_owned()),
        ("RTL override", format!("acme{RTL_ENC}")),
        ("a trailing space", "acme%20".to_owned()),
        ("one byte too long", long_tenant.clone()),
        ("a leading dot", ".acme".to_owned()),
        ("a slash, encoded", "acme%2Fglobex".to_owned()),
    ] {
        c.push(
            case(format!("usage: tenant segment {label}"), "POST", format!("/v1/tenants/{segment}/usage"))
                .json(GOOD_USAGE)
                .invalid(),
        );
    }
    c.push(
        case("usage: a raw traversal out of /v1", "POST", "/v1/tenants/../../etc/passwd/usage")
            .json(GOOD_USAGE)
            .problem(404, "not_found"),
    );
    c.push(case("usage: an empty tenant segment", "POST", "/v1/tenants//usage").json(GOOD_USAGE).invalid());
    c.push(
        case("usage: an unknown tenant", "POST", "/v1/tenants/ghost/usage")
            .json(GOOD_USAGE)
            .problem(404, "not_found"),
    );

    // ----------------------------------------------------------------------------------
    // POST .../usage/batch
    let too_many = json!({"events": vec![good_item.clone(); EVENT_BATCH_LEN_MAX + 1]});
    c.push(case("batch: one event over the limit", "POST", &batch).json(too_many.to_string()).invalid());
    let all_zero = json!({"events": vec![zero_item.clone(); EVENT_BATCH_LEN_MAX]});
    c.push(
        case("batch: the most events, every one amount 0", "POST", &batch)
            .json(all_zero.to_string())
            .batch_errors(vec![(400, "invalid_request"); EVENT_BATCH_LEN_MAX]),
    );
    for (label, body) in [
        ("an array", "[]".to_owned()),
        ("a string", r#""events""#.to_owned()),
        ("null", "null".to_owned()),
        ("events an object", r#"{"events": {}}"#.to_owned()),
        ("events null", r#"{"events": null}"#.to_owned()),
        ("events a string", r#"{"events": "[]"}"#.to_owned()),
        ("events missing", "{}".to_owned()),
        ("an extra member", r#"{"events": [], "tenant_id": "globex"}"#.to_owned()),
        ("events twice", r#"{"events": [], "events": []}"#.to_owned()),
        (
            "a duplicate member inside an item",
            r#"{"events": [{"metric_code": "api_calls", "metric_code": "storage", "amount": 1}]}"#.to_owned(),
        ),
        ("truncated", r#"{"events": [{"metric_code": "api_calls", "amount": 1}"#.to_owned()),
    ] {
        c.push(case(format!("batch: body {label}"), "POST", &batch).json(body).invalid());
    }
    let mixed = format!(
        r#"{{"events": [{zero_item}, {{"metric_code": "API", "amount": 1}},
            {{"metric_code": "api_calls", "amount": 1, "x": 1}},
            5, null, "api_calls", {{"metric_code": "api_calls", "amount": 1, "metadata": {over_ascii}}},
            {{"metric_code": "api_calls", "amount": 1.5}},
            {{"metric_code": "api_calls", "amount": {huge_int}}},
            {{"metric_code": "api_calls", "amount": 1, "idempotency_key": "a b"}},
            {{"metric_code": "api_calls", "amount": 1, "timestamp": "2026-11-29T10:00:00"}},
            {{"metric_code": {}, "amount": 1}}]}}"#,
        json!(INJECTION)
    );
    c.push(case("batch: every item invalid in its own way", "POST", &batch).json(mixed).batch_errors(vec![
        (
            400,
            "invalid_request"
        );
        12
    ]));
    c.push(
        case("batch: items refused by the service", "POST", &batch)
            .json(
                json!({"events": [
                    {"metric_code": "nope", "amount": 1},
                    {"metric_code": "api_calls", "amount": 1, "timestamp": "2000-01-01T00:00:00Z"},
                ]})
                .to_string(),
            )
            .batch_errors(vec![(422, "quota_not_found"), (422, "event_out_of_window")]),
    );
    c.push(case("batch: empty", "POST", &batch).json(r#"{"events": []}"#).batch_errors(Vec::new()));
    c.push(
        case("batch: body one byte over 4 MiB", "POST", &batch)
            .json(oversized_json(r#"{"events": []}"#))
            .problem(413, "payload_too_large"),
    );
    c.push(
        case("batch: text/plain", "POST", &batch)
            .typed("text/plain", r#"{"events": []}"#)
            .problem(415, "unsupported_media_type"),
    );
    c.push(
        case("batch: no content type", "POST", &batch)
            .untyped(r#"{"events": []}"#)
            .problem(415, "unsupported_media_type"),
    );
    c.push(
        case("batch: tenant segment %2e%2e%2f", "POST", "/v1/tenants/%2e%2e%2f/usage/batch")
            .json(r#"{"events": []}"#)
            .invalid(),
    );
    c.push(
        case(
            "batch: tenant segment SQL injection",
            "POST",
            format!("/v1/tenants/{INJECTION_ENC}/usage/batch"),
        )
        .json(json!({"events": [good_item]}).to_string())
        .invalid(),
    );
    c.push(
        case("batch: an unknown tenant", "POST", "/v1/tenants/ghost/usage/batch")
            .json(json!({"events": [good_item]}).to_string())
            .problem(404, "not_found"),
    );

    // ----------------------------------------------------------------------------------
    // POST .../usage/check
    for (label, value) in [
        ("zero", "0".to_owned()),
        ("negative", "-5".to_owned()),
        ("AMOUNT_MAX + 1", (AMOUNT_MAX + 1).to_string()),
        ("10^30", huge_int.to_owned()),
        ("1.5", "1.5".to_owned()),
        ("a string", r#""5""#.to_owned()),
    ] {
        c.push(
            case(format!("check: amount {label}"), "POST", &check).json(check_with_amount(&value)).invalid(),
        );
    }
    c.push(
        case("check: metric_code with NUL", "POST", &check)
            .json(r#"{"metric_code": "api\u0000calls", "amount": 1}"#)
            .invalid(),
    );
    c.push(
        case("check: an idempotency key (check takes none)", "POST", &check)
            .json(r#"{"metric_code": "api_calls", "amount": 1, "idempotency_key": "k"}"#)
            .invalid(),
    );
    c.push(case("check: body an array", "POST", &check).json("[]").invalid());
    c.push(
        case("check: a duplicate member", "POST", &check)
            .json(r#"{"metric_code": "api_calls", "amount": 1, "amount": 1}"#)
            .invalid(),
    );
    c.push(
        case("check: body one byte over 4 MiB", "POST", &check)
            .json(oversized_json(GOOD_USAGE))
            .problem(413, "payload_too_large"),
    );
    c.push(
        case("check: text/plain", "POST", &check)
            .typed("text/plain", GOOD_USAGE)
            .problem(415, "unsupported_media_type"),
    );
    c.push(
        case("check: a metric on no plan", "POST", &check)
            .json(r#"{"metric_code": "nope", "amount": 1}"#)
            .problem(422, "quota_not_found"),
    );
    c.push(
        case("check: tenant segment %2e%2e%2f", "POST", "/v1/tenants/%2e%2e%2f/usage/check")
            .json(GOOD_USAGE)
            .invalid(),
    );

    // ----------------------------------------------------------------------------------
    // GET .../usage
    c.push(case("usage list: an unknown parameter", "GET", format!("{usage}?x=1")).invalid());
    c.push(case("usage list: limit (it takes none)", "GET", format!("{usage}?limit=10")).invalid());
    c.push(
        case("usage list: tenant segment SQL injection", "GET", format!("/v1/tenants/{INJECTION_ENC}/usage"))
            .invalid(),
    );
    c.push(
        case("usage list: tenant segment RTL override", "GET", format!("/v1/tenants/acme{RTL_ENC}/usage"))
            .invalid(),
    );
    c.push(case("usage list: an unknown tenant", "GET", "/v1/tenants/ghost/usage").problem(404, "not_found"));

    // GET .../usage/{metric_code}/history
    for (label, query) in [
        ("limit 0", "limit=0".to_owned()),
        ("limit 1001", "limit=1001".to_owned()),
        ("limit 10^30", format!("limit={huge_int}")),
        ("limit -1", "limit=-1".to_owned()),
        ("limit 1.5", "limit=1.5".to_owned()),
        ("limit empty", "limit=".to_owned()),
        ("from a word", "from=yesterday".to_owned()),
        ("from without an offset", "from=2026-11-01T00:00:00".to_owned()),
        ("from empty", "from=".to_owned()),
        ("to SQL injection", format!("to={INJECTION_ENC}")),
        ("an unknown parameter", "bogus=1".to_owned()),
        ("a repeated parameter", "limit=1&limit=2".to_owned()),
        ("a bad percent escape", "from=%zz".to_owned()),
        ("a truncated percent escape", "from=%2".to_owned()),
        ("a value that is not UTF-8", "from=%FF".to_owned()),
        ("cursor (history takes none)", "cursor=abc".to_owned()),
    ] {
        c.push(case(format!("history: {label}"), "GET", format!("{history}?{query}")).invalid());
    }
    for (label, segment) in [
        ("an encoded traversal", TRAVERSAL_ENC.to_owned()),
        ("one byte too long", long_metric.clone()),
        ("SQL injection", INJECTION_ENC.to_owned()),
        ("an emoji", EMOJI_ENC.to_owned()),
        ("NUL", "api_calls%00".to_owned()),
    ] {
        c.push(
            case(format!("history: metric segment {label}"), "GET", format!("{T}/usage/{segment}/history"))
                .invalid(),
        );
    }
    c.push(
        case("history: an unknown tenant", "GET", "/v1/tenants/ghost/usage/api_calls/history")
            .problem(404, "not_found"),
    );

    // GET .../events
    for (label, query) in [
        ("limit 0", "limit=0".to_owned()),
        ("limit 1001", "limit=1001".to_owned()),
        ("limit 10^30", format!("limit={huge_int}")),
        ("limit an emoji", format!("limit={EMOJI_ENC}")),
        ("cursor of 10k characters", format!("cursor={cursor_10k}")),
        ("cursor a word", "cursor=garbage".to_owned()),
        ("cursor empty", "cursor=".to_owned()),
        ("cursor without its id", "cursor=1795860000000000_".to_owned()),
        ("cursor with a bad id", "cursor=1795860000000000_not-a-uuid".to_owned()),
        ("cursor with an instant beyond i64", format!("cursor=99999999999999999999_{SOME_UUID}")),
        ("cursor with an instant beyond every calendar", format!("cursor={}_{SOME_UUID}", i64::MAX)),
        ("cursor SQL injection", format!("cursor={INJECTION_ENC}")),
        ("cursor path traversal", "cursor=..%2F..%2Fetc%2Fpasswd".to_owned()),
        ("metric_code uppercase", "metric_code=API".to_owned()),
        ("metric_code NUL", "metric_code=%00".to_owned()),
        ("metric_code SQL injection", format!("metric_code={INJECTION_ENC}")),
        ("metric_code of 60k characters", format!("metric_code={}", "m".repeat(60_000))),
        ("from a date only", "from=2026-11-29".to_owned()),
        ("to unix seconds", "to=1795860000".to_owned()),
        ("an unknown parameter", "tenant_id=globex".to_owned()),
        ("a repeated cursor", "cursor=a&cursor=b".to_owned()),
    ] {
        c.push(case(format!("events: {label}"), "GET", format!("{events}?{query}")).invalid());
    }
    // A well-formed cursor at an instant chrono holds but PostgreSQL's timestamptz does not
    // (before 4713 BC): nothing is older, so the page is empty. FIXME: on PostgreSQL the
    // instant is bound as it is and the store's error answers 500.
    c.push(
        case(
            "events: cursor about 6000 BC",
            "GET",
            format!("{events}?cursor=-250000000000000000_{SOME_UUID}"),
        )
        .invalid(),
    );
    c.push(case("events: tenant segment %00", "GET", "/v1/tenants/%00/events").invalid());
    c.push(case("events: an unknown tenant", "GET", "/v1/tenants/ghost/events").problem(404, "not_found"));
    c.push(
        case("events: the tenant key with limit 0", "GET", format!("{events}?limit=0"))
            .who(Who::AcmeKey)
            .invalid(),
    );

    // ----------------------------------------------------------------------------------
    // POST .../usage/{metric_code}/reset
    c.push(case("reset: metric segment uppercase", "POST", format!("{T}/usage/API/reset")).invalid());
    c.push(
        case("reset: metric segment SQL injection", "POST", format!("{T}/usage/{INJECTION_ENC}/reset"))
            .invalid(),
    );
    c.push(
        case("reset: metric segment one byte too long", "POST", format!("{T}/usage/{long_metric}/reset"))
            .invalid(),
    );
    c.push(
        case("reset: tenant segment %2e%2e%2f", "POST", "/v1/tenants/%2e%2e%2f/usage/api_calls/reset")
            .invalid(),
    );
    c.push(
        case("reset: a metric on no plan", "POST", format!("{T}/usage/nope/reset"))
            .problem(422, "quota_not_found"),
    );
    c.push(
        case("reset: an unknown tenant", "POST", "/v1/tenants/ghost/usage/api_calls/reset")
            .problem(404, "not_found"),
    );

    // ----------------------------------------------------------------------------------
    // Plans
    for (label, segment) in [
        ("one byte too long", long_plan.clone()),
        ("with NUL", "pro%00".to_owned()),
        ("an encoded traversal", TRAVERSAL_ENC.to_owned()),
        ("SQL injection", "%27%3B%20DROP%20TABLE%20tally_plan%3B%20--".to_owned()),
        ("an emoji", EMOJI_ENC.to_owned()),
        ("RTL override", format!("pro{RTL_ENC}")),
        ("uppercase", "PRO".to_owned()),
        ("with a dash", "pro-2".to_owned()),
    ] {
        c.push(
            case(format!("plan put: code segment {label}"), "PUT", format!("/v1/plans/{segment}"))
                .json(r#"{"name": "Pro", "limits": []}"#)
                .invalid(),
        );
    }
    let many_limits: Vec<Value> =
        (0..=PLAN_LIMITS_LEN_MAX).map(|i| limit(&format!("m{i}"), Some(1), "hard", "month")).collect();
    for (label, body) in [
        ("name one byte too long", json!({"name": long_name, "limits": []}).to_string()),
        ("name with NUL", r#"{"name": "Pro\u0000", "limits": []}"#.to_owned()),
        ("name with a bell", r#"{"name": "Pro\u0007", "limits": []}"#.to_owned()),
        ("name with a newline", r#"{"name": "Pro\nPlan", "limits": []}"#.to_owned()),
        ("name with DEL", r#"{"name": "Pro\u007f", "limits": []}"#.to_owned()),
        ("name with a C1 control", r#"{"name": "Pro\u0085", "limits": []}"#.to_owned()),
        ("name blank", r#"{"name": "   ", "limits": []}"#.to_owned()),
        ("name a number", r#"{"name": 5, "limits": []}"#.to_owned()),
        ("limits an object", r#"{"name": "Pro", "limits": {}}"#.to_owned()),
        ("limits one over the most", json!({"name": "Pro", "limits": many_limits}).to_string()),
        (
            "a metric twice",
            json!({"name": "Pro", "limits": [
                limit("api_calls", Some(1), "hard", "month"),
                limit("api_calls", Some(2), "soft", "day"),
            ]})
            .to_string(),
        ),
        ("limit 1.5", plan_limit_with("limit", "1.5")),
        ("limit a string", plan_limit_with("limit", r#""100""#)),
        ("limit i64::MAX + 1", plan_limit_with("limit", "9223372036854775808")),
        ("limit 10^30", plan_limit_with("limit", huge_int)),
        ("enforcement uppercase", plan_limit_with("enforcement", r#""HARD""#)),
        ("enforcement null", plan_limit_with("enforcement", "null")),
        ("period fortnight", plan_limit_with("period", r#""fortnight""#)),
        ("period decade", plan_limit_with("period", r#""decade""#)),
        ("metric_code an emoji", plan_limit_with("metric_code", &json!("api_📞").to_string())),
        ("metric_code SQL injection", plan_limit_with("metric_code", &json!(INJECTION).to_string())),
        ("a duplicate member", r#"{"name": "Pro", "limits": [], "limits": []}"#.to_owned()),
        ("an array", "[]".to_owned()),
    ] {
        c.push(case(format!("plan put: {label}"), "PUT", "/v1/plans/pro2").json(body).invalid());
    }
    c.push(
        case("plan put: body one byte over 4 MiB", "PUT", "/v1/plans/pro2")
            .json(oversized_json(r#"{"name": "Pro", "limits": []}"#))
            .problem(413, "payload_too_large"),
    );
    c.push(
        case("plan put: application/xml", "PUT", "/v1/plans/pro2")
            .typed("application/xml", "<plan><name>Pro</name></plan>")
            .problem(415, "unsupported_media_type"),
    );
    c.push(case("plans: an unknown parameter", "GET", "/v1/plans?limit=10").invalid());
    c.push(case("plan get: code segment uppercase", "GET", "/v1/plans/Pro").invalid());
    c.push(
        case("plan get: code segment SQL injection", "GET", format!("/v1/plans/{INJECTION_ENC}")).invalid(),
    );
    c.push(case("plan delete: code segment %2e%2e", "DELETE", "/v1/plans/%2e%2e").invalid());
    c.push(case("plan delete: an unknown plan", "DELETE", "/v1/plans/ghost").problem(404, "not_found"));

    // ----------------------------------------------------------------------------------
    // Tenants
    for (label, query) in [
        ("limit 0", "limit=0".to_owned()),
        ("limit 10^30", format!("limit={huge_int}")),
        ("cursor of 10k characters", format!("cursor={cursor_10k}")),
        ("cursor path traversal", "cursor=..%2F..%2Fetc%2Fpasswd".to_owned()),
        ("cursor SQL injection", format!("cursor={INJECTION_ENC}")),
        ("cursor empty", "cursor=".to_owned()),
        ("an unknown parameter", "sort=name".to_owned()),
    ] {
        c.push(case(format!("tenants: {label}"), "GET", format!("/v1/tenants?{query}")).invalid());
    }
    for (label, body) in [
        ("name one byte too long", json!({"name": long_name}).to_string()),
        ("name with NUL", r#"{"name": "Acme\u0000"}"#.to_owned()),
        ("name with an escape character", r#"{"name": "Acme\u001b[31m"}"#.to_owned()),
        ("name a number", r#"{"name": 5}"#.to_owned()),
        ("an unknown member", r#"{"name": "Acme", "tenant_id": "globex"}"#.to_owned()),
    ] {
        c.push(case(format!("tenant put: {label}"), "PUT", T).json(body).invalid());
    }
    c.push(
        case("tenant put: body one byte over 4 MiB", "PUT", T)
            .json(oversized_json(r#"{"name": "Acme"}"#))
            .problem(413, "payload_too_large"),
    );
    c.push(
        case("tenant put: no content type", "PUT", T)
            .untyped(r#"{"name": "Acme"}"#)
            .problem(415, "unsupported_media_type"),
    );
    c.push(
        case("tenant put: id segment RTL override", "PUT", format!("/v1/tenants/acme{RTL_ENC}"))
            .json(r#"{"name": "Acme"}"#)
            .invalid(),
    );
    c.push(
        case("tenant put: id segment an emoji", "PUT", format!("/v1/tenants/{EMOJI_ENC}"))
            .json(r#"{"name": "Acme"}"#)
            .invalid(),
    );
    c.push(
        case("tenant get: id segment SQL injection", "GET", "/v1/tenants/%27%20OR%20%271%27%3D%271")
            .invalid(),
    );
    c.push(case("tenant get: an unknown tenant", "GET", "/v1/tenants/ghost").problem(404, "not_found"));

    // Subscriptions
    let sub = format!("{T}/subscription");
    for (label, body) in [
        ("plan_code uppercase", r#"{"plan_code": "PRO"}"#),
        ("plan_code SQL injection", r#"{"plan_code": "pro'; DROP TABLE tally_plan; --"}"#),
        ("anchor without an offset", r#"{"plan_code": "pro", "anchor": "2026-11-15T00:00:00"}"#),
        ("anchor a number", r#"{"plan_code": "pro", "anchor": 5}"#),
        ("plan_code missing", "{}"),
        ("plan_code twice", r#"{"plan_code": "pro", "plan_code": "spare"}"#),
    ] {
        c.push(case(format!("subscription put: {label}"), "PUT", &sub).json(body).invalid());
    }
    c.push(
        case("subscription put: an unknown plan", "PUT", &sub)
            .json(r#"{"plan_code": "ghost"}"#)
            .problem(404, "not_found"),
    );
    c.push(
        case("subscription put: an unknown tenant", "PUT", "/v1/tenants/ghost/subscription")
            .json(r#"{"plan_code": "pro"}"#)
            .problem(404, "not_found"),
    );
    c.push(
        case("subscription put: body one byte over 4 MiB", "PUT", &sub)
            .json(oversized_json(r#"{"plan_code": "pro"}"#))
            .problem(413, "payload_too_large"),
    );
    c.push(
        case("subscription delete: tenant segment NUL", "DELETE", "/v1/tenants/%00/subscription").invalid(),
    );
    c.push(
        case("subscription delete: an unknown tenant", "DELETE", "/v1/tenants/ghost/subscription")
            .problem(404, "not_found"),
    );

    // Overrides
    let ovr = format!("{T}/overrides/api_calls");
    for (label, body) in [
        ("limit a string", r#"{"limit": "1", "enforcement": "hard"}"#),
        ("limit 10^30", r#"{"limit": 1000000000000000000000000000000, "enforcement": "hard"}"#),
        ("limit negative", r#"{"limit": -1, "enforcement": "soft"}"#),
        ("enforcement missing", r#"{"limit": 1}"#),
        ("period fortnight", r#"{"limit": 1, "enforcement": "hard", "period": "fortnight"}"#),
        ("a metric_code member", r#"{"limit": 1, "enforcement": "hard", "metric_code": "storage"}"#),
        ("a string body", r#""hard""#),
    ] {
        c.push(case(format!("override put: {label}"), "PUT", &ovr).json(body).invalid());
    }
    for (label, segment) in [
        ("one byte too long", long_metric.clone()),
        ("RTL override", format!("api{RTL_ENC}calls")),
        ("an encoded traversal", TRAVERSAL_ENC.to_owned()),
    ] {
        c.push(
            case(format!("override put: metric segment {label}"), "PUT", format!("{T}/overrides/{segment}"))
                .json(r#"{"limit": 1, "enforcement": "hard"}"#)
                .invalid(),
        );
    }
    c.push(
        case("override put: an unknown tenant", "PUT", "/v1/tenants/ghost/overrides/api_calls")
            .json(r#"{"limit": 1, "enforcement": "hard"}"#)
            .problem(404, "not_found"),
    );
    c.push(
        case("override put: body one byte over 4 MiB", "PUT", &ovr)
            .json(oversized_json(r#"{"enforcement": "hard"}"#))
            .problem(413, "payload_too_large"),
    );
    c.push(
        case("override delete: metric segment uppercase", "DELETE", format!("{T}/overrides/API")).invalid(),
    );
    c.push(
        case("override delete: no such override", "DELETE", format!("{T}/overrides/storage"))
            .problem(404, "not_found"),
    );

    // Audit
    for (label, query) in [
        ("limit 0", "limit=0".to_owned()),
        ("limit 1001", "limit=1001".to_owned()),
        ("tenant_id path traversal", "tenant_id=..%2F..%2Fetc%2Fpasswd".to_owned()),
        ("tenant_id SQL injection", format!("tenant_id={INJECTION_ENC}")),
        ("tenant_id empty", "tenant_id=".to_owned()),
        ("cursor not a UUID", "cursor=not-a-uuid".to_owned()),
        ("cursor of 10k characters", format!("cursor={cursor_10k}")),
        ("an unknown parameter", "action=reset".to_owned()),
    ] {
        c.push(case(format!("audit: {label}"), "GET", format!("/v1/audit?{query}")).invalid());
    }

    // ----------------------------------------------------------------------------------
    // Methods
    for (method, path) in [
        ("PATCH", usage.clone()),
        ("DELETE", batch.clone()),
        ("PUT", check.clone()),
        ("POST", events.clone()),
        ("DELETE", events.clone()),
        ("PUT", history.clone()),
        ("DELETE", "/v1/plans".to_owned()),
        ("POST", "/v1/tenants".to_owned()),
        ("POST", T.to_owned()),
        ("DELETE", T.to_owned()),
        ("GET", sub.clone()),
        ("POST", sub.clone()),
        ("GET", ovr.clone()),
        ("POST", "/v1/audit".to_owned()),
        ("OPTIONS", usage.clone()),
        ("TRACE", "/v1/plans".to_owned()),
        ("BREW", usage.clone()),
        ("PUT", "/admin/login".to_owned()),
        ("GET", "/admin/logout".to_owned()),
    ] {
        c.push(case(format!("method {method} on {path}"), method, path).problem(405, "method_not_allowed"));
    }

    // Authorization
    c.push(
        case("auth: a 10k-byte Authorization header", "GET", "/v1/plans")
            .who(Who::Anonymous)
            .header("authorization", format!("Bearer {}", "k".repeat(10_000)))
            .problem(401, "unauthorized"),
    );
    c.push(
        case("auth: the admin key with a SQL injection appended", "GET", "/v1/plans")
            .who(Who::Anonymous)
            .header("authorization", format!("Bearer {ADMIN_KEY}' OR '1'='1"))
            .problem(401, "unauthorized"),
    );

    // ----------------------------------------------------------------------------------
    // The admin UI: sign-in form and a list page with bad filters
    let form = "application/x-www-form-urlencoded";
    let csrf_cookie = format!("tally_login_csrf={LOGIN_CSRF}");
    c.push(
        case("admin login: no CSRF cookie", "POST", "/admin/login")
            .who(Who::Anonymous)
            .typed(form, format!("password={ADMIN_KEY}&csrf_token={LOGIN_CSRF}"))
            .page(403),
    );
    c.push(
        case("admin login: a JSON body", "POST", "/admin/login")
            .who(Who::Anonymous)
            .header("cookie", &csrf_cookie)
            .json(json!({"password": ADMIN_KEY, "csrf_token": LOGIN_CSRF}).to_string())
            .page(400),
    );
    c.push(
        case("admin login: body one byte over 4 MiB", "POST", "/admin/login")
            .who(Who::Anonymous)
            .header("cookie", &csrf_cookie)
            .typed(form, {
                let mut b = format!("csrf_token={LOGIN_CSRF}&password=").into_bytes();
                b.resize(REQUEST_BODY_BYTES_MAX + 1, b'a');
                b
            })
            .page(400),
    );
    c.push(
        case("admin login: a password with NUL", "POST", "/admin/login")
            .who(Who::Anonymous)
            .header("cookie", &csrf_cookie)
            .typed(form, format!("password={ADMIN_KEY}%00&csrf_token={LOGIN_CSRF}"))
            .page(401),
    );
    c.push(
        case("admin login: a password over the longest", "POST", "/admin/login")
            .who(Who::Anonymous)
            .header("cookie", &csrf_cookie)
            .typed(form, format!("password={}&csrf_token={LOGIN_CSRF}", "a".repeat(2000)))
            .page(401),
    );
    for (label, query) in [
        ("sort bogus", "/admin/records?sort=bogus".to_owned()),
        ("dir sideways", "/admin/records?dir=sideways".to_owned()),
        ("created_from a month 13", "/admin/records?created_from=2026-13-01".to_owned()),
        ("after of 10k characters", format!("/admin/records?after={cursor_10k}")),
        ("metric_code SQL injection", format!("/admin/records?metric_code={INJECTION_ENC}")),
        ("tenant_id path traversal", "/admin/events?tenant_id=..%2F..%2Fetc%2Fpasswd".to_owned()),
        ("a search term one byte too long", format!("/admin/events?q={}", "a".repeat(65))),
        ("tenant page id SQL injection", format!("/admin/tenants/{INJECTION_ENC}")),
        ("event page id not a UUID", "/admin/tenants/acme/events/..%2F..%2Fetc%2Fpasswd".to_owned()),
    ] {
        c.push(case(format!("admin page: {label}"), "GET", query).who(Who::Session).page(400));
    }
    // FIXME: on PostgreSQL the NUL reaches `starts_with(tenant_id, $1)` and the page is a 500.
    c.push(
        case("admin page: a search term of NUL", "GET", "/admin/records?q=%00").who(Who::Session).page(400),
    );
    c.push(
        case("admin page: a search term with RTL override", "GET", format!("/admin/events?q=acme{RTL_ENC}"))
            .who(Who::Session)
            .page(200),
    );
    c.push(
        case("admin page: a search term SQL injection", "GET", format!("/admin/records?q={INJECTION_ENC}"))
            .who(Who::Session)
            .page(200),
    );
    c.push(
        case("admin page: a bad filter without a session", "GET", "/admin/records?sort=bogus")
            .who(Who::Anonymous)
            .redirect(303, "/admin/login?next="),
    );

    // ----------------------------------------------------------------------------------
    // A JSON array in place of an object. Serde's derived `Deserialize` also reads a struct
    // from a sequence of its fields in order (and `deny_unknown_fields` does not apply
    // there), so these rows come last: if one is wrongly accepted, it changes state that
    // the rows above would otherwise see. FIXME: today every one of them is accepted
    // (`StrictJson` and the batch's `from_value` leave the shape of the value to serde).
    c.push(case("array body: usage", "POST", &usage).json(r#"["api_calls", 1]"#).invalid());
    c.push(
        case("array body: a batch item", "POST", &batch)
            .json(r#"{"events": [["api_calls", 1]]}"#)
            .batch_errors(vec![(400, "invalid_request")]),
    );
    c.push(case("array body: check", "POST", &check).json(r#"["api_calls", 1]"#).invalid());
    c.push(case("array body: plan put", "PUT", "/v1/plans/pro2").json(r#"["Pro 2", []]"#).invalid());
    c.push(case("array body: tenant put", "PUT", T).json(r#"["Acme"]"#).invalid());
    c.push(case("array body: subscription put", "PUT", &sub).json(r#"["pro"]"#).invalid());
    c.push(case("array body: override put", "PUT", &ovr).json(r#"[1, "hard"]"#).invalid());
    c
}

/// Everything the table could change: usage, records, events, the audit log, plans, tenants.
async fn dump(app: &TestApp) -> Value {
    let mut out = serde_json::Map::new();
    for tenant in ["acme", "globex"] {
        out.insert(format!("usage {tenant}"), app.get(&format!("/v1/tenants/{tenant}/usage")).await.ok(200));
        out.insert(format!("tenant {tenant}"), app.get(&format!("/v1/tenants/{tenant}")).await.ok(200));
        for metric in ["api_calls", "storage"] {
            let path = format!("/v1/tenants/{tenant}/usage/{metric}/history");
            out.insert(format!("history {tenant} {metric}"), app.get(&path).await.ok(200));
        }
        // Pages of two, so that the cursor is used on the way.
        let mut events = Vec::new();
        let mut cursor: Option<String> = None;
        for _page in 0..100 {
            let path = match &cursor {
                Some(c) => format!("/v1/tenants/{tenant}/events?limit=2&cursor={c}"),
                None => format!("/v1/tenants/{tenant}/events?limit=2"),
            };
            let page = app.get(&path).await.ok(200);
            events.extend(page["events"].as_array().expect("events is an array").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        out.insert(format!("events {tenant}"), Value::Array(events));
    }
    out.insert("audit".into(), Value::Array(app.audit_entries(None).await));
    out.insert("plans".into(), app.get("/v1/plans").await.ok(200));
    out.insert("tenants".into(), app.get("/v1/tenants?limit=1000").await.ok(200));
    Value::Object(out)
}

/// acme and globex on plan `pro`, an unused plan `spare`, an override, events with metadata
/// and keys, a batch, a reset: one of everything the table could disturb.
async fn seeded(backend: Backend) -> TestApp {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.put_plan(
        "pro",
        json!([limit("api_calls", Some(1000), "hard", "month"), limit("storage", Some(50), "soft", "day")]),
    )
    .await;
    app.put_plan("spare", json!([])).await;
    for tenant in ["acme", "globex"] {
        app.put_tenant(tenant).await;
        app.subscribe(tenant, "pro", Some(ANCHOR)).await;
    }
    app.put(&format!("{T}/overrides/exports"), &json!({"limit": 5, "enforcement": "hard", "period": "week"}))
        .await
        .ok(200);
    app.post_usage(
        "acme",
        &json!({"metric_code": "api_calls", "amount": 3, "idempotency_key": "seed-1",
                "metadata": {"endpoint": "/search", "note": "é 📞"},
                "timestamp": "2026-11-29T09:00:00+01:00"}),
    )
    .await
    .ok(200);
    app.record("acme", "storage", 7).await;
    app.reset("acme", "storage").await.ok(200);
    app.record("acme", "storage", 2).await;
    app.post_batch(
        "acme",
        json!([{"metric_code": "api_calls", "amount": 4}, {"metric_code": "exports", "amount": 1}]),
    )
    .await
    .ok(200);
    app.record("globex", "api_calls", 11).await;
    app
}

/// Signs in to the admin UI with the admin key; returns the session's `Cookie` header value.
async fn admin_session(app: &TestApp) -> String {
    let body = format!("password={ADMIN_KEY}&csrf_token={LOGIN_CSRF}&next=/admin");
    let cookie = format!("tally_login_csrf={LOGIN_CSRF}");
    let headers = [("content-type", "application/x-www-form-urlencoded"), ("cookie", cookie.as_str())];
    let r = app.call_exact("POST", "/admin/login", &headers, body.into_bytes()).await;
    assert_eq!(r.status, 303, "sign-in: {}", r.text);
    let session = r
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("tally_admin_session="))
        .and_then(|rest| rest.split(';').next())
        .expect("a session cookie")
        .to_owned();
    format!("tally_admin_session={session}")
}

/// Whether `r` is what `expect` says; otherwise why not.
fn judge(expect: &Expect, r: &Reply) -> Result<(), String> {
    let ct = r.content_type();
    let body = || -> Result<Value, String> {
        serde_json::from_str(&r.text).map_err(|e| format!("body is not JSON ({e}): {:.300}", r.text))
    };
    let status_is = |want: u16| {
        if r.status == want {
            Ok(())
        } else {
            Err(format!("status {} (want {want}), body {:.300}", r.status, r.text))
        }
    };
    match expect {
        Expect::Problem(status, code) => {
            status_is(*status)?;
            if ct != PROBLEM_JSON {
                return Err(format!("content type {ct:?}, want {PROBLEM_JSON}"));
            }
            let b = body()?;
            let title_ok = b["title"].as_str().is_some_and(|t| !t.is_empty());
            if b["type"] != "about:blank"
                || b["status"] != *status
                || b["code"] != *code
                || !title_ok
                || !b["detail"].is_string()
            {
                return Err(format!("problem body {b}, want status {status} code {code}"));
            }
            Ok(())
        }
        Expect::Page(status) => {
            status_is(*status)?;
            if ct != "text/html; charset=utf-8" {
                return Err(format!("content type {ct:?}, want an HTML page"));
            }
            Ok(())
        }
        Expect::Redirect(status, to) => {
            status_is(*status)?;
            let location = r.header("location").unwrap_or("");
            if !location.starts_with(to) {
                return Err(format!("location {location:?}, want {to}..."));
            }
            Ok(())
        }
        Expect::BatchErrors(errors) => {
            status_is(200)?;
            let b = body()?;
            let results = b["results"].as_array().ok_or_else(|| format!("no results in {b:.300}"))?;
            if results.len() != errors.len() {
                return Err(format!("{} results, want {}", results.len(), errors.len()));
            }
            for (idx, (item, (status, code))) in results.iter().zip(errors).enumerate() {
                let e = &item["error"];
                if e["status"] != *status
                    || e["code"] != *code
                    || e["type"] != "about:blank"
                    || !e["detail"].is_string()
                {
                    return Err(format!("results[{idx}] is {item}, want an error {status} {code}"));
                }
            }
            Ok(())
        }
    }
}

async fn every_bad_input_is_refused_precisely_and_changes_nothing(backend: Backend) {
    let app = seeded(backend).await;
    let (_id, acme_key) = app.tenant_key("acme").await;
    let session = admin_session(&app).await;
    let before = dump(&app).await;

    let cases = cases();
    assert!(cases.len() >= 60, "the table has {} rows", cases.len());
    let mut names = std::collections::HashSet::new();
    for c in &cases {
        assert!(names.insert(c.name.clone()), "two rows are named {:?}", c.name);
        assert!(!matches!(c.expect, Expect::Problem(0, _)), "row {:?} expects nothing", c.name);
    }

    let admin_auth = format!("Bearer {ADMIN_KEY}");
    let acme_auth = format!("Bearer {acme_key}");
    let mut failures = Vec::new();
    let mut server_errors = Vec::new();
    for c in &cases {
        let mut headers: Vec<(&str, &str)> =
            c.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match c.who {
            Who::Admin => headers.push(("authorization", &admin_auth)),
            Who::AcmeKey => headers.push(("authorization", &acme_auth)),
            Who::Session => headers.push(("cookie", &session)),
            Who::Anonymous => {}
        }
        let r = app.call_exact(c.method, &c.path, &headers, c.body.clone()).await;
        if r.status >= 500 {
            server_errors.push(format!("{}: {} {}", c.name, r.status, r.text));
        }
        if let Err(why) = judge(&c.expect, &r) {
            failures.push(format!("[{}] {}: {why}", c.name, r.what));
        }
    }

    let after = dump(&app).await;
    let mut changed = Vec::new();
    for (part, was) in before.as_object().expect("a dump is an object") {
        if after[part] != *was {
            changed.push(format!("{part}:\n  before {was}\n  after  {}", after[part]));
        }
    }
    assert!(
        failures.is_empty() && server_errors.is_empty() && changed.is_empty(),
        "{backend:?}: {} of {} rows failed:\n{}\n\nanswered 5xx: {server_errors:#?}\n\n\
         changed by the table: {changed:#?}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
    );
}

async fn nul_in_metadata_is_stored_or_refused_never_a_server_error(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), Some(ANCHOR)).await;
    // A NUL in a JSON string (value or member name) is valid JSON; API.md asks only for an
    // object of at most 4096 bytes. FIXME: PostgreSQL's jsonb cannot hold \u0000, so there
    // the insert fails and the answer is 500.
    for (idx, metadata) in [json!({"k": "a\u{0}b"}), json!({"a\u{0}b": 1})].into_iter().enumerate() {
        let key = format!("nul-{idx}");
        let body =
            json!({"metric_code": "api_calls", "amount": 1, "metadata": metadata, "idempotency_key": key});
        let r = app.post_usage("acme", &body).await;
        assert!(r.status < 500, "{backend:?}: metadata {metadata} answered {} {}", r.status, r.text);
        if r.status == 200 {
            let events = app.all_events("acme").await;
            let stored = events.iter().find(|e| e["idempotency_key"] == format!("nul-{idx}"));
            assert_eq!(stored.map(|e| &e["metadata"]), Some(&metadata), "{backend:?}: round trip");
        } else {
            r.problem(400, "invalid_request");
        }
    }
    let usage = app.current_usage("acme", "api_calls").await;
    assert_eq!(usage as usize, app.all_events("acme").await.len(), "{backend:?}: only stored events count");
}

async fn a_nul_in_one_batch_item_does_not_fail_its_neighbours(backend: Backend) {
    let app = TestApp::spawn_at(backend, NOW).await;
    app.tenant_on_plan("acme", json!([limit("api_calls", Some(100), "hard", "month")]), Some(ANCHOR)).await;
    // Each item stands alone: the NUL item is stored or refused in its place, and its
    // neighbours are applied either way. FIXME: on PostgreSQL the whole batch answers 500.
    let r = app
        .post_batch(
            "acme",
            json!([
                {"metric_code": "api_calls", "amount": 1, "idempotency_key": "before-nul"},
                {"metric_code": "api_calls", "amount": 1, "metadata": {"k": "a\u{0}b"},
                 "idempotency_key": "nul-batch"},
                {"metric_code": "api_calls", "amount": 1, "idempotency_key": "after-nul"},
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{backend:?}: a batch with a NUL item: {}", r.text);
    let results = r.json()["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 3);
    for idx in [0, 2] {
        assert_eq!(results[idx]["amount"], 1, "{backend:?}: results[{idx}] is applied: {}", results[idx]);
    }
    if results[1].get("error").is_some() {
        assert_eq!(results[1]["error"]["code"], "invalid_request", "{backend:?}: {}", results[1]);
    }
    let events = app.all_events("acme").await;
    for key in ["before-nul", "after-nul"] {
        assert!(events.iter().any(|e| e["idempotency_key"] == key), "{backend:?}: {key} is stored");
    }
    let usage = app.current_usage("acme", "api_calls").await;
    assert_eq!(usage as usize, events.len(), "{backend:?}: only stored events count");
}

store_tests!(
    every_bad_input_is_refused_precisely_and_changes_nothing,
    nul_in_metadata_is_stored_or_refused_never_a_server_error,
    a_nul_in_one_batch_item_does_not_fail_its_neighbours,
);
