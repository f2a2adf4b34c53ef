//! Inputs found by the fuzz targets of fuzz/ (scripts/fuzz) and by scripts/schemathesis,
//! kept as plain tests so that they run with every `cargo test`.

use tally_domain::time::{format_rfc3339, from_micros, parse_rfc3339, to_micros};
use tally_http::dto::{SubscriptionBody, parse_instant};
use tally_http::json::{from_value, parse_strict};

/// fuzz target `request_parsing`, input `{"plan_code":"pro","anchor":"9999-12-31T23:59:59-01:00"}`.
///
/// The anchor is RFC 3339 with an offset, so `parse_instant` took it, but in UTC it is
/// `+10000-01-01T00:59:59Z`: past year 9999, which `tally_domain::time::from_micros` (and so
/// every store reading it back) refuses. `PUT /v1/tenants/acme/subscription` with it answered
/// 200 with `"anchor": "+10000-01-01T00:59:59Z"` (not RFC 3339: the server's own parser refuses
/// it), and from then on every read of the tenant (`GET /v1/tenants/acme`, `GET /v1/tenants`,
/// `POST .../usage`, `GET .../usage`) answered 500 ("anchor 253402304399000000: period: date
/// out of range"), after a restart too. `0000-01-01T00:00:00+01:00` is year -1 in UTC, the same
/// on the other side. Such an instant must be refused with a 400 when it is read.
#[test]
fn a_subscription_anchor_outside_years_1_to_9999_is_refused() {
    for body in [
        r#"{"plan_code":"pro","anchor":"9999-12-31T23:59:59-01:00"}"#,
        r#"{"plan_code":"pro","anchor":"9999-12-31T23:59:59-23:59"}"#,
        r#"{"plan_code":"pro","anchor":"0000-01-01T00:00:00+01:00"}"#,
        r#"{"plan_code":"pro","anchor":"0000-12-31T23:00:00Z"}"#,
    ] {
        let value = parse_strict(body.as_bytes()).expect("valid JSON");
        let sub: SubscriptionBody = from_value(value).expect("a subscription body");
        match parse_instant("anchor", sub.anchor.as_deref()) {
            Err(e) => assert_eq!(e.to_string().split(':').next(), Some("anchor"), "{body}: {e}"),
            Ok(t) => panic!("{body}: anchor taken as {:?}", t.map(format_rfc3339)),
        }
    }
}

/// The edges of the range: an instant the API takes is one every store can read back and
/// prints as RFC 3339 that parses to the same instant; one step past either edge is refused.
#[test]
fn instants_on_the_edges_of_years_1_to_9999() {
    for raw in [
        "0001-01-01T00:00:00Z",
        "0001-01-01T01:00:00+01:00",
        "0001-01-01T00:00:00-01:00",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T22:59:59-01:00",
        "9999-12-31T23:59:59+01:00",
    ] {
        let t = parse_instant("from", Some(raw)).expect("in range").expect("given");
        assert!(from_micros(to_micros(t)).is_ok(), "{raw}");
        let printed = format_rfc3339(t);
        assert_eq!(parse_rfc3339(&printed).ok(), Some(t), "{raw} prints as {printed}");
    }
    for raw in [
        "0000-12-31T23:59:59.999999Z",
        "0001-01-01T00:59:59+01:00",
        "9999-12-31T23:59:59-00:01",
        "9999-12-31T23:00:00-01:00",
    ] {
        assert!(parse_instant("from", Some(raw)).is_err(), "{raw} was taken");
    }
}
